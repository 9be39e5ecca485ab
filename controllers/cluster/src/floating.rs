//! The floating network, ensured at start-up by the lease holder.
//!
//! Contract: the floating network is a Network with no namespace, named `floating`,
//! with `spec.netblock = FLOATING_NETWORK` and no DHCP/NAT/DNS. [`ensure`] looks for
//! it by its well-known uid ([`FLOATING_NETWORK_UID`]), then by name; when neither
//! exists it creates it through sf-database's `CreateResource` (the Kubernetes face
//! has no cluster-scoped Network path). The gateway assigns uids itself, so a network
//! created here does NOT carry the well-known uid: DESIGN assigns that to
//! `sf-ctl ensure-mariadb-schema`, which should run first; [`ensure`] then finds it
//! and does nothing. The outcome says which case happened.

use serde_json::json;
use sf_database_client::GatewayClient;
use sf_proto::v1 as pb;
use tonic::Code;

use crate::config::FLOATING_NETWORK_UID;
use crate::error::ReconcileError;

/// The floating network's name.
pub const FLOATING_NETWORK_NAME: &str = "floating";

/// What [`ensure`] found or did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Floating {
    /// It exists with the well-known uid.
    WellKnown,
    /// It exists by name with another uid (created before the well-known uid existed).
    ByName(String),
    /// It was created now, with the uid the gateway gave it.
    Created(String),
}

fn uid_of(bytes: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(bytes)
        .ok()
        .and_then(|v| {
            v.pointer("/metadata/uid")
                .and_then(|u| u.as_str())
                .map(str::to_owned)
        })
        .unwrap_or_default()
}

/// Ensures the floating network exists (see the module contract).
pub async fn ensure(gateway: &GatewayClient, netblock: &str) -> Result<Floating, ReconcileError> {
    let key = pb::ObjectKey {
        kind: "Network".into(),
        namespace: String::new(),
        name: FLOATING_NETWORK_NAME.into(),
    };
    let by_uid = pb::GetResourceRequest {
        key: Some(key.clone()),
        uid: FLOATING_NETWORK_UID.into(),
    };
    match gateway
        .call("get_resource", |mut g| {
            let r = by_uid.clone();
            async move { g.get_resource(r).await }
        })
        .await
    {
        Ok(_) => return Ok(Floating::WellKnown),
        Err(e) if e.code() == Some(Code::NotFound) => {}
        Err(e) => return Err(ReconcileError::gateway("GetResource floating network")(e)),
    }
    let by_name = pb::GetResourceRequest {
        key: Some(key),
        uid: String::new(),
    };
    match gateway
        .call("get_resource", |mut g| {
            let r = by_name.clone();
            async move { g.get_resource(r).await }
        })
        .await
    {
        Ok(reply) => return Ok(Floating::ByName(uid_of(&reply.object))),
        Err(e) if e.code() == Some(Code::NotFound) => {}
        Err(e) => return Err(ReconcileError::gateway("GetResource floating network")(e)),
    }
    let object = json!({
        "apiVersion": sf_schema::API_VERSION,
        "kind": "Network",
        "metadata": {"name": FLOATING_NETWORK_NAME},
        "spec": {
            "netblock": netblock,
            "provideDhcp": false,
            "provideNat": false,
            "provideDns": false,
        },
    });
    let request = pb::CreateResourceRequest {
        object: serde_json::to_vec(&object).map_err(|source| ReconcileError::Encode {
            what: "floating network".into(),
            source,
        })?,
        dry_run: false,
    };
    match gateway
        .call("create_resource", |mut g| {
            let r = request.clone();
            async move { g.create_resource(r).await }
        })
        .await
    {
        Ok(reply) => {
            let uid = uid_of(&reply.object);
            tracing::warn!(%uid, "created the floating network without its well-known uid; run sf-ctl ensure-mariadb-schema to create it with {FLOATING_NETWORK_UID}");
            Ok(Floating::Created(uid))
        }
        Err(e) if e.code() == Some(Code::AlreadyExists) => Ok(Floating::ByName(String::new())),
        Err(e) => Err(ReconcileError::gateway("CreateResource floating network")(
            e,
        )),
    }
}
