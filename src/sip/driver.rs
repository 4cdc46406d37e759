//! The tokio driver of the SIP user agent: owns the UDP socket, the TCP listener and
//! connections, and the clock; feeds the sans-IO [`UserAgent`] and carries out what it asks.
//! One task runs the UA; one reader and one writer task run per TCP connection.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::Instrument;

use super::endpoint::{EndpointStats, Transmit, Transport};
use super::message::{self, Frame};
use super::ua::{Command, UaConfig, UaEvent, UserAgent};

#[derive(Debug, Clone)]
pub struct DriverConfig {
    pub bind: IpAddr,
    pub port: u16,
    pub udp: bool,
    pub tcp: bool,
    pub socket_buffer: usize,
    pub max_message_size: usize,
    pub ua: UaConfig,
}

enum DriverCmd {
    Ua(Command),
    Stats(oneshot::Sender<EndpointStats>),
}

/// Handle to the running SIP driver.
#[derive(Clone)]
pub struct SipHandle {
    tx: mpsc::UnboundedSender<DriverCmd>,
    pub udp_local: Option<SocketAddr>,
    pub tcp_local: Option<SocketAddr>,
}

impl SipHandle {
    /// Queues a command for the UA; false when the driver has stopped.
    pub fn command(&self, cmd: Command) -> bool {
        self.tx.send(DriverCmd::Ua(cmd)).is_ok()
    }

    pub async fn stats(&self) -> Option<EndpointStats> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(DriverCmd::Stats(tx)).ok()?;
        rx.await.ok()
    }

    /// The port our SIP sockets listen on for `transport`.
    pub fn port(&self, transport: Transport) -> Option<u16> {
        match transport {
            Transport::Udp => self.udp_local.map(|a| a.port()),
            Transport::Tcp => self.tcp_local.map(|a| a.port()),
        }
    }
}

/// UA events queued for the call layer. When fewer than a quarter are free, new incoming
/// calls are shed (503); when none is, the driver waits, and stops reading its sockets
/// meanwhile (the kernel drops what comes: the last resort).
pub const EVENT_QUEUE: usize = 8192;
/// Messages from TCP connections waiting for the driver (each connection waits when full:
/// TCP flow control slows its peer).
const NET_QUEUE: usize = 1024;
/// Messages waiting to be written to one TCP peer; a peer that lets this fill is not
/// reading and is disconnected.
const TCP_WRITE_QUEUE: usize = 512;
/// How long a connection that sent an unframeable message stays open for the answers to the
/// requests read before it (RFC 4475 dblreq over TCP: the INVITE's answer comes from the call
/// layer a moment later).
const TCP_CLOSE_LINGER: Duration = Duration::from_millis(500);

enum NetInput {
    Tcp(SocketAddr, Bytes),
    TcpAccepted(SocketAddr, mpsc::Sender<Bytes>),
    TcpFailed(SocketAddr),
    TcpClosed(SocketAddr),
    /// A stateless answer to what the connection sent (a request it cannot frame).
    TcpAnswer(SocketAddr, Bytes),
}

/// Binds the sockets and starts the driver task. UA events go to `events`.
pub async fn start(cfg: DriverConfig, events: mpsc::Sender<UaEvent>) -> io::Result<SipHandle> {
    let udp = if cfg.udp {
        Some(Arc::new(bind_udp(
            SocketAddr::new(cfg.bind, cfg.port),
            cfg.socket_buffer,
        )?))
    } else {
        None
    };
    let tcp = if cfg.tcp {
        // With port 0 the TCP listener takes the UDP port, so that one port serves both.
        let port = match (&udp, cfg.port) {
            (Some(u), 0) => u.local_addr()?.port(),
            _ => cfg.port,
        };
        Some(TcpListener::bind(SocketAddr::new(cfg.bind, port)).await?)
    } else {
        None
    };
    let udp_local = udp.as_ref().map(|u| u.local_addr()).transpose()?;
    let tcp_local = tcp.as_ref().map(|t| t.local_addr()).transpose()?;
    let (tx, rx) = mpsc::unbounded_channel();
    let (net_tx, net_rx) = mpsc::channel(NET_QUEUE);
    if let Some(listener) = tcp {
        tokio::spawn(accept_loop(listener, net_tx.clone(), cfg.max_message_size));
    }
    let ua = UserAgent::new(Instant::now().into_std(), cfg.ua.clone());
    let driver = Driver {
        ua,
        udp,
        tcp_conns: HashMap::new(),
        net_tx,
        events,
        max: cfg.max_message_size,
        overloaded: false,
    };
    tokio::spawn(
        driver
            .run(rx, net_rx)
            .instrument(tracing::info_span!("sip")),
    );
    tracing::info!(?udp_local, ?tcp_local, "SIP listening");
    Ok(SipHandle {
        tx,
        udp_local,
        tcp_local,
    })
}

