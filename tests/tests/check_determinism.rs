//! Deterministic checks: the same crash image checked again reads the same PM lines,
//! stores to the same PM bytes and gets the same outcome (mount, dump, fsck, console).
//! Read-set pruning rests on it (`docs/pruning.md`): a check must be a function of the
//! bytes it loads.
//!
//! On ext4 and XFS, a small workload is traced; a few crash images are taken (the
//! all-persisted image of two fence points and, at each, two states with a line
//! dropped); each image is checked [`ROUNDS`] times, interleaved, through the normal
//! `Checker` on two long-lived guests; every check of an image must give the same read
//! set and outcome.

use crash_models::delta::CrashImage;
use crash_models::model::{Model, ModelConfig, Replayer};
use crash_models::ops::{FsKind, Workload};
use crash_models::points::{CrashPoints, PointConfig, Policy};
use crash_models::states::{CrashStates, StateConfig, Strategy};
use pmcrash::checker::{Checker, CheckerOptions, KnownBlocks, Recovery};
use pmcrash::image::FSDAX_DATA_OFFSET;
use pmcrash_e2e::{factory, rt};
use std::sync::Arc;

/// Checks per image.
const ROUNDS: usize = 20;

/// The outcome of one check, as pruning would copy it.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    mount: String,
    state_id: String,
    dump_error: Option<String>,
    unmount_error: Option<String>,
    fsck: Option<(Option<i32>, bool, String)>,
    console: Vec<(String, String)>,
}

fn outcome(r: &Recovery) -> Outcome {
    Outcome {
        mount: format!("{:?}", r.mount),
        state_id: r.state_id.clone(),
        dump_error: r.dump_error.clone(),
        unmount_error: r.unmount_error.clone(),
        fsck: r
            .fsck
            .as_ref()
            .map(|f| (f.code, f.problems, f.output.clone())),
        console: r
            .console
            .iter()
            .map(|c| (c.kind.to_string(), c.line.clone()))
            .collect(),
    }
}

/// The trace's base image and the images to check: per chosen fence point, the
/// all-persisted image and up to two with one line dropped; and the indices of the
/// all-persisted ones.
fn images(fs: FsKind, dir: &std::path::Path) -> (std::path::PathBuf, Vec<CrashImage>, Vec<usize>) {
    // The single-op workload (create, 4 KiB write, fsync), shared with the pruning
    // soundness test and the bench.
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../corpora/bench/single-op.toml");
    let workload =
        Workload::parse(&std::fs::read_to_string(&path).unwrap(), "single-op.toml").unwrap();
    let traced = rt()
        .block_on(pmcrash::trace::trace_workload(
            &factory(fs),
            &workload,
            dir,
            "w",
        ))
        .expect("trace the workload");
    let trace = &traced.decoded;
    let cfg = ModelConfig::new(Model::X86Adr, trace.header.line_size).unwrap();
    let mut points = CrashPoints::new(
        trace.records.iter().copied(),
        Replayer::new(cfg),
        PointConfig {
            policy: Policy::Fence { all: false },
            ops: Some(0..workload.ops.len() as u32),
            end_of_trace: true,
        },
    );
    // Fence points with at least two lines in flight: the first two such.
    let mut out = Vec::new();
    let mut persisted = Vec::new();
    let mut chosen = 0;
    while let Some(_p) = points.next() {
        let b = crash_models::delta::ImageBuilder::new(points.replayer());
        let n = b.in_flight().len();
        if n < 2 {
            continue;
        }
        let states: Vec<_> = CrashStates::new(
            b.in_flight(),
            &StateConfig {
                strategies: vec![Strategy::EachLine],
                ..StateConfig::default()
            },
        )
        .collect();
        let full = |k: &(u64, u32)| {
            b.in_flight()
                .iter()
                .any(|l| l.line_offset == k.0 && l.stores.len() as u32 == k.1)
        };
        let all = states
            .iter()
            .find(|s| s.kept.len() == n && s.kept.iter().all(full))
            .expect("each-line has the all-persisted state");
        persisted.push(out.len());
        out.push(b.build(all));
        out.extend(
            states
                .iter()
                .filter(|s| s.kept.len() == n - 1 && s.kept.iter().all(full))
                .take(2)
                .map(|s| b.build(s)),
        );
        chosen += 1;
        if chosen == 2 {
            break;
        }
    }
    assert_eq!(
        chosen, 2,
        "the workload has two fence points with lines in flight"
    );
    (traced.base_image, out, persisted)
}

