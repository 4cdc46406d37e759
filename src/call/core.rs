//! The call core: the call table and every decision about a call's signalling, as a sans-IO
//! state machine. The manager (the shell) feeds it the UA's events, the API's requests and
//! the time, and carries out the [`Effect`]s it answers with: SIP commands, events, and the
//! media work (RTP legs, bridges, the stream's publisher) that the core never touches.
//! No locks, no tasks, no clock of its own: the unit tests drive it in virtual time.
//!
//! What it decides: the router from UA keys to calls, each leg's phase and the call's
//! status from its legs (one leg, or a two-party call: the caller, then the callee, then
//! bridged), RFC 3263 failover to the next target, the end of a call (the other leg hung
//! up, resources released, history kept), the answers to our hold re-INVITEs, the
//! transfers' progress, and two timers: an inbound call waiting for `/call/answer`
//! (`inbound_ring_timeout_s`) and a transfer waiting for its final NOTIFY
//! (`transfer_timeout_s`).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

use super::leg::CallLeg;
use super::model::{CallInfo, LegInfo};
use super::siprec::{ExchangeParty, RecordedCall};
use super::transfer::Step;
use crate::error::RequestError;
use crate::events::{unix_ms, Event};
use crate::registry::{Leg, TrackKind};
use crate::sip::sdp::Direction;
use crate::sip::ua::{CallKey, CallPhase, Command, IncomingCall, PlaceCall, ReferTarget};

/// How many ended calls `/call/find` still shows.
pub(super) const HISTORY: usize = 1000;

/// The time as the core sees it: monotonic for its timers, wall-clock for the call object.
#[derive(Debug, Clone, Copy)]
pub(super) struct Now {
    pub at: Instant,
    pub unix_ms: u64,
}

impl Now {
    pub fn real() -> Self {
        Self {
            at: Instant::now(),
            unix_ms: unix_ms(),
        }
    }
}

/// What the shell does for the core, in order. The effects that read or change a call's
/// media (`RemoteSdp`, `SiprecPhase`, `Release`, `PauseBridge`, the music) are done while
/// the call table is still locked, the rest after it is released.
#[derive(Debug)]
pub(super) enum Effect {
    Sip(Command),
    Publish(Event),
    /// The call's status changed: log it and publish its `CallStatusEvent`.
    Status(Box<CallInfo>),
    /// The far end's SDP for leg `leg`: the leg's media follows it.
    RemoteSdp {
        call_id: String,
        leg: usize,
        sdp: String,
    },
    /// The call ended: its stream ends with `why`, its legs' media stop.
    Release {
        call_id: String,
        why: &'static str,
    },
    /// The bridge into leg `leg` pauses (we hold that leg) or resumes.
    PauseBridge {
        call_id: String,
        leg: usize,
        paused: bool,
    },
    /// The music on hold into leg `leg` stops.
    StopMusic {
        call_id: String,
        leg: usize,
    },
    /// The music on hold (`hold_music_file`) plays into leg `leg`, looped.
    StartMusic {
        call_id: String,
        leg: usize,
    },
    /// Both legs of a two-party call answered: bridge their media.
    Bridge(CallKey),
    /// SIPREC follows the call's phase: the shell gives it the call as it stands once the
    /// media effects before this one are done (the negotiated codec comes from them).
    SiprecPhase {
        call_id: String,
        phase: CallPhase,
    },
    SiprecExchange(ExchangeParty),
}

/// A leg's phase as the UA reported it.
#[derive(Debug, Clone)]
pub(super) struct LegState {
    pub phase: CallPhase,
    pub sip_status: Option<u16>,
    pub reason: Option<String>,
    /// The far end's SDP, when the response carried one.
    pub sdp: Option<String>,
    pub sip_call_id: String,
}

/// Where a UA event about a key belongs.
#[derive(Debug)]
pub(super) enum Routed {
    /// A call of the table: the effects, in order.
    Call(Vec<Effect>),
    /// The new dialog of a leg the far end transferred (it replaces the leg once answered).
    Replacement(LegState),
    /// No call of the table (a SIPREC dialog).
    Foreign(LegState),
}

/// A timer of the core, checked when it fires (a timer whose reason went away does nothing).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    /// An inbound call waiting for `/call/answer`.
    Ring(String),
    /// A transfer of leg `.1` of call `.0` waiting for its final NOTIFY.
    Transfer(String, CallKey),
}

