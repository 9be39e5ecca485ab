//! The event spool across `kill -9` (issue 6, "Spool test"): every event arrives in
//! sf-database exactly once.
//!
//! The binary runs itself as the daemon (marked by `SF_SPOOL_CRASH_CHILD`), so SIGKILL
//! reaches only that process:
//! - `spool`: records 10 000 events with sf-database unreachable (a closed loopback
//!   port), writes their uuids to a file, prints `spooled <depth>` and waits to be killed.
//! - `drain`: reopens the spool, drains it to a reachable sf-database (in-process in
//!   the parent, on the private MariaDB), prints a report and exits; with `partial`
//!   it prints `progress` once half is sent and waits to be killed.
//!
//! Also here, in-process against the same real sf-database: a batch with an invalid
//! event loses only that event, and shutdown flushes what is spooled.

use sf_harness::runner as support;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use clap::Parser;
use sf_daemon::Shutdown;
use sf_database::daemon::{self as gateway_daemon, Config as GatewayConfig};
use sf_database::{MariaDbArgs, connect, ensure_schema};
use sf_database_client::spool::{
    DrainConfig, EventSpool, Recorded, SpoolConfig, SpoolMetrics, new_event,
};
use sf_database_client::{GatewayClient, RetryPolicy};
use sf_harness::TestDatabase;

const CHILD_MARKER: &str = "SF_SPOOL_CRASH_CHILD";
const DIR_KEY: &str = "SF_SPOOL_CRASH_DIR";
const HOSTS_KEY: &str = "SF_SPOOL_CRASH_HOSTS";
const SECRET: &str = "spool-test-secret-0123456789";
const EVENTS: usize = 10_000;
const INSTANCE: &str = "5b0e0000-0000-4000-8000-000000000001";
/// How long anything may take before the test gives up.
const TIMEOUT: Duration = Duration::from_secs(180);

fn uuids_file(dir: &Path) -> PathBuf {
    dir.with_extension("uuids")
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))
}

fn client(hosts: &str) -> Result<GatewayClient, String> {
    let policy = RetryPolicy {
        attempts: 2,
        initial_backoff: Duration::from_millis(20),
        timeout: Duration::from_secs(20),
        ..RetryPolicy::default()
    };
    GatewayClient::from_host_list(hosts, SECRET, policy).map_err(|e| e.to_string())
}

fn open(dir: &Path) -> Result<EventSpool, String> {
    EventSpool::open(SpoolConfig::new(dir), SpoolMetrics::default()).map_err(|e| e.to_string())
}

/// Child: spools EVENTS events while the database is unreachable, then waits.
fn child_spool(dir: &Path, hosts: &str) -> Result<(), String> {
    runtime()?.block_on(async {
        let spool = open(dir)?;
        let shutdown = Shutdown::new();
        let drain_config = DrainConfig {
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(400),
            ..DrainConfig::default()
        };
        // Draining runs (and fails) throughout, as in a daemon.
        let _drain = spool
            .spawn_drain(client(hosts)?, drain_config, shutdown)
            .map_err(|e| e.to_string())?;
        let mut uuids = String::new();
        for i in 0..EVENTS {
            let event = new_event("audit", format!("event {i}"), &[("instance", INSTANCE)]);
            match spool.record(event).map_err(|e| e.to_string())? {
                Recorded::Spooled(uuid) => {
                    uuids.push_str(&uuid);
                    uuids.push('\n');
                }
                Recorded::Dropped => return Err(format!("event {i} dropped")),
            }
        }
        std::fs::write(uuids_file(dir), uuids).map_err(|e| format!("write uuids: {e}"))?;
        // Let the drain fail against the closed port a few times.
        tokio::time::sleep(Duration::from_millis(500)).await;
        println!("spooled {}", spool.depth());
        tokio::time::sleep(TIMEOUT).await;
        Err("not killed".into())
    })
}

