//! The sans-IO HLS packager: the recorder's init segment and fMP4 fragments in, a live media
//! playlist (RFC 8216, with the Low-Latency HLS tags of draft-pantos-hls-rfc8216bis) and the
//! bytes of every listed segment and part out.
//!
//! Each fragment is one *part*; parts are grouped into *segments* of about
//! [`HlsConfig::segment_ms`]. A segment is closed when it is long enough and the next part can
//! start it (no video, or video starting on a keyframe), or when it has grown to one and a
//! half times the target without a keyframe. Players that know no LL-HLS read the segments;
//! LL-HLS players read the parts of the newest segments and the preload hint.
//!
//! Owns no clock, no socket and no task: [`crate::hls`] drives it.

use std::collections::VecDeque;
use std::fmt::Write as _;

use bytes::Bytes;

use crate::record::fmp4::Fragment;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HlsConfig {
    /// Length of a part (one fMP4 fragment), milliseconds.
    pub part_ms: u64,
    /// Length of a segment, milliseconds.
    pub segment_ms: u64,
    /// Complete segments listed in the playlist.
    pub list_size: usize,
}

impl Default for HlsConfig {
    fn default() -> Self {
        Self {
            part_ms: 500,
            segment_ms: 2000,
            list_size: 6,
        }
    }
}

impl HlsConfig {
    /// `EXT-X-PART-INF:PART-TARGET`, microseconds: a fragment is cut once a track has
    /// `part_ms` buffered, so it can be one audio or video frame longer.
    fn part_target_us(&self) -> u64 {
        (self.part_ms + 60) * 1000
    }

    /// A segment without a keyframe in sight is closed at this length anyway.
    fn segment_cap_us(&self) -> u64 {
        self.segment_ms * 1500
    }

    /// `EXT-X-TARGETDURATION`, whole seconds: no segment may round above it.
    fn target_duration_s(&self) -> u64 {
        (self.segment_cap_us() + self.part_target_us()).div_ceil(1_000_000)
    }
}

#[derive(Debug, Clone)]
struct Part {
    bytes: Bytes,
    duration_us: u64,
    independent: bool,
}

#[derive(Debug)]
struct Segment {
    msn: u64,
    /// Dropped once the segment is too old to be listed with its parts.
    parts: Vec<Part>,
    part_count: usize,
    duration_us: u64,
    /// The whole segment, once closed.
    whole: Option<Bytes>,
}

impl Segment {
    fn complete(&self) -> bool {
        self.whole.is_some()
    }
}

/// What a blocking playlist request waits for (`_HLS_msn`, `_HLS_part`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Want {
    pub msn: u64,
    pub part: Option<usize>,
}

#[derive(Debug)]
pub struct Packager {
    cfg: HlsConfig,
    init: Option<Bytes>,
    segments: VecDeque<Segment>,
    next_msn: u64,
    last_end_us: Option<u64>,
    ended: bool,
}

/// Complete segments whose parts are still listed (the spec asks for at least the last
/// three target durations' worth).
const SEGMENTS_WITH_PARTS: usize = 3;
/// Complete segments kept beyond the listed ones, for players still fetching them.
const KEPT_AFTER_LIST: usize = 2;

impl Packager {
    pub fn new(cfg: HlsConfig) -> Self {
        Self {
            cfg: HlsConfig {
                part_ms: cfg.part_ms.max(100),
                segment_ms: cfg.segment_ms.max(cfg.part_ms.max(100)),
                list_size: cfg.list_size.max(1),
            },
            init: None,
            segments: VecDeque::new(),
            next_msn: 0,
            last_end_us: None,
            ended: false,
        }
    }

    pub fn set_init(&mut self, bytes: Vec<u8>) {
        self.init = Some(Bytes::from(bytes));
    }

