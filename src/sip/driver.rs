//! The tokio driver of the SIP user agent: owns the UDP socket, the TCP and TLS listeners and
//! connections, and the clock; feeds the sans-IO [`UserAgent`] and carries out what it asks.
//! One task runs the UA; one reader and one writer task run per TCP or TLS connection (a TLS
//! connection is a TCP connection behind rustls: the same framing and the same tasks).

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
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
    /// SIP over TLS: the client side always; a listener when it has a server config.
    pub tls: Option<TlsDriverConfig>,
    pub socket_buffer: usize,
    pub max_message_size: usize,
    pub ua: UaConfig,
}

/// SIP over TLS in the driver.
#[derive(Clone)]
pub struct TlsDriverConfig {
    /// Port of the TLS listener (0: any), and the port our Via and Contact announce for TLS
    /// when there is no listener (then the provider must send its requests on our
    /// connection).
    pub port: u16,
    pub client: Arc<rustls::ClientConfig>,
    pub server: Option<Arc<rustls::ServerConfig>>,
}

impl std::fmt::Debug for TlsDriverConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsDriverConfig")
            .field("port", &self.port)
            .field("listener", &self.server.is_some())
            .finish()
    }
}

enum DriverCmd {
    Ua(Command),
    Stats(oneshot::Sender<EndpointStats>),
    TlsName(SocketAddr, String),
}

