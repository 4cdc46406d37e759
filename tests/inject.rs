//! Audio injected into call legs (WCS's `/call/inject_sound`, `/call/inject_stream/*`), end
//! to end: a WAV, MP3 or Ogg Opus file from `sound_dir` or a URL, and another call's live
//! stream, played into a RawUas's leg and found there by frequency; both at once are mixed.
mod common;

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{startup_body, tone_share, Gateway, RawUas, Sipp};
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(15);

/// A 16-bit PCM WAV of a sine (`channels` interleaved copies).
fn wav(rate: u32, channels: u16, hz: f64, seconds: f64) -> Vec<u8> {
    let n = (f64::from(rate) * seconds) as usize;
    let mut data = Vec::new();
    for i in 0..n {
        let s =
            ((i as f64 * 2.0 * std::f64::consts::PI * hz / f64::from(rate)).sin() * 8000.0) as i16;
        for _ in 0..channels {
            data.extend_from_slice(&s.to_le_bytes());
        }
    }
    let mut w = Vec::new();
    w.extend_from_slice(b"RIFF");
    w.extend_from_slice(&(36 + data.len() as u32).to_le_bytes());
    w.extend_from_slice(b"WAVEfmt ");
    w.extend_from_slice(&16u32.to_le_bytes());
    w.extend_from_slice(&1u16.to_le_bytes());
    w.extend_from_slice(&channels.to_le_bytes());
    w.extend_from_slice(&rate.to_le_bytes());
    w.extend_from_slice(&(rate * 2 * u32::from(channels)).to_le_bytes());
    w.extend_from_slice(&(2 * channels).to_le_bytes());
    w.extend_from_slice(&16u16.to_le_bytes());
    w.extend_from_slice(b"data");
    w.extend_from_slice(&(data.len() as u32).to_le_bytes());
    w.extend_from_slice(&data);
    w
}

