//! The real [`HostNet`] backend: rtnetlink inside the node's namespace.
//!
//! Contract: every netlink request is made on a socket opened inside
//! [`HostNetConfig::netns`] (or inside the per-network namespace for the router side of
//! a network node), via [`crate::worker::in_netns`]. Each method first observes the links
//! (one dump), then creates or repairs only what differs, so a second run changes nothing.
//! Commands netlink cannot replace run through `ip netns exec <ns>`: `nft` (NAT), `sysctl`
//! (forwarding) and `dnsmasq`; namespaces are made and removed with `ip netns add|del`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

use futures::TryStreamExt;
use netlink_packet_route::AddressFamily;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkInfo, LinkMessage,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use rtnetlink::packet_core::{
    NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload,
};
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::{Handle, LinkBridge, LinkUnspec, LinkVeth, LinkVxlan, RouteMessageBuilder};

use crate::dnsmasq::{self, DnsmasqPaths};
use crate::names::{
    Netblock, bridge_name, egress_bridge_name, egress_inner_name, egress_outer_name,
    network_namespace_name, parse_vxid_from_bridge, parse_vxid_from_vxlan, router_inner_name,
    router_outer_name, vxlan_name,
};
use crate::nft::{render_filter_ruleset, render_nat_ruleset};
use crate::worker::{in_netns, netns_path, run_command, run_command_stdin};
use crate::{HostNet, HostNetConfig, HostNetError, NetworkPlumbing, VXLAN_PORT};

const EEXIST: i32 = nix::errno::Errno::EEXIST as i32;
const ENODEV: i32 = nix::errno::Errno::ENODEV as i32;
const ENOENT: i32 = nix::errno::Errno::ENOENT as i32;
const EADDRNOTAVAIL: i32 = nix::errno::Errno::EADDRNOTAVAIL as i32;
const ESRCH: i32 = nix::errno::Errno::ESRCH as i32;

/// The real backend (rtnetlink + `ip netns`, `nft`, `dnsmasq`). Cheap to clone (clones
/// share the per-network locks that serialise work on one vxid).
#[derive(Debug, Clone)]
pub struct NetlinkHostNet {
    cfg: HostNetConfig,
    floating: Option<Netblock>,
    locks: Arc<Mutex<HashMap<u32, Arc<tokio::sync::Mutex<()>>>>>,
}

impl NetlinkHostNet {
    /// Checks the config and returns the backend (no I/O).
    pub fn new(cfg: HostNetConfig) -> Result<Self, HostNetError> {
        if cfg.node_name.is_empty() {
            return Err(HostNetError::InvalidConfig("node_name is empty".into()));
        }
        if cfg.mesh_interface.is_empty() || cfg.mesh_interface.len() > 15 {
            return Err(HostNetError::InvalidConfig(format!(
                "mesh_interface {:?} must be 1..=15 characters",
                cfg.mesh_interface
            )));
        }
        if let Some(ns) = &cfg.netns
            && (ns.is_empty() || ns.contains('/'))
        {
            return Err(HostNetError::InvalidConfig(format!(
                "netns {ns:?} is not a namespace name"
            )));
        }
        let floating = match &cfg.floating_netblock {
            Some(s) => Some(Netblock::parse(s).map_err(HostNetError::InvalidConfig)?),
            None => None,
        };
        Ok(Self {
            cfg,
            floating,
            locks: Arc::default(),
        })
    }

