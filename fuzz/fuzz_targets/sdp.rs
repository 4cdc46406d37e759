//! Any text: SDP parsing never panics, and what we write from a parsed SDP parses back to
//! the same description.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sipstream::sip::sdp::SessionDescription;

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
    }
});
