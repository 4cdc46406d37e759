//! HTTP Digest authentication for SIP (RFC 2617, RFC 3261 §22, RFC 8760 for the MD5 family).
//!
//! This module owns parsing a `WWW-Authenticate` / `Proxy-Authenticate` challenge, computing the
//! `Authorization` / `Proxy-Authorization` value, and the small bookkeeping a UA needs between
//! requests ([`DigestSession`]: nonce reuse with an increasing nonce count, and detection of
//! rejected credentials so the UA stops instead of looping).
//!
//! It is pure: no clock, no randomness (the caller passes the client nonce), no I/O. It must
//! never log or print a password or a computed response; [`Credentials`]'s `Debug` hides the
//! password.
//!
//! Supported: algorithms `MD5`, `MD5-sess`, `SHA-256` and `SHA-256-sess` (RFC 8760), qop
//! `auth` or no qop (RFC 2069 compatibility). Of several challenges for one realm in a
//! response, the topmost one with a supported algorithm is answered (RFC 8760 §2.4).
//! Not supported (an error names it): `qop=auth-int` alone (it hashes the body, which this
//! API does not take), SHA-256 and SHA-512-256 (RFC 8760), other schemes than Digest.

use std::collections::HashMap;
use std::fmt;

use md5::{Digest as _, Md5};

/// Why a challenge could not be parsed or answered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    /// The challenge's scheme is not Digest (e.g. Basic).
    #[error("unsupported authentication scheme {0:?} (only Digest)")]
    UnsupportedScheme(String),
    /// A feature the challenge requires that we do not implement.
    #[error("unsupported digest {what}: {value:?}")]
    Unsupported {
        /// Which parameter (`algorithm`, `qop`).
        what: &'static str,
        /// Its value as received.
        value: String,
    },
    /// A required parameter is missing.
    #[error("digest challenge has no {0} parameter")]
    Missing(&'static str),
    /// The header value is not a well-formed list of `name=value` parameters.
    #[error("malformed digest challenge at byte {at}: {reason}")]
    Malformed {
        /// Byte offset in the header value.
        at: usize,
        /// What was expected.
        reason: &'static str,
    },
    /// A nonce count of 0, or the count reached its maximum.
    #[error("invalid nonce count {0}")]
    InvalidNonceCount(u32),
}

/// Digest algorithm of a challenge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// `MD5` (the default when the parameter is absent).
    Md5,
    /// `MD5-sess`.
    Md5Sess,
    /// `SHA-256` (RFC 8760).
    Sha256,
    /// `SHA-256-sess` (RFC 8760).
    Sha256Sess,
}

impl Algorithm {
    fn as_str(self) -> &'static str {
        match self {
            Algorithm::Md5 => "MD5",
            Algorithm::Md5Sess => "MD5-sess",
            Algorithm::Sha256 => "SHA-256",
            Algorithm::Sha256Sess => "SHA-256-sess",
        }
    }

    fn is_sess(self) -> bool {
        matches!(self, Algorithm::Md5Sess | Algorithm::Sha256Sess)
    }

    /// The hex digest of `data` with this algorithm's hash.
    fn hex(self, data: &str) -> String {
        match self {
            Algorithm::Md5 | Algorithm::Md5Sess => md5_hex(data),
            Algorithm::Sha256 | Algorithm::Sha256Sess => {
                use sha2::Digest as _;
                hex::encode(sha2::Sha256::digest(data.as_bytes()))
            }
        }
    }
}

/// A quality-of-protection value offered by a challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Qop {
    /// `auth`.
    Auth,
    /// `auth-int`.
    AuthInt,
    /// Any other token, kept so that an error can name it.
    Other(String),
}

