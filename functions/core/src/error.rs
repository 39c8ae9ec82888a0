//! The one table of registry errors: each code, its HTTP status and the distribution-spec JSON envelope.

use serde_json::{Value, json};
use std::fmt;

/// Error codes of the distribution spec, plus the few MetaHub needs of its own (`UNAVAILABLE`, `INTERNAL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    BlobUnknown,
    DigestInvalid,
    ManifestUnknown,
    ManifestInvalid,
    NameInvalid,
    NameUnknown,
    SizeInvalid,
    /// A tag list's `n` that is not a number.
    PaginationNumberInvalid,
    Unauthorized,
    Denied,
    Unsupported,
    /// A path MetaHub has no route for.
    NotFound,
    /// A request MetaHub's own API refuses as malformed (admin bodies, query parameters, short passwords).
    Invalid,
    TooManyRequests,
    /// A request body or header larger than MetaHub accepts.
    TooLarge,
    /// A dependency (upstream registry, store) failed or timed out.
    Unavailable,
    /// The upstream answered with something that is not a registry answer.
    BadGateway,
    Internal,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 18] = [
        ErrorCode::BlobUnknown,
        ErrorCode::DigestInvalid,
        ErrorCode::ManifestUnknown,
        ErrorCode::ManifestInvalid,
        ErrorCode::NameInvalid,
        ErrorCode::NameUnknown,
        ErrorCode::SizeInvalid,
        ErrorCode::PaginationNumberInvalid,
        ErrorCode::Unauthorized,
        ErrorCode::Denied,
        ErrorCode::Unsupported,
        ErrorCode::NotFound,
        ErrorCode::Invalid,
        ErrorCode::TooManyRequests,
        ErrorCode::TooLarge,
        ErrorCode::Unavailable,
        ErrorCode::BadGateway,
        ErrorCode::Internal,
    ];

    /// The code a registry error JSON names, when it is one of ours.
    pub fn from_wire(wire: &str) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|c| c.as_str() == wire)
    }

    /// The table: wire code and HTTP status, in one place.
    pub const fn spec(self) -> (&'static str, u16) {
        match self {
            ErrorCode::BlobUnknown => ("BLOB_UNKNOWN", 404),
            ErrorCode::DigestInvalid => ("DIGEST_INVALID", 400),
            ErrorCode::ManifestUnknown => ("MANIFEST_UNKNOWN", 404),
            ErrorCode::ManifestInvalid => ("MANIFEST_INVALID", 400),
            ErrorCode::NameInvalid => ("NAME_INVALID", 400),
            ErrorCode::NameUnknown => ("NAME_UNKNOWN", 404),
            ErrorCode::SizeInvalid => ("SIZE_INVALID", 400),
            ErrorCode::PaginationNumberInvalid => ("PAGINATION_NUMBER_INVALID", 400),
            ErrorCode::Unauthorized => ("UNAUTHORIZED", 401),
            ErrorCode::Denied => ("DENIED", 403),
            ErrorCode::Unsupported => ("UNSUPPORTED", 405),
            ErrorCode::NotFound => ("NOT_FOUND", 404),
            ErrorCode::Invalid => ("INVALID", 400),
            ErrorCode::TooManyRequests => ("TOOMANYREQUESTS", 429),
            ErrorCode::TooLarge => ("TOO_LARGE", 413),
            ErrorCode::Unavailable => ("UNAVAILABLE", 503),
            ErrorCode::BadGateway => ("UPSTREAM_INVALID", 502),
            ErrorCode::Internal => ("INTERNAL", 500),
        }
    }

    pub const fn as_str(self) -> &'static str {
        self.spec().0
    }

    pub const fn status(self) -> u16 {
        self.spec().1
    }
}

/// A registry error: what every failing request answers with, and what every port returns.
#[derive(Debug, Clone, PartialEq)]
pub struct Error {
    pub code: ErrorCode,
    pub message: String,
    pub detail: Option<Value>,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Error { code, message: message.into(), detail: None }
    }

    pub fn with_detail(mut self, detail: Value) -> Self {
        self.detail = Some(detail);
        self
    }

    pub fn status(&self) -> u16 {
        self.code.status()
    }

    /// The distribution-spec envelope `{"errors":[{"code","message","detail"}]}`.
    pub fn to_json(&self) -> Value {
        json!({"errors": [{
            "code": self.code.as_str(),
            "message": self.message,
            "detail": self.detail.clone().unwrap_or(Value::Null),
        }]})
    }

    pub fn name_invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NameInvalid, message)
    }
    pub fn manifest_unknown(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::ManifestUnknown, message)
    }
    pub fn manifest_invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::ManifestInvalid, message)
    }
    /// A malformed request to MetaHub's own API (not a manifest: those are `MANIFEST_INVALID`).
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Invalid, message)
    }
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unauthorized, message)
    }
    pub fn denied(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Denied, message)
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unavailable, message)
    }
    pub fn bad_gateway(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadGateway, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}

impl std::error::Error for Error {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_has_code_message_detail() {
        let e = Error::manifest_unknown("no such tag").with_detail(json!({"tag": "x"}));
        assert_eq!(e.status(), 404);
        assert_eq!(
            e.to_json(),
            json!({"errors":[{"code":"MANIFEST_UNKNOWN","message":"no such tag","detail":{"tag":"x"}}]})
        );
    }
}
