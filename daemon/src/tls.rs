//! TLS for every daemon's HTTP endpoints (sf-api's API, the agent's metrics): the
//! certificate store, its reloading and renewal, self-signed certificates, and the TLS
//! listener `axum::serve` runs on. Built with the `tls` feature.
//!
//! Contract:
//! - A [`TlsSettings`] names a certificate chain (PEM, leaf first) and a PKCS#8, PKCS#1
//!   or SEC1 key. rustls with the ring provider, TLS 1.2 and 1.3; ALPN offers `h2` and
//!   `http/1.1`.
//! - [`CertStore::load`] reads both files; when neither exists and `self_signed` is on,
//!   it first generates a self-signed certificate for `sans` (DNS names and IP
//!   addresses) with `common_name`, valid for [`SELF_SIGNED_DAYS`], and writes the key
//!   with mode 0600 and the certificate with 0644 (each through a temporary file and a
//!   rename). One file without the other, or missing files without self-signing, is an
//!   error: the daemon does not start.
//! - Renewal: with `self_signed` on and `renew_before` set, a self-issued certificate
//!   (issuer = subject: one this module made, never an operator's CA-signed one) whose
//!   notAfter is closer than `renew_before` is replaced by a fresh pair at load and at
//!   every reload check.
//! - [`CertStore::run_reloader`] re-checks the files every `reload_interval` and on
//!   SIGHUP; changed contents whose key matches the certificate replace the served
//!   certificate for new handshakes (open connections keep theirs). A pair that does
//!   not parse or does not match (e.g. half-way through a rotation) is logged and the
//!   old one kept. With self-signing on, deleted files are generated anew.
//! - [`TlsListener`] accepts TCP (TCP_NODELAY on), runs each handshake in its own task
//!   (at most 10 s) so a slow client never holds up the others, and yields finished
//!   TLS streams with the peer address.

use std::fmt;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use crate::Shutdown;
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// The longest a TLS handshake may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a generated self-signed certificate is valid, in days.
pub const SELF_SIGNED_DAYS: i64 = 365;

/// What went wrong with the certificate or key.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The files do not exist and self-signing is off.
    #[error(
        "{path} does not exist (set SHAKENFIST_API_TLS_SELF_SIGNED=true to generate a self-signed certificate)"
    )]
    Missing {
        /// The missing file.
        path: PathBuf,
    },
    /// Only one of the two files exists.
    #[error("{present} exists but {missing} does not: give both or neither")]
    Partial {
        /// The file that exists.
        present: PathBuf,
        /// The file that does not.
        missing: PathBuf,
    },
    /// The certificate file holds no usable certificate.
    #[error("{path}: no PEM certificate: {reason}")]
    Certificate {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The key file holds no usable key.
    #[error("{path}: no usable PEM private key: {reason}")]
    Key {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The key does not belong to the certificate.
    #[error("the key in {key} does not match the certificate in {cert}: {reason}")]
    Mismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// rustls's words.
        reason: String,
    },
    /// Generating the self-signed certificate failed.
    #[error("cannot generate a self-signed certificate for {sans:?}: {reason}")]
    Generate {
        /// The subject alternative names asked for.
        sans: Vec<String>,
        /// Why.
        reason: String,
    },
    /// rustls refused the server configuration.
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// Where the certificate comes from, and how it is kept fresh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// The certificate chain (PEM).
    pub cert_path: PathBuf,
    /// The private key (PEM).
    pub key_path: PathBuf,
    /// Generate a self-signed pair when neither file exists.
    pub self_signed: bool,
    /// The names a generated certificate is for.
    pub sans: Vec<String>,
    /// The common name of a generated certificate (e.g. `sf-api`, `sf-agent hv1`).
    pub common_name: String,
    /// How often the files are checked for changes (and for renewal).
    pub reload_interval: Duration,
    /// Replace a self-issued certificate this close to its notAfter (self-signing on).
    pub renew_before: Option<Duration>,
}

/// The raw file contents a served certificate was built from.
#[derive(PartialEq, Eq)]
struct Loaded {
    cert: Vec<u8>,
    key: Vec<u8>,
}

/// The certificate sf-api serves, swapped in place when its files change.
pub struct CertStore {
    settings: TlsSettings,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
    loaded: Mutex<Loaded>,
}

