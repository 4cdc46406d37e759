//! RFC 4475 torture tests for the tolerant SIP message layer (`sipstream::sip::message`),
//! plus robustness (truncation, mutation) and TCP framing tests over the same fixtures.

use rsip::prelude::*;
use sipstream::sip::message::{self, Frame, ParseErrorKind};

macro_rules! fixture {
    ($name:literal) => {
        (
            $name,
            include_bytes!(concat!("fixtures/rfc4475/", $name, ".dat")).as_slice(),
        )
    };
}

/// Messages RFC 4475 says a parser must accept.
const VALID: &[(&str, &[u8])] = &[
    fixture!("wsinv"),
    fixture!("esc01"),
    fixture!("escnull"),
    fixture!("lwsdisp"),
    fixture!("longreq"),
    fixture!("dblreq"),
    fixture!("semiuri"),
    fixture!("transports"),
    fixture!("mpart01"),
    fixture!("unreason"),
    fixture!("noreason"),
    fixture!("novelsc"),
    fixture!("unksm2"),
    fixture!("bext01"),
    fixture!("invut"),
    fixture!("regaut01"),
    fixture!("bcast"),
    fixture!("zeromf"),
    fixture!("cparam01"),
    fixture!("cparam02"),
    fixture!("regescrt"),
    fixture!("sdp01"),
    fixture!("inv2543"),
    // §3.2.1: syntactically valid; the transaction layer decides (400 or RFC 2543 matching).
    fixture!("badbranch"),
    // §3.1.2.12: a non-GMT Date may be ignored by an element that does not use Date.
    fixture!("baddate"),
];

/// Valid messages that rsip's types cannot represent. Each is an `Err` that carries what the
/// UAS needs for the answer RFC 4475 expects.
const VALID_BUT_ANSWERED: &[(&str, &[u8], u16)] = &[
    // §3.1.1.2 / §3.1.1.5: extension methods; rsip::Method has no Other variant. Answer 501.
    (
        "intmeth",
        include_bytes!("fixtures/rfc4475/intmeth.dat").as_slice(),
        501,
    ),
    (
        "esc02",
        include_bytes!("fixtures/rfc4475/esc02.dat").as_slice(),
        501,
    ),
    // §3.3.2: an opaque URI with an unknown scheme; rsip::Uri can only hold `scheme://`.
    // The RFC's expected UAS answer is 416 anyway.
    (
        "unkscm",
        include_bytes!("fixtures/rfc4475/unkscm.dat").as_slice(),
        416,
    ),
];

/// Messages RFC 4475 says must be rejected.
const INVALID: &[(&str, &[u8])] = &[
    fixture!("badinv01"),
    fixture!("clerr"),
    fixture!("ncl"),
    fixture!("scalar02"),
    fixture!("scalarlg"),
    fixture!("quotbal"),
    fixture!("ltgtruri"),
    fixture!("lwsruri"),
    fixture!("lwsstart"),
    fixture!("trws"),
    fixture!("escruri"),
    fixture!("regbadct"),
    fixture!("badaspec"),
    fixture!("baddn"),
    fixture!("badvers"),
    fixture!("mismatch01"),
    fixture!("mismatch02"),
    fixture!("bigcode"),
    fixture!("insuf"),
    fixture!("multi01"),
    fixture!("mcl01"),
];

fn all() -> impl Iterator<Item = (&'static str, &'static [u8])> {
    VALID
        .iter()
        .copied()
        .chain(INVALID.iter().copied())
        .chain(VALID_BUT_ANSWERED.iter().map(|(n, b, _)| (*n, *b)))
}

#[test]
fn every_fixture_is_classified() {
    assert_eq!(all().count(), 49);
}

