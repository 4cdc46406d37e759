//! SDP (RFC 4566) for the gateway's offers and the far end's answers (RFC 3264).
//!
//! This module owns the SDP text format and the codec choice: parsing what a peer sent
//! (tolerant of LF line ends and lines it does not know), writing our offers, and reading an
//! answer into the addresses and codec the RTP layer needs. It opens no sockets and keeps no
//! call state.

use crate::rtp::srtp::CryptoAttribute;
use std::fmt;
use std::net::{IpAddr, SocketAddr};

/// A parse or negotiation failure; syntax errors name the 1-based line of the SDP.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SdpError {
    #[error("SDP line {line}: {reason}: {text:?}")]
    Syntax {
        line: usize,
        reason: &'static str,
        text: String,
    },
    #[error("SDP has no {0} line")]
    Missing(&'static str),
    #[error("no common codec: offered [{offered}], answered [{answered}]")]
    NoCommonCodec { offered: String, answered: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediaKind {
    Audio,
    Video,
    Other(String),
}

impl fmt::Display for MediaKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Audio => f.write_str("audio"),
            Self::Video => f.write_str("video"),
            Self::Other(s) => f.write_str(s),
        }
    }
}

/// Media direction attribute (RFC 3264 §5.1, §6.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Direction {
    #[default]
    SendRecv,
    SendOnly,
    RecvOnly,
    Inactive,
}

impl Direction {
    /// Whether we send RTP in this direction (our side's view).
    pub fn sends(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::SendOnly)
    }

    /// The direction seen from the other side: our sendonly is their recvonly.
    pub fn reversed(self) -> Self {
        match self {
            Self::SendOnly => Self::RecvOnly,
            Self::RecvOnly => Self::SendOnly,
            other => other,
        }
    }

    fn from_attr(name: &str) -> Option<Self> {
        Some(match name {
            "sendrecv" => Self::SendRecv,
            "sendonly" => Self::SendOnly,
            "recvonly" => Self::RecvOnly,
            "inactive" => Self::Inactive,
            _ => return None,
        })
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::SendRecv => "sendrecv",
            Self::SendOnly => "sendonly",
            Self::RecvOnly => "recvonly",
            Self::Inactive => "inactive",
        })
    }
}

/// One payload format: `a=rtpmap` (or the static table) plus its `a=fmtp`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtpMap {
    pub pt: u8,
    pub encoding: String,
    pub clock_rate: u32,
    pub channels: u8,
    pub fmtp: Option<String>,
}

impl RtpMap {
    fn new(pt: u8, encoding: &str, clock_rate: u32, channels: u8, fmtp: Option<&str>) -> Self {
        Self {
            pt,
            encoding: encoding.to_owned(),
            clock_rate,
            channels,
            fmtp: fmtp.map(str::to_owned),
        }
    }

    /// Same codec regardless of payload type (RFC 3264 §6.1: the answer may renumber).
    fn same_codec(&self, other: &RtpMap) -> bool {
        self.encoding.eq_ignore_ascii_case(&other.encoding)
            && self.clock_rate == other.clock_rate
            && self.channels == other.channels
    }

    fn is_dtmf(&self) -> bool {
        self.encoding.eq_ignore_ascii_case("telephone-event")
    }
}

impl fmt::Display for RtpMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.encoding, self.clock_rate)?;
        if self.channels > 1 {
            write!(f, "/{}", self.channels)?;
        }
        Ok(())
    }
}

/// RFC 3551 static payload types, used when an answer omits `a=rtpmap`.
fn static_rtpmap(pt: u8) -> Option<RtpMap> {
    let (enc, rate) = match pt {
        0 => ("PCMU", 8000),
        3 => ("GSM", 8000),
        4 => ("G723", 8000),
        8 => ("PCMA", 8000),
        9 => ("G722", 8000),
        13 => ("CN", 8000),
        18 => ("G729", 8000),
        26 => ("JPEG", 90000),
        31 => ("H261", 90000),
        34 => ("H263", 90000),
        _ => return None,
    };
    Some(RtpMap::new(pt, enc, rate, 1, None))
}

pub fn codec_pcmu() -> RtpMap {
    RtpMap::new(0, "PCMU", 8000, 1, None)
}

pub fn codec_pcma() -> RtpMap {
    RtpMap::new(8, "PCMA", 8000, 1, None)
}

pub fn codec_opus() -> RtpMap {
    RtpMap::new(111, "opus", 48000, 2, Some("minptime=10;useinbandfec=1"))
}

pub fn codec_telephone_event() -> RtpMap {
    RtpMap::new(101, "telephone-event", 8000, 1, Some("0-16"))
}

pub fn codec_h264() -> RtpMap {
    let fmtp = "packetization-mode=1;profile-level-id=42e01f;level-asymmetry-allowed=1";
    RtpMap::new(96, "H264", 90000, 1, Some(fmtp))
}

/// One `m=` section with the attributes the gateway uses resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaDescription {
    pub kind: MediaKind,
    pub port: u16,
    pub proto: String,
    pub formats: Vec<u8>,
    /// One per known format, in `formats` order.
    pub rtpmaps: Vec<RtpMap>,
    /// Media-level attribute, else session-level, else sendrecv.
    pub direction: Direction,
    /// Media-level `c=` only; see [`SessionDescription::connection`] for the fallback.
    pub connection: Option<IpAddr>,
    pub rtcp: Option<(u16, Option<IpAddr>)>,
    pub rtcp_mux: bool,
    pub ptime: Option<u32>,
    pub label: Option<String>,
    /// Every other `a=` line, name and optional value, in order.
    pub attributes: Vec<(String, Option<String>)>,
}

