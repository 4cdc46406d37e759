//! Examples for the API document: one per schema that a method takes or answers, put on
//! every operation by [`super::openapi::api`] (request body, and the success answer: an
//! object, or a list of one). The answers are what a gateway answered to a sipp call (the
//! call, stream and recording ones are copied from real answers). Tests check each
//! against its schema, and each request example against the handler's own parser.

use serde_json::{json, Value};

/// The example of the schema `name`.
pub fn schema_example(name: &str) -> Option<Value> {
    Some(match name {
        // Requests.
        "CallStartupRequest" => json!({
            "callId": "c1",
            "callee": "sip:10005@pbx.example.com",
            "sipLogin": "alice",
            "sipAuthenticationName": "alice",
            "sipPassword": "s3cret",
            "sipDomain": "pbx.example.com",
            "sipRegisterRequired": true,
            "toStream": "call_stream1",
            "record": true
        }),
        "CallIdRequest" => json!({"callId": "c1"}),
        "CallFilter" => json!({"status": "ESTABLISHED"}),
        "HoldRequest" => json!({"callId": "c1", "leg": "callee"}),
        "DtmfRequest" => json!({"callId": "c1", "dtmf": "1234#", "type": "RFC2833"}),
        "TransferRequest" => json!({"callId": "c1", "target": "sip:reception@pbx.example.com"}),
        "InjectSoundRequest" => json!({"callId": "c1", "soundFile": "welcome.wav", "loop": false}),
        "InjectStreamRequest" => json!({"callId": "c1", "streamName": "lobby-cam"}),
        "InjectionFilter" => json!({"callId": "c1"}),
        "MediaStreamStartupRequest" => json!({
            "callId": "c1",
            "url": "wss://agent.example.com/media",
            "leg": "callee",
            "track": "inbound",
            "format": "twilio",
            "bidirectional": true,
            "headers": {"Authorization": "Bearer agent-token"},
            "customParameters": {"tenant": "acme"}
        }),
        "MediaStreamFilter" | "MediaStreamStopRequest" => json!({"callId": "c1"}),
        "MediaExchangeRequest" => json!({
            "callId": "c1",
            "uri": "sip:supervisor@pbx.example.com",
            "leg": "both",
            "mix": true
        }),
        "MediaFindRequest" => json!({"callId": "c1"}),
        "MediaTerminateRequest" => json!({"callId": "c1"}),
        "PushStartupRequest" => json!({
            "streamName": "call_stream1",
            "rtmpUrl": "rtmp://rtmp.example.com:1935/live"
        }),
        "PushFilter" => json!({"streamName": "call_stream1"}),
        "MediaSessionIdRequest" => {
            json!({"mediaSessionId": "6f1c2d0e-8a4b-4c1d-9e2f-3a4b5c6d7e8f"})
        }
        "PullStartupRequest" => json!({
            "uri": "rtsp://viewer:secret@10.0.0.5:554/stream1",
            "streamName": "lobby-cam"
        }),
        "PullKey" => json!({"streamName": "lobby-cam"}),
        "SiprecStartRequest" => json!({
            "callId": "c1",
            "srs": "sip:srs1.example.com, sip:srs2.example.com;transport=tcp",
            "instance": "compliance"
        }),
        "SiprecControlRequest" => json!({"callId": "c1", "instance": "compliance"}),
        "StreamName" => json!({"name": "call_stream1"}),
        "RecordTarget" => json!({"name": "call_stream1"}),
        "TokenRequest" => json!({"name": "call_stream1", "ttlSeconds": 3600}),
        "TokenInfo" => json!({
            "name": "call_stream1",
            "token": "1796675509.4f1c0d8e3b2a19c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3",
            "expiresAt": 1796675509u64,
            "whepUrl": "/whep/call_stream1",
            "hlsUrl": "/hls/call_stream1/index.m3u8?token=1796675509.4f1c0d8e3b2a19c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3",
            "playerUrl": "/player.html?stream=call_stream1&token=1796675509.4f1c0d8e3b2a19c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3",
            "hlsPlayerUrl": "/hls.html?stream=call_stream1&token=1796675509.4f1c0d8e3b2a19c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3"
        }),
        // Answers.
        "CallInfo" => call_info(),
        "CallView" => {
            let mut v = call_info();
            v["injections"] = json!([]);
            v["exchanges"] = json!([]);
            v
        }
        "StreamInfo" => json!({
            "name": "call_stream1",
            "callId": "c1",
            "createdAt": 1796671909282u64,
            "tracks": [{"id": 0, "kind": "audio", "leg": "callee", "codec": "PCMU",
                "clockRate": 8000, "channels": 1, "payloadType": 0, "packets": 91,
                "bytes": 14560, "lost": 0, "jitter": 0.39}],
            "readers": [{"id": 1, "kind": "recorder", "received": 90, "dropped": 0}],
            "status": "PUBLISHING"
        }),
        "RecordingInfo" => json!({
            "fileName": "call_stream1-20261207-193151.mp4",
            "stream": "call_stream1",
            "callId": "c1",
            "sipCallId": "bnh0qcor8j7wbm99xv6g@127.0.0.1",
            "mediaSessionId": "rec-0yq4yqc6jbr2",
            "participants": ["sip:alice@pbx.example.com", "sip:10005@pbx.example.com"],
            "state": "recording",
            "error": null,
            "startedAt": "2026-12-07T19:31:51.318497341Z",
            "endedAt": null,
            "durationMs": 12000,
            "sizeBytes": 48213,
            "codecs": ["opus (from PCMU)"],
            "endReason": null,
            "fragmentsWritten": 12,
            "fragmentsDropped": 0,
            "unitsDropped": 0
        }),
        "InjectionInfo" => json!({
            "injectionId": "inj-4k2j9xq0m1ab",
            "callId": "c1",
            "leg": "callee",
            "kind": "sound",
            "source": "welcome.wav",
            "loop": false,
            "status": "PLAYING",
            "createdAt": 1796671912000u64
        }),
        "ExchangeInfo" => json!({
            "exchangeId": "ex-8r1m2q",
            "callId": "c1",
            "kind": "send_to_uri",
            "leg": "both",
            "uri": "sip:supervisor@pbx.example.com",
            "mix": true,
            "nohold": false,
            "held": [],
            "status": "ACTIVE",
            "sipStatus": 200,
            "createdAt": 1796671915000u64
        }),
        "MediaStreamInfo" => json!({
            "streamSid": "MZ18ad3ab5a668481ce02b83e7395059f0",
            "callId": "c1",
            "url": "wss://agent.example.com/media",
            "leg": "callee",
            "track": "inbound",
            "format": "twilio",
            "codec": "PCMU",
            "sampleRate": 8000,
            "bidirectional": true,
            "status": "STREAMING",
            "reconnects": 0,
            "framesSent": 250,
            "framesDropped": 0,
            "framesPlayed": 120,
            "audioRefusedMs": 0,
            "marks": 2,
            "badMessages": 0,
            "createdAt": 1796671910000u64
        }),
        "PushInfo" => json!({
            "mediaSessionId": "6f1c2d0e-8a4b-4c1d-9e2f-3a4b5c6d7e8f",
            "streamName": "call_stream1",
            "rtmpUrl": "rtmp://rtmp.example.com:1935/live/call_stream1",
            "status": "PUBLISHING",
            "createdAt": 1796671920000u64,
            "reconnects": 0,
            "audioCodec": "aac",
            "video": false,
            "audioFrames": 470,
            "videoFrames": 0,
            "bytesSent": 95231,
            "dropped": 0
        }),
        "PullInfo" => json!({
            "mediaSessionId": "3nr9baiefzqkiz1o",
            "streamName": "lobby-cam",
            "uri": "rtsp://10.0.0.5:554/stream1",
            "transport": "tcp",
            "status": "PLAYING",
            "tracks": ["PCMU/8000", "H264/90000"],
            "createdAt": 1796671222755u64,
            "reconnects": 0,
            "packets": 1520,
            "bytes": 1210044,
            "lost": 0
        }),
        "SiprecInfo" => json!({
            "callId": "c1",
            "instance": "compliance",
            "state": "RECORDING",
            "sessionId": "q2NSNlXrT1W3cH7yGTLkQg==",
            "since": 1796671930000u64,
            "server": "sip:srs2.example.com;transport=tcp",
            "sipCallId": "r7q1w0e9t8y7u6i5o4p3@127.0.0.1",
            "packetsForked": 1500,
            "attempts": [{"server": "sip:srs1.example.com", "reason": "Service Unavailable",
                "sipStatus": 503}]
        }),
        "Health" => json!({
            "status": "ok",
            "version": env!("CARGO_PKG_VERSION"),
            "activeCalls": 1,
            "streams": 1,
            "rtpPortsInUse": 2,
            "rtpPortsCapacity": 1000,
            "sip": {"received": 12, "malformed": 0, "strayResponses": 0,
                "retransmissionsAbsorbed": 0, "clientTransactions": 1, "serverTransactions": 0}
        }),
        "WebrtcConfigBody" => json!({"iceServers": [{"urls": ["stun:stun.example.com:3478"]}]}),
        _ => return None,
    })
}

