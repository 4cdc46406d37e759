//! OpenSIPS media_exchange on the gateway's own media: every exchange is a second SIP call
//! (its id is the exchange id, its call object says `exchangeOf`) joined to a running call
//! through the legs' players, so audio is decoded, mixed with clipping protection and
//! encoded to each leg's codec (the players' 40 ms start buffer bounds the added delay).
//!
//! - `send_to_uri` (`fork_to_uri`): we call `uri` (sendonly) and play the chosen leg's
//!   audio into that call; `both` mixes the two parties into its one audio line.
//! - `fetch_from_uri` (`exchange_from_uri`): we call `uri`; what it sends replaces what the
//!   chosen leg hears (the bridge from the other party is muted), the leg's own audio goes to
//!   it (an IVR hears the caller), and the other leg is put on hold unless `nohold`.
//! - `send_from_call` (`fork_from_call`, listen-in) and `fetch_to_call` (`exchange_to_call`,
//!   barge-in): a SIP endpoint calls the gateway (`media_listen_pattern`,
//!   `media_barge_pattern`); the call layer answers it as an inbound call linked to the
//!   target, and we join the media once it is established.
//!
//! Above the call layer: it asks the call manager (`startup`, `call_media`, `play_into`,
//! `mute_into`, `hold`, `terminate`) and follows the event bus for the calls' states; the
//! call layer does not know it.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::broadcast;
use utoipa::ToSchema;

use super::source::{stream_source, FeedStop, Pick};
use crate::call::manager::CallManager;
use crate::call::model::{CallSpec, ExchangeLink};
use crate::call::play::PlayHandle;
use crate::error::RequestError;
use crate::events::{unix_ms, Event, EventBus};
use crate::registry::Leg;

/// Ended exchanges `/media/find` still shows.
const HISTORY: usize = 1000;

pub const SEND_TO_URI: &str = "send_to_uri";
pub const FETCH_FROM_URI: &str = "fetch_from_uri";
pub const SEND_FROM_CALL: &str = "send_from_call";
pub const FETCH_TO_CALL: &str = "fetch_to_call";

/// One media exchange as `/media/*` answer it and `/media/find` and `/call/find` list it.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExchangeInfo {
    /// Also the callId of the exchange's own SIP call.
    pub exchange_id: String,
    /// The call whose media is exchanged.
    pub call_id: String,
    /// `send_to_uri`, `fetch_from_uri`, `send_from_call` (listen-in) or `fetch_to_call`
    /// (barge-in).
    pub kind: String,
    /// `caller`, `callee` or `both`.
    pub leg: String,
    /// Whom the gateway called, or who called in.
    pub uri: String,
    /// send_to_uri with both legs: the parties mixed into one audio line (false: each
    /// party on its own line, `a=label:caller` and `a=label:callee`).
    pub mix: bool,
    /// fetch_from_uri: the other leg is not put on hold.
    pub nohold: bool,
    /// The legs the gateway put on hold for this exchange.
    pub held: Vec<String>,
    /// STARTING (the INVITE is out), ACTIVE, PAUSED, TERMINATED or FAILED.
    pub status: String,
    /// The last SIP status of the exchange's call.
    pub sip_status: Option<u16>,
    pub reason: Option<String>,
    /// Unix time in milliseconds.
    pub created_at: u64,
    pub ended_at: Option<u64>,
}

impl ExchangeInfo {
    fn is_final(&self) -> bool {
        matches!(self.status.as_str(), "TERMINATED" | "FAILED")
    }
}

struct Exchange {
    info: ExchangeInfo,
    /// The parent's legs this exchange acts on.
    legs: Vec<Leg>,
    /// What plays where while it is active.
    plays: Vec<(PlayHandle, FeedStop)>,
    /// fetch_from_uri: the legs whose bridge we muted.
    muted: Vec<Leg>,
    held: Vec<Leg>,
}

#[derive(Clone)]
pub struct ExchangeManager {
    inner: Arc<Inner>,
}

struct Inner {
    calls: CallManager,
    bus: EventBus,
    /// How long an exchange's INVITE may go unanswered.
    timeout: Duration,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    items: HashMap<String, Exchange>,
    order: VecDeque<String>,
}

pub fn leg_name(l: Leg) -> &'static str {
    match l {
        Leg::Caller => "caller",
        _ => "callee",
    }
}

