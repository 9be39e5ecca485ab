//! Watches: the wire format on raw HTTP, kube-runtime's `watcher` (including recovery
//! from a compacted change log without looping) and a minimal `Controller`.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use common::{Env, instance, start, start_with};
use futures::{StreamExt, TryStreamExt};
use http_body_util::BodyExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher::{self, Event};
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};
use sf_proto::v1 as pb;
use sf_schema::{Instance, StringEnum};
use tokio::sync::mpsc;

const INSTANCES: &str = "/apis/shakenfist.io/v1alpha1/namespaces/demo/instances";

/// Reads a watch body line by line.
struct Lines {
    body: kube::client::Body,
    buffer: Vec<u8>,
    ended: bool,
}

impl Lines {
    /// The next event, or None when the stream ended or `wait` passed.
    async fn next(&mut self, wait: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(i) = self.buffer.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=i).collect();
                return Some(serde_json::from_slice(&line).unwrap_or_else(|e| {
                    panic!("bad line ({e}): {}", String::from_utf8_lossy(&line))
                }));
            }
            if self.ended {
                assert!(self.buffer.is_empty(), "a partial line at the end");
                return None;
            }
            match tokio::time::timeout_at(deadline, self.body.frame()).await {
                Err(_) => return None,
                Ok(None) => self.ended = true,
                Ok(Some(frame)) => {
                    if let Ok(data) = frame.expect("frame").into_data() {
                        self.buffer.extend_from_slice(&data);
                    }
                }
            }
        }
    }

    /// The next event that is not a bookmark.
    async fn next_change(&mut self, wait: Duration) -> Option<Value> {
        loop {
            let event = self.next(wait).await?;
            if event["type"] != "BOOKMARK" {
                return Some(event);
            }
        }
    }
}

async fn open_watch(env: &Env, query: &str) -> (u16, http::HeaderMap, Lines) {
    let request = http::Request::get(format!("{INSTANCES}?{query}"))
        .body(kube::client::Body::empty())
        .expect("request");
    let response = env.client.send(request).await.expect("watch");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (
        status,
        headers,
        Lines {
            body: response.into_body(),
            buffer: Vec::new(),
            ended: false,
        },
    )
}

async fn list_rv(env: &Env) -> String {
    let answer = env.raw("GET", INSTANCES, &[], None).await;
    answer.json()["metadata"]["resourceVersion"]
        .as_str()
        .expect("list rv")
        .to_string()
}

async fn compact_all(env: &Env) -> u64 {
    env.gateway
        .call("compact", |mut g| async move {
            g.compact(pb::CompactRequest {
                to_revision: u64::MAX,
            })
            .await
        })
        .await
        .expect("compact")
        .compacted_revision
}

