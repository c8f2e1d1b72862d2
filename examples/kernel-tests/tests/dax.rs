//! One test per workload and file system: trace the workload in a guest running the
//! kernel under test, crash it at every op boundary, let that kernel recover every
//! distinct crash image, and require every crash state to be ok. The summary (verdict
//! classes, what each flush and msync wrote back) is snapshotted.
//!
//! The kernel is Debian's 6.12 unless `PMCRASH_KERNEL_TREE` names a build tree.

use pmcrash::testing::{Check, FsKind, Policy};

/// Crash points at op boundaries with every single-line state: what each op
/// guarantees once it returns, in seconds of VM time per workload.
fn check(workload: &str, fs: FsKind) {
    let report = Check::workload_file(format!("workloads/{workload}.toml"))
        .unwrap()
        .fs(fs)
        .points(Policy::Op)
        .run()
        .unwrap_or_else(|e| panic!("{e}"));
    report.assert_no_findings();
    insta::assert_json_snapshot!(format!("{workload}-{fs}"), report.summary());
}

/// One test per file system for a workload: `append_fsync::ext4`, `append_fsync::xfs`.
macro_rules! workload {
    ($name:ident, $file:literal) => {
        mod $name {
            use super::*;

            #[test]
            fn ext4() {
                check($file, FsKind::Ext4);
            }

            #[test]
            fn xfs() {
                check($file, FsKind::Xfs);
            }
        }
    };
}

workload!(append_fsync, "append-fsync");
workload!(map_sync_store, "map-sync-store");
workload!(rename_replace, "rename-replace");
