//! What goes over a media stream's WebSocket, sans-IO: the Twilio Media Streams message set
//! (`connected`, `start`, `media`, `dtmf`, `mark`, `stop` out; `media`, `mark`, `clear` in)
//! and the raw format (binary audio frames, the same JSON for control). One [`Wire`] per
//! connection numbers its messages (`sequenceNumber` counts from 1 on each connection, as
//! a new connection is a new session for the server).

use base64::Engine;
use serde::Serialize;

use super::{Format, WireAudio};

/// Which side of the leg a frame carries, in Twilio's names: `inbound` is what the leg's
/// party says, `outbound` what it hears.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TrackLabel {
    Inbound,
    Outbound,
}

/// One message towards the server, before numbering and serialising.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outgoing {
    Media {
        track: TrackLabel,
        /// Counts from 1 per track.
        chunk: u64,
        /// Milliseconds since the stream started.
        timestamp: u64,
        /// Audio in the stream's wire format (μ-law bytes or L16 little-endian).
        audio: Vec<u8>,
    },
    Dtmf {
        digit: String,
    },
    /// A mark of the server's whose audio has played (or was cleared).
    Mark {
        name: String,
    },
    Stop,
}

/// A frame to send: text (JSON) or binary (raw audio).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Text(String),
    Binary(Vec<u8>),
}

/// Who the stream belongs to, as the `start` message tells the server.
#[derive(Debug, Clone)]
pub struct StartInfo {
    pub account_sid: String,
    pub stream_sid: String,
    pub call_sid: String,
    pub tracks: Vec<TrackLabel>,
    pub custom_parameters: serde_json::Map<String, serde_json::Value>,
}

/// One connection's message numbering and serialisation.
#[derive(Debug)]
pub struct Wire {
    format: Format,
    audio: WireAudio,
    start: StartInfo,
    seq: u64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct MediaFormat {
    encoding: &'static str,
    sample_rate: u32,
    channels: u8,
}

impl Wire {
    pub fn new(format: Format, audio: WireAudio, start: StartInfo) -> Self {
        Self {
            format,
            audio,
            start,
            seq: 0,
        }
    }

    fn next_seq(&mut self) -> String {
        self.seq += 1;
        self.seq.to_string()
    }

    /// What opens the session: `connected`, then `start`.
    pub fn opening(&mut self) -> Vec<Frame> {
        let connected = serde_json::json!({
            "event": "connected",
            "protocol": "Call",
            "version": "1.0.0",
        });
        let seq = self.next_seq();
        let s = &self.start;
        let start = serde_json::json!({
            "event": "start",
            "sequenceNumber": seq,
            "start": {
                "accountSid": s.account_sid,
                "streamSid": s.stream_sid,
                "callSid": s.call_sid,
                "tracks": s.tracks,
                "customParameters": s.custom_parameters,
                "mediaFormat": MediaFormat {
                    encoding: self.audio.encoding_name(),
                    sample_rate: self.audio.rate,
                    channels: 1,
                },
            },
            "streamSid": s.stream_sid,
        });
        vec![
            Frame::Text(connected.to_string()),
            Frame::Text(start.to_string()),
        ]
    }

    /// One message as its frame.
    pub fn frame(&mut self, msg: &Outgoing) -> Frame {
        let sid = self.start.stream_sid.clone();
        match msg {
            Outgoing::Media {
                track,
                chunk,
                timestamp,
                audio,
            } => {
                if self.format == Format::Raw {
                    return Frame::Binary(audio.clone());
                }
                let payload = base64::engine::general_purpose::STANDARD.encode(audio);
                let v = serde_json::json!({
                    "event": "media",
                    "sequenceNumber": self.next_seq(),
                    "media": {
                        "track": track,
                        "chunk": chunk.to_string(),
                        "timestamp": timestamp.to_string(),
                        "payload": payload,
                    },
                    "streamSid": sid,
                });
                Frame::Text(v.to_string())
            }
            Outgoing::Dtmf { digit } => Frame::Text(
                serde_json::json!({
                    "event": "dtmf",
                    "streamSid": sid,
                    "sequenceNumber": self.next_seq(),
                    "dtmf": {"track": "inbound_track", "digit": digit},
                })
                .to_string(),
            ),
            Outgoing::Mark { name } => Frame::Text(
                serde_json::json!({
                    "event": "mark",
                    "sequenceNumber": self.next_seq(),
                    "streamSid": sid,
                    "mark": {"name": name},
                })
                .to_string(),
            ),
            Outgoing::Stop => Frame::Text(
                serde_json::json!({
                    "event": "stop",
                    "sequenceNumber": self.next_seq(),
                    "streamSid": sid,
                    "stop": {
                        "accountSid": self.start.account_sid,
                        "callSid": self.start.call_sid,
                    },
                })
                .to_string(),
            ),
        }
    }
}

/// A message from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// Audio to play, in the stream's wire format.
    Media(Vec<u8>),
    Mark(String),
    Clear,
    /// Anything else (an unknown event, `connected` echoed back...): ignored.
    Ignored(String),
}

