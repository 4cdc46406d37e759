//! The tokio driver of one call leg's RTP session: the only code here that owns sockets and
//! reads the clock.
//!
//! One task per leg selects on the RTP socket, the RTCP socket, the session's next deadline
//! and a control channel; it feeds the sans-IO [`RtpSession`], publishes accepted media to
//! the stream registry and sends what the session returns. Sends use `try_send_to` (a full
//! socket buffer drops the datagram and counts it) so the loop never waits on the network.
//! The task ends on [`LegHandle::stop`] or when the handle is dropped; the port pair goes
//! back to the pool when the task ends.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use parking_lot::Mutex;
use thiserror::Error;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::Instrument;

use super::packet::is_rtcp;
use super::ports::{BoundPair, PortLease};
use super::rtcp::{ntp_from_system_time, ReportBlock};
use super::session::{Direction, RtpSession, SessionConfig, SessionCounters};
use super::srtp::{SrtpCounters, SrtpKeys, SrtpStream};
use super::stats::RxStatsSnapshot;
use crate::registry::{MediaUnit, Publisher, TrackId};

/// Largest datagram we read; bigger ones are truncated by the kernel and then fail
/// validation or carry a cut payload, so keep it above any sane MTU.
const RECV_BUF: usize = 8192;
/// How often loss and jitter are pushed to the registry track.
const STATS_PUSH_EVERY: Duration = Duration::from_secs(1);
/// How often the shared snapshot behind `LegHandle::stats` is refreshed while media flows
/// (copying every counter per packet showed in profiles).
const SNAPSHOT_EVERY: Duration = Duration::from_millis(50);
const CONTROL_QUEUE: usize = 256;

/// A snapshot of a leg's state and counters.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LegStats {
    pub local_rtp: Option<SocketAddr>,
    pub local_rtcp: Option<SocketAddr>,
    pub remote_rtp: Option<SocketAddr>,
    pub remote_rtcp: Option<SocketAddr>,
    pub latched: bool,
    pub session: SessionCounters,
    pub rx: RxStatsSnapshot,
    /// The remote's last report on what we send.
    pub report_about_us: Option<ReportBlock>,
    pub bye_received: bool,
    pub keyframe_requests: u64,
    pub send_errors: u64,
    pub recv_errors: u64,
    pub running: bool,
    /// SRTP: the suite in use (never a key) and its counters.
    pub srtp: Option<(&'static str, SrtpCounters)>,
}

/// A change to a running leg.
#[derive(Debug, Clone)]
pub enum LegUpdate {
    /// New remote addresses from a re-INVITE (re-arms latching).
    Remote {
        rtp: Option<SocketAddr>,
        rtcp: Option<SocketAddr>,
    },
    Direction(Direction),
    /// New codec; the caller updates the registry track itself.
    Codec {
        payload_type: u8,
        clock_rate: u32,
        silence_payload: Bytes,
    },
    /// Read RFC 4733 telephone-events of this payload type and clock rate; each digit goes
    /// to `digits` (the leg never waits for the receiver). The packets still reach the
    /// stream as they are.
    Dtmf {
        payload_type: u8,
        clock_rate: u32,
        digits: tokio::sync::mpsc::UnboundedSender<crate::media::dtmf::Digit>,
    },
    /// Send these digits as RFC 4733 telephone-events with this payload type.
    SendDtmf {
        payload_type: u8,
        tones: Vec<crate::media::dtmf::Tone>,
    },
    /// New SDES keys from a re-INVITE (None: plain RTP from now on).
    Srtp(Option<SrtpKeys>),
    /// This leg relays the video of that track of its stream (None: no more): keyframe
    /// requests (RTCP PLI/FIR) from our far end are passed on to it.
    KeyframeSource(Option<TrackId>),
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum LegError {
    #[error("RTP leg has stopped")]
    Stopped,
    #[error("RTP leg control queue is full")]
    Busy,
}

enum Control {
    Update(LegUpdate),
    Inject(Bytes),
    InjectLive(Bytes),
    /// A packet of another leg's video: payload, marker, the source's timestamp.
    Relay(Bytes, bool, u32),
    Stop,
}

/// Plays payloads into a leg (one per ptime, instead of silence). Never waits: a full queue
/// is an error the caller counts.
#[derive(Debug, Clone)]
pub struct Injector {
    ctrl: mpsc::Sender<Control>,
}

impl Injector {
    /// Live media (see [`RtpSession::inject_live`]): the leg keeps only the newest few.
    pub fn inject(&self, payload: Bytes) -> Result<(), LegError> {
        self.try_send(Control::InjectLive(payload))
    }

