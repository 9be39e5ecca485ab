//! `blob_delete`: remove a collected Blob's file from this node, unless something on
//! the node still uses it.
//!
//! Contract:
//! - [`remove`] deletes `<blobs dir>/<blob>` (and a `<blob>.partial` a crashed fetch
//!   left) and reports whether a file was there ([`Removed`]). Idempotent: a file
//!   already gone is success.
//! - Never a file in use: first every file under the instances directory (two levels:
//!   `<instances>/<uid>/<disk>`) whose qcow2 header names the blob as its backing
//!   file, and every instance's image record (`images.json`) naming it, then every
//!   defined domain whose XML names the blob's path (a CD-ROM or raw
//!   disk on the blob itself; the caller passes those domain names). Paths are
//!   compared as written and as resolved (symlinks). Any user makes it
//!   [`RemoveError::InUse`], which carries them (its message only counts them: the
//!   caller logs the list); nothing is removed. Not retryable as an operation: the
//!   blob controller asks again later.
//! - The agent runs it under the `blob:<name>` lock, which `instance_create` also
//!   holds over the blob files it is made from until its disks back onto them and
//!   its image record names them: the in-use checks and the removal cannot interleave
//!   with a create.
//! - The blob name must be a plain file name (no `/`, not `.` or `..`), so a payload
//!   can never point outside the blobs directory.
//! - qcow2 headers are read directly ([`qcow2_backing`]: magic `QFI\xfb`, backing
//!   file offset at byte 8, its length at byte 16, big-endian); a file too short or
//!   of another format has no backing file.

use std::path::Path;

use crate::FileError;

use tokio::io::{AsyncReadExt, AsyncSeekExt};

/// The qcow2 magic.
const QCOW2_MAGIC: &[u8; 4] = b"QFI\xfb";
/// Longest backing file name read (qcow2 allows 1023 bytes).
const MAX_BACKING: usize = 1023;

/// Why a blob file was not removed.
#[derive(Debug, thiserror::Error)]
pub enum RemoveError {
    /// The blob name is not a plain file name.
    #[error("bad blob name {0:?}")]
    BadName(String),
    /// Something on this node still uses the file. The message counts the users
    /// only: it reaches the Blob's conditions, which the owning tenant reads, and the
    /// users may be other tenants' instances (the agent logs them).
    #[error("blob {blob} is in use on this node by {} disk file(s) or domain(s)", .users.len())]
    InUse {
        /// The blob.
        blob: String,
        /// Disk files backed by it, and domains naming it.
        users: Vec<String>,
    },
    /// A file operation failed.
    #[error(transparent)]
    Io(#[from] FileError),
}

impl RemoveError {
    /// The error report code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::BadName(_) => "BadBlobName",
            Self::InUse { .. } => "BlobInUse",
            Self::Io(_) => "BlobRemoveFailed",
        }
    }

    /// Whether the queue should retry: only I/O failures. A blob in use is asked
    /// about again by the blob controller, much later.
    pub fn retryable(&self) -> bool {
        matches!(self, Self::Io(_))
    }
}

/// What [`remove`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removed {
    /// The blob.
    pub blob: String,
    /// Whether its file was there (false: already gone).
    pub existed: bool,
}

/// The backing file named by a qcow2 header, when `header` (the file's first bytes)
/// is qcow2 and names one. Pure.
pub fn qcow2_backing(header: &[u8]) -> Option<(u64, usize)> {
    if header.len() < 20 || &header[..4] != QCOW2_MAGIC {
        return None;
    }
    let offset = u64::from_be_bytes(header[8..16].try_into().ok()?);
    let size = u32::from_be_bytes(header[16..20].try_into().ok()?);
    let size = usize::try_from(size).ok()?;
    (offset != 0 && size != 0 && size <= MAX_BACKING).then_some((offset, size))
}

