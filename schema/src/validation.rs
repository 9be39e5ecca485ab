//! Validation of user-written objects: pure functions returning EVERY violation.
//!
//! Contract:
//! - `validate_<kind>` checks `metadata.name` (and a namespaced object's
//!   `metadata.namespace`) and the `spec`; it never stops at the first error and
//!   never looks at `status` (tenants cannot write it).
//! - Each [`FieldError`] names its field by JSON path with the camelCase names
//!   (`spec.disks[0].bus`, `spec.secureBoot`) and maps to a Kubernetes cause type
//!   through [`FieldErrorReason::cause_type`].
//! - Messages follow one pattern: `invalid <what> '<value>' at <path>: <why>`, with
//!   `<why>` = `expected one of a, b, c` for a value outside a string enum;
//!   `<path> is required[: why]` for a missing value; `<path> is immutable` for a
//!   change to an immutable field ([`immutable_changes`]).
//! - No I/O: checks that need other objects (does the network exist, is the
//!   address inside it) belong to the API and the controllers.

use std::fmt;
use std::net::Ipv4Addr;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::artifact::{Artifact, ArtifactType, Blob};
use crate::common::{ObjectRef, StringEnum};
use crate::instance::{DiskType, Instance, InstanceSpec};
use crate::interface::NetworkInterface;
use crate::ipam::IPAMLease;
use crate::namespace::Namespace;
use crate::network::{Network, NetworkSpec};
use crate::node::Node;
use crate::operation::ClusterOperation;

/// The most virtual CPUs an instance may have.
pub const MAX_CPUS: u32 = 64;
/// The least memory an instance may have, in MiB.
pub const MIN_MEMORY_MIB: u64 = 128;
/// The largest user data, decoded, in bytes.
pub const MAX_USER_DATA_BYTES: usize = 64 * 1024;
/// The shortest and longest netblock prefixes.
pub const NETBLOCK_PREFIX_RANGE: std::ops::RangeInclusive<u8> = 8..=30;
/// The longest DNS label (RFC 1123).
pub const DNS_LABEL_MAX_LEN: usize = 63;
/// The longest DNS subdomain (RFC 1123).
pub const DNS_SUBDOMAIN_MAX_LEN: usize = 253;
/// The longest disk base reference.
pub const MAX_BASE_LEN: usize = 2048;

/// Why a field is invalid; maps to the Kubernetes `StatusCause` type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FieldErrorReason {
    /// A required value is missing (`FieldValueRequired`).
    Required,
    /// The value is malformed or out of range (`FieldValueInvalid`).
    Invalid,
    /// The value is not one of the allowed values (`FieldValueNotSupported`).
    NotSupported,
    /// The value is too long (`FieldValueTooLong`).
    TooLong,
    /// The field may not change after create (`FieldValueForbidden`).
    Immutable,
}

impl FieldErrorReason {
    /// The Kubernetes cause type, for `Status.details.causes[].reason`.
    pub fn cause_type(self) -> &'static str {
        match self {
            Self::Required => "FieldValueRequired",
            Self::Invalid => "FieldValueInvalid",
            Self::NotSupported => "FieldValueNotSupported",
            Self::TooLong => "FieldValueTooLong",
            Self::Immutable => "FieldValueForbidden",
        }
    }
}

/// One violation, at one field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// The JSON path of the field, e.g. `spec.disks[0].bus`.
    pub field: String,
    /// The kind of violation.
    pub reason: FieldErrorReason,
    /// The full human-readable message (it names the field too).
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for FieldError {}

/// Collects errors; every check appends and carries on.
#[derive(Default)]
struct Errors(Vec<FieldError>);

impl Errors {
    fn push(&mut self, field: &str, reason: FieldErrorReason, message: String) {
        self.0.push(FieldError {
            field: field.to_owned(),
            reason,
            message,
        });
    }

