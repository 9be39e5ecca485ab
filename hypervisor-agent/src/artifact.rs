//! `artifact_fetch`: download an artifact's bytes into a blob file on this node.
//!
//! Contract:
//! - [`fetch`] makes `<blobs dir>/<blob>` hold the bytes at `source_url`
//!   (`http://`, `https://` or `file://`), and reports what it holds ([`Fetched`]:
//!   size, lower-case hex SHA-512, MIME type). The agent writes nothing else: the
//!   artifact controller records versions and Blobs from this result.
//! - Atomic: bytes stream into `<blob>.partial` while they are hashed and counted;
//!   the file is fsync'd, renamed to `<blob>` and the directory fsync'd. A failure,
//!   or the operation being dropped midway (aborted, agent shutting down), removes
//!   the partial file; one left by a crash is removed before the next attempt. The
//!   real name only ever holds a complete, verified file.
//! - Idempotent: when `<blob>` already exists it is hashed instead of downloaded; with
//!   no expected checksum, or the expected one, that is the result
//!   (`downloaded: false`). A different existing file is [`FetchError::BlobMismatch`]
//!   and is left alone (instances may use it as a backing file).
//! - Verified: with an expected `sha512` (a replica of an existing blob) a download
//!   hashing otherwise is [`FetchError::ChecksumMismatch`], naming both; nothing is
//!   kept. An expected `size` is checked too.
//! - Bounded: a body larger than `max_bytes` (by `Content-Length` or as counted) is
//!   [`FetchError::TooLarge`], so a runaway download cannot fill the disk.
//! - HTTP: up to [`MAX_REDIRECTS`] redirects are followed; a non-2xx answer is
//!   [`FetchError::Http`] with the status code (retryable: the operation queue
//!   retries with backoff); connection failures and a body silent for
//!   `idle_timeout` are retryable too. TLS uses rustls with the ring provider and the
//!   system's root certificates.
//! - MIME type: the response's `Content-Type` unless absent or generic
//!   (`application/octet-stream`), else sniffed from the first bytes (qcow2, gzip,
//!   xz, bzip2, VMDK, ISO 9660, PNG).
//! - Where it may connect ([`AddressPolicy`]): a tenant's artifact (any namespace but
//!   `system`) is fetched only from external addresses. Every hop, redirects
//!   included, is checked: an IP literal before connecting, a name on the addresses it
//!   resolves to, and the connection goes only to the addresses checked (no second
//!   lookup a DNS answer could change in between). Refused: an internal address
//!   ([`sf_schema::addresses::is_internal`]) outside the operator's allowed blocks,
//!   and always the operator's denied blocks (the control plane's public addresses)
//!   and this host's own addresses ([`host_addresses`]): [`FetchError::InternalAddress`].
//!   A `file://` source is [`FetchError::SourceRefused`]; neither is retried. The
//!   system namespace's artifacts may use any address and `file://`
//!   ([`AddressPolicy::Any`], which callers choose explicitly: [`FetchSettings::new`]
//!   starts from the tenant's policy). A redirect to a scheme other than
//!   `http`/`https` is refused for all.
//! - The per-operation heartbeat of the claim loop keeps the lease alive however long
//!   a download takes; the error report's `retryable` comes from
//!   [`FetchError::retryable`].

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use sf_schema::addresses::{Cidr, is_internal};
use sha2::{Digest, Sha512};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Redirects followed before giving up.
pub const MAX_REDIRECTS: usize = 10;

/// How many leading bytes are kept to sniff the MIME type.
const HEAD_BYTES: usize = 0x8006;

/// Read size for `file://` sources and existing blobs.
const CHUNK: usize = 1 << 20;