    /// Another leg's packet (video), sent as it came (see [`RtpSession::relay`]).
    pub fn relay(&self, payload: Bytes, marker: bool, timestamp: u32) -> Result<(), LegError> {
        self.try_send(Control::Relay(payload, marker, timestamp))
    }

    fn try_send(&self, c: Control) -> Result<(), LegError> {
        self.ctrl.try_send(c).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => LegError::Busy,
            mpsc::error::TrySendError::Closed(_) => LegError::Stopped,
        })
    }
}

/// Handle on a running leg. Dropping it stops the leg.
#[derive(Debug)]
pub struct LegHandle {
    ctrl: mpsc::Sender<Control>,
    stats: Arc<Mutex<LegStats>>,
    task: Option<JoinHandle<()>>,
}

impl LegHandle {
    pub fn stats(&self) -> LegStats {
        self.stats.lock().clone()
    }

    fn send(&self, c: Control) -> Result<(), LegError> {
        self.ctrl.try_send(c).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => LegError::Busy,
            mpsc::error::TrySendError::Closed(_) => LegError::Stopped,
        })
    }

    pub fn update(&self, u: LegUpdate) -> Result<(), LegError> {
        self.send(Control::Update(u))
    }

    /// Queues a payload to send instead of silence (see [`RtpSession::inject`]).
    pub fn inject(&self, payload: Bytes) -> Result<(), LegError> {
        self.send(Control::Inject(payload))
    }

    /// A cloneable sender of payloads into this leg, for a task or sink that plays media
    /// into it (a bridge from another leg).
    pub fn injector(&self) -> Injector {
        Injector {
            ctrl: self.ctrl.clone(),
        }
    }

    /// Stops the leg, waits for its task (the ports are back in the pool when this returns)
    /// and returns the final stats.
    pub async fn stop(mut self) -> LegStats {
        // If the queue is full the task is alive and will reach Stop; if closed it is gone.
        let _ = self.ctrl.send(Control::Stop).await;
        if let Some(task) = self.task.take() {
            if let Err(e) = task.await {
                tracing::warn!(error = %e, "RTP leg task failed");
            }
        }
        self.stats()
    }
}

/// Starts the leg's task on the current tokio runtime. Media accepted by the session is
/// published on `track` of `publisher`.
pub fn spawn_leg(
    pair: BoundPair,
    cfg: SessionConfig,
    publisher: Arc<Publisher>,
    track: TrackId,
    span: tracing::Span,
) -> LegHandle {
    spawn_leg_on(
        &tokio::runtime::Handle::current(),
        pair,
        cfg,
        None,
        publisher,
        track,
        span,
    )
}

/// Starts the leg's task on `rt` (a media thread, see [`super::threads`]); its sockets move
/// to that runtime's reactor. With `srtp`, every packet is SRTP/SRTCP from the first one
/// (keys that do not make a context are an error logged, and the leg then drops what it
/// receives and sends nothing rather than fall back to plain RTP).
pub fn spawn_leg_on(
    rt: &tokio::runtime::Handle,
    pair: BoundPair,
    cfg: SessionConfig,
    srtp: Option<SrtpKeys>,
    publisher: Arc<Publisher>,
    track: TrackId,
    span: tracing::Span,
) -> LegHandle {
    let now = tokio::time::Instant::now().into_std();
    let send_ahead = Duration::from_millis(u64::from(cfg_ptime_ms(&cfg)) * 9 / 10);
    let mut session = RtpSession::new(cfg, now);
    session.set_ntp_reference(now, ntp_from_system_time(SystemTime::now()));
    let stats = Arc::new(Mutex::new(LegStats {
        local_rtp: pair.rtp_addr().ok(),
        local_rtcp: pair.rtcp_addr().ok(),
        running: true,
        ..Default::default()
    }));
    let (ctrl, ctrl_rx) = mpsc::channel(CONTROL_QUEUE);
    let leg = Leg {
        session,
        publisher,
        track,
        stats: stats.clone(),
        extra: Extra::default(),
        last_push: now,
        last_snapshot: now,
        send_ahead,
        dtmf: None,
        keyframe_source: None,
        srtp: Srtp::from_keys(srtp.as_ref()),
    };
    let task = rt.spawn(
        async move {
            match Sockets::register(pair) {
                Ok(socks) => leg.run(socks, ctrl_rx).await,
                Err(e) => {
                    tracing::error!(error = %e, "RTP leg sockets could not move to the media thread");
                    leg.stats.lock().running = false;
                }
            }
        }
        .instrument(span),
    );
    LegHandle {
        ctrl,
        stats,
        task: Some(task),
    }
}

