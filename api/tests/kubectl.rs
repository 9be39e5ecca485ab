//! kubectl (when installed) against sf-api: discovery, client-side apply with OpenAPI
//! validation, Table output, delete.
//!
//! kubectl sends credentials only over TLS (clientcmd drops the user's token for an
//! `http://` server) and sf-api serves plain HTTP, so the test puts a loopback proxy
//! in front that adds the token, as a TLS-terminating ingress would.

mod common;

use std::process::Command;

use common::start;

fn kubectl(kubeconfig: &std::path::Path, cache: &std::path::Path, args: &[&str]) -> (bool, String) {
    let out = Command::new("kubectl")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", cache)
        .arg(format!("--kubeconfig={}", kubeconfig.display()))
        .arg(format!("--cache-dir={}", cache.display()))
        .arg("--request-timeout=20s")
        .args(args)
        .output()
        .expect("run kubectl");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// A loopback proxy to sf-api through `client` (which adds the token); its URL.
async fn proxy(client: kube::Client) -> String {
    use axum::response::IntoResponse;
    let app = axum::Router::new().fallback(move |request: axum::extract::Request| {
        let client = client.clone();
        async move {
            let (parts, body) = request.into_parts();
            let bytes = axum::body::to_bytes(body, 16 << 20)
                .await
                .unwrap_or_default();
            let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
            let mut builder = http::Request::builder().method(parts.method).uri(target);
            for (name, value) in &parts.headers {
                if name != http::header::HOST && name != http::header::AUTHORIZATION {
                    builder = builder.header(name, value);
                }
            }
            let forwarded = builder
                .body(kube::client::Body::from(bytes.to_vec()))
                .expect("request");
            match client.send(forwarded).await {
                Ok(response) => {
                    let (parts, body) = response.into_parts();
                    axum::response::Response::from_parts(parts, axum::body::Body::new(body))
                }
                Err(e) => (http::StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
            }
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind proxy");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_applies_gets_and_deletes() {
    if Command::new("kubectl")
        .arg("version")
        .arg("--client")
        .output()
        .is_err()
    {
        println!("kubectl is not installed: test skipped");
        return;
    }
    let env = start().await;
    let dir = std::env::temp_dir().join(format!("sf-api-kubectl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let proxy_url = proxy(env.client.clone()).await;
    let kubeconfig = dir.join("config");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: sf\n  cluster:\n    server: {}\ncontexts:\n- name: sf\n  context:\n    cluster: sf\n    user: sf\n    namespace: demo\ncurrent-context: sf\nusers:\n- name: sf\n  user:\n    token: {}\n",
            proxy_url, env.system_token
        ),
    )
    .expect("kubeconfig");
    let manifest = dir.join("web.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: shakenfist.io/v1alpha1\nkind: Network\nmetadata: {name: web, namespace: demo}\nspec: {netblock: 10.0.0.0/24, provideDhcp: true}\n---\napiVersion: shakenfist.io/v1alpha1\nkind: Instance\nmetadata: {name: web-1, namespace: demo}\nspec:\n  cpus: 1\n  memory: 512\n  disks: [{size: 8}]\n",
    )
    .expect("manifest");
    let (kc, cache) = (kubeconfig.clone(), dir.clone());
    let run = move |args: Vec<String>| {
        let (kc, cache) = (kc.clone(), cache.clone());
        tokio::task::spawn_blocking(move || {
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            kubectl(&kc, &cache, &refs)
        })
    };
    let path = manifest.display().to_string();
    let (ok, out) = run(vec!["apply".into(), "-f".into(), path.clone()])
        .await
        .expect("join");
    assert!(ok, "apply: {out}");
    assert!(out.contains("created"), "{out}");
    let (ok, out) = run(vec!["apply".into(), "-f".into(), path.clone()])
        .await
        .expect("join");
    assert!(ok, "apply again: {out}");
    let (ok, out) = run(vec!["get".into(), "instances".into()])
        .await
        .expect("join");
    assert!(ok, "get: {out}");
    assert!(
        out.contains("STATE") && out.contains("POWER") && out.contains("web-1"),
        "{out}"
    );
    let (ok, out) = run(vec!["get".into(), "net".into()]).await.expect("join");
    assert!(
        ok && out.contains("NETBLOCK") && out.contains("10.0.0.0/24"),
        "{out}"
    );
    // Unknown fields are refused by validation.
    let bad = dir.join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: shakenfist.io/v1alpha1\nkind: Network\nmetadata: {name: bad, namespace: demo}\nspec: {netblock: 10.1.0.0/24, bogus: 1}\n",
    )
    .expect("bad");
    let (ok, out) = run(vec!["apply".into(), "-f".into(), bad.display().to_string()])
        .await
        .expect("join");
    assert!(!ok && out.contains("bogus"), "{out}");
    let (ok, out) = run(vec!["delete".into(), "-f".into(), path])
        .await
        .expect("join");
    assert!(ok, "delete: {out}");
    assert_eq!(env.count_rows("Instance"), 0);
    let _ = std::fs::remove_dir_all(&dir);
}
