//! Libvirt domain XML, rendered from an Instance spec: a pure module (no I/O).
//!
//! Contract:
//! - [`render_domain`] turns a [`DomainInput`] (the Instance spec, its NICs, the
//!   instance's file [`InstancePaths`]) and the node's [`RenderSettings`] into domain XML.
//!   The same input always renders the same text (golden-tested, and every rendering
//!   in the tests passes `virt-xml-validate`).
//! - The domain is named `sf:<uid>` (its libvirt UUID is the instance uid when that is a
//!   UUID) and carries `<metadata><sf:instance namespace=… name=…/>` so orphans can be
//!   identified. Machine `pc`, or `q35` with PCIe root ports (hot plug) and SMM when
//!   secure boot is asked for. UEFI boots OVMF with a per-instance NVRAM file.
//! - Disks ([`layout_disks`]): in spec order, with the config drive (raw ISO) as the
//!   second block device when `configDrive: openstack-disk`. Device names per prefix:
//!   virtio → `vdX`; sata, scsi and usb share `sdX`; nvme → `nvmeN` (attached through
//!   `qemu:commandline`, as libvirt 9 has no emulated NVMe disk bus). A cdrom asked for
//!   on virtio is moved to usb. Buses and names come from
//!   `sf_schema::devices::guest_devices`, which the API names snapshot devices by. An
//!   unknown bus, disk type, NIC model, video model or
//!   display type is a [`RenderError`] naming the spec field (e.g. `spec.disks[1].bus`).
//! - NICs are `type='bridge'` on `sf_hostnet::bridge_name(vxid)` with MAC, model and
//!   MTU ([`render_interface`] is also the hot-plug device XML).
//! - Always: ACPI (libvirt 9 otherwise passes `-no-acpi`, which QEMU ≥ 9 rejects), a
//!   serial console on a pty logged to `console.log`, VNC or SPICE graphics with
//!   autoport, the video card, a virtio RNG and a virtio memballoon with free page
//!   reporting (QEMU ≥ 5.1 or unknown version).

use std::path::{Path, PathBuf};

use sf_schema::instance::{ConfigDrive, DiskBus, DiskType, InstanceSpec, VdiType, VideoModel};
use sf_schema::interface::NicModel;

/// Why a domain could not be rendered: always a bad spec value, named by field.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RenderError {
    /// A field holds a value this agent cannot render.
    #[error("{field}: unsupported {what} {value:?} (expected one of {expected})")]
    Unsupported {
        /// The spec field path, e.g. `spec.disks[1].bus`.
        field: String,
        /// What the value is, e.g. `disk bus`.
        what: &'static str,
        /// The value given.
        value: String,
        /// The accepted values, comma separated.
        expected: String,
    },
    /// A combination that cannot work.
    #[error("{field}: {message}")]
    Invalid {
        /// The spec field path.
        field: String,
        /// What is wrong.
        message: String,
    },
}

/// The libvirt domain type (`<domain type=…>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DomainType {
    /// Hardware virtualisation.
    Kvm,
    /// QEMU TCG emulation.
    Qemu,
    /// The libvirt test driver (`test:///…` URIs).
    Test,
}

impl DomainType {
    /// The XML value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Kvm => "kvm",
            Self::Qemu => "qemu",
            Self::Test => "test",
        }
    }

    /// Parses `kvm`, `qemu` or `test`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "kvm" => Some(Self::Kvm),
            "qemu" => Some(Self::Qemu),
            "test" => Some(Self::Test),
            _ => None,
        }
    }
}

/// OVMF firmware files.
#[derive(Debug, Clone, PartialEq)]
pub struct OvmfPaths {
    /// The UEFI code (read-only pflash).
    pub code: PathBuf,
    /// The NVRAM template.
    pub vars: PathBuf,
    /// The secure-boot code.
    pub secure_code: PathBuf,
    /// The secure-boot NVRAM template (with enrolled keys).
    pub secure_vars: PathBuf,
}

impl Default for OvmfPaths {
    fn default() -> Self {
        Self {
            code: "/usr/share/OVMF/OVMF_CODE_4M.fd".into(),
            vars: "/usr/share/OVMF/OVMF_VARS_4M.fd".into(),
            secure_code: "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd".into(),
            secure_vars: "/usr/share/OVMF/OVMF_VARS_4M.ms.fd".into(),
        }
    }
}

