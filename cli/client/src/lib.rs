//! The connection to sf-api shared by `sf` and `sf-cluster` (contract C5).
//!
//! Contract: [`connect`] turns [`Credentials`] (API URL, namespace, and a namespace key
//! or a ready token) into an [`SfClient`]. With a key it `POST`s `/auth`
//! (`{"namespace","key"}` → `{"access_token","token_type","expires_in"}`) and keeps the
//! token fresh: a background task re-authenticates at 80 % of `expires_in`, a request
//! sent after that point re-authenticates first, and a request answered 401 is
//! re-authenticated and retried once (when its body can be replayed). With only a token
//! the token is sent as is and never refreshed. Every request made through
//! [`SfClient::kube`] carries `Authorization: Bearer <current token>`; nothing else is
//! changed. Only one re-authentication runs at a time, however many requests notice a
//! stale token together. `https://` URLs are verified against the system's trust
//! store, or only against a CA file's certificates with [`connect_with_ca`] (PEM; `sf`
//! takes it from `sf login --ca-file` or [`CA_FILE_ENV`]).

use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, RwLock, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt;
use kube::client::{Body, ClientBuilder};
use serde::{Deserialize, Serialize};
use tower::{BoxError, Layer, Service, ServiceExt};

/// Where and as whom to connect.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    /// sf-api's base URL, e.g. `http://127.0.0.1:13000` or `https://api:13000`.
    pub url: String,
    /// The namespace to authenticate in; also the client's default namespace.
    pub namespace: String,
    /// A namespace key in clear; when set, `connect` authenticates with it.
    pub key: Option<String>,
    /// A ready JWT, used as is when no key is given.
    pub token: Option<String>,
}

impl Credentials {
    /// From the environment: `SHAKENFIST_API_URL`, `SHAKENFIST_NAMESPACE`,
    /// `SHAKENFIST_KEY`, `SHAKENFIST_TOKEN` (what `sf` hands its plugins). Empty values
    /// count as unset; `None` without a URL or a namespace.
    pub fn from_env() -> Option<Self> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Like [`Credentials::from_env`] with any lookup (for tests and config layers).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Option<Self> {
        let get = |name: &str| lookup(name).filter(|v| !v.is_empty());
        Some(Credentials {
            url: get("SHAKENFIST_API_URL")?,
            namespace: get("SHAKENFIST_NAMESPACE")?,
            key: get("SHAKENFIST_KEY"),
            token: get("SHAKENFIST_TOKEN"),
        })
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("url", &self.url)
            .field("namespace", &self.namespace)
            .field("key", &self.key.as_ref().map(|_| "<redacted>"))
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// The environment variable naming a CA file (PEM) that `sf` and plugins trust for an
/// `https://` sf-api (e.g. its self-signed certificate).
pub const CA_FILE_ENV: &str = "SF_CA_FILE";

/// Errors of connecting and authenticating.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The CA file cannot be read or holds no PEM certificate.
    #[error("CA file {path}: {reason}")]
    CaFile {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// The API URL does not parse.
    #[error("invalid API URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL given.
        url: String,
        /// Why it was rejected.
        reason: String,
    },
    /// Neither a key nor a token was given.
    #[error("no credentials for namespace {namespace:?}: give a key or a token")]
    NoCredentials {
        /// The namespace.
        namespace: String,
    },
    /// The HTTP client could not be built.
    #[error("building the HTTP client failed: {0}")]
    BuildClient(#[source] kube::Error),
    /// The `/auth` request did not get an answer.
    #[error("authenticating at {url} failed: {source}")]
    AuthRequest {
        /// The API URL.
        url: String,
        /// The transport error.
        #[source]
        source: kube::Error,
    },
    /// sf-api refused the key (401), or rate-limited it (429), or failed.
    #[error("authentication refused by {url} (HTTP {status}): {message}")]
    AuthRefused {
        /// The API URL.
        url: String,
        /// The HTTP status.
        status: u16,
        /// sf-api's message.
        message: String,
    },
    /// The `/auth` answer was not the expected JSON.
    #[error("unreadable authentication answer from {url}: {reason}")]
    AuthAnswer {
        /// The API URL.
        url: String,
        /// What was wrong.
        reason: String,
    },
    /// The token cannot be put in a header.
    #[error("the token contains characters not allowed in an HTTP header")]
    BadToken,
}

/// The body of `POST /auth`.
#[derive(Debug, Clone, Serialize)]
struct AuthRequest<'a> {
    namespace: &'a str,
    key: &'a str,
}

/// The answer of `POST /auth`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct TokenResponse {
    /// The JWT.
    pub access_token: String,
    /// Always `Bearer`.
    #[serde(default)]
    pub token_type: String,
    /// Lifetime in seconds.
    #[serde(default = "default_expires_in")]
    pub expires_in: u64,
}

