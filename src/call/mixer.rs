//! The mixed track of a two-party call: both legs' audio as one stereo Opus track (left: the
//! caller, right: the callee) in the call's own stream, the stream's first track. A recorder
//! therefore writes a stereo file with one channel per leg, and players and RTMP (which
//! downmix) hear both voices.
//!
//! [`StereoMix`] is the sans-IO part (samples in per leg, 20 ms stereo Opus frames out);
//! [`spawn`] runs it as a reader of the stream that publishes every 20 ms, while someone
//! besides the gateway's own readers (the mixer, the bridge) follows the stream: a call
//! nobody records, plays or pushes costs no decoding and no Opus encoding.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::media::transcode::{AudioCodec, PcmDecoder, TranscodeError};
use crate::registry::{
    Leg, MediaUnit, Publisher, ReaderEvent, Registry, RegistryError, TrackId, TrackKind, TrackSpec,
};

/// The mix runs at 8 kHz: the legs are telephone audio, and Opus encodes 8 kHz input
/// (narrowband) at a fraction of the cost of 48 kHz. The RTP clock stays 48 kHz (RFC 7587).
const RATE: u32 = 8000;
/// 20 ms at the mixing rate.
const FRAME: usize = 160;
/// 20 ms on the Opus RTP clock.
const FRAME_TS: u32 = 960;
const FRAME_TIME: Duration = Duration::from_millis(20);
/// How often an idle mixer (nobody to mix for) looks whether someone came.
const IDLE_CHECK: Duration = Duration::from_millis(250);
/// Samples kept per leg beyond one frame: a burst from a leg adds at most this delay.
const MAX_BACKLOG: usize = 3 * FRAME;
/// The gateway's own readers of a two-party call's stream: they do not need the mix.
const OWN_READERS: &[&str] = &[READER_KIND, super::bridge::READER_KIND];
/// The mixer's reader kind.
const READER_KIND: &str = "mixer";
/// The payload type announced for the mixed track.
pub(super) const MIXED_PT: u8 = 111;

/// Two legs' samples to 20 ms stereo Opus frames.
pub struct StereoMix {
    left: Vec<i16>,
    right: Vec<i16>,
    encoder: ::opus::Encoder,
    interleaved: Vec<i16>,
    out: Vec<u8>,
}

impl StereoMix {
    pub fn new() -> Result<Self, TranscodeError> {
        let mut encoder =
            ::opus::Encoder::new(RATE, ::opus::Channels::Stereo, ::opus::Application::Voip)?;
        encoder.set_bitrate(::opus::Bitrate::Bits(32000))?;
        encoder.set_complexity(5)?;
        Ok(Self {
            left: Vec::new(),
            right: Vec::new(),
            encoder,
            interleaved: Vec::with_capacity(2 * FRAME),
            out: vec![0; 1500],
        })
    }

    /// 8 kHz samples from one leg (the caller goes left, anything else right).
    pub fn push(&mut self, leg: Leg, pcm: &[i16]) {
        let fifo = if leg == Leg::Caller {
            &mut self.left
        } else {
            &mut self.right
        };
        fifo.extend_from_slice(pcm);
        if fifo.len() > MAX_BACKLOG {
            let excess = fifo.len() - MAX_BACKLOG;
            fifo.drain(..excess);
        }
    }

    /// Forgets what is buffered (the mix stopped; it starts again from now).
    pub fn clear(&mut self) {
        self.left.clear();
        self.right.clear();
    }

    /// One 20 ms frame, or None when neither leg has anything (the track then has a gap,
    /// which readers fill with silence).
    pub fn tick(&mut self) -> Result<Option<Bytes>, TranscodeError> {
        if self.left.is_empty() && self.right.is_empty() {
            return Ok(None);
        }
        self.interleaved.clear();
        for i in 0..FRAME {
            self.interleaved
                .push(self.left.get(i).copied().unwrap_or(0));
            self.interleaved
                .push(self.right.get(i).copied().unwrap_or(0));
        }
        let take_l = self.left.len().min(FRAME);
        self.left.drain(..take_l);
        let take_r = self.right.len().min(FRAME);
        self.right.drain(..take_r);
        let n = self.encoder.encode(&self.interleaved, &mut self.out)?;
        Ok(Some(Bytes::copy_from_slice(&self.out[..n])))
    }
}

/// The mixed track's description.
pub(super) fn track_spec() -> TrackSpec {
    TrackSpec {
        kind: TrackKind::Audio,
        leg: Leg::Mixed,
        codec: "opus".into(),
        clock_rate: 48000,
        channels: 2,
        payload_type: MIXED_PT,
        fmtp: Some("minptime=10;useinbandfec=1;stereo=1;sprop-stereo=1".into()),
    }
}

