//! sipstream binary: reads the configuration and wires the SIP driver, the stream registry,
//! the call manager, the event bus and the REST API together. No logic lives here.

use std::sync::Arc;

use actix_web::{web, App, HttpServer};
use anyhow::Context;
use tokio::sync::mpsc;

use sipstream::api::{self, AppState};
use sipstream::call::manager::CallManager;
use sipstream::config::Config;
use sipstream::events::{webhook, EventBus};
use sipstream::exchange::InjectManager;
use sipstream::hls::{HlsService, HlsServiceConfig};
use sipstream::mediastream::{MediaStreamConfig, MediaStreamManager};
use sipstream::metrics::Metrics;
use sipstream::record::manager::RecordingManager;
use sipstream::registry::Registry;
use sipstream::rtmp::{PushConfig, PushManager};
use sipstream::rtp::ports::PortPool;
use sipstream::rtp::threads::MediaThreads;
use sipstream::rtsp::{PullConfig, PullManager};
use sipstream::sip::driver::{self, DriverConfig};
use sipstream::sip::ua::UaConfig;
use sipstream::webrtc::{WebrtcConfig, WhepService};

fn main() -> anyhow::Result<()> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    // `sipstream [--api URL] [--json] call|push|record|siprec|stream|events ...` is the CLI
    // over the REST API; `sipstream serve [--config F] [--set k=v]` (or no command) is the
    // gateway.
    match sipstream::cli::dispatch(&args) {
        sipstream::cli::Dispatch::Cli => return cli(args),
        sipstream::cli::Dispatch::Serve(at) => {
            if let Some(i) = at {
                args.remove(i);
            }
        }
    }
    let cfg = Config::load(args, |k| std::env::var(k).ok())?;
    let filter = tracing_subscriber::EnvFilter::try_new(&cfg.log_level)
        .with_context(|| format!("log_level {:?}", cfg.log_level))?;
    if cfg.log_json {
        // The current span's fields (a call's call_id) in every line, the event's own
        // fields at the top level.
        tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_env_filter(filter)
            .init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(Arc::new(cfg)))
}

