//! Authentication: namespace keys, HS256 tokens, the `/auth` endpoint and the token
//! check every other route passes.
//!
//! Contract (the Shaken Fist model, `shared/research/shakenfist.md` §1):
//! - Keys are stored only as argon2id PHC strings ([`hash_key`]); the clear key is
//!   never stored, logged or sent to sf-database. [`verify_key`] checks one.
//! - `POST /auth {"namespace", "key"}` checks the key against every key of the
//!   namespace and answers `{"access_token", "token_type": "Bearer", "expires_in"}`.
//!   The token is an HS256 JWT signed with `SHAKENFIST_AUTH_SECRET_SEED`: `iss` = the
//!   zone, `sub` = `[namespace, key name]`, `nonce` = the key's nonce (sf-database
//!   gives every put of a key a new one, so replacing or deleting a key revokes the
//!   tokens issued under it), `iat`, `exp` (`SHAKENFIST_API_TOKEN_DURATION` seconds).
//!   A wrong key, an unknown namespace or a namespace without keys is the same 401
//!   `{"error", "status"}`.
//! - Failed `/auth` attempts are counted per (client address, namespace): after
//!   [`AUTH_FAILURES_ALLOWED`] failures within [`AUTH_FAILURE_WINDOW`], every attempt
//!   (right or wrong) is 429 with `Retry-After` until the oldest failure leaves the
//!   window. An attempt counts before its key is checked (parallel attempts cannot
//!   all slip through) and a success clears the count; a full table forgets the
//!   client tried longest ago, never stops counting. The count lives in this process
//!   only. A namespace that is not a DNS label is 401 at once; at most
//!   [`AUTH_VERIFICATIONS`] argon2 checks run at once, and a namespace without keys
//!   costs the same check as a wrong key.
//! - [`require_token`] guards every route but [`PUBLIC_PATHS`]: it needs
//!   `Authorization: Bearer <jwt>` with a valid signature, this zone as issuer, an
//!   unexpired `exp` and the current nonce of its key, else 401 `Status`. The nonces
//!   of a namespace are cached for [`NONCE_CACHE_TTL`] (re-read in the background once
//!   half of it has passed): a key replaced through this process takes effect at
//!   once, one replaced elsewhere within that time. The
//!   [`Caller`] is put in the request's extensions.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use argon2::password_hash::{PasswordHasher, PasswordVerifier, phc::PasswordHash};
use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::error::ApiError;
use crate::gateway::Gateway;
use crate::server::App;

/// The admin namespace.
pub const SYSTEM: &str = sf_schema::namespace::SYSTEM_NAMESPACE;

/// Failed `/auth` attempts allowed per (client address, namespace) in the window.
pub const AUTH_FAILURES_ALLOWED: usize = 5;

/// The window failed `/auth` attempts are counted in.
pub const AUTH_FAILURE_WINDOW: Duration = Duration::from_secs(60);

/// How long the key nonces of a namespace are trusted without asking sf-database.
pub const NONCE_CACHE_TTL: Duration = Duration::from_secs(2);

/// Paths served without a token.
pub const PUBLIC_PATHS: &[&str] = &[
    "/", "/healthz", "/livez", "/readyz", "/version", "/auth", "/metrics",
];

/// The largest `/auth` body read.
const MAX_AUTH_BODY: usize = 16 * 1024;

/// Entries the failure limiter keeps at most (oldest dropped first).
const LIMITER_CAPACITY: usize = 10_000;

/// A failed authentication step.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    /// Hashing a key failed.
    #[error("cannot hash the key: {0}")]
    HashKey(String),
    /// The token is not a well-formed HS256 JWT.
    #[error("malformed token: {0}")]
    MalformedToken(&'static str),
    /// The signature does not match.
    #[error("the token signature is not valid")]
    BadSignature,
    /// The token has expired.
    #[error("the token has expired")]
    Expired,
    /// The token was issued by another zone.
    #[error("the token was issued by {0:?}, not this zone")]
    WrongIssuer(String),
    /// The key the token was issued under was replaced or deleted.
    #[error("the key this token was issued under has been replaced or deleted")]
    Revoked,
}

