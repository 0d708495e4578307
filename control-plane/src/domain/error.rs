//! The domain's one error type: why an operation was refused, or that something below it
//! failed. It knows nothing of HTTP; `http::error` maps each [`Refusal`] to a status.

use crate::store::StoreError;

/// Why the domain refused an operation (a client's mistake or the state it asks about).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The request is malformed.
    BadRequest,
    /// Credentials were presented but do not verify.
    Unauthenticated,
    /// The caller may not do this.
    Forbidden,
    /// No such thing, or not visible to the caller.
    NotFound,
    /// The request conflicts with the current state.
    Conflict,
    /// Not enough credits.
    InsufficientCredits,
    /// The thing existed but is gone (a used or expired invite or challenge).
    Gone,
    /// Well-formed but invalid content (a component that is not a Mesh workload).
    Unprocessable,
    /// Nothing can serve the request right now.
    Unavailable,
}

/// An operation of the domain failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DomainError {
    /// Refused, with a stable machine-readable code and a message for the caller.
    #[error("{message}")]
    Refused {
        /// What kind of refusal.
        kind: Refusal,
        /// Stable code, e.g. `not_found`, `insufficient_credits`.
        code: &'static str,
        /// What the caller is told.
        message: String,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A broken invariant or a failure below the store; the caller learns no details.
    #[error("{0}")]
    Internal(String),
}

/// The result of a domain operation.
pub type DomainResult<T> = Result<T, DomainError>;

impl DomainError {
    fn refused(kind: Refusal, code: &'static str, message: impl Into<String>) -> Self {
        DomainError::Refused {
            kind,
            code,
            message: message.into(),
        }
    }

    /// The request is malformed.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::refused(Refusal::BadRequest, "bad_request", message)
    }

    /// Credentials were presented but do not verify.
    pub fn new_unauthenticated(code: &'static str, message: impl Into<String>) -> Self {
        Self::refused(Refusal::Unauthenticated, code, message)
    }

    /// The caller may not do this.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::refused(Refusal::Forbidden, "forbidden", message)
    }

    /// No such `what` (or not visible to the caller).
    pub fn not_found(what: &str) -> Self {
        Self::refused(Refusal::NotFound, "not_found", format!("{what} not found"))
    }

    /// The request conflicts with the current state.
    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::refused(Refusal::Conflict, code, message)
    }

    /// Not enough credits.
    pub fn insufficient_credits(message: impl Into<String>) -> Self {
        Self::refused(
            Refusal::InsufficientCredits,
            "insufficient_credits",
            message,
        )
    }

    /// The thing existed but is gone.
    pub fn gone(code: &'static str, message: impl Into<String>) -> Self {
        Self::refused(Refusal::Gone, code, message)
    }

    /// Well-formed but invalid content.
    pub fn unprocessable(code: &'static str, message: impl Into<String>) -> Self {
        Self::refused(Refusal::Unprocessable, code, message)
    }

    /// Nothing can serve the request right now.
    pub fn unavailable(code: &'static str, message: impl Into<String>) -> Self {
        Self::refused(Refusal::Unavailable, code, message)
    }

    /// A broken invariant.
    pub fn internal(error: impl std::fmt::Display) -> Self {
        DomainError::Internal(error.to_string())
    }

    /// The refusal's code, if it is one.
    pub fn code(&self) -> Option<&'static str> {
        match self {
            DomainError::Refused { code, .. } => Some(code),
            _ => None,
        }
    }
}

impl From<sqlx::Error> for DomainError {
    fn from(error: sqlx::Error) -> Self {
        DomainError::Store(StoreError::Database(error))
    }
}
