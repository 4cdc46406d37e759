//! The table of recordings the API shows: starts recordings of live streams (by the API, by
//! `record: true` on a call, or for every SIP stream with `sip_record_stream`), stops them,
//! lists them, and resolves download names inside `record_dir` only. Each recording's end
//! (done or failed) is published as a `RecordingStatusEvent`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use super::names::{file_name, NameVars};
use super::{
    start_recording_with, RecordError, RecordOptions, RecordingHandle, RecordingInfo,
    RecordingMeta, RecordingState,
};
use crate::error::RequestError;
use crate::events::{unix_ms, Event, EventBus};
use crate::registry::Registry;

/// How many finished recordings `/recorder/find_all` keeps listing (files stay on disk).
const HISTORY: usize = 1000;

#[derive(Clone)]
pub struct RecordingManager {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    dir: PathBuf,
    template: String,
    fsync: bool,
    bus: EventBus,
    table: Mutex<Table>,
    /// Recordings of earlier runs found in `record_dir` at start ([`RecordingManager::recover`]).
    past: Mutex<Vec<RecordingInfo>>,
}

#[derive(Default)]
struct Table {
    /// mediaSessionId → recording, in start order for listing.
    by_id: HashMap<String, (u64, RecordingHandle)>,
    next: u64,
}

