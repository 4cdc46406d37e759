//! Maps one track's RTP timestamps onto the recording's media time.
//!
//! Policy (issue 3, "gaps"): media time follows the RTP timestamp (unwrapped across the 32-bit
//! wrap), anchored to the wall-clock arrival of the track's first packet, so tracks that start
//! late start late in the file and a pause in sending (loss, hold with continuous timestamps)
//! becomes a gap of the right length. When the RTP timestamp and the arrival clock disagree by
//! more than [`RESYNC_MS`] (a new SSRC, a sender that restarts its timestamps after hold, a
//! jump), the track re-anchors to arrival time: the file then follows the wall clock, so its
//! duration matches the call's. Sans-IO: arrival offsets are inputs.

/// Disagreement between RTP time and arrival time that triggers a re-anchor.
pub const RESYNC_MS: i64 = 1000;

#[derive(Debug, Clone)]
pub struct Timeline {
    clock_rate: i64,
    ssrc: Option<u32>,
    last_ts: u32,
    ext_last: i64,
    base_ext: i64,
    base_pos: i64,
    /// Times the track re-anchored to arrival time.
    pub resyncs: u64,
}

impl Timeline {
    pub fn new(clock_rate: u32) -> Self {
        Self {
            clock_rate: i64::from(clock_rate.max(1)),
            ssrc: None,
            last_ts: 0,
            ext_last: 0,
            base_ext: 0,
            base_pos: 0,
            resyncs: 0,
        }
    }

    pub fn clock_rate(&self) -> u32 {
        u32::try_from(self.clock_rate).unwrap_or(u32::MAX)
    }

    /// Media position (in this track's clock units, from the recording's start) of a packet
    /// with RTP `timestamp` from `ssrc` that arrived `arrival_us` microseconds after the start.
    pub fn position(&mut self, ssrc: u32, timestamp: u32, arrival_us: i64) -> i64 {
        let arrival_pos = arrival_us.saturating_mul(self.clock_rate) / 1_000_000;
        if self.ssrc != Some(ssrc) {
            if self.ssrc.is_some() {
                self.resyncs += 1;
            }
            self.ssrc = Some(ssrc);
            self.last_ts = timestamp;
            self.ext_last = 0;
            self.base_ext = 0;
            self.base_pos = arrival_pos;
            return arrival_pos;
        }
        let delta = i64::from(timestamp.wrapping_sub(self.last_ts) as i32);
        self.last_ts = timestamp;
        self.ext_last += delta;
        let pos = self.base_pos + (self.ext_last - self.base_ext);
        if (pos - arrival_pos).abs() > RESYNC_MS * self.clock_rate / 1000 {
            self.resyncs += 1;
            self.base_ext = self.ext_last;
            self.base_pos = arrival_pos;
            return arrival_pos;
        }
        pos
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_rtp_across_wrap_and_anchors_at_first_arrival() {
        let mut t = Timeline::new(8000);
        let ts0 = u32::MAX - 800;
        assert_eq!(t.position(1, ts0, 500_000), 4000);
        assert_eq!(t.position(1, ts0.wrapping_add(1600), 700_000), 5600);
        // A little jitter on arrival does not move media time.
        assert_eq!(t.position(1, ts0.wrapping_add(1760), 950_000), 5760);
        assert_eq!(t.resyncs, 0);
    }

    #[test]
    fn resyncs_on_new_ssrc_and_on_timestamp_jumps() {
        let mut t = Timeline::new(8000);
        t.position(1, 1000, 0);
        // Hold for 10 s, sender restarts its timestamps: arrival wins.
        assert_eq!(t.position(1, 1160, 10_000_000), 80_000);
        assert_eq!(t.position(1, 1320, 10_020_000), 80_160);
        assert_eq!(t.position(2, 7, 11_000_000), 88_000);
        assert_eq!(t.resyncs, 2);
    }
}
