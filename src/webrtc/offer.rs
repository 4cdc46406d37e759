//! A WHEP offer read just far enough to choose codecs: which media sections the browser
//! offers, with which payload types, which of the stream's tracks can pass through without
//! transcoding, and under which offered codec a section the stream cannot feed is answered
//! `inactive` ([`inactive_codecs`]). Sans-IO and panic-free on any input; the webrtc crate
//! parses the full SDP afterwards.

use std::fmt::Write as _;

use crate::registry::{Leg, TrackId, TrackKind, TrackSpec};

use super::WhepError;

/// One `a=rtpmap` (or static payload type) of an offered media section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfferCodec {
    pub payload_type: u8,
    /// As written in the offer ("opus", "PCMU", "H264").
    pub name: String,
    pub clock_rate: u32,
    pub channels: u8,
    pub fmtp: Option<String>,
}

impl OfferCodec {
    fn label(&self) -> String {
        if self.channels > 1 {
            format!("{}/{}/{}", self.name, self.clock_rate, self.channels)
        } else {
            format!("{}/{}", self.name, self.clock_rate)
        }
    }

    fn fmtp_param(&self, key: &str) -> Option<&str> {
        fmtp_param(self.fmtp.as_deref()?, key)
    }
}

/// One `m=` section of the offer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfferMedia {
    /// "audio", "video", "application", ...
    pub kind: String,
    pub codecs: Vec<OfferCodec>,
}

/// A stream track matched with the browser's payload type for the same codec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    pub track: TrackId,
    pub spec: TrackSpec,
    /// The offer's codec entry: its payload type and fmtp go into the answer unchanged.
    pub offered: OfferCodec,
}

fn fmtp_param<'a>(fmtp: &'a str, key: &str) -> Option<&'a str> {
    fmtp.split(';').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        k.trim().eq_ignore_ascii_case(key).then_some(v.trim())
    })
}

/// Reads the media sections of an SDP offer. Errors say which line is wrong.
pub fn parse_offer(sdp: &str) -> Result<Vec<OfferMedia>, WhepError> {
    let bad = |why: String| WhepError::BadOffer(why);
    let mut lines = sdp.lines().map(str::trim).filter(|l| !l.is_empty());
    if lines.next() != Some("v=0") {
        return Err(bad("an SDP offer starts with \"v=0\"".into()));
    }
    let mut media: Vec<OfferMedia> = Vec::new();
    for (n, line) in lines.enumerate() {
        let lineno = n + 2;
        let Some((key, value)) = line.split_once('=') else {
            return Err(bad(format!(
                "line {lineno}: expected <type>=<value>, got {:?}",
                clip(line)
            )));
        };
        match key {
            "m" => {
                // m=<media> <port> <proto> <fmt> ...
                let mut parts = value.split_ascii_whitespace();
                let kind = parts.next().unwrap_or_default().to_ascii_lowercase();
                let (port, proto) = (parts.next(), parts.next());
                if kind.is_empty() || port.is_none() || proto.is_none() {
                    return Err(bad(format!("line {lineno}: malformed m= line")));
                }
                let codecs = parts
                    .filter_map(|f| f.parse::<u8>().ok())
                    .map(static_codec)
                    .collect();
                media.push(OfferMedia { kind, codecs });
            }
            "a" => {
                let Some(m) = media.last_mut() else { continue };
                if let Some(rest) = value.strip_prefix("rtpmap:") {
                    let (pt, enc) = rest.split_once(' ').unwrap_or((rest, ""));
                    let Ok(pt) = pt.trim().parse::<u8>() else {
                        continue;
                    };
                    let mut it = enc.trim().split('/');
                    let name = it.next().unwrap_or_default().to_string();
                    let clock_rate = it.next().and_then(|c| c.parse().ok()).unwrap_or(0);
                    let channels = it.next().and_then(|c| c.parse().ok()).unwrap_or(1);
                    if let Some(c) = m.codecs.iter_mut().find(|c| c.payload_type == pt) {
                        c.name = name;
                        c.clock_rate = clock_rate;
                        c.channels = channels;
                    }
                } else if let Some(rest) = value.strip_prefix("fmtp:") {
                    let (pt, params) = rest.split_once(' ').unwrap_or((rest, ""));
                    if let Ok(pt) = pt.trim().parse::<u8>() {
                        if let Some(c) = m.codecs.iter_mut().find(|c| c.payload_type == pt) {
                            c.fmtp = Some(params.trim().to_string());
                        }
                    }
                }
            }
            _ => {}
        }
    }
    if media.is_empty() {
        return Err(bad("the offer has no m= section".into()));
    }
    for m in &mut media {
        m.codecs.retain(|c| !c.name.is_empty());
    }
    Ok(media)
}

