//! The SIP user agent core (sans-IO): outgoing calls as UAC (INVITE with digest retry,
//! CANCEL, ACK, BYE, answer timeout), incoming calls as UAS (100/180, 2xx retransmitted until
//! its ACK, CANCEL → 487, reject), registrations (REGISTER, refresh before expiry,
//! un-REGISTER when the last call of the account ends or on shutdown), and the requests that
//! arrive inside our dialogs (BYE, re-INVITE, UPDATE, OPTIONS, INFO, NOTIFY). It sits on the
//! [`Endpoint`], which owns the transactions.
//!
//! The UA carries signalling only; it decides nothing about media. An incoming call
//! ([`UaEvent::Incoming`]) waits for the call layer's [`Command::Answer`] / `Reject`; a
//! re-offer from the far end ([`UaEvent::RemoteOffer`]) waits for [`Command::AnswerOffer`]
//! (the call layer chooses hold, bridging or exchange answers).
//!
//! Drive contract (the same as the endpoint's): feed `handle_input`, `handle_command` and
//! `handle_timeout(now)`; after each, drain `poll_transmit` and `poll_event`; sleep until
//! `poll_timeout`. The UA never resolves names and never reads the clock: the caller hands it
//! resolved destinations ([`Route`]) and `now`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rsip::prelude::*;

use super::dialog::{
    angle_uri, build_request, build_response, new_branch, Dialog, LocalEnd, RequestSpec,
};
use super::digest::{Challenge, ChallengeKind, ChallengeVerdict, Credentials, DigestSession};
use super::endpoint::{Endpoint, EndpointEvent, EndpointStats, Transmit, Transport};
use super::refer;
use super::sdp::SessionDescription;
use super::session_timer;
use super::timer::TimerQueue;
use super::transaction::{ClientEvent, Timers, TransactionKey};
use crate::ids::random_token;

/// Identifies a call inside the UA (assigned by the caller).
pub type CallKey = u64;

const ALLOW: &str = "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, NOTIFY, UPDATE, REFER";

/// A SIP account. The password never leaves this struct except inside a digest response.
#[derive(Clone)]
pub struct Account {
    pub login: String,
    pub auth_name: String,
    pub password: String,
    pub domain: String,
}

impl std::fmt::Debug for Account {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Account")
            .field("login", &self.login)
            .field("auth_name", &self.auth_name)
            .field("password", &"<hidden>")
            .field("domain", &self.domain)
            .finish()
    }
}

/// Where requests go: resolved by the caller (the UA does no DNS).
#[derive(Debug, Clone, Copy)]
pub struct Route {
    pub transport: Transport,
    /// The outbound proxy or the domain's address.
    pub dest: SocketAddr,
    /// Our address as the peer should see it (Via, Contact).
    pub local: SocketAddr,
    /// Requests inside dialogs keep going to `dest` (an outbound proxy) instead of the
    /// remote target.
    pub sticky: bool,
}

#[derive(Debug, Clone)]
pub struct PlaceCall {
    pub key: CallKey,
    pub account: Account,
    pub callee_uri: String,
    pub register: bool,
    pub route: Route,
    /// Where REGISTER goes when it is not `route.dest` (the domain, when the INVITE follows
    /// the Request-URI elsewhere).
    pub registrar: Option<SocketAddr>,
    /// Our SDP: the INVITE's body unless `body` is set, and the base of our answers to
    /// re-offers.
    pub sdp_offer: String,
    /// A body other than plain SDP (SIPREC's multipart/mixed): (content type, bytes).
    pub body: Option<(String, Vec<u8>)>,
    /// From URI instead of `sip:login@domain`.
    pub from_uri: Option<String>,
    /// To URI instead of the callee URI (the Request-URI stays `callee_uri`).
    pub to_uri: Option<String>,
    /// Parameters appended to our Contact (SIPREC's `;+sip.src`).
    pub contact_params: String,
    /// The dialog's Call-ID, when the caller wants to know it up front; else generated.
    pub sip_call_id: Option<String>,
    pub headers: Vec<(String, String)>,
    /// The API's call id this dialog belongs to: every log line of the dialog carries it
    /// (a `call{call_id=...}` span).
    pub label: String,
}

#[derive(Debug)]
pub enum Command {
    PlaceCall(Box<PlaceCall>),
    /// BYE when established, CANCEL while ringing, nothing (but the end) before sending.
    Hangup(CallKey),
    /// Sends a re-INVITE with a new SDP inside an established call (e.g. SIPREC pause with
    /// `a=inactive`); `UaEvent::Reinvited` follows.
    Reinvite {
        key: CallKey,
        sdp: String,
        /// The whole body instead of `sdp` alone, as (content type, bytes): a SIPREC
        /// metadata update sends the SDP and the new metadata as multipart (RFC 7866 §6.1).
        body: Option<(String, Vec<u8>)>,
    },
    /// Inbound: the API's call id of an incoming call, for its log lines (see
    /// [`PlaceCall::label`]).
    Label {
        key: CallKey,
        call_id: String,
    },
    /// Inbound: 180 Ringing for an incoming call.
    Ring(CallKey),
    /// Inbound: 200 OK with our SDP (the answer, or our offer when the INVITE had none).
    /// `local` is our address as the caller reaches it (Contact). `warning`: what of the
    /// offer was refused (a section answered with port 0), as a Warning header.
    Answer {
        key: CallKey,
        sdp: String,
        local: SocketAddr,
        warning: Option<Warning>,
    },
    /// Inbound: a final non-2xx answer (486 busy, 480, 488 no common codec, 603 decline...),
    /// with a Warning header saying why when there is one.
    Reject {
        key: CallKey,
        status: u16,
        warning: Option<Warning>,
    },
    /// The call layer's reply to [`UaEvent::RemoteOffer`]: `Ok(sdp)` → 200 with that SDP,
    /// `Err(status)` → that status (488 when nothing in the offer is acceptable).
    AnswerOffer {
        key: CallKey,
        result: Result<String, u16>,
    },
    /// An INFO inside an established dialog (e.g. `application/dtmf-relay`). INFOs of one
    /// call go out one at a time, in order: the next after the previous one's final response.
    Info {
        key: CallKey,
        content_type: String,
        body: Vec<u8>,
    },
    /// A REFER inside an established dialog asking the far end to call `target` (blind
    /// transfer), or to call the far end of `replaces` taking over that dialog (attended
    /// transfer, RFC 3891). `UaEvent::ReferAnswered` then `UaEvent::ReferProgress` follow.
    Refer {
        key: CallKey,
        target: ReferTarget,
    },
    /// A NOTIFY (message/sipfrag) on the implicit subscription of a REFER we accepted:
    /// how our call to the Refer-To target goes. A final status ends the subscription.
    NotifyRefer {
        key: CallKey,
        status: u16,
        reason: String,
    },
    /// Hang up every call, un-REGISTER every account; `UaEvent::Idle` follows.
    Shutdown,
}

impl Command {
    /// The call a command is about (none for a new call and for shutdown).
    fn key(&self) -> Option<CallKey> {
        match self {
            Command::PlaceCall(_) | Command::Shutdown => None,
            Command::Hangup(key) | Command::Ring(key) => Some(*key),
            Command::Reinvite { key, .. }
            | Command::Label { key, .. }
            | Command::Answer { key, .. }
            | Command::Reject { key, .. }
            | Command::AnswerOffer { key, .. }
            | Command::Info { key, .. }
            | Command::Refer { key, .. }
            | Command::NotifyRefer { key, .. } => Some(*key),
        }
    }
}

/// The span of one call's log lines.
fn call_span(call_id: &str) -> tracing::Span {
    tracing::info_span!("call", call_id = %call_id)
}

/// Whom a REFER sends the far end to.
#[derive(Debug, Clone)]
pub enum ReferTarget {
    Uri(String),
    /// The far end of another call of ours, replacing our dialog with it.
    Replaces(CallKey),
}

/// An INVITE that opens a new dialog towards the gateway.
#[derive(Debug, Clone)]
pub struct IncomingCall {
    /// Assigned by the UA (the inbound key space, see [`is_inbound_key`]).
    pub key: CallKey,
    pub sip_call_id: String,
    pub request_uri: String,
    /// The user part of the Request-URI (empty when it has none).
    pub user: String,
    pub from_uri: String,
    pub to_uri: String,
    /// The SDP offer; None when the INVITE has no body (we then offer in the 2xx).
    pub sdp: Option<String>,
    /// Headers other than the structural ones, for routing (`X-Call-Id`...).
    pub headers: Vec<(String, String)>,
    pub transport: Transport,
    pub source: SocketAddr,
}

/// Keys of calls the UA created for incoming INVITEs start here; callers pick keys below.
pub const INBOUND_KEY_BASE: CallKey = 1 << 62;

pub fn is_inbound_key(key: CallKey) -> bool {
    key >= INBOUND_KEY_BASE
}

/// WCS's call status set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CallPhase {
    Pending,
    Trying,
    Ring,
    RingMedia,
    SessionProgress,
    Established,
    Hold,
    Busy,
    Failed,
    Finish,
}

