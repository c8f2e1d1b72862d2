//! The PM bytes one recovery read: the key of read-set pruning.
//!
//! A checker guest is a deterministic function of the bytes it reads from PM: two crash
//! images that agree on every byte one check read get the same recovery (the same
//! mount outcome, dump, fsck result and console), so the second needs no guest run. The
//! tracer records the loads of a check (mount with journal or log recovery, dump,
//! unmount, fsck) at line granularity; this type holds them. Line granularity is
//! conservative: images equal on every line read are equal on every byte read.

use std::ops::Range;

/// The lines one check read, as sorted, disjoint, non-adjacent half-open ranges of
/// byte offsets into the PM file, each starting and ending on a line boundary.
#[derive(Debug, Clone, PartialEq, Eq, Default, Hash)]
pub struct ReadSet {
    line_size: u32,
    ranges: Vec<Range<u64>>,
}

impl ReadSet {
    /// An empty read set of `line_size`-byte lines (a power of two).
    pub fn new(line_size: u32) -> ReadSet {
        ReadSet {
            line_size,
            ranges: Vec::new(),
        }
    }

    /// The read set of these line numbers (`offset / line_size`), in any order, with
    /// repeats.
    pub fn from_lines(line_size: u32, lines: impl IntoIterator<Item = u64>) -> ReadSet {
        let mut v: Vec<u64> = lines.into_iter().collect();
        v.sort_unstable();
        v.dedup();
        let ls = u64::from(line_size);
        let mut ranges: Vec<Range<u64>> = Vec::new();
        for l in v {
            let start = l.saturating_mul(ls);
            let end = start.saturating_add(ls);
            match ranges.last_mut() {
                Some(r) if r.end == start => r.end = end,
                _ => ranges.push(start..end),
            }
        }
        ReadSet { line_size, ranges }
    }

    /// The line size.
    pub fn line_size(&self) -> u32 {
        self.line_size
    }

    /// The ranges, sorted and disjoint.
    pub fn ranges(&self) -> &[Range<u64>] {
        &self.ranges
    }

    /// True when the byte at `offset` lies on a line that was read.
    pub fn contains(&self, offset: u64) -> bool {
        let i = self.ranges.partition_point(|r| r.end <= offset);
        self.ranges.get(i).is_some_and(|r| r.start <= offset)
    }

    /// True when some byte of `range` lies on a line that was read.
    pub fn intersects(&self, range: Range<u64>) -> bool {
        let i = self.ranges.partition_point(|r| r.end <= range.start);
        self.ranges
            .get(i)
            .is_some_and(|r| r.start < range.end && range.start < range.end)
    }

    /// Bytes covered (a whole number of lines).
    pub fn bytes(&self) -> u64 {
        self.ranges.iter().map(|r| r.end - r.start).sum()
    }

    /// True when nothing was read.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_coalesce_into_ranges() {
        let r = ReadSet::from_lines(64, [3, 1, 2, 2, 10]);
        assert_eq!(r.ranges(), &[64..256, 640..704]);
        assert!(r.contains(64) && r.contains(255) && !r.contains(256) && !r.contains(63));
        assert!(r.intersects(250..300) && !r.intersects(256..640) && r.intersects(600..641));
        assert_eq!(r.bytes(), 256);
    }
}
