//! RTCP (RFC 3550 §6): a tolerant parser for compound packets and builders for the few
//! packets the gateway sends (RR + SDES CNAME, PLI, FIR).
//!
//! Tolerant means: unknown packet types, unknown SDES items, profile-specific extensions after
//! report blocks and a compound that does not start with SR/RR (reduced-size RTCP, RFC 5506)
//! are accepted. What is rejected is anything that would make us read past a length: every
//! packet's length field is checked against the datagram, every count against the packet.
//! No state lives here.

use thiserror::Error;

pub const PT_SR: u8 = 200;
pub const PT_RR: u8 = 201;
pub const PT_SDES: u8 = 202;
pub const PT_BYE: u8 = 203;
pub const PT_APP: u8 = 204;
pub const PT_RTPFB: u8 = 205;
pub const PT_PSFB: u8 = 206;
/// PSFB FMT for Picture Loss Indication (RFC 4585 §6.3.1).
pub const FMT_PLI: u8 = 1;
/// PSFB FMT for Full Intra Request (RFC 5104 §4.3.1).
pub const FMT_FIR: u8 = 4;
const SDES_CNAME: u8 = 1;

/// Why a datagram is not a valid compound RTCP packet. `at` is the byte offset in the
/// datagram of the RTCP packet that failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RtcpError {
    #[error("RTCP packet at byte {at}: {len} bytes left, a header needs 4")]
    TooShort { at: usize, len: usize },
    #[error("RTCP packet at byte {at}: version {version}, expected 2")]
    BadVersion { at: usize, version: u8 },
    #[error(
        "RTCP packet at byte {at} (PT {pt}): length field says {declared} bytes, {available} left"
    )]
    LengthOverrun {
        at: usize,
        pt: u8,
        declared: usize,
        available: usize,
    },
    #[error("RTCP packet at byte {at} (PT {pt}): body of {len} bytes too short for its {what}")]
    BodyTooShort {
        at: usize,
        pt: u8,
        len: usize,
        what: &'static str,
    },
    #[error("RTCP packet at byte {at}: padding count {padding} invalid for a {len}-byte packet")]
    BadPadding { at: usize, padding: u8, len: usize },
}

/// One reception report block (RFC 3550 §6.4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReportBlock {
    pub ssrc: u32,
    pub fraction_lost: u8,
    /// Cumulative number of packets lost, a signed 24-bit value on the wire.
    pub cumulative_lost: i32,
    pub highest_seq: u32,
    pub jitter: u32,
    pub lsr: u32,
    pub dlsr: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SenderReport {
    pub ssrc: u32,
    /// 64-bit NTP timestamp.
    pub ntp: u64,
    pub rtp_ts: u32,
    pub packet_count: u32,
    pub octet_count: u32,
    pub reports: Vec<ReportBlock>,
}

/// One SDES chunk; only CNAME is kept, other items are skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SdesChunk<'a> {
    pub ssrc: u32,
    pub cname: Option<&'a [u8]>,
}

/// One packet of a compound RTCP datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RtcpPacket<'a> {
    SenderReport(SenderReport),
    ReceiverReport {
        ssrc: u32,
        reports: Vec<ReportBlock>,
    },
    Sdes(Vec<SdesChunk<'a>>),
    Bye {
        ssrcs: Vec<u32>,
        reason: Option<&'a [u8]>,
    },
    App {
        subtype: u8,
        ssrc: u32,
        name: [u8; 4],
        data: &'a [u8],
    },
    Pli {
        sender_ssrc: u32,
        media_ssrc: u32,
    },
    Fir {
        sender_ssrc: u32,
        /// (SSRC of the media sender asked for a key frame, command sequence number).
        requests: Vec<(u32, u8)>,
    },
    /// Other transport-layer feedback (e.g. generic NACK, FMT 1).
    TransportFeedback {
        fmt: u8,
        sender_ssrc: u32,
        media_ssrc: u32,
        fci: &'a [u8],
    },
    /// Other payload-specific feedback (SLI, RPSI, REMB, ...).
    PayloadFeedback {
        fmt: u8,
        sender_ssrc: u32,
        media_ssrc: u32,
        fci: &'a [u8],
    },
    Unknown {
        pt: u8,
        count: u8,
        body: &'a [u8],
    },
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    match b.get(at..at.checked_add(4)?) {
        Some(&[a, b, c, d]) => Some(u32::from_be_bytes([a, b, c, d])),
        _ => None,
    }
}

