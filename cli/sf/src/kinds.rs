//! The kinds `sf` knows: names, aliases, REST paths and table columns.
//!
//! Contract: [`lookup`] resolves what a user types (`instances`, `inst`, `Instance`,
//! `op`, ...) case-insensitively to one [`KindInfo`]; [`KindInfo::path`] builds the
//! Kubernetes-style path under `/apis/shakenfist.io/v1alpha1`. Pure data, no I/O.

/// The API group/version prefix of every resource path.
pub const API_PREFIX: &str = "/apis/shakenfist.io/v1alpha1";
/// `apiVersion` of every object.
pub const API_VERSION: &str = "shakenfist.io/v1alpha1";

/// One table column: a header and a dotted JSON path into the object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Column {
    /// The header, upper case.
    pub header: &'static str,
    /// A dotted path (`status.state`, `spec.target.name`); `age` formats
    /// `metadata.creationTimestamp`.
    pub path: &'static str,
}

const fn col(header: &'static str, path: &'static str) -> Column {
    Column { header, path }
}

/// What `sf` knows about one kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KindInfo {
    /// The kind, e.g. `Instance`.
    pub kind: &'static str,
    /// The plural used in paths.
    pub plural: &'static str,
    /// Namespaced or cluster-scoped.
    pub namespaced: bool,
    /// Other names users may type (besides kind, plural and singular).
    pub aliases: &'static [&'static str],
    /// Columns of `-o table` after NAME (AGE is always last).
    pub columns: &'static [Column],
    /// Extra columns of `-o wide`.
    pub wide: &'static [Column],
}

/// Every kind, in the order `sf api-resources` would list them.
pub const KINDS: &[KindInfo] = &[
    KindInfo {
        kind: "Instance",
        plural: "instances",
        namespaced: true,
        aliases: &["inst"],
        columns: &[
            col("STATE", "status.state"),
            col("POWER", "status.powerState"),
            col("NODE", "status.node"),
        ],
        wide: &[
            col("CPUS", "spec.cpus"),
            col("MEMORY", "spec.memory"),
            col("IPV4", "status.interfaces.0.ipv4"),
            col("WANT", "spec.powerState"),
        ],
    },
    KindInfo {
        kind: "Network",
        plural: "networks",
        namespaced: true,
        aliases: &["net"],
        columns: &[
            col("NETBLOCK", "spec.netblock"),
            col("STATE", "status.state"),
            col("VXID", "status.vxid"),
        ],
        wide: &[
            col("DHCP", "spec.provideDhcp"),
            col("NAT", "spec.provideNat"),
            col("DNS", "spec.provideDns"),
        ],
    },
    KindInfo {
        kind: "NetworkInterface",
        plural: "networkinterfaces",
        namespaced: true,
        aliases: &["iface", "netif"],
        columns: &[
            col("INSTANCE", "spec.instance"),
            col("NETWORK", "spec.network"),
            col("IPV4", "status.ipv4"),
            col("STATE", "status.state"),
        ],
        wide: &[col("MAC", "status.macaddr"), col("MODEL", "spec.model")],
    },
    KindInfo {
        kind: "Node",
        plural: "nodes",
        namespaced: false,
        aliases: &["sfnode"],
        columns: &[
            col("STATE", "status.state"),
            col("ADDRESS", "status.address"),
            col("SCHEDULABLE", "spec.schedulable"),
            col("INSTANCES", "status.usage.instances"),
        ],
        wide: &[col("LAST-SEEN", "status.lastSeen")],
    },
    KindInfo {
        kind: "ClusterOperation",
        plural: "clusteroperations",
        namespaced: true,
        aliases: &["op", "ops", "operation", "operations"],
        columns: &[
            col("TYPE", "spec.operationType"),
            col("TARGET", "spec.target.name"),
            col("NODE", "spec.node"),
            col("STATE", "status.state"),
            col("ATTEMPTS", "status.attempts"),
        ],
        wide: &[col("CLAIMED-BY", "status.claimedBy")],
    },
    KindInfo {
        kind: "IPAMLease",
        plural: "ipamleases",
        namespaced: true,
        aliases: &["lease", "leases"],
        columns: &[
            col("NETWORK", "spec.network"),
            col("ADDRESS", "spec.address"),
            col("TYPE", "spec.reservationType"),
            col("PHASE", "status.phase"),
        ],
        wide: &[
            col("OWNER", "spec.owner.name"),
            col("HALO-UNTIL", "status.haloUntil"),
        ],
    },
    KindInfo {
        kind: "Artifact",
        plural: "artifacts",
        namespaced: true,
        aliases: &["art"],
        columns: &[
            col("TYPE", "spec.artifactType"),
            col("SOURCE", "spec.sourceUrl"),
            col("STATE", "status.state"),
            col("VERSION", "status.versions.-1.index"),
        ],
        wide: &[
            col("BLOB", "status.versions.-1.blob"),
            col("MAX", "spec.maxVersions"),
        ],
    },
    KindInfo {
        kind: "Blob",
        plural: "blobs",
        namespaced: false,
        aliases: &[],
        columns: &[
            col("OWNER", "spec.ownerNamespace"),
            col("SIZE", "status.size"),
            col("STATE", "status.state"),
            col("REFS", "status.referenceCount"),
        ],
        wide: &[col("MIME", "spec.mimeType"), col("NODES", "status.nodes")],
    },
    KindInfo {
        kind: "Namespace",
        plural: "namespaces",
        namespaced: false,
        aliases: &["ns", "sfns"],
        columns: &[col("STATE", "status.state")],
        wide: &[],
    },
];

