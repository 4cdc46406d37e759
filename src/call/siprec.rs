//! SIPREC as its own controller: the call manager feeds it the calls' phases (a
//! [`RecordedCall`] snapshot at answer and at the end) and the UA events of its dialogs, and
//! routes `/siprec/*` to it; it never calls back into the manager. Each Recording Session is
//! a UAC dialog of the UA (its own key) towards an SRS, with a media fork from the call's
//! stream. Its state is its own (sessions per call, dialog keys), behind its own lock.
//!
//! Life of a session: `Waiting` until the call is answered → `Starting` (INVITE to the next
//! SRS of the list) → `Recording` (2xx: the fork runs) ⇄ `Paused` (re-INVITE a=inactive /
//! a=sendonly) → `Stopped` (our BYE, the SRS's BYE, or the call's end). A negative reply,
//! timeout or transport error moves on to the next SRS unless the code matches
//! `skipFailoverCodes`; with no SRS left the session is `Failed`.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::config::Config;
use crate::error::RequestError;
use crate::events::{unix_ms, Event, EventBus, SiprecEventParams};
use crate::registry::Registry;
use crate::rtp::ports::{BoundPair, PortPool};
use crate::sip::driver::{local_ip_for, SipHandle};
use crate::sip::locate::resolve;
use crate::sip::sdp::{self, Direction, RtpMap, SessionDescription};
use crate::sip::ua::{Account, CallKey, CallPhase, Command, PlaceCall, Route};
use crate::siprec::body::{multipart, srs_destinations, srs_sdp};
use crate::siprec::fork::{self, ForkConfig, ForkHandle, ForkStream};
use crate::siprec::metadata::{self, ExchangeMeta, Metadata, Participant};
use crate::siprec::{SiprecInfo, SiprecSpec, SiprecStartRequest, SiprecState, SrsAttempt};

/// One Recording Session of a call.
pub struct SiprecSession {
    spec: SiprecSpec,
    info: SiprecInfo,
    key: Option<CallKey>,
    next_srs: usize,
    /// Port pairs for (callee stream, caller stream) until the fork takes them.
    pairs: Option<(BoundPair, BoundPair)>,
    ports: (u16, u16),
    fork: Option<ForkHandle>,
    /// The audio format of (callee stream, caller stream), set when the INVITE goes out.
    codecs: Option<(RtpMap, RtpMap)>,
    ids: Ids,
    sdp_version: u64,
    sdp_session: u64,
    media_ip: Option<IpAddr>,
    /// Stopped by the API or the call's end while an INVITE was out: no recording, no
    /// failover.
    stop_requested: bool,
    /// The metadata's start-time: when the INVITE to the SRS went out.
    start_time: String,
    /// A re-INVITE of ours is out (RFC 3261 §14.1: one at a time).
    reinvite_out: bool,
    /// A metadata update waits for it.
    update_queued: bool,
}

struct Ids {
    caller: String,
    callee: String,
    callee_stream: String,
    caller_stream: String,
    group: String,
}

const LABELS: (&str, &str) = ("1", "2");

impl SiprecSession {
    fn info(&self) -> SiprecInfo {
        let mut info = self.info.clone();
        if let Some(f) = &self.fork {
            info.packets_forked = f.packets();
        }
        info
    }

    fn set_state(&mut self, state: SiprecState) {
        self.info.state = state;
        self.info.since = unix_ms();
    }

    /// The RFC 7865 metadata of this session for `call`, with the parties its media
    /// exchanges joined.
    fn metadata(&self, call: &RecordedCall, exchanges: &[ExchangeMeta]) -> Metadata {
        let participant = |xml: &Option<String>, uri: &str| match xml {
            Some(x) => Participant::Xml(x.clone()),
            None => Participant::Aor {
                aor: uri.to_string(),
                name: None,
            },
        };
        let exchanges = exchanges
            .iter()
            .map(|e| {
                let mut e = e.clone();
                e.recv = match e.leg.as_str() {
                    "caller" => vec![self.ids.caller_stream.clone()],
                    "callee" => vec![self.ids.callee_stream.clone()],
                    _ => vec![
                        self.ids.callee_stream.clone(),
                        self.ids.caller_stream.clone(),
                    ],
                };
                e
            })
            .collect();
        Metadata {
            session_id: self.info.session_id.clone(),
            group: self
                .spec
                .group
                .as_ref()
                .map(|_| (self.ids.group.clone(), self.spec.group_extension.clone())),
            session_extension: self.spec.session_extension.clone(),
            sip_session_id: call.sip_call_id.clone().unwrap_or_default(),
            start_time: self.start_time.clone(),
            caller: (
                self.ids.caller.clone(),
                participant(&self.spec.caller_xml, &call.caller),
            ),
            callee: (
                self.ids.callee.clone(),
                participant(&self.spec.callee_xml, &call.callee),
            ),
            callee_stream: (self.ids.callee_stream.clone(), LABELS.0.into()),
            caller_stream: (self.ids.caller_stream.clone(), LABELS.1.into()),
            exchanges,
        }
    }

