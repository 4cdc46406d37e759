//! The call manager: turns a validated `/call/startup` into a SIP call whose media becomes a
//! stream, accepts INVITEs addressed to the gateway as inbound calls (by the `inbound_*`
//! properties), follows the UA's events, and owns each call's media legs and stream publisher.
//!
//! It is the only place that joins SIP signalling, RTP and the registry, and the one that
//! decides every SDP answer: offers from the far end come up from the UA as
//! `UaEvent::RemoteOffer` and are answered here (a subset of the offer, our hold state, an
//! `o=` version that moves only when our description changes). The call table sits
//! behind one mutex that is never held across an `.await`; media work (binding ports,
//! stopping legs) happens outside it.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{mpsc, Notify};
use tracing::Instrument;

use super::core::{
    control_event, hold_status, recorded_call, CallTable, Effect, Entry, LegState, Now, Routed,
    Timeouts,
};
use super::leg::{CallLeg, MediaLeg};
use super::model::{CallInfo, CallSpec, ExchangeLink};
use crate::config::Config;
use crate::error::RequestError;
use crate::events::{unix_ms, Event, EventBus};
use crate::media::transcode::AudioCodec;
use crate::registry::{Leg, Publisher, Registry, RegistryError, TrackKind, TrackSpec};
use crate::rtp::driver::{spawn_leg_on, LegUpdate};
use crate::rtp::ports::{BoundPair, PortPool};
use crate::rtp::session::{silence_payload, SessionConfig};
use crate::rtp::threads::MediaThreads;
use crate::sip::driver::{local_ip_for, SipHandle};
use crate::sip::sdp::{self, Direction, MediaKind, SessionDescription};
use crate::sip::ua::{
    Account, CallKey, CallPhase, Command, IncomingCall, PlaceCall, RegStatus, Route, UaEvent,
    Warning,
};

/// A call's stream and legs, for outputs that follow its legs ([`CallManager::call_media`]).
#[derive(Debug, Clone)]
pub struct CallMedia {
    pub stream: String,
    pub legs: Vec<Leg>,
    /// `outbound` or `inbound`.
    pub direction: String,
}

/// What the shell does once the call table is unlocked: a core effect, or the end of a
/// call's media taken out of the table.
enum After {
    Effect(Effect),
    /// SIPREC's snapshot of the call, taken under the lock.
    Siprec(super::siprec::RecordedCall),
    Release {
        publisher: Option<Arc<Publisher>>,
        media: Vec<MediaLeg>,
        why: &'static str,
    },
}

#[derive(Clone)]
pub struct CallManager {
    pub(super) inner: Arc<Inner>,
}

pub(super) struct Inner {
    pub(super) cfg: Arc<Config>,
    pub(super) sip: SipHandle,
    pub(super) registry: Registry,
    pub(super) ports: PortPool,
    pub(super) bus: EventBus,
    pub(super) state: Mutex<CallTable>,
    /// Woken when a timer of the call core is armed from outside its event loop.
    timers_changed: Notify,
    pub(super) next_key: Arc<AtomicU64>,
    /// SIPREC, fed the calls' phases and its dialogs' events.
    pub(super) siprec: super::siprec::SiprecController,
    pub(super) idle: Notify,
    pub(super) recordings: crate::record::manager::RecordingManager,
    /// Where RTP legs run.
    media: MediaThreads,
    /// RFC 3263 lookups of next hops.
    locator: crate::sip::locate::Locator,
    /// `hold_music_file`, 8 kHz mono.
    hold_music: Option<Arc<Vec<i16>>>,
}

impl CallManager {
    pub fn new(
        cfg: Arc<Config>,
        sip: SipHandle,
        registry: Registry,
        ports: PortPool,
        bus: EventBus,
        recordings: crate::record::manager::RecordingManager,
        media: MediaThreads,
    ) -> Self {
        let locator = crate::sip::locate::Locator::new(&cfg.sip_dns_servers);
        let timeouts = Timeouts {
            ring: cfg.inbound_ring_timeout,
            transfer: cfg.transfer_timeout,
        };
        let next_key = Arc::new(AtomicU64::new(1));
        // Checked when the configuration was loaded; a file gone since then means silence.
        let hold_music = cfg.hold_music_file.as_ref().and_then(|p| {
            match std::fs::read(p)
                .map_err(|e| e.to_string())
                .and_then(|d| crate::media::sound::decode_8k_mono(&d))
            {
                Ok(s) => Some(Arc::new(s)),
                Err(e) => {
                    tracing::error!(file = %p.display(), error = %e, "hold music not loaded");
                    None
                }
            }
        });
        let siprec = super::siprec::SiprecController::new(
            cfg.clone(),
            sip.clone(),
            registry.clone(),
            ports.clone(),
            bus.clone(),
            next_key.clone(),
        );
        Self {
            inner: Arc::new(Inner {
                siprec,
                hold_music,
                media,
                locator,
                cfg,
                sip,
                registry,
                ports,
                bus,
                state: Mutex::new(CallTable::new(timeouts)),
                timers_changed: Notify::new(),
                next_key,
                idle: Notify::new(),
                recordings,
            }),
        }
    }

    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    pub fn sip(&self) -> &SipHandle {
        &self.inner.sip
    }

    pub fn recordings(&self) -> &crate::record::manager::RecordingManager {
        &self.inner.recordings
    }

    pub fn ports(&self) -> &PortPool {
        &self.inner.ports
    }

    pub fn active_calls(&self) -> usize {
        self.inner.state.lock().active
    }

    /// Places a call. Returns the call object with status PENDING; progress follows as events.
    pub async fn startup(&self, mut spec: CallSpec) -> Result<CallInfo, RequestError> {
        let inner = &self.inner;
        spec.srtp = Some(spec.srtp.unwrap_or(inner.cfg.sip_srtp));
        // Two keys for a two-party call (caller, callee), one otherwise.
        let key = inner
            .next_key
            .fetch_add(if spec.caller.is_some() { 2 } else { 1 }, Ordering::Relaxed);
        // Reserve the callId first so that two concurrent startups cannot both take it.
        {
            let mut st = inner.state.lock();
            if st.active >= inner.cfg.max_calls {
                return Err(RequestError::Unavailable(format!(
                    "{} calls are active, the limit (max_calls) is {}",
                    st.active, inner.cfg.max_calls
                )));
            }
            if let Some(e) = st.calls.get(&spec.call_id) {
                if !e.info.status.is_final() {
                    return Err(RequestError::Conflict(format!(
                        "callId {:?} is already in use",
                        spec.call_id
                    )));
                }
            }
            let info = initial_info(&spec);
            st.history.retain(|id| id != &spec.call_id);
            let entry = match &spec.caller {
                // Two-party: the caller leg first (this key), the callee after it answers.
                Some(caller) => {
                    let mut e = Entry::new(info, key, Leg::Caller, &caller.uri);
                    e.legs
                        .push(CallLeg::new(Leg::Callee, key + 1, &spec.callee_uri));
                    st.keys.insert(key + 1, spec.call_id.clone());
                    e
                }
                None => Entry::new(info, key, Leg::Callee, &spec.callee_uri),
            };
            st.calls.insert(spec.call_id.clone(), entry);
            st.keys.insert(key, spec.call_id.clone());
            st.active += 1;
        }
        match self.prepare(&spec).await {
            Ok(info) => Ok(info),
            Err(e) => {
                let mut st = inner.state.lock();
                if let Some(m) = st.calls.get_mut(&spec.call_id).and_then(|e| e.mixer.take()) {
                    m.abort();
                }
                st.calls.remove(&spec.call_id);
                st.keys.remove(&key);
                st.keys.remove(&(key + 1));
                st.active = st.active.saturating_sub(1);
                Err(e)
            }
        }
    }

