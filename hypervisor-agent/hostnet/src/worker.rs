//! Running netlink work inside a network namespace, and running external commands.
//!
//! Contract: [`in_netns`] runs a closure on a fresh OS thread that first enters the named
//! namespace (`setns` on `/var/run/netns/<name>`, `None` = stay put), then opens an
//! rtnetlink socket there (a socket stays bound to the namespace it was created in) and
//! drives the closure's future on a current-thread runtime. Nothing else in the process
//! changes namespace. [`run_command`] runs a program with a 30 s bound and turns a
//! non-zero exit into [`HostNetError::Command`] carrying stderr.

use std::future::Future;
use std::time::Duration;

use nix::sched::{CloneFlags, setns};
use rtnetlink::Handle;

use crate::HostNetError;

/// Bound on any external command.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// Path of a named network namespace.
pub(crate) fn netns_path(name: &str) -> std::path::PathBuf {
    std::path::Path::new("/var/run/netns").join(name)
}

fn enter(name: &str) -> Result<(), HostNetError> {
    let err = |message: String| HostNetError::Namespace {
        name: name.to_string(),
        op: "enter",
        message,
    };
    let f = std::fs::File::open(netns_path(name)).map_err(|e| err(e.to_string()))?;
    setns(&f, CloneFlags::CLONE_NEWNET).map_err(|e| err(e.to_string()))
}

/// Runs `f(handle)` with an rtnetlink handle whose socket lives in namespace `netns`.
pub(crate) async fn in_netns<F, Fut, T>(netns: Option<String>, f: F) -> Result<T, HostNetError>
where
    F: FnOnce(Handle) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, HostNetError>> + 'static,
    T: Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("sf-hostnet-ns".into())
        .spawn(move || {
            let run = || -> Result<T, HostNetError> {
                if let Some(ns) = &netns {
                    enter(ns)?;
                }
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| HostNetError::Worker(format!("runtime: {e}")))?;
                rt.block_on(async move {
                    let (conn, handle, _) =
                        rtnetlink::new_connection().map_err(|e| HostNetError::Netlink {
                            op: "open socket".into(),
                            message: e.to_string(),
                        })?;
                    let conn = tokio::spawn(conn);
                    let r = f(handle).await;
                    conn.abort();
                    r
                })
            };
            let _ = tx.send(run());
        })
        .map_err(|e| HostNetError::Worker(format!("spawn thread: {e}")))?;
    rx.await
        .map_err(|_| HostNetError::Worker("namespace thread died".into()))?
}

/// Runs `program args...`, bounded by 30 s; Ok(stdout) on exit 0.
pub(crate) async fn run_command(program: &str, args: &[&str]) -> Result<String, HostNetError> {
    run_command_stdin(program, args, None).await
}

/// Like [`run_command`], feeding `stdin` to the program.
pub(crate) async fn run_command_stdin(
    program: &str,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<String, HostNetError> {
    use tokio::io::AsyncWriteExt;
    let command = format!("{program} {}", args.join(" "));
    let err = |message: String| HostNetError::Command {
        command: command.clone(),
        message,
    };
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .stdin(if stdin.is_some() {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        })
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|e| err(format!("spawn: {e}")))?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes())
            .await
            .map_err(|e| err(format!("write stdin: {e}")))?;
        drop(pipe);
    }
    let out = tokio::time::timeout(COMMAND_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| err(format!("timed out after {COMMAND_TIMEOUT:?}")))?
        .map_err(|e| err(format!("wait: {e}")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(err(format!(
            "{}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}
