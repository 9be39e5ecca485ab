//! Instance disk files: qcow2 disks made with `qemu-img` and the OpenStack config drive.
//!
//! Contract:
//! - [`ensure_disk`] never touches a disk file that exists (it holds the guest's data);
//!   otherwise it creates a qcow2 overlay on the base image when one is given
//!   (`qemu-img create -f qcow2 -F <base format> -b <base> FILE [SIZE]`), else a plain
//!   qcow2 of the asked size. A base that is given but missing is
//!   [`DiskError::BaseMissing`] (retryable: it may still arrive), never a blank disk
//!   in its place. A base is opened as qcow2 only when its header says qcow2 and
//!   names no other file, else as raw (`-F raw`: never probed, so a vmdk descriptor's
//!   extents or any other format's references are only bytes to the guest); a qcow2
//!   header naming a backing file or an external data file would have qemu open
//!   hypervisor files for the guest, and is [`DiskError::UnsafeBase`] (not retried).
//!   The header is read in Rust ([`base_format_of`]): nothing is run on the file. Files are written under a temporary name and
//!   renamed, so a crash never leaves a half-made disk behind the real name.
//! - [`config_drive_files`] is pure: the files of an `openstack-disk` config drive
//!   (`openstack/latest/meta_data.json`, `network_data.json`, `vendor_data.json` and,
//!   when there is user data, `user_data`). [`write_config_drive`] renders them into an
//!   ISO 9660 image with `genisoimage -J -R -V config-2`, replacing the old one
//!   atomically; it is called on every power-on.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use base64::Engine;
use serde_json::{Value, json};
use tokio::process::Command;

/// Why a disk file could not be made.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// A file operation failed.
    #[error(transparent)]
    Io(#[from] crate::FileError),
    /// A tool could not be run or failed.
    #[error("{tool} failed: {message}")]
    Tool {
        /// `qemu-img` or `genisoimage`.
        tool: &'static str,
        /// Its stderr or the spawn error.
        message: String,
    },
    /// A disk's base image is not on this node.
    #[error("spec.disks[{index}]: base image {path} is not on this node")]
    BaseMissing {
        /// The disk's index in `spec.disks`.
        index: usize,
        /// The base image path.
        path: PathBuf,
    },
    /// A disk's file is gone after the instance was created: a later definition
    /// (power on, start-up restore) never makes it anew, blank or from its base, which
    /// would hand the guest a reset disk as if nothing happened.
    #[error("spec.disks[{index}]: disk file {path} is missing; it is not remade")]
    DiskMissing {
        /// The disk index.
        index: usize,
        /// The missing file.
        path: PathBuf,
    },
    /// A disk's file is missing and its base names no image that resolves now: it is
    /// not remade blank.
    #[error(
        "spec.disks[{index}]: the disk file is missing and its base {base} does not resolve to an image on this node"
    )]
    BaseUnresolved {
        /// The disk index.
        index: usize,
        /// The base as the spec names it.
        base: String,
    },
    /// A base image refers to other files or is not raw or qcow2.
    #[error("spec.disks[{index}]: base image {path} is refused: {reason}")]
    UnsafeBase {
        /// The disk index.
        index: usize,
        /// The base image path.
        path: PathBuf,
        /// What makes it unsafe.
        reason: String,
    },
    /// A disk has neither a size nor a usable base image.
    #[error("spec.disks[{index}]: no size and no base image available on this node")]
    NoSize {
        /// The disk index.
        index: usize,
    },
    /// The user data is not valid base64.
    #[error("spec.userData: not valid base64: {0}")]
    UserData(String),
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> DiskError {
    let failed = crate::FileError::of(action, path);
    move |source| DiskError::Io(failed(source))
}

