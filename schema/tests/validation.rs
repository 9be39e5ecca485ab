//! Every validation rule: the field path, the reason and the message, and that all
//! violations of an object are reported together.

use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use sf_schema::validation::{
    FieldError, FieldErrorReason, immutable_changes, validate_artifact, validate_blob,
    validate_cluster_operation, validate_instance, validate_ipam_lease, validate_namespace,
    validate_network, validate_network_interface, validate_node,
};
use sf_schema::{
    Artifact, Blob, ClusterOperation, IPAMLease, Instance, Namespace, Network, NetworkInterface,
    Node,
};

use FieldErrorReason::{Immutable, Invalid, NotSupported, Required, TooLong};

fn parse<T: DeserializeOwned>(kind: &str, metadata: Value, spec: Value) -> T {
    serde_json::from_value(json!({
        "apiVersion": "shakenfist.io/v1alpha1",
        "kind": kind,
        "metadata": metadata,
        "spec": spec,
    }))
    .unwrap_or_else(|e| panic!("{kind} must parse: {e}"))
}

fn instance_spec() -> Value {
    json!({
        "cpus": 2,
        "memory": 2048,
        "disks": [{"size": 20, "base": "debian-12"}],
        "networks": [{"network": "web"}, {"network": "web", "address": "10.0.0.50"}],
    })
}

/// Validates an instance whose spec is the base with `edit` applied.
fn instance_errors(edit: impl FnOnce(&mut Value)) -> Vec<FieldError> {
    let mut spec = instance_spec();
    edit(&mut spec);
    validate_instance(&parse::<Instance>(
        "Instance",
        json!({"name": "web-1", "namespace": "demo"}),
        spec,
    ))
}

/// Asserts `errors` is exactly one error with this field, reason and message.
#[track_caller]
fn assert_only(errors: &[FieldError], field: &str, reason: FieldErrorReason, message: &str) {
    assert_eq!(errors.len(), 1, "expected one error, got {errors:#?}");
    assert_eq!(errors[0].field, field);
    assert_eq!(errors[0].reason, reason, "{errors:#?}");
    assert_eq!(errors[0].message, message);
    assert_eq!(errors[0].to_string(), message, "Display is the message");
}

/// Asserts `errors` is exactly one error at `field` with this reason.
#[track_caller]
fn assert_only_at(errors: &[FieldError], field: &str, reason: FieldErrorReason) {
    assert_eq!(errors.len(), 1, "expected one error, got {errors:#?}");
    assert_eq!(errors[0].field, field, "{errors:#?}");
    assert_eq!(errors[0].reason, reason, "{errors:#?}");
    assert!(
        errors[0].message.contains(field),
        "the message names the field: {}",
        errors[0].message
    );
}

#[test]
fn base_instance_is_valid() {
    assert_eq!(instance_errors(|_| {}), vec![]);
}

#[test]
fn bad_disk_bus_has_the_documented_message() {
    let errors = instance_errors(|s| s["disks"][0]["bus"] = json!("ide"));
    assert_only(
        &errors,
        "spec.disks[0].bus",
        NotSupported,
        "invalid disk bus 'ide' at spec.disks[0].bus: expected one of virtio, sata, scsi, usb, nvme",
    );
    assert_eq!(errors[0].reason.cause_type(), "FieldValueNotSupported");
}

