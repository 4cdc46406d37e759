//! The call core driven in virtual time: UA events, API requests and timers in, effects out.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::*;
use crate::sip::endpoint::Transport;
use crate::sip::ua::{Account, ReferTarget, Route};

const RING: Duration = Duration::from_secs(30);
const TRANSFER: Duration = Duration::from_secs(60);

fn table() -> CallTable {
    CallTable::new(Timeouts {
        ring: RING,
        transfer: TRANSFER,
    })
}

fn at(t0: Instant, secs: u64) -> Now {
    Now {
        at: t0 + Duration::from_secs(secs),
        unix_ms: 1_000_000 + secs * 1000,
    }
}

fn info(call_id: &str, direction: &str) -> CallInfo {
    CallInfo::sample(call_id, direction)
}

fn place(key: CallKey, dest: &str) -> Box<PlaceCall> {
    let dest: SocketAddr = dest.parse().unwrap();
    Box::new(PlaceCall {
        key,
        account: Account {
            login: "gw".into(),
            auth_name: "gw".into(),
            password: String::new(),
            domain: "h".into(),
        },
        callee_uri: "sip:bob@h".into(),
        register: false,
        route: Route {
            transport: Transport::Udp,
            dest,
            local: "127.0.0.1:5060".parse().unwrap(),
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
        label: "c".into(),
    })
}

/// A one-leg outbound call `c1` on key 1.
fn one_leg(t: &mut CallTable) {
    t.calls.insert(
        "c1".into(),
        Entry::new(info("c1", "outbound"), 1, Leg::Callee, "sip:bob@h"),
    );
    t.keys.insert(1, "c1".into());
    t.active += 1;
}

/// A two-party call `tp` (caller key 10, callee key 11, the callee's INVITE held back).
fn two_party(t: &mut CallTable) {
    let mut e = Entry::new(info("tp", "outbound"), 10, Leg::Caller, "sip:alice@h");
    e.legs.push(CallLeg::new(Leg::Callee, 11, "sip:bob@h"));
    e.pending_callee = Some(place(11, "127.0.0.1:5070"));
    t.calls.insert("tp".into(), e);
    t.keys.insert(10, "tp".into());
    t.keys.insert(11, "tp".into());
    t.active += 1;
}

fn state(phase: CallPhase, sip_status: Option<u16>) -> LegState {
    LegState {
        phase,
        sip_status,
        reason: None,
        sdp: None,
        sip_call_id: "sip-1".into(),
    }
}

fn effects(r: Routed) -> Vec<Effect> {
    match r {
        Routed::Call(fx) => fx,
        other => panic!("not routed to a call: {other:?}"),
    }
}

/// A compact view of the effects: `status:RING`, `event:CallerAnswered`, `place:11`...
fn names(fx: &[Effect]) -> Vec<String> {
    fx.iter()
        .map(|e| match e {
            Effect::Sip(Command::PlaceCall(p)) => format!("place:{}@{}", p.key, p.route.dest),
            Effect::Sip(Command::Hangup(k)) => format!("hangup:{k}"),
            Effect::Sip(Command::Reject { key, status, .. }) => format!("reject:{key}:{status}"),
            Effect::Sip(other) => format!("sip:{other:?}"),
            Effect::Publish(Event::CallControlEvent { event, .. }) => format!("event:{event}"),
            Effect::Publish(other) => format!("publish:{other:?}"),
            Effect::Status(i) => format!("status:{}", i.status.as_str()),
            Effect::RemoteSdp { leg, .. } => format!("sdp:{leg}"),
            Effect::Release { why, .. } => format!("release:{why}"),
            Effect::PauseBridge { leg, paused, .. } => format!("pause:{leg}:{paused}"),
            Effect::StopMusic { leg, .. } => format!("stop-music:{leg}"),
            Effect::StartMusic { leg, .. } => format!("start-music:{leg}"),
            Effect::Bridge(k) => format!("bridge:{k}"),
            Effect::SiprecPhase { phase, .. } => format!("siprec:{}", phase.as_str()),
            Effect::SiprecExchange(_) => "siprec-exchange".into(),
        })
        .collect()
}

fn legs(statuses: &[CallPhase]) -> Vec<CallLeg> {
    statuses
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let name = if i == 0 && statuses.len() > 1 {
                Leg::Caller
            } else {
                Leg::Callee
            };
            let mut l = CallLeg::new(name, i as u64 + 1, "sip:x@h");
            l.status = *s;
            l
        })
        .collect()
}

