//! One pull's task: retina's session (DESCRIBE, SETUP, PLAY, keepalives, TEARDOWN on drop)
//! driving the registry publisher, with reconnects. The only RTSP code that touches the
//! network or the clock.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use retina::client::{
    Credentials, Described, InitialTimestampPolicy, PacketItem, PlayOptions, Session,
    SessionOptions, SetupOptions, Transport,
};
use tokio::sync::watch;

use super::source::{sdp_fmtps, track_for, PullUrl};
use super::{PullConfig, PullEntry, PullStatus, PullTransport};
use crate::registry::{MediaUnit, Publisher, TrackId, TrackKind};

async fn timed<T>(
    limit: Duration,
    what: &str,
    fut: impl std::future::Future<Output = Result<T, retina::Error>>,
) -> Result<T, String> {
    match tokio::time::timeout(limit, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("{what}: {}", first_line(&e))),
        Err(_) => Err(format!("{what}: no answer within {} s", limit.as_secs())),
    }
}

/// retina's errors go on with lines of connection details (addresses, times): the first
/// line says what happened.
fn first_line(e: &retina::Error) -> String {
    e.to_string()
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// Connects and DESCRIBEs.
pub(crate) async fn describe(
    url: &PullUrl,
    cfg: &PullConfig,
) -> Result<Session<Described>, String> {
    let creds = url.username.as_ref().map(|u| Credentials {
        username: u.clone(),
        password: url.password.clone().unwrap_or_default(),
    });
    let opts = SessionOptions::default()
        .creds(creds)
        .user_agent(format!("sipstream/{}", env!("CARGO_PKG_VERSION")));
    timed(
        cfg.timeout,
        "DESCRIBE",
        Session::describe(url.url.clone(), opts),
    )
    .await
}

/// Which server stream feeds which registry track: the first audio and the first video
/// stream in a codec the gateway carries.
pub(crate) struct Tracks {
    audio: Option<(TrackId, String)>,
    video: Option<(TrackId, String)>,
}

impl Tracks {
    /// Adds the tracks of a first session; an error if the server has none the gateway carries.
    pub(crate) fn add(
        publisher: &Publisher,
        session: &Session<Described>,
    ) -> Result<Tracks, String> {
        let mut t = Tracks {
            audio: None,
            video: None,
        };
        t.update(publisher, session)?;
        Ok(t)
    }

    /// (server stream index, track) for a session; adds or updates the tracks.
    fn update(
        &mut self,
        publisher: &Publisher,
        session: &Session<Described>,
    ) -> Result<Vec<(usize, TrackId)>, String> {
        let fmtps = sdp_fmtps(session.sdp());
        let mut chosen = Vec::new();
        let mut seen = Vec::new();
        let (mut audio_done, mut video_done) = (false, false);
        for (i, s) in session.streams().iter().enumerate() {
            let pt = s.rtp_payload_type();
            seen.push(format!(
                "{} {}/{}",
                s.media(),
                s.encoding_name(),
                s.clock_rate_hz()
            ));
            let fmtp = fmtps.get(&(s.media().to_owned(), pt)).map(String::as_str);
            let Some(spec) = track_for(s.media(), s.encoding_name(), s.clock_rate_hz(), pt, fmtp)
            else {
                continue;
            };
            let (slot, done) = match spec.kind {
                TrackKind::Audio => (&mut self.audio, &mut audio_done),
                TrackKind::Video => (&mut self.video, &mut video_done),
            };
            if *done {
                continue;
            }
            *done = true;
            let name = format!("{}/{}", spec.codec, spec.clock_rate);
            let id = match slot {
                Some((id, _)) => {
                    publisher
                        .update_track(*id, spec)
                        .map_err(|e| format!("track: {e}"))?;
                    *id
                }
                None => publisher
                    .add_track(spec)
                    .map_err(|e| format!("track: {e}"))?,
            };
            *slot = Some((id, name));
            chosen.push((i, id));
        }
        if chosen.is_empty() {
            return Err(format!(
                "no stream in a codec the gateway carries (PCMU, PCMA, opus, H264); the server offers: {}",
                if seen.is_empty() { "nothing".to_owned() } else { seen.join(", ") }
            ));
        }
        Ok(chosen)
    }

    pub(crate) fn names(&self) -> Vec<String> {
        [&self.audio, &self.video]
            .into_iter()
            .flatten()
            .map(|(_, n)| n.clone())
            .collect()
    }
}

/// The pull until it is stopped or gives up; the stream ends with it.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn run(
    entry: Arc<PullEntry>,
    publisher: Publisher,
    url: PullUrl,
    transport: PullTransport,
    first: Session<Described>,
    mut tracks: Tracks,
    cfg: PullConfig,
    mut stop: watch::Receiver<bool>,
) {
    let mut described = Some(first);
    // Failed attempts since media last flowed.
    let mut failures: u32 = 0;
    let mut backoff = cfg.reconnect_initial;
    let end = loop {
        let session = async {
            let d = match described.take() {
                Some(d) => d,
                None => describe(&url, &cfg).await?,
            };
            play(&entry, &publisher, d, transport, &mut tracks, &cfg).await
        };
        let (why, played) = tokio::select! {
            r = session => r.unwrap_or_else(|e| (e, false)),
            _ = stop.wait_for(|s| *s) => break (PullStatus::Stopped, "terminated".to_owned()),
        };
        if played {
            failures = 0;
            backoff = cfg.reconnect_initial;
        }
        failures += 1;
        if cfg.reconnect_max_attempts > 0 && failures > cfg.reconnect_max_attempts {
            break (
                PullStatus::Failed,
                format!(
                    "{why} (gave up after {} attempts)",
                    cfg.reconnect_max_attempts
                ),
            );
        }
        tracing::warn!(reason = %why, retry_in_ms = backoff.as_millis() as u64, "RTSP session lost");
        entry.set_status(PullStatus::Reconnecting, Some(why));
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.wait_for(|s| *s) => break (PullStatus::Stopped, "terminated".to_owned()),
        }
        backoff = (backoff * 2).min(cfg.reconnect_max);
        entry.update(|i| i.reconnects += 1);
    };
    let (status, why) = end;
    publisher.end(&format!(
        "RTSP pull {}: {why}",
        status.as_str().to_lowercase()
    ));
    entry.set_status(status, Some(why));
}

