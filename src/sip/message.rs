//! Tolerant SIP message layer in front of rsip 0.4.
//!
//! This module owns the bytes-to-`rsip::SipMessage` boundary: framing (datagrams and TCP
//! streams), normalisation of what RFC 3261 allows but rsip does not parse (line folding, LWS
//! around colons, compact header names, comma-joined values), the syntax checks RFC 4475 asks
//! a UA to reject, IPv6 references in hosts (RFC 5118: `[...]` required, the RFC 3261 ABNF's
//! extra colon tolerated), and serialisation back to wire bytes. It does not interpret messages:
//! transactions, dialogs and answers live elsewhere. A rejected request keeps the headers
//! needed to answer it ([`ParseError::reply`]).
//!
//! Nothing here panics on input: every index is checked and every size is bounded.

use std::net::Ipv6Addr;

use bytes::Bytes;
use rsip::{Header, Headers, Method, SipMessage, StatusCode};

/// Largest header block accepted (start line + headers), to bound memory per connection.
pub const MAX_HEADER_BLOCK: usize = 64 * 1024;
/// Largest body accepted on a stream. SIP bodies (SDP, SIPREC multipart) are a few KiB.
pub const MAX_BODY: usize = 1024 * 1024;

/// What went wrong, without the position (see [`ParseError`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseErrorKind {
    #[error("empty message (only CRLF keepalives)")]
    Empty,
    #[error("no empty line ends the header block")]
    MissingEmptyLine,
    #[error("malformed start line")]
    BadStartLine,
    #[error("unsupported SIP version {0:?}")]
    UnsupportedVersion(String),
    #[error("extension method {0:?} is not supported")]
    UnsupportedMethod(String),
    #[error("Request-URI scheme of {0:?} is not supported")]
    UnsupportedUriScheme(String),
    #[error("malformed Request-URI")]
    BadRequestUri,
    #[error("Request-URI host: {0}")]
    BadUriHost(&'static str),
    #[error("malformed header line")]
    BadHeaderLine,
    #[error("header line is not UTF-8")]
    NotUtf8,
    #[error("malformed header value: {0}")]
    BadHeaderValue(&'static str),
    #[error("missing mandatory header")]
    MissingHeader,
    #[error("header appears more than once")]
    DuplicateHeader,
    #[error("CSeq method {cseq:?} does not match request method {request:?}")]
    CSeqMismatch { request: String, cseq: String },
    #[error("Content-Length values conflict")]
    ConflictingContentLength,
    #[error("body has {actual} bytes, Content-Length says {expected}")]
    BodyTooShort { expected: usize, actual: usize },
    #[error("no Content-Length on a stream transport")]
    MissingContentLength,
    #[error("header block larger than {MAX_HEADER_BLOCK} bytes")]
    HeaderBlockTooLarge,
    #[error("body larger than {MAX_BODY} bytes")]
    BodyTooLarge,
    #[error("rsip rejected the normalised message: {0}")]
    Rsip(String),
}

/// A message that could not be accepted: what, where (byte offset and 1-based line in the
/// input, and the header's full name when one is at fault), and, for requests, enough of the
/// headers to answer it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} at byte {offset} (line {line}){}", .header.as_deref().map(|h| format!(" in header {h}")).unwrap_or_default())]
pub struct ParseError {
    pub kind: ParseErrorKind,
    pub offset: usize,
    pub line: usize,
    pub header: Option<String>,
    /// Normalised `Name: value` lines (all Via, From, To, Call-ID, CSeq) of a request.
    reply_headers: Option<Vec<String>>,
}

impl ParseError {
    fn new(kind: ParseErrorKind, offset: usize, line: usize, header: Option<&str>) -> Self {
        Self {
            kind,
            offset,
            line,
            header: header.map(str::to_owned),
            reply_headers: None,
        }
    }

    /// The status a UAS answers this fault with, and a reason phrase that names it: 505 for
    /// another SIP version (RFC 4475 §3.1.2.16), 501 for an extension
    /// method, 416 for a Request-URI scheme we do not know, 400 for the rest.
    pub fn status(&self) -> (u16, String) {
        match &self.kind {
            ParseErrorKind::UnsupportedVersion(_) => (505, "Version Not Supported".into()),
            ParseErrorKind::UnsupportedMethod(_) => (501, "Not Implemented".into()),
            ParseErrorKind::UnsupportedUriScheme(_) => (416, "Unsupported URI Scheme".into()),
            kind => {
                let text = kind.to_string();
                let what = match &self.header {
                    Some(h) if !text.contains(h.as_str()) => format!("{text} in {h}"),
                    _ => text,
                };
                // Bounded: a reason phrase is one line, and `what` may quote the input.
                let what: String = what.chars().take(120).collect();
                (400, format!("Bad Request ({what})"))
            }
        }
    }

    /// [`ParseError::reply`] with [`ParseError::status`].
    pub fn answer(&self) -> Option<Bytes> {
        let (code, reason) = self.status();
        self.reply(code, &reason)
    }

    /// A minimal stateless response (RFC 3261 §8.2.6) to the rejected request, or `None` when
    /// the message was a response or too broken to answer: the caller then drops it.
    pub fn reply(&self, code: u16, reason: &str) -> Option<Bytes> {
        let headers = self.reply_headers.as_ref()?;
        if !(100..=699).contains(&code) {
            return None;
        }
        // The reason comes from our own code, but a CR/LF in it would forge headers.
        let reason: String = reason.chars().filter(|c| !c.is_control()).collect();
        let mut out = format!("SIP/2.0 {code} {reason}\r\n");
        for line in headers {
            out.push_str(line);
            out.push_str("\r\n");
        }
        out.push_str("Content-Length: 0\r\n\r\n");
        Some(Bytes::from(out))
    }
}

/// Result of looking for one message at the start of a stream buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Not enough bytes yet: append more and call again.
    Incomplete,
    /// This many leading CR/LF bytes are RFC 5626 keepalives: discard them.
    KeepAlive(usize),
    /// One whole message (headers and Content-Length body) is this many bytes long.
    Message(usize),
    /// The stream cannot be framed any further: close the connection.
    Invalid(ParseError),
}

/// One header line after unfolding, with its name in full form and where it started.
#[derive(Debug, Clone)]
struct Line {
    name: String,
    value: String,
    offset: usize,
    line: usize,
}

/// The header block split out of the input.
struct Block<'a> {
    start: &'a str,
    start_offset: usize,
    start_line: usize,
    headers: Vec<Line>,
    /// First header problem found; kept so the reply headers can still be collected.
    header_error: Option<ParseError>,
    /// Offset of the body, or `None` when no empty line ended the headers.
    body_offset: Option<usize>,
    body_line: usize,
}

