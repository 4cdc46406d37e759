//! Test harness: runs the real gateway binary and real peers (sipp, kamailio) on 127.0.0.1.
//! Every test takes its own ports (free ports found by binding port 0, RTP ranges from a
//! counter) so tests run in parallel.
#![allow(dead_code)]

use std::io::Write;
use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

pub mod impair;
pub mod torture;

pub fn free_udp_port() -> u16 {
    // A port free for both UDP and TCP, as SIP uses both.
    loop {
        let udp = UdpSocket::bind("127.0.0.1:0").expect("bind udp");
        let port = udp.local_addr().unwrap().port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

pub fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A block of 40 even-aligned ports per call of this function, distinct per process.
pub fn port_block() -> (u16, u16) {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let base = 20000 + (std::process::id() % 100) as u16 * 400 + (n % 10) * 40;
    (base, base + 39)
}

/// Seconds from answer to hang-up of a call object (`establishedAt` → `endedAt`, ms).
pub fn call_seconds(call: &Value) -> f64 {
    let at = |k: &str| {
        call[k]
            .as_u64()
            .unwrap_or_else(|| panic!("call without {k}: {call}"))
    };
    at("endedAt").saturating_sub(at("establishedAt")) as f64 / 1000.0
}

pub fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

pub struct Gateway {
    child: Child,
    pub rest: String,
    pub sip_port: u16,
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Gateway {
    pub async fn start(extra: &[(&str, String)]) -> Gateway {
        Self::start_with_env(extra, &[]).await
    }

    /// As [`Gateway::start`], with environment variables for the process (e.g.
    /// `SSL_CERT_FILE` for a test CA).
    pub async fn start_with_env(extra: &[(&str, String)], env: &[(&str, String)]) -> Gateway {
        let dir = tempdir();
        let rest_port = free_tcp_port();
        // Both are free when picked but not held: they must differ (SIP listens on TCP too).
        let sip_port = loop {
            let p = free_udp_port();
            if p != rest_port {
                break p;
            }
        };
        let (rtp_min, rtp_max) = port_block();
        let log = dir.path().join("gateway.log");
        let mut args: Vec<String> = vec![
            "--config".into(),
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/properties/sipstream.properties"
            )
            .into(),
        ];
        let mut sets: Vec<(String, String)> = vec![
            ("rest_port".into(), rest_port.to_string()),
            ("sip_address".into(), "127.0.0.1".into()),
            ("sip_port".into(), sip_port.to_string()),
            ("rtp_address".into(), "127.0.0.1".into()),
            ("rtp_port_min".into(), rtp_min.to_string()),
            ("rtp_port_max".into(), rtp_max.to_string()),
            (
                "record_dir".into(),
                dir.path().join("records").display().to_string(),
            ),
            ("log_level".into(), "sipstream=debug,info".into()),
        ];
        for (k, v) in extra {
            sets.retain(|(sk, _)| sk != k);
            sets.push((k.to_string(), v.clone()));
        }
        for (k, v) in sets {
            args.push("--set".into());
            args.push(format!("{k}={v}"));
        }
        let logfile = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_sipstream"))
            .args(&args)
            .envs(env.iter().map(|(k, v)| (k.to_string(), v.clone())))
            .current_dir(dir.path())
            .stdout(logfile.try_clone().unwrap())
            .stderr(logfile)
            .spawn()
            .expect("start sipstream");
        let gw = Gateway {
            child,
            rest: format!("http://127.0.0.1:{rest_port}"),
            sip_port,
            log,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = reqwest::get(format!("{}/health", gw.rest)).await {
                if r.status().is_success() {
                    break;
                }
            }
            assert!(
                Instant::now() < deadline,
                "gateway did not start:\n{}",
                gw.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        gw
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn dir(&self) -> &Path {
        self._dir.path()
    }

    /// POSTs JSON (or raw text) to `/rest-api{path}`; returns status and parsed body.
    pub async fn post(&self, path: &str, body: &str) -> (u16, Value) {
        let resp = reqwest::Client::new()
            .post(format!("{}/rest-api{}", self.rest, path))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .expect("REST request");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        let json = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, json)
    }

    pub async fn post_json(&self, path: &str, body: Value) -> (u16, Value) {
        self.post(path, &body.to_string()).await
    }

    pub async fn call(&self, call_id: &str) -> Value {
        let (status, v) = self
            .post_json("/call/find", serde_json::json!({"callId": call_id}))
            .await;
        assert_eq!(status, 200, "find {call_id}: {v}");
        v[0].clone()
    }

    /// Polls `/call/find` until the call's status is one of `want`.
    pub async fn wait_status(&self, call_id: &str, want: &[&str], timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let c = self.call(call_id).await;
            if want.iter().any(|w| c["status"] == *w) {
                return c;
            }
            assert!(
                Instant::now() < deadline,
                "call {call_id} never reached {want:?}; last: {c}\n--- gateway log ---\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn stream(&self, name: &str) -> Option<Value> {
        let (status, v) = self
            .post_json("/stream/find", serde_json::json!({"name": name}))
            .await;
        (status == 200).then(|| v[0].clone())
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, at once: no cleanup of any kind (a crash).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits for exit; returns whether it exited on its own in time.
    pub fn terminate(&mut self, timeout: Duration) -> bool {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- gateway log ---\n{}", self.logs());
        }
    }
}

pub fn have(cmd: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {cmd}"))
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Fails the test (never skips) when a peer is missing: CI installs them all.
pub fn require(cmd: &str) {
    assert!(
        have(cmd),
        "{cmd} is not installed: run scripts/deps.sh test"
    );
}

/// A μ-law file with a 440 Hz tone (for sipp's rtp_stream).
pub fn tone_file(dir: &Path, seconds: u32, alaw: bool) -> PathBuf {
    let path = dir.join(if alaw { "tone.alaw" } else { "tone.ulaw" });
    let mut f = std::fs::File::create(&path).unwrap();
    let n = 8000 * seconds;
    let mut buf = Vec::with_capacity(n as usize);
    for i in 0..n {
        let s = ((i as f64) * 2.0 * std::f64::consts::PI * 440.0 / 8000.0).sin() * 8000.0;
        let s = s as i16;
        buf.push(if alaw {
            sipstream::media::g711::linear_to_alaw(s)
        } else {
            sipstream::media::g711::linear_to_ulaw(s)
        });
    }
    f.write_all(&buf).unwrap();
    path
}

pub struct Sipp {
    child: Child,
    pub port: u16,
    pub media_port: u16,
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Sipp {
    /// Starts sipp as UAS with `scenario` (a file in tests/sipp/, `@AUDIO@` replaced by a
    /// tone file), handling one call.
    pub fn uas(scenario: &str, transport: &str, alaw: bool) -> Sipp {
        Self::uas_with(scenario, transport, alaw, &[])
    }

    /// As [`Sipp::uas`], with more `@NAME@` placeholders of the scenario replaced.
    pub fn uas_with(scenario: &str, transport: &str, alaw: bool, vars: &[(&str, String)]) -> Sipp {
        Self::launch(scenario, transport, alaw, vars, None, 1)
    }

    /// As [`Sipp::uas`], handling `calls` calls (at once if they come at once).
    pub fn uas_many(scenario: &str, calls: u32) -> Sipp {
        Self::launch(scenario, "udp", false, &[], None, calls)
    }

    /// Starts sipp as UAC with `scenario`, placing one call to the gateway's SIP port.
    pub fn uac(scenario: &str, gateway_sip_port: u16, vars: &[(&str, String)]) -> Sipp {
        Self::launch(scenario, "udp", false, vars, Some(gateway_sip_port), 1)
    }

    fn launch(
        scenario: &str,
        transport: &str,
        alaw: bool,
        vars: &[(&str, String)],
        remote_port: Option<u16>,
        calls: u32,
    ) -> Sipp {
        require("sipp");
        let dir = tempdir();
        let src = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/sipp")
            .join(scenario);
        let mut text = std::fs::read_to_string(&src).unwrap();
        if text.contains("@AUDIO@") {
            let tone = tone_file(dir.path(), 30, alaw);
            text = text.replace("@AUDIO@", &tone.display().to_string());
        }
        for (name, value) in vars {
            text = text.replace(&format!("@{name}@"), value);
        }
        let sf = dir.path().join(scenario);
        std::fs::write(&sf, text).unwrap();
        let port = free_udp_port();
        // sipp binds the media port and the next two (RTCP, and +2): none may be the SIP
        // port (ports are free when picked, not held, so two picks can coincide).
        let media_port = loop {
            let p = free_udp_port();
            if p.is_multiple_of(2)
                && !(p..=p + 3).contains(&port)
                && UdpSocket::bind(("127.0.0.1", p + 2)).is_ok()
            {
                break p;
            }
        };
        let log = dir.path().join("sipp.log");
        let t = if transport == "tcp" { "t1" } else { "u1" };
        let mut cmd = Command::new("sipp");
        if let Some(p) = remote_port {
            cmd.arg(format!("127.0.0.1:{p}"));
        }
        let child = cmd
            .args(["-sf", sf.to_str().unwrap()])
            .args(["-i", "127.0.0.1", "-p", &port.to_string()])
            .args(["-mi", "127.0.0.1", "-mp", &media_port.to_string()])
            .args([
                "-t",
                t,
                "-m",
                &calls.to_string(),
                "-timeout",
                "60s",
                "-timeout_error",
            ])
            .args(["-trace_err", "-trace_msg", "-nostdin"])
            .current_dir(dir.path())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .expect("start sipp");
        std::thread::sleep(Duration::from_millis(300));
        Sipp {
            child,
            port,
            media_port,
            log,
            _dir: dir,
        }
    }

    /// Waits for sipp to finish its one call; returns its exit code.
    pub fn wait(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// [`Sipp::wait`] without blocking the test's runtime: peers of the same test that run
    /// as tasks on it (RawUas, RawUac) keep sending and answering meanwhile.
    pub async fn wait_async(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }

    /// The messages sipp exchanged (its -trace_msg file).
    pub fn messages(&self) -> String {
        let mut out = String::new();
        if let Ok(entries) = std::fs::read_dir(self._dir.path()) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                if name.ends_with("_messages.log") || name.ends_with("_errors.log") {
                    out += &std::fs::read_to_string(e.path()).unwrap_or_default();
                }
            }
        }
        out
    }
}

impl Drop for Sipp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- sipp messages ---\n{}", self.messages());
        }
    }
}

/// The usual startup body towards a sipp UAS on `port`.
pub fn startup_body(call_id: &str, port: u16, transport: &str) -> Value {
    serde_json::json!({
        "callId": call_id,
        "callee": "10005",
        "sipLogin": "alice",
        "sipAuthenticationName": "alice",
        "sipPassword": "s3cret-Pa55",
        "sipDomain": "127.0.0.1",
        "sipPort": port.to_string(),
        "sipTransport": transport,
        "sipRegisterRequired": "false",
        "hasAudio": "true",
        "hasVideo": "false",
        "toStream": format!("{call_id}_stream"),
    })
}

/// The first value of header `name` (full name; the gateway and sipp write full names) in a
/// SIP message's text, from its header block only.
pub fn sip_header<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    let head = text.split("\r\n\r\n").next().unwrap_or_default();
    head.split("\r\n").skip(1).find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// A call through kamailio (tests/kamailio/kamailio.cfg) as its user alice, registering first.
pub fn kamailio_call(call_id: &str, kamailio_port: u16) -> serde_json::Value {
    serde_json::json!({
        "callId": call_id,
        "callee": "10005",
        "sipLogin": "alice",
        "sipPassword": "s3cret-Pa55",
        "sipDomain": "sipstream.test",
        "sipOutboundProxy": "127.0.0.1",
        "sipPort": kamailio_port,
        "sipRegisterRequired": "true",
        "toStream": format!("{call_id}_stream"),
    })
}

pub struct Kamailio {
    child: Child,
    pub port: u16,
    /// The TLS listener's port ([`Kamailio::start_tls`]), else 0.
    pub tls_port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Kamailio {
    /// Starts kamailio with tests/kamailio/kamailio.cfg, relaying INVITEs to `callee_port`.
    pub fn start(callee_port: u16) -> Kamailio {
        Self::start_cfg("kamailio.cfg", callee_port)
    }

    /// Starts kamailio as the registrar and proxy of softphones (tests/kamailio/phones.cfg).
    pub fn start_phones() -> Kamailio {
        Self::start_cfg("phones.cfg", 0)
    }

    /// As [`Kamailio::start`], its digest challenges with `algorithm=SHA-256` (RFC 8760).
    pub fn start_sha256(callee_port: u16) -> Kamailio {
        Self::start_cfg_with(
            "kamailio.cfg",
            callee_port,
            "modparam(\"auth\", \"algorithm\", \"SHA-256\")",
        )
    }

    /// As [`Kamailio::start`], with a TLS listener too (kamailio's `tls` module, package
    /// kamailio-tls-modules) on [`Kamailio::tls_port`], serving `cert_pem`/`key_pem`.
    /// Kamailio does not check its clients' certificates.
    pub fn start_tls(callee_port: u16, cert_pem: &Path, key_pem: &Path) -> Kamailio {
        require("kamailio");
        let tls_port = free_tcp_port();
        let dir = tempdir();
        let tls_cfg = dir.path().join("tls.cfg");
        std::fs::write(
            &tls_cfg,
            format!(
                "[server:default]\nmethod = TLSv1.2+\nverify_certificate = no\n\
                 require_certificate = no\nprivate_key = {}\ncertificate = {}\n\n\
                 [client:default]\nmethod = TLSv1.2+\nverify_certificate = no\n\
                 require_certificate = no\n",
                key_pem.display(),
                cert_pem.display()
            ),
        )
        .unwrap();
        let mut k = Self::start_in(
            dir,
            "kamailio.cfg",
            callee_port,
            &[
                (
                    "listen=tcp:127.0.0.1:@PORT@\n",
                    format!(
                        "listen=tcp:127.0.0.1:@PORT@\nlisten=tls:127.0.0.1:{tls_port}\nenable_tls=yes\n"
                    ),
                ),
                (
                    "loadmodule \"kex.so\"\n",
                    format!(
                        "loadmodule \"tls.so\"\nmodparam(\"tls\", \"config\", \"{}\")\nloadmodule \"kex.so\"\n",
                        tls_cfg.display()
                    ),
                ),
            ],
        );
        k.tls_port = tls_port;
        k
    }

    fn start_cfg(file: &str, callee_port: u16) -> Kamailio {
        Self::start_cfg_with(file, callee_port, "")
    }

    /// `auth_params`: lines put after the auth module is loaded.
    fn start_cfg_with(file: &str, callee_port: u16, auth_params: &str) -> Kamailio {
        Self::start_in(
            tempdir(),
            file,
            callee_port,
            &[(
                "loadmodule \"auth.so\"\n",
                format!("loadmodule \"auth.so\"\n{auth_params}\n"),
            )],
        )
    }

    /// `edits`: (text, replacement) applied to the config file.
    fn start_in(
        dir: tempfile::TempDir,
        file: &str,
        callee_port: u16,
        edits: &[(&str, String)],
    ) -> Kamailio {
        require("kamailio");
        let port = free_udp_port();
        let mut cfg = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/kamailio")
                .join(file),
        )
        .unwrap();
        for (from, to) in edits {
            assert!(cfg.contains(from), "{file} has no {from:?}");
            cfg = cfg.replace(from, to);
        }
        let cfg = cfg
            .replace("@PORT@", &port.to_string())
            .replace("@CALLEE@", &callee_port.to_string());
        let cfg_path = dir.path().join("kamailio.cfg");
        std::fs::write(&cfg_path, cfg).unwrap();
        let log = dir.path().join("kamailio.log");
        let child = Command::new("kamailio")
            .args([
                "-f",
                cfg_path.to_str().unwrap(),
                "-DD",
                "-E",
                "-Y",
                dir.path().to_str().unwrap(),
            ])
            .args([
                "-m",
                "64",
                "-M",
                "8",
                "-P",
                dir.path().join("k.pid").to_str().unwrap(),
            ])
            .stdout(std::fs::File::create(dir.path().join("kamailio.out")).unwrap())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start kamailio");
        let k = Kamailio {
            child,
            port,
            tls_port: 0,
            log,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !k.log().contains("INFO: <core>") && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        std::thread::sleep(Duration::from_millis(300));
        k
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log contains `needle` (or the timeout); returns the log.
    pub fn wait_log(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.log();
            if log.contains(needle) || Instant::now() >= deadline {
                return log;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Kamailio {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // kamailio's children follow their parent's process group; make sure they are gone.
        let pidfile = self._dir.path().join("k.pid");
        if let Ok(pid) = std::fs::read_to_string(pidfile) {
            let _ = Command::new("kill")
                .arg("-9")
                .arg(pid.trim())
                .stderr(Stdio::null())
                .status();
        }
        let _ = Command::new("pkill")
            .args(["-9", "-f", self._dir.path().to_str().unwrap()])
            .status();
    }
}

/// nginx with libnginx-mod-rtmp on 127.0.0.1 (tests/nginx/nginx.conf): an RTMP port with
/// application `live` that records every publish to `rec/`, and an HTTP port with `/stat`.
pub struct Nginx {
    child: Option<Child>,
    pub rtmp_port: u16,
    pub http_port: u16,
    dir: tempfile::TempDir,
}

impl Nginx {
    pub fn start() -> Nginx {
        require("nginx");
        assert!(
            Path::new("/usr/lib/nginx/modules/ngx_rtmp_module.so").exists(),
            "libnginx-mod-rtmp is not installed: run scripts/deps.sh test"
        );
        let dir = tempdir();
        let mut n = Nginx {
            child: None,
            rtmp_port: free_tcp_port(),
            http_port: free_tcp_port(),
            dir,
        };
        n.launch();
        n
    }

    fn launch(&mut self) {
        use std::os::unix::fs::PermissionsExt;
        let d = self.dir.path();
        for sub in ["rec", "tmp"] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        // Workers run as nobody: they must reach and write the record folder.
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(d.join("rec"), std::fs::Permissions::from_mode(0o777)).unwrap();
        let conf = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/nginx/nginx.conf"
        ))
        .unwrap()
        .replace("@DIR@", d.to_str().unwrap())
        .replace("@RTMP_PORT@", &self.rtmp_port.to_string())
        .replace("@HTTP_PORT@", &self.http_port.to_string());
        let conf_path = d.join("nginx.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let child = Command::new("nginx")
            .args(["-c", conf_path.to_str().unwrap(), "-p", d.to_str().unwrap()])
            .args(["-e", d.join("error.log").to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.join("nginx.stderr")).unwrap())
            .spawn()
            .expect("start nginx");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.rtmp_port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nginx did not start:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Fast shutdown (SIGTERM to the master, which stops its workers); waits for exit.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::net::TcpStream::connect(("127.0.0.1", self.rtmp_port)).is_ok()
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts again on the same ports and folder.
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }

    pub fn url(&self, app_and_name: &str) -> String {
        format!("rtmp://127.0.0.1:{}/{}", self.rtmp_port, app_and_name)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
            + &std::fs::read_to_string(self.dir.path().join("nginx.stderr")).unwrap_or_default()
    }

    /// The `/stat` XML page.
    pub async fn stat(&self) -> String {
        reqwest::get(format!("http://127.0.0.1:{}/stat", self.http_port))
            .await
            .expect("nginx /stat")
            .text()
            .await
            .unwrap_or_default()
    }

    /// Whether `/stat` lists a stream called `name` being published.
    pub async fn publishing(&self, name: &str) -> bool {
        let stat = self.stat().await;
        stat.split("<stream>")
            .skip(1)
            .any(|s| s.contains(&format!("<name>{name}</name>")) && s.contains("<publishing/>"))
    }

    /// The FLV files nginx recorded, oldest first.
    pub fn recordings(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(self.dir.path().join("rec"))
            .map(|rd| rd.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        v.retain(|p| p.extension().is_some_and(|e| e == "flv"));
        v.sort();
        v
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- nginx log ---\n{}", self.log());
        }
        self.stop();
    }
}

/// ffprobe's `-show_streams -show_format` JSON for `input` (a file or an rtmp:// URL), or the
/// error text. Gives up after `timeout` (ffprobe on a live URL waits for data).
pub fn ffprobe(input: &str, timeout: Duration) -> Result<Value, String> {
    require("ffprobe");
    let out = Command::new("timeout")
        .arg(format!("{}", timeout.as_secs().max(1)))
        .args(["ffprobe", "-v", "error", "-show_streams", "-show_format"])
        .args(["-of", "json", input])
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "ffprobe {input}: {:?}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
}

/// Decodes a media file completely (`ffmpeg -v error -xerror -i FILE -f null -`); returns
/// The duration ffprobe reads from a media file's container, in seconds.
pub fn media_seconds(file: &Path, timeout: Duration) -> Result<f64, String> {
    let probe = ffprobe(file.to_str().unwrap_or_default(), timeout)?;
    probe["format"]["duration"]
        .as_str()
        .and_then(|d| d.parse().ok())
        .ok_or_else(|| format!("no duration: {probe}"))
}

/// ffmpeg's complaints, empty when the file decodes cleanly.
pub fn ffmpeg_decode_errors(file: &Path) -> Result<String, String> {
    require("ffmpeg");
    let out = Command::new("ffmpeg")
        .args(["-nostdin", "-v", "error", "-xerror", "-i"])
        .arg(file)
        .args(["-f", "null", "-"])
        .output()
        .map_err(|e| e.to_string())?;
    let errors = String::from_utf8_lossy(&out.stderr).to_string();
    if out.status.success() {
        Ok(errors)
    } else {
        Err(format!("ffmpeg exited {:?}: {errors}", out.status))
    }
}

/// An HTTP sink for webhooks: returns its URL and the JSON bodies POSTed to it.
pub async fn webhook() -> (String, tokio::sync::mpsc::UnboundedReceiver<Value>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let hook = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", hook.local_addr().unwrap());
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Value>();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = hook.accept().await else {
                return;
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut data = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    let Ok(n) = s.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    data.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&data).to_string();
                    let Some((head, body)) = text.split_once("\r\n\r\n") else {
                        continue;
                    };
                    let len: usize = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    if body.len() < len {
                        continue;
                    }
                    if let Ok(v) = serde_json::from_str(&body[..len]) {
                        let _ = tx.send(v);
                    }
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                        .await;
                    data.clear();
                }
            });
        }
    });
    (url, rx)
}

