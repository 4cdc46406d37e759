//! A lossy, slow network between two SIP parties, in user space. This kernel has no `sch_netem`
//! (`tc qdisc add … netem` fails: "Specified qdisc kind is unknown"), so the tests put this
//! relay on the path instead: side A (the party that connects to [`Relay::port`]) and side B
//! (the target) talk through it, SIP and RTP alike.
//!
//! - SIP over UDP: every datagram may be lost, and is delayed (`delay` plus up to `jitter`, so
//!   datagrams overtake each other). `drop_first` also loses the first copy of every INVITE,
//!   BYE and 2xx to an INVITE, so that the retransmission timers (A, E, and the 2xx resending
//!   of RFC 3261 §13.3.1.4) must work for the call to go on.
//! - SIP over TCP: delayed in order (a stream cannot lose a segment in user space).
//! - RTP: each SDP's audio address is replaced by a relay socket, so media crosses the same
//!   impaired path (lost, delayed, reordered).
//!
//! It counts the copies of each SIP message it saw and the RTP it forwarded and dropped.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use sipstream::sip::message::{self, Frame};

use super::sip_header;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;

#[derive(Debug, Clone, Copy)]
pub struct Impairment {
    /// Probability that a datagram (SIP over UDP, RTP) is lost.
    pub loss: f64,
    pub delay: Duration,
    /// Extra delay, uniform in 0..jitter, per datagram.
    pub jitter: Duration,
    pub drop_first: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Side {
    A = 0,
    B = 1,
}

impl Side {
    fn other(self) -> Side {
        match self {
            Side::A => Side::B,
            Side::B => Side::A,
        }
    }
}

/// The audio path of one call: `faces[s]` is the relay socket side `s` sends its RTP to,
/// `addrs[s]` where side `s` receives.
#[derive(Default)]
struct Media {
    faces: [Option<Arc<UdpSocket>>; 2],
    addrs: [Option<SocketAddr>; 2],
    started: bool,
}

pub struct Relay {
    /// Where side A sends its SIP.
    pub port: u16,
    shared: Arc<Shared>,
}

struct Shared {
    imp: Impairment,
    rng: Mutex<u64>,
    /// Copies seen of each SIP message, by "start line | CSeq | Call-ID".
    copies: Mutex<HashMap<String, u32>>,
    calls: Mutex<HashMap<String, Media>>,
    /// RTP forwarded and dropped, by the side it came from.
    rtp_forwarded: [AtomicU64; 2],
    rtp_dropped: [AtomicU64; 2],
    sip_dropped: AtomicU64,
}

impl Relay {
    /// A relay for SIP over UDP to `target` (side B).
    pub async fn udp(target: SocketAddr, imp: Impairment) -> Relay {
        let shared = Shared::new(imp);
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let back = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let port = front.local_addr().unwrap().port();
        let a_addr: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
        {
            let (shared, front, back, a_addr) =
                (shared.clone(), front.clone(), back.clone(), a_addr.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                while let Ok((n, from)) = front.recv_from(&mut buf).await {
                    *a_addr.lock() = Some(from);
                    if let Some(out) = shared.sip(Side::A, &buf[..n]).await {
                        shared.send_later(&back, out, target);
                    }
                }
            });
        }
        {
            let shared = shared.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                while let Ok((n, _)) = back.recv_from(&mut buf).await {
                    let Some(to) = *a_addr.lock() else { continue };
                    if let Some(out) = shared.sip(Side::B, &buf[..n]).await {
                        shared.send_later(&front, out, to);
                    }
                }
            });
        }
        Relay { port, shared }
    }

    /// A relay for SIP over TCP to `target` (side B): each connection from side A gets one
    /// to the target; messages are delayed in order.
    pub async fn tcp(target: SocketAddr, imp: Impairment) -> Relay {
        let shared = Shared::new(imp);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let s = shared.clone();
        tokio::spawn(async move {
            while let Ok((a, _)) = listener.accept().await {
                let Ok(b) = TcpStream::connect(target).await else {
                    continue;
                };
                let (ar, aw) = a.into_split();
                let (br, bw) = b.into_split();
                tokio::spawn(pump(s.clone(), Side::A, ar, bw));
                tokio::spawn(pump(s.clone(), Side::B, br, aw));
            }
        });
        Relay { port, shared }
    }

    /// How many copies of the SIP message with this start line (e.g. `INVITE`, `200`), CSeq
    /// method and Call-ID passed through or were dropped.
    pub fn copies(&self, start: &str, cseq_method: &str, call_id: &str) -> u32 {
        self.shared
            .copies
            .lock()
            .iter()
            .filter(|(k, _)| {
                let mut parts = k.split(" | ");
                parts.next() == Some(start)
                    && parts.next().is_some_and(|c| c.ends_with(cseq_method))
                    && parts.next() == Some(call_id)
            })
            .map(|(_, n)| *n)
            .sum()
    }

    /// The Call-IDs of the calls whose media crosses the relay.
    pub fn call_ids(&self) -> Vec<String> {
        self.shared.calls.lock().keys().cloned().collect()
    }

    /// What the relay knows of a call's audio path (for failure messages).
    pub fn media(&self, call_id: &str) -> String {
        let calls = self.shared.calls.lock();
        let Some(m) = calls.get(call_id) else {
            return "no media".into();
        };
        let face = |f: &Option<Arc<UdpSocket>>| f.as_ref().and_then(|s| s.local_addr().ok());
        format!(
            "A at {:?} sends to {:?}; B at {:?} sends to {:?}; started {}",
            m.addrs[0],
            face(&m.faces[0]),
            m.addrs[1],
            face(&m.faces[1]),
            m.started
        )
    }

    /// RTP (forwarded, dropped) that came from `side`.
    pub fn rtp(&self, side: Side) -> (u64, u64) {
        let i = side as usize;
        (
            self.shared.rtp_forwarded[i].load(Ordering::Relaxed),
            self.shared.rtp_dropped[i].load(Ordering::Relaxed),
        )
    }

    pub fn sip_dropped(&self) -> u64 {
        self.shared.sip_dropped.load(Ordering::Relaxed)
    }
}

