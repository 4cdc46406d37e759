//! JSON-RPC 2.0 over WebSocket at `/ws` (alias `/call-api`, OpenSIPS call-api's path).
//!
//! Requests: call-api's names (`CallStart`, `CallEnd`, `CallHold`, `CallUnhold`,
//! `CallBlindTransfer`, `CallAttendedTransfer`, `Echo`) and every REST method by its path
//! (`call/startup`, `siprec/start`...) with the REST body as `params`; `subscribe` /
//! `unsubscribe` choose which calls' notifications this connection gets. A connection carries
//! many requests at once: each runs as its own task and answers when it is done, in any order.
//! Notifications are the bus's events: `{"method": "Event", "params": {...the event,
//! "event", "callId", "callid", "cmd_id"?}}`.
//!
//! The protocol part (parsing, call-api translation, error codes, notification shape) is plain
//! functions tested below; the socket loop only moves frames.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::rc::Rc;

use actix_web::HttpMessage as _;
use actix_web::{web, HttpRequest, HttpResponse};
use actix_ws::AggregatedMessage;
use serde_json::{json, Map, Value};
use tokio::sync::broadcast::error::RecvError;

use super::error::ApiError;
use super::methods::{self, Method};
use super::AppState;
use crate::events::Event;

/// Requests of one connection running at once; more get an error at once.
const MAX_IN_FLIGHT: usize = 64;
/// Largest frame accepted (a call startup with SDP bodies fits many times over).
const MAX_FRAME: usize = 1 << 20;

pub fn routes(cfg: &mut web::ServiceConfig) {
    for path in ["/ws", "/call-api"] {
        cfg.service(
            web::resource(path)
                .wrap(actix_web::middleware::from_fn(super::require_api_key))
                .route(web::get().to(upgrade)),
        );
    }
}

async fn upgrade(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
) -> actix_web::Result<HttpResponse> {
    // The key the middleware accepted; each method is then checked against its scope.
    let caller = req
        .extensions()
        .get::<super::auth::Caller>()
        .copied()
        .unwrap_or(super::auth::Caller::Open);
    let (resp, session, stream) = actix_ws::handle(&req, body)?;
    let stream = stream
        .max_frame_size(MAX_FRAME)
        .aggregate_continuations()
        .max_continuation_size(MAX_FRAME);
    actix_web::rt::spawn(serve(state, session, stream, caller));
    Ok(resp)
}

/// JSON-RPC error codes: the spec's own, and the server range for the REST statuses.
pub mod code {
    pub const PARSE_ERROR: i64 = -32700;
    pub const INVALID_REQUEST: i64 = -32600;
    pub const METHOD_NOT_FOUND: i64 = -32601;
    pub const INVALID_PARAMS: i64 = -32602;
    pub const INTERNAL: i64 = -32603;
    pub const UNAUTHORIZED: i64 = -32001;
    pub const UPSTREAM: i64 = -32002;
    pub const UNAVAILABLE: i64 = -32003;
    pub const NOT_FOUND: i64 = -32004;
    pub const BUSY: i64 = -32005;
    pub const CONFLICT: i64 = -32009;
    pub const NOT_IMPLEMENTED: i64 = -32010;
    pub const FORBIDDEN: i64 = -32013;
    pub const TOO_MANY_REQUESTS: i64 = -32029;
}

/// An error reply: `code`, `message`, and in `data` the REST error kind and HTTP status.
#[derive(Debug, PartialEq)]
pub struct RpcError {
    pub code: i64,
    pub message: String,
    pub data: Option<Value>,
}

impl RpcError {
    fn new(code: i64, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            data: None,
        }
    }
}