    /// The lock serialising all work on network `vxid` in this process.
    fn lock_for(&self, vxid: u32) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = match self.locks.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        map.entry(vxid).or_default().clone()
    }

    /// The configuration.
    pub fn config(&self) -> &HostNetConfig {
        &self.cfg
    }

    /// The per-network namespace this node uses for `vxid` when it is the network node.
    pub fn network_namespace(&self, vxid: u32) -> String {
        network_namespace_name(&self.cfg.node_name, vxid)
    }

    fn validate(p: &NetworkPlumbing) -> Result<Netblock, HostNetError> {
        let bad = |reason: String| HostNetError::InvalidPlumbing {
            uid: p.uid.clone(),
            reason,
        };
        if p.vxid == 0 || p.vxid > 0x00ff_ffff {
            return Err(bad(format!("vxid {} is not a 24-bit VNI", p.vxid)));
        }
        if !(68..=65_535).contains(&p.mtu) {
            return Err(bad(format!("mtu {} out of range", p.mtu)));
        }
        let nb = Netblock::parse(&p.netblock).map_err(bad)?;
        for h in &p.dhcp_hosts {
            if parse_mac(&h.mac).is_none() {
                return Err(bad(format!("bad mac {:?}", h.mac)));
            }
            if !nb.contains(h.ipv4) {
                return Err(bad(format!("{} is outside {}", h.ipv4, nb)));
            }
        }
        Ok(nb)
    }

    async fn node_ns<F, Fut, T>(&self, f: F) -> Result<T, HostNetError>
    where
        F: FnOnce(Handle) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<T, HostNetError>> + 'static,
        T: Send + 'static,
    {
        in_netns(self.cfg.netns.clone(), f).await
    }

    async fn ensure_network_node(
        &self,
        p: &NetworkPlumbing,
        nb: Netblock,
    ) -> Result<(), HostNetError> {
        let vxid = p.vxid;
        let ns = self.network_namespace(vxid);
        if !netns_path(&ns).exists() {
            run_command("ip", &["netns", "add", &ns])
                .await
                .map_err(|e| HostNetError::Namespace {
                    name: ns.clone(),
                    op: "create",
                    message: e.to_string(),
                })?;
        }
        // Node side: the veths' outer ends, the egress bridge.
        let (ns2, mtu) = (ns.clone(), p.mtu);
        let egress_bridge = egress_bridge_name(self.cfg.egress_interface.as_deref());
        let floating = self.floating;
        let router_veth_created = self
            .node_ns(move |h| async move {
                let br = bridge_name(vxid);
                let links = Links::dump(&h).await?;
                let br_idx = links.index(&br)?;
                let router_veth_created = ensure_veth_into_ns(
                    &h,
                    &links,
                    &router_outer_name(vxid),
                    &router_inner_name(vxid),
                    mtu,
                    &ns2,
                )
                .await?;
                let links = Links::dump(&h).await?;
                let egr_br_idx = match links.get(&egress_bridge) {
                    Some(l) => l.index,
                    None => {
                        create_link(&h, LinkBridge::new(&egress_bridge).build(), &egress_bridge)
                            .await?;
                        Links::dump(&h).await?.index(&egress_bridge)?
                    }
                };
                set_link(
                    &h,
                    LinkUnspec::new_with_index(egr_br_idx).up().build(),
                    &egress_bridge,
                )
                .await?;
                if let Some(f) = floating {
                    add_address(&h, egr_br_idx, f.router(), f.prefix, &egress_bridge).await?;
                }
                let _ = ensure_veth_into_ns(
                    &h,
                    &links,
                    &egress_outer_name(vxid),
                    &egress_inner_name(vxid),
                    mtu,
                    &ns2,
                )
                .await?;
                let links = Links::dump(&h).await?;
                let o = links.index(&router_outer_name(vxid))?;
                set_link(
                    &h,
                    LinkUnspec::new_with_index(o)
                        .controller(br_idx)
                        .mtu(mtu)
                        .up()
                        .build(),
                    "router veth",
                )
                .await?;
                let e = links.index(&egress_outer_name(vxid))?;
                set_link(
                    &h,
                    LinkUnspec::new_with_index(e)
                        .controller(egr_br_idx)
                        .mtu(mtu)
                        .up()
                        .build(),
                    "egress veth",
                )
                .await?;
                Ok(router_veth_created)
            })
            .await?;
        if router_veth_created {
            // A dnsmasq bound to a previous incarnation of the router veth serves nothing.
            dnsmasq::stop(&DnsmasqPaths::new(&self.cfg.state_dir, vxid)).await;
        }
        // Namespace side: router address, egress address, default route.
        let floating_gw = match (p.floating_gateway, self.floating) {
            (Some(gw), Some(f)) => Some((gw, f)),
            _ => None,
        };
        let mut egress_want: BTreeSet<(Ipv4Addr, u8)> =
            p.floating_ips.iter().map(|f| (f.floating, 32)).collect();
        if let Some((gw, f)) = floating_gw {
            egress_want.insert((gw, f.prefix));
        }
        let routed: BTreeSet<Ipv4Addr> = p.routed_ips.iter().copied().collect();
        in_netns(Some(ns.clone()), move |h| async move {
            let links = Links::dump(&h).await?;
            let lo = links.index("lo")?;
            set_link(&h, LinkUnspec::new_with_index(lo).up().build(), "lo").await?;
            let vi = links.index(&router_inner_name(vxid))?;
            set_link(
                &h,
                LinkUnspec::new_with_index(vi).mtu(mtu).up().build(),
                "router veth",
            )
            .await?;
            sync_addresses(&h, vi, &[(nb.router(), nb.prefix)].into(), "router veth").await?;
            let ei = links.index(&egress_inner_name(vxid))?;
            set_link(
                &h,
                LinkUnspec::new_with_index(ei).mtu(mtu).up().build(),
                "egress veth",
            )
            .await?;
            sync_addresses(&h, ei, &egress_want, "egress veth").await?;
            sync_host_routes(&h, vi, &routed).await?;
            if let Some((_, f)) = floating_gw {
                let route = RouteMessageBuilder::<Ipv4Addr>::new()
                    .destination_prefix(Ipv4Addr::UNSPECIFIED, 0)
                    .gateway(f.router())
                    .output_interface(ei)
                    .build();
                h.route()
                    .add(route)
                    .replace()
                    .execute()
                    .await
                    .map_err(nl("default route"))?;
            }
            Ok(())
        })
        .await?;
        run_command(
            "ip",
            &[
                "netns",
                "exec",
                &ns,
                "sysctl",
                "-q",
                "-w",
                "net.ipv4.ip_forward=1",
            ],
        )
        .await?;
        let mut rules = render_nat_ruleset(vxid, &nb.to_string(), p.provide_nat, &p.floating_ips);
        // What guests may reach through the namespace: never the node's own addresses
        // (its address on the floating network, its mesh address).
        let mut refused = vec![self.cfg.mesh_address];
        if let Some(f) = self.floating {
            refused.push(f.router());
        }
        rules.push_str(&render_filter_ruleset(
            vxid,
            &nb.to_string(),
            &p.routed_ips,
            &refused,
        ));
        run_command_stdin(
            "ip",
            &["netns", "exec", &ns, "nft", "-f", "-"],
            Some(&rules),
        )
        .await?;
        dnsmasq::ensure(p, &self.cfg.state_dir, &self.cfg.node_name).await
    }

    /// Removes the network-node side of `vxid`: dnsmasq, its state, the veths, the namespace.
    async fn teardown_network_node(&self, vxid: u32) -> Result<(), HostNetError> {
        let paths = DnsmasqPaths::new(&self.cfg.state_dir, vxid);
        dnsmasq::stop(&paths).await;
        if paths.dir.exists() {
            std::fs::remove_dir_all(&paths.dir).map_err(|source| HostNetError::StateFile {
                path: paths.dir.clone(),
                source,
            })?;
        }
        let ns = self.network_namespace(vxid);
        if netns_path(&ns).exists() {
            // Anything still running in there (a dnsmasq whose pid file was lost) dies first.
            if let Ok(pids) = run_command("ip", &["netns", "pids", &ns]).await {
                for pid in pids
                    .split_whitespace()
                    .filter_map(|s| s.parse::<i32>().ok())
                {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
            run_command("ip", &["netns", "del", &ns])
                .await
                .map_err(|e| HostNetError::Namespace {
                    name: ns.clone(),
                    op: "delete",
                    message: e.to_string(),
                })?;
        }
        self.node_ns(move |h| async move {
            let links = Links::dump(&h).await?;
            for name in [router_outer_name(vxid), egress_outer_name(vxid)] {
                if let Some(l) = links.get(&name) {
                    del_link(&h, l.index, &name).await?;
                }
            }
            Ok(())
        })
        .await
    }
}

impl HostNet for NetlinkHostNet {
    async fn ensure_network(&self, p: &NetworkPlumbing) -> Result<(), HostNetError> {
        let nb = Self::validate(p)?;
        // A guest network inside the floating network would answer for its addresses
        // (the node's router among them) on the shared egress bridge and take other
        // networks' egress: never plumbed.
        if let Some(f) = self.floating
            && p.network_node
            && nb.overlaps(&f)
        {
            return Err(HostNetError::InvalidPlumbing {
                uid: p.uid.clone(),
                reason: format!(
                    "netblock {nb} overlaps the floating network {f}; choose another netblock"
                ),
            });
        }
        let lock = self.lock_for(p.vxid);
        let _guard = lock.lock().await;
        let (vxid, mtu) = (p.vxid, p.mtu);
        let mesh_if = self.cfg.mesh_interface.clone();
        let mesh_addr = self.cfg.mesh_address;
        let peers: BTreeSet<Ipv4Addr> = p
            .mesh_peers
            .iter()
            .copied()
            .filter(|a| *a != mesh_addr)
            .collect();
        self.node_ns(move |h| async move {
            let vx = vxlan_name(vxid);
            let br = bridge_name(vxid);
            let links = Links::dump(&h).await?;
            let mesh = links.index(&mesh_if)?;
            // VXLAN: recreate when it exists with the wrong identity.
            if let Some(l) = links.get(&vx) {
                let right = l.kind == Some(InfoKind::Vxlan)
                    && l.vxlan_id == Some(vxid)
                    && l.vxlan_link == Some(mesh)
                    && l.vxlan_local == Some(mesh_addr);
                if !right {
                    del_link(&h, l.index, &vx).await?;
                }
            }
            let links = Links::dump(&h).await?;
            if links.get(&vx).is_none() {
                let msg = LinkVxlan::new(&vx, vxid)
                    .dev(mesh)
                    .local(mesh_addr)
                    .port(VXLAN_PORT)
                    .learning(false)
                    .mtu(mtu)
                    .build();
                create_link(&h, msg, &vx).await?;
            }
            if let Some(l) = links.get(&br)
                && l.kind != Some(InfoKind::Bridge)
            {
                del_link(&h, l.index, &br).await?;
            }
            let links = Links::dump(&h).await?;
            if links.get(&br).is_none() {
                let msg = LinkBridge::new(&br)
                    .forward_delay(0)
                    .ageing_time(0)
                    .mtu(mtu)
                    .build();
                create_link(&h, msg, &br).await?;
            }
            let links = Links::dump(&h).await?;
            let br_idx = links.index(&br)?;
            let vx_idx = links.index(&vx)?;
            set_link(
                &h,
                LinkUnspec::new_with_index(vx_idx)
                    .controller(br_idx)
                    .mtu(mtu)
                    .up()
                    .build(),
                &vx,
            )
            .await?;
            set_link(
                &h,
                LinkUnspec::new_with_index(br_idx).mtu(mtu).up().build(),
                &br,
            )
            .await?;
            sync_fdb(&h, vx_idx, &peers).await
        })
        .await?;
        if p.network_node {
            self.ensure_network_node(p, nb).await
        } else if netns_path(&self.network_namespace(p.vxid)).exists()
            || DnsmasqPaths::new(&self.cfg.state_dir, p.vxid).dir.exists()
        {
            // This host stopped being the network node.
            self.teardown_network_node(p.vxid).await
        } else {
            Ok(())
        }
    }

    async fn update_dhcp(&self, p: &NetworkPlumbing) -> Result<(), HostNetError> {
        Self::validate(p)?;
        if !p.network_node {
            return Ok(());
        }
        let lock = self.lock_for(p.vxid);
        let _guard = lock.lock().await;
        dnsmasq::ensure(p, &self.cfg.state_dir, &self.cfg.node_name).await
    }

    async fn delete_network(&self, vxid: u32) -> Result<(), HostNetError> {
        let lock = self.lock_for(vxid);
        let _guard = lock.lock().await;
        self.teardown_network_node(vxid).await?;
        self.node_ns(move |h| async move {
            let links = Links::dump(&h).await?;
            for name in [vxlan_name(vxid), bridge_name(vxid)] {
                if let Some(l) = links.get(&name) {
                    del_link(&h, l.index, &name).await?;
                }
            }
            Ok(())
        })
        .await
    }

    async fn list_networks(&self) -> Result<Vec<u32>, HostNetError> {
        self.node_ns(|h| async move {
            let links = Links::dump(&h).await?;
            let set: BTreeSet<u32> = links
                .by_name
                .keys()
                .filter_map(|n| parse_vxid_from_bridge(n).or_else(|| parse_vxid_from_vxlan(n)))
                .collect();
            Ok(set.into_iter().collect())
        })
        .await
    }
}

/// Synchronous clean-up for tests' Drop guards: kills every process in, and deletes,
/// each network namespace named with `node_name`'s [`crate::node_tag`] (the per-network
/// namespaces this node's backend made). Returns the namespaces removed. Best effort.
pub fn purge_node_namespaces(node_name: &str) -> Vec<String> {
    use std::process::Command;
    let prefix = format!("{}-", crate::names::node_tag(node_name));
    let list = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let mut removed = Vec::new();
    for ns in list.lines().filter_map(|l| l.split_whitespace().next()) {
        if !ns.starts_with(&prefix) {
            continue;
        }
        if let Ok(o) = Command::new("ip").args(["netns", "pids", ns]).output() {
            for pid in String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok())
            {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        if Command::new("ip")
            .args(["netns", "del", ns])
            .status()
            .is_ok_and(|s| s.success())
        {
            removed.push(ns.to_string());
        }
    }
    removed
}

/// Maps an rtnetlink error to [`HostNetError::Netlink`] for operation `op`.
fn nl(op: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> HostNetError {
    let op = op.into();
    move |e| HostNetError::Netlink {
        op,
        message: e.to_string(),
    }
}

fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(-m.raw_code()),
        _ => None,
    }
}

/// One link as observed.
#[derive(Debug, Clone)]
struct Link {
    index: u32,
    kind: Option<InfoKind>,
    vxlan_id: Option<u32>,
    vxlan_link: Option<u32>,
    vxlan_local: Option<Ipv4Addr>,
}

/// All links of a namespace, by name.
struct Links {
    by_name: BTreeMap<String, Link>,
}

impl Links {
    async fn dump(h: &Handle) -> Result<Self, HostNetError> {
        let msgs: Vec<LinkMessage> = h
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(nl("list links"))?;
        let mut by_name = BTreeMap::new();
        for m in msgs {
            let mut name = None;
            let mut link = Link {
                index: m.header.index,
                kind: None,
                vxlan_id: None,
                vxlan_link: None,
                vxlan_local: None,
            };
            for a in &m.attributes {
                match a {
                    LinkAttribute::IfName(n) => name = Some(n.clone()),
                    LinkAttribute::LinkInfo(infos) => {
                        for i in infos {
                            match i {
                                LinkInfo::Kind(k) => link.kind = Some(k.clone()),
                                LinkInfo::Data(InfoData::Vxlan(v)) => {
                                    for x in v {
                                        match x {
                                            InfoVxlan::Id(id) => link.vxlan_id = Some(*id),
                                            InfoVxlan::Link(l) => link.vxlan_link = Some(*l),
                                            InfoVxlan::Local(a) => link.vxlan_local = Some(*a),
                                            _ => {}
                                        }
                                    }
                                }
                                _ => {}
                            }
                        }
                    }
                    _ => {}
                }
            }
            if let Some(n) = name {
                by_name.insert(n, link);
            }
        }
        Ok(Self { by_name })
    }

    fn get(&self, name: &str) -> Option<&Link> {
        self.by_name.get(name)
    }

    fn index(&self, name: &str) -> Result<u32, HostNetError> {
        self.get(name)
            .map(|l| l.index)
            .ok_or_else(|| HostNetError::Netlink {
                op: format!("find link {name}"),
                message: "no such interface".into(),
            })
    }
}

/// Creates a link; one that appeared meanwhile (EEXIST) is fine.
async fn create_link(h: &Handle, msg: LinkMessage, name: &str) -> Result<(), HostNetError> {
    match h.link().add(msg).execute().await {
        Ok(()) => Ok(()),
        Err(e) if errno(&e) == Some(EEXIST) => Ok(()),
        Err(e) => Err(nl(format!("create link {name}"))(e)),
    }
}

async fn set_link(h: &Handle, msg: LinkMessage, what: &str) -> Result<(), HostNetError> {
    h.link()
        .change(msg)
        .execute()
        .await
        .map_err(nl(format!("set link {what}")))
}

async fn del_link(h: &Handle, index: u32, name: &str) -> Result<(), HostNetError> {
    match h.link().del(index).execute().await {
        Ok(()) => Ok(()),
        Err(e) if errno(&e) == Some(ENODEV) => Ok(()),
        Err(e) => Err(nl(format!("delete link {name}"))(e)),
    }
}

async fn add_address(
    h: &Handle,
    index: u32,
    addr: Ipv4Addr,
    prefix: u8,
    what: &str,
) -> Result<(), HostNetError> {
    match h
        .address()
        .add(index, IpAddr::V4(addr), prefix)
        .execute()
        .await
    {
        Ok(()) => Ok(()),
        Err(e) if errno(&e) == Some(EEXIST) => Ok(()),
        Err(e) => Err(nl(format!("add address {addr}/{prefix} to {what}"))(e)),
    }
}

/// Makes the IPv4 addresses of link `index` exactly `want`.
async fn sync_addresses(
    h: &Handle,
    index: u32,
    want: &BTreeSet<(Ipv4Addr, u8)>,
    what: &str,
) -> Result<(), HostNetError> {
    let msgs: Vec<AddressMessage> = h
        .address()
        .get()
        .set_link_index_filter(index)
        .execute()
        .try_collect()
        .await
        .map_err(nl(format!("list addresses of {what}")))?;
    let mut have = BTreeSet::new();
    for m in msgs {
        if m.header.index != index {
            continue;
        }
        let addr = m.attributes.iter().find_map(|a| match a {
            AddressAttribute::Address(IpAddr::V4(v4)) => Some(*v4),
            _ => None,
        });
        let Some(addr) = addr else { continue };
        let key = (addr, m.header.prefix_len);
        if want.contains(&key) {
            have.insert(key);
        } else {
            match h.address().del(m).execute().await {
                Ok(()) => {}
                Err(e) if errno(&e) == Some(EADDRNOTAVAIL) => {}
                Err(e) => return Err(nl(format!("remove stale address {addr} from {what}"))(e)),
            }
        }
    }
    for (a, p) in want.difference(&have) {
        add_address(h, index, *a, *p, what).await?;
    }
    Ok(())
}

/// Makes the static `/32` routes out of `oif` in the main table exactly `want`.
async fn sync_host_routes(
    h: &Handle,
    oif: u32,
    want: &BTreeSet<Ipv4Addr>,
) -> Result<(), HostNetError> {
    let msgs: Vec<RouteMessage> = h
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute()
        .try_collect()
        .await
        .map_err(nl("list routes"))?;
    let mut have = BTreeSet::new();
    for m in msgs {
        if m.header.table != RouteHeader::RT_TABLE_MAIN
            || m.header.destination_prefix_length != 32
            || m.header.protocol != RouteProtocol::Static
        {
            continue;
        }
        let on_oif = m
            .attributes
            .iter()
            .any(|a| matches!(a, RouteAttribute::Oif(i) if *i == oif));
        let dst = m.attributes.iter().find_map(|a| match a {
            RouteAttribute::Destination(RouteAddress::Inet(d)) => Some(*d),
            _ => None,
        });
        let (true, Some(dst)) = (on_oif, dst) else {
            continue;
        };
        if want.contains(&dst) {
            have.insert(dst);
        } else {
            match h.route().del(m).execute().await {
                Ok(()) => {}
                Err(e) if errno(&e) == Some(ESRCH) => {}
                Err(e) => return Err(nl(format!("remove stale route {dst}/32"))(e)),
            }
        }
    }
    for dst in want.difference(&have) {
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(*dst, 32)
            .output_interface(oif)
            .scope(RouteScope::Link)
            .build();
        h.route()
            .add(route)
            .replace()
            .execute()
            .await
            .map_err(nl(format!("add route {dst}/32")))?;
    }
    Ok(())
}

/// Makes a veth pair `outer` (here) / `inner` (inside namespace `ns`) exist; true when
/// it had to be created.
async fn ensure_veth_into_ns(
    h: &Handle,
    links: &Links,
    outer: &str,
    inner: &str,
    mtu: u32,
    ns: &str,
) -> Result<bool, HostNetError> {
    let created = links.get(outer).is_none();
    if created {
        create_link(h, LinkVeth::new(outer, inner).mtu(mtu).build(), outer).await?;
    }
    // The inner end is still here after a fresh create (or a crash mid-way): move it.
    let links = Links::dump(h).await?;
    if let Some(l) = links.get(inner) {
        let f = std::fs::File::open(netns_path(ns)).map_err(|e| HostNetError::Namespace {
            name: ns.to_string(),
            op: "enter",
            message: e.to_string(),
        })?;
        set_link(
            h,
            LinkUnspec::new_with_index(l.index)
                .setns_by_fd(f.as_raw_fd())
                .build(),
            inner,
        )
        .await?;
    }
    Ok(created)
}

/// Parses `aa:bb:cc:dd:ee:ff`.
fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut out {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

/// The all-zero fdb destinations on `vx_idx`.
async fn fdb_destinations(h: &Handle, vx_idx: u32) -> Result<BTreeSet<Ipv4Addr>, HostNetError> {
    let msgs: Vec<NeighbourMessage> = h
        .neighbours()
        .get()
        .set_address_family(AddressFamily::Bridge)
        .execute()
        .try_collect()
        .await
        .map_err(nl("list fdb"))?;
    let mut out = BTreeSet::new();
    for m in msgs {
        if m.header.ifindex != vx_idx {
            continue;
        }
        let zero = m.attributes.iter().any(
            |a| matches!(a, NeighbourAttribute::LinkLayerAddress(l) if l.iter().all(|b| *b == 0)),
        );
        if !zero {
            continue;
        }
        for a in &m.attributes {
            // For AF_BRIDGE messages the destination is not decoded as Inet.
            match a {
                NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => {
                    out.insert(*ip);
                }
                NeighbourAttribute::Destination(NeighbourAddress::Other(b)) => {
                    if let Ok(o) = <[u8; 4]>::try_from(b.as_slice()) {
                        out.insert(Ipv4Addr::from(o));
                    }
                }
                _ => {}
            }
        }
    }
    Ok(out)
}

fn fdb_message(vx_idx: u32, peer: Ipv4Addr) -> NeighbourMessage {
    let mut m = NeighbourMessage::default();
    m.header.family = AddressFamily::Bridge;
    m.header.ifindex = vx_idx;
    m.header.state = NeighbourState::Permanent;
    m.header.flags = NeighbourFlags::Own;
    m.header.kind = RouteType::Unspec;
    m.attributes
        .push(NeighbourAttribute::LinkLayerAddress(vec![0; 6]));
    m.attributes
        .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(
            peer,
        )));
    m
}

