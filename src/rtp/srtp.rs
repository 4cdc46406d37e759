//! SRTP keyed by SDES (RFC 4568 `a=crypto`, RFC 3711): the policy of a call, the crypto
//! attribute's parser and writer, and the per-leg protect/unprotect state. Sans-IO: the leg
//! driver calls [`SrtpStream`] on each packet it reads or sends.
//!
//! The ciphers come from `rtc-srtp` (through the `rtc` crate already in the tree for WebRTC;
//! see Cargo.toml): this module only keys it from SDP. Key material never leaves this module
//! in a printable form: [`SdesKey`]'s `Debug` hides it, and only [`CryptoAttribute::to_sdp`]
//! writes it (into our own SDP).

use std::fmt;

use base64::Engine;
use rtc::srtp::context::Context;
use rtc::srtp::protection_profile::ProtectionProfile;

/// When a call uses SRTP (`sip_srtp`, the REST `srtp` field).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SrtpPolicy {
    /// Plain RTP; a far end's crypto lines are not answered.
    #[default]
    Off,
    /// Offer RTP/AVP with `a=crypto` (best-effort SRTP, as many providers do); answer an
    /// offer's crypto line when we support one. Plain RTP when the far end takes no crypto.
    Optional,
    /// Offer RTP/SAVP; an answer or offer without a usable crypto line fails the call (488).
    Mandatory,
}

impl std::str::FromStr for SrtpPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "off" | "" => Ok(SrtpPolicy::Off),
            "optional" => Ok(SrtpPolicy::Optional),
            "mandatory" => Ok(SrtpPolicy::Mandatory),
            other => Err(format!("{other:?}: expected off, optional or mandatory")),
        }
    }
}

impl SrtpPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            SrtpPolicy::Off => "off",
            SrtpPolicy::Optional => "optional",
            SrtpPolicy::Mandatory => "mandatory",
        }
    }
}

/// The SDES crypto suites we take (RFC 4568 §6.2). Both use a 128-bit key and a 112-bit salt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Suite {
    AesCm128HmacSha1_80,
    AesCm128HmacSha1_32,
}

impl Suite {
    /// Ours, in order of preference: what we offer and, in an offer, what we pick first.
    pub const ALL: [Suite; 2] = [Suite::AesCm128HmacSha1_80, Suite::AesCm128HmacSha1_32];

    pub fn name(self) -> &'static str {
        match self {
            Suite::AesCm128HmacSha1_80 => "AES_CM_128_HMAC_SHA1_80",
            Suite::AesCm128HmacSha1_32 => "AES_CM_128_HMAC_SHA1_32",
        }
    }

    pub fn parse(s: &str) -> Option<Suite> {
        Suite::ALL.into_iter().find(|x| x.name() == s)
    }

    fn profile(self) -> ProtectionProfile {
        match self {
            Suite::AesCm128HmacSha1_80 => ProtectionProfile::Aes128CmHmacSha1_80,
            Suite::AesCm128HmacSha1_32 => ProtectionProfile::Aes128CmHmacSha1_32,
        }
    }
}

/// Master key and salt of one direction.
pub const KEY_LEN: usize = 16;
pub const SALT_LEN: usize = 14;

/// A 30-byte master key || salt. `Debug` does not print it.
#[derive(Clone, PartialEq, Eq)]
pub struct SdesKey([u8; KEY_LEN + SALT_LEN]);

impl fmt::Debug for SdesKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SdesKey(..)")
    }
}

impl SdesKey {
    /// A fresh key from the OS's random source (rand's thread RNG is a CSPRNG).
    pub fn random() -> Self {
        use rand::RngCore;
        let mut k = [0u8; KEY_LEN + SALT_LEN];
        rand::thread_rng().fill_bytes(&mut k);
        SdesKey(k)
    }

    pub fn from_bytes(b: [u8; KEY_LEN + SALT_LEN]) -> Self {
        SdesKey(b)
    }

    fn key(&self) -> &[u8] {
        &self.0[..KEY_LEN]
    }