/// Hashes a clear key for storage (argon2id PHC string, random salt).
pub fn hash_key(clear: &str) -> Result<String, AuthError> {
    argon2::Argon2::default()
        .hash_password(clear.as_bytes())
        .map(|hash| hash.to_string())
        .map_err(|e| AuthError::HashKey(e.to_string()))
}

/// A new random clear key: 64 hex characters (244 random bits from the OS).
pub fn generate_key() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

/// An argon2 hash no key matches, checked when a namespace has no keys.
fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| hash_key(&generate_key()).unwrap_or_default())
}

/// At most this many argon2 checks of `/auth` run at once.
pub const AUTH_VERIFICATIONS: usize = 4;

/// Whether `clear` is the key `phc` is the hash of (false for a malformed hash).
pub fn verify_key(clear: &str, phc: &str) -> bool {
    PasswordHash::new(phc).is_ok_and(|hash| {
        argon2::Argon2::default()
            .verify_password(clear.as_bytes(), &hash)
            .is_ok()
    })
}

/// The claims of a token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The zone that issued it.
    pub iss: String,
    /// `[namespace, key name]`.
    pub sub: (String, String),
    /// The key's nonce when the token was issued.
    pub nonce: String,
    /// Issued at (Unix seconds).
    pub iat: u64,
    /// Expires at (Unix seconds).
    pub exp: u64,
}

/// Issues and checks tokens.
#[derive(Clone)]
pub struct TokenSigner {
    secret: Vec<u8>,
    zone: String,
    duration: Duration,
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSigner")
            .field("zone", &self.zone)
            .field("duration", &self.duration)
            .finish_non_exhaustive()
    }
}

fn now_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

impl TokenSigner {
    /// A signer with `secret` (the auth secret seed), issuing for `zone`, tokens valid
    /// for `duration`.
    pub fn new(secret: &str, zone: &str, duration: Duration) -> Self {
        Self {
            secret: secret.as_bytes().to_vec(),
            zone: zone.to_string(),
            duration,
        }
    }

    /// How long tokens are valid.
    pub fn duration(&self) -> Duration {
        self.duration
    }

    fn mac(&self) -> Hmac<Sha256> {
        // HMAC takes keys of any length.
        match Hmac::<Sha256>::new_from_slice(&self.secret) {
            Ok(mac) => mac,
            Err(_) => unreachable!("HMAC accepts keys of any length"),
        }
    }

    /// A token for key `key_name` of `namespace` with the key's `nonce`.
    pub fn issue(&self, namespace: &str, key_name: &str, nonce: &str) -> String {
        let iat = now_seconds();
        self.sign(&Claims {
            iss: self.zone.clone(),
            sub: (namespace.to_string(), key_name.to_string()),
            nonce: nonce.to_string(),
            iat,
            exp: iat + self.duration.as_secs(),
        })
    }

    /// Signs `claims` (HS256).
    pub fn sign(&self, claims: &Claims) -> String {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap_or_default());
        let signing_input = format!("{header}.{payload}");
        let mut mac = self.mac();
        mac.update(signing_input.as_bytes());
        let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        format!("{signing_input}.{signature}")
    }

    /// Checks a token's form, algorithm, signature, issuer and expiry (not its nonce).
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(AuthError::MalformedToken("not three dot-separated parts"));
        };
        let header: Value = URL_SAFE_NO_PAD
            .decode(header)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(AuthError::MalformedToken("bad header"))?;
        if header.get("alg").and_then(Value::as_str) != Some("HS256") {
            return Err(AuthError::MalformedToken("the algorithm must be HS256"));
        }
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| AuthError::MalformedToken("bad signature encoding"))?;
        let mut mac = self.mac();
        mac.update(&token.as_bytes()[..header_payload_len(token)]);
        mac.verify_slice(&signature)
            .map_err(|_| AuthError::BadSignature)?;
        let claims: Claims = URL_SAFE_NO_PAD
            .decode(payload)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(AuthError::MalformedToken("bad claims"))?;
        if claims.iss != self.zone {
            return Err(AuthError::WrongIssuer(claims.iss));
        }
        if claims.exp <= now_seconds() {
            return Err(AuthError::Expired);
        }
        Ok(claims)
    }
}