const COMPACT: &[(&str, &str)] = &[
    ("i", "Call-ID"),
    ("m", "Contact"),
    ("e", "Content-Encoding"),
    ("l", "Content-Length"),
    ("c", "Content-Type"),
    ("f", "From"),
    ("s", "Subject"),
    ("k", "Supported"),
    ("t", "To"),
    ("v", "Via"),
    ("o", "Event"),
    ("r", "Refer-To"),
    ("u", "Allow-Events"),
    ("x", "Session-Expires"),
    ("b", "Referred-By"),
];

/// Headers whose comma-joined values are split into one line each (RFC 3261 §7.3.1).
const LIST_HEADERS: &[&str] = &["Via", "Route", "Record-Route", "Contact"];
/// Headers holding name-addr / addr-spec values.
const ADDR_HEADERS: &[&str] = &["From", "To", "Contact", "Route", "Record-Route"];
/// Headers a request or response must carry exactly once.
const SINGLE_MANDATORY: &[&str] = &["From", "To", "Call-ID", "CSeq"];
/// Headers that may be absent but never repeated.
const SINGLE_OPTIONAL: &[&str] = &["Max-Forwards", "Content-Type"];

fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b)
}

fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(is_token_char)
}

fn full_name(name: &str) -> String {
    if name.len() == 1 {
        if let Some((_, long)) = COMPACT.iter().find(|(c, _)| c.eq_ignore_ascii_case(name)) {
            return (*long).to_owned();
        }
    }
    // Canonical spelling for the headers we inspect, so later lookups are exact.
    for known in [
        "Via",
        "From",
        "To",
        "Call-ID",
        "CSeq",
        "Contact",
        "Route",
        "Record-Route",
        "Content-Length",
        "Content-Type",
        "Max-Forwards",
    ] {
        if known.eq_ignore_ascii_case(name) {
            return known.to_owned();
        }
    }
    name.to_owned()
}

/// Iterates the lines of `buf` as (line without CR/LF, offset, offset after the LF).
fn lines(buf: &[u8]) -> impl Iterator<Item = (&[u8], usize, usize)> {
    let mut pos = 0usize;
    std::iter::from_fn(move || {
        let rest = buf.get(pos..)?;
        if rest.is_empty() {
            return None;
        }
        let (len, next) = match rest.iter().position(|&b| b == b'\n') {
            Some(i) => (i, pos + i + 1),
            None => (rest.len(), buf.len()),
        };
        let mut line = rest.get(..len)?;
        if let Some(stripped) = line.strip_suffix(b"\r") {
            line = stripped;
        }
        let start = pos;
        pos = next;
        Some((line, start, next))
    })
}

fn split_block(buf: &[u8], base: usize) -> Result<Block<'_>, ParseError> {
    let mut it = lines(buf).enumerate();
    let (start, start_line) = match it.next() {
        Some((_, (l, _, _))) => (l, 1),
        None => return Err(ParseError::new(ParseErrorKind::Empty, base, 1, None)),
    };
    let start = std::str::from_utf8(start)
        .map_err(|_| ParseError::new(ParseErrorKind::BadStartLine, base, 1, None))?;
    let mut block = Block {
        start,
        start_offset: base,
        start_line,
        headers: Vec::new(),
        header_error: None,
        body_offset: None,
        body_line: 0,
    };
    for (idx, (raw, off, next)) in it {
        let line_no = idx + 1;
        if raw.is_empty() {
            block.body_offset = Some(next);
            block.body_line = line_no + 1;
            break;
        }
        let fail = |kind, header: Option<&str>| ParseError::new(kind, base + off, line_no, header);
        let Ok(text) = std::str::from_utf8(raw) else {
            block
                .header_error
                .get_or_insert(fail(ParseErrorKind::NotUtf8, None));
            continue;
        };
        if text.starts_with([' ', '\t']) {
            // Folded continuation (RFC 3261 §7.3.1): equivalent to a single SP.
            match block.headers.last_mut() {
                Some(prev) => {
                    prev.value.push(' ');
                    prev.value.push_str(text.trim_matches([' ', '\t']));
                }
                None => {
                    block
                        .header_error
                        .get_or_insert(fail(ParseErrorKind::BadHeaderLine, None));
                }
            }
            continue;
        }
        let Some((name, value)) = text.split_once(':') else {
            block
                .header_error
                .get_or_insert(fail(ParseErrorKind::BadHeaderLine, None));
            continue;
        };
        let name = name.trim_end_matches([' ', '\t']);
        if !is_token(name) {
            block
                .header_error
                .get_or_insert(fail(ParseErrorKind::BadHeaderLine, Some(name)));
            continue;
        }
        block.headers.push(Line {
            name: full_name(name),
            value: value.trim_matches([' ', '\t']).to_owned(),
            offset: base + off,
            line: line_no,
        });
    }
    Ok(block)
}

/// Scans `s` outside quoted strings (with `\` escapes) and, when `angle`, outside `<...>`.
/// Calls `f(index, byte)` for every byte at depth 0; returns false on an unterminated quote.
fn scan_outside(s: &str, angle: bool, mut f: impl FnMut(usize, u8)) -> bool {
    let (mut quoted, mut escaped, mut depth) = (false, false, 0u32);
    for (i, b) in s.bytes().enumerate() {
        if quoted {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                quoted = false;
            }
            continue;
        }
        match b {
            b'"' if depth == 0 => quoted = true,
            b'<' if angle => depth = depth.saturating_add(1),
            b'>' if angle && depth > 0 => depth -= 1,
            _ if depth == 0 => f(i, b),
            _ => {}
        }
    }
    !quoted
}

/// Splits on commas outside quotes and `<...>`.
fn split_commas(s: &str) -> Option<Vec<&str>> {
    let mut cuts = Vec::new();
    if !scan_outside(s, true, |i, b| {
        if b == b',' {
            cuts.push(i);
        }
    }) {
        return None;
    }
    let mut parts = Vec::with_capacity(cuts.len() + 1);
    let mut from = 0;
    for cut in cuts {
        parts.push(s.get(from..cut)?.trim_matches([' ', '\t']));
        from = cut + 1;
    }
    parts.push(s.get(from..)?.trim_matches([' ', '\t']));
    Some(parts)
}

/// Removes LWS next to any of `seps` and collapses other LWS runs to one SP, outside quoted
/// strings and `<...>`: `SIP / 2.0 / UDP host ; branch = x` becomes `SIP/2.0/UDP host;branch=x`.
fn squeeze(s: &str, seps: &[u8]) -> String {
    let mut out = String::with_capacity(s.len());
    let (mut quoted, mut escaped, mut depth, mut pending_ws) = (false, false, 0u32, false);
    for c in s.chars() {
        if quoted {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                quoted = false;
            }
            continue;
        }
        if depth == 0 && (c == ' ' || c == '\t') {
            pending_ws = true;
            continue;
        }
        let is_sep = depth == 0 && c.is_ascii() && seps.contains(&(c as u8));
        if pending_ws && !is_sep && !out.is_empty() {
            let last_is_sep = out.bytes().last().is_some_and(|b| seps.contains(&b));
            if !last_is_sep {
                out.push(' ');
            }
        }
        pending_ws = false;
        match c {
            '"' if depth == 0 => quoted = true,
            '<' => depth = depth.saturating_add(1),
            '>' => depth = depth.saturating_sub(1),
            _ => {}
        }
        out.push(c);
    }
    out
}

