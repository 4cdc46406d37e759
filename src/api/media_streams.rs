//! `/call/stream/*`: a call leg's audio to a WebSocket server and the server's audio back
//! (voice agents; Twilio Media Streams compatible), and the `mediaStream` option of
//! `/call/startup`. Validation here; the streams themselves are `mediastream/`'s.

use std::collections::BTreeMap;

use actix_web::{web, HttpResponse};
use serde::Deserialize;
use utoipa::ToSchema;

use super::error::{ApiError, ErrorBody};
use super::json::{flex_bool, parse_body};
use super::AppState;
use crate::mediastream::{
    Format, LegChoice, MediaStreamInfo, StreamSpec, TrackChoice, WireAudio, WireCodec,
};

/// The GET forms; the POST methods are in `methods.rs`.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/call/stream/find", web::get().to(find_get))
        .route("/call/stream/find_all", web::get().to(find_all_get));
}

/// How a call's audio goes to a WebSocket server.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MediaStreamOptions {
    /// `ws://` or `wss://` URL of the server. Required (in `/call/startup`, `mediaStreamUrl`
    /// may give it instead).
    pub url: Option<String>,
    /// `caller`, `callee` or `both` (default: the call's first leg: the callee of an
    /// outbound one-leg call, the caller of an inbound or two-party call).
    pub leg: Option<String>,
    /// `inbound` (what the leg's party says, the default), `outbound` (what it hears, on a
    /// two-party call) or `both`.
    pub track: Option<String>,
    /// `twilio` (default: Twilio Media Streams messages) or `raw` (binary audio frames).
    pub format: Option<String>,
    /// `PCMU` (default, 8 kHz) or `L16` (little-endian, 8 or 16 kHz).
    pub codec: Option<String>,
    /// 8000 (default) or 16000 (L16 only).
    #[schema(value_type = Option<u32>)]
    pub sample_rate: Option<serde_json::Value>,
    /// The server's audio (`media` messages, or binary frames in raw) plays into the leg,
    /// with `mark` and `clear`. Default true.
    #[serde(default, deserialize_with = "flex_bool")]
    #[schema(value_type = Option<bool>)]
    pub bidirectional: Option<bool>,
    /// Extra headers of the WebSocket handshake (the agent's auth). Values never shown.
    pub headers: Option<BTreeMap<String, String>>,
    /// Passed to the server in the `start` message's `customParameters`.
    #[schema(value_type = Option<Object>)]
    pub custom_parameters: Option<serde_json::Map<String, serde_json::Value>>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MediaStreamStartupRequest {
    pub call_id: String,
    #[serde(flatten)]
    pub options: MediaStreamOptions,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MediaStreamFilter {
    pub stream_sid: Option<String>,
    pub call_id: Option<String>,
}

/// Headers a user may not set: the handshake's own.
const RESERVED: &[&str] = &[
    "host",
    "upgrade",
    "connection",
    "content-length",
    "transfer-encoding",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-extensions",
    "sec-websocket-accept",
];

impl MediaStreamOptions {
    /// Checks every field; errors name it.
    pub fn validate(self, call_id: &str) -> Result<StreamSpec, ApiError> {
        let bad = |m: String| ApiError::BadRequest(m);
        let url = self
            .url
            .filter(|u| !u.trim().is_empty())
            .ok_or_else(|| bad("url is required (ws:// or wss://)".into()))?;
        let url = url.trim().to_string();
        if !(url.starts_with("ws://") || url.starts_with("wss://")) {
            return Err(bad(format!(
                "url: expected ws:// or wss://, got {:?}",
                crate::mediastream::redact_url(&url)
            )));
        }
        let leg = match self.leg.as_deref().map(str::to_ascii_lowercase).as_deref() {
            None | Some("") => None,
            Some("caller") => Some(LegChoice::Caller),
            Some("callee") => Some(LegChoice::Callee),
            Some("both") => Some(LegChoice::Both),
            Some(o) => {
                return Err(bad(format!(
                    "leg: expected caller, callee or both, got {o:?}"
                )))
            }
        };
        let track = match self
            .track
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            None | Some("") | Some("inbound") | Some("inbound_track") => TrackChoice::Inbound,
            Some("outbound") | Some("outbound_track") => TrackChoice::Outbound,
            Some("both") | Some("both_tracks") => TrackChoice::Both,
            Some(o) => {
                return Err(bad(format!(
                    "track: expected inbound, outbound or both, got {o:?}"
                )))
            }
        };
        let format = match self
            .format
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            None | Some("") | Some("twilio") => Format::Twilio,
            Some("raw") => Format::Raw,
            Some(o) => return Err(bad(format!("format: expected twilio or raw, got {o:?}"))),
        };
        let codec = match self
            .codec
            .as_deref()
            .map(str::to_ascii_uppercase)
            .as_deref()
        {
            None | Some("") | Some("PCMU") | Some("MULAW") => WireCodec::Pcmu,
            Some("L16") => WireCodec::L16,
            Some(o) => return Err(bad(format!("codec: expected PCMU or L16, got {o:?}"))),
        };
        let rate = match &self.sample_rate {
            None | Some(serde_json::Value::Null) => 8000,
            Some(serde_json::Value::Number(n)) => n.as_u64().unwrap_or(0),
            Some(serde_json::Value::String(s)) => s.trim().parse().unwrap_or(0),
            Some(_) => 0,
        };
        let rate = match (codec, rate) {
            (WireCodec::Pcmu, 8000) => 8000,
            (WireCodec::Pcmu, _) => {
                return Err(bad(
                    "sampleRate: PCMU is 8000 only; use codec L16 for 16000".into(),
                ))
            }
            (WireCodec::L16, r @ (8000 | 16000)) => r as u32,
            (WireCodec::L16, _) => return Err(bad("sampleRate: expected 8000 or 16000".into())),
        };
        let mut headers = Vec::new();
        for (name, value) in self.headers.unwrap_or_default() {
            if RESERVED.contains(&name.to_ascii_lowercase().as_str()) {
                return Err(bad(format!(
                    "headers: {name:?} belongs to the WebSocket handshake and cannot be set"
                )));
            }
            headers.push((name, value));
        }
        // The same parse the connection does: a URL or header it would refuse fails here.
        crate::mediastream::driver::build_request(&url, &headers).map_err(bad)?;
        Ok(StreamSpec {
            call_id: call_id.to_string(),
            url,
            leg,
            track,
            format,
            audio: WireAudio { codec, rate },
            bidirectional: self.bidirectional.unwrap_or(true),
            headers,
            custom_parameters: self.custom_parameters.unwrap_or_default(),
        })
    }
}

