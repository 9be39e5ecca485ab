//! `artifact_fetch` against real sources: a tiny HTTP/1.1 server on 127.0.0.1 that
//! this test runs, and files (`file://`). Checks the checksum verification, the
//! errors (mismatch, HTTP 404, too large, stalled) and their retryability, idempotent
//! reruns, redirects, that no partial file survives a failure or a cancellation, and
//! that a tenant's fetch reaches no internal address, by literal, name or redirect.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use sf_agent::artifact::{AddressPolicy, FetchError, FetchRequest, FetchSettings, fetch};
use sf_schema::addresses::Cidr;
use sha2::{Digest, Sha512};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A small "qcow2" (the magic, then filler) the server serves at `/image`.
fn image() -> Vec<u8> {
    let mut bytes = b"QFI\xfb\0\0\0\x03".to_vec();
    bytes.extend((0..200_000u32).map(|i| (i % 251) as u8));
    bytes
}

fn sha512(bytes: &[u8]) -> String {
    Sha512::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Serves on 127.0.0.1 (never another address) until the test ends:
/// `/image` (200, `application/octet-stream`), `/typed` (200, `text/plain`),
/// `/redirect` (302 to `/image`), `/loop` (302 to itself), `/stall` (headers and a
/// few bytes, then silence), `/elsewhere` (302 to `/image` on 127.0.0.2, the same
/// port), `/to-file` (302 to `file:///etc/hostname`), anything else 404.
async fn serve() -> String {
    serve_counting().await.0
}

/// [`serve`], and how many connections it accepted.
async fn serve_counting() -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1");
    let addr = listener.local_addr().expect("local address");
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&accepted);
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&request);
                let path = text.split_whitespace().nth(1).unwrap_or("/").to_owned();
                let respond = |status: &str, headers: &str, body: &[u8]| {
                    let mut out = format!(
                        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n{headers}\r\n",
                        body.len()
                    )
                    .into_bytes();
                    out.extend_from_slice(body);
                    out
                };
                let response = match path.as_str() {
                    "/image" => respond(
                        "200 OK",
                        "Content-Type: application/octet-stream\r\n",
                        &image(),
                    ),
                    "/typed" => respond(
                        "200 OK",
                        "Content-Type: text/plain; charset=utf-8\r\n",
                        b"hello\n",
                    ),
                    "/redirect" => respond("302 Found", "Location: /image\r\n", b""),
                    "/loop" => respond("302 Found", "Location: /loop\r\n", b""),
                    "/elsewhere" => respond(
                        "302 Found",
                        &format!("Location: http://127.0.0.2:{}/image\r\n", addr.port()),
                        b"",
                    ),
                    "/to-file" => respond("302 Found", "Location: file:///etc/hostname\r\n", b""),
                    "/stall" => {
                        let head = b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\nConnection: close\r\n\r\n";
                        let _ = stream.write_all(head).await;
                        let _ = stream.write_all(&[7u8; 4096]).await;
                        let _ = stream.flush().await;
                        tokio::time::sleep(Duration::from_secs(60)).await;
                        return;
                    }
                    _ => respond("404 Not Found", "", b"no such image\n"),
                };
                let _ = stream.write_all(&response).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    (format!("http://{addr}"), accepted)
}

/// Settings of a system-namespace fetch: any address (these tests serve on
/// 127.0.0.1), as the agent chooses for the system namespace's artifacts.
fn system_settings(blobs: std::path::PathBuf, max_bytes: u64) -> FetchSettings {
    let mut settings = FetchSettings::new(blobs, max_bytes);
    settings.policy = AddressPolicy::Any;
    settings
}

fn request(url: &str, blob: &str, sha512: Option<String>) -> FetchRequest {
    FetchRequest {
        source_url: url.to_owned(),
        blob: blob.to_owned(),
        sha512,
        size: None,
    }
}

/// The file names in `dir`, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

const BLOB_A: &str = "a0000000-0000-4000-8000-000000000001";
const BLOB_B: &str = "b0000000-0000-4000-8000-000000000002";
const BLOB_C: &str = "c0000000-0000-4000-8000-000000000003";

