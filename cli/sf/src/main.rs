//! `sf`: the Shaken Fist command line.
//!
//! Contract: parses the command line (clap), runs the command, prints an error as
//! `error: ...` on stderr and exits 1 on failure (2 for usage errors, from clap);
//! a plugin's exit code is passed through.

mod apply;
mod cli;
mod commands;
mod config;
mod kinds;
mod manifest;
mod output;
mod plugin;
mod rest;

use clap::Parser;

fn main() {
    let cli = cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = match runtime.block_on(commands::run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", format_error(&e));
            1
        }
    };
    std::process::exit(code);
}

/// The error and its causes on one line (or several for manifest problems).
fn format_error(e: &anyhow::Error) -> String {
    let mut text = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !text.contains(&c) {
            text.push_str(": ");
            text.push_str(&c);
        }
    }
    text
}
