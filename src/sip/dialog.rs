//! A SIP dialog from either side (RFC 3261 §12) and the request/response builders the
//! user agent needs: the dialog's identifiers, route set and remote target, and the CSeq
//! counter. Pure data: no I/O, no clock.

use std::net::SocketAddr;

use crate::ids::random_token;
use rsip::prelude::*;

use super::endpoint::Transport;

/// The local end's identity and where it is reached (Via sent-by and Contact).
#[derive(Debug, Clone)]
pub struct LocalEnd {
    pub transport: Transport,
    /// Address put in Via and Contact.
    pub addr: SocketAddr,
    pub user_agent: String,
}

impl LocalEnd {
    pub fn via(&self, branch: &str) -> String {
        format!(
            "SIP/2.0/{} {};branch={};rport",
            self.transport.via_token(),
            self.addr,
            branch
        )
    }

    pub fn contact(&self, user: &str) -> String {
        let user = if user.is_empty() {
            String::new()
        } else {
            format!("{user}@")
        };
        match self.transport {
            Transport::Udp => format!("<sip:{user}{}>", self.addr),
            Transport::Tcp => format!("<sip:{user}{};transport=tcp>", self.addr),
            // `sip:` with transport=tls rather than `sips:`: a sips Contact would demand TLS
            // on every hop behind the provider (RFC 5630 §3.1.2), which we cannot promise.
            Transport::Tls => format!("<sip:{user}{};transport=tls>", self.addr),
        }
    }
}

/// A fresh RFC 3261 branch with the magic cookie.
pub fn new_branch() -> String {
    format!("z9hG4bK{}", random_token(16))
}

/// The parts of a request that a builder fills in.
pub struct RequestSpec<'a> {
    pub method: rsip::Method,
    pub uri: &'a str,
    pub local: &'a LocalEnd,
    pub branch: &'a str,
    pub from: &'a str,
    pub to: &'a str,
    pub call_id: &'a str,
    pub cseq: u32,
    pub contact: Option<&'a str>,
    pub routes: &'a [String],
    pub extra: &'a [(String, String)],
    pub body: Option<(&'a str, Vec<u8>)>,
}

#[derive(Debug, thiserror::Error)]
#[error("invalid URI {uri:?}: {message}")]
pub struct UriError {
    pub uri: String,
    pub message: String,
}

/// Parses a SIP URI with rsip, keeping the input in the error. rsip splits `host:port` at
/// the first colon, so a URI with an IPv6 reference (a peer's Contact `sip:a@[2001:db8::1]`,
/// RFC 5118) is read by the message parser's URI reader instead.
pub fn parse_uri(uri: &str) -> Result<rsip::Uri, UriError> {
    rsip::Uri::try_from(uri).or_else(|e| {
        let ipv6 = uri.contains('[');
        match ipv6.then(|| super::message::parse_sip_uri(uri)) {
            Some(Ok(parsed)) => Ok(parsed),
            Some(Err(kind)) => Err(UriError {
                uri: uri.to_string(),
                message: kind.to_string(),
            }),
            None => Err(UriError {
                uri: uri.to_string(),
                message: e.to_string(),
            }),
        }
    })
}

/// Builds a request; Content-Length is always written.
pub fn build_request(spec: RequestSpec<'_>) -> Result<rsip::Request, UriError> {
    let uri = parse_uri(spec.uri)?;
    let mut headers = rsip::Headers::default();
    headers.push(rsip::headers::Via::new(spec.local.via(spec.branch)).into());
    headers.push(rsip::headers::MaxForwards::new("70").into());
    for route in spec.routes {
        headers.push(rsip::headers::Route::new(route.clone()).into());
    }
    headers.push(rsip::headers::From::new(spec.from).into());
    headers.push(rsip::headers::To::new(spec.to).into());
    headers.push(rsip::headers::CallId::new(spec.call_id).into());
    headers.push(rsip::headers::CSeq::new(format!("{} {}", spec.cseq, spec.method)).into());
    if let Some(contact) = spec.contact {
        headers.push(rsip::headers::Contact::new(contact).into());
    }
    headers.push(rsip::headers::UserAgent::new(spec.local.user_agent.clone()).into());
    for (name, value) in spec.extra {
        headers.push(rsip::Header::Other(name.clone(), value.clone()));
    }
    let body = match spec.body {
        Some((content_type, body)) => {
            headers.push(rsip::headers::ContentType::new(content_type).into());
            body
        }
        None => Vec::new(),
    };
    headers.push(rsip::headers::ContentLength::new(body.len().to_string()).into());
    Ok(rsip::Request {
        method: spec.method,
        uri,
        version: rsip::Version::V2,
        headers,
        body,
    })
}

