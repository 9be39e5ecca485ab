//! The guest device names of an instance's block devices (`vda`, `sdb`, `nvme0`), as
//! libvirt names them from the buses the agent's domain XML puts them on.
//!
//! Contract (pure): [`guest_devices`] lists, in order, each `spec.disks` entry and,
//! when `configDrive` is `openstack-disk`, the config drive right after the first
//! disk (Shaken Fist's second block device). A cdrom asked for on virtio sits on usb;
//! the config drive takes the first disk's bus, virtio when that is nvme. Names count
//! per prefix: `vd` (virtio), `sd` (sata, scsi, usb) with letters `a`…`z`, `aa`…, and
//! `nvme0`, `nvme1`… It is `None` for what validation refuses (an unknown bus, type
//! or config drive; a cdrom on nvme). The agent's domain XML and the API's snapshot
//! requests both name devices from here, so they always agree.

use crate::instance::{ConfigDrive, DiskBus, DiskType, InstanceSpec};

/// One block device as the guest sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestDevice {
    /// The `spec.disks` index; `None` for the config drive.
    pub index: Option<usize>,
    /// The bus it sits on.
    pub bus: DiskBus,
    /// A cdrom (else a writable disk).
    pub cdrom: bool,
    /// The device name.
    pub name: String,
}

/// `0 → a`, `25 → z`, `26 → aa` (libvirt's disk naming).
fn letters(mut n: usize) -> String {
    let mut out = Vec::new();
    loop {
        out.push(b'a' + u8::try_from(n % 26).unwrap_or(0));
        if n < 26 {
            break;
        }
        n = n / 26 - 1;
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_default()
}

#[derive(Default)]
struct Namer {
    vd: usize,
    sd: usize,
    nvme: usize,
}

impl Namer {
    fn next(&mut self, bus: &DiskBus) -> Option<String> {
        let (prefix, counter) = match bus {
            DiskBus::Virtio => ("vd", &mut self.vd),
            DiskBus::Sata | DiskBus::Scsi | DiskBus::Usb => ("sd", &mut self.sd),
            DiskBus::Nvme => {
                let n = self.nvme;
                self.nvme += 1;
                return Some(format!("nvme{n}"));
            }
            DiskBus::Other(_) => return None,
        };
        let name = format!("{prefix}{}", letters(*counter));
        *counter += 1;
        Some(name)
    }
}

/// The block devices of `spec`, in order (see the module contract).
pub fn guest_devices(spec: &InstanceSpec) -> Option<Vec<GuestDevice>> {
    let config_drive = match &spec.config_drive {
        ConfigDrive::OpenstackDisk => true,
        ConfigDrive::None => false,
        ConfigDrive::Other(_) => return None,
    };
    let mut names = Namer::default();
    let mut out = Vec::new();
    for (i, disk) in spec.disks.iter().enumerate() {
        let cdrom = match &disk.disk_type {
            DiskType::Disk => false,
            DiskType::Cdrom => true,
            DiskType::Other(_) => return None,
        };
        let bus = match (&disk.bus, cdrom) {
            (DiskBus::Virtio, true) => DiskBus::Usb,
            (DiskBus::Nvme, true) => return None,
            (bus, _) => bus.clone(),
        };
        let name = names.next(&bus)?;
        out.push(GuestDevice {
            index: Some(i),
            bus: bus.clone(),
            cdrom,
            name,
        });
        if i == 0 && config_drive {
            let bus = match bus {
                DiskBus::Nvme => DiskBus::Virtio,
                other => other,
            };
            let name = names.next(&bus)?;
            out.push(GuestDevice {
                index: None,
                bus,
                cdrom: false,
                name,
            });
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn spec(disks: Value, config_drive: &str) -> InstanceSpec {
        serde_json::from_value(json!({
            "cpus": 1, "memory": 512, "disks": disks, "configDrive": config_drive,
        }))
        .expect("spec")
    }

    fn names(spec: &InstanceSpec) -> Vec<(Option<usize>, String)> {
        guest_devices(spec)
            .expect("devices")
            .into_iter()
            .map(|d| (d.index, d.name))
            .collect()
    }

    #[test]
    fn devices_are_named_per_bus_with_the_config_drive_second() {
        let disks = json!([
            {"size": 1},
            {"base": "iso", "type": "cdrom"},
            {"size": 1, "bus": "sata"},
            {"size": 1, "bus": "nvme"},
            {"size": 1},
        ]);
        let with = spec(disks.clone(), "openstack-disk");
        assert_eq!(
            names(&with),
            [
                (Some(0), "vda".to_owned()),
                (None, "vdb".to_owned()),
                (Some(1), "sda".to_owned()),
                (Some(2), "sdb".to_owned()),
                (Some(3), "nvme0".to_owned()),
                (Some(4), "vdc".to_owned()),
            ]
        );
        let devices = guest_devices(&with).expect("devices");
        assert_eq!(devices[2].bus, DiskBus::Usb);
        assert!(devices[2].cdrom);
        let without = spec(disks, "none");
        assert_eq!(names(&without)[1], (Some(1), "sda".to_owned()));
    }

    #[test]
    fn an_nvme_first_disk_puts_the_config_drive_on_virtio() {
        let devices = guest_devices(&spec(json!([{"size": 1, "bus": "nvme"}]), "openstack-disk"))
            .expect("devices");
        assert_eq!(devices[1].bus, DiskBus::Virtio);
        assert_eq!(devices[1].name, "vda");
    }

    #[test]
    fn what_validation_refuses_has_no_layout() {
        for disks in [
            json!([{"size": 1, "bus": "ide"}]),
            json!([{"size": 1, "type": "floppy"}]),
            json!([{"base": "iso", "type": "cdrom", "bus": "nvme"}]),
        ] {
            assert_eq!(guest_devices(&spec(disks, "openstack-disk")), None);
        }
        assert_eq!(
            guest_devices(&spec(json!([{"size": 1}]), "cloud-init")),
            None
        );
    }

    #[test]
    fn letters_run_past_z() {
        assert_eq!(letters(0), "a");
        assert_eq!(letters(25), "z");
        assert_eq!(letters(26), "aa");
        assert_eq!(letters(27), "ab");
        assert_eq!(letters(701), "zz");
        assert_eq!(letters(702), "aaa");
    }
}
