//! H.264 from RTP (RFC 6184): depacketisation of single NAL units, STAP-A and FU-A into
//! access units, and the SPS fields the MP4 sample entry needs (size, profile).
//!
//! Sans-IO and codec-agnostic beyond NAL headers: no decoding. Malformed payloads are counted
//! and dropped, never a panic. Loss (a sequence gap) damages the access unit in progress, which
//! is dropped; the caller then waits for the next keyframe ([`AccessUnit::keyframe`]).

use bytes::Bytes;

pub const NAL_IDR: u8 = 5;
pub const NAL_SPS: u8 = 7;
pub const NAL_PPS: u8 = 8;
const NAL_STAP_A: u8 = 24;
const NAL_FU_A: u8 = 28;

/// One picture's NAL units, all with the same RTP timestamp.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessUnit {
    pub timestamp: u32,
    pub nals: Vec<Bytes>,
    /// Contains an IDR slice.
    pub keyframe: bool,
}

impl AccessUnit {
    /// The AVCC (MP4) form: each NAL preceded by its 4-byte length.
    pub fn to_avcc(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.nals.iter().map(|n| n.len() + 4).sum());
        for n in &self.nals {
            let len = u32::try_from(n.len()).unwrap_or(u32::MAX);
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(n);
        }
        out
    }
}

#[derive(Debug, Default)]
pub struct Depacketizer {
    current: Option<(u32, Vec<Bytes>)>,
    fu: Option<Vec<u8>>,
    damaged: bool,
    last_seq: Option<u16>,
    /// Latest parameter sets seen (in-band).
    pub sps: Option<Bytes>,
    pub pps: Option<Bytes>,
    /// Packets that could not be parsed.
    pub malformed: u64,
    /// Access units dropped because a packet of theirs was lost.
    pub damaged_units: u64,
}

impl Depacketizer {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds one RTP payload; returns the access units it completed (0, 1 or 2).
    pub fn push(
        &mut self,
        seq: u16,
        timestamp: u32,
        marker: bool,
        payload: &[u8],
    ) -> Vec<AccessUnit> {
        let mut done = Vec::new();
        if let Some(prev) = self.last_seq {
            if seq != prev.wrapping_add(1) {
                // Loss (or reordering, which the RTP session is expected to have fixed).
                self.damaged = true;
                self.fu = None;
            }
        }
        self.last_seq = Some(seq);
        if let Some((ts, _)) = &self.current {
            if *ts != timestamp {
                done.extend(self.finish());
            }
        }
        if self.current.is_none() {
            self.current = Some((timestamp, Vec::new()));
        }
        if self.parse(payload).is_err() {
            self.malformed += 1;
            self.damaged = true;
        }
        if marker {
            done.extend(self.finish());
        }
        done
    }

    fn add_nal(&mut self, nal: Bytes) {
        if nal.is_empty() {
            return;
        }
        match nal[0] & 0x1F {
            NAL_SPS => self.sps = Some(nal.clone()),
            NAL_PPS => self.pps = Some(nal.clone()),
            _ => {}
        }
        if let Some((_, nals)) = &mut self.current {
            nals.push(nal);
        }
    }

    fn parse(&mut self, p: &[u8]) -> Result<(), ()> {
        let first = *p.first().ok_or(())?;
        match first & 0x1F {
            1..=23 => self.add_nal(Bytes::copy_from_slice(p)),
            NAL_STAP_A => {
                let mut rest = &p[1..];
                while !rest.is_empty() {
                    if rest.len() < 2 {
                        return Err(());
                    }
                    let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
                    let nal = rest.get(2..2 + len).ok_or(())?;
                    self.add_nal(Bytes::copy_from_slice(nal));
                    rest = &rest[2 + len..];
                }
            }
            NAL_FU_A => {
                let fu_header = *p.get(1).ok_or(())?;
                let data = &p[2..];
                let start = fu_header & 0x80 != 0;
                let end = fu_header & 0x40 != 0;
                if start {
                    let mut nal = Vec::with_capacity(data.len() * 4);
                    nal.push((first & 0xE0) | (fu_header & 0x1F));
                    nal.extend_from_slice(data);
                    self.fu = Some(nal);
                } else if let Some(nal) = &mut self.fu {
                    nal.extend_from_slice(data);
                } else {
                    // A middle or end without its start: the start was lost.
                    return Err(());
                }
                if end {
                    if let Some(nal) = self.fu.take() {
                        self.add_nal(Bytes::from(nal));
                    }
                }
            }
            _ => return Err(()),
        }
        Ok(())
    }

