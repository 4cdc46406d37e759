//! Recording: a stream of the registry into a crash-safe fragmented MP4 file plus a JSON
//! sidecar (issue 3).
//!
//! Owns the recorder task and its file. Layout: [`fmp4`] (box writer), [`crate::media::h264`] (RTP
//! depacketiser), [`timeline`] (RTP → media time), [`core`] (the sans-IO recorder that ties
//! them together), [`names`] (file names from a template). This module is the thin tokio
//! driver: it reads the stream as a reader of kind `"recorder"`, feeds [`core::RecorderCore`],
//! and hands the bytes to a writer thread.
//!
//! It must not slow the call: the registry's bounded reader drops units for a slow recorder
//! (counted in [`RecordingInfo::units_dropped`]); fragments that the writer thread cannot take
//! in time are dropped and counted ([`RecordingInfo::fragments_dropped`]) — fMP4 fragments
//! carry their own decode times, so the file stays playable with a hole. A disk error ends the
//! recording as [`RecordingState::Failed`] with the error text; the stream is not touched.
//!
//! Crash safety: the header is written first, then each ~1 s `moof`+`mdat` fragment with one
//! `write` call (optionally `fsync`). A process killed at any time leaves a file that plays
//! up to its last whole fragment. A clean end also patches the header's durations and fsyncs.

pub mod core;
pub mod fmp4;
pub mod names;
pub mod timeline;

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use serde::Serialize;
use thiserror::Error;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tokio::sync::{oneshot, watch};

pub mod manager;

use self::core::{CoreError, Output, RecorderConfig, RecorderCore};
use crate::registry::{ReaderEvent, Registry, RegistryError};

/// The reader kind recordings subscribe with (visible in `/stream/find`).
pub const READER_KIND: &str = "recorder";

#[derive(Debug, Error)]
pub enum RecordError {
    #[error("stream {0:?} not found")]
    StreamNotFound(String),
    #[error("cannot subscribe to stream: {0}")]
    Registry(RegistryError),
    #[error("cannot create recording file {path}: {source}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("start_recording needs a tokio runtime")]
    NoRuntime,
    #[error(transparent)]
    Core(#[from] CoreError),
}

/// Who and what a recording belongs to; copied into [`RecordingInfo`] and the sidecar.
#[derive(Debug, Clone, Default)]
pub struct RecordingMeta {
    pub call_id: Option<String>,
    /// The SIP `Call-ID` of the call.
    pub sip_call_id: Option<String>,
    pub media_session_id: Option<String>,
    /// E.g. the SIP From and To URIs.
    pub participants: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct RecordOptions {
    pub core: RecorderConfig,
    /// `fsync` after every fragment (at most one disk flush per second per recording).
    /// Without it a killed process still leaves every written fragment (the page cache
    /// survives the process); only a power cut can lose the last seconds.
    pub fsync_each_fragment: bool,
    /// Fragments the writer thread may have queued before new ones are dropped.
    pub write_queue: usize,
}

impl Default for RecordOptions {
    fn default() -> Self {
        Self {
            core: RecorderConfig::default(),
            fsync_each_fragment: false,
            write_queue: 8,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RecordingState {
    Recording,
    Done,
    Failed,
    /// The gateway stopped (crash, kill, power loss) before the recording ended: found so at
    /// the next start. The file plays up to its last whole fragment.
    Interrupted,
}

/// A recording as `/recorder/find_all` and the sidecar show it.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RecordingInfo {
    pub file_name: String,
    pub stream: String,
    pub call_id: Option<String>,
    pub sip_call_id: Option<String>,
    pub media_session_id: Option<String>,
    pub participants: Vec<String>,
    pub state: RecordingState,
    pub error: Option<String>,
    /// RFC 3339, UTC.
    pub started_at: String,
    pub ended_at: Option<String>,
    pub duration_ms: u64,
    pub size_bytes: u64,
    pub codecs: Vec<String>,
    /// "stopped", "stream ended: <reason>", "failed: <error>".
    pub end_reason: Option<String>,
    pub fragments_written: u64,
    pub fragments_dropped: u64,
    /// Units the registry dropped because this recorder lagged.
    pub units_dropped: u64,
}

impl RecordingInfo {
    /// A recording of `stream` into `file` that starts now: state `recording`, no media yet.
    pub fn starting(stream: &str, file: &Path, meta: RecordingMeta) -> Self {
        Self {
            file_name: file
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            stream: stream.to_owned(),
            call_id: meta.call_id,
            sip_call_id: meta.sip_call_id,
            media_session_id: meta.media_session_id,
            participants: meta.participants,
            state: RecordingState::Recording,
            error: None,
            started_at: utc_now().1,
            ended_at: None,
            duration_ms: 0,
            size_bytes: 0,
            codecs: Vec::new(),
            end_reason: None,
            fragments_written: 0,
            fragments_dropped: 0,
            units_dropped: 0,
        }
    }
}

struct Shared {
    info: Mutex<RecordingInfo>,
    write_error: Mutex<Option<String>>,
    failed: AtomicBool,
    size: AtomicU64,
    fragments_written: AtomicU64,
}

/// A running or finished recording. Cheap to clone.
#[derive(Clone)]
pub struct RecordingHandle {
    shared: Arc<Shared>,
    path: PathBuf,
    stop: Arc<watch::Sender<bool>>,
    done: watch::Receiver<bool>,
}

impl std::fmt::Debug for RecordingHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordingHandle")
            .field("path", &self.path)
            .finish()
    }
}

impl RecordingHandle {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The sidecar's path (`<file stem>.json` next to the file).
    pub fn sidecar_path(&self) -> PathBuf {
        sidecar_path(&self.path)
    }

