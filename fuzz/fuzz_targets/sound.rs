//! Fuzzes the sound-file decoder of `/call/inject_sound` (WAV, MP3, Ogg Opus), whose bytes
//! come from users and URLs. Properties: nothing panics; what decodes is 8 kHz mono within
//! the one-hour cap and never empty.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sipstream::media::sound::{decode_8k_mono, MAX_SECONDS};

fuzz_target!(|data: &[u8]| {
    if let Ok(pcm) = decode_8k_mono(data) {
        assert!(!pcm.is_empty());
        assert!(pcm.len() <= MAX_SECONDS * 8000);
    }
});
