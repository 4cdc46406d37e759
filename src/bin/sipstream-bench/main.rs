//! `sipstream-bench`: drives the real gateway binary (release build) on 127.0.0.1 and measures
//! what one core carries, side by side with the physical limit of this machine (a minimal UDP
//! relay in this process) and Debian's rtpengine (userspace, ng protocol).
//!
//! Steps (each prints a progress line; results go to a Markdown table and JSON):
//! - `relay`: loopback UDP relay ceiling (packets relayed per CPU-second of the relay thread);
//! - `setup`: call setup rate — the gateway places calls (REST `/call/startup`) towards a sipp
//!   UAS that answers at once and hangs up shortly after; the rate rises until fewer than
//!   99.9 % of the calls succeed (success counted by sipp's `SuccessfulCall(C)`, cross-checked
//!   against `/call/find_all`);
//! - `calls`: N concurrent G.711 calls (sipp does SIP only, this tool sends the RTP to each
//!   call's gateway port), with 0, 1 and 3 readers per stream (SIPREC sessions whose SRS
//!   answer points at this tool's sinks): gateway CPU, RSS per call, loss, added latency;
//! - `fanout`: one call to 1..1000 SIPREC readers: packets out per gateway CPU-second;
//! - `rtpengine`: the same number of one-way G.711 streams relayed by rtpengine;
//! - `agents`: N calls each with a media stream to a WebSocket server in this tool
//!   (issue 17): CPU per stream, loss, RTP → frame latency, and the agent's audio played back
//!   into the calls (WebSocket → RTP latency);
//! - `exchanges`: N calls each with a media exchange (`/media/fetch_from_uri` to a media
//!   server that streams RTP, `/media/send_to_uri` to a fork) whose peer's RTP is this tool's:
//!   CPU per exchange, loss and latency of the exchanged (decoded, mixed, encoded) audio.
//!
//! Not a test: run it with `scripts/bench.sh` (see the README's Benchmarks section).
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::BufRead;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};

mod agents;
mod exchanges;
mod soak;
mod two_party;

const UAS_HOLD: &str = include_str!("../../../benches/sipp/uas_hold.xml");
const UAS_SHORT: &str = include_str!("../../../benches/sipp/uas_short.xml");
const SRS: &str = include_str!("../../../benches/sipp/srs.xml");

/// RTP packet: 12-byte header + 160 bytes of PCMU (20 ms). The payload starts with the send
/// time (ns since the bench epoch), the stream index and a magic number, then the same again
/// in μ-law-safe bytes (see `agents::write_stamp`) for paths that decode and re-encode the
/// audio.
const PKT: usize = 172;
const MAGIC: u32 = 0x5353_424e;
/// Latency histogram: 1 µs buckets up to 200 ms.
const HIST: usize = 200_000;
const SOCK_BUF: usize = 16 << 20;

// ---------------------------------------------------------------------------------------------
// Options

struct Opts {
    quick: bool,
    steps: Vec<String>,
    out: PathBuf,
    gateway: PathBuf,
    calls: Vec<usize>,
    readers: Vec<usize>,
    hold: Duration,
    fanout: Vec<usize>,
    setup_rates: Vec<u32>,
    setup_secs: u32,
    log_level: String,
    /// Gateway properties for every gateway the tool starts (`--set key=value`).
    sets: Vec<(String, String)>,
    /// The properties file the gateways start with (`--properties`; default: this tree's):
    /// an older gateway binary needs the file of its own tree.
    properties: PathBuf,
    /// The `exchanges` step's kinds (`--exchange-kinds fetch,send`).
    exchange_kinds: Vec<String>,
    /// The `soak` step (not in the default steps): calls at once, minutes, and the range of
    /// a call's life in seconds (`--soak-calls 500 --soak-minutes 10 --soak-life 30-90`).
    soak_calls: usize,
    soak_minutes: u64,
    soak_life: (u64, u64),
}

fn usage() -> ! {
    eprintln!(
        "sipstream-bench [--quick] [--steps relay,setup,calls,twoparty,fanout,rtpengine,agents,exchanges]\n\
         \x20 [--out FILE.json] [--gateway PATH] [--calls 100,500,1000] [--readers 0,1,3] [--hold SECS]\n\
         \x20 [--fanout 1,10,100,1000] [--setup-rates 250,500,...] [--setup-secs N]\n\
         \x20 [--log-level warn] [--set key=value ...] [--properties FILE]\n\
         \x20 [--exchange-kinds fetch,send] [--soak-calls 500] [--soak-minutes 10] [--soak-life 30-90]\n\
         sipstream-bench --plot FILE.json   (the SVG plot of an earlier run)"
    );
    std::process::exit(2)
}

fn list<T: std::str::FromStr>(s: &str) -> Vec<T> {
    s.split(',').filter_map(|x| x.trim().parse().ok()).collect()
}

fn parse_opts() -> Opts {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut o = Opts {
        quick: false,
        steps: list("relay,setup,calls,twoparty,fanout,rtpengine,agents,exchanges"),
        out: PathBuf::new(),
        gateway: root.join("target/release/sipstream"),
        calls: vec![100, 500, 1000],
        readers: vec![0, 1, 3],
        hold: Duration::from_secs(60),
        fanout: vec![1, 10, 100, 1000],
        setup_rates: vec![250, 500, 750, 1000, 1250, 1500, 2000, 2500, 3000, 4000],
        setup_secs: 10,
        log_level: "warn".into(),
        sets: Vec::new(),
        properties: Path::new(env!("CARGO_MANIFEST_DIR")).join("properties/sipstream.properties"),
        exchange_kinds: list("fetch,send"),
        soak_calls: 500,
        soak_minutes: 10,
        soak_life: (30, 90),
    };
    let mut explicit_hold = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().unwrap_or_else(|| usage());
        match a.as_str() {
            "--quick" => o.quick = true,
            "--plot" => {
                // Only the plot, from the JSON of an earlier run.
                let json = PathBuf::from(val());
                let plot = std::fs::read(&json)
                    .ok()
                    .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                    .and_then(|r| svg_plot(&r));
                match plot.map(|svg| std::fs::write(json.with_extension("svg"), svg)) {
                    Some(Ok(())) => std::process::exit(0),
                    _ => {
                        eprintln!("no plot: {} has no call rows", json.display());
                        std::process::exit(1)
                    }
                }
            }
            "--steps" => o.steps = list(&val()),
            "--out" => o.out = PathBuf::from(val()),
            "--properties" => o.properties = PathBuf::from(val()),
            "--gateway" => o.gateway = PathBuf::from(val()),
            "--calls" => o.calls = list(&val()),
            "--readers" => o.readers = list(&val()),
            "--hold" => {
                o.hold = Duration::from_secs_f64(val().parse().unwrap_or_else(|_| usage()));
                explicit_hold = true;
            }
            "--fanout" => o.fanout = list(&val()),
            "--setup-rates" => o.setup_rates = list(&val()),
            "--setup-secs" => o.setup_secs = val().parse().unwrap_or_else(|_| usage()),
            "--log-level" => o.log_level = val(),
            "--exchange-kinds" => o.exchange_kinds = list(&val()),
            "--soak-calls" => o.soak_calls = val().parse().unwrap_or_else(|_| usage()),
            "--soak-minutes" => o.soak_minutes = val().parse().unwrap_or_else(|_| usage()),
            "--soak-life" => {
                let v = val();
                let (a, b) = v.split_once('-').unwrap_or_else(|| usage());
                match (a.parse(), b.parse()) {
                    (Ok(a), Ok(b)) if a <= b => o.soak_life = (a, b),
                    _ => usage(),
                }
            }
            "--set" => {
                let kv = val();
                let (k, v) = kv.split_once('=').unwrap_or_else(|| usage());
                o.sets.push((k.trim().to_owned(), v.trim().to_owned()));
            }
            _ => usage(),
        }
    }
    if o.quick {
        if !explicit_hold {
            o.hold = Duration::from_secs(10);
        }
        o.setup_secs = o.setup_secs.min(4);
    }
    if o.out.as_os_str().is_empty() {
        let stamp = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        o.out = root.join(format!("target/bench/bench-{stamp}.json"));
    }
    o
}

// ---------------------------------------------------------------------------------------------
// /proc

fn clk_tck() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// utime + stime of a process (or `thread-self`), in seconds.
fn cpu_secs(which: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{which}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which may contain spaces) start at state (field 3).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    ticks as f64 / clk_tck()
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown".to_string(), |(_, v)| v.trim().to_string());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    json!({
        "cores": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "cpu": model,
        "mem_gib": (mem as f64 / 1048576.0 * 10.0).round() / 10.0,
        "kernel": kernel.trim(),
        "loadavg_start": loadavg(),
    })
}

/// CPU of a process over a window, as a fraction of one core.
struct CpuWindow {
    which: String,
    cpu0: f64,
    t0: Instant,
}

