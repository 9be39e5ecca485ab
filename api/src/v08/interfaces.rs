//! v0.8 network interfaces and network addresses.
//!
//! Contract (`shared/research/shakenfist.md` §1):
//! - An interface row is `{uuid, name, instance_uuid, network_uuid, macaddr, ipv4,
//!   floating, model, order, state}`; `order` is the interface's position on its
//!   instance as the guest sees it (`spec.order`, else the index of a boot interface
//!   `<instance>-<i>`, else after those by name, as the agent orders them).
//! - `GET /instances/{ref}/interfaces` and `GET /networks/{ref}/interfaces`: the rows
//!   of one instance (in order) or of one network (by instance, then order), the
//!   instance or network resolved as `GET /instances/{ref}` does.
//! - `POST /instances/{ref}/interfaces {network: {network_uuid, address, macaddress,
//!   model, float}}` hot-plugs one: a NetworkInterface `<instance>-nic<order>` (the
//!   instance name shortened to fit a DNS label; the next free number when taken)
//!   with `spec.order` one past the instance's last interface; the interface
//!   controller reserves its address and plugs it once the instance is created. An
//!   instance being deleted is 409, a missing network 404; the answer is the new
//!   interface's row.
//! - `GET /interfaces/{uuid}`: one interface of the caller's namespace (`system`: any)
//!   by uuid; 404 otherwise.
//! - `POST /interfaces/{uuid}/float` and `/defloat` set `spec.float` (admitted as an
//!   update with the read resourceVersion as precondition; nothing written when it
//!   already is so) and answer the row; the interface controller reserves or releases
//!   the floating address, which the row shows once it is held.
//! - `GET /networks/{ref}/addresses`: v0.8's `[{address, type, user, when, comment}]`
//!   from the network's IPAMLeases, in address order; `user` is `[kind, uuid]` of the
//!   holder (`null` for the network's own addresses), a released address in its
//!   deletion halo has type `deletion-halo`, `when` is the lease's creation time in
//!   seconds since the epoch.

use std::net::Ipv4Addr;
use std::sync::Arc;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::response::Response;
use http::StatusCode;
use serde_json::{Value, json};

use super::{
    body_json, create_object, done, epoch, list_kind, lookup_namespace, nic_fields, not_deleting,
    param, read_change_write, resolve, sf_error, text, without_nulls,
};
use crate::auth::Caller;
use crate::error::json_response;
use crate::server::App;

/// Where an interface sits on its instance (see the module contract), as a sort key.
fn interface_order(iface: &Value) -> (u64, String) {
    let name = text(iface, "/metadata/name").unwrap_or_default();
    (known_order(iface).unwrap_or(10_000), name)
}

/// The interface's place when it has one: `spec.order`, else the index of a boot
/// interface `<instance>-<i>`.
fn known_order(iface: &Value) -> Option<u64> {
    if let Some(order) = iface.pointer("/spec/order").and_then(Value::as_u64) {
        return Some(order);
    }
    let name = text(iface, "/metadata/name").unwrap_or_default();
    let instance = text(iface, "/spec/instance").unwrap_or_default();
    name.strip_prefix(instance.as_str())
        .and_then(|rest| rest.strip_prefix('-'))
        .and_then(|i| i.parse::<u64>().ok())
}

/// The MAC address the interface has or will have: reported, asked for, or the one
/// derived from its uid that the agent will plug it with.
fn mac_of(iface: &Value) -> Option<String> {
    text(iface, "/status/macaddr")
        .or_else(|| text(iface, "/spec/macaddr"))
        .or_else(|| {
            serde_json::from_value::<sf_schema::NetworkInterface>(iface.clone())
                .ok()
                .map(|i| i.mac())
        })
}

/// The object of `items` named `reference` (its name or uid).
fn named<'a>(items: &'a [Value], reference: &str) -> Option<&'a Value> {
    items.iter().find(|o| {
        text(o, "/metadata/name").as_deref() == Some(reference)
            || text(o, "/metadata/uid").as_deref() == Some(reference)
    })
}