/// One file system at a time: each run uses both cores with its two guests.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn checks_are_deterministic(fs: FsKind) {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let (base, imgs, persisted) = images(fs, dir.path());
    let n = imgs.len();
    let imgs: Vec<Arc<CrashImage>> = imgs.into_iter().map(Arc::new).collect();
    // Interleaved: image 0, 1, ..., n-1, 0, 1, ...: each guest sees them in turn, after
    // other images' checks.
    let queue: Vec<Arc<CrashImage>> = (0..ROUNDS * n).map(|i| imgs[i % n].clone()).collect();
    let t = std::time::Instant::now();
    let recs = rt().block_on(async {
        let mut checker = Checker::new(
            factory(fs),
            CheckerOptions {
                workers: 2,
                ..CheckerOptions::default()
            },
        )
        .unwrap();
        let out = checker
            .recover_all(&base, queue, KnownBlocks::default(), None)
            .await
            .expect("every image is checked");
        checker.shutdown().await;
        out.recoveries
    });
    eprintln!(
        "{fs}: {} checks of {n} images in {:.1} s",
        recs.len(),
        t.elapsed().as_secs_f64()
    );
    assert_eq!(recs.len(), ROUNDS * n);
    for i in 0..n {
        let mine: Vec<&Recovery> = recs.iter().filter(|r| r.index % n == i).collect();
        let first = mine[0];
        let reads = first
            .read_set
            .as_ref()
            .unwrap_or_else(|| panic!("{fs} image {i}: the check recorded no read set"));
        assert!(first.fsck.is_some(), "{fs} image {i}: fsck ran");
        // What the check stored decides what fsck of an equal image runs on
        // (docs/pruning.md, "fsck on the host"): the same bytes every time.
        let stored = |r: &Recovery| r.stores.as_ref().map(|s| s.ranges());
        assert!(
            stored(first).is_some(),
            "{fs} image {i}: the check kept its stores"
        );
        if persisted.contains(&i) {
            // Everything in flight persisted at a fence of a workload that syncs: the
            // file system mounts and its tree is dumped.
            assert_eq!(
                first.mount,
                pmcrash::checker::MountOutcome::Mounted { dax: true },
                "{fs} all-persisted image {i}"
            );
            assert!(first.entries.is_some(), "{fs} image {i}: dumped");
        }
        // The superblock is read by every check (ext4's at 1 KiB into the device,
        // XFS's at its start).
        let sb = FSDAX_DATA_OFFSET + if fs == FsKind::Ext4 { 1024 } else { 0 };
        assert!(
            reads.contains(sb),
            "{fs} image {i}: superblock not in the read set"
        );
        eprintln!(
            "{fs} image {i}: {} lines read ({} KiB) in {} ranges {:x?}; outcome {:?}",
            reads.lines(),
            reads.bytes() >> 10,
            reads.ranges().len(),
            &reads.ranges()[..reads.ranges().len().min(6)],
            outcome(first)
        );
        for r in &mine[1..] {
            assert_eq!(
                outcome(r),
                outcome(first),
                "{fs} image {i}: check {} differs from the first",
                r.index
            );
            assert_eq!(
                stored(r),
                stored(first),
                "{fs} image {i}: check {} stored other bytes than the first",
                r.index
            );
            let other = r.read_set.as_ref().unwrap_or_else(|| {
                panic!("{fs} image {i}: check {} recorded no read set", r.index)
            });
            if other != reads {
                let a: Vec<_> = reads.ranges().to_vec();
                let b: Vec<_> = other.ranges().to_vec();
                let only_a: Vec<_> = a.iter().filter(|x| !b.contains(x)).collect();
                let only_b: Vec<_> = b.iter().filter(|x| !a.contains(x)).collect();
                panic!(
                    "{fs} image {i}: check {} read other lines than the first: \
                     only the first {only_a:x?}, only this one {only_b:x?}",
                    r.index
                );
            }
        }
    }
}

