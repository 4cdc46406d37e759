//! Receiver statistics for one remote RTP source (RFC 3550 Appendix A.1, A.3, A.8) and the
//! reception report block built from them (§6.4.1), including LSR/DLSR from the last SR.
//!
//! Sans-IO: arrival times are passed in as `Instant`s and converted to the media clock here.
//! It tracks one source at a time: a new SSRC restarts the statistics (and is counted),
//! which is what a gateway leg wants when the far end's media server switches streams.

use std::time::{Duration, Instant};

use super::rtcp::ReportBlock;

const MIN_SEQUENTIAL: u32 = 2;
const MAX_DROPOUT: u16 = 3000;
const MAX_MISORDER: u16 = 100;
const RTP_SEQ_MOD: u32 = 1 << 16;

/// What the sequence check (A.1) concluded about one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqVerdict {
    /// In sequence (or an acceptable reordering/duplicate) of a validated source.
    Valid,
    /// The source is still on probation (fewer than MIN_SEQUENTIAL packets in order).
    Probation,
    /// A large jump: dropped unless the next packet confirms it (then the source restarts).
    BadJump,
}

#[derive(Debug, Clone)]
struct Source {
    ssrc: u32,
    max_seq: u16,
    cycles: u32,
    base_seq: u32,
    bad_seq: u32,
    probation: u32,
    received: u32,
    expected_prior: u32,
    received_prior: u32,
    /// Relative transit time of the previous packet, in timestamp units.
    transit: Option<u32>,
    /// Interarrival jitter estimate in timestamp units.
    jitter: f64,
}

impl Source {
    fn new(ssrc: u32, seq: u16) -> Self {
        let mut s = Self {
            ssrc,
            max_seq: seq.wrapping_sub(1),
            cycles: 0,
            base_seq: 0,
            bad_seq: 0,
            probation: MIN_SEQUENTIAL,
            received: 0,
            expected_prior: 0,
            received_prior: 0,
            transit: None,
            jitter: 0.0,
        };
        s.init_seq(seq);
        s.max_seq = seq.wrapping_sub(1);
        s
    }

    fn init_seq(&mut self, seq: u16) {
        self.base_seq = u32::from(seq);
        self.max_seq = seq;
        self.bad_seq = RTP_SEQ_MOD + 1;
        self.cycles = 0;
        self.received = 0;
        self.received_prior = 0;
        self.expected_prior = 0;
    }

    /// RFC 3550 A.1 `update_seq`, with wrapping arithmetic instead of C's implicit modulo.
    fn update_seq(&mut self, seq: u16) -> SeqVerdict {
        let udelta = seq.wrapping_sub(self.max_seq);
        if self.probation > 0 {
            if seq == self.max_seq.wrapping_add(1) {
                self.probation -= 1;
                self.max_seq = seq;
                if self.probation == 0 {
                    self.init_seq(seq);
                    self.received = self.received.wrapping_add(1);
                    return SeqVerdict::Valid;
                }
            } else {
                self.probation = MIN_SEQUENTIAL - 1;
                self.max_seq = seq;
            }
            return SeqVerdict::Probation;
        } else if udelta < MAX_DROPOUT {
            if seq < self.max_seq {
                self.cycles = self.cycles.wrapping_add(RTP_SEQ_MOD);
            }
            self.max_seq = seq;
        } else if u32::from(udelta) <= RTP_SEQ_MOD - u32::from(MAX_MISORDER) {
            if u32::from(seq) == self.bad_seq {
                // Two sequential packets after a jump: the sender restarted.
                self.init_seq(seq);
            } else {
                self.bad_seq = (u32::from(seq) + 1) & (RTP_SEQ_MOD - 1);
                return SeqVerdict::BadJump;
            }
        }
        // else: duplicate or reordered packet, counted as received.
        self.received = self.received.wrapping_add(1);
        SeqVerdict::Valid
    }

    fn extended_max(&self) -> u32 {
        self.cycles.wrapping_add(u32::from(self.max_seq))
    }

    fn expected(&self) -> u32 {
        self.extended_max()
            .wrapping_sub(self.base_seq)
            .wrapping_add(1)
    }

    fn cumulative_lost(&self) -> i64 {
        i64::from(self.expected()) - i64::from(self.received)
    }
}