fn bind_udp(addr: SocketAddr, buffer: usize) -> io::Result<UdpSocket> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    // A large receive buffer keeps call bursts from turning into retransmission storms.
    if let Err(e) = socket.set_recv_buffer_size(buffer) {
        tracing::warn!(error = %e, "cannot set SIP SO_RCVBUF");
    }
    if let Err(e) = socket.set_send_buffer_size(buffer) {
        tracing::warn!(error = %e, "cannot set SIP SO_SNDBUF");
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    UdpSocket::from_std(socket.into())
}

struct Driver {
    ua: UserAgent,
    udp: Option<Arc<UdpSocket>>,
    tcp_conns: HashMap<SocketAddr, mpsc::Sender<Bytes>>,
    net_tx: mpsc::Sender<NetInput>,
    events: mpsc::Sender<UaEvent>,
    max: usize,
    /// New calls are being shed.
    overloaded: bool,
}

impl Driver {
    async fn run(
        mut self,
        mut cmds: mpsc::UnboundedReceiver<DriverCmd>,
        mut net: mpsc::Receiver<NetInput>,
    ) {
        let mut buf = vec![0u8; 65536];
        let udp = self.udp.clone();
        loop {
            let deadline = self
                .ua
                .poll_timeout()
                .map(Instant::from_std)
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                r = async { match &udp { Some(u) => u.recv_from(&mut buf).await, None => std::future::pending().await } } => {
                    match r {
                        Ok((n, from)) => {
                            let now = Instant::now().into_std();
                            match buf.get(..n) {
                                Some(data) if n <= self.max => self.ua.handle_input(now, Transport::Udp, from, data),
                                _ => tracing::debug!(%from, n, "oversized SIP datagram dropped"),
                            }
                        }
                        // ICMP port unreachable surfaces here on Linux; the transaction
                        // timers take care of the peer that is gone.
                        Err(e) => tracing::debug!(error = %e, "SIP UDP receive error"),
                    }
                }
                Some(input) = net.recv() => {
                    let now = Instant::now().into_std();
                    match input {
                        NetInput::Tcp(from, data) => self.ua.handle_input(now, Transport::Tcp, from, &data),
                        NetInput::TcpFailed(peer) => {
                            self.tcp_conns.remove(&peer);
                            self.ua.handle_transport_error(now, Transport::Tcp, peer);
                        }
                        NetInput::TcpAccepted(peer, writer) => { self.tcp_conns.insert(peer, writer); }
                        NetInput::TcpClosed(peer) => { self.tcp_conns.remove(&peer); }
                        NetInput::TcpAnswer(peer, answer) => {
                            if let Some(writer) = self.tcp_conns.get(&peer) {
                                let _ = writer.try_send(answer);
                            }
                        }
                    }
                }
                cmd = cmds.recv() => {
                    let now = Instant::now().into_std();
                    match cmd {
                        Some(DriverCmd::Ua(c)) => self.ua.handle_command(now, c),
                        Some(DriverCmd::Stats(reply)) => { let _ = reply.send(self.ua.stats()); }
                        None => break,
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {
                    self.ua.handle_timeout(Instant::now().into_std());
                }
            }
            self.flush().await;
        }
    }

    async fn flush(&mut self) {
        while let Some(t) = self.ua.poll_transmit() {
            self.send(t).await;
        }
        while let Some(ev) = self.ua.poll_event() {
            match self.events.try_send(ev) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(ev)) => {
                    self.set_overloaded(true);
                    // Back-pressure: nothing is read until the call layer takes this.
                    if self.events.send(ev).await.is_err() {
                        return;
                    }
                }
                Err(mpsc::error::TrySendError::Closed(_)) => return,
            }
        }
        let shed = self.events.capacity() < EVENT_QUEUE / 4;
        if shed != self.overloaded {
            self.set_overloaded(shed);
        }
    }

    fn set_overloaded(&mut self, on: bool) {
        if on != self.overloaded {
            if on {
                tracing::warn!(
                    queued = EVENT_QUEUE - self.events.capacity(),
                    "the call layer is behind: new incoming calls get 503 until it catches up"
                );
            } else {
                tracing::info!("the call layer caught up: incoming calls taken again");
            }
        }
        self.overloaded = on;
        self.ua.set_overloaded(on);
    }

    async fn send(&mut self, t: Transmit) {
        match t.transport {
            Transport::Udp => {
                let Some(udp) = &self.udp else {
                    tracing::warn!(dest = %t.dest, "UDP transport disabled; message not sent");
                    return;
                };
                if let Err(e) = udp.send_to(&t.data, t.dest).await {
                    tracing::debug!(dest = %t.dest, error = %e, "SIP UDP send failed");
                }
            }
            Transport::Tcp => {
                let conn = self
                    .tcp_conns
                    .get(&t.dest)
                    .filter(|c| !c.is_closed())
                    .cloned();
                let conn = match conn {
                    Some(c) => c,
                    None => {
                        let (tx, rx) = mpsc::channel(TCP_WRITE_QUEUE);
                        tokio::spawn(connect_and_run(t.dest, rx, self.net_tx.clone(), self.max));
                        self.tcp_conns.insert(t.dest, tx.clone());
                        tx
                    }
                };
                if let Err(mpsc::error::TrySendError::Full(_)) = conn.try_send(t.data) {
                    // Dropping our sender ends its writer task, which closes the connection.
                    tracing::info!(peer = %t.dest, "SIP TCP peer does not read; disconnected");
                    self.tcp_conns.remove(&t.dest);
                    self.ua.handle_transport_error(
                        Instant::now().into_std(),
                        Transport::Tcp,
                        t.dest,
                    );
                }
            }
        }
    }
}

