//! The media fork of one Recording Session. Each party's stream is forked by an
//! [`InlineSink`] attached to the recorded call's stream, taking that party's own track
//! (callee: the first m-line, caller: the second): each packet is re-stamped (own SSRC and
//! sequence numbers) and sent from the publisher's task with a non-blocking send, with no
//! queue and no extra task wake-up per packet. When the stream has no caller track (an
//! outbound call: the gateway itself is the caller), the caller's stream is what the gateway
//! sends, silence, paced by a small task. Either exists only when the SRS accepted that
//! stream. Paused means nothing is sent. Each stream has its own format ([`ForkStream`]:
//! payload type, clock rate, silence), its party's codec, since the two legs of a
//! two-party call may speak different ones.

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
use crate::rtp::session::silence_payload;
use crate::sip::sdp::RtpMap;

/// The reader kind forks show under in `/stream/find`.
pub const READER_KIND: &str = "siprec";

#[derive(Debug, Default)]
pub struct ForkCounters {
    pub packets: AtomicU64,
    pub bytes: AtomicU64,
    pub send_errors: AtomicU64,
}

/// One recorded stream: where it goes and in which format (its own party's codec: the legs
/// of a two-party call may differ).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForkStream {
    /// The SRS's address for it; None: the SRS did not take it.
    pub dest: Option<SocketAddr>,
    pub payload_type: u8,
    pub clock_rate: u32,
    /// One packet of silence in the stream's codec, for when the gateway itself is that
    /// party (empty: the codec has none, nothing is sent).
    pub silence: Bytes,
}

impl ForkStream {
    /// The stream of a party whose audio is in `codec`, sent to `dest`.
    pub fn new(dest: Option<SocketAddr>, codec: &RtpMap, ptime_ms: u32) -> Self {
        Self {
            dest,
            payload_type: codec.pt,
            clock_rate: codec.clock_rate,
            silence: silence_payload(&codec.encoding, codec.clock_rate, ptime_ms),
        }
    }

    /// The RTP timestamp step of one `ptime_ms` packet.
    fn samples(&self, ptime_ms: u32) -> u32 {
        self.clock_rate.saturating_mul(ptime_ms) / 1000
    }
}

