//! The command line as a user meets it: help, exit codes, errors that point at the line.

use std::process::Command;

fn pmcrash() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pmcrash"))
}

#[test]
fn every_command_has_help() {
    for args in [
        vec!["--help"],
        vec!["setup", "--help"],
        vec!["doctor", "--help"],
        vec!["run", "--help"],
        vec!["demo", "--help"],
        vec!["trace", "--help"],
        vec!["trace", "image", "--help"],
        vec!["check", "--help"],
        vec!["repro", "--help"],
        vec!["export", "--help"],
        vec!["fuzz", "--help"],
        vec!["fuzz", "merge", "--help"],
    ] {
        let out = pmcrash().args(&args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("Usage:"), "{args:?}: {text}");
    }
}

#[test]
fn usage_errors_exit_2() {
    let out = pmcrash().arg("frobnicate").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = pmcrash()
        .args(["run", "x.toml", "--fs", "btrfs"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("btrfs"));
}

#[test]
fn invalid_workload_exits_2_naming_file_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "description = \"bad\"\n\n[[ops]]\nop = \"open\"\npath = \"a\"\nfd = \"a\"\n\n[[ops]]\nop = \"store\"\nmap = \"nope\"\noffset = 0\ndata = \"x\"\n",
    )
    .unwrap();
    let out = pmcrash().arg("run").arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml:8:1: ops[1].map"), "{err}");
    assert!(err.contains("no mapping named `nope`"), "{err}");

    std::fs::write(&bad, "[[ops]]\nop = \"ftruncate\"\nfd = \"a\"\nlen = -1\n").unwrap();
    let out = pmcrash().arg("run").arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml:4:7: ops[0].len"), "{err}");

    let out = pmcrash()
        .args(["run", "/nonexistent/w.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/w.toml"));
}

#[test]
fn doctor_json_is_valid() {
    let out = pmcrash().args(["doctor", "--json"]).output().unwrap();
    assert!(matches!(out.status.code(), Some(0 | 2)), "{out:?}");
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("doctor --json prints JSON");
    assert!(v.is_object() || v.is_array(), "{v}");
}

fn children_named(ppid: u32, name: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // comm is in parentheses and may contain spaces; fields after it are plain.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = &stat[open + 1..close];
        let rest: Vec<&str> = stat[close + 2..].split(' ').collect();
        if comm.starts_with(name) && rest.get(1).and_then(|p| p.parse::<u32>().ok()) == Some(ppid) {
            out.push(pid);
        }
    }
    out
}

fn running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // A zombie has ended; only its parent's wait is missing.
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z'),
        Err(_) => false,
    }
}

