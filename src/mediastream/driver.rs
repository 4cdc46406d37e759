//! The two tasks of one media stream.
//!
//! - The pump reads the call's stream from the registry, frames the chosen tracks' audio and
//!   queues the frames in the [`Outbox`]; every 20 ms it takes a frame of the agent's audio
//!   from the [`Playout`] and plays it into the leg. It never waits on the network: a full
//!   outbox drops its oldest audio (counted).
//! - The connection owns the WebSocket: connects (with the user's headers), sends the
//!   opening messages and then whatever the outbox holds, reads the server's messages into
//!   the playout, and reconnects with exponential backoff when the server goes away. A clean
//!   close by the server (code 1000) ends the stream; the call goes on either way.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use parking_lot::Mutex;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{mpsc, Notify};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue, Request};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;

use super::framer::TrackFramer;
use super::playout::Playout;
use super::wire::{self, Frame, Incoming, Outgoing, StartInfo, TrackLabel, Wire};
use super::{Format, MediaStreamInfo, StreamSpec};
use crate::call::play::PlayHandle;
use crate::events::{unix_ms, Event, EventBus};
use crate::media::mix::PlaySource;
use crate::media::resample::PcmResampler;
use crate::media::transcode::AudioCodec;
use crate::registry::{Leg, Reader, ReaderEvent, TrackKind, MAX_TRACKS};

/// Largest message taken from a server (a TTS burst of ~30 s of μ-law in base64 fits).
const MAX_MESSAGE: usize = 4 << 20;
/// The socket's read buffer (messages larger than it are still read, in several reads).
const READ_BUFFER: usize = 16 << 10;

/// Frames waiting for the socket; audio beyond the cap drops oldest first.
#[derive(Debug)]
pub(super) struct Outbox {
    items: VecDeque<Outgoing>,
    media: usize,
    cap: usize,
    pub(super) dropped: u64,
    /// The stop message is queued: nothing follows.
    pub(super) closed: bool,
}

impl Outbox {
    pub(super) fn new(cap: usize) -> Self {
        Self {
            items: VecDeque::new(),
            media: 0,
            cap: cap.max(1),
            dropped: 0,
            closed: false,
        }
    }

    pub(super) fn push(&mut self, m: Outgoing) {
        if self.closed {
            return;
        }
        if matches!(m, Outgoing::Media { .. }) {
            if self.media >= self.cap {
                if let Some(i) = self
                    .items
                    .iter()
                    .position(|x| matches!(x, Outgoing::Media { .. }))
                {
                    self.items.remove(i);
                    self.media -= 1;
                    self.dropped += 1;
                }
            }
            self.media += 1;
        }
        if matches!(m, Outgoing::Stop) {
            self.closed = true;
        }
        self.items.push_back(m);
    }

    /// Forgets what waits (the stream is over).
    pub(super) fn clear(&mut self) {
        self.items = VecDeque::new();
        self.media = 0;
        self.closed = true;
    }

    fn take(&mut self, into: &mut Vec<Outgoing>) {
        self.media = 0;
        into.extend(self.items.drain(..));
    }
}

/// What the manager and both tasks share about one stream.
pub(super) struct Shared {
    pub(super) info: Mutex<MediaStreamInfo>,
    pub(super) outbox: Mutex<Outbox>,
    /// The outbox has something (or was closed).
    pub(super) wake: Notify,
    pub(super) playout: Mutex<Playout>,
    /// Stop asked (API, failure, the server's close): the pump queues `stop` and ends.
    pub(super) stop: Notify,
    pub(super) stopping: AtomicBool,
    pub(super) format: Format,
    pub(super) bidirectional: bool,
}

impl Shared {
    /// The stream as `/call/stream/find` shows it, counters up to date.
    pub(super) fn snapshot(&self) -> MediaStreamInfo {
        let mut info = self.info.lock().clone();
        info.frames_dropped += self.outbox.lock().dropped;
        let refused = self.playout.lock().refused;
        info.audio_refused_ms = refused * 1000 / u64::from(info.sample_rate.max(1));
        info
    }

    pub(super) fn request_stop(&self) {
        self.stopping.store(true, Ordering::Release);
        self.stop.notify_one();
    }

    fn queue(&self, m: Outgoing) {
        self.outbox.lock().push(m);
        self.wake.notify_one();
    }
}

/// Plays the stream's [`AgentSource`] into the leg (again): the call layer's answer.
pub(super) type Replay = Box<dyn Fn() -> Option<PlayHandle> + Send>;

