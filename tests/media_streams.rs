//! Media streams to voice agents end to end: the gateway opens a WebSocket to an agent server
//! run by the test, streams a real peer's audio to it (Twilio Media Streams messages, or raw
//! 16 kHz L16 frames) and plays the agent's audio back into the call. The peers are a
//! baresip softphone through kamailio, sipp (UAS and UAC) and `RawUas` where arrival times
//! of what the gateway sends must be measured (`clear`).
mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use base64::Engine;
use common::{startup_body, tone_share, Baresip, Gateway, Kamailio, RawUas, Sipp};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

const T: Duration = Duration::from_secs(20);

/// One connection the agent server accepted.
struct Conn {
    rx: mpsc::UnboundedReceiver<(Instant, Message)>,
    tx: mpsc::UnboundedSender<Message>,
    headers: HashMap<String, String>,
    uri: String,
    task: tokio::task::JoinHandle<()>,
}

impl Conn {
    async fn next(&mut self) -> (Instant, Message) {
        tokio::time::timeout(T, self.rx.recv())
            .await
            .expect("a message from the gateway in time")
            .expect("the connection is open")
    }

    /// The next text message as JSON (binary frames before it are skipped).
    async fn json(&mut self) -> Value {
        loop {
            if let (_, Message::Text(t)) = self.next().await {
                return serde_json::from_str(t.as_str()).expect("JSON text frame");
            }
        }
    }

    /// The next text message whose `event` is `event`.
    async fn event(&mut self, event: &str) -> (Instant, Value) {
        loop {
            if let (at, Message::Text(t)) = self.next().await {
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                if v["event"] == event {
                    return (at, v);
                }
            }
        }
    }

    fn send_json(&self, v: Value) {
        let _ = self.tx.send(Message::text(v.to_string()));
    }

    /// The server goes away without a close frame (a crash).
    fn kill(self) {
        self.task.abort();
    }
}

/// A WebSocket server standing in for a voice agent.
struct Agent {
    url: String,
    conns: mpsc::UnboundedReceiver<Conn>,
}

impl Agent {
    async fn start() -> Agent {
        Self::serve(None).await
    }

    /// A wss:// server with a certificate for 127.0.0.1 and localhost; returns it and the
    /// certificate's PEM (the gateway's trust anchor through `SSL_CERT_FILE`).
    async fn start_tls() -> (Agent, String) {
        let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()])
            .unwrap();
        let pem = ck.cert.pem();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
        let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![ck.cert.der().clone()], key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
        (Self::serve(Some(acceptor)).await, pem)
    }

    async fn serve(tls: Option<tokio_rustls::TlsAcceptor>) -> Agent {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let scheme = if tls.is_some() { "wss" } else { "ws" };
        let url = format!("{scheme}://{}/agent", listener.local_addr().unwrap());
        let (ctx, conns) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let conn = match &tls {
                    None => accept(sock).await,
                    Some(acceptor) => match acceptor.accept(sock).await {
                        Ok(s) => accept(s).await,
                        Err(_) => continue,
                    },
                };
                if let Some(conn) = conn {
                    let _ = ctx.send(conn);
                }
            }
        });
        Agent { url, conns }
    }

    async fn accept(&mut self) -> Conn {
        tokio::time::timeout(T, self.conns.recv())
            .await
            .expect("the gateway connects in time")
            .unwrap()
    }
}

