//! Configuration: `properties/sipstream.properties` (key=value, `#` comments), then
//! `SIPSTREAM_<KEY>` environment variables, then `--set key=value` flags, in that order.
//!
//! Every key has a default here and a commented line in the shipped properties file; a test
//! keeps the two in step. Unknown keys are an error (a typo must not silently fall back to a
//! default that places calls somewhere else).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{origin}: line {line}: expected key=value, got {text:?}")]
    Syntax {
        origin: String,
        line: usize,
        text: String,
    },
    #[error("{origin}: unknown key {key:?}")]
    UnknownKey { origin: String, key: String },
    #[error("{origin}: key {key}: {message} (value {value:?})")]
    Value {
        origin: String,
        key: String,
        value: String,
        message: String,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("command line: {0}")]
    Args(String),
}

/// What an API key may do, each scope including the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ApiScope {
    /// GET requests, `find`/`find_all` methods, `/events`, `/metrics`, players.
    Read,
    /// Everything that changes calls and streams.
    Control,
    /// Control, and downloading recordings.
    Admin,
}

impl ApiScope {
    pub fn as_str(self) -> &'static str {
        match self {
            ApiScope::Read => "read",
            ApiScope::Control => "control",
            ApiScope::Admin => "admin",
        }
    }
}

/// One entry of `api_keys`: `KEY` (admin) or `KEY:read|control|admin`.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey {
    pub key: crate::secret::Secret,
    pub scope: ApiScope,
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiKey(<hidden>:{})", self.scope.as_str())
    }
}

impl ApiKey {
    /// Errors never quote the entry: it is a secret.
    fn parse(entry: &str) -> Result<ApiKey, ConfigError> {
        let (key, scope) = match entry.rsplit_once(':') {
            Some((k, s)) => {
                let scope = match s.trim() {
                    "read" => ApiScope::Read,
                    "control" => ApiScope::Control,
                    "admin" => ApiScope::Admin,
                    _ => {
                        return Err(ConfigError::Invalid(
                            "api_keys: a scope after ':' must be read, control or admin".into(),
                        ))
                    }
                };
                (k.trim(), scope)
            }
            None => (entry.trim(), ApiScope::Admin),
        };
        if key.len() < 8 || key.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(ConfigError::Invalid(
                "api_keys: each key needs at least 8 characters and no spaces".into(),
            ));
        }
        Ok(ApiKey {
            key: crate::secret::Secret::new(key),
            scope,
        })
    }
}

