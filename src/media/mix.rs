//! Where several sources meet one leg: each 20 ms tick takes a frame from every source that
//! has one and sums them with saturation (no wrap-around on loud sums), sans-IO. Sources are
//! pulled on the mixer's clock, so no source needs its own timer and nothing drifts between
//! them. A source says when it is finished (a file played to its end, an injected stream
//! that ended) and is dropped.

/// Audio played into a leg: asked for one frame per tick.
pub trait PlaySource: Send {
    /// Appends one frame of `n` samples at `rate` to `out` and returns `Some(true)`, or
    /// returns `Some(false)` with nothing appended when it has nothing this tick (silent), or
    /// `None` when it is finished for good.
    fn frame(&mut self, rate: u32, n: usize, out: &mut Vec<i16>) -> Option<bool>;

    /// A background source (the other party of a bridged call) keeps no player alive by
    /// itself: when only such sources are left, the mix counts as empty.
    fn background(&self) -> bool {
        false
    }
}

/// The sources of one leg, mixed at one rate.
pub struct Mix {
    rate: u32,
    frame: usize,
    sources: Vec<(u64, Box<dyn PlaySource>)>,
    next_id: u64,
    scratch: Vec<i16>,
    acc: Vec<i32>,
}

impl std::fmt::Debug for Mix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mix")
            .field("rate", &self.rate)
            .field("sources", &self.sources.len())
            .finish()
    }
}

impl Mix {
    /// `frame_ms`: the tick (the leg's packet time).
    pub fn new(rate: u32, frame_ms: u32) -> Self {
        let frame = (rate as usize * frame_ms.max(1) as usize) / 1000;
        Self {
            rate,
            frame,
            sources: Vec::new(),
            next_id: 1,
            scratch: Vec::with_capacity(frame),
            acc: vec![0; frame],
        }
    }

    pub fn rate(&self) -> u32 {
        self.rate
    }

    /// Adds a source; returns its id (for [`Mix::remove`]).
    pub fn add(&mut self, source: Box<dyn PlaySource>) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.sources.push((id, source));
        id
    }

    /// Drops a source; false if it was not there (already finished).
    pub fn remove(&mut self, id: u64) -> bool {
        let before = self.sources.len();
        self.sources.retain(|(i, _)| *i != id);
        self.sources.len() != before
    }

    /// No source left but background ones.
    pub fn is_empty(&self) -> bool {
        self.sources.iter().all(|(_, s)| s.background())
    }

    /// Drops every source.
    pub fn clear(&mut self) {
        self.sources.clear();
    }

    pub fn contains(&self, id: u64) -> bool {
        self.sources.iter().any(|(i, _)| *i == id)
    }

    /// One tick: the mixed frame appended to `out` (true), or false when every source was
    /// silent (nothing appended: the leg sends its own silence). Finished sources go.
    pub fn tick(&mut self, out: &mut Vec<i16>) -> bool {
        let (rate, n) = (self.rate, self.frame);
        self.acc.iter_mut().for_each(|a| *a = 0);
        let mut any = false;
        let (acc, scratch) = (&mut self.acc, &mut self.scratch);
        self.sources.retain_mut(|(_, s)| {
            scratch.clear();
            match s.frame(rate, n, scratch) {
                None => false,
                Some(false) => true,
                Some(true) => {
                    any = true;
                    for (a, x) in acc.iter_mut().zip(scratch.iter()) {
                        *a += i32::from(*x);
                    }
                    true
                }
            }
        });
        if any {
            out.extend(
                self.acc
                    .iter()
                    .map(|a| (*a).clamp(i32::from(i16::MIN), i32::from(i16::MAX)) as i16),
            );
        }
        any
    }
}

