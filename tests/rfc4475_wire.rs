//! RFC 4475 on the wire: each of the 49 torture messages is sent, byte for byte, to a running
//! gateway (default properties: inbound calls accepted) over UDP and over TCP, and what comes
//! back is compared with what RFC 4475 asks of an endpoint. The README's table of all 49 is
//! generated from what was observed here; the test fails when the README is stale
//! (`UPDATE_RFC4475=1 cargo test --test rfc4475_wire` rewrites it).
//!
//! Each transport gets its own gateway: the same message sent twice to one gateway would be a
//! retransmission of the first, absorbed by its server transaction. For the same reason a
//! message whose transaction key an earlier message already used (several torture messages
//! share `branch=z9hG4bKkdjuw` and a sent-by) goes to a fresh gateway.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use sipstream::sip::message::{self, Frame};
use sipstream::sip::transaction::TransactionKey;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use common::{sip_header, Gateway};

/// One torture message: what RFC 4475 expects of an endpoint, and what the gateway answers
/// over each transport (status codes in order; `closed` when it closes the connection after;
/// `-` for nothing).
struct Case {
    name: &'static str,
    section: &'static str,
    rfc: &'static str,
    udp: &'static str,
    tcp: &'static str,
}

const fn case(
    name: &'static str,
    section: &'static str,
    rfc: &'static str,
    udp: &'static str,
    tcp: &'static str,
) -> Case {
    Case {
        name,
        section,
        rfc,
        udp,
        tcp,
    }
}

