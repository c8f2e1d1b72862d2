//! `pmcrash run`: a workload's ops in a real guest, each op's result, and the PM image
//! it leaves behind.

use crate::guest::{GuestError, GuestFactory};
use crate::vm::Vm;
use crash_models::ops::{FsKind, Op, Workload};
use crash_models::protocol::{AgentMsg, FsEntry, HostMsg, OpResult};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Wall-clock time per stage, in milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StageTimings {
    /// Making the PM image (template copy + mkfs).
    pub image_ms: u64,
    /// Restoring the guest until it answers (includes making the saved state the first
    /// time).
    pub guest_ready_ms: u64,
    /// Mounting with `-o dax`.
    pub mount_ms: u64,
    /// Running the ops.
    pub ops_ms: u64,
    /// Unmount and power-off.
    pub teardown_ms: u64,
    /// Everything.
    pub total_ms: u64,
}

/// One op and what it returned.
#[derive(Debug, Clone, Serialize)]
pub struct OpReport {
    /// The op as written.
    pub op: Op,
    /// What it returned.
    pub result: OpResult,
}

/// The outcome of running one workload.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    /// The workload's file name.
    pub workload: String,
    /// Its description.
    pub description: String,
    /// The file system.
    pub fs: FsKind,
    /// PM size in bytes.
    pub pm_size: u64,
    /// The guest kernel.
    pub kernel: String,
    /// Every op, in order.
    pub ops: Vec<OpReport>,
    /// Where the PM image was left.
    pub image: PathBuf,
    /// Stage timings.
    pub timings: StageTimings,
}

impl RunReport {
    /// Ops that failed.
    pub fn failed_ops(&self) -> impl Iterator<Item = &OpReport> {
        self.ops.iter().filter(|o| !o.result.ok())
    }
}

/// Run `workload` on a fresh image at `image`: restore a guest, mount, run, unmount,
/// power off. The image is left at `image` for inspection.
pub async fn run_ops(
    factory: &GuestFactory,
    workload: &Workload,
    name: &str,
    image: &Path,
) -> Result<RunReport, GuestError> {
    let t0 = Instant::now();
    let mut timings = StageTimings::default();
    factory.make_image(image).await?;
    timings.image_ms = t0.elapsed().as_millis() as u64;
    let t = Instant::now();
    let vm = factory.start(image, None).await?;
    timings.guest_ready_ms = t.elapsed().as_millis() as u64;
    let results = mount_run_teardown(factory, vm, &workload.ops, false, &mut timings).await?;
    let ops = results
        .into_iter()
        .zip(&workload.ops)
        .map(|(result, op)| OpReport {
            op: op.clone(),
            result,
        })
        .collect();
    timings.total_ms = t0.elapsed().as_millis() as u64;
    Ok(RunReport {
        workload: name.to_owned(),
        description: workload.description.clone(),
        fs: factory.fs,
        pm_size: factory.pm_size,
        kernel: factory.assets.kernel_release.clone(),
        ops,
        image: image.to_path_buf(),
        timings,
    })
}

/// Mount, run `ops` (with tracer markers when asked), unmount and power off a started
/// guest, filling in the mount, ops and teardown timings. Returns every op's result, in
/// op order; an agent that reports fewer ops, or others, is an error.
pub async fn mount_run_teardown(
    factory: &GuestFactory,
    mut vm: Vm,
    ops: &[Op],
    markers: bool,
    timings: &mut StageTimings,
) -> Result<Vec<OpResult>, GuestError> {
    let t = Instant::now();
    factory.mount(&mut vm).await?;
    timings.mount_ms = t.elapsed().as_millis() as u64;
    let t = Instant::now();
    let results = run_mounted(&mut vm, ops, markers, factory.timeouts.request).await?;
    timings.ops_ms = t.elapsed().as_millis() as u64;
    let t = Instant::now();
    vm.request(&HostMsg::Unmount, factory.timeouts.request)
        .await?;
    vm.shutdown(factory.timeouts.shutdown).await?;
    timings.teardown_ms = t.elapsed().as_millis() as u64;
    Ok(results)
}

/// Run `ops` on a guest's mounted file system (with tracer markers when asked) and
/// return every op's result, in op order; an agent that reports fewer ops, or others,
/// is an error.
pub async fn run_mounted(
    vm: &mut Vm,
    ops: &[Op],
    markers: bool,
    timeout: std::time::Duration,
) -> Result<Vec<OpResult>, GuestError> {
    let (progress, last) = vm
        .request(
            &HostMsg::Run {
                ops: ops.to_vec(),
                markers,
            },
            timeout,
        )
        .await?;
    if last != AgentMsg::RunDone {
        return Err(GuestError::Guest(format!(
            "expected run-done, got {last:?}"
        )));
    }
    let results: Vec<OpResult> = progress
        .into_iter()
        .filter_map(|m| match m {
            AgentMsg::OpDone(r) => Some(r),
            _ => None,
        })
        .collect();
    if results.len() != ops.len() || results.iter().enumerate().any(|(i, r)| r.index != i) {
        return Err(GuestError::Guest(format!(
            "the agent reported {} results for {} ops, or out of order",
            results.len(),
            ops.len()
        )));
    }
    Ok(results)
}

/// The state of a guest's mounted file system, as the agent dumps it.
pub async fn dump(vm: &mut Vm, timeout: std::time::Duration) -> Result<Vec<FsEntry>, GuestError> {
    match vm.request(&HostMsg::Dump, timeout).await?.1 {
        AgentMsg::State { entries } => Ok(entries),
        other => Err(GuestError::Guest(format!(
            "expected a state, got {other:?}"
        ))),
    }
}

/// A one-line human description of an op's result.
pub fn describe(report: &OpReport) -> String {
    let r = &report.result;
    let outcome = match r.errno {
        Some(e) => format!(
            "FAILED errno {e} ({})",
            std::io::Error::from_raw_os_error(e)
        ),
        None => format!("ret {}", r.ret),
    };
    let detail = match &r.detail {
        crash_models::protocol::OpDetail::None => String::new(),
        d => format!("  {}", serde_json::to_string(d).unwrap_or_default()),
    };
    format!(
        "{:>4}  {:<13} {outcome}{detail}  ({} us)",
        r.index,
        report.op.name(),
        r.micros
    )
}
