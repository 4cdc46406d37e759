//! End-to-end calls against sipp on 127.0.0.1: the gateway binary places real SIP calls and
//! the callee's RTP becomes a stream.
mod common;

use std::time::Duration;

use common::{startup_body, Gateway, Sipp};
use serde_json::json;

const T: Duration = Duration::from_secs(15);

fn track_packets(stream: &serde_json::Value) -> u64 {
    stream["tracks"][0]["packets"].as_u64().unwrap_or(0)
}

async fn answered_call_streams(scenario: &str, transport: &str, alaw: bool, codec: &str) {
    let gw = Gateway::start(&[]).await;
    let mut sipp = Sipp::uas(scenario, transport, alaw);
    let id = format!("c-{}", scenario.replace(['.', '_'], "-"));
    let (status, call) = gw
        .post_json("/call/startup", startup_body(&id, sipp.port, transport))
        .await;
    assert_eq!(status, 200, "{call}");
    assert!(
        ["PENDING", "TRYING"].contains(&call["status"].as_str().unwrap()),
        "{call}"
    );
    assert!(
        call.to_string().find("s3cret").is_none(),
        "password leaked: {call}"
    );

    let call = gw.wait_status(&id, &["ESTABLISHED"], T).await;
    assert_eq!(call["sipStatus"], 200);
    let stream_name = format!("{id}_stream");
    // The callee's media becomes the stream; its counters grow while the callee talks.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let s1 = gw.stream(&stream_name).await.expect("stream exists");
    assert_eq!(s1["tracks"][0]["codec"], codec, "{s1}");
    assert_eq!(s1["callId"], id.as_str());
    if codec != "opus" {
        let p1 = track_packets(&s1);
        assert!(p1 > 20, "few packets: {s1}");
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let s2 = gw.stream(&stream_name).await.unwrap();
        let p2 = track_packets(&s2);
        assert!(p2 >= p1 + 30, "counters do not grow: {p1} -> {p2}");
        assert!(s2["tracks"][0]["bytes"].as_u64().unwrap() >= p2 * 160);
    }
    let call = gw.call(&id).await;
    let leg = &call["legs"][0]["tracks"][0];
    assert_eq!(leg["codec"], codec, "{call}");
    assert!(
        leg["packetsSent"].as_u64().unwrap() > 10,
        "gateway sends silence: {call}"
    );

    let (status, _) = gw.post_json("/call/terminate", json!({"callId": id})).await;
    assert_eq!(status, 200);
    let call = gw.wait_status(&id, &["FINISH"], T).await;
    assert!(call["endedAt"].as_u64().is_some());
    assert_eq!(
        sipp.wait(T),
        Some(0),
        "sipp saw a clean call:\n{}",
        sipp.messages()
    );
    // A stream ends when its call ends.
    assert!(gw.stream(&stream_name).await.is_none());
    assert!(!gw.logs().contains("s3cret-Pa55"), "password in the logs");
}

#[tokio::test]
async fn pcmu_call_becomes_a_stream_and_terminate_sends_bye() {
    answered_call_streams("uas_pcmu_stream.xml", "udp", false, "PCMU").await;
}

#[tokio::test]
async fn pcmu_call_over_tcp() {
    answered_call_streams("uas_pcmu_stream.xml", "tcp", false, "PCMU").await;
}

#[tokio::test]
async fn pcma_answer_gives_a_pcma_stream() {
    answered_call_streams("uas_pcma_stream.xml", "udp", true, "PCMA").await;
}

#[tokio::test]
async fn opus_answer_with_its_own_payload_type() {
    answered_call_streams("uas_opus_answer.xml", "udp", false, "opus").await;
}