async fn accept_loop(listener: TcpListener, net: mpsc::Sender<NetInput>, max: usize) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                // Responses to requests that came in on this connection go back on it
                // (RFC 3261 §18.2.2): the driver keys its writer by the peer address.
                let (tx, rx) = mpsc::channel::<Bytes>(TCP_WRITE_QUEUE);
                if net.send(NetInput::TcpAccepted(peer, tx)).await.is_err() {
                    return;
                }
                tokio::spawn(run_connection(stream, peer, rx, net.clone(), max));
            }
            Err(e) => {
                tracing::warn!(error = %e, "TCP accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn connect_and_run(
    peer: SocketAddr,
    rx: mpsc::Receiver<Bytes>,
    net: mpsc::Sender<NetInput>,
    max: usize,
) {
    match tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(peer)).await {
        Ok(Ok(stream)) => run_connection(stream, peer, rx, net, max).await,
        Ok(Err(e)) => {
            tracing::info!(%peer, error = %e, "SIP TCP connect failed");
            let _ = net.send(NetInput::TcpFailed(peer)).await;
        }
        Err(_) => {
            tracing::info!(%peer, "SIP TCP connect timed out");
            let _ = net.send(NetInput::TcpFailed(peer)).await;
        }
    }
}

async fn run_connection(
    stream: TcpStream,
    peer: SocketAddr,
    mut rx: mpsc::Receiver<Bytes>,
    net: mpsc::Sender<NetInput>,
    max: usize,
) {
    let _ = stream.set_nodelay(true);
    let (mut reader, mut writer) = stream.into_split();
    let write_net = net.clone();
    let writer_task = tokio::spawn(async move {
        while let Some(data) = rx.recv().await {
            if let Err(e) = writer.write_all(&data).await {
                tracing::debug!(%peer, error = %e, "SIP TCP write failed");
                let _ = write_net.send(NetInput::TcpFailed(peer)).await;
                break;
            }
        }
    });
    let mut buf = BytesMut::with_capacity(8192);
    loop {
        // Partial reads accumulate until `frame` finds a whole message by Content-Length.
        loop {
            match message::frame(&buf) {
                Frame::Incomplete => break,
                Frame::KeepAlive(n) => {
                    let _ = buf.split_to(n.min(buf.len()));
                }
                Frame::Message(n) => {
                    let msg = buf.split_to(n.min(buf.len())).freeze();
                    if net.send(NetInput::Tcp(peer, msg)).await.is_err() {
                        return;
                    }
                }
                Frame::Invalid(e) => {
                    // The stream cannot be framed any further. The fault is answered (400
                    // naming it) when it can be; answers to the requests read before it still
                    // go out for a moment; then the core lets go of the writer, which writes
                    // what is queued and closes.
                    tracing::info!(%peer, error = %e, "unframeable SIP over TCP; closing");
                    if let Some(answer) = e.answer() {
                        let _ = net.send(NetInput::TcpAnswer(peer, answer)).await;
                    }
                    tokio::time::sleep(TCP_CLOSE_LINGER).await;
                    let _ = net.send(NetInput::TcpClosed(peer)).await;
                    let _ = tokio::time::timeout(Duration::from_secs(2), writer_task).await;
                    return;
                }
            }
        }
        if buf.len() > max {
            tracing::info!(%peer, "SIP TCP message over the size limit; closing");
            break;
        }
        match reader.read_buf(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    writer_task.abort();
    let _ = net.send(NetInput::TcpClosed(peer)).await;
}

/// The local address the OS would use to reach `dest` (no packet is sent).
pub fn local_ip_for(dest: SocketAddr) -> Option<IpAddr> {
    let bind: SocketAddr = if dest.is_ipv4() {
        "0.0.0.0:0".parse().ok()?
    } else {
        "[::]:0".parse().ok()?
    };
    let s = std::net::UdpSocket::bind(bind).ok()?;
    s.connect(dest).ok()?;
    s.local_addr().ok().map(|a| a.ip())
}