impl MediaDescription {
    fn new(kind: MediaKind, port: u16, proto: &str) -> Self {
        Self {
            kind,
            port,
            proto: proto.to_owned(),
            formats: Vec::new(),
            rtpmaps: Vec::new(),
            direction: Direction::SendRecv,
            connection: None,
            rtcp: None,
            rtcp_mux: false,
            ptime: None,
            label: None,
            attributes: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub username: String,
    pub session_id: u64,
    pub version: u64,
    /// Usually an address; RFC 4566 also allows a host name.
    pub address: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionDescription {
    pub origin: Origin,
    pub session_name: String,
    pub connection: Option<IpAddr>,
    pub media: Vec<MediaDescription>,
}

fn addr_type(ip: &IpAddr) -> &'static str {
    if ip.is_ipv4() {
        "IP4"
    } else {
        "IP6"
    }
}

/// `IN IP4 192.0.2.1[/ttl]`.
fn parse_conn(v: &str) -> Option<IpAddr> {
    let mut it = v.split_whitespace();
    match (it.next(), it.next(), it.next()) {
        (Some("IN"), Some("IP4" | "IP6"), Some(addr)) => addr.split('/').next()?.parse().ok(),
        _ => None,
    }
}

/// Per-media state while parsing: rtpmap/fmtp lines arrive before or after each other.
struct Pending {
    media: MediaDescription,
    maps: Vec<RtpMap>,
    fmtps: Vec<(u8, String)>,
    direction: Option<Direction>,
}

impl Pending {
    fn finish(mut self, session_dir: Option<Direction>) -> MediaDescription {
        for &pt in &self.media.formats {
            let map = self
                .maps
                .iter()
                .find(|m| m.pt == pt)
                .cloned()
                .or_else(|| static_rtpmap(pt));
            if let Some(mut map) = map {
                map.fmtp = self
                    .fmtps
                    .iter()
                    .find(|(p, _)| *p == pt)
                    .map(|(_, f)| f.clone());
                self.media.rtpmaps.push(map);
            }
        }
        self.media.direction = self.direction.or(session_dir).unwrap_or_default();
        self.media
    }
}

impl SessionDescription {
    pub fn parse(text: &str) -> Result<Self, SdpError> {
        let mut origin = None;
        let mut session_name = None;
        let mut connection = None;
        let mut session_dir = None;
        let mut done: Vec<Pending> = Vec::new();
        let mut current: Option<Pending> = None;
        let mut saw_version = false;
        for (idx, raw) in text.split('\n').enumerate() {
            let line = raw.strip_suffix('\r').unwrap_or(raw);
            if line.trim().is_empty() {
                continue;
            }
            let err = |reason| SdpError::Syntax {
                line: idx + 1,
                reason,
                text: line.to_owned(),
            };
            let (kind, value) = match line.split_once('=') {
                Some((k, v)) if k.len() == 1 => (k, v),
                _ => return Err(err("not a <type>=<value> line")),
            };
            match kind {
                "v" if value != "0" => return Err(err("unsupported SDP version")),
                "v" => saw_version = true,
                "o" => {
                    let f: Vec<&str> = value.split_whitespace().collect();
                    let [user, id, ver, "IN", _, addr] = f.as_slice() else {
                        return Err(err("malformed origin"));
                    };
                    origin = Some(Origin {
                        username: (*user).to_owned(),
                        session_id: id.parse().map_err(|_| err("origin session id"))?,
                        version: ver.parse().map_err(|_| err("origin version"))?,
                        address: (*addr).to_owned(),
                    });
                }
                // RFC 4566 §5.3: never empty; "-" stands for no name.
                "s" if value.trim().is_empty() => session_name = Some("-".to_owned()),
                "s" => session_name = Some(value.trim().to_owned()),
                "c" => {
                    let ip = parse_conn(value).ok_or_else(|| err("malformed connection"))?;
                    match current.as_mut() {
                        Some(p) => p.media.connection = Some(ip),
                        None => connection = Some(ip),
                    }
                }
                "m" => {
                    let mut f = value.split_whitespace();
                    let (Some(kind), Some(port), Some(proto)) = (f.next(), f.next(), f.next())
                    else {
                        return Err(err("malformed media line"));
                    };
                    // `port/count` (RFC 4566 §5.14): the first port is the RTP port.
                    let port = port.split('/').next().unwrap_or_default();
                    let port = port.parse().map_err(|_| err("media port"))?;
                    let kind = match kind {
                        "audio" => MediaKind::Audio,
                        "video" => MediaKind::Video,
                        other => MediaKind::Other(other.to_owned()),
                    };
                    let mut media = MediaDescription::new(kind, port, proto);
                    if proto.contains("RTP") {
                        for fmt in f {
                            media
                                .formats
                                .push(fmt.parse().map_err(|_| err("RTP payload type"))?);
                        }
                    }
                    done.extend(current.take());
                    current = Some(Pending {
                        media,
                        maps: Vec::new(),
                        fmtps: Vec::new(),
                        direction: None,
                    });
                }
                "a" => {
                    let (name, val) = match value.split_once(':') {
                        Some((n, v)) => (n, Some(v)),
                        None => (value, None),
                    };
                    let Some(p) = current.as_mut() else {
                        if let Some(d) = Direction::from_attr(name) {
                            session_dir = Some(d);
                        }
                        continue;
                    };
                    match (name, val) {
                        // A malformed rtpmap (RFC 4475's `a=rtpmap:31 LPC` has no clock
                        // rate) is ignored like an unknown attribute: the payload type keeps
                        // its static meaning, and one bad line does not refuse the offer.
                        ("rtpmap", Some(v)) => match parse_rtpmap(v) {
                            Some(map) => p.maps.push(map),
                            None => tracing::debug!(rtpmap = v, "malformed rtpmap ignored"),
                        },
                        ("fmtp", Some(v)) => {
                            let (pt, params) =
                                v.split_once(' ').ok_or_else(|| err("malformed fmtp"))?;
                            let pt = pt.parse().map_err(|_| err("fmtp payload type"))?;
                            p.fmtps.push((pt, params.trim().to_owned()));
                        }
                        ("rtcp", Some(v)) => {
                            let (port, conn) = match v.split_once(' ') {
                                Some((port, conn)) => (
                                    port,
                                    Some(parse_conn(conn).ok_or_else(|| err("rtcp address"))?),
                                ),
                                None => (v, None),
                            };
                            p.media.rtcp =
                                Some((port.trim().parse().map_err(|_| err("rtcp port"))?, conn));
                        }
                        ("rtcp-mux", None) => p.media.rtcp_mux = true,
                        ("ptime", Some(v)) => {
                            p.media.ptime = Some(v.trim().parse().map_err(|_| err("ptime"))?)
                        }
                        ("label", Some(v)) => p.media.label = Some(v.to_owned()),
                        (n, None) if Direction::from_attr(n).is_some() => {
                            p.direction = Direction::from_attr(n)
                        }
                        (n, v) => p
                            .media
                            .attributes
                            .push((n.to_owned(), v.map(str::to_owned))),
                    }
                }
                // t=, b=, k=, i=, u=, e=, p=, z=, r= and unknown types: nothing we use.
                _ => {}
            }
        }
        done.extend(current.take());
        if !saw_version {
            return Err(SdpError::Missing("v="));
        }
        Ok(Self {
            origin: origin.ok_or(SdpError::Missing("o="))?,
            session_name: session_name.unwrap_or_else(|| "-".to_owned()),
            connection,
            media: done.into_iter().map(|p| p.finish(session_dir)).collect(),
        })
    }
}

/// `96 H264/90000` or `111 opus/48000/2`.
fn parse_rtpmap(v: &str) -> Option<RtpMap> {
    let (pt, rest) = v.trim().split_once(' ')?;
    let mut parts = rest.trim().split('/');
    let encoding = parts.next().filter(|e| !e.is_empty())?;
    let clock_rate = parts.next()?.parse().ok()?;
    let channels = match parts.next() {
        Some(c) => c.parse().ok().filter(|&n: &u8| n > 0)?,
        None => 1,
    };
    Some(RtpMap::new(
        pt.parse().ok()?,
        encoding,
        clock_rate,
        channels,
        None,
    ))
}

impl fmt::Display for SessionDescription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = &self.origin;
        let o_type = match o.address.parse::<IpAddr>() {
            Ok(ip) => addr_type(&ip),
            Err(_) => "IP4",
        };
        write!(
            f,
            "v=0\r\no={} {} {} IN {} {}\r\n",
            o.username, o.session_id, o.version, o_type, o.address
        )?;
        let name = if self.session_name.is_empty() {
            "-"
        } else {
            &self.session_name
        };
        write!(f, "s={name}\r\n")?;
        if let Some(ip) = &self.connection {
            write!(f, "c=IN {} {ip}\r\n", addr_type(ip))?;
        }
        f.write_str("t=0 0\r\n")?;
        for m in &self.media {
            write!(f, "m={} {} {}", m.kind, m.port, m.proto)?;
            for pt in &m.formats {
                write!(f, " {pt}")?;
            }
            f.write_str("\r\n")?;
            if let Some(ip) = &m.connection {
                write!(f, "c=IN {} {ip}\r\n", addr_type(ip))?;
            }
            for map in &m.rtpmaps {
                write!(f, "a=rtpmap:{} {map}\r\n", map.pt)?;
                if let Some(fmtp) = &map.fmtp {
                    write!(f, "a=fmtp:{} {fmtp}\r\n", map.pt)?;
                }
            }
            match m.rtcp {
                Some((port, Some(ip))) => {
                    write!(f, "a=rtcp:{port} IN {} {ip}\r\n", addr_type(&ip))?
                }
                Some((port, None)) => write!(f, "a=rtcp:{port}\r\n")?,
                None => {}
            }
            if m.rtcp_mux {
                f.write_str("a=rtcp-mux\r\n")?;
            }
            if let Some(ptime) = m.ptime {
                write!(f, "a=ptime:{ptime}\r\n")?;
            }
            if let Some(label) = &m.label {
                write!(f, "a=label:{label}\r\n")?;
            }
            for (name, value) in &m.attributes {
                match value {
                    Some(v) => write!(f, "a={name}:{v}\r\n")?,
                    None => write!(f, "a={name}\r\n")?,
                }
            }
            write!(f, "a={}\r\n", m.direction)?;
        }
        Ok(())
    }
}