/// One direction of a TCP relay: frames SIP messages, rewrites their SDP, writes each after
/// the delay, in order.
async fn pump(
    shared: Arc<Shared>,
    from: Side,
    mut reader: tokio::net::tcp::OwnedReadHalf,
    mut writer: tokio::net::tcp::OwnedWriteHalf,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    let delay = shared.imp.delay;
    tokio::spawn(async move {
        while let Some((at, bytes)) = rx.recv().await {
            tokio::time::sleep_until(at).await;
            if writer.write_all(&bytes).await.is_err() {
                break;
            }
        }
    });
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 65536];
    loop {
        match reader.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        loop {
            match message::frame(&buf) {
                Frame::Message(len) => {
                    let msg: Vec<u8> = buf.drain(..len).collect();
                    let out = shared.rewrite(from, &msg).await;
                    shared.count(&out);
                    let _ = tx.send((tokio::time::Instant::now() + delay, out));
                }
                Frame::KeepAlive(n) => {
                    buf.drain(..n);
                }
                Frame::Incomplete => break,
                Frame::Invalid(_) => return,
            }
        }
    }
}

impl Shared {
    fn new(imp: Impairment) -> Arc<Shared> {
        Arc::new(Shared {
            imp,
            rng: Mutex::new(0x2545_F491_4F6C_DD1D),
            copies: Mutex::default(),
            calls: Mutex::default(),
            rtp_forwarded: Default::default(),
            rtp_dropped: Default::default(),
            sip_dropped: AtomicU64::new(0),
        })
    }

    /// Uniform in [0, 1) (xorshift64, seeded: a run is repeatable given the same timing).
    fn random(&self) -> f64 {
        let mut s = self.rng.lock();
        *s ^= *s << 13;
        *s ^= *s >> 7;
        *s ^= *s << 17;
        (*s >> 11) as f64 / (1u64 << 53) as f64
    }

    fn lost(&self) -> bool {
        self.random() < self.imp.loss
    }