/// The length of `header.payload` in a token with two dots.
fn header_payload_len(token: &str) -> usize {
    token.rfind('.').unwrap_or(0)
}

/// Who is calling: the namespace and key of its token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The caller's namespace.
    pub namespace: String,
    /// The key its token was issued under.
    pub key_name: String,
}

impl Caller {
    /// Whether the caller is in the admin namespace.
    pub fn is_system(&self) -> bool {
        self.namespace == SYSTEM
    }
}

/// Counts failed `/auth` attempts per (client address, namespace).
#[derive(Debug, Default)]
pub struct FailureLimiter {
    failures: Mutex<HashMap<(IpAddr, String), VecDeque<Instant>>>,
}

impl FailureLimiter {
    fn prune(times: &mut VecDeque<Instant>, now: Instant) {
        while times
            .front()
            .is_some_and(|t| now.duration_since(*t) >= AUTH_FAILURE_WINDOW)
        {
            times.pop_front();
        }
    }

    /// `Some(wait)` when the failures in `times` (pruned to the window) allow no
    /// attempt now.
    fn wait_of(times: &mut VecDeque<Instant>, now: Instant) -> Option<Duration> {
        Self::prune(times, now);
        if times.len() < AUTH_FAILURES_ALLOWED {
            return None;
        }
        let oldest = *times.front()?;
        Some(AUTH_FAILURE_WINDOW.saturating_sub(now.duration_since(oldest)))
    }

    /// `Some(wait)` when this client may not try `namespace` now.
    pub fn blocked(&self, ip: IpAddr, namespace: &str) -> Option<Duration> {
        let now = Instant::now();
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        Self::wait_of(map.get_mut(&(ip, namespace.to_string()))?, now)
    }

    /// Starts an attempt: `Err(wait)` when this client may not try `namespace` now,
    /// else the attempt is counted as a failure before the key is checked (so
    /// parallel attempts cannot all pass the check), and [`Self::clear`] takes it
    /// back when it succeeds.
    pub fn begin(&self, ip: IpAddr, namespace: &str) -> Result<(), Duration> {
        let now = Instant::now();
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let key = (ip, namespace.to_string());
        if let Some(times) = map.get_mut(&key) {
            if let Some(wait) = Self::wait_of(times, now) {
                return Err(wait);
            }
        } else if map.len() >= LIMITER_CAPACITY {
            map.retain(|_, times| {
                Self::prune(times, now);
                !times.is_empty()
            });
            // Still full (a flood of clients): forget the one tried longest ago
            // rather than stop counting, which would lift the limit for everyone.
            if map.len() >= LIMITER_CAPACITY
                && let Some(stalest) = map
                    .iter()
                    .min_by_key(|(_, times)| times.back().copied())
                    .map(|(k, _)| k.clone())
            {
                map.remove(&stalest);
            }
        }
        map.entry(key).or_default().push_back(now);
        Ok(())
    }

    /// Forgets the failures of a client that authenticated.
    pub fn clear(&self, ip: IpAddr, namespace: &str) {
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        map.remove(&(ip, namespace.to_string()));
    }
}

/// Key name → nonce, of one namespace.
type Nonces = HashMap<String, String>;

