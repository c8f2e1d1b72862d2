//! The harness's own memory: its peak resident size (for the report) and the budget
//! the streaming pipeline keeps its crash points within (`--memory-mib`).

/// The default budget, in MiB.
pub const DEFAULT_BUDGET_MIB: u64 = 1024;

/// Peak resident memory of this process so far (`VmHWM` in `/proc/self/status`), in
/// bytes; 0 where the kernel does not say.
pub fn peak_rss_bytes() -> u64 {
    status_kib("VmHWM").map_or(0, |k| k * 1024)
}

/// Resident memory of this process now (`VmRSS`), in bytes; 0 where unknown.
pub fn rss_bytes() -> u64 {
    status_kib("VmRSS").map_or(0, |k| k * 1024)
}

fn status_kib(field: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_peak_is_at_least_what_is_resident() {
        let v = vec![1u8; 8 << 20];
        let now = super::rss_bytes();
        assert!(now >= 8 << 20, "{now}");
        assert!(super::peak_rss_bytes() >= now);
        drop(v);
    }
}
