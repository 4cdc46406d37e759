//! The per-leg RTP media session, sans-IO: what one call leg receives (validated, latched,
//! accounted) and what it sends (a packet every ptime, RTCP receiver reports).
//!
//! Owns the leg's RTP state (remote addresses and latching, outgoing seq/timestamp,
//! receiver statistics, counters). It owns no socket and reads no clock: the driver
//! (`driver.rs`) feeds it datagrams and times and sends what it returns.
//!
//! Policies (STYLE.md lesson 8):
//! - `latching` (symmetric RTP, for peers behind NAT): the first valid packet's source
//!   becomes the address we send to, whatever SDP said; later packets from any other source
//!   are dropped and counted (`from_unknown_source`). RTCP latches separately. A new remote
//!   (`set_remote`, after a re-INVITE) re-arms latching. When the new SDP names another
//!   address (a transfer: another party), the source latched before is the old party, whose
//!   stream lingers for a moment: it does not win the re-latch unless nothing else has come
//!   after [`STALE_LATCH_AFTER`] of its packets (the same peer behind NAT that moved its
//!   SDP address). With latching off every source is accepted and we send to the SDP address.
//! - Packets of any payload type are passed up (telephone-event and comfort noise share the
//!   stream); readers pick what they understand.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::ops::Range;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::packet::{RtpError, RtpHeader, RtpPacket};
use super::rtcp::{self, ReportBlock, RtcpError, RtcpPacket, SenderReport};
use super::stats::{RxStats, RxStatsSnapshot, SeqVerdict};
use crate::media::g711;

/// Media direction from our side: the SDP attribute's type, so that negotiation and the
/// session speak of one thing.
pub use crate::sip::sdp::Direction;

/// Largest number of injected payloads waiting to be sent (2 s at 20 ms).
pub const INJECT_QUEUE_MAX: usize = 100;
/// Live payloads waiting at most: two ptimes of added delay.
pub const LIVE_INJECT_MAX: usize = 2;
/// Relayed packets waiting to go out ([`RtpSession::relay`]): a keyframe's burst fits.
pub const RELAY_QUEUE_MAX: usize = 200;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionConfig {
    pub local_ssrc: u32,
    /// Payload type and clock rate of the negotiated codec.
    pub payload_type: u8,
    pub clock_rate: u32,
    /// Packetisation time; 0 means 20.
    pub ptime_ms: u32,
    pub latching: bool,
    /// Remote addresses from SDP, if known. Without an RTCP address we use RTP port + 1.
    pub remote_rtp: Option<SocketAddr>,
    pub remote_rtcp: Option<SocketAddr>,
    /// Send `silence_payload` every ptime when nothing is injected (keeps NAT bindings and
    /// peers that expect symmetric media happy).
    pub send_silence: bool,
    pub silence_payload: Bytes,
    /// Mean RTCP report interval (RFC 3550 §6.2: 5 s); each interval is randomised to
    /// 0.5–1.5 times this, the first one halved.
    pub rtcp_interval: Duration,
    pub cname: String,
    pub direction: Direction,
    /// First outgoing sequence number and timestamp (random per RFC 3550 §5.1; the caller
    /// draws them, so tests stay deterministic).
    pub initial_seq: u16,
    pub initial_timestamp: u32,
}

impl SessionConfig {
    /// A config for a known codec name ("PCMU", "PCMA", "opus") at 20 ms with its silence
    /// payload; other codecs get no silence.
    pub fn for_codec(local_ssrc: u32, codec: &str, payload_type: u8, clock_rate: u32) -> Self {
        Self {
            local_ssrc,
            payload_type,
            clock_rate,
            ptime_ms: 20,
            latching: true,
            remote_rtp: None,
            remote_rtcp: None,
            send_silence: true,
            silence_payload: silence_payload(codec, clock_rate, 20),
            rtcp_interval: Duration::from_secs(5),
            cname: format!("{local_ssrc:08x}@sipstream"),
            direction: Direction::SendRecv,
            initial_seq: (local_ssrc >> 16) as u16,
            initial_timestamp: local_ssrc.rotate_left(7),
        }
    }
}

/// The silence payload for `codec` at `ptime_ms` (empty if we have none for that codec).
pub fn silence_payload(codec: &str, clock_rate: u32, ptime_ms: u32) -> Bytes {
    let samples = (u64::from(clock_rate) * u64::from(ptime_ms) / 1000).min(8 * 1024) as usize;
    if codec.eq_ignore_ascii_case("PCMU") {
        Bytes::from(vec![g711::PCMU_SILENCE; samples])
    } else if codec.eq_ignore_ascii_case("PCMA") {
        Bytes::from(vec![g711::PCMA_SILENCE; samples])
    } else if codec.eq_ignore_ascii_case("opus") && ptime_ms == 20 {
        Bytes::from_static(g711::OPUS_SILENCE_20MS)
    } else {
        Bytes::new()
    }
}

/// A valid RTP packet accepted by the session; `payload` indexes the datagram given to
/// [`RtpSession::handle_rtp`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub payload_type: u8,
    pub marker: bool,
    pub seq: u16,
    pub timestamp: u32,
    pub ssrc: u32,
    pub payload: Range<usize>,
    pub verdict: SeqVerdict,
}

/// A datagram to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub to: SocketAddr,
    pub data: Vec<u8>,
    /// Send on the RTCP socket.
    pub rtcp: bool,
}

/// What an RTCP compound told us.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RtcpSummary {
    pub sender_reports: u32,
    pub bye: bool,
    /// PLI or FIR aimed at us.
    pub keyframe_request: bool,
    /// The remote's report on the stream we send.
    pub report_about_us: Option<ReportBlock>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionCounters {
    pub rx_packets: u64,
    /// Payload bytes.
    pub rx_bytes: u64,
    pub invalid: u64,
    pub from_unknown_source: u64,
    /// Dropped by the sequence check (unconfirmed big jump).
    pub bad_seq: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    /// Send ticks skipped because the driver woke up late (not sent as a burst).
    pub tx_late_ticks: u64,
    pub inject_overflow: u64,
    /// RFC 4733 telephone-event packets sent.
    pub dtmf_tx: u64,
    pub rtcp_rx: u64,
    pub rtcp_tx: u64,
    pub rtcp_invalid: u64,
    pub rtcp_from_unknown_source: u64,
    /// Keyframe requests (RTCP PLI) sent.
    pub pli_tx: u64,
}

