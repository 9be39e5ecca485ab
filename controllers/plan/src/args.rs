//! [`SchedulerArgs`] (feature `config`): the scheduler's settings as `SHAKENFIST_*`
//! environment variables and flags, with Shaken Fist's defaults.
//!
//! Contract: one definition shared by sf-cluster (which schedules with them) and
//! sf-api (whose `GET /admin/resources` reports the same arithmetic), so both read the
//! same keys and cannot disagree. [`SchedulerArgs::invalid`] names the first bad key;
//! the daemons turn it into their exit-64 configuration error.

use crate::scheduler::SchedulerConfig;

/// The scheduler's settings (flatten into a daemon's clap `Config`).
#[derive(Debug, Clone, clap::Args)]
pub struct SchedulerArgs {
    /// Threads kept for each hypervisor.
    #[arg(
        long,
        env = "SHAKENFIST_NODE_CPU_RESERVATION_THREADS",
        default_value_t = 2
    )]
    pub node_cpu_reservation_threads: u64,
    /// Memory kept for each hypervisor, GiB.
    #[arg(long, env = "SHAKENFIST_NODE_RAM_RESERVATION_GB", default_value_t = 2)]
    pub node_ram_reservation_gb: u64,
    /// Disk kept for each hypervisor, GiB.
    #[arg(
        long,
        env = "SHAKENFIST_NODE_DISK_RESERVATION_GB",
        default_value_t = 20
    )]
    pub node_disk_reservation_gb: u64,
    /// CPU overcommit.
    #[arg(long, env = "SHAKENFIST_CPU_OVERCOMMIT_RATIO", default_value_t = 3.0)]
    pub cpu_overcommit_ratio: f64,
    /// RAM overcommit.
    #[arg(long, env = "SHAKENFIST_RAM_OVERCOMMIT_RATIO", default_value_t = 3.0)]
    pub ram_overcommit_ratio: f64,
    /// Disk overcommit.
    #[arg(
        long,
        env = "SHAKENFIST_SCHEDULER_DISK_OVERCOMMIT",
        default_value_t = 5.0
    )]
    pub scheduler_disk_overcommit: f64,
    /// Committed fraction above which a node is penalised.
    #[arg(long, env = "SHAKENFIST_SCHEDULER_TARGET_LOAD", default_value_t = 0.75)]
    pub scheduler_target_load: f64,
}

impl SchedulerArgs {
    /// The scheduler configuration these settings give.
    pub fn config(&self) -> SchedulerConfig {
        SchedulerConfig {
            cpu_reservation_threads: self.node_cpu_reservation_threads,
            ram_reservation_gb: self.node_ram_reservation_gb,
            disk_reservation_gb: self.node_disk_reservation_gb,
            cpu_overcommit_ratio: self.cpu_overcommit_ratio,
            ram_overcommit_ratio: self.ram_overcommit_ratio,
            disk_overcommit_ratio: self.scheduler_disk_overcommit,
            target_load: self.scheduler_target_load,
            ..SchedulerConfig::default()
        }
    }

    /// The first invalid setting, as (key, what is wrong); `None` when all are valid.
    pub fn invalid(&self) -> Option<(&'static str, String)> {
        [
            ("SHAKENFIST_CPU_OVERCOMMIT_RATIO", self.cpu_overcommit_ratio),
            ("SHAKENFIST_RAM_OVERCOMMIT_RATIO", self.ram_overcommit_ratio),
            (
                "SHAKENFIST_SCHEDULER_DISK_OVERCOMMIT",
                self.scheduler_disk_overcommit,
            ),
            (
                "SHAKENFIST_SCHEDULER_TARGET_LOAD",
                self.scheduler_target_load,
            ),
        ]
        .into_iter()
        .find(|(_, value)| !(value.is_finite() && *value > 0.0))
        .map(|(key, value)| (key, format!("must be a positive number, got {value}")))
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        scheduler: SchedulerArgs,
    }

    #[test]
    fn defaults_are_shaken_fists_and_bad_ratios_are_named() {
        let cli = Cli::parse_from(["t"]);
        assert_eq!(cli.scheduler.config(), SchedulerConfig::default());
        assert_eq!(cli.scheduler.invalid(), None);
        let cli = Cli::parse_from([
            "t",
            "--node-cpu-reservation-threads=0",
            "--cpu-overcommit-ratio=0",
        ]);
        assert_eq!(cli.scheduler.config().cpu_reservation_threads, 0);
        assert_eq!(
            cli.scheduler.invalid().map(|(k, _)| k),
            Some("SHAKENFIST_CPU_OVERCOMMIT_RATIO")
        );
    }
}
