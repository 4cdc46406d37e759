//! WHEP (RFC 9725) against the real binary: a sipp callee streams PCMU into a call's stream,
//! a WHEP client built on the `webrtc` crate (the same stack a browser speaks: ICE, DTLS,
//! SRTP) plays it, so does aiortc (Python, tests/whep/aiortc_client.py), both offering audio
//! and video for the audio-only call, and the bad-input answers are checked.
mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{assert_av_answer_for_audio_only, startup_body, Gateway, Sipp};
use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use rtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use serde_json::json;
use tokio::sync::Notify;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler,
    RTCIceGatheringState, RTCSessionDescription, SettingEngineBuilder,
};

const T: Duration = Duration::from_secs(15);

/// What the client counts.
#[derive(Default)]
struct Received {
    packets: AtomicU64,
    /// PCMU bytes that are not silence (0xff/0x7f).
    loud_bytes: AtomicU64,
    payload_type: AtomicU64,
}

struct Client {
    gathered: Arc<Notify>,
    received: Arc<Received>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Client {
    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            self.gathered.notify_one();
        }
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let received = self.received.clone();
        tokio::spawn(async move {
            while let Some(ev) = track.poll().await {
                if let TrackRemoteEvent::OnRtpPacket(p) = ev {
                    received.packets.fetch_add(1, Ordering::Relaxed);
                    received
                        .payload_type
                        .store(u64::from(p.header.payload_type), Ordering::Relaxed);
                    let loud = p.payload.iter().filter(|b| **b & 0x7f != 0x7f).count();
                    received
                        .loud_bytes
                        .fetch_add(loud as u64, Ordering::Relaxed);
                }
            }
        });
    }
}

/// A receive-only WHEP client: audio and video transceivers, as a browser page makes them.
async fn client() -> (Arc<dyn PeerConnection>, Arc<Received>, String) {
    let mut media = MediaEngine::default();
    media.register_default_codecs().unwrap();
    let gathered = Arc::new(Notify::new());
    let received = Arc::new(Received::default());
    let pc = PeerConnectionBuilder::new()
        .with_media_engine(media)
        .with_setting_engine(
            SettingEngineBuilder::new()
                .with_include_loopback_candidate(true)
                // Consent checks every 500 ms so short gateway timeouts stay connected.
                .with_ice_timeouts(
                    Some(Duration::from_secs(5)),
                    Some(Duration::from_secs(25)),
                    Some(Duration::from_millis(500)),
                )
                .build(),
        )
        .with_handler(Arc::new(Client {
            gathered: gathered.clone(),
            received: received.clone(),
        }))
        .with_udp_addrs(vec!["127.0.0.1:0".to_string()])
        .build()
        .await
        .unwrap();
    let pc: Arc<dyn PeerConnection> = Arc::new(pc);
    for kind in [RtpCodecKind::Audio, RtpCodecKind::Video] {
        pc.add_transceiver_from_kind(
            kind,
            Some(RTCRtpTransceiverInit {
                direction: RTCRtpTransceiverDirection::Recvonly,
                ..Default::default()
            }),
        )
        .await
        .unwrap();
    }
    let offer = pc.create_offer(None).await.unwrap();
    pc.set_local_description(offer).await.unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(3), gathered.notified()).await;
    let sdp = pc.local_description().await.unwrap().sdp;
    (pc, received, sdp)
}

async fn post_offer(gw: &Gateway, stream: &str, ctype: &str, body: &str) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{}/whep/{stream}", gw.rest))
        .header("content-type", ctype)
        .body(body.to_string())
        .send()
        .await
        .unwrap()
}

