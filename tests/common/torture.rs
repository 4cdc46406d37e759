//! Torture messages on the wire (RFC 4475, RFC 5118): a message sent byte for byte to a
//! running gateway over UDP or TCP, what came back, the ACK (and BYE) that ends an answered
//! INVITE, and the README tables generated from what was seen.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use sipstream::sip::message::{self, Frame};
use sipstream::sip::transaction::TransactionKey;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use super::{sip_header, Gateway};

/// What came back: each response's status line, the final response whole, and whether the
/// connection was closed.
#[derive(Default)]
pub struct Observed {
    pub lines: Vec<String>,
    pub closed: bool,
    /// The last response received, whole (headers and body).
    pub last: String,
    /// The status line of the answer to our BYE, when an INVITE was answered 2xx.
    pub bye: Option<String>,
}

impl Observed {
    /// The status codes in order (`closed` when the connection closed after; `-` for
    /// nothing).
    pub fn codes(&self) -> String {
        let mut parts: Vec<String> = self
            .lines
            .iter()
            .map(|l| l.split(' ').nth(1).unwrap_or("?").to_string())
            .collect();
        if self.closed {
            parts.push("closed".into());
        }
        if parts.is_empty() {
            "-".into()
        } else {
            parts.join(" ")
        }
    }

    /// The final answer's status line (for the README): the last one that is not 1xx.
    pub fn final_line(&self) -> String {
        self.lines
            .iter()
            .rev()
            .find(|l| !l.starts_with("SIP/2.0 1"))
            .map(|l| l.trim_start_matches("SIP/2.0 ").to_string())
            .unwrap_or_default()
    }

    pub fn has_final(&self) -> bool {
        self.lines.iter().any(|l| !l.starts_with("SIP/2.0 1"))
    }
}

pub fn status_line(resp: &[u8]) -> String {
    let text = String::from_utf8_lossy(resp);
    text.lines().next().unwrap_or_default().to_string()
}

/// The ACK (and BYE after a 2xx) for an answered INVITE, so that the gateway stops resending
/// its answer and an accepted call ends. `via` is our transport's Via value without branch.
/// The ACK of a non-2xx answer belongs to the INVITE's transaction (RFC 3261 §17.1.1.3): it
/// goes to the Request-URI with the INVITE's top Via (the answer's), so the gateway's server
/// transaction absorbs it and stops resending the answer. The ACK of a 2xx and the BYE are
/// requests of the dialog: to the Contact, with a Via of our own.
pub fn after_invite(final_resp: &str, request_uri: &str, via: &str) -> Vec<Vec<u8>> {
    let (Some(from), Some(to), Some(call_id), Some(cseq)) = (
        sip_header(final_resp, "From"),
        sip_header(final_resp, "To"),
        sip_header(final_resp, "Call-ID"),
        sip_header(final_resp, "CSeq"),
    ) else {
        return Vec::new();
    };
    let n: u64 = cseq
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1);
    let answered = final_resp.starts_with("SIP/2.0 2");
    let target = match sip_header(final_resp, "Contact") {
        Some(c) if answered => c.trim_start_matches('<').split('>').next().unwrap_or(c),
        _ => request_uri,
    };
    let req = |method: &str, seq: u64, via: &str| {
        format!(
            "{method} {target} SIP/2.0\r\nVia: {via}\r\nFrom: {from}\r\nTo: {to}\r\n\
             Call-ID: {call_id}\r\nCSeq: {seq} {method}\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
        )
        .into_bytes()
    };
    if !answered {
        return match sip_header(final_resp, "Via") {
            Some(top) => vec![req("ACK", n, top)],
            None => Vec::new(),
        };
    }
    vec![
        req("ACK", n, &format!("{via};branch=z9hG4bKack{n}")),
        req("BYE", n + 1, &format!("{via};branch=z9hG4bKbye{n}")),
    ]
}

/// The Request-URI of an INVITE; None for other messages.
pub fn request_uri(bytes: &[u8]) -> Option<String> {
    let line = status_line(bytes);
    let mut parts = line.split(' ');
    let method = parts.next()?;
    (method == "INVITE").then(|| parts.next().map(str::to_owned))?
}

/// Sends `bytes` in one datagram and collects the answers (an INVITE's final answer resent
/// until ACKed counts once), then ends an answered INVITE.
pub async fn over_udp(gw: &Gateway, bytes: &[u8]) -> Observed {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let to = format!("127.0.0.1:{}", gw.sip_port);
    let via = format!("SIP/2.0/UDP {}", sock.local_addr().unwrap());
    sock.send_to(bytes, &to).await.unwrap();
    let mut seen = Observed::default();
    let mut buf = vec![0u8; 65536];
    loop {
        // Wait longer for a final answer than for anything after it (a second answer would
        // be a fault: RFC 4475 dblreq's trailing octets).
        let wait = if seen.has_final() { 300 } else { 700 };
        match tokio::time::timeout(Duration::from_millis(wait), sock.recv_from(&mut buf)).await {
            Ok(Ok((n, _))) => {
                let resp = &buf[..n];
                let line = status_line(resp);
                // The gateway resends a final answer to an INVITE until it is ACKed.
                if seen.lines.last() != Some(&line) {
                    seen.lines.push(line);
                }
                seen.last = String::from_utf8_lossy(resp).into_owned();
            }
            _ => break,
        }
    }
    if let (Some(uri), true) = (request_uri(bytes), seen.has_final()) {
        let after = after_invite(&seen.last, &uri, &via);
        for m in &after {
            sock.send_to(m, &to).await.unwrap();
        }
        if after.len() > 1 {
            let deadline = Instant::now() + Duration::from_secs(2);
            while seen.bye.is_none() && Instant::now() < deadline {
                match tokio::time::timeout(Duration::from_millis(500), sock.recv_from(&mut buf))
                    .await
                {
                    Ok(Ok((n, _))) => seen.bye = bye_answer(&buf[..n]),
                    _ => break,
                }
            }
        }
    }
    seen
}