/// A parsed `Digest` challenge (the value of a `WWW-Authenticate` or `Proxy-Authenticate`
/// header).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// Protection realm.
    pub realm: String,
    /// Server nonce.
    pub nonce: String,
    /// Opaque value to echo back.
    pub opaque: Option<String>,
    /// Hash algorithm.
    pub algorithm: Algorithm,
    /// Offered qop values; `None` when the challenge has no qop parameter (RFC 2069 mode).
    pub qop: Option<Vec<Qop>>,
    /// `stale=true`: the previous nonce expired but the credentials were right.
    pub stale: bool,
}

impl Challenge {
    /// Parses a header value such as
    /// `Digest realm="sip.example.com", nonce="abc", qop="auth,auth-int", algorithm=MD5`.
    ///
    /// Tolerates any spacing, parameter order and case of names, quoted or unquoted values,
    /// commas and escaped quotes inside quoted strings, and unknown parameters (ignored).
    /// Errors: another scheme, an algorithm other than MD5/MD5-sess, a missing realm or nonce,
    /// or a value that is not a parameter list.
    pub fn parse(header_value: &str) -> Result<Challenge, DigestError> {
        let s = header_value.trim_start();
        let offset = header_value.len() - s.len();
        let scheme_end = s.find(|c: char| c.is_ascii_whitespace()).unwrap_or(s.len());
        let scheme = &s[..scheme_end];
        if !scheme.eq_ignore_ascii_case("Digest") {
            return Err(DigestError::UnsupportedScheme(scheme.to_owned()));
        }
        let params = parse_params(header_value, offset + scheme_end)?;

        let mut realm = None;
        let mut nonce = None;
        let mut opaque = None;
        let mut algorithm = Algorithm::Md5;
        let mut qop = None;
        let mut stale = false;
        for (name, value) in params {
            match name.to_ascii_lowercase().as_str() {
                "realm" => realm = Some(value),
                "nonce" => nonce = Some(value),
                "opaque" => opaque = Some(value),
                "stale" => stale = value.eq_ignore_ascii_case("true"),
                "algorithm" => {
                    algorithm = if value.eq_ignore_ascii_case("MD5") {
                        Algorithm::Md5
                    } else if value.eq_ignore_ascii_case("MD5-sess") {
                        Algorithm::Md5Sess
                    } else if value.eq_ignore_ascii_case("SHA-256") {
                        Algorithm::Sha256
                    } else if value.eq_ignore_ascii_case("SHA-256-sess") {
                        Algorithm::Sha256Sess
                    } else {
                        return Err(DigestError::Unsupported {
                            what: "algorithm",
                            value,
                        });
                    }
                }
                "qop" => {
                    qop = Some(
                        value
                            .split(',')
                            .map(str::trim)
                            .filter(|v| !v.is_empty())
                            .map(|v| {
                                if v.eq_ignore_ascii_case("auth") {
                                    Qop::Auth
                                } else if v.eq_ignore_ascii_case("auth-int") {
                                    Qop::AuthInt
                                } else {
                                    Qop::Other(v.to_owned())
                                }
                            })
                            .collect(),
                    )
                }
                _ => {}
            }
        }
        Ok(Challenge {
            realm: realm.ok_or(DigestError::Missing("realm"))?,
            nonce: nonce.ok_or(DigestError::Missing("nonce"))?,
            opaque,
            algorithm,
            qop,
            stale,
        })
    }
}

