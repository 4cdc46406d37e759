//! Who may call what: API keys with scopes, stream tokens for players, the per-key rate
//! limit of call startups, and CORS for browsers on other origins. Sans-IO apart from the
//! clock it is given: the middleware in `api/mod.rs`, WHEP, HLS and JSON-RPC ask it.
//!
//! - A request names a key with `Authorization: Bearer KEY` or `X-Api-Key: KEY`. Without
//!   `api_keys` everything is open (only allowed on loopback, see `rest_insecure_bind`).
//! - [`required_scope`]: reads (GET, `find`, `find_all`, `/events`, `/metrics`, players) need
//!   `read`; other methods `control`; recording downloads `admin`.
//! - Stream tokens (`/stream/token`) let a player read one stream until they expire, without
//!   a key: `Authorization: Bearer TOKEN` on WHEP, `?token=TOKEN` on HLS (the playlist's
//!   URIs carry it on). A token is `<expiry unix s>.<hex HMAC-SHA256(secret, stream, expiry)>`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use actix_web::http::header::HeaderMap;
use hmac::{Hmac, Mac};
use parking_lot::Mutex;
use sha2::Sha256;

use super::error::ApiError;
use crate::config::{ApiKey, ApiScope, Config};

/// Who made a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// No `api_keys`: everyone may do everything.
    Open,
    /// The key at this index of `api_keys`.
    Key(usize, ApiScope),
}

impl Caller {
    pub fn scope(self) -> ApiScope {
        match self {
            Caller::Open => ApiScope::Admin,
            Caller::Key(_, s) => s,
        }
    }
}

/// The scope a request needs, by method and path.
pub fn required_scope(method: &str, path: &str) -> ApiScope {
    let path = path.split('?').next().unwrap_or(path);
    if path.starts_with("/recordings/") {
        return ApiScope::Admin;
    }
    if method.eq_ignore_ascii_case("GET") || method.eq_ignore_ascii_case("HEAD") {
        return ApiScope::Read;
    }
    if path.ends_with("/find") || path.ends_with("/find_all") {
        return ApiScope::Read;
    }
    ApiScope::Control
}

/// Token buckets of call startups, per key.
struct Limiter {
    per_minute: u32,
    buckets: Mutex<HashMap<usize, (f64, Instant)>>,
}

impl Limiter {
    /// Takes one startup for `key` at `now`; `Err(seconds)` when none is left.
    fn take(&self, key: usize, now: Instant) -> Result<(), u64> {
        if self.per_minute == 0 {
            return Ok(());
        }
        let cap = f64::from(self.per_minute);
        let rate = cap / 60.0;
        let mut b = self.buckets.lock();
        let (tokens, at) = b.entry(key).or_insert((cap, now));
        *tokens = (*tokens + now.saturating_duration_since(*at).as_secs_f64() * rate).min(cap);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - *tokens) / rate).ceil().max(1.0) as u64)
        }
    }
}

pub struct Auth {
    keys: Vec<ApiKey>,
    token_secret: Vec<u8>,
    limiter: Limiter,
    cors: Vec<String>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("keys", &self.keys)
            .field("cors", &self.cors)
            .finish_non_exhaustive()
    }
}

type HmacSha256 = Hmac<Sha256>;

/// The key a request names: `X-Api-Key`, else `Authorization: Bearer`.
pub fn presented(headers: &HeaderMap) -> Option<&str> {
    let h = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    h("x-api-key")
        .or_else(|| h("authorization").and_then(|v| v.strip_prefix("Bearer ")))
        .map(str::trim)
}

impl Auth {
    pub fn new(cfg: &Config) -> Auth {
        let token_secret = if cfg.api_token_secret.is_empty() {
            let r: [u8; 32] = rand::random();
            r.to_vec()
        } else {
            cfg.api_token_secret.expose().as_bytes().to_vec()
        };
        Auth {
            keys: cfg.api_keys.clone(),
            token_secret,
            limiter: Limiter {
                per_minute: cfg.api_call_startup_per_minute,
                buckets: Mutex::new(HashMap::new()),
            },
            cors: cfg.api_cors_origins.clone(),
        }
    }

    /// Whether requests need a key.
    pub fn enabled(&self) -> bool {
        !self.keys.is_empty()
    }

    /// The caller of a request that needs `need`: 401 without a valid key, 403 when the
    /// key's scope is too small.
    pub fn require(&self, headers: &HeaderMap, need: ApiScope) -> Result<Caller, ApiError> {
        if !self.enabled() {
            return Ok(Caller::Open);
        }
        let Some(given) = presented(headers) else {
            return Err(ApiError::Unauthorized(
                "an API key is required (Authorization: Bearer KEY or X-Api-Key)".into(),
            ));
        };
        self.check_scope(self.identify(given)?, need)
    }