/// The durations of the core's timers (from the properties).
#[derive(Debug, Clone, Copy)]
pub(super) struct Timeouts {
    pub ring: Duration,
    pub transfer: Duration,
}

/// The calls, by callId, and the router from UA keys to them.
pub(super) struct CallTable {
    pub(super) calls: HashMap<String, Entry>,
    pub(super) keys: HashMap<CallKey, String>,
    pub(super) history: VecDeque<String>,
    /// Calls not yet ended (`max_calls`).
    pub(super) active: usize,
    timers: BTreeSet<(Instant, Timer)>,
    timeouts: Timeouts,
}

pub(super) struct Entry {
    pub(super) info: CallInfo,
    pub(super) publisher: Option<std::sync::Arc<crate::registry::Publisher>>,
    /// The call's SIP legs: one (the callee we called, or the caller who called us), or
    /// two for a two-party call (caller first, then callee), bridged through the gateway.
    pub(super) legs: Vec<CallLeg>,
    /// Two-party: the INVITE to the callee, sent once the caller has answered.
    pub(super) pending_callee: Option<Box<PlaceCall>>,
    /// Two-party: the media bridge between the legs, one sink per direction.
    pub(super) bridge: Vec<super::bridge::BridgeDirection>,
    /// Two-party: the task that publishes the mixed (stereo) track.
    pub(super) mixer: Option<tokio::task::JoinHandle<()>>,
    /// An inbound call ringing until `/call/answer` (`inbound_answer=api`): its INVITE, and
    /// when it stops waiting.
    pub(super) ringing: Option<(Box<IncomingCall>, Instant)>,
}

impl Entry {
    pub(super) fn new(info: CallInfo, key: CallKey, leg: Leg, uri: &str) -> Self {
        Self {
            info,
            publisher: None,
            legs: vec![CallLeg::new(leg, key, uri)],
            pending_callee: None,
            bridge: Vec::new(),
            mixer: None,
            ringing: None,
        }
    }

    /// The leg a UA key belongs to.
    pub(super) fn leg_index(&self, key: CallKey) -> Option<usize> {
        self.legs.iter().position(|l| l.key == key)
    }

    pub(super) fn leg_mut(&mut self, key: CallKey) -> Option<&mut CallLeg> {
        self.legs.iter_mut().find(|l| l.key == key)
    }

    /// The legs a request's `leg` names: `caller`, `callee`, `both` (default: all).
    pub(super) fn select(&self, leg: Option<&str>) -> Result<Vec<usize>, RequestError> {
        match leg {
            None | Some("both") => Ok((0..self.legs.len()).collect()),
            Some(name) => match self.legs.iter().position(|l| l.name_str() == name) {
                Some(i) => Ok(vec![i]),
                None => {
                    let names: Vec<&str> = self.legs.iter().map(CallLeg::name_str).collect();
                    Err(RequestError::BadRequest(format!(
                        "leg: {name:?}: this call's legs are {names:?} (or use both)"
                    )))
                }
            },
        }
    }

    /// One leg for a request that acts on one (transfer, DTMF): named, or the only one, or
    /// the callee of a two-party call.
    pub(super) fn select_one(&self, leg: Option<&str>) -> Result<usize, RequestError> {
        match leg {
            Some("both") if self.legs.len() > 1 => Err(RequestError::BadRequest(
                "leg: both: this request acts on one leg; name caller or callee".into(),
            )),
            None | Some("both") => Ok(self.legs.len() - 1),
            Some(_) => Ok(self.select(leg)?[0]),
        }
    }

    pub(super) fn leg_infos(&self) -> Vec<LegInfo> {
        self.legs.iter().map(CallLeg::info).collect()
    }
}

impl CallTable {
    pub(super) fn new(timeouts: Timeouts) -> Self {
        Self {
            calls: HashMap::new(),
            keys: HashMap::new(),
            history: VecDeque::new(),
            active: 0,
            timers: BTreeSet::new(),
            timeouts,
        }
    }