/// Parses `name=value` pairs separated by commas, starting at byte `pos` of `s`.
fn parse_params(s: &str, mut pos: usize) -> Result<Vec<(String, String)>, DigestError> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let skip = |pos: &mut usize, also_commas: bool| {
        while *pos < b.len() && (b[*pos].is_ascii_whitespace() || (also_commas && b[*pos] == b','))
        {
            *pos += 1;
        }
    };
    loop {
        skip(&mut pos, true);
        if pos >= b.len() {
            return Ok(out);
        }
        let name_start = pos;
        while pos < b.len() && is_token_byte(b[pos]) {
            pos += 1;
        }
        if pos == name_start {
            return Err(DigestError::Malformed {
                at: pos,
                reason: "expected a parameter name",
            });
        }
        let name = s[name_start..pos].to_owned();
        skip(&mut pos, false);
        if b.get(pos) != Some(&b'=') {
            return Err(DigestError::Malformed {
                at: pos,
                reason: "expected '=' after the parameter name",
            });
        }
        pos += 1;
        skip(&mut pos, false);
        let value = if b.get(pos) == Some(&b'"') {
            pos += 1;
            let mut v = Vec::new();
            loop {
                match b.get(pos) {
                    None => {
                        return Err(DigestError::Malformed {
                            at: pos,
                            reason: "unterminated quoted string",
                        })
                    }
                    Some(b'"') => {
                        pos += 1;
                        break;
                    }
                    Some(b'\\') if pos + 1 < b.len() => {
                        v.push(b[pos + 1]);
                        pos += 2;
                    }
                    Some(&c) => {
                        v.push(c);
                        pos += 1;
                    }
                }
            }
            String::from_utf8_lossy(&v).into_owned()
        } else {
            let start = pos;
            while pos < b.len() && b[pos] != b',' && !b[pos].is_ascii_whitespace() {
                pos += 1;
            }
            s[start..pos].to_owned()
        };
        out.push((name, value));
        skip(&mut pos, false);
        match b.get(pos) {
            None => return Ok(out),
            Some(b',') => pos += 1,
            Some(_) => {
                return Err(DigestError::Malformed {
                    at: pos,
                    reason: "expected ',' between parameters",
                })
            }
        }
    }
}

fn is_token_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&c)
}

/// A SIP account's digest credentials.
///
/// `Debug` prints the username only; the password is never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    username: String,
    password: String,
}

impl Credentials {
    /// Credentials for `username` (the authentication name) and `password`.
    pub fn new(username: impl Into<String>, password: impl Into<String>) -> Self {
        Credentials {
            username: username.into(),
            password: password.into(),
        }
    }

    /// The authentication user name.
    pub fn username(&self) -> &str {
        &self.username
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

fn md5_hex(data: &str) -> String {
    format!("{:x}", Md5::digest(data.as_bytes()))
}

/// Quotes a value for a quoted-string, escaping `"` and `\`.
fn quote(v: &str) -> String {
    let mut s = String::with_capacity(v.len() + 2);
    s.push('"');
    for c in v.chars() {
        if c == '"' || c == '\\' {
            s.push('\\');
        }
        s.push(c);
    }
    s.push('"');
    s
}

/// Computes the `Authorization` / `Proxy-Authorization` header value answering `ch` for a
/// request with `method` (e.g. `REGISTER`) and Request-URI `uri`.
///
/// `nc` is the nonce count (1 for the first use of a nonce) and `cnonce` a client nonce the
/// caller picked at random; both are only sent when qop is used (or for MD5-sess, which needs
/// the cnonce). With qop `auth` offered the answer uses it; with no qop parameter it uses the
/// RFC 2069 form. Errors: only `auth-int` (or unknown values) offered, or `nc` = 0.
pub fn authorize(
    ch: &Challenge,
    creds: &Credentials,
    method: &str,
    uri: &str,
    nc: u32,
    cnonce: &str,
) -> Result<String, DigestError> {
    let use_qop = match &ch.qop {
        None => false,
        Some(list) if list.contains(&Qop::Auth) => true,
        Some(list) => {
            let value = list
                .iter()
                .map(|q| match q {
                    Qop::Auth => "auth",
                    Qop::AuthInt => "auth-int",
                    Qop::Other(o) => o.as_str(),
                })
                .collect::<Vec<_>>()
                .join(",");
            return Err(DigestError::Unsupported { what: "qop", value });
        }
    };
    if nc == 0 {
        return Err(DigestError::InvalidNonceCount(nc));
    }
    let alg = ch.algorithm;
    let mut ha1 = alg.hex(&format!(
        "{}:{}:{}",
        creds.username, ch.realm, creds.password
    ));
    if alg.is_sess() {
        ha1 = alg.hex(&format!("{ha1}:{}:{cnonce}", ch.nonce));
    }
    let ha2 = alg.hex(&format!("{method}:{uri}"));
    let nc_text = format!("{nc:08x}");
    let response = if use_qop {
        alg.hex(&format!("{ha1}:{}:{nc_text}:{cnonce}:auth:{ha2}", ch.nonce))
    } else {
        alg.hex(&format!("{ha1}:{}:{ha2}", ch.nonce))
    };

    let mut out = format!(
        "Digest username={}, realm={}, nonce={}, uri={}, response=\"{response}\", algorithm={}",
        quote(&creds.username),
        quote(&ch.realm),
        quote(&ch.nonce),
        quote(uri),
        ch.algorithm.as_str(),
    );
    if use_qop {
        out.push_str(&format!(
            ", cnonce={}, qop=auth, nc={nc_text}",
            quote(cnonce)
        ));
    } else if ch.algorithm.is_sess() {
        out.push_str(&format!(", cnonce={}", quote(cnonce)));
    }
    if let Some(opaque) = &ch.opaque {
        out.push_str(&format!(", opaque={}", quote(opaque)));
    }
    Ok(out)
}

/// Which header carried a challenge, and so which header answers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChallengeKind {
    /// `WWW-Authenticate` (401), answered with `Authorization`.
    Www,
    /// `Proxy-Authenticate` (407), answered with `Proxy-Authorization`.
    Proxy,
}

/// What the UA should do after a challenge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChallengeVerdict {
    /// Re-send the request with fresh [`DigestSession::authorizations`].
    Retry,
    /// The server rejected credentials computed for a nonce it had just issued, without
    /// `stale=true`: the username or password is wrong. Stop (report 401/407 to the API).
    WrongCredentials,
}

