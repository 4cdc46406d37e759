//! Step `exchanges`: media exchanges (`/media/*`, OpenSIPS media_exchange) on concurrent
//! calls. For each N of `--calls` and each kind of `--exchange-kinds`, a fresh gateway and N
//! one-leg calls are established as the `calls` step does (a sipp UAS for SIP whose SDP
//! points the legs' RTP at the bench's sender socket, which sends 50 pps of stamped PCMU into
//! every leg), and a second sipp UAS answers the exchanges' INVITEs with an SDP that points
//! at another socket of this tool, the peer:
//!
//! 1. baseline: the calls alone, 50 pps into each, for the calls' own CPU;
//! 2. one exchange per call, all ACTIVE, then the same RTP for the same window:
//!    - `fetch` (`/media/fetch_from_uri`): the peer is a media server that sends 50 pps of
//!      stamped PCMU to each exchange call; the gateway decodes it into the leg's player
//!      (a live source: 40 ms start buffer), mixes and encodes it to the leg, instead of the
//!      leg's silence; the leg's own audio goes to the peer the same way (the exchange call's
//!      player);
//!    - `send` (`/media/send_to_uri`): the peer is a fork target (sendonly offer) and hears
//!      the leg through the exchange call's player.
//!
//!    Measured: gateway CPU over the window against the baseline (per exchange, and
//!    exchanges per core), stamped packets at each receiving side against those sent (loss),
//!    those later than [`LATE_US`], the send → arrival latency of the exchanged audio (the
//!    μ-law stamp of [`agents::write_stamp`], which survives the decode and re-encode: with
//!    one source the mix is the source) and its median second by second, the registry's
//!    reader drops, RSS per exchange;
//! 3. `/media/terminate` on every call: every exchange final, every exchange call ended
//!    (the peer's sipp counts the BYEs), the gateway still running.

use super::agents::{blocking_join, ms3, percentiles, spawn_play_receiver, PlayReport};
use super::*;

/// A packet that reaches its receiver later than this after it was sent counts as late (a
/// peer with a 100 ms jitter buffer would drop it); the exchange's own buffering is the 40 ms
/// start buffer of the live source and up to 20 ms of the player's tick.
const LATE_US: u32 = 100_000;
/// A progress line this often during a measured window.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Fetch,
    Send,
}

impl Kind {
    fn parse(s: &str) -> Option<Kind> {
        match s {
            "fetch" | "fetch_from_uri" => Some(Kind::Fetch),
            "send" | "send_to_uri" => Some(Kind::Send),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Fetch => "fetch_from_uri",
            Kind::Send => "send_to_uri",
        }
    }
}

pub(super) async fn step_exchanges(o: &Opts, dir: &Path) -> Result<Vec<Value>> {
    // A fixed window per measurement (not --hold: two windows per run), as `agents`.
    let window = Duration::from_secs(if o.quick { 10 } else { 30 });
    let kinds = o
        .exchange_kinds
        .iter()
        .map(|k| Kind::parse(k).ok_or_else(|| anyhow!("--exchange-kinds: {k:?} (fetch, send)")))
        .collect::<Result<Vec<_>>>()?;
    let mut rows = Vec::new();
    for &n in &o.calls {
        for &kind in &kinds {
            let rdir = dir.join(format!("exchanges-{n}-{}", kind.name()));
            // One run failing (the machine out of breath at the largest) keeps the others.
            match one_run(o, &rdir, n, kind, window).await {
                Ok(row) => rows.push(row),
                Err(e) => {
                    progress(&format!("exchanges {n} {}: FAILED: {e:#}", kind.name()));
                    rows.push(
                        json!({ "calls": n, "kind": kind.name(), "error": format!("{e:#}") }),
                    );
                }
            }
        }
    }
    Ok(rows)
}