    fn required(&mut self, field: &str, why: &str) {
        let message = if why.is_empty() {
            format!("{field} is required")
        } else {
            format!("{field} is required: {why}")
        };
        self.push(field, FieldErrorReason::Required, message);
    }

    fn invalid(&mut self, field: &str, what: &str, value: impl fmt::Display, why: &str) {
        self.push(
            field,
            FieldErrorReason::Invalid,
            format!("invalid {what} '{value}' at {field}: {why}"),
        );
    }

    fn too_long(&mut self, field: &str, what: &str, value: impl fmt::Display, why: &str) {
        self.push(
            field,
            FieldErrorReason::TooLong,
            format!("invalid {what} '{value}' at {field}: {why}"),
        );
    }

    /// Rejects an `Other` value of a string enum.
    fn known<E: StringEnum>(&mut self, field: &str, value: &E) {
        if !value.is_known_value() {
            self.push(
                field,
                FieldErrorReason::NotSupported,
                format!(
                    "invalid {} '{}' at {field}: expected one of {}",
                    E::WHAT,
                    value.wire(),
                    E::known_values().join(", ")
                ),
            );
        }
    }

    /// A required, non-empty DNS label (names, namespaces, references).
    fn dns_label(&mut self, field: &str, what: &str, value: &str) {
        if value.is_empty() {
            self.required(field, "");
        } else if value.len() > DNS_LABEL_MAX_LEN {
            self.too_long(
                field,
                what,
                value,
                &format!("must be no more than {DNS_LABEL_MAX_LEN} characters"),
            );
        } else if !is_dns_label(value) {
            self.invalid(
                field,
                what,
                value,
                "must be a DNS label: lowercase letters, digits and '-', starting and ending with a letter or digit",
            );
        }
    }

    /// A required, non-empty DNS subdomain.
    fn dns_subdomain(&mut self, field: &str, what: &str, value: &str) {
        if value.is_empty() {
            self.required(field, "");
        } else if value.len() > DNS_SUBDOMAIN_MAX_LEN {
            self.too_long(
                field,
                what,
                value,
                &format!("must be no more than {DNS_SUBDOMAIN_MAX_LEN} characters"),
            );
        } else if !is_dns_subdomain(value) {
            self.invalid(
                field,
                what,
                value,
                "must be a DNS subdomain: dot-separated DNS labels of lowercase letters, digits and '-'",
            );
        }
    }

    fn ipv4(&mut self, field: &str, what: &str, value: &str) {
        if value.parse::<Ipv4Addr>().is_err() {
            self.invalid(
                field,
                what,
                value,
                "must be an IPv4 address such as 10.0.0.5",
            );
        }
    }

    fn macaddr(&mut self, field: &str, value: &str) {
        match parse_mac(value) {
            None => self.invalid(
                field,
                "MAC address",
                value,
                "must be six colon-separated hex octets such as 02:00:00:12:34:56",
            ),
            Some(octets) if octets[0] & 1 == 1 => self.invalid(
                field,
                "MAC address",
                value,
                "must be unicast (the first octet must be even)",
            ),
            Some(_) => {}
        }
    }

    fn object_ref(&mut self, field: &str, reference: &ObjectRef) {
        if reference.kind.is_empty() {
            self.required(&format!("{field}.kind"), "");
        }
        self.dns_subdomain(&format!("{field}.name"), "name", &reference.name);
        if let Some(namespace) = &reference.namespace {
            self.dns_label(&format!("{field}.namespace"), "namespace", namespace);
        }
        if reference.uid.is_empty() {
            self.required(&format!("{field}.uid"), "");
        }
    }
}

/// How `metadata.name` is checked.
#[derive(Clone, Copy)]
enum NameRule {
    Label,
    Subdomain,
}

