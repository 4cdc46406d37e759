//! The agent's audio queue, sans-IO: samples the server sent, in order, with its marks
//! between them; taken one 20 ms frame per tick by whoever plays it into the leg. A mark is
//! answered at the first tick after the audio queued before it has been taken (it has then
//! been sent); `clear` empties the queue at once and answers every mark still in it, as
//! Twilio does. Bounded: audio beyond the cap is refused and counted, marks never are.

use std::collections::VecDeque;

#[derive(Debug)]
enum Item {
    Audio(Vec<i16>),
    Mark(String),
}

#[derive(Debug)]
pub struct Playout {
    frame: usize,
    cap: usize,
    items: VecDeque<Item>,
    /// Samples of the front audio item already taken.
    offset: usize,
    queued: usize,
    /// Samples refused because the queue was full.
    pub refused: u64,
    /// Frames taken with audio in them.
    pub played: u64,
}

impl Playout {
    /// `rate`: the wire rate; `cap_ms`: at most this much audio waits.
    pub fn new(rate: u32, cap_ms: u64) -> Self {
        Self {
            frame: (u64::from(rate) * super::framer::FRAME_MS / 1000) as usize,
            cap: (u64::from(rate) * cap_ms / 1000) as usize,
            items: VecDeque::new(),
            offset: 0,
            queued: 0,
            refused: 0,
            played: 0,
        }
    }

    /// Queued audio in samples.
    pub fn queued(&self) -> usize {
        self.queued
    }

    pub fn samples_per_frame(&self) -> usize {
        self.frame
    }

    /// Queues audio; what does not fit under the cap is refused (counted).
    pub fn push_audio(&mut self, pcm: &[i16]) {
        let room = self.cap.saturating_sub(self.queued);
        let take = pcm.len().min(room);
        self.refused += (pcm.len() - take) as u64;
        if take == 0 {
            return;
        }
        self.queued += take;
        match self.items.back_mut() {
            Some(Item::Audio(a)) => a.extend_from_slice(&pcm[..take]),
            _ => self.items.push_back(Item::Audio(pcm[..take].to_vec())),
        }
    }

    /// Queues a mark; with nothing queued before it, it is answered now (returned).
    pub fn push_mark(&mut self, name: String) -> Option<String> {
        if self.items.is_empty() {
            return Some(name);
        }
        self.items.push_back(Item::Mark(name));
        None
    }

    /// Drops all queued audio; returns the marks that were waiting, in order.
    pub fn clear(&mut self) -> Vec<String> {
        let marks = self
            .items
            .drain(..)
            .filter_map(|i| match i {
                Item::Mark(m) => Some(m),
                Item::Audio(_) => None,
            })
            .collect();
        self.offset = 0;
        self.queued = 0;
        marks
    }

    /// One tick of 20 ms: see [`Playout::tick_samples`].
    pub fn tick(&mut self, frame: &mut Vec<i16>, marks: &mut Vec<String>) -> bool {
        self.tick_samples(self.frame, frame, marks)
    }

    /// One tick of `want` samples: marks whose audio has gone out are appended to `marks`,
    /// and the next frame (padded with silence when the queue runs dry in it) to `frame`.
    /// Returns whether a frame was taken.
    pub fn tick_samples(
        &mut self,
        want: usize,
        frame: &mut Vec<i16>,
        marks: &mut Vec<String>,
    ) -> bool {
        self.take_marks(marks);
        if self.queued == 0 || want == 0 {
            return false;
        }
        let start = frame.len();
        while frame.len() - start < want {
            let Some(Item::Audio(a)) = self.items.front() else {
                break;
            };
            let n = (want - (frame.len() - start)).min(a.len() - self.offset);
            frame.extend_from_slice(&a[self.offset..self.offset + n]);
            self.offset += n;
            self.queued -= n;
            if self.offset == a.len() {
                self.items.pop_front();
                self.offset = 0;
            }
            if let Some(Item::Mark(_)) = self.items.front() {
                // A mark inside this frame: the frame stops at it (silence after), the
                // mark goes at the next tick.
                break;
            }
        }
        frame.resize(start + want, 0);
        self.played += 1;
        true
    }

    fn take_marks(&mut self, marks: &mut Vec<String>) {
        while let Some(Item::Mark(_)) = self.items.front() {
            if let Some(Item::Mark(m)) = self.items.pop_front() {
                marks.push(m);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_follow_their_audio_and_clear_answers_the_rest() {
        let mut p = Playout::new(8000, 1000);
        p.push_audio(&[1; 400]);
        assert_eq!(p.push_mark("a".into()), None);
        p.push_audio(&[2; 160]);
        assert_eq!(p.push_mark("b".into()), None);
        let (mut f, mut m) = (Vec::new(), Vec::new());
        // 400 samples: two whole frames, then 80 samples padded (the mark cuts the frame).
        assert!(p.tick(&mut f, &mut m));
        assert!(p.tick(&mut f, &mut m));
        assert!(p.tick(&mut f, &mut m));
        assert!(m.is_empty());
        assert_eq!(&f[320..400], &[1; 80][..]);
        assert_eq!(&f[400..480], &[0; 80][..]);
        f.clear();
        assert!(p.tick(&mut f, &mut m));
        assert_eq!(m, vec!["a".to_string()]);
        assert_eq!(f, vec![2; 160]);
        m.clear();
        assert!(!p.tick(&mut f, &mut m));
        assert_eq!(m, vec!["b".to_string()]);
        // Nothing queued: a mark is answered at once.
        assert_eq!(p.push_mark("c".into()), Some("c".into()));
        p.push_audio(&[3; 1600]);
        p.push_mark("d".into());
        p.push_audio(&[3; 1600]);
        p.push_mark("e".into());
        assert_eq!(p.clear(), vec!["d".to_string(), "e".to_string()]);
        assert_eq!(p.queued(), 0);
        assert!(!p.tick(&mut f, &mut m));
    }

    #[test]
    fn audio_over_the_cap_is_refused_and_counted() {
        let mut p = Playout::new(8000, 100);
        p.push_audio(&[1; 1000]);
        assert_eq!(p.queued(), 800);
        assert_eq!(p.refused, 200);
        let (mut f, mut m) = (Vec::new(), Vec::new());
        for _ in 0..5 {
            assert!(p.tick(&mut f, &mut m));
        }
        assert!(!p.tick(&mut f, &mut m));
        assert_eq!(p.played, 5);
    }
}