    pub fn push(&mut self, frag: Fragment) {
        if self.ended {
            return;
        }
        let from = self.last_end_us.unwrap_or(frag.start_us);
        let duration_us = frag.end_us.saturating_sub(from);
        self.last_end_us = Some(frag.end_us.max(from));
        let close = self.segments.back().is_some_and(|s| {
            !s.complete()
                && ((s.duration_us >= self.cfg.segment_ms * 1000 && frag.independent)
                    || s.duration_us >= self.cfg.segment_cap_us())
        });
        if close {
            self.close_open();
        }
        if self.segments.back().is_none_or(Segment::complete) {
            self.segments.push_back(Segment {
                msn: self.next_msn,
                parts: Vec::new(),
                part_count: 0,
                duration_us: 0,
                whole: None,
            });
            self.next_msn += 1;
        }
        if let Some(open) = self.segments.back_mut() {
            open.parts.push(Part {
                bytes: Bytes::from(frag.bytes),
                duration_us,
                independent: frag.independent,
            });
            open.part_count += 1;
            open.duration_us += duration_us;
        }
    }

    /// The stream ended: the open segment is closed and the playlist gets `EXT-X-ENDLIST`.
    pub fn end(&mut self) {
        self.close_open();
        self.ended = true;
    }

    pub fn ended(&self) -> bool {
        self.ended
    }

    fn close_open(&mut self) {
        if let Some(open) = self.segments.back_mut().filter(|s| !s.complete()) {
            let mut whole = Vec::with_capacity(open.parts.iter().map(|p| p.bytes.len()).sum());
            for p in &open.parts {
                whole.extend_from_slice(&p.bytes);
            }
            open.whole = Some(Bytes::from(whole));
        }
        let complete = self.segments.iter().filter(|s| s.complete()).count();
        // Parts of older segments are no longer listed: only the whole segment stays.
        for s in self
            .segments
            .iter_mut()
            .filter(|s| s.complete())
            .take(complete.saturating_sub(SEGMENTS_WITH_PARTS))
        {
            s.parts = Vec::new();
        }
        while self.segments.iter().filter(|s| s.complete()).count()
            > self.cfg.list_size + KEPT_AFTER_LIST
        {
            self.segments.pop_front();
        }
    }

    pub fn init(&self) -> Option<Bytes> {
        self.init.clone()
    }

    /// A closed segment (`seg<msn>.m4s`).
    pub fn segment(&self, msn: u64) -> Option<Bytes> {
        self.segments
            .iter()
            .find(|s| s.msn == msn)
            .and_then(|s| s.whole.clone())
    }

    /// A part (`part<msn>.<index>.m4s`) of one of the newest segments.
    pub fn part(&self, msn: u64, index: usize) -> Option<Bytes> {
        self.segments
            .iter()
            .find(|s| s.msn == msn)
            .and_then(|s| s.parts.get(index))
            .map(|p| p.bytes.clone())
    }

    /// Whether a request for `want` can be answered now: the segment (or the part) exists,
    /// or nothing more will come.
    pub fn ready(&self, want: Want) -> bool {
        if self.ended {
            return true;
        }
        let Some(last) = self.segments.back() else {
            return false;
        };
        match want.part {
            None => self
                .segments
                .iter()
                .any(|s| s.msn >= want.msn && s.complete()),
            Some(p) => last.msn > want.msn || (last.msn == want.msn && last.part_count > p),
        }
    }

    /// A request for a segment more than two past the next one cannot be waited for
    /// (the spec's 400).
    pub fn too_far(&self, want: Want) -> bool {
        want.msn > self.next_msn + 2
    }

    /// Whether a part request may wait for the part: it is the next one to come (the
    /// preload hint), or already here.
    pub fn part_is_near(&self, msn: u64, index: usize) -> bool {
        let open = self.segments.back().filter(|s| !s.complete());
        open.is_some_and(|s| s.msn == msn && index <= s.part_count)
            || (msn == self.next_msn && index == 0)
    }

    /// The part the preload hint names: the next part of the open segment, or the first of
    /// the next segment once the open one is long enough (right unless the next part is
    /// video that does not start on a keyframe; a player waiting for it then gets it late).
    fn next_part(&self) -> (u64, usize) {
        match self.segments.back() {
            Some(s) if !s.complete() && s.duration_us < self.cfg.segment_ms * 1000 => {
                (s.msn, s.part_count)
            }
            _ => (self.next_msn, 0),
        }
    }

