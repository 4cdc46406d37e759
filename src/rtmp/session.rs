//! One RTMP publishing connection as a sans-IO state machine on top of rml_rtmp's
//! [`Handshake`] and [`ClientSession`]: handshake, `connect` (with `tcUrl`), `createStream`,
//! `publish` (live), then audio/video/metadata messages, with chunking and acknowledgements
//! done by rml_rtmp.
//!
//! Drive contract:
//! 1. [`PublishSession::new`] queues C0+C1; write [`PublishSession::pending`] to the socket and
//!    [`PublishSession::consume`] what was written, in order, for the life of the session.
//! 2. Feed every byte read from the socket to [`PublishSession::handle_input`], in order. It
//!    returns [`SessionEvent::Publishing`] once the server accepted the publish; an error
//!    means the connection is unusable (close it).
//! 3. While [`PublishSession::is_publishing`], queue media with `send_*`. Before that they
//!    return [`SessionError::NotPublishing`].
//!
//! The only clock it reads is rml_rtmp's own (command timestamps, not media timestamps).

use bytes::Bytes;
use rml_rtmp::handshake::{Handshake, HandshakeProcessResult, PeerType};
use rml_rtmp::sessions::{
    ClientSession, ClientSessionConfig, ClientSessionEvent, ClientSessionResult,
    PublishRequestType, StreamMetadata,
};
use rml_rtmp::time::RtmpTimestamp;
use thiserror::Error;

use super::url::RtmpUrl;

/// Outgoing RTMP chunk size (rml_rtmp announces it with Set Chunk Size after `connect`).
pub const CHUNK_SIZE: u32 = 4096;

#[derive(Debug, Error)]
pub enum SessionError {
    #[error("RTMP handshake failed: {0}")]
    Handshake(String),
    #[error("RTMP protocol error: {0}")]
    Protocol(String),
    #[error("server rejected connect to app {app:?}: {description}")]
    ConnectRejected { app: String, description: String },
    #[error("server refused to publish: {code}")]
    PublishRejected { code: String },
    #[error("not publishing yet")]
    NotPublishing,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEvent {
    /// `connect` accepted; `createStream`/`publish` sent.
    Connected,
    /// `NetStream.Publish.Start`: media may flow.
    Publishing,
}

enum State {
    Handshaking(Box<Handshake>),
    Session {
        session: Box<ClientSession>,
        publishing: bool,
    },
}

pub struct PublishSession {
    url: RtmpUrl,
    state: State,
    out: Vec<u8>,
    /// Bytes of `out` already written.
    written: usize,
}

impl std::fmt::Debug for PublishSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublishSession")
            .field("url", &self.url.tc_url())
            .field("publishing", &self.is_publishing())
            .field("pending", &self.pending().len())
            .finish()
    }
}

fn proto(e: impl std::fmt::Display) -> SessionError {
    SessionError::Protocol(e.to_string())
}

/// Runs rml_rtmp on the server's bytes with its panics turned into protocol errors.
/// rml_rtmp 0.8 panics on some malformed messages, e.g. an AMF0 command with fewer than
/// three values (`drain(..3)` in `messages/types/amf0_command.rs`), found by the
/// `rtmp_session` fuzz target. A server must not be able to crash the push task; the error
/// closes the connection like any other (the session is not used again).
fn contain<T>(f: impl FnOnce() -> Result<T, SessionError>) -> Result<T, SessionError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|panic| {
        let why = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        Err(SessionError::Protocol(format!(
            "malformed message from the server (rml_rtmp panicked: {why})"
        )))
    })
}

impl PublishSession {
    pub fn new(url: RtmpUrl) -> Result<Self, SessionError> {
        let mut hs = Handshake::new(PeerType::Client);
        let c0c1 = hs
            .generate_outbound_p0_and_p1()
            .map_err(|e| SessionError::Handshake(e.to_string()))?;
        Ok(Self {
            url,
            state: State::Handshaking(Box::new(hs)),
            out: c0c1,
            written: 0,
        })
    }

    pub fn is_publishing(&self) -> bool {
        matches!(
            self.state,
            State::Session {
                publishing: true,
                ..
            }
        )
    }

    /// Bytes waiting to be written.
    pub fn pending(&self) -> &[u8] {
        &self.out[self.written..]
    }

    /// Marks `n` pending bytes as written.
    pub fn consume(&mut self, n: usize) {
        self.written = (self.written + n).min(self.out.len());
        if self.written == self.out.len() {
            self.out.clear();
            self.written = 0;
        } else if self.written > 1 << 20 {
            self.out.drain(..self.written);
            self.written = 0;
        }
    }