/// Static payload types (RFC 3551) for offers that omit their rtpmap.
fn static_codec(pt: u8) -> OfferCodec {
    let (name, clock_rate) = match pt {
        0 => ("PCMU", 8000),
        8 => ("PCMA", 8000),
        9 => ("G722", 8000),
        _ => ("", 0),
    };
    OfferCodec {
        payload_type: pt,
        name: name.to_string(),
        clock_rate,
        channels: 1,
        fmtp: None,
    }
}

fn clip(s: &str) -> String {
    s.chars().take(80).collect()
}

fn codec_matches(spec: &TrackSpec, c: &OfferCodec) -> bool {
    if !spec.codec.eq_ignore_ascii_case(&c.name) || spec.clock_rate != c.clock_rate {
        return false;
    }
    if spec.codec.eq_ignore_ascii_case("H264") {
        // Packetization mode must agree: mode 0 (single NAL) and 1 (FU-A/STAP-A) streams are
        // not interchangeable without repacketizing.
        let want = spec
            .fmtp
            .as_deref()
            .and_then(|f| fmtp_param(f, "packetization-mode"));
        return want.unwrap_or("0") == c.fmtp_param("packetization-mode").unwrap_or("0");
    }
    true
}

/// How well an offered H264 entry fits the stream's profile (higher is better).
fn h264_affinity(spec: &TrackSpec, c: &OfferCodec) -> u8 {
    let want = spec
        .fmtp
        .as_deref()
        .and_then(|f| fmtp_param(f, "profile-level-id"))
        .map(|p| p.to_ascii_lowercase());
    let have = c
        .fmtp_param("profile-level-id")
        .map(|p| p.to_ascii_lowercase());
    match (want, have) {
        (Some(w), Some(h)) if w == h => 3,
        (Some(w), Some(h)) if w.get(..2) == h.get(..2) => 2,
        (None, _) => 1,
        _ => 0,
    }
}

/// Picks, for audio and for video, the stream track to send (the mixed leg first, else the
/// first of that kind) and the offered payload type of the same codec. A kind the browser
/// cannot receive is left out; when nothing is left, the error lists both sides' codecs.
pub fn select(
    tracks: &[(TrackId, TrackSpec)],
    offer: &[OfferMedia],
) -> Result<Vec<Selection>, WhepError> {
    let mut out = Vec::new();
    for kind in [TrackKind::Audio, TrackKind::Video] {
        let kind_name = match kind {
            TrackKind::Audio => "audio",
            TrackKind::Video => "video",
        };
        let mut candidates: Vec<&(TrackId, TrackSpec)> =
            tracks.iter().filter(|(_, t)| t.kind == kind).collect();
        candidates.sort_by_key(|(id, t)| (t.leg != Leg::Mixed, *id));
        let Some((id, spec)) = candidates.first() else {
            continue;
        };
        let offered = offer
            .iter()
            .filter(|m| m.kind == kind_name)
            .flat_map(|m| m.codecs.iter())
            .filter(|c| codec_matches(spec, c))
            .max_by_key(|c| (h264_affinity(spec, c), std::cmp::Reverse(c.payload_type)));
        if let Some(c) = offered {
            out.push(Selection {
                track: *id,
                spec: spec.clone(),
                offered: c.clone(),
            });
        }
    }
    if out.is_empty() {
        return Err(WhepError::NoCommonCodec(describe_mismatch(tracks, offer)));
    }
    Ok(out)
}

/// Codecs that carry no media of their own (retransmission, redundancy, FEC, comfort noise,
/// DTMF): never the one an m= section is accepted under.
fn is_auxiliary(c: &OfferCodec) -> bool {
    [
        "rtx",
        "red",
        "ulpfec",
        "flexfec-03",
        "CN",
        "telephone-event",
    ]
    .iter()
    .any(|n| c.name.eq_ignore_ascii_case(n))
}