async fn one_run(o: &Opts, dir: &Path, n: usize, kind: Kind, window: Duration) -> Result<Value> {
    let tag = format!("exchanges {n} {}", kind.name());
    progress(&format!(
        "{tag}: establishing {n} calls, load {}",
        loadavg()
    ));
    let mut est = establish(o, dir, n).await?;
    let pid = est.gw.pid().to_string();
    // The exchanges' peer: sipp answers (SIP only), its SDP points the exchange calls' RTP
    // at `peer`, which sends the media server's audio and receives what the gateway sends.
    let peer = Arc::new(udp_socket(SOCK_BUF)?);
    let mut peer_uas = Sipp::start(
        dir,
        "peer",
        &UAS_HOLD.replace("@MPORT@", &peer.local_addr()?.port().to_string()),
        &[],
    )?;

    // 1. The calls alone.
    progress(&format!(
        "{tag}: baseline, {n}×50 pps in and no exchange for {:.0} s",
        window.as_secs_f64()
    ));
    let (sender, targets, seq, p) = (
        est.sender.clone(),
        est.targets.clone(),
        est.seq,
        pid.clone(),
    );
    let base = tokio::task::spawn_blocking(move || {
        media_run(sender, targets, Vec::new(), 0, 50.0, window, &p, seq)
    })
    .await?;
    est.seq += base.rounds;

    // 2. One exchange per call.
    let rss0 = rss_kib(est.gw.pid());
    let t0 = Instant::now();
    let xids = start_exchanges(&est.gw, &est.ids, kind, peer_uas.port).await?;
    wait_active(&est.gw, n, Duration::from_secs(60)).await?;
    let setup_s = t0.elapsed().as_secs_f64();
    let xtargets = rtp_ports(&est.gw, &xids).await?;
    // The media server's streams: primed as the calls were (latching, source validation),
    // on the measurement's time base: a stamp of the priming that a live source still holds
    // when the window starts is not counted.
    let epoch = Instant::now();
    let mut xseq = 0;
    if kind == Kind::Fetch {
        let prime = spawn_sender(
            peer.clone(),
            xtargets.clone(),
            50.0,
            Duration::from_millis(500),
            epoch,
            Arc::new(AtomicBool::new(false)),
            0,
        );
        xseq = blocking_join(prime).await?.sent / n.max(1) as u64;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let drops0 = est.gw.reader_drops().await;
    let load0 = loadavg();
    progress(&format!(
        "{tag}: {n} exchanges ACTIVE in {setup_s:.1} s; {n}×50 pps into the legs{} for {:.0} s, load {load0}",
        if kind == Kind::Fetch {
            format!(" and {n}×50 pps from the media server")
        } else {
            String::new()
        },
        window.as_secs_f64()
    ));
    let from = now_ns(epoch);
    let stop_rx = Arc::new(AtomicBool::new(false));
    let (at_peer, at_legs) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    // What reaches the peer: the legs' audio (both kinds).
    let to_peer = spawn_play_receiver(
        peer.try_clone()?,
        xtargets.clone(),
        epoch,
        stop_rx.clone(),
        MAGIC,
        from,
        at_peer.clone(),
    )?;
    // What reaches the legs: the media server's audio (fetch).
    let to_legs = match kind {
        Kind::Fetch => Some(spawn_play_receiver(
            est.sender.try_clone()?,
            est.targets.clone(),
            epoch,
            stop_rx.clone(),
            MAGIC,
            from,
            at_legs.clone(),
        )?),
        Kind::Send => None,
    };
    let cpu = CpuWindow::start(pid.clone());
    let no_stop = Arc::new(AtomicBool::new(false));
    let legs_send = spawn_sender(
        est.sender.clone(),
        est.targets.clone(),
        50.0,
        window,
        epoch,
        no_stop.clone(),
        est.seq,
    );
    let peer_send = (kind == Kind::Fetch).then(|| {
        spawn_sender(
            peer.clone(),
            xtargets.clone(),
            50.0,
            window,
            epoch,
            no_stop.clone(),
            xseq,
        )
    });
    let mut next = Instant::now() + PROGRESS_EVERY;
    while !legs_send.is_finished() || peer_send.as_ref().is_some_and(|h| !h.is_finished()) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if Instant::now() < next {
            continue;
        }
        next += PROGRESS_EVERY;
        let (c, w) = cpu.stop();
        let due = (w * 50.0) as u64 * n as u64;
        progress(&format!(
            "{tag}: {w:.0}/{:.0} s, stamped packets at the peer {}{} of ≈ {due} sent each way, gateway {:.1} % of a core, load {}",
            window.as_secs_f64(),
            at_peer.load(Ordering::Relaxed),
            if kind == Kind::Fetch {
                format!(", at the legs {}", at_legs.load(Ordering::Relaxed))
            } else {
                String::new()
            },
            c / w.max(1e-9) * 100.0,
            loadavg()
        ));
    }
    let legs_rep = blocking_join(legs_send).await?;
    let peer_rep = match peer_send {
        Some(h) => Some(blocking_join(h).await?),
        None => None,
    };
    let (cpu_s, wall_s) = cpu.stop();
    est.seq += legs_rep.sent / n.max(1) as u64;
    // Let the last packets through the players (at most 200 ms buffered).
    tokio::time::sleep(Duration::from_millis(600)).await;
    stop_rx.store(true, Ordering::Relaxed);
    let mut got_peer = blocking_join(to_peer).await?;
    let mut got_legs = match to_legs {
        Some(h) => Some(blocking_join(h).await?),
        None => None,
    };
    let rss1 = rss_kib(est.gw.pid());
    let drops = est.gw.reader_drops().await.saturating_sub(drops0);
    let cores = cpu_s / wall_s.max(1e-9);
    let base_cores = base.cores();
    let added = (cores - base_cores).max(0.0);
    let leg_to_peer = direction(legs_rep.sent, n, &mut got_peer);
    let peer_to_leg = match (&peer_rep, got_legs.as_mut()) {
        (Some(r), Some(g)) => direction(r.sent, n, g),
        _ => Value::Null,
    };
    let bench_cpu_s = legs_rep.cpu_s
        + peer_rep.as_ref().map_or(0.0, |r| r.cpu_s)
        + got_peer.cpu_s
        + got_legs.as_ref().map_or(0.0, |r| r.cpu_s);
    let sender_late_max_us = legs_rep
        .late_max_us
        .max(peer_rep.as_ref().map_or(0, |r| r.late_max_us));
    let line = |d: &Value| {
        if d.is_null() {
            return "–".to_string();
        }
        let by_s = d["latency_p50_by_second_us"].as_array();
        let p50_at = |v: Option<&Value>| {
            v.and_then(Value::as_u64)
                .map_or("–".into(), |us| format!("{:.1}", us as f64 / 1000.0))
        };
        format!(
            "{} of {} (lost {}, late {}, {} streams silent), p50/p99/max {} ms (p50 {} ms in the first second, {} in the last)",
            opt(&d["packets_received"]),
            opt(&d["packets_sent"]),
            opt(&d["lost"]),
            opt(&d["late"]),
            opt(&d["streams_silent"]),
            ms3(
                d["latency_p50_us"].as_u64(),
                d["latency_p99_us"].as_u64(),
                d["latency_max_us"].as_u64()
            ),
            p50_at(by_s.and_then(|v| v.first())),
            p50_at(by_s.and_then(|v| v.last())),
        )
    };
    progress(&format!(
        "{tag}: gateway {:.1} % of a core ({:.1} % without exchanges) = {:.2} % per exchange, {:.0} exchanges per core; leg → peer {}; peer → leg {}; reader drops {drops}; RSS {:.1} KiB per exchange",
        cores * 100.0,
        base_cores * 100.0,
        added * 100.0 / n as f64,
        n as f64 / added.max(1e-9),
        line(&leg_to_peer),
        line(&peer_to_leg),
        rss1.saturating_sub(rss0) as f64 / n as f64,
    ));

    // 3. Every exchange ends: the calls go back to their own media, the exchange calls hang up.
    let t1 = Instant::now();
    terminate_all(&est.gw, &est.ids).await?;
    let live = wait_ended(&est.gw, Duration::from_secs(30)).await?;
    // sipp writes its statistics every second: wait for the BYEs to show.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut byes = peer_uas.stat("SuccessfulCall(C)");
    while byes < n as u64 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        byes = peer_uas.stat("SuccessfulCall(C)");
    }
    let terminate_s = t1.elapsed().as_secs_f64();
    let rss2 = rss_kib(est.gw.pid());
    let alive = est.gw.proc.alive() && peer_uas.proc.alive();
    progress(&format!(
        "{tag}: terminated in {terminate_s:.1} s, {live} exchange calls still up, the peer saw {byes} of {n} calls end, RSS {rss2} KiB (before the exchanges {rss0}), gateway {}",
        if est.gw.proc.alive() { "running" } else { "GONE" }
    ));
    if !alive {
        bail!(
            "gateway or peer exited: {}",
            std::fs::read_to_string(&est.gw.log).unwrap_or_default()
        );
    }

    Ok(json!({
        "calls": n,
        "kind": kind.name(),
        "window_s": r3(wall_s),
        "setup_s": r3(setup_s),
        "cpu_cores_calls_only": r3(base_cores),
        "cpu_s": r3(cpu_s),
        "cpu_cores": r3(cores),
        "cpu_pct_per_exchange": r3(added * 100.0 / n as f64),
        "exchanges_per_core": (n as f64 / added.max(1e-9)).round(),
        "calls_with_exchange_per_core": (n as f64 / cores.max(1e-9)).round(),
        "leg_to_peer": leg_to_peer,
        "peer_to_leg": peer_to_leg,
        "gateway_reader_drops": drops,
        "rss_before_kib": rss0,
        "rss_kib": rss1,
        "rss_per_exchange_kib": r3(rss1.saturating_sub(rss0) as f64 / n as f64),
        "terminate_s": r3(terminate_s),
        "exchange_calls_up_after_terminate": live,
        "peer_calls_ended": byes,
        "rss_after_terminate_kib": rss2,
        "sender_late_max_us": sender_late_max_us,
        "bench_cpu_cores": r3(bench_cpu_s / wall_s.max(1e-9)),
        "loadavg": format!("{load0} → {}", loadavg()),
    }))
}