    /// The call `call_id` when it is established (or held): what hold, transfer and DTMF
    /// act on. `what`: the request's verb for the error ("held", "transferred"...).
    pub(super) fn established(
        &mut self,
        call_id: &str,
        what: &str,
    ) -> Result<&mut Entry, RequestError> {
        let entry = self
            .calls
            .get_mut(call_id)
            .ok_or_else(|| RequestError::NotFound(format!("callId {call_id:?}: no such call")))?;
        if !matches!(entry.info.status, CallPhase::Established | CallPhase::Hold) {
            return Err(RequestError::Conflict(format!(
                "callId {call_id:?} is {}: only an established call can be {what}",
                entry.info.status.as_str()
            )));
        }
        Ok(entry)
    }

    /// The call a UA key belongs to (the router from UA events to calls).
    pub(super) fn by_key(&mut self, key: CallKey) -> Option<&mut Entry> {
        let id = self.keys.get(&key)?;
        self.calls.get_mut(id)
    }

    /// When the core next wants [`CallTable::on_timeout`].
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.timers.first().map(|(at, _)| *at)
    }

    /// An inbound call now rings until the API answers it, or until `inbound_ring_timeout_s`.
    pub(super) fn ring(&mut self, call_id: &str, call: Box<IncomingCall>, now: Now) {
        let Some(entry) = self.calls.get_mut(call_id) else {
            return;
        };
        let at = now.at + self.timeouts.ring;
        entry.ringing = Some((call, at));
        self.timers.insert((at, Timer::Ring(call_id.to_string())));
    }

    /// `/call/answer`: the INVITE of an inbound call that is waiting for it (the shell
    /// answers it). Its ring timer no longer matters.
    pub(super) fn answer(&mut self, call_id: &str) -> Result<Box<IncomingCall>, RequestError> {
        let entry = self
            .calls
            .get_mut(call_id)
            .ok_or_else(|| RequestError::NotFound(format!("callId {call_id:?}: no such call")))?;
        if entry.info.status.is_final() {
            return Err(RequestError::Conflict(format!(
                "callId {call_id:?} has ended ({})",
                entry.info.status.as_str()
            )));
        }
        let (call, _) = entry.ringing.take().ok_or_else(|| {
            RequestError::Conflict(format!(
                "callId {call_id:?} is not an inbound call waiting for an answer \
                 (inbound_answer=api)"
            ))
        })?;
        Ok(call)
    }

    /// A transfer of leg `key` started: it fails unless its final NOTIFY comes in time.
    pub(super) fn arm_transfer(&mut self, call_id: &str, key: CallKey, now: Now) {
        let at = now.at + self.timeouts.transfer;
        if let Some(leg) = self.calls.get_mut(call_id).and_then(|e| e.leg_mut(key)) {
            leg.transfer_deadline = Some(at);
            self.timers
                .insert((at, Timer::Transfer(call_id.to_string(), key)));
        }
    }

    /// The timers due at `now`.
    pub(super) fn on_timeout(&mut self, now: Now) -> Vec<Effect> {
        let mut fx = Vec::new();
        while let Some((at, timer)) = self.timers.first().cloned() {
            if at > now.at {
                break;
            }
            self.timers.pop_first();
            match timer {
                Timer::Ring(call_id) => {
                    let Some(entry) = self.calls.get_mut(&call_id) else {
                        continue;
                    };
                    if entry.ringing.as_ref().map(|r| r.1) != Some(at) {
                        continue;
                    }
                    entry.ringing = None;
                    let secs = self.timeouts.ring.as_secs();
                    tracing::info!(%call_id, secs, "inbound call not answered by the API in time");
                    let leg = &mut entry.legs[0];
                    leg.end_as = Some((
                        CallPhase::Failed,
                        480,
                        format!("not answered within inbound_ring_timeout_s ({secs} s)"),
                    ));
                    fx.push(Effect::Sip(Command::Reject {
                        key: leg.key,
                        status: 480,
                        warning: None,
                    }));
                }
                Timer::Transfer(call_id, key) => {
                    let secs = self.timeouts.transfer.as_secs();
                    let Some(leg) = self.calls.get_mut(&call_id).and_then(|e| e.leg_mut(key))
                    else {
                        continue;
                    };
                    if leg.transfer_deadline != Some(at) {
                        continue;
                    }
                    leg.transfer_deadline = None;
                    let steps = leg
                        .transfer
                        .as_mut()
                        .map(|t| t.on_timeout(secs))
                        .unwrap_or_default();
                    transfer_effects(&call_id, leg, steps, &mut fx);
                }
            }
        }
        fx
    }

    /// A leg's phase changed (the UA's `CallState`).
    pub(super) fn on_leg_state(&mut self, key: CallKey, s: LegState, now: Now) -> Routed {
        let Some(call_id) = self.keys.get(&key).cloned() else {
            return Routed::Foreign(s);
        };
        let Some(entry) = self.calls.get_mut(&call_id) else {
            return Routed::Call(Vec::new());
        };
        let Some(idx) = entry.leg_index(key) else {
            let replacing = entry
                .legs
                .iter()
                .any(|l| l.replacement.as_ref().is_some_and(|r| r.0 == key));
            if replacing {
                return Routed::Replacement(s);
            }
            if s.phase.is_final() {
                // A dialog this call left behind (the old leg of a transfer).
                self.keys.remove(&key);
            }
            return Routed::Call(Vec::new());
        };
        let mut fx = Vec::new();
        // A leg we ended for a reason of ours (SRTP the SDP could not give, an inbound call
        // nobody answered) ends with that reason, not as an ordinary hang-up.
        let (phase, sip_status, reason) = match &entry.legs[idx].end_as {
            Some((p, code, why)) if s.phase.is_final() => (*p, Some(*code), Some(why.clone())),
            _ => (s.phase, s.sip_status, s.reason),
        };
        if let Some(place) = failover(&mut entry.legs[idx], phase, sip_status) {
            let leg_name = entry.legs[idx].name_str();
            let why = format!(
                "{} from the previous target; trying {}",
                sip_status.map_or("no answer".to_string(), |s| s.to_string()),
                place.route.dest
            );
            tracing::info!(%call_id, leg = leg_name, next = %place.route.dest, "failover to the next SRV target");
            fx.push(Effect::Publish(control_event(
                &call_id,
                leg_name,
                "Failover",
                sip_status,
                Some(why),
            )));
            fx.push(Effect::Sip(Command::PlaceCall(place)));
            return Routed::Call(fx);
        }
        {
            let leg = &mut entry.legs[idx];
            leg.status = phase;
            leg.sip_status = sip_status.or(leg.sip_status);
            leg.sip_call_id = Some(s.sip_call_id.clone());
        }
        if phase.is_final() {
            entry.ringing = None;
        }
        if entry.info.status.is_final() {
            // A leg of a call that has already ended (its BYE completed): only its own
            // status in the call object moves.
            if let Some(l) = entry.info.legs.get_mut(idx) {
                l.status = phase.as_str().to_string();
            }
            if phase.is_final() {
                self.keys.remove(&key);
            }
            return Routed::Call(fx);
        }
        if let Some(sdp) = s.sdp {
            fx.push(Effect::RemoteSdp {
                call_id: call_id.clone(),
                leg: idx,
                sdp,
            });
        }
        let leg_name = entry.legs[idx].name_str();
        let two_party = entry.legs.len() > 1 || entry.pending_callee.is_some();
        if two_party && phase == CallPhase::Established {
            if let Some(place) = entry.pending_callee.take() {
                // The caller answered: now the callee (call-api's CallerAnswered).
                tracing::info!(%call_id, "caller answered; calling the callee");
                fx.push(Effect::Publish(control_event(
                    &call_id,
                    leg_name,
                    "CallerAnswered",
                    sip_status,
                    None,
                )));
                fx.push(Effect::Sip(Command::PlaceCall(place)));
            } else if idx > 0 {
                fx.push(Effect::Publish(control_event(
                    &call_id,
                    leg_name,
                    "CalleeAnswered",
                    sip_status,
                    None,
                )));
                fx.push(Effect::Bridge(key));
            }
        }
        let call_phase = call_phase(&entry.legs, entry.pending_callee.is_some());
        let changed = call_phase != entry.info.status;
        entry.info.status = call_phase;
        if sip_status.is_some() {
            entry.info.sip_status = sip_status;
        }
        entry.info.reason = if two_party {
            reason.map(|r| format!("{leg_name}: {r}"))
        } else {
            reason
        }
        .or(entry.info.reason.take().filter(|_| !phase.is_final()));
        if idx == 0 {
            entry.info.sip_call_id = Some(s.sip_call_id);
        }
        let established_now =
            call_phase == CallPhase::Established && entry.info.established_at.is_none();
        if established_now {
            entry.info.established_at = Some(now.unix_ms);
            fx.push(Effect::SiprecPhase {
                call_id: call_id.clone(),
                phase: call_phase,
            });
        }
        // An exchange's call joins or leaves the call it exchanges media with: the SIPREC
        // metadata of that call lists it.
        if let Some(link) = &entry.info.exchange_of {
            let joined = established_now;
            let left = call_phase.is_final() && entry.info.established_at.is_some();
            if joined || left {
                fx.push(Effect::SiprecExchange(ExchangeParty {
                    call_id: link.call_id.clone(),
                    exchange_id: call_id.clone(),
                    kind: link.kind.clone(),
                    leg: link.leg.clone(),
                    uri: match (&entry.info.caller, entry.info.direction.as_str()) {
                        (Some(from), "inbound") => from.clone(),
                        _ => entry.info.callee.clone(),
                    },
                    joined,
                }));
            }
        }
        let report = changed || entry.legs.len() == 1;
        if call_phase.is_final() {
            self.end(&call_id, call_phase, now, &mut fx);
        } else if phase.is_final() {
            self.keys.remove(&key);
        }
        if let Some(e) = self.calls.get(&call_id).filter(|_| report) {
            fx.push(Effect::Status(Box::new(e.info.clone())));
        }
        Routed::Call(fx)
    }

    /// The call ended (`phase`): the other legs are hung up, their transfers fail, the
    /// media is released, the keys that will report no more are forgotten, and the call
    /// joins the bounded history.
    fn end(&mut self, call_id: &str, phase: CallPhase, now: Now, fx: &mut Vec<Effect>) {
        let Some(entry) = self.calls.get_mut(call_id) else {
            return;
        };
        for leg in entry.legs.iter_mut() {
            if let Some(to) = &leg.transferred_to {
                entry.info.reason = Some(format!("transferred to {to}"));
            }
            let steps = leg
                .transfer
                .as_mut()
                .map(|t| t.on_call_ended())
                .unwrap_or_default();
            transfer_effects(call_id, leg, steps, fx);
            if !leg.status.is_final() {
                // The other party of a two-party call: hang it up too.
                fx.push(Effect::Sip(Command::Hangup(leg.key)));
            }
        }
        entry.info.ended_at = Some(now.unix_ms);
        entry.ringing = None;
        fx.push(Effect::SiprecPhase {
            call_id: call_id.to_string(),
            phase,
        });
        fx.push(Effect::Release {
            call_id: call_id.to_string(),
            why: phase.as_str(),
        });
        // Keys of legs that will report no more: a callee never called, an ended leg.
        let mut gone: Vec<CallKey> = entry
            .pending_callee
            .take()
            .map(|p| p.key)
            .into_iter()
            .collect();
        gone.extend(
            entry
                .legs
                .iter()
                .filter(|l| l.status.is_final())
                .map(|l| l.key),
        );
        for k in gone {
            self.keys.remove(&k);
        }
        self.active = self.active.saturating_sub(1);
        self.history.push_back(call_id.to_string());
        while self.history.len() > HISTORY {
            if let Some(old) = self.history.pop_front() {
                self.calls.remove(&old);
            }
        }
    }

    /// The answer to our own re-INVITE (hold, unhold) on leg `key`. None: not a call of the
    /// table (a SIPREC dialog).
    pub(super) fn on_reinvited(
        &mut self,
        key: CallKey,
        status: u16,
        answer: Option<String>,
    ) -> Option<Vec<Effect>> {
        let entry = self.by_key(key)?;
        let mut fx = Vec::new();
        let Some(idx) = entry.leg_index(key) else {
            return Some(fx);
        };
        let Some(on) = entry.legs[idx].hold.pending.take() else {
            return Some(fx);
        };
        let call_id = entry.info.call_id.clone();
        let ok = (200..300).contains(&status);
        if on && !ok {
            fx.push(Effect::StopMusic {
                call_id: call_id.clone(),
                leg: idx,
            });
        }
        if ok {
            entry.legs[idx].hold.ours = on;
        }
        // The bridge into this leg follows whether we hold it now.
        fx.push(Effect::PauseBridge {
            call_id: call_id.clone(),
            leg: idx,
            paused: entry.legs[idx].hold.ours,
        });
        if let (true, Some(sdp)) = (ok, answer) {
            fx.push(Effect::RemoteSdp {
                call_id: call_id.clone(),
                leg: idx,
                sdp,
            });
        }
        let name = match (on, ok) {
            (true, true) => "CallHoldSuccessful",
            (true, false) => "CallHoldFailed",
            (false, true) => "CallUnholdSuccessful",
            (false, false) => "CallUnholdFailed",
        };
        let leg_name = entry.legs[idx].name_str();
        tracing::info!(%call_id, leg = leg_name, status, event = name, "hold");
        fx.push(Effect::Publish(control_event(
            &call_id,
            leg_name,
            name,
            Some(status),
            None,
        )));
        Some(fx)
    }

    /// Feeds leg `key`'s transfer the REFER's answer or a NOTIFY (`f`), and says what follows.
    pub(super) fn on_transfer(
        &mut self,
        key: CallKey,
        f: impl FnOnce(&mut super::transfer::Transfer) -> Vec<Step>,
    ) -> Vec<Effect> {
        let mut fx = Vec::new();
        let Some(entry) = self.by_key(key) else {
            return fx;
        };
        let call_id = entry.info.call_id.clone();
        let Some(leg) = entry.leg_mut(key) else {
            return fx;
        };
        let steps = leg.transfer.as_mut().map(f).unwrap_or_default();
        transfer_effects(&call_id, leg, steps, &mut fx);
        fx
    }
}

