//! The floating network, ensured at start-up by the lease holder.
//!
//! Contract: the floating network is a Network with no namespace, named `floating`,
//! with `spec.netblock = FLOATING_NETWORK` and no DHCP/NAT/DNS. [`ensure`] looks for
//! it by its well-known uid ([`FLOATING_NETWORK_UID`]), then by name; when neither
//! exists it creates it through sf-database's `CreateResource` (the Kubernetes face
//! has no cluster-scoped Network path). The gateway assigns uids itself, so a network
//! created here does NOT carry the well-known uid: DESIGN assigns that to
//! `sf-ctl ensure-mariadb-schema`, which should run first; [`ensure`] then finds it
//! and does nothing. The outcome says which case happened. Either way [`ensure`] then
//! prepares it (PrepareNetwork, idempotent): its network, broadcast and gateway
//! addresses are reserved, so no floating address or NAT gateway is ever given `.1`,
//! the default route of the network nodes' namespaces. [`uid`] is the same look-up
//! without the create, for the controllers' floating reservations.

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

/// The floating network's uid: the well-known one, else that of the network named
/// `floating`; `None` when neither exists. The floating addresses of the controllers
/// ([`sf_plan::Action::ReserveFloating`]) are reserved on it.
pub async fn uid(gateway: &GatewayClient) -> Result<Option<String>, ReconcileError> {
    Ok(match find(gateway).await? {
        Some(Floating::WellKnown) => Some(FLOATING_NETWORK_UID.to_owned()),
        Some(Floating::ByName(uid) | Floating::Created(uid)) if !uid.is_empty() => Some(uid),
        _ => None,
    })
}

/// Looks the floating network up by its well-known uid, then by name.
async fn find(gateway: &GatewayClient) -> Result<Option<Floating>, ReconcileError> {
    let key = pb::ObjectKey {
        kind: "Network".into(),
        namespace: String::new(),
        name: FLOATING_NETWORK_NAME.into(),
    };
    let by_uid = pb::GetResourceRequest {
        key: Some(key.clone()),
        uid: FLOATING_NETWORK_UID.into(),
        deleted: false,
    };
    match gateway
        .call("get_resource", |mut g| {
            let r = by_uid.clone();
            async move { g.get_resource(r).await }
        })
        .await
    {
        Ok(_) => return Ok(Some(Floating::WellKnown)),
        Err(e) if e.code() == Some(Code::NotFound) => {}
        Err(e) => return Err(ReconcileError::gateway("GetResource floating network")(e)),
    }
    let by_name = pb::GetResourceRequest {
        key: Some(key),
        uid: String::new(),
        deleted: false,
    };
    match gateway
        .call("get_resource", |mut g| {
            let r = by_name.clone();
            async move { g.get_resource(r).await }
        })
        .await
    {
        Ok(reply) => Ok(Some(Floating::ByName(uid_of(&reply.object)))),
        Err(e) if e.code() == Some(Code::NotFound) => Ok(None),
        Err(e) => Err(ReconcileError::gateway("GetResource floating network")(e)),
    }
}

/// Ensures the floating network exists (see the module contract).
pub async fn ensure(gateway: &GatewayClient, netblock: &str) -> Result<Floating, ReconcileError> {
    let outcome = create_unless_found(gateway, netblock).await?;
    // The network controller skips the namespace-less floating network, so its
    // network, broadcast and gateway (.1: the default route out of every network
    // node namespace) are reserved here, or a floating address could take them.
    if let Some(uid) = uid(gateway).await? {
        let request = pb::PrepareNetworkRequest { network_uid: uid };
        gateway
            .call("prepare_network", |mut g| {
                let r = request.clone();
                async move { g.prepare_network(r).await }
            })
            .await
            .map_err(ReconcileError::gateway("PrepareNetwork floating network"))?;
    }
    Ok(outcome)
}

async fn create_unless_found(
    gateway: &GatewayClient,
    netblock: &str,
) -> Result<Floating, ReconcileError> {
    if let Some(found) = find(gateway).await? {
        return Ok(found);
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