    pub fn info(&self) -> RecordingInfo {
        let mut i = self.shared.info.lock().clone();
        i.size_bytes = self.shared.size.load(Ordering::Relaxed);
        i.fragments_written = self.shared.fragments_written.load(Ordering::Relaxed);
        i
    }

    /// Asks the recording to finish (idempotent); see [`RecordingHandle::wait`].
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }

    /// Waits until the file is finalised and the sidecar written.
    pub async fn wait(&self) -> RecordingInfo {
        let mut done = self.done.clone();
        let _ = done.wait_for(|d| *d).await;
        self.info()
    }
}

pub fn sidecar_path(file: &Path) -> PathBuf {
    file.with_extension("json")
}

pub(crate) fn utc_now() -> (OffsetDateTime, String) {
    let t = OffsetDateTime::now_utc();
    let s = t.format(&Rfc3339).unwrap_or_default();
    (t, s)
}

/// Starts recording `stream` into `path` (created; an existing file is an error). Needs a
/// tokio runtime. Returns once the file exists; media is written by a background task
/// that ends on stream end, [`RecordingHandle::stop`] or a disk error.
pub fn start_recording(
    registry: &Registry,
    stream: &str,
    path: PathBuf,
    meta: RecordingMeta,
) -> Result<RecordingHandle, RecordError> {
    start_recording_with(registry, stream, path, meta, RecordOptions::default())
}

pub fn start_recording_with(
    registry: &Registry,
    stream: &str,
    path: PathBuf,
    meta: RecordingMeta,
    opts: RecordOptions,
) -> Result<RecordingHandle, RecordError> {
    let rt = tokio::runtime::Handle::try_current().map_err(|_| RecordError::NoRuntime)?;
    let reader = registry
        .subscribe(stream, READER_KIND)
        .map_err(|e| match e {
            RegistryError::NotFound(n) => RecordError::StreamNotFound(n),
            e => RecordError::Registry(e),
        })?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| RecordError::Create {
            path: dir.to_owned(),
            source,
        })?;
    }
    let file = File::options()
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|source| RecordError::Create {
            path: path.clone(),
            source,
        })?;
    // The sidecar says `recording` from the start: one still saying so at the next start
    // marks a recording the gateway never finished (RecordingManager::recover).
    let starting = RecordingInfo::starting(stream, &path, meta.clone());
    if let Err(e) = write_sidecar(&path, &starting) {
        tracing::warn!(file = %path.display(), error = %e, "cannot write the recording's sidecar");
    }
    spawn_recording(&rt, reader, stream, path, file, meta, opts)
}

