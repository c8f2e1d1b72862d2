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
