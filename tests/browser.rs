//! The web pages in a real browser: headless Chromium (Debian `chromium` + `chromium-driver`)
//! driven over WebDriver plays a call's stream over WHEP and reports what it received through
//! `getStats()`. Screenshots land in the test's temporary folder (their paths are printed).
mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::{free_tcp_port, require, startup_body, tempdir, Gateway, Sipp};
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(20);

/// chromedriver and one Chromium session with the flags PEERS.md lists for WebRTC on
/// loopback.
struct Browser {
    driver: Child,
    base: String,
    session: String,
    http: reqwest::Client,
    dir: tempfile::TempDir,
}

impl Browser {
    async fn start() -> Browser {
        require("chromium");
        require("chromedriver");
        let dir = tempdir();
        let port = free_tcp_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let deadline = Instant::now() + T;
        while http.get(format!("{base}/status")).send().await.is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let profile = dir.path().join("profile");
        let args = vec![
            "--headless".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--allow-loopback-in-peer-connection".into(),
            "--disable-features=WebRtcHideLocalIpsWithMdns".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--autoplay-policy=no-user-gesture-required".into(),
            "--use-fake-ui-for-media-stream".into(),
            "--window-size=1280,900".into(),
            format!("--user-data-dir={}", profile.display()),
        ];
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": "/usr/bin/chromium", "args": args}
        }}});
        let resp: Value = http
            .post(format!("{base}/session"))
            .json(&caps)
            .send()
            .await
            .expect("new session")
            .json()
            .await
            .unwrap();
        let session = resp["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {resp}"))
            .to_string();
        Browser {
            driver,
            base,
            session,
            http,
            dir,
        }
    }

    async fn cmd(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let mut req = self.http.request(method, url);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let v: Value = req.send().await.unwrap().json().await.unwrap();
        assert!(v["value"].get("error").is_none(), "WebDriver {path}: {v}");
        v["value"].clone()
    }

    async fn goto(&self, url: &str) {
        self.cmd(reqwest::Method::POST, "/url", Some(json!({ "url": url })))
            .await;
    }

    async fn eval(&self, script: &str) -> Value {
        self.cmd(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
        .await
    }

    async fn element(&self, css: &str) -> String {
        let v = self
            .cmd(
                reqwest::Method::POST,
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        v.as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no element {css}: {v}"))
            .to_string()
    }

    /// Types into a form field the way a person would (clear, then keys).
    async fn fill(&self, css: &str, text: &str) {
        let id = self.element(css).await;
        self.cmd(
            reqwest::Method::POST,
            &format!("/element/{id}/clear"),
            Some(json!({})),
        )
        .await;
        self.cmd(
            reqwest::Method::POST,
            &format!("/element/{id}/value"),
            Some(json!({ "text": text })),
        )
        .await;
    }

    async fn click(&self, css: &str) {
        let id = self.element(css).await;
        self.cmd(
            reqwest::Method::POST,
            &format!("/element/{id}/click"),
            Some(json!({})),
        )
        .await;
    }

    async fn text(&self, css: &str) -> String {
        let id = self.element(css).await;
        self.cmd(reqwest::Method::GET, &format!("/element/{id}/text"), None)
            .await
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    async fn screenshot(&self, name: &str) -> PathBuf {
        let b64 = self.cmd(reqwest::Method::GET, "/screenshot", None).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().unwrap())
            .unwrap();
        let path = self.dir.path().join(name);
        std::fs::write(&path, png).unwrap();
        // Kept for a person to look at when SIPSTREAM_SCREENSHOTS names a folder.
        if let Ok(dir) = std::env::var("SIPSTREAM_SCREENSHOTS") {
            let _ = std::fs::create_dir_all(&dir);
            let _ = std::fs::copy(&path, Path::new(&dir).join(name));
        }
        eprintln!("screenshot: {}", path.display());
        path
    }

    /// Waits until the page's getStats() shows audio packets and a non-zero audio level;
    /// returns the stats.
    async fn wait_for_audio(&self, gw: &Gateway) -> Value {
        let deadline = Instant::now() + T;
        loop {
            let s = self.eval("return window.whepStats || null").await;
            let a = &s["audio"];
            if a["packetsReceived"].as_u64().unwrap_or(0) > 50
                && a["audioLevel"].as_f64().unwrap_or(0.0) > 0.0
            {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "browser stats {s}; status {:?}\n{}",
                self.text("#status").await,
                gw.logs()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Ends Chromium with its session; then chromedriver.
        let url = format!("{}/session/{}", self.base, self.session);
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            if let Ok(rt) = rt {
                rt.block_on(async {
                    let _ = tokio::time::timeout(
                        Duration::from_secs(5),
                        reqwest::Client::new().delete(url).send(),
                    )
                    .await;
                });
            }
        })
        .join();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

#[tokio::test]
async fn player_page_plays_a_pcmu_call_in_chromium() {
    let gw = Gateway::start(&[]).await;
    let mut sipp = Sipp::uas("uas_pcmu_stream.xml", "udp", false);
    let (status, call) = gw
        .post_json("/call/startup", startup_body("web1", sipp.port, "udp"))
        .await;
    assert_eq!(status, 200, "{call}");
    gw.wait_status("web1", &["ESTABLISHED"], T).await;

    let browser = Browser::start().await;
    browser
        .goto(&format!("{}/player.html?stream=web1_stream", gw.rest))
        .await;
    let stats = browser.wait_for_audio(&gw).await;
    eprintln!("player.html getStats: {stats}");
    assert_eq!(stats["audio"]["codec"], "PCMU/8000", "{stats}");
    assert_eq!(stats["state"], "connected");
    // The page offers audio and video; the call has no video: Chromium took the answer's
    // video section as inactive (in the BUNDLE group, as aiortc needs it).
    let pc = browser
        .eval(
            "const pc = window.sipstreamPlayer.pc; return {answer: pc.remoteDescription.sdp, \
             transceivers: pc.getTransceivers().map(t => [t.receiver.track.kind, t.currentDirection])}",
        )
        .await;
    common::assert_av_answer_for_audio_only(pc["answer"].as_str().unwrap_or_default());
    assert_eq!(
        pc["transceivers"],
        json!([["audio", "recvonly"], ["video", "inactive"]]),
        "{pc}"
    );
    // The stats box shows the same numbers to a person.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let shown = browser.text("#stats").await;
    assert!(shown.contains("PCMU/8000"), "{shown}");
    assert!(browser
        .text("#status")
        .await
        .contains("Playing web1_stream"));
    let shot = browser.screenshot("player.png").await;
    assert!(std::fs::metadata(&shot).unwrap().len() > 10_000);
    // The player is a reader of the stream.
    let s = gw.stream("web1_stream").await.unwrap();
    assert!(s["readers"].to_string().contains("webrtc"), "{s}");

    // Leaving the page ends its session (pagehide -> DELETE); the index lists the stream
    // with a link to play it.
    browser.goto(&format!("{}/index.html", gw.rest)).await;
    let deadline = Instant::now() + T;
    loop {
        let streams = browser.text("#streams").await;
        if streams.contains("Play web1_stream") && gw.logs().contains("deleted by the player") {
            break;
        }
        assert!(Instant::now() < deadline, "index shows {streams:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    browser.screenshot("index.png").await;
    browser
        .goto(&format!("{}/player.html?stream=web1_stream", gw.rest))
        .await;
    browser.wait_for_audio(&gw).await;

    // Stop: the page DELETEs its session and the reader goes away.
    browser.click("#stop").await;
    let deadline = Instant::now() + T;
    while gw.stream("web1_stream").await.unwrap()["readers"]
        .to_string()
        .contains("webrtc")
    {
        assert!(Instant::now() < deadline, "{}", gw.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        gw.logs().matches("deleted by the player").count(),
        2,
        "{}",
        gw.logs()
    );

    let (status, _) = gw
        .post_json("/call/terminate", json!({"callId": "web1"}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(sipp.wait(T), Some(0), "{}", sipp.messages());
}

#[tokio::test]
async fn call_page_places_a_call_plays_it_and_hangs_up() {
    let gw = Gateway::start(&[]).await;
    let mut sipp = Sipp::uas("uas_pcmu_stream.xml", "udp", false);
    let browser = Browser::start().await;
    browser.goto(&format!("{}/call.html", gw.rest)).await;

    browser.fill("#sipLogin", "alice").await;
    browser.fill("#sipAuthenticationName", "alice").await;
    browser.fill("#sipPassword", "s3cret-Pa55").await;
    browser.fill("#sipDomain", "127.0.0.1").await;
    browser.fill("#sipPort", &sipp.port.to_string()).await;
    browser.fill("#callee", "10005").await;
    browser.fill("#toStream", "web2_stream").await;
    browser.click("#start").await;

    // The status line follows the call; the embedded player starts on ESTABLISHED.
    let deadline = Instant::now() + T;
    loop {
        let status = browser.text("#call-status").await;
        if status.contains("ESTABLISHED") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "call status {status:?}\n{}",
            gw.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let stats = browser.wait_for_audio(&gw).await;
    eprintln!("call.html getStats: {stats}");
    assert_eq!(stats["audio"]["codec"], "PCMU/8000", "{stats}");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    browser.screenshot("call.png").await;
    let calls = gw.post("/call/find_all", "").await.1;
    let call_id = calls[0]["callId"].as_str().unwrap().to_string();
    assert_eq!(calls[0]["toStream"], "web2_stream");

    browser.click("#hangup").await;
    gw.wait_status(&call_id, &["FINISH"], T).await;
    let deadline = Instant::now() + T;
    loop {
        let status = browser.text("#call-status").await;
        if status.contains("FINISH") {
            break;
        }
        assert!(Instant::now() < deadline, "call status {status:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // sipp's scenario ends on the BYE it receives (and answers 200).
    assert_eq!(sipp.wait(T), Some(0), "{}", sipp.messages());
    assert!(sipp.messages().contains("BYE sip:"), "{}", sipp.messages());
    assert!(!gw.logs().contains("s3cret-Pa55"), "password in the logs");
}

/// A call recorded with `record: true` plays in Chromium's `<video>` from
/// `GET /recordings/{file}`: the duration is the call's, seeking (range requests) works and
/// playback advances from the seek point.
#[tokio::test]
async fn a_recording_plays_and_seeks_in_chromium() {
    let gw = Gateway::start(&[]).await;
    let mut sipp = Sipp::uas("uas_pcmu_stream.xml", "udp", false);
    let mut body = startup_body("recweb", sipp.port, "udp");
    body["record"] = json!(true);
    let (status, v) = gw.post_json("/call/startup", body).await;
    assert_eq!(status, 200, "{v}");
    gw.wait_status("recweb", &["ESTABLISHED"], T).await;
    // 8 s: the 2 % budget then covers the callee's RTP start-up lag on a loaded machine.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let (status, _) = gw
        .post_json("/call/terminate", json!({"callId": "recweb"}))
        .await;
    assert_eq!(status, 200);
    let call = gw.wait_status("recweb", &["FINISH"], T).await;
    assert_eq!(sipp.wait(T), Some(0));
    let call_s = common::call_seconds(&call);
    let deadline = Instant::now() + T;
    let file = loop {
        let (_, all) = gw.post("/recorder/find_all", "").await;
        let done = all.as_array().and_then(|a| {
            a.iter()
                .find(|r| r["callId"] == "recweb" && r["state"] == "done")
                .and_then(|r| r["fileName"].as_str().map(str::to_owned))
        });
        if let Some(f) = done {
            break f;
        }
        assert!(Instant::now() < deadline, "no finished recording: {all}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    let browser = Browser::start().await;
    browser.goto(&format!("{}/index.html", gw.rest)).await;
    let can = browser
        .eval(&format!(
            r#"const v = document.createElement('video');
            v.muted = true; v.controls = true;
            window.rec = {{}};
            v.addEventListener('loadedmetadata', () => {{
                window.rec.duration = v.duration; v.currentTime = 2.0; }});
            v.addEventListener('seeked', () => {{
                window.rec.seeked = v.currentTime;
                v.play().catch(e => {{ window.rec.error = String(e); }}); }});
            v.addEventListener('timeupdate', () => {{ window.rec.time = v.currentTime; }});
            v.addEventListener('error', () => {{
                window.rec.error = 'media error ' + (v.error && v.error.code); }});
            v.src = '/recordings/{file}';
            document.body.appendChild(v);
            return v.canPlayType('audio/mp4; codecs="opus"');"#
        ))
        .await;
    assert_eq!(can, "probably", "Chromium cannot play Opus in MP4");
    let deadline = Instant::now() + T;
    let rec = loop {
        let rec = browser.eval("return window.rec;").await;
        assert!(rec["error"].is_null(), "{rec}");
        let seeked = rec["seeked"].as_f64();
        if let (Some(s), Some(t)) = (seeked, rec["time"].as_f64()) {
            if t > s + 1.0 {
                break rec;
            }
        }
        assert!(Instant::now() < deadline, "not playing: {rec}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!("<video> of the recording: {rec}, call {call_s} s");
    let duration = rec["duration"].as_f64().unwrap();
    assert!(
        (duration - call_s).abs() <= call_s * 0.02,
        "the browser shows {duration} s for a {call_s} s call"
    );
    assert!(
        (rec["seeked"].as_f64().unwrap() - 2.0).abs() < 0.05,
        "{rec}"
    );
}

/// The API page (`/docs`): Swagger UI served from the binary renders every operation of the
/// OpenAPI document in Chromium, and loads nothing from anywhere but the gateway.
#[tokio::test]
async fn the_api_page_lists_every_method_offline_in_chromium() {
    let gw = Gateway::start(&[]).await;
    let doc: Value = reqwest::get(format!("{}/openapi.json", gw.rest))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let operations: usize = doc["paths"]
        .as_object()
        .unwrap()
        .values()
        .map(|p| p.as_object().map_or(0, |m| m.len()))
        .sum();
    assert!(operations > 40, "{operations}");
    let browser = Browser::start().await;
    browser.goto(&format!("{}/docs", gw.rest)).await;
    let deadline = Instant::now() + T;
    let shown = loop {
        let n = browser
            .eval("return document.querySelectorAll('.opblock').length")
            .await
            .as_u64()
            .unwrap_or(0) as usize;
        if n >= operations {
            break n;
        }
        assert!(
            Instant::now() < deadline,
            "{n} of {operations} operations shown"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(shown, operations);
    let paths = browser
        .eval(
            "return Array.from(document.querySelectorAll('.opblock-summary-path'))
                .map(e => e.getAttribute('data-path'))",
        )
        .await;
    let paths: Vec<&str> = paths
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for p in [
        "/rest-api/call/startup",
        "/rest-api/media/send_to_uri",
        "/metrics",
    ] {
        assert!(paths.contains(&p), "{p} not on the page: {paths:?}");
    }
    let loaded = browser
        .eval("return performance.getEntriesByType('resource').map(e => e.name)")
        .await;
    let loaded: Vec<&str> = loaded
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        loaded.iter().any(|u| u.ends_with("/docs/openapi.json")),
        "{loaded:?}"
    );
    assert!(
        loaded.iter().all(|u| u.starts_with(&gw.rest)),
        "everything from the gateway: {loaded:?}"
    );
    browser.screenshot("docs.png").await;
}

/// A call's stream played over Low-Latency HLS by hls.js (vendored, served by the gateway) in
/// Chromium: the video element plays on, audio is decoded, hls.js uses the parts, and the
/// latency it measures is that of LL-HLS (a few seconds at most), not of plain HLS.
#[tokio::test]
async fn hls_page_plays_a_call_with_hls_js_in_chromium() {
    let gw = Gateway::start(&[]).await;
    let mut sipp = Sipp::uas("uas_pcmu_stream.xml", "udp", false);
    let (status, call) = gw
        .post_json("/call/startup", startup_body("web_hls", sipp.port, "udp"))
        .await;
    assert_eq!(status, 200, "{call}");
    gw.wait_status("web_hls", &["ESTABLISHED"], T).await;

    let browser = Browser::start().await;
    browser
        .goto(&format!("{}/hls.html?stream=web_hls_stream", gw.rest))
        .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let state = loop {
        let s = browser.eval("return window.sipstreamHls").await;
        if s["playing"] == true
            && s["currentTime"].as_f64().unwrap_or(0.0) > 3.0
            && s["audioBytes"].as_u64().unwrap_or(0) > 0
        {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "hls.js did not play: {s}\n{}",
            gw.logs()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    eprintln!("hls.html state: {state}");
    assert_eq!(state["lowLatency"], true, "{state}");
    let latency = state["latency"].as_f64().unwrap_or(f64::MAX);
    assert!(latency < 4.0, "latency {latency} s: {state}");
    assert!(browser
        .text("#status")
        .await
        .contains("Playing web_hls_stream"));
    let loaded = browser
        .eval("return performance.getEntriesByType('resource').map(e => e.name)")
        .await;
    let loaded = loaded.to_string();
    assert!(loaded.contains("/hls/web_hls_stream/part"), "{loaded}");
    assert!(loaded.contains("_HLS_msn="), "{loaded}");
    let shot = browser.screenshot("hls.png").await;
    assert!(std::fs::metadata(&shot).unwrap().len() > 10_000);

    let (status, _) = gw
        .post_json("/call/terminate", json!({"callId": "web_hls"}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(sipp.wait(T), Some(0), "{}", sipp.messages());
}

/// Prometheus (Debian's) killed with the test.
struct Prometheus(Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The Grafana dashboard (`deploy/grafana/sipstream-dashboard.json`) against a real
/// Prometheus scraping the gateway during calls: every panel's query is valid PromQL and the
/// main ones return series; Prometheus's graph page in Chromium shows them (the screenshot in
/// the README; Grafana itself is not installable on our machines).
#[tokio::test]
async fn the_dashboard_queries_run_on_prometheus_and_graph_in_chromium() {
    require("prometheus");
    let gw = Gateway::start(&[]).await;
    let dir = tempdir();
    let port = free_tcp_port();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: sipstream\n    \
             static_configs:\n      - targets: ['{}']\n",
            gw.rest.trim_start_matches("http://")
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
    let _prometheus = Prometheus(
        Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start prometheus"),
    );
    let prom = format!("http://127.0.0.1:{port}");

    // Two calls with media, and an HLS reader on one of them.
    let mut sipps = Vec::new();
    for id in ["dash1", "dash2"] {
        let sipp = Sipp::uas("uas_pcmu_stream.xml", "udp", false);
        let (status, call) = gw
            .post_json("/call/startup", startup_body(id, sipp.port, "udp"))
            .await;
        assert_eq!(status, 200, "{call}");
        sipps.push(sipp);
    }
    gw.wait_status("dash1", &["ESTABLISHED"], T).await;
    gw.wait_status("dash2", &["ESTABLISHED"], T).await;
    let r = reqwest::get(format!("{}/hls/dash1_stream/index.m3u8", gw.rest))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let http = reqwest::Client::new();
    let query = |expr: String| {
        let http = http.clone();
        let prom = prom.clone();
        async move {
            let q: String = form_urlencoded::byte_serialize(expr.as_bytes()).collect();
            let v: Value = http
                .get(format!("{prom}/api/v1/query?query={q}"))
                .send()
                .await
                .expect("prometheus query")
                .json()
                .await
                .unwrap();
            v
        }
    };
    // Enough scrapes for every rate window to have two samples.
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let v = query("count_over_time(up{job=\"sipstream\"}[1m])".into()).await;
        let n: f64 = v["data"]["result"][0]["value"][1]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0.0);
        if n >= 6.0 {
            break;
        }
        assert!(Instant::now() < deadline, "prometheus does not scrape: {v}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let dashboard: Value =
        serde_json::from_str(include_str!("../deploy/grafana/sipstream-dashboard.json")).unwrap();
    let mut with_data = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap().to_string();
            let v = query(expr.clone()).await;
            assert_eq!(v["status"], "success", "{expr}: {v}");
            let series = v["data"]["result"].as_array().map_or(0, Vec::len);
            eprintln!(
                "{:<40} {series} series  {expr}",
                panel["title"].as_str().unwrap()
            );
            if series > 0 {
                with_data.push(expr);
            }
        }
    }
    for needle in [
        "sipstream_calls)",
        "sipstream_calls_started_total",
        "sipstream_rtp_packets_received_total",
        "sipstream_readers)",
        "sipstream_process_cpu_seconds_total",
        "sipstream_process_resident_memory_bytes",
    ] {
        assert!(
            with_data.iter().any(|e| e.contains(needle)),
            "no data for {needle}: {with_data:?}"
        );
    }

    // Prometheus's own graph page, four of the dashboard's panels.
    let panels = [
        "sum by (status) (sipstream_calls)",
        "sum by (kind) (rate(sipstream_rtp_packets_received_total[1m]))",
        "sum by (kind) (sipstream_readers)",
        "sipstream_process_resident_memory_bytes / 1048576",
    ];
    // Debian ships Prometheus's classic UI (rickshaw, SVG), not the React one.
    let mut url = format!("{prom}/classic/graph?");
    for (i, p) in panels.iter().enumerate() {
        let e: String = form_urlencoded::byte_serialize(p.as_bytes()).collect();
        url.push_str(&format!(
            "g{i}.expr={e}&g{i}.tab=0&g{i}.range_input=20s&g{i}.stacked=0&"
        ));
    }
    let browser = Browser::start().await;
    // Tall enough for the four graphs on one screen.
    browser
        .cmd(
            reqwest::Method::POST,
            "/window/rect",
            Some(json!({"width": 1280, "height": 2300})),
        )
        .await;
    browser.goto(&url).await;
    let deadline = Instant::now() + T;
    loop {
        let n = browser
            .eval("return document.querySelectorAll('.graph svg path.path').length")
            .await
            .as_u64()
            .unwrap_or(0);
        if n >= panels.len() as u64 {
            break;
        }
        assert!(Instant::now() < deadline, "{n} graph lines drawn");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // The page focuses the last query box, which scrolls it down.
    browser
        .eval("document.activeElement.blur(); window.scrollTo(0, 0); return true")
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let shot = browser.screenshot("prometheus-dashboard.png").await;
    assert!(std::fs::metadata(&shot).unwrap().len() > 20_000);

    for id in ["dash1", "dash2"] {
        let (status, _) = gw.post_json("/call/terminate", json!({"callId": id})).await;
        assert_eq!(status, 200);
    }
    for mut s in sipps {
        assert_eq!(s.wait(T), Some(0), "{}", s.messages());
    }
}