/// The agent's queued audio as a source of the leg's player: one frame per tick of the
/// leg's mixer, marks answered as their audio goes out. Ends when the stream stops.
pub(super) struct AgentSource {
    shared: Arc<Shared>,
    rate: u32,
    resampler: Option<PcmResampler>,
    wire: Vec<i16>,
    marks: Vec<String>,
}

impl AgentSource {
    pub(super) fn new(shared: Arc<Shared>) -> Self {
        let rate = shared.info.lock().sample_rate;
        Self {
            shared,
            rate,
            resampler: None,
            wire: Vec::new(),
            marks: Vec::new(),
        }
    }
}

impl PlaySource for AgentSource {
    fn frame(&mut self, rate: u32, n: usize, out: &mut Vec<i16>) -> Option<bool> {
        if self.shared.stopping.load(Ordering::Acquire) {
            return None;
        }
        let want = n * self.rate as usize / rate.max(1) as usize;
        self.wire.clear();
        let had = self
            .shared
            .playout
            .lock()
            .tick_samples(want, &mut self.wire, &mut self.marks);
        if !self.marks.is_empty() {
            let k = self.marks.len() as u64;
            for name in self.marks.drain(..) {
                self.shared.queue(Outgoing::Mark { name });
            }
            self.shared.info.lock().marks += k;
        }
        if !had {
            return Some(false);
        }
        let start = out.len();
        if self.rate == rate {
            out.extend_from_slice(&self.wire);
        } else {
            if self.resampler.is_none() {
                self.resampler = PcmResampler::new(self.rate, rate);
            }
            let Some(r) = self.resampler.as_mut() else {
                return Some(false); // a ratio the resampler cannot do: silent
            };
            r.process(&self.wire, out);
        }
        out.resize(start + n, 0);
        self.shared.info.lock().frames_played += 1;
        Some(true)
    }
}

/// The pump; returns when the stream ends or a stop is asked.
pub(super) async fn pump(
    shared: Arc<Shared>,
    mut reader: Reader,
    labels: Vec<(Leg, TrackLabel)>,
    mut handle: Option<PlayHandle>,
    replay: Option<Replay>,
    mut dtmf: mpsc::UnboundedReceiver<String>,
    started: Instant,
) {
    let audio = { shared.info.lock().wire_audio() };
    let mut tracks: Vec<Option<(u8, TrackFramer)>> = (0..MAX_TRACKS).map(|_| None).collect();
    let mut check = tokio::time::interval(Duration::from_secs(1));
    let mut out = Vec::new();
    let mut last_reader_drops = 0u64;
    loop {
        tokio::select! {
            ev = reader.recv() => match ev {
                Some(ReaderEvent::Media(u)) => {
                    let Some(Some((pt, framer))) = tracks.get_mut(u.track) else { continue };
                    if u.payload_type != *pt {
                        continue; // a telephone-event: digits come from the call's events
                    }
                    let now = u.arrival.saturating_duration_since(started).as_millis() as u64;
                    if let Err(e) = framer.push(&u.payload, u.timestamp, now, &mut out) {
                        tracing::debug!(error = %e, "media stream: payload not decoded");
                    }
                    if !out.is_empty() {
                        let mut ob = shared.outbox.lock();
                        for m in out.drain(..) {
                            ob.push(m);
                        }
                        drop(ob);
                        shared.wake.notify_one();
                    }
                    let drops = reader.dropped();
                    if drops != last_reader_drops {
                        // Units the registry dropped for this reader count as dropped frames.
                        shared.info.lock().frames_dropped += drops - last_reader_drops;
                        last_reader_drops = drops;
                    }
                }
                Some(ReaderEvent::TrackChanged(id, spec)) => {
                    let Some(slot) = tracks.get_mut(id) else { continue };
                    *slot = None;
                    let label = labels.iter().find(|(l, _)| *l == spec.leg).map(|(_, t)| *t);
                    if let (TrackKind::Audio, Some(label)) = (spec.kind, label) {
                        match AudioCodec::from_encoding(&spec.codec)
                            .map(|c| TrackFramer::new(label, c, spec.clock_rate, audio))
                        {
                            Some(Ok(f)) => *slot = Some((spec.payload_type, f)),
                            Some(Err(e)) => tracing::warn!(error = %e, "media stream: no decoder"),
                            None => tracing::warn!(codec = %spec.codec, "media stream: codec not decodable; track not streamed"),
                        }
                    }
                }
                Some(ReaderEvent::Ended(_)) | None => break,
            },
            _ = check.tick(), if replay.is_some() => {
                // The leg's player ends when the leg's media moves (a re-INVITE, a
                // transfer): play into the leg again.
                let playing = handle.as_ref().is_some_and(|h| h.is_playing());
                if !playing && !shared.stopping.load(Ordering::Acquire) {
                    handle = replay.as_ref().and_then(|r| r());
                }
            },
            d = dtmf.recv() => if let Some(digit) = d {
                shared.queue(Outgoing::Dtmf { digit });
            },
            _ = shared.stop.notified() => break,
        }
    }
    if let Some(h) = handle {
        h.stop();
    }
    shared.queue(Outgoing::Stop);
}

