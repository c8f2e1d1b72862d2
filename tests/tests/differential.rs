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
//! CI runs 40 workloads per file system; the `#[ignore]`d tests run 300.

use crash_models::generate::{random_workload, GenConfig};
use crash_models::ops::{FsKind, Op};
use crash_models::protocol::{FsEntry, HostMsg, OpResult};
use pmcrash::guest::GuestFactory;
use pmcrash::image;
use pmcrash::vm::Vm;
use pmcrash_e2e::{factory, rt};
use std::fs::File;
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::path::PathBuf;

use crash_models::fsmodel;

/// One guest on one file system, reused across workloads.
struct Session {
    factory: GuestFactory,
    vm: Option<Vm>,
    _dir: tempfile::TempDir,
    pristine: PathBuf,
    work: File,
    used: bool,
}

impl Session {
    async fn start(fs: FsKind) -> Session {
        let factory = factory(fs);
        let dir = tempfile::tempdir().expect("temp dir");
        let pristine = dir.path().join("pristine.img");
        factory
            .make_image(&pristine)
            .await
            .expect("make a fresh image");
        let work_path = dir.path().join("work.img");
        image::blank(&work_path, factory.pm_size).expect("blank work image");
        let work = File::options()
            .read(true)
            .write(true)
            .open(&work_path)
            .expect("open work image");
        image::copy_sparse(&pristine, 0, &work, 0).expect("copy the fresh image");
        let vm = factory
            .start(&work_path, None)
            .await
            .expect("restore a guest");
        Session {
            factory,
            vm: Some(vm),
            _dir: dir,
            pristine,
            work,
            used: false,
        }
    }

    /// Put the work image back to the fresh file system (the guest has it unmounted).
    fn reset(&mut self) {
        let len = self.factory.pm_size as i64;
        // SAFETY: plain fallocate on a descriptor we own; punching a hole keeps the
        // size, so QEMU's mapping of the file stays valid and reads zeros there.
        let rc = unsafe {
            libc::fallocate(
                self.work.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                0,
                len,
            )
        };
        assert_eq!(
            rc,
            0,
            "punch the work image: {}",
            std::io::Error::last_os_error()
        );
        image::copy_sparse(&self.pristine, 0, &self.work, 0).expect("copy the fresh image");
    }

    /// Mount, run `ops`, dump, unmount: each op's result and the state after them.
    async fn run(&mut self, ops: &[Op]) -> (Vec<OpResult>, Vec<FsEntry>) {
        if self.used {
            self.reset();
        }
        self.used = true;
        let t = self.factory.timeouts.request;
        let vm = self.vm.as_mut().expect("a live guest");
        vm.request(&HostMsg::Refresh, t).await.expect("refresh");
        self.factory.mount(vm).await.expect("mount -o dax");
        let results = pmcrash::run::run_mounted(vm, ops, false, t)
            .await
            .expect("run the ops");
        let entries = pmcrash::run::dump(vm, t).await.expect("dump");
        vm.request(&HostMsg::Unmount, t).await.expect("unmount");
        (results, entries)
    }

    async fn end(mut self) {
        if let Some(vm) = self.vm.take() {
            vm.shutdown(self.factory.timeouts.shutdown)
                .await
                .expect("power off");
        }
    }
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
        let mut s = Session::start(fs).await;
        let mut mismatches = Vec::new();
        let (mut ran, mut failed_ops, mut files) = (0, 0, 0);
        for seed in seeds.clone() {
            let w = random_workload(seed, &cfg);
            let (results, dumped) = s.run(&w.ops).await;
            let model = std::panic::catch_unwind(|| {
                fsmodel::FsModel::replay(&w.ops, Some(&results)).entries()
            });
            let diff = match model {
                Ok(predicted) => fsmodel::compare(&predicted, &dumped),
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