/// Waits for the first event of `kind` on a webhook channel.
pub async fn wait_event(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<Value>,
    kind: &str,
    timeout: Duration,
) -> Value {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(ev)) if ev["type"] == kind => return ev,
            Ok(Some(_)) => {}
            _ => panic!("no {kind} event within {timeout:?}"),
        }
    }
}

/// A minimal SIP UAS with real RTP on 127.0.0.1, for tests that must hear what the gateway
/// sends: it answers one INVITE with `codec` (PCMU or PCMA), then streams a sine of `tone_hz`
/// every 20 ms to the offered port and keeps every RTP payload it receives. It answers BYE,
/// and can hang up itself ([`RawUas::hang_up`]).
/// RTP payloads a peer received, with their payload types.
/// (Arrival times too, for tests that time what the gateway sends.)
type Heard = std::sync::Arc<std::sync::Mutex<Vec<(u8, Vec<u8>, Instant)>>>;

/// One RTP packet a test peer received.
#[derive(Debug, Clone)]
pub struct RtpSeen {
    pub pt: u8,
    pub marker: bool,
    pub seq: u16,
    pub timestamp: u32,
    pub ssrc: u32,
    pub payload: Vec<u8>,
}

/// The video side of a [`RawUas`]: an RTP/RTCP socket pair, what arrived on each, and where
/// the gateway's video is (from its offer).
struct RawVideo {
    rtp: std::sync::Arc<tokio::net::UdpSocket>,
    rtcp: std::sync::Arc<tokio::net::UdpSocket>,
    received: std::sync::Arc<std::sync::Mutex<Vec<RtpSeen>>>,
    rtcp_received: std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
    remote: std::sync::Arc<std::sync::Mutex<Option<std::net::SocketAddr>>>,
}

