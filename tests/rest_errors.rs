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
