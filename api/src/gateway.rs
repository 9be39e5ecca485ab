//! The resource calls sf-api makes to sf-database, over `sf-database-client`.
//!
//! Contract: objects travel as JSON; every call goes through
//! [`GatewayClient::call`] (round-robin, retried while sf-database is unavailable), so
//! a failure here is either the gateway's answer (NotFound, Aborted, ...: see
//! `gateway.proto`) or [`ClientError::DatabaseUnavailable`] after the retry budget.
//! [`Gateway::ready`] probes with a single short attempt per host and never retries,
//! for `/readyz`.

use std::time::Duration;

use serde_json::Value;
use sf_database_client::{ClientError, GatewayClient, RetryPolicy};
use sf_proto::v1 as pb;
use tonic::Streaming;

/// A failed gateway call.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The call failed (the gateway's status, or unavailable after retries).
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The gateway returned bytes that are not a JSON object.
    #[error("sf-database returned a malformed object: {0}")]
    Malformed(String),
}

impl GatewayError {
    /// The gateway's gRPC code, when it answered.
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            Self::Client(e) => e.code(),
            Self::Malformed(_) => None,
        }
    }
}

/// Which part of an object an update writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// Metadata and spec (`UpdateResource`): status is kept, generation bumps on a
    /// spec change.
    Main,
    /// Status only (`UpdateStatus`): generation never bumps.
    Status,
}

/// What a delete did.
#[derive(Debug, Clone)]
pub struct Deleted {
    /// The object (with deletionTimestamp while finalizers hold it).
    pub object: Value,
    /// True when the row is gone.
    pub removed: bool,
}

/// Selects a list or watch.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// Kind, e.g. `Instance`.
    pub kind: String,
    /// Namespace; `None` for all namespaces (and for cluster-scoped kinds).
    pub namespace: Option<String>,
    /// Label selector text.
    pub labels: String,
    /// Field selector text.
    pub fields: String,
    /// Only objects whose `spec.ownerNamespace` is this (applied by sf-api, not the
    /// gateway).
    pub owner_namespace: Option<String>,
}

impl Selection {
    /// Whether `object` passes the filters sf-api applies itself.
    pub fn owned(&self, object: &Value) -> bool {
        self.owner_namespace.as_deref().is_none_or(|owner| {
            object
                .pointer("/spec/ownerNamespace")
                .and_then(Value::as_str)
                == Some(owner)
        })
    }
}

/// sf-database, as sf-api uses it. Cheap to clone.
#[derive(Clone)]
pub struct Gateway {
    client: GatewayClient,
    probe: GatewayClient,
}

fn parse(bytes: &[u8]) -> Result<Value, GatewayError> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(v) if v.is_object() => Ok(v),
        Ok(_) => Err(GatewayError::Malformed("not a JSON object".into())),
        Err(e) => Err(GatewayError::Malformed(e.to_string())),
    }
}

fn to_bytes(object: &Value) -> Vec<u8> {
    // Serialising a Value cannot fail.
    serde_json::to_vec(object).unwrap_or_default()
}

fn key(kind: &str, namespace: &str, name: &str) -> pb::ObjectKey {
    pb::ObjectKey {
        kind: kind.to_string(),
        namespace: namespace.to_string(),
        name: name.to_string(),
    }
}

impl Gateway {
    /// A gateway over `hosts` (a `MARIADB_GATEWAY_HOSTS` list).
    pub fn new(hosts: &str, secret: &str) -> Result<Self, GatewayError> {
        let client = GatewayClient::from_host_list(hosts, secret, RetryPolicy::default())?;
        let host_count = hosts.split(',').count();
        let probe_policy = RetryPolicy {
            attempts: u32::try_from(host_count).unwrap_or(u32::MAX).max(1),
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(1),
            cool_down: Duration::from_millis(1),
            timeout: Duration::from_secs(2),
        };
        let probe = GatewayClient::from_host_list(hosts, secret, probe_policy)?;
        Ok(Self { client, probe })
    }

    /// Whether some sf-database answers now (one quick attempt per host).
    pub async fn ready(&self) -> Result<(), GatewayError> {
        self.probe
            .call("list_resources", |mut g| async move {
                g.list_resources(revision_probe()).await
            })
            .await?;
        Ok(())
    }