#[test]
fn every_instance_enum_reports_its_path_and_choices() {
    let cases: [(&str, Value, &str, &str); 8] = [
        (
            "/disks/0/type",
            json!("floppy"),
            "spec.disks[0].type",
            "invalid disk type 'floppy' at spec.disks[0].type: expected one of disk, cdrom",
        ),
        (
            "/networks/1/model",
            json!("virtio-net"),
            "spec.networks[1].model",
            "invalid nic model 'virtio-net' at spec.networks[1].model: expected one of virtio, e1000, ne2k_pci, pcnet, rtl8139",
        ),
        (
            "/configDrive",
            json!("iso"),
            "spec.configDrive",
            "invalid config drive 'iso' at spec.configDrive: expected one of openstack-disk, none",
        ),
        (
            "/powerState",
            json!("hibernate"),
            "spec.powerState",
            "invalid power state 'hibernate' at spec.powerState: expected one of on, off, paused",
        ),
        (
            "/video",
            json!({"model": "svga"}),
            "spec.video.model",
            "invalid video model 'svga' at spec.video.model: expected one of cirrus, vga, qxl, virtio",
        ),
        (
            "/video",
            json!({"vdi": "rdp"}),
            "spec.video.vdi",
            "invalid vdi type 'rdp' at spec.video.vdi: expected one of vnc, spice, spiceconcurrent",
        ),
        (
            "/disks/0/bus",
            json!("IDE"),
            "spec.disks[0].bus",
            "invalid disk bus 'IDE' at spec.disks[0].bus: expected one of virtio, sata, scsi, usb, nvme",
        ),
        (
            "/disks/0/bus",
            json!(""),
            "spec.disks[0].bus",
            "invalid disk bus '' at spec.disks[0].bus: expected one of virtio, sata, scsi, usb, nvme",
        ),
    ];
    for (pointer, value, field, message) in cases {
        let errors = instance_errors(|s| {
            let (parent, key) = pointer.rsplit_once('/').expect("pointer has a key");
            s.pointer_mut(parent)
                .expect("parent exists in the base spec")[key] = value.clone();
        });
        assert_only(&errors, field, NotSupported, message);
    }
}

#[test]
fn metadata_name_is_required_and_a_dns_label() {
    let spec = instance_spec();
    let errors = validate_instance(&parse::<Instance>("Instance", json!({}), spec.clone()));
    assert_only(
        &errors,
        "metadata.name",
        Required,
        "metadata.name is required",
    );

    let errors = validate_instance(&parse::<Instance>(
        "Instance",
        json!({"name": ""}),
        spec.clone(),
    ));
    assert_only(
        &errors,
        "metadata.name",
        Required,
        "metadata.name is required",
    );

    for bad in ["Web-1", "web_1", "web.1", "-web", "web-"] {
        let errors = validate_instance(&parse::<Instance>(
            "Instance",
            json!({"name": bad}),
            spec.clone(),
        ));
        assert_only(
            &errors,
            "metadata.name",
            Invalid,
            &format!(
                "invalid name '{bad}' at metadata.name: must be a DNS label: lowercase letters, digits and '-', starting and ending with a letter or digit"
            ),
        );
    }
    let long = "a".repeat(64);
    let errors = validate_instance(&parse::<Instance>(
        "Instance",
        json!({"name": long}),
        spec.clone(),
    ));
    assert_only(
        &errors,
        "metadata.name",
        TooLong,
        &format!("invalid name '{long}' at metadata.name: must be no more than 63 characters"),
    );
    let errors = validate_instance(&parse::<Instance>(
        "Instance",
        json!({"name": "a".repeat(63), "namespace": "Demo"}),
        spec,
    ));
    assert_only_at(&errors, "metadata.namespace", Invalid);
}

#[test]
fn label_names_for_network_interface_and_namespace_subdomains_elsewhere() {
    let network: Network = parse(
        "Network",
        json!({"name": "web.1"}),
        json!({"netblock": "10.0.0.0/24"}),
    );
    assert_only_at(&validate_network(&network), "metadata.name", Invalid);
    let interface: NetworkInterface = parse(
        "NetworkInterface",
        json!({"name": "eth.0"}),
        json!({"instance": "web-1", "network": "web"}),
    );
    assert_only_at(
        &validate_network_interface(&interface),
        "metadata.name",
        Invalid,
    );
    let namespace: Namespace = parse("Namespace", json!({"name": "a.b"}), json!({}));
    assert_only_at(&validate_namespace(&namespace), "metadata.name", Invalid);
    // Dots are fine where names are DNS subdomains.
    let node: Node = parse("Node", json!({"name": "hv-1.example.com"}), json!({}));
    assert_eq!(validate_node(&node), vec![]);
    let artifact: Artifact = parse(
        "Artifact",
        json!({"name": "debian.12"}),
        json!({"sourceUrl": "https://x/y"}),
    );
    assert_eq!(validate_artifact(&artifact), vec![]);
    let node: Node = parse("Node", json!({}), json!({}));
    assert_only(
        &validate_node(&node),
        "metadata.name",
        Required,
        "metadata.name is required",
    );
}

