//! Shared conformance suite for [`HostNet`] backends.
//!
//! Contract: every backend — the real [`crate::NetlinkHostNet`] and any fake — must pass
//! every `suite_*` function here. The suite drives two nodes through the [`HostNet`]
//! trait only and checks the results through a [`Fabric`], which observes the hosts and
//! plays guests (for the real backend: network namespaces, `ip`, `bridge`, busybox
//! `ping`/`udhcpc`/`nslookup`). Each suite returns `Err(description)` on the first failed
//! expectation. The suite never cleans up after itself: the caller's environment does
//! (Drop guards), so a failure leaves nothing behind either.

use std::collections::BTreeSet;
use std::future::Future;
use std::net::Ipv4Addr;

use crate::names::{Netblock, bridge_name, router_outer_name, vxlan_name};
use crate::{DhcpHost, FloatingIp, HostNet, NetworkPlumbing};

/// What the network node exposes for one network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkNodeState {
    /// Addresses (`10.0.0.1/24`) on the router interface inside the network namespace.
    pub router_addresses: Vec<String>,
    /// A masquerade rule for the netblock exists.
    pub nat_masquerade: bool,
    /// Pid of the network's running dnsmasq, if any.
    pub dnsmasq_pid: Option<u32>,
    /// Addresses (`198.51.100.10/24`, `198.51.100.20/32`) on the inner egress interface.
    pub egress_addresses: Vec<String>,
    /// DNAT rules as (floating, inner).
    pub dnat: Vec<(Ipv4Addr, Ipv4Addr)>,
    /// Destinations of the `/32` routes to the router interface (routed addresses).
    pub routed: Vec<Ipv4Addr>,
}

/// A static address for a test guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestAddress {
    /// The address.
    pub address: Ipv4Addr,
    /// Its prefix length.
    pub prefix: u8,
    /// Default gateway, if any.
    pub gateway: Option<Ipv4Addr>,
    /// Further addresses the guest owns (as `/32`s), e.g. a routed address.
    pub extra: Vec<Ipv4Addr>,
}

/// Observes hosts and plays guests for the suite. Node numbers are 0 and 1.
pub trait Fabric: Send + Sync {
    /// Interface names on `node` (in its node namespace).
    fn links(&self, node: usize) -> impl Future<Output = Result<BTreeSet<String>, String>> + Send;
    /// Destinations of the all-zero fdb entries of `vxlan-<vxid>` on `node`.
    fn fdb_peers(
        &self,
        node: usize,
        vxid: u32,
    ) -> impl Future<Output = Result<BTreeSet<Ipv4Addr>, String>> + Send;
    /// The network-node side of `vxid` on `node`; `None` when it has none.
    fn network_node_state(
        &self,
        node: usize,
        vxid: u32,
    ) -> impl Future<Output = Result<Option<NetworkNodeState>, String>> + Send;
    /// Kills the dnsmasq of `vxid` on `node` (to test supervision).
    fn kill_dnsmasq(
        &self,
        node: usize,
        vxid: u32,
    ) -> impl Future<Output = Result<(), String>> + Send;
    /// Plugs guest `guest` with `mac` into the bridge of `vxid` on `node`, with a static
    /// address when `addr` is given.
    fn attach_guest(
        &self,
        node: usize,
        vxid: u32,
        guest: &str,
        mac: &str,
        addr: Option<GuestAddress>,
    ) -> impl Future<Output = Result<(), String>> + Send;
    /// Plugs host `name` into the floating network at `node`'s egress (for the real
    /// backend: the egress bridge), with `address/prefix` and `/32` routes `(dst, via)`.
    fn attach_external(
        &self,
        node: usize,
        name: &str,
        address: (Ipv4Addr, u8),
        routes: &[(Ipv4Addr, Ipv4Addr)],
    ) -> impl Future<Output = Result<(), String>> + Send;
    /// Deletes interface `name` on `node` (to test repair).
    fn remove_link(
        &self,
        node: usize,
        name: &str,
    ) -> impl Future<Output = Result<(), String>> + Send;
    /// Which guest (by the name given to `attach_guest`) answers a TCP request sent from
    /// `from` to `dst`; `None` when nothing answers (bounded: a few seconds).
    fn identify(
        &self,
        from: &str,
        dst: Ipv4Addr,
    ) -> impl Future<Output = Result<Option<String>, String>> + Send;
    /// Whether `guest` gets an echo reply from `dst` (bounded: a few seconds).
    fn ping(&self, guest: &str, dst: Ipv4Addr)
    -> impl Future<Output = Result<bool, String>> + Send;
    /// Runs a DHCP client in `guest`; the address offered (also configured on the guest).
    fn dhcp(&self, guest: &str) -> impl Future<Output = Result<Option<Ipv4Addr>, String>> + Send;
    /// Asks DNS server `server` from `guest` for `name`'s A record.
    fn resolve(
        &self,
        guest: &str,
        server: Ipv4Addr,
        name: &str,
    ) -> impl Future<Output = Result<Option<Ipv4Addr>, String>> + Send;
}