/// Builds a response to `req` (RFC 3261 §8.2.6): Via, From, To (with `to_tag` added when the
/// request's To has none), Call-ID and CSeq copied; Content-Length always written.
pub fn build_response(
    req: &rsip::Request,
    code: u16,
    to_tag: Option<&str>,
    extra: Vec<rsip::Header>,
    body: Option<(&str, Vec<u8>)>,
) -> rsip::Response {
    let mut headers = rsip::Headers::default();
    for h in req.headers.iter() {
        match h {
            rsip::Header::Via(_)
            | rsip::Header::From(_)
            | rsip::Header::CallId(_)
            | rsip::Header::CSeq(_)
            | rsip::Header::RecordRoute(_) => headers.push(h.clone()),
            rsip::Header::To(to) => {
                let has_tag = super::message::tag_param(to.value()).is_some();
                match to_tag {
                    Some(tag) if !has_tag && code != 100 => headers
                        .push(rsip::headers::To::new(format!("{};tag={}", to.value(), tag)).into()),
                    _ => headers.push(h.clone()),
                }
            }
            _ => {}
        }
    }
    for h in extra {
        headers.push(h);
    }
    let body = match body {
        Some((content_type, body)) => {
            headers.push(rsip::headers::ContentType::new(content_type).into());
            body
        }
        None => Vec::new(),
    };
    headers.push(rsip::headers::ContentLength::new(body.len().to_string()).into());
    rsip::Response {
        status_code: rsip::StatusCode::from(code),
        version: rsip::Version::V2,
        headers,
        body,
    }
}

/// A dialog (early or confirmed), created by our INVITE's response (UAC) or by an incoming
/// INVITE (UAS).
#[derive(Debug, Clone)]
pub struct Dialog {
    pub call_id: String,
    pub local_tag: String,
    pub remote_tag: Option<String>,
    /// From header value we send (with our tag).
    pub local: String,
    /// To header value we send (the remote URI, plus the remote tag once known).
    pub remote: String,
    pub remote_uri: String,
    /// The remote target: the Contact of the 2xx, else the request URI.
    pub remote_target: String,
    /// Route set: Record-Route of the 2xx in reverse order (we are the UAC).
    pub route_set: Vec<String>,
    pub local_cseq: u32,
}

impl Dialog {
    /// Fills the dialog state from a 2xx (or 1xx with a To tag) to our INVITE (§12.1.2).
    pub fn update_from_response(&mut self, resp: &rsip::Response) {
        if let Some(tag) = resp
            .to_header()
            .ok()
            .and_then(|h| super::message::tag_param(h.value()))
        {
            self.remote = format!("<{}>;tag={}", self.remote_uri, tag);
            self.remote_tag = Some(tag);
        }
        if let Some(contact) = resp.headers.iter().find_map(|h| match h {
            rsip::Header::Contact(c) => Some(c.value().to_string()),
            _ => None,
        }) {
            if let Some(uri) = angle_uri(&contact) {
                self.remote_target = uri;
            }
        }
        let mut routes: Vec<String> = resp
            .headers
            .iter()
            .filter_map(|h| match h {
                rsip::Header::RecordRoute(r) => Some(r.value().to_string()),
                _ => None,
            })
            .collect();
        if !routes.is_empty() {
            routes.reverse();
            self.route_set = routes;
        }
    }

