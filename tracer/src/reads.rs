//! Read-recording mode (`reads=PATH`): the PM lines a checker guest loads between the
//! agent's check markers.
//!
//! The QEMU glue (`plugin.rs`) calls [`ReadRecorder::record`] for every load whose
//! physical address falls in the PM range while a check is open, and
//! [`ReadRecorder::end`] at the check's end marker, whose result it writes to the file
//! before the marker instruction completes. This part is pure: a bitmap of lines and
//! the list of its words in use, so opening a check clears only what the last one set.
//!
//! Stores matter too ([`ReadRecorder::store`]): a load of bytes that the check itself
//! stored before is not a read of the image. Its value was written by the same
//! execution (the one that, by the argument of `docs/pruning.md`, every image equal on
//! the read set follows), so it leaves the read set. That is what keeps fsck's reads of
//! blocks the journal replay rewrote, and of the superblock the mount wrote, from
//! making images differ on lines no step of the check took from the image. Bytes are
//! tracked per line (a mask of the bytes stored), so a line only partly stored before
//! its load stays in the set.

use crash_models::readset::{ReadSet, ReadSetFile};
use std::collections::HashMap;

/// The lines loaded during the current check.
#[derive(Debug)]
pub struct ReadRecorder {
    line_shift: u32,
    pm_size: u64,
    bits: Vec<u64>,
    /// Indices of the words of `bits` that are not zero.
    touched: Vec<usize>,
    /// Per line, the bytes the open check stored (lines of at most 64 bytes; with
    /// longer lines stores are not tracked, which only keeps more lines in the set).
    written: HashMap<u64, u64>,
    /// The open check's id.
    open: Option<u64>,
    unresolved: u64,
}

impl ReadRecorder {
    /// A recorder for a PM range of `pm_size` bytes in lines of `line_size` bytes (a
    /// power of two).
    pub fn new(pm_size: u64, line_size: u32) -> ReadRecorder {
        let line_shift = line_size.max(1).trailing_zeros();
        let lines = pm_size.div_ceil(1 << line_shift);
        ReadRecorder {
            line_shift,
            pm_size,
            bits: vec![0; lines.div_ceil(64) as usize],
            touched: Vec::new(),
            written: HashMap::new(),
            open: None,
            unresolved: 0,
        }
    }

    /// A check opens: forget the last one.
    pub fn begin(&mut self, check: u64) {
        for &w in &self.touched {
            self.bits[w] = 0;
        }
        self.touched.clear();
        self.written.clear();
        self.unresolved = 0;
        self.open = Some(check);
    }

    /// True while a check is open.
    pub fn is_open(&self) -> bool {
        self.open.is_some()
    }

    /// The bytes of line `line` that the range `offset..=last` covers, as a mask.
    fn mask(&self, line: u64, offset: u64, last: u64) -> u64 {
        let start = line << self.line_shift;
        let a = offset.max(start) - start;
        let b = last.min(start + (1 << self.line_shift) - 1) - start;
        let n = b - a + 1;
        let ones = if n >= 64 { u64::MAX } else { (1u64 << n) - 1 };
        ones << a
    }

    /// A load of `size` bytes at byte `offset` of PM (bytes past the PM range are
    /// ignored). Outside a check, nothing happens. A load of bytes all stored by the
    /// check before is not recorded (see the module docs).
    pub fn record(&mut self, offset: u64, size: u64) {
        if self.open.is_none() || size == 0 || offset >= self.pm_size {
            return;
        }
        let last = offset.saturating_add(size - 1).min(self.pm_size - 1);
        for line in (offset >> self.line_shift)..=(last >> self.line_shift) {
            let (w, b) = ((line / 64) as usize, line % 64);
            if self.bits[w] & (1 << b) != 0 {
                continue;
            }
            if self.line_shift <= 6 {
                if let Some(&stored) = self.written.get(&line) {
                    let m = self.mask(line, offset, last);
                    if stored & m == m {
                        continue;
                    }
                }
            }
            if self.bits[w] == 0 {
                self.touched.push(w);
            }
            self.bits[w] |= 1 << b;
        }
    }

