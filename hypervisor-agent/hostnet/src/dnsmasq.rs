//! dnsmasq for one network on the network node: rendering (pure) and supervision (I/O).
//!
//! Contract: dnsmasq ALWAYS runs with `-C /dev/null --no-resolv` (no config file, no
//! upstream server), bound to the router veth inside the network's namespace, with
//! static-only DHCP from `dhcp-hosts` (`mac,ip,hostname`). With provide_dns it answers
//! `<hostname>.<dns_domain>` on port 53 from `dns-hosts`; otherwise `--port=0`. Files
//! live in `<state_dir>/<vxid:06x>/`; the rendered argument list is kept in
//! `dnsmasq.args`: a change there restarts dnsmasq, a change in the hosts files only
//! SIGHUPs it (dnsmasq re-reads `--dhcp-hostsfile` and `--addn-hosts` on SIGHUP).

use std::path::{Path, PathBuf};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::names::{Netblock, network_namespace_name, router_inner_name};
use crate::{HostNetError, NetworkPlumbing};

/// Lease time handed to guests.
const LEASE_TIME: &str = "1h";

/// Paths of one network's dnsmasq state.
#[derive(Debug, Clone)]
pub(crate) struct DnsmasqPaths {
    pub dir: PathBuf,
    pub args: PathBuf,
    pub pid: PathBuf,
    pub dhcp_hosts: PathBuf,
    pub dns_hosts: PathBuf,
    pub log: PathBuf,
}

impl DnsmasqPaths {
    pub(crate) fn new(state_dir: &Path, vxid: u32) -> Self {
        let dir = state_dir.join(format!("{vxid:06x}"));
        Self {
            args: dir.join("dnsmasq.args"),
            pid: dir.join("dnsmasq.pid"),
            dhcp_hosts: dir.join("dhcp-hosts"),
            dns_hosts: dir.join("dns-hosts"),
            log: dir.join("dnsmasq.log"),
            dir,
        }
    }
}

/// The `--dhcp-hostsfile` contents: one `mac,ip,hostname` line per reservation.
pub fn render_dhcp_hosts(p: &NetworkPlumbing) -> String {
    let mut out = String::new();
    for h in &p.dhcp_hosts {
        out.push_str(&format!(
            "{},{},{}\n",
            h.mac.to_ascii_lowercase(),
            h.ipv4,
            h.hostname
        ));
    }
    out
}

/// The `--addn-hosts` contents: `ip hostname.domain hostname` per reservation (empty
/// without provide_dns).
pub fn render_dns_hosts(p: &NetworkPlumbing) -> String {
    let mut out = String::new();
    if !p.provide_dns {
        return out;
    }
    for h in &p.dhcp_hosts {
        if p.dns_domain.is_empty() {
            out.push_str(&format!("{} {}\n", h.ipv4, h.hostname));
        } else {
            out.push_str(&format!(
                "{} {}.{} {}\n",
                h.ipv4, h.hostname, p.dns_domain, h.hostname
            ));
        }
    }
    out
}