/// The request the connection sends: the URL and the user's headers.
pub fn build_request(url: &str, headers: &[(String, String)]) -> Result<Request<()>, String> {
    let mut req = url.into_client_request().map_err(|e| format!("url: {e}"))?;
    for (name, value) in headers {
        let n = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("headers: {name:?} is not a header name"))?;
        let v = HeaderValue::from_str(value).map_err(|_| {
            format!("headers: the value of {name:?} has characters a header cannot carry")
        })?;
        req.headers_mut().append(n, v);
    }
    Ok(req)
}

/// Timing and limits of the connection.
#[derive(Debug, Clone)]
pub(super) struct ConnectionConfig {
    pub(super) connect_timeout: Duration,
    pub(super) reconnect_initial: Duration,
    pub(super) reconnect_max: Duration,
    pub(super) reconnect_max_attempts: u32,
    /// SO_SNDBUF in bytes (0: the kernel's autotuning). What the kernel holds for a server
    /// that does not read is audio the outbox can no longer drop: it only adds delay.
    pub(super) socket_send_buffer: usize,
    pub(super) tls: Arc<rustls::ClientConfig>,
}

/// The TCP connection to the agent's server, with our send buffer and without Nagle.
async fn connect_tcp(req: &Request<()>, send_buffer: usize) -> Result<TcpStream, String> {
    let uri = req.uri();
    let host = uri.host().ok_or("url: no host")?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = uri
        .port_u16()
        .unwrap_or(if uri.scheme_str() == Some("wss") {
            443
        } else {
            80
        });
    let mut last = format!("{host}: no address");
    for addr in tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| format!("{host}: {e}"))?
    {
        let sock = if addr.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .map_err(|e| e.to_string())?;
        if send_buffer > 0 {
            sock.set_send_buffer_size(send_buffer as u32)
                .map_err(|e| e.to_string())?;
        }
        match sock.connect(addr).await {
            Ok(stream) => {
                stream.set_nodelay(true).map_err(|e| e.to_string())?;
                return Ok(stream);
            }
            Err(e) => last = format!("{addr}: {e}"),
        }
    }
    Err(last)
}

enum SessionEnd {
    /// Our stop went out.
    Finished,
    /// The server closed the socket cleanly.
    ServerClosed(String),
    /// The connection broke.
    Broken(String),
}

