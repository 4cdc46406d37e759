//! The Recording Session's INVITE body (RFC 7866 §7): `multipart/mixed` holding the SDP
//! offer (one `m=audio` per direction of the recorded call, each `a=sendonly` with an
//! `a=label` and in its own party's codec) and the RFC 7865 metadata with
//! `Content-Disposition: recording-session`; and the reading of the SRS's answer.

use std::net::{IpAddr, SocketAddr};

use crate::ids::random_token;
use crate::sip::sdp::{negotiate, Direction, RtpMap, SessionDescription};

/// The SDP offered to the SRS: one `m=audio` per recorded stream, each in that stream's own
/// codec (the legs of a two-party call may differ). `codecs`, `ports` and `labels` are for
/// (callee stream, caller stream); the ports are our RTP ports.
pub fn srs_sdp(
    session_id: u64,
    version: u64,
    ip: IpAddr,
    codecs: (&RtpMap, &RtpMap),
    ports: (u16, u16),
    labels: (&str, &str),
    direction: Direction,
) -> String {
    let ip_ver = if ip.is_ipv4() { "IP4" } else { "IP6" };
    let mut s = format!(
        "v=0\r\no=sipstream {session_id} {version} IN {ip_ver} {ip}\r\ns=SIPREC\r\nc=IN {ip_ver} {ip}\r\nt=0 0\r\n"
    );
    for (codec, port, label) in [(codecs.0, ports.0, labels.0), (codecs.1, ports.1, labels.1)] {
        s.push_str(&format!("m=audio {port} RTP/AVP {}\r\n", codec.pt));
        let channels = if codec.channels > 1 {
            format!("/{}", codec.channels)
        } else {
            String::new()
        };
        s.push_str(&format!(
            "a=rtpmap:{} {}/{}{channels}\r\n",
            codec.pt, codec.encoding, codec.clock_rate
        ));
        if let Some(f) = &codec.fmtp {
            s.push_str(&format!("a=fmtp:{} {f}\r\n", codec.pt));
        }
        s.push_str(&format!("a=rtcp:{}\r\n", port.wrapping_add(1)));
        s.push_str(&format!("a={direction}\r\na=label:{label}\r\n"));
    }
    s
}

/// Where the SRS wants each recorded stream, from its answer: the section with the stream's
/// label (else the one at the stream's position) negotiated against that stream's own codec.
/// None for a stream the SRS refused (port 0, no section, or not the stream's codec).
/// `codecs` and `labels` are for (callee stream, caller stream), as offered by [`srs_sdp`].
pub fn srs_destinations(
    answer: &SessionDescription,
    codecs: (&RtpMap, &RtpMap),
    labels: (&str, &str),
) -> (Option<SocketAddr>, Option<SocketAddr>) {
    let dest = |codec: &RtpMap, label: &str, pos: usize| {
        let m = answer
            .media
            .iter()
            .find(|m| m.label.as_deref() == Some(label))
            .or_else(|| answer.media.get(pos))?;
        negotiate(std::slice::from_ref(codec), m, answer.connection)
            .ok()?
            .remote_rtp
    };
    (dest(codecs.0, labels.0, 0), dest(codecs.1, labels.1, 1))
}