#[test]
fn cpus_between_1_and_64() {
    assert_only(
        &instance_errors(|s| s["cpus"] = json!(0)),
        "spec.cpus",
        Invalid,
        "invalid cpus '0' at spec.cpus: must be between 1 and 64",
    );
    assert_only(
        &instance_errors(|s| s["cpus"] = json!(65)),
        "spec.cpus",
        Invalid,
        "invalid cpus '65' at spec.cpus: must be between 1 and 64",
    );
    assert_eq!(instance_errors(|s| s["cpus"] = json!(64)), vec![]);
    assert_eq!(instance_errors(|s| s["cpus"] = json!(1)), vec![]);
}

#[test]
fn memory_at_least_128_mib() {
    assert_only(
        &instance_errors(|s| s["memory"] = json!(127)),
        "spec.memory",
        Invalid,
        "invalid memory '127' at spec.memory: must be at least 128 MiB",
    );
    assert_eq!(instance_errors(|s| s["memory"] = json!(128)), vec![]);
}

#[test]
fn at_least_one_disk() {
    let message = "spec.disks is required: an instance needs at least one disk";
    assert_only(
        &instance_errors(|s| s["disks"] = json!([])),
        "spec.disks",
        Required,
        message,
    );
    let errors = instance_errors(|s| {
        s.as_object_mut().expect("object").remove("disks");
    });
    assert_only(&errors, "spec.disks", Required, message);
}

#[test]
fn disk_size_required_without_base_and_at_least_one() {
    assert_only(
        &instance_errors(|s| s["disks"] = json!([{"bus": "virtio"}])),
        "spec.disks[0].size",
        Required,
        "spec.disks[0].size is required: a disk without a base needs a size in GiB",
    );
    assert_only(
        &instance_errors(|s| s["disks"] = json!([{"size": 8}, {"size": 0}])),
        "spec.disks[1].size",
        Invalid,
        "invalid disk size '0' at spec.disks[1].size: must be at least 1 GiB",
    );
    assert_eq!(
        instance_errors(|s| s["disks"] = json!([{"base": "debian-12"}])),
        vec![]
    );
    assert_eq!(
        instance_errors(|s| s["disks"] = json!([{"size": 1}])),
        vec![]
    );
}

#[test]
fn cdrom_needs_a_base() {
    assert_only(
        &instance_errors(|s| s["disks"] = json!([{"size": 8}, {"type": "cdrom"}])),
        "spec.disks[1].base",
        Required,
        "spec.disks[1].base is required: a cdrom needs a base image",
    );
    assert_eq!(
        instance_errors(|s| s["disks"] =
            json!([{"size": 8}, {"type": "cdrom", "base": "https://x/y.iso", "bus": "usb"}])),
        vec![]
    );
}

#[test]
fn disk_base_urls_need_a_known_scheme() {
    assert_only(
        &instance_errors(|s| s["disks"][0]["base"] = json!("ftp://x/y.qcow2")),
        "spec.disks[0].base",
        Invalid,
        "invalid disk base 'ftp://x/y.qcow2' at spec.disks[0].base: a URL base must be http://, https://, file:// or sf://",
    );
    assert_only_at(
        &instance_errors(|s| s["disks"][0]["base"] = json!("debian 12")),
        "spec.disks[0].base",
        Invalid,
    );
}

#[test]
fn secure_boot_requires_uefi() {
    assert_only(
        &instance_errors(|s| s["secureBoot"] = json!(true)),
        "spec.secureBoot",
        Invalid,
        "invalid secureBoot 'true' at spec.secureBoot: secure boot requires uefi: true",
    );
    assert_eq!(
        instance_errors(|s| {
            s["secureBoot"] = json!(true);
            s["uefi"] = json!(true);
        }),
        vec![]
    );
}

