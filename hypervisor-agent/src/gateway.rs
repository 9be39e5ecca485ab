//! Typed access to sf-database for the agent: resources as `sf_schema` types, the
//! work queue and blob bytes, over `sf_database_client::GatewayClient`.
//!
//! Contract: every call goes through the client's retry policy; NOT_FOUND on a read is
//! `Ok(None)`; every other failure is a [`GatewayError`] whose [`GatewayError::code`]
//! exposes the gRPC code (ALREADY_EXISTS on a repeated create, FAILED_PRECONDITION on
//! a stale lease) so callers can treat repeats as done.

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use sf_database_client::{ClientError, GatewayClient};
use sf_proto::v1 as pb;
use tonic::Code;

/// A failed sf-database call.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The call failed (unreachable, or the gateway refused it).
    #[error(transparent)]
    Call(#[from] ClientError),
    /// An object could not be decoded as its kind.
    #[error("cannot decode {kind}: {message}")]
    Decode {
        /// The kind.
        kind: String,
        /// serde's message.
        message: String,
    },
    /// An object could not be encoded.
    #[error("cannot encode {kind}: {message}")]
    Encode {
        /// The kind.
        kind: String,
        /// serde's message.
        message: String,
    },
}

impl GatewayError {
    /// The gateway's status code, when it answered.
    pub fn code(&self) -> Option<Code> {
        match self {
            Self::Call(e) => e.code(),
            _ => None,
        }
    }

    /// True when sf-database could not be reached (worth retrying later).
    pub fn unavailable(&self) -> bool {
        matches!(self, Self::Call(ClientError::DatabaseUnavailable { .. }))
    }
}

fn decode<K: DeserializeOwned>(kind: &str, bytes: &[u8]) -> Result<K, GatewayError> {
    serde_json::from_slice(bytes).map_err(|e| GatewayError::Decode {
        kind: kind.to_owned(),
        message: e.to_string(),
    })
}

fn encode<T: Serialize>(kind: &str, value: &T) -> Result<Vec<u8>, GatewayError> {
    serde_json::to_vec(value).map_err(|e| GatewayError::Encode {
        kind: kind.to_owned(),
        message: e.to_string(),
    })
}

fn key(kind: &str, namespace: Option<&str>, name: &str) -> pb::ObjectKey {
    pb::ObjectKey {
        kind: kind.to_owned(),
        namespace: namespace.unwrap_or_default().to_owned(),
        name: name.to_owned(),
    }
}

/// The agent's view of sf-database. Cheap to clone.
#[derive(Clone)]
pub struct Gateway {
    client: GatewayClient,
}

impl Gateway {
    /// Wraps a client.
    pub fn new(client: GatewayClient) -> Self {
        Self { client }
    }

    /// The underlying client.
    pub fn client(&self) -> &GatewayClient {
        &self.client
    }