#[tokio::test]
async fn wire_format_events_bookmarks_and_selector_transitions() {
    let env = start_with(&["--watch-bookmark-seconds=1"]).await;
    let api: Api<Instance> = Api::namespaced(env.client.clone(), "demo");
    let rv = list_rv(&env).await;

    let (status, headers, mut lines) = open_watch(
        &env,
        &format!("&watch=true&timeoutSeconds=20&allowWatchBookmarks=true&resourceVersion={rv}&labelSelector=tier%3Dweb"),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(headers["transfer-encoding"], "chunked");
    assert!(headers.get("content-encoding").is_none());

    api.create(&PostParams::default(), &instance("web-1"))
        .await
        .expect("create");
    let added = lines
        .next_change(Duration::from_secs(5))
        .await
        .expect("ADDED");
    assert_eq!(added["type"], "ADDED");
    assert_eq!(added["object"]["apiVersion"], "shakenfist.io/v1alpha1");
    assert_eq!(added["object"]["kind"], "Instance");
    assert_eq!(added["object"]["spec"]["cpus"], 1);
    assert!(added["object"]["metadata"]["resourceVersion"].is_string());

    // Bookmarks come (asked for), typed.
    let deadline = Instant::now() + Duration::from_secs(5);
    let bookmark = loop {
        let event = lines.next(Duration::from_secs(3)).await.expect("an event");
        if event["type"] == "BOOKMARK" {
            break event;
        }
        assert!(Instant::now() < deadline, "no bookmark");
    };
    assert_eq!(bookmark["object"]["apiVersion"], "shakenfist.io/v1alpha1");
    assert_eq!(bookmark["object"]["kind"], "Instance");
    assert!(bookmark["object"]["metadata"]["resourceVersion"].is_string());

    api.patch(
        "web-1",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"powerState": "off"}})),
    )
    .await
    .expect("patch");
    let modified = lines
        .next_change(Duration::from_secs(5))
        .await
        .expect("MODIFIED");
    assert_eq!(modified["type"], "MODIFIED");
    assert_eq!(modified["object"]["spec"]["powerState"], "off");

    // Leaving the selector is a DELETED of the previous content.
    let left = api
        .patch(
            "web-1",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"tier": "db"}}})),
        )
        .await
        .expect("relabel");
    let deleted = lines
        .next_change(Duration::from_secs(5))
        .await
        .expect("DELETED");
    assert_eq!(deleted["type"], "DELETED");
    assert_eq!(deleted["object"]["metadata"]["labels"]["tier"], "web");
    assert_eq!(
        deleted["object"]["metadata"]["resourceVersion"],
        json!(left.resource_version().unwrap())
    );
    // Coming back is an ADDED; a real delete a DELETED.
    api.patch(
        "web-1",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"tier": "web"}}})),
    )
    .await
    .expect("relabel back");
    assert_eq!(
        lines
            .next_change(Duration::from_secs(5))
            .await
            .expect("ADDED")["type"],
        "ADDED"
    );
    api.delete("web-1", &DeleteParams::default())
        .await
        .expect("delete");
    let deleted = lines
        .next_change(Duration::from_secs(5))
        .await
        .expect("DELETED");
    assert_eq!(deleted["type"], "DELETED");
    assert_eq!(
        deleted["object"]["spec"]["cpus"], 1,
        "full object on delete"
    );

    // Without allowWatchBookmarks there are none, even with changes flowing.
    let rv = list_rv(&env).await;
    let (_, _, mut quiet) = open_watch(
        &env,
        &format!("watch=1&timeoutSeconds=4&resourceVersion={rv}"),
    )
    .await;
    api.create(&PostParams::default(), &instance("web-2"))
        .await
        .expect("create");
    let mut seen = Vec::new();
    while let Some(event) = quiet.next(Duration::from_secs(6)).await {
        seen.push(event["type"].as_str().unwrap().to_string());
    }
    assert_eq!(seen, vec!["ADDED"], "the stream ends at timeoutSeconds");
}

#[tokio::test]
async fn expired_and_initial_watches() {
    let env = start().await;
    let api: Api<Instance> = Api::namespaced(env.client.clone(), "demo");
    api.create(&PostParams::default(), &instance("web-1"))
        .await
        .expect("create");
    api.create(&PostParams::default(), &instance("web-2"))
        .await
        .expect("create");
    let compacted = compact_all(&env).await;
    assert!(compacted >= 2);

    // Too old: HTTP 200 and one ERROR event with a 410 Status, then the end.
    let (status, _, mut lines) = open_watch(
        &env,
        "watch=true&resourceVersion=1&allowWatchBookmarks=true",
    )
    .await;
    assert_eq!(status, 200, "never an HTTP 410");
    let error = lines.next(Duration::from_secs(5)).await.expect("ERROR");
    assert_eq!(error["type"], "ERROR");
    assert_eq!(error["object"]["kind"], "Status");
    assert_eq!(error["object"]["apiVersion"], "v1");
    assert_eq!(error["object"]["code"], 410);
    assert_eq!(error["object"]["reason"], "Expired");
    assert!(
        lines.next(Duration::from_secs(5)).await.is_none(),
        "then the end"
    );

    // Not a number: 400 before any stream.
    let (status, _, _) = open_watch(&env, "watch=true&resourceVersion=abc").await;
    assert_eq!(status, 400);

    // No resourceVersion: the current objects as ADDED, then later changes.
    let (status, _, mut lines) = open_watch(&env, "watch=true&timeoutSeconds=10").await;
    assert_eq!(status, 200);
    let mut names = Vec::new();
    for _ in 0..2 {
        let event = lines
            .next_change(Duration::from_secs(5))
            .await
            .expect("ADDED");
        assert_eq!(event["type"], "ADDED");
        names.push(
            event["object"]["metadata"]["name"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    assert_eq!(names, vec!["web-1", "web-2"]);
    api.create(&PostParams::default(), &instance("web-3"))
        .await
        .expect("create");
    let event = lines
        .next_change(Duration::from_secs(5))
        .await
        .expect("ADDED");
    assert_eq!(event["object"]["metadata"]["name"], "web-3");

    // sendInitialEvents=false: only what happens next.
    let (_, _, mut lines) =
        open_watch(&env, "watch=true&timeoutSeconds=10&sendInitialEvents=false").await;
    // Give the watch time to start before the write it must see.
    tokio::time::sleep(Duration::from_millis(300)).await;
    api.create(&PostParams::default(), &instance("web-4"))
        .await
        .expect("create");
    let event = lines
        .next_change(Duration::from_secs(5))
        .await
        .expect("ADDED");
    assert_eq!(event["object"]["metadata"]["name"], "web-4");
}

async fn next_event(
    rx: &mut mpsc::UnboundedReceiver<Event<Instance>>,
    what: &str,
) -> Event<Instance> {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
        .expect("watcher alive")
}

fn spawn_watcher(
    api: Api<Instance>,
    config: watcher::Config,
) -> mpsc::UnboundedReceiver<Event<Instance>> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut stream = watcher::watcher(api, config).boxed();
        while let Some(item) = stream.next().await {
            // Errors (a 410 among them) make the watcher re-list on its next poll.
            if let Ok(event) = item
                && tx.send(event).is_err()
            {
                return;
            }
        }
    });
    rx
}

