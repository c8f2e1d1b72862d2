//! The trace: what the tracer saw, in execution order.
//!
//! This module defines the in-memory [`Record`] every other part of pmcrash consumes.
//! The on-disk format (versioned header, fixed-size little-endian records in
//! checksummed chunks, footer with counts) is encoded and decoded here too, so the host
//! reads traces without QEMU.

use serde::{Deserialize, Serialize};

/// Who executed an instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Privilege {
    /// Ring 0: the kernel (file-system code, the pmem driver).
    Kernel,
    /// Ring 3: the agent's own stores and flushes.
    User,
}

/// The flush instructions, as the trace records them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FlushKind {
    /// `clwb`.
    Clwb,
    /// `clflushopt`.
    Clflushopt,
    /// `clflush` (ordered with stores and other clflushes).
    Clflush,
}

/// What made an ordering point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FenceKind {
    /// `sfence`.
    Sfence,
    /// `mfence`.
    Mfence,
    /// A `lock`-prefixed read-modify-write or `xchg` with memory.
    Locked,
    /// A serialising instruction (`cpuid`, `wbinvd`, `iret`, a write to a control
    /// register, ...).
    Serializing,
}

/// Agent markers (see [`crate::protocol::marker`]).
pub use crate::protocol::marker::Kind as MarkerKind;

/// One event of a trace.
///
/// Offsets are byte offsets within the PM device (= offsets in its backing file),
/// not guest-physical addresses; the header carries the base to convert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Record {
    /// A store of 1 to 8 bytes (wider stores are split into 8-byte records).
    Store {
        /// Offset in the PM device.
        offset: u64,
        /// Bytes stored: 1, 2, 4 or 8 (or any 1..=8 for split unaligned tails).
        size: u8,
        /// The stored value, little-endian in the low `size` bytes.
        value: u64,
        /// A non-temporal store (movnti, movntdq, ...).
        non_temporal: bool,
        /// Kernel or user.
        privilege: Privilege,
        /// vCPU index.
        vcpu: u16,
        /// Guest program counter.
        pc: u64,
    },
    /// A cache-line flush that hit PM.
    Flush {
        /// Offset in the PM device of the flushed address (any byte of the line).
        offset: u64,
        /// Which instruction.
        flush: FlushKind,
        /// Kernel or user.
        privilege: Privilege,
        /// vCPU index.
        vcpu: u16,
        /// Guest program counter.
        pc: u64,
    },
    /// An ordering point.
    Fence {
        /// What kind.
        fence: FenceKind,
        /// Kernel or user.
        privilege: Privilege,
        /// vCPU index.
        vcpu: u16,
        /// Guest program counter.
        pc: u64,
    },
    /// A marker from the agent.
    Marker {
        /// What it marks.
        marker: MarkerKind,
        /// The op index (or the op count for `RunBegin`).
        op: u32,
        /// First op-specific value (`rsi`).
        a: u64,
        /// Second op-specific value (`rdi`).
        b: u64,
        /// vCPU index.
        vcpu: u16,
    },
}
