//! The tokio driver of WHEP sessions: builds one `webrtc` peer connection per player,
//! answers its offer, and runs one task per session that moves the stream's units to the
//! player's tracks.
//!
//! Drive contract: [`WhepService::create`] returns once the answer (with every host
//! candidate: no trickle) is ready; the session then lives in its own task until
//! [`WhepService::delete`], an ICE failure (consent lost), the connect timeout or the end of
//! the stream. The task alone frees what the session holds: the peer connection (closed), the
//! registry reader (dropped: it leaves `/stream/find`) and the UDP port.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rtc::ice::mdns::MulticastDnsMode;
use rtc::media_stream::MediaStreamTrack;
use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters,
    RTCRtpEncodingParameters, RtpCodecKind,
};
use tokio::sync::{mpsc, Notify};
use tracing::Instrument;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::peer_connection::{
    register_default_interceptors, MediaEngine, PeerConnection, PeerConnectionBuilder,
    PeerConnectionEventHandler, RTCConfigurationBuilder, RTCIceCandidateType, RTCIceGatheringState,
    RTCIceServer, RTCPeerConnectionState, RTCSessionDescription, Registry as InterceptorRegistry,
    SettingEngineBuilder,
};
use webrtc::rtp_transceiver::RTCRtpTransceiverDirection;

use super::forward::{KeyframeGate, Rewriter};
use super::offer::{self, OfferCodec, Selection};
use super::{IceServer, WebrtcConfig, WhepError};
use crate::registry::{
    ReaderEvent, Registry, RegistryError, TrackId, TrackKind, TrackSpec, TryRecvError,
};

/// How long the answer waits for ICE gathering (host candidates take milliseconds; a STUN
/// server that does not answer must not hold the HTTP request).
const GATHER_TIMEOUT: Duration = Duration::from_secs(3);

/// The result of a successful offer.
#[derive(Debug, Clone)]
pub struct WhepAnswer {
    pub session: String,
    pub sdp: String,
}

struct Entry {
    stream: String,
    stop: Arc<Notify>,
}

struct Inner {
    cfg: WebrtcConfig,
    registry: Registry,
    sessions: Mutex<HashMap<String, Entry>>,
    ports: Mutex<PortState>,
}

#[derive(Default)]
struct PortState {
    used: BTreeSet<u16>,
    cursor: u32,
}

/// The WHEP sessions of the gateway. Cheap to clone.
#[derive(Clone)]
pub struct WhepService {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for WhepService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WhepService")
            .field("sessions", &self.len())
            .finish()
    }
}

/// A UDP port of the `webrtc_port_*` range, back in the range when dropped.
struct PortLease {
    inner: Arc<Inner>,
    port: u16,
}

impl Drop for PortLease {
    fn drop(&mut self) {
        self.inner.ports.lock().used.remove(&self.port);
    }
}

/// What the peer connection tells the session task.
struct Events {
    state: mpsc::UnboundedSender<RTCPeerConnectionState>,
    gathered: Arc<Notify>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Events {
    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            self.gathered.notify_one();
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        let _ = self.state.send(state);
    }
}

/// One track towards the player.
struct Out {
    source: TrackId,
    spec: TrackSpec,
    track: Arc<TrackLocalStaticRTP>,
    rewriter: Rewriter,
    /// Video only.
    gate: Option<KeyframeGate>,
    sent: u64,
    write_errors: u64,
}

impl WhepService {
    pub fn new(cfg: WebrtcConfig, registry: Registry) -> Self {
        Self {
            inner: Arc::new(Inner {
                cfg,
                registry,
                sessions: Mutex::new(HashMap::new()),
                ports: Mutex::new(PortState::default()),
            }),
        }
    }

