//! Domain XML snapshot tests: each rendering is compared with a committed file under
//! `tests/golden/` (regenerate with `SF_REGENERATE_GOLDEN=1 cargo test -p sf-agent
//! --test domain_xml`) and must pass `virt-xml-validate FILE domain` (libvirt-clients),
//! since the test driver accepts almost anything.

use std::path::{Path, PathBuf};
use std::process::Command;

use sf_agent::domain_xml::{
    DomainInput, DomainType, InstancePaths, NicInput, RenderError, RenderSettings, layout_disks,
    render_domain, render_interface,
};
use sf_schema::instance::{
    ConfigDrive, DiskBus, DiskSpec, DiskType, InstanceSpec, VdiType, VideoModel, VideoSpec,
};
use sf_schema::interface::NicModel;

const UID: &str = "8d3f5a52-6c0e-4f4e-9a55-2f3d1c0b7e11";

fn spec(disks: Vec<DiskSpec>) -> InstanceSpec {
    serde_json::from_value::<InstanceSpec>(serde_json::json!({"cpus": 2, "memory": 2048}))
        .map(|mut s| {
            s.disks = disks;
            s
        })
        .expect("spec")
}

fn disk(bus: DiskBus, disk_type: DiskType) -> DiskSpec {
    DiskSpec {
        size: Some(8),
        base: Some("debian-12".into()),
        bus,
        disk_type,
    }
}

fn nics() -> Vec<NicInput> {
    vec![
        NicInput {
            mac: "02:00:00:12:34:56".into(),
            vxid: 0x00abcd,
            model: NicModel::Virtio,
            mtu: 7950,
        },
        NicInput {
            mac: "02:00:00:65:43:21".into(),
            vxid: 0x123456,
            model: NicModel::E1000,
            mtu: 7950,
        },
    ]
}

fn render(spec: &InstanceSpec, settings: &RenderSettings) -> Result<String, RenderError> {
    let paths = InstancePaths::new(Path::new("/srv/shakenfist"), UID);
    let nics = nics();
    let cdroms: Vec<Option<PathBuf>> = spec
        .disks
        .iter()
        .map(|d| {
            (d.disk_type == DiskType::Cdrom)
                .then(|| PathBuf::from("/srv/shakenfist/image_cache/debian-12.iso"))
        })
        .collect();
    let input = DomainInput {
        uid: UID,
        namespace: "demo",
        name: "web-1",
        spec,
        nics: &nics,
        paths: &paths,
        cdrom_sources: &cdroms,
        nvram_template: None,
    };
    render_domain(&input, settings)
}

fn golden(name: &str, xml: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(format!("{name}.xml"));
    if std::env::var_os("SF_REGENERATE_GOLDEN").is_some() {
        std::fs::write(&path, xml).expect("write golden file");
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run with SF_REGENERATE_GOLDEN=1 to create it)",
            path.display()
        )
    });
    assert_eq!(
        xml,
        want,
        "{name}: rendering differs from {}",
        path.display()
    );
    validate(name, xml);
}