/// The gateway's settings. Field names are the property keys.
#[derive(Debug, Clone)]
pub struct Config {
    pub rest_address: IpAddr,
    pub rest_port: u16,
    pub api_keys: Vec<ApiKey>,
    /// Signs stream tokens (`/stream/token`); empty: a random secret per process.
    pub api_token_secret: crate::secret::Secret,
    /// `/call/startup` requests per minute per API key (0: no limit).
    pub api_call_startup_per_minute: u32,
    /// Origins allowed to call the REST API from a browser (CORS); `*` for any.
    pub api_cors_origins: Vec<String>,
    /// Listen on a non-loopback `rest_address` with no `api_keys` anyway.
    pub rest_insecure_bind: bool,
    pub sip_address: IpAddr,
    pub sip_port: u16,
    /// Name servers for SIP destinations (NAPTR, SRV, A/AAAA); empty: /etc/resolv.conf.
    pub sip_dns_servers: Vec<std::net::SocketAddr>,
    pub sip_udp: bool,
    pub sip_tcp: bool,
    /// SIP over TLS: listener port (with cert and key) and the provider certificate check.
    pub sip_tls_port: u16,
    pub sip_tls: crate::sip::tls::TlsSettings,
    /// SRTP with SDES keys (RFC 4568) for calls that do not say otherwise.
    pub sip_srtp: crate::rtp::srtp::SrtpPolicy,
    /// Host announced in Via/Contact; empty: the local address that routes to the peer.
    pub sip_external_address: Option<IpAddr>,
    pub sip_user_agent: String,
    pub sip_t1: Duration,
    pub sip_t2: Duration,
    pub sip_t4: Duration,
    pub sip_register_expires: u32,
    pub sip_invite_timeout: Duration,
    pub sip_socket_buffer: usize,
    pub sip_max_message_size: usize,
    /// Incoming INVITEs not answered yet; more get 503 + Retry-After.
    pub sip_max_pending_invites: usize,
    pub media_ip: Option<IpAddr>,
    pub rtp_address: IpAddr,
    pub rtp_port_min: u16,
    pub rtp_port_max: u16,
    pub rtp_latching: bool,
    pub rtp_send_silence: bool,
    /// Media threads driving the RTP legs (0: one per core); see `rtp::threads`.
    pub rtp_threads: usize,
    pub rtp_ptime_ms: u32,
    pub rtcp_interval: Duration,
    pub rtp_timeout: Duration,
    pub stream_reader_queue: usize,
    pub max_calls: usize,
    /// `inbound_calls`: accept or reject INVITEs addressed to the gateway.
    pub inbound_accept: bool,
    /// `inbound_user_pattern`: a regex the Request-URI user must match (None: any).
    pub inbound_user_pattern: Option<regex::Regex>,
    /// `inbound_call_id`: how an inbound call's callId is chosen.
    pub inbound_call_id: InboundCallId,
    /// `inbound_stream_name`: the stream name, `{user}` and `{callId}` replaced.
    pub inbound_stream_name: String,
    /// `inbound_answer=api`: an inbound call rings (180) until `/call/answer`; `auto`
    /// (false) answers it at once.
    pub inbound_answer_by_api: bool,
    /// `inbound_ring_timeout_s`: how long an inbound call waits for `/call/answer` (480).
    pub inbound_ring_timeout: Duration,
    /// `transfer_timeout_s`: how long a transfer of ours waits for its final NOTIFY.
    pub transfer_timeout: Duration,
    /// WHEP ICE sockets bind here; empty: rtp_address.
    pub webrtc_address: Option<IpAddr>,
    pub webrtc_port_min: u16,
    pub webrtc_port_max: u16,
    /// stun:/turn: URLs used by the gateway and handed to the web pages.
    pub webrtc_ice_servers: Vec<String>,
    pub webrtc_turn_username: String,
    pub webrtc_turn_credential: String,
    pub webrtc_max_sessions: usize,
    pub webrtc_connect_timeout: Duration,
    pub webrtc_disconnected_timeout: Duration,
    pub webrtc_failed_timeout: Duration,
    pub webrtc_track_wait: Duration,
    /// Readers a stream takes (players, recorders, pushes...); more get 503.
    pub stream_max_readers: usize,
    /// Largest request body, in KiB; larger get 413.
    pub api_max_body_kb: usize,
    /// Longest a REST/WHEP/HLS request may take before it gets 503.
    pub api_request_timeout: Duration,
    pub hls_part_ms: u64,
    pub hls_segment_ms: u64,
    pub hls_list_size: usize,
    pub hls_idle_timeout: Duration,
    pub hls_max_streams: usize,
    pub rtsp_timeout: Duration,
    pub rtsp_reconnect_max_attempts: u32,
    pub record_dir: PathBuf,
    pub sip_record_stream: bool,
    /// Two-party calls publish a mixed stereo track (caller left, callee right).
    pub two_party_mix: bool,
    pub record_file_template: String,
    pub record_fsync: bool,
    pub siprec_srs: String,
    pub siprec_auto: bool,
    pub siprec_skip_failover_codes: String,
    /// A WAV file (16-bit PCM) played in a loop to a leg we hold; empty: silence.
    pub hold_music_file: Option<PathBuf>,
    pub webhook_url: Option<String>,
    pub webhook_retries: u32,
    pub webhook_timeout: Duration,
    /// With a secret, every webhook POST carries `X-Sipstream-Signature: sha256=<hex HMAC>`.
    pub webhook_secret: crate::secret::Secret,
    pub log_level: String,
    /// `log_format`: `text` (one line per event, spans as `call{call_id=..}:` prefixes) or
    /// `json` (one JSON object per line; a call's lines carry its `call_id`).
    pub log_json: bool,
    pub shutdown_timeout: Duration,
    /// `rtmp_audio_codec` with `rtmp_aac_sample_rate` and `rtmp_aac_bitrate`.
    pub rtmp_audio: crate::rtmp::audio::AudioCodecPolicy,
    pub rtmp_connect_timeout: Duration,
    pub rtmp_reconnect_initial: Duration,
    pub rtmp_reconnect_max: Duration,
    pub rtmp_reconnect_max_attempts: u32,
    pub rtmp_send_queue_kb: usize,
    /// Where `/call/inject_sound` finds its `soundFile`s.
    pub sound_dir: PathBuf,
    /// `inbound_media_stream_url`: every answered inbound call streams its audio to this
    /// WebSocket (bidirectional), in `inbound_media_stream_format`.
    pub inbound_media_stream_url: Option<String>,
    pub inbound_media_stream_format: String,
    pub media_stream_connect_timeout: Duration,
    pub media_stream_reconnect_initial: Duration,
    pub media_stream_reconnect_max: Duration,
    pub media_stream_reconnect_max_attempts: u32,
    /// Audio kept for a slow or absent agent server before the oldest is dropped.
    pub media_stream_send_queue: Duration,
    /// `media_stream_socket_send_buffer_kb`: the kernel's send buffer of an agent's socket
    /// (0: the kernel's autotuning, up to megabytes of unsendable audio).
    pub media_stream_socket_send_buffer: usize,
    /// Agent audio queued for playing into the leg, at most.
    pub media_stream_play_queue: Duration,
    /// `media_listen_pattern`: a Request-URI user matching it (its first group: a callId)
    /// listens to that call (`send_from_call`); None: off.
    pub media_listen_pattern: Option<regex::Regex>,
    /// `media_barge_pattern`: the same for barging in (`fetch_to_call`, both ways).
    pub media_barge_pattern: Option<regex::Regex>,
    /// `media_exchange_timeout_s`: how long a media exchange's INVITE may ring.
    pub media_exchange_timeout: Duration,
}

/// How an inbound call's callId is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InboundCallId {
    /// The SIP Call-ID, with characters outside `A-Z a-z 0-9 _ . -` replaced by `_`.
    SipCallId,
    /// `in-` and 12 random characters.
    Random,
}

