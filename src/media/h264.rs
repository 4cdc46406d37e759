//! H264 RTP depacketiser (RFC 6184 packetization-mode 0 and 1: single NAL unit, STAP-A,
//! FU-A) into access units, with the SPS/PPS kept apart for the AVC sequence header.
//!
//! Sans-IO and allocation-light: `push` RTP payloads in arrival order, `pull` finished access
//! units. An access unit ends on the RTP marker bit or when the timestamp changes. Lost or
//! malformed packets drop the NAL unit they belong to (counted), never the depacketiser.
//!
//! Loss is marked, not hidden: an access unit that lost a packet (a sequence gap while it was
//! being assembled) or had a malformed one comes out with `damaged` set, so an output that
//! cannot show a broken picture (the recorder) can drop it and wait for the next keyframe,
//! while one that prefers continuity (the RTMP push) can send it anyway.
//!
//! Shared by the recorder (src/record/) and the RTMP push (src/rtmp/); [`parse_sps`] reads
//! the picture size for MP4 sample entries and FLV metadata.

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
    /// A packet of this unit was lost or malformed: some NAL units may be missing.
    pub damaged: bool,
}

impl AccessUnit {
    /// The AVCC (MP4/FLV) form: each NAL unit preceded by its 4-byte length.
    pub fn to_avcc(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.nalus.iter().map(|n| n.len() + 4).sum());
        for n in &self.nalus {
            let len = u32::try_from(n.len()).unwrap_or(u32::MAX);
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(n);
        }
        out
    }
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
    /// The unit being assembled lost or mangled a packet.
    damaged: bool,
    /// NAL units lost to gaps or malformed packets.
    pub dropped_nalus: u64,
    /// Access units that came out `damaged`.
    pub damaged_units: u64,
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
            // The lost packet may have been this unit's tail as well as the next one's head.
            self.damaged |= gap;
            self.finish_au();
        }
        self.ts = Some(timestamp);
        self.damaged |= gap;
        let r = self.parse(seq, payload);
        if r.is_err() {
            self.dropped_nalus += 1;
            self.damaged = true;
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
            self.damaged = true;
        }
        let nalus = std::mem::take(&mut self.nalus);
        let damaged = std::mem::take(&mut self.damaged);
        self.au_bytes = 0;
        if let (Some(ts), false) = (self.ts, nalus.is_empty()) {
            let keyframe = nalus.iter().any(|n| n[0] & 0x1F == NAL_IDR);
            if damaged {
                self.damaged_units += 1;
            }
            self.ready.push_back(AccessUnit {
                timestamp: ts,
                nalus,
                keyframe,
                damaged,
            });
        }
    }
}

/// What an SPS says about the picture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpsInfo {
    pub profile_idc: u8,
    pub level_idc: u8,
    pub width: u16,
    pub height: u16,
}

struct Bits {
    data: Vec<u8>,
    pos: usize,
}

impl Bits {
    fn bit(&mut self) -> Option<u32> {
        let byte = *self.data.get(self.pos / 8)?;
        let b = (byte >> (7 - (self.pos % 8))) & 1;
        self.pos += 1;
        Some(u32::from(b))
    }
    fn bits(&mut self, n: u32) -> Option<u32> {
        (0..n).try_fold(0u32, |acc, _| Some((acc << 1) | self.bit()?))
    }
    fn ue(&mut self) -> Option<u32> {
        let mut zeros = 0;
        while self.bit()? == 0 {
            zeros += 1;
            if zeros > 31 {
                return None;
            }
        }
        Some(((1u64 << zeros) - 1 + u64::from(self.bits(zeros)?)) as u32)
    }
    fn se(&mut self) -> Option<i32> {
        let k = self.ue()?;
        Some(if k % 2 == 1 {
            (k / 2 + 1) as i32
        } else {
            -((k / 2) as i32)
        })
    }
}

