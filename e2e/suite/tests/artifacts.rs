//! Artifacts end to end, driven through `sf` only: an Artifact whose source is a
//! qcow2 image on an HTTP server this test runs on 127.0.0.1 is fetched by an agent
//! into a blob (one version, a Blob with its sha512, size and node); an instance
//! placed on the other node waits for it, gets the blob replicated to its node by a
//! verified `artifact_fetch` first, then reaches running on a disk backed by the
//! blob; an instance on the fetching node uses the blob without a second copy.
//! Then garbage collection: with the artifact deleted the Blob is unused; after the
//! grace its file goes from the node whose instance is gone, stays (refused, "in
//! use") on the node whose instance disk is backed by it, and goes there too once
//! that instance is deleted; the Blob's record goes a little later. Before that, a
//! snapshot (`sf instance snapshot`) of `near`'s disk becomes version 1 of a snapshot
//! artifact, a flattened qcow2 blob on its node from which a new instance boots.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;

use serde_json::Value;
use sf_e2e::{System, SystemOptions, require_root, wait_for};

/// Serves `image` at `/tiny.qcow2` on 127.0.0.1 (only there) from a thread; counts
/// the GETs of it. Returns the URL.
fn serve(image: Vec<u8>, hits: Arc<AtomicUsize>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
    let addr = listener.local_addr().expect("local address");
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let image = image.clone();
            let hits = hits.clone();
            thread::spawn(move || {
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&request);
                let ok = text.starts_with("GET /tiny.qcow2 ");
                let (status, body) = if ok {
                    hits.fetch_add(1, Ordering::SeqCst);
                    ("200 OK", image)
                } else {
                    ("404 Not Found", b"not here\n".to_vec())
                };
                let head = format!(
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(head.as_bytes());
                let _ = stream.write_all(&body);
            });
        }
    });
    format!("http://{addr}/tiny.qcow2")
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn sha512_of(path: &Path) -> String {
    run(Command::new("sha512sum").arg(path))
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}

fn get(system: &System, args: &[&str]) -> Option<Value> {
    system.sf_json(args).ok()
}

fn named<'a>(list: &'a Value, name: &str) -> Option<&'a Value> {
    list["items"]
        .as_array()?
        .iter()
        .find(|i| i["metadata"]["name"] == name)
}

fn manifest(url: &str, fetch_node: &str, other_node: &str) -> String {
    format!(
        r#"
apiVersion: shakenfist.io/v1alpha1
kind: Namespace
metadata: {{name: arts}}
spec: {{}}
---
apiVersion: shakenfist.io/v1alpha1
kind: Artifact
metadata: {{name: tiny, namespace: arts}}
spec: {{sourceUrl: "{url}", maxVersions: 2}}
---
apiVersion: shakenfist.io/v1alpha1
kind: Instance
metadata: {{name: far, namespace: arts}}
spec:
  cpus: 1
  memory: 128
  disks: [{{base: tiny, size: 1, bus: virtio, type: disk}}]
  placedOn: {other_node}
  powerState: "on"
---
apiVersion: shakenfist.io/v1alpha1
kind: Instance
metadata: {{name: near, namespace: arts}}
spec:
  cpus: 1
  memory: 128
  disks: [{{base: tiny, size: 1, bus: virtio, type: disk}}]
  placedOn: {fetch_node}
  powerState: "on"
"#
    )
}