fn check_metadata(errors: &mut Errors, metadata: &ObjectMeta, rule: NameRule, namespaced: bool) {
    match metadata.name.as_deref() {
        None | Some("") => errors.required("metadata.name", ""),
        Some(name) => match rule {
            NameRule::Label => errors.dns_label("metadata.name", "name", name),
            NameRule::Subdomain => errors.dns_subdomain("metadata.name", "name", name),
        },
    }
    if namespaced && let Some(namespace) = metadata.namespace.as_deref().filter(|ns| !ns.is_empty())
    {
        errors.dns_label("metadata.namespace", "namespace", namespace);
    }
}

/// Whether `value` is an RFC 1123 DNS label: 1..=63 of lowercase letters, digits
/// and '-', starting and ending with a letter or digit.
pub fn is_dns_label(value: &str) -> bool {
    let bytes = value.as_bytes();
    let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    match (bytes.first(), bytes.last()) {
        (Some(first), Some(last)) => {
            bytes.len() <= DNS_LABEL_MAX_LEN
                && alnum(first)
                && alnum(last)
                && bytes.iter().all(|b| alnum(b) || *b == b'-')
        }
        _ => false,
    }
}

/// Whether `value` is an RFC 1123 DNS subdomain: at most 253 characters of
/// dot-separated DNS labels.
pub fn is_dns_subdomain(value: &str) -> bool {
    !value.is_empty() && value.len() <= DNS_SUBDOMAIN_MAX_LEN && value.split('.').all(is_dns_label)
}

/// Parses an IPv4 netblock (`10.0.0.0/24`): the prefix must be in 8..=30 and the
/// host bits zero. Returns the network address and prefix length, or why not.
pub fn parse_netblock(value: &str) -> Result<(Ipv4Addr, u8), String> {
    let Some((address, prefix)) = value.split_once('/') else {
        return Err("must be an IPv4 CIDR such as 10.0.0.0/24".to_owned());
    };
    let address: Ipv4Addr = address
        .parse()
        .map_err(|_| format!("'{address}' is not an IPv4 address"))?;
    if prefix.is_empty() || prefix.len() > 2 || !prefix.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("'{prefix}' is not a prefix length"));
    }
    let prefix: u8 = prefix
        .parse()
        .map_err(|_| format!("'{prefix}' is not a prefix length"))?;
    if !NETBLOCK_PREFIX_RANGE.contains(&prefix) {
        return Err(format!(
            "the prefix length must be between {} and {}",
            NETBLOCK_PREFIX_RANGE.start(),
            NETBLOCK_PREFIX_RANGE.end()
        ));
    }
    let mask = u32::MAX << (32 - u32::from(prefix));
    let bits = u32::from(address);
    if bits & !mask != 0 {
        return Err(format!(
            "host bits are set; the network address is {}/{prefix}",
            Ipv4Addr::from(bits & mask)
        ));
    }
    Ok((address, prefix))
}

/// Parses `xx:xx:xx:xx:xx:xx` (hex, either case) into its six octets.
pub fn parse_mac(value: &str) -> Option<[u8; 6]> {
    let mut octets = [0u8; 6];
    let mut parts = value.split(':');
    for octet in &mut octets {
        let part = parts.next()?;
        if part.len() != 2 {
            return None;
        }
        *octet = u8::from_str_radix(part, 16).ok()?;
    }
    if parts.next().is_some() {
        return None;
    }
    Some(octets)
}

/// The decoded length of standard, padded base64 (ASCII whitespace ignored), or
/// None when `value` is not such base64.
pub fn base64_decoded_len(value: &str) -> Option<usize> {
    let bytes: Vec<u8> = value.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    if !bytes.len().is_multiple_of(4) {
        return None;
    }
    let padding = bytes.iter().rev().take_while(|b| **b == b'=').count();
    if padding > 2 {
        return None;
    }
    let body = &bytes[..bytes.len() - padding];
    if !body
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/')
    {
        return None;
    }
    Some(bytes.len() / 4 * 3 - padding)
}

