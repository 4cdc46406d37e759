//! The REST error: `{"error": "<kind>", "message": "<human text>"}` with the status codes of
//! DESIGN.md. Messages name the field or id at fault and never carry a password.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the request is malformed; the message names the field.
    #[error("{0}")]
    BadRequest(String),
    /// 401: missing or wrong API key.
    #[error("{0}")]
    Unauthorized(String),
    /// 404: unknown call, stream or session.
    #[error("{0}")]
    NotFound(String),
    /// 409: the id or stream exists already.
    #[error("{0}")]
    Conflict(String),
    /// 502: the SIP peer (or another peer) failed.
    #[error("{0}")]
    Upstream(String),
    /// 503: out of capacity (calls, RTP ports).
    #[error("{0}")]
    Unavailable(String),
    /// 501: a variant of a method that is not built yet (the message says which).
    #[error("{0}")]
    NotImplemented(String),
    /// 500: a bug or an internal failure.
    #[error("{0}")]
    Internal(String),
}

/// The JSON body of every error.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// bad_request, unauthorized, not_found, conflict, upstream, unavailable, not_implemented,
    /// internal
    pub error: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn kind(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "bad_request",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::NotFound(_) => "not_found",
            ApiError::Conflict(_) => "conflict",
            ApiError::Upstream(_) => "upstream",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::NotImplemented(_) => "not_implemented",
            ApiError::Internal(_) => "internal",
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Upstream(_) => StatusCode::BAD_GATEWAY,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        HttpResponse::build(self.status_code()).json(ErrorBody {
            error: self.kind(),
            message: self.to_string(),
        })
    }
}