    fn salt(&self) -> &[u8] {
        &self.0[KEY_LEN..]
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SdesError {
    #[error("a=crypto: {0}")]
    Syntax(&'static str),
    #[error("a=crypto: unsupported crypto suite {0:?}")]
    UnsupportedSuite(String),
    #[error("a=crypto: inline key is not base64 of a 30-byte key and salt")]
    BadKey,
    #[error("a=crypto: the key is all zeros")]
    ZeroKey,
    #[error("a=crypto: {0} is not supported")]
    Unsupported(&'static str),
}

/// One `a=crypto:<tag> <suite> inline:<key||salt>[|lifetime]` line (RFC 4568 §9.1) that we
/// can use: one key, no MKI, no session parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CryptoAttribute {
    pub tag: u32,
    pub suite: Suite,
    pub key: SdesKey,
}

impl CryptoAttribute {
    /// A new line of ours for `suite` with a fresh key.
    pub fn fresh(tag: u32, suite: Suite) -> CryptoAttribute {
        CryptoAttribute {
            tag,
            suite,
            key: SdesKey::random(),
        }
    }

    /// Parses the value after `a=crypto:`. Anything we would not use exactly as written is
    /// an error: several keys, an MKI, session parameters (UNENCRYPTED_SRTP, KDR...).
    pub fn parse(value: &str) -> Result<CryptoAttribute, SdesError> {
        let mut parts = value.split_ascii_whitespace();
        let tag = parts.next().ok_or(SdesError::Syntax("empty"))?;
        let suite = parts.next().ok_or(SdesError::Syntax("no crypto suite"))?;
        let key_params = parts.next().ok_or(SdesError::Syntax("no key parameters"))?;
        if parts.next().is_some() {
            return Err(SdesError::Unsupported("a session parameter"));
        }
        // RFC 4568 §9.1: tag is 1*9DIGIT.
        if tag.is_empty() || tag.len() > 9 || !tag.bytes().all(|b| b.is_ascii_digit()) {
            return Err(SdesError::Syntax("the tag is not 1 to 9 digits"));
        }
        let tag: u32 = tag.parse().map_err(|_| SdesError::Syntax("bad tag"))?;
        let suite = Suite::parse(suite).ok_or_else(|| SdesError::UnsupportedSuite(suite.into()))?;
        if key_params.contains(';') {
            return Err(SdesError::Unsupported("more than one key"));
        }
        let inline = key_params
            .strip_prefix("inline:")
            .ok_or(SdesError::Syntax("key method is not inline:"))?;
        let mut fields = inline.split('|');
        let b64 = fields.next().unwrap_or("");
        for f in fields {
            // A lifetime (`2^31` or a number) is fine: we re-key per call anyway. An MKI
            // (`1:4`) would have to be carried in every packet.
            if f.contains(':') {
                return Err(SdesError::Unsupported("an MKI"));
            }
            let ok = match f.strip_prefix("2^") {
                Some(exp) => !exp.is_empty() && exp.bytes().all(|b| b.is_ascii_digit()),
                None => !f.is_empty() && f.bytes().all(|b| b.is_ascii_digit()),
            };
            if !ok {
                return Err(SdesError::Syntax("bad key lifetime"));
            }
        }
        let raw = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|_| SdesError::BadKey)?;
        let bytes: [u8; KEY_LEN + SALT_LEN] = raw.try_into().map_err(|_| SdesError::BadKey)?;
        if bytes.iter().all(|b| *b == 0) {
            return Err(SdesError::ZeroKey);
        }
        Ok(CryptoAttribute {
            tag,
            suite,
            key: SdesKey(bytes),
        })
    }

    /// The attribute's value (after `a=crypto:`), key included: for our own SDP only.
    pub fn to_sdp(&self) -> String {
        format!(
            "{} {} inline:{}",
            self.tag,
            self.suite.name(),
            base64::engine::general_purpose::STANDARD.encode(self.key.0)
        )
    }
}

/// The keys of one negotiated SRTP leg: what the call layer hands the leg driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SrtpKeys {
    pub suite: Suite,
    /// Ours: protects what we send.
    pub ours: SdesKey,
    /// The far end's: unprotects what we receive.
    pub theirs: SdesKey,
}

impl SrtpKeys {
    pub fn stream(&self) -> Result<SrtpStream, String> {
        SrtpStream::new(self.suite, &self.ours, &self.theirs)
    }
}

/// Counters of one leg's SRTP, for the call object (no key material).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SrtpCounters {
    /// Packets (RTP and RTCP) that failed authentication or decryption: dropped.
    pub auth_failures: u64,
    /// Packets we could not protect: not sent.
    pub protect_failures: u64,
}

