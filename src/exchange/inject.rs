//! Injections into call legs: a sound (a WAV, MP3 or Ogg Opus file, played once or looped) or
//! a live stream of the registry, each a [`PlaySource`] of the leg's player. Listed by
//! `/call/inject/find`, stopped by `/call/inject_stream/terminate` (streams) or
//! `/call/inject/stop` (any), and reported on the bus as `CallControlEvent`s `InjectStarted`,
//! `InjectFinished` (a sound played to its end, a stream that ended) and `InjectStopped`.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde::Serialize;
use utoipa::ToSchema;

use super::source::FeedStop;
use crate::call::manager::CallManager;
use crate::call::play::{PlayHandle, MIX_RATE};
use crate::error::RequestError;
use crate::events::{unix_ms, Event, EventBus};
use crate::media::mix::{PlaySource, Samples};
use crate::registry::Leg;

/// A sound fetched from a URL may be this large at most.
const MAX_SOUND_BYTES: usize = 50 << 20;
/// Injections `/call/inject/find` still shows after they ended.
const HISTORY: usize = 1000;

/// What `/call/inject_*` answer and `/call/inject/find` lists.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct InjectionInfo {
    pub injection_id: String,
    pub call_id: String,
    /// `caller` or `callee`: the leg that hears it.
    pub leg: String,
    /// `sound` or `stream`.
    pub kind: String,
    /// The sound file's name, the URL (without user info and query) or the stream's name.
    pub source: String,
    #[serde(rename = "loop")]
    pub looped: bool,
    /// PLAYING, FINISHED (played to its end, or the stream ended) or STOPPED.
    pub status: String,
    /// Unix time in milliseconds.
    pub created_at: u64,
}

/// Where a sound comes from.
#[derive(Debug, Clone)]
pub enum SoundSource {
    /// A file name inside `sound_dir`.
    File(String),
    Url(String),
}

struct Injection {
    info: InjectionInfo,
    handle: PlayHandle,
    stopped: FeedStop,
}

#[derive(Clone)]
pub struct InjectManager {
    inner: Arc<Inner>,
}

struct Inner {
    calls: CallManager,
    bus: EventBus,
    sound_dir: PathBuf,
    http: reqwest::Client,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    items: HashMap<String, Injection>,
    order: VecDeque<String>,
}

fn leg_name(l: Leg) -> &'static str {
    match l {
        Leg::Caller => "caller",
        _ => "callee",
    }
}

