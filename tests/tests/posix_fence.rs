//! Two workloads of the POSIX corpus at fence points, where lines are in flight (a
//! process of its own: `posix.rs` measures its peak memory at op points).

use crash_models::ops::FsKind;
use crash_models::points::Policy;
use pmcrash::pipeline::{Pipeline, RunConfig};
use pmcrash::workloads::{load, Loaded};
use pmcrash_e2e::{factory, rt};
use std::path::PathBuf;

/// Two workloads at fence points, where lines are in flight: directory fsync after a
/// create, and after a link and an unlink. No state may break a promise; torn
/// in-place superblock writes (fsdax has no sector atomicity) show as torn-write
/// (`tests/tests/torn.rs` checks that they do).
#[test]
fn directory_fsync_workloads_at_fence_points() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../corpora/posix");
    let all = load(&[dir]).expect("the POSIX corpus parses");
    let pick: Vec<Loaded> = all
        .into_iter()
        .filter(|l| l.name.contains("01-create-fsync-dir") || l.name.contains("03-link-unlink"))
        .collect();
    assert_eq!(pick.len(), 2);
    let report = rt().block_on(async {
        let cfg = RunConfig {
            fs: FsKind::Ext4,
            points: Policy::default(),
            workers: 2,
            ..RunConfig::default()
        };
        let mut p = Pipeline::with_factory(factory(FsKind::Ext4), cfg).expect("pipeline");
        let r = p.run(&pick, false).await;
        p.shutdown().await;
        r.expect("the workloads run")
    });
    for w in &report.workloads {
        assert!(w.stats.crash_points > 5, "{}: {:?}", w.name, w.stats);
        assert!(w.stats.states > w.stats.crash_points, "{}: states", w.name);
        for f in &w.findings {
            assert!(
                f.problems.iter().all(|p| matches!(
                    p.verdict,
                    pmcrash::oracle::Verdict::FsCorruption | pmcrash::oracle::Verdict::TornWrite
                )),
                "{}: a broken promise at fence points:\n{}",
                w.name,
                report.render_text()
            );
        }
    }
}