const CASES: &[Case] = &[
    case(
        "wsinv",
        "3.1.1.1",
        "well formed (To tag: a dialog we do not have)",
        "481",
        "481",
    ),
    case(
        "intmeth",
        "3.1.1.2",
        "well formed; an endpoint answers 501",
        "501",
        "501",
    ),
    case(
        "esc01",
        "3.1.1.3",
        "well formed (INVITE)",
        "100 200",
        "100 200",
    ),
    case(
        "escnull",
        "3.1.1.4",
        "well formed (REGISTER; 405 from a non-registrar)",
        "405",
        "405",
    ),
    case(
        "esc02",
        "3.1.1.5",
        "well formed; an endpoint answers 501",
        "501",
        "501",
    ),
    case("lwsdisp", "3.1.1.6", "well formed (OPTIONS)", "200", "200"),
    case(
        "longreq",
        "3.1.1.7",
        "well formed (INVITE)",
        "100 200",
        "100 200",
    ),
    case(
        "dblreq",
        "3.1.1.8",
        "REGISTER answered, trailing datagram octets ignored",
        "405",
        "405 100 488 closed",
    ),
    case("semiuri", "3.1.1.9", "well formed (OPTIONS)", "200", "200"),
    case(
        "transports",
        "3.1.1.10",
        "well formed (OPTIONS)",
        "200",
        "200",
    ),
    case(
        "mpart01",
        "3.1.1.11",
        "well formed (MESSAGE; multipart/signed body)",
        "405",
        "405",
    ),
    case(
        "unreason",
        "3.1.1.12",
        "well-formed response (matches nothing: dropped)",
        "-",
        "-",
    ),
    case(
        "noreason",
        "3.1.1.13",
        "well-formed response (matches nothing: dropped)",
        "-",
        "-",
    ),
    case("badinv01", "3.1.2.1", "400", "400", "400"),
    case(
        "clerr",
        "3.1.2.2",
        "UDP: 400; TCP: wait for the body, close if none comes",
        "400",
        "-",
    ),
    case(
        "ncl",
        "3.1.2.3",
        "an error; TCP: close the connection",
        "400",
        "400 closed",
    ),
    case("scalar02", "3.1.2.4", "400 (CSeq)", "400", "400"),
    case("scalarlg", "3.1.2.5", "response: discard", "-", "-"),
    case("quotbal", "3.1.2.6", "400", "400", "400"),
    case("ltgtruri", "3.1.2.7", "400", "400", "400"),
    case("lwsruri", "3.1.2.8", "400", "400", "400"),
    case(
        "lwsstart",
        "3.1.2.9",
        "may be rejected as malformed",
        "400",
        "400",
    ),
    case(
        "trws",
        "3.1.2.10",
        "may be rejected as malformed",
        "400",
        "400",
    ),
    case("escruri", "3.1.2.11", "400 acceptable", "400", "400"),
    case(
        "baddate",
        "3.1.2.12",
        "accept unless Date matters (INVITE)",
        "100 200",
        "100 200",
    ),
    case("regbadct", "3.1.2.13", "400", "400", "400"),
    case("badaspec", "3.1.2.14", "400", "400", "400"),
    case(
        "baddn",
        "3.1.2.15",
        "400 (no empty line ends it: a stream waits)",
        "400",
        "-",
    ),
    case("badvers", "3.1.2.16", "505", "505", "505"),
    case("mismatch01", "3.1.2.17", "400", "400", "400"),
    case(
        "mismatch02",
        "3.1.2.18",
        "501 (400 acceptable)",
        "501",
        "501",
    ),
    case("bigcode", "3.1.2.19", "response: drop", "-", "-"),
    case(
        "badbranch",
        "3.2.1",
        "400, or RFC 2543 transaction matching",
        "200",
        "200",
    ),
    case("insuf", "3.3.1", "400", "400", "400"),
    case("unkscm", "3.3.2", "416", "416", "416"),
    case("novelsc", "3.3.3", "416 (or 404)", "416", "416"),
    case(
        "unksm2",
        "3.3.4",
        "REGISTER: not a registrar (405)",
        "405",
        "405",
    ),
    case("bext01", "3.3.5", "420 with Unsupported", "420", "420"),
    case("invut", "3.3.6", "415", "415", "415"),
    case(
        "regaut01",
        "3.3.7",
        "405 from a non-registrar",
        "405",
        "405",
    ),
    case("multi01", "3.3.8", "400", "400", "400"),
    case(
        "mcl01",
        "3.3.9",
        "an error; TCP: close the connection",
        "400",
        "400 closed",
    ),
    case("bcast", "3.3.10", "response: discard", "-", "-"),
    case(
        "zeromf",
        "3.3.11",
        "endpoint: process normally (OPTIONS)",
        "200",
        "200",
    ),
    case(
        "cparam01",
        "3.3.12",
        "REGISTER (405 from a non-registrar)",
        "405",
        "405",
    ),
    case(
        "cparam02",
        "3.3.13",
        "REGISTER (405 from a non-registrar)",
        "405",
        "405",
    ),
    case(
        "regescrt",
        "3.3.14",
        "REGISTER (405 from a non-registrar)",
        "405",
        "405",
    ),
    case("sdp01", "3.3.15", "406 with Warning (or 400)", "406", "406"),
    case(
        "inv2543",
        "3.4.1",
        "accepted (RFC 2543 INVITE; UDP only)",
        "100 200",
        "400 closed",
    ),
];