fn report_blocks(body: &[u8], at: usize, count: u8, pt: u8) -> Result<Vec<ReportBlock>, RtcpError> {
    let n = usize::from(count);
    let short = RtcpError::BodyTooShort {
        at,
        pt,
        len: body.len(),
        what: "report blocks",
    };
    if body.len() < n * 24 {
        return Err(short);
    }
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let o = i * 24;
        let word = |k: usize| be32(body, o + 4 * k).ok_or_else(|| short.clone());
        let w1 = word(1)?;
        // Sign-extend the 24-bit cumulative loss.
        let lost24 = (w1 & 0x00FF_FFFF) as i32;
        let cumulative_lost = (lost24 << 8) >> 8;
        out.push(ReportBlock {
            ssrc: word(0)?,
            fraction_lost: (w1 >> 24) as u8,
            cumulative_lost,
            highest_seq: word(2)?,
            jitter: word(3)?,
            lsr: word(4)?,
            dlsr: word(5)?,
        });
    }
    Ok(out)
}

fn parse_sdes(body: &[u8], count: u8) -> Vec<SdesChunk<'_>> {
    let mut chunks = Vec::new();
    let mut pos = 0usize;
    for _ in 0..count {
        let Some(ssrc) = be32(body, pos) else { break };
        pos += 4;
        let mut cname = None;
        // Items until a zero type byte; then skip to the next 32-bit boundary.
        while let Some(&ty) = body.get(pos) {
            if ty == 0 {
                pos += 1;
                break;
            }
            let Some(&len) = body.get(pos + 1) else {
                pos = body.len();
                break;
            };
            let start = pos + 2;
            let end = start + usize::from(len);
            let Some(text) = body.get(start..end) else {
                pos = body.len();
                break;
            };
            if ty == SDES_CNAME {
                cname = Some(text);
            }
            pos = end;
        }
        pos = pos.div_ceil(4) * 4;
        chunks.push(SdesChunk { ssrc, cname });
    }
    chunks
}

fn parse_one(pt: u8, count: u8, body: &[u8], at: usize) -> Result<RtcpPacket<'_>, RtcpError> {
    let short = |what| RtcpError::BodyTooShort {
        at,
        pt,
        len: body.len(),
        what,
    };
    Ok(match pt {
        PT_SR => {
            let w = |k: usize| be32(body, 4 * k).ok_or_else(|| short("sender info"));
            let ntp = (u64::from(w(1)?) << 32) | u64::from(w(2)?);
            let (ssrc, rtp_ts, packet_count, octet_count) = (w(0)?, w(3)?, w(4)?, w(5)?);
            let rest = body.get(24..).unwrap_or(&[]);
            RtcpPacket::SenderReport(SenderReport {
                ssrc,
                ntp,
                rtp_ts,
                packet_count,
                octet_count,
                reports: report_blocks(rest, at, count, pt)?,
            })
        }
        PT_RR => {
            let ssrc = be32(body, 0).ok_or_else(|| short("sender SSRC"))?;
            let rest = body.get(4..).unwrap_or(&[]);
            RtcpPacket::ReceiverReport {
                ssrc,
                reports: report_blocks(rest, at, count, pt)?,
            }
        }
        PT_SDES => RtcpPacket::Sdes(parse_sdes(body, count)),
        PT_BYE => {
            let n = usize::from(count);
            let ssrcs = (0..n)
                .map(|i| be32(body, 4 * i).ok_or_else(|| short("SSRC list")))
                .collect::<Result<Vec<_>, _>>()?;
            let reason = body
                .get(4 * n)
                .and_then(|&len| body.get(4 * n + 1..4 * n + 1 + usize::from(len)));
            RtcpPacket::Bye { ssrcs, reason }
        }
        PT_APP => {
            let ssrc = be32(body, 0).ok_or_else(|| short("APP header"))?;
            let name = match body.get(4..8) {
                Some(&[a, b, c, d]) => [a, b, c, d],
                _ => return Err(short("APP name")),
            };
            RtcpPacket::App {
                subtype: count,
                ssrc,
                name,
                data: body.get(8..).unwrap_or(&[]),
            }
        }
        PT_RTPFB | PT_PSFB => {
            let sender_ssrc = be32(body, 0).ok_or_else(|| short("feedback header"))?;
            let media_ssrc = be32(body, 4).ok_or_else(|| short("feedback header"))?;
            let fci = body.get(8..).unwrap_or(&[]);
            match (pt, count) {
                (PT_PSFB, FMT_PLI) => RtcpPacket::Pli {
                    sender_ssrc,
                    media_ssrc,
                },
                (PT_PSFB, FMT_FIR) => RtcpPacket::Fir {
                    sender_ssrc,
                    requests: fci
                        .chunks_exact(8)
                        .filter_map(|c| match c {
                            &[a, b, c, d, seq, ..] => Some((u32::from_be_bytes([a, b, c, d]), seq)),
                            _ => None,
                        })
                        .collect(),
                },
                (PT_PSFB, fmt) => RtcpPacket::PayloadFeedback {
                    fmt,
                    sender_ssrc,
                    media_ssrc,
                    fci,
                },
                (_, fmt) => RtcpPacket::TransportFeedback {
                    fmt,
                    sender_ssrc,
                    media_ssrc,
                    fci,
                },
            }
        }
        _ => RtcpPacket::Unknown { pt, count, body },
    })
}

