//! Bounded memory (issue 15): a generated workload with 128 stores to one mapping at
//! op points on XFS (every store an op, so hundreds of crash points, each with the
//! log's in-flight lines) completes with the harness's peak resident memory under
//! 1 GiB, and a tiny memory budget (1 MiB) gives the same verdict for every crash
//! state as the default budget, only with fewer points in flight.
//!
//! It also guards the drive loop's progress: with the whole 64-point window sharing
//! a few images, judging empties the window with nothing out, and the loop before
//! the fix then waited for a recovery that could never come (the harness idle on a
//! futex next to two idle checker guests).

use crash_models::ops::{FsKind, Workload};
use crash_models::points::Policy;
use crash_models::states::Strategy;
use pmcrash::pipeline::{Pipeline, RunConfig};
use pmcrash::report::WorkloadReport;
use pmcrash::workloads::Loaded;
use pmcrash_e2e::{factory, rt};
use std::fmt::Write as _;

/// Stores to the mapping (one op each).
const STORES: usize = 128;

/// The tiny budget, in MiB.
const TINY_MIB: u64 = 1;

/// write 32 KiB, fallocate, mmap 8 KiB, `STORES` stores of 64 bytes, msync.
fn workload() -> Loaded {
    let mut s = String::from(
        "description = \"128 stores of 64 bytes to one mapping (issue 15)\"\n\n\
         [[ops]]\nop = \"open\"\npath = \"a.dat\"\nfd = \"f\"\ncreate = true\n\n\
         [[ops]]\nop = \"write\"\nfd = \"f\"\ndata = { seed = 15, len = 32768 }\n\n\
         [[ops]]\nop = \"fallocate\"\nfd = \"f\"\noffset = 0\nlen = 65536\n\n\
         [[ops]]\nop = \"mmap\"\nfd = \"f\"\nmap = \"m\"\nlen = 8192\n",
    );
    for i in 0..STORES {
        let _ = write!(
            s,
            "\n[[ops]]\nop = \"store\"\nmap = \"m\"\noffset = {}\ndata = {{ seed = {i}, len = 64 }}\n",
            i * 64
        );
    }
    s.push_str("\n[[ops]]\nop = \"msync\"\nmap = \"m\"\n");
    Loaded {
        name: "generated/stores-128.toml".into(),
        workload: Workload::parse(&s, "stores-128.toml").expect("the generated workload parses"),
    }
}

fn run(memory_mib: u64) -> WorkloadReport {
    rt().block_on(async {
        let cfg = RunConfig {
            fs: FsKind::Xfs,
            points: Policy::Op,
            states: Strategy::EachLine,
            // Two states a point (none, all): the point count, not the states per
            // point, is what memory grew with; no read recording (this is not about
            // pruning, and it halves the check time).
            max_states: 2,
            prune: false,
            workers: 2,
            memory_mib,
            state_verdicts: true,
            ..RunConfig::default()
        };
        let mut p = Pipeline::with_factory(factory(FsKind::Xfs), cfg).expect("pipeline");
        let r = p.run(&[workload()], false).await;
        p.shutdown().await;
        let mut r = r.expect("the workload runs");
        assert!(!r.incomplete);
        r.workloads.remove(0)
    })
}

/// Peak resident memory of this process (the harness runs in it), in bytes.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse::<u64>().ok())
        .expect("VmHWM in /proc/self/status")
        * 1024
}

#[test]
fn many_stores_on_xfs_stay_within_memory_and_a_tiny_budget_changes_no_verdict() {
    let full = run(pmcrash::memory::DEFAULT_BUDGET_MIB);
    let peak = peak_rss();
    assert!(
        full.stats.crash_points > STORES,
        "{} crash points",
        full.stats.crash_points
    );
    assert!(
        peak < 1 << 30,
        "peak resident memory {} MiB ({} crash points, {} distinct images)",
        peak >> 20,
        full.stats.crash_points,
        full.stats.distinct_images
    );
    // The kernel's RSS counters are per-CPU and read approximately (by up to a batch
    // per CPU), so a later read of VmHWM can come out a little below an earlier one:
    // the report's value must agree with ours within that, not exactly.
    assert!(
        full.stats.peak_rss_bytes > 0 && full.stats.peak_rss_bytes <= peak + (4 << 20),
        "the report's peak {} B, VmHWM read after the run {} B",
        full.stats.peak_rss_bytes,
        peak
    );
    // 1 MiB: below what one XFS crash point of this workload holds (its durable
    // lines alone are several MB), so points are made one at a time (the scheduler
    // always admits one); 64 MiB would still hold the whole 64-point window here.
    let tiny = run(TINY_MIB);
    let by_state = |w: &WorkloadReport| {
        w.points
            .iter()
            .map(|p| (p.record, p.state_verdicts.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        by_state(&tiny),
        by_state(&full),
        "a {TINY_MIB} MiB budget changed verdicts"
    );
    eprintln!(
        "{} crash points, {} states, {} distinct images ({} checked), peak {} MiB; default budget {} ms, {TINY_MIB} MiB {} ms",
        full.stats.crash_points,
        full.stats.states,
        full.stats.distinct_images,
        full.stats.checked_images,
        peak >> 20,
        full.timings.total_ms,
        tiny.timings.total_ms
    );
}
