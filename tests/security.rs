//! API security (issue 16, item 6) against the real binary: keys with scopes over REST and
//! JSON-RPC, stream tokens for WHEP and HLS, the per-key call startup limit, CORS, the refusal
//! to listen publicly without keys, SIP header injection refused, and no secret in any answer,
//! event or log line.

mod common;

use std::time::{Duration, Instant};

use common::{startup_body, Gateway, Sipp};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

const T: Duration = Duration::from_secs(20);
const READER: &str = "reader-key-0001";
const CONTROL: &str = "control-key-0002";
const ADMIN: &str = "admin-key-0003";
const TOKEN_SECRET: &str = "token-secret-0004";
const HOOK_SECRET: &str = "hook-secret-0005";
const SIP_PASSWORD: &str = "s3cret-Pa55";

struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: String,
}

/// Every answer the test got, to grep for secrets at the end.
#[derive(Default)]
struct Seen(Vec<String>);

impl Seen {
    async fn send(&mut self, req: reqwest::RequestBuilder) -> Answer {
        let r = req.send().await.expect("request");
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let body = r.text().await.unwrap_or_default();
        self.0.push(format!("{headers:?} {body}"));
        Answer {
            status,
            headers,
            body,
        }
    }
}

fn post(gw: &Gateway, path: &str, key: Option<&str>, body: Value) -> reqwest::RequestBuilder {
    let r = reqwest::Client::new()
        .post(format!("{}/rest-api{path}", gw.rest))
        .json(&body);
    match key {
        Some(k) => r.header("authorization", format!("Bearer {k}")),
        None => r,
    }
}

fn get(gw: &Gateway, path: &str, key: Option<&str>) -> reqwest::RequestBuilder {
    let r = reqwest::Client::new().get(format!("{}{path}", gw.rest));
    match key {
        Some(k) => r.header("x-api-key", k),
        None => r,
    }
}