impl fmt::Debug for CertStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertStore")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(match self.current.read() {
            Ok(current) => current.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        })
    }
}

fn exists(path: &Path) -> bool {
    path.try_exists().unwrap_or(true)
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes `bytes` to `path` with `mode`, through a temporary file and a rename.
fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), TlsError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let err = |source| TlsError::Write {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(err)?;
    file.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(err)?;
    file.write_all(bytes).map_err(err)?;
    file.sync_all().map_err(err)?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(err)
}

/// A self-signed certificate and its key (PEM) for `sans`, valid from yesterday for
/// `days` days.
pub fn self_signed(
    sans: &[String],
    common_name: &str,
    days: i64,
) -> Result<(String, String), TlsError> {
    let fail = |reason: String| TlsError::Generate {
        sans: sans.to_vec(),
        reason,
    };
    let mut params =
        rcgen::CertificateParams::new(sans.to_vec()).map_err(|e| fail(e.to_string()))?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, common_name);
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let day = |offset: i64| {
        use chrono::Datelike;
        let date = (chrono::Utc::now() + chrono::Duration::days(offset)).date_naive();
        // Month and day always fit a u8.
        rcgen::date_time_ymd(
            date.year(),
            u8::try_from(date.month()).unwrap_or(1),
            u8::try_from(date.day()).unwrap_or(1),
        )
    };
    params.not_before = day(-1);
    params.not_after = day(days);
    let key = rcgen::KeyPair::generate().map_err(|e| fail(e.to_string()))?;
    let cert = params.self_signed(&key).map_err(|e| fail(e.to_string()))?;
    Ok((cert.pem(), key.serialize_pem()))
}

