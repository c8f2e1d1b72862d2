//! Developer workflows: `cargo xtask test`, `cargo xtask bench`, `cargo xtask lint`.
//!
//! `test` is what CI runs (`.ci/run`): it provisions the machine with the project's
//! own `pmcrash setup` (apt packages, the guest kernel, the initramfs), then runs every
//! test of the workspace, the end-to-end suites that boot real guests included.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

const USAGE: &str = "usage: cargo xtask <command>

commands:
  test    provision the machine (pmcrash setup), then run every test of the workspace
  bench   criterion benches of the pure crates, stage timings of the VM pipeline,
          read-set pruning against --no-prune and peak memory (issues 9, 15);
          `bench memory`: only issue 15's peak memory and time figures
  lint    cargo fmt --check and cargo clippy --all-targets -- -D warnings
";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("test") => test(&args[1..]),
        Some("bench") => bench(&args[1..]),
        Some("lint") => lint(),
        Some("-h" | "--help" | "help") => {
            print!("{USAGE}");
            Ok(())
        }
        _ => {
            eprint!("{USAGE}");
            std::process::exit(2);
        }
    };
    if let Err(e) = result {
        eprintln!("xtask: {e:#}");
        std::process::exit(1);
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

fn run(what: &str, cmd: &mut Command) -> Result<()> {
    eprintln!("xtask: {what}");
    let t = Instant::now();
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    eprintln!("xtask: {what}: {:.1} s", t.elapsed().as_secs_f64());
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

fn test(extra: &[String]) -> Result<()> {
    // Provision first, with its output visible: a fresh CI machine installs QEMU from
    // bookworm-backports and downloads the guest kernel here, and the headless browser
    // the HTML report's tests drive.
    run(
        "pmcrash setup --browser",
        cargo().args([
            "run",
            "--quiet",
            "-p",
            "pmcrash",
            "--",
            "setup",
            "--browser",
        ]),
    )?;
    run(
        "cargo test --workspace",
        cargo()
            .args(["test", "--workspace", "--no-fail-fast"])
            .args(extra),
    )
}

fn bench(extra: &[String]) -> Result<()> {
    if extra.first().map(String::as_str) == Some("memory") {
        return run(
            "streaming and bounded memory (issue 15): peak memory and time",
            example("prune_bench").arg("memory"),
        );
    }
    run(
        "criterion benches (crash-models)",
        cargo().args(["bench", "-p", "crash-models"]).args(extra),
    )?;
    run("VM pipeline stage timings", &mut example("platform_bench"))?;
    run(
        "read-set pruning and streaming (issues 9 and 15): pruned vs --no-prune, peak memory",
        &mut example("prune_bench"),
    )
}

/// `cargo run --release` of one of pmcrash's examples.
fn example(name: &str) -> Command {
    let mut c = cargo();
    c.args([
        "run",
        "--release",
        "--quiet",
        "-p",
        "pmcrash",
        "--example",
        name,
    ]);
    c
}

fn lint() -> Result<()> {
    run(
        "cargo fmt --check",
        cargo().args(["fmt", "--all", "--check"]),
    )?;
    run(
        "cargo clippy",
        cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]),
    )
}