impl RawVideo {
    async fn bind() -> RawVideo {
        use std::sync::{Arc, Mutex};
        // An even port and the next one (RTCP), both free.
        let (rtp, rtcp) = loop {
            let a = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let p = a.local_addr().unwrap().port();
            if p % 2 != 0 || p == u16::MAX {
                continue;
            }
            if let Ok(b) = tokio::net::UdpSocket::bind(("127.0.0.1", p + 1)).await {
                break (Arc::new(a), Arc::new(b));
            }
        };
        let v = RawVideo {
            rtp,
            rtcp,
            received: Arc::new(Mutex::new(Vec::new())),
            rtcp_received: Arc::new(Mutex::new(Vec::new())),
            remote: Arc::new(Mutex::new(None)),
        };
        let (sock, seen) = (v.rtp.clone(), v.received.clone());
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            while let Ok((n, _)) = sock.recv_from(&mut buf).await {
                if n > 12 {
                    seen.lock().unwrap().push(RtpSeen {
                        pt: buf[1] & 0x7f,
                        marker: buf[1] & 0x80 != 0,
                        seq: u16::from_be_bytes([buf[2], buf[3]]),
                        timestamp: u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]),
                        ssrc: u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]),
                        payload: buf[12..n].to_vec(),
                    });
                }
            }
        });
        let (sock, seen) = (v.rtcp.clone(), v.rtcp_received.clone());
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            while let Ok((n, _)) = sock.recv_from(&mut buf).await {
                seen.lock().unwrap().push(buf[..n].to_vec());
            }
        });
        v
    }

    /// Sends "video" every 40 ms: frames of three packets (the last one marked), 3600 ticks
    /// of the 90 kHz clock apart, each payload naming its frame and packet.
    fn stream(&self, pt: u8, ssrc: u32, dest: std::net::SocketAddr) -> tokio::task::JoinHandle<()> {
        let rtp = self.rtp.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(40));
            let (mut seq, mut ts) = (100u16, 9000u32);
            for frame in 0u32.. {
                tick.tick().await;
                for i in 0..3u8 {
                    let mut p = vec![0x80, pt | if i == 2 { 0x80 } else { 0 }];
                    p.extend_from_slice(&seq.to_be_bytes());
                    p.extend_from_slice(&ts.to_be_bytes());
                    p.extend_from_slice(&ssrc.to_be_bytes());
                    p.push(0x41);
                    p.extend_from_slice(&frame.to_be_bytes());
                    p.push(i);
                    let _ = rtp.send_to(&p, dest).await;
                    seq = seq.wrapping_add(1);
                }
                ts = ts.wrapping_add(3600);
            }
        })
    }
}