fn call_info() -> Value {
    json!({
        "callId": "c1",
        "direction": "outbound",
        "callee": "sip:10005@pbx.example.com",
        "sipLogin": "alice",
        "sipDomain": "pbx.example.com",
        "sipOutboundProxy": "pbx.example.com",
        "sipPort": 5060,
        "sipTransport": "udp",
        "srtp": "off",
        "sipRegisterRequired": true,
        "hasAudio": true,
        "hasVideo": false,
        "toStream": "call_stream1",
        "record": true,
        "status": "ESTABLISHED",
        "sipStatus": 200,
        "reason": null,
        "sipCallId": "bnh0qcor8j7wbm99xv6g@127.0.0.1",
        "createdAt": 1796671909282u64,
        "establishedAt": 1796671909495u64,
        "endedAt": null,
        "legs": [{
            "name": "callee",
            "uri": "sip:10005@pbx.example.com",
            "status": "ESTABLISHED",
            "sipCallId": "bnh0qcor8j7wbm99xv6g@127.0.0.1",
            "tracks": [{"kind": "audio", "codec": "PCMU", "payloadType": 0,
                "localRtpPort": 31000, "remoteRtp": "203.0.113.7:16000",
                "direction": "sendrecv", "packetsReceived": 90, "packetsSent": 91,
                "invalidPackets": 0, "srtpAuthFailures": 0}]
        }]
    })
}