    /// Processes bytes read from the server.
    pub fn handle_input(&mut self, data: &[u8]) -> Result<Option<SessionEvent>, SessionError> {
        let mut event = None;
        let remaining = match &mut self.state {
            State::Handshaking(hs) => {
                match hs
                    .process_bytes(data)
                    .map_err(|e| SessionError::Handshake(e.to_string()))?
                {
                    HandshakeProcessResult::InProgress { response_bytes } => {
                        self.out.extend_from_slice(&response_bytes);
                        return Ok(None);
                    }
                    HandshakeProcessResult::Completed {
                        response_bytes,
                        remaining_bytes,
                    } => {
                        self.out.extend_from_slice(&response_bytes);
                        let mut config = ClientSessionConfig::new();
                        config.tc_url = Some(self.url.tc_url());
                        config.chunk_size = CHUNK_SIZE;
                        let (mut session, results) = ClientSession::new(config).map_err(proto)?;
                        self.emit(results)?;
                        let connect = session
                            .request_connection(self.url.app.clone())
                            .map_err(proto)?;
                        self.emit(vec![connect])?;
                        self.state = State::Session {
                            session: Box::new(session),
                            publishing: false,
                        };
                        remaining_bytes
                    }
                }
            }
            State::Session { .. } => data.to_vec(),
        };
        if remaining.is_empty() {
            return Ok(None);
        }
        let State::Session { session, .. } = &mut self.state else {
            return Ok(None);
        };
        let results = contain(|| session.handle_input(&remaining).map_err(proto))?;
        let mut follow_up = Vec::new();
        for r in results {
            match r {
                ClientSessionResult::OutboundResponse(p) => follow_up.push(Ok(p.bytes)),
                ClientSessionResult::RaisedEvent(ev) => follow_up.push(Err(ev)),
                ClientSessionResult::UnhandleableMessageReceived(_) => {}
            }
        }
        for item in follow_up {
            match item {
                Ok(bytes) => self.out.extend_from_slice(&bytes),
                Err(ev) => {
                    if let Some(e) = self.on_event(ev)? {
                        event = Some(e);
                    }
                }
            }
        }
        Ok(event)
    }

    fn on_event(&mut self, ev: ClientSessionEvent) -> Result<Option<SessionEvent>, SessionError> {
        let State::Session {
            session,
            publishing,
        } = &mut self.state
        else {
            return Ok(None);
        };
        match ev {
            ClientSessionEvent::ConnectionRequestAccepted => {
                let r = session
                    .request_publishing(self.url.stream.clone(), PublishRequestType::Live)
                    .map_err(proto)?;
                self.emit(vec![r])?;
                Ok(Some(SessionEvent::Connected))
            }
            ClientSessionEvent::ConnectionRequestRejected { description } => {
                Err(SessionError::ConnectRejected {
                    app: self.url.app.clone(),
                    description,
                })
            }
            ClientSessionEvent::PublishRequestAccepted => {
                *publishing = true;
                Ok(Some(SessionEvent::Publishing))
            }
            ClientSessionEvent::UnhandleableOnStatusCode { code } => {
                // NetStream.Publish.BadName, .Denied, ... (nginx-rtmp: "already publishing").
                if code.contains("Publish") || code.contains("Failed") || code.contains("Rejected")
                {
                    Err(SessionError::PublishRejected { code })
                } else {
                    tracing::debug!(%code, "RTMP onStatus ignored");
                    Ok(None)
                }
            }
            other => {
                tracing::trace!(event = ?other, "RTMP session event");
                Ok(None)
            }
        }
    }

    fn emit(&mut self, results: Vec<ClientSessionResult>) -> Result<(), SessionError> {
        for r in results {
            if let ClientSessionResult::OutboundResponse(p) = r {
                self.out.extend_from_slice(&p.bytes);
            }
        }
        Ok(())
    }

    fn publishing_session(&mut self) -> Result<&mut ClientSession, SessionError> {
        match &mut self.state {
            State::Session {
                session,
                publishing: true,
            } => Ok(session),
            _ => Err(SessionError::NotPublishing),
        }
    }

    /// `@setDataFrame onMetaData`.
    pub fn send_metadata(&mut self, meta: &StreamMetadata) -> Result<(), SessionError> {
        let r = self
            .publishing_session()?
            .publish_metadata(meta)
            .map_err(proto)?;
        self.emit(vec![r])
    }

    pub fn send_audio(&mut self, body: Bytes, ts: u32) -> Result<(), SessionError> {
        let r = self
            .publishing_session()?
            .publish_audio_data(body, RtmpTimestamp::new(ts), false)
            .map_err(proto)?;
        self.emit(vec![r])
    }

    pub fn send_video(&mut self, body: Bytes, ts: u32) -> Result<(), SessionError> {
        let r = self
            .publishing_session()?
            .publish_video_data(body, RtmpTimestamp::new(ts), false)
            .map_err(proto)?;
        self.emit(vec![r])
    }