/// Two nodes under test: their backends and mesh addresses.
pub struct Nodes<'a, H> {
    /// The backends of node 0 (the network node) and node 1.
    pub net: [&'a H; 2],
    /// Their mesh addresses.
    pub mesh: [Ipv4Addr; 2],
}

macro_rules! check {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!($($fmt)+));
        }
    };
}

fn err<E: std::fmt::Display>(what: &'static str) -> impl FnOnce(E) -> String {
    move |e| format!("{what}: {e}")
}

/// The plumbing used by the suite: netblock `10.<vxid & 0xff>.0.0/24`, provide everything,
/// node 0 is the network node; reservations for `02:00:00:00:00:<n>` → `.10 + n`, `vm-<n>`.
pub fn sample_plumbing(vxid: u32, node: usize, nodes_mesh: [Ipv4Addr; 2]) -> NetworkPlumbing {
    let o = (vxid & 0xff) as u8;
    NetworkPlumbing {
        uid: format!("net-{vxid:06x}"),
        name: "conformance".into(),
        namespace: "demo".into(),
        vxid,
        netblock: format!("10.{o}.0.0/24"),
        mtu: 1450,
        mesh_peers: vec![nodes_mesh[1 - node]],
        network_node: node == 0,
        provide_dhcp: true,
        provide_nat: true,
        provide_dns: true,
        dns_domain: "demo.sf".into(),
        dhcp_hosts: (1..=2).map(|n| sample_host(vxid, n)).collect(),
        floating_gateway: Some(FLOATING_GATEWAY),
        floating_ips: vec![FloatingIp {
            floating: FLOATING_IP,
            inner: sample_host(vxid, 1).ipv4,
        }],
        routed_ips: vec![ROUTED_IP],
    }
}

/// The floating network the suite expects the backends to be configured with.
pub const FLOATING_NETBLOCK: &str = "198.51.100.0/24";
/// The floating gateway of [`sample_plumbing`].
pub const FLOATING_GATEWAY: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
/// The floating address of reservation 1 in [`sample_plumbing`].
pub const FLOATING_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 20);
/// The routed address of [`sample_plumbing`] (owned by the guest of reservation 1).
pub const ROUTED_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 7);

/// Reservation `n` of [`sample_plumbing`].
pub fn sample_host(vxid: u32, n: u8) -> DhcpHost {
    let o = (vxid & 0xff) as u8;
    DhcpHost {
        mac: format!("02:00:00:00:00:{n:02x}"),
        ipv4: Ipv4Addr::new(10, o, 0, 10 + n),
        hostname: format!("vm-{n}"),
    }
}

