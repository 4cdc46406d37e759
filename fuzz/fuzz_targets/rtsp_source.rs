//! What an RTSP pull reads from the user and the server before retina: the pull URL (with
//! credentials) and the server's SDP (fmtp lines). Never panics; a parsed URL never shows
//! its password.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sipstream::rtsp::source::{sdp_fmtps, track_for, PullUrl};

fuzz_target!(|data: &[u8]| {
    for ((media, pt), fmtp) in sdp_fmtps(data) {
        let _ = track_for(&media, "h264", 90000, pt, Some(&fmtp));
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(u) = PullUrl::parse(text) {
            assert!(u.url.password().is_none() && u.url.username().is_empty());
        }
    }
});