#[test]
fn instance_interface_address_and_mac() {
    assert_only(
        &instance_errors(|s| s["networks"][1]["address"] = json!("10.0.0.300")),
        "spec.networks[1].address",
        Invalid,
        "invalid address '10.0.0.300' at spec.networks[1].address: must be an IPv4 address such as 10.0.0.5",
    );
    assert_only(
        &instance_errors(|s| s["networks"][0]["macaddr"] = json!("02:00:00:12:34")),
        "spec.networks[0].macaddr",
        Invalid,
        "invalid MAC address '02:00:00:12:34' at spec.networks[0].macaddr: must be six colon-separated hex octets such as 02:00:00:12:34:56",
    );
    assert_only(
        &instance_errors(|s| s["networks"][0]["macaddr"] = json!("01:00:5e:00:00:01")),
        "spec.networks[0].macaddr",
        Invalid,
        "invalid MAC address '01:00:5e:00:00:01' at spec.networks[0].macaddr: must be unicast (the first octet must be even)",
    );
    assert_only(
        &instance_errors(|s| s["networks"][0]["network"] = json!("")),
        "spec.networks[0].network",
        Required,
        "spec.networks[0].network is required",
    );
    assert_eq!(
        instance_errors(|s| s["networks"][0]["macaddr"] = json!("02:AB:cd:00:00:01")),
        vec![]
    );
}

#[test]
fn ssh_key_looks_like_an_openssh_key() {
    assert_only(
        &instance_errors(|s| s["sshKey"] = json!("AAAAC3NzaC1lZDI1NTE5")),
        "spec.sshKey",
        Invalid,
        "invalid ssh key 'AAAAC3NzaC1lZDI1NTE5' at spec.sshKey: must be '<type> <base64 key> [comment]'",
    );
    assert_only(
        &instance_errors(|s| s["sshKey"] = json!("ssh-rsa not-base64")),
        "spec.sshKey",
        Invalid,
        "invalid ssh key 'ssh-rsa not-base64' at spec.sshKey: the key must be base64 (an OpenSSH key starts with AAAA)",
    );
    assert_only_at(
        &instance_errors(|s| s["sshKey"] = json!("rsa AAAAB3NzaC1yc2E")),
        "spec.sshKey",
        Invalid,
    );
    assert_eq!(
        instance_errors(|s| s["sshKey"] = json!("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI user@host")),
        vec![]
    );
}

#[test]
fn user_data_is_base64_of_at_most_64_kib() {
    assert_only(
        &instance_errors(|s| s["userData"] = json!("#cloud-config")),
        "spec.userData",
        Invalid,
        "invalid user data '#cloud-config' at spec.userData: must be base64",
    );
    // 65 540 characters of base64 decode to 49 155 bytes: fine; 87 384 to 65 538: too long.
    assert_eq!(
        instance_errors(|s| s["userData"] = json!("QUFB".repeat(16_385))),
        vec![]
    );
    let errors = instance_errors(|s| s["userData"] = json!("QUFB".repeat(21_846)));
    assert_only_at(&errors, "spec.userData", TooLong);
    assert!(
        errors[0]
            .message
            .ends_with("decodes to 65538 bytes, more than 65536"),
        "{}",
        errors[0].message
    );
    assert!(errors[0].message.len() < 200, "long values are abbreviated");
}

#[test]
fn other_instance_fields() {
    assert_only_at(
        &instance_errors(|s| s["placedOn"] = json!("HV_1")),
        "spec.placedOn",
        Invalid,
    );
    assert_only_at(
        &instance_errors(|s| s["sideChannels"] = json!(["ok", "Not Ok"])),
        "spec.sideChannels[1]",
        Invalid,
    );
    assert_only_at(
        &instance_errors(|s| s["video"] = json!({"memory": 0})),
        "spec.video.memory",
        Invalid,
    );
    assert_only_at(
        &instance_errors(|s| s["nvramTemplate"] = json!("")),
        "spec.nvramTemplate",
        Required,
    );
}

#[test]
fn an_instance_with_many_errors_reports_them_all() {
    let instance: Instance = parse(
        "Instance",
        json!({"name": "Bad_Name"}),
        json!({
            "cpus": 0,
            "memory": 64,
            "disks": [{"bus": "ide", "type": "floppy"}, {"type": "cdrom"}],
            "networks": [{"network": "web", "address": "not-an-ip", "macaddr": "zz", "model": "tulip"}],
            "sshKey": "garbage",
            "userData": "***",
            "secureBoot": true,
            "configDrive": "iso",
            "powerState": "hibernate",
        }),
    );
    let errors = validate_instance(&instance);
    let got: Vec<(&str, FieldErrorReason)> = errors
        .iter()
        .map(|e| (e.field.as_str(), e.reason))
        .collect();
    assert_eq!(
        got,
        vec![
            ("metadata.name", Invalid),
            ("spec.cpus", Invalid),
            ("spec.memory", Invalid),
            ("spec.disks[0].bus", NotSupported),
            ("spec.disks[0].type", NotSupported),
            ("spec.disks[1].base", Required),
            ("spec.networks[0].address", Invalid),
            ("spec.networks[0].macaddr", Invalid),
            ("spec.networks[0].model", NotSupported),
            ("spec.sshKey", Invalid),
            ("spec.userData", Invalid),
            ("spec.secureBoot", Invalid),
            ("spec.configDrive", NotSupported),
            ("spec.powerState", NotSupported),
        ]
    );
}

