//! A live stream of the registry as a source of a leg's player: a reader task decodes one
//! audio track of the stream to the mixer's rate into a [`LiveBuffer`] (playing starts once
//! 40 ms are buffered, at most 200 ms are kept, so the added delay stays bounded), and the
//! player takes 20 ms frames from it. Which track: the stream's mixed track when it has one
//! (else its first audio track), or one party's own track.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::call::play::MIX_RATE;
use crate::media::mix::{LiveBuffer, PlaySource};
use crate::media::transcode::{AudioCodec, PcmDecoder};
use crate::registry::{Leg, ReaderEvent, Registry, RegistryError, TrackKind};

/// A live stream starts playing once this much is buffered, and keeps at most `MAX_BUFFER_MS`.
pub const START_BUFFER_MS: usize = 40;
pub const MAX_BUFFER_MS: usize = 200;

/// Which audio track of the stream plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick {
    /// The mixed track of a two-party call, else the first audio track.
    Mixed,
    /// That party's own audio.
    Party(Leg),
}

/// Stops the reader task at its next event (the source then ends).
#[derive(Debug, Clone, Default)]
pub struct FeedStop(Arc<AtomicBool>);

impl FeedStop {
    pub fn stop(&self) {
        self.0.store(true, Ordering::Release);
    }

    /// Stops it; true when it was not stopped before.
    pub fn swap(&self) -> bool {
        !self.0.swap(true, Ordering::AcqRel)
    }

    pub fn is_stopped(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// Subscribes to `stream` (as reader `kind`) and starts its reader task. The source ends
/// when the stream ends or `FeedStop` is used.
pub fn stream_source(
    registry: &Registry,
    stream: &str,
    pick: Pick,
    kind: &str,
) -> Result<(Box<dyn PlaySource>, FeedStop), RegistryError> {
    let mut reader = registry.subscribe(stream, kind)?;
    let rate = MIX_RATE as usize;
    let buffer = Arc::new(Mutex::new(LiveBuffer::new(
        rate * START_BUFFER_MS / 1000,
        rate * MAX_BUFFER_MS / 1000,
    )));
    let feed = buffer.clone();
    let stop = FeedStop::default();
    let stopped = stop.clone();
    tokio::spawn(async move {
        // The chosen track: its id, payload type, whether it is the mixed one, its decoder.
        let mut chosen: Option<(usize, u8, bool, PcmDecoder)> = None;
        let mut pcm = Vec::new();
        while let Some(ev) = reader.recv().await {
            if stopped.is_stopped() {
                break;
            }
            match ev {
                ReaderEvent::TrackChanged(id, spec) if spec.kind == TrackKind::Audio => {
                    let mixed = spec.leg == Leg::Mixed;
                    let better = match (pick, &chosen) {
                        (Pick::Party(leg), _) => spec.leg == leg,
                        (Pick::Mixed, None) => true,
                        (Pick::Mixed, Some((cid, _, was_mixed, _))) => {
                            *cid == id || (mixed && !was_mixed)
                        }
                    };
                    if better {
                        if let Some(dec) = AudioCodec::from_encoding(&spec.codec)
                            .and_then(|c| PcmDecoder::new(c, MIX_RATE).ok())
                        {
                            chosen = Some((id, spec.payload_type, mixed, dec));
                        }
                    }
                }
                ReaderEvent::Media(u) => {
                    let Some((id, pt, _, dec)) = chosen.as_mut() else {
                        continue;
                    };
                    if u.track != *id || u.payload_type != *pt {
                        continue;
                    }
                    pcm.clear();
                    if dec.decode(&u.payload, &mut pcm).is_ok() {
                        feed.lock().push(&pcm);
                    }
                }
                ReaderEvent::Ended(_) => break,
                _ => {}
            }
        }
        feed.lock().ended = true;
    });
    Ok((Box::new(LiveSource { buffer }), stop))
}

/// The player's side of a stream's [`LiveBuffer`].
struct LiveSource {
    buffer: Arc<Mutex<LiveBuffer>>,
}

impl PlaySource for LiveSource {
    fn frame(&mut self, _rate: u32, n: usize, out: &mut Vec<i16>) -> Option<bool> {
        self.buffer.lock().take(n, out)
    }
}
