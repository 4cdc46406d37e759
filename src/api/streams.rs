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
