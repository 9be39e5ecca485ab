//! A minimal test runner for `harness = false` test binaries (they re-run themselves
//! as child processes). It speaks the part of libtest's command line that
//! cargo-nextest uses: `--list --format terse [--ignored]` prints `name: test` lines,
//! and `NAME --exact` runs one test; other libtest flags are accepted and ignored.

/// A named check.
pub type Check = (&'static str, Box<dyn Fn() -> Result<(), String>>);

/// Runs `checks` as the test binary `binary`, honouring the libtest arguments.
pub fn run(binary: &str, checks: Vec<Check>) {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let list = args.iter().any(|a| a == "--list");
    let ignored = args.iter().any(|a| a == "--ignored");
    let exact = args.iter().any(|a| a == "--exact");
    // Positional arguments are name filters; skip the values of flags that take one.
    let mut filters = Vec::new();
    let mut skip_next = false;
    for a in &args {
        if skip_next {
            skip_next = false;
            continue;
        }
        if matches!(
            a.as_str(),
            "--format" | "--test-threads" | "--color" | "--logfile" | "--skip"
        ) {
            skip_next = true;
            continue;
        }
        if !a.starts_with('-') {
            filters.push(a.clone());
        }
    }
    let selected = |name: &str| {
        let full = format!("{binary}::{name}");
        filters.is_empty()
            || filters.iter().any(|f| {
                if exact {
                    f == name || *f == full
                } else {
                    name.contains(f.as_str()) || full.contains(f.as_str())
                }
            })
    };
    if list {
        if !ignored {
            for (name, _) in &checks {
                if selected(name) {
                    println!("{name}: test");
                }
            }
        }
        return;
    }
    let (mut passed, mut failed) = (0, 0);
    for (name, check) in &checks {
        if !selected(name) {
            continue;
        }
        match check() {
            Ok(()) => {
                passed += 1;
                println!("test {binary}::{name} ... ok");
            }
            Err(err) => {
                failed += 1;
                println!("test {binary}::{name} ... FAILED\n{err}");
            }
        }
    }
    println!("{binary}: {passed} passed, {failed} failed");
    if failed > 0 {
        std::process::exit(1);
    }
}
