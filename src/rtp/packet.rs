//! RTP packets (RFC 3550 §5.1): a validating zero-copy view over a received datagram, the
//! RTP/RTCP demultiplexing rule of RFC 5761 §4, and a header writer for packets we send.
//!
//! Owns wire-format validation only. It keeps no state and never panics on any input:
//! every malformed datagram maps to one [`RtpError`] variant that names what was wrong.

use thiserror::Error;

/// Length of the fixed RTP header.
pub const RTP_HEADER_LEN: usize = 12;

/// Why a datagram is not a valid RTP packet.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RtpError {
    #[error("RTP packet too short: {len} bytes, the fixed header needs 12")]
    TooShort { len: usize },
    #[error("RTP version {version} (byte 0 = {byte0:#04x}), expected 2")]
    BadVersion { version: u8, byte0: u8 },
    #[error("RTP CSRC count {cc} needs {needed} header bytes, packet has {len}")]
    CsrcOverrun { cc: u8, needed: usize, len: usize },
    #[error("RTP header extension at byte {at} is cut short: packet has {len} bytes")]
    ExtensionHeaderTruncated { at: usize, len: usize },
    #[error("RTP header extension at byte {at} declares {words} words, needs {needed} bytes, packet has {len}")]
    ExtensionOverrun {
        at: usize,
        words: u16,
        needed: usize,
        len: usize,
    },
    #[error("RTP padding bit set but padding count is 0")]
    ZeroPadding,
    #[error("RTP padding count {padding} exceeds the {available} bytes after the header")]
    PaddingOverrun { padding: u8, available: usize },
    #[error("datagram is RTCP (payload type byte {byte1:#04x}), not RTP")]
    IsRtcp { byte1: u8 },
}

/// A validated RTP packet borrowed from the receive buffer.
#[derive(Debug, Clone, Copy)]
pub struct RtpPacket<'a> {
    buf: &'a [u8],
    header_len: usize,
    payload_end: usize,
}

impl<'a> RtpPacket<'a> {
    /// Validates `buf` as one RTP packet. RTCP (by the RFC 5761 rule) is rejected with
    /// [`RtpError::IsRtcp`] so a caller that forgot to demux sees why.
    pub fn parse(buf: &'a [u8]) -> Result<Self, RtpError> {
        let len = buf.len();
        let (byte0, byte1) = match buf {
            [b0, b1, ..] if len >= RTP_HEADER_LEN => (*b0, *b1),
            _ => return Err(RtpError::TooShort { len }),
        };
        let version = byte0 >> 6;
        if version != 2 {
            return Err(RtpError::BadVersion { version, byte0 });
        }
        if is_rtcp(buf) {
            return Err(RtpError::IsRtcp { byte1 });
        }
        let cc = byte0 & 0x0F;
        let mut header_len = RTP_HEADER_LEN + 4 * usize::from(cc);
        if header_len > len {
            return Err(RtpError::CsrcOverrun {
                cc,
                needed: header_len,
                len,
            });
        }
        if byte0 & 0x10 != 0 {
            let at = header_len;
            let words = match buf.get(at..at + 4) {
                Some(&[_, _, hi, lo]) => u16::from_be_bytes([hi, lo]),
                _ => return Err(RtpError::ExtensionHeaderTruncated { at, len }),
            };
            let needed = at + 4 + 4 * usize::from(words);
            if needed > len {
                return Err(RtpError::ExtensionOverrun {
                    at,
                    words,
                    needed,
                    len,
                });
            }
            header_len = needed;
        }
        let mut payload_end = len;
        if byte0 & 0x20 != 0 {
            // The padding count is the last byte and counts itself.
            let padding = buf.last().copied().unwrap_or(0);
            if padding == 0 {
                return Err(RtpError::ZeroPadding);
            }
            let available = len - header_len;
            if usize::from(padding) > available {
                return Err(RtpError::PaddingOverrun { padding, available });
            }
            payload_end = len - usize::from(padding);
        }
        Ok(Self {
            buf,
            header_len,
            payload_end,
        })
    }

