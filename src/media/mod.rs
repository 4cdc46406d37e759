//! Codecs and media helpers: G.711 tables, the silence payloads the RTP legs send, and the
//! G.711 → Opus transcoder recordings use, and the RFC 4733 telephone-event reader.
//! Owns sample-level transforms only; no I/O, no timing.
pub mod dtmf;
pub mod g711;
pub mod h264;
pub mod opus;