    /// A store of `size` bytes at byte `offset` of PM by the open check (outside a
    /// check, or past the PM range, nothing happens).
    pub fn store(&mut self, offset: u64, size: u64) {
        if self.open.is_none() || size == 0 || offset >= self.pm_size || self.line_shift > 6 {
            return;
        }
        let last = offset.saturating_add(size - 1).min(self.pm_size - 1);
        for line in (offset >> self.line_shift)..=(last >> self.line_shift) {
            let m = self.mask(line, offset, last);
            *self.written.entry(line).or_insert(0) |= m;
        }
    }

    /// A load that could not be placed (its physical address is unknown): the check's
    /// read set is then incomplete, and says so.
    pub fn unresolved(&mut self) {
        if self.open.is_some() {
            self.unresolved += 1;
        }
    }

    /// The check `check` ends: its read set. A check that was not the open one (or
    /// none was open) gives a file marked incomplete, so the host never uses it.
    pub fn end(&mut self, check: u64) -> ReadSetFile {
        let mut unresolved = self.unresolved;
        if self.open != Some(check) {
            unresolved += 1;
        }
        self.open = None;
        self.touched.sort_unstable();
        let lines = self.touched.iter().flat_map(|&w| {
            let word = self.bits[w];
            (0..64u64)
                .filter(move |b| word & (1 << b) != 0)
                .map(move |b| w as u64 * 64 + b)
        });
        ReadSetFile {
            check,
            unresolved,
            reads: ReadSet::from_lines(1 << self.line_shift, lines),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn records_lines_between_markers_only() {
        let mut r = ReadRecorder::new(1 << 20, 64);
        r.record(0, 8);
        r.begin(1);
        r.record(60, 8); // lines 0 and 1
        r.record(4096, 1);
        r.record((1 << 20) - 1, 16); // clipped to the last line
        r.record(1 << 20, 8); // past the end
        let f = r.end(1);
        assert_eq!(f.check, 1);
        assert_eq!(f.unresolved, 0);
        assert_eq!(
            f.reads.ranges(),
            &[0..128, 4096..4160, (1 << 20) - 64..1 << 20]
        );
        // Closed: nothing more is recorded, and the next check starts empty.
        r.record(8192, 8);
        r.begin(2);
        r.record(64, 1);
        r.unresolved();
        let f = r.end(2);
        assert_eq!(f.reads.ranges(), std::slice::from_ref(&(64..128)));
        assert_eq!(f.unresolved, 1);
    }

    #[test]
    fn loads_of_bytes_the_check_stored_are_not_reads() {
        let mut r = ReadRecorder::new(1 << 16, 64);
        r.store(0, 64); // outside a check: forgotten
        r.begin(1);
        r.record(0, 8); // line 0, not stored in this check
        r.store(64, 64); // line 1 whole
        r.record(64, 8);
        r.record(120, 8);
        r.store(128, 8); // line 2, bytes 0..8 only
        r.record(128, 8); // covered
        r.record(132, 8); // bytes 4..12: 8..12 not stored
        r.store(192, 8);
        r.record(190, 4); // line 2 (already in) and line 3 bytes 0..2 (stored)
        r.record(256, 8); // a load before the store stays a read
        r.store(256, 64);
        r.record(256, 8);
        let f = r.end(1);
        assert_eq!(f.reads.ranges(), &[0..64, 128..192, 256..320]);
        // The next check forgets the stores.
        r.begin(2);
        r.record(64, 8);
        assert_eq!(r.end(2).reads.ranges(), std::slice::from_ref(&(64..128)));
    }

    #[test]
    fn an_end_without_its_begin_is_incomplete() {
        let mut r = ReadRecorder::new(4096, 64);
        assert_eq!(r.end(5).unresolved, 1);
        r.begin(6);
        assert_eq!(r.end(7).unresolved, 1);
    }

    #[test]
    fn matches_a_set_of_lines() {
        // Against the obvious reference: the set of line numbers touched.
        let mut r = ReadRecorder::new(1 << 16, 64);
        r.begin(0);
        let mut want = BTreeSet::new();
        let mut x = 12345u64;
        for _ in 0..500 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let off = (x >> 20) % (1 << 16);
            let size = 1 + (x >> 50) % 40;
            r.record(off, size);
            let last = (off + size - 1).min((1 << 16) - 1);
            want.extend(off / 64..=last / 64);
        }
        let got: BTreeSet<u64> = r
            .end(0)
            .reads
            .ranges()
            .iter()
            .flat_map(|x| x.start / 64..x.end / 64)
            .collect();
        assert_eq!(got, want);
    }
}