fn fixture(name: &str) -> Vec<u8> {
    let path = format!(
        "{}/tests/fixtures/rfc4475/{name}.dat",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// What came back: each response's status line, and whether the connection was closed.
#[derive(Default)]
struct Observed {
    lines: Vec<String>,
    closed: bool,
}

impl Observed {
    fn codes(&self) -> String {
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
    fn final_line(&self) -> String {
        self.lines
            .iter()
            .rev()
            .find(|l| !l.starts_with("SIP/2.0 1"))
            .map(|l| l.trim_start_matches("SIP/2.0 ").to_string())
            .unwrap_or_default()
    }

    fn has_final(&self) -> bool {
        self.lines.iter().any(|l| !l.starts_with("SIP/2.0 1"))
    }
}

fn status_line(resp: &[u8]) -> String {
    let text = String::from_utf8_lossy(resp);
    text.lines().next().unwrap_or_default().to_string()
}

/// The first value of a header in a response we received (full names: the gateway writes
/// ACK (and BYE after a 2xx) for an answered INVITE, so that the gateway stops resending its
/// answer and the accepted call ends. `via` is our transport's Via value without branch.
fn after_invite(final_resp: &str, request_uri: &str, via: &str) -> Vec<Vec<u8>> {
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
    let target = sip_header(final_resp, "Contact")
        .map(|c| c.trim_start_matches('<').split('>').next().unwrap_or(c))
        .unwrap_or(request_uri);
    let req = |method: &str, seq: u64, branch: &str| {
        format!(
            "{method} {target} SIP/2.0\r\nVia: {via};branch=z9hG4bK{branch}\r\nFrom: {from}\r\nTo: {to}\r\n\
             Call-ID: {call_id}\r\nCSeq: {seq} {method}\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
        )
        .into_bytes()
    };
    let mut out = vec![req("ACK", n, &format!("ack{n}"))];
    if final_resp.starts_with("SIP/2.0 2") {
        out.push(req("BYE", n + 1, &format!("bye{n}")));
    }
    out
}

fn request_uri(bytes: &[u8]) -> Option<String> {
    let line = status_line(bytes);
    let mut parts = line.split(' ');
    let method = parts.next()?;
    (method == "INVITE").then(|| parts.next().map(str::to_owned))?
}

async fn over_udp(gw: &Gateway, bytes: &[u8]) -> Observed {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let to = format!("127.0.0.1:{}", gw.sip_port);
    let via = format!("SIP/2.0/UDP {}", sock.local_addr().unwrap());
    sock.send_to(bytes, &to).await.unwrap();
    let mut seen = Observed::default();
    let mut buf = vec![0u8; 65536];
    let mut last = String::new();
    loop {
        // Wait longer for a final answer than for anything after it (a second answer would
        // be a fault: dblreq's trailing octets).
        let wait = if seen.has_final() { 300 } else { 700 };
        match tokio::time::timeout(Duration::from_millis(wait), sock.recv_from(&mut buf)).await {
            Ok(Ok((n, _))) => {
                let resp = &buf[..n];
                let line = status_line(resp);
                // The gateway resends a final answer to an INVITE until it is ACKed.
                if seen.lines.last() != Some(&line) {
                    seen.lines.push(line);
                }
                last = String::from_utf8_lossy(resp).into_owned();
            }
            _ => break,
        }
    }
    if let (Some(uri), true) = (request_uri(bytes), seen.has_final()) {
        for m in after_invite(&last, &uri, &via) {
            sock.send_to(&m, &to).await.unwrap();
        }
    }
    seen
}

async fn over_tcp(gw: &Gateway, bytes: &[u8]) -> Observed {
    let mut stream = TcpStream::connect(("127.0.0.1", gw.sip_port))
        .await
        .unwrap();
    let via = format!("SIP/2.0/TCP {}", stream.local_addr().unwrap());
    stream.write_all(bytes).await.unwrap();
    let mut seen = Observed::default();
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 65536];
    let mut last = String::new();
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
                    last = String::from_utf8_lossy(&resp).into_owned();
                }
            }
            Err(_) => break,
        }
    }
    if let (Some(uri), true, false) = (request_uri(bytes), seen.has_final(), seen.closed) {
        for m in after_invite(&last, &uri, &via) {
            stream.write_all(&m).await.unwrap();
        }
        // Let the BYE's answer come before the socket goes.
        let _ = tokio::time::timeout(Duration::from_millis(300), stream.read(&mut chunk)).await;
    }
    seen
}

