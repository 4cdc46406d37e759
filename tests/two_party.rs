//! Two-party calls anchored in the gateway, end to end: `/call/startup` with `caller` and
//! `callee` calls the caller, then the callee, and bridges their RTP through itself,
//! transcoding where the legs' codecs differ. The peers are real RTP endpoints on 127.0.0.1
//! (sipp, and a small UAS that streams a tone and keeps what it hears): each must hear the
//! other's tone.
mod common;

use std::time::{Duration, Instant};

use common::{tone_share, Gateway, RawUas, Sipp};
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(15);

fn body(call_id: &str, caller: String, callee: String) -> Value {
    json!({
        "callId": call_id,
        "caller": caller,
        "callee": callee,
        "sipLogin": "gw",
        "sipDomain": "127.0.0.1",
        "sipRegisterRequired": "false",
        "toStream": format!("{call_id}_stream"),
    })
}

/// Starts a two-party call from the RTP peer `alice` (caller) to `bob` (callee), each
/// addressed by a plain `sip:user@host:port` URI.
async fn start_between(gw: &Gateway, call_id: &str, alice: &RawUas, bob: &RawUas) {
    let (s, v) = gw
        .post_json(
            "/call/startup",
            body(
                call_id,
                format!("sip:alice@127.0.0.1:{}", alice.port),
                format!("sip:bob@127.0.0.1:{}", bob.port),
            ),
        )
        .await;
    assert_eq!(s, 200, "{v}");
}