#[test]
fn routed_address_count_is_at_most_64() {
    let check = |count: u32| {
        validate_network(&parse::<Network>(
            "Network",
            json!({"name": "web"}),
            json!({"netblock": "10.0.0.0/24", "routedAddressCount": count}),
        ))
    };
    assert_eq!(check(0), vec![]);
    assert_eq!(check(64), vec![]);
    assert_only(
        &check(65),
        "spec.routedAddressCount",
        Invalid,
        "invalid count '65' at spec.routedAddressCount: at most 64",
    );
}

#[test]
fn netblock_is_an_ipv4_cidr_with_prefix_8_to_30_and_no_host_bits() {
    let check = |netblock: &str| {
        validate_network(&parse::<Network>(
            "Network",
            json!({"name": "web"}),
            json!({"netblock": netblock}),
        ))
    };
    assert_eq!(check("10.0.0.0/24"), vec![]);
    assert_eq!(check("10.0.0.0/8"), vec![]);
    assert_eq!(check("192.168.0.4/30"), vec![]);
    assert_only(
        &check("10.0.0.1/24"),
        "spec.netblock",
        Invalid,
        "invalid netblock '10.0.0.1/24' at spec.netblock: host bits are set; the network address is 10.0.0.0/24",
    );
    assert_only(
        &check("10.0.0.0/31"),
        "spec.netblock",
        Invalid,
        "invalid netblock '10.0.0.0/31' at spec.netblock: the prefix length must be between 8 and 30",
    );
    assert_only(
        &check("10.0.0.0/7"),
        "spec.netblock",
        Invalid,
        "invalid netblock '10.0.0.0/7' at spec.netblock: the prefix length must be between 8 and 30",
    );
    assert_only(
        &check("10.0.0.0"),
        "spec.netblock",
        Invalid,
        "invalid netblock '10.0.0.0' at spec.netblock: must be an IPv4 CIDR such as 10.0.0.0/24",
    );
    assert_only(
        &check("10.0.0/24"),
        "spec.netblock",
        Invalid,
        "invalid netblock '10.0.0/24' at spec.netblock: '10.0.0' is not an IPv4 address",
    );
    assert_only(
        &check("fd00::/64"),
        "spec.netblock",
        Invalid,
        "invalid netblock 'fd00::/64' at spec.netblock: 'fd00::' is not an IPv4 address",
    );
    assert_only(
        &check(""),
        "spec.netblock",
        Required,
        "spec.netblock is required: an IPv4 CIDR such as 10.0.0.0/24",
    );
}

#[test]
fn network_interface_rules() {
    let check = |spec: Value| {
        validate_network_interface(&parse::<NetworkInterface>(
            "NetworkInterface",
            json!({"name": "web-1-0"}),
            spec,
        ))
    };
    assert_eq!(
        check(
            json!({"instance": "web-1", "network": "web", "address": "10.0.0.5", "macaddr": "02:00:00:00:00:01"})
        ),
        vec![]
    );
    assert_only(
        &check(json!({"instance": "web-1", "network": "web", "address": "10.0.0"})),
        "spec.address",
        Invalid,
        "invalid address '10.0.0' at spec.address: must be an IPv4 address such as 10.0.0.5",
    );
    assert_only_at(
        &check(json!({"instance": "web-1", "network": "web", "macaddr": "03:00:00:00:00:01"})),
        "spec.macaddr",
        Invalid,
    );
    assert_only(
        &check(json!({"instance": "web-1", "network": "web", "model": "tulip"})),
        "spec.model",
        NotSupported,
        "invalid nic model 'tulip' at spec.model: expected one of virtio, e1000, ne2k_pci, pcnet, rtl8139",
    );
    assert_only(
        &check(json!({"instance": "", "network": "web"})),
        "spec.instance",
        Required,
        "spec.instance is required",
    );
}

