//! `log_format=json`: every line is one JSON object, and every line about a call (SIP
//! dialog, call layer, media, recording) carries that call's `call_id`, whether as a field
//! of the line or of its `call` span.
mod common;

use std::time::Duration;

use common::{Gateway, Sipp};
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(15);

/// A call as a user writes one: the callee's URI with its host and port, nothing else routed.
fn call_to(call_id: &str, port: u16) -> serde_json::Value {
    serde_json::json!({"callId": call_id, "callee": format!("sip:answer@127.0.0.1:{port}"),
        "sipLogin": "alice", "sipDomain": "127.0.0.1"})
}

#[tokio::test]
async fn json_logs_name_the_call_on_every_line_of_it() {
    let gw = Gateway::start(&[
        ("log_format", "json".to_string()),
        ("log_level", "info".to_string()),
    ])
    .await;
    let mut callee = Sipp::uas("uas_pcmu_stream.xml", "udp", false);
    let mut body = call_to("jl1", callee.port);
    body["record"] = json!(true);
    let (s, v) = gw.post_json("/call/startup", body).await;
    assert_eq!(s, 200, "{v}");
    gw.wait_status("jl1", &["ESTABLISHED"], T).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (s, _) = gw
        .post_json("/call/terminate", json!({"callId": "jl1"}))
        .await;
    assert_eq!(s, 200);
    gw.wait_status("jl1", &["FINISH"], T).await;
    assert_eq!(callee.wait_async(T).await, Some(0));
    tokio::time::sleep(Duration::from_millis(300)).await;

    let logs = gw.logs();
    let mut of_calls = 0;
    let mut missing = Vec::new();
    for line in logs.lines().filter(|l| !l.trim().is_empty()) {
        let v: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        assert!(
            v["timestamp"].is_string() && v["level"].is_string(),
            "{line}"
        );
        let target = v["target"].as_str().unwrap_or_default();
        let about_a_call = [
            "sipstream::sip::ua",
            "sipstream::call",
            "sipstream::rtp",
            "sipstream::record",
        ]
        .iter()
        .any(|t| target.starts_with(t))
            && v["account"].is_null();
        if !about_a_call {
            continue;
        }
        of_calls += 1;
        let id = v["call_id"]
            .as_str()
            .or_else(|| v["span"]["call_id"].as_str());
        if id != Some("jl1") {
            missing.push(line.to_string());
        }
    }
    assert!(of_calls >= 8, "lines about the call: {of_calls}\n{logs}");
    assert!(
        missing.is_empty(),
        "lines about the call without its call_id:\n{}",
        missing.join("\n")
    );
}