/// Keys with their defaults, in the order of the properties file.
pub const DEFAULTS: &[(&str, &str)] = &[
    ("rest_address", "127.0.0.1"),
    ("rest_port", "9091"),
    ("api_keys", ""),
    ("api_token_secret", ""),
    ("api_call_startup_per_minute", "0"),
    ("api_cors_origins", ""),
    ("rest_insecure_bind", "false"),
    ("api_max_body_kb", "256"),
    ("api_request_timeout_s", "30"),
    ("stream_max_readers", "200"),
    ("sip_address", "0.0.0.0"),
    ("sip_port", "5060"),
    ("sip_dns_servers", ""),
    ("sip_udp", "true"),
    ("sip_tcp", "true"),
    ("sip_tls_port", "5061"),
    ("sip_tls_cert_file", ""),
    ("sip_tls_key_file", ""),
    ("sip_tls_ca_file", ""),
    ("sip_tls_verify", "true"),
    ("sip_srtp", "off"),
    ("sip_external_address", ""),
    ("sip_user_agent", "sipstream"),
    ("sip_t1_ms", "500"),
    ("sip_t2_ms", "4000"),
    ("sip_t4_ms", "5000"),
    ("sip_register_expires", "3600"),
    ("sip_invite_timeout_s", "120"),
    ("sip_socket_buffer", "4194304"),
    ("sip_max_message_size", "65535"),
    ("sip_max_pending_invites", "200"),
    ("media_ip", ""),
    ("rtp_address", "0.0.0.0"),
    ("rtp_port_min", "31000"),
    ("rtp_port_max", "32999"),
    ("rtp_latching", "true"),
    ("rtp_send_silence", "true"),
    ("rtp_threads", "0"),
    ("rtp_ptime_ms", "20"),
    ("rtcp_interval_ms", "5000"),
    ("rtp_timeout_s", "0"),
    ("stream_reader_queue", "512"),
    ("max_calls", "2000"),
    ("inbound_calls", "accept"),
    ("inbound_user_pattern", ""),
    ("inbound_call_id", "sip"),
    ("inbound_stream_name", "{user}"),
    ("inbound_answer", "auto"),
    ("inbound_ring_timeout_s", "60"),
    ("transfer_timeout_s", "60"),
    ("webrtc_address", ""),
    ("webrtc_port_min", "33000"),
    ("webrtc_port_max", "33999"),
    ("webrtc_ice_servers", ""),
    ("webrtc_turn_username", ""),
    ("webrtc_turn_credential", ""),
    ("webrtc_max_sessions", "200"),
    ("webrtc_connect_timeout_s", "20"),
    ("webrtc_disconnected_timeout_s", "5"),
    ("webrtc_failed_timeout_s", "10"),
    ("webrtc_track_wait_s", "10"),
    ("hls_part_ms", "500"),
    ("hls_segment_ms", "2000"),
    ("hls_list_size", "6"),
    ("hls_idle_timeout_s", "30"),
    ("hls_max_streams", "100"),
    ("rtsp_timeout_s", "10"),
    ("rtsp_reconnect_max_attempts", "0"),
    ("record_dir", "records"),
    ("sip_record_stream", "false"),
    ("two_party_mix", "true"),
    ("record_file_template", "{streamName}-{startTime}"),
    ("record_fsync", "false"),
    ("siprec_srs", ""),
    ("siprec_auto", "false"),
    ("siprec_skip_failover_codes", ""),
    ("hold_music_file", ""),
    ("rtmp_audio_codec", "aac"),
    ("rtmp_aac_sample_rate", "48000"),
    ("rtmp_aac_bitrate", "64000"),
    ("rtmp_connect_timeout_ms", "5000"),
    ("rtmp_reconnect_initial_ms", "500"),
    ("rtmp_reconnect_max_ms", "10000"),
    ("rtmp_reconnect_max_attempts", "10"),
    ("rtmp_send_queue_kb", "1024"),
    ("webhook_url", ""),
    ("webhook_retries", "3"),
    ("webhook_timeout_ms", "3000"),
    ("webhook_secret", ""),
    ("log_level", "info"),
    ("log_format", "text"),
    ("shutdown_timeout_s", "5"),
    ("sound_dir", "sounds"),
    ("inbound_media_stream_url", ""),
    ("inbound_media_stream_format", "twilio"),
    ("media_stream_connect_timeout_ms", "5000"),
    ("media_stream_reconnect_initial_ms", "250"),
    ("media_stream_reconnect_max_ms", "5000"),
    ("media_stream_reconnect_max_attempts", "20"),
    ("media_stream_send_queue_ms", "2000"),
    ("media_stream_socket_send_buffer_kb", "32"),
    ("media_stream_play_queue_s", "120"),
    ("media_listen_pattern", "listen-(.+)"),
    ("media_barge_pattern", "barge-(.+)"),
    ("media_exchange_timeout_s", "30"),
];

/// Where the shipped properties file lives, relative to the working directory.
pub const DEFAULT_PROPERTIES: &str = "properties/sipstream.properties";

impl Default for Config {
    fn default() -> Self {
        let map: BTreeMap<String, (String, String)> = DEFAULTS
            .iter()
            .map(|(k, v)| (k.to_string(), (v.to_string(), "defaults".to_string())))
            .collect();
        // The defaults are constants checked by a test, so this cannot fail.
        Self::from_map(&map).unwrap_or_else(|e| panic!("built-in defaults are invalid: {e}"))
    }
}

