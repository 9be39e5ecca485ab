//! Instance lifecycle on one hypervisor: [`Lifecycle`].
//!
//! Contract:
//! - Every operation is idempotent: create of a defined domain redefines it (its disks
//!   are kept), power on of a running domain, power off of a stopped one, pause of a
//!   paused one, delete of a missing one all succeed, and hot plug of a MAC already in
//!   the definition does nothing.
//! - Create: the instance directory `<STORAGE_PATH>/instances/<uid>/`, its disks
//!   ([`crate::disks::ensure_disk`]), the config drive, the domain definition, then the
//!   record of the images it was defined from (`images.json`: per disk and for the
//!   NVRAM template, the reference and its file; rewritten by every definition that
//!   succeeds); then the desired power state (on: start; paused: start then pause;
//!   off: defined only). Later operations take a cdrom's image (and, until the first
//!   start, the NVRAM template) from that record ([`Lifecycle::recorded_images`])
//!   while the reference is unchanged and the file is there, so a new version of an
//!   artifact never swaps a guest's media or empties its drive.
//! - Power on rebuilds the config drive and the definition (so hot-plugged NICs are
//!   in both; [`Lifecycle::redefine`]: a disk file gone since the create is
//!   [`DiskError::DiskMissing`], never remade blank or from its base) and starts the
//!   domain, retrying up to `power_on_attempts` times
//!   `power_on_delay` apart.
//! - Pause and unpause are re-issued until the observed state matches, up to
//!   `state_change_attempts` times `state_change_delay` apart; then
//!   [`LifecycleError::InvalidLifecycle`] says what was wanted and what was seen.
//! - Reboot of an instance that is not running is [`LifecycleError::InstanceOff`].
//! - Delete destroys, undefines (with NVRAM) and removes the instance directory.
//! - [`LifecycleError::code`] and [`LifecycleError::retryable`] are what the agent puts
//!   in an operation's error report.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sf_schema::instance::{ConsoleStatus, DesiredPowerState, InstanceSpec, InterfaceStatus};
use sf_schema::interface::NicModel;

use crate::disks::{self, ConfigDriveInput, DiskError, GuestNic};
use crate::domain_xml::{
    self, DomainInput, InstancePaths, NicInput, RenderError, RenderSettings, graphics_port,
    interface_macs,
};
use crate::hypervisor::{DomainState, Hypervisor, HypervisorError, domain_name};

/// The images an instance's domain was defined from (`images.json`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecordedImages {
    /// Per `spec.disks[i]`: its base and the image file it resolved to, if any.
    pub disks: Vec<Option<RecordedImage>>,
    /// The NVRAM template and its file, if any.
    #[serde(default)]
    pub nvram_template: Option<RecordedImage>,
}

/// One image reference of the spec and the file it resolved to.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RecordedImage {
    /// The reference as the spec wrote it (a recorded file serves only that one).
    pub reference: String,
    /// The image file.
    pub path: PathBuf,
}

impl RecordedImages {
    /// The file recorded for `spec.disks[index]` while its base is still `reference`.
    pub fn disk(&self, index: usize, reference: &str) -> Option<&Path> {
        self.disks
            .get(index)?
            .as_ref()
            .filter(|r| r.reference == reference)
            .map(|r| r.path.as_path())
    }

    /// The file recorded for the NVRAM template while it is still `reference`.
    pub fn nvram(&self, reference: &str) -> Option<&Path> {
        self.nvram_template
            .as_ref()
            .filter(|r| r.reference == reference)
            .map(|r| r.path.as_path())
    }

    /// Every recorded file.
    pub fn paths(&self) -> impl Iterator<Item = &Path> {
        self.disks
            .iter()
            .flatten()
            .chain(self.nvram_template.iter())
            .map(|r| r.path.as_path())
    }
}

/// Lifecycle settings.
#[derive(Debug, Clone)]
pub struct LifecycleSettings {
    /// `STORAGE_PATH`.
    pub storage_path: PathBuf,
    /// Domain rendering.
    pub render: RenderSettings,
    /// Start attempts on power on (5).
    pub power_on_attempts: u32,
    /// Pause between start attempts (5 s).
    pub power_on_delay: Duration,
    /// Pause/unpause attempts (3).
    pub state_change_attempts: u32,
    /// Pause between pause/unpause attempts (1 s).
    pub state_change_delay: Duration,
}