pub struct RawUas {
    pub port: u16,
    pub rtp_port: u16,
    video: Option<RawVideo>,
    received: Heard,
    requests: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    invites: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    byes: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    hangup: tokio::sync::mpsc::UnboundedSender<()>,
    dtmf: tokio::sync::mpsc::UnboundedSender<u8>,
}

impl RawUas {
    pub async fn start(codec: &'static str, tone_hz: f64) -> RawUas {
        Self::start_av(codec, tone_hz, false).await
    }

    /// As [`RawUas::start`]; with `video`, an offer's H.264 line is answered too, and the
    /// peer sends its own "video" ([`RawUas::video_seen`] is what it gets back).
    pub async fn start_av(codec: &'static str, tone_hz: f64, video: bool) -> RawUas {
        use std::sync::atomic::AtomicUsize;
        use std::sync::{Arc, Mutex};
        let sip = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let rtp = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let port = sip.local_addr().unwrap().port();
        let rtp_port = rtp.local_addr().unwrap().port();
        let received = Arc::new(Mutex::new(Vec::new()));
        let invites = Arc::new(AtomicUsize::new(0));
        let byes = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let reqs = requests.clone();
        let (hangup, mut hangup_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        let (dtmf, dtmf_rx) = tokio::sync::mpsc::unbounded_channel::<u8>();
        let mut dtmf_rx = Some(dtmf_rx);
        let pt: u8 = match codec {
            "PCMA" => 8,
            "opus" => 111,
            _ => 0,
        };
        let rtpmap = if codec == "opus" {
            "opus/48000/2".to_string()
        } else {
            format!("{codec}/8000")
        };
        // Receiver: every RTP payload, by payload type.
        {
            let rtp = rtp.clone();
            let received = received.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 2048];
                while let Ok((n, _)) = rtp.recv_from(&mut buf).await {
                    if n > 12 {
                        received.lock().unwrap().push((
                            buf[1] & 0x7f,
                            buf[12..n].to_vec(),
                            Instant::now(),
                        ));
                    }
                }
            });
        }
        let video = if video {
            Some(RawVideo::bind().await)
        } else {
            None
        };
        let video_side = video.as_ref().map(|v| {
            (
                v.rtp.local_addr().unwrap().port(),
                v.remote.clone(),
                RawVideo {
                    rtp: v.rtp.clone(),
                    rtcp: v.rtcp.clone(),
                    received: v.received.clone(),
                    rtcp_received: v.rtcp_received.clone(),
                    remote: v.remote.clone(),
                },
            )
        });
        let (inv, bye) = (invites.clone(), byes.clone());
        tokio::spawn(async move {
            let mut video_stream: Option<tokio::task::JoinHandle<()>> = None;
            let mut buf = vec![0u8; 65536];
            let mut dialog: Option<(std::net::SocketAddr, String, String, String, String)> = None;
            let mut streaming: Option<tokio::task::JoinHandle<()>> = None;
            loop {
                tokio::select! {
                    r = sip.recv_from(&mut buf) => {
                        let Ok((n, from)) = r else { return };
                        let msg = String::from_utf8_lossy(&buf[..n]).to_string();
                        if !msg.starts_with("SIP/2.0 ") {
                            reqs.lock().unwrap().push(msg.clone());
                        }
                        let header = |name: &str| {
                            msg.lines()
                                .find(|l| l.to_ascii_lowercase().starts_with(&format!("{}:", name.to_ascii_lowercase())))
                                .map(|l| l.split_once(':').unwrap().1.trim().to_string())
                                .unwrap_or_default()
                        };
                        let reply = |code: &str, to: &str, extra: &str, body: &str| {
                            let vias: String = msg
                                .lines()
                                .filter(|l| l.to_ascii_lowercase().starts_with("via:"))
                                .map(|l| format!("{l}\r\n"))
                                .collect();
                            format!(
                                "SIP/2.0 {code}\r\n{vias}From: {}\r\nTo: {to}\r\nCall-ID: {}\r\nCSeq: {}\r\n{extra}Content-Length: {}\r\n\r\n{body}",
                                header("From"), header("Call-ID"), header("CSeq"), body.len()
                            )
                        };
                        if msg.starts_with("INVITE ") {
                            inv.fetch_add(1, Ordering::SeqCst);
                            let remote_rtp: u16 = msg
                                .lines()
                                .find_map(|l| l.strip_prefix("m=audio "))
                                .and_then(|l| l.split(' ').next())
                                .and_then(|p| p.parse().ok())
                                .unwrap_or(0);
                            let to = if header("To").contains(";tag=") {
                                header("To")
                            } else {
                                format!("{};tag=raw{port}", header("To"))
                            };
                            let mut sdp = format!(
                                "v=0\r\no=raw 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {rtp_port} RTP/AVP {pt} 101\r\na=rtpmap:{pt} {rtpmap}\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=sendrecv\r\n"
                            );
                            // Video: the offer's H.264 payload type, answered with ours.
                            let offered_video = msg.lines().find_map(|l| l.strip_prefix("m=video ")).and_then(|l| l.split(' ').next()).and_then(|p| p.parse::<u16>().ok());
                            let h264 = msg.lines().find_map(|l| l.strip_prefix("a=rtpmap:").and_then(|r| r.strip_suffix(" H264/90000")).and_then(|n| n.parse::<u8>().ok()));
                            if let (Some((vport, remote, side)), Some(rport), Some(vpt)) = (&video_side, offered_video, h264) {
                                sdp.push_str(&format!("m=video {vport} RTP/AVP {vpt}\r\na=rtpmap:{vpt} H264/90000\r\na=fmtp:{vpt} packetization-mode=1\r\na=sendrecv\r\n"));
                                let dest = std::net::SocketAddr::from(([127, 0, 0, 1], rport));
                                *remote.lock().unwrap() = Some(dest);
                                if video_stream.is_none() {
                                    video_stream = Some(side.stream(vpt, 0x7100_0000 | u32::from(port), dest));
                                }
                            }
                            let contact = format!("Contact: <sip:raw@127.0.0.1:{port}>\r\nContent-Type: application/sdp\r\n");
                            let ok = reply("200 OK", &to, &contact, &sdp);
                            let _ = sip.send_to(ok.as_bytes(), from).await;
                            let contact_uri = header("Contact").trim_start_matches('<').split('>').next().unwrap_or("").to_string();
                            dialog = Some((from, header("Call-ID"), header("From"), to, contact_uri));
                            if streaming.is_none() {
                                let rtp = rtp.clone();
                                let mut digits = dtmf_rx.take();
                                streaming = Some(tokio::spawn(async move {
                                    let dest = std::net::SocketAddr::from(([127, 0, 0, 1], remote_rtp));
                                    let mut tick = tokio::time::interval(Duration::from_millis(20));
                                    let (mut seq, mut ts, mut n) = (1u16, 0u32, 0u64);
                                    let mut encoder = (pt == 111).then(|| {
                                        opus::Encoder::new(48000, opus::Channels::Mono, opus::Application::Voip).unwrap()
                                    });
                                    let ssrc: u32 = 0x5151_0000 | u32::from(port);
                                    loop {
                                        tick.tick().await;
                                        // A digit: its RFC 4733 event (3 updates, 3 ends)
                                        // in place of six ticks of tone.
                                        if let Some(event) = digits.as_mut().and_then(|d| d.try_recv().ok()) {
                                            for i in 0..6u16 {
                                                let end = i >= 3;
                                                let mut e = vec![0x80, 101 | if i == 0 { 0x80 } else { 0 }];
                                                e.extend_from_slice(&seq.to_be_bytes());
                                                e.extend_from_slice(&ts.to_be_bytes());
                                                e.extend_from_slice(&ssrc.to_be_bytes());
                                                e.extend_from_slice(&[event, if end { 0x8a } else { 0x0a }]);
                                                e.extend_from_slice(&((i.min(3) + 1) * 160).to_be_bytes());
                                                let _ = rtp.send_to(&e, dest).await;
                                                seq = seq.wrapping_add(1);
                                                if i < 5 {
                                                    tick.tick().await;
                                                }
                                            }
                                            ts = ts.wrapping_add(6 * 160);
                                            continue;
                                        }
                                        let mut p = vec![0x80, pt];
                                        p.extend_from_slice(&seq.to_be_bytes());
                                        p.extend_from_slice(&ts.to_be_bytes());
                                        p.extend_from_slice(&ssrc.to_be_bytes());
                                        if pt == 111 {
                                            // 20 ms of Opus at 48 kHz (the RTP clock is 48 kHz).
                                            let pcm: Vec<i16> = (0..960)
                                                .map(|i| ((n + i) as f64 * 2.0 * std::f64::consts::PI * tone_hz / 48000.0).sin() * 8000.0)
                                                .map(|s| s as i16)
                                                .collect();
                                            n += 960;
                                            let mut out = [0u8; 1500];
                                            let len = encoder.as_mut().unwrap().encode(&pcm, &mut out).unwrap();
                                            p.extend_from_slice(&out[..len]);
                                            let _ = rtp.send_to(&p, dest).await;
                                            seq = seq.wrapping_add(1);
                                            ts = ts.wrapping_add(960);
                                            continue;
                                        }
                                        for _ in 0..160 {
                                            let s = ((n as f64) * 2.0 * std::f64::consts::PI * tone_hz / 8000.0).sin() * 8000.0;
                                            p.push(if pt == 8 {
                                                sipstream::media::g711::linear_to_alaw(s as i16)
                                            } else {
                                                sipstream::media::g711::linear_to_ulaw(s as i16)
                                            });
                                            n += 1;
                                        }
                                        let _ = rtp.send_to(&p, dest).await;
                                        seq = seq.wrapping_add(1);
                                        ts = ts.wrapping_add(160);
                                    }
                                }));
                            }
                        } else if msg.starts_with("BYE ") {
                            bye.fetch_add(1, Ordering::SeqCst);
                            let ok = reply("200 OK", &header("To"), "", "");
                            let _ = sip.send_to(ok.as_bytes(), from).await;
                            if let Some(s) = streaming.take() {
                                s.abort();
                            }
                            if let Some(v) = video_stream.take() {
                                v.abort();
                            }
                        } else if msg.starts_with("SIP/2.0 ") || msg.starts_with("ACK ") {
                            // The answer to our BYE, or the gateway's ACK.
                        } else {
                            let ok = reply("200 OK", &header("To"), "", "");
                            let _ = sip.send_to(ok.as_bytes(), from).await;
                        }
                    }
                    h = hangup_rx.recv() => {
                        if h.is_none() { return }
                        if let Some((to, call_id, from_hdr, to_hdr, contact)) = dialog.take() {
                            if let Some(s) = streaming.take() {
                                s.abort();
                            }
                            let bye = format!(
                                "BYE {contact} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bKrawbye{port}\r\nFrom: {to_hdr}\r\nTo: {from_hdr}\r\nCall-ID: {call_id}\r\nCSeq: 99 BYE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
                            );
                            let _ = sip.send_to(bye.as_bytes(), to).await;
                        }
                    }
                }
            }
        });
        RawUas {
            port,
            rtp_port,
            video,
            received,
            requests,
            invites,
            byes,
            hangup,
            dtmf,
        }
    }

    /// The video packets received (a peer started with video).
    pub fn video_seen(&self) -> Vec<RtpSeen> {
        self.video
            .as_ref()
            .map(|v| v.received.lock().unwrap().clone())
            .unwrap_or_default()
    }

    /// The RTCP packets received on the video line's RTCP port.
    pub fn video_rtcp_seen(&self) -> Vec<Vec<u8>> {
        self.video
            .as_ref()
            .map(|v| v.rtcp_received.lock().unwrap().clone())
            .unwrap_or_default()
    }

    /// Asks the gateway for a keyframe of the video it sends us: an RTCP RR and a PLI
    /// (RFC 4585 §6.3.1) about the SSRC we receive, to its video RTCP port (RTP + 1).
    pub async fn send_pli(&self) {
        let v = self.video.as_ref().expect("a peer with video");
        let media_ssrc = v
            .received
            .lock()
            .unwrap()
            .last()
            .expect("video received")
            .ssrc;
        let to = v
            .remote
            .lock()
            .unwrap()
            .expect("the gateway's video address");
        let to = std::net::SocketAddr::new(to.ip(), to.port() + 1);
        let me = 0x7200_0000u32 | u32::from(self.port);
        let mut p = vec![0x80, 201, 0, 1];
        p.extend_from_slice(&me.to_be_bytes());
        p.extend_from_slice(&[0x81, 206, 0, 2]);
        p.extend_from_slice(&me.to_be_bytes());
        p.extend_from_slice(&media_ssrc.to_be_bytes());
        v.rtcp.send_to(&p, to).await.unwrap();
    }

    /// Sends a DTMF digit (RFC 4733 event code) in its RTP.
    pub fn press(&self, event: u8) {
        let _ = self.dtmf.send(event);
    }

    /// The Opus audio received (payload type 111), decoded to 48 kHz mono.
    pub fn heard_opus(&self) -> Vec<i16> {
        let mut dec = opus::Decoder::new(48000, opus::Channels::Mono).unwrap();
        let mut pcm = Vec::new();
        for (p, payload, _) in self.received.lock().unwrap().iter() {
            if *p != 111 {
                continue;
            }
            let mut out = vec![0i16; 5760];
            if let Ok(n) = dec.decode(payload, &mut out, false) {
                pcm.extend_from_slice(&out[..n]);
            }
        }
        pcm
    }

    /// The RFC 4733 events received (payload type 101), one per event (its end packets).
    pub fn events(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let mut last_end = false;
        for (pt, payload, _) in self.received.lock().unwrap().iter() {
            if *pt != 101 || payload.len() < 4 {
                continue;
            }
            let end = payload[1] & 0x80 != 0;
            if end && !last_end {
                out.push(payload[0]);
            }
            last_end = end;
        }
        out
    }

    /// Sends BYE for the answered call.
    pub fn hang_up(&self) {
        let _ = self.hangup.send(());
    }

    pub fn invites(&self) -> usize {
        self.invites.load(Ordering::SeqCst)
    }

    pub fn byes(&self) -> usize {
        self.byes.load(Ordering::SeqCst)
    }

    /// The audio received so far with payload type `pt`, decoded to 8 kHz samples.
    pub fn heard(&self, pt: u8) -> Vec<i16> {
        self.heard_timed(pt)
            .into_iter()
            .flat_map(|(_, pcm)| pcm)
            .collect()
    }

    /// Each G.711 payload received with payload type `pt`, decoded, with its arrival time.
    pub fn heard_timed(&self, pt: u8) -> Vec<(Instant, Vec<i16>)> {
        decode_timed(&self.received, pt)
    }

    /// The SIP requests received (INVITE, re-INVITEs, ACK, BYE...), as text.
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