/// `;name[=value]` parameters after the URI part of a name-addr or Via value.
fn params(value: &str) -> Vec<(&str, Option<&str>)> {
    // With <...> the URI's own parameters are inside the brackets and are skipped; without
    // brackets the first `;` ends the addr-spec (RFC 3261 §20.10) or the Via sent-by.
    let mut semis = Vec::new();
    scan_outside(value, true, |i, b| {
        if b == b';' {
            semis.push(i);
        }
    });
    let mut out = Vec::new();
    for (n, &at) in semis.iter().enumerate() {
        let end = semis.get(n + 1).copied().unwrap_or(value.len());
        let Some(p) = value.get(at + 1..end) else {
            continue;
        };
        match p.split_once('=') {
            Some((k, v)) => out.push((k.trim(), Some(v.trim()))),
            None => out.push((p.trim(), None)),
        }
    }
    out
}

fn check_params(value: &str) -> Result<(), &'static str> {
    if params(value).iter().any(|(k, _)| !is_token(k)) {
        return Err("empty or non-token parameter name");
    }
    Ok(())
}

fn check_via(value: &str) -> Result<(), &'static str> {
    let (proto, rest) = value
        .split_once(' ')
        .ok_or("Via needs sent-protocol and sent-by")?;
    let mut parts = proto.split('/');
    let ok = matches!(
        (parts.next(), parts.next(), parts.next(), parts.next()),
        (Some(n), Some("2.0"), Some(t), None) if n.eq_ignore_ascii_case("SIP") && is_token(t)
    );
    if !ok {
        return Err("Via sent-protocol is not SIP/2.0/transport");
    }
    let sent_by = rest.split(';').next().unwrap_or_default();
    if sent_by.is_empty() || sent_by.contains([' ', ',', '"', '<', '>']) {
        return Err("Via sent-by is malformed");
    }
    split_hostport(sent_by).map_err(|e| match e {
        HostError::Unbracketed => "Via sent-by: IPv6 address not enclosed in [ ]",
        HostError::BadReference => "Via sent-by: not an IPv6 address inside [ ]",
        HostError::Malformed => "Via sent-by is malformed",
        HostError::BadPort => "Via sent-by port is not a number up to 65535",
    })?;
    // `received=` is left alone: RFC 5118 §4.5 asks to accept it with or without [ ].
    check_params(rest)
}

/// What is wrong with a `host[:port]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HostError {
    /// Several colons outside `[...]`: an IPv6 address written without its brackets
    /// (RFC 5118 §4.2).
    Unbracketed,
    /// `[...]` that does not hold an IPv6 address.
    BadReference,
    /// Brackets out of place, an empty host, or characters no host has.
    Malformed,
    BadPort,
}

impl HostError {
    fn uri(self) -> ParseErrorKind {
        ParseErrorKind::BadUriHost(match self {
            HostError::Unbracketed => "IPv6 address not enclosed in [ ]",
            HostError::BadReference => "not an IPv6 address inside [ ]",
            HostError::Malformed => "malformed host",
            HostError::BadPort => "port is not a number up to 65535",
        })
    }
}

/// An IPv6 address as RFC 3261's `IPv6reference` holds it between its brackets. RFC 3261's
/// ABNF (taken from RFC 2373) also derives an extra colon before an embedded IPv4 address,
/// `2001:db8:::192.0.2.1`; RFC 5118 §4.10 asks to tolerate it as `2001:db8::192.0.2.1`.
pub fn parse_ipv6_reference(text: &str) -> Option<Ipv6Addr> {
    if let Ok(ip) = text.parse() {
        return Some(ip);
    }
    let (head, v4) = text.rsplit_once(":::")?;
    if !v4.contains('.') {
        return None;
    }
    format!("{head}::{v4}").parse().ok()
}

/// Splits RFC 3261's `hostport` (`host [ ":" port ]`), where host is a name, an IPv4 address
/// or an IPv6 reference in `[...]` (the only place a host may hold colons).
fn split_hostport(text: &str) -> Result<(&str, Option<u16>), HostError> {
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (inner, after) = rest.split_once(']').ok_or(HostError::Malformed)?;
        parse_ipv6_reference(inner).ok_or(HostError::BadReference)?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or(HostError::Malformed)?),
        };
        (text.get(..inner.len() + 2).unwrap_or(text), port)
    } else {
        if text.matches(':').count() > 1 {
            return Err(HostError::Unbracketed);
        }
        match text.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (text, None),
        }
    };
    if host.is_empty() || !(host.starts_with('[') || host.bytes().all(is_token_char)) {
        return Err(HostError::Malformed);
    }
    let port = match port {
        Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
            Some(p.parse::<u16>().map_err(|_| HostError::BadPort)?)
        }
        Some(_) => return Err(HostError::BadPort),
        None => None,
    };
    Ok((host, port))
}

fn check_addr(value: &str, name: &str) -> Result<(), &'static str> {
    if name == "Contact" && value == "*" {
        return Ok(());
    }
    let mut open = None;
    let mut close = None;
    if !scan_outside(value, false, |i, b| match b {
        b'<' if open.is_none() => open = Some(i),
        b'>' if close.is_none() => close = Some(i),
        _ => {}
    }) {
        return Err("unterminated quoted string");
    }
    match (open, close) {
        (Some(o), Some(c)) if o < c => {
            let display = value.get(..o).unwrap_or_default().trim();
            let quoted = display.len() >= 2 && display.starts_with('"') && display.ends_with('"');
            if !quoted && !display.split_whitespace().all(is_token) {
                return Err("display name is neither tokens nor a quoted string");
            }
            let uri = value.get(o + 1..c).unwrap_or_default();
            if uri.is_empty() || uri.contains([' ', '\t', '<']) {
                return Err("whitespace or nesting inside <...>");
            }
        }
        (None, None) => {
            if matches!(name, "Route" | "Record-Route") {
                return Err("Route values must be enclosed in <...>");
            }
            let spec = value.split(';').next().unwrap_or_default();
            // RFC 3261 §20.10: an addr-spec with `,`, `?` or `;` must be in <...>.
            if spec.is_empty() || spec.contains([' ', ',', '?', '"']) {
                return Err("addr-spec with reserved characters is not enclosed in <...>");
            }
        }
        _ => return Err("unbalanced <...>"),
    }
    check_params(value)
}