/// Stream a call's audio to a WebSocket server (and play the server's audio into the leg).
#[utoipa::path(post, path = "/rest-api/call/stream/startup", request_body = MediaStreamStartupRequest,
    responses(
        (status = 200, description = "Stream starting (status CONNECTING); MediaStreamEvents follow", body = MediaStreamInfo),
        (status = 400, description = "A field is missing or invalid (the message names it)", body = ErrorBody),
        (status = 404, description = "No such call", body = ErrorBody),
        (status = 409, description = "The call is not established, or already has a bidirectional stream, or is two-party with bidirectional asked", body = ErrorBody)))]
pub async fn startup(
    state: web::Data<AppState>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let req: MediaStreamStartupRequest = parse_body(&body)?;
    let spec = req.options.validate(&req.call_id)?;
    let streams = state.media_streams.clone();
    let info = state.on_core(async move { streams.start(spec) }).await?;
    Ok(HttpResponse::Ok().json(info))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MediaStreamStopRequest {
    /// One stream; or `callId` for all of a call's.
    pub stream_sid: Option<String>,
    pub call_id: Option<String>,
}

/// Stop a stream (`stop` goes to the server, then the socket closes); the call goes on.
#[utoipa::path(post, path = "/rest-api/call/stream/stop", request_body = MediaStreamStopRequest,
    responses((status = 200, description = "The streams stopping", body = Vec<MediaStreamInfo>),
        (status = 400, body = ErrorBody),
        (status = 404, description = "No such stream, or the call has no live stream", body = ErrorBody)))]
pub async fn stop(state: web::Data<AppState>, body: web::Bytes) -> Result<HttpResponse, ApiError> {
    let req: MediaStreamStopRequest = parse_body(&body)?;
    let stopped = match (&req.stream_sid, &req.call_id) {
        (Some(sid), _) => vec![state.media_streams.stop(sid)?],
        (None, Some(cid)) => {
            let v = state.media_streams.stop_call(cid);
            if v.is_empty() {
                return Err(ApiError::NotFound(format!(
                    "callId {cid:?}: no live media stream"
                )));
            }
            v
        }
        (None, None) => {
            return Err(ApiError::BadRequest(
                "streamSid or callId is required".into(),
            ))
        }
    };
    Ok(HttpResponse::Ok().json(stopped))
}