    fn byte(&self, i: usize) -> u8 {
        // Indices below RTP_HEADER_LEN were checked in `parse`.
        self.buf.get(i).copied().unwrap_or(0)
    }

    fn be32(&self, at: usize) -> u32 {
        u32::from_be_bytes([
            self.byte(at),
            self.byte(at + 1),
            self.byte(at + 2),
            self.byte(at + 3),
        ])
    }

    pub fn pt(&self) -> u8 {
        self.byte(1) & 0x7F
    }
    pub fn marker(&self) -> bool {
        self.byte(1) & 0x80 != 0
    }
    pub fn seq(&self) -> u16 {
        u16::from_be_bytes([self.byte(2), self.byte(3)])
    }
    pub fn timestamp(&self) -> u32 {
        self.be32(4)
    }
    pub fn ssrc(&self) -> u32 {
        self.be32(8)
    }
    pub fn has_padding(&self) -> bool {
        self.byte(0) & 0x20 != 0
    }
    pub fn has_extension(&self) -> bool {
        self.byte(0) & 0x10 != 0
    }
    pub fn csrc_count(&self) -> u8 {
        self.byte(0) & 0x0F
    }
    /// The contributing sources listed in the header.
    pub fn csrcs(&self) -> impl Iterator<Item = u32> + '_ {
        (0..usize::from(self.csrc_count())).map(move |i| self.be32(RTP_HEADER_LEN + 4 * i))
    }
    /// Length of the header including CSRCs and extension.
    pub fn header_len(&self) -> usize {
        self.header_len
    }
    /// The payload without header, extension and padding.
    pub fn payload(&self) -> &'a [u8] {
        self.buf
            .get(self.header_len..self.payload_end)
            .unwrap_or(&[])
    }
    /// The whole datagram.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.buf
    }
    /// Byte offset of the payload in the datagram (for zero-copy slicing of a `Bytes`).
    pub fn payload_range(&self) -> std::ops::Range<usize> {
        self.header_len..self.payload_end
    }
}

/// RFC 5761 §4: on a muxed port, a version-2 datagram whose second byte (marker bit
/// included) lies in 192..=223 is RTCP (SR 200, RR 201, SDES 202, BYE 203, APP 204,
/// RTPFB 205, PSFB 206, ...). Those values would be RTP payload types 64–95, which RFC 5761
/// tells us not to use with muxing.
pub fn is_rtcp(buf: &[u8]) -> bool {
    matches!(buf, [b0, b1, ..] if b0 >> 6 == 2 && (192..=223).contains(b1))
}

/// The fields of an RTP header we send (no CSRC, no extension, no padding).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpHeader {
    pub pt: u8,
    pub marker: bool,
    pub seq: u16,
    pub timestamp: u32,
    pub ssrc: u32,
}