impl LifecycleSettings {
    /// Shaken Fist's defaults for `storage_path` and `render`.
    pub fn new(storage_path: PathBuf, render: RenderSettings) -> Self {
        Self {
            storage_path,
            render,
            power_on_attempts: 5,
            power_on_delay: Duration::from_secs(5),
            state_change_attempts: 3,
            state_change_delay: Duration::from_secs(1),
        }
    }
}

/// One NIC of an instance, with what the guest and the status need.
#[derive(Debug, Clone, PartialEq)]
pub struct NicContext {
    /// The NetworkInterface's name.
    pub interface: String,
    /// The Network's name.
    pub network: String,
    /// The Network's uid.
    pub network_uid: String,
    /// The Network's netblock.
    pub netblock: String,
    /// The VXLAN id.
    pub vxid: u32,
    /// The MAC address.
    pub mac: String,
    /// The address, when allocated.
    pub ipv4: Option<Ipv4Addr>,
    /// The NIC model.
    pub model: NicModel,
    /// The MTU.
    pub mtu: u32,
    /// The floating address, when floated.
    pub floating_address: Option<String>,
}

impl NicContext {
    /// The rendering input.
    pub fn nic_input(&self) -> NicInput {
        NicInput {
            mac: self.mac.clone(),
            vxid: self.vxid,
            model: self.model.clone(),
            mtu: self.mtu,
        }
    }
}

/// Everything the lifecycle needs about one instance.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceContext {
    /// The uid.
    pub uid: String,
    /// The namespace.
    pub namespace: String,
    /// The name.
    pub name: String,
    /// The desired state.
    pub spec: InstanceSpec,
    /// The NICs, in order.
    pub nics: Vec<NicContext>,
    /// Per `spec.disks` index: the base image file on this node, when known.
    pub base_images: Vec<Option<PathBuf>>,
    /// The NVRAM template file, when `spec.nvramTemplate` resolved.
    pub nvram_template: Option<PathBuf>,
    /// `<namespace>.<zone>`.
    pub dns_domain: String,
}

impl InstanceContext {
    /// The observed interfaces for `status.interfaces`.
    pub fn interface_status(&self) -> Vec<InterfaceStatus> {
        self.nics
            .iter()
            .enumerate()
            .map(|(i, n)| InterfaceStatus {
                name: Some(n.interface.clone()),
                network: n.network.clone(),
                ipv4: n.ipv4.map(|a| a.to_string()),
                macaddr: Some(n.mac.clone()),
                model: Some(n.model.clone()),
                order: u32::try_from(i).unwrap_or(u32::MAX),
                floating_address: n.floating_address.clone(),
            })
            .collect()
    }
}

