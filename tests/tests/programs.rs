//! User programs as workloads (`exec`) and as user checkers (`[[checkers]]`), on real
//! guests: the example programs of `examples/pm-programs` with their expectations, a
//! checker that fails on purpose, and a program that hangs. (A missing shared library
//! is refused before any guest starts: `pmcrash::programs`'s unit tests.)
//!
//! Kept small for CI: crash points at the programs' own markers (`marker:program`),
//! programs of three tiny transactions. The PMDK example (`pmemobj-tx`, libpmemobj
//! from `pmcrash setup`) runs with the stock `pmempool check` checker; its long cases
//! are `#[ignore]`d.

use crash_models::trace::MarkerKind;
use pmcrash::testing::{Check, FsKind, Policy, Verdict};
use std::path::PathBuf;
use std::sync::OnceLock;

/// The directory holding the example programs, built once (same profile and target
/// directory as this test).
fn examples() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        // target/<profile>/deps/programs-HASH -> target/<profile>
        let exe = std::env::current_exe().unwrap();
        let profile_dir = exe.parent().and_then(|d| d.parent()).unwrap().to_path_buf();
        let target = profile_dir.parent().unwrap();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = std::process::Command::new(cargo);
        cmd.args(["build", "-q", "-p", "pm-programs", "--bins"])
            .env("CARGO_TARGET_DIR", target);
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let st = cmd
            .status()
            .expect("run cargo to build examples/pm-programs");
        assert!(st.success(), "building examples/pm-programs failed");
        profile_dir
    })
}

fn program(name: &str) -> String {
    examples().join(name).display().to_string()
}

/// A workload running `prog MODE` with `prog check` as its checker.
fn workload(prog: &str, mode: &str, markers: &[&str]) -> String {
    let p = program(prog);
    format!(
        "description = \"{prog} {mode}\"\n\
         [[ops]]\nop = \"exec\"\nprogram = \"{p}\"\nargs = [\"{mode}\"]\nmarkers = {markers:?}\n\
         [[checkers]]\nprogram = \"{p}\"\nargs = [\"check\"]\n"
    )
}

fn check(name: &str, src: &str, fs: FsKind, points: Policy) -> pmcrash::report::Report {
    let t = std::time::Instant::now();
    let r = Check::toml(name, src)
        .unwrap()
        .fs(fs)
        .points(points)
        .run()
        .unwrap();
    // The figures (points, states, images) for whoever runs with --nocapture.
    for w in &r.workloads {
        eprintln!(
            "FIGURES {name} on {fs:?}: {:.1} s, {} points, stats {}, timings {}",
            t.elapsed().as_secs_f64(),
            w.points.len(),
            serde_json::to_string(&w.stats).unwrap(),
            serde_json::to_string(&w.timings).unwrap()
        );
    }
    r
}

fn at_markers() -> Policy {
    Policy::Marker(vec![MarkerKind::Program])
}

#[test]
fn a_correct_redo_log_is_ok_at_every_marker() {
    let r = check(
        "redo-log.toml",
        &workload("redo-log", "run", &["tx_begin", "tx_commit", "tx_end"]),
        FsKind::Ext4,
        at_markers(),
    );
    let w = &r.workloads[0];
    assert_eq!(w.seen(), vec![Verdict::Ok], "{}", r.findings_text(None));
    // 3 transactions x 3 markers, and the end of the trace.
    assert!(w.points.len() >= 9, "{} crash points", w.points.len());
}

#[test]
fn a_redo_log_with_unflushed_data_lines_is_found_and_they_are_named() {
    let r = check(
        "redo-log-unflushed.toml",
        &workload(
            "redo-log",
            "run-unflushed",
            &["tx_begin", "tx_commit", "tx_end"],
        ),
        FsKind::Ext4,
        at_markers(),
    );
    let w = &r.workloads[0];
    assert!(
        w.seen().contains(&Verdict::ProgramCheckFailed),
        "{:?}",
        w.seen()
    );
    let f = w
        .findings
        .iter()
        .find(|f| f.verdict == Verdict::ProgramCheckFailed)
        .unwrap();
    let msg = &f.problems[0].message;
    assert!(
        msg.contains("log's data lines are not") && msg.contains("line 1 (pool.pm offset 0x40)"),
        "{msg}"
    );
    // The crash site in the program's words.
    assert!(
        f.point
            .after_marker
            .as_deref()
            .is_some_and(|m| m.starts_with("tx_commit #")),
        "{:?}",
        f.point
    );
}

#[test]
fn a_commit_flag_after_undrained_nt_stores_is_found_on_xfs() {
    let r = check(
        "nodrain-flag.toml",
        &workload("nodrain-flag", "run-nodrain", &["flag_flushed"]),
        FsKind::Xfs,
        at_markers(),
    );
    let w = &r.workloads[0];
    assert!(
        w.seen().contains(&Verdict::ProgramCheckFailed),
        "{:?}",
        w.seen()
    );
    let f = w
        .findings
        .iter()
        .find(|f| f.verdict == Verdict::ProgramCheckFailed)
        .unwrap();
    assert!(
        f.problems[0].message.contains("was not drained"),
        "{}",
        f.problems[0].message
    );
}

