//! The soak (issue 16, item 5): `--soak-calls` recorded calls, each with one WHEP player,
//! churned for `--soak-minutes` (every call lives a random time in `--soak-life`, then hangs
//! up and a new one takes its place). The gateway's file descriptors, sockets, threads and
//! memory are sampled and printed as a table; the step fails when any of them grows while the
//! load stays the same, or is not back near its start once every call has ended.
//!
//! Media: a sipp UAS answers (its SDP points the gateway's RTP at the bench's socket), the
//! bench sends 50 PCMU packets a second into every live call from one paced thread, and every
//! call's stream is played by a receive-only WebRTC client (the `webrtc` crate: ICE, DTLS,
//! SRTP, as a browser page does).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use parking_lot::Mutex;
use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use rtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use serde_json::{json, Value};
use tokio::sync::Notify;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler,
    RTCIceGatheringState, RTCSessionDescription, SettingEngineBuilder,
};

use super::{progress, rss_kib, startup_body, udp_socket, Gateway, Opts, Sipp, SOCK_BUF, UAS_HOLD};

/// What one sample of the gateway process says.
#[derive(Debug, Clone, Copy, Default)]
struct Sample {
    at_s: u64,
    calls_up: u64,
    players: u64,
    calls_done: u64,
    fds: u64,
    sockets: u64,
    threads: u64,
    rss_kib: u64,
}

impl Sample {
    fn json(&self) -> Value {
        json!({
            "at_s": self.at_s, "calls_up": self.calls_up, "players": self.players,
            "calls_done": self.calls_done, "fds": self.fds, "sockets": self.sockets,
            "threads": self.threads, "rss_kib": self.rss_kib,
        })
    }

    fn line(&self) -> String {
        format!(
            "| {:>5} | {:>5} | {:>5} | {:>6} | {:>5} | {:>5} | {:>4} | {:>7} |",
            self.at_s,
            self.calls_up,
            self.players,
            self.calls_done,
            self.fds,
            self.sockets,
            self.threads,
            self.rss_kib / 1024
        )
    }
}

const HEADER: &str = "|   t s | calls | plays |  ended |   fds | socks | thr. | RSS MiB |\n\
                      |------:|------:|------:|-------:|------:|------:|-----:|--------:|";

fn sample(pid: u32, at: Instant, counters: &Counters) -> Sample {
    let fd_dir = format!("/proc/{pid}/fd");
    let (mut fds, mut sockets) = (0, 0);
    if let Ok(entries) = std::fs::read_dir(&fd_dir) {
        for e in entries.flatten() {
            fds += 1;
            if std::fs::read_link(e.path())
                .map(|l| l.to_string_lossy().starts_with("socket:"))
                .unwrap_or(false)
            {
                sockets += 1;
            }
        }
    }
    let threads = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    Sample {
        at_s: at.elapsed().as_secs(),
        calls_up: counters.up.load(Ordering::Relaxed),
        players: counters.players.load(Ordering::Relaxed),
        calls_done: counters.done.load(Ordering::Relaxed),
        fds,
        sockets,
        threads,
        rss_kib: rss_kib(pid),
    }
}

#[derive(Default)]
struct Counters {
    up: AtomicU64,
    players: AtomicU64,
    done: AtomicU64,
    failed: AtomicU64,
    /// RTP packets the players received (all of them).
    played: AtomicU64,
}

/// RTP the bench sends into one call: where, and its sequence/timestamp state.
struct Target {
    addr: SocketAddr,
    seq: u16,
    ts: u32,
    ssrc: u32,
}

