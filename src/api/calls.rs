//! `/call/*`: start, terminate and find calls.

use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::call_request::CallStartupRequest;
use super::call_schema;
use super::error::{ApiError, ErrorBody};
use super::json::parse_body;
use super::AppState;
use crate::call::model::CallInfo;
use crate::exchange::{ExchangeInfo, InjectionInfo};

/// A call as `/call/find` and `/call/find_all` show it: the call object with what is
/// exchanged with it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CallView {
    #[serde(flatten)]
    #[schema(value_type = call_schema::CallInfo)]
    pub call: CallInfo,
    /// Its media exchanges (`/media/*`, listen-in, barge-in), oldest first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub exchanges: Vec<ExchangeInfo>,
    /// What is or was injected into its legs (`/call/inject*`), oldest first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub injections: Vec<InjectionInfo>,
}

fn views(state: &AppState, calls: Vec<CallInfo>) -> Vec<CallView> {
    let mut exchanges: std::collections::HashMap<String, Vec<ExchangeInfo>> = Default::default();
    for x in state.exchanges.find(None) {
        exchanges.entry(x.call_id.clone()).or_default().push(x);
    }
    let mut injections: std::collections::HashMap<String, Vec<InjectionInfo>> = Default::default();
    for i in state.injections.find(None) {
        injections.entry(i.call_id.clone()).or_default().push(i);
    }
    calls
        .into_iter()
        .map(|call| CallView {
            exchanges: exchanges.remove(&call.call_id).unwrap_or_default(),
            injections: injections.remove(&call.call_id).unwrap_or_default(),
            call,
        })
        .collect()
}

/// The GET forms; the POST methods are in `methods.rs`.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/call/find", web::get().to(find_get))
        .route("/call/find_all", web::get().to(find_all_get));
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CallIdRequest {
    pub call_id: String,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CallFilter {
    /// Only calls in this status (e.g. ESTABLISHED).
    pub status: Option<String>,
    pub call_id: Option<String>,
}

/// Place a SIP call whose media becomes a stream.
#[utoipa::path(post, path = "/rest-api/call/startup", request_body = CallStartupRequest,
    responses(
        (status = 200, description = "Call accepted; status PENDING or TRYING, progress follows", body = call_schema::CallInfo),
        (status = 400, description = "A field is missing or invalid (the message names it)", body = ErrorBody),
        (status = 409, description = "callId or toStream is in use", body = ErrorBody),
        (status = 502, description = "The SIP proxy could not be resolved or reached", body = ErrorBody),
        (status = 503, description = "Out of calls or RTP ports", body = ErrorBody)))]
pub async fn startup(
    state: web::Data<AppState>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let mut req: CallStartupRequest = parse_body(&body)?;
    let url = req.media_stream_url.take();
    let options = req.media_stream.take();
    let spec = req.validate(|| format!("call-{}", crate::ids::random_token(12)))?;
    // A media stream asked with the call starts at its answer; checked before the call
    // is placed, so a bad option places no call.
    let stream = match (url, options) {
        (None, None) => None,
        (url, options) => {
            let mut o = options.unwrap_or_default();
            if o.url.is_none() {
                o.url = url;
            }
            Some(
                o.validate(&spec.call_id)
                    .map_err(|e| ApiError::BadRequest(format!("mediaStream.{e}")))?,
            )
        }
    };
    let calls = state.calls.clone();
    let streams = state.media_streams.clone();
    let info = state
        .on_core(async move {
            let call_id = spec.call_id.clone();
            if let Some(s) = stream {
                streams.start_on_answer(s);
            }
            let r = calls.startup(spec).await;
            if r.is_err() {
                streams.cancel_pending(&call_id);
            }
            r
        })
        .await?;
    Ok(HttpResponse::Ok().json(info))
}

/// Hang up a call: BYE when established, CANCEL while ringing.
#[utoipa::path(post, path = "/rest-api/call/terminate", request_body = CallIdRequest,
    responses((status = 200, body = call_schema::CallInfo), (status = 400, body = ErrorBody), (status = 404, description = "Unknown callId", body = ErrorBody)))]
pub async fn terminate(
    state: web::Data<AppState>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let req: CallIdRequest = parse_body(&body)?;
    Ok(HttpResponse::Ok().json(state.calls.terminate(&req.call_id)?))
}