#[derive(Default)]
struct Extra {
    bye_received: bool,
    keyframe_requests: u64,
    send_errors: u64,
    recv_errors: u64,
}

/// The leg's sockets, registered with the reactor of the runtime the leg runs on for
/// readability only. Sends go straight to the socket (`send_to` on a non-blocking socket):
/// with writability registered too, every sent packet's freed buffer would come back as an
/// epoll event to process.
struct Sockets {
    rtp: AsyncFd<std::net::UdpSocket>,
    rtcp: AsyncFd<std::net::UdpSocket>,
    /// Dropped after the sockets (field order): the ports go back to the pool once closed.
    _lease: PortLease,
}

impl Sockets {
    fn register(pair: BoundPair) -> std::io::Result<Self> {
        // Deprecated since tokio 1.54 because an arbitrary `AsRawFd` may change its fd under
        // the registration; `std::net::UdpSocket` owns its fd for its whole life, which is the
        // condition the safe replacement (`unsafe register_with_interest`) asks the caller to
        // guarantee, without `unsafe` in this crate.
        #[allow(deprecated)]
        let readable =
            |s: tokio::net::UdpSocket| AsyncFd::with_interest(s.into_std()?, Interest::READABLE);
        Ok(Self {
            rtp: readable(pair.rtp)?,
            rtcp: readable(pair.rtcp)?,
            _lease: pair.lease,
        })
    }
}

/// Most datagrams one `recvmmsg` call reads.
const RECV_BATCH: usize = 2;
/// Buffer of the second and later datagrams of a batch: an Ethernet MTU and more. A longer
/// datagram there arrives truncated and is dropped as invalid (the first buffer takes
/// [`RECV_BUF`]). Per-leg memory is the reason: an idle call costs its buffers.
const RECV_BUF_MORE: usize = 2048;

/// Receive buffers and what the last read put in them.
struct RecvBatch {
    /// The first buffer takes [`RECV_BUF`], the others [`RECV_BUF_MORE`]; only the first
    /// `slots` are read into.
    bufs: [Vec<u8>; RECV_BATCH],
    slots: usize,
    got: [(usize, Option<SocketAddr>); RECV_BATCH],
    len: usize,
    /// Datagrams longer than their buffer, dropped (the leg counts them as receive errors).
    truncated: u64,
}

thread_local! {
    /// `recvmmsg` headers, allocated once per thread: they hold raw pointers (not `Send`, so
    /// not in the leg's future) and allocating them per read would put an allocation on the
    /// per-packet path.
    static RECV_HEADERS: std::cell::RefCell<nix::sys::socket::MultiHeaders<nix::sys::socket::SockaddrStorage>> =
        std::cell::RefCell::new(nix::sys::socket::MultiHeaders::preallocate(RECV_BATCH, None));
}

impl RecvBatch {
    /// `slots` datagrams per read (1..=[`RECV_BATCH`]).
    fn new(slots: usize) -> Self {
        let slots = slots.clamp(1, RECV_BATCH);
        Self {
            bufs: std::array::from_fn(|i| match i {
                0 => vec![0u8; RECV_BUF],
                i if i < slots => vec![0u8; RECV_BUF_MORE],
                _ => Vec::new(),
            }),
            slots,
            got: [(0, None); RECV_BATCH],
            len: 0,
            truncated: 0,
        }
    }

    /// The datagrams of the last read, with their source.
    fn datagrams(&self) -> impl Iterator<Item = (&[u8], SocketAddr)> {
        self.got[..self.len]
            .iter()
            .zip(&self.bufs)
            .filter_map(|((n, from), buf)| Some((buf.get(..*n)?, (*from)?)))
    }