/// Live audio from another clock (a stream, the other party of a bridge) waiting for the
/// mixer: it plays once `start` samples wait (absorbing the two clocks' jitter), keeps at
/// most `cap` (a source that runs ahead loses its oldest audio), and buffers again when it
/// runs dry.
///
/// A backlog that stays is delay that stays: after a stall of the feeding side (a busy
/// thread) the audio that queued meanwhile arrives at once, and nothing would play it faster.
/// So the lowest level the buffer reaches over [`TRIM_WINDOW`] takes is watched: if it never
/// came within two frames of its steady level, the excess is dropped (the oldest audio),
/// bringing the delay back to what `start` buys. Jitter that does drain the buffer is left
/// alone.
#[derive(Debug)]
pub struct LiveBuffer {
    samples: std::collections::VecDeque<i16>,
    playing: bool,
    start: usize,
    cap: usize,
    /// The lowest level after a take in the current window, and the takes in it.
    low: usize,
    takes: u32,
    /// Samples dropped to keep the delay down (cap and trim).
    pub dropped: u64,
    /// No more audio will come: play what is left, then the source is finished.
    pub ended: bool,
    /// The player let go of it: the feeding side stops feeding.
    pub detached: bool,
}

/// Takes (frames) over which a [`LiveBuffer`]'s standing backlog is measured: 1 s of 20 ms.
pub const TRIM_WINDOW: u32 = 50;

