//! RTMP push end to end: the gateway binary places a sipp call (PCMU) and pushes its stream
//! to nginx with libnginx-mod-rtmp on 127.0.0.1; ffprobe and ffmpeg read back what arrived.
//! The H264 test drives the library in-process (a synthetic stream published into a registry)
//! against the same nginx, since the SIP tests have no video callee yet.
mod common;

use std::time::{Duration, Instant};

use common::{ffmpeg_decode_errors, ffprobe, startup_body, webhook, Gateway, Nginx, Sipp};
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(15);

async fn wait_push(gw: &Gateway, id: &str, want: &str, timeout: Duration) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let (status, v) = gw
            .post_json("/push/find", json!({"mediaSessionId": id}))
            .await;
        assert_eq!(status, 200, "{v}");
        if v[0]["status"] == want {
            return v[0].clone();
        }
        assert!(
            Instant::now() < deadline,
            "push {id} never reached {want}; last: {v}\n--- gateway log ---\n{}",
            gw.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn stream_of<'a>(probe: &'a Value, kind: &str) -> Option<&'a Value> {
    probe["streams"]
        .as_array()?
        .iter()
        .find(|s| s["codec_type"] == kind)
}

async fn established_call(gw: &Gateway, sipp: &Sipp, id: &str) -> String {
    let (status, call) = gw
        .post_json("/call/startup", startup_body(id, sipp.port, "udp"))
        .await;
    assert_eq!(status, 200, "{call}");
    gw.wait_status(id, &["ESTABLISHED"], T).await;
    format!("{id}_stream")
}