/// Namespace, instance name, then place on the instance.
type SortKey = (String, String, (u64, String));

/// The interfaces of one namespace with what their rows need.
struct Namespace {
    interfaces: Vec<Value>,
    instances: Vec<Value>,
    networks: Vec<Value>,
}

impl Namespace {
    async fn read(app: &App, namespace: Option<String>) -> Result<Self, Response> {
        Ok(Self {
            interfaces: list_kind(app, "NetworkInterface", namespace.clone()).await?,
            instances: list_kind(app, "Instance", namespace.clone()).await?,
            networks: list_kind(app, "Network", namespace).await?,
        })
    }

    /// The rows of the interfaces `keep` selects, grouped by instance (by name) and in
    /// each instance's order, `order` being the position among ALL of that instance's
    /// interfaces.
    fn rows(&self, keep: impl Fn(&Value) -> bool) -> Vec<Value> {
        let mut all: Vec<(SortKey, &Value)> = self
            .interfaces
            .iter()
            .map(|i| {
                let key = (
                    text(i, "/metadata/namespace").unwrap_or_default(),
                    text(i, "/spec/instance").unwrap_or_default(),
                    interface_order(i),
                );
                (key, i)
            })
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        let mut rows = Vec::new();
        let mut position = 0u64;
        let mut previous: Option<(String, String)> = None;
        for ((namespace, instance, _), iface) in all {
            let owner = (namespace, instance);
            if previous.as_ref() != Some(&owner) {
                position = 0;
                previous = Some(owner);
            } else {
                position += 1;
            }
            if keep(iface) {
                let mut row = self.row(iface);
                row["order"] = json!(position);
                rows.push(row);
            }
        }
        rows
    }

    /// One interface in v0.8's shape (`order` set by [`Self::rows`]).
    fn row(&self, iface: &Value) -> Value {
        let in_namespace =
            |o: &&Value| text(o, "/metadata/namespace") == text(iface, "/metadata/namespace");
        let instance = text(iface, "/spec/instance").unwrap_or_default();
        let network = text(iface, "/spec/network").unwrap_or_default();
        let instances: Vec<Value> = self
            .instances
            .iter()
            .filter(in_namespace)
            .cloned()
            .collect();
        let networks: Vec<Value> = self.networks.iter().filter(in_namespace).cloned().collect();
        json!({
            "uuid": text(iface, "/metadata/uid"),
            "name": text(iface, "/metadata/name"),
            "instance_uuid": named(&instances, &instance).and_then(|i| text(i, "/metadata/uid")),
            "network_uuid": named(&networks, &network).and_then(|n| text(n, "/metadata/uid")),
            "macaddr": mac_of(iface),
            "ipv4": text(iface, "/status/ipv4"),
            "floating": text(iface, "/status/floatingAddress"),
            "model": text(iface, "/spec/model").unwrap_or_else(|| "virtio".into()),
            "state": text(iface, "/status/state").unwrap_or_else(|| "initial".into()),
        })
    }
}

/// Whether `iface` (of the same namespace) names `object` (by name or uid) at `field`.
fn refers_to(iface: &Value, field: &str, object: &Value) -> bool {
    let Some(reference) = text(iface, field) else {
        return false;
    };
    text(iface, "/metadata/namespace") == text(object, "/metadata/namespace")
        && (text(object, "/metadata/name").as_deref() == Some(reference.as_str())
            || text(object, "/metadata/uid").as_deref() == Some(reference.as_str()))
}

/// `GET /{instances,networks}/{ref}/interfaces` for `kind`.
async fn interfaces_of(
    app: &App,
    caller: &Caller,
    kind: &str,
    field: &str,
    reference: &str,
    query: Option<&str>,
) -> Result<Response, Response> {
    let ns = lookup_namespace(caller, param(query, &Value::Null, "namespace"))?;
    let object = resolve(app, kind, ns, reference).await?;
    let namespace = Namespace::read(app, text(&object, "/metadata/namespace")).await?;
    let rows = namespace.rows(|i| refers_to(i, field, &object));
    Ok(json_response(StatusCode::OK, &rows))
}