impl Config {
    /// Loads from command-line arguments (without the program name) and the environment.
    pub fn load<I: IntoIterator<Item = String>>(
        args: I,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let mut file: Option<PathBuf> = None;
        let mut sets: Vec<(String, String)> = Vec::new();
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            let (flag, inline) = match arg.split_once('=') {
                Some((f, v)) if f == "--config" => (f.to_string(), Some(v.to_string())),
                _ => (arg.clone(), None),
            };
            match flag.as_str() {
                "--config" | "-c" => {
                    let v = inline
                        .or_else(|| args.next())
                        .ok_or_else(|| ConfigError::Args("--config needs a file".into()))?;
                    file = Some(PathBuf::from(v));
                }
                "--log-format" => {
                    let v = args.next().ok_or_else(|| {
                        ConfigError::Args("--log-format needs text or json".into())
                    })?;
                    sets.push(("log_format".into(), v));
                }
                "--set" => {
                    let kv = args
                        .next()
                        .ok_or_else(|| ConfigError::Args("--set needs key=value".into()))?;
                    let (k, v) = kv.split_once('=').ok_or_else(|| {
                        ConfigError::Args(format!("--set {kv:?}: expected key=value"))
                    })?;
                    sets.push((k.trim().to_string(), v.trim().to_string()));
                }
                other => return Err(ConfigError::Args(format!("unknown argument {other:?}"))),
            }
        }

        let mut map: BTreeMap<String, (String, String)> = DEFAULTS
            .iter()
            .map(|(k, v)| (k.to_string(), (v.to_string(), "defaults".to_string())))
            .collect();

