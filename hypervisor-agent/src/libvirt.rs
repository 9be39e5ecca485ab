//! [`LibvirtHypervisor`]: the [`Hypervisor`] on libvirt, through the `virt` crate (0.4).
//!
//! Contract:
//! - One cached connection to the configured URI (`qemu:///system` on hosts,
//!   `test:///default` or a test driver XML file in tests), opened on first use and
//!   re-opened after a call fails on a dead connection. Dropping the hypervisor closes
//!   it (the test driver then forgets its domains, like a host reboot).
//! - libvirt calls block, so each runs on Tokio's blocking pool; the cache lock is held
//!   only to fetch the connection, not during calls.
//! - libvirt's default error printer is silenced; errors come back as
//!   [`HypervisorError`] with libvirt's message. A missing domain is
//!   [`HypervisorError::NoDomain`].

use std::sync::{Arc, Mutex};

use virt::connect::Connect;
use virt::domain::Domain;
use virt::error::ErrorNumber;
use virt::stream::Stream;
use virt::sys;

use crate::hypervisor::{
    DomainState, DomainSummary, Hypervisor, HypervisorError, HypervisorVersions,
};

/// Largest screenshot accepted (bytes).
const MAX_SCREENSHOT: usize = 16 * 1024 * 1024;

/// A counted reference to the connection, closed when dropped.
struct ConnRef(Connect);

impl Drop for ConnRef {
    fn drop(&mut self) {
        if let Err(e) = self.0.close() {
            tracing::debug!(error = %e, "closing a libvirt connection reference failed");
        }
    }
}

struct Inner {
    uri: String,
    cached: Mutex<Option<ConnRef>>,
}

/// The libvirt backend (see the module contract). Cheap to clone.
#[derive(Clone)]
pub struct LibvirtHypervisor {
    inner: Arc<Inner>,
}

fn call_err(operation: &'static str, name: &str, e: &virt::error::Error) -> HypervisorError {
    if e.code() == ErrorNumber::NoDomain {
        HypervisorError::NoDomain {
            name: name.to_owned(),
        }
    } else {
        HypervisorError::Call {
            operation,
            name: name.to_owned(),
            message: e.message().to_owned(),
        }
    }
}

impl LibvirtHypervisor {
    /// A hypervisor on `uri`; connects lazily.
    pub fn new(uri: impl Into<String>) -> Self {
        virt::error::clear_error_callback();
        Self {
            inner: Arc::new(Inner {
                uri: uri.into(),
                cached: Mutex::new(None),
            }),
        }
    }

    /// A hypervisor on `uri`, connected now (so a bad URI fails at start-up).
    pub async fn connect(uri: impl Into<String>) -> Result<Self, HypervisorError> {
        let h = Self::new(uri);
        h.run(|_| Ok(())).await?;
        Ok(h)
    }

    /// The connection URI.
    pub fn uri(&self) -> &str {
        &self.inner.uri
    }

    /// A reference to the cached connection, opening it when needed.
    fn conn(inner: &Inner) -> Result<ConnRef, HypervisorError> {
        let mut cached = inner
            .cached
            .lock()
            .map_err(|_| HypervisorError::Worker("connection cache poisoned".into()))?;
        if let Some(c) = cached.as_ref() {
            if c.0.is_alive().unwrap_or(false) {
                return Ok(ConnRef(c.0.clone()));
            }
            *cached = None;
        }
        let conn = Connect::open(Some(&inner.uri)).map_err(|e| HypervisorError::Connect {
            uri: inner.uri.clone(),
            message: e.message().to_owned(),
        })?;
        let out = ConnRef(conn.clone());
        *cached = Some(ConnRef(conn));
        Ok(out)
    }

    /// Runs `f` with a connection on the blocking pool.
    async fn run<T, F>(&self, f: F) -> Result<T, HypervisorError>
    where
        T: Send + 'static,
        F: FnOnce(&Connect) -> Result<T, HypervisorError> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let conn = Self::conn(&inner)?;
            let result = f(&conn.0);
            if result.is_err()
                && !conn.0.is_alive().unwrap_or(false)
                && let Ok(mut cached) = inner.cached.lock()
            {
                *cached = None;
            }
            result
        })
        .await
        .map_err(|e| HypervisorError::Worker(e.to_string()))?
    }

    /// Runs `f` on domain `name`.
    async fn with_domain<T, F>(&self, name: &str, f: F) -> Result<T, HypervisorError>
    where
        T: Send + 'static,
        F: FnOnce(&Domain, &str) -> Result<T, HypervisorError> + Send + 'static,
    {
        let name = name.to_owned();
        self.run(move |conn| {
            let dom =
                Domain::lookup_by_name(conn, &name).map_err(|e| call_err("lookup", &name, &e))?;
            f(&dom, &name)
        })
        .await
    }
}

