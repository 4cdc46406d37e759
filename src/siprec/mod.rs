//! SIPREC recording client (RFC 7866/7865/8068), after OpenSIPS's siprec module: a call's
//! media is forked to a Session Recording Server over a separate SIP dialog whose INVITE
//! carries SDP and RFC 7865 metadata. SRS URIs are tried in order until one answers 2xx; a
//! negative reply matching `skipFailoverCodes` stops the failover. Several independent
//! sessions (instances) can record one call. The call manager drives the sessions
//! (`call/siprec.rs`); this module holds the request model, the body builders and the fork.
pub mod body;
pub mod fork;
pub mod metadata;

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::RequestError;
use crate::sip::endpoint::Transport;

/// Body of `/siprec/start` (OpenSIPS's `$siprec` fields in camelCase).
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SiprecStartRequest {
    pub call_id: String,
    /// Comma-separated SRS URIs, tried in order: `sip:srs1.example.com, sip:srs2;transport=tcp`.
    /// Defaults to the `siprec_srs` property.
    pub srs: Option<String>,
    /// Names an independent recording of the same call (default `default`).
    pub instance: Option<String>,
    /// Group name; a `group` element with a fresh id is added to the metadata.
    pub group: Option<String>,
    /// XML block (e.g. `<nameID aor="sip:a@x"><name>A</name></nameID>`) describing the
    /// caller (the gateway side); default: built from the call's From.
    pub caller: Option<String>,
    /// XML block describing the callee; default: built from the call's To.
    pub callee: Option<String>,
    /// Extra headers for the INVITE to the SRS, `Name: value` lines each ending in CRLF.
    pub headers: Option<String>,
    pub from_uri: Option<String>,
    pub to_uri: Option<String>,
    /// Address the media is sent from (announced in the SDP to the SRS).
    pub media: Option<String>,
    pub group_custom_extension: Option<String>,
    pub session_custom_extension: Option<String>,
    /// Regular expression over reply codes that stop the failover (e.g. `408|487`).
    pub skip_failover_codes: Option<String>,
}

/// `/siprec/pause`, `/resume`, `/stop`, `/find`.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SiprecControlRequest {
    /// Required except for `/siprec/find`, where it filters.
    pub call_id: Option<String>,
    /// One instance; absent: every instance of the call.
    pub instance: Option<String>,
}

/// One SRS of the failover list.
#[derive(Debug, Clone)]
pub struct SrsTarget {
    pub uri: String,
    pub transport: Transport,
    pub host: String,
    pub port: u16,
    /// Resolved when the session starts; None: cannot be resolved (that attempt fails).
    pub addr: Option<SocketAddr>,
}

/// A validated start request.
#[derive(Debug, Clone)]
pub struct SiprecSpec {
    pub instance: String,
    pub srs: Vec<SrsTarget>,
    pub group: Option<String>,
    pub caller_xml: Option<String>,
    pub callee_xml: Option<String>,
    pub headers: Vec<(String, String)>,
    pub from_uri: Option<String>,
    pub to_uri: Option<String>,
    pub media_ip: Option<std::net::IpAddr>,
    pub group_extension: Option<String>,
    pub session_extension: Option<String>,
    pub skip_failover: Option<regex::Regex>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SiprecState {
    /// The call is not answered yet; recording starts when it is.
    Waiting,
    /// INVITE sent to an SRS.
    Starting,
    Recording,
    Paused,
    Stopped,
    /// No SRS accepted (see `attempts`).
    Failed,
}

impl SiprecState {
    pub fn is_final(self) -> bool {
        matches!(self, SiprecState::Stopped | SiprecState::Failed)
    }
}

/// One SRS tried and what it answered.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SrsAttempt {
    pub server: String,
    pub sip_status: Option<u16>,
    pub reason: String,
}

/// A Recording Session as `/siprec/find` shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SiprecInfo {
    pub call_id: String,
    pub instance: String,
    pub state: SiprecState,
    /// The SRS that answered.
    pub server: Option<String>,
    /// RFC 7865 session id.
    pub session_id: String,
    /// Call-ID of the SIPREC dialog.
    pub sip_call_id: Option<String>,
    /// Unix ms of the last state change.
    pub since: u64,
    pub packets_forked: u64,
    pub attempts: Vec<SrsAttempt>,
}

