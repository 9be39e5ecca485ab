//! `telemetry::init` end to end: log format, and OTLP export switched on by
//! `OTEL_EXPORTER_OTLP_ENDPOINT`.
//!
//! `init` installs a process-global subscriber, so each case runs in a child process
//! (this binary, marked by `SF_DAEMON_TELEMETRY_CHILD`). For the export case the parent
//! listens on 127.0.0.1 as a stand-in collector and checks that the child opens an
//! HTTP/2 (gRPC) connection to it when the guard flushes.

use sf_harness::runner as support;

use std::io::Read;
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sf_daemon::config::{LogFormat, TelemetryArgs};

const CHILD_MARKER: &str = "SF_DAEMON_TELEMETRY_CHILD";
const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn child(format: &str) -> Result<(), String> {
    let args = TelemetryArgs {
        log_format: if format == "text" {
            LogFormat::Text
        } else {
            LogFormat::Auto
        },
        log_filter: "info".to_owned(),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|err| format!("runtime: {err}"))?;
    runtime.block_on(async {
        let guard = sf_daemon::telemetry::init("sf-telemetry-test", &args)
            .map_err(|err| err.to_string())?;
        println!("exporting={}", guard.is_exporting());
        {
            let span = tracing::info_span!("test_span", answer = 42);
            let _entered = span.enter();
            tracing::info!(key = "value", "hello from the child");
            tracing::debug!("filtered out at info");
        }
        drop(guard);
        println!("done");
        Ok(())
    })
}

/// Runs the child with `format`, the given OTLP endpoint (or none), and no inherited
/// `OTEL_*`/`SHAKENFIST_*` variables. Returns (exit code, stdout, stderr).
fn run(format: &str, endpoint: Option<&str>) -> Result<(Option<i32>, String, String), String> {
    let exe = std::env::current_exe().map_err(|err| format!("current_exe: {err}"))?;
    let mut command = Command::new(exe);
    for (key, _) in std::env::vars_os() {
        let key_text = key.to_string_lossy();
        if key_text.starts_with("OTEL_") || key_text.starts_with("SHAKENFIST_") {
            command.env_remove(key);
        }
    }
    command
        .env(CHILD_MARKER, format)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(endpoint) = endpoint {
        command
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
            .env("OTEL_EXPORTER_OTLP_TIMEOUT", "2000");
    }
    let output = command
        .output()
        .map_err(|err| format!("spawn child: {err}"))?;
    Ok((
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    ))
}

/// The event line among the child's output.
fn event_line(stdout: &str) -> Result<&str, String> {
    stdout
        .lines()
        .find(|line| line.contains("hello from the child"))
        .ok_or_else(|| format!("no log line in stdout: {stdout}"))
}

fn json_without_endpoint() -> Result<(), String> {
    let (code, stdout, stderr) = run("auto", None)?;
    if code != Some(0) || !stdout.contains("exporting=false") || !stdout.contains("done") {
        return Err(format!("code {code:?}\nstdout: {stdout}\nstderr: {stderr}"));
    }
    let line = event_line(&stdout)?;
    // stdout is a pipe, so `auto` means JSON, with the span's fields.
    if !(line.starts_with('{')
        && line.contains(r#""message":"hello from the child""#)
        && line.contains(r#""key":"value""#)
        && line.contains(r#""answer":42"#))
    {
        return Err(format!("not the expected JSON: {line}"));
    }
    if stdout.contains("filtered out at info") {
        return Err(format!("debug event passed the info filter: {stdout}"));
    }
    Ok(())
}

fn text_when_forced() -> Result<(), String> {
    let (code, stdout, stderr) = run("text", None)?;
    if code != Some(0) {
        return Err(format!("code {code:?}\nstdout: {stdout}\nstderr: {stderr}"));
    }
    let line = event_line(&stdout)?;
    if line.starts_with('{') || !line.contains("INFO") || line.contains('\u{1b}') {
        return Err(format!("not plain text: {line:?}"));
    }
    Ok(())
}

fn exports_to_endpoint() -> Result<(), String> {
    let collector = TcpListener::bind("127.0.0.1:0").map_err(|err| format!("bind: {err}"))?;
    let addr = collector
        .local_addr()
        .map_err(|err| format!("local_addr: {err}"))?;
    let accepter = std::thread::spawn(move || -> Result<Vec<u8>, String> {
        let (mut stream, _) = collector.accept().map_err(|err| format!("accept: {err}"))?;
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|err| format!("set_read_timeout: {err}"))?;
        let mut preface = vec![0; HTTP2_PREFACE.len()];
        stream
            .read_exact(&mut preface)
            .map_err(|err| format!("read: {err}"))?;
        Ok(preface)
        // Dropping the stream fails the export quickly.
    });
    let started = Instant::now();
    let (code, stdout, stderr) = run("auto", Some(&format!("http://{addr}")))?;
    let elapsed = started.elapsed();
    if code != Some(0) || !stdout.contains("exporting=true") || !stdout.contains("done") {
        return Err(format!("code {code:?}\nstdout: {stdout}\nstderr: {stderr}"));
    }
    if !accepter.is_finished() {
        return Err("the child never connected to the collector".to_owned());
    }
    let preface = accepter
        .join()
        .map_err(|_| "accept thread panicked".to_owned())??;
    if preface != HTTP2_PREFACE {
        return Err(format!(
            "not an HTTP/2 preface: {:?}",
            String::from_utf8_lossy(&preface)
        ));
    }
    if elapsed > Duration::from_secs(20) {
        return Err(format!("flushing on drop took {elapsed:?}"));
    }
    Ok(())
}

fn main() {
    if let Some(format) = std::env::var_os(CHILD_MARKER) {
        if let Err(err) = child(&format.to_string_lossy()) {
            eprintln!("child: {err}");
            std::process::exit(2);
        }
        return;
    }
    let checks: Vec<support::Check> = vec![
        ("json_without_endpoint", Box::new(json_without_endpoint)),
        ("text_when_forced", Box::new(text_when_forced)),
        ("exports_to_endpoint", Box::new(exports_to_endpoint)),
    ];
    support::run("telemetry_init", checks);
}