/// The dnsmasq argument list (after the program name) for a network whose state lives
/// in `dir` (normally `<state_dir>/<vxid:06x>`).
pub fn render_dnsmasq_args(p: &NetworkPlumbing, dir: &Path) -> Result<Vec<String>, HostNetError> {
    let nb = Netblock::parse(&p.netblock).map_err(|reason| HostNetError::InvalidPlumbing {
        uid: p.uid.clone(),
        reason,
    })?;
    let d = |f: &str| dir.join(f).display().to_string();
    let router = nb.router();
    let mut a = vec![
        "-C".to_string(),
        "/dev/null".to_string(),
        "--no-resolv".to_string(),
        "--no-hosts".to_string(),
        "--bind-interfaces".to_string(),
        format!("--interface={}", router_inner_name(p.vxid)),
        "--except-interface=lo".to_string(),
        format!("--pid-file={}", d("dnsmasq.pid")),
        format!("--log-facility={}", d("dnsmasq.log")),
        "--user=root".to_string(),
    ];
    if p.provide_dns {
        a.push("--port=53".to_string());
        a.push(format!("--addn-hosts={}", d("dns-hosts")));
        if !p.dns_domain.is_empty() {
            a.push(format!("--domain={}", p.dns_domain));
            a.push(format!("--local=/{}/", p.dns_domain));
        }
    } else {
        a.push("--port=0".to_string());
    }
    if p.provide_dhcp {
        a.extend([
            format!(
                "--dhcp-range={},static,{},{LEASE_TIME}",
                nb.network,
                nb.netmask()
            ),
            format!("--dhcp-hostsfile={}", d("dhcp-hosts")),
            format!("--dhcp-leasefile={}", d("leases")),
            "--dhcp-authoritative".to_string(),
            format!("--dhcp-option=option:router,{router}"),
            format!("--dhcp-option=option:mtu,{}", p.mtu),
        ]);
        if p.provide_dns {
            a.push(format!("--dhcp-option=option:dns-server,{router}"));
        } else {
            // An empty option 6: guests get no DNS server rather than the router.
            a.push("--dhcp-option=option:dns-server".to_string());
        }
    }
    Ok(a)
}

/// Whether this network needs a dnsmasq on its network node.
pub(crate) fn wanted(p: &NetworkPlumbing) -> bool {
    p.network_node && (p.provide_dhcp || p.provide_dns)
}

