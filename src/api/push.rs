//! `/push/*`: republish a stream to an RTMP server (WCS's `/push/startup`, `/push/find`,
//! `/push/find_all`, `/push/terminate`).

use actix_web::{web, HttpResponse};
use serde::Deserialize;
use utoipa::ToSchema;

use super::error::{ApiError, ErrorBody};
use super::json::{flex_bool, parse_body};
use super::AppState;
use crate::rtmp::PushInfo;

/// The GET forms; the POST methods are in `methods.rs`.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/push/find", web::get().to(find_get))
        .route("/push/find_all", web::get().to(find_all_get));
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PushStartupRequest {
    /// The stream to push (e.g. a call's `toStream`). It must exist.
    pub stream_name: String,
    /// `rtmp://host[:port]/app` (the stream name is appended) or, with
    /// `rtmpTransponderFullUrl`, the whole publish URL `rtmp://host[:port]/app/key`.
    pub rtmp_url: String,
    /// true: `rtmpUrl` is the whole publish URL; false (the WCS default): `/streamName` is
    /// appended to it.
    #[serde(default, deserialize_with = "flex_bool")]
    #[schema(value_type = Option<bool>)]
    pub rtmp_transponder_full_url: Option<bool>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MediaSessionIdRequest {
    pub media_session_id: String,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PushFilter {
    pub media_session_id: Option<String>,
    pub stream_name: Option<String>,
}

/// Start pushing a stream to an RTMP server.
#[utoipa::path(post, path = "/rest-api/push/startup", request_body = PushStartupRequest,
    responses(
        (status = 200, description = "Push started (status PENDING); progress follows as StreamStatusEvents", body = PushInfo),
        (status = 400, description = "streamName or rtmpUrl is missing or malformed (the message names it)", body = ErrorBody),
        (status = 404, description = "No such stream", body = ErrorBody),
        (status = 409, description = "This stream is already pushed to this URL", body = ErrorBody)))]
pub async fn startup(
    state: web::Data<AppState>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let req: PushStartupRequest = parse_body(&body)?;
    let pushes = state.pushes.clone();
    let info = state
        .on_core(async move {
            pushes
                .startup(
                    &req.stream_name,
                    &req.rtmp_url,
                    req.rtmp_transponder_full_url.unwrap_or(false),
                )
                .map_err(ApiError::from)
        })
        .await?;
    Ok(HttpResponse::Ok().json(info))
}

/// Stop a push: `deleteStream`, close, status STOPPED.
#[utoipa::path(post, path = "/rest-api/push/terminate", request_body = MediaSessionIdRequest,
    responses((status = 200, body = PushInfo), (status = 400, body = ErrorBody), (status = 404, description = "Unknown mediaSessionId", body = ErrorBody)))]
pub async fn terminate(
    state: web::Data<AppState>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let req: MediaSessionIdRequest = parse_body(&body)?;
    Ok(HttpResponse::Ok().json(state.pushes.terminate(&req.media_session_id)?))
}

/// Pushes by mediaSessionId or by streamName (live ones and recently ended ones), as a list.
#[utoipa::path(post, path = "/rest-api/push/find", request_body = PushFilter,
    responses((status = 200, body = Vec<PushInfo>), (status = 400, body = ErrorBody), (status = 404, description = "No such push", body = ErrorBody)))]
pub async fn find(state: web::Data<AppState>, body: web::Bytes) -> Result<HttpResponse, ApiError> {
    let f: PushFilter = parse_body(&body)?;
    find_filtered(&state, &f)
}

async fn find_get(
    state: web::Data<AppState>,
    q: web::Query<PushFilter>,
) -> Result<HttpResponse, ApiError> {
    find_filtered(&state, &q)
}

fn find_filtered(state: &AppState, f: &PushFilter) -> Result<HttpResponse, ApiError> {
    let found = match (&f.media_session_id, &f.stream_name) {
        (Some(id), _) => state.pushes.find(id).into_iter().collect::<Vec<_>>(),
        (None, Some(name)) => state.pushes.find_all(Some(name)),
        (None, None) => {
            return Err(ApiError::BadRequest(
                "mediaSessionId or streamName is required".into(),
            ))
        }
    };
    if found.is_empty() {
        return Err(ApiError::NotFound(match &f.media_session_id {
            Some(id) => format!("mediaSessionId {id:?}: no such push"),
            None => format!(
                "streamName {:?}: no push",
                f.stream_name.as_deref().unwrap_or("")
            ),
        }));
    }
    Ok(HttpResponse::Ok().json(found))
}

/// Every push, live ones first.
#[utoipa::path(post, path = "/rest-api/push/find_all",
    responses((status = 200, body = Vec<PushInfo>)))]
pub async fn find_all(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(state.pushes.find_all(None))
}

async fn find_all_get(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(state.pushes.find_all(None))
}
