//! Music on hold: the samples of `hold_music_file` played in a loop into a leg we hold,
//! encoded to the leg's codec and paced at the ptime by a task on a media thread. It stops
//! when the leg is resumed, or by itself when the leg's RTP stops.

use std::sync::Arc;
use std::time::Duration;

use crate::media::transcode::{AudioCodec, PcmEncoder};
use crate::rtp::driver::{Injector, LegError};

/// Plays `samples` (8 kHz mono) into `to` until aborted or the leg is gone.
pub(super) fn spawn(
    rt: &tokio::runtime::Handle,
    samples: Arc<Vec<i16>>,
    to: Injector,
    codec: AudioCodec,
    ptime_ms: u32,
) -> tokio::task::JoinHandle<()> {
    rt.spawn(async move {
        let ptime = if ptime_ms == 0 { 20 } else { ptime_ms };
        let frame = 8 * ptime as usize;
        let Ok(mut encoder) = PcmEncoder::new(8000, codec, ptime) else {
            tracing::warn!(?codec, "hold music: no encoder for the leg's codec");
            return;
        };
        let mut tick = tokio::time::interval(Duration::from_millis(u64::from(ptime)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let (mut pos, mut pcm, mut out) = (0usize, Vec::new(), Vec::new());
        loop {
            tick.tick().await;
            pcm.clear();
            while pcm.len() < frame {
                let take = (frame - pcm.len()).min(samples.len() - pos);
                pcm.extend_from_slice(&samples[pos..pos + take]);
                pos = (pos + take) % samples.len();
            }
            out.clear();
            if encoder.push(&pcm, &mut out).is_err() {
                continue;
            }
            for p in out.drain(..) {
                if let Err(LegError::Stopped) = to.inject(p) {
                    return;
                }
            }
        }
    })
}
