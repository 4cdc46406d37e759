//! The media fork of one Recording Session. Each party's stream is forked by an
//! [`InlineSink`] attached to the recorded call's stream, taking that party's own track
//! (callee: the first m-line, caller: the second): each packet is re-stamped (own SSRC and
//! sequence numbers) and sent from the publisher's task with a non-blocking send, with no
//! queue and no extra task wake-up per packet. When the stream has no caller track (an
//! outbound call: the gateway itself is the caller), the caller's stream is what the gateway
//! sends, silence, paced by a small task. Either exists only when the SRS accepted that
//! stream. Paused means nothing is sent.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
// Plain sockets, registered with no reactor: the fork only sends, and a socket registered
// for writability makes every send's freed buffer an epoll event on that runtime (a wake-up
// of an idle worker per packet showed in profiles).
use std::net::UdpSocket;
use tracing::Instrument;

use crate::registry::{
    InlineSink, Leg, MediaUnit, Registry, RegistryError, SinkHandle, TrackId, TrackKind, TrackSpec,
};
use crate::rtp::packet::RtpHeader;
use crate::rtp::ports::{BoundPair, PortLease};

/// The reader kind forks show under in `/stream/find`.
pub const READER_KIND: &str = "siprec";

#[derive(Debug, Default)]
pub struct ForkCounters {
    pub packets: AtomicU64,
    pub bytes: AtomicU64,
    pub send_errors: AtomicU64,
}

/// Where and how to send.
pub struct ForkConfig {
    /// SRS address for the callee's stream (first m-line) and the caller's (second).
    pub callee_dest: Option<SocketAddr>,
    pub caller_dest: Option<SocketAddr>,
    pub payload_type: u8,
    pub clock_rate: u32,
    pub ptime_ms: u32,
    /// What the gateway sends to the callee (silence in the call's codec).
    pub caller_payload: Bytes,
}

pub struct ForkHandle {
    paused: Arc<AtomicBool>,
    counters: Arc<ForkCounters>,
    attachment: Option<SinkHandle>,
    /// The caller's stream from the caller's own track (inbound and two-party calls).
    caller_attachment: Option<SinkHandle>,
    /// Else the gateway's silence on the caller's stream.
    ticker: Option<tokio::task::JoinHandle<()>>,
    /// The port leases stay taken while the fork runs (the SDP named these ports).
    _leases: (PortLease, PortLease),
}

impl ForkHandle {
    pub fn set_paused(&self, paused: bool) {
        self.paused.store(paused, Ordering::Relaxed);
    }

    pub fn packets(&self) -> u64 {
        self.counters.packets.load(Ordering::Relaxed)
    }

    /// Stops sending; the ports go back to the pool.
    pub fn stop(mut self) {
        self.attachment.take();
        self.caller_attachment.take();
        if let Some(t) = self.ticker.take() {
            t.abort();
        }
    }
}

impl Drop for ForkHandle {
    fn drop(&mut self) {
        if let Some(t) = self.ticker.take() {
            t.abort();
        }
    }
}

/// Per-stream re-stamping: our SSRC, our sequence numbers, the source's timing.
struct Outgoing {
    ssrc: u32,
    seq: u16,
    ts_offset: u32,
    buf: Vec<u8>,
}

impl Outgoing {
    fn new() -> Self {
        Self {
            ssrc: rand::random(),
            seq: rand::random(),
            ts_offset: rand::random(),
            buf: Vec::with_capacity(1500),
        }
    }

    fn packet(&mut self, pt: u8, marker: bool, ts: u32, payload: &[u8]) -> &[u8] {
        self.buf.clear();
        RtpHeader {
            pt,
            marker,
            seq: self.seq,
            timestamp: ts.wrapping_add(self.ts_offset),
            ssrc: self.ssrc,
        }
        .write(payload, &mut self.buf);
        self.seq = self.seq.wrapping_add(1);
        &self.buf
    }
}

/// Sends `data` to `dest`, or to the socket's peer when it is connected to `dest` (no route
/// lookup per packet).
fn send(
    sock: &UdpSocket,
    data: &[u8],
    dest: SocketAddr,
    connected: bool,
    counters: &ForkCounters,
) -> bool {
    let sent = if connected {
        sock.send(data)
    } else {
        sock.send_to(data, dest)
    };
    match sent {
        Ok(n) => {
            counters.packets.fetch_add(1, Ordering::Relaxed);
            counters.bytes.fetch_add(n as u64, Ordering::Relaxed);
            true
        }
        Err(_) => {
            counters.send_errors.fetch_add(1, Ordering::Relaxed);
            false
        }
    }
}

/// One half of the fork, called by the publisher: the audio track of `leg` sent to the SRS.
struct LegSink {
    leg: Leg,
    sock: UdpSocket,
    dest: Option<SocketAddr>,
    /// `sock` is connected to `dest`.
    connected: bool,
    payload_type: u8,
    audio_track: AtomicUsize,
    paused: Arc<AtomicBool>,
    counters: Arc<ForkCounters>,
    out: Mutex<Outgoing>,
}

