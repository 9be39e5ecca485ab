//! API errors, rendered as Kubernetes `Status` objects.
//!
//! Contract: every failed request is answered with one single-line JSON `Status`
//! (`apiVersion: v1`, `kind: Status`, `status: Failure`, `reason`, `code`, `message`,
//! `details`) and the HTTP code of [`ApiError::code`], exactly as apimachinery's
//! `k8s.io/apimachinery/pkg/api/errors` builds them, so that kube-rs (`is_not_found`,
//! `is_conflict`, ...) and kubectl understand them:
//! - NotFound 404, AlreadyExists 409 and Conflict 409 name the object with
//!   `details.kind` = the resource plural (`instances`) and `details.group`;
//! - Invalid 422 names the object with `details.kind` = the Kind (`Instance`) and lists
//!   every field problem in `details.causes[]` (`reason`, `message`, `field`);
//! - BadRequest 400, MethodNotAllowed 405, RequestEntityTooLarge 413,
//!   UnsupportedMediaType 415, ServiceUnavailable 503 (sf-database unreachable),
//!   InternalError 500, Unauthorized 401 (no valid token), Forbidden 403 (a tenant
//!   writing what only the system writes), and Expired 410 (used only inside watch streams as an ERROR
//!   event, never as an HTTP status of a watch).
//!
//! Gateway (gRPC) failures are mapped by [`ApiError::from_gateway`] following the code
//! table in `gateway.proto`.

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Status, StatusCause, StatusDetails};
use sf_database_client::ClientError;
use tonic::Code;

/// The object a request is about, for error details.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Subject {
    /// API group (`shakenfist.io`).
    pub group: String,
    /// Resource plural (`instances`).
    pub plural: String,
    /// Kind (`Instance`).
    pub kind: String,
    /// Object name (may be empty when unknown).
    pub name: String,
}

impl Subject {
    /// The Namespace `name` (a create into a namespace that does not exist names it).
    pub fn namespace(name: &str) -> Self {
        Self {
            group: sf_schema::GROUP.into(),
            plural: "namespaces".into(),
            kind: "Namespace".into(),
            name: name.into(),
        }
    }

    /// `instances.shakenfist.io`.
    fn qualified_resource(&self) -> String {
        format!("{}.{}", self.plural, self.group)
    }

    /// `Instance.shakenfist.io`.
    fn qualified_kind(&self) -> String {
        format!("{}.{}", self.kind, self.group)
    }
}

/// One field problem of an Invalid error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cause {
    /// Cause type, e.g. `FieldValueInvalid`.
    pub reason: String,
    /// Human-readable message.
    pub message: String,
    /// JSON path of the field, e.g. `spec.disks[0].bus`.
    pub field: String,
}

impl From<sf_schema::FieldError> for Cause {
    fn from(e: sf_schema::FieldError) -> Self {
        Self {
            reason: e.reason.cause_type().to_string(),
            message: e.message,
            field: e.field,
        }
    }
}

/// Everything a request can fail with.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    /// The named object does not exist.
    #[error("{} \"{}\" not found", .0.qualified_resource(), .0.name)]
    NotFound(Subject),
    /// No such path or resource type.
    #[error("the server could not find the requested resource")]
    UnknownPath,
    /// Create of an existing name.
    #[error("{} \"{}\" already exists", .0.qualified_resource(), .0.name)]
    AlreadyExists(Subject),
    /// Compare-and-swap lost (stale resourceVersion or uid precondition).
    #[error("Operation cannot be fulfilled on {} \"{}\": {message}", .subject.qualified_resource(), .subject.name)]
    Conflict {
        /// The object.
        subject: Subject,
        /// Why.
        message: String,
    },
    /// The object fails validation; nothing was stored.
    #[error("{} \"{}\" is invalid: {}", .subject.qualified_kind(), .subject.name, causes_summary(.causes))]
    Invalid {
        /// The object.
        subject: Subject,
        /// Every field problem.
        causes: Vec<Cause>,
    },
    /// A patch could not be applied (e.g. a JSON Patch `test` op failed).
    #[error("the server rejected our request due to an error in our request: {0}")]
    PatchFailed(String),
    /// The request is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// The verb is not supported on this path.
    #[error("the server does not allow this method on the requested resource")]
    MethodNotAllowed,
    /// The body is larger than the limit.
    #[error("the request body is larger than {0} bytes")]
    TooLarge(usize),
    /// The body's content type is not one we read.
    #[error("the body of the request was in an unknown format - accepted media types include: {0}")]
    UnsupportedMediaType(String),
    /// A watch revision older than the retained change log (the message says
    /// `too old resource version: ...`).
    #[error("{0}")]
    Expired(String),
    /// sf-database is unreachable; retry.
    #[error("sf-database is unavailable, retry: {0}")]
    ServiceUnavailable(String),
    /// A bug or a misconfiguration.
    #[error("Internal error occurred: {0}")]
    Internal(String),
    /// No valid token (missing, malformed, expired, or its key was replaced).
    #[error("Unauthorized: {0}")]
    Unauthorized(String),
    /// The caller may not do this (tenants writing status, operations, nodes, ...).
    #[error("{0}")]
    Forbidden(String),
}

