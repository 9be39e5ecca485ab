//! Watches: `GET <collection>?watch=true`, as kube-rs's watcher and kubectl expect.
//!
//! Contract (research/k8s-api.md §1, "Watch wire format" and "410, the main trap"):
//! - HTTP 200, chunked, `application/json`, one JSON event per line, each line sent as
//!   its own chunk as soon as it is known (never buffered, never compressed).
//! - Events are `ADDED`, `MODIFIED`, `DELETED` with the full object (apiVersion, kind,
//!   spec, metadata.resourceVersion). Selectors are applied to the object before and
//!   after each change: an object that starts matching is `ADDED`, one that stops
//!   matching is `DELETED` (its previous content, at the change's resourceVersion).
//! - `BOOKMARK` only with `allowWatchBookmarks=true`, always with apiVersion and kind,
//!   from the gateway's progress events (every `SHAKENFIST_API_WATCH_BOOKMARK_SECONDS`).
//! - `resourceVersion=N`: every change after N. Unset or `"0"`: apiserver's "get state
//!   and start at most recent": one `ADDED` per object of a consistent list, then every
//!   change after the list's revision; with `sendInitialEvents=false` only the changes
//!   after the current revision; with `sendInitialEvents=true` and bookmarks the
//!   initial events end with a BOOKMARK annotated `k8s.io/initial-events-end: "true"`.
//! - A resourceVersion older than the retained change log (gateway OUT_OF_RANGE) is
//!   HTTP 200 and one `ERROR` event carrying a `Status` with code 410, reason Expired —
//!   never an HTTP 410 (that makes kube's watcher retry the old version forever). A
//!   resourceVersion that is not a number is 400 before the stream starts.
//! - The stream ends after `timeoutSeconds` (at most `SHAKENFIST_API_WATCH_TIMEOUT_SECONDS`),
//!   at shutdown, or when the client goes away. When the gateway's stream ends
//!   (UNAVAILABLE: that instance is draining, or its connection broke) the watch is
//!   reopened through the client, on another instance, from the last revision seen,
//!   without the HTTP client noticing; when that fails too, the stream just ends and
//!   the client re-watches from its last resourceVersion.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use http::{HeaderValue, StatusCode, header};
use serde_json::{Value, json};
use sf_proto::v1 as pb;
use sf_proto::v1::watch_event::Type as EventType;
use sf_schema::API_VERSION;
use sf_schema::selector::{FieldSelector, LabelSelector};
use tokio::sync::mpsc;
use tonic::{Code, Streaming};
use tracing::Instrument;

use crate::error::ApiError;
use crate::gateway::Selection;
use crate::params::Params;
use crate::resources::{Target, selection};
use crate::server::App;

/// Consecutive re-opens of the gateway stream without an event before giving up.
const MAX_REOPENS: u32 = 5;

/// Lines buffered between the watch task and the HTTP body.
const BUFFER: usize = 64;

/// What a watch selects and how it reports.
struct Spec {
    selection: Selection,
    labels: LabelSelector,
    fields: FieldSelector,
    kind: String,
    bookmarks: bool,
}

/// How the watch starts.
enum Start {
    /// Every change after this revision.
    After(u64),
    /// ADDED for each listed object, then the changes after the list's revision.
    Initial {
        items: Vec<Value>,
        revision: u64,
        end_bookmark: bool,
    },
}