    /// Whether [`Packager::playlist`] has something to say (without writing it).
    pub fn has_playlist(&self) -> bool {
        self.init.is_some() && self.segments.iter().any(Segment::complete)
    }

    /// The media playlist, once one segment is complete (a playlist with no segment would
    /// make players that know no LL-HLS give up).
    pub fn playlist(&self) -> Option<String> {
        self.playlist_with("")
    }

    /// The playlist with `query` (e.g. `?token=…`, or empty) after every URI in it, so
    /// that a player's token follows it to the init segment, segments and parts.
    pub fn playlist_with(&self, query: &str) -> Option<String> {
        let complete: Vec<&Segment> = self.segments.iter().filter(|s| s.complete()).collect();
        if complete.is_empty() || self.init.is_none() {
            return None;
        }
        let listed = &complete[complete.len().saturating_sub(self.cfg.list_size)..];
        let first = listed.first().map_or(0, |s| s.msn);
        let part_target = self.cfg.part_target_us() as f64 / 1e6;
        let mut out = String::with_capacity(1024);
        out.push_str("#EXTM3U\n#EXT-X-VERSION:9\n");
        let _ = writeln!(
            out,
            "#EXT-X-TARGETDURATION:{}",
            self.cfg.target_duration_s()
        );
        let _ = writeln!(
            out,
            "#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK={:.3}",
            part_target * 3.0
        );
        let _ = writeln!(out, "#EXT-X-PART-INF:PART-TARGET={part_target:.3}");
        let _ = writeln!(out, "#EXT-X-MEDIA-SEQUENCE:{first}");
        let _ = writeln!(out, "#EXT-X-MAP:URI=\"init.mp4{query}\"");
        for s in listed.iter().copied().chain(
            self.segments
                .back()
                .filter(|s| !s.complete() && !self.ended),
        ) {
            for (i, p) in s.parts.iter().enumerate() {
                let _ = write!(
                    out,
                    "#EXT-X-PART:DURATION={:.5},URI=\"part{}.{i}.m4s{query}\"",
                    p.duration_us as f64 / 1e6,
                    s.msn
                );
                out.push_str(if p.independent {
                    ",INDEPENDENT=YES\n"
                } else {
                    "\n"
                });
            }
            if s.complete() {
                let _ = writeln!(
                    out,
                    "#EXTINF:{:.5},\nseg{}.m4s{query}",
                    s.duration_us as f64 / 1e6,
                    s.msn
                );
            }
        }
        if self.ended {
            out.push_str("#EXT-X-ENDLIST\n");
        } else {
            let (msn, index) = self.next_part();
            let _ = writeln!(
                out,
                "#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"part{msn}.{index}.m4s{query}\""
            );
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frag(start_ms: u64, end_ms: u64, independent: bool) -> Fragment {
        Fragment {
            bytes: vec![start_ms as u8; 4],
            start_us: start_ms * 1000,
            end_us: end_ms * 1000,
            independent,
        }
    }

    fn audio_packager(parts: u64) -> Packager {
        let mut p = Packager::new(HlsConfig::default());
        p.set_init(b"init".to_vec());
        for i in 0..parts {
            p.push(frag(i * 500, (i + 1) * 500, true));
        }
        p
    }

    #[test]
    fn no_playlist_before_a_whole_segment() {
        let p = audio_packager(4);
        assert!(p.playlist().is_none(), "4 parts = 2 s, closed by the 5th");
        let p = audio_packager(5);
        let text = p.playlist().unwrap();
        assert!(text.contains("#EXTINF:2.00000,\nseg0.m4s\n"), "{text}");
        assert!(text.contains("#EXT-X-PART:DURATION=0.50000,URI=\"part1.0.m4s\",INDEPENDENT=YES\n"));
        assert!(text.ends_with("#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"part1.1.m4s\"\n"));
        // A full open segment: the hint is the next segment's first part.
        let text = audio_packager(8).playlist().unwrap();
        assert!(
            text.ends_with("#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"part2.0.m4s\"\n"),
            "{text}"
        );
        assert_eq!(p.segment(0).unwrap().len(), 16, "four parts of 4 bytes");
        assert!(p.segment(1).is_none(), "still open");
        assert_eq!(p.part(1, 0).unwrap().len(), 4);
    }

    #[test]
    fn a_query_follows_every_uri() {
        let text = audio_packager(5).playlist_with("?token=9.ab").unwrap();
        for line in text
            .lines()
            .filter(|l| l.contains(".m4s") || l.contains(".mp4"))
        {
            assert!(
                line.contains(".m4s?token=9.ab") || line.contains(".mp4?token=9.ab"),
                "{line}"
            );
        }
        assert_eq!(text.matches("?token=9.ab").count(), 1 + 1 + 5 + 1, "{text}");
    }

    #[test]
    fn target_duration_bounds_every_segment() {
        let cfg = HlsConfig::default();
        let mut p = Packager::new(cfg);
        p.set_init(b"i".to_vec());
        // Video with a keyframe every 7 parts: segments wait for it up to the cap.
        for i in 0..60u64 {
            p.push(frag(i * 520, (i + 1) * 520, i % 7 == 0));
        }
        let text = p.playlist().unwrap();
        let target: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("#EXT-X-TARGETDURATION:"))
            .unwrap()
            .parse()
            .unwrap();
        for d in text.lines().filter_map(|l| l.strip_prefix("#EXTINF:")) {
            let d: f64 = d.trim_end_matches(',').parse().unwrap();
            assert!(d.round() <= target, "{d} > {target}\n{text}");
            assert!(d >= 2.0, "{d}");
        }
        assert!(!text.contains("#EXT-X-INDEPENDENT-SEGMENTS"));
    }

    #[test]
    fn window_slides_and_old_parts_go() {
        let p = audio_packager(200);
        let text = p.playlist().unwrap();
        assert_eq!(text.matches("#EXTINF:").count(), 6);
        assert!(text.contains("#EXT-X-MEDIA-SEQUENCE:43\n"), "{text}");
        // Parts listed for the last three complete segments and the open one only.
        assert!(!text.contains("part45."));
        assert!(text.contains("part46.0.m4s"));
        assert!(p.segment(41).is_some() && p.segment(40).is_none());
        assert!(p.part(45, 0).is_none());
    }

    #[test]
    fn blocking_requests_and_the_end() {
        let mut p = audio_packager(5);
        assert!(p.ready(Want { msn: 0, part: None }));
        assert!(!p.ready(Want { msn: 1, part: None }));
        assert!(p.ready(Want {
            msn: 1,
            part: Some(0)
        }));
        assert!(!p.ready(Want {
            msn: 1,
            part: Some(1)
        }));
        assert!(p.part_is_near(1, 1) && !p.part_is_near(1, 2) && !p.part_is_near(3, 0));
        assert!(p.part_is_near(2, 0), "the next segment's first part");
        assert!(!p.too_far(Want { msn: 4, part: None }));
        assert!(p.too_far(Want { msn: 5, part: None }));
        p.end();
        assert!(p.ready(Want { msn: 3, part: None }));
        let text = p.playlist().unwrap();
        assert!(
            text.ends_with("#EXTINF:0.50000,\nseg1.m4s\n#EXT-X-ENDLIST\n"),
            "{text}"
        );
        assert!(!text.contains("PRELOAD-HINT"));
        p.push(frag(3000, 3500, true));
        assert!(p.segment(2).is_none(), "nothing after the end");
    }

    #[test]
    fn durations_follow_the_timeline_across_gaps() {
        let mut p = Packager::new(HlsConfig::default());
        p.set_init(b"i".to_vec());
        p.push(frag(1000, 1500, true));
        p.push(frag(1500, 2000, true));
        p.push(frag(2600, 3000, true)); // 100 ms gap carried by the tfdt
        p.push(frag(3000, 3500, true));
        p.push(frag(3500, 4000, true));
        let text = p.playlist().unwrap();
        // The gap goes to the part after it: EXTINF adds up to the media timeline.
        assert!(
            text.contains("DURATION=1.00000,URI=\"part0.2.m4s\""),
            "{text}"
        );
        assert!(text.contains("#EXTINF:2.00000,\nseg0.m4s"), "{text}");
    }
}
