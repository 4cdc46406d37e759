//! HLS output: any stream as a live (LL-HLS capable) fMP4 playlist at
//! `/hls/<stream>/index.m3u8`.
//!
//! On the first request for a stream, one reader of kind `"hls"` joins it and feeds the
//! recorder's sans-IO core ([`crate::record::core::RecorderCore`]: G.711 → Opus, H264 RTP →
//! access units, fMP4 fragments) with fragments of one part's length; [`playlist::Packager`]
//! groups them into parts and segments in memory. Every player of the stream shares that
//! one reader. Nothing is written to disk. The reader leaves when no player has asked for
//! anything for `hls_idle_timeout_s`, or when the stream ends (the playlist then ends with
//! `EXT-X-ENDLIST` and stays readable until the idle time has passed).

pub mod playlist;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use thiserror::Error;
use tokio::sync::watch;

use self::playlist::{HlsConfig, Packager, Want};
use crate::record::core::{Output, RecorderConfig, RecorderCore};
use crate::registry::{ReaderEvent, Registry, RegistryError, TrackKind};

#[derive(Debug, Clone)]
pub struct HlsServiceConfig {
    pub packaging: HlsConfig,
    /// A stream's HLS reader leaves after this long without a request.
    pub idle_timeout: Duration,
    /// The first playlist request waits this long for the first segment.
    pub first_segment_wait: Duration,
    /// Streams served at once; more get [`HlsError::Busy`].
    pub max_streams: usize,
}

impl HlsServiceConfig {
    pub fn from_config(cfg: &crate::config::Config) -> Self {
        let packaging = HlsConfig {
            part_ms: cfg.hls_part_ms,
            segment_ms: cfg.hls_segment_ms,
            list_size: cfg.hls_list_size,
        };
        Self {
            packaging,
            idle_timeout: cfg.hls_idle_timeout,
            // The recorder waits up to 3 s for a late track, then one segment of media.
            first_segment_wait: Duration::from_millis(3000 + cfg.hls_segment_ms * 2 + 2000),
            max_streams: cfg.hls_max_streams,
        }
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum HlsError {
    #[error("no stream {0:?}")]
    NoStream(String),
    #[error("stream {0:?} has sent no media for a first HLS segment yet")]
    NoMediaYet(String),
    #[error("{0} is not in the playlist of stream {1:?} (too old, or never listed)")]
    NoFile(String, String),
    #[error("no HLS file {0:?}: expected index.m3u8, init.mp4, seg<N>.m4s or part<N>.<I>.m4s")]
    BadName(String),
    #[error("_HLS_msn={0} is more than two segments ahead of the playlist")]
    TooFar(u64),
    #[error("{0}")]
    BadQuery(String),
    #[error("HLS is serving {0} streams already (hls_max_streams)")]
    Busy(usize),
    #[error("{0}")]
    StreamFull(String),
}

/// A file of a stream's HLS output, with its content type.
#[derive(Debug, Clone)]
pub struct HlsFile {
    pub bytes: Bytes,
    pub content_type: &'static str,
}

const PLAYLIST_TYPE: &str = "application/vnd.apple.mpegurl";
const MP4_TYPE: &str = "video/mp4";

#[derive(Clone)]
pub struct HlsService {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for HlsService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HlsService")
            .field("streams", &self.inner.streams.lock().len())
            .finish()
    }
}

struct Inner {
    cfg: HlsServiceConfig,
    registry: Registry,
    runtime: tokio::runtime::Handle,
    streams: Mutex<HashMap<String, Arc<Entry>>>,
}

struct Entry {
    packager: Mutex<Packager>,
    /// Bumped on every change of the packager.
    changed: watch::Sender<u64>,
    last_access: Mutex<Instant>,
}

impl Entry {
    fn touch(&self) {
        *self.last_access.lock() = Instant::now();
    }

    /// Waits until `ready` holds for the packager, or `limit` passes; returns whether it holds.
    async fn wait(&self, limit: Duration, ready: impl Fn(&Packager) -> bool) -> bool {
        let mut rx = self.changed.subscribe();
        let held = tokio::time::timeout(limit, rx.wait_for(|_| ready(&self.packager.lock())))
            .await
            .is_ok_and(|r| r.is_ok());
        held
    }
}

/// A file name under `/hls/<stream>/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Name {
    Playlist,
    Init,
    Segment(u64),
    Part(u64, usize),
}