impl From<ApiError> for RpcError {
    fn from(e: ApiError) -> Self {
        use actix_web::ResponseError;
        let code = match &e {
            ApiError::BadRequest(_) => code::INVALID_PARAMS,
            ApiError::Unauthorized(_) => code::UNAUTHORIZED,
            ApiError::Forbidden(_) => code::FORBIDDEN,
            ApiError::TooManyRequests(..) => code::TOO_MANY_REQUESTS,
            ApiError::TooLarge(_) => code::INVALID_REQUEST,
            ApiError::NotFound(_) => code::NOT_FOUND,
            ApiError::Conflict(_) => code::CONFLICT,
            ApiError::Upstream(_) => code::UPSTREAM,
            ApiError::Unavailable(_) => code::UNAVAILABLE,
            ApiError::NotImplemented(_) => code::NOT_IMPLEMENTED,
            ApiError::Internal(_) => code::INTERNAL,
        };
        Self {
            code,
            message: e.to_string(),
            data: Some(json!({"error": e.kind(), "status": e.status_code().as_u16()})),
        }
    }
}

/// One parsed request. `id` is `None` for a notification (no reply is sent).
#[derive(Debug)]
pub struct Request {
    pub id: Option<Value>,
    pub method: String,
    pub params: Value,
}

/// Checks one JSON-RPC 2.0 request object. Errors carry the id when one could be read.
pub fn parse_request(v: Value) -> Result<Request, (Option<Value>, RpcError)> {
    let Value::Object(mut obj) = v else {
        return Err((
            None,
            RpcError::new(code::INVALID_REQUEST, "a request must be a JSON object"),
        ));
    };
    let id = obj.remove("id");
    if let Some(bad) = id
        .as_ref()
        .filter(|i| !(i.is_string() || i.is_number() || i.is_null()))
    {
        return Err((
            None,
            RpcError::new(
                code::INVALID_REQUEST,
                format!("id must be a string, a number or null, got {bad}"),
            ),
        ));
    }
    let fail = |msg: String| Err((id.clone(), RpcError::new(code::INVALID_REQUEST, msg)));
    match obj.get("jsonrpc") {
        Some(Value::String(v)) if v == "2.0" => {}
        other => return fail(format!("jsonrpc must be \"2.0\", got {other:?}")),
    }
    let method = match obj.remove("method") {
        Some(Value::String(m)) if !m.is_empty() => m,
        other => return fail(format!("method must be a non-empty string, got {other:?}")),
    };
    let params = obj.remove("params").unwrap_or(Value::Null);
    if !(params.is_object() || params.is_null()) {
        return Err((
            id,
            RpcError::new(
                code::INVALID_PARAMS,
                "params must be an object (the REST body) or absent",
            ),
        ));
    }
    Ok(Request { id, method, params })
}

/// What a method name resolves to.
#[derive(Debug)]
pub enum Target {
    /// A REST method with its body; `call_api` when asked by a call-api name (its result
    /// then has call-api's shape).
    Rest {
        method: &'static Method,
        body: Value,
        call_api: bool,
    },
    Subscribe(Value),
    Unsubscribe(Value),
    Echo(Value),
}

/// call-api's parameter names to ours: `callid` → `callId`, `destination` → `target`.
fn rename(mut params: Map<String, Value>, pairs: &[(&str, &str)]) -> Map<String, Value> {
    for (from, to) in pairs {
        if !params.contains_key(*to) {
            if let Some(v) = params.remove(*from) {
                params.insert((*to).to_string(), v);
            }
        }
    }
    params
}