/// What the gateway offers; see [`build_offer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfferParams {
    pub session_id: u64,
    pub version: u64,
    pub ip: IpAddr,
    /// RTP port and codecs in preference order.
    pub audio: Option<(u16, Vec<RtpMap>)>,
    pub video: Option<(u16, Vec<RtpMap>)>,
    pub direction: Direction,
}

/// One `m=` line of an offer built by [`build_offer_lines`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfferLine {
    pub kind: MediaKind,
    pub port: u16,
    /// In preference order.
    pub codecs: Vec<RtpMap>,
    /// `a=label` (RFC 4574): which line is which when there are several of one kind.
    pub label: Option<String>,
}

/// An offer with any number of lines, in the order given (RFC 3264 answers keep it).
pub fn build_offer_lines(
    session_id: u64,
    version: u64,
    ip: IpAddr,
    lines: &[OfferLine],
    direction: Direction,
) -> SessionDescription {
    let mut sd = build_offer(&OfferParams {
        session_id,
        version,
        ip,
        audio: None,
        video: None,
        direction,
    });
    for l in lines {
        let mut m = MediaDescription::new(l.kind.clone(), l.port, "RTP/AVP");
        m.formats = l.codecs.iter().map(|c| c.pt).collect();
        m.rtpmaps = l.codecs.clone();
        m.rtcp = l.port.checked_add(1).map(|p| (p, None));
        m.direction = direction;
        m.label = l.label.clone();
        if l.kind == MediaKind::Audio {
            m.ptime = Some(20);
        }
        sd.media.push(m);
    }
    sd
}

