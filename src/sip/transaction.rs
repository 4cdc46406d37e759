//! SIP transactions (RFC 3261 §17, with the RFC 6026 "Accepted" states) as sans-IO state
//! machines.
//!
//! This module owns the four transaction state machines (INVITE and non-INVITE, client and
//! server), their timers (A–K, plus L and M from RFC 6026) and the matching rules of §17.1.3 and
//! §17.2.3 ([`TransactionKey`]). It never touches a socket or a clock: the caller passes `now`
//! into every `handle_*` call, drains what to send with `poll_transmit`, what happened with
//! `poll_event`, and waits until `poll_timeout` before calling `handle_timeout`. Tests therefore
//! run a 32-second timer B in microseconds.
//!
//! What this module must not do: choose destinations (RFC 3263), send the ACK for a 2xx or
//! retransmit a 2xx on its own (that is the TU's job, RFC 3261 §13.3.1.4 and §13.2.2.4), build
//! responses, or parse bytes. The transport address belongs to the driver; a transaction only
//! produces the bytes to send to "its" destination.
//!
//! A request whose top Via branch lacks the `z9hG4bK` magic cookie (an RFC 2543 peer, RFC 4475
//! §3.4.1) gets a [`TransactionKey::Rfc2543`] server key, matched as §17.2.3's second half says.
//! Client transactions always use RFC 3261 branches of ours.
//!
//! Timer D (INVITE client, unreliable transport) is the RFC's fixed 32 s, or 64·T1 when that is
//! longer, so that a raised T1 still outlives the server's retransmissions.

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rsip::prelude::*;
use rsip::{Header, Method, Request, Response};

/// The branch prefix that marks an RFC 3261 branch (§8.1.1.7).
const MAGIC_COOKIE: &str = "z9hG4bK";

/// RFC 3261 timer values that the others derive from (§17.1.1.1, table 4).
///
/// They come from the properties file; [`Timers::default`] gives the RFC values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timers {
    /// Round-trip time estimate (default 500 ms).
    pub t1: Duration,
    /// Longest retransmit interval for non-INVITE requests and INVITE responses (default 4 s).
    pub t2: Duration,
    /// Longest time a message stays in the network (default 5 s).
    pub t4: Duration,
}

impl Default for Timers {
    fn default() -> Self {
        Timers {
            t1: Duration::from_millis(500),
            t2: Duration::from_secs(4),
            t4: Duration::from_secs(5),
        }
    }
}

impl Timers {
    /// 64·T1: timers B, F, H, J (unreliable), L and M.
    fn t1x64(&self) -> Duration {
        self.t1.saturating_mul(64)
    }

    /// Refuses values that would make a transaction spin (T1 = 0 retransmits in a loop) or
    /// overflow: T1 must be in 1 ms..=1 min, T2 in T1..=10 min, T4 at most 10 min.
    /// The transaction constructors call this; the configuration layer may call it at load.
    pub fn validate(&self) -> Result<(), TransactionError> {
        let ten_min = Duration::from_secs(600);
        if self.t1 < Duration::from_millis(1) || self.t1 > Duration::from_secs(60) {
            return Err(TransactionError::InvalidTimers(
                "T1 must be within 1 ms and 60 s",
            ));
        }
        if self.t2 < self.t1 || self.t2 > ten_min {
            return Err(TransactionError::InvalidTimers(
                "T2 must be within T1 and 600 s",
            ));
        }
        if self.t4 > ten_min {
            return Err(TransactionError::InvalidTimers("T4 must be at most 600 s"));
        }
        Ok(())
    }

    /// Timer D: at least 32 s over unreliable transport (§17.1.1.2).
    fn timer_d(&self) -> Duration {
        Duration::from_secs(32).max(self.t1x64())
    }
}

/// Why a transaction refused a message or a call.
///
/// None of these change the transaction's state: the message or call is simply not applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransactionError {
    /// A header the transaction needs is missing.
    #[error("missing {0} header")]
    MissingHeader(&'static str),
    /// A header is present but could not be parsed.
    #[error("unparsable {header} header: {reason}")]
    BadHeader {
        /// Header name.
        header: &'static str,
        /// What rsip said.
        reason: String,
    },
    /// The top Via has no branch parameter.
    #[error("top Via has no branch parameter")]
    MissingBranch,
    /// The top Via branch is not an RFC 3261 branch; RFC 2543 matching is not supported.
    #[error("top Via branch {0:?} lacks the RFC 3261 magic cookie z9hG4bK")]
    NoMagicCookie(String),
    /// ACK never creates a transaction (§17.1: it belongs to the INVITE's, or to none for 2xx).
    #[error("an ACK does not create a transaction")]
    AckCreatesNoTransaction,
    /// The CSeq method differs from the request method.
    #[error("CSeq method {cseq} differs from request method {method}")]
    CSeqMethodMismatch {
        /// Method of the CSeq header.
        cseq: String,
        /// Method of the request line.
        method: String,
    },
    /// The message's key (branch, sent-by, method) is not this transaction's.
    #[error("message belongs to transaction {got}, not to {expected}")]
    NotThisTransaction {
        /// This transaction's key.
        expected: Box<TransactionKey>,
        /// The message's key.
        got: Box<TransactionKey>,
    },
    /// A status code outside 100–699.
    #[error("status code {0} is outside 100-699")]
    InvalidStatus(u16),
    /// The server transaction already sent a final response that forbids this one.
    #[error("a final response ({0}) was already sent")]
    FinalAlreadySent(u16),
    /// Timer values that would make the transaction spin or never end.
    #[error("invalid timers: {0}")]
    InvalidTimers(&'static str),
    /// The transaction is terminated and takes no more input.
    #[error("the transaction is terminated")]
    Terminated,
}

/// The key that routes a message to its transaction (RFC 3261 §17.1.3 and §17.2.3).
///
/// A client key is the top Via branch and the CSeq method of the response (the request method on
/// the client side). A server key adds the top Via sent-by, and maps ACK to INVITE so that the ACK
/// of a non-2xx response finds the INVITE server transaction. CANCEL has a key of its own (its
/// method differs), as the RFC requires. The two kinds never compare equal, so an endpoint can
/// keep both in one map.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TransactionKey {
    /// Key of a client transaction.
    Client {
        /// Top Via branch (compared case-sensitively).
        branch: String,
        /// Request method, upper case (`INVITE`, `CANCEL`, …).
        method: String,
    },
    /// Key of a server transaction.
    Server {
        /// Top Via branch (compared case-sensitively).
        branch: String,
        /// Top Via sent-by (`host[:port]`, host lower-cased).
        sent_by: String,
        /// Request method, ACK mapped to INVITE.
        method: String,
    },
    /// Key of a server transaction created by a request whose top Via has no RFC 3261 branch
    /// (§17.2.3, second half): Request-URI, From tag, Call-ID, CSeq number and the whole top
    /// Via. The To tag is left out: the ACK of a non-2xx carries the tag of our answer, the
    /// INVITE had none, and the rest already tells transactions apart.
    Rfc2543 {
        request_uri: String,
        from_tag: String,
        call_id: String,
        cseq: u32,
        top_via: String,
        /// Request method, ACK mapped to INVITE.
        method: String,
    },
}

impl fmt::Display for TransactionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TransactionKey::Client { branch, method } => write!(f, "client {method} {branch}"),
            TransactionKey::Server {
                branch,
                sent_by,
                method,
            } => write!(f, "server {method} {branch} via {sent_by}"),
            TransactionKey::Rfc2543 {
                call_id,
                cseq,
                method,
                ..
            } => write!(f, "server {method} (RFC 2543) {call_id} CSeq {cseq}"),
        }
    }
}

impl TransactionKey {
    /// The server-transaction key of a received request (§17.2.3). ACK maps to INVITE.
    ///
    /// Errors when the top Via is missing or malformed, or (without an RFC 3261 branch) the
    /// headers RFC 2543 matching needs are.
    pub fn from_request(request: &Request) -> Result<Self, TransactionError> {
        let via = top_via(request)?;
        let method = match request.method {
            Method::Ack => Method::Invite,
            m => m,
        };
        match rfc3261_branch(&via) {
            Ok(branch) => Ok(TransactionKey::Server {
                branch,
                sent_by: via.sent_by.clone(),
                method: method.to_string(),
            }),
            Err(TransactionError::MissingBranch | TransactionError::NoMagicCookie(_)) => {
                let call_id = request
                    .call_id_header()
                    .map_err(|_| TransactionError::MissingHeader("Call-ID"))?
                    .value()
                    .to_owned();
                let from_tag = request
                    .from_header()
                    .ok()
                    .and_then(|h| h.tag().ok().flatten())
                    .map(|t| t.value().to_owned())
                    .unwrap_or_default();
                Ok(TransactionKey::Rfc2543 {
                    request_uri: request.uri.to_string(),
                    from_tag,
                    call_id,
                    cseq: cseq(request)?.seq,
                    top_via: via.value.clone(),
                    method: method.to_string(),
                })
            }
            Err(e) => Err(e),
        }
    }

    /// The key of the transaction with the same identity and another method: the INVITE a
    /// CANCEL is about (§9.2).
    pub fn with_method(&self, method: &str) -> TransactionKey {
        let mut key = self.clone();
        match &mut key {
            TransactionKey::Client { method: m, .. }
            | TransactionKey::Server { method: m, .. }
            | TransactionKey::Rfc2543 { method: m, .. } => *m = method.to_owned(),
        }
        key
    }