/// SETUP, PLAY and publish until the session ends. Returns why it ended and whether any
/// media flowed.
async fn play(
    entry: &PullEntry,
    publisher: &Publisher,
    mut session: Session<Described>,
    transport: PullTransport,
    tracks: &mut Tracks,
    cfg: &PullConfig,
) -> Result<(String, bool), String> {
    let chosen = tracks.update(publisher, &session)?;
    entry.update(|i| i.tracks = tracks.names());
    for &(stream, _) in &chosen {
        let t = match transport {
            PullTransport::Tcp => Transport::Tcp(Default::default()),
            PullTransport::Udp => Transport::Udp(Default::default()),
        };
        timed(
            cfg.timeout,
            "SETUP",
            session.setup(stream, SetupOptions::default().transport(t)),
        )
        .await?;
    }
    // Several streams from servers that leave rtptime out of RTP-Info: accept them.
    let play = PlayOptions::default().initial_timestamp(InitialTimestampPolicy::Permissive);
    let mut playing = timed(cfg.timeout, "PLAY", session.play(play)).await?;
    let mut played = false;
    loop {
        let item = match tokio::time::timeout(cfg.timeout, playing.next()).await {
            Err(_) => return Ok((format!("no media for {} s", cfg.timeout.as_secs()), played)),
            Ok(None) => return Ok(("the server closed the session".to_owned(), played)),
            Ok(Some(Err(e))) => return Ok((format!("session error: {}", first_line(&e)), played)),
            Ok(Some(Ok(item))) => item,
        };
        let PacketItem::Rtp(pkt) = item else {
            continue;
        };
        let Some(&(_, track)) = chosen.iter().find(|(s, _)| *s == pkt.stream_id()) else {
            continue;
        };
        let header = pkt.header();
        let (payload_type, seq, timestamp, marker, ssrc) = (
            header.payload_type(),
            header.sequence_number(),
            header.timestamp(),
            header.mark(),
            header.ssrc(),
        );
        let loss = u64::from(pkt.loss());
        let arrival = pkt.ctx().received();
        let payload = pkt.into_payload_bytes();
        let len = payload.len() as u64;
        publisher.publish(MediaUnit {
            track,
            payload_type,
            seq,
            timestamp,
            marker,
            ssrc,
            payload,
            arrival,
        });
        entry.update(|i| {
            i.packets += 1;
            i.bytes += len;
            i.lost += loss;
        });
        if !played {
            played = true;
            entry.set_status(PullStatus::Playing, None);
        }
    }
}
