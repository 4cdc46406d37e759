//! One leg track's RTP payloads to the stream's 20 ms frames, sans-IO: decoded (and resampled)
//! to the wire rate, re-framed whatever the sender's packet time, numbered per track, and
//! stamped with their media time. Time comes from the RTP timestamps, not from arrival, so
//! jitter does not move frames; a gap (lost packets, a sender that pauses) up to
//! [`MAX_GAP_MS`] is filled with silence so the server's timeline matches the call's; beyond
//! that (a new source, a long hold) the track re-anchors on the arrival time.

use super::wire::{encode_audio, Outgoing, TrackLabel};
use super::WireAudio;
use crate::media::transcode::{AudioCodec, PcmDecoder, TranscodeError};

/// Frame length on the wire.
pub const FRAME_MS: u64 = 20;
/// Gaps up to this are filled with silence; longer ones re-anchor the track.
pub const MAX_GAP_MS: u64 = 1000;

pub struct TrackFramer {
    label: TrackLabel,
    audio: WireAudio,
    clock_rate: u32,
    decoder: PcmDecoder,
    /// RTP timestamp of the anchor and its stream time (ms).
    anchor: Option<(u32, u64)>,
    /// Samples (at the wire rate) passed to frames or pending since the anchor.
    position: u64,
    pending: Vec<i16>,
    decoded: Vec<i16>,
    chunk: u64,
}

impl std::fmt::Debug for TrackFramer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrackFramer")
            .field("label", &self.label)
            .field("chunk", &self.chunk)
            .finish()
    }
}

impl TrackFramer {
    pub fn new(
        label: TrackLabel,
        codec: AudioCodec,
        clock_rate: u32,
        audio: WireAudio,
    ) -> Result<Self, TranscodeError> {
        Ok(Self {
            label,
            audio,
            clock_rate: clock_rate.max(1),
            decoder: PcmDecoder::new(codec, audio.rate)?,
            anchor: None,
            position: 0,
            pending: Vec::new(),
            decoded: Vec::new(),
            chunk: 0,
        })
    }

    fn frame_samples(&self) -> usize {
        (u64::from(self.audio.rate) * FRAME_MS / 1000) as usize
    }

    /// One payload with its RTP timestamp, arrived `now_ms` after the stream started;
    /// appends the frames it completes.
    pub fn push(
        &mut self,
        payload: &[u8],
        rtp_ts: u32,
        now_ms: u64,
        out: &mut Vec<Outgoing>,
    ) -> Result<(), TranscodeError> {
        self.decoded.clear();
        self.decoder.decode(payload, &mut self.decoded)?;
        if self.decoded.is_empty() {
            return Ok(());
        }
        let rate = u64::from(self.audio.rate);
        match self.anchor {
            None => self.reanchor(rtp_ts, now_ms),
            Some((ts0, _)) => {
                // Where this payload belongs, in samples at the wire rate since the anchor.
                let ticks = u64::from(rtp_ts.wrapping_sub(ts0));
                let at = ticks * rate / u64::from(self.clock_rate);
                let have = self.position + self.pending.len() as u64;
                let max_gap = rate * MAX_GAP_MS / 1000;
                if at > have + max_gap || ticks > u64::from(u32::MAX / 2) {
                    // Far ahead, or behind by wrapping: a new timeline. Flush what waits.
                    self.flush_partial(out);
                    self.reanchor(rtp_ts, now_ms);
                } else if at > have + self.frame_samples() as u64 / 2 {
                    self.pending
                        .extend(std::iter::repeat_n(0, (at - have) as usize));
                }
            }
        }
        self.pending.extend_from_slice(&self.decoded);
        self.drain(out);
        Ok(())
    }

    fn reanchor(&mut self, rtp_ts: u32, now_ms: u64) {
        // The frame grid of the stream: anchors fall on 20 ms boundaries of stream time.
        let t = now_ms / FRAME_MS * FRAME_MS;
        self.anchor = Some((rtp_ts, t));
        self.position = 0;
        self.pending.clear();
    }