/// The SRTP state of one leg: our key protects what we send, the far end's key
/// unprotects what we receive (RFC 4568 §6.1: each side sends with the key it declared).
pub struct SrtpStream {
    suite: Suite,
    tx: Context,
    rx: Context,
    counters: SrtpCounters,
}

impl fmt::Debug for SrtpStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SrtpStream")
            .field("suite", &self.suite.name())
            .field("counters", &self.counters)
            .finish()
    }
}

/// How far back a replayed or late packet is still taken (RFC 3711 §3.3.2 asks for 64 at
/// least; a jitter buffer behind us reorders within it).
const REPLAY_WINDOW: usize = 128;

impl SrtpStream {
    pub fn new(suite: Suite, ours: &SdesKey, theirs: &SdesKey) -> Result<SrtpStream, String> {
        let provider = rtc::crypto::default_provider().map_err(|e| e.to_string())?;
        let ctx = |k: &SdesKey, replay: bool| {
            let (rtp, rtcp) = if replay {
                (
                    Some(rtc::srtp::option::srtp_replay_protection(REPLAY_WINDOW)),
                    Some(rtc::srtp::option::srtcp_replay_protection(REPLAY_WINDOW)),
                )
            } else {
                (None, None)
            };
            Context::new(
                k.key(),
                k.salt(),
                suite.profile(),
                rtp,
                rtcp,
                provider.crypto(),
            )
            .map_err(|e| e.to_string())
        };
        Ok(SrtpStream {
            suite,
            tx: ctx(ours, false)?,
            rx: ctx(theirs, true)?,
            counters: SrtpCounters::default(),
        })
    }

    pub fn suite(&self) -> Suite {
        self.suite
    }

    pub fn counters(&self) -> SrtpCounters {
        self.counters
    }

    /// An RTP packet to send, encrypted and authenticated; None (counted) when it cannot be.
    pub fn protect_rtp(&mut self, plain: &[u8]) -> Option<Vec<u8>> {
        match self.tx.encrypt_rtp(plain) {
            Ok(b) => Some(b.to_vec()),
            Err(_) => {
                self.counters.protect_failures += 1;
                None
            }
        }
    }

    pub fn protect_rtcp(&mut self, plain: &[u8]) -> Option<Vec<u8>> {
        match self.tx.encrypt_rtcp(plain) {
            Ok(b) => Some(b.to_vec()),
            Err(_) => {
                self.counters.protect_failures += 1;
                None
            }
        }
    }

    /// A received SRTP packet, checked and decrypted; None (counted) when it fails
    /// authentication, is a replay or is not SRTP.
    pub fn unprotect_rtp(&mut self, packet: &[u8]) -> Option<Vec<u8>> {
        match self.rx.decrypt_rtp(packet) {
            Ok(b) => Some(b.to_vec()),
            Err(_) => {
                self.counters.auth_failures += 1;
                None
            }
        }
    }

