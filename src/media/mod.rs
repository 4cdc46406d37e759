//! Codecs and media helpers: G.711 tables, the silence payloads the RTP legs send, and the
//! G.711 → Opus transcoder recordings use.
//! Owns sample-level transforms only; no I/O, no timing.
pub mod g711;
pub mod h264;
pub mod opus;