    /// Live sessions.
    pub fn len(&self) -> usize {
        self.inner.sessions.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The ICE servers for the web pages.
    pub fn ice_servers(&self) -> Vec<IceServer> {
        self.inner.cfg.ice_servers.clone()
    }

    /// Ends session `session` of `stream`; the session's task frees its resources.
    pub fn delete(&self, stream: &str, session: &str) -> Result<(), WhepError> {
        let mut sessions = self.inner.sessions.lock();
        match sessions.get(session) {
            Some(e) if e.stream == stream => {
                e.stop.notify_one();
                sessions.remove(session);
                Ok(())
            }
            _ => Err(WhepError::SessionNotFound {
                stream: stream.chars().take(140).collect(),
                session: session.chars().take(64).collect(),
            }),
        }
    }

    /// Answers a player's offer for `stream` and starts the session.
    pub async fn create(&self, stream: &str, offer_sdp: &str) -> Result<WhepAnswer, WhepError> {
        let offer = offer::parse_offer(offer_sdp)?;
        if self.len() >= self.inner.cfg.max_sessions {
            return Err(WhepError::Capacity(format!(
                "{} players already (webrtc_max_sessions)",
                self.inner.cfg.max_sessions
            )));
        }
        let mut reader = self
            .inner
            .registry
            .subscribe(stream, "webrtc")
            .map_err(|e| match e {
                RegistryError::InvalidName { name, .. } | RegistryError::NotFound(name) => {
                    WhepError::StreamNotFound(name)
                }
                e @ RegistryError::TooManyReaders { .. } => WhepError::Capacity(e.to_string()),
                other => WhepError::Internal(other.to_string()),
            })?;
        let tracks = wait_for_tracks(&mut reader, stream, self.inner.cfg.track_wait).await?;
        let selections = offer::select(&tracks, &offer)?;
        let inactive = offer::inactive_codecs(&offer, &selections);
        let port = self.take_port()?;
        let id = crate::ids::random_token(16);
        let span = tracing::info_span!("whep", stream = %stream, session = %id);
        let started = self
            .start_peer(&selections, &inactive, offer_sdp, port.port)
            .instrument(span.clone())
            .await?;
        let Started {
            pc,
            outs,
            state_rx,
            sdp,
        } = started;
        let stop = Arc::new(Notify::new());
        self.inner.sessions.lock().insert(
            id.clone(),
            Entry {
                stream: stream.to_string(),
                stop: stop.clone(),
            },
        );
        {
            let _e = span.enter();
            let codecs: Vec<String> = outs
                .iter()
                .map(|o| format!("{}/{}", o.spec.codec, o.spec.clock_rate))
                .collect();
            let inactive: Vec<String> = inactive
                .iter()
                .map(|(_, c)| format!("{}/{}", c.name, c.clock_rate))
                .collect();
            tracing::info!(
                reader = reader.id(),
                port = port.port,
                codecs = %codecs.join(","),
                inactive = %inactive.join(","),
                "WHEP session answered"
            );
        }
        let task = SessionTask {
            inner: self.inner.clone(),
            id: id.clone(),
            pc,
            reader,
            outs,
            state_rx,
            stop,
            _port: port,
        };
        tokio::spawn(task.run().instrument(span));
        Ok(WhepAnswer { session: id, sdp })
    }

    fn take_port(&self) -> Result<PortLease, WhepError> {
        let cfg = &self.inner.cfg;
        if cfg.port_min == 0 {
            return Ok(PortLease {
                inner: self.inner.clone(),
                port: 0,
            });
        }
        let span = u32::from(cfg.port_max) - u32::from(cfg.port_min) + 1;
        let mut st = self.inner.ports.lock();
        for i in 0..span {
            let off = (st.cursor + i) % span;
            let Ok(port) = u16::try_from(u32::from(cfg.port_min) + off) else {
                continue;
            };
            if st.used.contains(&port) {
                continue;
            }
            // Another process may hold it: probe, then hand the (closed) port to the peer
            // connection, which binds it again a few milliseconds later.
            if std::net::UdpSocket::bind(SocketAddr::new(cfg.bind_ip, port)).is_ok() {
                st.used.insert(port);
                st.cursor = (off + 1) % span;
                return Ok(PortLease {
                    inner: self.inner.clone(),
                    port,
                });
            }
        }
        Err(WhepError::Capacity(format!(
            "no free UDP port in webrtc_port_min..webrtc_port_max ({}-{}) on {}",
            cfg.port_min, cfg.port_max, cfg.bind_ip
        )))
    }

    async fn start_peer(
        &self,
        selections: &[Selection],
        inactive: &[(TrackKind, OfferCodec)],
        offer_sdp: &str,
        port: u16,
    ) -> Result<Started, WhepError> {
        let cfg = &self.inner.cfg;
        let internal =
            |what: &str, e: webrtc::error::Error| WhepError::Internal(format!("{what}: {e}"));
        // Only the chosen codecs, under the browser's payload types: the answer then carries
        // exactly what is forwarded.
        let mut media = MediaEngine::default();
        let mut codecs = Vec::new();
        for sel in selections {
            let (kind, prefix) = match sel.spec.kind {
                TrackKind::Audio => (RtpCodecKind::Audio, "audio"),
                TrackKind::Video => (RtpCodecKind::Video, "video"),
            };
            let feedback = |typ: &str, parameter: &str| RTCPFeedback {
                typ: typ.into(),
                parameter: parameter.into(),
            };
            let codec = RTCRtpCodec {
                mime_type: format!("{prefix}/{}", sel.offered.name),
                clock_rate: sel.offered.clock_rate,
                channels: match kind {
                    RtpCodecKind::Audio => u16::from(sel.offered.channels),
                    _ => 0,
                },
                sdp_fmtp_line: sel.offered.fmtp.clone().unwrap_or_default(),
                rtcp_feedback: match kind {
                    RtpCodecKind::Video => vec![
                        feedback("nack", ""),
                        feedback("nack", "pli"),
                        feedback("ccm", "fir"),
                    ],
                    _ => Vec::new(),
                },
            };
            media
                .register_codec(
                    RTCRtpCodecParameters {
                        rtp_codec: codec.clone(),
                        payload_type: sel.offered.payload_type,
                    },
                    kind,
                )
                .map_err(|e| internal("registering codec", e))?;
            codecs.push((kind, codec));
        }
        // The offered kinds the stream cannot feed: registered under one offered codec so
        // that their m= sections are answered `inactive` inside the BUNDLE group, with the
        // bundle's ICE credentials, setup role and rtcp-mux, instead of being rejected with
        // a bare `m=video 0 ... 0` + `a=mid` (which aiortc refuses). Nothing is ever sent or
        // received on them. See `offer::inactive_codecs` for the standards side.
        for (kind, c) in inactive {
            let (kind, prefix) = match kind {
                TrackKind::Audio => (RtpCodecKind::Audio, "audio"),
                TrackKind::Video => (RtpCodecKind::Video, "video"),
            };
            media
                .register_codec(
                    RTCRtpCodecParameters {
                        rtp_codec: RTCRtpCodec {
                            mime_type: format!("{prefix}/{}", c.name),
                            clock_rate: c.clock_rate,
                            channels: match kind {
                                RtpCodecKind::Audio => u16::from(c.channels),
                                _ => 0,
                            },
                            sdp_fmtp_line: c.fmtp.clone().unwrap_or_default(),
                            rtcp_feedback: Vec::new(),
                        },
                        payload_type: c.payload_type,
                    },
                    kind,
                )
                .map_err(|e| internal("registering codec", e))?;
        }
        let interceptors = register_default_interceptors(InterceptorRegistry::new(), &mut media)
            .map_err(|e| internal("interceptors", e))?;
        let mut settings = SettingEngineBuilder::new()
            .with_ice_timeouts(
                Some(cfg.disconnected_timeout),
                Some(cfg.failed_timeout),
                Some(Duration::from_secs(2)),
            )
            .with_multicast_dns_mode(MulticastDnsMode::Disabled)
            .with_include_loopback_candidate(cfg.bind_ip.is_loopback());
        if let Some(ip) = cfg.announce_ip {
            settings = settings.with_nat_1to1_ips(vec![ip.to_string()], RTCIceCandidateType::Host);
        }
        let ice_servers = cfg
            .ice_servers
            .iter()
            .map(|s| RTCIceServer {
                urls: s.urls.clone(),
                username: s.username.clone().unwrap_or_default(),
                credential: s.credential.clone().unwrap_or_default(),
            })
            .collect();
        let (state_tx, state_rx) = mpsc::unbounded_channel();
        let gathered = Arc::new(Notify::new());
        let bind: SocketAddr = SocketAddr::new(cfg.bind_ip, port);
        let pc = PeerConnectionBuilder::new()
            .with_configuration(
                RTCConfigurationBuilder::new()
                    .with_ice_servers(ice_servers)
                    .build(),
            )
            .with_media_engine(media)
            .with_setting_engine(settings.build())
            .with_interceptor_registry(interceptors)
            .with_handler(Arc::new(Events {
                state: state_tx,
                gathered: gathered.clone(),
            }))
            .with_udp_addrs(vec![bind])
            .build()
            .await
            .map_err(|e| internal("creating the peer connection", e))?;
        let pc: Arc<dyn PeerConnection> = Arc::new(pc);
        let result = async {
            let mut outs = Vec::new();
            for (sel, (kind, codec)) in selections.iter().zip(codecs) {
                let ssrc = rand::random::<u32>();
                let kind_name = if kind == RtpCodecKind::Audio { "audio" } else { "video" };
                let track = Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
                    "sipstream".to_string(),
                    format!("{kind_name}{}", sel.track),
                    format!("{kind_name} {}", sel.spec.codec),
                    kind,
                    vec![RTCRtpEncodingParameters {
                        rtp_coding_parameters: RTCRtpCodingParameters {
                            ssrc: Some(ssrc),
                            ..Default::default()
                        },
                        codec: codec.clone(),
                        ..Default::default()
                    }],
                )));
                pc.add_track(track.clone() as Arc<dyn TrackLocal>)
                    .await
                    .map_err(|e| internal("adding a track", e))?;
                outs.push(Out {
                    source: sel.track,
                    spec: sel.spec.clone(),
                    track,
                    rewriter: Rewriter::new(ssrc, sel.offered.payload_type, sel.offered.clock_rate),
                    gate: (kind == RtpCodecKind::Video).then(KeyframeGate::default),
                    sent: 0,
                    write_errors: 0,
                });
            }
            let offer = RTCSessionDescription::offer(offer_sdp.to_string())
                .map_err(|e| WhepError::BadOffer(e.to_string()))?;
            pc.set_remote_description(offer)
                .await
                .map_err(|e| WhepError::BadOffer(e.to_string()))?;
            // The transceivers the offer created without a track of ours (the crate makes
            // them `sendonly` towards a `recvonly` offer) send nothing: `inactive`, as JSEP
            // answers a recvonly section when there is nothing to send.
            for t in pc.get_transceivers().await {
                if t.sender().await.ok().flatten().is_none() {
                    t.set_direction(RTCRtpTransceiverDirection::Inactive)
                        .await
                        .map_err(|e| internal("setting a transceiver inactive", e))?;
                }
            }
            let answer = pc
                .create_answer(None)
                .await
                .map_err(|e| WhepError::BadOffer(format!("cannot answer it: {e}")))?;
            pc.set_local_description(answer)
                .await
                .map_err(|e| internal("applying the answer", e))?;
            if tokio::time::timeout(GATHER_TIMEOUT, gathered.notified())
                .await
                .is_err()
            {
                tracing::warn!("ICE gathering did not complete in {GATHER_TIMEOUT:?}; answering with what there is");
            }
            let sdp = pc
                .local_description()
                .await
                .map(|d| d.sdp)
                .ok_or_else(|| WhepError::Internal("no local description".into()))?;
            Ok::<_, WhepError>((outs, sdp))
        }
        .await;
        match result {
            Ok((outs, sdp)) => Ok(Started {
                pc,
                outs,
                state_rx,
                sdp,
            }),
            Err(e) => {
                let _ = pc.close().await;
                Err(e)
            }
        }
    }
}

