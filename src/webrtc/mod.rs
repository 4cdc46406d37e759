//! WebRTC playback of streams (WHEP, RFC 9725): a browser's SDP offer in, an SDP answer out,
//! then the stream's RTP passes through to the browser over ICE/DTLS/SRTP (the `webrtc`
//! crate), without transcoding.
//!
//! Owns the WHEP sessions: one registry [`Reader`](crate::registry::Reader) of kind
//! `"webrtc"` and one peer connection per player, its UDP port from the `webrtc_port_*`
//! range, and a task that forwards media until the player leaves (DELETE, ICE failure or lost
//! consent, connect timeout) or the stream ends; then every resource is freed. It does not own
//! the HTTP layer (`api/whep.rs`) nor anything of the SIP side.
//!
//! Sans-IO parts: [`offer`] (codec choice) and [`forward`] (RTP rewriting, keyframe gate);
//! [`session`] is the tokio driver around the `webrtc` crate.
//!
//! Keyframes for players that join mid-call: video is held back until the next keyframe, and
//! the session asks the SIP side for one when the player connects
//! ([`crate::registry::Reader::request_keyframe`]; the publishing RTP leg sends an RTCP PLI
//! to the far end). Not done: forwarding the browser's own PLI/FIR (the `webrtc` crate hands
//! sender feedback to the application only through a custom interceptor), FIR towards the
//! SIP side, and SIP INFO `picture_fast_update` (RFC 5168). See the README's WHEP section.

pub mod forward;
pub mod offer;
pub mod session;

use std::net::IpAddr;
use std::time::Duration;

use serde::Serialize;
use thiserror::Error;

use crate::config::Config;

pub use session::{WhepAnswer, WhepService};

/// Why a WHEP request failed; each maps to one HTTP status in `api/whep.rs`.
#[derive(Debug, Error)]
pub enum WhepError {
    /// 415: the body is not `application/sdp`.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// 400: the offer is not usable SDP.
    #[error("bad SDP offer: {0}")]
    BadOffer(String),
    /// 404: no such stream.
    #[error("stream {0:?} not found")]
    StreamNotFound(String),
    /// 404: no such session (of that stream).
    #[error("no WHEP session {session:?} on stream {stream:?}")]
    SessionNotFound { stream: String, session: String },
    /// 409: the stream has no media yet (a call still ringing) after `webrtc_track_wait_s`.
    #[error("stream {0:?} has no audio or video track yet (is the call answered?)")]
    NoTracks(String),
    /// 406: nothing the stream carries is in the offer.
    #[error("{0}")]
    NoCommonCodec(String),
    /// 503: `webrtc_max_sessions` players, or no free UDP port.
    #[error("{0}")]
    Capacity(String),
    /// 500: the WebRTC stack failed.
    #[error("WebRTC: {0}")]
    Internal(String),
}

/// One ICE server as the browser's `RTCPeerConnection` takes it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct IceServer {
    pub urls: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

/// The `webrtc_*` properties, resolved.
#[derive(Debug, Clone)]
pub struct WebrtcConfig {
    /// Where ICE sockets bind; host candidates carry this address (or `announce`).
    pub bind_ip: IpAddr,
    /// Announced instead of `bind_ip` when that is a wildcard (1:1 NAT mapping of the host
    /// candidate).
    pub announce_ip: Option<IpAddr>,
    /// Inclusive; `(0, 0)` lets the OS choose.
    pub port_min: u16,
    pub port_max: u16,
    pub ice_servers: Vec<IceServer>,
    pub max_sessions: usize,
    pub connect_timeout: Duration,
    pub disconnected_timeout: Duration,
    pub failed_timeout: Duration,
    pub track_wait: Duration,
}

impl WebrtcConfig {
    pub fn from_config(cfg: &Config) -> Self {
        // media_ip may be a NAT's public address, not a local one: it is announced, never
        // bound.
        let bind_ip = cfg.webrtc_address.unwrap_or(cfg.rtp_address);
        let announce_ip = cfg
            .media_ip
            .filter(|ip| bind_ip.is_unspecified() && !ip.is_unspecified());
        let mut ice_servers = Vec::new();
        let (stun, turn): (Vec<String>, Vec<String>) = cfg
            .webrtc_ice_servers
            .iter()
            .cloned()
            .partition(|u| u.starts_with("stun:") || u.starts_with("stuns:"));
        if !stun.is_empty() {
            ice_servers.push(IceServer {
                urls: stun,
                username: None,
                credential: None,
            });
        }
        if !turn.is_empty() {
            ice_servers.push(IceServer {
                urls: turn,
                username: Some(cfg.webrtc_turn_username.clone()),
                credential: Some(cfg.webrtc_turn_credential.clone()),
            });
        }
        Self {
            bind_ip,
            announce_ip,
            port_min: cfg.webrtc_port_min,
            port_max: cfg.webrtc_port_max,
            ice_servers,
            max_sessions: cfg.webrtc_max_sessions,
            connect_timeout: cfg.webrtc_connect_timeout,
            disconnected_timeout: cfg.webrtc_disconnected_timeout,
            failed_timeout: cfg.webrtc_failed_timeout,
            track_wait: cfg.webrtc_track_wait,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(sets: &[&str]) -> WebrtcConfig {
        let args = sets
            .iter()
            .flat_map(|s| ["--set".to_string(), s.to_string()]);
        let args: Vec<String> = ["--config".to_string(), "/dev/null".to_string()]
            .into_iter()
            .chain(args)
            .collect();
        WebrtcConfig::from_config(&Config::load(args, |_| None).unwrap())
    }

    #[test]
    fn addresses_and_ice_servers() {
        let c = cfg(&[]);
        assert!(c.bind_ip.is_unspecified());
        assert_eq!(c.announce_ip, None);
        assert_eq!((c.port_min, c.port_max), (33000, 33999));
        assert!(c.ice_servers.is_empty());
        let c = cfg(&["media_ip=192.0.2.7"]);
        assert!(c.bind_ip.is_unspecified());
        assert_eq!(c.announce_ip, Some("192.0.2.7".parse().unwrap()));
        let c = cfg(&["rtp_address=127.0.0.1", "media_ip=192.0.2.7"]);
        assert_eq!(
            (c.bind_ip.to_string(), c.announce_ip),
            ("127.0.0.1".into(), None)
        );
        let c = cfg(&[
            "webrtc_ice_servers=stun:stun.example.test:3478, turn:turn.example.test?transport=udp",
            "webrtc_turn_username=u",
            "webrtc_turn_credential=p",
        ]);
        assert_eq!(c.ice_servers.len(), 2);
        assert_eq!(c.ice_servers[0].urls, vec!["stun:stun.example.test:3478"]);
        assert_eq!(c.ice_servers[1].username.as_deref(), Some("u"));
    }

    #[test]
    fn bad_webrtc_settings_are_rejected() {
        for bad in [
            "webrtc_port_min=34000",
            "webrtc_ice_servers=http://stun.example.test",
        ] {
            let args = vec![
                "--config".into(),
                "/dev/null".into(),
                "--set".into(),
                bad.to_string(),
            ];
            let e = Config::load(args, |_| None).unwrap_err().to_string();
            assert!(e.contains("webrtc_"), "{bad}: {e}");
        }
    }
}