/// Why a fetch failed; becomes the operation's error report.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The payload is malformed.
    #[error("bad artifact_fetch payload: {0}")]
    BadRequest(String),
    /// The URL's scheme is not fetched here.
    #[error("cannot fetch {0}: only http://, https:// and file:// sources are supported")]
    UnsupportedSource(String),
    /// The server answered with an error status.
    #[error("GET {url}: HTTP {status}")]
    Http {
        /// The URL requested (after redirects).
        url: String,
        /// The status code.
        status: u16,
    },
    /// The connection or the response failed.
    #[error("GET {url}: {message}")]
    Transfer {
        /// The URL requested.
        url: String,
        /// What went wrong.
        message: String,
    },
    /// The body stalled.
    #[error("GET {url}: no data for {secs} s")]
    Stalled {
        /// The URL requested.
        url: String,
        /// The idle timeout.
        secs: u64,
    },
    /// Redirects did not end.
    #[error("GET {url}: more than {MAX_REDIRECTS} redirects")]
    TooManyRedirects {
        /// The first URL.
        url: String,
    },
    /// The bytes exceed the configured limit.
    #[error("{url} is larger than the {limit} bytes allowed (SHAKENFIST_ARTIFACT_MAX_BYTES)")]
    TooLarge {
        /// The source.
        url: String,
        /// The limit.
        limit: u64,
    },
    /// The download does not hash to the expected checksum.
    #[error(
        "checksum mismatch for blob {blob} from {url}: expected sha512 {expected}, got {got} ({size} bytes)"
    )]
    ChecksumMismatch {
        /// The blob.
        blob: String,
        /// The source.
        url: String,
        /// The expected SHA-512.
        expected: String,
        /// The SHA-512 of what was downloaded.
        got: String,
        /// How many bytes were downloaded.
        size: u64,
    },
    /// The download's size is not the expected one.
    #[error("size mismatch for blob {blob} from {url}: expected {expected} bytes, got {got}")]
    SizeMismatch {
        /// The blob.
        blob: String,
        /// The source.
        url: String,
        /// Expected size.
        expected: u64,
        /// Downloaded size.
        got: u64,
    },
    /// A blob file of that name exists with other bytes.
    #[error("{path} exists with sha512 {got}, not the expected {expected}; left alone")]
    BlobMismatch {
        /// The blob file.
        path: PathBuf,
        /// The expected SHA-512.
        expected: String,
        /// The existing file's SHA-512.
        got: String,
    },
    /// A tenant's source reaches an internal address.
    #[error(
        "GET {url}: {} an internal address; a tenant's artifacts are fetched only from \
         external addresses (an operator can allow blocks with \
         SHAKENFIST_ARTIFACT_TENANT_ALLOWED_CIDRS)",
        host_is(.host, .address)
    )]
    InternalAddress {
        /// The URL of the hop refused (after redirects).
        url: String,
        /// Its host as written.
        host: String,
        /// The internal address it is or resolves to.
        address: IpAddr,
    },
    /// A tenant's source names a file of the hypervisor.
    #[error("{0}: a tenant's artifacts cannot be fetched from the hypervisor's own files")]
    SourceRefused(String),
    /// A `file://` source does not exist.
    #[error("source {0} does not exist")]
    SourceNotFound(PathBuf),
    /// TLS could not be set up (no root certificates).
    #[error("TLS for {url}: {message}")]
    Tls {
        /// The URL.
        url: String,
        /// Why.
        message: String,
    },
    /// A local file operation failed.
    #[error(transparent)]
    Io(#[from] crate::FileError),
}

impl FetchError {
    /// The error report code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::BadRequest(_) => "BadOperation",
            Self::UnsupportedSource(_) => "UnsupportedSource",
            Self::Http { .. } => "HttpError",
            Self::Transfer { .. } => "DownloadFailed",
            Self::Stalled { .. } => "DownloadStalled",
            Self::TooManyRedirects { .. } => "TooManyRedirects",
            Self::TooLarge { .. } => "TooLarge",
            Self::ChecksumMismatch { .. } => "ChecksumMismatch",
            Self::SizeMismatch { .. } => "SizeMismatch",
            Self::BlobMismatch { .. } => "BlobMismatch",
            Self::InternalAddress { .. } => "InternalAddressRefused",
            Self::SourceRefused(_) => "SourceRefused",
            Self::SourceNotFound(_) => "SourceNotFound",
            Self::Tls { .. } => "TlsUnavailable",
            Self::Io(_) => "StorageIoFailed",
        }
    }

    /// Whether trying again may succeed.
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            Self::Http { .. } | Self::Transfer { .. } | Self::Stalled { .. } | Self::Io(_)
        )
    }
}

