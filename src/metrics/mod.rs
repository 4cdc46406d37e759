//! Prometheus metrics: `GET /metrics` in the OpenMetrics text format, every family named
//! `sipstream_*`.
//!
//! Two sources, and no cost on the media path:
//! - Counters of things that happen (calls started, established, ended by status and SIP
//!   status; SIPREC sessions; recordings; RTMP push and media-stream events; call control
//!   events; DTMF) are counted by [`Metrics::follow`], a task reading the event bus.
//! - Everything else is read when scraped ([`Snapshot`]): calls by status, the registry's
//!   running totals (RTP packets, bytes and loss by media kind; readers, units and drops by
//!   reader kind), recordings and SIPREC sessions by state, webhook deliveries, and the
//!   process's CPU, memory, descriptors and threads from `/proc/self`.
//!
//! The jitter histogram is a sample: every [`JITTER_EVERY`] each live audio track's
//! interarrival jitter (RFC 3550, as the RTP session last computed it) is observed once.
//!
//! This module reads the layers below it (call manager, registry, webhook stats) and the
//! bus; nothing calls into it but the API's `/metrics` handler.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry as PromRegistry;
use tokio::sync::broadcast::error::RecvError;

use crate::call::manager::CallManager;
use crate::events::webhook::WebhookStats;
use crate::events::{Event, EventBus};
use crate::registry::TrackKind;

/// How often live tracks' jitter is sampled into the histogram.
pub const JITTER_EVERY: Duration = Duration::from_secs(10);