#[tokio::test]
async fn kube_watcher_sees_create_update_delete() {
    let env = start().await;
    let api: Api<Instance> = Api::namespaced(env.client.clone(), "demo");
    api.create(&PostParams::default(), &instance("before"))
        .await
        .expect("create");
    let mut rx = spawn_watcher(api.clone(), watcher::Config::default());
    let mut initial = Vec::new();
    loop {
        match next_event(&mut rx, "the initial list").await {
            Event::Init => {}
            Event::InitApply(i) => initial.push(i.name_any()),
            Event::InitDone => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(initial, vec!["before"]);

    api.create(&PostParams::default(), &instance("web-1"))
        .await
        .expect("create");
    match next_event(&mut rx, "the create").await {
        Event::Apply(i) => {
            assert_eq!(i.name_any(), "web-1");
            assert_eq!(i.meta().generation, Some(1));
        }
        other => panic!("unexpected {other:?}"),
    }
    api.patch(
        "web-1",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"powerState": "paused"}})),
    )
    .await
    .expect("patch");
    match next_event(&mut rx, "the update").await {
        Event::Apply(i) => assert_eq!(i.spec.power_state.wire(), "paused"),
        other => panic!("unexpected {other:?}"),
    }
    api.delete("web-1", &DeleteParams::default())
        .await
        .expect("delete");
    match next_event(&mut rx, "the delete").await {
        Event::Delete(i) => assert_eq!(i.name_any(), "web-1"),
        other => panic!("unexpected {other:?}"),
    }
}

/// Counts LIST requests of instances (GETs of the collection that are not watches).
#[derive(Clone, Default)]
struct CountLists {
    count: Arc<AtomicUsize>,
}

impl<S> tower::Layer<S> for CountLists {
    type Service = CountService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CountService {
            inner,
            count: self.count.clone(),
        }
    }
}

#[derive(Clone)]
struct CountService<S> {
    inner: S,
    count: Arc<AtomicUsize>,
}

impl<S, B> tower::Service<http::Request<B>> for CountService<S>
where
    S: tower::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let query = request.uri().query().unwrap_or_default();
        if request.method() == http::Method::GET
            && request.uri().path().ends_with("/instances")
            && !query.contains("watch=")
        {
            self.count.fetch_add(1, Ordering::SeqCst);
        }
        self.inner.call(request)
    }
}

