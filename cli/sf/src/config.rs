//! The `sf` configuration file and its environment overrides.
//!
//! Contract: the file is `$SF_CONFIG` if set, else `~/.config/sf/config.yaml`
//! (`$XDG_CONFIG_HOME/sf/config.yaml` when that is set); it is YAML with `apiUrl`,
//! `namespace`, `key`, `token`, `caFile`, and is written with mode 0600 (its directory
//! 0700). `SHAKENFIST_API_URL`, `SHAKENFIST_NAMESPACE`, `SHAKENFIST_KEY`,
//! `SHAKENFIST_TOKEN` and `SF_CA_FILE` override the file's values (the names the Shaken
//! Fist client and `sf` plugins use); a key, when present, wins over a token.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Errors reading or writing the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// No home directory to put the file in.
    #[error("cannot find the configuration file: set SF_CONFIG or HOME")]
    NoLocation,
    /// Reading the file failed.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid YAML of the expected shape.
    #[error("parsing {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The YAML error.
        #[source]
        source: serde_norway::Error,
    },
    /// Writing the file failed.
    #[error("writing {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Serializing the file failed.
    #[error("serializing the configuration: {0}")]
    Serialize(#[source] serde_norway::Error),
}

/// What the file holds (every field optional).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FileConfig {
    /// sf-api's base URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_url: Option<String>,
    /// The namespace to authenticate in and work in by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// A namespace key, in clear.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// A token, when logged in with one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// A CA file (PEM) to trust for an `https://` API URL instead of the system's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
}

/// The configuration file's location.
pub fn config_path() -> Result<PathBuf, ConfigError> {
    if let Some(p) = std::env::var_os("SF_CONFIG").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    if let Some(xdg) = std::env::var_os("XDG_CONFIG_HOME").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(xdg).join("sf").join("config.yaml"));
    }
    match std::env::var_os("HOME").filter(|p| !p.is_empty()) {
        Some(home) => Ok(PathBuf::from(home)
            .join(".config")
            .join("sf")
            .join("config.yaml")),
        None => Err(ConfigError::NoLocation),
    }
}

/// Reads the file; a missing file is an empty configuration.
pub fn load(path: &Path) -> Result<FileConfig, ConfigError> {
    match std::fs::read_to_string(path) {
        Ok(text) if text.trim().is_empty() => Ok(FileConfig::default()),
        Ok(text) => serde_norway::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source,
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(FileConfig::default()),
        Err(source) => Err(ConfigError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Writes the file with mode 0600 (replacing it atomically).
pub fn save(path: &Path, config: &FileConfig) -> Result<(), ConfigError> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    let text = serde_norway::to_string(config).map_err(ConfigError::Serialize)?;
    let write_err = |source| ConfigError::Write {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(write_err)?;
    }
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(write_err)?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(write_err)?;
    file.write_all(text.as_bytes()).map_err(write_err)?;
    file.sync_all().map_err(write_err)?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(write_err)
}

/// The file's values with the environment's overrides applied.
pub fn effective(file: FileConfig) -> FileConfig {
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let mut c = file;
    if let Some(v) = env("SHAKENFIST_API_URL") {
        c.api_url = Some(v);
    }
    if let Some(v) = env("SHAKENFIST_NAMESPACE") {
        c.namespace = Some(v);
    }
    if let Some(v) = env(sf_client::CA_FILE_ENV) {
        c.ca_file = Some(v);
    }
    if let Some(v) = env("SHAKENFIST_KEY") {
        c.key = Some(v);
        c.token = None;
    } else if let Some(v) = env("SHAKENFIST_TOKEN") {
        c.token = Some(v);
        c.key = None;
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_and_load_round_trip_with_mode_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub").join("config.yaml");
        let config = FileConfig {
            api_url: Some("http://127.0.0.1:13000".into()),
            namespace: Some("demo".into()),
            key: Some("k".into()),
            token: None,
            ca_file: None,
        };
        save(&path, &config).expect("save");
        assert_eq!(load(&path).expect("load"), config);
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(text.contains("apiUrl: http://127.0.0.1:13000"), "{text}");
    }

    #[test]
    fn missing_file_is_empty() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(
            load(&dir.path().join("nope.yaml")).expect("load"),
            FileConfig::default()
        );
    }
}
