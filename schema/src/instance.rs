//! The `Instance` kind (namespaced, short name `inst`): a virtual machine.
//!
//! Contract: users write `spec` (what the VM should be); controllers write
//! `status.state`, `conditions`, `node`, `intentSeq` and `observedGeneration`; the
//! agent writes the observed host facts `status.powerState`, `interfaces` and
//! `console`. Field names are Shaken Fist's in Rust and camelCase in JSON.
//! [`InstanceState::can_transition_to`] is the state machine of shakenfist.md §2.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{Condition, string_enum};
use crate::interface::NicModel;

string_enum! {
    /// The bus a disk is attached on. Any other value (ide was dropped in v0.7) is
    /// rejected with a clear error.
    pub enum DiskBus: "disk bus", default = Virtio {
        /// virtio-blk (`vdX`).
        Virtio => "virtio",
        /// SATA (`sdX`).
        Sata => "sata",
        /// SCSI (`sdX`).
        Scsi => "scsi",
        /// USB (`sdX`); a cdrom asked for on virtio is moved here.
        Usb => "usb",
        /// NVMe (`nvmeN`).
        Nvme => "nvme",
    }
}

string_enum! {
    /// What a disk is.
    pub enum DiskType: "disk type", default = Disk {
        /// A writable disk.
        Disk => "disk",
        /// A read-only cdrom; needs a base.
        Cdrom => "cdrom",
    }
}

string_enum! {
    /// The emulated video card.
    pub enum VideoModel: "video model", default = Cirrus {
        /// Cirrus Logic.
        Cirrus => "cirrus",
        /// Standard VGA.
        Vga => "vga",
        /// QXL (for SPICE).
        Qxl => "qxl",
        /// virtio-gpu.
        Virtio => "virtio",
    }
}

string_enum! {
    /// The remote display protocol.
    pub enum VdiType: "vdi type", default = Vnc {
        /// VNC.
        Vnc => "vnc",
        /// SPICE.
        Spice => "spice",
        /// SPICE allowing concurrent connections.
        SpiceConcurrent => "spiceconcurrent",
    }
}

string_enum! {
    /// How instance metadata reaches the guest.
    pub enum ConfigDrive: "config drive", default = OpenstackDisk {
        /// An OpenStack config-drive disk, the second block device, rebuilt on
        /// every power-on.
        OpenstackDisk => "openstack-disk",
        /// No config drive.
        None => "none",
    }
}

string_enum! {
    /// The power state the user wants.
    pub enum DesiredPowerState: "power state", default = On {
        /// Running.
        On => "on",
        /// Shut off.
        Off => "off",
        /// Suspended in memory.
        Paused => "paused",
    }
}

string_enum! {
    /// The power state the agent observed on the hypervisor.
    pub enum ObservedPowerState: "observed power state" {
        /// Running.
        Running => "running",
        /// Suspended.
        Paused => "paused",
        /// Shut off.
        Off => "off",
        /// The guest crashed.
        Crashed => "crashed",
    }
}

string_enum! {
    /// The instance lifecycle state (shakenfist.md §2).
    pub enum InstanceState: "instance state", default = Initial {
        /// Accepted.
        Initial => "initial",
        /// Placement and resource checks.
        Preflight => "preflight",
        /// Being built on its node.
        Creating => "creating",
        /// Exists on its node.
        Created => "created",
        /// Failed; never reaped automatically.
        Error => "error",
        /// Deletion under way.
        DeleteWait => "delete_wait",
        /// Deleted.
        Deleted => "deleted",
        /// Failed during preflight (then `error`).
        PreflightError => "preflight-error",
        /// Failed while creating (then `error`).
        CreatingError => "creating-error",
        /// Failed once created (then `error`).
        CreatedError => "created-error",
        /// Failed while deleting (then `error`).
        DeleteWaitError => "delete_wait-error",
    }
}

impl InstanceState {
    /// Whether `self → next` is allowed (shakenfist.md §2): initial → preflight →
    /// creating → created; each of these may go to delete_wait, deleted or its
    /// `<state>-error` (initial, having no `-error` form, goes to error directly);
    /// `<state>-error` → error; error → delete_wait or deleted; delete_wait →
    /// deleted or delete_wait-error. Staying in the same known state is allowed (a
    /// write that changes nothing); `Other` values never transition.
    pub fn can_transition_to(&self, next: &InstanceState) -> bool {
        use InstanceState as S;
        if !self.is_known() || !next.is_known() {
            return false;
        }
        if self == next {
            return true;
        }
        let allowed: &[InstanceState] = match self {
            S::Initial => &[S::Preflight, S::DeleteWait, S::Deleted, S::Error],
            S::Preflight => &[S::Creating, S::DeleteWait, S::Deleted, S::PreflightError],
            S::Creating => &[S::Created, S::DeleteWait, S::Deleted, S::CreatingError],
            S::Created => &[S::DeleteWait, S::Deleted, S::CreatedError],
            S::PreflightError | S::CreatingError | S::CreatedError | S::DeleteWaitError => {
                &[S::Error]
            }
            S::Error => &[S::DeleteWait, S::Deleted],
            S::DeleteWait => &[S::Deleted, S::DeleteWaitError],
            S::Deleted | S::Other(_) => &[],
        };
        allowed.contains(next)
    }
}