/// Why `key` does not look like an OpenSSH public key (`<type> <base64> [comment]`),
/// or None. The key blob is not decoded: every OpenSSH key blob starts with a
/// four-byte length below 2^24, so its base64 starts with `AAAA`.
fn ssh_key_problem(key: &str) -> Option<&'static str> {
    if key.contains(['\n', '\r']) {
        return Some("must be a single key on one line");
    }
    let mut parts = key.split_whitespace();
    let (Some(key_type), Some(blob)) = (parts.next(), parts.next()) else {
        return Some("must be '<type> <base64 key> [comment]'");
    };
    let known_type = ["ssh-", "ecdsa-sha2-", "sk-"]
        .iter()
        .any(|prefix| key_type.starts_with(prefix));
    if !known_type {
        return Some("the key type must be ssh-*, ecdsa-sha2-* or sk-*");
    }
    if !blob.starts_with("AAAA") {
        return Some("the key must be base64 (an OpenSSH key starts with AAAA)");
    }
    None
}

/// The scheme of `url` when it has the form `<scheme>://<rest>` with a non-empty
/// rest and no whitespace.
fn url_scheme(url: &str) -> Option<&str> {
    let (scheme, rest) = url.split_once("://")?;
    (!scheme.is_empty() && !rest.is_empty() && !url.contains(char::is_whitespace)).then_some(scheme)
}

/// Validates an Instance: name (DNS label), cpus, memory, disks, networks, ssh key,
/// user data, video, boot and the enums.
pub fn validate_instance(instance: &Instance) -> Vec<FieldError> {
    let mut errors = Errors::default();
    check_metadata(&mut errors, &instance.metadata, NameRule::Label, true);
    check_instance_spec(&mut errors, &instance.spec);
    errors.0
}

fn check_instance_spec(errors: &mut Errors, spec: &InstanceSpec) {
    if !(1..=MAX_CPUS).contains(&spec.cpus) {
        errors.invalid(
            "spec.cpus",
            "cpus",
            spec.cpus,
            &format!("must be between 1 and {MAX_CPUS}"),
        );
    }
    if spec.memory < MIN_MEMORY_MIB {
        errors.invalid(
            "spec.memory",
            "memory",
            spec.memory,
            &format!("must be at least {MIN_MEMORY_MIB} MiB"),
        );
    }
    if spec.disks.is_empty() {
        errors.required("spec.disks", "an instance needs at least one disk");
    }
    for (i, disk) in spec.disks.iter().enumerate() {
        let path = format!("spec.disks[{i}]");
        errors.known(&format!("{path}.bus"), &disk.bus);
        errors.known(&format!("{path}.type"), &disk.disk_type);
        let base = disk.base.as_deref().filter(|b| !b.is_empty());
        if let Some(base) = base {
            check_disk_base(errors, &format!("{path}.base"), base);
        }
        match disk.disk_type {
            DiskType::Cdrom => {
                if base.is_none() {
                    errors.required(&format!("{path}.base"), "a cdrom needs a base image");
                }
            }
            DiskType::Disk => match disk.size {
                None if base.is_none() => errors.required(
                    &format!("{path}.size"),
                    "a disk without a base needs a size in GiB",
                ),
                Some(0) => errors.invalid(
                    &format!("{path}.size"),
                    "disk size",
                    0,
                    "must be at least 1 GiB",
                ),
                _ => {}
            },
            DiskType::Other(_) => {}
        }
    }
    for (i, network) in spec.networks.iter().enumerate() {
        let path = format!("spec.networks[{i}]");
        errors.dns_label(&format!("{path}.network"), "network", &network.network);
        if let Some(address) = &network.address {
            errors.ipv4(&format!("{path}.address"), "address", address);
        }
        if let Some(macaddr) = &network.macaddr {
            errors.macaddr(&format!("{path}.macaddr"), macaddr);
        }
        errors.known(&format!("{path}.model"), &network.model);
    }
    if let Some(key) = &spec.ssh_key
        && let Some(why) = ssh_key_problem(key)
    {
        errors.invalid("spec.sshKey", "ssh key", abbreviate(key), why);
    }
    if let Some(user_data) = &spec.user_data {
        match base64_decoded_len(user_data) {
            None => errors.invalid(
                "spec.userData",
                "user data",
                abbreviate(user_data),
                "must be base64",
            ),
            Some(len) if len > MAX_USER_DATA_BYTES => errors.too_long(
                "spec.userData",
                "user data",
                abbreviate(user_data),
                &format!("decodes to {len} bytes, more than {MAX_USER_DATA_BYTES}"),
            ),
            Some(_) => {}
        }
    }
    if let Some(video) = &spec.video {
        errors.known("spec.video.model", &video.model);
        errors.known("spec.video.vdi", &video.vdi);
        if video.memory == 0 {
            errors.invalid(
                "spec.video.memory",
                "video memory",
                0,
                "must be at least 1 KiB",
            );
        }
    }
    if spec.secure_boot && !spec.uefi {
        errors.invalid(
            "spec.secureBoot",
            "secureBoot",
            true,
            "secure boot requires uefi: true",
        );
    }
    if let Some(template) = &spec.nvram_template
        && template.is_empty()
    {
        errors.required("spec.nvramTemplate", "omit it or name an Artifact");
    }
    errors.known("spec.configDrive", &spec.config_drive);
    errors.known("spec.powerState", &spec.power_state);
    if let Some(node) = &spec.placed_on {
        errors.dns_subdomain("spec.placedOn", "node name", node);
    }
    for (i, channel) in spec.side_channels.iter().enumerate() {
        errors.dns_label(&format!("spec.sideChannels[{i}]"), "side channel", channel);
    }
}

