//! Codecs and media helpers: G.711 tables, the silence payloads the RTP legs send, the
//! G.711 → Opus encoder recordings use, the resampler, the transcoder between two legs'
//! codecs, RFC 4733 telephone-events both ways, and sound files (WAV, MP3, Ogg Opus) decoded
//! for injection.
//! Owns sample-level transforms only; no I/O, no timing.
pub mod dtmf;
pub mod g711;
pub mod h264;
pub mod mix;
pub mod opus;
pub mod resample;
pub mod sound;
pub mod transcode;
pub mod wav;
