//! Media exchange (OpenSIPS media_exchange over REST, `/media/*`), end to end on 127.0.0.1:
//! the peers are sipp and small RTP endpoints that stream a tone of their own and keep what
//! they hear, so every check is by frequency: who hears whom, before, during and after.
mod common;

use std::time::{Duration, Instant};

use common::{tone_share, Gateway, RawUac, RawUas, Sipp};
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(15);

/// A two-party call from `alice` (caller) to `callee_uri`.
async fn two_party(gw: &Gateway, call_id: &str, alice: &RawUas, callee_uri: String) {
    let (s, v) = gw
        .post_json(
            "/call/startup",
            json!({"callId": call_id, "caller": format!("sip:alice@127.0.0.1:{}", alice.port),
                "callee": callee_uri, "sipLogin": "gw", "sipDomain": "127.0.0.1",
                "sipRegisterRequired": "false"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    gw.wait_status(call_id, &["ESTABLISHED"], T).await;
}

/// The audio `peer` heard (PCMU or PCMA by `pt`) in the last `ms` milliseconds.
async fn listen(heard: impl Fn() -> Vec<(Instant, Vec<i16>)>, ms: u64) -> Vec<i16> {
    let from = Instant::now();
    tokio::time::sleep(Duration::from_millis(ms)).await;
    heard()
        .into_iter()
        .filter(|(t, _)| *t >= from)
        .flat_map(|(_, p)| p)
        .collect()
}

/// The next CallControlEvent named `name` (others are skipped).
async fn control_event(
    events: &mut tokio::sync::mpsc::UnboundedReceiver<Value>,
    name: &str,
) -> Value {
    let deadline = Instant::now() + T;
    loop {
        let ev = common::wait_event(events, "CallControlEvent", deadline - Instant::now()).await;
        if ev["event"] == name {
            return ev;
        }
    }
}

async fn wait_exchange(gw: &Gateway, call_id: &str, status: &str) -> Value {
    let deadline = Instant::now() + T;
    loop {
        let (_, v) = gw
            .post_json("/media/find", json!({"callId": call_id}))
            .await;
        if let Some(x) = v.as_array().and_then(|a| a.last()) {
            if x["status"] == status {
                return x.clone();
            }
        }
        assert!(
            Instant::now() < deadline,
            "exchange not {status}: {v}\n{}",
            gw.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// fetch_from_uri on a two-party call: the caller hears the media server instead of the
/// callee (a sipp that sees the hold re-INVITE, sendonly, then the resume, sendrecv), the
/// media server hears the caller, and after terminate the caller hears the callee again.
#[tokio::test]
async fn fetch_from_uri_replaces_what_the_leg_hears_and_holds_the_other_until_terminate() {
    let (hook, mut events) = common::webhook().await;
    let gw = Gateway::start(&[("webhook_url", hook)]).await;
    let alice = RawUas::start("PCMU", 700.0).await;
    let mut bob = Sipp::uas("uas_hold_by_gateway.xml", "udp", false);
    two_party(
        &gw,
        "fx1",
        &alice,
        format!("sip:bob@127.0.0.1:{}", bob.port),
    )
    .await;
    let before = listen(|| alice.heard_timed(0), 800).await;
    assert!(
        tone_share(&before, 8000, 440.0) > 0.6,
        "Alice hears Bob's 440 Hz first: {}",
        tone_share(&before, 8000, 440.0)
    );

    let server = RawUas::start("PCMA", 1500.0).await;
    let (s, v) = gw
        .post_json(
            "/media/fetch_from_uri",
            json!({"callId": "fx1", "uri": format!("sip:moh@127.0.0.1:{}", server.port),
                "leg": "caller", "headers": {"X-Purpose": "announcement"}}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["status"], "STARTING", "{v}");
    assert_eq!(v["kind"], "fetch_from_uri");
    let x = wait_exchange(&gw, "fx1", "ACTIVE").await;
    assert_eq!(x["held"], json!(["callee"]), "{x}");
    let invite = &server.requests()[0];
    assert!(invite.contains("X-Purpose: announcement"), "{invite}");
    assert!(invite.contains("a=sendrecv"), "{invite}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let during = listen(|| alice.heard_timed(0), 1000).await;
    let (s1500, s440) = (
        tone_share(&during, 8000, 1500.0),
        tone_share(&during, 8000, 440.0),
    );
    assert!(
        s1500 > 0.8 && s440 < 0.05,
        "Alice hears the media server only: 1500 Hz {s1500}, Bob's 440 Hz {s440}"
    );
    let ivr = listen(|| server.heard_timed(8), 600).await;
    assert!(
        tone_share(&ivr, 8000, 700.0) > 0.8,
        "the media server hears Alice (PCMA): {}",
        tone_share(&ivr, 8000, 700.0)
    );
    // The exchange is part of the call object.
    let call = gw.call("fx1").await;
    assert_eq!(
        call["exchanges"][0]["exchangeId"], x["exchangeId"],
        "{call}"
    );
    let side = gw.call(x["exchangeId"].as_str().unwrap()).await;
    assert_eq!(side["exchangeOf"]["callId"], "fx1", "{side}");

    let (s, v) = gw
        .post_json("/media/terminate", json!({"callId": "fx1"}))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v[0]["status"], "TERMINATED", "{v}");
    let deadline = Instant::now() + T;
    while server.byes() == 0 {
        assert!(Instant::now() < deadline, "the media server got no BYE");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    let after = listen(|| alice.heard_timed(0), 800).await;
    assert!(
        tone_share(&after, 8000, 440.0) > 0.6 && tone_share(&after, 8000, 1500.0) < 0.05,
        "Alice hears Bob again: 440 Hz {}, 1500 Hz {}",
        tone_share(&after, 8000, 440.0),
        tone_share(&after, 8000, 1500.0)
    );
    let (s, _) = gw
        .post_json("/call/terminate", json!({"callId": "fx1"}))
        .await;
    assert_eq!(s, 200);
    assert_eq!(bob.wait(T), Some(0), "{}", bob.messages());
    assert!(
        bob.messages()
            .contains("held=a=sendonly resumed=a=sendrecv"),
        "Bob saw the hold and the resume:\n{}",
        bob.messages()
    );
    let mut seen = Vec::new();
    let deadline = Instant::now() + T;
    while !seen.contains(&"ExchangeStopped".to_string()) {
        let ev =
            common::wait_event(&mut events, "CallControlEvent", deadline - Instant::now()).await;
        seen.push(ev["event"].as_str().unwrap_or("").to_string());
    }
    assert!(seen.contains(&"ExchangeStarted".to_string()), "{seen:?}");
    assert!(seen.contains(&"CallHoldSuccessful".to_string()), "{seen:?}");
}

/// With nohold the other leg gets no re-INVITE (sipp's scenario fails on one) and goes on
/// hearing the caller; a URI that refuses (486) or never answers fails the exchange and
/// leaves the call's media as it was.
#[tokio::test]
async fn nohold_leaves_the_other_leg_alone_and_failed_exchanges_change_nothing() {
    let (hook, mut events) = common::webhook().await;
    let gw = Gateway::start(&[
        ("webhook_url", hook),
        ("media_exchange_timeout_s", "2".into()),
    ])
    .await;
    let alice = RawUas::start("PCMU", 700.0).await;
    let bob = RawUas::start("PCMU", 440.0).await;
    two_party(
        &gw,
        "fx2",
        &alice,
        format!("sip:bob@127.0.0.1:{}", bob.port),
    )
    .await;

    // Busy: 486 from sipp.
    let mut busy = Sipp::uas("uas_busy.xml", "udp", false);
    let (s, v) = gw
        .post_json(
            "/media/fetch_from_uri",
            json!({"callId": "fx2", "uri": format!("sip:moh@127.0.0.1:{}", busy.port), "leg": "caller"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let x = wait_exchange(&gw, "fx2", "FAILED").await;
    assert_eq!(x["sipStatus"], 486, "{x}");
    let ev = control_event(&mut events, "ExchangeFailed").await;
    assert_eq!(ev["sipStatus"], 486, "{ev}");
    let _ = busy.wait(T);
    // Nobody answers: a UDP port that drops everything.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let (s, v) = gw
        .post_json(
            "/media/fetch_from_uri",
            json!({"callId": "fx2", "uri": format!("sip:moh@127.0.0.1:{}", silent.local_addr().unwrap().port())}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let x = wait_exchange(&gw, "fx2", "FAILED").await;
    assert_eq!(x["sipStatus"], 408, "{x}");
    assert!(x["reason"].as_str().unwrap().contains("2 s"), "{x}");
    let heard = listen(|| alice.heard_timed(0), 800).await;
    assert!(
        tone_share(&heard, 8000, 440.0) > 0.6,
        "Alice still hears Bob"
    );

    let server = RawUas::start("PCMU", 1500.0).await;
    let (s, v) = gw
        .post_json(
            "/media/exchange_from_uri",
            json!({"callId": "fx2", "uri": format!("sip:moh@127.0.0.1:{}", server.port),
                "leg": "caller", "nohold": true}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let x = wait_exchange(&gw, "fx2", "ACTIVE").await;
    assert_eq!(x["held"], json!([]), "{x}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let during = listen(|| alice.heard_timed(0), 1000).await;
    assert!(
        tone_share(&during, 8000, 1500.0) > 0.8,
        "Alice hears the server: {}",
        tone_share(&during, 8000, 1500.0)
    );
    let bob_hears = listen(|| bob.heard_timed(0), 800).await;
    assert!(
        tone_share(&bob_hears, 8000, 700.0) > 0.8,
        "Bob goes on hearing Alice: {}",
        tone_share(&bob_hears, 8000, 700.0)
    );
    assert_eq!(bob.invites(), 1, "no re-INVITE to Bob");
    // The media server hangs up: the exchange ends by itself and Alice hears Bob again.
    server.hang_up();
    let x = wait_exchange(&gw, "fx2", "TERMINATED").await;
    assert!(x["reason"].as_str().unwrap().contains("hung up"), "{x}");
    tokio::time::sleep(Duration::from_millis(400)).await;
    let after = listen(|| alice.heard_timed(0), 800).await;
    assert!(
        tone_share(&after, 8000, 440.0) > 0.6,
        "Alice hears Bob again: {}",
        tone_share(&after, 8000, 440.0)
    );
    let (s, _) = gw
        .post_json("/call/terminate", json!({"callId": "fx2"}))
        .await;
    assert_eq!(s, 200);
}

/// send_to_uri: the fork's peer gets a sendonly INVITE (the codec the body asked for) and
/// hears the chosen leg; `both` mixes the two parties; pause carries silence, resume the
/// audio again; the call's end ends the fork. Bad requests name the field.
#[tokio::test]
async fn send_to_uri_forks_a_leg_or_both_mixed_and_bad_requests_say_why() {
    let gw = Gateway::start(&[]).await;
    let alice = RawUas::start("PCMU", 700.0).await;
    let bob = RawUas::start("PCMU", 440.0).await;
    two_party(
        &gw,
        "fx3",
        &alice,
        format!("sip:bob@127.0.0.1:{}", bob.port),
    )
    .await;
    let fork = RawUas::start("PCMA", 1900.0).await;
    let uri = format!("sip:rec@127.0.0.1:{}", fork.port);
    let sdp = "v=0\r\no=- 1 1 IN IP4 10.1.1.1\r\ns=-\r\nc=IN IP4 10.1.1.1\r\nt=0 0\r\n\
               m=audio 4000 RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\n";
    for (body, status, needle) in [
        (json!({"callId": "nope", "uri": uri}), 404, "nope"),
        (json!({"callId": "fx3"}), 400, "uri"),
        (json!({"callId": "fx3", "uri": "not a uri"}), 400, "uri"),
        (
            json!({"callId": "fx3", "uri": uri, "leg": "third"}),
            400,
            "leg",
        ),
        (
            json!({"callId": "fx3", "uri": uri, "body": "hello"}),
            400,
            "body",
        ),
        (
            json!({"callId": "fx3", "uri": uri, "headers": {"Via": "SIP/2.0/UDP evil"}}),
            400,
            "headers",
        ),
        (
            json!({"callId": "fx3", "uri": uri, "headers": {"X-A": "b\r\nBYE: x"}}),
            400,
            "headers",
        ),
        (
            json!({"callId": "fx3", "uri": uri, "leg": "both", "mix": "sometimes"}),
            400,
            "mix",
        ),
    ] {
        let (s, e) = gw.post_json("/media/send_to_uri", body.clone()).await;
        assert_eq!(s, status, "{body}: {e}");
        assert!(e.to_string().contains(needle), "{body}: {e}");
    }
    assert_eq!(fork.invites(), 0, "no bad request placed a call");

    let (s, v) = gw
        .post_json(
            "/media/fork_to_uri",
            json!({"callId": "fx3", "uri": uri, "leg": "callee", "body": sdp}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    wait_exchange(&gw, "fx3", "ACTIVE").await;
    let invite = &fork.requests()[0];
    assert!(invite.contains("a=sendonly"), "{invite}");
    assert!(
        invite.contains("m=audio") && invite.contains(" RTP/AVP 8"),
        "{invite}"
    );
    assert!(
        !invite.contains("10.1.1.1"),
        "our addresses, not the body's: {invite}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let heard = listen(|| fork.heard_timed(8), 1000).await;
    assert!(heard.len() >= 7000, "about 1 s of PCMA: {}", heard.len());
    assert!(
        tone_share(&heard, 8000, 440.0) > 0.8,
        "the fork hears Bob (callee): {}",
        tone_share(&heard, 8000, 440.0)
    );
    // Alice and Bob still hear each other.
    let a = listen(|| alice.heard_timed(0), 600).await;
    assert!(tone_share(&a, 8000, 440.0) > 0.8);

    let (s, v) = gw
        .post_json("/media/fork_pause", json!({"callId": "fx3"}))
        .await;
    assert_eq!((s, v[0]["status"].as_str()), (200, Some("PAUSED")), "{v}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let paused = listen(|| fork.heard_timed(8), 600).await;
    assert!(
        tone_share(&paused, 8000, 440.0) < 0.05,
        "silence while paused: {}",
        tone_share(&paused, 8000, 440.0)
    );
    let (s, v) = gw
        .post_json("/media/fork_resume", json!({"callId": "fx3"}))
        .await;
    assert_eq!((s, v[0]["status"].as_str()), (200, Some("ACTIVE")), "{v}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let resumed = listen(|| fork.heard_timed(8), 600).await;
    assert!(tone_share(&resumed, 8000, 440.0) > 0.8, "audio again");
    let (s, _) = gw
        .post_json(
            "/media/terminate",
            json!({"callId": "fx3", "leg": "callee"}),
        )
        .await;
    assert_eq!(s, 200);
    let (s, e) = gw
        .post_json("/media/terminate", json!({"callId": "fx3"}))
        .await;
    assert_eq!(s, 404, "nothing left to terminate: {e}");

    // Both parties, mixed into one line (the default for both).
    let mixed_peer = RawUas::start("PCMU", 1900.0).await;
    let (s, v) = gw
        .post_json(
            "/media/send_to_uri",
            json!({"callId": "fx3", "uri": format!("sip:rec@127.0.0.1:{}", mixed_peer.port), "leg": "both"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let x = wait_exchange(&gw, "fx3", "ACTIVE").await;
    assert_eq!(
        (x["leg"].as_str(), x["mix"].as_bool()),
        (Some("both"), Some(true))
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let both = listen(|| mixed_peer.heard_timed(0), 1000).await;
    let (s700, s440) = (
        tone_share(&both, 8000, 700.0),
        tone_share(&both, 8000, 440.0),
    );
    assert!(
        s700 > 0.25 && s440 > 0.25,
        "both parties in one stream: 700 Hz {s700}, 440 Hz {s440}"
    );
    assert!(both.len() <= 8800, "one stream of packets: {}", both.len());
    // The call ends: so does its fork.
    let (s, _) = gw
        .post_json("/call/terminate", json!({"callId": "fx3"}))
        .await;
    assert_eq!(s, 200);
    let x = wait_exchange(&gw, "fx3", "TERMINATED").await;
    assert!(x["reason"].as_str().unwrap().contains("call ended"), "{x}");
    let deadline = Instant::now() + T;
    while mixed_peer.byes() == 0 {
        assert!(Instant::now() < deadline, "the fork's peer got no BYE");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Listen-in and barge-in: an endpoint calls `listen-<callId>` (sipp: the answer is
/// sendonly; a raw caller: it hears both parties) or `barge-<callId>` (it hears the call
/// and the callee hears it, mixed with the caller); unknown calls get 404.
#[tokio::test]
async fn endpoints_call_in_to_listen_or_barge_into_a_running_call() {
    let gw = Gateway::start(&[]).await;
    let alice = RawUas::start("PCMU", 700.0).await;
    let bob = RawUas::start("PCMU", 440.0).await;
    two_party(
        &gw,
        "fx4",
        &alice,
        format!("sip:bob@127.0.0.1:{}", bob.port),
    )
    .await;

    assert_eq!(
        RawUac::call(gw.sip_port, "listen-nosuchcall", "", 1200.0)
            .await
            .err(),
        Some(404)
    );
    // A real SIP stack: sipp checks that our answer is sendonly.
    let mut sipp = Sipp::uac(
        "uac_listen.xml",
        gw.sip_port,
        &[("USER", "listen-fx4".to_string())],
    );
    assert_eq!(sipp.wait_async(T).await, Some(0), "{}", sipp.messages());

    // Listen to the callee only (URI parameter), then to both.
    let boss = RawUac::call(gw.sip_port, "listen-fx4;leg=callee", "", 1200.0)
        .await
        .expect("listener answered");
    assert!(boss.answer.contains("a=sendonly"), "{}", boss.answer);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let heard = listen(|| boss.heard_timed(), 1000).await;
    assert!(
        tone_share(&heard, 8000, 440.0) > 0.8,
        "the listener hears Bob: {}",
        tone_share(&heard, 8000, 440.0)
    );
    let call = gw.call("fx4").await;
    let listeners: Vec<&Value> = call["exchanges"]
        .as_array()
        .map(|a| a.iter().filter(|x| x["kind"] == "send_from_call").collect())
        .unwrap_or_default();
    assert_eq!(listeners.len(), 2, "sipp's and ours: {call}");
    let a = listen(|| alice.heard_timed(0), 600).await;
    assert!(
        tone_share(&a, 8000, 1200.0) < 0.05,
        "a listener is not heard: {}",
        tone_share(&a, 8000, 1200.0)
    );
    boss.bye().await;

    let barger = RawUac::call(
        gw.sip_port,
        "barge",
        "X-Call-Id: fx4\r\nX-Leg: callee\r\n",
        1200.0,
    )
    .await
    .expect("barge-in answered");
    assert!(barger.answer.contains("a=sendrecv"), "{}", barger.answer);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let b = listen(|| bob.heard_timed(0), 1000).await;
    let (s700, s1200) = (tone_share(&b, 8000, 700.0), tone_share(&b, 8000, 1200.0));
    assert!(
        s700 > 0.25 && s1200 > 0.25,
        "Bob hears Alice and the barger: 700 Hz {s700}, 1200 Hz {s1200}"
    );
    let heard = listen(|| barger.heard_timed(), 600).await;
    assert!(
        tone_share(&heard, 8000, 440.0) > 0.8,
        "the barger hears Bob"
    );
    // Terminating the call's exchanges hangs up the barger.
    let (s, v) = gw
        .post_json("/media/terminate", json!({"callId": "fx4"}))
        .await;
    assert_eq!(s, 200, "{v}");
    tokio::time::sleep(Duration::from_millis(400)).await;
    let b = listen(|| bob.heard_timed(0), 600).await;
    assert!(tone_share(&b, 8000, 1200.0) < 0.05, "the barger is gone");
    let (s, _) = gw
        .post_json("/call/terminate", json!({"callId": "fx4"}))
        .await;
    assert_eq!(s, 200);
}

fn window_shares(pcm: &[i16], hz: f64) -> Vec<f64> {
    pcm.chunks_exact(800)
        .map(|w| tone_share(w, 8000, hz))
        .collect()
}

fn median_share(pcm: &[i16], hz: f64) -> f64 {
    let mut v = window_shares(pcm, hz);
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn max_share(pcm: &[i16], hz: f64) -> f64 {
    window_shares(pcm, hz).into_iter().fold(0.0, f64::max)
}

/// send_to_uri with `leg: both, mix: false`: one INVITE with two sendonly audio lines
/// labelled caller and callee (sipp checks them); each line carries its party alone, by
/// frequency; the call's end sends the fork's BYE.
#[tokio::test]
async fn send_to_uri_both_unmixed_sends_each_party_on_its_own_line() {
    let gw = Gateway::start(&[]).await;
    let alice = RawUas::start("PCMU", 700.0).await;
    let bob = RawUas::start("PCMA", 440.0).await;
    two_party(
        &gw,
        "fx6",
        &alice,
        format!("sip:bob@127.0.0.1:{}", bob.port),
    )
    .await;
    let sinks = common::rtp_sink_pair().await;
    let vars = [
        ("P1", sinks.0.local_addr().unwrap().port().to_string()),
        ("P2", sinks.1.local_addr().unwrap().port().to_string()),
    ];
    let mut target = Sipp::uas_with("uas_two_lines.xml", "udp", false, &vars);
    let (s, v) = gw
        .post_json(
            "/media/send_to_uri",
            json!({"callId": "fx6", "uri": format!("sip:rec@127.0.0.1:{}", target.port),
                "leg": "both", "mix": false}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let x = wait_exchange(&gw, "fx6", "ACTIVE").await;
    assert_eq!(
        (x["leg"].as_str(), x["mix"].as_bool()),
        (Some("both"), Some(false)),
        "{x}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (caller_line, callee_line) = tokio::join!(
        common::rtp_pcmu(&sinks.0, Duration::from_millis(1000)),
        common::rtp_pcmu(&sinks.1, Duration::from_millis(1000))
    );
    for (name, pcm, own, other) in [
        ("caller", &caller_line, 700.0, 440.0),
        ("callee", &callee_line, 440.0, 700.0),
    ] {
        assert!(
            pcm.len() >= 7000,
            "{name} line: about 1 s, got {}",
            pcm.len()
        );
        // By 100 ms windows: a share over the whole second is phase-coherent, and one
        // trimmed backlog (a phase jump, see LiveBuffer) would cancel half of it.
        let (a, b) = (median_share(pcm, own), max_share(pcm, other));
        assert!(
            a > 0.8 && b < 0.05,
            "the {name} line carries its party alone: {own} Hz {a} (median of 100 ms), {other} Hz {b} (max)"
        );
    }
    let call = gw.call("fx6").await;
    let fork = gw.call(x["exchangeId"].as_str().unwrap()).await;
    let tracks = fork["legs"][0]["tracks"].as_array().unwrap();
    assert_eq!(tracks.len(), 2, "two audio lines: {fork}");
    assert!(
        call["exchanges"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["mix"] == false),
        "{call}"
    );

    let (s, _) = gw
        .post_json("/call/terminate", json!({"callId": "fx6"}))
        .await;
    assert_eq!(s, 200);
    // Awaited, not blocked on: Alice and Bob answer the BYEs from this test's runtime, and
    // the fork ends when the call has.
    gw.wait_status("fx6", &["FINISH"], T).await;
    wait_exchange(&gw, "fx6", "TERMINATED").await;
    assert_eq!(
        target.wait_async(T).await,
        Some(0),
        "fork target:\n{}",
        target.messages()
    );
    assert!(
        target
            .messages()
            .contains("X-Seen: a=label:caller a=label:callee a=sendonly"),
        "{}",
        target.messages()
    );
}