/// Adds the mixed track to `publisher`'s stream and starts the mixer on the current runtime.
/// It ends with the stream.
pub(super) fn spawn(
    registry: &Registry,
    publisher: Arc<Publisher>,
    call_id: &str,
) -> Result<tokio::task::JoinHandle<()>, RegistryError> {
    let track = publisher.add_track(track_spec())?;
    let registry = registry.clone();
    let mut mix = match StereoMix::new() {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(%call_id, error = %e, "mixer: no Opus encoder; no mixed track");
            return Ok(tokio::spawn(async {}));
        }
    };
    let span = tracing::info_span!("mixer", call_id = %call_id);
    Ok(tokio::spawn(tracing::Instrument::instrument(
        async move {
            // Source tracks: (leg, payload type, decoder).
            let mut sources: HashMap<TrackId, (Leg, u8, PcmDecoder)> = HashMap::new();
            let mut pcm = Vec::with_capacity(6 * FRAME);
            let mut tick = tokio::time::interval(FRAME_TIME);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let ssrc: u32 = rand::random();
            let (mut seq, mut ts): (u16, u32) = (rand::random(), rand::random());
            let mut stopped = std::time::Instant::now();
            loop {
                // Nobody but our own readers follows the stream: no subscription (the legs'
                // packets are not even queued to us); look again every IDLE_CHECK.
                if !publisher.has_readers_besides(OWN_READERS) {
                    tokio::time::sleep(IDLE_CHECK).await;
                    continue;
                }
                let Ok(mut reader) = registry.subscribe(publisher.name(), READER_KIND) else {
                    break;
                };
                tracing::debug!("mixing");
                // The RTP clock went on while we did not mix: a new talkspurt after the gap.
                let idle_frames = stopped.elapsed().as_millis() / FRAME_TIME.as_millis();
                ts = ts.wrapping_add((idle_frames as u32).wrapping_mul(FRAME_TS));
                let mut first = true;
                sources.clear();
                mix.clear();
                let ended = loop {
                    tokio::select! {
                        ev = reader.recv() => match ev {
                            Some(ReaderEvent::TrackChanged(id, spec)) => {
                                if id == track || spec.kind != TrackKind::Audio || spec.leg == Leg::Mixed {
                                    continue;
                                }
                                match AudioCodec::from_encoding(&spec.codec).map(|c| PcmDecoder::new(c, RATE)) {
                                    Some(Ok(d)) => {
                                        sources.insert(id, (spec.leg, spec.payload_type, d));
                                    }
                                    _ => {
                                        tracing::warn!(codec = %spec.codec, "mixer: codec not decodable; leg not mixed");
                                        sources.remove(&id);
                                    }
                                }
                            }
                            Some(ReaderEvent::Media(u)) => {
                                let Some((leg, pt, dec)) = sources.get_mut(&u.track) else { continue };
                                if u.payload_type != *pt {
                                    continue;
                                }
                                pcm.clear();
                                if dec.decode(&u.payload, &mut pcm).is_ok() {
                                    mix.push(*leg, &pcm);
                                }
                            }
                            Some(ReaderEvent::Ended(_)) | None => break true,
                        },
                        _ = tick.tick() => {
                            if !publisher.has_readers_besides(OWN_READERS) {
                                break false;
                            }
                            match mix.tick() {
                                Ok(Some(payload)) => {
                                    publisher.publish(MediaUnit {
                                        track,
                                        payload_type: MIXED_PT,
                                        seq,
                                        timestamp: ts,
                                        marker: std::mem::take(&mut first),
                                        ssrc,
                                        payload,
                                        arrival: std::time::Instant::now(),
                                    });
                                    seq = seq.wrapping_add(1);
                                }
                                Ok(None) => first = true,
                                Err(e) => tracing::debug!(error = %e, "mixer: frame not encoded"),
                            }
                            ts = ts.wrapping_add(FRAME_TS);
                        }
                    }
                };
                if ended {
                    break;
                }
                tracing::debug!("mixing stopped: nobody follows the stream");
                stopped = std::time::Instant::now();
            }
            tracing::debug!("mixer ended");
        },
        span,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_leg_gets_its_own_channel() {
        let mut mix = StereoMix::new().unwrap();
        let mut dec = ::opus::Decoder::new(8000, ::opus::Channels::Stereo).unwrap();
        let tone = |hz: f64, n: usize, phase: usize| -> Vec<i16> {
            (0..n)
                .map(|i| {
                    (8000.0 * (2.0 * std::f64::consts::PI * hz * (i + phase) as f64 / 8000.0).sin())
                        as i16
                })
                .collect()
        };
        let (mut left, mut right) = (Vec::new(), Vec::new());
        for f in 0..50 {
            mix.push(Leg::Caller, &tone(440.0, FRAME, f * FRAME));
            mix.push(Leg::Callee, &tone(1000.0, FRAME, f * FRAME));
            let frame = mix.tick().unwrap().unwrap();
            let mut out = vec![0i16; 2 * FRAME];
            let n = dec.decode(&frame, &mut out, false).unwrap();
            for i in 0..n {
                left.push(out[2 * i]);
                right.push(out[2 * i + 1]);
            }
        }
        let share = |pcm: &[i16], hz: f64| {
            let w = 2.0 * std::f64::consts::PI * hz / 8000.0;
            let (mut s1, mut s2, mut total) = (0f64, 0f64, 0f64);
            for x in pcm {
                let x = f64::from(*x);
                total += x * x;
                let s = x + 2.0 * w.cos() * s1 - s2;
                s2 = s1;
                s1 = s;
            }
            (s1 * s1 + s2 * s2 - 2.0 * w.cos() * s1 * s2) * 2.0 / (pcm.len() as f64 * total)
        };
        let (l, r) = (&left[1600..], &right[1600..]);
        assert!(share(l, 440.0) > 0.8, "left 440: {}", share(l, 440.0));
        assert!(share(r, 1000.0) > 0.8, "right 1k: {}", share(r, 1000.0));
        assert!(
            share(l, 1000.0) < 0.05 && share(r, 440.0) < 0.05,
            "no crosstalk"
        );
    }

    #[test]
    fn nothing_in_means_no_frame_and_a_lone_leg_is_padded() {
        let mut mix = StereoMix::new().unwrap();
        assert!(mix.tick().unwrap().is_none());
        mix.push(Leg::Callee, &[100; 10]);
        assert!(mix.tick().unwrap().is_some());
        assert!(mix.tick().unwrap().is_none());
        mix.push(Leg::Caller, &vec![1; 10 * FRAME]);
        assert!(mix.left.len() <= MAX_BACKLOG);
    }
}
