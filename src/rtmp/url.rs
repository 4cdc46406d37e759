//! RTMP publish URLs: `rtmp://host[:port]/app/stream-key`.
//!
//! Follows ffmpeg's split: the first path segment is the application, everything after it
//! (further segments and a `?query`) is the stream key nginx-rtmp, YouTube and Twitch expect.
//! Owns parsing only; it resolves no names.

use std::fmt;

use thiserror::Error;

/// The RTMP default port.
pub const DEFAULT_PORT: u16 = 1935;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum UrlError {
    #[error("expected rtmp://host[:port]/app/stream, got {0:?}")]
    Scheme(String),
    #[error("rtmps:// (RTMP over TLS) is not supported yet: {0:?}")]
    Tls(String),
    #[error("no host in {0:?}")]
    NoHost(String),
    #[error("invalid port in {0:?}")]
    Port(String),
    #[error("no application (rtmp://host/APP/stream) in {0:?}")]
    NoApp(String),
    #[error("no stream name (rtmp://host/app/STREAM) in {0:?}")]
    NoStream(String),
    #[error("spaces or control characters in {0:?}")]
    Characters(String),
}

/// A parsed publish URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtmpUrl {
    pub host: String,
    pub port: u16,
    pub app: String,
    pub stream: String,
}

impl RtmpUrl {
    /// Parses a whole publish URL.
    pub fn parse(url: &str) -> Result<RtmpUrl, UrlError> {
        let shown = || url.chars().take(300).collect::<String>();
        if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(UrlError::Characters(shown()));
        }
        let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
        if lower.starts_with("rtmps://") {
            return Err(UrlError::Tls(shown()));
        }
        let rest = match url.get(..7) {
            Some(s) if s.eq_ignore_ascii_case("rtmp://") => &url[7..],
            _ => return Err(UrlError::Scheme(shown())),
        };
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        if authority.contains('@') {
            // Credentials in the authority are not an RTMP convention; refuse rather than
            // guess (and never log them).
            return Err(UrlError::NoHost("rtmp://…@…".into()));
        }
        let (host, port) = split_host_port(authority).ok_or_else(|| UrlError::Port(shown()))?;
        if host.is_empty() {
            return Err(UrlError::NoHost(shown()));
        }
        let (app, stream) = path.split_once('/').unwrap_or((path, ""));
        if app.is_empty() || app.contains('?') {
            return Err(UrlError::NoApp(shown()));
        }
        let stream = stream.trim_start_matches('/');
        if stream.is_empty() || stream.starts_with('?') {
            return Err(UrlError::NoStream(shown()));
        }
        Ok(RtmpUrl {
            host: host.to_owned(),
            port,
            app: app.to_owned(),
            stream: stream.to_owned(),
        })
    }

    /// The `tcUrl` of the connect command: the URL without the stream key.
    pub fn tc_url(&self) -> String {
        format!("rtmp://{}:{}/{}", self.host, self.port, self.app)
    }

    /// `host:port` for the TCP connection (IPv6 literals bracketed).
    pub fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Display for RtmpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.tc_url(), self.stream)
    }
}

/// `host`, `host:port`, `[v6]`, `[v6]:port`. `None` for a bad port.
fn split_host_port(authority: &str) -> Option<(&str, u16)> {
    if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        return match after {
            "" => Some((host, DEFAULT_PORT)),
            p => Some((host, parse_port(p.strip_prefix(':')?)?)),
        };
    }
    match authority.rsplit_once(':') {
        Some((h, p)) => Some((h, parse_port(p)?)),
        None => Some((authority, DEFAULT_PORT)),
    }
}

fn parse_port(p: &str) -> Option<u16> {
    if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    p.parse::<u16>().ok().filter(|p| *p > 0)
}

/// The publish URL WCS would use: with `full_url` the given URL as is, otherwise the stream
/// name appended as the last path segment (`rtmp://host/live` + `s1` → `rtmp://host/live/s1`).
pub fn publish_url(rtmp_url: &str, stream_name: &str, full_url: bool) -> String {
    let u = rtmp_url.trim();
    if full_url {
        u.to_owned()
    } else {
        format!("{}/{}", u.trim_end_matches('/'), stream_name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_app_and_stream_like_ffmpeg() {
        let u = RtmpUrl::parse("rtmp://127.0.0.1:1936/live/s1").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.app.as_str(), u.stream.as_str()),
            ("127.0.0.1", 1936, "live", "s1")
        );
        assert_eq!(u.tc_url(), "rtmp://127.0.0.1:1936/live");
        let u = RtmpUrl::parse("RTMP://a.rtmp.youtube.com/live2/abcd-efgh?x=1").unwrap();
        assert_eq!((u.port, u.app.as_str()), (1935, "live2"));
        assert_eq!(u.stream, "abcd-efgh?x=1");
        let u = RtmpUrl::parse("rtmp://[::1]:19350/app/inst/key").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 19350));
        assert_eq!(u.stream, "inst/key");
        assert_eq!(u.address(), "[::1]:19350");
    }

    #[test]
    fn rejects_what_cannot_be_published() {
        for bad in [
            "",
            "http://x/live/s",
            "rtmp://",
            "rtmp:///live/s",
            "rtmp://h:0/live/s",
            "rtmp://h:99999/live/s",
            "rtmp://h:x/live/s",
            "rtmp://h",
            "rtmp://h/live",
            "rtmp://h/live/",
            "rtmp://h//s",
            "rtmp://h/live/a b",
            "rtmps://h/live/s",
            "rtmp://user:pw@h/live/s",
        ] {
            assert!(RtmpUrl::parse(bad).is_err(), "{bad:?} accepted");
        }
        let e = RtmpUrl::parse("rtmp://user:pw@h/live/s").unwrap_err();
        assert!(!e.to_string().contains("pw"), "{e}");
    }

    #[test]
    fn wcs_appends_the_stream_name_unless_full_url() {
        assert_eq!(
            publish_url("rtmp://h/live/", "s1", false),
            "rtmp://h/live/s1"
        );
        assert_eq!(
            publish_url("rtmp://h/live", "s1", false),
            "rtmp://h/live/s1"
        );
        assert_eq!(
            publish_url("rtmp://h/live/k", "s1", true),
            "rtmp://h/live/k"
        );
    }
}