pub(crate) async fn run(tool: &'static str, cmd: &mut Command) -> Result<String, DiskError> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| DiskError::Tool {
            tool,
            message: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(DiskError::Tool {
            tool,
            message: format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The format `qemu-img info` reports for `path` (`qcow2`, `raw`, ...).
pub async fn image_format(path: &Path) -> Result<String, DiskError> {
    let out = run(
        "qemu-img",
        Command::new("qemu-img")
            .args(["info", "--output=json", "-U"])
            .arg(path),
    )
    .await?;
    let info: Value = serde_json::from_str(&out).map_err(|e| DiskError::Tool {
        tool: "qemu-img",
        message: format!("unreadable info output: {e}"),
    })?;
    Ok(info["format"].as_str().unwrap_or("raw").to_owned())
}

/// The format a base image is opened in, from its first bytes: `qcow2` for a qcow2
/// header that names no other file, `raw` for anything else (qemu is then told
/// `-F raw` and never probes it, so a vmdk descriptor or any other format's header is
/// only bytes to the guest). A qcow2 header with a backing file or an external data
/// file is refused with the reason (see the module contract). Nothing is run on the
/// file: `qemu-img info` itself would open what a hostile header names.
pub fn base_format_of(header: &[u8]) -> Result<&'static str, String> {
    let be64 = |at: usize| {
        header
            .get(at..at + 8)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map_or(0, u64::from_be_bytes)
    };
    if !header.starts_with(b"QFI\xfb") {
        return Ok("raw");
    }
    let version = header
        .get(4..8)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map_or(0, u32::from_be_bytes);
    if be64(8) != 0 {
        return Err("its qcow2 header names a backing file".into());
    }
    // Version 3: incompatible feature bit 2 is an external data file.
    if version >= 3 && be64(72) & (1 << 2) != 0 {
        return Err("its qcow2 header names an external data file".into());
    }
    Ok("qcow2")
}

/// [`base_format_of`] the first bytes of base image `path`.
pub async fn base_format(index: usize, path: &Path) -> Result<&'static str, DiskError> {
    use tokio::io::AsyncReadExt;
    let mut header = Vec::with_capacity(512);
    let file = tokio::fs::File::open(path)
        .await
        .map_err(io("open", path))?;
    file.take(512)
        .read_to_end(&mut header)
        .await
        .map_err(io("read", path))?;
    base_format_of(&header).map_err(|reason| DiskError::UnsafeBase {
        index,
        path: path.to_owned(),
        reason,
    })
}

fn tmp_name(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Makes `path` (see the module contract). `index` names the disk in errors; `size` is
/// in GiB. Returns true when a file was created.
pub async fn ensure_disk(
    path: &Path,
    index: usize,
    size_gib: Option<u64>,
    base: Option<&Path>,
) -> Result<bool, DiskError> {
    if tokio::fs::try_exists(path)
        .await
        .map_err(io("check", path))?
    {
        return Ok(false);
    }
    if let Some(parent) = path.parent() {
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(io("create directory", parent))?;
    }
    let tmp = tmp_name(path);
    let _ = tokio::fs::remove_file(&tmp).await;
    if let Some(b) = base
        && !tokio::fs::try_exists(b).await.map_err(io("check", b))?
    {
        return Err(DiskError::BaseMissing {
            index,
            path: b.to_owned(),
        });
    }
    let mut cmd = Command::new("qemu-img");
    cmd.args(["create", "-q", "-f", "qcow2"]);
    match base {
        Some(b) => {
            let format = base_format(index, b).await?;
            cmd.arg("-F").arg(format).arg("-b").arg(b).arg(&tmp);
            if let Some(size) = size_gib {
                cmd.arg(format!("{size}G"));
            }
        }
        None => {
            let size = size_gib.ok_or(DiskError::NoSize { index })?;
            cmd.arg(&tmp).arg(format!("{size}G"));
        }
    }
    run("qemu-img", &mut cmd).await?;
    tokio::fs::rename(&tmp, path)
        .await
        .map_err(io("rename", path))?;
    Ok(true)
}

/// One NIC as the guest sees it in `network_data.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct GuestNic {
    /// The MAC address.
    pub mac: String,
    /// The MTU.
    pub mtu: u32,
    /// The address, when allocated.
    pub ipv4: Option<Ipv4Addr>,
    /// The network's netblock (`10.0.0.0/24`).
    pub netblock: String,
    /// The network uid.
    pub network_uid: String,
}

/// What the config drive describes.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigDriveInput {
    /// The instance uid.
    pub uid: String,
    /// The instance name (also the hostname).
    pub name: String,
    /// The namespace.
    pub namespace: String,
    /// The SSH public key.
    pub ssh_key: Option<String>,
    /// Base64 user data from the spec.
    pub user_data: Option<String>,
    /// The NICs in order.
    pub nics: Vec<GuestNic>,
    /// The DNS domain (`<namespace>.<zone>`).
    pub dns_domain: String,
}

