//! The real `sf` binary against an in-process sf-database + sf-api on a private
//! MariaDB: apply idempotence, the `get -o yaml` round trip, bad YAML, login, get,
//! watch, delete, plan, and plugin dispatch.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::{SYSTEM_KEY, WEB, start};
use serde_json::Value;
use tokio::io::AsyncBufReadExt;

fn rv(object: &Value) -> String {
    object["metadata"]["resourceVersion"]
        .as_str()
        .expect("resourceVersion")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_is_idempotent() {
    let env = start().await;
    let file = env.file("web.yaml", WEB);
    let file = file.to_str().expect("path");

    let first = env.sf(&["apply", "-f", file]).await.ok();
    assert_eq!(
        first.stdout,
        "network/web created\ninstance/web-1 created\n"
    );
    let before = env.get_json("instance", "web-1").await;

    let second = env.sf(&["apply", "-f", file]).await.ok();
    assert_eq!(
        second.stdout,
        "network/web unchanged\ninstance/web-1 unchanged\n"
    );
    let after = env.get_json("instance", "web-1").await;
    assert_eq!(rv(&before), rv(&after), "an unchanged apply wrote nothing");

    // A real change is `configured`, and only that object is written.
    let net_before = env.get_json("network", "web").await;
    let changed = WEB.replace("labels: {tier: web}", "labels: {tier: db}");
    let changed_file = env.file("web2.yaml", &changed);
    let third = env
        .sf(&["apply", "-f", changed_file.to_str().expect("path")])
        .await
        .ok();
    assert_eq!(
        third.stdout,
        "network/web unchanged\ninstance/web-1 configured\n"
    );
    let changed_obj = env.get_json("instance", "web-1").await;
    assert_eq!(changed_obj["metadata"]["labels"]["tier"], "db");
    assert_ne!(rv(&changed_obj), rv(&after));
    assert_eq!(rv(&env.get_json("network", "web").await), rv(&net_before));

    // A spec change: powerState off.
    let off = changed.replace("powerState: \"on\"", "powerState: \"off\"");
    let off_file = env.file("web3.yaml", &off);
    let fourth = env
        .sf(&["apply", "-f", off_file.to_str().expect("path")])
        .await
        .ok();
    assert!(
        fourth.stdout.contains("instance/web-1 configured"),
        "{fourth:?}"
    );
    assert_eq!(
        env.get_json("instance", "web-1").await["spec"]["powerState"],
        "off"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_yaml_round_trips_unchanged() {
    let env = start().await;
    let file = env.file("web.yaml", WEB);
    env.sf(&["apply", "-f", file.to_str().expect("path")])
        .await
        .ok();
    let before = env.get_json("instance", "web-1").await;

    let one = env
        .sf(&["-n", "demo", "get", "instance", "web-1", "-o", "yaml"])
        .await
        .ok();
    assert!(one.stdout.contains("kind: Instance"), "{one:?}");
    assert!(one.stdout.contains("resourceVersion:"), "{one:?}");
    let printed = env.file("printed.yaml", &one.stdout);
    let again = env
        .sf(&["apply", "-f", printed.to_str().expect("path")])
        .await
        .ok();
    assert_eq!(again.stdout, "instance/web-1 unchanged\n");

    // The list form (a multi-document stream) too, via stdin.
    let all = env
        .sf(&["-n", "demo", "get", "instances", "-o", "yaml"])
        .await
        .ok();
    let mut child = env
        .command(&["apply", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn sf");
    {
        use tokio::io::AsyncWriteExt;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin
            .write_all(all.stdout.as_bytes())
            .await
            .expect("write stdin");
    }
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("sf apply -f - finishes")
        .expect("output");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "instance/web-1 unchanged\n"
    );
    assert_eq!(rv(&env.get_json("instance", "web-1").await), rv(&before));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_yaml_applies_nothing_and_names_file_and_line() {
    let env = start().await;
    // The first two documents are fine; the third has an unclosed mapping on line 27.
    let broken = format!(
        "{WEB}---\napiVersion: shakenfist.io/v1alpha1\nkind: Network\nmetadata: {{name: broken\nspec: {{netblock: 10.1.0.0/24}}\n"
    );
    let file = env.file("broken.yaml", &broken);
    let path = file.to_str().expect("path");
    let run = env.sf(&["apply", "-f", path]).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stdout.is_empty(), "nothing applied: {run:?}");
    assert!(
        run.stderr.contains(&format!("{path}:27:")) || run.stderr.contains(&format!("{path}:28:")),
        "file and line in {:?}",
        run.stderr
    );
    assert_eq!(env.count_rows("Network"), 0);
    assert_eq!(env.count_rows("Instance"), 0);

    // An unknown field in a valid YAML document: its own line.
    let typo = WEB.replace("  memory: 512\n", "  memory: 512\n  memroy: 512\n");
    let file = env.file("typo.yaml", &typo);
    let path = file.to_str().expect("path");
    let run = env.sf(&["apply", "-f", path]).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains(&format!("{path}:19:")),
        "{:?}",
        run.stderr
    );
    assert!(run.stderr.contains("memroy"), "{:?}", run.stderr);
    assert_eq!(env.count_rows("Network"), 0);
    assert_eq!(env.count_rows("Instance"), 0);

    // A semantic error (cpus 0) in the second document keeps the first out too.
    let invalid = WEB.replace("cpus: 1", "cpus: 0");
    let file = env.file("invalid.yaml", &invalid);
    let run = env.sf(&["apply", "-f", file.to_str().expect("path")]).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("spec.cpus"), "{:?}", run.stderr);
    assert_eq!(env.count_rows("Network"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_writes_a_private_config_and_refuses_a_wrong_key() {
    let env = start().await;
    let path = env.dir.path().join("fresh").join("config.yaml");
    let run = env
        .sf_with(
            &[
                "login",
                "--url",
                &env.url,
                "-n",
                "system",
                "--key",
                "wrong-key",
            ],
            |c| {
                c.env("SF_CONFIG", &path);
            },
        )
        .await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(!path.exists(), "no config written on a wrong key");

    let run = env
        .sf_with(
            &[
                "login", "--url", &env.url, "-n", "system", "--key", SYSTEM_KEY,
            ],
            |c| {
                c.env("SF_CONFIG", &path);
            },
        )
        .await
        .ok();
    assert!(run.stdout.contains("Logged in"), "{run:?}");
    let mode = std::fs::metadata(&path)
        .expect("config")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let text = std::fs::read_to_string(&path).expect("read");
    assert!(text.contains(&format!("apiUrl: {}", env.url)), "{text}");
    // The new config works.
    let run = env
        .sf_with(&["-n", "demo", "get", "instances"], |c| {
            c.env("SF_CONFIG", &path);
        })
        .await
        .ok();
    assert!(run.stderr.contains("No instances found"), "{run:?}");

    // Environment overrides the file: a wrong key from the environment fails.
    let run = env
        .sf_with(&["-n", "demo", "get", "instances"], |c| {
            c.env("SF_CONFIG", &path).env("SHAKENFIST_KEY", "nope");
        })
        .await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("401"), "{run:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_over_https_with_a_ca_file() {
    let tls = tempfile::tempdir().expect("tempdir");
    let cert = tls.path().join("cert.pem");
    let env = common::start_with(&[
        &format!("--api-tls-cert-path={}", cert.display()),
        &format!(
            "--api-tls-key-path={}",
            tls.path().join("key.pem").display()
        ),
        "--api-tls-self-signed",
    ])
    .await;
    assert!(env.url.starts_with("https://"), "{}", env.url);
    let path = env.dir.path().join("tls").join("config.yaml");
    let login = |extra: Vec<String>| {
        let mut args: Vec<String> = ["login", "--url", &env.url, "-n", "system", "--key"]
            .iter()
            .map(ToString::to_string)
            .collect();
        args.push(SYSTEM_KEY.into());
        args.extend(extra);
        args
    };
    // Without the CA the self-signed certificate is not trusted.
    let args = login(vec![]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = env
        .sf_with(&refs, |c| {
            c.env("SF_CONFIG", &path);
        })
        .await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(!path.exists());

    let args = login(vec!["--ca-file".into(), cert.display().to_string()]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    env.sf_with(&refs, |c| {
        c.env("SF_CONFIG", &path);
    })
    .await
    .ok();
    let text = std::fs::read_to_string(&path).expect("read");
    assert!(text.contains("caFile: "), "{text}");
    let run = env
        .sf_with(&["-n", "demo", "get", "instances"], |c| {
            c.env("SF_CONFIG", &path);
        })
        .await
        .ok();
    assert!(run.stderr.contains("No instances found"), "{run:?}");
    // SF_CA_FILE overrides the file's CA: a wrong one is refused.
    let run = env
        .sf_with(&["-n", "demo", "get", "instances"], |c| {
            c.env("SF_CONFIG", &path)
                .env("SF_CA_FILE", tls.path().join("key.pem"));
        })
        .await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("CA file"), "{run:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_describe_and_delete() {
    let env = start().await;
    let file = env.file("web.yaml", WEB);
    let path = file.to_str().expect("path");
    env.sf(&["apply", "-f", path]).await.ok();

    let table = env.sf(&["-n", "demo", "get", "instances"]).await.ok();
    let lines: Vec<&str> = table.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{table:?}");
    assert!(lines[0].starts_with("NAME"), "{table:?}");
    assert!(
        lines[0].contains("STATE") && lines[0].ends_with("AGE"),
        "{table:?}"
    );
    assert!(lines[1].starts_with("web-1 "), "{table:?}");

    let wide = env
        .sf(&["-n", "demo", "get", "inst", "-o", "wide"])
        .await
        .ok();
    assert!(wide.stdout.contains("CPUS"), "{wide:?}");

    let list = env
        .sf(&["-n", "demo", "get", "networks", "-o", "json"])
        .await
        .ok();
    let list: Value = serde_json::from_str(&list.stdout).expect("JSON");
    assert_eq!(list["items"][0]["metadata"]["name"], "web");

    let described = env
        .sf(&["-n", "demo", "describe", "instance", "web-1"])
        .await
        .ok();
    println!("{}\n{}", described.stdout, wide.stdout);
    for part in [
        "Name:         web-1",
        "Spec:",
        "cpus: 1",
        "Status:",
        "Conditions:",
        "Events:",
    ] {
        assert!(described.stdout.contains(part), "{part} in {described:?}");
    }

    let missing = env.sf(&["-n", "demo", "get", "instance", "nope"]).await;
    assert_eq!(missing.code, 1);
    assert!(missing.stderr.contains("404"), "{missing:?}");

    let unknown = env.sf(&["-n", "demo", "get", "widgets"]).await;
    assert_eq!(unknown.code, 1);
    assert!(unknown.stderr.contains("unknown kind"), "{unknown:?}");

    let deleted = env
        .sf(&["delete", "-f", path, "--wait", "--timeout", "30"])
        .await
        .ok();
    assert_eq!(
        deleted.stdout,
        "instance/web-1 deleted\nnetwork/web deleted\n"
    );
    assert_eq!(env.count_rows("Instance"), 0);
    let again = env.sf(&["-n", "demo", "delete", "instance", "web-1"]).await;
    assert_eq!(again.code, 1, "{again:?}");
    assert!(again.stderr.contains("not found"), "{again:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_prints_one_json_event_per_line() {
    let env = start().await;
    let mut child = env
        .command(&["-n", "demo", "get", "instances", "-w", "-o", "json"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn watch");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let file = env.file("web.yaml", WEB);
    env.sf(&["apply", "-f", file.to_str().expect("path")])
        .await
        .ok();
    let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .expect("an event within 20 s")
        .expect("read")
        .expect("a line");
    let event: Value = serde_json::from_str(&line).expect("one JSON event per line");
    assert_eq!(event["type"], "ADDED");
    assert_eq!(event["object"]["metadata"]["name"], "web-1");
    child.kill().await.expect("kill watch");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_get_the_connection() {
    let env = start().await;
    let bin = env.dir.path().join("bin");
    std::fs::create_dir(&bin).expect("mkdir");
    let script = bin.join("sf-hello");
    std::fs::write(
        &script,
        "#!/bin/sh\necho \"hello $*\"\necho \"url=$SHAKENFIST_API_URL\"\necho \"ns=$SHAKENFIST_NAMESPACE\"\necho \"token=${SHAKENFIST_TOKEN:+set}\"\nexit 3\n",
    )
    .expect("write plugin");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );

    let run = env
        .sf_with(&["-n", "demo", "hello", "a", "--b"], |c| {
            c.env("PATH", &path);
        })
        .await;
    assert_eq!(run.code, 3, "the plugin's exit code: {run:?}");
    assert_eq!(
        run.stdout,
        format!("hello a --b\nurl={}\nns=demo\ntoken=set\n", env.url)
    );

    let listed = env
        .sf_with(&["plugin", "list"], |c| {
            c.env("PATH", &path);
        })
        .await
        .ok();
    assert!(listed.stdout.contains("hello"), "{listed:?}");
    assert!(
        listed.stdout.contains(&script.display().to_string()),
        "{listed:?}"
    );

    let unknown = env
        .sf_with(&["nosuchplugin"], |c| {
            c.env("PATH", &path);
        })
        .await;
    assert_eq!(unknown.code, 1, "{unknown:?}");
    assert!(unknown.stderr.contains("sf-nosuchplugin"), "{unknown:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completion_and_help() {
    let env = start().await;
    for shell in ["bash", "zsh", "fish"] {
        let run = env.sf(&["completion", shell]).await.ok();
        assert!(run.stdout.contains("apply"), "{shell}: {run:?}");
    }
    let help = env.sf(&["--help"]).await.ok();
    assert!(help.stdout.contains("Examples:"), "{help:?}");
    assert!(help.stdout.contains("sf apply -f"), "{help:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_fails_with_the_failing_conditions_message_or_times_out() {
    let env = start().await;
    let file = env.file("web.yaml", WEB);
    let path = file.to_str().expect("path");
    // No controllers run here: nothing becomes Ready.
    let run = env
        .sf(&["apply", "-f", path, "--wait", "--timeout", "2"])
        .await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stdout.contains("instance/web-1 created"), "{run:?}");
    assert!(run.stderr.contains("not Ready after 2s"), "{run:?}");

    // A controller's verdict: state error with a Ready=False condition.
    let client = sf_client::connect(sf_client::Credentials {
        url: env.url.clone(),
        namespace: "system".into(),
        key: Some(SYSTEM_KEY.into()),
        token: None,
    })
    .await
    .expect("connect");
    let status = serde_json::json!({"status": {"state": "error", "conditions": [{
        "type": "Ready", "status": "False", "reason": "NoCapacity",
        "message": "no node has 512 MiB free", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}});
    let request =
        http::Request::patch("/apis/shakenfist.io/v1alpha1/namespaces/demo/instances/web-1/status")
            .header("content-type", "application/merge-patch+json")
            .body(serde_json::to_vec(&status).expect("JSON"))
            .expect("request");
    client
        .kube()
        .request::<Value>(request)
        .await
        .expect("status patch");
    let run = env
        .sf(&["apply", "-f", path, "--wait", "--timeout", "30"])
        .await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr
            .contains("instance/web-1: failed: NoCapacity: no node has 512 MiB free"),
        "{run:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_resources_and_node_list() {
    let env = start().await;
    let resources = env.sf(&["admin", "resources", "-o", "json"]).await.ok();
    let v: Value = serde_json::from_str(&resources.stdout).expect("JSON");
    assert!(v.is_object(), "{v}");
    let nodes = env.sf(&["node", "list"]).await.ok();
    assert!(nodes.stderr.contains("No nodes found"), "{nodes:?}");
    let namespaces = env.sf(&["get", "ns"]).await.ok();
    assert!(
        namespaces.stdout.lines().any(|l| l.starts_with("demo ")),
        "{namespaces:?}"
    );
}