    /// The client-transaction key of a received response (§17.1.3): top Via branch and CSeq
    /// method.
    pub fn from_response(response: &Response) -> Result<Self, TransactionError> {
        let via = top_via(response)?;
        let branch = rfc3261_branch(&via)?;
        let cseq = cseq(response)?;
        Ok(TransactionKey::Client {
            branch,
            method: cseq.method.to_string(),
        })
    }

    /// The client key of a request about to be sent.
    fn client_for(request: &Request) -> Result<Self, TransactionError> {
        let via = top_via(request)?;
        Ok(TransactionKey::Client {
            branch: rfc3261_branch(&via)?,
            method: request.method.to_string(),
        })
    }

    /// The top Via branch of this key (empty for an RFC 2543 key).
    pub fn branch(&self) -> &str {
        match self {
            TransactionKey::Client { branch, .. } | TransactionKey::Server { branch, .. } => branch,
            TransactionKey::Rfc2543 { .. } => "",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Client transactions
// ---------------------------------------------------------------------------------------------

/// State of a client transaction (RFC 3261 figures 5 and 6, RFC 6026 figure 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientState {
    /// INVITE sent, no response yet (timers A and B run).
    Calling,
    /// Non-INVITE sent, no response yet (timers E and F run).
    Trying,
    /// A provisional response arrived.
    Proceeding,
    /// A final response arrived (non-2xx for INVITE, any for non-INVITE); absorbing
    /// retransmissions (timer D or K).
    Completed,
    /// INVITE only: a 2xx arrived; further 2xx are passed to the TU until timer M.
    Accepted,
    /// Done; drain the outputs and drop the transaction.
    Terminated,
}

/// What a client transaction reports to its TU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent {
    /// A 1xx response (every one, retransmissions included).
    Provisional(Response),
    /// The first final response.
    Final(Response),
    /// INVITE only: a 2xx received after the first final — a retransmission, or a 2xx from
    /// another fork (compare the To tag). The TU acknowledges it (the ACK for 2xx is not sent by
    /// the transaction).
    Retransmitted2xx(Response),
    /// Timer B or F fired without a final response.
    Timeout,
    /// The driver reported that the request or ACK could not be sent.
    TransportError,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Invite,
    NonInvite,
}

/// A client transaction (RFC 3261 §17.1.1 for INVITE, §17.1.2 for the others).
///
/// # Drive contract
///
/// 1. [`ClientTransaction::new`] validates the request (a top Via with a `z9hG4bK` branch,
///    From, To, Call-ID, a CSeq whose method is the request's, not ACK) and queues its first
///    transmission. An error means nothing was created.
/// 2. After `new` and after every `handle_*` call, drain [`poll_transmit`] (bytes to send to the
///    transaction's destination, in order) and [`poll_event`] until both return `None`, then
///    wait until [`poll_timeout`] (or the next input) and call [`handle_timeout`] with the
///    current time. Calling `handle_timeout` early or late is harmless: only due timers fire.
/// 3. Feed every response routed to this transaction (by [`TransactionKey::from_response`]) to
///    [`handle_response`]. An `Err` means the response was not for this transaction or was
///    malformed; it was ignored and the state is unchanged.
/// 4. Report a failed send with [`handle_transport_error`].
/// 5. Once [`is_terminated`] is true, drain the outputs one last time (an ACK may still be
///    queued) and drop the transaction. Further responses yield [`TransactionError::Terminated`].
///
/// Retransmissions (timers A and E) happen only when `reliable` is false. An INVITE in
/// Proceeding has no timer (§17.1.1.2): ending a call that rings forever is the TU's business
/// (timer C, CANCEL), and the CANCEL is a separate non-INVITE client transaction.
///
/// [`poll_transmit`]: ClientTransaction::poll_transmit
/// [`poll_event`]: ClientTransaction::poll_event
/// [`poll_timeout`]: ClientTransaction::poll_timeout
/// [`handle_timeout`]: ClientTransaction::handle_timeout
/// [`handle_response`]: ClientTransaction::handle_response
/// [`handle_transport_error`]: ClientTransaction::handle_transport_error
/// [`is_terminated`]: ClientTransaction::is_terminated
pub struct ClientTransaction {
    key: TransactionKey,
    kind: Kind,
    reliable: bool,
    timers: Timers,
    state: ClientState,
    request: Request,
    request_bytes: Bytes,
    ack_bytes: Option<Bytes>,
    transmits: VecDeque<Bytes>,
    events: VecDeque<ClientEvent>,
    /// Timer A or E: next retransmission, and the interval that led to it.
    retransmit: Option<(Instant, Duration)>,
    /// Timer B or F.
    timeout: Option<Instant>,
    /// Timer D, K or M: when to move to Terminated.
    linger: Option<Instant>,
}

impl ClientTransaction {
    /// Creates the transaction and queues the request's first transmission.
    ///
    /// Content-Length is set to the body's length before the request is serialised (once; the
    /// same bytes are retransmitted).
    pub fn new(
        now: Instant,
        request: Request,
        reliable: bool,
        timers: Timers,
    ) -> Result<Self, TransactionError> {
        timers.validate()?;
        if request.method == Method::Ack {
            return Err(TransactionError::AckCreatesNoTransaction);
        }
        let key = TransactionKey::client_for(&request)?;
        let cs = cseq(&request)?;
        if cs.method != request.method {
            return Err(TransactionError::CSeqMethodMismatch {
                cseq: cs.method.to_string(),
                method: request.method.to_string(),
            });
        }
        request
            .from_header()
            .map_err(|_| TransactionError::MissingHeader("From"))?;
        request
            .to_header()
            .map_err(|_| TransactionError::MissingHeader("To"))?;
        request
            .call_id_header()
            .map_err(|_| TransactionError::MissingHeader("Call-ID"))?;

        let kind = if request.method == Method::Invite {
            Kind::Invite
        } else {
            Kind::NonInvite
        };
        let request_bytes = super::message::request_bytes(&request);
        let retransmit = (!reliable)
            .then(|| after(now, timers.t1).map(|at| (at, timers.t1)))
            .flatten();
        let mut tx = ClientTransaction {
            key,
            kind,
            reliable,
            timers,
            state: match kind {
                Kind::Invite => ClientState::Calling,
                Kind::NonInvite => ClientState::Trying,
            },
            request,
            request_bytes: request_bytes.clone(),
            ack_bytes: None,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            retransmit,
            timeout: after(now, timers.t1x64()),
            linger: None,
        };
        tx.transmits.push_back(request_bytes);
        tracing::debug!(key = %tx.key, state = ?tx.state, "client transaction created");
        Ok(tx)
    }

    /// This transaction's routing key.
    pub fn key(&self) -> &TransactionKey {
        &self.key
    }

    /// Current state.
    pub fn state(&self) -> ClientState {
        self.state
    }

    /// The request as sent (Content-Length corrected).
    pub fn request(&self) -> &Request {
        &self.request
    }

    /// True once the transaction takes no more input.
    pub fn is_terminated(&self) -> bool {
        self.state == ClientState::Terminated
    }

    /// Next bytes to send to the transaction's destination.
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        self.transmits.pop_front()
    }

