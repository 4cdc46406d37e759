//! What the gateway plays into one leg: any number of sources (a voice agent's audio, an
//! injected sound file or stream) mixed by [`Mix`] on one 20 ms clock, encoded to the leg's
//! codec and sent through its RTP leg's [`Injector`]. One task per leg while something
//! plays, on a media thread; it ends when its last source has finished or the leg's media
//! stops. Mixed at 8 kHz (G.711's rate; Opus legs get it resampled).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;

use crate::media::mix::{LiveBuffer, Mix, PlaySource};
use crate::media::transcode::{AudioCodec, PcmEncoder};
use crate::rtp::driver::{Injector, LegError};

/// The rate sources are asked for.
pub const MIX_RATE: u32 = 8000;

pub(super) struct PlayState {
    mix: Mix,
    /// The task runs: sources added now will be played. False once it ended.
    alive: bool,
}

/// The player of one leg (shared by the leg and its task).
pub(super) type LegPlayer = Arc<Mutex<PlayState>>;

/// A source playing into a leg; [`PlayHandle::stop`] ends it (dropping the handle does not).
#[derive(Clone)]
pub struct PlayHandle {
    player: LegPlayer,
    id: u64,
}

impl std::fmt::Debug for PlayHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlayHandle").field("id", &self.id).finish()
    }
}

impl PlayHandle {
    /// Adds another source to the same player; false when it has ended meanwhile.
    pub(super) fn add(&self, source: Box<dyn PlaySource>) -> bool {
        let mut st = self.player.lock();
        if st.alive {
            st.mix.add(source);
        }
        st.alive
    }

    pub fn stop(&self) {
        self.player.lock().mix.remove(self.id);
    }

    /// Still playing: not finished, not stopped, the leg's media still there.
    pub fn is_playing(&self) -> bool {
        let st = self.player.lock();
        st.alive && st.mix.contains(self.id)
    }
}

/// Adds `source` to the leg's player, starting one (a task on `rt`) when none runs.
pub(super) fn play(
    slot: &mut Option<LegPlayer>,
    rt: &tokio::runtime::Handle,
    to: Injector,
    codec: AudioCodec,
    ptime_ms: u32,
    source: Box<dyn PlaySource>,
) -> PlayHandle {
    if let Some(p) = slot.as_ref() {
        let mut st = p.lock();
        if st.alive {
            let id = st.mix.add(source);
            return PlayHandle {
                player: p.clone(),
                id,
            };
        }
    }
    let ptime = if ptime_ms == 0 { 20 } else { ptime_ms };
    let mut mix = Mix::new(MIX_RATE, ptime);
    let id = mix.add(source);
    let player = Arc::new(Mutex::new(PlayState { mix, alive: true }));
    *slot = Some(player.clone());
    rt.spawn(run(player.clone(), to, codec, ptime));
    PlayHandle { player, id }
}

async fn run(player: LegPlayer, to: Injector, codec: AudioCodec, ptime: u32) {
    let Ok(mut encoder) = PcmEncoder::new(MIX_RATE, codec, ptime) else {
        tracing::warn!(?codec, "leg player: no encoder for the leg's codec");
        player.lock().alive = false;
        return;
    };
    // Burst: a tick that comes late (a busy media thread) is made up at once, so the leg
    // gets its 50 packets a second and queued audio (an agent's) does not fall behind.
    let mut tick = tokio::time::interval(Duration::from_millis(u64::from(ptime)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let (mut frame, mut out): (Vec<i16>, Vec<Bytes>) = (Vec::new(), Vec::new());
    loop {
        tick.tick().await;
        frame.clear();
        let had = {
            let mut st = player.lock();
            let had = st.mix.tick(&mut frame);
            if st.mix.is_empty() {
                // Decided under the lock: a source added from now on starts a new task.
                st.alive = false;
                st.mix.clear();
            }
            had
        };
        if had {
            out.clear();
            if encoder.push(&frame, &mut out).is_ok() {
                for p in out.drain(..) {
                    if let Err(LegError::Stopped) = to.inject(p) {
                        let mut st = player.lock();
                        st.alive = false;
                        st.mix.clear();
                        tracing::debug!("leg player: the leg's media stopped");
                        return;
                    }
                }
            }
        }
        if !player.lock().alive {
            return;
        }
    }
}

/// The other party's audio of a bridged call while something else plays into this leg: the
/// bridge decodes into it instead of sending straight to the leg, and the player mixes it.
/// It starts once 20 ms wait (the bridge's and the player's clocks differ) and keeps 100 ms.
pub(super) type Feed = LiveBuffer;

pub(super) fn new_feed() -> Arc<Mutex<Feed>> {
    Arc::new(Mutex::new(LiveBuffer::new(
        MIX_RATE as usize / 50,
        MIX_RATE as usize / 10,
    )))
}

/// The player's side of a [`Feed`]; dropping it (the player ended) detaches the feed.
pub(super) struct FeedSource(pub(super) Arc<Mutex<Feed>>);

impl PlaySource for FeedSource {
    fn frame(&mut self, _rate: u32, n: usize, out: &mut Vec<i16>) -> Option<bool> {
        self.0.lock().take(n, out)
    }

    fn background(&self) -> bool {
        true
    }
}

impl Drop for FeedSource {
    fn drop(&mut self) {
        self.0.lock().detached = true;
    }
}
