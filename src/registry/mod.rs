//! The stream registry: named streams, their tracks, one publisher and many bounded readers.
//!
//! Owns the name → stream map, each stream's track list and counters, and the fan-out from a
//! stream's single [`Publisher`] to its [`Reader`]s. It does not own sockets, codecs or
//! outputs: inputs publish [`MediaUnit`]s, outputs read them.
//!
//! Fan-out contract (STYLE.md lesson 5, PEERS.md fan-out facts):
//! - [`Publisher::publish`] never blocks and never awaits: it takes a snapshot of the reader
//!   list (an `Arc<[..]>` cloned under a read lock held for nanoseconds) and `try_send`s a
//!   clone of the unit (a refcount bump on its `Bytes`) into each reader's bounded queue.
//! - A reader whose queue is full loses that unit; the loss is counted on that reader only.
//!   Other readers and the publisher are not affected.
//! - Track announcements that do not fit a full queue are not lost: the reader is flagged and
//!   re-told the current tracks before its next unit. The end of the stream is not queued
//!   at all: the publisher drops the queues' senders, each reader drains what it has and
//!   then sees [`ReaderEvent::Ended`] with the reason.
//! - No lock is held across an `.await`; readers wait on their own channel only.

use std::collections::HashMap;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use serde::Serialize;
use thiserror::Error;
use tokio::sync::mpsc;

/// Index of a track within its stream (0, 1, ...).
pub type TrackId = usize;

/// Tracks per stream: caller/callee/mixed audio and video fit with room to spare. A fixed
/// bound lets per-track counters live in a lock-free array.
pub const MAX_TRACKS: usize = 8;

/// The one media unit that flows from inputs to outputs: an RTP payload with its header
/// fields. Cloning is cheap (the payload is reference-counted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaUnit {
    pub track: TrackId,
    pub payload_type: u8,
    pub seq: u16,
    pub timestamp: u32,
    pub marker: bool,
    pub ssrc: u32,
    pub payload: Bytes,
    pub arrival: Instant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TrackKind {
    Audio,
    Video,
}

/// Which call leg a track carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Leg {
    Caller,
    Callee,
    Mixed,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackSpec {
    pub kind: TrackKind,
    pub leg: Leg,
    /// "PCMU", "PCMA", "opus", "H264".
    pub codec: String,
    pub clock_rate: u32,
    pub channels: u8,
    pub payload_type: u8,
    pub fmtp: Option<String>,
}