/// A cached nonce list.
#[derive(Debug)]
struct NonceEntry {
    at: Instant,
    nonces: Arc<Nonces>,
    /// A background refresh is under way.
    refreshing: bool,
}

/// The key nonces of namespaces, briefly cached. An entry is trusted for
/// [`NONCE_CACHE_TTL`]; once it is half that old the first request that uses it starts
/// a refresh in the background (steady traffic never waits for sf-database, and never
/// sends it a burst of identical reads when an entry expires). [`NonceCache::invalidate`]
/// also discards every read that started before it.
#[derive(Debug, Default)]
pub struct NonceCache {
    entries: Mutex<HashMap<String, NonceEntry>>,
    /// Bumped by every invalidation: reads that began earlier are not stored.
    generation: std::sync::atomic::AtomicU64,
}

impl NonceCache {
    /// The cached nonces, and whether the caller is to start a refresh.
    fn cached(&self, namespace: &str) -> Option<(Arc<Nonces>, bool)> {
        let mut map = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let entry = map.get_mut(namespace)?;
        let age = entry.at.elapsed();
        if age >= NONCE_CACHE_TTL {
            return None;
        }
        let refresh = age >= NONCE_CACHE_TTL / 2 && !entry.refreshing;
        if refresh {
            entry.refreshing = true;
        }
        Some((entry.nonces.clone(), refresh))
    }

    fn store(&self, namespace: &str, nonces: Arc<Nonces>, generation: u64, at: Instant) {
        let mut map = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if self.generation.load(std::sync::atomic::Ordering::SeqCst) != generation {
            // Invalidated while reading: what was read may be stale.
            map.remove(namespace);
            return;
        }
        if map.len() > LIMITER_CAPACITY {
            map.retain(|_, e| e.at.elapsed() < NONCE_CACHE_TTL);
        }
        map.insert(
            namespace.to_string(),
            NonceEntry {
                at,
                nonces,
                refreshing: false,
            },
        );
    }

    /// Drops what is cached for `namespace` (its keys changed).
    pub fn invalidate(&self, namespace: &str) {
        let mut map = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        map.remove(namespace);
    }

    /// Reads the nonces from sf-database and caches them.
    async fn fetch(&self, gateway: &Gateway, namespace: &str) -> Result<Arc<Nonces>, ApiError> {
        let generation = self.generation.load(std::sync::atomic::Ordering::SeqCst);
        // The entry's age counts from before the read: never trusted past the TTL.
        let at = Instant::now();
        let nonces: Nonces = match gateway.list_keys(namespace).await {
            Ok(keys) => keys.into_iter().map(|k| (k.key_name, k.nonce)).collect(),
            Err(e) if e.code() == Some(tonic::Code::NotFound) => HashMap::new(),
            Err(e) => return Err(ApiError::from_gateway(&e, &Default::default())),
        };
        let nonces = Arc::new(nonces);
        self.store(namespace, nonces.clone(), generation, at);
        Ok(nonces)
    }

    /// The current nonce of each key of `namespace`.
    async fn nonces(
        self: &Arc<Self>,
        gateway: &Gateway,
        namespace: &str,
    ) -> Result<Arc<Nonces>, ApiError> {
        match self.cached(namespace) {
            Some((nonces, refresh)) => {
                if refresh {
                    let cache = self.clone();
                    let gateway = gateway.clone();
                    let namespace = namespace.to_string();
                    tokio::spawn(async move {
                        if let Err(e) = cache.fetch(&gateway, &namespace).await {
                            tracing::debug!(error = %e, "refreshing key nonces failed");
                            let mut map = cache.entries.lock().unwrap_or_else(|e| e.into_inner());
                            if let Some(entry) = map.get_mut(&namespace) {
                                entry.refreshing = false;
                            }
                        }
                    });
                }
                Ok(nonces)
            }
            None => self.fetch(gateway, namespace).await,
        }
    }
}