#[test]
fn a_one_leg_call_has_its_legs_status() {
    for s in [
        CallPhase::Trying,
        CallPhase::Ring,
        CallPhase::Established,
        CallPhase::Busy,
    ] {
        assert_eq!(call_phase(&legs(&[s]), false), s);
    }
}

#[test]
fn a_two_party_calls_status_follows_the_caller_then_the_callee() {
    use CallPhase::*;
    // The caller rings; the callee is not called yet.
    assert_eq!(call_phase(&legs(&[Ring, Pending]), true), Ring);
    // The caller answered: the callee's INVITE is next, the call is still in progress.
    assert_eq!(call_phase(&legs(&[Established]), true), Trying);
    assert_eq!(call_phase(&legs(&[Established, Pending]), false), Pending);
    assert_eq!(call_phase(&legs(&[Established, Ring]), false), Ring);
    assert_eq!(
        call_phase(&legs(&[Established, Established]), false),
        Established
    );
    // Either leg's end ends the call with that leg's status.
    assert_eq!(call_phase(&legs(&[Busy, Pending]), true), Busy);
    assert_eq!(call_phase(&legs(&[Established, Failed]), false), Failed);
    assert_eq!(call_phase(&legs(&[Finish, Established]), false), Finish);
}

#[test]
fn legs_are_chosen_by_name_and_both_is_refused_where_one_is_needed() {
    let mut e = Entry::new(info("c1", "outbound"), 1, Leg::Caller, "sip:a@h");
    e.legs.push(CallLeg::new(Leg::Callee, 2, "sip:b@h"));
    assert_eq!(e.select(None).unwrap(), [0, 1]);
    assert_eq!(e.select(Some("both")).unwrap(), [0, 1]);
    assert_eq!(e.select(Some("callee")).unwrap(), [1]);
    let err = e.select(Some("bob")).unwrap_err().to_string();
    assert!(err.contains("caller") && err.contains("callee"), "{err}");
    assert_eq!(e.select_one(None).unwrap(), 1, "the callee by default");
    assert_eq!(e.select_one(Some("caller")).unwrap(), 0);
    assert!(e.select_one(Some("both")).is_err());
    assert_eq!(e.leg_index(2), Some(1));
    assert_eq!(e.leg_index(9), None);
}

#[test]
fn a_one_leg_call_rings_answers_and_ends_releasing_its_media_once() {
    let t0 = Instant::now();
    let mut t = table();
    one_leg(&mut t);
    let fx = effects(t.on_leg_state(1, state(CallPhase::Ring, Some(180)), at(t0, 1)));
    assert_eq!(names(&fx), ["status:RING"]);
    let mut answered = state(CallPhase::Established, Some(200));
    answered.sdp = Some("v=0".into());
    let fx = effects(t.on_leg_state(1, answered, at(t0, 3)));
    assert_eq!(
        names(&fx),
        ["sdp:0", "siprec:ESTABLISHED", "status:ESTABLISHED"]
    );
    assert_eq!(t.calls["c1"].info.established_at, Some(1_003_000));

    let mut bye = state(CallPhase::Finish, None);
    bye.reason = Some("hung up by the far end".into());
    let fx = effects(t.on_leg_state(1, bye, at(t0, 10)));
    assert_eq!(
        names(&fx),
        ["siprec:FINISH", "release:FINISH", "status:FINISH"]
    );
    let call = &t.calls["c1"].info;
    assert_eq!(call.ended_at, Some(1_010_000));
    assert_eq!(call.reason.as_deref(), Some("hung up by the far end"));
    assert_eq!(t.active, 0);
    assert!(t.keys.is_empty(), "an ended leg's key routes nothing");
    assert_eq!(t.history, ["c1"]);
    // A late event for the ended leg is not ours any more.
    assert!(matches!(
        t.on_leg_state(1, state(CallPhase::Finish, None), at(t0, 11)),
        Routed::Foreign(_)
    ));
}