struct Started {
    pc: Arc<dyn PeerConnection>,
    outs: Vec<Out>,
    state_rx: mpsc::UnboundedReceiver<RTCPeerConnectionState>,
    sdp: String,
}

/// The stream's current tracks; waits up to `wait` for the first one (a call that is not
/// answered yet has a stream without tracks).
async fn wait_for_tracks(
    reader: &mut crate::registry::Reader,
    stream: &str,
    wait: Duration,
) -> Result<Vec<(TrackId, TrackSpec)>, WhepError> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut tracks: Vec<(TrackId, TrackSpec)> = Vec::new();
    let add = |tracks: &mut Vec<(TrackId, TrackSpec)>, id: TrackId, spec: TrackSpec| {
        tracks.retain(|(t, _)| *t != id);
        tracks.push((id, spec));
    };
    loop {
        loop {
            match reader.try_recv() {
                Ok(ReaderEvent::TrackChanged(id, spec)) => add(&mut tracks, id, spec),
                Ok(ReaderEvent::Media(_)) => {}
                Ok(ReaderEvent::Ended(_)) | Err(TryRecvError::Closed) => {
                    return Err(WhepError::StreamNotFound(stream.to_string()))
                }
                Err(TryRecvError::Empty) => break,
            }
        }
        if !tracks.is_empty() {
            tracks.sort_by_key(|(id, _)| *id);
            return Ok(tracks);
        }
        match tokio::time::timeout_at(deadline, reader.recv()).await {
            Err(_) => return Err(WhepError::NoTracks(stream.to_string())),
            Ok(Some(ReaderEvent::TrackChanged(id, spec))) => add(&mut tracks, id, spec),
            Ok(Some(ReaderEvent::Media(_))) => {}
            Ok(Some(ReaderEvent::Ended(_)) | None) => {
                return Err(WhepError::StreamNotFound(stream.to_string()))
            }
        }
    }
}

