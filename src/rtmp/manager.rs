//! The push table: `/push/*` starts, finds and stops pushes here. Each push is one task
//! ([`super::driver`]) reading one registry stream; this table only holds each push's public
//! state and its stop switch, behind a lock never held across an `.await`.
//!
//! Policy decisions, documented in the README:
//! - A push needs an existing stream (404 otherwise). A call's stream exists from
//!   `/call/startup` on, so a push can start before the call is answered; it waits in PENDING
//!   until the stream has a track it can send, then connects.
//! - Same stream and same final URL while a push is live (not STOPPED/FAILED) is 409; the same
//!   stream to other URLs is fine (one stream, many targets).
//! - Ended pushes stay visible to `/push/find` (the last [`KEEP_ENDED`]).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rand::Rng;
use serde::Serialize;
use thiserror::Error;
use tokio::sync::watch;
use tracing::Instrument;

use super::audio::AudioCodecPolicy;
use super::url::{publish_url, RtmpUrl, UrlError};
use crate::config::Config;
use crate::error::RequestError;
use crate::events::{unix_ms, Event, EventBus};
use crate::registry::{validate_name, Registry, RegistryError};

/// Ended pushes kept for `/push/find`.
pub const KEEP_ENDED: usize = 200;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PushStatus {
    /// Waiting for the stream to have a track that can be pushed.
    Pending,
    /// First connection in progress.
    Connecting,
    /// The server accepted the publish; media flows.
    Publishing,
    /// The connection was lost or refused; retrying with backoff.
    Reconnecting,
    /// Gave up after `rtmp_reconnect_max_attempts`.
    Failed,
    /// Terminated, or the stream ended.
    Stopped,
}

impl PushStatus {
    pub fn is_final(self) -> bool {
        matches!(self, PushStatus::Failed | PushStatus::Stopped)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            PushStatus::Pending => "PENDING",
            PushStatus::Connecting => "CONNECTING",
            PushStatus::Publishing => "PUBLISHING",
            PushStatus::Reconnecting => "RECONNECTING",
            PushStatus::Failed => "FAILED",
            PushStatus::Stopped => "STOPPED",
        }
    }
}

/// A push as `/push/*` returns it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PushInfo {
    pub media_session_id: String,
    pub stream_name: String,
    /// The URL published to (with the stream name appended unless rtmpTransponderFullUrl).
    pub rtmp_url: String,
    pub status: PushStatus,
    /// Why the push is not publishing (last error, or why it stopped).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Unix time in milliseconds.
    pub created_at: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<u64>,
    /// Connections lost (or refused) after the first publish attempt.
    pub reconnects: u64,
    /// "aac", "pcmu", "pcma" once known; absent while no audio is pushed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audio_codec: Option<String>,
    pub video: bool,
    pub audio_frames: u64,
    pub video_frames: u64,
    pub bytes_sent: u64,
    /// Media units the registry dropped because this push fell behind.
    pub dropped: u64,
}