pub(super) async fn instance_interfaces(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Path(reference): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    done(
        interfaces_of(
            &app,
            &caller,
            "Instance",
            "/spec/instance",
            &reference,
            query.as_deref(),
        )
        .await,
    )
}

pub(super) async fn network_interfaces(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Path(reference): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    done(
        interfaces_of(
            &app,
            &caller,
            "Network",
            "/spec/network",
            &reference,
            query.as_deref(),
        )
        .await,
    )
}

/// The longest Kubernetes object name (a DNS label).
const MAX_NAME: usize = 63;

/// `<instance>-nic<n>`, the instance part shortened so the whole fits [`MAX_NAME`].
fn hot_plug_name(instance: &str, n: u64) -> String {
    let suffix = format!("-nic{n}");
    let room = MAX_NAME.saturating_sub(suffix.len());
    let head: String = instance.chars().take(room).collect();
    format!("{}{suffix}", head.trim_end_matches('-'))
}

/// `POST /instances/{ref}/interfaces`.
pub(super) async fn add_interface(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Path(reference): Path<String>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    let run = async {
        let body = without_nulls(&body_json(&body)?);
        let query = query.as_deref();
        let ns = lookup_namespace(&caller, param(query, &body, "namespace"))?;
        let instance = resolve(&app, "Instance", ns, &reference).await?;
        if instance.pointer("/metadata/deletionTimestamp").is_some() {
            return Err(sf_error(
                StatusCode::CONFLICT,
                format!("instance {reference} is being deleted"),
            ));
        }
        let Some(net) = body.get("network").filter(|n| n.is_object()) else {
            return Err(sf_error(
                StatusCode::BAD_REQUEST,
                "network: required, a networkspec object ({\"network_uuid\": ...})",
            ));
        };
        let network_ref = net
            .get("network_uuid")
            .or_else(|| net.get("network"))
            .and_then(Value::as_str)
            .unwrap_or_default();
        let namespace = text(&instance, "/metadata/namespace").unwrap_or_default();
        let network = resolve(&app, "Network", Some(namespace.clone()), network_ref).await?;
        let existing = Namespace::read(&app, Some(namespace.clone())).await?;
        // Past every interface the instance has or will have: its boot interfaces
        // (one per spec.networks entry, made by the controller, maybe not yet) and
        // every order in use (one freed by an unplug is not reused).
        let mine: Vec<&Value> = existing
            .interfaces
            .iter()
            .filter(|i| refers_to(i, "/spec/instance", &instance))
            .collect();
        let boot = instance
            .pointer("/spec/networks")
            .and_then(Value::as_array)
            .map_or(0, |n| n.len() as u64);
        let next = mine
            .iter()
            .filter_map(|i| known_order(i).map(|o| o + 1))
            .chain([boot, mine.len() as u64])
            .max()
            .unwrap_or(0);
        let instance_name = text(&instance, "/metadata/name").unwrap_or_default();
        let taken = |name: &str| {
            existing
                .interfaces
                .iter()
                .any(|i| text(i, "/metadata/name").as_deref() == Some(name))
        };
        let name = (next..next + 1000)
            .map(|n| hot_plug_name(&instance_name, n))
            .find(|n| !taken(n))
            .unwrap_or_else(|| hot_plug_name(&instance_name, next));
        let mut spec = nic_fields(net, &network);
        spec["instance"] = json!(instance_name);
        spec["order"] = json!(next);
        let object = json!({
            "apiVersion": sf_schema::API_VERSION,
            "kind": "NetworkInterface",
            "metadata": {"name": name, "namespace": namespace},
            "spec": spec,
        });
        let created = create_object(&app, object, &namespace).await?;
        let mut namespace_now = existing;
        namespace_now.interfaces.push(created.clone());
        let uid = text(&created, "/metadata/uid").unwrap_or_default();
        Ok(json_response(StatusCode::OK, &row_of(&namespace_now, &uid)))
    };
    done(run.await)
}

