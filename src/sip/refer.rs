//! Call transfer by REFER (RFC 3515, RFC 5589): the `Refer-To` header (with a `Replaces`
//! for attended transfer, RFC 3891), and the `message/sipfrag` NOTIFYs (RFC 3420) that report
//! how the transferee's new call goes. Plain functions over text: the UA sends and receives,
//! these build and read.

/// What a REFER asks for: call `uri`, and with `replaces` take over that dialog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReferTo {
    pub uri: String,
    /// The `Replaces` value (`call-id;to-tag=..;from-tag=..`), decoded.
    pub replaces: Option<String>,
}

/// The dialog a `Replaces` names, as the recipient of the INVITE sees it: `to_tag` is its
/// own (local) tag, `from_tag` its peer's.
pub struct ReplacedDialog<'a> {
    pub call_id: &'a str,
    pub to_tag: &'a str,
    pub from_tag: &'a str,
}

/// `Refer-To` header value: `<uri>` or `<uri?Replaces=...>`.
pub fn refer_to_value(uri: &str, replaces: Option<&ReplacedDialog<'_>>) -> String {
    match replaces {
        None => format!("<{uri}>"),
        Some(d) => {
            let value = format!("{};to-tag={};from-tag={}", d.call_id, d.to_tag, d.from_tag);
            let sep = if uri.contains('?') { '&' } else { '?' };
            format!("<{uri}{sep}Replaces={}>", escape(&value))
        }
    }
}

/// Reads a `Refer-To` value (name-addr or bare URI). Only sip:, sips: and tel: targets.
pub fn parse_refer_to(value: &str) -> Result<ReferTo, String> {
    let value = value.trim();
    if value.bytes().any(|b| b.is_ascii_control()) {
        return Err("Refer-To has control characters".into());
    }
    let inner = match (value.find('<'), value.rfind('>')) {
        (Some(a), Some(b)) if a < b => &value[a + 1..b],
        (None, None) => value.split(';').next().unwrap_or(value),
        _ => return Err(format!("Refer-To has unbalanced brackets: {value:?}")),
    };
    let (uri, headers) = match inner.split_once('?') {
        Some((u, h)) => (u, Some(h)),
        None => (inner, None),
    };
    let lower = uri.to_ascii_lowercase();
    if !(lower.starts_with("sip:") || lower.starts_with("sips:") || lower.starts_with("tel:")) {
        return Err(format!(
            "Refer-To must be a sip:, sips: or tel: URI, got {uri:?}"
        ));
    }
    if uri.len() <= 4 || uri.contains(char::is_whitespace) {
        return Err(format!("Refer-To URI is malformed: {uri:?}"));
    }
    let replaces = headers.and_then(|h| {
        h.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            k.eq_ignore_ascii_case("replaces").then(|| unescape(v))
        })
    });
    Ok(ReferTo {
        uri: uri.to_string(),
        replaces,
    })
}

/// The status line of a `message/sipfrag` body: `SIP/2.0 180 Ringing` → (180, "180 Ringing").
pub fn sipfrag_status(body: &[u8]) -> Option<(u16, String)> {
    let text = std::str::from_utf8(body).ok()?;
    let line = text.lines().next()?.trim();
    let rest = line.strip_prefix("SIP/2.0 ")?;
    let code: u16 = rest.get(..3)?.parse().ok()?;
    (100..700).contains(&code).then(|| (code, rest.to_string()))
}

/// The body of a NOTIFY reporting `status` (`SIP/2.0 200 OK`).
pub fn sipfrag_body(status: u16, reason: &str) -> Vec<u8> {
    format!("SIP/2.0 {status} {reason}\r\n").into_bytes()
}

/// The headers of a refer NOTIFY: the subscription ends with the final status.
pub fn notify_headers(final_status: bool) -> Vec<(String, String)> {
    let state = if final_status {
        "terminated;reason=noresource"
    } else {
        "active;expires=60"
    };
    vec![
        ("Event".into(), "refer".into()),
        ("Subscription-State".into(), state.into()),
    ]
}

pub const SIPFRAG: &str = "message/sipfrag;version=2.0";

/// Percent-encodes what may not stand in a URI header value (RFC 3261 `hvalue`).
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3 / 2);
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'!' | b'~' | b'*' => {
                out.push(b as char)
            }
            b'\'' | b'(' | b')' | b'[' | b']' | b'/' | b':' | b'+' | b'$' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

fn unescape(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refer_to_round_trips_with_replaces() {
        let d = ReplacedDialog {
            call_id: "abc@10.0.0.1",
            to_tag: "t1",
            from_tag: "f 2",
        };
        let v = refer_to_value("sip:bob@10.0.0.2:5062", Some(&d));
        assert_eq!(
            v,
            "<sip:bob@10.0.0.2:5062?Replaces=abc%4010.0.0.1%3Bto-tag%3Dt1%3Bfrom-tag%3Df%202>"
        );
        let r = parse_refer_to(&v).unwrap();
        assert_eq!(r.uri, "sip:bob@10.0.0.2:5062");
        assert_eq!(
            r.replaces.as_deref(),
            Some("abc@10.0.0.1;to-tag=t1;from-tag=f 2")
        );
        assert_eq!(refer_to_value("sip:c@d", None), "<sip:c@d>");
    }

    #[test]
    fn refer_to_accepts_name_addr_and_bare_uri_and_refuses_the_rest() {
        let r = parse_refer_to("\"Carol\" <sip:carol@example.com;transport=tcp>").unwrap();
        assert_eq!(r.uri, "sip:carol@example.com;transport=tcp");
        assert_eq!(r.replaces, None);
        assert_eq!(parse_refer_to("sip:c@d;x=1").unwrap().uri, "sip:c@d");
        assert!(parse_refer_to("<http://evil>").is_err());
        assert!(parse_refer_to("<sip:a@b").is_err());
        assert!(parse_refer_to("<sip:>").is_err());
        assert!(parse_refer_to("<sip:a b@c>").is_err());
        assert!(parse_refer_to("sip:a@b\r\nVia: x").is_err());
        assert!(parse_refer_to("").is_err());
    }

    #[test]
    fn sipfrag_status_lines() {
        assert_eq!(
            sipfrag_status(b"SIP/2.0 200 OK\r\n"),
            Some((200, "200 OK".into()))
        );
        assert_eq!(
            sipfrag_status(b"SIP/2.0 100 Trying"),
            Some((100, "100 Trying".into()))
        );
        assert_eq!(
            sipfrag_status(b"SIP/2.0 486 Busy Here\r\nVia: x\r\n"),
            Some((486, "486 Busy Here".into()))
        );
        assert_eq!(sipfrag_status(b"HTTP/1.1 200 OK"), None);
        assert_eq!(sipfrag_status(b"SIP/2.0 2"), None);
        assert_eq!(sipfrag_status(b"SIP/2.0 999 x"), None);
        assert_eq!(sipfrag_status(&[0xff, 0xfe]), None);
        assert_eq!(sipfrag_body(180, "Ringing"), b"SIP/2.0 180 Ringing\r\n");
    }

    #[test]
    fn unescape_leaves_broken_escapes() {
        assert_eq!(unescape("a%2"), "a%2");
        assert_eq!(unescape("%zz%41"), "%zzA");
    }
}
