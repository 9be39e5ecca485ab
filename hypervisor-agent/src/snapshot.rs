//! `instance_snapshot`: an instance's disks captured into blob files
//! ([`sf_schema::snapshot`] has the request and the result).
//!
//! Contract:
//! - [`choose`] is pure: the laid-out disks a request takes, by the names
//!   `sf_schema::snapshot::choose` picks (the API names the same devices in its
//!   answers); a request that names no disk of the instance, or takes nothing, is
//!   [`SnapshotError::Choice`], not retried.
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

use sf_schema::devices::guest_devices;
use sf_schema::instance::InstanceSpec;
use sf_schema::snapshot::{ChoiceError, SnapshotRequest};
use tokio::process::Command;

use crate::FileError;
use crate::domain_xml::DiskLayout;

/// Why a snapshot could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The request takes no device of the instance.
    #[error(transparent)]
    Choice(#[from] ChoiceError),
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
            Self::Choice(ChoiceError::NoDevice { .. }) => "NoSuchDevice",
            Self::Choice(ChoiceError::NothingToSnapshot { .. }) => "NothingToSnapshot",
            Self::BadName(_) => "BadBlobName",
            Self::DiskMissing { .. } => "DiskMissing",
            Self::Convert(_) | Self::Hash(_) | Self::Io(_) => "SnapshotFailed",
        }
    }

    /// Whether trying again may succeed.
    pub fn retryable(&self) -> bool {
        !matches!(self, Self::Choice(_) | Self::BadName(_))
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

/// The disks `request` takes from `layout` (see the module contract): the names
/// [`sf_schema::snapshot::choose`] picks, with their files.
pub fn choose(
    spec: &InstanceSpec,
    layout: &[DiskLayout],
    request: &SnapshotRequest,
) -> Result<Vec<Chosen>, SnapshotError> {
    let devices = guest_devices(spec).unwrap_or_default();
    let names = sf_schema::snapshot::choose(&devices, request)?;
    Ok(names
        .into_iter()
        .filter_map(|device| {
            let d = layout.iter().find(|d| d.target == device)?;
            Some(Chosen {
                device,
                path: d.source.clone()?,
            })
        })
        .collect())
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

    #[test]
    fn the_chosen_devices_come_with_their_files() {
        let spec: InstanceSpec = serde_json::from_value(serde_json::json!({
            "cpus": 1, "memory": 512,
            "disks": [{"size": 1}, {"base": "iso", "type": "cdrom"}, {"size": 1}],
        }))
        .expect("spec");
        let paths = crate::domain_xml::InstancePaths::new(Path::new("/s"), "u-1");
        let input = crate::domain_xml::DomainInput {
            uid: "u-1",
            namespace: "demo",
            name: "web",
            spec: &spec,
            nics: &[],
            paths: &paths,
            cdrom_sources: &[],
            nvram_template: None,
        };
        let layout = crate::domain_xml::layout_disks(&input).expect("layout");
        let all = SnapshotRequest {
            all: true,
            ..SnapshotRequest::default()
        };
        let chosen = choose(&spec, &layout, &all).expect("all");
        assert_eq!(
            chosen,
            [
                Chosen {
                    device: "vda".into(),
                    path: paths.disk(0)
                },
                Chosen {
                    device: "vdc".into(),
                    path: paths.disk(2)
                },
            ]
        );
        let e = choose(
            &spec,
            &layout,
            &SnapshotRequest {
                device: Some("vdb".into()),
                ..SnapshotRequest::default()
            },
        )
        .expect_err("the config drive");
        assert_eq!(e.code(), "NoSuchDevice");
        assert!(!e.retryable());
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
