//! sf-api's native HTTPS: a kube client trusting the self-signed certificate works
//! (tokens, lists, watches' transport), one that does not is refused, HTTP/2 is offered
//! by ALPN, and a rotated certificate is served without a restart (timer and SIGHUP).

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Env, kube_client_ca, raw_on, start_with};
use kube::api::{Api, ListParams, PostParams};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};

fn tls_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "sf-api-tls-test-{name}-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4()
    ));
    std::fs::create_dir_all(&dir).expect("dir");
    dir
}

async fn start_tls(dir: &Path, extra: &[&str]) -> Env {
    let mut args = vec![
        format!("--api-tls-cert-path={}", dir.join("cert.pem").display()),
        format!("--api-tls-key-path={}", dir.join("key.pem").display()),
        "--api-tls-self-signed".to_string(),
    ];
    args.extend(extra.iter().map(ToString::to_string));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    start_with(&refs).await
}

/// The certificate a fresh TLS connection to `url` is served, and the ALPN protocol.
async fn handshake(url: &str, alpn: &[&[u8]]) -> (CertificateDer<'static>, Option<Vec<u8>>) {
    let addr = url.trim_start_matches("https://");
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    // Any certificate: this looks at what is served, not whether it is trusted.
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .dangerous()
    .with_custom_certificate_verifier(Arc::new(AnyCert))
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = ServerName::try_from("127.0.0.1").expect("name");
    let stream = connector.connect(name, tcp).await.expect("handshake");
    let (_, session) = stream.get_ref();
    let cert = session
        .peer_certificates()
        .and_then(|c| c.first().cloned())
        .expect("certificate")
        .into_owned();
    (cert, session.alpn_protocol().map(<[u8]>::to_vec))
}

#[derive(Debug)]
struct AnyCert;

impl rustls::client::danger::ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn pem_cert(path: &Path) -> CertificateDer<'static> {
    CertificateDer::from_pem_file(path).expect("PEM certificate")
}

/// Writes a new self-signed pair over the served files (key first, as an operator's
/// rotation might; sf-api keeps the old pair while they do not match).
fn rotate(dir: &Path) -> CertificateDer<'static> {
    let (cert, key) = sf_api::tls::self_signed(
        &["localhost".into(), "127.0.0.1".into()],
        "sf-api",
        sf_api::tls::SELF_SIGNED_DAYS,
    )
    .expect("generate");
    std::fs::write(dir.join("key.pem"), key).expect("key");
    std::fs::write(dir.join("cert.pem"), cert).expect("cert");
    pem_cert(&dir.join("cert.pem"))
}

async fn wait_served(url: &str, wanted: &CertificateDer<'static>, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let (served, _) = handshake(url, &[b"http/1.1"]).await;
        if served == *wanted {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the rotated certificate was not served within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_client_with_the_ca_works_over_https() {
    let dir = tls_dir("client");
    let env = start_tls(&dir, &[]).await;
    assert!(env.url.starts_with("https://127.0.0.1:"), "{}", env.url);
    // The generated key is private; the certificate is what clients trust.
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("key.pem"))
            .expect("key")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    // A token from /auth over TLS, then the resource API with it.
    let token = env.token("system", common::SYSTEM_KEY).await;
    let client = env.client_with(&token);
    let instances: Api<sf_schema::Instance> = Api::namespaced(client.clone(), "demo");
    env.add_namespace("demo").await;
    instances
        .create(&PostParams::default(), &common::instance("web-1"))
        .await
        .expect("create over https");
    let listed = instances
        .list(&ListParams::default())
        .await
        .expect("list over https");
    assert_eq!(listed.items.len(), 1);
    let version = raw_on(&client, "GET", "/version", &[], None).await;
    assert_eq!(version.status, 200);

    // A client that does not trust the certificate gets no answer at all.
    let untrusting = kube_client_ca(&env.url, Some(&token), None);
    let refused = untrusting.apiserver_version().await;
    assert!(refused.is_err(), "{refused:?}");

    // ALPN: HTTP/2 and HTTP/1.1 are offered.
    let (_, alpn) = handshake(&env.url, &[b"h2", b"http/1.1"]).await;
    assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));
    let (_, alpn) = handshake(&env.url, &[b"http/1.1"]).await;
    assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_certificate_is_served_without_a_restart() {
    let dir = tls_dir("rotate");
    let env = start_tls(&dir, &["--api-tls-reload-seconds=1"]).await;
    let first = pem_cert(&dir.join("cert.pem"));
    let (served, _) = handshake(&env.url, &[b"http/1.1"]).await;
    assert_eq!(served, first);

    let second = rotate(&dir);
    assert_ne!(second, first);
    wait_served(&env.url, &second, Duration::from_secs(10)).await;
    // A client trusting only the new certificate works; one trusting the old does not.
    let fresh = kube_client_ca(&env.url, Some(&env.system_token), Some(second.as_ref()));
    fresh.apiserver_version().await.expect("new certificate");
    let stale = kube_client_ca(&env.url, Some(&env.system_token), Some(first.as_ref()));
    assert!(stale.apiserver_version().await.is_err());

    // A half-written rotation (garbage key) keeps the served pair.
    std::fs::write(dir.join("key.pem"), "not a key").expect("key");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (served, _) = handshake(&env.url, &[b"http/1.1"]).await;
    assert_eq!(served, second);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_certificate_at_once() {
    use tokio::signal::unix::{SignalKind, signal};
    // Registered before anything is sent, so the signal can never end the test
    // process (tokio keeps a handler installed once one exists).
    let _hangup = signal(SignalKind::hangup()).expect("SIGHUP handler");
    let dir = tls_dir("sighup");
    let env = start_tls(&dir, &["--api-tls-reload-seconds=3600"]).await;
    let first = pem_cert(&dir.join("cert.pem"));
    let second = rotate(&dir);
    assert_ne!(first, second);
    // The store has its reloader's SIGHUP stream once sf-api serves; give it a moment.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let status = std::process::Command::new("kill")
        .args(["-HUP", &std::process::id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    wait_served(&env.url, &second, Duration::from_secs(5)).await;
    assert!(env.certs.is_some());
    let _ = std::fs::remove_dir_all(&dir);
}