#[tokio::test(flavor = "multi_thread")]
async fn pcmu_call_is_pushed_as_aac_and_nginx_records_it() {
    let nginx = Nginx::start();
    let gw = Gateway::start(&[]).await;
    let mut sipp = Sipp::uas("uas_pcmu_stream.xml", "udp", false);

    // 404 before the stream exists; 400s name the field.
    let (status, v) = gw
        .post_json(
            "/push/startup",
            json!({"streamName": "nope", "rtmpUrl": nginx.url("live")}),
        )
        .await;
    assert_eq!(status, 404, "{v}");
    assert_eq!(v["error"], "not_found");
    for bad in [
        "http://127.0.0.1/live",
        "rtmp://127.0.0.1:99999/live",
        "rtmp://",
        "live",
    ] {
        let (status, v) = gw
            .post_json("/push/startup", json!({"streamName": "x", "rtmpUrl": bad}))
            .await;
        assert_eq!(status, 400, "{bad}: {v}");
        assert!(v["message"].as_str().unwrap().starts_with("rtmpUrl"), "{v}");
    }
    let (status, v) = gw
        .post_json("/push/startup", json!({"streamName": "x"}))
        .await;
    assert_eq!(status, 400, "{v}");
    assert!(v["message"].as_str().unwrap().contains("rtmpUrl"), "{v}");

    let name = established_call(&gw, &sipp, "push1").await;
    let (status, push) = gw
        .post_json(
            "/push/startup",
            json!({"streamName": name, "rtmpUrl": nginx.url("live"), "rtmpTransponderFullUrl": "false"}),
        )
        .await;
    assert_eq!(status, 200, "{push}");
    let id = push["mediaSessionId"].as_str().unwrap().to_string();
    assert_eq!(push["streamName"], name.as_str());
    assert_eq!(push["rtmpUrl"], nginx.url(&format!("live/{name}")));
    assert!(push["status"].is_string());
    wait_push(&gw, &id, "PUBLISHING", T).await;
    let published_at = Instant::now();

    // Same stream, same final URL (here given in full): 409.
    let (status, v) = gw
        .post_json(
            "/push/startup",
            json!({"streamName": name, "rtmpUrl": nginx.url(&format!("live/{name}")), "rtmpTransponderFullUrl": true}),
        )
        .await;
    assert_eq!(status, 409, "{v}");

    // What a player gets: AAC at the configured rate.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let probe = ffprobe(&nginx.url(&format!("live/{name}")), T).expect("ffprobe rtmp");
    let audio = stream_of(&probe, "audio").unwrap_or_else(|| panic!("no audio: {probe}"));
    eprintln!(
        "ffprobe rtmp: codec_name={} profile={} sample_rate={} channels={}",
        audio["codec_name"], audio["profile"], audio["sample_rate"], audio["channels"]
    );
    assert_eq!(audio["codec_name"], "aac", "{probe}");
    assert_eq!(audio["profile"], "LC", "{probe}");
    assert_eq!(audio["sample_rate"], "48000", "{probe}");
    assert_eq!(audio["channels"], 1, "{probe}");
    assert!(
        stream_of(&probe, "video").is_none(),
        "audio-only call, audio-only FLV: {probe}"
    );
    assert!(nginx.publishing(&name).await);

    tokio::time::sleep(Duration::from_secs(6)).await;
    let (status, v) = gw
        .post_json("/push/terminate", json!({"mediaSessionId": id}))
        .await;
    let pushed_for = published_at.elapsed().as_secs_f64();
    assert_eq!(status, 200, "{v}");
    let info = wait_push(&gw, &id, "STOPPED", T).await;
    assert_eq!(info["reason"], "terminated", "{info}");
    assert!(info["audioFrames"].as_u64().unwrap() > 300, "{info}");
    assert_eq!(info["reconnects"], 0, "{info}");
    // The stream is gone from nginx.
    let deadline = Instant::now() + Duration::from_secs(5);
    while nginx.publishing(&name).await {
        assert!(
            Instant::now() < deadline,
            "still publishing: {}",
            nginx.stat().await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The call goes on; terminate of an unknown push is 404.
    let (status, _) = gw
        .post_json("/push/terminate", json!({"mediaSessionId": "nope"}))
        .await;
    assert_eq!(status, 404);
    assert_eq!(gw.call("push1").await["status"], "ESTABLISHED");

    // nginx's recording decodes cleanly and lasts as long as the push.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let recs = nginx.recordings();
    assert_eq!(recs.len(), 1, "{recs:?}");
    let errors = ffmpeg_decode_errors(&recs[0]).expect("FLV decodes");
    assert!(errors.trim().is_empty(), "ffmpeg complained: {errors}");
    let probe = ffprobe(recs[0].to_str().unwrap(), T).unwrap();
    let duration: f64 = probe["format"]["duration"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    eprintln!(
        "recorded FLV: format={} duration={duration:.3}s, pushed for {pushed_for:.3}s",
        probe["format"]["format_name"]
    );
    assert_eq!(stream_of(&probe, "audio").unwrap()["codec_name"], "aac");
    assert!(
        (duration - pushed_for).abs() / pushed_for < 0.04,
        "FLV lasts {duration:.3}s, push lasted {pushed_for:.3}s"
    );

    let (status, _) = gw
        .post_json("/call/terminate", json!({"callId": "push1"}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(sipp.wait(T), Some(0), "{}", sipp.messages());
}

#[tokio::test(flavor = "multi_thread")]
async fn push_reconnects_when_nginx_restarts_and_stops_with_its_stream() {
    let mut nginx = Nginx::start();
    let (hook, mut events) = webhook().await;
    let gw = Gateway::start(&[
        ("webhook_url", hook),
        ("rtmp_reconnect_initial_ms", "200".to_string()),
        ("rtmp_reconnect_max_ms", "1000".to_string()),
    ])
    .await;
    let mut sipp = Sipp::uas("uas_pcmu_stream.xml", "udp", false);
    let name = established_call(&gw, &sipp, "push2").await;
    let (status, push) = gw
        .post_json(
            "/push/startup",
            json!({"streamName": name, "rtmpUrl": nginx.url("live")}),
        )
        .await;
    assert_eq!(status, 200, "{push}");
    let id = push["mediaSessionId"].as_str().unwrap().to_string();
    wait_push(&gw, &id, "PUBLISHING", T).await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    nginx.stop();
    let info = wait_push(&gw, &id, "RECONNECTING", T).await;
    assert!(info["reason"].is_string(), "{info}");
    // Down for a few backoff rounds, then back.
    tokio::time::sleep(Duration::from_secs(2)).await;
    nginx.restart();
    let info = wait_push(&gw, &id, "PUBLISHING", T).await;
    assert!(info["reconnects"].as_u64().unwrap() >= 1, "{info}");
    let frames = info["audioFrames"].as_u64().unwrap();
    // Media continues: a player reads AAC again, and the push keeps sending.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let probe = ffprobe(&nginx.url(&format!("live/{name}")), T).expect("ffprobe after restart");
    assert_eq!(
        stream_of(&probe, "audio").unwrap()["codec_name"],
        "aac",
        "{probe}"
    );
    let (_, v) = gw
        .post_json("/push/find", json!({"mediaSessionId": id}))
        .await;
    assert!(v[0]["audioFrames"].as_u64().unwrap() > frames + 50, "{v}");

    // The call ends: its push stops by itself.
    let (status, _) = gw
        .post_json("/call/terminate", json!({"callId": "push2"}))
        .await;
    assert_eq!(status, 200);
    let info = wait_push(&gw, &id, "STOPPED", T).await;
    assert!(
        info["reason"].as_str().unwrap().starts_with("stream ended"),
        "{info}"
    );
    assert_eq!(sipp.wait(T), Some(0), "{}", sipp.messages());

    // The webhook saw the whole story as StreamStatusEvents.
    let mut statuses = Vec::new();
    while let Ok(Some(ev)) = tokio::time::timeout(Duration::from_secs(5), events.recv()).await {
        if ev["type"] == "StreamStatusEvent" && ev["mediaSessionId"] == id.as_str() {
            assert_eq!(ev["name"], name.as_str());
            assert_eq!(ev["callId"], "push2");
            statuses.push(ev["status"].as_str().unwrap().to_string());
            if ev["status"] == "STOPPED" {
                break;
            }
        }
    }
    let pos = |s: &str, from: usize| {
        statuses[from..]
            .iter()
            .position(|x| x == s)
            .map(|p| p + from)
    };
    let p1 = pos("PUBLISHING", 0).expect("PUBLISHING");
    let r = pos("RECONNECTING", p1).expect("RECONNECTING after PUBLISHING");
    let p2 = pos("PUBLISHING", r).expect("PUBLISHING again");
    assert!(pos("STOPPED", p2).is_some(), "{statuses:?}");
    assert_eq!(nginx.recordings().len(), 2, "one recording per publish");
}

#[tokio::test(flavor = "multi_thread")]
async fn g711_passes_through_when_asked() {
    let nginx = Nginx::start();
    let gw = Gateway::start(&[("rtmp_audio_codec", "copy".to_string())]).await;
    let mut sipp = Sipp::uas("uas_pcmu_stream.xml", "udp", false);
    let name = established_call(&gw, &sipp, "push3").await;
    let (status, push) = gw
        .post_json(
            "/push/startup",
            json!({"streamName": name, "rtmpUrl": nginx.url("live/g711key"), "rtmpTransponderFullUrl": true}),
        )
        .await;
    assert_eq!(status, 200, "{push}");
    assert_eq!(push["rtmpUrl"], nginx.url("live/g711key"));
    let id = push["mediaSessionId"].as_str().unwrap().to_string();
    let info = wait_push(&gw, &id, "PUBLISHING", T).await;
    assert_eq!(info["audioCodec"], "pcmu", "{info}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let probe = ffprobe(&nginx.url("live/g711key"), T).expect("ffprobe");
    let audio = stream_of(&probe, "audio").unwrap();
    assert_eq!(audio["codec_name"], "pcm_mulaw", "{probe}");
    assert_eq!(audio["sample_rate"], "8000", "{probe}");
    let (status, _) = gw
        .post_json("/call/terminate", json!({"callId": "push3"}))
        .await;
    assert_eq!(status, 200);
    wait_push(&gw, &id, "STOPPED", T).await;
    assert_eq!(sipp.wait(T), Some(0));
}

/// H264 + PCMU published into a registry in real time (as a SIP video call would), pushed by
/// the library's PushManager to nginx: a player finds h264 320x240 and AAC.
#[tokio::test(flavor = "multi_thread")]
async fn h264_and_pcmu_stream_arrives_as_h264_and_aac() {
    use sipstream::events::EventBus;
    use sipstream::registry::{Registry, TrackSpec};
    use sipstream::rtmp::{PushConfig, PushManager, PushStatus};

    common::require("ffmpeg");
    let nginx = Nginx::start();
    let dir = common::tempdir();
    let frames = common::h264_frames(dir.path(), 8);
    assert!(frames.len() >= 190, "{} frames", frames.len());

    let registry = Registry::new(512);
    let pushes = PushManager::new(registry.clone(), EventBus::new(64), PushConfig::default());
    let publisher = registry.create("synth", None).unwrap();
    let audio = publisher
        .add_track(TrackSpec::audio("PCMU", 8000, 0))
        .unwrap();
    let video = publisher.add_track(common::h264_track()).unwrap();
    let push = pushes.startup("synth", &nginx.url("live"), false).unwrap();
    let tone = common::tone_file(dir.path(), 10, false);
    let tone = std::fs::read(tone).unwrap();

    let feeder = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        // In real time; the audio clock wraps during the test.
        let mut source = common::AvSource::new(frames, tone, audio, video);
        for _ in 0..source.steps() {
            tick.tick().await;
            for unit in source.next_units(std::time::Instant::now()) {
                publisher.publish(unit);
            }
        }
        // Dropping the publisher ends the stream.
    });

    let deadline = Instant::now() + T;
    while pushes.find(&push.media_session_id).unwrap().status != PushStatus::Publishing {
        assert!(
            Instant::now() < deadline,
            "{:?}",
            pushes.find(&push.media_session_id)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let url = nginx.url("live/synth");
    let probe = tokio::task::spawn_blocking(move || ffprobe(&url, T))
        .await
        .unwrap()
        .expect("ffprobe rtmp");
    let v = stream_of(&probe, "video").unwrap_or_else(|| panic!("no video: {probe}"));
    let a = stream_of(&probe, "audio").unwrap_or_else(|| panic!("no audio: {probe}"));
    eprintln!(
        "ffprobe rtmp: video codec_name={} width={} height={}; audio codec_name={} sample_rate={}",
        v["codec_name"], v["width"], v["height"], a["codec_name"], a["sample_rate"]
    );
    assert_eq!(v["codec_name"], "h264", "{probe}");
    assert_eq!(
        (v["width"].as_u64(), v["height"].as_u64()),
        (Some(320), Some(240))
    );
    assert_eq!(a["codec_name"], "aac", "{probe}");
    assert_eq!(a["sample_rate"], "48000", "{probe}");

    feeder.await.unwrap();
    let deadline = Instant::now() + T;
    let info = loop {
        let info = pushes.find(&push.media_session_id).unwrap();
        if info.status == PushStatus::Stopped {
            break info;
        }
        assert!(Instant::now() < deadline, "{info:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(info.video_frames > 100, "{info:?}");
    assert!(info.video);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let recs = nginx.recordings();
    assert_eq!(recs.len(), 1, "{recs:?}");
    let errors = ffmpeg_decode_errors(&recs[0]).expect("recorded FLV decodes");
    assert!(errors.trim().is_empty(), "ffmpeg complained: {errors}");
}

/// An Opus call's audio (published into a registry in real time, as a SIP Opus leg would) is
/// decoded and pushed as AAC.
#[tokio::test(flavor = "multi_thread")]
async fn opus_stream_is_pushed_as_aac() {
    use bytes::Bytes;
    use sipstream::events::EventBus;
    use sipstream::registry::{Leg, MediaUnit, Registry, TrackKind, TrackSpec};
    use sipstream::rtmp::{PushConfig, PushManager, PushStatus};

    let nginx = Nginx::start();
    let registry = Registry::new(512);
    let pushes = PushManager::new(registry.clone(), EventBus::new(64), PushConfig::default());
    let publisher = registry.create("opus1", None).unwrap();
    let track = publisher
        .add_track(TrackSpec {
            kind: TrackKind::Audio,
            leg: Leg::Callee,
            codec: "opus".into(),
            clock_rate: 48000,
            channels: 2,
            payload_type: 111,
            fmtp: None,
        })
        .unwrap();
    let push = pushes.startup("opus1", &nginx.url("live"), false).unwrap();
    let feeder = tokio::spawn(async move {
        let mut enc =
            opus::Encoder::new(48000, opus::Channels::Mono, opus::Application::Voip).unwrap();
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        for k in 0..400u32 {
            tick.tick().await;
            let pcm: Vec<f32> = (0..960)
                .map(|i| {
                    let t = (k * 960 + i) as f32 / 48000.0;
                    (2.0 * std::f32::consts::PI * 440.0 * t).sin() * 0.3
                })
                .collect();
            let packet = enc.encode_vec_float(&pcm, 4000).unwrap();
            publisher.publish(MediaUnit {
                track,
                payload_type: 111,
                seq: k as u16,
                timestamp: k * 960,
                marker: k == 0,
                ssrc: 0x0905,
                payload: Bytes::from(packet),
                arrival: std::time::Instant::now(),
            });
        }
    });
    let deadline = Instant::now() + T;
    while pushes.find(&push.media_session_id).unwrap().status != PushStatus::Publishing {
        assert!(
            Instant::now() < deadline,
            "{:?}",
            pushes.find(&push.media_session_id)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let url = nginx.url("live/opus1");
    let probe = tokio::task::spawn_blocking(move || ffprobe(&url, T))
        .await
        .unwrap()
        .expect("ffprobe rtmp");
    let a = stream_of(&probe, "audio").unwrap_or_else(|| panic!("no audio: {probe}"));
    assert_eq!(a["codec_name"], "aac", "{probe}");
    assert_eq!(a["sample_rate"], "48000", "{probe}");
    feeder.abort();
}