impl KindInfo {
    /// The singular (lower-case kind).
    pub fn singular(&self) -> String {
        self.kind.to_ascii_lowercase()
    }

    /// The collection path; `namespace` is ignored for cluster-scoped kinds and
    /// `None` lists across namespaces.
    pub fn collection_path(&self, namespace: Option<&str>) -> String {
        match (self.namespaced, namespace) {
            (true, Some(ns)) => format!("{API_PREFIX}/namespaces/{ns}/{}", self.plural),
            _ => format!("{API_PREFIX}/{}", self.plural),
        }
    }

    /// The path of one object.
    pub fn path(&self, namespace: &str, name: &str) -> String {
        format!("{}/{name}", self.collection_path(Some(namespace)))
    }
}

/// Resolves what a user typed to a kind (case-insensitive).
pub fn lookup(name: &str) -> Option<&'static KindInfo> {
    let wanted = name.to_ascii_lowercase();
    KINDS.iter().find(|k| {
        k.kind.eq_ignore_ascii_case(&wanted)
            || k.plural == wanted
            || k.aliases.iter().any(|a| *a == wanted)
    })
}

/// Resolves an object's `kind` field exactly (as written in YAML).
pub fn by_kind(kind: &str) -> Option<&'static KindInfo> {
    KINDS.iter().find(|k| k.kind == kind)
}

/// Every name accepted by [`lookup`], for error messages.
pub fn known_names() -> String {
    KINDS
        .iter()
        .map(|k| {
            let mut names = vec![k.plural.to_string()];
            names.extend(k.aliases.iter().map(ToString::to_string));
            names.join("/")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_resolve() {
        for (typed, kind) in [
            ("instance", "Instance"),
            ("instances", "Instance"),
            ("inst", "Instance"),
            ("Instance", "Instance"),
            ("network", "Network"),
            ("nets", "?"),
            ("net", "Network"),
            ("networkinterface", "NetworkInterface"),
            ("networkinterfaces", "NetworkInterface"),
            ("iface", "NetworkInterface"),
            ("node", "Node"),
            ("nodes", "Node"),
            ("clusteroperation", "ClusterOperation"),
            ("clusteroperations", "ClusterOperation"),
            ("op", "ClusterOperation"),
            ("ipamlease", "IPAMLease"),
            ("ipamleases", "IPAMLease"),
            ("lease", "IPAMLease"),
            ("artifact", "Artifact"),
            ("artifacts", "Artifact"),
            ("blob", "Blob"),
            ("blobs", "Blob"),
            ("namespace", "Namespace"),
            ("namespaces", "Namespace"),
            ("ns", "Namespace"),
        ] {
            assert_eq!(
                lookup(typed).map(|k| k.kind).unwrap_or("?"),
                kind,
                "{typed}"
            );
        }
    }

    #[test]
    fn paths() {
        let inst = lookup("inst").expect("instance");
        assert_eq!(
            inst.path("demo", "web-1"),
            "/apis/shakenfist.io/v1alpha1/namespaces/demo/instances/web-1"
        );
        assert_eq!(
            inst.collection_path(None),
            "/apis/shakenfist.io/v1alpha1/instances"
        );
        let node = lookup("node").expect("node");
        assert_eq!(
            node.path("demo", "hv-1"),
            "/apis/shakenfist.io/v1alpha1/nodes/hv-1"
        );
    }
}
