//! `/stream/*` and `/health`.

use actix_web::{web, HttpResponse};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::{ApiError, ErrorBody};
use super::json::parse_body;
use super::AppState;
use crate::registry::StreamInfo;

/// The GET forms; the POST methods are in `methods.rs`.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/stream/find", web::get().to(find_get))
        .route("/stream/find_all", web::get().to(find_all));
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StreamName {
    pub name: String,
}

/// One stream with its tracks, codecs, packet counters and readers.
#[utoipa::path(post, path = "/rest-api/stream/find", request_body = StreamName,
    responses((status = 200, body = Vec<StreamInfo>), (status = 400, body = ErrorBody), (status = 404, description = "Unknown stream", body = ErrorBody)))]
pub async fn find(state: web::Data<AppState>, body: web::Bytes) -> Result<HttpResponse, ApiError> {
    let req: StreamName = parse_body(&body)?;
    find_one(&state, &req.name)
}

async fn find_get(
    state: web::Data<AppState>,
    q: web::Query<StreamName>,
) -> Result<HttpResponse, ApiError> {
    find_one(&state, &q.name)
}

fn find_one(state: &AppState, name: &str) -> Result<HttpResponse, ApiError> {
    let info = state
        .calls
        .registry()
        .find(name)
        .ok_or_else(|| ApiError::NotFound(format!("name {name:?}: no such stream")))?;
    Ok(HttpResponse::Ok().json(vec![info]))
}

/// Every live stream.
#[utoipa::path(post, path = "/rest-api/stream/find_all",
    responses((status = 200, body = Vec<StreamInfo>)))]
pub async fn find_all(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(state.calls.registry().list())
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TokenRequest {
    /// The stream the token lets a player read (it need not exist yet).
    pub name: String,
    /// How long the token is valid, 1 to 604800 seconds (default 3600).
    pub ttl_seconds: Option<u64>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TokenInfo {
    pub name: String,
    /// For WHEP: `Authorization: Bearer TOKEN`; for HLS: `?token=TOKEN`.
    pub token: String,
    /// Unix time in seconds.
    pub expires_at: u64,
    pub whep_url: String,
    pub hls_url: String,
    /// The gateway's WebRTC player page for this stream, with the token.
    pub player_url: String,
    /// The gateway's HLS player page for this stream, with the token.
    pub hls_player_url: String,
}

/// A token that lets a player (WHEP, HLS, the player pages) read one stream without an API
/// key, until it expires. Signed with `api_token_secret` (HMAC-SHA256); tokens cannot be
/// revoked one by one: keep them short, or change the secret.
#[utoipa::path(post, path = "/rest-api/stream/token", request_body = TokenRequest,
    responses((status = 200, body = TokenInfo), (status = 400, description = "name or ttlSeconds is malformed", body = ErrorBody)))]
pub async fn token(state: web::Data<AppState>, body: web::Bytes) -> Result<HttpResponse, ApiError> {
    let req: TokenRequest = parse_body(&body)?;
    crate::registry::validate_name(&req.name)
        .map_err(|e| ApiError::BadRequest(format!("name: {e}")))?;
    let ttl = req.ttl_seconds.unwrap_or(3600);
    if !(1..=604_800).contains(&ttl) {
        return Err(ApiError::BadRequest(format!(
            "ttlSeconds must be 1 to 604800, got {ttl}"
        )));
    }
    let (token, expires_at) = state.auth.issue_token(
        &req.name,
        super::auth::unix_now(),
        std::time::Duration::from_secs(ttl),
    );
    let name: String = form_urlencoded::byte_serialize(req.name.as_bytes()).collect();
    Ok(HttpResponse::Ok().json(TokenInfo {
        whep_url: format!("/whep/{name}"),
        hls_url: format!("/hls/{name}/index.m3u8?token={token}"),
        player_url: format!("/player.html?stream={name}&token={token}"),
        hls_player_url: format!("/hls.html?stream={name}&token={token}"),
        name: req.name,
        token,
        expires_at,
    }))
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Health {
    pub status: &'static str,
    pub version: &'static str,
    pub active_calls: usize,
    pub streams: usize,
    pub rtp_ports_in_use: usize,
    pub rtp_ports_capacity: usize,
    /// SIP messages received, malformed, stray responses, live transactions.
    #[schema(value_type = Object)]
    pub sip: Option<crate::sip::endpoint::EndpointStats>,
}

/// Liveness and counters.
#[utoipa::path(get, path = "/health", responses((status = 200, body = Health)))]
pub async fn health(state: web::Data<AppState>) -> HttpResponse {
    let sip = state.calls.sip().stats().await;
    HttpResponse::Ok().json(Health {
        status: if sip.is_some() { "ok" } else { "degraded" },
        version: env!("CARGO_PKG_VERSION"),
        active_calls: state.calls.active_calls(),
        streams: state.calls.registry().len(),
        rtp_ports_in_use: state.calls.ports().in_use(),
        rtp_ports_capacity: state.calls.ports().capacity(),
        sip,
    })
}
