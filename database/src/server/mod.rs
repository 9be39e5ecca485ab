//! The sf-database gRPC gateway: the `Gateway` service over the [`Store`].
//!
//! Contract:
//! - Every call must carry the shared secret in `x-sf-gateway-secret` (compared in
//!   constant time); without it the call fails UNAUTHENTICATED before any query.
//! - Store errors map to gRPC codes as documented in `gateway.proto`; the message is
//!   the store's, so callers can show it.
//! - Every call is counted in `database_requests_total{operation}` and timed in
//!   `database_request_duration_seconds{operation}`.
//! - On shutdown the health service reports NOT_SERVING first, watch streams end with
//!   UNAVAILABLE ("draining": clients re-watch through another instance), and in-flight
//!   unary calls finish.

mod convert;
mod metrics;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::Ipv4Addr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::Stream;
use serde_json::Value;
use sf_daemon::Shutdown;
use sf_proto::v1 as pb;
use sf_proto::v1::gateway_server::Gateway;
use sf_schema::ObjectRef;
use sf_schema::ipam::ReservationType;
use tonic::{Request, Response, Status};

use crate::store::events::EventRecord;
use crate::store::ipam::ReserveRequest;
use crate::store::locks::LockAcquire;
use crate::store::namespaces::KeyRecord;
use crate::store::queue::{ErrorReport, Lease};
use crate::store::resources::{ObjectKey, Preconditions, UpdateScope};
use crate::store::watch::{ChangeFeed, ChangeType, WatchFilter, WatchItem};
use crate::store::{Store, StoreError};
pub use convert::status_from_store;
use convert::{json_bytes, parse_object, parse_selectors};
pub use metrics::GatewayMetrics;

pub use sf_proto::SECRET_HEADER;

/// The default interval of watch progress events.
pub const DEFAULT_PROGRESS_INTERVAL: Duration = Duration::from_secs(5);

/// The gateway service.
#[derive(Clone)]
pub struct GatewayService {
    store: Store,
    feed: Arc<ChangeFeed>,
    metrics: Arc<GatewayMetrics>,
    shutdown: Shutdown,
    halo: Duration,
}

/// Checks the shared secret of every call.
#[derive(Clone)]
pub struct SecretCheck {
    secret: Arc<Vec<u8>>,
}

impl SecretCheck {
    /// Accepts calls carrying `secret`.
    pub fn new(secret: &str) -> Self {
        Self {
            secret: Arc::new(secret.as_bytes().to_vec()),
        }
    }
}

/// Equality that takes the same time wherever the inputs differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl tonic::service::Interceptor for SecretCheck {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        match request.metadata().get(SECRET_HEADER) {
            Some(v) if constant_time_eq(v.as_bytes(), &self.secret) => Ok(request),
            Some(_) => Err(Status::unauthenticated("wrong gateway secret")),
            None => Err(Status::unauthenticated(format!(
                "missing {SECRET_HEADER}: every call to sf-database must carry SHAKENFIST_MARIADB_GATEWAY_SECRET"
            ))),
        }
    }
}

type Reply<T> = Result<Response<T>, Status>;

impl GatewayService {
    /// A service over `store`, fed by `feed`.
    pub fn new(
        store: Store,
        feed: Arc<ChangeFeed>,
        metrics: Arc<GatewayMetrics>,
        shutdown: Shutdown,
        halo: Duration,
    ) -> Self {
        Self {
            store,
            feed,
            metrics,
            shutdown,
            halo,
        }
    }

