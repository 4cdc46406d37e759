//! Events everywhere, end to end with sipp as the callee: JSON-RPC 2.0 over one WebSocket
//! (`/ws`, `/call-api`) with requests in flight at once and call-api's names, Server-Sent
//! Events at `/events` filtered by call, and webhooks signed with `webhook_secret`, retried
//! and delivered in order.
mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{startup_body, Gateway, Sipp};
use futures_util::{SinkExt, StreamExt};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use tokio_tungstenite::tungstenite::Message;

const T: Duration = Duration::from_secs(15);

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(gw: &Gateway, path: &str) -> Ws {
    let url = format!("{}{path}", gw.rest.replace("http://", "ws://"));
    let (ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("ws connect");
    ws
}

/// The next JSON text frame (pings and the like skipped).
async fn next_json(ws: &mut Ws) -> Value {
    loop {
        let msg = tokio::time::timeout(T, ws.next())
            .await
            .expect("a frame within the timeout")
            .expect("the connection stays open")
            .expect("a frame");
        if let Message::Text(t) = msg {
            return serde_json::from_str(&t).expect("JSON text frame");
        }
    }
}

/// Reads frames until replies to all `ids` arrived; notifications are kept aside.
async fn replies(ws: &mut Ws, ids: &[Value], notes: &mut Vec<Value>) -> HashMap<String, Value> {
    let mut got = HashMap::new();
    while got.len() < ids.len() {
        let v = next_json(ws).await;
        if v.get("method").is_some() {
            notes.push(v);
            continue;
        }
        got.insert(v["id"].to_string(), v);
    }
    got
}

/// Notifications until one has `event` == `name` for `call_id`.
async fn note_until(ws: &mut Ws, notes: &mut Vec<Value>, call_id: &str, name: &str) -> Value {
    if let Some(n) = notes
        .iter()
        .find(|n| n["params"]["callId"] == call_id && n["params"]["event"] == name)
    {
        return n.clone();
    }
    loop {
        let v = next_json(ws).await;
        assert_eq!(v["method"], "Event", "a notification: {v}");
        notes.push(v.clone());
        if v["params"]["callId"] == call_id && v["params"]["event"] == name {
            return v;
        }
    }
}

async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::text(v.to_string())).await.unwrap();
}