/// Netmask and gateway (`.1`) of a netblock like `10.0.0.0/24`.
fn netmask_and_gateway(netblock: &str) -> Option<(Ipv4Addr, Ipv4Addr)> {
    let (addr, prefix) = netblock.split_once('/')?;
    let addr: Ipv4Addr = addr.parse().ok()?;
    let prefix: u32 = prefix.parse().ok()?;
    if prefix > 32 {
        return None;
    }
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix)
    };
    let network = u32::from(addr) & mask;
    Some((
        Ipv4Addr::from(mask),
        Ipv4Addr::from(network.wrapping_add(1)),
    ))
}

/// The files of the config drive, by path inside the image (see the module contract).
pub fn config_drive_files(
    input: &ConfigDriveInput,
) -> Result<BTreeMap<String, Vec<u8>>, DiskError> {
    let mut public_keys = serde_json::Map::new();
    if let Some(key) = &input.ssh_key {
        public_keys.insert("sshkey".into(), json!(key));
    }
    let meta = json!({
        "uuid": input.uid,
        "name": input.name,
        "hostname": format!("{}.{}", input.name, input.dns_domain),
        "availability_zone": "shakenfist",
        "project_id": input.namespace,
        "launch_index": 0,
        "public_keys": public_keys,
        "devices": [],
    });
    let mut links = Vec::new();
    let mut networks = Vec::new();
    let mut services = Vec::new();
    for (i, nic) in input.nics.iter().enumerate() {
        let link = format!("eth{i}");
        links.push(json!({
            "id": link,
            "type": "vif",
            "ethernet_mac_address": nic.mac,
            "mtu": nic.mtu,
            "vif_id": nic.network_uid,
        }));
        match (nic.ipv4, netmask_and_gateway(&nic.netblock)) {
            (Some(ip), Some((mask, gateway))) => {
                let routes = if i == 0 {
                    vec![
                        json!({"network": "0.0.0.0", "netmask": "0.0.0.0", "gateway": gateway.to_string()}),
                    ]
                } else {
                    Vec::new()
                };
                networks.push(json!({
                    "id": format!("network{i}"),
                    "link": link,
                    "type": "ipv4",
                    "ip_address": ip.to_string(),
                    "netmask": mask.to_string(),
                    "routes": routes,
                    "network_id": nic.network_uid,
                }));
                if i == 0 {
                    services.push(json!({"type": "dns", "address": gateway.to_string()}));
                }
            }
            _ => networks.push(json!({
                "id": format!("network{i}"),
                "link": link,
                "type": "ipv4_dhcp",
                "network_id": nic.network_uid,
            })),
        }
    }
    let network = json!({"links": links, "networks": networks, "services": services});
    let mut files = BTreeMap::new();
    let pretty = |v: &Value| serde_json::to_vec_pretty(v).unwrap_or_default();
    files.insert("openstack/latest/meta_data.json".into(), pretty(&meta));
    files.insert(
        "openstack/latest/network_data.json".into(),
        pretty(&network),
    );
    files.insert("openstack/latest/vendor_data.json".into(), b"{}".to_vec());
    if let Some(data) = &input.user_data {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(data.trim())
            .map_err(|e| DiskError::UserData(e.to_string()))?;
        files.insert("openstack/latest/user_data".into(), decoded);
    }
    Ok(files)
}

/// Builds the config drive ISO at `path` (see the module contract).
pub async fn write_config_drive(path: &Path, input: &ConfigDriveInput) -> Result<(), DiskError> {
    let files = config_drive_files(input)?;
    let parent = path.parent().unwrap_or(Path::new("."));
    tokio::fs::create_dir_all(parent)
        .await
        .map_err(io("create directory", parent))?;
    let staging = tempfile_dir(parent).await?;
    let result = async {
        for (name, data) in &files {
            let file = staging.join(name);
            if let Some(dir) = file.parent() {
                tokio::fs::create_dir_all(dir)
                    .await
                    .map_err(io("create directory", dir))?;
            }
            tokio::fs::write(&file, data)
                .await
                .map_err(io("write", &file))?;
        }
        let tmp = tmp_name(path);
        run(
            "genisoimage",
            Command::new("genisoimage")
                .args(["-quiet", "-J", "-R", "-V", "config-2", "-o"])
                .arg(&tmp)
                .arg(&staging),
        )
        .await?;
        tokio::fs::rename(&tmp, path)
            .await
            .map_err(io("rename", path))
    }
    .await;
    let _ = tokio::fs::remove_dir_all(&staging).await;
    result
}