/// Why a server's message was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("not JSON: {0}")]
    Json(String),
    #[error("no \"event\" field")]
    NoEvent,
    #[error("{0}")]
    Field(&'static str),
}

/// A text frame from the server (both formats).
pub fn parse_text(text: &str) -> Result<Incoming, WireError> {
    let v: serde_json::Value =
        serde_json::from_str(text).map_err(|e| WireError::Json(e.to_string()))?;
    let event = v
        .get("event")
        .and_then(|e| e.as_str())
        .ok_or(WireError::NoEvent)?;
    match event {
        "media" => {
            let payload = v
                .pointer("/media/payload")
                .and_then(|p| p.as_str())
                .ok_or(WireError::Field("media without media.payload"))?;
            let audio = base64::engine::general_purpose::STANDARD
                .decode(payload)
                .map_err(|_| WireError::Field("media.payload is not base64"))?;
            Ok(Incoming::Media(audio))
        }
        "mark" => {
            let name = v
                .pointer("/mark/name")
                .and_then(|p| p.as_str())
                .ok_or(WireError::Field("mark without mark.name"))?;
            Ok(Incoming::Mark(name.to_string()))
        }
        "clear" => Ok(Incoming::Clear),
        other => Ok(Incoming::Ignored(other.chars().take(32).collect())),
    }
}

/// Audio bytes in the wire format to samples at its rate (appended to `out`).
pub fn decode_audio(audio: WireAudio, bytes: &[u8], out: &mut Vec<i16>) {
    match audio.codec {
        super::WireCodec::Pcmu => crate::media::g711::decode_ulaw(bytes, out),
        super::WireCodec::L16 => out.extend(
            bytes
                .chunks_exact(2)
                .map(|b| i16::from_le_bytes([b[0], b[1]])),
        ),
    }
}

