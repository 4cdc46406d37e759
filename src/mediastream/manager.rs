//! The media streams by id: started over the API on an established call, at answer for
//! `/call/startup`'s `mediaStream` and for inbound calls by `inbound_media_stream_url`; the
//! call's DTMF routed to them; ended ones kept a while for `/call/stream/find`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::{broadcast, mpsc, Notify};
use tracing::Instrument;

use super::driver::{self, ConnectionConfig, Outbox, Shared};
use super::playout::Playout;
use super::wire::{StartInfo, TrackLabel};
use super::{Format, LegChoice, MediaStreamInfo, StreamSpec, TrackChoice, WireAudio, WireCodec};
use crate::call::manager::CallManager;
use crate::config::Config;
use crate::error::RequestError;
use crate::events::{unix_ms, Event, EventBus};
use crate::registry::Leg;

/// Ended streams `/call/stream/find` still shows.
const HISTORY: usize = 1000;

/// The `media_stream_*` and `inbound_media_stream_*` properties.
#[derive(Debug, Clone)]
pub struct MediaStreamConfig {
    pub connect_timeout: Duration,
    pub reconnect_initial: Duration,
    pub reconnect_max: Duration,
    pub reconnect_max_attempts: u32,
    /// Audio frames (20 ms) the outbox keeps for a slow server.
    pub send_queue_frames: usize,
    /// SO_SNDBUF of the agents' sockets in bytes (0: the kernel's).
    pub socket_send_buffer: usize,
    pub play_queue_ms: u64,
    pub inbound_url: Option<String>,
    pub inbound_format: Format,
}

impl MediaStreamConfig {
    pub fn from_config(cfg: &Config) -> Self {
        Self {
            connect_timeout: cfg.media_stream_connect_timeout,
            reconnect_initial: cfg.media_stream_reconnect_initial,
            reconnect_max: cfg.media_stream_reconnect_max,
            reconnect_max_attempts: cfg.media_stream_reconnect_max_attempts,
            send_queue_frames: (cfg.media_stream_send_queue.as_millis() as usize / 20).max(1),
            socket_send_buffer: cfg.media_stream_socket_send_buffer,
            play_queue_ms: cfg.media_stream_play_queue.as_millis() as u64,
            inbound_url: cfg.inbound_media_stream_url.clone(),
            inbound_format: if cfg.inbound_media_stream_format == "raw" {
                Format::Raw
            } else {
                Format::Twilio
            },
        }
    }
}

#[derive(Clone)]
pub struct MediaStreamManager {
    inner: Arc<Inner>,
}

struct Inner {
    calls: CallManager,
    bus: EventBus,
    cfg: MediaStreamConfig,
    tls: Arc<rustls::ClientConfig>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    streams: HashMap<String, Entry>,
    ended: VecDeque<String>,
    /// Streams to start when their call is answered (`/call/startup`'s `mediaStream`).
    pending: HashMap<String, Vec<StreamSpec>>,
    /// Calls whose answer already started their streams (a resume after hold is another
    /// ESTABLISHED).
    answered: HashSet<String>,
}

struct Entry {
    shared: Arc<Shared>,
    /// The legs whose party's voice the stream carries (their DTMF goes to it).
    speakers: Vec<Leg>,
    dtmf: mpsc::UnboundedSender<String>,
}

/// rustls with the system's roots, built once (wss:// servers).
fn tls_config() -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    for cert in found.certs {
        let _ = roots.add(cert);
    }
    if roots.is_empty() {
        tracing::warn!("no system CA certificates found: wss:// media streams will not verify");
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map(|b| b.with_root_certificates(roots).with_no_client_auth());
    match config {
        Ok(c) => Arc::new(c),
        // aws-lc-rs supports the default versions; this cannot fail in practice.
        Err(e) => panic!("rustls client config: {e}"),
    }
}

fn leg_of(c: LegChoice) -> Leg {
    match c {
        LegChoice::Caller => Leg::Caller,
        _ => Leg::Callee,
    }
}

fn choice_of(l: Leg) -> LegChoice {
    match l {
        Leg::Caller => LegChoice::Caller,
        _ => LegChoice::Callee,
    }
}

fn other(l: Leg) -> Leg {
    match l {
        Leg::Caller => Leg::Callee,
        _ => Leg::Caller,
    }
}

/// `MZ` and 32 hex digits.
fn stream_sid() -> String {
    format!("MZ{:032x}", rand::random::<u128>())
}