/// Why a lifecycle operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    /// The spec cannot be rendered.
    #[error(transparent)]
    Render(#[from] RenderError),
    /// A disk file could not be made.
    #[error(transparent)]
    Disk(#[from] DiskError),
    /// A hypervisor call failed.
    #[error(transparent)]
    Hypervisor(#[from] HypervisorError),
    /// The domain is not defined on this node.
    #[error("instance {uid} has no domain on this node")]
    NotDefined {
        /// The instance uid.
        uid: String,
    },
    /// The domain did not reach the wanted state.
    #[error(
        "invalid lifecycle: {operation} of instance {uid} wanted {wanted:?}, observed {observed:?} after {attempts} attempts"
    )]
    InvalidLifecycle {
        /// `pause` or `unpause`.
        operation: &'static str,
        /// The instance uid.
        uid: String,
        /// The state asked for.
        wanted: DomainState,
        /// The state seen last.
        observed: Option<DomainState>,
        /// Attempts made.
        attempts: u32,
    },
    /// The operation needs a running instance.
    #[error("instance {uid} is not running ({observed:?})")]
    InstanceOff {
        /// The instance uid.
        uid: String,
        /// The state seen.
        observed: Option<DomainState>,
    },
    /// The guest has not released a NIC it was asked to give up (yet).
    #[error("instance {uid} still has NIC {mac}: the guest has not released it yet")]
    StillAttached {
        /// The instance uid.
        uid: String,
        /// The NIC's MAC.
        mac: String,
    },
    /// Starting failed every time.
    #[error("instance {uid} did not start after {attempts} attempts: {last}")]
    StartFailed {
        /// The instance uid.
        uid: String,
        /// Attempts made.
        attempts: u32,
        /// The last error.
        last: HypervisorError,
    },
    /// A file of the instance directory could not be written.
    #[error(transparent)]
    Io(#[from] crate::FileError),
    /// The instance directory could not be removed.
    #[error("remove {path}: {source}")]
    Remove {
        /// The directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

impl LifecycleError {
    /// A stable CamelCase code for the operation's error report.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Render(_) => "InvalidSpec",
            Self::Disk(DiskError::NoSize { .. } | DiskError::UserData(_)) => "InvalidSpec",
            Self::Disk(DiskError::UnsafeBase { .. }) => "UnsafeBaseImage",
            Self::Disk(DiskError::BaseUnresolved { .. }) => "ImageNotFound",
            Self::Disk(DiskError::DiskMissing { .. }) => "DiskMissing",
            Self::Disk(_) => "DiskFailed",
            Self::Hypervisor(HypervisorError::Connect { .. }) => "HypervisorUnavailable",
            Self::Hypervisor(_) => "HypervisorCallFailed",
            Self::NotDefined { .. } => "DomainNotFound",
            Self::InvalidLifecycle { .. } => "InvalidLifecycle",
            Self::InstanceOff { .. } => "InstanceOff",
            Self::StartFailed { .. } => "DomainStartFailed",
            Self::StillAttached { .. } => "DeviceStillAttached",
            Self::Remove { .. } | Self::Io(_) => "DiskFailed",
        }
    }

    /// Whether trying the operation again may succeed.
    pub fn retryable(&self) -> bool {
        match self {
            Self::Render(_) | Self::InvalidLifecycle { .. } | Self::InstanceOff { .. } => false,
            Self::Disk(
                DiskError::NoSize { .. }
                | DiskError::UserData(_)
                | DiskError::UnsafeBase { .. }
                | DiskError::BaseUnresolved { .. }
                | DiskError::DiskMissing { .. },
            ) => false,
            Self::NotDefined { .. } => false,
            Self::Disk(_)
            | Self::Hypervisor(_)
            | Self::StartFailed { .. }
            | Self::StillAttached { .. }
            | Self::Remove { .. }
            | Self::Io(_) => true,
        }
    }
}

/// Instance lifecycle on hypervisor `H` (see the module contract).
pub struct Lifecycle<H> {
    hv: H,
    settings: LifecycleSettings,
}

impl<H: Hypervisor> Lifecycle<H> {
    /// A lifecycle on `hv`.
    pub fn new(hv: H, settings: LifecycleSettings) -> Self {
        Self { hv, settings }
    }

    /// The hypervisor.
    pub fn hypervisor(&self) -> &H {
        &self.hv
    }

    /// The settings.
    pub fn settings(&self) -> &LifecycleSettings {
        &self.settings
    }

    /// The files of instance `uid`.
    pub fn paths(&self, uid: &str) -> InstancePaths {
        InstancePaths::new(&self.settings.storage_path, uid)
    }

    /// The domain XML of `ctx` (pure, given the settings).
    pub fn render(&self, ctx: &InstanceContext) -> Result<String, RenderError> {
        let paths = self.paths(&ctx.uid);
        let nics: Vec<NicInput> = ctx.nics.iter().map(NicContext::nic_input).collect();
        let cdroms: Vec<Option<PathBuf>> = ctx.base_images.clone();
        let input = DomainInput {
            uid: &ctx.uid,
            namespace: &ctx.namespace,
            name: &ctx.name,
            spec: &ctx.spec,
            nics: &nics,
            paths: &paths,
            cdrom_sources: &cdroms,
            nvram_template: ctx.nvram_template.as_deref(),
        };
        domain_xml::render_domain(&input, &self.settings.render)
    }

    async fn write_config_drive(&self, ctx: &InstanceContext) -> Result<(), LifecycleError> {
        if ctx.spec.config_drive != sf_schema::instance::ConfigDrive::OpenstackDisk {
            return Ok(());
        }
        let input = ConfigDriveInput {
            uid: ctx.uid.clone(),
            name: ctx.name.clone(),
            namespace: ctx.namespace.clone(),
            ssh_key: ctx.spec.ssh_key.clone(),
            user_data: ctx.spec.user_data.clone(),
            nics: ctx
                .nics
                .iter()
                .map(|n| GuestNic {
                    mac: n.mac.clone(),
                    mtu: n.mtu,
                    ipv4: n.ipv4,
                    netblock: n.netblock.clone(),
                    network_uid: n.network_uid.clone(),
                })
                .collect(),
            dns_domain: ctx.dns_domain.clone(),
        };
        disks::write_config_drive(&self.paths(&ctx.uid).config_drive(), &input).await?;
        Ok(())
    }

    /// Renders, makes the disks and config drive, and defines the domain: what
    /// `instance_create` does ([`Self::create`]).
    pub async fn define(&self, ctx: &InstanceContext) -> Result<String, LifecycleError> {
        self.define_domain(ctx, true).await
    }

    /// Defines the domain of an instance created before (power on, start-up restore):
    /// its disks must exist ([`DiskError::DiskMissing`] otherwise: never remade).
    pub async fn redefine(&self, ctx: &InstanceContext) -> Result<String, LifecycleError> {
        self.define_domain(ctx, false).await
    }

    async fn define_domain(
        &self,
        ctx: &InstanceContext,
        make_disks: bool,
    ) -> Result<String, LifecycleError> {
        let xml = self.render(ctx)?;
        let paths = self.paths(&ctx.uid);
        for (i, disk) in ctx.spec.disks.iter().enumerate() {
            if disk.disk_type == sf_schema::instance::DiskType::Cdrom {
                continue;
            }
            if !make_disks && !tokio::fs::try_exists(paths.disk(i)).await.unwrap_or(false) {
                return Err(DiskError::DiskMissing {
                    index: i,
                    path: paths.disk(i),
                }
                .into());
            }
            let base = ctx.base_images.get(i).cloned().flatten();
            // A disk made from a base that no longer resolves is not remade blank.
            if base.is_none()
                && let Some(named) = &disk.base
                && !tokio::fs::try_exists(paths.disk(i)).await.unwrap_or(false)
            {
                return Err(DiskError::BaseUnresolved {
                    index: i,
                    base: named.clone(),
                }
                .into());
            }
            disks::ensure_disk(&paths.disk(i), i, disk.size, base.as_deref()).await?;
        }
        self.write_config_drive(ctx).await?;
        let name = self.hv.define(&xml).await?;
        self.record_images(ctx).await?;
        Ok(name)
    }

    /// Writes `images.json` from the context's resolved images, once the domain is
    /// defined from them: a temporary file, fsync'd, renamed over the record.
    async fn record_images(&self, ctx: &InstanceContext) -> Result<(), LifecycleError> {
        let paths = self.paths(&ctx.uid);
        tokio::fs::create_dir_all(&paths.dir)
            .await
            .map_err(crate::FileError::of("create directory", &paths.dir))?;
        let pair = |reference: Option<&String>, path: Option<&PathBuf>| {
            Some(RecordedImage {
                reference: reference?.clone(),
                path: path?.clone(),
            })
        };
        let record = RecordedImages {
            disks: ctx
                .spec
                .disks
                .iter()
                .enumerate()
                .map(|(i, d)| {
                    pair(
                        d.base.as_ref(),
                        ctx.base_images.get(i).and_then(Option::as_ref),
                    )
                })
                .collect(),
            nvram_template: pair(
                ctx.spec.nvram_template.as_ref(),
                ctx.nvram_template.as_ref(),
            ),
        };
        let text = serde_json::to_vec_pretty(&record).unwrap_or_default();
        let target = paths.images();
        let temporary = paths.dir.join("images.json.tmp");
        let mut file = tokio::fs::File::create(&temporary)
            .await
            .map_err(crate::FileError::of("create", &temporary))?;
        tokio::io::AsyncWriteExt::write_all(&mut file, &text)
            .await
            .map_err(crate::FileError::of("write", &temporary))?;
        file.sync_all()
            .await
            .map_err(crate::FileError::of("fsync", &temporary))?;
        tokio::fs::rename(&temporary, &target)
            .await
            .map_err(crate::FileError::of("rename into", &target))?;
        Ok(())
    }

    /// The images instance `uid`'s domain was last defined from, as recorded then; `None` when
    /// there is no record (created by an older agent) or it cannot be read (logged).
    pub async fn recorded_images(&self, uid: &str) -> Option<RecordedImages> {
        let path = self.paths(uid).images();
        let bytes = match tokio::fs::read(&path).await {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read the image record");
                return None;
            }
        };
        serde_json::from_slice(&bytes)
            .inspect_err(|e| {
                tracing::warn!(path = %path.display(), error = %e, "ignoring a malformed image record");
            })
            .ok()
    }

    /// Creates the instance and brings it to `desired` (see the module contract).
    pub async fn create(
        &self,
        ctx: &InstanceContext,
        desired: &DesiredPowerState,
    ) -> Result<DomainState, LifecycleError> {
        let name = domain_name(&ctx.uid);
        match self.hv.state(&name).await? {
            Some(state) if state.is_active() => {
                // Created already (a repeated operation): keep it as it is.
                return Ok(state);
            }
            _ => {}
        }
        self.define(ctx).await?;
        match desired {
            DesiredPowerState::Off => Ok(self.observe_defined(&ctx.uid).await?),
            DesiredPowerState::Paused => {
                self.start_with_retry(&ctx.uid).await?;
                self.pause(&ctx.uid).await
            }
            _ => self.start_with_retry(&ctx.uid).await,
        }
    }

    async fn observe_defined(&self, uid: &str) -> Result<DomainState, LifecycleError> {
        self.hv
            .state(&domain_name(uid))
            .await?
            .ok_or_else(|| LifecycleError::NotDefined {
                uid: uid.to_owned(),
            })
    }

    async fn start_with_retry(&self, uid: &str) -> Result<DomainState, LifecycleError> {
        let name = domain_name(uid);
        let attempts = self.settings.power_on_attempts.max(1);
        let mut last = None;
        for attempt in 1..=attempts {
            match self.hv.start(&name).await {
                Ok(()) => return self.observe_defined(uid).await,
                Err(e @ HypervisorError::NoDomain { .. }) => return Err(e.into()),
                Err(e) => {
                    tracing::warn!(domain = %name, attempt, error = %e, "start failed");
                    last = Some(e);
                    if attempt < attempts {
                        tokio::time::sleep(self.settings.power_on_delay).await;
                    }
                }
            }
        }
        Err(LifecycleError::StartFailed {
            uid: uid.to_owned(),
            attempts,
            last: last.unwrap_or(HypervisorError::Worker("no attempt made".into())),
        })
    }

    /// Powers on (see the module contract).
    pub async fn power_on(&self, ctx: &InstanceContext) -> Result<DomainState, LifecycleError> {
        let name = domain_name(&ctx.uid);
        match self.hv.state(&name).await? {
            Some(DomainState::Running) => return Ok(DomainState::Running),
            Some(DomainState::Paused) => return self.unpause(&ctx.uid).await,
            _ => {}
        }
        self.redefine(ctx).await?;
        self.start_with_retry(&ctx.uid).await
    }

    /// Powers off hard; a missing domain counts as off.
    pub async fn power_off(&self, uid: &str) -> Result<DomainState, LifecycleError> {
        let name = domain_name(uid);
        match self.hv.destroy(&name).await {
            Ok(()) => {}
            Err(HypervisorError::NoDomain { .. }) => return Ok(DomainState::Off),
            Err(e) => return Err(e.into()),
        }
        Ok(self.hv.state(&name).await?.unwrap_or(DomainState::Off))
    }

    async fn converge(
        &self,
        uid: &str,
        operation: &'static str,
        wanted: DomainState,
    ) -> Result<DomainState, LifecycleError> {
        let name = domain_name(uid);
        let attempts = self.settings.state_change_attempts.max(1);
        let mut observed = None;
        for attempt in 1..=attempts {
            observed = self.hv.state(&name).await?;
            match observed {
                None => {
                    return Err(LifecycleError::NotDefined {
                        uid: uid.to_owned(),
                    });
                }
                Some(s) if s == wanted => return Ok(s),
                Some(_) => {
                    let result = match wanted {
                        DomainState::Paused => self.hv.suspend(&name).await,
                        _ => self.hv.resume(&name).await,
                    };
                    if let Err(e) = result {
                        tracing::warn!(domain = %name, attempt, operation, error = %e, "state change failed");
                    }
                    observed = self.hv.state(&name).await?;
                    if observed == Some(wanted) {
                        return Ok(wanted);
                    }
                    if attempt < attempts {
                        tokio::time::sleep(self.settings.state_change_delay).await;
                    }
                }
            }
        }
        Err(LifecycleError::InvalidLifecycle {
            operation,
            uid: uid.to_owned(),
            wanted,
            observed,
            attempts,
        })
    }

    /// Pauses, re-issued until paused.
    pub async fn pause(&self, uid: &str) -> Result<DomainState, LifecycleError> {
        self.converge(uid, "pause", DomainState::Paused).await
    }

    /// Unpauses, re-issued until running.
    pub async fn unpause(&self, uid: &str) -> Result<DomainState, LifecycleError> {
        self.converge(uid, "unpause", DomainState::Running).await
    }

    /// Reboots a running instance: hard is a reset, soft an ACPI request.
    pub async fn reboot(&self, uid: &str, hard: bool) -> Result<DomainState, LifecycleError> {
        let name = domain_name(uid);
        let state = self.hv.state(&name).await?;
        if state != Some(DomainState::Running) {
            return Err(LifecycleError::InstanceOff {
                uid: uid.to_owned(),
                observed: state,
            });
        }
        self.hv.reboot(&name, hard).await?;
        self.observe_defined(uid).await
    }

    /// A screenshot of a running or paused instance: `(mime type, bytes)`.
    pub async fn screenshot(&self, uid: &str) -> Result<(String, Vec<u8>), LifecycleError> {
        let name = domain_name(uid);
        let state = self.hv.state(&name).await?;
        if !state.is_some_and(DomainState::is_active) {
            return Err(LifecycleError::InstanceOff {
                uid: uid.to_owned(),
                observed: state,
            });
        }
        Ok(self.hv.screenshot(&name).await?)
    }

    /// Adds `nic` to the definition and, when running, the live domain; nothing when
    /// its MAC is already defined.
    pub async fn hot_plug(&self, uid: &str, nic: &NicInput) -> Result<bool, LifecycleError> {
        let name = domain_name(uid);
        let state = self.observe_defined(uid).await?;
        let defined = self.hv.xml(&name, true).await?;
        let mac = nic.mac.to_ascii_lowercase();
        if interface_macs(&defined).contains(&mac) {
            return Ok(false);
        }
        let device = domain_xml::render_interface(nic)?;
        self.hv
            .attach_device(&name, &device, state.is_active())
            .await?;
        Ok(true)
    }

    /// Removes the NIC whose MAC is `mac` from the definition and the running domain.
    /// False when there is no such domain or NIC anywhere (already unplugged). A live
    /// detach only asks the guest (libvirt returns before the guest lets go): while
    /// the live domain still shows the NIC this is [`LifecycleError::StillAttached`]
    /// (retryable; a retry asks again).
    pub async fn hot_unplug(&self, uid: &str, mac: &str) -> Result<bool, LifecycleError> {
        let name = domain_name(uid);
        let Some(state) = self.observe(uid).await? else {
            return Ok(false);
        };
        let active = state.is_active();
        let in_config =
            domain_xml::interface_element(&self.hv.xml(&name, true).await?, mac).map(str::to_owned);
        let in_live = if active {
            domain_xml::interface_element(&self.hv.xml(&name, false).await?, mac).map(str::to_owned)
        } else {
            None
        };
        let config = in_config.is_some();
        let live = in_live.is_some();
        // The element as the definition has it (the live one when only the running
        // domain still has it: a retry after the guest kept it).
        let Some(device) = in_config.or(in_live) else {
            return Ok(false);
        };
        self.hv.detach_device(&name, &device, config, live).await?;
        if live && domain_xml::interface_element(&self.hv.xml(&name, false).await?, mac).is_some() {
            return Err(LifecycleError::StillAttached {
                uid: uid.to_owned(),
                mac: mac.to_owned(),
            });
        }
        Ok(true)
    }

    /// Destroys, undefines and removes the files of instance `uid`.
    pub async fn delete(&self, uid: &str) -> Result<(), LifecycleError> {
        let name = domain_name(uid);
        self.hv.undefine(&name).await?;
        let dir = self.paths(uid).dir;
        match tokio::fs::remove_dir_all(&dir).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(LifecycleError::Remove { path: dir, source }),
        }
    }

    /// The state of instance `uid`'s domain; `None` when not defined.
    pub async fn observe(&self, uid: &str) -> Result<Option<DomainState>, LifecycleError> {
        Ok(self.hv.state(&domain_name(uid)).await?)
    }

    /// Where the graphics console listens, when libvirt assigned a port.
    pub async fn console(&self, uid: &str) -> Option<ConsoleStatus> {
        let xml = self.hv.xml(&domain_name(uid), false).await.ok()?;
        let (kind, port) = graphics_port(&xml)?;
        Some(ConsoleStatus {
            kind,
            host: self.settings.render.vdi_listen.clone(),
            port,
        })
    }
}
