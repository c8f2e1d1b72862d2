//! The checker end to end on crash images made by hand: real guests recover them, and
//! the oracle judges what they left.

use crash_models::delta::CrashImage;
use crash_models::history::History;
use crash_models::ops::{FsKind, Workload};
use crash_models::promise::promises;
use crash_models::protocol::OpResult;
use pmcrash::checker::{Checker, CheckerOptions, KnownBlocks, Progress, Recovery};
use pmcrash::image::FSDAX_DATA_OFFSET;
use pmcrash::oracle::{judge, verdict_of, Verdict};
use pmcrash_e2e::{factory, rt};
use std::path::Path;
use std::sync::Arc;

/// Two files made durable: `a` (8 KiB, seed 1) by fsync, `b` (4 KiB, seed 2) by fsync.
const BASE: &str = r#"
[[ops]]
op = "open"
path = "a"
fd = "a"
create = true
[[ops]]
op = "write"
fd = "a"
data = { seed = 1, len = 8192 }
[[ops]]
op = "fsync"
fd = "a"
[[ops]]
op = "open"
path = "b"
fd = "b"
create = true
[[ops]]
op = "write"
fd = "b"
data = { seed = 2, len = 4096 }
[[ops]]
op = "fsync"
fd = "b"
"#;

struct Base {
    _dir: tempfile::TempDir,
    image: std::path::PathBuf,
    workload: Workload,
    results: Vec<OpResult>,
}

fn base(rt: &tokio::runtime::Runtime) -> Base {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("base.img");
    let workload = Workload::parse(BASE, "base.toml").unwrap();
    let report = rt
        .block_on(pmcrash::run::run_ops(
            &factory(FsKind::Ext4),
            &workload,
            "base.toml",
            &image,
        ))
        .expect("make the base image");
    let results = report.ops.iter().map(|o| o.result.clone()).collect();
    Base {
        _dir: dir,
        image,
        workload,
        results,
    }
}

/// The device block (4 KiB units from the fsdax data offset) debugfs reports for a
/// request like `imap /a` or `bmap /b 0`.
fn debugfs_block(image: &Path, request: &str) -> u64 {
    let out = std::process::Command::new("debugfs")
        .args(["-R", request])
        .arg(format!("{}?offset={FSDAX_DATA_OFFSET}", image.display()))
        .output()
        .expect("debugfs (e2fsprogs) must be installed");
    let text = String::from_utf8_lossy(&out.stdout);
    let word = match text.split("located at block ").nth(1) {
        Some(rest) => rest.split(|c: char| !c.is_ascii_digit()).next().unwrap(),
        None => text.trim(),
    };
    word.parse()
        .unwrap_or_else(|_| panic!("debugfs `{request}` said: {text}"))
}

fn judge_all(b: &Base, recs: &[Recovery]) -> Vec<(Verdict, Vec<String>)> {
    let history = History::new(&b.workload.ops, Some(&b.results));
    let promised = promises(
        &b.workload.ops,
        Some(&b.results),
        b.workload.ops.len(),
        None,
    );
    recs.iter()
        .map(|r| {
            let p = judge(&promised, &history, r);
            (verdict_of(&p), p.into_iter().map(|p| p.message).collect())
        })
        .collect()
}

fn check(
    rt: &tokio::runtime::Runtime,
    b: &Base,
    images: Vec<CrashImage>,
    progress: impl Fn(&Checker) -> Option<Progress>,
) -> (Vec<Recovery>, u32) {
    let history = History::new(&b.workload.ops, Some(&b.results));
    rt.block_on(async {
        let mut checker = Checker::new(
            factory(FsKind::Ext4),
            CheckerOptions {
                workers: 2,
                ..CheckerOptions::default()
            },
        )
        .unwrap();
        let p = progress(&checker);
        let out = checker
            .recover_all(
                &b.image,
                images.into_iter().map(Arc::new).collect(),
                KnownBlocks {
                    hashes: history.known_hashes(),
                },
                p,
            )
            .await
            .expect("every image is checked");
        let restarts = checker.restarts();
        checker.shutdown().await;
        (out.recoveries, restarts)
    })
}

