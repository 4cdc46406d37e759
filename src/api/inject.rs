//! `/call/inject_sound`, `/call/inject_stream/startup|terminate` (WCS's names) and
//! `/call/inject/find|stop`: audio put into a call leg, mixed with what else plays there.

use actix_web::{web, HttpResponse};
use serde::Deserialize;
use utoipa::ToSchema;

use super::error::{ApiError, ErrorBody};
use super::json::{flex_bool, parse_body};
use super::AppState;
use crate::exchange::inject::SoundSource;
use crate::exchange::InjectionInfo;
use crate::registry::Leg;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct InjectSoundRequest {
    pub call_id: String,
    /// A sound file inside `sound_dir`: 16-bit PCM WAV, MP3 or Ogg Opus (any rate, mono or
    /// stereo; told apart by content, at most an hour).
    pub sound_file: Option<String>,
    /// Or an http(s) URL of one (at most 50 MiB).
    pub url: Option<String>,
    /// `caller` or `callee` (default: the call's first leg).
    pub leg: Option<String>,
    /// Play until stopped (`/call/inject/stop`) instead of once.
    #[serde(default, rename = "loop", deserialize_with = "flex_bool")]
    #[schema(value_type = Option<bool>)]
    pub looped: Option<bool>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct InjectStreamRequest {
    pub call_id: String,
    /// A stream of the registry (another call's `toStream`...). For `terminate`, optional:
    /// without it every stream injected into the call stops.
    pub stream_name: Option<String>,
    /// `caller` or `callee` (default: the call's first leg).
    pub leg: Option<String>,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct InjectionFilter {
    pub call_id: Option<String>,
    pub injection_id: Option<String>,
}

fn leg(s: Option<&str>) -> Result<Option<Leg>, ApiError> {
    match s.map(str::to_ascii_lowercase).as_deref() {
        None | Some("") => Ok(None),
        Some("caller") => Ok(Some(Leg::Caller)),
        Some("callee") => Ok(Some(Leg::Callee)),
        Some(o) => Err(ApiError::BadRequest(format!(
            "leg: expected caller or callee, got {o:?}"
        ))),
    }
}

/// Play a sound file (WAV, MP3 or Ogg Opus) into a call leg (mixed with what else plays there).
#[utoipa::path(post, path = "/rest-api/call/inject_sound", request_body = InjectSoundRequest,
    responses(
        (status = 200, description = "Playing; InjectFinished follows when it has played", body = InjectionInfo),
        (status = 400, description = "A field is missing or invalid, or the file is not a 16-bit PCM WAV, MP3 or Ogg Opus file of at most an hour (the message says which)", body = ErrorBody),
        (status = 404, description = "No such call, or no such file in sound_dir", body = ErrorBody),
        (status = 409, description = "The call is not established, or is a two-party call", body = ErrorBody),
        (status = 502, description = "The URL could not be fetched", body = ErrorBody)))]
pub async fn inject_sound(
    state: web::Data<AppState>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let req: InjectSoundRequest = parse_body(&body)?;
    let sound = match (req.sound_file, req.url) {
        (Some(f), None) => SoundSource::File(f),
        (None, Some(u)) => SoundSource::Url(u),
        (Some(_), Some(_)) => {
            return Err(ApiError::BadRequest(
                "soundFile and url: give one of them".into(),
            ))
        }
        (None, None) => return Err(ApiError::BadRequest("soundFile or url is required".into())),
    };
    let leg = leg(req.leg.as_deref())?;
    let inj = state.injections.clone();
    let call_id = req.call_id;
    let looped = req.looped.unwrap_or(false);
    let info = state
        .on_core(async move { inj.inject_sound(&call_id, leg, sound, looped).await })
        .await?;
    Ok(HttpResponse::Ok().json(info))
}

/// Play another stream (another call, a source) into a call leg, live.
#[utoipa::path(post, path = "/rest-api/call/inject_stream/startup", request_body = InjectStreamRequest,
    responses(
        (status = 200, description = "Playing until the stream ends or is stopped", body = InjectionInfo),
        (status = 400, description = "A field is missing or invalid", body = ErrorBody),
        (status = 404, description = "No such call or stream", body = ErrorBody),
        (status = 409, description = "The call is not established, or is a two-party call", body = ErrorBody)))]
pub async fn inject_stream_startup(
    state: web::Data<AppState>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let req: InjectStreamRequest = parse_body(&body)?;
    let stream = req
        .stream_name
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ApiError::BadRequest("streamName is required".into()))?;
    let leg = leg(req.leg.as_deref())?;
    let inj = state.injections.clone();
    let call_id = req.call_id;
    let info = state
        .on_core(async move { inj.inject_stream(&call_id, leg, &stream) })
        .await?;
    Ok(HttpResponse::Ok().json(info))
}

/// Stop streams injected into a call (one by streamName, or all).
#[utoipa::path(post, path = "/rest-api/call/inject_stream/terminate", request_body = InjectStreamRequest,
    responses((status = 200, body = Vec<InjectionInfo>), (status = 400, body = ErrorBody),
        (status = 404, description = "Nothing of that is injected", body = ErrorBody)))]
pub async fn inject_stream_terminate(
    state: web::Data<AppState>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let req: InjectStreamRequest = parse_body(&body)?;
    let stream = req.stream_name.as_deref().filter(|s| !s.is_empty());
    let stopped = state
        .injections
        .stop(None, Some(&req.call_id), true, stream)?;
    Ok(HttpResponse::Ok().json(stopped))
}

/// Stop injections: one by injectionId, or every one of a call.
#[utoipa::path(post, path = "/rest-api/call/inject/stop", request_body = InjectionFilter,
    responses((status = 200, body = Vec<InjectionInfo>), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn stop(state: web::Data<AppState>, body: web::Bytes) -> Result<HttpResponse, ApiError> {
    let f: InjectionFilter = parse_body(&body)?;
    if f.injection_id.is_none() && f.call_id.is_none() {
        return Err(ApiError::BadRequest(
            "injectionId or callId is required".into(),
        ));
    }
    let v = state
        .injections
        .stop(f.injection_id.as_deref(), f.call_id.as_deref(), false, None)?;
    Ok(HttpResponse::Ok().json(v))
}

/// Injections of a call (playing and ended), oldest first; without callId, all.
#[utoipa::path(post, path = "/rest-api/call/inject/find", request_body = InjectionFilter,
    responses((status = 200, body = Vec<InjectionInfo>), (status = 400, body = ErrorBody)))]
pub async fn find(state: web::Data<AppState>, body: web::Bytes) -> Result<HttpResponse, ApiError> {
    let f: InjectionFilter = if body.iter().all(u8::is_ascii_whitespace) {
        InjectionFilter::default()
    } else {
        parse_body(&body)?
    };
    let mut v = state.injections.find(f.call_id.as_deref());
    if let Some(id) = &f.injection_id {
        v.retain(|i| &i.injection_id == id);
    }
    Ok(HttpResponse::Ok().json(v))
}
