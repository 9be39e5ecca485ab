//! `sf-test-mariadb`: starts and stops the private MariaDB that `make test` shares
//! between all test processes of one run.
//!
//! - `sf-test-mariadb start DIR` starts a detached server with its data under DIR and
//!   prints `SF_TEST_MARIADB_PORT=<port>` (also written to `DIR/port`).
//! - `sf-test-mariadb stop DIR` shuts it down and removes DIR.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use sf_harness::{Lifetime, MariaDb, PORT_ENV, ServerOptions};

fn usage() -> ExitCode {
    eprintln!("usage: sf-test-mariadb start|stop DIR");
    ExitCode::from(64)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (verb, dir) = match args.as_slice() {
        [verb, dir] => (verb.as_str(), PathBuf::from(dir)),
        _ => return usage(),
    };
    match verb {
        "start" => {
            let _ = std::fs::remove_dir_all(&dir);
            match MariaDb::start_in(
                Some(dir.clone()),
                &ServerOptions::default(),
                Lifetime::Detached,
            ) {
                Ok(server) => {
                    let line = format!("{PORT_ENV}={}", server.port());
                    if let Err(e) = std::fs::write(dir.join("port"), server.port().to_string()) {
                        eprintln!("cannot write {}: {e}", dir.join("port").display());
                        return ExitCode::FAILURE;
                    }
                    println!("{line}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("sf-test-mariadb: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        "stop" => {
            let port = std::fs::read_to_string(dir.join("port"))
                .ok()
                .and_then(|p| p.trim().parse::<u16>().ok());
            let pid = std::fs::read_to_string(dir.join("mariadbd.pid"))
                .ok()
                .map(|p| p.trim().to_string());
            if let Some(port) = port
                && let Err(e) = MariaDb::attach(port).shutdown()
            {
                eprintln!("sf-test-mariadb: shutdown: {e}");
            }
            // Wait for the process to go before deleting its files.
            if let Some(pid) = pid {
                let proc_dir = PathBuf::from("/proc").join(&pid);
                let deadline = Instant::now() + Duration::from_secs(20);
                while proc_dir.exists() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(50));
                }
                if proc_dir.exists() {
                    let _ = std::process::Command::new("kill")
                        .args(["-KILL", &pid])
                        .status();
                }
            }
            let _ = std::fs::remove_dir_all(&dir);
            ExitCode::SUCCESS
        }
        _ => usage(),
    }
}