/// Parses every packet of a compound RTCP datagram. Fails on the first packet whose
/// framing is broken (the packets before it are not returned: a broken compound is not
/// trusted).
pub fn parse_compound(buf: &[u8]) -> Result<Vec<RtcpPacket<'_>>, RtcpError> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while at < buf.len() {
        let rest = buf.get(at..).unwrap_or(&[]);
        let (b0, pt, words) = match rest {
            &[b0, pt, hi, lo, ..] => (b0, pt, u16::from_be_bytes([hi, lo])),
            _ => {
                return Err(RtcpError::TooShort {
                    at,
                    len: rest.len(),
                })
            }
        };
        let version = b0 >> 6;
        if version != 2 {
            return Err(RtcpError::BadVersion { at, version });
        }
        let declared = (usize::from(words) + 1) * 4;
        let Some(pkt) = rest.get(..declared) else {
            return Err(RtcpError::LengthOverrun {
                at,
                pt,
                declared,
                available: rest.len(),
            });
        };
        let mut body = pkt.get(4..).unwrap_or(&[]);
        if b0 & 0x20 != 0 {
            let padding = pkt.last().copied().unwrap_or(0);
            let keep = body.len().checked_sub(usize::from(padding));
            match keep {
                Some(k) if padding != 0 => body = body.get(..k).unwrap_or(&[]),
                _ => {
                    return Err(RtcpError::BadPadding {
                        at,
                        padding,
                        len: declared,
                    })
                }
            }
        }
        out.push(parse_one(pt, b0 & 0x1F, body, at)?);
        at += declared;
    }
    if out.is_empty() {
        return Err(RtcpError::TooShort { at: 0, len: 0 });
    }
    Ok(out)
}

/// Writes an RTCP header and returns the offset of the length field to patch.
fn begin(out: &mut Vec<u8>, count: u8, pt: u8) -> usize {
    out.push(0x80 | (count & 0x1F));
    out.push(pt);
    let at = out.len();
    out.extend_from_slice(&[0, 0]);
    at
}

/// Patches the length field (32-bit words minus one) of the packet started at `len_at - 2`.
fn finish(out: &mut [u8], len_at: usize) {
    let start = len_at - 2;
    let words = ((out.len() - start) / 4).saturating_sub(1);
    let words = u16::try_from(words).unwrap_or(u16::MAX).to_be_bytes();
    if let Some(slot) = out.get_mut(len_at..len_at + 2) {
        slot.copy_from_slice(&words);
    }
}

fn write_block(out: &mut Vec<u8>, b: &ReportBlock) {
    out.extend_from_slice(&b.ssrc.to_be_bytes());
    let lost = (b.cumulative_lost.clamp(-0x80_0000, 0x7F_FFFF) as u32) & 0x00FF_FFFF;
    out.extend_from_slice(&((u32::from(b.fraction_lost) << 24) | lost).to_be_bytes());
    out.extend_from_slice(&b.highest_seq.to_be_bytes());
    out.extend_from_slice(&b.jitter.to_be_bytes());
    out.extend_from_slice(&b.lsr.to_be_bytes());
    out.extend_from_slice(&b.dlsr.to_be_bytes());
}

/// Appends a compound RR + SDES CNAME (RFC 3550 §6.4.2, §6.5.1, §6.1: every compound
/// carries a CNAME). At most 31 report blocks are written; `cname` is cut to 255 bytes.
pub fn write_rr_sdes(ssrc: u32, reports: &[ReportBlock], cname: &str, out: &mut Vec<u8>) {
    let reports = reports.get(..reports.len().min(31)).unwrap_or(&[]);
    let len_at = begin(out, reports.len() as u8, PT_RR);
    out.extend_from_slice(&ssrc.to_be_bytes());
    for b in reports {
        write_block(out, b);
    }
    finish(out, len_at);

    write_sdes_cname(ssrc, cname, out);
}