    fn send_later(&self, sock: &Arc<UdpSocket>, bytes: Vec<u8>, to: SocketAddr) {
        let delay = self.imp.delay + self.imp.jitter.mul_f64(self.random());
        let sock = sock.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = sock.send_to(&bytes, to).await;
        });
    }

    /// Counts a SIP message; returns how many copies of it were seen, this one included.
    fn count(&self, msg: &[u8]) -> u32 {
        let text = String::from_utf8_lossy(msg);
        let start = text.lines().next().unwrap_or_default();
        let start = start
            .strip_prefix("SIP/2.0 ")
            .map(|r| r.split(' ').next().unwrap_or_default())
            .unwrap_or_else(|| start.split(' ').next().unwrap_or_default());
        let key = format!(
            "{start} | {} | {}",
            sip_header(&text, "CSeq").unwrap_or_default(),
            sip_header(&text, "Call-ID").unwrap_or_default()
        );
        let mut copies = self.copies.lock();
        let n = copies.entry(key).or_default();
        *n += 1;
        *n
    }

    /// A SIP datagram from `from`: counted, maybe dropped, its SDP pointed at the relay.
    async fn sip(self: &Arc<Self>, from: Side, msg: &[u8]) -> Option<Vec<u8>> {
        let copy = self.count(msg);
        let text = String::from_utf8_lossy(msg);
        let first = text.lines().next().unwrap_or_default();
        let is_invite_2xx = first.starts_with("SIP/2.0 2")
            && sip_header(&text, "CSeq").is_some_and(|c| c.ends_with("INVITE"));
        let forced = self.imp.drop_first
            && copy == 1
            && (first.starts_with("INVITE ") || first.starts_with("BYE ") || is_invite_2xx);
        if forced || self.lost() {
            self.sip_dropped.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(self.rewrite(from, msg).await)
    }

    /// Points the audio of an SDP body from `from` at the relay socket the other side will
    /// send to, and starts the call's RTP pipes once both sides have spoken.
    async fn rewrite(self: &Arc<Self>, from: Side, msg: &[u8]) -> Vec<u8> {
        let text = String::from_utf8_lossy(msg).into_owned();
        let Some((head, body)) = text.split_once("\r\n\r\n") else {
            return msg.to_vec();
        };
        let (Some(ip), Some(port)) = (sdp_ip(body), sdp_audio_port(body)) else {
            return msg.to_vec();
        };
        let Some(call_id) = sip_header(head, "Call-ID").map(str::to_owned) else {
            return msg.to_vec();
        };
        let media_addr = SocketAddr::new(ip, port);
        let to = from.other();
        // The socket the other side will send to on our behalf: bound once per call.
        let face = {
            let existing = self
                .calls
                .lock()
                .get(&call_id)
                .and_then(|m| m.faces[to as usize].clone());
            match existing {
                Some(f) => f,
                None => Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap()),
            }
        };
        let (face_port, start) = {
            let mut calls = self.calls.lock();
            let m = calls.entry(call_id).or_default();
            m.addrs[from as usize] = Some(media_addr);
            let face_port = m.faces[to as usize]
                .get_or_insert(face)
                .local_addr()
                .unwrap()
                .port();
            let ready = m.faces.iter().all(Option::is_some)
                && m.addrs.iter().all(Option::is_some)
                && !m.started;
            if ready {
                m.started = true;
                (face_port, Some((m.faces.clone(), m.addrs)))
            } else {
                (face_port, None)
            }
        };
        if let Some((faces, addrs)) = start {
            for side in [Side::A, Side::B] {
                let i = side as usize;
                let (Some(rx), Some(tx), Some(dest)) =
                    (faces[i].clone(), faces[1 - i].clone(), addrs[1 - i])
                else {
                    continue;
                };
                let shared = self.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 2048];
                    while let Ok((n, _)) = rx.recv_from(&mut buf).await {
                        if shared.lost() {
                            shared.rtp_dropped[i].fetch_add(1, Ordering::Relaxed);
                        } else {
                            shared.rtp_forwarded[i].fetch_add(1, Ordering::Relaxed);
                            shared.send_later(&tx, buf[..n].to_vec(), dest);
                        }
                    }
                });
            }
        }
        let body: String = body
            .split("\r\n")
            .map(|l| {
                if l.starts_with("c=IN IP4 ") {
                    "c=IN IP4 127.0.0.1".to_string()
                } else if let Some(rest) = l.strip_prefix("m=audio ") {
                    let tail = rest.split_once(' ').map(|(_, t)| t).unwrap_or_default();
                    format!("m=audio {face_port} {tail}")
                } else {
                    l.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\r\n");
        let head: String = head
            .split("\r\n")
            .map(|l| {
                let name = l.split(':').next().unwrap_or_default().trim();
                if name.eq_ignore_ascii_case("Content-Length") || name.eq_ignore_ascii_case("l") {
                    format!("Content-Length: {}", body.len())
                } else {
                    l.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\r\n");
        format!("{head}\r\n\r\n{body}").into_bytes()
    }
}

fn sdp_ip(body: &str) -> Option<std::net::IpAddr> {
    body.split("\r\n")
        .find_map(|l| l.strip_prefix("c=IN IP4 "))
        .and_then(|ip| ip.trim().parse().ok())
}

fn sdp_audio_port(body: &str) -> Option<u16> {
    body.split("\r\n")
        .find_map(|l| l.strip_prefix("m=audio "))
        .and_then(|rest| rest.split(' ').next())
        .and_then(|p| p.parse().ok())
}
