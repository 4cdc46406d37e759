//! RTSP ingest (`/pull/*`): an RTSP camera or server pulled with retina into the registry as
//! a named stream, which can then be played (WHEP, HLS, RTMP), recorded, forked or injected
//! into calls like a call's stream.
//!
//! Policy, documented in the README:
//! - `/pull/startup` creates the stream (409 if the name is taken) and DESCRIBEs the URL
//!   before it answers: a wrong URL, a refused connection, 401/404 from the server, or a
//!   server with none of the codecs the gateway carries (PCMU, PCMA, Opus, H264) is a 502
//!   naming the cause, and the stream is gone again.
//! - Then one task per pull ([`driver`]) sets up the first audio and the first video stream
//!   (TCP-interleaved by default), PLAYs, and publishes every RTP packet as it came. When the
//!   server goes away, an error ends the session, or no packet comes for `rtsp_timeout_s`,
//!   it reconnects with backoff (RECONNECTING), keeping the stream and its readers; after
//!   `rtsp_reconnect_max_attempts` failed attempts in a row (0 = never give up) it is FAILED
//!   and the stream ends.
//! - Credentials in the URL go to the server (digest or basic) and nowhere else: answers,
//!   logs and events show the URL without them.

pub mod driver;
pub mod source;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde::Serialize;
use thiserror::Error;
use tokio::sync::watch;
use tracing::Instrument;

use self::source::PullUrl;
use crate::error::RequestError;
use crate::events::{unix_ms, Event, EventBus};
use crate::registry::{Registry, RegistryError};

/// Ended pulls kept for `/pull/find`.
pub const KEEP_ENDED: usize = 200;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PullStatus {
    /// Described; setting up and waiting for the first packet.
    Pending,
    /// Media flows into the stream.
    Playing,
    /// The session ended or stalled; reconnecting with backoff.
    Reconnecting,
    /// Gave up after `rtsp_reconnect_max_attempts`; the stream ended.
    Failed,
    /// Terminated; the stream ended.
    Stopped,
}

impl PullStatus {
    pub fn is_final(self) -> bool {
        matches!(self, PullStatus::Failed | PullStatus::Stopped)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            PullStatus::Pending => "PENDING",
            PullStatus::Playing => "PLAYING",
            PullStatus::Reconnecting => "RECONNECTING",
            PullStatus::Failed => "FAILED",
            PullStatus::Stopped => "STOPPED",
        }
    }
}

/// RTP transport towards the RTSP server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PullTransport {
    /// Interleaved on the RTSP connection (works through NAT and firewalls; the default).
    Tcp,
    /// RTP/RTCP over UDP (retina's is experimental: no reordering; its ports are chosen by
    /// retina, outside `rtp_port_min`..`rtp_port_max`).
    Udp,
}

impl PullTransport {
    pub fn parse(text: &str) -> Result<PullTransport, String> {
        match text.trim().to_ascii_lowercase().as_str() {
            "tcp" | "" => Ok(PullTransport::Tcp),
            "udp" => Ok(PullTransport::Udp),
            other => Err(format!("transport {other:?}: expected tcp or udp")),
        }
    }
}

/// A pull as `/pull/*` returns it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PullInfo {
    pub media_session_id: String,
    pub stream_name: String,
    /// The RTSP URL, without credentials.
    pub uri: String,
    pub transport: PullTransport,
    pub status: PullStatus,
    /// Why the pull is not playing (last error, or why it ended).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The tracks pulled, e.g. `["PCMU/8000", "H264/90000"]`.
    pub tracks: Vec<String>,
    /// Unix time in milliseconds.
    pub created_at: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<u64>,
    /// Sessions re-established after the first.
    pub reconnects: u64,
    pub packets: u64,
    pub bytes: u64,
    /// RTP packets the server sent that never arrived (sequence gaps).
    pub lost: u64,
}

#[derive(Debug, Error)]
pub enum PullError {
    #[error("uri: {0}")]
    Uri(String),
    #[error("transport: {0}")]
    Transport(String),
    #[error("streamName: {0}")]
    StreamName(RegistryError),
    #[error("{0}")]
    Upstream(String),
    #[error("no such pull: {0:?}")]
    NotFound(String),
}

