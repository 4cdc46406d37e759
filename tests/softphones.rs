//! Real softphones: three baresip instances registered through kamailio (digest auth), the
//! gateway calling through kamailio as user `gw`. A two-party call between two phones is
//! bridged by the gateway (each phone hears the other's tone, the recording is stereo with one
//! phone per channel), then the callee is transferred blind (REFER) to the third phone.
mod common;

use std::time::{Duration, Instant};

use common::{tone_share, Baresip, Gateway, Kamailio};
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(20);

fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + T;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The share of `hz` in the last second of what a phone heard.
fn hears(phone: &Baresip, hz: f64) -> f64 {
    let (pcm, rate) = phone.heard();
    let n = rate as usize;
    if pcm.len() < n {
        return 0.0;
    }
    tone_share(&pcm[pcm.len() - n..], rate, hz)
}

#[tokio::test]
async fn two_baresip_phones_bridged_recorded_in_stereo_then_transferred_to_a_third() {
    let mut kam = Kamailio::start_phones();
    let p1 = Baresip::start("1001", kam.port, 440);
    let p2 = Baresip::start("1002", kam.port, 1000);
    let p3 = Baresip::start("1003", kam.port, 660);
    for p in [&p1, &p2, &p3] {
        let u = &p.user;
        let log = kam.wait_log(&format!("REGISTER-OK {u}"), T);
        assert!(
            log.contains(&format!("REGISTER-OK {u}")),
            "{u} registers:\n{log}\n--- baresip {u} ---\n{}",
            p.log()
        );
    }
    let (url, mut rx) = common::webhook().await;
    let gw = Gateway::start(&[("webhook_url", url)]).await;
    let body = json!({
        "callId": "ph1", "caller": "1001", "callee": "1002", "toStream": "ph1", "record": true,
        "sipLogin": "gw", "sipPassword": "gw-Pa55", "sipDomain": "sipstream.test",
        "sipOutboundProxy": "127.0.0.1", "sipPort": kam.port,
    });
    let (s, call) = gw.post_json("/call/startup", body).await;
    assert_eq!(s, 200, "{call}");
    let call = gw.wait_status("ph1", &["ESTABLISHED"], T).await;
    assert_eq!(call["legs"][0]["status"], "ESTABLISHED", "{call}");
    assert_eq!(call["legs"][1]["status"], "ESTABLISHED", "{call}");
    // Each phone hears the other through the gateway.
    wait_for("1002 to hear 1001's 440 Hz", || hears(&p2, 440.0) > 0.5);
    wait_for("1001 to hear 1002's 1 kHz", || hears(&p1, 1000.0) > 0.5);
    let call = gw.call("ph1").await;
    for leg in 0..2 {
        let t = &call["legs"][leg]["tracks"][0];
        assert!(t["packetsReceived"].as_u64().unwrap() > 50, "{call}");
        assert!(t["packetsSent"].as_u64().unwrap() > 50, "{call}");
    }

    // Blind transfer of the callee (1002) to 1003: REFER, NOTIFYs, and our BYEs.
    let (s, e) = gw
        .post_json(
            "/call/transfer",
            json!({"callId": "ph1", "leg": "callee", "target": "1003"}),
        )
        .await;
    assert_eq!(s, 200, "{e}");
    let deadline = tokio::time::Instant::now() + T;
    let mut steps: Vec<String> = Vec::new();
    while !steps
        .iter()
        .any(|e| e == "TransferSuccessful" || e == "TransferFailed")
    {
        let ev: Value = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("transfer stalled at {steps:?}\n{}", p2.log()))
            .unwrap();
        if ev["type"] == "CallControlEvent" && ev["event"].as_str().unwrap().starts_with("Transfer")
        {
            steps.push(ev["event"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(
        steps.first().map(String::as_str),
        Some("Transferring"),
        "{steps:?}"
    );
    assert_eq!(
        steps.last().map(String::as_str),
        Some("TransferSuccessful"),
        "{steps:?}"
    );
    let call = gw.wait_status("ph1", &["FINISH"], T).await;
    assert_eq!(
        call["reason"], "transferred to sip:1003@sipstream.test",
        "{call}"
    );
    // 1002 now talks to 1003 directly: 1003 answered and hears 1002's 1 kHz.
    wait_for("1003 to be called", || p3.calls() > 0);
    wait_for("1003 to hear 1002", || hears(&p3, 1000.0) > 0.5);

    // The recording of the bridged call: stereo, 1001 left, 1002 right.
    let deadline = Instant::now() + T;
    let file = loop {
        let (_, all) = gw.post("/recorder/find_all", "").await;
        if let Some(r) = all.as_array().and_then(|a| {
            a.iter()
                .find(|r| r["stream"] == "ph1" && r["state"] == "done")
                .cloned()
        }) {
            break gw
                .dir()
                .join("records")
                .join(r["fileName"].as_str().unwrap());
        }
        assert!(Instant::now() < deadline, "no finished recording: {all}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let out = std::process::Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(&file)
        .args(["-f", "s16le", "-ac", "2", "-ar", "8000", "pipe:1"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let s: Vec<i16> = out
        .stdout
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect();
    let left: Vec<i16> = s.iter().step_by(2).copied().collect();
    let right: Vec<i16> = s.iter().skip(1).step_by(2).copied().collect();
    let tail = |v: &[i16]| v[v.len().saturating_sub(12000)..v.len().saturating_sub(4000)].to_vec();
    let (l, r) = (tail(&left), tail(&right));
    let (l440, r1k) = (tone_share(&l, 8000, 440.0), tone_share(&r, 8000, 1000.0));
    eprintln!("stereo recording: left 440 Hz {l440:.3}, right 1 kHz {r1k:.3}");
    assert!(l440 > 0.5, "1001 on the left: {l440}");
    assert!(r1k > 0.5, "1002 on the right: {r1k}");
    drop(p1);
}