/// Resolves a method name and its params.
pub fn resolve(method: &str, params: Value) -> Result<Target, RpcError> {
    let obj = match params {
        Value::Object(o) => o,
        _ => Map::new(),
    };
    let rest = |path: &str, body: Map<String, Value>| -> Result<Target, RpcError> {
        let method = methods::find(path)
            .ok_or_else(|| RpcError::new(code::METHOD_NOT_FOUND, format!("no method {path}")))?;
        Ok(Target::Rest {
            method,
            body: Value::Object(body),
            call_api: true,
        })
    };
    let callid = [("callid", "callId")];
    match method {
        "CallStart" => rest("call/startup", rename(obj, &callid)),
        "CallEnd" => rest("call/terminate", rename(obj, &callid)),
        "CallHold" => rest("call/hold", rename(obj, &callid)),
        "CallUnhold" => rest("call/unhold", rename(obj, &callid)),
        "CallBlindTransfer" => rest(
            "call/transfer",
            rename(obj, &[("callid", "callId"), ("destination", "target")]),
        ),
        "CallAttendedTransfer" => rest(
            "call/transfer",
            rename(
                obj,
                &[
                    ("callidA", "callId"),
                    ("legA", "leg"),
                    ("callidB", "replaceCallId"),
                    ("legB", "replaceLeg"),
                ],
            ),
        ),
        "Echo" => Ok(Target::Echo(Value::Object(obj))),
        "subscribe" => Ok(Target::Subscribe(Value::Object(obj))),
        "unsubscribe" => Ok(Target::Unsubscribe(Value::Object(obj))),
        other => match methods::find(other) {
            Some(method) => Ok(Target::Rest {
                method,
                body: Value::Object(obj),
                call_api: false,
            }),
            None => Err(RpcError::new(
                code::METHOD_NOT_FOUND,
                format!(
                    "no method {other:?}: use a call-api name (CallStart, CallEnd, CallHold, \
                     CallUnhold, CallBlindTransfer, CallAttendedTransfer) or a REST path \
                     such as call/startup"
                ),
            )),
        },
    }
}

/// Which calls' events a connection gets: all (the default), or those in the set.
#[derive(Debug, Default)]
pub struct Filter {
    only: Option<HashSet<String>>,
}

impl Filter {
    pub fn passes(&self, event: &Event) -> bool {
        match (&self.only, event.call_id()) {
            (None, _) => true,
            (Some(set), Some(id)) => set.contains(id),
            (Some(_), None) => false,
        }
    }

    /// `subscribe {callId}` adds a call; `subscribe {}` takes all again.
    pub fn subscribe(&mut self, params: &Value) -> Result<Value, RpcError> {
        match call_id_param(params)? {
            Some(id) => {
                self.only.get_or_insert_with(HashSet::new).insert(id);
            }
            None => self.only = None,
        }
        Ok(self.describe())
    }

    /// `unsubscribe {callId}` drops a call; `unsubscribe {}` stops all notifications.
    pub fn unsubscribe(&mut self, params: &Value) -> Result<Value, RpcError> {
        match call_id_param(params)? {
            Some(id) => match &mut self.only {
                Some(set) => {
                    set.remove(&id);
                }
                None => {
                    return Err(RpcError::new(
                        code::INVALID_PARAMS,
                        "this connection gets every call's events; subscribe to some calls \
                         first, or unsubscribe without callId to get none",
                    ))
                }
            },
            None => self.only = Some(HashSet::new()),
        }
        Ok(self.describe())
    }

    fn describe(&self) -> Value {
        match &self.only {
            None => json!({"subscribed": "all"}),
            Some(set) => {
                let mut ids: Vec<_> = set.iter().cloned().collect();
                ids.sort();
                json!({ "subscribed": ids })
            }
        }
    }
}

fn call_id_param(params: &Value) -> Result<Option<String>, RpcError> {
    match params.get("callId").or_else(|| params.get("callid")) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
        Some(other) => Err(RpcError::new(
            code::INVALID_PARAMS,
            format!("callId: expected a non-empty string, got {other}"),
        )),
    }
}

/// A call-api result: `{cmd_id, status: "Started", callId, callid, result}`.
pub fn call_api_result(cmd_id: &str, rest_result: Value) -> Value {
    let call_id = rest_result.get("callId").cloned().unwrap_or(Value::Null);
    json!({
        "cmd_id": cmd_id,
        "status": "Started",
        "callId": call_id,
        "callid": call_id,
        "result": rest_result,
    })
}

/// A REST result as JSON-RPC result: the body, with `callid` beside `callId`.
fn rest_result(mut v: Value) -> Value {
    if let Some(obj) = v.as_object_mut() {
        if let Some(id) = obj.get("callId").cloned() {
            obj.entry("callid").or_insert(id);
        }
    }
    v
}

