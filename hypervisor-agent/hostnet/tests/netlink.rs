//! Privileged tests of the real backend: the shared conformance suite against
//! `NetlinkHostNet`, with two "nodes" that are network namespaces joined by a veth mesh
//! (192.0.2.0/24, TEST-NET-1, only inside these namespaces). Guests are further
//! namespaces plugged into the nodes' bridges. Everything is created under the prefix
//! `sft-<pid>-` and removed by a Drop guard, also on failure. Not root → skipped, unless
//! `SF_REQUIRE_PRIVILEGED=1`.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;

use sf_hostnet::conformance::{self, Fabric, GuestAddress, NetworkNodeState, Nodes};
use sf_hostnet::{
    HostNetConfig, NetlinkHostNet, bridge_name, egress_bridge_name, egress_inner_name,
    network_namespace_name, purge_node_namespaces, router_inner_name, vxlan_name,
};

fn privileged() -> bool {
    let root = nix::unistd::Uid::effective().is_root();
    if !root {
        if std::env::var("SF_REQUIRE_PRIVILEGED").as_deref() == Ok("1") {
            panic!("SF_REQUIRE_PRIVILEGED=1 but not running as root");
        }
        eprintln!("skipped: netlink tests need root (set SF_REQUIRE_PRIVILEGED=1 to fail instead)");
    }
    root
}