    fn drain(&mut self, out: &mut Vec<Outgoing>) {
        let n = self.frame_samples();
        let mut used = 0;
        while self.pending.len() - used >= n {
            self.chunk += 1;
            out.push(self.media(used, n));
            used += n;
            self.position += n as u64;
        }
        self.pending.drain(..used);
    }

    /// A part frame waiting at a re-anchor goes out padded with silence.
    fn flush_partial(&mut self, out: &mut Vec<Outgoing>) {
        if self.pending.is_empty() {
            return;
        }
        let n = self.frame_samples();
        self.pending.resize(n, 0);
        self.drain(out);
    }

    /// The frame of `n` pending samples from `from`, at the current position and chunk.
    fn media(&self, from: usize, n: usize) -> Outgoing {
        let pcm = &self.pending[from..from + n];
        let (_, t0) = self.anchor.unwrap_or((0, 0));
        let timestamp = t0 + self.position * 1000 / u64::from(self.audio.rate);
        let mut audio = Vec::with_capacity(pcm.len() * 2);
        encode_audio(self.audio, pcm, &mut audio);
        Outgoing::Media {
            track: self.label,
            chunk: self.chunk,
            timestamp,
            audio,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::WireCodec;
    use super::*;

    const ULAW8K: WireAudio = WireAudio {
        codec: WireCodec::Pcmu,
        rate: 8000,
    };

    fn media(o: &Outgoing) -> (u64, u64, usize) {
        match o {
            Outgoing::Media {
                chunk,
                timestamp,
                audio,
                ..
            } => (*chunk, *timestamp, audio.len()),
            _ => panic!("not media"),
        }
    }

    #[test]
    fn thirty_ms_packets_become_twenty_ms_frames_on_the_rtp_clock() {
        let mut f = TrackFramer::new(TrackLabel::Inbound, AudioCodec::Pcmu, 8000, ULAW8K).unwrap();
        let mut out = Vec::new();
        // Arrival jitter does not matter: 30 ms packets, arrival times scattered.
        for (i, now) in [45u64, 90, 95, 160].iter().enumerate() {
            f.push(&[0xff; 240], 1000 + 240 * i as u32, *now, &mut out)
                .unwrap();
        }
        let frames: Vec<_> = out.iter().map(media).collect();
        assert_eq!(
            frames,
            vec![
                (1, 40, 160),
                (2, 60, 160),
                (3, 80, 160),
                (4, 100, 160),
                (5, 120, 160),
                (6, 140, 160)
            ]
        );
    }

    #[test]
    fn a_lost_packet_is_silence_and_a_long_gap_reanchors() {
        let mut f = TrackFramer::new(TrackLabel::Inbound, AudioCodec::Pcmu, 8000, ULAW8K).unwrap();
        let mut out = Vec::new();
        f.push(&[0x00; 160], 0, 0, &mut out).unwrap();
        // The next packet (ts 160) was lost.
        f.push(&[0x00; 160], 320, 40, &mut out).unwrap();
        let frames: Vec<_> = out.iter().map(media).collect();
        assert_eq!(frames, vec![(1, 0, 160), (2, 20, 160), (3, 40, 160)]);
        // The filled frame is μ-law silence.
        match &out[1] {
            Outgoing::Media { audio, .. } => assert!(audio.iter().all(|b| *b == 0xff)),
            _ => unreachable!(),
        }
        out.clear();
        // Five seconds later on the RTP clock (a hold): a new anchor at arrival time.
        f.push(&[0x00; 160], 320 + 40_000, 5_013, &mut out).unwrap();
        assert_eq!(
            out.iter().map(media).collect::<Vec<_>>(),
            vec![(4, 5000, 160)]
        );
    }

    #[test]
    fn pcma_is_resampled_to_sixteen_khz_l16() {
        let l16 = WireAudio {
            codec: WireCodec::L16,
            rate: 16000,
        };
        let mut f = TrackFramer::new(TrackLabel::Outbound, AudioCodec::Pcma, 8000, l16).unwrap();
        let mut out = Vec::new();
        for i in 0..10u32 {
            f.push(&[0xd5; 160], i * 160, u64::from(i) * 20, &mut out)
                .unwrap();
        }
        assert!(out.len() >= 9, "{}", out.len());
        assert!(out.iter().all(|o| media(o).2 == 640));
    }
}