struct SessionTask {
    inner: Arc<Inner>,
    id: String,
    pc: Arc<dyn PeerConnection>,
    reader: crate::registry::Reader,
    outs: Vec<Out>,
    state_rx: mpsc::UnboundedReceiver<RTCPeerConnectionState>,
    stop: Arc<Notify>,
    _port: PortLease,
}

impl SessionTask {
    async fn run(mut self) {
        let connect_deadline = tokio::time::sleep(self.inner.cfg.connect_timeout);
        tokio::pin!(connect_deadline);
        let mut connected = false;
        let reason: String = loop {
            tokio::select! {
                _ = self.stop.notified() => break "deleted by the player (DELETE)".into(),
                state = self.state_rx.recv() => match state {
                    Some(RTCPeerConnectionState::Connected) => {
                        connected = true;
                        tracing::info!("player connected (ICE + DTLS)");
                        // Video starts at a keyframe: ask the SIP side for one now rather than
                        // wait for the next periodic one (RTCP PLI from the RTP leg).
                        for o in self.outs.iter().filter(|o| o.spec.kind == crate::registry::TrackKind::Video) {
                            self.reader.request_keyframe(o.source);
                        }
                    }
                    Some(RTCPeerConnectionState::Disconnected) => {
                        tracing::debug!("player disconnected (no consent yet); waiting for failed");
                    }
                    Some(RTCPeerConnectionState::Failed) => {
                        break "ICE failed: the player stopped answering consent checks".into()
                    }
                    Some(RTCPeerConnectionState::Closed) | None => break "peer connection closed".into(),
                    Some(other) => tracing::debug!(state = %other, "peer connection state"),
                },
                _ = &mut connect_deadline, if !connected => {
                    break format!("ICE did not connect within {:?}", self.inner.cfg.connect_timeout)
                }
                ev = self.reader.recv() => match ev {
                    None | Some(ReaderEvent::Ended(_)) => break "the stream ended".into(),
                    Some(ReaderEvent::TrackChanged(id, spec)) => {
                        if let Some(o) = self.outs.iter().find(|o| o.source == id) {
                            if !o.spec.codec.eq_ignore_ascii_case(&spec.codec) || o.spec.clock_rate != spec.clock_rate {
                                break format!("track {id} changed codec from {} to {}", o.spec.codec, spec.codec);
                            }
                        }
                    }
                    Some(ReaderEvent::Media(unit)) => {
                        if connected {
                            self.forward(unit).await;
                        }
                    }
                },
            }
        };
        let sent: Vec<String> = self
            .outs
            .iter()
            .map(|o| {
                format!(
                    "{}: {} sent, {} write errors, {} held for a keyframe",
                    o.spec.codec,
                    o.sent,
                    o.write_errors,
                    o.gate.as_ref().map(|g| g.dropped).unwrap_or(0)
                )
            })
            .collect();
        tracing::info!(
            reason = %reason,
            dropped = self.reader.dropped(),
            stats = %sent.join("; "),
            "WHEP session ended"
        );
        if let Err(e) = self.pc.close().await {
            tracing::debug!(error = %e, "closing the peer connection");
        }
        self.inner.sessions.lock().remove(&self.id);
        // The reader (leaving /stream/find) and the port lease drop with `self`.
    }

    async fn forward(&mut self, unit: crate::registry::MediaUnit) {
        let Some(out) = self.outs.iter_mut().find(|o| o.source == unit.track) else {
            return;
        };
        if let Some(gate) = &mut out.gate {
            let was_open = gate.is_open();
            if !gate.pass(&unit.payload) {
                return;
            }
            if !was_open {
                tracing::debug!(held = gate.dropped, "first keyframe: video starts");
            }
        }
        let h = out.rewriter.rewrite(&unit);
        let packet = rtc::rtp::packet::Packet {
            header: rtc::rtp::header::Header {
                version: 2,
                marker: h.marker,
                payload_type: h.payload_type,
                sequence_number: h.seq,
                timestamp: h.timestamp,
                ssrc: h.ssrc,
                ..Default::default()
            },
            payload: unit.payload,
        };
        match out.track.write_rtp(packet).await {
            Ok(()) => out.sent += 1,
            Err(e) => {
                out.write_errors += 1;
                if out.write_errors == 1 {
                    tracing::warn!(error = %e, "writing RTP to the player failed");
                }
            }
        }
    }
}