fn bad(field: &str, why: impl std::fmt::Display) -> RequestError {
    RequestError::BadRequest(format!("{field}: {why}"))
}

/// Parses `sip:host[:port][;transport=tcp|tls]` (and `sips:host`) lists.
pub fn parse_srs_list(list: &str) -> Result<Vec<SrsTarget>, RequestError> {
    let mut out = Vec::new();
    for raw in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let uri = raw.trim_start_matches('<').trim_end_matches('>');
        if uri.contains(['\r', '\n', ' ', '"', '<', '>']) {
            return Err(bad("srs", format!("{raw:?} is not a SIP URI")));
        }
        let parsed = crate::sip::dialog::parse_uri(uri).map_err(|e| bad("srs", e))?;
        let sips = uri.starts_with("sips:");
        if !uri.starts_with("sip:") && !sips {
            return Err(bad(
                "srs",
                format!("{raw:?}: only sip: and sips: URIs are supported"),
            ));
        }
        let transport = match parsed.transport() {
            None if sips => Transport::Tls,
            None => Transport::Udp,
            Some(rsip::Transport::Tls) => Transport::Tls,
            Some(rsip::Transport::Udp) if !sips => Transport::Udp,
            Some(rsip::Transport::Tcp) if !sips => Transport::Tcp,
            Some(t) => {
                return Err(bad(
                    "srs",
                    format!("{raw:?}: transport {t} is not supported"),
                ))
            }
        };
        let host = parsed.host_with_port.host.to_string();
        let port = parsed
            .host_with_port
            .port
            .map(|p| *p.value())
            .unwrap_or(transport.default_port());
        out.push(SrsTarget {
            uri: uri.to_string(),
            transport,
            host,
            port,
            addr: None,
        });
    }
    if out.is_empty() {
        return Err(bad(
            "srs",
            "no SRS given (and the siprec_srs property is empty)",
        ));
    }
    Ok(out)
}

