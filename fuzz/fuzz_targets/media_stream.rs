//! Fuzzes what a voice agent's server can send a media stream: text frames through the
//! message parser, their audio through the wire decoder and the play queue, and the bytes as
//! RTP payloads through the framer. Properties: nothing panics; the play queue never holds
//! more than its cap; frames are always 20 ms.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sipstream::media::transcode::AudioCodec;
use sipstream::mediastream::framer::TrackFramer;
use sipstream::mediastream::playout::Playout;
use sipstream::mediastream::wire::{decode_audio, parse_text, Incoming, Outgoing, TrackLabel};
use sipstream::mediastream::{WireAudio, WireCodec};

fuzz_target!(|data: &[u8]| {
    let audio = WireAudio {
        codec: if data.first().is_some_and(|b| b & 1 == 1) {
            WireCodec::L16
        } else {
            WireCodec::Pcmu
        },
        rate: 8000,
    };
    let mut playout = Playout::new(audio.rate, 200);
    let mut pcm = Vec::new();
    if let Ok(text) = std::str::from_utf8(data) {
        match parse_text(text) {
            Ok(Incoming::Media(bytes)) => {
                decode_audio(audio, &bytes, &mut pcm);
                playout.push_audio(&pcm);
            }
            Ok(Incoming::Mark(name)) => {
                let _ = playout.push_mark(name);
            }
            Ok(Incoming::Clear) => {
                let _ = playout.clear();
            }
            Ok(Incoming::Ignored(_)) | Err(_) => {}
        }
    }
    pcm.clear();
    decode_audio(audio, data, &mut pcm);
    playout.push_audio(&pcm);
    assert!(playout.queued() <= 1600);
    let (mut frame, mut marks) = (Vec::new(), Vec::new());
    while playout.tick(&mut frame, &mut marks) {
        assert_eq!(frame.len(), 160);
        frame.clear();
    }

    // The bytes as RTP payloads of PCMU and Opus tracks, with timestamps from the input.
    for codec in [AudioCodec::Pcmu, AudioCodec::Opus] {
        let clock = if codec == AudioCodec::Opus {
            48000
        } else {
            8000
        };
        let mut f = TrackFramer::new(TrackLabel::Inbound, codec, clock, audio).unwrap();
        let mut out = Vec::new();
        for (i, chunk) in data.chunks(37).enumerate() {
            let ts = chunk
                .get(..4)
                .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b.get(3).copied().unwrap_or(0)]))
                .unwrap_or(0);
            let _ = f.push(chunk, ts, i as u64 * 20, &mut out);
        }
        for m in &out {
            if let Outgoing::Media { audio: a, .. } = m {
                let want = if audio.codec == WireCodec::L16 {
                    320
                } else {
                    160
                };
                assert_eq!(a.len(), want);
            }
        }
    }
});
