//! [`ApiError`]: every failure the API reports, as `{"error": {"code", "message"}}` with its
//! status. Client mistakes are 4xx with a message that says what to fix; 5xx bodies are generic
//! (the cause is logged where it happened, never sent).

use crate::db::DbError;
use crate::model::Invalid;
use axum::Json;
use axum::http::header::RETRY_AFTER;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use std::borrow::Cow;
use tracing::{error, warn};

/// An API failure.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ApiError {
    /// 400: the request is malformed or breaks a validation rule.
    Invalid(Invalid),
    /// 404: no such resource (or route).
    NotFound(&'static str),
    /// 405: the route exists, the method does not.
    MethodNotAllowed,
    /// 409: the resource exists already.
    Conflict(&'static str),
    /// 408: the body did not arrive in time.
    RequestTimeout,
    /// 413: the body is larger than the limit (in bytes).
    PayloadTooLarge(usize),
    /// 415: a body that is not `application/json`.
    UnsupportedMediaType,
    /// 500: a bug or an unexpected database error.
    Internal,
    /// 503: the database is down or too slow.
    Unavailable,
    /// 503: too many requests in flight, or connections open.
    Overloaded,
}

impl ApiError {
    /// A 400 with its code and message.
    pub fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::Invalid(Invalid {
            code,
            message: message.into(),
        })
    }

    /// Classifies a database error, logging what the client will not see.
    pub fn from_db(e: &DbError) -> Self {
        match e {
            DbError::Duplicate => ApiError::Conflict("a product with this id already exists"),
            DbError::UnknownCategory => {
                ApiError::invalid("unknown_category", "categoryId names no existing category")
            }
            e if e.is_unavailable() => {
                warn!(error = %e, source = ?std::error::Error::source(e), "database unavailable");
                ApiError::Unavailable
            }
            e => {
                error!(error = %e, source = ?std::error::Error::source(e), "database error");
                ApiError::Internal
            }
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Invalid(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Unavailable | ApiError::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The Error body's `code`.
    pub fn code(&self) -> &'static str {
        self.code_and_message().0
    }

    fn code_and_message(&self) -> (&'static str, Cow<'_, str>) {
        let (code, message): (_, &str) = match self {
            ApiError::Invalid(i) => (i.code, &i.message),
            ApiError::NotFound(m) => ("not_found", m),
            ApiError::MethodNotAllowed => {
                ("method_not_allowed", "this route does not take that method")
            }
            ApiError::Conflict(m) => ("conflict", m),
            ApiError::RequestTimeout => (
                "request_timeout",
                "the request body did not arrive within the request timeout",
            ),
            ApiError::PayloadTooLarge(limit) => {
                let message = format!("the body is larger than {limit} bytes");
                return ("payload_too_large", Cow::Owned(message));
            }
            ApiError::UnsupportedMediaType => (
                "unsupported_media_type",
                "send the body as JSON with content-type: application/json",
            ),
            ApiError::Internal => ("internal", "internal error"),
            ApiError::Unavailable => (
                "unavailable",
                "the service is temporarily unavailable, try again",
            ),
            ApiError::Overloaded => (
                "overloaded",
                "the service is serving as many requests as it takes, try again shortly",
            ),
        };
        (code, Cow::Borrowed(message))
    }

    /// The Error body, as JSON text.
    pub fn body(&self) -> String {
        let (code, message) = self.code_and_message();
        json!({ "error": { "code": code, "message": message } }).to_string()
    }
}

impl From<DbError> for ApiError {
    fn from(e: DbError) -> Self {
        ApiError::from_db(&e)
    }
}

impl From<Invalid> for ApiError {
    fn from(i: Invalid) -> Self {
        ApiError::Invalid(i)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (code, message) = self.code_and_message();
        let body = Json(json!({ "error": { "code": code, "message": message } }));
        let mut response = (self.status(), body).into_response();
        if self == ApiError::Overloaded {
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (code, message) = self.code_and_message();
        write!(f, "{} {code}: {message}", self.status().as_u16())
    }
}

impl std::error::Error for ApiError {}