    /// Next event for the TU.
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    /// The earliest instant at which [`ClientTransaction::handle_timeout`] has work to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        [self.retransmit.map(|(at, _)| at), self.timeout, self.linger]
            .into_iter()
            .flatten()
            .min()
    }

    /// Feeds a response routed to this transaction.
    ///
    /// Errors (state unchanged): the top Via branch or CSeq method is not this transaction's,
    /// the status is outside 100–699, a header the ACK needs is missing, or the transaction is
    /// terminated. Late responses in Completed are absorbed (`Ok`) — for INVITE after re-sending
    /// the ACK.
    pub fn handle_response(
        &mut self,
        now: Instant,
        response: Response,
    ) -> Result<(), TransactionError> {
        if self.is_terminated() {
            return Err(TransactionError::Terminated);
        }
        let got = TransactionKey::from_response(&response)?;
        if got != self.key {
            return Err(TransactionError::NotThisTransaction {
                expected: Box::new(self.key.clone()),
                got: Box::new(got),
            });
        }
        let code = response.status_code.code();
        if !(100..700).contains(&code) {
            return Err(TransactionError::InvalidStatus(code));
        }
        match self.kind {
            Kind::Invite => self.invite_response(now, code, response),
            Kind::NonInvite => {
                self.non_invite_response(now, code, response);
                Ok(())
            }
        }
    }

    fn invite_response(
        &mut self,
        now: Instant,
        code: u16,
        response: Response,
    ) -> Result<(), TransactionError> {
        use ClientState::*;
        match (self.state, code) {
            (Calling | Proceeding, 100..=199) => {
                // Timer A stops; timer B only guards Calling (§17.1.1.2).
                self.retransmit = None;
                self.timeout = None;
                self.set_state(Proceeding);
                self.events.push_back(ClientEvent::Provisional(response));
            }
            (Calling | Proceeding, 200..=299) => {
                self.retransmit = None;
                self.timeout = None;
                self.linger = after(now, self.timers.t1x64()); // timer M
                self.set_state(Accepted);
                self.events.push_back(ClientEvent::Final(response));
            }
            (Calling | Proceeding, _) => {
                let ack = self.build_ack(&response)?;
                self.ack_bytes = Some(ack.clone());
                self.transmits.push_back(ack);
                self.retransmit = None;
                self.timeout = None;
                self.events.push_back(ClientEvent::Final(response));
                if self.reliable {
                    self.set_state(Terminated);
                } else {
                    self.linger = after(now, self.timers.timer_d());
                    self.set_state(Completed);
                }
            }
            (Accepted, 200..=299) => {
                self.events
                    .push_back(ClientEvent::Retransmitted2xx(response));
            }
            (Completed, 300..=699) => {
                if let Some(ack) = &self.ack_bytes {
                    self.transmits.push_back(ack.clone());
                }
            }
            // Late provisionals, or a non-2xx after a 2xx (RFC 6026 absorbs it).
            _ => {}
        }
        Ok(())
    }

    fn non_invite_response(&mut self, now: Instant, code: u16, response: Response) {
        use ClientState::*;
        match (self.state, code) {
            (Trying | Proceeding, 100..=199) => {
                self.set_state(Proceeding);
                self.events.push_back(ClientEvent::Provisional(response));
            }
            (Trying | Proceeding, _) => {
                self.retransmit = None;
                self.timeout = None;
                self.events.push_back(ClientEvent::Final(response));
                if self.reliable {
                    self.set_state(Terminated);
                } else {
                    self.linger = after(now, self.timers.t4); // timer K
                    self.set_state(Completed);
                }
            }
            _ => {}
        }
    }

    /// Fires the timers due at `now`. Harmless when nothing is due or after termination.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.is_terminated() {
            return;
        }
        if self.linger.is_some_and(|at| at <= now) {
            self.set_state(ClientState::Terminated);
            return;
        }
        if self.timeout.is_some_and(|at| at <= now) {
            self.events.push_back(ClientEvent::Timeout);
            self.set_state(ClientState::Terminated);
            return;
        }
        if let Some((at, interval)) = self.retransmit {
            if at <= now {
                self.transmits.push_back(self.request_bytes.clone());
                let next = match (self.kind, self.state) {
                    (Kind::Invite, _) => interval.saturating_mul(2),
                    (Kind::NonInvite, ClientState::Proceeding) => self.timers.t2,
                    (Kind::NonInvite, _) => interval.saturating_mul(2).min(self.timers.t2),
                };
                tracing::trace!(key = %self.key, ?next, "request retransmitted");
                self.retransmit = after(now, next).map(|at| (at, next));
            }
        }
    }

    /// The driver could not send this transaction's request or ACK: the TU gets
    /// [`ClientEvent::TransportError`] and the transaction terminates. No-op once terminated.
    pub fn handle_transport_error(&mut self, _now: Instant) {
        if self.is_terminated() {
            return;
        }
        self.events.push_back(ClientEvent::TransportError);
        self.set_state(ClientState::Terminated);
    }

    fn set_state(&mut self, state: ClientState) {
        if state != self.state {
            tracing::debug!(key = %self.key, from = ?self.state, to = ?state, "client transaction");
            self.state = state;
        }
        if state == ClientState::Terminated {
            self.retransmit = None;
            self.timeout = None;
            self.linger = None;
        }
    }

    /// The ACK for a non-2xx final response (§17.1.1.3).
    fn build_ack(&self, response: &Response) -> Result<Bytes, TransactionError> {
        let req = &self.request;
        let to = response
            .to_header()
            .map_err(|_| TransactionError::MissingHeader("To"))?
            .clone();
        let mut headers = rsip::Headers::default();
        // Exactly one Via, even when the request's first Via line carried several values.
        if let Some(value) = top_via_value(req) {
            headers.push(rsip::headers::Via::new(first_list_value(&value)).into());
        }
        for h in req.headers.iter() {
            if matches!(h, Header::Route(_)) {
                headers.push(h.clone());
            }
        }
        let max_forwards = req
            .max_forwards_header()
            .cloned()
            .unwrap_or_else(|_| rsip::headers::MaxForwards::new("70"));
        headers.push(max_forwards.into());
        // new() checked From, Call-ID and CSeq.
        if let Ok(from) = req.from_header() {
            headers.push(from.clone().into());
        }
        headers.push(to.into());
        if let Ok(call_id) = req.call_id_header() {
            headers.push(call_id.clone().into());
        }
        let seq = cseq(req)?.seq;
        headers.push(
            rsip::typed::CSeq {
                seq,
                method: Method::Ack,
            }
            .into(),
        );
        let ack = Request {
            method: Method::Ack,
            uri: req.uri.clone(),
            version: req.version.clone(),
            headers,
            body: Vec::new(),
        };
        Ok(super::message::request_bytes(&ack))
    }
}

// ---------------------------------------------------------------------------------------------
// Server transactions
// ---------------------------------------------------------------------------------------------

/// State of a server transaction (RFC 3261 figures 7 and 8, RFC 6026 figure 7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerState {
    /// Non-INVITE received, nothing sent yet.
    Trying,
    /// INVITE received (or a provisional sent for non-INVITE).
    Proceeding,
    /// A final response was sent (non-2xx for INVITE): retransmitting it (timer G) until ACK or
    /// timer H; for non-INVITE, absorbing retransmissions until timer J.
    Completed,
    /// INVITE only: the ACK for the non-2xx arrived; absorbing ACKs until timer I.
    Confirmed,
    /// INVITE only: a 2xx was sent; the TU retransmits it through [`ServerTransaction::respond`]
    /// until timer L.
    Accepted,
    /// Done; drain the outputs and drop the transaction.
    Terminated,
}

/// What a server transaction reports to its TU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerEvent {
    /// The ACK for the non-2xx final response arrived (only the first one is reported).
    AckReceived(Request),
    /// An ACK with this transaction's key arrived in Accepted (a UAC that reused the INVITE
    /// branch for the 2xx ACK). It belongs to the dialog layer.
    AckFor2xx(Request),
    /// Timer H fired: no ACK for the non-2xx final response.
    Timeout,
    /// The driver reported that a response could not be sent.
    TransportError,
}

/// A server transaction (RFC 3261 §17.2.1 for INVITE, §17.2.2 for the others).
///
/// # Drive contract
///
/// 1. The endpoint computes [`TransactionKey::from_request`] for each received request. When no
///    transaction has that key and the request is not an ACK, it creates one with
///    [`ServerTransaction::new`] and hands the request to the TU. Otherwise it feeds the request
///    to [`handle_request`] of the matching transaction (a retransmission, or the ACK of an
///    INVITE's non-2xx response).
/// 2. The TU answers with [`respond`] (a 100 Trying for INVITE is the TU's choice). A response
///    that does not carry this transaction's branch and method, a second final response, or any
///    response after termination is refused with an error and not sent. In Accepted the TU's
///    2xx retransmissions are accepted and sent.
/// 3. After each call, drain [`poll_transmit`] (bytes for the request's source; the driver
///    applies §18.2.2 response routing) and [`poll_event`], then wait until [`poll_timeout`] and
///    call [`handle_timeout`].
/// 4. Report a failed send with [`handle_transport_error`].
/// 5. Once [`is_terminated`], drain the outputs and drop the transaction.
///
/// [`handle_request`]: ServerTransaction::handle_request
/// [`respond`]: ServerTransaction::respond
/// [`poll_transmit`]: ServerTransaction::poll_transmit
/// [`poll_event`]: ServerTransaction::poll_event
/// [`poll_timeout`]: ServerTransaction::poll_timeout
/// [`handle_timeout`]: ServerTransaction::handle_timeout
/// [`handle_transport_error`]: ServerTransaction::handle_transport_error
/// [`is_terminated`]: ServerTransaction::is_terminated
pub struct ServerTransaction {
    key: TransactionKey,
    kind: Kind,
    reliable: bool,
    timers: Timers,
    state: ServerState,
    request: Request,
    /// The last response sent (provisional or final), re-sent on request retransmissions.
    last_response: Option<Bytes>,
    final_code: Option<u16>,
    transmits: VecDeque<Bytes>,
    events: VecDeque<ServerEvent>,
    /// Timer G: next retransmission of the final response and its interval.
    retransmit: Option<(Instant, Duration)>,
    /// Timer H.
    timeout: Option<Instant>,
    /// Timer I, J or L.
    linger: Option<Instant>,
}

impl ServerTransaction {
    /// Creates the transaction for a received request (not an ACK).
    ///
    /// Errors: ACK, a top Via without an RFC 3261 branch, or a CSeq whose method is not the
    /// request's.
    pub fn new(
        _now: Instant,
        request: Request,
        reliable: bool,
        timers: Timers,
    ) -> Result<Self, TransactionError> {
        timers.validate()?;
        if request.method == Method::Ack {
            return Err(TransactionError::AckCreatesNoTransaction);
        }
        let key = TransactionKey::from_request(&request)?;
        let cs = cseq(&request)?;
        if cs.method != request.method {
            return Err(TransactionError::CSeqMethodMismatch {
                cseq: cs.method.to_string(),
                method: request.method.to_string(),
            });
        }
        let kind = if request.method == Method::Invite {
            Kind::Invite
        } else {
            Kind::NonInvite
        };
        let tx = ServerTransaction {
            key,
            kind,
            reliable,
            timers,
            state: match kind {
                Kind::Invite => ServerState::Proceeding,
                Kind::NonInvite => ServerState::Trying,
            },
            request,
            last_response: None,
            final_code: None,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            retransmit: None,
            timeout: None,
            linger: None,
        };
        tracing::debug!(key = %tx.key, state = ?tx.state, "server transaction created");
        Ok(tx)
    }

