//! Every HTTP error, produced in one place as `{"message": ..., "code": ...}` with its status.

use serde::Serialize;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::Reply;

use crate::model::Invalid;
use crate::node::{EntityError, RegisterError};

/// An error the API answers with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// For 405: the methods the route does allow.
    pub allow: Option<&'static str>,
    /// For 429 and 503: when to try again, in seconds.
    pub retry_after: Option<u64>,
}

#[derive(Serialize)]
struct Body<'a> {
    message: &'a str,
    code: &'a str,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            allow: None,
            retry_after: None,
        }
    }
    /// 401: no valid credential (answered with `WWW-Authenticate: Bearer`).
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", message)
    }
    /// 403: a valid credential that does not allow this.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "FORBIDDEN", message)
    }
    pub fn request_timeout(limit: std::time::Duration) -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            "REQUEST_TIMEOUT",
            format!(
                "the request body did not arrive within {} (api.body_read_timeout)",
                humantime::format_duration(limit)
            ),
        )
    }
    /// 429 with `Retry-After`.
    pub fn too_many(code: &'static str, message: impl Into<String>, retry_after: u64) -> Self {
        ApiError {
            retry_after: Some(retry_after),
            ..Self::new(StatusCode::TOO_MANY_REQUESTS, code, message)
        }
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "INVALID", message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "NOT_FOUND", message)
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "CONFLICT", message)
    }
    /// A switch to a target with no live servers, refused unless forced.
    pub fn no_live_servers(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "NO_LIVE_SERVERS", message)
    }

    pub fn method_not_allowed(allow: &'static str) -> Self {
        ApiError {
            allow: Some(allow),
            ..Self::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "METHOD_NOT_ALLOWED",
                format!("Method not allowed; this route allows {allow}"),
            )
        }
    }
    pub fn too_large(limit: u64) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "PAYLOAD_TOO_LARGE",
            format!("Request body is larger than {limit} bytes"),
        )
    }
    pub fn unsupported_media_type() -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UNSUPPORTED_MEDIA_TYPE",
            "Request body must be JSON, declared with Content-Type: application/json",
        )
    }
    /// 503 from `/health`: a task of the node died, and the node is stopping.
    pub fn failed(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "FAILED", message)
    }
    pub fn not_ready(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "NOT_READY", message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL", message)
    }
}

impl From<Invalid> for ApiError {
    fn from(e: Invalid) -> Self {
        ApiError::invalid(e.to_string())
    }
}

impl From<EntityError> for ApiError {
    fn from(e: EntityError) -> Self {
        match e {
            EntityError::NotFound(kind) => ApiError::not_found(format!("{kind} not found")),
            EntityError::Conflict(kind) => ApiError::conflict(format!("{kind} already exists")),
            EntityError::Invalid(i) => i.into(),
        }
    }
}

impl From<RegisterError> for ApiError {
    fn from(e: RegisterError) -> Self {
        match e {
            RegisterError::Invalid(i) => i.into(),
            limit @ RegisterError::Limit(..) => {
                ApiError::too_many("TOO_MANY_REGISTRATIONS", limit.to_string(), 5)
            }
        }
    }
}

impl Reply for ApiError {
    fn into_response(self) -> Response {
        let body = Body {
            message: &self.message,
            code: self.code,
        };
        let mut resp =
            warp::reply::with_status(warp::reply::json(&body), self.status).into_response();
        if let Some(allow) = self.allow {
            resp.headers_mut()
                .insert("allow", warp::http::HeaderValue::from_static(allow));
        }
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert("retry-after", warp::http::HeaderValue::from(secs));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                "www-authenticate",
                warp::http::HeaderValue::from_static("Bearer realm=\"bender\""),
            );
        }
        resp
    }
}

/// Maps warp's own rejections (the few that can reach us) to the same error shape. The filter
/// takes every method and path, so warp never answers 405 itself: `routes::route` does, with
/// the route's own `Allow`.
pub async fn recover(rejection: warp::Rejection) -> Result<Response, std::convert::Infallible> {
    let err = if rejection.is_not_found() {
        ApiError::not_found("Not found")
    } else if rejection.find::<warp::ext::MissingExtension>().is_some() {
        // Only requests that did not come through our own server lack the connection info.
        ApiError::internal("Internal error: request without connection info")
    } else if rejection.find::<warp::reject::PayloadTooLarge>().is_some() {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "PAYLOAD_TOO_LARGE",
            "Request body too large",
        )
    } else {
        tracing::warn!(?rejection, "unhandled rejection");
        ApiError::internal("Internal error")
    };
    Ok(err.into_response())
}