/// The legs `leg` names among `legs`: caller, callee, both; default the only one, or both.
fn choose(call_id: &str, legs: &[Leg], leg: Option<&str>) -> Result<Vec<Leg>, RequestError> {
    match leg.map(str::to_ascii_lowercase).as_deref() {
        None | Some("") | Some("both") => Ok(legs.to_vec()),
        Some(name) => legs
            .iter()
            .find(|l| leg_name(**l) == name)
            .map(|l| vec![*l])
            .ok_or_else(|| {
                let names: Vec<&str> = legs.iter().map(|l| leg_name(*l)).collect();
                RequestError::BadRequest(format!(
                    "leg: {name:?}: callId {call_id:?} has the legs {names:?} (or both)"
                ))
            }),
    }
}

fn legs_str(all: &[Leg], chosen: &[Leg]) -> String {
    if chosen.len() > 1 || (all.len() > 1 && chosen.len() == all.len()) {
        "both".into()
    } else {
        chosen.first().map_or("both", |l| leg_name(*l)).into()
    }
}

impl ExchangeManager {
    pub fn new(calls: CallManager, bus: EventBus, timeout: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                calls,
                bus,
                timeout,
                state: Mutex::new(State::default()),
            }),
        }
    }

    /// `/media/send_to_uri`: calls `spec.callee_uri` (sendonly) with the chosen leg's audio.
    /// `spec` is the validated call to place; its id and stream are the exchange's.
    pub async fn send_to_uri(
        &self,
        call_id: &str,
        leg: Option<&str>,
        mix: Option<bool>,
        spec: CallSpec,
    ) -> Result<ExchangeInfo, RequestError> {
        let media = self.inner.calls.call_media(call_id)?;
        let legs = choose(call_id, &media.legs, leg)?;
        let mut spec = spec;
        spec.direction = crate::sip::sdp::Direction::SendOnly;
        if legs.len() > 1 && mix == Some(false) {
            // One audio line per party, labelled with its name, in the order of `legs`.
            spec.audio_labels = legs.iter().map(|l| leg_name(*l).to_string()).collect();
        }
        self.place(call_id, SEND_TO_URI, &media.legs, legs, false, spec)
            .await
    }

    /// `/media/fetch_from_uri`: calls `spec.callee_uri`; its audio replaces what the chosen
    /// leg hears, and the other leg is held unless `nohold`.
    pub async fn fetch_from_uri(
        &self,
        call_id: &str,
        leg: Option<&str>,
        nohold: bool,
        spec: CallSpec,
    ) -> Result<ExchangeInfo, RequestError> {
        let media = self.inner.calls.call_media(call_id)?;
        let legs = choose(call_id, &media.legs, leg)?;
        let busy = {
            let st = self.inner.state.lock();
            st.items.values().any(|x| {
                x.info.call_id == call_id
                    && x.info.kind == FETCH_FROM_URI
                    && !x.info.is_final()
                    && x.legs.iter().any(|l| legs.contains(l))
            })
        };
        if busy {
            return Err(RequestError::Conflict(format!(
                "callId {call_id:?}: that leg already hears a fetch_from_uri; terminate it first"
            )));
        }
        let mut spec = spec;
        spec.direction = crate::sip::sdp::Direction::SendRecv;
        self.place(call_id, FETCH_FROM_URI, &media.legs, legs, nohold, spec)
            .await
    }

    async fn place(
        &self,
        call_id: &str,
        kind: &str,
        all: &[Leg],
        legs: Vec<Leg>,
        nohold: bool,
        mut spec: CallSpec,
    ) -> Result<ExchangeInfo, RequestError> {
        let id = format!("mx-{}", crate::ids::random_token(16));
        let leg = legs_str(all, &legs);
        spec.call_id = id.clone();
        spec.stream = id.clone();
        spec.record = false;
        spec.caller = None;
        spec.has_video = false;
        spec.has_audio = true;
        spec.exchange = Some(ExchangeLink {
            call_id: call_id.into(),
            kind: kind.into(),
            leg: leg.clone(),
        });
        let info = ExchangeInfo {
            exchange_id: id.clone(),
            call_id: call_id.into(),
            kind: kind.into(),
            leg,
            uri: spec.callee_uri.clone(),
            mix: kind == SEND_TO_URI && legs.len() > 1 && spec.audio_labels.is_empty(),
            nohold,
            held: Vec::new(),
            status: "STARTING".into(),
            sip_status: None,
            reason: None,
            created_at: unix_ms(),
            ended_at: None,
        };
        // Known before the INVITE goes out, so that its answer finds it.
        self.insert(Exchange {
            info: info.clone(),
            legs,
            plays: Vec::new(),
            muted: Vec::new(),
            held: Vec::new(),
        });
        if let Err(e) = self.inner.calls.startup(spec).await {
            self.inner.state.lock().items.remove(&id);
            return Err(e);
        }
        tracing::info!(%call_id, exchange = %id, kind, uri = %info.uri, leg = %info.leg, "media exchange placed");
        let me = self.clone();
        let timeout = self.inner.timeout;
        tokio::spawn(async move {
            tokio::time::sleep(timeout).await;
            let waiting = me
                .inner
                .state
                .lock()
                .items
                .get(&id)
                .is_some_and(|x| x.info.status == "STARTING");
            if waiting {
                let _ = me.inner.calls.terminate(&id);
                me.finish(
                    &id,
                    "FAILED",
                    Some(408),
                    Some(format!("no answer within {} s", timeout.as_secs())),
                    false,
                );
            }
        });
        Ok(info)
    }

    fn insert(&self, x: Exchange) {
        let mut st = self.inner.state.lock();
        st.order.push_back(x.info.exchange_id.clone());
        st.items.insert(x.info.exchange_id.clone(), x);
        while st.order.len() > HISTORY {
            let Some(old) = st.order.pop_front() else {
                break;
            };
            if st.items.get(&old).is_some_and(|x| !x.info.is_final()) {
                st.order.push_back(old);
                break;
            }
            st.items.remove(&old);
        }
    }

    /// The exchange's call is established: its media is joined to the parent's legs.
    fn connect(&self, id: &str, hold: bool) {
        let calls = &self.inner.calls;
        let Some((parent, kind, legs, nohold, all_legs, lines)) = ({
            let st = self.inner.state.lock();
            let joining = |x: &&Exchange| matches!(x.info.status.as_str(), "STARTING" | "RESUMING");
            st.items.get(id).filter(joining).map(|x| {
                (
                    x.info.call_id.clone(),
                    x.info.kind.clone(),
                    x.legs.clone(),
                    x.info.nohold,
                    calls
                        .call_media(&x.info.call_id)
                        .map(|m| m.legs)
                        .unwrap_or_default(),
                    x.info.kind == SEND_TO_URI && x.legs.len() > 1 && !x.info.mix,
                )
            })
        }) else {
            return;
        };
        let mut plays = Vec::new();
        let mut muted = Vec::new();
        let joined = join(
            calls, id, &parent, &kind, &legs, lines, &mut plays, &mut muted,
        );
        match joined {
            Ok(()) => {
                // The other party waits on hold while a media server talks to this one.
                let mut held = Vec::new();
                if kind == FETCH_FROM_URI && !nohold && hold {
                    for other in all_legs.iter().filter(|l| !legs.contains(l)) {
                        match calls.hold(&parent, Some(leg_name(*other)), true, true) {
                            Ok(_) => held.push(*other),
                            Err(e) => {
                                tracing::warn!(call_id = %parent, exchange = %id, error = %e, "other leg not held")
                            }
                        }
                    }
                }
                let info = {
                    let mut st = self.inner.state.lock();
                    let Some(x) = st.items.get_mut(id) else {
                        return;
                    };
                    x.plays = plays;
                    x.muted = muted;
                    x.held.extend(held);
                    x.info.held = x.held.iter().map(|l| leg_name(*l).to_string()).collect();
                    x.info.status = "ACTIVE".into();
                    x.info.clone()
                };
                tracing::info!(call_id = %parent, exchange = %id, kind = %kind, "media exchange active");
                self.event(&info, "ExchangeStarted");
            }
            Err(e) => {
                tracing::warn!(call_id = %parent, exchange = %id, error = %e, "media exchange not joined");
                for (p, stop) in plays {
                    stop.stop();
                    p.stop();
                }
                let _ = muted_restore(calls, &parent, &muted);
                let _ = calls.terminate(id);
                self.finish(id, "FAILED", None, Some(e.to_string()), false);
            }
        }
    }

    /// Ends an exchange: its media stops, what it muted and held is given back (not the
    /// hold with `keep_hold`), and the event goes out. Its call is hung up by the caller.
    fn finish(
        &self,
        id: &str,
        status: &str,
        sip_status: Option<u16>,
        reason: Option<String>,
        keep_hold: bool,
    ) -> Option<ExchangeInfo> {
        let (info, plays, muted, held) = {
            let mut st = self.inner.state.lock();
            let x = st.items.get_mut(id).filter(|x| !x.info.is_final())?;
            x.info.status = status.into();
            x.info.sip_status = sip_status.or(x.info.sip_status);
            x.info.reason = reason;
            x.info.ended_at = Some(unix_ms());
            (
                x.info.clone(),
                std::mem::take(&mut x.plays),
                std::mem::take(&mut x.muted),
                std::mem::take(&mut x.held),
            )
        };
        for (p, stop) in plays {
            stop.stop();
            p.stop();
        }
        let calls = &self.inner.calls;
        let _ = muted_restore(calls, &info.call_id, &muted);
        if !keep_hold {
            for l in held {
                if let Err(e) = calls.hold(&info.call_id, Some(leg_name(l)), false, false) {
                    tracing::debug!(call_id = %info.call_id, error = %e, "leg not resumed");
                }
            }
        }
        tracing::info!(call_id = %info.call_id, exchange = %id, status, reason = ?info.reason, "media exchange ended");
        let event = if status == "FAILED" {
            "ExchangeFailed"
        } else {
            "ExchangeStopped"
        };
        self.event(&info, event);
        Some(info)
    }

    fn event(&self, info: &ExchangeInfo, event: &str) {
        self.inner.bus.publish(Event::CallControlEvent {
            call_id: info.call_id.clone(),
            event: event.into(),
            leg: Some(info.leg.clone()),
            sip_status: info.sip_status,
            reason: Some(match &info.reason {
                Some(r) => format!("{} {} ({}): {r}", info.kind, info.uri, info.exchange_id),
                None => format!("{} {} ({})", info.kind, info.uri, info.exchange_id),
            }),
            timestamp: unix_ms(),
        });
    }

    /// The running exchanges of `call_id` (all of them, or those on `leg`), or the one
    /// whose id is `call_id`.
    fn select(&self, call_id: &str, leg: Option<&str>) -> Result<Vec<String>, RequestError> {
        let leg = leg.map(str::to_ascii_lowercase).filter(|l| !l.is_empty());
        if let Some(l) = leg.as_deref() {
            if !matches!(l, "caller" | "callee" | "both") {
                return Err(RequestError::BadRequest(format!(
                    "leg: expected caller, callee or both, got {l:?}"
                )));
            }
        }
        let st = self.inner.state.lock();
        let ids: Vec<String> = st
            .items
            .values()
            .filter(|x| !x.info.is_final())
            .filter(|x| x.info.call_id == call_id || x.info.exchange_id == call_id)
            .filter(|x| {
                leg.as_deref()
                    .is_none_or(|l| l == "both" || x.legs.iter().any(|xl| leg_name(*xl) == l))
            })
            .map(|x| x.info.exchange_id.clone())
            .collect();
        if ids.is_empty() {
            let known = self.inner.calls.find(call_id).is_some();
            return Err(RequestError::NotFound(if known {
                format!("callId {call_id:?}: no media exchange running")
            } else {
                format!("callId {call_id:?}: no such call or exchange")
            }));
        }
        Ok(ids)
    }

    /// `/media/terminate`: ends the call's exchanges (or those on `leg`); the original media
    /// path comes back, and held legs are resumed unless `nohold`.
    pub fn terminate(
        &self,
        call_id: &str,
        leg: Option<&str>,
        nohold: bool,
    ) -> Result<Vec<ExchangeInfo>, RequestError> {
        let ids = self.select(call_id, leg)?;
        let mut out = Vec::new();
        for id in ids {
            let _ = self.inner.calls.terminate(&id);
            if let Some(info) =
                self.finish(&id, "TERMINATED", None, Some("terminated".into()), nohold)
            {
                out.push(info);
            }
        }
        Ok(out)
    }

    /// `/media/pause` and `/media/resume` (`fork_pause`, `fork_resume`): a paused exchange
    /// keeps its call but carries silence.
    pub fn pause(
        &self,
        call_id: &str,
        leg: Option<&str>,
        paused: bool,
    ) -> Result<Vec<ExchangeInfo>, RequestError> {
        let ids = self.select(call_id, leg)?;
        let mut out = Vec::new();
        for id in ids {
            let want = if paused { "ACTIVE" } else { "PAUSED" };
            let taken = {
                let mut st = self.inner.state.lock();
                match st.items.get_mut(&id) {
                    Some(x) if x.info.status == want => {
                        x.info.status = if paused { "PAUSED" } else { "RESUMING" }.into();
                        Some(std::mem::take(&mut x.plays))
                    }
                    Some(x) => {
                        out.push(x.info.clone());
                        None
                    }
                    None => None,
                }
            };
            let Some(plays) = taken else {
                continue;
            };
            for (p, stop) in plays {
                stop.stop();
                p.stop();
            }
            if paused {
                let info = {
                    let mut st = self.inner.state.lock();
                    let Some(x) = st.items.get_mut(&id) else {
                        continue;
                    };
                    x.info.status = "PAUSED".into();
                    x.info.clone()
                };
                self.event(&info, "ExchangePaused");
                out.push(info);
            } else {
                // Joined again as at the answer (held legs stay held).
                self.connect(&id, false);
                let Some(info) = self
                    .inner
                    .state
                    .lock()
                    .items
                    .get(&id)
                    .map(|x| x.info.clone())
                else {
                    continue;
                };
                if info.status == "ACTIVE" {
                    self.event(&info, "ExchangeResumed");
                }
                out.push(info);
            }
        }
        Ok(out)
    }

    /// Exchanges of a call (or all), oldest first.
    pub fn find(&self, call_id: Option<&str>) -> Vec<ExchangeInfo> {
        let st = self.inner.state.lock();
        let mut v: Vec<ExchangeInfo> = st
            .items
            .values()
            .map(|x| x.info.clone())
            .filter(|i| call_id.is_none_or(|c| i.call_id == c || i.exchange_id == c))
            .collect();
        v.sort_by_key(|i| i.created_at);
        v
    }

    /// Follows the bus: exchange calls answered or ended, parents ended, listeners in.
    pub async fn run(self) {
        let mut rx = self.inner.bus.subscribe();
        loop {
            let ev = match rx.recv().await {
                Ok(ev) => ev,
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "media exchange: event bus lagged");
                    continue;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            };
            let Event::CallStatusEvent {
                call_id,
                status,
                sip_status,
                reason,
                ..
            } = ev
            else {
                continue;
            };
            match status.as_str() {
                "ESTABLISHED" => self.on_established(&call_id),
                "FINISH" | "FAILED" | "BUSY" => {
                    self.on_ended(&call_id, &status, sip_status, reason)
                }
                _ => {}
            }
        }
    }

    fn on_established(&self, call_id: &str) {
        let known = self.inner.state.lock().items.contains_key(call_id);
        if !known {
            // An endpoint that called in to listen or barge in.
            let Some(call) = self.inner.calls.find(call_id) else {
                return;
            };
            let Some(link) = call.exchange_of.filter(|_| call.direction == "inbound") else {
                return;
            };
            let all = match self.inner.calls.call_media(&link.call_id) {
                Ok(m) => m.legs,
                Err(e) => {
                    tracing::info!(%call_id, error = %e, "listener's call is gone");
                    let _ = self.inner.calls.terminate(call_id);
                    return;
                }
            };
            let legs = match choose(&link.call_id, &all, Some(&link.leg)) {
                Ok(l) => l,
                Err(e) => {
                    tracing::info!(%call_id, error = %e, "listener's leg");
                    let _ = self.inner.calls.terminate(call_id);
                    return;
                }
            };
            self.insert(Exchange {
                info: ExchangeInfo {
                    exchange_id: call_id.into(),
                    call_id: link.call_id.clone(),
                    kind: link.kind.clone(),
                    leg: legs_str(&all, &legs),
                    uri: call.caller.unwrap_or_default(),
                    mix: legs.len() > 1,
                    nohold: true,
                    held: Vec::new(),
                    status: "STARTING".into(),
                    sip_status: None,
                    reason: None,
                    created_at: unix_ms(),
                    ended_at: None,
                },
                legs,
                plays: Vec::new(),
                muted: Vec::new(),
                held: Vec::new(),
            });
        }
        self.connect(call_id, true);
    }

    fn on_ended(
        &self,
        call_id: &str,
        status: &str,
        sip_status: Option<u16>,
        reason: Option<String>,
    ) {
        // The exchange's own call ended: the far end hung up, refused or failed.
        let own = {
            let st = self.inner.state.lock();
            st.items
                .get(call_id)
                .filter(|x| !x.info.is_final())
                .map(|x| x.info.status == "STARTING" && x.plays.is_empty())
        };
        if let Some(unanswered) = own {
            let (st, why) = if unanswered && status != "FINISH" {
                ("FAILED", reason.unwrap_or_else(|| status.to_lowercase()))
            } else if unanswered {
                ("FAILED", "the call ended before it was answered".into())
            } else {
                ("TERMINATED", "the far end hung up".into())
            };
            self.finish(call_id, st, sip_status, Some(why), false);
            return;
        }
        // A parent ended: its exchanges end with it.
        let children: Vec<String> = {
            let st = self.inner.state.lock();
            st.items
                .values()
                .filter(|x| x.info.call_id == call_id && !x.info.is_final())
                .map(|x| x.info.exchange_id.clone())
                .collect()
        };
        for id in children {
            let _ = self.inner.calls.terminate(&id);
            self.finish(&id, "TERMINATED", None, Some("the call ended".into()), true);
        }
    }
}