        // The shipped file is optional when running from elsewhere; an explicit one is not.
        let path = file
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_PROPERTIES));
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let origin = path.display().to_string();
                for (key, value) in parse_properties(&text, &origin)? {
                    set_key(&mut map, &key, value, &origin)?;
                }
            }
            Err(e) if file.is_none() && e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(ConfigError::Read { path, source }),
        }

        for (key, _) in DEFAULTS {
            let var = format!("SIPSTREAM_{}", key.to_ascii_uppercase());
            if let Some(value) = env(&var) {
                set_key(&mut map, key, value, &var)?;
            }
        }
        for (key, value) in sets {
            set_key(&mut map, &key, value, "--set")?;
        }
        Self::from_map(&map)
    }

    fn from_map(map: &BTreeMap<String, (String, String)>) -> Result<Config, ConfigError> {
        let r = Reader { map };
        let cfg = Config {
            rest_address: r.parse("rest_address")?,
            rest_port: r.parse("rest_port")?,
            api_keys: r
                .list("api_keys")
                .iter()
                .map(|k| ApiKey::parse(k))
                .collect::<Result<_, _>>()?,
            api_token_secret: crate::secret::Secret::new(r.string("api_token_secret")),
            api_call_startup_per_minute: r.parse("api_call_startup_per_minute")?,
            api_cors_origins: r.list("api_cors_origins"),
            rest_insecure_bind: r.bool("rest_insecure_bind")?,
            sip_address: r.parse("sip_address")?,
            sip_port: r.parse("sip_port")?,
            sip_dns_servers: r
                .list("sip_dns_servers")
                .iter()
                .map(|v| {
                    v.parse::<std::net::SocketAddr>()
                        .or_else(|_| v.parse::<std::net::IpAddr>().map(|ip| (ip, 53).into()))
                        .map_err(|_| {
                            ConfigError::Invalid(format!(
                                "sip_dns_servers: {v:?} is not an IP address or IP:port"
                            ))
                        })
                })
                .collect::<Result<_, _>>()?,
            sip_udp: r.bool("sip_udp")?,
            sip_tcp: r.bool("sip_tcp")?,
            sip_tls_port: r.parse("sip_tls_port")?,
            sip_tls: crate::sip::tls::TlsSettings {
                ca_file: r.opt_path("sip_tls_ca_file"),
                verify: r.bool("sip_tls_verify")?,
                cert_file: r.opt_path("sip_tls_cert_file"),
                key_file: r.opt_path("sip_tls_key_file"),
            },
            sip_srtp: r
                .string("sip_srtp")
                .parse()
                .map_err(|e| ConfigError::Invalid(format!("sip_srtp: {e}")))?,
            sip_external_address: r.opt_parse("sip_external_address")?,
            sip_user_agent: r.string("sip_user_agent"),
            sip_t1: Duration::from_millis(r.parse("sip_t1_ms")?),
            sip_t2: Duration::from_millis(r.parse("sip_t2_ms")?),
            sip_t4: Duration::from_millis(r.parse("sip_t4_ms")?),
            sip_register_expires: r.parse("sip_register_expires")?,
            sip_invite_timeout: Duration::from_secs(r.parse("sip_invite_timeout_s")?),
            sip_socket_buffer: r.parse("sip_socket_buffer")?,
            sip_max_message_size: r.parse("sip_max_message_size")?,
            sip_max_pending_invites: r.parse("sip_max_pending_invites")?,
            media_ip: r.opt_parse("media_ip")?,
            rtp_address: r.parse("rtp_address")?,
            rtp_port_min: r.parse("rtp_port_min")?,
            rtp_port_max: r.parse("rtp_port_max")?,
            rtp_latching: r.bool("rtp_latching")?,
            rtp_send_silence: r.bool("rtp_send_silence")?,
            rtp_threads: r.parse("rtp_threads")?,
            rtp_ptime_ms: r.parse("rtp_ptime_ms")?,
            rtcp_interval: Duration::from_millis(r.parse("rtcp_interval_ms")?),
            rtp_timeout: Duration::from_secs(r.parse("rtp_timeout_s")?),
            stream_reader_queue: r.parse("stream_reader_queue")?,
            max_calls: r.parse("max_calls")?,
            inbound_accept: match r.string("inbound_calls").as_str() {
                "accept" => true,
                "reject" => false,
                _ => return Err(r.err("inbound_calls", "expected accept or reject".into())),
            },
            inbound_answer_by_api: match r.string("inbound_answer").as_str() {
                "auto" => false,
                "api" => true,
                _ => return Err(r.err("inbound_answer", "expected auto or api".into())),
            },
            inbound_ring_timeout: r.positive_secs("inbound_ring_timeout_s")?,
            transfer_timeout: r.positive_secs("transfer_timeout_s")?,
            inbound_user_pattern: match r.string("inbound_user_pattern") {
                p if p.is_empty() => None,
                p => Some(
                    regex::Regex::new(&format!("^(?:{p})$"))
                        .map_err(|e| r.err("inbound_user_pattern", e.to_string()))?,
                ),
            },
            inbound_call_id: match r.string("inbound_call_id").as_str() {
                "sip" => InboundCallId::SipCallId,
                "random" => InboundCallId::Random,
                _ => return Err(r.err("inbound_call_id", "expected sip or random".into())),
            },
            inbound_stream_name: r.string("inbound_stream_name"),
            webrtc_address: r.opt_parse("webrtc_address")?,
            webrtc_port_min: r.parse("webrtc_port_min")?,
            webrtc_port_max: r.parse("webrtc_port_max")?,
            webrtc_ice_servers: r.list("webrtc_ice_servers"),
            webrtc_turn_username: r.string("webrtc_turn_username"),
            webrtc_turn_credential: r.string("webrtc_turn_credential"),
            webrtc_max_sessions: r.parse("webrtc_max_sessions")?,
            webrtc_connect_timeout: Duration::from_secs(r.parse("webrtc_connect_timeout_s")?),
            webrtc_disconnected_timeout: Duration::from_secs(
                r.parse("webrtc_disconnected_timeout_s")?,
            ),
            webrtc_failed_timeout: Duration::from_secs(r.parse("webrtc_failed_timeout_s")?),
            webrtc_track_wait: Duration::from_secs(r.parse("webrtc_track_wait_s")?),
            stream_max_readers: r.parse("stream_max_readers")?,
            api_max_body_kb: r.parse("api_max_body_kb")?,
            api_request_timeout: Duration::from_secs(r.parse("api_request_timeout_s")?),
            hls_part_ms: r.parse("hls_part_ms")?,
            hls_segment_ms: r.parse("hls_segment_ms")?,
            hls_list_size: r.parse("hls_list_size")?,
            hls_idle_timeout: Duration::from_secs(r.parse("hls_idle_timeout_s")?),
            hls_max_streams: r.parse("hls_max_streams")?,
            rtsp_timeout: Duration::from_secs(r.parse("rtsp_timeout_s")?),
            rtsp_reconnect_max_attempts: r.parse("rtsp_reconnect_max_attempts")?,
            record_dir: PathBuf::from(r.string("record_dir")),
            sip_record_stream: r.bool("sip_record_stream")?,
            two_party_mix: r.bool("two_party_mix")?,
            record_file_template: r.string("record_file_template"),
            record_fsync: r.bool("record_fsync")?,
            siprec_srs: r.string("siprec_srs"),
            siprec_auto: r.bool("siprec_auto")?,
            siprec_skip_failover_codes: r.string("siprec_skip_failover_codes"),
            hold_music_file: Some(r.string("hold_music_file"))
                .filter(|s| !s.is_empty())
                .map(PathBuf::from),
            webhook_url: Some(r.string("webhook_url")).filter(|s| !s.is_empty()),
            webhook_retries: r.parse("webhook_retries")?,
            webhook_timeout: Duration::from_millis(r.parse("webhook_timeout_ms")?),
            webhook_secret: crate::secret::Secret::new(r.string("webhook_secret")),
            log_level: r.string("log_level"),
            log_json: match r.string("log_format").as_str() {
                "text" => false,
                "json" => true,
                _ => return Err(r.err("log_format", "expected text or json".into())),
            },
            shutdown_timeout: Duration::from_secs(r.parse("shutdown_timeout_s")?),
            rtmp_audio: crate::rtmp::audio::AudioCodecPolicy::parse(
                &r.string("rtmp_audio_codec"),
                r.parse("rtmp_aac_sample_rate")?,
                r.parse("rtmp_aac_bitrate")?,
            )
            .ok_or_else(|| {
                r.err(
                    "rtmp_audio_codec",
                    "expected aac, pcmu, pcma or copy".into(),
                )
            })?,
            rtmp_connect_timeout: Duration::from_millis(r.parse("rtmp_connect_timeout_ms")?),
            rtmp_reconnect_initial: Duration::from_millis(r.parse("rtmp_reconnect_initial_ms")?),
            rtmp_reconnect_max: Duration::from_millis(r.parse("rtmp_reconnect_max_ms")?),
            rtmp_reconnect_max_attempts: r.parse("rtmp_reconnect_max_attempts")?,
            rtmp_send_queue_kb: r.parse("rtmp_send_queue_kb")?,
            sound_dir: PathBuf::from(r.string("sound_dir")),
            inbound_media_stream_url: match r.string("inbound_media_stream_url") {
                u if u.is_empty() => None,
                u if u.starts_with("ws://") || u.starts_with("wss://") => Some(u),
                _ => {
                    return Err(r.err(
                        "inbound_media_stream_url",
                        "expected a ws:// or wss:// URL".into(),
                    ))
                }
            },
            inbound_media_stream_format: match r.string("inbound_media_stream_format").as_str() {
                f @ ("twilio" | "raw") => f.to_string(),
                _ => {
                    return Err(r.err(
                        "inbound_media_stream_format",
                        "expected twilio or raw".into(),
                    ))
                }
            },
            media_stream_connect_timeout: Duration::from_millis(
                r.parse("media_stream_connect_timeout_ms")?,
            ),
            media_stream_reconnect_initial: Duration::from_millis(
                r.parse("media_stream_reconnect_initial_ms")?,
            ),
            media_stream_reconnect_max: Duration::from_millis(
                r.parse("media_stream_reconnect_max_ms")?,
            ),
            media_stream_reconnect_max_attempts: r.parse("media_stream_reconnect_max_attempts")?,
            media_stream_send_queue: Duration::from_millis(r.parse("media_stream_send_queue_ms")?),
            media_stream_socket_send_buffer: r
                .parse::<usize>("media_stream_socket_send_buffer_kb")?
                * 1024,
            media_stream_play_queue: Duration::from_secs(r.parse("media_stream_play_queue_s")?),
            media_listen_pattern: exchange_pattern(&r, "media_listen_pattern")?,
            media_barge_pattern: exchange_pattern(&r, "media_barge_pattern")?,
            media_exchange_timeout: Duration::from_secs(r.parse("media_exchange_timeout_s")?),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if let Some(path) = &self.hold_music_file {
            let data = std::fs::read(path).map_err(|e| {
                ConfigError::Invalid(format!(
                    "hold_music_file: cannot read {}: {e}",
                    path.display()
                ))
            })?;
            crate::media::sound::decode_8k_mono(&data).map_err(|e| {
                ConfigError::Invalid(format!("hold_music_file: {}: {e}", path.display()))
            })?;
        }
        if self.rtp_port_min >= self.rtp_port_max {
            return Err(ConfigError::Invalid(format!(
                "rtp_port_min ({}) must be below rtp_port_max ({})",
                self.rtp_port_min, self.rtp_port_max
            )));
        }
        if !self.sip_udp && !self.sip_tcp {
            return Err(ConfigError::Invalid(
                "sip_udp and sip_tcp are both false: no SIP transport".into(),
            ));
        }
        if self.sip_tls.cert_file.is_some() != self.sip_tls.key_file.is_some() {
            return Err(ConfigError::Invalid(
                "sip_tls_cert_file and sip_tls_key_file go together (the TLS listener needs both)"
                    .into(),
            ));
        }
        if self.sip_t1.is_zero() || self.sip_t2 < self.sip_t1 {
            return Err(ConfigError::Invalid(
                "sip_t1_ms must be > 0 and sip_t2_ms >= sip_t1_ms".into(),
            ));
        }
        if !(10..=120).contains(&self.rtp_ptime_ms) || !self.rtp_ptime_ms.is_multiple_of(10) {
            return Err(ConfigError::Invalid(
                "rtp_ptime_ms must be 10, 20, ... 120".into(),
            ));
        }
        if self.stream_reader_queue == 0 {
            return Err(ConfigError::Invalid(
                "stream_reader_queue must be > 0".into(),
            ));
        }
        if self.siprec_auto && self.siprec_srs.trim().is_empty() {
            return Err(ConfigError::Invalid(
                "siprec_auto=true needs siprec_srs (the SRS URIs to record to)".into(),
            ));
        }
        if !(100..=5000).contains(&self.hls_part_ms)
            || self.hls_segment_ms < self.hls_part_ms
            || self.hls_segment_ms > 30_000
            || self.hls_list_size == 0
        {
            return Err(ConfigError::Invalid(format!(
                "hls_part_ms must be 100..=5000 ({}), hls_segment_ms from hls_part_ms to 30000 \
                 ({}), hls_list_size > 0 ({})",
                self.hls_part_ms, self.hls_segment_ms, self.hls_list_size
            )));
        }
        if !self.rest_address.is_loopback() && self.api_keys.is_empty() && !self.rest_insecure_bind
        {
            return Err(ConfigError::Invalid(format!(
                "rest_address {} is reachable from other machines and api_keys is empty: anyone \
                 there could place calls; set api_keys (or rest_insecure_bind=true when a proxy \
                 in front does the authentication)",
                self.rest_address
            )));
        }
        if self.stream_max_readers == 0
            || self.api_max_body_kb == 0
            || self.api_request_timeout.is_zero()
        {
            return Err(ConfigError::Invalid(
                "stream_max_readers, api_max_body_kb and api_request_timeout_s must be > 0".into(),
            ));
        }
        if self.rtsp_timeout.is_zero() {
            return Err(ConfigError::Invalid("rtsp_timeout_s must be > 0".into()));
        }
        if self.webrtc_port_min > self.webrtc_port_max
            || (self.webrtc_port_min == 0) != (self.webrtc_port_max == 0)
        {
            return Err(ConfigError::Invalid(format!(
                "webrtc_port_min ({}) and webrtc_port_max ({}) must form a range (or both be 0)",
                self.webrtc_port_min, self.webrtc_port_max
            )));
        }
        if let Some(bad) = self.webrtc_ice_servers.iter().find(|u| {
            !["stun:", "stuns:", "turn:", "turns:"]
                .iter()
                .any(|p| u.starts_with(p))
        }) {
            return Err(ConfigError::Invalid(format!(
                "webrtc_ice_servers: {bad:?} is not a stun:, stuns:, turn: or turns: URL"
            )));
        }
        if let crate::rtmp::audio::AudioCodecPolicy::Aac {
            sample_rate,
            bitrate,
        } = self.rtmp_audio
        {
            const AAC_RATES: [u32; 9] =
                [8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000];
            if !AAC_RATES.contains(&sample_rate) {
                return Err(ConfigError::Invalid(format!(
                    "rtmp_aac_sample_rate must be one of {AAC_RATES:?}, got {sample_rate}"
                )));
            }
            // AAC-LC carries at most 6144 bits per channel per 1024-sample frame.
            let max = 6 * sample_rate;
            if !(8000..=max).contains(&bitrate) {
                return Err(ConfigError::Invalid(format!(
                    "rtmp_aac_bitrate must be 8000..={max} at {sample_rate} Hz, got {bitrate}"
                )));
            }
        }
        if self.rtmp_connect_timeout.is_zero()
            || self.rtmp_reconnect_initial.is_zero()
            || self.rtmp_reconnect_max < self.rtmp_reconnect_initial
        {
            return Err(ConfigError::Invalid(
                "rtmp_connect_timeout_ms and rtmp_reconnect_initial_ms must be > 0 and rtmp_reconnect_max_ms >= rtmp_reconnect_initial_ms".into(),
            ));
        }
        if self.rtmp_send_queue_kb == 0 {
            return Err(ConfigError::Invalid(
                "rtmp_send_queue_kb must be > 0".into(),
            ));
        }
        if let Some(url) = &self.webhook_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(ConfigError::Invalid(format!(
                    "webhook_url must be an http:// or https:// URL, got {url:?}"
                )));
            }
        }
        Ok(())
    }

    /// The SIP timers handed to every transaction.
    pub fn sip_timers(&self) -> crate::sip::transaction::Timers {
        crate::sip::transaction::Timers {
            t1: self.sip_t1,
            t2: self.sip_t2,
            t4: self.sip_t4,
        }
    }
}