/// Normalises values (LWS, list splitting) and checks header syntax.
fn normalise(lines: Vec<Line>) -> (Vec<Line>, Option<ParseError>) {
    let mut out = Vec::with_capacity(lines.len());
    let mut first_err = None;
    for l in lines {
        let fail = |why| {
            ParseError::new(
                ParseErrorKind::BadHeaderValue(why),
                l.offset,
                l.line,
                Some(&l.name),
            )
        };
        let is_list = LIST_HEADERS.contains(&l.name.as_str());
        let values = if is_list && l.value != "*" {
            match split_commas(&l.value) {
                Some(v) => v.into_iter().map(str::to_owned).collect(),
                None => {
                    first_err.get_or_insert(fail("unterminated quoted string"));
                    continue;
                }
            }
        } else {
            vec![l.value.clone()]
        };
        for v in values {
            let v = match l.name.as_str() {
                "Via" => squeeze(&v, b"/;=:,"),
                n if ADDR_HEADERS.contains(&n) => squeeze(&v, b";="),
                "CSeq" => squeeze(&v, b""),
                _ => v,
            };
            let check = match l.name.as_str() {
                _ if is_list && v.is_empty() => Err("empty element in a comma-separated list"),
                "Via" => check_via(&v),
                n if ADDR_HEADERS.contains(&n) => check_addr(&v, n),
                _ => Ok(()),
            };
            if let Err(why) = check {
                first_err.get_or_insert(fail(why));
            }
            out.push(Line {
                value: v,
                ..l.clone()
            });
        }
    }
    (out, first_err)
}

/// The lines a stateless answer copies. The client matches it by the top Via's branch and
/// the CSeq method (RFC 3261 §17.1.3), so those two must be there; From, To and Call-ID are
/// copied when present (the first of duplicates, RFC 4475 multi01) and left out when missing
/// (insuf): RFC 4475 §3.3.1 asks for a 400 even then.
fn reply_headers(headers: &[Line]) -> Option<Vec<String>> {
    let vias: Vec<String> = headers
        .iter()
        .filter(|l| l.name == "Via")
        .map(|l| format!("Via: {}", l.value))
        .collect();
    if vias.is_empty() || !headers.iter().any(|l| l.name == "CSeq") {
        return None;
    }
    let mut out = vias;
    for name in SINGLE_MANDATORY {
        if let Some(first) = headers.iter().find(|l| l.name == *name) {
            out.push(format!("{}: {}", first.name, first.value));
        }
    }
    Some(out)
}

enum StartLine {
    Request { method: String, uri: String },
    Response { code: u16, reason: String },
}

fn check_version(v: &str) -> Result<(), ParseErrorKind> {
    let Some((sip, num)) = v.split_once('/') else {
        return Err(ParseErrorKind::BadStartLine);
    };
    let Some((major, minor)) = num.split_once('.') else {
        return Err(ParseErrorKind::BadStartLine);
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !sip.eq_ignore_ascii_case("SIP") || !digits(major) || !digits(minor) {
        return Err(ParseErrorKind::BadStartLine);
    }
    if major != "2" || minor != "0" {
        return Err(ParseErrorKind::UnsupportedVersion(v.to_owned()));
    }
    Ok(())
}

fn parse_start(line: &str) -> Result<StartLine, ParseErrorKind> {
    if line
        .get(..4)
        .is_some_and(|p| p.eq_ignore_ascii_case("SIP/"))
    {
        let (version, rest) = line.split_once(' ').ok_or(ParseErrorKind::BadStartLine)?;
        check_version(version)?;
        let (code, reason) = rest.split_once(' ').ok_or(ParseErrorKind::BadStartLine)?;
        if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ParseErrorKind::BadStartLine);
        }
        let code: u16 = code.parse().map_err(|_| ParseErrorKind::BadStartLine)?;
        if !(100..=699).contains(&code) {
            return Err(ParseErrorKind::BadStartLine);
        }
        return Ok(StartLine::Response {
            code,
            reason: reason.to_owned(),
        });
    }
    // RFC 3261 §7.1: exactly one SP between elements; RFC 4475 lwsstart/trws may be rejected.
    let mut parts = line.split(' ');
    let (Some(method), Some(uri), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ParseErrorKind::BadStartLine);
    };
    if !is_token(method) || uri.is_empty() {
        return Err(ParseErrorKind::BadStartLine);
    }
    check_version(version)?;
    Ok(StartLine::Request {
        method: method.to_owned(),
        uri: uri.to_owned(),
    })
}

/// SIP methods are case-sensitive (RFC 3261 §7.1); rsip's own parser is not.
fn known_method(token: &str) -> Option<Method> {
    Method::all().into_iter().find(|m| m.to_string() == token)
}

/// Builds the Request-URI ourselves for sip/sips: rsip's tokenizer stops a user part at the
/// first `.` or `;` (RFC 4475 semiuri, esc01), while userinfo legally holds both.
fn parse_uri(text: &str) -> Result<rsip::Uri, ParseErrorKind> {
    if text.contains(['<', '>', '"', '?']) || text.bytes().any(|b| b.is_ascii_control()) {
        return Err(ParseErrorKind::BadRequestUri);
    }
    let (scheme, rest) = text.split_once(':').ok_or(ParseErrorKind::BadRequestUri)?;
    let scheme = if scheme.eq_ignore_ascii_case("sip") {
        rsip::Scheme::Sip
    } else if scheme.eq_ignore_ascii_case("sips") {
        rsip::Scheme::Sips
    } else {
        // Other schemes only if rsip can represent them (scheme://...); else answer 416.
        return match rsip::Uri::try_from(text) {
            Ok(uri) if uri.to_string() == text => Ok(uri),
            _ => Err(ParseErrorKind::UnsupportedUriScheme(text.to_owned())),
        };
    };
    let (auth, hostpart) = match rest.rsplit_once('@') {
        Some((userinfo, host)) => {
            let (user, password) = match userinfo.split_once(':') {
                Some((u, p)) => (u, Some(p.to_owned())),
                None => (userinfo, None),
            };
            if user.is_empty() {
                return Err(ParseErrorKind::BadRequestUri);
            }
            (
                Some(rsip::Auth {
                    user: user.to_owned(),
                    password,
                }),
                host,
            )
        }
        None => (None, rest),
    };
    let mut segments = hostpart.split(';');
    let hostport = segments.next().unwrap_or_default();
    let (host, port) = split_hostport(hostport).map_err(HostError::uri)?;
    let port = port.map(rsip::Port::from);
    let mut params = Vec::new();
    for seg in segments {
        let (k, v) = match seg.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (seg, None),
        };
        if k.is_empty() {
            return Err(ParseErrorKind::BadRequestUri);
        }
        // Typed when rsip knows the parameter (transport, lr, ...), verbatim otherwise.
        let typed = rsip::Param::try_from((k, v))
            .ok()
            .filter(|p| p.to_string() == format!(";{seg}"));
        params.push(typed.unwrap_or_else(|| {
            rsip::Param::Other(
                rsip::param::OtherParam::new(k),
                v.map(rsip::param::OtherParamValue::new),
            )
        }));
    }
    Ok(rsip::Uri {
        scheme: Some(scheme),
        auth,
        host_with_port: rsip::HostWithPort {
            host: rsip::Host::from(host),
            port,
        },
        params,
        headers: Vec::new(),
    })
}

