//! The tokio task of one push: the only RTMP code that touches a socket or the clock.
//!
//! It reads the stream (registry [`Reader`]) without pause, feeds the [`Muxer`], and hands
//! the tags to the current [`PublishSession`]. Writes are non-blocking (`try_write` on
//! writability), so a slow or dead server never stalls the reader: when more than
//! `rtmp_send_queue_kb` is unsent the connection is dropped and remade, with the backoff of
//! `rtmp_reconnect_*`. While not publishing, media is still read (the muxer keeps codec
//! state and sequence headers current) and the tags are discarded.
//!
//! Each connection has its own timeline origin (its first tag is near 0) and sends
//! onMetaData, the sequence headers, then video from the next keyframe.

use std::sync::Arc;
use std::time::Duration;

use rml_rtmp::sessions::StreamMetadata;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use super::manager::{PushConfig, PushEntry, PushStatus};
use super::muxer::{is_sequence_header, FlvTag, Muxer, TagKind};
use super::session::{PublishSession, SessionError, SessionEvent};
use super::url::RtmpUrl;
use crate::registry::{Reader, ReaderEvent};

/// A publish that lasted this long resets the reconnect backoff and attempt count.
const STABLE_AFTER: Duration = Duration::from_secs(5);
/// Time allowed to flush `deleteStream` when stopping.
const STOP_FLUSH: Duration = Duration::from_millis(1000);

/// Why a connection ended.
enum End {
    /// Terminated or the stream ended: stop for good, with this reason.
    Stop(String),
    /// Connection failed or was lost: retry.
    Retry(String),
}

struct Driver {
    entry: Arc<PushEntry>,
    reader: Reader,
    url: RtmpUrl,
    cfg: PushConfig,
    stop: watch::Receiver<bool>,
    muxer: Muxer,
    epoch: std::time::Instant,
}

/// Runs a push until it is terminated, its stream ends, or it fails.
pub(crate) async fn run(
    entry: Arc<PushEntry>,
    reader: Reader,
    url: RtmpUrl,
    cfg: PushConfig,
    stop: watch::Receiver<bool>,
) {
    let epoch = std::time::Instant::now();
    let mut d = Driver {
        muxer: Muxer::new(cfg.audio, epoch),
        entry,
        reader,
        url,
        cfg,
        stop,
        epoch,
    };
    let (status, reason) = d.run().await;
    d.entry.set_status(status, Some(reason));
}

struct Conn {
    stream: TcpStream,
    session: PublishSession,
    base_ms: i64,
    video_started: bool,
    last_ts: [u32; 2],
}

impl Driver {
    async fn run(&mut self) -> (PushStatus, String) {
        if let Err(reason) = self.wait_for_tracks().await {
            return (PushStatus::Stopped, reason);
        }
        let mut failures: u32 = 0;
        let mut delay = self.cfg.reconnect_initial;
        let mut first = true;
        loop {
            if first {
                self.entry.set_status(PushStatus::Connecting, None);
            }
            let started = Instant::now();
            let reason = match self.connect().await {
                Ok(conn) => {
                    self.entry.set_status(PushStatus::Publishing, None);
                    match self.publish(conn).await {
                        End::Stop(r) => return (PushStatus::Stopped, r),
                        End::Retry(r) => r,
                    }
                }
                Err(End::Stop(r)) => return (PushStatus::Stopped, r),
                Err(End::Retry(r)) => r,
            };
            first = false;
            if started.elapsed() >= STABLE_AFTER {
                failures = 0;
                delay = self.cfg.reconnect_initial;
            }
            failures += 1;
            tracing::warn!(reason = %reason, failures, "RTMP connection failed");
            if self.cfg.reconnect_max_attempts > 0 && failures >= self.cfg.reconnect_max_attempts {
                return (
                    PushStatus::Failed,
                    format!("{reason} (gave up after {failures} attempts)"),
                );
            }
            self.entry
                .set_status(PushStatus::Reconnecting, Some(reason));
            if let Err(r) = self.idle(delay).await {
                return (PushStatus::Stopped, r);
            }
            delay = (delay * 2).min(self.cfg.reconnect_max);
        }
    }

    /// Handles one reader event; `Err(reason)` when the stream ended.
    fn on_reader(&mut self, ev: Option<ReaderEvent>) -> Result<(), String> {
        match ev {
            Some(ReaderEvent::Media(u)) => self.muxer.media(&u),
            Some(ReaderEvent::TrackChanged(id, spec)) => {
                if let Some(w) = self.muxer.track(id, &spec) {
                    tracing::warn!(track = id, "{w}");
                }
                let shape = self.muxer.shape();
                let why = self.muxer.unsupported_audio().map(str::to_owned);
                self.entry.update(|i| {
                    i.audio_codec = shape.audio.map(|a| {
                        match a.codec_id {
                            super::flv::AUDIO_CODEC_AAC => "aac",
                            super::flv::AUDIO_CODEC_PCMA => "pcma",
                            _ => "pcmu",
                        }
                        .to_owned()
                    });
                    i.video = shape.video;
                    if i.status == PushStatus::Pending {
                        i.reason = why;
                    }
                });
            }
            Some(ReaderEvent::Ended(r)) => return Err(format!("stream ended: {r}")),
            None => return Err("stream ended".into()),
        }
        Ok(())
    }

