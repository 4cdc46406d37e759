//! The Recording Session's INVITE body (RFC 7866 §7): `multipart/mixed` holding the SDP
//! offer (one `m=audio` per direction of the recorded call, each `a=sendonly` with an
//! `a=label`) and the RFC 7865 metadata with `Content-Disposition: recording-session`.

use std::net::IpAddr;

use crate::ids::random_token;
use crate::sip::sdp::{Direction, RtpMap};

/// The SDP offered to the SRS. `ports` are our RTP ports for (callee stream, caller stream).
pub fn srs_sdp(
    session_id: u64,
    version: u64,
    ip: IpAddr,
    codec: &RtpMap,
    ports: (u16, u16),
    labels: (&str, &str),
    direction: Direction,
) -> String {
    let ip_ver = if ip.is_ipv4() { "IP4" } else { "IP6" };
    let mut s = format!(
        "v=0\r\no=sipstream {session_id} {version} IN {ip_ver} {ip}\r\ns=SIPREC\r\nc=IN {ip_ver} {ip}\r\nt=0 0\r\n"
    );
    for (port, label) in [(ports.0, labels.0), (ports.1, labels.1)] {
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
    use crate::sip::sdp::{codec_pcmu, SessionDescription};

    #[test]
    fn sdp_has_two_sendonly_labelled_audio_lines() {
        let s = srs_sdp(
            1,
            1,
            "127.0.0.1".parse().unwrap(),
            &codec_pcmu(),
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
    fn multipart_has_both_parts() {
        let (ct, body) = multipart("v=0\r\n", "<recording/>");
        let boundary = ct.split("boundary=").nth(1).unwrap();
        let text = String::from_utf8(body).unwrap();
        assert_eq!(text.matches(&format!("--{boundary}")).count(), 3);
        assert!(text.contains("Content-Disposition: recording-session"));
        assert!(text.ends_with(&format!("--{boundary}--\r\n")));
    }
}