#[test]
fn a_two_party_call_calls_the_callee_after_the_caller_and_bridges_them() {
    let t0 = Instant::now();
    let mut t = table();
    two_party(&mut t);
    let fx = effects(t.on_leg_state(10, state(CallPhase::Ring, Some(180)), at(t0, 1)));
    assert_eq!(names(&fx), ["status:RING"]);
    let fx = effects(t.on_leg_state(10, state(CallPhase::Established, Some(200)), at(t0, 2)));
    assert_eq!(
        names(&fx),
        [
            "event:CallerAnswered",
            "place:11@127.0.0.1:5070",
            "status:PENDING"
        ]
    );
    assert!(
        t.calls["tp"].pending_callee.is_none(),
        "the callee is called once"
    );
    let fx = effects(t.on_leg_state(11, state(CallPhase::Ring, Some(180)), at(t0, 3)));
    assert_eq!(names(&fx), ["status:RING"]);
    let fx = effects(t.on_leg_state(11, state(CallPhase::Established, Some(200)), at(t0, 5)));
    assert_eq!(
        names(&fx),
        [
            "event:CalleeAnswered",
            "bridge:11",
            "siprec:ESTABLISHED",
            "status:ESTABLISHED"
        ]
    );
    // The callee hangs up: the caller is hung up too, the reason names the leg.
    let mut bye = state(CallPhase::Finish, None);
    bye.reason = Some("hung up by the far end".into());
    let fx = effects(t.on_leg_state(11, bye, at(t0, 9)));
    assert_eq!(
        names(&fx),
        [
            "hangup:10",
            "siprec:FINISH",
            "release:FINISH",
            "status:FINISH"
        ]
    );
    assert_eq!(
        t.calls["tp"].info.reason.as_deref(),
        Some("callee: hung up by the far end")
    );
    // The caller's own end afterwards moves only its leg's status in the call object.
    assert!(t.keys.contains_key(&10));
    let fx = effects(t.on_leg_state(10, state(CallPhase::Finish, None), at(t0, 10)));
    assert!(fx.is_empty(), "{:?}", names(&fx));
    assert!(t.keys.is_empty());
    assert_eq!(t.calls["tp"].info.status, CallPhase::Finish);
}

#[test]
fn a_busy_caller_ends_the_call_and_the_callee_is_never_called() {
    let t0 = Instant::now();
    let mut t = table();
    two_party(&mut t);
    let fx = effects(t.on_leg_state(10, state(CallPhase::Busy, Some(486)), at(t0, 1)));
    assert_eq!(
        names(&fx),
        ["hangup:11", "siprec:BUSY", "release:BUSY", "status:BUSY"]
    );
    assert!(t.keys.is_empty(), "no key waits for a callee never called");
    assert_eq!(t.active, 0);
}

#[test]
fn a_503_moves_the_invite_to_the_next_target_and_the_last_one_fails() {
    let t0 = Instant::now();
    let mut t = table();
    one_leg(&mut t);
    {
        let leg = &mut t.calls.get_mut("c1").unwrap().legs[0];
        leg.template = Some(place(1, "127.0.0.1:5070"));
        leg.alternates = vec!["127.0.0.1:5071".parse().unwrap()];
    }
    let fx = effects(t.on_leg_state(1, state(CallPhase::Failed, Some(503)), at(t0, 1)));
    assert_eq!(names(&fx), ["event:Failover", "place:1@127.0.0.1:5071"]);
    assert_eq!(
        t.calls["c1"].info.status,
        CallPhase::Pending,
        "the call goes on"
    );
    // The last target fails too: no target is left, the call fails.
    let fx = effects(t.on_leg_state(1, state(CallPhase::Failed, Some(503)), at(t0, 2)));
    assert_eq!(
        names(&fx),
        ["siprec:FAILED", "release:FAILED", "status:FAILED"]
    );
}

#[test]
fn a_leg_ended_for_a_reason_of_ours_ends_with_it() {
    let t0 = Instant::now();
    let mut t = table();
    one_leg(&mut t);
    t.calls.get_mut("c1").unwrap().legs[0].end_as =
        Some((CallPhase::Failed, 488, "no SRTP".into()));
    effects(t.on_leg_state(1, state(CallPhase::Finish, None), at(t0, 1)));
    let call = &t.calls["c1"].info;
    assert_eq!(call.status, CallPhase::Failed);
    assert_eq!(call.sip_status, Some(488));
    assert_eq!(call.reason.as_deref(), Some("no SRTP"));
}

