//! The sf-database client: how every daemon but sf-database reaches the data.
//!
//! Contract:
//! - One [`GatewayClient`] per process, over every host of `MARIADB_GATEWAY_HOSTS`
//!   (comma-separated `host[:port]`, default port 13005; a one-element list is normal).
//!   Calls go round-robin; HTTP/2 keepalives detect dead connections.
//! - A call that fails UNAVAILABLE marks its endpoint down for a short cool-down (dead
//!   endpoints are skipped while any other is up) and is retried on the next endpoint
//!   with exponential backoff, up to [`RetryPolicy::attempts`]; then it fails with
//!   [`ClientError::DatabaseUnavailable`], a clear, retryable error — never a silent
//!   drop.
//! - Every call is retried that way, including writes. That is safe because the
//!   gateway's writes are designed to be repeated: a repeated create answers
//!   AlreadyExists (operation names are deterministic), a repeated CAS answers
//!   Conflict, a repeated Complete answers FAILED_PRECONDITION, a repeated Claim with
//!   the same claim id returns the same rows. Callers treat those as "already done".
//! - Each call carries the shared secret and the current span's W3C trace context.
//! - [`spool`]: the local durable event spool every daemon records events into,
//!   drained to sf-database in the background.

pub mod spool;

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use sf_daemon::HostPort;
use sf_proto::v1::gateway_client::GatewayClient as Stub;
use tonic::metadata::{AsciiMetadataValue, MetadataMap};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};

/// The default gRPC port of sf-database.
pub const DEFAULT_PORT: u16 = 13005;

pub use sf_proto::SECRET_HEADER;

/// A generated client stub with the secret and trace interceptor.
pub type GatewayStub = Stub<InterceptedService<Channel, CallContext>>;

/// Errors of the client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No endpoint answered within the retry budget.
    #[error(
        "DatabaseUnavailable: sf-database did not answer {operation} after {attempts} attempts over {hosts} host(s) (last error: {last})"
    )]
    DatabaseUnavailable {
        /// The call.
        operation: &'static str,
        /// Attempts made.
        attempts: u32,
        /// How many hosts were configured.
        hosts: usize,
        /// The last status.
        last: Status,
    },
    /// The gateway answered with an error (not found, conflict, ...).
    #[error("{operation}: {status}")]
    Call {
        /// The call.
        operation: &'static str,
        /// The status.
        status: Status,
    },
    /// A host entry is not a valid endpoint.
    #[error("invalid sf-database endpoint {host}: {reason}")]
    InvalidEndpoint {
        /// The entry.
        host: String,
        /// Why.
        reason: String,
    },
    /// The secret is not valid header text.
    #[error("SHAKENFIST_MARIADB_GATEWAY_SECRET must be printable ASCII")]
    InvalidSecret,
}

impl ClientError {
    /// The gateway's status code, if it answered.
    pub fn code(&self) -> Option<Code> {
        match self {
            ClientError::Call { status, .. } => Some(status.code()),
            _ => None,
        }
    }

    /// The gateway's status, if it answered.
    pub fn status(&self) -> Option<&Status> {
        match self {
            ClientError::Call { status, .. } => Some(status),
            _ => None,
        }
    }
}

/// How calls are retried.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts per call (the first included).
    pub attempts: u32,
    /// First backoff; doubles each retry.
    pub initial_backoff: Duration,
    /// Longest backoff.
    pub max_backoff: Duration,
    /// How long an endpoint that failed is skipped.
    pub cool_down: Duration,
    /// Deadline of one attempt.
    pub timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 7,
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(2),
            cool_down: Duration::from_secs(2),
            timeout: Duration::from_secs(30),
        }
    }
}

/// Adds the secret and the trace context to every call.
#[derive(Clone)]
pub struct CallContext {
    secret: AsciiMetadataValue,
}