#[tokio::test]
async fn an_http_download_is_hashed_kept_and_idempotent() {
    let base = serve().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let settings = system_settings(dir.path().join("blobs"), 1 << 30);
    let want = image();

    let fetched = fetch(&settings, &request(&format!("{base}/image"), BLOB_A, None))
        .await
        .expect("fetch");
    assert!(fetched.downloaded);
    assert_eq!(fetched.size, want.len() as u64);
    assert_eq!(fetched.sha512, sha512(&want));
    // Content-Type is generic, so the bytes say what it is.
    assert_eq!(fetched.mime_type, "application/x-qemu-disk");
    assert_eq!(std::fs::read(&fetched.path).expect("blob file"), want);
    assert_eq!(listing(&settings.blobs_dir), [BLOB_A]);
    let result = fetched.to_result("hv-1");
    assert_eq!(result["blob"], BLOB_A);
    assert_eq!(result["sha512"], sha512(&want));
    assert_eq!(result["mimeType"], "application/x-qemu-disk");

    // A rerun (a retried operation) finds the file and downloads nothing, with or
    // without the expected checksum.
    for expected in [None, Some(sha512(&want))] {
        let again = fetch(
            &settings,
            &request(&format!("{base}/image"), BLOB_A, expected),
        )
        .await
        .expect("rerun");
        assert!(!again.downloaded);
        assert_eq!(
            (again.size, again.sha512.as_str()),
            (fetched.size, fetched.sha512.as_str())
        );
    }
    // Even when the source has gone: the blob is there.
    let again = fetch(&settings, &request(&format!("{base}/gone"), BLOB_A, None))
        .await
        .expect("rerun without the source");
    assert!(!again.downloaded);

    // An existing blob with other bytes is refused and left alone.
    let err = fetch(
        &settings,
        &request(&format!("{base}/image"), BLOB_A, Some(sha512(b"other"))),
    )
    .await
    .expect_err("existing mismatch");
    assert_eq!(err.code(), "BlobMismatch");
    assert!(!err.retryable());
    assert_eq!(std::fs::read(&fetched.path).expect("kept"), want);

    // A redirect is followed; a declared Content-Type is kept.
    let redirected = fetch(
        &settings,
        &request(&format!("{base}/redirect"), BLOB_B, None),
    )
    .await
    .expect("redirect");
    assert_eq!(redirected.sha512, sha512(&want));
    let typed = fetch(&settings, &request(&format!("{base}/typed"), BLOB_C, None))
        .await
        .expect("typed");
    assert_eq!(typed.mime_type, "text/plain");
    assert_eq!(listing(&settings.blobs_dir), [BLOB_A, BLOB_B, BLOB_C]);
}

#[tokio::test]
async fn a_replica_must_match_its_checksum_and_nothing_is_kept_when_it_does_not() {
    let base = serve().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let settings = system_settings(dir.path().join("blobs"), 1 << 30);
    let want = image();

    let ok = fetch(
        &settings,
        &FetchRequest {
            size: Some(want.len() as u64),
            ..request(&format!("{base}/image"), BLOB_A, Some(sha512(&want)))
        },
    )
    .await
    .expect("verified replica");
    assert!(ok.downloaded);

    let wrong = sha512(b"not the image");
    let err = fetch(
        &settings,
        &request(&format!("{base}/image"), BLOB_B, Some(wrong.clone())),
    )
    .await
    .expect_err("mismatch");
    assert!(matches!(err, FetchError::ChecksumMismatch { .. }), "{err}");
    assert_eq!(err.code(), "ChecksumMismatch");
    assert!(!err.retryable());
    let message = err.to_string();
    assert!(
        message.contains(&wrong),
        "names the expected sum: {message}"
    );
    assert!(
        message.contains(&sha512(&want)),
        "names the sum got: {message}"
    );
    assert_eq!(listing(&settings.blobs_dir), [BLOB_A], "nothing of B kept");

    let err = fetch(
        &settings,
        &FetchRequest {
            size: Some(3),
            ..request(&format!("{base}/image"), BLOB_C, Some(sha512(&want)))
        },
    )
    .await
    .expect_err("size mismatch");
    assert_eq!((err.code(), err.retryable()), ("SizeMismatch", false));
    assert_eq!(listing(&settings.blobs_dir), [BLOB_A]);
}

#[tokio::test]
async fn http_errors_are_retryable_and_name_the_status() {
    let base = serve().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let settings = system_settings(dir.path().join("blobs"), 1 << 30);

    let err = fetch(
        &settings,
        &request(&format!("{base}/missing.qcow2"), BLOB_A, None),
    )
    .await
    .expect_err("404");
    assert!(matches!(err, FetchError::Http { status: 404, .. }), "{err}");
    assert!(err.retryable());
    assert!(err.to_string().contains("HTTP 404"), "{err}");

    let err = fetch(&settings, &request(&format!("{base}/loop"), BLOB_A, None))
        .await
        .expect_err("redirect loop");
    assert_eq!((err.code(), err.retryable()), ("TooManyRedirects", false));

    // Nothing listens on this loopback port any more: a retryable transfer failure.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let err = fetch(
        &settings,
        &request(&format!("http://{closed}/x"), BLOB_A, None),
    )
    .await
    .expect_err("refused");
    assert_eq!((err.code(), err.retryable()), ("DownloadFailed", true));

    let err = fetch(&settings, &request("ftp://127.0.0.1/x", BLOB_A, None))
        .await
        .expect_err("scheme");
    assert_eq!((err.code(), err.retryable()), ("UnsupportedSource", false));
    assert!(listing(&settings.blobs_dir).is_empty());
}

