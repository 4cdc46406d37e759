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
        super::calls::answer,
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
        super::streams::token,
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
    add_examples(&mut doc);
    doc
}

/// Puts [`super::examples`] on every operation: the request body's, and the success
/// answer's (a list of one where the answer is a list).
fn add_examples(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::RefOr;
    for (path, item) in doc.paths.paths.iter_mut() {
        let ops = [
            ("get", &mut item.get),
            ("post", &mut item.post),
            ("delete", &mut item.delete),
        ];
        for (method, op) in ops {
            let Some(op) = op.as_mut() else { continue };
            if let Some(RefOr::T(body)) = op.request_body.as_mut() {
                for (ctype, content) in body.content.iter_mut() {
                    if let RefOr::T(c) = content {
                        if c.example.is_none() {
                            c.example = example_for(method, path, ctype, &c.schema, true);
                        }
                    }
                }
            }
            for (status, resp) in op.responses.responses.iter_mut() {
                let RefOr::T(resp) = resp else { continue };
                if !status.starts_with('2') {
                    continue;
                }
                for (ctype, content) in resp.content.iter_mut() {
                    if let RefOr::T(c) = content {
                        if c.example.is_none() {
                            c.example = example_for(method, path, ctype, &c.schema, false);
                        }
                    }
                }
            }
        }
    }
}