/// Answer an inbound call that rings for the API (`inbound_answer=api`): the gateway sets up
/// its media and sends 200 OK. `ESTABLISHED` follows as an event; 409 when the call is not
/// waiting for an answer.
#[utoipa::path(post, path = "/rest-api/call/answer", request_body = CallIdRequest,
    responses((status = 200, body = call_schema::CallInfo), (status = 400, body = ErrorBody), (status = 404, description = "Unknown callId", body = ErrorBody),
        (status = 409, description = "Not an inbound call waiting for an answer", body = ErrorBody)))]
pub async fn answer(
    state: web::Data<AppState>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let req: CallIdRequest = parse_body(&body)?;
    Ok(HttpResponse::Ok().json(state.calls.answer(&req.call_id)?))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HoldRequest {
    pub call_id: String,
    /// `caller`, `callee` or `both` (default: the call's only leg).
    pub leg: Option<String>,
    /// Hold only: play `hold_music_file` to the held leg (default true when it is set).
    #[serde(default, deserialize_with = "super::json::flex_bool")]
    #[schema(value_type = Option<bool>)]
    pub music: Option<bool>,
}

/// Put a call on hold: a re-INVITE with our media `sendonly`. Answers at once; events
/// `CallHolding`, `CallHoldStart`, then `CallHoldSuccessful` (status HOLD) or
/// `CallHoldFailed` with the SIP status follow.
#[utoipa::path(post, path = "/rest-api/call/hold", request_body = HoldRequest,
    responses((status = 200, description = "re-INVITE sent (or already held)", body = call_schema::CallInfo),
        (status = 400, body = ErrorBody), (status = 404, description = "Unknown callId", body = ErrorBody),
        (status = 409, description = "The call is not established, or a hold is in progress", body = ErrorBody)))]
pub async fn hold(state: web::Data<AppState>, body: web::Bytes) -> Result<HttpResponse, ApiError> {
    let req: HoldRequest = parse_body(&body)?;
    let info = state.calls.hold(
        &req.call_id,
        req.leg.as_deref(),
        true,
        req.music.unwrap_or(true),
    )?;
    Ok(HttpResponse::Ok().json(info))
}

/// Resume a held call: a re-INVITE with our media `sendrecv`; events `CallUnholding`,
/// `CallUnholdStart`, then `CallUnholdSuccessful` (status ESTABLISHED) or `CallUnholdFailed`.
#[utoipa::path(post, path = "/rest-api/call/unhold", request_body = HoldRequest,
    responses((status = 200, description = "re-INVITE sent (or not held)", body = call_schema::CallInfo),
        (status = 400, body = ErrorBody), (status = 404, description = "Unknown callId", body = ErrorBody),
        (status = 409, description = "The call is not established, or a hold is in progress", body = ErrorBody)))]
pub async fn unhold(
    state: web::Data<AppState>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let req: HoldRequest = parse_body(&body)?;
    let info = state
        .calls
        .hold(&req.call_id, req.leg.as_deref(), false, false)?;
    Ok(HttpResponse::Ok().json(info))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DtmfRequest {
    pub call_id: String,
    /// The leg that receives the digits: `caller` or `callee` (default: the call's only
    /// leg, or the callee of a two-party call).
    pub leg: Option<String>,
    /// Digits 0-9 * # A-D (1 to 64).
    pub dtmf: String,
    /// `RFC2833` (the default: RFC 4733 telephone-events in the audio RTP) or `INFO`
    /// (SIP INFO, application/dtmf-relay).
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// Per digit, in ms (default 160).
    pub duration: Option<u32>,
}

/// Send DTMF digits into a call: RFC 4733 telephone-events in the RTP (end packet sent
/// three times, a pause between digits), or one SIP INFO per digit, in order.
#[utoipa::path(post, path = "/rest-api/call/send_dtmf", request_body = DtmfRequest,
    responses((status = 200, description = "Digits queued", body = call_schema::CallInfo),
        (status = 400, description = "A digit, type or duration is invalid", body = ErrorBody),
        (status = 404, description = "Unknown callId", body = ErrorBody),
        (status = 409, description = "The call is not established; or for RFC2833 the far end did not take telephone-event or does not receive our audio", body = ErrorBody)))]
