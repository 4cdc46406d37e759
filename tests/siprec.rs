//! SIPREC end to end: the gateway places a call (sipp callee streaming PCMU) and records it to
//! sipp SRSs on 127.0.0.1; the SRS's answer points the media at UDP sockets of the test.
mod common;

use std::time::Duration;

use common::{startup_body, Gateway, Sipp};
use serde_json::{json, Value};
use tokio::net::UdpSocket;

const T: Duration = Duration::from_secs(15);

fn vars(sinks: &(UdpSocket, UdpSocket)) -> Vec<(&'static str, String)> {
    vec![
        ("P1", sinks.0.local_addr().unwrap().port().to_string()),
        ("P2", sinks.1.local_addr().unwrap().port().to_string()),
    ]
}

/// Counts RTP packets arriving in `window`; returns (count, payload types seen).
async fn count_rtp(sock: &UdpSocket, window: Duration) -> (usize, Vec<u8>) {
    let mut buf = [0u8; 2048];
    let mut n = 0;
    let mut pts = Vec::new();
    let deadline = tokio::time::Instant::now() + window;
    while let Ok(Ok((len, _))) = tokio::time::timeout_at(deadline, sock.recv_from(&mut buf)).await {
        if len >= 12 {
            n += 1;
            let pt = buf[1] & 0x7f;
            if !pts.contains(&pt) {
                pts.push(pt);
            }
        }
    }
    (n, pts)
}

async fn drain(sock: &UdpSocket) {
    let mut buf = [0u8; 2048];
    while let Ok(Ok(_)) =
        tokio::time::timeout(Duration::from_millis(30), sock.recv_from(&mut buf)).await
    {}
}

async fn established_call(gw: &Gateway, id: &str) -> Sipp {
    let sipp = Sipp::uas("uas_pcmu_stream.xml", "udp", false);
    let (status, v) = gw
        .post_json("/call/startup", startup_body(id, sipp.port, "udp"))
        .await;
    assert_eq!(status, 200, "{v}");
    gw.wait_status(id, &["ESTABLISHED"], T).await;
    sipp
}

async fn find(gw: &Gateway, call_id: &str) -> Vec<Value> {
    let (s, v) = gw
        .post_json("/siprec/find", json!({"callId": call_id}))
        .await;
    assert_eq!(s, 200, "{v}");
    v.as_array().unwrap().clone()
}