/// `Name: value\r\n` lines; anything that could start a request line or a body is refused.
pub fn parse_headers(text: &str) -> Result<Vec<(String, String)>, RequestError> {
    const RESERVED: &[&str] = &[
        "via",
        "from",
        "to",
        "call-id",
        "cseq",
        "content-length",
        "content-type",
        "contact",
        "max-forwards",
        "route",
        "record-route",
        "require",
    ];
    if text.is_empty() {
        return Ok(Vec::new());
    }
    if !text.ends_with("\r\n") {
        return Err(bad("headers", "each header must end with CRLF"));
    }
    let mut out = Vec::new();
    for line in text[..text.len() - 2].split("\r\n") {
        if line.is_empty() {
            return Err(bad("headers", "an empty line would start a body"));
        }
        if line.contains(['\r', '\n', '\0']) {
            return Err(bad(
                "headers",
                "a bare CR or LF is not allowed inside a header",
            ));
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| bad("headers", format!("{line:?} is not `Name: value`")))?;
        let name = name.trim();
        let token = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.!%*+`'~".contains(&b));
        if !token {
            return Err(bad("headers", format!("{name:?} is not a header name")));
        }
        if RESERVED.contains(&name.to_ascii_lowercase().as_str()) {
            return Err(bad("headers", format!("{name} is set by the gateway")));
        }
        out.push((name.to_string(), value.trim().to_string()));
    }
    Ok(out)
}

impl SiprecStartRequest {
    /// Validates every field; `default_srs` and `default_skip` come from the properties.
    pub fn validate(
        self,
        default_srs: &str,
        default_skip: &str,
    ) -> Result<(String, SiprecSpec), RequestError> {
        let instance = self
            .instance
            .filter(|s| !s.trim().is_empty())
            .unwrap_or_else(|| "default".into());
        if !crate::ids::is_valid_id(&instance) {
            return Err(bad(
                "instance",
                format!("{instance:?} must be 1-128 characters of A-Z a-z 0-9 _ . -"),
            ));
        }
        let srs_text = self
            .srs
            .filter(|s| !s.trim().is_empty())
            .unwrap_or_else(|| default_srs.to_string());
        let srs = parse_srs_list(&srs_text)?;
        let block = |field: &str, v: Option<String>| -> Result<Option<String>, RequestError> {
            v.filter(|s| !s.trim().is_empty())
                .map(|s| metadata::check_block(&s).map_err(|e| bad(field, e)))
                .transpose()
        };
        let skip = self
            .skip_failover_codes
            .filter(|s| !s.is_empty())
            .or_else(|| Some(default_skip.to_string()).filter(|s| !s.is_empty()));
        let skip_failover = skip
            .map(|s| {
                regex::Regex::new(&format!("^(?:{s})$")).map_err(|e| {
                    bad(
                        "skipFailoverCodes",
                        format!("not a regular expression: {e}"),
                    )
                })
            })
            .transpose()?;
        let uri_field = |field: &str, v: Option<String>| -> Result<Option<String>, RequestError> {
            match v.filter(|s| !s.trim().is_empty()) {
                None => Ok(None),
                Some(u) => {
                    let u = u.trim().to_string();
                    if u.contains(['\r', '\n', ' ', '<', '>', '"']) {
                        return Err(bad(field, format!("{u:?} is not a SIP URI")));
                    }
                    crate::sip::dialog::parse_uri(&u).map_err(|e| bad(field, e))?;
                    Ok(Some(u))
                }
            }
        };
        let media_ip = match self.media.filter(|s| !s.trim().is_empty()) {
            None => None,
            Some(m) => Some(
                m.trim()
                    .parse()
                    .map_err(|_| bad("media", format!("{m:?} is not an IP address")))?,
            ),
        };
        let group = self.group.filter(|s| !s.trim().is_empty());
        let spec = SiprecSpec {
            instance,
            srs,
            caller_xml: block("caller", self.caller)?,
            callee_xml: block("callee", self.callee)?,
            group_extension: block("groupCustomExtension", self.group_custom_extension)?,
            session_extension: block("sessionCustomExtension", self.session_custom_extension)?,
            group,
            headers: parse_headers(self.headers.as_deref().unwrap_or(""))?,
            from_uri: uri_field("fromUri", self.from_uri)?,
            to_uri: uri_field("toUri", self.to_uri)?,
            media_ip,
            skip_failover,
        };
        Ok((self.call_id, spec))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn srs_lists_parse_with_transport_and_port() {
        let l = parse_srs_list("sip:127.0.0.1:5080, sip:srs.example.com;transport=tcp").unwrap();
        assert_eq!(l.len(), 2);
        assert_eq!(
            (l[0].host.as_str(), l[0].port, l[0].transport),
            ("127.0.0.1", 5080, Transport::Udp)
        );
        assert_eq!((l[1].port, l[1].transport), (5060, Transport::Tcp));
        let l = parse_srs_list("sips:srs.example.com, sip:10.0.0.1;transport=tls").unwrap();
        assert_eq!((l[0].port, l[0].transport), (5061, Transport::Tls));
        assert_eq!((l[1].port, l[1].transport), (5061, Transport::Tls));
        assert!(parse_srs_list("sips:srs.example.com;transport=udp").is_err());
        assert!(parse_srs_list("").is_err());
        assert!(parse_srs_list("sip:a b").is_err());
        assert!(parse_srs_list("http://x").is_err());
    }

    #[test]
    fn headers_must_be_crlf_lines_without_injection() {
        assert_eq!(parse_headers("X-A: 1\r\nX-B: two\r\n").unwrap().len(), 2);
        for bad in [
            "X-A: 1",
            "X-A: 1\nX-B: 2\r\n",
            "X-A: 1\r\n\r\nbody",
            "X-A: 1\rINVITE sip:x SIP/2.0\r\n",
            "INVITE sip:x SIP/2.0\r\n",
            "Via: x\r\n",
        ] {
            assert!(parse_headers(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn skip_codes_are_anchored() {
        let req: SiprecStartRequest = serde_json::from_value(serde_json::json!({
            "callId": "c", "srs": "sip:127.0.0.1", "skipFailoverCodes": "408|487"
        }))
        .unwrap();
        let (_, spec) = req.validate("", "").unwrap();
        let re = spec.skip_failover.unwrap();
        assert!(
            re.is_match("408") && re.is_match("487") && !re.is_match("4080") && !re.is_match("503")
        );
    }
}
