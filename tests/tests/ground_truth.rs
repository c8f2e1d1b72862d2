//! Ground truth: the PM file as the traced guest really had it, compared byte for byte
//! with the image pmcrash builds for "every line persisted" at the same record.
//!
//! The tracer snapshots the NVDIMM's backing file before every fence and marker of the
//! run (under TCG every store is in the file at once, so that is PM with every store
//! persisted). At a fence crash point (applied = the fence's index) the previous
//! instructions have all completed and the fence has not run, so the snapshot is
//! exactly the state after records `0..applied`. The crash-models replay of the same
//! records with every in-flight line kept whole must give the same bytes; any
//! difference is a tracer or model bug. Snapshots at chosen records in the middle of
//! store streams (taken at the end of the instruction that made record N - 1) are
//! compared the same way.

use crash_models::delta::ImageBuilder;
use crash_models::model::{ModelConfig, Replayer};
use crash_models::ops::{FsKind, Workload};
use crash_models::points::{CrashPoints, PointConfig, Policy};
use crash_models::states::{CrashStates, StateConfig, Strategy};
use crash_models::trace::Record;
use pmcrash::trace::{read_snapshots, trace_workload_with, GroundTruth, TraceOptions};
use pmcrash_e2e::{factory, rt};
use std::collections::BTreeSet;

/// create + write + fsync, a directory, a rename, syncfs.
const POSIX: &str = r#"
description = "create, write, fsync, mkdir, rename, syncfs"
[[ops]]
op = "open"
path = "foo"
fd = "f"
create = true
[[ops]]
op = "pwrite"
fd = "f"
offset = 0
data = { fill = 7, len = 5000 }
[[ops]]
op = "fsync"
fd = "f"
[[ops]]
op = "mkdir"
path = "d"
[[ops]]
op = "rename"
from = "foo"
to = "d/bar"
[[ops]]
op = "syncfs"
fd = "f"
[[ops]]
op = "close"
fd = "f"
"#;

/// What one comparison covered.
#[derive(Debug)]
struct Compared {
    fence_points: usize,
    snapshots: usize,
}

fn check(fs: FsKind, name: &str, src: &str) -> Compared {
    let workload = Workload::parse(src, name).expect("workload parses");
    let f = factory(fs);
    let dir = tempfile::tempdir().unwrap();
    let opts = TraceOptions {
        snapshot_fences: true,
        // And a few records that are no fence or marker: mid-store-stream states.
        snapshot_records: vec![1501, 3002, 4107, 5135, 6007, 9001],
        coverage: None,
    };
    let traced = rt()
        .block_on(trace_workload_with(&f, &workload, dir.path(), "gt", &opts))
        .unwrap_or_else(|e| panic!("{name} on {fs}: tracing failed: {e:#}"));
    for r in &traced.results {
        assert!(r.ok(), "{name} on {fs}: op {} failed: {r:?}", r.index);
    }
    let trace = pmcrash::trace::read(&traced.trace).expect("trace");
    let base = std::fs::read(&traced.base_image).unwrap();
    let snaps = read_snapshots(traced.snapshots.as_ref().expect("snapshots")).unwrap();
    let records = &trace.records;
    let n = workload.ops.len() as u32;
    let cfg = ModelConfig::new(Default::default(), trace.header.line_size).unwrap();

    // Every fence crash point pmcrash would check.
    let fence_points: BTreeSet<u64> = CrashPoints::new(
        records.iter().copied(),
        Replayer::new(cfg),
        PointConfig {
            policy: Policy::Fence { all: false },
            ops: Some(0..n),
            end_of_trace: false,
        },
    )
    .map(|p| p.applied)
    .collect();
    let snapped: BTreeSet<u64> = snaps.iter().map(|s| s.applied).collect();
    let missing: Vec<_> = fence_points.difference(&snapped).collect();
    assert!(
        missing.is_empty(),
        "{name} on {fs}: no snapshot at fence points {missing:?}: {:?}",
        missing
            .iter()
            .map(|&&m| records[m as usize - 2..m as usize + 2].to_vec())
            .collect::<Vec<_>>()
    );
    assert!(
        !fence_points.is_empty(),
        "{name} on {fs}: no fence crash point"
    );

    // Walk the trace and the snapshots together. Both images differ from the base
    // only where a snapshot so far or the built delta wrote: compare there.
    let mut replayer = Replayer::new(cfg);
    let mut truth = GroundTruth::new(&base, &snaps);
    let mut built = base.clone();
    let mut touched: BTreeSet<(u64, u64)> = BTreeSet::new();
    // Every in-flight line, however many (the default caps the lines considered; the
    // pipeline reports a capped point as such).
    let all = StateConfig {
        strategies: vec![Strategy::All],
        max_states: 1,
        max_lines: usize::MAX,
    };
    for (i, s) in snaps.iter().enumerate() {
        let applied = truth.advance().expect("a snapshot");
        for (off, b) in &s.ranges {
            touched.insert((*off, *off + b.len() as u64));
        }
        while replayer.position() < applied {
            replayer.apply(&records[replayer.position() as usize]);
        }
        let b = ImageBuilder::new(&replayer);
        let state = CrashStates::new(b.in_flight(), &all)
            .next()
            .expect("the all state");
        let img = b.build(&state);
        img.apply_to_slice(&mut built);
        let ranges = touched
            .iter()
            .copied()
            .chain(img.ranges().map(|(o, b)| (o, o + b.len() as u64)));
        for (a, e) in ranges {
            let r = a as usize..e as usize;
            if truth.image()[r.clone()] == built[r.clone()] {
                continue;
            }
            let at = a as usize
                + pmcrash::trace::first_difference(&truth.image()[r.clone()], &built[r])
                    .expect("differs");
            let writers: Vec<String> = records[..applied as usize]
                .iter()
                .enumerate()
                .filter(|(_, r)| {
                    matches!(**r, Record::Store { offset, size, .. }
                        if offset <= at as u64 && (at as u64) < offset + size as u64)
                })
                .map(|(i, r)| format!("{i}: {r:?}"))
                .collect();
            panic!(
                "{name} on {fs}: at record {applied} (snapshot {i}) the traced guest's PM \
                 differs from the all-persisted image at byte {at:#x}: PM {:#04x}, image \
                 {:#04x}, base {:#04x}; stores to it: {writers:?}",
                truth.image()[at],
                built[at],
                base[at]
            );
        }
        img.undo_slice(&mut built, &base);
    }
    Compared {
        fence_points: fence_points.len(),
        snapshots: snaps.len(),
    }
}