impl Interceptor for CallContext {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        request
            .metadata_mut()
            .insert(SECRET_HEADER, self.secret.clone());
        let mut headers = http::HeaderMap::new();
        sf_daemon::telemetry::inject_context(&mut headers);
        let extra = MetadataMap::from_headers(headers);
        for kv in extra.iter() {
            if let tonic::metadata::KeyAndValueRef::Ascii(k, v) = kv {
                request.metadata_mut().insert(k.clone(), v.clone());
            }
        }
        Ok(request)
    }
}

struct Host {
    name: String,
    stub: GatewayStub,
    down_until: Mutex<Option<Instant>>,
}

impl Host {
    fn is_up(&self, now: Instant) -> bool {
        self.down_until
            .lock()
            .map(|d| d.is_none_or(|t| t <= now))
            .unwrap_or(true)
    }

    fn mark_down(&self, until: Instant) {
        if let Ok(mut d) = self.down_until.lock() {
            *d = Some(until);
        }
    }

    fn mark_up(&self) {
        if let Ok(mut d) = self.down_until.lock() {
            *d = None;
        }
    }
}

/// The client. Cheap to clone.
#[derive(Clone)]
pub struct GatewayClient {
    hosts: Arc<Vec<Host>>,
    next: Arc<AtomicUsize>,
    policy: RetryPolicy,
}

impl GatewayClient {
    /// A client over `hosts`; connections are made lazily, so an endpoint that is down
    /// now is used once it comes back.
    pub fn new(hosts: &[HostPort], secret: &str, policy: RetryPolicy) -> Result<Self, ClientError> {
        let secret: AsciiMetadataValue = secret.parse().map_err(|_| ClientError::InvalidSecret)?;
        let mut out = Vec::with_capacity(hosts.len());
        for host in hosts {
            let uri = format!("http://{host}");
            let endpoint = Endpoint::from_shared(uri.clone())
                .map_err(|e| ClientError::InvalidEndpoint {
                    host: host.to_string(),
                    reason: e.to_string(),
                })?
                .connect_timeout(Duration::from_secs(3))
                .timeout(policy.timeout)
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(20))
                .keep_alive_timeout(Duration::from_secs(10))
                .keep_alive_while_idle(true);
            let channel = endpoint.connect_lazy();
            let stub = Stub::with_interceptor(
                channel,
                CallContext {
                    secret: secret.clone(),
                },
            )
            .max_decoding_message_size(256 * 1024 * 1024)
            .max_encoding_message_size(64 * 1024 * 1024);
            out.push(Host {
                name: host.to_string(),
                stub,
                down_until: Mutex::new(None),
            });
        }
        if out.is_empty() {
            return Err(ClientError::InvalidEndpoint {
                host: String::new(),
                reason: "MARIADB_GATEWAY_HOSTS is empty".into(),
            });
        }
        Ok(Self {
            hosts: Arc::new(out),
            next: Arc::new(AtomicUsize::new(0)),
            policy,
        })
    }

    /// A client from a `MARIADB_GATEWAY_HOSTS` value.
    pub fn from_host_list(
        list: &str,
        secret: &str,
        policy: RetryPolicy,
    ) -> Result<Self, ClientError> {
        let hosts = sf_daemon::config::parse_host_list(
            "SHAKENFIST_MARIADB_GATEWAY_HOSTS",
            list,
            DEFAULT_PORT,
        )
        .map_err(|e| ClientError::InvalidEndpoint {
            host: list.to_string(),
            reason: e.to_string(),
        })?;
        Self::new(&hosts, secret, policy)
    }

    /// The next endpoint that is up (round-robin), or the next one at all when every
    /// endpoint is in its cool-down.
    fn pick(&self) -> &Host {
        let now = Instant::now();
        let n = self.hosts.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        for i in 0..n {
            let host = &self.hosts[(start + i) % n];
            if host.is_up(now) {
                return host;
            }
        }
        &self.hosts[start % n]
    }

    /// Runs one call with the retry policy. `f` gets a stub for the chosen endpoint and
    /// must build its request afresh each time.
    pub async fn call<T, F, Fut>(&self, operation: &'static str, mut f: F) -> Result<T, ClientError>
    where
        F: FnMut(GatewayStub) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let mut backoff = self.policy.initial_backoff;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let host = self.pick();
            match f(host.stub.clone()).await {
                Ok(response) => {
                    host.mark_up();
                    return Ok(response.into_inner());
                }
                Err(status) if retryable(&status) => {
                    host.mark_down(Instant::now() + self.policy.cool_down);
                    tracing::debug!(operation, host = %host.name, attempt, error = %status, "sf-database call failed; retrying");
                    if attempt >= self.policy.attempts {
                        return Err(ClientError::DatabaseUnavailable {
                            operation,
                            attempts: attempt,
                            hosts: self.hosts.len(),
                            last: status,
                        });
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(self.policy.max_backoff);
                }
                Err(status) => return Err(ClientError::Call { operation, status }),
            }
        }
    }

    /// CreateOperation (the request is sent again as it is on a retry: a duplicate name
    /// answers AlreadyExists, so a retry never queues the work twice).
    pub async fn create_operation(
        &self,
        request: sf_proto::v1::CreateOperationRequest,
    ) -> Result<sf_proto::v1::ResourceReply, ClientError> {
        self.call("create_operation", |mut g| {
            let request = request.clone();
            async move { g.create_operation(request).await }
        })
        .await
    }
}

