//! The `Hypervisor` trait: the agent's only way to touch domains.
//!
//! Contract: every method addresses a domain by its libvirt name (`sf:<uid>`, see
//! [`domain_name`]) and is safe to repeat where the agent needs idempotence:
//! [`Hypervisor::define`] replaces the persistent definition, [`Hypervisor::destroy`]
//! of a domain that is not running and [`Hypervisor::undefine`] of one that does not
//! exist succeed. [`Hypervisor::state`] is `None` when the domain is not defined.
//! The real implementation is [`crate::libvirt::LibvirtHypervisor`]; there is no fake.

use std::future::Future;

use sf_schema::instance::ObservedPowerState;

/// The prefix of every domain the agent owns.
pub const DOMAIN_PREFIX: &str = "sf:";

/// The libvirt name of instance `uid`.
pub fn domain_name(uid: &str) -> String {
    format!("{DOMAIN_PREFIX}{uid}")
}

/// The instance uid of an agent-owned domain name (`sf:<uuid>`), `None` for any other
/// domain: a name whose rest is no UUID is not ours, and never becomes a path.
pub fn uid_of(domain: &str) -> Option<&str> {
    domain
        .strip_prefix(DOMAIN_PREFIX)
        .filter(|u| uuid::Uuid::parse_str(u).is_ok())
}

/// A domain's state as the agent reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DomainState {
    /// Running (or blocked, or shutting down: the guest still runs).
    Running,
    /// Paused (suspended).
    Paused,
    /// Shut off (or suspended to RAM, which the agent treats as off).
    Off,
    /// Crashed, or shut off because it crashed.
    Crashed,
}

impl DomainState {
    /// The Instance `status.powerState` value.
    pub fn power_state(self) -> ObservedPowerState {
        match self {
            Self::Running => ObservedPowerState::Running,
            Self::Paused => ObservedPowerState::Paused,
            Self::Off => ObservedPowerState::Off,
            Self::Crashed => ObservedPowerState::Crashed,
        }
    }

    /// True when the domain runs (a running or paused process exists).
    pub fn is_active(self) -> bool {
        matches!(self, Self::Running | Self::Paused)
    }
}

/// One defined domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainSummary {
    /// The libvirt name.
    pub name: String,
    /// Its state.
    pub state: DomainState,
}

/// Versions of the virtualisation stack.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HypervisorVersions {
    /// libvirt, e.g. `9.0.0`.
    pub libvirt: String,
    /// The hypervisor driver (`QEMU`, `TEST`).
    pub driver: String,
    /// The hypervisor's version, e.g. `10.0.2` (QEMU).
    pub hypervisor: String,
}

impl HypervisorVersions {
    /// `(major, minor)` of the hypervisor version, when it parses.
    pub fn hypervisor_major_minor(&self) -> Option<(u32, u32)> {
        let mut parts = self.hypervisor.split('.');
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        Some((major, minor))
    }
}

/// A failure of a hypervisor call.
#[derive(Debug, Clone, thiserror::Error)]
pub enum HypervisorError {
    /// The hypervisor could not be reached.
    #[error("cannot connect to libvirt at {uri}: {message}")]
    Connect {
        /// The URI.
        uri: String,
        /// libvirt's message.
        message: String,
    },
    /// The domain is not defined.
    #[error("domain {name} does not exist")]
    NoDomain {
        /// The domain name.
        name: String,
    },
    /// A call failed.
    #[error("{operation} {name}: {message}")]
    Call {
        /// The libvirt call, e.g. `create`.
        operation: &'static str,
        /// The domain name (empty for connection-level calls).
        name: String,
        /// libvirt's message.
        message: String,
    },
    /// The blocking worker failed (panicked or was cancelled).
    #[error("hypervisor worker failed: {0}")]
    Worker(String),
}

/// Domain operations (see the module contract).
pub trait Hypervisor: Send + Sync + 'static {
    /// Defines (or redefines) a persistent domain from XML; returns its name.
    fn define(&self, xml: &str) -> impl Future<Output = Result<String, HypervisorError>> + Send;
    /// Starts a defined domain that is not running.
    fn start(&self, name: &str) -> impl Future<Output = Result<(), HypervisorError>> + Send;
    /// Stops a domain hard; Ok when it is not running.
    fn destroy(&self, name: &str) -> impl Future<Output = Result<(), HypervisorError>> + Send;
    /// Pauses a running domain.
    fn suspend(&self, name: &str) -> impl Future<Output = Result<(), HypervisorError>> + Send;
    /// Resumes a paused domain.
    fn resume(&self, name: &str) -> impl Future<Output = Result<(), HypervisorError>> + Send;
    /// Reboots: hard is a reset, soft an ACPI request.
    fn reboot(
        &self,
        name: &str,
        hard: bool,
    ) -> impl Future<Output = Result<(), HypervisorError>> + Send;
    /// Removes the definition (and its NVRAM); Ok when it does not exist.
    fn undefine(&self, name: &str) -> impl Future<Output = Result<(), HypervisorError>> + Send;
    /// The domain's state; `None` when it is not defined.
    fn state(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Option<DomainState>, HypervisorError>> + Send;
    /// Every defined domain (any name).
    fn list(&self) -> impl Future<Output = Result<Vec<DomainSummary>, HypervisorError>> + Send;
    /// The domain's XML: live when running, else the persistent definition; `inactive`
    /// asks for the persistent definition always.
    fn xml(
        &self,
        name: &str,
        inactive: bool,
    ) -> impl Future<Output = Result<String, HypervisorError>> + Send;
    /// A screenshot of the first screen: `(mime type, bytes)`.
    fn screenshot(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<(String, Vec<u8>), HypervisorError>> + Send;
    /// Attaches a device to the persistent definition and, when `live`, the running
    /// domain.
    fn attach_device(
        &self,
        name: &str,
        xml: &str,
        live: bool,
    ) -> impl Future<Output = Result<(), HypervisorError>> + Send;
    /// Detaches a device from the persistent definition (when `config`) and the running
    /// domain (when `live`). A live detach only asks the guest: the caller checks the
    /// live XML to learn whether the device is gone.
    fn detach_device(
        &self,
        name: &str,
        xml: &str,
        config: bool,
        live: bool,
    ) -> impl Future<Output = Result<(), HypervisorError>> + Send;
    /// Versions of libvirt and the hypervisor.
    fn versions(&self) -> impl Future<Output = Result<HypervisorVersions, HypervisorError>> + Send;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_sf_domains_have_uids() {
        let uid = "2b4e28ba-2fa1-11d2-883f-0016d3cca427";
        assert_eq!(uid_of(&domain_name(uid)), Some(uid));
        assert_eq!(uid_of("sf:.."), None);
        assert_eq!(uid_of("sf:abc"), None);
        assert_eq!(uid_of("test"), None);
        assert_eq!(uid_of("sf:"), None);
        assert_eq!(uid_of("xsf:abc"), None);
    }

    #[test]
    fn versions_parse() {
        let v = HypervisorVersions {
            hypervisor: "10.0.2".into(),
            ..Default::default()
        };
        assert_eq!(v.hypervisor_major_minor(), Some((10, 0)));
        assert_eq!(HypervisorVersions::default().hypervisor_major_minor(), None);
    }
}
