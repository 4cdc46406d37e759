//! Session timers (RFC 4028): reading `Session-Expires`, deciding who refreshes, and when.
//! Plain functions; the UA keeps the schedule and sends the refresh (UPDATE without a body
//! when the peer allows UPDATE, else a re-INVITE with our current SDP).

use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refresher {
    Uac,
    Uas,
}

/// `Session-Expires: 1800;refresher=uac` → (1800, Some(Uac)). The compact form `x` is the
/// same header. Zero and garbage are None.
pub fn parse(value: &str) -> Option<(u32, Option<Refresher>)> {
    let mut parts = value.split(';');
    let secs: u32 = parts.next()?.trim().parse().ok().filter(|s| *s > 0)?;
    let refresher = parts.find_map(|p| {
        let (k, v) = p.split_once('=')?;
        if !k.trim().eq_ignore_ascii_case("refresher") {
            return None;
        }
        match v.trim().to_ascii_lowercase().as_str() {
            "uac" => Some(Refresher::Uac),
            "uas" => Some(Refresher::Uas),
            _ => None,
        }
    });
    Some((secs, refresher))
}

/// How often the refresher sends a refresh: half the interval (RFC 4028 §10), at least 1 s.
pub fn refresh_every(secs: u32) -> Duration {
    Duration::from_millis((u64::from(secs) * 1000 / 2).max(1000))
}

/// When the side that does not refresh gives up on a `secs` session: a little before it
/// expires, by the smaller of 32 s and a third of the interval (RFC 4028 §10).
pub fn expire_after(secs: u32) -> Duration {
    let secs = u64::from(secs);
    let guard = (secs / 3).min(32);
    Duration::from_secs((secs - guard).max(1))
}

/// The header value of a 2xx to an INVITE that asked for a session timer: the request's
/// interval, and its refresher (the caller when it named none, RFC 4028 §9).
pub fn answer_value(secs: u32, refresher: Option<Refresher>) -> (String, Refresher) {
    let who = refresher.unwrap_or(Refresher::Uac);
    let name = match who {
        Refresher::Uac => "uac",
        Refresher::Uas => "uas",
    };
    (format!("{secs};refresher={name}"), who)
}

/// Whether a header list value (Allow, Supported) names `token`.
pub fn lists(value: &str, token: &str) -> bool {
    value
        .split(',')
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_expires_values() {
        assert_eq!(
            parse("1800;refresher=uac"),
            Some((1800, Some(Refresher::Uac)))
        );
        assert_eq!(
            parse(" 90 ; Refresher = UAS"),
            Some((90, Some(Refresher::Uas)))
        );
        assert_eq!(parse("600"), Some((600, None)));
        assert_eq!(parse("600;refresher=nobody"), Some((600, None)));
        assert_eq!(parse("0"), None);
        assert_eq!(parse("soon"), None);
        assert_eq!(refresh_every(1800), Duration::from_secs(900));
        assert_eq!(refresh_every(1), Duration::from_secs(1));
        assert_eq!(expire_after(1800), Duration::from_secs(1768));
        assert_eq!(expire_after(90), Duration::from_secs(60));
        assert_eq!(expire_after(6), Duration::from_secs(4));
        assert_eq!(expire_after(1), Duration::from_secs(1));
        assert_eq!(
            answer_value(600, None),
            ("600;refresher=uac".into(), Refresher::Uac)
        );
        assert_eq!(
            answer_value(90, Some(Refresher::Uas)),
            ("90;refresher=uas".into(), Refresher::Uas)
        );
        assert!(lists("INVITE, ACK,UPDATE", "update"));
        assert!(!lists("INVITE, ACK", "UPDATE"));
    }
}