/// Waits until `peer` has heard `secs` of audio with payload type `pt`, returns it.
async fn heard(peer: &RawUas, pt: u8, secs: f64) -> Vec<i16> {
    let deadline = Instant::now() + T;
    loop {
        let pcm = peer.heard(pt);
        if pcm.len() as f64 >= secs * 8000.0 {
            return pcm;
        }
        assert!(
            Instant::now() < deadline,
            "heard only {} samples",
            pcm.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn control_events(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<Value>,
    call_id: &str,
    until: &str,
) -> Vec<String> {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + T;
    while !seen.iter().any(|e| e == until) {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(ev)) if ev["type"] == "CallControlEvent" && ev["callId"] == call_id => {
                seen.push(ev["event"].as_str().unwrap().to_string());
            }
            Ok(Some(_)) => {}
            _ => panic!("no {until} for {call_id}; saw {seen:?}"),
        }
    }
    seen
}

#[tokio::test]
async fn a_two_party_call_bridges_pcmu_and_pcma_both_ways_and_hangs_up_both_legs() {
    let (url, mut rx) = common::webhook().await;
    let gw = Gateway::start(&[("webhook_url", url)]).await;
    let alice = RawUas::start("PCMU", 440.0).await;
    let bob = RawUas::start("PCMA", 1000.0).await;
    let (s, call) = gw
        .post_json(
            "/call/startup",
            body(
                "tp1",
                format!("sip:alice@127.0.0.1:{}", alice.port),
                format!("sip:bob@127.0.0.1:{}", bob.port),
            ),
        )
        .await;
    assert_eq!(s, 200, "{call}");
    assert_eq!(
        call["caller"],
        format!("sip:alice@127.0.0.1:{}", alice.port)
    );
    let events = control_events(&mut rx, "tp1", "CalleeAnswered").await;
    assert_eq!(events, ["CallerAnswered", "CalleeAnswered"]);
    let call = gw.wait_status("tp1", &["ESTABLISHED"], T).await;
    assert_eq!(call["legs"][0]["name"], "caller", "{call}");
    assert_eq!(call["legs"][1]["name"], "callee", "{call}");
    assert_eq!(call["legs"][0]["status"], "ESTABLISHED", "{call}");
    assert_eq!(call["legs"][1]["status"], "ESTABLISHED", "{call}");
    assert_ne!(call["legs"][0]["sipCallId"], call["legs"][1]["sipCallId"]);
    assert_eq!(call["legs"][0]["tracks"][0]["codec"], "PCMU", "{call}");
    assert_eq!(call["legs"][1]["tracks"][0]["codec"], "PCMA", "{call}");
    // Each hears the other: Alice's 440 Hz reaches Bob as PCMA, Bob's 1 kHz reaches Alice
    // as PCMU (the first 200 ms skipped: silence before the bridge).
    let at_bob = heard(&bob, 8, 2.0).await;
    let at_alice = heard(&alice, 0, 2.0).await;
    let bob_hears = tone_share(&at_bob[at_bob.len() - 8000..], 8000, 440.0);
    let alice_hears = tone_share(&at_alice[at_alice.len() - 8000..], 8000, 1000.0);
    eprintln!("shares: bob {bob_hears:.3} alice {alice_hears:.3}");
    assert!(
        bob_hears > 0.5,
        "Bob hears Alice's 440 Hz: share {bob_hears}"
    );
    assert!(
        alice_hears > 0.5,
        "Alice hears Bob's 1 kHz: share {alice_hears}"
    );
    assert!(tone_share(&at_bob[at_bob.len() - 8000..], 8000, 1000.0) < 0.1);
    // The stream carries both legs' tracks.
    let stream = gw.stream("tp1_stream").await.expect("stream");
    let legs: Vec<&str> = stream["tracks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["leg"].as_str().unwrap())
        .collect();
    assert!(
        legs.contains(&"caller") && legs.contains(&"callee"),
        "{stream}"
    );
    // Hold the callee only: one re-INVITE to Bob.
    let (s, e) = gw
        .post_json("/call/hold", json!({"callId": "tp1", "leg": "nobody"}))
        .await;
    assert_eq!(s, 400, "{e}");
    let (s, _) = gw
        .post_json("/call/terminate", json!({"callId": "tp1"}))
        .await;
    assert_eq!(s, 200);
    gw.wait_status("tp1", &["FINISH"], T).await;
    let deadline = Instant::now() + T;
    while alice.byes() == 0 || bob.byes() == 0 {
        assert!(Instant::now() < deadline, "both legs get a BYE");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn sipp_as_caller_is_heard_by_the_callee_and_the_callee_hanging_up_ends_both() {
    let gw = Gateway::start(&[]).await;
    let mut sipp = Sipp::uas("uas_pcmu_stream.xml", "udp", false);
    let bob = RawUas::start("PCMA", 1000.0).await;
    let (s, call) = gw
        .post_json(
            "/call/startup",
            body(
                "tp2",
                format!("sip:alice@127.0.0.1:{}", sipp.port),
                format!("sip:bob@127.0.0.1:{}", bob.port),
            ),
        )
        .await;
    assert_eq!(s, 200, "{call}");
    gw.wait_status("tp2", &["ESTABLISHED"], T).await;
    // sipp's 440 Hz PCMU tone arrives at Bob as PCMA.
    let at_bob = heard(&bob, 8, 2.0).await;
    let share = tone_share(&at_bob[at_bob.len() - 8000..], 8000, 440.0);
    assert!(share > 0.5, "Bob hears sipp's tone: share {share}");
    // Bob hangs up: the gateway ends the call and hangs up sipp.
    bob.hang_up();
    let call = gw.wait_status("tp2", &["FINISH"], T).await;
    assert!(
        call["reason"].as_str().unwrap_or("").starts_with("callee"),
        "{call}"
    );
    assert_eq!(sipp.wait(T), Some(0), "{}", sipp.messages());
}

#[tokio::test]
async fn a_busy_caller_fails_the_call_and_the_callee_is_never_called() {
    let gw = Gateway::start(&[]).await;
    let mut sipp = Sipp::uas("uas_busy.xml", "udp", false);
    let bob = RawUas::start("PCMU", 1000.0).await;
    let (s, _) = gw
        .post_json(
            "/call/startup",
            body(
                "tp3",
                format!("sip:alice@127.0.0.1:{}", sipp.port),
                format!("sip:bob@127.0.0.1:{}", bob.port),
            ),
        )
        .await;
    assert_eq!(s, 200);
    let call = gw.wait_status("tp3", &["BUSY", "FAILED"], T).await;
    assert_eq!(call["sipStatus"], 486, "{call}");
    assert_eq!(call["legs"][1]["status"], "PENDING", "{call}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(bob.invites(), 0, "the callee is not called");
    assert_eq!(sipp.wait(T), Some(0), "{}", sipp.messages());
    // caller equal to callee is refused by name.
    let (s, e) = gw
        .post_json(
            "/call/startup",
            body("tp4", "sip:x@127.0.0.1".into(), "sip:x@127.0.0.1".into()),
        )
        .await;
    assert_eq!(s, 400, "{e}");
    assert!(e["message"].as_str().unwrap().contains("caller"), "{e}");
}

#[tokio::test]
async fn call_api_callstart_with_caller_and_callee_only_bridges_them() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let gw = Gateway::start(&[]).await;
    let alice = RawUas::start("PCMU", 440.0).await;
    let bob = RawUas::start("PCMU", 1000.0).await;
    let url = format!("{}/call-api", gw.rest.replace("http://", "ws://"));
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    // call-api's CallStart: two SIP URIs, nothing else.
    let start = json!({"jsonrpc": "2.0", "id": "c1", "method": "CallStart", "params": {
        "caller": format!("sip:alice@127.0.0.1:{}", alice.port),
        "callee": format!("sip:bob@127.0.0.1:{}", bob.port),
    }});
    ws.send(Message::text(start.to_string())).await.unwrap();
    let mut call_id = None;
    // (callId, event): events can come before the reply that names the call.
    let mut seen: Vec<(String, String)> = Vec::new();
    let mut events = Vec::new();
    let deadline = tokio::time::Instant::now() + T;
    while !events.iter().any(|e| e == "ESTABLISHED") {
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await
            .unwrap_or_else(|_| panic!("stalled; saw {events:?}"))
            .unwrap()
            .unwrap();
        let Message::Text(t) = msg else { continue };
        let v: Value = serde_json::from_str(&t).unwrap();
        if v["id"] == "c1" {
            assert_eq!(v["result"]["status"], "Started", "{v}");
            call_id = v["result"]["callId"].as_str().map(str::to_string);
        } else if v["method"] == "Event" {
            seen.push((
                v["params"]["callId"].as_str().unwrap_or("").to_string(),
                v["params"]["event"].as_str().unwrap_or("").to_string(),
            ));
        }
        if let Some(id) = &call_id {
            events = seen
                .iter()
                .filter(|(c, _)| c == id)
                .map(|(_, e)| e.clone())
                .collect();
        }
    }
    let call_id = call_id.unwrap();
    assert!(events.contains(&"CallerAnswered".to_string()), "{events:?}");
    assert!(events.contains(&"CalleeAnswered".to_string()), "{events:?}");
    let at_bob = heard(&bob, 0, 1.0).await;
    let share = tone_share(&at_bob[at_bob.len() - 4000..], 8000, 440.0);
    assert!(share > 0.5, "Bob hears Alice: {share}");
    let end =
        json!({"jsonrpc": "2.0", "id": "c2", "method": "CallEnd", "params": {"callid": call_id}});
    ws.send(Message::text(end.to_string())).await.unwrap();
    gw.wait_status(&call_id, &["FINISH"], T).await;
}

/// Decodes a recording to 8 kHz stereo and returns (left, right).
fn stereo_pcm(file: &std::path::Path) -> (Vec<i16>, Vec<i16>) {
    common::require("ffmpeg");
    let out = std::process::Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(file)
        .args(["-f", "s16le", "-ac", "2", "-ar", "8000", "pipe:1"])
        .output()
        .expect("run ffmpeg");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let samples: Vec<i16> = out
        .stdout
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect();
    let left = samples.iter().step_by(2).copied().collect();
    let right = samples.iter().skip(1).step_by(2).copied().collect();
    (left, right)
}

#[tokio::test]
async fn a_recorded_two_party_call_is_stereo_with_one_leg_per_channel() {
    let gw = Gateway::start(&[]).await;
    let alice = RawUas::start("PCMU", 440.0).await;
    let bob = RawUas::start("PCMA", 1000.0).await;
    let mut b = body(
        "tp5",
        format!("sip:alice@127.0.0.1:{}", alice.port),
        format!("sip:bob@127.0.0.1:{}", bob.port),
    );
    b["record"] = json!(true);
    let (s, call) = gw.post_json("/call/startup", b).await;
    assert_eq!(s, 200, "{call}");
    gw.wait_status("tp5", &["ESTABLISHED"], T).await;
    // The stream's first track is the mixed one: stereo Opus.
    let stream = gw.stream("tp5_stream").await.unwrap();
    let t0 = &stream["tracks"][0];
    assert_eq!(t0["leg"], "mixed", "{stream}");
    assert_eq!(t0["codec"], "opus", "{stream}");
    assert_eq!(t0["channels"], 2, "{stream}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    gw.post_json("/call/terminate", json!({"callId": "tp5"}))
        .await;
    gw.wait_status("tp5", &["FINISH"], T).await;
    let deadline = Instant::now() + T;
    let file = loop {
        let (_, all) = gw.post("/recorder/find_all", "").await;
        let done = all.as_array().and_then(|a| {
            a.iter()
                .find(|r| r["stream"] == "tp5_stream" && r["state"] == "done")
                .cloned()
        });
        if let Some(r) = done {
            break gw
                .dir()
                .join("records")
                .join(r["fileName"].as_str().unwrap());
        }
        assert!(Instant::now() < deadline, "no finished recording: {all}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let probe = common::ffprobe(file.to_str().unwrap(), T).expect("ffprobe reads it");
    let audio = probe["streams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["codec_type"] == "audio")
        .cloned()
        .unwrap();
    assert_eq!(audio["channels"], 2, "{audio}");
    let (left, right) = stereo_pcm(&file);
    assert!(left.len() > 16000, "at least 2 s: {}", left.len());
    let mid = |v: &[i16]| v[v.len() / 2 - 8000..v.len() / 2 + 8000].to_vec();
    let (l, r) = (mid(&left), mid(&right));
    let (l440, r1k) = (tone_share(&l, 8000, 440.0), tone_share(&r, 8000, 1000.0));
    eprintln!("recording: left 440 Hz {l440:.3}, right 1 kHz {r1k:.3}");
    assert!(l440 > 0.5, "the caller's tone on the left: {l440}");
    assert!(r1k > 0.5, "the callee's tone on the right: {r1k}");
    assert!(tone_share(&l, 8000, 1000.0) < 0.1, "no callee on the left");
    assert!(tone_share(&r, 8000, 440.0) < 0.1, "no caller on the right");
}

#[tokio::test]
async fn a_held_leg_of_a_two_party_call_stops_hearing_the_other_until_unhold() {
    let gw = Gateway::start(&[]).await;
    let alice = RawUas::start("PCMU", 440.0).await;
    let bob = RawUas::start("PCMU", 1000.0).await;
    start_between(&gw, "tp6", &alice, &bob).await;
    gw.wait_status("tp6", &["ESTABLISHED"], T).await;
    let at_bob = heard(&bob, 0, 1.0).await;
    assert!(tone_share(&at_bob[at_bob.len() - 4000..], 8000, 440.0) > 0.5);
    let (s, e) = gw
        .post_json("/call/hold", json!({"callId": "tp6", "leg": "callee"}))
        .await;
    assert_eq!(s, 200, "{e}");
    gw.wait_status("tp6", &["HOLD"], T).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let pcm = bob.heard(0);
    let tail = &pcm[pcm.len() - 2000..];
    assert!(
        tone_share(tail, 8000, 440.0) < 0.1,
        "the held callee no longer hears the caller"
    );
    // The caller still hears the callee (only the callee is held).
    let pcm = alice.heard(0);
    assert!(tone_share(&pcm[pcm.len() - 2000..], 8000, 1000.0) > 0.5);
    let (s, _) = gw
        .post_json("/call/unhold", json!({"callId": "tp6", "leg": "callee"}))
        .await;
    assert_eq!(s, 200);
    gw.wait_status("tp6", &["ESTABLISHED"], T).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let pcm = bob.heard(0);
    assert!(
        tone_share(&pcm[pcm.len() - 2000..], 8000, 440.0) > 0.5,
        "bridged again"
    );
    gw.post_json("/call/terminate", json!({"callId": "tp6"}))
        .await;
    gw.wait_status("tp6", &["FINISH"], T).await;
}

/// `/siprec/start` of `call_id` to a sipp SRS that points both media lines at two sockets
/// of the test (the first m-line's, the callee's, then the caller's).
async fn siprec_to_sinks(
    gw: &Gateway,
    call_id: &str,
) -> (Sipp, tokio::net::UdpSocket, tokio::net::UdpSocket) {
    let (p1, p2) = common::rtp_sink_pair().await;
    let srs = Sipp::uas_with(
        "srs_accept.xml",
        "udp",
        false,
        &[
            ("P1", p1.local_addr().unwrap().port().to_string()),
            ("P2", p2.local_addr().unwrap().port().to_string()),
        ],
    );
    let (s, e) = gw
        .post_json(
            "/siprec/start",
            json!({"callId": call_id, "srs": format!("sip:srs@127.0.0.1:{}", srs.port)}),
        )
        .await;
    assert_eq!(s, 200, "{e}");
    (srs, p1, p2)
}

#[tokio::test]
async fn siprec_of_a_two_party_call_records_each_party_on_its_own_stream() {
    let gw = Gateway::start(&[]).await;
    let alice = RawUas::start("PCMU", 440.0).await;
    let bob = RawUas::start("PCMU", 1000.0).await;
    start_between(&gw, "tp7", &alice, &bob).await;
    gw.wait_status("tp7", &["ESTABLISHED"], T).await;
    // Two sinks as the SRS's media ports (first m-line: the callee, second: the caller).
    let (mut srs, p1, p2) = siprec_to_sinks(&gw, "tp7").await;
    let callee_stream = common::rtp_pcmu(&p1, Duration::from_millis(1500)).await;
    let caller_stream = common::rtp_pcmu(&p2, Duration::from_millis(500)).await;
    assert!(callee_stream.len() > 4000, "{}", callee_stream.len());
    assert!(caller_stream.len() > 2000, "{}", caller_stream.len());
    let c = tone_share(&callee_stream[callee_stream.len() - 4000..], 8000, 1000.0);
    let a = tone_share(&caller_stream[caller_stream.len() - 2000..], 8000, 440.0);
    assert!(c > 0.5, "the callee's 1 kHz on the first stream: {c}");
    assert!(a > 0.5, "the caller's 440 Hz on the second stream: {a}");
    gw.post_json("/call/terminate", json!({"callId": "tp7"}))
        .await;
    gw.wait_status("tp7", &["FINISH"], T).await;
    assert_eq!(srs.wait(T), Some(0), "{}", srs.messages());
}

/// The RTP arriving on `sock` for `window`: the payload types seen, and the G.711 audio
/// decoded by its payload type (0: µ-law, 8: A-law).
async fn rtp_g711(sock: &tokio::net::UdpSocket, window: Duration) -> (Vec<u8>, Vec<i16>) {
    let mut buf = [0u8; 2048];
    let (mut pts, mut pcm) = (Vec::new(), Vec::new());
    let deadline = tokio::time::Instant::now() + window;
    while let Ok(Ok((n, _))) = tokio::time::timeout_at(deadline, sock.recv_from(&mut buf)).await {
        if n <= 12 {
            continue;
        }
        let pt = buf[1] & 0x7f;
        if !pts.contains(&pt) {
            pts.push(pt);
        }
        match pt {
            0 => sipstream::media::g711::decode_ulaw(&buf[12..n], &mut pcm),
            8 => sipstream::media::g711::decode_alaw(&buf[12..n], &mut pcm),
            _ => {}
        }
    }
    (pts, pcm)
}

/// The audio lines of the first SDP offer the SRS received (sipp's message log): for each
/// `m=audio`, its label and its formats with their rtpmaps, e.g. `("1", "8 | 8 PCMA/8000")`.
fn offered_audio_lines(messages: &str) -> Vec<(String, String)> {
    let invite = messages.find("INVITE sip:").expect("an INVITE");
    let offer = &messages[invite..];
    let offer = &offer[..offer.find("</recording>").unwrap_or(offer.len())];
    let mut lines: Vec<(String, String)> = Vec::new();
    for l in offer.lines().map(str::trim) {
        if let Some(m) = l.strip_prefix("m=audio ") {
            let fmts = m.splitn(3, ' ').nth(2).unwrap_or("").to_string();
            lines.push((String::new(), fmts + " |"));
        } else if let (Some(last), Some(map)) = (lines.last_mut(), l.strip_prefix("a=rtpmap:")) {
            last.1 = format!("{} {map}", last.1);
        } else if let (Some(last), Some(label)) = (lines.last_mut(), l.strip_prefix("a=label:")) {
            last.0 = label.to_string();
        }
    }
    lines
}

#[tokio::test]
async fn siprec_of_a_pcmu_caller_and_a_pcma_callee_sends_each_stream_in_its_own_codec() {
    let gw = Gateway::start(&[]).await;
    let alice = RawUas::start("PCMU", 440.0).await;
    let bob = RawUas::start("PCMA", 1000.0).await;
    start_between(&gw, "tp7b", &alice, &bob).await;
    let call = gw.wait_status("tp7b", &["ESTABLISHED"], T).await;
    assert_eq!(call["legs"][0]["tracks"][0]["codec"], "PCMU", "{call}");
    assert_eq!(call["legs"][1]["tracks"][0]["codec"], "PCMA", "{call}");
    // The SRS (sipp) answers both lines with PCMU and PCMA; the media goes to our sockets.
    let (mut srs, p1, p2) = siprec_to_sinks(&gw, "tp7b").await;
    // First m-line: the callee's PCMA, second: the caller's PCMU, each under its own
    // payload type, each carrying that party's tone.
    let (callee_pts, callee_stream) = rtp_g711(&p1, Duration::from_millis(1500)).await;
    let (caller_pts, caller_stream) = rtp_g711(&p2, Duration::from_millis(500)).await;
    assert_eq!(callee_pts, [8], "the callee's stream is PCMA");
    assert_eq!(caller_pts, [0], "the caller's stream is PCMU");
    assert!(callee_stream.len() > 4000, "{}", callee_stream.len());
    assert!(caller_stream.len() > 2000, "{}", caller_stream.len());
    let c = tone_share(&callee_stream[callee_stream.len() - 4000..], 8000, 1000.0);
    let a = tone_share(&caller_stream[caller_stream.len() - 2000..], 8000, 440.0);
    eprintln!("shares: callee stream 1 kHz {c:.3}, caller stream 440 Hz {a:.3}");
    assert!(c > 0.5, "the callee's 1 kHz on the first stream: {c}");
    assert!(a > 0.5, "the caller's 440 Hz on the second stream: {a}");
    gw.post_json("/call/terminate", json!({"callId": "tp7b"}))
        .await;
    gw.wait_status("tp7b", &["FINISH"], T).await;
    assert_eq!(srs.wait(T), Some(0), "{}", srs.messages());
    // The offer the SRS got: each line in its own party's codec, nothing else.
    let offered = offered_audio_lines(&srs.messages());
    assert_eq!(
        offered,
        [
            ("1".to_string(), "8 | 8 PCMA/8000".to_string()),
            ("2".to_string(), "0 | 0 PCMU/8000".to_string()),
        ],
        "{}",
        srs.messages()
    );
}

#[tokio::test]
async fn digits_one_party_presses_reach_the_other_as_telephone_events() {
    let (url, mut rx) = common::webhook().await;
    let gw = Gateway::start(&[("webhook_url", url)]).await;
    let alice = RawUas::start("PCMU", 440.0).await;
    let bob = RawUas::start("PCMA", 1000.0).await;
    start_between(&gw, "tp8", &alice, &bob).await;
    gw.wait_status("tp8", &["ESTABLISHED"], T).await;
    heard(&bob, 8, 0.5).await;
    // Alice presses 7 then #: both arrive at Bob as RFC 4733 events on his payload type.
    alice.press(7);
    let ev = common::wait_event(&mut rx, "DtmfEvent", T).await;
    assert_eq!(
        (ev["digit"].as_str(), ev["leg"].as_str()),
        (Some("7"), Some("caller")),
        "{ev}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    alice.press(11);
    let deadline = Instant::now() + T;
    while bob.events() != [7, 11] {
        assert!(Instant::now() < deadline, "Bob got {:?}", bob.events());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // And the other way.
    bob.press(3);
    let deadline = Instant::now() + T;
    while alice.events() != [3] {
        assert!(Instant::now() < deadline, "Alice got {:?}", alice.events());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    gw.post_json("/call/terminate", json!({"callId": "tp8"}))
        .await;
    gw.wait_status("tp8", &["FINISH"], T).await;
}

#[tokio::test]
async fn a_pcmu_caller_and_an_opus_callee_hear_each_other_transcoded() {
    let gw = Gateway::start(&[]).await;
    let alice = RawUas::start("PCMU", 440.0).await;
    let bob = RawUas::start("opus", 1000.0).await;
    start_between(&gw, "tp9", &alice, &bob).await;
    let call = gw.wait_status("tp9", &["ESTABLISHED"], T).await;
    assert_eq!(call["legs"][1]["tracks"][0]["codec"], "opus", "{call}");
    // Bob's Opus (48 kHz) reaches Alice as PCMU; Alice's PCMU reaches Bob as Opus.
    let at_alice = heard(&alice, 0, 2.0).await;
    let a = tone_share(&at_alice[at_alice.len() - 8000..], 8000, 1000.0);
    let deadline = Instant::now() + T;
    let at_bob = loop {
        let pcm = bob.heard_opus();
        if pcm.len() >= 96000 {
            break pcm;
        }
        assert!(Instant::now() < deadline, "Bob heard {} samples", pcm.len());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let b = tone_share(&at_bob[at_bob.len() - 48000..], 48000, 440.0);
    eprintln!("opus bridge: alice hears 1 kHz {a:.3}, bob hears 440 Hz {b:.3}");
    assert!(a > 0.5, "Alice hears Bob's 1 kHz through Opus → PCMU: {a}");
    assert!(b > 0.5, "Bob hears Alice's 440 Hz through PCMU → Opus: {b}");
    gw.post_json("/call/terminate", json!({"callId": "tp9"}))
        .await;
    gw.wait_status("tp9", &["FINISH"], T).await;
}

/// The packets of track `i` of `stream`.
async fn track_packets(gw: &Gateway, stream: &str, i: usize) -> u64 {
    gw.stream(stream).await.unwrap()["tracks"][i]["packets"]
        .as_u64()
        .unwrap_or(0)
}

#[tokio::test]
async fn the_mixed_track_is_encoded_only_while_someone_follows_the_stream() {
    let gw = Gateway::start(&[]).await;
    let alice = RawUas::start("PCMU", 440.0).await;
    let bob = RawUas::start("PCMA", 1000.0).await;
    start_between(&gw, "mx1", &alice, &bob).await;
    gw.wait_status("mx1", &["ESTABLISHED"], T).await;
    heard(&bob, 8, 1.0).await;
    // The bridge works, but nobody records, plays or pushes: no mixed frame is made.
    let stream = gw.stream("mx1_stream").await.unwrap();
    assert_eq!(stream["tracks"][0]["leg"], "mixed", "{stream}");
    assert_eq!(track_packets(&gw, "mx1_stream", 0).await, 0, "{stream}");
    assert!(track_packets(&gw, "mx1_stream", 1).await > 25, "{stream}");

    // A recorder follows the stream: the mix starts within a quarter second.
    let (s, rec) = gw
        .post_json("/stream/startRecording", json!({"name": "mx1_stream"}))
        .await;
    assert_eq!(s, 200, "{rec}");
    let recording = Instant::now();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mixed = track_packets(&gw, "mx1_stream", 0).await;
    let most = (recording.elapsed().as_secs_f64() * 50.0) as u64 + 1;
    assert!(
        (40..=most).contains(&mixed),
        "one frame per 20 ms once recorded (at most {most}), got {mixed}"
    );
    // Stopped: the mix stops with it.
    let (s, done) = gw
        .post_json(
            "/recorder/terminate",
            json!({"mediaSessionId": rec["mediaSessionId"]}),
        )
        .await;
    assert_eq!(s, 200, "{done}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stopped = track_packets(&gw, "mx1_stream", 0).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        track_packets(&gw, "mx1_stream", 0).await,
        stopped,
        "no frames once nobody follows"
    );
    let (s, _) = gw
        .post_json("/call/terminate", json!({"callId": "mx1"}))
        .await;
    assert_eq!(s, 200);
}

/// The frame number a [`common::RawUas`] put in its video payloads.
fn frame_of(p: &common::RtpSeen) -> u32 {
    u32::from_be_bytes([p.payload[1], p.payload[2], p.payload[3], p.payload[4]])
}

/// Waits until `peer` has received `n` video packets; returns them.
async fn video(peer: &RawUas, n: usize) -> Vec<common::RtpSeen> {
    let deadline = Instant::now() + T;
    loop {
        let seen = peer.video_seen();
        if seen.len() >= n {
            return seen;
        }
        assert!(Instant::now() < deadline, "{} video packets", seen.len());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn video_is_relayed_between_the_legs_and_keyframe_requests_cross_over() {
    let gw = Gateway::start(&[]).await;
    let alice = RawUas::start_av("PCMU", 440.0, true).await;
    let bob = RawUas::start_av("PCMA", 1000.0, true).await;
    let mut b = body(
        "vid1",
        format!("sip:alice@127.0.0.1:{}", alice.port),
        format!("sip:bob@127.0.0.1:{}", bob.port),
    );
    b["hasVideo"] = json!(true);
    let (s, v) = gw.post_json("/call/startup", b).await;
    assert_eq!(s, 200, "{v}");
    let call = gw.wait_status("vid1", &["ESTABLISHED"], T).await;
    for leg in 0..2 {
        assert_eq!(call["legs"][leg]["tracks"][1]["kind"], "video", "{call}");
        assert_eq!(call["legs"][leg]["tracks"][1]["codec"], "H264", "{call}");
    }
    // Each party gets the other's frames as they were sent: three packets per frame, the
    // last one marked, frames 3600 ticks apart, under the gateway's own SSRC.
    for (who, peer) in [("bob", &bob), ("alice", &alice)] {
        let got = video(peer, 60).await;
        let ssrcs: std::collections::BTreeSet<u32> = got.iter().map(|p| p.ssrc).collect();
        assert_eq!(ssrcs.len(), 1, "{who}: one SSRC");
        assert!(
            !ssrcs.contains(&(0x7100_0000 | u32::from(alice.port)))
                && !ssrcs.contains(&(0x7100_0000 | u32::from(bob.port))),
            "{who}: the gateway's SSRC, not the sender's"
        );
        for w in got.windows(2) {
            assert_eq!(w[1].seq, w[0].seq.wrapping_add(1), "{who}: our sequence");
            let (f0, f1) = (frame_of(&w[0]), frame_of(&w[1]));
            if f1 == f0 {
                assert_eq!(w[1].timestamp, w[0].timestamp, "{who}: one frame, one time");
            } else {
                assert_eq!(f1, f0 + 1, "{who}: no frame lost");
                assert!(w[0].marker, "{who}: a frame's last packet is marked");
                assert_eq!(
                    w[1].timestamp.wrapping_sub(w[0].timestamp),
                    3600,
                    "{who}: frames keep their spacing"
                );
            }
        }
    }
    // The audio is bridged as before.
    let heard_by_bob = heard(&bob, 8, 1.0).await;
    assert!(tone_share(&heard_by_bob[4000..], 8000, 440.0) > 0.5);
    let stream = gw.stream("vid1_stream").await.unwrap();
    let videos = stream["tracks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["kind"] == "video")
        .count();
    assert_eq!(videos, 2, "a video track per leg: {stream}");

    // Bob asks for a keyframe: the gateway asks Alice (RTCP PLI about her SSRC).
    let is_pli = |p: &Vec<u8>| {
        let mut i = 0;
        while i + 4 <= p.len() {
            if p[i + 1] == 206 && p[i] & 0x1f == 1 {
                return true;
            }
            i += 4 * (usize::from(u16::from_be_bytes([p[i + 2], p[i + 3]])) + 1);
        }
        false
    };
    tokio::time::sleep(Duration::from_millis(600)).await;
    let before = alice.video_rtcp_seen().iter().filter(|p| is_pli(p)).count();
    bob.send_pli().await;
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let plis = alice.video_rtcp_seen().iter().filter(|p| is_pli(p)).count();
        if plis > before {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no PLI reached alice after bob's ({before} before)\n{}",
            gw.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (s, _) = gw
        .post_json("/call/terminate", json!({"callId": "vid1"}))
        .await;
    assert_eq!(s, 200);
    gw.wait_status("vid1", &["FINISH"], T).await;
}