type Labels = Vec<(&'static str, String)>;

/// The gateway's metrics. Cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: PromRegistry,
    counted: Counted,
    jitter: Histogram,
    /// Calls seen and not yet ended: their direction, and whether they were established.
    live: Mutex<std::collections::HashMap<String, (&'static str, bool)>>,
}

/// The counters the bus follower moves.
#[derive(Default)]
struct Counted {
    calls_started: Family<Labels, Counter>,
    calls_established: Family<Labels, Counter>,
    calls_ended: Family<Labels, Counter>,
    call_control: Family<Labels, Counter>,
    dtmf: Family<Labels, Counter>,
    registrations: Family<Labels, Counter>,
    siprec: Family<Labels, Counter>,
    recordings: Family<Labels, Counter>,
    rtmp: Family<Labels, Counter>,
    media_streams: Family<Labels, Counter>,
    bus_lagged: Counter,
}

impl Metrics {
    /// `calls` and `webhooks` are read at each scrape.
    pub fn new(calls: CallManager, webhooks: Option<Arc<WebhookStats>>) -> Self {
        let mut registry = PromRegistry::default();
        let counted = Counted::default();
        let c = &counted;
        let families: [(&str, &str, &Family<Labels, Counter>); 10] = [
            (
                "sipstream_calls_started",
                "Calls placed or received, by direction",
                &c.calls_started,
            ),
            (
                "sipstream_calls_established",
                "Calls answered (first time ESTABLISHED), by direction",
                &c.calls_established,
            ),
            (
                "sipstream_calls_ended",
                "Calls ended, by final status (FINISH, BUSY, FAILED) and last SIP status: setup failures are the BUSY and FAILED ones",
                &c.calls_ended,
            ),
            (
                "sipstream_call_control_events",
                "Call control events (hold, transfer, media exchange, injection and others), by event",
                &c.call_control,
            ),
            (
                "sipstream_dtmf_digits",
                "DTMF digits received, by method",
                &c.dtmf,
            ),
            (
                "sipstream_registrations",
                "REGISTER outcomes, by status",
                &c.registrations,
            ),
            (
                "sipstream_siprec_sessions",
                "SIPREC sessions started, stopped, or failed (no SRS accepted)",
                &c.siprec,
            ),
            (
                "sipstream_recording_events",
                "Recording status changes, by state",
                &c.recordings,
            ),
            (
                "sipstream_rtmp_push_events",
                "RTMP push status changes (reconnects among them), by status",
                &c.rtmp,
            ),
            (
                "sipstream_media_stream_events",
                "Voice-agent media stream events (started, reconnecting, stopped, failed)",
                &c.media_streams,
            ),
        ];
        for (name, help, family) in families {
            registry.register(name, help, family.clone());
        }
        // Series that exist from the start (at zero), so that rates work from the first
        // scrape and dashboards find them; others appear when they first happen.
        for dir in ["outbound", "inbound"] {
            let labels = vec![("direction", dir.to_string())];
            let _ = counted.calls_started.get_or_create(&labels);
            let _ = counted.calls_established.get_or_create(&labels);
        }
        for e in ["started", "stopped", "failed"] {
            let _ = counted
                .siprec
                .get_or_create(&vec![("event", e.to_string())]);
        }
        for st in ["PUBLISHING", "RECONNECTING", "FAILED"] {
            let _ = counted
                .rtmp
                .get_or_create(&vec![("status", st.to_string())]);
        }
        for st in ["recording", "done", "failed"] {
            let _ = counted
                .recordings
                .get_or_create(&vec![("state", st.to_string())]);
        }
        registry.register(
            "sipstream_event_bus_lagged",
            "Events the metrics follower missed because it fell behind the bus",
            counted.bus_lagged.clone(),
        );
        let jitter = Histogram::new([1.0, 2.0, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0]);
        registry.register(
            "sipstream_rtp_jitter_ms",
            "Interarrival jitter of live audio tracks, in milliseconds, sampled every 10 s per track",
            jitter.clone(),
        );
        registry.register_collector(Box::new(Snapshot { calls, webhooks }));
        Self {
            inner: Arc::new(Inner {
                registry,
                counted,
                jitter,
                live: Mutex::default(),
            }),
        }
    }

    /// The OpenMetrics text of every family.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::with_capacity(16 * 1024);
        prometheus_client::encoding::text::encode(&mut out, &self.inner.registry)?;
        Ok(out)
    }

    /// Counts what happens on the bus until it closes. `calls` says a new call's direction.
    pub async fn follow(self, bus: EventBus, calls: CallManager) {
        let mut rx = bus.subscribe();
        loop {
            match rx.recv().await {
                Ok(ev) => self.count(&ev, &calls),
                Err(RecvError::Lagged(n)) => {
                    self.inner.counted.bus_lagged.inc_by(n);
                    // Ends may have been among the missed events: forget calls that are over.
                    self.inner
                        .live
                        .lock()
                        .retain(|id, _| calls.find(id).is_some_and(|c| !c.status.is_final()));
                }
                Err(RecvError::Closed) => return,
            }
        }
    }

    /// Observes each live audio track's jitter every [`JITTER_EVERY`], until the process
    /// ends.
    pub async fn sample_jitter(self, registry: crate::registry::Registry) {
        let mut tick = tokio::time::interval(JITTER_EVERY);
        loop {
            tick.tick().await;
            for s in registry.list() {
                for t in s.tracks.iter().filter(|t| t.kind == TrackKind::Audio) {
                    if t.packets > 0 {
                        self.inner.jitter.observe(t.jitter);
                    }
                }
            }
        }
    }

    fn count(&self, ev: &Event, calls: &CallManager) {
        let c = &self.inner.counted;
        let one = |f: &Family<Labels, Counter>, k: &'static str, v: &str| {
            f.get_or_create(&vec![(k, v.to_string())]).inc();
        };
        match ev {
            Event::CallStatusEvent {
                call_id,
                status,
                sip_status,
                ..
            } => {
                let final_ = matches!(status.as_str(), "FINISH" | "BUSY" | "FAILED");
                let mut live = self.inner.live.lock();
                if !live.contains_key(call_id) && !final_ {
                    let dir = match calls.find(call_id) {
                        Some(c) if c.direction == "inbound" => "inbound",
                        _ => "outbound",
                    };
                    live.insert(call_id.clone(), (dir, false));
                    one(&c.calls_started, "direction", dir);
                }
                if status == "ESTABLISHED" {
                    if let Some((dir, established)) = live.get_mut(call_id) {
                        if !*established {
                            *established = true;
                            one(&c.calls_established, "direction", dir);
                        }
                    }
                }
                if final_ {
                    live.remove(call_id);
                    let sip = sip_status.map_or_else(|| "none".to_string(), |s| s.to_string());
                    c.calls_ended
                        .get_or_create(&vec![("status", status.clone()), ("sip_status", sip)])
                        .inc();
                }
            }
            Event::CallControlEvent { event, .. } => one(&c.call_control, "event", event),
            Event::DtmfEvent { method, .. } => one(&c.dtmf, "method", method),
            Event::RegistrationStatusEvent { status, .. } => {
                one(&c.registrations, "status", status)
            }
            Event::SiprecStart(_) => one(&c.siprec, "event", "started"),
            Event::SiprecStop(_) => one(&c.siprec, "event", "stopped"),
            Event::SiprecFailed { .. } => one(&c.siprec, "event", "failed"),
            Event::RecordingStatusEvent { recording, .. } => {
                let state = serde_json::to_value(recording.state)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default();
                one(&c.recordings, "state", &state)
            }
            Event::RtmpPushStatusEvent { status, .. } => one(&c.rtmp, "status", status),
            Event::MediaStreamEvent { event, .. } => one(&c.media_streams, "event", event),
            Event::StreamStatusEvent { .. } => {}
        }
    }
}