/// One direction's figures: stamped packets received against those sent, late ones,
/// latency percentiles.
fn direction(sent: u64, streams: usize, got: &mut PlayReport) -> Value {
    // The median by second of the window (arrival order, N×50 packets a second): a delay
    // that builds up during the window shows as a rising series.
    let p50_by_second: Vec<Option<u64>> = got
        .latency_us
        .chunks(streams.max(1) * 50)
        .map(|c| percentiles(&mut c.to_vec()).0)
        .collect();
    let late = got.latency_us.iter().filter(|&&us| us > LATE_US).count();
    let silent = got.per_stream.iter().filter(|&&c| c == 0).count();
    let (p50, p99, max) = percentiles(&mut got.latency_us);
    json!({
        "streams": streams,
        "packets_sent": sent,
        "packets_received": got.received,
        "lost": sent as i64 - got.received as i64,
        "late": late,
        "misrouted": got.misrouted,
        "streams_silent": silent,
        "latency_p50_us": p50,
        "latency_p99_us": p99,
        "latency_max_us": max,
        "latency_p50_by_second_us": p50_by_second,
    })
}

// ---------------------------------------------------------------------------------------------
// REST

/// One exchange per call of `ids` towards the peer (`sip:x<i>@127.0.0.1:<port>`); their
/// exchange ids, in the order of `ids`.
async fn start_exchanges(
    gw: &Gateway,
    ids: &[String],
    kind: Kind,
    peer_port: u16,
) -> Result<Vec<String>> {
    let path = match kind {
        Kind::Fetch => "fetch_from_uri",
        Kind::Send => "send_to_uri",
    };
    let sem = Arc::new(tokio::sync::Semaphore::new(32));
    let mut tasks = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let permit = sem.clone().acquire_owned().await?;
        let body = json!({
            "callId": id,
            "uri": format!("sip:x{i}@127.0.0.1:{peer_port}"),
        });
        let http = gw.http.clone();
        let api = format!("{}/rest-api/media/{path}", gw.rest);
        tasks.push(tokio::spawn(async move {
            let r = match http.post(api).json(&body).send().await {
                Ok(r) => Ok((r.status().as_u16(), r.text().await.unwrap_or_default())),
                Err(e) => Err(e),
            };
            drop(permit);
            r
        }));
        // ≈ 300 exchanges/s, as the calls were set up: the step measures them running.
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    let mut xids = Vec::with_capacity(ids.len());
    for t in tasks {
        let (s, text) = t.await??;
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        match (s, v["exchangeId"].as_str()) {
            (200, Some(x)) => xids.push(x.to_string()),
            _ => bail!("media/{path}: {s} {text}"),
        }
    }
    Ok(xids)
}

