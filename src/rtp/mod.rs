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
pub mod stats;

pub use packet::{is_rtcp, RtpError, RtpHeader, RtpPacket};
