//! The one error type of the REST API: a status, a stable machine-readable code and a human
//! message, as `{"error": {"code": "...", "message": "..."}}`. Internal failures are logged and
//! reported without their details.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

/// The JSON body of every error response.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// Code and message of an error, in the shape OpenAI's API uses too (so its clients show
/// the message of an error from the OpenAI-compatible routes).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code, e.g. `not_found`, `insufficient_credits`.
    pub code: String,
    /// Human-readable explanation.
    pub message: String,
    /// The class of error, as OpenAI names them: `invalid_request_error`,
    /// `authentication_error`, `permission_error`, `not_found_error`, `insufficient_quota`,
    /// `server_error`.
    #[serde(rename = "type", default)]
    pub kind: String,
    /// The request field at fault, when one is.
    #[serde(default)]
    pub param: Option<String>,
}

/// An API error.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    param: Option<&'static str>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            param: None,
        }
    }

    /// The same error, naming the request field at fault.
    pub fn with_param(mut self, param: &'static str) -> Self {
        self.param = Some(param);
        self
    }

    /// OpenAI's name for this error's class.
    fn kind(&self) -> &'static str {
        match self.status.as_u16() {
            401 => "authentication_error",
            402 => "insufficient_quota",
            403 => "permission_error",
            404 => "not_found_error",
            429 => "rate_limit_error",
            500.. => "server_error",
            _ => "invalid_request_error",
        }
    }

    /// 400: the request is malformed.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// 401: no valid credentials.
    pub fn unauthenticated() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "a valid bearer token is required",
        )
    }

    /// 401 with a specific code: credentials were presented but do not verify.
    pub fn new_unauthenticated(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, code, message)
    }

    /// 408: the request took longer than the control plane's `request_timeout`.
    pub fn request_deadline() -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            "the request took longer than the control plane allows (request_timeout)",
        )
    }

    /// 403: authenticated but not allowed.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// 403 with a specific code.
    pub fn forbidden_with(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, code, message)
    }

    /// 404: no such thing (or not visible to the caller).
    pub fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} not found"),
        )
    }

    /// 404 with a specific code.
    pub fn not_found_with(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }

    /// 404 for a path no route serves (distinct from a missing resource).
    pub fn no_route() -> Self {
        Self::new(StatusCode::NOT_FOUND, "no_route", "no such API route")
    }

    /// 409: the request conflicts with the current state.
    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, message)
    }

    /// 402: not enough credits.
    pub fn insufficient_credits(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::PAYMENT_REQUIRED,
            "insufficient_credits",
            message,
        )
    }

    /// 410: the thing existed but is gone (expired or used invite, expired challenge).
    pub fn gone(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::GONE, code, message)
    }

    /// 422: well-formed but invalid content (a component that is not a Mesh workload...).
    pub fn unprocessable(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
    }

    /// 503: nothing can serve the request right now.
    pub fn unavailable(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
    }

    /// 502: a device answered the gateway with something it must not (streamed text that is
    /// not its signed answer).
    pub fn bad_gateway(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_GATEWAY, "bad_device_answer", message)
    }

    /// The error as its body says it (`{"error": {code, message, type, param}}`), for an
    /// error that must travel inside an event stream.
    pub fn openai_body(&self) -> serde_json::Value {
        serde_json::to_value(self.body()).unwrap_or_default()
    }

    fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                code: self.code.to_string(),
                kind: self.kind().to_string(),
                message: self.message.clone(),
                param: self.param.map(str::to_string),
            },
        }
    }

    /// 500: something broke; the details go to the log, not the client.
    pub fn internal(error: impl std::fmt::Display) -> Self {
        tracing::error!("internal error: {error}");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal server error",
        )
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The machine-readable code.
    pub fn code(&self) -> &'static str {
        self.code
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.code,
            self.message
        )
    }
}

impl std::error::Error for ApiError {}

impl From<crate::domain::DomainError> for ApiError {
    fn from(error: crate::domain::DomainError) -> Self {
        use crate::domain::{DomainError, Refusal};
        match error {
            DomainError::Refused {
                kind,
                code,
                message,
            } => {
                let status = match kind {
                    Refusal::BadRequest => StatusCode::BAD_REQUEST,
                    Refusal::Unauthenticated => StatusCode::UNAUTHORIZED,
                    Refusal::Forbidden => StatusCode::FORBIDDEN,
                    Refusal::NotFound => StatusCode::NOT_FOUND,
                    Refusal::Conflict => StatusCode::CONFLICT,
                    Refusal::InsufficientCredits => StatusCode::PAYMENT_REQUIRED,
                    Refusal::Gone => StatusCode::GONE,
                    Refusal::Unprocessable => StatusCode::UNPROCESSABLE_ENTITY,
                    Refusal::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
                };
                ApiError::new(status, code, message)
            }
            DomainError::Store(e) => ApiError::internal(e),
            DomainError::Internal(e) => ApiError::internal(e),
        }
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(error: crate::store::StoreError) -> Self {
        ApiError::internal(error)
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(error: sqlx::Error) -> Self {
        ApiError::internal(format!("database: {error}"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body())).into_response()
    }
}

/// Result of a handler.
pub type ApiResult<T> = Result<T, ApiError>;

/// Whether `error` (or what caused it) is the body timeout of the listener running out.
pub(crate) fn body_timed_out(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if e.is::<tower_http::timeout::TimeoutError>() {
            return true;
        }
        cause = e.source();
    }
    false
}

/// The 408 of a client that did not send its body in time.
pub(crate) fn body_timeout() -> ApiError {
    ApiError::new(
        StatusCode::REQUEST_TIMEOUT,
        "request_timeout",
        "the request body did not arrive in time",
    )
}

impl From<axum::extract::rejection::JsonRejection> for ApiError {
    fn from(rejection: axum::extract::rejection::JsonRejection) -> Self {
        if body_timed_out(&rejection) {
            return body_timeout();
        }
        let status = rejection.status();
        let code = match status {
            StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
            _ => "bad_request",
        };
        ApiError::new(status, code, rejection.body_text())
    }
}

impl From<axum::extract::rejection::BytesRejection> for ApiError {
    fn from(rejection: axum::extract::rejection::BytesRejection) -> Self {
        if body_timed_out(&rejection) {
            return body_timeout();
        }
        let status = rejection.status();
        let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
            "payload_too_large"
        } else {
            "bad_request"
        };
        ApiError::new(status, code, rejection.body_text())
    }
}