impl From<PullError> for RequestError {
    fn from(e: PullError) -> Self {
        match e {
            PullError::Uri(_) | PullError::Transport(_) => RequestError::BadRequest(e.to_string()),
            PullError::StreamName(RegistryError::AlreadyExists(_)) => {
                RequestError::Conflict(e.to_string())
            }
            PullError::StreamName(_) => RequestError::BadRequest(e.to_string()),
            PullError::Upstream(_) => RequestError::Upstream(e.to_string()),
            PullError::NotFound(_) => RequestError::NotFound(e.to_string()),
        }
    }
}

/// The `rtsp_*` properties.
#[derive(Debug, Clone)]
pub struct PullConfig {
    /// Connect, each RTSP request, and the longest silence of a playing session.
    pub timeout: Duration,
    pub reconnect_initial: Duration,
    pub reconnect_max: Duration,
    /// Failed attempts in a row before FAILED; 0: never give up.
    pub reconnect_max_attempts: u32,
}

impl Default for PullConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(10),
            reconnect_initial: Duration::from_millis(500),
            reconnect_max: Duration::from_secs(10),
            reconnect_max_attempts: 0,
        }
    }
}

impl PullConfig {
    pub fn from_config(cfg: &crate::config::Config) -> Self {
        Self {
            timeout: cfg.rtsp_timeout,
            reconnect_initial: Duration::from_millis(500),
            reconnect_max: Duration::from_secs(10),
            reconnect_max_attempts: cfg.rtsp_reconnect_max_attempts,
        }
    }
}

pub(crate) struct PullEntry {
    info: Mutex<PullInfo>,
    stop: watch::Sender<bool>,
    bus: EventBus,
}

impl PullEntry {
    pub(crate) fn set_status(&self, status: PullStatus, reason: Option<String>) {
        let (name, changed) = {
            let mut i = self.info.lock();
            let changed = i.status != status;
            i.status = status;
            if reason.is_some() || status == PullStatus::Playing {
                i.reason = reason.clone();
            }
            if status.is_final() {
                i.ended_at = Some(unix_ms());
            }
            (i.stream_name.clone(), changed)
        };
        if changed {
            tracing::info!(
                status = status.as_str(),
                reason = reason.as_deref().unwrap_or(""),
                "RTSP pull status"
            );
            self.bus.publish(Event::StreamStatusEvent {
                name,
                status: status.as_str().to_owned(),
                call_id: None,
                timestamp: unix_ms(),
            });
        }
    }

    pub(crate) fn update(&self, f: impl FnOnce(&mut PullInfo)) {
        f(&mut self.info.lock());
    }
}

struct Inner {
    registry: Registry,
    bus: EventBus,
    cfg: PullConfig,
    live: Mutex<HashMap<String, Arc<PullEntry>>>,
    ended: Mutex<VecDeque<PullInfo>>,
}

/// The pull table. Cheap to clone.
#[derive(Clone)]
pub struct PullManager {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for PullManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PullManager")
            .field("live", &self.inner.live.lock().len())
            .finish()
    }
}

