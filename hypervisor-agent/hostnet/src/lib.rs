//! sf-hostnet: the host networking of a hypervisor (contract C1).
//!
//! Contract: [`HostNet`] makes the plumbing of one network true on this host and is
//! idempotent — calling [`HostNet::ensure_network`] twice leaves the same state and no
//! error; it also repairs (deleted links come back, stale fdb peers, addresses, routes
//! and NAT rules go). Per network with VXLAN id `vxid`, on every host carrying it:
//! `vxlan-<vxid:06x>` (VNI vxid, on the mesh NIC, local = mesh address, dstport 4789,
//! nolearning, MTU from the plumbing) enslaved to bridge `br-vxlan-<vxid:06x>`, plus one
//! all-zero fdb entry (`00:00:00:00:00:00 dst <peer>`) per mesh peer.
//!
//! On the network node there is also a network namespace per network, named
//! [`network_namespace_name`] = `sf<6 hex of FNV-1a(node name)>-<vxid:06x>` (15
//! characters, so two nodes sharing a machine never collide), holding:
//! - `veth-<vxid>-i` with the router address (`.1` of the netblock, its prefix); its peer
//!   `veth-<vxid>-o` is on the bridge;
//! - `egr-<vxid>-i` with the floating gateway (and each floating address as a `/32`) and
//!   the default route via the floating network's `.1`; its peer `egr-<vxid>-o` is on the
//!   node's egress bridge [`egress_bridge_name`], which carries that `.1` (v0.8 used one
//!   `flt-<hexip>` veth per floating address; a `/32` on the egress veth is equivalent);
//! - IPv4 forwarding, nftables table `ip sf_nat` (masquerade when provide_nat, DNAT/SNAT
//!   per floating address), a `/32` route to the router veth per routed address;
//! - dnsmasq (`-C /dev/null --no-resolv`, static DHCP, DNS on 53 with provide_dns else
//!   `--port=0`), state under `<state_dir>/<vxid:06x>/`, restarted when found dead.
//!
//! With [`HostNetConfig::netns`] set, every link operation happens inside that namespace.
//! The real backend is [`NetlinkHostNet`] (rtnetlink, plus `ip netns`, `nft`, `sysctl`
//! and `dnsmasq` for what netlink cannot do). A fake backend must pass [`conformance`]
//! too.

use std::future::Future;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub mod conformance;
mod dnsmasq;
mod names;
mod netlink;
mod nft;
mod worker;

pub use dnsmasq::{render_dhcp_hosts, render_dns_hosts, render_dnsmasq_args};
pub use names::{
    Netblock, bridge_name, egress_bridge_name, egress_inner_name, egress_outer_name,
    network_namespace_name, node_tag, parse_vxid_from_bridge, parse_vxid_from_vxlan,
    router_inner_name, router_outer_name, vxlan_name,
};
pub use netlink::{NetlinkHostNet, purge_node_namespaces};
pub use nft::render_nat_ruleset;

/// UDP port of the VXLAN mesh (IANA).
pub const VXLAN_PORT: u16 = 4789;

/// One static DHCP reservation (and, with provide_dns, one DNS name).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DhcpHost {
    /// MAC address, `aa:bb:cc:dd:ee:ff`.
    pub mac: String,
    /// The reserved address (inside the netblock).
    pub ipv4: Ipv4Addr,
    /// Host name; answered in DNS as `<hostname>.<dns_domain>`.
    pub hostname: String,
}

/// A floating address of a guest: traffic to `floating` arriving on the egress is
/// DNATed to `inner`, and `inner`'s outbound traffic leaves as `floating`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FloatingIp {
    /// The public address (from the floating network).
    pub floating: Ipv4Addr,
    /// The guest's address inside the netblock.
    pub inner: Ipv4Addr,
}

/// Everything a host needs to plumb one network. `Default` gives an empty plumbing to
/// fill with `..Default::default()`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NetworkPlumbing {
    /// Network uid.
    pub uid: String,
    /// Network name.
    pub name: String,
    /// Tenant namespace of the network.
    pub namespace: String,
    /// 24-bit VXLAN id.
    pub vxid: u32,
    /// The network's IPv4 netblock, `10.0.0.0/24`.
    pub netblock: String,
    /// MTU of the vxlan, bridge and veths (`MAX_HYPERVISOR_MTU - 50`).
    pub mtu: u32,
    /// Mesh addresses of the OTHER nodes hosting this network.
    pub mesh_peers: Vec<Ipv4Addr>,
    /// This host is the network node for the network.
    pub network_node: bool,
    /// Run a static DHCP server (network node only).
    pub provide_dhcp: bool,
    /// Masquerade the netblock out of the egress veth (network node only).
    pub provide_nat: bool,
    /// Answer DNS on port 53 for `<hostname>.<dns_domain>` (network node only).
    pub provide_dns: bool,
    /// DNS domain, `<namespace>.<zone>`.
    pub dns_domain: String,
    /// Static DHCP reservations.
    pub dhcp_hosts: Vec<DhcpHost>,
    /// The network's floating gateway (`status.floatingGateway`): put on the inner egress
    /// veth, with the prefix of [`HostNetConfig::floating_netblock`], and the default route
    /// of the network namespace goes via the first address of that netblock. `None`: the
    /// egress veth has no address and the namespace has no default route.
    #[serde(default)]
    pub floating_gateway: Option<Ipv4Addr>,
    /// Floating addresses (network node only): each is put on the inner egress veth as a
    /// `/32` and DNATed to its guest (SNAT on the way out).
    #[serde(default)]
    pub floating_ips: Vec<FloatingIp>,
    /// Routed addresses (network node only): a `/32` route to the router veth inside the
    /// network namespace; the guest owns and answers for the address itself.
    #[serde(default)]
    pub routed_ips: Vec<Ipv4Addr>,
}