/// Joins an exchange's call `id` to the legs `legs` of `parent`, by kind: into its one
/// audio line, mixed, or with `lines` each leg into its own line. What it started is in
/// `plays` and `muted` even when it fails half way, for the caller to undo.
#[allow(clippy::too_many_arguments)]
fn join(
    calls: &CallManager,
    id: &str,
    parent: &str,
    kind: &str,
    legs: &[Leg],
    lines: bool,
    plays: &mut Vec<(PlayHandle, FeedStop)>,
    muted: &mut Vec<Leg>,
) -> Result<(), RequestError> {
    let own = calls.call_media(id)?;
    let theirs = calls.call_media(parent)?;
    // The exchange's own party: the callee we called, or the caller who called in.
    let side = own.legs[0];
    let registry = calls.registry();
    let sub = |stream: &str, pick| {
        stream_source(registry, stream, pick, "exchange")
            .map_err(|e| RequestError::Conflict(format!("stream {stream:?}: {e}")))
    };
    // The parent's chosen legs into the exchange's call: the fork's target, a media server
    // (an IVR hears the party it talks to), a listener.
    for (i, l) in legs.iter().enumerate() {
        let (src, stop) = sub(&theirs.stream, Pick::Party(*l))?;
        let line = if lines { i } else { 0 };
        match calls.play_into_line(id, side, line, src) {
            Ok(p) => plays.push((p, stop)),
            Err(e) => {
                stop.stop();
                return Err(e);
            }
        }
    }
    // The exchange's audio into the parent's legs: instead of what they hear
    // (fetch_from_uri) or mixed with it (barge-in).
    if kind == FETCH_FROM_URI || kind == FETCH_TO_CALL {
        for l in legs {
            if kind == FETCH_FROM_URI {
                calls.mute_into(parent, *l, true)?;
                muted.push(*l);
            }
            let (src, stop) = sub(&own.stream, Pick::Party(side))?;
            match calls.play_into(parent, *l, src) {
                Ok(p) => plays.push((p, stop)),
                Err(e) => {
                    stop.stop();
                    return Err(e);
                }
            }
        }
    }
    Ok(())
}

fn muted_restore(calls: &CallManager, call_id: &str, legs: &[Leg]) -> Result<(), RequestError> {
    for l in legs {
        calls.mute_into(call_id, *l, false)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legs_are_chosen_by_name_or_both_and_unknown_ones_are_named() {
        let two = [Leg::Caller, Leg::Callee];
        assert_eq!(choose("c", &two, None).unwrap(), two.to_vec());
        assert_eq!(choose("c", &two, Some("BOTH")).unwrap(), two.to_vec());
        assert_eq!(
            choose("c", &two, Some("callee")).unwrap(),
            vec![Leg::Callee]
        );
        let e = choose("c", &[Leg::Callee], Some("caller")).unwrap_err();
        assert!(
            e.to_string().contains("leg") && e.to_string().contains("callee"),
            "{e}"
        );
        assert_eq!(legs_str(&two, &two), "both");
        assert_eq!(legs_str(&two, &[Leg::Caller]), "caller");
        assert_eq!(legs_str(&[Leg::Callee], &[Leg::Callee]), "callee");
    }
}