#[tokio::test]
async fn busy_callee_gives_busy() {
    let gw = Gateway::start(&[]).await;
    let mut sipp = Sipp::uas("uas_busy.xml", "udp", false);
    let (status, _) = gw
        .post_json("/call/startup", startup_body("busy1", sipp.port, "udp"))
        .await;
    assert_eq!(status, 200);
    let call = gw.wait_status("busy1", &["BUSY"], T).await;
    assert_eq!(call["sipStatus"], 486);
    assert_eq!(sipp.wait(T), Some(0), "{}", sipp.messages());
    assert!(gw.stream("busy1_stream").await.is_none());
}

#[tokio::test]
async fn terminate_while_ringing_sends_cancel() {
    let gw = Gateway::start(&[]).await;
    let mut sipp = Sipp::uas("uas_ring_cancel.xml", "udp", false);
    let (status, _) = gw
        .post_json("/call/startup", startup_body("ring1", sipp.port, "udp"))
        .await;
    assert_eq!(status, 200);
    gw.wait_status("ring1", &["RING"], T).await;
    let (status, _) = gw
        .post_json("/call/terminate", json!({"callId": "ring1"}))
        .await;
    assert_eq!(status, 200);
    let call = gw.wait_status("ring1", &["FINISH"], T).await;
    assert_eq!(call["sipStatus"], 487, "{call}");
    assert_eq!(sipp.wait(T), Some(0), "{}", sipp.messages());
    assert!(sipp.messages().contains("CANCEL sip:10005@127.0.0.1"));
}

#[tokio::test]
async fn digest_401_is_answered_with_credentials() {
    let gw = Gateway::start(&[]).await;
    let mut sipp = Sipp::uas("uas_auth401.xml", "udp", false);
    let (status, _) = gw
        .post_json("/call/startup", startup_body("auth1", sipp.port, "udp"))
        .await;
    assert_eq!(status, 200);
    gw.wait_status("auth1", &["ESTABLISHED"], T).await;
    let (status, _) = gw
        .post_json("/call/terminate", json!({"callId": "auth1"}))
        .await;
    assert_eq!(status, 200);
    gw.wait_status("auth1", &["FINISH"], T).await;
    assert_eq!(sipp.wait(T), Some(0), "{}", sipp.messages());
    let msgs = sipp.messages();
    assert!(msgs.contains("Authorization: Digest"), "{msgs}");
    assert!(!gw.logs().contains("s3cret-Pa55"), "password in the logs");
}

#[tokio::test]
async fn wrong_password_fails_the_call_with_the_challenge_status() {
    let gw = Gateway::start(&[]).await;
    let mut sipp = Sipp::uas("uas_auth401.xml", "udp", false);
    let mut body = startup_body("auth2", sipp.port, "udp");
    body["sipPassword"] = json!("wrong");
    let (status, _) = gw.post_json("/call/startup", body).await;
    assert_eq!(status, 200);
    let call = gw.wait_status("auth2", &["FAILED"], T).await;
    assert_eq!(call["sipStatus"], 403, "{call}");
    let _ = sipp.wait(T);
}

#[tokio::test]
async fn far_end_bye_finishes_the_call() {
    let gw = Gateway::start(&[]).await;
    let mut sipp = Sipp::uas("uas_far_bye.xml", "udp", false);
    let (status, _) = gw
        .post_json("/call/startup", startup_body("farbye", sipp.port, "udp"))
        .await;
    assert_eq!(status, 200);
    gw.wait_status("farbye", &["ESTABLISHED"], T).await;
    let call = gw.wait_status("farbye", &["FINISH"], T).await;
    assert_eq!(call["reason"], "hung up by the far end", "{call}");
    assert_eq!(sipp.wait(T), Some(0), "{}", sipp.messages());
    assert!(gw.stream("farbye_stream").await.is_none());
}

#[tokio::test]
async fn unanswered_call_times_out_with_cancel() {
    let gw = Gateway::start(&[("sip_invite_timeout_s", "1".to_string())]).await;
    let mut sipp = Sipp::uas("uas_ring_cancel.xml", "udp", false);
    let (status, _) = gw
        .post_json("/call/startup", startup_body("noans", sipp.port, "udp"))
        .await;
    assert_eq!(status, 200);
    let call = gw.wait_status("noans", &["FAILED"], T).await;
    assert_eq!(call["sipStatus"], 408, "{call}");
    assert_eq!(sipp.wait(T), Some(0), "{}", sipp.messages());
}