/// `/call/transfer`'s choices, checked by [`CallTable::transfer`].
pub(super) struct TransferRequest<'a> {
    pub leg: Option<&'a str>,
    pub target: Option<&'a str>,
    pub replace_call_id: Option<&'a str>,
    pub replace_leg: Option<&'a str>,
}

impl CallTable {
    /// `/call/hold` (`on`) and `/call/unhold` of the chosen legs: a re-INVITE with our
    /// media sendonly (or sendrecv again) to each leg not already there, the bridge into it
    /// paused (the held party hears neither the other party nor, after unhold, stale audio)
    /// and, with `music`, the music on hold into it.
    pub(super) fn hold(
        &mut self,
        call_id: &str,
        leg: Option<&str>,
        on: bool,
        music: bool,
    ) -> Result<Vec<Effect>, RequestError> {
        let entry = self.established(call_id, if on { "held" } else { "resumed" })?;
        let chosen = entry.select(leg)?;
        if chosen.iter().any(|i| entry.legs[*i].hold.pending.is_some()) {
            return Err(RequestError::Conflict(format!(
                "callId {call_id:?}: a hold or unhold is already in progress"
            )));
        }
        let (first_event, leg_event) = if on {
            ("CallHolding", "CallHoldStart")
        } else {
            ("CallUnholding", "CallUnholdStart")
        };
        let mut fx = Vec::new();
        let mut first = true;
        for i in chosen {
            fx.push(Effect::PauseBridge {
                call_id: call_id.to_string(),
                leg: i,
                paused: on,
            });
            let leg = &mut entry.legs[i];
            if leg.hold.ours == on {
                // Already where the caller wants it: nothing to send.
                continue;
            }
            leg.hold.pending = Some(on);
            let want = if on {
                Direction::SendOnly
            } else {
                Direction::SendRecv
            };
            let ours = leg.local_sdp(want);
            fx.push(Effect::Sip(Command::Reinvite {
                key: leg.key,
                sdp: leg.sdp.stamp(ours),
                body: None,
            }));
            let music_effect = if !on {
                Some(Effect::StopMusic {
                    call_id: call_id.to_string(),
                    leg: i,
                })
            } else if music {
                Some(Effect::StartMusic {
                    call_id: call_id.to_string(),
                    leg: i,
                })
            } else {
                None
            };
            fx.extend(music_effect);
            tracing::info!(
                call_id,
                leg = leg.name_str(),
                hold = on,
                "hold re-INVITE sent"
            );
            if std::mem::take(&mut first) {
                fx.push(Effect::Publish(control_event(
                    call_id,
                    leg.name_str(),
                    first_event,
                    None,
                    None,
                )));
            }
            fx.push(Effect::Publish(control_event(
                call_id,
                leg.name_str(),
                leg_event,
                None,
                None,
            )));
        }
        Ok(fx)
    }