    /// This transaction's routing key.
    pub fn key(&self) -> &TransactionKey {
        &self.key
    }

    /// Current state.
    pub fn state(&self) -> ServerState {
        self.state
    }

    /// The request that created the transaction.
    pub fn request(&self) -> &Request {
        &self.request
    }

    /// True once the transaction takes no more input.
    pub fn is_terminated(&self) -> bool {
        self.state == ServerState::Terminated
    }

    /// Next bytes to send towards the request's source.
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        self.transmits.pop_front()
    }

    /// Next event for the TU.
    pub fn poll_event(&mut self) -> Option<ServerEvent> {
        self.events.pop_front()
    }

    /// The earliest instant at which [`ServerTransaction::handle_timeout`] has work to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        [self.retransmit.map(|(at, _)| at), self.timeout, self.linger]
            .into_iter()
            .flatten()
            .min()
    }

    /// Feeds a request whose key is this transaction's: a retransmission of the original
    /// request (the last response is re-sent, if any) or, for INVITE, an ACK.
    ///
    /// Errors (nothing applied): a different key, a method that is neither the original nor
    /// ACK, or a terminated transaction.
    pub fn handle_request(
        &mut self,
        now: Instant,
        request: Request,
    ) -> Result<(), TransactionError> {
        if self.is_terminated() {
            return Err(TransactionError::Terminated);
        }
        let got = TransactionKey::from_request(&request)?;
        if got != self.key {
            return Err(TransactionError::NotThisTransaction {
                expected: Box::new(self.key.clone()),
                got: Box::new(got),
            });
        }
        // Equal keys mean the same method, or an ACK for an INVITE transaction.
        let is_ack = request.method == Method::Ack;
        use ServerState::*;
        match (self.state, is_ack) {
            (Completed, true) => {
                self.retransmit = None;
                self.timeout = None;
                self.events.push_back(ServerEvent::AckReceived(request));
                if self.reliable {
                    self.set_state(Terminated);
                } else {
                    self.linger = after(now, self.timers.t4); // timer I
                    self.set_state(Confirmed);
                }
            }
            (Accepted, true) => self.events.push_back(ServerEvent::AckFor2xx(request)),
            // An ACK before any final, or a repeated ACK in Confirmed: absorbed.
            (_, true) => {}
            // Retransmission: re-send what we last sent. Accepted absorbs it (RFC 6026: the TU
            // retransmits the 2xx on its own schedule); Confirmed absorbs it too.
            (Proceeding | Completed, false) => {
                if let Some(last) = &self.last_response {
                    self.transmits.push_back(last.clone());
                }
            }
            (_, false) => {}
        }
        Ok(())
    }

    /// Sends a response from the TU.
    ///
    /// Errors (nothing sent): the response's top Via branch or CSeq method is not this
    /// transaction's, the status is outside 100–699, a final response was already sent
    /// ([`TransactionError::FinalAlreadySent`]; in Accepted only further 2xx are allowed), or the
    /// transaction is terminated.
    pub fn respond(&mut self, now: Instant, response: Response) -> Result<(), TransactionError> {
        if self.is_terminated() {
            return Err(TransactionError::Terminated);
        }
        let via = top_via(&response)?;
        let branch = via.branch.clone().unwrap_or_default();
        let cs = cseq(&response)?;
        let same_via = match &self.key {
            // No branch to compare: the answer copies the request's top Via whole.
            TransactionKey::Rfc2543 { top_via, .. } => via.value == *top_via,
            key => branch == key.branch(),
        };
        if !same_via || cs.method != self.request.method {
            return Err(TransactionError::NotThisTransaction {
                expected: Box::new(self.key.clone()),
                got: Box::new(TransactionKey::Client {
                    branch,
                    method: cs.method.to_string(),
                }),
            });
        }
        let code = response.status_code.code();
        if !(100..700).contains(&code) {
            return Err(TransactionError::InvalidStatus(code));
        }
        use ServerState::*;
        let final_sent = self.final_code.unwrap_or(0);
        match (self.kind, self.state, code) {
            (_, Trying | Proceeding, 100..=199) => {
                let bytes = super::message::response_bytes(&response);
                self.send_kept(bytes);
                self.set_state(Proceeding);
            }
            (Kind::Invite, Proceeding, 200..=299) => {
                let bytes = super::message::response_bytes(&response);
                self.transmits.push_back(bytes);
                self.final_code = Some(code);
                self.linger = after(now, self.timers.t1x64()); // timer L
                self.set_state(Accepted);
            }
            (Kind::Invite, Accepted, 200..=299) => {
                self.transmits
                    .push_back(super::message::response_bytes(&response));
            }
            (Kind::Invite, Proceeding, _) => {
                let bytes = super::message::response_bytes(&response);
                self.send_kept(bytes);
                self.final_code = Some(code);
                if !self.reliable {
                    self.retransmit = after(now, self.timers.t1).map(|at| (at, self.timers.t1));
                    // timer G
                }
                self.timeout = after(now, self.timers.t1x64()); // timer H
                self.set_state(Completed);
            }
            (Kind::NonInvite, Trying | Proceeding, _) => {
                let bytes = super::message::response_bytes(&response);
                self.send_kept(bytes);
                self.final_code = Some(code);
                if self.reliable {
                    self.set_state(Terminated);
                } else {
                    self.linger = after(now, self.timers.t1x64()); // timer J
                    self.set_state(Completed);
                }
            }
            _ => return Err(TransactionError::FinalAlreadySent(final_sent)),
        }
        Ok(())
    }

    /// Fires the timers due at `now`. Harmless when nothing is due or after termination.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.is_terminated() {
            return;
        }
        if self.linger.is_some_and(|at| at <= now) {
            self.set_state(ServerState::Terminated);
            return;
        }
        if self.timeout.is_some_and(|at| at <= now) {
            self.events.push_back(ServerEvent::Timeout);
            self.set_state(ServerState::Terminated);
            return;
        }
        if let Some((at, interval)) = self.retransmit {
            if at <= now {
                if let Some(last) = &self.last_response {
                    self.transmits.push_back(last.clone());
                }
                let next = interval.saturating_mul(2).min(self.timers.t2);
                self.retransmit = after(now, next).map(|at| (at, next));
            }
        }
    }

    /// The driver could not send a response: the TU gets [`ServerEvent::TransportError`] and
    /// the transaction terminates (§17.2.4; trying RFC 3263 alternatives is the driver's job
    /// before it reports). No-op once terminated.
    pub fn handle_transport_error(&mut self, _now: Instant) {
        if self.is_terminated() {
            return;
        }
        self.events.push_back(ServerEvent::TransportError);
        self.set_state(ServerState::Terminated);
    }

    fn send_kept(&mut self, bytes: Bytes) {
        self.last_response = Some(bytes.clone());
        self.transmits.push_back(bytes);
    }

    fn set_state(&mut self, state: ServerState) {
        if state != self.state {
            tracing::debug!(key = %self.key, from = ?self.state, to = ?state, "server transaction");
            self.state = state;
        }
        if state == ServerState::Terminated {
            self.retransmit = None;
            self.timeout = None;
            self.linger = None;
        }
    }
}

// `Debug` leaves the messages out: a request may carry an Authorization header with a digest
// response, which must never reach a log (STYLE.md, lesson 11).
impl fmt::Debug for ClientTransaction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTransaction")
            .field("key", &self.key)
            .field("state", &self.state)
            .field("reliable", &self.reliable)
            .field("next_timeout", &self.poll_timeout())
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for ServerTransaction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTransaction")
            .field("key", &self.key)
            .field("state", &self.state)
            .field("reliable", &self.reliable)
            .field("next_timeout", &self.poll_timeout())
            .finish_non_exhaustive()
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers over rsip messages
// ---------------------------------------------------------------------------------------------

/// `now + d`, or never (None) if that is beyond what `Instant` can represent.
fn after(now: Instant, d: Duration) -> Option<Instant> {
    now.checked_add(d)
}

/// The parts of a Via value that transactions key on. Read as text rather than with rsip's
/// typed Via, which splits `host:port` at the first colon and so fails on every IPv6
/// reference (`SIP/2.0/UDP [2001:db8::1]:5060`, RFC 5118): such requests went unanswered.
#[derive(Debug, Clone, PartialEq, Eq)]
struct TopVia {
    /// The whole value (one Via, parameters included), as the RFC 2543 key compares it.
    value: String,
    /// `host[:port]`, lowercased.
    sent_by: String,
    branch: Option<String>,
}