/// Parses `key=value` lines; `#` and `!` start comments, blank lines are skipped.
pub fn parse_properties(text: &str, origin: &str) -> Result<Vec<(String, String)>, ConfigError> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with('!') {
            continue;
        }
        let (k, v) = line.split_once('=').ok_or_else(|| ConfigError::Syntax {
            origin: origin.to_string(),
            line: i + 1,
            text: line.to_string(),
        })?;
        out.push((k.trim().to_string(), v.trim().to_string()));
    }
    Ok(out)
}

fn set_key(
    map: &mut BTreeMap<String, (String, String)>,
    key: &str,
    value: String,
    origin: &str,
) -> Result<(), ConfigError> {
    match map.get_mut(key) {
        Some(slot) => {
            *slot = (value, origin.to_string());
            Ok(())
        }
        None => Err(ConfigError::UnknownKey {
            origin: origin.to_string(),
            key: key.to_string(),
        }),
    }
}

/// A listen/barge pattern: the whole Request-URI user must match, with one group (the
/// callId). Empty: off.
fn exchange_pattern(r: &Reader<'_>, key: &str) -> Result<Option<regex::Regex>, ConfigError> {
    let p = r.string(key);
    if p.is_empty() {
        return Ok(None);
    }
    let re = regex::Regex::new(&format!("^(?:{p})$")).map_err(|e| r.err(key, e.to_string()))?;
    if re.captures_len() < 2 {
        return Err(r.err(
            key,
            "needs a group, e.g. listen-(.+): it captures the callId".into(),
        ));
    }
    Ok(Some(re))
}