    fn stopped(&self) -> bool {
        *self.stop.borrow()
    }

    /// Reads the stream until a track that can be pushed is known.
    async fn wait_for_tracks(&mut self) -> Result<(), String> {
        loop {
            self.discard_tags();
            if self.stopped() {
                return Err("terminated".into());
            }
            if self.muxer.has_tracks() {
                return Ok(());
            }
            tokio::select! {
                ev = self.reader.recv() => self.on_reader(ev)?,
                _ = self.stop.changed() => return Err("terminated".into()),
            }
        }
    }

    /// Keeps reading the stream for `delay` (backoff) without sending.
    async fn idle(&mut self, delay: Duration) -> Result<(), String> {
        let until = Instant::now() + delay;
        loop {
            self.discard_tags();
            if self.stopped() {
                return Err("terminated".into());
            }
            tokio::select! {
                _ = tokio::time::sleep_until(until) => return Ok(()),
                ev = self.reader.recv() => self.on_reader(ev)?,
                _ = self.stop.changed() => {}
            }
        }
    }

    fn discard_tags(&mut self) {
        while self.muxer.pull().is_some() {}
        self.update_counters(0);
    }

    fn update_counters(&self, sent: u64) {
        let dropped = self.reader.dropped();
        self.entry.update(|i| {
            i.dropped = dropped;
            i.bytes_sent += sent;
        });
    }