/// The WebSocket handshake on an accepted socket (plain or TLS), recording its headers,
/// then a task that relays messages both ways.
// The handshake callback's type is tungstenite's (its error is a whole HTTP response).
#[allow(clippy::result_large_err)]
async fn accept<S>(sock: S) -> Option<Conn>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mtx, rx) = mpsc::unbounded_channel();
    let (tx, mut out) = mpsc::unbounded_channel::<Message>();
    let seen = std::sync::Arc::new(std::sync::Mutex::new((HashMap::new(), String::new())));
    let seen2 = seen.clone();
    let cb = move |req: &tokio_tungstenite::tungstenite::handshake::server::Request, resp| {
        let mut s = seen2.lock().unwrap();
        for (k, v) in req.headers() {
            s.0.insert(k.as_str().to_string(), v.to_str().unwrap_or("").to_string());
        }
        s.1 = req.uri().to_string();
        Ok(resp)
    };
    let ws = tokio_tungstenite::accept_hdr_async(sock, cb).await.ok()?;
    let task = tokio::spawn(async move {
        let (mut sink, mut stream) = ws.split();
        loop {
            tokio::select! {
                m = stream.next() => match m {
                    Some(Ok(m)) => { let _ = mtx.send((Instant::now(), m)); }
                    _ => return,
                },
                m = out.recv() => match m {
                    Some(m) => { if sink.send(m).await.is_err() { return } }
                    None => return,
                },
            }
        }
    });
    let (headers, uri) = seen.lock().unwrap().clone();
    Some(Conn {
        rx,
        tx,
        headers,
        uri,
        task,
    })
}

/// Reads `n` Twilio media messages; checks their numbering; returns them.
async fn media(conn: &mut Conn, n: usize) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::new();
    while out.len() < n {
        let m = conn.json().await;
        if m["event"] == "media" {
            out.push(m);
        }
    }
    for w in out.windows(2) {
        let seq = |m: &Value| {
            m["sequenceNumber"]
                .as_str()
                .unwrap()
                .parse::<u64>()
                .unwrap()
        };
        let chunk = |m: &Value| {
            m["media"]["chunk"]
                .as_str()
                .unwrap()
                .parse::<u64>()
                .unwrap()
        };
        let ts = |m: &Value| {
            m["media"]["timestamp"]
                .as_str()
                .unwrap()
                .parse::<u64>()
                .unwrap()
        };
        assert!(seq(&w[1]) > seq(&w[0]), "{} then {}", w[0], w[1]);
        assert_eq!(chunk(&w[1]), chunk(&w[0]) + 1, "{} then {}", w[0], w[1]);
        assert_eq!(ts(&w[1]), ts(&w[0]) + 20, "{} then {}", w[0], w[1]);
    }
    out
}

fn ulaw_of(messages: &[Value]) -> Vec<i16> {
    let mut pcm = Vec::new();
    for m in messages {
        let b = base64::engine::general_purpose::STANDARD
            .decode(m["media"]["payload"].as_str().unwrap())
            .unwrap();
        assert_eq!(b.len(), 160, "20 ms of 8 kHz μ-law: {m}");
        sipstream::media::g711::decode_ulaw(&b, &mut pcm);
    }
    pcm
}

fn tone(rate: u32, hz: f64, samples: usize) -> Vec<i16> {
    (0..samples)
        .map(|i| {
            ((i as f64 * 2.0 * std::f64::consts::PI * hz / f64::from(rate)).sin() * 8000.0) as i16
        })
        .collect()
}

/// The best share of `hz` over half-second windows.
fn best_share(pcm: &[i16], rate: u32, hz: f64) -> f64 {
    let w = rate as usize / 2;
    (0..pcm.len().saturating_sub(w))
        .step_by(w / 2)
        .map(|i| tone_share(&pcm[i..i + w], rate, hz))
        .fold(0.0, f64::max)
}

async fn stream_of(gw: &Gateway, call_id: &str) -> Value {
    let (s, v) = gw
        .post_json("/call/stream/find", json!({"callId": call_id}))
        .await;
    assert_eq!(s, 200, "{v}");
    v[0].clone()
}

