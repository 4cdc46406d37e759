//! RTSP ingest (issue 12): a GStreamer RTSP server (gst-rtsp-server, started by the test,
//! with digest auth) pulled into a stream with `/pull/startup`: recorded (ffprobe: h264
//! 320x240 + opus), played over HLS (ffmpeg hears its 440 Hz), injected into a call (the
//! callee hears it), reconnected after the server restarts; bad input answered precisely.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{tone_share, Gateway, RawUas};
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(20);

/// The test's RTSP server (tests/rtsp/rtsp_server.py): 440 Hz PCMU, and H264 320x240 at
/// 25 fps with a keyframe a second in `av` mode.
struct RtspServer {
    child: Child,
    port: u16,
}

impl RtspServer {
    fn start(port: u16, mode: &str, auth: Option<(&str, &str)>) -> RtspServer {
        common::require("/usr/bin/python3");
        let mut cmd = Command::new("/usr/bin/python3");
        cmd.arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/rtsp/rtsp_server.py"
        ))
        .args([
            "--port",
            &port.to_string(),
            "--mount",
            "/test",
            "--mode",
            mode,
        ]);
        if let Some((u, p)) = auth {
            cmd.args(["--user", u, "--password", p]);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the RTSP server");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .strip_prefix("READY ")
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("RTSP server did not start: {line:?}"));
        RtspServer { child, port }
    }

    fn url(&self, creds: &str) -> String {
        format!("rtsp://{creds}127.0.0.1:{}/test", self.port)
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RtspServer {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn pull(gw: &Gateway, key: &str) -> Value {
    let (s, v) = gw.post_json("/pull/find", json!({"streamName": key})).await;
    assert_eq!(s, 200, "{v}");
    v[0].clone()
}

async fn wait_pull(gw: &Gateway, key: &str, status: &str) -> Value {
    let deadline = Instant::now() + T;
    loop {
        let p = pull(gw, key).await;
        if p["status"] == status {
            return p;
        }
        assert!(
            Instant::now() < deadline,
            "waiting for {status}: {p}\n{}",
            gw.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_camera_is_pulled_recorded_and_played_over_hls() {
    let server = RtspServer::start(0, "av", Some(("cam", "s3cret-Cam")));
    let gw = Gateway::start(&[]).await;

    // Bad input first: each answer names its cause.
    let closed = common::free_tcp_port();
    for (body, status, needle) in [
        (json!({"streamName": "x"}), 400, "uri"),
        (
            json!({"uri": server.url(""), "streamName": "a b"}),
            400,
            "streamName",
        ),
        (
            json!({"uri": "http://127.0.0.1/x", "streamName": "x"}),
            400,
            "not rtsp",
        ),
        (
            json!({"uri": "rtsps://127.0.0.1/x", "streamName": "x"}),
            400,
            "rtsps",
        ),
        (
            json!({"uri": server.url("cam:s3cret-Cam@"), "streamName": "x", "transport": "sctp"}),
            400,
            "transport",
        ),
        (
            json!({"uri": server.url("cam:wrong@"), "streamName": "x"}),
            502,
            "401",
        ),
        (
            json!({"uri": server.url(""), "streamName": "x"}),
            502,
            "401",
        ),
        (
            json!({"uri": format!("rtsp://cam:s3cret-Cam@127.0.0.1:{}/nosuch", server.port), "streamName": "x"}),
            502,
            "404",
        ),
        (
            json!({"uri": format!("rtsp://127.0.0.1:{closed}/test"), "streamName": "x"}),
            502,
            "DESCRIBE",
        ),
    ] {
        let (s, v) = gw.post_json("/pull/startup", body.clone()).await;
        assert_eq!(s, status, "{body}: {v}");
        assert!(v["message"].to_string().contains(needle), "{body}: {v}");
    }
    assert!(
        gw.stream("x").await.is_none(),
        "a refused pull leaves no stream"
    );

    let t0 = Instant::now();
    let (s, p) = gw
        .post_json(
            "/pull/startup",
            json!({"uri": server.url("cam:s3cret-Cam@"), "streamName": "cam1"}),
        )
        .await;
    assert_eq!(s, 200, "{p}");
    eprintln!("pull/startup answered after {:?}: {p}", t0.elapsed());
    assert_eq!(p["tracks"], json!(["PCMU/8000", "H264/90000"]), "{p}");
    assert_eq!(p["uri"], server.url(""), "no credentials shown: {p}");
    assert_eq!(p["transport"], "tcp");
    let (s, v) = gw
        .post_json(
            "/pull/startup",
            json!({"uri": server.url("cam:s3cret-Cam@"), "streamName": "cam1"}),
        )
        .await;
    assert_eq!(s, 409, "{v}");
    wait_pull(&gw, "cam1", "PLAYING").await;

    // Recorded like a call's stream: H264 as it came, the PCMU as Opus.
    let (s, v) = gw
        .post_json("/stream/startRecording", json!({"name": "cam1"}))
        .await;
    assert_eq!(s, 200, "{v}");
    // Played over HLS meanwhile: ffmpeg hears the server's 440 Hz.
    let url = format!("{}/hls/cam1/index.m3u8", gw.rest);
    let out = tokio::task::spawn_blocking(move || {
        Command::new("ffmpeg")
            .args(["-nostdin", "-v", "error", "-i", &url, "-t", "3"])
            .args(["-map", "0:a", "-ac", "1", "-ar", "8000", "-f", "s16le", "-"])
            .output()
            .expect("ffmpeg")
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pcm: Vec<i16> = out
        .stdout
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect();
    let share = tone_share(&pcm, 8000, 440.0);
    eprintln!(
        "HLS of the pull: {} samples, 440 Hz share {share:.2}",
        pcm.len()
    );
    assert!(pcm.len() >= 16000 && share > 0.8, "{share}");
    let probe = common::ffprobe(&format!("{}/hls/cam1/index.m3u8", gw.rest), T).unwrap();
    assert!(probe.to_string().contains("\"h264\""), "{probe}");

    let (s, v) = gw
        .post_json("/stream/stopRecording", json!({"name": "cam1"}))
        .await;
    assert_eq!(s, 200, "{v}");
    let deadline = Instant::now() + T;
    let file = loop {
        let (_, all) = gw.post("/recorder/find_all", "").await;
        if let Some(r) = all
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["stream"] == "cam1" && r["state"] == "done")
        {
            break gw
                .dir()
                .join("records")
                .join(r["fileName"].as_str().unwrap());
        }
        assert!(Instant::now() < deadline, "{all}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let probe = common::ffprobe(file.to_str().unwrap(), T).unwrap();
    let streams = probe["streams"].as_array().unwrap();
    let v = streams.iter().find(|s| s["codec_type"] == "video").unwrap();
    let a = streams.iter().find(|s| s["codec_type"] == "audio").unwrap();
    eprintln!(
        "recording of the pull: video {} {}x{}, audio {}, {} s",
        v["codec_name"], v["width"], v["height"], a["codec_name"], probe["format"]["duration"]
    );
    assert_eq!(v["codec_name"], "h264");
    assert_eq!(
        (v["width"].as_u64(), v["height"].as_u64()),
        (Some(320), Some(240))
    );
    assert_eq!(a["codec_name"], "opus");
    let errors = common::ffmpeg_decode_errors(&file).unwrap();
    assert!(errors.trim().is_empty(), "{errors}");

    let p = pull(&gw, "cam1").await;
    assert!(p["packets"].as_u64().unwrap() > 200, "{p}");
    let (s, v) = gw
        .post_json("/pull/terminate", json!({"streamName": "cam1"}))
        .await;
    assert_eq!(s, 200, "{v}");
    wait_pull(&gw, "cam1", "STOPPED").await;
    let deadline = Instant::now() + T;
    while gw.stream("cam1").await.is_some() {
        assert!(Instant::now() < deadline, "the stream ends with the pull");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (s, _) = gw.post_json("/pull/terminate", json!({})).await;
    assert_eq!(s, 400);
    let (s, _) = gw
        .post_json("/pull/find", json!({"streamName": "nope"}))
        .await;
    assert_eq!(s, 404);
    assert!(
        !gw.logs().contains("s3cret-Cam"),
        "the password is in the logs"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pull_is_injected_into_a_call_and_survives_a_server_restart() {
    let mut server = RtspServer::start(0, "audio", None);
    let port = server.port;
    let gw = Gateway::start(&[]).await;
    let (s, p) = gw
        .post_json(
            "/pull/startup",
            json!({"uri": server.url(""), "streamName": "radio", "transport": "udp"}),
        )
        .await;
    assert_eq!(s, 200, "{p}");
    assert_eq!(p["tracks"], json!(["PCMU/8000"]));
    wait_pull(&gw, "radio", "PLAYING").await;

    // Into a call: the callee (a PCMA peer) hears the server's 440 Hz.
    let uas = RawUas::start("PCMA", 1000.0).await;
    let (s, v) = gw
        .post_json(
            "/call/startup",
            json!({"callId": "rtsp1", "callee": format!("sip:agent@127.0.0.1:{}", uas.port)}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    gw.wait_status("rtsp1", &["ESTABLISHED"], T).await;
    let (s, v) = gw
        .post_json(
            "/call/inject_stream/startup",
            json!({"callId": "rtsp1", "streamName": "radio"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let heard_440 = |from: Instant| {
        let pcm: Vec<i16> = uas
            .heard_timed(8)
            .into_iter()
            .filter(|(t, _)| *t >= from)
            .flat_map(|(_, p)| p)
            .collect();
        (pcm.len(), tone_share(&pcm, 8000, 440.0))
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let from = Instant::now();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let (n, share) = heard_440(from);
    eprintln!("the callee heard {n} samples of the pull, 440 Hz share {share:.2}");
    assert!(n >= 6000 && share > 0.8, "{n} {share}");

    // The server goes away: the pull reconnects, the stream and its reader stay.
    server.stop();
    let p = wait_pull(&gw, "radio", "RECONNECTING").await;
    eprintln!("after the server stopped: {p}");
    assert!(gw.stream("radio").await.is_some());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let _server = RtspServer::start(port, "audio", None);
    let p = wait_pull(&gw, "radio", "PLAYING").await;
    assert!(p["reconnects"].as_u64().unwrap() >= 1, "{p}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let from = Instant::now();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let (n, share) = heard_440(from);
    eprintln!("after the restart the callee heard {n} samples, 440 Hz share {share:.2}");
    assert!(n >= 6000 && share > 0.8, "{n} {share}");

    let (s, _) = gw
        .post_json("/call/terminate", json!({"callId": "rtsp1"}))
        .await;
    assert_eq!(s, 200);
    let (s, _) = gw
        .post_json("/pull/terminate", json!({"streamName": "radio"}))
        .await;
    assert_eq!(s, 200);
    wait_pull(&gw, "radio", "STOPPED").await;
}