    /// TCP connect, handshake, connect, createStream, publish: within `rtmp_connect_timeout_ms`.
    async fn connect(&mut self) -> Result<Conn, End> {
        let deadline = Instant::now() + self.cfg.connect_timeout;
        let address = self.url.address();
        let tcp = tokio::time::timeout_at(deadline, TcpStream::connect(address.clone()));
        tokio::pin!(tcp);
        let stream = loop {
            self.discard_tags();
            if self.stopped() {
                return Err(End::Stop("terminated".into()));
            }
            tokio::select! {
                r = &mut tcp => match r {
                    Ok(Ok(s)) => break s,
                    Ok(Err(e)) => return Err(End::Retry(format!("TCP connect to {address}: {e}"))),
                    Err(_) => return Err(End::Retry(format!("TCP connect to {address}: timeout"))),
                },
                ev = self.reader.recv() => self.on_reader(ev).map_err(End::Stop)?,
                _ = self.stop.changed() => {}
            }
        };
        let _ = stream.set_nodelay(true);
        let session =
            PublishSession::new(self.url.clone()).map_err(|e| End::Retry(e.to_string()))?;
        let mut conn = Conn {
            stream,
            session,
            base_ms: 0,
            video_started: false,
            last_ts: [0; 2],
        };
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            self.discard_tags();
            if self.stopped() {
                return Err(End::Stop("terminated".into()));
            }
            let want_write = !conn.session.pending().is_empty();
            tokio::select! {
                r = conn.stream.readable() => {
                    r.map_err(|e| End::Retry(format!("read: {e}")))?;
                    match conn.stream.try_read(&mut buf) {
                        Ok(0) => return Err(End::Retry("server closed the connection during the handshake".into())),
                        Ok(n) => match conn.session.handle_input(&buf[..n]) {
                            Ok(Some(SessionEvent::Publishing)) => break,
                            Ok(Some(SessionEvent::Connected)) => tracing::debug!("RTMP connect accepted"),
                            Ok(None) => {}
                            Err(e) => return Err(End::Retry(e.to_string())),
                        },
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(e) => return Err(End::Retry(format!("read: {e}"))),
                    }
                }
                r = conn.stream.writable(), if want_write => {
                    r.map_err(|e| End::Retry(format!("write: {e}")))?;
                    write_some(&mut conn).map_err(End::Retry)?;
                }
                ev = self.reader.recv() => self.on_reader(ev).map_err(End::Stop)?,
                _ = self.stop.changed() => {}
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(End::Retry(format!(
                        "no publish within {} ms (handshake, connect, createStream, publish)",
                        self.cfg.connect_timeout.as_millis()
                    )));
                }
            }
        }
        Ok(conn)
    }

    fn now_ms(&self) -> i64 {
        self.epoch.elapsed().as_millis() as i64
    }

    /// Publishes until the connection fails (`Retry`) or the push ends (`Stop`).
    async fn publish(&mut self, mut conn: Conn) -> End {
        let shape = self.muxer.shape();
        conn.base_ms = self.now_ms();
        let mut meta = StreamMetadata::new();
        if let Some(a) = shape.audio {
            meta.audio_codec_id = Some(a.codec_id);
            meta.audio_sample_rate = Some(a.sample_rate);
            meta.audio_channels = Some(1);
            meta.audio_is_stereo = Some(false);
            meta.audio_bitrate_kbps = a.bitrate_kbps;
        }
        if shape.video {
            meta.video_codec_id = Some(super::flv::VIDEO_CODEC_AVC);
        }
        meta.encoder = Some(concat!("sipstream ", env!("CARGO_PKG_VERSION")).to_owned());
        // A block, not a closure kept alive: it borrows the muxer (whose Opus decoder is not
        // Sync) and must be gone before the next await.
        let started: Result<(), SessionError> = (|| {
            conn.session.send_metadata(&meta)?;
            for (kind, body) in self.muxer.headers() {
                match kind {
                    TagKind::Audio => conn.session.send_audio(body, 0)?,
                    TagKind::Video => conn.session.send_video(body, 0)?,
                }
            }
            Ok(())
        })();
        if let Err(e) = started {
            return End::Retry(e.to_string());
        }
        // Tags produced before the publish was accepted are stale.
        while self.muxer.pull().is_some() {}
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            if self.stopped() {
                return self.finish(conn, "terminated".into()).await;
            }
            let want_write = !conn.session.pending().is_empty();
            tokio::select! {
                r = conn.stream.readable() => {
                    if let Err(e) = r {
                        return End::Retry(format!("read: {e}"));
                    }
                    match conn.stream.try_read(&mut buf) {
                        Ok(0) => return End::Retry("server closed the connection".into()),
                        Ok(n) => {
                            if let Err(e) = conn.session.handle_input(&buf[..n]) {
                                return End::Retry(e.to_string());
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(e) => return End::Retry(format!("read: {e}")),
                    }
                }
                r = conn.stream.writable(), if want_write => {
                    if let Err(e) = r {
                        return End::Retry(format!("write: {e}"));
                    }
                    match write_some(&mut conn) {
                        Ok(n) => self.update_counters(n as u64),
                        Err(e) => return End::Retry(e),
                    }
                }
                ev = self.reader.recv() => {
                    if let Err(r) = self.on_reader(ev) {
                        return self.finish(conn, r).await;
                    }
                    if self.muxer.shape() != shape {
                        return End::Retry("the stream's tracks changed: publishing again".into());
                    }
                    while let Some(tag) = self.muxer.pull() {
                        if let Err(e) = self.send_tag(&mut conn, &tag) {
                            return End::Retry(e.to_string());
                        }
                    }
                    let pending = conn.session.pending().len();
                    if pending > self.cfg.max_pending_bytes {
                        return End::Retry(format!(
                            "server too slow: {} KiB unsent (rtmp_send_queue_kb)",
                            pending / 1024
                        ));
                    }
                    if want_write {
                        // Write opportunistically too: readiness is edge-triggered.
                        match write_some(&mut conn) {
                            Ok(n) => self.update_counters(n as u64),
                            Err(e) => return End::Retry(e),
                        }
                    }
                }
                _ = self.stop.changed() => {}
            }
        }
    }

    fn send_tag(&mut self, conn: &mut Conn, tag: &FlvTag) -> Result<(), SessionError> {
        let header = is_sequence_header(tag);
        if tag.kind == TagKind::Video && !header && !conn.video_started {
            if !tag.keyframe {
                return Ok(());
            }
            conn.video_started = true;
        }
        let slot = match tag.kind {
            TagKind::Audio => 0,
            TagKind::Video => 1,
        };
        // Per-kind monotonic; clamped at the connection's origin.
        let ts = u32::try_from((tag.ms - conn.base_ms).max(0))
            .unwrap_or(u32::MAX)
            .max(conn.last_ts[slot]);
        conn.last_ts[slot] = ts;
        match tag.kind {
            TagKind::Audio => conn.session.send_audio(tag.body.clone(), ts)?,
            TagKind::Video => conn.session.send_video(tag.body.clone(), ts)?,
        }
        if !header {
            self.entry.update(|i| match tag.kind {
                TagKind::Audio => i.audio_frames += 1,
                TagKind::Video => i.video_frames += 1,
            });
        }
        Ok(())
    }

    /// `deleteStream`, a short flush, close.
    async fn finish(&mut self, mut conn: Conn, reason: String) -> End {
        if conn.session.is_publishing() {
            if self.muxer.shape().video {
                let _ = conn
                    .session
                    .send_video(super::flv::avc_end_of_sequence(), conn.last_ts[1]);
            }
            let _ = conn.session.stop();
        }
        let deadline = Instant::now() + STOP_FLUSH;
        while !conn.session.pending().is_empty() {
            tokio::select! {
                r = conn.stream.writable() => {
                    if r.is_err() || write_some(&mut conn).is_err() {
                        break;
                    }
                }
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        End::Stop(reason)
    }
}

/// Writes what the socket takes now; returns the bytes written.
fn write_some(conn: &mut Conn) -> Result<usize, String> {
    let mut total = 0;
    while !conn.session.pending().is_empty() {
        match conn.stream.try_write(conn.session.pending()) {
            Ok(0) => return Err("server closed the connection".into()),
            Ok(n) => {
                conn.session.consume(n);
                total += n;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(format!("write: {e}")),
        }
    }
    Ok(total)
}
