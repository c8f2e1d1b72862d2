//! The file-system model against the real kernel: seeded random workloads
//! (`crash_models::generate`) run in a guest without crash checking, and the state the
//! guest dumps afterwards (names, kinds, sizes, contents, xattrs, symlink targets, link
//! counts) must be the state the model predicts from the same ops and their results.
//! Every mismatch is a model bug or a kernel bug; the failure message names the seed,
//! the ops and the results, and `PMCRASH_DIFF_SEEDS=N` (or `A..B`) reruns just those.
//!
//! One guest per file system serves every workload: between two workloads, with the
//! file system unmounted, the host puts the PM image back to the freshly made one and
//! the agent drops its caches (as the checker does between crash images), so every
//! workload starts on an empty file system. A leftover would show as a mismatch.
//!
//! Every successful `read` of a workload is also checked against the model's contents
//! at that point, so states in the middle of a workload are compared too.
//!
//! CI runs 40 workloads per file system; the `#[ignore]`d tests run 300.

use crash_models::fsmodel;
use crash_models::generate::{random_workload, GenConfig};
use crash_models::ops::{FsKind, Op};
use crash_models::protocol::{OpDetail, OpResult};
use pmcrash_e2e::{rt, ReusedGuest};
use std::ops::Range;

/// Every successful `read` against the model's contents just before it: the kernel
/// reports the bytes' count and blake3, the model replays the ops before the read.
/// This checks states in the middle of a workload, which the final dump cannot see.
fn reads_differ(ops: &[Op], results: &[OpResult]) -> Vec<String> {
    let mut out = Vec::new();
    for (i, (op, r)) in ops.iter().zip(results).enumerate() {
        let (Op::Read { fd, offset, len }, OpDetail::Read { len: got, blake3 }) = (op, &r.detail)
        else {
            continue;
        };
        let model = fsmodel::FsModel::replay(&ops[..i], Some(&results[..i]));
        let Some(content) = model.fd_inode(fd).and_then(|ino| model.file(ino)) else {
            out.push(format!(
                "op {i}: read {got} bytes from `{fd}`, which the model has no file for"
            ));
            continue;
        };
        let want = content.read(*offset, offset.saturating_add(*len));
        let want_hash = ::blake3::hash(&want).to_hex().to_string();
        if (want.len() as u64, &want_hash) != (*got, blake3) {
            out.push(format!(
                "op {i}: read {got} bytes (blake3 {}..), predicted {} bytes (blake3 {}..)",
                &blake3[..12],
                want.len(),
                &want_hash[..12]
            ));
        }
    }
    out
}

/// The seeds to run: `PMCRASH_DIFF_SEEDS` (`N` or `A..B`) or `default`.
fn seeds(default: Range<u64>) -> Range<u64> {
    let Ok(s) = std::env::var("PMCRASH_DIFF_SEEDS") else {
        return default;
    };
    let parse = |x: &str| {
        x.trim()
            .parse::<u64>()
            .expect("PMCRASH_DIFF_SEEDS: N or A..B")
    };
    match s.split_once("..") {
        Some((a, b)) => parse(a)..parse(b),
        None => parse(&s)..parse(&s) + 1,
    }
}

fn describe(seed: u64, ops: &[Op], results: &[OpResult], diff: &[String]) -> String {
    let mut out = format!("seed {seed}:\n");
    for d in diff {
        out += &format!("  - {d}\n");
    }
    for (op, r) in ops.iter().zip(results) {
        let outcome = match r.errno {
            Some(e) => format!("errno {e}"),
            None => format!("ret {}", r.ret),
        };
        out += &format!(
            "    {:>2} {} -> {outcome}\n",
            r.index,
            serde_json::to_string(op).unwrap_or_default()
        );
    }
    out
}

fn differential(fs: FsKind, default_seeds: Range<u64>) {
    let cfg = GenConfig::default();
    let seeds = seeds(default_seeds);
    let rt = rt();
    let (mismatches, ran, failed_ops, files) = rt.block_on(async {
        let mut s = ReusedGuest::start(fs).await;
        let mut mismatches = Vec::new();
        let (mut ran, mut failed_ops, mut files) = (0, 0, 0);
        for seed in seeds.clone() {
            let w = random_workload(seed, &cfg);
            let (results, dumped) = s.run(&w.ops).await;
            let model = std::panic::catch_unwind(|| {
                fsmodel::FsModel::replay(&w.ops, Some(&results)).entries()
            });
            let diff = match model {
                Ok(predicted) => {
                    let mut d = fsmodel::compare(&predicted, &dumped);
                    d.extend(reads_differ(&w.ops, &results));
                    d
                }
                Err(e) => vec![format!(
                    "the model panicked: {}",
                    e.downcast_ref::<String>()
                        .map(String::as_str)
                        .or_else(|| e.downcast_ref::<&str>().copied())
                        .unwrap_or("(no message)")
                )],
            };
            if !diff.is_empty() {
                mismatches.push(describe(seed, &w.ops, &results, &diff));
            }
            ran += 1;
            failed_ops += results.iter().filter(|r| !r.ok()).count();
            files += dumped.iter().filter(|e| !e.blocks.is_empty()).count();
        }
        s.end().await;
        (mismatches, ran, failed_ops, files)
    });
    eprintln!(
        "{fs}: {ran} workloads (seeds {seeds:?}), {} mismatched; {failed_ops} ops failed, {files} files with data",
        mismatches.len()
    );
    assert_eq!(ran as u64, seeds.end - seeds.start);
    // The workloads must exercise something: files with data, and some failing ops.
    if ran >= 20 {
        assert!(
            files >= ran / 4,
            "only {files} files with data in {ran} workloads"
        );
        assert!(failed_ops > 0, "no op failed in {ran} workloads");
    }
    assert!(
        mismatches.is_empty(),
        "{fs}: the model and the kernel disagree on {} of {ran} workloads:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
}

#[test]
fn ext4_model_matches_the_kernel() {
    differential(FsKind::Ext4, 0..40);
}

#[test]
fn xfs_model_matches_the_kernel() {
    differential(FsKind::Xfs, 0..40);
}

#[test]
#[ignore = "300 workloads: minutes under TCG"]
fn ext4_model_matches_the_kernel_300() {
    differential(FsKind::Ext4, 0..300);
}

#[test]
#[ignore = "300 workloads: minutes under TCG"]
fn xfs_model_matches_the_kernel_300() {
    differential(FsKind::Xfs, 0..300);
}