/// The `a=crypto` lines of a media section (RFC 4568), parsed, in order; lines we cannot
/// use are errors (the caller picks the first usable one).
pub fn crypto_lines(
    m: &MediaDescription,
) -> impl Iterator<Item = Result<CryptoAttribute, crate::rtp::srtp::SdesError>> + '_ {
    m.attributes
        .iter()
        .filter(|(name, _)| name.eq_ignore_ascii_case("crypto"))
        .map(|(_, v)| CryptoAttribute::parse(v.as_deref().unwrap_or("")))
}

/// Replaces a media section's `a=crypto` lines by `lines`.
pub fn set_crypto_lines(m: &mut MediaDescription, lines: &[CryptoAttribute]) {
    m.attributes
        .retain(|(name, _)| !name.eq_ignore_ascii_case("crypto"));
    m.attributes.extend(
        lines
            .iter()
            .map(|c| ("crypto".to_string(), Some(c.to_sdp()))),
    );
}

/// RTP/SAVP (or another secure RTP profile): the section requires SRTP.
pub fn is_secure_proto(proto: &str) -> bool {
    proto.to_ascii_uppercase().contains("SAVP")
}

/// Builds the gateway's offer: one `m=` per requested kind, RTCP on the next port.
pub fn build_offer(p: &OfferParams) -> SessionDescription {
    let section = |kind: MediaKind, port: u16, codecs: &[RtpMap]| {
        let mut m = MediaDescription::new(kind, port, "RTP/AVP");
        m.formats = codecs.iter().map(|c| c.pt).collect();
        m.rtpmaps = codecs.to_vec();
        m.rtcp = port.checked_add(1).map(|p| (p, None));
        m.direction = p.direction;
        m
    };
    let mut media = Vec::new();
    if let Some((port, codecs)) = &p.audio {
        let mut m = section(MediaKind::Audio, *port, codecs);
        m.ptime = Some(20);
        media.push(m);
    }
    if let Some((port, codecs)) = &p.video {
        media.push(section(MediaKind::Video, *port, codecs));
    }
    SessionDescription {
        origin: Origin {
            username: "-".to_owned(),
            session_id: p.session_id,
            version: p.version,
            address: p.ip.to_string(),
        },
        session_name: "sipstream".to_owned(),
        connection: Some(p.ip),
        media,
    }
}

/// The outcome of an offer/answer exchange for one media section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    /// First answered format that we offered, with the answer's payload type.
    pub codec: RtpMap,
    pub dtmf: Option<RtpMap>,
    /// `None` when the stream was rejected (port 0) or put on hold (c=0.0.0.0).
    pub remote_rtp: Option<SocketAddr>,
    pub remote_rtcp: Option<SocketAddr>,
    pub direction: Direction,
    pub ptime: Option<u32>,
}

