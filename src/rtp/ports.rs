//! The UDP port-pair pool: even RTP port + odd RTCP port (RFC 3550 §11) from the configured
//! range `[rtp_port_min, rtp_port_max]`, shared by every call.
//!
//! Owns which pairs are free and binds both sockets. A pair comes back to the pool when its
//! [`PortLease`] (inside [`BoundPair`]) is dropped, after the sockets. Pairs are handed out
//! round-robin, so a just-released port is reused last: late packets of an old call then
//! rarely reach a new one. A pair that another process holds is skipped and stays in the
//! pool (it may be free next time). The lock is never held across an `.await` (binding a UDP
//! socket does not block, so allocation binds with std sockets under no lock at all).

use std::collections::VecDeque;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use thiserror::Error;
use tokio::net::UdpSocket;

#[derive(Debug, Error)]
pub enum PortError {
    #[error("RTP port range {min}..={max} holds no even/odd port pair")]
    EmptyRange { min: u16, max: u16 },
    #[error("no free RTP port pair in {min}..={max} on {ip} ({in_use} in use, {skipped} held by other processes)")]
    Exhausted {
        ip: IpAddr,
        min: u16,
        max: u16,
        in_use: usize,
        skipped: usize,
    },
    #[error("cannot bind RTP port pair {rtp}/{rtcp} on {ip}: {source}")]
    Bind {
        ip: IpAddr,
        rtp: u16,
        rtcp: u16,
        #[source]
        source: io::Error,
    },
}

/// Pool counters, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PortPoolCounters {
    pub allocated: u64,
    pub released: u64,
    /// Pairs skipped because a bind failed with "address in use".
    pub bind_skips: u64,
    pub exhausted: u64,
}

#[derive(Debug)]
struct Inner {
    min: u16,
    max: u16,
    capacity: usize,
    /// Even RTP ports not leased, in allocation order.
    free: Mutex<VecDeque<u16>>,
    allocated: AtomicU64,
    released: AtomicU64,
    bind_skips: AtomicU64,
    exhausted: AtomicU64,
}

/// A thread-safe pool of RTP/RTCP port pairs. Cheap to clone (shared state).
#[derive(Debug, Clone)]
pub struct PortPool {
    inner: Arc<Inner>,
}

/// A leased pair; returns its ports to the pool when dropped.
#[derive(Debug)]
pub struct PortLease {
    pool: Arc<Inner>,
    rtp_port: u16,
}

impl PortLease {
    pub fn rtp_port(&self) -> u16 {
        self.rtp_port
    }
    pub fn rtcp_port(&self) -> u16 {
        self.rtp_port + 1
    }
}

impl Drop for PortLease {
    fn drop(&mut self) {
        self.pool.free.lock().push_back(self.rtp_port);
        self.pool.released.fetch_add(1, Ordering::Relaxed);
    }
}

/// Both sockets of a leased pair. Fields drop in order: sockets first, then the lease, so
/// a port is back in the pool only once it is closed.
#[derive(Debug)]
pub struct BoundPair {
    pub rtp: UdpSocket,
    pub rtcp: UdpSocket,
    pub lease: PortLease,
}

impl BoundPair {
    pub fn rtp_addr(&self) -> io::Result<SocketAddr> {
        self.rtp.local_addr()
    }
    pub fn rtcp_addr(&self) -> io::Result<SocketAddr> {
        self.rtcp.local_addr()
    }
}

fn bind_one(ip: IpAddr, port: u16) -> io::Result<UdpSocket> {
    let s = std::net::UdpSocket::bind(SocketAddr::new(ip, port))?;
    s.set_nonblocking(true)?;
    UdpSocket::from_std(s)
}

impl PortPool {
    /// A pool over `[min, max]`: pairs `(p, p+1)` with `p` even and `p+1 <= max`.
    pub fn new(min: u16, max: u16) -> Result<Self, PortError> {
        // Port 0 means "any port" to the OS: never hand it out.
        let lowest = min.max(2);
        let first = lowest.checked_add(lowest % 2);
        let free: VecDeque<u16> = match first {
            Some(first) if max > first => (first..max).step_by(2).collect(),
            _ => VecDeque::new(),
        };
        if free.is_empty() {
            return Err(PortError::EmptyRange { min, max });
        }
        Ok(Self {
            inner: Arc::new(Inner {
                min,
                max,
                capacity: free.len(),
                free: Mutex::new(free),
                allocated: AtomicU64::new(0),
                released: AtomicU64::new(0),
                bind_skips: AtomicU64::new(0),
                exhausted: AtomicU64::new(0),
            }),
        })
    }

