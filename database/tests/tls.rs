//! TLS to MariaDB: a private server with a certificate from a CA this test makes, and
//! an account that `REQUIRE SSL`. Both connection paths (`connect`, used by the
//! start-up checks and migrations, and `connect_pool`, the store's) reach it only with
//! TLS, verify the server against the CA, and refuse a server signed by another CA.

use std::path::{Path, PathBuf};

use sea_orm::{ConnectionTrait, Statement};
use sf_database::{MariaDbArgs, connect, connect_pool};
use sf_harness::{MariaDb, ServerOptions};

/// A CA's certificate, and a server certificate it signed for 127.0.0.1 and
/// localhost, with the server's key; PEM files in `dir`.
fn certificates(dir: &Path, label: &str) -> (PathBuf, PathBuf, PathBuf) {
    let ca_key = rcgen::KeyPair::generate().expect("CA key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("{label} CA"));
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).expect("CA");
    let server_key = rcgen::KeyPair::generate().expect("server key");
    let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
        .expect("server params");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "mariadb");
    let server = params
        .signed_by(&server_key, &ca)
        .expect("server certificate");
    let write = |name: &str, text: String| {
        let path = dir.join(format!("{label}-{name}"));
        std::fs::write(&path, text).expect("write PEM");
        path
    };
    (
        write("ca.pem", ca.pem()),
        write("server.pem", server.pem()),
        write("server-key.pem", server_key.serialize_pem()),
    )
}

fn args(port: u16, database: &str, mode: &str, ca: Option<&Path>) -> MariaDbArgs {
    let mut args = MariaDbArgs::local_root(port, database);
    args.user = "sf_tls".into();
    args.password = "tls-only-password".into();
    args.ssl_mode = mode.into();
    args.ssl_ca = ca.map(Path::to_path_buf);
    args
}

#[tokio::test]
async fn connections_use_tls_when_asked_and_verify_the_server() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ca, cert, key) = certificates(dir.path(), "good");
    let (other_ca, _, _) = certificates(dir.path(), "other");
    let mut opts = ServerOptions::default();
    opts.extra_args.extend([
        format!("--ssl-ca={}", ca.display()),
        format!("--ssl-cert={}", cert.display()),
        format!("--ssl-key={}", key.display()),
    ]);
    let server = MariaDb::start(&opts).expect("server with TLS");
    let tdb = server.create_database().expect("database");
    server
        .execute(&format!(
            "CREATE USER 'sf_tls'@'%' IDENTIFIED BY 'tls-only-password' REQUIRE SSL; \
             GRANT ALL ON `{}`.* TO 'sf_tls'@'%'",
            tdb.name
        ))
        .expect("an account that requires TLS");

    // Without TLS the account is refused, and the hint names the setting.
    let plain = args(tdb.port, &tdb.name, "disabled", None);
    let err = connect_pool(&plain).await.expect_err("plain text refused");
    assert!(
        err.to_string().contains("SHAKENFIST_MARIADB_SSL_MODE"),
        "{err}"
    );

    // Verified against the CA, by name: both paths connect, encrypted.
    let verified = args(tdb.port, &tdb.name, "verify-identity", Some(&ca));
    assert_eq!(verified.validate(), Ok(()));
    let pool = connect_pool(&verified).await.expect("pool over TLS");
    let row: (String, String) = sea_orm::sqlx::query_as("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
        .fetch_one(&pool)
        .await
        .expect("cipher");
    assert!(!row.1.is_empty(), "the session is encrypted: {row:?}");
    let db = connect(&verified).await.expect("sea-orm over TLS");
    let cipher = db
        .query_one_raw(Statement::from_string(
            db.get_database_backend(),
            "SHOW SESSION STATUS LIKE 'Ssl_cipher'",
        ))
        .await
        .expect("query")
        .and_then(|r| r.try_get_by_index::<String>(1).ok())
        .unwrap_or_default();
    assert!(!cipher.is_empty(), "the start-up path is encrypted too");

    // A server the configured CA did not sign is refused, with a TLS hint.
    let wrong = args(tdb.port, &tdb.name, "verify-ca", Some(&other_ca));
    let err = connect_pool(&wrong).await.expect_err("unknown issuer");
    assert!(
        err.to_string().contains("SHAKENFIST_MARIADB_SSL_CA"),
        "{err}"
    );
    let err = connect(&wrong).await.expect_err("unknown issuer, sea-orm");
    assert!(
        err.to_string().contains("SHAKENFIST_MARIADB_SSL_CA"),
        "{err}"
    );

    // Inconsistent settings are refused before connecting.
    let mut bad = verified.clone();
    bad.ssl_mode = "verify_full".into();
    assert_eq!(
        bad.validate().map_err(|e| e.0),
        Err("SHAKENFIST_MARIADB_SSL_MODE")
    );
    let mut bad = verified.clone();
    bad.ssl_cert = Some(cert.clone());
    assert_eq!(
        bad.validate().map_err(|e| e.0),
        Err("SHAKENFIST_MARIADB_SSL_CERT")
    );
    let mut bad = verified.clone();
    bad.ssl_ca = Some(dir.path().join("missing.pem"));
    assert_eq!(
        bad.validate().map_err(|e| e.0),
        Err("SHAKENFIST_MARIADB_SSL_CA")
    );
    bad.ssl_ca = Some(dir.path().to_path_buf());
    assert!(
        bad.validate().is_err_and(|e| e.1.contains("not a file")),
        "a directory is no CA file"
    );

    // A mode that slipped past validation fails closed: verified, not plain text.
    let mut unknown = verified;
    unknown.ssl_mode = "verify_full".into();
    assert!(unknown.url().contains("ssl-mode=VERIFY_IDENTITY"));
    connect_pool(&unknown)
        .await
        .expect("an unknown mode verifies the server");
    unknown.ssl_ca = Some(other_ca);
    connect_pool(&unknown)
        .await
        .expect_err("an unknown mode does not fall back to plain text");
}
