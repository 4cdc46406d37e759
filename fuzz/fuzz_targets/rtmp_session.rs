//! What an RTMP server sends a push: arbitrary bytes fed to the sans-IO publish session at
//! any stage. The first input byte picks the stage reached first with a real server's
//! replies (recorded once from rml_rtmp's server session, in memory): 0 at the handshake,
//! 1 after it, 2 after `connect` was accepted, 3 while publishing. The rest is fed in
//! pieces whose sizes come from the input, with media sent between pieces once publishing.
//!
//! Properties: nothing panics; after an error the driver closes, so feeding stops; media
//! is refused before the publish and accepted while publishing. rml_rtmp 0.8 panics on some
//! malformed messages; `PublishSession` contains them (a protocol error), and only a panic
//! escaping `handle_input` counts as a crash here.
#![no_main]

use std::cell::{Cell, RefCell};
use std::panic::AssertUnwindSafe;
use std::sync::{Once, OnceLock};

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use rml_rtmp::handshake::{Handshake, HandshakeProcessResult, PeerType};
use rml_rtmp::sessions::{
    ServerSession, ServerSessionConfig, ServerSessionEvent, ServerSessionResult,
};
use sipstream::rtmp::session::{PublishSession, SessionError, SessionEvent};
use sipstream::rtmp::url::RtmpUrl;

const URL: &str = "rtmp://127.0.0.1/live/s1";

/// What the server sent, cut where each stage is reached: [handshake, connect accepted,
/// publish accepted].
struct Script {
    stages: [Vec<u8>; 3],
}

/// Runs a client against rml_rtmp's server in lock step and records the server's bytes.
fn script() -> &'static Script {
    static S: OnceLock<Script> = OnceLock::new();
    S.get_or_init(|| {
        let mut client = PublishSession::new(RtmpUrl::parse(URL).unwrap()).unwrap();
        let mut server_hs = Handshake::new(PeerType::Server);
        let mut server: Option<ServerSession> = None;
        let mut stages: [Vec<u8>; 3] = Default::default();
        let mut stage = 0;
        for _ in 0..50 {
            let mut data = client.pending().to_vec();
            client.consume(data.len());
            let mut to_client = Vec::new();
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
                        outbound(r, &mut to_client);
                        server = Some(s);
                        data = remaining_bytes;
                    }
                }
            }
            if let (Some(s), false) = (server.as_mut(), data.is_empty()) {
                for r in s.handle_input(&data).unwrap() {
                    match r {
                        ServerSessionResult::OutboundResponse(p) => to_client.extend(p.bytes),
                        ServerSessionResult::RaisedEvent(
                            ServerSessionEvent::ConnectionRequested { request_id, .. }
                            | ServerSessionEvent::PublishStreamRequested { request_id, .. },
                        ) => outbound(s.accept_request(request_id).unwrap(), &mut to_client),
                        _ => {}
                    }
                }
            }
            if to_client.is_empty() {
                continue;
            }
            // rml_rtmp's server answers C0+C1 with S0+S1+S2 at once: the first reply is the
            // whole handshake.
            stages[stage].extend_from_slice(&to_client);
            match client.handle_input(&to_client).unwrap() {
                Some(SessionEvent::Connected) => stage = 2,
                Some(SessionEvent::Publishing) => return Script { stages },
                None if stage == 0 => stage = 1,
                None => {}
            }
        }
        panic!("the in-memory server never accepted the publish");
    })
}

fn outbound(results: Vec<ServerSessionResult>, out: &mut Vec<u8>) {
    for r in results {
        if let ServerSessionResult::OutboundResponse(p) = r {
            out.extend(p.bytes);
        }
    }
}

thread_local! {
    /// Set while `PublishSession::handle_input` runs: a panic then is kept here, not reported.
    static QUIET: Cell<bool> = const { Cell::new(false) };
    static LAST_PANIC: RefCell<String> = const { RefCell::new(String::new()) };
}

/// libfuzzer-sys's panic hook aborts even on a panic that is caught. While the session
/// handles input, panics are only recorded, so those rml_rtmp raises unwind to the session's
/// containment; any other panic goes to the fuzzer's hook.
fn install_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let fuzzer_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if QUIET.get() {
                LAST_PANIC.set(info.to_string());
            } else {
                fuzzer_hook(info);
            }
        }));
    });
}

/// `handle_input`, failing loudly if a panic escaped the session's containment.
fn feed(c: &mut PublishSession, bytes: &[u8]) -> Result<Option<SessionEvent>, SessionError> {
    QUIET.set(true);
    let r = std::panic::catch_unwind(AssertUnwindSafe(|| c.handle_input(bytes)));
    QUIET.set(false);
    r.unwrap_or_else(|_| {
        panic!(
            "a panic escaped PublishSession::handle_input: {}",
            LAST_PANIC.take()
        )
    })
}

fuzz_target!(|data: &[u8]| {
    install_hook();
    let Some((&first, mut rest)) = data.split_first() else {
        return;
    };
    let s = script();
    let mut c = PublishSession::new(RtmpUrl::parse(URL).unwrap()).unwrap();
    let stage = usize::from(first & 3);
    for bytes in &s.stages[..stage] {
        c.consume(c.pending().len());
        feed(&mut c, bytes).expect("the recorded server replies are accepted");
    }
    assert_eq!(c.is_publishing(), stage == 3);
    if stage < 3 {
        assert!(matches!(
            c.send_audio(Bytes::from_static(&[0xAF, 1, 7]), 0),
            Err(SessionError::NotPublishing)
        ));
    }
    // Pieces: a length byte, then that many bytes (the rest when short).
    let mut ts = 0u32;
    while let Some((&len, tail)) = rest.split_first() {
        let n = usize::from(len).max(1).min(tail.len());
        let (piece, tail) = tail.split_at(n);
        rest = tail;
        c.consume(c.pending().len() / 2);
        match feed(&mut c, piece) {
            Ok(_) => {}
            Err(e) => {
                let _ = e.to_string();
                return;
            }
        }
        if c.is_publishing() {
            ts = ts.wrapping_add(u32::from(len));
            let body = Bytes::copy_from_slice(piece);
            c.send_audio(body.clone(), ts)
                .expect("audio while publishing");
            c.send_video(body, ts).expect("video while publishing");
        }
    }
    if c.is_publishing() {
        let _ = c.stop();
    }
});