/// One header to add to a request: `Authorization` or `Proxy-Authorization` with its value.
///
/// `Debug` omits the value, which carries the digest response.
#[derive(Clone, PartialEq, Eq)]
pub struct AuthorizationHeader {
    /// Which header name to use.
    pub kind: ChallengeKind,
    /// The header value (`Digest username=…`).
    pub value: String,
}

impl fmt::Debug for AuthorizationHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthorizationHeader")
            .field("kind", &self.kind)
            .field("value", &"<redacted>")
            .finish()
    }
}

impl AuthorizationHeader {
    /// `Authorization` or `Proxy-Authorization`.
    pub fn name(&self) -> &'static str {
        match self.kind {
            ChallengeKind::Www => "Authorization",
            ChallengeKind::Proxy => "Proxy-Authorization",
        }
    }

    /// The rsip header, ready to push into a request's headers.
    pub fn into_header(self) -> rsip::Header {
        use rsip::prelude::UntypedHeader;
        match self.kind {
            ChallengeKind::Www => rsip::headers::Authorization::new(self.value).into(),
            ChallengeKind::Proxy => rsip::headers::ProxyAuthorization::new(self.value).into(),
        }
    }
}

#[derive(Debug, Clone)]
struct RealmState {
    challenge: Challenge,
    /// Nonce count of the last answer (0: not answered yet).
    nc: u32,
}