/// The notification for one event.
pub fn notification(event: &Event, cmd_id: Option<&str>) -> Value {
    let mut params = match serde_json::to_value(event) {
        Ok(Value::Object(o)) => o,
        _ => Map::new(),
    };
    params.insert("event".into(), json!(event.name()));
    if let Some(id) = event.call_id() {
        params.insert("callId".into(), json!(id));
        params.insert("callid".into(), json!(id));
    }
    if let Some(cmd) = cmd_id {
        params.insert("cmd_id".into(), json!(cmd));
    }
    json!({"jsonrpc": "2.0", "method": "Event", "params": params})
}

/// call-api's closing notification once a call has ended.
fn ended(call_id: &str, cmd_id: Option<&str>) -> Value {
    let mut params = json!({"event": "Ended", "callId": call_id, "callid": call_id});
    if let Some(cmd) = cmd_id {
        params["cmd_id"] = json!(cmd);
    }
    json!({"jsonrpc": "2.0", "method": "Event", "params": params})
}

fn is_final_status(event: &Event) -> Option<&str> {
    match event {
        Event::CallStatusEvent {
            call_id, status, ..
        } if matches!(status.as_str(), "FINISH" | "FAILED" | "BUSY") => Some(call_id),
        _ => None,
    }
}

fn reply(id: Value, outcome: Result<Value, RpcError>) -> Value {
    match outcome {
        Ok(result) => json!({"jsonrpc": "2.0", "id": id, "result": result}),
        Err(e) => error_reply(Some(id), e),
    }
}

fn error_reply(id: Option<Value>, e: RpcError) -> Value {
    let mut error = json!({"code": e.code, "message": e.message});
    if let Some(data) = e.data {
        error["data"] = data;
    }
    json!({"jsonrpc": "2.0", "id": id.unwrap_or(Value::Null), "error": error})
}

/// Per-connection state shared by its request tasks (all on the connection's thread).
#[derive(Default)]
struct Conn {
    filter: Filter,
    /// The last call-api command per call: its notifications carry that `cmd_id`.
    commands: HashMap<String, String>,
    in_flight: usize,
    /// Who opened the connection (its key's scope limits its methods).
    caller: Option<super::auth::Caller>,
}

async fn serve(
    state: web::Data<AppState>,
    session: actix_ws::Session,
    mut stream: actix_ws::AggregatedMessageStream,
    caller: super::auth::Caller,
) {
    let conn = Rc::new(RefCell::new(Conn {
        caller: Some(caller),
        ..Conn::default()
    }));
    let mut events = state.bus.subscribe();
    let mut out = session.clone();
    tracing::info!("JSON-RPC connection opened");
    loop {
        tokio::select! {
            msg = stream.recv() => {
                let Some(Ok(msg)) = msg else { break };
                match msg {
                    AggregatedMessage::Text(text) => {
                        on_text(&state, &conn, &session, text.as_bytes()).await;
                    }
                    AggregatedMessage::Binary(_) => {
                        let e = RpcError::new(code::INVALID_REQUEST,
                            "binary frames are not JSON-RPC; send requests as text frames");
                        if send(&mut out, &error_reply(None, e)).await.is_err() { break }
                    }
                    AggregatedMessage::Ping(p) => {
                        if out.pong(&p).await.is_err() { break }
                    }
                    AggregatedMessage::Pong(_) => {}
                    AggregatedMessage::Close(_) => break,
                }
            }
            ev = events.recv() => {
                let note = match ev {
                    Ok(ev) => {
                        let mut c = conn.borrow_mut();
                        if !c.filter.passes(&ev) { continue }
                        let cmd = ev.call_id().and_then(|id| c.commands.get(id)).cloned();
                        let mut notes = vec![notification(&ev, cmd.as_deref())];
                        if let Some(id) = is_final_status(&ev) {
                            c.commands.remove(id);
                            notes.push(ended(id, cmd.as_deref()));
                        }
                        notes
                    }
                    Err(RecvError::Lagged(n)) => vec![json!({"jsonrpc": "2.0", "method": "Event",
                        "params": {"event": "EventsLost", "lost": n}})],
                    Err(RecvError::Closed) => break,
                };
                for n in note {
                    if send(&mut out, &n).await.is_err() { break }
                }
            }
        }
    }
    let _ = session.close(None).await;
    tracing::info!("JSON-RPC connection closed");
}

