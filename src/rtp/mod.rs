//! RTP/RTCP: packet validation, receiver statistics, port pool and the per-leg media driver.
//!
//! `packet`, `rtcp` and `stats` are wire formats and arithmetic; `session` is the sans-IO
//! per-leg state machine built on them; `driver` is the only module here that touches
//! sockets and the clock; `ports` leases the UDP port pairs the driver runs on.
pub mod driver;
pub mod packet;
pub mod ports;
pub mod rtcp;
pub mod session;
pub mod srtp;
pub mod stats;
pub mod threads;

pub use packet::{is_rtcp, RtpError, RtpHeader, RtpPacket};

/// Port ranges for tests that bind real sockets: each call gets a range no other test of this
/// process was given, and that was free when probed (the machine is shared).
#[cfg(test)]
pub(crate) fn free_test_range(pairs: u16) -> (u16, u16) {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(41000);
    loop {
        let base = NEXT.fetch_add(64, Ordering::Relaxed);
        assert!(base < 60000, "no free port range");
        let max = base + 2 * pairs - 1;
        let free = (base..=max).all(|p| std::net::UdpSocket::bind(("127.0.0.1", p)).is_ok());
        if free {
            return (base, max);
        }
    }
}
