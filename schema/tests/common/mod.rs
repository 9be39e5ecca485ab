//! Helpers shared by the integration tests: golden files and paths.

#![allow(dead_code)]

pub mod full;

use std::path::{Path, PathBuf};

/// The environment variable that makes golden tests rewrite their files.
pub const UPDATE_ENV: &str = "SF_UPDATE_GOLDEN";

/// The sf-schema crate directory (`schema/`).
pub fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The workspace root (the parent of `schema/`).
pub fn workspace_dir() -> PathBuf {
    crate_dir()
        .parent()
        .expect("schema/ has a parent")
        .to_path_buf()
}

/// Whether this run rewrites golden files.
pub fn updating() -> bool {
    std::env::var(UPDATE_ENV).is_ok_and(|v| v == "1")
}

/// Compares `actual` with the committed file at `path`; with `SF_UPDATE_GOLDEN=1`
/// rewrites the file instead. Returns a description of the drift, or None.
pub fn check_golden(path: &Path, actual: &str) -> Option<String> {
    if updating() {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("create golden directory");
        }
        std::fs::write(path, actual).expect("write golden file");
        return None;
    }
    let committed = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(err) => {
            return Some(format!(
                "{}: cannot read ({err}); run `{UPDATE_ENV}=1 cargo test -p sf-schema` to create it",
                path.display()
            ));
        }
    };
    if committed == actual {
        return None;
    }
    let committed_lines: Vec<&str> = committed.lines().collect();
    let actual_lines: Vec<&str> = actual.lines().collect();
    let first = committed_lines
        .iter()
        .zip(&actual_lines)
        .position(|(a, b)| a != b)
        .unwrap_or(committed_lines.len().min(actual_lines.len()));
    let gone: Vec<&&str> = committed_lines
        .iter()
        .filter(|l| !actual_lines.contains(l))
        .take(10)
        .collect();
    let new: Vec<&&str> = actual_lines
        .iter()
        .filter(|l| !committed_lines.contains(l))
        .take(10)
        .collect();
    Some(format!(
        "{} differs from what the code generates (first difference at line {}):\n  committed: {:?}\n  generated: {:?}\n  lines only in the file (up to 10): {gone:?}\n  lines only in the code (up to 10): {new:?}\nIf the change is intended, run `{UPDATE_ENV}=1 cargo test -p sf-schema` and commit the result.",
        path.display(),
        first + 1,
        committed_lines.get(first),
        actual_lines.get(first),
    ))
}
