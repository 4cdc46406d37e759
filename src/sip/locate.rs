//! Locating a SIP server (RFC 3263 §4): where a request for a host goes. An IP literal or a
//! host with an explicit port: that address (A/AAAA for a name). A name without a port:
//! NAPTR records naming an SRV domain for our transport (`SIP+D2U`, `SIP+D2T`, `SIPS+D2T`),
//! else the `_sip._udp` / `_sip._tcp` / `_sips._tcp` SRV records of the name, each target
//! resolved with A/AAAA, in priority order (weight breaking ties, highest first); without any
//! SRV record, the name's A/AAAA at 5060 (5061 for TLS). The result is the ordered list of addresses to try: the call layer fails
//! over to the next one on 503, a timeout or a transport error.
//!
//! The ordering ([`order_srv`], [`srv_domain_from_naptr`]) is plain functions; [`Locator`]
//! does the lookups with hickory-resolver.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::config::{NameServerConfigGroup, ResolverConfig, ResolverOpts};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::TokioResolver;

use super::endpoint::Transport;

/// One SRV record: (priority, weight, port, target host).
pub type Srv = (u16, u16, u16, String);

/// SRV records in the order they are tried: lowest priority first; within a priority,
/// highest weight first (RFC 2782's weighted random choice made deterministic, so that a
/// failover sequence is reproducible), then the target name.
pub fn order_srv(mut records: Vec<Srv>) -> Vec<Srv> {
    records.sort_by(|a, b| {
        a.0.cmp(&b.0)
            .then(b.1.cmp(&a.1))
            .then_with(|| a.3.cmp(&b.3))
    });
    // "." as target means "no service here" (RFC 2782).
    records.retain(|r| r.3 != "." && !r.3.is_empty());
    records
}

/// The SRV domain the NAPTR records point to for `transport`: records with flag `s` and
/// service `SIP+D2U` (UDP), `SIP+D2T` (TCP) or `SIPS+D2T` (TLS), the lowest order then
/// preference first.
/// Records: (order, preference, flags, services, replacement).
pub fn srv_domain_from_naptr(
    records: &[(u16, u16, String, String, String)],
    transport: Transport,
) -> Option<String> {
    let want = match transport {
        Transport::Udp => "SIP+D2U",
        Transport::Tcp => "SIP+D2T",
        Transport::Tls => "SIPS+D2T",
    };
    records
        .iter()
        .filter(|r| r.2.eq_ignore_ascii_case("s") && r.3.eq_ignore_ascii_case(want))
        .min_by_key(|r| (r.0, r.1))
        .map(|r| r.4.trim_end_matches('.').to_string())
        .filter(|d| !d.is_empty())
}

/// DNS lookups for SIP destinations.
#[derive(Clone)]
pub struct Locator {
    resolver: Option<TokioResolver>,
}

impl std::fmt::Debug for Locator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Locator")
            .field("resolver", &self.resolver.is_some())
            .finish()
    }
}

const LOOKUP_TIMEOUT: Duration = Duration::from_secs(3);

impl Locator {
    /// With `servers` (e.g. `127.0.0.1:5353`), only those name servers; else the system's
    /// (`/etc/resolv.conf`); if that cannot be read, names get A/AAAA from the OS only.
    pub fn new(servers: &[SocketAddr]) -> Self {
        let mut opts = ResolverOpts::default();
        opts.timeout = LOOKUP_TIMEOUT;
        opts.attempts = 1;
        let resolver = if servers.is_empty() {
            TokioResolver::builder_tokio()
                .ok()
                .map(|b| b.with_options(opts).build())
        } else {
            let mut group = NameServerConfigGroup::new();
            for s in servers {
                group.merge(NameServerConfigGroup::from_ips_clear(
                    &[s.ip()],
                    s.port(),
                    true,
                ));
            }
            let config = ResolverConfig::from_parts(None, vec![], group);
            Some(
                TokioResolver::builder_with_config(config, TokioConnectionProvider::default())
                    .with_options(opts)
                    .build(),
            )
        };
        Self { resolver }
    }