    fn finish(&mut self) -> Option<AccessUnit> {
        let (timestamp, nals) = self.current.take()?;
        let damaged = std::mem::take(&mut self.damaged) || self.fu.take().is_some();
        if damaged {
            self.damaged_units += 1;
            return None;
        }
        if nals.is_empty() {
            return None;
        }
        let keyframe = nals
            .iter()
            .any(|n| n.first().map(|b| b & 0x1F) == Some(NAL_IDR));
        Some(AccessUnit {
            timestamp,
            nals,
            keyframe,
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    // The SPS libx264 (ffmpeg 5.1, `-profile:v baseline`) writes for testsrc 320x240.
    const SPS_320X240: &[u8] = &[
        0x67, 0x42, 0xC0, 0x0D, 0xD9, 0x01, 0x41, 0xFB, 0x01, 0x10, 0x00, 0x00, 0x03, 0x00, 0x10,
        0x00, 0x00, 0x03, 0x03, 0x20, 0xF1, 0x42, 0xA4, 0x80,
    ];

    #[test]
    fn sps_size() {
        let i = parse_sps(SPS_320X240).unwrap();
        assert_eq!((i.width, i.height, i.profile_idc), (320, 240, 66));
        assert!(parse_sps(&[0x67, 0x42]).is_none());
        assert!(parse_sps(&[]).is_none());
    }

    #[test]
    fn stap_a_and_fu_a_make_one_keyframe() {
        let mut d = Depacketizer::new();
        let mut stap = vec![0x78];
        for nal in [SPS_320X240, &[0x68, 0xCE, 0x38, 0x80][..]] {
            stap.extend_from_slice(&(nal.len() as u16).to_be_bytes());
            stap.extend_from_slice(nal);
        }
        assert!(d.push(1, 9000, false, &stap).is_empty());
        assert!(d.push(2, 9000, false, &[0x7C, 0x85, 1, 2]).is_empty());
        assert!(d.push(3, 9000, false, &[0x7C, 0x05, 3]).is_empty());
        let aus = d.push(4, 9000, true, &[0x7C, 0x45, 4]);
        assert_eq!(aus.len(), 1);
        assert!(aus[0].keyframe);
        assert_eq!(aus[0].nals.len(), 3);
        assert_eq!(&aus[0].nals[2][..], &[0x65, 1, 2, 3, 4]);
        assert!(d.sps.is_some() && d.pps.is_some());
        // Timestamp change without marker completes the previous unit.
        assert!(d.push(5, 12000, false, &[0x41, 9]).is_empty());
        let aus = d.push(6, 15000, false, &[0x41, 10]);
        assert_eq!(aus.len(), 1);
        assert!(!aus[0].keyframe);
    }

    #[test]
    fn loss_drops_the_unit_and_garbage_does_not_panic() {
        let mut d = Depacketizer::new();
        d.push(1, 0, false, &[0x7C, 0x85, 1]);
        assert!(d.push(3, 0, true, &[0x7C, 0x45, 2]).is_empty());
        assert_eq!(d.damaged_units, 1);
        for junk in [&[][..], &[0x78, 0, 9, 1], &[0x7C], &[0x1F, 1], &[0x78, 0]] {
            d.push(10, 5, true, junk);
        }
        assert!(d.malformed >= 4);
    }
}