/// Runs a command with a 30 s bound; Ok(stdout) on success.
fn sh(args: &[&str]) -> Result<String, String> {
    let out = Command::new("timeout")
        .arg("30")
        .args(args)
        .output()
        .map_err(|e| format!("{args:?}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{args:?}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn kill_and_delete_netns(ns: &str) {
    if let Ok(pids) = sh(&["ip", "netns", "pids", ns]) {
        for pid in pids
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    let _ = sh(&["ip", "netns", "del", ns]);
}

/// Two nodes and their guests; removes every namespace it (or the backend) made on Drop.
struct Env {
    prefix: String,
    node_ns: [String; 2],
    mesh: [Ipv4Addr; 2],
    guests: Mutex<Vec<String>>,
    _state: tempfile::TempDir,
    state_dirs: [PathBuf; 2],
}

impl Env {
    fn new(tag: &str) -> Self {
        let prefix = format!("sft-{}-{tag}", std::process::id());
        let state = tempfile::tempdir().expect("tempdir");
        let env = Self {
            node_ns: [format!("{prefix}-n0"), format!("{prefix}-n1")],
            mesh: [Ipv4Addr::new(192, 0, 2, 1), Ipv4Addr::new(192, 0, 2, 2)],
            guests: Mutex::new(Vec::new()),
            state_dirs: [state.path().join("n0"), state.path().join("n1")],
            _state: state,
            prefix,
        };
        for ns in &env.node_ns {
            sh(&["ip", "netns", "add", ns]).expect("create node namespace");
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"]).expect("lo up");
        }
        sh(&[
            "ip",
            "-n",
            &env.node_ns[0],
            "link",
            "add",
            "mesh0",
            "type",
            "veth",
            "peer",
            "name",
            "mesh0",
            "netns",
            &env.node_ns[1],
        ])
        .expect("mesh veth");
        for (i, ns) in env.node_ns.iter().enumerate() {
            let a = format!("{}/24", env.mesh[i]);
            sh(&["ip", "-n", ns, "addr", "add", &a, "dev", "mesh0"]).expect("mesh address");
            sh(&["ip", "-n", ns, "link", "set", "mesh0", "mtu", "1500", "up"]).expect("mesh up");
        }
        env
    }

    fn node_name(&self, i: usize) -> String {
        self.node_ns[i].clone()
    }

    fn hostnet(&self, i: usize) -> NetlinkHostNet {
        let mut cfg = HostNetConfig::new(
            self.node_name(i),
            "mesh0",
            self.mesh[i],
            self.state_dirs[i].clone(),
        );
        cfg.netns = Some(self.node_ns[i].clone());
        cfg.floating_netblock = Some(conformance::FLOATING_NETBLOCK.into());
        NetlinkHostNet::new(cfg).expect("config")
    }

    fn guest_ns(&self, guest: &str) -> String {
        format!("{}-{guest}", self.prefix)
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        for g in self.guests.lock().map(|g| g.clone()).unwrap_or_default() {
            kill_and_delete_netns(&g);
        }
        // Every per-network namespace the backends made carries their node tag.
        for i in 0..2 {
            purge_node_namespaces(&self.node_name(i));
            kill_and_delete_netns(&self.node_ns[i]);
        }
        let left = sh(&["ip", "netns", "list"]).unwrap_or_default();
        if left.contains(&self.prefix) {
            eprintln!("warning: namespaces left behind: {left}");
        }
    }
}

impl Fabric for Env {
    async fn links(&self, node: usize) -> Result<BTreeSet<String>, String> {
        let out = sh(&["ip", "-n", &self.node_ns[node], "-o", "link", "show"])?;
        Ok(out
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n).to_string())
            .collect())
    }

    async fn fdb_peers(&self, node: usize, vxid: u32) -> Result<BTreeSet<Ipv4Addr>, String> {
        let out = sh(&[
            "bridge",
            "-n",
            &self.node_ns[node],
            "fdb",
            "show",
            "dev",
            &vxlan_name(vxid),
        ])?;
        Ok(out
            .lines()
            .filter(|l| l.starts_with("00:00:00:00:00:00 dst "))
            .filter_map(|l| l.split_whitespace().nth(2)?.parse().ok())
            .collect())
    }

    async fn network_node_state(
        &self,
        node: usize,
        vxid: u32,
    ) -> Result<Option<NetworkNodeState>, String> {
        let ns = network_namespace_name(&self.node_name(node), vxid);
        if !std::path::Path::new("/var/run/netns").join(&ns).exists() {
            return Ok(None);
        }
        let addrs_of = |dev: &str| -> Vec<String> {
            sh(&["ip", "-n", &ns, "-o", "-4", "addr", "show", "dev", dev])
                .unwrap_or_default()
                .lines()
                .filter_map(|l| {
                    let mut w = l.split_whitespace();
                    w.find(|x| *x == "inet")?;
                    w.next().map(str::to_string)
                })
                .collect()
        };
        let router_addresses = addrs_of(&router_inner_name(vxid));
        let egress_addresses = addrs_of(&egress_inner_name(vxid));
        let nat = sh(&["ip", "netns", "exec", &ns, "nft", "list", "ruleset"]).unwrap_or_default();
        let dnat = nat
            .lines()
            .filter_map(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                match w.as_slice() {
                    ["ip", "daddr", f, "dnat", "to", i] => Some((f.parse().ok()?, i.parse().ok()?)),
                    _ => None,
                }
            })
            .collect();
        let routes = sh(&[
            "ip",
            "-n",
            &ns,
            "-4",
            "route",
            "show",
            "dev",
            &router_inner_name(vxid),
        ])
        .unwrap_or_default();
        let routed = routes
            .lines()
            .filter_map(|l| l.split_whitespace().next()?.parse().ok())
            .collect();
        let pids = sh(&["ip", "netns", "pids", &ns]).unwrap_or_default();
        let dnsmasq_pid = pids.split_whitespace().find_map(|p| {
            let comm = std::fs::read_to_string(format!("/proc/{p}/comm")).ok()?;
            (comm.trim() == "dnsmasq").then(|| p.parse().ok())?
        });
        Ok(Some(NetworkNodeState {
            router_addresses,
            nat_masquerade: nat.contains("masquerade"),
            dnsmasq_pid,
            egress_addresses,
            dnat,
            routed,
        }))
    }

    async fn kill_dnsmasq(&self, node: usize, vxid: u32) -> Result<(), String> {
        let st = self.network_node_state(node, vxid).await?;
        let pid = st.and_then(|s| s.dnsmasq_pid).ok_or("no dnsmasq to kill")?;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .map_err(|e| e.to_string())?;
        for _ in 0..50 {
            if !std::path::Path::new(&format!("/proc/{pid}")).exists()
                || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .map(|s| s.contains(") Z "))
                    .unwrap_or(true)
            {
                return Ok(());
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Err(format!("dnsmasq {pid} did not die"))
    }

    async fn attach_guest(
        &self,
        node: usize,
        vxid: u32,
        guest: &str,
        mac: &str,
        addr: Option<GuestAddress>,
    ) -> Result<(), String> {
        let g = self.guest_ns(guest);
        sh(&["ip", "netns", "add", &g])?;
        self.guests
            .lock()
            .map_err(|e| e.to_string())?
            .push(g.clone());
        let n = &self.node_ns[node];
        let tap = format!("tap-{guest}");
        sh(&[
            "ip", "-n", n, "link", "add", &tap, "type", "veth", "peer", "name", "eth0", "netns", &g,
        ])?;
        sh(&[
            "ip",
            "-n",
            n,
            "link",
            "set",
            &tap,
            "master",
            &bridge_name(vxid),
            "mtu",
            "1450",
            "up",
        ])?;
        sh(&["ip", "-n", &g, "link", "set", "lo", "up"])?;
        sh(&[
            "ip", "-n", &g, "link", "set", "eth0", "address", mac, "mtu", "1450", "up",
        ])?;
        if let Some(a) = addr {
            let cidr = format!("{}/{}", a.address, a.prefix);
            sh(&["ip", "-n", &g, "addr", "add", &cidr, "dev", "eth0"])?;
            for x in &a.extra {
                sh(&[
                    "ip",
                    "-n",
                    &g,
                    "addr",
                    "add",
                    &format!("{x}/32"),
                    "dev",
                    "eth0",
                ])?;
            }
            if let Some(gw) = a.gateway {
                sh(&[
                    "ip",
                    "-n",
                    &g,
                    "route",
                    "add",
                    "default",
                    "via",
                    &gw.to_string(),
                ])?;
            }
        }
        // Every guest serves its own name over HTTP, for `identify`.
        let www = self.state_dirs[0].with_file_name(format!("www-{guest}"));
        std::fs::create_dir_all(&www).map_err(|e| e.to_string())?;
        std::fs::write(www.join("id"), guest).map_err(|e| e.to_string())?;
        sh(&[
            "ip",
            "netns",
            "exec",
            &g,
            "busybox",
            "httpd",
            "-p",
            "8080",
            "-h",
            &www.display().to_string(),
        ])?;
        Ok(())
    }

    async fn remove_link(&self, node: usize, name: &str) -> Result<(), String> {
        sh(&["ip", "-n", &self.node_ns[node], "link", "del", name]).map(drop)
    }

    async fn identify(&self, from: &str, dst: Ipv4Addr) -> Result<Option<String>, String> {
        let g = self.guest_ns(from);
        let url = format!("http://{dst}:8080/id");
        for _ in 0..3 {
            match sh(&[
                "ip", "netns", "exec", &g, "timeout", "5", "busybox", "wget", "-q", "-O", "-", &url,
            ]) {
                Ok(body) => return Ok(Some(body.trim().to_string())),
                Err(e) => eprintln!("identify {dst} from {from}: {e}"),
            }
        }
        Ok(None)
    }

    async fn attach_external(
        &self,
        node: usize,
        name: &str,
        address: (Ipv4Addr, u8),
        routes: &[(Ipv4Addr, Ipv4Addr)],
    ) -> Result<(), String> {
        let g = self.guest_ns(name);
        sh(&["ip", "netns", "add", &g])?;
        self.guests
            .lock()
            .map_err(|e| e.to_string())?
            .push(g.clone());
        let n = &self.node_ns[node];
        let end = format!("ext-{name}");
        sh(&[
            "ip", "-n", n, "link", "add", &end, "type", "veth", "peer", "name", "eth0", "netns", &g,
        ])?;
        sh(&[
            "ip",
            "-n",
            n,
            "link",
            "set",
            &end,
            "master",
            &egress_bridge_name(None),
            "up",
        ])?;
        sh(&["ip", "-n", &g, "link", "set", "lo", "up"])?;
        sh(&["ip", "-n", &g, "link", "set", "eth0", "up"])?;
        let cidr = format!("{}/{}", address.0, address.1);
        sh(&["ip", "-n", &g, "addr", "add", &cidr, "dev", "eth0"])?;
        for (dst, via) in routes {
            sh(&[
                "ip",
                "-n",
                &g,
                "route",
                "add",
                &format!("{dst}/32"),
                "via",
                &via.to_string(),
            ])?;
        }
        Ok(())
    }

    async fn ping(&self, guest: &str, dst: Ipv4Addr) -> Result<bool, String> {
        let g = self.guest_ns(guest);
        let d = dst.to_string();
        for _ in 0..3 {
            if sh(&[
                "ip", "netns", "exec", &g, "busybox", "ping", "-c", "3", "-W", "1", &d,
            ])
            .is_ok()
            {
                return Ok(true);
            }
        }
        Ok(false)
    }

    async fn dhcp(&self, guest: &str) -> Result<Option<Ipv4Addr>, String> {
        let g = self.guest_ns(guest);
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let rec = dir.path().join("lease");
        let script = dir.path().join("udhcpc.sh");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\nif [ \"$1\" = bound ]; then echo \"$ip $mask\" > {}; fi\nexit 0\n",
                rec.display()
            ),
        )
        .map_err(|e| e.to_string())?;
        sh(&["chmod", "+x", &script.display().to_string()])?;
        let r = sh(&[
            "ip",
            "netns",
            "exec",
            &g,
            "busybox",
            "udhcpc",
            "-n",
            "-q",
            "-t",
            "3",
            "-T",
            "2",
            "-i",
            "eth0",
            "-s",
            &script.display().to_string(),
        ]);
        let Ok(lease) = std::fs::read_to_string(&rec) else {
            eprintln!("udhcpc got no lease: {r:?}");
            return Ok(None);
        };
        let mut w = lease.split_whitespace();
        let ip: Ipv4Addr = w
            .next()
            .ok_or("empty lease")?
            .parse()
            .map_err(|e| format!("{e}"))?;
        let mask = w.next().unwrap_or("24");
        sh(&[
            "ip",
            "-n",
            &g,
            "addr",
            "add",
            &format!("{ip}/{mask}"),
            "dev",
            "eth0",
        ])?;
        Ok(Some(ip))
    }

    async fn resolve(
        &self,
        guest: &str,
        server: Ipv4Addr,
        name: &str,
    ) -> Result<Option<Ipv4Addr>, String> {
        let g = self.guest_ns(guest);
        let Ok(out) = sh(&[
            "ip",
            "netns",
            "exec",
            &g,
            "busybox",
            "nslookup",
            "-type=a",
            name,
            &server.to_string(),
        ]) else {
            return Ok(None);
        };
        // After the "Name:" line, the first "Address" line is the answer.
        let after = out.split_once("Name:").map(|(_, a)| a).unwrap_or("");
        Ok(after
            .lines()
            .filter(|l| l.trim_start().starts_with("Address"))
            .find_map(|l| l.split_whitespace().last()?.parse().ok()))
    }
}

fn nodes(env: &Env) -> [NetlinkHostNet; 2] {
    [env.hostnet(0), env.hostnet(1)]
}

macro_rules! conformance_test {
    ($name:ident, $suite:path, $tag:literal, $vxid:literal) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            if !privileged() {
                return;
            }
            // `env` is a local: its Drop removes every namespace, also when the suite panics.
            let env = Env::new($tag);
            let [a, b] = nodes(&env);
            let n = Nodes {
                net: [&a, &b],
                mesh: env.mesh,
            };
            let r = $suite(&n, &env, $vxid).await;
            drop(env);
            if let Err(e) = r {
                panic!("conformance suite failed: {e}");
            }
        }
    };
}

