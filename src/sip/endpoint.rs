//! The SIP endpoint: routes every incoming message to its transaction by key (RFC 3261
//! §17.1.3/§17.2.3), creates server transactions for new requests, and collects what the
//! transactions want sent. Sans-IO: the driver feeds datagrams/frames and the clock, and
//! drains [`Transmit`]s and [`EndpointEvent`]s.
//!
//! Drive contract: after any `handle_*` or `send_*`/`respond` call, drain `poll_transmit` and
//! `poll_event`, then wait until `poll_timeout` (or the next input) and call `handle_timeout`.
//! Garbage never panics: malformed requests are answered 400 (501 for an extension method)
//! when a reply can be formed, otherwise dropped; both are counted in [`EndpointStats`].

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;

use super::message;
use super::timer::TimerQueue;
use super::transaction::{
    ClientEvent, ClientTransaction, ServerEvent, ServerTransaction, Timers, TransactionError,
    TransactionKey,
};

/// The transport a message travels on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    Tcp,
    /// SIP over TLS over TCP (RFC 3261 §26.2, RFC 5630): reliable and framed as TCP.
    Tls,
}

impl Transport {
    pub fn is_reliable(self) -> bool {
        matches!(self, Transport::Tcp | Transport::Tls)
    }

    /// The token used in Via and `transport=` URI parameters.
    pub fn via_token(self) -> &'static str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
            Transport::Tls => "TLS",
        }
    }

    /// The port a URI without one means (RFC 3261 §19.1.2: 5061 for TLS).
    pub fn default_port(self) -> u16 {
        match self {
            Transport::Udp | Transport::Tcp => 5060,
            Transport::Tls => 5061,
        }
    }

    pub fn parse(s: &str) -> Option<Transport> {
        match s.to_ascii_lowercase().as_str() {
            "udp" => Some(Transport::Udp),
            "tcp" => Some(Transport::Tcp),
            "tls" => Some(Transport::Tls),
            _ => None,
        }
    }
}

/// Bytes to send to one destination.
#[derive(Debug, Clone)]
pub struct Transmit {
    pub transport: Transport,
    pub dest: SocketAddr,
    pub data: Bytes,
}

/// What the endpoint tells the transaction user (the UA).
#[derive(Debug)]
pub enum EndpointEvent {
    /// A client transaction produced a response, a timeout or a transport error.
    Client {
        key: TransactionKey,
        event: ClientEvent,
    },
    /// A new request (not ACK) arrived; a server transaction now exists for `key` and the UA
    /// must answer it with [`Endpoint::respond`].
    Request {
        key: TransactionKey,
        request: rsip::Request,
        transport: Transport,
        source: SocketAddr,
    },
    /// An ACK that matched no server transaction: the ACK of a 2xx, which belongs to a dialog.
    Ack {
        request: rsip::Request,
        source: SocketAddr,
    },
}

/// Counters of what the endpoint saw, for `/health` and `/metrics`.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointStats {
    pub received: u64,
    pub malformed: u64,
    pub stray_responses: u64,
    pub retransmissions_absorbed: u64,
    pub client_transactions: usize,
    pub server_transactions: usize,
}

struct ClientEntry {
    tx: ClientTransaction,
    transport: Transport,
    dest: SocketAddr,
}

struct ServerEntry {
    tx: ServerTransaction,
    transport: Transport,
    dest: SocketAddr,
}

pub struct Endpoint {
    timers: Timers,
    clients: HashMap<TransactionKey, ClientEntry>,
    servers: HashMap<TransactionKey, ServerEntry>,
    deadlines: TimerQueue<(bool, TransactionKey)>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<EndpointEvent>,
    stats: EndpointStats,
}