    async fn prepare(&self, spec: &CallSpec) -> Result<CallInfo, RequestError> {
        let inner = &self.inner;
        let publisher = inner
            .registry
            .create(&spec.stream, Some(spec.call_id.clone()))
            .map_err(|e| match e {
                RegistryError::AlreadyExists(_) => RequestError::Conflict(format!(
                    "toStream: stream {:?} already exists",
                    spec.stream
                )),
                other => RequestError::BadRequest(format!("toStream: {other}")),
            })?;
        let publisher = Arc::new(publisher);
        if spec.caller.is_some() && inner.cfg.two_party_mix {
            // The mixed track first (track 0): what recorders and players take.
            let mixer = super::mixer::spawn(&inner.registry, publisher.clone(), &spec.call_id)
                .map_err(|e| RequestError::Internal(format!("mixed track: {e}")))?;
            if let Some(entry) = inner.state.lock().calls.get_mut(&spec.call_id) {
                entry.mixer = Some(mixer);
            }
        }

        let dests = self
            .destinations(
                &spec.proxy_host,
                spec.proxy_port,
                spec.locate,
                spec.transport,
            )
            .await?;
        let dest = dests[0];
        let caller_dests = match &spec.caller {
            Some(c) => Some(
                self.destinations(&c.proxy_host, c.proxy_port, c.locate, spec.transport)
                    .await?,
            ),
            None => None,
        };
        let caller_dest = caller_dests.as_ref().map(|d| d[0]);
        let local_ip = self.local_ip(caller_dest.unwrap_or(dest))?;
        let sip_port = inner.sip.port(spec.transport).ok_or_else(|| {
            RequestError::BadRequest(format!(
                "sipTransport: {} is disabled in the gateway's properties",
                spec.transport.via_token().to_ascii_lowercase()
            ))
        })?;
        let media_ip = inner.cfg.media_ip.unwrap_or(local_ip);

        let legs = if spec.caller.is_some() { 2 } else { 1 };
        let mut media = Vec::new();
        for _ in 0..legs {
            let mut m = Vec::new();
            if spec.has_audio {
                let labels: Vec<Option<String>> = if spec.audio_labels.is_empty() || legs > 1 {
                    vec![None]
                } else {
                    spec.audio_labels.iter().cloned().map(Some).collect()
                };
                for label in labels {
                    let mut audio = self.media_leg(TrackKind::Audio).await?;
                    if let Some(codecs) = &spec.audio_codecs {
                        audio.offered = codecs.clone();
                    }
                    audio.label = label;
                    m.push(audio);
                }
            }
            if spec.has_video {
                m.push(self.media_leg(TrackKind::Video).await?);
            }
            media.push(m);
        }
        let registrar =
            if spec.register && spec.registrar != (spec.proxy_host.clone(), spec.proxy_port) {
                let addr = resolve(&spec.registrar.0, spec.registrar.1).await?;
                if spec.transport == crate::sip::endpoint::Transport::Tls {
                    inner.sip.tls_name(addr, &spec.registrar.0);
                }
                Some(addr)
            } else {
                None
            };

        let places = {
            let mut st = inner.state.lock();
            let Some(entry) = st.calls.get_mut(&spec.call_id) else {
                return Err(RequestError::Internal(
                    "call vanished during startup".into(),
                ));
            };
            entry.publisher = Some(publisher);
            let mut places = Vec::new();
            for (i, (leg, m)) in entry.legs.iter_mut().zip(media).enumerate() {
                let sip_call_id = crate::sip::ua::new_call_id(local_ip);
                leg.sip_call_id = Some(sip_call_id.clone());
                leg.media = m;
                leg.media_ip = Some(media_ip);
                leg.send_only = spec.direction == Direction::SendOnly;
                leg.srtp = spec.srtp.unwrap_or_default();
                leg.offer_srtp();
                let offer = leg.local_sdp(leg.want());
                let sdp_offer = leg.sdp.stamp(offer);
                // The caller of a two-party call has its own next hop.
                let to = if i == 0 {
                    caller_dest.unwrap_or(dest)
                } else {
                    dest
                };
                let place = PlaceCall {
                    key: leg.key,
                    account: Account {
                        login: spec.sip_login.clone(),
                        auth_name: spec.auth_name.clone(),
                        password: spec.password.expose().to_string(),
                        domain: spec.domain.clone(),
                    },
                    callee_uri: leg.uri.clone(),
                    register: spec.register,
                    route: Route {
                        transport: spec.transport,
                        dest: to,
                        local: SocketAddr::new(local_ip, sip_port),
                        sticky: spec.sticky,
                    },
                    registrar,
                    sdp_offer,
                    body: None,
                    from_uri: None,
                    to_uri: None,
                    contact_params: String::new(),
                    sip_call_id: Some(sip_call_id),
                    headers: spec.headers.clone(),
                    label: spec.call_id.clone(),
                };
                leg.template = Some(Box::new(place.clone()));
                let alternates = if i == 0 {
                    caller_dests.as_ref().unwrap_or(&dests)
                } else {
                    &dests
                };
                leg.alternates = alternates.iter().skip(1).copied().collect();
                places.push(place);
            }
            entry.info.sip_call_id = entry.legs[0].sip_call_id.clone();
            entry.info.legs = entry.leg_infos();
            if places.len() > 1 {
                // The callee is called once the caller has answered.
                entry.pending_callee = places.pop().map(Box::new);
            }
            places
        };
        let info = self
            .find(&spec.call_id)
            .ok_or_else(|| RequestError::Internal("call vanished during startup".into()))?;
        for place in places {
            if !inner.sip.command(Command::PlaceCall(Box::new(place))) {
                return Err(RequestError::Unavailable(
                    "the SIP stack is shutting down".into(),
                ));
            }
        }
        let first = spec
            .caller
            .as_ref()
            .map(|c| c.uri.as_str())
            .unwrap_or(&spec.callee_uri);
        tracing::info!(call_id = %spec.call_id, stream = %spec.stream, first = %first, callee = %spec.callee_uri, dest = %caller_dest.unwrap_or(dest), "call started");
        self.publish_status(&info);
        let caller = spec
            .caller
            .as_ref()
            .map(|c| c.uri.clone())
            .unwrap_or_else(|| format!("sip:{}@{}", spec.sip_login, spec.domain));
        if spec.exchange.is_none() {
            self.start_outputs(&info, spec.record, vec![caller, spec.callee_uri.clone()])
                .await;
        }
        Ok(info)
    }

    /// The addresses to send a leg's INVITE to, in order: RFC 3263 (NAPTR, SRV, A/AAAA) when
    /// no port was given, else the host's A/AAAA at `port`. IPv4 first for a plain host.
    async fn destinations(
        &self,
        host: &str,
        port: u16,
        locate: bool,
        transport: crate::sip::endpoint::Transport,
    ) -> Result<Vec<SocketAddr>, RequestError> {
        let mut found = self
            .inner
            .locator
            .locate(host, (!locate).then_some(port), transport)
            .await
            .map_err(|e| RequestError::Upstream(format!("next hop {host:?}: {e}")))?;
        if !locate {
            found.sort_by_key(SocketAddr::is_ipv6);
        }
        if found.is_empty() {
            return Err(RequestError::Upstream(format!(
                "next hop {host:?} has no address"
            )));
        }
        if transport == crate::sip::endpoint::Transport::Tls {
            // RFC 5922 §7: the certificate must name the host we looked up, not an SRV target.
            for addr in &found {
                self.inner.sip.tls_name(*addr, host);
            }
        }
        Ok(found)
    }

    /// Two-party: both legs answered; their audio is bridged through the gateway, each
    /// direction transcoded to the receiving leg's codec when they differ.
    fn start_bridge(&self, key: CallKey) {
        let mut st = self.inner.state.lock();
        let Some(entry) = st.by_key(key) else {
            return;
        };
        if entry.legs.len() < 2 || !entry.bridge.is_empty() {
            return;
        }
        let stream = entry.info.to_stream.clone();
        let call_id = entry.info.call_id.clone();
        for (from, to) in [(0, 1), (1, 0)] {
            let target = &entry.legs[to];
            let audio = target.media.iter().find(|m| m.kind == TrackKind::Audio);
            let Some((handle, codec)) =
                audio.and_then(|m| m.running.as_ref().map(|r| &r.0).zip(m.codec.as_ref()))
            else {
                tracing::warn!(%call_id, leg = target.name_str(), "bridge: the leg has no running audio");
                continue;
            };
            let Some(to_codec) =
                crate::media::transcode::AudioCodec::from_encoding(&codec.encoding)
            else {
                tracing::warn!(%call_id, codec = %codec.encoding, "bridge: codec not transcodable");
                continue;
            };
            let sink = Arc::new(super::bridge::BridgeSink::new(
                entry.legs[from].name,
                handle.injector(),
                to_codec,
                self.inner.cfg.rtp_ptime_ms,
            ));
            let paused = sink.paused.clone();
            let muted = sink.muted.clone();
            let mix_into = sink.mix_into.clone();
            paused.store(
                entry.legs[to].hold.ours,
                std::sync::atomic::Ordering::Relaxed,
            );
            match self
                .inner
                .registry
                .attach(&stream, super::bridge::READER_KIND, sink)
            {
                Ok(h) => entry.bridge.push(super::bridge::BridgeDirection {
                    to,
                    kind: TrackKind::Audio,
                    paused,
                    muted,
                    mix_into,
                    _sink: h,
                }),
                Err(e) => tracing::warn!(%call_id, error = %e, "bridge not attached"),
            }
        }
        // Video, when both legs have it: relayed as it came (both negotiated H.264), and
        // each leg's keyframe requests go back to the other's track.
        for (from, to) in [(0, 1), (1, 0)] {
            let running = |i: usize| {
                entry.legs[i]
                    .media
                    .iter()
                    .find(|m| m.kind == TrackKind::Video)
                    .and_then(|m| m.running.as_ref())
            };
            let (Some((_, source_track)), Some((target, _))) = (running(from), running(to)) else {
                continue;
            };
            let sink = Arc::new(super::bridge::VideoBridgeSink::new(
                entry.legs[from].name,
                target.injector(),
            ));
            let paused = sink.paused.clone();
            paused.store(
                entry.legs[to].hold.ours,
                std::sync::atomic::Ordering::Relaxed,
            );
            if let Err(e) = target.update(LegUpdate::KeyframeSource(Some(*source_track))) {
                tracing::warn!(%call_id, error = %e, "video bridge: keyframe requests not passed on");
            }
            // The receiving party needs a keyframe to start decoding.
            if let Some(p) = &entry.publisher {
                p.request_keyframe(*source_track);
            }
            match self
                .inner
                .registry
                .attach(&stream, super::bridge::READER_KIND, sink)
            {
                Ok(h) => entry.bridge.push(super::bridge::BridgeDirection {
                    to,
                    kind: TrackKind::Video,
                    paused,
                    muted: Arc::default(),
                    mix_into: Arc::default(),
                    _sink: h,
                }),
                Err(e) => tracing::warn!(%call_id, error = %e, "video bridge not attached"),
            }
        }
        tracing::info!(%call_id, directions = entry.bridge.len(), "legs bridged");
    }

    /// What a call asks for once it exists: its recording (`record`, `sip_record_stream`)
    /// and SIPREC (`siprec_auto`). Failures are reported (events, logs); the call goes on.
    async fn start_outputs(&self, info: &CallInfo, record: bool, participants: Vec<String>) {
        let cfg = &self.inner.cfg;
        if record || cfg.sip_record_stream {
            let meta = crate::record::RecordingMeta {
                call_id: Some(info.call_id.clone()),
                sip_call_id: info.sip_call_id.clone(),
                media_session_id: None,
                participants,
            };
            if let Err(e) = self.inner.recordings.start(&info.to_stream, meta) {
                tracing::warn!(call_id = %info.call_id, error = %e, "recording not started");
            }
        }
        if cfg.siprec_auto {
            let req = crate::siprec::SiprecStartRequest {
                call_id: info.call_id.clone(),
                srs: None,
                instance: Some("auto".into()),
                group: None,
                caller: None,
                callee: None,
                headers: None,
                from_uri: None,
                to_uri: None,
                media: None,
                group_custom_extension: None,
                session_custom_extension: None,
                skip_failover_codes: None,
            };
            if let Err(e) = Box::pin(self.siprec_start(req)).await {
                tracing::warn!(call_id = %info.call_id, error = %e, "siprec_auto: recording not started");
            }
        }
    }

    /// Reserves the RTP ports of one media line with the codecs we offer for its kind.
    async fn media_leg(&self, kind: TrackKind) -> Result<MediaLeg, RequestError> {
        let pair = self.allocate().await?;
        let codecs = match kind {
            TrackKind::Audio => vec![
                sdp::codec_pcmu(),
                sdp::codec_pcma(),
                sdp::codec_opus(),
                sdp::codec_telephone_event(),
            ],
            TrackKind::Video => vec![sdp::codec_h264()],
        };
        let port = pair.lease.rtp_port();
        Ok(MediaLeg::new(kind, codecs, port, pair))
    }

    pub(super) async fn allocate(&self) -> Result<BoundPair, RequestError> {
        self.inner
            .ports
            .allocate(self.inner.cfg.rtp_address)
            .await
            .map_err(|e| RequestError::Unavailable(format!("no RTP ports: {e}")))
    }

    pub(super) fn local_ip(&self, dest: SocketAddr) -> Result<IpAddr, RequestError> {
        let cfg = &self.inner.cfg;
        if let Some(ip) = cfg.sip_external_address {
            return Ok(ip);
        }
        if !cfg.sip_address.is_unspecified() {
            return Ok(cfg.sip_address);
        }
        local_ip_for(dest)
            .ok_or_else(|| RequestError::Upstream(format!("no local route towards {dest}")))
    }