/// What is read at each scrape.
struct Snapshot {
    calls: CallManager,
    webhooks: Option<Arc<WebhookStats>>,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot").finish_non_exhaustive()
    }
}

fn gauge(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[(Labels, i64)],
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in rows {
        ConstGauge::new(*v).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

fn counter(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[(Labels, u64)],
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in rows {
        ConstCounter::new(*v).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

fn l(pairs: &[(&'static str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (*k, v.to_string())).collect()
}

impl Collector for Snapshot {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let calls: Vec<(Labels, i64)> = self
            .calls
            .live_by_status()
            .into_iter()
            .map(|(s, d, n)| (l(&[("status", s), ("direction", d)]), n as i64))
            .collect();
        gauge(
            &mut enc,
            "sipstream_calls",
            "Calls not yet ended, by status and direction",
            &calls,
        )?;
        let registry = self.calls.registry();
        gauge(
            &mut enc,
            "sipstream_streams",
            "Streams in the registry now",
            &[(Vec::new(), registry.len() as i64)],
        )?;
        let t = registry.totals();
        counter(
            &mut enc,
            "sipstream_streams_created",
            "Streams created since start",
            &[(Vec::new(), t.streams)],
        )?;
        let kinds = [("audio", t.audio), ("video", t.video)];
        for (name, help, f) in [
            (
                "sipstream_rtp_packets_received",
                "RTP packets received from the far ends into streams, by media kind",
                (|k: &crate::registry::KindTotals| k.packets) as fn(&_) -> u64,
            ),
            (
                "sipstream_rtp_bytes_received",
                "RTP payload bytes received into streams, by media kind",
                |k| k.bytes,
            ),
            (
                "sipstream_rtp_packets_lost",
                "RTP packets lost on the way in (sequence gaps), by media kind",
                |k| k.lost,
            ),
        ] {
            let rows: Vec<(Labels, u64)> = kinds
                .iter()
                .map(|(kind, k)| (l(&[("kind", kind)]), f(k)))
                .collect();
            counter(&mut enc, name, help, &rows)?;
        }
        let readers: Vec<(Labels, i64)> = t
            .readers
            .iter()
            .map(|(k, r)| (l(&[("kind", k)]), r.live as i64))
            .collect();
        gauge(
            &mut enc,
            "sipstream_readers",
            "Stream readers now, by kind (recorder, whep, rtmp, siprec, bridge, exchange and others)",
            &readers,
        )?;
        for (name, help, f) in [
            (
                "sipstream_reader_units",
                "Media units readers took from streams, by reader kind",
                (|r: &crate::registry::ReaderTotals| r.received) as fn(&_) -> u64,
            ),
            (
                "sipstream_reader_drops",
                "Media units lost by readers that fell behind (the publisher never waits), by reader kind",
                |r| r.dropped,
            ),
        ] {
            let rows: Vec<(Labels, u64)> = t
                .readers
                .iter()
                .map(|(k, r)| (l(&[("kind", k)]), f(r)))
                .collect();
            counter(&mut enc, name, help, &rows)?;
        }

        let recs = self.calls.recordings().find_all();
        let mut by_state: std::collections::BTreeMap<String, i64> = Default::default();
        let (mut bytes, mut frag_dropped) = (0u64, 0u64);
        for r in &recs {
            let state = serde_json::to_value(r.state)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            *by_state.entry(state).or_default() += 1;
            bytes += r.size_bytes;
            frag_dropped += r.fragments_dropped;
        }
        let rows: Vec<(Labels, i64)> = by_state
            .iter()
            .map(|(s, n)| (l(&[("state", s)]), *n))
            .collect();
        gauge(
            &mut enc,
            "sipstream_recordings",
            "Recordings the gateway lists, by state (recording, done, failed)",
            &rows,
        )?;
        gauge(
            &mut enc,
            "sipstream_recording_bytes",
            "Bytes written by the recordings the gateway lists",
            &[(Vec::new(), bytes as i64)],
        )?;
        gauge(
            &mut enc,
            "sipstream_recording_fragments_dropped",
            "Fragments the listed recordings lost to a disk that did not keep up",
            &[(Vec::new(), frag_dropped as i64)],
        )?;

        let mut siprec: std::collections::BTreeMap<String, i64> = Default::default();
        for s in self.calls.siprec_find(None, None).unwrap_or_default() {
            let state = serde_json::to_value(s.state)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            *siprec.entry(state).or_default() += 1;
        }
        let rows: Vec<(Labels, i64)> = siprec
            .iter()
            .map(|(s, n)| (l(&[("state", s)]), *n))
            .collect();
        gauge(
            &mut enc,
            "sipstream_siprec_sessions_listed",
            "SIPREC sessions /siprec/find lists, by state",
            &rows,
        )?;

        if let Some(w) = &self.webhooks {
            let rows = [
                (
                    l(&[("result", "delivered")]),
                    w.delivered.load(Ordering::Relaxed),
                ),
                (
                    l(&[("result", "failed_attempt")]),
                    w.failed_attempts.load(Ordering::Relaxed),
                ),
                (
                    l(&[("result", "dropped")]),
                    w.dropped.load(Ordering::Relaxed),
                ),
            ];
            counter(
                &mut enc,
                "sipstream_webhook_posts",
                "Webhook POSTs: events delivered, failed attempts (retried), events dropped",
                &rows,
            )?;
        }

        let p = process();
        let cpu = ConstCounter::new(p.cpu_ms as f64 / 1000.0);
        cpu.encode(enc.encode_descriptor(
            "sipstream_process_cpu_seconds",
            "CPU time of the gateway process (user and system), in seconds",
            None,
            cpu.metric_type(),
        )?)?;
        for (name, help, v) in [
            (
                "sipstream_process_resident_memory_bytes",
                "Resident memory of the gateway process",
                p.rss_bytes,
            ),
            (
                "sipstream_process_open_fds",
                "Open file descriptors (sockets included)",
                p.fds,
            ),
            ("sipstream_process_threads", "Threads.", p.threads),
        ] {
            gauge(&mut enc, name, help, &[(Vec::new(), v as i64)])?;
        }
        Ok(())
    }
}

#[derive(Debug, Default, PartialEq, Eq)]
struct Process {
    cpu_ms: u64,
    rss_bytes: u64,
    fds: u64,
    threads: u64,
}

/// The process's own figures from `/proc/self` (zeros where it cannot be read).
fn process() -> Process {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64);
    parse_process(&status, &stat, fds)
}

/// Reads VmRSS and Threads from `/proc/self/status`, utime and stime (in clock ticks of
/// 1/100 s, the USER_HZ Linux gives user space) from `/proc/self/stat`.
fn parse_process(status: &str, stat: &str, fds: u64) -> Process {
    let field = |name: &str| {
        status.lines().find_map(|l| {
            let rest = l.strip_prefix(name)?.strip_prefix(':')?;
            rest.split_whitespace().next()?.parse::<u64>().ok()
        })
    };
    // The command name is in parentheses and may hold spaces: fields count after the last ')'.
    let ticks = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect::<Vec<_>>())
        .and_then(|f| {
            // After ')': state is field 3 of stat(5), utime 14 and stime 15.
            let utime: u64 = f.get(11)?.parse().ok()?;
            let stime: u64 = f.get(12)?.parse().ok()?;
            Some(utime + stime)
        })
        .unwrap_or(0);
    Process {
        cpu_ms: ticks * 10,
        rss_bytes: field("VmRSS").unwrap_or(0) * 1024,
        fds,
        threads: field("Threads").unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_figures_are_read_from_proc_text() {
        let status = "Name:\tsipstream\nVmRSS:\t  20480 kB\nThreads:\t7\n";
        let stat = "4242 (sip stream) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 7 0";
        let p = parse_process(status, stat, 12);
        assert_eq!(
            p,
            Process {
                cpu_ms: 3000,
                rss_bytes: 20480 * 1024,
                fds: 12,
                threads: 7
            }
        );
        assert_eq!(parse_process("", "garbage", 0), Process::default());
        // This process: something is there.
        let me = process();
        assert!(me.rss_bytes > 0 && me.threads > 0 && me.fds > 0, "{me:?}");
    }
}