/// Serves a watch request (see the module contract).
pub async fn serve(app: &Arc<App>, target: &Target, params: &Params) -> Result<Response, ApiError> {
    let selection = selection(target, params)?;
    let spec = Spec {
        labels: LabelSelector::parse(&selection.labels)
            .map_err(|e| ApiError::BadRequest(e.to_string()))?,
        fields: FieldSelector::parse(&selection.fields)
            .map_err(|e| ApiError::BadRequest(e.to_string()))?,
        selection,
        kind: target.kind.kind.clone(),
        bookmarks: params.allow_watch_bookmarks,
    };
    let subject = target.subject();
    let requested = params
        .resource_version
        .as_deref()
        .filter(|rv| !rv.is_empty() && *rv != "0");
    let start = match (requested, params.send_initial_events) {
        (_, Some(true)) | (None, None) => {
            let (items, revision) = app
                .gateway
                .list(&spec.selection)
                .await
                .map_err(|e| ApiError::from_gateway(&e, &subject))?;
            Start::Initial {
                items,
                revision,
                end_bookmark: params.send_initial_events == Some(true) && spec.bookmarks,
            }
        }
        (None, Some(false)) => Start::After(
            app.gateway
                .current_revision()
                .await
                .map_err(|e| ApiError::from_gateway(&e, &subject))?,
        ),
        (Some(rv), _) => Start::After(
            rv.parse()
                .map_err(|_| ApiError::BadRequest(format!("invalid resource version \"{rv}\"")))?,
        ),
    };
    let from = match &start {
        Start::After(revision) | Start::Initial { revision, .. } => *revision,
    };
    let interval = app.settings.bookmark_interval;
    let first = match app.gateway.watch(&spec.selection, from, interval).await {
        Ok(stream) => Ok(stream),
        Err(e) if e.code() == Some(Code::OutOfRange) => Err(expired_line(&e.to_string())),
        Err(e) => return Err(ApiError::from_gateway(&e, &subject)),
    };
    let timeout = params
        .timeout
        .filter(|t| !t.is_zero())
        .unwrap_or(app.settings.max_watch)
        .min(app.settings.max_watch);
    let (tx, rx) = mpsc::channel::<Vec<u8>>(BUFFER);
    let task = WatchTask {
        app: app.clone(),
        spec,
        tx,
        last: from,
    };
    tokio::spawn(
        task.run(start, first, timeout)
            .instrument(tracing::Span::current()),
    );
    let body = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|line| (Ok::<_, Infallible>(line), rx))
    });
    let mut response = Response::new(Body::from_stream(body));
    *response.status_mut() = StatusCode::OK;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(response)
}

fn line(event_type: &str, object: &Value) -> Vec<u8> {
    let mut bytes =
        serde_json::to_vec(&json!({"type": event_type, "object": object})).unwrap_or_default();
    bytes.push(b'\n');
    bytes
}

/// The ERROR event for an expired resourceVersion (HTTP status stays 200).
fn expired_line(gateway_message: &str) -> Vec<u8> {
    let message = match gateway_message.find("too old resource version") {
        Some(i) => gateway_message[i..].to_string(),
        None => format!("too old resource version: {gateway_message}"),
    };
    error_line(&ApiError::Expired(message))
}

fn error_line(error: &ApiError) -> Vec<u8> {
    let status = serde_json::to_value(error.to_status()).unwrap_or_default();
    line("ERROR", &status)
}

fn with_resource_version(mut object: Value, revision: u64) -> Value {
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("resourceVersion".into(), json!(revision.to_string()));
    }
    object
}

impl Spec {
    fn selects(&self, object: &Value) -> bool {
        self.labels.matches(object) && self.fields.matches(object) && self.selection.owned(object)
    }

    fn bookmark(&self, revision: u64, annotations: Option<Value>) -> Vec<u8> {
        let mut metadata = json!({"resourceVersion": revision.to_string()});
        if let Some(annotations) = annotations {
            metadata["annotations"] = annotations;
        }
        line(
            "BOOKMARK",
            &json!({"apiVersion": API_VERSION, "kind": self.kind, "metadata": metadata}),
        )
    }