#[test]
fn artifact_rules() {
    let check = |spec: Value| {
        validate_artifact(&parse::<Artifact>(
            "Artifact",
            json!({"name": "debian-12"}),
            spec,
        ))
    };
    for good in [
        "https://x.example/a.qcow2",
        "http://x/a",
        "file:///srv/a.qcow2",
    ] {
        assert_eq!(check(json!({"sourceUrl": good})), vec![], "{good}");
    }
    assert_only(
        &check(json!({"sourceUrl": "ftp://x/a"})),
        "spec.sourceUrl",
        Invalid,
        "invalid source URL 'ftp://x/a' at spec.sourceUrl: expected an http://, https:// or file:// URL",
    );
    assert_only_at(
        &check(json!({"sourceUrl": "debian-12"})),
        "spec.sourceUrl",
        Invalid,
    );
    assert_only_at(
        &check(json!({"sourceUrl": "https://"})),
        "spec.sourceUrl",
        Invalid,
    );
    assert_only_at(
        &check(json!({"sourceUrl": "sf://instance/x/vda"})),
        "spec.sourceUrl",
        Invalid,
    );
    assert_eq!(
        check(json!({"sourceUrl": "sf://instance/x/vda", "artifactType": "snapshot"})),
        vec![]
    );
    assert_only(
        &check(json!({"sourceUrl": ""})),
        "spec.sourceUrl",
        Required,
        "spec.sourceUrl is required: an http://, https:// or file:// URL",
    );
    assert_only(
        &check(json!({"sourceUrl": "https://x/a", "maxVersions": 0})),
        "spec.maxVersions",
        Invalid,
        "invalid maxVersions '0' at spec.maxVersions: must be at least 1",
    );
    assert_only(
        &check(json!({"sourceUrl": "https://x/a", "artifactType": "iso"})),
        "spec.artifactType",
        NotSupported,
        "invalid artifact type 'iso' at spec.artifactType: expected one of image, snapshot, label, other",
    );
    let artifact: Artifact = parse(
        "Artifact",
        json!({"name": "a"}),
        json!({"sourceUrl": "https://x/a"}),
    );
    assert_eq!(artifact.spec.max_versions, 3, "max_versions defaults to 3");
}

#[test]
fn blob_namespace_node_rules() {
    let blob: Blob = parse(
        "Blob",
        json!({"name": "7a0b5f6e-3333-4444-8555-666677778888"}),
        json!({"ownerNamespace": ""}),
    );
    assert_only(
        &validate_blob(&blob),
        "spec.ownerNamespace",
        Required,
        "spec.ownerNamespace is required",
    );
    let namespace: Namespace = parse(
        "Namespace",
        json!({"name": "demo"}),
        json!({"trust": ["system", "Other_NS"]}),
    );
    assert_only_at(&validate_namespace(&namespace), "spec.trust[1]", Invalid);
    let node: Node = parse(
        "Node",
        json!({"name": "hv-1"}),
        json!({"roles": ["hypervisor", "gpu"]}),
    );
    assert_only(
        &validate_node(&node),
        "spec.roles[1]",
        NotSupported,
        "invalid node role 'gpu' at spec.roles[1]: expected one of hypervisor, network, storage, api",
    );
}

#[test]
fn ipam_lease_rules() {
    let lease: IPAMLease = parse(
        "IPAMLease",
        json!({"name": "web-10-0-0-5"}),
        json!({"network": "web", "networkUid": "", "address": "10.0.0.256", "reservationType": "dhcp",
               "owner": {"kind": "", "name": "web-1-0", "uid": "u"}}),
    );
    let fields: Vec<(String, FieldErrorReason)> = validate_ipam_lease(&lease)
        .into_iter()
        .map(|e| (e.field, e.reason))
        .collect();
    assert_eq!(
        fields,
        vec![
            ("spec.networkUid".to_owned(), Required),
            ("spec.address".to_owned(), Invalid),
            ("spec.reservationType".to_owned(), NotSupported),
            ("spec.owner.kind".to_owned(), Required),
        ]
    );
}

