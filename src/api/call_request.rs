//! The body of `/call/startup` as WCS clients send it (booleans and the port may be strings)
//! and its validation into the call layer's [`CallSpec`]. Errors name the field at fault.

use std::collections::BTreeMap;

use serde::Deserialize;
use utoipa::ToSchema;

use super::error::ApiError;
use super::json::{flex_bool, flex_port};
use crate::call::model::{CallSpec, Secret};
use crate::ids::is_valid_id;
use crate::sip::endpoint::Transport;

/// Body of `/call/startup` (WCS field names; booleans and the port may be strings).
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CallStartupRequest {
    /// Our id for the call (1–128 of A-Z a-z 0-9 _ . -); generated when absent.
    pub call_id: Option<String>,
    /// Who to call: a user part (`10005`, then `@sipDomain` is added) or a full `sip:` URI.
    pub callee: String,
    /// A second party for a two-party call: the gateway calls the caller first, then the
    /// callee, and bridges their media through itself (both legs are tracks of the stream).
    /// A user part or a `sip:` URI, like callee.
    pub caller: Option<String>,
    /// Our SIP user (From, and the digest user by default); default `sipstream`.
    #[serde(default)]
    pub sip_login: Option<String>,
    /// Digest user name; defaults to sipLogin.
    pub sip_authentication_name: Option<String>,
    /// Never returned nor logged.
    #[schema(value_type = Option<String>)]
    pub sip_password: Option<Secret>,
    /// Our SIP domain (From, registration, the host of number callees); default: the host
    /// of a `sip:` callee URI.
    #[serde(default)]
    pub sip_domain: Option<String>,
    /// Host (name or IP) all requests are sent to; defaults to sipDomain.
    pub sip_outbound_proxy: Option<String>,
    /// Port of the outbound proxy (or domain); default 5060 (5061 with `tls`).
    #[serde(default, deserialize_with = "flex_port")]
    #[schema(value_type = Option<u16>)]
    pub sip_port: Option<u16>,
    /// `udp` (default), `tcp` or `tls` (SIP over TLS, RFC 3261 §26.2; the provider's
    /// certificate is checked against `sip_tls_ca_file` or the system's roots). A `sips:`
    /// callee or one with `;transport=tls` means `tls` when this is not given.
    pub sip_transport: Option<String>,
    /// SRTP with SDES keys (RFC 4568) on this call: `off`, `optional` (RTP/AVP offer with
    /// `a=crypto`, SRTP when the far end takes it) or `mandatory` (RTP/SAVP; the call fails
    /// with 488 when the far end offers or answers no usable crypto line). Default:
    /// `sip_srtp`. Keys travel in the SDP: use it with `sipTransport: tls`.
    pub srtp: Option<String>,
    #[serde(default, deserialize_with = "flex_bool")]
    #[schema(value_type = Option<bool>)]
    pub sip_register_required: Option<bool>,
    #[serde(default, deserialize_with = "flex_bool")]
    #[schema(value_type = Option<bool>)]
    pub has_audio: Option<bool>,
    #[serde(default, deserialize_with = "flex_bool")]
    #[schema(value_type = Option<bool>)]
    pub has_video: Option<bool>,
    /// Name of the stream the callee's media becomes; defaults to callId.
    pub to_stream: Option<String>,
    #[serde(default, deserialize_with = "flex_bool")]
    #[schema(value_type = Option<bool>)]
    pub record: Option<bool>,
    /// Stream the call's audio to this WebSocket server once it is answered (a voice agent;
    /// Twilio Media Streams messages, bidirectional by default): the same as
    /// `/call/stream/startup` at answer.
    pub media_stream_url: Option<String>,
    /// Options of that stream (`url`, `leg`, `track`, `format`, `codec`, `sampleRate`,
    /// `bidirectional`, `headers`, `customParameters`), as `/call/stream/startup` takes them.
    pub media_stream: Option<super::media_streams::MediaStreamOptions>,
    /// Extra headers for the INVITE (`X-*` and other non-structural headers).
    pub sip_headers: Option<BTreeMap<String, String>>,
}

/// Headers the gateway writes itself; a caller may not override them through sipHeaders.
const RESERVED_HEADERS: &[&str] = &[
    "via",
    "v",
    "from",
    "f",
    "to",
    "t",
    "call-id",
    "i",
    "cseq",
    "content-length",
    "l",
    "content-type",
    "c",
    "contact",
    "m",
    "max-forwards",
    "route",
    "record-route",
    "authorization",
    "proxy-authorization",
    "expires",
    "allow",
];

fn is_host(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
}

