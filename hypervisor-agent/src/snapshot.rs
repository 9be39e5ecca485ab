//! `instance_snapshot`: an instance's disks captured into blob files
//! ([`sf_schema::snapshot`] has the request and the result).
//!
//! Contract:
//! - [`choose`] is pure: the laid-out devices a request takes. `device` → that disk
//!   (a name that is not one of the instance's disks is [`SnapshotError::NoDevice`],
//!   listing the disks it has); `all` → every disk in device order; neither → the
//!   instance's first disk (`spec.disks[0]`). Cdroms and the config drive are never
//!   taken; a request that takes nothing is [`SnapshotError::NothingToSnapshot`].
//! - [`capture`] writes `<blobs>/<blob>` as a standalone qcow2 image of a disk file:
//!   `qemu-img convert -U -O qcow2` flattens the disk's backing chain, and `-U` reads a
//!   disk a running guest holds open. As with Shaken Fist's snapshots, a disk the
//!   guest writes during the copy may be captured torn (not even crash-consistent):
//!   power the instance off, or pause it, for a consistent image. It writes
//!   `<blob>.partial` (removed when the capture fails or is dropped; `qemu-img` is
//!   killed with it), fsyncs it, renames it and fsyncs the directory, so a crash never
//!   leaves a half-written or unsynced blob under the real name; a blob already there
//!   (a re-run after a crash past the rename) is not written again. It returns the
//!   blob's size and SHA-512.
//! - Errors say what failed and whether a retry may help: a missing disk file, a
//!   failed `qemu-img` or file operation may pass; a wrong device never does.

use std::path::{Path, PathBuf};

use sf_schema::snapshot::SnapshotRequest;
use tokio::process::Command;

use crate::FileError;
use crate::domain_xml::{DeviceKind, DiskLayout};

/// Why a snapshot could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The asked device is not one of the instance's disks.
    #[error("instance has no disk {device}; its disks are {}", .disks.join(", "))]
    NoDevice {
        /// The asked device.
        device: String,
        /// The disks it has.
        disks: Vec<String>,
    },
    /// Nothing to take: the first device is not a disk and neither `device` nor
    /// `all` was given, or the instance has no disk at all.
    #[error(
        "the instance's first device {first} is not a disk; name a disk with device, or set all"
    )]
    NothingToSnapshot {
        /// The first device.
        first: String,
    },
    /// The disk file is not on this node (the instance is not created here yet).
    #[error("disk {device} has no file at {}", .path.display())]
    DiskMissing {
        /// The device.
        device: String,
        /// Where its file should be.
        path: PathBuf,
    },
    /// The blob name is not a plain file name.
    #[error("bad blob name {0:?}")]
    BadName(String),
    /// `qemu-img convert` failed.
    #[error(transparent)]
    Convert(#[from] crate::disks::DiskError),
    /// The blob could not be read back for its checksum.
    #[error(transparent)]
    Hash(#[from] crate::artifact::FetchError),
    /// A file operation failed.
    #[error(transparent)]
    Io(#[from] FileError),
}

impl SnapshotError {
    /// The error report code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NoDevice { .. } => "NoSuchDevice",
            Self::NothingToSnapshot { .. } => "NothingToSnapshot",
            Self::BadName(_) => "BadBlobName",
            Self::DiskMissing { .. } => "DiskMissing",
            Self::Convert(_) | Self::Hash(_) | Self::Io(_) => "SnapshotFailed",
        }
    }

    /// Whether trying again may succeed.
    pub fn retryable(&self) -> bool {
        !matches!(
            self,
            Self::NoDevice { .. } | Self::NothingToSnapshot { .. } | Self::BadName(_)
        )
    }
}

/// One disk to take: its device name and file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chosen {
    /// The guest device name.
    pub device: String,
    /// The disk file.
    pub path: PathBuf,
}

