//! `/media/*`: OpenSIPS media_exchange over REST. The design-page names
//! (`send_to_uri`, `fetch_from_uri`) and the released module's names (`fork_to_uri`,
//! `exchange_from_uri`, `fork_pause`, `fork_resume`) are the same methods.

use std::collections::BTreeMap;

use actix_web::{web, HttpResponse};
use serde::Deserialize;
use utoipa::ToSchema;

use super::call_request::CallStartupRequest;
use super::error::{ApiError, ErrorBody};
use super::json::{flex_bool, parse_body};
use super::AppState;
use crate::call::model::CallSpec;
use crate::exchange::ExchangeInfo;
use crate::sip::sdp::{MediaKind, RtpMap, SessionDescription};

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MediaExchangeRequest {
    /// The running call whose media is exchanged.
    pub call_id: String,
    /// Whom the gateway calls: a `sip:` URI (or user@host).
    pub uri: String,
    /// `caller`, `callee` or `both` (default: the call's only leg, or both).
    pub leg: Option<String>,
    /// An SDP whose first audio line's codecs (in order) the gateway offers instead of its
    /// own; the addresses are the gateway's.
    pub body: Option<String>,
    /// Extra headers for the INVITE (no Via, From, To, Call-ID, CSeq, Contact...; no CR/LF).
    pub headers: Option<BTreeMap<String, String>>,
    /// send_to_uri with both legs: true (the default) mixes the parties into one audio
    /// line; false sends each on its own audio line (`a=label:caller`, then
    /// `a=label:callee`).
    #[serde(default, deserialize_with = "flex_bool")]
    #[schema(value_type = Option<bool>)]
    pub mix: Option<bool>,
    /// fetch_from_uri: do not put the other leg on hold.
    #[serde(default, deserialize_with = "flex_bool")]
    #[schema(value_type = Option<bool>)]
    pub nohold: Option<bool>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MediaTerminateRequest {
    /// The call (its exchanges), or one exchange by its exchangeId.
    pub call_id: String,
    /// Only the exchanges on this leg: `caller`, `callee` or `both`.
    pub leg: Option<String>,
    /// Terminate: leave the legs the exchange put on hold held.
    #[serde(default, deserialize_with = "flex_bool")]
    #[schema(value_type = Option<bool>)]
    pub nohold: Option<bool>,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MediaFindRequest {
    pub call_id: Option<String>,
}

/// The audio codecs of an SDP `body`, for the exchange's offer.
fn body_codecs(body: &str) -> Result<Vec<RtpMap>, ApiError> {
    let bad = |why: String| ApiError::BadRequest(format!("body: {why}"));
    let sd = SessionDescription::parse(body).map_err(|e| bad(format!("not an SDP: {e}")))?;
    let audio = sd
        .media
        .iter()
        .find(|m| m.kind == MediaKind::Audio)
        .ok_or_else(|| bad("has no audio line".into()))?;
    let usable: Vec<RtpMap> = audio
        .rtpmaps
        .iter()
        .filter(|r| {
            crate::media::transcode::AudioCodec::from_encoding(&r.encoding).is_some()
                || r.encoding.eq_ignore_ascii_case("telephone-event")
        })
        .cloned()
        .collect();
    if !usable
        .iter()
        .any(|r| !r.encoding.eq_ignore_ascii_case("telephone-event"))
    {
        let names: Vec<&str> = audio.rtpmaps.iter().map(|r| r.encoding.as_str()).collect();
        return Err(bad(format!(
            "none of its codecs {names:?} is one the gateway sends (PCMU, PCMA, opus)"
        )));
    }
    Ok(usable)
}

/// The exchange's call: to `uri`, as the parent call's identity (its SIP user and domain,
/// its transport), with the request's headers and codecs. The INVITE goes where the URI
/// says (RFC 3263), without the parent's outbound proxy or credentials.
fn exchange_spec(state: &AppState, req: &MediaExchangeRequest) -> Result<CallSpec, ApiError> {
    let parent = state
        .calls
        .find(&req.call_id)
        .ok_or_else(|| ApiError::NotFound(format!("callId {:?}: no such call", req.call_id)))?;
    if parent.exchange_of.is_some() {
        return Err(ApiError::BadRequest(format!(
            "callId {:?} is itself a media exchange",
            req.call_id
        )));
    }
    if req.uri.trim().is_empty() {
        return Err(ApiError::BadRequest("uri: missing field".into()));
    }
    let start: CallStartupRequest = serde_json::from_value(serde_json::json!({
        "callId": "exchange",
        "callee": req.uri,
        "sipLogin": parent.sip_login,
        "sipDomain": parent.sip_domain,
        "sipTransport": parent.sip_transport,
        "sipHeaders": req.headers,
    }))
    .map_err(|e| ApiError::BadRequest(format!("uri: {e}")))?;
    let mut spec = start.validate(|| "exchange".into()).map_err(|e| match e {
        ApiError::BadRequest(m) => ApiError::BadRequest(m.replacen("callee:", "uri:", 1).replacen(
            "sipHeaders:",
            "headers:",
            1,
        )),
        other => other,
    })?;
    if let Some(body) = req.body.as_deref().filter(|b| !b.trim().is_empty()) {
        spec.audio_codecs = Some(body_codecs(body)?);
    }
    Ok(spec)
}

/// Fork a call's leg (or both: mixed, or one audio line each with `mix: false`) to a SIP
/// URI: the gateway calls it, sendonly, and sends it that audio. Alias `/media/fork_to_uri`.
#[utoipa::path(post, path = "/rest-api/media/send_to_uri", request_body = MediaExchangeRequest,
    responses(
        (status = 200, description = "INVITE sent (status STARTING); ExchangeStarted or ExchangeFailed follows", body = ExchangeInfo),
        (status = 400, description = "A field is missing or invalid (the message names it)", body = ErrorBody),
        (status = 404, description = "No such call", body = ErrorBody),
        (status = 409, description = "The call is not established", body = ErrorBody),
        (status = 502, description = "The URI's host could not be resolved", body = ErrorBody),
        (status = 503, description = "Out of calls or RTP ports", body = ErrorBody)))]