fn content_length(headers: &[Line]) -> Result<Option<usize>, ParseError> {
    let mut found: Option<usize> = None;
    for l in headers.iter().filter(|l| l.name == "Content-Length") {
        let fail = |k| ParseError::new(k, l.offset, l.line, Some("Content-Length"));
        let v = &l.value;
        if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
            return Err(fail(ParseErrorKind::BadHeaderValue(
                "Content-Length is not a number",
            )));
        }
        let n = v
            .parse::<usize>()
            .map_err(|_| fail(ParseErrorKind::BodyTooLarge))?;
        match found {
            Some(prev) if prev != n => return Err(fail(ParseErrorKind::ConflictingContentLength)),
            _ => found = Some(n),
        }
    }
    Ok(found)
}

fn check_headers(headers: &[Line], at: (usize, usize)) -> Result<(), ParseError> {
    let missing =
        |name: &str| ParseError::new(ParseErrorKind::MissingHeader, at.0, at.1, Some(name));
    if !headers.iter().any(|l| l.name == "Via") {
        return Err(missing("Via"));
    }
    for name in SINGLE_MANDATORY.iter().chain(SINGLE_OPTIONAL) {
        let mut found = headers.iter().filter(|l| l.name == *name);
        match (found.next(), found.next()) {
            (None, _) if SINGLE_MANDATORY.contains(name) => return Err(missing(name)),
            (Some(_), Some(dup)) => {
                return Err(ParseError::new(
                    ParseErrorKind::DuplicateHeader,
                    dup.offset,
                    dup.line,
                    Some(name),
                ))
            }
            _ => {}
        }
    }
    for l in headers {
        let fail = |why| {
            ParseError::new(
                ParseErrorKind::BadHeaderValue(why),
                l.offset,
                l.line,
                Some(&l.name),
            )
        };
        match l.name.as_str() {
            "Call-ID" if l.value.is_empty() || l.value.contains([' ', '\t']) => {
                return Err(fail("Call-ID must be one word"))
            }
            "Max-Forwards"
                if l.value.is_empty() || !l.value.bytes().all(|b| b.is_ascii_digit()) =>
            {
                return Err(fail("Max-Forwards is not a number"))
            }
            "CSeq" => {
                let (seq, method) = l
                    .value
                    .split_once(' ')
                    .ok_or_else(|| fail("CSeq needs number and method"))?;
                if seq.is_empty() || !seq.bytes().all(|b| b.is_ascii_digit()) || !is_token(method) {
                    return Err(fail("CSeq needs number and method"));
                }
                // 32 bits (RFC 3261 §25.1); RFC 4475 scalar02 and scalarlg overflow them.
                if seq.parse::<u32>().is_err() {
                    return Err(fail("CSeq number out of range"));
                }
            }
            _ => {}
        }
    }
    Ok(())
}

fn cseq_method(headers: &[Line]) -> Option<&str> {
    let l = headers.iter().find(|l| l.name == "CSeq")?;
    l.value.split_once(' ').map(|(_, m)| m)
}

/// Hands the normalised header lines to rsip. A fixed response line in front lets rsip's
/// public message parser do the header mapping (`Header::Via`, `Header::Other`, ...).
fn rsip_headers(headers: &[Line], at: (usize, usize)) -> Result<Headers, ParseError> {
    let mut text = String::from("SIP/2.0 200 OK\r\n");
    for l in headers {
        text.push_str(&l.name);
        text.push_str(": ");
        text.push_str(&l.value);
        text.push_str("\r\n");
    }
    text.push_str("\r\n");
    rsip::Response::try_from(text.as_str())
        .map(|r| r.headers)
        .map_err(|e| ParseError::new(ParseErrorKind::Rsip(e.to_string()), at.0, at.1, None))
}

/// Parses one datagram (or one framed stream message) into an rsip message.
///
/// Leading CRLFs are skipped (RFC 3261 §7.5). Bytes beyond Content-Length are discarded
/// (RFC 3261 §18.3); without Content-Length the body runs to the end of `buf`.
pub fn parse(buf: &[u8]) -> Result<SipMessage, ParseError> {
    let skip = buf
        .iter()
        .take_while(|&&b| b == b'\r' || b == b'\n')
        .count();
    let rest = buf.get(skip..).unwrap_or_default();
    let block = split_block(rest, skip)?;
    let (headers, value_error) = normalise(block.headers);
    let at = (block.start_offset, block.start_line);
    let start = parse_start(block.start);
    let is_request = matches!(start, Ok(StartLine::Request { .. }))
        || !block
            .start
            .get(..4)
            .is_some_and(|p| p.eq_ignore_ascii_case("SIP/"));
    let reply = if is_request {
        reply_headers(&headers)
    } else {
        None
    };
    let with_reply = |mut e: ParseError| {
        e.reply_headers = reply.clone();
        e
    };

    let start = start.map_err(|k| with_reply(ParseError::new(k, at.0, at.1, None)))?;
    if let Some(e) = block.header_error.or(value_error) {
        return Err(with_reply(e));
    }
    check_headers(&headers, at).map_err(with_reply)?;
    let body_offset = block.body_offset.ok_or_else(|| {
        let end = skip + rest.len();
        with_reply(ParseError::new(
            ParseErrorKind::MissingEmptyLine,
            end,
            block.body_line.max(1),
            None,
        ))
    })?;
    let (method, uri) = match &start {
        StartLine::Request { method, uri } => {
            let known = known_method(method).ok_or_else(|| {
                with_reply(ParseError::new(
                    ParseErrorKind::UnsupportedMethod(method.clone()),
                    at.0,
                    at.1,
                    None,
                ))
            })?;
            let cseq = cseq_method(&headers).unwrap_or_default();
            if cseq != method {
                let k = ParseErrorKind::CSeqMismatch {
                    request: method.clone(),
                    cseq: cseq.to_owned(),
                };
                return Err(with_reply(ParseError::new(k, at.0, at.1, Some("CSeq"))));
            }
            let uri =
                parse_uri(uri).map_err(|k| with_reply(ParseError::new(k, at.0, at.1, None)))?;
            (Some(known), Some(uri))
        }
        StartLine::Response { .. } => (None, None),
    };
    let body = rest.get(body_offset..).unwrap_or_default();
    let body = match content_length(&headers).map_err(with_reply)? {
        Some(n) => body.get(..n).ok_or_else(|| {
            let k = ParseErrorKind::BodyTooShort {
                expected: n,
                actual: body.len(),
            };
            with_reply(ParseError::new(
                k,
                skip + body_offset,
                block.body_line,
                Some("Content-Length"),
            ))
        })?,
        None => body,
    };
    let rsip_headers = rsip_headers(&headers, at).map_err(with_reply)?;
    Ok(match (start, method, uri) {
        (StartLine::Request { .. }, Some(method), Some(uri)) => {
            SipMessage::Request(rsip::Request {
                method,
                uri,
                version: rsip::Version::V2,
                headers: rsip_headers,
                body: body.to_vec(),
            })
        }
        (StartLine::Response { code, reason }, _, _) => {
            let status = match StatusCode::from(code) {
                StatusCode::Other(..) => StatusCode::Other(code, reason),
                known => known,
            };
            SipMessage::Response(rsip::Response {
                status_code: status,
                version: rsip::Version::V2,
                headers: rsip_headers,
                body: body.to_vec(),
            })
        }
        _ => {
            return Err(ParseError::new(
                ParseErrorKind::BadStartLine,
                at.0,
                at.1,
                None,
            ))
        }
    })
}

