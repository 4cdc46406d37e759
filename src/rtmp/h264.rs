//! H264 RTP depacketiser (RFC 6184 packetization-mode 0 and 1: single NAL unit, STAP-A,
//! FU-A) into access units, with the SPS/PPS kept apart for the AVC sequence header.
//!
//! Sans-IO and allocation-light: `push` RTP payloads in arrival order, `pull` finished access
//! units. An access unit ends on the RTP marker bit or when the timestamp changes. Lost or
//! malformed packets drop the NAL unit they belong to (counted), never the depacketiser.
//!
//! The recording work (src/record/) needs the same thing; this one lives here until the two
//! are unified into src/media/.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};
use thiserror::Error;

pub const NAL_IDR: u8 = 5;
pub const NAL_SEI: u8 = 6;
pub const NAL_SPS: u8 = 7;
pub const NAL_PPS: u8 = 8;
pub const NAL_AUD: u8 = 9;
const STAP_A: u8 = 24;
const FU_A: u8 = 28;

/// Largest access unit we assemble; bigger ones are dropped (a 4K IDR is well below).
const MAX_AU_BYTES: usize = 8 << 20;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum H264Error {
    #[error("empty RTP payload (seq {seq})")]
    Empty { seq: u16 },
    #[error(
        "NAL unit type {nal_type} is not supported (seq {seq}; only single NAL, STAP-A, FU-A)"
    )]
    Unsupported { seq: u16, nal_type: u8 },
    #[error("truncated {what} at byte {at} (seq {seq})")]
    Truncated {
        seq: u16,
        what: &'static str,
        at: usize,
    },
    #[error("FU-A fragment without its start (seq {seq}): a packet was lost")]
    OrphanFragment { seq: u16 },
    #[error("access unit larger than {MAX_AU_BYTES} bytes dropped (seq {seq})")]
    TooLarge { seq: u16 },
}

/// One picture: its NAL units (without start codes or lengths, without SPS/PPS/AUD).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessUnit {
    /// The RTP timestamp (90 kHz).
    pub timestamp: u32,
    pub nalus: Vec<Bytes>,
    /// Contains an IDR slice.
    pub keyframe: bool,
}

#[derive(Debug, Default)]
pub struct Depacketizer {
    ts: Option<u32>,
    nalus: Vec<Bytes>,
    au_bytes: usize,
    fu: Option<BytesMut>,
    last_seq: Option<u16>,
    sps: Option<Bytes>,
    pps: Option<Bytes>,
    params_changed: bool,
    ready: VecDeque<AccessUnit>,
    /// NAL units lost to gaps or malformed packets.
    pub dropped_nalus: u64,
}

