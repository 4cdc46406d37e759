//! Calls: the API's call model (startup request, call object with legs) and the manager that
//! joins SIP signalling, RTP legs and the stream registry.
mod bridge;
mod core;
mod leg;
pub mod manager;
pub mod mixer;
pub mod model;
pub mod play;
pub mod siprec;
pub mod transfer;