fn list(maps: &[RtpMap]) -> String {
    maps.iter()
        .map(|m| format!("{} {m}", m.pt))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Reads one answered media section against the codecs we offered for it.
pub fn negotiate(
    offered: &[RtpMap],
    answer: &MediaDescription,
    session_conn: Option<IpAddr>,
) -> Result<Negotiated, SdpError> {
    let codec = answer
        .rtpmaps
        .iter()
        .filter(|a| !a.is_dtmf())
        .find(|a| offered.iter().any(|o| !o.is_dtmf() && o.same_codec(a)))
        .cloned()
        .ok_or_else(|| SdpError::NoCommonCodec {
            offered: list(offered),
            answered: list(&answer.rtpmaps),
        })?;
    let dtmf = answer
        .rtpmaps
        .iter()
        .find(|a| {
            a.is_dtmf()
                && offered
                    .iter()
                    .any(|o| o.is_dtmf() && o.clock_rate == a.clock_rate)
        })
        .cloned();
    let conn = media_address(answer, session_conn);
    let remote_rtp = conn
        .filter(|_| answer.port != 0)
        .map(|ip| SocketAddr::new(ip, answer.port));
    let remote_rtcp = remote_rtp.and_then(|rtp| match answer.rtcp {
        Some((port, ip)) => Some(SocketAddr::new(
            ip.map_or(rtp.ip(), |ip| ip.to_canonical()),
            port,
        )),
        None if answer.rtcp_mux => Some(rtp),
        None => rtp
            .port()
            .checked_add(1)
            .map(|p| SocketAddr::new(rtp.ip(), p)),
    });
    Ok(Negotiated {
        codec,
        dtmf,
        remote_rtp,
        remote_rtcp,
        direction: answer.direction,
        ptime: answer.ptime,
    })
}

/// Where a media section's RTP goes: its own `c=`, else the session's. An IPv4-mapped IPv6
/// address (`c=IN IP6 ::ffff:192.0.2.1`, RFC 5118 §4.9) is the IPv4 address it holds, which
/// an IPv4 socket reaches. None without an address, or with an unspecified one (hold).
pub fn media_address(m: &MediaDescription, session_conn: Option<IpAddr>) -> Option<IpAddr> {
    m.connection
        .or(session_conn)
        .map(|ip| ip.to_canonical())
        .filter(|ip| !ip.is_unspecified())
}

/// Whether an RTP socket bound to `bind` can send to `addr`: an IPv4 socket reaches IPv4
/// only, one bound to a given IPv6 address IPv6 only, and one bound to `::` (dual-stack)
/// both.
pub fn reaches(bind: IpAddr, addr: IpAddr) -> bool {
    match (bind, addr.to_canonical()) {
        (IpAddr::V4(_), a) => a.is_ipv4(),
        (IpAddr::V6(b), _) if b.is_unspecified() => true,
        (IpAddr::V6(_), a) => a.is_ipv6(),
    }
}

/// A media section of an offer refused because its address cannot be reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreachable {
    pub kind: MediaKind,
    pub address: IpAddr,
}

impl fmt::Display for Unreachable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at {}", self.kind, self.address)
    }
}

/// Refuses (port 0, so that [`answer`] rejects it, RFC 3264 §6) each offered section whose
/// address RTP sockets bound to `bind` cannot send to: an IPv6 `c=` line when our sockets are
/// IPv4 (RFC 5118 §4.6, §4.8). Answering it would promise media that goes nowhere. Returns
/// the sections refused, in order.
pub fn refuse_unreachable(offer: &mut SessionDescription, bind: IpAddr) -> Vec<Unreachable> {
    let session = offer.connection;
    let mut refused = Vec::new();
    for m in offer.media.iter_mut().filter(|m| m.port != 0) {
        if let Some(address) = media_address(m, session).filter(|a| !reaches(bind, *a)) {
            m.port = 0;
            refused.push(Unreachable {
                kind: m.kind.clone(),
                address,
            });
        }
    }
    refused
}

/// The direction of our answer to an offered `offer` direction, given what we want
/// (`want`: sendrecv normally, sendonly while we hold the peer). RFC 3264 §6.1: we may only
/// send where the offer receives and only receive where the offer sends.
pub fn answer_direction(offer: Direction, want: Direction) -> Direction {
    let send = want.sends() && matches!(offer, Direction::SendRecv | Direction::RecvOnly);
    let recv = matches!(want, Direction::SendRecv | Direction::RecvOnly) && offer.sends();
    match (send, recv) {
        (true, true) => Direction::SendRecv,
        (true, false) => Direction::SendOnly,
        (false, true) => Direction::RecvOnly,
        (false, false) => Direction::Inactive,
    }
}

/// Our answer to `offer` (RFC 3264 §6): one `m=` per offered `m=`, in the offer's order. A
/// section of a kind we have in `ours` lists the offered formats we support (a subset of the
/// offer, in its order, with its payload types) and is answered from our port; a section we
/// cannot take (other kind, or no common codec) is rejected with port 0. Directions follow
/// [`answer_direction`] with `want`. The origin is `ours`'s; stamp the version with
/// [`LocalSession`].
pub fn answer(
    ours: &SessionDescription,
    offer: &SessionDescription,
    want: Direction,
) -> SessionDescription {
    let mut used = vec![false; ours.media.len()];
    let media = offer
        .media
        .iter()
        .map(|o| {
            let mine = ours
                .media
                .iter()
                .enumerate()
                .find(|(i, m)| !used[*i] && m.kind == o.kind && o.port != 0);
            let common: Vec<RtpMap> = match mine {
                Some((_, m)) => o
                    .rtpmaps
                    .iter()
                    .filter(|r| m.rtpmaps.iter().any(|ours| ours.same_codec(r)))
                    .cloned()
                    .collect(),
                None => Vec::new(),
            };
            match mine {
                Some((i, m)) if common.iter().any(|r| !r.is_dtmf()) => {
                    used[i] = true;
                    let mut a = m.clone();
                    a.formats = common.iter().map(|r| r.pt).collect();
                    a.rtpmaps = common;
                    a.direction = answer_direction(o.direction, want);
                    a
                }
                _ => {
                    let mut a = MediaDescription::new(o.kind.clone(), 0, &o.proto);
                    a.formats = o.formats.iter().take(1).copied().collect();
                    // Only that format's rtpmap: the first rtpmap may belong to another
                    // format when the first has none (found by the siprec_body fuzz target).
                    a.rtpmaps = o
                        .rtpmaps
                        .iter()
                        .filter(|r| a.formats.contains(&r.pt))
                        .cloned()
                        .collect();
                    a.direction = Direction::Inactive;
                    a
                }
            }
        })
        .collect();
    SessionDescription {
        origin: ours.origin.clone(),
        session_name: ours.session_name.clone(),
        connection: ours.connection,
        media,
    }
}