    /// `/siprec/start`: the SIPREC controller records the call.
    pub async fn siprec_start(
        &self,
        req: crate::siprec::SiprecStartRequest,
    ) -> Result<crate::siprec::SiprecInfo, RequestError> {
        let call = {
            let st = self.inner.state.lock();
            let entry = st.calls.get(&req.call_id).ok_or_else(|| {
                RequestError::NotFound(format!("callId {:?}: no such call", req.call_id))
            })?;
            recorded_call(entry)
        };
        self.inner.siprec.start(req, call).await
    }

    fn known_call(&self, call_id: &str) -> Result<(), RequestError> {
        if self.inner.state.lock().calls.contains_key(call_id) {
            Ok(())
        } else {
            Err(RequestError::NotFound(format!(
                "callId {call_id:?}: no such call"
            )))
        }
    }

    /// `/siprec/pause` and `/siprec/resume`.
    pub fn siprec_pause(
        &self,
        call_id: &str,
        instance: Option<&str>,
        pause: bool,
    ) -> Result<Vec<crate::siprec::SiprecInfo>, RequestError> {
        self.known_call(call_id)?;
        self.inner.siprec.pause(call_id, instance, pause)
    }

    /// `/siprec/stop`.
    pub fn siprec_stop(
        &self,
        call_id: &str,
        instance: Option<&str>,
    ) -> Result<Vec<crate::siprec::SiprecInfo>, RequestError> {
        self.known_call(call_id)?;
        self.inner.siprec.stop(call_id, instance)
    }

    /// `/siprec/find`: the sessions of one (known) call, or of every call.
    pub fn siprec_find(
        &self,
        call_id: Option<&str>,
        instance: Option<&str>,
    ) -> Result<Vec<crate::siprec::SiprecInfo>, RequestError> {
        if let Some(id) = call_id {
            self.known_call(id)?;
        }
        Ok(self.inner.siprec.find(call_id, instance))
    }

    /// Hangs up: BYE when established, CANCEL while ringing.
    pub fn terminate(&self, call_id: &str) -> Result<CallInfo, RequestError> {
        let st = self.inner.state.lock();
        let entry = st
            .calls
            .get(call_id)
            .ok_or_else(|| RequestError::NotFound(format!("callId {call_id:?}: no such call")))?;
        if !entry.info.status.is_final() {
            for leg in entry.legs.iter().filter(|l| !l.status.is_final()) {
                self.inner.sip.command(Command::Hangup(leg.key));
            }
        }
        Ok(self.snapshot(entry))
    }

    /// What an output that follows a call's legs needs (media streams to agents): the
    /// call's stream and its legs in order. The call must be established.
    pub fn call_media(&self, call_id: &str) -> Result<CallMedia, RequestError> {
        let mut st = self.inner.state.lock();
        let entry = st.established(call_id, "streamed")?;
        Ok(CallMedia {
            stream: entry.info.to_stream.clone(),
            legs: entry.legs.iter().map(|l| l.name).collect(),
            direction: entry.info.direction.clone(),
        })
    }

    /// Plays `source` into `leg` of an established call, mixed with whatever else plays
    /// there (see `call/play.rs`); the handle stops it. Into a leg of a two-party call, the
    /// bridge from the other party feeds the leg's player while the source plays, so the
    /// party hears both.
    pub fn play_into(
        &self,
        call_id: &str,
        leg: Leg,
        source: Box<dyn crate::media::mix::PlaySource>,
    ) -> Result<super::play::PlayHandle, RequestError> {
        self.play_into_line(call_id, leg, 0, source)
    }

    /// [`Self::play_into`] the `line`-th audio line of the leg (a leg of a media exchange
    /// that forks each party on its own line has two).
    pub fn play_into_line(
        &self,
        call_id: &str,
        leg: Leg,
        line: usize,
        source: Box<dyn crate::media::mix::PlaySource>,
    ) -> Result<super::play::PlayHandle, RequestError> {
        let mut st = self.inner.state.lock();
        let entry = st.established(call_id, "played into")?;
        let name = super::leg::leg_name(leg);
        let li = entry
            .legs
            .iter()
            .position(|l| l.name == leg)
            .ok_or_else(|| {
                RequestError::BadRequest(format!("leg: callId {call_id:?} has no {name} leg"))
            })?;
        let l = &mut entry.legs[li];
        let audio = l.audio_line(line).and_then(|m| {
            let running = m.running.as_ref().map(|r| r.0.injector());
            running.zip(m.codec.clone()).map(|r| (r, &mut m.player))
        });
        let Some(((injector, codec), slot)) = audio else {
            return Err(RequestError::Conflict(format!(
                "callId {call_id:?}: the {name} leg has no audio running{}",
                if line > 0 {
                    format!(" on its audio line {}", line + 1)
                } else {
                    String::new()
                }
            )));
        };
        let codec = AudioCodec::from_encoding(&codec.encoding).ok_or_else(|| {
            RequestError::Conflict(format!(
                "callId {call_id:?}: the {name} leg's codec {} cannot be played into",
                codec.encoding
            ))
        })?;
        let handle = super::play::play(
            slot,
            self.inner.media.pick(),
            injector,
            codec,
            self.inner.cfg.rtp_ptime_ms,
            source,
        );
        // A bridged leg: the other party's audio goes through this player too, mixed.
        if let Some(b) = entry
            .bridge
            .iter()
            .find(|b| b.to == li && b.kind == TrackKind::Audio && line == 0)
        {
            let mut m = b.mix_into.lock();
            let fed = m.as_ref().is_some_and(|f| !f.lock().detached);
            if !fed {
                let feed = super::play::new_feed();
                if handle.add(Box::new(super::play::FeedSource(feed.clone()))) {
                    *m = Some(feed);
                }
            }
        }
        Ok(handle)
    }