    /// `/call/transfer`: a REFER to one leg's far end asking it to call `target` (blind), or
    /// to join the far end of another call of ours (attended, RFC 3891 Replaces). One
    /// transfer at a time per leg; it fails unless its final NOTIFY comes within
    /// `transfer_timeout_s`.
    pub(super) fn transfer(
        &mut self,
        call_id: &str,
        req: TransferRequest<'_>,
        now: Now,
    ) -> Result<Vec<Effect>, RequestError> {
        let replaces = match req.replace_call_id {
            None => None,
            Some(other) if other == call_id => {
                return Err(RequestError::BadRequest(
                    "replaceCallId: must be another call than callId".into(),
                ))
            }
            Some(other) => {
                let o = self.calls.get(other).ok_or_else(|| {
                    RequestError::NotFound(format!("replaceCallId {other:?}: no such call"))
                })?;
                if o.info.status != CallPhase::Established {
                    return Err(RequestError::Conflict(format!(
                        "replaceCallId {other:?} is {}: only an established call can be joined",
                        o.info.status.as_str()
                    )));
                }
                let l = &o.legs[o.select_one(req.replace_leg)?];
                Some((other.to_string(), l.key, l.uri.clone()))
            }
        };
        let entry = self.established(call_id, "transferred")?;
        let idx = entry.select_one(req.leg)?;
        let leg = &mut entry.legs[idx];
        if leg.transfer.as_ref().is_some_and(|t| !t.is_done()) {
            return Err(RequestError::Conflict(format!(
                "callId {call_id:?}: a transfer is already in progress"
            )));
        }
        let (target_uri, refer) = match (&replaces, req.target) {
            (Some((_, key, uri)), _) => (uri.clone(), ReferTarget::Replaces(*key)),
            (None, Some(t)) => {
                let uri = transfer_target(t, &leg.uri)?;
                (uri.clone(), ReferTarget::Uri(uri))
            }
            (None, None) => {
                return Err(RequestError::BadRequest(
                    "target: missing field (a SIP URI or a number; or replaceCallId)".into(),
                ))
            }
        };
        let (t, steps) = super::transfer::Transfer::start(target_uri, replaces.map(|r| r.0));
        leg.transfer = Some(t);
        let key = leg.key;
        let mut fx = vec![Effect::Sip(Command::Refer { key, target: refer })];
        tracing::info!(call_id, leg = leg.name_str(), "transfer: REFER sent");
        transfer_effects(call_id, leg, steps, &mut fx);
        self.arm_transfer(call_id, key, now);
        Ok(fx)
    }
}