/// Examples of the non-JSON bodies, by operation.
pub fn text_example(method: &str, path: &str, request: bool) -> Option<&'static str> {
    Some(match (method, path, request) {
        ("get", "/metrics", false) => {
            "# TYPE sipstream_calls gauge\nsipstream_calls{status=\"ESTABLISHED\"} 1\n\
             # TYPE sipstream_calls_started counter\nsipstream_calls_started_total 1\n# EOF\n"
        }
        ("post", "/whep/{stream}", true) => {
            "v=0\r\no=- 4215 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\n\
             m=audio 9 UDP/TLS/RTP/SAVPF 111 0\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=recvonly\r\n\
             a=rtpmap:111 opus/48000/2\r\na=rtpmap:0 PCMU/8000\r\na=ice-ufrag:Xy12\r\n\
             a=ice-pwd:4q8kq0m6a1r0o0p2v6b8z9x7\r\na=fingerprint:sha-256 6B:8B:...\r\na=setup:actpass\r\n"
        }
        ("post", "/whep/{stream}", false) => {
            "v=0\r\no=- 1796671 2 IN IP4 127.0.0.1\r\ns=sipstream\r\nt=0 0\r\na=group:BUNDLE 0\r\n\
             m=audio 33000 UDP/TLS/RTP/SAVPF 0\r\nc=IN IP4 127.0.0.1\r\na=mid:0\r\na=sendonly\r\n\
             a=rtpmap:0 PCMU/8000\r\na=candidate:1 1 udp 2130706431 127.0.0.1 33000 typ host\r\n"
        }
        _ => return None,
    })
}