#[test]
fn valid_messages_parse() {
    for (name, bytes) in VALID {
        let msg = message::parse(bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        // The helpers the UA relies on work on every accepted message.
        assert!(message::call_id(&msg).is_some(), "{name}: Call-ID");
        assert!(msg.via_header().is_ok(), "{name}: Via");
        assert!(
            msg.from_header().is_ok() && msg.to_header().is_ok(),
            "{name}: From/To"
        );
        // What we serialise parses again to the same message.
        let again = message::parse(&message::to_bytes(&msg))
            .unwrap_or_else(|e| panic!("{name} round trip: {e}"));
        assert_eq!(again.body(), msg.body(), "{name}: body");
        assert_eq!(
            message::to_bytes(&again),
            message::to_bytes(&msg),
            "{name}: bytes"
        );
    }
}

#[test]
fn valid_but_unrepresentable_messages_are_answerable() {
    for (name, bytes, code) in VALID_BUT_ANSWERED {
        let err = message::parse(bytes).expect_err(name);
        match (&err.kind, code) {
            (ParseErrorKind::UnsupportedMethod(_), 501)
            | (ParseErrorKind::UnsupportedUriScheme(_), 416) => {}
            other => panic!("{name}: unexpected {other:?}"),
        }
        let reply = err
            .reply(*code, "Answer")
            .unwrap_or_else(|| panic!("{name}: no reply"));
        let reply =
            message::parse(&reply).unwrap_or_else(|e| panic!("{name}: reply does not parse: {e}"));
        assert_eq!(message::call_id(&reply), Some(call_id_of(bytes)), "{name}");
    }
}

fn call_id_of(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let line = text
        .lines()
        .find(|l| l.starts_with("Call-ID:") || l.starts_with("i:"))
        .expect("fixture has a Call-ID");
    line.split_once(':')
        .map(|(_, v)| v.trim().to_owned())
        .unwrap_or_default()
}

#[test]
fn invalid_messages_are_rejected() {
    for (name, bytes) in INVALID {
        let err = match message::parse(bytes) {
            Ok(m) => panic!("{name}: accepted:\n{m}"),
            Err(e) => e,
        };
        // Every request is answered, responses never: the client matches the answer by its
        // top Via branch and CSeq, so even insuf (no From/To/Call-ID) and multi01 (two of
        // each) get one (RFC 4475 §3.3.1, §3.3.8).
        let is_response = bytes.starts_with(b"SIP/");
        if is_response {
            assert!(err.answer().is_none(), "{name}: answered");
        } else {
            // Headers are copied as received, so a broken Via (badinv01) stays broken.
            let reply = err.answer().unwrap_or_else(|| panic!("{name}: {err}"));
            let (code, reason) = err.status();
            let start = format!("SIP/2.0 {code} {reason}\r\n");
            assert!(reply.starts_with(start.as_bytes()), "{name}");
            assert!(reply.ends_with(b"Content-Length: 0\r\n\r\n"), "{name}");
            let reply = String::from_utf8_lossy(&reply);
            assert!(reply.contains("\r\nCSeq: "), "{name}: {reply}");
            match *name {
                "badvers" => assert_eq!(code, 505),
                "mismatch02" => assert_eq!(code, 501),
                // A 400's reason names the fault.
                _ => assert!(
                    code == 400 && reason.len() > "Bad Request ()".len(),
                    "{name}: {reason}"
                ),
            }
        }
    }
}

#[test]
fn rejections_name_the_reason() {
    let kind = |b: &[u8]| message::parse(b).map(|_| ()).unwrap_err().kind;
    let f = |n: &str| {
        INVALID
            .iter()
            .find(|(x, _)| *x == n)
            .map(|(_, b)| *b)
            .unwrap_or_default()
    };
    assert_eq!(
        kind(f("badvers")),
        ParseErrorKind::UnsupportedVersion("SIP/7.0".into())
    );
    assert!(matches!(
        kind(f("mismatch01")),
        ParseErrorKind::CSeqMismatch { .. }
    ));
    assert!(
        matches!(kind(f("mismatch02")), ParseErrorKind::UnsupportedMethod(m) if m == "NEWMETHOD")
    );
    assert_eq!(kind(f("mcl01")), ParseErrorKind::ConflictingContentLength);
    assert!(matches!(
        kind(f("clerr")),
        ParseErrorKind::BodyTooShort { .. }
    ));
    assert_eq!(kind(f("insuf")), ParseErrorKind::MissingHeader);
    assert_eq!(kind(f("multi01")), ParseErrorKind::DuplicateHeader);
    let e = message::parse(f("ncl")).unwrap_err();
    assert_eq!(e.header.as_deref(), Some("Content-Length"));
    assert!(e.to_string().contains("in header Content-Length"), "{e}");
}

#[test]
fn tortuous_invite_is_normalised() {
    let (_, bytes) = fixture!("wsinv");
    let msg = message::parse(bytes).unwrap();
    assert_eq!(message::from_tag(&msg).as_deref(), Some("98asjd8"));
    assert_eq!(message::to_tag(&msg).as_deref(), Some("1918181833n"));
    assert_eq!(message::cseq(&msg), Some((9, rsip::Method::Invite)));
    assert_eq!(message::top_via_branch(&msg).as_deref(), Some("390skdjuw"));
    let vias: Vec<_> = msg
        .headers()
        .iter()
        .filter(|h| matches!(h, rsip::Header::Via(_)))
        .collect();
    assert_eq!(vias.len(), 3, "v: a, b is split");
    assert_eq!(
        vias[1].to_string(),
        "Via: SIP/2.0/TCP spindle.example.com;branch=z9hG4bK9ikj8"
    );
    assert_eq!(msg.body().len(), 150);
    assert!(msg.contact_header().is_ok(), "m: is Contact");
}

#[test]
fn trailing_datagram_bytes_are_dropped() {
    let (_, bytes) = fixture!("dblreq");
    let msg = message::parse(bytes).unwrap();
    assert!(msg.body().is_empty());
    let (_, bytes) = fixture!("mpart01");
    let msg = message::parse(bytes).unwrap();
    assert!(msg.body().contains(&0), "binary body kept byte for byte");
    assert!(message::to_bytes(&msg).ends_with(msg.body()));
}

#[test]
fn request_uri_user_part_is_kept() {
    let (_, bytes) = fixture!("semiuri");
    let rsip::SipMessage::Request(req) = message::parse(bytes).unwrap() else {
        panic!("request expected")
    };
    assert_eq!(
        req.uri.to_string(),
        "sip:user;par=u%40example.net@example.com"
    );
}

/// Deterministic xorshift64: no proptest dependency.
struct XorShift(u64);
impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn truncation_and_mutation_never_panic() {
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    for (_, bytes) in all() {
        for cut in 0..=bytes.len() {
            let part = &bytes[..cut];
            let _ = message::parse(part);
            let _ = message::frame(part);
        }
        let mut copy = bytes.to_vec();
        for _ in 0..500 {
            copy.copy_from_slice(bytes);
            for _ in 0..1 + rng.next() % 3 {
                let at = (rng.next() % copy.len() as u64) as usize;
                copy[at] = rng.next() as u8;
            }
            if let Err(e) = message::parse(&copy) {
                let _ = e.reply(400, "Bad Request");
                let _ = e.to_string();
            }
            let _ = message::frame(&copy);
        }
    }
}

/// Stream copies of the fixtures that framing can handle: a Content-Length, and a body of
/// exactly that length (RFC 3261 §18.3: mandatory on streams).
fn stream_messages() -> Vec<Vec<u8>> {
    VALID
        .iter()
        .filter_map(|(_, b)| message::parse(b).ok())
        .map(|m| message::to_bytes(&m).to_vec())
        .collect()
}

#[test]
fn framing_reassembles_at_every_split() {
    for wire in stream_messages() {
        assert_eq!(message::frame(&wire), Frame::Message(wire.len()));
        for cut in 0..wire.len() {
            assert_eq!(
                message::frame(&wire[..cut]),
                Frame::Incomplete,
                "cut at {cut}"
            );
        }
    }
}

#[test]
fn framing_handles_back_to_back_and_keepalives() {
    let msgs = stream_messages();
    let mut stream = b"\r\n\r\n".to_vec();
    for m in &msgs {
        stream.extend_from_slice(m);
        stream.extend_from_slice(b"\r\n");
    }
    let mut pos = 0;
    let mut seen = Vec::new();
    let mut keepalives = 0;
    while pos < stream.len() {
        match message::frame(&stream[pos..]) {
            Frame::KeepAlive(n) => {
                keepalives += 1;
                pos += n;
            }
            Frame::Message(n) => {
                seen.push(message::parse(&stream[pos..pos + n]).unwrap());
                pos += n;
            }
            other => panic!("at {pos}: {other:?}"),
        }
    }
    assert_eq!(seen.len(), msgs.len());
    assert_eq!(keepalives, msgs.len() + 1);
}

#[test]
fn framing_rejects_what_it_cannot_bound() {
    let (_, inv2543) = fixture!("inv2543");
    assert!(
        matches!(message::frame(inv2543), Frame::Invalid(e) if e.kind == ParseErrorKind::MissingContentLength)
    );
    let (_, ncl) = fixture!("ncl");
    assert!(matches!(message::frame(ncl), Frame::Invalid(_)));
    let huge = vec![b'a'; message::MAX_HEADER_BLOCK + 1];
    assert!(
        matches!(message::frame(&huge), Frame::Invalid(e) if e.kind == ParseErrorKind::HeaderBlockTooLarge)
    );
}