/// An inbound call `in1` on key 100 that rings for the API from `t0`.
fn ringing(t: &mut CallTable, t0: Instant) {
    let mut i = info("in1", "inbound");
    i.caller = Some("sip:alice@h".into());
    t.calls
        .insert("in1".into(), Entry::new(i, 100, Leg::Caller, "sip:alice@h"));
    t.keys.insert(100, "in1".into());
    t.active += 1;
    let ic = IncomingCall {
        key: 100,
        sip_call_id: "sip-in1".into(),
        request_uri: "sip:gw@h".into(),
        user: "gw".into(),
        from_uri: "sip:alice@h".into(),
        to_uri: "sip:gw@h".into(),
        sdp: None,
        headers: Vec::new(),
        transport: Transport::Udp,
        source: "127.0.0.1:5070".parse().unwrap(),
    };
    t.ring("in1", Box::new(ic), at(t0, 0));
}

#[test]
fn an_inbound_call_nobody_answers_gets_480_when_its_ring_timer_fires() {
    let t0 = Instant::now();
    let mut t = table();
    ringing(&mut t, t0);
    assert_eq!(t.next_deadline(), Some(t0 + RING));
    assert!(t.on_timeout(at(t0, 29)).is_empty(), "not yet");
    let fx = t.on_timeout(at(t0, 30));
    assert_eq!(names(&fx), ["reject:100:480"]);
    assert_eq!(t.next_deadline(), None);
    // The UA's end of the INVITE (it reports its own reason) ends the call with ours.
    let mut ended = state(CallPhase::Failed, Some(480));
    ended.reason = Some("rejected".into());
    effects(t.on_leg_state(100, ended, at(t0, 30)));
    let call = &t.calls["in1"].info;
    assert_eq!(call.status, CallPhase::Failed);
    assert_eq!(call.sip_status, Some(480));
    assert_eq!(
        call.reason.as_deref(),
        Some("not answered within inbound_ring_timeout_s (30 s)")
    );
    assert!(t.answer("in1").is_err(), "an ended call cannot be answered");
}

#[test]
fn an_inbound_call_answered_by_the_api_disarms_its_ring_timer() {
    let t0 = Instant::now();
    let mut t = table();
    ringing(&mut t, t0);
    let ic = t.answer("in1").expect("it rings");
    assert_eq!(ic.key, 100);
    let err = t.answer("in1").unwrap_err();
    assert!(
        matches!(err, RequestError::Conflict(_)),
        "answered once: {err}"
    );
    assert!(matches!(t.answer("nope"), Err(RequestError::NotFound(_))));
    assert!(
        t.on_timeout(at(t0, 31)).is_empty(),
        "the timer does nothing now"
    );
    assert_eq!(t.next_deadline(), None);
}

#[test]
fn a_caller_who_cancels_while_it_rings_ends_the_call_and_its_timer() {
    let t0 = Instant::now();
    let mut t = table();
    ringing(&mut t, t0);
    let mut cancel = state(CallPhase::Finish, Some(487));
    cancel.reason = Some("cancelled by the caller".into());
    let fx = effects(t.on_leg_state(100, cancel, at(t0, 5)));
    assert_eq!(
        names(&fx),
        ["siprec:FINISH", "release:FINISH", "status:FINISH"]
    );
    assert_eq!(
        t.calls["in1"].info.reason.as_deref(),
        Some("cancelled by the caller")
    );
    assert!(t.on_timeout(at(t0, 30)).is_empty());
}

/// `c1` established with a transfer of its leg started at `t0`.
fn transferring(t: &mut CallTable, t0: Instant) {
    one_leg(t);
    effects(t.on_leg_state(1, state(CallPhase::Established, Some(200)), at(t0, 0)));
    let (transfer, _) = super::super::transfer::Transfer::start("sip:carol@h".into(), None);
    t.calls.get_mut("c1").unwrap().legs[0].transfer = Some(transfer);
    t.arm_transfer("c1", 1, at(t0, 0));
}