#[tokio::test]
async fn unreachable_peer_fails_after_timer_b() {
    // T1 = 20 ms makes timer B (64·T1) 1.28 s.
    let gw = Gateway::start(&[
        ("sip_t1_ms", "20".to_string()),
        ("sip_t2_ms", "160".to_string()),
    ])
    .await;
    let dead = common::free_udp_port();
    let (status, _) = gw
        .post_json("/call/startup", startup_body("dead1", dead, "udp"))
        .await;
    assert_eq!(status, 200);
    let call = gw.wait_status("dead1", &["FAILED"], T).await;
    assert_eq!(call["sipStatus"], 408, "{call}");
    // The ports of the failed call went back to the pool.
    let health: serde_json::Value = reqwest::get(format!("{}/health", gw.rest))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["rtpPortsInUse"], 0, "{health}");
}

/// kamailio on 127.0.0.1 as registrar and proxy: REGISTER answered 401, INVITE answered 407,
/// both retried with digest credentials; the call is relayed to sipp and BYE follows the
/// Record-Route; the account is un-REGISTERed when its last call ends.
#[tokio::test]
async fn register_and_407_through_kamailio() {
    common::require("kamailio");
    let gw = Gateway::start(&[]).await;
    let mut sipp = Sipp::uas("uas_pcmu_stream.xml", "udp", false);
    let mut kam = common::Kamailio::start(sipp.port);
    let (status, v) = gw
        .post_json("/call/startup", common::kamailio_call("kam1", kam.port))
        .await;
    assert_eq!(status, 200, "{v}");
    gw.wait_status("kam1", &["ESTABLISHED"], T).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let s = gw.stream("kam1_stream").await.expect("stream");
    assert!(track_packets(&s) > 10, "{s}");
    let (status, _) = gw
        .post_json("/call/terminate", json!({"callId": "kam1"}))
        .await;
    assert_eq!(status, 200);
    gw.wait_status("kam1", &["FINISH"], T).await;
    assert_eq!(sipp.wait(T), Some(0), "{}", sipp.messages());
    let log = kam.wait_log("expires=0", T);
    assert!(
        log.contains("REGISTER-OK alice expires=600") || log.contains("REGISTER-OK alice expires="),
        "{log}"
    );
    assert!(log.contains("INVITE-AUTH-OK alice -> 10005"), "{log}");
    assert!(log.contains("IN-DIALOG BYE via loose_route"), "{log}");
    assert!(
        log.contains("REGISTER-OK alice expires=0"),
        "un-REGISTER: {log}"
    );
}

/// RFC 8760: kamailio challenges with `algorithm=SHA-256`; the gateway answers REGISTER's
/// 401 and INVITE's 407 with SHA-256 digests, and kamailio accepts them (an MD5 answer would
/// be refused).
#[tokio::test]
async fn sha256_digest_through_kamailio() {
    common::require("kamailio");
    let gw = Gateway::start(&[]).await;
    let mut sipp = Sipp::uas("uas_pcmu_stream.xml", "udp", false);
    let mut kam = common::Kamailio::start_sha256(sipp.port);
    let (status, v) = gw
        .post_json("/call/startup", common::kamailio_call("kam256", kam.port))
        .await;
    assert_eq!(status, 200, "{v}");
    gw.wait_status("kam256", &["ESTABLISHED"], T).await;
    let (status, _) = gw
        .post_json("/call/terminate", json!({"callId": "kam256"}))
        .await;
    assert_eq!(status, 200);
    gw.wait_status("kam256", &["FINISH"], T).await;
    assert_eq!(sipp.wait(T), Some(0), "{}", sipp.messages());
    let log = kam.wait_log("INVITE-AUTH-OK", T);
    assert!(log.contains("REGISTER-OK alice"), "{log}");
    assert!(log.contains("INVITE-AUTH-OK alice -> 10005"), "{log}");
}