    /// The line for one gateway event, if the client is to see it.
    fn convert(&self, event: &pb::WatchEvent) -> Result<Option<Vec<u8>>, ApiError> {
        let parse = |bytes: &[u8]| -> Result<Option<Value>, ApiError> {
            if bytes.is_empty() {
                return Ok(None);
            }
            serde_json::from_slice(bytes).map(Some).map_err(|e| {
                ApiError::Internal(format!("sf-database sent a malformed object: {e}"))
            })
        };
        let event_type = EventType::try_from(event.r#type).unwrap_or(EventType::Unspecified);
        if event_type == EventType::Progress {
            return Ok(self.bookmarks.then(|| self.bookmark(event.revision, None)));
        }
        let Some(object) = parse(&event.object)? else {
            return Ok(None);
        };
        let prev = parse(&event.prev_object)?;
        let now = self.selects(&object);
        // No previous object: the change left the labels alone, so it matched before
        // exactly as it does now (sf-database logs the previous object only for
        // label changes).
        let before = prev.as_ref().map_or(now, |p| self.selects(p));
        Ok(match event_type {
            EventType::Added => now.then(|| line("ADDED", &object)),
            EventType::Modified => match (before, now) {
                (true, true) => Some(line("MODIFIED", &object)),
                (false, true) => Some(line("ADDED", &object)),
                (true, false) => {
                    prev.map(|p| line("DELETED", &with_resource_version(p, event.revision)))
                }
                (false, false) => None,
            },
            EventType::Deleted => {
                if now {
                    Some(line("DELETED", &object))
                } else if before {
                    prev.map(|p| line("DELETED", &with_resource_version(p, event.revision)))
                } else {
                    None
                }
            }
            EventType::Progress | EventType::Unspecified => None,
        })
    }
}

/// A stream that ended in a way that a new gateway watch can continue.
fn reopenable(status: &tonic::Status) -> bool {
    match status.code() {
        Code::Unavailable => true,
        Code::Unknown | Code::Cancelled | Code::Internal => {
            let m = status.message();
            m.contains("transport error")
                || m.contains("connection")
                || m.contains("h2 protocol error")
                || m.contains("broken pipe")
        }
        _ => false,
    }
}

struct WatchTask {
    app: Arc<App>,
    spec: Spec,
    tx: mpsc::Sender<Vec<u8>>,
    last: u64,
}

impl WatchTask {
    async fn send(&self, line: Vec<u8>) -> bool {
        self.tx.send(line).await.is_ok()
    }

    async fn run(
        mut self,
        start: Start,
        first: Result<Streaming<pb::WatchEvent>, Vec<u8>>,
        timeout: Duration,
    ) {
        if let Start::Initial {
            items,
            revision,
            end_bookmark,
        } = start
        {
            for item in items {
                if !self.send(line("ADDED", &item)).await {
                    return;
                }
            }
            if end_bookmark {
                let annotations = json!({"k8s.io/initial-events-end": "true"});
                if !self
                    .send(self.spec.bookmark(revision, Some(annotations)))
                    .await
                {
                    return;
                }
            }
        }
        let mut stream = match first {
            Ok(stream) => stream,
            Err(expired) => {
                self.send(expired).await;
                return;
            }
        };
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let shutdown = self.app.shutdown.clone();
        let mut reopens = 0;
        loop {
            let message = tokio::select! {
                () = shutdown.wait() => return,
                () = &mut deadline => return,
                () = self.tx.closed() => return,
                message = stream.message() => message,
            };
            let ended = match message {
                Ok(Some(event)) => {
                    reopens = 0;
                    self.last = self.last.max(event.revision);
                    match self.spec.convert(&event) {
                        Ok(Some(line)) => {
                            if !self.send(line).await {
                                return;
                            }
                        }
                        Ok(None) => {}
                        Err(e) => {
                            tracing::error!(error = %e, "watch: cannot convert a change");
                            self.send(error_line(&e)).await;
                            return;
                        }
                    }
                    continue;
                }
                Ok(None) => "the gateway ended the stream".to_string(),
                Err(status) if status.code() == Code::OutOfRange => {
                    self.send(expired_line(status.message())).await;
                    return;
                }
                Err(status) if reopenable(&status) => status.to_string(),
                Err(status) => {
                    let error = ApiError::from_gateway(
                        &crate::gateway::GatewayError::Client(
                            sf_database_client::ClientError::Call {
                                operation: "watch",
                                status,
                            },
                        ),
                        &Default::default(),
                    );
                    self.send(error_line(&error)).await;
                    return;
                }
            };
            reopens += 1;
            if reopens > MAX_REOPENS {
                tracing::warn!(
                    last = self.last,
                    "watch: giving up re-opening the gateway stream"
                );
                return;
            }
            tracing::debug!(last = self.last, why = %ended, "watch: re-opening the gateway stream");
            let reopened = tokio::select! {
                () = shutdown.wait() => return,
                () = &mut deadline => return,
                reopened = self.app.gateway.watch(
                    &self.spec.selection,
                    self.last,
                    self.app.settings.bookmark_interval,
                ) => reopened,
            };
            match reopened {
                Ok(next) => stream = next,
                Err(e) if e.code() == Some(Code::OutOfRange) => {
                    self.send(expired_line(&e.to_string())).await;
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, last = self.last, "watch: cannot re-open; ending the stream");
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(labels: &str, bookmarks: bool) -> Spec {
        Spec {
            selection: Selection::default(),
            labels: LabelSelector::parse(labels).unwrap(),
            fields: FieldSelector::default(),
            kind: "Instance".into(),
            bookmarks,
        }
    }

    fn object(tier: &str, rv: u64) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "apiVersion": API_VERSION, "kind": "Instance",
            "metadata": {"name": "a", "namespace": "demo", "resourceVersion": rv.to_string(), "labels": {"tier": tier}},
            "spec": {}
        }))
        .unwrap()
    }