#[tokio::test]
async fn json_rpc_drives_a_call_over_one_connection_with_requests_in_flight() {
    let gw = Gateway::start(&[]).await;
    let mut sipp = Sipp::uas("uas_hold_by_gateway.xml", "udp", false);
    let mut ws = connect(&gw, "/call-api").await;
    let mut notes = Vec::new();

    // Five requests written before any reply is read, and two frames that are not
    // JSON-RPC: each gets its own answer, the connection goes on.
    let mut params = startup_body("rpc1", sipp.port, "udp");
    params["callid"] = params["callId"].take();
    params.as_object_mut().unwrap().remove("callId");
    send(
        &mut ws,
        json!({"jsonrpc": "2.0", "id": 1, "method": "CallStart", "params": params}),
    )
    .await;
    send(
        &mut ws,
        json!({"jsonrpc": "2.0", "id": "two", "method": "Echo", "params": {"x": 1}}),
    )
    .await;
    send(
        &mut ws,
        json!({"jsonrpc": "2.0", "id": 3, "method": "call/find_all"}),
    )
    .await;
    send(
        &mut ws,
        json!({"jsonrpc": "2.0", "id": 4, "method": "CallFly"}),
    )
    .await;
    send(
        &mut ws,
        json!({"jsonrpc": "2.0", "id": 5, "method": "CallEnd", "params": {"callid": "nope"}}),
    )
    .await;
    ws.send(Message::text("this is not json")).await.unwrap();
    let mut r = HashMap::new();
    let mut parse_error = None;
    while r.len() < 5 || parse_error.is_none() {
        let v = next_json(&mut ws).await;
        if v.get("method").is_some() {
            notes.push(v);
        } else if v["id"].is_null() {
            parse_error = Some(v);
        } else {
            r.insert(v["id"].to_string(), v);
        }
    }
    let parse_error = parse_error.unwrap();
    assert_eq!(parse_error["error"]["code"], -32700, "{parse_error}");

    let start = &r["1"];
    assert_eq!(start["result"]["status"], "Started", "{start}");
    assert_eq!(start["result"]["callId"], "rpc1", "{start}");
    assert_eq!(start["result"]["callid"], "rpc1", "{start}");
    let cmd_id = start["result"]["cmd_id"].as_str().unwrap().to_string();
    assert!(
        !start["result"]["result"].to_string().contains("s3cret"),
        "{start}"
    );
    assert_eq!(r["\"two\""]["result"], json!({"x": 1}));
    assert!(r["3"]["result"].is_array(), "{}", r["3"]);
    assert_eq!(r["4"]["error"]["code"], -32601, "{}", r["4"]);
    assert_eq!(r["5"]["error"]["code"], -32004, "{}", r["5"]);
    assert_eq!(r["5"]["error"]["data"]["status"], 404, "{}", r["5"]);

    // Progress arrives as notifications carrying the command's id.
    let up = note_until(&mut ws, &mut notes, "rpc1", "ESTABLISHED").await;
    assert_eq!(up["params"]["type"], "CallStatusEvent", "{up}");
    assert_eq!(up["params"]["cmd_id"], cmd_id.as_str(), "{up}");

    send(
        &mut ws,
        json!({"jsonrpc": "2.0", "id": 6, "method": "CallHold", "params": {"callid": "rpc1"}}),
    )
    .await;
    let r = replies(&mut ws, &[json!(6)], &mut notes).await;
    assert_eq!(r["6"]["result"]["status"], "Started", "{}", r["6"]);
    for step in ["CallHolding", "CallHoldStart", "CallHoldSuccessful"] {
        note_until(&mut ws, &mut notes, "rpc1", step).await;
    }
    note_until(&mut ws, &mut notes, "rpc1", "HOLD").await;
    send(
        &mut ws,
        json!({"jsonrpc": "2.0", "id": 7, "method": "CallUnhold", "params": {"callid": "rpc1"}}),
    )
    .await;
    replies(&mut ws, &[json!(7)], &mut notes).await;
    note_until(&mut ws, &mut notes, "rpc1", "CallUnholdSuccessful").await;

    // A REST path as a method, with the REST body.
    send(
        &mut ws,
        json!({"jsonrpc": "2.0", "id": 8, "method": "call/find", "params": {"callId": "rpc1"}}),
    )
    .await;
    let r = replies(&mut ws, &[json!(8)], &mut notes).await;
    assert_eq!(r["8"]["result"][0]["callId"], "rpc1", "{}", r["8"]);
    // A REST validation error comes back as invalid params naming the field.
    send(&mut ws, json!({"jsonrpc": "2.0", "id": 9, "method": "call/send_dtmf", "params": {"callId": "rpc1", "dtmf": "x", "type": "INFO"}})).await;
    let r = replies(&mut ws, &[json!(9)], &mut notes).await;
    assert_eq!(r["9"]["error"]["code"], -32602, "{}", r["9"]);
    assert!(
        r["9"]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("dtmf"),
        "{}",
        r["9"]
    );

    send(
        &mut ws,
        json!({"jsonrpc": "2.0", "id": 10, "method": "CallEnd", "params": {"callid": "rpc1"}}),
    )
    .await;
    let r = replies(&mut ws, &[json!(10)], &mut notes).await;
    let end_cmd = r["10"]["result"]["cmd_id"].as_str().unwrap().to_string();
    assert_ne!(end_cmd, cmd_id);
    note_until(&mut ws, &mut notes, "rpc1", "FINISH").await;
    let ended = note_until(&mut ws, &mut notes, "rpc1", "Ended").await;
    // Notifications carry the latest call-api command on the call: here CallEnd's.
    assert_eq!(ended["params"]["cmd_id"], end_cmd.as_str(), "{ended}");
    assert_eq!(sipp.wait(T), Some(0), "{}", sipp.messages());
}

#[tokio::test]
async fn subscribe_limits_notifications_to_one_call() {
    let gw = Gateway::start(&[]).await;
    let mut ws = connect(&gw, "/ws").await;
    send(
        &mut ws,
        json!({"jsonrpc": "2.0", "id": 1, "method": "subscribe", "params": {"callId": "wanted"}}),
    )
    .await;
    let r = next_json(&mut ws).await;
    assert_eq!(r["result"], json!({"subscribed": ["wanted"]}), "{r}");
    send(
        &mut ws,
        json!({"jsonrpc": "2.0", "id": 2, "method": "subscribe", "params": {"callId": 7}}),
    )
    .await;
    assert_eq!(next_json(&mut ws).await["error"]["code"], -32602);
    // Two calls that fail at once (nothing listens on their port): only one is reported.
    let dead = common::free_udp_port();
    for id in ["other", "wanted"] {
        let mut body = startup_body(id, dead, "tcp");
        body["sipTransport"] = json!("tcp");
        let (s, _) = gw.post_json("/call/startup", body).await;
        assert!(s == 200 || s == 502, "{s}");
    }
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + T;
    while !seen.iter().any(|v: &Value| v["params"]["event"] == "Ended") {
        let v = tokio::time::timeout_at(deadline, next_json(&mut ws))
            .await
            .unwrap_or_else(|_| panic!("no Ended for the wanted call; saw {seen:?}"));
        seen.push(v);
    }
    assert!(
        seen.iter().all(|v| v["params"]["callId"] == "wanted"),
        "{seen:?}"
    );
    // Binary frames are refused with a JSON-RPC error, and the connection stays.
    ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    assert_eq!(next_json(&mut ws).await["error"]["code"], -32600);
    send(
        &mut ws,
        json!({"jsonrpc": "2.0", "id": 3, "method": "Echo"}),
    )
    .await;
    assert_eq!(next_json(&mut ws).await["id"], 3);
}