/// One leg's RTP session.
///
/// Drive contract: create it with the time of start; feed every datagram from the RTP
/// socket to [`handle_rtp`](Self::handle_rtp) (RTCP muxed on that port is recognised by
/// [`is_rtcp`](super::packet::is_rtcp) and goes to [`handle_rtcp`](Self::handle_rtcp)) and
/// every datagram from the RTCP socket to `handle_rtcp`; after each input and at each
/// deadline call [`poll_transmit`](Self::poll_transmit) until it returns `None`, then sleep
/// until [`poll_timeout`](Self::poll_timeout). Errors only describe the datagram that was
/// rejected (and are counted); the session stays usable. Times must not go backwards
/// (earlier times are treated as equal to the latest seen).
/// Packets from the source latched before a new remote address that make it the latched
/// source again, when nothing else came meanwhile (1 s of 20 ms packets).
pub const STALE_LATCH_AFTER: u32 = 50;

#[derive(Debug)]
pub struct RtpSession {
    cfg: SessionConfig,
    stats: RxStats,
    latched_rtp: Option<SocketAddr>,
    latched_rtcp: Option<SocketAddr>,
    /// After a new remote address: the source latched before, and its packets since.
    stale_rtp: Option<(SocketAddr, u32)>,
    tx_seq: u16,
    tx_ts: u32,
    need_marker: bool,
    next_tick: Instant,
    /// The last tick had nothing to send and none was expected: the clock then runs without
    /// a timer, and the ticks skipped until the next one are not late.
    clock_idle: bool,
    next_rtcp: Instant,
    inject: VecDeque<Bytes>,
    /// RFC 4733 digits to send (they replace the audio of their ticks).
    dtmf_tx: Option<crate::media::dtmf::DtmfSender>,
    /// When the last live payload arrived ([`RtpSession::inject_live`]): while live media
    /// flows, it sets the pace instead of the ptime clock.
    live_last: Option<Instant>,
    counters: SessionCounters,
    rng: u32,
    report_about_us: Option<ReportBlock>,
    /// Wall clock reference for SRs: (instant, NTP time at that instant).
    ntp_ref: Option<(Instant, u64)>,
    /// The scheduled time and RTP timestamp of the latest tick (for the SR's RTP time).
    last_tick: (Instant, u32),
    sent_since_report: bool,
    /// A PLI to send (the sender's SSRC), and when the last one went.
    pending_pli: Option<u32>,
    last_pli: Option<Instant>,
    /// Another leg's packets to send as they are ([`RtpSession::relay`]): payload, marker,
    /// the source's timestamp.
    relay: VecDeque<(Bytes, bool, u32)>,
    /// Source timestamp + this = ours, fixed by the first relayed packet.
    relay_offset: Option<u32>,
}

impl RtpSession {
    pub fn new(cfg: SessionConfig, now: Instant) -> Self {
        let mut s = Self {
            stats: RxStats::new(cfg.clock_rate),
            latched_rtp: None,
            latched_rtcp: None,
            stale_rtp: None,
            tx_seq: cfg.initial_seq,
            tx_ts: cfg.initial_timestamp,
            need_marker: true,
            next_tick: now,
            clock_idle: false,
            next_rtcp: now,
            inject: VecDeque::new(),
            dtmf_tx: None,
            live_last: None,
            counters: SessionCounters::default(),
            rng: cfg.local_ssrc | 1,
            report_about_us: None,
            ntp_ref: None,
            last_tick: (now, cfg.initial_timestamp),
            sent_since_report: false,
            cfg,
            pending_pli: None,
            last_pli: None,
            relay: VecDeque::new(),
            relay_offset: None,
        };
        // RFC 3550 §6.2: the first report after half an interval.
        s.next_rtcp = now + s.rtcp_delay() / 2;
        s
    }

    fn ptime(&self) -> Duration {
        Duration::from_millis(u64::from(if self.cfg.ptime_ms == 0 {
            20
        } else {
            self.cfg.ptime_ms
        }))
    }

    fn samples_per_tick(&self) -> u32 {
        let ms = u64::from(if self.cfg.ptime_ms == 0 {
            20
        } else {
            self.cfg.ptime_ms
        });
        u32::try_from(u64::from(self.cfg.clock_rate) * ms / 1000).unwrap_or(u32::MAX)
    }

    /// The RTCP interval randomised to [0.5, 1.5] × mean (xorshift; no global RNG here).
    fn rtcp_delay(&mut self) -> Duration {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 17;
        self.rng ^= self.rng << 5;
        let factor = 0.5 + f64::from(self.rng % 1000) / 1000.0;
        self.cfg
            .rtcp_interval
            .mul_f64(factor)
            .max(Duration::from_millis(10))
    }

    /// Gives the session a wall clock: `ntp` is the NTP time at `at`. With it the session
    /// sends SRs (RFC 3550 §6.4.1) after intervals in which it sent RTP; without it, RRs only.
    pub fn set_ntp_reference(&mut self, at: Instant, ntp: u64) {
        self.ntp_ref = Some((at, ntp));
    }

    /// Where RTP goes: the latched source, else the SDP address.
    pub fn remote_rtp(&self) -> Option<SocketAddr> {
        self.latched_rtp.or(self.cfg.remote_rtp)
    }

    /// Where RTCP goes: the latched RTCP source, else SDP's, else RTP port + 1.
    pub fn remote_rtcp(&self) -> Option<SocketAddr> {
        self.latched_rtcp.or(self.cfg.remote_rtcp).or_else(|| {
            let rtp = self.remote_rtp()?;
            Some(SocketAddr::new(rtp.ip(), rtp.port().checked_add(1)?))
        })
    }

    pub fn is_latched(&self) -> bool {
        self.latched_rtp.is_some()
    }

    pub fn counters(&self) -> SessionCounters {
        self.counters
    }

    pub fn rx_stats(&self) -> RxStatsSnapshot {
        self.stats.snapshot()
    }

    pub fn report_about_us(&self) -> Option<ReportBlock> {
        self.report_about_us
    }

    pub fn config(&self) -> &SessionConfig {
        &self.cfg
    }

    /// New remote addresses (re-INVITE). Re-arms latching.
    pub fn set_remote(&mut self, rtp: Option<SocketAddr>, rtcp: Option<SocketAddr>) {
        self.stale_rtp = if rtp != self.cfg.remote_rtp {
            self.latched_rtp.map(|a| (a, 0))
        } else {
            None
        };
        self.cfg.remote_rtp = rtp;
        self.cfg.remote_rtcp = rtcp;
        self.latched_rtp = None;
        self.latched_rtcp = None;
    }

    pub fn set_direction(&mut self, direction: Direction) {
        if direction.sends() && !self.cfg.direction.sends() {
            self.need_marker = true;
        }
        self.cfg.direction = direction;
    }

    /// Codec change (re-INVITE). Outgoing seq/timestamp continue; receive statistics
    /// restart if the clock rate changed.
    pub fn set_codec(&mut self, payload_type: u8, clock_rate: u32, silence_payload: Bytes) {
        self.cfg.payload_type = payload_type;
        self.cfg.clock_rate = clock_rate;
        self.cfg.silence_payload = silence_payload;
        self.stats.set_clock_rate(clock_rate);
        self.need_marker = true;
    }