conformance_test!(
    dns_follows_provide_dns,
    conformance::suite_dns_toggle,
    "dn",
    0x5f0050
);
conformance_test!(
    ensure_repairs_deleted_links,
    conformance::suite_repair,
    "rp",
    0x5f0030
);
conformance_test!(
    mesh_ping_dhcp_dns_across_vxlan,
    conformance::suite_mesh_and_services,
    "ms",
    0x5f0011
);
conformance_test!(
    ensure_is_idempotent_and_supervises_dnsmasq,
    conformance::suite_idempotent,
    "id",
    0x5f0012
);
conformance_test!(
    fdb_follows_mesh_peers,
    conformance::suite_peers_follow,
    "pf",
    0x5f0013
);
conformance_test!(
    delete_leaves_nothing,
    conformance::suite_delete,
    "dl",
    0x5f0014
);
conformance_test!(
    concurrent_ensures_are_safe,
    conformance::suite_concurrent,
    "cc",
    0x5f0020
);
conformance_test!(
    nat_floating_and_routed_addresses,
    conformance::suite_egress,
    "eg",
    0x5f0015
);

#[tokio::test]
async fn missing_node_namespace_is_a_clear_error() {
    if !privileged() {
        return;
    }
    let mut cfg = HostNetConfig::new("x", "mesh0", Ipv4Addr::new(192, 0, 2, 1), "/nonexistent");
    cfg.netns = Some(format!("sft-{}-absent", std::process::id()));
    let net = NetlinkHostNet::new(cfg).expect("config");
    let e = sf_hostnet::HostNet::list_networks(&net)
        .await
        .expect_err("no such namespace");
    assert!(
        matches!(e, sf_hostnet::HostNetError::Namespace { op: "enter", .. }),
        "{e}"
    );
}