fn parse_name(name: &str) -> Option<Name> {
    match name {
        "index.m3u8" => return Some(Name::Playlist),
        "init.mp4" => return Some(Name::Init),
        _ => {}
    }
    let stem = name.strip_suffix(".m4s")?;
    if let Some(n) = stem.strip_prefix("seg") {
        return n.parse().ok().map(Name::Segment);
    }
    let (msn, index) = stem.strip_prefix("part")?.split_once('.')?;
    Some(Name::Part(msn.parse().ok()?, index.parse().ok()?))
}

/// Parses the LL-HLS delivery directives of a playlist request (`_HLS_msn`, `_HLS_part`;
/// `_HLS_skip` is not offered, so it is ignored).
pub fn parse_directives(query: &str) -> Result<Option<Want>, HlsError> {
    let mut msn = None;
    let mut part = None;
    for (k, v) in query.split('&').filter_map(|kv| kv.split_once('=')) {
        match k {
            "_HLS_msn" => {
                msn = Some(v.parse::<u64>().map_err(|_| {
                    HlsError::BadQuery(format!("_HLS_msn must be a segment number, got {v:?}"))
                })?)
            }
            "_HLS_part" => {
                part = Some(v.parse::<usize>().map_err(|_| {
                    HlsError::BadQuery(format!("_HLS_part must be a part number, got {v:?}"))
                })?)
            }
            _ => {}
        }
    }
    match (msn, part) {
        (None, Some(_)) => Err(HlsError::BadQuery("_HLS_part without _HLS_msn".into())),
        (None, None) => Ok(None),
        (Some(msn), part) => Ok(Some(Want { msn, part })),
    }
}