/// Each G.711 payload of `received` with payload type `pt`, decoded, with its arrival time.
fn decode_timed(received: &Heard, pt: u8) -> Vec<(Instant, Vec<i16>)> {
    let mut out = Vec::new();
    for (p, payload, at) in received.lock().unwrap().iter() {
        let mut pcm = Vec::new();
        if *p != pt {
            continue;
        }
        if pt == 8 {
            sipstream::media::g711::decode_alaw(payload, &mut pcm);
        } else {
            sipstream::media::g711::decode_ulaw(payload, &mut pcm);
        }
        out.push((*at, pcm));
    }
    out
}

/// A small SIP caller on 127.0.0.1: INVITEs the gateway (PCMU), streams a tone once
/// answered and keeps the RTP it receives; `bye` hangs up.
pub struct RawUac {
    pub rtp_port: u16,
    /// The 200 OK's text.
    pub answer: String,
    received: Heard,
    sip: std::sync::Arc<tokio::net::UdpSocket>,
    gateway: std::net::SocketAddr,
    dialog: (String, String, String, String),
    sender: tokio::task::JoinHandle<()>,
}

impl RawUac {
    /// Calls `sip:<user>@127.0.0.1:<port>` with `headers` (CRLF-ended lines) added;
    /// Err(status) when the answer is not 2xx.
    pub async fn call(port: u16, user: &str, headers: &str, tone_hz: f64) -> Result<RawUac, u16> {
        use std::sync::{Arc, Mutex};
        let sip = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let rtp = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let (sip_port, rtp_port) = (
            sip.local_addr().unwrap().port(),
            rtp.local_addr().unwrap().port(),
        );
        let gateway = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        // `user;param=value`: the parameters go on the Request-URI, after the host.
        let (user, params) = match user.split_once(';') {
            Some((u, p)) => (u, format!(";{p}")),
            None => (user, String::new()),
        };
        let call_id = format!("rawuac-{sip_port}@127.0.0.1");
        let from = format!("<sip:boss@127.0.0.1:{sip_port}>;tag=u{sip_port}");
        let to = format!("<sip:{user}@127.0.0.1:{port}>");
        let sdp = format!(
            "v=0\r\no=uac 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {rtp_port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n"
        );
        let invite = format!(
            "INVITE sip:{user}@127.0.0.1:{port}{params} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{sip_port};branch=z9hG4bKuac{sip_port}\r\nFrom: {from}\r\nTo: {to}\r\nCall-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContact: <sip:boss@127.0.0.1:{sip_port}>\r\nMax-Forwards: 70\r\n{headers}Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
            sdp.len()
        );
        sip.send_to(invite.as_bytes(), gateway).await.unwrap();
        let mut buf = vec![0u8; 65536];
        let answer = loop {
            let (n, _) = tokio::time::timeout(Duration::from_secs(10), sip.recv_from(&mut buf))
                .await
                .expect("an answer to the INVITE")
                .unwrap();
            let msg = String::from_utf8_lossy(&buf[..n]).to_string();
            let status: u16 = msg
                .split(' ')
                .nth(1)
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
            if status < 200 {
                continue;
            }
            let to_tag = msg
                .lines()
                .find(|l| l.to_ascii_lowercase().starts_with("to:"))
                .map(|l| l[3..].trim().to_string())
                .unwrap_or_default();
            let cseq = "1 ACK";
            let branch = if status < 300 {
                format!("z9hG4bKuacack{sip_port}")
            } else {
                format!("z9hG4bKuac{sip_port}")
            };
            let ack = format!(
                "ACK sip:{user}@127.0.0.1:{port} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{sip_port};branch={branch}\r\nFrom: {from}\r\nTo: {to_tag}\r\nCall-ID: {call_id}\r\nCSeq: {cseq}\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
            );
            sip.send_to(ack.as_bytes(), gateway).await.unwrap();
            if status >= 300 {
                return Err(status);
            }
            break (msg, to_tag);
        };
        let (answer, to_tag) = answer;
        let remote: u16 = answer
            .lines()
            .find_map(|l| l.strip_prefix("m=audio "))
            .and_then(|l| l.split(' ').next())
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        let received: Heard = Arc::new(Mutex::new(Vec::new()));
        {
            let (rtp, received) = (rtp.clone(), received.clone());
            tokio::spawn(async move {
                let mut buf = [0u8; 2048];
                while let Ok((n, _)) = rtp.recv_from(&mut buf).await {
                    if n > 12 {
                        received.lock().unwrap().push((
                            buf[1] & 0x7f,
                            buf[12..n].to_vec(),
                            Instant::now(),
                        ));
                    }
                }
            });
        }
        let sender = tokio::spawn(async move {
            let dest = std::net::SocketAddr::from(([127, 0, 0, 1], remote));
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            let (mut seq, mut ts, mut n) = (1u16, 0u32, 0u64);
            loop {
                tick.tick().await;
                let mut p = vec![0x80, 0];
                p.extend_from_slice(&seq.to_be_bytes());
                p.extend_from_slice(&ts.to_be_bytes());
                p.extend_from_slice(&0x7a7a_0001u32.to_be_bytes());
                for _ in 0..160 {
                    let s =
                        ((n as f64) * 2.0 * std::f64::consts::PI * tone_hz / 8000.0).sin() * 8000.0;
                    p.push(sipstream::media::g711::linear_to_ulaw(s as i16));
                    n += 1;
                }
                let _ = rtp.send_to(&p, dest).await;
                seq = seq.wrapping_add(1);
                ts = ts.wrapping_add(160);
            }
        });
        Ok(RawUac {
            rtp_port,
            answer,
            received,
            sip,
            gateway,
            dialog: (
                call_id,
                from,
                to_tag,
                format!("sip:{user}@127.0.0.1:{port}"),
            ),
            sender,
        })
    }

