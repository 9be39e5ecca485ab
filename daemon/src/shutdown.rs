//! Graceful shutdown on SIGTERM and SIGINT.
//!
//! Contract:
//!
//! - [`Shutdown`] is a cheap, cloneable handle. Once triggered it stays triggered; every
//!   [`Shutdown::wait`], past or future, completes.
//! - [`install_signal_handlers`] makes the first SIGTERM or SIGINT trigger it. A signal
//!   that arrives when shutdown is already under way (a second Ctrl-C, or a SIGTERM after
//!   the daemon began draining on its own) logs an error and exits the process at once
//!   with status 128 + the signal number (130 for SIGINT, 143 for SIGTERM), without
//!   running destructors.
//! - Daemons pass [`Shutdown::wait_owned`] to servers (axum's `with_graceful_shutdown`,
//!   tonic's `serve_with_shutdown`, [`crate::metrics::serve`]) and check
//!   [`Shutdown::is_triggered`] or `select!` on [`Shutdown::wait`] in loops.

use std::future::Future;
use std::sync::Arc;

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

/// Why signal handling could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ShutdownError {
    /// Called outside a Tokio runtime.
    #[error("install_signal_handlers must be called inside a Tokio runtime")]
    NoRuntime,
    /// A signal handler could not be registered.
    #[error("cannot install the {signal} handler: {source}")]
    InstallHandler {
        /// `SIGTERM` or `SIGINT`.
        signal: &'static str,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// A cloneable shutdown flag that tasks can wait on.
#[derive(Debug, Clone)]
pub struct Shutdown {
    sender: Arc<watch::Sender<bool>>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    /// A handle that is not yet triggered and has no signal handlers attached.
    pub fn new() -> Self {
        Self {
            sender: Arc::new(watch::Sender::new(false)),
        }
    }

    /// Starts shutdown: wakes every waiter. Idempotent.
    pub fn trigger(&self) {
        self.sender.send_replace(true);
    }

    /// True once [`Shutdown::trigger`] has been called (or a signal arrived).
    pub fn is_triggered(&self) -> bool {
        *self.sender.borrow()
    }

    /// Completes when shutdown has been triggered (at once if it already was).
    pub async fn wait(&self) {
        let mut receiver = self.sender.subscribe();
        // Err means the sender is gone, impossible while `self` holds it.
        let _ = receiver.wait_for(|triggered| *triggered).await;
    }

    /// Like [`Shutdown::wait`], as an owned future for servers' graceful-shutdown hooks.
    pub fn wait_owned(&self) -> impl Future<Output = ()> + Send + 'static {
        let shutdown = self.clone();
        async move { shutdown.wait().await }
    }
}

/// Registers SIGTERM and SIGINT handlers that trigger the returned [`Shutdown`] (see the
/// module docs for a second signal). Must be called inside a Tokio runtime; the handlers
/// are active when this returns.
pub fn install_signal_handlers() -> Result<Shutdown, ShutdownError> {
    if tokio::runtime::Handle::try_current().is_err() {
        return Err(ShutdownError::NoRuntime);
    }
    let mut sigterm =
        signal(SignalKind::terminate()).map_err(|source| ShutdownError::InstallHandler {
            signal: "SIGTERM",
            source,
        })?;
    let mut sigint =
        signal(SignalKind::interrupt()).map_err(|source| ShutdownError::InstallHandler {
            signal: "SIGINT",
            source,
        })?;
    let shutdown = Shutdown::new();
    let handle = shutdown.clone();
    tokio::spawn(async move {
        loop {
            let (name, number) = tokio::select! {
                Some(()) = sigterm.recv() => ("SIGTERM", 15),
                Some(()) = sigint.recv() => ("SIGINT", 2),
                else => return,
            };
            if handle.is_triggered() {
                tracing::error!(
                    signal = name,
                    "signal received while shutting down; exiting now"
                );
                std::process::exit(128 + number);
            }
            tracing::info!(signal = name, "signal received; shutting down gracefully");
            handle.trigger();
        }
    });
    Ok(shutdown)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn trigger_wakes_all_waiters() {
        let shutdown = Shutdown::new();
        assert!(!shutdown.is_triggered());
        let waiters: Vec<_> = (0..3)
            .map(|_| tokio::spawn(shutdown.wait_owned()))
            .collect();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(waiters.iter().all(|waiter| !waiter.is_finished()));

        shutdown.clone().trigger();
        assert!(shutdown.is_triggered());
        for waiter in waiters {
            tokio::time::timeout(Duration::from_secs(5), waiter)
                .await
                .expect("waiter woke")
                .unwrap();
        }
    }

    #[tokio::test]
    async fn wait_after_trigger_completes_at_once() {
        let shutdown = Shutdown::default();
        shutdown.trigger();
        shutdown.trigger();
        tokio::time::timeout(Duration::from_secs(1), shutdown.wait())
            .await
            .expect("already triggered");
    }

    #[test]
    fn install_outside_a_runtime_is_an_error() {
        assert!(matches!(
            install_signal_handlers(),
            Err(ShutdownError::NoRuntime)
        ));
    }

    #[tokio::test]
    async fn untriggered_wait_does_not_complete() {
        let shutdown = Shutdown::new();
        let result = tokio::time::timeout(Duration::from_millis(50), shutdown.wait()).await;
        assert!(result.is_err());
    }
}