    /// Reads what is queued on `fd` (up to `slots` datagrams) in one call; `Ok(true)` when
    /// that emptied the queue (fewer than asked for came back).
    fn read(&mut self, fd: std::os::fd::RawFd) -> std::io::Result<bool> {
        use nix::sys::socket::{recvmmsg, MsgFlags};
        self.len = 0;
        let slots = self.slots;
        let (bufs, got, len, truncated) = (
            &mut self.bufs,
            &mut self.got,
            &mut self.len,
            &mut self.truncated,
        );
        RECV_HEADERS.with_borrow_mut(|headers| {
            let mut iovs = bufs
                .each_mut()
                .map(|b| [std::io::IoSliceMut::new(b.as_mut_slice())]);
            let results = recvmmsg(
                fd,
                headers,
                iovs.iter_mut().take(slots),
                MsgFlags::MSG_DONTWAIT,
                None,
            )
            .map_err(std::io::Error::from)?;
            for (slot, r) in got.iter_mut().zip(results) {
                let from = r.address.and_then(|a| {
                    if let Some(v4) = a.as_sockaddr_in() {
                        Some(SocketAddr::V4((*v4).into()))
                    } else {
                        a.as_sockaddr_in6().map(|v6| SocketAddr::V6((*v6).into()))
                    }
                });
                // A cut datagram is not the one that was sent: drop it, and count it.
                let cut = r.flags.contains(MsgFlags::MSG_TRUNC);
                *truncated += u64::from(cut);
                *slot = (r.bytes, from.filter(|_| !cut));
                *len += 1;
            }
            Ok(*len < slots)
        })
    }
}

/// Reads what `sock` has once it is readable. Stale readiness (nothing there) is cleared by
/// the EAGAIN; a read that drained the queue clears it too, without the extra call that
/// would only return EAGAIN: the next datagram raises a new edge.
fn recv_ready(
    guard: std::io::Result<tokio::io::unix::AsyncFdReadyGuard<'_, std::net::UdpSocket>>,
    batch: &mut RecvBatch,
) -> Option<std::io::Error> {
    use std::os::fd::AsRawFd;
    batch.len = 0;
    let mut g = match guard {
        Ok(g) => g,
        Err(e) => return Some(e),
    };
    let fd = g.get_inner().as_raw_fd();
    match g.try_io(|_| batch.read(fd)) {
        Ok(Ok(true)) => {
            g.clear_ready();
            None
        }
        Ok(Ok(false)) | Err(_) => None,
        Ok(Err(e)) => Some(e),
    }
}

/// What the leg does to packets on the wire.
enum Srtp {
    Plain,
    On(Box<SrtpStream>),
    /// Keys were given but made no context: nothing goes out, nothing comes in.
    Broken,
}

impl Srtp {
    fn from_keys(keys: Option<&SrtpKeys>) -> Srtp {
        match keys.map(SrtpKeys::stream) {
            None => Srtp::Plain,
            Some(Ok(s)) => Srtp::On(Box::new(s)),
            Some(Err(e)) => {
                tracing::error!(error = %e, "SRTP context not created; the leg carries no media");
                Srtp::Broken
            }
        }
    }
}

struct Leg {
    session: RtpSession,
    srtp: Srtp,
    publisher: Arc<Publisher>,
    track: TrackId,
    stats: Arc<Mutex<LegStats>>,
    extra: Extra,
    last_push: Instant,
    last_snapshot: Instant,
    /// See the run loop: 90 % of the ptime.
    send_ahead: Duration,
    dtmf: Option<(
        crate::media::dtmf::TelephoneEvents,
        tokio::sync::mpsc::UnboundedSender<crate::media::dtmf::Digit>,
    )>,
    /// The track whose video this leg relays: a keyframe request from our far end goes to
    /// that track's publisher (and from there to its far end).
    keyframe_source: Option<TrackId>,
}

fn clock() -> Instant {
    tokio::time::Instant::now().into_std()
}