#[test]
fn a_transfer_without_its_final_notify_fails_when_its_timer_fires() {
    let t0 = Instant::now();
    let mut t = table();
    transferring(&mut t, t0);
    let fx = t.on_transfer(1, |tr| tr.on_answer(202));
    assert_eq!(names(&fx), ["event:TransferStart"]);
    assert!(t.on_timeout(at(t0, 59)).is_empty());
    let fx = t.on_timeout(at(t0, 60));
    assert_eq!(names(&fx), ["event:TransferFailed"]);
    match &fx[0] {
        Effect::Publish(Event::CallControlEvent { sip_status, .. }) => {
            assert_eq!(*sip_status, Some(408))
        }
        other => panic!("{other:?}"),
    }
    // The call goes on, and a late NOTIFY changes nothing.
    assert_eq!(t.calls["c1"].info.status, CallPhase::Established);
    assert!(t
        .on_transfer(1, |tr| tr.on_progress(200, "200 OK", true))
        .is_empty());
}

#[test]
fn a_transfer_that_succeeds_hangs_up_and_leaves_no_timer_behind() {
    let t0 = Instant::now();
    let mut t = table();
    transferring(&mut t, t0);
    let fx = t.on_transfer(1, |tr| tr.on_progress(200, "200 OK", true));
    assert_eq!(
        names(&fx),
        [
            "event:TransferStart",
            "event:TransferSuccessful",
            "hangup:1"
        ]
    );
    assert!(t.on_timeout(at(t0, 61)).is_empty());
    let fx = effects(t.on_leg_state(1, state(CallPhase::Finish, None), at(t0, 62)));
    assert_eq!(
        names(&fx),
        ["siprec:FINISH", "release:FINISH", "status:FINISH"]
    );
    assert_eq!(
        t.calls["c1"].info.reason.as_deref(),
        Some("transferred to sip:carol@h")
    );
}

#[test]
fn the_answer_to_our_hold_reinvite_pauses_the_bridge_or_stops_the_music() {
    let t0 = Instant::now();
    let mut t = table();
    one_leg(&mut t);
    effects(t.on_leg_state(1, state(CallPhase::Established, Some(200)), at(t0, 0)));
    t.calls.get_mut("c1").unwrap().legs[0].hold.pending = Some(true);
    let fx = t.on_reinvited(1, 200, Some("v=0".into())).unwrap();
    assert_eq!(
        names(&fx),
        ["pause:0:true", "sdp:0", "event:CallHoldSuccessful"]
    );
    assert!(t.calls["c1"].legs[0].hold.ours);
    // A refused unhold keeps the hold (the bridge stays paused).
    t.calls.get_mut("c1").unwrap().legs[0].hold.pending = Some(false);
    let fx = t.on_reinvited(1, 491, None).unwrap();
    assert_eq!(names(&fx), ["pause:0:true", "event:CallUnholdFailed"]);
    // A refused hold stops the music it started.
    t.calls.get_mut("c1").unwrap().legs[0].hold = Default::default();
    t.calls.get_mut("c1").unwrap().legs[0].hold.pending = Some(true);
    let fx = t.on_reinvited(1, 488, None).unwrap();
    assert_eq!(
        names(&fx),
        ["stop-music:0", "pause:0:false", "event:CallHoldFailed"]
    );
    // An answer with no re-INVITE of ours in flight does nothing; another key is not ours.
    assert!(t.on_reinvited(1, 200, None).unwrap().is_empty());
    assert!(t.on_reinvited(77, 200, None).is_none());
}

#[test]
fn the_history_of_ended_calls_is_bounded() {
    let t0 = Instant::now();
    let mut t = table();
    for n in 0..(HISTORY as u64 + 5) {
        let id = format!("c{n}");
        t.calls.insert(
            id.clone(),
            Entry::new(info(&id, "outbound"), n + 1, Leg::Callee, "sip:b@h"),
        );
        t.keys.insert(n + 1, id);
        t.active += 1;
        effects(t.on_leg_state(n + 1, state(CallPhase::Busy, Some(486)), at(t0, n)));
    }
    assert_eq!(t.calls.len(), HISTORY);
    assert_eq!(t.history.len(), HISTORY);
    assert!(!t.calls.contains_key("c0") && t.calls.contains_key("c5"));
    assert_eq!(t.active, 0);
}