impl InjectManager {
    pub fn new(calls: CallManager, bus: EventBus, sound_dir: PathBuf) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(15))
            .build()
            .unwrap_or_default();
        Self {
            inner: Arc::new(Inner {
                calls,
                bus,
                sound_dir,
                http,
                state: Mutex::new(State::default()),
            }),
        }
    }

    /// The leg to play into: the one asked, else the call's first.
    fn leg(&self, call_id: &str, leg: Option<Leg>) -> Result<Leg, RequestError> {
        let call = self.inner.calls.call_media(call_id)?;
        match leg {
            None => Ok(call.legs[0]),
            Some(l) if call.legs.contains(&l) => Ok(l),
            Some(l) => Err(RequestError::BadRequest(format!(
                "leg: callId {call_id:?} has no {} leg",
                leg_name(l)
            ))),
        }
    }

    /// Plays a sound (WAV, MP3 or Ogg Opus) into a leg (once, or until stopped with `looped`).
    pub async fn inject_sound(
        &self,
        call_id: &str,
        leg: Option<Leg>,
        sound: SoundSource,
        looped: bool,
    ) -> Result<InjectionInfo, RequestError> {
        let leg = self.leg(call_id, leg)?;
        let (bytes, shown) = match &sound {
            SoundSource::File(name) => (self.read_sound(name).await?, name.clone()),
            SoundSource::Url(url) => (
                self.fetch_sound(url).await?,
                crate::mediastream::redact_url(url),
            ),
        };
        // A long MP3 or Opus file takes seconds of CPU to decode: off the runtime's workers.
        let pcm = tokio::task::spawn_blocking(move || crate::media::sound::decode_8k_mono(&bytes))
            .await
            .map_err(|e| RequestError::Internal(format!("decoding the sound: {e}")))?
            .map_err(|e| RequestError::BadRequest(format!("{}: {e}", field_of(&sound))))?;
        debug_assert_eq!(MIX_RATE, 8000);
        let source = Box::new(Samples::new(Arc::new(pcm), looped));
        self.start(call_id, leg, "sound", shown, looped, source, None)
    }

    async fn read_sound(&self, name: &str) -> Result<Vec<u8>, RequestError> {
        let ok = !name.is_empty()
            && Path::new(name)
                .components()
                .all(|c| matches!(c, std::path::Component::Normal(_)));
        if !ok {
            return Err(RequestError::BadRequest(format!(
                "soundFile: {name:?} must be a file name inside sound_dir (no / at the start, no ..)"
            )));
        }
        let path = self.inner.sound_dir.join(name);
        tokio::fs::read(&path).await.map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                RequestError::NotFound(format!(
                    "soundFile: {name:?} is not in sound_dir ({})",
                    self.inner.sound_dir.display()
                ))
            } else {
                RequestError::Internal(format!("soundFile: {name:?}: {e}"))
            }
        })
    }

    async fn fetch_sound(&self, url: &str) -> Result<Vec<u8>, RequestError> {
        let shown = crate::mediastream::redact_url(url);
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(RequestError::BadRequest(format!(
                "url: expected http:// or https://, got {shown:?}"
            )));
        }
        let fail = |e: String| RequestError::Upstream(format!("url {shown}: {e}"));
        let mut resp = self
            .inner
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| fail(e.without_url().to_string()))?;
        if !resp.status().is_success() {
            return Err(fail(format!("answered {}", resp.status())));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| fail(e.without_url().to_string()))?
        {
            body.extend_from_slice(&chunk);
            if body.len() > MAX_SOUND_BYTES {
                return Err(RequestError::BadRequest(format!(
                    "url {shown}: larger than {} MiB",
                    MAX_SOUND_BYTES >> 20
                )));
            }
        }
        Ok(body)
    }

    /// Plays another stream of the registry into a leg, live, until it ends or is stopped.
    pub fn inject_stream(
        &self,
        call_id: &str,
        leg: Option<Leg>,
        stream: &str,
    ) -> Result<InjectionInfo, RequestError> {
        let leg = self.leg(call_id, leg)?;
        let own = self.inner.calls.call_media(call_id)?.stream;
        if own == stream {
            return Err(RequestError::BadRequest(format!(
                "streamName: {stream:?} is this call's own stream (its party would hear itself)"
            )));
        }
        let (source, stop) = super::source::stream_source(
            self.inner.calls.registry(),
            stream,
            super::source::Pick::Mixed,
            "inject",
        )
        .map_err(|e| match e {
            e @ crate::registry::RegistryError::TooManyReaders { .. } => RequestError::from(e),
            e => RequestError::NotFound(format!("streamName: {e}")),
        })?;
        let info = self.start(
            call_id,
            leg,
            "stream",
            stream.to_string(),
            false,
            source,
            Some(stop),
        )?;
        Ok(info)
    }

    #[allow(clippy::too_many_arguments)]
    fn start(
        &self,
        call_id: &str,
        leg: Leg,
        kind: &str,
        source_name: String,
        looped: bool,
        source: Box<dyn PlaySource>,
        stopped: Option<FeedStop>,
    ) -> Result<InjectionInfo, RequestError> {
        let handle = self.inner.calls.play_into(call_id, leg, source)?;
        let info = InjectionInfo {
            injection_id: format!("inj-{}", crate::ids::random_token(12)),
            call_id: call_id.to_string(),
            leg: leg_name(leg).into(),
            kind: kind.into(),
            source: source_name,
            looped,
            status: "PLAYING".into(),
            created_at: unix_ms(),
        };
        tracing::info!(call_id, injection = %info.injection_id, kind, source = %info.source, leg = %info.leg, "injection started");
        self.event(&info, "InjectStarted", None);
        let stopped = stopped.unwrap_or_default();
        {
            let mut st = self.inner.state.lock();
            st.items.insert(
                info.injection_id.clone(),
                Injection {
                    info: info.clone(),
                    handle: handle.clone(),
                    stopped: stopped.clone(),
                },
            );
            st.order.push_back(info.injection_id.clone());
            while st.order.len() > HISTORY {
                if let Some(old) = st.order.pop_front() {
                    st.items.remove(&old);
                }
            }
        }
        // Watches for the end: a sound played out, a stream that ended, the leg gone.
        let me = self.clone();
        let id = info.injection_id.clone();
        tokio::spawn(async move {
            while handle.is_playing() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let was_stopped = !stopped.swap();
            let info = {
                let mut st = me.inner.state.lock();
                let Some(i) = st.items.get_mut(&id) else {
                    return;
                };
                i.info.status = if was_stopped { "STOPPED" } else { "FINISHED" }.into();
                i.info.clone()
            };
            let event = if was_stopped {
                "InjectStopped"
            } else {
                "InjectFinished"
            };
            tracing::info!(call_id = %info.call_id, injection = %id, status = %info.status, "injection ended");
            me.event(&info, event, None);
        });
        Ok(info)
    }

    fn event(&self, info: &InjectionInfo, event: &str, reason: Option<String>) {
        self.inner.bus.publish(Event::CallControlEvent {
            call_id: info.call_id.clone(),
            event: event.into(),
            leg: Some(info.leg.clone()),
            sip_status: None,
            reason: reason.or_else(|| Some(format!("{} {}", info.kind, info.source))),
            timestamp: unix_ms(),
        });
    }

    /// Stops injections: one by id, or a call's; `streams_only` keeps sounds playing, and
    /// `stream` names the one injected stream to stop.
    pub fn stop(
        &self,
        injection_id: Option<&str>,
        call_id: Option<&str>,
        streams_only: bool,
        stream: Option<&str>,
    ) -> Result<Vec<InjectionInfo>, RequestError> {
        let mut st = self.inner.state.lock();
        let hits: Vec<&mut Injection> = st
            .items
            .values_mut()
            .filter(|i| i.info.status == "PLAYING")
            .filter(|i| injection_id.is_none_or(|id| i.info.injection_id == id))
            .filter(|i| call_id.is_none_or(|c| i.info.call_id == c))
            .filter(|i| !streams_only || i.info.kind == "stream")
            .filter(|i| stream.is_none_or(|s| i.info.kind == "stream" && i.info.source == s))
            .collect();
        if hits.is_empty() {
            let what = match (injection_id, call_id, stream) {
                (Some(id), _, _) => format!("injectionId {id:?}: no playing injection"),
                (None, Some(c), Some(s)) => {
                    format!("callId {c:?}: stream {s:?} is not injected")
                }
                (None, Some(c), None) if streams_only => {
                    format!("callId {c:?}: no stream injected")
                }
                (None, Some(c), None) => format!("callId {c:?}: nothing injected"),
                _ => "nothing injected".into(),
            };
            return Err(RequestError::NotFound(what));
        }
        Ok(hits
            .into_iter()
            .map(|i| {
                i.stopped.stop();
                i.handle.stop();
                // Shown at once; the watcher raises InjectStopped.
                i.info.status = "STOPPED".into();
                i.info.clone()
            })
            .collect())
    }

    /// Injections of a call (or all), oldest first.
    pub fn find(&self, call_id: Option<&str>) -> Vec<InjectionInfo> {
        let st = self.inner.state.lock();
        let mut v: Vec<InjectionInfo> = st
            .items
            .values()
            .map(|i| i.info.clone())
            .filter(|i| call_id.is_none_or(|c| i.call_id == c))
            .collect();
        v.sort_by_key(|i| i.created_at);
        v
    }
}

fn field_of(s: &SoundSource) -> &'static str {
    match s {
        SoundSource::File(_) => "soundFile",
        SoundSource::Url(_) => "url",
    }
}