/// A transfer target: a sip:/sips:/tel: URI, or a user (number) at the host of the call's
/// far end. No header injection: the URI is checked as a Refer-To would be read.
fn transfer_target(target: &str, remote_uri: &str) -> Result<String, RequestError> {
    let target = target.trim();
    let lower = target.to_ascii_lowercase();
    let uri =
        if lower.starts_with("sip:") || lower.starts_with("sips:") || lower.starts_with("tel:") {
            target.to_string()
        } else if !target.is_empty()
            && target
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+-_.!~*'()&=$,;?/".contains(c))
        {
            let host = remote_uri
                .split_once('@')
                .map(|(_, h)| h)
                .unwrap_or_else(|| remote_uri.split_once(':').map(|(_, h)| h).unwrap_or(""));
            let host = host.split([';', '>', '?']).next().unwrap_or("");
            format!("sip:{target}@{host}")
        } else {
            return Err(RequestError::BadRequest(format!(
                "target: {target:?} is neither a SIP URI nor a number"
            )));
        };
    if uri.contains(['<', '>', '"']) {
        return Err(RequestError::BadRequest(format!(
            "target: {uri:?} must be a bare URI (no <>, no quotes)"
        )));
    }
    crate::sip::refer::parse_refer_to(&uri)
        .map_err(|e| RequestError::BadRequest(format!("target: {e}")))?;
    Ok(uri)
}