impl CertStore {
    /// Loads (generating first when asked and needed) the certificate and key.
    pub fn load(settings: &TlsSettings) -> Result<Arc<Self>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        ensure_files(settings)?;
        let loaded = Loaded {
            cert: read(&settings.cert_path)?,
            key: read(&settings.key_path)?,
        };
        let certified = certified_key(settings, &provider, &loaded)?;
        Ok(Arc::new(Self {
            settings: settings.clone(),
            provider,
            current: RwLock::new(Arc::new(certified)),
            loaded: Mutex::new(loaded),
        }))
    }

    /// The settings.
    pub fn settings(&self) -> &TlsSettings {
        &self.settings
    }

    /// The leaf certificate served now (DER).
    pub fn current_certificate(&self) -> Option<CertificateDer<'static>> {
        self.resolve_current().cert.first().cloned()
    }

    fn resolve_current(&self) -> Arc<CertifiedKey> {
        match self.current.read() {
            Ok(current) => current.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Re-reads the files; `Ok(true)` when a new certificate is now served.
    pub fn reload(&self) -> Result<bool, TlsError> {
        ensure_files(&self.settings)?;
        let fresh = Loaded {
            cert: read(&self.settings.cert_path)?,
            key: read(&self.settings.key_path)?,
        };
        let mut loaded = match self.loaded.lock() {
            Ok(loaded) => loaded,
            Err(poisoned) => poisoned.into_inner(),
        };
        if *loaded == fresh {
            return Ok(false);
        }
        let certified = certified_key(&self.settings, &self.provider, &fresh)?;
        match self.current.write() {
            Ok(mut current) => *current = Arc::new(certified),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(certified),
        }
        *loaded = fresh;
        Ok(true)
    }

    /// The rustls server configuration (ALPN `h2`, `http/1.1`) serving this store.
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<ServerConfig>, TlsError> {
        let mut config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// Reloads every `reload_interval` and on SIGHUP until `shutdown`.
    pub async fn run_reloader(self: Arc<Self>, shutdown: Shutdown) {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hangup = match signal(SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch SIGHUP; certificates reload on the timer only");
                None
            }
        };
        let mut tick = tokio::time::interval(self.settings.reload_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        let stop = shutdown.wait_owned();
        tokio::pin!(stop);
        loop {
            let cause = tokio::select! {
                () = &mut stop => return,
                _ = tick.tick() => "timer",
                Some(()) = async {
                    match hangup.as_mut() {
                        Some(h) => h.recv().await,
                        None => std::future::pending().await,
                    }
                } => "SIGHUP",
            };
            let store = self.clone();
            match tokio::task::spawn_blocking(move || store.reload()).await {
                Ok(Ok(true)) => tracing::info!(
                    cause,
                    cert = %self.settings.cert_path.display(),
                    "TLS certificate reloaded"
                ),
                Ok(Ok(false)) => tracing::debug!(cause, "TLS certificate unchanged"),
                Ok(Err(e)) => tracing::warn!(
                    cause,
                    error = %e,
                    "TLS certificate not reloaded; serving the previous one"
                ),
                Err(e) => tracing::warn!(error = %e, "TLS reload task failed"),
            }
        }
    }
}

/// Writes a fresh self-signed pair (key first: a reader that sees the new certificate
/// with the old key keeps the served pair until the next check).
fn generate(settings: &TlsSettings) -> Result<(), TlsError> {
    let (cert_pem, key_pem) = self_signed(&settings.sans, &settings.common_name, SELF_SIGNED_DAYS)?;
    write_file(&settings.key_path, key_pem.as_bytes(), 0o600)?;
    write_file(&settings.cert_path, cert_pem.as_bytes(), 0o644)
}

/// Replaces a self-issued certificate that expires within `renew_before` (see the
/// module contract); `Ok(true)` when it did.
fn renew_if_due(settings: &TlsSettings) -> Result<bool, TlsError> {
    let Some(window) = settings.renew_before.filter(|_| settings.self_signed) else {
        return Ok(false);
    };
    let pem = read(&settings.cert_path)?;
    let leaf = CertificateDer::pem_slice_iter(&pem)
        .next()
        .transpose()
        .map_err(|e| TlsError::Certificate {
            path: settings.cert_path.clone(),
            reason: e.to_string(),
        })?;
    let Some(leaf) = leaf else {
        return Ok(false);
    };
    let facts = certificate_facts(&leaf).map_err(|reason| TlsError::Certificate {
        path: settings.cert_path.clone(),
        reason,
    })?;
    let window = chrono::Duration::from_std(window).unwrap_or(chrono::Duration::MAX);
    if !facts.self_issued || facts.not_after - chrono::Utc::now() > window {
        return Ok(false);
    }
    generate(settings)?;
    tracing::info!(
        cert = %settings.cert_path.display(),
        expired_at = %facts.not_after,
        "renewed a self-signed TLS certificate close to its expiry"
    );
    Ok(true)
}

/// What renewal needs to know of a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateFacts {
    /// The end of its validity.
    pub not_after: chrono::DateTime<chrono::Utc>,
    /// Issuer and subject are the same name (self-signed or self-issued).
    pub self_issued: bool,
}

/// Reads notAfter, issuer and subject from a DER certificate (RFC 5280 §4.1: the
/// TBSCertificate's fields in order; only lengths and these fields are decoded).
pub fn certificate_facts(der: &[u8]) -> Result<CertificateFacts, String> {
    let malformed = |what: &str| format!("malformed certificate: {what}");
    let (certificate, _) = der_sequence(der).ok_or_else(|| malformed("outer SEQUENCE"))?;
    let (mut tbs, _) = der_sequence(certificate).ok_or_else(|| malformed("TBSCertificate"))?;
    let mut next = |what: &str| -> Result<(u8, &[u8]), String> {
        let (tag, content, rest) = der_tlv(tbs).ok_or_else(|| malformed(what))?;
        tbs = rest;
        Ok((tag, content))
    };
    let (mut tag, _) = next("version or serial")?;
    if tag == 0xa0 {
        // [0] EXPLICIT version, then the serial number.
        (tag, _) = next("serial")?;
    }
    if tag != 0x02 {
        return Err(malformed("serial is not an INTEGER"));
    }
    next("signature algorithm")?;
    let (_, issuer) = next("issuer")?;
    let (tag, validity) = next("validity")?;
    if tag != 0x30 {
        return Err(malformed("validity is not a SEQUENCE"));
    }
    let (_, subject) = next("subject")?;
    let (_, _, rest) = der_tlv(validity).ok_or_else(|| malformed("notBefore"))?;
    let (tag, not_after, _) = der_tlv(rest).ok_or_else(|| malformed("notAfter"))?;
    let not_after = der_time(tag, not_after).ok_or_else(|| malformed("notAfter time"))?;
    Ok(CertificateFacts {
        not_after,
        self_issued: issuer == subject,
    })
}

/// One DER TLV: tag, content and what follows (definite lengths only, as DER requires).
fn der_tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let (bytes, after) = rest.split_at_checked(n)?;
        rest = after;
        bytes
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b))
    };
    let (content, rest) = rest.split_at_checked(len)?;
    Some((tag, content, rest))
}

