//! Panic reports: a panic is written to `<STORAGE_PATH>/exceptions/` before the
//! process goes on to print it (and usually exit).
//!
//! Contract:
//! - [`install`] (first thing in a daemon's `main`, after configuration) creates
//!   `<STORAGE_PATH>/exceptions/` (a failure is a start-up error) and installs a panic
//!   hook. The hook writes `<STORAGE_PATH>/exceptions/<UTC timestamp>-<pid>.json`, e.g.
//!   `20261125T174707.123456Z-4242.json` (a `-<n>` suffix keeps two panics in the same
//!   microsecond apart), then calls the previously installed hook (by default Rust's,
//!   which prints the panic to stderr).
//! - The report is one JSON object: `time` (RFC 3339, UTC, microseconds), `unix_time`
//!   (seconds, float), `pid`, `program`, `thread` (name, or `<unnamed>`), `message`,
//!   `location` (`{file, line, column}` or null) and `backtrace` (always captured, as
//!   text, regardless of `RUST_BACKTRACE`).
//! - The file is written under a temporary name, fsynced and renamed, so a reader never
//!   sees half a report. The hook never panics; if writing fails it says so on stderr.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::panic::PanicHookInfo;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// Why the panic hook could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum PanicHookError {
    /// `<STORAGE_PATH>/exceptions` could not be created.
    #[error("cannot create the exceptions directory {path}: {source}")]
    CreateExceptionsDir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// The directory panic reports go to under `storage_path`.
pub fn exceptions_dir(storage_path: &Path) -> PathBuf {
    storage_path.join("exceptions")
}

/// Installs the panic hook writing reports under `<storage_path>/exceptions/`; the
/// hook installed before (Rust's default, normally) runs after the report is written.
pub fn install(storage_path: &Path) -> Result<(), PanicHookError> {
    let dir = exceptions_dir(storage_path);
    fs::create_dir_all(&dir).map_err(|source| PanicHookError::CreateExceptionsDir {
        path: dir.clone(),
        source,
    })?;
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        match write_report(&dir, info) {
            Ok(path) => eprintln!("panic report written to {}", path.display()),
            Err(e) => eprintln!("cannot write the panic report to {}: {e}", dir.display()),
        }
        previous(info);
    }));
    Ok(())
}

/// The panic's message: its `&str` or `String` payload, else a placeholder.
fn message(info: &PanicHookInfo<'_>) -> String {
    if let Some(s) = info.payload().downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = info.payload().downcast_ref::<String>() {
        s.clone()
    } else {
        "<non-string panic payload>".to_string()
    }
}

/// Writes one report; returns its path.
fn write_report(dir: &Path, info: &PanicHookInfo<'_>) -> io::Result<PathBuf> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let thread = std::thread::current();
    let backtrace = std::backtrace::Backtrace::force_capture();
    let location = match info.location() {
        Some(l) => format!(
            "{{\"file\": {}, \"line\": {}, \"column\": {}}}",
            json_string(l.file()),
            l.line(),
            l.column()
        ),
        None => "null".to_string(),
    };
    let program = std::env::args().next().unwrap_or_default();
    let body = format!(
        "{{\n  \"time\": {},\n  \"unix_time\": {},\n  \"pid\": {},\n  \"program\": {},\n  \"thread\": {},\n  \"message\": {},\n  \"location\": {},\n  \"backtrace\": {}\n}}\n",
        json_string(&rfc3339(now.as_secs(), now.subsec_micros())),
        now.as_secs_f64(),
        std::process::id(),
        json_string(&program),
        json_string(thread.name().unwrap_or("<unnamed>")),
        json_string(&message(info)),
        location,
        json_string(&backtrace.to_string()),
    );
    let stem = format!(
        "{}-{}",
        compact_timestamp(now.as_secs(), now.subsec_micros()),
        std::process::id()
    );
    let tmp = dir.join(format!(".{stem}.{:?}.tmp", thread.id()).replace(['(', ')'], ""));
    {
        let mut file = File::create(&tmp)?;
        file.write_all(body.as_bytes())?;
        file.sync_all()?;
    }
    for n in 1u32..1000 {
        let name = match n {
            1 => format!("{stem}.json"),
            n => format!("{stem}-{n}.json"),
        };
        let path = dir.join(name);
        // Claim the name first so a concurrent panic cannot overwrite it.
        match OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(_) => {
                fs::rename(&tmp, &path)?;
                if let Ok(d) = File::open(dir) {
                    let _ = d.sync_all();
                }
                return Ok(path);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other("no free report name"))
}

/// `s` as a JSON string literal.
fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// (year, month, day) of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn split(secs: u64) -> (i64, u32, u32, u64, u64, u64) {
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    (y, m, d, rem / 3600, rem % 3600 / 60, rem % 60)
}

