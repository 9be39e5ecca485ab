//! sf-agent: the hypervisor agent.
//!
//! Contract: one agent runs per hypervisor node. It registers its Node, claims the
//! operations queued for that node from sf-database, makes them true on the host and
//! reports what it observes. Host effects go through two traits: [`hypervisor::Hypervisor`]
//! (real backend: libvirt through the `virt` crate, [`libvirt::LibvirtHypervisor`]) and
//! `sf_hostnet::HostNet` (real backend: netlink). The agent writes only observed
//! host facts: Instance `status.powerState`, `interfaces` and `console`, and its Node's
//! status.
//!
//! Modules: [`domain_xml`] (pure domain XML rendering), [`hypervisor`] (the trait),
//! [`libvirt`] (its libvirt backend), [`disks`] (qcow2 files and the config drive),
//! [`instance`] (instance lifecycle on a hypervisor), [`config`] (daemon settings),
//! [`identity`] (the node UUID), [`sysinfo`] (capacity and usage), [`gateway`] (typed
//! sf-database calls), [`agent`] (registration, claim loop, handlers, start-up
//! reconciliation, state polling), [`artifact`] (`artifact_fetch`: downloads into
//! blob files), [`blobs`] (`blob_delete`: removes unused blob files), [`snapshot`]
//! (`instance_snapshot`: disks captured into blob files), [`metrics`]. Panics are recorded by
//! `sf_daemon::panic`.

pub mod agent;
pub mod artifact;
pub mod blobs;
pub mod config;
pub mod disks;
pub mod domain_xml;
pub mod gateway;
pub mod hypervisor;
pub mod identity;
pub mod instance;
pub mod libvirt;
pub mod metrics;
pub mod snapshot;
pub mod sysinfo;

/// The XML namespace of the `<sf:instance>` element in domain metadata.
pub const SF_XML_NAMESPACE: &str = "https://shakenfist.io/xmlns/instance/1";

/// The QEMU version installed on this host, from `qemu-img --version`
/// (`qemu-img version 10.0.2 (...)`), when it runs.
///
/// Heartbeats ask for it every interval; `qemu-img` runs at most every 10 minutes
/// (an upgrade shows up within that), the answer is remembered in between.
pub async fn installed_qemu_version() -> Option<String> {
    type Cached = Option<(std::time::Instant, Option<String>)>;
    static CACHE: std::sync::Mutex<Cached> = std::sync::Mutex::new(None);
    const FRESH: std::time::Duration = std::time::Duration::from_secs(600);
    let cached = CACHE.lock().ok().and_then(|c| c.clone());
    if let Some((_, version)) = cached.filter(|(at, _)| at.elapsed() < FRESH) {
        return version;
    }
    let version = match tokio::process::Command::new("qemu-img")
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .output()
        .await
    {
        Ok(out) => parse_qemu_img_version(&String::from_utf8_lossy(&out.stdout)),
        Err(_) => None,
    };
    if let Ok(mut c) = CACHE.lock() {
        *c = Some((std::time::Instant::now(), version.clone()));
    }
    version
}

/// A local file operation that failed: what was being done, to which file, and the
/// I/O error. The modules' error enums carry it as their `Io` variant.
#[derive(Debug, thiserror::Error)]
#[error("{action} {path}: {source}")]
pub struct FileError {
    /// What was being done (`read`, `rename`, ...).
    pub action: &'static str,
    /// The file.
    pub path: std::path::PathBuf,
    /// The error.
    #[source]
    pub source: std::io::Error,
}

impl FileError {
    /// For `map_err`: the failure of `action` on `path` (then `?` turns it into the
    /// module's error).
    pub fn of(action: &'static str, path: &std::path::Path) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.to_owned();
        move |source| Self {
            action,
            path,
            source,
        }
    }
}

/// The version in `qemu-img --version` output.
pub fn parse_qemu_img_version(text: &str) -> Option<String> {
    let rest = text.lines().next()?.split("version ").nth(1)?;
    let v = rest.split_whitespace().next()?;
    Some(v.to_owned())
}

#[cfg(test)]
mod tests {
    #[test]
    fn qemu_img_versions_parse() {
        assert_eq!(
            super::parse_qemu_img_version(
                "qemu-img version 10.0.2 (Debian 1:10.0.2+ds-2)\nCopyright"
            ),
            Some("10.0.2".into())
        );
        assert_eq!(super::parse_qemu_img_version("nope"), None);
    }
}