/// Handle to the running SIP driver.
#[derive(Clone)]
pub struct SipHandle {
    tx: mpsc::UnboundedSender<DriverCmd>,
    pub udp_local: Option<SocketAddr>,
    pub tcp_local: Option<SocketAddr>,
    /// The TLS listener's address, or (no listener, TLS client only) the port announced.
    pub tls_local: Option<SocketAddr>,
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
            Transport::Tls => self.tls_local.map(|a| a.port()),
        }
    }

    /// The name a TLS connection to `dest` must find in the peer's certificate (RFC 5922
    /// §7: the host of the URI we located); without one, the address itself is checked.
    /// Queued before the command that sends there, so it is known when the connection opens.
    pub fn tls_name(&self, dest: SocketAddr, host: &str) {
        let _ = self.tx.send(DriverCmd::TlsName(dest, host.to_string()));
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

/// What the connection tasks tell the driver; `Transport` is Tcp or Tls.
enum NetInput {
    Stream(Transport, SocketAddr, Bytes),
    Accepted(Transport, SocketAddr, mpsc::Sender<Bytes>),
    Failed(Transport, SocketAddr),
    Closed(Transport, SocketAddr),
    /// A stateless answer to what the connection sent (a request it cannot frame).
    Answer(Transport, SocketAddr, Bytes),
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
    let tls_listener = match &cfg.tls {
        Some(TlsDriverConfig {
            port,
            server: Some(server),
            ..
        }) => Some((
            TcpListener::bind(SocketAddr::new(cfg.bind, *port)).await?,
            tokio_rustls::TlsAcceptor::from(server.clone()),
        )),
        _ => None,
    };
    let udp_local = udp.as_ref().map(|u| u.local_addr()).transpose()?;
    let tcp_local = tcp.as_ref().map(|t| t.local_addr()).transpose()?;
    let tls_local = match (&tls_listener, &cfg.tls) {
        (Some((l, _)), _) => Some(l.local_addr()?),
        (None, Some(t)) => Some(SocketAddr::new(cfg.bind, t.port)),
        (None, None) => None,
    };
    let (tx, rx) = mpsc::unbounded_channel();
    let (net_tx, net_rx) = mpsc::channel(NET_QUEUE);
    if let Some(listener) = tcp {
        tokio::spawn(accept_loop(
            listener,
            None,
            net_tx.clone(),
            cfg.max_message_size,
        ));
    }
    if let Some((listener, acceptor)) = tls_listener {
        tokio::spawn(accept_loop(
            listener,
            Some(acceptor),
            net_tx.clone(),
            cfg.max_message_size,
        ));
    }
    let ua = UserAgent::new(Instant::now().into_std(), cfg.ua.clone());
    let driver = Driver {
        ua,
        udp,
        conns: HashMap::new(),
        tls_client: cfg
            .tls
            .as_ref()
            .map(|t| tokio_rustls::TlsConnector::from(t.client.clone())),
        tls_names: HashMap::new(),
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
    tracing::info!(?udp_local, ?tcp_local, ?tls_local, "SIP listening");
    Ok(SipHandle {
        tx,
        udp_local,
        tcp_local,
        tls_local,
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
    /// Writers of the open TCP and TLS connections, by transport and peer.
    conns: HashMap<(Transport, SocketAddr), mpsc::Sender<Bytes>>,
    tls_client: Option<tokio_rustls::TlsConnector>,
    /// Certificate names for TLS destinations ([`SipHandle::tls_name`]). Grows with the
    /// distinct provider addresses a gateway talks to, which is a short list.
    tls_names: HashMap<SocketAddr, String>,
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
                        NetInput::Stream(t, from, data) => self.ua.handle_input(now, t, from, &data),
                        NetInput::Failed(t, peer) => {
                            self.conns.remove(&(t, peer));
                            self.ua.handle_transport_error(now, t, peer);
                        }
                        NetInput::Accepted(t, peer, writer) => { self.conns.insert((t, peer), writer); }
                        NetInput::Closed(t, peer) => { self.conns.remove(&(t, peer)); }
                        NetInput::Answer(t, peer, answer) => {
                            if let Some(writer) = self.conns.get(&(t, peer)) {
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
                        Some(DriverCmd::TlsName(dest, host)) => { self.tls_names.insert(dest, host); }
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
            Transport::Tcp | Transport::Tls => {
                let key = (t.transport, t.dest);
                let conn = self.conns.get(&key).filter(|c| !c.is_closed()).cloned();
                let conn = match conn {
                    Some(c) => c,
                    None => {
                        let tls = match t.transport {
                            Transport::Tls => {
                                let Some(connector) = self.tls_client.clone() else {
                                    tracing::warn!(dest = %t.dest, "TLS transport disabled; message not sent");
                                    self.ua.handle_transport_error(
                                        Instant::now().into_std(),
                                        t.transport,
                                        t.dest,
                                    );
                                    return;
                                };
                                let host = self.tls_names.get(&t.dest).map(String::as_str);
                                Some((connector, super::tls::server_name(host, t.dest)))
                            }
                            _ => None,
                        };
                        let (tx, rx) = mpsc::channel(TCP_WRITE_QUEUE);
                        tokio::spawn(connect_and_run(
                            t.dest,
                            tls,
                            rx,
                            self.net_tx.clone(),
                            self.max,
                        ));
                        self.conns.insert(key, tx.clone());
                        tx
                    }
                };
                if let Err(mpsc::error::TrySendError::Full(_)) = conn.try_send(t.data) {
                    // Dropping our sender ends its writer task, which closes the connection.
                    tracing::info!(peer = %t.dest, transport = t.transport.via_token(), "SIP peer does not read; disconnected");
                    self.conns.remove(&key);
                    self.ua
                        .handle_transport_error(Instant::now().into_std(), t.transport, t.dest);
                }
            }
        }
    }
}

/// The transport of a stream connection: TLS when it has a TLS layer.
fn stream_transport(tls: bool) -> Transport {
    if tls {
        Transport::Tls
    } else {
        Transport::Tcp
    }
}

/// Accepts TCP connections, and with `tls` runs the TLS handshake on each first (in the
/// connection's own task: a slow handshake holds up no one else).
async fn accept_loop(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    net: mpsc::Sender<NetInput>,
    max: usize,
) {
    let transport = stream_transport(tls.is_some());
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                // Responses to requests that came in on this connection go back on it
                // (RFC 3261 §18.2.2): the driver keys its writer by the peer address.
                let (tx, rx) = mpsc::channel::<Bytes>(TCP_WRITE_QUEUE);
                if net
                    .send(NetInput::Accepted(transport, peer, tx))
                    .await
                    .is_err()
                {
                    return;
                }
                let net = net.clone();
                match &tls {
                    None => {
                        tokio::spawn(run_connection(stream, transport, peer, rx, net, max));
                    }
                    Some(acceptor) => {
                        let accept = acceptor.accept(stream);
                        tokio::spawn(async move {
                            match tokio::time::timeout(CONNECT_TIMEOUT, accept).await {
                                Ok(Ok(s)) => run_connection(s, transport, peer, rx, net, max).await,
                                Ok(Err(e)) => {
                                    tracing::info!(%peer, error = %e, "SIP TLS handshake failed (inbound)");
                                    let _ = net.send(NetInput::Closed(transport, peer)).await;
                                }
                                Err(_) => {
                                    tracing::info!(%peer, "SIP TLS handshake timed out (inbound)");
                                    let _ = net.send(NetInput::Closed(transport, peer)).await;
                                }
                            }
                        });
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, transport = transport.via_token(), "SIP accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// TCP connect, and TLS handshake when asked, together.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

async fn connect_and_run(
    peer: SocketAddr,
    tls: Option<(
        tokio_rustls::TlsConnector,
        rustls::pki_types::ServerName<'static>,
    )>,
    rx: mpsc::Receiver<Bytes>,
    net: mpsc::Sender<NetInput>,
    max: usize,
) {
    let transport = stream_transport(tls.is_some());
    let connect = async {
        let stream = TcpStream::connect(peer).await?;
        let _ = stream.set_nodelay(true);
        Ok::<_, io::Error>(stream)
    };
    let failed = |why: String| {
        let net = net.clone();
        async move {
            tracing::info!(%peer, transport = transport.via_token(), error = %why, "SIP connection failed");
            let _ = net.send(NetInput::Failed(transport, peer)).await;
        }
    };
    let run = async {
        let stream = connect.await.map_err(|e| e.to_string())?;
        match tls {
            None => Ok(Ok(stream)),
            Some((connector, name)) => {
                let s = connector
                    .connect(name, stream)
                    .await
                    .map_err(|e| format!("TLS handshake: {e}"))?;
                Ok(Err(s))
            }
        }
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, run).await {
        Ok(Ok(Ok(tcp))) => run_connection(tcp, transport, peer, rx, net, max).await,
        Ok(Ok(Err(tls))) => run_connection(tls, transport, peer, rx, net, max).await,
        Ok(Err(why)) => failed(why).await,
        Err(_) => failed("timed out".into()).await,
    }
}

/// Frames SIP messages off a byte stream (TCP, or TLS over TCP) for the driver and writes
/// what the driver queues for this peer.
async fn run_connection<S>(
    stream: S,
    transport: Transport,
    peer: SocketAddr,
    mut rx: mpsc::Receiver<Bytes>,
    net: mpsc::Sender<NetInput>,
    max: usize,
) where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut reader, mut writer) = tokio::io::split(stream);
    let write_net = net.clone();
    let writer_task = tokio::spawn(async move {
        while let Some(data) = rx.recv().await {
            // TLS buffers inside rustls: flush so that each message leaves now.
            let sent = async {
                writer.write_all(&data).await?;
                writer.flush().await
            };
            if let Err(e) = sent.await {
                tracing::debug!(%peer, error = %e, "SIP stream write failed");
                let _ = write_net.send(NetInput::Failed(transport, peer)).await;
                break;
            }
        }
        let _ = writer.shutdown().await;
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
                    if net
                        .send(NetInput::Stream(transport, peer, msg))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                Frame::Invalid(e) => {
                    // The stream cannot be framed any further. The fault is answered (400
                    // naming it) when it can be; answers to the requests read before it still
                    // go out for a moment; then the core lets go of the writer, which writes
                    // what is queued and closes.
                    tracing::info!(%peer, error = %e, "unframeable SIP over a stream; closing");
                    if let Some(answer) = e.answer() {
                        let _ = net.send(NetInput::Answer(transport, peer, answer)).await;
                    }
                    tokio::time::sleep(TCP_CLOSE_LINGER).await;
                    let _ = net.send(NetInput::Closed(transport, peer)).await;
                    let _ = tokio::time::timeout(Duration::from_secs(2), writer_task).await;
                    return;
                }
            }
        }
        if buf.len() > max {
            tracing::info!(%peer, "SIP stream message over the size limit; closing");
            break;
        }
        match reader.read_buf(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    writer_task.abort();
    let _ = net.send(NetInput::Closed(transport, peer)).await;
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
