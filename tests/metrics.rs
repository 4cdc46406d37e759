//! `GET /metrics` end to end: a gateway with sipp callees; the scrape is OpenMetrics text
//! with the `sipstream_*` families, and its counters move with the calls.
mod common;

use std::time::Duration;

use common::{Gateway, Sipp};
use serde_json::json;

const T: Duration = Duration::from_secs(15);

async fn scrape(gw: &Gateway) -> (String, String) {
    let resp = reqwest::get(format!("{}/metrics", gw.rest)).await.unwrap();
    assert_eq!(resp.status(), 200);
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    (ct, resp.text().await.unwrap())
}

/// A call as a user writes one: the callee's URI with its host and port, nothing else routed.
fn call_to(call_id: &str, port: u16) -> serde_json::Value {
    serde_json::json!({"callId": call_id, "callee": format!("sip:answer@127.0.0.1:{port}"),
        "sipLogin": "alice", "sipDomain": "127.0.0.1"})
}

/// The value of the sample `name` (with exactly `labels`, e.g. `{kind="audio"}`, or "").
fn sample(text: &str, name: &str, labels: &str) -> Option<f64> {
    let key = format!("{name}{labels} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&key))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test]
async fn metrics_follow_calls_media_and_the_process() {
    let (hook, _events) = common::webhook().await;
    let gw = Gateway::start(&[("webhook_url", hook)]).await;
    let (ct, idle) = scrape(&gw).await;
    assert!(ct.starts_with("application/openmetrics-text"), "{ct}");
    assert!(idle.trim_end().ends_with("# EOF"), "{idle}");
    for family in [
        "sipstream_calls gauge",
        "sipstream_calls_started counter",
        "sipstream_calls_established counter",
        "sipstream_streams gauge",
        "sipstream_rtp_packets_received counter",
        "sipstream_rtp_packets_lost counter",
        "sipstream_readers gauge",
        "sipstream_reader_drops counter",
        "sipstream_rtp_jitter_ms histogram",
        "sipstream_recordings gauge",
        "sipstream_siprec_sessions counter",
        "sipstream_process_cpu_seconds counter",
        "sipstream_process_resident_memory_bytes gauge",
    ] {
        assert!(
            idle.contains(&format!("# TYPE {family}\n")),
            "{family} missing:\n{idle}"
        );
    }
    assert!(sample(&idle, "sipstream_process_resident_memory_bytes", "").unwrap() > 1e6);
    assert!(sample(&idle, "sipstream_process_threads", "").unwrap() >= 2.0);
    assert!(
        !idle.contains(".."),
        "help texts end with one period: {idle}"
    );

    // A call that streams PCMU, recorded: calls by status, starts, RTP moving, a reader.
    let mut callee = Sipp::uas("uas_pcmu_stream.xml", "udp", false);
    let mut body = call_to("m1", callee.port);
    body["record"] = json!(true);
    let (s, v) = gw.post_json("/call/startup", body).await;
    assert_eq!(s, 200, "{v}");
    gw.wait_status("m1", &["ESTABLISHED"], T).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, during) = scrape(&gw).await;
    let est = r#"{status="ESTABLISHED",direction="outbound"}"#;
    assert_eq!(
        sample(&during, "sipstream_calls", est),
        Some(1.0),
        "{during}"
    );
    assert_eq!(
        sample(
            &during,
            "sipstream_calls_started_total",
            r#"{direction="outbound"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &during,
            "sipstream_calls_established_total",
            r#"{direction="outbound"}"#
        ),
        Some(1.0)
    );
    assert_eq!(sample(&during, "sipstream_streams", ""), Some(1.0));
    assert_eq!(
        sample(&during, "sipstream_readers", r#"{kind="recorder"}"#),
        Some(1.0),
        "{during}"
    );
    let audio = r#"{kind="audio"}"#;
    let p1 = sample(&during, "sipstream_rtp_packets_received_total", audio).unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (_, later) = scrape(&gw).await;
    let p2 = sample(&later, "sipstream_rtp_packets_received_total", audio).unwrap();
    assert!(p2 - p1 > 30.0, "RTP packets move: {p1} -> {p2}");
    assert!(
        sample(
            &later,
            "sipstream_reader_units_total",
            r#"{kind="recorder"}"#
        )
        .unwrap()
            > 30.0,
        "{later}"
    );

    // Hung up: ended by status and SIP status; the stream's packets stay counted.
    let (s, _) = gw
        .post_json("/call/terminate", json!({"callId": "m1"}))
        .await;
    assert_eq!(s, 200);
    gw.wait_status("m1", &["FINISH"], T).await;
    assert_eq!(callee.wait(T), Some(0));
    // A busy callee: a setup failure by its SIP status.
    let mut busy = Sipp::uas("uas_busy.xml", "udp", false);
    let (s, _) = gw
        .post_json("/call/startup", call_to("m2", busy.port))
        .await;
    assert_eq!(s, 200);
    gw.wait_status("m2", &["BUSY"], T).await;
    assert_eq!(busy.wait(T), Some(0));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (_, after) = scrape(&gw).await;
    assert!(after.contains("# TYPE sipstream_calls_ended counter\n"));
    assert_eq!(
        sample(
            &after,
            "sipstream_calls_ended_total",
            r#"{status="FINISH",sip_status="200"}"#
        ),
        Some(1.0),
        "{after}"
    );
    assert_eq!(
        sample(
            &after,
            "sipstream_calls_ended_total",
            r#"{status="BUSY",sip_status="486"}"#
        ),
        Some(1.0),
        "{after}"
    );
    assert_eq!(
        sample(
            &after,
            "sipstream_calls_started_total",
            r#"{direction="outbound"}"#
        ),
        Some(2.0)
    );
    assert_eq!(sample(&after, "sipstream_calls", est), None, "no call left");
    let p3 = sample(&after, "sipstream_rtp_packets_received_total", audio).unwrap();
    assert!(p3 >= p2, "counters never go back: {p2} -> {p3}");
    assert!(
        sample(
            &after,
            "sipstream_recording_events_total",
            r#"{state="done"}"#
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{after}"
    );
    assert!(
        sample(
            &after,
            "sipstream_webhook_posts_total",
            r#"{result="delivered"}"#
        )
        .unwrap()
            >= 4.0,
        "{after}"
    );
    // Every family the Grafana dashboard queries is in the scrape.
    let dash = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/grafana/sipstream-dashboard.json"
    ))
    .unwrap();
    let _: serde_json::Value = serde_json::from_str(&dash).expect("dashboard is JSON");
    let mut names: Vec<&str> = dash
        .match_indices("sipstream_")
        .map(|(i, _)| {
            let rest = &dash[i..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            &rest[..end]
        })
        .filter(|n| n.len() > "sipstream_".len())
        .collect();
    names.sort();
    names.dedup();
    for n in names {
        let base = n
            .strip_suffix("_total")
            .or_else(|| n.strip_suffix("_bucket"))
            .unwrap_or(n);
        assert!(
            after.contains(&format!("# TYPE {base} ")),
            "the dashboard queries {n}, which the scrape lacks"
        );
    }
}