fn der_sequence(input: &[u8]) -> Option<(&[u8], &[u8])> {
    match der_tlv(input)? {
        (0x30, content, rest) => Some((content, rest)),
        _ => None,
    }
}

/// UTCTime (`YYMMDDHHMMSSZ`, years 1950-2049) or GeneralizedTime (`YYYYMMDDHHMMSSZ`).
fn der_time(tag: u8, content: &[u8]) -> Option<chrono::DateTime<chrono::Utc>> {
    let text = std::str::from_utf8(content).ok()?;
    let digits = text.strip_suffix('Z')?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (year, rest) = match (tag, digits.len()) {
        (0x17, 12) => {
            let yy: i32 = digits.get(..2)?.parse().ok()?;
            (
                if yy >= 50 { 1900 + yy } else { 2000 + yy },
                digits.get(2..)?,
            )
        }
        (0x18, 14) => (digits.get(..4)?.parse().ok()?, digits.get(4..)?),
        _ => return None,
    };
    let field = |i: usize| -> Option<u32> { rest.get(i..i + 2)?.parse().ok() };
    let date = chrono::NaiveDate::from_ymd_opt(year, field(0)?, field(2)?)?;
    let time = chrono::NaiveTime::from_hms_opt(field(4)?, field(6)?, field(8)?)?;
    Some(chrono::DateTime::from_naive_utc_and_offset(
        date.and_time(time),
        chrono::Utc,
    ))
}

/// Generates the pair when neither file exists and self-signing is on (and renews a
/// self-issued one close to expiry); refuses one without the other, and missing files
/// without self-signing.
fn ensure_files(settings: &TlsSettings) -> Result<(), TlsError> {
    let (cert, key) = (&settings.cert_path, &settings.key_path);
    match (exists(cert), exists(key)) {
        (true, true) => renew_if_due(settings).map(|_| ()),
        (true, false) => Err(TlsError::Partial {
            present: cert.clone(),
            missing: key.clone(),
        }),
        (false, true) => Err(TlsError::Partial {
            present: key.clone(),
            missing: cert.clone(),
        }),
        (false, false) if settings.self_signed => {
            generate(settings)?;
            tracing::info!(
                cert = %cert.display(),
                sans = ?settings.sans,
                "generated a self-signed TLS certificate"
            );
            Ok(())
        }
        (false, false) => Err(TlsError::Missing { path: cert.clone() }),
    }
}

fn certified_key(
    settings: &TlsSettings,
    provider: &CryptoProvider,
    loaded: &Loaded,
) -> Result<CertifiedKey, TlsError> {
    let cert_err = |reason: String| TlsError::Certificate {
        path: settings.cert_path.clone(),
        reason,
    };
    let chain = CertificateDer::pem_slice_iter(&loaded.cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_err(e.to_string()))?;
    if chain.is_empty() {
        return Err(cert_err("the file has no CERTIFICATE block".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(&loaded.key).map_err(|e| TlsError::Key {
        path: settings.key_path.clone(),
        reason: e.to_string(),
    })?;
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| TlsError::Key {
            path: settings.key_path.clone(),
            reason: e.to_string(),
        })?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|e| TlsError::Mismatch {
        cert: settings.cert_path.clone(),
        key: settings.key_path.clone(),
        reason: e.to_string(),
    })?;
    Ok(certified)
}

/// A listener yielding finished TLS connections (see the module docs).
pub struct TlsListener {
    local: SocketAddr,
    accepted: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    acceptor_task: AbortHandle,
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.acceptor_task.abort();
    }
}