/// Node-wide rendering settings.
#[derive(Debug, Clone, PartialEq)]
pub struct RenderSettings {
    /// The domain type.
    pub domain_type: DomainType,
    /// Firmware paths for UEFI instances.
    pub ovmf: OvmfPaths,
    /// The detected QEMU version (major, minor), when known.
    pub qemu_version: Option<(u32, u32)>,
    /// The address VNC/SPICE listen on.
    pub vdi_listen: String,
}

impl RenderSettings {
    /// Settings for `domain_type` with the defaults.
    pub fn new(domain_type: DomainType) -> Self {
        Self {
            domain_type,
            ovmf: OvmfPaths::default(),
            qemu_version: None,
            vdi_listen: "0.0.0.0".into(),
        }
    }
}

/// Where an instance's files live: `<STORAGE_PATH>/instances/<uid>/`.
#[derive(Debug, Clone, PartialEq)]
pub struct InstancePaths {
    /// The instance directory.
    pub dir: PathBuf,
}

impl InstancePaths {
    /// The directory of instance `uid` under `storage_path`.
    pub fn new(storage_path: &Path, uid: &str) -> Self {
        Self {
            dir: storage_path.join("instances").join(uid),
        }
    }

    /// The qcow2 file of `spec.disks[index]` (type disk).
    pub fn disk(&self, index: usize) -> PathBuf {
        self.dir.join(format!("disk-{index}.qcow2"))
    }

    /// The config drive ISO.
    pub fn config_drive(&self) -> PathBuf {
        self.dir.join("config-drive.iso")
    }

    /// The UEFI NVRAM file.
    pub fn nvram(&self) -> PathBuf {
        self.dir.join("nvram.fd")
    }

    /// The images the instance was created from (see
    /// [`crate::instance::Lifecycle::recorded_images`]).
    pub fn images(&self) -> PathBuf {
        self.dir.join("images.json")
    }

    /// The serial console log.
    pub fn console_log(&self) -> PathBuf {
        self.dir.join("console.log")
    }

    /// The unix socket of side channel `name`.
    pub fn side_channel(&self, name: &str) -> PathBuf {
        self.dir.join(format!("sc-{name}.sock"))
    }
}

/// One NIC as attached.
#[derive(Debug, Clone, PartialEq)]
pub struct NicInput {
    /// The MAC address.
    pub mac: String,
    /// The network's VXLAN id (the bridge is `br-vxlan-<vxid hex>`).
    pub vxid: u32,
    /// The NIC model.
    pub model: NicModel,
    /// The MTU.
    pub mtu: u32,
}

/// Everything one domain is rendered from.
#[derive(Debug, Clone)]
pub struct DomainInput<'a> {
    /// The instance uid.
    pub uid: &'a str,
    /// The instance's namespace.
    pub namespace: &'a str,
    /// The instance's name.
    pub name: &'a str,
    /// The desired state.
    pub spec: &'a InstanceSpec,
    /// The NICs, in order.
    pub nics: &'a [NicInput],
    /// The instance's files.
    pub paths: &'a InstancePaths,
    /// Per `spec.disks` index: the image a cdrom shows (`None`: empty drive; ignored
    /// for disks, whose file is [`InstancePaths::disk`]).
    pub cdrom_sources: &'a [Option<PathBuf>],
    /// The NVRAM template from `spec.nvramTemplate`, when resolved.
    pub nvram_template: Option<&'a Path>,
}

/// What a block device is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    /// A writable disk.
    Disk,
    /// A cdrom.
    Cdrom,
}

/// A concrete bus (no `Other`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bus {
    /// virtio-blk.
    Virtio,
    /// SATA.
    Sata,
    /// SCSI (virtio-scsi controller).
    Scsi,
    /// USB (qemu-xhci).
    Usb,
    /// NVMe.
    Nvme,
}

impl Bus {
    fn as_str(self) -> &'static str {
        match self {
            Self::Virtio => "virtio",
            Self::Sata => "sata",
            Self::Scsi => "scsi",
            Self::Usb => "usb",
            Self::Nvme => "nvme",
        }
    }
}

/// One block device as laid out.
#[derive(Debug, Clone, PartialEq)]
pub struct DiskLayout {
    /// The `spec.disks` index; `None` for the config drive.
    pub index: Option<usize>,
    /// Disk or cdrom.
    pub kind: DeviceKind,
    /// The bus after defaulting and the cdrom move.
    pub bus: Bus,
    /// The guest device name (`vda`, `sdb`, `nvme0`).
    pub target: String,
    /// The file, if any (an empty cdrom has none).
    pub source: Option<PathBuf>,
    /// `qcow2` or `raw`.
    pub format: &'static str,
}