    /// The addresses to try for `host`, in order. `port`: the URI's or the request's
    /// explicit port (no NAPTR/SRV then).
    pub async fn locate(
        &self,
        host: &str,
        port: Option<u16>,
        transport: Transport,
    ) -> Result<Vec<SocketAddr>, String> {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(
                ip,
                port.unwrap_or(transport.default_port()),
            )]);
        }
        if let (None, Some(_)) = (port, &self.resolver) {
            let srv = self.srv_records(host, transport).await;
            if !srv.is_empty() {
                let mut out = Vec::new();
                for (_, _, p, target) in order_srv(srv) {
                    match self.addresses(&target, p).await {
                        Ok(addrs) => out.extend(addrs),
                        Err(e) => tracing::debug!(%target, error = %e, "SRV target not resolved"),
                    }
                }
                if out.is_empty() {
                    return Err(format!("{host}: no SRV target resolves"));
                }
                return Ok(out);
            }
        }
        self.addresses(host, port.unwrap_or(transport.default_port()))
            .await
    }

    /// NAPTR → SRV domain, else `_sip._<transport>.host`; the SRV records found there.
    async fn srv_records(&self, host: &str, transport: Transport) -> Vec<Srv> {
        let Some(r) = &self.resolver else {
            return Vec::new();
        };
        let fqdn = format!("{}.", host.trim_end_matches('.'));
        let naptr: Vec<(u16, u16, String, String, String)> =
            match r.lookup(fqdn.as_str(), RecordType::NAPTR).await {
                Ok(l) => l
                    .record_iter()
                    .filter_map(|rec| match rec.data() {
                        RData::NAPTR(n) => Some((
                            n.order(),
                            n.preference(),
                            String::from_utf8_lossy(n.flags()).to_string(),
                            String::from_utf8_lossy(n.services()).to_string(),
                            n.replacement().to_utf8(),
                        )),
                        _ => None,
                    })
                    .collect(),
                Err(e) => {
                    tracing::debug!(%host, error = %e, "no NAPTR records");
                    Vec::new()
                }
            };
        tracing::debug!(%host, ?naptr, "NAPTR");
        let domain = srv_domain_from_naptr(&naptr, transport).unwrap_or_else(|| {
            let service = match transport {
                Transport::Udp => "_sip._udp",
                Transport::Tcp => "_sip._tcp",
                Transport::Tls => "_sips._tcp",
            };
            format!("{service}.{}", host.trim_end_matches('.'))
        });
        match r.srv_lookup(format!("{domain}.")).await {
            Ok(l) => l
                .iter()
                .map(|s| {
                    (
                        s.priority(),
                        s.weight(),
                        s.port(),
                        s.target().to_utf8().trim_end_matches('.').to_string(),
                    )
                })
                .collect(),
            Err(e) => {
                tracing::debug!(%domain, error = %e, "no SRV records");
                Vec::new()
            }
        }
    }

    /// A/AAAA of `host` (through the configured resolver when there is one, else the OS).
    async fn addresses(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
        if let Some(r) = &self.resolver {
            let fqdn = format!("{}.", host.trim_end_matches('.'));
            if let Ok(ips) = r.lookup_ip(fqdn.as_str()).await {
                let out: Vec<SocketAddr> = ips.iter().map(|ip| SocketAddr::new(ip, port)).collect();
                if !out.is_empty() {
                    return Ok(out);
                }
            }
        }
        let found = tokio::time::timeout(LOOKUP_TIMEOUT, tokio::net::lookup_host((host, port)))
            .await
            .map_err(|_| format!("{host}: DNS lookup timed out"))?
            .map_err(|e| format!("{host}: {e}"))?;
        let out: Vec<SocketAddr> = found.collect();
        if out.is_empty() {
            return Err(format!("{host}: no address"));
        }
        Ok(out)
    }
}

/// One address for `host:port` from the OS resolver (A/AAAA), IPv4 preferred: for peers
/// named by configuration (a registrar, an SRS) rather than located by RFC 3263.
pub async fn resolve(host: &str, port: u16) -> Result<SocketAddr, String> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    let addrs: Vec<SocketAddr> = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::lookup_host((host, port)),
    )
    .await
    .map_err(|_| format!("resolving {host:?} timed out"))?
    .map_err(|e| format!("cannot resolve {host:?}: {e}"))?
    .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| format!("{host:?} has no address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn srv(p: u16, w: u16, port: u16, t: &str) -> Srv {
        (p, w, port, t.to_string())
    }

    #[test]
    fn srv_records_are_tried_by_priority_then_weight() {
        let ordered = order_srv(vec![
            srv(20, 0, 5062, "c.example"),
            srv(10, 10, 5060, "a.example"),
            srv(10, 60, 5061, "b.example"),
            srv(5, 0, 0, "."),
        ]);
        let targets: Vec<&str> = ordered.iter().map(|r| r.3.as_str()).collect();
        assert_eq!(targets, ["b.example", "a.example", "c.example"]);
    }

    #[test]
    fn naptr_picks_the_srv_domain_of_our_transport() {
        let recs = vec![
            (
                20,
                10,
                "s".into(),
                "SIP+D2U".into(),
                "_sip._udp.b.example.".into(),
            ),
            (
                10,
                10,
                "s".into(),
                "SIP+D2T".into(),
                "_sip._tcp.a.example.".into(),
            ),
            (
                10,
                20,
                "s".into(),
                "SIP+D2U".into(),
                "_sip._udp.a.example.".into(),
            ),
            (5, 10, "u".into(), "SIP+D2U".into(), "".into()),
        ];
        assert_eq!(
            srv_domain_from_naptr(&recs, Transport::Udp).as_deref(),
            Some("_sip._udp.a.example")
        );
        assert_eq!(
            srv_domain_from_naptr(&recs, Transport::Tcp).as_deref(),
            Some("_sip._tcp.a.example")
        );
        assert_eq!(srv_domain_from_naptr(&recs, Transport::Tls), None);
        let tls = vec![(
            10,
            10,
            "s".into(),
            "SIPS+D2T".into(),
            "_sips._tcp.a.example.".into(),
        )];
        assert_eq!(
            srv_domain_from_naptr(&tls, Transport::Tls).as_deref(),
            Some("_sips._tcp.a.example")
        );
        assert_eq!(srv_domain_from_naptr(&[], Transport::Udp), None);
    }

    #[tokio::test]
    async fn ip_literals_need_no_lookup() {
        let l = Locator { resolver: None };
        assert_eq!(
            l.locate("127.0.0.1", None, Transport::Udp).await.unwrap(),
            vec!["127.0.0.1:5060".parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(
            l.locate("[::1]", Some(5070), Transport::Udp).await.unwrap(),
            vec!["[::1]:5070".parse::<SocketAddr>().unwrap()]
        );
        // RFC 3261 §19.1.2: TLS without a port means 5061.
        assert_eq!(
            l.locate("127.0.0.1", None, Transport::Tls).await.unwrap(),
            vec!["127.0.0.1:5061".parse::<SocketAddr>().unwrap()]
        );
    }
}
