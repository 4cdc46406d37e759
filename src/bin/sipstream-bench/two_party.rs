//! Step `twoparty`: concurrent two-party calls anchored in the gateway. Each call has a caller
//! leg (towards one sipp UAS whose SDP points at the bench's sender) and a callee leg (towards
//! a second sipp UAS whose SDP points at a sink): the bench sends 50 pps into every caller
//! leg and counts what the gateway relays out of the callee legs (one bridge direction per
//! call, PCMU to PCMU), with the mixed track on and off (`two_party_mix`). Reported: setup
//! time, CPU per relayed packet, calls per core, loss and added latency.

use super::*;

fn body(i: usize, caller_port: u16, callee_port: u16) -> Value {
    json!({
        "callId": format!("tp{i}"),
        "caller": format!("sip:a{i}@127.0.0.1:{caller_port}"),
        "callee": format!("sip:b{i}@127.0.0.1:{callee_port}"),
        "sipLogin": "bench",
        "sipDomain": "127.0.0.1",
        "toStream": format!("tp{i}_s"),
    })
}

pub(super) async fn step_two_party(o: &Opts, dir: &Path) -> Result<Vec<Value>> {
    let mut rows = Vec::new();
    for &n in &o.calls {
        for mix in [false, true] {
            let cdir = dir.join(format!("twoparty-{n}-mix-{mix}"));
            std::fs::create_dir_all(&cdir)?;
            progress(&format!(
                "twoparty {n} (mixed track {mix}): establishing, load {}",
                loadavg()
            ));
            let gw = Gateway::start(o, &cdir, &[("two_party_mix", mix.to_string())]).await?;
            tokio::time::sleep(Duration::from_millis(500)).await;
            let rss_base = rss_kib(gw.pid());
            let sender = Arc::new(udp_socket(SOCK_BUF)?);
            let sink = udp_socket(SOCK_BUF)?;
            let uas_a = Sipp::start(
                &cdir,
                "callers",
                &UAS_HOLD.replace("@MPORT@", &sender.local_addr()?.port().to_string()),
                &[],
            )?;
            let uas_b = Sipp::start(
                &cdir,
                "callees",
                &UAS_HOLD.replace("@MPORT@", &sink.local_addr()?.port().to_string()),
                &[],
            )?;
            let gw = Arc::new(gw);
            let t0 = Instant::now();
            let sem = Arc::new(tokio::sync::Semaphore::new(32));
            let mut tasks = Vec::new();
            for i in 0..n {
                let permit = sem.clone().acquire_owned().await?;
                let (gw, b) = (gw.clone(), body(i, uas_a.port, uas_b.port));
                tasks.push(tokio::spawn(async move {
                    let r = gw.post("/call/startup", &b).await;
                    drop(permit);
                    r
                }));
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            for t in tasks {
                let (s, v) = t.await??;
                if s != 200 {
                    bail!("call/startup: {s} {v}");
                }
            }
            let deadline = Instant::now() + Duration::from_secs(90);
            let calls = loop {
                let all = gw.find_all().await?;
                let est = all.iter().filter(|c| c["status"] == "ESTABLISHED").count();
                if est >= n {
                    break all;
                }
                if Instant::now() > deadline {
                    bail!("only {est}/{n} two-party calls established");
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            };
            let setup_s = t0.elapsed().as_secs_f64();
            let mut by_id = HashMap::new();
            for c in &calls {
                if let (Some(id), Some(port)) = (
                    c["callId"].as_str(),
                    c["legs"][0]["tracks"][0]["localRtpPort"].as_u64(),
                ) {
                    by_id.insert(id.to_string(), port as u16);
                }
            }
            let targets = (0..n)
                .map(|i| {
                    by_id
                        .get(&format!("tp{i}"))
                        .map(|p| SocketAddr::from(([127, 0, 0, 1], *p)))
                        .ok_or_else(|| anyhow!("no caller RTP port for tp{i}"))
                })
                .collect::<Result<Vec<_>>>()?;
            let gw = Arc::try_unwrap(gw).map_err(|_| anyhow!("gateway still shared"))?;
            let rss_est = rss_kib(gw.pid());
            // Prime: latching and source validation on every caller leg.
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
            // What the priming relayed is not part of the measured run.
            tokio::time::sleep(Duration::from_millis(300)).await;
            sink.set_nonblocking(true)?;
            let mut buf = [0u8; 2048];
            while sink.recv(&mut buf).is_ok() {}
            sink.set_nonblocking(false)?;
            let load0 = loadavg();
            progress(&format!(
                "twoparty {n} (mixed {mix}): established in {setup_s:.1} s; relaying {n}×50 pps for {:.0} s, load {load0}",
                o.hold.as_secs_f64()
            ));
            let pid = gw.pid().to_string();
            let (s3, t3, hold, seq) = (sender.clone(), targets.clone(), o.hold, prime.rounds);
            let run = tokio::task::spawn_blocking(move || {
                media_run(s3, t3, vec![sink], 1, 50.0, hold, &pid, seq)
            })
            .await?;
            let mut v = run.json();
            v["calls"] = json!(n);
            v["mixed_track"] = json!(mix);
            v["setup_s"] = json!(r3(setup_s));
            v["setup_calls_per_s"] = json!(r3(n as f64 / setup_s.max(1e-9)));
            v["rss_per_call_kib"] = json!(r3(rss_est.saturating_sub(rss_base) as f64 / n as f64));
            v["cpu_us_per_relayed_packet"] =
                json!(r3(run.sut_cpu_s * 1e6 / run.sent.max(1) as f64));
            v["calls_per_core"] = json!((n as f64 / run.cores().max(1e-9)).round());
            v["loadavg"] = json!(format!("{load0} → {}", loadavg()));
            progress(&format!(
                "twoparty {n} (mixed {mix}): gateway {:.1} % of a core, {:.0} two-party calls/core, {:.1} µs CPU per relayed packet, lost {} of {}, p50/p99 {:?}/{:?} µs",
                run.cores() * 100.0,
                n as f64 / run.cores().max(1e-9),
                run.sut_cpu_s * 1e6 / run.sent.max(1) as f64,
                run.lost(),
                run.expected,
                run.p50_us,
                run.p99_us
            ));
            rows.push(v);
            drop(uas_a);
            drop(uas_b);
            drop(gw);
        }
    }
    Ok(rows)
}
