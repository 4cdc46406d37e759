//! HLS over HTTP: `GET /hls/{stream}/{file}` serves a stream's live playlist (`index.m3u8`,
//! with the LL-HLS directives `_HLS_msn` / `_HLS_part`), its init segment (`init.mp4`),
//! segments (`seg<N>.m4s`) and parts (`part<N>.<I>.m4s`). Open to any origin, like WHEP
//! (players on other pages use it); with `api_keys`, a key with read scope or a stream token
//! (`?token=`, which the playlist's URIs then carry) is needed. The packaging lives in
//! [`crate::hls`].

use actix_web::http::StatusCode;
use actix_web::middleware::DefaultHeaders;
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};

use super::error::{ApiError, ErrorBody};
use super::AppState;
use crate::hls::HlsError;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/hls")
            .wrap(actix_web::middleware::from_fn(super::time_limit))
            .wrap(DefaultHeaders::new().add(("Access-Control-Allow-Origin", "*")))
            .route("/{stream}/{file}", web::get().to(get)),
    );
}

/// A stream as HLS: the playlist, the init segment, a segment or a part.
///
/// The first request for a stream starts its HLS output (one reader of the stream for all
/// players) and waits for the first segment; without a request for `hls_idle_timeout_s`
/// it stops. Audio is Opus (G.711 is transcoded), video H264, both in fMP4.
#[utoipa::path(get, path = "/hls/{stream}/{file}",
    params(
        ("stream" = String, Path, description = "Stream name", example = "call-1"),
        ("file" = String, Path, description = "index.m3u8, init.mp4, seg<N>.m4s or part<N>.<I>.m4s", example = "index.m3u8"),
        ("_HLS_msn" = Option<u64>, Query, description = "Playlist only: hold the answer until segment N exists (LL-HLS blocking reload)"),
        ("_HLS_part" = Option<u64>, Query, description = "Playlist only, with _HLS_msn: until part I of segment N exists"),
        ("token" = Option<String>, Query, description = "A stream token from /stream/token (when api_keys is set and no key header is sent)"),
    ),
    responses(
        (status = 200, description = "The playlist (application/vnd.apple.mpegurl) or fMP4 bytes (video/mp4)", body = String,
            example = json!("#EXTM3U\n#EXT-X-VERSION:9\n#EXT-X-TARGETDURATION:4\n#EXT-X-MAP:URI=\"init.mp4\"\n#EXTINF:2.00000,\nseg0.m4s\n")),
        (status = 400, description = "A malformed _HLS_msn/_HLS_part, or one too far ahead", body = ErrorBody),
        (status = 401, description = "api_keys is set and there is neither a key with read scope nor a token for this stream", body = ErrorBody),
        (status = 404, description = "No such stream, file name, or segment (too old)", body = ErrorBody),
        (status = 503, description = "No media for a first segment yet, or hls_max_streams reached", body = ErrorBody),
    ))]
pub async fn get(
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
    req: HttpRequest,
) -> HttpResponse {
    let (stream, file) = path.into_inner();
    let query = req.query_string().to_owned();
    let token = form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.into_owned());
    if let Err(e) = state.auth.require_player(
        req.headers(),
        token.as_deref(),
        &stream,
        super::auth::unix_now(),
    ) {
        return e.error_response();
    }
    // A token in the query goes on with every URI of the playlist (players only follow
    // the URIs they are given).
    let uri_query = token
        .map(|t| {
            let t: String = form_urlencoded::byte_serialize(t.as_bytes()).collect();
            format!("?token={t}")
        })
        .unwrap_or_default();
    let hls = state.hls.clone();
    let r = state
        .on_core(async move { Ok(hls.get(&stream, &file, &query, &uri_query).await) })
        .await;
    match r {
        Ok(Ok(f)) => {
            let cache = if f.content_type.starts_with("application/") {
                "no-cache"
            } else {
                "max-age=60"
            };
            HttpResponse::Ok()
                .content_type(f.content_type)
                .insert_header(("Cache-Control", cache))
                .body(f.bytes)
        }
        Ok(Err(e)) => error(e),
        Err(e) => e.error_response(),
    }
}

fn error(e: HlsError) -> HttpResponse {
    let api = match &e {
        HlsError::NoStream(_) | HlsError::NoFile(..) | HlsError::BadName(_) => {
            ApiError::NotFound(e.to_string())
        }
        HlsError::TooFar(_) | HlsError::BadQuery(_) => ApiError::BadRequest(e.to_string()),
        HlsError::NoMediaYet(_) | HlsError::Busy(_) | HlsError::StreamFull(_) => {
            ApiError::Unavailable(e.to_string())
        }
    };
    let mut resp = api.error_response();
    if resp.status() == StatusCode::SERVICE_UNAVAILABLE {
        resp.headers_mut().insert(
            actix_web::http::header::RETRY_AFTER,
            actix_web::http::header::HeaderValue::from_static("2"),
        );
    }
    resp
}