fn example_for(
    method: &str,
    path: &str,
    ctype: &str,
    schema: &Option<utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>>,
    request: bool,
) -> Option<serde_json::Value> {
    if ctype != "application/json" {
        return super::examples::text_example(method, path, request).map(serde_json::Value::from);
    }
    // The schema as JSON: a `$ref`, a list of one, or `oneOf` [ref, null].
    let schema = serde_json::to_value(schema.as_ref()?).ok()?;
    let name = |s: &serde_json::Value| {
        s["$ref"]
            .as_str()
            .or_else(|| s["oneOf"][0]["$ref"].as_str())
            .and_then(|r| r.rsplit('/').next())
            .map(str::to_owned)
    };
    if schema["type"] == "array" {
        let one = super::examples::schema_example(&name(&schema["items"])?)?;
        return Some(serde_json::Value::Array(vec![one]));
    }
    super::examples::schema_example(&name(&schema)?)
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
    use serde_json::{json, Value};

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

    fn operations(doc: &Value) -> Vec<(String, String, Value)> {
        let mut out = Vec::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                out.push((method.clone(), path.clone(), op.clone()));
            }
        }
        out
    }

    /// The example and schema of each body: (where, schema, example or null).
    fn bodies(doc: &Value) -> Vec<(String, Value, Value)> {
        let mut out = Vec::new();
        for (method, path, op) in operations(doc) {
            for (ctype, c) in op["requestBody"]["content"]
                .as_object()
                .into_iter()
                .flatten()
            {
                let at = format!("{method} {path} request {ctype}");
                out.push((at, c["schema"].clone(), c["example"].clone()));
            }
            for (status, r) in op["responses"].as_object().unwrap() {
                if !status.starts_with('2') {
                    continue;
                }
                for (ctype, c) in r["content"].as_object().into_iter().flatten() {
                    let at = format!("{method} {path} {status} {ctype}");
                    out.push((at, c["schema"].clone(), c["example"].clone()));
                }
            }
        }
        out
    }

    #[test]
    fn every_operation_has_examples() {
        let doc: Value = serde_json::from_str(&super::document()).unwrap();
        let missing: Vec<String> = bodies(&doc)
            .into_iter()
            .filter(|(_, _, ex)| ex.is_null())
            .map(|(at, _, _)| at)
            .collect();
        assert!(missing.is_empty(), "no example: {missing:#?}");
        assert!(bodies(&doc).len() > 80);
    }

    /// The schema a `$ref` names (and its name), or the schema itself.
    fn deref<'a>(doc: &'a Value, schema: &'a Value) -> (&'a Value, Option<&'a str>) {
        match schema["$ref"].as_str().and_then(|r| r.rsplit('/').next()) {
            Some(name) => (&doc["components"]["schemas"][name], Some(name)),
            None => (schema, None),
        }
    }

    /// A small JSON Schema check, enough for what utoipa writes: $ref, allOf, oneOf, type
    /// (or a list of types), enum, required, properties (no unknown ones), items.
    fn check(doc: &Value, schema: &Value, v: &Value, at: &str) -> Result<(), String> {
        if let (target, Some(name)) = deref(doc, schema) {
            return check(doc, target, v, &format!("{at}<{name}>"));
        }
        if let Some(one_of) = schema["oneOf"].as_array() {
            return if one_of.iter().any(|s| check(doc, s, v, at).is_ok()) {
                Ok(())
            } else {
                Err(format!("{at}: {v} matches none of oneOf"))
            };
        }
        if let Some(all) = schema["allOf"].as_array() {
            for s in all {
                check_fields(doc, s, v, at, false)?;
            }
            return known_fields(doc, schema, v, at);
        }
        check_fields(doc, schema, v, at, true)
    }

    fn check_fields(
        doc: &Value,
        schema: &Value,
        v: &Value,
        at: &str,
        closed: bool,
    ) -> Result<(), String> {
        if let (target, Some(_)) = deref(doc, schema) {
            return check_fields(doc, target, v, at, closed);
        }
        let types: Vec<&str> = match &schema["type"] {
            Value::String(t) => vec![t.as_str()],
            Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
            _ => vec![],
        };
        let fits = |t: &str| match t {
            "string" => v.is_string(),
            "integer" => v.is_i64() || v.is_u64(),
            "number" => v.is_number(),
            "boolean" => v.is_boolean(),
            "object" => v.is_object(),
            "array" => v.is_array(),
            "null" => v.is_null(),
            _ => true,
        };
        if !types.is_empty() && !types.iter().any(|t| fits(t)) {
            return Err(format!("{at}: {v} is not {types:?}"));
        }
        if let Some(e) = schema["enum"].as_array() {
            if !v.is_null() && !e.contains(v) {
                return Err(format!("{at}: {v} not in {e:?}"));
            }
        }
        if let Some(o) = v.as_object() {
            for r in schema["required"].as_array().into_iter().flatten() {
                if !o.contains_key(r.as_str().unwrap()) {
                    return Err(format!("{at}: required {r} missing"));
                }
            }
            let props = schema["properties"].as_object();
            for (k, fv) in o {
                match props.and_then(|p| p.get(k)) {
                    Some(ps) => check(doc, ps, fv, &format!("{at}.{k}"))?,
                    None if closed
                        && props.is_some()
                        && schema.get("additionalProperties").is_none() =>
                    {
                        return Err(format!("{at}: unknown field {k}"))
                    }
                    None => {}
                }
            }
        }
        if let (Some(items), Some(a)) = (schema.get("items"), v.as_array()) {
            for (i, x) in a.iter().enumerate() {
                check(doc, items, x, &format!("{at}[{i}]"))?;
            }
        }
        Ok(())
    }

    /// Every field of `v` is a property of some part of the allOf.
    fn known_fields(doc: &Value, schema: &Value, v: &Value, at: &str) -> Result<(), String> {
        let mut known = std::collections::BTreeSet::new();
        for s in schema["allOf"].as_array().into_iter().flatten() {
            let (s, _) = deref(doc, s);
            known.extend(
                s["properties"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(k, _)| k.clone()),
            );
        }
        for k in v.as_object().into_iter().flatten().map(|(k, _)| k) {
            if !known.contains(k) {
                return Err(format!("{at}: unknown field {k}"));
            }
        }
        Ok(())
    }

    #[test]
    fn examples_match_their_schemas() {
        let doc: Value = serde_json::from_str(&super::document()).unwrap();
        for (at, schema, ex) in bodies(&doc) {
            if let Err(e) = check(&doc, &schema, &ex, &at) {
                panic!("{e}");
            }
        }
        // The checker itself catches a wrong example.
        let bad = json!({"callId": 5});
        assert!(check(
            &doc,
            &json!({"$ref": "#/components/schemas/CallIdRequest"}),
            &bad,
            "x"
        )
        .is_err());
        let bad = json!({"callId": "c1", "colour": "red"});
        assert!(check(
            &doc,
            &json!({"$ref": "#/components/schemas/CallIdRequest"}),
            &bad,
            "x"
        )
        .is_err());
        let bad = json!({"status": "SINGING"});
        assert!(check(
            &doc,
            &json!({"$ref": "#/components/schemas/PushStatus"}),
            &bad["status"],
            "x"
        )
        .is_err());
    }

    /// Each request example is accepted by the parser its handler uses.
    #[test]
    fn request_examples_parse_as_the_handlers_parse_them() {
        use crate::api::json::parse_body;
        let doc: Value = serde_json::from_str(&super::document()).unwrap();
        let mut parsed = 0;
        for (at, schema, ex) in bodies(&doc) {
            if !at.contains(" request application/json") {
                continue;
            }
            let name = schema["$ref"]
                .as_str()
                .or_else(|| schema["oneOf"][0]["$ref"].as_str())
                .and_then(|r| r.rsplit('/').next())
                .unwrap_or_else(|| panic!("{at}: {schema}"));
            let b = &actix_web::web::Bytes::from(ex.to_string());
            let r: Result<(), crate::error::RequestError> = match name {
                "CallStartupRequest" => {
                    parse_body::<crate::api::call_request::CallStartupRequest>(b).map(drop)
                }
                "CallIdRequest" => parse_body::<crate::api::calls::CallIdRequest>(b).map(drop),
                "CallFilter" => parse_body::<crate::api::calls::CallFilter>(b).map(drop),
                "HoldRequest" => parse_body::<crate::api::calls::HoldRequest>(b).map(drop),
                "DtmfRequest" => parse_body::<crate::api::calls::DtmfRequest>(b).map(drop),
                "TransferRequest" => parse_body::<crate::api::calls::TransferRequest>(b).map(drop),
                "InjectSoundRequest" => {
                    parse_body::<crate::api::inject::InjectSoundRequest>(b).map(drop)
                }
                "InjectStreamRequest" => {
                    parse_body::<crate::api::inject::InjectStreamRequest>(b).map(drop)
                }
                "InjectionFilter" => parse_body::<crate::api::inject::InjectionFilter>(b).map(drop),
                "MediaStreamStartupRequest" => {
                    parse_body::<crate::api::media_streams::MediaStreamStartupRequest>(b).map(drop)
                }
                "MediaStreamFilter" => {
                    parse_body::<crate::api::media_streams::MediaStreamFilter>(b).map(drop)
                }
                "MediaStreamStopRequest" => {
                    parse_body::<crate::api::media_streams::MediaStreamStopRequest>(b).map(drop)
                }
                "MediaExchangeRequest" => {
                    parse_body::<crate::api::media_exchange::MediaExchangeRequest>(b).map(drop)
                }
                "MediaFindRequest" => {
                    parse_body::<crate::api::media_exchange::MediaFindRequest>(b).map(drop)
                }
                "MediaTerminateRequest" => {
                    parse_body::<crate::api::media_exchange::MediaTerminateRequest>(b).map(drop)
                }
                "PushStartupRequest" => {
                    parse_body::<crate::api::push::PushStartupRequest>(b).map(drop)
                }
                "PushFilter" => parse_body::<crate::api::push::PushFilter>(b).map(drop),
                "MediaSessionIdRequest" => {
                    parse_body::<crate::api::push::MediaSessionIdRequest>(b).map(drop)
                }
                "PullStartupRequest" => {
                    parse_body::<crate::api::pull::PullStartupRequest>(b).map(drop)
                }
                "PullKey" => parse_body::<crate::api::pull::PullKey>(b).map(drop),
                "SiprecStartRequest" => {
                    parse_body::<crate::siprec::SiprecStartRequest>(b).map(drop)
                }
                "SiprecControlRequest" => {
                    parse_body::<crate::siprec::SiprecControlRequest>(b).map(drop)
                }
                "StreamName" => parse_body::<crate::api::streams::StreamName>(b).map(drop),
                "RecordTarget" => parse_body::<crate::api::recording::RecordTarget>(b).map(drop),
                "TokenRequest" => parse_body::<crate::api::streams::TokenRequest>(b).map(drop),
                other => panic!("{at}: no parser named for {other}: add it here"),
            };
            if let Err(e) = r {
                panic!("{at}: the example {ex} is refused: {e}");
            }
            parsed += 1;
        }
        assert!(parsed > 30, "{parsed}");
    }
}