impl CpuWindow {
    fn start(which: impl Into<String>) -> Self {
        let which = which.into();
        CpuWindow {
            cpu0: cpu_secs(&which),
            which,
            t0: Instant::now(),
        }
    }
    /// (cpu seconds, wall seconds)
    fn stop(&self) -> (f64, f64) {
        (
            cpu_secs(&self.which) - self.cpu0,
            self.t0.elapsed().as_secs_f64(),
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Ports and processes

fn free_port() -> u16 {
    loop {
        let udp = UdpSocket::bind("127.0.0.1:0").expect("bind udp");
        let port = udp.local_addr().expect("addr").port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// An even port whose next port is free too (sipp binds -mp and -mp+2).
fn free_even_port() -> u16 {
    loop {
        let p = free_port();
        if p.is_multiple_of(2) && p < 65000 && UdpSocket::bind(("127.0.0.1", p + 2)).is_ok() {
            return p;
        }
    }
}

fn udp_socket(buf: usize) -> Result<UdpSocket> {
    let s = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    s.set_recv_buffer_size(buf)?;
    s.set_send_buffer_size(buf)?;
    let addr: SocketAddr = "127.0.0.1:0".parse()?;
    s.bind(&addr.into())?;
    Ok(s.into())
}

struct Proc {
    child: Child,
}

impl Proc {
    fn pid(&self) -> u32 {
        self.child.id()
    }
    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
    fn wait_exit(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if !self.alive() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Gateway {
    proc: Proc,
    rest: String,

    http: reqwest::Client,
    log: PathBuf,
}

impl Gateway {
    async fn start(o: &Opts, dir: &Path, extra: &[(&str, String)]) -> Result<Gateway> {
        if !o.gateway.exists() {
            bail!(
                "{} not found: build it with `cargo build --release`",
                o.gateway.display()
            );
        }
        let rest_port = free_port();
        let sip_port = loop {
            let p = free_port();
            if p != rest_port {
                break p;
            }
        };
        let log = dir.join("gateway.log");
        let mut sets: Vec<(String, String)> = vec![
            ("rest_port".into(), rest_port.to_string()),
            ("sip_address".into(), "127.0.0.1".into()),
            ("sip_port".into(), sip_port.to_string()),
            ("sip_tcp".into(), "false".into()),
            ("rtp_address".into(), "127.0.0.1".into()),
            ("rtp_port_min".into(), "10000".into()),
            ("rtp_port_max".into(), "29999".into()),
            ("max_calls".into(), "10000".into()),
            // The benchmark measures capacity: the load-shedding and reader limits, which
            // refuse early on purpose, are opened up.
            ("sip_max_pending_invites".into(), "100000".into()),
            ("stream_max_readers".into(), "100000".into()),
            ("sip_socket_buffer".into(), (8 << 20).to_string()),
            (
                "record_dir".into(),
                dir.join("records").display().to_string(),
            ),
            ("log_level".into(), o.log_level.clone()),
        ];
        let extra = o
            .sets
            .iter()
            .map(|(k, v)| (k.as_str(), v.clone()))
            .chain(extra.iter().cloned());
        for (k, v) in extra {
            sets.retain(|(sk, _)| sk != k);
            sets.push((k.to_string(), v));
        }
        let mut cmd = Command::new(&o.gateway);
        cmd.arg("--config").arg(&o.properties);
        for (k, v) in sets {
            cmd.arg("--set").arg(format!("{k}={v}"));
        }
        let lf = std::fs::File::create(&log)?;
        let child = cmd
            .current_dir(dir)
            .stdout(lf.try_clone()?)
            .stderr(lf)
            .spawn()
            .context("start the gateway")?;
        let gw = Gateway {
            proc: Proc { child },
            rest: format!("http://127.0.0.1:{rest_port}"),

            http: reqwest::Client::builder()
                .pool_max_idle_per_host(256)
                .build()?,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = gw.http.get(format!("{}/health", gw.rest)).send().await {
                if r.status().is_success() {
                    return Ok(gw);
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "gateway did not start: {}",
                    std::fs::read_to_string(&gw.log).unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn pid(&self) -> u32 {
        self.proc.pid()
    }

    async fn post(&self, path: &str, body: &Value) -> Result<(u16, Value)> {
        let r = self
            .http
            .post(format!("{}/rest-api{path}", self.rest))
            .json(body)
            .send()
            .await?;
        let status = r.status().as_u16();
        let text = r.text().await?;
        Ok((
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        ))
    }

    /// Packets the registry dropped for slow readers (summed over the streams' readers).
    async fn reader_drops(&self) -> u64 {
        let Ok((200, v)) = self.post("/stream/find_all", &json!({})).await else {
            return 0;
        };
        v.as_array()
            .into_iter()
            .flatten()
            .flat_map(|s| s["readers"].as_array().cloned().unwrap_or_default())
            .filter_map(|r| r["dropped"].as_u64())
            .sum()
    }

    async fn find_all(&self) -> Result<Vec<Value>> {
        let (s, v) = self.post("/call/find_all", &json!({})).await?;
        if s != 200 {
            bail!("find_all: {s} {v}");
        }
        Ok(v.as_array().cloned().unwrap_or_default())
    }
}

fn startup_body(call_id: &str, sipp_port: u16) -> Value {
    json!({
        "callId": call_id,
        "callee": "bench",
        "sipLogin": "bench",
        "sipDomain": "127.0.0.1",
        "sipPort": sipp_port,
        "sipTransport": "udp",
        "sipRegisterRequired": false,
        "hasAudio": true,
        "hasVideo": false,
        "toStream": format!("{call_id}_s"),
    })
}

struct Sipp {
    proc: Proc,
    port: u16,
    dir: PathBuf,
}

impl Sipp {
    fn start(dir: &Path, name: &str, text: &str, extra: &[&str]) -> Result<Sipp> {
        let dir = dir.join(name);
        std::fs::create_dir_all(&dir)?;
        let sf = dir.join("scenario.xml");
        std::fs::write(&sf, text)?;
        let port = free_port();
        let mp = free_even_port();
        let child = Command::new("sipp")
            .arg("-sf")
            .arg(&sf)
            .args(["-i", "127.0.0.1", "-p", &port.to_string()])
            .args(["-mi", "127.0.0.1", "-mp", &mp.to_string()])
            .args(["-t", "u1", "-buff_size", &(8 << 20).to_string()])
            .args(["-nostdin", "-trace_stat", "-fd", "1", "-trace_err"])
            .args(extra)
            .current_dir(&dir)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("sipp.stderr"))?)
            .spawn()
            .context("start sipp (apt-get install sip-tester)")?;
        std::thread::sleep(Duration::from_millis(300));
        Ok(Sipp {
            proc: Proc { child },
            port,
            dir,
        })
    }

    /// The last line of sipp's statistics file as a map column → value.
    fn stats(&self) -> HashMap<String, String> {
        let mut out = HashMap::new();
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return out;
        };
        for e in entries.flatten() {
            if !e.file_name().to_string_lossy().ends_with(".csv") {
                continue;
            }
            let Ok(f) = std::fs::File::open(e.path()) else {
                continue;
            };
            let lines: Vec<String> = std::io::BufReader::new(f)
                .lines()
                .map_while(Result::ok)
                .collect();
            if let (Some(h), Some(last)) = (lines.first(), lines.last()) {
                for (k, v) in h.split(';').zip(last.split(';')) {
                    out.insert(k.to_string(), v.to_string());
                }
            }
        }
        out
    }

    fn stat(&self, key: &str) -> u64 {
        self.stats()
            .get(key)
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }
}

// ---------------------------------------------------------------------------------------------
// Media: paced sender and latency sinks

fn now_ns(epoch: Instant) -> u64 {
    epoch.elapsed().as_nanos() as u64
}

fn fill_packet(buf: &mut [u8; PKT], idx: u32, seq: u16, ts: u32, send_ns: u64) {
    buf[0] = 0x80;
    buf[1] = 0; // PCMU
    buf[2..4].copy_from_slice(&seq.to_be_bytes());
    buf[4..8].copy_from_slice(&ts.to_be_bytes());
    buf[8..12].copy_from_slice(&(idx + 1).to_be_bytes());
    buf[12..20].copy_from_slice(&send_ns.to_be_bytes());
    buf[20..24].copy_from_slice(&idx.to_be_bytes());
    buf[24..28].copy_from_slice(&MAGIC.to_be_bytes());
    // A media stream decodes the audio and encodes it again (μ-law 0x7F comes back as 0xFF):
    // the stamp once more, in bytes that survive that.
    agents::write_stamp(&mut buf[12 + agents::STAMP_AT..], send_ns, idx, MAGIC);
}

struct SendReport {
    sent: u64,
    errors: u64,
    cpu_s: f64,
    late_max_us: u64,
}

/// Sends `pps` packets per second to each target, spread evenly, for `dur`. Runs on its own
/// thread; its CPU is measured (the load generator must not be the bottleneck).
#[allow(clippy::too_many_arguments)]
fn spawn_sender(
    sock: Arc<UdpSocket>,
    targets: Vec<SocketAddr>,
    pps: f64,
    dur: Duration,
    epoch: Instant,
    stop: Arc<AtomicBool>,
    seq_base: u64,
) -> JoinHandle<SendReport> {
    std::thread::spawn(move || {
        let cpu0 = cpu_secs("thread-self");
        let n = targets.len().max(1);
        let period = Duration::from_secs_f64(1.0 / pps);
        let gap = period / n as u32;
        let mut buf = [0xffu8; PKT];
        let mut rep = SendReport {
            sent: 0,
            errors: 0,
            cpu_s: 0.0,
            late_max_us: 0,
        };
        let start = Instant::now() + Duration::from_millis(5);
        let rounds = (dur.as_secs_f64() * pps).round() as u64;
        'outer: for round in 0..rounds {
            for (i, dest) in targets.iter().enumerate() {
                let due = start + period * round as u32 + gap * i as u32;
                loop {
                    let now = Instant::now();
                    if now >= due {
                        rep.late_max_us = rep.late_max_us.max((now - due).as_micros() as u64);
                        break;
                    }
                    // Sleep, never spin: on 2 cores a spinning generator takes a core from
                    // the gateway. Packets due while asleep go out together on waking (their
                    // timestamps are taken at the send, so latency is not inflated).
                    std::thread::sleep(due - now);
                }
                if stop.load(Ordering::Relaxed) {
                    break 'outer;
                }
                // Sequence numbers and timestamps go on from the previous run on the same
                // streams: a restart at 0 would look like a jump and cost packets (RFC 3550
                // source validation).
                let seq = (seq_base + round) as u16;
                let ts = ((seq_base + round) as u32).wrapping_mul(160);
                fill_packet(&mut buf, i as u32, seq, ts, now_ns(epoch));
                match sock.send_to(&buf, dest) {
                    Ok(_) => rep.sent += 1,
                    Err(_) => rep.errors += 1,
                }
            }
        }
        rep.cpu_s = cpu_secs("thread-self") - cpu0;
        rep
    })
}

struct SinkReport {
    received: u64,
    foreign: u64,
    per_stream: Vec<u64>,
    hist: Vec<u64>,
    cpu_s: f64,
}

/// Receives bench packets, counts them per stream index and histograms send → receive time.
fn spawn_sink(
    sock: UdpSocket,
    streams: usize,
    epoch: Instant,
    stop: Arc<AtomicBool>,
    count: Arc<AtomicU64>,
) -> JoinHandle<SinkReport> {
    std::thread::spawn(move || {
        let cpu0 = cpu_secs("thread-self");
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        let mut rep = SinkReport {
            received: 0,
            foreign: 0,
            per_stream: vec![0; streams.max(1)],
            hist: vec![0; HIST + 1],
            cpu_s: 0.0,
        };
        let mut buf = [0u8; 2048];
        while !stop.load(Ordering::Relaxed) {
            let Ok(len) = sock.recv(&mut buf) else {
                continue;
            };
            let now = now_ns(epoch);
            if len < 28 || buf[24..28] != MAGIC.to_be_bytes() {
                rep.foreign += 1;
                continue;
            }
            let sent = u64::from_be_bytes(buf[12..20].try_into().unwrap_or([0; 8]));
            let idx = u32::from_be_bytes(buf[20..24].try_into().unwrap_or([0; 4])) as usize;
            rep.received += 1;
            count.fetch_add(1, Ordering::Relaxed);
            if let Some(c) = rep.per_stream.get_mut(idx) {
                *c += 1;
            }
            let us = (now.saturating_sub(sent) / 1000) as usize;
            rep.hist[us.min(HIST)] += 1;
        }
        rep.cpu_s = cpu_secs("thread-self") - cpu0;
        rep
    })
}

fn percentile_us(hist: &[u64], p: f64) -> Option<u64> {
    let total: u64 = hist.iter().sum();
    if total == 0 {
        return None;
    }
    let want = ((total as f64) * p).ceil().max(1.0) as u64;
    let mut acc = 0;
    for (i, c) in hist.iter().enumerate() {
        acc += c;
        if acc >= want {
            return Some(i as u64);
        }
    }
    Some(hist.len() as u64 - 1)
}

/// A measurement of one media run: packets sent into the relay / gateway, packets that came
/// out at the sinks, latencies, CPU of the system under test and of the load generator.
#[derive(Default)]
struct MediaRun {
    sent: u64,
    expected: u64,
    received: u64,
    p50_us: Option<u64>,
    p99_us: Option<u64>,
    max_us: Option<u64>,
    sut_cpu_s: f64,
    wall_s: f64,
    gen_cpu_s: f64,
    late_max_us: u64,
    /// Packets sent per stream (the next run's sequence base is this further on).
    rounds: u64,
}

impl MediaRun {
    fn lost(&self) -> i64 {
        self.expected as i64 - self.received as i64
    }
    fn cores(&self) -> f64 {
        self.sut_cpu_s / self.wall_s.max(1e-9)
    }
    fn json(&self) -> Value {
        json!({
            "packets_in": self.sent,
            "packets_expected_out": self.expected,
            "packets_out": self.received,
            "lost": self.lost(),
            "latency_p50_us": self.p50_us,
            "latency_p99_us": self.p99_us,
            "latency_max_us": self.max_us,
            "cpu_s": r3(self.sut_cpu_s),
            "wall_s": r3(self.wall_s),
            "cpu_cores": r3(self.cores()),
            "generator_cpu_s": r3(self.gen_cpu_s),
            "sender_late_max_us": self.late_max_us,
        })
    }
}

fn r3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Sends `pps` per target for `dur` from `sender`, with `sinks` (each expected to see every
/// stream once per `copies`) and the CPU of `sut` measured over the sending window.
#[allow(clippy::too_many_arguments)]
fn media_run(
    sender: Arc<UdpSocket>,
    targets: Vec<SocketAddr>,
    sinks: Vec<UdpSocket>,
    copies: u64,
    pps: f64,
    dur: Duration,
    sut: &str,
    seq_base: u64,
) -> MediaRun {
    let epoch = Instant::now();
    let stop_sinks = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let n = targets.len();
    let sink_threads: Vec<_> = sinks
        .into_iter()
        .map(|s| spawn_sink(s, n, epoch, stop_sinks.clone(), count.clone()))
        .collect();
    let stop_send = Arc::new(AtomicBool::new(false));
    let cpu = CpuWindow::start(sut);
    let sender = spawn_sender(sender, targets, pps, dur, epoch, stop_send, seq_base);
    let srep = sender.join().expect("sender thread");
    let (sut_cpu_s, wall_s) = cpu.stop();
    // Let the last packets through.
    std::thread::sleep(Duration::from_millis(300));
    stop_sinks.store(true, Ordering::Relaxed);
    let mut run = MediaRun {
        sent: srep.sent,
        expected: srep.sent * copies,
        sut_cpu_s,
        wall_s,
        gen_cpu_s: srep.cpu_s,
        late_max_us: srep.late_max_us,
        rounds: srep.sent / n.max(1) as u64,
        ..Default::default()
    };
    let mut hist = vec![0u64; HIST + 1];
    for t in sink_threads {
        let r = t.join().expect("sink thread");
        run.received += r.received;
        run.gen_cpu_s += r.cpu_s;
        let _ = (r.foreign, r.per_stream);
        for (a, b) in hist.iter_mut().zip(r.hist) {
            *a += b;
        }
    }
    run.p50_us = percentile_us(&hist, 0.50);
    run.p99_us = percentile_us(&hist, 0.99);
    run.max_us = hist.iter().rposition(|&c| c > 0).map(|i| i as u64);
    run
}

// ---------------------------------------------------------------------------------------------
// Step: loopback relay ceiling

fn step_relay(o: &Opts) -> Result<Value> {
    let secs = if o.quick { 3.0 } else { 8.0 };
    let rate = 100_000.0;
    progress(&format!(
        "relay: minimal UDP relay, {rate} pps offered for {secs} s"
    ));
    let relay_sock = udp_socket(SOCK_BUF)?;
    let relay_addr = relay_sock.local_addr()?;
    let sink = udp_socket(SOCK_BUF)?;
    let sink_addr = sink.local_addr()?;
    let stop = Arc::new(AtomicBool::new(false));
    let relay_cpu = Arc::new(AtomicU64::new(0));
    let relayed = Arc::new(AtomicU64::new(0));
    let relay = {
        let (stop, relay_cpu, relayed) = (stop.clone(), relay_cpu.clone(), relayed.clone());
        std::thread::spawn(move || {
            relay_sock
                .set_read_timeout(Some(Duration::from_millis(50)))
                .expect("timeout");
            let out = udp_socket(SOCK_BUF).expect("relay out");
            let cpu0 = cpu_secs("thread-self");
            let mut buf = [0u8; 2048];
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                if let Ok(len) = relay_sock.recv(&mut buf) {
                    if out.send_to(&buf[..len], sink_addr).is_ok() {
                        n += 1;
                    }
                }
            }
            relay_cpu.store(
                ((cpu_secs("thread-self") - cpu0) * 1e6) as u64,
                Ordering::Relaxed,
            );
            relayed.store(n, Ordering::Relaxed);
        })
    };
    // One target (the relay) at `rate` pps.
    let sender = Arc::new(udp_socket(SOCK_BUF)?);
    let mut run = media_run(
        sender,
        vec![relay_addr],
        vec![sink],
        1,
        rate,
        Duration::from_secs_f64(secs),
        "self",
        0,
    );
    stop.store(true, Ordering::Relaxed);
    relay.join().map_err(|_| anyhow!("relay thread"))?;
    let cpu = relay_cpu.load(Ordering::Relaxed) as f64 / 1e6;
    run.sut_cpu_s = cpu;
    let per_cpu_s = relayed.load(Ordering::Relaxed) as f64 / cpu.max(1e-9);
    progress(&format!(
        "relay: {} relayed, {:.0} packets per CPU-second ({:.2} µs each), p50/p99 {:?}/{:?} µs, lost {}",
        relayed.load(Ordering::Relaxed),
        per_cpu_s,
        1e6 / per_cpu_s,
        run.p50_us,
        run.p99_us,
        run.lost()
    ));
    let mut v = run.json();
    v["packets_per_cpu_s"] = json!(per_cpu_s.round());
    v["loadavg"] = json!(loadavg());
    Ok(v)
}

// ---------------------------------------------------------------------------------------------
// Step: call setup rate

async fn step_setup(o: &Opts, dir: &Path) -> Result<Value> {
    let mut rows = Vec::new();
    let hold_ms = 200;
    for (i, &rate) in o.setup_rates.iter().enumerate() {
        let sdir = dir.join(format!("setup-{rate}"));
        std::fs::create_dir_all(&sdir)?;
        let gw = Gateway::start(o, &sdir, &[]).await?;
        let rtp_dump = udp_socket(1 << 16)?;
        let calls = rate * o.setup_secs;
        let text = UAS_SHORT
            .replace("@MPORT@", &rtp_dump.local_addr()?.port().to_string())
            .replace("@HOLD_MS@", &hold_ms.to_string());
        let mut sipp = Sipp::start(&sdir, "uas", &text, &["-m", &calls.to_string()])?;
        progress(&format!(
            "setup {}/{}: {rate} calls/s for {} s ({calls} calls, sipp UAS hangs up after {hold_ms} ms), load {}",
            i + 1,
            o.setup_rates.len(),
            o.setup_secs,
            loadavg()
        ));
        let cpu = CpuWindow::start(gw.pid().to_string());
        let sipp_cpu = CpuWindow::start(sipp.proc.pid().to_string());
        let gw = Arc::new(gw);
        let sem = Arc::new(tokio::sync::Semaphore::new(128));
        let rest_fail = Arc::new(AtomicU64::new(0));
        let t0 = tokio::time::Instant::now();
        let mut tasks = Vec::with_capacity(calls as usize);
        for n in 0..calls {
            tokio::time::sleep_until(t0 + Duration::from_secs_f64(f64::from(n) / f64::from(rate)))
                .await;
            let permit = sem.clone().acquire_owned().await?;
            let (gw, fail, port) = (gw.clone(), rest_fail.clone(), sipp.port);
            tasks.push(tokio::spawn(async move {
                let id = format!("c{n}");
                match gw.post("/call/startup", &startup_body(&id, port)).await {
                    Ok((200, _)) => {}
                    _ => {
                        fail.fetch_add(1, Ordering::Relaxed);
                    }
                }
                drop(permit);
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
        let post_secs = t0.elapsed().as_secs_f64();
        // Calls end hold_ms after their answer; wait for sipp to finish (or give up).
        let done = sipp.proc.wait_exit(Duration::from_secs(40));
        let (cpu_s, wall_s) = cpu.stop();
        let (sipp_cpu_s, _) = sipp_cpu.stop();
        std::thread::sleep(Duration::from_millis(200));
        let ok = sipp.stat("SuccessfulCall(C)");
        let failed = sipp.stat("FailedCall(C)");
        let retrans = sipp.stat("Retransmissions(C)");
        // Cross-check with the gateway: of the last ≤ 1000 ended calls, how many were answered
        // and ended normally.
        let ended = gw.find_all().await.unwrap_or_default();
        let gw_ok = ended
            .iter()
            .filter(|c| c["status"] == "FINISH" && !c["establishedAt"].is_null())
            .count();
        let ratio = ok as f64 / f64::from(calls);
        let row = json!({
            "target_cps": rate,
            "calls": calls,
            "achieved_cps": r3(f64::from(calls) / post_secs),
            "rest_failures": rest_fail.load(Ordering::Relaxed),
            "sipp_successful": ok,
            "sipp_failed": failed,
            "sipp_retransmissions": retrans,
            "sipp_finished": done,
            "success_ratio": (ratio * 100000.0).round() / 100000.0,
            "gateway_last_ended": ended.len(),
            "gateway_last_ended_ok": gw_ok,
            "gateway_cpu_cores": r3(cpu_s / wall_s),
            "gateway_cpu_ms_per_call": r3(cpu_s * 1000.0 / f64::from(calls)),
            "sipp_cpu_cores": r3(sipp_cpu_s / wall_s),
            "loadavg": loadavg(),
        });
        progress(&format!(
            "setup {rate}/s: achieved {:.0}/s, success {ok}/{calls} = {:.3} % (sipp), gateway {gw_ok}/{} of last ended, retrans {retrans}, gateway CPU {:.2} ms/call",
            f64::from(calls) / post_secs,
            ratio * 100.0,
            ended.len(),
            cpu_s * 1000.0 / f64::from(calls)
        ));
        rows.push(row);
        drop(sipp);
        drop(gw);
        if ratio < 0.999 {
            break;
        }
    }
    Ok(Value::Array(rows))
}

// ---------------------------------------------------------------------------------------------
// Step: concurrent calls with media and readers

struct Established {
    gw: Gateway,
    _uas: Sipp,
    ids: Vec<String>,
    targets: Vec<SocketAddr>,
    rss_base_kib: u64,
    rss_idle_kib: u64,
    sender: Arc<UdpSocket>,
    /// Packets sent so far per stream (RTP sequence base of the next run).
    seq: u64,
}

/// Starts a gateway and `n` calls towards a sipp UAS; the UAS's SDP points the gateway's
/// RTP at the bench's sender socket (so latching keeps it there).
async fn establish(o: &Opts, dir: &Path, n: usize) -> Result<Established> {
    std::fs::create_dir_all(dir)?;
    let gw = Gateway::start(o, dir, &[]).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_base_kib = rss_kib(gw.pid());
    let sender = Arc::new(udp_socket(SOCK_BUF)?);
    let uas = Sipp::start(
        dir,
        "uas",
        &UAS_HOLD.replace("@MPORT@", &sender.local_addr()?.port().to_string()),
        &[],
    )?;
    let ids: Vec<String> = (0..n).map(|i| format!("m{i}")).collect();
    let sem = Arc::new(tokio::sync::Semaphore::new(32));
    let gw = Arc::new(gw);
    let mut tasks = Vec::new();
    for id in &ids {
        let permit = sem.clone().acquire_owned().await?;
        let (gw, id, port) = (gw.clone(), id.clone(), uas.port);
        tasks.push(tokio::spawn(async move {
            let r = gw.post("/call/startup", &startup_body(&id, port)).await;
            drop(permit);
            r
        }));
        // ≈ 200 calls/s: well under the setup limit, so none is lost to the setup itself.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for t in tasks {
        let (s, v) = t.await??;
        if s != 200 {
            bail!("call/startup: {s} {v}");
        }
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let calls = loop {
        let all = gw.find_all().await?;
        let est = all.iter().filter(|c| c["status"] == "ESTABLISHED").count();
        if est >= n {
            break all;
        }
        if Instant::now() > deadline {
            bail!("only {est}/{n} calls established");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let mut by_id = HashMap::new();
    for c in &calls {
        if let (Some(id), Some(port)) = (
            c["callId"].as_str(),
            c["legs"][0]["tracks"][0]["localRtpPort"].as_u64(),
        ) {
            by_id.insert(id.to_string(), port as u16);
        }
    }
    let targets = ids
        .iter()
        .map(|id| {
            by_id
                .get(id)
                .map(|p| SocketAddr::from(([127, 0, 0, 1], *p)))
                .ok_or_else(|| anyhow!("no RTP port for {id}"))
        })
        .collect::<Result<Vec<_>>>()?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_idle_kib = rss_kib(gw.pid());
    let gw = Arc::try_unwrap(gw).map_err(|_| anyhow!("gateway still shared"))?;
    // Prime every stream (the gateway latches on the first packets and validates the source
    // over the first two, RFC 3550) so that measured runs start on running streams.
    let (s2, t2) = (sender.clone(), targets.clone());
    let prime = tokio::task::spawn_blocking(move || {
        media_run(
            s2,
            t2,
            Vec::new(),
            0,
            50.0,
            Duration::from_millis(500),
            "self",
            0,
        )
    })
    .await?;
    Ok(Established {
        seq: prime.rounds,
        gw,
        _uas: uas,
        ids,
        targets,
        rss_base_kib,
        rss_idle_kib,
        sender,
    })
}

/// Starts SIPREC instance `instance` on every call, recorded to `srs_port`; waits until all
/// are RECORDING.
async fn start_siprec(gw: &Gateway, ids: &[String], instance: &str, srs_port: u16) -> Result<()> {
    let sem = Arc::new(tokio::sync::Semaphore::new(32));
    let mut tasks = Vec::new();
    for id in ids {
        let permit = sem.clone().acquire_owned().await?;
        let body =
            json!({"callId": id, "srs": format!("sip:127.0.0.1:{srs_port}"), "instance": instance});
        let http = gw.http.clone();
        let url = format!("{}/rest-api/siprec/start", gw.rest);
        tasks.push(tokio::spawn(async move {
            let r = http.post(url).json(&body).send().await;
            drop(permit);
            r.map(|r| r.status().as_u16())
        }));
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    for t in tasks {
        let s = t.await??;
        if s != 200 {
            bail!("siprec/start: {s}");
        }
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    for id in ids {
        loop {
            let (_, v) = gw.post("/siprec/find", &json!({"callId": id})).await?;
            let ok = v.as_array().is_some_and(|a| {
                a.iter()
                    .any(|s| s["instance"] == instance && s["state"] == "RECORDING")
            });
            if ok {
                break;
            }
            if Instant::now() > deadline {
                bail!("siprec {instance} on {id} never RECORDING: {v}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

async fn step_calls(o: &Opts, dir: &Path) -> Result<(Vec<Value>, Vec<Value>)> {
    let mut rows = Vec::new();
    let mut idle = Vec::new();
    let max_readers = o.readers.iter().copied().max().unwrap_or(0);
    for &n in &o.calls {
        progress(&format!(
            "calls: establishing {n} calls (no RTP yet), load {}",
            loadavg()
        ));
        let cdir = dir.join(format!("calls-{n}"));
        let mut est = establish(o, &cdir, n).await?;
        let idle_per_call = (est.rss_idle_kib.saturating_sub(est.rss_base_kib)) as f64 / n as f64;
        progress(&format!(
            "calls {n}: RSS {} KiB idle gateway → {} KiB with {n} established calls = {:.1} KiB per idle call",
            est.rss_base_kib, est.rss_idle_kib, idle_per_call
        ));
        idle.push(json!({
            "calls": n,
            "rss_base_kib": est.rss_base_kib,
            "rss_established_kib": est.rss_idle_kib,
            "rss_per_idle_call_kib": r3(idle_per_call),
        }));
        // One SRS (sipp) and one sink socket per reader instance.
        let mut srs = Vec::new();
        let mut sinks = Vec::new();
        for r in 0..max_readers {
            let sink = udp_socket(SOCK_BUF)?;
            let text = SRS.replace("@P1@", &sink.local_addr()?.port().to_string());
            srs.push(Sipp::start(&cdir, &format!("srs{r}"), &text, &[])?);
            sinks.push(sink);
        }
        let mut active = 0;
        let mut readers = o.readers.clone();
        readers.sort_unstable();
        for &r in &readers {
            while active < r {
                progress(&format!(
                    "calls {n}: starting SIPREC reader {active} on every call"
                ));
                start_siprec(&est.gw, &est.ids, &format!("r{active}"), srs[active].port).await?;
                active += 1;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            let load0 = loadavg();
            progress(&format!(
                "calls {n}, {r} readers: sending {n}×50 pps for {:.0} s, load {load0}",
                o.hold.as_secs_f64()
            ));
            let rss0 = rss_kib(est.gw.pid());
            let drops0 = est.gw.reader_drops().await;
            let my_sinks = sinks[..r]
                .iter()
                .map(|s| s.try_clone())
                .collect::<std::io::Result<Vec<_>>>()?;
            let pid = est.gw.pid().to_string();
            let (sender, targets, hold) = (est.sender.clone(), est.targets.clone(), o.hold);
            let seq = est.seq;
            let run = tokio::task::spawn_blocking(move || {
                media_run(sender, targets, my_sinks, r as u64, 50.0, hold, &pid, seq)
            })
            .await?;
            est.seq += run.rounds;
            let rss1 = rss_kib(est.gw.pid());
            let mut v = run.json();
            v["gateway_reader_drops"] = json!(est.gw.reader_drops().await.saturating_sub(drops0));
            v["calls"] = json!(n);
            v["readers"] = json!(r);
            v["rss_kib"] = json!(rss1);
            v["rss_per_call_kib"] =
                json!(r3(rss1.saturating_sub(est.rss_base_kib) as f64 / n as f64));
            v["rss_growth_during_run_kib"] = json!(rss1 as i64 - rss0 as i64);
            let pkts = run.sent + run.received;
            v["cpu_us_per_packet_in_out"] = json!(r3(run.sut_cpu_s * 1e6 / pkts.max(1) as f64));
            v["calls_per_core"] = json!((n as f64 / run.cores().max(1e-9)).round());
            v["loadavg"] = json!(format!("{load0} → {}", loadavg()));
            progress(&format!(
                "calls {n}, {r} readers: gateway {:.1} % of a core, {:.0} calls/core, lost {} of {}, p50/p99 {:?}/{:?} µs, RSS {:.1} KiB/call, generator {:.1} % of a core",
                run.cores() * 100.0,
                n as f64 / run.cores().max(1e-9),
                run.lost(),
                run.expected,
                run.p50_us,
                run.p99_us,
                rss1.saturating_sub(est.rss_base_kib) as f64 / n as f64,
                run.gen_cpu_s / run.wall_s * 100.0
            ));
            rows.push(v);
        }
        drop(srs);
        drop(est);
    }
    Ok((rows, idle))
}

// ---------------------------------------------------------------------------------------------
// Step: fan-out (one call, K SIPREC readers)

async fn step_fanout(o: &Opts, dir: &Path) -> Result<Vec<Value>> {
    let mut rows = Vec::new();
    let secs = if o.quick { 5.0 } else { 15.0 };
    for &k in &o.fanout {
        let fdir = dir.join(format!("fanout-{k}"));
        let est = establish(o, &fdir, 1).await?;
        let sink = udp_socket(SOCK_BUF)?;
        let text = SRS.replace("@P1@", &sink.local_addr()?.port().to_string());
        let srs = Sipp::start(&fdir, "srs", &text, &[])?;
        progress(&format!(
            "fanout {k}: starting {k} SIPREC readers on one call"
        ));
        let t0 = Instant::now();
        let sem = Arc::new(tokio::sync::Semaphore::new(16));
        let mut tasks = Vec::new();
        for r in 0..k {
            let permit = sem.clone().acquire_owned().await?;
            let body = json!({"callId": est.ids[0], "srs": format!("sip:127.0.0.1:{}", srs.port), "instance": format!("f{r}")});
            let http = est.gw.http.clone();
            let url = format!("{}/rest-api/siprec/start", est.gw.rest);
            tasks.push(tokio::spawn(async move {
                let r = http.post(url).json(&body).send().await;
                drop(permit);
                r.map(|r| r.status().as_u16())
            }));
        }
        for t in tasks {
            let s = t.await??;
            if s != 200 {
                bail!("siprec/start (fan-out {k}): {s}");
            }
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (_, v) = est
                .gw
                .post("/siprec/find", &json!({"callId": est.ids[0]}))
                .await?;
            let rec = v.as_array().map_or(0, |a| {
                a.iter().filter(|s| s["state"] == "RECORDING").count()
            });
            if rec >= k {
                break;
            }
            if Instant::now() > deadline {
                bail!("fan-out {k}: only {rec} readers recording");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let setup_s = t0.elapsed().as_secs_f64();
        // Offer 100 k packets out per second, the relay step's load, so that both are measured
        // at the same packet rate (at least 50 packets in per second).
        let pps = (100_000.0 / k as f64).max(50.0);
        progress(&format!(
            "fanout {k}: {k} readers up in {setup_s:.1} s; sending {pps:.0} pps in for {secs} s, load {}",
            loadavg()
        ));
        let pid = est.gw.pid().to_string();
        let drops0 = est.gw.reader_drops().await;
        let sender = est.sender.clone();
        let targets = est.targets.clone();
        let seq = est.seq;
        let run = tokio::task::spawn_blocking(move || {
            media_run(
                sender,
                targets,
                vec![sink],
                k as u64,
                pps,
                Duration::from_secs_f64(secs),
                &pid,
                seq,
            )
        })
        .await?;
        let out_per_cpu = run.received as f64 / run.sut_cpu_s.max(1e-9);
        let drops = est.gw.reader_drops().await.saturating_sub(drops0);
        let mut v = run.json();
        v["gateway_reader_drops"] = json!(drops);
        v["readers"] = json!(k);
        v["pps_in"] = json!(pps);
        v["packets_out_per_s"] = json!((run.received as f64 / run.wall_s).round());
        v["packets_out_per_cpu_s"] = json!(out_per_cpu.round());
        v["loadavg"] = json!(loadavg());
        progress(&format!(
            "fanout {k}: {:.0} packets out/s, {:.0} per CPU-second, gateway {:.1} % of a core, lost {} of {} ({drops} dropped by the gateway's reader queues), p50/p99 {:?}/{:?} µs",
            run.received as f64 / run.wall_s,
            out_per_cpu,
            run.cores() * 100.0,
            run.lost(),
            run.expected,
            run.p50_us,
            run.p99_us
        ));
        rows.push(v);
        drop(srs);
        drop(est);
    }
    Ok(rows)
}

// ---------------------------------------------------------------------------------------------
// Step: rtpengine (ng protocol)

fn bencode(dict: &[(&str, &str)]) -> Vec<u8> {
    let mut out = b"d".to_vec();
    let mut items = dict.to_vec();
    items.sort_by(|a, b| a.0.cmp(b.0));
    for (k, v) in items {
        out.extend_from_slice(format!("{}:{}{}:", k.len(), k, v.len()).as_bytes());
        out.extend_from_slice(v.as_bytes());
    }
    out.push(b'e');
    out
}

/// The value of a string key in a flat bencoded reply (enough for `result` and `sdp`).
fn bget(reply: &[u8], key: &str) -> Option<String> {
    let pat = format!("{}:{}", key.len(), key);
    let pos = reply.windows(pat.len()).position(|w| w == pat.as_bytes())? + pat.len();
    let rest = &reply[pos..];
    let colon = rest.iter().position(|&b| b == b':')?;
    let len: usize = std::str::from_utf8(&rest[..colon]).ok()?.parse().ok()?;
    let s = rest.get(colon + 1..colon + 1 + len)?;
    Some(String::from_utf8_lossy(s).into_owned())
}

fn ng(sock: &UdpSocket, dest: SocketAddr, cookie: &str, dict: &[(&str, &str)]) -> Result<Vec<u8>> {
    let mut msg = format!("{cookie} ").into_bytes();
    msg.extend(bencode(dict));
    sock.send_to(&msg, dest)?;
    let mut buf = vec![0u8; 65536];
    loop {
        let n = sock.recv(&mut buf).context("rtpengine ng reply")?;
        let reply = &buf[..n];
        if reply.starts_with(format!("{cookie} ").as_bytes()) {
            let body = reply[cookie.len() + 1..].to_vec();
            if bget(&body, "result").as_deref() != Some("ok") {
                bail!("rtpengine: {}", String::from_utf8_lossy(&body));
            }
            return Ok(body);
        }
    }
}

fn sdp_port(sdp: &str) -> Option<u16> {
    sdp.lines()
        .find_map(|l| l.strip_prefix("m=audio "))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn step_rtpengine(o: &Opts, dir: &Path, counts: &[usize]) -> Result<Vec<Value>> {
    let mut rows = Vec::new();
    for &n in counts {
        let rdir = dir.join(format!("rtpengine-{n}"));
        std::fs::create_dir_all(&rdir)?;
        let ng_port = free_port();
        let child = Command::new("rtpengine")
            .args(["--table=-1", "--interface=127.0.0.1"])
            .arg(format!("--listen-ng=127.0.0.1:{ng_port}"))
            .args(["--foreground", "--log-stderr", "--log-level=4"])
            .args(["--port-min=30000", "--port-max=39999"])
            .arg(format!("--pidfile={}", rdir.join("pid").display()))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(rdir.join("rtpengine.log"))?)
            .spawn()
            .context("start rtpengine (apt-get install rtpengine-daemon; scripts/deps.sh bench)")?;
        let rtpe = Proc { child };
        std::thread::sleep(Duration::from_millis(1000));
        let ctl = UdpSocket::bind("127.0.0.1:0")?;
        ctl.set_read_timeout(Some(Duration::from_secs(5)))?;
        let ng_addr: SocketAddr = ([127, 0, 0, 1], ng_port).into();
        let sender = Arc::new(udp_socket(SOCK_BUF)?);
        let sink = udp_socket(SOCK_BUF)?;
        let (a_port, b_port) = (sender.local_addr()?.port(), sink.local_addr()?.port());
        let sdp = |port: u16| {
            format!(
                "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n"
            )
        };
        let rss_base = rss_kib(rtpe.pid());
        let mut targets = Vec::with_capacity(n);
        for i in 0..n {
            let cid = format!("bench-{i}");
            let offer = ng(
                &ctl,
                ng_addr,
                &format!("o{i}"),
                &[
                    ("command", "offer"),
                    ("call-id", &cid),
                    ("from-tag", "a"),
                    ("sdp", &sdp(a_port)),
                ],
            )?;
            let _ = bget(&offer, "sdp").and_then(|s| sdp_port(&s));
            let answer = ng(
                &ctl,
                ng_addr,
                &format!("a{i}"),
                &[
                    ("command", "answer"),
                    ("call-id", &cid),
                    ("from-tag", "a"),
                    ("to-tag", "b"),
                    ("sdp", &sdp(b_port)),
                ],
            )?;
            // The answer's SDP goes to A: A sends to that port, rtpengine relays to B (the sink).
            let p = bget(&answer, "sdp")
                .and_then(|s| sdp_port(&s))
                .ok_or_else(|| anyhow!("no port in rtpengine's answer"))?;
            targets.push(SocketAddr::from(([127, 0, 0, 1], p)));
        }
        std::thread::sleep(Duration::from_millis(500));
        let rss_calls = rss_kib(rtpe.pid());
        progress(&format!(
            "rtpengine {n}: {n} one-way G.711 streams for {:.0} s, load {}",
            o.hold.as_secs_f64(),
            loadavg()
        ));
        let run = media_run(
            sender,
            targets,
            vec![sink],
            1,
            50.0,
            o.hold,
            &rtpe.pid().to_string(),
            0,
        );
        let mut v = run.json();
        v["streams"] = json!(n);
        v["rss_per_call_kib"] = json!(r3(rss_calls.saturating_sub(rss_base) as f64 / n as f64));
        let pkts = run.sent + run.received;
        v["cpu_us_per_packet_in_out"] = json!(r3(run.sut_cpu_s * 1e6 / pkts.max(1) as f64));
        v["cpu_us_per_relayed_packet"] =
            json!(r3(run.sut_cpu_s * 1e6 / run.received.max(1) as f64));
        v["loadavg"] = json!(loadavg());
        progress(&format!(
            "rtpengine {n}: {:.1} % of a core, {:.2} µs per relayed packet, lost {} of {}, p50/p99 {:?}/{:?} µs",
            run.cores() * 100.0,
            run.sut_cpu_s * 1e6 / run.received.max(1) as f64,
            run.lost(),
            run.expected,
            run.p50_us,
            run.p99_us
        ));
        for i in 0..n {
            let cid = format!("bench-{i}");
            let _ = ng(
                &ctl,
                ng_addr,
                &format!("d{i}"),
                &[("command", "delete"), ("call-id", &cid), ("from-tag", "a")],
            );
        }
        rows.push(v);
        drop(rtpe);
    }
    Ok(rows)
}

// ---------------------------------------------------------------------------------------------
// Report

fn progress(line: &str) {
    eprintln!("[bench {}] {line}", chrono_now());
}

fn chrono_now() -> String {
    let f = time::macros::format_description!("[hour]:[minute]:[second]");
    time::OffsetDateTime::now_utc()
        .format(&f)
        .unwrap_or_default()
}

fn opt(v: &Value) -> String {
    match v {
        Value::Null => "–".into(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn markdown(r: &Value) -> String {
    let mut md = String::new();
    let m = &r["machine"];
    let _ = writeln!(
        md,
        "### sipstream bench, {} UTC\n\nMachine: {} cores ({}), {} GiB, Linux {}; load average at start {}, at end {}.\n",
        opt(&r["date"]),
        opt(&m["cores"]),
        opt(&m["cpu"]),
        opt(&m["mem_gib"]),
        opt(&m["kernel"]),
        opt(&m["loadavg_start"]),
        opt(&m["loadavg_end"])
    );
    if let Some(p) = r["options"]["gateway_properties"]
        .as_array()
        .filter(|p| !p.is_empty())
    {
        let p: Vec<String> = p.iter().map(opt).collect();
        let _ = writeln!(md, "Gateway properties: `{}`.\n", p.join("`, `"));
    }
    if let Some(x) = r.get("relay") {
        let _ = writeln!(
            md,
            "**Loopback relay ceiling** (minimal Rust UDP relay, one thread): {} packets per CPU-second ({} µs per packet), p50/p99 {}/{} µs.\n",
            opt(&x["packets_per_cpu_s"]),
            x["packets_per_cpu_s"].as_f64().map_or("–".into(), |p| format!("{:.2}", 1e6 / p)),
            opt(&x["latency_p50_us"]),
            opt(&x["latency_p99_us"]),
        );
    }
    if let Some(rows) = r.get("setup").and_then(Value::as_array) {
        let _ = writeln!(md, "**Call setup rate** (sipp UAS answers at once, hangs up 200 ms after the ACK; success = sipp's SuccessfulCall / calls placed)\n");
        let _ = writeln!(md, "| target cps | achieved cps | calls | success (sipp) | gateway: ok of last ended | sipp retrans | gateway CPU (cores) | gateway ms CPU/call | load |\n|---|---|---|---|---|---|---|---|---|");
        for x in rows {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {:.3} % | {}/{} | {} | {} | {} | {} |",
                opt(&x["target_cps"]),
                x["achieved_cps"]
                    .as_f64()
                    .map_or("–".into(), |v| format!("{v:.0}")),
                opt(&x["calls"]),
                x["success_ratio"].as_f64().unwrap_or(0.0) * 100.0,
                opt(&x["gateway_last_ended_ok"]),
                opt(&x["gateway_last_ended"]),
                opt(&x["sipp_retransmissions"]),
                opt(&x["gateway_cpu_cores"]),
                opt(&x["gateway_cpu_ms_per_call"]),
                opt(&x["loadavg"]),
            );
        }
        md.push('\n');
    }
    if let Some(rows) = r.get("idle").and_then(Value::as_array) {
        let _ = writeln!(md, "**RSS per idle established call** (no RTP in; the gateway still sends silence)\n\n| calls | RSS before (KiB) | RSS established (KiB) | KiB per call |\n|---|---|---|---|");
        for x in rows {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} |",
                opt(&x["calls"]),
                opt(&x["rss_base_kib"]),
                opt(&x["rss_established_kib"]),
                opt(&x["rss_per_idle_call_kib"])
            );
        }
        md.push('\n');
    }
    if let Some(rows) = r.get("calls").and_then(Value::as_array) {
        let _ = writeln!(md, "**Concurrent G.711 calls** (50 pps in per call from this tool; readers are SIPREC sessions to sipp SRSs whose media goes to this tool's sinks)\n\n| calls | readers | gateway CPU (cores) | calls per core | µs CPU per packet in+out | packets in | out (expected) | lost | p50 µs | p99 µs | max µs | RSS KiB/call | generator CPU (cores) | load |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
        for x in rows {
            let wall = x["wall_s"].as_f64().unwrap_or(1.0);
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} ({}) | {} | {} | {} | {} | {} | {:.2} | {} |",
                opt(&x["calls"]),
                opt(&x["readers"]),
                opt(&x["cpu_cores"]),
                opt(&x["calls_per_core"]),
                opt(&x["cpu_us_per_packet_in_out"]),
                opt(&x["packets_in"]),
                opt(&x["packets_out"]),
                opt(&x["packets_expected_out"]),
                opt(&x["lost"]),
                opt(&x["latency_p50_us"]),
                opt(&x["latency_p99_us"]),
                opt(&x["latency_max_us"]),
                opt(&x["rss_per_call_kib"]),
                x["generator_cpu_s"].as_f64().unwrap_or(0.0) / wall,
                opt(&x["loadavg"]),
            );
        }
        md.push('\n');
    }
    if let Some(rows) = r.get("fanout").and_then(Value::as_array) {
        let _ = writeln!(md, "**Fan-out** (one call, K SIPREC readers, one sink; lost = expected − received, of which the gateway's reader queues dropped the number in brackets)\n\n| readers | pps in | packets out/s | gateway CPU (cores) | packets out per CPU-second | % of relay ceiling | lost | p50 µs | p99 µs |\n|---|---|---|---|---|---|---|---|---|");
        let ceiling = r["relay"]["packets_per_cpu_s"].as_f64();
        for x in rows {
            let pct = match (x["packets_out_per_cpu_s"].as_f64(), ceiling) {
                (Some(p), Some(c)) => format!("{:.0} %", 100.0 * p / c),
                _ => "–".into(),
            };
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} ({}) | {} | {} |",
                opt(&x["readers"]),
                opt(&x["pps_in"]),
                opt(&x["packets_out_per_s"]),
                opt(&x["cpu_cores"]),
                opt(&x["packets_out_per_cpu_s"]),
                pct,
                opt(&x["lost"]),
                opt(&x["gateway_reader_drops"]),
                opt(&x["latency_p50_us"]),
                opt(&x["latency_p99_us"]),
            );
        }
        md.push('\n');
    }
    if let Some(rows) = r.get("rtpengine").and_then(Value::as_array) {
        let _ = writeln!(md, "**rtpengine** (userspace, same one-way G.711 streams, 50 pps each, to one sink)\n\n| streams | CPU (cores) | µs CPU per relayed packet | µs CPU per packet in+out | lost | p50 µs | p99 µs | RSS KiB/call |\n|---|---|---|---|---|---|---|---|");
        for x in rows {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                opt(&x["streams"]),
                opt(&x["cpu_cores"]),
                opt(&x["cpu_us_per_relayed_packet"]),
                opt(&x["cpu_us_per_packet_in_out"]),
                opt(&x["lost"]),
                opt(&x["latency_p50_us"]),
                opt(&x["latency_p99_us"]),
                opt(&x["rss_per_call_kib"]),
            );
        }
        md.push('\n');
    }
    if let Some(rows) = r.get("agents").and_then(Value::as_array) {
        agents::markdown(rows, &mut md);
    }
    if let Some(rows) = r.get("exchanges").and_then(Value::as_array) {
        exchanges::markdown(rows, &mut md);
    }
    if let Some(rows) = r.get("targets").and_then(Value::as_array) {
        let _ = writeln!(
            md,
            "**Targets (issue 7; media streams: issue 17)**\n\n| target | measured | verdict |\n|---|---|---|"
        );
        for x in rows {
            let _ = writeln!(
                md,
                "| {} | {} | {} |",
                opt(&x["target"]),
                opt(&x["measured"]),
                opt(&x["verdict"])
            );
        }
        md.push('\n');
    }
    md
}

fn verdict(ok: bool, ratio: f64) -> String {
    if ok {
        format!("met ({ratio:.2}× the target)")
    } else {
        format!("missed ({ratio:.2}× the target)")
    }
}

/// Compares the run's figures with issue 7's targets.
fn targets(r: &Value) -> Vec<Value> {
    let mut out = Vec::new();
    let calls = r["calls"].as_array().cloned().unwrap_or_default();
    // ≥ 1000 G.711 calls per core with one reader, zero loss, p99 < 1 ms.
    let one: Vec<&Value> = calls.iter().filter(|x| x["readers"] == 1).collect();
    // The best clean row; else the largest run that was not queueing (p50 < 1 ms): a
    // starved gateway batches and looks cheaper per packet than it is.
    let clean = |x: &Value| {
        x["lost"].as_i64() == Some(0) && x["latency_p99_us"].as_u64().is_some_and(|p| p < 1000)
    };
    let unqueued = |x: &Value| x["latency_p50_us"].as_u64().is_some_and(|p| p < 1000);
    if let Some(best) = one
        .iter()
        .filter(|x| clean(x))
        .max_by_key(|x| x["calls"].as_u64())
        .or_else(|| {
            one.iter()
                .filter(|x| unqueued(x))
                .max_by_key(|x| x["calls"].as_u64())
        })
        .or_else(|| one.iter().min_by_key(|x| x["calls"].as_u64()))
    {
        let cpc = best["calls_per_core"].as_f64().unwrap_or(0.0);
        let v = if !clean(best) {
            format!(
                "missed: lost {}, p99 {} µs (≥ 1 ms); {:.2}× the calls per core",
                opt(&best["lost"]),
                opt(&best["latency_p99_us"]),
                cpc / 1000.0
            )
        } else {
            verdict(cpc >= 1000.0, cpc / 1000.0)
        };
        out.push(json!({
            "target": "≥ 1000 G.711 calls per core, 1 reader, 0 loss, p99 < 1 ms",
            "measured": format!("{} calls at {} cores → {:.0} calls/core (extrapolated), lost {}, p50/p99 {}/{} µs",
                opt(&best["calls"]), opt(&best["cpu_cores"]), cpc, opt(&best["lost"]), opt(&best["latency_p50_us"]), opt(&best["latency_p99_us"])),
            "verdict": v,
        }));
    }
    // Fan-out ≥ 70 % of the relay ceiling.
    if let (Some(ceiling), Some(rows)) = (
        r["relay"]["packets_per_cpu_s"].as_f64(),
        r["fanout"].as_array(),
    ) {
        for x in rows {
            let p = x["packets_out_per_cpu_s"].as_f64().unwrap_or(0.0);
            let ratio = p / ceiling;
            out.push(json!({
                "target": format!("fan-out to {} readers ≥ 70 % of the relay ceiling", opt(&x["readers"])),
                "measured": format!("{p:.0} / {ceiling:.0} = {:.0} %", ratio * 100.0),
                "verdict": verdict(ratio >= 0.7, ratio / 0.7),
            }));
        }
    }
    // CPU per relayed packet ≤ 0.67× rtpengine's.
    if let Some(rt) = r["rtpengine"].as_array() {
        for e in rt {
            let n = e["streams"].as_u64();
            let Some(g) = one.iter().find(|x| x["calls"].as_u64() == n) else {
                continue;
            };
            let gw_us = g["cpu_s"].as_f64().unwrap_or(0.0) * 1e6
                / g["packets_out"].as_f64().unwrap_or(1.0).max(1.0);
            let rt_us = e["cpu_us_per_relayed_packet"].as_f64().unwrap_or(0.0);
            let ratio = gw_us / rt_us.max(1e-9);
            out.push(json!({
                "target": format!("CPU per relayed packet ≤ 0.67× rtpengine ({} streams)", n.unwrap_or(0)),
                "measured": format!("gateway {gw_us:.2} µs vs rtpengine {rt_us:.2} µs = {ratio:.2}×"),
                "verdict": verdict(ratio <= 0.67, 0.67 / ratio.max(1e-9)),
            }));
        }
    }
    // Call setup ≥ 1000 cps at ≥ 99.9 %.
    if let Some(rows) = r["setup"].as_array() {
        let best = rows
            .iter()
            .filter(|x| x["success_ratio"].as_f64().unwrap_or(0.0) >= 0.999)
            .filter_map(|x| x["achieved_cps"].as_f64())
            .fold(0.0, f64::max);
        out.push(json!({
            "target": "call setup ≥ 1000 calls/s at ≥ 99.9 % success",
            "measured": format!("{best:.0} calls/s at ≥ 99.9 %"),
            "verdict": verdict(best >= 1000.0, best / 1000.0),
        }));
    }
    // RSS ≤ 64 KiB per idle call.
    if let Some(rows) = r["idle"].as_array() {
        if let Some(x) = rows.iter().max_by_key(|x| x["calls"].as_u64()) {
            let kib = x["rss_per_idle_call_kib"].as_f64().unwrap_or(0.0);
            out.push(json!({
                "target": "RSS ≤ 64 KiB per idle established call",
                "measured": format!("{kib:.1} KiB ({} calls)", opt(&x["calls"])),
                "verdict": verdict(kib <= 64.0, 64.0 / kib.max(1e-9)),
            }));
        }
    }
    // Media streams (issue 17): frame and playback latency, streams per core.
    if let Some(rows) = r["agents"].as_array() {
        out.extend(agents::targets(rows));
    }
    out
}

/// The plot: gateway CPU (cores) against concurrent calls, one line per reader count, and
/// rtpengine relaying the same number of one-way streams. `None` without call rows.
/// One line of the plot: label, colour, (x, y) points.
type Series = (String, &'static str, Vec<(f64, f64)>);

fn svg_plot(r: &Value) -> Option<String> {
    let mut series: Vec<Series> = Vec::new();
    let calls = r["calls"].as_array()?;
    let colours = ["#1b6ac9", "#d9480f", "#2b8a3e", "#862e9c"];
    let mut readers: Vec<u64> = calls.iter().filter_map(|x| x["readers"].as_u64()).collect();
    readers.sort_unstable();
    readers.dedup();
    for (i, k) in readers.iter().enumerate() {
        let mut pts: Vec<(f64, f64)> = calls
            .iter()
            .filter(|x| x["readers"].as_u64() == Some(*k))
            .filter_map(|x| Some((x["calls"].as_f64()?, x["cpu_cores"].as_f64()?)))
            .collect();
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        let label = format!("sipstream, {k} reader{}", if *k == 1 { "" } else { "s" });
        series.push((label, colours[i % colours.len()], pts));
    }
    if let Some(rt) = r["rtpengine"].as_array() {
        let mut pts: Vec<(f64, f64)> = rt
            .iter()
            .filter_map(|x| Some((x["streams"].as_f64()?, x["cpu_cores"].as_f64()?)))
            .collect();
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        series.push(("rtpengine (one-way relay)".into(), "#495057", pts));
    }
    let all = series.iter().flat_map(|s| s.2.iter());
    let (x_max, y_max) = all.fold((0.0f64, 0.0f64), |(x, y), p| (x.max(p.0), y.max(p.1)));
    if x_max <= 0.0 {
        return None;
    }
    let y_max = (y_max * 1.15).max(0.1);
    let (w, h, left, bottom, top, right) = (720.0, 420.0, 60.0, 50.0, 50.0, 230.0);
    let px = |x: f64| left + x / x_max * (w - left - right);
    let py = |y: f64| h - bottom - y / y_max * (h - bottom - top);
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{left}\" y=\"22\" font-size=\"14\">CPU against concurrent G.711 calls (50 pps each), {} cores, {}</text>\n\
         <text x=\"{left}\" y=\"38\" fill=\"#495057\">{}</text>\n",
        opt(&r["machine"]["cores"]),
        opt(&r["date"]),
        r["options"]["gateway_properties"]
            .as_array()
            .filter(|p| !p.is_empty())
            .map(|p| format!("gateway: {}", p.iter().map(opt).collect::<Vec<_>>().join(" ")))
            .unwrap_or_default()
    );
    for i in 0..=5 {
        let y = y_max * f64::from(i) / 5.0;
        let _ = writeln!(
            out,
            "<line x1=\"{left}\" x2=\"{}\" y1=\"{py:.1}\" y2=\"{py:.1}\" stroke=\"#dee2e6\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{y:.2}</text>",
            w - right,
            left - 6.0,
            py(y) + 4.0,
            py = py(y)
        );
        let x = x_max * f64::from(i) / 5.0;
        let _ = writeln!(
            out,
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{x:.0}</text>",
            px(x),
            h - bottom + 18.0
        );
    }
    let _ = writeln!(
        out,
        "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">concurrent calls</text><text x=\"14\" y=\"{:.1}\" transform=\"rotate(-90 14 {:.1})\" text-anchor=\"middle\">cores (1.0 = one core busy)</text>",
        px(x_max / 2.0),
        h - 12.0,
        h / 2.0,
        h / 2.0
    );
    for (i, (label, colour, pts)) in series.iter().enumerate() {
        let line: Vec<String> = pts
            .iter()
            .map(|(x, y)| format!("{:.1},{:.1}", px(*x), py(*y)))
            .collect();
        let _ = writeln!(
            out,
            "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\" points=\"{}\"/>",
            line.join(" ")
        );
        for (x, y) in pts {
            let _ = writeln!(
                out,
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{colour}\"/>",
                px(*x),
                py(*y)
            );
        }
        let ly = top + 10.0 + i as f64 * 20.0;
        let _ = writeln!(
            out,
            "<line x1=\"{}\" x2=\"{}\" y1=\"{ly}\" y2=\"{ly}\" stroke=\"{colour}\" stroke-width=\"2\"/><text x=\"{}\" y=\"{}\">{label}</text>",
            w - right + 12.0,
            w - right + 34.0,
            w - right + 40.0,
            ly + 4.0
        );
    }
    out.push_str("</svg>\n");
    Some(out)
}

fn write_report(o: &Opts, r: &mut Value) -> Result<()> {
    r["machine"]["loadavg_end"] = json!(loadavg());
    r["targets"] = Value::Array(targets(r));
    let md = markdown(r);
    if let Some(parent) = o.out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&o.out, serde_json::to_string_pretty(r)?)?;
    let md_path = o.out.with_extension("md");
    std::fs::write(&md_path, &md)?;
    if let Some(svg) = svg_plot(r) {
        std::fs::write(o.out.with_extension("svg"), svg)?;
    }
    println!("{md}");
    progress(&format!(
        "wrote {} and {}",
        o.out.display(),
        md_path.display()
    ));
    Ok(())
}

fn main() -> Result<()> {
    let o = parse_opts();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let dir = std::env::temp_dir().join(format!("sipstream-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let date = time::OffsetDateTime::now_utc()
        .format(&time::macros::format_description!(
            "[year]-[month]-[day] [hour]:[minute]"
        ))
        .unwrap_or_default();
    let mut r = json!({
        "date": date,
        "machine": machine(),
        "options": {
            "quick": o.quick,
            "hold_s": o.hold.as_secs_f64(),
            "gateway": o.gateway.display().to_string(),
            "gateway_log_level": o.log_level,
            "gateway_properties": o.sets.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
        },
    });
    progress(&format!(
        "{} cores, load {}, steps {:?}, output {}",
        r["machine"]["cores"],
        loadavg(),
        o.steps,
        o.out.display()
    ));
    let has = |s: &str| o.steps.iter().any(|x| x == s);
    let mut errors = Vec::new();
    let mut record = |r: &mut Value, key: &str, res: Result<Value>| match res {
        Ok(v) => r[key] = v,
        Err(e) => {
            progress(&format!("{key}: FAILED: {e:#}"));
            errors.push(format!("{key}: {e:#}"));
        }
    };
    if has("relay") {
        let res = step_relay(&o);
        record(&mut r, "relay", res);
    }
    if has("setup") {
        let res = rt.block_on(step_setup(&o, &dir));
        record(&mut r, "setup", res);
    }
    if has("calls") {
        match rt.block_on(step_calls(&o, &dir)) {
            Ok((rows, idle)) => {
                r["calls"] = Value::Array(rows);
                r["idle"] = Value::Array(idle);
            }
            Err(e) => record(&mut r, "calls", Err(e)),
        }
    }
    if has("twoparty") {
        let res = rt
            .block_on(two_party::step_two_party(&o, &dir))
            .map(Value::Array);
        record(&mut r, "twoparty", res);
    }
    if has("fanout") {
        let res = rt.block_on(step_fanout(&o, &dir)).map(Value::Array);
        record(&mut r, "fanout", res);
    }
    if has("rtpengine") {
        let res = step_rtpengine(&o, &dir, &o.calls).map(Value::Array);
        record(&mut r, "rtpengine", res);
    }
    if has("agents") {
        let res = rt.block_on(agents::step_agents(&o, &dir)).map(Value::Array);
        record(&mut r, "agents", res);
    }
    if has("soak") {
        let res = rt.block_on(soak::step_soak(&o, &dir));
        record(&mut r, "soak", res);
    }
    if has("exchanges") {
        let res = rt
            .block_on(exchanges::step_exchanges(&o, &dir))
            .map(Value::Array);
        record(&mut r, "exchanges", res);
    }
    r["errors"] = json!(errors);
    write_report(&o, &mut r)?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