/// The host networking backend. Every method is idempotent.
pub trait HostNet: Send + Sync + 'static {
    /// Idempotent; creates or repairs everything (fdb peers added AND stale ones removed).
    fn ensure_network(
        &self,
        p: &NetworkPlumbing,
    ) -> impl Future<Output = Result<(), HostNetError>> + Send;
    /// Re-render dnsmasq hosts/config and reload it (network node only; elsewhere Ok(())).
    fn update_dhcp(
        &self,
        p: &NetworkPlumbing,
    ) -> impl Future<Output = Result<(), HostNetError>> + Send;
    /// Idempotent removal of everything plumbed for vxid on this host.
    fn delete_network(&self, vxid: u32) -> impl Future<Output = Result<(), HostNetError>> + Send;
    /// The vxids plumbed on this host (from interface names).
    fn list_networks(&self) -> impl Future<Output = Result<Vec<u32>, HostNetError>> + Send;
}

/// Configuration of [`NetlinkHostNet`].
#[derive(Debug, Clone, PartialEq)]
pub struct HostNetConfig {
    /// `SHAKENFIST_NODE_NETNS`: every action happens inside this named network namespace
    /// (`/var/run/netns/<name>`); `None` = the namespace of the process.
    pub netns: Option<String>,
    /// Node name; hashed into the per-network namespace names ([`node_tag`]) so two nodes
    /// can share a machine.
    pub node_name: String,
    /// NIC carrying the VXLAN mesh (inside `netns` when set).
    pub mesh_interface: String,
    /// This node's address on the mesh (the VXLAN source address).
    pub mesh_address: Ipv4Addr,
    /// dnsmasq configs, hosts files, pid files and leases live under here.
    pub state_dir: PathBuf,
    /// Network-node egress NIC. Recorded in the name of the egress bridge
    /// ([`egress_bridge_name`]) that joins the outer egress veths; the NIC itself is never
    /// enslaved or re-addressed. `None`: bridge `egr-br`.
    pub egress_interface: Option<String>,
    /// The floating network (`FLOATING_NETWORK`, e.g. `192.168.20.0/24`). When set, the
    /// egress bridge carries its first address and network namespaces route via it.
    pub floating_netblock: Option<String>,
}

impl HostNetConfig {
    /// A config with the required fields and no netns, egress or floating network.
    pub fn new(
        node_name: impl Into<String>,
        mesh_interface: impl Into<String>,
        mesh_address: Ipv4Addr,
        state_dir: impl Into<PathBuf>,
    ) -> Self {
        Self {
            netns: None,
            node_name: node_name.into(),
            mesh_interface: mesh_interface.into(),
            mesh_address,
            state_dir: state_dir.into(),
            egress_interface: None,
            floating_netblock: None,
        }
    }
}

/// Errors of sf-hostnet. Variants are named for the operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum HostNetError {
    /// The backend configuration is unusable.
    #[error("invalid host networking config: {0}")]
    InvalidConfig(String),
    /// The plumbing request is unusable (bad netblock, vxid out of range, ...).
    #[error("invalid plumbing for network {uid}: {reason}")]
    InvalidPlumbing {
        /// Network uid.
        uid: String,
        /// What is wrong.
        reason: String,
    },
    /// Entering, creating or deleting a network namespace failed.
    #[error("network namespace {name}: {op} failed: {message}")]
    Namespace {
        /// Namespace name.
        name: String,
        /// `enter`, `create`, `delete`.
        op: &'static str,
        /// Cause.
        message: String,
    },
    /// A netlink request failed.
    #[error("netlink: {op} failed: {message}")]
    Netlink {
        /// What was being done, e.g. `create vxlan vxlan-00002a`.
        op: String,
        /// Cause.
        message: String,
    },
    /// An external command (`ip`, `nft`, `sysctl`, `dnsmasq`) failed to run or exited non-zero.
    #[error("command `{command}` failed: {message}")]
    Command {
        /// The command line.
        command: String,
        /// Exit status and stderr, or the spawn error.
        message: String,
    },
    /// Reading or writing a state file failed.
    #[error("state file {path}: {source}")]
    StateFile {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// dnsmasq did not start or could not be signalled.
    #[error("dnsmasq for vxid {vxid:06x}: {message}")]
    Dnsmasq {
        /// Network vxid.
        vxid: u32,
        /// Cause.
        message: String,
    },
    /// The namespace worker thread could not be started or died.
    #[error("netlink worker: {0}")]
    Worker(String),
}