async fn send(session: &mut actix_ws::Session, v: &Value) -> Result<(), actix_ws::Closed> {
    session.text(v.to_string()).await
}

/// A text frame: one request, or a batch (array) answered as one array.
async fn on_text(
    state: &web::Data<AppState>,
    conn: &Rc<RefCell<Conn>>,
    session: &actix_ws::Session,
    text: &[u8],
) {
    let mut out = session.clone();
    let parsed: Value = match serde_json::from_slice(text) {
        Ok(v) => v,
        Err(e) => {
            let e = RpcError::new(code::PARSE_ERROR, format!("not JSON: {e}"));
            let _ = send(&mut out, &error_reply(None, e)).await;
            return;
        }
    };
    let busy = {
        let mut c = conn.borrow_mut();
        let busy = c.in_flight >= MAX_IN_FLIGHT;
        if !busy {
            c.in_flight += 1;
        }
        busy
    };
    if busy {
        let id = parsed.get("id").cloned();
        let e = RpcError::new(
            code::BUSY,
            format!("{MAX_IN_FLIGHT} requests in flight on this connection; wait for answers"),
        );
        let _ = send(&mut out, &error_reply(id, e)).await;
        return;
    }
    let state = state.clone();
    let conn = conn.clone();
    actix_web::rt::spawn(async move {
        let answer = match parsed {
            Value::Array(items) if items.is_empty() => Some(error_reply(
                None,
                RpcError::new(code::INVALID_REQUEST, "an empty batch"),
            )),
            Value::Array(items) => {
                let mut replies = Vec::new();
                for item in items {
                    replies.extend(handle(&state, &conn, item).await);
                }
                (!replies.is_empty()).then_some(Value::Array(replies))
            }
            one => handle(&state, &conn, one).await,
        };
        conn.borrow_mut().in_flight -= 1;
        if let Some(answer) = answer {
            let _ = send(&mut out, &answer).await;
        }
    });
}

/// One request; `None` for a notification (no id).
async fn handle(state: &web::Data<AppState>, conn: &Rc<RefCell<Conn>>, v: Value) -> Option<Value> {
    let req = match parse_request(v) {
        Ok(r) => r,
        Err((id, e)) => return Some(error_reply(id, e)),
    };
    tracing::debug!(method = %req.method, "JSON-RPC request");
    let outcome = run(state, conn, &req.method, req.params).await;
    req.id.map(|id| reply(id, outcome))
}