/// `127.0.0.2 is` for a literal, `mirror resolves to 10.0.0.5,` for a name.
fn host_is(host: &str, address: &IpAddr) -> String {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if bare.parse::<IpAddr>().is_ok_and(|ip| ip == *address) {
        format!("{host} is")
    } else {
        format!("{host} resolves to {address},")
    }
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> FetchError {
    let failed = crate::FileError::of(action, path);
    move |source| FetchError::Io(failed(source))
}

/// Where and how much may be fetched.
#[derive(Debug, Clone)]
pub struct FetchSettings {
    /// `<STORAGE_PATH>/blobs`.
    pub blobs_dir: PathBuf,
    /// The largest download accepted.
    pub max_bytes: u64,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// A body silent this long fails (retryable).
    pub idle_timeout: Duration,
    /// Where the fetch may connect.
    pub policy: AddressPolicy,
}

/// Where a fetch may connect (see the module contract).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddressPolicy {
    /// Any address, and `file://`: the system namespace's artifacts.
    Any,
    /// External addresses but `denied`, and internal ones inside `allowed`; no
    /// `file://`: a tenant's artifacts.
    External {
        /// Internal blocks the operator allows (local mirrors).
        allowed: Vec<Cidr>,
        /// Blocks never reached, internal or not (the control plane's public
        /// addresses, this host's own); they win over `allowed`.
        denied: Vec<Cidr>,
    },
}

impl Default for AddressPolicy {
    /// A tenant's, with no exceptions: whoever forgets to choose gets the safe one.
    fn default() -> Self {
        Self::External {
            allowed: Vec::new(),
            denied: Vec::new(),
        }
    }
}

impl AddressPolicy {
    /// The policy for an artifact in `namespace` (`None`: unknown, treated as a
    /// tenant's): a tenant's allows `tenant_allowed` and refuses `tenant_denied`.
    pub fn for_namespace(
        namespace: Option<&str>,
        tenant_allowed: &[Cidr],
        tenant_denied: &[Cidr],
    ) -> Self {
        if namespace == Some(sf_schema::namespace::SYSTEM_NAMESPACE) {
            Self::Any
        } else {
            Self::External {
                allowed: tenant_allowed.to_vec(),
                denied: tenant_denied.to_vec(),
            }
        }
    }

    /// Whether `ip` may not be connected to.
    pub fn refuses(&self, ip: IpAddr) -> bool {
        match self {
            Self::Any => false,
            Self::External { allowed, denied } => {
                denied.iter().any(|block| block.contains(ip))
                    || (is_internal(ip) && !allowed.iter().any(|block| block.contains(ip)))
            }
        }
    }
}

/// This host's own external addresses (every interface of the agent's network
/// namespace), as single-address blocks: a tenant's download must not reach services
/// listening on the hypervisor's public address. Its internal ones are refused already
/// unless the operator allowed them. Empty when they cannot be listed (logged).
pub fn host_addresses() -> Vec<Cidr> {
    let Ok(interfaces) = nix::ifaddrs::getifaddrs().inspect_err(|e| {
        tracing::warn!(error = %e, "cannot list this host's addresses");
    }) else {
        return Vec::new();
    };
    let mut blocks: Vec<Cidr> = interfaces
        .filter_map(|i| {
            let address = i.address?;
            let ip = match (address.as_sockaddr_in(), address.as_sockaddr_in6()) {
                (Some(v4), _) => IpAddr::V4(v4.ip()),
                (_, Some(v6)) => IpAddr::V6(v6.ip()),
                _ => return None,
            };
            (!is_internal(ip))
                .then(|| Cidr::parse(&ip.to_string()).ok())
                .flatten()
        })
        .collect();
    blocks.dedup();
    blocks
}

impl FetchSettings {
    /// Settings for `blobs_dir` with `max_bytes`, the default timeouts (30 s to
    /// connect, 120 s of silence) and a tenant's address policy with no exceptions.
    pub fn new(blobs_dir: PathBuf, max_bytes: u64) -> Self {
        Self {
            blobs_dir,
            max_bytes,
            connect_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(120),
            policy: AddressPolicy::default(),
        }
    }
}

