//! The call as the API sees it: the startup request (WCS field names), its validation, and
//! the call object returned by `/call/find`. A call holds legs; today one (the callee), and
//! the model already carries the leg name so two-party calls fit without a schema change.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::api::json::{flex_bool, flex_port};
use crate::error::ApiError;
use crate::sip::endpoint::Transport;
use crate::sip::ua::CallPhase;

/// Body of `/call/startup` (WCS field names; booleans and the port may be strings).
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CallStartupRequest {
    /// Our id for the call (1–128 of A-Z a-z 0-9 _ . -); generated when absent.
    pub call_id: Option<String>,
    /// Who to call: a user part (`10005`, then `@sipDomain` is added) or a full `sip:` URI.
    pub callee: String,
    pub sip_login: String,
    /// Digest user name; defaults to sipLogin.
    pub sip_authentication_name: Option<String>,
    /// Never returned nor logged.
    #[schema(value_type = Option<String>)]
    pub sip_password: Option<Secret>,
    pub sip_domain: String,
    /// Host (name or IP) all requests are sent to; defaults to sipDomain.
    pub sip_outbound_proxy: Option<String>,
    /// Port of the outbound proxy (or domain); default 5060.
    #[serde(default, deserialize_with = "flex_port")]
    #[schema(value_type = Option<u16>)]
    pub sip_port: Option<u16>,
    /// `udp` (default) or `tcp`.
    pub sip_transport: Option<String>,
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
    /// Extra headers for the INVITE (`X-*` and other non-structural headers).
    pub sip_headers: Option<BTreeMap<String, String>>,
}

/// A password: its `Debug` never shows it, so no log line or error can carry it.
#[derive(Clone, Default, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<hidden>")
    }
}

/// A validated startup request.
#[derive(Debug, Clone)]
pub struct CallSpec {
    pub call_id: String,
    pub callee_uri: String,
    pub sip_login: String,
    pub auth_name: String,
    pub password: Secret,
    pub domain: String,
    pub proxy_host: String,
    pub proxy_port: u16,
    pub transport: Transport,
    pub register: bool,
    pub has_audio: bool,
    pub has_video: bool,
    pub stream: String,
    pub record: bool,
    pub headers: Vec<(String, String)>,
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

pub fn is_valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

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
        let domain = self.sip_domain.trim().to_string();
        if !is_host(&domain) {
            return Err(bad(
                "sipDomain",
                format!("{domain:?} is not a host name or address"),
            ));
        }
        let login = self.sip_login.trim().to_string();
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
        let callee = self.callee.trim();
        let callee_uri = if callee.is_empty() {
            return Err(bad("callee", "must not be empty".into()));
        } else if callee.starts_with("sip:") || callee.starts_with("sips:") {
            callee.to_string()
        } else if let Some((user, host)) = callee.split_once('@') {
            if !is_user(user) || !is_host(host) {
                return Err(bad("callee", format!("{callee:?} is not user@host")));
            }
            format!("sip:{callee}")
        } else if is_user(callee) {
            format!("sip:{callee}@{domain}")
        } else {
            return Err(bad(
                "callee",
                format!("{callee:?} is not a SIP user or URI"),
            ));
        };
        if callee_uri.starts_with("sips:") {
            return Err(bad(
                "callee",
                "sips: URIs need TLS, which the gateway does not offer yet".into(),
            ));
        }
        if callee_uri.contains(['\r', '\n', ' ', '<', '>', '"']) {
            return Err(bad(
                "callee",
                format!("{callee_uri:?} contains characters not allowed in a URI"),
            ));
        }
        crate::sip::dialog::parse_uri(&callee_uri).map_err(|e| bad("callee", e.to_string()))?;
        let proxy_host = match self
            .sip_outbound_proxy
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
        {
            Some(p) if is_host(&p) => p,
            Some(p) => {
                return Err(bad(
                    "sipOutboundProxy",
                    format!("{p:?} is not a host name or address"),
                ))
            }
            None => domain.clone(),
        };
        let transport = match self
            .sip_transport
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            None => Transport::Udp,
            Some(t) => Transport::parse(t)
                .ok_or_else(|| bad("sipTransport", format!("{t:?}: expected udp or tcp")))?,
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
            sip_login: login,
            auth_name,
            password,
            domain,
            proxy_host,
            proxy_port: self.sip_port.unwrap_or(5060),
            transport,
            register: self.sip_register_required.unwrap_or(false),
            has_audio,
            has_video,
            stream,
            record: self.record.unwrap_or(false),
            headers,
        })
    }
}

/// One media leg of a call as the API shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LegInfo {
    /// `callee` today; `caller` for two-party calls.
    pub name: String,
    pub uri: String,
    pub tracks: Vec<LegTrackInfo>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LegTrackInfo {
    /// audio or video
    pub kind: String,
    pub codec: Option<String>,
    pub payload_type: Option<u8>,
    pub local_rtp_port: u16,
    pub remote_rtp: Option<String>,
    /// sendrecv, sendonly, recvonly or inactive (as the far end declared).
    pub direction: Option<String>,
    pub packets_received: u64,
    pub packets_sent: u64,
    pub invalid_packets: u64,
}

/// The call object of `/call/startup`, `/call/find` and `/call/find_all`.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CallInfo {
    pub call_id: String,
    pub callee: String,
    pub sip_login: String,
    pub sip_domain: String,
    pub sip_outbound_proxy: String,
    pub sip_port: u16,
    pub sip_transport: String,
    pub sip_register_required: bool,
    pub has_audio: bool,
    pub has_video: bool,
    pub to_stream: String,
    pub record: bool,
    pub status: CallPhase,
    /// Last SIP status code of the call's INVITE (or of its end).
    pub sip_status: Option<u16>,
    pub reason: Option<String>,
    /// The SIP Call-ID of the call's dialog.
    pub sip_call_id: Option<String>,
    /// Unix time in milliseconds.
    pub created_at: u64,
    pub established_at: Option<u64>,
    pub ended_at: Option<u64>,
    pub legs: Vec<LegInfo>,
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