impl TopVia {
    /// Reads `SIP/2.0/UDP host[:port][;params]` (the parser has removed LWS around `/`).
    fn parse(value: &str) -> Result<Self, TransactionError> {
        let bad = |reason: &str| TransactionError::BadHeader {
            header: "Via",
            reason: reason.to_owned(),
        };
        let value = value.trim();
        let (proto, rest) = value
            .split_once([' ', '\t'])
            .ok_or_else(|| bad("no sent-by"))?;
        let mut parts = proto.split('/');
        let well_formed = matches!(
            (parts.next(), parts.next(), parts.next(), parts.next()),
            (Some(n), Some(v), Some(t), None) if !n.is_empty() && !v.is_empty() && !t.is_empty()
        );
        if !well_formed {
            return Err(bad("sent-protocol is not name/version/transport"));
        }
        let mut fields = rest.trim_start().split(';');
        let sent_by = fields.next().unwrap_or_default().trim();
        if sent_by.is_empty() {
            return Err(bad("empty sent-by"));
        }
        let branch = fields
            .find_map(|p| {
                let (k, v) = p.split_once('=')?;
                k.trim().eq_ignore_ascii_case("branch").then(|| v.trim())
            })
            .filter(|b| !b.is_empty())
            .map(str::to_owned);
        Ok(Self {
            value: value.to_owned(),
            sent_by: sent_by.to_ascii_lowercase(),
            branch,
        })
    }
}

/// The top Via of a message. A header line carrying several comma-separated Via values
/// yields its first value.
fn top_via<M: HeadersExt>(msg: &M) -> Result<TopVia, TransactionError> {
    let value = top_via_value(msg).ok_or(TransactionError::MissingHeader("Via"))?;
    TopVia::parse(first_list_value(&value))
}

/// The value of the first Via header line (full or compact form), possibly a list.
fn top_via_value<M: HeadersExt>(msg: &M) -> Option<String> {
    msg.headers().iter().find_map(|h| match h {
        Header::Via(v) => Some(v.value().to_owned()),
        Header::Other(name, v) if name.eq_ignore_ascii_case("v") => Some(v.clone()),
        _ => None,
    })
}

/// The first element of a comma-separated header value, respecting quoted strings.
fn first_list_value(value: &str) -> &str {
    let mut in_quotes = false;
    let mut escaped = false;
    for (i, c) in value.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if in_quotes => escaped = true,
            '"' => in_quotes = !in_quotes,
            ',' if !in_quotes => return value[..i].trim(),
            _ => {}
        }
    }
    value.trim()
}

fn rfc3261_branch(via: &TopVia) -> Result<String, TransactionError> {
    let branch = via.branch.clone().ok_or(TransactionError::MissingBranch)?;
    if !branch.starts_with(MAGIC_COOKIE) {
        return Err(TransactionError::NoMagicCookie(branch));
    }
    Ok(branch)
}