fn write_sdes_cname(ssrc: u32, cname: &str, out: &mut Vec<u8>) {
    let len_at = begin(out, 1, PT_SDES);
    out.extend_from_slice(&ssrc.to_be_bytes());
    let name = cname.as_bytes();
    let name = name.get(..name.len().min(255)).unwrap_or(&[]);
    out.push(SDES_CNAME);
    out.push(name.len() as u8);
    out.extend_from_slice(name);
    // End of item list: at least one zero byte, up to the next 32-bit boundary.
    out.push(0);
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
    finish(out, len_at);
}

/// Appends a compound SR + SDES CNAME (RFC 3550 §6.4.1): what a session that sent RTP
/// since its last report sends instead of an RR. At most 31 report blocks are written.
pub fn write_sr_sdes(sr: &SenderReport, cname: &str, out: &mut Vec<u8>) {
    let reports = sr.reports.get(..sr.reports.len().min(31)).unwrap_or(&[]);
    let len_at = begin(out, reports.len() as u8, PT_SR);
    out.extend_from_slice(&sr.ssrc.to_be_bytes());
    out.extend_from_slice(&sr.ntp.to_be_bytes());
    out.extend_from_slice(&sr.rtp_ts.to_be_bytes());
    out.extend_from_slice(&sr.packet_count.to_be_bytes());
    out.extend_from_slice(&sr.octet_count.to_be_bytes());
    for b in reports {
        write_block(out, b);
    }
    finish(out, len_at);
    write_sdes_cname(sr.ssrc, cname, out);
}

/// Seconds between the NTP epoch (1900) and the Unix epoch (1970).
const NTP_UNIX_OFFSET: u64 = 2_208_988_800;

/// A wall-clock time as a 64-bit NTP timestamp (32.32 fixed point since 1900). Times
/// before 1970 map to the Unix epoch.
pub fn ntp_from_system_time(t: std::time::SystemTime) -> u64 {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    ntp_add(NTP_UNIX_OFFSET << 32, d)
}

/// `ntp` advanced by `d` (wrapping, like NTP era rollover).
pub fn ntp_add(ntp: u64, d: std::time::Duration) -> u64 {
    let frac = (u64::from(d.subsec_nanos()) << 32) / 1_000_000_000;
    ntp.wrapping_add(d.as_secs().wrapping_shl(32))
        .wrapping_add(frac)
}

/// Appends a Picture Loss Indication (RFC 4585 §6.3.1).
pub fn write_pli(sender_ssrc: u32, media_ssrc: u32, out: &mut Vec<u8>) {
    let len_at = begin(out, FMT_PLI, PT_PSFB);
    out.extend_from_slice(&sender_ssrc.to_be_bytes());
    out.extend_from_slice(&media_ssrc.to_be_bytes());
    finish(out, len_at);
}