fn domain_state(dom: &Domain, name: &str) -> Result<DomainState, HypervisorError> {
    let (state, reason) = dom
        .get_state()
        .map_err(|e| call_err("get_state", name, &e))?;
    Ok(map_state(state, reason))
}

fn map_state(state: sys::virDomainState, reason: i32) -> DomainState {
    match state {
        sys::VIR_DOMAIN_RUNNING | sys::VIR_DOMAIN_BLOCKED | sys::VIR_DOMAIN_SHUTDOWN => {
            DomainState::Running
        }
        sys::VIR_DOMAIN_PAUSED => DomainState::Paused,
        sys::VIR_DOMAIN_CRASHED => DomainState::Crashed,
        sys::VIR_DOMAIN_SHUTOFF
            if i64::from(reason) == i64::from(sys::VIR_DOMAIN_SHUTOFF_CRASHED) =>
        {
            DomainState::Crashed
        }
        _ => DomainState::Off,
    }
}

/// `xml` with `device` inserted before `</devices>`.
pub fn insert_device(xml: &str, device: &str) -> Option<String> {
    let at = xml.rfind("</devices>")?;
    let mut out = String::with_capacity(xml.len() + device.len());
    out.push_str(&xml[..at]);
    out.push_str(device.trim_end());
    out.push('\n');
    out.push_str(&xml[at..]);
    Some(out)
}

/// `xml` without the element `device` (as it appears in `xml`, give or take the
/// surrounding whitespace); None when it is not there.
pub fn remove_device(xml: &str, device: &str) -> Option<String> {
    let device = device.trim();
    let at = xml.find(device)?;
    let line_start = xml[..at].rfind('\n').map_or(0, |i| i + 1);
    let start = if xml[line_start..at].trim().is_empty() {
        line_start
    } else {
        at
    };
    let mut end = at + device.len();
    if xml[end..].starts_with('\n') {
        end += 1;
    }
    Some(format!("{}{}", &xml[..start], &xml[end..]))
}

fn version_string(v: u32) -> String {
    format!("{}.{}.{}", v / 1_000_000, (v / 1000) % 1000, v % 1000)
}

/// A device change of [`LibvirtHypervisor::change_device`]: the device's XML.
enum Device {
    Attach(String),
    Detach(String),
}

impl Device {
    fn operation(&self) -> &'static str {
        match self {
            Self::Attach(_) => "attach_device",
            Self::Detach(_) => "detach_device",
        }
    }

    /// The persistent definition with the change made; `Ok(None)`: nothing to do.
    fn edit(&self, definition: &str) -> Result<Option<String>, &'static str> {
        match self {
            Self::Attach(xml) => insert_device(definition, xml)
                .map(Some)
                .ok_or("domain XML has no </devices>"),
            Self::Detach(xml) => Ok(remove_device(definition, xml)),
        }
    }
}

impl LibvirtHypervisor {
    /// Attaches or detaches a device in the persistent definition (`config`) and the
    /// running domain (`live`). The test driver supports neither: there, and only
    /// there, the persistent definition is edited instead (the domain picks the change
    /// up at its next power-on). A real driver's refusal stays an error.
    async fn change_device(
        &self,
        name: &str,
        change: Device,
        config: bool,
        live: bool,
    ) -> Result<(), HypervisorError> {
        let name = name.to_owned();
        self.run(move |conn| {
            let name = name.as_str();
            let mut flags = 0;
            if config {
                flags |= sys::VIR_DOMAIN_AFFECT_CONFIG;
            }
            if live {
                flags |= sys::VIR_DOMAIN_AFFECT_LIVE;
            }
            if flags == 0 {
                return Ok(());
            }
            let dom =
                Domain::lookup_by_name(conn, name).map_err(|e| call_err("lookup", name, &e))?;
            let result = match &change {
                Device::Attach(xml) => dom.attach_device_flags(xml, flags),
                Device::Detach(xml) => dom.detach_device_flags(xml, flags),
            };
            let operation = change.operation();
            match result {
                Ok(_) => Ok(()),
                Err(e)
                    if e.code() == ErrorNumber::NoSupport
                        && conn
                            .get_type()
                            .is_ok_and(|t| t.eq_ignore_ascii_case("test")) =>
                {
                    let current = dom
                        .get_xml_desc(sys::VIR_DOMAIN_XML_INACTIVE)
                        .map_err(|e| call_err("get_xml_desc", name, &e))?;
                    let updated = change.edit(&current).map_err(|message| HypervisorError::Call {
                        operation,
                        name: name.to_owned(),
                        message: message.into(),
                    })?;
                    let Some(updated) = updated else {
                        return Ok(());
                    };
                    Domain::define_xml(conn, &updated).map_err(|e| call_err("define", name, &e))?;
                    tracing::warn!(
                        domain = name,
                        operation,
                        "the test driver cannot change devices of a domain: its persistent definition was edited"
                    );
                    Ok(())
                }
                Err(e) => Err(call_err(operation, name, &e)),
            }
        })
        .await
    }
}

