//! The error of a request, whichever front end made it (REST, JSON-RPC, later the CLI): a kind
//! and a message that names the field or id at fault and never carries a password. Neutral:
//! the call, recording, SIPREC and RTMP layers return it without knowing about HTTP; the API
//! maps kinds to statuses (`api/error.rs`).

#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The request is malformed; the message names the field.
    #[error("{0}")]
    BadRequest(String),
    /// Missing or wrong API key.
    #[error("{0}")]
    Unauthorized(String),
    /// A valid key whose scope does not cover this request.
    #[error("{0}")]
    Forbidden(String),
    /// Too many requests of this kind for this key; retry after the given seconds.
    #[error("{0}")]
    TooManyRequests(String, u64),
    /// The request body is larger than allowed.
    #[error("{0}")]
    TooLarge(String),
    /// Unknown call, stream or session.
    #[error("{0}")]
    NotFound(String),
    /// The id or stream exists already, or the object is not in a state for this request.
    #[error("{0}")]
    Conflict(String),
    /// The SIP peer (or another peer) failed.
    #[error("{0}")]
    Upstream(String),
    /// Out of capacity (calls, RTP ports).
    #[error("{0}")]
    Unavailable(String),
    /// A variant of a method that is not built yet (the message says which).
    #[error("{0}")]
    NotImplemented(String),
    /// A bug or an internal failure.
    #[error("{0}")]
    Internal(String),
}

impl RequestError {
    pub fn kind(&self) -> &'static str {
        match self {
            RequestError::BadRequest(_) => "bad_request",
            RequestError::Unauthorized(_) => "unauthorized",
            RequestError::Forbidden(_) => "forbidden",
            RequestError::TooManyRequests(..) => "too_many_requests",
            RequestError::TooLarge(_) => "too_large",
            RequestError::NotFound(_) => "not_found",
            RequestError::Conflict(_) => "conflict",
            RequestError::Upstream(_) => "upstream",
            RequestError::Unavailable(_) => "unavailable",
            RequestError::NotImplemented(_) => "not_implemented",
            RequestError::Internal(_) => "internal",
        }
    }
}
