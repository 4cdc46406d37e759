//! SIP user agent: tolerant message layer over rsip types, sans-IO transactions, dialogs,
//! digest authentication and SDP, the user agent core, and the tokio driver that owns the
//! sockets.
pub mod dialog;
pub mod digest;
pub mod driver;
pub mod endpoint;
pub mod locate;
pub mod message;
pub mod refer;
pub mod sdp;
pub mod session_timer;
pub mod timer;
pub mod tls;
pub mod transaction;
pub mod ua;
