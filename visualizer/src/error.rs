//! The one error type of the handlers.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// Why a request failed. The response says what the user can act on and
/// never shows internals (addresses, OS errors): those go to the log.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The collector could not be reached.
    #[error("the collector's query API cannot be reached")]
    Unreachable,
    /// The collector did not answer in time.
    #[error("the collector's query API did not answer in time")]
    Timeout,
    /// The path cannot be forwarded (not a valid URI).
    #[error("invalid request path")]
    BadPath,
    /// No such asset.
    #[error("not found")]
    NotFound,
}

impl AppError {
    fn status(&self) -> StatusCode {
        match self {
            AppError::Unreachable => StatusCode::BAD_GATEWAY,
            AppError::Timeout => StatusCode::GATEWAY_TIMEOUT,
            AppError::BadPath => StatusCode::BAD_REQUEST,
            AppError::NotFound => StatusCode::NOT_FOUND,
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        crate::envelope_error(self.status(), &self.to_string())
    }
}
