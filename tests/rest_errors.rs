//! Bad input over REST gets the documented status and a message naming the field; the
//! server keeps serving.
mod common;

use common::Gateway;
use serde_json::json;

async fn expect(gw: &Gateway, path: &str, body: &str, status: u16, error: &str, mentions: &str) {
    let (got, v) = gw.post(path, body).await;
    assert_eq!(got, status, "{path} {body}: {v}");
    assert_eq!(v["error"], error, "{path} {body}: {v}");
    let msg = v["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains(mentions),
        "{path} {body}: message {msg:?} should mention {mentions:?}"
    );
}

#[tokio::test]
async fn bad_input_gets_precise_errors() {
    let gw = Gateway::start(&[]).await;
    let ok = json!({"callee": "10005", "sipLogin": "a", "sipDomain": "127.0.0.1", "sipPort": "9"});
    expect(
        &gw,
        "/call/startup",
        "{\"callee\": ",
        400,
        "bad_request",
        "malformed JSON",
    )
    .await;
    expect(&gw, "/call/startup", "", 400, "bad_request", "empty").await;
    expect(&gw, "/call/startup", "[1,2]", 400, "bad_request", "").await;
    expect(
        &gw,
        "/call/startup",
        r#"{"sipLogin":"a","sipDomain":"d"}"#,
        400,
        "bad_request",
        "callee",
    )
    .await;
    expect(
        &gw,
        "/call/startup",
        r#"{"callee":"1","sipLogin":"a"}"#,
        400,
        "bad_request",
        "sipDomain",
    )
    .await;
    expect(
        &gw,
        "/call/startup",
        r#"{"callee":"sip:a b@c","sipLogin":"a","sipDomain":"d"}"#,
        400,
        "bad_request",
        "callee",
    )
    .await;
    expect(
        &gw,
        "/call/startup",
        r#"{"callee":"1","sipLogin":"a","sipDomain":"d","sipPort":"abc"}"#,
        400,
        "bad_request",
        "sipPort",
    )
    .await;
    expect(
        &gw,
        "/call/startup",
        r#"{"callee":"1","sipLogin":"a","sipDomain":"d","hasVideo":7}"#,
        400,
        "bad_request",
        "hasVideo",
    )
    .await;
    expect(
        &gw,
        "/call/startup",
        r#"{"callee":5,"sipLogin":"a","sipDomain":"d"}"#,
        400,
        "bad_request",
        "callee",
    )
    .await;
    expect(
        &gw,
        "/call/startup",
        r#"{"callee":"1","sipLogin":"a","sipDomain":"d","sipTransport":"sctp"}"#,
        400,
        "bad_request",
        "sipTransport",
    )
    .await;
    expect(
        &gw,
        "/call/terminate",
        r#"{"callId":"nope"}"#,
        404,
        "not_found",
        "nope",
    )
    .await;
    expect(
        &gw,
        "/call/terminate",
        r#"{}"#,
        400,
        "bad_request",
        "callId",
    )
    .await;
    expect(
        &gw,
        "/call/find",
        r#"{"callId":"nope"}"#,
        404,
        "not_found",
        "nope",
    )
    .await;
    expect(
        &gw,
        "/stream/find",
        r#"{"name":"nope"}"#,
        404,
        "not_found",
        "nope",
    )
    .await;
    expect(
        &gw,
        "/no/such/thing",
        "{}",
        404,
        "not_found",
        "/rest-api/no/such/thing",
    )
    .await;

    // A proxy that cannot be resolved is a peer failure, reported synchronously.
    expect(
        &gw,
        "/call/startup",
        r#"{"callee":"1","sipLogin":"a","sipDomain":"d","sipOutboundProxy":"nonexistent.invalid"}"#,
        502,
        "upstream",
        "nonexistent.invalid",
    )
    .await;
    // ... and the failed startup left no call, stream or port behind.
    let (s, v) = gw.post("/stream/find_all", "").await;
    assert_eq!((s, v.as_array().map(Vec::len)), (200, Some(0)), "{v}");

    // Duplicate callId while the first call is alive (it is sent to a port nobody answers).
    let mut first = ok.clone();
    first["callId"] = json!("dup1");
    let (s, v) = gw.post_json("/call/startup", first.clone()).await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = gw.post_json("/call/startup", first).await;
    assert_eq!(s, 409, "{v}");
    assert!(v["message"].as_str().unwrap().contains("dup1"));
    // Same stream name from another call.
    let mut other = ok.clone();
    other["callId"] = json!("dup2");
    other["toStream"] = json!("dup1");
    let (s, v) = gw.post_json("/call/startup", other).await;
    assert_eq!(s, 409, "{v}");
    assert!(v["message"].as_str().unwrap().contains("toStream"), "{v}");

    // Still serving.
    let (s, v) = gw.post("/call/find_all", "").await;
    assert_eq!(s, 200, "{v}");
    assert!(v.as_array().unwrap().iter().any(|c| c["callId"] == "dup1"));
    let (s, _) = gw
        .post_json("/call/terminate", json!({"callId": "dup1"}))
        .await;
    assert_eq!(s, 200);
}

