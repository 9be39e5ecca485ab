//! Thin, kind-generic calls on sf-api through a `kube::Client`: get, list by label,
//! merge patches of an object and of its `/status`, create and delete.
//!
//! Contract: paths come from `K::url_path` (namespaced when `namespace` is set,
//! cluster-scoped otherwise), so one helper serves every kind; patches are RFC 7386
//! merge patches (no server-side apply); a 404 on get is `Ok(None)`. Errors carry the
//! call's description.

use kube::Resource;
use kube::api::{DeleteParams, GetParams, ListParams, Patch, PatchParams, PostParams};
use kube::core::{ObjectList, Request};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{ReconcileError, is_not_found};

fn request<K: Resource<DynamicType = ()>>(namespace: Option<&str>) -> Request {
    Request::new(K::url_path(&(), namespace))
}

fn describe<K: Resource<DynamicType = ()>>(
    verb: &str,
    namespace: Option<&str>,
    name: &str,
) -> String {
    match namespace {
        Some(ns) => format!("{verb} {} {ns}/{name}", K::kind(&())),
        None => format!("{verb} {} {name}", K::kind(&())),
    }
}

fn build_error(call: String) -> impl FnOnce(kube::core::request::Error) -> ReconcileError {
    move |e| ReconcileError::Api {
        call,
        source: kube::Error::BuildRequest(e),
    }
}

/// GET; `None` on 404.
pub async fn get<K>(
    client: &kube::Client,
    namespace: Option<&str>,
    name: &str,
) -> Result<Option<K>, ReconcileError>
where
    K: Resource<DynamicType = ()> + DeserializeOwned,
{
    let call = describe::<K>("get", namespace, name);
    let req = request::<K>(namespace)
        .get(name, &GetParams::default())
        .map_err(build_error(call.clone()))?;
    match client.request::<K>(req).await {
        Ok(object) => Ok(Some(object)),
        Err(e) if is_not_found(&e) => Ok(None),
        Err(e) => Err(ReconcileError::api(call)(e)),
    }
}

/// LIST with a label selector.
pub async fn list<K>(
    client: &kube::Client,
    namespace: Option<&str>,
    labels: &str,
) -> Result<Vec<K>, ReconcileError>
where
    K: Resource<DynamicType = ()> + DeserializeOwned + Clone,
{
    let call = describe::<K>("list", namespace, labels);
    let req = request::<K>(namespace)
        .list(&ListParams::default().labels(labels))
        .map_err(build_error(call.clone()))?;
    let list: ObjectList<K> = client
        .request(req)
        .await
        .map_err(ReconcileError::api(call))?;
    Ok(list.items)
}

/// Merge-patches the object (metadata or spec).
pub async fn patch<K>(
    client: &kube::Client,
    namespace: Option<&str>,
    name: &str,
    patch: &serde_json::Value,
) -> Result<K, ReconcileError>
where
    K: Resource<DynamicType = ()> + DeserializeOwned,
{
    let call = describe::<K>("patch", namespace, name);
    let req = request::<K>(namespace)
        .patch(name, &PatchParams::default(), &Patch::Merge(patch))
        .map_err(build_error(call.clone()))?;
    client.request(req).await.map_err(ReconcileError::api(call))
}

/// Merge-patches `/status` with `patch` (the fields of `status`; wrapped here as
/// `{"status": patch}`, the shape the subresource takes).
pub async fn patch_status<K>(
    client: &kube::Client,
    namespace: Option<&str>,
    name: &str,
    patch: &serde_json::Value,
) -> Result<K, ReconcileError>
where
    K: Resource<DynamicType = ()> + DeserializeOwned,
{
    let call = describe::<K>("patch status of", namespace, name);
    let body = serde_json::json!({ "status": patch });
    let req = request::<K>(namespace)
        .patch_subresource(
            "status",
            name,
            &PatchParams::default(),
            &Patch::Merge(&body),
        )
        .map_err(build_error(call.clone()))?;
    client.request(req).await.map_err(ReconcileError::api(call))
}

/// POST; `Ok(None)` when it already exists.
pub async fn create<K>(
    client: &kube::Client,
    namespace: Option<&str>,
    object: &K,
) -> Result<Option<K>, ReconcileError>
where
    K: Resource<DynamicType = ()> + DeserializeOwned + Serialize,
{
    let name = object.meta().name.clone().unwrap_or_default();
    let call = describe::<K>("create", namespace, &name);
    let body = serde_json::to_vec(object).map_err(|source| ReconcileError::Encode {
        what: call.clone(),
        source,
    })?;
    let req = request::<K>(namespace)
        .create(&PostParams::default(), body)
        .map_err(build_error(call.clone()))?;
    match client.request::<K>(req).await {
        Ok(created) => Ok(Some(created)),
        Err(kube::Error::Api(s)) if s.is_already_exists() || s.code == 409 => Ok(None),
        Err(e) => Err(ReconcileError::api(call)(e)),
    }
}

/// DELETE; a 404 is success.
pub async fn delete<K>(
    client: &kube::Client,
    namespace: Option<&str>,
    name: &str,
) -> Result<(), ReconcileError>
where
    K: Resource<DynamicType = ()> + DeserializeOwned,
{
    let call = describe::<K>("delete", namespace, name);
    let req = request::<K>(namespace)
        .delete(name, &DeleteParams::default())
        .map_err(build_error(call.clone()))?;
    match client.request_status::<serde_json::Value>(req).await {
        Ok(_) => Ok(()),
        Err(e) if is_not_found(&e) => Ok(()),
        Err(e) => Err(ReconcileError::api(call)(e)),
    }
}