async fn ensure_both<H: HostNet>(
    n: &Nodes<'_, H>,
    vxid: u32,
) -> Result<[NetworkPlumbing; 2], String> {
    let p0 = sample_plumbing(vxid, 0, n.mesh);
    let p1 = sample_plumbing(vxid, 1, n.mesh);
    n.net[0]
        .ensure_network(&p0)
        .await
        .map_err(err("ensure node 0"))?;
    n.net[1]
        .ensure_network(&p1)
        .await
        .map_err(err("ensure node 1"))?;
    Ok([p0, p1])
}

/// VXLAN + bridge on both nodes, fdb entries pointing at each other, the network-node
/// side on node 0 only, and guests on both nodes talking across the VXLAN; DHCP gives a
/// guest its reservation, DNS answers its name, and `update_dhcp` adds a name.
pub async fn suite_mesh_and_services<H: HostNet, F: Fabric>(
    n: &Nodes<'_, H>,
    f: &F,
    vxid: u32,
) -> Result<(), String> {
    let [mut p0, _] = ensure_both(n, vxid).await?;
    let nb = Netblock::parse(&p0.netblock).map_err(err("netblock"))?;
    for node in 0..2 {
        let nets = n.net[node]
            .list_networks()
            .await
            .map_err(err("list_networks"))?;
        check!(
            nets.contains(&vxid),
            "node {node}: list_networks {nets:?} lacks {vxid}"
        );
        let links = f.links(node).await?;
        for l in [vxlan_name(vxid), bridge_name(vxid)] {
            check!(links.contains(&l), "node {node}: no {l} in {links:?}");
        }
        let peers = f.fdb_peers(node, vxid).await?;
        let want: BTreeSet<_> = [n.mesh[1 - node]].into();
        check!(
            peers == want,
            "node {node}: fdb peers {peers:?}, want {want:?}"
        );
    }
    let st = f
        .network_node_state(0, vxid)
        .await?
        .ok_or("node 0 has no network-node side")?;
    let router = format!("{}/{}", nb.router(), nb.prefix);
    check!(
        st.router_addresses.contains(&router),
        "router addresses {:?} lack {router}",
        st.router_addresses
    );
    check!(st.nat_masquerade, "no masquerade rule");
    check!(st.dnsmasq_pid.is_some(), "dnsmasq not running");
    check!(
        f.network_node_state(1, vxid).await?.is_none(),
        "node 1 has a network-node side"
    );

    // Guests: a static one on node 0, a DHCP one on node 1 (across the VXLAN).
    let h1 = sample_host(vxid, 1);
    let h2 = sample_host(vxid, 2);
    let static_h1 = GuestAddress {
        address: h1.ipv4,
        prefix: nb.prefix,
        gateway: Some(nb.router()),
        extra: vec![],
    };
    f.attach_guest(0, vxid, "g0", &h1.mac, Some(static_h1))
        .await?;
    f.attach_guest(1, vxid, "g1", &h2.mac, None).await?;
    let got = f.dhcp("g1").await?;
    check!(
        got == Some(h2.ipv4),
        "DHCP gave {got:?}, want the reservation {}",
        h2.ipv4
    );
    check!(
        f.ping("g1", h1.ipv4).await?,
        "guest on node 1 cannot ping {} on node 0",
        h1.ipv4
    );
    check!(
        f.ping("g1", nb.router()).await?,
        "guest on node 1 cannot ping the router"
    );
    check!(
        f.ping("g0", h2.ipv4).await?,
        "guest on node 0 cannot ping {}",
        h2.ipv4
    );
    let name = format!("{}.{}", h1.hostname, p0.dns_domain);
    let ans = f.resolve("g1", nb.router(), &name).await?;
    check!(
        ans == Some(h1.ipv4),
        "DNS {name} -> {ans:?}, want {}",
        h1.ipv4
    );

    // update_dhcp: a new reservation becomes resolvable without a restart.
    let pid = st.dnsmasq_pid;
    let h3 = sample_host(vxid, 3);
    p0.dhcp_hosts.push(h3.clone());
    n.net[0]
        .update_dhcp(&p0)
        .await
        .map_err(err("update_dhcp"))?;
    let name3 = format!("{}.{}", h3.hostname, p0.dns_domain);
    let mut ans3 = None;
    for _ in 0..10 {
        ans3 = f.resolve("g1", nb.router(), &name3).await?;
        if ans3.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    check!(
        ans3 == Some(h3.ipv4),
        "after update_dhcp DNS {name3} -> {ans3:?}"
    );
    let st2 = f
        .network_node_state(0, vxid)
        .await?
        .ok_or("network-node side vanished")?;
    check!(
        st2.dnsmasq_pid == pid,
        "update_dhcp restarted dnsmasq ({pid:?} -> {:?}); a SIGHUP suffices",
        st2.dnsmasq_pid
    );
    // update_dhcp elsewhere is a no-op.
    let p1 = sample_plumbing(vxid, 1, n.mesh);
    n.net[1]
        .update_dhcp(&p1)
        .await
        .map_err(err("update_dhcp on node 1"))?;
    check!(
        f.network_node_state(1, vxid).await?.is_none(),
        "update_dhcp on node 1 made a network-node side"
    );
    Ok(())
}

/// Ensuring twice changes nothing: same links, fdb and dnsmasq process; and a dead
/// dnsmasq is restarted by the next ensure.
pub async fn suite_idempotent<H: HostNet, F: Fabric>(
    n: &Nodes<'_, H>,
    f: &F,
    vxid: u32,
) -> Result<(), String> {
    ensure_both(n, vxid).await?;
    let before = (
        f.links(0).await?,
        f.links(1).await?,
        f.fdb_peers(0, vxid).await?,
        f.fdb_peers(1, vxid).await?,
    );
    let st = f.network_node_state(0, vxid).await?;
    ensure_both(n, vxid).await?;
    let after = (
        f.links(0).await?,
        f.links(1).await?,
        f.fdb_peers(0, vxid).await?,
        f.fdb_peers(1, vxid).await?,
    );
    check!(
        before == after,
        "second ensure changed host state: {before:?} -> {after:?}"
    );
    let st2 = f.network_node_state(0, vxid).await?;
    check!(
        st == st2,
        "second ensure changed the network node: {st:?} -> {st2:?}"
    );
    check!(
        st.as_ref().and_then(|s| s.dnsmasq_pid).is_some(),
        "dnsmasq not running"
    );

    f.kill_dnsmasq(0, vxid).await?;
    let dead = f
        .network_node_state(0, vxid)
        .await?
        .and_then(|s| s.dnsmasq_pid);
    check!(dead.is_none(), "dnsmasq still running after kill");
    ensure_both(n, vxid).await?;
    let again = f
        .network_node_state(0, vxid)
        .await?
        .and_then(|s| s.dnsmasq_pid);
    check!(again.is_some(), "ensure did not restart a dead dnsmasq");
    Ok(())
}

/// fdb entries follow `mesh_peers`: added, and stale ones removed.
pub async fn suite_peers_follow<H: HostNet, F: Fabric>(
    n: &Nodes<'_, H>,
    f: &F,
    vxid: u32,
) -> Result<(), String> {
    let extra = Ipv4Addr::new(192, 0, 2, 99);
    let mut p1 = sample_plumbing(vxid, 1, n.mesh);
    p1.mesh_peers.push(extra);
    n.net[1]
        .ensure_network(&p1)
        .await
        .map_err(err("ensure with extra peer"))?;
    let got = f.fdb_peers(1, vxid).await?;
    let want: BTreeSet<_> = [n.mesh[0], extra].into();
    check!(got == want, "fdb {got:?}, want {want:?}");
    p1.mesh_peers = vec![extra];
    n.net[1]
        .ensure_network(&p1)
        .await
        .map_err(err("ensure with peer gone"))?;
    let got = f.fdb_peers(1, vxid).await?;
    check!(got == [extra].into(), "stale peer kept: fdb {got:?}");
    p1.mesh_peers.clear();
    n.net[1]
        .ensure_network(&p1)
        .await
        .map_err(err("ensure with no peers"))?;
    let got = f.fdb_peers(1, vxid).await?;
    check!(got.is_empty(), "fdb {got:?}, want none");
    Ok(())
}

/// Deleting removes everything (twice is fine); a node that stops being the network
/// node loses its network-node side.
pub async fn suite_delete<H: HostNet, F: Fabric>(
    n: &Nodes<'_, H>,
    f: &F,
    vxid: u32,
) -> Result<(), String> {
    ensure_both(n, vxid).await?;
    // Node 0 hands the network-node role away.
    let mut p0 = sample_plumbing(vxid, 0, n.mesh);
    p0.network_node = false;
    n.net[0]
        .ensure_network(&p0)
        .await
        .map_err(err("ensure as non-network node"))?;
    check!(
        f.network_node_state(0, vxid).await?.is_none(),
        "network-node side kept after the role moved"
    );
    check!(
        !f.links(0).await?.contains(&router_outer_name(vxid)),
        "router veth kept after the role moved"
    );
    ensure_both(n, vxid).await?;
    for node in 0..2 {
        for _ in 0..2 {
            n.net[node]
                .delete_network(vxid)
                .await
                .map_err(err("delete_network"))?;
        }
        let nets = n.net[node]
            .list_networks()
            .await
            .map_err(err("list_networks"))?;
        check!(
            !nets.contains(&vxid),
            "node {node}: still lists {vxid} after delete: {nets:?}"
        );
        let hex = format!("{vxid:06x}");
        let left: Vec<_> = f
            .links(node)
            .await?
            .into_iter()
            .filter(|l| l.contains(&hex))
            .collect();
        check!(
            left.is_empty(),
            "node {node}: links left after delete: {left:?}"
        );
        check!(
            f.network_node_state(node, vxid).await?.is_none(),
            "node {node}: network-node side left after delete"
        );
    }
    Ok(())
}

/// The network node's egress: masquerade for the netblock, a floating address DNATed to
/// its guest, a routed address reaching the guest that owns it; and removing the floating
/// and routed addresses from the plumbing removes them from the host.
pub async fn suite_egress<H: HostNet, F: Fabric>(
    n: &Nodes<'_, H>,
    f: &F,
    vxid: u32,
) -> Result<(), String> {
    let [mut p0, _] = ensure_both(n, vxid).await?;
    let nb = Netblock::parse(&p0.netblock).map_err(err("netblock"))?;
    let fnb = Netblock::parse(FLOATING_NETBLOCK).map_err(err("floating netblock"))?;
    let st = f
        .network_node_state(0, vxid)
        .await?
        .ok_or("no network-node side")?;
    let gw = format!("{FLOATING_GATEWAY}/{}", fnb.prefix);
    let fip = format!("{FLOATING_IP}/32");
    check!(
        st.egress_addresses.contains(&gw) && st.egress_addresses.contains(&fip),
        "egress addresses {:?} lack {gw} or {fip}",
        st.egress_addresses
    );
    let h1 = sample_host(vxid, 1);
    let h2 = sample_host(vxid, 2);
    check!(
        st.dnat == vec![(FLOATING_IP, h1.ipv4)],
        "dnat {:?}",
        st.dnat
    );
    check!(st.routed == vec![ROUTED_IP], "routed {:?}", st.routed);

    // g0 (node 0) owns reservation 1 and the routed address; g1 (node 1) reservation 2.
    f.attach_guest(
        0,
        vxid,
        "g0",
        &h1.mac,
        Some(GuestAddress {
            address: h1.ipv4,
            prefix: nb.prefix,
            gateway: Some(nb.router()),
            extra: vec![ROUTED_IP],
        }),
    )
    .await?;
    f.attach_guest(
        1,
        vxid,
        "g1",
        &h2.mac,
        Some(GuestAddress {
            address: h2.ipv4,
            prefix: nb.prefix,
            gateway: Some(nb.router()),
            extra: vec![],
        }),
    )
    .await?;
    // An outside host on the floating network, which knows no route to the netblock.
    let outside = Ipv4Addr::new(198, 51, 100, 200);
    f.attach_external(
        0,
        "x",
        (outside, fnb.prefix),
        &[(ROUTED_IP, FLOATING_GATEWAY)],
    )
    .await?;
    check!(
        f.ping("g1", outside).await?,
        "NAT: guest on node 1 cannot reach the outside host"
    );
    // The network node's own address on the floating network is no destination for
    // guests: behind it are the node's services.
    check!(
        !f.ping("g1", fnb.router()).await?,
        "a guest reaches the network node's own floating-network address"
    );
    let who = f.identify("x", FLOATING_IP).await?;
    check!(
        who.as_deref() == Some("g0"),
        "floating address answered by {who:?}, want its guest g0"
    );
    check!(
        f.ping("x", ROUTED_IP).await?,
        "routed address does not reach its guest"
    );
    let who = f.identify("x", ROUTED_IP).await?;
    check!(
        who.as_deref() == Some("g0"),
        "routed address answered by {who:?}, want its guest g0"
    );

    p0.floating_ips.clear();
    p0.routed_ips.clear();
    p0.provide_nat = false;
    n.net[0]
        .ensure_network(&p0)
        .await
        .map_err(err("ensure without floating/routed"))?;
    let st = f
        .network_node_state(0, vxid)
        .await?
        .ok_or("no network-node side")?;
    check!(
        !st.egress_addresses.contains(&fip),
        "stale floating address kept: {:?}",
        st.egress_addresses
    );
    check!(
        st.egress_addresses.contains(&gw),
        "floating gateway lost: {:?}",
        st.egress_addresses
    );
    check!(st.dnat.is_empty(), "stale dnat kept: {:?}", st.dnat);
    check!(st.routed.is_empty(), "stale route kept: {:?}", st.routed);
    check!(!st.nat_masquerade, "masquerade kept without provide_nat");

    // A guest network inside the floating network is never plumbed on the network
    // node: it would answer for the floating addresses on the shared egress bridge.
    let mut inside = p0.clone();
    inside.vxid = vxid + 1;
    inside.uid = format!("{}-inside", p0.uid);
    inside.netblock = FLOATING_NETBLOCK.to_owned();
    inside.dhcp_hosts.clear();
    inside.floating_gateway = None;
    match n.net[0].ensure_network(&inside).await {
        Err(crate::HostNetError::InvalidPlumbing { reason, .. }) => {
            check!(reason.contains("overlaps the floating network"), "{reason}");
        }
        other => {
            return Err(format!(
                "an overlapping netblock was not refused: {other:?}"
            ));
        }
    }
    check!(
        f.network_node_state(0, vxid + 1).await?.is_none(),
        "an overlapping network left plumbing behind"
    );
    Ok(())
}

/// Concurrent calls are safe: two networks ensured at once, each twice at once, all
/// succeed and both networks end up listed and complete.
pub async fn suite_concurrent<H: HostNet, F: Fabric>(
    n: &Nodes<'_, H>,
    f: &F,
    vxid: u32,
) -> Result<(), String> {
    let other = vxid + 1;
    let pa = sample_plumbing(vxid, 0, n.mesh);
    let pb = sample_plumbing(other, 0, n.mesh);
    let net = n.net[0];
    let (r1, r2, r3, r4) = tokio::join!(
        net.ensure_network(&pa),
        net.ensure_network(&pb),
        net.ensure_network(&pa),
        net.ensure_network(&pb)
    );
    for (i, r) in [r1, r2, r3, r4].into_iter().enumerate() {
        r.map_err(|e| format!("concurrent ensure #{i}: {e}"))?;
    }
    let nets = net.list_networks().await.map_err(err("list_networks"))?;
    check!(
        nets.contains(&vxid) && nets.contains(&other),
        "list_networks {nets:?} lacks {vxid} or {other}"
    );
    for v in [vxid, other] {
        let st = f
            .network_node_state(0, v)
            .await?
            .ok_or(format!("{v}: no network-node side"))?;
        check!(st.dnsmasq_pid.is_some(), "{v}: dnsmasq not running");
        check!(
            f.fdb_peers(0, v).await? == [n.mesh[1]].into(),
            "{v}: wrong fdb"
        );
    }
    let (d1, d2) = tokio::join!(net.delete_network(vxid), net.delete_network(other));
    d1.map_err(err("delete"))?;
    d2.map_err(err("delete"))?;
    let nets = net.list_networks().await.map_err(err("list_networks"))?;
    check!(nets.is_empty(), "networks left after delete: {nets:?}");
    Ok(())
}

/// `ensure_network` repairs: a deleted vxlan, bridge or router veth comes back, with its
/// fdb entries and router address, and DHCP works again afterwards.
pub async fn suite_repair<H: HostNet, F: Fabric>(
    n: &Nodes<'_, H>,
    f: &F,
    vxid: u32,
) -> Result<(), String> {
    ensure_both(n, vxid).await?;
    f.remove_link(0, &router_outer_name(vxid)).await?;
    f.remove_link(1, &vxlan_name(vxid)).await?;
    f.remove_link(1, &bridge_name(vxid)).await?;
    ensure_both(n, vxid).await?;
    let links = f.links(1).await?;
    for l in [vxlan_name(vxid), bridge_name(vxid)] {
        check!(links.contains(&l), "node 1: {l} not repaired");
    }
    check!(
        f.fdb_peers(1, vxid).await? == [n.mesh[0]].into(),
        "node 1: fdb not repaired"
    );
    let p0 = sample_plumbing(vxid, 0, n.mesh);
    let nb = Netblock::parse(&p0.netblock).map_err(err("netblock"))?;
    let st = f
        .network_node_state(0, vxid)
        .await?
        .ok_or("network-node side gone")?;
    let router = format!("{}/{}", nb.router(), nb.prefix);
    check!(
        st.router_addresses.contains(&router),
        "router address not repaired: {:?}",
        st.router_addresses
    );
    let h2 = sample_host(vxid, 2);
    f.attach_guest(1, vxid, "g1", &h2.mac, None).await?;
    let got = f.dhcp("g1").await?;
    check!(
        got == Some(h2.ipv4),
        "DHCP after repair gave {got:?}, want {}",
        h2.ipv4
    );
    Ok(())
}

/// provide_dns off: DHCP still answers but nothing answers DNS; switching it on (a
/// dnsmasq argument change) makes the name resolvable.
pub async fn suite_dns_toggle<H: HostNet, F: Fabric>(
    n: &Nodes<'_, H>,
    f: &F,
    vxid: u32,
) -> Result<(), String> {
    let mut p0 = sample_plumbing(vxid, 0, n.mesh);
    p0.provide_dns = false;
    n.net[0]
        .ensure_network(&p0)
        .await
        .map_err(err("ensure without dns"))?;
    let nb = Netblock::parse(&p0.netblock).map_err(err("netblock"))?;
    let h1 = sample_host(vxid, 1);
    f.attach_guest(0, vxid, "g0", &h1.mac, None).await?;
    let got = f.dhcp("g0").await?;
    check!(
        got == Some(h1.ipv4),
        "DHCP without DNS gave {got:?}, want {}",
        h1.ipv4
    );
    let name = format!("{}.{}", h1.hostname, p0.dns_domain);
    let ans = f.resolve("g0", nb.router(), &name).await?;
    check!(ans.is_none(), "DNS answered {ans:?} with provide_dns off");
    p0.provide_dns = true;
    n.net[0]
        .ensure_network(&p0)
        .await
        .map_err(err("ensure with dns"))?;
    let ans = f.resolve("g0", nb.router(), &name).await?;
    check!(ans == Some(h1.ipv4), "after enabling DNS {name} -> {ans:?}");
    Ok(())
}