/// The connection task; returns once the stream is over (its final status is set).
pub(super) async fn connection(
    shared: Arc<Shared>,
    spec: StreamSpec,
    start: StartInfo,
    cfg: ConnectionConfig,
    bus: EventBus,
) {
    let mut failures = 0u32;
    let mut connections = 0u32;
    let mut backoff = cfg.reconnect_initial;
    loop {
        if shared.outbox.lock().closed && failures > 0 {
            // Stopped while the server was away: nothing more to say to it.
            finish(&shared, &bus, "STOPPED", "MediaStreamStopped", None);
            return;
        }
        let attempt = async {
            let req = build_request(&spec.url, &spec.headers)?;
            // tungstenite zeroes its whole read buffer before each read: 128 KiB by default
            // showed as 9 % of the gateway's CPU at 100 streams; frames here are small.
            let ws_cfg = WebSocketConfig::default()
                .read_buffer_size(READ_BUFFER)
                .max_message_size(Some(MAX_MESSAGE))
                .max_frame_size(Some(MAX_MESSAGE));
            let connector = tokio_tungstenite::Connector::Rustls(cfg.tls.clone());
            match tokio::time::timeout(cfg.connect_timeout, async {
                let tcp = connect_tcp(&req, cfg.socket_send_buffer).await?;
                tokio_tungstenite::client_async_tls_with_config(
                    req,
                    tcp,
                    Some(ws_cfg),
                    Some(connector),
                )
                .await
                .map_err(|e| e.to_string())
            })
            .await
            {
                Ok(Ok((ws, _))) => Ok(ws),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(format!(
                    "no connection within {} ms",
                    cfg.connect_timeout.as_millis()
                )),
            }
        };
        let why = match attempt.await {
            Ok(ws) => {
                failures = 0;
                backoff = cfg.reconnect_initial;
                {
                    let mut info = shared.info.lock();
                    info.status = "STREAMING".into();
                    info.reconnects = connections;
                    info.reason = None;
                }
                publish(&shared, &bus, "MediaStreamStarted", None);
                tracing::info!(reconnects = connections, "media stream connected");
                connections += 1;
                let mut w = Wire::new(spec.format, spec.audio, start.clone());
                match session(ws, &shared, &mut w).await {
                    SessionEnd::Finished => {
                        finish(&shared, &bus, "STOPPED", "MediaStreamStopped", None);
                        return;
                    }
                    SessionEnd::ServerClosed(why) => {
                        shared.request_stop();
                        finish(&shared, &bus, "STOPPED", "MediaStreamStopped", Some(why));
                        return;
                    }
                    SessionEnd::Broken(why) => why,
                }
            }
            Err(why) => why,
        };
        failures += 1;
        if failures > cfg.reconnect_max_attempts {
            shared.request_stop();
            let reason = format!("{failures} connection attempts failed; last: {why}");
            finish(&shared, &bus, "FAILED", "MediaStreamFailed", Some(reason));
            return;
        }
        tracing::warn!(attempt = failures, error = %why, retry_ms = backoff.as_millis() as u64, "media stream: server unreachable; reconnecting");
        {
            let mut info = shared.info.lock();
            info.status = "RECONNECTING".into();
            info.reason = Some(why.clone());
        }
        publish(&shared, &bus, "MediaStreamReconnecting", Some(why));
        // Wait out the backoff, unless the stream stops meanwhile.
        let deadline = tokio::time::Instant::now() + backoff;
        while tokio::time::Instant::now() < deadline {
            if shared.outbox.lock().closed {
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => {}
                _ = shared.wake.notified() => {}
            }
        }
        backoff = (backoff * 2).min(cfg.reconnect_max);
    }
}

fn publish(shared: &Shared, bus: &EventBus, event: &str, reason: Option<String>) {
    let info = shared.info.lock();
    bus.publish(Event::MediaStreamEvent {
        call_id: info.call_id.clone(),
        stream_sid: info.stream_sid.clone(),
        event: event.to_string(),
        url: info.url.clone(),
        reconnects: info.reconnects,
        reason,
        timestamp: unix_ms(),
    });
}

fn finish(shared: &Shared, bus: &EventBus, status: &str, event: &str, reason: Option<String>) {
    {
        let mut info = shared.info.lock();
        info.status = status.to_string();
        info.reason = reason.clone();
        info.ended_at = Some(unix_ms());
    }
    tracing::info!(
        status,
        reason = reason.as_deref().unwrap_or(""),
        "media stream ended"
    );
    publish(shared, bus, event, reason);
}

fn message(f: Frame) -> Message {
    match f {
        Frame::Text(t) => Message::text(t),
        Frame::Binary(b) => Message::binary(b),
    }
}

async fn session<S>(
    ws: tokio_tungstenite::WebSocketStream<S>,
    shared: &Shared,
    wire: &mut Wire,
) -> SessionEnd
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (mut sink, mut stream) = ws.split();
    for f in wire.opening() {
        if let Err(e) = sink.feed(message(f)).await {
            return SessionEnd::Broken(e.to_string());
        }
    }
    let audio = shared.info.lock().wire_audio();
    let mut batch = Vec::new();
    let mut pcm = Vec::new();
    loop {
        shared.outbox.lock().take(&mut batch);
        let mut sent = 0u64;
        for m in batch.drain(..) {
            let stop = matches!(m, Outgoing::Stop);
            if matches!(m, Outgoing::Media { .. }) {
                sent += 1;
            }
            if let Err(e) = sink.feed(message(wire.frame(&m))).await {
                return SessionEnd::Broken(e.to_string());
            }
            if stop {
                let close = CloseFrame {
                    code: CloseCode::Normal,
                    reason: "stream stopped".into(),
                };
                let _ = sink.send(Message::Close(Some(close))).await;
                // Give the server a moment to answer the close; then drop the socket.
                let _ = tokio::time::timeout(Duration::from_secs(1), async {
                    while let Some(Ok(m)) = stream.next().await {
                        if m.is_close() {
                            break;
                        }
                    }
                })
                .await;
                return SessionEnd::Finished;
            }
        }
        if sent > 0 {
            shared.info.lock().frames_sent += sent;
        }
        if let Err(e) = sink.flush().await {
            return SessionEnd::Broken(e.to_string());
        }
        tokio::select! {
            _ = shared.wake.notified() => {}
            msg = stream.next() => match msg {
                None => return SessionEnd::Broken("the server closed the connection".into()),
                Some(Err(e)) => return SessionEnd::Broken(e.to_string()),
                Some(Ok(Message::Text(t))) => on_text(shared, audio, t.as_str(), &mut pcm),
                Some(Ok(Message::Binary(b))) => {
                    if shared.format == Format::Raw {
                        play(shared, audio, &b, &mut pcm);
                    } else {
                        bad_message(shared, "a binary frame in the twilio format");
                    }
                }
                Some(Ok(Message::Close(frame))) => {
                    let (code, why) = frame
                        .map(|f| (f.code, f.reason.to_string()))
                        .unwrap_or((CloseCode::Status, String::new()));
                    if code == CloseCode::Normal {
                        return SessionEnd::ServerClosed(format!("closed by the server ({why})"));
                    }
                    return SessionEnd::Broken(format!("the server closed with {code} {why}"));
                }
                // Pings are answered by tungstenite at the next flush.
                Some(Ok(_)) => {}
            },
        }
    }
}

