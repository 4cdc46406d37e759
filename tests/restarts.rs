//! Restarts (issue 16, item 4): `kill -9` during 50 recorded calls leaves every recording
//! playable up to within 2 s of the kill, and the next start marks their sidecars
//! `interrupted`, lists them, and leaves nothing stale; SIGTERM hangs up every call, finishes
//! every recording and delivers their webhooks before the process exits, within
//! `shutdown_timeout_s`.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{startup_body, Gateway, Sipp};
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(30);

/// Starts `n` recorded calls to `sipp`; returns when each was seen established.
async fn recorded_calls(gw: &Gateway, sipp: &Sipp, n: usize) -> HashMap<String, Instant> {
    for i in 0..n {
        let mut body = startup_body(&format!("r{i}"), sipp.port, "udp");
        body["record"] = json!(true);
        let (s, v) = gw.post_json("/call/startup", body).await;
        assert_eq!(s, 200, "{v}");
    }
    let mut up = HashMap::new();
    let deadline = Instant::now() + T;
    while up.len() < n {
        let (_, all) = gw.post("/call/find_all", "").await;
        for c in all.as_array().into_iter().flatten() {
            if c["status"] == "ESTABLISHED" {
                up.entry(c["callId"].as_str().unwrap().to_string())
                    .or_insert_with(Instant::now);
            }
        }
        assert!(Instant::now() < deadline, "{} of {n} calls up", up.len());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    up
}

fn sidecars(dir: &Path) -> Vec<Value> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .map(|e| serde_json::from_slice(&std::fs::read(e.path()).unwrap()).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_during_50_recorded_calls_leaves_playable_files_marked_interrupted_next_start() {
    common::require("ffprobe");
    let records = common::tempdir();
    let dir = records.path().to_path_buf();
    let sipp = Sipp::uas_many("uas_pcmu_stream.xml", 50);
    // 50 calls need 100 RTP ports (the tests' usual block has 40).
    let base = 50_000 + (std::process::id() % 40) as u16 * 250;
    let mut gw = Gateway::start(&[
        ("record_dir", dir.display().to_string()),
        ("rtp_port_min", base.to_string()),
        ("rtp_port_max", (base + 199).to_string()),
    ])
    .await;
    let up = recorded_calls(&gw, &sipp, 50).await;
    // Each sidecar says "recording" while its call runs.
    let cars = sidecars(&dir);
    assert_eq!(cars.len(), 50);
    assert!(cars.iter().all(|c| c["state"] == "recording"));
    tokio::time::sleep(Duration::from_secs(5)).await;
    let killed = Instant::now();
    gw.kill();

    // Every file plays up to within 2 s of the kill.
    let mut shortest = f64::MAX;
    for car in &cars {
        let file = dir.join(car["fileName"].as_str().unwrap());
        let call = car["callId"].as_str().unwrap();
        let duration =
            common::media_seconds(&file, T).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let lived = killed.duration_since(up[call]).as_secs_f64();
        assert!(
            duration >= lived - 2.0,
            "{}: {duration:.2} s of media for a call up {lived:.2} s before the kill",
            file.display()
        );
        let decoded = std::process::Command::new("ffmpeg")
            .args(["-nostdin", "-v", "error", "-i"])
            .arg(&file)
            .args(["-f", "null", "-"])
            .status()
            .unwrap();
        assert!(decoded.success(), "{} does not decode", file.display());
        shortest = shortest.min(duration - lived);
    }
    eprintln!(
        "50 recordings after kill -9: the shortest is {shortest:.2} s from its call's time up"
    );

    // The next start on the same folder: the sidecars are marked, listed, no .tmp left.
    let gw2 = Gateway::start(&[("record_dir", dir.display().to_string())]).await;
    assert!(gw2.logs().contains("marked interrupted"), "{}", gw2.logs());
    let cars = sidecars(&dir);
    assert_eq!(cars.len(), 50);
    for c in &cars {
        assert_eq!(c["state"], "interrupted", "{c}");
        assert!(c["durationMs"].as_u64().unwrap() >= 3000, "{c}");
        assert!(c["sizeBytes"].as_u64().unwrap() > 0, "{c}");
        assert!(
            c["endReason"].as_str().unwrap().contains("interrupted"),
            "{c}"
        );
    }
    let (_, listed) = gw2.post("/recorder/find_all", "").await;
    let listed = listed.as_array().unwrap();
    assert_eq!(
        listed
            .iter()
            .filter(|r| r["state"] == "interrupted")
            .count(),
        50
    );
    let stale: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(stale.is_empty(), "{stale:?}");
    // A download of one of them works on the new gateway.
    let name = listed[0]["fileName"].as_str().unwrap();
    let r = reqwest::get(format!("{}/recordings/{name}", gw2.rest))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_hangs_up_finishes_recordings_and_delivers_webhooks_in_time() {
    let (hook, mut events) = common::webhook().await;
    let records = common::tempdir();
    let dir = records.path().to_path_buf();
    let mut sipp = Sipp::uas_many("uas_pcmu_stream.xml", 5);
    let mut gw = Gateway::start(&[
        ("record_dir", dir.display().to_string()),
        ("webhook_url", hook),
        ("shutdown_timeout_s", "5".into()),
    ])
    .await;
    recorded_calls(&gw, &sipp, 5).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let t0 = Instant::now();
    assert!(gw.terminate(Duration::from_secs(10)), "still running");
    let took = t0.elapsed();
    eprintln!("SIGTERM with 5 recorded calls: exited after {took:?}");
    assert!(took < Duration::from_secs(6), "{took:?}");
    // Every call got its BYE.
    assert_eq!(sipp.wait_async(T).await, Some(0), "{}", sipp.messages());
    // Every recording finished, with its sidecar and its webhook, before the exit.
    let cars = sidecars(&dir);
    assert_eq!(cars.len(), 5);
    for c in &cars {
        assert_eq!(c["state"], "done", "{c}");
        assert!(c["durationMs"].as_u64().unwrap() >= 2000, "{c}");
    }
    let mut done = 0;
    while let Ok(ev) = events.try_recv() {
        if ev["type"] == "RecordingStatusEvent" && ev["state"] == "done" {
            done += 1;
        }
    }
    assert_eq!(done, 5, "RecordingStatusEvents delivered before the exit");
    let logs = gw.logs();
    assert!(!logs.contains("still running at the timeout"), "{logs}");
    assert!(!logs.contains("still queued at the timeout"), "{logs}");
}