impl MediaStreamManager {
    pub fn new(calls: CallManager, bus: EventBus, cfg: MediaStreamConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                calls,
                bus,
                cfg,
                tls: tls_config(),
                state: Mutex::new(State::default()),
            }),
        }
    }

    /// Starts a stream on an established call (on the current tokio runtime).
    pub fn start(&self, spec: StreamSpec) -> Result<MediaStreamInfo, RequestError> {
        let call = self.inner.calls.call_media(&spec.call_id)?;
        let cid = &spec.call_id;
        let two_party = call.legs.len() > 1;
        let leg = match spec.leg {
            None => choice_of(call.legs[0]),
            Some(LegChoice::Both) if !two_party => {
                return Err(RequestError::BadRequest(format!(
                    "leg: both needs a two-party call; callId {cid:?} has one leg ({})",
                    leg_name(call.legs[0])
                )))
            }
            Some(LegChoice::Both) => LegChoice::Both,
            Some(c) if !call.legs.contains(&leg_of(c)) => {
                return Err(RequestError::BadRequest(format!(
                    "leg: callId {cid:?} has no {} leg",
                    leg_name(leg_of(c))
                )))
            }
            Some(c) => c,
        };
        let labels: Vec<(Leg, TrackLabel)> = match (leg, spec.track) {
            (LegChoice::Both, TrackChoice::Inbound) => vec![
                (Leg::Caller, TrackLabel::Inbound),
                (Leg::Callee, TrackLabel::Outbound),
            ],
            (LegChoice::Both, _) => {
                return Err(RequestError::BadRequest(
                    "track: with leg both the stream carries each party's inbound audio; \
                     use track inbound (or one leg with track both)"
                        .into(),
                ))
            }
            (_, TrackChoice::Inbound) => vec![(leg_of(leg), TrackLabel::Inbound)],
            (_, t) if !two_party => {
                return Err(RequestError::BadRequest(format!(
                    "track: {} needs a two-party call (what a one-leg call's party hears is \
                     the gateway's own audio); use inbound",
                    if t == TrackChoice::Both {
                        "both"
                    } else {
                        "outbound"
                    }
                )))
            }
            (_, TrackChoice::Outbound) => vec![(other(leg_of(leg)), TrackLabel::Outbound)],
            (_, TrackChoice::Both) => vec![
                (leg_of(leg), TrackLabel::Inbound),
                (other(leg_of(leg)), TrackLabel::Outbound),
            ],
        };
        if spec.format == Format::Raw && labels.len() > 1 {
            return Err(RequestError::BadRequest(
                "track: a raw stream carries one track (binary frames have no track label); \
                 use format twilio for two"
                    .into(),
            ));
        }
        if spec.bidirectional {
            if leg == LegChoice::Both {
                return Err(RequestError::BadRequest(
                    "bidirectional: the agent's audio plays into one leg; choose caller or callee"
                        .into(),
                ));
            }
            let st = self.inner.state.lock();
            if let Some(e) = st.streams.values().find(|e| {
                let i = e.shared.info.lock();
                i.call_id == *cid && i.bidirectional && !i.is_final()
            }) {
                return Err(RequestError::Conflict(format!(
                    "bidirectional: callId {cid:?} already has a bidirectional stream ({})",
                    e.shared.info.lock().stream_sid
                )));
            }
        }
        let reader = self
            .inner
            .calls
            .registry()
            .subscribe(&call.stream, "mediastream")
            .map_err(|e| match e {
                e @ crate::registry::RegistryError::TooManyReaders { .. } => RequestError::from(e),
                e => RequestError::Conflict(format!("callId {cid:?}: {e}")),
            })?;
        let sid = stream_sid();
        let info = MediaStreamInfo {
            stream_sid: sid.clone(),
            call_id: cid.clone(),
            url: super::redact_url(&spec.url),
            leg,
            track: spec.track,
            format: spec.format,
            codec: spec.audio.codec,
            sample_rate: spec.audio.rate,
            bidirectional: spec.bidirectional,
            status: "CONNECTING".into(),
            reason: None,
            reconnects: 0,
            frames_sent: 0,
            frames_dropped: 0,
            frames_played: 0,
            audio_refused_ms: 0,
            marks: 0,
            bad_messages: 0,
            created_at: unix_ms(),
            ended_at: None,
        };
        let shared = Arc::new(Shared {
            info: Mutex::new(info.clone()),
            outbox: Mutex::new(Outbox::new(self.inner.cfg.send_queue_frames)),
            wake: Notify::new(),
            playout: Mutex::new(Playout::new(spec.audio.rate, self.inner.cfg.play_queue_ms)),
            stop: Notify::new(),
            stopping: AtomicBool::new(false),
            format: spec.format,
            bidirectional: spec.bidirectional,
        });
        // The agent's audio is one more source of the leg's player (mixed with any other).
        let (handle, replay) = if spec.bidirectional {
            let handle = self.inner.calls.play_into(
                cid,
                leg_of(leg),
                Box::new(driver::AgentSource::new(shared.clone())),
            )?;
            let calls = self.inner.calls.clone();
            let (c, l, sh) = (cid.clone(), leg_of(leg), shared.clone());
            let replay: driver::Replay = Box::new(move || {
                calls
                    .play_into(&c, l, Box::new(driver::AgentSource::new(sh.clone())))
                    .ok()
            });
            (Some(handle), Some(replay))
        } else {
            (None, None)
        };
        let (dtmf_tx, dtmf_rx) = mpsc::unbounded_channel();
        let start = StartInfo {
            account_sid: "sipstream".into(),
            stream_sid: sid.clone(),
            call_sid: cid.clone(),
            tracks: labels.iter().map(|(_, t)| *t).collect(),
            custom_parameters: spec.custom_parameters.clone(),
        };
        let conn_cfg = ConnectionConfig {
            connect_timeout: self.inner.cfg.connect_timeout,
            reconnect_initial: self.inner.cfg.reconnect_initial,
            reconnect_max: self.inner.cfg.reconnect_max,
            reconnect_max_attempts: self.inner.cfg.reconnect_max_attempts,
            socket_send_buffer: self.inner.cfg.socket_send_buffer,
            tls: self.inner.tls.clone(),
        };
        self.inner.state.lock().streams.insert(
            sid.clone(),
            Entry {
                shared: shared.clone(),
                speakers: labels
                    .iter()
                    .filter(|(_, t)| *t == TrackLabel::Inbound)
                    .map(|(l, _)| *l)
                    .collect(),
                dtmf: dtmf_tx,
            },
        );
        let span = tracing::info_span!("media_stream", call_id = %cid, stream_sid = %sid);
        tracing::info!(parent: &span, url = %info.url, leg = ?leg, track = ?spec.track, format = ?spec.format, bidirectional = spec.bidirectional, "media stream starting");
        let pump = driver::pump(
            shared.clone(),
            reader,
            labels,
            handle,
            replay,
            dtmf_rx,
            Instant::now(),
        );
        let conn = driver::connection(
            shared.clone(),
            spec,
            start,
            conn_cfg,
            self.inner.bus.clone(),
        );
        let me = self.clone();
        tokio::spawn(
            async move {
                tokio::join!(pump, conn);
                me.retire(&sid);
            }
            .instrument(span),
        );
        Ok(info)
    }

    fn retire(&self, sid: &str) {
        let mut st = self.inner.state.lock();
        if let Some(e) = st.streams.get(sid) {
            // An ended stream is kept for find only: free its queues (up to minutes of audio).
            let _ = e.shared.playout.lock().clear();
            e.shared.outbox.lock().clear();
        }
        st.ended.push_back(sid.to_string());
        while st.ended.len() > HISTORY {
            if let Some(old) = st.ended.pop_front() {
                st.streams.remove(&old);
            }
        }
    }

    /// Starts `spec` when its call is answered (`/call/startup` with `mediaStream`). Call
    /// before starting the call, so that the answer cannot come first.
    pub fn start_on_answer(&self, spec: StreamSpec) {
        let mut st = self.inner.state.lock();
        st.pending
            .entry(spec.call_id.clone())
            .or_default()
            .push(spec);
    }

    /// Forgets what waits for `call_id`'s answer (its startup failed).
    pub fn cancel_pending(&self, call_id: &str) {
        self.inner.state.lock().pending.remove(call_id);
    }

    /// Stops one stream: `stop` goes to the server, then the socket closes.
    pub fn stop(&self, sid: &str) -> Result<MediaStreamInfo, RequestError> {
        let st = self.inner.state.lock();
        let e = st.streams.get(sid).ok_or_else(|| {
            RequestError::NotFound(format!("streamSid {sid:?}: no such media stream"))
        })?;
        e.shared.request_stop();
        let info = e.shared.snapshot();
        Ok(info)
    }

    /// Stops every live stream of a call; the list of them (empty: none was live).
    pub fn stop_call(&self, call_id: &str) -> Vec<MediaStreamInfo> {
        let st = self.inner.state.lock();
        st.streams
            .values()
            .filter(|e| {
                let i = e.shared.info.lock();
                i.call_id == call_id && !i.is_final()
            })
            .map(|e| {
                e.shared.request_stop();
                e.shared.snapshot()
            })
            .collect()
    }

    pub fn find(&self, sid: &str) -> Option<MediaStreamInfo> {
        let st = self.inner.state.lock();
        st.streams.get(sid).map(|e| e.shared.snapshot())
    }

    /// Streams of one call (or all), oldest first.
    pub fn find_all(&self, call_id: Option<&str>) -> Vec<MediaStreamInfo> {
        let st = self.inner.state.lock();
        let mut v: Vec<MediaStreamInfo> = st
            .streams
            .values()
            .map(|e| e.shared.snapshot())
            .filter(|i| call_id.is_none_or(|c| i.call_id == c))
            .collect();
        v.sort_by_key(|i| i.created_at);
        v
    }

    pub fn live_count(&self) -> usize {
        let st = self.inner.state.lock();
        st.streams
            .values()
            .filter(|e| !e.shared.info.lock().is_final())
            .count()
    }

    /// Stops every stream (gateway shutdown).
    pub fn stop_all(&self) {
        let st = self.inner.state.lock();
        for e in st.streams.values() {
            e.shared.request_stop();
        }
    }

    /// Follows the event bus: starts streams at their call's answer (and for inbound calls
    /// by `inbound_media_stream_url`), routes DTMF to the streams that carry that leg.
    pub async fn run(self) {
        let mut rx = self.inner.bus.subscribe();
        loop {
            let ev = match rx.recv().await {
                Ok(ev) => ev,
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "media streams: event bus lagged");
                    continue;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            };
            match ev {
                Event::DtmfEvent {
                    call_id,
                    leg,
                    digit,
                    ..
                } => {
                    let st = self.inner.state.lock();
                    for e in st.streams.values() {
                        let live = {
                            let i = e.shared.info.lock();
                            i.call_id == call_id && !i.is_final()
                        };
                        if live && e.speakers.iter().any(|l| leg_name(*l) == leg) {
                            let _ = e.dtmf.send(digit.clone());
                        }
                    }
                }
                Event::CallStatusEvent {
                    call_id, status, ..
                } => match status.as_str() {
                    "ESTABLISHED" => self.on_answer(&call_id),
                    "FINISH" | "FAILED" | "BUSY" => {
                        let mut st = self.inner.state.lock();
                        st.pending.remove(&call_id);
                        st.answered.remove(&call_id);
                    }
                    _ => {}
                },
                _ => {}
            }
        }
    }

    fn on_answer(&self, call_id: &str) {
        let specs = {
            let mut st = self.inner.state.lock();
            if !st.answered.insert(call_id.to_string()) {
                return;
            }
            let mut specs = st.pending.remove(call_id).unwrap_or_default();
            if specs.is_empty() {
                if let Some(url) = &self.inner.cfg.inbound_url {
                    let inbound = self
                        .inner
                        .calls
                        .find(call_id)
                        .is_some_and(|c| c.direction == "inbound" && c.exchange_of.is_none());
                    if inbound {
                        specs.push(StreamSpec {
                            call_id: call_id.to_string(),
                            url: url.clone(),
                            leg: None,
                            track: TrackChoice::Inbound,
                            format: self.inner.cfg.inbound_format,
                            audio: WireAudio {
                                codec: WireCodec::Pcmu,
                                rate: 8000,
                            },
                            bidirectional: true,
                            headers: Vec::new(),
                            custom_parameters: serde_json::Map::new(),
                        });
                    }
                }
            }
            specs
        };
        for spec in specs {
            let url = super::redact_url(&spec.url);
            if let Err(e) = self.start(spec) {
                tracing::warn!(%call_id, error = %e, "media stream not started at answer");
                self.inner.bus.publish(Event::MediaStreamEvent {
                    call_id: call_id.to_string(),
                    stream_sid: String::new(),
                    event: "MediaStreamFailed".into(),
                    url,
                    reconnects: 0,
                    reason: Some(e.to_string()),
                    timestamp: unix_ms(),
                });
            }
        }
    }
}

fn leg_name(l: Leg) -> &'static str {
    match l {
        Leg::Caller => "caller",
        _ => "callee",
    }
}