/// Samples to audio bytes in the wire format (appended to `out`).
pub fn encode_audio(audio: WireAudio, pcm: &[i16], out: &mut Vec<u8>) {
    match audio.codec {
        super::WireCodec::Pcmu => crate::media::g711::encode_ulaw(pcm, out),
        super::WireCodec::L16 => {
            for s in pcm {
                out.extend_from_slice(&s.to_le_bytes());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::WireCodec;
    use super::*;

    fn start() -> StartInfo {
        let mut custom = serde_json::Map::new();
        custom.insert("agent".into(), "support".into());
        StartInfo {
            account_sid: "sipstream".into(),
            stream_sid: "MZ1".into(),
            call_sid: "call-1".into(),
            tracks: vec![TrackLabel::Inbound],
            custom_parameters: custom,
        }
    }

    fn json(f: &Frame) -> serde_json::Value {
        match f {
            Frame::Text(t) => serde_json::from_str(t).unwrap(),
            Frame::Binary(_) => panic!("binary"),
        }
    }

    #[test]
    fn twilio_messages_have_twilio_s_shape_and_numbering() {
        let audio = WireAudio {
            codec: WireCodec::Pcmu,
            rate: 8000,
        };
        let mut w = Wire::new(Format::Twilio, audio, start());
        let open = w.opening();
        let c = json(&open[0]);
        assert_eq!(c["event"], "connected");
        assert_eq!(c["protocol"], "Call");
        assert_eq!(c["version"], "1.0.0");
        let s = json(&open[1]);
        assert_eq!(s["event"], "start");
        assert_eq!(s["sequenceNumber"], "1");
        assert_eq!(s["streamSid"], "MZ1");
        assert_eq!(s["start"]["streamSid"], "MZ1");
        assert_eq!(s["start"]["callSid"], "call-1");
        assert_eq!(s["start"]["tracks"], serde_json::json!(["inbound"]));
        assert_eq!(s["start"]["customParameters"]["agent"], "support");
        assert_eq!(
            s["start"]["mediaFormat"],
            serde_json::json!({"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1})
        );
        let m = json(&w.frame(&Outgoing::Media {
            track: TrackLabel::Inbound,
            chunk: 1,
            timestamp: 20,
            audio: vec![0xff; 160],
        }));
        assert_eq!(m["sequenceNumber"], "2");
        assert_eq!(m["media"]["track"], "inbound");
        assert_eq!(m["media"]["chunk"], "1");
        assert_eq!(m["media"]["timestamp"], "20");
        let payload = base64::engine::general_purpose::STANDARD
            .decode(m["media"]["payload"].as_str().unwrap())
            .unwrap();
        assert_eq!(payload, vec![0xff; 160]);
        let d = json(&w.frame(&Outgoing::Dtmf { digit: "5".into() }));
        assert_eq!(
            d["dtmf"],
            serde_json::json!({"track": "inbound_track", "digit": "5"})
        );
        let k = json(&w.frame(&Outgoing::Mark { name: "m1".into() }));
        assert_eq!(k["mark"]["name"], "m1");
        let st = json(&w.frame(&Outgoing::Stop));
        assert_eq!(st["event"], "stop");
        assert_eq!(st["sequenceNumber"], "5");
        assert_eq!(st["stop"]["callSid"], "call-1");
    }

    #[test]
    fn raw_media_is_binary_and_l16_is_little_endian() {
        let audio = WireAudio {
            codec: WireCodec::L16,
            rate: 16000,
        };
        let mut w = Wire::new(Format::Raw, audio, start());
        let s = json(&w.opening()[1]);
        assert_eq!(s["start"]["mediaFormat"]["encoding"], "audio/x-l16");
        assert_eq!(s["start"]["mediaFormat"]["sampleRate"], 16000);
        let mut bytes = Vec::new();
        encode_audio(audio, &[1, -2, 0x1234], &mut bytes);
        assert_eq!(bytes, vec![1, 0, 0xfe, 0xff, 0x34, 0x12]);
        let mut back = Vec::new();
        decode_audio(audio, &bytes[..5], &mut back);
        assert_eq!(back, vec![1, -2], "an odd byte at the end is dropped");
        let f = w.frame(&Outgoing::Media {
            track: TrackLabel::Inbound,
            chunk: 1,
            timestamp: 0,
            audio: bytes.clone(),
        });
        assert_eq!(f, Frame::Binary(bytes));
    }

    #[test]
    fn server_messages_parse_or_say_what_is_wrong() {
        let m = parse_text(r#"{"event":"media","streamSid":"x","media":{"payload":"/w=="}}"#);
        assert_eq!(m, Ok(Incoming::Media(vec![0xff])));
        assert_eq!(
            parse_text(r#"{"event":"mark","mark":{"name":"done"}}"#),
            Ok(Incoming::Mark("done".into()))
        );
        assert_eq!(parse_text(r#"{"event":"clear"}"#), Ok(Incoming::Clear));
        assert_eq!(
            parse_text(r#"{"event":"hello"}"#),
            Ok(Incoming::Ignored("hello".into()))
        );
        assert!(matches!(parse_text("{"), Err(WireError::Json(_))));
        assert_eq!(parse_text("{}"), Err(WireError::NoEvent));
        assert_eq!(
            parse_text(r#"{"event":"media","media":{}}"#),
            Err(WireError::Field("media without media.payload"))
        );
        assert_eq!(
            parse_text(r#"{"event":"media","media":{"payload":"!!"}}"#),
            Err(WireError::Field("media.payload is not base64"))
        );
        assert_eq!(
            parse_text(r#"{"event":"mark"}"#),
            Err(WireError::Field("mark without mark.name"))
        );
    }
}