fn causes_summary(causes: &[Cause]) -> String {
    match causes {
        [one] => one.message.clone(),
        many => format!(
            "[{}]",
            many.iter()
                .map(|c| c.message.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

impl ApiError {
    /// The HTTP status code.
    pub fn code(&self) -> u16 {
        match self {
            Self::NotFound(_) | Self::UnknownPath => 404,
            Self::AlreadyExists(_) | Self::Conflict { .. } => 409,
            Self::Invalid { .. } | Self::PatchFailed(_) => 422,
            Self::BadRequest(_) => 400,
            Self::MethodNotAllowed => 405,
            Self::TooLarge(_) => 413,
            Self::UnsupportedMediaType(_) => 415,
            Self::Expired(_) => 410,
            Self::ServiceUnavailable(_) => 503,
            Self::Internal(_) => 500,
            Self::Unauthorized(_) => 401,
            Self::Forbidden(_) => 403,
        }
    }

    /// The `Status.reason`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NotFound(_) | Self::UnknownPath => "NotFound",
            Self::AlreadyExists(_) => "AlreadyExists",
            Self::Conflict { .. } => "Conflict",
            Self::Invalid { .. } | Self::PatchFailed(_) => "Invalid",
            Self::BadRequest(_) => "BadRequest",
            Self::MethodNotAllowed => "MethodNotAllowed",
            Self::TooLarge(_) => "RequestEntityTooLarge",
            Self::UnsupportedMediaType(_) => "UnsupportedMediaType",
            Self::Expired(_) => "Expired",
            Self::ServiceUnavailable(_) => "ServiceUnavailable",
            Self::Internal(_) => "InternalError",
            Self::Unauthorized(_) => "Unauthorized",
            Self::Forbidden(_) => "Forbidden",
        }
    }

    /// The Kubernetes `Status` object.
    pub fn to_status(&self) -> Status {
        let named = |s: &Subject, kind: &str| StatusDetails {
            name: (!s.name.is_empty()).then(|| s.name.clone()),
            group: Some(s.group.clone()),
            kind: Some(kind.to_string()),
            ..StatusDetails::default()
        };
        let details = match self {
            Self::NotFound(s) | Self::AlreadyExists(s) | Self::Conflict { subject: s, .. } => {
                Some(named(s, &s.plural))
            }
            Self::Invalid { subject, causes } => Some(StatusDetails {
                causes: Some(
                    causes
                        .iter()
                        .map(|c| StatusCause {
                            reason: Some(c.reason.clone()),
                            message: Some(c.message.clone()),
                            field: Some(c.field.clone()),
                        })
                        .collect(),
                ),
                ..named(subject, &subject.kind)
            }),
            Self::PatchFailed(message) => Some(StatusDetails {
                causes: Some(vec![StatusCause {
                    reason: Some("FieldValueInvalid".into()),
                    message: Some(message.clone()),
                    field: Some("patch".into()),
                }]),
                ..StatusDetails::default()
            }),
            Self::ServiceUnavailable(_) => Some(StatusDetails {
                retry_after_seconds: Some(1),
                ..StatusDetails::default()
            }),
            _ => None,
        };
        failure_status(self.code(), self.reason(), self.to_string(), details)
    }

    /// Maps a gateway failure of a create of `subject` in `namespace`: the store answers
    /// a create NotFound only when the namespace does not exist, so that is what the
    /// error names (as apiserver's `namespaces "x" not found`).
    pub fn from_create(
        err: &crate::gateway::GatewayError,
        subject: &Subject,
        namespace: Option<&str>,
    ) -> Self {
        match namespace.filter(|ns| !ns.is_empty()) {
            Some(ns) if err.code() == Some(Code::NotFound) => {
                Self::NotFound(Subject::namespace(ns))
            }
            _ => Self::from_gateway(err, subject),
        }
    }

    /// Maps a gateway failure for a request about `subject`.
    pub fn from_gateway(err: &crate::gateway::GatewayError, subject: &Subject) -> Self {
        use crate::gateway::GatewayError;
        match err {
            GatewayError::Client(ClientError::DatabaseUnavailable { .. }) => {
                Self::ServiceUnavailable(err.to_string())
            }
            GatewayError::Client(ClientError::Call { status, .. }) => match status.code() {
                Code::NotFound => Self::NotFound(subject.clone()),
                Code::AlreadyExists => Self::AlreadyExists(subject.clone()),
                Code::Aborted | Code::FailedPrecondition => Self::Conflict {
                    subject: subject.clone(),
                    message: conflict_message(status.message()),
                },
                Code::InvalidArgument => Self::BadRequest(status.message().to_string()),
                Code::OutOfRange => Self::Expired(status.message().to_string()),
                Code::Unavailable | Code::DeadlineExceeded | Code::ResourceExhausted => {
                    Self::ServiceUnavailable(status.message().to_string())
                }
                Code::Unauthenticated | Code::PermissionDenied => {
                    tracing::error!(error = %status, "sf-database refused sf-api's credentials: check SHAKENFIST_MARIADB_GATEWAY_SECRET");
                    Self::Internal("sf-api cannot authenticate to sf-database".into())
                }
                _ => Self::Internal(status.message().to_string()),
            },
            other => Self::Internal(other.to_string()),
        }
    }
}

/// The gateway's conflict text, without its `<kind> <ns>/<name>:` prefix when present,
/// so that the message reads like apiserver's.
fn conflict_message(message: &str) -> String {
    match message.strip_prefix("Operation cannot be fulfilled on ") {
        Some(rest) => rest
            .split_once(": ")
            .map_or(rest, |(_, why)| why)
            .to_string(),
        None => message.to_string(),
    }
}

/// A `Status` with `status: Failure`.
pub fn failure_status(
    code: u16,
    reason: &str,
    message: String,
    details: Option<StatusDetails>,
) -> Status {
    Status {
        code: Some(i32::from(code)),
        details,
        message: Some(message),
        reason: Some(reason.to_string()),
        status: Some("Failure".to_string()),
        ..Status::default()
    }
}

/// The `Status` a delete answers with once the object is gone.
pub fn success_status(subject: &Subject, uid: Option<String>) -> Status {
    Status {
        details: Some(StatusDetails {
            name: Some(subject.name.clone()),
            group: Some(subject.group.clone()),
            kind: Some(subject.plural.clone()),
            uid,
            ..StatusDetails::default()
        }),
        status: Some("Success".to_string()),
        ..Status::default()
    }
}

/// A JSON response with `code`; the body is one line.
pub fn json_response<T: serde::Serialize>(code: StatusCode, body: &T) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => (
            code,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            bytes,
        )
            .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot serialise the response: {e}"),
        )
            .into_response(),
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.code()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if code.is_server_error() {
            tracing::warn!(code = code.as_u16(), error = %self, "request failed");
        } else {
            tracing::debug!(code = code.as_u16(), error = %self, "request refused");
        }
        let mut response = json_response(code, &self.to_status());
        if matches!(self, Self::ServiceUnavailable(_)) {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subject() -> Subject {
        Subject {
            group: "shakenfist.io".into(),
            plural: "instances".into(),
            kind: "Instance".into(),
            name: "web-1".into(),
        }
    }

    #[test]
    fn not_found_names_the_resource_plural() {
        let status = serde_json::to_value(ApiError::NotFound(subject()).to_status()).unwrap();
        assert_eq!(status["kind"], "Status");
        assert_eq!(status["apiVersion"], "v1");
        assert_eq!(status["status"], "Failure");
        assert_eq!(status["reason"], "NotFound");
        assert_eq!(status["code"], 404);
        assert_eq!(
            status["message"],
            "instances.shakenfist.io \"web-1\" not found"
        );
        assert_eq!(status["details"]["kind"], "instances");
        assert_eq!(status["details"]["group"], "shakenfist.io");
        assert_eq!(status["details"]["name"], "web-1");
    }

    #[test]
    fn invalid_names_the_kind_and_lists_causes() {
        let err = ApiError::Invalid {
            subject: subject(),
            causes: vec![
                Cause {
                    reason: "FieldValueInvalid".into(),
                    message: "a".into(),
                    field: "spec.cpus".into(),
                },
                Cause {
                    reason: "FieldValueRequired".into(),
                    message: "b".into(),
                    field: "spec.memory".into(),
                },
            ],
        };
        assert_eq!(err.code(), 422);
        let status = serde_json::to_value(err.to_status()).unwrap();
        assert_eq!(status["reason"], "Invalid");
        assert_eq!(status["details"]["kind"], "Instance");
        assert_eq!(status["details"]["causes"][1]["field"], "spec.memory");
        assert_eq!(
            status["message"],
            "Instance.shakenfist.io \"web-1\" is invalid: [a, b]"
        );
    }

    #[test]
    fn conflict_reads_like_apiserver() {
        let err = ApiError::Conflict {
            subject: subject(),
            message: conflict_message(
                "Operation cannot be fulfilled on Instance demo/web-1: the object has been modified; please apply your changes",
            ),
        };
        assert_eq!(
            err.to_string(),
            "Operation cannot be fulfilled on instances.shakenfist.io \"web-1\": the object has been modified; please apply your changes"
        );
        assert_eq!(err.reason(), "Conflict");
    }

    #[test]
    fn bodies_are_single_line() {
        let response = ApiError::BadRequest("x\ny".into()).into_response();
        assert_eq!(response.status(), 400);
        let status =
            serde_json::to_string(&ApiError::BadRequest("x\ny".into()).to_status()).unwrap();
        assert!(!status.contains('\n'));
    }
}