fn default_expires_in() -> u64 {
    900
}

/// A connected client: a `kube::Client` on sf-api that keeps its token fresh.
#[derive(Clone)]
pub struct SfClient {
    kube: kube::Client,
    url: String,
    namespace: String,
    state: Arc<TokenState>,
}

impl fmt::Debug for SfClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SfClient")
            .field("url", &self.url)
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

impl SfClient {
    /// The kube client; every request carries the current Bearer token.
    pub fn kube(&self) -> kube::Client {
        self.kube.clone()
    }

    /// The namespace authenticated in (the kube client's default namespace).
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// sf-api's base URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The token requests carry now (for handing to plugins).
    pub fn token(&self) -> String {
        self.state.current().0
    }

    /// How many times the client has authenticated with its key (0 with a token only).
    pub fn authentications(&self) -> u64 {
        self.state.current().1
    }

    /// Authenticates again now (no-op for a token-only client).
    pub async fn reauthenticate(&self) -> Result<(), ClientError> {
        let seen = self.state.current().1;
        self.state.refresh_if(seen).await
    }
}

/// The certificates (DER) of a PEM CA file, for an `https://` sf-api whose certificate
/// the system does not trust (a self-signed one).
pub fn load_ca_file(path: &Path) -> Result<Vec<Vec<u8>>, ClientError> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let fail = |reason: String| ClientError::CaFile {
        path: path.to_path_buf(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .map(|c| c.map(|c| c.to_vec()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(e.to_string()))?;
    if certs.is_empty() {
        return Err(fail("no PEM CERTIFICATE block".into()));
    }
    Ok(certs)
}

/// Connects: authenticates with the key when one is given, else uses the token. An
/// `https://` URL is verified against the system's trust store.
pub async fn connect(creds: Credentials) -> Result<SfClient, ClientError> {
    connect_with_ca(creds, None).await
}

/// [`connect`], trusting the certificates of `ca_file` (PEM) instead of the system's
/// trust store when given.
pub async fn connect_with_ca(
    creds: Credentials,
    ca_file: Option<&Path>,
) -> Result<SfClient, ClientError> {
    let root_cert = ca_file.map(load_ca_file).transpose()?;
    let url = creds.url.trim_end_matches('/').to_string();
    let uri: http::Uri =
        url.parse()
            .map_err(|e: http::uri::InvalidUri| ClientError::InvalidUrl {
                url: url.clone(),
                reason: e.to_string(),
            })?;
    if uri.scheme().is_none() || uri.authority().is_none() {
        return Err(ClientError::InvalidUrl {
            url,
            reason: "expected scheme://host[:port]".into(),
        });
    }
    let config = || {
        let mut config = kube::Config::new(uri.clone());
        config.default_namespace = creds.namespace.clone();
        config.root_cert = root_cert.clone();
        config
    };
    let plain = kube::Client::try_from(config()).map_err(ClientError::BuildClient)?;
    let (state, first) = match (&creds.key, &creds.token) {
        (Some(key), _) => {
            let login = Login {
                plain,
                url: url.clone(),
                namespace: creds.namespace.clone(),
                key: key.clone(),
            };
            let answer = login.authenticate().await?;
            let state = Arc::new(TokenState::new(Some(login)));
            state.store(&answer)?;
            (state, true)
        }
        (None, Some(token)) => {
            let state = Arc::new(TokenState::new(None));
            HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| ClientError::BadToken)?;
            if let Ok(mut current) = state.token.write() {
                current.value = token.clone();
            }
            (state, false)
        }
        (None, None) => {
            return Err(ClientError::NoCredentials {
                namespace: creds.namespace,
            });
        }
    };
    let inner = ClientBuilder::try_from(config()).map_err(ClientError::BuildClient)?;
    let inner = inner.with_layer(&tower::buffer::BufferLayer::new(64));
    let kube = inner
        .with_layer(&AuthLayer {
            state: state.clone(),
        })
        .build();
    if first {
        spawn_refresher(Arc::downgrade(&state));
    }
    Ok(SfClient {
        kube,
        url,
        namespace: creds.namespace,
        state,
    })
}

/// Authenticates once with a key and returns the token answer (used by `sf login`).
pub async fn authenticate(
    url: &str,
    namespace: &str,
    key: &str,
) -> Result<TokenResponse, ClientError> {
    authenticate_with_ca(url, namespace, key, None).await
}

/// [`authenticate`], trusting the certificates of `ca_file` (PEM) when given.
pub async fn authenticate_with_ca(
    url: &str,
    namespace: &str,
    key: &str,
    ca_file: Option<&Path>,
) -> Result<TokenResponse, ClientError> {
    let root_cert = ca_file.map(load_ca_file).transpose()?;
    let url = url.trim_end_matches('/').to_string();
    let uri: http::Uri =
        url.parse()
            .map_err(|e: http::uri::InvalidUri| ClientError::InvalidUrl {
                url: url.clone(),
                reason: e.to_string(),
            })?;
    let mut config = kube::Config::new(uri);
    config.root_cert = root_cert;
    let plain = kube::Client::try_from(config).map_err(ClientError::BuildClient)?;
    Login {
        plain,
        url,
        namespace: namespace.to_string(),
        key: key.to_string(),
    }
    .authenticate()
    .await
}

/// What re-authentication needs.
struct Login {
    plain: kube::Client,
    url: String,
    namespace: String,
    key: String,
}

impl Login {
    async fn authenticate(&self) -> Result<TokenResponse, ClientError> {
        let body = serde_json::to_vec(&AuthRequest {
            namespace: &self.namespace,
            key: &self.key,
        })
        .map_err(|e| ClientError::AuthAnswer {
            url: self.url.clone(),
            reason: e.to_string(),
        })?;
        let request = Request::post("/auth")
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::ACCEPT, "application/json")
            .body(Body::from(body))
            .map_err(|e| ClientError::AuthAnswer {
                url: self.url.clone(),
                reason: e.to_string(),
            })?;
        let response =
            self.plain
                .send(request)
                .await
                .map_err(|source| ClientError::AuthRequest {
                    url: self.url.clone(),
                    source,
                })?;
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| ClientError::AuthAnswer {
                url: self.url.clone(),
                reason: e.to_string(),
            })?
            .to_bytes();
        if !status.is_success() {
            let message = serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| {
                    v.get("error")
                        .or_else(|| v.get("message"))
                        .and_then(|m| m.as_str().map(str::to_string))
                })
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).trim().to_string());
            return Err(ClientError::AuthRefused {
                url: self.url.clone(),
                status: status.as_u16(),
                message,
            });
        }
        serde_json::from_slice(&bytes).map_err(|e| ClientError::AuthAnswer {
            url: self.url.clone(),
            reason: e.to_string(),
        })
    }
}