#[tokio::test]
async fn early_media_flows_into_the_stream_before_the_answer() {
    let gw = Gateway::start(&[]).await;
    let mut sipp = Sipp::uas("uas_early_media.xml", "udp", false);
    let (status, _) = gw
        .post_json("/call/startup", startup_body("early1", sipp.port, "udp"))
        .await;
    assert_eq!(status, 200);
    gw.wait_status("early1", &["SESSION_PROGRESS"], T).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let call = gw.call("early1").await;
    assert_eq!(call["status"], "SESSION_PROGRESS", "{call}");
    assert_eq!(call["sipStatus"], 183);
    let s = gw.stream("early1_stream").await.expect("stream");
    assert!(track_packets(&s) > 20, "early media in the stream: {s}");
    gw.wait_status("early1", &["ESTABLISHED"], T).await;
    let (status, _) = gw
        .post_json("/call/terminate", json!({"callId": "early1"}))
        .await;
    assert_eq!(status, 200);
    gw.wait_status("early1", &["FINISH"], T).await;
    assert_eq!(sipp.wait(T), Some(0), "{}", sipp.messages());
}

#[tokio::test]
async fn far_end_hold_and_resume_by_reinvite_and_info_in_dialog() {
    let gw = Gateway::start(&[]).await;
    let mut sipp = Sipp::uas("uas_hold.xml", "udp", false);
    let (status, _) = gw
        .post_json("/call/startup", startup_body("hold1", sipp.port, "udp"))
        .await;
    assert_eq!(status, 200);
    gw.wait_status("hold1", &["ESTABLISHED"], T).await;
    let call = gw.wait_status("hold1", &["HOLD"], T).await;
    assert_eq!(
        call["legs"][0]["tracks"][0]["direction"], "sendonly",
        "{call}"
    );
    let call = gw.wait_status("hold1", &["ESTABLISHED"], T).await;
    assert_eq!(
        call["legs"][0]["tracks"][0]["direction"], "sendrecv",
        "{call}"
    );
    let (status, _) = gw
        .post_json("/call/terminate", json!({"callId": "hold1"}))
        .await;
    assert_eq!(status, 200);
    gw.wait_status("hold1", &["FINISH"], T).await;
    assert_eq!(sipp.wait(T), Some(0), "{}", sipp.messages());
    let msgs = sipp.messages();
    assert!(
        msgs.contains("X-Answer-Direction: a=recvonly"),
        "hold answered recvonly: {msgs}"
    );
    assert!(msgs.contains("X-Answer-Direction: a=sendrecv"), "{msgs}");
}

#[tokio::test]
async fn sigterm_hangs_up_calls_then_exits() {
    let mut gw = Gateway::start(&[]).await;
    let mut sipp = Sipp::uas("uas_pcmu_stream.xml", "udp", false);
    let (status, _) = gw
        .post_json("/call/startup", startup_body("term1", sipp.port, "udp"))
        .await;
    assert_eq!(status, 200);
    gw.wait_status("term1", &["ESTABLISHED"], T).await;
    assert!(
        gw.terminate(T),
        "gateway did not exit after SIGTERM:\n{}",
        gw.logs()
    );
    assert_eq!(
        sipp.wait(T),
        Some(0),
        "sipp got the BYE: {}",
        sipp.messages()
    );
    assert!(gw.logs().contains("stopped"));
}