#[test]
fn transfer_targets_are_uris_or_numbers_and_nothing_else() {
    assert_eq!(
        transfer_target("1002", "sip:bob@10.0.0.1:5070").unwrap(),
        "sip:1002@10.0.0.1:5070"
    );
    assert_eq!(
        transfer_target("sip:carol@h", "sip:bob@x").unwrap(),
        "sip:carol@h"
    );
    for bad in [
        "<sip:a@b>",
        "sip:a@b\r\nX: y",
        "http://h",
        "a b",
        "\"q\"@h",
        "",
    ] {
        assert!(transfer_target(bad, "sip:bob@x").is_err(), "{bad:?}");
    }
}

#[test]
fn hold_reinvites_each_chosen_leg_once_and_refuses_a_second_while_pending() {
    let t0 = Instant::now();
    let mut t = table();
    two_party(&mut t);
    effects(t.on_leg_state(10, state(CallPhase::Established, Some(200)), at(t0, 0)));
    effects(t.on_leg_state(11, state(CallPhase::Established, Some(200)), at(t0, 1)));
    let fx = t.hold("tp", None, true, true).unwrap();
    let n = names(&fx);
    assert_eq!(
        n.iter().filter(|e| e.starts_with("sip:Reinvite")).count(),
        2,
        "{n:?}"
    );
    assert_eq!(
        n.iter()
            .filter(|e| e.starts_with("event:") || e.starts_with("pause:"))
            .collect::<Vec<_>>(),
        [
            "pause:0:true",
            "event:CallHolding",
            "event:CallHoldStart",
            "pause:1:true",
            "event:CallHoldStart"
        ]
    );
    assert_eq!(n.iter().filter(|e| e.starts_with("start-music")).count(), 2);
    let err = t.hold("tp", Some("caller"), false, false).unwrap_err();
    assert!(matches!(err, RequestError::Conflict(_)), "{err}");
    // A ringing call cannot be held; an unknown leg names the legs.
    let mut r = table();
    one_leg(&mut r);
    assert!(matches!(
        r.hold("c1", None, true, false),
        Err(RequestError::Conflict(_))
    ));
    let err = t
        .hold("tp", Some("bob"), true, false)
        .unwrap_err()
        .to_string();
    assert!(err.contains("caller"), "{err}");
}

#[test]
fn a_transfer_refers_once_per_leg_and_arms_its_timer() {
    let t0 = Instant::now();
    let mut t = table();
    one_leg(&mut t);
    effects(t.on_leg_state(1, state(CallPhase::Established, Some(200)), at(t0, 0)));
    let req = |target| TransferRequest {
        leg: None,
        target,
        replace_call_id: None,
        replace_leg: None,
    };
    let err = t
        .transfer("c1", req(None), at(t0, 1))
        .unwrap_err()
        .to_string();
    assert!(err.contains("target"), "{err}");
    let err = t
        .transfer("c1", req(Some("<sip:x@h>")), at(t0, 1))
        .unwrap_err();
    assert!(matches!(err, RequestError::BadRequest(_)), "{err}");
    let fx = t.transfer("c1", req(Some("1002")), at(t0, 1)).unwrap();
    assert_eq!(names(&fx)[1], "event:Transferring");
    match &fx[0] {
        Effect::Sip(Command::Refer {
            key: 1,
            target: ReferTarget::Uri(u),
        }) => assert_eq!(u, "sip:1002@h"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        t.next_deadline(),
        Some(t0 + Duration::from_secs(1) + TRANSFER)
    );
    let err = t.transfer("c1", req(Some("1003")), at(t0, 2)).unwrap_err();
    assert!(
        matches!(err, RequestError::Conflict(_)),
        "one at a time: {err}"
    );
    // Attended: the other call must exist and be established.
    let err = t
        .transfer(
            "c1",
            TransferRequest {
                replace_call_id: Some("nope"),
                ..req(None)
            },
            at(t0, 2),
        )
        .unwrap_err();
    assert!(matches!(err, RequestError::NotFound(_)), "{err}");
}