impl Depacketizer {
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes the SDP's `sprop-parameter-sets` (from an `a=fmtp` line) as initial SPS/PPS.
    pub fn set_fmtp(&mut self, fmtp: &str) {
        let Some(sets) = fmtp
            .split(';')
            .filter_map(|p| p.trim().split_once('='))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("sprop-parameter-sets"))
            .map(|(_, v)| v.trim())
        else {
            return;
        };
        for set in sets.split(',') {
            if let Some(nal) = base64_decode(set.trim()) {
                self.parameter_set(Bytes::from(nal));
            }
        }
    }

    /// The current SPS and PPS, once both were seen.
    pub fn parameter_sets(&self) -> Option<(&Bytes, &Bytes)> {
        Some((self.sps.as_ref()?, self.pps.as_ref()?))
    }

    /// Whether SPS or PPS changed since the last call (a new sequence header is due).
    pub fn take_params_changed(&mut self) -> bool {
        std::mem::take(&mut self.params_changed)
    }

    /// The next finished access unit.
    pub fn pull(&mut self) -> Option<AccessUnit> {
        self.ready.pop_front()
    }

    /// Feeds one RTP packet's payload. An error means (part of) this packet was dropped.
    pub fn push(
        &mut self,
        seq: u16,
        timestamp: u32,
        marker: bool,
        payload: &Bytes,
    ) -> Result<(), H264Error> {
        let gap = self.last_seq.is_some_and(|l| seq != l.wrapping_add(1));
        self.last_seq = Some(seq);
        if gap && self.fu.take().is_some() {
            self.dropped_nalus += 1;
        }
        if self.ts.is_some_and(|t| t != timestamp) {
            self.finish_au();
        }
        self.ts = Some(timestamp);
        let r = self.parse(seq, payload);
        if r.is_err() {
            self.dropped_nalus += 1;
        }
        if marker {
            self.finish_au();
        }
        r
    }

    fn parse(&mut self, seq: u16, payload: &Bytes) -> Result<(), H264Error> {
        let Some(&first) = payload.first() else {
            return Err(H264Error::Empty { seq });
        };
        match first & 0x1F {
            1..=23 => {
                self.nal(seq, payload.clone())?;
            }
            STAP_A => {
                let mut at = 1;
                while at < payload.len() {
                    let Some(len) = payload.get(at..at + 2) else {
                        return Err(H264Error::Truncated {
                            seq,
                            what: "STAP-A size",
                            at,
                        });
                    };
                    let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
                    at += 2;
                    if len == 0 || at + len > payload.len() {
                        return Err(H264Error::Truncated {
                            seq,
                            what: "STAP-A NAL unit",
                            at,
                        });
                    }
                    self.nal(seq, payload.slice(at..at + len))?;
                    at += len;
                }
            }
            FU_A => {
                let Some(&header) = payload.get(1) else {
                    return Err(H264Error::Truncated {
                        seq,
                        what: "FU-A header",
                        at: 1,
                    });
                };
                let (start, end) = (header & 0x80 != 0, header & 0x40 != 0);
                let data = &payload[2..];
                if start {
                    if self.fu.take().is_some() {
                        self.dropped_nalus += 1;
                    }
                    let mut b = BytesMut::with_capacity(1 + data.len() * 4);
                    b.extend_from_slice(&[(first & 0xE0) | (header & 0x1F)]);
                    b.extend_from_slice(data);
                    self.fu = Some(b);
                } else {
                    let Some(fu) = self.fu.as_mut() else {
                        return Err(H264Error::OrphanFragment { seq });
                    };
                    if fu.len() + data.len() > MAX_AU_BYTES {
                        self.fu = None;
                        return Err(H264Error::TooLarge { seq });
                    }
                    fu.extend_from_slice(data);
                }
                if end {
                    if let Some(fu) = self.fu.take() {
                        self.nal(seq, fu.freeze())?;
                    }
                }
            }
            nal_type => return Err(H264Error::Unsupported { seq, nal_type }),
        }
        Ok(())
    }

    fn nal(&mut self, seq: u16, nal: Bytes) -> Result<(), H264Error> {
        let Some(&h) = nal.first() else {
            return Ok(());
        };
        match h & 0x1F {
            NAL_SPS | NAL_PPS => self.parameter_set(nal),
            NAL_AUD => {}
            0 | 24..=31 => {
                return Err(H264Error::Unsupported {
                    seq,
                    nal_type: h & 0x1F,
                })
            }
            _ => {
                if self.au_bytes + nal.len() > MAX_AU_BYTES {
                    self.nalus.clear();
                    self.au_bytes = 0;
                    return Err(H264Error::TooLarge { seq });
                }
                self.au_bytes += nal.len();
                self.nalus.push(nal);
            }
        }
        Ok(())
    }

    fn parameter_set(&mut self, nal: Bytes) {
        let slot = match nal.first().map(|h| h & 0x1F) {
            Some(NAL_SPS) => &mut self.sps,
            Some(NAL_PPS) => &mut self.pps,
            _ => return,
        };
        if slot.as_ref() != Some(&nal) {
            *slot = Some(nal);
            self.params_changed = true;
        }
    }

    fn finish_au(&mut self) {
        if let Some(fu) = self.fu.take() {
            // A fragment without its end: the rest was lost.
            drop(fu);
            self.dropped_nalus += 1;
        }
        let nalus = std::mem::take(&mut self.nalus);
        self.au_bytes = 0;
        if let (Some(ts), false) = (self.ts, nalus.is_empty()) {
            let keyframe = nalus.iter().any(|n| n[0] & 0x1F == NAL_IDR);
            self.ready.push_back(AccessUnit {
                timestamp: ts,
                nalus,
                keyframe,
            });
        }
    }
}