#[test]
fn corrupt_images_are_fs_corruption_and_foreign_bytes_are_stale_data() {
    let _serial = one_at_a_time();
    let rt = rt();
    let b = base(&rt);
    let a_inode_block = debugfs_block(&b.image, "imap /a");
    let b_data_block = debugfs_block(&b.image, "bmap /b 0");
    let dev = |block: u64| FSDAX_DATA_OFFSET + block * 4096;
    let a = crash_models::ops::seeded_bytes(1, 8192);
    let images = vec![
        // The base itself: everything the ops promised is there.
        from_writes(&[]),
        // The primary superblock zeroed: the mount must fail.
        from_writes(&[(FSDAX_DATA_OFFSET + 1024, vec![0; 1024])]),
        // The inode table block holding a's inode (and the root's) zeroed.
        from_writes(&[(dev(a_inode_block), vec![0; 4096])]),
        // b's only block holds a's second block: stale data from another file.
        from_writes(&[(dev(b_data_block), a[4096..].to_vec())]),
    ];
    let (recs, _) = check(&rt, &b, images, |_| None);
    let v = judge_all(&b, &recs);
    assert_eq!(v[0].0, Verdict::Ok, "the untouched base: {:?}", v[0].1);
    assert_eq!(
        v[1].0,
        Verdict::FsCorruption,
        "zeroed superblock: {:?}",
        v[1].1
    );
    assert!(
        v[1].1.iter().any(|m| m.contains("mount failed")),
        "the zeroed superblock must fail the mount: {:?}",
        v[1].1
    );
    assert_eq!(
        v[2].0,
        Verdict::FsCorruption,
        "zeroed inode table: {:?}",
        v[2].1
    );
    assert_eq!(v[3].0, Verdict::StaleData, "foreign block: {:?}", v[3].1);
    assert!(
        v[3].1
            .iter()
            .any(|m| m.contains("b: block 0") && m.contains("a's data (block 1)")),
        "the finding names the file, the block and whose data it is: {:?}",
        v[3].1
    );
    // fsck agrees the base is clean and that the inode table is not; it ran on the
    // host, after the recorded check, which kept the bytes it stored (the mount and
    // unmount write the superblock) for images that take its recovery.
    let base_fsck = recs[0].fsck.as_ref().unwrap();
    assert!(!base_fsck.problems, "{base_fsck:?}");
    assert!(
        !base_fsck.command.contains("in the checker guest"),
        "{base_fsck:?}"
    );
    let stores = recs[0].stores.as_ref().expect("the check kept its stores");
    assert!(stores.bytes() >= 1024, "{} bytes stored", stores.bytes());
    // The base's check read some line of each range that the corrupt images changed:
    // the primary superblock, a's inode table block, b's data block (so none of these
    // images could take the base's outcome by read-set pruning). On ext4 copies are
    // followed by line, so of the inode table block only the inodes' lines looked at
    // count.
    let reads = recs[0]
        .read_set
        .as_ref()
        .expect("the check recorded its reads");
    for (what, at, len) in [
        ("superblock", FSDAX_DATA_OFFSET + 1024, 1024),
        ("a's inode table block", dev(a_inode_block), 4096),
        ("b's data block", dev(b_data_block), 4096),
    ] {
        assert!(
            reads.intersects(at..at + len),
            "the check of the base read nothing of the {what} at {at:#x}: {:x?}",
            reads.ranges()
        );
    }
    assert!(
        recs[2].fsck.as_ref().unwrap().problems
            || !recs[2].console.is_empty()
            || recs[2].dump_error.is_some()
            || !matches!(
                recs[2].mount,
                pmcrash::checker::MountOutcome::Mounted { .. }
            )
    );
}

/// The tests of this file run one at a time: the last one counts every QEMU of the
/// process, and must not see the other test's guests.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

#[test]
fn a_checker_guest_killed_mid_check_is_restarted_and_the_run_completes() {
    let _serial = one_at_a_time();
    let rt = rt();
    let b = base(&rt);
    let mut images: Vec<CrashImage> = (0..7).map(|_| from_writes(&[])).collect();
    images.push(from_writes(&[(FSDAX_DATA_OFFSET + 1024, vec![0; 1024])]));
    let killed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let k = killed.clone();
    let (recs, restarts) = check(&rt, &b, images, move |checker| {
        let live = checker.live_guests();
        let k = k.clone();
        Some(Arc::new(move |done: usize, _total: usize| {
            if done == 2 {
                // Both guests: one is mid-check, the other about to start one.
                for pid in live.lock().unwrap().values() {
                    // SAFETY: SIGKILL to a QEMU this test's checker started.
                    unsafe { libc::kill(*pid as i32, libc::SIGKILL) };
                    k.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
            }
        }) as Progress)
    });
    assert!(
        killed.load(std::sync::atomic::Ordering::SeqCst) >= 1,
        "no guest was killed"
    );
    assert!(restarts >= 1, "a killed guest must be replaced");
    assert_eq!(recs.len(), 8);
    let v = judge_all(&b, &recs);
    for (i, (verdict, why)) in v.iter().enumerate().take(7) {
        assert_eq!(*verdict, Verdict::Ok, "image {i}: {why:?}");
    }
    assert_eq!(v[7].0, Verdict::FsCorruption, "{:?}", v[7].1);
    assert_eq!(
        pmcrash::vm::live_guest_count(),
        0,
        "a checker guest outlived the checker"
    );
}

/// A hand-made image (64-byte lines, as the guests' model).
fn from_writes(writes: &[(u64, Vec<u8>)]) -> CrashImage {
    CrashImage::from_writes(writes, crash_models::model::ModelConfig::default())
}
