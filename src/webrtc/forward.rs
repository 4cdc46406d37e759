//! What happens to a stream's RTP on its way to one player, as plain state machines:
//! [`Rewriter`] gives the player one continuous RTP stream (its own SSRC, the payload type the
//! browser chose, sequence numbers and timestamps without jumps when the SIP side changes its
//! SSRC after a re-INVITE); [`KeyframeGate`] holds video back until a player that joined
//! mid-call can decode it.

use crate::registry::MediaUnit;

/// The header fields of one outgoing packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutHeader {
    pub payload_type: u8,
    pub seq: u16,
    pub timestamp: u32,
    pub marker: bool,
    pub ssrc: u32,
}

/// Maps the registry's units (possibly from several source SSRCs over a call's life) onto
/// one outgoing RTP stream.
#[derive(Debug, Clone)]
pub struct Rewriter {
    ssrc: u32,
    payload_type: u8,
    /// Timestamp step assumed across a source change (one 20 ms frame).
    gap: u32,
    source: Option<u32>,
    seq_offset: u16,
    ts_offset: u32,
    last: Option<(u16, u32)>,
}

impl Rewriter {
    pub fn new(ssrc: u32, payload_type: u8, clock_rate: u32) -> Self {
        Self {
            ssrc,
            payload_type,
            gap: (clock_rate / 50).max(1),
            source: None,
            seq_offset: 0,
            ts_offset: 0,
            last: None,
        }
    }

    pub fn rewrite(&mut self, unit: &MediaUnit) -> OutHeader {
        let mut marker = unit.marker;
        if self.source != Some(unit.ssrc) {
            if let Some((seq, ts)) = self.last {
                self.seq_offset = seq.wrapping_add(1).wrapping_sub(unit.seq);
                self.ts_offset = ts.wrapping_add(self.gap).wrapping_sub(unit.timestamp);
                // A new source is a new talk spurt for the player's jitter buffer.
                marker = true;
            }
            self.source = Some(unit.ssrc);
        }
        let seq = unit.seq.wrapping_add(self.seq_offset);
        let timestamp = unit.timestamp.wrapping_add(self.ts_offset);
        self.last = Some((seq, timestamp));
        OutHeader {
            payload_type: self.payload_type,
            seq,
            timestamp,
            marker,
            ssrc: self.ssrc,
        }
    }
}

/// Whether an H264 RTP payload (RFC 6184) starts a keyframe: an IDR slice or SPS, alone, in a
/// STAP-A, or as the first fragment of an FU-A.
pub fn h264_starts_keyframe(payload: &[u8]) -> bool {
    let is_key = |nal_type: u8| nal_type == 5 || nal_type == 7;
    let Some(&first) = payload.first() else {
        return false;
    };
    match first & 0x1f {
        24 => {
            // STAP-A: [size:16][NAL] ...
            let mut rest = &payload[1..];
            while rest.len() > 2 {
                let size = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
                let Some(nal) = rest.get(2..2 + size) else {
                    return false;
                };
                if nal.first().is_some_and(|h| is_key(h & 0x1f)) {
                    return true;
                }
                rest = &rest[2 + size..];
            }
            false
        }
        28 => payload
            .get(1)
            .is_some_and(|fu| fu & 0x80 != 0 && is_key(fu & 0x1f)),
        t => is_key(t),
    }
}

/// Drops video until the first keyframe; everything after it passes.
#[derive(Debug, Clone, Default)]
pub struct KeyframeGate {
    open: bool,
    /// Packets held back while waiting.
    pub dropped: u64,
}

impl KeyframeGate {
    pub fn is_open(&self) -> bool {
        self.open
    }

    /// Whether this H264 payload may be sent.
    pub fn pass(&mut self, payload: &[u8]) -> bool {
        if !self.open && h264_starts_keyframe(payload) {
            self.open = true;
        }
        if !self.open {
            self.dropped += 1;
        }
        self.open
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::time::Instant;

    fn unit(ssrc: u32, seq: u16, ts: u32) -> MediaUnit {
        MediaUnit {
            track: 0,
            payload_type: 0,
            seq,
            timestamp: ts,
            marker: false,
            ssrc,
            payload: Bytes::from_static(&[0xff; 160]),
            arrival: Instant::now(),
        }
    }

    #[test]
    fn one_source_passes_unchanged_but_for_ssrc_and_pt() {
        let mut r = Rewriter::new(7, 111, 8000);
        let h = r.rewrite(&unit(1, 100, 1000));
        assert_eq!(
            h,
            OutHeader {
                payload_type: 111,
                seq: 100,
                timestamp: 1000,
                marker: false,
                ssrc: 7
            }
        );
        let h = r.rewrite(&unit(1, 101, 1160));
        assert_eq!((h.seq, h.timestamp), (101, 1160));
    }

    #[test]
    fn a_new_source_continues_the_sequence() {
        let mut r = Rewriter::new(7, 0, 8000);
        r.rewrite(&unit(1, 65535, u32::MAX - 10));
        let h = r.rewrite(&unit(2, 5000, 42));
        assert_eq!(h.seq, 0);
        assert_eq!(h.timestamp, (u32::MAX - 10).wrapping_add(160));
        assert!(h.marker);
        let h = r.rewrite(&unit(2, 5001, 202));
        assert_eq!((h.seq, h.timestamp, h.marker), (1, 149 + 160, false));
    }

    #[test]
    fn keyframe_detection() {
        assert!(h264_starts_keyframe(&[0x65, 0x88])); // IDR
        assert!(h264_starts_keyframe(&[0x67, 0x42])); // SPS
        assert!(!h264_starts_keyframe(&[0x41, 0x9a])); // non-IDR slice
        assert!(h264_starts_keyframe(&[0x7c, 0x85, 0])); // FU-A start of IDR
        assert!(!h264_starts_keyframe(&[0x7c, 0x05, 0])); // FU-A middle
        assert!(h264_starts_keyframe(&[0x78, 0, 2, 0x67, 0x42, 0, 1, 0x68])); // STAP-A SPS+PPS
        assert!(!h264_starts_keyframe(&[0x78, 0, 9, 0x67])); // truncated STAP-A
        assert!(!h264_starts_keyframe(&[]));
        let mut g = KeyframeGate::default();
        assert!(!g.pass(&[0x41]));
        assert!(g.pass(&[0x65]));
        assert!(g.pass(&[0x41]));
        assert_eq!(g.dropped, 1);
    }
}