/// The effects of a transfer's steps on `leg`; a finished transfer needs no timer.
fn transfer_effects(call_id: &str, leg: &mut CallLeg, steps: Vec<Step>, fx: &mut Vec<Effect>) {
    let leg_name = leg.name_str();
    for step in steps {
        match step {
            Step::Event {
                name,
                sip_status,
                reason,
            } => {
                tracing::info!(%call_id, leg = leg_name, event = name, sip_status, "transfer");
                fx.push(Effect::Publish(control_event(
                    call_id, leg_name, name, sip_status, reason,
                )));
            }
            Step::HangUp => {
                leg.transferred_to = leg.transfer.as_ref().map(|t| t.target.clone());
                fx.push(Effect::Sip(Command::Hangup(leg.key)));
            }
        }
    }
    if leg.transfer.as_ref().is_some_and(|t| t.is_done()) {
        leg.transfer_deadline = None;
    }
}

/// RFC 3263 §4.3: a 503, a timeout or a transport failure before any answer moves the
/// INVITE to the next target, when there is one.
fn failover(
    leg: &mut CallLeg,
    phase: CallPhase,
    sip_status: Option<u16>,
) -> Option<Box<PlaceCall>> {
    let unanswered = !matches!(leg.status, CallPhase::Established | CallPhase::Hold);
    let wanted = phase == CallPhase::Failed
        && matches!(sip_status, Some(503) | Some(408) | None)
        && unanswered
        && !leg.alternates.is_empty();
    let template = leg.template.as_mut().filter(|_| wanted)?;
    let next = leg.alternates.remove(0);
    template.route.dest = next;
    template.sip_call_id = None;
    Some(template.clone())
}