    fn sdp(&self, ip: IpAddr, direction: Direction) -> Option<String> {
        let (callee, caller) = self.codecs.as_ref()?;
        Some(srs_sdp(
            self.sdp_session,
            self.sdp_version,
            ip,
            (callee, caller),
            self.ports,
            LABELS,
            direction,
        ))
    }
}

/// What the controller knows of a recorded call: a snapshot the manager gives it.
#[derive(Debug, Clone)]
pub(super) struct RecordedCall {
    pub call_id: String,
    /// The call's SIP Call-ID (the metadata's sip session id, the events' `dlg_callid`).
    pub sip_call_id: Option<String>,
    pub caller: String,
    pub callee: String,
    pub stream: String,
    /// The negotiated audio format of the callee's stream (first m-line), once answered: the
    /// callee leg's codec (a one-leg call's only leg).
    pub callee_codec: Option<RtpMap>,
    /// The caller's stream (second m-line): the caller leg's codec, which in a two-party call
    /// may differ from the callee's; a one-leg call's only leg (what the gateway sends, in an
    /// outbound call).
    pub caller_codec: Option<RtpMap>,
    pub status: CallPhase,
}

/// A media exchange's call joined (`joined`) or left the call it exchanges media with.
#[derive(Debug, Clone)]
pub(super) struct ExchangeParty {
    /// The call whose media is exchanged (the recorded one).
    pub call_id: String,
    /// The exchange's own call.
    pub exchange_id: String,
    pub kind: String,
    pub leg: String,
    /// Whom the gateway called for it, or who called in.
    pub uri: String,
    pub joined: bool,
}

/// The SIPREC controller. Cheap to clone.
#[derive(Clone)]
pub(super) struct SiprecController {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: Arc<Config>,
    sip: SipHandle,
    registry: Registry,
    ports: PortPool,
    bus: EventBus,
    /// The UA key space, shared with the call manager.
    next_key: Arc<AtomicU64>,
    state: Mutex<Recordings>,
}

#[derive(Default)]
struct Recordings {
    calls: HashMap<String, CallRecordings>,
    /// SIPREC dialogs (their UA keys) → (call id, instance).
    keys: HashMap<CallKey, (String, String)>,
    /// Ended calls in order, so that `/siprec/find` shows their sessions for a while.
    ended: VecDeque<String>,
}

struct CallRecordings {
    call: RecordedCall,
    sessions: Vec<SiprecSession>,
    /// The call's media exchanges, joined and left, for the metadata.
    exchanges: Vec<ExchangeMeta>,
}

/// Ended calls whose sessions stay visible (as the call manager keeps ended calls).
const HISTORY: usize = 1000;