fn unsupported(field: String, what: &'static str, value: &str, known: &[&str]) -> RenderError {
    RenderError::Unsupported {
        field,
        what,
        value: value.to_owned(),
        expected: known.join(", "),
    }
}

fn concrete_bus(bus: &DiskBus, field: impl FnOnce() -> String) -> Result<Bus, RenderError> {
    Ok(match bus {
        DiskBus::Virtio => Bus::Virtio,
        DiskBus::Sata => Bus::Sata,
        DiskBus::Scsi => Bus::Scsi,
        DiskBus::Usb => Bus::Usb,
        DiskBus::Nvme => Bus::Nvme,
        DiskBus::Other(v) => return Err(unsupported(field(), "disk bus", v, DiskBus::known())),
    })
}

/// Lays out the block devices of `input` (see the module contract).
pub fn layout_disks(input: &DomainInput<'_>) -> Result<Vec<DiskLayout>, RenderError> {
    let spec = input.spec;
    if spec.disks.is_empty() {
        return Err(RenderError::Invalid {
            field: "spec.disks".into(),
            message: "an instance needs at least one disk".into(),
        });
    }
    if let ConfigDrive::Other(v) = &spec.config_drive {
        return Err(unsupported(
            "spec.configDrive".into(),
            "config drive",
            v,
            ConfigDrive::known(),
        ));
    }
    for (i, disk) in spec.disks.iter().enumerate() {
        let field = || format!("spec.disks[{i}].bus");
        let bus = concrete_bus(&disk.bus, field)?;
        match &disk.disk_type {
            DiskType::Other(v) => {
                return Err(unsupported(
                    format!("spec.disks[{i}].type"),
                    "disk type",
                    v,
                    DiskType::known(),
                ));
            }
            DiskType::Cdrom if bus == Bus::Nvme => {
                return Err(RenderError::Invalid {
                    field: field(),
                    message: "a cdrom cannot use the nvme bus".into(),
                });
            }
            _ => {}
        }
    }
    // Buses and names from the one definition the API names snapshot devices by.
    let devices = sf_schema::devices::guest_devices(spec).ok_or_else(|| RenderError::Invalid {
        field: "spec.disks".into(),
        message: "no device layout for these disks".into(),
    })?;
    let mut out = Vec::with_capacity(devices.len());
    for device in devices {
        let bus = concrete_bus(&device.bus, || "spec.disks".into())?;
        let (kind, source, format) = match device.index {
            None => (DeviceKind::Disk, Some(input.paths.config_drive()), "raw"),
            Some(i) if device.cdrom => (
                DeviceKind::Cdrom,
                input.cdrom_sources.get(i).cloned().flatten(),
                "raw",
            ),
            Some(i) => (DeviceKind::Disk, Some(input.paths.disk(i)), "qcow2"),
        };
        out.push(DiskLayout {
            index: device.index,
            kind,
            bus,
            target: device.name,
            source,
            format,
        });
    }
    Ok(out)
}

/// Escapes text for XML attribute values and text nodes.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\'' => out.push_str("&apos;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}

fn path_str(p: &Path) -> String {
    esc(&p.to_string_lossy())
}

fn nic_model(model: &NicModel, index: usize) -> Result<&str, RenderError> {
    match model {
        NicModel::Other(v) => Err(unsupported(
            format!("interfaces[{index}].model"),
            "nic model",
            v,
            NicModel::known(),
        )),
        known => Ok(known.as_str()),
    }
}

/// The `<interface>` device XML of one NIC (also used to hot plug it).
pub fn render_interface(nic: &NicInput) -> Result<String, RenderError> {
    let model = nic_model(&nic.model, 0)?;
    Ok(interface_xml(nic, model, ""))
}

fn interface_xml(nic: &NicInput, model: &str, indent: &str) -> String {
    format!(
        "{indent}<interface type='bridge'>\n\
         {indent}  <mac address='{mac}'/>\n\
         {indent}  <source bridge='{bridge}'/>\n\
         {indent}  <model type='{model}'/>\n\
         {indent}  <mtu size='{mtu}'/>\n\
         {indent}</interface>\n",
        mac = esc(&nic.mac),
        bridge = esc(&sf_hostnet::bridge_name(nic.vxid)),
        model = esc(model),
        mtu = nic.mtu,
    )
}

