//! The OpenAPI schemas of the call object (`CallInfo` and what it holds). The real types live
//! in the call, SIP and RTP cores, which know nothing of HTTP; these mirrors only document
//! them, under the same names, fields and serde attributes. The test below fails when a
//! mirror and its real type serialize differently.

use utoipa::ToSchema;

/// A call the gateway placed (or took) for a media exchange of another call.
#[derive(ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExchangeLink {
    /// The call whose media this one exchanges.
    pub call_id: String,
    /// `send_to_uri`, `fetch_from_uri`, `send_from_call` (listen-in) or `fetch_to_call`
    /// (barge-in).
    pub kind: String,
    /// `caller`, `callee` or `both`: the leg of that call.
    pub leg: String,
}

/// One media leg of a call as the API shows it.
#[derive(ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LegInfo {
    /// `callee` (the party an outbound call reached) or `caller` (who called in).
    pub name: String,
    pub uri: String,
    /// The leg's own status (the call's status for a one-leg call).
    pub status: String,
    /// The SIP Call-ID of this leg's dialog.
    pub sip_call_id: Option<String>,
    pub tracks: Vec<LegTrackInfo>,
}

#[derive(ToSchema)]
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
    /// The SRTP crypto suite of this line (SDES, RFC 4568), when it is encrypted. Keys are
    /// never shown.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub srtp: Option<String>,
    /// SRTP/SRTCP packets that failed authentication (wrong key, tampering): dropped.
    pub srtp_auth_failures: u64,
}

/// The call object of `/call/startup`, `/call/find` and `/call/find_all`.
#[derive(ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CallInfo {
    pub call_id: String,
    /// `outbound` (placed by `/call/startup`) or `inbound` (an INVITE to the gateway).
    pub direction: String,
    /// Inbound: the From URI of the caller.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub caller: Option<String>,
    /// Outbound: who was called; inbound: the Request-URI the caller dialled.
    pub callee: String,
    pub sip_login: String,
    pub sip_domain: String,
    pub sip_outbound_proxy: String,
    pub sip_port: u16,
    pub sip_transport: String,
    /// `off`, `optional` or `mandatory`: SRTP with SDES keys (each track says whether its
    /// media is encrypted, and with which suite).
    pub srtp: SrtpPolicy,
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
    /// Set on a call that carries a media exchange of another call.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exchange_of: Option<ExchangeLink>,
}

/// WCS's call status set.
#[derive(ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CallPhase {
    Pending,
    Trying,
    Ring,
    RingMedia,
    SessionProgress,
    Established,
    Hold,
    Busy,
    Failed,
    Finish,
}

/// When a call uses SRTP (`sip_srtp`, the REST `srtp` field).
#[derive(ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SrtpPolicy {
    /// Plain RTP; a far end's crypto lines are not answered.
    Off,
    /// Offer RTP/AVP with `a=crypto` (best-effort SRTP, as many providers do); answer an
    /// offer's crypto line when we support one. Plain RTP when the far end takes no crypto.
    Optional,
    /// Offer RTP/SAVP; an answer or offer without a usable crypto line fails the call (488).
    Mandatory,
}