    fn event(t: EventType, revision: u64, object: Vec<u8>, prev: Vec<u8>) -> pb::WatchEvent {
        pb::WatchEvent {
            r#type: t as i32,
            revision,
            object,
            prev_object: prev,
        }
    }

    fn parsed(line: Option<Vec<u8>>) -> Value {
        let line = line.expect("a line");
        assert_eq!(line.last(), Some(&b'\n'));
        assert_eq!(line.iter().filter(|b| **b == b'\n').count(), 1);
        serde_json::from_slice(&line).unwrap()
    }

    #[test]
    fn selector_transitions_become_added_and_deleted() {
        let s = spec("tier=web", false);
        let leaves = event(EventType::Modified, 9, object("db", 9), object("web", 8));
        let v = parsed(s.convert(&leaves).unwrap());
        assert_eq!(v["type"], "DELETED");
        assert_eq!(v["object"]["metadata"]["labels"]["tier"], "web");
        assert_eq!(v["object"]["metadata"]["resourceVersion"], "9");
        let joins = event(EventType::Modified, 10, object("web", 10), object("db", 9));
        assert_eq!(parsed(s.convert(&joins).unwrap())["type"], "ADDED");
        let stays = event(
            EventType::Modified,
            11,
            object("web", 11),
            object("web", 10),
        );
        assert_eq!(parsed(s.convert(&stays).unwrap())["type"], "MODIFIED");
        let elsewhere = event(EventType::Modified, 12, object("db", 12), object("db", 11));
        assert!(s.convert(&elsewhere).unwrap().is_none());
    }

    #[test]
    fn bookmarks_only_when_asked_and_typed() {
        let progress = event(EventType::Progress, 42, Vec::new(), Vec::new());
        assert!(spec("", false).convert(&progress).unwrap().is_none());
        let v = parsed(spec("", true).convert(&progress).unwrap());
        assert_eq!(v["type"], "BOOKMARK");
        assert_eq!(v["object"]["apiVersion"], API_VERSION);
        assert_eq!(v["object"]["kind"], "Instance");
        assert_eq!(v["object"]["metadata"]["resourceVersion"], "42");
    }

    #[test]
    fn expired_is_an_error_event_with_410() {
        let v: Value = serde_json::from_slice(&expired_line(
            "OUT_OF_RANGE: too old resource version: 3 (compacted to 9)",
        ))
        .unwrap();
        assert_eq!(v["type"], "ERROR");
        assert_eq!(v["object"]["kind"], "Status");
        assert_eq!(v["object"]["code"], 410);
        assert_eq!(v["object"]["reason"], "Expired");
        assert_eq!(
            v["object"]["message"],
            "too old resource version: 3 (compacted to 9)"
        );
    }
}