fn check_disk_base(errors: &mut Errors, path: &str, base: &str) {
    if base.len() > MAX_BASE_LEN {
        errors.too_long(
            path,
            "disk base",
            abbreviate(base),
            &format!("must be no more than {MAX_BASE_LEN} characters"),
        );
    } else if base.contains(char::is_whitespace) {
        errors.invalid(path, "disk base", base, "must not contain whitespace");
    } else if base.contains("://") {
        match url_scheme(base) {
            Some("http" | "https" | "file" | "sf") => {}
            _ => errors.invalid(
                path,
                "disk base",
                base,
                "a URL base must be http://, https://, file:// or sf://",
            ),
        }
    }
}

/// Shortens long values quoted in messages.
fn abbreviate(value: &str) -> String {
    const MAX: usize = 40;
    match value.char_indices().nth(MAX) {
        Some((end, _)) => format!("{}...", &value[..end]),
        None => value.to_owned(),
    }
}

/// Validates a Network: name (DNS label) and netblock.
pub fn validate_network(network: &Network) -> Vec<FieldError> {
    let mut errors = Errors::default();
    check_metadata(&mut errors, &network.metadata, NameRule::Label, true);
    if network.spec.netblock.is_empty() {
        errors.required("spec.netblock", "an IPv4 CIDR such as 10.0.0.0/24");
    } else if let Err(why) = parse_netblock(&network.spec.netblock) {
        errors.invalid("spec.netblock", "netblock", &network.spec.netblock, &why);
    }
    let count = network.spec.routed_address_count;
    if count > crate::network::MAX_ROUTED_ADDRESSES {
        errors.invalid(
            "spec.routedAddressCount",
            "count",
            count,
            &format!("at most {}", crate::network::MAX_ROUTED_ADDRESSES),
        );
    }
    errors.0
}