    /// Runs `f`, counting and timing it under `operation`, mapping store errors.
    async fn observe<T, F>(&self, operation: &'static str, f: F) -> Reply<T>
    where
        F: Future<Output = Result<T, StoreError>>,
    {
        let started = Instant::now();
        let result = f.await;
        self.metrics
            .observe(operation, started.elapsed(), result.is_ok());
        result.map(Response::new).map_err(|e| status_from_store(&e))
    }
}

fn resource_reply(stored: crate::store::Stored) -> pb::ResourceReply {
    pb::ResourceReply {
        object: json_bytes(&stored.object),
        resource_version: stored.resource_version,
        changed: stored.changed,
    }
}

fn key_from(k: Option<pb::ObjectKey>) -> Result<ObjectKey, StoreError> {
    let k = k.ok_or_else(|| StoreError::Invalid("key is required".into()))?;
    if k.kind.is_empty() || k.name.is_empty() {
        return Err(StoreError::Invalid(
            "key.kind and key.name are required".into(),
        ));
    }
    Ok(ObjectKey::new(k.kind, k.namespace, k.name))
}

fn precondition(rv: u64) -> Option<u64> {
    (rv != 0).then_some(rv)
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchEvent, Status>> + Send>>;

#[tonic::async_trait]
impl Gateway for GatewayService {
    async fn create_resource(
        &self,
        request: Request<pb::CreateResourceRequest>,
    ) -> Reply<pb::ResourceReply> {
        let r = request.into_inner();
        self.observe("create_resource", async {
            let object = parse_object(&r.object)?;
            self.store
                .create(object, r.dry_run)
                .await
                .map(resource_reply)
        })
        .await
    }

    async fn get_resource(
        &self,
        request: Request<pb::GetResourceRequest>,
    ) -> Reply<pb::ResourceReply> {
        let r = request.into_inner();
        self.observe("get_resource", async {
            if r.deleted && r.uid.is_empty() {
                return Err(StoreError::Invalid(
                    "a lookup of a deleted object needs its uid".into(),
                ));
            }
            if !r.uid.is_empty() {
                let kind = r.key.map(|k| k.kind).unwrap_or_default();
                let stored = if r.deleted {
                    self.store.get_deleted(&kind, &r.uid).await
                } else {
                    self.store.get_by_uid(&kind, &r.uid).await
                };
                return stored.map(resource_reply);
            }
            let key = key_from(r.key)?;
            self.store.get(&key).await.map(resource_reply)
        })
        .await
    }

    async fn list_resources(
        &self,
        request: Request<pb::ListResourcesRequest>,
    ) -> Reply<pb::ListResourcesReply> {
        let r = request.into_inner();
        self.observe("list_resources", async {
            let (labels, fields) = parse_selectors(&r.label_selector, &r.field_selector)?;
            let namespace = (!r.namespace.is_empty()).then_some(r.namespace.as_str());
            let (items, revision) = self
                .store
                .list_raw(&r.kind, namespace, &labels, &fields)
                .await?;
            Ok(pb::ListResourcesReply {
                objects: items.into_iter().map(String::into_bytes).collect(),
                revision,
            })
        })
        .await
    }

    async fn update_resource(
        &self,
        request: Request<pb::UpdateResourceRequest>,
    ) -> Reply<pb::ResourceReply> {
        self.update(request.into_inner(), UpdateScope::Main).await
    }

    async fn update_status(
        &self,
        request: Request<pb::UpdateResourceRequest>,
    ) -> Reply<pb::ResourceReply> {
        self.update(request.into_inner(), UpdateScope::Status).await
    }

    async fn merge_status(
        &self,
        request: Request<pb::MergeStatusRequest>,
    ) -> Reply<pb::ResourceReply> {
        let r = request.into_inner();
        self.observe("merge_status", async {
            let key = key_from(r.key)?;
            let patch: Value = serde_json::from_slice(&r.status_patch)
                .map_err(|e| StoreError::Invalid(format!("status_patch is not JSON: {e}")))?;
            self.store
                .merge_status(&key, &patch)
                .await
                .map(resource_reply)
        })
        .await
    }

    async fn delete_resource(
        &self,
        request: Request<pb::DeleteResourceRequest>,
    ) -> Reply<pb::DeleteReply> {
        let r = request.into_inner();
        self.observe("delete_resource", async {
            let key = key_from(r.key)?;
            let pre = Preconditions {
                resource_version: precondition(r.resource_version),
                uid: (!r.uid.is_empty()).then_some(r.uid.as_str()),
            };
            let d = self.store.delete(&key, pre, r.dry_run).await?;
            Ok(pb::DeleteReply {
                object: json_bytes(&d.object),
                removed: d.removed,
                revision: d.revision,
            })
        })
        .await
    }

    type WatchStream = WatchStream;

    async fn watch(&self, request: Request<pb::WatchRequest>) -> Reply<Self::WatchStream> {
        let r = request.into_inner();
        let started = Instant::now();
        let filter = match parse_selectors(&r.label_selector, &r.field_selector) {
            Ok((labels, fields)) if !r.kind.is_empty() => WatchFilter {
                kind: r.kind,
                namespace: (!r.namespace.is_empty()).then_some(r.namespace),
                labels,
                fields,
            },
            Ok(_) => return Err(Status::invalid_argument("kind is required")),
            Err(e) => return Err(status_from_store(&e)),
        };
        let interval = match r.progress_interval_ms {
            0 => DEFAULT_PROGRESS_INTERVAL,
            ms => Duration::from_millis(u64::from(ms).max(10)),
        };
        let mut items = self.feed.watch(filter, r.from_revision, interval);
        let shutdown = self.shutdown.clone();
        self.metrics.observe("watch", started.elapsed(), true);
        let metrics = self.metrics.clone();
        let stream = async_stream(move |tx| async move {
            metrics.watchers_inc();
            loop {
                let item = tokio::select! {
                    item = items.recv() => item,
                    () = shutdown.wait() => {
                        let _ = tx.send(Err(Status::unavailable("sf-database is draining; watch again through another instance"))).await;
                        break;
                    }
                };
                let event = match item {
                    None => break,
                    Some(Err(e)) => {
                        let _ = tx.send(Err(status_from_store(&e))).await;
                        break;
                    }
                    Some(Ok(WatchItem::Progress(revision))) => pb::WatchEvent {
                        r#type: pb::watch_event::Type::Progress as i32,
                        revision,
                        object: Vec::new(),
                        prev_object: Vec::new(),
                    },
                    Some(Ok(WatchItem::Change(change))) => pb::WatchEvent {
                        r#type: match change.change_type {
                            ChangeType::Added => pb::watch_event::Type::Added,
                            ChangeType::Modified => pb::watch_event::Type::Modified,
                            ChangeType::Deleted => pb::watch_event::Type::Deleted,
                        } as i32,
                        revision: change.revision,
                        // The stored text as it is: no parse, no re-encoding.
                        object: change.object_json().as_bytes().to_vec(),
                        prev_object: change
                            .prev_object_json()
                            .map(|p| p.as_bytes().to_vec())
                            .unwrap_or_default(),
                    },
                };
                if tx.send(Ok(event)).await.is_err() {
                    break;
                }
            }
            metrics.watchers_dec();
        });
        Ok(Response::new(stream))
    }

    async fn compact(&self, request: Request<pb::CompactRequest>) -> Reply<pb::CompactReply> {
        let r = request.into_inner();
        self.observe("compact", async {
            let (compacted_revision, rows_deleted) = self.store.compact(r.to_revision).await?;
            Ok(pb::CompactReply {
                compacted_revision,
                rows_deleted,
                tombstones_deleted: 0,
            })
        })
        .await
    }

    // --- Cluster operations and the work queue ---------------------------------------

    async fn create_operation(
        &self,
        request: Request<pb::CreateOperationRequest>,
    ) -> Reply<pb::ResourceReply> {
        let r = request.into_inner();
        self.observe("create_operation", async {
            let object = parse_object(&r.object)?;
            self.store
                .create_operation(object, Duration::from_millis(r.delay_ms))
                .await
                .map(resource_reply)
        })
        .await
    }

    async fn create_operations(
        &self,
        request: Request<pb::CreateOperationsRequest>,
    ) -> Reply<pb::CreateOperationsReply> {
        let r = request.into_inner();
        self.observe("create_operations", async {
            let items = r
                .operations
                .iter()
                .map(|op| {
                    Ok((
                        parse_object(&op.object)?,
                        Duration::from_millis(op.delay_ms),
                    ))
                })
                .collect::<Result<Vec<_>, StoreError>>()?;
            let created = self.store.create_operations(items).await?;
            Ok(pb::CreateOperationsReply {
                operations: created.into_iter().map(resource_reply).collect(),
            })
        })
        .await
    }

    async fn claim(&self, request: Request<pb::ClaimRequest>) -> Reply<pb::ClaimReply> {
        let r = request.into_inner();
        self.observe("claim", async {
            if r.node.is_empty() || r.claim_id.is_empty() {
                return Err(StoreError::Invalid("node and claim_id are required".into()));
            }
            // Long-polls end early when the gateway drains.
            let wait = Duration::from_secs(u64::from(r.wait_seconds.min(60)));
            let claimed = tokio::select! {
                c = self.store.claim_queues(&r.node, !r.node_only, r.max.clamp(1, 1000), &r.claim_id, &r.claimer, wait) => c?,
                () = self.shutdown.wait() => Vec::new(),
            };
            Ok(pb::ClaimReply {
                operations: claimed
                    .into_iter()
                    .map(|c| pb::ClaimedOperation {
                        lease: Some(pb::Lease {
                            id: c.lease.id,
                            attempt: c.lease.attempt,
                        }),
                        object: json_bytes(&c.object),
                    })
                    .collect(),
            })
        })
        .await
    }

    async fn heartbeat(&self, request: Request<pb::LeaseRequest>) -> Reply<pb::HeartbeatReply> {
        let r = request.into_inner();
        self.observe("heartbeat", async {
            let keep_going = self.store.heartbeat(lease_from(r.lease)?).await?;
            Ok(pb::HeartbeatReply { keep_going })
        })
        .await
    }

    async fn complete(&self, request: Request<pb::CompleteRequest>) -> Reply<pb::ResourceReply> {
        let r = request.into_inner();
        self.observe("complete", async {
            let result = optional_json(&r.result, "result")?;
            self.store
                .complete(lease_from(r.lease)?, result)
                .await
                .map(resource_reply)
        })
        .await
    }

    async fn complete_batch(
        &self,
        request: Request<pb::CompleteBatchRequest>,
    ) -> Reply<pb::CompleteBatchReply> {
        let r = request.into_inner();
        self.observe("complete_batch", async {
            let items = r
                .items
                .into_iter()
                .map(|i| Ok((lease_from(i.lease)?, optional_json(&i.result, "result")?)))
                .collect::<Result<Vec<_>, StoreError>>()?;
            let results = self.store.complete_batch(items).await?;
            Ok(pb::CompleteBatchReply {
                results: results
                    .into_iter()
                    .map(|r| match r {
                        Ok(stored) => pb::CompleteResult {
                            operation: Some(resource_reply(stored)),
                            ..Default::default()
                        },
                        Err(e) => {
                            let status = status_from_store(&e);
                            pb::CompleteResult {
                                error_code: format!("{:?}", status.code()),
                                error_message: status.message().to_string(),
                                operation: None,
                            }
                        }
                    })
                    .collect(),
            })
        })
        .await
    }

    async fn fail(&self, request: Request<pb::FailRequest>) -> Reply<pb::ResourceReply> {
        let r = request.into_inner();
        self.observe("fail", async {
            let e = r
                .error
                .ok_or_else(|| StoreError::Invalid("error is required".into()))?;
            let report = ErrorReport {
                code: e.code,
                message: e.message,
                retryable: e.retryable,
            };
            self.store
                .fail(lease_from(r.lease)?, report)
                .await
                .map(resource_reply)
        })
        .await
    }

    async fn abort(&self, request: Request<pb::AbortRequest>) -> Reply<pb::AbortReply> {
        let r = request.into_inner();
        self.observe("abort", async {
            let (aborted, kept) = self.store.abort(&r.target_uid, &r.reason).await?;
            Ok(pb::AbortReply { aborted, kept })
        })
        .await
    }

    // --- IPAM --------------------------------------------------------------------------

    async fn reserve_address(
        &self,
        request: Request<pb::ReserveAddressRequest>,
    ) -> Reply<pb::ReserveAddressReply> {
        let r = request.into_inner();
        self.observe("reserve_address", async {
            let network = self.network(&r.network_uid).await?;
            let address = parse_address(&r.address)?;
            let reservation_type = ReservationType::from(r.reservation_type.clone());
            let owner = (!r.owner_uid.is_empty()).then(|| ObjectRef {
                kind: r.owner_kind.clone(),
                name: r.owner_name.clone(),
                namespace: (!network.namespace.is_empty()).then(|| network.namespace.clone()),
                uid: r.owner_uid.clone(),
            });
            let reserved = self
                .store
                .reserve_address(&ReserveRequest {
                    network_uid: r.network_uid.clone(),
                    network_name: network.name,
                    namespace: network.namespace,
                    netblock: network.netblock,
                    address,
                    reservation_type,
                    owner,
                    comment: (!r.comment.is_empty()).then_some(r.comment.clone()),
                })
                .await?;
            Ok(pb::ReserveAddressReply {
                address: reserved.address.to_string(),
                created: reserved.created,
            })
        })
        .await
    }

    async fn release_address(
        &self,
        request: Request<pb::ReleaseAddressRequest>,
    ) -> Reply<pb::ReleaseAddressReply> {
        let r = request.into_inner();
        self.observe("release_address", async {
            let address = parse_address(&r.address)?
                .ok_or_else(|| StoreError::Invalid("address is required".into()))?;
            let owner = (!r.owner_uid.is_empty()).then_some(r.owner_uid.as_str());
            let until = self
                .store
                .release_address(&r.network_uid, address, owner, self.halo)
                .await?;
            Ok(pb::ReleaseAddressReply {
                halo_until: crate::store::rfc3339(until),
            })
        })
        .await
    }

    async fn list_reservations(
        &self,
        request: Request<pb::ListReservationsRequest>,
    ) -> Reply<pb::ListReservationsReply> {
        let r = request.into_inner();
        self.observe("list_reservations", async {
            let list = self.store.list_reservations(&r.network_uid).await?;
            Ok(pb::ListReservationsReply {
                reservations: list
                    .into_iter()
                    .map(|x| pb::Reservation {
                        address: x.address.to_string(),
                        reservation_type: x.reservation_type.to_string(),
                        owner_kind: x.owner_kind.unwrap_or_default(),
                        owner_uid: x.owner_uid.unwrap_or_default(),
                        reserved_at: crate::store::rfc3339(x.reserved_at),
                        halo_until: x.halo_until.map(crate::store::rfc3339).unwrap_or_default(),
                        comment: x.comment.unwrap_or_default(),
                    })
                    .collect(),
            })
        })
        .await
    }

    async fn prepare_network(
        &self,
        request: Request<pb::PrepareNetworkRequest>,
    ) -> Reply<pb::PrepareNetworkReply> {
        let r = request.into_inner();
        self.observe("prepare_network", async {
            let network = self.network(&r.network_uid).await?;
            let reserved = self
                .store
                .reserve_network_addresses(
                    &r.network_uid,
                    &network.name,
                    &network.namespace,
                    &network.netblock,
                )
                .await?;
            let vxid = self.store.allocate_vxid(&r.network_uid).await?;
            Ok(pb::PrepareNetworkReply {
                vxid,
                reserved: reserved
                    .into_iter()
                    .map(|x| x.address.to_string())
                    .collect(),
            })
        })
        .await
    }

    async fn allocate_vxid(
        &self,
        request: Request<pb::AllocateVxidRequest>,
    ) -> Reply<pb::AllocateVxidReply> {
        let r = request.into_inner();
        self.observe("allocate_vxid", async {
            let vxid = self.store.allocate_vxid(&r.network_uid).await?;
            Ok(pb::AllocateVxidReply { vxid })
        })
        .await
    }

    // --- Events --------------------------------------------------------------------------

    async fn record_event_batch(
        &self,
        request: Request<pb::RecordEventBatchRequest>,
    ) -> Reply<pb::RecordEventBatchReply> {
        let r = request.into_inner();
        self.observe("record_event_batch", async {
            let mut per_type: BTreeMap<String, u64> = BTreeMap::new();
            let records = r
                .events
                .into_iter()
                .map(|e| {
                    *per_type.entry(e.event_type.clone()).or_default() += 1;
                    Ok(EventRecord {
                        event_uuid: e.event_uuid,
                        event_type: e.event_type,
                        timestamp: e.timestamp,
                        fqdn: e.fqdn,
                        duration: e.duration,
                        message: e.message,
                        extra: match e.extra.is_empty() {
                            true => None,
                            false => Some(optional_json(&e.extra, "extra")?),
                        },
                        request_id: e.request_id,
                        objects: e
                            .objects
                            .into_iter()
                            .map(|o| (o.object_type, o.object_uuid))
                            .collect(),
                    })
                })
                .collect::<Result<Vec<_>, StoreError>>()?;
            let (inserted, skipped) = self.store.record_event_batch(&records).await?;
            if skipped == 0 {
                for (t, n) in per_type {
                    self.metrics.events_inserted(&t, n);
                }
            }
            Ok(pb::RecordEventBatchReply { inserted, skipped })
        })
        .await
    }

    async fn query_events(
        &self,
        request: Request<pb::QueryEventsRequest>,
    ) -> Reply<pb::QueryEventsReply> {
        let r = request.into_inner();
        self.observe("query_events", async {
            let event_type = (!r.event_type.is_empty()).then_some(r.event_type.as_str());
            let events = self
                .store
                .query_events(&r.object_type, &r.object_uuid, event_type, r.limit)
                .await?;
            Ok(pb::QueryEventsReply {
                events: events
                    .into_iter()
                    .map(|e| pb::Event {
                        event_uuid: e.event_uuid,
                        event_type: e.event_type,
                        timestamp: e.timestamp,
                        fqdn: e.fqdn,
                        duration: e.duration,
                        message: e.message,
                        extra: e.extra.as_ref().map(json_bytes).unwrap_or_default(),
                        request_id: e.request_id,
                        objects: Vec::new(),
                    })
                    .collect(),
            })
        })
        .await
    }

    // --- Locks -----------------------------------------------------------------------------

    async fn acquire_lock(&self, request: Request<pb::AcquireLockRequest>) -> Reply<pb::LockReply> {
        let r = request.into_inner();
        self.observe("acquire_lock", async {
            let outcome = self
                .store
                .acquire_lock(
                    &r.lock_key,
                    &r.holder,
                    &r.node,
                    r.pid,
                    Duration::from_secs(u64::from(r.ttl_seconds.max(1))),
                    Duration::from_secs(u64::from(r.timeout_seconds.min(300))),
                )
                .await?;
            Ok(match outcome {
                LockAcquire::Acquired(info) => pb::LockReply {
                    held: true,
                    lock_id: info.lock_id,
                    expires_at: crate::store::rfc3339(info.expires_at),
                    holder: info.holder,
                },
                LockAcquire::TimedOut(holder) => pb::LockReply {
                    held: false,
                    lock_id: String::new(),
                    expires_at: holder
                        .as_ref()
                        .map(|h| crate::store::rfc3339(h.expires_at))
                        .unwrap_or_default(),
                    holder: holder.map(|h| h.holder).unwrap_or_default(),
                },
            })
        })
        .await
    }

    async fn refresh_lock(&self, request: Request<pb::LockRequest>) -> Reply<pb::LockReply> {
        let r = request.into_inner();
        self.observe("refresh_lock", async {
            let ttl = Duration::from_secs(u64::from(r.ttl_seconds.max(1)));
            let expiry = self
                .store
                .refresh_lock(&r.lock_key, &r.lock_id, ttl)
                .await?;
            Ok(pb::LockReply {
                held: expiry.is_some(),
                lock_id: if expiry.is_some() {
                    r.lock_id
                } else {
                    String::new()
                },
                expires_at: expiry.map(crate::store::rfc3339).unwrap_or_default(),
                holder: String::new(),
            })
        })
        .await
    }

    async fn release_lock(&self, request: Request<pb::LockRequest>) -> Reply<pb::ReleaseLockReply> {
        let r = request.into_inner();
        self.observe("release_lock", async {
            let released = self.store.release_lock(&r.lock_key, &r.lock_id).await?;
            Ok(pb::ReleaseLockReply { released })
        })
        .await
    }

    // --- Namespaces and keys -----------------------------------------------------------------

    async fn create_namespace(
        &self,
        request: Request<pb::NamespaceRequest>,
    ) -> Reply<pb::ResourceReply> {
        let r = request.into_inner();
        self.observe("create_namespace", async {
            self.store
                .create_namespace(&r.namespace)
                .await
                .map(resource_reply)
        })
        .await
    }

    async fn delete_namespace(
        &self,
        request: Request<pb::NamespaceRequest>,
    ) -> Reply<pb::DeleteReply> {
        let r = request.into_inner();
        self.observe("delete_namespace", async {
            let d = self.store.delete_namespace(&r.namespace).await?;
            Ok(pb::DeleteReply {
                object: json_bytes(&d.object),
                removed: d.removed,
                revision: d.revision,
            })
        })
        .await
    }

    async fn put_key(&self, request: Request<pb::PutKeyRequest>) -> Reply<pb::KeyReply> {
        let r = request.into_inner();
        self.observe("put_key", async {
            self.store
                .put_key(&r.namespace, &r.key_name, &r.key_hash)
                .await
                .map(key_reply)
        })
        .await
    }

    async fn delete_key(&self, request: Request<pb::KeyRequest>) -> Reply<pb::DeleteReply> {
        let r = request.into_inner();
        self.observe("delete_key", async {
            self.store.delete_key(&r.namespace, &r.key_name).await?;
            Ok(pb::DeleteReply {
                object: Vec::new(),
                removed: true,
                revision: 0,
            })
        })
        .await
    }

    async fn list_keys(&self, request: Request<pb::NamespaceRequest>) -> Reply<pb::ListKeysReply> {
        let r = request.into_inner();
        self.observe("list_keys", async {
            let keys = self.store.list_keys(&r.namespace).await?;
            Ok(pb::ListKeysReply {
                keys: keys.into_iter().map(key_reply).collect(),
            })
        })
        .await
    }

    // --- Blob bytes --------------------------------------------------------------------------

    async fn put_blob_data(
        &self,
        request: Request<pb::PutBlobDataRequest>,
    ) -> Reply<pb::PutBlobDataReply> {
        let r = request.into_inner();
        self.observe("put_blob_data", async {
            let (size, sha256) = self
                .store
                .put_blob_data(&r.uid, &r.mime_type, &r.data)
                .await?;
            Ok(pb::PutBlobDataReply { size, sha256 })
        })
        .await
    }

    async fn get_blob_data(
        &self,
        request: Request<pb::GetBlobDataRequest>,
    ) -> Reply<pb::GetBlobDataReply> {
        let r = request.into_inner();
        self.observe("get_blob_data", async {
            match self.store.get_blob_data(&r.uid).await? {
                Some(b) => Ok(pb::GetBlobDataReply {
                    data: b.data,
                    mime_type: b.mime_type,
                    sha256: b.sha256,
                }),
                None => Err(StoreError::NotFound {
                    kind: "BlobData".into(),
                    namespace: String::new(),
                    name: r.uid.clone(),
                }),
            }
        })
        .await
    }

    // --- Maintenance -------------------------------------------------------------------------

    async fn reap_stuck(
        &self,
        request: Request<pb::ReapStuckRequest>,
    ) -> Reply<pb::ReapStuckReply> {
        let r = request.into_inner();
        self.observe("reap_stuck", async {
            let (requeued, rejected) = self
                .store
                .reap_stuck(
                    Duration::from_secs(r.stuck_threshold_seconds),
                    r.max_attempts.max(1),
                )
                .await?;
            Ok(pb::ReapStuckReply { requeued, rejected })
        })
        .await
    }

    async fn compact_change_log(
        &self,
        request: Request<pb::CompactChangeLogRequest>,
    ) -> Reply<pb::CompactReply> {
        let r = request.into_inner();
        self.observe("compact_change_log", async {
            let keep_for = Duration::from_secs(r.keep_seconds);
            let (compacted_revision, rows_deleted) = self
                .store
                .compact_retaining(r.keep_revisions, keep_for)
                .await?;
            let tombstones_deleted = self.store.purge_tombstones(keep_for).await?;
            Ok(pb::CompactReply {
                compacted_revision,
                rows_deleted,
                tombstones_deleted,
            })
        })
        .await
    }

    async fn prune_events(
        &self,
        request: Request<pb::PruneEventsRequest>,
    ) -> Reply<pb::PruneEventsReply> {
        let r = request.into_inner();
        self.observe("prune_events", async {
            let ages: BTreeMap<String, u64> = r.max_age_seconds.into_iter().collect();
            let (event_objects_pruned, events_pruned, orphans_pruned) =
                self.store.prune_events(&ages).await?;
            Ok(pb::PruneEventsReply {
                event_objects_pruned,
                events_pruned,
                orphans_pruned,
            })
        })
        .await
    }

    async fn purge_terminal_operations(
        &self,
        request: Request<pb::PurgeTerminalOperationsRequest>,
    ) -> Reply<pb::PurgeReply> {
        let r = request.into_inner();
        self.observe("purge_terminal_operations", async {
            let purged = self
                .store
                .purge_terminal_operations(Duration::from_secs(r.older_than_seconds))
                .await?;
            Ok(pb::PurgeReply { purged })
        })
        .await
    }
}

fn lease_from(lease: Option<pb::Lease>) -> Result<Lease, StoreError> {
    let l = lease.ok_or_else(|| StoreError::Invalid("lease is required".into()))?;
    Ok(Lease {
        id: l.id,
        attempt: l.attempt,
    })
}

fn optional_json(bytes: &[u8], what: &str) -> Result<Value, StoreError> {
    if bytes.is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_slice(bytes)
        .map_err(|e| StoreError::Invalid(format!("{what} is not JSON: {e}")))
}

fn parse_address(s: &str) -> Result<Option<Ipv4Addr>, StoreError> {
    if s.is_empty() {
        return Ok(None);
    }
    s.parse()
        .map(Some)
        .map_err(|_| StoreError::Invalid(format!("'{s}' is not an IPv4 address")))
}

fn key_reply(k: KeyRecord) -> pb::KeyReply {
    pb::KeyReply {
        namespace: k.namespace,
        key_name: k.key_name,
        key_hash: k.key_hash,
        nonce: k.nonce,
        created_at: crate::store::rfc3339(k.created_at),
    }
}

/// What IPAM needs to know of a network.
struct NetworkFacts {
    name: String,
    namespace: String,
    netblock: String,
}

impl GatewayService {
    /// UpdateResource and UpdateStatus: the same CAS write of another part.
    async fn update(
        &self,
        r: pb::UpdateResourceRequest,
        scope: UpdateScope,
    ) -> Reply<pb::ResourceReply> {
        let operation = match scope {
            UpdateScope::Main => "update_resource",
            UpdateScope::Status => "update_status",
        };
        self.observe(operation, async {
            let object = parse_object(&r.object)?;
            let pre = Preconditions {
                resource_version: precondition(r.resource_version),
                uid: None,
            };
            self.store
                .update(object, scope, pre, r.dry_run)
                .await
                .map(resource_reply)
        })
        .await
    }

    /// Looks a Network up by uid for IPAM calls.
    async fn network(&self, uid: &str) -> Result<NetworkFacts, StoreError> {
        if uid.is_empty() {
            return Err(StoreError::Invalid("network_uid is required".into()));
        }
        let n = self.store.get_by_uid("Network", uid).await?.object;
        let text = |p: &str| {
            n.pointer(p)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        let netblock = text("/spec/netblock");
        if netblock.is_empty() {
            return Err(StoreError::Invalid(format!(
                "network {uid} has no spec.netblock"
            )));
        }
        Ok(NetworkFacts {
            name: text("/metadata/name"),
            namespace: text("/metadata/namespace"),
            netblock,
        })
    }
}

/// A stream fed by a task through a bounded channel.
fn async_stream<F, Fut>(f: F) -> WatchStream
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<pb::WatchEvent, Status>>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(256);
    tokio::spawn(f(tx));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}
