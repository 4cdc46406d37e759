//! sipstream: a gateway that places SIP calls on REST request and turns their media into
//! named streams. `main.rs` only wires these modules together.
#![forbid(unsafe_code)]

pub mod api;
pub mod call;
pub mod cli;
pub mod config;
pub mod error;
pub mod events;
pub mod exchange;
pub mod hls;
pub mod ids;
pub mod media;
pub mod mediastream;
pub mod metrics;
pub mod record;
pub mod registry;
pub mod rtmp;
pub mod rtp;
pub mod rtsp;
pub mod secret;
pub mod sip;
pub mod siprec;
pub mod webrtc;