/// Finds the first message in a stream buffer. Call again after appending bytes or after
/// consuming a `KeepAlive`/`Message`.
pub fn frame(buf: &[u8]) -> Frame {
    let crlf = buf
        .iter()
        .take_while(|&&b| b == b'\r' || b == b'\n')
        .count();
    if crlf > 0 {
        return Frame::KeepAlive(crlf);
    }
    let window = buf
        .get(..buf.len().min(MAX_HEADER_BLOCK))
        .unwrap_or_default();
    let body_offset = lines(window)
        .skip(1)
        .find(|(l, _, next)| {
            // An empty line only counts once its LF has arrived.
            l.is_empty() && next.checked_sub(1).and_then(|i| window.get(i)) == Some(&b'\n')
        })
        .map(|(_, _, next)| next);
    let Some(body_offset) = body_offset else {
        if buf.len() >= MAX_HEADER_BLOCK {
            return Frame::Invalid(ParseError::new(
                ParseErrorKind::HeaderBlockTooLarge,
                MAX_HEADER_BLOCK,
                0,
                None,
            ));
        }
        return Frame::Incomplete;
    };
    let head = window.get(..body_offset).unwrap_or_default();
    let block = match split_block(head, 0) {
        Ok(b) => b,
        Err(e) => return Frame::Invalid(e),
    };
    let is_request = !block
        .start
        .get(..4)
        .is_some_and(|p| p.eq_ignore_ascii_case("SIP/"));
    let (headers, _) = normalise(block.headers);
    // A request that cannot be framed is still answered (400 naming the fault) before the
    // connection closes, when its headers allow an answer.
    let invalid = |mut e: ParseError| {
        if is_request {
            e.reply_headers = reply_headers(&headers);
        }
        Frame::Invalid(e)
    };
    let len = match content_length(&headers) {
        Ok(Some(n)) if n > MAX_BODY => {
            return invalid(ParseError::new(
                ParseErrorKind::BodyTooLarge,
                body_offset,
                block.body_line,
                Some("Content-Length"),
            ))
        }
        Ok(Some(n)) => n,
        Ok(None) => {
            return invalid(ParseError::new(
                ParseErrorKind::MissingContentLength,
                body_offset,
                block.body_line,
                None,
            ))
        }
        Err(e) => return invalid(e),
    };
    match body_offset.checked_add(len) {
        Some(total) if total <= buf.len() => Frame::Message(total),
        _ => Frame::Incomplete,
    }
}

/// Reason phrases for codes the UA sends; rsip would print its variant names ("BusyHere").
pub fn reason_phrase(code: u16) -> Option<&'static str> {
    Some(match code {
        100 => "Trying",
        180 => "Ringing",
        181 => "Call Is Being Forwarded",
        182 => "Queued",
        183 => "Session Progress",
        200 => "OK",
        202 => "Accepted",
        300 => "Multiple Choices",
        301 => "Moved Permanently",
        302 => "Moved Temporarily",
        305 => "Use Proxy",
        380 => "Alternative Service",
        400 => "Bad Request",
        401 => "Unauthorized",
        402 => "Payment Required",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        410 => "Gone",
        413 => "Request Entity Too Large",
        414 => "Request-URI Too Long",
        415 => "Unsupported Media Type",
        416 => "Unsupported URI Scheme",
        420 => "Bad Extension",
        421 => "Extension Required",
        422 => "Session Interval Too Small",
        423 => "Interval Too Brief",
        480 => "Temporarily Unavailable",
        481 => "Call/Transaction Does Not Exist",
        482 => "Loop Detected",
        483 => "Too Many Hops",
        484 => "Address Incomplete",
        485 => "Ambiguous",
        486 => "Busy Here",
        487 => "Request Terminated",
        488 => "Not Acceptable Here",
        491 => "Request Pending",
        493 => "Undecipherable",
        500 => "Server Internal Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Server Time-out",
        505 => "Version Not Supported",
        513 => "Message Too Large",
        600 => "Busy Everywhere",
        603 => "Decline",
        604 => "Does Not Exist Anywhere",
        606 => "Not Acceptable",
        _ => return None,
    })
}

/// Serialises a message for the wire: CRLF line ends, the body as raw bytes (rsip's Display
/// would run it through `from_utf8_lossy`), and exactly one correct Content-Length.
pub fn to_bytes(msg: &SipMessage) -> Bytes {
    match msg {
        SipMessage::Request(r) => request_bytes(r),
        SipMessage::Response(r) => response_bytes(r),
    }
}

/// [`to_bytes`] for a request, without wrapping it in a `SipMessage`.
pub fn request_bytes(r: &rsip::Request) -> Bytes {
    let line = format!("{} {} SIP/2.0\r\n", r.method, r.uri);
    write_message(line, &r.headers, &r.body)
}

/// [`to_bytes`] for a response, with the RFC reason phrase of well-known codes.
pub fn response_bytes(r: &rsip::Response) -> Bytes {
    write_message(
        format!("SIP/2.0 {}\r\n", status_line(&r.status_code)),
        &r.headers,
        &r.body,
    )
}

/// `486 Busy Here`: the code with the response's own phrase for codes rsip does not know,
/// else the RFC phrase.
pub fn status_line(status: &StatusCode) -> String {
    let code = status.code();
    match (status, reason_phrase(code)) {
        (StatusCode::Other(_, reason), _) => format!("{code} {reason}"),
        (_, Some(reason)) => format!("{code} {reason}"),
        (other, None) => other.to_string(),
    }
}

