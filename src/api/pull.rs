//! `/pull/*`: an RTSP camera or server pulled into a named stream (`/pull/startup`,
//! `/pull/find`, `/pull/find_all`, `/pull/terminate`). The pulls live in [`crate::rtsp`].

use actix_web::{web, HttpResponse};
use serde::Deserialize;
use utoipa::ToSchema;

use super::error::{ApiError, ErrorBody};
use super::json::parse_body;
use super::AppState;
use crate::rtsp::{PullInfo, PullTransport};

/// The GET forms; the POST methods are in `methods.rs`.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/pull/find", web::get().to(find_get))
        .route("/pull/find_all", web::get().to(find_all_get));
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({"uri": "rtsp://camera:secret@10.0.0.5:554/stream1", "streamName": "lobby-cam"}))]
pub struct PullStartupRequest {
    /// `rtsp://[user:password@]host[:port]/path`. The credentials go to the server (digest
    /// or basic) and are never shown.
    pub uri: String,
    /// The stream to create (must not exist).
    pub stream_name: String,
    /// `tcp` (interleaved, the default) or `udp`.
    #[serde(default)]
    pub transport: Option<String>,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({"streamName": "lobby-cam"}))]
pub struct PullKey {
    pub media_session_id: Option<String>,
    pub stream_name: Option<String>,
}

impl PullKey {
    fn key(&self) -> Result<&str, ApiError> {
        self.media_session_id
            .as_deref()
            .or(self.stream_name.as_deref())
            .filter(|k| !k.trim().is_empty())
            .ok_or_else(|| ApiError::BadRequest("mediaSessionId or streamName is required".into()))
    }
}

/// Pull an RTSP camera or server into a stream.
///
/// Answers once the server has answered DESCRIBE, with the tracks taken (the first audio
/// and the first video stream in PCMU, PCMA, Opus or H264); media follows (status PLAYING,
/// as a StreamStatusEvent). The stream plays, records, pushes and injects like a call's.
#[utoipa::path(post, path = "/rest-api/pull/startup", request_body = PullStartupRequest,
    responses(
        (status = 200, description = "Pulling (status PENDING until the first packet)", body = PullInfo),
        (status = 400, description = "uri, streamName or transport missing or malformed (the message names it)", body = ErrorBody),
        (status = 409, description = "A stream with this name exists", body = ErrorBody),
        (status = 502, description = "The server refused or did not answer, or has no stream in a codec the gateway carries", body = ErrorBody)))]
pub async fn startup(
    state: web::Data<AppState>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let req: PullStartupRequest = parse_body(&body)?;
    let transport = PullTransport::parse(req.transport.as_deref().unwrap_or("tcp"))
        .map_err(|e| ApiError::BadRequest(format!("transport: {e}")))?;
    let pulls = state.pulls.clone();
    let info = state
        .on_core(async move {
            pulls
                .startup(&req.uri, &req.stream_name, transport)
                .await
                .map_err(ApiError::from)
        })
        .await?;
    Ok(HttpResponse::Ok().json(info))
}

/// Stop a pull: TEARDOWN, the stream ends, status STOPPED.
#[utoipa::path(post, path = "/rest-api/pull/terminate", request_body = PullKey,
    responses((status = 200, body = PullInfo), (status = 400, body = ErrorBody), (status = 404, description = "No such pull", body = ErrorBody)))]
pub async fn terminate(
    state: web::Data<AppState>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let req: PullKey = parse_body(&body)?;
    Ok(HttpResponse::Ok().json(state.pulls.terminate(req.key()?)?))
}

/// A pull by mediaSessionId or streamName (live, else the last ended), as a list.
#[utoipa::path(post, path = "/rest-api/pull/find", request_body = PullKey,
    responses((status = 200, body = Vec<PullInfo>), (status = 400, body = ErrorBody), (status = 404, description = "No such pull", body = ErrorBody)))]
pub async fn find(state: web::Data<AppState>, body: web::Bytes) -> Result<HttpResponse, ApiError> {
    let req: PullKey = parse_body(&body)?;
    find_key(&state, &req)
}

async fn find_get(
    state: web::Data<AppState>,
    q: web::Query<PullKey>,
) -> Result<HttpResponse, ApiError> {
    find_key(&state, &q)
}

fn find_key(state: &AppState, req: &PullKey) -> Result<HttpResponse, ApiError> {
    let key = req.key()?;
    let found = state
        .pulls
        .find(key)
        .ok_or_else(|| ApiError::NotFound(format!("no such pull: {key:?}")))?;
    Ok(HttpResponse::Ok().json(vec![found]))
}

/// Every pull, live ones first.
#[utoipa::path(post, path = "/rest-api/pull/find_all", responses((status = 200, body = Vec<PullInfo>)))]
pub async fn find_all(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(state.pulls.find_all())
}

async fn find_all_get(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(state.pulls.find_all())
}