impl SiprecController {
    pub(super) fn new(
        cfg: Arc<Config>,
        sip: SipHandle,
        registry: Registry,
        ports: PortPool,
        bus: EventBus,
        next_key: Arc<AtomicU64>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                cfg,
                sip,
                registry,
                ports,
                bus,
                next_key,
                state: Mutex::new(Recordings::default()),
            }),
        }
    }

    async fn allocate(&self) -> Result<BoundPair, RequestError> {
        self.inner
            .ports
            .allocate(self.inner.cfg.rtp_address)
            .await
            .map_err(|e| RequestError::Unavailable(format!("no RTP ports: {e}")))
    }

    fn local_ip(&self, dest: SocketAddr) -> Result<IpAddr, RequestError> {
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

    /// `/siprec/start` for `call`: validates, resolves the SRS list, reserves ports, and
    /// starts at once when the call is answered (else when it is).
    pub(super) async fn start(
        &self,
        req: SiprecStartRequest,
        call: RecordedCall,
    ) -> Result<SiprecInfo, RequestError> {
        let cfg = self.inner.cfg.clone();
        let (call_id, mut spec) = req.validate(&cfg.siprec_srs, &cfg.siprec_skip_failover_codes)?;
        check_startable(&self.inner.state.lock(), &call, &spec.instance)?;
        for target in spec.srs.iter_mut() {
            target.addr = resolve(&target.host, target.port).await.ok();
        }
        let pairs = (self.allocate().await?, self.allocate().await?);
        let ports = (pairs.0.lease.rtp_port(), pairs.1.lease.rtp_port());
        let mut st = self.inner.state.lock();
        let st = &mut *st;
        check_startable(st, &call, &spec.instance)?;
        let entry = st
            .calls
            .entry(call_id.clone())
            .or_insert_with(|| CallRecordings {
                call: call.clone(),
                sessions: Vec::new(),
                exchanges: Vec::new(),
            });
        // The stored snapshot (from the call's phases) wins over the one taken before the
        // awaits above.
        entry.sessions.retain(|s| s.spec.instance != spec.instance);
        let info = SiprecInfo {
            call_id: call_id.clone(),
            instance: spec.instance.clone(),
            state: SiprecState::Waiting,
            server: None,
            session_id: metadata::new_id(),
            sip_call_id: None,
            since: unix_ms(),
            packets_forked: 0,
            attempts: Vec::new(),
        };
        let media_ip = spec.media_ip;
        entry.sessions.push(SiprecSession {
            spec,
            info,
            key: None,
            next_srs: 0,
            pairs: Some(pairs),
            ports,
            fork: None,
            codecs: None,
            ids: Ids {
                caller: metadata::new_id(),
                callee: metadata::new_id(),
                callee_stream: metadata::new_id(),
                caller_stream: metadata::new_id(),
                group: metadata::new_id(),
            },
            sdp_version: 1,
            sdp_session: rand::random::<u32>() as u64,
            media_ip,
            stop_requested: false,
            start_time: String::new(),
            reinvite_out: false,
            update_queued: false,
        });
        let idx = entry.sessions.len() - 1;
        if matches!(entry.call.status, CallPhase::Established | CallPhase::Hold) {
            self.attempt(&mut st.keys, entry, idx);
        }
        tracing::info!(%call_id, instance = %entry.sessions[idx].info.instance, "SIPREC session created");
        Ok(entry.sessions[idx].info())
    }

    /// `/siprec/pause` and `/siprec/resume`.
    pub(super) fn pause(
        &self,
        call_id: &str,
        instance: Option<&str>,
        pause: bool,
    ) -> Result<Vec<SiprecInfo>, RequestError> {
        let mut st = self.inner.state.lock();
        let entry = st.calls.get_mut(call_id).ok_or_else(no_session)?;
        let mut out = Vec::new();
        let (from, to, dir) = if pause {
            (
                SiprecState::Recording,
                SiprecState::Paused,
                Direction::Inactive,
            )
        } else {
            (
                SiprecState::Paused,
                SiprecState::Recording,
                Direction::SendOnly,
            )
        };
        for s in selected(&mut entry.sessions, instance)? {
            if s.info.state == from {
                if let (Some(key), Some(f)) = (s.key, &s.fork) {
                    f.set_paused(pause);
                    s.sdp_version += 1;
                    let ip = s.media_ip.unwrap_or(self.sdp_ip());
                    if s.reinvite_out {
                        // Sent with the metadata when the one out is answered.
                        s.update_queued = true;
                    } else if let Some(sdp) = s.sdp(ip, dir) {
                        s.reinvite_out = self.inner.sip.command(Command::Reinvite {
                            key,
                            sdp,
                            body: None,
                        });
                    }
                    s.set_state(to);
                    tracing::info!(call_id, instance = %s.info.instance, state = ?to, "SIPREC session");
                }
            } else if s.info.state != to {
                return Err(RequestError::Conflict(format!(
                    "instance {:?} is {:?}; only a {:?} session can be {}",
                    s.info.instance,
                    s.info.state,
                    from,
                    if pause { "paused" } else { "resumed" }
                )));
            }
            out.push(s.info());
        }
        Ok(out)
    }

    /// `/siprec/stop`: BYE to the SRS (or nothing to do while waiting).
    pub(super) fn stop(
        &self,
        call_id: &str,
        instance: Option<&str>,
    ) -> Result<Vec<SiprecInfo>, RequestError> {
        let mut st = self.inner.state.lock();
        let st = &mut *st;
        let entry = st.calls.get_mut(call_id).ok_or_else(no_session)?;
        let mut out = Vec::new();
        for s in selected(&mut entry.sessions, instance)? {
            self.stop_session(&mut st.keys, s, call_id);
            out.push(s.info());
        }
        Ok(out)
    }

    /// `/siprec/find`: every session of one call (none if it never had one), or of every
    /// call.
    pub(super) fn find(&self, call_id: Option<&str>, instance: Option<&str>) -> Vec<SiprecInfo> {
        let st = self.inner.state.lock();
        let mut out = Vec::new();
        match call_id {
            Some(id) => {
                let Some(entry) = st.calls.get(id) else {
                    return out;
                };
                out.extend(
                    entry
                        .sessions
                        .iter()
                        .filter(|s| instance.is_none_or(|i| i == s.info.instance))
                        .map(SiprecSession::info),
                );
            }
            None => {
                for e in st.calls.values() {
                    out.extend(
                        e.sessions
                            .iter()
                            .filter(|s| instance.is_none_or(|i| i == s.info.instance))
                            .map(SiprecSession::info),
                    );
                }
            }
        }
        out.sort_by(|a, b| (a.since, &a.instance).cmp(&(b.since, &b.instance)));
        out
    }

    fn sdp_ip(&self) -> IpAddr {
        let cfg = &self.inner.cfg;
        cfg.media_ip
            .or(cfg.sip_external_address)
            .unwrap_or(if cfg.rtp_address.is_unspecified() {
                IpAddr::from([127, 0, 0, 1])
            } else {
                cfg.rtp_address
            })
    }

    /// Sends the INVITE to the next SRS that can be tried; `Failed` when none is left.
    fn attempt(
        &self,
        keys: &mut HashMap<CallKey, (String, String)>,
        entry: &mut CallRecordings,
        idx: usize,
    ) {
        let call_id = entry.call.call_id.clone();
        let audio = entry
            .call
            .callee_codec
            .clone()
            .zip(entry.call.caller_codec.clone());
        let dlg_callid = entry.call.sip_call_id.clone();
        let Some(s) = entry.sessions.get_mut(idx) else {
            return;
        };
        let Some(codecs) = audio else {
            s.info.attempts.push(SrsAttempt {
                server: "-".into(),
                sip_status: None,
                reason: "the call has no negotiated audio to record".into(),
            });
            self.session_failed(s, &call_id, &dlg_callid);
            return;
        };
        s.codecs = Some(codecs);
        while let Some(target) = s.spec.srs.get(s.next_srs).cloned() {
            s.next_srs += 1;
            let Some(dest) = target.addr else {
                s.info.attempts.push(SrsAttempt {
                    server: target.uri.clone(),
                    sip_status: None,
                    reason: format!("cannot resolve {}", target.host),
                });
                continue;
            };
            let Some(sip_port) = self.inner.sip.port(target.transport) else {
                s.info.attempts.push(SrsAttempt {
                    server: target.uri.clone(),
                    sip_status: None,
                    reason: "transport disabled in the gateway's properties".into(),
                });
                continue;
            };
            let local_ip = match self.local_ip(dest) {
                Ok(ip) => ip,
                Err(e) => {
                    s.info.attempts.push(SrsAttempt {
                        server: target.uri.clone(),
                        sip_status: None,
                        reason: e.to_string(),
                    });
                    continue;
                }
            };
            let media_ip = s.media_ip.or(self.inner.cfg.media_ip).unwrap_or(local_ip);
            s.media_ip = Some(media_ip);
            let Some(sdp) = s.sdp(media_ip, Direction::SendOnly) else {
                return;
            };
            s.start_time = rfc3339_now();
            let meta = s.metadata(&entry.call, &entry.exchanges);
            let (content_type, body) = multipart(&sdp, &meta.to_xml());
            let key = self.inner.next_key.fetch_add(1, Ordering::Relaxed);
            let mut headers = vec![("Require".to_string(), "siprec".to_string())];
            headers.extend(s.spec.headers.iter().cloned());
            let place = PlaceCall {
                key,
                account: Account {
                    login: "sipstream".into(),
                    auth_name: "sipstream".into(),
                    password: String::new(),
                    domain: target.host.clone(),
                },
                callee_uri: target.uri.clone(),
                register: false,
                registrar: None,
                route: Route {
                    transport: target.transport,
                    dest,
                    local: SocketAddr::new(local_ip, sip_port),
                    sticky: false,
                },
                sdp_offer: sdp,
                body: Some((content_type, body)),
                from_uri: Some(
                    s.spec
                        .from_uri
                        .clone()
                        .unwrap_or_else(|| target.uri.clone()),
                ),
                to_uri: Some(s.spec.to_uri.clone().unwrap_or_else(|| target.uri.clone())),
                contact_params: ";+sip.src".into(),
                sip_call_id: None,
                headers,
                // The recorded call's id: its SIPREC dialogs' lines are lines of that call.
                label: call_id.clone(),
            };
            if !self.inner.sip.command(Command::PlaceCall(Box::new(place))) {
                return;
            }
            keys.insert(key, (call_id.clone(), s.info.instance.clone()));
            s.key = Some(key);
            s.info.server = Some(target.uri.clone());
            s.set_state(SiprecState::Starting);
            tracing::info!(%call_id, instance = %s.info.instance, srs = %target.uri, "SIPREC INVITE sent");
            return;
        }
        self.session_failed(s, &call_id, &dlg_callid);
    }

    fn session_failed(&self, s: &mut SiprecSession, call_id: &str, dlg_callid: &Option<String>) {
        s.set_state(SiprecState::Failed);
        s.info.server = None;
        s.pairs = None;
        tracing::warn!(call_id, instance = %s.info.instance, attempts = ?s.info.attempts, "SIPREC: no SRS accepted");
        self.inner.bus.publish(Event::SiprecFailed {
            dlg_id: call_id.to_string(),
            dlg_callid: dlg_callid.clone(),
            instance: s.info.instance.clone(),
            attempts: s.info.attempts.clone(),
            timestamp: unix_ms(),
        });
    }

    fn stop_session(
        &self,
        keys: &mut HashMap<CallKey, (String, String)>,
        s: &mut SiprecSession,
        call_id: &str,
    ) {
        match s.info.state {
            SiprecState::Waiting => {
                s.pairs = None;
                s.set_state(SiprecState::Stopped);
            }
            SiprecState::Starting | SiprecState::Recording | SiprecState::Paused => {
                if let Some(key) = s.key {
                    // The session ends when the UA reports the dialog over.
                    self.inner.sip.command(Command::Hangup(key));
                    s.stop_requested = true;
                } else {
                    keys.retain(|_, (c, i)| !(c == call_id && *i == s.info.instance));
                    s.set_state(SiprecState::Stopped);
                }
            }
            SiprecState::Stopped | SiprecState::Failed => {}
        }
    }

    /// The call's phase changed: start waiting sessions on answer, stop all on the end.
    pub(super) fn on_call_phase(&self, call: RecordedCall) {
        let phase = call.status;
        let mut st = self.inner.state.lock();
        let st = &mut *st;
        let call_id = call.call_id.clone();
        // Kept even without sessions: a `/siprec/start` racing with this phase sees it.
        let entry = st
            .calls
            .entry(call_id.clone())
            .or_insert_with(|| CallRecordings {
                call: call.clone(),
                sessions: Vec::new(),
                exchanges: Vec::new(),
            });
        entry.call = call;
        let keys = &mut st.keys;
        if phase == CallPhase::Established {
            let waiting: Vec<usize> = entry
                .sessions
                .iter()
                .enumerate()
                .filter(|(_, s)| s.info.state == SiprecState::Waiting)
                .map(|(i, _)| i)
                .collect();
            for i in waiting {
                self.attempt(keys, entry, i);
            }
        } else if phase.is_final() {
            for s in entry.sessions.iter_mut() {
                self.stop_session(keys, s, &call_id);
            }
            st.ended.push_back(call_id);
            while st.ended.len() > HISTORY {
                if let Some(old) = st.ended.pop_front() {
                    st.calls.remove(&old);
                }
            }
        }
    }

    /// A media exchange joined or left a call: its party is added to (or closed in) the
    /// call's metadata, and every running session of the call sends the SRS the new
    /// metadata in a re-INVITE (RFC 7866 §6.1; same SDP, same version).
    pub(super) fn on_exchange(&self, party: ExchangeParty) {
        let mut st = self.inner.state.lock();
        let Some(entry) = st.calls.get_mut(&party.call_id) else {
            return;
        };
        let now = rfc3339_now();
        if party.joined {
            entry.exchanges.push(ExchangeMeta {
                participant_id: metadata::new_id(),
                aor: party.uri.clone(),
                exchange_id: party.exchange_id.clone(),
                kind: party.kind.clone(),
                leg: party.leg.clone(),
                associate_time: now,
                disassociate_time: None,
                recv: Vec::new(),
            });
        } else {
            let Some(e) = entry
                .exchanges
                .iter_mut()
                .find(|e| e.exchange_id == party.exchange_id && e.disassociate_time.is_none())
            else {
                return;
            };
            e.disassociate_time = Some(now);
        }
        tracing::info!(call_id = %party.call_id, exchange = %party.exchange_id, joined = party.joined, "SIPREC metadata: media exchange");
        for s in entry.sessions.iter_mut() {
            self.send_update(s, &entry.call, &entry.exchanges);
        }
    }

    /// Sends a running session's SDP and current metadata in a re-INVITE, or queues it
    /// behind the re-INVITE that is out.
    fn send_update(&self, s: &mut SiprecSession, call: &RecordedCall, exchanges: &[ExchangeMeta]) {
        let Some(key) = s.key else {
            return;
        };
        let dir = match s.info.state {
            SiprecState::Recording => Direction::SendOnly,
            SiprecState::Paused => Direction::Inactive,
            _ => return,
        };
        if s.reinvite_out {
            s.update_queued = true;
            return;
        }
        let ip = s.media_ip.unwrap_or(self.sdp_ip());
        let Some(sdp) = s.sdp(ip, dir) else {
            return;
        };
        let meta = s.metadata(call, exchanges);
        let (content_type, body) = multipart(&sdp, &meta.to_xml());
        s.update_queued = false;
        s.reinvite_out = self.inner.sip.command(Command::Reinvite {
            key,
            sdp,
            body: Some((content_type, body)),
        });
    }

    /// Our re-INVITE in a SIPREC dialog was answered: a queued update goes now. Returns
    /// false when `key` is not a SIPREC dialog.
    pub(super) fn on_reinvited(&self, key: CallKey, status: u16) -> bool {
        let mut st = self.inner.state.lock();
        let Some((call_id, instance)) = st.keys.get(&key).cloned() else {
            return false;
        };
        let Some(entry) = st.calls.get_mut(&call_id) else {
            return true;
        };
        let Some(s) = entry
            .sessions
            .iter_mut()
            .find(|s| s.info.instance == instance && s.key == Some(key))
        else {
            return true;
        };
        if !(200..300).contains(&status) {
            tracing::warn!(%call_id, %instance, status, "SIPREC re-INVITE refused");
        }
        s.reinvite_out = false;
        if status == 491 {
            // Glare, or another re-INVITE of the dialog out (a session refresh): RFC 3261
            // §14.1's wait, then the session's state as it is by then.
            s.update_queued = true;
            let me = self.clone();
            tokio::spawn(async move {
                tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
                me.flush(&call_id, &instance, key);
            });
        } else if s.update_queued {
            self.send_update(s, &entry.call, &entry.exchanges);
        }
        true
    }

    /// Sends a session's queued update, if it still has one and nothing is out.
    fn flush(&self, call_id: &str, instance: &str, key: CallKey) {
        let mut st = self.inner.state.lock();
        let Some(entry) = st.calls.get_mut(call_id) else {
            return;
        };
        if let Some(s) = entry
            .sessions
            .iter_mut()
            .find(|s| s.info.instance == instance && s.key == Some(key))
        {
            if s.update_queued && !s.reinvite_out {
                self.send_update(s, &entry.call, &entry.exchanges);
            }
        }
    }

    /// The SRS re-offers inside a recording dialog (e.g. a session refresh): we answer from
    /// our own description, sendonly (inactive while paused), with the offer's subset of each
    /// line's codec. None when `key` is not a SIPREC dialog.
    pub(super) fn answer_offer(
        &self,
        key: CallKey,
        offer: Option<&str>,
    ) -> Option<Result<String, u16>> {
        let mut st = self.inner.state.lock();
        let (call_id, instance) = st.keys.get(&key).cloned()?;
        let entry = st.calls.get_mut(&call_id)?;
        let s = entry
            .sessions
            .iter_mut()
            .find(|s| s.spec.instance == instance)?;
        let dir = if s.info.state == SiprecState::Paused {
            Direction::Inactive
        } else {
            Direction::SendOnly
        };
        let ip = s.media_ip.unwrap_or(self.sdp_ip());
        let Some(ours) = s.sdp(ip, dir) else {
            return Some(Err(488));
        };
        let Some(offer) = offer else {
            return Some(Ok(ours));
        };
        let (Ok(ours_sd), Ok(offer_sd)) = (
            crate::sip::sdp::SessionDescription::parse(&ours),
            crate::sip::sdp::SessionDescription::parse(offer),
        ) else {
            return Some(Err(488));
        };
        Some(Ok(
            crate::sip::sdp::answer(&ours_sd, &offer_sd, dir).to_string()
        ))
    }

    /// A UA event for a SIPREC dialog. Returns false when `key` is not one.
    pub(super) fn on_dialog(&self, key: CallKey, update: DialogUpdate<'_>) -> bool {
        let mut st = self.inner.state.lock();
        let st = &mut *st;
        let DialogUpdate {
            phase,
            sip_status,
            reason,
            sdp,
            sip_call_id,
        } = update;
        let Some((call_id, instance)) = st.keys.get(&key).cloned() else {
            return false;
        };
        let keys = &mut st.keys;
        let Some(entry) = st.calls.get_mut(&call_id) else {
            keys.remove(&key);
            return true;
        };
        let dlg_callid = entry.call.sip_call_id.clone();
        let stream = entry.call.stream.clone();
        let call_over = entry.call.status.is_final();
        let Some(idx) = entry
            .sessions
            .iter()
            .position(|s| s.info.instance == instance && s.key == Some(key))
        else {
            keys.remove(&key);
            return true;
        };
        let s = &mut entry.sessions[idx];
        s.info.sip_call_id = Some(sip_call_id.to_string());
        match phase {
            CallPhase::Established if s.info.state == SiprecState::Starting && s.stop_requested => {
                // Answered after we hung up: the UA sends the BYE; nothing to record.
            }
            CallPhase::Established if s.info.state == SiprecState::Starting => {
                let Some(answer) = sdp
                    .as_deref()
                    .and_then(|t| SessionDescription::parse(t).ok())
                else {
                    tracing::warn!(%call_id, %instance, "SRS answered without usable SDP; stopping");
                    self.inner.sip.command(Command::Hangup(key));
                    return true;
                };
                let (callee_codec, caller_codec) = s
                    .codecs
                    .clone()
                    .unwrap_or_else(|| (sdp::codec_pcmu(), sdp::codec_pcmu()));
                // Each line of the answer against its own stream's codec.
                let (callee_dest, caller_dest) =
                    srs_destinations(&answer, (&callee_codec, &caller_codec), LABELS);
                if let Some(pairs) = s.pairs.take() {
                    let span = tracing::info_span!("siprec", %call_id, %instance);
                    let ptime = self.inner.cfg.rtp_ptime_ms;
                    let cfg = ForkConfig {
                        callee: ForkStream::new(callee_dest, &callee_codec, ptime),
                        caller: ForkStream::new(caller_dest, &caller_codec, ptime),
                        ptime_ms: ptime,
                    };
                    match fork::spawn(&self.inner.registry, &stream, pairs, cfg, span) {
                        Ok(f) => s.fork = Some(f),
                        Err(e) => {
                            tracing::warn!(%call_id, %instance, error = %e, "SIPREC: fork not started; stopping");
                            self.inner.sip.command(Command::Hangup(key));
                            return true;
                        }
                    }
                }
                s.set_state(SiprecState::Recording);
                let server = s.info.server.clone().unwrap_or_default();
                tracing::info!(%call_id, %instance, %server, ?callee_dest, ?caller_dest, callee_codec = %callee_codec, caller_codec = %caller_codec, "SIPREC recording");
                self.inner
                    .bus
                    .publish(Event::SiprecStart(SiprecEventParams {
                        dlg_id: call_id.clone(),
                        dlg_callid,
                        callid: sip_call_id.to_string(),
                        session_id: s.info.session_id.clone(),
                        server,
                        instance: instance.clone(),
                        timestamp: unix_ms(),
                    }));
                if call_over {
                    self.inner.sip.command(Command::Hangup(key));
                }
            }
            p if p.is_final() => {
                keys.remove(&key);
                s.key = None;
                if s.info.state == SiprecState::Starting {
                    let server = s.info.server.clone().unwrap_or_default();
                    s.info.attempts.push(SrsAttempt {
                        server,
                        sip_status,
                        reason: reason.unwrap_or_else(|| p.as_str().to_string()),
                    });
                    let skip = sip_status
                        .zip(s.spec.skip_failover.as_ref())
                        .is_some_and(|(code, re)| re.is_match(&code.to_string()));
                    if s.stop_requested || call_over {
                        s.pairs = None;
                        s.set_state(SiprecState::Stopped);
                    } else if skip {
                        tracing::info!(%call_id, %instance, ?sip_status, "SIPREC: reply matches skipFailoverCodes; no failover");
                        self.session_failed(s, &call_id, &dlg_callid);
                    } else {
                        self.attempt(keys, entry, idx);
                    }
                } else if matches!(s.info.state, SiprecState::Recording | SiprecState::Paused) {
                    s.set_state(SiprecState::Stopped);
                    let fork = s.fork.take();
                    let packets = fork.as_ref().map(ForkHandle::packets).unwrap_or(0);
                    s.info.packets_forked = packets;
                    if let Some(f) = fork {
                        f.stop();
                    }
                    tracing::info!(%call_id, %instance, packets, reason = reason.as_deref().unwrap_or(""), "SIPREC session stopped");
                    self.inner.bus.publish(Event::SiprecStop(SiprecEventParams {
                        dlg_id: call_id.clone(),
                        dlg_callid,
                        callid: sip_call_id.to_string(),
                        session_id: s.info.session_id.clone(),
                        server: s.info.server.clone().unwrap_or_default(),
                        instance: instance.clone(),
                        timestamp: unix_ms(),
                    }));
                }
            }
            _ => {}
        }
        true
    }
}