    /// Each PCMU payload received, decoded, with its arrival time.
    pub fn heard_timed(&self) -> Vec<(Instant, Vec<i16>)> {
        decode_timed(&self.received, 0)
    }

    /// Sends BYE (and stops the tone).
    pub async fn bye(&self) {
        self.sender.abort();
        let (call_id, from, to, uri) = &self.dialog;
        let port = self.sip.local_addr().unwrap().port();
        let bye = format!(
            "BYE {uri} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bKuacbye{port}\r\nFrom: {from}\r\nTo: {to}\r\nCall-ID: {call_id}\r\nCSeq: 2 BYE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
        );
        let _ = self.sip.send_to(bye.as_bytes(), self.gateway).await;
    }
}

impl Drop for RawUac {
    fn drop(&mut self) {
        self.sender.abort();
    }
}

/// The share of `pcm`'s power at `hz` (Goertzel), 0..1: a pure tone at `hz` gives ~1.
pub fn tone_share(pcm: &[i16], rate: u32, hz: f64) -> f64 {
    let w = 2.0 * std::f64::consts::PI * hz / f64::from(rate);
    let (mut s1, mut s2, mut total) = (0f64, 0f64, 0f64);
    for x in pcm {
        let x = f64::from(*x);
        total += x * x;
        let s = x + 2.0 * w.cos() * s1 - s2;
        s2 = s1;
        s1 = s;
    }
    let p = s1 * s1 + s2 * s2 - 2.0 * w.cos() * s1 * s2;
    p * 2.0 / (pcm.len().max(1) as f64 * total.max(1.0))
}

/// A baresip softphone registered through kamailio: user `user` (password `pw<user>`),
/// auto-answer, a sine of `tone_hz` as its microphone, and what it hears dumped to WAV files
/// (the `sndfile` module). Ports come from a [`port_block`].
pub struct Baresip {
    child: Child,
    pub user: String,
    dir: tempfile::TempDir,
}

impl Baresip {
    pub fn start(user: &str, kamailio_port: u16, tone_hz: u32) -> Baresip {
        Self::start_with(user, kamailio_port, tone_hz, None)
    }

    /// As [`Baresip::start`], its calls encrypted by baresip's `srtp` module with SDES:
    /// `mediaenc` is `srtp` (optional), `srtp-mand` (RTP/SAVP required) or `srtp-mandf`.
    pub fn start_srtp(user: &str, kamailio_port: u16, tone_hz: u32, mediaenc: &str) -> Baresip {
        Self::start_with(user, kamailio_port, tone_hz, Some(mediaenc))
    }