/// Standard base64 (with or without padding); `None` on any other character.
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes().take_while(|&c| c != b'=') {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    (!out.is_empty()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(v: &[u8]) -> Bytes {
        Bytes::copy_from_slice(v)
    }

    #[test]
    fn single_nal_stap_a_and_fu_a_make_access_units() {
        let mut d = Depacketizer::new();
        // STAP-A with SPS + PPS.
        let stap = [24, 0, 4, 0x67, 0x42, 0, 0x1E, 0, 2, 0x68, 0xCE];
        d.push(1, 1000, false, &b(&stap)).unwrap();
        assert!(d.take_params_changed());
        let (sps, pps) = d.parameter_sets().unwrap();
        assert_eq!(
            (&sps[..], &pps[..]),
            (&[0x67, 0x42, 0, 0x1E][..], &[0x68, 0xCE][..])
        );
        // IDR in three FU-A fragments (NRI 3).
        d.push(2, 1000, false, &b(&[0x7C, 0x85, 1, 2])).unwrap();
        d.push(3, 1000, false, &b(&[0x7C, 0x05, 3])).unwrap();
        d.push(4, 1000, true, &b(&[0x7C, 0x45, 4])).unwrap();
        let au = d.pull().unwrap();
        assert!(au.keyframe);
        assert_eq!(au.timestamp, 1000);
        assert_eq!(au.nalus, vec![b(&[0x65, 1, 2, 3, 4])]);
        // A P slice, no marker: ends when the timestamp changes.
        d.push(5, 4000, false, &b(&[0x41, 9])).unwrap();
        assert!(d.pull().is_none());
        d.push(6, 7000, true, &b(&[0x09, 0x10])).unwrap(); // AUD only: no AU of its own
        let au = d.pull().unwrap();
        assert_eq!((au.timestamp, au.keyframe), (4000, false));
        assert!(d.pull().is_none());
        assert_eq!(d.dropped_nalus, 0);
    }

    #[test]
    fn a_lost_fragment_drops_only_its_nal_unit() {
        let mut d = Depacketizer::new();
        d.push(10, 0, false, &b(&[0x7C, 0x85, 1])).unwrap();
        // seq 11 lost
        d.push(12, 0, false, &b(&[0x7C, 0x05, 3])).unwrap_err();
        d.push(13, 0, false, &b(&[0x7C, 0x45, 4])).unwrap_err();
        d.push(14, 0, true, &b(&[0x41, 7])).unwrap();
        let au = d.pull().unwrap();
        assert_eq!(au.nalus, vec![b(&[0x41, 7])]);
        assert!(!au.keyframe);
        assert!(d.dropped_nalus >= 1);
    }

    #[test]
    fn garbage_never_panics() {
        let mut d = Depacketizer::new();
        let samples: [&[u8]; 8] = [
            &[],
            &[24],
            &[24, 0],
            &[24, 0, 9, 1],
            &[24, 0, 0],
            &[28],
            &[29, 0, 1],
            &[0],
        ];
        for (i, p) in samples.iter().enumerate() {
            let _ = d.push(i as u16, 0, true, &b(p));
        }
        for len in 0..40u8 {
            let p: Vec<u8> = (0..len).map(|i| i.wrapping_mul(37) ^ len).collect();
            let _ = d.push(100 + u16::from(len), u32::from(len), len % 3 == 0, &b(&p));
        }
        while d.pull().is_some() {}
    }

    #[test]
    fn sprop_parameter_sets_seed_the_parameter_sets() {
        let mut d = Depacketizer::new();
        d.set_fmtp("profile-level-id=42e01e;packetization-mode=1;sprop-parameter-sets=Z0LgHtoCgPRA,aM48gA==");
        let (sps, pps) = d.parameter_sets().unwrap();
        assert_eq!(&sps[..4], &[0x67, 0x42, 0xE0, 0x1E]);
        assert_eq!(&pps[..], &[0x68, 0xCE, 0x3C, 0x80]);
        assert_eq!(base64_decode("TWFu").unwrap(), b"Man");
        assert!(base64_decode("a*b").is_none());
    }
}