/// Each mirror, as the OpenAPI document the gateway serves has it, against a real value as
/// serde writes it. Seen to fail, each change made then undone: a field `extra: u8` added to
/// the real `CallInfo` (and to the value below) failed `call_info_mirrors_the_real_call_object`
/// with both key sets; so did `srtpAuthFailures` dropped from the mirror `LegTrackInfo` (at
/// `CallInfo.legs[0].tracks[0]`) and the mirror's `sipPort` made a `String` (a type check);
/// `Hold` dropped from the mirror `CallPhase` failed `call_phase_mirrors_every_status`.
#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde::Serialize;
    use serde_json::Value;

    use crate::call::model::{CallInfo, ExchangeLink, LegInfo, LegTrackInfo};
    use crate::rtp::srtp::SrtpPolicy;
    use crate::sip::ua::CallPhase;

    /// `components.schemas` of the served document: each schema by name.
    fn components() -> Value {
        serde_json::to_value(crate::api::openapi::api()).unwrap()["components"]["schemas"].take()
    }

    /// Fails where the real value `v` and the mirror's `schema` differ: an object's keys
    /// against the properties, a string against the enum, a value's JSON type against the
    /// schema's; then each key, item or reference, recursively.
    fn compare(components: &Value, schema: &Value, v: &Value, at: &str) {
        // A reference, or an Option's `oneOf` [reference, null].
        let reference = schema["$ref"]
            .as_str()
            .or_else(|| schema["oneOf"][0]["$ref"].as_str());
        let schema = match reference.and_then(|r| r.rsplit('/').next()) {
            Some(name) => &components[name],
            None => schema,
        };
        let types = match &schema["type"] {
            Value::Array(ts) => ts.clone(),
            t => vec![t.clone()],
        };
        let kind = match v {
            Value::Null => "null",
            Value::Bool(_) => "boolean",
            Value::Number(n) if n.is_f64() => "number",
            Value::Number(_) => "integer",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::Object(_) => "object",
        };
        assert!(types.contains(&kind.into()), "{at}: {v} is not {types:?}");
        match v {
            Value::Object(o) => {
                let props = &schema["properties"];
                let mirrored: BTreeSet<&String> = props
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(k, _)| k)
                    .collect();
                let real: BTreeSet<&String> = o.keys().collect();
                assert_eq!(
                    real, mirrored,
                    "{at}: the real type's keys, then the mirror's"
                );
                for (k, x) in o {
                    compare(components, &props[k], x, &format!("{at}.{k}"));
                }
            }
            Value::Array(a) => {
                assert!(!a.is_empty(), "{at}: an empty list checks nothing");
                for (i, x) in a.iter().enumerate() {
                    compare(components, &schema["items"], x, &format!("{at}[{i}]"));
                }
            }
            _ => {
                if let Some(values) = schema["enum"].as_array() {
                    assert!(values.contains(v), "{at}: {v} is not in {values:?}");
                }
            }
        }
    }

    /// The enum `name` of the document lists exactly how serde writes `all`.
    fn same_enum<T: Serialize>(name: &str, all: &[T]) {
        let real: BTreeSet<String> = all
            .iter()
            .map(|x| serde_json::to_value(x).unwrap().to_string())
            .collect();
        let components = components();
        let mirrored: BTreeSet<String> = components[name]["enum"]
            .as_array()
            .unwrap_or_else(|| panic!("{name} is no enum in the document"))
            .iter()
            .map(Value::to_string)
            .collect();
        assert_eq!(real, mirrored, "{name}: the real values, then the mirror's");
    }

    #[test]
    fn call_info_mirrors_the_real_call_object() {
        // Every Option is Some, so serde writes every key (even the skipped-when-None ones).
        let call = CallInfo {
            call_id: "c1".into(),
            direction: "outbound".into(),
            caller: Some("sip:alice@pbx.example.com".into()),
            callee: "sip:10005@pbx.example.com".into(),
            sip_login: "10001".into(),
            sip_domain: "pbx.example.com".into(),
            sip_outbound_proxy: "pbx.example.com".into(),
            sip_port: 5060,
            sip_transport: "UDP".into(),
            srtp: SrtpPolicy::Optional,
            sip_register_required: true,
            has_audio: true,
            has_video: false,
            to_stream: "call_stream1".into(),
            record: false,
            status: CallPhase::Established,
            sip_status: Some(200),
            reason: Some("OK".into()),
            sip_call_id: Some("a84b4c76e66710@127.0.0.1".into()),
            created_at: 1_796_671_909_282,
            established_at: Some(1_796_671_911_000),
            ended_at: Some(1_796_671_999_000),
            legs: vec![LegInfo {
                name: "callee".into(),
                uri: "sip:10005@pbx.example.com".into(),
                status: "ESTABLISHED".into(),
                sip_call_id: Some("a84b4c76e66710@127.0.0.1".into()),
                tracks: vec![LegTrackInfo {
                    kind: "audio".into(),
                    codec: Some("PCMU".into()),
                    payload_type: Some(0),
                    local_rtp_port: 20000,
                    remote_rtp: Some("192.0.2.10:40000".into()),
                    direction: Some("sendrecv".into()),
                    packets_received: 91,
                    packets_sent: 90,
                    invalid_packets: 0,
                    srtp: Some("AES_CM_128_HMAC_SHA1_80".into()),
                    srtp_auth_failures: 0,
                }],
            }],
            exchange_of: Some(ExchangeLink {
                call_id: "c0".into(),
                kind: "send_to_uri".into(),
                leg: "both".into(),
            }),
        };
        let components = components();
        let schema = serde_json::json!({"$ref": "#/components/schemas/CallInfo"});
        let v = serde_json::to_value(&call).unwrap();
        compare(&components, &schema, &v, "CallInfo");
    }

    #[test]
    fn call_phase_mirrors_every_status() {
        use CallPhase::*;
        // No wildcard: a new status does not compile until it is chained in here.
        let all: Vec<CallPhase> = std::iter::successors(Some(Pending), |p| match p {
            Pending => Some(Trying),
            Trying => Some(Ring),
            Ring => Some(RingMedia),
            RingMedia => Some(SessionProgress),
            SessionProgress => Some(Established),
            Established => Some(Hold),
            Hold => Some(Busy),
            Busy => Some(Failed),
            Failed => Some(Finish),
            Finish => None,
        })
        .collect();
        same_enum("CallPhase", &all);
    }

    #[test]
    fn srtp_policy_mirrors_every_policy() {
        use SrtpPolicy::*;
        // No wildcard: a new policy does not compile until it is chained in here.
        let all: Vec<SrtpPolicy> = std::iter::successors(Some(Off), |p| match p {
            Off => Some(Optional),
            Optional => Some(Mandatory),
            Mandatory => None,
        })
        .collect();
        same_enum("SrtpPolicy", &all);
    }
}
