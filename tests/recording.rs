//! Recording (issue 3): streams fed with RTP are recorded to fragmented MP4, and the files are
//! re-read with ffprobe/ffmpeg: codec, duration, packet count, full decode, crash safety.

mod common;

use std::io::BufRead;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::Value;
use sipstream::media::g711;
use sipstream::record::{start_recording, RecordingMeta, RecordingState};
use sipstream::registry::{Leg, MediaUnit, Publisher, Registry, TrackKind, TrackSpec};

fn pcmu_track() -> TrackSpec {
    TrackSpec::audio("PCMU", 8000, 0)
}

/// 20 ms of a 440 Hz tone starting at sample `n0`.
fn tone_packet(n0: u32) -> Bytes {
    let mut out = Vec::with_capacity(160);
    for i in 0..160u32 {
        let t = f64::from(n0 + i) / 8000.0;
        let s = (t * 440.0 * 2.0 * std::f64::consts::PI).sin() * 8000.0;
        out.push(g711::linear_to_ulaw(s as i16));
    }
    Bytes::from(out)
}

fn unit(track: usize, seq: u16, ts: u32, payload: Bytes, arrival: Instant) -> MediaUnit {
    MediaUnit {
        track,
        payload_type: 0,
        seq,
        timestamp: ts,
        marker: false,
        ssrc: 0x1234_5678,
        payload,
        arrival,
    }
}

fn ffprobe(path: &Path) -> Value {
    common::require("ffprobe");
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_streams",
            "-show_format",
            "-count_packets",
        ])
        .args(["-of", "json"])
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ffprobe failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn decodes_fully(path: &Path) {
    common::require("ffmpeg");
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-xerror", "-i"])
        .arg(path)
        .args(["-f", "null", "-"])
        .output()
        .unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "ffmpeg decode of {} failed: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn streams_of<'a>(probe: &'a Value, codec_type: &str) -> Vec<&'a Value> {
    probe["streams"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["codec_type"] == codec_type)
        .collect()
}

fn num(v: &Value) -> f64 {
    v.as_str()
        .and_then(|s| s.parse().ok())
        .or_else(|| v.as_f64())
        .unwrap_or_else(|| panic!("not a number: {v}"))
}

/// Publishes `seconds` of PCMU tone as fast as possible with the RTP timestamps and arrival
/// times of a real call, starting near the 32-bit timestamp wrap and losing `lost` packets
/// (`lost`, packet indices) in the middle.
async fn publish_fast_tone(
    publisher: &Publisher,
    track: usize,
    seconds: u32,
    lost: std::ops::Range<u32>,
) {
    let base = Instant::now();
    let ts0: u32 = u32::MAX - 8000 * 2; // wraps after 2 s
    for k in 0..seconds * 50 {
        let ts = ts0.wrapping_add(k * 160);
        if !lost.contains(&k) {
            let arrival = base + Duration::from_millis(u64::from(k) * 20);
            publisher.publish(unit(track, k as u16, ts, tone_packet(k * 160), arrival));
        }
        if k % 50 == 0 {
            tokio::task::yield_now().await;
        }
    }
}