const NO_TRACK: usize = usize::MAX;

impl InlineSink for LegSink {
    fn on_track(&self, id: TrackId, spec: &TrackSpec) {
        // That party's own audio (not a two-party call's mixed track).
        if spec.kind == TrackKind::Audio && spec.leg == self.leg {
            self.audio_track.store(id, Ordering::Relaxed);
        }
    }

    fn on_media(&self, unit: &MediaUnit) -> bool {
        if unit.track != self.audio_track.load(Ordering::Relaxed)
            || self.paused.load(Ordering::Relaxed)
        {
            return true;
        }
        let Some(dest) = self.dest else {
            return true;
        };
        let mut out = self.out.lock();
        let data = out.packet(
            self.payload_type,
            unit.marker,
            unit.timestamp,
            &unit.payload,
        );
        send(&self.sock, data, dest, self.connected, &self.counters)
    }

    fn on_end(&self, _reason: &str) {}
}

#[derive(Debug, thiserror::Error)]
pub enum ForkError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("fork socket: {0}")]
    Socket(#[from] std::io::Error),
}

/// Starts the fork on `stream`. The sockets of `pairs` (callee stream, caller stream) are
/// the ports the SDP offer announced, so the SRS sees the source it was told about.
pub fn spawn(
    registry: &Registry,
    stream: &str,
    pairs: (BoundPair, BoundPair),
    cfg: ForkConfig,
    span: tracing::Span,
) -> Result<ForkHandle, ForkError> {
    let paused = Arc::new(AtomicBool::new(false));
    let counters = Arc::new(ForkCounters::default());
    let (callee, caller) = pairs;
    let (callee_sock, caller_sock) = (callee.rtp.into_std()?, caller.rtp.into_std()?);
    // The SRS only receives on the callee stream's socket (its RTCP goes to the RTCP port),
    // so connecting it filters nothing it needs.
    let connected = cfg
        .callee_dest
        .is_some_and(|d| callee_sock.connect(d).is_ok());
    // The caller's stream carries the caller's audio when the stream has it (an inbound call,
    // a two-party call); else the gateway is the caller, and it sends silence.
    let has_caller = registry.find(stream).is_some_and(|info| {
        info.tracks
            .iter()
            .any(|t| t.kind == TrackKind::Audio && t.leg == Leg::Caller)
    });
    let sink = Arc::new(LegSink {
        leg: Leg::Callee,
        sock: callee_sock,
        dest: cfg.callee_dest,
        connected,
        payload_type: cfg.payload_type,
        audio_track: AtomicUsize::new(NO_TRACK),
        paused: paused.clone(),
        counters: counters.clone(),
        out: Mutex::new(Outgoing::new()),
    });
    let attachment = registry.attach(stream, READER_KIND, sink)?;
    let mut caller_attachment = None;
    // The second stream only when the SRS took it (port ≠ 0) and there is something to send.
    let ticker = match cfg.caller_dest {
        Some(dest) if has_caller => {
            let connected = caller_sock.connect(dest).is_ok();
            let sink = Arc::new(LegSink {
                leg: Leg::Caller,
                sock: caller_sock,
                dest: Some(dest),
                connected,
                payload_type: cfg.payload_type,
                audio_track: AtomicUsize::new(NO_TRACK),
                paused: paused.clone(),
                counters: counters.clone(),
                out: Mutex::new(Outgoing::new()),
            });
            caller_attachment = Some(registry.attach(stream, READER_KIND, sink)?);
            None
        }
        Some(dest) if !cfg.caller_payload.is_empty() => Some(tokio::spawn(
            caller_stream(caller_sock, dest, cfg, paused.clone(), counters.clone())
                .instrument(span),
        )),
        _ => None,
    };
    Ok(ForkHandle {
        paused,
        counters,
        attachment: Some(attachment),
        caller_attachment,
        ticker,
        _leases: (callee.lease, caller.lease),
    })
}

async fn caller_stream(
    sock: UdpSocket,
    dest: SocketAddr,
    cfg: ForkConfig,
    paused: Arc<AtomicBool>,
    counters: Arc<ForkCounters>,
) {
    let mut out = Outgoing::new();
    let ptime = cfg.ptime_ms.max(10);
    let samples = cfg.clock_rate.saturating_mul(ptime) / 1000;
    let mut tick = tokio::time::interval(Duration::from_millis(u64::from(ptime)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut ts: u32 = 0;
    let mut first = true;
    loop {
        tick.tick().await;
        ts = ts.wrapping_add(samples);
        if paused.load(Ordering::Relaxed) {
            continue;
        }
        let data = out.packet(cfg.payload_type, first, ts, &cfg.caller_payload);
        first = false;
        send(&sock, data, dest, false, &counters);
    }
}
