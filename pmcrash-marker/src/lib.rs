//! Markers from programs under pmcrash: a program marks its own operations and commit
//! points, and pmcrash's crash points (`--points marker:program`) and findings speak
//! its names ("after `tx_commit` #3").
//!
//! A marker is a `cpuid` with a reserved leaf ([`LEAF`]) in `eax`, [`PROGRAM`] in
//! `ecx`, the [`name_hash`] of the marker's name in `edx` and a value of the program's
//! choosing in `rsi`. pmcrash's tracer reads the registers when the instruction runs;
//! outside pmcrash the CPU answers an unknown leaf and nothing else happens, so marked
//! programs run anywhere (a `cpuid` costs a VM exit under a hypervisor: mark commit
//! points, not every store). The names go into the `exec` op's `markers` list so the
//! host can print them. `include/pmcrash_marker.h` is the same for C.
//!
//! ```no_run
//! pmcrash_marker::mark!("tx_commit", 3);
//! ```
//!
//! The crate also has the x86 flush and fence instructions a PM program needs
//! ([`clwb`], [`clflushopt`], [`clflush`], [`sfence`], [`persist`]).
#![no_std]
#![warn(missing_docs)]

/// The `cpuid` leaf of pmcrash markers (outside Intel's and the hypervisor ranges).
pub const LEAF: u32 = 0x5043_4d00;
/// The marker kind (`ecx`) of a program's own marker. The agent's kinds are 1-4.
pub const PROGRAM: u32 = 5;

/// The 32-bit FNV-1a hash of a marker name: what goes in `edx`.
pub const fn name_hash(name: &str) -> u32 {
    let b = name.as_bytes();
    let mut h: u32 = 0x811c_9dc5;
    let mut i = 0;
    while i < b.len() {
        h ^= b[i] as u32;
        h = h.wrapping_mul(0x0100_0193);
        i += 1;
    }
    h
}

/// Execute the marker of a name hash with `value` (see [`mark!`], which hashes the
/// name at compile time).
#[inline(never)]
pub fn mark_hash(hash: u32, value: u64) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: cpuid reads and writes registers only; rbx is saved because LLVM
    // reserves it.
    unsafe {
        core::arch::asm!(
            "mov {saved}, rbx",
            "cpuid",
            "mov rbx, {saved}",
            saved = out(reg) _,
            inout("eax") LEAF => _,
            inout("ecx") PROGRAM => _,
            inout("edx") hash => _,
            in("rsi") value,
            in("rdi") 0u64,
            options(nostack, preserves_flags),
        );
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (hash, value);
}

/// Execute the marker named `name` with `value`.
pub fn mark(name: &str, value: u64) {
    mark_hash(name_hash(name), value);
}

/// `mark!("tx_commit")` or `mark!("tx_commit", n)`: a marker whose name is hashed at
/// compile time.
#[macro_export]
macro_rules! mark {
    ($name:expr) => {
        $crate::mark!($name, 0)
    };
    ($name:expr, $value:expr) => {{
        const H: u32 = $crate::name_hash($name);
        $crate::mark_hash(H, ($value) as u64)
    }};
}

/// The cache-line size the helpers assume.
pub const LINE: usize = 64;

/// `clwb` of the line holding `p` (write back, may stay cached).
///
/// # Safety
/// `p` must point into mapped memory.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub unsafe fn clwb(p: *const u8) {
    // SAFETY: the caller guarantees `p` is mapped; clwb does not write memory.
    unsafe { core::arch::asm!("clwb [{0}]", in(reg) p, options(nostack, preserves_flags)) }
}

/// `clflushopt` of the line holding `p`.
///
/// # Safety
/// `p` must point into mapped memory.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub unsafe fn clflushopt(p: *const u8) {
    // SAFETY: as for `clwb`.
    unsafe { core::arch::asm!("clflushopt [{0}]", in(reg) p, options(nostack, preserves_flags)) }
}

/// `clflush` of the line holding `p` (ordered with older stores and other `clflush`es).
///
/// # Safety
/// `p` must point into mapped memory.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub unsafe fn clflush(p: *const u8) {
    // SAFETY: as for `clwb`.
    unsafe { core::arch::asm!("clflush [{0}]", in(reg) p, options(nostack, preserves_flags)) }
}

/// `sfence`: earlier flushes and non-temporal stores complete before later stores.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub fn sfence() {
    // SAFETY: a fence has no operands.
    unsafe { core::arch::asm!("sfence", options(nostack, preserves_flags)) }
}

/// `clwb` every line of `[p, p + len)`, without a fence.
///
/// # Safety
/// The range must be mapped.
#[cfg(target_arch = "x86_64")]
pub unsafe fn flush_range(p: *const u8, len: usize) {
    let start = p as usize & !(LINE - 1);
    let end = p as usize + len;
    let mut a = start;
    while a < end {
        // SAFETY: inside the caller's mapped range (line-aligned down).
        unsafe { clwb(a as *const u8) };
        a += LINE;
    }
}

/// [`flush_range`] then [`sfence`]: the range is durable when this returns.
///
/// # Safety
/// The range must be mapped.
#[cfg(target_arch = "x86_64")]
pub unsafe fn persist(p: *const u8, len: usize) {
    // SAFETY: the caller's promise.
    unsafe { flush_range(p, len) };
    sfence();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_of_known_strings() {
        // Published FNV-1a 32-bit test vectors.
        assert_eq!(name_hash(""), 0x811c_9dc5);
        assert_eq!(name_hash("a"), 0xe40c_292c);
        assert_eq!(name_hash("foobar"), 0xbf9c_f968);
    }

    #[test]
    fn a_marker_outside_pmcrash_is_harmless() {
        mark!("tx_commit", 3);
        mark("tx_begin", 0);
    }
}