#[tokio::test]
async fn pcmu_call_records_to_opus_mp4_with_call_duration() {
    let dir = common::tempdir();
    let registry = Registry::new(4096);
    let publisher = registry.create("call-1", Some("c1".into())).unwrap();
    let track = publisher.add_track(pcmu_track()).unwrap();
    let path = dir.path().join("call-1.mp4");
    let meta = RecordingMeta {
        call_id: Some("c1".into()),
        sip_call_id: Some("abc@host".into()),
        ..Default::default()
    };
    let rec = start_recording(&registry, "call-1", path.clone(), meta).unwrap();
    assert_eq!(publisher.readers()[0].kind, "recorder");
    let n = 10;
    publish_fast_tone(&publisher, track, n, 200..250).await;
    publisher.end("call finished");
    let info = tokio::time::timeout(Duration::from_secs(20), rec.wait())
        .await
        .expect("recording did not finish");
    assert_eq!(info.state, RecordingState::Done, "{info:?}");
    assert_eq!(
        info.end_reason.as_deref(),
        Some("stream ended: call finished")
    );
    assert_eq!(info.codecs, vec!["opus (from PCMU)".to_string()]);
    assert_eq!(info.units_dropped, 0);

    let sidecar: Value =
        serde_json::from_slice(&std::fs::read(rec.sidecar_path()).unwrap()).unwrap();
    assert_eq!(sidecar["callId"], "c1");
    assert_eq!(sidecar["sipCallId"], "abc@host");
    assert_eq!(sidecar["stream"], "call-1");
    assert_eq!(sidecar["state"], "done");
    assert!(sidecar["startedAt"].as_str().unwrap().ends_with('Z'));
    assert!(sidecar["endedAt"].as_str().is_some());
    assert_eq!(
        sidecar["sizeBytes"].as_u64().unwrap(),
        std::fs::metadata(&path).unwrap().len()
    );

    let probe = ffprobe(&path);
    eprintln!("ffprobe: {probe}");
    let audio = streams_of(&probe, "audio");
    assert_eq!(probe["streams"].as_array().unwrap().len(), 1);
    assert_eq!(audio[0]["codec_name"], "opus");
    let duration = num(&probe["format"]["duration"]);
    assert!(
        (duration - f64::from(n)).abs() <= 0.02 * f64::from(n),
        "duration {duration} vs {n} s"
    );
    // The lost second was filled, so the packet count is the call's 20 ms frames.
    let packets = num(&audio[0]["nb_read_packets"]);
    assert!(
        (packets - f64::from(n * 50)).abs() <= 2.0,
        "{packets} packets"
    );
    decodes_fully(&path);
}