/// The disks `request` takes from `layout` (see the module contract).
pub fn choose(
    layout: &[DiskLayout],
    request: &SnapshotRequest,
) -> Result<Vec<Chosen>, SnapshotError> {
    let disks: Vec<&DiskLayout> = layout
        .iter()
        .filter(|d| d.index.is_some() && d.kind == DeviceKind::Disk)
        .collect();
    let chosen = |d: &DiskLayout| {
        d.source.clone().map(|path| Chosen {
            device: d.target.clone(),
            path,
        })
    };
    if let Some(device) = &request.device {
        return disks
            .iter()
            .find(|d| &d.target == device)
            .and_then(|d| chosen(d))
            .map(|c| vec![c])
            .ok_or_else(|| SnapshotError::NoDevice {
                device: device.clone(),
                disks: disks.iter().map(|d| d.target.clone()).collect(),
            });
    }
    let taken: Vec<Chosen> = if request.all {
        disks.iter().filter_map(|d| chosen(d)).collect()
    } else {
        match layout.iter().find(|d| d.index == Some(0)) {
            Some(first) if first.kind == DeviceKind::Disk => chosen(first).into_iter().collect(),
            Some(first) => {
                return Err(SnapshotError::NothingToSnapshot {
                    first: first.target.clone(),
                });
            }
            None => Vec::new(),
        }
    };
    if taken.is_empty() {
        return Err(SnapshotError::NothingToSnapshot {
            first: "(none)".into(),
        });
    }
    Ok(taken)
}

/// Removes a `.partial` file when dropped, unless disarmed (a capture that fails,
/// or whose future is dropped midway, leaves nothing behind).
struct PartialFile(Option<PathBuf>);