fn write_message(mut out: String, headers: &Headers, body: &[u8]) -> Bytes {
    for h in headers.iter() {
        if !matches!(h, Header::ContentLength(_)) {
            out.push_str(&h.to_string());
            out.push_str("\r\n");
        }
    }
    out.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(body);
    Bytes::from(bytes)
}

fn first_value<'a>(
    msg: &'a SipMessage,
    pick: impl Fn(&'a Header) -> Option<&'a str>,
) -> Option<&'a str> {
    use rsip::prelude::HasHeaders;
    msg.headers().iter().find_map(pick)
}

fn param_of(value: &str, name: &str) -> Option<String> {
    params(value)
        .into_iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .and_then(|(_, v)| v)
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
}

/// The `tag` parameter of a From or To value (`<uri>;tag=x`, or an addr-spec without
/// brackets), read as text: rsip's typed From/To cannot read a URI with an IPv6 reference.
pub fn tag_param(value: &str) -> Option<String> {
    param_of(value, "tag")
}

/// A `sip:`/`sips:` URI read as the Request-URI is (userinfo with `;` and `.`, IPv6
/// references with a port outside the brackets, RFC 5118), for URIs rsip's own parser
/// cannot read.
pub fn parse_sip_uri(text: &str) -> Result<rsip::Uri, ParseErrorKind> {
    parse_uri(text)
}

/// The `branch` of the topmost Via: the transaction key (RFC 3261 §17.2.3).
pub fn top_via_branch(msg: &SipMessage) -> Option<String> {
    use rsip::headers::UntypedHeader;
    let via = first_value(msg, |h| match h {
        Header::Via(v) => Some(v.value()),
        _ => None,
    })?;
    param_of(via, "branch")
}

/// CSeq number and method; `None` when absent or an extension method.
pub fn cseq(msg: &SipMessage) -> Option<(u32, Method)> {
    use rsip::headers::UntypedHeader;
    let v = first_value(msg, |h| match h {
        Header::CSeq(v) => Some(v.value()),
        _ => None,
    })?;
    let (n, m) = v.split_once(' ')?;
    Some((n.parse().ok()?, known_method(m)?))
}

/// The Call-ID value.
pub fn call_id(msg: &SipMessage) -> Option<String> {
    use rsip::headers::UntypedHeader;
    first_value(msg, |h| match h {
        Header::CallId(v) => Some(v.value()),
        _ => None,
    })
    .map(str::to_owned)
}

/// The From tag (dialog id, RFC 3261 §12).
pub fn from_tag(msg: &SipMessage) -> Option<String> {
    use rsip::headers::UntypedHeader;
    let v = first_value(msg, |h| match h {
        Header::From(v) => Some(v.value()),
        _ => None,
    })?;
    param_of(v, "tag")
}

/// The To tag; absent on out-of-dialog requests.
pub fn to_tag(msg: &SipMessage) -> Option<String> {
    use rsip::headers::UntypedHeader;
    let v = first_value(msg, |h| match h {
        Header::To(v) => Some(v.value()),
        _ => None,
    })?;
    param_of(v, "tag")
}

#[cfg(test)]
mod tests {
    use super::*;
    use rsip::prelude::*;

    const INVITE: &[u8] = b"INVITE sip:bob@example.com SIP/2.0\r\n\
v: SIP/2.0/UDP 192.0.2.1:5060 ; branch = z9hG4bK776 , SIP/2.0/TCP proxy.example.com;branch=z9hG4bKp\r\n\
f: \"Alice, A.\" <sip:alice@example.com>;tag=a1\r\n\
t: <sip:bob@example.com>\r\n\
i: call-1@192.0.2.1\r\n\
CSeq: 7 INVITE\r\n\
c: application/sdp\r\n\
l: 5\r\n\
\r\n\
v=0\r\nextra";

    fn invite() -> SipMessage {
        parse(INVITE).expect("valid INVITE")
    }

    #[test]
    fn helpers_read_the_dialog_and_transaction_keys() {
        let msg = invite();
        assert_eq!(top_via_branch(&msg).as_deref(), Some("z9hG4bK776"));
        assert_eq!(cseq(&msg), Some((7, Method::Invite)));
        assert_eq!(call_id(&msg).as_deref(), Some("call-1@192.0.2.1"));
        assert_eq!(from_tag(&msg).as_deref(), Some("a1"));
        assert_eq!(to_tag(&msg), None);
        assert_eq!(msg.body(), b"v=0\r\n");
    }

    #[test]
    fn to_bytes_writes_one_correct_content_length() {
        let mut msg = invite();
        *msg.body_mut() = b"longer body".to_vec();
        let wire = to_bytes(&msg);
        let text = String::from_utf8_lossy(&wire);
        assert_eq!(text.matches("Content-Length").count(), 1, "{text}");
        assert!(
            text.ends_with("Content-Length: 11\r\n\r\nlonger body"),
            "{text}"
        );
        assert!(
            !text.replace("\r\n", "").contains('\n'),
            "bare LF in {text}"
        );
        assert_eq!(frame(&wire), Frame::Message(wire.len()));
        assert_eq!(
            parse(&wire).map(|m| m.body().clone()),
            Ok(b"longer body".to_vec())
        );
    }

    #[test]
    fn responses_get_real_reason_phrases() {
        let resp = parse(b"SIP/2.0 486 Busy\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:a@h>;tag=1\r\nTo: <sip:b@h>;tag=2\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\n\r\n")
            .expect("valid response");
        assert!(to_bytes(&resp).starts_with(b"SIP/2.0 486 Busy Here\r\n"));
        assert_eq!(to_tag(&resp).as_deref(), Some("2"));
    }

    #[test]
    fn bare_lf_line_ends_are_tolerated() {
        let lf: Vec<u8> = INVITE.iter().copied().filter(|&b| b != b'\r').collect();
        let msg = parse(&lf).expect("LF-only INVITE");
        assert_eq!(call_id(&msg).as_deref(), Some("call-1@192.0.2.1"));
    }

    #[test]
    fn reply_copies_the_request_headers() {
        let text = String::from_utf8_lossy(INVITE)
            .replace("INVITE sip", "FROB sip")
            .replace("7 INVITE", "7 FROB");
        let err = parse(text.as_bytes()).expect_err("extension method");
        assert_eq!(err.kind, ParseErrorKind::UnsupportedMethod("FROB".into()));
        let reply = err.reply(501, "Not Implemented").expect("answerable");
        let reply = String::from_utf8_lossy(&reply);
        assert!(reply.starts_with("SIP/2.0 501 Not Implemented\r\nVia: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK776\r\nVia: SIP/2.0/TCP proxy.example.com;branch=z9hG4bKp\r\n"), "{reply}");
        assert!(
            reply.contains(
                "\r\nCall-ID: call-1@192.0.2.1\r\nCSeq: 7 FROB\r\nContent-Length: 0\r\n\r\n"
            ),
            "{reply}"
        );
        assert_eq!(err.reply(1000, "x"), None);
    }

