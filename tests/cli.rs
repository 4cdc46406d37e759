//! The `sipstream` command line against a running gateway and a sipp callee: a call started,
//! followed, found, listed and hung up from the CLI, its events followed live, and errors
//! with their exit codes.
mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Gateway, Sipp};
use serde_json::Value;

const T: Duration = Duration::from_secs(15);

fn cli(gw: &Gateway, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sipstream"))
        .args(args)
        .env("SIPSTREAM_API", &gw.rest)
        .env_remove("SIPSTREAM_API_KEY")
        .output()
        .expect("run the CLI");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn the_cli_places_follows_and_ends_a_call() {
    let gw = Gateway::start(&[]).await;
    // Events of the call, followed live from before it starts until it has ended.
    let events = Command::new(env!("CARGO_BIN_EXE_sipstream"))
        .args(["events", "--call-id", "cli1", "--count", "4"])
        .env("SIPSTREAM_API", &gw.rest)
        .stdout(Stdio::piped())
        .spawn()
        .expect("events");
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut callee = Sipp::uas("uas_pcmu_stream.xml", "udp", false);
    let uri = format!("sip:answer@127.0.0.1:{}", callee.port);
    let (code, out, err) = cli(
        &gw,
        &[
            "call", "start", "--callee", &uri, "--id", "cli1", "--stream", "cli1_s",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("CALL"), "a table: {out}");
    assert!(out.contains("cli1") && out.contains("cli1_s"), "{out}");
    gw.wait_status("cli1", &["ESTABLISHED"], T).await;

    let (code, out, err) = cli(&gw, &["--json", "call", "find", "cli1"]);
    assert_eq!(code, 0, "{out}{err}");
    let found: Value = serde_json::from_str(&out).expect("--json prints the API's JSON");
    // /call/find answers a list, as WCS's does.
    assert_eq!(found[0]["callId"], "cli1", "{found}");
    assert_eq!(found[0]["status"], "ESTABLISHED", "{found}");
    let (_, out, _) = cli(&gw, &["call", "list", "--status", "ESTABLISHED"]);
    let row = out
        .lines()
        .find(|l| l.starts_with("cli1"))
        .unwrap_or_default();
    assert!(
        row.contains("ESTABLISHED") && row.contains("outbound"),
        "{out}"
    );
    let (_, out, _) = cli(&gw, &["stream", "list"]);
    assert!(
        out.lines()
            .any(|l| l.starts_with("cli1_s") && l.contains("PCMU")),
        "{out}"
    );

    // `call answer` reaches /call/answer: an outbound call does not wait for one (409).
    let (code, out, err) = cli(&gw, &["call", "answer", "cli1"]);
    assert_ne!(code, 0, "{out}{err}");
    assert!(
        format!("{out}{err}").contains("waiting for an answer"),
        "{out}{err}"
    );

    let (code, out, err) = cli(&gw, &["call", "terminate", "cli1"]);
    assert_eq!(code, 0, "{out}{err}");
    gw.wait_status("cli1", &["FINISH"], T).await;
    assert_eq!(callee.wait_async(T).await, Some(0));
    let followed = tokio::task::spawn_blocking(move || events.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&followed.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("TIME"), "{text}");
    assert_eq!(
        lines.len(),
        5,
        "a header and the 4 events asked for: {text}"
    );
    assert!(
        lines
            .iter()
            .all(|l| l.starts_with("TIME") || l.contains("cli1")),
        "{text}"
    );
    assert!(
        lines.iter().any(|l| l.contains("ESTABLISHED")),
        "the call's progress, live: {text}"
    );

    // Errors: the API's status and message, exit code 1; an API that is not there, 2; a
    // command that does not exist, 2.
    let (code, _, err) = cli(&gw, &["call", "find", "nope"]);
    assert_eq!(code, 1);
    assert!(err.contains("404") && err.contains("nope"), "{err}");
    let out = Command::new(env!("CARGO_BIN_EXE_sipstream"))
        .args(["call", "list", "--api", "http://127.0.0.1:9"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the API"));
    let (code, _, err) = cli(&gw, &["call", "frobnicate"]);
    assert_eq!(code, 2, "{err}");
}