/// The status a change of directions gives: HOLD while either side of any leg holds the
/// other. Some(the call object) when it changed.
pub(super) fn hold_status(entry: &mut Entry) -> Option<CallInfo> {
    let held = entry.legs.iter().any(|l| l.hold.ours || l.peer_holds());
    let next = match (entry.info.status, held) {
        (CallPhase::Established, true) => CallPhase::Hold,
        (CallPhase::Hold, false) => CallPhase::Established,
        _ => return None,
    };
    entry.info.status = next;
    Some(entry.info.clone())
}

/// The call as SIPREC records it.
pub(super) fn recorded_call(entry: &Entry) -> RecordedCall {
    // The first audio format of one party's leg (None: of any leg).
    let audio = |party: Option<Leg>| {
        entry
            .legs
            .iter()
            .filter(|l| party.is_none_or(|p| l.name == p))
            .flat_map(|l| l.media.iter())
            .find(|m| m.kind == TrackKind::Audio)
            .and_then(|m| m.codec.clone())
    };
    // Each stream in its own party's codec; a one-leg call's only leg gives both.
    let any = audio(None);
    RecordedCall {
        call_id: entry.info.call_id.clone(),
        sip_call_id: entry.info.sip_call_id.clone(),
        caller: entry
            .info
            .caller
            .clone()
            .unwrap_or_else(|| format!("sip:{}@{}", entry.info.sip_login, entry.info.sip_domain)),
        callee: entry.info.callee.clone(),
        stream: entry.info.to_stream.clone(),
        callee_codec: audio(Some(Leg::Callee)).or_else(|| any.clone()),
        caller_codec: audio(Some(Leg::Caller)).or(any),
        status: entry.info.status,
    }
}

pub(super) fn control_event(
    call_id: &str,
    leg: &str,
    name: &str,
    sip_status: Option<u16>,
    reason: Option<String>,
) -> Event {
    Event::CallControlEvent {
        call_id: call_id.to_string(),
        event: name.to_string(),
        leg: Some(leg.to_string()),
        sip_status,
        reason,
        timestamp: unix_ms(),
    }
}

/// The call's status from its legs'. One leg: that leg's. Two-party: a leg's end ends the
/// call; before that the caller's progress, then the callee's, and ESTABLISHED when both
/// answered.
pub(super) fn call_phase(legs: &[CallLeg], callee_pending: bool) -> CallPhase {
    if let Some(l) = legs.iter().find(|l| l.status.is_final()) {
        return l.status;
    }
    match legs {
        [] => CallPhase::Pending,
        [one] if !callee_pending => one.status,
        [caller] => match caller.status {
            CallPhase::Established | CallPhase::Hold => CallPhase::Trying,
            other => other,
        },
        [caller, rest @ ..] => {
            if caller.status != CallPhase::Established {
                return caller.status;
            }
            rest.iter()
                .map(|l| l.status)
                .find(|s| *s != CallPhase::Established)
                .unwrap_or(CallPhase::Established)
        }
    }
}

#[cfg(test)]
mod tests;