/// The current token.
struct Token {
    value: String,
    /// When to re-authenticate (80 % of the lifetime); `None` without a key.
    refresh_at: Option<Instant>,
    /// Bumped on every authentication.
    generation: u64,
}

/// Shared between the client's layer and the refresher task.
struct TokenState {
    token: RwLock<Token>,
    login: Option<Login>,
    refreshing: tokio::sync::Mutex<()>,
}

impl TokenState {
    fn new(login: Option<Login>) -> Self {
        TokenState {
            token: RwLock::new(Token {
                value: String::new(),
                refresh_at: None,
                generation: 0,
            }),
            login,
            refreshing: tokio::sync::Mutex::new(()),
        }
    }

    /// (token, generation, refresh due?)
    fn current(&self) -> (String, u64, bool) {
        match self.token.read() {
            Ok(t) => (
                t.value.clone(),
                t.generation,
                t.refresh_at.is_some_and(|at| Instant::now() >= at),
            ),
            Err(poisoned) => {
                let t = poisoned.into_inner();
                (t.value.clone(), t.generation, true)
            }
        }
    }

    fn refresh_at(&self) -> Option<Instant> {
        self.token.read().ok().and_then(|t| t.refresh_at)
    }

    fn store(&self, answer: &TokenResponse) -> Result<(), ClientError> {
        HeaderValue::from_str(&format!("Bearer {}", answer.access_token))
            .map_err(|_| ClientError::BadToken)?;
        // 80 % of the lifetime, at least half a second from now.
        let lifetime = Duration::from_millis(answer.expires_in.saturating_mul(800))
            .max(Duration::from_millis(500));
        let mut t = match self.token.write() {
            Ok(t) => t,
            Err(poisoned) => poisoned.into_inner(),
        };
        t.value = answer.access_token.clone();
        t.refresh_at = Some(Instant::now() + lifetime);
        t.generation += 1;
        Ok(())
    }