/// `multipart/mixed` with the SDP and the metadata. Returns (Content-Type value, body).
pub fn multipart(sdp: &str, metadata_xml: &str) -> (String, Vec<u8>) {
    let boundary = format!("sipstream-{}", random_token(16));
    let body = format!(
        "--{boundary}\r\nContent-Type: application/sdp\r\n\r\n{sdp}\r\n--{boundary}\r\nContent-Type: application/rs-metadata+xml\r\nContent-Disposition: recording-session\r\n\r\n{metadata_xml}\r\n--{boundary}--\r\n"
    );
    (
        format!("multipart/mixed;boundary={boundary}"),
        body.into_bytes(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::sdp::{codec_opus, codec_pcma, codec_pcmu, SessionDescription};

    #[test]
    fn sdp_has_two_sendonly_labelled_audio_lines() {
        let s = srs_sdp(
            1,
            1,
            "127.0.0.1".parse().unwrap(),
            (&codec_pcmu(), &codec_pcmu()),
            (4000, 4002),
            ("1", "2"),
            Direction::SendOnly,
        );
        let d = SessionDescription::parse(&s).unwrap();
        assert_eq!(d.media.len(), 2);
        assert!(d.media.iter().all(|m| m.direction == Direction::SendOnly));
        assert_eq!(d.media[0].label.as_deref(), Some("1"));
        assert_eq!(d.media[1].label.as_deref(), Some("2"));
        assert_eq!(d.media[1].port, 4002);
    }

    #[test]
    fn each_line_offers_its_own_partys_codec() {
        // A two-party call: the callee speaks PCMA, the caller PCMU.
        let s = srs_sdp(
            7,
            3,
            "127.0.0.1".parse().unwrap(),
            (&codec_pcma(), &codec_pcmu()),
            (4000, 4002),
            ("1", "2"),
            Direction::SendOnly,
        );
        let d = SessionDescription::parse(&s).unwrap();
        let line = |i: usize| {
            let m = &d.media[i];
            (
                m.label.clone().unwrap(),
                m.formats.clone(),
                m.rtpmaps[0].to_string(),
            )
        };
        assert_eq!(line(0), ("1".into(), vec![8], "PCMA/8000".into()));
        assert_eq!(line(1), ("2".into(), vec![0], "PCMU/8000".into()));
        assert!(
            s.contains("m=audio 4000 RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\n"),
            "{s}"
        );
        assert!(
            s.contains("m=audio 4002 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"),
            "{s}"
        );

        // An Opus callee: its line has Opus with its fmtp, the caller's line none.
        let s = srs_sdp(
            7,
            3,
            "127.0.0.1".parse().unwrap(),
            (&codec_opus(), &codec_pcmu()),
            (4000, 4002),
            ("1", "2"),
            Direction::Inactive,
        );
        let d = SessionDescription::parse(&s).unwrap();
        assert_eq!(d.media[0].formats, vec![111]);
        assert_eq!(d.media[0].rtpmaps[0].to_string(), "opus/48000/2");
        assert_eq!(d.media[1].formats, vec![0]);
        assert_eq!(s.matches("a=fmtp:").count(), 1, "{s}");
        assert!(d.media.iter().all(|m| m.direction == Direction::Inactive));
    }

    const SRS: &str = "v=0\r\no=srs 1 1 IN IP4 10.0.0.9\r\ns=-\r\nc=IN IP4 10.0.0.9\r\nt=0 0\r\n";

    fn answer(lines: &[(u16, &str, Option<&str>)]) -> SessionDescription {
        let mut s = SRS.to_string();
        for (port, fmts, label) in lines {
            s.push_str(&format!("m=audio {port} RTP/AVP {fmts}\r\n"));
            for pt in fmts.split(' ') {
                let name = if pt == "0" { "PCMU" } else { "PCMA" };
                s.push_str(&format!("a=rtpmap:{pt} {name}/8000\r\n"));
            }
            if let Some(l) = label {
                s.push_str(&format!("a=label:{l}\r\n"));
            }
            s.push_str("a=recvonly\r\n");
        }
        SessionDescription::parse(&s).unwrap()
    }

    #[test]
    fn each_answered_line_is_negotiated_against_its_own_codec() {
        let codecs = (&codec_pcma(), &codec_pcmu());
        let at = |p: u16| Some(SocketAddr::from(([10, 0, 0, 9], p)));
        // The SRS takes both codecs on both lines: each stream goes to its line.
        let a = answer(&[(5000, "0 8", Some("1")), (5002, "0 8", Some("2"))]);
        assert_eq!(
            srs_destinations(&a, codecs, ("1", "2")),
            (at(5000), at(5002))
        );
        // The labels decide, not the order.
        let a = answer(&[(5002, "0", Some("2")), (5000, "8", Some("1"))]);
        assert_eq!(
            srs_destinations(&a, codecs, ("1", "2")),
            (at(5000), at(5002))
        );
        // Without labels, the positions.
        let a = answer(&[(5000, "8", None), (5002, "0", None)]);
        assert_eq!(
            srs_destinations(&a, codecs, ("1", "2")),
            (at(5000), at(5002))
        );
        // A line answered only in the other party's codec is not that stream's: the callee's
        // PCMA line answered PCMU carries nothing, the caller's still goes.
        let a = answer(&[(5000, "0", Some("1")), (5002, "0", Some("2"))]);
        assert_eq!(srs_destinations(&a, codecs, ("1", "2")), (None, at(5002)));
        // One codec for both (today's single-codec calls) still takes both lines.
        let pcmu = codec_pcmu();
        assert_eq!(
            srs_destinations(&a, (&pcmu, &pcmu), ("1", "2")),
            (at(5000), at(5002))
        );
        // A refused line (port 0), and a missing one.
        let a = answer(&[(0, "8", Some("1")), (5002, "0", Some("2"))]);
        assert_eq!(srs_destinations(&a, codecs, ("1", "2")), (None, at(5002)));
        let a = answer(&[(5000, "8", Some("1"))]);
        assert_eq!(srs_destinations(&a, codecs, ("1", "2")), (at(5000), None));
    }

    #[test]
    fn multipart_has_both_parts() {
        let (ct, body) = multipart("v=0\r\n", "<recording/>");
        let boundary = ct.split("boundary=").nth(1).unwrap();
        let text = String::from_utf8(body).unwrap();
        assert_eq!(text.matches(&format!("--{boundary}")).count(), 3);
        assert!(text.contains("Content-Disposition: recording-session"));
        assert!(text.ends_with(&format!("--{boundary}--\r\n")));
    }
}