    /// The key `given` names.
    pub fn identify(&self, given: &str) -> Result<Caller, ApiError> {
        if !self.enabled() {
            return Ok(Caller::Open);
        }
        self.keys
            .iter()
            .position(|k| super::constant_time_eq(k.key.expose().as_bytes(), given.as_bytes()))
            .map(|i| Caller::Key(i, self.keys[i].scope))
            .ok_or_else(|| {
                ApiError::Unauthorized(
                    "wrong API key (Authorization: Bearer KEY or X-Api-Key)".into(),
                )
            })
    }

    pub fn check_scope(&self, caller: Caller, need: ApiScope) -> Result<Caller, ApiError> {
        if caller.scope() >= need {
            Ok(caller)
        } else {
            Err(ApiError::Forbidden(format!(
                "this API key has scope {}; this request needs {}",
                caller.scope().as_str(),
                need.as_str()
            )))
        }
    }

    /// A player's access to `stream`: a key with read scope, or a token for the stream.
    pub fn require_player(
        &self,
        headers: &HeaderMap,
        query_token: Option<&str>,
        stream: &str,
        now_unix: u64,
    ) -> Result<(), ApiError> {
        if !self.enabled() {
            return Ok(());
        }
        let given = presented(headers).or(query_token);
        let Some(given) = given else {
            return Err(ApiError::Unauthorized(
                "an API key or a stream token is required (Authorization: Bearer, or ?token= \
                 for HLS)"
                    .into(),
            ));
        };
        if self.token_valid(stream, given, now_unix) {
            return Ok(());
        }
        self.identify(given)
            .map_err(|_| {
                ApiError::Unauthorized(format!(
                    "not an API key, nor a valid token for stream {stream:?} (expired?)"
                ))
            })
            .and_then(|c| self.check_scope(c, ApiScope::Read))
            .map(drop)
    }