/// What to fetch (an `artifact_fetch` payload).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchRequest {
    /// `http(s)://` or `file://`.
    pub source_url: String,
    /// The blob (a UUID): the file name under the blobs directory.
    pub blob: String,
    /// The expected lower-case hex SHA-512 (a replica), if any.
    pub sha512: Option<String>,
    /// The expected size (a replica), if any.
    pub size: Option<u64>,
}

impl FetchRequest {
    /// The request in an `artifact_fetch` payload
    /// (`{"sourceUrl", "blob", "sha512"?, "size"?}`).
    pub fn from_payload(payload: &Value) -> Result<Self, FetchError> {
        let text = |key: &str| payload[key].as_str().map(str::to_owned);
        let source_url = text("sourceUrl")
            .filter(|u| !u.is_empty())
            .ok_or_else(|| FetchError::BadRequest("no sourceUrl".into()))?;
        let blob = text("blob")
            .filter(|b| uuid::Uuid::parse_str(b).is_ok() && !b.contains('/'))
            .ok_or_else(|| FetchError::BadRequest("blob must be a UUID".into()))?;
        let sha512 = match &payload["sha512"] {
            Value::Null => None,
            Value::String(s) if is_sha512(s) => Some(s.clone()),
            other => {
                return Err(FetchError::BadRequest(format!(
                    "sha512 must be 128 lower-case hex digits, got {other}"
                )));
            }
        };
        let size = match &payload["size"] {
            Value::Null => None,
            v => Some(v.as_u64().ok_or_else(|| {
                FetchError::BadRequest(format!("size must be a byte count, got {v}"))
            })?),
        };
        Ok(Self {
            source_url,
            blob,
            sha512,
            size,
        })
    }
}

fn is_sha512(text: &str) -> bool {
    text.len() == 128
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// What the blob file holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    /// The blob.
    pub blob: String,
    /// The file.
    pub path: PathBuf,
    /// Size in bytes.
    pub size: u64,
    /// Lower-case hex SHA-512.
    pub sha512: String,
    /// The MIME type.
    pub mime_type: String,
    /// Whether bytes were transferred (false: the file was already there).
    pub downloaded: bool,
}

impl Fetched {
    /// The operation result the artifact controller reads (`sf_plan::artifact::FetchResult`).
    pub fn to_result(&self, node: &str) -> Value {
        json!({
            "blob": self.blob,
            "size": self.size,
            "sha512": self.sha512,
            "mimeType": self.mime_type,
            "node": node,
            "downloaded": self.downloaded,
        })
    }
}

/// The path of blob `blob` under `blobs_dir`.
pub fn blob_path(blobs_dir: &Path, blob: &str) -> PathBuf {
    blobs_dir.join(blob)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The MIME type of bytes starting with `head`.
pub fn sniff_mime(head: &[u8]) -> &'static str {
    let at = |offset: usize, magic: &[u8]| head.get(offset..offset + magic.len()) == Some(magic);
    if at(0, b"QFI\xfb") {
        "application/x-qemu-disk"
    } else if at(0, b"\x1f\x8b") {
        "application/gzip"
    } else if at(0, b"\xfd7zXZ\x00") {
        "application/x-xz"
    } else if at(0, b"BZh") {
        "application/x-bzip2"
    } else if at(0, b"KDMV") {
        "application/x-vmdk"
    } else if at(0, b"\x89PNG\r\n\x1a\n") {
        "image/png"
    } else if at(0x8001, b"CD001") {
        "application/x-iso9660-image"
    } else {
        "application/octet-stream"
    }
}

/// The partial file of a download; removed on drop unless kept.
struct Partial {
    path: PathBuf,
    file: Option<tokio::fs::File>,
    hasher: Sha512,
    size: u64,
    head: Vec<u8>,
    limit: u64,
    url: String,
}

impl Partial {
    async fn create(path: PathBuf, limit: u64, url: &str) -> Result<Self, FetchError> {
        match tokio::fs::remove_file(&path).await {
            Ok(()) => {
                tracing::info!(path = %path.display(), "removed a partial download left by a crash")
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("remove", &path)(e)),
        }
        let file = tokio::fs::File::create(&path)
            .await
            .map_err(io("create", &path))?;
        Ok(Self {
            path,
            file: Some(file),
            hasher: Sha512::new(),
            size: 0,
            head: Vec::new(),
            limit,
            url: url.to_owned(),
        })
    }