fn lsfmm(file: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/../corpora/lsfmm2016/{file}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

/// Two workloads on one file system.
fn two_workloads(fs: FsKind) {
    for (name, src) in [
        ("posix", POSIX.to_owned()),
        ("lsfmm06", lsfmm("06-fmetadatasync-one-unflushed.toml")),
    ] {
        let c = check(fs, name, &src);
        eprintln!(
            "{fs} {name}: {} fence points, {} snapshots compared",
            c.fence_points, c.snapshots
        );
    }
}

#[test]
fn ext4_ground_truth_equals_built_image_at_every_fence_point() {
    two_workloads(FsKind::Ext4);
}

#[test]
fn xfs_ground_truth_equals_built_image_at_every_fence_point() {
    two_workloads(FsKind::Xfs);
}

/// The whole LSFMM 2016 corpus and the smoke corpus, both file systems (minutes).
#[test]
#[ignore]
fn whole_corpus_ground_truth() {
    let root = format!("{}/../corpora", env!("CARGO_MANIFEST_DIR"));
    for fs in [FsKind::Ext4, FsKind::Xfs] {
        for sub in ["lsfmm2016", "smoke"] {
            let mut files: Vec<_> = std::fs::read_dir(format!("{root}/{sub}"))
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            files.sort();
            for p in files {
                let src = std::fs::read_to_string(&p).unwrap();
                let name = p.file_name().unwrap().to_string_lossy().into_owned();
                let c = check(fs, &name, &src);
                eprintln!(
                    "{fs} {name}: {} fence points, {} snapshots compared",
                    c.fence_points, c.snapshots
                );
            }
        }
    }
}

/// In deterministic mode (the default for tracing: -icount, a seeded RNG, the whole run
/// scripted from the restore on) the same workload gives the same trace, record for
/// record, values and kernel events included: the blake3 of the record streams are
/// equal.
#[test]
fn deterministic_traces_are_identical() {
    let f = factory(FsKind::Ext4);
    assert!(
        f.deterministic_traces,
        "deterministic tracing is the default"
    );
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    for (name, src) in [
        ("posix", POSIX.to_owned()),
        ("lsfmm06", lsfmm("06-fmetadatasync-one-unflushed.toml")),
    ] {
        let workload = Workload::parse(&src, name).unwrap();
        let mut runs = Vec::new();
        for stem in ["a", "b"] {
            let t = rt
                .block_on(pmcrash::trace::trace_workload(
                    &f,
                    &workload,
                    dir.path(),
                    &format!("{name}-{stem}"),
                ))
                .expect("trace");
            assert!(t.deterministic);
            let trace = pmcrash::trace::read(&t.trace).unwrap();
            runs.push((pmcrash::trace::record_stream_hash(&trace.records), trace));
        }
        let (ha, ta) = &runs[0];
        let (hb, tb) = &runs[1];
        let first = ta.records.iter().zip(&tb.records).position(|(x, y)| x != y);
        let around = |t: &crash_models::trace::Trace, i: usize| {
            t.records[i.saturating_sub(4)..(i + 4).min(t.records.len())].to_vec()
        };
        assert!(
            ha == hb,
            "{name}: two deterministic traces differ: {} vs {} records, first different \
             record {first:?}: {:?} vs {:?}",
            ta.records.len(),
            tb.records.len(),
            first.map(|i| around(ta, i)),
            first.map(|i| around(tb, i)),
        );
        assert!(ta.records.len() > 1000, "{name}: a real trace");
    }
}

/// Debugging aid: mount a PM image in a fresh guest and print what the kernel says:
/// `IMG=pm.img cargo test -p pmcrash-e2e --test ground_truth -- --ignored mount_an_image`.
#[test]
#[ignore]
fn mount_an_image() {
    let img = std::path::PathBuf::from(std::env::var("IMG").expect("IMG=path"));
    let fs: FsKind = std::env::var("FS")
        .unwrap_or_else(|_| "ext4".into())
        .parse()
        .expect("FS");
    let f = factory(fs);
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("pm.img");
    std::fs::copy(&img, &copy).unwrap();
    rt().block_on(async {
        let mut vm = f.start(&copy, None).await.expect("guest");
        let r = f.mount(&mut vm).await;
        eprintln!("mount: {r:?}");
        eprintln!("{}", vm.console_tail(12));
    });
}