    /// One object by key; `None` when it does not exist.
    pub async fn get<K: DeserializeOwned>(
        &self,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Option<K>, GatewayError> {
        let k = key(kind, namespace, name);
        let reply = self
            .client
            .call("get_resource", |mut g| {
                let k = k.clone();
                async move {
                    g.get_resource(pb::GetResourceRequest {
                        key: Some(k),
                        uid: String::new(),
                        deleted: false,
                    })
                    .await
                }
            })
            .await;
        match reply {
            Ok(r) => decode(kind, &r.object).map(Some),
            Err(e) if e.code() == Some(Code::NotFound) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// One object by uid; `None` when it does not exist.
    pub async fn get_by_uid<K: DeserializeOwned>(
        &self,
        kind: &str,
        uid: &str,
    ) -> Result<Option<K>, GatewayError> {
        self.by_uid(kind, uid, false).await
    }

    /// The final state of a removed object by uid while sf-database keeps its
    /// tombstone (Instances and Networks, for the change log's retention); `None`
    /// when there is none.
    pub async fn get_deleted<K: DeserializeOwned>(
        &self,
        kind: &str,
        uid: &str,
    ) -> Result<Option<K>, GatewayError> {
        self.by_uid(kind, uid, true).await
    }

    async fn by_uid<K: DeserializeOwned>(
        &self,
        kind: &str,
        uid: &str,
        deleted: bool,
    ) -> Result<Option<K>, GatewayError> {
        let k = key(kind, None, "");
        let uid = uid.to_owned();
        let reply = self
            .client
            .call("get_resource", |mut g| {
                let (k, uid) = (k.clone(), uid.clone());
                async move {
                    g.get_resource(pb::GetResourceRequest {
                        key: Some(k),
                        uid,
                        deleted,
                    })
                    .await
                }
            })
            .await;
        match reply {
            Ok(r) => decode(kind, &r.object).map(Some),
            Err(e) if e.code() == Some(Code::NotFound) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Every object of `kind` (in `namespace`, or everywhere when `None`).
    pub async fn list<K: DeserializeOwned>(
        &self,
        kind: &str,
        namespace: Option<&str>,
    ) -> Result<Vec<K>, GatewayError> {
        let request = pb::ListResourcesRequest {
            kind: kind.to_owned(),
            namespace: namespace.unwrap_or_default().to_owned(),
            ..Default::default()
        };
        let reply = self
            .client
            .call("list_resources", |mut g| {
                let r = request.clone();
                async move { g.list_resources(r).await }
            })
            .await?;
        reply.objects.iter().map(|o| decode(kind, o)).collect()
    }

    /// Creates `object`, or reads it back when it exists already (a re-run, or a
    /// racing maker, made it); `None` when it went again in between.
    pub async fn create_or_get(&self, object: &Value) -> Result<Option<Value>, GatewayError> {
        match self.create(object).await {
            Ok(created) => Ok(Some(created)),
            Err(e) if e.code() == Some(Code::AlreadyExists) => {
                let kind = object["kind"].as_str().unwrap_or_default();
                let namespace = object
                    .pointer("/metadata/namespace")
                    .and_then(Value::as_str);
                let name = object
                    .pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                self.get(kind, namespace, name).await
            }
            Err(e) => Err(e),
        }
    }

    /// Creates an object; returns it as stored.
    pub async fn create(&self, object: &Value) -> Result<Value, GatewayError> {
        let kind = object["kind"].as_str().unwrap_or("object").to_owned();
        let bytes = encode(&kind, object)?;
        let reply = self
            .client
            .call("create_resource", |mut g| {
                let object = bytes.clone();
                async move {
                    g.create_resource(pb::CreateResourceRequest {
                        object,
                        dry_run: false,
                    })
                    .await
                }
            })
            .await?;
        decode(&kind, &reply.object)
    }

    /// Replaces metadata and spec, compare-and-swap on `resource_version`.
    pub async fn update(
        &self,
        object: &Value,
        resource_version: u64,
    ) -> Result<Value, GatewayError> {
        let kind = object["kind"].as_str().unwrap_or("object").to_owned();
        let bytes = encode(&kind, object)?;
        let reply = self
            .client
            .call("update_resource", |mut g| {
                let object = bytes.clone();
                async move {
                    g.update_resource(pb::UpdateResourceRequest {
                        object,
                        resource_version,
                        dry_run: false,
                    })
                    .await
                }
            })
            .await?;
        decode(&kind, &reply.object)
    }

    /// Applies an RFC 7386 merge patch to an object's status.
    pub async fn merge_status(
        &self,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
        patch: &Value,
    ) -> Result<(), GatewayError> {
        let k = key(kind, namespace, name);
        let status_patch = encode(kind, patch)?;
        self.client
            .call("merge_status", |mut g| {
                let (k, status_patch) = (k.clone(), status_patch.clone());
                async move {
                    g.merge_status(pb::MergeStatusRequest {
                        key: Some(k),
                        status_patch,
                    })
                    .await
                }
            })
            .await?;
        Ok(())
    }

    /// Claims up to `max` operations for `node`, long-polling `wait_seconds`.
    pub async fn claim(
        &self,
        node: &str,
        max: u32,
        claim_id: &str,
        claimer: &str,
        wait_seconds: u32,
    ) -> Result<Vec<pb::ClaimedOperation>, GatewayError> {
        let request = pb::ClaimRequest {
            node: node.to_owned(),
            max,
            claim_id: claim_id.to_owned(),
            wait_seconds,
            claimer: claimer.to_owned(),
            // Cluster-queue work is sf-cluster's, never an agent's.
            node_only: true,
        };
        let reply = self
            .client
            .call("claim", |mut g| {
                let r = request.clone();
                async move { g.claim(r).await }
            })
            .await?;
        Ok(reply.operations)
    }

    /// Heartbeats a lease; false when the operation was aborted.
    pub async fn heartbeat(&self, lease: pb::Lease) -> Result<bool, GatewayError> {
        let reply = self
            .client
            .call("heartbeat", |mut g| async move {
                g.heartbeat(pb::LeaseRequest { lease: Some(lease) }).await
            })
            .await?;
        Ok(reply.keep_going)
    }

    /// Completes a lease with `result`.
    pub async fn complete(&self, lease: pb::Lease, result: &Value) -> Result<(), GatewayError> {
        let result = encode("result", result)?;
        self.client
            .call("complete", |mut g| {
                let result = result.clone();
                async move {
                    g.complete(pb::CompleteRequest {
                        lease: Some(lease),
                        result,
                    })
                    .await
                }
            })
            .await?;
        Ok(())
    }

    /// Fails a lease with an error report.
    pub async fn fail(
        &self,
        lease: pb::Lease,
        code: &str,
        message: &str,
        retryable: bool,
    ) -> Result<(), GatewayError> {
        let error = pb::ErrorReport {
            code: code.to_owned(),
            message: message.to_owned(),
            retryable,
        };
        self.client
            .call("fail", |mut g| {
                let error = error.clone();
                async move {
                    g.fail(pb::FailRequest {
                        lease: Some(lease),
                        error: Some(error),
                    })
                    .await
                }
            })
            .await?;
        Ok(())
    }

    /// Stores the bytes of the Blob with uid `uid`; returns `(size, sha256)`.
    pub async fn put_blob_data(
        &self,
        uid: &str,
        data: Vec<u8>,
        mime_type: &str,
    ) -> Result<(u64, String), GatewayError> {
        let request = pb::PutBlobDataRequest {
            uid: uid.to_owned(),
            data,
            mime_type: mime_type.to_owned(),
        };
        let reply = self
            .client
            .call("put_blob_data", |mut g| {
                let r = request.clone();
                async move { g.put_blob_data(r).await }
            })
            .await?;
        Ok((reply.size, reply.sha256))
    }
}
