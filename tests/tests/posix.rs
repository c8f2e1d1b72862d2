//! The POSIX crash corpus (`corpora/posix/`) end to end on ext4-DAX and XFS-DAX:
//! every op class of the language (directory fsync after create, rename, link and
//! unlink; xattrs; truncate; O_DIRECT; fallocate modes; sync_file_range; FIFOs;
//! failing ops; 1 TiB and 2^62-byte files), each workload's `[expect]` met at op
//! points, the errnos the kernel gave recorded, and the harness's peak memory small
//! whatever the files' sizes.

use crash_models::ops::FsKind;
use crash_models::points::Policy;
use pmcrash::pipeline::{Pipeline, RunConfig};
use pmcrash::report::{Report, WorkloadReport};
use pmcrash::workloads::{load, Loaded};
use pmcrash_e2e::{factory, rt};
use std::path::PathBuf;

fn corpus() -> Vec<Loaded> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../corpora/posix");
    load(&[dir]).expect("the POSIX corpus parses")
}

fn run(fs: FsKind, points: Policy, workloads: &[Loaded]) -> Report {
    rt().block_on(async {
        let cfg = RunConfig {
            fs,
            points,
            workers: 2,
            ..RunConfig::default()
        };
        let mut p = Pipeline::with_factory(factory(fs), cfg).expect("pipeline");
        let r = p.run(workloads, false).await;
        p.shutdown().await;
        r.expect("the corpus runs")
    })
}

/// Peak resident memory of this process (the harness runs in it), in MiB.
fn peak_rss_mib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("VmHWM in /proc/self/status");
    kib / 1024
}

fn by<'a>(r: &'a Report, stem: &str) -> &'a WorkloadReport {
    r.workloads
        .iter()
        .find(|w| w.name.contains(stem))
        .unwrap_or_else(|| panic!("no workload {stem}"))
}

/// The errno each op of a workload got (`None`: it succeeded).
fn errnos(w: &WorkloadReport) -> Vec<Option<i32>> {
    w.ops.iter().map(|o| o.errno).collect()
}

fn check(fs: FsKind) {
    let workloads = corpus();
    assert!(workloads.len() >= 10, "{} workloads", workloads.len());
    let report = run(fs, Policy::Op, &workloads);
    for w in &report.workloads {
        let e = w
            .expect
            .as_ref()
            .unwrap_or_else(|| panic!("{}: every corpus workload states its [expect]", w.name));
        assert!(
            e.met,
            "{fs}: {}: {}\n{}",
            w.name,
            e.unmet.join("; "),
            report.render_text()
        );
        assert!(w.stats.crash_points > 0, "{fs}: {}: no crash point", w.name);
        assert_eq!(w.stats.guest_restarts, 0, "{fs}: {}", w.name);
    }
    // Failing ops are data: the kernel's errnos, in order, and the run went on.
    let failing = errnos(by(&report, "12-failing-ops"));
    let want = [2, 39, 21, 17, 22, 9, 61];
    let got: Vec<i32> = failing.iter().flatten().copied().collect();
    assert_eq!(got, want, "{fs}: errnos of 12-failing-ops");
    assert_eq!(failing.last(), Some(&None), "{fs}: the last fsync ran");
    // 1 TiB is a legal sparse file on both; 2^62 bytes only on XFS (ext4: EFBIG).
    assert!(errnos(by(&report, "08-ftruncate-1tib"))
        .iter()
        .all(Option::is_none));
    let beyond = errnos(by(&report, "09-ftruncate-beyond-max"));
    match fs {
        FsKind::Ext4 => assert!(beyond.contains(&Some(27)), "{fs}: {beyond:?}"),
        FsKind::Xfs => assert!(beyond.iter().all(Option::is_none), "{fs}: {beyond:?}"),
    }
    // Never a model of the file's size: the harness stays small.
    let peak = peak_rss_mib();
    eprintln!("{fs}: peak RSS of the harness (and this test process): {peak} MiB");
    assert!(peak < 200, "{fs}: peak RSS {peak} MiB");
}

#[test]
fn posix_corpus_on_ext4_dax() {
    check(FsKind::Ext4);
}

#[test]
fn posix_corpus_on_xfs_dax() {
    check(FsKind::Xfs);
}
