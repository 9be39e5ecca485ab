//! Test harness: a PRIVATE MariaDB server for the test run, and a fresh database per test.
//!
//! Contract:
//! - Never touches a system MariaDB. The server is started from the `mariadbd` on PATH
//!   (or `/usr/sbin`) in a temporary data directory with its own socket and a free
//!   port on 127.0.0.1, with utf8mb4 and InnoDB defaults.
//! - `make test` starts ONE server for the whole run with the `sf-test-mariadb` binary and
//!   exports `SF_TEST_MARIADB_PORT`; every test process (nextest runs each test in its
//!   own process) then uses it. Without that variable, the first test in a process starts
//!   a server tied to the process: it runs under `setpriv --pdeathsig KILL`, spawned from
//!   a thread that lives as long as the process, so nothing outlives the run even on
//!   SIGKILL; data directories of dead processes are swept at the next start.
//! - [`MariaDb::start`] with [`ServerOptions::latin1`] or [`ServerOptions::myisam`] starts
//!   a server with deliberately wrong settings, so refusal paths are tested for real.
//! - [`TestDatabase::new`] creates a uniquely named database with utf8mb4 defaults and
//!   hands out its URL; the throwaway server is deleted with the run, so databases are
//!   not dropped one by one.
//! - [`netns`]: network namespaces for privileged tests (two nodes on one machine
//!   joined by a veth mesh), removed on drop; [`netns::require_privileged`] decides
//!   whether such a test runs, skips or (under `SF_REQUIRE_PRIVILEGED=1`) fails.

pub mod netns;
pub mod runner;

use std::fs;
use std::io;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// Environment variable naming the port of a server shared by the whole test run.
pub const PORT_ENV: &str = "SF_TEST_MARIADB_PORT";

/// Prefix of the temporary directories the harness creates.
const DIR_PREFIX: &str = "sf-mariadb-";

/// How long a fresh server may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Errors of the harness; each names the step that failed.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// A MariaDB program is not installed.
    #[error(
        "cannot find `{0}` on PATH or in /usr/sbin: install MariaDB (`apt-get install mariadb-server`, or run `make test`, which installs it)"
    )]
    ProgramMissing(&'static str),
    /// Creating the data directory failed.
    #[error("cannot create the data directory {path}: {source}")]
    CreateDataDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// `mariadb-install-db` failed.
    #[error("mariadb-install-db failed in {path}: {output}")]
    InstallDb {
        /// The data directory.
        path: PathBuf,
        /// What it printed.
        output: String,
    },
    /// Starting `mariadbd` failed.
    #[error("cannot start mariadbd: {0}")]
    Spawn(io::Error),
    /// The server did not come up in time; the tail of its error log is included.
    #[error("mariadbd did not accept connections within {secs} s; error log:\n{log}")]
    NotReady {
        /// The timeout.
        secs: u64,
        /// The tail of the server's error log.
        log: String,
    },
    /// No free port could be found.
    #[error("cannot find a free port on 127.0.0.1: {0}")]
    NoPort(io::Error),
    /// A SQL statement run through the `mariadb` client failed.
    #[error("`{statement}` failed: {output}")]
    Sql {
        /// The statement.
        statement: String,
        /// What the client printed.
        output: String,
    },
    /// The shared server could not be started earlier in this process.
    #[error("the shared test MariaDB could not be started: {0}")]
    Shared(String),
    /// `SF_TEST_MARIADB_PORT` is not a port number.
    #[error("{PORT_ENV}={0:?} is not a port number")]
    BadPortEnv(String),
    /// A set-up command (e.g. `ip netns add`) failed.
    #[error("`{command}` failed: {output}")]
    Command {
        /// The command line.
        command: String,
        /// What it printed, or why it could not run.
        output: String,
    },
}

/// Settings of a private server: the defaults are the ones Shaken Fist requires.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// `character-set-server`.
    pub charset: String,
    /// `collation-server`.
    pub collation: String,
    /// `default-storage-engine`.
    pub default_engine: String,
    /// A configuration file read instead of `--no-defaults` (its `[mariadbd]` group
    /// applies; the harness's own options still win).
    pub defaults_file: Option<PathBuf>,
    /// Extra `mariadbd` options, after the harness's own (so they win).
    pub extra_args: Vec<String>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            charset: "utf8mb4".into(),
            collation: "utf8mb4_unicode_ci".into(),
            default_engine: "InnoDB".into(),
            defaults_file: None,
            extra_args: Vec::new(),
        }
    }
}