/// The authentication state of the server.
#[derive(Debug)]
pub struct Auth {
    /// Token issuing and checking.
    pub signer: TokenSigner,
    /// Failed `/auth` attempts.
    pub limiter: FailureLimiter,
    /// Key nonces.
    pub nonces: Arc<NonceCache>,
    /// Slots for `/auth`'s argon2 checks ([`AUTH_VERIFICATIONS`]).
    pub verifications: tokio::sync::Semaphore,
}

impl Auth {
    /// The state for `signer`.
    pub fn new(signer: TokenSigner) -> Self {
        Self {
            signer,
            limiter: FailureLimiter::default(),
            nonces: Arc::new(NonceCache::default()),
            verifications: tokio::sync::Semaphore::new(AUTH_VERIFICATIONS),
        }
    }

    /// The caller a request's `Authorization` header proves.
    pub async fn authenticate(
        &self,
        gateway: &Gateway,
        headers: &HeaderMap,
    ) -> Result<Caller, ApiError> {
        let token = bearer_token(headers).ok_or_else(|| {
            ApiError::Unauthorized("an Authorization: Bearer token is required".into())
        })?;
        let claims = self
            .signer
            .verify(token)
            .map_err(|e| ApiError::Unauthorized(e.to_string()))?;
        let (namespace, key_name) = claims.sub;
        let nonces = self.nonces.nonces(gateway, &namespace).await?;
        if nonces.get(&key_name) != Some(&claims.nonce) {
            return Err(ApiError::Unauthorized(AuthError::Revoked.to_string()));
        }
        Ok(Caller {
            namespace,
            key_name,
        })
    }
}

/// The token of a `Bearer` Authorization header.
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// A Shaken Fist style error: `{"error", "status"}`.
pub fn sf_error(code: StatusCode, message: impl Into<String>) -> Response {
    crate::error::json_response(
        code,
        &json!({"error": message.into(), "status": code.as_u16()}),
    )
}

/// The client's address (unspecified when the server was not given connection info).
pub fn client_ip(request: &Request) -> IpAddr {
    request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0.ip())
}

/// Middleware: every route but [`PUBLIC_PATHS`] needs a valid token.
pub async fn require_token(
    State(app): State<Arc<App>>,
    mut request: Request,
    next: Next,
) -> Response {
    if PUBLIC_PATHS.contains(&request.uri().path()) {
        return next.run(request).await;
    }
    match app.auth.authenticate(&app.gateway, request.headers()).await {
        Ok(caller) => {
            tracing::Span::current().record("caller", caller.namespace.as_str());
            request.extensions_mut().insert(caller.clone());
            let mut response = next.run(request).await;
            // For the request accounting outside this layer.
            response.extensions_mut().insert(caller);
            response
        }
        Err(e) => e.into_response(),
    }
}

#[derive(Deserialize)]
struct AuthRequest {
    namespace: String,
    key: String,
}