    /// `deleteStream` (nginx-rtmp ends the publish and closes its recording).
    pub fn stop(&mut self) -> Result<(), SessionError> {
        let r = self
            .publishing_session()?
            .stop_publishing()
            .map_err(proto)?;
        self.emit(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rml_rtmp::sessions::{
        ServerSession, ServerSessionConfig, ServerSessionEvent, ServerSessionResult,
    };

    /// Runs our client against rml_rtmp's server session in memory, in lock step.
    #[test]
    fn handshake_connect_publish_and_media_reach_a_server() {
        let url = RtmpUrl::parse("rtmp://127.0.0.1/live/s1").unwrap();
        let mut client = PublishSession::new(url).unwrap();
        let mut server_hs = Handshake::new(PeerType::Server);
        let mut server: Option<ServerSession> = None;
        let mut to_client: Vec<u8> = Vec::new();
        let mut published = false;
        let mut audio = Vec::new();
        for _round in 0..50 {
            let data = client.pending().to_vec();
            client.consume(data.len());
            let mut data = data;
            if server.is_none() && !data.is_empty() {
                match server_hs.process_bytes(&data).unwrap() {
                    HandshakeProcessResult::InProgress { response_bytes } => {
                        to_client.extend(response_bytes);
                        data.clear();
                    }
                    HandshakeProcessResult::Completed {
                        response_bytes,
                        remaining_bytes,
                    } => {
                        to_client.extend(response_bytes);
                        let (s, r) = ServerSession::new(ServerSessionConfig::new()).unwrap();
                        for x in r {
                            if let ServerSessionResult::OutboundResponse(p) = x {
                                to_client.extend(p.bytes);
                            }
                        }
                        server = Some(s);
                        data = remaining_bytes;
                    }
                }
            }
            if let (Some(s), false) = (server.as_mut(), data.is_empty()) {
                let results = s.handle_input(&data).unwrap();
                for r in results {
                    match r {
                        ServerSessionResult::OutboundResponse(p) => to_client.extend(p.bytes),
                        ServerSessionResult::RaisedEvent(
                            ServerSessionEvent::ConnectionRequested {
                                request_id,
                                app_name,
                            },
                        ) => {
                            assert_eq!(app_name, "live");
                            for x in s.accept_request(request_id).unwrap() {
                                if let ServerSessionResult::OutboundResponse(p) = x {
                                    to_client.extend(p.bytes);
                                }
                            }
                        }
                        ServerSessionResult::RaisedEvent(
                            ServerSessionEvent::PublishStreamRequested {
                                request_id,
                                stream_key,
                                ..
                            },
                        ) => {
                            assert_eq!(stream_key, "s1");
                            for x in s.accept_request(request_id).unwrap() {
                                if let ServerSessionResult::OutboundResponse(p) = x {
                                    to_client.extend(p.bytes);
                                }
                            }
                        }
                        ServerSessionResult::RaisedEvent(
                            ServerSessionEvent::AudioDataReceived {
                                data, timestamp, ..
                            },
                        ) => audio.push((timestamp.value, data)),
                        _ => {}
                    }
                }
            }
            if !to_client.is_empty() {
                let bytes = std::mem::take(&mut to_client);
                if let Some(SessionEvent::Publishing) = client.handle_input(&bytes).unwrap() {
                    published = true;
                    client
                        .send_audio(Bytes::from_static(&[0xAF, 0, 0x11, 0x88]), 0)
                        .unwrap();
                    client
                        .send_audio(Bytes::from_static(&[0xAF, 1, 7]), 21)
                        .unwrap();
                }
            }
            if audio.len() == 2 {
                break;
            }
        }
        assert!(published);
        assert_eq!(audio.len(), 2, "server got {audio:?}");
        assert_eq!(audio[1].0, 21);
        assert_eq!(&audio[1].1[..], &[0xAF, 1, 7]);
    }

    #[test]
    fn a_command_with_too_few_values_is_an_error_not_a_panic() {
        let url = RtmpUrl::parse("rtmp://h/live/s").unwrap();
        let mut c = PublishSession::new(url).unwrap();
        // S0, S1 and S2 of an old-style handshake (S2 is not checked).
        let mut hs = vec![3u8];
        hs.extend(std::iter::repeat_n(0u8, 2 * 1536));
        assert_eq!(c.handle_input(&hs).unwrap(), None);
        // An AMF0 command (type 20) on chunk stream 3 holding only the number 0: rml_rtmp
        // 0.8 wants three values and panics (the rtmp_session fuzz target's find).
        let amf0 = [0u8; 9];
        let mut msg = vec![0x03, 0, 0, 0, 0, 0, amf0.len() as u8, 20, 0, 0, 0, 0];
        msg.extend_from_slice(&amf0);
        match c.handle_input(&msg) {
            Err(SessionError::Protocol(why)) => assert!(why.contains("panicked"), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn media_before_publish_is_refused_and_garbage_is_an_error() {
        let url = RtmpUrl::parse("rtmp://h/live/s").unwrap();
        let mut c = PublishSession::new(url).unwrap();
        assert_eq!(c.pending().len(), 1537);
        assert!(matches!(
            c.send_audio(Bytes::new(), 0),
            Err(SessionError::NotPublishing)
        ));
        // S0 with a wrong version.
        let mut junk = vec![0x42u8];
        junk.extend(std::iter::repeat_n(0u8, 3072));
        assert!(c.handle_input(&junk).is_err());
    }
}