#[test]
fn ext4_checks_read_the_same_lines_and_get_the_same_outcome() {
    checks_are_deterministic(FsKind::Ext4);
}

#[test]
fn xfs_checks_read_the_same_lines_and_get_the_same_outcome() {
    checks_are_deterministic(FsKind::Xfs);
}

/// The cost of read recording and of fsck in the guest, per image check, and the sizes
/// of read sets. Figures are meaningful in a release build on a quiet machine:
/// `cargo test --release -p pmcrash-e2e --test check_determinism -- --ignored --nocapture`
#[test]
#[ignore]
fn measure_read_recording_and_guest_fsck() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    const REPEAT: usize = 5;
    for fs in [FsKind::Ext4, FsKind::Xfs] {
        let dir = tempfile::tempdir().unwrap();
        let (base, imgs, _) = images(fs, dir.path());
        let n = imgs.len();
        let imgs: Vec<Arc<CrashImage>> = imgs.into_iter().map(Arc::new).collect();
        for (label, record_reads, fsck, fsck_in_guest) in [
            (
                "read recording + fsck in the guest (--fsck-in-guest)",
                true,
                true,
                true,
            ),
            (
                "read recording + fsck on the host (the default)",
                true,
                true,
                false,
            ),
            ("no read recording, fsck in the guest", false, true, true),
            (
                "no read recording, fsck on the host (--no-prune)",
                false,
                true,
                false,
            ),
            ("read recording, no fsck", true, false, false),
            ("no read recording, no fsck", false, false, false),
        ] {
            let queue: Vec<Arc<CrashImage>> =
                (0..REPEAT * n).map(|i| imgs[i % n].clone()).collect();
            let (secs, recs) = rt().block_on(async {
                let mut checker = Checker::new(
                    factory(fs),
                    CheckerOptions {
                        workers: 1,
                        record_reads,
                        fsck,
                        fsck_in_guest,
                        ..CheckerOptions::default()
                    },
                )
                .unwrap();
                checker.warm_up(&base).await.expect("start the guest");
                let t = std::time::Instant::now();
                let out = checker
                    .recover_all(&base, queue, KnownBlocks::default(), None)
                    .await
                    .expect("every image is checked");
                let secs = t.elapsed().as_secs_f64();
                checker.shutdown().await;
                (secs, out.recoveries)
            });
            let lines: Vec<u64> = recs
                .iter()
                .filter_map(|r| r.read_set.as_ref().map(|s| s.lines()))
                .collect();
            assert_eq!(lines.len(), if record_reads { recs.len() } else { 0 });
            let (lo, hi) = (
                lines.iter().min().copied().unwrap_or(0),
                lines.iter().max().copied().unwrap_or(0),
            );
            eprintln!(
                "FIGURE {fs}: {label}: {:.0} ms per image check ({} checks, one guest); \
                 lines read per check {lo}..{hi}",
                secs * 1000.0 / recs.len() as f64,
                recs.len()
            );
        }
        // fsck on the host, as it ran before it moved into the guest.
        let scratch = tempfile::tempdir().unwrap();
        let t = std::time::Instant::now();
        for _ in 0..REPEAT * n {
            let f = pmcrash::checker::fsck::fsck(fs, &base, scratch.path()).unwrap();
            assert!(!f.problems, "{f:?}");
        }
        eprintln!(
            "FIGURE {fs}: fsck on the host: {:.0} ms per image",
            t.elapsed().as_secs_f64() * 1000.0 / (REPEAT * n) as f64
        );
    }
}