/// Every QEMU in `qemus` has ended (waiting a bounded number of polls for the kernel
/// to reap them).
fn assert_all_ended(qemus: &[u32]) {
    for _ in 0..2_000 {
        if qemus.iter().all(|p| !running(*p)) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    for p in qemus {
        assert!(!running(*p), "QEMU {p} still runs after Ctrl-C");
    }
}

/// Ctrl-C while a guest runs ends that guest's QEMU too.
#[test]
fn ctrl_c_ends_every_qemu() {
    let dir = tempfile::tempdir().unwrap();
    let w = dir.path().join("long.toml");
    let mut src = String::from("[[ops]]\nop = \"open\"\npath = \"f\"\nfd = \"f\"\ncreate = true\n");
    for _ in 0..400 {
        src.push_str("\n[[ops]]\nop = \"pwrite\"\nfd = \"f\"\noffset = 0\ndata = { fill = 1, len = 65536 }\n\n[[ops]]\nop = \"fsync\"\nfd = \"f\"\n");
    }
    std::fs::write(&w, src).unwrap();
    let mut child = pmcrash()
        .args(["run", "--json"])
        .arg(&w)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let me = child.id();
    // Wait (bounded by iterations, not time) for the harness to start a guest.
    let mut qemus = Vec::new();
    for _ in 0..60_000 {
        qemus = children_named(me, "qemu-system");
        if !qemus.is_empty() || child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert!(
        !qemus.is_empty(),
        "pmcrash never started a guest: {:?}",
        child.wait_with_output()
    );
    // SAFETY: signalling our own child.
    unsafe { libc::kill(me as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_all_ended(&qemus);
}

/// Ctrl-C while crash states are being checked: the run stops taking new images, writes
/// the report of what it checked (marked incomplete) and exits 130, leaving no QEMU.
#[test]
fn ctrl_c_during_checking_writes_the_partial_report() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    // A short workload that finishes, then one with thousands of crash states at fence
    // points: the interrupt comes once the second one's trace is written, so the first
    // is checked whole and the second is being enumerated or checked. `--no-prune`
    // keeps the second one long: pruned, it can be checked whole before the signal
    // lands, and then nothing was cut short (exit 1, a complete report).
    let first = dir.path().join("a-first.toml");
    std::fs::write(
        &first,
        "[[ops]]\nop = \"open\"\npath = \"f\"\nfd = \"f\"\ncreate = true\n\n[[ops]]\nop = \"pwrite\"\nfd = \"f\"\noffset = 0\ndata = { fill = 1, len = 4096 }\n\n[[ops]]\nop = \"fsync\"\nfd = \"f\"\n",
    )
    .unwrap();
    let second = dir.path().join("b-second.toml");
    std::fs::copy(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../corpora/lsfmm2016/03-shared-flush-then-fsync.toml"
        ),
        &second,
    )
    .unwrap();
    let junit = dir.path().join("junit.xml");
    let mut child = pmcrash()
        .args(["run", "--json", "--points", "fence", "--no-prune", "--out"])
        .arg(&out)
        .arg("--junit")
        .arg(&junit)
        .arg(&first)
        .arg(&second)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let me = child.id();
    // Wait (bounded by iterations, not time) for the second workload's trace.
    let trace = out.join("b-second.pmtrace");
    for _ in 0..120_000 {
        if trace.exists() || child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert!(
        trace.exists(),
        "the second workload was never traced: {:?}",
        child.wait_with_output()
    );
    let qemus = children_named(me, "qemu-system");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(me as i32, libc::SIGINT) };
    let res = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&res.stderr);
    assert_eq!(res.status.code(), Some(130), "{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&res.stdout)
        .unwrap_or_else(|e| panic!("the partial report is not JSON ({e}): {stderr}"));
    assert_eq!(report["incomplete"], true, "{report}");
    let states = report["totals"]["states"].as_u64().unwrap();
    assert!(states > 0, "no crash state counted: {report}");
    let workloads = report["workloads"].as_array().unwrap();
    assert!(!workloads.is_empty() && workloads.len() <= 2, "{report}");
    assert!(
        workloads[0]["name"]
            .as_str()
            .unwrap()
            .ends_with("a-first.toml"),
        "{report}"
    );
    assert!(workloads[0]["stats"]["states"].as_u64().unwrap() > 0);
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert!(
        xml.contains("<property name=\"incomplete\" value=\"true\"/>"),
        "{xml}"
    );
    assert_all_ended(&qemus);
}

#[test]
fn corrupt_trace_exits_2_naming_the_offset() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.pmtrace");
    std::fs::write(&bad, b"PMTRACE? not really a trace").unwrap();
    let out = pmcrash()
        .args(["trace", "show"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.pmtrace"), "{err}");
    assert!(err.contains("byte"), "the error names the offset: {err}");
}

/// `--crash-at` with a record that is no crash point is an error (exit 2) that names
/// the nearest crash points, not a silent empty run. Boots real guests.
#[test]
fn crash_at_no_crash_point_exits_2_with_the_nearest() {
    let w = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../corpora/regressions/create-fsync.toml"
    );
    // Record 1 is inside the run's preamble: never a crash point.
    let out = pmcrash()
        .args([
            "run",
            w,
            "--fs",
            "ext4",
            "--states",
            "all",
            "--crash-at",
            "1",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--crash-at 1 is no crash point"), "{err}");
    assert!(err.contains("nearest crash points"), "{err}");
    assert!(
        err.contains("(op 0 open)") || err.contains("(op 1 fsync)"),
        "{err}"
    );
    // And a real one from that list runs that one point.
    let nearest: u64 = err
        .split("nearest crash points: ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|s| s.trim_end_matches(',').parse().ok())
        .unwrap_or_else(|| panic!("no point number in: {err}"));
    let out = pmcrash()
        .args([
            "run",
            w,
            "--fs",
            "ext4",
            "--states",
            "all",
            "--json",
            "--crash-at",
        ])
        .arg(nearest.to_string())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let points = report["workloads"][0]["points"].as_array().unwrap();
    assert_eq!(points.len(), 1, "{report}");
    assert_eq!(points[0]["record"].as_u64(), Some(nearest));
}