impl TrackSpec {
    /// A mono audio track of the callee leg without fmtp (G.711 and the like).
    pub fn audio(codec: &str, clock_rate: u32, payload_type: u8) -> Self {
        Self {
            kind: TrackKind::Audio,
            leg: Leg::Callee,
            codec: codec.to_owned(),
            clock_rate,
            channels: 1,
            payload_type,
            fmtp: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RegistryError {
    #[error("stream {0:?} already exists")]
    AlreadyExists(String),
    #[error("invalid stream name {name:?}: {why}")]
    InvalidName { name: String, why: &'static str },
    #[error("stream {0:?} not found")]
    NotFound(String),
    #[error("stream {name:?} already has {MAX_TRACKS} tracks")]
    TooManyTracks { name: String },
    #[error("stream {name:?} has no track {track}")]
    NoSuchTrack { name: String, track: TrackId },
    #[error("stream {0:?} has ended")]
    Ended(String),
    #[error("stream {name:?} has {max} readers already (stream_max_readers)")]
    TooManyReaders { name: String, max: usize },
}

impl From<RegistryError> for crate::error::RequestError {
    /// The neutral request error for a registry refusal (503 for a full stream).
    fn from(e: RegistryError) -> Self {
        use crate::error::RequestError as R;
        match e {
            RegistryError::NotFound(_) => R::NotFound(e.to_string()),
            RegistryError::InvalidName { .. } => R::BadRequest(e.to_string()),
            RegistryError::TooManyReaders { .. } => R::Unavailable(e.to_string()),
            _ => R::Conflict(e.to_string()),
        }
    }
}

/// What a reader receives.
#[derive(Debug, Clone, PartialEq)]
pub enum ReaderEvent {
    Media(MediaUnit),
    /// A track was added or changed (and, for a reader that joins, each current track).
    TrackChanged(TrackId, TrackSpec),
    /// The stream ended; the last event a reader sees.
    Ended(String),
}

#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrackInfo {
    pub id: TrackId,
    pub kind: TrackKind,
    pub leg: Leg,
    pub codec: String,
    pub clock_rate: u32,
    pub channels: u8,
    pub payload_type: u8,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fmtp: Option<String>,
    pub packets: u64,
    pub bytes: u64,
    pub lost: u64,
    /// Interarrival jitter in milliseconds, as reported by the RTP session.
    pub jitter: f64,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReaderInfo {
    pub id: u64,
    pub kind: String,
    pub received: u64,
    pub dropped: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StreamInfo {
    pub name: String,
    pub call_id: Option<String>,
    /// Unix time in milliseconds.
    pub created_at: u64,
    pub tracks: Vec<TrackInfo>,
    pub readers: Vec<ReaderInfo>,
    /// Always "PUBLISHING": an ended stream leaves the registry.
    pub status: &'static str,
}

/// What all tracks of one kind carried, live and ended streams together.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KindTotals {
    pub packets: u64,
    pub bytes: u64,
    pub lost: u64,
}

/// Readers of one kind: how many read now, and what all of them (gone ones too) received
/// and lost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReaderTotals {
    pub live: u64,
    pub received: u64,
    pub dropped: u64,
}

/// The registry's running totals since start ([`Registry::totals`]): the counts only ever
/// grow (Prometheus counters), because what an ended stream or a gone reader counted is
/// kept when it leaves.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Totals {
    pub streams: u64,
    pub audio: KindTotals,
    pub video: KindTotals,
    pub readers: std::collections::BTreeMap<String, ReaderTotals>,
}

/// What ended streams and gone readers counted. Its lock is taken before the stream map's
/// and a stream's locks, by whoever removes a stream or reader and by [`Registry::totals`],
/// so that a count moves from live to retired atomically for a reader of the totals.
#[derive(Default)]
struct Retired {
    audio: KindTotals,
    video: KindTotals,
    readers: HashMap<String, (u64, u64)>,
}

impl Retired {
    fn add_reader(&mut self, r: &ReaderInfo) {
        let e = self.readers.entry(r.kind.clone()).or_default();
        e.0 += r.received;
        e.1 += r.dropped;
    }

    fn add_tracks(&mut self, tracks: &[TrackInfo]) {
        for t in tracks {
            let k = match t.kind {
                TrackKind::Audio => &mut self.audio,
                TrackKind::Video => &mut self.video,
            };
            k.packets += t.packets;
            k.bytes += t.bytes;
            k.lost += t.lost;
        }
    }
}

/// Checks a stream name: 1..=128 characters of `[A-Za-z0-9_.-]`.
pub fn validate_name(name: &str) -> Result<(), RegistryError> {
    let why = if name.is_empty() {
        Some("empty")
    } else if name.len() > 128 {
        Some("longer than 128 characters")
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    {
        Some("only A-Z a-z 0-9 _ . - are allowed")
    } else {
        None
    };
    match why {
        Some(why) => Err(RegistryError::InvalidName {
            name: name.chars().take(140).collect(),
            why,
        }),
        None => Ok(()),
    }
}

#[derive(Debug, Default)]
struct TrackCounters {
    packets: AtomicU64,
    bytes: AtomicU64,
    lost: AtomicU64,
    /// f64 bits.
    jitter: AtomicU64,
}

enum Item {
    Media(MediaUnit),
    Track(TrackId, TrackSpec),
}

/// What the publisher and a reader share about that reader.
struct Slot {
    id: u64,
    kind: String,
    received: AtomicU64,
    dropped: AtomicU64,
    /// A track announcement did not fit the queue: re-tell all tracks.
    resync_tracks: AtomicBool,
}

impl Slot {
    fn info(&self) -> ReaderInfo {
        ReaderInfo {
            id: self.id,
            kind: self.kind.clone(),
            received: self.received.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
        }
    }
}

/// A reader that runs inside [`Publisher::publish`], on the publisher's task, instead of
/// behind a queue: for outputs whose whole work per unit is a non-blocking send (RTP
/// forks). Saves a task wake-up and a queue hop per packet; in exchange it must never
/// block, await or hold a lock for long, and it sees the publisher's pace directly.
pub trait InlineSink: Send + Sync {
    /// A track was added or changed (and, at attach time, each current track).
    fn on_track(&self, id: TrackId, spec: &TrackSpec);
    /// One unit; `false` means it was dropped (counted as the reader's drop).
    fn on_media(&self, unit: &MediaUnit) -> bool;
    /// The stream ended; no call follows.
    fn on_end(&self, reason: &str);
}

/// How the publisher reaches one reader.
enum Tx {
    /// A bounded queue towards a reader task ([`Reader`]).
    Queue(mpsc::Sender<Item>),
    /// Called in place ([`InlineSink`]).
    Inline(Arc<dyn InlineSink>),
}

/// The publisher's side of one reader: the only owner of the queue's sender, so that
/// removing it from the stream's list closes the reader's queue.
struct Outlet {
    tx: Tx,
    slot: Arc<Slot>,
}

impl Outlet {
    fn send_track(&self, id: TrackId, spec: &TrackSpec) {
        match &self.tx {
            Tx::Queue(tx) => {
                if tx.try_send(Item::Track(id, spec.clone())).is_err() {
                    self.slot.resync_tracks.store(true, Ordering::Release);
                }
            }
            Tx::Inline(sink) => sink.on_track(id, spec),
        }
    }

    /// Delivers one unit; a full queue or a refusing sink is a counted drop.
    fn send_media(&self, unit: MediaUnit) {
        let delivered = match &self.tx {
            Tx::Queue(tx) => tx.try_send(Item::Media(unit)).is_ok(),
            Tx::Inline(sink) => {
                let ok = sink.on_media(&unit);
                if ok {
                    self.slot.received.fetch_add(1, Ordering::Relaxed);
                }
                ok
            }
        };
        if !delivered {
            self.slot.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[derive(Default)]
struct StreamState {
    tracks: Vec<TrackSpec>,
    ended: Option<String>,
}

struct Stream {
    name: String,
    call_id: Option<String>,
    created_at_ms: u64,
    /// Track list and end reason; also serialises subscribe against track changes so a
    /// joining reader misses no announcement.
    state: Mutex<StreamState>,
    counters: [TrackCounters; MAX_TRACKS],
    /// A reader asked for a keyframe on this track; the publisher takes the flag (RTCP PLI
    /// towards the sender).
    keyframe_wanted: [AtomicBool; MAX_TRACKS],
    /// The fan-out snapshot: replaced (copy-on-write) on subscribe/unsubscribe/end, only
    /// cloned by publish.
    readers: RwLock<Arc<[Arc<Outlet>]>>,
    /// The registry's counts of what left (shared by all streams).
    retired: Arc<Mutex<Retired>>,
}

impl Stream {
    fn info(&self) -> StreamInfo {
        let tracks = self
            .state
            .lock()
            .tracks
            .iter()
            .enumerate()
            .map(|(id, t)| {
                let c = self.counters.get(id);
                let load = |f: fn(&TrackCounters) -> &AtomicU64| {
                    c.map(|c| f(c).load(Ordering::Relaxed)).unwrap_or(0)
                };
                TrackInfo {
                    id,
                    kind: t.kind,
                    leg: t.leg,
                    codec: t.codec.clone(),
                    clock_rate: t.clock_rate,
                    channels: t.channels,
                    payload_type: t.payload_type,
                    fmtp: t.fmtp.clone(),
                    packets: load(|c| &c.packets),
                    bytes: load(|c| &c.bytes),
                    lost: load(|c| &c.lost),
                    jitter: f64::from_bits(load(|c| &c.jitter)),
                }
            })
            .collect();
        StreamInfo {
            name: self.name.clone(),
            call_id: self.call_id.clone(),
            created_at: self.created_at_ms,
            tracks,
            readers: self.readers.read().iter().map(|o| o.slot.info()).collect(),
            status: "PUBLISHING",
        }
    }

    fn want_keyframe(&self, track: TrackId) {
        if let Some(f) = self.keyframe_wanted.get(track) {
            f.store(true, Ordering::Release);
        }
    }

    fn remove_reader(&self, id: u64) {
        let mut retired = self.retired.lock();
        let mut w = self.readers.write();
        if let Some(gone) = w.iter().find(|o| o.slot.id == id) {
            retired.add_reader(&gone.slot.info());
            *w = w.iter().filter(|o| o.slot.id != id).cloned().collect();
        }
    }
}

struct RegistryInner {
    streams: RwLock<HashMap<String, Arc<Stream>>>,
    reader_queue_len: usize,
    next_reader_id: AtomicU64,
    retired: Arc<Mutex<Retired>>,
    /// Streams created since start.
    created: AtomicU64,
    /// Queued readers a stream takes ([`Registry::set_max_readers`]).
    max_readers: std::sync::atomic::AtomicUsize,
}

/// The registry of named streams. Cheap to clone (shared state).
#[derive(Clone)]
pub struct Registry {
    inner: Arc<RegistryInner>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("streams", &self.len())
            .field("reader_queue_len", &self.inner.reader_queue_len)
            .finish()
    }
}

impl Registry {
    /// `reader_queue_len`: units a reader may lag behind before it loses some (at least 1).
    /// About 1–2 s of media is a sensible value (50 packets/s per audio track).
    pub fn new(reader_queue_len: usize) -> Self {
        Self {
            inner: Arc::new(RegistryInner {
                streams: RwLock::new(HashMap::new()),
                reader_queue_len: reader_queue_len.max(1),
                next_reader_id: AtomicU64::new(1),
                retired: Arc::default(),
                created: AtomicU64::new(0),
                max_readers: std::sync::atomic::AtomicUsize::new(usize::MAX),
            }),
        }
    }

    /// At most `max` readers per stream: a [`Registry::subscribe`] beyond it is refused with
    /// [`RegistryError::TooManyReaders`] (inline sinks of the call itself, [`Registry::attach`],
    /// count but are never refused).
    pub fn set_max_readers(&self, max: usize) {
        self.inner.max_readers.store(max.max(1), Ordering::Relaxed);
    }

    /// Creates stream `name` and returns its only publisher.
    pub fn create(&self, name: &str, call_id: Option<String>) -> Result<Publisher, RegistryError> {
        validate_name(name)?;
        let created_at_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        let stream = Arc::new(Stream {
            name: name.to_owned(),
            call_id,
            created_at_ms,
            state: Mutex::new(StreamState::default()),
            counters: Default::default(),
            keyframe_wanted: Default::default(),
            readers: RwLock::new(Arc::from(Vec::new())),
            retired: self.inner.retired.clone(),
        });
        {
            let mut map = self.inner.streams.write();
            if map.contains_key(name) {
                return Err(RegistryError::AlreadyExists(name.to_owned()));
            }
            map.insert(name.to_owned(), stream.clone());
        }
        self.inner.created.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(stream = name, "stream created");
        Ok(Publisher {
            stream,
            registry: Arc::downgrade(&self.inner),
            ended: AtomicBool::new(false),
        })
    }

    pub fn find(&self, name: &str) -> Option<StreamInfo> {
        let s = self.inner.streams.read().get(name).cloned();
        s.map(|s| s.info())
    }

    /// All streams, sorted by name.
    pub fn list(&self) -> Vec<StreamInfo> {
        let streams: Vec<_> = self.inner.streams.read().values().cloned().collect();
        let mut out: Vec<_> = streams.iter().map(|s| s.info()).collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    pub fn len(&self) -> usize {
        self.inner.streams.read().len()
    }

    /// What every stream and reader has carried since start, live and gone together; each
    /// count only grows. Walks the live streams: for a scrape, not per packet.
    pub fn totals(&self) -> Totals {
        let retired = self.inner.retired.lock();
        let mut t = Totals {
            streams: self.inner.created.load(Ordering::Relaxed),
            audio: retired.audio,
            video: retired.video,
            readers: retired
                .readers
                .iter()
                .map(|(k, (received, dropped))| {
                    let r = ReaderTotals {
                        live: 0,
                        received: *received,
                        dropped: *dropped,
                    };
                    (k.clone(), r)
                })
                .collect(),
        };
        let streams: Vec<Arc<Stream>> = self.inner.streams.read().values().cloned().collect();
        let mut live = Retired::default();
        for s in &streams {
            let info = s.info();
            live.add_tracks(&info.tracks);
            for r in &info.readers {
                live.add_reader(r);
                t.readers.entry(r.kind.clone()).or_default().live += 1;
            }
        }
        drop(retired);
        for (sum, add) in [(&mut t.audio, live.audio), (&mut t.video, live.video)] {
            sum.packets += add.packets;
            sum.bytes += add.bytes;
            sum.lost += add.lost;
        }
        for (k, (received, dropped)) in live.readers {
            let e = t.readers.entry(k).or_default();
            e.received += received;
            e.dropped += dropped;
        }
        t
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Subscribes a reader of kind `reader_kind` ("recorder", "whep", "rtmp", ...). Its first
    /// events are one `TrackChanged` per current track.
    pub fn subscribe(&self, name: &str, reader_kind: &str) -> Result<Reader, RegistryError> {
        let stream = self
            .inner
            .streams
            .read()
            .get(name)
            .cloned()
            .ok_or_else(|| RegistryError::NotFound(name.to_owned()))?;
        let (tx, rx) = mpsc::channel(self.inner.reader_queue_len);
        let slot = Arc::new(Slot {
            id: self.inner.next_reader_id.fetch_add(1, Ordering::Relaxed),
            kind: reader_kind.to_owned(),
            received: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            resync_tracks: AtomicBool::new(false),
        });
        let pending = {
            let state = stream.state.lock();
            if state.ended.is_some() {
                return Err(RegistryError::NotFound(name.to_owned()));
            }
            let mut w = stream.readers.write();
            let max = self.inner.max_readers.load(Ordering::Relaxed);
            if w.len() >= max {
                return Err(RegistryError::TooManyReaders {
                    name: name.to_owned(),
                    max,
                });
            }
            let outlet = Arc::new(Outlet {
                tx: Tx::Queue(tx),
                slot: slot.clone(),
            });
            *w = w.iter().cloned().chain([outlet]).collect();
            tracks_as_events(&state.tracks)
        };
        tracing::debug!(
            stream = name,
            reader = slot.id,
            kind = reader_kind,
            "reader subscribed"
        );
        Ok(Reader {
            stream,
            slot,
            rx,
            pending,
            done: false,
        })
    }
}

impl Registry {
    /// Attaches an [`InlineSink`] of kind `reader_kind` to stream `name`: it is told the
    /// current tracks at once and then called from every `publish`. Dropping the returned
    /// handle detaches it. It shows in `/stream/find` like any reader.
    pub fn attach(
        &self,
        name: &str,
        reader_kind: &str,
        sink: Arc<dyn InlineSink>,
    ) -> Result<SinkHandle, RegistryError> {
        let stream = self
            .inner
            .streams
            .read()
            .get(name)
            .cloned()
            .ok_or_else(|| RegistryError::NotFound(name.to_owned()))?;
        let slot = Arc::new(Slot {
            id: self.inner.next_reader_id.fetch_add(1, Ordering::Relaxed),
            kind: reader_kind.to_owned(),
            received: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            resync_tracks: AtomicBool::new(false),
        });
        {
            // Under the state lock: no track change can slip between the replay and the
            // insertion into the fan-out list.
            let state = stream.state.lock();
            if state.ended.is_some() {
                return Err(RegistryError::NotFound(name.to_owned()));
            }
            for (i, t) in state.tracks.iter().enumerate() {
                sink.on_track(i, t);
            }
            let mut w = stream.readers.write();
            let outlet = Arc::new(Outlet {
                tx: Tx::Inline(sink),
                slot: slot.clone(),
            });
            *w = w.iter().cloned().chain([outlet]).collect();
        }
        tracing::debug!(
            stream = name,
            reader = slot.id,
            kind = reader_kind,
            "inline sink attached"
        );
        Ok(SinkHandle { stream, slot })
    }
}

/// An attached [`InlineSink`]; dropping it detaches the sink.
pub struct SinkHandle {
    stream: Arc<Stream>,
    slot: Arc<Slot>,
}

impl SinkHandle {
    pub fn id(&self) -> u64 {
        self.slot.id
    }

    /// Asks the publisher for a keyframe on `track` (see [`Reader::request_keyframe`]).
    pub fn request_keyframe(&self, track: TrackId) {
        self.stream.want_keyframe(track);
    }

    /// Units delivered to the sink.
    pub fn received(&self) -> u64 {
        self.slot.received.load(Ordering::Relaxed)
    }

    /// Units the sink refused.
    pub fn dropped(&self) -> u64 {
        self.slot.dropped.load(Ordering::Relaxed)
    }
}

impl Drop for SinkHandle {
    fn drop(&mut self) {
        self.stream.remove_reader(self.slot.id);
    }
}

fn tracks_as_events(tracks: &[TrackSpec]) -> VecDeque<ReaderEvent> {
    tracks
        .iter()
        .enumerate()
        .map(|(i, t)| ReaderEvent::TrackChanged(i, t.clone()))
        .collect()
}

/// The one writer of a stream. Dropping it ends the stream ("publisher gone").
pub struct Publisher {
    stream: Arc<Stream>,
    registry: Weak<RegistryInner>,
    ended: AtomicBool,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("stream", &self.stream.name)
            .finish()
    }
}

impl Publisher {
    pub fn name(&self) -> &str {
        &self.stream.name
    }

    /// Adds a track and tells every reader.
    pub fn add_track(&self, spec: TrackSpec) -> Result<TrackId, RegistryError> {
        let mut state = self.stream.state.lock();
        if state.ended.is_some() {
            return Err(RegistryError::Ended(self.stream.name.clone()));
        }
        let id = state.tracks.len();
        if id >= MAX_TRACKS {
            return Err(RegistryError::TooManyTracks {
                name: self.stream.name.clone(),
            });
        }
        for o in self.stream.readers.read().iter() {
            o.send_track(id, &spec);
        }
        state.tracks.push(spec);
        Ok(id)
    }

    /// Replaces a track's description (codec change after a re-INVITE) and tells readers.
    pub fn update_track(&self, id: TrackId, spec: TrackSpec) -> Result<(), RegistryError> {
        let mut state = self.stream.state.lock();
        let Some(t) = state.tracks.get_mut(id) else {
            return Err(RegistryError::NoSuchTrack {
                name: self.stream.name.clone(),
                track: id,
            });
        };
        if *t != spec {
            for o in self.stream.readers.read().iter() {
                o.send_track(id, &spec);
            }
            *t = spec;
        }
        Ok(())
    }

    /// Hands `unit` to every reader. Never blocks: a reader with a full queue loses it.
    /// Units for unknown tracks are still delivered (counters are kept for known slots).
    pub fn publish(&self, unit: MediaUnit) {
        if let Some(c) = self.stream.counters.get(unit.track) {
            c.packets.fetch_add(1, Ordering::Relaxed);
            c.bytes
                .fetch_add(unit.payload.len() as u64, Ordering::Relaxed);
        }
        let readers = self.stream.readers.read().clone();
        let Some((last, rest)) = readers.split_last() else {
            return;
        };
        for o in rest {
            o.send_media(unit.clone());
        }
        // The last reader gets the unit itself: one clone saved per publish.
        last.send_media(unit);
    }

    /// Asks the publisher of `track` (this stream's, maybe another leg's) for a keyframe:
    /// a leg that relays that track's video heard its far end ask (RTCP PLI/FIR).
    pub fn request_keyframe(&self, track: TrackId) {
        self.stream.want_keyframe(track);
    }

    /// Whether a reader asked for a keyframe on `track` since the last call (clears it).
    /// The RTP leg turns it into an RTCP PLI towards the far end.
    pub fn take_keyframe_request(&self, track: TrackId) -> bool {
        self.stream
            .keyframe_wanted
            .get(track)
            .is_some_and(|f| f.swap(false, Ordering::AcqRel))
    }

    /// Surfaces the RTP session's receive statistics on a track (cumulative loss, jitter in
    /// milliseconds).
    pub fn record_rtp_stats(&self, id: TrackId, lost: u64, jitter_ms: f64) {
        if let Some(c) = self.stream.counters.get(id) {
            c.lost.store(lost, Ordering::Relaxed);
            c.jitter.store(jitter_ms.to_bits(), Ordering::Relaxed);
        }
    }

    /// Whether the stream has a reader whose kind is not one of `kinds`: work done only for
    /// someone (the two-party mix) is skipped while only the gateway's own readers follow.
    pub fn has_readers_besides(&self, kinds: &[&str]) -> bool {
        self.stream
            .readers
            .read()
            .iter()
            .any(|o| !kinds.contains(&o.slot.kind.as_str()))
    }

    pub fn readers(&self) -> Vec<ReaderInfo> {
        self.stream
            .readers
            .read()
            .iter()
            .map(|o| o.slot.info())
            .collect()
    }

    pub fn info(&self) -> StreamInfo {
        self.stream.info()
    }

    /// Ends the stream: it leaves the registry (the name is free again) and every reader,
    /// after what is queued, sees `Ended(reason)`. Idempotent.
    pub fn end(&self, reason: &str) {
        if self.ended.swap(true, Ordering::AcqRel) {
            return;
        }
        // What the stream and its readers counted moves to the registry's totals in one
        // step with its leaving (see `Retired`); no sink is called under that lock (its
        // `on_end` may drop other readers, which takes it).
        let readers = {
            let mut retired = self.stream.retired.lock();
            let readers = {
                let mut state = self.stream.state.lock();
                state.ended = Some(reason.to_owned());
                // Dropping the senders closes each reader's queue; inline sinks are told below.
                std::mem::replace(&mut *self.stream.readers.write(), Arc::from(Vec::new()))
            };
            for o in readers.iter() {
                retired.add_reader(&o.slot.info());
            }
            retired.add_tracks(&self.stream.info().tracks);
            if let Some(reg) = self.registry.upgrade() {
                let mut map = reg.streams.write();
                if map
                    .get(&self.stream.name)
                    .is_some_and(|s| Arc::ptr_eq(s, &self.stream))
                {
                    map.remove(&self.stream.name);
                }
            }
            readers
        };
        {
            let _state = self.stream.state.lock();
            for o in readers.iter() {
                if let Tx::Inline(sink) = &o.tx {
                    sink.on_end(reason);
                }
            }
        }
        drop(readers);
        tracing::debug!(stream = %self.stream.name, reason, "stream ended");
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.end("publisher gone");
    }
}

/// One subscriber of a stream. Dropping it unsubscribes.
pub struct Reader {
    stream: Arc<Stream>,
    slot: Arc<Slot>,
    rx: mpsc::Receiver<Item>,
    /// Events owed before the next queued item (tracks for a late joiner or a resync).
    pending: VecDeque<ReaderEvent>,
    done: bool,
}

impl std::fmt::Debug for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader")
            .field("stream", &self.stream.name)
            .field("id", &self.slot.id)
            .finish()
    }
}

/// Why `try_recv` returned nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TryRecvError {
    Empty,
    /// `Ended` was already delivered.
    Closed,
}

impl Reader {
    pub fn id(&self) -> u64 {
        self.slot.id
    }

    pub fn stream_name(&self) -> &str {
        &self.stream.name
    }

    /// Asks the publisher for a keyframe on `track` (a video reader that joined mid-stream or
    /// lost packets). Requests are merged until the publisher takes them.
    pub fn request_keyframe(&self, track: TrackId) {
        self.stream.want_keyframe(track);
    }

    /// Units this reader lost because its queue was full.
    pub fn dropped(&self) -> u64 {
        self.slot.dropped.load(Ordering::Relaxed)
    }

    /// Units delivered to this reader.
    pub fn received(&self) -> u64 {
        self.slot.received.load(Ordering::Relaxed)
    }

    fn take_pending(&mut self) -> Option<ReaderEvent> {
        if self.slot.resync_tracks.swap(false, Ordering::AcqRel) {
            let tracks = self.stream.state.lock().tracks.clone();
            self.pending.extend(tracks_as_events(&tracks));
        }
        self.pending.pop_front()
    }

    fn deliver(&mut self, item: Item) -> ReaderEvent {
        match item {
            Item::Media(u) => {
                self.slot.received.fetch_add(1, Ordering::Relaxed);
                ReaderEvent::Media(u)
            }
            Item::Track(id, spec) => ReaderEvent::TrackChanged(id, spec),
        }
    }

    fn ended(&mut self) -> ReaderEvent {
        self.done = true;
        let reason = self.stream.state.lock().ended.clone();
        ReaderEvent::Ended(reason.unwrap_or_else(|| "ended".to_owned()))
    }

    /// The next event; `None` after `Ended` was delivered. Cancel-safe.
    pub async fn recv(&mut self) -> Option<ReaderEvent> {
        if self.done {
            return None;
        }
        if let Some(ev) = self.take_pending() {
            return Some(ev);
        }
        match self.rx.recv().await {
            Some(item) => Some(self.deliver(item)),
            None => Some(self.ended()),
        }
    }

    /// The next event if one is ready.
    pub fn try_recv(&mut self) -> Result<ReaderEvent, TryRecvError> {
        if self.done {
            return Err(TryRecvError::Closed);
        }
        if let Some(ev) = self.take_pending() {
            return Ok(ev);
        }
        match self.rx.try_recv() {
            Ok(item) => Ok(self.deliver(item)),
            Err(mpsc::error::TryRecvError::Empty) => Err(TryRecvError::Empty),
            Err(mpsc::error::TryRecvError::Disconnected) => Ok(self.ended()),
        }
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.stream.remove_reader(self.slot.id);
    }
}

#[cfg(test)]
mod tests;
