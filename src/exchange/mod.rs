//! Media exchange (issue 11, first part): audio put into a call leg from elsewhere, WCS's
//! `/call/inject_sound` (a WAV, MP3 or Ogg Opus file from `sound_dir` or a URL) and
//! `/call/inject_stream/startup|terminate` (another stream of the registry: another call, a
//! source). Each injection is one more source of the leg's player (`call/play.rs`), so it
//! mixes with whatever else plays there (a voice agent, another injection). Above the call
//! layer: it asks the call manager (`call_media`, `play_into`) and the registry; the call
//! layer does not know it.

pub mod inject;
pub mod media;
pub mod source;

pub use inject::{InjectManager, InjectionInfo};
pub use media::{ExchangeInfo, ExchangeManager};