impl From<axum::extract::rejection::QueryRejection> for ApiError {
    fn from(rejection: axum::extract::rejection::QueryRejection) -> Self {
        ApiError::bad_request(rejection.body_text())
    }
}

/// `axum::Json` whose rejections are [`ApiError`]s (JSON bodies with stable codes).
#[derive(Debug, Clone, Copy, Default, axum::extract::FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct ApiJson<T>(pub T);

/// `axum::body::Bytes` whose rejections are [`ApiError`]s.
#[derive(Debug, Clone)]
pub struct ApiBytes(pub axum::body::Bytes);

impl<S: Send + Sync> axum::extract::FromRequest<S> for ApiBytes {
    type Rejection = ApiError;

    async fn from_request(
        request: axum::extract::Request,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        axum::body::Bytes::from_request(request, state)
            .await
            .map(ApiBytes)
            .map_err(ApiError::from)
    }
}

/// `axum::extract::Query` whose rejections are [`ApiError`]s.
#[derive(Debug, Clone, Copy, Default, axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct ApiQuery<T>(pub T);

/// OpenAPI response lists shared by the routes (`responses((status = 200, ...), Managing)`),
/// so each status is described once.
pub mod responses {
    use super::ErrorBody;
    use utoipa::IntoResponses;

    /// A call on a network that needs a role there: no valid token, a role too low (or a
    /// device, or one that waits for approval), or not a member (the network is then absent,
    /// like one that does not exist).
    #[derive(IntoResponses)]
    pub enum Managing {
        /// 401.
        #[response(status = 401, description = "No valid bearer token")]
        Unauthenticated(ErrorBody),
        /// 403.
        #[response(
            status = 403,
            description = "The caller's role (or kind) may not do this"
        )]
        Forbidden(ErrorBody),
        /// 404.
        #[response(
            status = 404,
            description = "No such resource, or not a member of its network"
        )]
        NotFound(ErrorBody),
    }

    /// A read of a network's resources: no valid token, a device that waits for approval,
    /// or absent (not a member).
    #[derive(IntoResponses)]
    pub enum Reading {
        /// 401.
        #[response(status = 401, description = "No valid bearer token")]
        Unauthenticated(ErrorBody),
        /// 403.
        #[response(
            status = 403,
            description = "A device that waits for an admin's approval"
        )]
        Pending(ErrorBody),
        /// 404.
        #[response(
            status = 404,
            description = "No such resource, or not a member of its network"
        )]
        NotFound(ErrorBody),
    }

    /// 400: the request is malformed.
    #[derive(IntoResponses)]
    #[response(status = 400, description = "The request is malformed")]
    pub struct BadRequest(pub ErrorBody);

    /// 401: no valid token.
    #[derive(IntoResponses)]
    #[response(status = 401, description = "No valid bearer token")]
    pub struct Unauthenticated(pub ErrorBody);

    /// 402: not enough credits.
    #[derive(IntoResponses)]
    #[response(status = 402, description = "Not enough credits")]
    pub struct PaymentRequired(pub ErrorBody);

    /// 403: not allowed.
    #[derive(IntoResponses)]
    #[response(status = 403, description = "The caller may not do this")]
    pub struct Forbidden(pub ErrorBody);

    /// 404: absent.
    #[derive(IntoResponses)]
    #[response(status = 404, description = "No such resource")]
    pub struct NotFound(pub ErrorBody);

    /// 409: conflicts with the current state.
    #[derive(IntoResponses)]
    #[response(status = 409, description = "Conflicts with the current state")]
    pub struct Conflict(pub ErrorBody);

    /// 410: expired or used up.
    #[derive(IntoResponses)]
    #[response(status = 410, description = "Expired or used up")]
    pub struct Gone(pub ErrorBody);

    /// 413: too large.
    #[derive(IntoResponses)]
    #[response(status = 413, description = "The body is too large")]
    pub struct TooLarge(pub ErrorBody);

    /// 422: well-formed but not acceptable.
    #[derive(IntoResponses)]
    #[response(status = 422, description = "Well-formed but not acceptable")]
    pub struct Unprocessable(pub ErrorBody);

    /// 503: no device can take the work now.
    #[derive(IntoResponses)]
    #[response(status = 503, description = "Unavailable right now")]
    pub struct Unavailable(pub ErrorBody);
}
