//! `Checker::recover_stream` never leaves its caller waiting: when a worker fails on
//! an image (here, an image that cannot be written into the worker's PM file), the
//! recovery the caller waits for will never come, so every other worker must end too
//! and the `done` channel must close, even though the caller still holds the job
//! queue open (as the pipeline's drive loop does while a job is in flight).
//!
//! Before the fix, the other worker waited for a next job forever and the caller for
//! the lost recovery: the run stalled with the harness idle on a futex (issue 15's
//! `tests/memory.rs` stall). This test then never returns.

use crash_models::delta::CrashImage;
use crash_models::ops::FsKind;
use pmcrash::checker::{Checker, CheckerError, CheckerOptions, ImageJob, KnownBlocks};
use pmcrash_e2e::{factory, rt};
use std::sync::Arc;
use tokio::sync::mpsc;

#[test]
fn a_worker_failing_on_an_image_ends_the_stream_with_its_error() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.img");
    let f = factory(FsKind::Ext4);
    rt.block_on(f.make_image(&base))
        .expect("a fresh base image");
    // A write far beyond any file size the host allows: pwrite fails (EFBIG/EINVAL)
    // before a guest is even started, so the worker returns an error.
    let bad = CrashImage::from_writes(
        &[(1 << 62, vec![1; 64])],
        crash_models::model::ModelConfig::default(),
    );
    let (res, (first, _jobs)) = rt.block_on(async {
        let mut checker = Checker::new(
            f.clone(),
            CheckerOptions {
                workers: 2,
                ..CheckerOptions::default()
            },
        )
        .unwrap();
        let (jobs, rx) = mpsc::channel(1);
        let (done_tx, mut done_rx) = mpsc::unbounded_channel();
        jobs.send((0, ImageJob::Built(Arc::new(bad))))
            .await
            .expect("the queue takes a job");
        // The caller keeps the queue open while it waits, like the drive loop.
        let caller = async move { (done_rx.recv().await, jobs) };
        let out = tokio::join!(
            checker.recover_stream(&base, KnownBlocks::default(), rx, done_tx),
            caller
        );
        checker.shutdown().await;
        out
    });
    assert!(
        first.is_none(),
        "the failed image has no recovery, yet one came: {first:?}"
    );
    match res {
        Err(CheckerError::Io { what, .. }) => {
            assert!(what.contains("crash image"), "{what}");
        }
        other => panic!("expected the worker's I/O error, got {other:?}"),
    }
    assert_eq!(
        pmcrash::vm::live_guest_count(),
        0,
        "a checker guest outlived the checker"
    );
}
