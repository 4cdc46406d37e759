//! REST and JSON-RPC bodies: the bytes through `parse_body` into every request type the
//! handlers read, then the checks that need no running gateway (call startup into a call
//! spec, media-stream options, SIPREC start, the push and pull URLs); and the same bytes as
//! a JSON-RPC frame (request checks, method resolution, subscriptions), whose REST body goes
//! through the same parsers.
//!
//! Properties: nothing panics; every error is a 400; a validated call spec has a valid id and
//! stream name, a callee URI and headers without CR/LF, and never shows its password.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;
use serde_json::Value;
use sipstream::api::call_request::CallStartupRequest;
use sipstream::api::error::ApiError;
use sipstream::api::json::parse_body;
use sipstream::api::jsonrpc::{parse_request, resolve, Filter, Target};
use sipstream::api::{
    calls, inject, media_exchange, media_streams, pull, push, recording, streams,
};
use sipstream::ids::is_valid_id;
use sipstream::rtmp::url::RtmpUrl;
use sipstream::rtsp::source::PullUrl;
use sipstream::rtsp::PullTransport;
use sipstream::siprec::{SiprecControlRequest, SiprecStartRequest};

/// Parses `body` as `T`; an error must be a 400 that says something.
fn parse<T: DeserializeOwned>(body: &Bytes) -> Option<T> {
    match parse_body::<T>(body) {
        Ok(t) => Some(t),
        Err(e) => {
            assert!(matches!(e, ApiError::BadRequest(_)), "{e:?}");
            assert!(!e.to_string().is_empty());
            None
        }
    }
}

fn bodies(body: &Bytes) {
    if let Some(mut req) = parse::<CallStartupRequest>(body) {
        let url = req.media_stream_url.take();
        let options = req.media_stream.take();
        if let Ok(spec) = req.validate(|| "generated".into()) {
            assert!(is_valid_id(&spec.call_id) && is_valid_id(&spec.stream));
            assert!(!spec.callee_uri.contains(['\r', '\n', ' ']));
            assert!(spec
                .headers
                .iter()
                .all(|(n, v)| !n.is_empty() && !v.contains(['\r', '\n', '\0'])));
            assert!(spec.has_audio || spec.has_video);
            let pw = spec.password.expose();
            if pw.len() >= 4 {
                assert!(!format!("{:?}", spec.password).contains(pw));
            }
            if url.is_some() || options.is_some() {
                let mut o = options.unwrap_or_default();
                if o.url.is_none() {
                    o.url = url;
                }
                let _ = o.validate(&spec.call_id);
            }
        }
    }
    if let Some(req) = parse::<media_streams::MediaStreamStartupRequest>(body) {
        let _ = req.options.validate(&req.call_id);
    }
    if let Some(req) = parse::<SiprecStartRequest>(body) {
        let _ = req.validate("sip:127.0.0.1", "");
    }
    if let Some(req) = parse::<push::PushStartupRequest>(body) {
        let _ = RtmpUrl::parse(&req.rtmp_url);
        let _ = is_valid_id(&req.stream_name);
    }
    if let Some(req) = parse::<pull::PullStartupRequest>(body) {
        if let Ok(u) = PullUrl::parse(&req.uri) {
            assert!(u.url.password().is_none() && u.url.username().is_empty());
        }
        let _ = PullTransport::parse(req.transport.as_deref().unwrap_or("tcp"));
    }
    let _ = parse::<calls::CallIdRequest>(body);
    let _ = parse::<calls::CallFilter>(body);
    let _ = parse::<calls::HoldRequest>(body);
    let _ = parse::<calls::DtmfRequest>(body);
    let _ = parse::<calls::TransferRequest>(body);
    let _ = parse::<inject::InjectSoundRequest>(body);
    let _ = parse::<inject::InjectStreamRequest>(body);
    let _ = parse::<inject::InjectionFilter>(body);
    let _ = parse::<media_streams::MediaStreamFilter>(body);
    let _ = parse::<media_streams::MediaStreamStopRequest>(body);
    let _ = parse::<media_exchange::MediaExchangeRequest>(body);
    let _ = parse::<media_exchange::MediaFindRequest>(body);
    let _ = parse::<media_exchange::MediaTerminateRequest>(body);
    let _ = parse::<push::PushFilter>(body);
    let _ = parse::<push::MediaSessionIdRequest>(body);
    let _ = parse::<pull::PullKey>(body);
    let _ = parse::<SiprecControlRequest>(body);
    let _ = parse::<streams::StreamName>(body);
    let _ = parse::<recording::RecordTarget>(body);
}

/// One JSON-RPC request object, as the socket loop handles it.
fn rpc(v: Value, filter: &mut Filter) {
    let Ok(req) = parse_request(v) else {
        return;
    };
    match resolve(&req.method, req.params) {
        Ok(Target::Rest { body, .. }) => bodies(&Bytes::from(body.to_string())),
        Ok(Target::Subscribe(p)) => {
            let _ = filter.subscribe(&p);
        }
        Ok(Target::Unsubscribe(p)) => {
            let _ = filter.unsubscribe(&p);
        }
        Ok(Target::Echo(_)) => {}
        Err(e) => assert!(!e.message.is_empty()),
    }
}

fuzz_target!(|data: &[u8]| {
    bodies(&Bytes::copy_from_slice(data));
    if let Ok(v) = serde_json::from_slice::<Value>(data) {
        let mut filter = Filter::default();
        match v {
            Value::Array(items) => items.into_iter().for_each(|i| rpc(i, &mut filter)),
            v => rpc(v, &mut filter),
        }
    }
});