/// Streams by streamSid or by callId (live and recently ended), as a list.
#[utoipa::path(post, path = "/rest-api/call/stream/find", request_body = MediaStreamFilter,
    responses((status = 200, body = Vec<MediaStreamInfo>), (status = 400, body = ErrorBody),
        (status = 404, description = "No such stream", body = ErrorBody)))]
pub async fn find(state: web::Data<AppState>, body: web::Bytes) -> Result<HttpResponse, ApiError> {
    let f: MediaStreamFilter = parse_body(&body)?;
    find_filtered(&state, &f)
}

async fn find_get(
    state: web::Data<AppState>,
    q: web::Query<MediaStreamFilter>,
) -> Result<HttpResponse, ApiError> {
    find_filtered(&state, &q)
}

fn find_filtered(state: &AppState, f: &MediaStreamFilter) -> Result<HttpResponse, ApiError> {
    let found = match (&f.stream_sid, &f.call_id) {
        (Some(sid), _) => state.media_streams.find(sid).into_iter().collect(),
        (None, Some(cid)) => state.media_streams.find_all(Some(cid)),
        (None, None) => {
            return Err(ApiError::BadRequest(
                "streamSid or callId is required".into(),
            ))
        }
    };
    if found.is_empty() {
        return Err(ApiError::NotFound(match &f.stream_sid {
            Some(sid) => format!("streamSid {sid:?}: no such media stream"),
            None => format!(
                "callId {:?}: no media stream",
                f.call_id.as_deref().unwrap_or("")
            ),
        }));
    }
    Ok(HttpResponse::Ok().json(found))
}

/// Every media stream, oldest first.
#[utoipa::path(post, path = "/rest-api/call/stream/find_all",
    responses((status = 200, body = Vec<MediaStreamInfo>)))]
pub async fn find_all(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(state.media_streams.find_all(None))
}

async fn find_all_get(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(state.media_streams.find_all(None))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(v: serde_json::Value) -> MediaStreamOptions {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn defaults_and_each_bad_field_is_named() {
        let s = opts(serde_json::json!({"url": "ws://127.0.0.1:9/a"}))
            .validate("c1")
            .unwrap();
        assert_eq!(s.format, Format::Twilio);
        assert_eq!(
            s.audio,
            WireAudio {
                codec: WireCodec::Pcmu,
                rate: 8000
            }
        );
        assert!(s.bidirectional);
        assert_eq!(s.track, TrackChoice::Inbound);
        let s = opts(
            serde_json::json!({"url": "ws://h/", "format": "raw", "codec": "L16",
            "sampleRate": "16000", "bidirectional": "false", "track": "both_tracks"}),
        )
        .validate("c1")
        .unwrap();
        assert_eq!(
            (s.audio.rate, s.bidirectional, s.track),
            (16000, false, TrackChoice::Both)
        );
        for (body, field) in [
            (serde_json::json!({}), "url"),
            (serde_json::json!({"url": "http://h/"}), "url"),
            (serde_json::json!({"url": "ws://h/", "leg": "left"}), "leg"),
            (
                serde_json::json!({"url": "ws://h/", "track": "up"}),
                "track",
            ),
            (
                serde_json::json!({"url": "ws://h/", "format": "json"}),
                "format",
            ),
            (
                serde_json::json!({"url": "ws://h/", "codec": "G729"}),
                "codec",
            ),
            (
                serde_json::json!({"url": "ws://h/", "sampleRate": 16000}),
                "sampleRate",
            ),
            (
                serde_json::json!({"url": "ws://h/", "codec": "L16", "sampleRate": 44100}),
                "sampleRate",
            ),
            (
                serde_json::json!({"url": "ws://h/", "headers": {"Host": "x"}}),
                "headers",
            ),
            (
                serde_json::json!({"url": "ws://h/", "headers": {"X-A": "a\r\nInjected: 1"}}),
                "headers",
            ),
        ] {
            let e = opts(body.clone()).validate("c1").unwrap_err().to_string();
            assert!(e.starts_with(field), "{body}: {e}");
        }
    }

    #[test]
    fn a_bad_url_is_shown_without_its_secrets() {
        let e = opts(serde_json::json!({"url": "http://user:pw@h/?token=secret"}))
            .validate("c1")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("pw") && !e.contains("secret"), "{e}");
    }
}
