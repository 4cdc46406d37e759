//! HLS output (issue 12): a call's stream as a live LL-HLS playlist over HTTP, read back by
//! ffprobe and decoded by ffmpeg (the tone sipp sends is in it); LL-HLS blocking reloads and
//! preload hints; H264 + PCMU packaged as fMP4 HLS that ffmpeg decodes without an error.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{require, tempdir, Gateway, Sipp};
use serde_json::json;
use sipstream::hls::playlist::HlsConfig;
use sipstream::hls::{HlsService, HlsServiceConfig};
use sipstream::registry::{Registry, TrackSpec};

const T: Duration = Duration::from_secs(20);

async fn get(url: &str) -> (u16, String, Bytes) {
    let r = reqwest::get(url).await.expect("GET");
    let status = r.status().as_u16();
    let ctype = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    (status, ctype, r.bytes().await.unwrap())
}

/// `(msn, part)` of the playlist's preload hint (`part<msn>.<part>.m4s`).
fn preload_hint(playlist: &str) -> (u64, usize) {
    let uri = playlist
        .lines()
        .find_map(|l| l.strip_prefix("#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"part"))
        .unwrap_or_else(|| panic!("no preload hint:\n{playlist}"));
    let (msn, rest) = uri.split_once('.').unwrap();
    let (part, _) = rest.split_once('.').unwrap();
    (msn.parse().unwrap(), part.parse().unwrap())
}

/// Decodes `seconds` of the playlist's audio with ffmpeg, as 8 kHz mono PCM.
fn decode_audio(url: &str, seconds: u32) -> Vec<i16> {
    require("ffmpeg");
    let out = std::process::Command::new("ffmpeg")
        .args([
            "-nostdin",
            "-v",
            "error",
            "-i",
            url,
            "-t",
            &seconds.to_string(),
        ])
        .args(["-ac", "1", "-ar", "8000", "-f", "s16le", "-"])
        .output()
        .expect("ffmpeg");
    assert!(
        out.status.success(),
        "ffmpeg read of {url} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_call_plays_over_ll_hls_with_ffmpeg() {
    let gw = Gateway::start(&[]).await;
    let mut sipp = Sipp::uas("uas_pcmu_stream.xml", "udp", false);
    let (status, call) = gw
        .post_json(
            "/call/startup",
            json!({"callId": "hls1", "callee": format!("sip:answer@127.0.0.1:{}", sipp.port),
                "toStream": "hls1_stream"}),
        )
        .await;
    assert_eq!(status, 200, "{call}");
    gw.wait_status("hls1", &["ESTABLISHED"], T).await;
    let base = format!("{}/hls/hls1_stream", gw.rest);

    // Wrong stream, wrong file: 404 naming them.
    let (status, _, body) = get(&format!("{}/hls/nosuch/index.m3u8", gw.rest)).await;
    assert_eq!(status, 404);
    assert!(String::from_utf8_lossy(&body).contains("no stream \\\"nosuch\\\""));
    let (status, _, body) = get(&format!("{base}/passwd")).await;
    assert_eq!(status, 404);
    assert!(String::from_utf8_lossy(&body).contains("expected index.m3u8"));

    // The first request starts the output and waits for a whole segment.
    let t0 = Instant::now();
    let (status, ctype, body) = get(&format!("{base}/index.m3u8")).await;
    let playlist = String::from_utf8(body.to_vec()).unwrap();
    eprintln!("first playlist after {:?}:\n{playlist}", t0.elapsed());
    assert_eq!(status, 200, "{playlist}");
    assert_eq!(ctype, "application/vnd.apple.mpegurl");
    for tag in [
        "#EXT-X-MAP:URI=\"init.mp4\"",
        "#EXTINF:",
        "#EXT-X-PART-INF:PART-TARGET=",
        "CAN-BLOCK-RELOAD=YES",
    ] {
        assert!(playlist.contains(tag), "{tag} missing:\n{playlist}");
    }
    let s = gw.stream("hls1_stream").await.unwrap();
    assert!(s["readers"].to_string().contains("hls"), "{s}");
    let (status, ctype, init) = get(&format!("{base}/init.mp4")).await;
    assert_eq!((status, ctype.as_str()), (200, "video/mp4"));
    assert_eq!(&init[4..8], b"ftyp");

    // LL-HLS: a blocking reload for the hinted part returns once it exists, listing it;
    // a request for the next hinted part is held until that part is made.
    let (msn, part) = preload_hint(&playlist);
    let t0 = Instant::now();
    let (status, _, body) = get(&format!(
        "{base}/index.m3u8?_HLS_msn={msn}&_HLS_part={part}"
    ))
    .await;
    let waited = t0.elapsed();
    let reloaded = String::from_utf8(body.to_vec()).unwrap();
    assert_eq!(status, 200);
    assert!(
        reloaded.contains(&format!("URI=\"part{msn}.{part}.m4s\"")),
        "after {waited:?}:\n{reloaded}"
    );
    assert!(waited < Duration::from_millis(1500), "{waited:?}");
    eprintln!("blocking reload for part {msn}.{part} answered after {waited:?}");
    let (status, _, bytes) = get(&format!("{base}/part{msn}.{part}.m4s")).await;
    assert_eq!(status, 200);
    assert_eq!(&bytes[4..8], b"moof");
    let (next_msn, next_part) = preload_hint(&reloaded);
    let t0 = Instant::now();
    let (status, _, bytes) = get(&format!("{base}/part{next_msn}.{next_part}.m4s")).await;
    let waited = t0.elapsed();
    assert_eq!(status, 200, "part{next_msn}.{next_part}");
    assert_eq!(&bytes[4..8], b"moof");
    assert!(waited < Duration::from_millis(1500), "{waited:?}");
    eprintln!("hinted part {next_msn}.{next_part} answered after {waited:?}");
    let (status, _, body) = get(&format!("{base}/index.m3u8?_HLS_msn={}", msn + 50)).await;
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
    let (status, _, _) = get(&format!("{base}/index.m3u8?_HLS_part=1")).await;
    assert_eq!(status, 400);

    // A player that knows no LL-HLS: ffprobe finds Opus, ffmpeg decodes the 440 Hz tone.
    let url = format!("{base}/index.m3u8");
    let probe = {
        let url = url.clone();
        tokio::task::spawn_blocking(move || common::ffprobe(&url, T))
            .await
            .unwrap()
            .expect("ffprobe hls")
    };
    let audio = probe["streams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["codec_type"] == "audio")
        .unwrap_or_else(|| panic!("no audio: {probe}"));
    eprintln!("ffprobe hls: audio codec_name={}", audio["codec_name"]);
    assert_eq!(audio["codec_name"], "opus", "{probe}");
    let pcm = {
        let url = url.clone();
        tokio::task::spawn_blocking(move || decode_audio(&url, 3))
            .await
            .unwrap()
    };
    assert!(pcm.len() >= 8000 * 2, "{} samples", pcm.len());
    let share = common::tone_share(&pcm, 8000, 440.0);
    eprintln!("decoded {} samples, 440 Hz share {share:.2}", pcm.len());
    assert!(share > 0.8, "{share}");

    // The call ends: the playlist ends with EXT-X-ENDLIST and stays readable.
    let (status, _) = gw
        .post_json("/call/terminate", json!({"callId": "hls1"}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(sipp.wait_async(T).await, Some(0), "{}", sipp.messages());
    let deadline = Instant::now() + T;
    loop {
        let (status, _, body) = get(&url).await;
        let text = String::from_utf8_lossy(&body).to_string();
        if status == 200 && text.ends_with("#EXT-X-ENDLIST\n") {
            break;
        }
        assert!(Instant::now() < deadline, "{status} {text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(gw.logs().contains("HLS output ended"), "{}", gw.logs());
}

/// H264 + PCMU (a video call's stream, published with a real call's timestamps and arrival
/// times) packaged by the HLS service: the playlist, init and segments saved as files are
/// read by ffprobe as H264 320x240 + Opus and decoded by ffmpeg with no error.
#[tokio::test(flavor = "multi_thread")]
async fn h264_and_pcmu_package_as_hls_that_ffmpeg_decodes() {
    let dir = tempdir();
    let frames = common::h264_frames(dir.path(), 8);
    assert!(frames.len() >= 190, "{} frames", frames.len());
    let tone = std::fs::read(common::tone_file(dir.path(), 9, false)).unwrap();
    let registry = Registry::new(4096);
    let hls = HlsService::new(
        HlsServiceConfig {
            packaging: HlsConfig {
                list_size: 10,
                ..HlsConfig::default()
            },
            idle_timeout: Duration::from_secs(30),
            first_segment_wait: Duration::from_secs(10),
            max_streams: 1,
        },
        registry.clone(),
        tokio::runtime::Handle::current(),
    );
    let publisher = registry.create("video", None).unwrap();
    let audio = publisher
        .add_track(TrackSpec::audio("PCMU", 8000, 0))
        .unwrap();
    let video = publisher.add_track(common::h264_track()).unwrap();
    // The first request starts the HLS reader; it waits for a first segment.
    let first = {
        let hls = hls.clone();
        tokio::spawn(async move { hls.get("video", "index.m3u8", "", "").await })
    };
    let other = hls.get("other", "index.m3u8", "", "").await.unwrap_err();
    assert_eq!(other.to_string(), "no stream \"other\"");
    tokio::time::sleep(Duration::from_millis(100)).await;

    // With a real call's arrival times, published as fast as the reader takes them.
    let base = Instant::now();
    let mut source = common::AvSource::new(frames, tone, audio, video);
    for i in 0..source.steps() {
        let arrival = base + Duration::from_millis(i as u64 * 20);
        for unit in source.next_units(arrival) {
            publisher.publish(unit);
        }
        if i % 25 == 0 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    let first = first.await.unwrap().expect("first playlist");
    assert!(String::from_utf8_lossy(&first.bytes).contains("#EXTINF:"));
    publisher.end("test over");
    drop(publisher);

    let deadline = Instant::now() + T;
    let playlist = loop {
        let p = hls.get("video", "index.m3u8", "", "").await.unwrap();
        let text = String::from_utf8(p.bytes.to_vec()).unwrap();
        if text.ends_with("#EXT-X-ENDLIST\n") {
            break text;
        }
        assert!(Instant::now() < deadline, "{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!("{playlist}");
    let out = dir.path().join("hls");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("index.m3u8"), &playlist).unwrap();
    let mut total = 0.0;
    for line in playlist.lines() {
        if let Some(d) = line.strip_prefix("#EXTINF:") {
            total += d.trim_end_matches(',').parse::<f64>().unwrap();
        }
        if line == "init.mp4" || line.ends_with(".m4s") || line.contains("init.mp4") {
            let name = line
                .split('"')
                .nth(1)
                .filter(|_| line.starts_with('#'))
                .unwrap_or(line);
            let f = hls.get("video", name, "", "").await.unwrap();
            std::fs::write(out.join(name), &f.bytes).unwrap();
        }
    }
    assert!((total - 8.0).abs() < 0.6, "{total} s listed:\n{playlist}");
    // With a keyframe every second, every segment starts on one: the first listed part of
    // each segment is independent.
    let mut segment_start = true;
    let mut parts = 0;
    for line in playlist.lines() {
        if line.starts_with("#EXT-X-PART:") {
            parts += 1;
            if std::mem::take(&mut segment_start) {
                assert!(line.ends_with(",INDEPENDENT=YES"), "{line}\n{playlist}");
            }
        } else if line.ends_with(".m4s") {
            segment_start = true;
        }
    }
    assert!(parts >= 8, "{playlist}");
    let path = out.join("index.m3u8").display().to_string();
    let probe = common::ffprobe(&path, T).expect("ffprobe the HLS files");
    let streams = probe["streams"].as_array().unwrap();
    let v = streams.iter().find(|s| s["codec_type"] == "video").unwrap();
    let a = streams.iter().find(|s| s["codec_type"] == "audio").unwrap();
    eprintln!(
        "ffprobe hls: video {} {}x{}, audio {}",
        v["codec_name"], v["width"], v["height"], a["codec_name"]
    );
    assert_eq!(v["codec_name"], "h264");
    assert_eq!(
        (v["width"].as_u64(), v["height"].as_u64()),
        (Some(320), Some(240))
    );
    assert_eq!(a["codec_name"], "opus");
    let errors = common::ffmpeg_decode_errors(&out.join("index.m3u8")).expect("ffmpeg");
    assert!(errors.trim().is_empty(), "ffmpeg complained: {errors}");
}