    /// Mutes (or unmutes) what `leg` of a two-party call hears from the other party: a media
    /// exchange replaces it. A one-leg call has no bridge: nothing to mute, Ok.
    pub fn mute_into(&self, call_id: &str, leg: Leg, muted: bool) -> Result<(), RequestError> {
        let mut st = self.inner.state.lock();
        let entry = st
            .calls
            .get_mut(call_id)
            .ok_or_else(|| RequestError::NotFound(format!("callId {call_id:?}: no such call")))?;
        let Some(li) = entry.legs.iter().position(|l| l.name == leg) else {
            return Err(RequestError::BadRequest(format!(
                "leg: callId {call_id:?} has no {} leg",
                super::leg::leg_name(leg)
            )));
        };
        for b in entry
            .bridge
            .iter()
            .filter(|b| b.to == li && b.kind == TrackKind::Audio)
        {
            b.muted.store(muted, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(())
    }

    pub fn find(&self, call_id: &str) -> Option<CallInfo> {
        let st = self.inner.state.lock();
        st.calls.get(call_id).map(|e| self.snapshot(e))
    }

    /// How many calls not yet ended are in each status, and (direction) how many of them
    /// are inbound; for `/metrics`, without copying the calls.
    pub fn live_by_status(&self) -> Vec<(&'static str, &'static str, u64)> {
        let st = self.inner.state.lock();
        let mut counts: HashMap<(&'static str, &'static str), u64> = HashMap::new();
        for e in st.calls.values().filter(|e| !e.info.status.is_final()) {
            let dir = if e.info.direction == "inbound" {
                "inbound"
            } else {
                "outbound"
            };
            *counts.entry((e.info.status.as_str(), dir)).or_default() += 1;
        }
        let mut v: Vec<_> = counts.into_iter().map(|((s, d), n)| (s, d, n)).collect();
        v.sort();
        v
    }

    pub fn find_all(&self, status: Option<&str>) -> Vec<CallInfo> {
        let st = self.inner.state.lock();
        let mut calls: Vec<CallInfo> = st
            .calls
            .values()
            .filter(|e| status.is_none_or(|s| e.info.status.as_str().eq_ignore_ascii_case(s)))
            .map(|e| self.snapshot(e))
            .collect();
        calls.sort_by_key(|c| c.created_at);
        calls
    }

    fn snapshot(&self, entry: &Entry) -> CallInfo {
        let mut info = entry.info.clone();
        if entry.legs.iter().any(|l| !l.media.is_empty()) {
            info.legs = entry.leg_infos();
        }
        info
    }

    /// Follows the UA's events until the SIP driver stops.
    pub async fn run(self, mut events: mpsc::Receiver<UaEvent>) {
        loop {
            let deadline = self.inner.state.lock().next_deadline();
            let sleep = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            let ev = tokio::select! {
                ev = events.recv() => match ev {
                    Some(ev) => ev,
                    None => break,
                },
                () = sleep => {
                    self.on_timers();
                    continue;
                }
                // A timer armed by an API request: sleep until the earliest again.
                () = self.inner.timers_changed.notified() => continue,
            };
            match ev {
                UaEvent::CallState {
                    key,
                    phase,
                    sip_status,
                    reason,
                    sdp,
                    sip_call_id,
                } => self.on_call_state(
                    key,
                    LegState {
                        phase,
                        sip_status,
                        reason,
                        sdp,
                        sip_call_id,
                    },
                ),
                UaEvent::RemoteMedia { key, sdp } => self.on_remote_media(key, &sdp),
                UaEvent::Dtmf {
                    key,
                    digit,
                    duration_ms,
                } => self.on_dtmf(key, digit, duration_ms, "INFO"),
                UaEvent::InfoAnswered { key, status } => {
                    if !(200..300).contains(&status) {
                        tracing::warn!(key, status, "INFO refused by the far end");
                    }
                }
                UaEvent::RemoteOffer { key, sdp } => self.on_remote_offer(key, sdp),
                UaEvent::Incoming(call) => self.on_incoming(*call),
                UaEvent::Registration {
                    login,
                    domain,
                    status,
                    sip_status,
                } => {
                    let status = match status {
                        RegStatus::Registered => "REGISTERED",
                        RegStatus::Failed => "FAILED",
                        RegStatus::Unregistered => "UNREGISTERED",
                    };
                    self.inner.bus.publish(Event::RegistrationStatusEvent {
                        sip_login: login,
                        sip_domain: domain,
                        status: status.into(),
                        sip_status,
                        timestamp: unix_ms(),
                    });
                }
                UaEvent::Reinvited { key, status, sdp } => self.on_reinvited(key, status, sdp),
                UaEvent::ReferAnswered { key, status } => {
                    self.on_transfer(key, |t| t.on_answer(status))
                }
                UaEvent::ReferProgress {
                    key,
                    status,
                    reason,
                    terminated,
                } => self.on_transfer(key, |t| t.on_progress(status, &reason, terminated)),
                UaEvent::Referred {
                    key,
                    target,
                    replaces,
                    referred_by,
                } => self.on_referred(key, target, replaces, referred_by),
                UaEvent::Idle => self.inner.idle.notify_waiters(),
            }
        }
    }

    /// A leg's phase changed: the call core decides, the shell carries it out.
    fn on_call_state(&self, key: CallKey, s: LegState) {
        let now = Now::real();
        let routed = {
            let mut st = self.inner.state.lock();
            match st.on_leg_state(key, s, now) {
                Routed::Call(fx) => Ok(self.media_effects(&mut st, fx)),
                other => Err(other),
            }
        };
        match routed {
            Ok(after) => self.effects(after),
            Err(Routed::Replacement(s)) => self.on_replacement_state(
                key,
                s.phase,
                s.sip_status,
                s.reason,
                s.sdp,
                s.sip_call_id,
            ),
            Err(Routed::Foreign(s)) => {
                self.inner.siprec.on_dialog(
                    key,
                    super::siprec::DialogUpdate {
                        phase: s.phase,
                        sip_status: s.sip_status,
                        reason: s.reason,
                        sdp: s.sdp,
                        sip_call_id: &s.sip_call_id,
                    },
                );
            }
            Err(Routed::Call(_)) => {}
        }
    }

    /// Carries out the core's media effects while the call table is locked (they touch the
    /// calls' legs); returns the rest, for [`CallManager::effects`] once it is released.
    fn media_effects(&self, st: &mut CallTable, fx: Vec<Effect>) -> Vec<After> {
        let mut after = Vec::new();
        for e in fx {
            match e {
                Effect::RemoteSdp { call_id, leg, sdp } => {
                    if let Some(entry) = st.calls.get_mut(&call_id) {
                        self.apply_remote_sdp(entry, leg, &sdp, None);
                    }
                }
                Effect::PauseBridge {
                    call_id,
                    leg,
                    paused,
                } => {
                    for b in st.calls.get(&call_id).into_iter().flat_map(|e| &e.bridge) {
                        if b.to == leg {
                            b.paused.store(paused, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                }
                Effect::StartMusic { call_id, leg } => {
                    let Some(l) = st.calls.get_mut(&call_id).and_then(|e| e.legs.get_mut(leg))
                    else {
                        continue;
                    };
                    self.start_music(l);
                }
                Effect::StopMusic { call_id, leg } => {
                    if let Some(l) = st.calls.get_mut(&call_id).and_then(|e| e.legs.get_mut(leg)) {
                        l.stop_music();
                    }
                }
                Effect::SiprecPhase { call_id, phase } => {
                    if let Some(entry) = st.calls.get(&call_id) {
                        let mut call = recorded_call(entry);
                        call.status = phase;
                        after.push(After::Siprec(call));
                    }
                }
                Effect::Release { call_id, why } => {
                    let Some(entry) = st.calls.get_mut(&call_id) else {
                        continue;
                    };
                    entry.info.legs = entry.leg_infos();
                    entry.bridge.clear();
                    for l in entry.legs.iter_mut() {
                        l.stop_music();
                    }
                    if let Some(m) = entry.mixer.take() {
                        m.abort();
                    }
                    let media = entry
                        .legs
                        .iter_mut()
                        .flat_map(|l| std::mem::take(&mut l.media))
                        .collect();
                    after.push(After::Release {
                        publisher: entry.publisher.take(),
                        media,
                        why,
                    });
                }
                other => after.push(After::Effect(other)),
            }
        }
        after
    }

    /// Carries out what the core decided, outside the call table's lock.
    fn effects(&self, after: Vec<After>) {
        for a in after {
            match a {
                After::Effect(Effect::Sip(cmd)) => {
                    if !self.inner.sip.command(cmd) {
                        tracing::warn!("the SIP stack is shutting down; command not sent");
                    }
                }
                After::Effect(Effect::Publish(event)) => self.inner.bus.publish(event),
                After::Effect(Effect::Status(info)) => {
                    tracing::info!(call_id = %info.call_id, status = info.status.as_str(), sip_status = info.sip_status, reason = info.reason.as_deref().unwrap_or(""), "call status");
                    self.publish_status(&info);
                }
                After::Effect(Effect::Bridge(key)) => self.start_bridge(key),
                After::Siprec(call) => self.inner.siprec.on_call_phase(call),
                After::Effect(Effect::SiprecExchange(party)) => {
                    self.inner.siprec.on_exchange(party)
                }
                After::Effect(
                    Effect::RemoteSdp { .. }
                    | Effect::Release { .. }
                    | Effect::PauseBridge { .. }
                    | Effect::StopMusic { .. }
                    | Effect::StartMusic { .. }
                    | Effect::SiprecPhase { .. },
                ) => unreachable!("media effects are carried out under the lock"),
                After::Release {
                    publisher,
                    media,
                    why,
                } => {
                    if let Some(p) = publisher {
                        p.end(why);
                    }
                    // Stopping a leg waits for its task; the ports return to the pool when
                    // it is done.
                    tokio::spawn(async move {
                        for leg in media {
                            if let Some((h, _)) = leg.running {
                                h.stop().await;
                            }
                        }
                    });
                }
            }
        }
    }

    /// Music on hold into `leg` (our media is sendonly now): one more source of its audio
    /// line's player, looped until resumed.
    fn start_music(&self, leg: &mut CallLeg) {
        let Some(samples) = &self.inner.hold_music else {
            return;
        };
        leg.stop_music();
        let audio = leg.audio_line(0).and_then(|m| {
            let (handle, codec) = m.running.as_ref().map(|r| &r.0).zip(m.codec.as_ref())?;
            let c = crate::media::transcode::AudioCodec::from_encoding(&codec.encoding)?;
            Some((handle.injector(), c, &mut m.player))
        });
        if let Some((injector, c, slot)) = audio {
            leg.music = Some(super::play::play(
                slot,
                self.inner.media.pick(),
                injector,
                c,
                self.inner.cfg.rtp_ptime_ms,
                Box::new(crate::media::mix::Samples::new(samples.clone(), true)),
            ));
        }
    }

    /// The core's timers that are due.
    fn on_timers(&self) {
        let after = {
            let mut st = self.inner.state.lock();
            let fx = st.on_timeout(Now::real());
            self.media_effects(&mut st, fx)
        };
        self.effects(after);
    }

    /// The far end's answer to an offer we made in a 2xx (it came in the ACK).
    fn on_remote_media(&self, key: CallKey, sdp: &str) {
        let info = {
            let mut st = self.inner.state.lock();
            let Some(entry) = st.by_key(key) else {
                return;
            };
            let Some(idx) = entry.leg_index(key) else {
                return;
            };
            self.apply_remote_sdp(entry, idx, sdp, None);
            hold_status(entry)
        };
        self.status_changed(info);
    }

    /// An offer from the far end inside the dialog: we answer it (or 488), and follow its
    /// hold. SIPREC dialogs are answered by their controller.
    fn on_remote_offer(&self, key: CallKey, offer: Option<String>) {
        let (result, info) = {
            let mut st = self.inner.state.lock();
            match st.keys.get(&key).cloned() {
                Some(call_id) => match st.calls.get_mut(&call_id) {
                    Some(entry) => match entry.leg_index(key) {
                        Some(idx) => {
                            let r = self.answer_offer(entry, idx, offer.as_deref());
                            (r, hold_status(entry))
                        }
                        None => (Err(481), None),
                    },
                    None => (Err(481), None),
                },
                None => {
                    drop(st);
                    (
                        self.inner
                            .siprec
                            .answer_offer(key, offer.as_deref())
                            .unwrap_or(Err(481)),
                        None,
                    )
                }
            }
        };
        if let Err(status) = result {
            tracing::info!(key, status, "offer from the far end refused");
        }
        self.inner.sip.command(Command::AnswerOffer { key, result });
        self.status_changed(info);
    }

    /// Our answer to `offer` on leg `idx` (None: a re-INVITE without SDP asks for our
    /// offer). The media follows the offer at once; a 488 leaves the call as it was.
    fn answer_offer(
        &self,
        entry: &mut Entry,
        idx: usize,
        offer: Option<&str>,
    ) -> Result<String, u16> {
        let leg = &mut entry.legs[idx];
        let want = leg.want();
        let Some(text) = offer else {
            let ours = leg.local_sdp(want);
            return Ok(leg.sdp.stamp(ours));
        };
        let mut remote = SessionDescription::parse(text).map_err(|_| 488u16)?;
        let unreachable = sdp::refuse_unreachable(&mut remote, self.inner.cfg.rtp_address);
        if !unreachable.is_empty() {
            tracing::info!(call_id = %entry.info.call_id, ?unreachable, "re-offered media at addresses we cannot reach");
        }
        let mut answer = sdp::answer(&leg.local_sdp(want), &remote, want);
        if answer.media.iter().all(|m| m.port == 0) {
            tracing::info!(call_id = %entry.info.call_id, "offer has no media we can take");
            return Err(488);
        }
        if let Err(why) = leg.secure_answer(&mut answer, &remote) {
            tracing::info!(call_id = %entry.info.call_id, %why, "offer refused (SRTP)");
            return Err(488);
        }
        self.apply_remote_sdp(entry, idx, text, Some(want));
        Ok(entry.legs[idx].sdp.stamp(answer))
    }

    /// The answer to our own re-INVITE (hold, unhold): the media follows it, and the
    /// progress goes out as events.
    fn on_reinvited(&self, key: CallKey, status: u16, answer: Option<String>) {
        let after = {
            let mut st = self.inner.state.lock();
            let Some(fx) = st.on_reinvited(key, status, answer) else {
                drop(st);
                if !self.inner.siprec.on_reinvited(key, status) && !(200..300).contains(&status) {
                    tracing::warn!(key, status, "re-INVITE refused");
                }
                return;
            };
            // The status after the media followed the answer (the far end's directions).
            let mut after = self.media_effects(&mut st, fx);
            if let Some(info) = st.by_key(key).and_then(hold_status) {
                after.push(After::Effect(Effect::Status(Box::new(info))));
            }
            after
        };
        self.effects(after);
    }

    /// `/call/hold` (`on`) and `/call/unhold`: a re-INVITE with our media sendonly (or
    /// sendrecv again) to each chosen leg. Answers at once; `CallHolding`, then per leg
    /// `CallHoldStart` and `CallHoldSuccessful` (or `CallHoldFailed` with the SIP status)
    /// follow as events.
    pub fn hold(
        &self,
        call_id: &str,
        leg: Option<&str>,
        on: bool,
        music: bool,
    ) -> Result<CallInfo, RequestError> {
        let music = music && self.inner.hold_music.is_some();
        let (after, info) = {
            let mut st = self.inner.state.lock();
            let fx = st.hold(call_id, leg, on, music)?;
            let after = self.media_effects(&mut st, fx);
            let entry = st
                .calls
                .get(call_id)
                .ok_or_else(|| RequestError::Internal("call vanished".into()))?;
            (after, self.snapshot(entry))
        };
        self.effects(after);
        Ok(info)
    }

    /// `/call/transfer`: a REFER asking the far end to call `target` (blind), or with
    /// `replace_call_id` to join the far end of that call of ours (attended, Replaces).
    /// Answers at once; `Transferring → TransferStart → TransferPending →
    /// TransferSuccessful` (or `TransferFailed` with the SIP status) follow as events, and
    /// after success our dialog ends (status FINISH, reason "transferred to ..."); without a
    /// final NOTIFY within `transfer_timeout_s` it fails (408) and the call goes on.
    pub fn transfer(
        &self,
        call_id: &str,
        leg: Option<&str>,
        target: Option<&str>,
        replace_call_id: Option<&str>,
        replace_leg: Option<&str>,
    ) -> Result<CallInfo, RequestError> {
        let (after, info) = {
            let mut st = self.inner.state.lock();
            let fx = st.transfer(
                call_id,
                super::core::TransferRequest {
                    leg,
                    target,
                    replace_call_id,
                    replace_leg,
                },
                Now::real(),
            )?;
            let after = self.media_effects(&mut st, fx);
            let entry = st
                .calls
                .get(call_id)
                .ok_or_else(|| RequestError::Internal("call vanished".into()))?;
            (after, self.snapshot(entry))
        };
        self.inner.timers_changed.notify_one();
        self.effects(after);
        Ok(info)
    }

    /// Feeds the call's transfer a REFER answer or NOTIFY, and does what it says.
    fn on_transfer(
        &self,
        key: CallKey,
        f: impl FnOnce(&mut super::transfer::Transfer) -> Vec<super::transfer::Step>,
    ) {
        let after = {
            let mut st = self.inner.state.lock();
            let fx = st.on_transfer(key, f);
            self.media_effects(&mut st, fx)
        };
        self.effects(after);
    }

    /// The far end REFERs us (a phone transfers the gateway): the UA answered 202; we call
    /// `target` from the same leg (its account and route), offering the leg's own media
    /// ports, and report the new call's progress to the transferor by NOTIFY. When it
    /// answers, it becomes the leg (same stream, same tracks: the media follows its SDP) and
    /// the old dialog gets our BYE; when it fails, the call goes on as it was.
    /// Events: `TransferRequested`, then `TransferSuccessful` or `TransferFailed`.
    fn on_referred(
        &self,
        key: CallKey,
        target: String,
        replaces: Option<String>,
        referred_by: Option<String>,
    ) {
        let notify = |status: u16, reason: &str| {
            self.inner.sip.command(Command::NotifyRefer {
                key,
                status,
                reason: reason.into(),
            });
        };
        // Attended transfer by the far end (RFC 3891): the new INVITE carries the Replaces
        // it was given, so the target swaps its dialog with the transferor for ours. The
        // value came escaped in a URI: nothing that could end a header line.
        if replaces
            .as_deref()
            .is_some_and(|r| r.trim().is_empty() || r.chars().any(char::is_control))
        {
            return notify(400, "Bad Request");
        }
        let new_key = self.inner.next_key.fetch_add(1, Ordering::Relaxed);
        let plan = {
            let mut st = self.inner.state.lock();
            let Some(call_id) = st.keys.get(&key).cloned() else {
                drop(st);
                return notify(481, "Call Does Not Exist");
            };
            let Some(entry) = st.calls.get_mut(&call_id) else {
                return;
            };
            let Some(idx) = entry.leg_index(key) else {
                return;
            };
            let leg = &mut entry.legs[idx];
            if leg.replacement.is_some() || leg.template.is_none() {
                let busy = leg.replacement.is_some();
                drop(st);
                return if busy {
                    notify(491, "Request Pending")
                } else {
                    notify(603, "Decline")
                };
            }
            let mut place = leg.template.clone().expect("checked above");
            place.key = new_key;
            place.callee_uri = target.clone();
            place.to_uri = None;
            let ours = leg.local_sdp(leg.want());
            place.sdp_offer = leg.sdp.stamp(ours);
            place.sip_call_id = None;
            place.register = false;
            if let Some(by) = &referred_by {
                place
                    .headers
                    .retain(|(n, _)| !n.eq_ignore_ascii_case("Referred-By"));
                place.headers.push(("Referred-By".into(), by.clone()));
            }
            place
                .headers
                .retain(|(n, _)| !n.eq_ignore_ascii_case("Replaces"));
            if let Some(r) = &replaces {
                place
                    .headers
                    .push(("Replaces".into(), r.trim().to_string()));
            }
            leg.replacement = Some((new_key, target.clone()));
            let event = control_event(
                &call_id,
                leg.name_str(),
                "TransferRequested",
                None,
                Some(format!("the far end transfers us to {target}")),
            );
            st.keys.insert(new_key, call_id.clone());
            (call_id, place, event)
        };
        let (call_id, mut place, event) = plan;
        tracing::info!(%call_id, %target, "REFER from the far end: calling the target");
        self.inner.bus.publish(event);
        notify(100, "Trying");
        let this = self.clone();
        tokio::spawn(async move {
            if !place.route.sticky {
                // No outbound proxy: the new INVITE follows its Request-URI, located as any
                // next hop is (RFC 3263: NAPTR/SRV when the URI has no port).
                let hop = crate::sip::dialog::parse_uri(&target).map(|u| {
                    let port = u.host_with_port.port.map(|p| *p.value());
                    (u.host_with_port.host.to_string(), port)
                });
                let Ok((host, port)) = hop else {
                    return this.replacement_ended(new_key, 400, "Bad Request");
                };
                let transport = place.route.transport;
                match this
                    .destinations(&host, port.unwrap_or(5060), port.is_none(), transport)
                    .await
                {
                    Ok(dests) => place.route.dest = dests[0],
                    Err(e) => {
                        tracing::info!(%call_id, error = %e, "REFER target not resolved");
                        return this.replacement_ended(new_key, 503, "Service Unavailable");
                    }
                }
            }
            if !this.inner.sip.command(Command::PlaceCall(place)) {
                this.replacement_ended(new_key, 503, "Service Unavailable");
            }
        });
    }

    /// The new leg of a REFER from the far end did not come up: the transferor hears the
    /// status, the call goes on with the old leg.
    fn replacement_ended(&self, new_key: CallKey, status: u16, reason: &str) {
        let event = {
            let mut st = self.inner.state.lock();
            st.keys.remove(&new_key);
            let found = st.calls.values_mut().find_map(|e| {
                let call_id = e.info.call_id.clone();
                e.legs
                    .iter_mut()
                    .find(|l| l.replacement.as_ref().is_some_and(|r| r.0 == new_key))
                    .map(|l| (call_id, l))
            });
            let Some((call_id, leg)) = found else {
                return;
            };
            let (_, target) = leg.replacement.take().expect("matched above");
            self.inner.sip.command(Command::NotifyRefer {
                key: leg.key,
                status,
                reason: reason.into(),
            });
            tracing::info!(%call_id, %target, status, "transfer by the far end failed");
            control_event(
                &call_id,
                leg.name_str(),
                "TransferFailed",
                Some(status),
                Some(format!("{target}: {status} {reason}")),
            )
        };
        self.inner.bus.publish(event);
    }

    /// A state of the new leg that a REFER from the far end asked for.
    fn on_replacement_state(
        &self,
        key: CallKey,
        phase: CallPhase,
        sip_status: Option<u16>,
        reason: Option<String>,
        sdp: Option<String>,
        sip_call_id: String,
    ) {
        if phase.is_final() {
            let status = sip_status.filter(|s| *s >= 300).unwrap_or(500);
            let why = reason.unwrap_or_else(|| phase.as_str().to_string());
            return self.replacement_ended(key, status, &why);
        }
        let (events, info) = {
            let mut st = self.inner.state.lock();
            let Some(entry) = st.by_key(key) else {
                return;
            };
            let Some(idx) = entry
                .legs
                .iter()
                .position(|l| l.replacement.as_ref().is_some_and(|r| r.0 == key))
            else {
                return;
            };
            let old_key = entry.legs[idx].key;
            if phase != CallPhase::Established {
                if let Some(s @ 180..=199) = sip_status {
                    let line = if s == 180 {
                        "Ringing"
                    } else {
                        "Session Progress"
                    };
                    self.inner.sip.command(Command::NotifyRefer {
                        key: old_key,
                        status: s,
                        reason: line.into(),
                    });
                }
                return;
            }
            // Answered: the new dialog becomes the leg; the media follows its SDP.
            let call_id = entry.info.call_id.clone();
            let (_, target) = entry.legs[idx].replacement.take().expect("matched above");
            {
                let leg = &mut entry.legs[idx];
                leg.key = key;
                leg.uri = target.clone();
                leg.sip_call_id = Some(sip_call_id);
                leg.status = CallPhase::Established;
                leg.hold = Default::default();
            }
            if let Some(sdp) = &sdp {
                self.apply_remote_sdp(entry, idx, sdp, None);
            }
            if idx == 0 {
                entry.info.sip_call_id = entry.legs[0].sip_call_id.clone();
            }
            entry.info.legs = entry.leg_infos();
            self.inner.sip.command(Command::NotifyRefer {
                key: old_key,
                status: 200,
                reason: "OK".into(),
            });
            self.inner.sip.command(Command::Hangup(old_key));
            let leg_name = entry.legs[idx].name_str();
            tracing::info!(%call_id, leg = leg_name, %target, "transferred by the far end");
            let events = vec![control_event(
                &call_id,
                leg_name,
                "TransferSuccessful",
                Some(200),
                Some(format!("now talking to {target}")),
            )];
            (events, hold_status(entry))
        };
        for e in events {
            self.inner.bus.publish(e);
        }
        self.status_changed(info);
    }

    /// Two-party: a digit one party sends goes on to the other, as a keypad through an
    /// anchored call must (IVRs, voicemail): RFC 4733 when that leg took telephone-event on
    /// its audio clock, else SIP INFO. Not to a leg we hold.
    fn relay_dtmf(&self, call_id: &str, from: &str, digit: char, duration_ms: Option<u32>) {
        let st = self.inner.state.lock();
        let Some(entry) = st.calls.get(call_id) else {
            return;
        };
        if entry.legs.len() < 2 || entry.info.status.is_final() {
            return;
        }
        let Some(to) = entry.legs.iter().find(|l| l.name_str() != from) else {
            return;
        };
        if to.hold.ours || to.status != CallPhase::Established {
            return;
        }
        let duration = duration_ms.unwrap_or(160).clamp(40, 5000);
        let rtp = to
            .media
            .iter()
            .find(|m| m.kind == TrackKind::Audio)
            .and_then(|m| Some((&m.running.as_ref()?.0, m.dtmf.as_ref()?, m.codec.as_ref()?)))
            .filter(|(_, te, c)| te.clock_rate == c.clock_rate);
        let event = crate::media::dtmf::event_code(digit);
        match (rtp, event) {
            (Some((handle, te, _)), Some(event)) => {
                let _ = handle.update(LegUpdate::SendDtmf {
                    payload_type: te.pt,
                    tones: vec![crate::media::dtmf::Tone {
                        event,
                        duration_ms: duration,
                    }],
                });
                tracing::info!(call_id, to = to.name_str(), %digit, "DTMF relayed (RFC 4733)");
            }
            _ => {
                let body = format!(
                    "Signal={}\r\nDuration={duration}\r\n",
                    digit.to_ascii_uppercase()
                );
                self.inner.sip.command(Command::Info {
                    key: to.key,
                    content_type: "application/dtmf-relay".into(),
                    body: body.into_bytes(),
                });
                tracing::info!(call_id, to = to.name_str(), %digit, "DTMF relayed (INFO)");
            }
        }
    }

    /// A digit from the far end: a `DtmfEvent` on the bus.
    fn on_dtmf(&self, key: CallKey, digit: char, duration_ms: Option<u32>, method: &str) {
        let event = {
            let st = self.inner.state.lock();
            let Some(entry) = st.keys.get(&key).and_then(|id| st.calls.get(id)) else {
                return;
            };
            let Some(leg) = entry.legs.iter().find(|l| l.key == key) else {
                return;
            };
            tracing::info!(call_id = %entry.info.call_id, leg = leg.name_str(), %digit, method, "DTMF received");
            (
                dtmf_event(
                    &entry.info.call_id,
                    leg.name_str(),
                    digit,
                    duration_ms,
                    method,
                ),
                entry.info.call_id.clone(),
                leg.name_str(),
            )
        };
        let (event, call_id, leg) = event;
        self.inner.bus.publish(event);
        self.relay_dtmf(&call_id, leg, digit, duration_ms);
    }

    /// `/call/send_dtmf`: digits as RFC 4733 telephone-events in the call's audio RTP
    /// (`RFC2833`, the default: the far end must have taken `telephone-event` on the audio
    /// clock), or each digit as one SIP INFO (`application/dtmf-relay`), in order.
    pub fn send_dtmf(
        &self,
        call_id: &str,
        leg: Option<&str>,
        dtmf: &str,
        kind: Option<&str>,
        duration_ms: u32,
    ) -> Result<CallInfo, RequestError> {
        let digits: Vec<char> = dtmf.chars().filter(|c| !c.is_whitespace()).collect();
        if digits.is_empty() || digits.len() > 64 {
            return Err(RequestError::BadRequest(
                "dtmf: 1 to 64 digits of 0-9 * # A-D".into(),
            ));
        }
        if let Some(bad) = digits
            .iter()
            .find(|c| !(c.is_ascii_digit() || "*#ABCDabcd".contains(**c)))
        {
            return Err(RequestError::BadRequest(format!(
                "dtmf: {bad:?} is not a DTMF digit (0-9 * # A-D)"
            )));
        }
        let by_info = match kind.map(str::to_ascii_uppercase).as_deref() {
            Some("INFO") => true,
            None | Some("RFC2833") | Some("RFC4733") => false,
            Some(other) => {
                return Err(RequestError::BadRequest(format!(
                    "type: {other:?}: expected RFC2833 or INFO"
                )))
            }
        };
        if !(40..=5000).contains(&duration_ms) {
            return Err(RequestError::BadRequest("duration: 40 to 5000 ms".into()));
        }
        let mut st = self.inner.state.lock();
        let entry = &*st.established(call_id, "sent DTMF")?;
        let target = &entry.legs[entry.select_one(leg)?];
        if !by_info {
            let audio = target
                .media
                .iter()
                .find(|m| m.kind == TrackKind::Audio && m.running.is_some());
            let Some(audio) = audio else {
                return Err(RequestError::Conflict(format!(
                    "callId {call_id:?} has no running audio to carry RFC 4733 digits; use INFO"
                )));
            };
            let te = match (&audio.dtmf, &audio.codec) {
                (Some(te), Some(c)) if te.clock_rate == c.clock_rate => te.clone(),
                (Some(te), Some(c)) => {
                    return Err(RequestError::Conflict(format!(
                        "callId {call_id:?}: the far end took telephone-event/{} but the audio \
                         runs at {} Hz; use INFO",
                        te.clock_rate, c.clock_rate
                    )))
                }
                _ => {
                    return Err(RequestError::Conflict(format!(
                        "callId {call_id:?}: the far end did not accept telephone-event \
                         (RFC 4733) in its SDP; use type INFO"
                    )))
                }
            };
            // The far end's direction: it must receive (sendrecv or recvonly).
            if audio.direction.is_some_and(|d| !d.reversed().sends()) {
                return Err(RequestError::Conflict(format!(
                    "callId {call_id:?}: the far end does not take our audio now (it is \
                     {:?}); RFC 4733 digits cannot go out",
                    audio.direction.unwrap_or(Direction::SendRecv)
                )));
            }
            let tones: Vec<crate::media::dtmf::Tone> = digits
                .iter()
                .filter_map(|d| crate::media::dtmf::event_code(*d))
                .map(|event| crate::media::dtmf::Tone { event, duration_ms })
                .collect();
            if let Some((handle, _)) = &audio.running {
                handle
                    .update(LegUpdate::SendDtmf {
                        payload_type: te.pt,
                        tones,
                    })
                    .map_err(|e| RequestError::Unavailable(format!("DTMF not queued: {e}")))?;
            }
            tracing::info!(call_id, dtmf, payload_type = te.pt, "DTMF sent by RFC 4733");
            return Ok(self.snapshot(entry));
        }
        for d in digits {
            let signal = d.to_ascii_uppercase();
            let body = format!("Signal={signal}\r\nDuration={duration_ms}\r\n");
            self.inner.sip.command(Command::Info {
                key: target.key,
                content_type: "application/dtmf-relay".into(),
                body: body.into_bytes(),
            });
        }
        tracing::info!(call_id, dtmf, "DTMF sent by INFO");
        Ok(self.snapshot(entry))
    }

    // ---- inbound calls ----

    /// An INVITE to the gateway: routed by the `inbound_*` properties, reserved in the call
    /// table at once (so that its CANCEL finds it), then set up off the event loop.
    fn on_incoming(&self, ic: IncomingCall) {
        let cfg = &self.inner.cfg;
        let reject = |status: u16, why: &str| {
            tracing::info!(sip_call_id = %ic.sip_call_id, user = %ic.user, status, why, "inbound call refused");
            self.inner.sip.command(Command::Reject {
                key: ic.key,
                status,
                warning: None,
            });
        };
        if !cfg.inbound_accept {
            return reject(403, "inbound_calls=reject");
        }
        let exchange = match self.exchange_target(&ic) {
            Ok(x) => x,
            Err((status, why)) => return reject(status, &why),
        };
        if let (Some(p), None) = (&cfg.inbound_user_pattern, &exchange) {
            if !p.is_match(&ic.user) {
                return reject(404, "the user does not match inbound_user_pattern");
            }
        }
        let call_id = match cfg.inbound_call_id {
            crate::config::InboundCallId::SipCallId => sanitize_id(&ic.sip_call_id),
            crate::config::InboundCallId::Random => {
                format!("in-{}", crate::ids::random_token(12))
            }
        };
        let user = if ic.user.is_empty() {
            "inbound"
        } else {
            &ic.user
        };
        let stream = if exchange.is_some() {
            // Several may listen to one call: each its own stream.
            call_id.clone()
        } else {
            sanitize_id(
                &cfg.inbound_stream_name
                    .replace("{user}", user)
                    .replace("{callId}", &call_id),
            )
        };
        {
            let mut st = self.inner.state.lock();
            if st.active >= cfg.max_calls {
                drop(st);
                return reject(503, "max_calls reached");
            }
            if st
                .calls
                .get(&call_id)
                .is_some_and(|e| !e.info.status.is_final())
            {
                drop(st);
                return reject(482, "a call with this callId is active");
            }
            let mut info = inbound_info(
                &ic,
                &call_id,
                &stream,
                cfg.sip_record_stream && exchange.is_none(),
            );
            info.exchange_of = exchange.clone();
            st.history.retain(|id| id != &call_id);
            st.calls.insert(
                call_id.clone(),
                Entry::new(info, ic.key, Leg::Caller, &ic.from_uri),
            );
            st.keys.insert(ic.key, call_id.clone());
            st.active += 1;
        }
        tracing::info!(%call_id, stream = %stream, from = %ic.from_uri, to = %ic.request_uri, "inbound call");
        if call_id != ic.sip_call_id {
            // The UA's lines of this call carry our id, not its SIP Call-ID.
            self.inner.sip.command(Command::Label {
                key: ic.key,
                call_id: call_id.clone(),
            });
        }
        if cfg.inbound_answer_by_api && exchange.is_none() {
            // It rings (180) until /call/answer, /call/terminate or inbound_ring_timeout_s.
            let key = ic.key;
            self.inner
                .state
                .lock()
                .ring(&call_id, Box::new(ic), Now::real());
            self.inner.timers_changed.notify_one();
            self.inner.sip.command(Command::Ring(key));
            return;
        }
        self.answer_incoming(ic, call_id, stream, exchange);
    }

    /// `/call/answer`: answers an inbound call that rings for the API
    /// (`inbound_answer=api`). Answers at once; `ESTABLISHED` (or the failure) follows as
    /// events.
    pub fn answer(&self, call_id: &str) -> Result<CallInfo, RequestError> {
        let (ic, info) = {
            let mut st = self.inner.state.lock();
            let ic = st.answer(call_id)?;
            let entry = st
                .calls
                .get(call_id)
                .ok_or_else(|| RequestError::Internal("call vanished".into()))?;
            (ic, self.snapshot(entry))
        };
        tracing::info!(call_id, "inbound call answered by the API");
        self.answer_incoming(*ic, call_id.to_string(), info.to_stream.clone(), None);
        Ok(info)
    }

    /// Sets up an inbound call's media off the event loop and answers its INVITE.
    fn answer_incoming(
        &self,
        ic: IncomingCall,
        call_id: String,
        stream: String,
        exchange: Option<ExchangeLink>,
    ) {
        let this = self.clone();
        tokio::spawn(async move {
            let key = ic.key;
            let send_only = exchange
                .as_ref()
                .is_some_and(|x| x.kind == "send_from_call");
            match this
                .accept_incoming(&ic, &call_id, &stream, send_only)
                .await
            {
                Ok(info) => {
                    this.publish_status(&info);
                    if exchange.is_none() {
                        let participants = vec![ic.from_uri.clone(), ic.request_uri.clone()];
                        this.start_outputs(&info, false, participants).await;
                    }
                }
                Err(Refusal { status, why, warn }) => {
                    tracing::info!(%call_id, status, why = %why, "inbound call not answered");
                    // A refused offer says why in a Warning (RFC 3261 §20.43): the caller's
                    // trace shows what to change, not only that something failed.
                    let warning = warn.map(|code| Warning::new(code, why));
                    // The UA's final CallState ends the entry and frees what it holds.
                    this.inner.sip.command(Command::Reject {
                        key,
                        status,
                        warning,
                    });
                }
            }
        });
    }

    /// An INVITE addressed to listen to (`media_listen_pattern`) or barge into
    /// (`media_barge_pattern`) a running call: the Request-URI user matches (its group is the
    /// callId), or `<user>-<X-Call-Id header>` does. The leg is the URI's `leg` parameter or
    /// the `X-Leg` header (default `both`). Errors: the SIP status and why.
    fn exchange_target(&self, ic: &IncomingCall) -> Result<Option<ExchangeLink>, (u16, String)> {
        let cfg = &self.inner.cfg;
        let header = |name: &str| {
            ic.headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.trim().to_string())
        };
        let mut candidates = vec![ic.user.clone()];
        if let Some(id) = header("X-Call-Id") {
            candidates.push(format!("{}-{id}", ic.user));
        }
        let patterns = [
            ("send_from_call", cfg.media_listen_pattern.as_ref()),
            ("fetch_to_call", cfg.media_barge_pattern.as_ref()),
        ];
        let found = candidates.iter().find_map(|c| {
            patterns.iter().find_map(|(kind, p)| {
                let caps = (*p)?.captures(c)?;
                Some((*kind, caps.get(1)?.as_str().to_string()))
            })
        });
        let Some((kind, target)) = found else {
            return Ok(None);
        };
        let leg = uri_param(&ic.request_uri, "leg")
            .or_else(|| header("X-Leg"))
            .unwrap_or_else(|| "both".into())
            .to_ascii_lowercase();
        let st = self.inner.state.lock();
        let entry = st
            .calls
            .get(&target)
            .ok_or_else(|| (404, format!("callId {target:?}: no such call")))?;
        if !matches!(entry.info.status, CallPhase::Established | CallPhase::Hold) {
            return Err((480, format!("callId {target:?} is not established")));
        }
        if entry.info.exchange_of.is_some() {
            return Err((403, format!("callId {target:?} is itself a media exchange")));
        }
        entry.select(Some(&leg)).map_err(|e| (400, e.to_string()))?;
        tracing::info!(call_id = %target, kind, leg = %leg, from = %ic.from_uri, "inbound media exchange");
        Ok(Some(ExchangeLink {
            call_id: target,
            kind: kind.into(),
            leg,
        }))
    }

    /// Creates the stream, reserves ports for what the caller offers, answers.
    async fn accept_incoming(
        &self,
        ic: &IncomingCall,
        call_id: &str,
        stream: &str,
        send_only: bool,
    ) -> Result<CallInfo, Refusal> {
        let mut offer = match &ic.sdp {
            Some(text) => Some(
                SessionDescription::parse(text)
                    .map_err(|e| Refusal::warned(488, 399, format!("offer: {e}")))?,
            ),
            None => None,
        };
        // Sections at addresses our RTP sockets cannot send to (IPv6 while they are IPv4,
        // RFC 5118 §4.6 and §4.8) are refused, not answered with media that goes nowhere.
        let unreachable = match offer.as_mut() {
            Some(o) => sdp::refuse_unreachable(o, self.inner.cfg.rtp_address),
            None => Vec::new(),
        };
        let unreachable_text = (!unreachable.is_empty()).then(|| {
            let list: Vec<String> = unreachable.iter().map(ToString::to_string).collect();
            let family = if self.inner.cfg.rtp_address.is_ipv4() {
                "IPv4"
            } else {
                "IPv6"
            };
            format!(
                "{} unreachable from our {family} RTP sockets",
                list.join(", ")
            )
        });
        if !unreachable.is_empty() {
            tracing::info!(%call_id, refused = ?unreachable_text, "offered media at addresses we cannot reach");
        }
        let (has_audio, has_video) = match &offer {
            Some(o) => (
                o.media
                    .iter()
                    .any(|m| m.kind == MediaKind::Audio && m.port != 0),
                o.media
                    .iter()
                    .any(|m| m.kind == MediaKind::Video && m.port != 0),
            ),
            None => (true, false),
        };
        if !has_audio && !has_video {
            return Err(match unreachable_text {
                // 301: "one or more network address formats contained in the session
                // description are not available".
                Some(text) => Refusal::warned(488, 301, text),
                None => Refusal::warned(488, 304, "the offer has no audio or video"),
            });
        }
        let local_ip = self.local_ip(ic.source).map_err(|e| (500, e.to_string()))?;
        let sip_port = self
            .inner
            .sip
            .port(ic.transport)
            .ok_or_else(|| (500, "transport disabled".to_string()))?;
        let media_ip = self.inner.cfg.media_ip.unwrap_or(local_ip);
        let publisher = self
            .inner
            .registry
            .create(stream, Some(call_id.to_string()))
            .map_err(|e| match e {
                RegistryError::AlreadyExists(_) => (486, format!("stream {stream:?} is live")),
                other => (500, other.to_string()),
            })?;
        let publisher = Arc::new(publisher);
        let mut media = Vec::new();
        for (kind, wanted) in [(TrackKind::Audio, has_audio), (TrackKind::Video, has_video)] {
            if wanted {
                match self.media_leg(kind).await {
                    Ok(m) => media.push(m),
                    Err(e) => {
                        publisher.end("FAILED");
                        return Err((503, e.to_string()).into());
                    }
                }
            }
        }
        let (sdp, info) = {
            let mut st = self.inner.state.lock();
            let live = st.keys.get(&ic.key).map(String::as_str) == Some(call_id);
            let Some(entry) = st.calls.get_mut(call_id).filter(|_| live) else {
                // CANCELled (or ended) while we were setting up.
                publisher.end("FINISH");
                return Err((487, "the call ended during set-up".to_string()).into());
            };
            entry.publisher = Some(publisher.clone());
            entry.info.has_audio = has_audio;
            entry.info.has_video = has_video;
            {
                let leg = &mut entry.legs[0];
                leg.media = media;
                leg.media_ip = Some(media_ip);
                leg.sip_call_id = Some(ic.sip_call_id.clone());
                // If the caller transfers us, the new INVITE goes back towards its host.
                let domain = crate::sip::dialog::parse_uri(&ic.request_uri)
                    .map(|u| u.host_with_port.host.to_string())
                    .unwrap_or_else(|_| local_ip.to_string());
                leg.template = Some(Box::new(PlaceCall {
                    key: 0,
                    account: Account {
                        login: if ic.user.is_empty() {
                            "sipstream".into()
                        } else {
                            ic.user.clone()
                        },
                        auth_name: String::new(),
                        password: String::new(),
                        domain,
                    },
                    callee_uri: String::new(),
                    register: false,
                    route: Route {
                        transport: ic.transport,
                        dest: ic.source,
                        local: SocketAddr::new(local_ip, sip_port),
                        sticky: false,
                    },
                    registrar: None,
                    sdp_offer: String::new(),
                    body: None,
                    from_uri: None,
                    to_uri: None,
                    contact_params: String::new(),
                    sip_call_id: None,
                    headers: Vec::new(),
                    label: call_id.to_string(),
                }));
            }
            entry.legs[0].send_only = send_only;
            let want = entry.legs[0].want();
            // Inbound calls follow sip_srtp: an offer's crypto is answered (or refused by a
            // mandatory policy); a late offer of ours carries crypto lines of our own.
            entry.legs[0].srtp = self.inner.cfg.sip_srtp;
            entry.info.srtp = self.inner.cfg.sip_srtp;
            let sdp = match &offer {
                Some(o) => {
                    let mut answer = sdp::answer(&entry.legs[0].local_sdp(want), o, want);
                    if answer.media.iter().all(|m| m.port == 0) {
                        return Err(Refusal::warned(
                            488,
                            305,
                            "no codec of the offer is one we take",
                        ));
                    }
                    entry.legs[0]
                        .secure_answer(&mut answer, o)
                        .map_err(|why| Refusal::warned(488, 399, why))?;
                    if let Some(text) = &ic.sdp {
                        self.apply_remote_sdp(entry, 0, text, Some(want));
                    }
                    entry.legs[0].sdp.stamp(answer)
                }
                None => {
                    entry.legs[0].offer_srtp();
                    let ours = entry.legs[0].local_sdp(want);
                    entry.legs[0].sdp.stamp(ours)
                }
            };
            entry.info.legs = entry.leg_infos();
            (sdp, entry.info.clone())
        };
        self.inner.sip.command(Command::Answer {
            key: ic.key,
            sdp,
            local: SocketAddr::new(local_ip, sip_port),
            warning: unreachable_text.map(|text| Warning::new(301, text)),
        });
        Ok(info)
    }

    /// Negotiates each media line against the remote SDP; starts RTP on first use, updates
    /// the remote address, direction and codec afterwards.
    /// `want`: Some(our wish) when `text` is an offer we answer, None when it answers ours.
    fn apply_remote_sdp(&self, entry: &mut Entry, idx: usize, text: &str, want: Option<Direction>) {
        let call_id = entry.info.call_id.clone();
        let Entry {
            legs, publisher, ..
        } = entry;
        let Some(call_leg) = legs.get_mut(idx) else {
            return;
        };
        let leg_name = call_leg.name;
        let srtp_policy = call_leg.srtp;
        let mut srtp_failure: Option<String> = None;
        let mut remote = match SessionDescription::parse(text) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(%call_id, error = %e, "unreadable remote SDP ignored");
                return;
            }
        };
        let cfg = &self.inner.cfg;
        // The media of a section we cannot reach gets no remote address (as our answer
        // refused it), rather than RTP sent where it cannot go.
        sdp::refuse_unreachable(&mut remote, cfg.rtp_address);
        let key = call_leg.key;
        for (i, leg) in call_leg.media.iter_mut().enumerate() {
            let kind = match leg.kind {
                TrackKind::Audio => MediaKind::Audio,
                TrackKind::Video => MediaKind::Video,
            };
            // RFC 3264 §6: the answer's lines are the offer's, in its order; by kind when
            // the other side's order is not ours (an offer we answered, video first).
            let m = remote
                .media
                .get(i)
                .filter(|m| m.kind == kind)
                .or_else(|| remote.media.iter().find(|m| m.kind == kind));
            let Some(m) = m else {
                continue;
            };
            let neg = match sdp::negotiate(&leg.offered, m, remote.connection) {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(%call_id, error = %e, "media line not negotiated");
                    continue;
                }
            };
            let srtp = match CallLeg::srtp_keys(srtp_policy, leg, m, want.is_some()) {
                Ok(k) => k,
                Err(why) => {
                    // No media in the clear when SRTP was required: the leg is hung up and
                    // ends FAILED with the reason.
                    tracing::warn!(%call_id, %why, "SRTP not negotiated; hanging up");
                    if srtp_failure.is_none() {
                        srtp_failure = Some(why);
                    }
                    continue;
                }
            };
            let suite = srtp.as_ref().map(|k| k.suite);
            let keys = srtp.clone();
            leg.remote = neg.remote_rtp;
            leg.direction = Some(neg.direction);
            let track_spec = TrackSpec {
                kind: leg.kind,
                leg: leg_name,
                codec: neg.codec.encoding.clone(),
                clock_rate: neg.codec.clock_rate,
                channels: neg.codec.channels,
                payload_type: neg.codec.pt,
                fmtp: neg.codec.fmtp.clone(),
            };
            let silence =
                silence_payload(&neg.codec.encoding, neg.codec.clock_rate, cfg.rtp_ptime_ms);
            let ours = match want {
                Some(w) => sdp::answer_direction(neg.direction, w),
                None => neg.direction.reversed(),
            };
            match (&leg.running, leg.pair.take()) {
                (None, Some(pair)) => {
                    let Some(publisher) = publisher.clone() else {
                        continue;
                    };
                    let track = match publisher.add_track(track_spec) {
                        Ok(t) => t,
                        Err(e) => {
                            tracing::warn!(%call_id, error = %e, "track not added");
                            continue;
                        }
                    };
                    let session = SessionConfig {
                        local_ssrc: rand::random(),
                        payload_type: neg.codec.pt,
                        clock_rate: neg.codec.clock_rate,
                        ptime_ms: cfg.rtp_ptime_ms,
                        latching: cfg.rtp_latching,
                        remote_rtp: neg.remote_rtp,
                        remote_rtcp: neg.remote_rtcp,
                        send_silence: cfg.rtp_send_silence && leg.kind == TrackKind::Audio,
                        silence_payload: silence,
                        rtcp_interval: cfg.rtcp_interval,
                        cname: format!("{call_id}@sipstream"),
                        direction: ours,
                        initial_seq: rand::random(),
                        initial_timestamp: rand::random(),
                    };
                    let span = tracing::info_span!("rtp", call_id = %call_id, leg = ?leg_name, kind = ?leg.kind);
                    let handle = spawn_leg_on(
                        self.inner.media.pick(),
                        pair,
                        session,
                        srtp,
                        publisher,
                        track,
                        span,
                    );
                    if let (Some(te), TrackKind::Audio) = (&neg.dtmf, leg.kind) {
                        // RFC 4733 digits from the far end become DtmfEvents.
                        let (tx, mut rx) = mpsc::unbounded_channel();
                        let update = LegUpdate::Dtmf {
                            payload_type: te.pt,
                            clock_rate: te.clock_rate,
                            digits: tx,
                        };
                        if handle.update(update).is_ok() {
                            // By call and leg name, not dialog key: the media stays with the
                            // leg when a transfer gives it a new dialog.
                            let this = self.clone();
                            let (call_id, leg) = (call_id.clone(), super::leg::leg_name(leg_name));
                            tokio::spawn(async move {
                                while let Some(d) = rx.recv().await {
                                    tracing::info!(%call_id, leg, digit = %d.digit, "DTMF received (RFC 4733)");
                                    this.inner.bus.publish(dtmf_event(
                                        &call_id,
                                        leg,
                                        d.digit,
                                        Some(d.duration_ms),
                                        "RFC4733",
                                    ));
                                    this.relay_dtmf(&call_id, leg, d.digit, Some(d.duration_ms));
                                }
                            });
                        }
                    }
                    leg.running = Some((handle, track));
                    tracing::info!(%call_id, kind = ?leg.kind, codec = %neg.codec.encoding, remote = ?neg.remote_rtp, "media started");
                }
                (Some((handle, track)), _) => {
                    let mut updates = vec![
                        LegUpdate::Remote {
                            rtp: neg.remote_rtp,
                            rtcp: neg.remote_rtcp,
                        },
                        LegUpdate::Direction(ours),
                    ];
                    if leg.srtp_keys != srtp {
                        // Re-keyed, turned on or off by the new offer/answer. The same keys
                        // again keep the running contexts (and their rollover counters).
                        updates.push(LegUpdate::Srtp(srtp.clone()));
                    }
                    if leg.codec.as_ref() != Some(&neg.codec) {
                        if let Some(p) = publisher {
                            let _ = p.update_track(*track, track_spec);
                        }
                        updates.push(LegUpdate::Codec {
                            payload_type: neg.codec.pt,
                            clock_rate: neg.codec.clock_rate,
                            silence_payload: silence,
                        });
                    }
                    for u in updates {
                        if let Err(e) = handle.update(u) {
                            tracing::warn!(%call_id, error = %e, "media update not applied");
                        }
                    }
                }
                (None, None) => {}
            }
            leg.dtmf = neg.dtmf.clone();
            leg.codec = Some(neg.codec);
            leg.srtp = suite;
            leg.srtp_keys = keys;
        }
        if let Some(why) = srtp_failure {
            if call_leg.end_as.is_none() {
                call_leg.end_as = Some((CallPhase::Failed, 488, why));
                self.inner.sip.command(Command::Hangup(key));
            }
        }
    }

    /// Logs and publishes a status change (None: nothing changed).
    fn status_changed(&self, info: Option<CallInfo>) {
        if let Some(info) = info {
            tracing::info!(call_id = %info.call_id, status = info.status.as_str(), "call status");
            self.publish_status(&info);
        }
    }

    fn publish_status(&self, info: &CallInfo) {
        self.inner.bus.publish(Event::CallStatusEvent {
            call_id: info.call_id.clone(),
            status: info.status.as_str().to_string(),
            sip_status: info.sip_status,
            reason: info.reason.clone(),
            stream_name: info.to_stream.clone(),
            callee: info.callee.clone(),
            timestamp: unix_ms(),
        });
    }

    /// Hangs up every call and un-REGISTERs, waiting at most `timeout`.
    pub async fn shutdown(&self, timeout: Duration) {
        let idle = self.inner.idle.notified();
        if !self.inner.sip.command(Command::Shutdown) {
            return;
        }
        if tokio::time::timeout(timeout, idle).await.is_err() {
            tracing::warn!("shutdown: calls or registrations still open after the timeout");
        }
        // Give the last BYE/REGISTER responses' media cleanup a moment.
        tokio::time::sleep(Duration::from_millis(50))
            .in_current_span()
            .await;
    }
}

fn initial_info(spec: &CallSpec) -> CallInfo {
    CallInfo {
        call_id: spec.call_id.clone(),
        direction: "outbound".into(),
        caller: spec.caller.as_ref().map(|c| c.uri.clone()),
        callee: spec.callee_uri.clone(),
        sip_login: spec.sip_login.clone(),
        sip_domain: spec.domain.clone(),
        sip_outbound_proxy: spec.proxy_host.clone(),
        sip_port: spec.proxy_port,
        sip_transport: spec.transport.via_token().to_ascii_lowercase(),
        srtp: spec.srtp.unwrap_or_default(),
        sip_register_required: spec.register,
        has_audio: spec.has_audio,
        has_video: spec.has_video,
        to_stream: spec.stream.clone(),
        record: spec.record,
        status: CallPhase::Pending,
        sip_status: None,
        reason: None,
        sip_call_id: None,
        created_at: unix_ms(),
        established_at: None,
        ended_at: None,
        legs: Vec::new(),
        exchange_of: spec.exchange.clone(),
    }
}

/// Why an inbound call was not answered: the SIP status, what went wrong, and the Warning
/// code (RFC 3261 §20.43) that tells the caller, when the caller can act on it.
#[derive(Debug)]
struct Refusal {
    status: u16,
    why: String,
    warn: Option<u16>,
}

impl Refusal {
    fn warned(status: u16, warn: u16, why: impl Into<String>) -> Self {
        Self {
            status,
            why: why.into(),
            warn: Some(warn),
        }
    }
}

impl From<(u16, String)> for Refusal {
    fn from((status, why): (u16, String)) -> Self {
        Self {
            status,
            why,
            warn: None,
        }
    }
}

/// The call object of an inbound call before it is answered.
fn inbound_info(ic: &IncomingCall, call_id: &str, stream: &str, record: bool) -> CallInfo {
    let host = crate::sip::dialog::parse_uri(&ic.request_uri)
        .map(|u| u.host_with_port.host.to_string())
        .unwrap_or_default();
    CallInfo {
        call_id: call_id.to_string(),
        direction: "inbound".into(),
        caller: Some(ic.from_uri.clone()),
        callee: ic.request_uri.clone(),
        sip_login: ic.user.clone(),
        sip_domain: host,
        sip_outbound_proxy: ic.source.ip().to_string(),
        sip_port: ic.source.port(),
        sip_transport: ic.transport.via_token().to_ascii_lowercase(),
        srtp: crate::rtp::srtp::SrtpPolicy::Off,
        sip_register_required: false,
        has_audio: true,
        has_video: false,
        to_stream: stream.to_string(),
        record,
        status: CallPhase::Pending,
        sip_status: None,
        reason: None,
        sip_call_id: Some(ic.sip_call_id.clone()),
        created_at: unix_ms(),
        established_at: None,
        ended_at: None,
        legs: Vec::new(),
        exchange_of: None,
    }
}

/// A parameter of a SIP URI (`sip:listen-c1@gw;leg=caller` → `leg` = `caller`).
fn uri_param(uri: &str, name: &str) -> Option<String> {
    let params = uri.split(['?', '>']).next()?.split(';').skip(1);
    params.into_iter().find_map(|p| {
        let (n, v) = p.split_once('=')?;
        n.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_string())
    })
}