    fn start_with(user: &str, kamailio_port: u16, tone_hz: u32, mediaenc: Option<&str>) -> Baresip {
        require("baresip");
        let dir = tempdir();
        let (base, top) = port_block();
        // Its SIP port from the kernel (free for UDP and TCP), and the next one free too:
        // baresip binds it as well (TLS).
        let sip = loop {
            let p = free_udp_port();
            if p < 65000 && TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
                break p;
            }
        };
        let config = format!(
            "sip_listen 127.0.0.1:{sip}\n\
             net_interface 127.0.0.1\n\
             rtp_ports {}-{top}\n\
             audio_source ausine,{tone_hz}\n\
             audio_player aufile,/dev/null\n\
             audio_alert aufile,/dev/null\n\
             ausrc_srate 48000\n\
             ausrc_channels 2\n\
             module_path /usr/lib/baresip/modules\n\
             module g711.so\n\
             module aufile.so\n\
             module ausine.so\n\
             module sndfile.so\n\
             snd_path {}\n\
             module_app account.so\n\
             module_app menu.so\n{}",
            base + 10,
            dir.path().display(),
            if mediaenc.is_some() {
                "module srtp.so\n"
            } else {
                ""
            }
        );
        let mediaenc = mediaenc
            .map(|m| format!(";mediaenc={m}"))
            .unwrap_or_default();
        std::fs::write(dir.path().join("config"), config).unwrap();
        std::fs::write(
            dir.path().join("accounts"),
            format!(
                "<sip:{user}@sipstream.test>;auth_pass=pw{user};outbound=\"sip:127.0.0.1:{kamailio_port}\";regint=600;answermode=auto;audio_codecs=PCMU,PCMA{mediaenc}\n"
            ),
        )
        .unwrap();
        let child = Command::new("baresip")
            .arg("-f")
            .arg(dir.path())
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.path().join("out.log")).unwrap())
            .stderr(std::fs::File::create(dir.path().join("err.log")).unwrap())
            .spawn()
            .expect("start baresip");
        Baresip {
            child,
            user: user.to_string(),
            dir,
        }
    }

    pub fn log(&self) -> String {
        let read = |f: &str| std::fs::read_to_string(self.dir.path().join(f)).unwrap_or_default();
        format!("{}{}", read("out.log"), read("err.log"))
    }

    /// The samples (and rate) of the calls' decoded audio, all dump files in order.
    pub fn heard(&self) -> (Vec<i16>, u32) {
        let mut files: Vec<PathBuf> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.to_string_lossy().ends_with("-dec.wav"))
            .collect();
        files.sort();
        let mut all = Vec::new();
        let mut rate = 8000;
        for f in files {
            if let Some((pcm, r)) = read_wav(&f) {
                all.extend(pcm);
                rate = r;
            }
        }
        (all, rate)
    }

    /// How many calls it has dumped (one pair of WAV files per call).
    pub fn calls(&self) -> usize {
        std::fs::read_dir(self.dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with("-dec.wav"))
            .count()
    }
}