struct Player {
    gathered: Arc<Notify>,
    counters: Arc<Counters>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Player {
    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            self.gathered.notify_one();
        }
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let counters = self.counters.clone();
        tokio::spawn(async move {
            while let Some(ev) = track.poll().await {
                if let TrackRemoteEvent::OnRtpPacket(_) = ev {
                    counters.played.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
}

/// Plays `stream` over WHEP; returns the connection and the resource URL to DELETE.
async fn play(
    gw: &Gateway,
    stream: &str,
    counters: &Arc<Counters>,
) -> Result<(Arc<dyn PeerConnection>, String)> {
    let mut media = MediaEngine::default();
    media.register_default_codecs()?;
    let gathered = Arc::new(Notify::new());
    let pc = PeerConnectionBuilder::new()
        .with_media_engine(media)
        .with_setting_engine(
            SettingEngineBuilder::new()
                .with_include_loopback_candidate(true)
                .build(),
        )
        .with_handler(Arc::new(Player {
            gathered: gathered.clone(),
            counters: counters.clone(),
        }))
        .with_udp_addrs(vec!["127.0.0.1:0".to_string()])
        .build()
        .await?;
    let pc: Arc<dyn PeerConnection> = Arc::new(pc);
    pc.add_transceiver_from_kind(
        RtpCodecKind::Audio,
        Some(RTCRtpTransceiverInit {
            direction: RTCRtpTransceiverDirection::Recvonly,
            ..Default::default()
        }),
    )
    .await?;
    let offer = pc.create_offer(None).await?;
    pc.set_local_description(offer).await?;
    let _ = tokio::time::timeout(Duration::from_secs(3), gathered.notified()).await;
    let Some(local) = pc.local_description().await else {
        bail!("no local description");
    };
    let resp = gw
        .http
        .post(format!("{}/whep/{stream}", gw.rest))
        .header("Content-Type", "application/sdp")
        .body(local.sdp)
        .send()
        .await?;
    let status = resp.status().as_u16();
    let location = resp
        .headers()
        .get("Location")
        .and_then(|l| l.to_str().ok())
        .map(str::to_owned)
        .unwrap_or_default();
    let answer = resp.text().await?;
    if status != 201 {
        let _ = pc.close().await;
        bail!("WHEP {stream}: {status} {answer}");
    }
    pc.set_remote_description(RTCSessionDescription::answer(answer)?)
        .await?;
    let url = if location.starts_with("http") {
        location
    } else {
        format!("{}{location}", gw.rest)
    };
    Ok((pc, url))
}

/// One place in the soak: calls one after the other until `until`.
async fn worker(
    gw: Arc<Gateway>,
    uas_port: u16,
    slot: usize,
    until: Instant,
    life: (u64, u64),
    targets: Arc<Mutex<HashMap<String, Target>>>,
    counters: Arc<Counters>,
) {
    let mut n = 0u64;
    let mut rng = (slot as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    while Instant::now() < until {
        n += 1;
        let id = format!("soak{slot}x{n}");
        let stream = format!("{id}_s");
        let mut body = startup_body(&id, uas_port);
        body["record"] = json!(true);
        match gw.post("/call/startup", &body).await {
            Ok((200, _)) => {}
            other => {
                counters.failed.fetch_add(1, Ordering::Relaxed);
                progress(&format!("soak: {id} startup: {other:?}"));
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        }
        // Established: its RTP port is where the bench sends.
        let mut port = None;
        for _ in 0..60 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            if let Ok((200, found)) = gw.post("/call/find", &json!({"callId": id})).await {
                let c = &found[0];
                if c["status"] == "ESTABLISHED" {
                    port = c["legs"][0]["tracks"][0]["localRtpPort"].as_u64();
                    break;
                }
                if c["status"] == "FAILED" || c["status"] == "FINISH" {
                    break;
                }
            }
        }
        let Some(port) = port else {
            counters.failed.fetch_add(1, Ordering::Relaxed);
            progress(&format!("soak: {id} did not establish"));
            let _ = gw.post("/call/terminate", &json!({"callId": id})).await;
            continue;
        };
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        targets.lock().insert(
            id.clone(),
            Target {
                addr: SocketAddr::from(([127, 0, 0, 1], port as u16)),
                seq: rng as u16,
                ts: (rng >> 16) as u32,
                ssrc: (rng >> 32) as u32,
            },
        );
        counters.up.fetch_add(1, Ordering::Relaxed);
        // The stream has media before the player asks for it.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let player = match play(&gw, &stream, &counters).await {
            Ok(p) => {
                counters.players.fetch_add(1, Ordering::Relaxed);
                Some(p)
            }
            Err(e) => {
                counters.failed.fetch_add(1, Ordering::Relaxed);
                progress(&format!("soak: {id} player: {e:#}"));
                None
            }
        };
        let secs = life.0 + rng % (life.1 - life.0 + 1);
        let end = (Instant::now() + Duration::from_secs(secs)).min(until);
        tokio::time::sleep_until(end.into()).await;
        if let Some((pc, url)) = player {
            let _ = gw.http.delete(&url).send().await;
            let _ = pc.close().await;
            counters.players.fetch_sub(1, Ordering::Relaxed);
        }
        targets.lock().remove(&id);
        let _ = gw.post("/call/terminate", &json!({"callId": id})).await;
        counters.up.fetch_sub(1, Ordering::Relaxed);
        counters.done.fetch_add(1, Ordering::Relaxed);
    }
}

/// Sends 20 ms of PCMU every 20 ms into every live call, from one socket (the one the UAS's
/// SDP names, so latching keeps the gateway's media there), and drains what comes back.
fn spawn_media(
    targets: Arc<Mutex<HashMap<String, Target>>>,
    stop: Arc<AtomicBool>,
) -> Result<(SocketAddr, Vec<std::thread::JoinHandle<()>>)> {
    let sock = Arc::new(udp_socket(SOCK_BUF)?);
    let addr = sock.local_addr()?;
    let (s, st, t) = (sock.clone(), stop.clone(), targets);
    let sender = std::thread::spawn(move || {
        let mut pkt = [0xFFu8; 172];
        pkt[0] = 0x80;
        let mut next = Instant::now();
        while !st.load(Ordering::Relaxed) {
            {
                let mut targets = t.lock();
                for tg in targets.values_mut() {
                    pkt[2..4].copy_from_slice(&tg.seq.to_be_bytes());
                    pkt[4..8].copy_from_slice(&tg.ts.to_be_bytes());
                    pkt[8..12].copy_from_slice(&tg.ssrc.to_be_bytes());
                    let _ = s.send_to(&pkt, tg.addr);
                    tg.seq = tg.seq.wrapping_add(1);
                    tg.ts = tg.ts.wrapping_add(160);
                }
            }
            next += Duration::from_millis(20);
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
        }
    });
    let _ = sock.set_read_timeout(Some(Duration::from_millis(200)));
    let drain = std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while !stop.load(Ordering::Relaxed) {
            let _ = sock.recv_from(&mut buf);
        }
    });
    Ok((addr, vec![sender, drain]))
}

/// Growth from `a` to `b` within `abs + rel·a`.
fn flat(a: u64, b: u64, abs: u64, rel: f64) -> bool {
    b <= a + abs + (a as f64 * rel) as u64
}

pub async fn step_soak(o: &Opts, dir: &std::path::Path) -> Result<Value> {
    let dir = dir.join("soak");
    std::fs::create_dir_all(&dir)?;
    let (n, minutes) = (o.soak_calls, o.soak_minutes);
    let life = o.soak_life;
    if n == 0 || minutes == 0 {
        bail!("the soak needs --soak-calls and --soak-minutes above 0");
    }
    // 4 RTP ports per call (the call's pair, the player's), and the players are WebRTC.
    let gw = Gateway::start(
        o,
        &dir,
        &[
            ("webrtc_max_sessions", (n * 2).to_string()),
            ("rtp_port_min", "10000".into()),
            ("rtp_port_max", "39999".into()),
        ],
    )
    .await?;
    let gw = Arc::new(gw);
    let pid = gw.pid();
    let started = Instant::now();
    let counters = Arc::new(Counters::default());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = sample(pid, started, &counters);
    let targets: Arc<Mutex<HashMap<String, Target>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let (media_addr, threads) = spawn_media(targets.clone(), stop.clone())?;
    let uas = Sipp::start(
        &dir,
        "uas",
        &UAS_HOLD.replace("@MPORT@", &media_addr.port().to_string()),
        &[],
    )?;
    progress(&format!(
        "soak: {n} recorded calls with a WHEP player each, lives {}-{} s, for {minutes} min",
        life.0, life.1
    ));
    let until = started + Duration::from_secs(minutes * 60);
    let mut workers = Vec::new();
    // Ramp: the first calls start over about a minute (≈ n/60 calls a second).
    let ramp = Duration::from_secs(60).min(Duration::from_secs(minutes * 60 / 4));
    for slot in 0..n {
        workers.push(tokio::spawn(worker(
            gw.clone(),
            uas.port,
            slot,
            until,
            life,
            targets.clone(),
            counters.clone(),
        )));
        tokio::time::sleep(ramp / n as u32).await;
    }
    println!("{HEADER}");
    println!("{}", before.line());
    let every = Duration::from_secs(if minutes >= 5 { 30 } else { 10 });
    let mut samples = vec![before];
    while Instant::now() < until {
        tokio::time::sleep(every.min(until.saturating_duration_since(Instant::now()))).await;
        let s = sample(pid, started, &counters);
        println!("{}", s.line());
        samples.push(s);
    }
    for w in workers {
        let _ = w.await;
    }
    // Every call ended: wait for the gateway to let them go, then the last sample.
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let live = gw.find_all().await.map(|calls| {
            calls
                .iter()
                .filter(|c| c["status"] != "FINISH" && c["status"] != "FAILED")
                .count()
        });
        if live.is_ok_and(|n| n == 0) {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    // tokio's blocking-pool threads (sidecar and file work) retire after 10 s idle.
    tokio::time::sleep(Duration::from_secs(15)).await;
    let after = sample(pid, started, &counters);
    println!("{}", after.line());
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    // Under load, once warm (after the first third of the run, and at least 2 minutes: by
    // then every place has churned at least once and the allocator has its working set),
    // to the last sample under load.
    let warm = (minutes * 60 / 3).max(120).min(minutes * 60 / 2);
    let loaded: Vec<&Sample> = samples
        .iter()
        // The sample at the deadline is taken while every call hangs up at once.
        .filter(|s| {
            s.calls_up as usize >= n * 9 / 10 && s.at_s >= warm && s.at_s + 5 < minutes * 60
        })
        .collect();
    let (first, last) = match (loaded.first(), loaded.last()) {
        (Some(a), Some(b)) => (**a, **b),
        _ => bail!("the soak never had 90 % of its {n} calls up: {samples:?}"),
    };
    let checks = json!({
        "fds_flat_under_load": flat(first.fds, last.fds, 50, 0.05),
        "sockets_flat_under_load": flat(first.sockets, last.sockets, 50, 0.05),
        "threads_flat_under_load": flat(first.threads, last.threads, 2, 0.0),
        "rss_flat_under_load": flat(first.rss_kib, last.rss_kib, 16 * 1024, 0.10),
        "fds_back_after": flat(before.fds, after.fds, 10, 0.0),
        "sockets_back_after": flat(before.sockets, after.sockets, 10, 0.0),
        "threads_back_after": flat(before.threads, after.threads, 2, 0.0),
    });
    let played = counters.played.load(Ordering::Relaxed);
    let failed = counters.failed.load(Ordering::Relaxed);
    let done = counters.done.load(Ordering::Relaxed);
    let recordings = std::fs::read_dir(dir.join("records"))
        .map(|d| {
            d.flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "mp4"))
                .count()
        })
        .unwrap_or(0);
    progress(&format!(
        "soak: {done} calls ended, {failed} failures, {recordings} recordings, {played} RTP packets played over WHEP; {checks}"
    ));
    let _ = std::fs::remove_dir_all(dir.join("records"));
    Ok(json!({
        "calls": n,
        "minutes": minutes,
        "life_s": [life.0, life.1],
        "calls_ended": done,
        "failures": failed,
        "recordings": recordings,
        "rtp_played_over_whep": played,
        "samples": samples.iter().map(Sample::json).collect::<Vec<_>>(),
        "after": after.json(),
        "checks": checks,
    }))
}
