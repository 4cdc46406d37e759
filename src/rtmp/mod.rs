//! RTMP push: republishes a registry stream to an RTMP server (nginx-rtmp, YouTube, Twitch).
//!
//! Owns the `/push/*` table ([`manager`]), one task per push ([`driver`]), and the pure parts
//! those drive: the RTMP publishing session on rml_rtmp ([`session`]), the FLV tag builders
//! ([`flv`]), the registry → FLV adapter ([`muxer`]) with its audio conversion ([`audio`],
//! [`crate::media::resample`]), H264 depacketising ([`crate::media::h264`]) and RTP → timeline clocks ([`clock`]), and
//! publish URLs ([`url`]). It reads streams; it never publishes into the registry or touches
//! calls.
pub mod audio;
pub mod clock;
pub mod driver;
pub mod flv;
pub mod manager;
pub mod muxer;
pub mod session;
pub mod url;

pub use manager::{PushConfig, PushError, PushInfo, PushManager, PushStatus};