    /// Re-authenticates unless someone already did since `seen` was current.
    async fn refresh_if(&self, seen: u64) -> Result<(), ClientError> {
        let Some(login) = &self.login else {
            return Ok(());
        };
        let _guard = self.refreshing.lock().await;
        if self.current().1 != seen {
            return Ok(());
        }
        let answer = login.authenticate().await?;
        self.store(&answer)?;
        tracing::debug!(namespace = %login.namespace, "re-authenticated with sf-api");
        Ok(())
    }
}

/// Re-authenticates at 80 % of each token's lifetime until the client is dropped.
fn spawn_refresher(state: Weak<TokenState>) {
    tokio::spawn(async move {
        let mut failures: u32 = 0;
        loop {
            let wait = {
                let Some(s) = state.upgrade() else { return };
                match s.refresh_at() {
                    Some(at) => at.saturating_duration_since(Instant::now()),
                    None => return,
                }
            };
            // Wake at least every few seconds so a dropped client ends the task soon.
            tokio::time::sleep(wait.min(Duration::from_secs(5))).await;
            let Some(s) = state.upgrade() else { return };
            let (_, generation, due) = s.current();
            if !due {
                continue;
            }
            match s.refresh_if(generation).await {
                Ok(()) => failures = 0,
                Err(e) => {
                    failures = failures.saturating_add(1);
                    tracing::warn!(error = %e, "re-authentication failed; retrying");
                    drop(s);
                    let backoff =
                        Duration::from_millis(250u64.saturating_mul(1 << failures.min(5)));
                    tokio::time::sleep(backoff).await;
                }
            }
        }
    });
}

/// The tower layer adding `Authorization: Bearer` from the shared token.
#[derive(Clone)]
struct AuthLayer {
    state: Arc<TokenState>,
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            state: self.state.clone(),
        }
    }
}