    /// Queues a payload to send instead of silence at the next ticks, one per ptime.
    /// Returns false (and counts) when the queue is full.
    pub fn inject(&mut self, payload: Bytes) -> bool {
        if self.inject.len() >= INJECT_QUEUE_MAX {
            self.counters.inject_overflow += 1;
            return false;
        }
        self.inject.push_back(payload);
        true
    }

    /// Queues DTMF digits to send as RFC 4733 telephone-events with `payload_type` (on the
    /// audio clock). False when the queue is full; nothing is queued then.
    pub fn send_dtmf(&mut self, payload_type: u8, tones: &[crate::media::dtmf::Tone]) -> bool {
        if self.dtmf_tx.as_ref().map(|d| d.payload_type()) != Some(payload_type) {
            self.dtmf_tx = Some(crate::media::dtmf::DtmfSender::new(
                payload_type,
                self.cfg.clock_rate,
                self.cfg.ptime_ms,
            ));
        }
        self.dtmf_tx.as_mut().is_some_and(|d| d.push(tones))
    }

    /// Live media (another leg's audio, one ptime per payload): it goes out at once and its
    /// arrivals set the pace, so relaying adds no wait for our own clock's tick. The
    /// timestamps advance one ptime per payload, plus the ptimes of any gap the source left
    /// (DTX); at most [`LIVE_INJECT_MAX`] wait (a burst), the oldest dropped and counted.
    /// When the source stops for two ptimes, our own clock (and silence) takes over again.
    pub fn inject_live(&mut self, now: Instant, payload: Bytes) {
        while self.inject.len() >= LIVE_INJECT_MAX {
            self.inject.pop_front();
            self.counters.inject_overflow += 1;
        }
        self.inject.push_back(payload);
        let ptime = self.ptime();
        match self.live_last {
            Some(last) => {
                let gap = now.saturating_duration_since(last);
                let ticks = (gap.as_nanos() + ptime.as_nanos() / 2) / ptime.as_nanos().max(1);
                if ticks > 1 {
                    let skipped = u32::try_from(ticks - 1).unwrap_or(u32::MAX);
                    self.tx_ts = self
                        .tx_ts
                        .wrapping_add(self.samples_per_tick().wrapping_mul(skipped));
                    self.need_marker = true;
                }
            }
            // A new talkspurt after our own clock ran.
            None => self.need_marker = true,
        }
        self.live_last = Some(now);
        // Its arrival is the tick (the gap above already counted any ptime it skipped).
        self.next_tick = now;
    }

    /// Relays another leg's packet (video) as it came: it goes out at the next
    /// `poll_transmit` with our SSRC, sequence number and payload type, its marker bit, and
    /// its timestamp moved onto our clock by a fixed offset (frames keep their spacing). At
    /// most [`RELAY_QUEUE_MAX`] wait; beyond, the oldest is dropped and counted.
    pub fn relay(&mut self, payload: Bytes, marker: bool, timestamp: u32) {
        while self.relay.len() >= RELAY_QUEUE_MAX {
            self.relay.pop_front();
            self.counters.inject_overflow += 1;
        }
        self.relay.push_back((payload, marker, timestamp));
    }

    /// Live media is pacing the sends ([`RtpSession::inject_live`]).
    pub fn is_live(&self) -> bool {
        self.live_last.is_some()
    }

    /// An RTP datagram from `from`. `Ok(None)`: valid but not for us (unknown source after
    /// latching, unconfirmed sequence jump); counted either way.
    pub fn handle_rtp(
        &mut self,
        now: Instant,
        from: SocketAddr,
        buf: &[u8],
    ) -> Result<Option<Received>, RtpError> {
        let pkt = match RtpPacket::parse(buf) {
            Ok(p) => p,
            Err(e) => {
                self.counters.invalid += 1;
                return Err(e);
            }
        };
        if self.cfg.latching {
            match self.latched_rtp {
                None => {
                    if let Some((stale, seen)) = self.stale_rtp.as_mut() {
                        if *stale == from && self.cfg.remote_rtp != Some(from) {
                            *seen += 1;
                            if *seen < STALE_LATCH_AFTER {
                                self.counters.from_unknown_source += 1;
                                return Ok(None);
                            }
                        }
                    }
                    tracing::debug!(%from, "RTP latched");
                    self.latched_rtp = Some(from);
                    self.stale_rtp = None;
                }
                Some(addr) if addr != from => {
                    self.counters.from_unknown_source += 1;
                    return Ok(None);
                }
                Some(_) => {}
            }
        }
        let verdict = self
            .stats
            .on_packet(now, pkt.ssrc(), pkt.seq(), pkt.timestamp());
        if verdict == SeqVerdict::BadJump {
            self.counters.bad_seq += 1;
            return Ok(None);
        }
        self.counters.rx_packets += 1;
        self.counters.rx_bytes += pkt.payload().len() as u64;
        Ok(Some(Received {
            payload_type: pkt.pt(),
            marker: pkt.marker(),
            seq: pkt.seq(),
            timestamp: pkt.timestamp(),
            ssrc: pkt.ssrc(),
            payload: pkt.payload_range(),
            verdict,
        }))
    }

    /// An RTCP datagram from `from`. `Ok(None)`: from an unknown source after latching.
    pub fn handle_rtcp(
        &mut self,
        now: Instant,
        from: SocketAddr,
        buf: &[u8],
    ) -> Result<Option<RtcpSummary>, RtcpError> {
        let pkts = match rtcp::parse_compound(buf) {
            Ok(p) => p,
            Err(e) => {
                self.counters.rtcp_invalid += 1;
                return Err(e);
            }
        };
        if self.cfg.latching {
            match self.latched_rtcp {
                None => self.latched_rtcp = Some(from),
                Some(addr) if addr != from => {
                    self.counters.rtcp_from_unknown_source += 1;
                    return Ok(None);
                }
                Some(_) => {}
            }
        }
        self.counters.rtcp_rx += 1;
        let me = self.cfg.local_ssrc;
        let mut sum = RtcpSummary::default();
        for p in pkts {
            match p {
                RtcpPacket::SenderReport(sr) => {
                    sum.sender_reports += 1;
                    if self.stats.ssrc().is_none_or(|s| s == sr.ssrc) {
                        self.stats.on_sender_report(now, sr.ntp);
                    }
                    if let Some(b) = sr.reports.iter().find(|b| b.ssrc == me) {
                        sum.report_about_us = Some(*b);
                    }
                }
                RtcpPacket::ReceiverReport { reports, .. } => {
                    if let Some(b) = reports.iter().find(|b| b.ssrc == me) {
                        sum.report_about_us = Some(*b);
                    }
                }
                RtcpPacket::Bye { .. } => sum.bye = true,
                RtcpPacket::Pli { media_ssrc, .. } if media_ssrc == me => {
                    sum.keyframe_request = true
                }
                RtcpPacket::Fir { requests, .. } if requests.iter().any(|r| r.0 == me) => {
                    sum.keyframe_request = true
                }
                _ => {}
            }
        }
        if sum.report_about_us.is_some() {
            self.report_about_us = sum.report_about_us;
        }
        Ok(Some(sum))
    }