/// Where and how to send: the callee's stream (first m-line) and the caller's (second).
pub struct ForkConfig {
    pub callee: ForkStream,
    pub caller: ForkStream,
    pub ptime_ms: u32,
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
        .callee
        .dest
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
        dest: cfg.callee.dest,
        connected,
        payload_type: cfg.callee.payload_type,
        audio_track: AtomicUsize::new(NO_TRACK),
        paused: paused.clone(),
        counters: counters.clone(),
        out: Mutex::new(Outgoing::new()),
    });
    let attachment = registry.attach(stream, READER_KIND, sink)?;
    let mut caller_attachment = None;
    // The second stream only when the SRS took it (port ≠ 0) and there is something to send.
    let ticker = match cfg.caller.dest {
        Some(dest) if has_caller => {
            let connected = caller_sock.connect(dest).is_ok();
            let sink = Arc::new(LegSink {
                leg: Leg::Caller,
                sock: caller_sock,
                dest: Some(dest),
                connected,
                payload_type: cfg.caller.payload_type,
                audio_track: AtomicUsize::new(NO_TRACK),
                paused: paused.clone(),
                counters: counters.clone(),
                out: Mutex::new(Outgoing::new()),
            });
            caller_attachment = Some(registry.attach(stream, READER_KIND, sink)?);
            None
        }
        Some(dest) if !cfg.caller.silence.is_empty() => Some(tokio::spawn(
            caller_stream(
                caller_sock,
                dest,
                cfg.caller,
                cfg.ptime_ms,
                paused.clone(),
                counters.clone(),
            )
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

/// The gateway's own stream as the caller: `stream`'s silence every `ptime_ms`.
async fn caller_stream(
    sock: UdpSocket,
    dest: SocketAddr,
    stream: ForkStream,
    ptime_ms: u32,
    paused: Arc<AtomicBool>,
    counters: Arc<ForkCounters>,
) {
    let mut out = Outgoing::new();
    let ptime = ptime_ms.max(10);
    let samples = stream.samples(ptime);
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
        let data = out.packet(stream.payload_type, first, ts, &stream.silence);
        first = false;
        send(&sock, data, dest, false, &counters);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rtp::packet::RtpPacket;
    use crate::rtp::ports::PortPool;
    use crate::sip::sdp::{codec_opus, codec_pcma, codec_pcmu};

    #[test]
    fn each_stream_has_its_own_partys_format() {
        let to = Some(SocketAddr::from(([127, 0, 0, 1], 5000)));
        let pcma = ForkStream::new(to, &codec_pcma(), 20);
        let pcmu = ForkStream::new(None, &codec_pcmu(), 20);
        assert_eq!((pcma.payload_type, pcma.clock_rate), (8, 8000));
        assert_eq!((pcmu.payload_type, pcmu.clock_rate), (0, 8000));
        // G.711 silence differs per law: A-law 0xD5, µ-law 0xFF.
        assert_eq!(pcma.silence.len(), 160);
        assert!(pcma.silence.iter().all(|b| *b == 0xD5));
        assert!(pcmu.silence.iter().all(|b| *b == 0xFF));
        assert_eq!((pcma.dest, pcmu.dest), (to, None));
        let opus = ForkStream::new(to, &codec_opus(), 20);
        assert_eq!((opus.payload_type, opus.samples(20)), (111, 960));
        assert_eq!(pcma.samples(20), 160);
    }

    fn unit(track: TrackId, pt: u8, seq: u16, byte: u8) -> MediaUnit {
        MediaUnit {
            track,
            payload_type: pt,
            seq,
            timestamp: u32::from(seq) * 160,
            marker: false,
            ssrc: 7,
            payload: Bytes::from(vec![byte; 160]),
            arrival: std::time::Instant::now(),
        }
    }

    /// Payload types (and first payload byte) of the datagrams arriving on `sock` in 300 ms.
    fn received(sock: &UdpSocket) -> Vec<(u8, u8)> {
        let end = std::time::Instant::now() + Duration::from_millis(300);
        let mut buf = [0u8; 2048];
        let mut out = Vec::new();
        loop {
            let left = end.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return out;
            }
            sock.set_read_timeout(Some(left)).unwrap();
            if let Ok(n) = sock.recv(&mut buf) {
                let p = RtpPacket::parse(&buf[..n]).unwrap();
                out.push((p.pt(), p.payload()[0]));
            }
        }
    }

    fn sink() -> (UdpSocket, SocketAddr) {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        let a = s.local_addr().unwrap();
        (s, a)
    }

    #[tokio::test]
    async fn a_two_party_fork_sends_each_party_in_its_own_payload_type() {
        let registry = Registry::new(16);
        let publisher = registry.create("fork_tp", None).unwrap();
        let track = |leg, codec: &RtpMap| TrackSpec {
            leg,
            ..TrackSpec::audio(&codec.encoding, codec.clock_rate, codec.pt)
        };
        // The caller speaks PCMU, the callee PCMA.
        let caller = publisher
            .add_track(track(Leg::Caller, &codec_pcmu()))
            .unwrap();
        let callee = publisher
            .add_track(track(Leg::Callee, &codec_pcma()))
            .unwrap();
        let pool = PortPool::new(46000, 46999).unwrap();
        let ip = std::net::IpAddr::from([127, 0, 0, 1]);
        let pairs = (
            pool.allocate(ip).await.unwrap(),
            pool.allocate(ip).await.unwrap(),
        );
        let ((srs1, a1), (srs2, a2)) = (sink(), sink());
        let cfg = ForkConfig {
            callee: ForkStream::new(Some(a1), &codec_pcma(), 20),
            caller: ForkStream::new(Some(a2), &codec_pcmu(), 20),
            ptime_ms: 20,
        };
        let fork = spawn(&registry, "fork_tp", pairs, cfg, tracing::Span::none()).unwrap();
        for seq in 0..5 {
            publisher.publish(unit(callee, 8, seq, 0x11));
            publisher.publish(unit(caller, 0, seq, 0x22));
        }
        // Each stream carries its own party's audio under its own payload type.
        assert_eq!(received(&srs1), vec![(8, 0x11); 5]);
        assert_eq!(received(&srs2), vec![(0, 0x22); 5]);
        assert_eq!(fork.packets(), 10);
        fork.stop();
    }

    #[tokio::test]
    async fn an_outbound_fork_sends_the_gateways_silence_in_the_caller_streams_codec() {
        let registry = Registry::new(16);
        let publisher = registry.create("fork_out", None).unwrap();
        let callee = publisher
            .add_track(TrackSpec::audio("PCMA", 8000, 8))
            .unwrap();
        let pool = PortPool::new(47000, 47999).unwrap();
        let ip = std::net::IpAddr::from([127, 0, 0, 1]);
        let pairs = (
            pool.allocate(ip).await.unwrap(),
            pool.allocate(ip).await.unwrap(),
        );
        let ((srs1, a1), (srs2, a2)) = (sink(), sink());
        let cfg = ForkConfig {
            callee: ForkStream::new(Some(a1), &codec_pcma(), 20),
            caller: ForkStream::new(Some(a2), &codec_pcma(), 20),
            ptime_ms: 20,
        };
        let fork = spawn(&registry, "fork_out", pairs, cfg, tracing::Span::none()).unwrap();
        publisher.publish(unit(callee, 8, 1, 0x33));
        assert_eq!(received(&srs1), vec![(8, 0x33)]);
        let silence = tokio::task::spawn_blocking(move || received(&srs2))
            .await
            .unwrap();
        assert!(silence.len() >= 5, "{silence:?}");
        assert!(silence.iter().all(|p| *p == (8, 0xD5)), "{silence:?}");
        fork.stop();
    }
}