/// Per-account digest state across requests (REGISTER refreshes, INVITEs, BYEs).
///
/// # Drive contract
///
/// 1. Create one per SIP account with [`DigestSession::new`].
/// 2. On a 401/407, parse each `WWW-Authenticate` / `Proxy-Authenticate` value with
///    [`Challenge::parse`] and pass it to [`on_challenge`]. If any verdict is
///    [`ChallengeVerdict::WrongCredentials`], stop; otherwise re-send the request (new CSeq,
///    new branch) with the headers from [`authorizations`].
/// 3. For every later request to the same server, add [`authorizations`] pre-emptively: the
///    remembered nonce is reused with the nonce count incremented. When the server answers a
///    reused nonce with a new challenge (expired nonce, with or without `stale=true`), that is
///    a [`ChallengeVerdict::Retry`]; when it rejects an answer to a nonce it had just issued
///    (nonce count 1) without `stale=true`, the credentials are wrong.
///
/// A server that answers every attempt with `stale=true` would make the UA retry forever: the
/// UA caps its retries per request (one or two are enough).
///
/// One state is kept per (header kind, realm). Requests sent concurrently with the same realm
/// share the nonce count, as RFC 2617 intends; the verdict looks at the last answer sent.
///
/// [`on_challenge`]: DigestSession::on_challenge
/// [`authorizations`]: DigestSession::authorizations
#[derive(Debug, Clone)]
pub struct DigestSession {
    creds: Credentials,
    realms: HashMap<(ChallengeKind, String), RealmState>,
}

impl DigestSession {
    /// A session for one account.
    pub fn new(creds: Credentials) -> Self {
        DigestSession {
            creds,
            realms: HashMap::new(),
        }
    }

    /// The account's credentials.
    pub fn credentials(&self) -> &Credentials {
        &self.creds
    }

    /// Records a challenge and says whether retrying makes sense (see the type's contract).
    pub fn on_challenge(&mut self, kind: ChallengeKind, ch: Challenge) -> ChallengeVerdict {
        let key = (kind, ch.realm.clone());
        let verdict = match self.realms.get(&key) {
            // Our answer to a nonce the server had just given us was refused, and the server
            // does not say the nonce went stale: the credentials are wrong.
            Some(prev) if prev.nc == 1 && !ch.stale => ChallengeVerdict::WrongCredentials,
            _ => ChallengeVerdict::Retry,
        };
        if verdict == ChallengeVerdict::Retry {
            self.realms.insert(
                key,
                RealmState {
                    challenge: ch,
                    nc: 0,
                },
            );
        }
        verdict
    }

    /// The headers answering every remembered challenge for a request with `method` and
    /// Request-URI `uri`, each with its nonce count incremented. Empty before any challenge.
    ///
    /// Errors as [`authorize`] (an unsupported qop, or a nonce count that would wrap); the
    /// state is then unchanged.
    pub fn authorizations(
        &mut self,
        method: &str,
        uri: &str,
        cnonce: &str,
    ) -> Result<Vec<AuthorizationHeader>, DigestError> {
        // Deterministic order: Proxy-Authorization first, then by realm.
        let mut keys: Vec<&(ChallengeKind, String)> = self.realms.keys().collect();
        keys.sort_by_key(|(kind, realm)| (*kind != ChallengeKind::Proxy, realm.clone()));
        let mut out = Vec::with_capacity(keys.len());
        let mut next = Vec::with_capacity(keys.len());
        for key in keys {
            let Some(state) = self.realms.get(key) else {
                continue;
            };
            let nc = state
                .nc
                .checked_add(1)
                .ok_or(DigestError::InvalidNonceCount(state.nc))?;
            let value = authorize(&state.challenge, &self.creds, method, uri, nc, cnonce)?;
            out.push(AuthorizationHeader { kind: key.0, value });
            next.push((key.clone(), nc));
        }
        for (key, nc) in next {
            if let Some(state) = self.realms.get_mut(&key) {
                state.nc = nc;
            }
        }
        Ok(out)
    }

