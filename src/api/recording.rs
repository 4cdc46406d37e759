//! Recording over REST (WCS names): `/stream/startRecording`, `/stream/stopRecording`
//! (aliases `/recorder/startup`, `/recorder/terminate`), `/recorder/find_all`, and the file
//! download `GET /recordings/{file}` with HTTP range requests.

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use utoipa::ToSchema;

use super::error::{ApiError, ErrorBody};
use super::json::parse_body;
use super::AppState;
use crate::record::{RecordingInfo, RecordingMeta};

/// The GET forms; the POST methods are in `methods.rs`.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/recorder/find_all", web::get().to(find_all));
}

/// A stream by `name`, or — as WCS clients send it — by `mediaSessionId`. For
/// stopRecording, `mediaSessionId` may also be the recording's own id.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RecordTarget {
    pub name: Option<String>,
    pub media_session_id: Option<String>,
}

impl RecordTarget {
    fn key(&self) -> Result<&str, ApiError> {
        self.name
            .as_deref()
            .or(self.media_session_id.as_deref())
            .filter(|s| !s.is_empty())
            .ok_or_else(|| ApiError::BadRequest("name: missing field (or mediaSessionId)".into()))
    }
}

/// Start recording a live stream to a fragmented MP4 file.
#[utoipa::path(post, path = "/rest-api/stream/startRecording", request_body = RecordTarget,
    responses(
        (status = 200, description = "Recording", body = RecordingInfo),
        (status = 400, body = ErrorBody),
        (status = 404, description = "Unknown stream", body = ErrorBody),
        (status = 409, description = "The stream is already being recorded", body = ErrorBody),
        (status = 500, description = "The file cannot be created (disk, permissions)", body = ErrorBody)))]
pub async fn start(state: web::Data<AppState>, body: web::Bytes) -> Result<HttpResponse, ApiError> {
    let req: RecordTarget = parse_body(&body)?;
    let stream = req.key()?;
    let info = state.calls.registry().find(stream);
    let meta = RecordingMeta {
        call_id: info.as_ref().and_then(|i| i.call_id.clone()),
        sip_call_id: info
            .as_ref()
            .and_then(|i| i.call_id.as_deref())
            .and_then(|c| state.calls.find(c))
            .and_then(|c| c.sip_call_id),
        media_session_id: None,
        participants: Vec::new(),
    };
    let recordings = state.calls.recordings().clone();
    let stream = stream.to_string();
    let info = state
        .on_core(async move { recordings.start(&stream, meta) })
        .await?;
    Ok(HttpResponse::Ok().json(info))
}

/// Stop a recording (by stream name or mediaSessionId); the file is finalised.
#[utoipa::path(post, path = "/rest-api/stream/stopRecording", request_body = RecordTarget,
    responses((status = 200, body = RecordingInfo), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn stop(state: web::Data<AppState>, body: web::Bytes) -> Result<HttpResponse, ApiError> {
    let req: RecordTarget = parse_body(&body)?;
    Ok(HttpResponse::Ok().json(state.calls.recordings().stop(req.key()?).await?))
}

/// Every recording (active and recent): file, stream, call, state, times, size, codecs.
#[utoipa::path(post, path = "/rest-api/recorder/find_all", responses((status = 200, body = Vec<RecordingInfo>)))]
pub async fn find_all(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(state.calls.recordings().find_all())
}

/// Downloads a recording or its JSON sidecar; `Range` requests are answered with 206.
#[utoipa::path(get, path = "/recordings/{file}", params(("file" = String, Path, description = "file name from /recorder/find_all")),
    responses((status = 200, description = "The file"), (status = 206, description = "A byte range"), (status = 404, body = ErrorBody)))]
pub async fn download(
    state: web::Data<AppState>,
    req: HttpRequest,
    file: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let path = state.calls.recordings().download_path(&file)?;
    let named = actix_files::NamedFile::open_async(&path)
        .await
        .map_err(|e| ApiError::NotFound(format!("{file:?}: {e}")))?;
    Ok(named
        .use_etag(true)
        .use_last_modified(true)
        .into_response(&req))
}