#[tokio::test]
async fn api_keys_are_enforced() {
    let gw = Gateway::start(&[("api_keys", "first-key-1,second-key-2".to_string())]).await;
    let (s, v) = gw.post("/call/find_all", "").await;
    assert_eq!(s, 401, "{v}");
    let r = reqwest::Client::new()
        .post(format!("{}/rest-api/call/find_all", gw.rest))
        .header("Authorization", "Bearer second-key-2")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // /health stays open for load balancers.
    assert_eq!(
        reqwest::get(format!("{}/health", gw.rest))
            .await
            .unwrap()
            .status(),
        200
    );
}

/// The limits of issue 16 item 10, each with its status and the setting named, and the
/// gateway fine afterwards: a body over `api_max_body_kb` (413, REST and WHEP), a request
/// longer than `api_request_timeout_s` (503), a stream at `stream_max_readers` (503).
#[tokio::test]
async fn limits_answer_413_and_503_naming_the_setting() {
    let gw = Gateway::start(&[
        ("api_max_body_kb", "4".to_string()),
        ("api_request_timeout_s", "1".to_string()),
        ("stream_max_readers", "2".to_string()),
    ])
    .await;
    let big = format!(
        "{{\"callee\":\"sip:a@127.0.0.1\",\"sipLogin\":\"x\",\"sipDomain\":\"d\",\"pad\":\"{}\"}}",
        "x".repeat(5000)
    );
    let (s, v) = gw.post("/call/startup", &big).await;
    assert_eq!(s, 413, "{v}");
    assert!(v["message"].to_string().contains("api_max_body_kb"), "{v}");
    let r = reqwest::Client::new()
        .post(format!("{}/whep/x", gw.rest))
        .header("content-type", "application/sdp")
        .body("v=0\r\n".repeat(1200))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);

    // A call that rings nowhere: its stream exists, with no media.
    let port = common::free_udp_port();
    let (s, v) = gw
        .post_json("/call/startup", common::startup_body("lim1", port, "udp"))
        .await;
    assert_eq!(s, 200, "{v}");
    let t0 = std::time::Instant::now();
    let r = reqwest::get(format!("{}/hls/lim1_stream/index.m3u8", gw.rest))
        .await
        .unwrap();
    let waited = t0.elapsed();
    assert_eq!(r.status(), 503);
    let body = r.text().await.unwrap();
    assert!(body.contains("api_request_timeout_s"), "{body}");
    assert!(waited < std::time::Duration::from_secs(3), "{waited:?}");

    // The HLS output stays as one reader; a recording is the second; a push the third.
    let (s, v) = gw
        .post_json("/stream/startRecording", json!({"name": "lim1_stream"}))
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = gw
        .post_json(
            "/push/startup",
            json!({"streamName": "lim1_stream", "rtmpUrl": "rtmp://127.0.0.1:9/live"}),
        )
        .await;
    assert_eq!(s, 503, "{v}");
    assert!(
        v["message"].to_string().contains("stream_max_readers"),
        "{v}"
    );

    // Nothing else disturbed.
    let (s, v) = gw.post_json("/call/find", json!({"callId": "lim1"})).await;
    assert_eq!(s, 200, "{v}");
    let (s, _) = gw
        .post_json("/call/terminate", json!({"callId": "lim1"}))
        .await;
    assert_eq!(s, 200);
    assert_eq!(
        reqwest::get(format!("{}/health", gw.rest))
            .await
            .unwrap()
            .status(),
        200
    );
}