fn valid_channel_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The QEMU `-drive` option value: commas in a path are doubled.
fn qemu_opt_path(p: &Path) -> String {
    p.to_string_lossy().replace(',', ",,")
}

/// Renders the domain XML (see the module contract).
pub fn render_domain(
    input: &DomainInput<'_>,
    settings: &RenderSettings,
) -> Result<String, RenderError> {
    let spec = input.spec;
    let disks = layout_disks(input)?;
    let video = spec.video.clone().unwrap_or_default();
    if let VideoModel::Other(v) = &video.model {
        return Err(unsupported(
            "spec.video.model".into(),
            "video model",
            v,
            VideoModel::known(),
        ));
    }
    if let VdiType::Other(v) = &video.vdi {
        return Err(unsupported(
            "spec.video.vdi".into(),
            "vdi type",
            v,
            VdiType::known(),
        ));
    }
    if spec.secure_boot && !spec.uefi {
        return Err(RenderError::Invalid {
            field: "spec.secureBoot".into(),
            message: "secure boot requires uefi".into(),
        });
    }
    let mut models = Vec::with_capacity(input.nics.len());
    for (i, nic) in input.nics.iter().enumerate() {
        models.push(nic_model(&nic.model, i)?);
    }
    for (i, name) in spec.side_channels.iter().enumerate() {
        if !valid_channel_name(name) {
            return Err(RenderError::Invalid {
                field: format!("spec.sideChannels[{i}]"),
                message: format!(
                    "side channel name {name:?} must be 1-64 letters, digits, '.', '_' or '-'"
                ),
            });
        }
    }

    let q35 = spec.secure_boot;
    let machine = if q35 { "q35" } else { "pc" };
    let memory = spec.memory;
    let mut x = String::new();
    let nvme: Vec<&DiskLayout> = disks.iter().filter(|d| d.bus == Bus::Nvme).collect();
    let spice_concurrent = video.vdi == VdiType::SpiceConcurrent;
    let qemu_ns = !nvme.is_empty() || spice_concurrent;
    if qemu_ns {
        x.push_str(&format!(
            "<domain type='{}' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>\n",
            settings.domain_type.as_str()
        ));
    } else {
        x.push_str(&format!(
            "<domain type='{}'>\n",
            settings.domain_type.as_str()
        ));
    }
    x.push_str(&format!("  <name>sf:{}</name>\n", esc(input.uid)));
    if let Ok(uuid) = uuid::Uuid::parse_str(input.uid) {
        x.push_str(&format!("  <uuid>{uuid}</uuid>\n"));
    }
    x.push_str(&format!(
        "  <title>{}/{}</title>\n",
        esc(input.namespace),
        esc(input.name)
    ));
    x.push_str("  <metadata>\n");
    x.push_str(&format!(
        "    <sf:instance xmlns:sf='{}' namespace='{}' name='{}'/>\n",
        crate::SF_XML_NAMESPACE,
        esc(input.namespace),
        esc(input.name)
    ));
    x.push_str("  </metadata>\n");
    x.push_str(&format!("  <memory unit='MiB'>{memory}</memory>\n"));
    x.push_str(&format!(
        "  <currentMemory unit='MiB'>{memory}</currentMemory>\n"
    ));
    x.push_str(&format!(
        "  <vcpu placement='static'>{}</vcpu>\n",
        spec.cpus
    ));
    x.push_str("  <os>\n");
    x.push_str(&format!(
        "    <type arch='x86_64' machine='{machine}'>hvm</type>\n"
    ));
    if spec.uefi {
        let (code, vars) = if spec.secure_boot {
            (&settings.ovmf.secure_code, &settings.ovmf.secure_vars)
        } else {
            (&settings.ovmf.code, &settings.ovmf.vars)
        };
        let template = input.nvram_template.unwrap_or(vars);
        let secure = if spec.secure_boot { "yes" } else { "no" };
        x.push_str(&format!(
            "    <loader readonly='yes' secure='{secure}' type='pflash'>{}</loader>\n",
            path_str(code)
        ));
        x.push_str(&format!(
            "    <nvram template='{}'>{}</nvram>\n",
            path_str(template),
            path_str(&input.paths.nvram())
        ));
    }
    x.push_str("    <boot dev='hd'/>\n");
    x.push_str("    <boot dev='cdrom'/>\n");
    x.push_str("  </os>\n");
    x.push_str("  <features>\n    <acpi/>\n    <apic/>\n");
    if spec.secure_boot {
        x.push_str("    <smm state='on'/>\n");
    }
    x.push_str("  </features>\n");
    match settings.domain_type {
        DomainType::Kvm => x.push_str("  <cpu mode='host-passthrough'/>\n"),
        DomainType::Qemu | DomainType::Test => {}
    }
    x.push_str("  <clock offset='utc'/>\n");
    x.push_str("  <on_poweroff>destroy</on_poweroff>\n");
    x.push_str("  <on_reboot>restart</on_reboot>\n");
    x.push_str("  <on_crash>destroy</on_crash>\n");
    x.push_str("  <devices>\n");

    for d in disks.iter().filter(|d| d.bus != Bus::Nvme) {
        let device = match d.kind {
            DeviceKind::Disk => "disk",
            DeviceKind::Cdrom => "cdrom",
        };
        x.push_str(&format!("    <disk type='file' device='{device}'>\n"));
        x.push_str(&format!(
            "      <driver name='qemu' type='{}'/>\n",
            d.format
        ));
        if let Some(source) = &d.source {
            x.push_str(&format!("      <source file='{}'/>\n", path_str(source)));
        }
        x.push_str(&format!(
            "      <target dev='{}' bus='{}'/>\n",
            d.target,
            d.bus.as_str()
        ));
        if d.kind == DeviceKind::Cdrom {
            x.push_str("      <readonly/>\n");
        }
        x.push_str("    </disk>\n");
    }
    if disks.iter().any(|d| d.bus == Bus::Scsi) {
        x.push_str("    <controller type='scsi' index='0' model='virtio-scsi'/>\n");
    }
    if disks.iter().any(|d| d.bus == Bus::Usb) {
        x.push_str("    <controller type='usb' index='0' model='qemu-xhci'/>\n");
    }
    if q35 {
        // Spare PCIe root ports so NICs can be hot plugged.
        for index in 1..=4 {
            x.push_str(&format!(
                "    <controller type='pci' index='{index}' model='pcie-root-port'/>\n"
            ));
        }
    }
    for (nic, model) in input.nics.iter().zip(&models) {
        x.push_str(&interface_xml(nic, model, "    "));
    }
    let log = path_str(&input.paths.console_log());
    x.push_str("    <serial type='pty'>\n");
    x.push_str(&format!("      <log file='{log}' append='on'/>\n"));
    x.push_str("      <target port='0'/>\n");
    x.push_str("    </serial>\n");
    x.push_str("    <console type='pty'>\n");
    x.push_str("      <target type='serial' port='0'/>\n");
    x.push_str("    </console>\n");
    for name in &spec.side_channels {
        x.push_str("    <channel type='unix'>\n");
        x.push_str(&format!(
            "      <source mode='bind' path='{}'/>\n",
            path_str(&input.paths.side_channel(name))
        ));
        x.push_str(&format!(
            "      <target type='virtio' name='{}'/>\n",
            esc(name)
        ));
        x.push_str("    </channel>\n");
    }
    let listen = esc(&settings.vdi_listen);
    let graphics = match video.vdi {
        VdiType::Vnc => "vnc",
        _ => "spice",
    };
    x.push_str(&format!(
        "    <graphics type='{graphics}' autoport='yes' listen='{listen}'>\n"
    ));
    x.push_str(&format!(
        "      <listen type='address' address='{listen}'/>\n"
    ));
    x.push_str("    </graphics>\n");
    if graphics == "spice" {
        x.push_str("    <channel type='spicevmc'>\n");
        x.push_str("      <target type='virtio' name='com.redhat.spice.0'/>\n");
        x.push_str("    </channel>\n");
    }
    let vmodel = video.model.as_str();
    match video.model {
        VideoModel::Virtio => x.push_str(&format!(
            "    <video>\n      <model type='{vmodel}' heads='1' primary='yes'/>\n    </video>\n"
        )),
        _ => x.push_str(&format!(
            "    <video>\n      <model type='{vmodel}' vram='{}' heads='1' primary='yes'/>\n    </video>\n",
            video.memory
        )),
    }
    x.push_str("    <rng model='virtio'>\n");
    x.push_str("      <backend model='random'>/dev/urandom</backend>\n");
    x.push_str("    </rng>\n");
    let free_page_reporting = settings.qemu_version.is_none_or(|v| v >= (5, 1));
    if free_page_reporting {
        x.push_str("    <memballoon model='virtio' freePageReporting='on'>\n");
    } else {
        x.push_str("    <memballoon model='virtio'>\n");
    }
    x.push_str("      <stats period='10'/>\n");
    x.push_str("    </memballoon>\n");
    x.push_str("  </devices>\n");
    if qemu_ns {
        x.push_str("  <qemu:commandline>\n");
        for d in &nvme {
            let source = d.source.as_deref().unwrap_or(Path::new("/dev/null"));
            x.push_str("    <qemu:arg value='-drive'/>\n");
            x.push_str(&format!(
                "    <qemu:arg value='file={},if=none,id={},format={}'/>\n",
                esc(&qemu_opt_path(source)),
                d.target,
                d.format
            ));
            x.push_str("    <qemu:arg value='-device'/>\n");
            x.push_str(&format!(
                "    <qemu:arg value='nvme,drive={0},serial=sf-{0}'/>\n",
                d.target
            ));
        }
        if spice_concurrent {
            x.push_str("    <qemu:env name='SPICE_DEBUG_ALLOW_MC' value='1'/>\n");
        }
        x.push_str("  </qemu:commandline>\n");
    }
    x.push_str("</domain>\n");
    Ok(x)
}