impl Leg {
    async fn run(mut self, socks: Sockets, mut ctrl: mpsc::Receiver<Control>) {
        tracing::debug!(local = ?socks.rtp.get_ref().local_addr().ok(), "RTP leg started");
        let mut rtp_in = RecvBatch::new(RECV_BATCH);
        // RTCP is a few packets a minute: one buffer (its reads end with an EAGAIN).
        let mut rtcp_in = RecvBatch::new(1);
        // One timer for the leg's life, moved when the deadline moves: a new `Sleep` per
        // packet costs a timer-wheel insert and removal each time.
        let timer =
            tokio::time::sleep_until(tokio::time::Instant::from_std(self.session.poll_timeout()));
        tokio::pin!(timer);
        loop {
            let deadline = tokio::time::Instant::from_std(self.session.poll_timeout());
            if timer.deadline() != deadline {
                timer.as_mut().reset(deadline);
            }
            // After an incoming RTP packet, our own packet due within most of a ptime goes
            // out now: with a far end that sends every ptime, the leg then wakes once per
            // ptime instead of twice (arrival + timer). Up to a ptime early is ordinary jitter.
            let mut ahead = Duration::ZERO;
            tokio::select! {
                biased;
                c = ctrl.recv() => match c {
                    None | Some(Control::Stop) => break,
                    Some(Control::Update(u)) => self.apply(u),
                    Some(Control::Inject(p)) => {
                        self.session.inject(p);
                    }
                    Some(Control::InjectLive(p)) => {
                        self.session.inject_live(clock(), p);
                    }
                    Some(Control::Relay(p, marker, ts)) => self.session.relay(p, marker, ts),
                },
                r = socks.rtp.readable() => {
                    if let Some(e) = recv_ready(r, &mut rtp_in) {
                        self.recv_error(e);
                    }
                    self.extra.recv_errors += std::mem::take(&mut rtp_in.truncated);
                    for (data, from) in rtp_in.datagrams() {
                        if is_rtcp(data) {
                            self.on_rtcp(from, data);
                        } else {
                            self.on_rtp(from, data);
                            ahead = self.send_ahead;
                        }
                    }
                }
                r = socks.rtcp.readable() => {
                    if let Some(e) = recv_ready(r, &mut rtcp_in) {
                        self.recv_error(e);
                    }
                    self.extra.recv_errors += std::mem::take(&mut rtcp_in.truncated);
                    for (data, from) in rtcp_in.datagrams() {
                        self.on_rtcp(from, data);
                    }
                }
                () = &mut timer => {}
            }
            self.flush(&socks, ahead);
        }
        self.push_rtp_stats();
        self.snapshot(false);
        tracing::debug!(counters = ?self.session.counters(), "RTP leg stopped");
        // `socks` drops here: sockets close, then the lease returns the ports.
    }

    fn apply(&mut self, u: LegUpdate) {
        tracing::debug!(update = ?u, "RTP leg update");
        match u {
            LegUpdate::Remote { rtp, rtcp } => self.session.set_remote(rtp, rtcp),
            LegUpdate::Direction(d) => self.session.set_direction(d),
            LegUpdate::Codec {
                payload_type,
                clock_rate,
                silence_payload,
            } => self
                .session
                .set_codec(payload_type, clock_rate, silence_payload),
            LegUpdate::Dtmf {
                payload_type,
                clock_rate,
                digits,
            } => {
                let reader = crate::media::dtmf::TelephoneEvents::new(payload_type, clock_rate);
                self.dtmf = Some((reader, digits));
            }
            LegUpdate::SendDtmf {
                payload_type,
                tones,
            } => {
                if !self.session.send_dtmf(payload_type, &tones) {
                    tracing::warn!(digits = tones.len(), "DTMF queue full; digits not sent");
                }
            }
            LegUpdate::Srtp(keys) => self.srtp = Srtp::from_keys(keys.as_ref()),
            LegUpdate::KeyframeSource(track) => self.keyframe_source = track,
        }
    }

    fn recv_error(&mut self, e: std::io::Error) {
        // E.g. ECONNREFUSED from an ICMP error on a previous send: not fatal for UDP.
        self.extra.recv_errors += 1;
        tracing::trace!(error = %e, "RTP recv error");
    }

    fn on_rtp(&mut self, from: SocketAddr, data: &[u8]) {
        let plain;
        let data = match &mut self.srtp {
            Srtp::Plain => data,
            Srtp::On(s) => match s.unprotect_rtp(data) {
                Some(p) => {
                    plain = p;
                    &plain[..]
                }
                None => {
                    tracing::trace!(%from, len = data.len(), "SRTP packet failed authentication; dropped");
                    return;
                }
            },
            Srtp::Broken => return,
        };
        let now = clock();
        match self.session.handle_rtp(now, from, data) {
            Ok(Some(rx)) => {
                let payload = data
                    .get(rx.payload.clone())
                    .map(Bytes::copy_from_slice)
                    .unwrap_or_default();
                if let Some((reader, digits)) = &mut self.dtmf {
                    if let Some(d) = reader.on_packet(rx.payload_type, rx.timestamp, &payload) {
                        tracing::debug!(digit = %d.digit, "RFC 4733 digit");
                        let _ = digits.send(d);
                    }
                }
                self.publisher.publish(MediaUnit {
                    track: self.track,
                    payload_type: rx.payload_type,
                    seq: rx.seq,
                    timestamp: rx.timestamp,
                    marker: rx.marker,
                    ssrc: rx.ssrc,
                    payload,
                    arrival: now,
                });
            }
            Ok(None) => {}
            Err(e) => tracing::trace!(%from, error = %e, "invalid RTP dropped"),
        }
    }

