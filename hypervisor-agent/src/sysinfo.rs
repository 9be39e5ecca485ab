//! Host facts for the Node status: capacity and measured usage, read from `/proc`,
//! `/sys` and `statvfs(STORAGE_PATH)`.
//!
//! Contract: the parsers are pure functions over the file text (unit-tested);
//! [`measure`] reads the files and never fails the heartbeat: a fact that cannot be
//! read is reported as 0. Disk busy % is the share of wall time the block device
//! holding `STORAGE_PATH` was busy (`io_ticks` of `/sys/dev/block/M:m/stat`) since
//! the previous measurement.

use std::path::Path;
use std::time::Instant;

use sf_schema::node::{NodeCapacity, NodeUsage};

/// One measurement.
#[derive(Debug, Clone, PartialEq)]
pub struct HostFacts {
    /// What the node has.
    pub capacity: NodeCapacity,
    /// What is in use (`instances` is filled in by the caller).
    pub usage: NodeUsage,
}

/// Keeps the previous disk counters for the busy percentage.
#[derive(Debug, Default)]
pub struct Sampler {
    last: Option<(Instant, u64)>,
}

/// CPU threads: the `processor` lines of `/proc/cpuinfo`.
pub fn parse_cpu_threads(cpuinfo: &str) -> u32 {
    let n = cpuinfo
        .lines()
        .filter(|l| l.split(':').next().is_some_and(|k| k.trim() == "processor"))
        .count();
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// `(MemTotal, MemAvailable)` in KiB from `/proc/meminfo`.
pub fn parse_meminfo(meminfo: &str) -> (u64, u64) {
    let field = |name: &str| {
        meminfo
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.trim_start_matches(':').split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (field("MemTotal"), field("MemAvailable"))
}

/// The one-minute load from `/proc/loadavg`.
pub fn parse_loadavg(loadavg: &str) -> f64 {
    loadavg
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// `io_ticks` (ms busy) from a `/sys/dev/block/M:m/stat` line (the 10th field).
pub fn parse_io_ticks(stat: &str) -> Option<u64> {
    stat.split_whitespace().nth(9)?.parse().ok()
}

const GIB: u64 = 1 << 30;

fn io_ticks_of(path: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(path).ok()?.dev();
    let major = nix::sys::stat::major(dev);
    let minor = nix::sys::stat::minor(dev);
    let stat = std::fs::read_to_string(format!("/sys/dev/block/{major}:{minor}/stat")).ok()?;
    parse_io_ticks(&stat)
}

impl Sampler {
    /// Measures the host (see the module contract).
    pub fn measure(&mut self, storage_path: &Path) -> HostFacts {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let cpu_threads = parse_cpu_threads(&read("/proc/cpuinfo"));
        let (total_kib, available_kib) = parse_meminfo(&read("/proc/meminfo"));
        let load_1m = parse_loadavg(&read("/proc/loadavg"));
        let (disk_total, disk_used) = match nix::sys::statvfs::statvfs(storage_path) {
            Ok(s) => {
                let frsize = s.fragment_size();
                let blocks = s.blocks();
                let free = s.blocks_free();
                (
                    blocks.saturating_mul(frsize),
                    blocks.saturating_sub(free).saturating_mul(frsize),
                )
            }
            Err(_) => (0, 0),
        };
        let now = Instant::now();
        let ticks = io_ticks_of(storage_path);
        let disk_busy_percent = match (self.last, ticks) {
            (Some((then, before)), Some(after)) => {
                let wall_ms = now.duration_since(then).as_millis() as f64;
                if wall_ms > 0.0 {
                    ((after.saturating_sub(before)) as f64 / wall_ms * 100.0).clamp(0.0, 100.0)
                } else {
                    0.0
                }
            }
            _ => 0.0,
        };
        self.last = ticks.map(|t| (now, t));
        HostFacts {
            capacity: NodeCapacity {
                cpu_threads,
                memory_mib: total_kib / 1024,
                disk_gib: disk_total / GIB,
            },
            usage: NodeUsage {
                load_1m,
                memory_used_mib: total_kib.saturating_sub(available_kib) / 1024,
                disk_used_gib: disk_used / GIB,
                disk_busy_percent,
                instances: 0,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsers_read_proc_text() {
        assert_eq!(
            parse_cpu_threads("processor\t: 0\nmodel name\t: x\n\nprocessor\t: 1\n"),
            2
        );
        assert_eq!(
            parse_meminfo(
                "MemTotal:       24000000 kB\nMemFree: 1 kB\nMemAvailable:   20000000 kB\n"
            ),
            (24_000_000, 20_000_000)
        );
        assert!((parse_loadavg("0.52 0.40 0.30 1/200 1234") - 0.52).abs() < 1e-9);
        assert_eq!(
            parse_io_ticks("  100 0 200 30 40 0 50 60 0 777 90 0 0 0 0 0 0"),
            Some(777)
        );
        assert_eq!(parse_io_ticks("1 2"), None);
    }

    #[test]
    fn measuring_this_host_gives_capacity() {
        let mut s = Sampler::default();
        let dir = tempfile::tempdir().expect("tempdir");
        let facts = s.measure(dir.path());
        assert!(facts.capacity.cpu_threads >= 1);
        assert!(facts.capacity.memory_mib > 0);
        assert!(facts.capacity.disk_gib > 0 || facts.usage.disk_used_gib == 0);
        let again = s.measure(dir.path());
        assert!((0.0..=100.0).contains(&again.usage.disk_busy_percent));
    }
}