    fn mac(&self, stream: &str, expires: u64) -> String {
        let mut mac = match HmacSha256::new_from_slice(&self.token_secret) {
            Ok(m) => m,
            Err(_) => return String::new(),
        };
        mac.update(b"sipstream-stream-token\0");
        mac.update(stream.as_bytes());
        mac.update(b"\0");
        mac.update(expires.to_string().as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }

    /// A token that lets a player read `stream` until `now_unix + ttl`.
    pub fn issue_token(&self, stream: &str, now_unix: u64, ttl: Duration) -> (String, u64) {
        let expires = now_unix + ttl.as_secs();
        (format!("{expires}.{}", self.mac(stream, expires)), expires)
    }

    pub fn token_valid(&self, stream: &str, token: &str, now_unix: u64) -> bool {
        let Some((exp, mac)) = token.split_once('.') else {
            return false;
        };
        let Ok(expires) = exp.parse::<u64>() else {
            return false;
        };
        expires > now_unix
            && super::constant_time_eq(self.mac(stream, expires).as_bytes(), mac.as_bytes())
    }

    /// Counts one call startup for `caller`: 429 with the seconds to wait when its
    /// `api_call_startup_per_minute` is used up.
    pub fn call_startup(&self, caller: Caller, now: Instant) -> Result<(), ApiError> {
        let key = match caller {
            Caller::Open => usize::MAX,
            Caller::Key(i, _) => i,
        };
        self.limiter.take(key, now).map_err(|after| {
            ApiError::TooManyRequests(
                format!(
                    "more than {} call startups a minute for this key (api_call_startup_per_minute); retry in {after} s",
                    self.limiter.per_minute
                ),
                after,
            )
        })
    }

    /// The `Access-Control-Allow-Origin` for a request from `origin`, if it is allowed.
    pub fn cors_origin(&self, origin: &str) -> Option<String> {
        if self.cors.iter().any(|o| o == "*") {
            Some("*".into())
        } else if self.cors.iter().any(|o| o.eq_ignore_ascii_case(origin)) {
            Some(origin.to_owned())
        } else {
            None
        }
    }
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::{HeaderName, HeaderValue};

    fn auth(keys: &str, per_minute: u32) -> Auth {
        let cfg = Config::load(
            vec![
                "--set".into(),
                format!("api_keys={keys}"),
                "--set".into(),
                format!("api_call_startup_per_minute={per_minute}"),
                "--set".into(),
                "api_cors_origins=https://ops.example.com".into(),
            ],
            |_| None,
        )
        .unwrap();
        Auth::new(&cfg)
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn scopes_by_method_and_path() {
        assert_eq!(required_scope("GET", "/rest-api/call/find"), ApiScope::Read);
        assert_eq!(
            required_scope("POST", "/rest-api/call/find_all"),
            ApiScope::Read
        );
        assert_eq!(
            required_scope("POST", "/rest-api/call/startup"),
            ApiScope::Control
        );
        assert_eq!(required_scope("GET", "/recordings/a.mp4"), ApiScope::Admin);
        assert_eq!(required_scope("GET", "/events?callId=x"), ApiScope::Read);

        let a = auth("reader-key-1:read, control-key:control, admin-key-9", 0);
        let read = headers(&[("authorization", "Bearer reader-key-1")]);
        let control = headers(&[("x-api-key", "control-key")]);
        let admin = headers(&[("x-api-key", "admin-key-9")]);
        assert!(a.require(&read, ApiScope::Read).is_ok());
        assert!(matches!(
            a.require(&read, ApiScope::Control),
            Err(ApiError::Forbidden(_))
        ));
        assert!(a.require(&control, ApiScope::Control).is_ok());
        assert!(matches!(
            a.require(&control, ApiScope::Admin),
            Err(ApiError::Forbidden(_))
        ));
        assert!(a.require(&admin, ApiScope::Admin).is_ok());
        assert!(matches!(
            a.require(&headers(&[]), ApiScope::Read),
            Err(ApiError::Unauthorized(_))
        ));
        let wrong = a.require(&headers(&[("x-api-key", "admin-key-8")]), ApiScope::Read);
        assert!(matches!(wrong, Err(ApiError::Unauthorized(_))));
        assert!(!format!("{a:?}").contains("admin-key-9"));
        // No keys: open.
        let open = auth("", 0);
        assert_eq!(
            open.require(&headers(&[]), ApiScope::Admin).unwrap(),
            Caller::Open
        );
    }

    #[test]
    fn bad_key_entries_are_refused_without_quoting_them() {
        for bad in ["short", "good-long-key:root", "has space inside"] {
            let e = Config::load(vec!["--set".into(), format!("api_keys={bad}")], |_| None)
                .unwrap_err()
                .to_string();
            assert!(e.contains("api_keys"), "{e}");
            assert!(!e.contains(bad), "{e} quotes the key");
        }
    }

    #[test]
    fn tokens_are_bound_to_a_stream_and_expire() {
        let a = auth("admin-key-9", 0);
        let (t, exp) = a.issue_token("cam1", 1_000, Duration::from_secs(60));
        assert_eq!(exp, 1_060);
        assert!(a.token_valid("cam1", &t, 1_059));
        assert!(!a.token_valid("cam1", &t, 1_060), "expired");
        assert!(!a.token_valid("cam2", &t, 1_000), "other stream");
        let forged = format!("2000.{}", t.split_once('.').unwrap().1);
        assert!(!a.token_valid("cam1", &forged, 1_000), "expiry moved");
        for junk in ["", ".", "x.y", "1060", "1060."] {
            assert!(!a.token_valid("cam1", junk, 1_000), "{junk:?}");
        }
        let h = headers(&[("authorization", &format!("Bearer {t}"))]);
        assert!(a.require_player(&h, None, "cam1", 1_000).is_ok());
        assert!(a
            .require_player(&headers(&[]), Some(&t), "cam1", 1_000)
            .is_ok());
        assert!(a
            .require_player(&headers(&[]), Some(&t), "cam2", 1_000)
            .is_err());
        assert!(a
            .require_player(&headers(&[]), None, "cam1", 1_000)
            .is_err());
        let key = headers(&[("x-api-key", "admin-key-9")]);
        assert!(a.require_player(&key, None, "anything", 1_000).is_ok());
        // Another process (another secret) does not accept it.
        assert!(!auth("admin-key-9", 0).token_valid("cam1", &t, 1_000));
    }

    #[test]
    fn call_startups_are_limited_per_key() {
        let a = auth("key-one-111, key-two-222", 3);
        let t0 = Instant::now();
        let one = Caller::Key(0, ApiScope::Admin);
        let two = Caller::Key(1, ApiScope::Admin);
        for _ in 0..3 {
            a.call_startup(one, t0).unwrap();
        }
        match a.call_startup(one, t0) {
            Err(ApiError::TooManyRequests(m, after)) => {
                assert_eq!(after, 20, "{m}");
                assert!(m.contains("api_call_startup_per_minute"));
            }
            other => panic!("{other:?}"),
        }
        a.call_startup(two, t0).unwrap();
        // One comes back every 20 s.
        a.call_startup(one, t0 + Duration::from_secs(20)).unwrap();
        assert!(a.call_startup(one, t0 + Duration::from_secs(21)).is_err());
        let open = auth("", 0);
        for _ in 0..100 {
            open.call_startup(Caller::Open, t0).unwrap();
        }
    }

    #[test]
    fn cors_origins() {
        let a = auth("", 0);
        assert_eq!(
            a.cors_origin("https://ops.example.com").as_deref(),
            Some("https://ops.example.com")
        );
        assert_eq!(a.cors_origin("https://evil.example.com"), None);
    }
}