pub async fn send_to_uri(
    state: web::Data<AppState>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let req: MediaExchangeRequest = parse_body(&body)?;
    let spec = exchange_spec(&state, &req)?;
    let x = state.exchanges.clone();
    let info = state
        .on_core(async move {
            x.send_to_uri(&req.call_id, req.leg.as_deref(), req.mix, spec)
                .await
        })
        .await?;
    Ok(HttpResponse::Ok().json(info))
}

/// Play what a SIP URI sends (a media server: announcement, music, IVR) to a call's leg
/// instead of what it hears; the leg's audio goes to the URI, and the other leg is put on
/// hold unless `nohold`. `/media/terminate` gives the original media back. Alias
/// `/media/exchange_from_uri`.
#[utoipa::path(post, path = "/rest-api/media/fetch_from_uri", request_body = MediaExchangeRequest,
    responses(
        (status = 200, description = "INVITE sent (status STARTING); ExchangeStarted or ExchangeFailed follows", body = ExchangeInfo),
        (status = 400, description = "A field is missing or invalid (the message names it)", body = ErrorBody),
        (status = 404, description = "No such call", body = ErrorBody),
        (status = 409, description = "The call is not established, or the leg already hears a fetch", body = ErrorBody),
        (status = 502, description = "The URI's host could not be resolved", body = ErrorBody),
        (status = 503, description = "Out of calls or RTP ports", body = ErrorBody)))]
pub async fn fetch_from_uri(
    state: web::Data<AppState>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let req: MediaExchangeRequest = parse_body(&body)?;
    let spec = exchange_spec(&state, &req)?;
    let x = state.exchanges.clone();
    let nohold = req.nohold.unwrap_or(false);
    let info = state
        .on_core(async move {
            x.fetch_from_uri(&req.call_id, req.leg.as_deref(), nohold, spec)
                .await
        })
        .await?;
    Ok(HttpResponse::Ok().json(info))
}