    pub fn unprotect_rtcp(&mut self, packet: &[u8]) -> Option<Vec<u8>> {
        match self.rx.decrypt_rtcp(packet) {
            Ok(b) => Some(b.to_vec()),
            Err(_) => {
                self.counters.auth_failures += 1;
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc4568_examples_parse_and_write_back() {
        // RFC 4568 §4: the example offer's first line (with a lifetime and an MKI: refused,
        // as MKIs are not supported) and the same key without the MKI.
        let mki =
            "1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR|2^20|1:4";
        assert_eq!(
            CryptoAttribute::parse(mki),
            Err(SdesError::Unsupported("an MKI"))
        );
        let a = CryptoAttribute::parse(
            "1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR|2^20",
        )
        .unwrap();
        assert_eq!((a.tag, a.suite), (1, Suite::AesCm128HmacSha1_80));
        assert_eq!(
            a.to_sdp(),
            "1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR"
        );
        // RFC 4568 §4, the answer.
        let b = CryptoAttribute::parse(
            "1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz|2^20|1:4",
        );
        assert!(b.is_err());
        let c = CryptoAttribute::parse(
            "2 AES_CM_128_HMAC_SHA1_32 inline:NzB4d1BINUAvLEw6UzF3WSJ+PSdFcGdUJShpX1Zj",
        )
        .unwrap();
        assert_eq!((c.tag, c.suite), (2, Suite::AesCm128HmacSha1_32));
        // The key never shows in Debug.
        assert!(!format!("{c:?}").contains("NzB4"));
        assert_eq!(format!("{:?}", c.key), "SdesKey(..)");
    }

    #[test]
    fn garbage_crypto_lines_are_errors_not_panics() {
        let zero = base64::engine::general_purpose::STANDARD.encode([0u8; 30]);
        let cases = [
            "",
            "1",
            "1 AES_CM_128_HMAC_SHA1_80",
            "x AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR",
            "1234567890 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR",
            "1 F8_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR",
            "1 AES_CM_128_HMAC_SHA1_80 PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR",
            "1 AES_CM_128_HMAC_SHA1_80 inline:",
            "1 AES_CM_128_HMAC_SHA1_80 inline:!!!!",
            "1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhc",
            "1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR|2^",
            "1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR|x",
            "1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR;inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR",
            "1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR UNENCRYPTED_SRTP",
            "1 AES_CM_128_HMAC_SHA1_80 inline:\u{e9}\u{e9}",
        ];
        for c in cases {
            assert!(CryptoAttribute::parse(c).is_err(), "{c:?}");
        }
        assert_eq!(
            CryptoAttribute::parse(&format!("1 AES_CM_128_HMAC_SHA1_80 inline:{zero}")),
            Err(SdesError::ZeroKey)
        );
    }

    // RFC 3711 Appendix B.3's master key and salt; the packets are libsrtp's known-answer
    // vectors for them (SSRC 0xcafebabe, SEQ 0x1234, ROC 0; SRTCP index 1).
    const KEY_SALT: [u8; 30] = [
        0xe1, 0xf9, 0x7a, 0x0d, 0x3e, 0x01, 0x8b, 0xe0, 0xd6, 0x4f, 0xa3, 0x2c, 0x06, 0xde, 0x41,
        0x39, 0x0e, 0xc6, 0x75, 0xad, 0x49, 0x8a, 0xfe, 0xeb, 0xb6, 0x96, 0x0b, 0x3a, 0xab, 0xe6,
    ];
    const RTP_PLAIN: [u8; 28] = [
        0x80, 0x0f, 0x12, 0x34, 0xde, 0xca, 0xfb, 0xad, 0xca, 0xfe, 0xba, 0xbe, 0xab, 0xab, 0xab,
        0xab, 0xab, 0xab, 0xab, 0xab, 0xab, 0xab, 0xab, 0xab, 0xab, 0xab, 0xab, 0xab,
    ];
    const SRTP: [u8; 38] = [
        0x80, 0x0f, 0x12, 0x34, 0xde, 0xca, 0xfb, 0xad, 0xca, 0xfe, 0xba, 0xbe, 0x4e, 0x55, 0xdc,
        0x4c, 0xe7, 0x99, 0x78, 0xd8, 0x8c, 0xa4, 0xd2, 0x15, 0x94, 0x9d, 0x24, 0x02, 0xb7, 0x8d,
        0x6a, 0xcc, 0x99, 0xea, 0x17, 0x9b, 0x8d, 0xbb,
    ];
    const RTCP_PLAIN: [u8; 24] = [
        0x81, 0xc8, 0x00, 0x0b, 0xca, 0xfe, 0xba, 0xbe, 0xab, 0xab, 0xab, 0xab, 0xab, 0xab, 0xab,
        0xab, 0xab, 0xab, 0xab, 0xab, 0xab, 0xab, 0xab, 0xab,
    ];
    const SRTCP: [u8; 38] = [
        0x81, 0xc8, 0x00, 0x0b, 0xca, 0xfe, 0xba, 0xbe, 0x71, 0x28, 0x03, 0x5b, 0xe4, 0x87, 0xb9,
        0xbd, 0xbe, 0xf8, 0x90, 0x41, 0xf9, 0x77, 0xa5, 0xa8, 0x80, 0x00, 0x00, 0x01, 0x99, 0x3e,
        0x08, 0xcd, 0x54, 0xd6, 0xc1, 0x23, 0x07, 0x98,
    ];

    #[test]
    fn known_answer_vectors_protect_and_unprotect() {
        let key = SdesKey::from_bytes(KEY_SALT);
        let mut s = SrtpStream::new(Suite::AesCm128HmacSha1_80, &key, &key).unwrap();
        assert_eq!(s.protect_rtp(&RTP_PLAIN).as_deref(), Some(&SRTP[..]));
        assert_eq!(s.unprotect_rtp(&SRTP).as_deref(), Some(&RTP_PLAIN[..]));
        assert_eq!(s.unprotect_rtcp(&SRTCP).as_deref(), Some(&RTCP_PLAIN[..]));
        // A replay of the same packet is dropped and counted.
        assert_eq!(s.unprotect_rtp(&SRTP), None);
        assert_eq!(s.counters().auth_failures, 1);
        // The 32-bit tag is the 80-bit one cut short (same keystream).
        let mut s32 = SrtpStream::new(Suite::AesCm128HmacSha1_32, &key, &key).unwrap();
        let p = s32.protect_rtp(&RTP_PLAIN).unwrap();
        assert_eq!(p[..], SRTP[..32]);
    }

    #[test]
    fn round_trip_between_two_ends_and_a_wrong_key_fails() {
        let (a, b) = (SdesKey::random(), SdesKey::random());
        assert_ne!(a, b);
        let mut alice = SrtpStream::new(Suite::AesCm128HmacSha1_80, &a, &b).unwrap();
        let mut bob = SrtpStream::new(Suite::AesCm128HmacSha1_80, &b, &a).unwrap();
        let mut eve = SrtpStream::new(Suite::AesCm128HmacSha1_80, &b, &b).unwrap();
        for seq in 0..5u16 {
            let mut pkt = RTP_PLAIN;
            pkt[2..4].copy_from_slice(&seq.to_be_bytes());
            let wire = alice.protect_rtp(&pkt).unwrap();
            assert_ne!(wire[12..28], pkt[12..], "the payload is encrypted");
            assert_eq!(bob.unprotect_rtp(&wire).unwrap(), pkt);
            assert_eq!(eve.unprotect_rtp(&wire), None);
        }
        let rtcp = alice.protect_rtcp(&RTCP_PLAIN).unwrap();
        assert_eq!(bob.unprotect_rtcp(&rtcp).unwrap(), RTCP_PLAIN);
        assert_eq!(eve.counters().auth_failures, 5);
        // Not SRTP at all: counted, no panic.
        assert_eq!(bob.unprotect_rtp(&[0x80, 0, 0]), None);
        assert_eq!(bob.unprotect_rtcp(&[0x81]), None);
    }

    #[test]
    fn policy_parses() {
        assert_eq!("Mandatory".parse(), Ok(SrtpPolicy::Mandatory));
        assert_eq!("".parse(), Ok(SrtpPolicy::Off));
        assert!("sdes".parse::<SrtpPolicy>().is_err());
    }
}
