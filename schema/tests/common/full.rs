//! One fully populated object per kind: every optional field Some, every list and
//! map non-empty. Each is also valid.

use std::collections::BTreeMap;

use chrono::{DateTime, TimeZone, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::{Value, json};
use sf_schema::artifact::{ArtifactType, ArtifactVersion};
use sf_schema::instance::{
    ConfigDrive, ConsoleStatus, DesiredPowerState, DiskBus, DiskSpec, DiskType,
    InstanceNetworkSpec, InstanceState, InterfaceStatus, ObservedPowerState, VdiType, VideoModel,
    VideoSpec,
};
use sf_schema::interface::NicModel;
use sf_schema::ipam::{LeasePhase, ReservationType};
use sf_schema::node::{NodeCapacity, NodeRole, NodeState, NodeUsage, NodeVersions};
use sf_schema::operation::{ErrorReport, OperationState, OperationType, Priority};
use sf_schema::*;

/// A fixed instant.
pub fn at() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 1, 2, 3, 4, 5)
        .single()
        .expect("valid time")
}

fn meta(name: &str, namespace: Option<&str>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: namespace.map(str::to_owned),
        ..ObjectMeta::default()
    }
}

fn conditions() -> Vec<Condition> {
    vec![Condition {
        type_: "Ready".into(),
        status: ConditionStatus::True,
        reason: "Running".into(),
        message: "all good".into(),
        last_transition_time: at(),
        observed_generation: Some(3),
    }]
}

fn object_ref(kind: &str, name: &str) -> ObjectRef {
    ObjectRef {
        kind: kind.into(),
        name: name.into(),
        namespace: Some("demo".into()),
        uid: "6f1c2a0e-1111-4222-8333-444455556666".into(),
    }
}

/// Instance.
pub fn instance() -> Instance {
    Instance {
        metadata: meta("web-1", Some("demo")),
        spec: InstanceSpec {
            cpus: 2,
            memory: 2048,
            disks: vec![DiskSpec {
                size: Some(20),
                base: Some("debian-12".into()),
                bus: DiskBus::Virtio,
                disk_type: DiskType::Disk,
            }],
            networks: vec![InstanceNetworkSpec {
                network: "web".into(),
                address: Some("10.0.0.50".into()),
                macaddr: Some("02:00:00:12:34:56".into()),
                model: NicModel::Virtio,
                float: true,
            }],
            ssh_key: Some("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA me@example".into()),
            user_data: Some("I2Nsb3VkLWNvbmZpZwo=".into()),
            video: Some(VideoSpec {
                model: VideoModel::Qxl,
                memory: 65536,
                vdi: VdiType::Spice,
            }),
            uefi: true,
            secure_boot: true,
            nvram_template: Some("ovmf-vars".into()),
            config_drive: ConfigDrive::OpenstackDisk,
            power_state: DesiredPowerState::On,
            placed_on: Some("hv-1".into()),
            side_channels: vec!["sf-agent".into()],
        },
        status: Some(InstanceStatus {
            observed_generation: Some(3),
            conditions: conditions(),
            state: InstanceState::Created,
            power_state: Some(ObservedPowerState::Running),
            node: Some("hv-1".into()),
            interfaces: vec![InterfaceStatus {
                name: Some("web-1-0".into()),
                network: "web".into(),
                ipv4: Some("10.0.0.50".into()),
                macaddr: Some("02:00:00:12:34:56".into()),
                model: Some(NicModel::Virtio),
                order: 0,
                floating_address: Some("192.0.2.10".into()),
            }],
            console: Some(ConsoleStatus {
                kind: "vnc".into(),
                host: "hv-1".into(),
                port: 5900,
            }),
            error_message: Some("none yet".into()),
            intent_seq: 4,
            last_operation: Some("web-1-create-4".into()),
        }),
    }
}

/// Network.
pub fn network() -> Network {
    Network {
        metadata: meta("web", Some("demo")),
        spec: NetworkSpec {
            netblock: "10.0.0.0/24".into(),
            provide_dhcp: true,
            provide_nat: true,
            provide_dns: true,
            routed_address_count: 1,
        },
        status: Some(NetworkStatus {
            observed_generation: Some(1),
            conditions: conditions(),
            state: ResourceState::Created,
            vxid: Some(4242),
            floating_gateway: Some("192.0.2.1".into()),
            routed_addresses: vec!["192.0.2.7".into()],
            nodes: vec!["hv-1".into()],
            intent_seq: 1,
        }),
    }
}

/// NetworkInterface.
pub fn network_interface() -> NetworkInterface {
    NetworkInterface {
        metadata: meta("web-1-0", Some("demo")),
        spec: NetworkInterfaceSpec {
            instance: "web-1".into(),
            network: "web".into(),
            address: Some("10.0.0.50".into()),
            macaddr: Some("02:00:00:12:34:56".into()),
            model: NicModel::E1000,
            float: true,
            order: Some(0),
        },
        status: Some(NetworkInterfaceStatus {
            observed_generation: Some(1),
            conditions: conditions(),
            state: ResourceState::Created,
            ipv4: Some("10.0.0.50".into()),
            floating_address: Some("192.0.2.10".into()),
            macaddr: Some("02:00:00:12:34:56".into()),
            node: Some("hv-1".into()),
            intent_seq: 3,
        }),
    }
}