#[test]
fn cluster_operation_rules() {
    let operation: ClusterOperation = parse(
        "ClusterOperation",
        json!({"name": "web-1-create-1"}),
        json!({
            "operationType": "instance_explode",
            "target": {"kind": "Instance", "name": "", "uid": "u"},
            "priority": "urgent",
            "dependsOn": ["web-1-create-1", "ok-op"],
            "payload": [1, 2],
        }),
    );
    let errors = validate_cluster_operation(&operation);
    let fields: Vec<(&str, FieldErrorReason)> = errors
        .iter()
        .map(|e| (e.field.as_str(), e.reason))
        .collect();
    assert_eq!(
        fields,
        vec![
            ("spec.operationType", NotSupported),
            ("spec.target.name", Required),
            ("spec.priority", NotSupported),
            ("spec.dependsOn[0]", Invalid),
            ("spec.payload", Invalid),
        ]
    );
    assert_eq!(
        errors[3].message,
        "invalid operation name 'web-1-create-1' at spec.dependsOn[0]: an operation cannot depend on itself"
    );
    assert_eq!(
        errors[4].message,
        "invalid payload '[1,2]' at spec.payload: must be a JSON object"
    );
    assert!(errors[0].message.starts_with("invalid operation type 'instance_explode' at spec.operationType: expected one of instance_create, "));
    let ok: ClusterOperation = parse(
        "ClusterOperation",
        json!({"name": "web-1-create-1"}),
        json!({"operationType": "instance_create", "target": {"kind": "Instance", "name": "web-1", "uid": "u"}}),
    );
    assert_eq!(validate_cluster_operation(&ok), vec![]);
    assert_eq!(
        ok.spec.payload,
        json!({}),
        "payload defaults to an empty object"
    );
}

#[test]
fn immutable_instance_fields() {
    let old = instance_spec();
    let mut new = old.clone();
    new["cpus"] = json!(4);
    new["networks"] = json!([{"network": "web"}]);
    new["sshKey"] = json!("ssh-ed25519 AAAAC3 x"); // mutable
    let errors = immutable_changes("Instance", &old, &new);
    let fields: Vec<(&str, FieldErrorReason)> = errors
        .iter()
        .map(|e| (e.field.as_str(), e.reason))
        .collect();
    assert_eq!(
        fields,
        vec![("spec.cpus", Immutable), ("spec.networks", Immutable)]
    );
    assert_eq!(errors[0].message, "spec.cpus is immutable");
    assert_eq!(errors[0].reason.cause_type(), "FieldValueForbidden");

    // Writing out a default is no change.
    let mut explicit = old.clone();
    explicit["disks"][0]["bus"] = json!("virtio");
    explicit["disks"][0]["type"] = json!("disk");
    assert_eq!(immutable_changes("Instance", &old, &explicit), vec![]);

    let mut more_memory = old.clone();
    more_memory["memory"] = json!(4096);
    more_memory["disks"][0]["size"] = json!(40);
    let fields: Vec<String> = immutable_changes("Instance", &old, &more_memory)
        .into_iter()
        .map(|e| e.field)
        .collect();
    assert_eq!(fields, ["spec.memory", "spec.disks"]);

    // Specs that do not parse are compared as JSON.
    let broken = json!({"cpus": "two", "memory": 2048});
    let fields: Vec<String> = immutable_changes("Instance", &old, &broken)
        .into_iter()
        .map(|e| e.field)
        .collect();
    assert_eq!(fields, ["spec.cpus", "spec.disks", "spec.networks"]);
}

#[test]
fn immutable_network_netblock_only() {
    let old = json!({"netblock": "10.0.0.0/24", "provideDhcp": true});
    let toggled = json!({"netblock": "10.0.0.0/24", "provideDhcp": false, "provideNat": true});
    assert_eq!(immutable_changes("Network", &old, &toggled), vec![]);
    let moved = json!({"netblock": "10.1.0.0/24", "provideDhcp": true});
    let errors = immutable_changes("Network", &old, &moved);
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].field, "spec.netblock");
    assert_eq!(errors[0].reason, Immutable);
    assert_eq!(errors[0].message, "spec.netblock is immutable");
    assert_eq!(
        immutable_changes("Artifact", &old, &moved),
        vec![],
        "other kinds have no immutable fields"
    );
}
