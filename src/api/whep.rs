//! WHEP (RFC 9725) over HTTP: `POST /whep/{stream}` with an `application/sdp` offer answers
//! `201 Created` with the SDP answer and `Location: /whep/{stream}/{session}`; `DELETE` on
//! that location ends the session; `OPTIONS` answers CORS preflights so a player page on
//! another origin can use it. `GET /webrtc/config` gives pages the ICE servers. Sessions live
//! in [`crate::webrtc`]; this file only translates HTTP.

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::middleware::DefaultHeaders;
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use serde::Serialize;
use utoipa::ToSchema;

use super::error::{ApiError, ErrorBody};
use super::AppState;
use crate::webrtc::{IceServer, WhepError};

/// Headers a cross-origin player needs on every WHEP response, errors included.
fn cors() -> DefaultHeaders {
    DefaultHeaders::new()
        .add(("Access-Control-Allow-Origin", "*"))
        .add((
            "Access-Control-Expose-Headers",
            "Location, Link, Accept-Post, Accept-Patch, ETag",
        ))
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/whep")
            .wrap(actix_web::middleware::from_fn(super::time_limit))
            .wrap(super::too_large())
            .wrap(cors())
            .route("/{stream}", web::post().to(offer))
            .route(
                "/{stream}",
                web::method(actix_web::http::Method::OPTIONS).to(preflight),
            )
            .route("/{stream}/{session}", web::delete().to(delete))
            .route("/{stream}/{session}", web::patch().to(patch))
            .route(
                "/{stream}/{session}",
                web::method(actix_web::http::Method::OPTIONS).to(preflight),
            ),
    )
    .service(
        web::scope("/webrtc")
            .wrap(cors())
            .route("/config", web::get().to(config)),
    );
}

impl ResponseError for WhepError {
    fn status_code(&self) -> StatusCode {
        match self {
            WhepError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            WhepError::BadOffer(_) => StatusCode::BAD_REQUEST,
            WhepError::StreamNotFound(_) | WhepError::SessionNotFound { .. } => {
                StatusCode::NOT_FOUND
            }
            WhepError::NoTracks(_) => StatusCode::CONFLICT,
            WhepError::NoCommonCodec(_) => StatusCode::NOT_ACCEPTABLE,
            WhepError::Capacity(_) => StatusCode::SERVICE_UNAVAILABLE,
            WhepError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let error = match self {
            WhepError::UnsupportedMediaType(_) => "unsupported_media_type",
            WhepError::BadOffer(_) => "bad_request",
            WhepError::StreamNotFound(_) | WhepError::SessionNotFound { .. } => "not_found",
            WhepError::NoTracks(_) => "conflict",
            WhepError::NoCommonCodec(_) => "not_acceptable",
            WhepError::Capacity(_) => "unavailable",
            WhepError::Internal(_) => "internal",
        };
        HttpResponse::build(self.status_code()).json(ErrorBody {
            error,
            message: self.to_string(),
        })
    }
}

/// With `api_keys` set, WHEP needs a key with read scope, or a token for the stream from
/// `/stream/token` (`Authorization: Bearer`, as RFC 9725 §4.2 has it, or `X-Api-Key`);
/// preflights do not.
fn check_key(req: &HttpRequest, state: &AppState, stream: &str) -> Result<(), ApiError> {
    state
        .auth
        .require_player(req.headers(), None, stream, super::auth::unix_now())
}

/// Start playing a stream: the browser's SDP offer in, the SDP answer out.
#[utoipa::path(post, path = "/whep/{stream}",
    params(("stream" = String, Path, description = "Stream name (e.g. a call's toStream)")),
    request_body(content = String, content_type = "application/sdp", description = "SDP offer (recvonly audio and/or video)"),
    responses(
        (status = 201, description = "SDP answer; the session is at Location", body = String, content_type = "application/sdp",
            headers(("Location" = String, description = "/whep/{stream}/{session}: DELETE it to stop"))),
        (status = 400, description = "The body is not a usable SDP offer", body = ErrorBody),
        (status = 401, description = "api_keys is set and the request has neither a key with read scope nor a token for this stream", body = ErrorBody),
        (status = 404, description = "Unknown stream", body = ErrorBody),
        (status = 406, description = "No codec in common; the message lists the stream's and the offer's", body = ErrorBody),
        (status = 409, description = "The stream has no media yet (call not answered within webrtc_track_wait_s)", body = ErrorBody),
        (status = 415, description = "Content-Type is not application/sdp", body = ErrorBody),
        (status = 503, description = "Too many players or no free UDP port", body = ErrorBody)))]