impl HlsService {
    pub fn new(cfg: HlsServiceConfig, registry: Registry, runtime: tokio::runtime::Handle) -> Self {
        Self {
            inner: Arc::new(Inner {
                cfg,
                registry,
                runtime,
                streams: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Streams with an HLS reader now.
    pub fn len(&self) -> usize {
        self.inner.streams.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Serves `/hls/<stream>/<name>?<query>`. `uri_query` (e.g. `?token=…`, or empty) is
    /// put after every URI of a playlist.
    pub async fn get(
        &self,
        stream: &str,
        name: &str,
        query: &str,
        uri_query: &str,
    ) -> Result<HlsFile, HlsError> {
        let parsed = parse_name(name).ok_or_else(|| HlsError::BadName(name.to_owned()))?;
        let want = match parsed {
            Name::Playlist => parse_directives(query)?,
            _ => None,
        };
        let entry = self.entry(stream)?;
        entry.touch();
        // Longest a request is held: about three target durations (the spec's limit for
        // blocking reloads).
        let hold = Duration::from_millis(3 * self.inner.cfg.packaging.segment_ms.max(1000));
        let missing = || HlsError::NoFile(name.to_owned(), stream.to_owned());
        match parsed {
            Name::Playlist => {
                if let Some(w) = want {
                    if entry.packager.lock().too_far(w) {
                        return Err(HlsError::TooFar(w.msn));
                    }
                    entry.wait(hold, |p| p.ready(w)).await;
                }
                let first_wait = self.inner.cfg.first_segment_wait;
                if !entry.packager.lock().has_playlist() {
                    entry.wait(first_wait, Packager::has_playlist).await;
                }
                let text = entry.packager.lock().playlist_with(uri_query);
                text.map(|t| HlsFile {
                    bytes: Bytes::from(t),
                    content_type: PLAYLIST_TYPE,
                })
                .ok_or_else(|| HlsError::NoMediaYet(stream.to_owned()))
            }
            Name::Init => entry.packager.lock().init().map(mp4).ok_or_else(missing),
            Name::Segment(msn) => entry
                .packager
                .lock()
                .segment(msn)
                .map(mp4)
                .ok_or_else(missing),
            Name::Part(msn, index) => {
                // The preload hint names the next part before it exists: hold the request.
                if entry.packager.lock().part_is_near(msn, index) {
                    entry
                        .wait(hold, |p| p.part(msn, index).is_some() || p.ended())
                        .await;
                }
                let part = entry.packager.lock().part(msn, index);
                part.map(mp4).ok_or_else(missing)
            }
        }
    }

    /// The stream's HLS entry, started on first use.
    fn entry(&self, stream: &str) -> Result<Arc<Entry>, HlsError> {
        let mut streams = self.inner.streams.lock();
        if let Some(e) = streams.get(stream) {
            return Ok(e.clone());
        }
        let reader = self
            .inner
            .registry
            .subscribe(stream, "hls")
            .map_err(|e| match e {
                RegistryError::NotFound(n) => HlsError::NoStream(n),
                e @ RegistryError::TooManyReaders { .. } => HlsError::StreamFull(e.to_string()),
                other => HlsError::NoStream(format!("{stream} ({other})")),
            })?;
        if streams.len() >= self.inner.cfg.max_streams {
            return Err(HlsError::Busy(streams.len()));
        }
        let (changed, _) = watch::channel(0);
        let entry = Arc::new(Entry {
            packager: Mutex::new(Packager::new(self.inner.cfg.packaging)),
            changed,
            last_access: Mutex::new(Instant::now()),
        });
        streams.insert(stream.to_owned(), entry.clone());
        let span = tracing::info_span!("hls", stream = %stream);
        tracing::info!(parent: &span, "HLS output started");
        self.inner.runtime.spawn(tracing::Instrument::instrument(
            run(self.inner.clone(), stream.to_owned(), entry.clone(), reader),
            span,
        ));
        Ok(entry)
    }
}

fn mp4(bytes: Bytes) -> HlsFile {
    HlsFile {
        bytes,
        content_type: MP4_TYPE,
    }
}

/// The stream's reader task: registry events through the recorder core into the packager,
/// until the stream ends or nobody asks; then, after the idle time, the entry goes.
async fn run(
    inner: Arc<Inner>,
    stream: String,
    entry: Arc<Entry>,
    mut reader: crate::registry::Reader,
) {
    let idle = inner.cfg.idle_timeout;
    let mut core = RecorderCore::new(RecorderConfig {
        fragment_ms: inner.cfg.packaging.part_ms,
        fragment_at_keyframes: true,
        ..RecorderConfig::default()
    });
    let mut video = None;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let is_idle = || entry.last_access.lock().elapsed() >= idle;
    let why = loop {
        let ev = tokio::select! {
            ev = reader.recv() => ev,
            _ = tick.tick() => {
                if is_idle() {
                    break "no player asked for it".to_owned();
                }
                continue;
            }
        };
        let r = match ev {
            Some(ReaderEvent::Media(u)) => {
                let waiting = core.stats.video_waiting_keyframe;
                let r = core.handle_media(&u);
                if core.stats.video_waiting_keyframe > waiting {
                    if let Some(v) = video {
                        reader.request_keyframe(v);
                    }
                }
                r
            }
            Some(ReaderEvent::TrackChanged(id, spec)) => {
                if spec.kind == TrackKind::Video {
                    video = Some(id);
                    reader.request_keyframe(id);
                }
                core.handle_track(id, &spec);
                Ok(())
            }
            Some(ReaderEvent::Ended(why)) => break format!("stream ended: {why}"),
            None => break "stream ended".to_owned(),
        };
        if let Err(e) = r {
            break format!("failed: {e}");
        }
        drain(&mut core, &entry);
    };
    drop(reader);
    if let Err(e) = core.finish(Some(Instant::now())) {
        tracing::warn!(error = %e, "HLS: last fragment lost");
    }
    drain(&mut core, &entry);
    entry.packager.lock().end();
    entry.changed.send_modify(|v| *v += 1);
    tracing::info!(reason = %why, "HLS output ended");
    while !is_idle() {
        tick.tick().await;
    }
    let mut streams = inner.streams.lock();
    if streams.get(&stream).is_some_and(|e| Arc::ptr_eq(e, &entry)) {
        streams.remove(&stream);
    }
}

fn drain(core: &mut RecorderCore, entry: &Entry) {
    let mut changed = false;
    while let Some(o) = core.poll_output() {
        let mut p = entry.packager.lock();
        match o {
            Output::Init(b) => p.set_init(b),
            Output::Fragment(f) => p.push(f),
            Output::Patch(_) => continue,
        }
        changed = true;
    }
    if changed {
        entry.changed.send_modify(|v| *v += 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_directives() {
        assert_eq!(parse_name("index.m3u8"), Some(Name::Playlist));
        assert_eq!(parse_name("init.mp4"), Some(Name::Init));
        assert_eq!(parse_name("seg12.m4s"), Some(Name::Segment(12)));
        assert_eq!(parse_name("part12.3.m4s"), Some(Name::Part(12, 3)));
        for bad in [
            "seg.m4s",
            "part1.m4s",
            "part1.x.m4s",
            "../x",
            "seg-1.m4s",
            "index.m3u",
        ] {
            assert_eq!(parse_name(bad), None, "{bad}");
        }
        assert_eq!(parse_directives("").unwrap(), None);
        assert_eq!(
            parse_directives("_HLS_msn=5&_HLS_part=2").unwrap(),
            Some(Want {
                msn: 5,
                part: Some(2)
            })
        );
        assert!(parse_directives("_HLS_part=2").is_err());
        assert!(parse_directives("_HLS_msn=x").is_err());
    }
}