impl PullManager {
    pub fn new(registry: Registry, bus: EventBus, cfg: PullConfig) -> Self {
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

    /// Creates `stream_name`, DESCRIBEs `uri` and starts pulling it. Must run inside a tokio
    /// runtime (the pull's task is spawned on it).
    pub async fn startup(
        &self,
        uri: &str,
        stream_name: &str,
        transport: PullTransport,
    ) -> Result<PullInfo, PullError> {
        let url = PullUrl::parse(uri).map_err(PullError::Uri)?;
        let publisher = self
            .inner
            .registry
            .create(stream_name, None)
            .map_err(PullError::StreamName)?;
        let shown = url.shown();
        // The first DESCRIBE answers the request: a wrong URL is the user's to hear now.
        let described = match driver::describe(&url, &self.inner.cfg).await {
            Ok(d) => d,
            Err(e) => {
                publisher.end(&format!("RTSP pull failed: {e}"));
                tracing::warn!(uri = %shown, stream = stream_name, error = %e, "RTSP pull refused");
                return Err(PullError::Upstream(format!("{shown}: {e}")));
            }
        };
        let id = crate::ids::random_token(16);
        let (stop_tx, stop_rx) = watch::channel(false);
        let entry = Arc::new(PullEntry {
            info: Mutex::new(PullInfo {
                media_session_id: id.clone(),
                stream_name: stream_name.to_owned(),
                uri: shown.clone(),
                transport,
                status: PullStatus::Pending,
                reason: None,
                tracks: Vec::new(),
                created_at: unix_ms(),
                ended_at: None,
                reconnects: 0,
                packets: 0,
                bytes: 0,
                lost: 0,
            }),
            stop: stop_tx,
            bus: self.inner.bus.clone(),
        });
        // Tracks are added before the answer, so a reader (recorder, WHEP) started right
        // after it sees them.
        let tracks = match driver::Tracks::add(&publisher, &described) {
            Ok(t) => t,
            Err(e) => {
                publisher.end(&format!("RTSP pull failed: {e}"));
                return Err(PullError::Upstream(format!("{shown}: {e}")));
            }
        };
        entry.update(|i| i.tracks = tracks.names());
        self.inner.live.lock().insert(id.clone(), entry.clone());
        let span = tracing::info_span!("pull", id = %id, stream = %stream_name);
        tracing::info!(parent: &span, uri = %shown, tracks = ?tracks.names(), "RTSP pull started");
        let this = self.clone();
        let cfg = self.inner.cfg.clone();
        let task_entry = entry.clone();
        tokio::spawn(
            async move {
                driver::run(
                    task_entry.clone(),
                    publisher,
                    url,
                    transport,
                    described,
                    tracks,
                    cfg,
                    stop_rx,
                )
                .await;
                this.retire(&task_entry);
            }
            .instrument(span),
        );
        let info = entry.info.lock().clone();
        Ok(info)
    }

    fn retire(&self, entry: &Arc<PullEntry>) {
        let info = entry.info.lock().clone();
        self.inner.live.lock().remove(&info.media_session_id);
        let mut ended = self.inner.ended.lock();
        ended.push_back(info);
        while ended.len() > KEEP_ENDED {
            ended.pop_front();
        }
    }

    /// Stops a pull by mediaSessionId or stream name: TEARDOWN, the stream ends, STOPPED.
    pub fn terminate(&self, key: &str) -> Result<PullInfo, PullError> {
        let entry = {
            let live = self.inner.live.lock();
            live.get(key).cloned().or_else(|| {
                live.values()
                    .find(|e| e.info.lock().stream_name == key)
                    .cloned()
            })
        };
        match entry {
            Some(e) => {
                let _ = e.stop.send(true);
                Ok(e.info.lock().clone())
            }
            None => self
                .find(key)
                .ok_or_else(|| PullError::NotFound(key.to_owned())),
        }
    }

    /// Stops every pull (shutdown).
    pub fn terminate_all(&self) {
        for e in self.inner.live.lock().values() {
            let _ = e.stop.send(true);
        }
    }

    /// A pull by mediaSessionId or stream name (the live one first, else the last ended).
    pub fn find(&self, key: &str) -> Option<PullInfo> {
        let live = self.inner.live.lock();
        if let Some(e) = live
            .get(key)
            .or_else(|| live.values().find(|e| e.info.lock().stream_name == key))
        {
            return Some(e.info.lock().clone());
        }
        drop(live);
        self.inner
            .ended
            .lock()
            .iter()
            .rev()
            .find(|i| i.media_session_id == key || i.stream_name == key)
            .cloned()
    }

    /// Live pulls (oldest first), then ended ones.
    pub fn find_all(&self) -> Vec<PullInfo> {
        let mut out: Vec<PullInfo> = self
            .inner
            .live
            .lock()
            .values()
            .map(|e| e.info.lock().clone())
            .collect();
        out.sort_by_key(|i| i.created_at);
        out.extend(self.inner.ended.lock().iter().cloned());
        out
    }

    pub fn live_count(&self) -> usize {
        self.inner.live.lock().len()
    }
}