/// The status line of `resp` when it answers a BYE.
fn bye_answer(resp: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(resp);
    let cseq = sip_header(&text, "CSeq")?;
    (cseq.split_whitespace().nth(1) == Some("BYE")).then(|| status_line(resp))
}

/// Writes `bytes` on a new connection and collects the answers framed from it, and whether
/// the gateway closed it; then ends an answered INVITE.
pub async fn over_tcp(gw: &Gateway, bytes: &[u8]) -> Observed {
    let mut stream = TcpStream::connect(("127.0.0.1", gw.sip_port))
        .await
        .unwrap();
    let via = format!("SIP/2.0/TCP {}", stream.local_addr().unwrap());
    stream.write_all(bytes).await.unwrap();
    let mut seen = Observed::default();
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 65536];
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        // After a final answer, long enough to see the close that follows a framing error.
        let wait = 700;
        match tokio::time::timeout(Duration::from_millis(wait), stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                seen.closed = true;
                break;
            }
            Ok(Ok(n)) => {
                buf.extend_from_slice(&chunk[..n]);
                while let Frame::Message(len) = message::frame(&buf) {
                    let resp: Vec<u8> = buf.drain(..len).collect();
                    seen.lines.push(status_line(&resp));
                    seen.last = String::from_utf8_lossy(&resp).into_owned();
                }
            }
            Err(_) => break,
        }
    }
    if let (Some(uri), true, false) = (request_uri(bytes), seen.has_final(), seen.closed) {
        let after = after_invite(&seen.last, &uri, &via);
        for m in &after {
            stream.write_all(m).await.unwrap();
        }
        // Let the BYE's answer come before the socket goes.
        let deadline = Instant::now() + Duration::from_secs(2);
        while after.len() > 1 && seen.bye.is_none() && Instant::now() < deadline {
            match tokio::time::timeout(Duration::from_millis(500), stream.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => {
                    buf.extend_from_slice(&chunk[..n]);
                    while let Frame::Message(len) = message::frame(&buf) {
                        let resp: Vec<u8> = buf.drain(..len).collect();
                        seen.bye = seen.bye.take().or_else(|| bye_answer(&resp));
                    }
                }
                _ => break,
            }
        }
    }
    seen
}

/// One README cell: the codes, with the final answer's reason phrase (it names the fault).
pub fn cell(seen: &Observed, stream: bool) -> String {
    if seen.lines.is_empty() {
        return match (seen.closed, stream) {
            (true, _) => "closed, no answer".into(),
            (false, true) => "no answer; the connection stays open".into(),
            (false, false) => "no answer".into(),
        };
    }
    let mut s = seen
        .lines
        .iter()
        .map(|l| l.split(' ').nth(1).unwrap_or("?").to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let last = seen.final_line();
    if let Some((_, reason)) = last.split_once(' ') {
        s.push_str(&format!(" ({})", reason.replace('|', "/")));
    }
    if seen.closed {
        s.push_str(", then closed");
    }
    s
}

/// A gateway and the server-transaction keys the messages sent to it have used.
pub struct Target {
    pub gw: Gateway,
    keys: HashSet<TransactionKey>,
}

impl Target {
    pub async fn start() -> Target {
        Target {
            gw: Gateway::start(&[]).await,
            keys: HashSet::new(),
        }
    }

    /// The gateway to send `bytes` to: this one, or a fresh one when it already saw a
    /// transaction with the same key (the message would be absorbed as a retransmission).
    pub async fn for_message(&mut self, bytes: &[u8]) -> &Gateway {
        let key = match message::parse(bytes) {
            Ok(rsip::SipMessage::Request(req)) => TransactionKey::from_request(&req).ok(),
            _ => None,
        };
        if let Some(key) = key {
            if !self.keys.insert(key.clone()) {
                *self = Target::start().await;
                self.keys.insert(key);
            }
        }
        &self.gw
    }
}

/// A plain OPTIONS to the gateway listening on `port`, for checking it still answers.
pub fn probe_options(port: u16) -> Vec<u8> {
    format!(
        "OPTIONS sip:probe@127.0.0.1:{port} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKprobe{port}\r\n\
         From: <sip:t@127.0.0.1>;tag=1\r\nTo: <sip:probe@127.0.0.1>\r\nCall-ID: probe{port}\r\n\
         CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

/// Compares the README's generated section between `begin` and `end` with `table`; rewrites
/// it when the environment variable `update` is set, else panics when it is stale.
pub fn check_readme(begin: &str, end: &str, table: &str, update: &str, test: &str) {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/README.md");
    let readme = std::fs::read_to_string(path).unwrap();
    let (Some(b), Some(e)) = (readme.find(begin), readme.find(end)) else {
        panic!("README.md has no {begin:?} … {end:?} section");
    };
    let current = &readme[b + begin.len()..e];
    if current != table {
        if std::env::var_os(update).is_some() {
            let updated = format!("{}{begin}{table}{}", &readme[..b], &readme[e..]);
            std::fs::write(path, updated).unwrap();
        } else {
            panic!(
                "README.md's table between {begin:?} and {end:?} is stale; run {update}=1 cargo test --test {test}.\nObserved:\n{table}"
            );
        }
    }
}