impl ServerOptions {
    /// A server whose default character set is latin1 (a refusal case).
    pub fn latin1() -> Self {
        Self {
            charset: "latin1".into(),
            collation: "latin1_swedish_ci".into(),
            ..Self::default()
        }
    }

    /// Production durability (`innodb_flush_log_at_trx_commit=1`) and a larger buffer
    /// pool, for benchmarks.
    pub fn durable() -> Self {
        Self {
            extra_args: vec![
                "--innodb-flush-log-at-trx-commit=1".into(),
                "--innodb-buffer-pool-size=1G".into(),
            ],
            ..Self::default()
        }
    }

    /// A server whose default storage engine is MyISAM (a refusal case).
    pub fn myisam() -> Self {
        Self {
            default_engine: "MyISAM".into(),
            ..Self::default()
        }
    }
}

/// A private MariaDB server. Dropping it shuts the server down and removes its data.
#[derive(Debug)]
pub struct MariaDb {
    dir: PathBuf,
    port: u16,
    /// `Some` when this handle owns the process (not for a detached server).
    child: Option<mpsc::Sender<()>>,
    keep_dir: bool,
    /// How the server was started (program and arguments), for [`MariaDb::restart`].
    launch: Option<(PathBuf, Vec<String>)>,
}

fn find_program(name: &'static str) -> Result<PathBuf, HarnessError> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or(HarnessError::ProgramMissing(name))
}

fn running_as_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

fn free_port() -> Result<u16, HarnessError> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(HarnessError::NoPort)?;
    let port = listener.local_addr().map_err(HarnessError::NoPort)?.port();
    Ok(port)
}

/// Removes data directories left by processes that no longer exist.
fn sweep_stale_dirs() {
    let Ok(entries) = fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(DIR_PREFIX)) else {
            continue;
        };
        let Some(pid) = rest.split('-').next() else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// How the server process is tied to its creator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifetime {
    /// Killed when this process exits (parent-death signal), shut down on drop.
    Process,
    /// Runs until stopped explicitly (`sf-test-mariadb stop`).
    Detached,
}

impl MariaDb {
    /// Starts a fresh private server tied to this process.
    pub fn start(opts: &ServerOptions) -> Result<Self, HarnessError> {
        Self::start_in(None, opts, Lifetime::Process)
    }

    /// Starts a fresh server in `dir` (a new temporary directory when `None`).
    pub fn start_in(
        dir: Option<PathBuf>,
        opts: &ServerOptions,
        lifetime: Lifetime,
    ) -> Result<Self, HarnessError> {
        let install_db = find_program("mariadb-install-db")?;
        let mariadbd = find_program("mariadbd")?;
        sweep_stale_dirs();
        let keep_dir = dir.is_some();
        let dir = match dir {
            Some(d) => d,
            None => std::env::temp_dir().join(format!(
                "{DIR_PREFIX}{}-{}",
                std::process::id(),
                uuid::Uuid::new_v4().simple()
            )),
        };
        let data = dir.join("data");
        fs::create_dir_all(&data).map_err(|source| HarnessError::CreateDataDir {
            path: data.clone(),
            source,
        })?;
        // A private tmpdir: concurrent servers in the shared /tmp collide on the names
        // of their internal temporary tables.
        let tmp = dir.join("tmp");
        fs::create_dir_all(&tmp).map_err(|source| HarnessError::CreateDataDir {
            path: tmp.clone(),
            source,
        })?;
        let root = running_as_root();

        let mut install = Command::new(install_db);
        install
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--tmpdir={}", tmp.display()))
            .arg("--auth-root-authentication-method=normal")
            .arg("--skip-test-db");
        if root {
            install.arg("--user=root");
        }
        let out = install.output().map_err(HarnessError::Spawn)?;
        if !out.status.success() {
            return Err(HarnessError::InstallDb {
                path: data,
                output: format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ),
            });
        }