impl Drop for PartialFile {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// `fsync` of `path` (a file, or a directory to make a rename in it durable).
async fn sync(path: &Path) -> Result<(), FileError> {
    let file = tokio::fs::File::open(path)
        .await
        .map_err(FileError::of("open", path))?;
    file.sync_all().await.map_err(FileError::of("fsync", path))
}

/// Captures `disk` (device `device`) into `<blobs_dir>/<blob>`; returns (size, sha512).
pub async fn capture(
    device: &str,
    disk: &Path,
    blobs_dir: &Path,
    blob: &str,
) -> Result<(u64, String), SnapshotError> {
    crate::blobs::check_name(blob).map_err(|_| SnapshotError::BadName(blob.to_owned()))?;
    let target = blobs_dir.join(blob);
    if tokio::fs::metadata(&target).await.is_err() {
        if tokio::fs::metadata(disk).await.is_err() {
            return Err(SnapshotError::DiskMissing {
                device: device.to_owned(),
                path: disk.to_owned(),
            });
        }
        tokio::fs::create_dir_all(blobs_dir)
            .await
            .map_err(FileError::of("create directory", blobs_dir))?;
        let partial = blobs_dir.join(format!("{blob}.partial"));
        let mut guard = PartialFile(Some(partial.clone()));
        // Killed with the future: an aborted operation leaves no writer behind to
        // race a re-run on the same `.partial`.
        crate::disks::run(
            "qemu-img",
            Command::new("qemu-img")
                .kill_on_drop(true)
                .args(["convert", "-U", "-O", "qcow2"])
                .arg(disk)
                .arg(&partial),
        )
        .await?;
        // Durable before it is published under its name: a re-run trusts a blob
        // that is there.
        sync(&partial).await?;
        tokio::fs::rename(&partial, &target)
            .await
            .map_err(FileError::of("rename", &partial))?;
        guard.0 = None;
        sync(blobs_dir).await?;
    }
    let (size, sha512, _) = crate::artifact::hash_file(&target).await?;
    Ok((size, sha512))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain_xml::Bus;

    fn device(index: Option<usize>, kind: DeviceKind, target: &str) -> DiskLayout {
        DiskLayout {
            index,
            kind,
            bus: Bus::Virtio,
            target: target.into(),
            source: Some(PathBuf::from(format!("/i/{target}"))),
            format: "qcow2",
        }
    }

    fn layout() -> Vec<DiskLayout> {
        vec![
            device(Some(0), DeviceKind::Disk, "vda"),
            device(None, DeviceKind::Disk, "vdb"), // the config drive
            device(Some(1), DeviceKind::Cdrom, "sda"),
            device(Some(2), DeviceKind::Disk, "vdc"),
        ]
    }

    fn names(chosen: &[Chosen]) -> Vec<&str> {
        chosen.iter().map(|c| c.device.as_str()).collect()
    }

    #[test]
    fn the_first_disk_one_device_or_all_disks() {
        let first = choose(&layout(), &SnapshotRequest::default()).expect("first");
        assert_eq!(names(&first), ["vda"]);
        assert_eq!(first[0].path, PathBuf::from("/i/vda"));
        let all = SnapshotRequest {
            all: true,
            ..SnapshotRequest::default()
        };
        assert_eq!(
            names(&choose(&layout(), &all).expect("all")),
            ["vda", "vdc"]
        );
        let one = SnapshotRequest {
            device: Some("vdc".into()),
            ..SnapshotRequest::default()
        };
        assert_eq!(names(&choose(&layout(), &one).expect("one")), ["vdc"]);
    }

    #[test]
    fn cdroms_and_the_config_drive_are_never_taken() {
        for device in ["vdb", "sda", "vdz"] {
            let request = SnapshotRequest {
                device: Some(device.into()),
                ..SnapshotRequest::default()
            };
            let e = choose(&layout(), &request).expect_err(device);
            assert_eq!(
                e.to_string(),
                format!("instance has no disk {device}; its disks are vda, vdc")
            );
            assert!(!e.retryable());
        }
        let cdrom_first = vec![device(Some(0), DeviceKind::Cdrom, "sda")];
        let e = choose(&cdrom_first, &SnapshotRequest::default()).expect_err("cdrom");
        assert_eq!(e.code(), "NothingToSnapshot");
        let all = SnapshotRequest {
            all: true,
            ..SnapshotRequest::default()
        };
        let e = choose(&cdrom_first, &all).expect_err("no disk at all");
        assert_eq!(e.code(), "NothingToSnapshot");
    }

    #[tokio::test]
    async fn a_capture_is_a_standalone_qcow2_with_its_checksum() {
        let dir = tempfile::tempdir().expect("tempdir");
        let base = dir.path().join("base.qcow2");
        crate::disks::ensure_disk(&base, 0, Some(1), None)
            .await
            .expect("base");
        let disk = dir.path().join("disk-0.qcow2");
        crate::disks::ensure_disk(&disk, 0, Some(1), Some(&base))
            .await
            .expect("overlay");
        let blobs = dir.path().join("blobs");
        let blob = "11111111-1111-4111-8111-111111111111";
        let (size, sha512) = capture("vda", &disk, &blobs, blob).await.expect("capture");
        let file = blobs.join(blob);
        assert_eq!(std::fs::metadata(&file).expect("blob").len(), size);
        assert_eq!(sha512.len(), 128);
        assert_eq!(
            crate::disks::image_format(&file).await.expect("format"),
            "qcow2"
        );
        // Flattened: no backing file, unlike the disk it came from.
        let header = std::fs::read(&file).expect("read");
        assert_eq!(crate::blobs::qcow2_backing(&header), None);
        let disk_header = std::fs::read(&disk).expect("read");
        assert!(crate::blobs::qcow2_backing(&disk_header).is_some());
        assert!(!blobs.join(format!("{blob}.partial")).exists());
        // A re-run keeps the blob and reports the same checksum.
        let again = capture("vda", &disk, &blobs, blob).await.expect("again");
        assert_eq!(again, (size, sha512));
        // A disk that is not there is retryable; a bad blob name writes nothing.
        let e = capture(
            "vdb",
            &dir.path().join("nope"),
            &blobs,
            "22222222-2222-4222-8222-222222222222",
        )
        .await
        .expect_err("missing");
        assert!(matches!(e, SnapshotError::DiskMissing { .. }) && e.retryable());
        assert!(capture("vda", &disk, &blobs, "../x").await.is_err());
    }
}