/// The desired state of an instance.
#[derive(CustomResource, JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "shakenfist.io",
    version = "v1alpha1",
    kind = "Instance",
    namespaced,
    status = "InstanceStatus",
    shortname = "inst",
    derive = "PartialEq",
    doc = "A Shaken Fist virtual machine.",
    printcolumn = r#"{"name":"State","type":"string","jsonPath":".status.state"}"#,
    printcolumn = r#"{"name":"Power","type":"string","jsonPath":".status.powerState"}"#,
    printcolumn = r#"{"name":"Node","type":"string","jsonPath":".status.node"}"#,
    printcolumn = r#"{"name":"IPv4","type":"string","jsonPath":".status.interfaces[0].ipv4"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InstanceSpec {
    /// Virtual CPUs, 1..=64. Immutable.
    pub cpus: u32,
    /// Memory in MiB, at least 128. Immutable.
    pub memory: u64,
    /// Block devices in order; at least one. Immutable.
    #[serde(default)]
    pub disks: Vec<DiskSpec>,
    /// Network interfaces in order. Immutable (hot-plug adds NetworkInterfaces).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<InstanceNetworkSpec>,
    /// An OpenSSH public key, `<type> <base64> [comment]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_key: Option<String>,
    /// Cloud-init user data, base64 encoded, at most 64 KiB decoded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_data: Option<String>,
    /// The video card and remote display; absent means the defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub video: Option<VideoSpec>,
    /// Boot with UEFI (OVMF) instead of BIOS.
    #[serde(default)]
    pub uefi: bool,
    /// UEFI secure boot; requires `uefi`.
    #[serde(default)]
    pub secure_boot: bool,
    /// The NVRAM template for UEFI, as an Artifact name or UUID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nvram_template: Option<String>,
    /// How metadata reaches the guest.
    #[serde(default)]
    pub config_drive: ConfigDrive,
    /// The desired power state.
    #[serde(default)]
    pub power_state: DesiredPowerState,
    /// Placement hint: the name of the Node to run on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placed_on: Option<String>,
    /// Side channels (virtio serial ports) to expose to the guest, by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub side_channels: Vec<String>,
}

/// One block device of an instance.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DiskSpec {
    /// Size in GiB; required (≥ 1) for a disk without a base.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// The image: an Artifact name or UUID, or a URL; required for a cdrom.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<String>,
    /// The bus.
    #[serde(default)]
    pub bus: DiskBus,
    /// Disk or cdrom.
    #[serde(rename = "type", default)]
    pub disk_type: DiskType,
}

/// One network interface asked for at create time.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InstanceNetworkSpec {
    /// The Network, by name or UUID.
    pub network: String,
    /// A fixed IPv4 address in the network; absent means allocate one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// A fixed MAC address; absent means one derived from the interface uid (`02:00:…`, locally administered).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub macaddr: Option<String>,
    /// The NIC model.
    #[serde(default)]
    pub model: NicModel,
    /// Give the interface a floating address.
    #[serde(default)]
    pub float: bool,
}

/// Video card and remote display settings.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VideoSpec {
    /// The video card model.
    #[serde(default)]
    pub model: VideoModel,
    /// Video memory in KiB.
    #[serde(default = "default_video_memory")]
    pub memory: u32,
    /// The remote display protocol.
    #[serde(default)]
    pub vdi: VdiType,
}

/// Shaken Fist's default video memory, 16 MiB in KiB.
pub const DEFAULT_VIDEO_MEMORY_KIB: u32 = 16384;

fn default_video_memory() -> u32 {
    DEFAULT_VIDEO_MEMORY_KIB
}

impl Default for VideoSpec {
    fn default() -> Self {
        Self {
            model: VideoModel::default(),
            memory: DEFAULT_VIDEO_MEMORY_KIB,
            vdi: VdiType::default(),
        }
    }
}

