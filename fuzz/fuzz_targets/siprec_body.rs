//! What a SIPREC session reads. The gateway only builds the `multipart/mixed` INVITE body;
//! what comes in is the SRS's answer SDP (its `a=label` sections give where each recorded
//! stream goes), the SRS's re-offers (answered from our own SDP), the recorded call's
//! From/To name-addrs, and the caller's `/siprec/start` fields: participant and extension
//! XML blocks, extra headers and the SRS list. The same text is fed to each.
//!
//! Properties: nothing panics; a destination taken from an answer has a port; our answer to
//! a re-offer has one section per offered one and re-parses to itself; a metadata document
//! built from any accepted XML block or name-addr is well-formed XML in the RFC 7865
//! namespace, and the multipart body around it has exactly its three delimiters; accepted
//! headers and SRS URIs carry no CR, LF or spaces.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sipstream::sip::sdp::{self, Direction, SessionDescription};
use sipstream::siprec::body::{multipart, srs_destinations, srs_sdp};
use sipstream::siprec::metadata::{check_block, name_addr, Metadata, Participant, RECORDING_NS};
use sipstream::siprec::{parse_headers, parse_srs_list};

/// The labels `call/siprec.rs` gives the callee's and the caller's streams.
const LABELS: (&str, &str) = ("1", "2");

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let text = text.as_ref();

    // The SRS's answer (or re-offer), as `call/siprec.rs` reads it.
    if let Ok(answer) = SessionDescription::parse(text) {
        let codecs = [sdp::codec_pcmu(), sdp::codec_pcma(), sdp::codec_opus()];
        // Each recorded stream in its own codec (a two-party call's legs may differ).
        for callee in &codecs {
            for caller in &codecs {
                let (d1, d2) = srs_destinations(&answer, (callee, caller), LABELS);
                for dest in [d1, d2].into_iter().flatten() {
                    assert_ne!(dest.port(), 0, "a destination on port 0");
                }
                for dir in [Direction::SendOnly, Direction::Inactive] {
                    let ours = srs_sdp(
                        1,
                        2,
                        "192.0.2.1".parse().unwrap(),
                        (callee, caller),
                        (4000, 4002),
                        LABELS,
                        dir,
                    );
                    let ours = SessionDescription::parse(&ours).expect("our SRS offer parses");
                    let reply = sdp::answer(&ours, &answer, dir);
                    assert_eq!(reply.media.len(), answer.media.len());
                    let written = reply.to_string();
                    assert_eq!(
                        SessionDescription::parse(&written).as_ref(),
                        Ok(&reply),
                        "{written}"
                    );
                }
            }
        }
    }

    // Caller XML blocks (participants, group and session extensions) and a From/To
    // name-addr, put into the metadata document and the multipart body.
    let (name, aor) = name_addr(text);
    let mut docs = vec![metadata(
        Participant::Aor {
            aor: aor.clone(),
            name: name.clone(),
        },
        None,
        text,
    )];
    if let Ok(block) = check_block(text) {
        docs.push(metadata(Participant::Xml(block.clone()), Some(block), text));
    }
    for meta in docs {
        let xml = meta.to_xml();
        let doc = roxmltree::Document::parse(&xml)
            .unwrap_or_else(|e| panic!("metadata is not well-formed ({e}):\n{xml}"));
        assert_eq!(
            doc.root_element().tag_name().namespace(),
            Some(RECORDING_NS)
        );
        let (ct, body) = multipart("v=0\r\n", &xml);
        let boundary = ct.split("boundary=").nth(1).expect("a boundary");
        let body = String::from_utf8(body).expect("the body is text");
        let delimiters = body
            .split("\r\n")
            .filter(|l| l.starts_with(&format!("--{boundary}")))
            .count();
        assert_eq!(delimiters, 3, "{body}");
    }

    // The other `/siprec/start` fields.
    if let Ok(headers) = parse_headers(text) {
        for (n, v) in headers {
            assert!(
                !n.is_empty() && !n.contains([':', ' ', '\r', '\n']),
                "{n:?}"
            );
            assert!(!v.contains(['\r', '\n']), "{v:?}");
        }
    }
    if let Ok(list) = parse_srs_list(text) {
        assert!(!list.is_empty());
        for t in list {
            assert!(!t.uri.contains(['\r', '\n', ' ', '<', '>']), "{:?}", t.uri);
        }
    }
});

/// A metadata document with `p` as the caller and `ext` as both extensions; the other
/// values are the text itself, as a Call-ID or a time could be.
fn metadata(p: Participant, ext: Option<String>, text: &str) -> Metadata {
    Metadata {
        session_id: "s".into(),
        group: ext.clone().map(|e| ("g".into(), Some(e))),
        session_extension: ext,
        sip_session_id: text.into(),
        start_time: text.into(),
        caller: ("a".into(), p),
        callee: (
            text.into(),
            Participant::Aor {
                aor: text.into(),
                name: Some(text.into()),
            },
        ),
        callee_stream: ("cs".into(), LABELS.0.into()),
        caller_stream: ("ks".into(), LABELS.1.into()),
        exchanges: Vec::new(),
    }
}