/// Every exchange the gateway knows (live and ended).
async fn exchanges(gw: &Gateway) -> Result<Vec<Value>> {
    let (s, v) = gw.post("/media/find", &json!({})).await?;
    if s != 200 {
        bail!("media/find: {s} {v}");
    }
    Ok(v.as_array().cloned().unwrap_or_default())
}

/// Waits until `n` exchanges are ACTIVE; one FAILED fails the run (with its reason).
async fn wait_active(gw: &Gateway, n: usize, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let all = exchanges(gw).await?;
        if let Some(f) = all.iter().find(|x| x["status"] == "FAILED") {
            bail!(
                "exchange {} of {} FAILED: {} {}",
                opt(&f["exchangeId"]),
                opt(&f["callId"]),
                opt(&f["sipStatus"]),
                opt(&f["reason"])
            );
        }
        let active = all.iter().filter(|x| x["status"] == "ACTIVE").count();
        if active >= n {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "only {active}/{n} exchanges ACTIVE within {} s",
                timeout.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The gateway's RTP port of each exchange call (where the media server sends), by id.
async fn rtp_ports(gw: &Gateway, xids: &[String]) -> Result<Vec<SocketAddr>> {
    let calls = gw.find_all().await?;
    let by_id: HashMap<&str, u64> = calls
        .iter()
        .filter_map(|c| {
            Some((
                c["callId"].as_str()?,
                c["legs"][0]["tracks"][0]["localRtpPort"].as_u64()?,
            ))
        })
        .collect();
    xids.iter()
        .map(|x| {
            by_id
                .get(x.as_str())
                .map(|p| SocketAddr::from(([127, 0, 0, 1], *p as u16)))
                .ok_or_else(|| anyhow!("no RTP port for exchange call {x}"))
        })
        .collect()
}

/// `/media/terminate` on every call of `ids`.
async fn terminate_all(gw: &Gateway, ids: &[String]) -> Result<()> {
    for chunk in ids.chunks(32) {
        let tasks: Vec<_> = chunk
            .iter()
            .map(|id| {
                let (http, body) = (gw.http.clone(), json!({ "callId": id }));
                let api = format!("{}/rest-api/media/terminate", gw.rest);
                tokio::spawn(async move { http.post(api).json(&body).send().await })
            })
            .collect();
        for t in tasks {
            let r = t.await??;
            if !r.status().is_success() {
                bail!(
                    "media/terminate: {} {}",
                    r.status(),
                    r.text().await.unwrap_or_default()
                );
            }
        }
    }
    Ok(())
}

/// Waits until every exchange is final and no exchange call is up; the exchange calls still
/// up at the timeout (0 when all ended).
async fn wait_ended(gw: &Gateway, timeout: Duration) -> Result<usize> {
    let deadline = Instant::now() + timeout;
    loop {
        let open = exchanges(gw)
            .await?
            .iter()
            .filter(|x| !matches!(x["status"].as_str(), Some("TERMINATED" | "FAILED")))
            .count();
        let up = gw
            .find_all()
            .await?
            .iter()
            .filter(|c| !c["exchangeOf"].is_null())
            .filter(|c| !matches!(c["status"].as_str(), Some("FINISH" | "FAILED" | "BUSY")))
            .count();
        if open == 0 && up == 0 {
            return Ok(0);
        }
        if Instant::now() > deadline {
            if open > 0 {
                bail!(
                    "{open} exchanges not final {} s after terminate",
                    timeout.as_secs()
                );
            }
            return Ok(up);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Report

pub(super) fn markdown(rows: &[Value], md: &mut String) {
    let _ = writeln!(md, "**Media exchanges** (N one-leg calls with 50 pps of stamped PCMU in each; one exchange per call to a peer answered by sipp whose RTP is this tool's. fetch_from_uri: the peer, a media server, sends 50 pps per exchange that the gateway decodes into the leg's player and encodes to the leg, and hears the leg the same way; send_to_uri: the peer, a fork, hears the leg. Latency = the bench's send → arrival, through decode, the live source's 40 ms start buffer, the 20 ms player tick and encode; late = more than 100 ms; % per exchange = (gateway cores with exchanges − the calls alone) / N; exchanges per core = N / that added CPU)\n\n| calls | exchange | gateway CPU (cores) | calls alone | % of a core per exchange | exchanges per core | leg → peer: lost / late | p50 / p99 ms | peer → leg: lost / late | p50 / p99 ms | reader drops | RSS KiB per exchange | bench CPU (cores) | load |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    let ms = |v: &Value| {
        v.as_f64()
            .map_or("–".into(), |us| format!("{:.1}", us / 1000.0))
    };
    let dir = |d: &Value| {
        if d.is_null() {
            return ("–".to_string(), "–".to_string());
        }
        (
            format!(
                "{} / {} of {}",
                opt(&d["lost"]),
                opt(&d["late"]),
                opt(&d["packets_sent"])
            ),
            format!(
                "{} / {}",
                ms(&d["latency_p50_us"]),
                ms(&d["latency_p99_us"])
            ),
        )
    };
    for x in rows {
        if let Some(e) = x["error"].as_str() {
            let e = e.lines().next().unwrap_or("").replace('|', "/");
            let _ = writeln!(
                md,
                "| {} | {} | failed: {e} |",
                opt(&x["calls"]),
                opt(&x["kind"])
            );
            continue;
        }
        let (lp_loss, lp_lat) = dir(&x["leg_to_peer"]);
        let (pl_loss, pl_lat) = dir(&x["peer_to_leg"]);
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {lp_loss} | {lp_lat} | {pl_loss} | {pl_lat} | {} | {} | {} | {} |",
            opt(&x["calls"]),
            opt(&x["kind"]),
            opt(&x["cpu_cores"]),
            opt(&x["cpu_cores_calls_only"]),
            opt(&x["cpu_pct_per_exchange"]),
            opt(&x["exchanges_per_core"]),
            opt(&x["gateway_reader_drops"]),
            opt(&x["rss_per_exchange_kib"]),
            opt(&x["bench_cpu_cores"]),
            opt(&x["loadavg"]),
        );
    }
    md.push('\n');
}
