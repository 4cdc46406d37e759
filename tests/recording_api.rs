//! Recording through the API against a real call: `record: true`, start/stop over REST, the
//! list, range downloads, and the file checked with ffprobe/ffmpeg.
mod common;

use std::process::Command;
use std::time::Duration;

use common::{startup_body, Gateway, Sipp};
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(15);

async fn wait_recording(gw: &Gateway, file: &str, state: &str) -> Value {
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let (s, all) = gw.post("/recorder/find_all", "").await;
        assert_eq!(s, 200);
        if let Some(r) = all
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["fileName"] == file)
        {
            if r["state"] == state {
                return r.clone();
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{file} never {state}: {all}\n{}",
            gw.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn ffprobe(path: &std::path::Path) -> Value {
    common::require("ffprobe");
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-count_packets",
            "-show_streams",
            "-show_format",
            "-of",
            "json",
        ])
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ffprobe: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The file's duration (ffprobe) is the call's, answer to hang-up, within 2 %; both in seconds.
fn lasts_as_long_as_the_call(probe: &Value, call: &Value) -> (f64, f64) {
    let file_s: f64 = probe["format"]["duration"]
        .as_str()
        .and_then(|d| d.parse().ok())
        .unwrap_or_else(|| panic!("no duration: {probe}"));
    let call_s = common::call_seconds(call);
    assert!(
        (file_s - call_s).abs() <= call_s * 0.02,
        "file {file_s} s, call {call_s} s"
    );
    (file_s, call_s)
}

fn decodes_fully(path: &std::path::Path) {
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-xerror", "-i"])
        .arg(path)
        .args(["-f", "null", "-"])
        .output()
        .unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "decode: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn record_true_call_gives_a_playable_file_of_the_calls_length() {
    let (url, mut events) = common::webhook().await;
    let gw = Gateway::start(&[("webhook_url", url)]).await;
    let mut sipp = Sipp::uas("uas_pcmu_stream.xml", "udp", false);
    let mut body = startup_body("rec1", sipp.port, "udp");
    body["record"] = json!("true");
    let (s, v) = gw.post_json("/call/startup", body).await;
    assert_eq!(s, 200, "{v}");
    gw.wait_status("rec1", &["ESTABLISHED"], T).await;
    let started = common::wait_event(&mut events, "RecordingStatusEvent", T).await;
    assert_eq!(started["state"], "recording");
    let file = started["fileName"].as_str().unwrap().to_string();
    assert!(
        file.starts_with("rec1_stream-") && file.ends_with(".mp4"),
        "{file}"
    );
    // 10 s: the 2 % budget (200 ms) then covers the callee's start-up lag of its RTP on a
    // loaded CI machine; the file measures media from the first packet.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let (s, _) = gw
        .post_json("/call/terminate", json!({"callId": "rec1"}))
        .await;
    assert_eq!(s, 200);
    let call = gw.wait_status("rec1", &["FINISH"], T).await;
    assert_eq!(sipp.wait(T), Some(0));
    let rec = wait_recording(&gw, &file, "done").await;
    assert_eq!(rec["callId"], "rec1");
    assert_eq!(rec["sipCallId"], call["sipCallId"]);
    let done = common::wait_event(&mut events, "RecordingStatusEvent", T).await;
    assert_eq!(done["state"], "done", "{done}");

    // Download: whole file, then a byte range.
    let url = format!("{}/recordings/{file}", gw.rest);
    let whole = reqwest::get(&url).await.unwrap();
    assert_eq!(whole.status(), 200);
    let bytes = whole.bytes().await.unwrap();
    assert_eq!(bytes.len() as u64, rec["sizeBytes"].as_u64().unwrap());
    let part = reqwest::Client::new()
        .get(&url)
        .header("Range", "bytes=0-99")
        .send()
        .await
        .unwrap();
    assert_eq!(part.status(), 206);
    assert_eq!(part.bytes().await.unwrap().len(), 100);
    let dir = common::tempdir();
    let path = dir.path().join(&file);
    std::fs::write(&path, &bytes).unwrap();

    // One Opus stream, as long as the call (answer to hang-up) within 2 %, decodable.
    let probe = ffprobe(&path);
    let streams = probe["streams"].as_array().unwrap();
    assert_eq!(streams.len(), 1, "{probe}");
    assert_eq!(streams[0]["codec_name"], "opus");
    let (file_s, _) = lasts_as_long_as_the_call(&probe, &call);
    let packets: f64 = streams[0]["nb_read_packets"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (packets * 0.02 - file_s).abs() <= file_s * 0.02,
        "{packets} packets of 20 ms for {file_s} s"
    );
    decodes_fully(&path);

    // The sidecar sits next to the file.
    let sidecar = gw.dir().join("records").join(file.replace(".mp4", ".json"));
    let meta: Value = serde_json::from_str(&std::fs::read_to_string(&sidecar).unwrap()).unwrap();
    assert_eq!(meta["callId"], "rec1");
    assert_eq!(meta["state"], "done");
    assert!(
        meta["participants"].as_array().unwrap().len() == 2,
        "{meta}"
    );
}

#[tokio::test]
async fn start_and_stop_over_rest_with_bad_input() {
    let gw = Gateway::start(&[]).await;
    let mut sipp = Sipp::uas("uas_pcmu_stream.xml", "udp", false);
    let (s, _) = gw
        .post_json("/call/startup", startup_body("live1", sipp.port, "udp"))
        .await;
    assert_eq!(s, 200);
    gw.wait_status("live1", &["ESTABLISHED"], T).await;
    let (s, rec) = gw
        .post_json("/stream/startRecording", json!({"name": "live1_stream"}))
        .await;
    assert_eq!(s, 200, "{rec}");
    assert_eq!(rec["state"], "recording");
    let (s, v) = gw
        .post_json(
            "/recorder/startup",
            json!({"mediaSessionId": "live1_stream"}),
        )
        .await;
    assert_eq!(s, 409, "already recorded: {v}");
    let (s, v) = gw
        .post_json("/stream/startRecording", json!({"name": "nope"}))
        .await;
    assert_eq!(s, 404, "{v}");
    let (s, v) = gw.post_json("/stream/startRecording", json!({})).await;
    assert_eq!(s, 400, "{v}");
    assert!(v["message"].as_str().unwrap().contains("name"));
    // The recorder shows as a reader of the stream.
    let stream = gw.stream("live1_stream").await.unwrap();
    assert!(
        stream["readers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["kind"] == "recorder"),
        "{stream}"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (s, done) = gw
        .post_json(
            "/recorder/terminate",
            json!({"mediaSessionId": rec["mediaSessionId"]}),
        )
        .await;
    assert_eq!(s, 200, "{done}");
    assert_eq!(done["state"], "done");
    let (s, v) = gw
        .post_json("/stream/stopRecording", json!({"name": "nothing"}))
        .await;
    assert_eq!(s, 404, "{v}");
    let file = done["fileName"].as_str().unwrap();
    let path = gw.dir().join("records").join(file);
    let probe = ffprobe(&path);
    let d: f64 = probe["format"]["duration"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((2.5..4.5).contains(&d), "duration {d}");
    decodes_fully(&path);
    for bad in ["..%2F..%2Fetc%2Fpasswd", ".hidden.mp4", "x.txt", "nope.mp4"] {
        let r = reqwest::get(format!("{}/recordings/{bad}", gw.rest))
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{bad}");
    }
    let (s, _) = gw
        .post_json("/call/terminate", json!({"callId": "live1"}))
        .await;
    assert_eq!(s, 200);
    assert_eq!(sipp.wait(T), Some(0));
}

/// Every call recorded by `sip_record_stream=true`. The far end holds the call (a=inactive)
/// and sends no RTP for 3 s: the recording keeps the wall clock. The file lasts as long as
/// the call within 2 %, and the hold is 3 s of silence at the right place, found by
/// ffmpeg's silencedetect.
#[tokio::test]
async fn hold_without_media_stays_on_the_wall_clock() {
    common::require("ffmpeg");
    let gw = Gateway::start(&[("sip_record_stream", "true".into())]).await;
    let mut sipp = Sipp::uas("uas_hold_silent.xml", "udp", false);
    let body = startup_body("hold_rec", sipp.port, "udp");
    let (s, v) = gw.post_json("/call/startup", body).await;
    assert_eq!(s, 200, "{v}");
    gw.wait_status("hold_rec", &["ESTABLISHED"], T).await;
    gw.wait_status("hold_rec", &["HOLD"], T).await;
    gw.wait_status("hold_rec", &["ESTABLISHED"], T).await;
    let call = gw.wait_status("hold_rec", &["FINISH"], T).await;
    assert_eq!(sipp.wait(T), Some(0), "{}", sipp.messages());
    let (s, all) = gw.post("/recorder/find_all", "").await;
    assert_eq!(s, 200);
    let file = all
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["callId"] == "hold_rec")
        .and_then(|r| r["fileName"].as_str())
        .unwrap_or_else(|| panic!("no recording: {all}"))
        .to_owned();
    wait_recording(&gw, &file, "done").await;
    let path = gw.dir().join("records").join(&file);
    let probe = ffprobe(&path);
    let (file_s, call_s) = lasts_as_long_as_the_call(&probe, &call);
    decodes_fully(&path);
    let out = Command::new("ffmpeg")
        .args(["-v", "info", "-nostats", "-i"])
        .arg(&path)
        .args(["-af", "silencedetect=noise=-30dB:d=0.5", "-f", "null", "-"])
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    let value = |key: &str| -> Vec<f64> {
        log.split(key)
            .skip(1)
            .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
            .collect()
    };
    let (starts, lengths) = (value("silence_start: "), value("silence_duration: "));
    assert_eq!(
        (starts.len(), lengths.len()),
        (1, 1),
        "one silence expected: {log}"
    );
    eprintln!("file {file_s} s, call {call_s} s, silence {starts:?} for {lengths:?}");
    // sipp stops its RTP 2 s after the ACK and resumes after 3 s plus two re-INVITEs.
    assert!(
        (1.7..2.6).contains(&starts[0]),
        "silence from {}",
        starts[0]
    );
    assert!(
        (2.8..3.6).contains(&lengths[0]),
        "silence for {}",
        lengths[0]
    );
}

/// A recording folder that cannot be created (its path is a file): the recording fails
/// loudly (webhook event, 500 naming the path), and the call streams and hangs up as usual.
#[tokio::test]
async fn unwritable_record_dir_fails_the_recording_not_the_call() {
    let dir = common::tempdir();
    let blocker = dir.path().join("not-a-dir");
    std::fs::write(&blocker, b"x").unwrap();
    let (url, mut events) = common::webhook().await;
    let gw = Gateway::start(&[
        ("webhook_url", url),
        ("record_dir", blocker.join("records").display().to_string()),
    ])
    .await;
    let mut sipp = Sipp::uas("uas_pcmu_stream.xml", "udp", false);
    let mut body = startup_body("norec", sipp.port, "udp");
    body["record"] = json!(true);
    let (s, v) = gw.post_json("/call/startup", body).await;
    assert_eq!(s, 200, "{v}");
    let failed = common::wait_event(&mut events, "RecordingStatusEvent", T).await;
    assert_eq!(failed["state"], "failed", "{failed}");
    assert_eq!(failed["callId"], "norec", "{failed}");
    assert!(
        failed["fileName"]
            .as_str()
            .unwrap()
            .starts_with("norec_stream-"),
        "{failed}"
    );
    assert!(
        failed["error"]
            .as_str()
            .unwrap_or_default()
            .contains("not-a-dir"),
        "{failed}"
    );
    gw.wait_status("norec", &["ESTABLISHED"], T).await;
    let (s, v) = gw
        .post_json("/stream/startRecording", json!({"name": "norec_stream"}))
        .await;
    assert_eq!(s, 500, "{v}");
    assert!(v["message"].as_str().unwrap().contains("not-a-dir"), "{v}");
    // The call is untouched: media keeps flowing.
    let before = gw.stream("norec_stream").await.unwrap()["tracks"][0]["packets"]
        .as_u64()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = gw.stream("norec_stream").await.unwrap()["tracks"][0]["packets"]
        .as_u64()
        .unwrap();
    assert!(after >= before + 30, "{before} → {after}");
    let (s, _) = gw
        .post_json("/call/terminate", json!({"callId": "norec"}))
        .await;
    assert_eq!(s, 200);
    gw.wait_status("norec", &["FINISH"], T).await;
    assert_eq!(sipp.wait(T), Some(0));
}