/// Writes `contents` to `path` when it differs; returns whether it changed.
fn write_if_changed(path: &Path, contents: &str) -> Result<bool, HostNetError> {
    match std::fs::read_to_string(path) {
        Ok(old) if old == contents => return Ok(false),
        _ => {}
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).map_err(|source| HostNetError::StateFile {
        path: tmp.clone(),
        source,
    })?;
    std::fs::rename(&tmp, path).map_err(|source| HostNetError::StateFile {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(true)
}

/// The pid of this network's dnsmasq if it is alive (pid file names a live process
/// whose command line mentions our pid file).
pub(crate) fn running_pid(paths: &DnsmasqPaths) -> Option<Pid> {
    let s = std::fs::read_to_string(&paths.pid).ok()?;
    let pid: i32 = s.trim().parse().ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let cmdline = String::from_utf8_lossy(&cmdline);
    let marker = format!("--pid-file={}", paths.pid.display());
    if cmdline.split('\0').any(|arg| arg == marker) {
        Some(Pid::from_raw(pid))
    } else {
        None
    }
}

/// Stops this network's dnsmasq (SIGTERM, then SIGKILL after ~2 s). Idempotent.
pub(crate) async fn stop(paths: &DnsmasqPaths) {
    let Some(pid) = running_pid(paths) else {
        return;
    };
    let _ = kill(pid, Signal::SIGTERM);
    for _ in 0..40 {
        if running_pid(paths).is_none() {
            let _ = std::fs::remove_file(&paths.pid);
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let _ = kill(pid, Signal::SIGKILL);
    let _ = std::fs::remove_file(&paths.pid);
}

/// Renders the files and makes dnsmasq run with them: starts it when dead, restarts it
/// when its arguments changed, SIGHUPs it when only the hosts files changed.
pub(crate) async fn ensure(
    p: &NetworkPlumbing,
    state_dir: &Path,
    node_name: &str,
) -> Result<(), HostNetError> {
    let paths = DnsmasqPaths::new(state_dir, p.vxid);
    if !wanted(p) {
        stop(&paths).await;
        return Ok(());
    }
    std::fs::create_dir_all(&paths.dir).map_err(|source| HostNetError::StateFile {
        path: paths.dir.clone(),
        source,
    })?;
    let args = render_dnsmasq_args(p, &paths.dir)?;
    let hosts_changed = write_if_changed(&paths.dhcp_hosts, &render_dhcp_hosts(p))?;
    let dns_changed = write_if_changed(&paths.dns_hosts, &render_dns_hosts(p))?;
    let args_changed = write_if_changed(&paths.args, &(args.join("\n") + "\n"))?;
    match running_pid(&paths) {
        Some(_) if args_changed => {
            stop(&paths).await;
            start(p.vxid, &paths, &args, node_name).await
        }
        Some(pid) => {
            if hosts_changed || dns_changed {
                kill(pid, Signal::SIGHUP).map_err(|e| HostNetError::Dnsmasq {
                    vxid: p.vxid,
                    message: format!("SIGHUP {pid}: {e}"),
                })?;
            }
            Ok(())
        }
        None => start(p.vxid, &paths, &args, node_name).await,
    }
}

async fn start(
    vxid: u32,
    paths: &DnsmasqPaths,
    args: &[String],
    node_name: &str,
) -> Result<(), HostNetError> {
    let _ = std::fs::remove_file(&paths.pid);
    let ns = network_namespace_name(node_name, vxid);
    let mut cmd = vec!["netns", "exec", ns.as_str(), "dnsmasq"];
    cmd.extend(args.iter().map(String::as_str));
    crate::worker::run_command("ip", &cmd).await?;
    // dnsmasq writes its pid file after daemonising; wait for it (bounded).
    for _ in 0..50 {
        if running_pid(paths).is_some() {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let log = std::fs::read_to_string(&paths.log).unwrap_or_default();
    Err(HostNetError::Dnsmasq {
        vxid,
        message: format!(
            "not running 2.5 s after start; log tail: {}",
            log.lines().rev().take(5).collect::<Vec<_>>().join(" | ")
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DhcpHost;
    use std::net::Ipv4Addr;

    fn plumbing(dns: bool) -> NetworkPlumbing {
        NetworkPlumbing {
            uid: "u".into(),
            name: "web".into(),
            namespace: "demo".into(),
            vxid: 0x2a,
            netblock: "10.0.0.0/24".into(),
            mtu: 1450,
            mesh_peers: vec![],
            network_node: true,
            provide_dhcp: true,
            provide_nat: true,
            provide_dns: dns,
            dns_domain: "demo.sf".into(),
            dhcp_hosts: vec![DhcpHost {
                mac: "02:00:00:AA:BB:CC".into(),
                ipv4: Ipv4Addr::new(10, 0, 0, 7),
                hostname: "web-1".into(),
            }],
            floating_gateway: None,
            ..Default::default()
        }
    }

    #[test]
    fn args_always_isolate_from_upstream() {
        for dns in [false, true] {
            let a = render_dnsmasq_args(&plumbing(dns), Path::new("/s/00002a")).expect("render");
            assert_eq!(&a[..3], ["-C", "/dev/null", "--no-resolv"]);
            assert!(!a.iter().any(|x| x.starts_with("--server")));
            assert_eq!(a.contains(&"--port=0".to_string()), !dns);
            assert_eq!(a.contains(&"--port=53".to_string()), dns);
            assert!(a.contains(&"--interface=veth-00002a-i".to_string()));
            assert!(a.contains(&"--dhcp-range=10.0.0.0,static,255.255.255.0,1h".to_string()));
        }
    }

    #[test]
    fn hosts_files_render() {
        let p = plumbing(true);
        assert_eq!(render_dhcp_hosts(&p), "02:00:00:aa:bb:cc,10.0.0.7,web-1\n");
        assert_eq!(render_dns_hosts(&p), "10.0.0.7 web-1.demo.sf web-1\n");
        assert_eq!(render_dns_hosts(&plumbing(false)), "");
    }

    #[test]
    fn bad_netblock_is_invalid_plumbing() {
        let mut p = plumbing(true);
        p.netblock = "nonsense".into();
        assert!(matches!(
            render_dnsmasq_args(&p, Path::new("/x")),
            Err(HostNetError::InvalidPlumbing { .. })
        ));
    }
}