/// The CLI: one command against a gateway's API; exits 1 on an API error, 2 when the API
/// cannot be reached or the command line is wrong.
fn cli(args: Vec<String>) -> anyhow::Result<()> {
    use clap::Parser;
    let cli = match sipstream::cli::Cli::try_parse_from(
        std::iter::once("sipstream".to_string()).chain(args),
    ) {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            if code == 0 {
                println!(
                    "\nThe gateway itself: sipstream serve [--config FILE] [--set key=value ...]"
                );
            }
            std::process::exit(code);
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut out = std::io::stdout();
    if let Err(e) = runtime.block_on(sipstream::cli::run(cli, &mut out)) {
        eprintln!("error: {e}");
        std::process::exit(e.exit_code());
    }
    Ok(())
}

async fn run(cfg: Arc<Config>) -> anyhow::Result<()> {
    let bus = EventBus::new(4096);
    let webhook_stats = cfg.webhook_url.as_ref().map(|url| {
        let stats = Arc::new(webhook::WebhookStats::default());
        webhook::spawn(
            &bus,
            webhook::WebhookConfig {
                url: url.clone(),
                retries: cfg.webhook_retries,
                timeout: cfg.webhook_timeout,
                secret: cfg.webhook_secret.clone(),
            },
            stats.clone(),
        );
        stats
    });
    let (ua_tx, ua_rx) = mpsc::channel(driver::EVENT_QUEUE);
    let sip = driver::start(
        DriverConfig {
            bind: cfg.sip_address,
            port: cfg.sip_port,
            udp: cfg.sip_udp,
            tcp: cfg.sip_tcp,
            tls: Some(driver::TlsDriverConfig {
                port: cfg.sip_tls_port,
                client: sipstream::sip::tls::client_config(&cfg.sip_tls)
                    .context("SIP over TLS client")?,
                server: sipstream::sip::tls::server_config(&cfg.sip_tls)
                    .context("SIP over TLS listener")?,
            }),
            socket_buffer: cfg.sip_socket_buffer,
            max_message_size: cfg.sip_max_message_size,
            ua: UaConfig {
                timers: cfg.sip_timers(),
                user_agent: cfg.sip_user_agent.clone(),
                register_expires: cfg.sip_register_expires,
                invite_timeout: cfg.sip_invite_timeout,
                max_pending_invites: cfg.sip_max_pending_invites,
            },
        },
        ua_tx,
    )
    .await
    .with_context(|| format!("binding SIP on {}:{}", cfg.sip_address, cfg.sip_port))?;
    let registry = Registry::new(cfg.stream_reader_queue);
    registry.set_max_readers(cfg.stream_max_readers);
    let ports = PortPool::new(cfg.rtp_port_min, cfg.rtp_port_max)
        .map_err(|e| anyhow::anyhow!("rtp_port_min/rtp_port_max: {e}"))?;
    let pushes = PushManager::new(registry.clone(), bus.clone(), PushConfig::from_config(&cfg));
    let pulls = PullManager::new(registry.clone(), bus.clone(), PullConfig::from_config(&cfg));
    let whep = WhepService::new(WebrtcConfig::from_config(&cfg), registry.clone());
    let hls = HlsService::new(
        HlsServiceConfig::from_config(&cfg),
        registry.clone(),
        tokio::runtime::Handle::current(),
    );
    let recordings = RecordingManager::new(
        registry.clone(),
        cfg.record_dir.clone(),
        cfg.record_file_template.clone(),
        cfg.record_fsync,
        bus.clone(),
    );
    let recordings_on_exit = recordings.clone();
    let interrupted = recordings.recover();
    if interrupted > 0 {
        tracing::warn!(
            interrupted,
            "recordings of an earlier run were never finished; marked interrupted"
        );
    }
    let media = MediaThreads::start(cfg.rtp_threads).context("media threads")?;
    tracing::info!(threads = media.len(), "media threads started");
    let calls = CallManager::new(
        cfg.clone(),
        sip,
        registry,
        ports,
        bus.clone(),
        recordings,
        media,
    );
    tokio::spawn(calls.clone().run(ua_rx));
    let media_streams = MediaStreamManager::new(
        calls.clone(),
        bus.clone(),
        MediaStreamConfig::from_config(&cfg),
    );
    tokio::spawn(media_streams.clone().run());
    let injections = InjectManager::new(calls.clone(), bus.clone(), cfg.sound_dir.clone());
    let exchanges = sipstream::exchange::ExchangeManager::new(
        calls.clone(),
        bus.clone(),
        cfg.media_exchange_timeout,
    );
    tokio::spawn(exchanges.clone().run());
    let webhook_stats_on_exit = webhook_stats.clone();
    let metrics = Metrics::new(calls.clone(), webhook_stats);
    tokio::spawn(metrics.clone().follow(bus.clone(), calls.clone()));
    tokio::spawn(metrics.clone().sample_jitter(calls.registry().clone()));

    let auth = std::sync::Arc::new(sipstream::api::auth::Auth::new(&cfg));
    let state = web::Data::new(AppState {
        auth,
        calls: calls.clone(),
        cfg: cfg.clone(),
        whep,
        hls,
        pushes: pushes.clone(),
        pulls: pulls.clone(),
        media_streams: media_streams.clone(),
        injections,
        exchanges,
        bus,
        metrics,
        core: tokio::runtime::Handle::current(),
    });
    let body_limit = cfg.api_max_body_kb * 1024;
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .app_data(web::PayloadConfig::new(body_limit))
            .configure(api::configure)
    })
    .bind((cfg.rest_address, cfg.rest_port))
    .with_context(|| format!("binding REST on {}:{}", cfg.rest_address, cfg.rest_port))?
    .disable_signals()
    .shutdown_timeout(2)
    .run();
    let handle = server.handle();
    tracing::info!(address = %cfg.rest_address, port = cfg.rest_port, "REST API listening");
    let server_task = tokio::spawn(server);

    shutdown_signal().await;
    // Graceful: everything within shutdown_timeout_s, in order: calls hung up (BYE) and
    // un-registered, recordings finalised as their streams end, webhooks delivered.
    let deadline = tokio::time::Instant::now() + cfg.shutdown_timeout;
    tracing::info!("shutting down: hanging up calls and un-registering");
    pushes.terminate_all();
    pulls.terminate_all();
    media_streams.stop_all();
    calls.shutdown(cfg.shutdown_timeout).await;
    let left = |d: tokio::time::Instant| d.saturating_duration_since(tokio::time::Instant::now());
    let running = recordings_on_exit.wait_idle(left(deadline)).await;
    if running > 0 {
        tracing::warn!(running, "shutdown: recordings still running at the timeout");
    }
    if let Some(stats) = &webhook_stats_on_exit {
        if !stats
            .drain(left(deadline).max(std::time::Duration::from_millis(200)))
            .await
        {
            tracing::warn!("shutdown: webhook events still queued at the timeout");
        }
    }
    handle.stop(true).await;
    let _ = server_task.await;
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
