//! The OpenAPI document, generated from the handlers by utoipa. `openapi/openapi.json` is the
//! checked-in copy; a test fails when it is stale (regenerate with
//! `UPDATE_OPENAPI=1 cargo test --lib openapi`).

use actix_web::HttpResponse;
use utoipa::OpenApi;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "sipstream",
        description = "SIP calls as named media streams (WCS-compatible REST)"
    ),
    paths(
        super::calls::startup,
        super::calls::terminate,
        super::calls::hold,
        super::calls::unhold,
        super::calls::send_dtmf,
        super::calls::transfer,
        super::calls::find,
        super::calls::find_all,
        super::inject::inject_sound,
        super::inject::inject_stream_startup,
        super::inject::inject_stream_terminate,
        super::inject::stop,
        super::inject::find,
        super::media_exchange::send_to_uri,
        super::media_exchange::fetch_from_uri,
        super::media_exchange::terminate,
        super::media_exchange::pause,
        super::media_exchange::resume,
        super::media_exchange::find,
        super::media_streams::startup,
        super::media_streams::stop,
        super::media_streams::find,
        super::media_streams::find_all,
        super::streams::find,
        super::streams::find_all,
        super::streams::health,
        super::metrics,
        super::recording::start,
        super::recording::stop,
        super::recording::find_all,
        super::recording::download,
        super::siprec::start,
        super::siprec::pause,
        super::siprec::resume,
        super::siprec::stop,
        super::siprec::find,
        super::whep::offer,
        super::whep::delete,
        super::whep::config,
        super::hls::get,
        super::push::startup,
        super::push::terminate,
        super::push::find,
        super::push::find_all,
        super::pull::startup,
        super::pull::terminate,
        super::pull::find,
        super::pull::find_all,
    )
)]
pub struct ApiDoc;

/// The document, each operation tagged by what it is about (`calls`, `media exchange`...)
/// instead of the handler's module path that utoipa derives (`super::calls`).
pub fn api() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    for item in doc.paths.paths.values_mut() {
        let ops = [
            &mut item.get,
            &mut item.post,
            &mut item.put,
            &mut item.delete,
            &mut item.options,
            &mut item.head,
            &mut item.patch,
        ];
        for op in ops.into_iter().flatten() {
            if let Some(tags) = op.tags.as_mut() {
                for t in tags.iter_mut() {
                    *t = tag_name(t).to_string();
                }
            }
        }
    }
    doc
}

fn tag_name(module: &str) -> &str {
    match module.rsplit("::").next().unwrap_or(module) {
        "super" | "crate" | "api" => "gateway",
        "calls" | "call_request" => "calls",
        "media_exchange" => "media exchange",
        "media_streams" => "voice agents (media streams)",
        "inject" => "injection",
        "recording" => "recording",
        "streams" => "streams",
        "push" => "rtmp push",
        "pull" => "rtsp pull",
        "siprec" => "siprec",
        "whep" => "webrtc (whep)",
        "hls" => "hls",
        other => other,
    }
}

pub fn document() -> String {
    api()
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

pub async fn serve() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(document())
}

#[cfg(test)]
mod tests {
    #[test]
    fn openapi_json_is_current() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi/openapi.json");
        let doc = super::document() + "\n";
        if std::env::var_os("UPDATE_OPENAPI").is_some() {
            std::fs::write(&path, &doc).expect("write openapi.json");
        }
        let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            checked_in == doc,
            "openapi/openapi.json is stale: run `UPDATE_OPENAPI=1 cargo test --lib openapi` and commit it"
        );
    }

    /// Every method of the table (REST POST and JSON-RPC) is documented, aliases aside.
    #[test]
    fn every_method_is_in_the_openapi_document() {
        let doc: serde_json::Value = serde_json::from_str(&super::document()).unwrap();
        let aliases = [
            "/recorder/startup",
            "/recorder/terminate",
            "/media/fork_to_uri",
            "/media/exchange_from_uri",
            "/media/fork_pause",
            "/media/fork_resume",
        ];
        for m in crate::api::methods::METHODS {
            if aliases.contains(&m.path) {
                continue;
            }
            let path = format!("/rest-api{}", m.path);
            assert!(
                doc["paths"][&path]["post"].is_object(),
                "{path} is a method but not in openapi.json"
            );
        }
    }
}
