//! Network namespaces for privileged tests: the node "fabric" that lets two
//! hypervisor nodes share one machine.
//!
//! Contract:
//! - [`require_privileged`] says whether a privileged test may run: `true` as root;
//!   otherwise it prints why the test is skipped and returns `false`, or panics when
//!   `SF_REQUIRE_PRIVILEGED=1` (CI), so a privileged test never passes silently there.
//! - [`Netns`] is a named network namespace this process made (a leftover of the same
//!   name is removed first); dropping it kills whatever still runs inside and deletes
//!   it, also when the test failed.
//! - [`node_fabric`] makes one namespace per node name, each with `lo` up, a
//!   [`MESH_NIC`] carrying its mesh address and a dead-end [`EGRESS_NIC`] veth. Two
//!   nodes are joined by one veth pair (`mesh0` ↔ `mesh0`); a single node's mesh NIC
//!   is a dead-end veth. Mesh addresses come from 192.0.2.0/24 (TEST-NET-1,
//!   [`mesh_address`]) and exist only inside these namespaces. Veth pairs only (no
//!   dummy links: not every kernel has the module), and nothing is ever created in the
//!   root namespace: no bridge, route, NAT or address.
//! - Every `ip` call is bounded by 30 s (`timeout`); a failure names the command and
//!   what it printed.

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use crate::HarnessError;

/// The mesh NIC inside each node namespace.
pub const MESH_NIC: &str = "mesh0";
/// The (dead-end) egress NIC inside each node namespace.
pub const EGRESS_NIC: &str = "egress0";
/// The environment variable that turns a skipped privileged test into a failure.
pub const REQUIRE_PRIVILEGED_ENV: &str = "SF_REQUIRE_PRIVILEGED";

/// Whether privileged tests may run here (see the module contract); `test` names the
/// test in the message.
pub fn require_privileged(test: &str) -> bool {
    if crate::running_as_root() {
        return true;
    }
    assert!(
        std::env::var(REQUIRE_PRIVILEGED_ENV).as_deref() != Ok("1"),
        "{test} needs root (network namespaces) and {REQUIRE_PRIVILEGED_ENV}=1 is set"
    );
    eprintln!("SKIPPED {test}: needs root for network namespaces");
    false
}

/// Runs `ip ARGS` bounded by 30 s.
pub fn ip(args: &[&str]) -> Result<(), HarnessError> {
    let out = Command::new("timeout")
        .arg("30")
        .arg("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| HarnessError::Command {
            command: format!("ip {}", args.join(" ")),
            output: e.to_string(),
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(HarnessError::Command {
            command: format!("ip {}", args.join(" ")),
            output: format!(
                "{}: {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        })
    }
}

/// A network namespace this process made; deleted (with its processes) on drop.
#[derive(Debug)]
pub struct Netns {
    /// Its name.
    pub name: String,
}

impl Netns {
    /// Creates namespace `name` (removing a leftover of that name first) with `lo` up.
    pub fn create(name: &str) -> Result<Self, HarnessError> {
        delete_netns(name);
        ip(&["netns", "add", name])?;
        let ns = Self { name: name.into() };
        ip(&["-n", name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        delete_netns(&self.name);
    }
}

/// Kills every process inside namespace `name` and deletes it; quiet when it does
/// not exist.
pub fn delete_netns(name: &str) {
    if let Ok(out) = Command::new("ip").args(["netns", "pids", name]).output() {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            let _ = Command::new("kill")
                .args(["-KILL", pid])
                .stderr(Stdio::null())
                .status();
        }
    }
    let _ = Command::new("ip")
        .args(["netns", "del", name])
        .stderr(Stdio::null())
        .status();
}

/// The mesh address of node `index` (0-based): 192.0.2.`index + 1`.
pub fn mesh_address(index: usize) -> Ipv4Addr {
    Ipv4Addr::new(192, 0, 2, u8::try_from(index + 1).unwrap_or(254))
}

/// One node's namespace in a fabric.
#[derive(Debug)]
pub struct FabricNode {
    /// The namespace (named after the node).
    pub netns: Netns,
    /// Its address on [`MESH_NIC`], inside the namespace only.
    pub mesh_address: Ipv4Addr,
}

/// Makes the namespaces of `names` (one or two nodes) joined by a veth mesh (see the
/// module contract). On error, whatever was made is removed again.
pub fn node_fabric(names: &[&str]) -> Result<Vec<FabricNode>, HarnessError> {
    if names.is_empty() || names.len() > 2 {
        return Err(HarnessError::Command {
            command: "node_fabric".into(),
            output: format!("a veth mesh joins one or two nodes, not {}", names.len()),
        });
    }
    let mut nodes = Vec::new();
    for (i, name) in names.iter().enumerate() {
        nodes.push(FabricNode {
            netns: Netns::create(name)?,
            mesh_address: mesh_address(i),
        });
    }
    if let [a, b] = nodes.as_slice() {
        let (a, b) = (a.netns.name.as_str(), b.netns.name.as_str());
        ip(&[
            "-n", a, "link", "add", MESH_NIC, "type", "veth", "peer", "name", MESH_NIC, "netns", b,
        ])?;
    } else {
        let ns = nodes[0].netns.name.as_str();
        let end = format!("{MESH_NIC}-end");
        ip(&[
            "-n", ns, "link", "add", MESH_NIC, "type", "veth", "peer", "name", &end,
        ])?;
        ip(&["-n", ns, "link", "set", &end, "up"])?;
    }
    let egress_end = format!("{EGRESS_NIC}-end");
    for node in &nodes {
        let ns = node.netns.name.as_str();
        let address = format!("{}/24", node.mesh_address);
        ip(&["-n", ns, "addr", "add", &address, "dev", MESH_NIC])?;
        ip(&["-n", ns, "link", "set", MESH_NIC, "up"])?;
        ip(&[
            "-n",
            ns,
            "link",
            "add",
            EGRESS_NIC,
            "type",
            "veth",
            "peer",
            "name",
            &egress_end,
        ])?;
        ip(&["-n", ns, "link", "set", EGRESS_NIC, "up"])?;
    }
    Ok(nodes)
}
