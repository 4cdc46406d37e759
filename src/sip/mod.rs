//! SIP user agent: tolerant message layer over rsip types, sans-IO transactions, dialogs,
//! digest authentication and SDP, plus the tokio driver that owns the sockets.
pub mod digest;
pub mod message;
pub mod sdp;
pub mod transaction;