/// `text` made into an id: characters outside `A-Z a-z 0-9 _ . -` become `_`, at most 128.
fn sanitize_id(text: &str) -> String {
    let id: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_.-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(128)
        .collect();
    if id.is_empty() {
        format!("in-{}", crate::ids::random_token(12))
    } else {
        id
    }
}

fn dtmf_event(
    call_id: &str,
    leg: &str,
    digit: char,
    duration_ms: Option<u32>,
    method: &str,
) -> Event {
    Event::DtmfEvent {
        call_id: call_id.to_string(),
        leg: leg.to_string(),
        digit: digit.to_string(),
        duration: duration_ms,
        method: method.to_string(),
        timestamp: unix_ms(),
    }
}

pub(super) async fn resolve(host: &str, port: u16) -> Result<SocketAddr, RequestError> {
    crate::sip::locate::resolve(host, port)
        .await
        .map_err(|e| RequestError::Upstream(format!("sipOutboundProxy: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_parameters_are_read_after_the_host() {
        assert_eq!(
            uri_param("sip:listen-c1@gw:5060;leg=callee", "leg").as_deref(),
            Some("callee")
        );
        assert_eq!(
            uri_param("sip:listen-c1@gw;transport=udp;LEG=caller?x=y", "leg").as_deref(),
            Some("caller")
        );
        assert_eq!(uri_param("sip:listen-c1@gw", "leg"), None);
    }
}