#[derive(Debug, Error)]
pub enum PushError {
    #[error("rtmpUrl: {0}")]
    Url(#[from] UrlError),
    #[error("streamName: {0}")]
    StreamName(RegistryError),
    #[error("streamName {0:?}: no such stream")]
    NoStream(String),
    #[error("stream {stream:?} is already pushed to {url} (mediaSessionId {id})")]
    Exists {
        stream: String,
        url: String,
        id: String,
    },
    #[error("mediaSessionId {0:?}: no such push")]
    NotFound(String),
    #[error("{0}")]
    Full(RegistryError),
}

impl From<PushError> for RequestError {
    fn from(e: PushError) -> Self {
        match e {
            PushError::Url(_) | PushError::StreamName(_) => RequestError::BadRequest(e.to_string()),
            PushError::NoStream(_) | PushError::NotFound(_) => {
                RequestError::NotFound(e.to_string())
            }
            PushError::Exists { .. } => RequestError::Conflict(e.to_string()),
            PushError::Full(_) => RequestError::Unavailable(e.to_string()),
        }
    }
}

/// The `rtmp_*` properties.
#[derive(Debug, Clone)]
pub struct PushConfig {
    pub audio: AudioCodecPolicy,
    pub connect_timeout: Duration,
    pub reconnect_initial: Duration,
    pub reconnect_max: Duration,
    /// Failed connection attempts in a row before FAILED; 0: retry forever.
    pub reconnect_max_attempts: u32,
    /// Unsent bytes that mark the server as too slow: the connection is dropped and remade.
    pub max_pending_bytes: usize,
}

impl PushConfig {
    pub fn from_config(cfg: &Config) -> PushConfig {
        PushConfig {
            audio: cfg.rtmp_audio,
            connect_timeout: cfg.rtmp_connect_timeout,
            reconnect_initial: cfg.rtmp_reconnect_initial,
            reconnect_max: cfg.rtmp_reconnect_max,
            reconnect_max_attempts: cfg.rtmp_reconnect_max_attempts,
            max_pending_bytes: cfg.rtmp_send_queue_kb.saturating_mul(1024),
        }
    }
}

impl Default for PushConfig {
    fn default() -> Self {
        PushConfig::from_config(&Config::default())
    }
}

/// One push's shared state: what the task updates and the API reads.
pub(crate) struct PushEntry {
    pub(crate) info: Mutex<PushInfo>,
    pub(crate) call_id: Option<String>,
    stop: watch::Sender<bool>,
    bus: EventBus,
}

impl PushEntry {
    /// Sets the status (and reason) and publishes a StreamStatusEvent when it changed.
    pub(crate) fn set_status(&self, status: PushStatus, reason: Option<String>) {
        let (changed, info) = {
            let mut i = self.info.lock();
            let changed = i.status != status;
            if status == PushStatus::Reconnecting && changed {
                i.reconnects += 1;
            }
            i.status = status;
            if reason.is_some() || status == PushStatus::Publishing {
                i.reason = reason;
            }
            if status.is_final() && i.ended_at.is_none() {
                i.ended_at = Some(unix_ms());
            }
            (changed, i.clone())
        };
        if changed {
            tracing::info!(
                status = status.as_str(),
                reason = info.reason.as_deref().unwrap_or(""),
                "push status"
            );
            self.bus.publish(Event::RtmpPushStatusEvent {
                media_session_id: info.media_session_id,
                name: info.stream_name,
                status: status.as_str().to_owned(),
                rtmp_url: info.rtmp_url,
                reason: info.reason,
                call_id: self.call_id.clone(),
                timestamp: unix_ms(),
            });
        }
    }