/// A webhook receiver keeping headers and raw bodies; its first POST is answered 500.
async fn raw_webhook() -> (
    String,
    tokio::sync::mpsc::UnboundedReceiver<(HashMap<String, String>, Vec<u8>)>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let refused = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let tx = tx.clone();
            let refused = refused.clone();
            tokio::spawn(async move {
                let mut data = Vec::new();
                let mut buf = [0u8; 8192];
                loop {
                    let Ok(n) = s.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    data.extend_from_slice(&buf[..n]);
                    let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") else {
                        continue;
                    };
                    let head = String::from_utf8_lossy(&data[..end]).to_string();
                    let headers: HashMap<String, String> = head
                        .lines()
                        .skip(1)
                        .filter_map(|l| l.split_once(':'))
                        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
                        .collect();
                    let len: usize = headers
                        .get("content-length")
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                    if data.len() < end + 4 + len {
                        continue;
                    }
                    let body = data[end + 4..end + 4 + len].to_vec();
                    data.drain(..end + 4 + len);
                    let reply: &[u8] = if !refused.swap(true, std::sync::atomic::Ordering::SeqCst) {
                        b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\n\r\n"
                    } else {
                        let _ = tx.send((headers, body));
                        b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"
                    };
                    let _ = s.write_all(reply).await;
                }
            });
        }
    });
    (url, rx)
}

#[tokio::test]
async fn webhooks_are_signed_retried_and_in_order_and_sse_streams_the_same_events() {
    let secret = "hook-key-42";
    let (url, mut hooks) = raw_webhook().await;
    let gw = Gateway::start(&[("webhook_url", url), ("webhook_secret", secret.to_string())]).await;
    // SSE subscriber for this call only.
    let mut sse = reqwest::get(format!("{}/events?callId=wh1", gw.rest))
        .await
        .unwrap();
    assert_eq!(sse.status(), 200);
    assert!(sse.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let mut sipp = Sipp::uas("uas_pcmu_stream.xml", "udp", false);
    // Another call's events must not show up on the filtered stream.
    let (s, _) = gw
        .post_json(
            "/call/startup",
            startup_body("noise", common::free_udp_port(), "tcp"),
        )
        .await;
    assert!(s == 200 || s == 502);
    let (s, _) = gw
        .post_json("/call/startup", startup_body("wh1", sipp.port, "udp"))
        .await;
    assert_eq!(s, 200);
    gw.wait_status("wh1", &["ESTABLISHED"], T).await;
    gw.post_json("/call/terminate", json!({"callId": "wh1"}))
        .await;
    gw.wait_status("wh1", &["FINISH"], T).await;
    assert_eq!(sipp.wait(T), Some(0), "{}", sipp.messages());

    // SSE: records of wh1 only, up to FINISH.
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + T;
    while !text.contains("\"FINISH\"") {
        let chunk = tokio::time::timeout_at(deadline, sse.chunk())
            .await
            .unwrap_or_else(|_| panic!("SSE stalled: {text}"))
            .unwrap()
            .expect("stream open");
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    let data: Vec<Value> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert!(data.iter().all(|d| d["callId"] == "wh1"), "{text}");
    let statuses: Vec<&str> = data
        .iter()
        .filter(|d| d["type"] == "CallStatusEvent")
        .map(|d| d["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses.first(), Some(&"PENDING"), "{statuses:?}");
    assert_eq!(statuses.last(), Some(&"FINISH"), "{statuses:?}");
    assert!(text.contains("event: CallStatusEvent\ndata: "), "{text}");

    // Webhooks: every body signed, deliveries numbered in order, wh1's statuses in order,
    // and the event refused once with 500 delivered again.
    let mut deliveries = Vec::new();
    let mut wh1 = Vec::new();
    let deadline = tokio::time::Instant::now() + T;
    while wh1.last().map(String::as_str) != Some("FINISH") {
        let (headers, body) = tokio::time::timeout_at(deadline, hooks.recv())
            .await
            .unwrap_or_else(|_| panic!("webhooks stalled at {wh1:?}"))
            .unwrap();
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(&body);
        let want = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
        assert_eq!(headers.get("x-sipstream-signature"), Some(&want));
        let ev: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            headers.get("x-sipstream-event").map(String::as_str),
            ev["type"].as_str()
        );
        deliveries.push(headers["x-sipstream-delivery"].parse::<u64>().unwrap());
        if ev["type"] == "CallStatusEvent" && ev["callId"] == "wh1" {
            wh1.push(ev["status"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(
        deliveries[0], 1,
        "the first event, refused once, came again"
    );
    assert!(deliveries.windows(2).all(|w| w[0] < w[1]), "{deliveries:?}");
    assert_eq!(wh1.first().map(String::as_str), Some("PENDING"), "{wh1:?}");
    assert!(wh1.contains(&"ESTABLISHED".to_string()), "{wh1:?}");
    assert!(
        !gw.logs().contains(secret),
        "the webhook secret never appears in logs"
    );
}
