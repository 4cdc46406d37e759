//! The media bridge of a two-party call: one [`InlineSink`] per direction on the call's
//! stream takes one leg's audio track, transcodes it to the other leg's codec and packet
//! time when they differ, and plays it into the other leg's RTP session. It runs on the
//! publishing leg's media thread, inside `publish`: no task, no queue hop, never waits
//! (a full leg queue is a counted drop). Video goes the same way without transcoding
//! ([`VideoBridgeSink`]); telephone-events are relayed by the call layer.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;

use crate::media::transcode::{AudioCodec, PcmDecoder, Transcoder};
use crate::registry::{InlineSink, Leg, MediaUnit, TrackId, TrackKind, TrackSpec};
use crate::rtp::driver::Injector;

/// The bridge's reader kind in the registry.
pub(super) const READER_KIND: &str = "bridge";

pub(super) struct BridgeSink {
    /// The leg whose audio this direction carries.
    from: Leg,
    to: Injector,
    to_codec: AudioCodec,
    ptime_ms: u32,
    /// Set while the receiving leg is on hold: it hears nothing of the other (or the hold
    /// music) then.
    pub(super) paused: Arc<AtomicBool>,
    /// Set while a media exchange replaces what the receiving leg hears.
    pub(super) muted: Arc<AtomicBool>,
    state: Mutex<State>,
    pub(super) forwarded: AtomicU64,
    pub(super) dropped: AtomicU64,
    /// Set while the receiving leg's player mixes other audio (an injection, an agent): this
    /// direction's audio goes there, decoded, instead of straight into the leg.
    pub(super) mix_into: MixInto,
}

/// One direction of a call's bridge as the call holds it.
pub(super) struct BridgeDirection {
    /// The index of the leg it plays into.
    pub(super) to: usize,
    /// Audio (transcoded, mutable, mixable) or video (relayed).
    pub(super) kind: TrackKind,
    pub(super) paused: Arc<AtomicBool>,
    pub(super) muted: Arc<AtomicBool>,
    pub(super) mix_into: MixInto,
    /// Attached while held.
    pub(super) _sink: crate::registry::SinkHandle,
}

/// Where a bridge direction feeds the receiving leg's player, when it does.
pub(super) type MixInto = Arc<Mutex<Option<Arc<Mutex<super::play::Feed>>>>>;

#[derive(Default)]
struct State {
    /// The source track, its payload type, and the transcoder from its codec.
    source: Option<(TrackId, u8, Option<Transcoder>)>,
    /// The source codec decoded at the player's rate, for mixing.
    decoder: Option<PcmDecoder>,
    pcm: Vec<i16>,
    out: Vec<Bytes>,
}

impl BridgeSink {
    pub(super) fn new(from: Leg, to: Injector, to_codec: AudioCodec, ptime_ms: u32) -> Self {
        Self {
            from,
            to,
            to_codec,
            ptime_ms,
            paused: Arc::new(AtomicBool::new(false)),
            muted: Arc::new(AtomicBool::new(false)),
            state: Mutex::new(State::default()),
            forwarded: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            mix_into: Arc::new(Mutex::new(None)),
        }
    }
}

impl InlineSink for BridgeSink {
    fn on_track(&self, id: TrackId, spec: &TrackSpec) {
        if spec.kind != TrackKind::Audio || spec.leg != self.from {
            return;
        }
        let transcoder = match AudioCodec::from_encoding(&spec.codec) {
            Some(from) => match Transcoder::new(from, self.to_codec, self.ptime_ms) {
                Ok(t) => Some(t),
                Err(e) => {
                    tracing::warn!(error = %e, "bridge: no transcoder; this direction is silent");
                    None
                }
            },
            None => {
                tracing::warn!(codec = %spec.codec, "bridge: codec not transcodable; this direction is silent");
                None
            }
        };
        tracing::info!(from = ?self.from, codec = %spec.codec, to = ?self.to_codec, "bridge direction ready");
        let decoder = AudioCodec::from_encoding(&spec.codec)
            .and_then(|c| PcmDecoder::new(c, super::play::MIX_RATE).ok());
        let mut st = self.state.lock();
        st.source = Some((id, spec.payload_type, transcoder));
        st.decoder = decoder;
    }