        let port = free_port()?;
        let log = dir.join("error.log");
        let mut args = vec![
            match &opts.defaults_file {
                Some(f) => format!("--defaults-file={}", f.display()),
                None => "--no-defaults".to_string(),
            },
            format!("--datadir={}", data.display()),
            format!("--socket={}", dir.join("mysqld.sock").display()),
            format!("--port={port}"),
            "--bind-address=127.0.0.1".into(),
            format!("--pid-file={}", dir.join("mariadbd.pid").display()),
            format!("--log-error={}", log.display()),
            format!("--tmpdir={}", tmp.display()),
        ];
        if opts.defaults_file.is_none() {
            args.extend([
                format!("--character-set-server={}", opts.charset),
                format!("--collation-server={}", opts.collation),
                format!("--default-storage-engine={}", opts.default_engine),
                "--innodb-buffer-pool-size=256M".into(),
                // Tests need durability across a crash of the test, not of the machine.
                "--innodb-flush-log-at-trx-commit=2".into(),
                "--max-connections=1000".into(),
                "--skip-name-resolve".into(),
            ]);
        }
        args.extend(opts.extra_args.iter().cloned());
        if root {
            args.push("--user=root".into());
        }

        let launch = Some((mariadbd.clone(), args.clone()));
        let child = match lifetime {
            Lifetime::Process => Some(spawn_tied(mariadbd, args)?),
            Lifetime::Detached => {
                let mut cmd = Command::new(mariadbd);
                cmd.args(&args)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null());
                cmd.spawn().map_err(HarnessError::Spawn)?;
                None
            }
        };
        let server = MariaDb {
            dir,
            port,
            child,
            keep_dir,
            launch,
        };
        server.wait_ready(&log)?;
        Ok(server)
    }

    fn wait_ready(&self, log: &Path) -> Result<(), HarnessError> {
        let admin = find_program("mariadb-admin")?;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let ok = Command::new(&admin)
                .args(["--no-defaults", "--connect-timeout=2", "-uroot"])
                .arg(format!("--socket={}", self.socket().display()))
                .arg("ping")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ok {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(HarnessError::NotReady {
                    secs: START_TIMEOUT.as_secs(),
                    log: tail(log, 30),
                });
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// A handle on a server started elsewhere (by `sf-test-mariadb`) on `port`.
    pub fn attach(port: u16) -> Self {
        MariaDb {
            dir: PathBuf::new(),
            port,
            child: None,
            keep_dir: true,
            launch: None,
        }
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's data directory (empty for an attached server).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The server's unix socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("mysqld.sock")
    }

    /// A `mysql://` URL for `database` as root (no password) over TCP, in plain text
    /// (the driver would otherwise try TLS first).
    pub fn url(&self, database: &str) -> String {
        format!(
            "mysql://root@127.0.0.1:{}/{database}?ssl-mode=DISABLED",
            self.port
        )
    }

    /// Runs `sql` as root through the `mariadb` command-line client.
    pub fn execute(&self, sql: &str) -> Result<String, HarnessError> {
        let client = find_program("mariadb")?;
        let out = Command::new(client)
            .args(["--no-defaults", "-h127.0.0.1", "-uroot", "-N", "-B"])
            .arg(format!("-P{}", self.port))
            .arg("-e")
            .arg(sql)
            .output()
            .map_err(HarnessError::Spawn)?;
        if !out.status.success() {
            return Err(HarnessError::Sql {
                statement: sql.to_string(),
                output: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Creates a fresh, uniquely named database with utf8mb4 defaults.
    pub fn create_database(&self) -> Result<TestDatabase, HarnessError> {
        let name = format!("t_{}", &uuid::Uuid::new_v4().simple().to_string()[..16]);
        self.execute(&format!(
            "CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
        ))?;
        Ok(TestDatabase {
            url: self.url(&name),
            name,
            port: self.port,
        })
    }

    /// Stops the server (a clean shutdown) and starts it again on the same data
    /// directory and port, as an operator's restart would; returns once it answers.
    /// Only for a server this handle started tied to the process.
    pub fn restart(&mut self) -> Result<(), HarnessError> {
        let (Some(stop), Some((program, args))) = (self.child.take(), self.launch.clone()) else {
            return Err(HarnessError::Spawn(io::Error::other(
                "restart needs a server this handle started with Lifetime::Process",
            )));
        };
        self.shutdown()?;
        let _ = stop.send(());
        // Wait until the old process has released the port and its files.
        let deadline = Instant::now() + START_TIMEOUT;
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
            if Instant::now() > deadline {
                return Err(HarnessError::NotReady {
                    secs: START_TIMEOUT.as_secs(),
                    log: "the old server did not stop".into(),
                });
            }
            thread::sleep(Duration::from_millis(50));
        }
        thread::sleep(Duration::from_millis(200));
        self.child = Some(spawn_tied(program, args)?);
        self.wait_ready(&self.dir.join("error.log"))
    }

    /// Shuts the server down and waits for it to exit.
    pub fn shutdown(&self) -> Result<(), HarnessError> {
        let admin = find_program("mariadb-admin")?;
        let out = Command::new(admin)
            .args(["--no-defaults", "-h127.0.0.1", "-uroot"])
            .arg(format!("-P{}", self.port))
            .arg("shutdown")
            .output()
            .map_err(HarnessError::Spawn)?;
        if !out.status.success() {
            return Err(HarnessError::Sql {
                statement: "shutdown".into(),
                output: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
        Ok(())
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        if let Some(stop) = self.child.take() {
            let _ = self.shutdown();
            // Wakes the owning thread, which kills the process if still running.
            let _ = stop.send(());
            if !self.keep_dir {
                // Give the server a moment to release its files.
                thread::sleep(Duration::from_millis(100));
                let _ = fs::remove_dir_all(&self.dir);
            }
        }
    }
}

/// Spawns `mariadbd` under `setpriv --pdeathsig KILL` from a thread that lives until
/// the returned sender fires or the process exits, so the server never outlives us.
fn spawn_tied(mariadbd: PathBuf, args: Vec<String>) -> Result<mpsc::Sender<()>, HarnessError> {
    let setpriv = find_program("setpriv").ok();
    let (ready_tx, ready_rx) = mpsc::channel::<Result<(), io::Error>>();
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    thread::Builder::new()
        .name("sf-harness-mariadbd".into())
        .spawn(move || {
            let mut cmd = match &setpriv {
                Some(sp) => {
                    let mut c = Command::new(sp);
                    c.args(["--pdeathsig", "KILL", "--"]).arg(&mariadbd);
                    c
                }
                None => Command::new(&mariadbd),
            };
            cmd.args(&args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            let mut child: Child = match cmd.spawn() {
                Ok(c) => c,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let _ = ready_tx.send(Ok(()));
            // Blocks for the life of the process unless the handle is dropped.
            let _ = stop_rx.recv();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        })
        .map_err(HarnessError::Spawn)?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(stop_tx),
        Ok(Err(e)) => Err(HarnessError::Spawn(e)),
        Err(_) => Err(HarnessError::Spawn(io::Error::other(
            "the mariadbd spawner thread died",
        ))),
    }
}

/// A database of its own for one test.
#[derive(Debug, Clone)]
pub struct TestDatabase {
    /// The database name.
    pub name: String,
    /// `mysql://root@127.0.0.1:PORT/NAME`.
    pub url: String,
    /// The server's port.
    pub port: u16,
}

impl TestDatabase {
    /// A fresh database on the run's shared server (started on first use).
    pub fn new() -> Result<Self, HarnessError> {
        shared_server()?.create_database()
    }

    /// Runs `sql` in this database through the `mariadb` client; returns the output
    /// rows tab-separated, one per line.
    pub fn query(&self, sql: &str) -> Result<String, HarnessError> {
        MariaDb::attach(self.port).execute(&format!("USE `{}`; {sql}", self.name))
    }
}

/// The server shared by the tests of this process: the run's server when
/// `SF_TEST_MARIADB_PORT` is set, else one started for (and tied to) this process.
pub fn shared_server() -> Result<&'static MariaDb, HarnessError> {
    static SHARED: OnceLock<Result<MariaDb, String>> = OnceLock::new();
    let server = SHARED.get_or_init(|| match std::env::var(PORT_ENV) {
        Ok(port) => port
            .trim()
            .parse::<u16>()
            .map(MariaDb::attach)
            .map_err(|_| HarnessError::BadPortEnv(port).to_string()),
        Err(_) => MariaDb::start(&ServerOptions::default()).map_err(|e| e.to_string()),
    });
    server.as_ref().map_err(|e| HarnessError::Shared(e.clone()))
}