/// Validates a NetworkInterface: name (DNS label), instance, network, address,
/// MAC and model.
pub fn validate_network_interface(interface: &NetworkInterface) -> Vec<FieldError> {
    let mut errors = Errors::default();
    check_metadata(&mut errors, &interface.metadata, NameRule::Label, true);
    let spec = &interface.spec;
    errors.dns_label("spec.instance", "instance", &spec.instance);
    errors.dns_label("spec.network", "network", &spec.network);
    if let Some(address) = &spec.address {
        errors.ipv4("spec.address", "address", address);
    }
    if let Some(macaddr) = &spec.macaddr {
        errors.macaddr("spec.macaddr", macaddr);
    }
    errors.known("spec.model", &spec.model);
    errors.0
}

/// Validates an IPAMLease (as written by sf-database): name, network, address,
/// reservation type and owner.
pub fn validate_ipam_lease(lease: &IPAMLease) -> Vec<FieldError> {
    let mut errors = Errors::default();
    check_metadata(&mut errors, &lease.metadata, NameRule::Subdomain, true);
    let spec = &lease.spec;
    errors.dns_label("spec.network", "network", &spec.network);
    if spec.network_uid.is_empty() {
        errors.required("spec.networkUid", "");
    }
    errors.ipv4("spec.address", "address", &spec.address);
    errors.known("spec.reservationType", &spec.reservation_type);
    if let Some(owner) = &spec.owner {
        errors.object_ref("spec.owner", owner);
    }
    errors.0
}

/// Validates an Artifact: name (DNS subdomain), source URL, type and max versions.
pub fn validate_artifact(artifact: &Artifact) -> Vec<FieldError> {
    let mut errors = Errors::default();
    check_metadata(&mut errors, &artifact.metadata, NameRule::Subdomain, true);
    let spec = &artifact.spec;
    errors.known("spec.artifactType", &spec.artifact_type);
    let internal = matches!(
        spec.artifact_type,
        ArtifactType::Snapshot | ArtifactType::Label
    );
    if spec.source_url.is_empty() {
        errors.required("spec.sourceUrl", "an http://, https:// or file:// URL");
    } else {
        match url_scheme(&spec.source_url) {
            Some("http" | "https" | "file") => {}
            Some("sf") if internal => {}
            _ => errors.invalid(
                "spec.sourceUrl",
                "source URL",
                abbreviate(&spec.source_url),
                "expected an http://, https:// or file:// URL",
            ),
        }
    }
    if spec.max_versions < 1 {
        errors.invalid(
            "spec.maxVersions",
            "maxVersions",
            spec.max_versions,
            "must be at least 1",
        );
    }
    errors.0
}

/// Validates a Blob: name (DNS subdomain) and owner namespace.
pub fn validate_blob(blob: &Blob) -> Vec<FieldError> {
    let mut errors = Errors::default();
    check_metadata(&mut errors, &blob.metadata, NameRule::Subdomain, false);
    errors.dns_label(
        "spec.ownerNamespace",
        "namespace",
        &blob.spec.owner_namespace,
    );
    errors.0
}

/// Validates a Namespace: name (DNS label) and trusted namespaces.
pub fn validate_namespace(namespace: &Namespace) -> Vec<FieldError> {
    let mut errors = Errors::default();
    check_metadata(&mut errors, &namespace.metadata, NameRule::Label, false);
    for (i, trusted) in namespace.spec.trust.iter().enumerate() {
        errors.dns_label(&format!("spec.trust[{i}]"), "namespace", trusted);
    }
    errors.0
}

/// Validates a Node: name (DNS subdomain, usually the FQDN) and roles.
pub fn validate_node(node: &Node) -> Vec<FieldError> {
    let mut errors = Errors::default();
    check_metadata(&mut errors, &node.metadata, NameRule::Subdomain, false);
    for (i, role) in node.spec.roles.iter().enumerate() {
        errors.known(&format!("spec.roles[{i}]"), role);
    }
    errors.0
}

