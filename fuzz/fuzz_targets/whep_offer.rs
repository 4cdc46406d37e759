//! A browser's WHEP offer (the body of `POST /whep/{stream}`, UTF-8 text): our codec
//! reader and the track selection against a few stream shapes, then the webrtc crate's SDP
//! parser that `set_remote_description` uses.
//!
//! Properties: nothing panics; each selection is a codec the offer lists in a section of
//! the track's kind, with the track's codec name and clock rate, one per kind at most.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sipstream::registry::{Leg, TrackId, TrackKind, TrackSpec};
use sipstream::webrtc::offer::{parse_offer, select};
use webrtc::peer_connection::RTCSessionDescription;

fn track(kind: TrackKind, leg: Leg, codec: &str, rate: u32, fmtp: Option<&str>) -> TrackSpec {
    TrackSpec {
        kind,
        leg,
        codec: codec.into(),
        clock_rate: rate,
        channels: if codec == "opus" { 2 } else { 1 },
        payload_type: 96,
        fmtp: fmtp.map(str::to_string),
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(offer) = parse_offer(text) {
        assert!(!offer.is_empty());
        for m in &offer {
            assert!(!m.kind.is_empty());
            assert!(m.codecs.iter().all(|c| !c.name.is_empty()));
        }
        let h264 = |fmtp| track(TrackKind::Video, Leg::Callee, "H264", 90000, fmtp);
        let shapes: [Vec<(TrackId, TrackSpec)>; 4] = [
            vec![(0, track(TrackKind::Audio, Leg::Callee, "PCMU", 8000, None))],
            vec![
                (0, track(TrackKind::Audio, Leg::Caller, "PCMA", 8000, None)),
                (1, track(TrackKind::Audio, Leg::Mixed, "opus", 48000, None)),
            ],
            vec![
                (0, track(TrackKind::Audio, Leg::Callee, "PCMU", 8000, None)),
                (
                    1,
                    h264(Some("packetization-mode=1;profile-level-id=42e01f")),
                ),
            ],
            vec![(3, h264(None))],
        ];
        for tracks in &shapes {
            match select(tracks, &offer) {
                Ok(sel) => {
                    assert!(!sel.is_empty() && sel.len() <= 2);
                    for s in &sel {
                        let spec = &tracks.iter().find(|(id, _)| *id == s.track).unwrap().1;
                        assert_eq!(&s.spec, spec);
                        assert!(spec.codec.eq_ignore_ascii_case(&s.offered.name));
                        assert_eq!(spec.clock_rate, s.offered.clock_rate);
                        let kind = match spec.kind {
                            TrackKind::Audio => "audio",
                            TrackKind::Video => "video",
                        };
                        assert!(offer
                            .iter()
                            .filter(|m| m.kind == kind)
                            .any(|m| m.codecs.contains(&s.offered)));
                    }
                    if let [a, b] = &sel[..] {
                        assert_ne!(a.spec.kind, b.spec.kind);
                    }
                }
                Err(e) => assert!(!e.to_string().is_empty()),
            }
        }
    }
    let _ = RTCSessionDescription::offer(text.to_string());
});