#[test]
fn an_artifact_is_fetched_replicated_and_backs_instance_disks() {
    if !require_root("an_artifact_is_fetched_replicated_and_backs_instance_disks") {
        return;
    }
    let system = match System::start(&SystemOptions::default()) {
        Ok(s) => s,
        Err(e) => panic!("system did not start: {e}"),
    };
    let fail = |what: String| -> ! {
        let ops = system.sf(&["get", "clusteroperations", "-A", "-o", "wide"]);
        panic!(
            "{what}\noperations:\n{}\ninstances: {:?}\nartifacts: {:?}\nblobs: {:?}\n{}",
            String::from_utf8_lossy(&ops.stdout),
            get(&system, &["get", "instances", "-n", "arts", "-o", "json"]),
            get(&system, &["get", "artifacts", "-n", "arts", "-o", "json"]),
            get(&system, &["get", "blobs", "-o", "json"]),
            system.logs()
        )
    };

    // A small valid qcow2, served on loopback (the agents run in the root network
    // namespace; only their host networking is in theirs).
    let image = system.dir.path().join("tiny.qcow2");
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&image)
        .arg("16M"));
    let want_sha512 = sha512_of(&image);
    let bytes = std::fs::read(&image).expect("read the image");
    let size = bytes.len() as u64;
    let hits = Arc::new(AtomicUsize::new(0));
    let url = serve(bytes, hits.clone());

    // The artifact fetches on the lowest-named node; `far` is placed on the other.
    let mut names: Vec<&str> = system.nodes.iter().map(|n| n.name.as_str()).collect();
    names.sort_unstable();
    let (fetch_node, other_node) = (names[0], names[1]);
    let out = system.apply("arts", &manifest(&url, fetch_node, other_node));
    if !out.status.success() {
        fail(format!("apply: {}", String::from_utf8_lossy(&out.stderr)));
    }

    // The artifact reaches created with one version.
    let artifact = wait_for(
        "the artifact to be created",
        Duration::from_secs(90),
        || {
            let list = get(&system, &["get", "artifacts", "-n", "arts", "-o", "json"])?;
            let a = named(&list, "tiny")?.clone();
            (a["status"]["state"] == "created").then_some(a)
        },
    )
    .unwrap_or_else(|e| fail(e.to_string()));
    let versions = artifact["status"]["versions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(versions.len(), 1, "{artifact}");
    assert_eq!(versions[0]["index"], 1, "{artifact}");
    assert_eq!(versions[0]["size"], size, "{artifact}");
    let blob = versions[0]["blob"].as_str().unwrap_or_default().to_owned();

    // Both instances run; `far` needed a replica on its node first.
    for name in ["far", "near"] {
        wait_for(&format!("{name} to run"), Duration::from_secs(120), || {
            let list = get(&system, &["get", "instances", "-n", "arts", "-o", "json"])?;
            let i = named(&list, name)?;
            (i["status"]["powerState"] == "running").then_some(())
        })
        .unwrap_or_else(|e| fail(e.to_string()));
    }

    // The Blob: its checksum is the image's, both nodes hold it, one version uses it.
    let blob_obj = wait_for("the Blob on both nodes", Duration::from_secs(60), || {
        let list = get(&system, &["get", "blobs", "-o", "json"])?;
        let b = named(&list, &blob)?.clone();
        let nodes = b["status"]["nodes"].as_array()?.len();
        (nodes == 2).then_some(b)
    })
    .unwrap_or_else(|e| fail(e.to_string()));
    assert_eq!(
        blob_obj["status"]["checksums"]["sha512"],
        want_sha512.as_str(),
        "{blob_obj}"
    );
    assert_eq!(blob_obj["status"]["size"], size, "{blob_obj}");
    assert_eq!(blob_obj["status"]["referenceCount"], 1, "{blob_obj}");
    assert_eq!(blob_obj["status"]["state"], "created", "{blob_obj}");
    assert_eq!(blob_obj["spec"]["ownerNamespace"], "arts", "{blob_obj}");
    assert_eq!(
        blob_obj["spec"]["mimeType"], "application/x-qemu-disk",
        "{blob_obj}"
    );

    // The replication ran on `far`'s node only, and downloaded once more (verified).
    let ops = get(
        &system,
        &["get", "clusteroperations", "-n", "arts", "-o", "json"],
    )
    .unwrap_or_else(|| fail("list operations".into()));
    let fetches: Vec<&Value> = ops["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|o| o["spec"]["operationType"] == "artifact_fetch")
        .collect();
    let on = |node: &str| fetches.iter().filter(|o| o["spec"]["node"] == node).count();
    assert_eq!((on(fetch_node), on(other_node)), (1, 1), "{fetches:?}");
    let replica = fetches
        .iter()
        .find(|o| o["spec"]["node"] == other_node)
        .unwrap_or_else(|| fail("no replication fetch".into()));
    assert!(
        replica["metadata"]["name"]
            .as_str()
            .is_some_and(|n| n.starts_with("instance-far-") && n.ends_with("-fetch-tiny")),
        "{replica}"
    );
    assert_eq!(
        replica["spec"]["payload"]["sha512"],
        want_sha512.as_str(),
        "{replica}"
    );
    assert_eq!(replica["status"]["state"], "complete", "{replica}");
    assert_eq!(hits.load(Ordering::SeqCst), 2, "one download per node");

    // The agents allow the mirror (127.0.0.1/32) to tenants, nothing else internal: an
    // artifact of `arts` on another loopback address goes to error, never fetched.
    let inside = url.replace("127.0.0.1", "127.0.0.2");
    let out = system.apply(
        "inside",
        &format!(
            "apiVersion: shakenfist.io/v1alpha1\nkind: Artifact\n\
             metadata: {{name: inside, namespace: arts}}\nspec: {{sourceUrl: \"{inside}\"}}\n"
        ),
    );
    if !out.status.success() {
        fail(format!(
            "apply inside: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let refused = wait_for(
        "the inside artifact in error",
        Duration::from_secs(90),
        || {
            let list = get(&system, &["get", "artifacts", "-n", "arts", "-o", "json"])?;
            let a = named(&list, "inside")?.clone();
            (a["status"]["state"] == "error").then_some(a)
        },
    )
    .unwrap_or_else(|e| fail(e.to_string()));
    assert!(
        refused["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["message"]
                .as_str()
                .is_some_and(|m| m.contains("127.0.0.2 is an internal address"))),
        "{refused}"
    );
    assert_eq!(
        hits.load(Ordering::SeqCst),
        2,
        "nothing more was downloaded"
    );

    // On each node the blob file is the image, and the instance disk is backed by it.
    let instances = get(&system, &["get", "instances", "-n", "arts", "-o", "json"])
        .unwrap_or_else(|| fail("list instances".into()));
    for node in &system.nodes {
        let file = node.storage.join("blobs").join(&blob);
        assert_eq!(sha512_of(&file), want_sha512, "{}", file.display());
        let instance = instances["items"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|i| i["status"]["node"] == node.name.as_str())
            .unwrap_or_else(|| fail(format!("no instance on {}", node.name)));
        let uid = instance["metadata"]["uid"].as_str().unwrap_or_default();
        let disk = node
            .storage
            .join("instances")
            .join(uid)
            .join("disk-0.qcow2");
        let info = run(Command::new("qemu-img")
            .args(["info", "--output=json", "-U"])
            .arg(&disk));
        let info: Value = serde_json::from_str(&info).expect("qemu-img info JSON");
        assert_eq!(
            info["backing-filename"],
            file.display().to_string(),
            "{}: {info}",
            disk.display()
        );
    }

    // Settled: re-reconciling changes nothing (no write loop on the artifact or Blob).
    let versions_now = || {
        let a = get(&system, &["get", "artifacts", "-n", "arts", "-o", "json"])?;
        let b = get(&system, &["get", "blobs", "-o", "json"])?;
        Some((
            named(&a, "tiny")?["metadata"]["resourceVersion"].clone(),
            named(&b, &blob)?["metadata"]["resourceVersion"].clone(),
        ))
    };
    let before = versions_now();
    thread::sleep(Duration::from_secs(5));
    assert_eq!(
        versions_now(),
        before,
        "the artifact and its Blob stay unwritten"
    );

    // A snapshot of `near`'s disk: a flattened qcow2 blob on its node, version 1 of
    // the artifact `<near uid>-vda`, and a base a new instance on that node boots from.
    let near_uid = named(&instances, "near")
        .and_then(|i| i["metadata"]["uid"].as_str())
        .unwrap_or_else(|| fail("no uid for near".into()))
        .to_owned();
    let out = system.sf(&["instance", "snapshot", "near", "-n", "arts", "--wait"]);
    if !out.status.success() {
        fail(format!(
            "snapshot: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let snapshot_name = format!("{near_uid}-vda");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("vda: artifact/{snapshot_name}")),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let snap = wait_for(
        "the snapshot recorded as a version",
        Duration::from_secs(60),
        || {
            let list = get(&system, &["get", "artifacts", "-n", "arts", "-o", "json"])?;
            let a = named(&list, &snapshot_name)?.clone();
            (a["status"]["state"] == "created").then_some(a)
        },
    )
    .unwrap_or_else(|e| fail(e.to_string()));
    assert_eq!(snap["spec"]["artifactType"], "snapshot", "{snap}");
    assert_eq!(
        snap["spec"]["sourceUrl"],
        format!("sf://instance/{near_uid}/vda"),
        "{snap}"
    );
    let snap_blob = snap["status"]["versions"][0]["blob"]
        .as_str()
        .unwrap_or_else(|| fail(format!("no version: {snap}")))
        .to_owned();
    let near_storage = system
        .nodes
        .iter()
        .find(|n| n.name == fetch_node)
        .map(|n| n.storage.clone())
        .unwrap_or_else(|| fail("no near node".into()));
    let snap_file = near_storage.join("blobs").join(&snap_blob);
    let info = run(Command::new("qemu-img")
        .args(["info", "--output=json", "-U"])
        .arg(&snap_file));
    let info: Value = serde_json::from_str(&info).expect("qemu-img info JSON");
    assert_eq!(info["format"], "qcow2", "{info}");
    assert!(info.get("backing-filename").is_none(), "flattened: {info}");
    let snap_blob_obj = wait_for("the snapshot's Blob", Duration::from_secs(60), || {
        let list = get(&system, &["get", "blobs", "-o", "json"])?;
        named(&list, &snap_blob).cloned()
    })
    .unwrap_or_else(|e| fail(e.to_string()));
    assert_eq!(
        snap_blob_obj["status"]["checksums"]["sha512"],
        sha512_of(&snap_file).as_str(),
        "{snap_blob_obj}"
    );
    assert_eq!(
        snap_blob_obj["status"]["nodes"],
        serde_json::json!([fetch_node]),
        "{snap_blob_obj}"
    );
    assert_eq!(snap_blob_obj["spec"]["mimeType"], "application/x-qcow2");
    let clone = format!(
        r#"
apiVersion: shakenfist.io/v1alpha1
kind: Instance
metadata: {{name: clone, namespace: arts}}
spec:
  cpus: 1
  memory: 128
  disks: [{{base: {snapshot_name}, size: 1, bus: virtio, type: disk}}]
  placedOn: {fetch_node}
  powerState: "on"
"#
    );
    let out = system.apply("clone", &clone);
    if !out.status.success() {
        fail(format!(
            "apply clone: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let clone_uid = wait_for("the clone to run", Duration::from_secs(120), || {
        let list = get(&system, &["get", "instances", "-n", "arts", "-o", "json"])?;
        let i = named(&list, "clone")?;
        (i["status"]["powerState"] == "running").then(|| i["metadata"]["uid"].clone())
    })
    .unwrap_or_else(|e| fail(e.to_string()));
    let clone_disk = near_storage
        .join("instances")
        .join(clone_uid.as_str().unwrap_or_default())
        .join("disk-0.qcow2");
    let info = run(Command::new("qemu-img")
        .args(["info", "--output=json", "-U"])
        .arg(&clone_disk));
    let info: Value = serde_json::from_str(&info).expect("qemu-img info JSON");
    assert_eq!(
        info["backing-filename"],
        snap_file.display().to_string(),
        "the clone's disk is backed by the snapshot: {info}"
    );

    // Garbage collection (grace 2 s, retry 3 s in these systems). `near` goes, then
    // the artifact: nothing names the blob any more, but `far`'s disk is backed by it.
    let near_node = fetch_node;
    for (kind, name) in [("instance", "near"), ("artifact", "tiny")] {
        let out = system.sf(&["delete", kind, name, "-n", "arts"]);
        if !out.status.success() {
            fail(format!(
                "delete {kind} {name}: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    let far_file = system
        .nodes
        .iter()
        .find(|n| n.name == other_node)
        .map(|n| n.storage.join("blobs").join(&blob))
        .unwrap_or_else(|| fail("no far node".into()));
    let near_file = system
        .nodes
        .iter()
        .find(|n| n.name == near_node)
        .map(|n| n.storage.join("blobs").join(&blob))
        .unwrap_or_else(|| fail("no near node".into()));
    let refused = wait_for(
        "the blob removed where unused and refused where in use",
        Duration::from_secs(120),
        || {
            let list = get(&system, &["get", "blobs", "-o", "json"])?;
            let b = named(&list, &blob)?.clone();
            let nodes = b["status"]["nodes"].as_array()?.clone();
            let refused = b["status"]["conditions"]
                .as_array()?
                .iter()
                .any(|c| c["type"] == "Removed" && c["reason"] == "Refused");
            (b["status"]["state"] == "deleted" && nodes == vec![Value::from(other_node)] && refused)
                .then_some(b)
        },
    )
    .unwrap_or_else(|e| fail(e.to_string()));
    assert!(!near_file.exists(), "{}", near_file.display());
    assert!(
        far_file.exists(),
        "a backing file is never removed: {refused}"
    );
    let message = refused["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Removed")
        .map(|c| c["message"].to_string())
        .unwrap_or_default();
    assert!(message.contains("in use"), "{message}");

    let out = system.sf(&["delete", "instance", "far", "-n", "arts"]);
    if !out.status.success() {
        fail(format!(
            "delete instance far: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    wait_for(
        "the blob removed everywhere",
        Duration::from_secs(120),
        || {
            let list = get(&system, &["get", "blobs", "-o", "json"])?;
            // Already past its record time: gone (only ever after Removed).
            let Some(b) = named(&list, &blob).cloned() else {
                return Some(());
            };
            let removed = b["status"]["conditions"]
                .as_array()?
                .iter()
                .any(|c| c["type"] == "Removed" && c["status"] == "True");
            (b["status"]["nodes"].as_array().is_none_or(Vec::is_empty) && removed).then_some(())
        },
    )
    .unwrap_or_else(|e| fail(e.to_string()));
    assert!(!far_file.exists(), "{}", far_file.display());
    // The record is kept for SHAKENFIST_BLOB_GC_RECORD (3 s here), then deleted.
    wait_for("the Blob record deleted", Duration::from_secs(60), || {
        let list = get(&system, &["get", "blobs", "-o", "json"])?;
        named(&list, &blob).is_none().then_some(())
    })
    .unwrap_or_else(|e| fail(e.to_string()));
}
