//! SIGTERM/SIGINT handling, end to end with real signals.
//!
//! The binary runs itself as a child (marked by `SF_DAEMON_SIGNAL_CHILD`), so signals
//! reach only that process. The child installs the handlers, prints `ready`, waits for
//! shutdown, prints `triggered`, then either exits 0 (`exit`) or keeps "draining"
//! (`drain`) until a second signal forces it out with 128 + the signal number.

use sf_harness::runner as support;

use std::io::{BufRead, BufReader, Lines};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::Duration;

const CHILD_MARKER: &str = "SF_DAEMON_SIGNAL_CHILD";
/// How long a child waits for anything before giving up, so a broken test cannot hang.
const CHILD_TIMEOUT: Duration = Duration::from_secs(30);

fn child(mode: &str) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|err| format!("runtime: {err}"))?;
    runtime.block_on(async {
        let shutdown =
            sf_daemon::shutdown::install_signal_handlers().map_err(|err| err.to_string())?;
        if shutdown.is_triggered() {
            return Err("triggered before any signal".to_owned());
        }
        println!("ready");
        if tokio::time::timeout(CHILD_TIMEOUT, shutdown.wait())
            .await
            .is_err()
        {
            std::process::exit(3);
        }
        println!("triggered {}", shutdown.is_triggered());
        if mode == "drain" {
            tokio::time::sleep(CHILD_TIMEOUT).await;
            std::process::exit(4);
        }
        Ok(())
    })
}

struct Running {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Running {
    fn start(mode: &str) -> Result<Self, String> {
        let exe = std::env::current_exe().map_err(|err| format!("current_exe: {err}"))?;
        let mut child = Command::new(exe)
            .env(CHILD_MARKER, mode)
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|err| format!("spawn child: {err}"))?;
        let stdout = child.stdout.take().ok_or("no child stdout")?;
        Ok(Self {
            child,
            lines: BufReader::new(stdout).lines(),
        })
    }

    fn expect_line(&mut self, want: &str) -> Result<(), String> {
        match self.lines.next() {
            Some(Ok(line)) if line == want => Ok(()),
            other => Err(format!("expected {want:?} from the child, got {other:?}")),
        }
    }

    fn signal(&self, name: &str) -> Result<(), String> {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .map_err(|err| format!("run kill: {err}"))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("kill -{name} failed: {status}"))
        }
    }

    fn exit_code(mut self) -> Result<Option<i32>, String> {
        let status = self.child.wait().map_err(|err| format!("wait: {err}"))?;
        Ok(status.code())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // Only reached with the child still running when a check failed.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One signal, from a child that drains instantly: wait() completes, exit 0.
fn one_signal_triggers(signal: &str) -> Result<(), String> {
    let mut running = Running::start("exit")?;
    running.expect_line("ready")?;
    running.signal(signal)?;
    running.expect_line("triggered true")?;
    match running.exit_code()? {
        Some(0) => Ok(()),
        code => Err(format!("expected exit code 0, got {code:?}")),
    }
}

/// A second signal while draining exits at once with 128 + its number.
fn second_signal_forces_exit() -> Result<(), String> {
    let mut running = Running::start("drain")?;
    running.expect_line("ready")?;
    running.signal("INT")?;
    running.expect_line("triggered true")?;
    // Give the handler task a moment to be back in its select! loop; a signal in the gap
    // is still queued, so this only keeps the test honest about ordering.
    std::thread::sleep(Duration::from_millis(50));
    running.signal("TERM")?;
    match running.exit_code()? {
        Some(143) => Ok(()),
        code => Err(format!(
            "expected exit code 143 (128 + SIGTERM), got {code:?}"
        )),
    }
}

fn main() {
    if let Some(mode) = std::env::var_os(CHILD_MARKER) {
        match child(&mode.to_string_lossy()) {
            Ok(()) => return,
            Err(err) => {
                eprintln!("child: {err}");
                std::process::exit(2);
            }
        }
    }
    let checks: Vec<support::Check> = vec![
        (
            "sigterm_triggers_shutdown",
            Box::new(|| one_signal_triggers("TERM")),
        ),
        (
            "sigint_triggers_shutdown",
            Box::new(|| one_signal_triggers("INT")),
        ),
        (
            "second_signal_forces_exit",
            Box::new(second_signal_forces_exit),
        ),
    ];
    support::run("signals", checks);
}