/// See [`AuthLayer`].
#[derive(Clone)]
struct AuthService<S> {
    inner: S,
    state: Arc<TokenState>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

fn with_token(mut request: Request<Body>, token: &str) -> Request<Body> {
    if !token.is_empty()
        && let Ok(value) = HeaderValue::from_str(&format!("Bearer {token}"))
    {
        request
            .headers_mut()
            .insert(http::header::AUTHORIZATION, value);
    }
    request
}

/// A copy of the request for one retry, when its body is replayable.
fn replayable(request: &Request<Body>) -> Option<Request<Body>> {
    let body = request.body().try_clone()?;
    let mut copy = Request::new(body);
    *copy.method_mut() = request.method().clone();
    *copy.uri_mut() = request.uri().clone();
    *copy.version_mut() = request.version();
    *copy.headers_mut() = request.headers().clone();
    Some(copy)
}

impl<S, B> Service<Request<Body>> for AuthService<S>
where
    S: Service<Request<Body>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Send + 'static,
{
    type Response = Response<B>;
    type Error = BoxError;
    type Future = BoxFuture<Result<Response<B>, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        // The ready service handles this call; a fresh clone stays for the next one.
        let fresh = self.inner.clone();
        let mut ready = std::mem::replace(&mut self.inner, fresh);
        let spare = self.inner.clone();
        let state = self.state.clone();
        Box::pin(async move {
            let (_, generation, due) = state.current();
            if due && let Err(e) = state.refresh_if(generation).await {
                tracing::warn!(error = %e, "re-authentication before a request failed");
            }
            let retry = if state.login.is_some() {
                replayable(&request)
            } else {
                None
            };
            let (token, generation, _) = state.current();
            let response = ready
                .call(with_token(request, &token))
                .await
                .map_err(Into::into)?;
            if response.status() != StatusCode::UNAUTHORIZED {
                return Ok(response);
            }
            let Some(retry) = retry else {
                return Ok(response);
            };
            if let Err(e) = state.refresh_if(generation).await {
                tracing::warn!(error = %e, "re-authentication after a 401 failed");
                return Ok(response);
            }
            let (token, _, _) = state.current();
            let mut spare = spare;
            let service = spare.ready().await.map_err(Into::into)?;
            service
                .call(with_token(retry, &token))
                .await
                .map_err(Into::into)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_debug_redacts_secrets() {
        let creds = Credentials {
            url: "http://127.0.0.1:13000".into(),
            namespace: "system".into(),
            key: Some("sekrit-key".into()),
            token: Some("sekrit-token".into()),
        };
        let shown = format!("{creds:?}");
        assert!(!shown.contains("sekrit"), "{shown}");
        assert!(shown.contains("system"));
    }

    #[test]
    fn credentials_from_a_lookup() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| (*v).to_string())
            }
        };
        let creds = Credentials::from_lookup(env(&[
            ("SHAKENFIST_API_URL", "http://127.0.0.1:13000"),
            ("SHAKENFIST_NAMESPACE", "demo"),
            ("SHAKENFIST_KEY", ""),
            ("SHAKENFIST_TOKEN", "t"),
        ]))
        .expect("credentials");
        assert_eq!(creds.url, "http://127.0.0.1:13000");
        assert_eq!(creds.key, None, "empty counts as unset");
        assert_eq!(creds.token.as_deref(), Some("t"));
        assert!(Credentials::from_lookup(env(&[("SHAKENFIST_NAMESPACE", "demo")])).is_none());
    }

    #[tokio::test]
    async fn connect_without_credentials_fails() {
        let err = connect(Credentials {
            url: "http://127.0.0.1:1".into(),
            namespace: "demo".into(),
            key: None,
            token: None,
        })
        .await
        .expect_err("no credentials");
        assert!(matches!(err, ClientError::NoCredentials { .. }), "{err}");
    }

    #[tokio::test]
    async fn connect_rejects_a_bad_url() {
        let err = connect(Credentials {
            url: "not a url".into(),
            namespace: "demo".into(),
            key: None,
            token: Some("t".into()),
        })
        .await
        .expect_err("bad url");
        assert!(matches!(err, ClientError::InvalidUrl { .. }), "{err}");
    }

    #[tokio::test]
    async fn token_only_client_sends_the_token_and_never_refreshes() {
        let client = connect(Credentials {
            url: "http://127.0.0.1:1".into(),
            namespace: "demo".into(),
            key: None,
            token: Some("abc".into()),
        })
        .await
        .expect("connect");
        assert_eq!(client.token(), "abc");
        assert_eq!(client.authentications(), 0);
        client.reauthenticate().await.expect("no-op");
        assert_eq!(client.token(), "abc");
    }

    #[test]
    fn a_ca_file_must_hold_a_pem_certificate() {
        let dir = std::env::temp_dir().join(format!("sf-client-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let garbage = dir.join("garbage.pem");
        std::fs::write(&garbage, "not a certificate").expect("write");
        assert!(matches!(
            load_ca_file(&garbage),
            Err(ClientError::CaFile { .. })
        ));
        assert!(matches!(
            load_ca_file(&dir.join("missing.pem")),
            Err(ClientError::CaFile { .. })
        ));
        // A minimal well-formed block is taken as is (kube verifies it on use).
        let pem = dir.join("ca.pem");
        std::fs::write(
            &pem,
            "-----BEGIN CERTIFICATE-----\nAQID\n-----END CERTIFICATE-----\n",
        )
        .expect("write");
        assert_eq!(load_ca_file(&pem).expect("ca"), vec![vec![1u8, 2, 3]]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn store_sets_refresh_at_eighty_percent() {
        let state = TokenState::new(None);
        let before = Instant::now();
        state
            .store(&TokenResponse {
                access_token: "t".into(),
                token_type: "Bearer".into(),
                expires_in: 10,
            })
            .expect("store");
        let at = state.refresh_at().expect("refresh time");
        let delta = at.duration_since(before);
        assert!(
            delta >= Duration::from_millis(7900) && delta <= Duration::from_millis(8200),
            "{delta:?}"
        );
        assert_eq!(state.current().1, 1);
    }
}
