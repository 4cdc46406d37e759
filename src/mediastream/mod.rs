//! Media streams for voice agents: a call leg's audio pushed to a WebSocket server in real
//! time, and the server's audio played into the leg (Twilio Media Streams compatible, or
//! raw binary frames). One more output (and input) on the registry and the call legs:
//!
//! - `wire.rs`: the messages on the socket (sans-IO);
//! - `framer.rs`: a leg track's RTP payloads to numbered, time-stamped 20 ms frames (sans-IO);
//! - `playout.rs`: the agent's audio queue with marks and clear (sans-IO);
//! - `driver.rs`: the tokio tasks: one pumps the registry and the playout clock (never
//!   waits on the network), one owns the WebSocket (connect, reconnect with backoff, send,
//!   read);
//! - `manager.rs`: the streams by id, their start at call answer, their events.
//!
//! It reads calls through [`crate::call::manager::CallManager`]'s answers (which legs a
//! call has, how to play into one) and the event bus (answers, DTMF); the call layer does
//! not know it exists.

pub mod driver;
pub mod framer;
pub mod manager;
pub mod playout;
pub mod wire;

use serde::Serialize;
use utoipa::ToSchema;

pub use manager::{MediaStreamConfig, MediaStreamManager};

/// The message set on the socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Twilio Media Streams: JSON text frames, audio base64 in `media` messages.
    Twilio,
    /// Binary frames of audio; text frames carry the same JSON control messages.
    Raw,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
pub enum WireCodec {
    /// G.711 μ-law bytes (8 kHz only).
    #[serde(rename = "PCMU")]
    Pcmu,
    /// 16-bit linear PCM, little-endian.
    L16,
}

/// The audio format on the socket, both ways.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WireAudio {
    pub codec: WireCodec,
    pub rate: u32,
}

impl WireAudio {
    /// The `mediaFormat.encoding` of the `start` message.
    pub fn encoding_name(&self) -> &'static str {
        match self.codec {
            WireCodec::Pcmu => "audio/x-mulaw",
            WireCodec::L16 => "audio/x-l16",
        }
    }
}

/// Which leg the stream serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum LegChoice {
    Caller,
    Callee,
    /// Both parties of a two-party call: the caller's voice as `inbound`, the callee's as
    /// `outbound` (what the caller hears).
    Both,
}

/// Which direction of the leg's audio.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TrackChoice {
    /// What the leg's party says.
    Inbound,
    /// What the party hears (the other party of a two-party call).
    Outbound,
    Both,
}

/// A validated `/call/stream/startup` (or `mediaStream` of `/call/startup`, or the inbound
/// property).
#[derive(Debug, Clone)]
pub struct StreamSpec {
    pub call_id: String,
    pub url: String,
    /// None: the call's first leg (the callee of a one-leg outbound call, the caller of an
    /// inbound or two-party call).
    pub leg: Option<LegChoice>,
    pub track: TrackChoice,
    pub format: Format,
    pub audio: WireAudio,
    pub bidirectional: bool,
    /// Extra handshake headers (the agent's auth); values never shown.
    pub headers: Vec<(String, String)>,
    pub custom_parameters: serde_json::Map<String, serde_json::Value>,
}

/// A stream as `/call/stream/find` shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MediaStreamInfo {
    /// `MZ` and 32 hex digits, as Twilio's; also in every message's `streamSid`.
    pub stream_sid: String,
    pub call_id: String,
    /// The server's URL without user info and query (tokens stay out of responses).
    pub url: String,
    pub leg: LegChoice,
    pub track: TrackChoice,
    pub format: Format,
    pub codec: WireCodec,
    pub sample_rate: u32,
    pub bidirectional: bool,
    /// CONNECTING, STREAMING, RECONNECTING, STOPPED or FAILED.
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Connections made after the first.
    pub reconnects: u32,
    /// Audio frames (20 ms) sent to the server.
    pub frames_sent: u64,
    /// Audio frames dropped because the server was slow or away (oldest first).
    pub frames_dropped: u64,
    /// Frames of the server's audio played into the leg.
    pub frames_played: u64,
    /// Milliseconds of the server's audio refused because the play queue was full.
    pub audio_refused_ms: u64,
    /// Marks answered.
    pub marks: u64,
    /// Server messages that were not understood (bad JSON, bad base64...), ignored.
    pub bad_messages: u64,
    /// Unix time in milliseconds.
    pub created_at: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<u64>,
}

impl MediaStreamInfo {
    pub fn wire_audio(&self) -> WireAudio {
        WireAudio {
            codec: self.codec,
            rate: self.sample_rate,
        }
    }

    pub fn is_final(&self) -> bool {
        matches!(self.status.as_str(), "STOPPED" | "FAILED")
    }
}

/// A URL as it may be shown: scheme, host, port and path; user info and query removed.
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let rest = rest.split(['?', '#']).next().unwrap_or("");
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let host = authority.rsplit('@').next().unwrap_or(authority);
    let query = if url.contains('?') { "?…" } else { "" };
    format!("{scheme}://{host}{path}{query}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_credentials_and_query() {
        assert_eq!(
            redact_url("wss://bot:s3cret@agent.example.com:8443/media?token=abc"),
            "wss://agent.example.com:8443/media?…"
        );
        assert_eq!(redact_url("ws://127.0.0.1:9000"), "ws://127.0.0.1:9000");
        assert_eq!(redact_url("ws://h/p#frag"), "ws://h/p");
    }
}