/// The interface `uuid` names in the caller's scope (any namespace for `system`).
async fn interface_by_uuid(
    app: &App,
    caller: &Caller,
    uuid: &str,
    query: Option<&str>,
) -> Result<(Value, Namespace), Response> {
    let iface = find_interface(app, caller, uuid, query).await?;
    let namespace = Namespace::read(app, text(&iface, "/metadata/namespace")).await?;
    Ok((iface, namespace))
}

/// The interface `uuid` names in the caller's scope, alone.
pub(super) async fn find_interface(
    app: &App,
    caller: &Caller,
    uuid: &str,
    query: Option<&str>,
) -> Result<Value, Response> {
    let ns = lookup_namespace(caller, param(query, &Value::Null, "namespace"))?;
    let interfaces = list_kind(app, "NetworkInterface", ns).await?;
    interfaces
        .into_iter()
        .find(|i| text(i, "/metadata/uid").as_deref() == Some(uuid))
        .ok_or_else(|| sf_error(StatusCode::NOT_FOUND, format!("interface {uuid} not found")))
}

/// The row of the interface with uid `uuid` among `namespace`'s.
fn row_of(namespace: &Namespace, uuid: &str) -> Value {
    namespace
        .rows(|i| text(i, "/metadata/uid").as_deref() == Some(uuid))
        .pop()
        .unwrap_or(Value::Null)
}

pub(super) async fn get_interface(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Path(uuid): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    let run = async {
        let (_, namespace) = interface_by_uuid(&app, &caller, &uuid, query.as_deref()).await?;
        Ok(json_response(StatusCode::OK, &row_of(&namespace, &uuid)))
    };
    done(run.await)
}

