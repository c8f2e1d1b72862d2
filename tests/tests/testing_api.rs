//! `pmcrash::testing` on a real guest: `assert_no_findings` fails on the LSFMM 2016
//! hazard (a store + clwb + sfence into a hole of a plain shared mapping, never
//! synced) with the finding in words, checked by a snapshot; `assert_only` lets the
//! allowed class through; ops written in Rust run as a workload file's would.

use pmcrash::testing::{Check, FsKind, Op, Policy, Verdict};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// The panic message of `f`, `None` when it does not panic.
fn panic_message(f: impl FnOnce()) -> Option<String> {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let r = catch_unwind(AssertUnwindSafe(f));
    std::panic::set_hook(hook);
    r.err().map(|e| {
        e.downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default()
    })
}

/// The trace's record numbers depend on kernel timing: `--crash-at N` becomes
/// `--crash-at [record]`.
fn redact_records(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find("--crash-at ") {
        out.push_str(&rest[..i + "--crash-at ".len()]);
        rest = rest[i + "--crash-at ".len()..].trim_start_matches(|c: char| c.is_ascii_digit());
        out.push_str("[record]");
    }
    out.push_str(rest);
    out
}

#[test]
fn assert_no_findings_names_the_unsafe_flush() {
    let report = Check::workload_file("../corpora/lsfmm2016/01-shared-flush-no-fsync.toml")
        .unwrap()
        .fs(FsKind::Ext4)
        .points(Policy::Op)
        .run()
        .unwrap();
    assert_eq!(
        report.workloads[0].name,
        "../corpora/lsfmm2016/01-shared-flush-no-fsync.toml"
    );
    let msg = panic_message(|| report.assert_no_findings())
        .expect("assert_no_findings fails on an unsafe-flush-only finding");
    insta::assert_snapshot!("assert_no_findings_lsfmm01_ext4", redact_records(&msg));
    assert!(msg.contains("--crash-at "), "{msg}");
    // The class the test allows passes; a narrower allowance still fails.
    report.assert_only(&[Verdict::UnsafeFlushOnly]);
    assert!(panic_message(|| report.assert_only(&[Verdict::DurabilityViolation])).is_some());
}

#[test]
fn ops_written_in_rust() {
    let ops = vec![
        Op::Open {
            path: "a".into(),
            fd: "a".into(),
            create: true,
            truncate: false,
            excl: false,
            append: false,
            directory: false,
            mode: 0o644,
        },
        Op::Write {
            fd: "a".into(),
            data: crash_models::ops::Data::Text("hello".into()),
            direct: false,
        },
        Op::Fsync { fd: "a".into() },
    ];
    let report = Check::ops("write-fsync", ops)
        .unwrap()
        .points(Policy::Op)
        .run()
        .unwrap();
    report.assert_no_findings();
    assert_eq!(report.summary()["workloads"][0]["ops"][2], "fsync");
    // An invalid op is an error naming it, before any boot.
    let e = Check::ops("bad", vec![Op::Fsync { fd: "nope".into() }]).unwrap_err();
    assert!(e.to_string().starts_with("bad: ops[0].fd"), "{e}");
}
