//! Read-set pruning is sound: a small workload per file system (create, 4 KiB write,
//! fsync) at fence points with single-line states (the first 4 points, 48 states each
//! at most, to keep CI short; `cargo xtask bench` runs whole workloads), checked with
//! pruning and with `--no-prune`, gives the same verdict for every crash state
//! (compared state by state); every distinct image is either checked or pruned.

use crash_models::ops::FsKind;
use crash_models::points::Policy;
use crash_models::states::Strategy;
use pmcrash::pipeline::{Pipeline, RunConfig};
use pmcrash::report::WorkloadReport;
use pmcrash::workloads::{load, Loaded};
use pmcrash_e2e::{factory, rt};
use std::path::PathBuf;

fn workload() -> Vec<Loaded> {
    let f = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../corpora/bench/single-op.toml");
    load(&[f]).expect("the bench workload parses")
}

fn run(fs: FsKind, prune: bool) -> WorkloadReport {
    rt().block_on(async {
        let cfg = RunConfig {
            fs,
            points: Policy::default(),
            states: Strategy::EachLine,
            workers: 2,
            prune,
            state_verdicts: true,
            // The first crash points, and the first states of each (none, all, then
            // line by line): a few minutes of CI with read recording on.
            max_points: Some(4),
            max_states: 48,
            ..RunConfig::default()
        };
        let mut p = Pipeline::with_factory(factory(fs), cfg).expect("pipeline");
        let r = p.run(&workload(), false).await;
        p.shutdown().await;
        let mut r = r.expect("the workload runs");
        assert!(!r.incomplete);
        r.workloads.remove(0)
    })
}

fn check(fs: FsKind) {
    let pruned = run(fs, true);
    let full = run(fs, false);
    assert_eq!(full.stats.pruned_images, 0, "{fs}: --no-prune pruned");
    assert_eq!(
        full.stats.checked_images, full.stats.distinct_images,
        "{fs}: --no-prune checks every distinct image"
    );
    let records = |w: &WorkloadReport| w.points.iter().map(|p| p.record).collect::<Vec<_>>();
    assert_eq!(
        records(&pruned),
        records(&full),
        "{fs}: the two runs have different crash points (the trace is not reproducible)"
    );
    let mut states = 0;
    for (a, b) in pruned.points.iter().zip(&full.points) {
        assert_eq!(a.states, b.states, "{fs}: point {}", a.record);
        assert_eq!(a.state_verdicts.len(), a.states, "{fs}: point {}", a.record);
        for (i, (va, vb)) in a.state_verdicts.iter().zip(&b.state_verdicts).enumerate() {
            assert_eq!(
                va, vb,
                "{fs}: crash point {} state {i}: {va} pruned, {vb} with --no-prune (pruned images there: {:?})",
                a.record, a.equal_to
            );
        }
        states += a.states;
    }
    assert!(states > 50, "{fs}: only {states} states");
    assert_eq!(pruned.stats.distinct_images, full.stats.distinct_images);
    assert_eq!(
        pruned.stats.checked_images + pruned.stats.pruned_images,
        pruned.stats.distinct_images
    );
    eprintln!(
        "{fs}: {} states, {} distinct images, {} checked with pruning ({} distinct read sets among the classes) ({} ms) vs {} ({} ms)",
        states,
        full.stats.distinct_images,
        pruned.stats.checked_images,
        pruned.stats.prune_read_sets,
        pruned.timings.total_ms,
        full.stats.checked_images,
        full.timings.total_ms
    );
}

#[test]
fn pruning_keeps_every_state_verdict_on_ext4() {
    check(FsKind::Ext4);
}

#[test]
fn pruning_keeps_every_state_verdict_on_xfs() {
    check(FsKind::Xfs);
}