fn is_user(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.!~*'()&=+$,;?/%#".contains(&b))
}

/// A party's URI from `callee` / `caller`: a user (at sipDomain), user@host or a sip: URI.
fn party_uri(field: &str, value: &str, domain: &str) -> Result<(String, rsip::Uri), ApiError> {
    let bad = |why: String| ApiError::BadRequest(format!("{field}: {why}"));
    let v = value.trim();
    let uri = if v.is_empty() {
        return Err(bad("must not be empty".into()));
    } else if v.starts_with("sip:") || v.starts_with("sips:") {
        v.to_string()
    } else if let Some((user, host)) = v.split_once('@') {
        if !is_user(user) || !is_host(host) {
            return Err(bad(format!("{v:?} is not user@host")));
        }
        format!("sip:{v}")
    } else if is_user(v) {
        format!("sip:{v}@{domain}")
    } else {
        return Err(bad(format!("{v:?} is not a SIP user or URI")));
    };
    if uri.contains(['\r', '\n', ' ', '<', '>', '"']) {
        return Err(bad(format!(
            "{uri:?} contains characters not allowed in a URI"
        )));
    }
    let parsed = crate::sip::dialog::parse_uri(&uri).map_err(|e| bad(e.to_string()))?;
    Ok((uri, parsed))
}

/// The transport a URI asks for: TLS for `sips:` (RFC 3261 §19.1) or `;transport=tls`,
/// TCP or UDP for their `transport=` parameter; None when it says nothing.
fn uri_transport(uri: &rsip::Uri) -> Option<Transport> {
    if matches!(uri.scheme, Some(rsip::Scheme::Sips)) {
        return Some(Transport::Tls);
    }
    uri.params.iter().find_map(|p| match p {
        rsip::Param::Transport(t) => Transport::parse(&t.to_string()),
        _ => None,
    })
}

/// Where the INVITE for `uri` goes (RFC 3261 §8.1.2): an explicit outbound proxy wins (and
/// then carries the dialog's requests too: sticky); else the Request-URI's host and port,
/// where sipPort is the port of sipDomain when the URI names no port of its own.
/// The last field: whether the port was given (else RFC 3263 NAPTR/SRV lookups apply).
fn next_hop(
    uri: &rsip::Uri,
    proxy: Option<&str>,
    sip_port: Option<u16>,
    domain: &str,
    transport: Transport,
) -> (String, u16, bool, bool) {
    match proxy {
        Some(p) => (
            p.to_string(),
            sip_port.unwrap_or(transport.default_port()),
            true,
            sip_port.is_some(),
        ),
        None => {
            let host = uri.host_with_port.host.to_string();
            let port = uri
                .host_with_port
                .port
                .map(|p| *p.value())
                .or(sip_port.filter(|_| host.eq_ignore_ascii_case(domain)));
            (
                host,
                port.unwrap_or(transport.default_port()),
                false,
                port.is_some(),
            )
        }
    }
}

