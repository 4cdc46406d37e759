//! Inbound calls answered by the API (`inbound_answer=api`), end to end against sipp on
//! 127.0.0.1: the call rings (180, status RING) until `/call/answer`; the caller may CANCEL
//! it (487), `/call/terminate` declines it (603), and nobody answering gets 480 after
//! `inbound_ring_timeout_s`.
mod common;

use std::time::{Duration, Instant};

use common::{Gateway, Sipp, GATEWAY_HANGS_UP};
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(15);

/// The properties of a gateway whose inbound calls ring for the API, and `extra`.
fn ringing_gateway(extra: &[(&'static str, String)]) -> Vec<(&'static str, String)> {
    let mut props = vec![("inbound_answer", "api".to_string())];
    props.extend_from_slice(extra);
    props
}

/// sipp calls the gateway with `uac_ringing.xml` and ends with `end` (after the 180).
fn ringing_uac(gw: &Gateway, user: &str, what: &str, end: &str) -> Sipp {
    Sipp::uac(
        "uac_ringing.xml",
        gw.sip_port,
        &[
            ("USER", user.to_string()),
            ("END", what.to_string()),
            ("END_BLOCK", end.to_string()),
        ],
    )
}

/// The inbound call once it rings.
async fn ringing_call(gw: &Gateway) -> Value {
    let deadline = Instant::now() + T;
    loop {
        let (_, all) = gw.post("/call/find_all", "").await;
        if let Some(c) = all.as_array().and_then(|a| {
            a.iter()
                .find(|c| c["direction"] == "inbound" && c["status"] == "RING")
        }) {
            return c.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no ringing call: {all}\n{}",
            gw.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The end block that waits for the gateway's final response `status` to the INVITE.
fn expect_final(status: u16) -> String {
    format!(r#"  <recv response="{status}"/>"#)
}

#[tokio::test]
async fn a_ringing_call_is_answered_by_the_api_and_only_then() {
    let gw = Gateway::start(&ringing_gateway(&[])).await;
    let mut sipp = Sipp::uac(
        "uac_inbound.xml",
        gw.sip_port,
        &[
            ("USER", "desk-1".to_string()),
            ("END_BLOCK", GATEWAY_HANGS_UP.to_string()),
            ("END", "waits for the gateway's BYE".to_string()),
        ],
    );
    let call = ringing_call(&gw).await;
    let id = call["callId"].as_str().unwrap().to_string();
    assert_eq!(call["sipStatus"], 180, "{call}");
    // Nobody answered: it still rings a second later, and sipp got no 200.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (_, still) = gw.post_json("/call/find", json!({"callId": id})).await;
    assert_eq!(still[0]["status"], "RING", "{still}");
    assert!(
        !sipp.messages().contains("SIP/2.0 200"),
        "{}",
        sipp.messages()
    );

    let (s, answered) = gw.post_json("/call/answer", json!({"callId": id})).await;
    assert_eq!(s, 200, "{answered}");
    let call = gw.wait_status(&id, &["ESTABLISHED"], T).await;
    assert_eq!(call["legs"][0]["tracks"][0]["codec"], "PCMU", "{call}");
    // Answered once: a second answer is a conflict, an unknown call 404.
    let (s, e) = gw.post_json("/call/answer", json!({"callId": id})).await;
    assert_eq!(s, 409, "{e}");
    assert!(e.to_string().contains("waiting for an answer"), "{e}");
    let (s, e) = gw
        .post_json("/call/answer", json!({"callId": "nope"}))
        .await;
    assert_eq!(s, 404, "{e}");
    let (s, e) = gw.post_json("/call/answer", json!({})).await;
    assert_eq!(s, 400, "{e}");
    assert!(e.to_string().contains("callId"), "names the field: {e}");

    let (s, _) = gw.post_json("/call/terminate", json!({"callId": id})).await;
    assert_eq!(s, 200);
    let call = gw.wait_status(&id, &["FINISH"], T).await;
    assert_eq!(call["sipStatus"], 200, "BYE answered: {call}");
    assert_eq!(sipp.wait(T), Some(0), "{}", sipp.messages());
}

#[tokio::test]
async fn a_ringing_call_the_caller_cancels_ends_with_487() {
    let gw = Gateway::start(&ringing_gateway(&[])).await;
    let cancel = r#"  <pause milliseconds="800"/>
  <send><![CDATA[

CANCEL sip:@USER@@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=z9hG4bK-ring-[pid]-[call_number]
From: <sip:alice@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
To: <sip:@USER@@[remote_ip]:[remote_port]>
Call-ID: [call_id]
CSeq: 1 CANCEL
Max-Forwards: 70
Content-Length: 0

]]></send>
  <recv response="200"/>
  <recv response="487"/>"#;
    let mut sipp = ringing_uac(&gw, "desk-2", "cancels", cancel);
    let call = ringing_call(&gw).await;
    let id = call["callId"].as_str().unwrap().to_string();
    let call = gw.wait_status(&id, &["FINISH"], T).await;
    assert_eq!(call["sipStatus"], 487, "{call}");
    assert_eq!(call["reason"], "cancelled by the caller", "{call}");
    assert_eq!(sipp.wait(T), Some(0), "{}", sipp.messages());
    let (s, e) = gw.post_json("/call/answer", json!({"callId": id})).await;
    assert_eq!(s, 409, "a cancelled call cannot be answered: {e}");
    assert!(gw
        .stream("desk-2")
        .await
        .is_none_or(|s| s["status"] != "PUBLISHING"));
}

#[tokio::test]
async fn a_ringing_call_the_api_terminates_is_declined_with_603() {
    let gw = Gateway::start(&ringing_gateway(&[])).await;
    let mut sipp = ringing_uac(&gw, "desk-3", "is declined", &expect_final(603));
    let call = ringing_call(&gw).await;
    let id = call["callId"].as_str().unwrap().to_string();
    let (s, _) = gw.post_json("/call/terminate", json!({"callId": id})).await;
    assert_eq!(s, 200);
    let call = gw.wait_status(&id, &["FINISH"], T).await;
    assert_eq!(call["sipStatus"], 603, "{call}");
    assert_eq!(sipp.wait(T), Some(0), "{}", sipp.messages());
}

#[tokio::test]
async fn a_ringing_call_nobody_answers_gets_480_after_the_ring_timeout() {
    let gw = Gateway::start(&ringing_gateway(&[(
        "inbound_ring_timeout_s",
        "2".to_string(),
    )]))
    .await;
    let started = Instant::now();
    let mut sipp = ringing_uac(&gw, "desk-4", "is not answered", &expect_final(480));
    let call = ringing_call(&gw).await;
    let id = call["callId"].as_str().unwrap().to_string();
    let call = gw.wait_status(&id, &["FAILED"], T).await;
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1900) && waited < Duration::from_secs(6),
        "480 after about 2 s, not {waited:?}"
    );
    assert_eq!(call["sipStatus"], 480, "{call}");
    assert_eq!(
        call["reason"], "not answered within inbound_ring_timeout_s (2 s)",
        "{call}"
    );
    assert_eq!(sipp.wait(T), Some(0), "{}", sipp.messages());
}