impl LiveBuffer {
    pub fn new(start: usize, cap: usize) -> Self {
        Self {
            samples: std::collections::VecDeque::new(),
            playing: false,
            start,
            cap: cap.max(start),
            low: usize::MAX,
            takes: 0,
            dropped: 0,
            ended: false,
            detached: false,
        }
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    pub fn push(&mut self, pcm: &[i16]) {
        self.samples.extend(pcm.iter().copied());
        if self.samples.len() > self.cap {
            let over = self.samples.len() - self.cap;
            self.samples.drain(..over);
            self.dropped += over as u64;
        }
    }

    /// One frame of `n` samples, as [`PlaySource::frame`] answers.
    pub fn take(&mut self, n: usize, out: &mut Vec<i16>) -> Option<bool> {
        let len = self.samples.len();
        if !self.playing && (len >= self.start.max(n) || (self.ended && len > 0)) {
            self.playing = true;
            self.low = usize::MAX;
            self.takes = 0;
        }
        if self.playing && len > 0 {
            let take = n.min(len);
            out.extend(self.samples.drain(..take));
            out.resize(out.len() + (n - take), 0);
            if self.samples.is_empty() && !self.ended {
                self.playing = false;
            }
            self.trim(n);
            return Some(true);
        }
        self.playing = false;
        if self.ended {
            None
        } else {
            Some(false)
        }
    }
}

impl LiveBuffer {
    /// Drops a backlog that stood a whole window (see the type's doc).
    fn trim(&mut self, n: usize) {
        if self.ended {
            return;
        }
        self.low = self.low.min(self.samples.len());
        self.takes += 1;
        if self.takes < TRIM_WINDOW {
            return;
        }
        // In steady state a take leaves `start - n`; a window whose lowest level stayed
        // above `start + n` had more than two frames of delay it did not need (less is
        // left alone: a trim is a small click).
        let keep = self.start.saturating_sub(n);
        if self.low > self.start + n {
            let excess = (self.low - keep).min(self.samples.len());
            self.samples.drain(..excess);
            self.dropped += excess as u64;
        }
        self.low = usize::MAX;
        self.takes = 0;
    }
}

/// Samples played once (or looped) from memory: a sound file.
#[derive(Debug)]
pub struct Samples {
    pcm: std::sync::Arc<Vec<i16>>,
    pos: usize,
    looped: bool,
}

impl Samples {
    /// `pcm` at the mixer's rate.
    pub fn new(pcm: std::sync::Arc<Vec<i16>>, looped: bool) -> Self {
        Self {
            pcm,
            pos: 0,
            looped,
        }
    }
}

impl PlaySource for Samples {
    fn frame(&mut self, _rate: u32, n: usize, out: &mut Vec<i16>) -> Option<bool> {
        if self.pcm.is_empty() || (self.pos >= self.pcm.len() && !self.looped) {
            return None;
        }
        let start = out.len();
        while out.len() - start < n {
            if self.pos >= self.pcm.len() {
                if !self.looped {
                    break;
                }
                self.pos = 0;
            }
            let take = (n - (out.len() - start)).min(self.pcm.len() - self.pos);
            out.extend_from_slice(&self.pcm[self.pos..self.pos + take]);
            self.pos += take;
        }
        out.resize(start + n, 0);
        Some(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    struct Const(i16, usize);
    impl PlaySource for Const {
        fn frame(&mut self, _r: u32, n: usize, out: &mut Vec<i16>) -> Option<bool> {
            if self.1 == 0 {
                return None;
            }
            self.1 -= 1;
            out.extend(std::iter::repeat_n(self.0, n));
            Some(true)
        }
    }

    #[test]
    fn sources_are_summed_with_saturation_and_dropped_when_finished() {
        let mut m = Mix::new(8000, 20);
        let a = m.add(Box::new(Const(20000, 2)));
        m.add(Box::new(Const(20000, 1)));
        let mut out = Vec::new();
        assert!(m.tick(&mut out));
        assert_eq!(out, vec![i16::MAX; 160], "20000 + 20000 saturates");
        out.clear();
        assert!(m.tick(&mut out));
        assert_eq!(out, vec![20000; 160]);
        out.clear();
        assert!(!m.tick(&mut out), "both finished");
        assert!(out.is_empty() && m.is_empty());
        assert!(!m.remove(a));
    }

    #[test]
    fn a_live_buffer_waits_caps_and_ends_after_draining() {
        let mut b = LiveBuffer::new(320, 1600);
        let mut out = Vec::new();
        b.push(&[1; 160]);
        assert_eq!(b.take(160, &mut out), Some(false), "20 ms is not enough");
        b.push(&[2; 160]);
        assert_eq!(b.take(160, &mut out), Some(true));
        assert_eq!(out, vec![1; 160]);
        b.push(&[3; 8000]);
        assert_eq!(b.len(), 1600, "capped at 200 ms");
        b.ended = true;
        let mut frames = 0;
        while b.take(160, &mut out).is_some() {
            frames += 1;
        }
        assert_eq!(frames, 10);
    }

    #[test]
    fn a_standing_backlog_is_trimmed_back_but_jitter_is_not() {
        // Steady 20 ms in, 20 ms out, with the arrivals jittering by a frame: never trimmed.
        let mut b = LiveBuffer::new(320, 1600);
        let mut out = Vec::new();
        b.push(&[1; 320]);
        for i in 0..(3 * TRIM_WINDOW) {
            // Two frames every other tick: the lowest level is `start`, never above.
            if i % 2 == 0 {
                b.push(&[1; 320]);
            }
            out.clear();
            b.take(160, &mut out);
        }
        assert_eq!(b.dropped, 0, "jitter that drains the buffer stays");
        // A stall upstream: 120 ms arrive at once on top of the steady flow and would stay.
        let mut b = LiveBuffer::new(320, 1600);
        b.push(&[1; 320]);
        b.push(&[2; 960]);
        let mut levels = Vec::new();
        for _ in 0..(2 * TRIM_WINDOW) {
            b.push(&[3; 160]);
            out.clear();
            assert_eq!(b.take(160, &mut out), Some(true));
            levels.push(b.len());
        }
        let before = levels[..TRIM_WINDOW as usize - 1].iter().min().copied();
        assert_eq!(
            before,
            Some(1280),
            "the backlog stands for the first window"
        );
        assert_eq!(
            b.len(),
            160,
            "then the delay is back to start minus a frame"
        );
        assert_eq!(b.dropped, 1120);
        // An ended source plays all it has.
        let mut b = LiveBuffer::new(320, 1600);
        b.push(&[1; 1600]);
        b.ended = true;
        let mut frames = 0;
        while b.take(160, &mut out).is_some() {
            frames += 1;
        }
        assert_eq!((frames, b.dropped), (10, 0));
    }

    #[test]
    fn samples_play_once_padded_or_loop() {
        let pcm = Arc::new((1..=200).collect::<Vec<i16>>());
        let mut once = Samples::new(pcm.clone(), false);
        let mut out = Vec::new();
        assert_eq!(once.frame(8000, 160, &mut out), Some(true));
        assert_eq!(once.frame(8000, 160, &mut out), Some(true));
        assert_eq!(&out[160..200], &(161..=200).collect::<Vec<i16>>()[..]);
        assert!(out[200..].iter().all(|s| *s == 0));
        assert_eq!(once.frame(8000, 160, &mut out), None);
        let mut looped = Samples::new(pcm, true);
        out.clear();
        looped.frame(8000, 160, &mut out);
        looped.frame(8000, 160, &mut out);
        assert_eq!(out[200], 1, "starts again");
    }
}