/// Where the writer thread puts a recording's bytes: the file, or a stand-in in tests.
trait RecordSink: Write + Seek + Send + 'static {
    /// `fsync` (`all`: with metadata, as on close).
    fn sync(&mut self, all: bool) -> std::io::Result<()>;
}

impl RecordSink for File {
    fn sync(&mut self, all: bool) -> std::io::Result<()> {
        if all {
            self.sync_all()
        } else {
            self.sync_data()
        }
    }
}

/// The recording's writer thread and task, once its reader and file exist.
fn spawn_recording<S: RecordSink>(
    rt: &tokio::runtime::Handle,
    reader: crate::registry::Reader,
    stream: &str,
    path: PathBuf,
    file: S,
    meta: RecordingMeta,
    opts: RecordOptions,
) -> Result<RecordingHandle, RecordError> {
    let call_id = meta.call_id.clone().unwrap_or_default();
    let info = RecordingInfo::starting(stream, &path, meta);
    let shared = Arc::new(Shared {
        info: Mutex::new(info),
        write_error: Mutex::new(None),
        failed: AtomicBool::new(false),
        size: AtomicU64::new(0),
        fragments_written: AtomicU64::new(0),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let (done_tx, done_rx) = watch::channel(false);
    let (tx, rx) = sync_channel(opts.write_queue.max(1));
    let (written_tx, written_rx) = oneshot::channel();
    {
        let shared = shared.clone();
        let fsync = opts.fsync_each_fragment;
        let spawned = std::thread::Builder::new()
            .name("recorder-writer".into())
            .spawn(move || {
                write_loop(file, rx, &shared, fsync);
                let _ = written_tx.send(());
            });
        if let Err(source) = spawned {
            let _ = std::fs::remove_file(&path);
            return Err(RecordError::Create { path, source });
        }
    }
    let span = tracing::info_span!("recording", call_id = %call_id, stream = %stream, file = %path.display());
    tracing::info!(parent: &span, "recording started");
    let task = Task {
        core: RecorderCore::new(opts.core),
        shared: shared.clone(),
        tx,
        dropped_fragments: 0,
        path: path.clone(),
    };
    rt.spawn(tracing::Instrument::instrument(
        task.run(reader, stop_rx, written_rx, done_tx),
        span,
    ));
    Ok(RecordingHandle {
        shared,
        path,
        stop: Arc::new(stop_tx),
        done: done_rx,
    })
}

enum WriteOp {
    Fragment(Vec<u8>),
    Patch {
        offset: u64,
        bytes: Vec<u8>,
    },
    /// fsync and stop.
    Close,
}

impl From<Output> for WriteOp {
    fn from(o: Output) -> Self {
        match o {
            Output::Init(b) => WriteOp::Fragment(b),
            Output::Fragment(f) => WriteOp::Fragment(f.bytes),
            Output::Patch(p) => WriteOp::Patch {
                offset: p.offset,
                bytes: p.bytes,
            },
        }
    }
}

fn write_loop<S: RecordSink>(mut file: S, rx: Receiver<WriteOp>, shared: &Shared, fsync: bool) {
    let fail = |e: std::io::Error, what: &str| {
        let msg = format!("{what}: {e}");
        tracing::error!(error = %msg, "recording write failed");
        // The first error is the cause; later ones follow from it.
        shared.write_error.lock().get_or_insert(msg);
        shared.failed.store(true, Ordering::Release);
    };
    while let Ok(op) = rx.recv() {
        if shared.failed.load(Ordering::Acquire) && !matches!(op, WriteOp::Close) {
            continue; // drain so senders never block on a dead writer
        }
        match op {
            WriteOp::Fragment(b) => {
                let r = file.write_all(&b).and_then(|_| file.flush()).and_then(|_| {
                    if fsync {
                        file.sync(false)
                    } else {
                        Ok(())
                    }
                });
                match r {
                    Ok(()) => {
                        shared.size.fetch_add(b.len() as u64, Ordering::Relaxed);
                        shared.fragments_written.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => fail(e, "write"),
                }
            }
            WriteOp::Patch { offset, bytes } => {
                let r = file
                    .seek(SeekFrom::Start(offset))
                    .and_then(|_| file.write_all(&bytes))
                    .and_then(|_| file.seek(SeekFrom::End(0)).map(|_| ()));
                if let Err(e) = r {
                    fail(e, "finalise");
                }
            }
            WriteOp::Close => {
                if let Err(e) = file.sync(true) {
                    fail(e, "fsync");
                }
                break;
            }
        }
    }
}

struct Task {
    core: RecorderCore,
    shared: Arc<Shared>,
    tx: SyncSender<WriteOp>,
    dropped_fragments: u64,
    path: PathBuf,
}

impl Task {
    async fn run(
        mut self,
        mut reader: crate::registry::Reader,
        mut stop: watch::Receiver<bool>,
        written: oneshot::Receiver<()>,
        done: watch::Sender<bool>,
    ) {
        let mut reported_drops = 0;
        let mut failure: Option<String> = None;
        let mut video_track: Option<crate::registry::TrackId> = None;
        let reason = loop {
            let ev = tokio::select! {
                biased;
                r = stop.wait_for(|s| *s) => {
                    let _ = r;
                    break "stopped".to_owned();
                }
                ev = reader.recv() => ev,
            };
            let r = match ev {
                Some(ReaderEvent::Media(u)) => {
                    let waiting = self.core.stats.video_waiting_keyframe;
                    let r = self.core.handle_media(&u);
                    // Video is held until a keyframe: ask the sender for one (RTCP PLI; the
                    // RTP leg rate-limits the requests).
                    if self.core.stats.video_waiting_keyframe > waiting {
                        if let Some(v) = video_track {
                            reader.request_keyframe(v);
                        }
                    }
                    r
                }
                Some(ReaderEvent::TrackChanged(id, spec)) => {
                    if spec.kind == crate::registry::TrackKind::Video {
                        video_track = Some(id);
                        reader.request_keyframe(id);
                    }
                    self.core.handle_track(id, &spec);
                    Ok(())
                }
                Some(ReaderEvent::Ended(why)) => break format!("stream ended: {why}"),
                None => break "stream ended".to_owned(),
            };
            if let Err(e) = r {
                failure = Some(e.to_string());
                break format!("failed: {e}");
            }
            self.drain_nonblocking();
            if self.shared.failed.load(Ordering::Acquire) {
                let e = self.shared.write_error.lock().clone().unwrap_or_default();
                failure = Some(e.clone());
                break format!("failed: {e}");
            }
            let drops = reader.dropped();
            if drops != reported_drops {
                tracing::warn!(dropped = drops, "recorder lagging: registry dropped units");
                reported_drops = drops;
                self.shared.info.lock().units_dropped = drops;
            }
        };
        let units_dropped = reader.dropped();
        drop(reader);
        if failure.is_none() {
            if let Err(e) = self.core.finish(Some(Instant::now())) {
                failure = Some(e.to_string());
            }
        }
        // The end: the publisher is no longer involved, so waiting for the disk is fine.
        let mut ops = Vec::new();
        if failure.is_none() {
            while let Some(o) = self.core.poll_output() {
                ops.push(WriteOp::from(o));
            }
        }
        ops.push(WriteOp::Close);
        let tx = self.tx.clone();
        drop(self.tx);
        let _ = tokio::task::spawn_blocking(move || {
            for op in ops {
                if tx.send(op).is_err() {
                    break;
                }
            }
        })
        .await;
        let _ = written.await;
        if failure.is_none() && self.shared.failed.load(Ordering::Acquire) {
            failure = self.shared.write_error.lock().clone();
        }
        let wrote_media = self.core.duration_ms() > 0;
        if failure.is_none() && !wrote_media {
            failure = Some("no media was recorded".to_owned());
        }
        let (_, ended_at) = utc_now();
        let info = {
            let mut i = self.shared.info.lock();
            i.ended_at = Some(ended_at);
            i.duration_ms = self.core.duration_ms();
            i.codecs = self.core.codecs().to_vec();
            i.fragments_dropped = self.dropped_fragments;
            i.units_dropped = units_dropped;
            i.size_bytes = self.shared.size.load(Ordering::Relaxed);
            i.fragments_written = self.shared.fragments_written.load(Ordering::Relaxed);
            match &failure {
                Some(e) => {
                    i.state = RecordingState::Failed;
                    i.error = Some(e.clone());
                    i.end_reason = Some(if reason.starts_with("failed") {
                        reason.clone()
                    } else {
                        format!("failed: {e}")
                    });
                }
                None => {
                    i.state = RecordingState::Done;
                    i.end_reason = Some(reason.clone());
                }
            }
            i.clone()
        };
        let path = self.path.clone();
        let sidecar = tokio::task::spawn_blocking(move || write_sidecar(&path, &info)).await;
        match sidecar {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "recording sidecar not written"),
            Err(e) => tracing::error!(error = %e, "recording sidecar task failed"),
        }
        tracing::info!(
            reason = %reason,
            failed = failure.is_some(),
            duration_ms = self.core.duration_ms(),
            stats = ?self.core.stats,
            "recording finished"
        );
        let _ = done.send(true);
    }

    /// Hands finished bytes to the writer without waiting; a full queue loses the fragment.
    fn drain_nonblocking(&mut self) {
        let mut any = false;
        while let Some(o) = self.core.poll_output() {
            any = true;
            let op = WriteOp::from(o);
            match self.tx.try_send(op) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => {
                    self.dropped_fragments += 1;
                    self.shared.info.lock().fragments_dropped = self.dropped_fragments;
                    tracing::warn!(
                        dropped = self.dropped_fragments,
                        "disk too slow: recording fragment dropped"
                    );
                }
                Err(TrySendError::Disconnected(_)) => {
                    self.shared.failed.store(true, Ordering::Release);
                }
            }
        }
        if any {
            let mut i = self.shared.info.lock();
            i.duration_ms = self.core.duration_ms();
            if i.codecs.is_empty() {
                i.codecs = self.core.codecs().to_vec();
            }
        }
    }
}

/// Writes the sidecar atomically: a temporary file in the same directory, then a rename.
pub fn write_sidecar(file: &Path, info: &RecordingInfo) -> std::io::Result<()> {
    let target = sidecar_path(file);
    let mut tmp = target.clone().into_os_string();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let json = serde_json::to_vec_pretty(info).map_err(std::io::Error::other)?;
    let mut f = File::create(&tmp)?;
    f.write_all(&json)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, &target)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared() -> Shared {
        Shared {
            info: Mutex::new(RecordingInfo::starting(
                "",
                Path::new(""),
                RecordingMeta::default(),
            )),
            write_error: Mutex::new(None),
            failed: AtomicBool::new(false),
            size: AtomicU64::new(0),
            fragments_written: AtomicU64::new(0),
        }
    }

    #[test]
    fn disk_full_marks_the_recording_failed_and_keeps_draining() {
        let Ok(file) = File::options().write(true).open("/dev/full") else {
            return; // not Linux
        };
        let (tx, rx) = sync_channel(4);
        let s = shared();
        for _ in 0..3 {
            tx.send(WriteOp::Fragment(vec![0; 64 * 1024])).unwrap();
        }
        tx.send(WriteOp::Close).unwrap();
        write_loop(file, rx, &s, true);
        assert!(s.failed.load(Ordering::Acquire));
        let e = s.write_error.lock().clone().unwrap();
        assert!(e.starts_with("write:"), "{e}");
        assert_eq!(s.fragments_written.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn sidecar_is_replaced_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a.mp4");
        let mut info = shared().info.into_inner();
        info.stream = "s".into();
        write_sidecar(&file, &info).unwrap();
        info.state = RecordingState::Done;
        write_sidecar(&file, &info).unwrap();
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("a.json")).unwrap()).unwrap();
        assert_eq!(v["state"], "done");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().collect();
        assert_eq!(names.len(), 1, "temporary file left behind");
    }

    /// A disk that stops answering: every write waits until the test opens the gate.
    #[derive(Clone, Default)]
    struct StuckDisk {
        bytes: Arc<Mutex<std::io::Cursor<Vec<u8>>>>,
        open: Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>,
    }

    impl StuckDisk {
        fn release(&self) {
            *self.open.0.lock().unwrap() = true;
            self.open.1.notify_all();
        }
    }

    impl Write for StuckDisk {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            let (lock, cv) = &*self.open;
            let _open = cv.wait_while(lock.lock().unwrap(), |open| !*open).unwrap();
            self.bytes.lock().write(b)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Seek for StuckDisk {
        fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
            self.bytes.lock().seek(pos)
        }
    }

    impl RecordSink for StuckDisk {
        fn sync(&mut self, _all: bool) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stuck_disk_loses_fragments_loudly_and_never_blocks_the_stream() {
        use crate::registry::{MediaUnit, TrackSpec};
        let registry = Registry::new(4096);
        let publisher = registry.create("slow", None).unwrap();
        let track = publisher
            .add_track(TrackSpec::audio("PCMU", 8000, 0))
            .unwrap();
        let reader = registry.subscribe("slow", READER_KIND).unwrap();
        let disk = StuckDisk::default();
        let opts = RecordOptions {
            write_queue: 2,
            ..RecordOptions::default()
        };
        let rec = spawn_recording(
            &tokio::runtime::Handle::current(),
            reader,
            "slow",
            PathBuf::from("/nonexistent/slow.mp4"),
            disk.clone(),
            RecordingMeta::default(),
            opts,
        )
        .unwrap();
        // 20 s of a call's audio (its arrival times), published in about a second.
        let t0 = Instant::now();
        let started = Instant::now();
        for k in 0..1000u32 {
            publisher.publish(MediaUnit {
                track,
                payload_type: 0,
                seq: k as u16,
                timestamp: k * 160,
                marker: false,
                ssrc: 1,
                payload: bytes::Bytes::from_static(&[0xFF; 160]),
                arrival: t0 + std::time::Duration::from_millis(u64::from(k) * 20),
            });
            if k % 20 == 0 {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
        }
        let publishing = started.elapsed();
        let deadline = Instant::now() + std::time::Duration::from_secs(10);
        // Until the recorder has taken all 20 s (its drop count stops moving).
        let mut last = (u64::MAX, Instant::now());
        while Instant::now() < deadline {
            let dropped = rec.info().fragments_dropped;
            if dropped != last.0 {
                last = (dropped, Instant::now());
            } else if dropped >= 10 && last.1.elapsed() > std::time::Duration::from_millis(300) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let stuck = rec.info();
        assert!(stuck.fragments_dropped >= 10, "{stuck:?}");
        assert_eq!(stuck.state, RecordingState::Recording);
        assert_eq!(stuck.units_dropped, 0, "the stream lost media");
        assert!(
            publishing < std::time::Duration::from_secs(5),
            "publishing took {publishing:?}"
        );
        // The disk comes back: what was kept is written, and the file is finalised.
        disk.release();
        publisher.end("hangup");
        let done = rec.wait().await;
        assert_eq!(done.state, RecordingState::Done, "{done:?}");
        assert_eq!(done.fragments_dropped, stuck.fragments_dropped);
        let bytes = disk.bytes.lock().get_ref().clone();
        assert_eq!(&bytes[4..8], b"ftyp");
        let moofs = bytes.windows(4).filter(|w| *w == b"moof").count() as u64;
        assert!(moofs >= 2, "{moofs} fragments kept");
        assert_eq!(moofs + 1, done.fragments_written, "init + fragments");
    }
}