pub async fn send_dtmf(
    state: web::Data<AppState>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let req: DtmfRequest = parse_body(&body)?;
    let info = state.calls.send_dtmf(
        &req.call_id,
        req.leg.as_deref(),
        &req.dtmf,
        req.kind.as_deref(),
        req.duration.unwrap_or(160),
    )?;
    Ok(HttpResponse::Ok().json(info))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TransferRequest {
    pub call_id: String,
    /// The leg to transfer: `caller`, `callee` (default: the call's only leg).
    pub leg: Option<String>,
    /// Blind transfer: where the far end goes, a SIP URI or a number (then at the host of
    /// the call's far end). call-api's `destination` is accepted too.
    #[serde(alias = "destination")]
    pub target: Option<String>,
    /// Attended transfer: another established call of ours; the far end of `callId` is
    /// asked (REFER with Replaces) to call that call's far end and replace our dialog.
    pub replace_call_id: Option<String>,
    /// The leg of `replaceCallId` (default: its only leg).
    pub replace_leg: Option<String>,
}

/// Transfer a call's far end with REFER: blind to `target`, or attended to the far end of
/// `replaceCallId`. Answers at once; events `Transferring`, `TransferStart`,
/// `TransferPending`, then `TransferSuccessful` (our dialog then ends, reason "transferred
/// to ...") or `TransferFailed` with the SIP status (the call goes on).
#[utoipa::path(post, path = "/rest-api/call/transfer", request_body = TransferRequest,
    responses((status = 200, description = "REFER sent", body = call_schema::CallInfo),
        (status = 400, description = "target is not a SIP URI or number, or a leg is wrong", body = ErrorBody),
        (status = 404, description = "Unknown callId or replaceCallId", body = ErrorBody),
        (status = 409, description = "The call (or replaceCallId) is not established, or a transfer is in progress", body = ErrorBody)))]
pub async fn transfer(
    state: web::Data<AppState>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let req: TransferRequest = parse_body(&body)?;
    let info = state.calls.transfer(
        &req.call_id,
        req.leg.as_deref(),
        req.target.as_deref(),
        req.replace_call_id.as_deref(),
        req.replace_leg.as_deref(),
    )?;
    Ok(HttpResponse::Ok().json(info))
}

/// One call by callId (active or recently ended), as a one-element list as WCS returns it.
#[utoipa::path(post, path = "/rest-api/call/find", request_body = CallIdRequest,
    responses((status = 200, body = Vec<CallView>), (status = 400, body = ErrorBody), (status = 404, description = "Unknown callId", body = ErrorBody)))]
pub async fn find(state: web::Data<AppState>, body: web::Bytes) -> Result<HttpResponse, ApiError> {
    let req: CallIdRequest = parse_body(&body)?;
    find_one(&state, &req.call_id)
}

async fn find_get(
    state: web::Data<AppState>,
    q: web::Query<CallFilter>,
) -> Result<HttpResponse, ApiError> {
    match &q.call_id {
        Some(id) => find_one(&state, id),
        None => Err(ApiError::BadRequest(
            "callId: missing query parameter".into(),
        )),
    }
}

fn find_one(state: &AppState, call_id: &str) -> Result<HttpResponse, ApiError> {
    let info = state
        .calls
        .find(call_id)
        .ok_or_else(|| ApiError::NotFound(format!("callId {call_id:?}: no such call")))?;
    Ok(HttpResponse::Ok().json(views(state, vec![info])))
}

/// All active and recently ended calls, optionally filtered by status.
#[utoipa::path(post, path = "/rest-api/call/find_all", request_body(content = Option<CallFilter>),
    responses((status = 200, body = Vec<CallView>), (status = 400, body = ErrorBody)))]
pub async fn find_all(
    state: web::Data<AppState>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let filter: CallFilter = if body.iter().all(u8::is_ascii_whitespace) {
        CallFilter::default()
    } else {
        parse_body(&body)?
    };
    let calls = state.calls.find_all(filter.status.as_deref());
    Ok(HttpResponse::Ok().json(views(&state, calls)))
}

async fn find_all_get(state: web::Data<AppState>, q: web::Query<CallFilter>) -> HttpResponse {
    let calls = state.calls.find_all(q.status.as_deref());
    HttpResponse::Ok().json(views(&state, calls))
}
