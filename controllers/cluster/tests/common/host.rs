//! What the real agents did to their hosts, in order: [`Observed`] wraps the agent's
//! real backends (libvirt on the test driver, netlink in the node's namespace) and
//! records every call that changes the host into a [`HostLog`], then passes it on
//! unchanged. Reads (state, list, xml, versions, screenshots) are passed on without
//! a record. Tests use the log to prove ORDER on the host (a network was plumbed on a
//! node before an instance that needs it was defined there) and the benchmark to time
//! how soon an agent acted on a change; whether something happened at all is read from
//! the host itself or the API.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use sf_agent::hypervisor::{
    DomainState, DomainSummary, Hypervisor, HypervisorError, HypervisorVersions,
};
use sf_hostnet::{HostNet, HostNetError, NetworkPlumbing};

/// One host change an agent made.
#[derive(Debug, Clone)]
pub struct HostAction {
    /// `define`, `start`, `destroy`, `suspend`, `resume`, `reboot`, `undefine`,
    /// `attach_device`, `ensure_network`, `update_dhcp` or `delete_network`.
    pub action: &'static str,
    /// The domain name (`sf:<uid>`), or the network's vxid in decimal.
    pub subject: String,
    /// When the call began.
    pub began: Instant,
    /// When it returned.
    pub ended: Instant,
    /// Whether it succeeded.
    pub ok: bool,
}

/// A node's host changes, in the order they began (cheap to clone; clones share).
#[derive(Debug, Clone, Default)]
pub struct HostLog(Arc<Mutex<Vec<HostAction>>>);

impl HostLog {
    fn push(&self, action: &'static str, subject: String, began: Instant, ok: bool) {
        let entry = HostAction {
            action,
            subject,
            began,
            ended: Instant::now(),
            ok,
        };
        match self.0.lock() {
            Ok(mut log) => log.push(entry),
            Err(poisoned) => poisoned.into_inner().push(entry),
        }
    }

    /// Every action so far.
    pub fn actions(&self) -> Vec<HostAction> {
        match self.0.lock() {
            Ok(log) => log.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The first successful `action` on `subject`.
    pub fn first(&self, action: &str, subject: &str) -> Option<HostAction> {
        self.actions()
            .into_iter()
            .find(|a| a.ok && a.action == action && a.subject == subject)
    }
}

/// A real backend whose host changes are recorded.
#[derive(Clone)]
pub struct Observed<T> {
    inner: T,
    log: HostLog,
}

impl<T> Observed<T> {
    /// Wraps `inner`, recording into `log`.
    pub fn new(inner: T, log: HostLog) -> Self {
        Self { inner, log }
    }
}

impl<H: Hypervisor> Observed<H> {
    async fn changed<R>(
        &self,
        action: &'static str,
        name: &str,
        call: impl Future<Output = Result<R, HypervisorError>>,
    ) -> Result<R, HypervisorError> {
        let began = Instant::now();
        let r = call.await;
        self.log.push(action, name.to_owned(), began, r.is_ok());
        r
    }
}

impl<H: Hypervisor> Hypervisor for Observed<H> {
    async fn define(&self, xml: &str) -> Result<String, HypervisorError> {
        let began = Instant::now();
        let r = self.inner.define(xml).await;
        let name = r.as_ref().ok().cloned().unwrap_or_default();
        self.log.push("define", name, began, r.is_ok());
        r
    }

    async fn start(&self, name: &str) -> Result<(), HypervisorError> {
        self.changed("start", name, self.inner.start(name)).await
    }

    async fn destroy(&self, name: &str) -> Result<(), HypervisorError> {
        self.changed("destroy", name, self.inner.destroy(name))
            .await
    }

    async fn suspend(&self, name: &str) -> Result<(), HypervisorError> {
        self.changed("suspend", name, self.inner.suspend(name))
            .await
    }

    async fn resume(&self, name: &str) -> Result<(), HypervisorError> {
        self.changed("resume", name, self.inner.resume(name)).await
    }

    async fn reboot(&self, name: &str, hard: bool) -> Result<(), HypervisorError> {
        self.changed("reboot", name, self.inner.reboot(name, hard))
            .await
    }

    async fn undefine(&self, name: &str) -> Result<(), HypervisorError> {
        self.changed("undefine", name, self.inner.undefine(name))
            .await
    }

    async fn state(&self, name: &str) -> Result<Option<DomainState>, HypervisorError> {
        self.inner.state(name).await
    }

    async fn list(&self) -> Result<Vec<DomainSummary>, HypervisorError> {
        self.inner.list().await
    }

    async fn xml(&self, name: &str, inactive: bool) -> Result<String, HypervisorError> {
        self.inner.xml(name, inactive).await
    }

    async fn screenshot(&self, name: &str) -> Result<(String, Vec<u8>), HypervisorError> {
        self.inner.screenshot(name).await
    }

    async fn attach_device(
        &self,
        name: &str,
        xml: &str,
        live: bool,
    ) -> Result<(), HypervisorError> {
        self.changed(
            "attach_device",
            name,
            self.inner.attach_device(name, xml, live),
        )
        .await
    }

    async fn detach_device(
        &self,
        name: &str,
        xml: &str,
        config: bool,
        live: bool,
    ) -> Result<(), HypervisorError> {
        self.changed(
            "detach_device",
            name,
            self.inner.detach_device(name, xml, config, live),
        )
        .await
    }

    async fn versions(&self) -> Result<HypervisorVersions, HypervisorError> {
        self.inner.versions().await
    }
}

impl<N: HostNet> HostNet for Observed<N> {
    async fn ensure_network(&self, p: &NetworkPlumbing) -> Result<(), HostNetError> {
        let began = Instant::now();
        let r = self.inner.ensure_network(p).await;
        self.log
            .push("ensure_network", p.vxid.to_string(), began, r.is_ok());
        r
    }

    async fn update_dhcp(&self, p: &NetworkPlumbing) -> Result<(), HostNetError> {
        let began = Instant::now();
        let r = self.inner.update_dhcp(p).await;
        self.log
            .push("update_dhcp", p.vxid.to_string(), began, r.is_ok());
        r
    }

    async fn delete_network(&self, vxid: u32) -> Result<(), HostNetError> {
        let began = Instant::now();
        let r = self.inner.delete_network(vxid).await;
        self.log
            .push("delete_network", vxid.to_string(), began, r.is_ok());
        r
    }

    async fn list_networks(&self) -> Result<Vec<u32>, HostNetError> {
        self.inner.list_networks().await
    }
}