/// For each kind (audio, video) that the offer has an m= section for but the stream cannot
/// feed (no track of that kind, or none in a codec the offer has), the offered codec under
/// which that section is answered `a=inactive`: the first media codec of the first section of
/// that kind, so the answer lists a format of the offer (RFC 3264 §6.1) that the player
/// supports. A section with only auxiliary codecs gets none, and is rejected (port 0).
///
/// Why inactive and not rejected (port 0): JSEP (RFC 9429 §5.3.1) rejects an m= section
/// only when no offered format is supported or the transceiver is stopped; otherwise the
/// answer's direction is the offered one intersected with the local one, and a `recvonly`
/// offer met by nothing to send is `inactive`. An accepted section stays in the BUNDLE group
/// and carries the bundle's ICE credentials, DTLS setup role and rtcp-mux like the others,
/// which strict stacks need: aiortc refuses an answer in which any m= section lacks
/// `a=ice-ufrag`/`a=ice-pwd` ("ICE username fragment or password is missing"), an `a=setup`
/// of active/passive, `a=rtcp-mux` or a codec it knows, and it would start a separate ICE
/// transport for a section outside the BUNDLE group.
pub fn inactive_codecs(
    offer: &[OfferMedia],
    selections: &[Selection],
) -> Vec<(TrackKind, OfferCodec)> {
    let mut out = Vec::new();
    for (kind, name) in [(TrackKind::Audio, "audio"), (TrackKind::Video, "video")] {
        if selections.iter().any(|s| s.spec.kind == kind) {
            continue;
        }
        let Some(section) = offer.iter().find(|m| m.kind == name) else {
            continue;
        };
        if let Some(c) = section.codecs.iter().find(|c| !is_auxiliary(c)) {
            out.push((kind, c.clone()));
        }
    }
    out
}