/// Child: drains to a reachable database; `partial`: announce half and wait to be killed.
fn child_drain(dir: &Path, hosts: &str, partial: bool) -> Result<(), String> {
    runtime()?.block_on(async {
        let spool = open(dir)?;
        println!("depth {}", spool.depth());
        let shutdown = Shutdown::new();
        let drain_config = DrainConfig {
            batch_size: if partial { 100 } else { 500 },
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(400),
            ..DrainConfig::default()
        };
        let drain = spool
            .spawn_drain(client(hosts)?, drain_config, shutdown.clone())
            .map_err(|e| e.to_string())?;
        let deadline = Instant::now() + TIMEOUT;
        let target = if partial { EVENTS as u64 / 2 } else { 0 };
        while spool.depth() > target {
            if Instant::now() > deadline {
                return Err(format!("depth still {} after {TIMEOUT:?}", spool.depth()));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if partial {
            println!("progress {}", spool.depth());
            tokio::time::sleep(TIMEOUT).await;
            return Err("not killed".into());
        }
        shutdown.trigger();
        let report = drain.await.map_err(|e| format!("drain task: {e}"))?;
        println!(
            "drained sent={} duplicates={} rejected={} remaining={}",
            report.sent, report.duplicates, report.rejected, report.remaining
        );
        Ok(())
    })
}

/// A running child with its stdout lines arriving on a channel.
struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Running {
    fn start(mode: &str, dir: &Path, hosts: &str) -> Result<Self, String> {
        let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
        let mut child = Command::new(exe)
            .env(CHILD_MARKER, mode)
            .env(DIR_KEY, dir)
            .env(HOSTS_KEY, hosts)
            .env("SHAKENFIST_LOG", "error")
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("spawn child: {e}"))?;
        let stdout = child.stdout.take().ok_or("no child stdout")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Self { child, lines })
    }

    fn line(&self) -> Result<String, String> {
        self.lines
            .recv_timeout(TIMEOUT)
            .map_err(|e| format!("no line from the child within {TIMEOUT:?}: {e}"))
    }

    fn kill9(mut self) -> Result<(), String> {
        // std's kill is SIGKILL.
        self.child.kill().map_err(|e| format!("kill: {e}"))?;
        let status = self.child.wait().map_err(|e| format!("wait: {e}"))?;
        match status.signal() {
            Some(9) => Ok(()),
            other => Err(format!(
                "child was not killed by SIGKILL: {status:?} {other:?}"
            )),
        }
    }

    fn wait_ok(mut self) -> Result<(), String> {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            match self.child.try_wait().map_err(|e| format!("wait: {e}"))? {
                Some(status) if status.success() => return Ok(()),
                Some(status) => return Err(format!("child failed: {status:?}")),
                None if Instant::now() > deadline => return Err("child did not exit".into()),
                None => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port nothing listens on.
fn closed_port() -> Result<SocketAddr, String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
    listener.local_addr().map_err(|e| format!("addr: {e}"))
}

/// sf-database in this process on a fresh database; returns its address.
async fn start_gateway(db: &TestDatabase) -> Result<(SocketAddr, Shutdown), String> {
    let args = MariaDbArgs::local_root(db.port, &db.name);
    let conn = connect(&args).await.map_err(|e| format!("connect: {e}"))?;
    ensure_schema(&conn)
        .await
        .map_err(|e| format!("schema: {e}"))?;
    conn.close().await.map_err(|e| format!("close: {e}"))?;
    let config = GatewayConfig::parse_from([
        "sf-database",
        "--mariadb-host=127.0.0.1",
        &format!("--mariadb-port={}", db.port),
        "--mariadb-user=root",
        &format!("--mariadb-database={}", db.name),
        "--mariadb-pool-size=4",
        "--listen=127.0.0.1",
        &format!("--mariadb-gateway-secret={SECRET}"),
        "--log=warn",
    ]);
    let any: SocketAddr = "127.0.0.1:0".parse().map_err(|e| format!("{e}"))?;
    let grpc = gateway_daemon::bind("gRPC", any)
        .await
        .map_err(|e| e.to_string())?;
    let metrics = gateway_daemon::bind("metrics", any)
        .await
        .map_err(|e| e.to_string())?;
    let addr = grpc.local_addr().map_err(|e| e.to_string())?;
    let shutdown = Shutdown::new();
    let s = shutdown.clone();
    tokio::spawn(async move {
        if let Err(e) = gateway_daemon::serve(config, grpc, metrics, s).await {
            eprintln!("gateway: {e}");
        }
    });
    Ok((addr, shutdown))
}

/// Phase one: a child spools EVENTS events with the database down and is killed -9;
/// a torn record is then left at the end of its segment. Returns the uuids.
fn spool_and_kill(dir: &Path) -> Result<BTreeSet<String>, String> {
    let down = closed_port()?.to_string();
    let started = Instant::now();
    let child = Running::start("spool", dir, &down)?;
    let line = child.line()?;
    println!(
        "  {line} in {:?} (incl. 0.5 s of failed draining)",
        started.elapsed()
    );
    if line != format!("spooled {EVENTS}") {
        return Err(format!("expected `spooled {EVENTS}`, got {line:?}"));
    }
    child.kill9()?;
    let uuids: BTreeSet<String> = std::fs::read_to_string(uuids_file(dir))
        .map_err(|e| format!("read uuids: {e}"))?
        .lines()
        .map(str::to_string)
        .collect();
    if uuids.len() != EVENTS {
        return Err(format!("{} distinct uuids recorded", uuids.len()));
    }
    // A write torn by the kill: a header promising more bytes than follow.
    let mut segments: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("list: {e}"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    segments.sort();
    let newest = segments.pop().ok_or("no segment written")?;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&newest)
        .map_err(|e| format!("open segment: {e}"))?;
    f.write_all(&[200, 0, 0, 0, 1, 2, 3, 4, 5])
        .map_err(|e| format!("tear: {e}"))?;
    Ok(uuids)
}

/// The events table holds exactly `uuids`, each once.
fn check_exactly_once(db: &TestDatabase, uuids: &BTreeSet<String>) -> Result<(), String> {
    let out = db
        .query("SELECT event_uuid FROM events")
        .map_err(|e| e.to_string())?;
    let rows: Vec<&str> = out.lines().collect();
    let stored: BTreeSet<String> = rows.iter().map(|s| s.to_string()).collect();
    if rows.len() != EVENTS || stored != *uuids {
        return Err(format!(
            "{} rows, {} distinct, {} of the spooled uuids missing, {} unexpected",
            rows.len(),
            stored.len(),
            uuids.difference(&stored).count(),
            stored.difference(uuids).count()
        ));
    }
    let links = db
        .query(&format!(
            "SELECT COUNT(*) FROM event_objects WHERE object_uuid = '{INSTANCE}'"
        ))
        .map_err(|e| e.to_string())?;
    if links.trim() != EVENTS.to_string() {
        return Err(format!("{} event_objects rows", links.trim()));
    }
    Ok(())
}

fn drained_line(line: &str) -> Result<(u64, u64, u64), String> {
    let field = |name: &str| -> Result<u64, String> {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{name}=")))
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("no {name} in {line:?}"))
    };
    Ok((field("sent")?, field("duplicates")?, field("remaining")?))
}

/// Killed with the database down; restarted with it up: every event exactly once.
fn killed_with_the_database_down() -> Result<(), String> {
    let tmp = tempfile::tempdir().map_err(|e| format!("tempdir: {e}"))?;
    let dir = tmp.path().join("spool");
    let uuids = spool_and_kill(&dir)?;
    let rt = runtime()?;
    let db = TestDatabase::new().map_err(|e| e.to_string())?;
    let (addr, gateway) = rt.block_on(start_gateway(&db))?;
    let child = Running::start("drain", &dir, &addr.to_string())?;
    let depth = child.line()?;
    if depth != format!("depth {EVENTS}") {
        return Err(format!("after restart: {depth:?}"));
    }
    let started = Instant::now();
    let report = child.line()?;
    child.wait_ok()?;
    println!("  restart: {report} in {:?}", started.elapsed());
    let (sent, duplicates, remaining) = drained_line(&report)?;
    if (sent, duplicates, remaining) != (EVENTS as u64, 0, 0) {
        return Err(format!("unexpected report: {report}"));
    }
    check_exactly_once(&db, &uuids)?;
    gateway.trigger();
    Ok(())
}

/// Killed while draining, then restarted with the cursor lost (as if every ack came
/// just before a crash): the re-sent events are skipped, none is stored twice.
fn killed_mid_drain_and_resent() -> Result<(), String> {
    let tmp = tempfile::tempdir().map_err(|e| format!("tempdir: {e}"))?;
    let dir = tmp.path().join("spool");
    let uuids = spool_and_kill(&dir)?;
    let rt = runtime()?;
    let db = TestDatabase::new().map_err(|e| e.to_string())?;
    let (addr, gateway) = rt.block_on(start_gateway(&db))?;
    let child = Running::start("drain-partial", &dir, &addr.to_string())?;
    let _depth = child.line()?;
    let progress = child.line()?;
    if !progress.starts_with("progress ") {
        return Err(format!("expected progress, got {progress:?}"));
    }
    child.kill9()?;
    match std::fs::remove_file(dir.join("cursor")) {
        Ok(()) => {}
        Err(e) => return Err(format!("remove cursor: {e}")),
    }
    let child = Running::start("drain", &dir, &addr.to_string())?;
    let depth = child.line()?;
    let report = child.line()?;
    child.wait_ok()?;
    println!("  killed at {progress}; restart without cursor: {report}");
    let (sent, duplicates, remaining) = drained_line(&report)?;
    if depth != format!("depth {EVENTS}") || sent != EVENTS as u64 || remaining != 0 {
        return Err(format!("unexpected: {depth}; {report}"));
    }
    if duplicates < EVENTS as u64 / 2 {
        return Err(format!(
            "expected ≥ {} re-sent duplicates: {report}",
            EVENTS / 2
        ));
    }
    check_exactly_once(&db, &uuids)?;
    gateway.trigger();
    Ok(())
}

/// A batch sf-database rejects as invalid is re-sent event by event; only the invalid
/// event is discarded (and counted).
fn an_invalid_event_is_discarded_alone() -> Result<(), String> {
    let tmp = tempfile::tempdir().map_err(|e| format!("tempdir: {e}"))?;
    let rt = runtime()?;
    let db = TestDatabase::new().map_err(|e| e.to_string())?;
    rt.block_on(async {
        let (addr, gateway) = start_gateway(&db).await?;
        let metrics = SpoolMetrics::default();
        let spool = EventSpool::open(SpoolConfig::new(tmp.path()), metrics.clone())
            .map_err(|e| e.to_string())?;
        let mut good = BTreeSet::new();
        for event_type in ["audit", &"x".repeat(40), "status"] {
            match spool
                .record(new_event(event_type, "m", &[("instance", INSTANCE)]))
                .map_err(|e| e.to_string())?
            {
                Recorded::Spooled(uuid) if event_type.len() < 32 => {
                    good.insert(uuid);
                }
                _ => {}
            }
        }
        let shutdown = Shutdown::new();
        let drain = spool
            .spawn_drain(
                client(&addr.to_string())?,
                DrainConfig::default(),
                shutdown.clone(),
            )
            .map_err(|e| e.to_string())?;
        let deadline = Instant::now() + TIMEOUT;
        while spool.depth() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        shutdown.trigger();
        let report = drain.await.map_err(|e| e.to_string())?;
        gateway.trigger();
        if (report.sent, report.rejected, report.remaining) != (2, 1, 0)
            || metrics.rejected.get() != 1
        {
            return Err(format!("unexpected report {report:?}"));
        }
        let out = db
            .query("SELECT event_uuid FROM events")
            .map_err(|e| e.to_string())?;
        let stored: BTreeSet<String> = out.lines().map(str::to_string).collect();
        if stored != good {
            return Err(format!("stored {stored:?}, expected {good:?}"));
        }
        Ok(())
    })
}

/// Shutdown right after start: the bounded flush still sends what is spooled.
fn shutdown_flushes_what_is_spooled() -> Result<(), String> {
    let tmp = tempfile::tempdir().map_err(|e| format!("tempdir: {e}"))?;
    let rt = runtime()?;
    let db = TestDatabase::new().map_err(|e| e.to_string())?;
    rt.block_on(async {
        let (addr, gateway) = start_gateway(&db).await?;
        let spool = open(tmp.path())?;
        for i in 0..1234 {
            spool
                .record(new_event(
                    "audit",
                    format!("e{i}"),
                    &[("instance", INSTANCE)],
                ))
                .map_err(|e| e.to_string())?;
        }
        let shutdown = Shutdown::new();
        shutdown.trigger();
        let started = Instant::now();
        let report = spool
            .spawn_drain(client(&addr.to_string())?, DrainConfig::default(), shutdown)
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())?;
        gateway.trigger();
        if (report.sent, report.remaining) != (1234, 0)
            || started.elapsed() > Duration::from_secs(6)
        {
            return Err(format!("{report:?} after {:?}", started.elapsed()));
        }
        let n = db
            .query("SELECT COUNT(*) FROM events")
            .map_err(|e| e.to_string())?;
        if n.trim() != "1234" {
            return Err(format!("{} events stored", n.trim()));
        }
        Ok(())
    })
}