/// A 1 s sine of `hz` encoded by ffmpeg into `dir/name` (the format from its extension).
fn ffmpeg_sine(dir: &Path, name: &str, hz: u32, args: &[&str]) {
    common::require("ffmpeg");
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-f", "lavfi", "-i"])
        .arg(format!("sine=frequency={hz}:duration=1"))
        .args(args)
        .arg(dir.join(name))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Packets a peer received in `[from, to)` that carry `hz` (share above `min`).
fn packets_with(uas: &RawUas, pt: u8, hz: f64, min: f64, from: Instant, to: Instant) -> usize {
    uas.heard_timed(pt)
        .iter()
        .filter(|(t, p)| *t >= from && *t < to && tone_share(p, 8000, hz) > min)
        .count()
}

async fn wait_injection(gw: &Gateway, call_id: &str, status: &str) -> Value {
    let deadline = Instant::now() + T;
    loop {
        let (_, v) = gw
            .post_json("/call/inject/find", json!({"callId": call_id}))
            .await;
        if v[0]["status"] == status {
            return v[0].clone();
        }
        assert!(Instant::now() < deadline, "injection not {status}: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One HTTP response of `body` to the first request (a sound served by URL).
async fn serve_once(body: Vec<u8>) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/beep.wav?sig=s3cr3t", l.local_addr().unwrap());
    tokio::spawn(async move {
        if let Ok((mut s, _)) = l.accept().await {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: audio/wav\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = s.write_all(head.as_bytes()).await;
            let _ = s.write_all(&body).await;
        }
    });
    url
}

#[tokio::test]
async fn a_wav_sound_plays_once_into_the_leg_and_bad_requests_say_why() {
    let sounds = common::tempdir();
    // 1 s of 1 kHz, 16 kHz stereo: resampled and downmixed on load.
    std::fs::write(sounds.path().join("beep.wav"), wav(16000, 2, 1000.0, 1.0)).unwrap();
    std::fs::File::create(sounds.path().join("notwav.wav"))
        .unwrap()
        .write_all(b"ID3 this is an mp3")
        .unwrap();
    let (hook, mut events) = common::webhook().await;
    let gw = Gateway::start(&[
        ("sound_dir", sounds.path().display().to_string()),
        ("webhook_url", hook),
    ])
    .await;
    let uas = RawUas::start("PCMU", 440.0).await;
    let (s, v) = gw
        .post_json("/call/startup", startup_body("in1", uas.port, "udp"))
        .await;
    assert_eq!(s, 200, "{v}");
    gw.wait_status("in1", &["ESTABLISHED"], T).await;

    for (body, status, needle) in [
        (
            json!({"callId": "nope", "soundFile": "beep.wav"}),
            404,
            "nope",
        ),
        (json!({"callId": "in1"}), 400, "soundFile or url"),
        (
            json!({"callId": "in1", "soundFile": "../etc/passwd"}),
            400,
            "soundFile",
        ),
        (
            json!({"callId": "in1", "soundFile": "/etc/passwd"}),
            400,
            "soundFile",
        ),
        (
            json!({"callId": "in1", "soundFile": "missing.wav"}),
            404,
            "missing.wav",
        ),
        (
            json!({"callId": "in1", "soundFile": "notwav.wav"}),
            400,
            "soundFile",
        ),
        (
            json!({"callId": "in1", "soundFile": "beep.wav", "leg": "caller"}),
            400,
            "leg",
        ),
        (json!({"callId": "in1", "url": "ftp://h/x.wav"}), 400, "url"),
    ] {
        let (s, e) = gw.post_json("/call/inject_sound", body.clone()).await;
        assert_eq!(s, status, "{body}: {e}");
        assert!(e.to_string().contains(needle), "{body}: {e}");
    }

    let started = Instant::now();
    let (s, v) = gw
        .post_json(
            "/call/inject_sound",
            json!({"callId": "in1", "soundFile": "beep.wav"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (v["kind"].as_str(), v["status"].as_str()),
        (Some("sound"), Some("PLAYING"))
    );
    let done = wait_injection(&gw, "in1", "FINISHED").await;
    assert_eq!(done["leg"], "callee");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let beeps = packets_with(&uas, 0, 1000.0, 0.5, started, Instant::now());
    assert!(
        (45..=55).contains(&beeps),
        "1 s of 1 kHz = about 50 packets, got {beeps}"
    );
    let after = packets_with(
        &uas,
        0,
        1000.0,
        0.5,
        Instant::now() - Duration::from_millis(1),
        Instant::now() + T,
    );
    assert_eq!(after, 0);
    let ev = common::wait_event(&mut events, "CallControlEvent", T).await;
    assert_eq!(ev["event"], "InjectStarted", "{ev}");
    let ev = common::wait_event(&mut events, "CallControlEvent", T).await;
    assert_eq!(ev["event"], "InjectFinished", "{ev}");

    // The same sound by URL, looped until stopped; the URL's query is not shown.
    let url = serve_once(wav(8000, 1, 1000.0, 0.5)).await;
    let (s, v) = gw
        .post_json(
            "/call/inject_sound",
            json!({"callId": "in1", "url": url, "loop": true}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert!(!v.to_string().contains("s3cr3t"), "{v}");
    let from = Instant::now();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        packets_with(&uas, 0, 1000.0, 0.5, from, Instant::now()) >= 60,
        "looped past its 0.5 s"
    );
    let (s, v) = gw
        .post_json("/call/inject/stop", json!({"callId": "in1"}))
        .await;
    assert_eq!(s, 200, "{v}");
    let id = v[0]["injectionId"].as_str().unwrap().to_string();
    let (_, found) = gw
        .post_json("/call/inject/find", json!({"injectionId": id}))
        .await;
    assert_eq!(found[0]["status"], "STOPPED", "{found}");
    let quiet = Instant::now() + Duration::from_millis(100);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        packets_with(&uas, 0, 1000.0, 0.5, quiet, Instant::now()),
        0,
        "stopped"
    );
    assert!(!gw.logs().contains("s3cr3t"));
}

/// MP3 and Ogg Opus files, one after the other, each heard for its second at its frequency.
#[tokio::test]
async fn mp3_and_ogg_opus_sounds_are_heard_at_their_frequency() {
    let sounds = common::tempdir();
    ffmpeg_sine(
        sounds.path(),
        "beep.mp3",
        1000,
        &["-ar", "44100", "-ac", "2"],
    );
    // A name without the extension: the format is told by content.
    ffmpeg_sine(
        sounds.path(),
        "hum",
        700,
        &["-ac", "2", "-c:a", "libopus", "-f", "ogg"],
    );
    let gw = Gateway::start(&[("sound_dir", sounds.path().display().to_string())]).await;
    let uas = RawUas::start("PCMU", 440.0).await;
    let (s, v) = gw
        .post_json("/call/startup", startup_body("in4", uas.port, "udp"))
        .await;
    assert_eq!(s, 200, "{v}");
    gw.wait_status("in4", &["ESTABLISHED"], T).await;
    for (file, hz) in [("beep.mp3", 1000.0), ("hum", 700.0)] {
        let started = Instant::now();
        let (s, v) = gw
            .post_json(
                "/call/inject_sound",
                json!({"callId": "in4", "soundFile": file}),
            )
            .await;
        assert_eq!(s, 200, "{file}: {v}");
        let id = v["injectionId"].as_str().unwrap().to_string();
        let deadline = Instant::now() + T;
        loop {
            let (_, found) = gw
                .post_json("/call/inject/find", json!({"injectionId": id}))
                .await;
            if found[0]["status"] == "FINISHED" {
                break;
            }
            assert!(Instant::now() < deadline, "{file} not FINISHED: {found}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let heard = packets_with(&uas, 0, hz, 0.5, started, Instant::now());
        assert!(
            (45..=55).contains(&heard),
            "{file}: 1 s of {hz} Hz = about 50 packets, got {heard}"
        );
    }
    let (s, _) = gw
        .post_json("/call/terminate", json!({"callId": "in4"}))
        .await;
    assert_eq!(s, 200);
}

/// Into a leg of a two-party call: the callee hears the caller and the sound mixed, then
/// the caller alone again (the bridge goes back to sending straight).
#[tokio::test]
async fn a_sound_into_a_bridged_leg_is_mixed_with_the_other_party() {
    let sounds = common::tempdir();
    std::fs::write(sounds.path().join("hum.wav"), wav(8000, 1, 700.0, 1.5)).unwrap();
    let gw = Gateway::start(&[("sound_dir", sounds.path().display().to_string())]).await;
    let alice = RawUas::start("PCMU", 440.0).await;
    let bob = RawUas::start("PCMA", 1000.0).await;
    let (s, v) = gw
        .post_json(
            "/call/startup",
            json!({"callId": "in3", "caller": format!("sip:alice@127.0.0.1:{}", alice.port),
                "callee": format!("sip:bob@127.0.0.1:{}", bob.port), "sipLogin": "gw",
                "sipDomain": "127.0.0.1", "sipRegisterRequired": "false"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    gw.wait_status("in3", &["ESTABLISHED"], T).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (s, v) = gw
        .post_json(
            "/call/inject_sound",
            json!({"callId": "in3", "soundFile": "hum.wav", "leg": "callee"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let from = Instant::now();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let window = |from: Instant, to: Instant| -> Vec<i16> {
        bob.heard_timed(8)
            .into_iter()
            .filter(|(t, _)| *t >= from && *t < to)
            .flat_map(|(_, p)| p)
            .collect()
    };
    let mixed = window(from, Instant::now());
    let (s440, s700) = (
        tone_share(&mixed, 8000, 440.0),
        tone_share(&mixed, 8000, 700.0),
    );
    assert!(
        s440 > 0.25 && s700 > 0.25,
        "Bob hears Alice and the hum: 440 Hz {s440}, 700 Hz {s700}"
    );
    assert!(
        mixed.len() <= 8000 + 800,
        "one stream of packets, not two: {} samples in 1 s",
        mixed.len()
    );
    wait_injection(&gw, "in3", "FINISHED").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let from = Instant::now();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let after = window(from, Instant::now());
    assert!(
        tone_share(&after, 8000, 440.0) > 0.8,
        "Alice alone again: {}",
        tone_share(&after, 8000, 440.0)
    );
    assert!(
        after.len() >= 5600,
        "the bridge sends straight again: {} samples",
        after.len()
    );
    let (s, _) = gw
        .post_json("/call/terminate", json!({"callId": "in3"}))
        .await;
    assert_eq!(s, 200);
}

#[tokio::test]
async fn another_call_s_stream_is_injected_live_and_mixed_with_a_sound() {
    let sounds = common::tempdir();
    std::fs::write(sounds.path().join("hum.wav"), wav(8000, 1, 700.0, 1.0)).unwrap();
    let gw = Gateway::start(&[("sound_dir", sounds.path().display().to_string())]).await;
    // Call A: sipp streams 440 Hz into stream "in2a".
    let mut sipp = Sipp::uas("uas_pcmu_stream.xml", "udp", false);
    let mut a = startup_body("in2a", sipp.port, "udp");
    a["toStream"] = json!("in2a");
    let (s, v) = gw.post_json("/call/startup", a).await;
    assert_eq!(s, 200, "{v}");
    // Call B: a PCMA peer that hears what we inject.
    let bob = RawUas::start("PCMA", 1000.0).await;
    let (s, v) = gw
        .post_json("/call/startup", startup_body("in2b", bob.port, "udp"))
        .await;
    assert_eq!(s, 200, "{v}");
    gw.wait_status("in2a", &["ESTABLISHED"], T).await;
    gw.wait_status("in2b", &["ESTABLISHED"], T).await;

    let own = gw.call("in2b").await["toStream"].clone();
    for (body, status, needle) in [
        (
            json!({"callId": "in2b", "streamName": "nosuch"}),
            404,
            "nosuch",
        ),
        (json!({"callId": "in2b"}), 400, "streamName"),
        (
            json!({"callId": "in2b", "streamName": own}),
            400,
            "own stream",
        ),
    ] {
        let (s, e) = gw
            .post_json("/call/inject_stream/startup", body.clone())
            .await;
        assert_eq!(s, status, "{body}: {e}");
        assert!(e.to_string().contains(needle), "{body}: {e}");
    }
    let (s, v) = gw
        .post_json(
            "/call/inject_stream/startup",
            json!({"callId": "in2b", "streamName": "in2a"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let from = Instant::now();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let n = packets_with(&bob, 8, 440.0, 0.5, from, Instant::now());
    assert!(
        n >= 45,
        "Bob hears call A's 440 Hz (PCMU in, PCMA out): {n} packets"
    );

    // A looped sound on top: both at once in the same packets.
    let (s, v) = gw
        .post_json(
            "/call/inject_sound",
            json!({"callId": "in2b", "soundFile": "hum.wav", "loop": true}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let from = Instant::now();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let mixed: Vec<i16> = bob
        .heard_timed(8)
        .into_iter()
        .filter(|(t, _)| *t >= from)
        .flat_map(|(_, p)| p)
        .collect();
    let (s440, s700) = (
        tone_share(&mixed, 8000, 440.0),
        tone_share(&mixed, 8000, 700.0),
    );
    assert!(
        s440 > 0.25 && s700 > 0.25,
        "mixed: 440 Hz {s440}, 700 Hz {s700}"
    );

    // Terminate the stream injection only: the hum goes on, the 440 Hz stops.
    let (s, v) = gw
        .post_json("/call/inject_stream/terminate", json!({"callId": "in2b"}))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v.as_array().map(Vec::len), Some(1), "{v}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let from = Instant::now();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let later: Vec<i16> = bob
        .heard_timed(8)
        .into_iter()
        .filter(|(t, _)| *t >= from)
        .flat_map(|(_, p)| p)
        .collect();
    assert!(tone_share(&later, 8000, 440.0) < 0.05, "the stream stopped");
    assert!(tone_share(&later, 8000, 700.0) > 0.8, "the sound plays on");
    let (_, all) = gw
        .post_json("/call/inject/find", json!({"callId": "in2b"}))
        .await;
    let statuses: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["STOPPED", "PLAYING"], "{all}");
    let (s, _) = gw
        .post_json("/call/terminate", json!({"callId": "in2a"}))
        .await;
    assert_eq!(s, 200);
    assert_eq!(sipp.wait(T), Some(0), "{}", sipp.messages());
}