#[tokio::test]
async fn oversized_stalled_and_cancelled_downloads_leave_no_partial_file() {
    let base = serve().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let blobs = dir.path().join("blobs");

    // Larger than allowed (Content-Length says so up front).
    let small = system_settings(blobs.clone(), 1000);
    let err = fetch(&small, &request(&format!("{base}/image"), BLOB_A, None))
        .await
        .expect_err("too large");
    assert_eq!((err.code(), err.retryable()), ("TooLarge", false));
    assert!(
        err.to_string().contains("SHAKENFIST_ARTIFACT_MAX_BYTES"),
        "{err}"
    );
    assert!(listing(&blobs).is_empty());

    // A body that goes silent fails after the idle timeout (retryable).
    let mut impatient = system_settings(blobs.clone(), 1 << 30);
    impatient.idle_timeout = Duration::from_millis(300);
    let err = fetch(&impatient, &request(&format!("{base}/stall"), BLOB_B, None))
        .await
        .expect_err("stalled");
    assert_eq!((err.code(), err.retryable()), ("DownloadStalled", true));
    assert!(listing(&blobs).is_empty(), "{:?}", listing(&blobs));

    // Dropped midway (the operation aborted, the agent shutting down): the partial
    // file goes with it.
    let patient = system_settings(blobs.clone(), 1 << 30);
    let req = request(&format!("{base}/stall"), BLOB_C, None);
    let partial = blobs.join(format!("{BLOB_C}.partial"));
    let mut download = Box::pin(fetch(&patient, &req));
    let seen = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            tokio::select! {
                _ = &mut download => panic!("the stalled download ended"),
                () = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
            if partial.exists() {
                return;
            }
        }
    })
    .await;
    assert!(seen.is_ok(), "the partial file appeared while downloading");
    drop(download);
    assert!(listing(&blobs).is_empty(), "{:?}", listing(&blobs));

    // A partial file left by a crash is replaced by the next attempt.
    std::fs::write(blobs.join(format!("{BLOB_A}.partial")), b"junk").expect("junk");
    let fetched = fetch(&patient, &request(&format!("{base}/image"), BLOB_A, None))
        .await
        .expect("after a crash");
    assert_eq!(fetched.sha512, sha512(&image()));
    assert_eq!(listing(&blobs), [BLOB_A]);
}

#[tokio::test]
async fn a_file_source_is_copied_and_verified() {
    let dir = tempfile::tempdir().expect("tempdir");
    let settings = system_settings(dir.path().join("blobs"), 1 << 30);
    let source = dir.path().join("source.qcow2");
    let want = image();
    std::fs::write(&source, &want).expect("source");
    let url = format!("file://{}", source.display());

    let fetched = fetch(&settings, &request(&url, BLOB_A, Some(sha512(&want))))
        .await
        .expect("file fetch");
    assert!(fetched.downloaded);
    assert_eq!(fetched.mime_type, "application/x-qemu-disk");
    assert_eq!(std::fs::read(&fetched.path).expect("copy"), want);

    let err = fetch(&settings, &request(&url, BLOB_B, Some(sha512(b"x"))))
        .await
        .expect_err("mismatch");
    assert_eq!(err.code(), "ChecksumMismatch");

    let missing = format!("file://{}", dir.path().join("nope").display());
    let err = fetch(&settings, &request(&missing, BLOB_C, None))
        .await
        .expect_err("missing");
    assert_eq!((err.code(), err.retryable()), ("SourceNotFound", false));

    let err = fetch(&settings, &request("file://relative/path", BLOB_C, None))
        .await
        .expect_err("relative");
    assert_eq!(err.code(), "BadOperation");
    assert_eq!(listing(&settings.blobs_dir), [BLOB_A]);
}