impl Endpoint {
    pub fn new(timers: Timers) -> Self {
        Self {
            timers,
            clients: HashMap::new(),
            servers: HashMap::new(),
            deadlines: TimerQueue::default(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            stats: EndpointStats::default(),
        }
    }

    pub fn timers(&self) -> Timers {
        self.timers
    }

    pub fn stats(&self) -> EndpointStats {
        EndpointStats {
            client_transactions: self.clients.len(),
            server_transactions: self.servers.len(),
            ..self.stats
        }
    }

    /// Starts a client transaction for `request` (which carries a fresh `z9hG4bK` branch).
    pub fn send_request(
        &mut self,
        now: Instant,
        request: rsip::Request,
        transport: Transport,
        dest: SocketAddr,
    ) -> Result<TransactionKey, TransactionError> {
        let tx = ClientTransaction::new(now, request, transport.is_reliable(), self.timers)?;
        let key = tx.key().clone();
        self.clients.insert(
            key.clone(),
            ClientEntry {
                tx,
                transport,
                dest,
            },
        );
        self.drain_client(&key);
        Ok(key)
    }

    /// Sends a request outside any transaction (the ACK of a 2xx, RFC 3261 §13.2.2.4).
    pub fn send_stateless(&mut self, data: Bytes, transport: Transport, dest: SocketAddr) {
        self.transmits.push_back(Transmit {
            transport,
            dest,
            data,
        });
    }

    /// Answers the request of server transaction `key`.
    pub fn respond(
        &mut self,
        now: Instant,
        key: &TransactionKey,
        response: rsip::Response,
    ) -> Result<(), TransactionError> {
        let Some(entry) = self.servers.get_mut(key) else {
            return Err(TransactionError::Terminated);
        };
        entry.tx.respond(now, response)?;
        self.drain_server(key);
        Ok(())
    }

    /// Whether server transaction `key` is still alive (e.g. an INVITE that CANCEL may hit).
    pub fn has_server(&self, key: &TransactionKey) -> bool {
        self.servers.contains_key(key)
    }

    /// Feeds one datagram or TCP frame.
    pub fn handle_input(
        &mut self,
        now: Instant,
        transport: Transport,
        source: SocketAddr,
        data: &[u8],
    ) {
        self.stats.received += 1;
        let msg = match message::parse(data) {
            Ok(m) => m,
            Err(err) => {
                self.stats.malformed += 1;
                let reply = err.answer();
                tracing::debug!(%source, error = %err, replied = reply.is_some(), "malformed SIP message");
                if let Some(data) = reply {
                    self.transmits.push_back(Transmit {
                        transport,
                        dest: source,
                        data,
                    });
                }
                return;
            }
        };
        match msg {
            rsip::SipMessage::Response(resp) => self.handle_response(now, resp),
            rsip::SipMessage::Request(req) => self.handle_request(now, transport, source, req),
        }
    }

    fn handle_response(&mut self, now: Instant, resp: rsip::Response) {
        let Ok(key) = TransactionKey::from_response(&resp) else {
            self.stats.malformed += 1;
            return;
        };
        match self.clients.get_mut(&key) {
            Some(entry) => {
                if entry.tx.handle_response(now, resp).is_err() {
                    self.stats.stray_responses += 1;
                }
                self.drain_client(&key);
            }
            None => {
                self.stats.stray_responses += 1;
                tracing::debug!(?key, "stray response dropped");
            }
        }
    }

    fn handle_request(
        &mut self,
        now: Instant,
        transport: Transport,
        source: SocketAddr,
        req: rsip::Request,
    ) {
        let key = match TransactionKey::from_request(&req) {
            Ok(key) => key,
            Err(e) => {
                // The parser let it through, so it can be answered: a stateless 400 naming
                // the fault rather than a silence the client retransmits into. Never to an
                // ACK (RFC 3261 §17.2.3: no response to it).
                self.stats.malformed += 1;
                tracing::debug!(%source, error = %e, "request matches no transaction key");
                if req.method != rsip::Method::Ack {
                    let mut resp = super::dialog::build_response(&req, 400, None, vec![], None);
                    let reason: String = format!("Bad Request ({e})")
                        .chars()
                        .filter(|c| !c.is_control())
                        .take(120)
                        .collect();
                    resp.status_code = rsip::StatusCode::Other(400, reason);
                    self.transmits.push_back(Transmit {
                        transport,
                        dest: source,
                        data: message::response_bytes(&resp),
                    });
                }
                return;
            }
        };
        if let Some(entry) = self.servers.get_mut(&key) {
            // A retransmission, or the ACK of a non-2xx final: the transaction absorbs it.
            self.stats.retransmissions_absorbed += 1;
            let _ = entry.tx.handle_request(now, req);
            self.drain_server(&key);
            return;
        }
        if req.method == rsip::Method::Ack {
            self.events.push_back(EndpointEvent::Ack {
                request: req,
                source,
            });
            return;
        }
        match ServerTransaction::new(now, req.clone(), transport.is_reliable(), self.timers) {
            Ok(tx) => {
                self.servers.insert(
                    key.clone(),
                    ServerEntry {
                        tx,
                        transport,
                        dest: source,
                    },
                );
                self.events.push_back(EndpointEvent::Request {
                    key: key.clone(),
                    request: req,
                    transport,
                    source,
                });
                self.drain_server(&key);
            }
            Err(e) => {
                self.stats.malformed += 1;
                tracing::debug!(%source, error = %e, "request cannot start a transaction");
            }
        }
    }

    /// Fires every transaction timer that is due.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some((is_client, key)) = self.deadlines.pop_due(now) {
            if is_client {
                if let Some(entry) = self.clients.get_mut(&key) {
                    if entry.tx.poll_timeout().is_some_and(|t| t <= now) {
                        entry.tx.handle_timeout(now);
                    }
                    self.drain_client(&key);
                }
            } else if let Some(entry) = self.servers.get_mut(&key) {
                if entry.tx.poll_timeout().is_some_and(|t| t <= now) {
                    entry.tx.handle_timeout(now);
                }
                self.drain_server(&key);
            }
        }
    }

    /// A transport failed to deliver to `dest` (TCP connect refused, ICMP unreachable).
    pub fn handle_transport_error(&mut self, now: Instant, transport: Transport, dest: SocketAddr) {
        let keys: Vec<TransactionKey> = self
            .clients
            .iter()
            .filter(|(_, e)| e.dest == dest && e.transport == transport)
            .map(|(k, _)| k.clone())
            .collect();
        for key in keys {
            if let Some(entry) = self.clients.get_mut(&key) {
                entry.tx.handle_transport_error(now);
            }
            self.drain_client(&key);
        }
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<EndpointEvent> {
        self.events.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadlines.next_deadline()
    }

    fn drain_client(&mut self, key: &TransactionKey) {
        let Some(entry) = self.clients.get_mut(key) else {
            return;
        };
        while let Some(data) = entry.tx.poll_transmit() {
            self.transmits.push_back(Transmit {
                transport: entry.transport,
                dest: entry.dest,
                data,
            });
        }
        while let Some(event) = entry.tx.poll_event() {
            self.events.push_back(EndpointEvent::Client {
                key: key.clone(),
                event,
            });
        }
        if entry.tx.is_terminated() {
            self.clients.remove(key);
        } else if let Some(at) = entry.tx.poll_timeout() {
            self.deadlines.push(at, (true, key.clone()));
        }
    }

    fn drain_server(&mut self, key: &TransactionKey) {
        let Some(entry) = self.servers.get_mut(key) else {
            return;
        };
        while let Some(data) = entry.tx.poll_transmit() {
            self.transmits.push_back(Transmit {
                transport: entry.transport,
                dest: entry.dest,
                data,
            });
        }
        while let Some(event) = entry.tx.poll_event() {
            match event {
                ServerEvent::Timeout => tracing::debug!(?key, "server transaction timed out"),
                ServerEvent::TransportError => {
                    tracing::debug!(?key, "server transaction transport error")
                }
                ServerEvent::AckReceived(_) => {}
                ServerEvent::AckFor2xx(request) => self.events.push_back(EndpointEvent::Ack {
                    request,
                    source: entry.dest,
                }),
            }
        }
        if entry.tx.is_terminated() {
            self.servers.remove(key);
        } else if let Some(at) = entry.tx.poll_timeout() {
            self.deadlines.push(at, (false, key.clone()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rsip::headers::UntypedHeader;

    fn source() -> SocketAddr {
        "127.0.0.1:5070".parse().unwrap()
    }

    /// Requests with IPv6 in their Vias (RFC 5118) are answered; a request the parser let
    /// through but whose top Via keys no transaction gets a 400 naming why, never silence,
    /// and an ACK gets nothing.
    #[test]
    fn every_request_gets_an_answer_or_is_an_ack() {
        let t0 = Instant::now();
        let mut ep = Endpoint::new(Timers::default());
        let options = "OPTIONS sip:[2001:db8::10]:5070 SIP/2.0\r\n\
            Via: SIP/2.0/UDP [2001:db8::9:1]:6050;branch=z9hG4bKa\r\n\
            Via: SIP/2.0/TCP [2001:db8::9:255];branch=z9hG4bKb;received=192.0.2.200\r\n\
            From: <sip:a@example.com>;tag=1\r\nTo: <sip:b@example.com>\r\nCall-ID: ep6\r\n\
            CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n";
        ep.handle_input(t0, Transport::Udp, source(), options.as_bytes());
        assert!(matches!(
            ep.poll_event(),
            Some(EndpointEvent::Request { .. })
        ));
        // A Via rsip-free reading still refuses (no sent-protocol transport): built by hand,
        // since the parser would have answered it already.
        let mut req = match message::parse(options.as_bytes()) {
            Ok(rsip::SipMessage::Request(r)) => r,
            other => panic!("{other:?}"),
        };
        req.headers.retain(|h| !matches!(h, rsip::Header::Via(_)));
        req.headers
            .push(rsip::headers::Via::new("SIP/2.0 [2001:db8::9:1];branch=z9hG4bKc").into());
        ep.handle_request(t0, Transport::Udp, source(), req.clone());
        let out = ep.poll_transmit().expect("a 400");
        let text = String::from_utf8_lossy(&out.data).into_owned();
        assert!(
            text.starts_with(
                "SIP/2.0 400 Bad Request (unparsable Via header: sent-protocol is not name/version/transport)\r\n"
            ),
            "{text}"
        );
        assert_eq!(out.dest, source());
        req.method = rsip::Method::Ack;
        ep.handle_request(t0, Transport::Udp, source(), req);
        assert!(ep.poll_transmit().is_none(), "no answer to an ACK");
        assert_eq!(ep.stats().malformed, 2);
    }
}