/// `POST /interfaces/{uuid}/{float|defloat}`; another action is 404.
pub(super) async fn interface_action(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Path((uuid, action)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> Response {
    let run = async {
        let float = match action.as_str() {
            "float" => true,
            "defloat" => false,
            other => {
                return Err(sf_error(
                    StatusCode::NOT_FOUND,
                    format!("interfaces have no action {other}"),
                ));
            }
        };
        let what = format!("interface {uuid}");
        let query = query.as_deref();
        let iface = read_change_write(
            &app,
            &caller,
            &what,
            || find_interface(&app, &caller, &uuid, query),
            |iface| {
                not_deleting(iface, &what)?;
                if (iface.pointer("/spec/float").and_then(Value::as_bool) == Some(true)) == float {
                    return Ok(false);
                }
                if let Some(spec) = iface.get_mut("spec").and_then(Value::as_object_mut) {
                    spec.insert("float".into(), json!(float));
                }
                Ok(true)
            },
        )
        .await?;
        let mut namespace = Namespace::read(&app, text(&iface, "/metadata/namespace")).await?;
        for stored in namespace.interfaces.iter_mut() {
            if text(stored, "/metadata/uid").as_deref() == Some(uuid.as_str()) {
                *stored = iface.clone();
            }
        }
        Ok(json_response(StatusCode::OK, &row_of(&namespace, &uuid)))
    };
    done(run.await)
}

/// One lease in v0.8's address shape, with its address as a sort key.
fn address_row(lease: &Value) -> (u32, Value) {
    let address = text(lease, "/spec/address").unwrap_or_default();
    let halo = text(lease, "/status/phase").as_deref() == Some("halo");
    let kind = if halo {
        "deletion-halo".to_owned()
    } else {
        text(lease, "/spec/reservationType").unwrap_or_else(|| "unknown".into())
    };
    let user = match (
        text(lease, "/spec/owner/kind"),
        text(lease, "/spec/owner/uid"),
    ) {
        (Some(kind), Some(uid)) if !halo => json!([kind.to_ascii_lowercase(), uid]),
        _ => Value::Null,
    };
    let key = address
        .parse::<Ipv4Addr>()
        .map(u32::from)
        .unwrap_or(u32::MAX);
    let row = json!({
        "address": address,
        "type": kind,
        "user": user,
        "when": epoch(lease, "/metadata/creationTimestamp"),
        "comment": text(lease, "/spec/comment").unwrap_or_default(),
    });
    (key, row)
}

/// `GET /networks/{ref}/addresses`.
pub(super) async fn network_addresses(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    Path(reference): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    let run = async {
        let ns = lookup_namespace(&caller, param(query.as_deref(), &Value::Null, "namespace"))?;
        let network = resolve(&app, "Network", ns, &reference).await?;
        let uid = text(&network, "/metadata/uid").unwrap_or_default();
        let leases = list_kind(&app, "IPAMLease", text(&network, "/metadata/namespace")).await?;
        let mut rows: Vec<(u32, Value)> = leases
            .iter()
            .filter(|l| text(l, "/spec/networkUid").as_deref() == Some(uid.as_str()))
            .map(address_row)
            .collect();
        rows.sort_by_key(|(key, _)| *key);
        let rows: Vec<Value> = rows.into_iter().map(|(_, row)| row).collect();
        Ok(json_response(StatusCode::OK, &rows))
    };
    done(run.await)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iface(name: &str, instance: &str, order: Option<u64>) -> Value {
        let mut spec = json!({"instance": instance, "network": "web"});
        if let Some(order) = order {
            spec["order"] = json!(order);
        }
        json!({"metadata": {"name": name, "namespace": "ta", "uid": format!("u-{name}")},
               "spec": spec})
    }

    #[test]
    fn order_is_the_position_among_all_of_the_instances_interfaces() {
        let namespace = Namespace {
            interfaces: vec![
                iface("late", "a", Some(5)),
                iface("b-0", "b", None),
                iface("a-0", "a", None),
                iface("a-1", "a", None),
            ],
            instances: vec![],
            networks: vec![],
        };
        let rows = namespace.rows(|i| text(i, "/metadata/name").as_deref() != Some("a-1"));
        let got: Vec<(String, u64)> = rows
            .iter()
            .map(|r| {
                (
                    r["name"].as_str().unwrap_or_default().to_owned(),
                    r["order"].as_u64().unwrap_or(99),
                )
            })
            .collect();
        assert_eq!(
            got,
            [("a-0".into(), 0), ("late".into(), 2), ("b-0".into(), 0)]
        );
    }

    #[test]
    fn hot_plugged_names_fit_a_dns_label() {
        assert_eq!(hot_plug_name("web-1", 2), "web-1-nic2");
        let long = hot_plug_name(&"a".repeat(63), 12);
        assert_eq!(long.len(), 63);
        assert!(long.ends_with("-nic12"));
        assert!(sf_schema::validation::is_dns_label(&long), "{long}");
        let dashed = hot_plug_name(&format!("{}-b", "a".repeat(57)), 3);
        assert!(sf_schema::validation::is_dns_label(&dashed), "{dashed}");
    }

    #[test]
    fn addresses_name_their_holder_and_the_halo() {
        let held = json!({
            "metadata": {"creationTimestamp": "2026-11-26T10:00:00Z"},
            "spec": {"address": "10.0.0.9", "reservationType": "instance",
                     "owner": {"kind": "NetworkInterface", "name": "i", "uid": "u1"}},
            "status": {"phase": "held"},
        });
        let (key, row) = address_row(&held);
        assert_eq!(key, u32::from(Ipv4Addr::new(10, 0, 0, 9)));
        assert_eq!(row["type"], "instance");
        assert_eq!(row["user"], json!(["networkinterface", "u1"]));
        assert_eq!(row["when"], json!(1_795_687_200.0));
        let mut halo = held.clone();
        halo["status"]["phase"] = json!("halo");
        let (_, row) = address_row(&halo);
        assert_eq!(row["type"], "deletion-halo");
        assert_eq!(row["user"], Value::Null);
    }
}
