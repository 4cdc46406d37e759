//! The media fork of one Recording Session: reads the recorded call's stream from the
//! registry (reader kind `siprec`) and sends it to the SRS with its own SSRC and sequence
//! numbers; sends the gateway's side (what the gateway sends to the callee: silence until
//! media is injected) as the second stream. Paused means nothing is sent.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::net::UdpSocket;
use tokio::sync::oneshot;
use tracing::Instrument;

use crate::registry::{Leg, Reader, ReaderEvent, TrackId, TrackKind};
use crate::rtp::packet::RtpHeader;
use crate::rtp::ports::BoundPair;

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
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<(BoundPair, BoundPair)>,
}

impl ForkHandle {
    pub fn set_paused(&self, paused: bool) {
        self.paused.store(paused, Ordering::Relaxed);
    }

    pub fn packets(&self) -> u64 {
        self.counters.packets.load(Ordering::Relaxed)
    }

    /// Stops sending and gives the port pairs back.
    pub async fn stop(mut self) -> Option<(BoundPair, BoundPair)> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        (&mut self.task).await.ok()
    }
}

/// Starts the fork. The sockets of `pairs` (callee stream, caller stream) are the ports the
/// SDP offer announced, so the SRS sees the source it was told about.
pub fn spawn(
    reader: Reader,
    pairs: (BoundPair, BoundPair),
    cfg: ForkConfig,
    span: tracing::Span,
) -> ForkHandle {
    let paused = Arc::new(AtomicBool::new(false));
    let counters = Arc::new(ForkCounters::default());
    let (stop_tx, stop_rx) = oneshot::channel();
    let task = tokio::spawn(
        run(
            reader,
            pairs,
            cfg,
            paused.clone(),
            counters.clone(),
            stop_rx,
        )
        .instrument(span),
    );
    ForkHandle {
        paused,
        counters,
        stop: Some(stop_tx),
        task,
    }
}

struct Outgoing {
    ssrc: u32,
    seq: u16,
    ts_offset: u32,
}

impl Outgoing {
    fn new() -> Self {
        Self {
            ssrc: rand::random(),
            seq: rand::random(),
            ts_offset: rand::random(),
        }
    }

    fn packet(&mut self, pt: u8, marker: bool, ts: u32, payload: &[u8], buf: &mut Vec<u8>) {
        buf.clear();
        RtpHeader {
            pt,
            marker,
            seq: self.seq,
            timestamp: ts.wrapping_add(self.ts_offset),
            ssrc: self.ssrc,
        }
        .write(payload, buf);
        self.seq = self.seq.wrapping_add(1);
    }
}

async fn run(
    mut reader: Reader,
    pairs: (BoundPair, BoundPair),
    cfg: ForkConfig,
    paused: Arc<AtomicBool>,
    counters: Arc<ForkCounters>,
    mut stop: oneshot::Receiver<()>,
) -> (BoundPair, BoundPair) {
    let mut callee_out = Outgoing::new();
    let mut caller_out = Outgoing::new();
    let mut caller_ts: u32 = 0;
    let samples = cfg.clock_rate.saturating_mul(cfg.ptime_ms.max(10)) / 1000;
    let mut tick = tokio::time::interval(Duration::from_millis(u64::from(cfg.ptime_ms.max(10))));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut audio_track: Option<TrackId> = None;
    let mut buf = Vec::with_capacity(1500);
    let mut first = true;
    let send = |sock: &UdpSocket, data: &[u8], dest: SocketAddr| match sock.try_send_to(data, dest)
    {
        Ok(n) => {
            counters.packets.fetch_add(1, Ordering::Relaxed);
            counters.bytes.fetch_add(n as u64, Ordering::Relaxed);
        }
        Err(_) => {
            counters.send_errors.fetch_add(1, Ordering::Relaxed);
        }
    };
    loop {
        tokio::select! {
            _ = &mut stop => break,
            ev = reader.recv() => match ev {
                Some(ReaderEvent::TrackChanged(id, spec)) => {
                    if spec.kind == TrackKind::Audio && spec.leg != Leg::Caller {
                        audio_track = Some(id);
                    }
                }
                Some(ReaderEvent::Media(unit)) => {
                    if Some(unit.track) != audio_track || paused.load(Ordering::Relaxed) {
                        continue;
                    }
                    if let Some(dest) = cfg.callee_dest {
                        callee_out.packet(cfg.payload_type, unit.marker, unit.timestamp, &unit.payload, &mut buf);
                        send(&pairs.0.rtp, &buf, dest);
                    }
                }
                Some(ReaderEvent::Ended(_)) | None => break,
            },
            _ = tick.tick() => {
                caller_ts = caller_ts.wrapping_add(samples);
                if paused.load(Ordering::Relaxed) || cfg.caller_payload.is_empty() {
                    continue;
                }
                if let Some(dest) = cfg.caller_dest {
                    caller_out.packet(cfg.payload_type, first, caller_ts, &cfg.caller_payload, &mut buf);
                    first = false;
                    send(&pairs.1.rtp, &buf, dest);
                }
            }
        }
    }
    pairs
}