/// Snapshot of the receiver statistics.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RxStatsSnapshot {
    pub ssrc: Option<u32>,
    pub received: u64,
    pub expected: u64,
    /// Cumulative loss (negative with duplicates, as RFC 3550 allows).
    pub lost: i64,
    pub extended_max_seq: u32,
    /// Jitter in timestamp units.
    pub jitter: f64,
    /// Jitter in milliseconds.
    pub jitter_ms: f64,
    pub ssrc_changes: u64,
    pub bad_jumps: u64,
}

/// Receiver statistics for the remote source of one RTP session.
#[derive(Debug, Clone)]
pub struct RxStats {
    clock_rate: u32,
    /// Origin of the arrival clock, so arrival times fit the 32-bit timestamp space.
    epoch: Option<Instant>,
    source: Option<Source>,
    ssrc_changes: u64,
    bad_jumps: u64,
    /// Middle 32 bits of the last SR's NTP time, and when it arrived.
    last_sr: Option<(u32, Instant)>,
}

impl RxStats {
    /// `clock_rate` of the negotiated codec (8000 for G.711, 48000 for Opus). 0 is
    /// treated as 8000 so misconfiguration cannot divide by zero.
    pub fn new(clock_rate: u32) -> Self {
        Self {
            clock_rate: if clock_rate == 0 { 8000 } else { clock_rate },
            epoch: None,
            source: None,
            ssrc_changes: 0,
            bad_jumps: 0,
            last_sr: None,
        }
    }

    /// Changes the clock rate (codec change); restarts the statistics of the source because
    /// timestamps of the old and new clock cannot be compared.
    pub fn set_clock_rate(&mut self, clock_rate: u32) {
        if clock_rate != 0 && clock_rate != self.clock_rate {
            self.clock_rate = clock_rate;
            self.source = None;
        }
    }

    pub fn ssrc(&self) -> Option<u32> {
        self.source.as_ref().map(|s| s.ssrc)
    }

    fn arrival_units(&mut self, now: Instant) -> u32 {
        let epoch = *self.epoch.get_or_insert(now);
        let nanos = now.saturating_duration_since(epoch).as_nanos();
        // Wraps like RTP timestamps do; only differences matter.
        let units = nanos.saturating_mul(u128::from(self.clock_rate)) / 1_000_000_000;
        (units & 0xFFFF_FFFF) as u32
    }

    /// Accounts one received packet (A.1 + A.8). Call for every valid RTP packet of the
    /// session, in arrival order.
    pub fn on_packet(&mut self, now: Instant, ssrc: u32, seq: u16, rtp_ts: u32) -> SeqVerdict {
        let arrival = self.arrival_units(now);
        let src = match &mut self.source {
            Some(s) if s.ssrc == ssrc => s,
            slot => {
                if slot.is_some() {
                    self.ssrc_changes += 1;
                }
                slot.insert(Source::new(ssrc, seq))
            }
        };
        let verdict = src.update_seq(seq);
        if verdict == SeqVerdict::BadJump {
            self.bad_jumps += 1;
            return verdict;
        }
        // A.8: D(i-1,i) = (Rj - Ri) - (Sj - Si), computed on the relative transit times.
        let transit = arrival.wrapping_sub(rtp_ts);
        if let Some(prev) = src.transit {
            let d = f64::from(transit.wrapping_sub(prev) as i32).abs();
            src.jitter += (d - src.jitter) / 16.0;
        }
        src.transit = Some(transit);
        verdict
    }

    /// Records a Sender Report from the remote source: its NTP time, for LSR/DLSR.
    pub fn on_sender_report(&mut self, now: Instant, ntp: u64) {
        self.last_sr = Some((((ntp >> 16) & 0xFFFF_FFFF) as u32, now));
    }

    pub fn snapshot(&self) -> RxStatsSnapshot {
        let Some(s) = &self.source else {
            return RxStatsSnapshot {
                ssrc_changes: self.ssrc_changes,
                bad_jumps: self.bad_jumps,
                ..Default::default()
            };
        };
        RxStatsSnapshot {
            ssrc: Some(s.ssrc),
            received: u64::from(s.received),
            expected: if s.probation > 0 {
                0
            } else {
                u64::from(s.expected())
            },
            lost: if s.probation > 0 {
                0
            } else {
                s.cumulative_lost()
            },
            extended_max_seq: s.extended_max(),
            jitter: s.jitter,
            jitter_ms: s.jitter * 1000.0 / f64::from(self.clock_rate),
            ssrc_changes: self.ssrc_changes,
            bad_jumps: self.bad_jumps,
        }
    }