async fn wait_stream(gw: &Gateway, call_id: &str, status: &str) -> Value {
    let deadline = Instant::now() + T;
    loop {
        let v = stream_of(gw, call_id).await;
        if v["status"] == status {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "stream not {status}: {v}\n{}",
            gw.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A baresip phone (a real SIP softphone) called through kamailio; the stream starts at the
/// answer (`mediaStreamUrl`). The agent hears the phone's 440 Hz in Twilio messages, its
/// 3 s of 1 kHz reaches the phone paced in real time, and its mark comes back once that audio
/// has played.
#[tokio::test]
async fn twilio_stream_with_a_softphone_both_ways() {
    let mut kam = Kamailio::start_phones();
    let phone = Baresip::start("1001", kam.port, 440);
    let log = kam.wait_log("REGISTER-OK 1001", T);
    assert!(log.contains("REGISTER-OK 1001"), "{log}\n{}", phone.log());
    let (hook, mut events) = common::webhook().await;
    let gw = Gateway::start(&[("webhook_url", hook)]).await;
    let mut agent = Agent::start().await;
    let body = json!({
        "callId": "ag1", "callee": "1001",
        "sipLogin": "gw", "sipPassword": "gw-Pa55", "sipDomain": "sipstream.test",
        "sipOutboundProxy": "127.0.0.1", "sipPort": kam.port,
        "mediaStreamUrl": format!("{}?token=t0k3n", agent.url),
        "mediaStream": {
            "headers": {"Authorization": "Bearer agent-key"},
            "customParameters": {"lang": "en", "queue": 7}
        },
    });
    let (s, call) = gw.post_json("/call/startup", body).await;
    assert_eq!(s, 200, "{call}");
    let mut conn = agent.accept().await;
    assert_eq!(
        conn.headers.get("authorization").map(String::as_str),
        Some("Bearer agent-key")
    );
    assert_eq!(conn.uri, "/agent?token=t0k3n");
    let c = conn.json().await;
    assert_eq!(
        c,
        json!({"event": "connected", "protocol": "Call", "version": "1.0.0"})
    );
    let st = conn.json().await;
    assert_eq!(st["event"], "start", "{st}");
    assert_eq!(st["sequenceNumber"], "1");
    let sid = st["streamSid"].as_str().unwrap().to_string();
    assert!(sid.starts_with("MZ") && sid.len() == 34, "{st}");
    assert_eq!(st["start"]["streamSid"], sid.as_str());
    assert_eq!(st["start"]["callSid"], "ag1");
    assert_eq!(st["start"]["tracks"], json!(["inbound"]));
    assert_eq!(
        st["start"]["mediaFormat"],
        json!({"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1})
    );
    assert_eq!(
        st["start"]["customParameters"],
        json!({"lang": "en", "queue": 7})
    );

    // The phone's tone, in 20 ms chunks numbered without gaps.
    let heard = media(&mut conn, 100).await;
    assert!(heard
        .iter()
        .all(|m| m["media"]["track"] == "inbound" && m["streamSid"] == sid.as_str()));
    let pcm = ulaw_of(&heard[50..]);
    let share = tone_share(&pcm, 8000, 440.0);
    assert!(share > 0.5, "the agent hears the phone's 440 Hz: {share}");

    // 3 s of 1 kHz sent at once, then a mark: paced into the call at real time.
    let reply = tone(8000, 1000.0, 24000);
    let sent = Instant::now();
    for chunk in reply.chunks(160) {
        let mut b = Vec::new();
        sipstream::media::g711::encode_ulaw(chunk, &mut b);
        conn.send_json(json!({"event": "media", "streamSid": sid,
            "media": {"payload": base64::engine::general_purpose::STANDARD.encode(&b)}}));
    }
    conn.send_json(json!({"event": "mark", "streamSid": sid, "mark": {"name": "greeting"}}));
    let (at, mark) = conn.event("mark").await;
    assert_eq!(mark["mark"]["name"], "greeting");
    let took = at - sent;
    assert!(
        took >= Duration::from_millis(2900) && took < Duration::from_millis(4000),
        "the mark comes back once its 3 s have played: after {took:?}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (pcm, rate) = phone.heard();
    let share = best_share(&pcm, rate, 1000.0);
    assert!(
        share > 0.6,
        "the phone hears the agent's 1 kHz: best share {share}"
    );
    let info = stream_of(&gw, "ag1").await;
    assert_eq!(info["status"], "STREAMING", "{info}");
    assert!(info["framesPlayed"].as_u64().unwrap() >= 149, "{info}");
    assert_eq!(info["marks"], 1, "{info}");
    assert!(
        !info.to_string().contains("t0k3n") && !info.to_string().contains("agent-key"),
        "{info}"
    );

    // The call ends: stop, then the socket closes; events for both ends of the stream.
    let (s, _) = gw
        .post_json("/call/terminate", json!({"callId": "ag1"}))
        .await;
    assert_eq!(s, 200);
    let (_, stop) = conn.event("stop").await;
    assert_eq!(stop["stop"]["callSid"], "ag1");
    let info = wait_stream(&gw, "ag1", "STOPPED").await;
    assert!(info["framesSent"].as_u64().unwrap() >= 100, "{info}");
    let started = common::wait_event(&mut events, "MediaStreamEvent", T).await;
    assert_eq!(started["event"], "MediaStreamStarted", "{started}");
    assert_eq!(started["streamSid"], sid.as_str());
    assert!(!started.to_string().contains("t0k3n"), "{started}");
    let stopped = common::wait_event(&mut events, "MediaStreamEvent", T).await;
    assert_eq!(stopped["event"], "MediaStreamStopped", "{stopped}");
    assert!(!gw.logs().contains("t0k3n") && !gw.logs().contains("agent-key"));
}

/// Raw 16 kHz L16 frames with a sipp-free timing check: RawUas timestamps what it receives,
/// so `clear` is seen to stop the agent's audio within 60 ms; DTMF reaches the agent; bad
/// requests get clear errors and leave the stream alone.
#[tokio::test]
async fn raw_l16_stream_with_dtmf_mark_and_clear() {
    let gw = Gateway::start(&[]).await;
    let uas = RawUas::start("PCMU", 440.0).await;
    let mut agent = Agent::start().await;
    let (s, call) = gw
        .post_json("/call/startup", startup_body("ag2", uas.port, "udp"))
        .await;
    assert_eq!(s, 200, "{call}");
    gw.wait_status("ag2", &["ESTABLISHED"], T).await;

    // Bad requests first: each names its fault; none starts a stream.
    for (body, status, needle) in [
        (json!({"callId": "nope", "url": agent.url}), 404, "nope"),
        (json!({"callId": "ag2"}), 400, "url"),
        (
            json!({"callId": "ag2", "url": agent.url, "track": "outbound"}),
            400,
            "track",
        ),
        (
            json!({"callId": "ag2", "url": agent.url, "leg": "caller"}),
            400,
            "leg",
        ),
        (
            json!({"callId": "ag2", "url": agent.url, "codec": "L16", "sampleRate": 11025}),
            400,
            "sampleRate",
        ),
        (
            json!({"callId": "ag2", "url": agent.url, "headers": {"X-Evil": "a\r\nB: c"}}),
            400,
            "headers",
        ),
    ] {
        let (s, e) = gw.post_json("/call/stream/startup", body.clone()).await;
        assert_eq!(s, status, "{body}: {e}");
        assert!(e.to_string().contains(needle), "{body}: {e}");
    }

    let (s, info) = gw
        .post_json(
            "/call/stream/startup",
            json!({"callId": "ag2", "url": agent.url, "format": "raw", "codec": "L16", "sampleRate": 16000}),
        )
        .await;
    assert_eq!(s, 200, "{info}");
    assert_eq!(info["status"], "CONNECTING");
    let (s, e) = gw
        .post_json(
            "/call/stream/startup",
            json!({"callId": "ag2", "url": agent.url}),
        )
        .await;
    assert_eq!(s, 409, "one bidirectional stream per call: {e}");
    let mut conn = agent.accept().await;
    assert_eq!(conn.json().await["event"], "connected");
    let st = conn.json().await;
    assert_eq!(
        st["start"]["mediaFormat"],
        json!({"encoding": "audio/x-l16", "sampleRate": 16000, "channels": 1})
    );
    // Binary frames of 20 ms at 16 kHz carrying the peer's 440 Hz.
    let mut pcm = Vec::new();
    let mut frames = 0;
    while frames < 75 {
        if let (_, Message::Binary(b)) = conn.next().await {
            assert_eq!(b.len(), 640);
            pcm.extend(b.chunks_exact(2).map(|c| i16::from_le_bytes([c[0], c[1]])));
            frames += 1;
        }
    }
    let share = tone_share(&pcm[16000..], 16000, 440.0);
    assert!(share > 0.5, "440 Hz at 16 kHz: {share}");

    // A digit from the peer (RFC 4733) arrives as a dtmf message.
    uas.press(5);
    let (_, d) = conn.event("dtmf").await;
    assert_eq!(d["dtmf"], json!({"track": "inbound_track", "digit": "5"}));

    // 10 s of 1 kHz, a mark after it; clear after one second.
    for chunk in tone(16000, 1000.0, 160_000).chunks(320) {
        let b: Vec<u8> = chunk.iter().flat_map(|s| s.to_le_bytes()).collect();
        let _ = conn.tx.send(Message::binary(b));
    }
    conn.send_json(json!({"event": "mark", "mark": {"name": "long"}}));
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let cleared = Instant::now();
    conn.send_json(json!({"event": "clear"}));
    let (at, mark) = conn.event("mark").await;
    assert_eq!(mark["mark"]["name"], "long");
    assert!(
        at - cleared < Duration::from_millis(200),
        "clear answers the mark: {:?}",
        at - cleared
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let heard = uas.heard_timed(0);
    let with_tone = |from: Instant, to: Instant| {
        heard
            .iter()
            .filter(|(t, p)| *t >= from && *t < to && tone_share(p, 8000, 1000.0) > 0.5)
            .count()
    };
    let before = with_tone(cleared - Duration::from_millis(900), cleared);
    assert!(
        before >= 35,
        "the agent's tone plays before clear: {before} packets"
    );
    let late = with_tone(cleared + Duration::from_millis(60), Instant::now());
    assert_eq!(late, 0, "no agent audio later than 60 ms after clear");

    let sid = info["streamSid"].as_str().unwrap();
    let (s, v) = gw
        .post_json("/call/stream/stop", json!({"streamSid": sid}))
        .await;
    assert_eq!(s, 200, "{v}");
    let (_, stop) = conn.event("stop").await;
    assert_eq!(stop["streamSid"], sid);
    let info = wait_stream(&gw, "ag2", "STOPPED").await;
    assert!(info["framesPlayed"].as_u64().unwrap() >= 45, "{info}");
    assert_eq!(
        gw.call("ag2").await["status"],
        "ESTABLISHED",
        "the call goes on"
    );
    let (s, _) = gw
        .post_json("/call/stream/stop", json!({"streamSid": "MZnone"}))
        .await;
    assert_eq!(s, 404);
}

/// The agent server crashes mid-call: the gateway reconnects (same streamSid, a new
/// `connected`/`start`), the sipp call is not disturbed; a clean close by the server ends the
/// stream and the call still goes on.
#[tokio::test]
async fn the_gateway_reconnects_when_the_agent_server_goes_away() {
    let (hook, mut events) = common::webhook().await;
    let gw = Gateway::start(&[
        ("webhook_url", hook),
        ("media_stream_reconnect_initial_ms", "100".into()),
    ])
    .await;
    let mut sipp = Sipp::uas("uas_pcmu_stream.xml", "udp", false);
    let mut agent = Agent::start().await;
    let mut body = startup_body("ag3", sipp.port, "udp");
    body["mediaStreamUrl"] = json!(agent.url);
    body["mediaStream"] = json!({"bidirectional": false});
    let (s, call) = gw.post_json("/call/startup", body).await;
    assert_eq!(s, 200, "{call}");
    let mut conn = agent.accept().await;
    let sid = conn.json().await;
    let sid = if sid["event"] == "connected" {
        conn.json().await
    } else {
        sid
    };
    let sid = sid["streamSid"].as_str().unwrap().to_string();
    let heard = media(&mut conn, 60).await;
    let share = tone_share(&ulaw_of(&heard[10..]), 8000, 440.0);
    assert!(share > 0.5, "sipp's 440 Hz: {share}");
    conn.kill();

    let mut again = agent.accept().await;
    assert_eq!(again.json().await["event"], "connected");
    let st = again.json().await;
    assert_eq!(st["event"], "start");
    assert_eq!(
        st["sequenceNumber"], "1",
        "a new connection is a new session"
    );
    assert_eq!(st["streamSid"], sid.as_str(), "the same stream");
    let more = media(&mut again, 25).await;
    assert!(tone_share(&ulaw_of(&more[5..]), 8000, 440.0) > 0.5);
    let info = stream_of(&gw, "ag3").await;
    assert_eq!(
        (info["status"].as_str(), info["reconnects"].as_u64()),
        (Some("STREAMING"), Some(1)),
        "{info}"
    );
    assert_eq!(gw.call("ag3").await["status"], "ESTABLISHED");
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let e = common::wait_event(&mut events, "MediaStreamEvent", T).await;
        seen.push(e["event"].as_str().unwrap().to_string());
    }
    assert_eq!(
        seen,
        [
            "MediaStreamStarted",
            "MediaStreamReconnecting",
            "MediaStreamStarted"
        ]
    );

    // The agent is done and closes cleanly: the stream stops, the call does not.
    let _ = again.tx.send(Message::Close(Some(
        tokio_tungstenite::tungstenite::protocol::CloseFrame {
            code: tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode::Normal,
            reason: "bye".into(),
        },
    )));
    let info = wait_stream(&gw, "ag3", "STOPPED").await;
    assert!(
        info["reason"]
            .as_str()
            .unwrap_or("")
            .contains("closed by the server"),
        "{info}"
    );
    assert_eq!(gw.call("ag3").await["status"], "ESTABLISHED");
    let (s, _) = gw
        .post_json("/call/terminate", json!({"callId": "ag3"}))
        .await;
    assert_eq!(s, 200);
    assert_eq!(sipp.wait(T), Some(0), "{}", sipp.messages());
}

/// An inbound call (sipp dials the gateway) is streamed to `inbound_media_stream_url` at its
/// answer, with no API call; sipp's BYE ends the stream with `stop`.
#[tokio::test]
async fn inbound_calls_stream_to_the_configured_agent() {
    let mut agent = Agent::start().await;
    let gw = Gateway::start(&[("inbound_media_stream_url", agent.url.clone())]).await;
    let hangs_up = common::SIPP_HANGS_UP;
    let mut sipp = Sipp::uac(
        "uac_inbound.xml",
        gw.sip_port,
        &[
            ("USER", "agent".to_string()),
            ("END_BLOCK", hangs_up.to_string()),
            ("END", "hangs up".to_string()),
        ],
    );
    let mut conn = agent.accept().await;
    assert_eq!(conn.json().await["event"], "connected");
    let st = conn.json().await;
    let call_id = st["start"]["callSid"].as_str().unwrap().to_string();
    let call = gw.call(&call_id).await;
    assert_eq!(call["direction"], "inbound", "{call}");
    assert_eq!(st["start"]["tracks"], json!(["inbound"]));
    let heard = media(&mut conn, 75).await;
    let share = tone_share(&ulaw_of(&heard[25..]), 8000, 440.0);
    assert!(share > 0.5, "the caller's 440 Hz: {share}");
    let (_, stop) = conn.event("stop").await;
    assert_eq!(stop["stop"]["callSid"], call_id.as_str());
    assert_eq!(sipp.wait(T), Some(0), "{}", sipp.messages());
    let info = wait_stream(&gw, &call_id, "STOPPED").await;
    assert_eq!(info["bidirectional"], true, "{info}");
}

/// wss:// with rustls: the gateway verifies the agent's certificate against the system
/// roots (here the test's own CA through `SSL_CERT_FILE`) and streams over TLS; a server
/// whose certificate it cannot verify fails with the reason and the call goes on.
#[tokio::test]
async fn wss_streams_verify_the_server_certificate() {
    let (mut agent, pem) = Agent::start_tls().await;
    let dir = common::tempdir();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, pem).unwrap();
    let gw = Gateway::start_with_env(
        &[
            ("media_stream_reconnect_max_attempts", "1".into()),
            ("media_stream_reconnect_initial_ms", "50".into()),
        ],
        &[("SSL_CERT_FILE", ca.display().to_string())],
    )
    .await;
    let mut sipp = Sipp::uas("uas_pcmu_stream.xml", "udp", false);
    let (s, call) = gw
        .post_json("/call/startup", startup_body("ag5", sipp.port, "udp"))
        .await;
    assert_eq!(s, 200, "{call}");
    gw.wait_status("ag5", &["ESTABLISHED"], T).await;
    let (s, v) = gw
        .post_json(
            "/call/stream/startup",
            json!({"callId": "ag5", "url": agent.url}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let mut conn = agent.accept().await;
    assert_eq!(conn.json().await["event"], "connected");
    assert_eq!(conn.json().await["start"]["callSid"], "ag5");
    let heard = media(&mut conn, 50).await;
    assert!(tone_share(&ulaw_of(&heard[10..]), 8000, 440.0) > 0.5);
    let (s, _) = gw
        .post_json("/call/stream/stop", json!({"callId": "ag5"}))
        .await;
    assert_eq!(s, 200);
    wait_stream(&gw, "ag5", "STOPPED").await;

    // A server with a certificate nobody vouches for: the stream fails, the call goes on.
    let (untrusted, _) = Agent::start_tls().await;
    let (s, v) = gw
        .post_json(
            "/call/stream/startup",
            json!({"callId": "ag5", "url": untrusted.url}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let sid = v["streamSid"].as_str().unwrap().to_string();
    let deadline = Instant::now() + T;
    let failed = loop {
        let (_, f) = gw
            .post_json("/call/stream/find", json!({"streamSid": sid}))
            .await;
        if f[0]["status"] == "FAILED" {
            break f[0].clone();
        }
        assert!(Instant::now() < deadline, "{f}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let reason = failed["reason"].as_str().unwrap_or("").to_ascii_lowercase();
    assert!(reason.contains("certificate"), "{failed}");
    assert_eq!(gw.call("ag5").await["status"], "ESTABLISHED");
    let (s, _) = gw
        .post_json("/call/terminate", json!({"callId": "ag5"}))
        .await;
    assert_eq!(s, 200);
    assert_eq!(sipp.wait(T), Some(0), "{}", sipp.messages());
}

/// A two-party call: `track: both` of the caller's leg carries the caller's voice as
/// `inbound` and the callee's (what the caller hears) as `outbound`; agent audio for both
/// legs at once is refused with the reason.
#[tokio::test]
async fn a_two_party_call_streams_both_parties_with_their_track_labels() {
    let gw = Gateway::start(&[]).await;
    let alice = RawUas::start("PCMU", 440.0).await;
    let bob = RawUas::start("PCMA", 1000.0).await;
    let mut agent = Agent::start().await;
    let (s, v) = gw
        .post_json(
            "/call/startup",
            json!({"callId": "ag6", "caller": format!("sip:alice@127.0.0.1:{}", alice.port),
                "callee": format!("sip:bob@127.0.0.1:{}", bob.port), "sipLogin": "gw",
                "sipDomain": "127.0.0.1", "sipRegisterRequired": "false"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    gw.wait_status("ag6", &["ESTABLISHED"], T).await;
    let (s, e) = gw
        .post_json(
            "/call/stream/startup",
            json!({"callId": "ag6", "url": agent.url, "leg": "both"}),
        )
        .await;
    assert_eq!(s, 400, "{e}");
    assert!(e.to_string().contains("bidirectional"), "{e}");
    let (s, e) = gw
        .post_json(
            "/call/stream/startup",
            json!({"callId": "ag6", "url": agent.url, "bidirectional": false, "format": "raw", "track": "both"}),
        )
        .await;
    assert_eq!(s, 400, "raw carries one track: {e}");
    let (s, v) = gw
        .post_json(
            "/call/stream/startup",
            json!({"callId": "ag6", "url": agent.url, "leg": "caller", "track": "both", "bidirectional": false}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let mut conn = agent.accept().await;
    assert_eq!(conn.json().await["event"], "connected");
    let st = conn.json().await;
    assert_eq!(st["start"]["tracks"], json!(["inbound", "outbound"]));
    let (mut inbound, mut outbound) = (Vec::new(), Vec::new());
    while inbound.len() < 60 || outbound.len() < 60 {
        let m = conn.json().await;
        if m["event"] != "media" {
            continue;
        }
        match m["media"]["track"].as_str() {
            Some("inbound") => inbound.push(m),
            Some("outbound") => outbound.push(m),
            other => panic!("track {other:?}: {m}"),
        }
    }
    let caller = tone_share(&ulaw_of(&inbound[20..]), 8000, 440.0);
    let callee = tone_share(&ulaw_of(&outbound[20..]), 8000, 1000.0);
    assert!(
        caller > 0.5 && callee > 0.5,
        "inbound is the caller's 440 Hz ({caller}), outbound the callee's 1 kHz ({callee})"
    );
    let (s, _) = gw
        .post_json("/call/terminate", json!({"callId": "ag6"}))
        .await;
    assert_eq!(s, 200);
    conn.event("stop").await;
}

/// An agent server that stops reading: the gateway's send queue (`media_stream_send_queue_ms`)
/// drops its oldest audio, counted, and the call's media goes on untouched; when the server
/// reads again it gets the newest audio, not a backlog.
#[tokio::test]
async fn a_server_that_stops_reading_loses_the_oldest_audio_and_the_call_goes_on() {
    let gw = Gateway::start(&[("media_stream_send_queue_ms", "200".into())]).await;
    let mut sipp = Sipp::uas("uas_pcmu_stream.xml", "udp", false);
    // A small receive buffer, so that the socket fills in a second or two, not minutes.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = sock.listen(1).unwrap();
    let url = format!("ws://{}/slow", listener.local_addr().unwrap());
    let mut body = startup_body("slow1", sipp.port, "udp");
    body["mediaStreamUrl"] = json!(url);
    body["mediaStream"] = json!({"bidirectional": false});
    let (s, call) = gw.post_json("/call/startup", body).await;
    assert_eq!(s, 200, "{call}");
    let (tcp, _) = tokio::time::timeout(T, listener.accept())
        .await
        .unwrap()
        .unwrap();
    let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
    // Read until the first media message.
    loop {
        let m = tokio::time::timeout(T, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if matches!(&m, Message::Text(t) if t.as_str().contains(r#""event":"media""#)) {
            break;
        }
    }

    // The server reads nothing: once the kernel's buffers (ours about 3 s) and the 200 ms
    // queue are full, the oldest audio is dropped, a second's worth within a few seconds.
    let rx_before = gw.call("slow1").await["legs"][0]["tracks"][0]["packetsReceived"]
        .as_u64()
        .unwrap();
    let paused = Instant::now();
    let info = loop {
        let info = stream_of(&gw, "slow1").await;
        if info["framesDropped"].as_u64().unwrap() >= 50 {
            break info;
        }
        assert!(
            paused.elapsed() < Duration::from_secs(10),
            "audio the server does not read is dropped: {info}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(info["status"], "STREAMING", "{info}");
    let call = gw.call("slow1").await;
    assert_eq!(call["status"], "ESTABLISHED", "{call}");
    let rx_after = call["legs"][0]["tracks"][0]["packetsReceived"]
        .as_u64()
        .unwrap();
    let expected = (paused.elapsed().as_secs_f64() * 50.0 * 0.8) as u64;
    assert!(
        rx_after - rx_before >= expected,
        "the call's RTP went on at 50 pps: {rx_before} -> {rx_after} in {:?}",
        paused.elapsed()
    );

    // Reading again: what was kept (at most the queue) comes, then live audio; the
    // chunk numbers jump over what was dropped.
    let started = Instant::now();
    let mut chunks = Vec::new();
    while started.elapsed() < Duration::from_secs(3) {
        let m = tokio::time::timeout(T, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let Message::Text(t) = m {
            let v: Value = serde_json::from_str(t.as_str()).unwrap();
            if v["event"] == "media" {
                chunks.push(
                    v["media"]["chunk"]
                        .as_str()
                        .unwrap()
                        .parse::<u64>()
                        .unwrap(),
                );
            }
        }
    }
    assert!(
        chunks.windows(2).any(|w| w[1] > w[0] + 1),
        "a gap where audio was dropped: {chunks:?}"
    );
    assert!(
        chunks.len() >= 100,
        "live audio again: {} frames",
        chunks.len()
    );
    let (s, _) = gw
        .post_json("/call/terminate", json!({"callId": "slow1"}))
        .await;
    assert_eq!(s, 200);
    gw.wait_status("slow1", &["FINISH"], T).await;
    assert_eq!(sipp.wait(T), Some(0), "{}", sipp.messages());
}