    /// The dialog a UAS creates from an incoming INVITE (§12.1.1): the remote end is the
    /// request's From (with its tag) and its Contact; we are its To with `local_tag` added;
    /// the route set is the Record-Route in the order received. None when the request has
    /// no Call-ID, From or To.
    pub fn from_request(req: &rsip::Request, local_tag: String) -> Option<Dialog> {
        let call_id = req.call_id_header().ok()?.value().to_string();
        let from = req.from_header().ok()?.value().to_string();
        let to = req.to_header().ok()?.value().to_string();
        let remote_tag = super::message::tag_param(&from);
        let remote_uri = angle_uri(&from)?;
        let remote_target = req
            .headers
            .iter()
            .find_map(|h| match h {
                rsip::Header::Contact(c) => angle_uri(c.value()),
                _ => None,
            })
            .unwrap_or_else(|| remote_uri.clone());
        let route_set = req
            .headers
            .iter()
            .filter_map(|h| match h {
                rsip::Header::RecordRoute(r) => Some(r.value().to_string()),
                _ => None,
            })
            .collect();
        Some(Dialog {
            call_id,
            local: format!("{to};tag={local_tag}"),
            local_tag,
            remote_tag,
            remote: from,
            remote_uri,
            remote_target,
            route_set,
            local_cseq: 0,
        })
    }

    /// Request URI and Route headers for a request inside the dialog (§12.2.1.1): loose
    /// routing when the first route has `lr`, strict routing otherwise.
    pub fn target_and_routes(&self) -> (String, Vec<String>) {
        match self.route_set.first() {
            Some(first) if !first.contains(";lr") => {
                let uri = angle_uri(first).unwrap_or_else(|| first.clone());
                let mut routes: Vec<String> = self.route_set[1..].to_vec();
                routes.push(format!("<{}>", self.remote_target));
                (uri, routes)
            }
            _ => (self.remote_target.clone(), self.route_set.clone()),
        }
    }

    /// The address a request inside the dialog goes to when it can be read without DNS: the
    /// first route, else the remote target, if its host is an IP literal.
    pub fn next_hop(&self) -> Option<SocketAddr> {
        let (uri, routes) = self.target_and_routes();
        let hop = routes.first().and_then(|r| angle_uri(r)).unwrap_or(uri);
        uri_socket_addr(&hop)
    }
}

/// The URI inside `<...>`, or the bare value up to its parameters.
pub fn angle_uri(value: &str) -> Option<String> {
    let value = value.trim();
    if let Some(start) = value.find('<') {
        let rest = &value[start + 1..];
        let end = rest.find('>')?;
        return Some(rest[..end].to_string());
    }
    let bare = value.split(';').next()?.trim();
    (!bare.is_empty()).then(|| bare.to_string())
}