    fn on_media(&self, unit: &MediaUnit) -> bool {
        if self.paused.load(Ordering::Relaxed) || self.muted.load(Ordering::Relaxed) {
            return true;
        }
        let mut st = self.state.lock();
        let State {
            source,
            decoder,
            pcm,
            out,
        } = &mut *st;
        let Some((track, pt, Some(t))) = source else {
            return true;
        };
        if unit.track != *track || unit.payload_type != *pt {
            // Another leg's track, or a telephone-event on this one.
            return true;
        }
        let feed = self.mix_into.lock().clone();
        if let (Some(feed), Some(dec)) = (feed, decoder.as_mut()) {
            if feed.lock().detached {
                *self.mix_into.lock() = None;
            } else {
                pcm.clear();
                if dec.decode(&unit.payload, pcm).is_ok() {
                    feed.lock().push(pcm);
                    self.forwarded.fetch_add(1, Ordering::Relaxed);
                }
                return true;
            }
        }
        out.clear();
        if t.passes_through(unit.payload.len()) {
            // Same codec and packet size: the publisher's bytes go on as they are (no copy).
            out.push(unit.payload.clone());
        } else if let Err(e) = t.push(&unit.payload, out) {
            tracing::debug!(error = %e, "bridge: payload not transcoded");
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        let mut ok = true;
        for p in out.drain(..) {
            if self.to.inject(p).is_ok() {
                self.forwarded.fetch_add(1, Ordering::Relaxed);
            } else {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                ok = false;
            }
        }
        ok
    }

    fn on_end(&self, _reason: &str) {}
}

/// The video of a two-party call: one leg's video track relayed into the other leg as it
/// came (the legs negotiated the same codec, H.264: no transcoding), with its timestamps
/// and marker bits; the receiving leg passes its far end's keyframe requests back to the
/// source track. Like the audio sink it runs inside `publish` and never waits.
pub(super) struct VideoBridgeSink {
    from: Leg,
    to: Injector,
    /// Set while the receiving leg is on hold.
    pub(super) paused: Arc<AtomicBool>,
    /// The source track and its payload type, packed (`track << 8 | pt`; `NO_SOURCE`
    /// before the track is known): read for every unit of the stream, audio included, so
    /// without a lock.
    source: AtomicU64,
    pub(super) forwarded: AtomicU64,
    pub(super) dropped: AtomicU64,
}

/// No video source track yet (no packed key equals it).
const NO_SOURCE: u64 = u64::MAX;

fn source_key(track: TrackId, payload_type: u8) -> u64 {
    (track as u64) << 8 | u64::from(payload_type)
}

impl VideoBridgeSink {
    pub(super) fn new(from: Leg, to: Injector) -> Self {
        Self {
            from,
            to,
            paused: Arc::new(AtomicBool::new(false)),
            source: AtomicU64::new(NO_SOURCE),
            forwarded: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        }
    }
}

impl InlineSink for VideoBridgeSink {
    fn on_track(&self, id: TrackId, spec: &TrackSpec) {
        if spec.kind == TrackKind::Video && spec.leg == self.from {
            self.source
                .store(source_key(id, spec.payload_type), Ordering::Relaxed);
        }
    }

    fn on_media(&self, unit: &MediaUnit) -> bool {
        if self.paused.load(Ordering::Relaxed)
            || self.source.load(Ordering::Relaxed) != source_key(unit.track, unit.payload_type)
        {
            return true;
        }
        match self
            .to
            .relay(unit.payload.clone(), unit.marker, unit.timestamp)
        {
            Ok(()) => {
                self.forwarded.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(_) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    fn on_end(&self, _reason: &str) {}
}