/// One JSON-RPC request on a new connection opened with `key`.
async fn rpc(gw: &Gateway, key: &str, method: &str, params: Value) -> Value {
    let mut req = format!("{}/ws", gw.rest.replace("http://", "ws://"))
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {key}").parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.expect("ws");
    let msg = json!({"jsonrpc": "2.0", "id": 7, "method": method, "params": params});
    ws.send(Message::Text(msg.to_string().into()))
        .await
        .unwrap();
    let deadline = Instant::now() + T;
    loop {
        let m = tokio::time::timeout(T, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let Message::Text(t) = m {
            let v: Value = serde_json::from_str(&t).unwrap();
            if v["id"] == 7 {
                return v;
            }
        }
        assert!(Instant::now() < deadline);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_scopes_tokens_rate_limits_cors_and_no_secret_anywhere() {
    let (hook, mut events) = common::webhook().await;
    let gw = Gateway::start(&[
        (
            "api_keys",
            format!("{READER}:read, {CONTROL}:control, {ADMIN}"),
        ),
        ("api_token_secret", TOKEN_SECRET.into()),
        ("api_call_startup_per_minute", "2".into()),
        ("api_cors_origins", "https://ops.example.com".into()),
        ("webhook_url", hook),
        ("webhook_secret", HOOK_SECRET.into()),
    ])
    .await;
    let mut seen = Seen::default();

    // No key, a wrong key: 401. /health stays open (probes).
    for key in [None, Some("not-a-key-at-all")] {
        let a = seen.send(post(&gw, "/call/find_all", key, json!({}))).await;
        assert_eq!(a.status, 401, "{}", a.body);
        assert_eq!(seen.send(get(&gw, "/metrics", key)).await.status, 401);
        assert_eq!(seen.send(get(&gw, "/events", key)).await.status, 401);
    }
    assert_eq!(seen.send(get(&gw, "/health", None)).await.status, 200);

    // read: finds, not control. control: calls. admin: downloads.
    let a = seen
        .send(post(&gw, "/call/find_all", Some(READER), json!({})))
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let mut sipp = Sipp::uas("uas_pcmu_stream.xml", "udp", false);
    let body = startup_body("sec1", sipp.port, "udp");
    let a = seen
        .send(post(&gw, "/call/startup", Some(READER), body.clone()))
        .await;
    assert_eq!(a.status, 403, "{}", a.body);
    assert!(a.body.contains("scope read"), "{}", a.body);
    let a = seen
        .send(post(&gw, "/call/startup", Some(CONTROL), body))
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let deadline = Instant::now() + T;
    loop {
        let a = seen
            .send(post(
                &gw,
                "/call/find",
                Some(READER),
                json!({"callId": "sec1"}),
            ))
            .await;
        if a.body.contains("\"status\":\"ESTABLISHED\"") {
            break;
        }
        assert!(Instant::now() < deadline, "{}", a.body);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let a = seen
        .send(get(&gw, "/recordings/none.mp4", Some(CONTROL)))
        .await;
    assert_eq!(a.status, 403, "{}", a.body);
    let a = seen
        .send(get(&gw, "/recordings/none.mp4", Some(ADMIN)))
        .await;
    assert_eq!(a.status, 404, "past the key check: {}", a.body);

    // The same scopes over JSON-RPC.
    let v = rpc(&gw, READER, "call/find_all", json!({})).await;
    assert!(v["result"].is_array(), "{v}");
    let v = rpc(&gw, READER, "CallEnd", json!({"callid": "sec1"})).await;
    assert_eq!(v["error"]["code"], -32013, "{v}");
    assert_eq!(v["error"]["data"]["status"], 403, "{v}");

    // Header injection in user-supplied SIP headers.
    let mut inj = startup_body("sec-inj", sipp.port, "udp");
    inj["sipHeaders"] = json!({"X-Note": "hi\r\nBYE sip:victim@x SIP/2.0"});
    let a = seen
        .send(post(&gw, "/call/startup", Some(ADMIN), inj))
        .await;
    assert_eq!(a.status, 400, "{}", a.body);
    assert!(a.body.contains("sipHeaders"), "{}", a.body);
    let a = seen
        .send(post(
            &gw,
            "/siprec/start",
            Some(ADMIN),
            json!({"callId": "sec1", "srs": "sip:127.0.0.1:9", "headers": "X-A: 1\r\nVia: SIP/2.0/UDP evil\r\n"}),
        ))
        .await;
    assert_eq!(a.status, 400, "{}", a.body);
    let a = seen
        .send(post(
            &gw,
            "/media/send_to_uri",
            Some(ADMIN),
            json!({"callId": "sec1", "uri": "sip:x@127.0.0.1:9", "headers": {"X-A": "1\nCSeq: 1 BYE"}}),
        ))
        .await;
    assert_eq!(a.status, 400, "{}", a.body);

    // The call startup limit: 2 a minute for the control key (one used above), then 429.
    let a = seen
        .send(post(
            &gw,
            "/call/startup",
            Some(CONTROL),
            startup_body("sec2", 9, "udp"),
        ))
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let a = seen
        .send(post(
            &gw,
            "/call/startup",
            Some(CONTROL),
            startup_body("sec3", 9, "udp"),
        ))
        .await;
    assert_eq!(a.status, 429, "{}", a.body);
    let after: u64 = a.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=30).contains(&after), "{after}");
    // The admin key has its own budget.
    let a = seen
        .send(post(
            &gw,
            "/call/startup",
            Some(ADMIN),
            startup_body("sec4", 9, "udp"),
        ))
        .await;
    assert_eq!(a.status, 200, "{}", a.body);

    // Stream tokens: HLS with ?token= (the playlist's URIs carry it), WHEP with Bearer.
    let a = seen
        .send(post(
            &gw,
            "/stream/token",
            Some(CONTROL),
            json!({"name": "sec1_stream", "ttlSeconds": 600}),
        ))
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let t: Value = serde_json::from_str(&a.body).unwrap();
    let token = t["token"].as_str().unwrap().to_string();
    assert_eq!(
        t["hlsUrl"],
        format!("/hls/sec1_stream/index.m3u8?token={token}")
    );
    let a = seen
        .send(post(
            &gw,
            "/stream/token",
            Some(READER),
            json!({"name": "sec1_stream"}),
        ))
        .await;
    assert_eq!(a.status, 403, "issuing tokens is control");
    let hls = format!("/hls/sec1_stream/index.m3u8?token={token}");
    let a = seen.send(get(&gw, &hls, None)).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(
        a.body.contains(&format!("init.mp4?token={token}\"")),
        "{}",
        a.body
    );
    let seg = a
        .body
        .lines()
        .find(|l| l.starts_with("seg"))
        .unwrap()
        .to_string();
    let a = seen
        .send(get(&gw, &format!("/hls/sec1_stream/{seg}"), None))
        .await;
    assert_eq!(a.status, 200);
    let a = seen
        .send(get(&gw, "/hls/sec1_stream/index.m3u8", None))
        .await;
    assert_eq!(a.status, 401, "{}", a.body);
    let a = seen
        .send(get(
            &gw,
            &format!("/hls/sec2_stream/index.m3u8?token={token}"),
            None,
        ))
        .await;
    assert_eq!(a.status, 401, "a token is for one stream: {}", a.body);
    let whep = |auth: String| {
        reqwest::Client::new()
            .post(format!("{}/whep/sec1_stream", gw.rest))
            .header("content-type", "application/sdp")
            .header("authorization", auth)
            .body("not sdp")
    };
    let a = seen.send(whep(format!("Bearer {token}"))).await;
    assert_eq!(a.status, 400, "past the token check: {}", a.body);
    let a = seen.send(whep("Bearer 99.00".into())).await;
    assert_eq!(a.status, 401, "{}", a.body);

    // CORS for the configured origin only; preflights need no key.
    let pre = |origin: &str| {
        reqwest::Client::new()
            .request(
                reqwest::Method::OPTIONS,
                format!("{}/rest-api/call/startup", gw.rest),
            )
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization, content-type",
            )
    };
    let a = seen.send(pre("https://ops.example.com")).await;
    assert_eq!(a.status, 204);
    assert_eq!(
        a.headers["access-control-allow-origin"],
        "https://ops.example.com"
    );
    assert!(a.headers["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .contains("authorization"));
    let a = seen.send(pre("https://evil.example.com")).await;
    assert!(a.headers.get("access-control-allow-origin").is_none());
    let a = seen
        .send(
            post(&gw, "/call/find_all", Some(READER), json!({}))
                .header("origin", "https://ops.example.com"),
        )
        .await;
    assert_eq!(
        a.headers["access-control-allow-origin"],
        "https://ops.example.com"
    );

    let a = seen
        .send(post(
            &gw,
            "/call/terminate",
            Some(CONTROL),
            json!({"callId": "sec1"}),
        ))
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(sipp.wait_async(T).await, Some(0), "{}", sipp.messages());

    // No secret in any answer, webhook or log line.
    let mut hooks = Vec::new();
    tokio::time::sleep(Duration::from_millis(500)).await;
    while let Ok(v) = events.try_recv() {
        hooks.push(v.to_string());
    }
    assert!(hooks.len() >= 3, "{hooks:?}");
    let logs = gw.logs();
    for secret in [
        READER,
        CONTROL,
        ADMIN,
        TOKEN_SECRET,
        HOOK_SECRET,
        SIP_PASSWORD,
    ] {
        for (what, text) in seen
            .0
            .iter()
            .map(|s| ("an answer", s))
            .chain(hooks.iter().map(|s| ("a webhook", s)))
            .chain(std::iter::once(("the log", &logs)))
        {
            assert!(!text.contains(secret), "{secret} in {what}: {text}");
        }
    }
    eprintln!(
        "checked {} answers, {} webhooks and {} log lines for 6 secrets",
        seen.0.len(),
        hooks.len(),
        logs.lines().count()
    );
}

#[tokio::test]
async fn a_public_rest_address_without_keys_is_refused() {
    let out = tokio::task::spawn_blocking(|| {
        std::process::Command::new(env!("CARGO_BIN_EXE_sipstream"))
            .args([
                "--config",
                concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/properties/sipstream.properties"
                ),
            ])
            .args(["--set", "rest_address=0.0.0.0", "--set", "sip_port=0"])
            .args(["--set", &format!("rest_port={}", common::free_tcp_port())])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "it started: {err}");
    assert!(
        err.contains("api_keys") && err.contains("rest_insecure_bind"),
        "{err}"
    );
}
