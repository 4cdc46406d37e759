//! Any text: SDP parsing never panics, and what we write from a parsed SDP parses back to
//! the same description. Every `a=crypto` line (RFC 4568) is parsed too: never a panic, and
//! a line we accept writes back to one that parses to the same suite, tag and key.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sipstream::rtp::srtp::CryptoAttribute;
use sipstream::sip::sdp::{crypto_lines, SessionDescription};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(sdp) = SessionDescription::parse(text) {
        let written = sdp.to_string();
        assert_eq!(
            SessionDescription::parse(&written).as_ref(),
            Ok(&sdp),
            "{written}"
        );
        for m in &sdp.media {
            for c in crypto_lines(m).flatten() {
                assert_eq!(CryptoAttribute::parse(&c.to_sdp()), Ok(c));
            }
        }
    }
});