    /// Builds the report block for the next RR and starts a new reporting interval (A.3).
    /// `None` while no source has passed probation.
    pub fn report_block(&mut self, now: Instant) -> Option<ReportBlock> {
        let s = self.source.as_mut()?;
        if s.probation > 0 {
            return None;
        }
        let expected = s.expected();
        let expected_interval = expected.wrapping_sub(s.expected_prior);
        s.expected_prior = expected;
        let received_interval = s.received.wrapping_sub(s.received_prior);
        s.received_prior = s.received;
        let lost_interval = i64::from(expected_interval) - i64::from(received_interval);
        let fraction_lost = if expected_interval == 0 || lost_interval <= 0 {
            0
        } else {
            ((lost_interval << 8) / i64::from(expected_interval)).min(255) as u8
        };
        let cumulative_lost = s.cumulative_lost().clamp(-0x80_0000, 0x7F_FFFF) as i32;
        let (lsr, dlsr) = match self.last_sr {
            Some((lsr, at)) => {
                let d = now.saturating_duration_since(at);
                (lsr, dlsr_units(d))
            }
            None => (0, 0),
        };
        Some(ReportBlock {
            ssrc: s.ssrc,
            fraction_lost,
            cumulative_lost,
            highest_seq: s.extended_max(),
            jitter: s.jitter.min(f64::from(u32::MAX)) as u32,
            lsr,
            dlsr,
        })
    }
}