/// Our side of an SDP session across offers and answers: one `o=` session id, and a version
/// that moves exactly when what we describe changes (RFC 3264 §8: a changed description
/// carries version + 1, a repeated one the same version).
#[derive(Debug, Clone)]
pub struct LocalSession {
    session_id: u64,
    version: u64,
    /// The last description we sent, with its origin version zeroed for comparison.
    last: Option<SessionDescription>,
}

impl LocalSession {
    pub fn new(session_id: u64) -> Self {
        Self {
            session_id,
            version: 0,
            last: None,
        }
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    /// Gives `sd` our session id and the right version, and returns its text.
    pub fn stamp(&mut self, mut sd: SessionDescription) -> String {
        sd.origin.session_id = self.session_id;
        sd.origin.version = 0;
        if self.last.as_ref() != Some(&sd) {
            self.version += 1;
            self.last = Some(sd.clone());
        }
        sd.origin.version = self.version;
        sd.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIPP_PCMU: &str = include_str!("../../tests/fixtures/sipp_pcmu_answer.sdp");
    const BARESIP_OPUS: &str = include_str!("../../tests/fixtures/baresip_opus_answer.sdp");
    const MEDIA_CONN_RTCP: &str = include_str!("../../tests/fixtures/media_conn_rtcp_answer.sdp");
    const EARLY_MEDIA: &str = include_str!("../../tests/fixtures/early_media_183_answer.sdp");
    const HOLD: &str = include_str!("../../tests/fixtures/hold_inactive_answer.sdp");
    const H264: &str = include_str!("../../tests/fixtures/h264_answer.sdp");

    fn offered_audio() -> Vec<RtpMap> {
        vec![
            codec_opus(),
            codec_pcmu(),
            codec_pcma(),
            codec_telephone_event(),
        ]
    }

    fn first(text: &str) -> (SessionDescription, MediaDescription) {
        let sdp = SessionDescription::parse(text).expect("valid SDP");
        let media = sdp.media.first().cloned().expect("one m= line");
        (sdp, media)
    }

    #[test]
    fn sipp_answer_with_static_payload_type() {
        let (sdp, m) = first(SIPP_PCMU);
        assert_eq!(m.rtpmaps, vec![codec_pcmu()]);
        let n = negotiate(&offered_audio(), &m, sdp.connection).expect("PCMU");
        assert_eq!(n.codec, codec_pcmu());
        assert_eq!(n.remote_rtp, Some("127.0.0.1:6000".parse().unwrap()));
        assert_eq!(n.remote_rtcp, Some("127.0.0.1:6001".parse().unwrap()));
        assert_eq!(n.dtmf, None);
    }

    #[test]
    fn baresip_opus_uses_answer_payload_types() {
        let (sdp, m) = first(BARESIP_OPUS);
        let n = negotiate(&offered_audio(), &m, sdp.connection).expect("opus");
        assert_eq!(n.codec.pt, 98);
        assert_eq!(n.codec.encoding, "opus");
        assert_eq!(n.codec.fmtp.as_deref(), Some("stereo=1;sprop-stereo=1"));
        assert_eq!(n.dtmf.map(|d| d.pt), Some(100));
        assert_eq!(n.remote_rtcp, n.remote_rtp, "rtcp-mux");
        assert_eq!(n.ptime, Some(20));
        assert_eq!(m.label.as_deref(), Some("1"));
        assert!(m.attributes.iter().any(|(k, _)| k == "ssrc"));
    }

    #[test]
    fn media_level_connection_and_rtcp_attribute() {
        let (sdp, m) = first(MEDIA_CONN_RTCP);
        let n = negotiate(&offered_audio(), &m, sdp.connection).expect("PCMA");
        assert_eq!(n.codec, codec_pcma());
        assert_eq!(n.remote_rtp, Some("192.0.2.10:40000".parse().unwrap()));
        assert_eq!(n.remote_rtcp, Some("192.0.2.11:40101".parse().unwrap()));
    }

    #[test]
    fn early_media_is_sendonly() {
        let (sdp, m) = first(EARLY_MEDIA);
        let n = negotiate(&offered_audio(), &m, sdp.connection).expect("PCMU");
        assert_eq!(n.direction, Direction::SendOnly);
        assert_eq!(n.direction.reversed(), Direction::RecvOnly);
    }

    #[test]
    fn hold_answer_has_no_remote_address() {
        let (sdp, m) = first(HOLD);
        let n = negotiate(&offered_audio(), &m, sdp.connection).expect("PCMU");
        assert_eq!(n.direction, Direction::Inactive);
        assert_eq!((n.remote_rtp, n.remote_rtcp), (None, None));
    }

    #[test]
    fn h264_video_section() {
        let sdp = SessionDescription::parse(H264).expect("valid SDP");
        let video = sdp
            .media
            .iter()
            .find(|m| m.kind == MediaKind::Video)
            .expect("video");
        let n = negotiate(&[codec_h264()], video, sdp.connection).expect("H264");
        assert_eq!(n.codec.pt, 97);
        assert!(n
            .codec
            .fmtp
            .as_deref()
            .is_some_and(|f| f.contains("packetization-mode=1")));
    }

    #[test]
    fn rejected_stream_keeps_codec_but_no_address() {
        let (sdp, mut m) = first(SIPP_PCMU);
        m.port = 0;
        let n = negotiate(&offered_audio(), &m, sdp.connection).expect("PCMU");
        assert_eq!(n.remote_rtp, None);
    }

    #[test]
    fn negotiation_follows_answer_order() {
        let (sdp, mut m) = first(SIPP_PCMU);
        m.formats = vec![8, 0];
        m.rtpmaps = vec![codec_pcma(), codec_pcmu()];
        let n = negotiate(&offered_audio(), &m, sdp.connection).expect("codec");
        assert_eq!(n.codec, codec_pcma());
    }

    /// RFC 5118 §4.6, §4.8, §4.9: IPv6 `c=` lines. Sections our IPv4 sockets cannot reach are
    /// refused (port 0), an IPv4-mapped address is the IPv4 address it holds, and a socket on
    /// `::` reaches both families.
    #[test]
    fn offers_with_ipv6_addresses() {
        let v4: IpAddr = "127.0.0.1".parse().unwrap();
        let mixed = "v=0\r\no=t 1 1 IN IP4 host.example\r\ns=-\r\nt=0 0\r\n\
            m=audio 49170 RTP/AVP 0\r\nc=IN IP4 192.0.2.30\r\n\
            m=video 49172 RTP/AVP 96\r\nc=IN IP6 2001:db8::30\r\na=rtpmap:96 H264/90000\r\n\
            m=audio 49174 RTP/AVP 0\r\nc=IN IP6 ::\r\n";
        let mut offer = SessionDescription::parse(mixed).unwrap();
        let refused = refuse_unreachable(&mut offer, v4);
        assert_eq!(
            refused,
            vec![Unreachable {
                kind: MediaKind::Video,
                address: "2001:db8::30".parse().unwrap(),
            }]
        );
        assert_eq!(refused[0].to_string(), "video at 2001:db8::30");
        // The unspecified address is hold, not an address of the other family.
        let ports: Vec<u16> = offer.media.iter().map(|m| m.port).collect();
        assert_eq!(ports, vec![49170, 0, 49174]);
        let ans = answer(&our_audio(), &offer, Direction::SendRecv);
        assert_eq!(ans.media.iter().map(|m| m.port).collect::<Vec<_>>()[1], 0);

        let six = "v=0\r\no=t 1 1 IN IP6 2001:db8::20\r\ns=-\r\nc=IN IP6 2001:db8::20\r\nt=0 0\r\n\
            m=audio 6000 RTP/AVP 0\r\n";
        let mut offer = SessionDescription::parse(six).unwrap();
        assert!(refuse_unreachable(&mut offer.clone(), "::".parse().unwrap()).is_empty());
        assert!(refuse_unreachable(&mut offer.clone(), "2001:db8::1".parse().unwrap()).is_empty());
        assert_eq!(refuse_unreachable(&mut offer, v4).len(), 1);
        assert_eq!(offer.media[0].port, 0);

        let mapped =
            "v=0\r\no=t 1 1 IN IP6 ::ffff:192.0.2.2\r\ns=-\r\nc=IN IP6 ::ffff:192.0.2.2\r\n\
            t=0 0\r\nm=audio 6000 RTP/AVP 0\r\na=rtcp:6005 IN IP6 ::ffff:192.0.2.3\r\n";
        let mut offer = SessionDescription::parse(mapped).unwrap();
        assert!(refuse_unreachable(&mut offer, v4).is_empty());
        assert!(!reaches(
            "2001:db8::1".parse().unwrap(),
            "::ffff:192.0.2.2".parse().unwrap()
        ));
        let n = negotiate(&offered_audio(), &offer.media[0], offer.connection).unwrap();
        assert_eq!(n.remote_rtp, Some("192.0.2.2:6000".parse().unwrap()));
        assert_eq!(n.remote_rtcp, Some("192.0.2.3:6005".parse().unwrap()));
    }

    #[test]
    fn no_common_codec_names_both_sides() {
        let (sdp, m) = first(H264);
        let err = negotiate(&[codec_opus()], &m, sdp.connection).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("opus/48000/2") && text.contains("PCMA/8000"),
            "{text}"
        );
    }

    fn our_audio() -> SessionDescription {
        build_offer(&OfferParams {
            session_id: 9,
            version: 1,
            ip: "127.0.0.1".parse().unwrap(),
            audio: Some((
                4000,
                vec![
                    codec_pcmu(),
                    codec_pcma(),
                    codec_opus(),
                    codec_telephone_event(),
                ],
            )),
            video: None,
            direction: Direction::SendRecv,
        })
    }

    #[test]
    fn answer_is_a_subset_of_the_offer_in_its_order_and_payload_types() {
        let offer = SessionDescription::parse(
            "v=0\r\no=x 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\n\
             m=audio 5000 RTP/AVP 8 18 0 100\r\na=rtpmap:100 telephone-event/8000\r\n\
             m=video 5002 RTP/AVP 97\r\na=rtpmap:97 VP8/90000\r\n",
        )
        .unwrap();
        let a = answer(&our_audio(), &offer, Direction::SendRecv);
        assert_eq!(a.media.len(), 2, "one answer section per offered section");
        let audio = &a.media[0];
        assert_eq!(audio.port, 4000);
        assert_eq!(
            audio.formats,
            vec![8, 0, 100],
            "G729 dropped, offer order and PTs kept"
        );
        assert_eq!(audio.direction, Direction::SendRecv);
        assert_eq!(a.media[1].port, 0, "video rejected");
        let text = a.to_string();
        assert!(
            !text.contains("opus"),
            "codecs the offer lacks are not answered: {text}"
        );
    }

    #[test]
    fn a_rejected_section_answers_its_first_format_with_that_formats_rtpmap_only() {
        // The first format (98) has no rtpmap; the first rtpmap is another format's (100).
        let offer = SessionDescription::parse(
            "v=0\r\no=x 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\n\
             m=audio 5000 RTP/AVP 98 100\r\na=rtpmap:100 telephone-event/8000\r\n",
        )
        .unwrap();
        let a = answer(&our_audio(), &offer, Direction::SendRecv);
        let m = &a.media[0];
        assert_eq!((m.port, &m.formats[..]), (0, &[98][..]));
        assert!(m.rtpmaps.is_empty(), "{:?}", m.rtpmaps);
        // What is written is what the struct says.
        assert_eq!(SessionDescription::parse(&a.to_string()), Ok(a));
    }

    #[test]
    fn answer_directions_follow_rfc_3264() {
        use Direction::*;
        assert_eq!(answer_direction(SendOnly, SendRecv), RecvOnly);
        assert_eq!(answer_direction(Inactive, SendRecv), Inactive);
        assert_eq!(answer_direction(RecvOnly, SendRecv), SendOnly);
        assert_eq!(answer_direction(SendRecv, SendOnly), SendOnly);
        assert_eq!(answer_direction(SendOnly, SendOnly), Inactive);
    }

    #[test]
    fn no_common_codec_rejects_the_section() {
        let offer = SessionDescription::parse(
            "v=0\r\no=x 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\nm=audio 5000 RTP/AVP 18 101\r\na=rtpmap:101 telephone-event/8000\r\n",
        )
        .unwrap();
        let a = answer(&our_audio(), &offer, Direction::SendRecv);
        assert_eq!(a.media[0].port, 0);
    }

    #[test]
    fn origin_version_moves_only_when_the_content_changes() {
        let mut local = LocalSession::new(42);
        let v = |t: &str| SessionDescription::parse(t).unwrap().origin.version;
        let first = local.stamp(our_audio());
        assert_eq!(v(&first), 1);
        assert_eq!(
            v(&local.stamp(our_audio())),
            1,
            "same content, same version"
        );
        let mut held = our_audio();
        held.media[0].direction = Direction::SendOnly;
        assert_eq!(v(&local.stamp(held)), 2, "hold changes the version");
        assert_eq!(v(&local.stamp(our_audio())), 3, "resume changes it again");
        assert!(first.contains("o=- 42 1 "));
    }

    #[test]
    fn offer_round_trips() {
        let offer = build_offer(&OfferParams {
            session_id: 42,
            version: 1,
            ip: "192.0.2.7".parse().unwrap(),
            audio: Some((30000, offered_audio())),
            video: Some((30002, vec![codec_h264()])),
            direction: Direction::SendRecv,
        });
        let text = offer.to_string();
        assert!(
            text.contains("m=audio 30000 RTP/AVP 111 0 8 101\r\n"),
            "{text}"
        );
        assert!(
            text.contains("a=rtpmap:111 opus/48000/2\r\na=fmtp:111 minptime=10;useinbandfec=1\r\n")
        );
        assert!(text.contains("a=rtcp:30001\r\n") && text.contains("a=ptime:20\r\n"));
        assert!(!text.replace("\r\n", "").contains('\n'));
        assert_eq!(SessionDescription::parse(&text), Ok(offer));
    }

    #[test]
    fn fuzz_found_round_trip_cases() {
        // An empty s= is written back as "-"; zero channels cannot be written, so that rtpmap
        // is ignored, like RFC 4475's `a=rtpmap:31 LPC` (no clock rate): the payload types
        // keep their static meaning and the description round-trips.
        let sdp = SessionDescription::parse("v=0\no=- 1 1 IN IP4 192.0.2.1\ns=\n").expect("valid");
        assert_eq!(sdp.session_name, "-");
        for bad in ["a=rtpmap:8 PCMA/8/0", "a=rtpmap:31 LPC"] {
            let text = format!("v=0\no=- 1 1 IN IP4 192.0.2.1\nm=audio 1 RTP/AVP 8 31\n{bad}\n");
            let sdp = SessionDescription::parse(&text).expect(bad);
            let pcma = sdp.media[0].rtpmaps.iter().find(|m| m.pt == 8).expect(bad);
            assert_eq!(
                (pcma.encoding.as_str(), pcma.clock_rate),
                ("PCMA", 8000),
                "{bad}"
            );
            assert_eq!(SessionDescription::parse(&sdp.to_string()), Ok(sdp));
        }
    }

    #[test]
    fn syntax_errors_name_the_line() {
        let err = SessionDescription::parse("v=0\no=- 1 1 IN IP4 192.0.2.1\nm=audio x RTP/AVP 0\n")
            .unwrap_err();
        assert!(matches!(err, SdpError::Syntax { line: 3, .. }), "{err}");
        assert_eq!(
            SessionDescription::parse("v=0\n"),
            Err(SdpError::Missing("o="))
        );
        assert!(SessionDescription::parse("garbage").is_err());
    }
}