impl CallStartupRequest {
    /// Checks every field and normalises the callee into a SIP URI. Errors name the field.
    pub fn validate(self, generated_id: impl FnOnce() -> String) -> Result<CallSpec, ApiError> {
        let bad = |field: &str, why: String| ApiError::BadRequest(format!("{field}: {why}"));
        let call_id = match self.call_id.filter(|s| !s.is_empty()) {
            Some(id) if is_valid_id(&id) => id,
            Some(id) => {
                return Err(bad(
                    "callId",
                    format!("{id:?} must be 1-128 characters of A-Z a-z 0-9 _ . -"),
                ))
            }
            None => generated_id(),
        };
        let domain = match self
            .sip_domain
            .as_deref()
            .map(str::trim)
            .filter(|d| !d.is_empty())
        {
            Some(d) => d.to_string(),
            None => {
                // call-api's CallStart sends URIs only: take the callee's host.
                let callee = self.callee.trim();
                let host = callee
                    .strip_prefix("sip:")
                    .and_then(|rest| rest.split_once('@'))
                    .map(|(_, h)| h.split([':', ';', '?']).next().unwrap_or(""))
                    .unwrap_or("");
                if host.is_empty() {
                    return Err(bad(
                        "sipDomain",
                        "missing field (needed when callee is not a sip: URI)".into(),
                    ));
                }
                host.to_string()
            }
        };
        if !is_host(&domain) {
            return Err(bad(
                "sipDomain",
                format!("{domain:?} is not a host name or address"),
            ));
        }
        let login = self
            .sip_login
            .as_deref()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .unwrap_or("sipstream")
            .to_string();
        if !is_user(&login) {
            return Err(bad(
                "sipLogin",
                format!("{login:?} is not a valid SIP user"),
            ));
        }
        let auth_name = match self
            .sip_authentication_name
            .filter(|s| !s.trim().is_empty())
        {
            Some(a) if is_user(a.trim()) => a.trim().to_string(),
            Some(a) => {
                return Err(bad(
                    "sipAuthenticationName",
                    format!("{a:?} is not a valid user name"),
                ))
            }
            None => login.clone(),
        };
        let password = self.sip_password.unwrap_or_default();
        if password.expose().contains(['\r', '\n']) {
            return Err(bad("sipPassword", "must not contain CR or LF".into()));
        }
        let (callee_uri, parsed) = party_uri("callee", &self.callee, &domain)?;
        let proxy = match self
            .sip_outbound_proxy
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
        {
            Some(p) if is_host(&p) => Some(p),
            Some(p) => {
                return Err(bad(
                    "sipOutboundProxy",
                    format!("{p:?} is not a host name or address"),
                ))
            }
            None => None,
        };
        let transport = match self
            .sip_transport
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            None => uri_transport(&parsed).unwrap_or(Transport::Udp),
            Some(t) => Transport::parse(t)
                .ok_or_else(|| bad("sipTransport", format!("{t:?}: expected udp, tcp or tls")))?,
        };
        if let Some(wanted) = uri_transport(&parsed).filter(|u| *u != transport) {
            return Err(bad(
                "sipTransport",
                format!(
                    "{}: the callee URI asks for {}",
                    transport.via_token().to_ascii_lowercase(),
                    wanted.via_token().to_ascii_lowercase()
                ),
            ));
        }
        let hop =
            |uri: &rsip::Uri| next_hop(uri, proxy.as_deref(), self.sip_port, &domain, transport);
        let (proxy_host, proxy_port, sticky, explicit_port) = hop(&parsed);
        let caller = match self
            .caller
            .as_deref()
            .map(str::trim)
            .filter(|c| !c.is_empty())
        {
            None => None,
            Some(c) => {
                let (uri, parsed) = party_uri("caller", c, &domain)?;
                if uri == callee_uri {
                    return Err(bad("caller", "must differ from callee".into()));
                }
                let (host, port, _, explicit) = hop(&parsed);
                Some(crate::call::model::PartySpec {
                    uri,
                    proxy_host: host,
                    proxy_port: port,
                    locate: !explicit,
                })
            }
        };
        let registrar = (
            proxy.unwrap_or_else(|| domain.clone()),
            self.sip_port.unwrap_or(transport.default_port()),
        );
        let srtp = match self
            .srtp
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            None => None,
            Some(v) => Some(
                v.parse::<crate::rtp::srtp::SrtpPolicy>()
                    .map_err(|e| bad("srtp", e))?,
            ),
        };
        let stream = match self
            .to_stream
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
        {
            Some(s) if is_valid_id(&s) => s,
            Some(s) => {
                return Err(bad(
                    "toStream",
                    format!("{s:?} must be 1-128 characters of A-Z a-z 0-9 _ . -"),
                ))
            }
            None => call_id.clone(),
        };
        let has_audio = self.has_audio.unwrap_or(true);
        let has_video = self.has_video.unwrap_or(false);
        if !has_audio && !has_video {
            return Err(bad(
                "hasAudio",
                "hasAudio and hasVideo are both false: nothing to stream".into(),
            ));
        }
        let mut headers = Vec::new();
        for (name, value) in self.sip_headers.unwrap_or_default() {
            let valid_name = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.!%*+`'~".contains(&b));
            if !valid_name {
                return Err(bad("sipHeaders", format!("{name:?} is not a header name")));
            }
            if RESERVED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
                return Err(bad(
                    "sipHeaders",
                    format!("{name} is set by the gateway and cannot be overridden"),
                ));
            }
            if value.contains(['\r', '\n', '\0']) {
                return Err(bad(
                    "sipHeaders",
                    format!("value of {name} must not contain CR, LF or NUL"),
                ));
            }
            headers.push((name, value));
        }
        Ok(CallSpec {
            call_id,
            callee_uri,
            caller,
            sip_login: login,
            auth_name,
            password,
            domain,
            proxy_host,
            proxy_port,
            locate: !explicit_port,
            sticky,
            registrar,
            transport,
            srtp,
            register: self.sip_register_required.unwrap_or(false),
            has_audio,
            has_video,
            stream,
            record: self.record.unwrap_or(false),
            headers,
            direction: crate::sip::sdp::Direction::SendRecv,
            audio_codecs: None,
            audio_labels: Vec::new(),
            exchange: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(v: serde_json::Value) -> CallStartupRequest {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn debug_output_never_shows_the_password() {
        let r = req(
            serde_json::json!({"callee":"1","sipLogin":"a","sipDomain":"d","sipPassword":"hunter2"}),
        );
        assert!(!format!("{r:?}").contains("hunter2"));
        let spec = r.validate(|| "g".into()).unwrap();
        assert!(!format!("{spec:?}").contains("hunter2"));
        assert_eq!(spec.password.expose(), "hunter2");
    }

    #[test]
    fn callee_is_normalised() {
        let s =
            req(serde_json::json!({"callee":"10005","sipLogin":"10006","sipDomain":"example.net"}))
                .validate(|| "gen".into())
                .unwrap();
        assert_eq!(s.callee_uri, "sip:10005@example.net");
        assert_eq!(s.call_id, "gen");
        assert_eq!(s.stream, "gen");
        assert_eq!(s.proxy_host, "example.net");
        assert_eq!(s.proxy_port, 5060);
    }

    #[test]
    fn requests_go_where_the_request_uri_says_unless_a_proxy_is_given() {
        let spec = |v: serde_json::Value| req(v).validate(|| "g".into()).unwrap();
        // The case: the URI's own port, not the domain's default port.
        let s = spec(
            serde_json::json!({"callee":"sip:answer@127.0.0.1:5070","sipLogin":"a","sipDomain":"127.0.0.1"}),
        );
        assert_eq!(
            (s.proxy_host.as_str(), s.proxy_port, s.sticky),
            ("127.0.0.1", 5070, false)
        );
        assert_eq!(s.registrar, ("127.0.0.1".to_string(), 5060));
        // A number at sipDomain uses sipPort (the domain's port).
        let s = spec(
            serde_json::json!({"callee":"10005","sipLogin":"a","sipDomain":"127.0.0.1","sipPort":"5080"}),
        );
        assert_eq!((s.proxy_host.as_str(), s.proxy_port), ("127.0.0.1", 5080));
        // Another host without a port: 5060 there, not sipPort of the domain.
        let s = spec(
            serde_json::json!({"callee":"sip:bob@10.0.0.9","sipLogin":"a","sipDomain":"127.0.0.1","sipPort":"5080"}),
        );
        assert_eq!((s.proxy_host.as_str(), s.proxy_port), ("10.0.0.9", 5060));
        // An explicit outbound proxy wins and stays on the dialog's path.
        let s = spec(
            serde_json::json!({"callee":"sip:answer@127.0.0.1:5070","sipLogin":"a","sipDomain":"example.com","sipOutboundProxy":"10.1.1.1","sipPort":5062}),
        );
        assert_eq!(
            (s.proxy_host.as_str(), s.proxy_port, s.sticky),
            ("10.1.1.1", 5062, true)
        );
        assert_eq!(s.registrar, ("10.1.1.1".to_string(), 5062));
    }

    #[test]
    fn bad_fields_are_named() {
        let cases = [
            (
                serde_json::json!({"callee":"a b","sipLogin":"x","sipDomain":"d"}),
                "callee",
            ),
            (
                serde_json::json!({"callee":"1","sipLogin":"x","sipDomain":"d e"}),
                "sipDomain",
            ),
            (
                serde_json::json!({"callee":"1","sipLogin":"x","sipDomain":"d","callId":"../x"}),
                "callId",
            ),
            (
                serde_json::json!({"callee":"1","sipLogin":"x","sipDomain":"d","sipTransport":"sctp"}),
                "sipTransport",
            ),
            (
                serde_json::json!({"callee":"1","sipLogin":"x","sipDomain":"d","srtp":"sdes"}),
                "srtp",
            ),
            (
                serde_json::json!({"callee":"1","sipLogin":"x","sipDomain":"d","sipHeaders":{"Via":"x"}}),
                "sipHeaders",
            ),
            (
                serde_json::json!({"callee":"1","sipLogin":"x","sipDomain":"d","sipHeaders":{"X-A":"a\r\nBYE"}}),
                "sipHeaders",
            ),
            (
                serde_json::json!({"callee":"1","sipLogin":"x","sipDomain":"d","toStream":"a/b"}),
                "toStream",
            ),
            (
                serde_json::json!({"callee":"1","sipLogin":"x","sipDomain":"d","hasAudio":false}),
                "hasAudio",
            ),
        ];
        for (body, field) in cases {
            let e = req(body.clone())
                .validate(|| "g".into())
                .unwrap_err()
                .to_string();
            assert!(e.starts_with(field), "{body}: {e}");
        }
    }
}