    #[test]
    fn contact_star_is_not_split() {
        let reg = b"REGISTER sip:example.com SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:a@h>;tag=1\r\nTo: <sip:a@h>\r\nCall-ID: r\r\nCSeq: 2 REGISTER\r\nContact: *\r\nExpires: 0\r\nContent-Length: 0\r\n\r\n";
        let msg = parse(reg).expect("valid REGISTER");
        assert_eq!(
            msg.contact_header().map(|c| c.to_string()).ok().as_deref(),
            Some("Contact: *")
        );
    }

    fn options(uri: &str, via: &str) -> Vec<u8> {
        format!(
            "OPTIONS {uri} SIP/2.0\r\nVia: {via}\r\nFrom: <sip:a@[2001:db8::1]>;tag=f1\r\n\
             To: sip:b@[2001:db8:::192.0.2.1]\r\nCall-ID: v6\r\nCSeq: 1 OPTIONS\r\n\
             Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
        )
        .into_bytes()
    }

    const V6_VIA: &str = "SIP/2.0/UDP [2001:db8::9:1]:5070;branch=z9hG4bKv6";

    /// RFC 5118 §4.1, §4.3, §4.4, §4.10: IPv6 references in the Request-URI, with the port
    /// outside the brackets, inside them (well formed, another address), and with the extra
    /// colon RFC 3261's ABNF allows.
    #[test]
    fn ipv6_references_in_the_request_uri() {
        for (uri, host, port) in [
            ("sip:[2001:db8::10]", "[2001:db8::10]", None),
            ("sip:[2001:db8::10]:5070", "[2001:db8::10]", Some(5070)),
            ("sip:[2001:db8::10:5070]", "[2001:db8::10:5070]", None),
            (
                "sip:u@[2001:db8:::192.0.2.1];transport=tcp",
                "[2001:db8:::192.0.2.1]",
                None,
            ),
            (
                "sip:u@[::ffff:192.0.2.2]:19823",
                "[::ffff:192.0.2.2]",
                Some(19823),
            ),
        ] {
            let msg = parse(&options(uri, V6_VIA)).unwrap_or_else(|e| panic!("{uri}: {e}"));
            let SipMessage::Request(req) = msg else {
                panic!("{uri}: not a request");
            };
            assert_eq!(req.uri.host_with_port.host.to_string(), host, "{uri}");
            assert_eq!(
                req.uri.host_with_port.port.map(|p| *p.value()),
                port,
                "{uri}"
            );
            // Written back as received: the brackets stay (rsip would drop them).
            assert_eq!(req.uri.to_string(), uri);
        }
    }

    /// RFC 5118 §4.2: an IPv6 address without brackets is no host; the 400 says so. Other
    /// broken references are named too.
    #[test]
    fn malformed_ipv6_references_in_the_request_uri_are_named() {
        for (uri, why) in [
            ("sip:2001:db8::10", "IPv6 address not enclosed in [ ]"),
            (
                "sip:u@2001:db8::10:5070",
                "IPv6 address not enclosed in [ ]",
            ),
            ("sip:[2001:db8::10", "malformed host"),
            ("sip:[2001:db8::10]5070", "malformed host"),
            ("sip:[example.com]", "not an IPv6 address inside [ ]"),
            (
                "sip:[2001:db8::10]:99999",
                "port is not a number up to 65535",
            ),
            ("sip:host:", "port is not a number up to 65535"),
            ("sip:ho[st", "malformed host"),
        ] {
            let err = parse(&options(uri, V6_VIA)).expect_err(uri);
            assert_eq!(err.kind, ParseErrorKind::BadUriHost(why), "{uri}");
            let (code, reason) = err.status();
            assert_eq!(
                (code, reason.as_str()),
                (
                    400,
                    format!("Bad Request (Request-URI host: {why})").as_str()
                )
            );
            assert!(err.answer().is_some(), "{uri}: answerable");
        }
    }

    /// RFC 5118 §4.5, §4.7, §4.9: IPv6 sent-by with and without port, `received=` with and
    /// without brackets, IPv4-mapped addresses; an unbracketed IPv6 sent-by is a 400.
    #[test]
    fn ipv6_in_via_sent_by_and_received() {
        for via in [
            "SIP/2.0/UDP [2001:db8::9:1];received=[2001:db8::9:255];branch=z9hG4bK1",
            "SIP/2.0/UDP [2001:db8::9:1];received=2001:db8::9:255;branch=z9hG4bK1",
            "SIP/2.0/TCP [2001:db8::9:255];branch=z9hG4bK1;received=192.0.2.200",
            "SIP/2.0/UDP [::ffff:192.0.2.10]:19823;branch=z9hG4bK1",
        ] {
            let msg =
                parse(&options("sip:[2001:db8::10]", via)).unwrap_or_else(|e| panic!("{via}: {e}"));
            assert_eq!(top_via_branch(&msg).as_deref(), Some("z9hG4bK1"), "{via}");
        }
        let err = parse(&options(
            "sip:[2001:db8::10]",
            "SIP/2.0/UDP 2001:db8::9:1;branch=z9hG4bK1",
        ))
        .expect_err("unbracketed sent-by");
        assert_eq!(
            err.status().1,
            "Bad Request (malformed header value: Via sent-by: IPv6 address not enclosed in [ ])"
        );
    }

    #[test]
    fn the_extra_colon_of_rfc_3261s_abnf_is_tolerated() {
        let ip: std::net::Ipv6Addr = "2001:db8::c000:201".parse().unwrap();
        assert_eq!(parse_ipv6_reference("2001:db8:::192.0.2.1"), Some(ip));
        assert_eq!(parse_ipv6_reference("2001:db8::192.0.2.1"), Some(ip));
        assert_eq!(
            parse_ipv6_reference(":::192.0.2.1"),
            Some("::192.0.2.1".parse().unwrap())
        );
        for bad in [
            "2001:db8:::1",
            "::::192.0.2.1",
            "2001:db8:::",
            "",
            "example.com",
        ] {
            assert_eq!(parse_ipv6_reference(bad), None, "{bad}");
        }
    }

    /// Tags are read as text: rsip's typed From/To fail on an IPv6 reference.
    #[test]
    fn tags_of_addresses_with_ipv6_references() {
        assert_eq!(
            tag_param("\"A\" <sip:a@[2001:db8::1]:5070;transport=tcp>;tag=x1").as_deref(),
            Some("x1")
        );
        assert_eq!(
            tag_param("sip:b@[2001:db8:::192.0.2.1];tag=y2").as_deref(),
            Some("y2")
        );
        assert_eq!(tag_param("<sip:b@[2001:db8::1];tag=inside>"), None);
        let msg = parse(&options("sip:[2001:db8::10]", V6_VIA)).unwrap();
        assert_eq!(from_tag(&msg).as_deref(), Some("f1"));
    }
}