/// The observed state of an instance.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct InstanceStatus {
    /// The `metadata.generation` the controller last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Conditions, keyed by type.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The lifecycle state.
    #[serde(default)]
    pub state: InstanceState,
    /// The power state the agent last observed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::common::optional_string_enum::<ObservedPowerState>")]
    pub power_state: Option<ObservedPowerState>,
    /// The Node the instance is placed on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The interfaces as attached, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<InterfaceStatus>,
    /// Where to reach the console.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub console: Option<ConsoleStatus>,
    /// Why the instance is in error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_message: Option<String>,
    /// The per-target intent sequence used to name operations: bumped for each
    /// deliberate re-issue so a repeated emit after a crash collides (AlreadyExists).
    #[serde(default)]
    pub intent_seq: u64,
    /// The name of the ClusterOperation last emitted for this instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_operation: Option<String>,
}

/// One attached interface as observed.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct InterfaceStatus {
    /// The NetworkInterface object's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The Network's name.
    pub network: String,
    /// The IPv4 address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4: Option<String>,
    /// The MAC address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub macaddr: Option<String>,
    /// The NIC model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::common::optional_string_enum::<NicModel>")]
    pub model: Option<NicModel>,
    /// The position on the instance, from 0.
    #[serde(default)]
    pub order: u32,
    /// The floating address, when floated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub floating_address: Option<String>,
}

/// Where the console listens.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ConsoleStatus {
    /// The protocol: `vnc`, `spice` or `telnet` (the serial console).
    pub kind: String,
    /// The host to connect to.
    pub host: String,
    /// The TCP port.
    pub port: u16,
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: &[&str] = &[
        "initial",
        "preflight",
        "creating",
        "created",
        "error",
        "delete_wait",
        "deleted",
        "preflight-error",
        "creating-error",
        "created-error",
        "delete_wait-error",
    ];

    fn allowed_from(from: &str) -> Vec<&'static str> {
        let from = InstanceState::parse(from);
        ALL.iter()
            .copied()
            .filter(|to| from.as_str() != *to && from.can_transition_to(&InstanceState::parse(to)))
            .collect()
    }

    #[test]
    fn known_states_are_all_listed() {
        assert_eq!(InstanceState::known(), ALL);
    }

    #[test]
    fn instance_state_machine_matches_shaken_fist() {
        assert_eq!(
            allowed_from("initial"),
            ["preflight", "error", "delete_wait", "deleted"]
        );
        assert_eq!(
            allowed_from("preflight"),
            ["creating", "delete_wait", "deleted", "preflight-error"]
        );
        assert_eq!(
            allowed_from("creating"),
            ["created", "delete_wait", "deleted", "creating-error"]
        );
        assert_eq!(
            allowed_from("created"),
            ["delete_wait", "deleted", "created-error"]
        );
        for failed in [
            "preflight-error",
            "creating-error",
            "created-error",
            "delete_wait-error",
        ] {
            assert_eq!(allowed_from(failed), ["error"], "from {failed}");
        }
        assert_eq!(allowed_from("error"), ["delete_wait", "deleted"]);
        assert_eq!(
            allowed_from("delete_wait"),
            ["deleted", "delete_wait-error"]
        );
        assert!(allowed_from("deleted").is_empty());
    }

    #[test]
    fn instance_state_self_and_unknown() {
        assert!(InstanceState::Created.can_transition_to(&InstanceState::Created));
        assert!(!InstanceState::Created.can_transition_to(&InstanceState::Creating));
        let odd = InstanceState::parse("bogus");
        assert!(!odd.can_transition_to(&InstanceState::Deleted));
        assert!(!InstanceState::Initial.can_transition_to(&odd));
        assert!(!odd.can_transition_to(&odd));
    }

    #[test]
    fn spec_defaults_follow_shaken_fist() {
        let spec: InstanceSpec = serde_json::from_value(
            serde_json::json!({"cpus": 1, "memory": 1024, "disks": [{"size": 8}]}),
        )
        .unwrap();
        assert_eq!(spec.config_drive, ConfigDrive::OpenstackDisk);
        assert_eq!(spec.power_state, DesiredPowerState::On);
        assert_eq!(spec.disks[0].bus, DiskBus::Virtio);
        assert_eq!(spec.disks[0].disk_type, DiskType::Disk);
        assert!(!spec.uefi && !spec.secure_boot);
        let video: VideoSpec = serde_json::from_value(serde_json::json!({})).unwrap();
        assert_eq!(video, VideoSpec::default());
        assert_eq!(video.memory, 16384);
        assert_eq!(video.model, VideoModel::Cirrus);
        assert_eq!(video.vdi, VdiType::Vnc);
    }
}