/// The `<interface …>…</interface>` element of `xml` whose MAC is `mac` (compared
/// case-insensitively), as it appears in `xml`.
pub fn interface_element<'a>(xml: &'a str, mac: &str) -> Option<&'a str> {
    let mac = mac.to_ascii_lowercase();
    let mut from = 0;
    while let Some(start) = xml[from..].find("<interface ").map(|i| from + i) {
        let end = xml[start..]
            .find("</interface>")
            .map(|i| start + i + "</interface>".len())?;
        let element = &xml[start..end];
        if interface_macs(element).first() == Some(&mac) {
            return Some(element);
        }
        from = end;
    }
    None
}

/// The MACs of the `<interface>` elements of a domain XML, in order (a light scan,
/// enough for libvirt's own canonical output and for [`render_domain`]'s).
pub fn interface_macs(xml: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(start) = rest.find("<interface ") {
        let after = &rest[start..];
        let end = after.find("</interface>").unwrap_or(after.len());
        let block = &after[..end];
        if let Some(m) = block.find("<mac address=") {
            let value = &block[m + "<mac address=".len()..];
            let quote = value.chars().next().unwrap_or('\'');
            if let Some(close) = value[1..].find(quote) {
                out.push(value[1..=close].to_ascii_lowercase());
            }
        }
        rest = &after[end.min(after.len())..];
        if end == after.len() {
            break;
        }
        rest = &rest["</interface>".len().min(rest.len())..];
    }
    out
}