/// Garbage, malformed requests, unknown dialogs and extension methods sent straight to the
/// gateway's SIP port get the RFC answer (or nothing) and are counted; the process keeps
/// serving.
#[tokio::test]
async fn sip_garbage_gets_rfc_answers_and_nothing_breaks() {
    let gw = Gateway::start(&[("inbound_calls", "reject".to_string())]).await;
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let gw_addr = format!("127.0.0.1:{}", gw.sip_port);
    let req = |method: &str, extra: &str| {
        format!(
            "{method} sip:gw@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bK{}\r\nFrom: <sip:x@y>;tag=1\r\nTo: <sip:gw@127.0.0.1>{extra}\r\nCall-ID: junk-{method}\r\nCSeq: 1 {method}\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
            common::free_tcp_port()
        )
    };
    let cases: Vec<(String, Option<&str>)> = vec![
        (req("BYE", ";tag=nodialog"), Some("SIP/2.0 481")),
        (req("OPTIONS", ""), Some("SIP/2.0 200")),
        (req("NEWMETHOD", ""), Some("SIP/2.0 501")),
        (
            req("INFO", "").replace("CSeq: 1 INFO", "CSeq: x INFO"),
            Some("SIP/2.0 400"),
        ),
        ("\u{0}\u{1}\u{2}garbage".to_string(), None),
        ("SIP/2.0 200 OK\r\n\r\n".to_string(), None),
        (String::from_utf8_lossy(&[0x80u8; 3000]).to_string(), None),
        // Last: inbound_calls=reject answers 403, retransmitted (timer G) since nobody ACKs it.
        (req("INVITE", ""), Some("SIP/2.0 403")),
    ];
    let mut buf = vec![0u8; 4096];
    for (msg, want) in &cases {
        sock.send_to(msg.as_bytes(), &gw_addr).await.unwrap();
        let mut got =
            tokio::time::timeout(Duration::from_millis(500), sock.recv_from(&mut buf)).await;
        // An INVITE gets 100 Trying first; its final answer follows.
        if matches!(&got, Ok(Ok((n, _))) if buf[..*n].starts_with(b"SIP/2.0 100")) {
            got = tokio::time::timeout(Duration::from_millis(500), sock.recv_from(&mut buf)).await;
        }
        match (want, got) {
            (Some(w), Ok(Ok((n, _)))) => {
                let text = String::from_utf8_lossy(&buf[..n]);
                assert!(text.starts_with(w), "{msg:?} -> {text}");
            }
            (None, Err(_)) => {}
            (w, g) => panic!("{msg:?}: wanted {w:?}, got {g:?}"),
        }
    }
    let health: serde_json::Value = reqwest::get(format!("{}/health", gw.rest))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok");
    assert!(
        health["sip"]["malformed"].as_u64().unwrap() >= 4,
        "{health}"
    );
    assert!(
        health["sip"]["strayResponses"].as_u64().unwrap()
            + health["sip"]["malformed"].as_u64().unwrap()
            >= 5,
        "{health}"
    );
}

/// Every status change is POSTed to the webhook as a WCS-style CallStatusEvent.
#[tokio::test]
async fn call_status_events_reach_the_webhook() {
    let (url, mut rx) = common::webhook().await;
    let gw = Gateway::start(&[("webhook_url", url)]).await;
    let mut sipp = Sipp::uas("uas_busy.xml", "udp", false);
    let (status, _) = gw
        .post_json("/call/startup", startup_body("hook1", sipp.port, "udp"))
        .await;
    assert_eq!(status, 200);
    let mut statuses = Vec::new();
    while let Ok(Some(ev)) = tokio::time::timeout(T, rx.recv()).await {
        if ev["type"] == "CallStatusEvent" && ev["callId"] == "hook1" {
            statuses.push(ev["status"].as_str().unwrap().to_string());
            if ev["status"] == "BUSY" {
                assert_eq!(ev["sipStatus"], 486);
                break;
            }
        }
    }
    assert_eq!(
        statuses.last().map(String::as_str),
        Some("BUSY"),
        "{statuses:?}"
    );
    assert!(
        statuses.contains(&"PENDING".to_string()) || statuses.contains(&"TRYING".to_string()),
        "{statuses:?}"
    );
    let _ = sipp.wait(T);
}