impl Hypervisor for LibvirtHypervisor {
    async fn define(&self, xml: &str) -> Result<String, HypervisorError> {
        let xml = xml.to_owned();
        self.run(move |conn| {
            let dom = Domain::define_xml(conn, &xml).map_err(|e| call_err("define", "", &e))?;
            dom.get_name().map_err(|e| call_err("get_name", "", &e))
        })
        .await
    }

    async fn start(&self, name: &str) -> Result<(), HypervisorError> {
        self.with_domain(name, |dom, name| {
            if dom
                .is_active()
                .map_err(|e| call_err("is_active", name, &e))?
            {
                return Ok(());
            }
            dom.create().map_err(|e| call_err("create", name, &e))?;
            Ok(())
        })
        .await
    }

    async fn destroy(&self, name: &str) -> Result<(), HypervisorError> {
        self.with_domain(name, |dom, name| {
            if !dom
                .is_active()
                .map_err(|e| call_err("is_active", name, &e))?
            {
                return Ok(());
            }
            match dom.destroy() {
                Ok(()) => Ok(()),
                // Stopped meanwhile.
                Err(e) if e.code() == ErrorNumber::OperationInvalid => Ok(()),
                Err(e) => Err(call_err("destroy", name, &e)),
            }
        })
        .await
    }

    async fn suspend(&self, name: &str) -> Result<(), HypervisorError> {
        self.with_domain(name, |dom, name| {
            dom.suspend().map_err(|e| call_err("suspend", name, &e))?;
            Ok(())
        })
        .await
    }

    async fn resume(&self, name: &str) -> Result<(), HypervisorError> {
        self.with_domain(name, |dom, name| {
            dom.resume().map_err(|e| call_err("resume", name, &e))?;
            Ok(())
        })
        .await
    }

    async fn reboot(&self, name: &str, hard: bool) -> Result<(), HypervisorError> {
        self.with_domain(name, move |dom, name| {
            if hard {
                dom.reset().map_err(|e| call_err("reset", name, &e))?;
            } else {
                dom.reboot(sys::VIR_DOMAIN_REBOOT_DEFAULT)
                    .map_err(|e| call_err("reboot", name, &e))?;
            }
            Ok(())
        })
        .await
    }

    async fn undefine(&self, name: &str) -> Result<(), HypervisorError> {
        let name = name.to_owned();
        self.run(move |conn| {
            let dom = match Domain::lookup_by_name(conn, &name) {
                Ok(dom) => dom,
                Err(e) if e.code() == ErrorNumber::NoDomain => return Ok(()),
                Err(e) => return Err(call_err("lookup", &name, &e)),
            };
            if dom.is_active().unwrap_or(false)
                && let Err(e) = dom.destroy()
                && e.code() != ErrorNumber::OperationInvalid
            {
                return Err(call_err("destroy", &name, &e));
            }
            match dom.undefine_flags(sys::VIR_DOMAIN_UNDEFINE_NVRAM) {
                Ok(()) => Ok(()),
                Err(e) if e.code() == ErrorNumber::NoDomain => Ok(()),
                // Drivers without NVRAM support refuse the flag: plain undefine.
                Err(_) => match dom.undefine() {
                    Ok(()) => Ok(()),
                    Err(e) if e.code() == ErrorNumber::NoDomain => Ok(()),
                    Err(e) => Err(call_err("undefine", &name, &e)),
                },
            }
        })
        .await
    }

    async fn state(&self, name: &str) -> Result<Option<DomainState>, HypervisorError> {
        let name = name.to_owned();
        self.run(move |conn| match Domain::lookup_by_name(conn, &name) {
            Ok(dom) => domain_state(&dom, &name).map(Some),
            Err(e) if e.code() == ErrorNumber::NoDomain => Ok(None),
            Err(e) => Err(call_err("lookup", &name, &e)),
        })
        .await
    }

    async fn list(&self) -> Result<Vec<DomainSummary>, HypervisorError> {
        self.run(|conn| {
            let domains = conn
                .list_all_domains(0)
                .map_err(|e| call_err("list_all_domains", "", &e))?;
            let mut out = Vec::with_capacity(domains.len());
            for dom in domains {
                let Ok(name) = dom.get_name() else { continue };
                // A domain undefined meanwhile is simply not listed.
                let Ok(state) = domain_state(&dom, &name) else {
                    continue;
                };
                out.push(DomainSummary { name, state });
            }
            out.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(out)
        })
        .await
    }