#[test]
fn a_checker_that_fails_is_a_finding_with_its_output() {
    // /bin/false, dynamic, from the host: every state fails its check.
    let src = "[[ops]]\nop = \"mkdir\"\npath = \"d\"\n\
               [[checkers]]\nprogram = \"/bin/false\"\n";
    let r = check("false-checker.toml", src, FsKind::Ext4, Policy::Op);
    let w = &r.workloads[0];
    assert_eq!(w.seen(), vec![Verdict::ProgramCheckFailed]);
    let msg = &w.findings[0].problems[0].message;
    assert!(msg.contains("`/bin/false` exited with 1"), "{msg}");
}

#[test]
fn a_program_that_hangs_is_killed_at_its_timeout() {
    let src = format!(
        "[[ops]]\nop = \"exec\"\nprogram = \"{}\"\ntimeout_ms = 300\n",
        program("spin")
    );
    let e = Check::toml("spin.toml", &src)
        .unwrap()
        .fs(FsKind::Ext4)
        .points(Policy::Fence { all: false })
        .run()
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("spin` timed out after 300 ms (guest time) and was killed"),
        "{e}"
    );
}

/// The PMDK example: `create` the pool, then `mode`, with `pmempool check` (the stock
/// checker) and the program's own check.
fn pmemobj_workload(mode: &str, markers: &[&str]) -> String {
    let p = program("pmemobj-tx");
    format!(
        "description = \"pmemobj-tx {mode}\"\n\
         [[ops]]\nop = \"exec\"\nprogram = \"{p}\"\nargs = [\"create\"]\ntimeout_ms = 60000\n\
         [[ops]]\nop = \"exec\"\nprogram = \"{p}\"\nargs = [\"{mode}\"]\nmarkers = {markers:?}\ntimeout_ms = 60000\n\
         [[checkers]]\npmempool_check = \"pool.obj\"\ntimeout_ms = 60000\n\
         [[checkers]]\nprogram = \"{p}\"\nargs = [\"check\"]\ntimeout_ms = 60000\n"
    )
}

#[test]
fn pmemobj_transactions_are_ok_at_every_marker_with_pmempool_check() {
    let r = check(
        "pmemobj-tx.toml",
        &pmemobj_workload("run", &["tx_begin", "tx_commit", "tx_end"]),
        FsKind::Ext4,
        at_markers(),
    );
    let w = &r.workloads[0];
    assert_eq!(w.seen(), vec![Verdict::Ok], "{}", r.findings_text(None));
    assert!(w.points.len() >= 9, "{} crash points", w.points.len());
}

/// About 4 minutes under TCG on 2 busy cores (111 images, each opened by libpmemobj
/// and `pmempool check`); the same bug by hand is in CI on XFS
/// (`a_commit_flag_after_undrained_nt_stores_is_found_on_xfs`).
#[test]
#[ignore]
fn pmemobj_commit_flag_after_nodrain_copy_is_found() {
    let r = check(
        "pmemobj-nodrain.toml",
        &pmemobj_workload("run-nodrain", &["tx_begin", "flag_flushed", "tx_end"]),
        FsKind::Ext4,
        at_markers(),
    );
    let w = &r.workloads[0];
    let f = w
        .findings
        .iter()
        .find(|f| f.verdict == Verdict::ProgramCheckFailed)
        .unwrap_or_else(|| panic!("{:?}\n{}", w.seen(), r.findings_text(None)));
    let msg = &f.problems[0].message;
    assert!(msg.contains("inconsistent: generation"), "{msg}");
    assert!(
        f.point
            .after_marker
            .as_deref()
            .is_some_and(|m| m.starts_with("flag_flushed #")),
        "{:?}",
        f.point
    );
}

/// Every fence point of the correct PMDK program's transactions: the pool is made by
/// the first op and is not crash-tested (`crash_from_op = 1`: its ~2,700 fences are
/// PMDK's pool layout, not the transactions), so crash points are the fences of the
/// three transactions in the second op. The kernel's own 4 KiB block writes when the
/// program ends (ext4's superblock, the jbd2 journal superblock) tear on fsdax
/// (`torn-write`, 24 states in a run without it; `docs/torn-writes.md`): they are
/// the file system's, not libpmemobj's, so they are made sector-atomic here. Long
/// under TCG (25 points, 997 states, 355 images, each opened by libpmemobj and
/// `pmempool check`: 15 minutes on 2 busy cores), so not in CI
/// (`cargo test -p pmcrash-e2e --test programs -- --ignored`).
#[test]
#[ignore]
fn pmemobj_transactions_are_ok_at_every_fence() {
    let src = format!(
        "crash_from_op = 1\n{}",
        pmemobj_workload("run", &["tx_begin", "tx_commit", "tx_end"])
    );
    let t = std::time::Instant::now();
    let r = Check::toml("pmemobj-tx.toml", &src)
        .unwrap()
        .fs(FsKind::Ext4)
        .points(Policy::Fence { all: false })
        .configure(|c| c.sector_atomic = Some(4096))
        .run()
        .unwrap();
    let w = &r.workloads[0];
    eprintln!(
        "FIGURES pmemobj-tx fence points: {:.1} s, {} points, stats {}",
        t.elapsed().as_secs_f64(),
        w.points.len(),
        serde_json::to_string(&w.stats).unwrap()
    );
    // Only the transactions' fences: every point lies in op 1, and there are some.
    assert!(!w.points.is_empty());
    assert!(
        w.points.iter().all(|p| p.op == Some(1)),
        "{:?}",
        w.points.iter().map(|p| p.op).collect::<Vec<_>>()
    );
    assert_eq!(w.seen(), vec![Verdict::Ok], "{}", r.findings_text(None));
}