/// Validates a ClusterOperation: name, type, target, node, priority, dependencies
/// and payload.
pub fn validate_cluster_operation(operation: &ClusterOperation) -> Vec<FieldError> {
    let mut errors = Errors::default();
    check_metadata(&mut errors, &operation.metadata, NameRule::Subdomain, true);
    let spec = &operation.spec;
    errors.known("spec.operationType", &spec.operation_type);
    errors.object_ref("spec.target", &spec.target);
    if let Some(node) = &spec.node {
        errors.dns_subdomain("spec.node", "node name", node);
    }
    errors.known("spec.priority", &spec.priority);
    for (i, dependency) in spec.depends_on.iter().enumerate() {
        let path = format!("spec.dependsOn[{i}]");
        errors.dns_subdomain(&path, "operation name", dependency);
        if operation.metadata.name.as_deref() == Some(dependency.as_str()) {
            errors.invalid(
                &path,
                "operation name",
                dependency,
                "an operation cannot depend on itself",
            );
        }
    }
    if !spec.payload.is_object() {
        errors.invalid(
            "spec.payload",
            "payload",
            &spec.payload,
            "must be a JSON object",
        );
    }
    errors.0
}

/// The immutable fields of `kind`'s spec that differ between `old_spec` and
/// `new_spec` (JSON, camelCase). Instance: cpus, memory, disks, networks; Network:
/// netblock; other kinds have none. Specs that parse are compared typed, so an
/// omitted default equals the default written out; otherwise the raw JSON is
/// compared.
pub fn immutable_changes(kind: &str, old_spec: &Value, new_spec: &Value) -> Vec<FieldError> {
    match kind {
        "Instance" => match (
            typed::<InstanceSpec>(old_spec),
            typed::<InstanceSpec>(new_spec),
        ) {
            (Some(old), Some(new)) => instance_immutable_changes(&old, &new),
            _ => raw_changes(old_spec, new_spec, &["cpus", "memory", "disks", "networks"]),
        },
        "Network" => match (
            typed::<NetworkSpec>(old_spec),
            typed::<NetworkSpec>(new_spec),
        ) {
            (Some(old), Some(new)) => network_immutable_changes(&old, &new),
            _ => raw_changes(old_spec, new_spec, &["netblock"]),
        },
        _ => Vec::new(),
    }
}

fn typed<T: DeserializeOwned>(spec: &Value) -> Option<T> {
    serde_json::from_value(spec.clone()).ok()
}

fn raw_changes(old: &Value, new: &Value, keys: &[&str]) -> Vec<FieldError> {
    let mut errors = Errors::default();
    for key in keys {
        if old.get(key) != new.get(key) {
            immutable(&mut errors, key);
        }
    }
    errors.0
}

fn immutable(errors: &mut Errors, key: &str) {
    let field = format!("spec.{key}");
    let message = format!("{field} is immutable");
    errors.push(&field, FieldErrorReason::Immutable, message);
}

/// The immutable Instance fields (cpus, memory, disks, networks) that changed.
pub fn instance_immutable_changes(old: &InstanceSpec, new: &InstanceSpec) -> Vec<FieldError> {
    let mut errors = Errors::default();
    if old.cpus != new.cpus {
        immutable(&mut errors, "cpus");
    }
    if old.memory != new.memory {
        immutable(&mut errors, "memory");
    }
    if old.disks != new.disks {
        immutable(&mut errors, "disks");
    }
    if old.networks != new.networks {
        immutable(&mut errors, "networks");
    }
    errors.0
}