    async fn xml(&self, name: &str, inactive: bool) -> Result<String, HypervisorError> {
        self.with_domain(name, move |dom, name| {
            let flags = if inactive {
                sys::VIR_DOMAIN_XML_INACTIVE
            } else {
                0
            };
            dom.get_xml_desc(flags)
                .map_err(|e| call_err("get_xml_desc", name, &e))
        })
        .await
    }

    async fn screenshot(&self, name: &str) -> Result<(String, Vec<u8>), HypervisorError> {
        let name = name.to_owned();
        self.run(move |conn| {
            let dom =
                Domain::lookup_by_name(conn, &name).map_err(|e| call_err("lookup", &name, &e))?;
            let stream = Stream::new(conn, 0).map_err(|e| call_err("stream", &name, &e))?;
            let mime = dom
                .screenshot(&stream, 0, 0)
                .map_err(|e| call_err("screenshot", &name, &e))?;
            let mut data = Vec::new();
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                let n = stream
                    .recv(&mut buf)
                    .map_err(|e| call_err("screenshot stream", &name, &e))?;
                if n == 0 {
                    break;
                }
                data.extend_from_slice(&buf[..n]);
                if data.len() > MAX_SCREENSHOT {
                    let _ = stream.abort();
                    return Err(HypervisorError::Call {
                        operation: "screenshot",
                        name,
                        message: format!("screenshot larger than {MAX_SCREENSHOT} bytes"),
                    });
                }
            }
            stream
                .finish()
                .map_err(|e| call_err("screenshot stream", &name, &e))?;
            Ok((mime, data))
        })
        .await
    }

    async fn attach_device(
        &self,
        name: &str,
        xml: &str,
        live: bool,
    ) -> Result<(), HypervisorError> {
        self.change_device(name, Device::Attach(xml.to_owned()), true, live)
            .await
    }

    async fn detach_device(
        &self,
        name: &str,
        xml: &str,
        config: bool,
        live: bool,
    ) -> Result<(), HypervisorError> {
        self.change_device(name, Device::Detach(xml.to_owned()), config, live)
            .await
    }

    async fn versions(&self) -> Result<HypervisorVersions, HypervisorError> {
        self.run(|conn| {
            let libvirt = conn
                .get_lib_version()
                .map_err(|e| call_err("get_lib_version", "", &e))?;
            let driver = conn.get_type().map_err(|e| call_err("get_type", "", &e))?;
            let hypervisor = conn
                .get_hyp_version()
                .map(version_string)
                .unwrap_or_default();
            Ok(HypervisorVersions {
                libvirt: version_string(libvirt),
                driver,
                hypervisor,
            })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_are_inserted_last() {
        assert_eq!(
            insert_device("<domain><devices><a/></devices></domain>", "<b/>\n").as_deref(),
            Some("<domain><devices><a/><b/>\n</devices></domain>")
        );
        assert_eq!(insert_device("<domain/>", "<b/>"), None);
    }

    #[test]
    fn a_device_is_removed_with_its_line() {
        let xml = "<domain>\n  <devices>\n    <a/>\n    <interface type='bridge'>\n      <mac address='02:00:00:00:00:02'/>\n    </interface>\n  </devices>\n</domain>\n";
        let device =
            "<interface type='bridge'>\n      <mac address='02:00:00:00:00:02'/>\n    </interface>";
        assert_eq!(
            remove_device(xml, device).as_deref(),
            Some("<domain>\n  <devices>\n    <a/>\n  </devices>\n</domain>\n")
        );
        assert_eq!(remove_device(xml, "<b/>"), None);
    }

    #[test]
    fn versions_render_like_libvirt() {
        assert_eq!(version_string(9_000_000), "9.0.0");
        assert_eq!(version_string(10_000_002), "10.0.2");
    }

    #[test]
    fn crashed_shutoff_is_crashed() {
        assert_eq!(
            map_state(
                sys::VIR_DOMAIN_SHUTOFF,
                sys::VIR_DOMAIN_SHUTOFF_CRASHED as i32
            ),
            DomainState::Crashed
        );
        assert_eq!(map_state(sys::VIR_DOMAIN_SHUTOFF, 1), DomainState::Off);
        assert_eq!(map_state(sys::VIR_DOMAIN_PAUSED, 0), DomainState::Paused);
        assert_eq!(map_state(sys::VIR_DOMAIN_RUNNING, 0), DomainState::Running);
    }
}