struct Reader<'a> {
    map: &'a BTreeMap<String, (String, String)>,
}

impl Reader<'_> {
    fn raw(&self, key: &str) -> (&str, &str) {
        self.map
            .get(key)
            .map(|(v, o)| (v.as_str(), o.as_str()))
            .unwrap_or(("", "defaults"))
    }

    /// A file name; empty means none.
    fn opt_path(&self, key: &str) -> Option<PathBuf> {
        Some(self.string(key))
            .filter(|s| !s.is_empty())
            .map(PathBuf::from)
    }

    fn string(&self, key: &str) -> String {
        self.raw(key).0.to_string()
    }

    fn list(&self, key: &str) -> Vec<String> {
        self.raw(key)
            .0
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()
    }

    fn err(&self, key: &str, message: String) -> ConfigError {
        let (value, origin) = self.raw(key);
        ConfigError::Value {
            origin: origin.to_string(),
            key: key.to_string(),
            value: value.to_string(),
            message,
        }
    }

    fn parse<T: std::str::FromStr>(&self, key: &str) -> Result<T, ConfigError>
    where
        T::Err: std::fmt::Display,
    {
        self.raw(key)
            .0
            .parse()
            .map_err(|e: T::Err| self.err(key, e.to_string()))
    }

    /// A duration in whole seconds, at least one.
    fn positive_secs(&self, key: &str) -> Result<Duration, ConfigError> {
        match self.parse::<u64>(key)? {
            0 => Err(self.err(key, "must be at least 1".into())),
            n => Ok(Duration::from_secs(n)),
        }
    }

    fn opt_parse<T: std::str::FromStr>(&self, key: &str) -> Result<Option<T>, ConfigError>
    where
        T::Err: std::fmt::Display,
    {
        if self.raw(key).0.is_empty() {
            Ok(None)
        } else {
            self.parse(key).map(Some)
        }
    }

    fn bool(&self, key: &str) -> Result<bool, ConfigError> {
        match self.raw(key).0.to_ascii_lowercase().as_str() {
            "true" | "yes" | "1" | "on" => Ok(true),
            "false" | "no" | "0" | "off" => Ok(false),
            _ => Err(self.err(key, "expected true or false".into())),
        }
    }
}

