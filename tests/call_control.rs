//! Call control end to end against sipp on 127.0.0.1: inbound calls answered by the gateway
//! (recorded, ended from either side, routed by the `inbound_*` properties), hold and unhold
//! by re-INVITE from the REST API, answers to the far end's re-offers (RFC 3264 subset and
//! `o=` versions), and routing by the Request-URI (RFC 3261 §8.1.2).
mod common;

use std::time::{Duration, Instant};

use common::{startup_body, Gateway, Sipp, GATEWAY_HANGS_UP, SIPP_HANGS_UP};
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(15);

fn uac(gw: &Gateway, user: &str, end: &str) -> Sipp {
    let what = if end == SIPP_HANGS_UP {
        "hangs up"
    } else {
        "waits for the gateway's BYE"
    };
    Sipp::uac(
        "uac_inbound.xml",
        gw.sip_port,
        &[
            ("USER", user.to_string()),
            ("END_BLOCK", end.to_string()),
            ("END", what.to_string()),
        ],
    )
}

/// The first inbound call the gateway lists.
async fn inbound_call(gw: &Gateway) -> Value {
    let deadline = Instant::now() + T;
    loop {
        let (_, all) = gw.post("/call/find_all", "").await;
        if let Some(c) = all
            .as_array()
            .and_then(|a| a.iter().find(|c| c["direction"] == "inbound"))
        {
            return c.clone();
        }
        assert!(Instant::now() < deadline, "no inbound call:\n{}", gw.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn packets_arrive(gw: &Gateway, stream: &str) -> u64 {
    let deadline = Instant::now() + T;
    loop {
        let n = gw
            .stream(stream)
            .await
            .and_then(|s| s["tracks"][0]["packets"].as_u64())
            .unwrap_or(0);
        if n >= 25 {
            return n;
        }
        assert!(
            Instant::now() < deadline,
            "no RTP in {stream}:\n{}",
            gw.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn inbound_call_is_answered_recorded_and_hung_up_by_the_caller() {
    let gw = Gateway::start(&[("sip_record_stream", "true".to_string())]).await;
    let mut sipp = uac(&gw, "rec-7", SIPP_HANGS_UP);
    let call = inbound_call(&gw).await;
    let id = call["callId"].as_str().unwrap().to_string();
    assert_eq!(
        call["toStream"], "rec-7",
        "inbound_stream_name={{user}}: {call}"
    );
    assert!(
        call["caller"]
            .as_str()
            .unwrap()
            .starts_with("sip:alice@127.0.0.1"),
        "{call}"
    );
    // The callId is the SIP Call-ID, made safe for ids (inbound_call_id=sip).
    let sip_call_id = call["sipCallId"].as_str().unwrap();
    assert!(!id.contains('@') && id.starts_with(sip_call_id.split('@').next().unwrap()));
    let call = gw.wait_status(&id, &["ESTABLISHED"], T).await;
    assert_eq!(call["legs"][0]["name"], "caller", "{call}");
    let track = &call["legs"][0]["tracks"][0];
    assert_eq!(
        track["codec"], "PCMU",
        "first offered codec we take: {call}"
    );
    packets_arrive(&gw, "rec-7").await;
    let call = gw.wait_status(&id, &["FINISH"], T).await;
    assert_eq!(call["reason"], "hung up by the far end", "{call}");
    assert_eq!(sipp.wait(T), Some(0), "{}", sipp.messages());
    let msgs = sipp.messages();
    assert!(
        msgs.contains("X-Subset: m=audio"),
        "answer is a subset of the offer: {msgs}"
    );
    // The recording of the inbound call is there and has the call's audio.
    let deadline = Instant::now() + T;
    let rec = loop {
        let (_, all) = gw.post("/recorder/find_all", "").await;
        let done = all.as_array().and_then(|a| {
            a.iter()
                .find(|r| r["stream"] == "rec-7" && r["state"] != "recording")
                .cloned()
        });
        if let Some(r) = done {
            break r;
        }
        assert!(Instant::now() < deadline, "no finished recording: {all}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(rec["callId"], id.as_str(), "{rec}");
    assert!(
        rec["durationMs"].as_u64().unwrap() >= 2000,
        "about 3 s of audio: {rec}"
    );
}

#[tokio::test]
async fn inbound_call_is_hung_up_by_the_api_and_other_users_are_refused() {
    let gw = Gateway::start(&[
        ("inbound_user_pattern", "rec-.*".to_string()),
        ("inbound_stream_name", "in_{user}".to_string()),
        ("inbound_call_id", "random".to_string()),
    ])
    .await;
    // A user outside the pattern: 404, no call.
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let me = sock.local_addr().unwrap();
    let invite = format!(
        "INVITE sip:other@127.0.0.1:{p} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKpat1\r\nFrom: <sip:x@{me}>;tag=1\r\nTo: <sip:other@127.0.0.1>\r\nCall-ID: pat-1\r\nCSeq: 1 INVITE\r\nContact: <sip:x@{me}>\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
        p = gw.sip_port
    );
    sock.send_to(invite.as_bytes(), ("127.0.0.1", gw.sip_port))
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let text = loop {
        let (n, _) = tokio::time::timeout(T, sock.recv_from(&mut buf))
            .await
            .unwrap()
            .unwrap();
        let text = String::from_utf8_lossy(&buf[..n]).to_string();
        if !text.starts_with("SIP/2.0 100") {
            break text;
        }
    };
    assert!(text.starts_with("SIP/2.0 404"), "{text}");

    let mut sipp = uac(&gw, "rec-9", GATEWAY_HANGS_UP);
    let call = inbound_call(&gw).await;
    let id = call["callId"].as_str().unwrap().to_string();
    assert!(id.starts_with("in-"), "inbound_call_id=random: {call}");
    assert_eq!(call["toStream"], "in_rec-9");
    gw.wait_status(&id, &["ESTABLISHED"], T).await;
    packets_arrive(&gw, "in_rec-9").await;
    // A hold of an inbound call goes to the caller as a re-INVITE too; here: unknown id.
    let (s, e) = gw.post_json("/call/hold", json!({"callId": "nope"})).await;
    assert_eq!(s, 404, "{e}");
    let (s, _) = gw.post_json("/call/terminate", json!({"callId": id})).await;
    assert_eq!(s, 200);
    let call = gw.wait_status(&id, &["FINISH"], T).await;
    assert_eq!(call["sipStatus"], 200, "BYE answered: {call}");
    assert_eq!(sipp.wait(T), Some(0), "{}", sipp.messages());
    assert!(gw
        .stream("in_rec-9")
        .await
        .is_none_or(|s| s["status"] != "PUBLISHING"));
}

#[tokio::test]
async fn hold_and_unhold_by_reinvite_from_the_api() {
    let gw = Gateway::start(&[]).await;
    let mut sipp = Sipp::uas("uas_hold_by_gateway.xml", "udp", false);
    let (status, _) = gw
        .post_json("/call/startup", startup_body("gh1", sipp.port, "udp"))
        .await;
    assert_eq!(status, 200);
    gw.wait_status("gh1", &["ESTABLISHED"], T).await;
    let (s, e) = gw
        .post_json("/call/hold", json!({"callId": "gh1", "leg": "caller"}))
        .await;
    assert_eq!(s, 400, "this call has no caller leg: {e}");
    let (s, _) = gw.post_json("/call/hold", json!({"callId": "gh1"})).await;
    assert_eq!(s, 200);
    let call = gw.wait_status("gh1", &["HOLD"], T).await;
    assert_eq!(
        call["legs"][0]["tracks"][0]["direction"], "recvonly",
        "the callee answered recvonly: {call}"
    );
    let (s, _) = gw.post_json("/call/unhold", json!({"callId": "gh1"})).await;
    assert_eq!(s, 200);
    let call = gw.wait_status("gh1", &["ESTABLISHED"], T).await;
    assert_eq!(call["legs"][0]["tracks"][0]["direction"], "sendrecv");
    let (s, _) = gw
        .post_json("/call/terminate", json!({"callId": "gh1"}))
        .await;
    assert_eq!(s, 200);
    gw.wait_status("gh1", &["FINISH"], T).await;
    assert_eq!(sipp.wait(T), Some(0), "{}", sipp.messages());
    let msgs = sipp.messages();
    assert!(
        msgs.contains("held=a=sendonly resumed=a=sendrecv"),
        "{msgs}"
    );
    // Our three offers carry versions 1, 2, 3 (RFC 3264 §8).
    let versions = origin_versions(&msgs);
    assert_eq!(versions, vec![1, 2, 3], "{msgs}");
}

/// The `o=` versions of the gateway's SDPs (origin user `-`) in sipp's trace, repeats removed.
fn origin_versions(msgs: &str) -> Vec<u64> {
    let mut out: Vec<u64> = Vec::new();
    for line in msgs.lines().filter(|l| l.starts_with("o=- ")) {
        if let Some(v) = line.split_whitespace().nth(2).and_then(|v| v.parse().ok()) {
            if out.last() != Some(&v) {
                out.push(v);
            }
        }
    }
    out
}

#[tokio::test]
async fn far_end_reoffers_get_subset_answers_with_moving_versions() {
    // uas_hold.xml holds the gateway (sendonly) and resumes it, offering PCMU only.
    let gw = Gateway::start(&[]).await;
    let mut sipp = Sipp::uas("uas_hold.xml", "udp", false);
    let (status, _) = gw
        .post_json("/call/startup", startup_body("ro1", sipp.port, "udp"))
        .await;
    assert_eq!(status, 200);
    gw.wait_status("ro1", &["HOLD"], T).await;
    gw.wait_status("ro1", &["ESTABLISHED"], T).await;
    gw.post_json("/call/terminate", json!({"callId": "ro1"}))
        .await;
    gw.wait_status("ro1", &["FINISH"], T).await;
    assert_eq!(sipp.wait(T), Some(0), "{}", sipp.messages());
    let msgs = sipp.messages();
    assert_eq!(origin_versions(&msgs), vec![1, 2, 3], "{msgs}");
    // Only the first INVITE (our offer) lists PCMA and opus; the answers list PCMU alone.
    let offers = msgs.matches("a=rtpmap:8 PCMA/8000").count();
    let answers_m = msgs.matches("RTP/AVP 0\r").count() + msgs.matches("RTP/AVP 0\n").count();
    assert!(offers >= 1, "{msgs}");
    assert!(answers_m >= 2, "answers list only PCMU: {msgs}");
}

#[tokio::test]
async fn callee_uri_port_routes_the_invite_without_an_outbound_proxy() {
    let gw = Gateway::start(&[]).await;
    let mut sipp = Sipp::uas("uas_pcmu_stream.xml", "udp", false);
    let mut body = startup_body("rt1", sipp.port, "udp");
    // As a new user writes it: the callee URI carries the port, no sipPort, no proxy.
    body["callee"] = json!(format!("sip:answer@127.0.0.1:{}", sipp.port));
    body.as_object_mut().unwrap().remove("sipPort");
    let (status, call) = gw.post_json("/call/startup", body).await;
    assert_eq!(status, 200, "{call}");
    assert_eq!(call["sipPort"], sipp.port, "next hop shown: {call}");
    gw.wait_status("rt1", &["ESTABLISHED"], T).await;
    gw.post_json("/call/terminate", json!({"callId": "rt1"}))
        .await;
    gw.wait_status("rt1", &["FINISH"], T).await;
    assert_eq!(sipp.wait(T), Some(0), "{}", sipp.messages());
}

#[tokio::test]
async fn hold_of_a_ringing_call_is_refused_and_nothing_else_changes() {
    let gw = Gateway::start(&[]).await;
    let mut sipp = Sipp::uas("uas_ring_cancel.xml", "udp", false);
    let (status, _) = gw
        .post_json("/call/startup", startup_body("rh1", sipp.port, "udp"))
        .await;
    assert_eq!(status, 200);
    gw.wait_status("rh1", &["RING"], T).await;
    let (s, e) = gw.post_json("/call/hold", json!({"callId": "rh1"})).await;
    assert_eq!(s, 409, "{e}");
    let msg = e["message"].as_str().unwrap();
    assert!(
        msg.contains("RING") && msg.contains("only an established call"),
        "{msg}"
    );
    let (s, e) = gw.post("/call/hold", "{\"callId\": 5}").await;
    assert_eq!(s, 400, "{e}");
    assert!(e["message"].as_str().unwrap().starts_with("callId"), "{e}");
    assert_eq!(gw.call("rh1").await["status"], "RING");
    gw.post_json("/call/terminate", json!({"callId": "rh1"}))
        .await;
    gw.wait_status("rh1", &["FINISH"], T).await;
    assert_eq!(sipp.wait(T), Some(0), "{}", sipp.messages());
}

#[tokio::test]
async fn dtmf_by_info_both_ways() {
    let (url, mut rx) = common::webhook().await;
    let gw = Gateway::start(&[("webhook_url", url)]).await;
    let mut sipp = Sipp::uas("uas_info_dtmf.xml", "udp", false);
    let (status, _) = gw
        .post_json("/call/startup", startup_body("dt1", sipp.port, "udp"))
        .await;
    assert_eq!(status, 200);
    gw.wait_status("dt1", &["ESTABLISHED"], T).await;
    // The digit sipp sends arrives as an event.
    let ev = common::wait_event(&mut rx, "DtmfEvent", T).await;
    assert_eq!(ev["callId"], "dt1", "{ev}");
    assert_eq!(ev["digit"], "5", "{ev}");
    assert_eq!(ev["duration"], 250, "{ev}");
    assert_eq!(ev["method"], "INFO", "{ev}");
    // Bad input is named; the call is untouched.
    let (s, e) = gw
        .post_json(
            "/call/send_dtmf",
            json!({"callId": "dt1", "dtmf": "7x", "type": "INFO"}),
        )
        .await;
    assert_eq!(s, 400, "{e}");
    assert!(e["message"].as_str().unwrap().contains("'x'"), "{e}");
    let (s, e) = gw
        .post_json("/call/send_dtmf", json!({"callId": "dt1", "dtmf": "7"}))
        .await;
    assert_eq!(s, 409, "sipp took no telephone-event, said so: {e}");
    assert!(
        e["message"].as_str().unwrap().contains("telephone-event"),
        "{e}"
    );
    let (s, _) = gw
        .post_json(
            "/call/send_dtmf",
            json!({"callId": "nope", "dtmf": "7", "type": "INFO"}),
        )
        .await;
    assert_eq!(s, 404);
    // Two digits by INFO, in order (sipp checks each body).
    let (s, e) = gw
        .post_json(
            "/call/send_dtmf",
            json!({"callId": "dt1", "dtmf": "7#", "type": "INFO"}),
        )
        .await;
    assert_eq!(s, 200, "{e}");
    let deadline = Instant::now() + T;
    while !sipp.messages().contains("Signal=#") {
        assert!(Instant::now() < deadline, "{}", sipp.messages());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    gw.post_json("/call/terminate", json!({"callId": "dt1"}))
        .await;
    gw.wait_status("dt1", &["FINISH"], T).await;
    assert_eq!(sipp.wait(T), Some(0), "{}", sipp.messages());
    assert!(
        sipp.messages().contains("X-Digits: Signal=7 Signal=#"),
        "{}",
        sipp.messages()
    );
}

#[tokio::test]
async fn inbound_invite_without_sdp_gets_our_offer_and_the_ack_answers_it() {
    let gw = Gateway::start(&[]).await;
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let me = sock.local_addr().unwrap();
    let rtp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let rtp_port = rtp.local_addr().unwrap().port();
    let p = gw.sip_port;
    let invite = format!(
        "INVITE sip:late@127.0.0.1:{p} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKlate1\r\nFrom: <sip:x@{me}>;tag=l1\r\nTo: <sip:late@127.0.0.1>\r\nCall-ID: late-1\r\nCSeq: 1 INVITE\r\nContact: <sip:x@{me}>\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    );
    sock.send_to(invite.as_bytes(), ("127.0.0.1", p))
        .await
        .unwrap();
    let mut buf = vec![0u8; 8192];
    let ok = loop {
        let (n, _) = tokio::time::timeout(T, sock.recv_from(&mut buf))
            .await
            .unwrap()
            .unwrap();
        let text = String::from_utf8_lossy(&buf[..n]).to_string();
        if text.starts_with("SIP/2.0 200") {
            break text;
        }
        assert!(text.starts_with("SIP/2.0 1"), "{text}");
    };
    assert!(
        ok.contains("m=audio ") && ok.contains("PCMU/8000"),
        "our offer: {ok}"
    );
    let to = ok
        .lines()
        .find_map(|l| l.strip_prefix("To: "))
        .unwrap()
        .to_string();
    let answer = format!(
        "v=0\r\no=x 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {rtp_port} RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\n"
    );
    let ack = format!(
        "ACK sip:late@127.0.0.1:{p} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKlate2\r\nFrom: <sip:x@{me}>;tag=l1\r\nTo: {to}\r\nCall-ID: late-1\r\nCSeq: 1 ACK\r\nMax-Forwards: 70\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{answer}",
        answer.len()
    );
    sock.send_to(ack.as_bytes(), ("127.0.0.1", p))
        .await
        .unwrap();
    let deadline = Instant::now() + T;
    let call = loop {
        let c = gw.call("late-1").await;
        if c["legs"][0]["tracks"][0]["remoteRtp"].is_string() {
            break c;
        }
        assert!(Instant::now() < deadline, "{c}\n{}", gw.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(call["status"], "ESTABLISHED", "{call}");
    let track = &call["legs"][0]["tracks"][0];
    assert_eq!(
        track["codec"], "PCMA",
        "the ACK's answer chose PCMA: {call}"
    );
    assert_eq!(track["remoteRtp"], format!("127.0.0.1:{rtp_port}"));
    // The gateway's silence reaches the answered port.
    rtp.set_read_timeout(Some(T)).unwrap();
    let mut pkt = [0u8; 512];
    let (n, _) = rtp.recv_from(&mut pkt).expect("RTP from the gateway");
    assert!(n > 12 && pkt[1] & 0x7f == 8, "PCMA RTP");
    gw.post_json("/call/terminate", json!({"callId": "late-1"}))
        .await;
    let bye = loop {
        let (n, _) = tokio::time::timeout(T, sock.recv_from(&mut buf))
            .await
            .unwrap()
            .unwrap();
        let text = String::from_utf8_lossy(&buf[..n]).to_string();
        if text.starts_with("BYE ") {
            break text;
        }
    };
    assert!(
        bye.starts_with(&format!("BYE sip:x@{me} SIP/2.0")),
        "to the Contact: {bye}"
    );
    let copy: String = bye
        .lines()
        .filter(|l| {
            ["Via:", "From:", "To:", "Call-ID:", "CSeq:"]
                .iter()
                .any(|h| l.starts_with(h))
        })
        .map(|l| format!("{l}\r\n"))
        .collect();
    let ok = format!("SIP/2.0 200 OK\r\n{copy}Content-Length: 0\r\n\r\n");
    sock.send_to(ok.as_bytes(), ("127.0.0.1", p)).await.unwrap();
    let call = gw.wait_status("late-1", &["FINISH"], T).await;
    assert_eq!(call["sipStatus"], 200, "{call}");
}

/// RTP packet with an RFC 4733 telephone-event payload.
fn telephone_event(seq: u16, ts: u32, event: u8, end: bool, duration: u16) -> Vec<u8> {
    let mut p = vec![0x80, 101 | if seq == 1 { 0x80 } else { 0 }];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&ts.to_be_bytes());
    p.extend_from_slice(&0x1234_5678u32.to_be_bytes());
    p.extend_from_slice(&[event, if end { 0x80 | 10 } else { 10 }]);
    p.extend_from_slice(&duration.to_be_bytes());
    p
}

#[tokio::test]
async fn rfc4733_digits_from_the_far_end_become_events() {
    let (url, mut rx) = common::webhook().await;
    let gw = Gateway::start(&[("webhook_url", url)]).await;
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let me = sock.local_addr().unwrap();
    let rtp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let rtp_port = rtp.local_addr().unwrap().port();
    let p = gw.sip_port;
    let offer = format!(
        "v=0\r\no=x 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {rtp_port} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\n"
    );
    let invite = format!(
        "INVITE sip:dtmf@127.0.0.1:{p} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKte1\r\nFrom: <sip:x@{me}>;tag=t1\r\nTo: <sip:dtmf@127.0.0.1>\r\nCall-ID: te-1\r\nCSeq: 1 INVITE\r\nContact: <sip:x@{me}>\r\nMax-Forwards: 70\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{offer}",
        offer.len()
    );
    sock.send_to(invite.as_bytes(), ("127.0.0.1", p))
        .await
        .unwrap();
    let mut buf = vec![0u8; 8192];
    let ok = loop {
        let (n, _) = tokio::time::timeout(T, sock.recv_from(&mut buf))
            .await
            .unwrap()
            .unwrap();
        let text = String::from_utf8_lossy(&buf[..n]).to_string();
        if text.starts_with("SIP/2.0 200") {
            break text;
        }
    };
    assert!(
        ok.contains("RTP/AVP 0 101"),
        "telephone-event answered: {ok}"
    );
    let gw_rtp: u16 = ok
        .lines()
        .find_map(|l| l.strip_prefix("m=audio "))
        .and_then(|l| l.split(' ').next())
        .and_then(|p| p.parse().ok())
        .unwrap();
    let to = ok
        .lines()
        .find_map(|l| l.strip_prefix("To: "))
        .unwrap()
        .to_string();
    let ack = format!(
        "ACK sip:dtmf@127.0.0.1:{p} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKte2\r\nFrom: <sip:x@{me}>;tag=t1\r\nTo: {to}\r\nCall-ID: te-1\r\nCSeq: 1 ACK\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    );
    sock.send_to(ack.as_bytes(), ("127.0.0.1", p))
        .await
        .unwrap();
    gw.wait_status("te-1", &["ESTABLISHED"], T).await;
    // Digit 9 for 100 ms: three progress packets, then the end packet three times.
    let dest = ("127.0.0.1", gw_rtp);
    let mut seq = 1;
    for d in [160u16, 320, 480] {
        rtp.send_to(&telephone_event(seq, 8000, 9, false, d), dest)
            .unwrap();
        seq += 1;
    }
    for _ in 0..3 {
        rtp.send_to(&telephone_event(seq, 8000, 9, true, 800), dest)
            .unwrap();
        seq += 1;
    }
    // A truncated one is counted as invalid and changes nothing.
    rtp.send_to(&[0x80, 101, 0, 9], dest).unwrap();
    let ev = common::wait_event(&mut rx, "DtmfEvent", T).await;
    assert_eq!(ev["callId"], "te-1", "{ev}");
    assert_eq!(ev["digit"], "9", "{ev}");
    assert_eq!(ev["duration"], 100, "{ev}");
    assert_eq!(ev["method"], "RFC4733", "{ev}");
    assert_eq!(ev["leg"], "caller", "{ev}");
    // Only one event for the digit (the end packet came three times).
    let more = tokio::time::timeout(Duration::from_millis(500), async {
        loop {
            match rx.recv().await {
                Some(e) if e["type"] == "DtmfEvent" => return e,
                Some(_) => {}
                None => std::future::pending::<()>().await,
            }
        }
    })
    .await;
    assert!(more.is_err(), "a second DtmfEvent: {more:?}");

    // The other way: the gateway sends 1 and # (100 ms each) as telephone-events on the
    // payload type the far end offered; read back from the RTP it sends us.
    let (s, e) = gw
        .post_json(
            "/call/send_dtmf",
            json!({"callId": "te-1", "dtmf": "1#", "duration": 100}),
        )
        .await;
    assert_eq!(s, 200, "{e}");
    rtp.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut events: Vec<(u16, u32, bool, [u8; 4])> = Vec::new();
    let mut last_seq: Option<u16> = None;
    let deadline = Instant::now() + T;
    let mut pkt = [0u8; 1500];
    while events
        .iter()
        .filter(|e| e.3[0] == 11 && e.3[1] & 0x80 != 0)
        .count()
        < 3
    {
        assert!(Instant::now() < deadline, "digits not all seen: {events:?}");
        let Ok((n, _)) = rtp.recv_from(&mut pkt) else {
            continue;
        };
        assert!(n >= 12, "an RTP packet");
        let seq = u16::from_be_bytes([pkt[2], pkt[3]]);
        if let Some(prev) = last_seq {
            assert_eq!(
                seq,
                prev.wrapping_add(1),
                "one sequence for audio and events"
            );
        }
        last_seq = Some(seq);
        if pkt[1] & 0x7f == 101 {
            assert_eq!(n, 16, "a 4-byte telephone-event payload");
            let ts = u32::from_be_bytes([pkt[4], pkt[5], pkt[6], pkt[7]]);
            events.push((
                seq,
                ts,
                pkt[1] & 0x80 != 0,
                [pkt[12], pkt[13], pkt[14], pkt[15]],
            ));
        }
    }
    for (code, name) in [(1u8, "1"), (11, "#")] {
        let ev: Vec<_> = events.iter().filter(|e| e.3[0] == code).collect();
        assert!(ev[0].2, "{name}: marker on the first packet");
        assert!(ev.iter().skip(1).all(|e| !e.2), "{name}: marker only once");
        assert!(ev.iter().all(|e| e.1 == ev[0].1), "{name}: one timestamp");
        let durations: Vec<u16> = ev
            .iter()
            .map(|e| u16::from_be_bytes([e.3[2], e.3[3]]))
            .collect();
        assert!(durations.windows(2).all(|w| w[0] <= w[1]), "{durations:?}");
        let ends: Vec<_> = ev.iter().filter(|e| e.3[1] & 0x80 != 0).collect();
        assert_eq!(ends.len(), 3, "{name}: the end packet three times: {ev:?}");
        assert!(
            ends.iter()
                .all(|e| u16::from_be_bytes([e.3[2], e.3[3]]) == 800),
            "{name}: 100 ms at 8 kHz"
        );
    }
    let first_ts = events.iter().find(|e| e.3[0] == 1).unwrap().1;
    let second_ts = events.iter().find(|e| e.3[0] == 11).unwrap().1;
    assert!(
        second_ts.wrapping_sub(first_ts) >= 800,
        "# starts after 1 ended"
    );
}

/// The `event` names of CallControlEvents for `call_id`, until `last` (or the timeout).
async fn control_events_until(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<Value>,
    call_id: &str,
    last: &[&str],
) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + T;
    let mut seen = Vec::new();
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(ev)) if ev["type"] == "CallControlEvent" && ev["callId"] == call_id => {
                let done = last.iter().any(|l| ev["event"] == *l);
                seen.push(ev);
                if done {
                    return seen;
                }
            }
            Ok(Some(_)) => {}
            _ => panic!("no {last:?} for {call_id} within {T:?}; saw {seen:?}"),
        }
    }
}

fn names(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["event"].as_str().unwrap_or("").to_string())
        .collect()
}

#[tokio::test]
async fn blind_transfer_by_refer_follows_the_notifies_and_ends_our_dialog() {
    let (url, mut rx) = common::webhook().await;
    let gw = Gateway::start(&[("webhook_url", url)]).await;
    let mut sipp = Sipp::uas_with(
        "uas_refer.xml",
        "udp",
        false,
        &[("FINAL", "200 OK".to_string())],
    );
    let (status, _) = gw
        .post_json("/call/startup", startup_body("bt1", sipp.port, "udp"))
        .await;
    assert_eq!(status, 200);
    gw.wait_status("bt1", &["ESTABLISHED"], T).await;
    // Bad input is named and sends nothing.
    for (body, want) in [
        (json!({"callId": "bt1", "target": "sip:c@h\r\nVia: x"}), 400),
        (json!({"callId": "bt1", "target": "<sip:c@h>"}), 400),
        (json!({"callId": "bt1", "target": "http://x"}), 400),
        (json!({"callId": "bt1"}), 400),
        (
            json!({"callId": "bt1", "target": "carol", "leg": "caller"}),
            400,
        ),
        (json!({"callId": "nope", "target": "carol"}), 404),
        (json!({"callId": "bt1", "replaceCallId": "nope"}), 404),
        (json!({"callId": "bt1", "replaceCallId": "bt1"}), 400),
    ] {
        let (s, e) = gw.post_json("/call/transfer", body.clone()).await;
        assert_eq!(s, want, "{body} → {e}");
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{e}");
    }
    let (s, e) = gw
        .post_json(
            "/call/transfer",
            json!({"callId": "bt1", "target": "sip:carol@127.0.0.1:5999"}),
        )
        .await;
    assert_eq!(s, 200, "{e}");
    let (s, e) = gw
        .post_json(
            "/call/transfer",
            json!({"callId": "bt1", "target": "sip:dave@127.0.0.1"}),
        )
        .await;
    assert_eq!(s, 409, "one transfer at a time: {e}");
    let events =
        control_events_until(&mut rx, "bt1", &["TransferSuccessful", "TransferFailed"]).await;
    assert_eq!(
        names(&events),
        [
            "Transferring",
            "TransferStart",
            "TransferPending",
            "TransferSuccessful"
        ],
        "{events:?}"
    );
    assert_eq!(events[1]["sipStatus"], 202);
    assert_eq!(events[2]["reason"], "100 Trying");
    assert_eq!(events[3]["sipStatus"], 200);
    // After success the gateway hangs up its dialog with the transferee.
    let call = gw.wait_status("bt1", &["FINISH"], T).await;
    assert_eq!(
        call["reason"], "transferred to sip:carol@127.0.0.1:5999",
        "{call}"
    );
    assert_eq!(sipp.wait(T), Some(0), "{}", sipp.messages());
    let msgs = sipp.messages();
    assert!(
        msgs.contains("X-Refer-To: <sip:carol@127.0.0.1:5999>"),
        "{msgs}"
    );
    assert!(msgs.contains("Referred-By:"), "{msgs}");
}

#[tokio::test]
async fn a_transfer_the_target_refuses_fails_with_its_status_and_the_call_goes_on() {
    let (url, mut rx) = common::webhook().await;
    let gw = Gateway::start(&[("webhook_url", url)]).await;
    let mut sipp = Sipp::uas_with(
        "uas_refer.xml",
        "udp",
        false,
        &[("FINAL", "486 Busy Here".to_string())],
    );
    let (status, _) = gw
        .post_json("/call/startup", startup_body("bt2", sipp.port, "udp"))
        .await;
    assert_eq!(status, 200);
    gw.wait_status("bt2", &["ESTABLISHED"], T).await;
    // A number goes to the host of the call's far end.
    let (s, e) = gw
        .post_json("/call/transfer", json!({"callId": "bt2", "target": "1002"}))
        .await;
    assert_eq!(s, 200, "{e}");
    let events =
        control_events_until(&mut rx, "bt2", &["TransferSuccessful", "TransferFailed"]).await;
    let last = events.last().unwrap();
    assert_eq!(last["event"], "TransferFailed", "{events:?}");
    assert_eq!(last["sipStatus"], 486, "{last}");
    assert_eq!(last["reason"], "486 Busy Here", "{last}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(gw.call("bt2").await["status"], "ESTABLISHED");
    let (s, _) = gw
        .post_json("/call/terminate", json!({"callId": "bt2"}))
        .await;
    assert_eq!(s, 200);
    gw.wait_status("bt2", &["FINISH"], T).await;
    assert_eq!(sipp.wait(T), Some(0), "{}", sipp.messages());
    let msgs = sipp.messages();
    assert!(msgs.contains("X-Refer-To: <sip:1002@127.0.0.1"), "{msgs}");
}

/// The far end accepts the REFER (202) and never reports the new call: after
/// `transfer_timeout_s` the transfer fails (408) and the call goes on.
#[tokio::test]
async fn a_transfer_without_a_final_notify_fails_after_the_timeout_and_the_call_goes_on() {
    let (url, mut rx) = common::webhook().await;
    let gw = Gateway::start(&[
        ("webhook_url", url),
        ("transfer_timeout_s", "2".to_string()),
    ])
    .await;
    let mut sipp = Sipp::uas("uas_refer_silent.xml", "udp", false);
    let (status, _) = gw
        .post_json("/call/startup", startup_body("bt3", sipp.port, "udp"))
        .await;
    assert_eq!(status, 200);
    gw.wait_status("bt3", &["ESTABLISHED"], T).await;
    let started = std::time::Instant::now();
    let (s, e) = gw
        .post_json("/call/transfer", json!({"callId": "bt3", "target": "1002"}))
        .await;
    assert_eq!(s, 200, "{e}");
    let events =
        control_events_until(&mut rx, "bt3", &["TransferSuccessful", "TransferFailed"]).await;
    let waited = started.elapsed();
    assert_eq!(
        names(&events),
        ["Transferring", "TransferStart", "TransferFailed"],
        "{events:?}"
    );
    let last = events.last().unwrap();
    assert_eq!(last["sipStatus"], 408, "{last}");
    assert_eq!(last["reason"], "no final NOTIFY within 2 s", "{last}");
    assert!(
        waited >= Duration::from_millis(1900) && waited < Duration::from_secs(6),
        "failed after about 2 s, not {waited:?}"
    );
    // The call goes on.
    assert_eq!(gw.call("bt3").await["status"], "ESTABLISHED");
    let (s, _) = gw
        .post_json("/call/terminate", json!({"callId": "bt3"}))
        .await;
    assert_eq!(s, 200);
    gw.wait_status("bt3", &["FINISH"], T).await;
    assert_eq!(sipp.wait(T), Some(0), "{}", sipp.messages());
}

#[tokio::test]
async fn attended_transfer_refers_with_replaces_naming_the_other_dialog() {
    let (url, mut rx) = common::webhook().await;
    let gw = Gateway::start(&[("webhook_url", url)]).await;
    let mut a = Sipp::uas_with(
        "uas_refer.xml",
        "udp",
        false,
        &[("FINAL", "200 OK".to_string())],
    );
    let mut b = Sipp::uas("uas_pcmu_stream.xml", "udp", false);
    for (id, port) in [("at-a", a.port), ("at-b", b.port)] {
        let (s, _) = gw
            .post_json("/call/startup", startup_body(id, port, "udp"))
            .await;
        assert_eq!(s, 200);
        gw.wait_status(id, &["ESTABLISHED"], T).await;
    }
    let b_call = gw.call("at-b").await;
    let b_sip_id = b_call["sipCallId"].as_str().unwrap().to_string();
    let (s, e) = gw
        .post_json(
            "/call/transfer",
            json!({"callId": "at-a", "replaceCallId": "at-b"}),
        )
        .await;
    assert_eq!(s, 200, "{e}");
    let events =
        control_events_until(&mut rx, "at-a", &["TransferSuccessful", "TransferFailed"]).await;
    assert_eq!(
        names(&events).last().map(String::as_str),
        Some("TransferSuccessful")
    );
    gw.wait_status("at-a", &["FINISH"], T).await;
    assert_eq!(a.wait(T), Some(0), "{}", a.messages());
    // Refer-To is B's far end with Replaces naming B's dialog (Call-ID, its tag as to-tag,
    // ours as from-tag), escaped in the URI header.
    let msgs = a.messages();
    let refer_to = msgs
        .lines()
        .find_map(|l| l.strip_prefix("X-Refer-To: "))
        .unwrap_or_else(|| panic!("{msgs}"));
    let escaped = b_sip_id.replace('@', "%40");
    assert!(
        refer_to.starts_with(&format!("<sip:127.0.0.1:{}", b.port)),
        "{refer_to}"
    );
    assert!(
        refer_to.contains(&format!("?Replaces={escaped}%3Bto-tag%3D")),
        "{refer_to}"
    );
    assert!(refer_to.contains("%3Bfrom-tag%3D"), "{refer_to}");
    gw.post_json("/call/terminate", json!({"callId": "at-b"}))
        .await;
    gw.wait_status("at-b", &["FINISH"], T).await;
    assert_eq!(b.wait(T), Some(0), "{}", b.messages());
}

#[tokio::test]
async fn a_refer_from_the_far_end_moves_the_leg_to_the_target_and_keeps_the_stream() {
    let (url, mut rx) = common::webhook().await;
    let gw = Gateway::start(&[("webhook_url", url)]).await;
    let carol = common::RawUas::start("PCMU", 1000.0).await;
    let mut sipp = Sipp::uas_with(
        "uas_refers_gateway.xml",
        "udp",
        false,
        &[("TARGET", format!("sip:carol@127.0.0.1:{}", carol.port))],
    );
    let (s, _) = gw
        .post_json("/call/startup", startup_body("rf1", sipp.port, "udp"))
        .await;
    assert_eq!(s, 200);
    gw.wait_status("rf1", &["ESTABLISHED"], T).await;
    let events =
        control_events_until(&mut rx, "rf1", &["TransferSuccessful", "TransferFailed"]).await;
    assert_eq!(
        names(&events),
        ["TransferRequested", "TransferSuccessful"],
        "{events:?}"
    );
    // The transferor got NOTIFY 100 and 200 (subscription terminated) and then our BYE.
    // Awaited: Carol (a task of this test) keeps sending meanwhile, so the leg latches on
    // her and not on the transferor's last packets.
    assert_eq!(sipp.wait_async(T).await, Some(0), "{}", sipp.messages());
    assert!(
        sipp.messages()
            .contains("X-Result: SIP/2.0 100 SIP/2.0 200 OK terminated"),
        "{}",
        sipp.messages()
    );
    // The call goes on with Carol in the same leg and stream: her RTP arrives.
    let deadline = Instant::now() + T;
    let call = loop {
        let c = gw.call("rf1").await;
        let t = &c["legs"][0]["tracks"][0];
        if t["remoteRtp"] == format!("127.0.0.1:{}", carol.rtp_port)
            && c["legs"][0]["uri"] == format!("sip:carol@127.0.0.1:{}", carol.port)
        {
            break c;
        }
        assert!(Instant::now() < deadline, "{c}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(call["status"], "ESTABLISHED", "{call}");
    assert_eq!(call["toStream"], "rf1_stream");
    let before = packets_arrive(&gw, "rf1_stream").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        packets_arrive(&gw, "rf1_stream").await > before,
        "Carol's RTP reaches the stream"
    );
    gw.post_json("/call/terminate", json!({"callId": "rf1"}))
        .await;
    gw.wait_status("rf1", &["FINISH"], T).await;
    let deadline = Instant::now() + T;
    while carol.byes() == 0 {
        assert!(Instant::now() < deadline, "Carol gets the BYE");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An attended transfer by the far end (RFC 3891): its REFER's Refer-To carries an escaped
/// Replaces; the gateway's INVITE to the target carries it as a Replaces header, decoded,
/// and the transfer completes as a blind one does.
#[tokio::test]
async fn a_refer_with_replaces_from_the_far_end_invites_the_target_with_replaces() {
    let (url, mut rx) = common::webhook().await;
    let gw = Gateway::start(&[("webhook_url", url)]).await;
    let carol = common::RawUas::start("PCMU", 1000.0).await;
    let target = format!(
        "sip:carol@127.0.0.1:{}?Replaces=xfer-1%4010.0.0.9%3Bto-tag%3Dt1%3Bfrom-tag%3Df1",
        carol.port
    );
    let mut sipp = Sipp::uas_with(
        "uas_refers_gateway.xml",
        "udp",
        false,
        &[("TARGET", target)],
    );
    let (s, _) = gw
        .post_json("/call/startup", startup_body("rf3", sipp.port, "udp"))
        .await;
    assert_eq!(s, 200);
    let events =
        control_events_until(&mut rx, "rf3", &["TransferSuccessful", "TransferFailed"]).await;
    assert_eq!(
        names(&events),
        ["TransferRequested", "TransferSuccessful"],
        "{events:?}"
    );
    assert_eq!(sipp.wait_async(T).await, Some(0), "{}", sipp.messages());
    let invite = carol
        .requests()
        .into_iter()
        .find(|r| r.starts_with("INVITE "))
        .expect("Carol got an INVITE");
    assert!(
        invite.contains("Replaces: xfer-1@10.0.0.9;to-tag=t1;from-tag=f1\r\n"),
        "{invite}"
    );
    assert!(
        invite.starts_with(&format!("INVITE sip:carol@127.0.0.1:{} ", carol.port)),
        "the Request-URI has no header part: {invite}"
    );
    gw.post_json("/call/terminate", json!({"callId": "rf3"}))
        .await;
    gw.wait_status("rf3", &["FINISH"], T).await;
}

#[tokio::test]
async fn a_refer_to_a_busy_target_is_reported_and_the_call_goes_on() {
    let (url, mut rx) = common::webhook().await;
    let gw = Gateway::start(&[("webhook_url", url)]).await;
    let mut busy = Sipp::uas("uas_busy.xml", "udp", false);
    let mut sipp = Sipp::uas_with(
        "uas_refers_gateway.xml",
        "udp",
        false,
        &[("TARGET", format!("sip:dave@127.0.0.1:{}", busy.port))],
    );
    let (s, _) = gw
        .post_json("/call/startup", startup_body("rf2", sipp.port, "udp"))
        .await;
    assert_eq!(s, 200);
    let events =
        control_events_until(&mut rx, "rf2", &["TransferSuccessful", "TransferFailed"]).await;
    let last = events.last().unwrap();
    assert_eq!(last["event"], "TransferFailed", "{events:?}");
    assert_eq!(last["sipStatus"], 486, "{last}");
    assert_eq!(busy.wait(T), Some(0), "{}", busy.messages());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(gw.call("rf2").await["status"], "ESTABLISHED");
    gw.post_json("/call/terminate", json!({"callId": "rf2"}))
        .await;
    gw.wait_status("rf2", &["FINISH"], T).await;
    assert_eq!(sipp.wait(T), Some(0), "{}", sipp.messages());
    assert!(
        sipp.messages()
            .contains("X-Result: SIP/2.0 100 SIP/2.0 486"),
        "{}",
        sipp.messages()
    );
}

#[tokio::test]
async fn srv_records_route_the_invite_and_a_503_fails_over_to_the_next_target() {
    // NAPTR of sipstream.test → SRV domain _sip._udp.pool.sipstream.test (only there, so the
    // NAPTR step is needed): priority 10 → a sipp that answers 503, priority 20 → a sipp that
    // answers. The callee URI has no port.
    let mut down = Sipp::uas("uas_503.xml", "udp", false);
    let mut up = Sipp::uas("uas_pcmu_stream.xml", "udp", false);
    let dns = common::Dnsmasq::start(&[
        "naptr-record=sipstream.test,10,10,s,SIP+D2U,,_sip._udp.pool.sipstream.test".to_string(),
        format!(
            "srv-host=_sip._udp.pool.sipstream.test,a.sipstream.test,{},10,10",
            down.port
        ),
        format!(
            "srv-host=_sip._udp.pool.sipstream.test,b.sipstream.test,{},20,10",
            up.port
        ),
        "address=/a.sipstream.test/127.0.0.1".to_string(),
        "address=/b.sipstream.test/127.0.0.1".to_string(),
    ]);
    let (url, mut rx) = common::webhook().await;
    let gw = Gateway::start(&[
        ("sip_dns_servers", format!("127.0.0.1:{}", dns.port)),
        ("webhook_url", url),
    ])
    .await;
    let mut body = startup_body("srv1", 0, "udp");
    body["callee"] = json!("sip:bob@sipstream.test");
    body["sipDomain"] = json!("sipstream.test");
    body.as_object_mut().unwrap().remove("sipPort");
    let (s, e) = gw.post_json("/call/startup", body).await;
    assert_eq!(s, 200, "{e}");
    let call = gw.wait_status("srv1", &["ESTABLISHED"], T).await;
    assert_eq!(call["sipOutboundProxy"], "sipstream.test", "{call}");
    let ev = common::wait_event(&mut rx, "CallControlEvent", T).await;
    assert_eq!(ev["event"], "Failover", "{ev}");
    assert_eq!(ev["sipStatus"], 503, "{ev}");
    assert_eq!(down.wait(T), Some(0), "{}", down.messages());
    gw.post_json("/call/terminate", json!({"callId": "srv1"}))
        .await;
    gw.wait_status("srv1", &["FINISH"], T).await;
    assert_eq!(up.wait(T), Some(0), "{}", up.messages());
}

/// A 16-bit PCM WAV file of a sine at `hz`, 16 kHz mono (the gateway resamples it).
fn sine_wav(path: &std::path::Path, hz: f64, seconds: f64) {
    let n = (16000.0 * seconds) as usize;
    let mut v = b"RIFF".to_vec();
    let data_len = (n * 2) as u32;
    v.extend_from_slice(&(36 + data_len).to_le_bytes());
    v.extend_from_slice(b"WAVEfmt ");
    v.extend_from_slice(&16u32.to_le_bytes());
    v.extend_from_slice(&1u16.to_le_bytes());
    v.extend_from_slice(&1u16.to_le_bytes());
    v.extend_from_slice(&16000u32.to_le_bytes());
    v.extend_from_slice(&32000u32.to_le_bytes());
    v.extend_from_slice(&2u16.to_le_bytes());
    v.extend_from_slice(&16u16.to_le_bytes());
    v.extend_from_slice(b"data");
    v.extend_from_slice(&data_len.to_le_bytes());
    for i in 0..n {
        let s = (8000.0 * (2.0 * std::f64::consts::PI * hz * i as f64 / 16000.0).sin()) as i16;
        v.extend_from_slice(&s.to_le_bytes());
    }
    std::fs::write(path, v).unwrap();
}

#[tokio::test]
async fn a_held_leg_hears_the_hold_music_until_it_is_resumed() {
    let dir = common::tempdir();
    let wav = dir.path().join("hold.wav");
    sine_wav(&wav, 500.0, 0.7);
    let gw = Gateway::start(&[("hold_music_file", wav.display().to_string())]).await;
    let bob = common::RawUas::start("PCMA", 1000.0).await;
    let (s, _) = gw
        .post_json("/call/startup", startup_body("moh1", bob.port, "udp"))
        .await;
    assert_eq!(s, 200);
    gw.wait_status("moh1", &["ESTABLISHED"], T).await;
    let (s, e) = gw.post_json("/call/hold", json!({"callId": "moh1"})).await;
    assert_eq!(s, 200, "{e}");
    gw.wait_status("moh1", &["HOLD"], T).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let pcm = bob.heard(8);
    let held = &pcm[pcm.len() - 8000..];
    let share = common::tone_share(held, 8000, 500.0);
    assert!(share > 0.5, "Bob hears the 500 Hz hold music: {share}");
    let (s, _) = gw
        .post_json("/call/unhold", json!({"callId": "moh1"}))
        .await;
    assert_eq!(s, 200);
    gw.wait_status("moh1", &["ESTABLISHED"], T).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let pcm = bob.heard(8);
    let after = &pcm[pcm.len() - 2000..];
    let power = after.iter().map(|s| f64::from(*s).powi(2)).sum::<f64>() / after.len() as f64;
    assert!(
        power < 1e4,
        "silence again after unhold: mean power {power}"
    );
    // A hold with music off sends silence.
    let (s, _) = gw
        .post_json("/call/hold", json!({"callId": "moh1", "music": false}))
        .await;
    assert_eq!(s, 200);
    gw.wait_status("moh1", &["HOLD"], T).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let pcm = bob.heard(8);
    let quiet = &pcm[pcm.len() - 2000..];
    assert!(common::tone_share(quiet, 8000, 500.0) < 0.1);
    gw.post_json("/call/terminate", json!({"callId": "moh1"}))
        .await;
    gw.wait_status("moh1", &["FINISH"], T).await;
}

/// RFC 4028 §10: the far end is the refresher (refresher=uas, 4 s) and never refreshes:
/// the gateway ends the call with a BYE a little before the session expires (at 3 s), and
/// says why.
#[tokio::test]
async fn a_session_timer_the_peer_does_not_refresh_ends_the_call() {
    let gw = Gateway::start(&[]).await;
    let mut sipp = Sipp::uas("uas_session_timer_silent.xml", "udp", false);
    let (s, _) = gw
        .post_json("/call/startup", startup_body("st2", sipp.port, "udp"))
        .await;
    assert_eq!(s, 200);
    gw.wait_status("st2", &["ESTABLISHED"], T).await;
    let answered = Instant::now();
    let call = gw.wait_status("st2", &["FINISH"], T).await;
    let after = answered.elapsed();
    assert!(
        after >= Duration::from_millis(2500) && after < Duration::from_millis(4000),
        "BYE about 3 s after the answer: {after:?}"
    );
    assert!(
        call["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("session expired")),
        "{call}"
    );
    assert_eq!(sipp.wait(T), Some(0), "{}", sipp.messages());
}

#[tokio::test]
async fn the_gateway_refreshes_a_session_timer_it_was_given() {
    let gw = Gateway::start(&[]).await;
    let mut sipp = Sipp::uas("uas_session_timer.xml", "udp", false);
    let (s, _) = gw
        .post_json("/call/startup", startup_body("st1", sipp.port, "udp"))
        .await;
    assert_eq!(s, 200);
    gw.wait_status("st1", &["ESTABLISHED"], T).await;
    // Two refreshes (every second) pass through sipp's scenario; then the call is ended.
    let deadline = Instant::now() + T;
    while sipp.messages().matches("UPDATE sip:").count() < 2 {
        assert!(Instant::now() < deadline, "{}", sipp.messages());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(gw.call("st1").await["status"], "ESTABLISHED");
    gw.post_json("/call/terminate", json!({"callId": "st1"}))
        .await;
    gw.wait_status("st1", &["FINISH"], T).await;
    assert_eq!(sipp.wait(T), Some(0), "{}", sipp.messages());
    assert!(
        sipp.messages().contains("X-Supported: timer"),
        "our INVITE said Supported: timer:\n{}",
        sipp.messages()
    );
}