#[tokio::test]
async fn a_tenants_fetch_reaches_no_internal_address() {
    let (base, accepted) = serve_counting().await;
    let port = base.rsplit(':').next().expect("a port").to_owned();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut settings = FetchSettings::new(dir.path().join("blobs"), 1 << 30);
    settings.policy = AddressPolicy::for_namespace(Some("demo"), &[], &[]);

    // A literal, a name, and a form only the resolver reads as 127.0.0.1.
    for (url, host) in [
        (format!("{base}/image"), "127.0.0.1"),
        (format!("http://localhost:{port}/image"), "localhost"),
        (format!("http://127.1:{port}/image"), "127.1"),
    ] {
        let err = fetch(&settings, &request(&url, BLOB_A, None))
            .await
            .expect_err("an internal address");
        let FetchError::InternalAddress {
            host: refused,
            address,
            ..
        } = &err
        else {
            panic!("{url}: {err}");
        };
        assert_eq!(refused, host, "{err}");
        assert!(address.is_loopback(), "{err}");
        assert_eq!(
            (err.code(), err.retryable()),
            ("InternalAddressRefused", false)
        );
        assert!(
            err.to_string()
                .contains("SHAKENFIST_ARTIFACT_TENANT_ALLOWED_CIDRS")
        );
    }
    let err = fetch(&settings, &request("file:///etc/hostname", BLOB_A, None))
        .await
        .expect_err("a host file");
    assert_eq!((err.code(), err.retryable()), ("SourceRefused", false));
    // Refused before connecting; nothing kept.
    assert_eq!(accepted.load(Ordering::SeqCst), 0);
    assert!(listing(&settings.blobs_dir).is_empty());

    // The system namespace's artifacts may use the same source.
    let system = AddressPolicy::for_namespace(Some("system"), &[], &[]);
    assert_eq!(system, AddressPolicy::Any);
    settings.policy = system;
    let fetched = fetch(&settings, &request(&format!("{base}/image"), BLOB_A, None))
        .await
        .expect("the system namespace fetches from loopback");
    assert_eq!(fetched.size, image().len() as u64);
}

#[tokio::test]
async fn an_allowed_mirror_cannot_redirect_a_tenant_inside() {
    let (base, accepted) = serve_counting().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut settings = FetchSettings::new(dir.path().join("blobs"), 1 << 30);
    let mirror = Cidr::parse("127.0.0.1/32").expect("a block");
    settings.policy = AddressPolicy::for_namespace(Some("demo"), &[mirror], &[]);

    // The operator allows the mirror: a tenant fetches from it.
    let fetched = fetch(&settings, &request(&format!("{base}/image"), BLOB_A, None))
        .await
        .expect("an allowed mirror");
    assert_eq!(fetched.sha512, sha512(&image()));

    // Its redirect to another internal address is refused before connecting there.
    let err = fetch(
        &settings,
        &request(&format!("{base}/elsewhere"), BLOB_B, None),
    )
    .await
    .expect_err("a redirect inside");
    let FetchError::InternalAddress { url, address, .. } = &err else {
        panic!("{err}");
    };
    assert!(url.starts_with("http://127.0.0.2:"), "{err}");
    assert_eq!(address.to_string(), "127.0.0.2");
    assert!(!err.retryable());
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        2,
        "the mirror, twice; never 127.0.0.2"
    );

    // No redirect leaves HTTP, whoever fetches.
    settings.policy = AddressPolicy::Any;
    let err = fetch(
        &settings,
        &request(&format!("{base}/to-file"), BLOB_C, None),
    )
    .await
    .expect_err("a redirect to a file");
    assert_eq!((err.code(), err.retryable()), ("UnsupportedSource", false));
    assert!(err.to_string().contains("file:///etc/hostname"), "{err}");
    assert_eq!(listing(&settings.blobs_dir), [BLOB_A]);
}

#[tokio::test]
async fn denied_blocks_win_over_allowed_ones_and_the_default_is_a_tenants() {
    let (base, accepted) = serve_counting().await;
    let dir = tempfile::tempdir().expect("tempdir");
    // Whoever forgets to choose a policy gets a tenant's.
    let mut settings = FetchSettings::new(dir.path().join("blobs"), 1 << 30);
    assert_eq!(settings.policy, AddressPolicy::default());
    let err = fetch(&settings, &request(&format!("{base}/image"), BLOB_A, None))
        .await
        .expect_err("the default policy");
    assert_eq!(err.code(), "InternalAddressRefused");

    // This host's addresses that matter are its external ones (internal ones are
    // refused anyway); a denied block beats an allowed mirror on the same address.
    let host = sf_agent::artifact::host_addresses();
    let loopback = Cidr::parse("127.0.0.1/32").expect("a block");
    assert!(!host.contains(&loopback), "{host:?}");
    let mut denied = host.clone();
    denied.push(loopback);
    settings.policy = AddressPolicy::for_namespace(Some("demo"), &[loopback], &denied);
    let err = fetch(&settings, &request(&format!("{base}/image"), BLOB_A, None))
        .await
        .expect_err("denied");
    assert_eq!(
        (err.code(), err.retryable()),
        ("InternalAddressRefused", false)
    );
    assert_eq!(accepted.load(Ordering::SeqCst), 0);
    assert!(listing(&settings.blobs_dir).is_empty());
}