impl Drop for Baresip {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A 16-bit PCM WAV file's first channel and its sample rate.
pub fn read_wav(path: &Path) -> Option<(Vec<i16>, u32)> {
    let data = std::fs::read(path).ok()?;
    if data.len() < 12 || &data[..4] != b"RIFF" || &data[8..12] != b"WAVE" {
        return None;
    }
    let (mut pos, mut rate, mut channels) = (12usize, 8000u32, 1usize);
    while pos + 8 <= data.len() {
        let id = &data[pos..pos + 4];
        let mut len = u32::from_le_bytes(data[pos + 4..pos + 8].try_into().ok()?) as usize;
        if id == b"data" && (len == 0 || pos + 8 + len > data.len()) {
            // Still being written: the header's length is filled in at close.
            len = data.len() - pos - 8;
        }
        let body = &data[pos + 8..(pos + 8 + len).min(data.len())];
        if id == b"fmt " && body.len() >= 16 {
            channels = u16::from_le_bytes([body[2], body[3]]).max(1) as usize;
            rate = u32::from_le_bytes(body[4..8].try_into().ok()?);
        } else if id == b"data" {
            let pcm = body
                .chunks_exact(2 * channels)
                .map(|c| i16::from_le_bytes([c[0], c[1]]))
                .collect();
            return Some((pcm, rate));
        }
        pos += 8 + len + (len & 1);
    }
    None
}

/// dnsmasq as the gateway's name server on 127.0.0.1, answering only what `records` says
/// (dnsmasq options such as `srv-host=...`, `naptr-record=...`, `address=/name/ip`).
pub struct Dnsmasq {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Dnsmasq {
    pub fn start(records: &[String]) -> Dnsmasq {
        require("dnsmasq");
        let dir = tempdir();
        let port = free_udp_port();
        let mut conf = format!(
            "port={port}\nlisten-address=127.0.0.1\nbind-interfaces\nno-resolv\nno-hosts\nno-poll\nuser=root\n"
        );
        for r in records {
            conf.push_str(r);
            conf.push('\n');
        }
        let path = dir.path().join("dnsmasq.conf");
        std::fs::write(&path, conf).unwrap();
        let child = Command::new("dnsmasq")
            .arg("--keep-in-foreground")
            .arg(format!("--conf-file={}", path.display()))
            .arg(format!("--pid-file={}", dir.path().join("pid").display()))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("dnsmasq.log")).unwrap())
            .spawn()
            .expect("start dnsmasq");
        // Ready when it answers on its port.
        let deadline = Instant::now() + Duration::from_secs(5);
        while UdpSocket::bind(("127.0.0.1", port)).is_ok() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        Dnsmasq {
            child,
            port,
            _dir: dir,
        }
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Two UDP sockets on even ports two apart (RTP, leaving each RTCP port free): the media
/// ports of a peer that answers with two audio lines (an SRS, a two-line fork target).
pub async fn rtp_sink_pair() -> (tokio::net::UdpSocket, tokio::net::UdpSocket) {
    loop {
        let a = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let p = a.local_addr().unwrap().port();
        if p % 2 == 0 {
            if let Ok(b) = tokio::net::UdpSocket::bind(("127.0.0.1", p + 2)).await {
                return (a, b);
            }
        }
    }
}

/// The µ-law (PCMU) audio arriving on `sock` for `window`, decoded.
pub async fn rtp_pcmu(sock: &tokio::net::UdpSocket, window: Duration) -> Vec<i16> {
    let mut buf = [0u8; 2048];
    let mut pcm = Vec::new();
    let deadline = tokio::time::Instant::now() + window;
    while let Ok(Ok((n, _))) = tokio::time::timeout_at(deadline, sock.recv_from(&mut buf)).await {
        if n > 12 && buf[1] & 0x7f == 0 {
            sipstream::media::g711::decode_ulaw(&buf[12..n], &mut pcm);
        }
    }
    pcm
}

/// Access units (each a list of NAL units, SPS/PPS before keyframes) of a 320x240, 25 fps
/// H264 baseline test pattern made by ffmpeg's libx264, one keyframe a second.
pub fn h264_frames(dir: &Path, seconds: u32) -> Vec<Vec<Vec<u8>>> {
    require("ffmpeg");
    let file = dir.join("v.h264");
    let ok = Command::new("ffmpeg")
        .args(["-nostdin", "-v", "error", "-f", "lavfi"])
        .args(["-i", "testsrc=size=320x240:rate=25"])
        .args(["-t", &seconds.to_string(), "-c:v", "libx264"])
        .args(["-profile:v", "baseline", "-g", "25", "-bf", "0"])
        .args(["-pix_fmt", "yuv420p", "-f", "h264"])
        .arg(&file)
        .status()
        .expect("ffmpeg")
        .success();
    assert!(ok, "ffmpeg could not make the H264 fixture");
    let data = std::fs::read(&file).unwrap();
    let mut frames: Vec<Vec<Vec<u8>>> = Vec::new();
    let mut cur: Vec<Vec<u8>> = Vec::new();
    for nal in split_annex_b(&data) {
        cur.push(nal.to_vec());
        if matches!(nal[0] & 0x1F, 1 | 5) {
            frames.push(std::mem::take(&mut cur));
        }
    }
    frames
}

/// Annex B byte stream → NAL units.
fn split_annex_b(data: &[u8]) -> Vec<&[u8]> {
    let mut starts = Vec::new();
    let mut i = 0;
    while i + 3 <= data.len() {
        if data[i] == 0 && data[i + 1] == 0 && data[i + 2] == 1 {
            starts.push(i + 3);
            i += 3;
        } else {
            i += 1;
        }
    }
    let mut nals = Vec::new();
    for (k, &s) in starts.iter().enumerate() {
        let mut end = starts.get(k + 1).map(|&n| n - 3).unwrap_or(data.len());
        while end > s && data[end - 1] == 0 {
            end -= 1;
        }
        if end > s {
            nals.push(&data[s..end]);
        }
    }
    nals
}

/// RFC 6184 packetisation of one access unit: SPS+PPS as one STAP-A, small NAL units as
/// they are, big ones as FU-A. Returns (payload, marker) pairs.
pub fn h264_packetize(au: &[&[u8]]) -> Vec<(Vec<u8>, bool)> {
    const MTU: usize = 1200;
    let mut out: Vec<Vec<u8>> = Vec::new();
    let params: Vec<&&[u8]> = au.iter().filter(|n| matches!(n[0] & 0x1F, 7 | 8)).collect();
    if !params.is_empty() {
        let mut stap = vec![24 | (params[0][0] & 0x60)];
        for p in &params {
            stap.extend_from_slice(&(p.len() as u16).to_be_bytes());
            stap.extend_from_slice(p);
        }
        out.push(stap);
    }
    for nal in au.iter().filter(|n| !matches!(n[0] & 0x1F, 7 | 8)) {
        if nal.len() <= MTU {
            out.push(nal.to_vec());
            continue;
        }
        let (h, body) = (nal[0], &nal[1..]);
        let chunks: Vec<&[u8]> = body.chunks(MTU).collect();
        for (i, c) in chunks.iter().enumerate() {
            let mut fu = vec![(h & 0xE0) | 28, h & 0x1F];
            if i == 0 {
                fu[1] |= 0x80;
            }
            if i == chunks.len() - 1 {
                fu[1] |= 0x40;
            }
            fu.extend_from_slice(c);
            out.push(fu);
        }
    }
    let n = out.len();
    out.into_iter()
        .enumerate()
        .map(|(i, p)| (p, i + 1 == n))
        .collect()
}

/// The media sections of an SDP, each as its lines (the m= line first).
pub fn sdp_sections(sdp: &str) -> Vec<Vec<&str>> {
    let mut out: Vec<Vec<&str>> = Vec::new();
    for l in sdp.lines().map(str::trim_end) {
        if l.starts_with("m=") {
            out.push(vec![l]);
        } else if let Some(s) = out.last_mut() {
            s.push(l);
        }
    }
    out
}

/// The gateway's answer to an audio+video WHEP offer for an audio-only stream, as every
/// strict WebRTC stack (aiortc among them) needs it: audio sendonly, video accepted
/// `inactive` (not rejected with port 0) in the same BUNDLE group, both with the same ICE
/// credentials and DTLS setup role, rtcp-mux and a codec of the offer; a fingerprint at
/// session level or in the sections. `answer` is the SDP as sent, or as a browser's
/// `remoteDescription` shows it.
pub fn assert_av_answer_for_audio_only(answer: &str) {
    let media = sdp_sections(answer);
    assert_eq!(media.len(), 2, "{answer}");
    for (s, kind) in media.iter().zip(["audio", "video"]) {
        let mut m = s[0].trim_start_matches("m=").split_whitespace();
        assert_eq!(m.next(), Some(kind), "{answer}");
        // Accepted, not rejected: port 9 as the gateway writes it (a browser's
        // remoteDescription shows its candidate's port instead).
        assert_ne!(m.next(), Some("0"), "{kind} rejected: {answer}");
    }
    let attr = |s: &[&str], key: &str| -> Option<String> {
        s.iter()
            .find_map(|l| l.strip_prefix(&format!("a={key}")).map(str::to_string))
    };
    assert!(media[0].contains(&"a=sendonly"), "{answer}");
    assert!(media[1].contains(&"a=inactive"), "{answer}");
    assert!(
        !media[1]
            .iter()
            .any(|l| l.starts_with("a=ssrc:") || l.starts_with("a=msid:")),
        "nothing is sent on video: {answer}"
    );
    let mids: Vec<String> = media
        .iter()
        .map(|s| attr(s, "mid:").expect("a=mid"))
        .collect();
    let bundle = answer
        .lines()
        .find_map(|l| l.trim_end().strip_prefix("a=group:BUNDLE "))
        .unwrap_or_else(|| panic!("no BUNDLE group: {answer}"));
    assert_eq!(
        bundle.split_whitespace().collect::<Vec<_>>(),
        mids,
        "{answer}"
    );
    for key in ["ice-ufrag:", "ice-pwd:", "setup:"] {
        let values: Vec<Option<String>> = media.iter().map(|s| attr(s, key)).collect();
        assert!(values[0].is_some(), "no a={key} in audio: {answer}");
        assert_eq!(values[0], values[1], "a={key} of video: {answer}");
    }
    assert_ne!(attr(&media[1], "setup:").as_deref(), Some("actpass"));
    for s in &media {
        assert!(s.contains(&"a=rtcp-mux"), "{answer}");
        assert!(
            s.iter().any(|l| l.starts_with("a=rtpmap:")),
            "each section carries a codec of the offer: {answer}"
        );
    }
    assert!(answer.contains("a=fingerprint:"), "{answer}");
}

/// The H264 track of a synthetic video call (packetization mode 1, baseline).
pub fn h264_track() -> sipstream::registry::TrackSpec {
    sipstream::registry::TrackSpec {
        kind: sipstream::registry::TrackKind::Video,
        leg: sipstream::registry::Leg::Callee,
        codec: "H264".into(),
        clock_rate: 90000,
        channels: 1,
        payload_type: 96,
        fmtp: Some("packetization-mode=1;profile-level-id=42c01e".into()),
    }
}

/// A synthetic video call's media, 20 ms a step: PCMU from `tone` (PT 0) every step and one
/// H264 access unit of `frames` (PT 96, 25 fps) every second step, with a call's sequence
/// numbers and timestamps (random-looking starts; the audio clock wraps 3 s in).
pub struct AvSource {
    pub frames: Vec<Vec<Vec<u8>>>,
    pub tone: Vec<u8>,
    pub audio: usize,
    pub video: usize,
    step: usize,
    vseq: u16,
}

impl AvSource {
    pub fn new(frames: Vec<Vec<Vec<u8>>>, tone: Vec<u8>, audio: usize, video: usize) -> Self {
        Self {
            frames,
            tone,
            audio,
            video,
            step: 0,
            vseq: 5000,
        }
    }

    /// Steps until the frames run out.
    pub fn steps(&self) -> usize {
        self.frames.len() * 2
    }

    /// The next step's units, arrived at `arrival`.
    pub fn next_units(&mut self, arrival: Instant) -> Vec<sipstream::registry::MediaUnit> {
        use sipstream::registry::MediaUnit;
        let (a0, v0) = (u32::MAX - 8000 * 3, 123_456u32);
        let i = self.step;
        self.step += 1;
        let off = (i * 160) % (self.tone.len() - 160);
        let mut out = vec![MediaUnit {
            track: self.audio,
            payload_type: 0,
            seq: 100u16.wrapping_add(i as u16),
            timestamp: a0.wrapping_add(i as u32 * 160),
            marker: false,
            ssrc: 0xA0,
            payload: bytes::Bytes::copy_from_slice(&self.tone[off..off + 160]),
            arrival,
        }];
        if i.is_multiple_of(2) {
            let f = i / 2;
            let au: Vec<&[u8]> = self.frames[f].iter().map(|n| &n[..]).collect();
            for (payload, marker) in h264_packetize(&au) {
                out.push(MediaUnit {
                    track: self.video,
                    payload_type: 96,
                    seq: self.vseq,
                    timestamp: v0.wrapping_add(f as u32 * 3600),
                    marker,
                    ssrc: 0xB0,
                    payload: bytes::Bytes::from(payload),
                    arrival,
                });
                self.vseq = self.vseq.wrapping_add(1);
            }
        }
        out
    }
}

/// The end of `uac_inbound.xml`: sipp hangs up itself after streaming for a while.
pub const SIPP_HANGS_UP: &str = r#"  <pause milliseconds="3000"/>
  <send retrans="500"><![CDATA[

BYE sip:@USER@@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: <sip:alice@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
To: <sip:@USER@@[remote_ip]:[remote_port]>[peer_tag_param]
Call-ID: [call_id]
CSeq: 2 BYE
Max-Forwards: 70
Content-Length: 0

]]></send>
  <recv response="200"/>"#;

/// sipp waits for the gateway's BYE.
pub const GATEWAY_HANGS_UP: &str = r#"  <recv request="BYE"/>
  <send><![CDATA[

SIP/2.0 200 OK
[last_Via:]
[last_From:]
[last_To:]
[last_Call-ID:]
[last_CSeq:]
Content-Length: 0

]]></send>"#;