impl RtpHeader {
    /// Appends header and payload to `out`. `pt` is masked to 7 bits.
    pub fn write(&self, payload: &[u8], out: &mut Vec<u8>) {
        out.reserve(RTP_HEADER_LEN + payload.len());
        out.push(0x80);
        out.push((u8::from(self.marker) << 7) | (self.pt & 0x7F));
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.timestamp.to_be_bytes());
        out.extend_from_slice(&self.ssrc.to_be_bytes());
        out.extend_from_slice(payload);
    }

    /// Header and payload as a new vector.
    pub fn to_vec(&self, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::with_capacity(RTP_HEADER_LEN + payload.len());
        self.write(payload, &mut v);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        RtpHeader {
            pt: 0,
            marker: true,
            seq: 0xBEEF,
            timestamp: 0x0102_0304,
            ssrc: 0xDEAD_BEEF,
        }
        .to_vec(&[1, 2, 3, 4])
    }

    #[test]
    fn round_trip() {
        let buf = sample();
        let p = RtpPacket::parse(&buf).unwrap();
        assert_eq!(p.pt(), 0);
        assert!(p.marker());
        assert_eq!(p.seq(), 0xBEEF);
        assert_eq!(p.timestamp(), 0x0102_0304);
        assert_eq!(p.ssrc(), 0xDEAD_BEEF);
        assert_eq!(p.payload(), &[1, 2, 3, 4]);
        assert!(!is_rtcp(&buf));
    }

    #[test]
    fn rejects_short_and_version() {
        assert_eq!(
            RtpPacket::parse(&[0x80; 11]).unwrap_err(),
            RtpError::TooShort { len: 11 }
        );
        let mut b = sample();
        b[0] = 0x40;
        assert!(matches!(
            RtpPacket::parse(&b),
            Err(RtpError::BadVersion { version: 1, .. })
        ));
    }

    #[test]
    fn csrc_and_extension() {
        let mut b = sample();
        b[0] |= 2; // two CSRCs but only 4 payload bytes
        assert!(matches!(
            RtpPacket::parse(&b),
            Err(RtpError::CsrcOverrun { cc: 2, .. })
        ));
        // Valid CSRC + extension: header 12 + 4 (csrc) + 4 (ext hdr) + 4 (1 word).
        let mut v = vec![0x80 | 0x10 | 1, 96, 0, 1, 0, 0, 0, 1, 0, 0, 0, 2];
        v.extend_from_slice(&[0, 0, 0, 9]); // csrc
        v.extend_from_slice(&[0xBE, 0xDE, 0, 1, 0xAA, 0xBB, 0xCC, 0xDD]);
        v.extend_from_slice(&[7, 7]);
        let p = RtpPacket::parse(&v).unwrap();
        assert_eq!(p.csrcs().collect::<Vec<_>>(), vec![9]);
        assert_eq!(p.header_len(), 24);
        assert_eq!(p.payload(), &[7, 7]);
        // Extension claiming 2 words.
        v[19] = 2;
        v.truncate(24);
        assert!(matches!(
            RtpPacket::parse(&v),
            Err(RtpError::ExtensionOverrun { words: 2, .. })
        ));
        v.truncate(18);
        assert!(matches!(
            RtpPacket::parse(&v),
            Err(RtpError::ExtensionHeaderTruncated { at: 16, .. })
        ));
    }

    #[test]
    fn padding() {
        let mut b = sample();
        b[0] |= 0x20;
        *b.last_mut().unwrap() = 2;
        assert_eq!(RtpPacket::parse(&b).unwrap().payload(), &[1, 2]);
        *b.last_mut().unwrap() = 5;
        assert!(matches!(
            RtpPacket::parse(&b),
            Err(RtpError::PaddingOverrun { padding: 5, .. })
        ));
        *b.last_mut().unwrap() = 0;
        assert_eq!(RtpPacket::parse(&b).unwrap_err(), RtpError::ZeroPadding);
        // Padding covering the whole payload is fine: empty payload.
        *b.last_mut().unwrap() = 4;
        assert!(RtpPacket::parse(&b).unwrap().payload().is_empty());
    }

    #[test]
    fn demux() {
        assert!(is_rtcp(&[0x81, 200, 0, 6]));
        assert!(is_rtcp(&[0x81, 201]));
        assert!(is_rtcp(&[0x80, 223]));
        assert!(!is_rtcp(&[0x80, 0x80 | 63]));
        assert!(!is_rtcp(&[0x80, 224]));
        assert!(!is_rtcp(&[0x81]));
        assert!(matches!(
            RtpPacket::parse(&[0x81, 201, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0]),
            Err(RtpError::IsRtcp { byte1: 201 })
        ));
    }

    #[test]
    fn never_panics_on_prefixes() {
        let mut v = vec![0xBF, 0x60, 0, 1, 0, 0, 0, 1, 0, 0, 0, 2];
        v.extend(std::iter::repeat_n(0xFF, 80));
        for n in 0..v.len() {
            let _ = RtpPacket::parse(&v[..n]);
        }
    }
}