fn validate(name: &str, xml: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join(format!("{name}.xml"));
    std::fs::write(&file, xml).expect("write");
    let out = Command::new("virt-xml-validate")
        .arg(&file)
        .arg("domain")
        .output()
        .expect("virt-xml-validate (libvirt-clients) must be installed");
    assert!(
        out.status.success(),
        "{name}: virt-xml-validate failed:\n{}{}\n{xml}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn kvm() -> RenderSettings {
    RenderSettings::new(DomainType::Kvm)
}

#[test]
fn virtio_disks_bios_pc() {
    let s = spec(vec![
        disk(DiskBus::Virtio, DiskType::Disk),
        DiskSpec {
            size: Some(20),
            ..DiskSpec::default()
        },
    ]);
    let xml = render(&s, &kvm()).expect("render");
    assert!(xml.contains("<name>sf:8d3f5a52-6c0e-4f4e-9a55-2f3d1c0b7e11</name>"));
    assert!(xml.contains("machine='pc'"));
    assert!(xml.contains("<target dev='vda' bus='virtio'/>"));
    // The config drive is the second block device.
    assert!(xml.contains("config-drive.iso'/>\n      <target dev='vdb' bus='virtio'/>"));
    assert!(xml.contains("disk-1.qcow2'/>\n      <target dev='vdc' bus='virtio'/>"));
    assert!(xml.contains("<source bridge='br-vxlan-00abcd'/>"));
    assert!(xml.contains("freePageReporting='on'"));
    golden("virtio", &xml);
}

#[test]
fn sata_disks_and_a_sata_cdrom() {
    let s = spec(vec![
        disk(DiskBus::Sata, DiskType::Disk),
        disk(DiskBus::Sata, DiskType::Cdrom),
    ]);
    let xml = render(&s, &kvm()).expect("render");
    assert!(xml.contains("<target dev='sda' bus='sata'/>"));
    assert!(xml.contains("<target dev='sdb' bus='sata'/>"));
    assert!(xml.contains("<disk type='file' device='cdrom'>"));
    golden("sata", &xml);
}

#[test]
fn scsi_disks_get_a_virtio_scsi_controller() {
    let s = spec(vec![disk(DiskBus::Scsi, DiskType::Disk)]);
    let xml = render(&s, &kvm()).expect("render");
    assert!(xml.contains("<target dev='sda' bus='scsi'/>"));
    assert!(xml.contains("model='virtio-scsi'"));
    golden("scsi", &xml);
}

#[test]
fn usb_disks_and_a_virtio_cdrom_moved_to_usb() {
    let s = spec(vec![
        disk(DiskBus::Usb, DiskType::Disk),
        disk(DiskBus::Virtio, DiskType::Cdrom),
    ]);
    let xml = render(&s, &kvm()).expect("render");
    assert!(xml.contains("<target dev='sda' bus='usb'/>"));
    assert!(xml.contains("<target dev='sdc' bus='usb'/>"), "{xml}");
    assert!(!xml.contains("bus='virtio'/>\n      <readonly/>"));
    assert!(xml.contains("model='qemu-xhci'"));
    golden("usb", &xml);
}

#[test]
fn nvme_disks_go_through_the_qemu_command_line() {
    let s = spec(vec![
        disk(DiskBus::Nvme, DiskType::Disk),
        disk(DiskBus::Nvme, DiskType::Disk),
    ]);
    let xml = render(&s, &kvm()).expect("render");
    assert!(xml.contains("xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'"));
    assert!(xml.contains("nvme,drive=nvme0,serial=sf-nvme0"));
    assert!(xml.contains("nvme,drive=nvme1,serial=sf-nvme1"));
    // The config drive of an nvme instance sits on virtio.
    assert!(xml.contains("<target dev='vda' bus='virtio'/>"));
    golden("nvme", &xml);
}

#[test]
fn uefi_boots_ovmf_with_per_instance_nvram() {
    let mut s = spec(vec![disk(DiskBus::Virtio, DiskType::Disk)]);
    s.uefi = true;
    let xml = render(&s, &kvm()).expect("render");
    assert!(xml.contains(
        "<loader readonly='yes' secure='no' type='pflash'>/usr/share/OVMF/OVMF_CODE_4M.fd</loader>"
    ));
    assert!(xml.contains(
        "<nvram template='/usr/share/OVMF/OVMF_VARS_4M.fd'>/srv/shakenfist/instances/8d3f5a52-6c0e-4f4e-9a55-2f3d1c0b7e11/nvram.fd</nvram>"
    ));
    assert!(xml.contains("machine='pc'"));
    golden("uefi", &xml);
}

#[test]
fn secure_boot_is_q35_with_smm_and_root_ports() {
    let mut s = spec(vec![disk(DiskBus::Virtio, DiskType::Disk)]);
    s.uefi = true;
    s.secure_boot = true;
    let xml = render(&s, &kvm()).expect("render");
    assert!(xml.contains("machine='q35'"));
    assert!(xml.contains("<smm state='on'/>"));
    assert!(xml.contains("secure='yes'"));
    assert!(xml.contains("OVMF_CODE_4M.secboot.fd"));
    assert!(xml.contains("model='pcie-root-port'"));
    golden("secure_boot_q35", &xml);
}

#[test]
fn spice_qxl_without_config_drive_on_qemu_tcg() {
    let mut s = spec(vec![disk(DiskBus::Virtio, DiskType::Disk)]);
    s.config_drive = ConfigDrive::None;
    s.video = Some(VideoSpec {
        model: VideoModel::Qxl,
        memory: 65536,
        vdi: VdiType::SpiceConcurrent,
    });
    s.side_channels = vec!["sf-agent".into()];
    let mut settings = RenderSettings::new(DomainType::Qemu);
    settings.qemu_version = Some((4, 2));
    let xml = render(&s, &settings).expect("render");
    assert!(!xml.contains("config-drive.iso"));
    assert!(xml.contains("<graphics type='spice'"));
    assert!(xml.contains("SPICE_DEBUG_ALLOW_MC"));
    assert!(xml.contains("<model type='qxl' vram='65536'"));
    assert!(!xml.contains("host-passthrough"));
    // QEMU older than 5.1 has no free page reporting.
    assert!(!xml.contains("freePageReporting"));
    golden("spice_qemu", &xml);
}

#[test]
fn test_driver_domain() {
    let s = spec(vec![disk(DiskBus::Virtio, DiskType::Disk)]);
    let xml = render(&s, &RenderSettings::new(DomainType::Test)).expect("render");
    assert!(xml.starts_with("<domain type='test'>"));
    golden("test_driver", &xml);
}

#[test]
fn invalid_bus_is_rejected_naming_the_field() {
    let s = spec(vec![
        disk(DiskBus::Virtio, DiskType::Disk),
        disk(DiskBus::parse("ide"), DiskType::Disk),
    ]);
    let err = render(&s, &kvm()).expect_err("ide is not a bus");
    assert_eq!(
        err.to_string(),
        "spec.disks[1].bus: unsupported disk bus \"ide\" (expected one of virtio, sata, scsi, usb, nvme)"
    );
}

#[test]
fn other_bad_values_name_their_fields() {
    let mut s = spec(vec![disk(DiskBus::Virtio, DiskType::parse("floppy"))]);
    let err = render(&s, &kvm()).expect_err("floppy");
    assert!(
        err.to_string()
            .starts_with("spec.disks[0].type: unsupported disk type \"floppy\"")
    );
    s.disks = vec![disk(DiskBus::Nvme, DiskType::Cdrom)];
    let err = render(&s, &kvm()).expect_err("nvme cdrom");
    assert_eq!(
        err.to_string(),
        "spec.disks[0].bus: a cdrom cannot use the nvme bus"
    );
    s.disks = Vec::new();
    assert!(render(&s, &kvm()).is_err());
    s.disks = vec![disk(DiskBus::Virtio, DiskType::Disk)];
    s.secure_boot = true;
    let err = render(&s, &kvm()).expect_err("secure boot without uefi");
    assert_eq!(
        err.to_string(),
        "spec.secureBoot: secure boot requires uefi"
    );
}

#[test]
fn many_disks_name_past_z() {
    let s = spec(
        (0..30)
            .map(|_| disk(DiskBus::Virtio, DiskType::Disk))
            .collect(),
    );
    let paths = InstancePaths::new(Path::new("/srv"), UID);
    let input = DomainInput {
        uid: UID,
        namespace: "demo",
        name: "big",
        spec: &s,
        nics: &[],
        paths: &paths,
        cdrom_sources: &[],
        nvram_template: None,
    };
    let layout = layout_disks(&input).expect("layout");
    assert_eq!(layout.len(), 31);
    assert_eq!(layout[25].target, "vdz");
    assert_eq!(layout[26].target, "vdaa");
}

#[test]
fn hot_plug_interface_xml() {
    let nic = &nics()[1];
    let xml = render_interface(nic).expect("render");
    assert_eq!(
        xml,
        "<interface type='bridge'>\n  <mac address='02:00:00:65:43:21'/>\n  <source bridge='br-vxlan-123456'/>\n  <model type='e1000'/>\n  <mtu size='7950'/>\n</interface>\n"
    );
    let bad = NicInput {
        model: NicModel::parse("tulip"),
        ..nic.clone()
    };
    assert!(render_interface(&bad).is_err());
}