async fn wait_state(gw: &Gateway, call_id: &str, instance: &str, want: &str) -> Value {
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let all = find(gw, call_id).await;
        if let Some(s) = all.iter().find(|s| s["instance"] == instance) {
            if s["state"] == want {
                return s.clone();
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{instance} never {want}: {all:?}\n{}",
            gw.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The metadata XML out of the INVITE sipp logged.
fn metadata_from(messages: &str) -> String {
    let start = messages.find("<?xml").expect("metadata in the INVITE");
    let end = messages[start..]
        .find("</recording>")
        .expect("end of metadata")
        + start
        + "</recording>".len();
    messages[start..end].to_string()
}

fn validate_rfc7865(xml: &str) {
    common::require("xmllint");
    let dir = common::tempdir();
    let f = dir.path().join("metadata.xml");
    std::fs::write(&f, xml).unwrap();
    let schema = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/rfc7865.xsd");
    let out = std::process::Command::new("xmllint")
        .args(["--noout", "--schema", schema, f.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "metadata does not validate against RFC 7865:\n{}\n{xml}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn records_to_srs_with_valid_metadata_pause_resume_and_stop() {
    let (url, mut events) = common::webhook().await;
    let gw = Gateway::start(&[("webhook_url", url)]).await;
    let mut callee = established_call(&gw, "rec1").await;
    let sinks = common::rtp_sink_pair().await;
    let mut srs = Sipp::uas_with("srs_record.xml", "udp", false, &vars(&sinks));
    let (s, v) = gw
        .post_json(
            "/siprec/start",
            json!({
                "callId": "rec1",
                "srs": format!("sip:127.0.0.1:{}", srs.port),
                "group": "sales",
                "groupCustomExtension": "<callcenterID>17</callcenterID>",
                "sessionCustomExtension": "<callcenterCode>dfgh3q45</callcenterCode>",
                "headers": "X-My-Custom-Hdr: 1\r\n",
            }),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let session = wait_state(&gw, "rec1", "default", "RECORDING").await;
    assert!(session["server"]
        .as_str()
        .unwrap()
        .contains(&srs.port.to_string()));
    let start = common::wait_event(&mut events, "E_SIPREC_START", T).await;
    assert_eq!(start["dlg_id"], "rec1");
    assert_eq!(start["session_id"], session["sessionId"]);
    assert_eq!(start["instance"], "default");
    assert!(
        start["dlg_callid"].as_str().is_some_and(|c| !c.is_empty()),
        "{start}"
    );
    assert!(
        start["callid"]
            .as_str()
            .is_some_and(|c| !c.is_empty() && c != start["dlg_callid"]),
        "{start}"
    );

    // Both directions reach the SRS's ports, in the call's codec (PCMU).
    let (n1, pts1) = count_rtp(&sinks.0, Duration::from_millis(600)).await;
    let (n2, pts2) = count_rtp(&sinks.1, Duration::from_millis(600)).await;
    assert!(n1 > 15 && n2 > 15, "callee stream {n1}, caller stream {n2}");
    assert_eq!((pts1, pts2), (vec![0], vec![0]));

    // Pause: re-INVITE a=inactive, and no RTP while paused.
    let (s, v) = gw
        .post_json("/siprec/pause", json!({"callId": "rec1"}))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v[0]["state"], "PAUSED");
    tokio::time::sleep(Duration::from_millis(100)).await;
    drain(&sinks.0).await;
    drain(&sinks.1).await;
    let (p1, _) = count_rtp(&sinks.0, Duration::from_millis(500)).await;
    let (p2, _) = count_rtp(&sinks.1, Duration::from_millis(500)).await;
    assert_eq!((p1, p2), (0, 0), "RTP while paused");
    let (s, v) = gw
        .post_json("/siprec/pause", json!({"callId": "rec1"}))
        .await;
    assert_eq!(s, 200, "pausing a paused session is a no-op: {v}");
    let (s, v) = gw
        .post_json("/siprec/resume", json!({"callId": "rec1"}))
        .await;
    assert_eq!(s, 200, "{v}");
    let (r1, _) = count_rtp(&sinks.0, Duration::from_millis(500)).await;
    assert!(r1 > 10, "RTP after resume: {r1}");

    let (s, v) = gw
        .post_json(
            "/siprec/stop",
            json!({"callId": "rec1", "instance": "default"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let stopped = wait_state(&gw, "rec1", "default", "STOPPED").await;
    assert!(stopped["packetsForked"].as_u64().unwrap() > 30, "{stopped}");
    let stop = common::wait_event(&mut events, "E_SIPREC_STOP", T).await;
    assert_eq!(stop["session_id"], start["session_id"]);
    assert_eq!(
        srs.wait(T),
        Some(0),
        "SRS saw the whole dialog:\n{}",
        srs.messages()
    );

    let msgs = srs.messages();
    assert!(
        msgs.contains("X-Seen: siprec +sip.src recording-session"),
        "{msgs}"
    );
    assert!(msgs.contains("X-Paused: a=inactive"), "{msgs}");
    assert!(msgs.contains("X-Resumed: a=sendonly"), "{msgs}");
    assert!(msgs.contains("X-My-Custom-Hdr: 1"));
    assert!(msgs.contains("Content-Type: multipart/mixed;boundary="));
    assert!(msgs.contains("Content-Type: application/rs-metadata+xml"));
    assert!(
        msgs.contains("a=label:1") && msgs.contains("a=label:2") && msgs.contains("a=sendonly")
    );
    let xml = metadata_from(&msgs);
    assert!(
        xml.contains("<callcenterID xmlns=\"urn:sipstream:siprec:ext\">17</callcenterID>"),
        "{xml}"
    );
    validate_rfc7865(&xml);

    // The call itself is untouched.
    assert_eq!(gw.call("rec1").await["status"], "ESTABLISHED");
    let (s, _) = gw
        .post_json("/call/terminate", json!({"callId": "rec1"}))
        .await;
    assert_eq!(s, 200);
    assert_eq!(callee.wait(T), Some(0));
}

#[tokio::test]
async fn failover_from_503_to_the_next_srs_and_call_end_stops_recording() {
    let gw = Gateway::start(&[]).await;
    let mut callee = established_call(&gw, "fo1").await;
    let sinks = common::rtp_sink_pair().await;
    let mut bad = Sipp::uas("srs_503.xml", "udp", false);
    let mut good = Sipp::uas_with("srs_accept.xml", "udp", false, &vars(&sinks));
    let srs = format!("sip:127.0.0.1:{}, sip:127.0.0.1:{}", bad.port, good.port);
    let (s, v) = gw
        .post_json("/siprec/start", json!({"callId": "fo1", "srs": srs}))
        .await;
    assert_eq!(s, 200, "{v}");
    let session = wait_state(&gw, "fo1", "default", "RECORDING").await;
    assert!(
        session["server"]
            .as_str()
            .unwrap()
            .ends_with(&good.port.to_string()),
        "{session}"
    );
    assert_eq!(session["attempts"][0]["sipStatus"], 503, "{session}");
    assert_eq!(bad.wait(T), Some(0), "{}", bad.messages());
    let (n, _) = count_rtp(&sinks.0, Duration::from_millis(400)).await;
    assert!(n > 5);
    // Ending the call ends its recordings (BYE to the SRS).
    let (s, _) = gw
        .post_json("/call/terminate", json!({"callId": "fo1"}))
        .await;
    assert_eq!(s, 200);
    wait_state(&gw, "fo1", "default", "STOPPED").await;
    assert_eq!(good.wait(T), Some(0), "{}", good.messages());
    assert_eq!(callee.wait(T), Some(0));
}

#[tokio::test]
async fn skip_failover_codes_stop_the_failover() {
    let (url, mut events) = common::webhook().await;
    let gw = Gateway::start(&[("webhook_url", url)]).await;
    let _callee = established_call(&gw, "skip1").await;
    let mut refuses = Sipp::uas("srs_408.xml", "udp", false);
    let untouched = Sipp::uas("srs_accept.xml", "udp", false);
    let srs = format!(
        "sip:127.0.0.1:{}, sip:127.0.0.1:{}",
        refuses.port, untouched.port
    );
    let (s, v) = gw
        .post_json(
            "/siprec/start",
            json!({"callId": "skip1", "srs": srs, "skipFailoverCodes": "408|487"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let session = wait_state(&gw, "skip1", "default", "FAILED").await;
    assert_eq!(
        session["attempts"].as_array().unwrap().len(),
        1,
        "{session}"
    );
    assert_eq!(session["attempts"][0]["sipStatus"], 408);
    let failed = common::wait_event(&mut events, "E_SIPREC_FAILED", T).await;
    assert_eq!(failed["attempts"][0]["sipStatus"], 408, "{failed}");
    assert_eq!(refuses.wait(T), Some(0));
    assert!(
        !untouched.messages().contains("INVITE"),
        "the second SRS was tried"
    );
}

#[tokio::test]
async fn silent_srs_fails_over_after_the_transaction_timeout() {
    // T1 = 20 ms: timer B (64·T1) fires after 1.28 s.
    let gw = Gateway::start(&[("sip_t1_ms", "20".into()), ("sip_t2_ms", "160".into())]).await;
    let _callee = established_call(&gw, "silent1").await;
    let sinks = common::rtp_sink_pair().await;
    let mut good = Sipp::uas_with("srs_accept.xml", "udp", false, &vars(&sinks));
    let dead = common::free_udp_port();
    let srs = format!("sip:127.0.0.1:{dead}, sip:127.0.0.1:{}", good.port);
    let (s, v) = gw
        .post_json("/siprec/start", json!({"callId": "silent1", "srs": srs}))
        .await;
    assert_eq!(s, 200, "{v}");
    let session = wait_state(&gw, "silent1", "default", "RECORDING").await;
    assert_eq!(session["attempts"][0]["sipStatus"], 408, "{session}");
    let (s, _) = gw
        .post_json("/siprec/stop", json!({"callId": "silent1"}))
        .await;
    assert_eq!(s, 200);
    assert_eq!(good.wait(T), Some(0), "{}", good.messages());
}

#[tokio::test]
async fn two_instances_record_one_call_and_an_srs_bye_ends_only_its_session() {
    let gw = Gateway::start(&[]).await;
    let _callee = established_call(&gw, "two1").await;
    let sinks_a = common::rtp_sink_pair().await;
    let sinks_b = common::rtp_sink_pair().await;
    let mut a = Sipp::uas_with("srs_accept.xml", "udp", false, &vars(&sinks_a));
    let mut b = Sipp::uas_with("srs_bye.xml", "udp", false, &vars(&sinks_b));
    for (inst, port) in [("a", a.port), ("b", b.port)] {
        let (s, v) = gw
            .post_json(
                "/siprec/start",
                json!({"callId": "two1", "instance": inst, "srs": format!("sip:127.0.0.1:{port}")}),
            )
            .await;
        assert_eq!(s, 200, "{v}");
    }
    let (s, v) = gw
        .post_json(
            "/siprec/start",
            json!({"callId": "two1", "instance": "a", "srs": format!("sip:127.0.0.1:{}", a.port)}),
        )
        .await;
    assert_eq!(s, 409, "same instance twice: {v}");
    wait_state(&gw, "two1", "a", "RECORDING").await;
    let (s, all) = gw.post("/siprec/find", "").await;
    assert_eq!(s, 200);
    assert!(all.as_array().unwrap().len() >= 2, "{all}");
    // SRS b hangs up after 1 s: its session stops, a records on, the call is untouched.
    wait_state(&gw, "two1", "b", "STOPPED").await;
    assert_eq!(b.wait(T), Some(0), "{}", b.messages());
    assert_eq!(
        find(&gw, "two1")
            .await
            .iter()
            .find(|s| s["instance"] == "a")
            .unwrap()["state"],
        "RECORDING"
    );
    assert_eq!(gw.call("two1").await["status"], "ESTABLISHED");
    let (n, _) = count_rtp(&sinks_a.0, Duration::from_millis(300)).await;
    assert!(n > 5);
    let (s, _) = gw
        .post_json("/call/terminate", json!({"callId": "two1"}))
        .await;
    assert_eq!(s, 200);
    assert_eq!(a.wait(T), Some(0), "{}", a.messages());
}

#[tokio::test]
async fn start_before_answer_waits_then_records() {
    let gw = Gateway::start(&[]).await;
    let sinks = common::rtp_sink_pair().await;
    let mut srs = Sipp::uas_with("srs_accept.xml", "udp", false, &vars(&sinks));
    let callee = Sipp::uas("uas_early_media.xml", "udp", false);
    let (s, _) = gw
        .post_json("/call/startup", startup_body("early2", callee.port, "udp"))
        .await;
    assert_eq!(s, 200);
    gw.wait_status("early2", &["SESSION_PROGRESS"], T).await;
    let (s, v) = gw
        .post_json(
            "/siprec/start",
            json!({"callId": "early2", "srs": format!("sip:127.0.0.1:{}", srs.port)}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["state"], "WAITING");
    gw.wait_status("early2", &["ESTABLISHED"], T).await;
    wait_state(&gw, "early2", "default", "RECORDING").await;
    let (s, _) = gw
        .post_json("/call/terminate", json!({"callId": "early2"}))
        .await;
    assert_eq!(s, 200);
    assert_eq!(srs.wait(T), Some(0), "{}", srs.messages());
}

#[tokio::test]
async fn siprec_bad_input() {
    let gw = Gateway::start(&[]).await;
    let _callee = established_call(&gw, "bad1").await;
    let cases = [
        (
            json!({"callId": "nope", "srs": "sip:127.0.0.1"}),
            404,
            "nope",
        ),
        (json!({"callId": "bad1"}), 400, "srs"),
        (json!({"callId": "bad1", "srs": "sip:a b"}), 400, "srs"),
        (json!({"callId": "bad1", "srs": "http://x"}), 400, "srs"),
        (
            json!({"callId": "bad1", "srs": "sip:127.0.0.1", "caller": "<nameID aor='x'>"}),
            400,
            "caller",
        ),
        (
            json!({"callId": "bad1", "srs": "sip:127.0.0.1", "sessionCustomExtension": "</session><x>"}),
            400,
            "sessionCustomExtension",
        ),
        (
            json!({"callId": "bad1", "srs": "sip:127.0.0.1", "headers": "X-A: 1\nX-B: 2\r\n"}),
            400,
            "headers",
        ),
        (
            json!({"callId": "bad1", "srs": "sip:127.0.0.1", "headers": "X-A: 1\r\n\r\nv=0\r\n"}),
            400,
            "headers",
        ),
        (
            json!({"callId": "bad1", "srs": "sip:127.0.0.1", "skipFailoverCodes": "(("}),
            400,
            "skipFailoverCodes",
        ),
        (
            json!({"callId": "bad1", "srs": "sip:127.0.0.1", "instance": "../x"}),
            400,
            "instance",
        ),
    ];
    for (body, status, mention) in cases {
        let (s, v) = gw.post_json("/siprec/start", body.clone()).await;
        assert_eq!(s, status, "{body}: {v}");
        assert!(
            v["message"].as_str().unwrap_or("").contains(mention),
            "{body}: {v}"
        );
    }
    let (s, v) = gw
        .post_json("/siprec/stop", json!({"callId": "bad1"}))
        .await;
    assert_eq!(s, 404, "no session to stop: {v}");
    let (s, v) = gw.post_json("/siprec/pause", json!({})).await;
    assert_eq!(s, 400, "{v}");
}

/// Every metadata document in the SRS's log, in order.
fn all_metadata(messages: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = messages;
    while let Some(start) = rest.find("<?xml") {
        let Some(len) = rest[start..].find("</recording>") else {
            break;
        };
        let end = start + len + "</recording>".len();
        out.push(rest[start..end].to_string());
        rest = &rest[end..];
    }
    out
}

/// A media exchange on a recorded call is a participant of the recording: when the fork's
/// call is answered the SRS gets a re-INVITE whose metadata names its URI, what it is and
/// the stream it hears; when it ends, another with its disassociate-time. Each document
/// validates against RFC 7865, and the recording's media goes on.
#[tokio::test]
async fn a_media_exchange_joins_and_leaves_the_recording_metadata() {
    let gw = Gateway::start(&[]).await;
    let mut callee = established_call(&gw, "recx").await;
    let sinks = common::rtp_sink_pair().await;
    let mut srs = Sipp::uas_with("srs_metadata_update.xml", "udp", false, &vars(&sinks));
    let (s, v) = gw
        .post_json(
            "/siprec/start",
            json!({"callId": "recx", "srs": format!("sip:127.0.0.1:{}", srs.port)}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    wait_state(&gw, "recx", "default", "RECORDING").await;

    let qa = common::RawUas::start("PCMU", 1000.0).await;
    let qa_uri = format!("sip:qa@127.0.0.1:{}", qa.port);
    let (s, v) = gw
        .post_json(
            "/media/send_to_uri",
            json!({"callId": "recx", "uri": qa_uri, "leg": "callee"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let deadline = tokio::time::Instant::now() + T;
    while !srs
        .messages()
        .contains("X-Joined: urn:sipstream:siprec:exchange")
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no metadata update for the exchange:\n{}\n{}",
            srs.messages(),
            gw.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (s, v) = gw
        .post_json("/media/terminate", json!({"callId": "recx"}))
        .await;
    assert_eq!(s, 200, "{v}");
    while !srs.messages().contains("X-Left: disassociate-time") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no metadata update for the exchange's end:\n{}",
            srs.messages()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The recording went on through both updates (what queued before is read first).
    count_rtp(&sinks.0, Duration::from_millis(300)).await;
    let (n, _) = count_rtp(&sinks.0, Duration::from_millis(500)).await;
    assert!(n > 10, "callee stream after the updates: {n}");

    let (s, v) = gw
        .post_json("/siprec/stop", json!({"callId": "recx"}))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(srs.wait(T), Some(0), "SRS scenario:\n{}", srs.messages());
    let docs = all_metadata(&srs.messages());
    assert_eq!(docs.len(), 3, "INVITE and two updates: {docs:#?}");
    for d in &docs {
        validate_rfc7865(d);
    }
    let session_id = |d: &str| {
        let doc = roxmltree_free_session_id(d);
        assert!(!doc.is_empty(), "{d}");
        doc
    };
    assert_eq!(session_id(&docs[0]), session_id(&docs[1]), "same session");
    assert!(!docs[0].contains(&qa_uri), "{}", docs[0]);
    for d in &docs[1..] {
        assert!(d.contains(&format!("<nameID aor=\"{qa_uri}\"/>")), "{d}");
        assert!(d.contains("kind=\"send_to_uri\" leg=\"callee\""), "{d}");
    }
    assert!(!docs[1].contains("disassociate-time"), "{}", docs[1]);
    assert!(docs[2].contains("<disassociate-time>"), "{}", docs[2]);
    // The fork's party hears the callee's stream: its recv is the first m-line's stream.
    let callee_stream = stream_id_of_label(&docs[1], "1");
    assert!(
        docs[1].contains(&format!("<recv>{callee_stream}</recv>")),
        "{}",
        docs[1]
    );

    let (s, _) = gw
        .post_json("/call/terminate", json!({"callId": "recx"}))
        .await;
    assert_eq!(s, 200);
    assert_eq!(callee.wait(T), Some(0));
}

/// The session_id attribute of `<session>`.
fn roxmltree_free_session_id(xml: &str) -> String {
    let at = xml.find("<session session_id=\"").map(|i| i + 21);
    at.and_then(|i| xml[i..].find('"').map(|j| xml[i..i + j].to_string()))
        .unwrap_or_default()
}

/// The stream_id of the `<stream>` with `label`.
fn stream_id_of_label(xml: &str, label: &str) -> String {
    let mut rest = xml;
    while let Some(i) = rest.find("<stream stream_id=\"") {
        let s = &rest[i + 19..];
        let id = &s[..s.find('"').unwrap()];
        let end = s.find("</stream>").unwrap();
        if s[..end].contains(&format!("<label>{label}</label>")) {
            return id.to_string();
        }
        rest = &s[end..];
    }
    panic!("no stream labelled {label} in {xml}")
}