impl CallPhase {
    pub fn is_final(self) -> bool {
        matches!(
            self,
            CallPhase::Busy | CallPhase::Failed | CallPhase::Finish
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CallPhase::Pending => "PENDING",
            CallPhase::Trying => "TRYING",
            CallPhase::Ring => "RING",
            CallPhase::RingMedia => "RING_MEDIA",
            CallPhase::SessionProgress => "SESSION_PROGRESS",
            CallPhase::Established => "ESTABLISHED",
            CallPhase::Hold => "HOLD",
            CallPhase::Busy => "BUSY",
            CallPhase::Failed => "FAILED",
            CallPhase::Finish => "FINISH",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegStatus {
    Registered,
    Failed,
    Unregistered,
}

#[derive(Debug)]
pub enum UaEvent {
    /// A call changed phase. `sdp` is the remote SDP when this response carried one.
    CallState {
        key: CallKey,
        phase: CallPhase,
        sip_status: Option<u16>,
        reason: Option<String>,
        sdp: Option<String>,
        sip_call_id: String,
    },
    /// A new call arrived; answer it with `Ring`/`Answer`/`Reject`.
    Incoming(Box<IncomingCall>),
    /// The far end sent an offer inside the dialog (re-INVITE or UPDATE; `sdp` None for a
    /// re-INVITE without body, which asks for our offer). Answer with `AnswerOffer`.
    RemoteOffer { key: CallKey, sdp: Option<String> },
    /// The far end's answer to an offer we made in a 2xx (it came in the ACK).
    RemoteMedia { key: CallKey, sdp: String },
    /// A DTMF digit the far end sent by SIP INFO (`application/dtmf-relay` or
    /// `application/dtmf`).
    Dtmf {
        key: CallKey,
        digit: char,
        duration_ms: Option<u32>,
    },
    /// The final status of one of our INFOs (a failed one does not end the call).
    InfoAnswered { key: CallKey, status: u16 },
    /// The far end's final answer to our REFER (202: it will try; else refused).
    ReferAnswered { key: CallKey, status: u16 },
    /// A NOTIFY on our REFER's subscription: the status line of the transferee's new call
    /// (`100 Trying`, `200 OK`, `486 Busy Here`); `terminated` when the subscription ended.
    ReferProgress {
        key: CallKey,
        status: u16,
        reason: String,
        terminated: bool,
    },
    /// The far end REFERs us (it transfers the gateway): we answered 202; the call layer
    /// places the new call and reports it with [`Command::NotifyRefer`].
    Referred {
        key: CallKey,
        target: String,
        replaces: Option<String>,
        referred_by: Option<String>,
    },
    /// Our re-INVITE was answered (`status` 2xx: accepted, with the answer's SDP) or failed
    /// (the dialog goes on with the previous media).
    Reinvited {
        key: CallKey,
        status: u16,
        sdp: Option<String>,
    },
    Registration {
        login: String,
        domain: String,
        status: RegStatus,
        sip_status: Option<u16>,
    },
    /// After `Shutdown`: no calls and no registrations are left.
    Idle,
}

#[derive(Debug, Clone)]
pub struct UaConfig {
    pub timers: Timers,
    pub user_agent: String,
    pub register_expires: u32,
    pub invite_timeout: Duration,
    /// Incoming INVITEs the call layer has not answered yet; more get 503 + Retry-After.
    pub max_pending_invites: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Inbound: the INVITE arrived, no final response sent yet.
    Incoming,
    /// Waiting for the account's registration.
    WaitRegister,
    /// INVITE sent, no provisional yet.
    Calling,
    /// Provisional received.
    Early,
    Confirmed,
    /// BYE sent.
    Ending,
}

struct Call {
    account: Account,
    reg_key: Option<String>,
    route: Route,
    local: LocalEnd,
    dialog: Dialog,
    /// Request-URI of the INVITE (the callee), kept apart from the To URI.
    request_uri: String,
    sdp_offer: String,
    body: Option<(String, Vec<u8>)>,
    contact_params: String,
    headers: Vec<(String, String)>,
    stage: Stage,
    phase: CallPhase,
    invite: Option<(TransactionKey, rsip::Request)>,
    cancel_wanted: bool,
    cancel_sent: bool,
    ack: Option<Bytes>,
    auth: DigestSession,
    /// Challenges answered for the current request; capped so a server that says
    /// `stale=true` forever cannot loop us.
    auth_rounds: u32,
    deadline: Option<Instant>,
    /// A 2xx we sent to an INVITE, retransmitted until its ACK arrives (§13.3.1.4).
    pending_2xx: Option<Retransmit>,
    hangup_status: Option<u16>,
    /// Inbound: the INVITE's server transaction, until its final response.
    server_invite: Option<(TransactionKey, rsip::Request)>,
    /// A re-INVITE/UPDATE from the far end waiting for the call layer's answer.
    pending_offer: Option<(TransactionKey, rsip::Request, Transport, SocketAddr)>,
    /// A re-INVITE of ours has no final response yet (its transaction's owner stays
    /// longer, for 2xx retransmissions, so it cannot tell).
    reinvite_out: bool,
    /// INFOs waiting to be sent (content type, body), and whether one is in flight.
    info_queue: std::collections::VecDeque<(String, Vec<u8>)>,
    info_in_flight: bool,
    /// The last SDP we sent (offer or answer): a re-INVITE refresh carries it unchanged.
    last_sdp: Option<String>,
    /// RFC 4028: we are the refresher of this session (interval, next refresh, method).
    refresh: Option<SessionRefresh>,
    /// RFC 4028: the peer refreshes this session; without a refresh by `.1` we end it
    /// (`.0`: the interval in seconds).
    expires: Option<(u32, Instant)>,
    /// Why we sent our BYE, when not because the API asked (the call's end reason).
    hangup_reason: Option<String>,
    /// `call{call_id}`: entered while the UA works on this call, so its log lines say
    /// which call they are about.
    span: tracing::Span,
}

#[derive(Debug, Clone, Copy)]
struct SessionRefresh {
    every: Duration,
    next: Instant,
    /// The peer allows UPDATE: refresh without a body; else re-INVITE with `last_sdp`.
    update: bool,
}

impl SessionRefresh {
    /// Refreshes of a `secs` session timer, by UPDATE when the peer's `Allow` (in
    /// `headers`) lists it.
    fn new(now: Instant, secs: u32, headers: &rsip::Headers) -> Self {
        let every = session_timer::refresh_every(secs);
        let update =
            any_header(headers, "Allow", "").is_some_and(|a| session_timer::lists(&a, "UPDATE"));
        Self {
            every,
            next: now + every,
            update,
        }
    }
}

struct Retransmit {
    /// The 2xx of the dialog's first INVITE: no ACK means no dialog (BYE, §13.3.1.4).
    initial: bool,
    cseq: u32,
    data: Bytes,
    dest: SocketAddr,
    next: Instant,
    interval: Duration,
    give_up: Instant,
}

impl Call {
    fn contact(&self) -> String {
        let c = self.local.contact(&self.account.login);
        if self.contact_params.is_empty() {
            c
        } else {
            format!("{c}{}", self.contact_params)
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RegState {
    Registering,
    Registered,
    Unregistering,
    Failed,
}

struct Registration {
    account: Account,
    route: Route,
    local: LocalEnd,
    call_id: String,
    local_tag: String,
    cseq: u32,
    state: RegState,
    auth: DigestSession,
    auth_rounds: u32,
    expires: u32,
    refresh_at: Option<Instant>,
    users: usize,
    waiting: Vec<CallKey>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum TxOwner {
    Invite(CallKey),
    Reinvite(CallKey),
    Cancel(CallKey),
    Bye(CallKey),
    Info(CallKey),
    Refer(CallKey),
    Notify(CallKey),
    Refresh(CallKey),
    Register(u64),
}

impl TxOwner {
    fn call(self) -> Option<CallKey> {
        match self {
            TxOwner::Invite(c)
            | TxOwner::Reinvite(c)
            | TxOwner::Cancel(c)
            | TxOwner::Bye(c)
            | TxOwner::Info(c)
            | TxOwner::Refer(c)
            | TxOwner::Notify(c)
            | TxOwner::Refresh(c) => Some(c),
            TxOwner::Register(_) => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    Call(CallKey),
    Register(u64),
}

pub struct UserAgent {
    cfg: UaConfig,
    endpoint: Endpoint,
    calls: HashMap<CallKey, Call>,
    /// (SIP Call-ID, our tag) → call, for requests inside our dialogs.
    dialogs: HashMap<(String, String), CallKey>,
    registrations: HashMap<u64, Registration>,
    reg_ids: HashMap<String, u64>,
    next_reg: u64,
    next_inbound: CallKey,
    owners: HashMap<TransactionKey, TxOwner>,
    timers: TimerQueue<Timer>,
    events: std::collections::VecDeque<UaEvent>,
    shutting_down: bool,
    /// The call layer is behind ([`UserAgent::set_overloaded`]): new calls get 503.
    overloaded: bool,
    /// The `now` of the latest input, for work scheduled from inside a handler.
    now: Instant,
}

impl UserAgent {
    pub fn new(now: Instant, cfg: UaConfig) -> Self {
        Self {
            now,
            endpoint: Endpoint::new(cfg.timers),
            cfg,
            calls: HashMap::new(),
            dialogs: HashMap::new(),
            registrations: HashMap::new(),
            reg_ids: HashMap::new(),
            next_reg: 1,
            next_inbound: INBOUND_KEY_BASE,
            owners: HashMap::new(),
            timers: TimerQueue::default(),
            events: Default::default(),
            shutting_down: false,
            overloaded: false,
        }
    }

    /// Load shedding, set by the driver while the call layer's event queue is nearly full:
    /// new incoming calls are refused with 503 and `Retry-After` (RFC 3261 §21.5.4) until it
    /// drains; dialogs already set up go on.
    pub fn set_overloaded(&mut self, on: bool) {
        self.overloaded = on;
    }

    pub fn stats(&self) -> EndpointStats {
        self.endpoint.stats()
    }

    pub fn active_calls(&self) -> usize {
        self.calls.len()
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.endpoint.poll_transmit()
    }

    pub fn poll_event(&mut self) -> Option<UaEvent> {
        self.events.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        match (self.endpoint.poll_timeout(), self.timers.next_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub fn handle_input(
        &mut self,
        now: Instant,
        transport: Transport,
        source: SocketAddr,
        data: &[u8],
    ) {
        self.now = now;
        self.endpoint.handle_input(now, transport, source, data);
        self.process(now);
    }

    pub fn handle_transport_error(&mut self, now: Instant, transport: Transport, dest: SocketAddr) {
        self.now = now;
        self.endpoint.handle_transport_error(now, transport, dest);
        self.process(now);
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = now;
        self.endpoint.handle_timeout(now);
        while let Some(t) = self.timers.pop_due(now) {
            match t {
                Timer::Call(key) => {
                    let _span = self.span_of(key).entered();
                    self.call_timer(now, key)
                }
                Timer::Register(id) => self.register_timer(now, id),
            }
        }
        self.process(now);
    }

    /// The span of `key`'s log lines (none for an unknown key).
    fn span_of(&self, key: CallKey) -> tracing::Span {
        self.calls
            .get(&key)
            .map_or_else(tracing::Span::none, |c| c.span.clone())
    }

    pub fn handle_command(&mut self, now: Instant, cmd: Command) {
        self.now = now;
        let _span = cmd.key().map(|k| self.span_of(k).entered());
        match cmd {
            Command::Label { key, call_id } => {
                if let Some(call) = self.calls.get_mut(&key) {
                    call.span = call_span(&call_id);
                }
            }
            Command::PlaceCall(pc) => self.place_call(now, *pc),
            Command::Hangup(key) => self.hangup(now, key, None),
            Command::Reinvite { key, sdp, body } => self.send_reinvite(now, key, sdp, body),
            Command::Ring(key) => self.ring(now, key),
            Command::Answer {
                key,
                sdp,
                local,
                warning,
            } => self.answer(now, key, sdp, local, warning),
            Command::Reject {
                key,
                status,
                warning,
            } => self.reject(now, key, status, warning),
            Command::AnswerOffer { key, result } => self.answer_offer(now, key, result),
            Command::Info {
                key,
                content_type,
                body,
            } => {
                if let Some(call) = self.calls.get_mut(&key) {
                    call.info_queue.push_back((content_type, body));
                    self.send_next_info(now, key);
                }
            }
            Command::Refer { key, target } => self.send_refer(now, key, target),
            Command::NotifyRefer {
                key,
                status,
                reason,
            } => self.send_refer_notify(now, key, status, &reason),
            Command::Shutdown => {
                self.shutting_down = true;
                let keys: Vec<CallKey> = self.calls.keys().copied().collect();
                for key in keys {
                    self.hangup(now, key, None);
                }
                let ids: Vec<u64> = self.registrations.keys().copied().collect();
                for id in ids {
                    self.unregister(now, id);
                }
                self.check_idle();
            }
        }
        self.process(now);
    }

    /// Handles the endpoint's events until none is left.
    fn process(&mut self, now: Instant) {
        while let Some(ev) = self.endpoint.poll_event() {
            match ev {
                EndpointEvent::Client { key, event } => {
                    // An INVITE transaction that got a 2xx lives on (RFC 6026 Accepted) to
                    // pass up retransmissions of that 2xx: its owner stays until the call
                    // ends. Other transactions are done at their final response.
                    let owner = self.owners.get(&key).copied();
                    let keep = match &event {
                        ClientEvent::Provisional(_) | ClientEvent::Retransmitted2xx(_) => true,
                        ClientEvent::Final(r) => {
                            matches!(owner, Some(TxOwner::Invite(_) | TxOwner::Reinvite(_)))
                                && r.status_code.code() / 100 == 2
                        }
                        ClientEvent::Timeout | ClientEvent::TransportError => false,
                    };
                    if !keep {
                        self.owners.remove(&key);
                    }
                    let _span = owner
                        .and_then(TxOwner::call)
                        .map(|c| self.span_of(c).entered());
                    match owner {
                        Some(TxOwner::Invite(c)) => self.on_invite_event(now, c, event),
                        Some(TxOwner::Reinvite(c)) => self.on_reinvite_event(c, event),
                        Some(TxOwner::Cancel(c)) => self.on_cancel_event(c, event),
                        Some(TxOwner::Bye(c)) => self.on_bye_event(c, event),
                        Some(TxOwner::Info(c)) => self.on_info_event(now, c, event),
                        Some(TxOwner::Refer(c)) => self.on_refer_event(c, event),
                        Some(TxOwner::Notify(_)) => {}
                        Some(TxOwner::Refresh(c)) => self.on_refresh_event(c, event),
                        Some(TxOwner::Register(r)) => self.on_register_event(now, r, event),
                        None => {}
                    }
                }
                EndpointEvent::Request {
                    key,
                    request,
                    transport,
                    source,
                } => self.on_request(now, key, request, transport, source),
                EndpointEvent::Ack { request, .. } => self.on_ack(&request),
            }
        }
    }

    // ---- outgoing calls ----

    fn place_call(&mut self, now: Instant, pc: PlaceCall) {
        let span = call_span(&pc.label);
        let _span = span.clone().entered();
        let local = LocalEnd {
            transport: pc.route.transport,
            addr: pc.route.local,
            user_agent: self.cfg.user_agent.clone(),
        };
        let local_tag = random_token(10);
        let from_uri = pc
            .from_uri
            .clone()
            .unwrap_or_else(|| format!("sip:{}@{}", pc.account.login, pc.account.domain));
        let to_uri = pc.to_uri.clone().unwrap_or_else(|| pc.callee_uri.clone());
        let dialog = Dialog {
            call_id: pc
                .sip_call_id
                .clone()
                .unwrap_or_else(|| new_call_id(pc.route.local.ip())),
            local: format!("<{from_uri}>;tag={local_tag}"),
            local_tag,
            remote_tag: None,
            remote: format!("<{to_uri}>"),
            remote_uri: to_uri,
            remote_target: pc.callee_uri.clone(),
            route_set: Vec::new(),
            local_cseq: 0,
        };
        let credentials =
            Credentials::new(pc.account.auth_name.clone(), pc.account.password.clone());
        let mut call = Call {
            account: pc.account.clone(),
            reg_key: None,
            route: pc.route,
            local,
            dialog,
            request_uri: pc.callee_uri.clone(),
            sdp_offer: pc.sdp_offer,
            body: pc.body,
            contact_params: pc.contact_params,
            headers: pc.headers,
            stage: Stage::WaitRegister,
            phase: CallPhase::Pending,
            invite: None,
            cancel_wanted: false,
            cancel_sent: false,
            ack: None,
            auth: DigestSession::new(credentials),
            auth_rounds: 0,
            deadline: Some(now + self.cfg.invite_timeout),
            pending_2xx: None,
            hangup_status: None,
            server_invite: None,
            pending_offer: None,
            reinvite_out: false,
            info_queue: Default::default(),
            last_sdp: None,
            refresh: None,
            expires: None,
            hangup_reason: None,
            info_in_flight: false,
            span: span.clone(),
        };
        self.timers
            .push(now + self.cfg.invite_timeout, Timer::Call(pc.key));
        tracing::info!(call = pc.key, sip_call_id = %call.dialog.call_id, callee = %pc.callee_uri, "placing call");
        if pc.register {
            let reg_route = Route {
                dest: pc.registrar.unwrap_or(pc.route.dest),
                ..pc.route
            };
            let reg_key = format!(
                "{}@{}|{:?}|{}",
                pc.account.login, pc.account.domain, reg_route.transport, reg_route.dest
            );
            call.reg_key = Some(reg_key.clone());
            let id = match self.reg_ids.get(&reg_key) {
                Some(id) => *id,
                None => {
                    let id = self.next_reg;
                    self.next_reg += 1;
                    self.reg_ids.insert(reg_key, id);
                    let creds =
                        Credentials::new(pc.account.auth_name.clone(), pc.account.password.clone());
                    self.registrations.insert(
                        id,
                        Registration {
                            account: pc.account.clone(),
                            route: reg_route,
                            local: call.local.clone(),
                            call_id: format!("{}@{}", random_token(20), pc.route.local.ip()),
                            local_tag: random_token(10),
                            cseq: 0,
                            state: RegState::Failed,
                            auth: DigestSession::new(creds),
                            auth_rounds: 0,
                            expires: self.cfg.register_expires,
                            refresh_at: None,
                            users: 0,
                            waiting: Vec::new(),
                        },
                    );
                    id
                }
            };
            let key = pc.key;
            self.calls.insert(key, call);
            let Some(reg) = self.registrations.get_mut(&id) else {
                return;
            };
            reg.users += 1;
            match reg.state {
                RegState::Registered => self.send_invite(now, key),
                RegState::Registering => reg.waiting.push(key),
                RegState::Failed | RegState::Unregistering => {
                    reg.waiting.push(key);
                    self.send_register(now, id, self.cfg.register_expires);
                }
            }
        } else {
            let key = pc.key;
            self.calls.insert(key, call);
            self.send_invite(now, key);
        }
    }

    fn send_invite(&mut self, now: Instant, key: CallKey) {
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        call.dialog.local_cseq += 1;
        let branch = new_branch();
        let contact = call.contact();
        let mut extra = call.headers.clone();
        extra.push(("Allow".into(), ALLOW.into()));
        extra.push(("Supported".into(), "timer".into()));
        extra.extend(auth_headers(&mut call.auth, "INVITE", &call.request_uri));
        let body = match &call.body {
            Some((ct, bytes)) => (ct.as_str(), bytes.clone()),
            None => {
                call.last_sdp = Some(call.sdp_offer.clone());
                ("application/sdp", call.sdp_offer.clone().into_bytes())
            }
        };
        let req = build_request(RequestSpec {
            method: rsip::Method::Invite,
            uri: &call.request_uri,
            local: &call.local,
            branch: &branch,
            from: &call.dialog.local,
            to: &call.dialog.remote,
            call_id: &call.dialog.call_id,
            cseq: call.dialog.local_cseq,
            contact: Some(&contact),
            routes: &[],
            extra: &extra,
            body: Some(body),
        });
        let req = match req {
            Ok(r) => r,
            Err(e) => {
                self.end_call(key, CallPhase::Failed, None, Some(e.to_string()));
                return;
            }
        };
        let (transport, dest) = (call.route.transport, call.route.dest);
        match self
            .endpoint
            .send_request(now, req.clone(), transport, dest)
        {
            Ok(tx) => {
                self.owners.insert(tx.clone(), TxOwner::Invite(key));
                if let Some(call) = self.calls.get_mut(&key) {
                    call.invite = Some((tx, req));
                    call.stage = Stage::Calling;
                    if call.dialog.local_cseq == 1 || call.phase == CallPhase::Pending {
                        self.set_phase(key, CallPhase::Trying, None, None, None);
                    }
                }
            }
            Err(e) => self.end_call(key, CallPhase::Failed, None, Some(e.to_string())),
        }
    }

    fn on_invite_event(&mut self, now: Instant, key: CallKey, event: ClientEvent) {
        match event {
            ClientEvent::Provisional(resp) => {
                let code = resp.status_code.code();
                let sdp = sdp_body(&resp);
                let Some(call) = self.calls.get_mut(&key) else {
                    return;
                };
                if call.stage == Stage::Calling {
                    call.stage = Stage::Early;
                }
                if code > 100 {
                    call.dialog.update_from_response(&resp);
                }
                if call.cancel_wanted && !call.cancel_sent {
                    self.send_cancel(now, key);
                }
                let phase = match (code, sdp.is_some()) {
                    (100, _) => CallPhase::Trying,
                    (183, _) => CallPhase::SessionProgress,
                    (_, true) => CallPhase::RingMedia,
                    (_, false) => CallPhase::Ring,
                };
                self.set_phase(key, phase, Some(code), None, sdp);
            }
            ClientEvent::Final(resp) => {
                let code = resp.status_code.code();
                if (200..300).contains(&code) {
                    self.on_invite_2xx(now, key, &resp);
                } else if code == 401 || code == 407 {
                    self.on_invite_challenge(now, key, &resp);
                } else {
                    let phase = match code {
                        486 | 600 => CallPhase::Busy,
                        487 if self.calls.get(&key).is_some_and(|c| c.cancel_sent) => {
                            CallPhase::Finish
                        }
                        _ => CallPhase::Failed,
                    };
                    let reason = Some(reason_phrase(&resp));
                    let hangup = self.calls.get(&key).and_then(|c| c.hangup_status);
                    let reason = match hangup {
                        Some(408) => Some("no answer within sip_invite_timeout_s".into()),
                        _ => reason,
                    };
                    let phase = if hangup == Some(408) {
                        CallPhase::Failed
                    } else {
                        phase
                    };
                    self.end_call(key, phase, Some(hangup.unwrap_or(code)), reason);
                }
            }
            ClientEvent::Retransmitted2xx(_) => {
                // Our ACK was lost: send it again (RFC 3261 §13.2.2.4).
                if let Some(call) = self.calls.get(&key) {
                    if let Some(ack) = call.ack.clone() {
                        let (t, d) = in_dialog_dest(call);
                        self.endpoint.send_stateless(ack, t, d);
                    }
                }
            }
            ClientEvent::Timeout => self.end_call(
                key,
                CallPhase::Failed,
                Some(408),
                Some("no response to INVITE (timer B)".into()),
            ),
            ClientEvent::TransportError => self.end_call(
                key,
                CallPhase::Failed,
                Some(503),
                Some("transport error sending INVITE".into()),
            ),
        }
    }

    fn on_invite_challenge(&mut self, now: Instant, key: CallKey, resp: &rsip::Response) {
        let code = resp.status_code.code();
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        call.auth_rounds += 1;
        match challenge(&mut call.auth, resp, call.auth_rounds) {
            Verdict::Retry if !call.cancel_wanted => {
                tracing::info!(
                    call = key,
                    code,
                    "INVITE challenged; retrying with credentials"
                );
                self.send_invite(now, key);
            }
            Verdict::Retry => {
                self.end_call(key, CallPhase::Finish, Some(code), Some("cancelled".into()))
            }
            Verdict::WrongCredentials => self.end_call(
                key,
                CallPhase::Failed,
                Some(code),
                Some("authentication failed: credentials rejected".into()),
            ),
            Verdict::Unsupported(why) => self.end_call(
                key,
                CallPhase::Failed,
                Some(code),
                Some(format!("authentication failed: {why}")),
            ),
        }
    }

    fn on_invite_2xx(&mut self, now: Instant, key: CallKey, resp: &rsip::Response) {
        let code = resp.status_code.code();
        let sdp = sdp_body(resp);
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        call.dialog.update_from_response(resp);
        let ack = match ack_for(call) {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(call = key, error = %e, "2xx remote target unusable");
                self.end_call(key, CallPhase::Failed, Some(code), Some(e.to_string()));
                return;
            }
        };
        call.ack = Some(ack.clone());
        call.stage = Stage::Confirmed;
        call.deadline = None;
        // RFC 4028: the 2xx names us (the UAC) as the refresher.
        let timer = any_header(&resp.headers, "Session-Expires", "x")
            .as_deref()
            .and_then(session_timer::parse);
        if let Some((secs, Some(session_timer::Refresher::Uac))) = timer {
            let r = SessionRefresh::new(now, secs, &resp.headers);
            call.refresh = Some(r);
            self.timers.push(r.next, Timer::Call(key));
            tracing::info!(
                call = key,
                secs,
                update = r.update,
                "session timer: we refresh"
            );
        } else if let Some((secs, Some(session_timer::Refresher::Uas))) = timer {
            let at = now + session_timer::expire_after(secs);
            call.expires = Some((secs, at));
            self.timers.push(at, Timer::Call(key));
            tracing::info!(call = key, secs, "session timer: the peer refreshes");
        }
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        let dialog_id = (call.dialog.call_id.clone(), call.dialog.local_tag.clone());
        let (t, d) = in_dialog_dest(call);
        self.endpoint.send_stateless(ack, t, d);
        self.dialogs.insert(dialog_id, key);
        let cancel = self.calls.get(&key).is_some_and(|c| c.cancel_wanted);
        self.set_phase(key, CallPhase::Established, Some(code), None, sdp);
        if cancel {
            // Hung up while the 2xx was on its way: the call exists now, so end it with BYE.
            self.send_bye(now, key);
        }
    }

    fn send_reinvite(
        &mut self,
        now: Instant,
        key: CallKey,
        sdp: String,
        body: Option<(String, Vec<u8>)>,
    ) {
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        // RFC 3261 §14.1: no new INVITE while one of ours or the peer's is in progress.
        if call.stage != Stage::Confirmed || call.pending_offer.is_some() || call.reinvite_out {
            self.events.push_back(UaEvent::Reinvited {
                key,
                status: 491,
                sdp: None,
            });
            return;
        }
        call.sdp_offer = sdp.clone();
        call.last_sdp = Some(sdp.clone());
        call.dialog.local_cseq += 1;
        let contact = call.contact();
        let body = body.unwrap_or_else(|| ("application/sdp".into(), sdp.into_bytes()));
        let req = in_dialog_request(
            call,
            rsip::Method::Invite,
            Some(&contact),
            &call.headers,
            Some((body.0.as_str(), body.1)),
        );
        let sent = self.send_in_dialog(now, key, req, TxOwner::Reinvite(key));
        match sent {
            Ok(()) => {
                if let Some(call) = self.calls.get_mut(&key) {
                    call.reinvite_out = true;
                }
            }
            Err(e) => {
                tracing::warn!(call = key, error = %e, "re-INVITE not sent");
                self.events.push_back(UaEvent::Reinvited {
                    key,
                    status: 500,
                    sdp: None,
                });
            }
        }
    }

    fn on_reinvite_event(&mut self, key: CallKey, event: ClientEvent) {
        let (status, sdp) = match &event {
            ClientEvent::Provisional(_) => return,
            ClientEvent::Final(r) | ClientEvent::Retransmitted2xx(r) => {
                (r.status_code.code(), sdp_body(r))
            }
            ClientEvent::Timeout => (408, None),
            ClientEvent::TransportError => (503, None),
        };
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        if !matches!(event, ClientEvent::Retransmitted2xx(_)) {
            call.reinvite_out = false;
        }
        if (200..300).contains(&status) {
            // The 2xx of a re-INVITE is ACKed like the first one, with the re-INVITE's CSeq.
            if let Ok(ack) = ack_for(call) {
                call.ack = Some(ack.clone());
                let (t, d) = in_dialog_dest(call);
                self.endpoint.send_stateless(ack, t, d);
            }
            if matches!(event, ClientEvent::Retransmitted2xx(_)) {
                return;
            }
        } else if status == 408 || status == 481 {
            // RFC 3261 §14.1: the dialog is gone.
            tracing::info!(
                call = key,
                status,
                "re-INVITE says the dialog is gone; hanging up"
            );
            self.events
                .push_back(UaEvent::Reinvited { key, status, sdp });
            self.end_call(
                key,
                CallPhase::Finish,
                Some(status),
                Some(format!("re-INVITE answered {status}")),
            );
            return;
        }
        self.events
            .push_back(UaEvent::Reinvited { key, status, sdp });
    }

    fn hangup(&mut self, now: Instant, key: CallKey, status: Option<u16>) {
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        call.hangup_status = status;
        match call.stage {
            Stage::Incoming => {
                // Not answered yet: a final response ends it (480 when nobody answered in time).
                let code = match status {
                    Some(408) => 480,
                    Some(c) if c >= 400 => c,
                    _ => 603,
                };
                self.respond_invite(now, key, code, vec![], None);
                let (phase, reason) = if status == Some(408) {
                    (
                        CallPhase::Failed,
                        "not answered within sip_invite_timeout_s",
                    )
                } else {
                    (CallPhase::Finish, "rejected by the gateway before answer")
                };
                self.end_call(key, phase, Some(code), Some(reason.into()));
            }
            Stage::WaitRegister => self.end_call(
                key,
                CallPhase::Finish,
                None,
                Some("terminated before the INVITE was sent".into()),
            ),
            Stage::Calling => {
                // CANCEL may only follow a provisional (RFC 3261 §9.1); it goes out when one
                // arrives. If none does, timer B ends the call.
                call.cancel_wanted = true;
            }
            Stage::Early => {
                call.cancel_wanted = true;
                if !call.cancel_sent {
                    self.send_cancel(now, key);
                }
            }
            Stage::Confirmed => self.send_bye(now, key),
            Stage::Ending => {}
        }
    }

    fn send_cancel(&mut self, now: Instant, key: CallKey) {
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        let Some((_, invite)) = &call.invite else {
            return;
        };
        // CANCEL copies the INVITE's Request-URI, top Via (same branch), Call-ID, From, To,
        // Route and CSeq number (RFC 3261 §9.1).
        let mut headers = rsip::Headers::default();
        for h in invite.headers.iter() {
            match h {
                rsip::Header::Via(_)
                | rsip::Header::From(_)
                | rsip::Header::To(_)
                | rsip::Header::CallId(_)
                | rsip::Header::Route(_)
                | rsip::Header::MaxForwards(_) => headers.push(h.clone()),
                _ => {}
            }
        }
        headers.push(rsip::headers::CSeq::new(format!("{} CANCEL", call.dialog.local_cseq)).into());
        headers.push(rsip::headers::UserAgent::new(call.local.user_agent.clone()).into());
        headers.push(rsip::headers::ContentLength::new("0").into());
        let cancel = rsip::Request {
            method: rsip::Method::Cancel,
            uri: invite.uri.clone(),
            version: rsip::Version::V2,
            headers,
            body: Vec::new(),
        };
        call.cancel_sent = true;
        let (t, d) = (call.route.transport, call.route.dest);
        tracing::info!(call = key, "sending CANCEL");
        match self.endpoint.send_request(now, cancel, t, d) {
            Ok(tx) => {
                self.owners.insert(tx, TxOwner::Cancel(key));
            }
            Err(e) => tracing::warn!(call = key, error = %e, "CANCEL not sent"),
        }
    }

    fn on_cancel_event(&mut self, key: CallKey, event: ClientEvent) {
        if let ClientEvent::Final(resp) = event {
            tracing::debug!(
                call = key,
                status = resp.status_code.code(),
                "CANCEL answered"
            );
        }
    }

    fn send_bye(&mut self, now: Instant, key: CallKey) {
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        call.stage = Stage::Ending;
        call.dialog.local_cseq += 1;
        let bye = in_dialog_request(call, rsip::Method::Bye, None, &[], None);
        tracing::info!(call = key, "sending BYE");
        let sent = self.send_in_dialog(now, key, bye, TxOwner::Bye(key));
        match sent {
            Ok(()) => {}
            Err(e) => self.end_call(
                key,
                CallPhase::Finish,
                None,
                Some(format!("BYE not sent: {e}")),
            ),
        }
    }

    /// Sends a request built inside `key`'s dialog as a client transaction owned by `owner`.
    fn send_in_dialog(
        &mut self,
        now: Instant,
        key: CallKey,
        req: Result<rsip::Request, super::dialog::UriError>,
        owner: TxOwner,
    ) -> Result<(), String> {
        let call = self.calls.get(&key).ok_or("the call has ended")?;
        let (t, d) = in_dialog_dest(call);
        let req = req.map_err(|e| e.to_string())?;
        let tx = self
            .endpoint
            .send_request(now, req, t, d)
            .map_err(|e| e.to_string())?;
        self.owners.insert(tx, owner);
        Ok(())
    }

    fn send_next_info(&mut self, now: Instant, key: CallKey) {
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        if call.info_in_flight || call.stage != Stage::Confirmed {
            return;
        }
        let Some((ct, body)) = call.info_queue.pop_front() else {
            return;
        };
        call.dialog.local_cseq += 1;
        let req = in_dialog_request(call, rsip::Method::Info, None, &[], Some((&ct, body)));
        let sent = self.send_in_dialog(now, key, req, TxOwner::Info(key));
        match sent {
            Ok(()) => {
                if let Some(call) = self.calls.get_mut(&key) {
                    call.info_in_flight = true;
                }
            }
            Err(e) => {
                tracing::warn!(call = key, error = %e, "INFO not sent");
                self.events
                    .push_back(UaEvent::InfoAnswered { key, status: 500 });
            }
        }
    }

    fn on_info_event(&mut self, now: Instant, key: CallKey, event: ClientEvent) {
        let status = match &event {
            ClientEvent::Final(r) => r.status_code.code(),
            ClientEvent::Timeout => 408,
            ClientEvent::TransportError => 503,
            _ => return,
        };
        if let Some(call) = self.calls.get_mut(&key) {
            call.info_in_flight = false;
        }
        self.events.push_back(UaEvent::InfoAnswered { key, status });
        if status == 481 || status == 408 {
            // RFC 3261 §12.2.1.2: the dialog is gone.
            self.end_call(
                key,
                CallPhase::Finish,
                Some(status),
                Some(format!("INFO answered {status}")),
            );
            return;
        }
        self.send_next_info(now, key);
    }

    /// A session-timer refresh (RFC 4028 §7.4): UPDATE without a body, or a re-INVITE with
    /// our last SDP unchanged (its answer changes nothing at the call layer).
    fn send_refresh(&mut self, now: Instant, key: CallKey, update: bool) {
        if update {
            let Some(call) = self.calls.get_mut(&key) else {
                return;
            };
            call.dialog.local_cseq += 1;
            let contact = call.contact();
            let req = in_dialog_request(call, rsip::Method::Update, Some(&contact), &[], None);
            tracing::debug!(call = key, "session refresh (UPDATE)");
            if let Err(e) = self.send_in_dialog(now, key, req, TxOwner::Refresh(key)) {
                tracing::warn!(call = key, error = %e, "session refresh not sent");
            }
        } else if let Some(sdp) = self.calls.get(&key).and_then(|c| c.last_sdp.clone()) {
            tracing::debug!(call = key, "session refresh (re-INVITE)");
            self.send_reinvite(now, key, sdp, None);
        }
    }

    fn on_refresh_event(&mut self, key: CallKey, event: ClientEvent) {
        let status = match &event {
            ClientEvent::Final(r) => r.status_code.code(),
            ClientEvent::Timeout => 408,
            ClientEvent::TransportError => 503,
            _ => return,
        };
        if status == 481 || status == 408 {
            // RFC 4028 §10 / RFC 3261 §12.2.1.2: the session is gone.
            self.end_call(
                key,
                CallPhase::Finish,
                Some(status),
                Some(format!("session refresh answered {status}")),
            );
        } else if !(200..300).contains(&status) {
            tracing::warn!(call = key, status, "session refresh refused");
        }
    }

    fn send_refer(&mut self, now: Instant, key: CallKey, target: ReferTarget) {
        let value = match &target {
            ReferTarget::Uri(uri) => Ok(refer::refer_to_value(uri, None)),
            ReferTarget::Replaces(other) => match self.calls.get(other) {
                Some(o) if o.stage == Stage::Confirmed => {
                    let d = &o.dialog;
                    Ok(refer::refer_to_value(
                        &d.remote_target,
                        Some(&refer::ReplacedDialog {
                            call_id: &d.call_id,
                            to_tag: d.remote_tag.as_deref().unwrap_or(""),
                            from_tag: &d.local_tag,
                        }),
                    ))
                }
                _ => Err("the call to join has ended or is not established"),
            },
        };
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        let value = match value {
            Ok(v) if call.stage == Stage::Confirmed => v,
            Ok(_) => {
                self.events
                    .push_back(UaEvent::ReferAnswered { key, status: 481 });
                return;
            }
            Err(e) => {
                tracing::info!(call = key, error = e, "REFER not sent");
                self.events
                    .push_back(UaEvent::ReferAnswered { key, status: 481 });
                return;
            }
        };
        call.dialog.local_cseq += 1;
        let referred_by = format!(
            "<{}>",
            call.local
                .contact(&call.account.login)
                .trim_matches(|c| c == '<' || c == '>')
        );
        let contact = call.contact();
        let extra = vec![
            ("Refer-To".to_string(), value.clone()),
            ("Referred-By".to_string(), referred_by),
        ];
        let req = in_dialog_request(call, rsip::Method::Refer, Some(&contact), &extra, None);
        tracing::info!(call = key, refer_to = %value, "sending REFER");
        if let Err(e) = self.send_in_dialog(now, key, req, TxOwner::Refer(key)) {
            tracing::warn!(call = key, error = %e, "REFER not sent");
            self.events
                .push_back(UaEvent::ReferAnswered { key, status: 500 });
        }
    }

    fn on_refer_event(&mut self, key: CallKey, event: ClientEvent) {
        let status = match &event {
            ClientEvent::Final(r) => r.status_code.code(),
            ClientEvent::Timeout => 408,
            ClientEvent::TransportError => 503,
            _ => return,
        };
        tracing::info!(call = key, status, "REFER answered");
        self.events
            .push_back(UaEvent::ReferAnswered { key, status });
    }

    fn send_refer_notify(&mut self, now: Instant, key: CallKey, status: u16, reason: &str) {
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        if !matches!(call.stage, Stage::Confirmed) {
            return;
        }
        call.dialog.local_cseq += 1;
        let contact = call.contact();
        let extra = refer::notify_headers(status >= 200);
        let body = refer::sipfrag_body(status, reason);
        let req = in_dialog_request(
            call,
            rsip::Method::Notify,
            Some(&contact),
            &extra,
            Some((refer::SIPFRAG, body)),
        );
        if let Err(e) = self.send_in_dialog(now, key, req, TxOwner::Notify(key)) {
            tracing::warn!(call = key, error = %e, "NOTIFY not sent");
        }
    }

    fn on_bye_event(&mut self, key: CallKey, event: ClientEvent) {
        let (status, reason) = match &event {
            ClientEvent::Final(resp) => {
                (Some(resp.status_code.code()), "hung up by API".to_string())
            }
            ClientEvent::Timeout => (Some(408), "hung up by API; BYE unanswered".to_string()),
            ClientEvent::TransportError => {
                (Some(503), "hung up by API; BYE not delivered".to_string())
            }
            _ => return,
        };
        let call = self.calls.get(&key);
        let status = call.and_then(|c| c.hangup_status).or(status);
        let reason = match call.and_then(|c| c.hangup_reason.clone()) {
            Some(why) => format!(
                "{why}{}",
                reason.strip_prefix("hung up by API").unwrap_or("")
            ),
            None => reason,
        };
        self.end_call(key, CallPhase::Finish, status, Some(reason));
    }

    fn call_timer(&mut self, now: Instant, key: CallKey) {
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        if let Some(p) = &mut call.pending_2xx {
            if now >= p.give_up {
                let initial = p.initial;
                call.pending_2xx = None;
                if initial {
                    // §13.3.1.4: no ACK for the 2xx of the first INVITE: end the dialog.
                    tracing::warn!(call = key, "no ACK for our 2xx; hanging up");
                    call.hangup_status = Some(408);
                    call.hangup_reason = Some("no ACK for our 2xx".into());
                    self.send_bye(now, key);
                    return;
                }
                tracing::warn!(call = key, "no ACK for our 2xx to a re-INVITE");
            } else if now >= p.next {
                let (data, dest) = (p.data.clone(), p.dest);
                p.interval = (p.interval * 2).min(self.cfg.timers.t2);
                p.next = now + p.interval;
                let next = p.next;
                let t = call.route.transport;
                self.endpoint.send_stateless(data, t, dest);
                self.timers.push(next, Timer::Call(key));
            }
        }
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        if let Some((secs, _)) = call
            .expires
            .filter(|(_, at)| now >= *at && call.stage == Stage::Confirmed)
        {
            // RFC 4028 §10: the refresher stopped refreshing; the session is over.
            tracing::warn!(
                call = key,
                secs,
                "session timer expired: no refresh from the peer"
            );
            call.expires = None;
            call.hangup_reason = Some(format!(
                "session expired: no refresh within the {secs} s session timer (RFC 4028)"
            ));
            self.send_bye(now, key);
            return;
        }
        if let Some(r) = call
            .refresh
            .filter(|r| now >= r.next && call.stage == Stage::Confirmed)
        {
            let next = now + r.every;
            call.refresh = Some(SessionRefresh { next, ..r });
            self.timers.push(next, Timer::Call(key));
            self.send_refresh(now, key, r.update);
        }
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        if call.deadline.is_some_and(|d| now >= d)
            && matches!(
                call.stage,
                Stage::Calling | Stage::Early | Stage::WaitRegister | Stage::Incoming
            )
        {
            call.deadline = None;
            tracing::info!(call = key, "no answer in time; cancelling");
            self.hangup(now, key, Some(408));
            if let Some(call) = self.calls.get(&key) {
                if call.stage == Stage::WaitRegister {
                    self.end_call(
                        key,
                        CallPhase::Failed,
                        Some(408),
                        Some("registration did not complete in time".into()),
                    );
                }
            }
        }
    }

    fn set_phase(
        &mut self,
        key: CallKey,
        phase: CallPhase,
        sip_status: Option<u16>,
        reason: Option<String>,
        sdp: Option<String>,
    ) {
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        if call.phase == phase && sdp.is_none() {
            return;
        }
        call.phase = phase;
        self.events.push_back(UaEvent::CallState {
            key,
            phase,
            sip_status,
            reason,
            sdp,
            sip_call_id: call.dialog.call_id.clone(),
        });
    }

    fn end_call(
        &mut self,
        key: CallKey,
        phase: CallPhase,
        sip_status: Option<u16>,
        reason: Option<String>,
    ) {
        let Some(call) = self.calls.remove(&key) else {
            return;
        };
        tracing::info!(
            call = key,
            status = phase.as_str(),
            sip_status,
            reason = reason.as_deref().unwrap_or(""),
            "call ended"
        );
        self.dialogs
            .remove(&(call.dialog.call_id.clone(), call.dialog.local_tag.clone()));
        self.owners.retain(|_, o| o.call() != Some(key));
        self.events.push_back(UaEvent::CallState {
            key,
            phase,
            sip_status,
            reason,
            sdp: None,
            sip_call_id: call.dialog.call_id.clone(),
        });
        if let Some(id) = call
            .reg_key
            .as_ref()
            .and_then(|k| self.reg_ids.get(k))
            .copied()
        {
            if let Some(reg) = self.registrations.get_mut(&id) {
                reg.users = reg.users.saturating_sub(1);
                reg.waiting.retain(|c| *c != key);
                if reg.users == 0 {
                    self.unregister_later(id);
                }
            }
        }
        self.check_idle();
    }

    /// Un-REGISTER is sent from the next timer pass, outside the borrow of the ended call.
    fn unregister_later(&mut self, id: u64) {
        self.timers.push(self.now, Timer::Register(id));
    }

    // ---- registrations ----

    fn send_register(&mut self, now: Instant, id: u64, expires: u32) {
        let Some(reg) = self.registrations.get_mut(&id) else {
            return;
        };
        reg.cseq += 1;
        reg.state = if expires == 0 {
            RegState::Unregistering
        } else {
            RegState::Registering
        };
        let aor = format!("sip:{}@{}", reg.account.login, reg.account.domain);
        let ruri = format!("sip:{}", reg.account.domain);
        let mut extra = vec![("Expires".to_string(), expires.to_string())];
        extra.extend(auth_headers(&mut reg.auth, "REGISTER", &ruri));
        let contact = reg.local.contact(&reg.account.login);
        let req = build_request(RequestSpec {
            method: rsip::Method::Register,
            uri: &ruri,
            local: &reg.local,
            branch: &new_branch(),
            from: &format!("<{aor}>;tag={}", reg.local_tag),
            to: &format!("<{aor}>"),
            call_id: &reg.call_id,
            cseq: reg.cseq,
            contact: Some(&contact),
            routes: &[],
            extra: &extra,
            body: None,
        });
        let (t, d) = (reg.route.transport, reg.route.dest);
        tracing::info!(account = %aor, expires, "sending REGISTER");
        let sent = req.map_err(|e| e.to_string()).and_then(|r| {
            self.endpoint
                .send_request(now, r, t, d)
                .map_err(|e| e.to_string())
        });
        match sent {
            Ok(tx) => {
                self.owners.insert(tx, TxOwner::Register(id));
            }
            Err(e) => self.registration_failed(id, None, format!("REGISTER not sent: {e}")),
        }
    }

    fn on_register_event(&mut self, now: Instant, id: u64, event: ClientEvent) {
        let resp = match event {
            ClientEvent::Final(resp) => resp,
            ClientEvent::Timeout => {
                return self.registration_failed(id, Some(408), "REGISTER timed out".into())
            }
            ClientEvent::TransportError => {
                return self.registration_failed(id, Some(503), "REGISTER transport error".into())
            }
            _ => return,
        };
        let code = resp.status_code.code();
        let Some(reg) = self.registrations.get_mut(&id) else {
            return;
        };
        let unregistering = reg.state == RegState::Unregistering;
        if code == 401 || code == 407 {
            reg.auth_rounds += 1;
            match challenge(&mut reg.auth, &resp, reg.auth_rounds) {
                Verdict::Retry => {
                    let expires = if unregistering { 0 } else { reg.expires };
                    return self.send_register(now, id, expires);
                }
                Verdict::WrongCredentials => {
                    return self.registration_failed(
                        id,
                        Some(code),
                        "REGISTER: credentials rejected".into(),
                    )
                }
                Verdict::Unsupported(why) => {
                    return self.registration_failed(id, Some(code), format!("REGISTER: {why}"))
                }
            }
        }
        if code == 423 && !unregistering {
            if let Some(min) =
                header_other(&resp.headers, "Min-Expires").and_then(|v| v.trim().parse().ok())
            {
                reg.expires = min;
                return self.send_register(now, id, min);
            }
        }
        if !(200..300).contains(&code) {
            if unregistering {
                return self.remove_registration(id, Some(code));
            }
            return self.registration_failed(
                id,
                Some(code),
                format!("REGISTER rejected: {}", reason_phrase(&resp)),
            );
        }
        if unregistering {
            return self.remove_registration(id, Some(code));
        }
        let granted =
            granted_expires(&resp, &reg.local.contact(&reg.account.login)).unwrap_or(reg.expires);
        reg.state = RegState::Registered;
        reg.auth_rounds = 0;
        // Refresh at 80 % of the granted time, at least 5 s ahead of expiry.
        let lead = (granted as u64 / 5).max(5).min(granted as u64);
        let at = now + Duration::from_secs(granted as u64 - lead);
        reg.refresh_at = Some(at);
        self.timers.push(at, Timer::Register(id));
        let waiting = std::mem::take(&mut reg.waiting);
        let (login, domain) = (reg.account.login.clone(), reg.account.domain.clone());
        tracing::info!(account = %login, domain = %domain, granted, "registered");
        self.events.push_back(UaEvent::Registration {
            login,
            domain,
            status: RegStatus::Registered,
            sip_status: Some(code),
        });
        for key in waiting {
            self.send_invite(now, key);
        }
    }

    fn registration_failed(&mut self, id: u64, code: Option<u16>, reason: String) {
        let Some(reg) = self.registrations.get_mut(&id) else {
            return;
        };
        reg.state = RegState::Failed;
        reg.refresh_at = None;
        let waiting = std::mem::take(&mut reg.waiting);
        let (login, domain) = (reg.account.login.clone(), reg.account.domain.clone());
        tracing::warn!(account = %login, domain = %domain, ?code, %reason, "registration failed");
        self.events.push_back(UaEvent::Registration {
            login,
            domain,
            status: RegStatus::Failed,
            sip_status: code,
        });
        for key in waiting {
            self.end_call(key, CallPhase::Failed, code, Some(reason.clone()));
        }
        if self.registrations.get(&id).is_some_and(|r| r.users == 0) {
            self.drop_registration(id);
        }
    }

    fn unregister(&mut self, now: Instant, id: u64) {
        let Some(reg) = self.registrations.get(&id) else {
            return;
        };
        match reg.state {
            RegState::Registered => self.send_register(now, id, 0),
            RegState::Unregistering => {}
            RegState::Registering | RegState::Failed => self.drop_registration(id),
        }
    }

    fn remove_registration(&mut self, id: u64, code: Option<u16>) {
        if let Some(reg) = self.registrations.get(&id) {
            if reg.users > 0 && !self.shutting_down {
                // A call arrived while the un-REGISTER was in flight: register again.
                let expires = reg.expires;
                return self.send_register(self.now, id, expires);
            }
            self.events.push_back(UaEvent::Registration {
                login: reg.account.login.clone(),
                domain: reg.account.domain.clone(),
                status: RegStatus::Unregistered,
                sip_status: code,
            });
        }
        self.drop_registration(id);
    }

    fn drop_registration(&mut self, id: u64) {
        if let Some(reg) = self.registrations.remove(&id) {
            self.reg_ids.retain(|_, v| *v != id);
            tracing::info!(account = %reg.account.login, domain = %reg.account.domain, "registration removed");
        }
        self.check_idle();
    }

    fn register_timer(&mut self, now: Instant, id: u64) {
        let Some(reg) = self.registrations.get(&id) else {
            return;
        };
        if reg.users == 0 && reg.state == RegState::Registered {
            return self.send_register(now, id, 0);
        }
        if reg.state == RegState::Registered && reg.refresh_at.is_some_and(|t| now >= t) {
            let expires = reg.expires;
            self.send_register(now, id, expires);
        }
    }

    fn check_idle(&mut self) {
        if self.shutting_down && self.calls.is_empty() && self.registrations.is_empty() {
            self.events.push_back(UaEvent::Idle);
        }
    }

    // ---- incoming requests ----

    fn on_request(
        &mut self,
        now: Instant,
        key: TransactionKey,
        req: rsip::Request,
        transport: Transport,
        source: SocketAddr,
    ) {
        let to_tag = to_tag(&req);
        let dialog_call = dialog_id(&req)
            .and_then(|id| self.dialogs.get(&id))
            .copied();
        let _span = dialog_call.map(|c| self.span_of(c).entered());
        let method = req.method;
        if method != rsip::Method::Cancel {
            let tag = || to_tag.is_none().then(|| random_token(8));
            if matches!(req.uri.scheme, Some(rsip::Scheme::Other(_))) {
                // RFC 3261 §8.2.2.1; RFC 4475 §3.3.3 (novelsc): we only serve sip: and sips:.
                let resp = build_response(&req, 416, tag().as_deref(), vec![], None);
                let _ = self.endpoint.respond(now, &key, resp);
                return;
            }
            if let Some(unsupported) = unsupported_required(&req.headers) {
                // RFC 3261 §8.2.2.3: any request but CANCEL (and ACK, which is not answered).
                let h = rsip::Header::Other("Unsupported".into(), unsupported);
                let resp = build_response(&req, 420, tag().as_deref(), vec![h], None);
                let _ = self.endpoint.respond(now, &key, resp);
                return;
            }
        }
        let response = match (method, dialog_call) {
            (rsip::Method::Cancel, _) => return self.on_cancel(now, key, req),
            (rsip::Method::Options, None) if to_tag.is_none() => build_response(
                &req,
                200,
                Some(&random_token(8)),
                vec![
                    rsip::Header::Allow(rsip::headers::Allow::new(ALLOW)),
                    accept_sdp(),
                ],
                None,
            ),
            (rsip::Method::Invite, None) if to_tag.is_none() => {
                return self.on_incoming_invite(now, key, req, transport, source);
            }
            (
                rsip::Method::Register
                | rsip::Method::Subscribe
                | rsip::Method::Publish
                | rsip::Method::Message,
                None,
            ) if to_tag.is_none() => build_response(
                &req,
                405,
                Some(&random_token(8)),
                vec![rsip::Header::Allow(rsip::headers::Allow::new(ALLOW))],
                None,
            ),
            (_, None) => build_response(&req, 481, Some(&random_token(8)), vec![], None),
            (rsip::Method::Bye, Some(c)) => {
                let resp = build_response(&req, 200, None, vec![], None);
                let _ = self.endpoint.respond(now, &key, resp);
                if let Some(call) = self.calls.get_mut(&c) {
                    call.pending_2xx = None;
                }
                tracing::info!(call = c, "BYE from the far end");
                self.end_call(
                    c,
                    CallPhase::Finish,
                    Some(200),
                    Some("hung up by the far end".into()),
                );
                return;
            }
            (rsip::Method::Invite | rsip::Method::Update, Some(c)) => {
                return self.on_remote_offer(now, key, c, req, transport, source);
            }
            (rsip::Method::Info, Some(c)) => {
                if let Some((digit, duration_ms)) = dtmf_info(&req) {
                    tracing::info!(call = c, %digit, "DTMF by INFO");
                    self.events.push_back(UaEvent::Dtmf {
                        key: c,
                        digit,
                        duration_ms,
                    });
                }
                build_response(&req, 200, None, vec![], None)
            }
            (rsip::Method::Notify, Some(c)) => {
                let event = any_header(&req.headers, "Event", "o").unwrap_or_default();
                let package = event.split(';').next().unwrap_or("").trim();
                if package.eq_ignore_ascii_case("refer") {
                    match refer::sipfrag_status(&req.body) {
                        Some((status, reason)) => {
                            let terminated = any_header(&req.headers, "Subscription-State", "")
                                .is_some_and(|v| {
                                    v.trim().to_ascii_lowercase().starts_with("terminated")
                                });
                            tracing::info!(
                                call = c,
                                status,
                                terminated,
                                "transfer progress (NOTIFY)"
                            );
                            self.events.push_back(UaEvent::ReferProgress {
                                key: c,
                                status,
                                reason,
                                terminated,
                            });
                            build_response(&req, 200, None, vec![], None)
                        }
                        None => build_response(&req, 400, None, vec![], None),
                    }
                } else {
                    build_response(&req, 200, None, vec![], None)
                }
            }
            (rsip::Method::Refer, Some(c)) => {
                let confirmed = self
                    .calls
                    .get(&c)
                    .is_some_and(|call| call.stage == Stage::Confirmed);
                let refer_to = any_header(&req.headers, "Refer-To", "r");
                match refer_to.as_deref().map(refer::parse_refer_to) {
                    _ if !confirmed => build_response(&req, 481, None, vec![], None),
                    None => {
                        build_response(&req, 400, None, vec![warning("no Refer-To header")], None)
                    }
                    Some(Err(e)) => {
                        tracing::info!(call = c, error = %e, "REFER refused");
                        build_response(&req, 400, None, vec![warning(&e)], None)
                    }
                    Some(Ok(to)) => {
                        tracing::info!(call = c, target = %to.uri, "REFER from the far end");
                        self.events.push_back(UaEvent::Referred {
                            key: c,
                            target: to.uri,
                            replaces: to.replaces,
                            referred_by: any_header(&req.headers, "Referred-By", "b"),
                        });
                        build_response(&req, 202, None, vec![], None)
                    }
                }
            }
            (rsip::Method::Options | rsip::Method::Message, Some(_)) => {
                build_response(&req, 200, None, vec![], None)
            }
            (_, Some(_)) => build_response(
                &req,
                405,
                None,
                vec![rsip::Header::Allow(rsip::headers::Allow::new(ALLOW))],
                None,
            ),
        };
        if let Err(e) = self.endpoint.respond(now, &key, response) {
            tracing::debug!(error = %e, "response not sent");
        }
    }

    /// A re-INVITE or UPDATE from the far end: held until the call layer answers it
    /// ([`Command::AnswerOffer`]). A second offer while one is open gets 500 with
    /// Retry-After, an INVITE crossing our own re-INVITE 491 (RFC 3261 §14.2).
    fn on_remote_offer(
        &mut self,
        now: Instant,
        key: TransactionKey,
        c: CallKey,
        req: rsip::Request,
        transport: Transport,
        source: SocketAddr,
    ) {
        let offer = sdp_text(&req.body);
        let Some(call) = self.calls.get_mut(&c) else {
            return;
        };
        if let Some((secs, _)) = call.expires.filter(|_| call.stage == Stage::Confirmed) {
            // The peer's refresh (RFC 4028 §10), perhaps with a new interval.
            let secs = any_header(&req.headers, "Session-Expires", "x")
                .as_deref()
                .and_then(session_timer::parse)
                .map_or(secs, |(s, _)| s);
            let at = now + session_timer::expire_after(secs);
            call.expires = Some((secs, at));
            self.timers.push(at, Timer::Call(c));
        }
        let ours_in_flight = call.reinvite_out;
        let refuse = if call.pending_offer.is_some() || call.stage != Stage::Confirmed {
            Some((
                500,
                vec![rsip::Header::Other("Retry-After".into(), "1".into())],
            ))
        } else if ours_in_flight && req.method == rsip::Method::Invite {
            Some((491, vec![]))
        } else if let Some(Err(e)) = offer.as_deref().map(SessionDescription::parse) {
            tracing::info!(call = c, error = %e, "re-offer with unreadable SDP");
            Some((488, vec![]))
        } else {
            None
        };
        if let Some((code, extra)) = refuse {
            let resp = build_response(&req, code, None, extra, None);
            let _ = self.endpoint.respond(now, &key, resp);
            return;
        }
        if req.method == rsip::Method::Update && offer.is_none() {
            // An UPDATE without SDP (a session-timer refresh, RFC 4028) changes no media,
            // and its 200 must not carry an offer.
            let contact = rsip::headers::Contact::new(call.contact()).into();
            let resp = build_response(&req, 200, None, vec![contact], None);
            let _ = self.endpoint.respond(now, &key, resp);
            return;
        }
        call.pending_offer = Some((key, req, transport, source));
        self.events
            .push_back(UaEvent::RemoteOffer { key: c, sdp: offer });
    }

    /// Sends the call layer's answer to the pending re-offer.
    fn answer_offer(&mut self, now: Instant, c: CallKey, result: Result<String, u16>) {
        let Some(call) = self.calls.get_mut(&c) else {
            return;
        };
        let Some((key, req, transport, source)) = call.pending_offer.take() else {
            tracing::debug!(call = c, "answer without a pending offer ignored");
            return;
        };
        let answer = match result {
            Ok(sdp) => {
                call.last_sdp = Some(sdp.clone());
                sdp
            }
            Err(code) => {
                let resp = build_response(&req, code, None, vec![], None);
                let _ = self.endpoint.respond(now, &key, resp);
                return;
            }
        };
        let contact = rsip::headers::Contact::new(call.contact()).into();
        let resp = build_response(
            &req,
            200,
            None,
            vec![contact],
            Some(("application/sdp", answer.into_bytes())),
        );
        if req.method == rsip::Method::Invite && !transport.is_reliable() {
            let interval = self.cfg.timers.t1;
            call.pending_2xx = Some(Retransmit {
                initial: false,
                cseq: cseq_of(&req),
                data: super::message::response_bytes(&resp),
                dest: source,
                next: now + interval,
                interval,
                give_up: now + self.cfg.timers.t1 * 64,
            });
            self.timers.push(now + interval, Timer::Call(c));
        }
        let _ = self.endpoint.respond(now, &key, resp);
    }

    // ---- incoming calls (UAS) ----

    /// A dialog-creating INVITE: 100 Trying at once, then the call layer decides.
    fn on_incoming_invite(
        &mut self,
        now: Instant,
        key: TransactionKey,
        req: rsip::Request,
        transport: Transport,
        source: SocketAddr,
    ) {
        let refuse = |ua: &mut Self, code: u16, extra: Vec<rsip::Header>| {
            let resp = build_response(&req, code, Some(&random_token(8)), extra, None);
            let _ = ua.endpoint.respond(now, &key, resp);
        };
        if self.shutting_down {
            return refuse(self, 503, vec![]);
        }
        let pending = self
            .calls
            .values()
            .filter(|c| c.stage == Stage::Incoming)
            .count();
        if self.overloaded || pending >= self.cfg.max_pending_invites {
            tracing::debug!(%source, pending, overloaded = self.overloaded, "incoming INVITE shed with 503");
            let retry = rsip::Header::Other("Retry-After".into(), "5".into());
            return refuse(self, 503, vec![retry]);
        }
        if !req.body.is_empty() && !is_sdp(&req.headers) {
            return refuse(self, 415, vec![accept_sdp()]);
        }
        // RFC 3261 §21.4.7: our answer carries SDP, which the Accept list must allow (RFC 4475
        // §3.3.15 sdp01).
        if !accepts_sdp(&req.headers) {
            return refuse(self, 406, vec![warning("SDP is not in Accept")]);
        }
        let local_tag = random_token(10);
        let Some(dialog) = Dialog::from_request(&req, local_tag) else {
            return refuse(self, 400, vec![]);
        };
        let uri = req.uri.to_string();
        let user = req
            .uri
            .auth
            .as_ref()
            .map(|a| a.user.clone())
            .unwrap_or_default();
        let host = req.uri.host_with_port.host.to_string();
        let trying = build_response(&req, 100, None, vec![], None);
        let _ = self.endpoint.respond(now, &key, trying);
        let c = self.next_inbound;
        self.next_inbound += 1;
        let incoming = IncomingCall {
            key: c,
            sip_call_id: dialog.call_id.clone(),
            request_uri: uri.clone(),
            user: user.clone(),
            from_uri: dialog.remote_uri.clone(),
            to_uri: req
                .to_header()
                .ok()
                .and_then(|h| angle_uri(h.value()))
                .unwrap_or_default(),
            sdp: sdp_text(&req.body),
            headers: req
                .headers
                .iter()
                .filter_map(|h| match h {
                    rsip::Header::Other(n, v) => Some((n.clone(), v.clone())),
                    _ => None,
                })
                .collect(),
            transport,
            source,
        };
        let route = Route {
            transport,
            dest: source,
            local: SocketAddr::new(std::net::Ipv4Addr::UNSPECIFIED.into(), 0),
            sticky: false,
        };
        let call = Call {
            account: Account {
                login: user,
                auth_name: String::new(),
                password: String::new(),
                domain: host,
            },
            reg_key: None,
            route,
            local: LocalEnd {
                transport,
                addr: route.local,
                user_agent: self.cfg.user_agent.clone(),
            },
            dialog,
            request_uri: uri,
            sdp_offer: String::new(),
            body: None,
            contact_params: String::new(),
            headers: Vec::new(),
            stage: Stage::Incoming,
            phase: CallPhase::Pending,
            invite: None,
            cancel_wanted: false,
            cancel_sent: false,
            ack: None,
            auth: DigestSession::new(Credentials::new(String::new(), String::new())),
            auth_rounds: 0,
            deadline: Some(now + self.cfg.invite_timeout),
            pending_2xx: None,
            hangup_status: None,
            server_invite: Some((key, req)),
            pending_offer: None,
            reinvite_out: false,
            info_queue: Default::default(),
            last_sdp: None,
            refresh: None,
            expires: None,
            hangup_reason: None,
            info_in_flight: false,
            // The API's call id is the SIP Call-ID unless the call layer names another
            // (Command::Label).
            span: call_span(&incoming.sip_call_id),
        };
        let _span = call.span.clone().entered();
        tracing::info!(call = c, sip_call_id = %call.dialog.call_id, from = %incoming.from_uri, to = %incoming.request_uri, "incoming call");
        self.timers
            .push(now + self.cfg.invite_timeout, Timer::Call(c));
        self.calls.insert(c, call);
        self.events.push_back(UaEvent::Incoming(Box::new(incoming)));
    }

    /// A response to the pending incoming INVITE, with our tag (no-op once it is final).
    fn respond_invite(
        &mut self,
        now: Instant,
        c: CallKey,
        code: u16,
        extra: Vec<rsip::Header>,
        body: Option<(&str, Vec<u8>)>,
    ) -> Option<rsip::Response> {
        let call = self.calls.get_mut(&c)?;
        let (key, req) = call.server_invite.as_ref()?;
        let resp = build_response(req, code, Some(&call.dialog.local_tag), extra, body);
        let key = key.clone();
        if code >= 200 {
            call.server_invite = None;
        }
        if let Err(e) = self.endpoint.respond(now, &key, resp.clone()) {
            tracing::debug!(call = c, code, error = %e, "response to the INVITE not sent");
        }
        Some(resp)
    }

    fn ring(&mut self, now: Instant, c: CallKey) {
        if self
            .calls
            .get(&c)
            .is_none_or(|call| call.stage != Stage::Incoming)
        {
            return;
        }
        self.respond_invite(now, c, 180, vec![], None);
        self.set_phase(c, CallPhase::Ring, Some(180), None, None);
    }

    fn answer(
        &mut self,
        now: Instant,
        c: CallKey,
        sdp: String,
        local: SocketAddr,
        warning: Option<Warning>,
    ) {
        let Some(call) = self.calls.get_mut(&c) else {
            return;
        };
        if call.stage != Stage::Incoming {
            return;
        }
        call.route.local = local;
        call.local.addr = local;
        call.last_sdp = Some(sdp.clone());
        let contact = rsip::headers::Contact::new(call.contact()).into();
        let allow = rsip::Header::Allow(rsip::headers::Allow::new(ALLOW));
        // RFC 4028 §9: a caller that asks for a session timer gets it in our 2xx, with its
        // refresher (the caller when it named none); when that is us, we refresh.
        let mut timer_headers = Vec::new();
        if let Some((_, req)) = &call.server_invite {
            let asked = any_header(&req.headers, "Session-Expires", "x")
                .as_deref()
                .and_then(session_timer::parse);
            let supported = any_header(&req.headers, "Supported", "k")
                .is_some_and(|v| session_timer::lists(&v, "timer"));
            if let (Some((secs, refresher)), true) = (asked, supported) {
                let (value, who) = session_timer::answer_value(secs, refresher);
                timer_headers.push(rsip::Header::Other("Session-Expires".into(), value));
                timer_headers.push(rsip::Header::Other("Require".into(), "timer".into()));
                if who == session_timer::Refresher::Uas {
                    let r = SessionRefresh::new(now, secs, &req.headers);
                    call.refresh = Some(r);
                    self.timers.push(r.next, Timer::Call(c));
                } else {
                    let at = now + session_timer::expire_after(secs);
                    call.expires = Some((secs, at));
                    self.timers.push(at, Timer::Call(c));
                }
            }
        }
        let Some(call) = self.calls.get_mut(&c) else {
            return;
        };
        let cseq = call
            .server_invite
            .as_ref()
            .map(|(_, r)| cseq_of(r))
            .unwrap_or(0);
        let Some(resp) = self.respond_invite(
            now,
            c,
            200,
            [
                vec![contact, allow],
                timer_headers,
                warning.iter().map(Warning::header).collect(),
            ]
            .concat(),
            Some(("application/sdp", sdp.into_bytes())),
        ) else {
            return;
        };
        let Some(call) = self.calls.get_mut(&c) else {
            return;
        };
        call.stage = Stage::Confirmed;
        call.deadline = None;
        if !call.route.transport.is_reliable() {
            let interval = self.cfg.timers.t1;
            call.pending_2xx = Some(Retransmit {
                initial: true,
                cseq,
                data: super::message::response_bytes(&resp),
                dest: call.route.dest,
                next: now + interval,
                interval,
                give_up: now + self.cfg.timers.t1 * 64,
            });
            self.timers.push(now + interval, Timer::Call(c));
        }
        self.dialogs.insert(
            (call.dialog.call_id.clone(), call.dialog.local_tag.clone()),
            c,
        );
        tracing::info!(call = c, "incoming call answered");
        self.set_phase(c, CallPhase::Established, Some(200), None, None);
    }

    fn reject(&mut self, now: Instant, c: CallKey, status: u16, warning: Option<Warning>) {
        if self
            .calls
            .get(&c)
            .is_none_or(|call| call.stage != Stage::Incoming)
        {
            return;
        }
        let status = if (300..700).contains(&status) {
            status
        } else {
            500
        };
        let extra = warning.iter().map(Warning::header).collect();
        self.respond_invite(now, c, status, extra, None);
        let phase = match status {
            486 | 600 => CallPhase::Busy,
            _ => CallPhase::Failed,
        };
        let reason = format!(
            "rejected with {}",
            super::message::status_line(&rsip::StatusCode::from(status))
        );
        self.end_call(c, phase, Some(status), Some(reason));
    }

    /// CANCEL (§9.2): 200 to the CANCEL and 487 to the INVITE when it is still pending;
    /// 481 when no INVITE transaction matches.
    fn on_cancel(&mut self, now: Instant, key: TransactionKey, req: rsip::Request) {
        let invite_key = key.with_method("INVITE");
        let call = self.calls.iter().find_map(|(c, call)| {
            call.server_invite
                .as_ref()
                .filter(|(k, _)| *k == invite_key)
                .map(|_| *c)
        });
        let code = if call.is_some() || self.endpoint.has_server(&invite_key) {
            200
        } else {
            481
        };
        let resp = build_response(&req, code, None, vec![], None);
        let _ = self.endpoint.respond(now, &key, resp);
        if let Some(c) = call {
            let _span = self.span_of(c).entered();
            tracing::info!(call = c, "CANCEL from the caller");
            self.respond_invite(now, c, 487, vec![], None);
            self.end_call(
                c,
                CallPhase::Finish,
                Some(487),
                Some("cancelled by the caller".into()),
            );
        }
    }

    fn on_ack(&mut self, req: &rsip::Request) {
        let cseq = req
            .cseq_header()
            .ok()
            .and_then(|h| h.typed().ok())
            .map(|c| c.seq);
        if let Some(c) = dialog_id(req).and_then(|id| self.dialogs.get(&id)).copied() {
            if let Some(call) = self.calls.get_mut(&c) {
                if call.pending_2xx.as_ref().map(|p| p.cseq) == cseq {
                    call.pending_2xx = None;
                    // The answer to an offer we made in the 2xx comes in the ACK.
                    if let Some(sdp) = sdp_text(&req.body) {
                        self.events.push_back(UaEvent::RemoteMedia { key: c, sdp });
                    }
                }
            }
        }
    }
}

/// A request inside the call's dialog (RFC 3261 §12.2.1.1): to the remote target through
/// the route set, with the dialog's tags and Call-ID, CSeq `local_cseq`, and a fresh branch.
fn in_dialog_request(
    call: &Call,
    method: rsip::Method,
    contact: Option<&str>,
    extra: &[(String, String)],
    body: Option<(&str, Vec<u8>)>,
) -> Result<rsip::Request, super::dialog::UriError> {
    let (uri, routes) = call.dialog.target_and_routes();
    build_request(RequestSpec {
        method,
        uri: &uri,
        local: &call.local,
        branch: &new_branch(),
        from: &call.dialog.local,
        to: &call.dialog.remote,
        call_id: &call.dialog.call_id,
        cseq: call.dialog.local_cseq,
        contact,
        routes: &routes,
        extra,
        body,
    })
}

/// The ACK of a 2xx (RFC 3261 §13.2.2.4), with the CSeq number of the INVITE it
/// acknowledges (the dialog's latest).
fn ack_for(call: &Call) -> Result<Bytes, super::dialog::UriError> {
    let ack = in_dialog_request(call, rsip::Method::Ack, None, &[], None)?;
    Ok(super::message::request_bytes(&ack))
}

/// Where requests inside the call's dialog go: the outbound proxy when it is sticky, else
/// the first route or remote target when it is an IP literal, else the original destination.
fn in_dialog_dest(call: &Call) -> (Transport, SocketAddr) {
    let dest = if call.route.sticky {
        call.route.dest
    } else {
        // A hop of the other address family than the one the call's signalling uses (an
        // IPv6 Contact reached us over IPv4) is not one our socket can send to.
        call.dialog
            .next_hop()
            .filter(|hop| hop.is_ipv4() == call.route.dest.is_ipv4())
            .unwrap_or(call.route.dest)
    };
    (call.route.transport, dest)
}

/// Challenges answered per request before giving up.
const MAX_AUTH_ROUNDS: u32 = 3;

enum Verdict {
    Retry,
    WrongCredentials,
    Unsupported(String),
}

/// Feeds every challenge of a 401/407 to the account's digest session.
fn challenge(auth: &mut DigestSession, resp: &rsip::Response, rounds: u32) -> Verdict {
    if rounds > MAX_AUTH_ROUNDS {
        return Verdict::WrongCredentials;
    }
    let proxy = resp.status_code.code() == 407;
    let values: Vec<&str> = resp
        .headers
        .iter()
        .filter_map(|h| match h {
            rsip::Header::WwwAuthenticate(v) if !proxy => Some(v.value()),
            rsip::Header::ProxyAuthenticate(v) if proxy => Some(v.value()),
            _ => None,
        })
        .collect();
    let kind = if proxy {
        ChallengeKind::Proxy
    } else {
        ChallengeKind::Www
    };
    let mut verdict = Verdict::Unsupported("no digest challenge in the response".into());
    // RFC 8760 §2.4: of several challenges for one realm (SHA-256 and MD5, say), the
    // topmost one we support is answered.
    let mut answered_realms: Vec<String> = Vec::new();
    for value in values {
        match Challenge::parse(value) {
            Ok(ch) if answered_realms.contains(&ch.realm) => {}
            Ok(ch) => {
                answered_realms.push(ch.realm.clone());
                match auth.on_challenge(kind, ch) {
                    ChallengeVerdict::WrongCredentials => return Verdict::WrongCredentials,
                    ChallengeVerdict::Retry => verdict = Verdict::Retry,
                }
            }
            Err(e) => {
                if !matches!(verdict, Verdict::Retry) {
                    verdict = Verdict::Unsupported(e.to_string());
                }
            }
        }
    }
    verdict
}

/// The Authorization/Proxy-Authorization headers for a request (none before a challenge).
fn auth_headers(auth: &mut DigestSession, method: &str, uri: &str) -> Vec<(String, String)> {
    match auth.authorizations(method, uri, &random_token(16)) {
        Ok(headers) => headers
            .into_iter()
            .map(|h| (h.name().to_string(), h.value))
            .collect(),
        Err(e) => {
            tracing::warn!(error = %e, "digest answer not computed");
            Vec::new()
        }
    }
}

/// A fresh Call-ID: 20 random characters at our address.
pub fn new_call_id(local: std::net::IpAddr) -> String {
    format!("{}@{}", random_token(20), local)
}

fn to_tag(req: &rsip::Request) -> Option<String> {
    // As text: rsip's typed To fails on a URI with an IPv6 reference (RFC 5118).
    super::message::tag_param(req.to_header().ok()?.value())
}

/// The key of the dialog a request belongs to: (Call-ID, our tag = its To tag).
fn dialog_id(req: &rsip::Request) -> Option<(String, String)> {
    let call_id = req.call_id_header().ok()?.value().to_string();
    Some((call_id, to_tag(req)?))
}

fn accept_sdp() -> rsip::Header {
    rsip::Header::Accept(rsip::headers::Accept::new("application/sdp"))
}

fn reason_phrase(resp: &rsip::Response) -> String {
    super::message::status_line(&resp.status_code)
}

/// A Warning header (RFC 3261 §20.43) to send with a response: its warn-code (3xx: 301
/// "incompatible network address formats", 304 media type, 305 media format, 399 anything
/// else) and a text saying what, for the person reading the trace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    pub code: u16,
    pub text: String,
}

impl Warning {
    pub fn new(code: u16, text: impl Into<String>) -> Self {
        Self {
            code,
            text: text.into(),
        }
    }

    /// `Warning: <code> sipstream "<text>"`, the text bounded and without quotes or controls.
    pub fn header(&self) -> rsip::Header {
        let clean: String = self
            .text
            .chars()
            .map(|c| if c == '"' || c.is_control() { '\'' } else { c })
            .take(200)
            .collect();
        let code = if (300..400).contains(&self.code) {
            self.code
        } else {
            399
        };
        rsip::Header::Other("Warning".into(), format!("{code} sipstream \"{clean}\""))
    }
}

/// `Warning: 399 sipstream "<text>"` (RFC 3261 §20.43): why a request was refused.
fn warning(text: &str) -> rsip::Header {
    Warning::new(399, text).header()
}

/// A header by name (or compact form) whatever rsip made of it: typed headers are read back
/// from their text form. For rare requests (REFER, NOTIFY), not per-packet paths.
fn any_header(headers: &rsip::Headers, name: &str, compact: &str) -> Option<String> {
    headers.iter().find_map(|h| {
        let text = h.to_string();
        let (n, v) = text.split_once(':')?;
        let n = n.trim();
        (n.eq_ignore_ascii_case(name) || (!compact.is_empty() && n.eq_ignore_ascii_case(compact)))
            .then(|| v.trim().to_string())
    })
}

fn header_other<'a>(headers: &'a rsip::Headers, name: &str) -> Option<&'a str> {
    headers.iter().find_map(|h| match h {
        rsip::Header::Other(n, v) if n.eq_ignore_ascii_case(name) => Some(v.as_str()),
        rsip::Header::MinExpires(v) if name.eq_ignore_ascii_case("Min-Expires") => Some(v.value()),
        _ => None,
    })
}

fn sdp_text(body: &[u8]) -> Option<String> {
    if body.is_empty() {
        return None;
    }
    std::str::from_utf8(body).ok().map(str::to_string)
}

fn sdp_body(resp: &rsip::Response) -> Option<String> {
    let is_sdp = resp.headers.iter().any(|h| match h {
        rsip::Header::ContentType(ct) => {
            ct.value().to_ascii_lowercase().contains("application/sdp")
        }
        _ => false,
    });
    if is_sdp {
        sdp_text(&resp.body)
    } else {
        None
    }
}

/// The expiry the registrar granted: our Contact's `expires` param, else the Expires header.
fn granted_expires(resp: &rsip::Response, _our_contact: &str) -> Option<u32> {
    let from_contact = resp.headers.iter().find_map(|h| match h {
        rsip::Header::Contact(c) => c
            .value()
            .split(';')
            .find_map(|p| p.trim().strip_prefix("expires="))
            .and_then(|v| v.trim().parse().ok()),
        _ => None,
    });
    from_contact.or_else(|| {
        resp.headers.iter().find_map(|h| match h {
            rsip::Header::Expires(e) => e.value().trim().parse().ok(),
            _ => None,
        })
    })
}

/// The digit of a DTMF INFO: `application/dtmf-relay` (`Signal=5`, `Duration=160`) or
/// `application/dtmf` (the digit alone). None for other INFOs.
pub fn dtmf_info(req: &rsip::Request) -> Option<(char, Option<u32>)> {
    let ct = req.headers.iter().find_map(|h| match h {
        rsip::Header::ContentType(ct) => Some(ct.value().to_ascii_lowercase()),
        _ => None,
    })?;
    let body = std::str::from_utf8(&req.body).ok()?;
    let valid = |c: char| c.is_ascii_digit() || "*#ABCDabcd".contains(c);
    if ct.starts_with("application/dtmf-relay") {
        let mut digit = None;
        let mut duration = None;
        for line in body.lines() {
            let Some((k, v)) = line.split_once('=') else {
                continue;
            };
            match k.trim().to_ascii_lowercase().as_str() {
                "signal" => {
                    let v = v.trim();
                    digit = match v {
                        "10" => Some('*'),
                        "11" => Some('#'),
                        _ => v.chars().next().filter(|c| v.len() == 1 && valid(*c)),
                    };
                }
                "duration" => duration = v.trim().parse().ok(),
                _ => {}
            }
        }
        return digit.map(|d| (d.to_ascii_uppercase(), duration));
    }
    if ct.starts_with("application/dtmf") {
        let v = body.trim();
        let d = v.chars().next().filter(|c| v.len() == 1 && valid(*c))?;
        return Some((d.to_ascii_uppercase(), None));
    }
    None
}

fn cseq_of(req: &rsip::Request) -> u32 {
    req.cseq_header()
        .ok()
        .and_then(|h| h.typed().ok())
        .map(|c| c.seq)
        .unwrap_or(0)
}

fn is_sdp(headers: &rsip::Headers) -> bool {
    headers.iter().any(|h| match h {
        rsip::Header::ContentType(ct) => {
            ct.value().to_ascii_lowercase().contains("application/sdp")
        }
        _ => false,
    })
}

/// The option tags of `Require` we do not support, comma-joined, or `None`. Session timers
/// (RFC 4028) need nothing of ours: the peer refreshes, we answer.
fn unsupported_required(headers: &rsip::Headers) -> Option<String> {
    let unsupported: Vec<&str> = header_values(headers, "Require")
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty() && !t.eq_ignore_ascii_case("timer"))
        .collect();
    (!unsupported.is_empty()).then(|| unsupported.join(", "))
}

/// Whether the request's Accept (when it has one) lets us answer with SDP. An empty Accept
/// accepts nothing (RFC 3261 §20.1).
fn accepts_sdp(headers: &rsip::Headers) -> bool {
    let mut lists = headers
        .iter()
        .filter_map(|h| match h {
            rsip::Header::Accept(a) => Some(a.value().to_ascii_lowercase()),
            _ => None,
        })
        .peekable();
    if lists.peek().is_none() {
        return true;
    }
    lists.any(|v| {
        v.split(',').any(|range| {
            let media = range.split(';').next().unwrap_or_default().trim();
            matches!(media, "application/sdp" | "application/*" | "*/*")
        })
    })
}

/// Values of an extension header (rsip keeps unknown headers as `Other`).
fn header_values<'a>(headers: &'a rsip::Headers, name: &'a str) -> impl Iterator<Item = &'a str> {
    headers.iter().filter_map(move |h| match h {
        rsip::Header::Other(n, v) if n.eq_ignore_ascii_case(name) => Some(v.as_str()),
        rsip::Header::Require(v) if name.eq_ignore_ascii_case("Require") => Some(v.value()),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    //! The UA in virtual time: a fake peer answers by hand-written responses.
    use super::*;

    const PEER: &str = "127.0.0.1:5070";

    fn ua(t0: Instant) -> UserAgent {
        UserAgent::new(
            t0,
            UaConfig {
                timers: Timers {
                    t1: Duration::from_millis(500),
                    t2: Duration::from_secs(4),
                    t4: Duration::from_secs(5),
                },
                user_agent: "test".into(),
                register_expires: 600,
                invite_timeout: Duration::from_secs(120),
                max_pending_invites: 3,
            },
        )
    }

    fn place(ua: &mut UserAgent, now: Instant, register: bool) {
        ua.handle_command(
            now,
            Command::PlaceCall(Box::new(PlaceCall {
                key: 7,
                account: Account {
                    login: "alice".into(),
                    auth_name: "alice".into(),
                    password: "pw".into(),
                    domain: "example.com".into(),
                },
                callee_uri: "sip:bob@example.com".into(),
                register,
                route: Route {
                    transport: Transport::Udp,
                    dest: PEER.parse().unwrap(),
                    local: "127.0.0.1:5060".parse().unwrap(),
                    sticky: false,
                },
                registrar: None,
                sdp_offer: "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n".into(),
                body: None,
                from_uri: None,
                to_uri: None,
                contact_params: String::new(),
                sip_call_id: None,
                headers: vec![],
                label: "c1".into(),
            })),
        );
    }

    fn sent(ua: &mut UserAgent) -> Vec<String> {
        std::iter::from_fn(|| ua.poll_transmit())
            .map(|t| String::from_utf8_lossy(&t.data).to_string())
            .collect()
    }

    fn events(ua: &mut UserAgent) -> Vec<UaEvent> {
        std::iter::from_fn(|| ua.poll_event()).collect()
    }

    fn header<'a>(msg: &'a str, name: &str) -> &'a str {
        msg.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(": ")))
            .unwrap_or_else(|| panic!("no {name} in {msg}"))
    }

    /// A response to `req` as a UAS would write it.
    fn response(req: &str, status: &str, to_tag: Option<&str>, extra: &str) -> Vec<u8> {
        let to = match to_tag {
            Some(t) => format!("{};tag={t}", header(req, "To")),
            None => header(req, "To").to_string(),
        };
        format!(
            "SIP/2.0 {status}\r\nVia: {}\r\nFrom: {}\r\nTo: {to}\r\nCall-ID: {}\r\nCSeq: {}\r\n{extra}Content-Length: 0\r\n\r\n",
            header(req, "Via"),
            header(req, "From"),
            header(req, "Call-ID"),
            header(req, "CSeq"),
        )
        .into_bytes()
    }

    fn phases(evs: &[UaEvent]) -> Vec<(CallPhase, Option<u16>)> {
        evs.iter()
            .filter_map(|e| match e {
                UaEvent::CallState {
                    phase, sip_status, ..
                } => Some((*phase, *sip_status)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn retransmitted_2xx_gets_a_new_ack() {
        let t0 = Instant::now();
        let mut ua = ua(t0);
        let peer = PEER.parse().unwrap();
        place(&mut ua, t0, false);
        let invite = sent(&mut ua).remove(0);
        assert!(invite.starts_with("INVITE sip:bob@example.com SIP/2.0"));
        let ok = response(
            &invite,
            "200 OK",
            Some("b1"),
            "Contact: <sip:bob@127.0.0.1:5070>\r\n",
        );
        ua.handle_input(t0, Transport::Udp, peer, &ok);
        let out = sent(&mut ua);
        assert_eq!(out.len(), 1, "{out:?}");
        assert!(
            out[0].starts_with("ACK sip:bob@127.0.0.1:5070 SIP/2.0"),
            "{}",
            out[0]
        );
        assert!(out[0].contains("CSeq: 1 ACK"));
        assert_eq!(
            phases(&events(&mut ua)),
            vec![
                (CallPhase::Trying, None),
                (CallPhase::Established, Some(200))
            ]
        );
        // The 200 again (our ACK was lost): the same ACK again, no new event.
        ua.handle_input(t0 + Duration::from_millis(500), Transport::Udp, peer, &ok);
        let again = sent(&mut ua);
        assert_eq!(again, out);
        assert!(events(&mut ua).is_empty());
    }

    #[test]
    fn a_peer_that_stops_refreshing_its_session_timer_gets_our_bye_in_virtual_time() {
        let t0 = Instant::now();
        let mut ua = ua(t0);
        let peer = PEER.parse().unwrap();
        place(&mut ua, t0, false);
        let invite = sent(&mut ua).remove(0);
        assert!(invite.contains("Supported: timer"), "{invite}");
        // 6 s, the peer refreshes: we give up 2 s before the end (RFC 4028 §10) unless it
        // refreshes.
        let ok = response(
            &invite,
            "200 OK",
            Some("b1"),
            "Contact: <sip:bob@127.0.0.1:5070>\r\nSession-Expires: 6;refresher=uas\r\nRequire: timer\r\n",
        );
        ua.handle_input(t0, Transport::Udp, peer, &ok);
        sent(&mut ua);
        events(&mut ua);
        let update = |branch: &str, cseq: u32| {
            format!(
                "UPDATE sip:alice@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch={branch}\r\n\
                 From: {};tag=b1\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: {cseq} UPDATE\r\n\
                 Session-Expires: 6;refresher=uas\r\nContent-Length: 0\r\n\r\n",
                header(&invite, "To"),
                header(&invite, "From"),
                header(&invite, "Call-ID"),
            )
        };
        let mut now = t0;
        let run = |ua: &mut UserAgent, now: &mut Instant, until: Duration| {
            let mut out = Vec::new();
            while *now < t0 + until {
                *now += Duration::from_millis(100);
                ua.handle_timeout(*now);
                out.extend(sent(ua));
            }
            out
        };
        assert!(run(&mut ua, &mut now, Duration::from_secs(3)).is_empty());
        // Its refresh at 3 s: answered, and the session lives until 3 + 4 s.
        ua.handle_input(
            now,
            Transport::Udp,
            peer,
            update("z9hG4bKup1", 1).as_bytes(),
        );
        assert!(sent(&mut ua)[0].starts_with("SIP/2.0 200"));
        let quiet = run(&mut ua, &mut now, Duration::from_millis(6900));
        assert!(quiet.is_empty(), "no BYE while refreshed: {quiet:?}");
        let out = run(&mut ua, &mut now, Duration::from_millis(7200));
        assert!(
            out.iter()
                .any(|m| m.starts_with("BYE sip:bob@127.0.0.1:5070")),
            "{out:?}"
        );
        let bye = out.iter().find(|m| m.starts_with("BYE")).unwrap();
        ua.handle_input(
            now,
            Transport::Udp,
            peer,
            &response(bye, "200 OK", None, ""),
        );
        let evs = events(&mut ua);
        let ended = evs.iter().find_map(|e| match e {
            UaEvent::CallState {
                phase: CallPhase::Finish,
                reason,
                ..
            } => reason.clone(),
            _ => None,
        });
        assert!(
            ended
                .as_deref()
                .is_some_and(|r| r.starts_with("session expired")),
            "{evs:?}"
        );
    }

    #[test]
    fn invite_retransmits_then_times_out_with_408() {
        let t0 = Instant::now();
        let mut ua = ua(t0);
        place(&mut ua, t0, false);
        assert_eq!(sent(&mut ua).len(), 1);
        // Timer A: 0.5, 1, 2, 4, 8, 16 s; timer B: 32 s.
        let mut now = t0;
        let mut retransmits = Vec::new();
        while let Some(at) = ua.poll_timeout() {
            if at > t0 + Duration::from_secs(40) {
                break;
            }
            now = at;
            ua.handle_timeout(now);
            for _ in sent(&mut ua) {
                retransmits.push(now - t0);
            }
            if !events(&mut ua).is_empty() && ua.active_calls() == 0 {
                break;
            }
        }
        let secs: Vec<f64> = retransmits.iter().map(|d| d.as_secs_f64()).collect();
        assert_eq!(secs, vec![0.5, 1.5, 3.5, 7.5, 15.5, 31.5]);
        assert_eq!(now - t0, Duration::from_secs(32));
        assert_eq!(ua.active_calls(), 0);
    }

    #[test]
    fn timeout_reports_failed_408() {
        let t0 = Instant::now();
        let mut ua = ua(t0);
        place(&mut ua, t0, false);
        sent(&mut ua);
        events(&mut ua);
        ua.handle_timeout(t0 + Duration::from_secs(33));
        let evs = events(&mut ua);
        assert_eq!(phases(&evs).last(), Some(&(CallPhase::Failed, Some(408))));
    }

    #[test]
    fn stray_response_is_dropped_and_counted() {
        let t0 = Instant::now();
        let mut ua = ua(t0);
        let peer = PEER.parse().unwrap();
        place(&mut ua, t0, false);
        let invite = sent(&mut ua).remove(0);
        let stray = String::from_utf8(response(&invite, "200 OK", Some("x"), ""))
            .unwrap()
            .replace("branch=z9hG4bK", "branch=z9hG4bKother");
        ua.handle_input(t0, Transport::Udp, peer, stray.as_bytes());
        assert!(sent(&mut ua).is_empty());
        assert_eq!(ua.stats().stray_responses, 1);
        assert_eq!(phases(&events(&mut ua)), vec![(CallPhase::Trying, None)]);
    }

    #[test]
    fn hangup_while_calling_waits_for_a_provisional_then_cancels() {
        let t0 = Instant::now();
        let mut ua = ua(t0);
        let peer = PEER.parse().unwrap();
        place(&mut ua, t0, false);
        let invite = sent(&mut ua).remove(0);
        ua.handle_command(t0, Command::Hangup(7));
        assert!(
            sent(&mut ua).is_empty(),
            "no CANCEL before a provisional (RFC 3261 §9.1)"
        );
        ua.handle_input(
            t0,
            Transport::Udp,
            peer,
            &response(&invite, "180 Ringing", Some("b1"), ""),
        );
        let out = sent(&mut ua);
        assert_eq!(out.len(), 1);
        assert!(out[0].starts_with("CANCEL sip:bob@example.com SIP/2.0"));
        assert_eq!(
            header(&out[0], "Via"),
            header(&invite, "Via"),
            "CANCEL reuses the INVITE's branch"
        );
        ua.handle_input(
            t0,
            Transport::Udp,
            peer,
            &response(&invite, "487 Request Terminated", Some("b1"), ""),
        );
        let out = sent(&mut ua);
        assert!(
            out.iter().any(|m| m.starts_with("ACK ")),
            "ACK for the 487: {out:?}"
        );
        assert_eq!(
            phases(&events(&mut ua)).last(),
            Some(&(CallPhase::Finish, Some(487)))
        );
    }

    /// RFC 8760: SHA-256 offered above MD5 for one realm: only the topmost is answered.
    #[test]
    fn the_topmost_supported_digest_algorithm_is_answered() {
        let t0 = Instant::now();
        let mut ua = ua(t0);
        let peer = PEER.parse().unwrap();
        place(&mut ua, t0, false);
        let invite = sent(&mut ua).remove(0);
        let challenges = "Proxy-Authenticate: Digest realm=\"example.com\", nonce=\"n1\", qop=\"auth\", algorithm=SHA-256\r\n\
             Proxy-Authenticate: Digest realm=\"example.com\", nonce=\"n2\", qop=\"auth\", algorithm=MD5\r\n";
        ua.handle_input(
            t0,
            Transport::Udp,
            peer,
            &response(
                &invite,
                "407 Proxy Authentication Required",
                Some("p"),
                challenges,
            ),
        );
        let out = sent(&mut ua);
        let retry = out
            .iter()
            .find(|m| m.starts_with("INVITE "))
            .expect("retried INVITE");
        assert_eq!(retry.matches("Proxy-Authorization:").count(), 1, "{retry}");
        let auth = header(retry, "Proxy-Authorization");
        assert!(
            auth.contains("algorithm=SHA-256") && auth.contains("nonce=\"n1\""),
            "{auth}"
        );
        // The response is 64 hex digits.
        let resp = auth
            .split("response=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        assert_eq!(resp.len(), 64, "{auth}");
    }

    #[test]
    fn digest_challenge_is_retried_once_then_wrong_password_fails() {
        let t0 = Instant::now();
        let mut ua = ua(t0);
        let peer = PEER.parse().unwrap();
        place(&mut ua, t0, false);
        let invite = sent(&mut ua).remove(0);
        let challenge =
            "Proxy-Authenticate: Digest realm=\"example.com\", nonce=\"n1\", qop=\"auth\"\r\n";
        ua.handle_input(
            t0,
            Transport::Udp,
            peer,
            &response(
                &invite,
                "407 Proxy Authentication Required",
                Some("p"),
                challenge,
            ),
        );
        let out = sent(&mut ua);
        let retry = out
            .iter()
            .find(|m| m.starts_with("INVITE "))
            .expect("retried INVITE");
        assert!(header(retry, "Proxy-Authorization").contains("nc=00000001"));
        assert!(retry.contains("CSeq: 2 INVITE"));
        assert!(!retry.contains("\"pw\""), "password on the wire");
        ua.handle_input(
            t0,
            Transport::Udp,
            peer,
            &response(
                retry,
                "407 Proxy Authentication Required",
                Some("p"),
                challenge,
            ),
        );
        let evs = events(&mut ua);
        assert_eq!(phases(&evs).last(), Some(&(CallPhase::Failed, Some(407))));
    }

    const OFFER: &str = "v=0\r\no=peer 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 6000 RTP/AVP 0\r\n";

    fn incoming_invite(branch: &str, body: &str) -> String {
        format!(
            "INVITE sip:rec@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch={branch}\r\n\
             From: <sip:alice@127.0.0.1:5070>;tag=caller1\r\nTo: <sip:rec@127.0.0.1>\r\nCall-ID: in-1@peer\r\n\
             CSeq: 1 INVITE\r\nContact: <sip:alice@127.0.0.1:5070>\r\nMax-Forwards: 70\r\n\
             Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    }

    fn incoming_key(evs: &[UaEvent]) -> CallKey {
        evs.iter()
            .find_map(|e| match e {
                UaEvent::Incoming(c) => Some(c.key),
                _ => None,
            })
            .expect("an Incoming event")
    }

    /// The 200 of an incoming call: its To tag and what the ACK must look like.
    fn answer_call(ua: &mut UserAgent, t0: Instant) -> (CallKey, String) {
        let peer: SocketAddr = PEER.parse().unwrap();
        ua.handle_input(
            t0,
            Transport::Udp,
            peer,
            incoming_invite("z9hG4bKin1", OFFER).as_bytes(),
        );
        let out = sent(ua);
        assert!(out[0].starts_with("SIP/2.0 100"), "{out:?}");
        let evs = events(ua);
        let key = incoming_key(&evs);
        assert!(is_inbound_key(key));
        match &evs[0] {
            UaEvent::Incoming(c) => {
                assert_eq!(c.user, "rec");
                assert_eq!(c.from_uri, "sip:alice@127.0.0.1:5070");
                assert_eq!(c.sdp.as_deref(), Some(OFFER));
            }
            other => panic!("{other:?}"),
        }
        ua.handle_command(
            t0,
            Command::Answer {
                key,
                sdp: OFFER.replace("6000", "4000"),
                local: "127.0.0.1:5060".parse().unwrap(),
                warning: None,
            },
        );
        let ok = sent(ua).remove(0);
        assert!(ok.starts_with("SIP/2.0 200"), "{ok}");
        assert!(header(&ok, "To").contains(";tag="), "{ok}");
        assert!(header(&ok, "Contact").contains("127.0.0.1:5060"), "{ok}");
        assert_eq!(
            phases(&events(ua)),
            vec![(CallPhase::Established, Some(200))]
        );
        (key, ok)
    }

    /// Load shedding: beyond `max_pending_invites` unanswered INVITEs, or while the driver
    /// says the call layer is behind, a new INVITE gets 503 + Retry-After and no event; the
    /// calls already there go on, and the next INVITE after the load passes is taken.
    #[test]
    fn new_calls_are_shed_with_503_when_too_many_wait_or_the_call_layer_is_behind() {
        let t0 = Instant::now();
        let mut ua = ua(t0);
        let peer: SocketAddr = PEER.parse().unwrap();
        let invite = |n: usize| {
            incoming_invite(&format!("z9hG4bKshed{n}"), OFFER)
                .replace("in-1@peer", &format!("in-{n}@peer"))
                .replace("tag=caller1", &format!("tag=caller{n}"))
        };
        for n in 0..3 {
            ua.handle_input(t0, Transport::Udp, peer, invite(n).as_bytes());
            assert!(sent(&mut ua)[0].starts_with("SIP/2.0 100"));
            assert_eq!(events(&mut ua).len(), 1, "Incoming {n}");
        }
        // The fourth waits behind three unanswered ones (max_pending_invites = 3).
        ua.handle_input(t0, Transport::Udp, peer, invite(3).as_bytes());
        let out = sent(&mut ua);
        let shed = out
            .iter()
            .find(|m| m.starts_with("SIP/2.0 503"))
            .expect("503");
        assert_eq!(header(shed, "Retry-After"), "5");
        assert!(events(&mut ua).is_empty());
        assert_eq!(ua.active_calls(), 3);
        // Overloaded: shed too, even with room.
        let key = ua.calls.keys().next().copied().unwrap();
        ua.handle_command(
            t0,
            Command::Reject {
                key,
                status: 486,
                warning: None,
            },
        );
        let _ = sent(&mut ua);
        let _ = events(&mut ua);
        ua.set_overloaded(true);
        ua.handle_input(t0, Transport::Udp, peer, invite(4).as_bytes());
        assert!(sent(&mut ua).iter().any(|m| m.starts_with("SIP/2.0 503")));
        assert!(events(&mut ua).is_empty());
        ua.set_overloaded(false);
        ua.handle_input(t0, Transport::Udp, peer, invite(5).as_bytes());
        assert!(sent(&mut ua)[0].starts_with("SIP/2.0 100"));
        assert_eq!(events(&mut ua).len(), 1);
    }

    #[test]
    fn incoming_call_is_answered_and_its_2xx_retransmitted_until_the_ack() {
        let t0 = Instant::now();
        let mut ua = ua(t0);
        let peer = PEER.parse().unwrap();
        let (_, ok) = answer_call(&mut ua, t0);
        // No ACK yet: the 2xx goes again after T1, then 2*T1.
        ua.handle_timeout(t0 + Duration::from_millis(500));
        assert!(sent(&mut ua)[0].starts_with("SIP/2.0 200"));
        ua.handle_timeout(t0 + Duration::from_millis(1500));
        assert!(sent(&mut ua)[0].starts_with("SIP/2.0 200"));
        let ack = format!(
            "ACK sip:rec@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKack1\r\n\
             From: <sip:alice@127.0.0.1:5070>;tag=caller1\r\nTo: {}\r\nCall-ID: in-1@peer\r\nCSeq: 1 ACK\r\n\
             Content-Length: 0\r\n\r\n",
            header(&ok, "To")
        );
        ua.handle_input(
            t0 + Duration::from_secs(2),
            Transport::Udp,
            peer,
            ack.as_bytes(),
        );
        ua.handle_timeout(t0 + Duration::from_secs(10));
        assert!(
            sent(&mut ua).is_empty(),
            "the ACK stops the retransmissions"
        );
        // The caller hangs up: 200 to its BYE, the call ends FINISH.
        let bye = ack
            .replace("ACK sip", "BYE sip")
            .replace("CSeq: 1 ACK", "CSeq: 2 BYE")
            .replace("z9hG4bKack1", "z9hG4bKbye1");
        ua.handle_input(
            t0 + Duration::from_secs(11),
            Transport::Udp,
            peer,
            bye.as_bytes(),
        );
        assert!(sent(&mut ua)[0].starts_with("SIP/2.0 200"));
        assert_eq!(
            phases(&events(&mut ua)),
            vec![(CallPhase::Finish, Some(200))]
        );
        assert_eq!(ua.active_calls(), 0);
    }

    /// RFC 5118 §4.5: a caller whose Via (with `received=[...]`), From, To and Contact hold
    /// IPv6 references, reaching us over IPv4. The call is answered once (one To tag), its
    /// ACK and BYE find the dialog, and our own BYE goes to where the caller's requests come
    /// from, since our IPv4 socket cannot send to its IPv6 Contact.
    #[test]
    fn a_caller_with_ipv6_in_its_headers() {
        let t0 = Instant::now();
        let mut ua = ua(t0);
        let peer: SocketAddr = PEER.parse().unwrap();
        let invite = incoming_invite("z9hG4bKv6in", OFFER)
            .replace(
                "Via: SIP/2.0/UDP 127.0.0.1:5070;",
                "Via: SIP/2.0/UDP [2001:db8::7:2]:5070;received=[2001:db8::7:ff];",
            )
            .replace("sip:alice@127.0.0.1:5070", "sip:alice@[2001:db8::7:2]:5070")
            .replace("To: <sip:rec@127.0.0.1>", "To: <sip:rec@[2001:db8::5e10]>");
        ua.handle_input(t0, Transport::Udp, peer, invite.as_bytes());
        assert!(sent(&mut ua)[0].starts_with("SIP/2.0 100"));
        let key = incoming_key(&events(&mut ua));
        ua.handle_command(
            t0,
            Command::Answer {
                key,
                sdp: OFFER.replace("6000", "4000"),
                local: "127.0.0.1:5060".parse().unwrap(),
                warning: Some(Warning::new(301, "video at 2001:db8::30 unreachable")),
            },
        );
        let ok = sent(&mut ua).remove(0);
        assert!(ok.starts_with("SIP/2.0 200"), "{ok}");
        assert_eq!(header(&ok, "To").matches(";tag=").count(), 1, "{ok}");
        assert_eq!(
            header(&ok, "Warning"),
            "301 sipstream \"video at 2001:db8::30 unreachable\""
        );
        assert_eq!(
            header(&ok, "Via"),
            "SIP/2.0/UDP [2001:db8::7:2]:5070;received=[2001:db8::7:ff];branch=z9hG4bKv6in"
        );
        events(&mut ua);
        let ack = format!(
            "ACK sip:rec@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP [2001:db8::7:2]:5070;branch=z9hG4bKv6ack\r\n\
             From: {}\r\nTo: {}\r\nCall-ID: in-1@peer\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n",
            header(&ok, "From"),
            header(&ok, "To")
        );
        ua.handle_input(t0, Transport::Udp, peer, ack.as_bytes());
        ua.handle_timeout(t0 + Duration::from_secs(10));
        assert!(sent(&mut ua).is_empty(), "the ACK found the dialog");
        ua.handle_command(t0 + Duration::from_secs(10), Command::Hangup(key));
        let bye = ua.poll_transmit().expect("our BYE");
        let text = String::from_utf8_lossy(&bye.data).into_owned();
        assert!(
            text.starts_with("BYE sip:alice@[2001:db8::7:2]:5070 SIP/2.0\r\n"),
            "{text}"
        );
        assert_eq!(bye.dest, peer, "sent where the caller is reachable");
        assert!(header(&text, "To").contains("tag=caller1"), "{text}");
    }

    /// A refused call says why in a Warning header (RFC 3261 §20.43).
    #[test]
    fn a_rejected_call_carries_its_warning() {
        let t0 = Instant::now();
        let mut ua = ua(t0);
        let peer: SocketAddr = PEER.parse().unwrap();
        ua.handle_input(
            t0,
            Transport::Udp,
            peer,
            incoming_invite("z9hG4bKw", OFFER).as_bytes(),
        );
        sent(&mut ua);
        let key = incoming_key(&events(&mut ua));
        let warning = Warning::new(301, "audio at 2001:db8::20 \"unreachable\"\r\nX: y");
        ua.handle_command(
            t0,
            Command::Reject {
                key,
                status: 488,
                warning: Some(warning),
            },
        );
        let resp = sent(&mut ua).remove(0);
        assert!(
            resp.starts_with("SIP/2.0 488 Not Acceptable Here\r\n"),
            "{resp}"
        );
        assert_eq!(
            header(&resp, "Warning"),
            "301 sipstream \"audio at 2001:db8::20 'unreachable'''X: y\""
        );
        // Codes outside 3xx are not warn-codes: 399.
        assert!(matches!(
            Warning::new(488, "x").header(),
            rsip::Header::Other(_, v) if v == "399 sipstream \"x\""
        ));
    }

    #[test]
    fn no_ack_for_the_2xx_ends_the_call_with_bye() {
        let t0 = Instant::now();
        let mut ua = ua(t0);
        answer_call(&mut ua, t0);
        let mut t = t0;
        let mut bye = None;
        while t < t0 + Duration::from_secs(40) && bye.is_none() {
            t += Duration::from_millis(250);
            ua.handle_timeout(t);
            bye = sent(&mut ua).into_iter().find(|m| m.starts_with("BYE "));
        }
        let bye = bye.expect("a BYE after 64*T1 without ACK");
        assert!(
            bye.starts_with("BYE sip:alice@127.0.0.1:5070 SIP/2.0"),
            "{bye}"
        );
        assert!(header(&bye, "From").contains("sip:rec@127.0.0.1"), "{bye}");
        assert!(header(&bye, "To").contains("tag=caller1"), "{bye}");
        assert!(t >= t0 + Duration::from_secs(32), "not before 64*T1");
    }

    #[test]
    fn cancel_of_an_incoming_call_gets_200_and_the_invite_487() {
        let t0 = Instant::now();
        let mut ua = ua(t0);
        let peer = PEER.parse().unwrap();
        let invite = incoming_invite("z9hG4bKc1", OFFER);
        ua.handle_input(t0, Transport::Udp, peer, invite.as_bytes());
        sent(&mut ua);
        let key = incoming_key(&events(&mut ua));
        ua.handle_command(t0, Command::Ring(key));
        let ring = sent(&mut ua).remove(0);
        assert!(ring.starts_with("SIP/2.0 180"), "{ring}");
        let cancel = invite
            .split("\r\n\r\n")
            .next()
            .unwrap()
            .replace("INVITE sip:rec", "CANCEL sip:rec")
            .replace("CSeq: 1 INVITE", "CSeq: 1 CANCEL")
            .replace("Content-Type: application/sdp\r\n", "")
            .replace(
                &format!("Content-Length: {}", OFFER.len()),
                "Content-Length: 0",
            )
            + "\r\n\r\n";
        ua.handle_input(t0, Transport::Udp, peer, cancel.as_bytes());
        let out = sent(&mut ua);
        assert!(
            out.iter()
                .any(|m| m.starts_with("SIP/2.0 200") && m.contains("CANCEL")),
            "{out:?}"
        );
        let r487 = out
            .iter()
            .find(|m| m.starts_with("SIP/2.0 487"))
            .expect("487");
        assert_eq!(
            header(r487, "To"),
            header(&ring, "To"),
            "same tag as the 180"
        );
        let evs = events(&mut ua);
        assert_eq!(phases(&evs).last(), Some(&(CallPhase::Finish, Some(487))));
        // A CANCEL that matches nothing gets 481.
        let stray = cancel.replace("z9hG4bKc1", "z9hG4bKnone");
        ua.handle_input(t0, Transport::Udp, peer, stray.as_bytes());
        assert!(sent(&mut ua)[0].starts_with("SIP/2.0 481"));
    }

    #[test]
    fn unsupported_require_gets_420_and_reject_sends_the_status() {
        let t0 = Instant::now();
        let mut ua = ua(t0);
        let peer = PEER.parse().unwrap();
        let inv = incoming_invite("z9hG4bKr1", OFFER).replace(
            "Max-Forwards: 70",
            "Require: 100rel, foo\r\nMax-Forwards: 70",
        );
        ua.handle_input(t0, Transport::Udp, peer, inv.as_bytes());
        let out = sent(&mut ua);
        assert!(out[0].starts_with("SIP/2.0 420"), "{out:?}");
        assert!(out[0].contains("Unsupported: 100rel, foo"), "{out:?}");
        assert!(events(&mut ua).is_empty());
        ua.handle_input(
            t0,
            Transport::Udp,
            peer,
            incoming_invite("z9hG4bKr2", OFFER).as_bytes(),
        );
        sent(&mut ua);
        let key = incoming_key(&events(&mut ua));
        ua.handle_command(
            t0,
            Command::Reject {
                key,
                status: 486,
                warning: None,
            },
        );
        assert!(sent(&mut ua)[0].starts_with("SIP/2.0 486"));
        assert_eq!(phases(&events(&mut ua)), vec![(CallPhase::Busy, Some(486))]);
    }

    #[test]
    fn options_is_checked_like_any_request_and_accept_must_allow_sdp() {
        let t0 = Instant::now();
        let mut ua = ua(t0);
        let peer = PEER.parse().unwrap();
        let options = |extra: &str, uri: &str, branch: &str| {
            format!(
                "OPTIONS {uri} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch={branch}\r\n\
                 From: <sip:a@x>;tag=1\r\nTo: <sip:b@y>\r\nCall-ID: o-{branch}\r\nCSeq: 1 OPTIONS\r\n\
                 {extra}Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
            )
        };
        // RFC 4475 bext01: Require on OPTIONS is 420 too, listing what we lack.
        let req = options("Require: newfeature1, timer\r\n", "sip:b@y", "z9hG4bKo1");
        ua.handle_input(t0, Transport::Udp, peer, req.as_bytes());
        let out = sent(&mut ua);
        assert!(out[0].starts_with("SIP/2.0 420 Bad Extension"), "{out:?}");
        assert!(out[0].contains("Unsupported: newfeature1\r\n"), "{out:?}");
        // RFC 4475 novelsc: a Request-URI scheme we do not serve is 416.
        let req = options("", "soap.beep://192.0.2.103:3002", "z9hG4bKo2");
        ua.handle_input(t0, Transport::Udp, peer, req.as_bytes());
        assert!(sent(&mut ua)[0].starts_with("SIP/2.0 416"));
        let req = options("", "sip:b@y", "z9hG4bKo3");
        ua.handle_input(t0, Transport::Udp, peer, req.as_bytes());
        assert!(sent(&mut ua)[0].starts_with("SIP/2.0 200"));
        // RFC 4475 sdp01: an INVITE whose Accept leaves out SDP cannot be answered with it.
        let inv = incoming_invite("z9hG4bKo4", OFFER).replace(
            "Max-Forwards: 70",
            "Accept: text/nobodyKnowsThis\r\nMax-Forwards: 70",
        );
        ua.handle_input(t0, Transport::Udp, peer, inv.as_bytes());
        let out = sent(&mut ua);
        assert!(
            out[0].starts_with("SIP/2.0 406 Not Acceptable\r\n"),
            "{out:?}"
        );
        assert!(out[0].contains("Warning: 399"), "{out:?}");
        assert!(events(&mut ua).is_empty());
        let inv = incoming_invite("z9hG4bKo5", OFFER).replace(
            "Max-Forwards: 70",
            "Accept: text/plain, application/sdp;level=1\r\nMax-Forwards: 70",
        );
        ua.handle_input(t0, Transport::Udp, peer, inv.as_bytes());
        assert!(sent(&mut ua)[0].starts_with("SIP/2.0 100"));
        incoming_key(&events(&mut ua));
    }

    #[test]
    fn an_rfc_2543_invite_is_a_transaction_too() {
        // No magic cookie in the branch (RFC 4475 inv2543 and wsinv): matched by the RFC 2543
        // rules, answered, and its retransmission absorbed rather than a second call.
        let t0 = Instant::now();
        let mut ua = ua(t0);
        let peer = PEER.parse().unwrap();
        let inv = incoming_invite("390skdjuw", OFFER);
        ua.handle_input(t0, Transport::Udp, peer, inv.as_bytes());
        assert!(sent(&mut ua)[0].starts_with("SIP/2.0 100 Trying"));
        let key = incoming_key(&events(&mut ua));
        ua.handle_input(t0, Transport::Udp, peer, inv.as_bytes());
        assert!(
            events(&mut ua).is_empty(),
            "a retransmission is not a new call"
        );
        ua.handle_command(
            t0,
            Command::Reject {
                key,
                status: 486,
                warning: None,
            },
        );
        assert!(sent(&mut ua).iter().any(|m| m.starts_with("SIP/2.0 486")));
        assert_eq!(phases(&events(&mut ua)), vec![(CallPhase::Busy, Some(486))]);
        // The ACK of the 486 ends the transaction's retransmissions; it is no new request.
        let ack = inv
            .replace(
                "INVITE sip:rec@127.0.0.1:5060 SIP/2.0",
                "ACK sip:rec@127.0.0.1:5060 SIP/2.0",
            )
            .replace("CSeq: 1 INVITE", "CSeq: 1 ACK");
        ua.handle_input(t0, Transport::Udp, peer, ack.as_bytes());
        assert!(events(&mut ua).is_empty());
        assert_eq!(ua.stats().malformed, 0);
        ua.handle_timeout(t0 + Duration::from_secs(4));
        assert!(sent(&mut ua).is_empty(), "no 486 resent after the ACK");
        // The same without a branch at all, and with a To tag: no dialog of ours, 481.
        let stray = incoming_invite("x", OFFER)
            .replace(";branch=x", "")
            .replace("To: <sip:rec@127.0.0.1>", "To: <sip:rec@127.0.0.1>;tag=9");
        ua.handle_input(t0, Transport::Udp, peer, stray.as_bytes());
        assert!(sent(&mut ua)[0].starts_with("SIP/2.0 481"));
    }

    #[test]
    fn re_offers_wait_for_the_call_layer_and_a_second_one_gets_500() {
        let t0 = Instant::now();
        let mut ua = ua(t0);
        let peer = PEER.parse().unwrap();
        let (key, ok) = answer_call(&mut ua, t0);
        let reinvite = |branch: &str, cseq: u32| {
            incoming_invite(
                branch,
                &OFFER.replace("\r\nm=audio", "\r\na=sendonly\r\nm=audio"),
            )
            .replace(
                "To: <sip:rec@127.0.0.1>",
                &format!("To: {}", header(&ok, "To")),
            )
            .replace("CSeq: 1 INVITE", &format!("CSeq: {cseq} INVITE"))
        };
        ua.handle_input(
            t0,
            Transport::Udp,
            peer,
            reinvite("z9hG4bKre1", 2).as_bytes(),
        );
        assert!(
            sent(&mut ua).is_empty(),
            "no answer before the call layer's"
        );
        let evs = events(&mut ua);
        assert!(
            matches!(&evs[..], [UaEvent::RemoteOffer { key: k, sdp: Some(_) }] if *k == key),
            "{evs:?}"
        );
        ua.handle_input(
            t0,
            Transport::Udp,
            peer,
            reinvite("z9hG4bKre2", 3).as_bytes(),
        );
        let out = sent(&mut ua);
        assert!(
            out[0].starts_with("SIP/2.0 500") && out[0].contains("Retry-After"),
            "{out:?}"
        );
        ua.handle_command(
            t0,
            Command::AnswerOffer {
                key,
                result: Ok("v=0\r\n".into()),
            },
        );
        let out = sent(&mut ua);
        assert!(
            out[0].starts_with("SIP/2.0 200") && out[0].contains("CSeq: 2 INVITE"),
            "{out:?}"
        );
        ua.handle_input(
            t0,
            Transport::Udp,
            peer,
            reinvite("z9hG4bKre3", 4).as_bytes(),
        );
        events(&mut ua);
        ua.handle_command(
            t0,
            Command::AnswerOffer {
                key,
                result: Err(488),
            },
        );
        assert!(sent(&mut ua)[0].starts_with("SIP/2.0 488"));
    }

    #[test]
    fn one_reinvite_of_ours_at_a_time_and_glare_only_while_it_is_out() {
        let t0 = Instant::now();
        let mut ua = ua(t0);
        let peer = PEER.parse().unwrap();
        let (key, ok) = answer_call(&mut ua, t0);
        let reinvite = |branch: &str, cseq: u32| {
            incoming_invite(branch, OFFER)
                .replace(
                    "To: <sip:rec@127.0.0.1>",
                    &format!("To: {}", header(&ok, "To")),
                )
                .replace("CSeq: 1 INVITE", &format!("CSeq: {cseq} INVITE"))
        };
        let ours = |ua: &mut UserAgent| {
            ua.handle_command(
                t0,
                Command::Reinvite {
                    key,
                    sdp: "v=0\r\n".into(),
                    body: Some(("multipart/mixed;boundary=x".into(), b"--x--".to_vec())),
                },
            );
        };
        ours(&mut ua);
        let out = sent(&mut ua);
        assert!(
            out.len() == 1
                && out[0].starts_with("INVITE ")
                && out[0].contains("Content-Type: multipart/mixed;boundary=x"),
            "the body given is the body sent: {out:?}"
        );
        let first = out[0].clone();
        // A second one while the first is out is refused here (RFC 3261 §14.1).
        ours(&mut ua);
        assert!(sent(&mut ua).is_empty());
        let evs = events(&mut ua);
        assert!(
            matches!(&evs[..], [UaEvent::Reinvited { status: 491, .. }]),
            "{evs:?}"
        );
        // The peer's re-INVITE crossing ours: 491.
        ua.handle_input(
            t0,
            Transport::Udp,
            peer,
            reinvite("z9hG4bKgl1", 2).as_bytes(),
        );
        assert!(sent(&mut ua)[0].starts_with("SIP/2.0 491"));
        // Ours answered: the peer may re-INVITE again (its INVITE transaction lives on for
        // 2xx retransmissions, which must not count as in progress).
        ua.handle_input(
            t0,
            Transport::Udp,
            peer,
            &response(&first, "200 OK", None, ""),
        );
        let evs = events(&mut ua);
        assert!(
            matches!(&evs[..], [UaEvent::Reinvited { status: 200, .. }]),
            "{evs:?}"
        );
        sent(&mut ua);
        ua.handle_input(
            t0,
            Transport::Udp,
            peer,
            reinvite("z9hG4bKgl2", 3).as_bytes(),
        );
        assert!(sent(&mut ua).is_empty(), "no 491 once ours is answered");
        let evs = events(&mut ua);
        assert!(matches!(&evs[..], [UaEvent::RemoteOffer { .. }]), "{evs:?}");
    }

    #[test]
    fn update_without_sdp_is_a_refresh_answered_at_once() {
        let t0 = Instant::now();
        let mut ua = ua(t0);
        let peer = PEER.parse().unwrap();
        let (_, ok) = answer_call(&mut ua, t0);
        let update = format!(
            "UPDATE sip:rec@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKup1\r\n\
             From: <sip:alice@127.0.0.1:5070>;tag=caller1\r\nTo: {}\r\nCall-ID: in-1@peer\r\nCSeq: 2 UPDATE\r\n\
             Session-Expires: 1800;refresher=uac\r\nContent-Length: 0\r\n\r\n",
            header(&ok, "To")
        );
        ua.handle_input(t0, Transport::Udp, peer, update.as_bytes());
        let out = sent(&mut ua);
        assert!(out[0].starts_with("SIP/2.0 200"), "{out:?}");
        assert!(
            !out[0].contains("application/sdp"),
            "no offer in the 200: {}",
            out[0]
        );
        assert!(events(&mut ua).is_empty(), "nothing for the call layer");
    }

    #[test]
    fn a_caller_asking_us_to_refresh_gets_the_timer_and_our_updates_in_virtual_time() {
        let t0 = Instant::now();
        let mut ua = ua(t0);
        let peer: SocketAddr = PEER.parse().unwrap();
        let invite = incoming_invite("z9hG4bKst1", OFFER).replace(
            "Max-Forwards: 70\r\n",
            "Max-Forwards: 70\r\nSupported: timer\r\nSession-Expires: 4;refresher=uas\r\nAllow: INVITE, ACK, BYE, UPDATE\r\n",
        );
        ua.handle_input(t0, Transport::Udp, peer, invite.as_bytes());
        sent(&mut ua);
        let key = incoming_key(&events(&mut ua));
        ua.handle_command(
            t0,
            Command::Answer {
                key,
                sdp: OFFER.replace("6000", "4000"),
                local: "127.0.0.1:5060".parse().unwrap(),
                warning: None,
            },
        );
        let ok = sent(&mut ua).remove(0);
        assert!(
            ok.contains("Session-Expires: 4;refresher=uas") && ok.contains("Require: timer"),
            "{ok}"
        );
        let ack = format!(
            "ACK sip:rec@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKst2\r\n\
             From: <sip:alice@127.0.0.1:5070>;tag=caller1\r\nTo: {}\r\nCall-ID: in-1@peer\r\nCSeq: 1 ACK\r\n\
             Content-Length: 0\r\n\r\n",
            header(&ok, "To")
        );
        ua.handle_input(t0, Transport::Udp, peer, ack.as_bytes());
        events(&mut ua);
        // Nothing before half the interval; an UPDATE without a body at 2 s, the next at 4 s.
        let mut now = t0;
        let mut updates = Vec::new();
        while now < t0 + Duration::from_millis(4500) {
            now += Duration::from_millis(100);
            ua.handle_timeout(now);
            for m in sent(&mut ua) {
                // Retransmissions of one UPDATE (nobody answers here) share its CSeq.
                let cseq = header(&m, "CSeq").to_string();
                if m.starts_with("UPDATE ") && !updates.iter().any(|(_, c, _)| *c == cseq) {
                    updates.push((now - t0, cseq, m));
                }
            }
        }
        assert_eq!(updates.len(), 2, "{updates:?}");
        assert!(
            updates[0].0 >= Duration::from_secs(2) && updates[0].0 < Duration::from_millis(2200)
        );
        assert!(
            updates[1].0 >= Duration::from_secs(4) && updates[1].0 < Duration::from_millis(4200)
        );
        assert!(
            updates[0].2.contains("Content-Length: 0"),
            "{}",
            updates[0].2
        );
        assert!(
            updates[0].2.starts_with("UPDATE sip:alice@127.0.0.1:5070"),
            "to the Contact"
        );
    }

    #[test]
    fn dtmf_info_bodies_are_read() {
        let info = |ct: &str, body: &str| {
            let raw = format!(
                "INFO sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP 1.2.3.4;branch=z9hG4bKi\r\nFrom: <sip:x@y>;tag=1\r\nTo: <sip:a@b>;tag=2\r\nCall-ID: c\r\nCSeq: 3 INFO\r\nContent-Type: {ct}\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            dtmf_info(&rsip::Request::try_from(raw.as_bytes()).unwrap())
        };
        assert_eq!(
            info("application/dtmf-relay", "Signal=5\r\nDuration=160\r\n"),
            Some(('5', Some(160)))
        );
        assert_eq!(
            info("application/dtmf-relay", "Signal= 11\r\n"),
            Some(('#', None))
        );
        assert_eq!(
            info("application/dtmf-relay", "signal=*\r\nduration=x\r\n"),
            Some(('*', None))
        );
        assert_eq!(info("application/dtmf", "b"), Some(('B', None)));
        assert_eq!(info("application/dtmf-relay", "Signal=55\r\n"), None);
        assert_eq!(info("application/dtmf-relay", "Signal=x\r\n"), None);
        assert_eq!(info("text/plain", "Signal=5"), None);
    }

    #[test]
    fn bye_for_an_unknown_dialog_gets_481_and_garbage_gets_400() {
        let t0 = Instant::now();
        let mut ua = ua(t0);
        let peer = PEER.parse().unwrap();
        let bye = "BYE sip:gw@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKx1\r\nFrom: <sip:b@x>;tag=1\r\nTo: <sip:a@y>;tag=2\r\nCall-ID: nope\r\nCSeq: 5 BYE\r\nContent-Length: 0\r\n\r\n";
        ua.handle_input(t0, Transport::Udp, peer, bye.as_bytes());
        let out = sent(&mut ua);
        assert!(out[0].starts_with("SIP/2.0 481"), "{out:?}");
        let bad = bye.replace("CSeq: 5 BYE", "CSeq: five BYE");
        ua.handle_input(t0, Transport::Udp, peer, bad.as_bytes());
        let out = sent(&mut ua);
        assert!(out[0].starts_with("SIP/2.0 400"), "{out:?}");
        ua.handle_input(t0, Transport::Udp, peer, b"\x00\x01garbage");
        assert!(sent(&mut ua).is_empty());
        assert_eq!(ua.stats().malformed, 2);
    }

    #[test]
    fn register_refreshes_before_expiry_and_unregisters_after_the_last_call() {
        let t0 = Instant::now();
        let mut ua = ua(t0);
        let peer = PEER.parse().unwrap();
        place(&mut ua, t0, true);
        let reg = sent(&mut ua).remove(0);
        assert!(reg.starts_with("REGISTER sip:example.com SIP/2.0"), "{reg}");
        assert!(reg.contains("Expires: 600"));
        ua.handle_input(
            t0,
            Transport::Udp,
            peer,
            &response(
                &reg,
                "200 OK",
                Some("r"),
                "Contact: <sip:alice@127.0.0.1:5060>;expires=100\r\n",
            ),
        );
        let invite = sent(&mut ua).remove(0);
        assert!(
            invite.starts_with("INVITE "),
            "INVITE follows the registration"
        );
        // Refresh at 80 % of the granted 100 s.
        let at = ua.poll_timeout().unwrap();
        assert!(at <= t0 + Duration::from_secs(80));
        ua.handle_timeout(t0 + Duration::from_secs(80));
        let out = sent(&mut ua);
        let refresh = out
            .iter()
            .find(|m| m.starts_with("REGISTER "))
            .expect("refresh");
        ua.handle_input(
            t0 + Duration::from_secs(80),
            Transport::Udp,
            peer,
            &response(refresh, "200 OK", Some("r"), ""),
        );
        // The call ends (busy): the account is un-REGISTERed.
        ua.handle_input(
            t0 + Duration::from_secs(81),
            Transport::Udp,
            peer,
            &response(&invite, "486 Busy Here", Some("b"), ""),
        );
        ua.handle_timeout(t0 + Duration::from_secs(81));
        let out = sent(&mut ua);
        let unreg = out
            .iter()
            .find(|m| m.starts_with("REGISTER "))
            .expect("un-REGISTER");
        assert!(unreg.contains("Expires: 0"), "{unreg}");
        ua.handle_command(t0 + Duration::from_secs(81), Command::Shutdown);
        ua.handle_input(
            t0 + Duration::from_secs(81),
            Transport::Udp,
            peer,
            &response(unreg, "200 OK", Some("r"), ""),
        );
        assert!(events(&mut ua).iter().any(|e| matches!(e, UaEvent::Idle)));
    }
}