#[tokio::test]
async fn unknown_stream_and_existing_file_are_errors() {
    let dir = common::tempdir();
    let registry = Registry::new(16);
    let e = start_recording(
        &registry,
        "nope",
        dir.path().join("a.mp4"),
        RecordingMeta::default(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("not found"), "{e}");
    let _p = registry.create("s", None).unwrap();
    std::fs::write(dir.path().join("b.mp4"), b"x").unwrap();
    let e = start_recording(
        &registry,
        "s",
        dir.path().join("b.mp4"),
        RecordingMeta::default(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("cannot create"), "{e}");
}

#[tokio::test]
async fn stop_finalises_and_a_stream_without_media_fails_cleanly() {
    let dir = common::tempdir();
    let registry = Registry::new(4096);
    let publisher = registry.create("s2", None).unwrap();
    let track = publisher.add_track(pcmu_track()).unwrap();
    let rec = start_recording(
        &registry,
        "s2",
        dir.path().join("s2.mp4"),
        RecordingMeta::default(),
    )
    .unwrap();
    publish_fast_tone(&publisher, track, 3, 0..0).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    rec.stop();
    let info = rec.wait().await;
    assert_eq!(info.state, RecordingState::Done, "{info:?}");
    assert_eq!(info.end_reason.as_deref(), Some("stopped"));
    assert!(publisher.readers().is_empty(), "recorder still subscribed");
    decodes_fully(rec.path());

    let empty = registry.create("s3", None).unwrap();
    let rec = start_recording(
        &registry,
        "s3",
        dir.path().join("s3.mp4"),
        RecordingMeta::default(),
    )
    .unwrap();
    empty.end("hangup");
    let info = rec.wait().await;
    assert_eq!(info.state, RecordingState::Failed);
    assert_eq!(info.error.as_deref(), Some("no media was recorded"));
}

/// `pts_time` of every packet of stream `index`, in file order.
fn packet_times(path: &Path, index: u32) -> Vec<f64> {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams"])
        .arg(index.to_string())
        .args(["-show_entries", "packet=pts_time", "-of", "json"])
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success(), "ffprobe -show_packets failed");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["packets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| num(&p["pts_time"]))
        .collect()
}

/// ffmpeg encodes a test pattern with libx264 and sends it as H264 RTP; the test receives it,
/// publishes it with a PCMU tone into one stream, and records. Besides codecs and resolution,
/// the file must keep both tracks on the wall clock: both start at 0, every picture sits at
/// the time its first packet arrived, audio runs in real time, and players see one duration.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h264_rtp_from_ffmpeg_and_pcmu_record_to_h264_and_opus_in_sync() {
    common::require("ffmpeg");
    let dir = common::tempdir();
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let port = sock.local_addr().unwrap().port();
    let registry = Registry::new(4096);
    let publisher = registry.create("av", None).unwrap();
    let audio = publisher.add_track(pcmu_track()).unwrap();
    let video = publisher
        .add_track(TrackSpec {
            kind: TrackKind::Video,
            leg: Leg::Callee,
            codec: "H264".into(),
            clock_rate: 90000,
            channels: 0,
            payload_type: 96,
            fmtp: None,
        })
        .unwrap();
    let path = dir.path().join("av.mp4");
    let rec = start_recording(&registry, "av", path.clone(), RecordingMeta::default()).unwrap();
    let seconds = 4;
    // The first audio packet is media time 0 of the file.
    let t0 = Instant::now();
    publisher.publish(unit(audio, 0, 0, tone_packet(0), t0));
    let mut ffmpeg = Command::new("ffmpeg")
        .args(["-v", "error", "-re", "-f", "lavfi", "-i"])
        .arg(format!("testsrc=size=320x240:rate=25:duration={seconds}"))
        .args([
            "-pix_fmt",
            "yuv420p",
            "-c:v",
            "libx264",
            "-profile:v",
            "baseline",
            // No encoder lookahead: each picture leaves ffmpeg when it is due, so its RTP
            // timestamp and its arrival agree and the test can compare both.
            "-tune",
            "zerolatency",
        ])
        .args(["-g", "25", "-bsf:v", "h264_mp4toannexb", "-f", "rtp"])
        .arg(format!("rtp://127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let publisher = std::sync::Arc::new(publisher);
    // Audio in real time alongside, paced from t0.
    let audio_pub = publisher.clone();
    let audio_task = tokio::spawn(async move {
        for k in 1..seconds * 50 {
            tokio::time::sleep_until((t0 + Duration::from_millis(u64::from(k) * 20)).into()).await;
            audio_pub.publish(unit(
                audio,
                k as u16,
                k * 160,
                tone_packet(k * 160),
                Instant::now(),
            ));
        }
    });
    let mut buf = vec![0u8; 2048];
    let mut video_packets = 0;
    // Arrival (seconds after t0) of each picture's first packet, in order.
    let mut pictures: Vec<(u32, f64)> = Vec::new();
    while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(2), sock.recv(&mut buf)).await {
        let Ok(p) = sipstream::rtp::packet::RtpPacket::parse(&buf[..n]) else {
            continue;
        };
        let arrival = Instant::now();
        video_packets += 1;
        if pictures.last().map(|l| l.0) != Some(p.timestamp()) {
            pictures.push((p.timestamp(), (arrival - t0).as_secs_f64()));
        }
        publisher.publish(MediaUnit {
            track: video,
            payload_type: p.pt(),
            seq: p.seq(),
            timestamp: p.timestamp(),
            marker: p.marker(),
            ssrc: p.ssrc(),
            payload: Bytes::copy_from_slice(p.payload()),
            arrival,
        });
    }
    let status = ffmpeg.wait().unwrap();
    assert!(status.success(), "ffmpeg sender failed");
    audio_task.await.unwrap();
    assert!(video_packets > 50, "only {video_packets} video RTP packets");
    let ended = Instant::now();
    publisher.end("done");
    let info = tokio::time::timeout(Duration::from_secs(20), rec.wait())
        .await
        .unwrap();
    assert_eq!(info.state, RecordingState::Done, "{info:?}");
    assert_eq!(
        info.codecs,
        vec!["opus (from PCMU)".to_string(), "H264 320x240".to_string()]
    );
    let probe = ffprobe(&path);
    eprintln!("ffprobe: {probe}");
    let v = streams_of(&probe, "video");
    let a = streams_of(&probe, "audio");
    assert_eq!((v.len(), a.len()), (1, 1));
    assert_eq!(v[0]["codec_name"], "h264");
    assert_eq!(
        (v[0]["width"].as_u64(), v[0]["height"].as_u64()),
        (Some(320), Some(240))
    );
    assert_eq!(a[0]["codec_name"], "opus");
    let frames = num(&v[0]["nb_read_packets"]);
    assert!(
        frames >= f64::from(seconds * 25 - 10),
        "{frames} video frames"
    );
    // One start and one duration: both tracks from 0, and the file lasts from the first
    // packet to the stop (audio is padded to the stop time) within 2 %.
    assert!(num(&v[0]["start_time"]).abs() < 0.001, "{}", v[0]);
    assert!(num(&a[0]["start_time"]).abs() < 0.001, "{}", a[0]);
    let wall = (ended - t0).as_secs_f64();
    let file = num(&probe["format"]["duration"]);
    assert!(
        (file - wall).abs() / wall < 0.02,
        "file lasts {file} s, the stream {wall} s"
    );
    // Pictures on the wall clock: the n-th picture (n ≥ 1; the first is shown from 0) sits
    // where its first packet arrived, within 120 ms (ffmpeg's pacing under load; lip sync
    // is lost to the eye beyond about that).
    let vpts = packet_times(&path, v[0]["index"].as_u64().unwrap() as u32);
    assert_eq!(vpts.len(), pictures.len(), "pictures in the file vs. sent");
    assert_eq!(vpts[0], 0.0);
    let worst = vpts
        .iter()
        .zip(&pictures)
        .skip(1)
        .map(|(pts, (_, arrived))| (pts - arrived).abs())
        .fold(0.0, f64::max);
    eprintln!("worst picture offset from its arrival: {worst:.3} s");
    assert!(worst < 0.12, "a picture is {worst} s off its arrival time");
    // Audio in real time: 20 ms frames back to back from 0, up to the stop.
    let apts = packet_times(&path, a[0]["index"].as_u64().unwrap() as u32);
    assert!(
        (apts.len() as f64 * 0.02 - wall).abs() / wall < 0.02,
        "{} audio frames for {wall} s",
        apts.len()
    );
    assert!(apts
        .iter()
        .enumerate()
        .all(|(i, t)| (t - i as f64 * 0.02).abs() < 0.0005));
    decodes_fully(&path);
}

const CHILD_ENV: &str = "SIPSTREAM_RECORDING_CRASH_CHILD";

/// Not a test on its own: the body of the crash test's child process (does nothing unless
/// the env var names an output file). Records a real-time PCMU stream until killed.
#[tokio::test]
async fn crash_child() {
    let Ok(path) = std::env::var(CHILD_ENV) else {
        return;
    };
    let registry = Registry::new(4096);
    let publisher = registry.create("crash", None).unwrap();
    let track = publisher.add_track(pcmu_track()).unwrap();
    let _rec = start_recording(&registry, "crash", path.into(), RecordingMeta::default()).unwrap();
    println!("RECORDING");
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    for k in 0u32.. {
        tick.tick().await;
        publisher.publish(unit(
            track,
            k as u16,
            k.wrapping_mul(160),
            tone_packet(k * 160),
            Instant::now(),
        ));
    }
}

#[test]
fn sigkill_mid_recording_leaves_a_playable_file() {
    let dir = common::tempdir();
    let path = dir.path().join("crash.mp4");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, &path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let started = loop {
        match lines.next() {
            Some(Ok(l)) if l.contains("RECORDING") => break Instant::now(),
            Some(_) => continue,
            None => panic!("child exited before recording"),
        }
    };
    std::thread::sleep(Duration::from_millis(6500));
    let elapsed = started.elapsed().as_secs_f64();
    child.kill().unwrap(); // SIGKILL
    let _ = child.wait();
    let probe = ffprobe(&path);
    eprintln!("ffprobe after SIGKILL at {elapsed:.2}s: {probe}");
    let audio = streams_of(&probe, "audio");
    assert_eq!(audio[0]["codec_name"], "opus");
    let packets = num(&audio[0]["nb_read_packets"]);
    let want = (elapsed - 2.0) * 50.0;
    assert!(
        packets >= want,
        "{packets} packets after {elapsed:.2}s, want >= {want}"
    );
    decodes_fully(&path);
}
