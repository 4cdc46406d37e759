//! Codecs and media helpers: G.711 tables and the silence payloads the RTP legs send.
//! Owns sample-level transforms only; no I/O, no timing.
pub mod g711;