/// UNAVAILABLE, or a transport failure surfaced as UNKNOWN/CANCELLED by a connection
/// that broke mid-call.
fn retryable(status: &Status) -> bool {
    match status.code() {
        Code::Unavailable => true,
        Code::Unknown | Code::Cancelled | Code::Internal => {
            let m = status.message();
            m.contains("transport error")
                || m.contains("connection")
                || m.contains("h2 protocol error")
                || m.contains("broken pipe")
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unavailable_and_broken_connections_are_retried() {
        assert!(retryable(&Status::unavailable("down")));
        assert!(retryable(&Status::unknown("transport error")));
        assert!(!retryable(&Status::not_found("x")));
        assert!(!retryable(&Status::aborted("conflict")));
        assert!(!retryable(&Status::failed_precondition("stale lease")));
    }

    #[tokio::test]
    async fn round_robin_skips_hosts_in_cool_down() {
        let hosts =
            sf_daemon::config::parse_host_list("K", "127.0.0.1:1,127.0.0.1:2,127.0.0.1:3", 13005)
                .expect("hosts");
        let c =
            GatewayClient::new(&hosts, "0123456789abcdef", RetryPolicy::default()).expect("client");
        let names: Vec<String> = (0..3).map(|_| c.pick().name.clone()).collect();
        assert_eq!(names, vec!["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]);
        c.hosts[1].mark_down(Instant::now() + Duration::from_secs(60));
        let names: Vec<String> = (0..4).map(|_| c.pick().name.clone()).collect();
        assert!(!names.contains(&"127.0.0.1:2".to_string()), "{names:?}");
    }

    #[tokio::test]
    async fn nothing_listening_is_database_unavailable_after_the_budget() {
        // Port 1 on loopback: nothing listens there.
        let policy = RetryPolicy {
            attempts: 3,
            initial_backoff: Duration::from_millis(1),
            ..RetryPolicy::default()
        };
        let c = GatewayClient::from_host_list("127.0.0.1:1", "0123456789abcdef", policy)
            .expect("client");
        let err = c
            .call("get_resource", |mut g| async move {
                g.get_resource(sf_proto::v1::GetResourceRequest::default())
                    .await
            })
            .await
            .expect_err("unavailable");
        match err {
            ClientError::DatabaseUnavailable { attempts, .. } => assert_eq!(attempts, 3),
            other => panic!("{other}"),
        }
    }
}