/// `bridge fdb append 00:00:00:00:00:00 dst <peer> dev <vxlan>` for each wanted peer,
/// and deletion of the all-zero entries for peers no longer wanted.
async fn sync_fdb(h: &Handle, vx_idx: u32, want: &BTreeSet<Ipv4Addr>) -> Result<(), HostNetError> {
    let have = fdb_destinations(h, vx_idx).await?;
    for peer in want.difference(&have) {
        let mut req = NetlinkMessage::from(RouteNetlinkMessage::NewNeighbour(fdb_message(
            vx_idx, *peer,
        )));
        req.header.flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_APPEND;
        let mut hh = h.clone();
        let mut resp = hh.request(req).map_err(nl(format!("fdb append {peer}")))?;
        while let Some(msg) = futures::StreamExt::next(&mut resp).await {
            if let NetlinkPayload::Error(e) = msg.payload
                && e.code.is_some()
                && -e.raw_code() != EEXIST
            {
                return Err(HostNetError::Netlink {
                    op: format!("fdb append {peer}"),
                    message: e.to_string(),
                });
            }
        }
    }
    for peer in have.difference(want) {
        match h
            .neighbours()
            .del(fdb_message(vx_idx, *peer))
            .execute()
            .await
        {
            Ok(()) => {}
            Err(e) if matches!(errno(&e), Some(ENOENT) | Some(EADDRNOTAVAIL)) => {}
            Err(e) => return Err(nl(format!("fdb del {peer}"))(e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DhcpHost;

    fn cfg() -> HostNetConfig {
        HostNetConfig::new("hv-1", "eth1", Ipv4Addr::new(192, 0, 2, 1), "/tmp/x")
    }

    #[test]
    fn config_is_checked() {
        assert!(NetlinkHostNet::new(cfg()).is_ok());
        let mut c = cfg();
        c.mesh_interface = "a-name-longer-than-15".into();
        assert!(matches!(
            NetlinkHostNet::new(c),
            Err(HostNetError::InvalidConfig(_))
        ));
        let mut c = cfg();
        c.netns = Some("../etc".into());
        assert!(matches!(
            NetlinkHostNet::new(c),
            Err(HostNetError::InvalidConfig(_))
        ));
        let mut c = cfg();
        c.floating_netblock = Some("nope".into());
        assert!(matches!(
            NetlinkHostNet::new(c),
            Err(HostNetError::InvalidConfig(_))
        ));
    }

    #[test]
    fn plumbing_is_validated() {
        let ok = NetworkPlumbing {
            uid: "u".into(),
            vxid: 7,
            netblock: "10.0.0.0/24".into(),
            mtu: 1450,
            dhcp_hosts: vec![DhcpHost {
                mac: "02:00:00:00:00:01".into(),
                ipv4: Ipv4Addr::new(10, 0, 0, 5),
                hostname: "a".into(),
            }],
            ..Default::default()
        };
        assert!(NetlinkHostNet::validate(&ok).is_ok());
        for bad in [
            NetworkPlumbing {
                vxid: 0,
                ..ok.clone()
            },
            NetworkPlumbing {
                vxid: 1 << 24,
                ..ok.clone()
            },
            NetworkPlumbing {
                mtu: 10,
                ..ok.clone()
            },
            NetworkPlumbing {
                netblock: "10.0.0.0".into(),
                ..ok.clone()
            },
            NetworkPlumbing {
                dhcp_hosts: vec![DhcpHost {
                    ipv4: Ipv4Addr::new(10, 0, 1, 5),
                    ..ok.dhcp_hosts[0].clone()
                }],
                ..ok.clone()
            },
            NetworkPlumbing {
                dhcp_hosts: vec![DhcpHost {
                    mac: "nonsense".into(),
                    ..ok.dhcp_hosts[0].clone()
                }],
                ..ok.clone()
            },
        ] {
            assert!(
                matches!(
                    NetlinkHostNet::validate(&bad),
                    Err(HostNetError::InvalidPlumbing { .. })
                ),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn macs_parse() {
        assert_eq!(
            parse_mac("02:00:00:aa:BB:cc"),
            Some([2, 0, 0, 0xaa, 0xbb, 0xcc])
        );
        assert_eq!(parse_mac("02:00:00:aa:bb"), None);
        assert_eq!(parse_mac("02:00:00:aa:bb:cc:dd"), None);
        assert_eq!(parse_mac("zz:00:00:aa:bb:cc"), None);
    }
}