    async fn write(&mut self, chunk: &[u8]) -> Result<(), FetchError> {
        let len = u64::try_from(chunk.len()).unwrap_or(u64::MAX);
        self.size = self.size.saturating_add(len);
        if self.size > self.limit {
            return Err(FetchError::TooLarge {
                url: self.url.clone(),
                limit: self.limit,
            });
        }
        if self.head.len() < HEAD_BYTES {
            let take = (HEAD_BYTES - self.head.len()).min(chunk.len());
            self.head.extend_from_slice(&chunk[..take]);
        }
        self.hasher.update(chunk);
        let path = self.path.clone();
        let file = self.file.as_mut().ok_or_else(|| {
            FetchError::Io(crate::FileError {
                action: "write",
                path: path.clone(),
                source: std::io::Error::other("already closed"),
            })
        })?;
        file.write_all(chunk).await.map_err(io("write", &path))
    }

    /// Flushes and fsyncs; returns (size, sha512, head).
    async fn finish(&mut self) -> Result<(u64, String, Vec<u8>), FetchError> {
        if let Some(mut file) = self.file.take() {
            file.flush().await.map_err(io("flush", &self.path))?;
            file.sync_all().await.map_err(io("fsync", &self.path))?;
        }
        let hasher = std::mem::replace(&mut self.hasher, Sha512::new());
        Ok((
            self.size,
            hex(&hasher.finalize()),
            std::mem::take(&mut self.head),
        ))
    }
}

impl Drop for Partial {
    fn drop(&mut self) {
        // Renamed away on success (then this finds nothing); otherwise never leave a
        // partial file behind, even when the download future is dropped midway.
        self.file = None;
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Hashes an existing file: (size, sha512, head).
pub(crate) async fn hash_file(path: &Path) -> Result<(u64, String, Vec<u8>), FetchError> {
    let mut file = tokio::fs::File::open(path)
        .await
        .map_err(io("open", path))?;
    let mut hasher = Sha512::new();
    let mut head = Vec::new();
    let mut size = 0u64;
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = file.read(&mut buf).await.map_err(io("read", path))?;
        if n == 0 {
            break;
        }
        if head.len() < HEAD_BYTES {
            let take = (HEAD_BYTES - head.len()).min(n);
            head.extend_from_slice(&buf[..take]);
        }
        hasher.update(&buf[..n]);
        size = size.saturating_add(u64::try_from(n).unwrap_or(u64::MAX));
    }
    Ok((size, hex(&hasher.finalize()), head))
}

/// Fetches `request` (see the module contract).
pub async fn fetch(
    settings: &FetchSettings,
    request: &FetchRequest,
) -> Result<Fetched, FetchError> {
    let dir = &settings.blobs_dir;
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(io("create directory", dir))?;
    let path = blob_path(dir, &request.blob);
    if tokio::fs::try_exists(&path)
        .await
        .map_err(io("check", &path))?
    {
        let (size, sha512, head) = hash_file(&path).await?;
        if let Some(expected) = &request.sha512
            && *expected != sha512
        {
            return Err(FetchError::BlobMismatch {
                path,
                expected: expected.clone(),
                got: sha512,
            });
        }
        return Ok(Fetched {
            blob: request.blob.clone(),
            path,
            size,
            sha512,
            mime_type: sniff_mime(&head).to_owned(),
            downloaded: false,
        });
    }

    let url = request.source_url.as_str();
    let mut partial_name = request.blob.clone();
    partial_name.push_str(".partial");
    let mut partial = Partial::create(dir.join(partial_name), settings.max_bytes, url).await?;
    let content_type = match scheme_of(url).as_str() {
        "http" | "https" => download(settings, url, &mut partial).await?,
        "file" if settings.policy != AddressPolicy::Any => {
            return Err(FetchError::SourceRefused(url.to_owned()));
        }
        "file" => {
            copy_file(url, &mut partial).await?;
            None
        }
        _ => return Err(FetchError::UnsupportedSource(url.to_owned())),
    };
    let (size, sha512, head) = partial.finish().await?;
    if let Some(expected) = &request.sha512
        && *expected != sha512
    {
        return Err(FetchError::ChecksumMismatch {
            blob: request.blob.clone(),
            url: url.to_owned(),
            expected: expected.clone(),
            got: sha512,
            size,
        });
    }
    if let Some(expected) = request.size
        && expected != size
    {
        return Err(FetchError::SizeMismatch {
            blob: request.blob.clone(),
            url: url.to_owned(),
            expected,
            got: size,
        });
    }
    tokio::fs::rename(&partial.path, &path)
        .await
        .map_err(io("rename into", &path))?;
    // The rename is durable once the directory is.
    let dir_file = tokio::fs::File::open(dir)
        .await
        .map_err(io("open directory", dir))?;
    dir_file.sync_all().await.map_err(io("fsync", dir))?;
    let mime_type = content_type
        .filter(|t| !t.is_empty() && t != "application/octet-stream" && t != "binary/octet-stream")
        .unwrap_or_else(|| sniff_mime(&head).to_owned());
    tracing::info!(blob = %request.blob, %url, size, "artifact fetched");
    Ok(Fetched {
        blob: request.blob.clone(),
        path,
        size,
        sha512,
        mime_type,
        downloaded: true,
    })
}

/// Copies a `file://` source into `partial`.
async fn copy_file(url: &str, partial: &mut Partial) -> Result<(), FetchError> {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or_default();
    let rest = rest.strip_prefix("localhost").unwrap_or(rest);
    if !rest.starts_with('/') {
        return Err(FetchError::BadRequest(format!(
            "{url}: a file:// URL needs an absolute path"
        )));
    }
    let source = PathBuf::from(rest);
    let mut file = match tokio::fs::File::open(&source).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(FetchError::SourceNotFound(source));
        }
        Err(e) => return Err(io("open", &source)(e)),
    };
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = file.read(&mut buf).await.map_err(io("read", &source))?;
        if n == 0 {
            return Ok(());
        }
        partial.write(&buf[..n]).await?;
    }
}