    /// The next datagram due at `now`, if any. Call until `None`.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Transmit> {
        if let Some((payload, marker, ts)) = self.relay.pop_front() {
            match self.remote_rtp().filter(|_| self.cfg.direction.sends()) {
                Some(to) => {
                    let offset = *self
                        .relay_offset
                        .get_or_insert_with(|| self.tx_ts.wrapping_sub(ts));
                    let header = RtpHeader {
                        pt: self.cfg.payload_type,
                        marker,
                        seq: self.tx_seq,
                        timestamp: ts.wrapping_add(offset),
                        ssrc: self.cfg.local_ssrc,
                    };
                    self.tx_seq = self.tx_seq.wrapping_add(1);
                    self.counters.tx_packets += 1;
                    self.counters.tx_bytes += payload.len() as u64;
                    self.sent_since_report = true;
                    return Some(Transmit {
                        to,
                        data: header.to_vec(&payload),
                        rtcp: false,
                    });
                }
                // Nowhere to send (held, or no address yet): relayed media does not wait.
                None => self.relay.clear(),
            }
        }
        if now >= self.next_tick {
            if let Some(t) = self.tick(now) {
                return Some(t);
            }
        }
        if now >= self.next_rtcp {
            self.next_rtcp = now + self.rtcp_delay();
            if let Some(t) = self.build_report(now) {
                return Some(t);
            }
        }
        if let Some(media_ssrc) = self.pending_pli.take() {
            // Feedback rides in a compound packet: the report first (RFC 4585 §3.1).
            if let Some(mut t) = self.build_report(now) {
                rtcp::write_pli(self.cfg.local_ssrc, media_ssrc, &mut t.data);
                self.counters.pli_tx += 1;
                return Some(t);
            }
        }
        None
    }

    /// One ptime tick: the media clock always advances; a packet goes out if we send, know
    /// where to, and have something (injected payload or silence).
    fn tick(&mut self, now: Instant) -> Option<Transmit> {
        let t = self.clock_tick(now);
        self.clock_idle = !self.has_media_to_send();
        t
    }

    fn clock_tick(&mut self, now: Instant) -> Option<Transmit> {
        let ptime = self.ptime();
        let spt = self.samples_per_tick();
        let dtmf_busy = self.dtmf_tx.as_ref().is_some_and(|d| d.is_busy());
        if let (Some(last), true) = (self.live_last, self.inject.is_empty() && !dtmf_busy) {
            let resume = last + ptime * 2;
            if now < resume {
                // Live media paces us: wait for its next payload (or the watchdog).
                self.next_tick = resume;
                return None;
            }
            // The source stopped: our clock resumes, the gap shows in the timestamps.
            let gap = u32::try_from(
                now.saturating_duration_since(last).as_nanos() / ptime.as_nanos().max(1),
            )
            .unwrap_or(u32::MAX);
            self.tx_ts = self
                .tx_ts
                .wrapping_add(spt.wrapping_mul(gap.saturating_sub(1)));
            self.next_tick = now;
            self.live_last = None;
            self.need_marker = true;
        }
        // Woke up late by whole ticks: skip them (timestamps advance) rather than burst.
        let late = now.saturating_duration_since(self.next_tick);
        let missed = u32::try_from(late.as_nanos() / ptime.as_nanos().max(1)).unwrap_or(u32::MAX);
        if missed > 0 {
            if !self.clock_idle {
                self.counters.tx_late_ticks += u64::from(missed);
            }
            self.tx_ts = self.tx_ts.wrapping_add(spt.wrapping_mul(missed));
            self.next_tick += ptime * missed;
            self.need_marker = true;
        }
        self.last_tick = (self.next_tick, self.tx_ts);
        self.next_tick += ptime;
        let ts = self.tx_ts;
        self.tx_ts = self.tx_ts.wrapping_add(spt);

        let to = self.remote_rtp().filter(|_| self.cfg.direction.sends());
        let Some(to) = to else {
            self.inject.clear();
            if let Some(d) = self.dtmf_tx.as_mut() {
                d.clear();
            }
            self.need_marker = true;
            return None;
        };
        if let Some(ev) = self.dtmf_tx.as_mut().and_then(|d| d.tick(ts, spt)) {
            // The digit replaces this tick's audio; what was injected for it is dropped so
            // that the audio after the digit stays in time.
            self.inject.pop_front();
            let header = RtpHeader {
                pt: ev.payload_type,
                marker: ev.marker,
                seq: self.tx_seq,
                timestamp: ev.timestamp,
                ssrc: self.cfg.local_ssrc,
            };
            self.tx_seq = self.tx_seq.wrapping_add(1);
            self.counters.tx_packets += 1;
            self.counters.tx_bytes += ev.payload.len() as u64;
            self.counters.dtmf_tx += 1;
            self.sent_since_report = true;
            // The audio after an event starts a new talkspurt.
            self.need_marker = true;
            return Some(Transmit {
                to,
                data: header.to_vec(&ev.payload),
                rtcp: false,
            });
        }
        let payload = match self.inject.pop_front() {
            Some(p) => p,
            None if self.cfg.send_silence && !self.cfg.silence_payload.is_empty() => {
                self.cfg.silence_payload.clone()
            }
            None => {
                self.need_marker = true;
                return None;
            }
        };
        let header = RtpHeader {
            pt: self.cfg.payload_type,
            marker: std::mem::take(&mut self.need_marker),
            seq: self.tx_seq,
            timestamp: ts,
            ssrc: self.cfg.local_ssrc,
        };
        self.tx_seq = self.tx_seq.wrapping_add(1);
        self.counters.tx_packets += 1;
        self.counters.tx_bytes += payload.len() as u64;
        self.sent_since_report = true;
        Some(Transmit {
            to,
            data: header.to_vec(&payload),
            rtcp: false,
        })
    }

    /// Asks the sender for a keyframe: an RTCP PLI (RFC 4585 §6.3.1) in a compound packet
    /// goes out with the next `poll_transmit`. At most one every 500 ms; before any RTP has
    /// arrived there is nobody to ask and the request is dropped. Returns whether one was queued.
    pub fn request_keyframe(&mut self, now: Instant) -> bool {
        let Some(media_ssrc) = self.stats.ssrc() else {
            return false;
        };
        if self
            .last_pli
            .is_some_and(|t| now.saturating_duration_since(t) < Duration::from_millis(500))
        {
            return false;
        }
        self.last_pli = Some(now);
        self.pending_pli = Some(media_ssrc);
        true
    }

    fn build_report(&mut self, now: Instant) -> Option<Transmit> {
        let to = self.remote_rtcp()?;
        let blocks: Vec<ReportBlock> = self.stats.report_block(now).into_iter().collect();
        let mut data = Vec::with_capacity(80);
        match self.ntp_ref {
            Some((at, ntp)) if std::mem::take(&mut self.sent_since_report) => {
                let (tick_at, tick_ts) = self.last_tick;
                let since_tick = now.saturating_duration_since(tick_at);
                let units = since_tick.as_nanos() * u128::from(self.cfg.clock_rate) / 1_000_000_000;
                let sr = SenderReport {
                    ssrc: self.cfg.local_ssrc,
                    ntp: rtcp::ntp_add(ntp, now.saturating_duration_since(at)),
                    rtp_ts: tick_ts.wrapping_add((units & 0xFFFF_FFFF) as u32),
                    // The SR's counters are 32-bit and wrap (RFC 3550 §6.4.1).
                    packet_count: (self.counters.tx_packets & 0xFFFF_FFFF) as u32,
                    octet_count: (self.counters.tx_bytes & 0xFFFF_FFFF) as u32,
                    reports: blocks,
                };
                rtcp::write_sr_sdes(&sr, &self.cfg.cname, &mut data);
            }
            _ => rtcp::write_rr_sdes(self.cfg.local_ssrc, &blocks, &self.cfg.cname, &mut data),
        }
        self.counters.rtcp_tx += 1;
        Some(Transmit {
            to,
            data,
            rtcp: true,
        })
    }

    /// When `poll_transmit` next has something (or the media clock must advance).
    pub fn poll_timeout(&self) -> Instant {
        if self.has_media_to_send() {
            self.next_tick.min(self.next_rtcp)
        } else {
            // Nothing to send (no silence, nothing injected): the media clock catches up at
            // the next event (`tick` skips whole ptimes), so no wake-up per ptime is needed.
            self.next_rtcp
        }
    }

    /// Whether a ptime tick can produce a packet: silence is on, or media was injected.
    fn has_media_to_send(&self) -> bool {
        !self.inject.is_empty()
            || self.dtmf_tx.as_ref().is_some_and(|d| d.is_busy())
            || (self.cfg.send_silence && !self.cfg.silence_payload.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn cfg() -> SessionConfig {
        let mut c = SessionConfig::for_codec(0x1234_5678, "PCMU", 0, 8000);
        c.initial_seq = 1000;
        c.initial_timestamp = 5000;
        c.rtcp_interval = Duration::from_secs(5);
        c
    }

    fn rtp(seq: u16, ssrc: u32) -> Vec<u8> {
        RtpHeader {
            pt: 0,
            marker: false,
            seq,
            timestamp: u32::from(seq) * 160,
            ssrc,
        }
        .to_vec(&[0x55; 160])
    }

    /// Runs the session in virtual time until `until`, collecting transmits.
    fn run(s: &mut RtpSession, from: Instant, until: Instant) -> Vec<(Instant, Transmit)> {
        let mut out = Vec::new();
        let mut now = from;
        while now <= until {
            while let Some(t) = s.poll_transmit(now) {
                out.push((now, t));
            }
            let next = s.poll_timeout();
            assert!(next > now, "deadline must move forward");
            now = next;
        }
        out
    }

    #[test]
    fn relayed_packets_go_out_at_once_with_our_ssrc_and_their_spacing_and_markers() {
        let t0 = Instant::now();
        let mut c = SessionConfig::for_codec(0x1234_5678, "H264", 96, 90000);
        c.initial_seq = 1000;
        c.remote_rtp = Some(addr(7000));
        let mut s = RtpSession::new(c, t0);
        // A frame of two packets, then the next frame 3600 ticks later.
        for (payload, marker, ts) in [(1u8, false, 500u32), (2, true, 500), (3, true, 4100)] {
            s.relay(Bytes::from(vec![payload]), marker, ts);
        }
        let sent: Vec<Transmit> = std::iter::from_fn(|| s.poll_transmit(t0))
            .filter(|t| !t.rtcp)
            .collect();
        assert_eq!(sent.len(), 3);
        let hdr = |t: &Transmit| {
            let p = RtpPacket::parse(&t.data).unwrap();
            (
                p.seq(),
                p.timestamp(),
                p.marker(),
                p.ssrc(),
                p.pt(),
                p.payload()[0],
            )
        };
        let (seq0, ts0, m0, ssrc, pt, b0) = hdr(&sent[0]);
        assert_eq!((seq0, m0, ssrc, pt, b0), (1000, false, 0x1234_5678, 96, 1));
        let (seq1, ts1, m1, ..) = hdr(&sent[1]);
        assert_eq!(
            (seq1, ts1, m1),
            (1001, ts0, true),
            "one frame, one timestamp"
        );
        let (seq2, ts2, ..) = hdr(&sent[2]);
        assert_eq!(
            (seq2, ts2.wrapping_sub(ts0)),
            (1002, 3600),
            "the frames' spacing"
        );
        // Held (we do not send): relayed packets are dropped, not kept for later.
        s.set_direction(Direction::RecvOnly);
        s.relay(Bytes::from_static(b"x"), true, 7700);
        assert!(std::iter::from_fn(|| s.poll_transmit(t0)).all(|t| t.rtcp));
        s.set_direction(Direction::SendRecv);
        assert!(std::iter::from_fn(|| s.poll_transmit(t0)).all(|t| t.rtcp));
    }

    #[test]
    fn live_media_goes_out_on_arrival_with_continuous_timestamps_then_silence_resumes() {
        let t0 = Instant::now();
        let mut c = cfg();
        c.remote_rtp = Some(addr(7000));
        let mut s = RtpSession::new(c, t0);
        // Our own clock first: silence at t0.
        let first = s.poll_transmit(t0).expect("silence");
        let ts0 = u32::from_be_bytes(first.data[4..8].try_into().unwrap());
        let _ = s.poll_transmit(t0);
        // Live payloads every 20 ms with ±3 ms of jitter, starting mid-ptime.
        let mut sent = Vec::new();
        let now = t0 + Duration::from_millis(7);
        for i in 0..20u32 {
            let jitter = [0i64, 3, -2, 1, -3][i as usize % 5];
            let at = now
                + Duration::from_millis(20 * u64::from(i))
                + Duration::from_millis((jitter + 3) as u64)
                - Duration::from_millis(3);
            // Anything due before the arrival (the clock must not send silence meanwhile).
            let mut t = s.poll_timeout();
            while t < at {
                assert!(
                    s.poll_transmit(t).map(|x| x.rtcp).unwrap_or(true),
                    "no RTP between live payloads"
                );
                t = s.poll_timeout().max(t + Duration::from_micros(1));
            }
            s.inject_live(at, Bytes::from(vec![i as u8; 160]));
            let out = s.poll_transmit(at).expect("sent on arrival");
            assert!(!out.rtcp);
            assert_eq!(out.data[12], i as u8, "the live payload itself");
            sent.push(out);
        }
        let ts: Vec<u32> = sent
            .iter()
            .map(|t| u32::from_be_bytes(t.data[4..8].try_into().unwrap()))
            .collect();
        assert!(
            ts.windows(2).all(|w| w[1].wrapping_sub(w[0]) == 160),
            "{ts:?}"
        );
        assert_eq!(sent[0].data[1] & 0x80, 0x80, "a new talkspurt: marker");
        assert!(sent[1..].iter().all(|t| t.data[1] & 0x80 == 0));
        assert!(ts[0].wrapping_sub(ts0) >= 160);
        // The source stops: silence resumes two ptimes after the last payload, marked, with
        // the gap in its timestamp.
        let last_at = now + Duration::from_millis(20 * 19) - Duration::from_millis(3);
        let mut silence = None;
        let mut t = last_at;
        while silence.is_none() {
            t = s.poll_timeout().max(t);
            silence = s.poll_transmit(t).filter(|x| !x.rtcp);
            if silence.is_none() {
                t += Duration::from_micros(100);
            }
        }
        assert!(
            t >= last_at + Duration::from_millis(40),
            "{:?}",
            t - last_at
        );
        let silence = silence.unwrap();
        assert_eq!(silence.data[1] & 0x80, 0x80);
        let sts = u32::from_be_bytes(silence.data[4..8].try_into().unwrap());
        assert!(
            sts.wrapping_sub(*ts.last().unwrap()) >= 320,
            "the gap counts"
        );
        // A short gap in the live media (one packet missing) shows in the timestamps too.
        let back = t + Duration::from_millis(5);
        s.inject_live(back, Bytes::from(vec![1; 160]));
        let a = s.poll_transmit(back).unwrap();
        s.inject_live(back + Duration::from_millis(40), Bytes::from(vec![2; 160]));
        let b = s.poll_transmit(back + Duration::from_millis(40)).unwrap();
        let (ta, tb) = (
            u32::from_be_bytes(a.data[4..8].try_into().unwrap()),
            u32::from_be_bytes(b.data[4..8].try_into().unwrap()),
        );
        assert_eq!(tb.wrapping_sub(ta), 320);
    }

    #[test]
    fn keyframe_request_sends_a_compound_pli_to_the_sender_rate_limited() {
        let t0 = Instant::now();
        let mut s = RtpSession::new(cfg(), t0);
        assert!(!s.request_keyframe(t0), "nobody to ask before RTP arrives");
        s.handle_rtp(t0, addr(5000), &rtp(1, 0xABCD)).unwrap();
        // Drain what is due now (silence, first report).
        while s.poll_transmit(t0).is_some() {}
        assert!(s.request_keyframe(t0));
        let t = s.poll_transmit(t0).expect("the PLI goes out at once");
        assert!(t.rtcp);
        assert_eq!(t.to, addr(5001));
        let pkts = rtcp::parse_compound(&t.data).unwrap();
        assert!(
            matches!(
                pkts[0],
                RtcpPacket::ReceiverReport { .. } | RtcpPacket::SenderReport(_)
            ),
            "{pkts:?}"
        );
        assert!(
            pkts.iter().any(|p| matches!(
                p,
                RtcpPacket::Pli {
                    media_ssrc: 0xABCD,
                    sender_ssrc: 0x1234_5678
                }
            )),
            "{pkts:?}"
        );
        assert!(
            !s.request_keyframe(t0 + Duration::from_millis(100)),
            "rate limited"
        );
        assert!(s.request_keyframe(t0 + Duration::from_millis(600)));
        assert_eq!(s.counters().pli_tx, 1);
    }

    #[test]
    fn latching_sends_to_first_source_and_drops_others() {
        let t0 = Instant::now();
        let mut c = cfg();
        c.remote_rtp = Some(addr(4000)); // SDP says 4000, NAT makes it 5000
        let mut s = RtpSession::new(c, t0);
        let p = rtp(1, 9);
        let r = s.handle_rtp(t0, addr(5000), &p).unwrap().unwrap();
        assert_eq!(&p[r.payload.clone()], &[0x55; 160]);
        assert_eq!(s.remote_rtp(), Some(addr(5000)));
        assert_eq!(s.remote_rtcp(), Some(addr(5001)));
        assert!(s.handle_rtp(t0, addr(6000), &rtp(2, 9)).unwrap().is_none());
        assert_eq!(s.counters().from_unknown_source, 1);
        let tx = s.poll_transmit(t0).unwrap();
        assert_eq!(tx.to, addr(5000));
        // A re-INVITE re-arms latching.
        s.set_remote(Some(addr(7000)), None);
        assert_eq!(s.remote_rtp(), Some(addr(7000)));
        assert!(s.handle_rtp(t0, addr(6000), &rtp(3, 9)).unwrap().is_some());
        assert_eq!(s.remote_rtp(), Some(addr(6000)));
    }

    #[test]
    fn after_a_transfer_the_old_partys_lingering_stream_does_not_win_the_relatch() {
        let t0 = Instant::now();
        let mut c = cfg();
        c.remote_rtp = Some(addr(4000));
        let mut s = RtpSession::new(c, t0);
        assert!(s.handle_rtp(t0, addr(4000), &rtp(1, 9)).unwrap().is_some());
        // Another party's SDP: the old one still sends for a while.
        s.set_remote(Some(addr(7000)), None);
        assert!(s.handle_rtp(t0, addr(4000), &rtp(2, 9)).unwrap().is_none());
        assert!(s.handle_rtp(t0, addr(7002), &rtp(1, 77)).unwrap().is_some());
        assert_eq!(
            s.remote_rtp(),
            Some(addr(7002)),
            "the new party (behind NAT)"
        );
        assert!(s.handle_rtp(t0, addr(4000), &rtp(3, 9)).unwrap().is_none());
        // The same peer moving its SDP address but sending from where it did: after a second
        // of nothing else, it is latched again.
        let mut s = RtpSession::new(cfg(), t0);
        assert!(s.handle_rtp(t0, addr(5000), &rtp(1, 9)).unwrap().is_some());
        s.set_remote(Some(addr(8000)), None);
        let accepted = (2..60)
            .filter(|seq| {
                s.handle_rtp(t0, addr(5000), &rtp(*seq, 9))
                    .unwrap()
                    .is_some()
            })
            .count();
        assert_eq!(accepted, 60 - 2 - (STALE_LATCH_AFTER as usize - 1));
        assert_eq!(s.remote_rtp(), Some(addr(5000)));
        // A re-INVITE that keeps the address (hold, unhold) re-latches at once.
        s.set_remote(Some(addr(8000)), None);
        assert!(s.handle_rtp(t0, addr(5000), &rtp(70, 9)).unwrap().is_some());
    }

    #[test]
    fn without_latching_any_source_and_sdp_target() {
        let t0 = Instant::now();
        let mut c = cfg();
        c.latching = false;
        c.remote_rtp = Some(addr(4000));
        c.remote_rtcp = Some(addr(4101));
        let mut s = RtpSession::new(c, t0);
        assert!(s.handle_rtp(t0, addr(5000), &rtp(1, 9)).unwrap().is_some());
        assert!(s.handle_rtp(t0, addr(6000), &rtp(2, 9)).unwrap().is_some());
        assert_eq!(s.remote_rtp(), Some(addr(4000)));
        assert_eq!(s.remote_rtcp(), Some(addr(4101)));
    }

    #[test]
    fn silence_every_ptime_and_rr_every_interval() {
        let t0 = Instant::now();
        let mut c = cfg();
        c.remote_rtp = Some(addr(4000));
        let mut s = RtpSession::new(c, t0);
        // Receive some media so the RR carries a block.
        for i in 0..10u16 {
            s.handle_rtp(
                t0 + Duration::from_millis(20) * u32::from(i),
                addr(4000),
                &rtp(i, 77),
            )
            .unwrap();
        }
        let out = run(&mut s, t0, t0 + Duration::from_secs(20));
        let rtp_tx: Vec<_> = out.iter().filter(|(_, t)| !t.rtcp).collect();
        let rtcp_tx: Vec<_> = out.iter().filter(|(_, t)| t.rtcp).collect();
        assert_eq!(rtp_tx.len(), 1001); // 0, 20 ms, ..., 20 s
        for (i, (at, t)) in rtp_tx.iter().enumerate() {
            let p = RtpPacket::parse(&t.data).unwrap();
            assert_eq!(*at, t0 + Duration::from_millis(20) * i as u32);
            assert_eq!(p.seq(), 1000u16.wrapping_add(i as u16));
            assert_eq!(p.timestamp(), 5000 + 160 * i as u32);
            assert_eq!(p.marker(), i == 0);
            assert_eq!(p.ssrc(), 0x1234_5678);
            assert_eq!(p.payload(), &[0xFF; 160]);
            assert_eq!(t.to, addr(4000));
        }
        // First RR after 1.25–3.75 s, then every 2.5–7.5 s: 3 to 8 reports in 20 s.
        assert!((3..=8).contains(&rtcp_tx.len()), "{}", rtcp_tx.len());
        assert!(rtcp_tx[0].0 - t0 <= Duration::from_millis(3750));
        let pkts = rtcp::parse_compound(&rtcp_tx[0].1.data).unwrap();
        match &pkts[0] {
            RtcpPacket::ReceiverReport { ssrc, reports } => {
                assert_eq!(*ssrc, 0x1234_5678);
                assert_eq!(reports[0].ssrc, 77);
                assert_eq!(reports[0].highest_seq, 9);
            }
            p => panic!("{p:?}"),
        }
        assert_eq!(rtcp_tx[0].1.to, addr(4001));
        assert_eq!(s.counters().tx_packets, 1001);
    }

    #[test]
    fn without_silence_the_clock_needs_no_timer_until_media_is_injected() {
        let t0 = Instant::now();
        let mut c = cfg();
        c.remote_rtp = Some(addr(4000));
        c.send_silence = false;
        let mut s = RtpSession::new(c, t0);
        while s.poll_transmit(t0).is_some() {}
        // Only RTCP is due: no wake-up every ptime.
        assert!(s.poll_timeout() - t0 >= Duration::from_millis(1250));
        // 1 s later something is injected: it goes out at once, the timestamps having run
        // on with the clock (50 ticks), with a marker; the next packet is due a ptime later.
        let t1 = t0 + Duration::from_secs(1);
        s.inject(Bytes::from_static(&[0x55; 160]));
        s.inject(Bytes::from_static(&[0x55; 160]));
        let first = s.poll_transmit(t1).unwrap();
        let p = RtpPacket::parse(&first.data).unwrap();
        assert!(p.marker());
        assert_eq!(p.timestamp(), 5000 + 160 * 50);
        assert_eq!(s.poll_timeout(), t1 + Duration::from_millis(20));
        assert_eq!(s.counters().tx_late_ticks, 0);
        let second = s.poll_transmit(t1 + Duration::from_millis(20)).unwrap();
        assert_eq!(
            RtpPacket::parse(&second.data).unwrap().timestamp(),
            5000 + 160 * 51
        );
        // Queue empty again: back to the RTCP deadline, and a later injection is not late.
        assert!(s.poll_timeout() > t1 + Duration::from_millis(40));
        s.inject(Bytes::from_static(&[0x55; 160]));
        assert!(s.poll_transmit(t1 + Duration::from_secs(2)).is_some());
        assert_eq!(s.counters().tx_late_ticks, 0);
    }

    #[test]
    fn late_wakeup_skips_ticks_without_burst() {
        let t0 = Instant::now();
        let mut c = cfg();
        c.remote_rtp = Some(addr(4000));
        let mut s = RtpSession::new(c, t0);
        assert!(s.poll_transmit(t0).is_some());
        // Driver stalls 105 ms.
        let t1 = t0 + Duration::from_millis(105);
        let mut sent = Vec::new();
        while let Some(t) = s.poll_transmit(t1) {
            if !t.rtcp {
                sent.push(t);
            }
        }
        assert_eq!(sent.len(), 1);
        let p = RtpPacket::parse(&sent[0].data).unwrap();
        assert_eq!(p.seq(), 1001);
        assert_eq!(p.timestamp(), 5000 + 5 * 160);
        assert!(p.marker());
        assert_eq!(s.counters().tx_late_ticks, 4);
        assert_eq!(s.poll_timeout(), t0 + Duration::from_millis(120));
    }

    #[test]
    fn direction_and_inject() {
        let t0 = Instant::now();
        let mut c = cfg();
        c.remote_rtp = Some(addr(4000));
        c.rtcp_interval = Duration::from_secs(3600);
        let mut s = RtpSession::new(c, t0);
        s.set_direction(Direction::RecvOnly);
        let out = run(&mut s, t0, t0 + Duration::from_millis(100));
        assert!(out.is_empty());
        s.set_direction(Direction::SendRecv);
        assert!(s.inject(Bytes::from_static(&[1, 2, 3])));
        let out = run(
            &mut s,
            t0 + Duration::from_millis(120),
            t0 + Duration::from_millis(140),
        );
        assert_eq!(out.len(), 2);
        let a = RtpPacket::parse(&out[0].1.data).unwrap();
        let b = RtpPacket::parse(&out[1].1.data).unwrap();
        assert_eq!(a.payload(), &[1, 2, 3]);
        assert!(a.marker());
        assert_eq!(a.seq(), 1000);
        assert_eq!(a.timestamp(), 5000 + 6 * 160);
        assert_eq!(b.payload(), &[0xFF; 160]);
        assert!(!b.marker());
    }

    #[test]
    fn nothing_sent_before_latch_without_sdp_address() {
        let t0 = Instant::now();
        let mut c = cfg();
        c.rtcp_interval = Duration::from_millis(100);
        let mut s = RtpSession::new(c, t0);
        assert!(run(&mut s, t0, t0 + Duration::from_millis(200)).is_empty());
        s.handle_rtp(t0 + Duration::from_millis(210), addr(9000), &rtp(5, 1))
            .unwrap();
        let out = run(
            &mut s,
            t0 + Duration::from_millis(220),
            t0 + Duration::from_millis(400),
        );
        assert!(out.iter().any(|(_, t)| !t.rtcp && t.to == addr(9000)));
        assert!(out.iter().any(|(_, t)| t.rtcp && t.to == addr(9001)));
    }

    #[test]
    fn invalid_packets_are_counted_and_harmless() {
        let t0 = Instant::now();
        let mut s = RtpSession::new(cfg(), t0);
        assert!(s.handle_rtp(t0, addr(1), &[0x80, 0, 1]).is_err());
        assert!(s.handle_rtp(t0, addr(1), &[0u8; 40]).is_err());
        assert!(s.handle_rtcp(t0, addr(1), &[0x80, 201, 0, 9]).is_err());
        let c = s.counters();
        assert_eq!((c.invalid, c.rtcp_invalid, c.rx_packets), (2, 1, 0));
        // Invalid packets do not latch.
        assert!(!s.is_latched());
    }

    #[test]
    fn rtcp_sr_feeds_lsr_and_summary() {
        let t0 = Instant::now();
        let mut c = cfg();
        c.remote_rtp = Some(addr(4000));
        let mut s = RtpSession::new(c, t0);
        for i in 0..3 {
            s.handle_rtp(t0, addr(4000), &rtp(i, 77)).unwrap();
        }
        let mut sr = vec![0x81, rtcp::PT_SR, 0, 12];
        for w in [77u32, 0x0000_1234, 0x5678_0000, 0, 3, 480] {
            sr.extend_from_slice(&w.to_be_bytes());
        }
        let mine = ReportBlock {
            ssrc: 0x1234_5678,
            fraction_lost: 12,
            ..Default::default()
        };
        let mut rr = Vec::new();
        rtcp::write_rr_sdes(77, &[mine], "x", &mut rr);
        // Patch the RR's report into the SR: simpler to send RR + BYE separately.
        sr[0] = 0x80;
        sr[3] = 6;
        sr.extend_from_slice(&rr);
        sr.extend_from_slice(&[0x81, rtcp::PT_BYE, 0, 1, 0, 0, 0, 77]);
        let sum = s.handle_rtcp(t0, addr(4001), &sr).unwrap().unwrap();
        assert_eq!(sum.sender_reports, 1);
        assert!(sum.bye);
        assert_eq!(sum.report_about_us.unwrap().fraction_lost, 12);
        let mut pli = Vec::new();
        rtcp::write_pli(77, 0x1234_5678, &mut pli);
        assert!(
            s.handle_rtcp(t0, addr(4001), &pli)
                .unwrap()
                .unwrap()
                .keyframe_request
        );
        assert!(s.handle_rtcp(t0, addr(4999), &pli).unwrap().is_none());
        // The next RR carries LSR = middle 32 bits of the SR's NTP time.
        let t = loop {
            let t = s.poll_transmit(t0 + Duration::from_secs(10)).unwrap();
            if t.rtcp {
                break t;
            }
        };
        match &rtcp::parse_compound(&t.data).unwrap()[0] {
            RtcpPacket::ReceiverReport { reports, .. } => {
                assert_eq!(reports[0].lsr, 0x1234_5678);
                assert_eq!(reports[0].dlsr, 10 * 65536);
            }
            p => panic!("{p:?}"),
        }
        assert_eq!(t.to, addr(4001));
    }

    #[test]
    fn sender_report_when_sending_with_wall_clock() {
        let t0 = Instant::now();
        let mut c = cfg();
        c.remote_rtp = Some(addr(4000));
        c.rtcp_interval = Duration::from_secs(2);
        let mut s = RtpSession::new(c, t0);
        let ntp0 = 0xE000_0000_0000_0000u64;
        s.set_ntp_reference(t0, ntp0);
        let out = run(&mut s, t0, t0 + Duration::from_secs(4));
        let (at, t) = out.iter().find(|(_, t)| t.rtcp).unwrap();
        match &rtcp::parse_compound(&t.data).unwrap()[0] {
            RtcpPacket::SenderReport(sr) => {
                let elapsed = *at - t0;
                assert_eq!(sr.ntp, rtcp::ntp_add(ntp0, elapsed));
                // RTP time of the report instant on our media clock.
                let expect = 5000 + (elapsed.as_micros() * 8 / 1000) as u32;
                assert_eq!(sr.rtp_ts, expect);
                let sent = out.iter().filter(|(a, t)| !t.rtcp && a <= at).count() as u32;
                assert_eq!(sr.packet_count, sent);
                assert_eq!(sr.octet_count, sent * 160);
            }
            p => panic!("{p:?}"),
        }
        // Not sending: the next report is an RR.
        s.set_direction(Direction::RecvOnly);
        let later = run(
            &mut s,
            t0 + Duration::from_secs(5),
            t0 + Duration::from_secs(12),
        );
        let last = later.iter().rev().find(|(_, t)| t.rtcp).unwrap();
        assert!(matches!(
            rtcp::parse_compound(&last.1.data).unwrap()[0],
            RtcpPacket::ReceiverReport { .. }
        ));
    }

    #[test]
    fn silence_payloads() {
        assert_eq!(silence_payload("PCMU", 8000, 20).len(), 160);
        assert!(silence_payload("pcma", 8000, 30).iter().all(|&b| b == 0xD5));
        assert_eq!(silence_payload("PCMA", 8000, 30).len(), 240);
        assert_eq!(
            &silence_payload("opus", 48000, 20)[..],
            g711::OPUS_SILENCE_20MS
        );
        assert!(silence_payload("H264", 90000, 20).is_empty());
    }
}
