//! The node UUID: `SHAKENFIST_NODE_UUID`, else `<STORAGE_PATH>/node_uuid`, else a new
//! one written there (atomically, so a crash never leaves a partial file).

use std::path::{Path, PathBuf};

/// Why the node UUID could not be determined.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The file could not be read or written.
    #[error(transparent)]
    Io(#[from] crate::FileError),
    /// The file holds something that is not a UUID.
    #[error("{path} does not hold a UUID: {content:?}")]
    NotAUuid {
        /// The file.
        path: PathBuf,
        /// Its content.
        content: String,
    },
}

/// The node UUID (see the module contract).
pub fn node_uuid(configured: Option<&str>, storage_path: &Path) -> Result<String, IdentityError> {
    if let Some(u) = configured {
        return Ok(u.to_owned());
    }
    let path = storage_path.join("node_uuid");
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let text = text.trim();
            return uuid::Uuid::parse_str(text)
                .map(|u| u.to_string())
                .map_err(|_| IdentityError::NotAUuid {
                    path: path.clone(),
                    content: text.to_owned(),
                });
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(IdentityError::Io(crate::FileError {
                action: "read",
                path,
                source,
            }));
        }
    }
    std::fs::create_dir_all(storage_path).map_err(crate::FileError::of("create", storage_path))?;
    let uuid = uuid::Uuid::new_v4().to_string();
    let tmp = storage_path.join(".node_uuid.tmp");
    std::fs::write(&tmp, format!("{uuid}\n")).map_err(crate::FileError::of("write", &tmp))?;
    std::fs::rename(&tmp, &path).map_err(crate::FileError::of("rename", &path))?;
    Ok(uuid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configured_then_stored_then_generated() {
        let dir = tempfile::tempdir().expect("tempdir");
        let configured = "0b3b8f3e-8a8c-4bd1-9c7e-0c1f2d3e4f50";
        assert_eq!(
            node_uuid(Some(configured), dir.path()).expect("configured"),
            configured
        );
        let made = node_uuid(None, dir.path()).expect("generated");
        assert!(uuid::Uuid::parse_str(&made).is_ok());
        assert_eq!(node_uuid(None, dir.path()).expect("stored"), made);
        std::fs::write(dir.path().join("node_uuid"), "garbage").expect("write");
        let err = node_uuid(None, dir.path()).expect_err("garbage");
        assert!(err.to_string().contains("does not hold a UUID"), "{err}");
    }
}