type HttpsClient =
    Client<hyper_rustls::HttpsConnector<HttpConnector<CheckedResolver>>, Empty<Bytes>>;

/// The connector's DNS resolver: looks a name up (as the default resolver does, with
/// `getaddrinfo` off the runtime) and hands the connector only addresses the policy
/// accepts. A name with any refused address fails, and the address is kept in
/// `refused` so the fetch can report it.
#[derive(Clone)]
struct CheckedResolver {
    policy: Arc<AddressPolicy>,
    refused: Arc<Mutex<Option<IpAddr>>>,
}

type Resolving =
    Pin<Box<dyn Future<Output = Result<std::vec::IntoIter<SocketAddr>, std::io::Error>> + Send>>;

impl tower::Service<Name> for CheckedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = std::io::Error;
    type Future = Resolving;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let policy = Arc::clone(&self.policy);
        let refused = Arc::clone(&self.refused);
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((name.as_str(), 0)).await?.collect();
            if let Some(bad) = addrs
                .iter()
                .map(SocketAddr::ip)
                .find(|ip| policy.refuses(*ip))
            {
                if let Ok(mut slot) = refused.lock() {
                    *slot = Some(bad);
                }
                return Err(std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    format!("{name} resolves to the internal address {bad}"),
                ));
            }
            Ok(addrs.into_iter())
        })
    }
}

fn client(
    settings: &FetchSettings,
    url: &str,
    resolver: CheckedResolver,
) -> Result<HttpsClient, FetchError> {
    let provider = rustls::crypto::ring::default_provider();
    let tls = |message: String| FetchError::Tls {
        url: url.to_owned(),
        message,
    };
    let builder = if url.to_ascii_lowercase().starts_with("https://") {
        hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_native_roots(provider)
            .map_err(|e| tls(format!("no usable root certificates: {e}")))?
    } else {
        // Plain HTTP never uses TLS, but a redirect to https:// must fail cleanly.
        let config = rustls::ClientConfig::builder_with_provider(provider.into())
            .with_safe_default_protocol_versions()
            .map_err(|e| tls(e.to_string()))?
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(config)
    };
    let mut http = HttpConnector::new_with_resolver(resolver);
    http.enforce_http(false);
    http.set_connect_timeout(Some(settings.connect_timeout));
    let connector = builder.https_or_http().enable_http1().wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new()).build(connector))
}

