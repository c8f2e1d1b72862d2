//! pmcrash-tracer: a QEMU TCG plugin (plugin API v4) that records every
//! persistent-memory store, cache-line flush, fence and agent marker of an unmodified
//! x86-64 guest into a pmcrash trace (see `crash_models::trace`).
//!
//! Load it with
//! `-plugin libpmcrash_tracer.so,pm_base=0x100000000,pm_size=64M,out=trace.pmt`
//! (optional: `kernel=`, `qemu=`, `workload=<64 hex digits>`, `direct_map=0x...`,
//! `verbose=on`; ground-truth snapshots of the PM file: `pm_file=PATH,snap=OUT`, with
//! `snap_fences=off` and `snap_records=N:M:...`, see [`snap`]). Pass `-accel tcg,thread=single` with `-smp N` so the trace has one
//! total order.
//!
//! Read-recording mode, for checker guests: `reads=PATH` instead of `out=` records no
//! stores, only which PM lines the guest loads between the agent's check markers
//! (`crash_models::protocol::marker::check`; loads of kernel code only: user code in a
//! checker guest maps no PM), and writes each check's read set to PATH
//! (a `crash_models::readset::ReadSetFile`, replaced at every check's end) before the
//! end marker completes. `copies=off|blocks|lines` follows string moves of PM into
//! RAM as copies, and with it `copyback=0xSTART-0xEND` names the kernel's write-back
//! copy routine, whose copies put back where they came from are neither read nor
//! stored. See [`reads`].
#![warn(missing_docs)]

pub mod reads;
pub mod shadow;
pub mod snap;
pub mod x86;

// The QEMU glue references symbols only QEMU provides, so unit-test binaries leave it
// out.
#[cfg(not(test))]
mod plugin;