    /// Reads one object.
    pub async fn get(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> Result<Value, GatewayError> {
        let reply = self
            .client
            .call("get_resource", |mut g| {
                let request = pb::GetResourceRequest {
                    key: Some(key(kind, namespace, name)),
                    uid: String::new(),
                    deleted: false,
                };
                async move { g.get_resource(request).await }
            })
            .await?;
        parse(&reply.object)
    }

    /// Reads one object as the gateway's JSON bytes (a JSON object: sf-database
    /// serialises it), not parsed.
    pub async fn get_raw(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> Result<Vec<u8>, GatewayError> {
        let reply = self
            .client
            .call("get_resource", |mut g| {
                let request = pb::GetResourceRequest {
                    key: Some(key(kind, namespace, name)),
                    uid: String::new(),
                    deleted: false,
                };
                async move { g.get_resource(request).await }
            })
            .await?;
        Ok(reply.object)
    }

    /// Reads one object of `kind` by its uid (in whatever namespace it is: callers
    /// check the scope).
    pub async fn get_by_uid(&self, kind: &str, uid: &str) -> Result<Value, GatewayError> {
        self.by_uid(kind, uid, false).await
    }

    /// The final state of a removed object by uid, while sf-database keeps its
    /// tombstone (NotFound otherwise).
    pub async fn get_deleted(&self, kind: &str, uid: &str) -> Result<Value, GatewayError> {
        self.by_uid(kind, uid, true).await
    }

    async fn by_uid(&self, kind: &str, uid: &str, deleted: bool) -> Result<Value, GatewayError> {
        let reply = self
            .client
            .call("get_resource", |mut g| {
                let request = pb::GetResourceRequest {
                    key: Some(key(kind, "", "")),
                    uid: uid.to_string(),
                    deleted,
                };
                async move { g.get_resource(request).await }
            })
            .await?;
        parse(&reply.object)
    }

    /// Lists objects, with the revision of the same snapshot.
    pub async fn list(&self, selection: &Selection) -> Result<(Vec<Value>, u64), GatewayError> {
        let reply = self
            .client
            .call("list_resources", |mut g| {
                let request = pb::ListResourcesRequest {
                    kind: selection.kind.clone(),
                    namespace: selection.namespace.clone().unwrap_or_default(),
                    label_selector: selection.labels.clone(),
                    field_selector: selection.fields.clone(),
                };
                async move { g.list_resources(request).await }
            })
            .await?;
        let mut items = reply
            .objects
            .iter()
            .map(|o| parse(o))
            .collect::<Result<Vec<_>, _>>()?;
        items.retain(|o| selection.owned(o));
        Ok((items, reply.revision))
    }

    /// Lists objects as the gateway's JSON bytes (each a JSON object, not re-parsed),
    /// with the revision of the same snapshot; `None` when the selection needs sf-api's
    /// own filter (then use [`Gateway::list`]).
    pub async fn list_raw(
        &self,
        selection: &Selection,
    ) -> Result<Option<(Vec<Vec<u8>>, u64)>, GatewayError> {
        if selection.owner_namespace.is_some() {
            return Ok(None);
        }
        let reply = self
            .client
            .call("list_resources", |mut g| {
                let request = pb::ListResourcesRequest {
                    kind: selection.kind.clone(),
                    namespace: selection.namespace.clone().unwrap_or_default(),
                    label_selector: selection.labels.clone(),
                    field_selector: selection.fields.clone(),
                };
                async move { g.list_resources(request).await }
            })
            .await?;
        Ok(Some((reply.objects, reply.revision)))
    }

    /// The newest revision.
    pub async fn current_revision(&self) -> Result<u64, GatewayError> {
        let reply = self
            .client
            .call("list_resources", |mut g| async move {
                g.list_resources(revision_probe()).await
            })
            .await?;
        Ok(reply.revision)
    }

    /// Creates an object.
    pub async fn create(&self, object: &Value, dry_run: bool) -> Result<Value, GatewayError> {
        let bytes = to_bytes(object);
        let reply = self
            .client
            .call("create_resource", |mut g| {
                let request = pb::CreateResourceRequest {
                    object: bytes.clone(),
                    dry_run,
                };
                async move { g.create_resource(request).await }
            })
            .await?;
        parse(&reply.object)
    }

    /// Updates `part` of the object `object` names, with `resource_version` as the
    /// compare-and-swap precondition (`None`: none).
    pub async fn update(
        &self,
        object: &Value,
        resource_version: Option<u64>,
        part: Part,
        dry_run: bool,
    ) -> Result<Value, GatewayError> {
        let bytes = to_bytes(object);
        let request = move || pb::UpdateResourceRequest {
            object: bytes.clone(),
            resource_version: resource_version.unwrap_or(0),
            dry_run,
        };
        let reply = match part {
            Part::Main => {
                self.client
                    .call("update_resource", |mut g| {
                        let request = request();
                        async move { g.update_resource(request).await }
                    })
                    .await?
            }
            Part::Status => {
                self.client
                    .call("update_status", |mut g| {
                        let request = request();
                        async move { g.update_status(request).await }
                    })
                    .await?
            }
        };
        parse(&reply.object)
    }

    /// Deletes (or starts deleting) an object.
    pub async fn delete(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
        resource_version: Option<u64>,
        uid: Option<&str>,
        dry_run: bool,
    ) -> Result<Deleted, GatewayError> {
        let reply = self
            .client
            .call("delete_resource", |mut g| {
                let request = pb::DeleteResourceRequest {
                    key: Some(key(kind, namespace, name)),
                    resource_version: resource_version.unwrap_or(0),
                    uid: uid.unwrap_or_default().to_string(),
                    dry_run,
                };
                async move { g.delete_resource(request).await }
            })
            .await?;
        Ok(Deleted {
            object: parse(&reply.object)?,
            removed: reply.removed,
        })
    }

    /// Opens a watch of every change after `from_revision`, with progress events at
    /// least every `progress`.
    pub async fn watch(
        &self,
        selection: &Selection,
        from_revision: u64,
        progress: Duration,
    ) -> Result<Streaming<pb::WatchEvent>, GatewayError> {
        let progress_interval_ms = u32::try_from(progress.as_millis()).unwrap_or(u32::MAX);
        Ok(self
            .client
            .call("watch", |mut g| {
                let request = pb::WatchRequest {
                    kind: selection.kind.clone(),
                    namespace: selection.namespace.clone().unwrap_or_default(),
                    label_selector: selection.labels.clone(),
                    field_selector: selection.fields.clone(),
                    from_revision,
                    progress_interval_ms,
                };
                async move { g.watch(request).await }
            })
            .await?)
    }
}

impl Gateway {
    /// The keys of `namespace` (NotFound: no such namespace).
    pub async fn list_keys(&self, namespace: &str) -> Result<Vec<pb::KeyReply>, GatewayError> {
        let reply = self
            .client
            .call("list_keys", |mut g| {
                let request = pb::NamespaceRequest {
                    namespace: namespace.to_string(),
                };
                async move { g.list_keys(request).await }
            })
            .await?;
        Ok(reply.keys)
    }

    /// Stores (or replaces) a key hash; the key gets a new nonce.
    pub async fn put_key(
        &self,
        namespace: &str,
        key_name: &str,
        key_hash: &str,
    ) -> Result<pb::KeyReply, GatewayError> {
        Ok(self
            .client
            .call("put_key", |mut g| {
                let request = pb::PutKeyRequest {
                    namespace: namespace.to_string(),
                    key_name: key_name.to_string(),
                    key_hash: key_hash.to_string(),
                };
                async move { g.put_key(request).await }
            })
            .await?)
    }

    /// Deletes a key.
    pub async fn delete_key(&self, namespace: &str, key_name: &str) -> Result<(), GatewayError> {
        self.client
            .call("delete_key", |mut g| {
                let request = pb::KeyRequest {
                    namespace: namespace.to_string(),
                    key_name: key_name.to_string(),
                };
                async move { g.delete_key(request).await }
            })
            .await?;
        Ok(())
    }

    /// Creates a namespace (its row and its Namespace object).
    pub async fn create_namespace(&self, namespace: &str) -> Result<Value, GatewayError> {
        let reply = self
            .client
            .call("create_namespace", |mut g| {
                let request = pb::NamespaceRequest {
                    namespace: namespace.to_string(),
                };
                async move { g.create_namespace(request).await }
            })
            .await?;
        parse(&reply.object)
    }

    /// Deletes a namespace (FailedPrecondition/Aborted while it holds objects).
    pub async fn delete_namespace(&self, namespace: &str) -> Result<(), GatewayError> {
        self.client
            .call("delete_namespace", |mut g| {
                let request = pb::NamespaceRequest {
                    namespace: namespace.to_string(),
                };
                async move { g.delete_namespace(request).await }
            })
            .await?;
        Ok(())
    }
}

impl Gateway {
    /// Creates a ClusterOperation (and its work queue row) in one transaction.
    pub async fn create_operation(&self, object: &Value) -> Result<Value, GatewayError> {
        let bytes = to_bytes(object);
        let reply = self
            .client
            .create_operation(pb::CreateOperationRequest {
                object: bytes,
                delay_ms: 0,
            })
            .await?;
        parse(&reply.object)
    }

    /// The events of an object, newest first.
    pub async fn query_events(
        &self,
        object_type: &str,
        object_uuid: &str,
        event_type: &str,
        limit: i32,
    ) -> Result<Vec<pb::Event>, GatewayError> {
        let reply = self
            .client
            .call("query_events", |mut g| {
                let request = pb::QueryEventsRequest {
                    object_type: object_type.to_string(),
                    object_uuid: object_uuid.to_string(),
                    event_type: event_type.to_string(),
                    limit,
                };
                async move { g.query_events(request).await }
            })
            .await?;
        Ok(reply.events)
    }

    /// Records events.
    pub async fn record_events(&self, events: Vec<pb::Event>) -> Result<(), GatewayError> {
        self.client
            .call("record_event_batch", |mut g| {
                let request = pb::RecordEventBatchRequest {
                    events: events.clone(),
                };
                async move { g.record_event_batch(request).await }
            })
            .await?;
        Ok(())
    }

    /// The bytes of a blob (by the Blob's uid).
    pub async fn get_blob_data(&self, uid: &str) -> Result<pb::GetBlobDataReply, GatewayError> {
        Ok(self
            .client
            .call("get_blob_data", |mut g| {
                let request = pb::GetBlobDataRequest {
                    uid: uid.to_string(),
                };
                async move { g.get_blob_data(request).await }
            })
            .await?)
    }
}

/// A list that selects no row (the empty name), answered with the current revision.
fn revision_probe() -> pb::ListResourcesRequest {
    pb::ListResourcesRequest {
        kind: "Namespace".into(),
        namespace: String::new(),
        label_selector: String::new(),
        field_selector: "metadata.name=".into(),
    }
}