/// Appends a Full Intra Request (RFC 5104 §4.3.1): media source SSRC is 0, the target is in
/// the FCI with a command sequence number the sender increments per new request.
pub fn write_fir(sender_ssrc: u32, media_ssrc: u32, seq: u8, out: &mut Vec<u8>) {
    let len_at = begin(out, FMT_FIR, PT_PSFB);
    out.extend_from_slice(&sender_ssrc.to_be_bytes());
    out.extend_from_slice(&0u32.to_be_bytes());
    out.extend_from_slice(&media_ssrc.to_be_bytes());
    out.extend_from_slice(&[seq, 0, 0, 0]);
    finish(out, len_at);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn block() -> ReportBlock {
        ReportBlock {
            ssrc: 0x1111_2222,
            fraction_lost: 64,
            cumulative_lost: -3,
            highest_seq: 0x0001_0005,
            jitter: 42,
            lsr: 0xAABB_CCDD,
            dlsr: 65536,
        }
    }

    #[test]
    fn rr_sdes_round_trip() {
        let mut out = Vec::new();
        write_rr_sdes(7, &[block()], "gw@sipstream", &mut out);
        assert_eq!(out.len() % 4, 0);
        assert!(crate::rtp::packet::is_rtcp(&out));
        let pkts = parse_compound(&out).unwrap();
        assert_eq!(
            pkts[0],
            RtcpPacket::ReceiverReport {
                ssrc: 7,
                reports: vec![block()]
            }
        );
        assert_eq!(
            pkts[1],
            RtcpPacket::Sdes(vec![SdesChunk {
                ssrc: 7,
                cname: Some(b"gw@sipstream")
            }])
        );
        // CNAME lengths around the padding boundary.
        for n in 0..9 {
            let mut out = Vec::new();
            let name = "x".repeat(n);
            write_rr_sdes(1, &[], &name, &mut out);
            let pkts = parse_compound(&out).unwrap();
            assert_eq!(
                pkts[1],
                RtcpPacket::Sdes(vec![SdesChunk {
                    ssrc: 1,
                    cname: Some(name.as_bytes())
                }])
            );
        }
    }

    #[test]
    fn sr_sdes_round_trip_and_ntp() {
        let sr = SenderReport {
            ssrc: 9,
            ntp: ntp_from_system_time(UNIX_EPOCH + Duration::from_millis(1500)),
            rtp_ts: 160,
            packet_count: 2,
            octet_count: 320,
            reports: vec![block()],
        };
        assert_eq!(sr.ntp, (2_208_988_801u64 << 32) | (1u64 << 31));
        let mut out = Vec::new();
        write_sr_sdes(&sr, "c", &mut out);
        let pkts = parse_compound(&out).unwrap();
        assert_eq!(pkts[0], RtcpPacket::SenderReport(sr));
        assert!(matches!(pkts[1], RtcpPacket::Sdes(_)));
        assert_eq!(ntp_add(0, Duration::from_millis(250)), 1u64 << 30);
    }

    #[test]
    fn pli_fir() {
        let mut out = Vec::new();
        write_pli(1, 2, &mut out);
        write_fir(1, 2, 9, &mut out);
        assert_eq!(
            parse_compound(&out).unwrap(),
            vec![
                RtcpPacket::Pli {
                    sender_ssrc: 1,
                    media_ssrc: 2
                },
                RtcpPacket::Fir {
                    sender_ssrc: 1,
                    requests: vec![(2, 9)]
                }
            ]
        );
        assert_eq!(out.len(), 12 + 20);
    }

    #[test]
    fn sender_report_and_bye() {
        // SR with one block, then BYE with reason.
        let mut sr = vec![0x81, PT_SR, 0, 12];
        for w in [5u32, 0xE000_0000, 0x8000_0000, 1234, 10, 1600] {
            sr.extend_from_slice(&w.to_be_bytes());
        }
        write_block(&mut sr, &block());
        sr.extend_from_slice(&[0x81, PT_BYE, 0, 2, 0, 0, 0, 5, 3, b'b', b'y', b'e']);
        let pkts = parse_compound(&sr).unwrap();
        match &pkts[0] {
            RtcpPacket::SenderReport(s) => {
                assert_eq!(s.ssrc, 5);
                assert_eq!(s.ntp, 0xE000_0000_8000_0000);
                assert_eq!(s.reports, vec![block()]);
            }
            p => panic!("{p:?}"),
        }
        assert_eq!(
            pkts[1],
            RtcpPacket::Bye {
                ssrcs: vec![5],
                reason: Some(b"bye")
            }
        );
    }

    #[test]
    fn rejects_broken_framing() {
        let mut out = Vec::new();
        write_pli(1, 2, &mut out);
        out[3] = 9; // length beyond datagram
        assert!(matches!(
            parse_compound(&out),
            Err(RtcpError::LengthOverrun { at: 0, .. })
        ));
        let rr_claims_2 = [0x82, PT_RR, 0, 1, 0, 0, 0, 1];
        assert!(matches!(
            parse_compound(&rr_claims_2),
            Err(RtcpError::BodyTooShort { .. })
        ));
        assert!(matches!(
            parse_compound(&[0x40, PT_RR, 0, 0]),
            Err(RtcpError::BadVersion { .. })
        ));
        assert!(parse_compound(&[]).is_err());
        // Unknown type is tolerated.
        assert!(matches!(
            parse_compound(&[0x80, 210, 0, 0]).unwrap()[0],
            RtcpPacket::Unknown { pt: 210, .. }
        ));
    }

    #[test]
    fn never_panics_on_prefixes_and_mutations() {
        let mut out = Vec::new();
        write_rr_sdes(7, &[block(), block()], "abc", &mut out);
        write_fir(1, 2, 3, &mut out);
        for n in 0..out.len() {
            let _ = parse_compound(&out[..n]);
        }
        for i in 0..out.len() {
            for v in [0u8, 0x1F, 0xFF] {
                let mut m = out.clone();
                m[i] = v;
                let _ = parse_compound(&m);
            }
        }
    }
}