fn describe_mismatch(tracks: &[(TrackId, TrackSpec)], offer: &[OfferMedia]) -> String {
    let mut s = String::from("no common codec: the stream has ");
    let stream: Vec<String> = tracks
        .iter()
        .map(|(_, t)| {
            let kind = match t.kind {
                TrackKind::Audio => "audio",
                TrackKind::Video => "video",
            };
            format!("{}/{} ({kind})", t.codec, t.clock_rate)
        })
        .collect();
    s += &stream.join(", ");
    s += "; the offer has ";
    let sections: Vec<String> = offer
        .iter()
        .map(|m| {
            let mut names: Vec<String> = Vec::new();
            for c in &m.codecs {
                let l = c.label();
                if !names.contains(&l) {
                    names.push(l);
                }
            }
            format!("{}: {}", m.kind, names.join(" "))
        })
        .collect();
    let _ = write!(s, "{}", sections.join("; "));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The recvonly offer Chromium makes for addTransceiver('audio') + ('video') (trimmed).
    const CHROMIUM_OFFER: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
a=group:BUNDLE 0 1\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=recvonly\r\n\
a=rtpmap:111 opus/48000/2\r\na=fmtp:111 minptime=10;useinbandfec=1\r\na=rtpmap:63 red/48000/2\r\n\
a=rtpmap:9 G722/8000\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:13 CN/8000\r\n\
a=rtpmap:110 telephone-event/48000\r\na=rtpmap:126 telephone-event/8000\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 96 97 102 103 104 105\r\nc=IN IP4 0.0.0.0\r\na=mid:1\r\na=recvonly\r\n\
a=rtpmap:96 VP8/90000\r\na=rtpmap:97 rtx/90000\r\na=fmtp:97 apt=96\r\n\
a=rtpmap:102 H264/90000\r\na=fmtp:102 level-asymmetry-allowed=1;packetization-mode=0;profile-level-id=42001f\r\n\
a=rtpmap:103 H264/90000\r\na=fmtp:103 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f\r\n\
a=rtpmap:104 H264/90000\r\na=fmtp:104 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f\r\n\
a=rtpmap:105 H264/90000\r\na=fmtp:105 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=4d001f\r\n";

    fn track(kind: TrackKind, codec: &str, rate: u32, pt: u8, fmtp: Option<&str>) -> TrackSpec {
        TrackSpec {
            kind,
            leg: Leg::Callee,
            codec: codec.into(),
            clock_rate: rate,
            channels: if codec == "opus" { 2 } else { 1 },
            payload_type: pt,
            fmtp: fmtp.map(str::to_string),
        }
    }

    #[test]
    fn chromium_offer_parses() {
        let m = parse_offer(CHROMIUM_OFFER).unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].kind, "audio");
        assert_eq!(m[0].codecs[0].name, "opus");
        assert_eq!(m[0].codecs[0].channels, 2);
        assert_eq!(
            m[0].codecs[0].fmtp.as_deref(),
            Some("minptime=10;useinbandfec=1")
        );
        assert!(m[0]
            .codecs
            .iter()
            .any(|c| c.payload_type == 0 && c.name == "PCMU"));
        assert_eq!(m[1].codecs.len(), 6);
    }

    #[test]
    fn each_audio_codec_passes_through_with_the_browsers_payload_type() {
        let m = parse_offer(CHROMIUM_OFFER).unwrap();
        for (codec, rate, want_pt) in [("PCMU", 8000, 0), ("PCMA", 8000, 8), ("opus", 48000, 111)] {
            let tracks = vec![(0, track(TrackKind::Audio, codec, rate, 96, None))];
            let s = select(&tracks, &m).unwrap();
            assert_eq!(s.len(), 1);
            assert_eq!(s[0].offered.payload_type, want_pt, "{codec}");
        }
    }

    #[test]
    fn h264_picks_the_same_packetization_mode_and_closest_profile() {
        let m = parse_offer(CHROMIUM_OFFER).unwrap();
        let tracks = vec![
            (0, track(TrackKind::Audio, "PCMU", 8000, 0, None)),
            (
                1,
                track(
                    TrackKind::Video,
                    "H264",
                    90000,
                    99,
                    Some("profile-level-id=42e01f;packetization-mode=1"),
                ),
            ),
        ];
        let s = select(&tracks, &m).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[1].offered.payload_type, 104);
        let tracks = vec![(0, track(TrackKind::Video, "H264", 90000, 99, None))];
        assert_eq!(select(&tracks, &m).unwrap()[0].offered.payload_type, 102);
    }

    #[test]
    fn no_common_codec_lists_both_sides() {
        let offer = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\n";
        let m = parse_offer(offer).unwrap();
        let tracks = vec![(0, track(TrackKind::Audio, "PCMU", 8000, 0, None))];
        let e = select(&tracks, &m).unwrap_err().to_string();
        assert!(
            e.contains("PCMU/8000 (audio)") && e.contains("audio: opus/48000/2"),
            "{e}"
        );
    }

    /// The offer aiortc 1.16 makes for recvonly audio + video transceivers (as captured by
    /// tests/whep/aiortc_client.py).
    const AIORTC_OFFER: &str = include_str!("../../tests/fixtures/aiortc_offer_av.sdp");

    #[test]
    fn aiortc_offer_parses() {
        let m = parse_offer(AIORTC_OFFER).unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!((m[0].kind.as_str(), m[1].kind.as_str()), ("audio", "video"));
        let names: Vec<&str> = m[0].codecs.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["opus", "G722", "PCMU", "PCMA"]);
        assert_eq!(m[1].codecs[0].name, "VP8");
        assert_eq!(m[1].codecs[0].payload_type, 97);
    }

    #[test]
    fn a_kind_the_stream_cannot_feed_is_answered_inactive_under_an_offered_codec() {
        let pcmu = vec![(0, track(TrackKind::Audio, "PCMU", 8000, 0, None))];
        for offer in [AIORTC_OFFER, CHROMIUM_OFFER] {
            let m = parse_offer(offer).unwrap();
            let s = select(&pcmu, &m).unwrap();
            assert_eq!(s.len(), 1);
            let inactive = inactive_codecs(&m, &s);
            assert_eq!(inactive.len(), 1, "{offer}");
            assert_eq!(inactive[0].0, TrackKind::Video);
            // The first media codec of the video section (VP8 in both), never rtx.
            assert_eq!(inactive[0].1.name, "VP8");
            assert_eq!(inactive[0].1, m[1].codecs[0]);
        }
        // Audio + H264 video streams use every section: nothing is inactive.
        let m = parse_offer(AIORTC_OFFER).unwrap();
        let av = vec![
            (0, track(TrackKind::Audio, "PCMU", 8000, 0, None)),
            (
                1,
                track(
                    TrackKind::Video,
                    "H264",
                    90000,
                    99,
                    Some("profile-level-id=42e01f;packetization-mode=1"),
                ),
            ),
        ];
        let s = select(&av, &m).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[1].offered.payload_type, 101);
        assert!(inactive_codecs(&m, &s).is_empty());
        // A video-only stream: the audio section is the inactive one (opus, aiortc's first).
        let video = vec![(1, av[1].1.clone())];
        let s = select(&video, &m).unwrap();
        let inactive = inactive_codecs(&m, &s);
        assert_eq!(inactive.len(), 1);
        assert_eq!(
            (inactive[0].0, inactive[0].1.name.as_str()),
            (TrackKind::Audio, "opus")
        );
        // Only auxiliary codecs: nothing to accept under; the section is rejected (port 0).
        let m = parse_offer(
            "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 98\r\n\
             a=rtpmap:98 rtx/90000\r\na=fmtp:98 apt=97\r\n",
        )
        .unwrap();
        let s = select(&pcmu, &m).unwrap();
        assert!(inactive_codecs(&m, &s).is_empty());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for s in [
            "",
            "hello",
            "v=0\r\n",
            "v=0\r\nm=\r\n",
            "v=0\r\nnonsense\r\n",
            "v=0\r\nm=audio\r\n",
        ] {
            assert!(parse_offer(s).is_err(), "{s:?}");
        }
        // Truncations of a real offer never panic.
        for i in 0..CHROMIUM_OFFER.len() {
            if CHROMIUM_OFFER.is_char_boundary(i) {
                let _ = parse_offer(&CHROMIUM_OFFER[..i]);
            }
        }
    }
}