async fn tempfile_dir(parent: &Path) -> Result<PathBuf, DiskError> {
    let dir = parent.join(format!(".config-drive-{}", uuid::Uuid::new_v4().simple()));
    tokio::fs::create_dir_all(&dir)
        .await
        .map_err(io("create directory", &dir))?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bases_are_qcow2_without_other_files_or_raw() {
        let qcow2 = |version: u32, backing: u64, incompatible: u64| {
            let mut h = vec![0u8; 104];
            h[..4].copy_from_slice(b"QFI\xfb");
            h[4..8].copy_from_slice(&version.to_be_bytes());
            h[8..16].copy_from_slice(&backing.to_be_bytes());
            h[72..80].copy_from_slice(&incompatible.to_be_bytes());
            h
        };
        assert_eq!(base_format_of(&qcow2(3, 0, 0)), Ok("qcow2"));
        assert_eq!(
            base_format_of(&qcow2(2, 0, 4)),
            Ok("qcow2"),
            "v2 has no such bit"
        );
        assert!(base_format_of(&qcow2(3, 104, 0)).is_err_and(|e| e.contains("backing")));
        assert!(base_format_of(&qcow2(3, 0, 4)).is_err_and(|e| e.contains("data file")));
        let vmdk = b"# Disk DescriptorFile\nRW 8 FLAT \"/etc/shadow\" 0\n";
        assert_eq!(base_format_of(vmdk), Ok("raw"));
        assert_eq!(base_format_of(b""), Ok("raw"));
    }

    fn input() -> ConfigDriveInput {
        ConfigDriveInput {
            uid: "u-1".into(),
            name: "web-1".into(),
            namespace: "demo".into(),
            ssh_key: Some("ssh-ed25519 AAAA test".into()),
            user_data: Some(base64::engine::general_purpose::STANDARD.encode("#cloud-config\n")),
            nics: vec![GuestNic {
                mac: "02:00:00:00:00:01".into(),
                mtu: 7950,
                ipv4: Some(Ipv4Addr::new(10, 0, 0, 7)),
                netblock: "10.0.0.0/24".into(),
                network_uid: "n-1".into(),
            }],
            dns_domain: "demo.sf".into(),
        }
    }

    #[test]
    fn config_drive_describes_the_instance() {
        let files = config_drive_files(&input()).expect("files");
        let meta: Value =
            serde_json::from_slice(&files["openstack/latest/meta_data.json"]).expect("json");
        assert_eq!(meta["uuid"], "u-1");
        assert_eq!(meta["hostname"], "web-1.demo.sf");
        assert_eq!(meta["public_keys"]["sshkey"], "ssh-ed25519 AAAA test");
        let net: Value =
            serde_json::from_slice(&files["openstack/latest/network_data.json"]).expect("json");
        assert_eq!(net["links"][0]["ethernet_mac_address"], "02:00:00:00:00:01");
        assert_eq!(net["networks"][0]["ip_address"], "10.0.0.7");
        assert_eq!(net["networks"][0]["netmask"], "255.255.255.0");
        assert_eq!(net["networks"][0]["routes"][0]["gateway"], "10.0.0.1");
        assert_eq!(files["openstack/latest/user_data"], b"#cloud-config\n");
    }

    #[test]
    fn bad_user_data_is_named() {
        let mut i = input();
        i.user_data = Some("%%%".into());
        let err = config_drive_files(&i).expect_err("not base64");
        assert!(err.to_string().starts_with("spec.userData"), "{err}");
    }

    #[test]
    fn netmask_arithmetic() {
        assert_eq!(
            netmask_and_gateway("192.168.1.128/25"),
            Some((
                Ipv4Addr::new(255, 255, 255, 128),
                Ipv4Addr::new(192, 168, 1, 129)
            ))
        );
        assert_eq!(netmask_and_gateway("nope"), None);
    }

    /// An image whose header names a host file never backs a guest disk.
    #[tokio::test]
    async fn a_base_that_names_another_file_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let secret = dir.path().join("host-secret");
        std::fs::write(&secret, b"not for guests").expect("secret");
        let sneaky = dir.path().join("sneaky.qcow2");
        let mut cmd = Command::new("qemu-img");
        cmd.args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
            .arg(&secret)
            .arg(&sneaky)
            .arg("1M");
        run("qemu-img", &mut cmd).await.expect("sneaky image");
        let disk = dir.path().join("inst/disk-0.qcow2");
        let err = ensure_disk(&disk, 0, Some(1), Some(&sneaky))
            .await
            .expect_err("refused");
        assert!(
            matches!(&err, DiskError::UnsafeBase { index: 0, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("backing file"), "{err}");
        assert!(!disk.exists(), "no disk made");
        let data = dir.path().join("sneaky-data.qcow2");
        let mut cmd = Command::new("qemu-img");
        cmd.args(["create", "-q", "-f", "qcow2", "-o"])
            .arg(format!(
                "data_file={}",
                dir.path().join("host-device").display()
            ))
            .arg(&data)
            .arg("1M");
        run("qemu-img", &mut cmd).await.expect("data-file image");
        let err = ensure_disk(&disk, 0, Some(1), Some(&data))
            .await
            .expect_err("refused");
        assert!(err.to_string().contains("external data file"), "{err}");
        assert!(!disk.exists(), "no disk made");
    }

    #[tokio::test]
    async fn disks_are_made_once_and_overlay_their_base() {
        let dir = tempfile::tempdir().expect("tempdir");
        let base = dir.path().join("base.qcow2");
        assert!(ensure_disk(&base, 0, Some(1), None).await.expect("base"));
        assert_eq!(image_format(&base).await.expect("format"), "qcow2");
        let overlay = dir.path().join("inst/disk-0.qcow2");
        assert!(
            ensure_disk(&overlay, 0, Some(2), Some(&base))
                .await
                .expect("overlay")
        );
        let info = run(
            "qemu-img",
            Command::new("qemu-img")
                .args(["info", "--output=json", "-U"])
                .arg(&overlay),
        )
        .await
        .expect("info");
        let info: Value = serde_json::from_str(&info).expect("json");
        assert_eq!(info["backing-filename"], base.to_string_lossy().as_ref());
        assert_eq!(info["virtual-size"], 2u64 << 30);
        // A second call leaves the file alone.
        assert!(
            !ensure_disk(&overlay, 0, Some(2), Some(&base))
                .await
                .expect("again")
        );
        // No base and no size: a clear error.
        let err = ensure_disk(&dir.path().join("x.qcow2"), 3, None, None)
            .await
            .expect_err("no size");
        assert_eq!(
            err.to_string(),
            "spec.disks[3]: no size and no base image available on this node"
        );
        // A missing base is an error, never a blank disk in its place.
        let plain = dir.path().join("plain.qcow2");
        let absent = dir.path().join("absent");
        let err = ensure_disk(&plain, 2, Some(1), Some(&absent))
            .await
            .expect_err("no base");
        assert_eq!(
            err.to_string(),
            format!(
                "spec.disks[2]: base image {} is not on this node",
                absent.display()
            )
        );
        assert!(!plain.exists());
    }

    #[tokio::test]
    async fn config_drive_is_an_iso_labelled_config_2() {
        let dir = tempfile::tempdir().expect("tempdir");
        let iso = dir.path().join("config-drive.iso");
        write_config_drive(&iso, &input()).await.expect("iso");
        let data = std::fs::read(&iso).expect("read");
        // ISO 9660: "CD001" at 32769, volume id at 32808.
        assert_eq!(&data[32769..32774], b"CD001");
        assert_eq!(&data[32808..32816], b"config-2");
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .expect("list")
            .filter_map(Result::ok)
            .map(|e| e.file_name())
            .collect();
        assert_eq!(leftovers.len(), 1, "{leftovers:?}");
    }
}