/// DLSR is expressed in units of 1/65536 s.
fn dlsr_units(d: Duration) -> u32 {
    let units = d.as_nanos().saturating_mul(65536) / 1_000_000_000;
    u32::try_from(units).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS20: Duration = Duration::from_millis(20);

    /// Feeds packets `(seq, ts)` arriving every 20 ms.
    fn feed(st: &mut RxStats, t0: Instant, ssrc: u32, pkts: &[(u16, u32)]) -> Vec<SeqVerdict> {
        pkts.iter()
            .enumerate()
            .map(|(i, &(seq, ts))| st.on_packet(t0 + MS20 * i as u32, ssrc, seq, ts))
            .collect()
    }

    #[test]
    fn probation_then_in_order_no_loss_no_jitter() {
        let t0 = Instant::now();
        let mut st = RxStats::new(8000);
        let pkts: Vec<_> = (0..50u16)
            .map(|i| (100 + i, 1000 + 160 * u32::from(i)))
            .collect();
        let v = feed(&mut st, t0, 1, &pkts);
        assert_eq!(v[0], SeqVerdict::Probation);
        assert!(v[1..].iter().all(|&x| x == SeqVerdict::Valid));
        let s = st.snapshot();
        assert_eq!(s.lost, 0);
        assert_eq!(s.received, 49); // the first probation packet is not counted (A.1)
        assert!(s.jitter < 0.001, "{}", s.jitter);
        let rb = st.report_block(t0 + Duration::from_secs(1)).unwrap();
        assert_eq!(rb.fraction_lost, 0);
        assert_eq!(rb.cumulative_lost, 0);
        assert_eq!(rb.highest_seq, 149);
        assert_eq!(rb.lsr, 0);
    }

    #[test]
    fn loss_and_fraction_per_interval() {
        let t0 = Instant::now();
        let mut st = RxStats::new(8000);
        // 0..=99 with every 4th packet after the first ten missing.
        let pkts: Vec<_> = (0..100u16)
            .filter(|i| *i < 10 || i % 4 != 0)
            .map(|i| (i, 160 * u32::from(i)))
            .collect();
        feed(&mut st, t0, 9, &pkts);
        let rb = st.report_block(t0).unwrap();
        // Expected 1..=99 (base after probation is 1) = 99, lost 22.
        assert_eq!(rb.cumulative_lost, 22);
        assert_eq!(rb.fraction_lost, ((22i64 << 8) / 99) as u8);
        // Next interval with no loss: fraction 0, cumulative unchanged.
        let more: Vec<_> = (100..120u16).map(|i| (i, 160 * u32::from(i))).collect();
        feed(&mut st, t0 + Duration::from_secs(2), 9, &more);
        let rb = st.report_block(t0).unwrap();
        assert_eq!(rb.fraction_lost, 0);
        assert_eq!(rb.cumulative_lost, 22);
    }

    #[test]
    fn reordering_is_not_loss() {
        let t0 = Instant::now();
        let mut st = RxStats::new(8000);
        let order = [0u16, 1, 2, 4, 3, 5, 7, 6, 8, 9];
        let pkts: Vec<_> = order.iter().map(|&i| (i, 160 * u32::from(i))).collect();
        let v = feed(&mut st, t0, 1, &pkts);
        assert!(v[1..].iter().all(|&x| x == SeqVerdict::Valid));
        let s = st.snapshot();
        assert_eq!(s.lost, 0);
        assert_eq!(s.extended_max_seq, 9);
        // Out-of-order arrival relative to timestamps produces some jitter.
        assert!(s.jitter > 0.0);
    }

    #[test]
    fn wrap_around_counts_cycles() {
        let t0 = Instant::now();
        let mut st = RxStats::new(8000);
        let pkts: Vec<_> = (0..20u16)
            .map(|i| {
                let ts = (u32::MAX - 1000).wrapping_add(160 * u32::from(i));
                (65530u16.wrapping_add(i), ts)
            })
            .collect();
        feed(&mut st, t0, 1, &pkts);
        let s = st.snapshot();
        assert_eq!(s.extended_max_seq, (1 << 16) + 13);
        assert_eq!(s.lost, 0);
        assert!(
            s.jitter < 0.001,
            "timestamp wrap must not look like jitter: {}",
            s.jitter
        );
    }

    #[test]
    fn big_jump_needs_confirmation_then_restarts() {
        let t0 = Instant::now();
        let mut st = RxStats::new(8000);
        let pkts: Vec<_> = (0..10u16).map(|i| (i, 160 * u32::from(i))).collect();
        feed(&mut st, t0, 1, &pkts);
        assert_eq!(st.on_packet(t0, 1, 30000, 0), SeqVerdict::BadJump);
        assert_eq!(st.on_packet(t0, 1, 10, 1600), SeqVerdict::Valid);
        // A confirmed jump: 40000 then 40001.
        assert_eq!(st.on_packet(t0, 1, 40000, 0), SeqVerdict::BadJump);
        assert_eq!(st.on_packet(t0, 1, 40001, 160), SeqVerdict::Valid);
        let s = st.snapshot();
        assert_eq!(s.bad_jumps, 2);
        assert_eq!(s.extended_max_seq, 40001);
        assert_eq!(s.lost, 0);
    }

    #[test]
    fn ssrc_change_restarts() {
        let t0 = Instant::now();
        let mut st = RxStats::new(8000);
        let a: Vec<_> = (0..10u16).map(|i| (i, 160 * u32::from(i))).collect();
        feed(&mut st, t0, 1, &a);
        let b: Vec<_> = (5000..5010u16)
            .map(|i| (i, 77 + 160 * u32::from(i)))
            .collect();
        let v = feed(&mut st, t0 + Duration::from_secs(1), 2, &b);
        assert_eq!(v[0], SeqVerdict::Probation);
        let s = st.snapshot();
        assert_eq!(s.ssrc, Some(2));
        assert_eq!(s.ssrc_changes, 1);
        assert_eq!(s.lost, 0);
        assert_eq!(s.received, 9);
    }

    #[test]
    fn jitter_tracks_arrival_variation() {
        let t0 = Instant::now();
        let mut st = RxStats::new(8000);
        // Sent every 20 ms, arrivals alternate +0 / +10 ms.
        for i in 0..400u32 {
            let extra = if i % 2 == 1 {
                Duration::from_millis(10)
            } else {
                Duration::ZERO
            };
            st.on_packet(t0 + MS20 * i + extra, 3, i as u16, 160 * i);
        }
        let s = st.snapshot();
        // |D| is 80 units every packet, so the estimate converges to 80 (10 ms).
        assert!((s.jitter - 80.0).abs() < 1.0, "{}", s.jitter);
        assert!((s.jitter_ms - 10.0).abs() < 0.2);
    }

    #[test]
    fn lsr_dlsr() {
        let t0 = Instant::now();
        let mut st = RxStats::new(8000);
        feed(&mut st, t0, 1, &[(1, 0), (2, 160), (3, 320)]);
        st.on_sender_report(t0, 0x1234_5678_9ABC_DEF0);
        let rb = st.report_block(t0 + Duration::from_millis(500)).unwrap();
        assert_eq!(rb.lsr, 0x5678_9ABC);
        assert_eq!(rb.dlsr, 32768);
    }
}
