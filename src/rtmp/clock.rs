//! RTP timestamps → milliseconds on a push's timeline, one [`TrackClock`] per track.
//!
//! RTP timestamps are 32-bit, start at random values, wrap, and say nothing during a hold
//! or after a re-INVITE that changes the SSRC. The clock extends them to 64 bits across
//! wrap-around, anchors each track to the arrival time of its first packet (so audio and
//! video, whose RTP clocks are unrelated, share one timeline), and re-anchors to arrival
//! time when the RTP clock and the wall clock disagree by more than [`RESYNC_MS`] (a hold,
//! a new SSRC, a sender that jumped). The result never goes backwards.
//!
//! Pure: arrival time is an input (milliseconds since the push's epoch).

/// RTP and arrival time may drift this far apart before the track is re-anchored.
pub const RESYNC_MS: i64 = 1000;

#[derive(Debug, Clone)]
pub struct TrackClock {
    rate: i64,
    ssrc: Option<u32>,
    last_rtp: u32,
    ext: i64,
    anchor_ext: i64,
    anchor_ms: i64,
    last_ms: Option<i64>,
    /// How often the track was re-anchored (holds, SSRC changes, jumps).
    pub resyncs: u64,
}

impl TrackClock {
    /// `clock_rate` in Hz (8000 for G.711, 90000 for video; 0 is treated as 8000).
    pub fn new(clock_rate: u32) -> Self {
        Self {
            rate: i64::from(if clock_rate == 0 { 8000 } else { clock_rate }),
            ssrc: None,
            last_rtp: 0,
            ext: 0,
            anchor_ext: 0,
            anchor_ms: 0,
            last_ms: None,
            resyncs: 0,
        }
    }

    /// The timeline position of a packet with RTP timestamp `rtp_ts` from `ssrc` that arrived
    /// `arrival_ms` after the epoch. Non-decreasing over calls.
    pub fn map(&mut self, ssrc: u32, rtp_ts: u32, arrival_ms: i64) -> i64 {
        let floor = self.last_ms.unwrap_or(i64::MIN);
        let ms = if self.ssrc != Some(ssrc) || self.last_ms.is_none() {
            if self.ssrc.is_some() {
                self.resyncs += 1;
            }
            self.ssrc = Some(ssrc);
            self.anchor(rtp_ts, arrival_ms.max(floor))
        } else {
            // Signed difference: a reordered packet is slightly behind, not 2^32 ahead.
            self.ext += i64::from(rtp_ts.wrapping_sub(self.last_rtp) as i32);
            self.last_rtp = rtp_ts;
            let ms = self.anchor_ms + (self.ext - self.anchor_ext) * 1000 / self.rate;
            if (ms - arrival_ms).abs() > RESYNC_MS {
                self.resyncs += 1;
                self.anchor(rtp_ts, arrival_ms.max(floor))
            } else {
                ms
            }
        };
        let ms = ms.max(floor);
        self.last_ms = Some(ms);
        ms
    }

    fn anchor(&mut self, rtp_ts: u32, ms: i64) -> i64 {
        self.last_rtp = rtp_ts;
        self.ext = i64::from(rtp_ts);
        self.anchor_ext = self.ext;
        self.anchor_ms = ms;
        ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_rtp_time_across_wrap_around() {
        let mut c = TrackClock::new(8000);
        let start = u32::MAX - 160 * 10;
        let mut last = -1;
        for i in 0..100u32 {
            let ts = start.wrapping_add(i * 160);
            // Arrival jitters ±15 ms; the result follows RTP time exactly.
            let arrival = 5000 + i64::from(i) * 20 + if i % 2 == 0 { 15 } else { -15 };
            let ms = c.map(7, ts, arrival);
            assert_eq!(ms, 5015 + i64::from(i) * 20, "packet {i}");
            assert!(ms > last);
            last = ms;
        }
        assert_eq!(c.resyncs, 0);
    }

    #[test]
    fn a_hold_re_anchors_to_arrival_time() {
        let mut c = TrackClock::new(8000);
        assert_eq!(c.map(1, 1000, 0), 0);
        assert_eq!(c.map(1, 1160, 20), 20);
        // 30 s hold: the sender's RTP clock stood still.
        assert_eq!(c.map(1, 1320, 30_020), 30_020);
        assert_eq!(c.map(1, 1480, 30_040), 30_040);
        assert_eq!(c.resyncs, 1);
    }

    #[test]
    fn new_ssrc_and_backwards_jumps_never_go_back_in_time() {
        let mut c = TrackClock::new(90_000);
        assert_eq!(c.map(1, 90_000, 100), 100);
        assert_eq!(c.map(1, 180_000, 1100), 1100);
        // A new SSRC whose packet arrives "earlier" than the last timestamp: clamped.
        let ms = c.map(2, 5, 1050);
        assert_eq!(ms, 1100);
        // A reordered packet slightly behind: clamped, not 2^32 ahead.
        assert_eq!(c.map(2, 3, 1060), 1100);
        assert_eq!(c.map(2, 5 + 9000, 1200), 1200);
    }
}