/// The backing file name of the qcow2 file at `path`, if it has one.
async fn backing_of(path: &Path) -> Result<Option<String>, RemoveError> {
    let mut file = tokio::fs::File::open(path)
        .await
        .map_err(FileError::of("open", path))?;
    let mut header = [0u8; 20];
    let mut read = 0;
    while read < header.len() {
        let n = file
            .read(&mut header[read..])
            .await
            .map_err(FileError::of("read", path))?;
        if n == 0 {
            return Ok(None);
        }
        read += n;
    }
    let Some((offset, size)) = qcow2_backing(&header) else {
        return Ok(None);
    };
    file.seek(std::io::SeekFrom::Start(offset))
        .await
        .map_err(FileError::of("seek", path))?;
    let mut name = vec![0u8; size];
    if file.read_exact(&mut name).await.is_err() {
        return Ok(None);
    }
    Ok(Some(String::from_utf8_lossy(&name).into_owned()))
}

/// Whether both paths resolve to the same existing file (a symlinked or relative
/// storage path).
async fn same_file(a: &Path, b: &Path) -> bool {
    match (
        tokio::fs::canonicalize(a).await,
        tokio::fs::canonicalize(b).await,
    ) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// Disk files under `instances_dir` (`<uid>/<file>`) backed by `blob_path`.
pub async fn backing_users(
    instances_dir: &Path,
    blob_path: &Path,
) -> Result<Vec<String>, RemoveError> {
    let mut users = Vec::new();
    let mut dirs = match tokio::fs::read_dir(instances_dir).await {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(users),
        Err(e) => return Err(FileError::of("list", instances_dir)(e).into()),
    };
    let wanted = blob_path.to_string_lossy();
    while let Some(dir) = dirs
        .next_entry()
        .await
        .map_err(FileError::of("list", instances_dir))?
    {
        let dir = dir.path();
        if !dir.is_dir() {
            continue;
        }
        let mut files = tokio::fs::read_dir(&dir)
            .await
            .map_err(FileError::of("list", &dir))?;
        while let Some(file) = files
            .next_entry()
            .await
            .map_err(FileError::of("list", &dir))?
        {
            let path = file.path();
            if !path.is_file() {
                continue;
            }
            // The images an instance was defined from, which its next definition
            // reuses (a cdrom's image is no qcow2 backing file).
            if path.file_name().is_some_and(|n| n == "images.json") {
                if records(&path, blob_path).await {
                    users.push(path.display().to_string());
                }
                continue;
            }
            if let Some(backing) = backing_of(&path).await?
                && (backing == wanted
                    || Path::new(&backing) == blob_path
                    || same_file(Path::new(&backing), blob_path).await)
            {
                users.push(path.display().to_string());
            }
        }
    }
    users.sort();
    Ok(users)
}

/// Whether the image record at `record` names `blob_path` (an unreadable record
/// names nothing: the agent ignores it too).
async fn records(record: &Path, blob_path: &Path) -> bool {
    let Ok(bytes) = tokio::fs::read(record).await else {
        return false;
    };
    let Ok(images) = serde_json::from_slice::<crate::instance::RecordedImages>(&bytes) else {
        return false;
    };
    for path in images.paths() {
        if path == blob_path || same_file(path, blob_path).await {
            return true;
        }
    }
    false
}

/// Checks `blob` is a plain file name.
pub fn check_name(blob: &str) -> Result<(), RemoveError> {
    if blob.is_empty() || blob == "." || blob == ".." || blob.contains('/') || blob.contains('\0') {
        return Err(RemoveError::BadName(blob.to_owned()));
    }
    Ok(())
}

/// Removes `blob` from `blobs_dir` unless a disk under `instances_dir` is backed by
/// it or `domain_users` (domains whose XML names its path) is not empty.
pub async fn remove(
    blobs_dir: &Path,
    instances_dir: &Path,
    blob: &str,
    domain_users: Vec<String>,
) -> Result<Removed, RemoveError> {
    check_name(blob)?;
    let path = blobs_dir.join(blob);
    let mut users = backing_users(instances_dir, &path).await?;
    users.extend(domain_users.into_iter().map(|d| format!("domain {d}")));
    if !users.is_empty() {
        return Err(RemoveError::InUse {
            blob: blob.to_owned(),
            users,
        });
    }
    let partial = blobs_dir.join(format!("{blob}.partial"));
    match tokio::fs::remove_file(&partial).await {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(RemoveError::Io(FileError {
                action: "remove",
                path: partial,
                source,
            }));
        }
    }
    let existed = match tokio::fs::remove_file(&path).await {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(source) => {
            return Err(RemoveError::Io(FileError {
                action: "remove",
                path,
                source,
            }));
        }
    };
    Ok(Removed {
        blob: blob.to_owned(),
        existed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qcow2_headers_name_their_backing_file() {
        let mut h = Vec::from(*QCOW2_MAGIC);
        h.extend(3u32.to_be_bytes());
        h.extend(512u64.to_be_bytes());
        h.extend(20u32.to_be_bytes());
        assert_eq!(qcow2_backing(&h), Some((512, 20)));
        // No backing file: offset 0.
        let mut none = h.clone();
        none[8..16].copy_from_slice(&0u64.to_be_bytes());
        assert_eq!(qcow2_backing(&none), None);
        // Another format, or too short.
        let mut raw = h.clone();
        raw[0] = b'X';
        assert_eq!(qcow2_backing(&raw), None);
        assert_eq!(qcow2_backing(&h[..19]), None);
        // An absurd length is not trusted.
        let mut long = h;
        long[16..20].copy_from_slice(&4096u32.to_be_bytes());
        assert_eq!(qcow2_backing(&long), None);
    }

    #[test]
    fn blob_names_stay_in_the_blobs_directory() {
        for bad in ["", ".", "..", "../etc/passwd", "a/b", "a\0b"] {
            assert!(
                matches!(check_name(bad), Err(RemoveError::BadName(_))),
                "{bad:?}"
            );
        }
        assert!(check_name("0b0b0b0b-0000-4000-8000-000000000001").is_ok());
    }

    #[tokio::test]
    async fn a_file_in_use_as_a_backing_file_is_kept_and_a_free_one_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let blobs = dir.path().join("blobs");
        let instances = dir.path().join("instances");
        std::fs::create_dir_all(&blobs).expect("blobs");
        std::fs::create_dir_all(instances.join("i-1")).expect("instances");
        let blob = "0b0b0b0b-0000-4000-8000-000000000001";
        let base = blobs.join(blob);
        let status = std::process::Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&base)
            .arg("1M")
            .status()
            .expect("qemu-img");
        assert!(status.success());
        let overlay = instances.join("i-1").join("vda.qcow2");
        let status = std::process::Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
            .arg(&base)
            .arg(&overlay)
            .status()
            .expect("qemu-img");
        assert!(status.success());
        std::fs::write(instances.join("i-1").join("config.iso"), b"not qcow2").expect("iso");

        match remove(&blobs, &instances, blob, Vec::new()).await {
            Err(RemoveError::InUse { users, .. }) => {
                assert_eq!(users, vec![overlay.display().to_string()]);
            }
            other => panic!("expected InUse, got {other:?}"),
        }
        assert!(base.exists(), "a backing file is never removed");

        // A domain naming the file keeps it too.
        std::fs::remove_file(&overlay).expect("rm overlay");
        let err = remove(&blobs, &instances, blob, vec!["sf:i-2".into()])
            .await
            .expect_err("domain");
        match &err {
            RemoveError::InUse { users, .. } => {
                assert_eq!(users, &vec!["domain sf:i-2".to_string()])
            }
            other => panic!("expected InUse, got {other:?}"),
        }
        assert!(
            err.to_string().ends_with("by 1 disk file(s) or domain(s)"),
            "no names in the message: {err}"
        );
        assert!(!err.retryable());

        std::fs::write(blobs.join(format!("{blob}.partial")), b"half").expect("partial");
        let removed = remove(&blobs, &instances, blob, Vec::new())
            .await
            .expect("free");
        assert!(removed.existed);
        assert!(!base.exists());
        assert!(!blobs.join(format!("{blob}.partial")).exists());
        // Again: already gone is success.
        let again = remove(&blobs, &instances, blob, Vec::new())
            .await
            .expect("again");
        assert!(!again.existed);
    }
}
