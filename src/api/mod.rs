//! The REST API (actix-web) under `/rest-api`, WCS-compatible where WCS has the method, plus
//! `/health`, `/openapi.json` and the static `web/` pages. Handlers only translate between
//! JSON and the call manager / registry; they hold no state of their own.
pub mod auth;
pub mod call_request;
pub mod call_schema;
pub mod calls;
pub mod error;
pub mod examples;
pub mod hls;
pub mod inject;
pub mod json;
pub mod jsonrpc;
pub mod media_exchange;
pub mod media_streams;
pub mod methods;
pub mod openapi;
pub mod pages;
pub mod pull;
pub mod push;
pub mod recording;
pub mod siprec;
pub mod sse;
pub mod streams;
pub mod whep;

use actix_web::body::EitherBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{web, Error, HttpResponse, ResponseError};
use std::sync::Arc;

use self::error::ApiError;
use crate::call::manager::CallManager;
use crate::config::Config;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub calls: CallManager,
    pub cfg: Arc<Config>,
    /// WHEP players (`/whep/*`).
    pub whep: crate::webrtc::WhepService,
    /// HLS output (`/hls/*`).
    pub hls: crate::hls::HlsService,
    /// RTSP pulls (`/pull/*`).
    pub pulls: crate::rtsp::PullManager,
    /// RTMP pushes (`/push/*`).
    pub pushes: crate::rtmp::PushManager,
    /// Media streams to WebSocket servers (`/call/stream/*`).
    pub media_streams: crate::mediastream::MediaStreamManager,
    /// Sounds and streams injected into call legs (`/call/inject*`).
    pub injections: crate::exchange::InjectManager,
    /// Media exchanges (`/media/*`): forks, fetches, listen-in, barge-in.
    pub exchanges: crate::exchange::ExchangeManager,
    /// API keys, scopes, stream tokens, rate limits, CORS.
    pub auth: Arc<auth::Auth>,
    /// The event bus, for `/ws` notifications and `/events`.
    pub bus: crate::events::EventBus,
    /// `/metrics`.
    pub metrics: crate::metrics::Metrics,
    /// The gateway's own runtime. Actix runs handlers on per-worker runtimes; sockets and
    /// tasks created there would be driven by the HTTP worker threads (cross-thread wake-ups
    /// per RTP packet showed in profiles), so media set-up runs here instead.
    pub core: tokio::runtime::Handle,
}

impl AppState {
    /// Runs `fut` on the core runtime and waits for it.
    pub async fn on_core<T, F>(&self, fut: F) -> Result<T, ApiError>
    where
        F: std::future::Future<Output = Result<T, ApiError>> + Send + 'static,
        T: Send + 'static,
    {
        self.core
            .spawn(fut)
            .await
            .map_err(|e| ApiError::Internal(format!("request task failed: {e}")))?
    }
}

/// Registers every route on an actix `App`.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/rest-api")
            .wrap(actix_web::middleware::from_fn(require_api_key))
            .wrap(actix_web::middleware::from_fn(time_limit))
            .wrap(too_large())
            .wrap(actix_web::middleware::from_fn(cors))
            .configure(methods::routes)
            .configure(calls::routes)
            .configure(streams::routes)
            .configure(siprec::routes)
            .configure(recording::routes)
            .configure(push::routes)
            .configure(pull::routes)
            .configure(media_streams::routes),
    )
    .service(
        web::resource("/recordings/{file}")
            .wrap(actix_web::middleware::from_fn(require_api_key))
            .route(web::get().to(recording::download)),
    )
    .route("/health", web::get().to(streams::health))
    .service(
        web::resource("/metrics")
            .wrap(actix_web::middleware::from_fn(require_api_key))
            .wrap(actix_web::middleware::from_fn(cors))
            .route(web::get().to(metrics)),
    )
    .route("/openapi.json", web::get().to(openapi::serve))
    // The API page: Swagger UI from files built into the binary (no CDN, no validator
    // service), reading the same document.
    .route(
        "/docs",
        web::get().to(|| async {
            HttpResponse::PermanentRedirect()
                .insert_header(("Location", "/docs/"))
                .finish()
        }),
    )
    .service(
        utoipa_swagger_ui::SwaggerUi::new("/docs/{_:.*}")
            .url("/docs/openapi.json", openapi::api())
            .config(
                utoipa_swagger_ui::Config::from("/docs/openapi.json")
                    .validator_url("none")
                    .try_it_out_enabled(true),
            ),
    )
    .configure(jsonrpc::routes)
    .configure(sse::routes)
    .configure(whep::routes)
    .configure(hls::routes)
    .configure(pages::routes)
    .app_data(
        web::JsonConfig::default()
            .error_handler(|err, _| ApiError::BadRequest(format!("malformed JSON: {err}")).into()),
    )
    .default_service(web::to(not_found));
}

/// Prometheus metrics in the OpenMetrics text format (families `sipstream_*`; see
/// `src/metrics`). Needs an API key when `api_keys` is set.
#[utoipa::path(get, path = "/metrics", responses(
    (status = 200, description = "OpenMetrics text (application/openmetrics-text)", body = String),
    (status = 401, description = "api_keys is set and the request has no valid key", body = error::ErrorBody)))]
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    match state.metrics.encode() {
        Ok(text) => HttpResponse::Ok()
            .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
            .body(text),
        Err(e) => ApiError::Internal(format!("metrics: {e}")).error_response(),
    }
}