    fn on_rtcp(&mut self, from: SocketAddr, data: &[u8]) {
        let plain;
        let data = match &mut self.srtp {
            Srtp::Plain => data,
            Srtp::On(s) => match s.unprotect_rtcp(data) {
                Some(p) => {
                    plain = p;
                    &plain[..]
                }
                None => {
                    tracing::trace!(%from, len = data.len(), pt = data.get(1).copied().unwrap_or(0), "SRTCP packet failed authentication; dropped");
                    return;
                }
            },
            Srtp::Broken => return,
        };
        match self.session.handle_rtcp(clock(), from, data) {
            Ok(Some(sum)) => {
                if sum.bye && !self.extra.bye_received {
                    tracing::debug!(%from, "RTCP BYE received");
                    self.extra.bye_received = true;
                }
                if sum.keyframe_request {
                    self.extra.keyframe_requests += 1;
                    if let Some(source) = self.keyframe_source {
                        self.publisher.request_keyframe(source);
                    }
                }
            }
            Ok(None) => {}
            Err(e) => tracing::trace!(%from, error = %e, "invalid RTCP dropped"),
        }
    }

    fn flush(&mut self, socks: &Sockets, ahead: Duration) {
        let now = clock();
        if self.publisher.take_keyframe_request(self.track) && self.session.request_keyframe(now) {
            tracing::debug!("keyframe requested (RTCP PLI)");
        }
        // Live media paces the sends itself; sending "ahead" would mistake its next payload
        // for a gap.
        let ahead = if self.session.is_live() {
            Duration::ZERO
        } else {
            ahead
        };
        while let Some(t) = self.session.poll_transmit(now + ahead) {
            let sock = if t.rtcp { &socks.rtcp } else { &socks.rtp };
            let protected;
            let data = match &mut self.srtp {
                Srtp::Plain => &t.data[..],
                Srtp::On(s) => {
                    let p = if t.rtcp {
                        s.protect_rtcp(&t.data)
                    } else {
                        s.protect_rtp(&t.data)
                    };
                    match p {
                        Some(p) => {
                            protected = p;
                            &protected[..]
                        }
                        None => continue,
                    }
                }
                Srtp::Broken => continue,
            };
            if let Err(e) = sock.get_ref().send_to(data, t.to) {
                self.extra.send_errors += 1;
                tracing::trace!(to = %t.to, error = %e, "RTP send failed");
            }
        }
        if now.saturating_duration_since(self.last_push) >= STATS_PUSH_EVERY {
            self.last_push = now;
            self.push_rtp_stats();
        }
        if now.saturating_duration_since(self.last_snapshot) >= SNAPSHOT_EVERY {
            self.last_snapshot = now;
            self.snapshot(true);
        }
    }

    fn push_rtp_stats(&self) {
        let rx = self.session.rx_stats();
        self.publisher.record_rtp_stats(
            self.track,
            u64::try_from(rx.lost).unwrap_or(0),
            rx.jitter_ms,
        );
    }

    fn snapshot(&self, running: bool) {
        let mut s = self.stats.lock();
        s.remote_rtp = self.session.remote_rtp();
        s.remote_rtcp = self.session.remote_rtcp();
        s.latched = self.session.is_latched();
        s.session = self.session.counters();
        s.rx = self.session.rx_stats();
        s.report_about_us = self.session.report_about_us();
        s.bye_received = self.extra.bye_received;
        s.keyframe_requests = self.extra.keyframe_requests;
        s.send_errors = self.extra.send_errors;
        s.recv_errors = self.extra.recv_errors;
        s.running = running;
        s.srtp = match &self.srtp {
            Srtp::On(x) => Some((x.suite().name(), x.counters())),
            _ => None,
        };
    }
}

fn cfg_ptime_ms(cfg: &SessionConfig) -> u32 {
    if cfg.ptime_ms == 0 {
        20
    } else {
        cfg.ptime_ms
    }
}

#[cfg(test)]
mod tests;