    /// Forgets every challenge (e.g. after changing the account's password).
    pub fn reset(&mut self) {
        self.realms.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pulls `name=value` (quotes stripped) out of an Authorization value.
    fn param(header: &str, name: &str) -> Option<String> {
        let rest = header.strip_prefix("Digest ").unwrap();
        parse_params(rest, 0)
            .unwrap()
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
    }

    #[test]
    fn rfc2617_section_3_5_vector() {
        let ch = Challenge::parse(
            r#"Digest
                 realm="testrealm@host.com",
                 qop="auth,auth-int",
                 nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093",
                 opaque="5ccc069c403ebaf9f0171e9517f40e41""#,
        )
        .unwrap();
        assert_eq!(ch.qop, Some(vec![Qop::Auth, Qop::AuthInt]));
        let creds = Credentials::new("Mufasa", "Circle Of Life");
        let h = authorize(&ch, &creds, "GET", "/dir/index.html", 1, "0a4f113b").unwrap();
        assert_eq!(
            param(&h, "response").as_deref(),
            Some("6629fae49393a05397450978507c4ef1")
        );
        assert_eq!(
            h,
            "Digest username=\"Mufasa\", realm=\"testrealm@host.com\", \
             nonce=\"dcd98b7102dd2f0e8b11d0f600bfb0c093\", uri=\"/dir/index.html\", \
             response=\"6629fae49393a05397450978507c4ef1\", algorithm=MD5, \
             cnonce=\"0a4f113b\", qop=auth, nc=00000001, \
             opaque=\"5ccc069c403ebaf9f0171e9517f40e41\""
        );
    }

    /// RFC 7616 §3.9.1, the SHA-256 and the MD5 answer to the same challenge.
    #[test]
    fn rfc7616_section_3_9_1_vectors() {
        let challenge = |alg: &str| {
            Challenge::parse(&format!(
                r#"Digest realm="http-auth@example.org", qop="auth, auth-int", algorithm={alg},
                   nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",
                   opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS""#
            ))
            .unwrap()
        };
        let creds = Credentials::new("Mufasa", "Circle of Life");
        let cnonce = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ";
        let sha = challenge("SHA-256");
        assert_eq!(sha.algorithm, Algorithm::Sha256);
        let h = authorize(&sha, &creds, "GET", "/dir/index.html", 1, cnonce).unwrap();
        assert_eq!(
            param(&h, "response").as_deref(),
            Some("753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1")
        );
        assert_eq!(param(&h, "algorithm").as_deref(), Some("SHA-256"));
        let md5 = authorize(
            &challenge("MD5"),
            &creds,
            "GET",
            "/dir/index.html",
            1,
            cnonce,
        )
        .unwrap();
        assert_eq!(
            param(&md5, "response").as_deref(),
            Some("8ca523f5e9506fed4657c9700eebdbec")
        );
        assert_eq!(challenge("sha-256-SESS").algorithm, Algorithm::Sha256Sess);
    }

    #[test]
    fn sip_vector_without_qop() {
        // By hand: HA1 = MD5("alice:sip.example.com:s3cr3t") = f4e497010f7a8c57f2c7897781577c57,
        // HA2 = MD5("REGISTER:sip:sip.example.com") = f5a9c05d4ad57c53aaa1a7b89507efaa,
        // response = MD5(HA1:nonce:HA2).
        let ch = Challenge::parse(r#"Digest realm="sip.example.com", nonce="4a1b7f3e""#).unwrap();
        assert_eq!(ch.qop, None);
        assert_eq!(ch.algorithm, Algorithm::Md5);
        let creds = Credentials::new("alice", "s3cr3t");
        let h = authorize(&ch, &creds, "REGISTER", "sip:sip.example.com", 1, "ignored").unwrap();
        assert_eq!(
            h,
            "Digest username=\"alice\", realm=\"sip.example.com\", nonce=\"4a1b7f3e\", \
             uri=\"sip:sip.example.com\", response=\"82d906d5a985d039753767ed7a591f04\", \
             algorithm=MD5"
        );
    }

    #[test]
    fn md5_sess_with_qop() {
        let ch = Challenge::parse(
            "Digest realm=sip.example.com,nonce=n0nce,algorithm=md5-sess,qop=auth",
        )
        .unwrap();
        assert_eq!(ch.algorithm, Algorithm::Md5Sess);
        let creds = Credentials::new("alice", "s3cr3t");
        let h = authorize(&ch, &creds, "INVITE", "sip:bob@example.com", 2, "c1").unwrap();
        assert_eq!(
            param(&h, "response").as_deref(),
            Some("0828670537c5164c2d20ed4a4701d38b")
        );
        assert_eq!(param(&h, "algorithm").as_deref(), Some("MD5-sess"));
        assert_eq!(param(&h, "nc").as_deref(), Some("00000002"));
    }

    #[test]
    fn parses_odd_challenges() {
        let ch = Challenge::parse(
            "  digest   nonce = \"a,b\\\"c\" ,algorithm=MD5 ,  domain=\"sip:x sip:y\",, \
             REALM=\"Example, Inc.\", stale=TRUE, qop=\" auth-int , auth \", x-ext=tok ",
        )
        .unwrap();
        assert_eq!(ch.nonce, "a,b\"c");
        assert_eq!(ch.realm, "Example, Inc.");
        assert!(ch.stale);
        assert_eq!(ch.qop, Some(vec![Qop::AuthInt, Qop::Auth]));
        assert_eq!(ch.opaque, None);

        let ch = Challenge::parse(r#"Digest realm="r",nonce="n",opaque="o",stale=false"#).unwrap();
        assert_eq!(ch.opaque.as_deref(), Some("o"));
        assert!(!ch.stale);
    }

    #[test]
    fn rejects_what_it_cannot_answer() {
        assert_eq!(
            Challenge::parse(r#"Basic realm="r""#),
            Err(DigestError::UnsupportedScheme("Basic".into()))
        );
        assert_eq!(
            Challenge::parse(r#"Digest realm="r", nonce="n", algorithm=SHA-512-256"#),
            Err(DigestError::Unsupported {
                what: "algorithm",
                value: "SHA-512-256".into()
            })
        );
        assert_eq!(
            Challenge::parse(r#"Digest realm="r""#),
            Err(DigestError::Missing("nonce"))
        );
        assert!(matches!(
            Challenge::parse(r#"Digest realm="r, nonce="n""#),
            Err(DigestError::Malformed { .. })
        ));
        assert!(matches!(
            Challenge::parse(r#"Digest realm "r""#),
            Err(DigestError::Malformed { .. })
        ));
        assert!(Challenge::parse("").is_err());
        assert!(Challenge::parse("Digest").is_err());
    }

    #[test]
    fn auth_int_only_is_an_error() {
        let ch = Challenge::parse(r#"Digest realm="r", nonce="n", qop="auth-int""#).unwrap();
        let err =
            authorize(&ch, &Credentials::new("u", "p"), "INVITE", "sip:x", 1, "c").unwrap_err();
        assert_eq!(
            err,
            DigestError::Unsupported {
                what: "qop",
                value: "auth-int".into()
            }
        );
        assert!(err.to_string().contains("auth-int"));
    }

    #[test]
    fn credentials_debug_hides_the_password() {
        let creds = Credentials::new("alice", "hunter2-secret");
        let dbg = format!("{creds:?}");
        assert!(dbg.contains("alice"));
        assert!(!dbg.contains("hunter2"));
        let mut session = DigestSession::new(creds);
        let ch = Challenge::parse(r#"Digest realm="x", nonce="n""#).unwrap();
        session.on_challenge(ChallengeKind::Www, ch);
        let hs = session.authorizations("REGISTER", "sip:x", "c").unwrap();
        let response = param(&hs[0].value, "response").unwrap();
        for shown in [format!("{session:?}"), format!("{hs:?}")] {
            assert!(!shown.contains("hunter2"));
            assert!(!shown.contains(&response));
        }
    }

    #[test]
    fn escapes_quotes_in_values() {
        let ch = Challenge::parse(r#"Digest realm="a\"b", nonce="n""#).unwrap();
        let h = authorize(&ch, &Credentials::new("u\"v", "p"), "BYE", "sip:x", 1, "c").unwrap();
        assert!(h.contains(r#"username="u\"v""#));
        assert_eq!(param(&h, "realm").as_deref(), Some("a\"b"));
    }

    #[test]
    fn session_reuses_the_nonce_and_counts() {
        let mut s = DigestSession::new(Credentials::new("alice", "s3cr3t"));
        assert!(s
            .authorizations("REGISTER", "sip:x", "c")
            .unwrap()
            .is_empty());
        let ch = Challenge::parse(r#"Digest realm="x", nonce="n1", qop="auth""#).unwrap();
        assert_eq!(
            s.on_challenge(ChallengeKind::Www, ch),
            ChallengeVerdict::Retry
        );
        for nc in ["00000001", "00000002", "00000003"] {
            let hs = s.authorizations("REGISTER", "sip:x", "c").unwrap();
            assert_eq!(hs.len(), 1);
            assert_eq!(hs[0].name(), "Authorization");
            assert_eq!(param(&hs[0].value, "nc").as_deref(), Some(nc));
            assert_eq!(param(&hs[0].value, "nonce").as_deref(), Some("n1"));
        }
        // The reused nonce expired: a new nonce without stale is still a retry, and resets nc.
        let ch = Challenge::parse(r#"Digest realm="x", nonce="n2", qop="auth""#).unwrap();
        assert_eq!(
            s.on_challenge(ChallengeKind::Www, ch),
            ChallengeVerdict::Retry
        );
        let hs = s.authorizations("REGISTER", "sip:x", "c").unwrap();
        assert_eq!(param(&hs[0].value, "nc").as_deref(), Some("00000001"));
        assert_eq!(param(&hs[0].value, "nonce").as_deref(), Some("n2"));
        // stale=true after a fresh answer: retry.
        let ch =
            Challenge::parse(r#"Digest realm="x", nonce="n3", qop="auth", stale=true"#).unwrap();
        assert_eq!(
            s.on_challenge(ChallengeKind::Www, ch),
            ChallengeVerdict::Retry
        );
        let hs = s.authorizations("REGISTER", "sip:x", "c").unwrap();
        assert_eq!(param(&hs[0].value, "nonce").as_deref(), Some("n3"));
    }

    #[test]
    fn session_detects_wrong_credentials() {
        let mut s = DigestSession::new(Credentials::new("alice", "wrong"));
        let ch = Challenge::parse(r#"Digest realm="x", nonce="n1""#).unwrap();
        assert_eq!(
            s.on_challenge(ChallengeKind::Proxy, ch),
            ChallengeVerdict::Retry
        );
        let hs = s.authorizations("INVITE", "sip:bob@x", "c").unwrap();
        assert_eq!(hs[0].name(), "Proxy-Authorization");
        assert!(matches!(
            hs[0].clone().into_header(),
            rsip::Header::ProxyAuthorization(_)
        ));
        // Our first answer to n1 was refused with a new challenge and no stale flag.
        let ch = Challenge::parse(r#"Digest realm="x", nonce="n2""#).unwrap();
        assert_eq!(
            s.on_challenge(ChallengeKind::Proxy, ch),
            ChallengeVerdict::WrongCredentials
        );
    }

    #[test]
    fn session_answers_proxy_and_registrar_realms() {
        let mut s = DigestSession::new(Credentials::new("alice", "pw"));
        let www = Challenge::parse(r#"Digest realm="registrar", nonce="a""#).unwrap();
        let proxy = Challenge::parse(r#"Digest realm="proxy", nonce="b""#).unwrap();
        s.on_challenge(ChallengeKind::Www, www);
        s.on_challenge(ChallengeKind::Proxy, proxy);
        let hs = s.authorizations("INVITE", "sip:bob@x", "c").unwrap();
        let names: Vec<_> = hs.iter().map(|h| h.name()).collect();
        assert_eq!(names, ["Proxy-Authorization", "Authorization"]);
    }
}
