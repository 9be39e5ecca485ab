//! Plugins: `sf foo ARGS` runs `sf-foo ARGS` found on PATH (like git and kubectl).
//!
//! Contract: [`find`] returns the first `sf-<name>` executable on PATH; [`list`]
//! returns every `sf-*` executable in PATH order, marking names shadowed by an earlier
//! directory. [`run`] runs a plugin with inherited stdio and the connection in env
//! (`SHAKENFIST_API_URL`, `SHAKENFIST_NAMESPACE`, `SHAKENFIST_TOKEN`, and `SF_CA_FILE`
//! when one is configured) and returns its exit code.

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Errors running a plugin.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// No such plugin.
    #[error(
        "unknown command {name:?}: no sf-{name} on PATH (see `sf --help` and `sf plugin list`)"
    )]
    NotFound {
        /// The name typed.
        name: String,
    },
    /// The plugin could not be started.
    #[error("running {path}: {source}")]
    Spawn {
        /// The executable.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn path_dirs() -> Vec<PathBuf> {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default()
}

/// The first `sf-<name>` on PATH.
pub fn find(name: &str) -> Option<PathBuf> {
    if name.is_empty() || name.contains('/') {
        return None;
    }
    path_dirs()
        .into_iter()
        .map(|d| d.join(format!("sf-{name}")))
        .find(|p| is_executable(p))
}

/// A plugin found on PATH.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// The plugin name (without `sf-`).
    pub name: String,
    /// Its path.
    pub path: PathBuf,
    /// An earlier PATH entry has the same name.
    pub shadowed: bool,
}

/// Every `sf-*` executable on PATH, in PATH order.
pub fn list() -> Vec<Found> {
    let mut found: Vec<Found> = Vec::new();
    for dir in path_dirs() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut names: Vec<(String, PathBuf)> = entries
            .filter_map(Result::ok)
            .filter_map(|e| {
                let file = e.file_name().to_string_lossy().into_owned();
                let name = file.strip_prefix("sf-")?.to_string();
                (!name.is_empty() && is_executable(&e.path())).then(|| (name, e.path()))
            })
            .collect();
        names.sort();
        for (name, path) in names {
            let shadowed = found.iter().any(|f| f.name == name);
            found.push(Found {
                name,
                path,
                shadowed,
            });
        }
    }
    found
}

/// The connection handed to a plugin.
#[derive(Debug, Clone, Default)]
pub struct Connection {
    /// sf-api's URL.
    pub url: Option<String>,
    /// The namespace.
    pub namespace: Option<String>,
    /// A current token.
    pub token: Option<String>,
    /// The CA file trusted for an https URL.
    pub ca_file: Option<String>,
}

/// Runs `sf-<name>` with `args`; returns its exit code (128+signal when killed).
pub fn run(name: &str, args: &[OsString], connection: &Connection) -> Result<i32, PluginError> {
    let path = find(name).ok_or_else(|| PluginError::NotFound {
        name: name.to_string(),
    })?;
    let mut command = std::process::Command::new(&path);
    command.args(args);
    for (key, value) in [
        ("SHAKENFIST_API_URL", &connection.url),
        ("SHAKENFIST_NAMESPACE", &connection.namespace),
        ("SHAKENFIST_TOKEN", &connection.token),
        (sf_client::CA_FILE_ENV, &connection.ca_file),
    ] {
        if let Some(v) = value {
            command.env(key, v);
        }
    }
    let status = command.status().map_err(|source| PluginError::Spawn {
        path: path.clone(),
        source,
    })?;
    use std::os::unix::process::ExitStatusExt;
    Ok(status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
}