/// The graphics console (`vnc` or `spice`) and its port from a live domain XML, when
/// libvirt assigned one.
pub fn graphics_port(xml: &str) -> Option<(String, u16)> {
    let start = xml.find("<graphics ")?;
    let tag_end = xml[start..].find('>')? + start;
    let tag = &xml[start..tag_end];
    let attr = |name: &str| -> Option<String> {
        let needle = format!(" {name}=");
        let at = tag.find(&needle)? + needle.len();
        let value = &tag[at..];
        let quote = value.chars().next()?;
        let close = value[1..].find(quote)?;
        Some(value[1..=close].to_owned())
    };
    let kind = attr("type")?;
    let port: i64 = attr("port")?.parse().ok()?;
    let port = u16::try_from(port).ok().filter(|p| *p > 0)?;
    Some((kind, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup() {
        assert_eq!(esc("a<b>&'\""), "a&lt;b&gt;&amp;&apos;&quot;");
    }

    #[test]
    fn macs_and_graphics_ports_are_read_back() {
        let xml = "<domain><devices><interface type='bridge'>\n<mac address='02:00:00:AA:BB:CC'/>\n</interface>\
                   <interface type=\"bridge\"><mac address=\"02:00:00:00:00:01\"/></interface>\
                   <graphics type='vnc' port='5901' autoport='yes'/></devices></domain>";
        assert_eq!(
            interface_macs(xml),
            vec!["02:00:00:aa:bb:cc", "02:00:00:00:00:01"]
        );
        assert_eq!(graphics_port(xml), Some(("vnc".into(), 5901)));
        assert_eq!(graphics_port("<graphics type='vnc' port='-1'/>"), None);
    }
}
