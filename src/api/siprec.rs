//! `/siprec/*`: record a call to SIPREC servers (OpenSIPS siprec over REST), per instance.

use actix_web::{web, HttpResponse};

use super::error::{ApiError, ErrorBody};
use super::json::parse_body;
use super::AppState;
use crate::siprec::{SiprecControlRequest, SiprecInfo, SiprecStartRequest};

/// The GET forms; the POST methods are in `methods.rs`.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/siprec/find", web::get().to(find_get));
}

fn call_id(req: &SiprecControlRequest) -> Result<&str, ApiError> {
    req.call_id
        .as_deref()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ApiError::BadRequest("callId: missing field".into()))
}

/// Start recording a call to SRSs (failover in order); recording begins when the call is
/// answered.
#[utoipa::path(post, path = "/rest-api/siprec/start", request_body = SiprecStartRequest,
    responses(
        (status = 200, description = "Session created (WAITING or STARTING)", body = SiprecInfo),
        (status = 400, description = "A field is invalid (malformed URI, XML not well-formed, header injection)", body = ErrorBody),
        (status = 404, description = "Unknown callId", body = ErrorBody),
        (status = 409, description = "The call ended, or the instance is already recording", body = ErrorBody),
        (status = 503, description = "No RTP ports", body = ErrorBody)))]
pub async fn start(state: web::Data<AppState>, body: web::Bytes) -> Result<HttpResponse, ApiError> {
    let req: SiprecStartRequest = parse_body(&body)?;
    let calls = state.calls.clone();
    let info = state
        .on_core(async move { calls.siprec_start(req).await })
        .await?;
    Ok(HttpResponse::Ok().json(info))
}

/// Pause (re-INVITE with a=inactive; no RTP is sent while paused).
#[utoipa::path(post, path = "/rest-api/siprec/pause", request_body = SiprecControlRequest,
    responses((status = 200, body = Vec<SiprecInfo>), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn pause(state: web::Data<AppState>, body: web::Bytes) -> Result<HttpResponse, ApiError> {
    let req: SiprecControlRequest = parse_body(&body)?;
    Ok(HttpResponse::Ok().json(state.calls.siprec_pause(
        call_id(&req)?,
        req.instance.as_deref(),
        true,
    )?))
}

/// Resume (re-INVITE with a=sendonly).
#[utoipa::path(post, path = "/rest-api/siprec/resume", request_body = SiprecControlRequest,
    responses((status = 200, body = Vec<SiprecInfo>), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn resume(
    state: web::Data<AppState>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let req: SiprecControlRequest = parse_body(&body)?;
    Ok(HttpResponse::Ok().json(state.calls.siprec_pause(
        call_id(&req)?,
        req.instance.as_deref(),
        false,
    )?))
}

/// Stop (BYE to the SRS).
#[utoipa::path(post, path = "/rest-api/siprec/stop", request_body = SiprecControlRequest,
    responses((status = 200, body = Vec<SiprecInfo>), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn stop(state: web::Data<AppState>, body: web::Bytes) -> Result<HttpResponse, ApiError> {
    let req: SiprecControlRequest = parse_body(&body)?;
    Ok(HttpResponse::Ok().json(
        state
            .calls
            .siprec_stop(call_id(&req)?, req.instance.as_deref())?,
    ))
}

/// The SIPREC sessions of one call (or of every call): SRS, state, session id, packets.
#[utoipa::path(post, path = "/rest-api/siprec/find", request_body(content = Option<SiprecControlRequest>),
    responses((status = 200, body = Vec<SiprecInfo>), (status = 404, body = ErrorBody)))]
pub async fn find(state: web::Data<AppState>, body: web::Bytes) -> Result<HttpResponse, ApiError> {
    let req: SiprecControlRequest = if body.iter().all(u8::is_ascii_whitespace) {
        SiprecControlRequest::default()
    } else {
        parse_body(&body)?
    };
    Ok(HttpResponse::Ok().json(
        state
            .calls
            .siprec_find(req.call_id.as_deref(), req.instance.as_deref())?,
    ))
}

async fn find_get(
    state: web::Data<AppState>,
    q: web::Query<SiprecControlRequest>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(
        state
            .calls
            .siprec_find(q.call_id.as_deref(), q.instance.as_deref())?,
    ))
}