/// The lower-case scheme of `url` (`<scheme>://...`), empty when it has none.
fn scheme_of(url: &str) -> String {
    url.split_once("://")
        .map(|(s, _)| s.to_ascii_lowercase())
        .unwrap_or_default()
}

/// The absolute URL a redirect's `Location` names, relative to `base`.
fn resolve_location(base: &http::Uri, location: &str) -> Option<String> {
    // Absolute when it starts with a scheme (RFC 3986: a letter, then letters,
    // digits, `+`, `-` or `.`, then `:`); a `://` further on (in a query) is not one.
    let has_scheme = location.split_once(':').is_some_and(|(scheme, _)| {
        scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    });
    if has_scheme {
        return Some(location.to_owned());
    }
    let scheme = base.scheme_str()?;
    let authority = base.authority()?.as_str();
    if location.starts_with("//") {
        return Some(format!("{scheme}:{location}"));
    }
    if location.starts_with('/') {
        return Some(format!("{scheme}://{authority}{location}"));
    }
    let path = base.path();
    let dir = path.rsplit_once('/').map_or("", |(d, _)| d);
    Some(format!("{scheme}://{authority}{dir}/{location}"))
}

/// Downloads `url` into `partial`; returns the Content-Type.
async fn download(
    settings: &FetchSettings,
    url: &str,
    partial: &mut Partial,
) -> Result<Option<String>, FetchError> {
    let transfer = |url: &str, message: String| FetchError::Transfer {
        url: url.to_owned(),
        message,
    };
    let mut current = url.to_owned();
    let mut hops = 0;
    let response = loop {
        if !matches!(scheme_of(&current).as_str(), "http" | "https") {
            return Err(FetchError::UnsupportedSource(current));
        }
        let uri: http::Uri = current
            .parse()
            .map_err(|e| FetchError::BadRequest(format!("{current}: {e}")))?;
        let host = uri.host().unwrap_or_default().to_owned();
        let refused = |address: IpAddr| FetchError::InternalAddress {
            url: current.clone(),
            host: host.clone(),
            address,
        };
        // An IP literal never reaches the resolver: check it here.
        if let Ok(ip) = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            && settings.policy.refuses(ip)
        {
            return Err(refused(ip));
        }
        let resolver = CheckedResolver {
            policy: Arc::new(settings.policy.clone()),
            refused: Arc::new(Mutex::new(None)),
        };
        let refusal = Arc::clone(&resolver.refused);
        let request = http::Request::get(uri.clone())
            .header(http::header::USER_AGENT, "sf-agent")
            .body(Empty::<Bytes>::new())
            .map_err(|e| FetchError::BadRequest(format!("{current}: {e}")))?;
        let response = tokio::time::timeout(
            settings.connect_timeout + settings.idle_timeout,
            client(settings, &current, resolver)?.request(request),
        )
        .await
        .map_err(|_| FetchError::Stalled {
            url: current.clone(),
            secs: (settings.connect_timeout + settings.idle_timeout).as_secs(),
        })?
        .map_err(|e| match refusal.lock().ok().and_then(|slot| *slot) {
            Some(ip) => refused(ip),
            None => transfer(&current, error_chain(&e)),
        })?;
        let status = response.status();
        if status.is_redirection() {
            let location = response
                .headers()
                .get(http::header::LOCATION)
                .and_then(|l| l.to_str().ok())
                .and_then(|l| resolve_location(&uri, l));
            if let Some(next) = location {
                hops += 1;
                if hops > MAX_REDIRECTS {
                    return Err(FetchError::TooManyRedirects {
                        url: url.to_owned(),
                    });
                }
                current = next;
                continue;
            }
        }
        if !status.is_success() {
            return Err(FetchError::Http {
                url: current,
                status: status.as_u16(),
            });
        }
        break response;
    };
    let content_length = response
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if content_length.is_some_and(|n| n > partial.limit) {
        return Err(FetchError::TooLarge {
            url: current,
            limit: partial.limit,
        });
    }
    let content_type = response
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        });
    let mut body = response.into_body();
    loop {
        let frame = tokio::time::timeout(settings.idle_timeout, body.frame())
            .await
            .map_err(|_| FetchError::Stalled {
                url: current.clone(),
                secs: settings.idle_timeout.as_secs(),
            })?;
        let Some(frame) = frame else {
            break;
        };
        let frame = frame.map_err(|e| transfer(&current, error_chain(&e)))?;
        if let Ok(data) = frame.into_data() {
            partial.write(&data).await?;
        }
    }
    if let Some(expected) = content_length
        && expected != partial.size
    {
        return Err(transfer(
            &current,
            format!("the body ended after {} of {expected} bytes", partial.size),
        ));
    }
    Ok(content_type)
}

