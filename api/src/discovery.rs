//! Discovery documents: `/version`, `/api`, `/apis`, `/apis/shakenfist.io` and
//! `/apis/shakenfist.io/v1alpha1`.
//!
//! Contract: plain (not aggregated) discovery, built with the k8s-openapi types so the
//! documents parse as such: `/api` is an `APIVersions` listing `v1` and `/api/v1` an
//! empty `APIResourceList` (there is no core resource, but kube's `Discovery` and
//! kubectl expect the core group to exist), `/apis` an `APIGroupList` with the one group `shakenfist.io`, the group
//! version an `APIResourceList` with one entry per kind of the CRDs (name = plural,
//! singularName, namespaced, kind, verbs, shortNames, categories `all`) plus a
//! `<plural>/status` entry per kind. kubectl falls back to these when it asks for
//! aggregated discovery and gets plain JSON.

use std::sync::Arc;

use axum::extract::State;
use axum::response::Response;
use http::StatusCode;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    APIGroup, APIGroupList, APIResource, APIResourceList, APIVersions, GroupVersionForDiscovery,
};
use k8s_openapi::apimachinery::pkg::version::Info;
use sf_schema::{API_VERSION, GROUP, VERSION};

use crate::error::json_response;
use crate::kinds::Kinds;
use crate::server::App;

/// The Kubernetes version sf-api reports (the API conventions it follows).
pub const KUBERNETES_MAJOR: &str = "1";
/// See [`KUBERNETES_MAJOR`].
pub const KUBERNETES_MINOR: &str = "33";

/// The verbs of a kind's main resource.
const VERBS: [&str; 7] = [
    "create", "delete", "get", "list", "patch", "update", "watch",
];
/// The verbs of `/status`.
const STATUS_VERBS: [&str; 3] = ["get", "patch", "update"];

/// `/version`.
pub fn version() -> Info {
    Info {
        major: KUBERNETES_MAJOR.into(),
        minor: KUBERNETES_MINOR.into(),
        git_version: format!(
            "v{KUBERNETES_MAJOR}.{KUBERNETES_MINOR}.0-shakenfist.{}",
            env!("CARGO_PKG_VERSION")
        ),
        platform: format!("{}/{}", std::env::consts::OS, std::env::consts::ARCH),
        compiler: "rustc".into(),
        ..Info::default()
    }
}

fn group_version() -> GroupVersionForDiscovery {
    GroupVersionForDiscovery {
        group_version: API_VERSION.into(),
        version: VERSION.into(),
    }
}

/// `/apis/shakenfist.io`.
pub fn group() -> APIGroup {
    APIGroup {
        name: GROUP.into(),
        preferred_version: Some(group_version()),
        versions: vec![group_version()],
        server_address_by_client_cidrs: None,
    }
}

/// `/apis/shakenfist.io/v1alpha1`.
pub fn resources(kinds: &Kinds) -> APIResourceList {
    let mut resources = Vec::new();
    for kind in kinds.iter() {
        resources.push(APIResource {
            name: kind.plural.clone(),
            singular_name: kind.singular.clone(),
            namespaced: kind.namespaced,
            kind: kind.kind.clone(),
            verbs: VERBS.iter().map(|v| (*v).to_string()).collect(),
            short_names: (!kind.short_names.is_empty()).then(|| kind.short_names.clone()),
            categories: Some(vec!["all".into()]),
            ..APIResource::default()
        });
        resources.push(APIResource {
            name: format!("{}/status", kind.plural),
            singular_name: String::new(),
            namespaced: kind.namespaced,
            kind: kind.kind.clone(),
            verbs: STATUS_VERBS.iter().map(|v| (*v).to_string()).collect(),
            ..APIResource::default()
        });
    }
    APIResourceList {
        group_version: API_VERSION.into(),
        resources,
    }
}

/// `GET /version`.
pub async fn get_version() -> Response {
    json_response(StatusCode::OK, &version())
}

/// `GET /api`.
pub async fn get_api() -> Response {
    json_response(
        StatusCode::OK,
        &APIVersions {
            versions: vec!["v1".into()],
            server_address_by_client_cidrs: Vec::new(),
        },
    )
}

/// `GET /api/v1`: no core resources.
pub async fn get_core_v1() -> Response {
    json_response(
        StatusCode::OK,
        &APIResourceList {
            group_version: "v1".into(),
            resources: Vec::new(),
        },
    )
}

/// `GET /apis`.
pub async fn get_apis() -> Response {
    json_response(
        StatusCode::OK,
        &APIGroupList {
            groups: vec![group()],
        },
    )
}

/// `GET /apis/shakenfist.io`.
pub async fn get_group() -> Response {
    json_response(StatusCode::OK, &group())
}

/// `GET /apis/shakenfist.io/v1alpha1`.
pub async fn get_resources(State(app): State<Arc<App>>) -> Response {
    json_response(StatusCode::OK, &resources(&app.kinds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_list_has_every_kind_and_its_status() {
        let kinds = Kinds::new().unwrap();
        let list = resources(&kinds);
        let json = serde_json::to_value(&list).unwrap();
        assert_eq!(json["kind"], "APIResourceList");
        assert_eq!(json["groupVersion"], API_VERSION);
        let inst = list
            .resources
            .iter()
            .find(|r| r.name == "instances")
            .unwrap();
        assert_eq!(inst.short_names, Some(vec!["inst".to_string()]));
        assert!(inst.verbs.contains(&"watch".to_string()));
        assert!(list.resources.iter().any(|r| r.name == "instances/status"));
        assert_eq!(list.resources.len(), 2 * kinds.iter().count());
        let nodes = list.resources.iter().find(|r| r.name == "nodes").unwrap();
        assert!(!nodes.namespaced);
    }

    #[test]
    fn group_list_names_shakenfist() {
        let json = serde_json::to_value(APIGroupList {
            groups: vec![group()],
        })
        .unwrap();
        assert_eq!(json["kind"], "APIGroupList");
        assert_eq!(json["groups"][0]["name"], GROUP);
        assert_eq!(
            json["groups"][0]["preferredVersion"]["groupVersion"],
            API_VERSION
        );
    }
}
