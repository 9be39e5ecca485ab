//! [`ReconcileError`]: why one reconcile failed, by the step that failed.
//!
//! Contract: every variant names the call that failed; [`ReconcileError::transient`]
//! tells the error policy whether a quick retry may help (API or gateway unreachable,
//! a conflict) or whether the same inputs will fail again until something changes
//! (invalid request), which is retried on a slower backoff.

use sf_database_client::ClientError;
use tonic::Code;

/// Why a reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// A call to sf-api failed.
    #[error("sf-api {call}: {source}")]
    Api {
        /// What was being done, e.g. `patch Instance demo/web-1 status`.
        call: String,
        /// The kube error.
        #[source]
        source: kube::Error,
    },
    /// A call to sf-database failed.
    #[error("sf-database {call}: {source}")]
    Gateway {
        /// What was being done, e.g. `CreateOperations`.
        call: String,
        /// The client error.
        #[source]
        source: ClientError,
    },
    /// Something the plan needs does not exist (yet).
    #[error("{0}")]
    Missing(String),
    /// An object could not be encoded or decoded.
    #[error("encoding {what}: {source}")]
    Encode {
        /// What.
        what: String,
        /// The serde error.
        #[source]
        source: serde_json::Error,
    },
}

impl ReconcileError {
    /// An API error for `call`.
    pub fn api(call: impl Into<String>) -> impl FnOnce(kube::Error) -> Self {
        let call = call.into();
        move |source| Self::Api { call, source }
    }

    /// A gateway error for `call`.
    pub fn gateway(call: impl Into<String>) -> impl FnOnce(ClientError) -> Self {
        let call = call.into();
        move |source| Self::Gateway { call, source }
    }

    /// Whether a quick retry may help.
    pub fn transient(&self) -> bool {
        match self {
            Self::Api { source, .. } => match source {
                kube::Error::Api(status) => status.code >= 500 || status.code == 409,
                _ => true,
            },
            Self::Gateway { source, .. } => !matches!(
                source.code(),
                Some(Code::InvalidArgument | Code::FailedPrecondition | Code::NotFound)
            ),
            Self::Missing(_) => true,
            Self::Encode { .. } => false,
        }
    }
}

/// Whether `e` is an API 404.
pub fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.is_not_found())
}