/// `POST /auth`.
pub async fn post_auth(State(app): State<Arc<App>>, request: Request) -> Response {
    let ip = client_ip(&request);
    let bytes = match axum::body::to_bytes(request.into_body(), MAX_AUTH_BODY).await {
        Ok(bytes) => bytes,
        Err(_) => return sf_error(StatusCode::BAD_REQUEST, "the body is too large"),
    };
    let Ok(body) = serde_json::from_slice::<AuthRequest>(&bytes) else {
        return sf_error(
            StatusCode::BAD_REQUEST,
            "the body must be {\"namespace\": ..., \"key\": ...}",
        );
    };
    // Only a namespace name can have keys: anything else (padded, upper case, a
    // path) is refused before it costs a lookup, a hash or a limiter entry, and a
    // token always carries the canonical name.
    if !sf_schema::validation::is_dns_label(&body.namespace) {
        return sf_error(StatusCode::UNAUTHORIZED, "unauthorized");
    }
    if let Err(wait) = app.auth.limiter.begin(ip, &body.namespace) {
        let mut response = sf_error(
            StatusCode::TOO_MANY_REQUESTS,
            "too many failed authentication attempts, try again later",
        );
        let seconds = wait.as_secs().max(1).to_string();
        if let Ok(value) = HeaderValue::from_str(&seconds) {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        return response;
    }
    let keys = match app.gateway.list_keys(&body.namespace).await {
        Ok(keys) => keys,
        Err(e) if e.code() == Some(tonic::Code::NotFound) => Vec::new(),
        Err(e) => {
            let err = ApiError::from_gateway(&e, &Default::default());
            let code =
                StatusCode::from_u16(err.code()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return sf_error(code, err.to_string());
        }
    };
    let clear = body.key;
    // argon2 costs ~19 MiB and a core per check: at most a few at once.
    let Ok(_slot) = app.auth.verifications.acquire().await else {
        return sf_error(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
    };
    let matched = tokio::task::spawn_blocking(move || {
        if keys.is_empty() {
            // The same work as a wrong key: no timing tells unknown namespaces apart.
            let _ = verify_key(&clear, dummy_hash());
            return None;
        }
        keys.into_iter()
            .find(|k| verify_key(&clear, &k.key_hash))
            .map(|k| (k.key_name, k.nonce))
    })
    .await
    .ok()
    .flatten();
    let Some((key_name, nonce)) = matched else {
        // Counted already by `begin`.
        tracing::info!(namespace = %body.namespace, client = %ip, "authentication failed");
        return sf_error(StatusCode::UNAUTHORIZED, "unauthorized");
    };
    app.auth.limiter.clear(ip, &body.namespace);
    let token = app.auth.signer.issue(&body.namespace, &key_name, &nonce);
    crate::error::json_response(
        StatusCode::OK,
        &json!({
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": app.auth.signer.duration().as_secs(),
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonce_entries_refresh_at_half_life_and_invalidation_wins_over_reads() {
        let cache = NonceCache::default();
        let nonces = Arc::new(HashMap::from([("k".to_string(), "n1".to_string())]));
        let generation = cache.generation.load(std::sync::atomic::Ordering::SeqCst);
        cache.store("ns", nonces.clone(), generation, Instant::now());
        let (got, refresh) = cache.cached("ns").expect("fresh");
        assert_eq!(got.get("k").map(String::as_str), Some("n1"));
        assert!(!refresh, "young entries are not refreshed");
        // Half-way through its life: one caller (only one) starts a refresh.
        cache.store(
            "ns",
            nonces.clone(),
            generation,
            Instant::now() - NONCE_CACHE_TTL / 2,
        );
        assert!(cache.cached("ns").expect("still trusted").1);
        assert!(!cache.cached("ns").expect("still trusted").1);
        // Expired: not trusted.
        cache.store(
            "ns",
            nonces.clone(),
            generation,
            Instant::now() - NONCE_CACHE_TTL,
        );
        assert!(cache.cached("ns").is_none());
        // A read that began before an invalidation is not stored.
        cache.invalidate("ns");
        cache.store("ns", nonces, generation, Instant::now());
        assert!(cache.cached("ns").is_none());
    }

    #[test]
    fn keys_hash_and_verify() {
        let hash = hash_key("sekrit").expect("hash");
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        assert!(!hash.contains("sekrit"));
        assert!(verify_key("sekrit", &hash));
        assert!(!verify_key("sekrit2", &hash));
        assert!(!verify_key("sekrit", "not a hash"));
        assert_ne!(hash, hash_key("sekrit").expect("hash"), "salted");
        let key = generate_key();
        assert_eq!(key.len(), 64);
        assert_ne!(key, generate_key());
    }

    #[test]
    fn tokens_round_trip_and_fail_when_tampered() {
        let signer = TokenSigner::new("seed-0123456789abcdef", "sf", Duration::from_secs(60));
        let token = signer.issue("demo", "k1", "n1");
        let claims = signer.verify(&token).expect("valid");
        assert_eq!(claims.sub, ("demo".to_string(), "k1".to_string()));
        assert_eq!(claims.nonce, "n1");
        assert_eq!(claims.iss, "sf");
        assert_eq!(claims.exp - claims.iat, 60);

        let other = TokenSigner::new("another-seed-0123456", "sf", Duration::from_secs(60));
        assert_eq!(other.verify(&token), Err(AuthError::BadSignature));
        let zone = TokenSigner::new("seed-0123456789abcdef", "zz", Duration::from_secs(60));
        assert!(matches!(
            zone.verify(&token),
            Err(AuthError::WrongIssuer(_))
        ));

        // Swap in claims for another namespace: the signature no longer matches.
        let parts: Vec<&str> = token.split('.').collect();
        let forged = URL_SAFE_NO_PAD.encode(
            br#"{"iss":"sf","sub":["system","k1"],"nonce":"n1","iat":1,"exp":99999999999}"#,
        );
        let tampered = format!("{}.{}.{}", parts[0], forged, parts[2]);
        assert_eq!(signer.verify(&tampered), Err(AuthError::BadSignature));
        let none_alg = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#),
            forged
        );
        assert!(matches!(
            signer.verify(&none_alg),
            Err(AuthError::MalformedToken(_))
        ));
        assert!(signer.verify("abc").is_err());

        let expired = signer.sign(&Claims {
            iss: "sf".into(),
            sub: ("demo".into(), "k1".into()),
            nonce: "n1".into(),
            iat: 1,
            exp: 2,
        });
        assert_eq!(signer.verify(&expired), Err(AuthError::Expired));
    }

    #[test]
    fn failures_are_limited_per_client_and_namespace() {
        let limiter = FailureLimiter::default();
        let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
        for _ in 0..AUTH_FAILURES_ALLOWED {
            assert!(limiter.blocked(ip, "demo").is_none());
            assert!(limiter.begin(ip, "demo").is_ok());
        }
        let wait = limiter.blocked(ip, "demo").expect("blocked");
        assert!(wait <= AUTH_FAILURE_WINDOW && wait > Duration::from_secs(50));
        assert!(limiter.blocked(ip, "other").is_none());
        assert!(
            limiter
                .blocked(IpAddr::V4(Ipv4Addr::BROADCAST), "demo")
                .is_none()
        );
        limiter.clear(ip, "demo");
        assert!(limiter.blocked(ip, "demo").is_none());
    }

    #[test]
    fn attempts_count_before_the_check_and_a_full_table_keeps_counting() {
        let limiter = FailureLimiter::default();
        let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
        // Parallel attempts: each counts on the way in, the sixth is refused.
        for _ in 0..AUTH_FAILURES_ALLOWED {
            assert!(limiter.begin(ip, "system").is_ok());
        }
        assert!(limiter.begin(ip, "system").is_err());
        // A success takes the count back.
        limiter.clear(ip, "system");
        assert!(limiter.begin(ip, "system").is_ok());
        // A flood of other clients fills the table: counting goes on for new ones.
        for i in 0..LIMITER_CAPACITY {
            let other = IpAddr::V4(Ipv4Addr::from(u32::try_from(i).unwrap_or(0) + 1));
            assert!(limiter.begin(other, "system").is_ok());
        }
        let late = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 9));
        for _ in 0..AUTH_FAILURES_ALLOWED {
            assert!(limiter.begin(late, "system").is_ok());
        }
        assert!(limiter.begin(late, "system").is_err(), "still limited");
    }

    #[test]
    fn bearer_tokens_are_read() {
        let mut headers = HeaderMap::new();
        assert_eq!(bearer_token(&headers), None);
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer abc"),
        );
        assert_eq!(bearer_token(&headers), Some("abc"));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer_token(&headers), None);
    }
}