    pub(crate) fn update(&self, f: impl FnOnce(&mut PushInfo)) {
        f(&mut self.info.lock());
    }
}

struct Inner {
    registry: Registry,
    bus: EventBus,
    cfg: PushConfig,
    live: Mutex<HashMap<String, Arc<PushEntry>>>,
    ended: Mutex<VecDeque<PushInfo>>,
}

/// The push table. Cheap to clone.
#[derive(Clone)]
pub struct PushManager {
    inner: Arc<Inner>,
}

/// A v4 UUID, the form WCS gives its mediaSessionIds.
fn new_session_id() -> String {
    let mut b: [u8; 16] = rand::thread_rng().gen();
    b[6] = (b[6] & 0x0F) | 0x40;
    b[8] = (b[8] & 0x3F) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

impl PushManager {
    pub fn new(registry: Registry, bus: EventBus, cfg: PushConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                registry,
                bus,
                cfg,
                live: Mutex::new(HashMap::new()),
                ended: Mutex::new(VecDeque::new()),
            }),
        }
    }

    /// Starts pushing `stream_name` to `rtmp_url` (with the stream name appended unless
    /// `full_url`). Must be called inside a tokio runtime.
    pub fn startup(
        &self,
        stream_name: &str,
        rtmp_url: &str,
        full_url: bool,
    ) -> Result<PushInfo, PushError> {
        validate_name(stream_name).map_err(PushError::StreamName)?;
        let url_text = publish_url(rtmp_url, stream_name, full_url);
        let url = RtmpUrl::parse(&url_text)?;
        let url_text = url.to_string();
        let id = new_session_id();
        let (stop_tx, stop_rx) = watch::channel(false);
        let entry;
        {
            // The check and the insert under one lock: two identical requests cannot both win.
            let mut live = self.inner.live.lock();
            if let Some(p) = live.values().find(|p| {
                let i = p.info.lock();
                i.stream_name == stream_name && i.rtmp_url == url_text && !i.status.is_final()
            }) {
                return Err(PushError::Exists {
                    stream: stream_name.to_owned(),
                    url: url_text,
                    id: p.info.lock().media_session_id.clone(),
                });
            }
            let reader = match self.inner.registry.subscribe(stream_name, "rtmp") {
                Ok(r) => r,
                Err(RegistryError::NotFound(_)) => {
                    return Err(PushError::NoStream(stream_name.to_owned()))
                }
                Err(e @ RegistryError::TooManyReaders { .. }) => return Err(PushError::Full(e)),
                Err(e) => return Err(PushError::StreamName(e)),
            };
            let call_id = self
                .inner
                .registry
                .find(stream_name)
                .and_then(|s| s.call_id);
            entry = Arc::new(PushEntry {
                info: Mutex::new(PushInfo {
                    media_session_id: id.clone(),
                    stream_name: stream_name.to_owned(),
                    rtmp_url: url_text.clone(),
                    status: PushStatus::Pending,
                    reason: None,
                    created_at: unix_ms(),
                    ended_at: None,
                    reconnects: 0,
                    audio_codec: None,
                    video: false,
                    audio_frames: 0,
                    video_frames: 0,
                    bytes_sent: 0,
                    dropped: 0,
                }),
                call_id,
                stop: stop_tx,
                bus: self.inner.bus.clone(),
            });
            live.insert(id.clone(), entry.clone());
            let span = tracing::info_span!("push", id = %id, stream = %stream_name);
            let this = self.clone();
            let cfg = self.inner.cfg.clone();
            let task_entry = entry.clone();
            tokio::spawn(
                async move {
                    super::driver::run(task_entry.clone(), reader, url, cfg, stop_rx).await;
                    this.retire(&task_entry);
                }
                .instrument(span),
            );
        }
        tracing::info!(id = %id, stream = %stream_name, target = %redact(&url_text), "push started");
        let info = entry.info.lock().clone();
        Ok(info)
    }

    fn retire(&self, entry: &Arc<PushEntry>) {
        let info = entry.info.lock().clone();
        self.inner.live.lock().remove(&info.media_session_id);
        let mut ended = self.inner.ended.lock();
        ended.push_back(info);
        while ended.len() > KEEP_ENDED {
            ended.pop_front();
        }
    }

    /// Stops a push: the task sends `deleteStream`, closes the connection and ends STOPPED.
    pub fn terminate(&self, id: &str) -> Result<PushInfo, PushError> {
        let entry = self.inner.live.lock().get(id).cloned();
        match entry {
            Some(e) => {
                let _ = e.stop.send(true);
                Ok(e.info.lock().clone())
            }
            None => self
                .find(id)
                .ok_or_else(|| PushError::NotFound(id.to_owned())),
        }
    }

    /// Stops every push (shutdown).
    pub fn terminate_all(&self) {
        for e in self.inner.live.lock().values() {
            let _ = e.stop.send(true);
        }
    }

    pub fn find(&self, id: &str) -> Option<PushInfo> {
        if let Some(e) = self.inner.live.lock().get(id) {
            return Some(e.info.lock().clone());
        }
        self.inner
            .ended
            .lock()
            .iter()
            .rev()
            .find(|i| i.media_session_id == id)
            .cloned()
    }

    /// Live pushes, then ended ones, optionally only those of `stream`; oldest first.
    pub fn find_all(&self, stream: Option<&str>) -> Vec<PushInfo> {
        let mut out: Vec<PushInfo> = self
            .inner
            .live
            .lock()
            .values()
            .map(|e| e.info.lock().clone())
            .collect();
        out.sort_by_key(|i| i.created_at);
        out.extend(self.inner.ended.lock().iter().cloned());
        if let Some(s) = stream {
            out.retain(|i| i.stream_name == s);
        }
        out
    }

    pub fn live_count(&self) -> usize {
        self.inner.live.lock().len()
    }
}