/// What the UA said about a SIPREC dialog.
pub(super) struct DialogUpdate<'a> {
    pub phase: CallPhase,
    pub sip_status: Option<u16>,
    pub reason: Option<String>,
    pub sdp: Option<String>,
    pub sip_call_id: &'a str,
}

fn no_session() -> RequestError {
    RequestError::NotFound("no active SIPREC session for this call".into())
}

fn check_startable(
    st: &Recordings,
    call: &RecordedCall,
    instance: &str,
) -> Result<(), RequestError> {
    let call_id = &call.call_id;
    let status = st.calls.get(call_id).map_or(call.status, |e| e.call.status);
    if status.is_final() {
        return Err(RequestError::Conflict(format!(
            "callId {call_id:?} has ended"
        )));
    }
    if st.calls.get(call_id).is_some_and(|e| {
        e.sessions
            .iter()
            .any(|s| s.spec.instance == instance && !s.info.state.is_final())
    }) {
        return Err(RequestError::Conflict(format!(
            "callId {call_id:?} already has an active SIPREC instance {instance:?}"
        )));
    }
    Ok(())
}

fn selected<'a>(
    sessions: &'a mut [SiprecSession],
    instance: Option<&str>,
) -> Result<Vec<&'a mut SiprecSession>, RequestError> {
    let out: Vec<&mut SiprecSession> = sessions
        .iter_mut()
        .filter(|s| instance.is_none_or(|i| i == s.info.instance) && !s.info.state.is_final())
        .collect();
    if out.is_empty() {
        return Err(RequestError::NotFound(match instance {
            Some(i) => format!("instance {i:?}: no active SIPREC session"),
            None => "no active SIPREC session for this call".into(),
        }));
    }
    Ok(out)
}