/// An error and its sources, `: `-joined (hyper's top-level messages say little).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_are_checked() {
        let sum: String = std::iter::repeat_n('0', 128).collect();
        let ok = json!({"sourceUrl": "http://x/y", "blob": "0b8c3f4e-1111-4222-8333-444455556666",
                        "sha512": sum, "size": 5});
        let r = FetchRequest::from_payload(&ok).expect("valid");
        assert_eq!(r.size, Some(5));
        assert_eq!(r.sha512.as_deref(), Some(sum.as_str()));
        for bad in [
            json!({"blob": "0b8c3f4e-1111-4222-8333-444455556666"}),
            json!({"sourceUrl": "http://x/y", "blob": "../../etc/passwd"}),
            json!({"sourceUrl": "http://x/y", "blob": "0b8c3f4e-1111-4222-8333-444455556666", "sha512": "ABC"}),
            json!({"sourceUrl": "http://x/y", "blob": "0b8c3f4e-1111-4222-8333-444455556666", "size": "x"}),
        ] {
            let err = FetchRequest::from_payload(&bad).expect_err("invalid");
            assert_eq!(err.code(), "BadOperation", "{bad}");
            assert!(!err.retryable());
        }
    }

    #[test]
    fn mime_types_are_sniffed() {
        assert_eq!(sniff_mime(b"QFI\xfb\0\0\0\x03"), "application/x-qemu-disk");
        assert_eq!(sniff_mime(b"\x1f\x8b\x08"), "application/gzip");
        assert_eq!(sniff_mime(b"hello"), "application/octet-stream");
        let mut iso = vec![0u8; 0x8006];
        iso[0x8001..0x8006].copy_from_slice(b"CD001");
        assert_eq!(sniff_mime(&iso), "application/x-iso9660-image");
    }

    #[test]
    fn redirect_locations_resolve_against_the_request() {
        let base: http::Uri = "http://127.0.0.1:8080/images/a.qcow2".parse().expect("uri");
        let table = [
            ("http://other/x", "http://other/x"),
            ("/b.qcow2", "http://127.0.0.1:8080/b.qcow2"),
            ("c.qcow2", "http://127.0.0.1:8080/images/c.qcow2"),
            ("//mirror/d", "http://mirror/d"),
            (
                "/dl?next=http://x/y",
                "http://127.0.0.1:8080/dl?next=http://x/y",
            ),
            (
                "e.qcow2?from=https://x",
                "http://127.0.0.1:8080/images/e.qcow2?from=https://x",
            ),
            ("HTTPS://Other/z", "HTTPS://Other/z"),
            ("file:///etc/passwd", "file:///etc/passwd"),
        ];
        for (location, want) in table {
            assert_eq!(resolve_location(&base, location).as_deref(), Some(want));
        }
    }

    #[test]
    fn retryable_failures_are_transient_ones() {
        assert!(
            FetchError::Http {
                url: "u".into(),
                status: 404
            }
            .retryable()
        );
        assert!(
            !FetchError::ChecksumMismatch {
                blob: "b".into(),
                url: "u".into(),
                expected: "e".into(),
                got: "g".into(),
                size: 1
            }
            .retryable()
        );
        assert!(
            !FetchError::TooLarge {
                url: "u".into(),
                limit: 1
            }
            .retryable()
        );
    }
}
