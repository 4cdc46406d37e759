//! RTMP push: republishes a registry stream to an RTMP server (nginx-rtmp, YouTube, Twitch).
//!
//! The pure parts: the RTMP publishing session on rml_rtmp ([`session`]), the FLV tag
//! builders ([`flv`]), the registry → FLV adapter ([`muxer`]) with its audio conversion
//! ([`audio`], [`resample`]), H264 depacketising ([`h264`]), RTP → timeline clocks
//! ([`clock`]) and publish URLs ([`url`]). It reads streams; it never publishes into the
//! registry or touches calls.
pub mod audio;
pub mod clock;
pub mod flv;
pub mod h264;
pub mod muxer;
pub mod resample;
pub mod session;
pub mod url;