/// Reads the shipped properties file (for the test that keeps it in step with DEFAULTS).
pub fn read_properties_file(path: &Path) -> Result<Vec<(String, String)>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_properties(&text, &path.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn defaults_are_valid() {
        let c = Config::default();
        assert_eq!(c.rest_port, 9091);
        assert_eq!(c.sip_port, 5060);
        assert_eq!(c.rest_address.to_string(), "127.0.0.1");
    }

    #[test]
    fn shipped_file_lists_every_key_with_its_default() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(DEFAULT_PROPERTIES);
        let entries = read_properties_file(&path).expect("properties file");
        let keys: Vec<&str> = entries.iter().map(|(k, _)| k.as_str()).collect();
        let defaults: Vec<&str> = DEFAULTS.iter().map(|(k, _)| *k).collect();
        assert_eq!(
            keys, defaults,
            "properties file and DEFAULTS disagree on keys/order"
        );
        for ((k, v), (dk, dv)) in entries.iter().zip(DEFAULTS) {
            assert_eq!((k.as_str(), v.as_str()), (*dk, *dv), "default of {k}");
        }
    }

    #[test]
    fn env_then_flags_override() {
        let args = vec![
            "--config".to_string(),
            "/nonexistent/ok-if-missing".to_string(),
        ];
        let err = Config::load(args, no_env).unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }), "{err}");

        let env = |k: &str| (k == "SIPSTREAM_REST_PORT").then(|| "9999".to_string());
        let c = Config::load(Vec::new(), env).unwrap();
        assert_eq!(c.rest_port, 9999);
        let args = vec!["--set".to_string(), "rest_port=7777".to_string()];
        let c = Config::load(args, env).unwrap();
        assert_eq!(c.rest_port, 7777);
    }

    #[test]
    fn errors_name_the_key() {
        let args = vec!["--set".to_string(), "rest_port=http".to_string()];
        let e = Config::load(args, no_env).unwrap_err().to_string();
        assert!(e.contains("rest_port") && e.contains("http"), "{e}");
        let args = vec!["--set".to_string(), "no_such_key=1".to_string()];
        let e = Config::load(args, no_env).unwrap_err().to_string();
        assert!(e.contains("no_such_key"), "{e}");
        let args = vec!["--set".to_string(), "rtp_port_min=40000".to_string()];
        let e = Config::load(args, no_env).unwrap_err().to_string();
        assert!(e.contains("rtp_port_min"), "{e}");
        let args = vec![
            "--set".to_string(),
            "hold_music_file=/nonexistent/hold.wav".to_string(),
        ];
        let e = Config::load(args, no_env).unwrap_err().to_string();
        assert!(
            e.contains("hold_music_file") && e.contains("/nonexistent/hold.wav"),
            "{e}"
        );
        let args = vec![
            "--set".to_string(),
            "media_listen_pattern=listen-.+".to_string(),
        ];
        let e = Config::load(args, no_env).unwrap_err().to_string();
        assert!(
            e.contains("media_listen_pattern") && e.contains("group"),
            "{e}"
        );
        let args = vec!["--set".to_string(), "media_barge_pattern=".to_string()];
        let c = Config::load(args, no_env).unwrap();
        assert!(c.media_barge_pattern.is_none(), "empty: off");
        let args = vec!["--set".to_string(), "sip_dns_servers=not-an-ip".to_string()];
        let e = Config::load(args, no_env).unwrap_err().to_string();
        assert!(
            e.contains("sip_dns_servers") && e.contains("not-an-ip"),
            "{e}"
        );
    }
}