fn readme_table(rows: &[(String, String)]) -> String {
    let mut out = String::from(
        "| message | RFC 4475 | what RFC 4475 asks of an endpoint | UDP answer | TCP answer |\n\
         |---|---|---|---|---|\n",
    );
    for (c, (udp, tcp)) in CASES.iter().zip(rows) {
        out.push_str(&format!(
            "| `{}` | §{} | {} | {} | {} |\n",
            c.name, c.section, c.rfc, udp, tcp
        ));
    }
    out
}

/// One README cell: the codes, with the final answer's reason phrase (it names the fault).
fn cell(seen: &Observed, stream: bool) -> String {
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

const BEGIN: &str = "<!-- rfc4475:begin (generated by tests/rfc4475_wire.rs) -->\n";
const END: &str = "<!-- rfc4475:end -->";

/// A gateway and the server-transaction keys the messages sent to it have used.
struct Target {
    gw: Gateway,
    keys: HashSet<TransactionKey>,
}

impl Target {
    async fn start() -> Target {
        Target {
            gw: Gateway::start(&[]).await,
            keys: HashSet::new(),
        }
    }

    /// The gateway to send `bytes` to: this one, or a fresh one when it already saw a
    /// transaction with the same key.
    async fn for_message(&mut self, bytes: &[u8]) -> &Gateway {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_49_torture_messages_over_udp_and_tcp() {
    assert_eq!(CASES.len(), 49);
    let (mut udp_target, mut tcp_target) = tokio::join!(Target::start(), Target::start());
    let mut rows = Vec::new();
    let mut wrong = Vec::new();
    for c in CASES {
        let bytes = fixture(c.name);
        let (udp_gw, tcp_gw) = tokio::join!(
            udp_target.for_message(&bytes),
            tcp_target.for_message(&bytes)
        );
        let (udp, tcp) = tokio::join!(over_udp(udp_gw, &bytes), over_tcp(tcp_gw, &bytes));
        eprintln!(
            "{:<11} udp: {:<12} tcp: {}",
            c.name,
            udp.codes(),
            tcp.codes()
        );
        if udp.codes() != c.udp {
            wrong.push(format!(
                "{} over UDP: {} (want {})",
                c.name,
                udp.codes(),
                c.udp
            ));
        }
        if tcp.codes() != c.tcp {
            wrong.push(format!(
                "{} over TCP: {} (want {})",
                c.name,
                tcp.codes(),
                c.tcp
            ));
        }
        rows.push((cell(&udp, false), cell(&tcp, true)));
    }
    // Garbage or not, the gateways still work: a plain OPTIONS gets 200 over each transport.
    let options = |port: u16| {
        format!(
            "OPTIONS sip:probe@127.0.0.1:{port} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKprobe{port}\r\n\
             From: <sip:t@127.0.0.1>;tag=1\r\nTo: <sip:probe@127.0.0.1>\r\nCall-ID: probe{port}\r\n\
             CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
        )
        .into_bytes()
    };
    let udp = over_udp(&udp_target.gw, &options(udp_target.gw.sip_port)).await;
    let tcp = over_tcp(&tcp_target.gw, &options(tcp_target.gw.sip_port)).await;
    assert_eq!((udp.codes().as_str(), tcp.codes().as_str()), ("200", "200"));
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));

    let table = readme_table(&rows);
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/README.md");
    let readme = std::fs::read_to_string(path).unwrap();
    let (Some(b), Some(e)) = (readme.find(BEGIN), readme.find(END)) else {
        panic!("README.md has no {BEGIN:?} … {END:?} section");
    };
    let current = &readme[b + BEGIN.len()..e];
    if current != table {
        if std::env::var_os("UPDATE_RFC4475").is_some() {
            let updated = format!("{}{BEGIN}{table}{}", &readme[..b], &readme[e..]);
            std::fs::write(path, updated).unwrap();
        } else {
            panic!(
                "README.md's RFC 4475 table is stale; run UPDATE_RFC4475=1 cargo test --test rfc4475_wire.\nObserved:\n{table}"
            );
        }
    }
}