/// End a call's media exchanges (or those on one leg, or one by exchangeId): their calls
/// are hung up, the original media comes back and held legs are resumed (unless `nohold`).
#[utoipa::path(post, path = "/rest-api/media/terminate", request_body = MediaTerminateRequest,
    responses((status = 200, body = Vec<ExchangeInfo>), (status = 400, body = ErrorBody),
        (status = 404, description = "No such call, or no exchange running", body = ErrorBody)))]
pub async fn terminate(
    state: web::Data<AppState>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let req: MediaTerminateRequest = parse_body(&body)?;
    let v = state.exchanges.terminate(
        &req.call_id,
        req.leg.as_deref(),
        req.nohold.unwrap_or(false),
    )?;
    Ok(HttpResponse::Ok().json(v))
}

/// Pause a call's exchanges: their calls stay up and carry silence. Alias
/// `/media/fork_pause`.
#[utoipa::path(post, path = "/rest-api/media/pause", request_body = MediaTerminateRequest,
    responses((status = 200, body = Vec<ExchangeInfo>), (status = 400, body = ErrorBody),
        (status = 404, description = "No such call, or no exchange running", body = ErrorBody)))]
pub async fn pause(state: web::Data<AppState>, body: web::Bytes) -> Result<HttpResponse, ApiError> {
    let req: MediaTerminateRequest = parse_body(&body)?;
    let v = state
        .exchanges
        .pause(&req.call_id, req.leg.as_deref(), true)?;
    Ok(HttpResponse::Ok().json(v))
}

/// Resume paused exchanges. Alias `/media/fork_resume`.
#[utoipa::path(post, path = "/rest-api/media/resume", request_body = MediaTerminateRequest,
    responses((status = 200, body = Vec<ExchangeInfo>), (status = 400, body = ErrorBody),
        (status = 404, description = "No such call, or no exchange running", body = ErrorBody)))]
pub async fn resume(
    state: web::Data<AppState>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let req: MediaTerminateRequest = parse_body(&body)?;
    let v = state
        .exchanges
        .pause(&req.call_id, req.leg.as_deref(), false)?;
    Ok(HttpResponse::Ok().json(v))
}

/// Media exchanges (running and ended), oldest first: of one call, or all.
#[utoipa::path(post, path = "/rest-api/media/find", request_body = MediaFindRequest,
    responses((status = 200, body = Vec<ExchangeInfo>), (status = 400, body = ErrorBody)))]
pub async fn find(state: web::Data<AppState>, body: web::Bytes) -> Result<HttpResponse, ApiError> {
    let f: MediaFindRequest = if body.iter().all(u8::is_ascii_whitespace) {
        MediaFindRequest::default()
    } else {
        parse_body(&body)?
    };
    Ok(HttpResponse::Ok().json(state.exchanges.find(f.call_id.as_deref())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_codecs_keep_the_order_and_drop_what_we_cannot_send() {
        let sdp = "v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\n\
                   m=audio 4000 RTP/AVP 9 8 101\r\na=rtpmap:9 G722/8000\r\n\
                   a=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\n";
        let c = body_codecs(sdp).unwrap();
        let names: Vec<&str> = c.iter().map(|r| r.encoding.as_str()).collect();
        assert_eq!(names, ["PCMA", "telephone-event"]);
    }

    #[test]
    fn a_body_that_is_not_sdp_or_has_nothing_we_send_is_refused_by_name() {
        let e = body_codecs("hello").unwrap_err().to_string();
        assert!(e.contains("body: not an SDP"), "{e}");
        let g722 = "v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\n\
                    m=audio 4000 RTP/AVP 9\r\na=rtpmap:9 G722/8000\r\n";
        let e = body_codecs(g722).unwrap_err().to_string();
        assert!(e.contains("G722") && e.contains("body:"), "{e}");
    }
}
