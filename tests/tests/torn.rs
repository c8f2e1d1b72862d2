//! Torn kernel block writes: on ext4 at fence points the only failures of a create and
//! fsync are torn superblock writes (the jbd2 journal superblock at the first fsync
//! after mount, the primary superblock at unmount), which fsdax allows. They get the
//! verdict `torn-write`, grouped; `--sector-atomic 4096` (BTT-like atomicity) removes
//! them.

use crash_models::ops::FsKind;
use pmcrash::oracle::Verdict;
use pmcrash::pipeline::{Pipeline, RunConfig};
use pmcrash::report::Report;
use pmcrash::workloads::load;
use pmcrash_e2e::{factory, rt};
use std::path::PathBuf;

fn run(sector_atomic: Option<u64>) -> Report {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../corpora/regressions/create-fsync.toml");
    let w = load(&[path]).expect("the workload parses");
    rt().block_on(async {
        let cfg = RunConfig {
            fs: FsKind::Ext4,
            workers: 2,
            sector_atomic,
            ..RunConfig::default()
        };
        let mut p = Pipeline::with_factory(factory(FsKind::Ext4), cfg).expect("pipeline");
        let r = p.run(&w, false).await;
        p.shutdown().await;
        r.expect("the workload runs")
    })
}

#[test]
fn torn_superblocks_are_torn_writes_and_sector_atomicity_removes_them() {
    let torn = run(None);
    let text = torn.render_text();
    eprintln!("{text}");
    let w = &torn.workloads[0];
    let n = |v: Verdict| w.verdicts.get(&v).copied().unwrap_or(0);
    assert!(n(Verdict::TornWrite) > 0, "no torn-write:\n{text}");
    assert_eq!(n(Verdict::FsCorruption), 0, "fs-corruption left:\n{text}");
    for f in w
        .findings
        .iter()
        .filter(|f| f.verdict == Verdict::TornWrite)
    {
        let first = &f.problems[0].message;
        assert!(
            (first.contains("jbd2 journal superblock")
                || first.contains("ext4 primary superblock"))
                && first.contains("no sector atomicity"),
            "{first}"
        );
    }
    // Grouped: fewer findings than torn states, and the counts add up.
    let torn_states: u64 = w
        .findings
        .iter()
        .filter(|f| f.verdict == Verdict::TornWrite)
        .map(|f| f.states)
        .sum();
    assert_eq!(torn_states, n(Verdict::TornWrite), "{text}");
    assert!(
        (w.findings.len() as u64) < n(Verdict::TornWrite),
        "one finding per state:\n{text}"
    );

    let atomic = run(Some(4096));
    let text = atomic.render_text();
    eprintln!("{text}");
    let w = &atomic.workloads[0];
    let n = |v: Verdict| w.verdicts.get(&v).copied().unwrap_or(0);
    assert_eq!(n(Verdict::TornWrite), 0, "a 4 KiB sector tore:\n{text}");
    assert_eq!(atomic.config.sector_atomic, Some(4096));
}