/// The immutable Network fields (netblock) that changed.
pub fn network_immutable_changes(old: &NetworkSpec, new: &NetworkSpec) -> Vec<FieldError> {
    let mut errors = Errors::default();
    if old.netblock != new.netblock {
        immutable(&mut errors, "netblock");
    }
    errors.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_labels() {
        for good in [
            "a",
            "web-1",
            "0abc",
            "f10a7f10-a7f1-4a7f-a10a-7f10a7f10a7f",
            &"a".repeat(63),
        ] {
            assert!(is_dns_label(good), "{good}");
        }
        for bad in ["", "-a", "a-", "Web", "a.b", "a_b", &"a".repeat(64)] {
            assert!(!is_dns_label(bad), "{bad}");
        }
        assert!(is_dns_subdomain("hv-1.example.com"));
        assert!(!is_dns_subdomain("hv-1..example"));
        assert!(!is_dns_subdomain(".a"));
    }

    #[test]
    fn netblocks() {
        assert_eq!(
            parse_netblock("10.0.0.0/24"),
            Ok((Ipv4Addr::new(10, 0, 0, 0), 24))
        );
        assert_eq!(
            parse_netblock("10.0.0.0/8"),
            Ok((Ipv4Addr::new(10, 0, 0, 0), 8))
        );
        assert_eq!(
            parse_netblock("192.168.1.4/30"),
            Ok((Ipv4Addr::new(192, 168, 1, 4), 30))
        );
        assert_eq!(
            parse_netblock("10.0.0.1/24"),
            Err("host bits are set; the network address is 10.0.0.0/24".to_owned())
        );
        for bad in [
            "10.0.0.0",
            "10.0.0.0/",
            "10.0.0.0/+8",
            "10.0.0.0/7",
            "10.0.0.0/31",
            "10.0.0/24",
            "x/24",
            "10.0.0.0/024",
        ] {
            assert!(parse_netblock(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn macs_and_base64() {
        assert_eq!(
            parse_mac("02:00:00:12:34:5F"),
            Some([2, 0, 0, 0x12, 0x34, 0x5f])
        );
        assert_eq!(parse_mac("02:00:00:12:34"), None);
        assert_eq!(parse_mac("02:00:00:12:34:56:78"), None);
        assert_eq!(parse_mac("02-00-00-12-34-56"), None);
        assert_eq!(parse_mac("2:00:00:12:34:56"), None);
        assert_eq!(base64_decoded_len(""), Some(0));
        assert_eq!(base64_decoded_len("aGk="), Some(2));
        assert_eq!(base64_decoded_len("aGVsbG8="), Some(5));
        assert_eq!(base64_decoded_len("aGVs\nbG8h"), Some(6));
        assert_eq!(base64_decoded_len("aGk"), None);
        assert_eq!(base64_decoded_len("a==="), None);
        assert_eq!(base64_decoded_len("a-_b"), None);
    }

    #[test]
    fn ssh_keys() {
        assert_eq!(
            ssh_key_problem("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI me@host"),
            None
        );
        assert_eq!(ssh_key_problem("ecdsa-sha2-nistp256 AAAAE2VjZHNh"), None);
        assert!(ssh_key_problem("AAAAC3NzaC1lZDI1NTE5").is_some());
        assert!(ssh_key_problem("rsa AAAAB3").is_some());
        assert!(ssh_key_problem("ssh-rsa hello").is_some());
        assert!(ssh_key_problem("ssh-rsa AAAAB3\nssh-rsa AAAAB3").is_some());
    }

    #[test]
    fn cause_types() {
        assert_eq!(
            FieldErrorReason::Required.cause_type(),
            "FieldValueRequired"
        );
        assert_eq!(FieldErrorReason::Invalid.cause_type(), "FieldValueInvalid");
        assert_eq!(
            FieldErrorReason::NotSupported.cause_type(),
            "FieldValueNotSupported"
        );
        assert_eq!(FieldErrorReason::TooLong.cause_type(), "FieldValueTooLong");
        assert_eq!(
            FieldErrorReason::Immutable.cause_type(),
            "FieldValueForbidden"
        );
    }

    #[test]
    fn abbreviate_long_values() {
        assert_eq!(abbreviate("short"), "short");
        assert_eq!(
            abbreviate(&"x".repeat(50)),
            format!("{}...", "x".repeat(40))
        );
    }
}