async fn readers(gw: &Gateway, stream: &str) -> Vec<String> {
    gw.stream(stream)
        .await
        .map(|s| {
            s["readers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["kind"].as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default()
}

async fn wait_readers(gw: &Gateway, stream: &str, want: usize) {
    let deadline = Instant::now() + T;
    loop {
        let r = readers(gw, stream).await;
        if r.iter().filter(|k| *k == "webrtc").count() == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "stream {stream} readers {r:?}, want {want} webrtc\n{}",
            gw.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn established_call(gw: &Gateway, sipp: &Sipp, id: &str) -> String {
    let (status, call) = gw
        .post_json("/call/startup", startup_body(id, sipp.port, "udp"))
        .await;
    assert_eq!(status, 200, "{call}");
    gw.wait_status(id, &["ESTABLISHED"], T).await;
    format!("{id}_stream")
}

#[tokio::test]
async fn whep_client_plays_a_pcmu_call_and_delete_frees_it() {
    let gw = Gateway::start(&[]).await;
    let mut sipp = Sipp::uas("uas_pcmu_stream.xml", "udp", false);
    let stream = established_call(&gw, &sipp, "whep1").await;

    let (pc, received, offer) = client().await;
    let resp = post_offer(&gw, &stream, "application/sdp", &offer).await;
    assert_eq!(resp.status().as_u16(), 201, "{}", gw.logs());
    let h = resp.headers().clone();
    let location = h["location"].to_str().unwrap().to_string();
    assert!(
        location.starts_with(&format!("/whep/{stream}/")),
        "{location}"
    );
    assert_eq!(h["content-type"], "application/sdp");
    assert_eq!(h["access-control-allow-origin"], "*");
    assert!(h["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .contains("Location"));
    let answer = resp.text().await.unwrap();
    // The call's codec passes through under the client's payload type; video is accepted
    // inactive (the call has none); the gateway's host candidate is on the configured address.
    assert!(answer.contains("a=rtpmap:0 PCMU/8000"), "{answer}");
    assert!(!answer.contains("opus"), "{answer}");
    assert!(answer.contains("a=sendonly"), "{answer}");
    assert!(answer.contains("a=fingerprint:"), "{answer}");
    assert!(
        answer
            .lines()
            .any(|l| l.starts_with("a=candidate:") && l.contains("127.0.0.1")),
        "{answer}"
    );
    assert!(answer.contains("a=setup:"), "{answer}");
    assert_av_answer_for_audio_only(&answer);
    pc.set_remote_description(RTCSessionDescription::answer(answer).unwrap())
        .await
        .unwrap();

    // 50 packets a second: wait for two seconds' worth.
    let deadline = Instant::now() + T;
    while received.packets.load(Ordering::Relaxed) < 100 {
        assert!(
            Instant::now() < deadline,
            "client got {} packets\n{}",
            received.packets.load(Ordering::Relaxed),
            gw.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(received.payload_type.load(Ordering::Relaxed), 0);
    assert!(
        received.loud_bytes.load(Ordering::Relaxed) > 1000,
        "the tone arrived as silence"
    );
    assert_eq!(readers(&gw, &stream).await, vec!["webrtc".to_string()]);

    // DELETE ends the session; the reader leaves the stream; a second DELETE is 404.
    let http = reqwest::Client::new();
    let r = http
        .delete(format!("{}{location}", gw.rest))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    wait_readers(&gw, &stream, 0).await;
    let r = http
        .delete(format!("{}{location}", gw.rest))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    let _ = pc.close().await;

    let (status, _) = gw
        .post_json("/call/terminate", json!({"callId": "whep1"}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(sipp.wait(T), Some(0), "{}", sipp.messages());
    assert!(gw.logs().contains("WHEP session ended"));
}

#[tokio::test]
async fn a_player_that_vanishes_is_removed_and_the_stream_end_ends_players() {
    let gw = Gateway::start(&[
        ("webrtc_disconnected_timeout_s", "2".into()),
        ("webrtc_failed_timeout_s", "2".into()),
        ("webrtc_port_min", "0".into()),
        ("webrtc_port_max", "0".into()),
    ])
    .await;
    let mut sipp = Sipp::uas("uas_pcmu_stream.xml", "udp", false);
    let stream = established_call(&gw, &sipp, "whep2").await;

    // Player 1 connects, then disappears without DELETE.
    let (pc1, received1, offer) = client().await;
    let resp = post_offer(&gw, &stream, "application/sdp", &offer).await;
    assert_eq!(resp.status().as_u16(), 201);
    pc1.set_remote_description(RTCSessionDescription::answer(resp.text().await.unwrap()).unwrap())
        .await
        .unwrap();
    // Player 2 stays.
    let (pc2, received2, offer) = client().await;
    let resp = post_offer(&gw, &stream, "application/sdp", &offer).await;
    assert_eq!(resp.status().as_u16(), 201);
    pc2.set_remote_description(RTCSessionDescription::answer(resp.text().await.unwrap()).unwrap())
        .await
        .unwrap();
    let deadline = Instant::now() + T;
    while received1.packets.load(Ordering::Relaxed) < 20
        || received2.packets.load(Ordering::Relaxed) < 20
    {
        assert!(Instant::now() < deadline, "{}", gw.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_readers(&gw, &stream, 2).await;
    let _ = pc1.close().await;
    drop(pc1);
    wait_readers(&gw, &stream, 1).await;
    assert!(
        gw.logs()
            .contains("ICE failed: the player stopped answering consent checks"),
        "{}",
        gw.logs()
    );

    // The call ends: the stream ends, and so does the remaining player's session.
    let (status, _) = gw
        .post_json("/call/terminate", json!({"callId": "whep2"}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(sipp.wait(T), Some(0), "{}", sipp.messages());
    let deadline = Instant::now() + T;
    while gw.logs().matches("WHEP session ended").count() < 2 {
        assert!(Instant::now() < deadline, "{}", gw.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gw.logs().contains("the stream ended"), "{}", gw.logs());
    let _ = pc2.close().await;
}

#[tokio::test]
async fn bad_whep_requests_get_clear_errors() {
    let gw = Gateway::start(&[]).await;
    let mut sipp = Sipp::uas("uas_pcmu_stream.xml", "udp", false);
    let http = reqwest::Client::new();

    // Unknown stream.
    let (_, _, offer) = client().await;
    let r = post_offer(&gw, "nosuch", "application/sdp", &offer).await;
    assert_eq!(r.status().as_u16(), 404);
    assert_eq!(r.headers()["access-control-allow-origin"], "*");
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"], "not_found");

    let stream = established_call(&gw, &sipp, "whep3").await;
    // Wrong content type.
    let r = post_offer(&gw, &stream, "application/json", "{\"sdp\":\"v=0\"}").await;
    assert_eq!(r.status().as_u16(), 415);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(body["message"]
        .as_str()
        .unwrap()
        .contains("application/sdp"));
    // Not SDP.
    for junk in [
        "hello",
        "",
        "v=0\r\nthis is not sdp\r\n",
        "v=0\r\no=- 1 1 IN IP4 x\r\n",
    ] {
        let r = post_offer(&gw, &stream, "application/sdp", junk).await;
        assert_eq!(r.status().as_u16(), 400, "{junk:?}");
    }
    // Binary garbage that is not UTF-8.
    let r = http
        .post(format!("{}/whep/{stream}", gw.rest))
        .header("content-type", "application/sdp")
        .body(vec![0xffu8, 0xfe, 0x00, 0x80])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    // No common codec: the message names both sides.
    let opus_only = offer
        .lines()
        .filter(|l| {
            !(l.starts_with("a=rtpmap:") || l.starts_with("a=fmtp:") || l.starts_with("a=rtcp-fb:"))
                || l.contains("opus")
        })
        .map(|l| {
            if l.starts_with("m=audio") {
                "m=audio 9 UDP/TLS/RTP/SAVPF 111".to_string()
            } else if l.starts_with("m=video") {
                "m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:96 VP8/90000".to_string()
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\r\n")
        + "\r\n";
    let r = post_offer(&gw, &stream, "application/sdp", &opus_only).await;
    assert_eq!(r.status().as_u16(), 406, "{opus_only}");
    let body: serde_json::Value = r.json().await.unwrap();
    let msg = body["message"].as_str().unwrap();
    assert!(
        msg.contains("PCMU/8000") && msg.contains("opus/48000/2"),
        "{msg}"
    );
    // DELETE of an unknown session.
    let r = http
        .delete(format!("{}/whep/{stream}/nosuchsession", gw.rest))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    // CORS preflight, PATCH (no trickle ICE), the page config.
    let r = http
        .request(
            reqwest::Method::OPTIONS,
            format!("{}/whep/{stream}", gw.rest),
        )
        .header("origin", "http://example.test")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    assert_eq!(r.headers()["access-control-allow-origin"], "*");
    assert!(r.headers()["access-control-allow-methods"]
        .to_str()
        .unwrap()
        .contains("POST"));
    assert!(r.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase()
        .contains("content-type"));
    let r = http
        .patch(format!("{}/whep/{stream}/x", gw.rest))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 405);
    let cfg: serde_json::Value = http
        .get(format!("{}/webrtc/config", gw.rest))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(cfg, json!({"iceServers": []}));
    // None of that left a reader behind.
    assert!(readers(&gw, &stream).await.is_empty());

    let (status, _) = gw
        .post_json("/call/terminate", json!({"callId": "whep3"}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(sipp.wait(T), Some(0), "{}", sipp.messages());
}

#[tokio::test]
async fn the_pages_are_served() {
    let gw = Gateway::start(&[]).await;
    for (path, needle) in [
        ("/", "Live streams"),
        ("/player.html", "id=\"stream\""),
        ("/call.html", "id=\"sipLogin\""),
        ("/js/whep.js", "WhepPlayer"),
        ("/css/style.css", "--accent"),
    ] {
        let r = reqwest::get(format!("{}{path}", gw.rest)).await.unwrap();
        assert_eq!(r.status().as_u16(), 200, "{path}");
        let text = r.text().await.unwrap();
        assert!(text.contains(needle), "{path}");
    }
}

#[tokio::test]
async fn a_stream_without_media_yet_is_409_after_the_wait() {
    let gw = Gateway::start(&[("webrtc_track_wait_s", "1".into())]).await;
    let mut sipp = Sipp::uas("uas_ring_cancel.xml", "udp", false);
    let (status, _) = gw
        .post_json("/call/startup", startup_body("whep4", sipp.port, "udp"))
        .await;
    assert_eq!(status, 200);
    gw.wait_status("whep4", &["RING"], T).await;
    let (_, _, offer) = client().await;
    let started = Instant::now();
    let r = post_offer(&gw, "whep4_stream", "application/sdp", &offer).await;
    assert_eq!(r.status().as_u16(), 409);
    assert!(started.elapsed() >= Duration::from_millis(900));
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("no audio or video track yet"),
        "{body}"
    );
    assert!(readers(&gw, "whep4_stream").await.is_empty());
    let (status, _) = gw
        .post_json("/call/terminate", json!({"callId": "whep4"}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(sipp.wait(T), Some(0), "{}", sipp.messages());
}

/// The Python that `scripts/deps.sh test` installs aiortc into: `$SIPSTREAM_PYTHON`, else
/// `python3` on PATH (the same lookup as deps.sh). Fails, never skips, without aiortc.
fn aiortc_python() -> String {
    let py = std::env::var("SIPSTREAM_PYTHON").unwrap_or_else(|_| "python3".into());
    let probe = std::process::Command::new(&py)
        .args(["-c", "import aiortc; print(aiortc.__version__)"])
        .output();
    let ok = matches!(&probe, Ok(o) if o.status.success());
    assert!(
        ok,
        "{py} cannot import aiortc ({probe:?}): run scripts/deps.sh test"
    );
    py
}

/// Runs tests/whep/aiortc_client.py with `py` against `url` (aiortc offers recvonly audio
/// AND video), counting frames for `seconds` once connected; returns its JSON report (the
/// offer and the answer in it).
async fn aiortc_client(py: &str, url: &str, seconds: f64) -> serde_json::Value {
    let mut cmd = std::process::Command::new(py);
    cmd.arg(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/whep/aiortc_client.py"
    ))
    .arg(url)
    .args(["--seconds", &seconds.to_string()])
    // aioice offers no loopback candidate by itself; the gateway listens on 127.0.0.1.
    .args(["--host-address", "127.0.0.1"]);
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .expect("run aiortc_client.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line)
        .unwrap_or_else(|e| panic!("aiortc_client.py printed no JSON ({e}): {stdout}\n{stderr}"))
}

#[tokio::test]
async fn aiortc_plays_an_audio_only_call_it_offered_audio_and_video() {
    let py = aiortc_python();
    let gw = Gateway::start(&[]).await;
    let mut sipp = Sipp::uas("uas_pcmu_stream.xml", "udp", false);
    let stream = established_call(&gw, &sipp, "whep5").await;

    let r = aiortc_client(&py, &format!("{}/whep/{stream}", gw.rest), 3.0).await;
    eprintln!(
        "aiortc: status {} connected {} audio_frames {} loud {} video_frames {} tracks {} delete {} error {}",
        r["status"], r["connected"], r["audio_frames"], r["audio_loud_frames"], r["video_frames"],
        r["tracks"], r["delete_status"], r["error"]
    );
    let answer = r["answer"].as_str().unwrap_or_default().to_string();
    eprintln!("the gateway's answer to aiortc:\n{answer}");
    assert_eq!(r["status"], 201, "{r}\n{}", gw.logs());
    assert!(
        r["error"].is_null(),
        "aiortc: {}\nanswer:\n{answer}",
        r["error"]
    );
    assert_eq!(r["connected"], true, "{r}\n{}", gw.logs());
    assert_av_answer_for_audio_only(&answer);
    // 3 s of 20 ms PCMU packets, decoded by aiortc; the 440 Hz tone is not silence.
    let frames = r["audio_frames"].as_u64().unwrap();
    assert!(frames > 100, "aiortc decoded {frames} audio frames: {r}");
    assert!(r["audio_loud_frames"].as_u64().unwrap() > 50, "{r}");
    // Video was accepted inactive: aiortc makes no remote video track for it, nothing
    // arrives on video, and the session connected all the same.
    assert_eq!(r["tracks"], json!(["audio"]), "{r}");
    assert_eq!(r["video_frames"], 0, "{r}");
    assert_eq!(r["delete_status"], 200, "{r}");
    wait_readers(&gw, &stream, 0).await;
    assert!(gw.logs().contains("deleted by the player (DELETE)"));

    let (status, _) = gw
        .post_json("/call/terminate", json!({"callId": "whep5"}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(sipp.wait(T), Some(0), "{}", sipp.messages());
}