fn rfc3339_now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::super::core::{recorded_call, Entry};
    use super::super::leg::{CallLeg, MediaLeg};
    use super::super::model::CallInfo;
    use crate::registry::{Leg, TrackKind};
    use crate::sip::sdp::{codec_pcma, codec_pcmu, RtpMap};
    use crate::sip::ua::CallPhase;

    fn info() -> CallInfo {
        let mut i = CallInfo::sample("c", "outbound");
        i.status = CallPhase::Established;
        i
    }

    /// A leg's negotiated audio line.
    fn audio(codec: RtpMap) -> MediaLeg {
        let mut m = MediaLeg::unbound(TrackKind::Audio, vec![codec.clone()], 4000);
        m.codec = Some(codec);
        m
    }

    fn leg(name: Leg, key: u64, codec: Option<RtpMap>) -> CallLeg {
        let mut l = CallLeg::new(name, key, "sip:x@h");
        l.media.extend(codec.map(audio));
        l
    }

    fn codecs(e: &Entry) -> (Option<String>, Option<String>) {
        let c = recorded_call(e);
        let name = |c: Option<RtpMap>| c.map(|c| format!("{} {c}", c.pt));
        (name(c.callee_codec), name(c.caller_codec))
    }

    #[test]
    fn each_recorded_stream_takes_its_own_partys_codec() {
        let some = |s: &str| Some(s.to_string());
        // Two-party: the caller (first leg) PCMU, the callee PCMA.
        let mut e = Entry::new(info(), 10, Leg::Caller, "sip:alice@h");
        e.legs = vec![
            leg(Leg::Caller, 10, Some(codec_pcmu())),
            leg(Leg::Callee, 11, Some(codec_pcma())),
        ];
        assert_eq!(codecs(&e), (some("8 PCMA/8000"), some("0 PCMU/8000")));
        // One-leg outbound (the callee): both streams in its codec, as before.
        e.legs = vec![leg(Leg::Callee, 1, Some(codec_pcma()))];
        assert_eq!(codecs(&e), (some("8 PCMA/8000"), some("8 PCMA/8000")));
        // One-leg inbound (the caller).
        e.legs = vec![leg(Leg::Caller, 1, Some(codec_pcmu()))];
        assert_eq!(codecs(&e), (some("0 PCMU/8000"), some("0 PCMU/8000")));
        // A leg without negotiated audio takes the other's; none at all: nothing to record.
        e.legs = vec![
            leg(Leg::Caller, 10, Some(codec_pcmu())),
            leg(Leg::Callee, 11, None),
        ];
        assert_eq!(codecs(&e), (some("0 PCMU/8000"), some("0 PCMU/8000")));
        e.legs = vec![leg(Leg::Callee, 1, None)];
        assert_eq!(codecs(&e), (None, None));
    }
}