fn on_text(shared: &Shared, audio: super::WireAudio, text: &str, pcm: &mut Vec<i16>) {
    match wire::parse_text(text) {
        // Raw streams take audio as binary frames; JSON media is understood there too.
        Ok(Incoming::Media(bytes)) => play(shared, audio, &bytes, pcm),
        Ok(Incoming::Mark(name)) => {
            if !shared.bidirectional {
                // Nothing plays: the mark's audio (none) has played.
                shared.queue(Outgoing::Mark { name });
                shared.info.lock().marks += 1;
                return;
            }
            if let Some(name) = shared.playout.lock().push_mark(name) {
                shared.queue(Outgoing::Mark { name });
                shared.info.lock().marks += 1;
            }
        }
        Ok(Incoming::Clear) => {
            let marks = shared.playout.lock().clear();
            let n = marks.len() as u64;
            for name in marks {
                shared.queue(Outgoing::Mark { name });
            }
            shared.info.lock().marks += n;
        }
        Ok(Incoming::Ignored(event)) => {
            tracing::debug!(%event, "media stream: server event ignored");
        }
        Err(e) => bad_message(shared, &e.to_string()),
    }
}

fn play(shared: &Shared, audio: super::WireAudio, bytes: &[u8], pcm: &mut Vec<i16>) {
    if !shared.bidirectional {
        bad_message(shared, "audio on a stream that is not bidirectional");
        return;
    }
    pcm.clear();
    wire::decode_audio(audio, bytes, pcm);
    shared.playout.lock().push_audio(pcm);
}

fn bad_message(shared: &Shared, why: &str) {
    let n = {
        let mut info = shared.info.lock();
        info.bad_messages += 1;
        info.bad_messages
    };
    // The first few at warn, then only at debug (a broken server must not flood the log).
    if n <= 5 {
        tracing::warn!(why, "media stream: server message ignored");
    } else {
        tracing::debug!(why, "media stream: server message ignored");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn media(chunk: u64) -> Outgoing {
        Outgoing::Media {
            track: TrackLabel::Inbound,
            chunk,
            timestamp: chunk * 20,
            audio: vec![],
        }
    }

    #[test]
    fn a_full_outbox_drops_the_oldest_audio_and_keeps_control_messages() {
        let mut ob = Outbox::new(2);
        ob.push(Outgoing::Mark { name: "m".into() });
        ob.push(media(1));
        ob.push(media(2));
        ob.push(media(3));
        assert_eq!(ob.dropped, 1);
        let mut v = Vec::new();
        ob.take(&mut v);
        assert_eq!(
            v,
            vec![Outgoing::Mark { name: "m".into() }, media(2), media(3)]
        );
        ob.push(Outgoing::Stop);
        ob.push(media(4));
        v.clear();
        ob.take(&mut v);
        assert_eq!(v, vec![Outgoing::Stop], "nothing after stop");
    }

    #[test]
    fn requests_carry_the_headers_and_refuse_bad_ones() {
        let r = build_request(
            "ws://127.0.0.1:9/agent",
            &[("Authorization".into(), "Bearer x".into())],
        )
        .unwrap();
        assert_eq!(r.headers()["authorization"], "Bearer x");
        assert!(build_request("ws://h/", &[("Bad Name".into(), "v".into())])
            .unwrap_err()
            .contains("Bad Name"));
        assert!(build_request("ws://h/", &[("X-A".into(), "a\r\nb".into())]).is_err());
        assert!(build_request("http://[", &[])
            .unwrap_err()
            .starts_with("url"));
    }
}