/// A publish URL for logs: stream keys are credentials on YouTube and Twitch.
pub fn redact(url: &str) -> String {
    match RtmpUrl::parse(url) {
        Ok(u) => {
            let shown: String = u.stream.chars().take(3).collect();
            format!("{}/{}***", u.tc_url(), shown)
        }
        Err(_) => "<invalid rtmp url>".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::TrackSpec;

    fn manager() -> (PushManager, Registry) {
        let reg = Registry::new(64);
        let cfg = PushConfig {
            reconnect_initial: Duration::from_millis(10),
            reconnect_max: Duration::from_millis(20),
            reconnect_max_attempts: 2,
            connect_timeout: Duration::from_millis(200),
            ..PushConfig::default()
        };
        (PushManager::new(reg.clone(), EventBus::new(64), cfg), reg)
    }

    #[tokio::test]
    async fn errors_name_the_field_and_duplicates_conflict() {
        let (m, reg) = manager();
        let e = m
            .startup("nope", "rtmp://127.0.0.1:9/live", false)
            .unwrap_err();
        assert!(matches!(e, PushError::NoStream(_)), "{e}");
        let e = m.startup("s1", "http://x/live", false).unwrap_err();
        assert!(e.to_string().starts_with("rtmpUrl:"), "{e}");
        let e = m.startup("bad name", "rtmp://h/live", false).unwrap_err();
        assert!(e.to_string().starts_with("streamName:"), "{e}");
        let _publisher = reg.create("s1", Some("c1".into())).unwrap();
        let p = m.startup("s1", "rtmp://127.0.0.1:9/live", false).unwrap();
        assert_eq!(p.rtmp_url, "rtmp://127.0.0.1:9/live/s1");
        assert_eq!(p.status, PushStatus::Pending);
        assert_eq!(p.media_session_id.len(), 36);
        let e = m
            .startup("s1", "rtmp://127.0.0.1:9/live/s1", true)
            .unwrap_err();
        assert!(matches!(e, PushError::Exists { .. }), "{e}");
        // Another target for the same stream is fine.
        m.startup("s1", "rtmp://127.0.0.1:9/other", false).unwrap();
        assert_eq!(m.find_all(Some("s1")).len(), 2);
        let t = m.terminate(&p.media_session_id).unwrap();
        assert_eq!(t.media_session_id, p.media_session_id);
        assert!(m.terminate("x").is_err());
    }

    #[tokio::test]
    async fn a_push_to_a_dead_server_fails_after_its_attempts() {
        let (m, reg) = manager();
        let mut events = m.inner.bus.subscribe();
        let publisher = reg.create("s2", None).unwrap();
        publisher
            .add_track(TrackSpec::audio("PCMU", 8000, 0))
            .unwrap();
        // A port nobody listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let p = m
            .startup("s2", &format!("rtmp://127.0.0.1:{port}/live"), false)
            .unwrap();
        let mut seen = Vec::new();
        while let Ok(Ok(ev)) = tokio::time::timeout(Duration::from_secs(5), events.recv()).await {
            let v = serde_json::to_value(&ev).unwrap();
            assert_eq!(v["type"], "StreamStatusEvent");
            assert_eq!(v["mediaSessionId"], p.media_session_id.as_str());
            seen.push(v["status"].as_str().unwrap().to_string());
            if v["status"] == "FAILED" {
                break;
            }
        }
        assert_eq!(
            seen.first().map(String::as_str),
            Some("CONNECTING"),
            "{seen:?}"
        );
        assert_eq!(seen.last().map(String::as_str), Some("FAILED"), "{seen:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
        let info = m.find(&p.media_session_id).unwrap();
        assert_eq!(info.status, PushStatus::Failed);
        assert!(info.reason.is_some());
        assert_eq!(m.live_count(), 0);
        // A FAILED push does not block a new one to the same target.
        m.startup("s2", &format!("rtmp://127.0.0.1:{port}/live"), false)
            .unwrap();
    }

    #[test]
    fn stream_keys_are_redacted_in_logs() {
        assert_eq!(
            redact("rtmp://a.rtmp.youtube.com/live2/abcd-efgh-ijkl"),
            "rtmp://a.rtmp.youtube.com:1935/live2/abc***"
        );
    }
}