/// Parses an SPS NAL (with its header byte). `None` if it is truncated or not an SPS.
pub fn parse_sps(nal: &[u8]) -> Option<SpsInfo> {
    if nal.first()? & 0x1F != NAL_SPS {
        return None;
    }
    // Remove emulation prevention bytes (00 00 03).
    let mut data = Vec::with_capacity(nal.len());
    let mut zeros = 0;
    for &b in &nal[1..] {
        if zeros >= 2 && b == 3 {
            zeros = 0;
            continue;
        }
        zeros = if b == 0 { zeros + 1 } else { 0 };
        data.push(b);
    }
    let mut r = Bits { data, pos: 0 };
    let profile_idc = r.bits(8)? as u8;
    r.bits(8)?;
    let level_idc = r.bits(8)? as u8;
    r.ue()?;
    let mut chroma_format_idc = 1;
    if matches!(
        profile_idc,
        100 | 110 | 122 | 244 | 44 | 83 | 86 | 118 | 128 | 138 | 139 | 134 | 135
    ) {
        chroma_format_idc = r.ue()?;
        if chroma_format_idc == 3 {
            r.bit()?;
        }
        r.ue()?;
        r.ue()?;
        r.bit()?;
        if r.bit()? == 1 {
            let lists = if chroma_format_idc == 3 { 12 } else { 8 };
            for i in 0..lists {
                if r.bit()? == 1 {
                    let size = if i < 6 { 16 } else { 64 };
                    let (mut last, mut next) = (8i32, 8i32);
                    for _ in 0..size {
                        if next != 0 {
                            next = (last + r.se()? + 256) % 256;
                        }
                        if next != 0 {
                            last = next;
                        }
                    }
                }
            }
        }
    }
    r.ue()?; // log2_max_frame_num_minus4
    match r.ue()? {
        0 => {
            r.ue()?;
        }
        1 => {
            r.bit()?;
            r.se()?;
            r.se()?;
            let n = r.ue()?;
            if n > 255 {
                return None;
            }
            for _ in 0..n {
                r.se()?;
            }
        }
        _ => {}
    }
    r.ue()?; // max_num_ref_frames
    r.bit()?;
    let w_mbs = u64::from(r.ue()?) + 1;
    let h_units = u64::from(r.ue()?) + 1;
    let frame_mbs_only = u64::from(r.bit()?);
    if frame_mbs_only == 0 {
        r.bit()?;
    }
    r.bit()?;
    let (mut cl, mut cr, mut ct, mut cb) = (0u64, 0u64, 0u64, 0u64);
    if r.bit()? == 1 {
        cl = u64::from(r.ue()?);
        cr = u64::from(r.ue()?);
        ct = u64::from(r.ue()?);
        cb = u64::from(r.ue()?);
    }
    let (sub_w, sub_h) = match chroma_format_idc {
        0 | 3 => (1, 1),
        2 => (2, 1),
        _ => (2, 2),
    };
    let crop_x = if chroma_format_idc == 0 { 1 } else { sub_w };
    let crop_y = (if chroma_format_idc == 0 { 1 } else { sub_h }) * (2 - frame_mbs_only);
    let width = (w_mbs * 16).checked_sub(crop_x * (cl + cr))?;
    let height = ((2 - frame_mbs_only) * h_units * 16).checked_sub(crop_y * (ct + cb))?;
    Some(SpsInfo {
        profile_idc,
        level_idc,
        width: u16::try_from(width).ok()?,
        height: u16::try_from(height).ok()?,
    })
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

/// The SPS libx264 (ffmpeg 5.1, `-profile:v baseline`) writes for testsrc 320x240.
#[cfg(test)]
pub(crate) const SPS_320X240: &[u8] = &[
    0x67, 0x42, 0xC0, 0x0D, 0xD9, 0x01, 0x41, 0xFB, 0x01, 0x10, 0x00, 0x00, 0x03, 0x00, 0x10, 0x00,
    0x00, 0x03, 0x03, 0x20, 0xF1, 0x42, 0xA4, 0x80,
];

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
        assert_eq!(
            (au.timestamp, au.keyframe, au.damaged),
            (4000, false, false)
        );
        assert!(d.pull().is_none());
        assert_eq!(d.dropped_nalus, 0);
        assert_eq!(au.to_avcc(), vec![0, 0, 0, 2, 0x41, 9]);
    }

    #[test]
    fn sps_size() {
        let i = parse_sps(SPS_320X240).unwrap();
        assert_eq!((i.width, i.height, i.profile_idc), (320, 240, 66));
        assert!(parse_sps(&[0x67, 0x42]).is_none());
        assert!(parse_sps(&[]).is_none());
    }

    #[test]
    fn a_lost_fragment_drops_only_its_nal_unit_and_marks_the_unit_damaged() {
        let mut d = Depacketizer::new();
        d.push(10, 0, false, &b(&[0x7C, 0x85, 1])).unwrap();
        // seq 11 lost
        d.push(12, 0, false, &b(&[0x7C, 0x05, 3])).unwrap_err();
        d.push(13, 0, false, &b(&[0x7C, 0x45, 4])).unwrap_err();
        d.push(14, 0, true, &b(&[0x41, 7])).unwrap();
        let au = d.pull().unwrap();
        assert_eq!(au.nalus, vec![b(&[0x41, 7])]);
        assert!(!au.keyframe);
        assert!(au.damaged);
        assert!(d.dropped_nalus >= 1);
        assert_eq!(d.damaged_units, 1);
        // The next unit, received whole, is clean again.
        d.push(15, 3000, true, &b(&[0x41, 8])).unwrap();
        assert!(!d.pull().unwrap().damaged);
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