async fn run(
    state: &web::Data<AppState>,
    conn: &Rc<RefCell<Conn>>,
    method: &str,
    params: Value,
) -> Result<Value, RpcError> {
    match resolve(method, params)? {
        Target::Echo(p) => Ok(p),
        Target::Subscribe(p) => conn.borrow_mut().filter.subscribe(&p),
        Target::Unsubscribe(p) => conn.borrow_mut().filter.unsubscribe(&p),
        Target::Rest {
            method,
            body,
            call_api,
        } => {
            let caller = conn.borrow().caller.unwrap_or(super::auth::Caller::Open);
            let need = super::auth::required_scope("POST", method.path);
            state.auth.check_scope(caller, need)?;
            if method.path == "/call/startup" {
                state.auth.call_startup(caller, std::time::Instant::now())?;
            }
            let bytes = if body.as_object().is_some_and(Map::is_empty) {
                web::Bytes::new()
            } else {
                web::Bytes::from(body.to_string())
            };
            let resp = (method.call)(state.clone(), bytes).await?;
            let status = resp.status();
            let raw = actix_web::body::to_bytes(resp.into_body())
                .await
                .map_err(|e| RpcError::new(code::INTERNAL, format!("reading the answer: {e}")))?;
            let result: Value = if raw.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&raw)
                    .map_err(|e| RpcError::new(code::INTERNAL, format!("answer not JSON: {e}")))?
            };
            if !status.is_success() {
                return Err(RpcError {
                    code: code::INTERNAL,
                    message: format!("{} answered {status}", method.path),
                    data: Some(result),
                });
            }
            if !call_api {
                return Ok(rest_result(result));
            }
            let cmd_id = format!("cmd-{}", crate::ids::random_token(12));
            if let Some(id) = result.get("callId").and_then(Value::as_str) {
                conn.borrow_mut()
                    .commands
                    .insert(id.to_string(), cmd_id.clone());
            }
            Ok(call_api_result(&cmd_id, result))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status_event(call_id: &str, status: &str) -> Event {
        Event::CallStatusEvent {
            call_id: call_id.into(),
            status: status.into(),
            sip_status: Some(200),
            reason: None,
            stream_name: "s".into(),
            callee: "sip:b@x".into(),
            timestamp: 1,
        }
    }

    #[test]
    fn requests_are_checked_field_by_field() {
        let ok = parse_request(json!({"jsonrpc": "2.0", "id": 7, "method": "CallEnd",
            "params": {"callid": "c1"}}))
        .unwrap();
        assert_eq!(ok.id, Some(json!(7)));
        assert_eq!(ok.method, "CallEnd");

        let (id, e) = parse_request(json!({"id": 1, "method": "x"})).unwrap_err();
        assert_eq!((id, e.code), (Some(json!(1)), code::INVALID_REQUEST));
        assert!(e.message.contains("jsonrpc"), "{}", e.message);

        let (_, e) = parse_request(json!({"jsonrpc": "2.0", "id": 1, "method": 5})).unwrap_err();
        assert!(e.message.contains("method"), "{}", e.message);

        let (_, e) = parse_request(json!({"jsonrpc": "2.0", "id": 1, "method": "m",
            "params": [1, 2]}))
        .unwrap_err();
        assert_eq!(e.code, code::INVALID_PARAMS);

        let (id, e) =
            parse_request(json!({"jsonrpc": "2.0", "id": {"a": 1}, "method": "m"})).unwrap_err();
        assert_eq!((id, e.code), (None, code::INVALID_REQUEST));

        let (_, e) = parse_request(json!([1])).unwrap_err();
        assert_eq!(e.code, code::INVALID_REQUEST);

        let note = parse_request(json!({"jsonrpc": "2.0", "method": "Echo"})).unwrap();
        assert_eq!(note.id, None);
    }

    #[test]
    fn call_api_names_map_to_rest_methods_and_fields() {
        let Target::Rest {
            method,
            body,
            call_api,
        } = resolve(
            "CallBlindTransfer",
            json!({"callid": "c1", "leg": "callee", "destination": "sip:x@y"}),
        )
        .unwrap()
        else {
            panic!("not a REST target")
        };
        assert_eq!(method.path, "/call/transfer");
        assert!(call_api);
        assert_eq!(
            body,
            json!({"callId": "c1", "leg": "callee", "target": "sip:x@y"})
        );

        let Target::Rest { method, body, .. } = resolve(
            "CallAttendedTransfer",
            json!({"callidA": "a", "legA": "caller", "callidB": "b", "legB": "callee"}),
        )
        .unwrap() else {
            panic!()
        };
        assert_eq!(method.path, "/call/transfer");
        assert_eq!(
            body,
            json!({"callId": "a", "leg": "caller", "replaceCallId": "b", "replaceLeg": "callee"})
        );

        for (name, path) in [
            ("CallStart", "/call/startup"),
            ("CallEnd", "/call/terminate"),
            ("CallHold", "/call/hold"),
            ("CallUnhold", "/call/unhold"),
            ("call/find_all", "/call/find_all"),
            ("/siprec/start", "/siprec/start"),
            ("/rest-api/push/startup", "/push/startup"),
        ] {
            match resolve(name, Value::Null).unwrap() {
                Target::Rest { method, .. } => assert_eq!(method.path, path, "{name}"),
                other => panic!("{name}: {other:?}"),
            }
        }
        // An explicit callId wins over call-api's callid.
        let Target::Rest { body, .. } =
            resolve("CallEnd", json!({"callid": "a", "callId": "b"})).unwrap()
        else {
            panic!()
        };
        assert_eq!(body["callId"], "b");

        let e = resolve("CallFly", Value::Null).unwrap_err();
        assert_eq!(e.code, code::METHOD_NOT_FOUND);
        assert!(e.message.contains("CallFly"));
    }

    #[test]
    fn every_rest_method_is_a_json_rpc_method() {
        for m in methods::METHODS {
            assert!(
                matches!(resolve(&m.path[1..], Value::Null), Ok(Target::Rest { .. })),
                "{}",
                m.path
            );
        }
    }

    #[test]
    fn api_errors_keep_their_kind_and_status() {
        let e = RpcError::from(ApiError::NotFound("no call c9".into()));
        assert_eq!(e.code, code::NOT_FOUND);
        assert_eq!(e.message, "no call c9");
        assert_eq!(e.data, Some(json!({"error": "not_found", "status": 404})));
        assert_eq!(
            RpcError::from(ApiError::BadRequest("callId: missing".into())).code,
            code::INVALID_PARAMS
        );
    }

    #[test]
    fn filters_follow_subscribe_and_unsubscribe() {
        let mut f = Filter::default();
        assert!(f.passes(&status_event("a", "RING")));
        assert_eq!(
            f.subscribe(&json!({"callId": "a"})).unwrap(),
            json!({"subscribed": ["a"]})
        );
        assert!(f.passes(&status_event("a", "RING")));
        assert!(!f.passes(&status_event("b", "RING")));
        f.subscribe(&json!({"callid": "b"})).unwrap();
        assert!(f.passes(&status_event("b", "RING")));
        f.unsubscribe(&json!({"callId": "a"})).unwrap();
        assert!(!f.passes(&status_event("a", "RING")));
        f.unsubscribe(&json!({})).unwrap();
        assert!(!f.passes(&status_event("b", "RING")));
        f.subscribe(&json!({})).unwrap();
        assert!(f.passes(&status_event("z", "RING")));
        assert!(f.unsubscribe(&json!({"callId": "z"})).is_err());
        assert_eq!(
            f.subscribe(&json!({"callId": 5})).unwrap_err().code,
            code::INVALID_PARAMS
        );
    }

    #[test]
    fn notifications_carry_event_call_id_and_command() {
        let n = notification(&status_event("c1", "ESTABLISHED"), Some("cmd-1"));
        assert_eq!(n["method"], "Event");
        assert_eq!(n["params"]["event"], "ESTABLISHED");
        assert_eq!(n["params"]["type"], "CallStatusEvent");
        assert_eq!(n["params"]["callId"], "c1");
        assert_eq!(n["params"]["callid"], "c1");
        assert_eq!(n["params"]["cmd_id"], "cmd-1");
        assert!(is_final_status(&status_event("c1", "FINISH")).is_some());
        assert!(is_final_status(&status_event("c1", "HOLD")).is_none());
        let e = ended("c1", None);
        assert_eq!(e["params"]["event"], "Ended");
        assert!(e["params"].get("cmd_id").is_none());
    }

    #[test]
    fn call_api_results_have_cmd_id_and_both_call_id_spellings() {
        let r = call_api_result("cmd-x", json!({"callId": "c1", "status": "TRYING"}));
        assert_eq!(r["cmd_id"], "cmd-x");
        assert_eq!(r["status"], "Started");
        assert_eq!(r["callid"], "c1");
        assert_eq!(r["result"]["status"], "TRYING");
        let r = rest_result(json!({"callId": "c1"}));
        assert_eq!(r["callid"], "c1");
    }
}