impl TlsListener {
    /// Serves TLS with `config` on `listener`.
    pub fn new(listener: TcpListener, config: Arc<ServerConfig>) -> std::io::Result<Self> {
        let local = listener.local_addr()?;
        let acceptor = TlsAcceptor::from(config);
        let (tx, accepted) = mpsc::channel(256);
        let task = tokio::spawn(async move {
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(pair) => pair,
                    Err(e) => {
                        // As axum does: out of descriptors and the like pass.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                if let Err(e) = tcp.set_nodelay(true) {
                    tracing::warn!(error = %e, "cannot set TCP_NODELAY");
                }
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let _ = tx.send((stream, peer)).await;
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        }
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(Self {
            local,
            accepted,
            acceptor_task: task.abort_handle(),
        })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.accepted.recv().await {
            Some(pair) => pair,
            // The acceptor task never ends while the listener lives.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(dir: &Path, self_signed: bool) -> TlsSettings {
        TlsSettings {
            cert_path: dir.join("tls").join("cert.pem"),
            key_path: dir.join("tls").join("key.pem"),
            self_signed,
            sans: vec!["localhost".into(), "127.0.0.1".into()],
            common_name: "sf-test".into(),
            reload_interval: Duration::from_secs(60),
            renew_before: None,
        }
    }

    fn tempdir(name: &str) -> PathBuf {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "sf-daemon-tls-{name}-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn self_signed_pair_is_generated_with_private_key_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempdir("gen");
        let s = settings(&dir, true);
        let store = CertStore::load(&s).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&s.key_path), 0o600);
        assert_eq!(mode(&s.cert_path), 0o644);
        assert!(store.current_certificate().is_some());
        // Unchanged files: nothing reloaded.
        assert!(!store.reload().unwrap());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn missing_or_partial_files_are_refused() {
        let dir = tempdir("missing");
        let s = settings(&dir, false);
        assert!(matches!(CertStore::load(&s), Err(TlsError::Missing { .. })));
        let (cert, _) = self_signed(&s.sans, "sf-test", SELF_SIGNED_DAYS).unwrap();
        write_file(&s.cert_path, cert.as_bytes(), 0o644).unwrap();
        assert!(matches!(
            CertStore::load(&settings(&dir, true)),
            Err(TlsError::Partial { .. })
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_rotation_is_picked_up_and_a_mismatch_keeps_the_old_pair() {
        let dir = tempdir("rotate");
        let s = settings(&dir, true);
        let store = CertStore::load(&s).unwrap();
        let first = store.current_certificate().unwrap();
        // Half-way through a rotation: a new certificate with the old key.
        let (cert, key) = self_signed(&s.sans, "sf-test", SELF_SIGNED_DAYS).unwrap();
        write_file(&s.cert_path, cert.as_bytes(), 0o644).unwrap();
        assert!(matches!(store.reload(), Err(TlsError::Mismatch { .. })));
        assert_eq!(store.current_certificate().unwrap(), first);
        write_file(&s.key_path, key.as_bytes(), 0o600).unwrap();
        assert!(store.reload().unwrap());
        assert_ne!(store.current_certificate().unwrap(), first);
        // Garbage keeps the served pair.
        write_file(&s.key_path, b"not a key", 0o600).unwrap();
        assert!(matches!(store.reload(), Err(TlsError::Key { .. })));
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn leaf_facts(path: &Path) -> CertificateFacts {
        let pem = std::fs::read(path).unwrap();
        let leaf = CertificateDer::pem_slice_iter(&pem)
            .next()
            .unwrap()
            .unwrap();
        certificate_facts(&leaf).unwrap()
    }

    #[test]
    fn certificate_facts_read_not_after_and_self_issuance() {
        let dir = tempdir("facts");
        let s = settings(&dir, true);
        let (cert, _) = self_signed(&s.sans, "sf-test", 10).unwrap();
        write_file(&s.cert_path, cert.as_bytes(), 0o644).unwrap();
        let facts = leaf_facts(&s.cert_path);
        assert!(facts.self_issued);
        let days = (facts.not_after - chrono::Utc::now()).num_days();
        assert!((9..=10).contains(&days), "notAfter in {days} days");
        assert!(certificate_facts(b"\x30\x03\x02\x01").is_err());
        assert!(certificate_facts(&[]).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn der_times_follow_rfc_5280() {
        let t = |tag, s: &str| der_time(tag, s.as_bytes()).map(|d| d.to_rfc3339());
        assert_eq!(
            t(0x17, "491231235959Z").unwrap(),
            "2049-12-31T23:59:59+00:00"
        );
        assert_eq!(
            t(0x17, "500101000000Z").unwrap(),
            "1950-01-01T00:00:00+00:00"
        );
        assert_eq!(
            t(0x18, "20270301120000Z").unwrap(),
            "2027-03-01T12:00:00+00:00"
        );
        assert_eq!(t(0x17, "20270301120000Z"), None);
        assert_eq!(t(0x18, "2027130112000Z"), None);
        assert_eq!(t(0x17, "491331235959Z"), None);
    }

    #[test]
    fn a_self_signed_certificate_close_to_expiry_is_renewed_once() {
        let dir = tempdir("renew");
        let mut s = settings(&dir, true);
        s.renew_before = Some(Duration::from_secs(30 * 86_400));
        // 10 days left: inside the 30-day window.
        let (cert, key) = self_signed(&s.sans, "sf-test", 10).unwrap();
        write_file(&s.key_path, key.as_bytes(), 0o600).unwrap();
        write_file(&s.cert_path, cert.as_bytes(), 0o644).unwrap();
        let store = CertStore::load(&s).unwrap();
        let days = (leaf_facts(&s.cert_path).not_after - chrono::Utc::now()).num_days();
        assert!(days > 300, "renewed at load: {days} days left");
        let served = store.current_certificate().unwrap();
        assert_eq!(
            served.as_ref(),
            CertificateDer::pem_slice_iter(&std::fs::read(&s.cert_path).unwrap())
                .next()
                .unwrap()
                .unwrap()
                .as_ref()
        );
        // Far from expiry now: a reload changes nothing.
        assert!(!store.reload().unwrap());
        // Expiring again while running: the reload check renews and serves it.
        let (cert, key) = self_signed(&s.sans, "sf-test", 5).unwrap();
        write_file(&s.key_path, key.as_bytes(), 0o600).unwrap();
        write_file(&s.cert_path, cert.as_bytes(), 0o644).unwrap();
        assert!(store.reload().unwrap());
        let days = (leaf_facts(&s.cert_path).not_after - chrono::Utc::now()).num_days();
        assert!(days > 300, "renewed on reload: {days} days left");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn renewal_never_replaces_a_ca_signed_or_unmanaged_certificate() {
        let dir = tempdir("norenew");
        let mut s = settings(&dir, true);
        s.renew_before = Some(Duration::from_secs(30 * 86_400));
        // A leaf signed by a CA (issuer != subject), expiring in 3 days.
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "operator CA");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let _ = ca;
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let mut leaf_params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        leaf_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "hv1");
        let now = chrono::Utc::now() + chrono::Duration::days(3);
        use chrono::Datelike;
        leaf_params.not_after =
            rcgen::date_time_ymd(now.year(), now.month() as u8, now.day() as u8);
        let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();
        write_file(&s.key_path, leaf_key.serialize_pem().as_bytes(), 0o600).unwrap();
        write_file(&s.cert_path, leaf.pem().as_bytes(), 0o644).unwrap();
        let before = std::fs::read(&s.cert_path).unwrap();
        let store = CertStore::load(&s).unwrap();
        assert!(!leaf_facts(&s.cert_path).self_issued);
        assert!(!store.reload().unwrap());
        assert_eq!(
            std::fs::read(&s.cert_path).unwrap(),
            before,
            "an operator's certificate is left alone"
        );
        // Without self-signing nothing is ever generated, even for a self-issued one.
        let mut off = settings(&dir, false);
        off.renew_before = s.renew_before;
        let (cert, key) = self_signed(&s.sans, "sf-test", 2).unwrap();
        write_file(&s.key_path, key.as_bytes(), 0o600).unwrap();
        write_file(&s.cert_path, cert.as_bytes(), 0o644).unwrap();
        let _store = CertStore::load(&off).unwrap();
        assert_eq!(std::fs::read(&s.cert_path).unwrap(), cert.as_bytes());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
