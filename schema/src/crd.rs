//! The CustomResourceDefinitions of every kind and their YAML rendering.
//!
//! Contract: [`all_crds`] is the single list of kinds the control plane serves, in a
//! fixed order; the YAML of each ([`crd_yaml`]) is committed under
//! `schema/crds/<plural>.yaml` and a test fails when the code and the files drift
//! (`SF_UPDATE_GOLDEN=1 cargo test -p sf-schema` rewrites them). Every schema is
//! structural: free-form JSON carries `x-kubernetes-preserve-unknown-fields`.
//!
//! The YAML is safe for YAML 1.1 readers too (kubectl, Helm): a string that YAML 1.1
//! would read as a boolean (`on`, `off`, `yes`, `no`, `y`, `n`, ...) is single-quoted,
//! so `powerState`'s `on` stays a string.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

use crate::artifact::{Artifact, Blob};
use crate::instance::Instance;
use crate::interface::NetworkInterface;
use crate::ipam::IPAMLease;
use crate::namespace::Namespace;
use crate::network::Network;
use crate::node::Node;
use crate::operation::ClusterOperation;

/// Every kind of the `shakenfist.io` group, in the order of [`all_crds`].
pub const KINDS: [&str; 9] = [
    "Namespace",
    "Instance",
    "Network",
    "NetworkInterface",
    "IPAMLease",
    "Artifact",
    "Blob",
    "Node",
    "ClusterOperation",
];

/// Rendering a CRD failed.
#[derive(Debug, thiserror::Error)]
pub enum CrdError {
    /// The YAML serializer refused the CRD.
    #[error("rendering CRD {name} as YAML: {source}")]
    Yaml {
        /// The CRD's `metadata.name`.
        name: String,
        /// The serializer's error.
        source: serde_norway::Error,
    },
}

/// The CRD of every kind, in the order of [`KINDS`].
pub fn all_crds() -> Vec<CustomResourceDefinition> {
    vec![
        Namespace::crd(),
        Instance::crd(),
        Network::crd(),
        NetworkInterface::crd(),
        IPAMLease::crd(),
        Artifact::crd(),
        Blob::crd(),
        Node::crd(),
        ClusterOperation::crd(),
    ]
}

/// The CRD of `kind` (e.g. `Instance`), or None for a kind not in the group.
pub fn crd_for_kind(kind: &str) -> Option<CustomResourceDefinition> {
    all_crds()
        .into_iter()
        .find(|crd| crd.spec.names.kind == kind)
}

/// One CRD as a YAML document (no leading `---`), YAML 1.1 safe.
pub fn crd_yaml(crd: &CustomResourceDefinition) -> Result<String, CrdError> {
    serde_norway::to_string(crd)
        .map(|yaml| quote_yaml11_booleans(&yaml))
        .map_err(|source| CrdError::Yaml {
            name: crd.metadata.name.clone().unwrap_or_default(),
            source,
        })
}

/// Plain scalars that YAML 1.1 reads as booleans but YAML 1.2 (serde_norway) as
/// strings, so the serializer leaves them unquoted.
/// (`true` and `false` are booleans to both, and serde_norway already quotes the
/// strings `"true"` and `"false"`; a plain `true` in its output is a real boolean.)
const YAML11_BOOLEANS: [&str; 16] = [
    "y", "Y", "yes", "Yes", "YES", "n", "N", "no", "No", "NO", "on", "On", "ON", "off", "Off",
    "OFF",
];

/// Single-quotes every plain scalar value (a `key: value` value or a `- value`
/// sequence item) that YAML 1.1 would read as a boolean, leaving the content of
/// literal and folded blocks alone. The input is serializer output: one scalar per
/// line, plain scalars never folded.
fn quote_yaml11_booleans(yaml: &str) -> String {
    let mut out = String::with_capacity(yaml.len() + 64);
    // The indentation of the line that opened the block scalar we are inside.
    let mut block_opened_at: Option<usize> = None;
    for line in yaml.split_inclusive('\n') {
        let content = line.trim_end_matches('\n');
        let indent = content.len() - content.trim_start().len();
        if let Some(opened_at) = block_opened_at {
            if content.trim().is_empty() || indent > opened_at {
                out.push_str(line);
                continue;
            }
            block_opened_at = None;
        }
        let mut rest = &content[indent..];
        let mut prefix_len = indent;
        while let Some(item) = rest.strip_prefix("- ") {
            rest = item;
            prefix_len += 2;
        }
        let value_start = match rest.find(": ") {
            Some(colon) if !rest.starts_with(['\'', '"']) => prefix_len + colon + 2,
            _ => prefix_len,
        };
        let value = &content[value_start..];
        if YAML11_BOOLEANS.contains(&value) {
            out.push_str(&content[..value_start]);
            out.push('\'');
            out.push_str(value);
            out.push('\'');
            out.push_str(&line[content.len()..]);
        } else {
            out.push_str(line);
        }
        let opener = value.trim_end_matches(['-', '+']);
        if opener == "|" || opener == ">" {
            block_opened_at = Some(indent);
        }
    }
    out
}

/// Every CRD as one multi-document YAML stream, each document preceded by `---`.
pub fn all_crds_yaml() -> Result<String, CrdError> {
    let mut out = String::new();
    for crd in all_crds() {
        out.push_str("---\n");
        out.push_str(&crd_yaml(&crd)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_and_crds_agree() {
        let kinds: Vec<String> = all_crds()
            .into_iter()
            .map(|crd| crd.spec.names.kind)
            .collect();
        assert_eq!(kinds, KINDS);
        assert!(crd_for_kind("Instance").is_some());
        assert!(crd_for_kind("Pod").is_none());
    }

    #[test]
    fn yaml11_booleans_are_quoted_outside_blocks() {
        let yaml =
            "a: on\nb:\n- off\n- - yes\nc: onward\nd: |-\n  on\n  - no\ne: 'on'\n- n\nf: true\n";
        assert_eq!(
            quote_yaml11_booleans(yaml),
            "a: 'on'\nb:\n- 'off'\n- - 'yes'\nc: onward\nd: |-\n  on\n  - no\ne: 'on'\n- 'n'\nf: true\n"
        );
    }

    #[test]
    fn power_state_enum_survives_yaml11_readers() {
        let crd = crd_for_kind("Instance").unwrap();
        let yaml = crd_yaml(&crd).unwrap();
        assert!(yaml.contains("default: 'on'"), "{yaml}");
        assert!(yaml.contains("- 'off'"), "{yaml}");
        assert!(!yaml.contains(": on\n") && !yaml.contains("- on\n"));
        let back: CustomResourceDefinition = serde_norway::from_str(&yaml).unwrap();
        assert_eq!(back, crd, "quoting must not change the document");
    }

    #[test]
    fn multi_document_yaml_has_every_crd() {
        let yaml = all_crds_yaml().unwrap();
        assert_eq!(yaml.matches("---\n").count(), KINDS.len());
        assert!(yaml.contains("name: instances.shakenfist.io"));
    }
}
