//! SRTP with SDES keys (RFC 4568) on 127.0.0.1: a baresip softphone with `mediaenc=srtp-mand`
//! answers an SRTP call from the gateway and its tone reaches the stream decrypted; a peer
//! that answers without crypto fails a mandatory call; a peer that encrypts with another key
//! than the one it declared gets its packets dropped as authentication failures.
mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{tone_share, Baresip, Gateway, Kamailio, RawUas, Sipp};
use serde_json::{json, Value};
use sipstream::rtp::srtp::{CryptoAttribute, SdesKey, SrtpStream, Suite};
use tokio::net::UdpSocket;

const T: Duration = Duration::from_secs(15);

fn track(call: &Value) -> &Value {
    &call["legs"][0]["tracks"][0]
}

/// baresip (libre's SRTP) as the callee, RTP/SAVP required on its side; the gateway calls it
/// through kamailio with `srtp: mandatory`. Its 440 Hz reaches the stream: a fork of the
/// callee leg to a plain-RTP peer hears it. No key shows in the call object or the logs.
#[tokio::test]
async fn mandatory_srtp_call_to_baresip_decrypts_its_tone() {
    let mut kam = Kamailio::start_phones();
    let phone = Baresip::start_srtp("1001", kam.port, 440, "srtp-mand");
    let log = kam.wait_log("REGISTER-OK 1001", T);
    assert!(
        log.contains("REGISTER-OK 1001"),
        "{log}\n--- baresip ---\n{}",
        phone.log()
    );
    let sounds = common::tempdir();
    std::fs::write(sounds.path().join("tone.wav"), wav_1khz(6)).unwrap();
    let gw = Gateway::start(&[("sound_dir", sounds.path().display().to_string())]).await;
    let body = json!({
        "callId": "sr1", "callee": "1001", "toStream": "sr1", "srtp": "mandatory",
        "sipLogin": "gw", "sipPassword": "gw-Pa55", "sipDomain": "sipstream.test",
        "sipOutboundProxy": "127.0.0.1", "sipPort": kam.port,
    });
    let (s, call) = gw.post_json("/call/startup", body).await;
    assert_eq!(s, 200, "{call}");
    assert_eq!(call["srtp"], "mandatory", "{call}");
    let call = gw.wait_status("sr1", &["ESTABLISHED"], T).await;
    assert!(
        matches!(
            track(&call)["srtp"].as_str(),
            Some("AES_CM_128_HMAC_SHA1_80" | "AES_CM_128_HMAC_SHA1_32")
        ),
        "{call}\n--- baresip ---\n{}",
        phone.log()
    );

    // The callee's media, decrypted by the gateway, forked to a plain-RTP listener.
    let fork = RawUas::start("PCMU", 1900.0).await;
    let (s, v) = gw
        .post_json(
            "/media/send_to_uri",
            json!({"callId": "sr1", "uri": format!("sip:rec@127.0.0.1:{}", fork.port), "leg": "callee"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let deadline = Instant::now() + T;
    let share = loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let packets = fork.heard_timed(0);
        let heard: Vec<i16> = packets
            .iter()
            .skip(packets.len().saturating_sub(40))
            .flat_map(|(_, p)| p.iter().copied())
            .collect();
        let share = tone_share(&heard, 8000, 440.0);
        if (heard.len() >= 4000 && share > 0.8) || Instant::now() > deadline {
            break share;
        }
    };
    assert!(
        share > 0.8,
        "the stream carries baresip's 440 Hz: share {share}, fork heard {} packets\n{}\n--- baresip ---\n{}",
        fork.heard_timed(0).len(),
        gw.call("sr1").await,
        phone.log()
    );

    // What we send, baresip decrypts: it hears a 1 kHz sound played into the call.
    let (s, v) = gw
        .post_json(
            "/call/inject_sound",
            json!({"callId": "sr1", "soundFile": "tone.wav"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let deadline = Instant::now() + T;
    let heard = loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (pcm, rate) = phone.heard();
        let n = rate as usize;
        let share = if pcm.len() >= n {
            tone_share(&pcm[pcm.len() - n..], rate, 1000.0)
        } else {
            0.0
        };
        if share > 0.5 || Instant::now() > deadline {
            break share;
        }
    };
    assert!(heard > 0.5, "baresip hears our 1 kHz: share {heard}");

    let call = gw.call("sr1").await;
    let t = track(&call);
    assert!(t["packetsReceived"].as_u64().unwrap() > 50, "{call}");
    assert!(t["packetsSent"].as_u64().unwrap() > 50, "{call}");
    // baresip 1.0 sends one RTCP APP packet (16 bytes) in the clear as the stream starts,
    // before its SRTCP runs: it fails authentication and is counted. Nothing else may.
    let failures = t["srtpAuthFailures"].as_u64().unwrap();
    assert!(failures <= 2, "{call}");
    let (s, _) = gw
        .post_json("/call/terminate", json!({"callId": "sr1"}))
        .await;
    assert_eq!(s, 200);
    gw.wait_status("sr1", &["FINISH"], T).await;
    let text = call.to_string();
    assert!(!text.contains("inline"), "{text}");
    let logs = gw.logs();
    assert!(!logs.contains("inline:"), "an SDES key in the logs");
}

/// 16-bit mono WAV at 8 kHz: `seconds` of 1 kHz.
fn wav_1khz(seconds: u32) -> Vec<u8> {
    let n = 8000 * seconds;
    let mut out = Vec::new();
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + n * 2).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&8000u32.to_le_bytes());
    out.extend_from_slice(&16000u32.to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&16u16.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&(n * 2).to_le_bytes());
    for i in 0..n {
        let x = (f64::from(i) * 2.0 * std::f64::consts::PI * 1000.0 / 8000.0).sin();
        out.extend_from_slice(&((x * 12000.0) as i16).to_le_bytes());
    }
    out
}

/// `srtp: mandatory` toward a callee (sipp) that answers RTP/AVP without a=crypto: the call
/// fails with 488 and a reason that says why; no media runs in the clear.
#[tokio::test]
async fn mandatory_srtp_fails_when_the_answer_has_no_crypto() {
    let gw = Gateway::start(&[]).await;
    let sipp = Sipp::uas("uas_pcmu_stream.xml", "udp", false);
    let mut body = common::startup_body("sr2", sipp.port, "udp");
    body["srtp"] = json!("mandatory");
    let (s, v) = gw.post_json("/call/startup", body).await;
    assert_eq!(s, 200, "{v}");
    let call = gw.wait_status("sr2", &["FAILED"], T).await;
    assert_eq!(call["sipStatus"], 488, "{call}");
    let reason = call["reason"].as_str().unwrap_or("");
    assert!(reason.contains("SRTP mandatory"), "{call}");
    assert!(
        call["legs"][0]["tracks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["packetsSent"] == 0 && t["packetsReceived"] == 0),
        "{call}"
    );
}

/// A bad `srtp` value is a 400 naming the field.
#[tokio::test]
async fn srtp_field_is_validated() {
    let gw = Gateway::start(&[]).await;
    let (s, v) = gw
        .post_json(
            "/call/startup",
            json!({"callee": "1", "sipDomain": "127.0.0.1", "srtp": "sdes"}),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    assert!(v["message"].as_str().unwrap().starts_with("srtp:"), "{v}");
}

/// A minimal UAS on UDP: answers the INVITE with RTP/SAVP and `declared` in a=crypto, then
/// sends 440 Hz PCMU as SRTP protected with `sent` to the gateway's RTP port.
async fn sdes_uas(declared: SdesKey, sent: SdesKey) -> (u16, tokio::task::JoinHandle<()>) {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let port = sock.local_addr().unwrap().port();
    let rtp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let task = tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        let mut sender: Option<tokio::task::JoinHandle<()>> = None;
        let mut rtp = Some(rtp);
        loop {
            let Ok((n, from)) = sock.recv_from(&mut buf).await else {
                return;
            };
            let msg = String::from_utf8_lossy(&buf[..n]).to_string();
            let method = msg.split(' ').next().unwrap_or("");
            if method == "ACK" || msg.starts_with("SIP/2.0") {
                continue;
            }
            let head = msg.split("\r\n\r\n").next().unwrap_or("");
            let mut resp = String::from("SIP/2.0 200 OK\r\n");
            for line in head.lines().skip(1) {
                let l = line.to_ascii_lowercase();
                if l.starts_with("via:")
                    || l.starts_with("from:")
                    || l.starts_with("call-id:")
                    || l.starts_with("cseq:")
                {
                    resp.push_str(line);
                    resp.push_str("\r\n");
                } else if l.starts_with("to:") {
                    resp.push_str(line);
                    if !l.contains("tag=") {
                        resp.push_str(";tag=uas1");
                    }
                    resp.push_str("\r\n");
                }
            }
            let body = if method == "INVITE" {
                let sdp = msg.split("\r\n\r\n").nth(1).unwrap_or("");
                let port: u16 = sdp
                    .lines()
                    .find_map(|l| l.strip_prefix("m=audio "))
                    .and_then(|r| r.split(' ').next())
                    .and_then(|p| p.parse().ok())
                    .unwrap();
                let gw_rtp = SocketAddr::from(([127, 0, 0, 1], port));
                let rtp_sock = rtp.take().unwrap();
                let local = rtp_sock.local_addr().unwrap().port();
                let attr = CryptoAttribute {
                    tag: 1,
                    suite: Suite::AesCm128HmacSha1_80,
                    key: declared.clone(),
                };
                let sent = sent.clone();
                sender = Some(tokio::spawn(async move {
                    let mut srtp =
                        SrtpStream::new(Suite::AesCm128HmacSha1_80, &sent, &sent).unwrap();
                    let mut seq = 1u16;
                    let mut tick = tokio::time::interval(Duration::from_millis(20));
                    loop {
                        tick.tick().await;
                        let mut pkt = vec![0x80, 0, 0, 0, 0, 0, 0, 0, 0x12, 0x34, 0x56, 0x78];
                        pkt[2..4].copy_from_slice(&seq.to_be_bytes());
                        pkt[4..8].copy_from_slice(&(u32::from(seq) * 160).to_be_bytes());
                        pkt.extend(std::iter::repeat_n(0x55u8, 160));
                        seq = seq.wrapping_add(1);
                        if let Some(p) = srtp.protect_rtp(&pkt) {
                            let _ = rtp_sock.send_to(&p, gw_rtp).await;
                        }
                    }
                }));
                format!(
                    "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
                     m=audio {local} RTP/SAVP 0\r\na=rtpmap:0 PCMU/8000\r\n\
                     a=crypto:{}\r\na=sendrecv\r\n",
                    attr.to_sdp()
                )
            } else {
                if let Some(s) = sender.take() {
                    s.abort();
                }
                String::new()
            };
            if !body.is_empty() {
                resp.push_str(&format!(
                    "Contact: <sip:uas@127.0.0.1:{port}>\r\nContent-Type: application/sdp\r\n"
                ));
            }
            resp.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
            let _ = sock.send_to(resp.as_bytes(), from).await;
        }
    });
    (port, task)
}

/// The peer declares one key and encrypts with another: every packet fails SRTP
/// authentication at the gateway, is counted, and none reaches the stream. With the key it
/// declared, the same peer's packets are taken.
#[tokio::test]
async fn packets_under_a_wrong_key_fail_authentication() {
    let gw = Gateway::start(&[]).await;
    for (id, same) in [("sr3", false), ("sr4", true)] {
        let declared = SdesKey::random();
        let sent = if same {
            declared.clone()
        } else {
            SdesKey::random()
        };
        let (port, uas) = sdes_uas(declared, sent).await;
        let mut body = common::startup_body(id, port, "udp");
        body["srtp"] = json!("mandatory");
        let (s, v) = gw.post_json("/call/startup", body).await;
        assert_eq!(s, 200, "{v}");
        gw.wait_status(id, &["ESTABLISHED"], T).await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let call = gw.call(id).await;
        let t = track(&call);
        assert_eq!(t["srtp"], "AES_CM_128_HMAC_SHA1_80", "{call}");
        let (received, failures) = (
            t["packetsReceived"].as_u64().unwrap(),
            t["srtpAuthFailures"].as_u64().unwrap(),
        );
        if same {
            assert!(received > 40 && failures == 0, "{call}");
        } else {
            assert!(received == 0 && failures > 40, "{call}");
        }
        let (s, _) = gw.post_json("/call/terminate", json!({"callId": id})).await;
        assert_eq!(s, 200);
        gw.wait_status(id, &["FINISH"], T).await;
        uas.abort();
    }
}

/// Inbound calls follow `sip_srtp`: a plain RTP/AVP offer gets 488 when SRTP is mandatory,
/// and is answered in the clear (no crypto line in our answer) when it is optional.
#[tokio::test]
async fn inbound_plain_offers_under_sip_srtp() {
    let gw = Gateway::start(&[("sip_srtp", "mandatory".into())]).await;
    match common::RawUac::call(gw.sip_port, "alice", "", 440.0).await {
        Err(status) => assert_eq!(status, 488),
        Ok(_) => panic!("a plain offer was answered under sip_srtp=mandatory"),
    }
    let gw = Gateway::start(&[("sip_srtp", "optional".into())]).await;
    let uac = common::RawUac::call(gw.sip_port, "alice", "", 440.0)
        .await
        .unwrap_or_else(|s| panic!("refused with {s}"));
    let deadline = Instant::now() + T;
    let call = loop {
        let (_, all) = gw.post_json("/call/find_all", json!({})).await;
        if let Some(c) = all
            .as_array()
            .and_then(|a| a.iter().find(|c| c["status"] == "ESTABLISHED"))
        {
            break c.clone();
        }
        assert!(Instant::now() < deadline, "{all}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(call["srtp"], "optional", "{call}");
    assert!(track(&call).get("srtp").is_none(), "{call}");
    uac.bye().await;
}