/// Timings of the real backend (printed; run with `--nocapture`): cold and warm ensure on
/// the network node and on a plain node, and delete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timings() {
    if !privileged() {
        return;
    }
    use sf_hostnet::HostNet;
    let env = Env::new("tm");
    let [a, b] = nodes(&env);
    let vxid = 0x5f0040;
    let p0 = conformance::sample_plumbing(vxid, 0, env.mesh);
    let p1 = conformance::sample_plumbing(vxid, 1, env.mesh);
    let t = std::time::Instant::now();
    a.ensure_network(&p0)
        .await
        .expect("cold ensure, network node");
    let cold_nn = t.elapsed();
    let t = std::time::Instant::now();
    a.ensure_network(&p0)
        .await
        .expect("warm ensure, network node");
    let warm_nn = t.elapsed();
    let t = std::time::Instant::now();
    b.ensure_network(&p1)
        .await
        .expect("cold ensure, plain node");
    let cold_plain = t.elapsed();
    let t = std::time::Instant::now();
    b.ensure_network(&p1)
        .await
        .expect("warm ensure, plain node");
    let warm_plain = t.elapsed();
    let t = std::time::Instant::now();
    a.delete_network(vxid).await.expect("delete, network node");
    let del = t.elapsed();
    eprintln!(
        "timings: network node cold {cold_nn:?} warm {warm_nn:?}; plain node cold {cold_plain:?} warm {warm_plain:?}; delete (network node) {del:?}"
    );
    assert!(a.list_networks().await.expect("list").is_empty());
}