#[tokio::test]
async fn watcher_relists_once_after_compaction() {
    // No bookmarks during the test: the watcher's resourceVersion stays behind the
    // writes to other kinds, which the compaction then removes.
    let env = start_with(&["--watch-bookmark-seconds=3600"]).await;
    let counter = CountLists::default();
    let mut config = kube::Config::new(env.url.parse().unwrap());
    config.default_namespace = "demo".into();
    config.auth_info.token = Some(secrecy::SecretString::from(env.system_token.clone()));
    let client = kube::client::ClientBuilder::try_from(config)
        .expect("builder")
        .with_layer(&counter)
        .build();
    let api: Api<Instance> = Api::namespaced(client, "demo");
    api.create(&PostParams::default(), &instance("web-1"))
        .await
        .expect("create");
    let lists = || counter.count.load(Ordering::SeqCst);
    let before = lists();

    // Watches end every second, so the watcher re-watches from its resourceVersion.
    let mut rx = spawn_watcher(api.clone(), watcher::Config::default().timeout(1));
    loop {
        if let Event::InitDone = next_event(&mut rx, "the initial list").await {
            break;
        }
    }
    assert_eq!(lists() - before, 1);

    // Writes to another kind move the revision past the watcher's; compact them away.
    let networks: Api<sf_schema::Network> = Api::namespaced(env.client.clone(), "demo");
    for i in 0..3 {
        let network: sf_schema::Network = serde_json::from_value(json!({
            "apiVersion": "shakenfist.io/v1alpha1", "kind": "Network",
            "metadata": {"name": format!("net-{i}"), "namespace": "demo"},
            "spec": {"netblock": format!("10.0.{i}.0/24")}
        }))
        .unwrap();
        networks
            .create(&PostParams::default(), &network)
            .await
            .expect("network");
    }
    compact_all(&env).await;

    // The next re-watch gets 410 Expired and the watcher lists again: exactly once.
    let deadline = Instant::now() + Duration::from_secs(10);
    while lists() - before < 2 {
        assert!(Instant::now() < deadline, "the watcher never re-listed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    api.create(&PostParams::default(), &instance("web-2"))
        .await
        .expect("create");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(Instant::now() < deadline, "web-2 never seen");
        if let Event::Apply(i) = next_event(&mut rx, "web-2").await
            && i.name_any() == "web-2"
        {
            break;
        }
    }
    // Several watch timeouts later, still two lists: no loop.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(lists() - before, 2, "the watcher must not loop re-listing");
}

#[derive(Debug, thiserror::Error)]
#[error(transparent)]
struct ReconcileError(#[from] kube::Error);

struct Ctx {
    api: Api<Instance>,
    seen: mpsc::UnboundedSender<(String, Option<i64>)>,
}

async fn reconcile(object: Arc<Instance>, ctx: Arc<Ctx>) -> Result<Action, ReconcileError> {
    let generation = object.meta().generation;
    let _ = ctx.seen.send((object.name_any(), generation));
    let observed = object.status.as_ref().and_then(|s| s.observed_generation);
    if observed != generation {
        ctx.api
            .patch_status(
                &object.name_any(),
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"observedGeneration": generation}})),
            )
            .await?;
    }
    Ok(Action::await_change())
}

fn error_policy(_: Arc<Instance>, _: &ReconcileError, _: Arc<Ctx>) -> Action {
    Action::requeue(Duration::from_millis(200))
}

#[tokio::test]
async fn controller_reconciles_creates_and_updates() {
    let env = start().await;
    let api: Api<Instance> = Api::namespaced(env.client.clone(), "demo");
    let (tx, mut rx) = mpsc::unbounded_channel();
    let ctx = Arc::new(Ctx {
        api: api.clone(),
        seen: tx,
    });
    let controller = Controller::new(api.clone(), watcher::Config::default())
        .run(reconcile, error_policy, ctx)
        .try_for_each(|_| async { Ok(()) });
    tokio::spawn(controller);

    api.create(&PostParams::default(), &instance("web-1"))
        .await
        .expect("create");
    let wait_for = |generation: i64| {
        let api = api.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                let current = api.get("web-1").await.expect("get");
                if current.status.and_then(|s| s.observed_generation) == Some(generation) {
                    return;
                }
                assert!(
                    Instant::now() < deadline,
                    "observedGeneration never reached {generation}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    wait_for(1).await;
    api.patch(
        "web-1",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"powerState": "off"}})),
    )
    .await
    .expect("update");
    wait_for(2).await;
    let mut generations = Vec::new();
    while let Ok(seen) = rx.try_recv() {
        generations.push(seen);
    }
    assert!(
        generations.contains(&("web-1".to_string(), Some(1))),
        "{generations:?}"
    );
    assert!(
        generations.contains(&("web-1".to_string(), Some(2))),
        "{generations:?}"
    );
}
