//! The sans-IO part of RTSP ingest: the pull URL (credentials taken out and never shown)
//! and which of a server's streams become which registry tracks.

use std::collections::BTreeMap;

use crate::registry::{Leg, TrackKind, TrackSpec};

/// An `rtsp://` URL split into what retina takes: the URL without credentials, and the
/// credentials (percent-decoded).
#[derive(Clone, PartialEq, Eq)]
pub struct PullUrl {
    pub url: url::Url,
    pub username: Option<String>,
    pub password: Option<String>,
}

impl std::fmt::Debug for PullUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PullUrl")
            .field("url", &self.url.as_str())
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

impl PullUrl {
    pub fn parse(text: &str) -> Result<PullUrl, String> {
        let mut url = url::Url::parse(text.trim()).map_err(|e| format!("not a URL ({e})"))?;
        match url.scheme() {
            "rtsp" => {}
            "rtsps" => return Err("rtsps:// (RTSP over TLS) is not supported; use rtsp://".into()),
            other => return Err(format!("scheme {other}: is not rtsp:")),
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err("no host".into());
        }
        let dec = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        };
        let username = (!url.username().is_empty()).then(|| dec(url.username()));
        let password = url.password().map(dec);
        // Infallible for a URL with a host.
        let _ = url.set_username("");
        let _ = url.set_password(None);
        Ok(PullUrl {
            url,
            username,
            password,
        })
    }

    /// The URL as shown in answers, logs and events: without credentials.
    pub fn shown(&self) -> String {
        self.url.to_string()
    }
}

/// The codec name the registry uses for retina's (lower-case) encoding name, for the codecs
/// the gateway carries.
pub fn codec_name(encoding: &str) -> Option<&'static str> {
    Some(match encoding.to_ascii_lowercase().as_str() {
        "pcmu" => "PCMU",
        "pcma" => "PCMA",
        "opus" => "opus",
        "h264" => "H264",
        _ => return None,
    })
}

/// A server stream as a registry track, if the gateway carries its codec.
pub fn track_for(
    media: &str,
    encoding: &str,
    clock_rate: u32,
    payload_type: u8,
    fmtp: Option<&str>,
) -> Option<TrackSpec> {
    let codec = codec_name(encoding)?;
    let kind = match (media, codec) {
        ("audio", "PCMU" | "PCMA" | "opus") => TrackKind::Audio,
        ("video", "H264") => TrackKind::Video,
        _ => return None,
    };
    // Opus is always announced as 2 channels (RFC 7587); a mono sender says sprop-stereo=0.
    let channels = if codec == "opus" { 2 } else { 1 };
    Some(TrackSpec {
        kind,
        leg: Leg::Callee,
        codec: codec.to_owned(),
        clock_rate,
        channels,
        payload_type,
        fmtp: fmtp.map(str::to_owned),
    })
}

/// `a=fmtp` of each media section by (media, payload type): retina parses the fmtp but
/// does not give the text back.
pub fn sdp_fmtps(sdp: &[u8]) -> BTreeMap<(String, u8), String> {
    let mut out = BTreeMap::new();
    let mut media = String::new();
    let mut pts: Vec<u8> = Vec::new();
    for line in String::from_utf8_lossy(sdp).lines() {
        if let Some(m) = line.strip_prefix("m=") {
            let mut f = m.split_whitespace();
            media = f.next().unwrap_or_default().to_owned();
            pts = f.skip(2).filter_map(|p| p.parse().ok()).collect();
        } else if let Some(v) = line.strip_prefix("a=fmtp:") {
            if let Some((pt, params)) = v.split_once(' ') {
                if let Ok(pt) = pt.trim().parse::<u8>() {
                    if pts.contains(&pt) {
                        out.insert((media.clone(), pt), params.trim().to_owned());
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_taken_out_and_decoded() {
        let u = PullUrl::parse("rtsp://cam%40x:p%3Ass@10.0.0.5:8554/live?ch=1").unwrap();
        assert_eq!(u.username.as_deref(), Some("cam@x"));
        assert_eq!(u.password.as_deref(), Some("p:ss"));
        assert_eq!(u.shown(), "rtsp://10.0.0.5:8554/live?ch=1");
        assert!(!format!("{u:?}").contains("p:ss"));
        let u = PullUrl::parse(" rtsp://cam/x ").unwrap();
        assert_eq!((u.username, u.password), (None, None));
        for bad in ["http://x/y", "rtsps://x/y", "rtsp:///y", "nonsense", ""] {
            assert!(PullUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn tracks_for_carried_codecs_only() {
        let a = track_for("audio", "pcmu", 8000, 0, None).unwrap();
        assert_eq!(
            (a.kind, a.codec.as_str(), a.channels),
            (TrackKind::Audio, "PCMU", 1)
        );
        let v = track_for("video", "h264", 90000, 96, Some("packetization-mode=1")).unwrap();
        assert_eq!(v.kind, TrackKind::Video);
        assert_eq!(v.fmtp.as_deref(), Some("packetization-mode=1"));
        assert_eq!(
            track_for("audio", "opus", 48000, 111, None)
                .unwrap()
                .channels,
            2
        );
        assert!(track_for("audio", "mpeg4-generic", 44100, 97, None).is_none());
        assert!(track_for("video", "h265", 90000, 98, None).is_none());
        assert!(track_for("video", "pcmu", 8000, 0, None).is_none());
    }

    #[test]
    fn fmtp_by_media_and_payload_type() {
        let sdp = b"v=0\r\nm=audio 0 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n\
            m=video 0 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n\
            a=fmtp:96 packetization-mode=1;sprop-parameter-sets=Z0LAFdo=,aM48gA==\r\n\
            a=fmtp:97 stray\r\n";
        let f = sdp_fmtps(sdp);
        assert_eq!(f.len(), 1);
        assert!(f[&("video".to_string(), 96)].starts_with("packetization-mode=1"));
    }
}