/// `2026-11-25T17:47:07.123456Z`.
fn rfc3339(secs: u64, micros: u32) -> String {
    let (y, mo, d, h, mi, s) = split(secs);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{micros:06}Z")
}

/// `20261125T174707.123456Z` (no colons: safe in file names).
fn compact_timestamp(secs: u64, micros: u32) -> String {
    let (y, mo, d, h, mi, s) = split(secs);
    format!("{y:04}{mo:02}{d:02}T{h:02}{mi:02}{s:02}.{micros:06}Z")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    const CHILD_MARKER: &str = "SF_DAEMON_PANIC_CHILD";

    #[test]
    fn timestamps_are_utc_calendar_dates() {
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00.000000Z");
        // 2026-11-25T17:47:07Z
        assert_eq!(rfc3339(1_795_628_827, 42), "2026-11-25T17:47:07.000042Z");
        assert_eq!(compact_timestamp(951_782_400, 5), "20000229T000000.000005Z");
        assert_eq!(rfc3339(4_107_542_399, 0), "2100-02-28T23:59:59.000000Z");
    }

    #[test]
    fn json_strings_are_escaped() {
        let s = "a \"q\" \\ \n\t\u{1} é";
        let parsed: String = serde_json::from_str(&json_string(s)).expect("valid JSON string");
        assert_eq!(parsed, s);
    }

    /// Re-runs this test binary with only this test selected and the marker set: the
    /// child installs the hook and panics in a named thread, then exits 7.
    #[test]
    fn a_panic_is_reported_as_json_before_the_default_hook_runs() {
        if let Some(dir) = std::env::var_os(CHILD_MARKER) {
            install(Path::new(&dir)).expect("install the hook");
            let joined = std::thread::Builder::new()
                .name("sf-worker".into())
                .spawn(|| panic!("boom \"{}\"\nsecond line", 42))
                .expect("spawn")
                .join();
            std::process::exit(if joined.is_err() { 7 } else { 8 });
        }
        let storage = tempfile::tempdir().expect("tempdir");
        let out = Command::new(std::env::current_exe().expect("current exe"))
            .args([
                "panic::tests::a_panic_is_reported_as_json_before_the_default_hook_runs",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_MARKER, storage.path())
            .env_remove("RUST_BACKTRACE")
            .output()
            .expect("run the child");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(7), "{stderr}");
        let reports: Vec<PathBuf> = fs::read_dir(exceptions_dir(storage.path()))
            .expect("exceptions dir")
            .map(|e| e.expect("entry").path())
            .collect();
        assert_eq!(reports.len(), 1, "{reports:?}");
        let name = reports[0]
            .file_name()
            .and_then(|n| n.to_str())
            .expect("name");
        let (stamp, pid) = name
            .strip_suffix(".json")
            .and_then(|s| s.split_once('-'))
            .expect("<timestamp>-<pid>.json");
        assert_eq!(stamp.len(), "20261125T174707.123456Z".len(), "{name}");
        assert!(
            stamp.ends_with('Z') && stamp.as_bytes()[8] == b'T',
            "{name}"
        );
        let pid: u32 = pid.parse().expect("pid");
        assert_ne!(pid, std::process::id());

        let text = fs::read_to_string(&reports[0]).expect("read report");
        let report: serde_json::Value = serde_json::from_str(&text).expect("report is JSON");
        assert_eq!(report["pid"], pid);
        assert_eq!(report["thread"], "sf-worker");
        assert_eq!(report["message"], "boom \"42\"\nsecond line");
        assert!(
            report["location"]["file"]
                .as_str()
                .is_some_and(|f| f.ends_with("panic.rs")),
            "{text}"
        );
        assert!(report["location"]["line"].as_u64().is_some_and(|l| l > 0));
        assert!(report["time"].as_str().is_some_and(|t| t.ends_with('Z')));
        assert!(report["unix_time"].as_f64().is_some_and(|t| t > 1.7e9));
        // force_capture: a real backtrace even without RUST_BACKTRACE.
        let backtrace = report["backtrace"].as_str().expect("backtrace");
        assert!(backtrace.lines().count() > 3, "{backtrace}");
        assert!(!backtrace.contains("disabled"), "{backtrace}");
        // The report came first, then the default hook's message.
        let written = stderr.find("panic report written to").expect("hook note");
        let default = stderr.find("panicked at").expect("default hook output");
        assert!(written < default, "{stderr}");
    }
}
