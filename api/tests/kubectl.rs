//! kubectl (when installed) against sf-api's native HTTPS: discovery, client-side
//! apply with OpenAPI validation, Table output, delete.
//!
//! kubectl sends credentials only over TLS (clientcmd drops the user's token for an
//! `http://` server), so sf-api serves a self-signed certificate it generated itself;
//! the kubeconfig trusts it (`certificate-authority-data`) and carries a bearer token
//! from `POST /auth`.

mod common;

use std::process::Command;

use base64::Engine;
use common::start_with;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_applies_gets_and_deletes() {
    if Command::new("kubectl")
        .arg("version")
        .arg("--client")
        .output()
        .is_err()
    {
        // CI (SF_REQUIRE_PRIVILEGED=1) must run it: tools/install-deps.sh installs it.
        assert!(
            std::env::var("SF_REQUIRE_PRIVILEGED").as_deref() != Ok("1"),
            "kubectl is not installed (tools/install-deps.sh installs it)"
        );
        println!("kubectl is not installed: test skipped");
        return;
    }
    let dir = std::env::temp_dir().join(format!("sf-api-kubectl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let cert = dir.join("tls").join("cert.pem");
    let key = dir.join("tls").join("key.pem");
    let env = start_with(&[
        &format!("--api-tls-cert-path={}", cert.display()),
        &format!("--api-tls-key-path={}", key.display()),
        "--api-tls-self-signed",
    ])
    .await;
    assert!(env.url.starts_with("https://"), "{}", env.url);
    let ca = std::fs::read(&cert).expect("generated certificate");
    let kubeconfig = dir.join("config");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: sf\n  cluster:\n    server: {}\n    certificate-authority-data: {}\ncontexts:\n- name: sf\n  context:\n    cluster: sf\n    user: sf\n    namespace: demo\ncurrent-context: sf\nusers:\n- name: sf\n  user:\n    token: {}\n",
            env.url,
            base64::engine::general_purpose::STANDARD.encode(ca),
            env.system_token
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