/// IPAMLease.
pub fn ipam_lease() -> IPAMLease {
    IPAMLease {
        metadata: meta("web-10-0-0-50", Some("demo")),
        spec: IPAMLeaseSpec {
            network: "web".into(),
            network_uid: "0d6b1c52-2222-4333-8444-555566667777".into(),
            address: "10.0.0.50".into(),
            reservation_type: ReservationType::Instance,
            owner: Some(object_ref("NetworkInterface", "web-1-0")),
            comment: Some("web-1 eth0".into()),
        },
        status: Some(IPAMLeaseStatus {
            observed_generation: Some(1),
            conditions: conditions(),
            phase: LeasePhase::Halo,
            halo_until: Some(at()),
        }),
    }
}

/// Artifact.
pub fn artifact() -> Artifact {
    Artifact {
        metadata: meta("debian-12", Some("demo")),
        spec: ArtifactSpec {
            source_url: "https://images.example/debian-12.qcow2".into(),
            artifact_type: ArtifactType::Image,
            shared: true,
            max_versions: 3,
        },
        status: Some(ArtifactStatus {
            observed_generation: Some(1),
            conditions: conditions(),
            state: ResourceState::Created,
            versions: vec![ArtifactVersion {
                index: 1,
                blob: "7a0b5f6e-3333-4444-8555-666677778888".into(),
                size: 1_073_741_824,
                created: at(),
            }],
            intent_seq: 2,
        }),
    }
}

/// Blob.
pub fn blob() -> Blob {
    Blob {
        metadata: meta("7a0b5f6e-3333-4444-8555-666677778888", None),
        spec: BlobSpec {
            owner_namespace: "demo".into(),
            size: Some(1_073_741_824),
            mime_type: Some("application/x-qcow2".into()),
            source: Some("https://images.example/debian-12.qcow2".into()),
        },
        status: Some(BlobStatus {
            observed_generation: Some(1),
            conditions: conditions(),
            state: ResourceState::Created,
            size: Some(1_073_741_824),
            checksums: BTreeMap::from([("sha256".to_owned(), "ab".repeat(32))]),
            nodes: vec!["hv-1".into()],
            reference_count: 2,
        }),
    }
}

/// Namespace.
pub fn namespace() -> Namespace {
    Namespace {
        metadata: meta("demo", None),
        spec: NamespaceSpec {
            trust: vec!["system".into()],
        },
        status: Some(NamespaceStatus {
            observed_generation: Some(1),
            conditions: conditions(),
            state: ResourceState::Created,
        }),
    }
}

/// Node.
pub fn node() -> Node {
    Node {
        metadata: meta("hv-1.example.com", None),
        spec: NodeSpec {
            schedulable: true,
            roles: vec![NodeRole::Hypervisor, NodeRole::Network],
        },
        status: Some(NodeStatus {
            observed_generation: Some(1),
            conditions: conditions(),
            state: NodeState::Created,
            fqdn: Some("hv-1.example.com".into()),
            address: Some("10.255.0.1".into()),
            capacity: Some(NodeCapacity {
                cpu_threads: 32,
                memory_mib: 131_072,
                disk_gib: 2048,
            }),
            usage: Some(NodeUsage {
                load_1m: 0.5,
                memory_used_mib: 4096,
                disk_used_gib: 100,
                disk_busy_percent: 3.5,
                instances: 2,
            }),
            versions: Some(NodeVersions {
                qemu: Some("8.2.2".into()),
                libvirt: Some("10.0.0".into()),
                agent: Some("0.1.0".into()),
            }),
            last_seen: Some(at()),
        }),
    }
}

/// ClusterOperation.
pub fn cluster_operation() -> ClusterOperation {
    ClusterOperation {
        metadata: meta("web-1-power-on-5", Some("demo")),
        spec: ClusterOperationSpec {
            operation_type: OperationType::InstancePowerOn,
            target: object_ref("Instance", "web-1"),
            node: Some("hv-1".into()),
            priority: Priority::High,
            depends_on: vec!["web-1-create-4".into()],
            payload: json!({"recreateConfigDrive": true}),
        },
        status: Some(ClusterOperationStatus {
            observed_generation: Some(1),
            conditions: conditions(),
            state: OperationState::Error,
            attempts: 2,
            claimed_by: Some("hv-1".into()),
            error_report: Some(ErrorReport {
                code: "DomainStartFailed".into(),
                message: "port clash".into(),
                retryable: true,
            }),
            result: Some(json!({"domain": "sf:web-1"})),
            started_at: Some(at()),
            completed_at: Some(at()),
        }),
    }
}

/// Every fully populated object as (kind, JSON).
pub fn all() -> Vec<(&'static str, Value)> {
    fn to_json<T: serde::Serialize>(object: &T) -> Value {
        serde_json::to_value(object).expect("serialize")
    }
    vec![
        ("Namespace", to_json(&namespace())),
        ("Instance", to_json(&instance())),
        ("Network", to_json(&network())),
        ("NetworkInterface", to_json(&network_interface())),
        ("IPAMLease", to_json(&ipam_lease())),
        ("Artifact", to_json(&artifact())),
        ("Blob", to_json(&blob())),
        ("Node", to_json(&node())),
        ("ClusterOperation", to_json(&cluster_operation())),
    ]
}