fn cseq<M: HeadersExt>(msg: &M) -> Result<rsip::typed::CSeq, TransactionError> {
    msg.cseq_header()
        .map_err(|_| TransactionError::MissingHeader("CSeq"))?
        .typed()
        .map_err(|e| TransactionError::BadHeader {
            header: "CSeq",
            reason: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn is_via(h: &Header) -> bool {
        match h {
            Header::Via(_) => true,
            Header::Other(name, _) => name.eq_ignore_ascii_case("v"),
            _ => false,
        }
    }

    fn parse(text: &str) -> rsip::SipMessage {
        let text = text.replace('\n', "\r\n");
        rsip::SipMessage::try_from(text.as_str()).expect("test message parses")
    }

    fn request(method: &str, branch: &str) -> Request {
        let text = format!(
            "{method} sip:bob@127.0.0.1:5070 SIP/2.0
Via: SIP/2.0/UDP 127.0.0.1:5060;branch={branch};rport
Via: SIP/2.0/UDP 10.0.0.9:5060;branch=z9hG4bKupstream
Route: <sip:p1.example.com;lr>
Route: <sip:p2.example.com;lr>
Max-Forwards: 69
From: Alice <sip:alice@127.0.0.1>;tag=1928301774
To: Bob <sip:bob@127.0.0.1>
Call-ID: a84b4c76e66710@127.0.0.1
CSeq: 314159 {method}
Contact: <sip:alice@127.0.0.1:5060>
Content-Type: application/sdp
Content-Length: 99

v=0
"
        );
        Request::try_from(parse(&text)).unwrap()
    }

    fn invite() -> Request {
        request("INVITE", "z9hG4bK776asdhds")
    }

    fn response(code: u16, branch: &str, method: &str) -> Response {
        let text = format!(
            "SIP/2.0 {code} Whatever
Via: SIP/2.0/UDP 127.0.0.1:5060;branch={branch};rport=5060
From: Alice <sip:alice@127.0.0.1>;tag=1928301774
To: Bob <sip:bob@127.0.0.1>;tag=a6c85cf
Call-ID: a84b4c76e66710@127.0.0.1
CSeq: 314159 {method}
Content-Length: 0

"
        );
        Response::try_from(parse(&text)).unwrap()
    }

    fn invite_response(code: u16) -> Response {
        response(code, "z9hG4bK776asdhds", "INVITE")
    }

    fn drain_client(tx: &mut ClientTransaction) -> (Vec<Bytes>, Vec<ClientEvent>) {
        let mut out = Vec::new();
        while let Some(b) = tx.poll_transmit() {
            out.push(b);
        }
        let mut ev = Vec::new();
        while let Some(e) = tx.poll_event() {
            ev.push(e);
        }
        (out, ev)
    }

    /// Runs the timers up to `t0 + until`; returns (offset, bytes) of each transmission and the
    /// events, and the offset at which the transaction terminated.
    fn run_client(
        tx: &mut ClientTransaction,
        t0: Instant,
        until: Duration,
    ) -> (Vec<Duration>, Vec<ClientEvent>, Option<Duration>) {
        let mut sends = Vec::new();
        let mut events = Vec::new();
        let mut ended = None;
        while let Some(at) = tx.poll_timeout() {
            if at > t0 + until {
                break;
            }
            tx.handle_timeout(at);
            let (out, ev) = drain_client(tx);
            sends.extend(out.iter().map(|_| at - t0));
            events.extend(ev);
            if tx.is_terminated() {
                ended = Some(at - t0);
            }
        }
        (sends, events, ended)
    }

    fn run_server(
        tx: &mut ServerTransaction,
        t0: Instant,
        until: Duration,
    ) -> (Vec<Duration>, Vec<ServerEvent>, Option<Duration>) {
        let mut sends = Vec::new();
        let mut events = Vec::new();
        let mut ended = None;
        while let Some(at) = tx.poll_timeout() {
            if at > t0 + until {
                break;
            }
            tx.handle_timeout(at);
            while tx.poll_transmit().is_some() {
                sends.push(at - t0);
            }
            while let Some(e) = tx.poll_event() {
                events.push(e);
            }
            if tx.is_terminated() {
                ended = Some(at - t0);
            }
        }
        (sends, events, ended)
    }

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    fn text(b: &Bytes) -> String {
        String::from_utf8(b.to_vec()).unwrap()
    }

    #[test]
    fn invite_over_udp_doubles_timer_a_and_times_out_with_timer_b() {
        let t0 = Instant::now();
        let mut tx = ClientTransaction::new(t0, invite(), false, Timers::default()).unwrap();
        assert_eq!(tx.state(), ClientState::Calling);
        let (first, _) = drain_client(&mut tx);
        assert_eq!(first.len(), 1);
        let (sends, events, ended) = run_client(&mut tx, t0, secs(100.0));
        // Timer A: intervals T1, 2T1, 4T1, ... after the first send at 0.
        let expected: Vec<Duration> = [0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
            .iter()
            .map(|s| secs(*s))
            .collect();
        assert_eq!(sends, expected);
        assert_eq!(events, vec![ClientEvent::Timeout]);
        assert_eq!(ended, Some(secs(32.0))); // timer B = 64·T1
        assert!(tx.poll_timeout().is_none());
    }

    #[test]
    fn wire_form_has_crlf_and_correct_content_length_and_same_bytes_on_retransmit() {
        let t0 = Instant::now();
        let mut tx = ClientTransaction::new(t0, invite(), false, Timers::default()).unwrap();
        let first = tx.poll_transmit().unwrap();
        let s = text(&first);
        assert!(s.starts_with("INVITE sip:bob@127.0.0.1:5070 SIP/2.0\r\n"));
        assert!(s.contains("\r\nContent-Length: 5\r\n"), "{s}");
        assert!(s.ends_with("\r\n\r\nv=0\r\n"));
        assert!(!s.replace("\r\n", "").contains('\n'));
        tx.handle_timeout(t0 + 500 * MS);
        assert_eq!(tx.poll_transmit().unwrap(), first);
        // The bytes parse back.
        let back = Request::try_from(first.to_vec()).unwrap();
        assert_eq!(back.body, b"v=0\r\n");
    }

    #[test]
    fn reliable_transport_never_retransmits() {
        let t0 = Instant::now();
        let mut tx = ClientTransaction::new(t0, invite(), true, Timers::default()).unwrap();
        drain_client(&mut tx);
        let (sends, events, ended) = run_client(&mut tx, t0, secs(100.0));
        assert!(sends.is_empty());
        assert_eq!(events, vec![ClientEvent::Timeout]);
        assert_eq!(ended, Some(secs(32.0)));

        let mut tx = ClientTransaction::new(
            t0,
            request("OPTIONS", "z9hG4bKopt"),
            true,
            Timers::default(),
        )
        .unwrap();
        drain_client(&mut tx);
        let (sends, events, ended) = run_client(&mut tx, t0, secs(100.0));
        assert!(sends.is_empty());
        assert_eq!(events, vec![ClientEvent::Timeout]);
        assert_eq!(ended, Some(secs(32.0)));
    }

    #[test]
    fn provisional_stops_invite_retransmission_and_timer_b() {
        let t0 = Instant::now();
        let mut tx = ClientTransaction::new(t0, invite(), false, Timers::default()).unwrap();
        drain_client(&mut tx);
        tx.handle_timeout(t0 + 500 * MS);
        assert_eq!(drain_client(&mut tx).0.len(), 1);
        tx.handle_response(t0 + 600 * MS, invite_response(180))
            .unwrap();
        assert_eq!(tx.state(), ClientState::Proceeding);
        let (out, ev) = drain_client(&mut tx);
        assert!(out.is_empty());
        assert!(matches!(&ev[..], [ClientEvent::Provisional(r)] if r.status_code.code() == 180));
        assert_eq!(tx.poll_timeout(), None);
        let (sends, events, _) = run_client(&mut tx, t0, secs(100.0));
        assert!(sends.is_empty() && events.is_empty());
        assert_eq!(tx.state(), ClientState::Proceeding);
    }

    #[test]
    fn non_2xx_final_builds_ack_resends_it_and_terminates_after_timer_d() {
        let t0 = Instant::now();
        let mut tx = ClientTransaction::new(t0, invite(), false, Timers::default()).unwrap();
        drain_client(&mut tx);
        tx.handle_response(t0 + 100 * MS, invite_response(183))
            .unwrap();
        tx.handle_response(t0 + 200 * MS, invite_response(486))
            .unwrap();
        assert_eq!(tx.state(), ClientState::Completed);
        let (out, ev) = drain_client(&mut tx);
        assert_eq!(ev.len(), 2);
        assert!(matches!(&ev[1], ClientEvent::Final(r) if r.status_code.code() == 486));
        assert_eq!(out.len(), 1);
        let ack_bytes = out[0].clone();
        let ack = Request::try_from(ack_bytes.to_vec()).unwrap();
        assert_eq!(ack.method, Method::Ack);
        assert_eq!(ack.uri.to_string(), "sip:bob@127.0.0.1:5070");
        let vias: Vec<_> = ack.headers.iter().filter(|h| is_via(h)).collect();
        assert_eq!(vias.len(), 1, "one Via: {}", text(&ack_bytes));
        assert_eq!(top_via(&ack).unwrap().branch.unwrap(), "z9hG4bK776asdhds");
        let routes: Vec<String> = ack
            .headers
            .iter()
            .filter_map(|h| match h {
                Header::Route(r) => Some(r.value().to_owned()),
                _ => None,
            })
            .collect();
        assert_eq!(
            routes,
            ["<sip:p1.example.com;lr>", "<sip:p2.example.com;lr>"]
        );
        assert_eq!(ack.max_forwards_header().unwrap().value(), "69");
        assert_eq!(
            ack.call_id_header().unwrap().value(),
            "a84b4c76e66710@127.0.0.1"
        );
        assert_eq!(
            ack.from_header().unwrap().value(),
            "Alice <sip:alice@127.0.0.1>;tag=1928301774"
        );
        assert_eq!(
            ack.to_header().unwrap().value(),
            "Bob <sip:bob@127.0.0.1>;tag=a6c85cf"
        );
        assert_eq!(ack.cseq_header().unwrap().value(), "314159 ACK");
        assert!(ack
            .headers
            .iter()
            .any(|h| matches!(h, Header::ContentLength(l) if l.value() == "0")));
        assert!(ack.body.is_empty());
        assert!(!text(&ack_bytes).contains("Contact"));

        // Each retransmission of the final re-sends the same ACK, without a new event.
        tx.handle_response(t0 + secs(1.0), invite_response(486))
            .unwrap();
        let (out, ev) = drain_client(&mut tx);
        assert_eq!(out, vec![ack_bytes]);
        assert!(ev.is_empty());

        let (sends, events, ended) = run_client(&mut tx, t0, secs(100.0));
        assert!(sends.is_empty() && events.is_empty());
        assert_eq!(ended, Some(secs(32.2))); // timer D = 32 s after the final
        assert_eq!(
            tx.handle_response(t0 + secs(40.0), invite_response(486)),
            Err(TransactionError::Terminated)
        );
    }

    #[test]
    fn non_2xx_final_over_reliable_terminates_at_once_with_the_ack_queued() {
        let t0 = Instant::now();
        let mut tx = ClientTransaction::new(t0, invite(), true, Timers::default()).unwrap();
        drain_client(&mut tx);
        tx.handle_response(t0, invite_response(603)).unwrap();
        assert!(tx.is_terminated());
        let (out, ev) = drain_client(&mut tx);
        assert_eq!(out.len(), 1);
        assert!(text(&out[0]).starts_with("ACK "));
        assert_eq!(ev.len(), 1);
    }

    #[test]
    fn invite_2xx_is_passed_up_then_retransmissions_until_timer_m() {
        let t0 = Instant::now();
        let mut tx = ClientTransaction::new(t0, invite(), false, Timers::default()).unwrap();
        drain_client(&mut tx);
        tx.handle_response(t0 + 100 * MS, invite_response(200))
            .unwrap();
        assert_eq!(tx.state(), ClientState::Accepted);
        let (out, ev) = drain_client(&mut tx);
        assert!(out.is_empty(), "no ACK for 2xx from the transaction");
        assert!(matches!(&ev[..], [ClientEvent::Final(r)] if r.status_code.code() == 200));
        for i in 1..=3 {
            tx.handle_response(t0 + secs(i as f64), invite_response(200))
                .unwrap();
            let (out, ev) = drain_client(&mut tx);
            assert!(out.is_empty());
            assert!(matches!(&ev[..], [ClientEvent::Retransmitted2xx(_)]));
        }
        // A late non-2xx is absorbed.
        tx.handle_response(t0 + secs(4.0), invite_response(500))
            .unwrap();
        assert_eq!(drain_client(&mut tx), (vec![], vec![]));
        let (sends, events, ended) = run_client(&mut tx, t0, secs(100.0));
        assert!(sends.is_empty() && events.is_empty());
        assert_eq!(ended, Some(secs(32.1))); // timer M = 64·T1 after the 2xx
    }

    #[test]
    fn non_invite_timer_e_doubles_up_to_t2_and_timer_f_times_out() {
        let t0 = Instant::now();
        let mut tx = ClientTransaction::new(
            t0,
            request("REGISTER", "z9hG4bKreg1"),
            false,
            Timers::default(),
        )
        .unwrap();
        assert_eq!(tx.state(), ClientState::Trying);
        drain_client(&mut tx);
        let (sends, events, ended) = run_client(&mut tx, t0, secs(100.0));
        // Intervals 0.5, 1, 2, 4, 4, 4, ...
        let mut expected = vec![secs(0.5), secs(1.5), secs(3.5), secs(7.5)];
        let mut t = 7.5;
        while t + 4.0 < 32.0 {
            t += 4.0;
            expected.push(secs(t));
        }
        assert_eq!(sends, expected);
        assert_eq!(events, vec![ClientEvent::Timeout]);
        assert_eq!(ended, Some(secs(32.0)));
    }

    #[test]
    fn non_invite_after_provisional_retransmits_every_t2_then_timer_k() {
        let t0 = Instant::now();
        let mut tx =
            ClientTransaction::new(t0, request("BYE", "z9hG4bKbye1"), false, Timers::default())
                .unwrap();
        drain_client(&mut tx);
        tx.handle_response(t0 + 100 * MS, response(100, "z9hG4bKbye1", "BYE"))
            .unwrap();
        assert_eq!(tx.state(), ClientState::Proceeding);
        drain_client(&mut tx);
        let (sends, _, _) = run_client(&mut tx, t0, secs(10.0));
        // The pending E (0.5 s) still fires, then every T2.
        assert_eq!(sends, vec![secs(0.5), secs(4.5), secs(8.5)]);
        tx.handle_response(t0 + secs(10.0), response(200, "z9hG4bKbye1", "BYE"))
            .unwrap();
        assert_eq!(tx.state(), ClientState::Completed);
        let (_, ev) = drain_client(&mut tx);
        assert!(matches!(&ev[..], [ClientEvent::Final(_)]));
        // Retransmitted final absorbed.
        tx.handle_response(t0 + secs(11.0), response(200, "z9hG4bKbye1", "BYE"))
            .unwrap();
        assert_eq!(drain_client(&mut tx), (vec![], vec![]));
        let (sends, events, ended) = run_client(&mut tx, t0, secs(100.0));
        assert!(sends.is_empty() && events.is_empty());
        assert_eq!(ended, Some(secs(15.0))); // timer K = T4
    }

    #[test]
    fn non_invite_final_over_reliable_terminates_at_once() {
        let t0 = Instant::now();
        let mut tx =
            ClientTransaction::new(t0, request("BYE", "z9hG4bKbye2"), true, Timers::default())
                .unwrap();
        tx.handle_response(t0, response(200, "z9hG4bKbye2", "BYE"))
            .unwrap();
        assert!(tx.is_terminated());
        assert!(tx.poll_timeout().is_none());
    }

    #[test]
    fn stray_responses_are_rejected_by_the_key_check() {
        let t0 = Instant::now();
        let mut tx = ClientTransaction::new(t0, invite(), false, Timers::default()).unwrap();
        drain_client(&mut tx);
        let wrong_branch = response(200, "z9hG4bKother", "INVITE");
        assert!(matches!(
            tx.handle_response(t0, wrong_branch),
            Err(TransactionError::NotThisTransaction { .. })
        ));
        // The 200 for a CANCEL with the same branch belongs to the CANCEL transaction.
        let cancel_200 = response(200, "z9hG4bK776asdhds", "CANCEL");
        assert!(matches!(
            tx.handle_response(t0, cancel_200),
            Err(TransactionError::NotThisTransaction { .. })
        ));
        assert_eq!(tx.state(), ClientState::Calling);
        assert_eq!(drain_client(&mut tx), (vec![], vec![]));
        assert_eq!(
            TransactionKey::from_response(&invite_response(180)).unwrap(),
            *tx.key()
        );
    }

    #[test]
    fn bad_requests_do_not_create_transactions() {
        let t0 = Instant::now();
        let t = Timers::default();
        assert_eq!(
            ClientTransaction::new(t0, request("ACK", "z9hG4bKa"), false, t).unwrap_err(),
            TransactionError::AckCreatesNoTransaction
        );
        assert!(matches!(
            ClientTransaction::new(t0, request("INVITE", "1234abc"), false, t),
            Err(TransactionError::NoMagicCookie(_))
        ));
        let mut no_via = invite();
        no_via.headers.retain(|h| !is_via(h));
        assert_eq!(
            ClientTransaction::new(t0, no_via.clone(), false, t).unwrap_err(),
            TransactionError::MissingHeader("Via")
        );
        assert_eq!(
            ServerTransaction::new(t0, no_via, false, t).unwrap_err(),
            TransactionError::MissingHeader("Via")
        );
        let mut mismatch = invite();
        mismatch.method = Method::Options;
        assert!(matches!(
            ClientTransaction::new(t0, mismatch, false, t),
            Err(TransactionError::CSeqMethodMismatch { .. })
        ));
        let zero = Timers {
            t1: Duration::ZERO,
            ..t
        };
        assert!(matches!(
            ClientTransaction::new(t0, invite(), false, zero),
            Err(TransactionError::InvalidTimers(_))
        ));
        let huge = Timers {
            t2: Duration::MAX,
            ..t
        };
        assert!(matches!(
            ServerTransaction::new(t0, invite(), false, huge),
            Err(TransactionError::InvalidTimers(_))
        ));
    }

    #[test]
    fn server_keys_map_ack_to_invite_and_keep_cancel_apart() {
        let inv = TransactionKey::from_request(&invite()).unwrap();
        let ack = TransactionKey::from_request(&request("ACK", "z9hG4bK776asdhds")).unwrap();
        let cancel = TransactionKey::from_request(&request("CANCEL", "z9hG4bK776asdhds")).unwrap();
        assert_eq!(inv, ack);
        assert_ne!(inv, cancel);
        assert_eq!(
            inv,
            TransactionKey::Server {
                branch: "z9hG4bK776asdhds".into(),
                sent_by: "127.0.0.1:5060".into(),
                method: "INVITE".into(),
            }
        );
        let client =
            ClientTransaction::new(Instant::now(), invite(), false, Timers::default()).unwrap();
        assert_ne!(client.key(), &inv);
    }

    /// RFC 5118: a top Via with an IPv6 reference keys a transaction (rsip's typed Via cannot
    /// read it, and such requests went unanswered), and the answer goes through it.
    #[test]
    fn ipv6_sent_by_keys_server_transactions() {
        let wire = |via: &str| {
            format!(
                "INVITE sip:rec@[2001:db8::10] SIP/2.0\r\nVia: {via}\r\n\
                 Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKup\r\nFrom: <sip:a@[2001:db8::9:1]>;tag=f\r\n\
                 To: <sip:rec@[2001:db8::10]>\r\nCall-ID: v6k\r\nCSeq: 5 INVITE\r\nContent-Length: 0\r\n\r\n"
            )
        };
        let req = |via: &str| match crate::sip::message::parse(wire(via).as_bytes()) {
            Ok(rsip::SipMessage::Request(r)) => r,
            other => panic!("{other:?}"),
        };
        let inv =
            req("SIP/2.0/UDP [2001:DB8::9:1]:5070;received=[2001:db8::9:ff];branch=z9hG4bKv6");
        let key = TransactionKey::from_request(&inv).unwrap();
        assert_eq!(
            key,
            TransactionKey::Server {
                branch: "z9hG4bKv6".into(),
                sent_by: "[2001:db8::9:1]:5070".into(),
                method: "INVITE".into(),
            }
        );
        let t0 = Instant::now();
        let mut tx = ServerTransaction::new(t0, inv.clone(), true, Timers::default()).unwrap();
        let ok = crate::sip::dialog::build_response(&inv, 486, Some("t"), vec![], None);
        tx.respond(t0, ok).unwrap();
        assert!(text(&tx.poll_transmit().unwrap()).starts_with("SIP/2.0 486"));
        // Without the magic cookie: RFC 2543 matching, keyed on the whole top Via.
        let old = req("SIP/2.0/UDP [2001:db8::9:1];branch=1234");
        match TransactionKey::from_request(&old).unwrap() {
            TransactionKey::Rfc2543 { top_via, .. } => {
                assert_eq!(top_via, "SIP/2.0/UDP [2001:db8::9:1];branch=1234")
            }
            other => panic!("{other:?}"),
        }
        for bad in [
            "SIP/2.0/UDP",
            "SIP/2.0 host",
            "SIP/2.0/UDP ;branch=z9hG4bK1",
        ] {
            assert!(TopVia::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn server_invite_retransmits_486_with_timer_g_until_ack_then_timer_i() {
        let t0 = Instant::now();
        let mut tx = ServerTransaction::new(t0, invite(), false, Timers::default()).unwrap();
        assert_eq!(tx.state(), ServerState::Proceeding);
        tx.respond(t0, invite_response(100)).unwrap();
        assert!(text(&tx.poll_transmit().unwrap()).starts_with("SIP/2.0 100 Trying\r\n"));
        tx.respond(t0 + 100 * MS, invite_response(486)).unwrap();
        let first = tx.poll_transmit().unwrap();
        assert!(text(&first).starts_with("SIP/2.0 486 Busy Here\r\n"));
        assert_eq!(tx.state(), ServerState::Completed);
        assert_eq!(
            tx.respond(t0 + 100 * MS, invite_response(200)),
            Err(TransactionError::FinalAlreadySent(486))
        );
        let (sends, events, _) = run_server(&mut tx, t0, secs(10.0));
        // G: 0.5, 1, 2, 4 (capped at T2), 4 ... after 0.1.
        assert_eq!(sends, vec![secs(0.6), secs(1.6), secs(3.6), secs(7.6)]);
        assert!(events.is_empty());
        // A retransmitted INVITE re-sends the 486.
        tx.handle_request(t0 + secs(10.0), invite()).unwrap();
        assert_eq!(tx.poll_transmit().unwrap(), first);
        // The ACK confirms; G and H stop.
        let ack = request("ACK", "z9hG4bK776asdhds");
        tx.handle_request(t0 + secs(10.5), ack.clone()).unwrap();
        assert_eq!(tx.state(), ServerState::Confirmed);
        assert_eq!(tx.poll_event(), Some(ServerEvent::AckReceived(ack.clone())));
        tx.handle_request(t0 + secs(11.0), ack).unwrap();
        assert_eq!(tx.poll_event(), None);
        let (sends, events, ended) = run_server(&mut tx, t0, secs(100.0));
        assert!(sends.is_empty() && events.is_empty());
        assert_eq!(ended, Some(secs(15.5))); // timer I = T4
    }

    #[test]
    fn server_invite_times_out_with_timer_h_without_ack() {
        let t0 = Instant::now();
        let mut tx = ServerTransaction::new(t0, invite(), false, Timers::default()).unwrap();
        tx.respond(t0, invite_response(486)).unwrap();
        tx.poll_transmit().unwrap();
        let (sends, events, ended) = run_server(&mut tx, t0, secs(100.0));
        assert_eq!(sends.len(), 10); // 0.5 1.5 3.5 7.5 11.5 ... 31.5
        assert_eq!(sends.last(), Some(&secs(31.5)));
        assert_eq!(events, vec![ServerEvent::Timeout]);
        assert_eq!(ended, Some(secs(32.0))); // timer H = 64·T1
    }

    #[test]
    fn server_invite_over_reliable_sends_once_and_ack_terminates() {
        let t0 = Instant::now();
        let mut tx = ServerTransaction::new(t0, invite(), true, Timers::default()).unwrap();
        tx.respond(t0, invite_response(480)).unwrap();
        assert!(tx.poll_transmit().is_some());
        assert_eq!(tx.poll_timeout(), Some(t0 + secs(32.0))); // only H
        tx.handle_request(t0 + secs(1.0), request("ACK", "z9hG4bK776asdhds"))
            .unwrap();
        assert!(tx.is_terminated());
    }

    #[test]
    fn server_invite_2xx_goes_to_accepted_and_absorbs_retransmissions_until_timer_l() {
        let t0 = Instant::now();
        let mut tx = ServerTransaction::new(t0, invite(), false, Timers::default()).unwrap();
        tx.respond(t0, invite_response(180)).unwrap();
        let ringing = tx.poll_transmit().unwrap();
        tx.handle_request(t0 + 200 * MS, invite()).unwrap();
        assert_eq!(tx.poll_transmit(), Some(ringing));
        tx.respond(t0 + secs(1.0), invite_response(200)).unwrap();
        assert_eq!(tx.state(), ServerState::Accepted);
        assert!(tx.poll_transmit().is_some());
        // The TU retransmits its 2xx through the transaction; INVITE retransmissions are absorbed.
        tx.respond(t0 + secs(1.5), invite_response(200)).unwrap();
        assert!(tx.poll_transmit().is_some());
        tx.handle_request(t0 + secs(1.6), invite()).unwrap();
        assert_eq!(tx.poll_transmit(), None);
        assert_eq!(
            tx.respond(t0 + secs(2.0), invite_response(486)),
            Err(TransactionError::FinalAlreadySent(200))
        );
        let (sends, _, ended) = run_server(&mut tx, t0, secs(100.0));
        assert!(sends.is_empty());
        assert_eq!(ended, Some(secs(33.0)));
    }

    #[test]
    fn server_non_invite_resends_final_on_retransmission_then_timer_j() {
        let t0 = Instant::now();
        let req = request("OPTIONS", "z9hG4bKopt7");
        let mut tx = ServerTransaction::new(t0, req.clone(), false, Timers::default()).unwrap();
        assert_eq!(tx.state(), ServerState::Trying);
        // Retransmission before any response: absorbed.
        tx.handle_request(t0 + 500 * MS, req.clone()).unwrap();
        assert_eq!(tx.poll_transmit(), None);
        tx.respond(t0 + secs(1.0), response(200, "z9hG4bKopt7", "OPTIONS"))
            .unwrap();
        let ok = tx.poll_transmit().unwrap();
        assert_eq!(tx.state(), ServerState::Completed);
        tx.handle_request(t0 + secs(1.5), req.clone()).unwrap();
        assert_eq!(tx.poll_transmit(), Some(ok));
        assert!(matches!(
            tx.handle_request(t0 + secs(1.6), request("ACK", "z9hG4bKopt7")),
            Err(TransactionError::NotThisTransaction { .. })
        ));
        let (sends, events, ended) = run_server(&mut tx, t0, secs(100.0));
        assert!(sends.is_empty() && events.is_empty());
        assert_eq!(ended, Some(secs(33.0))); // timer J = 64·T1
        assert_eq!(
            tx.handle_request(t0 + secs(34.0), req),
            Err(TransactionError::Terminated)
        );
    }

    #[test]
    fn server_non_invite_provisional_is_resent_and_reliable_final_terminates() {
        let t0 = Instant::now();
        let req = request("REGISTER", "z9hG4bKr9");
        let mut tx = ServerTransaction::new(t0, req.clone(), true, Timers::default()).unwrap();
        tx.respond(t0, response(100, "z9hG4bKr9", "REGISTER"))
            .unwrap();
        let trying = tx.poll_transmit().unwrap();
        assert_eq!(tx.state(), ServerState::Proceeding);
        tx.handle_request(t0 + secs(1.0), req).unwrap();
        assert_eq!(tx.poll_transmit(), Some(trying));
        tx.respond(t0 + secs(2.0), response(401, "z9hG4bKr9", "REGISTER"))
            .unwrap();
        assert!(tx.is_terminated()); // timer J = 0 over reliable
        assert!(tx.poll_transmit().is_some());
    }

    #[test]
    fn server_refuses_responses_of_other_transactions() {
        let t0 = Instant::now();
        let mut tx = ServerTransaction::new(t0, invite(), false, Timers::default()).unwrap();
        assert!(matches!(
            tx.respond(t0, response(200, "z9hG4bKx", "INVITE")),
            Err(TransactionError::NotThisTransaction { .. })
        ));
        assert!(matches!(
            tx.respond(t0, response(200, "z9hG4bK776asdhds", "CANCEL")),
            Err(TransactionError::NotThisTransaction { .. })
        ));
        assert!(matches!(
            tx.handle_request(t0, request("INVITE", "z9hG4bKy")),
            Err(TransactionError::NotThisTransaction { .. })
        ));
        assert_eq!(tx.poll_transmit(), None);
        assert_eq!(tx.state(), ServerState::Proceeding);
    }

    #[test]
    fn transport_errors_terminate_with_an_event() {
        let t0 = Instant::now();
        let mut c = ClientTransaction::new(t0, invite(), false, Timers::default()).unwrap();
        c.handle_transport_error(t0);
        assert!(c.is_terminated());
        assert_eq!(drain_client(&mut c).1, vec![ClientEvent::TransportError]);
        c.handle_transport_error(t0);
        assert_eq!(c.poll_event(), None);

        let mut s = ServerTransaction::new(t0, invite(), false, Timers::default()).unwrap();
        s.handle_transport_error(t0);
        assert_eq!(s.poll_event(), Some(ServerEvent::TransportError));
        assert_eq!(
            s.respond(t0, invite_response(200)),
            Err(TransactionError::Terminated)
        );
    }

    #[test]
    fn malformed_responses_are_refused_without_a_state_change() {
        let t0 = Instant::now();
        let mut tx = ClientTransaction::new(t0, invite(), false, Timers::default()).unwrap();
        drain_client(&mut tx);
        let mut no_cseq = invite_response(486);
        no_cseq.headers.retain(|h| !matches!(h, Header::CSeq(_)));
        assert_eq!(
            tx.handle_response(t0, no_cseq),
            Err(TransactionError::MissingHeader("CSeq"))
        );
        let mut no_to = invite_response(486);
        no_to.headers.retain(|h| !matches!(h, Header::To(_)));
        assert_eq!(
            tx.handle_response(t0, no_to),
            Err(TransactionError::MissingHeader("To"))
        );
        let mut bad_code = invite_response(486);
        bad_code.status_code = rsip::StatusCode::from(799);
        assert_eq!(
            tx.handle_response(t0, bad_code),
            Err(TransactionError::InvalidStatus(799))
        );
        let mut bad_via = invite_response(486);
        for h in bad_via.headers.iter_mut() {
            if let Header::Via(v) = h {
                *v = rsip::headers::Via::new("garbage");
            }
        }
        assert!(tx.handle_response(t0, bad_via).is_err());
        assert_eq!(tx.state(), ClientState::Calling);
        assert_eq!(drain_client(&mut tx), (vec![], vec![]));
    }

    #[test]
    fn a_late_driver_gets_one_retransmission_per_call_and_no_panic() {
        let t0 = Instant::now();
        let mut tx = ClientTransaction::new(t0, invite(), false, Timers::default()).unwrap();
        drain_client(&mut tx);
        // The driver wakes up 3 s late: one retransmission, the next one 1 s after it.
        tx.handle_timeout(t0 + secs(3.5));
        assert_eq!(drain_client(&mut tx).0.len(), 1);
        assert_eq!(tx.poll_timeout(), Some(t0 + secs(4.5)));
        // Calling early does nothing.
        tx.handle_timeout(t0 + secs(4.0));
        assert_eq!(drain_client(&mut tx), (vec![], vec![]));
    }

    #[test]
    fn combined_and_compact_via_lines() {
        let t0 = Instant::now();
        let mut req = invite();
        req.headers.retain(|h| !is_via(h));
        req.headers.push(Header::Other(
            "v".into(),
            "SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKcompact, SIP/2.0/UDP 10.0.0.9;branch=z9hG4bKx"
                .into(),
        ));
        let key = TransactionKey::from_request(&req).unwrap();
        assert_eq!(key.branch(), "z9hG4bKcompact");
        let mut tx = ClientTransaction::new(t0, req, false, Timers::default()).unwrap();
        drain_client(&mut tx);
        tx.handle_response(t0, response(404, "z9hG4bKcompact", "INVITE"))
            .unwrap();
        let ack = text(&tx.poll_transmit().unwrap());
        let vias: Vec<&str> = ack.lines().filter(|l| l.starts_with("Via:")).collect();
        assert_eq!(
            vias,
            ["Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKcompact"]
        );
    }

    #[test]
    fn debug_output_leaves_credentials_out() {
        let mut req = invite();
        req.headers.push(
            rsip::headers::Authorization::new(
                "Digest username=\"alice\", response=\"6629fae49393a05397450978507c4ef1\"",
            )
            .into(),
        );
        let tx =
            ClientTransaction::new(Instant::now(), req.clone(), false, Timers::default()).unwrap();
        assert!(!format!("{tx:?}").contains("6629fae4"));
        let tx = ServerTransaction::new(Instant::now(), req, false, Timers::default()).unwrap();
        assert!(!format!("{tx:?}").contains("6629fae4"));
    }

    #[test]
    fn first_list_value_respects_quotes() {
        assert_eq!(first_list_value("a;x=\"1,2\" , b"), "a;x=\"1,2\"");
        assert_eq!(first_list_value(" a "), "a");
    }
}