/// `sip:user@1.2.3.4:5070;transport=udp` → 1.2.3.4:5070 (5060 when no port, 5061 for
/// `sips:` or `transport=tls`); None for names.
pub fn uri_socket_addr(uri: &str) -> Option<SocketAddr> {
    let parsed = parse_uri(uri).ok()?;
    let ip: std::net::IpAddr = match &parsed.host_with_port.host {
        rsip::Host::IpAddr(ip) => *ip,
        rsip::Host::Domain(d) => {
            let d = d.to_string();
            match d.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
                Some(v6) => super::message::parse_ipv6_reference(v6)?.into(),
                None => d.parse().ok()?,
            }
        }
    };
    // An IPv4-mapped address (RFC 5118 §4.9) is the IPv4 host it names.
    let ip = ip.to_canonical();
    let port = parsed
        .host_with_port
        .port
        .map(|p| *p.value())
        .unwrap_or_else(|| {
            // As text too: the message parser keeps a parameter it would not write back
            // as received untyped (`transport=tls`).
            let tls = matches!(parsed.scheme, Some(rsip::Scheme::Sips))
                || parsed
                    .params
                    .iter()
                    .any(|p| p.to_string().eq_ignore_ascii_case(";transport=tls"));
            if tls {
                5061
            } else {
                5060
            }
        });
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local() -> LocalEnd {
        LocalEnd {
            transport: Transport::Udp,
            addr: "127.0.0.1:5060".parse().unwrap(),
            user_agent: "test".into(),
        }
    }

    #[test]
    fn tls_via_contact_and_default_port() {
        let l = LocalEnd {
            transport: Transport::Tls,
            addr: "127.0.0.1:5061".parse().unwrap(),
            user_agent: "test".into(),
        };
        assert_eq!(
            l.via("z9hG4bKx"),
            "SIP/2.0/TLS 127.0.0.1:5061;branch=z9hG4bKx;rport"
        );
        assert_eq!(l.contact("gw"), "<sip:gw@127.0.0.1:5061;transport=tls>");
        for (uri, port) in [
            ("sip:10.0.0.1;transport=tls;lr", 5061),
            ("sips:10.0.0.1", 5061),
            ("sip:10.0.0.1;transport=TLS", 5061),
            ("sip:10.0.0.1;lr", 5060),
            ("sips:10.0.0.1:5071", 5071),
        ] {
            assert_eq!(uri_socket_addr(uri).map(|a| a.port()), Some(port), "{uri}");
        }
    }

    /// RFC 5118: a peer whose From, To and Contact hold IPv6 references. rsip's typed
    /// headers and URI parser cannot read them; the dialog still has the remote tag, our
    /// answers one To tag, and our requests reach the Contact.
    #[test]
    fn dialog_with_ipv6_references() {
        let raw = "INVITE sip:rec@[2001:db8::10] SIP/2.0\r\n\
Via: SIP/2.0/UDP [2001:db8::9:1]:5070;branch=z9hG4bK6\r\n\
From: \"Alice\" <sip:alice@[2001:db8::9:1]>;tag=a6\r\n\
To: <sip:rec@[2001:db8::10]>\r\n\
Call-ID: c6@x\r\n\
CSeq: 1 INVITE\r\n\
Contact: <sip:alice@[2001:db8::9:1]:5070;transport=tcp>\r\n\
Content-Length: 0\r\n\r\n";
        let req = match super::super::message::parse(raw.as_bytes()) {
            Ok(rsip::SipMessage::Request(r)) => r,
            other => panic!("{other:?}"),
        };
        let d = Dialog::from_request(&req, "ours".into()).unwrap();
        assert_eq!(d.remote_tag.as_deref(), Some("a6"));
        assert_eq!(
            d.remote_target,
            "sip:alice@[2001:db8::9:1]:5070;transport=tcp"
        );
        assert_eq!(d.next_hop(), Some("[2001:db8::9:1]:5070".parse().unwrap()));
        let resp = build_response(&req, 200, Some("ours"), vec![], None);
        let to = resp.to_header().unwrap().value().to_string();
        assert_eq!(to, "<sip:rec@[2001:db8::10]>;tag=ours");
        // In the dialog the To already has its tag: none added.
        let mut again = req.clone();
        again.headers.retain(|h| !matches!(h, rsip::Header::To(_)));
        again
            .headers
            .push(rsip::headers::To::new(to.clone()).into());
        let resp = build_response(&again, 200, Some("other"), vec![], None);
        assert_eq!(resp.to_header().unwrap().value(), to);
        let bye = build_request(RequestSpec {
            method: rsip::Method::Bye,
            uri: &d.remote_target,
            local: &local(),
            branch: "z9hG4bKbye",
            from: &d.local,
            to: &d.remote,
            call_id: &d.call_id,
            cseq: 2,
            contact: None,
            routes: &[],
            extra: &[],
            body: None,
        })
        .expect("a request to an IPv6 Contact");
        assert!(bye
            .to_string()
            .starts_with("BYE sip:alice@[2001:db8::9:1]:5070;transport=tcp SIP/2.0\r\n"));
        for (uri, addr) in [
            ("sip:t@[::ffff:192.0.2.2]", "192.0.2.2:5060"),
            (
                "sips:t@[2001:db8:::192.0.2.1]:5071",
                "[2001:db8::c000:201]:5071",
            ),
            ("sip:[2001:db8::1];transport=tls", "[2001:db8::1]:5061"),
        ] {
            assert_eq!(uri_socket_addr(uri), Some(addr.parse().unwrap()), "{uri}");
        }
        assert!(parse_uri("sip:[2001:db8::1").is_err());
    }

    #[test]
    fn request_has_mandatory_headers_and_length() {
        let l = local();
        let req = build_request(RequestSpec {
            method: rsip::Method::Invite,
            uri: "sip:bob@127.0.0.1:5070",
            local: &l,
            branch: "z9hG4bKabc",
            from: "<sip:alice@example.com>;tag=1",
            to: "<sip:bob@example.com>",
            call_id: "cid",
            cseq: 1,
            contact: Some(&l.contact("alice")),
            routes: &[],
            extra: &[("X-Test".into(), "1".into())],
            body: Some(("application/sdp", b"v=0\r\n".to_vec())),
        })
        .unwrap();
        let text = req.to_string();
        assert!(
            text.starts_with("INVITE sip:bob@127.0.0.1:5070 SIP/2.0\r\n"),
            "{text}"
        );
        assert!(text.contains("Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKabc;rport"));
        assert!(text.contains("CSeq: 1 INVITE"));
        assert!(text.contains("Content-Length: 5"));
        assert!(text.contains("X-Test: 1"));
    }

    #[test]
    fn uas_dialog_from_an_incoming_invite() {
        let raw = "INVITE sip:rec@127.0.0.1 SIP/2.0\r\n\
Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK1\r\n\
Record-Route: <sip:p1.example;lr>\r\n\
Record-Route: <sip:p2.example;lr>\r\n\
From: \"Alice\" <sip:alice@example.com>;tag=a1\r\n\
To: <sip:rec@127.0.0.1>\r\n\
Call-ID: c1@x\r\n\
CSeq: 1 INVITE\r\n\
Contact: <sip:alice@10.0.0.5:5070>\r\n\
Content-Length: 0\r\n\r\n";
        let req = rsip::Request::try_from(raw.as_bytes()).unwrap();
        let d = Dialog::from_request(&req, "ours".into()).unwrap();
        assert_eq!(d.call_id, "c1@x");
        assert_eq!(d.remote_tag.as_deref(), Some("a1"));
        assert_eq!(d.remote_uri, "sip:alice@example.com");
        assert_eq!(d.remote_target, "sip:alice@10.0.0.5:5070");
        assert_eq!(d.local, "<sip:rec@127.0.0.1>;tag=ours");
        assert!(d.remote.contains("tag=a1"));
        // The UAS keeps the Record-Route order (§12.1.1); the UAC reverses it.
        assert_eq!(
            d.route_set,
            vec!["<sip:p1.example;lr>", "<sip:p2.example;lr>"]
        );
        let (uri, routes) = d.target_and_routes();
        assert_eq!(uri, "sip:alice@10.0.0.5:5070");
        assert_eq!(routes.len(), 2);
    }

    #[test]
    fn dialog_learns_tag_target_and_reversed_routes() {
        let resp = rsip::Response::try_from(
            "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKabc\r\n\
             Record-Route: <sip:p1.example.com;lr>\r\nRecord-Route: <sip:10.0.0.2;lr>\r\n\
             From: <sip:a@x>;tag=1\r\nTo: <sip:b@x>;tag=rt\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\n\
             Contact: <sip:b@10.0.0.9:5070>\r\nContent-Length: 0\r\n\r\n",
        )
        .unwrap();
        let mut d = Dialog {
            call_id: "c".into(),
            local_tag: "1".into(),
            remote_tag: None,
            local: "<sip:a@x>;tag=1".into(),
            remote: "<sip:b@x>".into(),
            remote_uri: "sip:b@x".into(),
            remote_target: "sip:b@x".into(),
            route_set: vec![],
            local_cseq: 1,
        };
        d.update_from_response(&resp);
        assert_eq!(d.remote_tag.as_deref(), Some("rt"));
        assert_eq!(d.remote_target, "sip:b@10.0.0.9:5070");
        assert_eq!(
            d.route_set,
            vec!["<sip:10.0.0.2;lr>", "<sip:p1.example.com;lr>"]
        );
        let (uri, routes) = d.target_and_routes();
        assert_eq!(uri, "sip:b@10.0.0.9:5070");
        assert_eq!(routes.len(), 2);
        assert_eq!(d.next_hop(), Some("10.0.0.2:5060".parse().unwrap()));
    }

    #[test]
    fn strict_route_moves_target_into_routes() {
        let d = Dialog {
            call_id: "c".into(),
            local_tag: "1".into(),
            remote_tag: Some("2".into()),
            local: String::new(),
            remote: String::new(),
            remote_uri: "sip:b@x".into(),
            remote_target: "sip:b@10.0.0.9".into(),
            route_set: vec!["<sip:10.0.0.1>".into()],
            local_cseq: 1,
        };
        let (uri, routes) = d.target_and_routes();
        assert_eq!(uri, "sip:10.0.0.1");
        assert_eq!(routes, vec!["<sip:b@10.0.0.9>"]);
    }
}