async fn not_found(req: actix_web::HttpRequest) -> HttpResponse {
    ApiError::NotFound(format!("no such endpoint: {} {}", req.method(), req.path()))
        .error_response()
}

/// With `api_keys` set, every request through here needs a key (`Authorization: Bearer KEY`
/// or `X-Api-Key: KEY`) whose scope covers it ([`auth::required_scope`]): 401 without one,
/// 403 when the scope is too small; `/call/startup` is also rate-limited per key (429). The
/// caller goes into the request's extensions for the handlers (JSON-RPC).
pub(crate) async fn require_api_key(
    req: ServiceRequest,
    next: Next<impl actix_web::body::MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<impl actix_web::body::MessageBody>>, Error> {
    use actix_web::HttpMessage as _;
    let Some(state) = req.app_data::<web::Data<AppState>>().cloned() else {
        return next
            .call(req)
            .await
            .map(ServiceResponse::map_into_left_body);
    };
    let need = auth::required_scope(req.method().as_str(), req.path());
    let checked = state.auth.require(req.headers(), need).and_then(|caller| {
        if req.method() == actix_web::http::Method::POST && req.path() == "/rest-api/call/startup" {
            state.auth.call_startup(caller, std::time::Instant::now())?;
        }
        Ok(caller)
    });
    match checked {
        Ok(caller) => {
            req.extensions_mut().insert(caller);
            next.call(req)
                .await
                .map(ServiceResponse::map_into_left_body)
        }
        Err(e) => {
            let resp = e.error_response();
            Ok(req.into_response(resp).map_into_right_body())
        }
    }
}

/// Answers a request that takes longer than `api_request_timeout_s` with 503 (the work it
/// started, e.g. a call being placed, may still complete: look it up).
pub(crate) async fn time_limit(
    req: ServiceRequest,
    next: Next<impl actix_web::body::MessageBody + 'static>,
) -> Result<ServiceResponse<impl actix_web::body::MessageBody>, Error> {
    let limit = req
        .app_data::<web::Data<AppState>>()
        .map_or(std::time::Duration::from_secs(30), |s| {
            s.cfg.api_request_timeout
        });
    // No clone of the request is kept (actix needs it unshared): a timeout is an error that
    // actix turns into the JSON answer.
    match tokio::time::timeout(limit, next.call(req)).await {
        Ok(r) => r,
        Err(_) => Err(ApiError::Unavailable(format!(
            "no answer within {} s (api_request_timeout_s); what the request started may \
             still complete",
            limit.as_secs()
        ))
        .into()),
    }
}

/// A body over `api_max_body_kb` (actix's payload limit answers 413 in plain text): the
/// JSON error body naming the setting.
pub(crate) fn too_large<B: 'static>() -> actix_web::middleware::ErrorHandlers<B> {
    actix_web::middleware::ErrorHandlers::new().handler(
        actix_web::http::StatusCode::PAYLOAD_TOO_LARGE,
        |res: ServiceResponse<B>| {
            let limit = res
                .request()
                .app_data::<web::Data<AppState>>()
                .map_or(256, |s| s.cfg.api_max_body_kb);
            let (req, _) = res.into_parts();
            let resp = ApiError::TooLarge(format!(
                "the request body is larger than {limit} KiB (api_max_body_kb)"
            ))
            .error_response();
            Ok(actix_web::middleware::ErrorHandlerResponse::Response(
                ServiceResponse::new(req, resp).map_into_right_body(),
            ))
        },
    )
}

/// CORS for browsers on the origins of `api_cors_origins`: the allowed origin echoed on
/// answers, and preflights (`OPTIONS`) answered here, before any key is asked for.
pub(crate) async fn cors(
    req: ServiceRequest,
    next: Next<impl actix_web::body::MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<impl actix_web::body::MessageBody>>, Error> {
    let allowed = req
        .headers()
        .get("origin")
        .and_then(|v| v.to_str().ok())
        .zip(req.app_data::<web::Data<AppState>>())
        .and_then(|(origin, state)| state.auth.cors_origin(origin));
    let Some(allowed) = allowed else {
        return next
            .call(req)
            .await
            .map(ServiceResponse::map_into_left_body);
    };
    if req.method() == actix_web::http::Method::OPTIONS {
        let resp = HttpResponse::NoContent()
            .insert_header(("Access-Control-Allow-Origin", allowed))
            .insert_header(("Access-Control-Allow-Methods", "GET, POST, OPTIONS"))
            .insert_header((
                "Access-Control-Allow-Headers",
                "authorization, content-type, x-api-key",
            ))
            .insert_header(("Access-Control-Max-Age", "86400"))
            .insert_header(("Vary", "Origin"))
            .finish();
        return Ok(req.into_response(resp).map_into_right_body());
    }
    let mut res = next.call(req).await?;
    let h = res.headers_mut();
    if let Ok(v) = actix_web::http::header::HeaderValue::from_str(&allowed) {
        h.insert(actix_web::http::header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
    }
    h.insert(
        actix_web::http::header::VARY,
        actix_web::http::header::HeaderValue::from_static("Origin"),
    );
    Ok(res.map_into_left_body())
}

pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
