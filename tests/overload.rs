//! Back-pressure (issue 16, item 8): a flood of new calls at 1,000 INVITEs a second against
//! a gateway at `max_calls`: every INVITE is answered 503 and ACKed (sipp), the call already
//! up keeps its media (its stream's packet count goes on at 50 a second), and the gateway's
//! memory stays flat (RSS sampled before, during and after).

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{startup_body, Gateway, Sipp};
use serde_json::json;

const T: Duration = Duration::from_secs(20);

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

async fn packets(gw: &Gateway, stream: &str) -> u64 {
    gw.stream(stream).await.unwrap()["tracks"][0]["packets"]
        .as_u64()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_new_calls_gets_503_and_the_call_up_keeps_its_media() {
    common::require("sipp");
    let gw = Gateway::start(&[
        ("max_calls", "1".into()),
        ("log_level", "sipstream=info,warn".into()),
    ])
    .await;
    let mut callee = Sipp::uas("uas_pcmu_stream.xml", "udp", false);
    let (s, v) = gw
        .post_json("/call/startup", startup_body("up1", callee.port, "udp"))
        .await;
    assert_eq!(s, 200, "{v}");
    gw.wait_status("up1", &["ESTABLISHED"], T).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_before = rss_kib(gw.pid());

    // 4,000 new calls at 1,000 a second.
    let dir = common::tempdir();
    let log = dir.path().join("flood.log");
    let stats = dir.path().join("flood.csv");
    let mut flood = Command::new("sipp")
        .arg(format!("127.0.0.1:{}", gw.sip_port))
        .args([
            "-sf",
            concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sipp/uac_flood.xml"),
        ])
        .args([
            "-i",
            "127.0.0.1",
            "-p",
            &common::free_udp_port().to_string(),
        ])
        .args(["-r", "1000", "-rp", "1000", "-m", "4000", "-l", "4000"])
        .args([
            "-timeout",
            "40s",
            "-timeout_error",
            "-nostdin",
            "-trace_stat",
        ])
        .args(["-stf", stats.to_str().unwrap(), "-fd", "1"])
        .current_dir(dir.path())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the sipp flood");

    let t0 = Instant::now();
    let p0 = packets(&gw, "up1_stream").await;
    let mut rss_peak = rss_before;
    let code = loop {
        rss_peak = rss_peak.max(rss_kib(gw.pid()));
        if let Some(st) = flood.try_wait().unwrap() {
            break st.code();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the flood did not end"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let flood_time = t0.elapsed();
    let p1 = packets(&gw, "up1_stream").await;
    let rate = (p1 - p0) as f64 / flood_time.as_secs_f64();
    let csv = std::fs::read_to_string(&stats).unwrap_or_default();
    let last = csv.lines().last().unwrap_or_default().to_string();
    eprintln!(
        "flood: sipp exit {code:?} after {flood_time:?}; media of the call up: {rate:.1} packets/s; \
         RSS {rss_before} KiB before, {rss_peak} KiB at most during"
    );
    assert_eq!(
        code,
        Some(0),
        "sipp: every INVITE answered 503 and ACKed\n{last}"
    );
    assert!(
        rate > 45.0,
        "the call up lost its media during the flood: {rate:.1}/s"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_after = rss_kib(gw.pid());
    eprintln!("RSS {rss_after} KiB 2 s after");
    assert!(
        rss_peak < rss_before + 64 * 1024 && rss_after < rss_before + 32 * 1024,
        "memory grew: {rss_before} -> peak {rss_peak} -> {rss_after} KiB"
    );
    // The gateway is fine: the call up ends cleanly, /health answers.
    let (s, _) = gw
        .post_json("/call/terminate", json!({"callId": "up1"}))
        .await;
    assert_eq!(s, 200);
    assert_eq!(callee.wait_async(T).await, Some(0), "{}", callee.messages());
    let h: serde_json::Value = reqwest::get(format!("{}/health", gw.rest))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    eprintln!("health after the flood: {h}");
    assert_eq!(h["status"], "ok");
}