fn main() {
    if let Some(mode) = std::env::var_os(CHILD_MARKER) {
        let dir = PathBuf::from(std::env::var_os(DIR_KEY).unwrap_or_default());
        let hosts = std::env::var(HOSTS_KEY).unwrap_or_default();
        let result = match mode.to_string_lossy().as_ref() {
            "spool" => child_spool(&dir, &hosts),
            "drain" => child_drain(&dir, &hosts, false),
            "drain-partial" => child_drain(&dir, &hosts, true),
            other => Err(format!("unknown mode {other}")),
        };
        match result {
            Ok(()) => return,
            Err(err) => {
                eprintln!("child: {err}");
                std::process::exit(2);
            }
        }
    }
    let checks: Vec<support::Check> = vec![
        (
            "killed_with_the_database_down_every_event_arrives_once",
            Box::new(killed_with_the_database_down),
        ),
        (
            "killed_mid_drain_resent_events_are_not_duplicated",
            Box::new(killed_mid_drain_and_resent),
        ),
        (
            "an_invalid_event_is_discarded_alone",
            Box::new(an_invalid_event_is_discarded_alone),
        ),
        (
            "shutdown_flushes_what_is_spooled",
            Box::new(shutdown_flushes_what_is_spooled),
        ),
    ];
    support::run("spool_crash", checks);
}