    /// Leases a free pair and binds both sockets on `bind_ip`. Pairs that another process
    /// holds are skipped; [`PortError::Exhausted`] when every free pair was tried. Any other
    /// bind error (e.g. `bind_ip` is not a local address) is returned at once. Must run
    /// inside a tokio runtime (the sockets register with its reactor).
    pub async fn allocate(&self, bind_ip: IpAddr) -> Result<BoundPair, PortError> {
        // Each free pair is tried at most once per call.
        let attempts = self.inner.free.lock().len();
        let mut skipped = 0usize;
        for _ in 0..attempts {
            let Some(port) = self.inner.free.lock().pop_front() else {
                break;
            };
            let bound =
                bind_one(bind_ip, port).and_then(|rtp| Ok((rtp, bind_one(bind_ip, port + 1)?)));
            match bound {
                Ok((rtp, rtcp)) => {
                    self.inner.allocated.fetch_add(1, Ordering::Relaxed);
                    let lease = PortLease {
                        pool: self.inner.clone(),
                        rtp_port: port,
                    };
                    return Ok(BoundPair { rtp, rtcp, lease });
                }
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                    // Held by someone else: back of the queue, it may be free next time.
                    self.inner.free.lock().push_back(port);
                    self.inner.bind_skips.fetch_add(1, Ordering::Relaxed);
                    skipped += 1;
                }
                Err(source) => {
                    self.inner.free.lock().push_back(port);
                    return Err(PortError::Bind {
                        ip: bind_ip,
                        rtp: port,
                        rtcp: port + 1,
                        source,
                    });
                }
            }
        }
        self.inner.exhausted.fetch_add(1, Ordering::Relaxed);
        Err(PortError::Exhausted {
            ip: bind_ip,
            min: self.inner.min,
            max: self.inner.max,
            in_use: self.in_use(),
            skipped,
        })
    }

    /// Pairs currently leased.
    pub fn in_use(&self) -> usize {
        self.inner.capacity - self.inner.free.lock().len()
    }

    /// Pairs in the range.
    pub fn capacity(&self) -> usize {
        self.inner.capacity
    }

    pub fn counters(&self) -> PortPoolCounters {
        PortPoolCounters {
            allocated: self.inner.allocated.load(Ordering::Relaxed),
            released: self.inner.released.load(Ordering::Relaxed),
            bind_skips: self.inner.bind_skips.load(Ordering::Relaxed),
            exhausted: self.inner.exhausted.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const LO: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    #[test]
    fn ranges() {
        assert_eq!(PortPool::new(10000, 10009).unwrap().capacity(), 5);
        assert_eq!(PortPool::new(10001, 10010).unwrap().capacity(), 4);
        assert_eq!(PortPool::new(10000, 10001).unwrap().capacity(), 1);
        assert!(PortPool::new(10001, 10002).is_err());
        assert!(PortPool::new(10000, 10000).is_err());
        assert!(PortPool::new(20, 10).is_err());
        assert!(PortPool::new(65535, 65535).is_err());
        assert_eq!(PortPool::new(65534, 65535).unwrap().capacity(), 1);
        assert_eq!(PortPool::new(0, 5).unwrap().capacity(), 2);
    }

    #[tokio::test]
    async fn allocate_skip_exhaust_release() {
        let (min, max) = crate::rtp::free_test_range(3);
        let pool = PortPool::new(min, max).unwrap();
        // Another "process" holds the second pair's RTCP port.
        let squatter = std::net::UdpSocket::bind((LO, min + 3)).unwrap();
        let a = pool.allocate(LO).await.unwrap();
        assert_eq!(a.lease.rtp_port(), min);
        assert_eq!(a.rtcp_addr().unwrap().port(), min + 1);
        let b = pool.allocate(LO).await.unwrap();
        assert_eq!(b.lease.rtp_port(), min + 4);
        assert_eq!(pool.counters().bind_skips, 1);
        assert_eq!(pool.in_use(), 2);
        let err = pool.allocate(LO).await.unwrap_err();
        assert!(
            matches!(err, PortError::Exhausted { skipped: 1, .. }),
            "{err}"
        );
        drop(squatter);
        let c = pool.allocate(LO).await.unwrap();
        assert_eq!(c.lease.rtp_port(), min + 2);
        drop(a);
        assert_eq!(pool.in_use(), 2);
        // The released pair is bindable again.
        let d = pool.allocate(LO).await.unwrap();
        assert_eq!(d.lease.rtp_port(), min);
        let cnt = pool.counters();
        assert_eq!((cnt.allocated, cnt.released, cnt.exhausted), (4, 1, 1));
        drop((b, c, d));
        assert_eq!(pool.in_use(), 0);
    }

    #[tokio::test]
    async fn concurrent_allocations_are_distinct() {
        let (min, max) = crate::rtp::free_test_range(8);
        let pool = PortPool::new(min, max).unwrap();
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let p = pool.clone();
                tokio::spawn(async move { p.allocate(LO).await })
            })
            .collect();
        let mut ports = Vec::new();
        let mut pairs = Vec::new();
        for t in tasks {
            let pair = t.await.unwrap().unwrap();
            ports.push(pair.lease.rtp_port());
            pairs.push(pair);
        }
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), 8);
        assert_eq!(pool.in_use(), 8);
    }
}