impl RecordingManager {
    pub fn new(
        registry: Registry,
        dir: PathBuf,
        template: String,
        fsync: bool,
        bus: EventBus,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                registry,
                dir,
                template,
                fsync,
                bus,
                table: Mutex::new(Table::default()),
                past: Mutex::new(Vec::new()),
            }),
        }
    }

    /// At start: reads the sidecars of `record_dir`. One still `recording` belongs to a run
    /// that stopped without finishing it (crash, kill, power loss): it becomes `interrupted`,
    /// with the file's size, its last write as the end and the time between as the
    /// duration (media is written as it comes), and its sidecar is rewritten. Leftover
    /// temporary sidecars are removed. The newest `HISTORY` sidecars found are listed by
    /// `find_all`, oldest first. Returns how many were interrupted.
    pub fn recover(&self) -> usize {
        let Ok(entries) = std::fs::read_dir(&self.inner.dir) else {
            return 0;
        };
        let mut past = Vec::new();
        let mut interrupted = 0;
        for entry in entries.flatten() {
            let path = entry.path();
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            if name.ends_with(".json.tmp") {
                let _ = std::fs::remove_file(&path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let Ok(text) = std::fs::read(&path) else {
                continue;
            };
            let Ok(mut info) = serde_json::from_slice::<RecordingInfo>(&text) else {
                tracing::warn!(file = %path.display(), "not a recording sidecar; ignored");
                continue;
            };
            if info.state == RecordingState::Recording {
                let media = self.inner.dir.join(&info.file_name);
                let meta = std::fs::metadata(&media).ok();
                info.size_bytes = meta.as_ref().map_or(0, |m| m.len());
                let ended = meta
                    .and_then(|m| m.modified().ok())
                    .map(time::OffsetDateTime::from);
                let started = time::OffsetDateTime::parse(
                    &info.started_at,
                    &time::format_description::well_known::Rfc3339,
                )
                .ok();
                if let (Some(s), Some(e)) = (started, ended) {
                    info.duration_ms = u64::try_from((e - s).whole_milliseconds()).unwrap_or(0);
                }
                info.ended_at = ended.and_then(|e| {
                    e.format(&time::format_description::well_known::Rfc3339)
                        .ok()
                });
                info.state = RecordingState::Interrupted;
                info.end_reason = Some(
                    "interrupted: the gateway stopped before the recording ended (crash, kill \
                     or power loss); the file plays up to its last whole fragment"
                        .into(),
                );
                let file = self.inner.dir.join(&info.file_name);
                if let Err(e) = super::write_sidecar(&file, &info) {
                    tracing::warn!(file = %path.display(), error = %e, "cannot mark the sidecar interrupted");
                }
                interrupted += 1;
            }
            past.push(info);
        }
        past.sort_by(|a, b| a.started_at.cmp(&b.started_at));
        // Listed like this run's finished ones: the newest HISTORY (the files all stay).
        let listed = past.len();
        if listed > HISTORY {
            past.drain(..listed - HISTORY);
        }
        tracing::info!(found = listed, interrupted, dir = %self.inner.dir.display(), "recordings of earlier runs");
        *self.inner.past.lock() = past;
        interrupted
    }

    /// Waits until no recording is running (each finishes its file when its stream ends),
    /// or `limit`; returns how many are still running.
    pub async fn wait_idle(&self, limit: Duration) -> usize {
        let handles: Vec<RecordingHandle> = self
            .inner
            .table
            .lock()
            .by_id
            .values()
            .map(|(_, h)| h.clone())
            .collect();
        // `wait` returns once the file is finalised and its sidecar written.
        let all = futures_util::future::join_all(handles.iter().map(RecordingHandle::wait));
        if tokio::time::timeout(limit, all).await.is_ok() {
            return 0;
        }
        handles
            .iter()
            .filter(|h| h.info().state == RecordingState::Recording)
            .count()
    }

    /// Starts recording `stream`. 404 for an unknown stream, 409 when it is already being
    /// recorded (stop it first: a second file of the same stream is almost always a mistake).
    pub fn start(&self, stream: &str, meta: RecordingMeta) -> Result<RecordingInfo, RequestError> {
        let inner = &self.inner;
        if inner.registry.find(stream).is_none() {
            return Err(RequestError::NotFound(format!(
                "name {stream:?}: no such stream"
            )));
        }
        if let Some(active) = self.active_for(stream) {
            return Err(RequestError::Conflict(format!(
                "stream {stream:?} is already being recorded (mediaSessionId {:?})",
                active.media_session_id.unwrap_or_default()
            )));
        }
        let id = meta
            .media_session_id
            .clone()
            .unwrap_or_else(|| format!("rec-{}", crate::ids::random_token(12)));
        let name = file_name(
            &inner.template,
            &NameVars {
                stream_name: stream,
                call_id: meta.call_id.as_deref(),
                media_session_id: Some(&id),
                start: time::OffsetDateTime::now_utc(),
            },
        );
        let path = unique_path(&inner.dir, &name);
        let meta = RecordingMeta {
            media_session_id: Some(id.clone()),
            ..meta
        };
        let opts = RecordOptions {
            fsync_each_fragment: inner.fsync,
            ..RecordOptions::default()
        };
        let (file, failed_meta) = (path.clone(), meta.clone());
        let handle = start_recording_with(&inner.registry, stream, path, meta, opts).map_err(
            |e| match e {
                RecordError::StreamNotFound(n) => {
                    RequestError::NotFound(format!("name {n:?}: no such stream"))
                }
                RecordError::Create { path, source } => {
                    // Disk and permission errors are the operator's to see, with the path.
                    let error = format!("cannot create {}: {source}", path.display());
                    self.publish(&failed_info(stream, &file, failed_meta, &error));
                    RequestError::Internal(format!("recording not started: {error}"))
                }
                RecordError::Registry(
                    e @ crate::registry::RegistryError::TooManyReaders { .. },
                ) => RequestError::from(e),
                other => RequestError::Internal(other.to_string()),
            },
        )?;
        let info = handle.info();
        {
            let mut t = inner.table.lock();
            t.next += 1;
            let n = t.next;
            t.by_id.insert(id.clone(), (n, handle.clone()));
            if t.by_id.len() > HISTORY {
                let oldest = t
                    .by_id
                    .iter()
                    .filter(|(_, (_, h))| h.info().state != RecordingState::Recording)
                    .min_by_key(|(_, (n, _))| *n)
                    .map(|(k, _)| k.clone());
                if let Some(k) = oldest {
                    t.by_id.remove(&k);
                }
            }
        }
        tracing::info!(call_id = info.call_id.as_deref().unwrap_or(""), %stream, media_session_id = %id, file = %info.file_name, "recording started");
        self.publish(&info);
        let this = self.clone();
        tokio::spawn(async move {
            let done = handle.wait().await;
            tracing::info!(call_id = done.call_id.as_deref().unwrap_or(""), stream = %done.stream, file = %done.file_name, state = ?done.state, duration_ms = done.duration_ms, reason = done.end_reason.as_deref().unwrap_or(""), "recording ended");
            this.publish(&done);
        });
        Ok(info)
    }

    /// Stops the recording with this mediaSessionId, or the active recording of the stream
    /// with this name, and waits (up to 5 s) for the file to be finalised.
    pub async fn stop(&self, id_or_stream: &str) -> Result<RecordingInfo, RequestError> {
        let handle = {
            let t = self.inner.table.lock();
            t.by_id
                .get(id_or_stream)
                .map(|(_, h)| h.clone())
                .or_else(|| {
                    t.by_id
                        .values()
                        .map(|(_, h)| h)
                        .find(|h| {
                            let i = h.info();
                            i.stream == id_or_stream && i.state == RecordingState::Recording
                        })
                        .cloned()
                })
        };
        let handle = handle.ok_or_else(|| {
            RequestError::NotFound(format!(
                "{id_or_stream:?}: no such recording or recorded stream"
            ))
        })?;
        handle.stop();
        Ok(
            match tokio::time::timeout(Duration::from_secs(5), handle.wait()).await {
                Ok(info) => info,
                Err(_) => handle.info(),
            },
        )
    }

    /// Every recording, oldest first: those of earlier runs (from their sidecars), then
    /// this run's.
    pub fn find_all(&self) -> Vec<RecordingInfo> {
        let t = self.inner.table.lock();
        let mut all: Vec<(u64, RecordingInfo)> =
            t.by_id.values().map(|(n, h)| (*n, h.info())).collect();
        all.sort_by_key(|(n, _)| *n);
        let mut out = self.inner.past.lock().clone();
        out.extend(all.into_iter().map(|(_, i)| i));
        out
    }

    fn active_for(&self, stream: &str) -> Option<RecordingInfo> {
        let t = self.inner.table.lock();
        t.by_id
            .values()
            .map(|(_, h)| h.info())
            .find(|i| i.stream == stream && i.state == RecordingState::Recording)
    }

    /// The path of a downloadable file: a plain name (no separators, no dot-dot) of an
    /// `.mp4` or `.json` inside `record_dir`.
    pub fn download_path(&self, name: &str) -> Result<PathBuf, RequestError> {
        let plain = !name.is_empty()
            && !name.starts_with('.')
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
            && (name.ends_with(".mp4") || name.ends_with(".json"));
        if !plain {
            return Err(RequestError::NotFound(format!(
                "{name:?}: no such recording"
            )));
        }
        let path = self.inner.dir.join(name);
        if !path.is_file() {
            return Err(RequestError::NotFound(format!(
                "{name:?}: no such recording"
            )));
        }
        Ok(path)
    }

    fn publish(&self, info: &RecordingInfo) {
        self.inner.bus.publish(Event::RecordingStatusEvent {
            recording: Box::new(info.clone()),
            timestamp: unix_ms(),
        });
    }
}

/// `name`, or `name` with `-2`, `-3`... before the extension when the file exists.
fn unique_path(dir: &Path, name: &str) -> PathBuf {
    let first = dir.join(name);
    if !first.exists() {
        return first;
    }
    let stem = name.trim_end_matches(".mp4");
    (2..1000)
        .map(|n| dir.join(format!("{stem}-{n}.mp4")))
        .find(|p| !p.exists())
        .unwrap_or(first)
}

fn failed_info(stream: &str, file: &Path, meta: RecordingMeta, error: &str) -> RecordingInfo {
    RecordingInfo {
        state: RecordingState::Failed,
        error: Some(error.to_owned()),
        end_reason: Some(format!("failed: {error}")),
        ..RecordingInfo::starting(stream, file, meta)
    }
}