pub async fn offer(
    req: HttpRequest,
    state: web::Data<AppState>,
    stream: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, actix_web::Error> {
    check_key(&req, &state, &stream)?;
    let ctype = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = ctype.split(';').next().unwrap_or("").trim();
    if !essence.eq_ignore_ascii_case("application/sdp") {
        return Err(WhepError::UnsupportedMediaType(format!(
            "Content-Type must be application/sdp, got {:?}",
            ctype.chars().take(80).collect::<String>()
        ))
        .into());
    }
    let sdp = std::str::from_utf8(&body)
        .map_err(|e| WhepError::BadOffer(format!("the body is not UTF-8 text: {e}")))?
        .to_string();
    // Run to completion even if the player hangs up mid-request: a half-built peer
    // connection must not be dropped unclosed. An answered session nobody reads is removed
    // by webrtc_connect_timeout_s.
    let whep = state.whep.clone();
    let name = stream.clone();
    let answer = state
        .core
        .spawn(async move { whep.create(&name, &sdp).await })
        .await
        .map_err(|e| WhepError::Internal(format!("WHEP task: {e}")))??;
    let location = format!("/whep/{}/{}", stream.as_str(), answer.session);
    let mut resp = HttpResponse::Created();
    resp.content_type("application/sdp")
        .insert_header((header::LOCATION, location))
        .insert_header((header::ETAG, format!("\"{}\"", answer.session)));
    for link in ice_links(&state.whep.ice_servers()) {
        resp.append_header((header::LINK, link));
    }
    Ok(resp.body(answer.sdp))
}

/// RFC 9725 §4.4: ICE servers as `Link: <url>; rel="ice-server"` headers.
fn ice_links(servers: &[IceServer]) -> Vec<HeaderValue> {
    let mut out = Vec::new();
    for s in servers {
        for url in &s.urls {
            let mut v = format!("<{url}>; rel=\"ice-server\"");
            if let (Some(u), Some(c)) = (&s.username, &s.credential) {
                v += &format!(
                    "; username=\"{u}\"; credential=\"{c}\"; credential-type=\"password\""
                );
            }
            if let Ok(h) = HeaderValue::from_str(&v) {
                out.push(h);
            }
        }
    }
    out
}

/// Stop playing: ends the session and frees its resources.
#[utoipa::path(delete, path = "/whep/{stream}/{session}",
    params(("stream" = String, Path), ("session" = String, Path, description = "From the Location of the POST")),
    responses(
        (status = 200, description = "Session ended"),
        (status = 401, description = "API key required", body = ErrorBody),
        (status = 404, description = "No such session on this stream", body = ErrorBody)))]
pub async fn delete(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, actix_web::Error> {
    check_key(&req, &state, &path.0)?;
    let (stream, session) = path.into_inner();
    state.whep.delete(&stream, &session)?;
    Ok(HttpResponse::Ok().finish())
}

/// Trickle ICE and ICE restarts (PATCH) are not supported: the answer carries every
/// candidate. RFC 9725 §4.3.1 lets a server answer 405.
async fn patch() -> HttpResponse {
    HttpResponse::MethodNotAllowed()
        .insert_header((header::ALLOW, "POST, DELETE, OPTIONS"))
        .json(ErrorBody {
            error: "method_not_allowed",
            message: "trickle ICE (PATCH) is not supported: the answer has every candidate".into(),
        })
}

async fn preflight() -> HttpResponse {
    HttpResponse::NoContent()
        .insert_header((
            "Access-Control-Allow-Methods",
            "POST, DELETE, PATCH, OPTIONS",
        ))
        .insert_header((
            "Access-Control-Allow-Headers",
            "Content-Type, Authorization, X-Api-Key, If-Match",
        ))
        .insert_header(("Access-Control-Max-Age", "86400"))
        .insert_header(("Accept-Post", "application/sdp"))
        .finish()
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebrtcConfigBody {
    /// As `new RTCPeerConnection({iceServers})` takes them (from `webrtc_ice_servers`).
    pub ice_servers: Vec<IceServer>,
}

/// The ICE servers for players (empty: host candidates only).
#[utoipa::path(get, path = "/webrtc/config", responses((status = 200, body = WebrtcConfigBody)))]
pub async fn config(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(WebrtcConfigBody {
        ice_servers: state.whep.ice_servers(),
    })
}
