//! The call as the API sees it: the validated startup request ([`CallSpec`]) and the call
//! object returned by `/call/find`, with its legs. The JSON request and its validation live in
//! `api/call_request.rs`: the call layer takes only checked values. The OpenAPI schemas of
//! the call object are mirrors in `api/call_schema.rs`, whose test fails when they differ.

use serde::Serialize;

use crate::sip::endpoint::Transport;
use crate::sip::sdp::{Direction, RtpMap};
use crate::sip::ua::CallPhase;

pub use crate::secret::Secret;

/// The first party of a two-party call: its URI and where its INVITE goes.
#[derive(Debug, Clone)]
pub struct PartySpec {
    pub uri: String,
    pub proxy_host: String,
    pub proxy_port: u16,
    /// No port was given: NAPTR/SRV decide (RFC 3263).
    pub locate: bool,
}

/// A validated startup request.
#[derive(Debug, Clone)]
pub struct CallSpec {
    pub call_id: String,
    pub callee_uri: String,
    /// Two-party: the caller, called first, then bridged with the callee.
    pub caller: Option<PartySpec>,
    pub sip_login: String,
    pub auth_name: String,
    pub password: Secret,
    pub domain: String,
    /// The next hop of the INVITE: the outbound proxy, else the Request-URI's host.
    pub proxy_host: String,
    pub proxy_port: u16,
    /// No port was given for the next hop: NAPTR/SRV decide it (RFC 3263), with failover
    /// to the next target.
    pub locate: bool,
    /// An explicit outbound proxy: requests inside the dialog go there too.
    pub sticky: bool,
    /// Where REGISTER goes: the outbound proxy, else sipDomain (with sipPort).
    pub registrar: (String, u16),
    pub transport: Transport,
    /// SRTP with SDES keys (RFC 4568): the request's `srtp`; None: `sip_srtp`.
    pub srtp: Option<crate::rtp::srtp::SrtpPolicy>,
    pub register: bool,
    pub has_audio: bool,
    pub has_video: bool,
    pub stream: String,
    pub record: bool,
    pub headers: Vec<(String, String)>,
    /// What our offer asks for: sendrecv, or sendonly for a fork of another call's media.
    pub direction: Direction,
    /// The audio codecs to offer, in order, instead of ours (a media exchange's `body`).
    pub audio_codecs: Option<Vec<RtpMap>>,
    /// Empty: one audio line. Else one audio line per label, in order, each with its
    /// `a=label` (a media exchange forking each party of a call on its own line).
    pub audio_labels: Vec<String>,
    /// This call carries a media exchange of another call: no recording, no SIPREC, no
    /// agent stream of its own.
    pub exchange: Option<ExchangeLink>,
}

/// A call the gateway placed (or took) for a media exchange of another call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
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
#[derive(Debug, Clone, Serialize)]
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

#[derive(Debug, Clone, Serialize)]
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
#[derive(Debug, Clone, Serialize)]
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
    pub srtp: crate::rtp::srtp::SrtpPolicy,
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

#[cfg(test)]
impl CallInfo {
    /// A call object for the call layer's unit tests: `call_id` streams to a stream of the
    /// same name, pending, nothing negotiated.
    pub(crate) fn sample(call_id: &str, direction: &str) -> Self {
        Self {
            call_id: call_id.into(),
            direction: direction.into(),
            caller: None,
            callee: "sip:bob@h".into(),
            sip_login: "gw".into(),
            sip_domain: "h".into(),
            sip_outbound_proxy: "h".into(),
            sip_port: 5060,
            sip_transport: "udp".into(),
            srtp: Default::default(),
            sip_register_required: false,
            has_audio: true,
            has_video: false,
            to_stream: call_id.into(),
            record: false,
            status: CallPhase::Pending,
            sip_status: None,
            reason: None,
            sip_call_id: None,
            created_at: 1_000_000,
            established_at: None,
            ended_at: None,
            legs: Vec::new(),
            exchange_of: None,
        }
    }
}
