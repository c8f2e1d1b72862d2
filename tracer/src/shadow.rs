//! Copies of PM bytes held in RAM during one check ("shadows").
//!
//! The pmem driver reads a block by copying it from PM into a RAM page with a string
//! move (`rep movs`), and the kernel then looks at only some of the copied bytes (jbd2
//! reads the journal ahead, and parses only the blocks it needs). A string move loads
//! a value and stores it unchanged, with no branch on it, so the copy alone makes the
//! execution depend on nothing: only a later load of the copy does. This map records,
//! per RAM byte, which PM byte its value was copied from, so that such a later load can
//! be charged to the PM byte's block (see `docs/pruning.md` for the soundness argument
//! and [`crate::reads::ReadRecorder`] for its use).
//!
//! Per RAM line of 64 bytes the map keeps a few runs, each a byte mask with one offset
//! from RAM to PM (a block copy gives one run per line, a copy that shifts by a
//! non-multiple of 64 two). Memory is bounded: past `limit` runs a copy is refused, and
//! the caller charges its source at once, as for a plain load.

use crash_models::model::FxMap;
use smallvec::SmallVec;

/// Bytes of RAM per tracked line.
const LINE: u64 = 64;

/// The bytes of one RAM line copied from PM with one offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Run {
    /// PM offset minus RAM address (wrapping), the same for every byte of `mask`.
    delta: u64,
    /// Bit `i` set: byte `i` of the line holds a copy.
    mask: u64,
}

/// The RAM bytes that hold copies of PM bytes, and of which.
#[derive(Debug)]
pub struct Shadows {
    /// Keyed by RAM line (checked on every load of a page holding copies, so a cheap
    /// hash and no allocation for the usual one or two runs).
    lines: FxMap<u64, SmallVec<[Run; 2]>>,
    runs: usize,
    limit: usize,
}

/// The part of line `line` that `start..start + len` covers, as a byte mask.
fn line_mask(line: u64, start: u64, len: u64) -> u64 {
    let base = line * LINE;
    let a = start.max(base) - base;
    let b = (start + len).min(base + LINE) - base;
    let n = b - a;
    let ones = if n >= 64 { u64::MAX } else { (1u64 << n) - 1 };
    ones << a
}

/// The lines of `start..start + len` (non-empty).
fn lines(start: u64, len: u64) -> std::ops::RangeInclusive<u64> {
    start / LINE..=(start + len - 1) / LINE
}

impl Shadows {
    /// An empty map that holds at most `limit` runs (one run covers up to 64 bytes).
    pub fn new(limit: usize) -> Shadows {
        Shadows {
            lines: FxMap::default(),
            runs: 0,
            limit,
        }
    }

    /// Forget everything (a check's end).
    pub fn clear(&mut self) {
        self.lines = FxMap::default();
        self.runs = 0;
    }

    /// True when no RAM byte holds a copy.
    pub fn is_empty(&self) -> bool {
        self.runs == 0
    }

    /// Runs held (for the bound and for tests).
    pub fn runs(&self) -> usize {
        self.runs
    }

    /// RAM bytes `ram..ram + len` were overwritten: they hold no copy any more.
    pub fn overwrite(&mut self, ram: u64, len: u64) {
        if len == 0 || self.runs == 0 {
            return;
        }
        for line in lines(ram, len) {
            let m = line_mask(line, ram, len);
            let Some(runs) = self.lines.get_mut(&line) else {
                continue;
            };
            let before = runs.len();
            runs.retain_mut(|r| {
                r.mask &= !m;
                r.mask != 0
            });
            self.runs -= before - runs.len();
            if runs.is_empty() {
                self.lines.remove(&line);
            }
        }
    }

    /// Runs that copying `len` bytes to `ram` may add at most.
    fn fits(&self, ram: u64, len: u64) -> bool {
        let new = (ram + len - 1) / LINE - ram / LINE + 1;
        self.runs + new as usize <= self.limit
    }

    /// The bytes `mask` of RAM line `line` (holding no copy) now hold copies at
    /// offset `delta`.
    fn add(&mut self, line: u64, delta: u64, mask: u64) {
        let runs = self.lines.entry(line).or_default();
        match runs.iter_mut().find(|r| r.delta == delta) {
            Some(r) => r.mask |= mask,
            None => {
                runs.push(Run { delta, mask });
                self.runs += 1;
            }
        }
    }

    /// RAM bytes `ram..ram + len` now hold copies of PM bytes `pm..pm + len`. False
    /// when that would pass the bound: then the RAM bytes hold no copy (as after a
    /// store) and the caller must count the PM bytes as read.
    pub fn copy_from_pm(&mut self, ram: u64, pm: u64, len: u64) -> bool {
        if len == 0 {
            return true;
        }
        self.overwrite(ram, len);
        if !self.fits(ram, len) {
            return false;
        }
        let delta = pm.wrapping_sub(ram);
        for line in lines(ram, len) {
            self.add(line, delta, line_mask(line, ram, len));
        }
        true
    }

    /// RAM bytes `dst..dst + len` now hold what `src..src + len` held (a string move
    /// within RAM; the two may overlap). False when that would pass the bound: then
    /// nothing changed, and the caller must count the source as loaded
    /// ([`Shadows::load`]) and `dst` as overwritten.
    pub fn copy_within(&mut self, dst: u64, src: u64, len: u64) -> bool {
        if len == 0 {
            return true;
        }
        let mut copied = Vec::new();
        self.load_bytes(src, len, |ram, pm| copied.push((ram - src, pm)));
        if !copied.is_empty() && !self.fits(dst, len) {
            return false;
        }
        self.overwrite(dst, len);
        for (i, pm) in copied {
            let ram = dst + i;
            self.add(ram / LINE, pm.wrapping_sub(ram), 1 << (ram % LINE));
        }
        true
    }

    /// Every shadowed byte of `ram..ram + len`, as (RAM address, PM offset).
    pub fn load_bytes(&self, ram: u64, len: u64, mut f: impl FnMut(u64, u64)) {
        if len == 0 || self.runs == 0 {
            return;
        }
        for line in lines(ram, len) {
            let Some(runs) = self.lines.get(&line) else {
                continue;
            };
            let m = line_mask(line, ram, len);
            for r in runs {
                let mut hit = r.mask & m;
                while hit != 0 {
                    let b = hit.trailing_zeros() as u64;
                    hit &= hit - 1;
                    let a = line * LINE + b;
                    f(a, a.wrapping_add(r.delta));
                }
            }
        }
    }

    /// A load of RAM bytes `ram..ram + len`: `f` gets the PM offset of every byte it
    /// loads that holds a copy (possibly more than once).
    pub fn load(&self, ram: u64, len: u64, mut f: impl FnMut(u64)) {
        self.load_bytes(ram, len, |_, pm| f(pm));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn loaded(s: &Shadows, ram: u64, len: u64) -> BTreeSet<u64> {
        let mut out = BTreeSet::new();
        s.load(ram, len, |pm| {
            out.insert(pm);
        });
        out
    }

    #[test]
    fn a_block_copy_is_charged_only_where_loaded() {
        let mut s = Shadows::new(1000);
        assert!(s.copy_from_pm(0x10_0000, 0x2000, 4096));
        assert_eq!(s.runs(), 64);
        assert!(loaded(&s, 0x0f_fff0, 16).is_empty());
        assert_eq!(
            loaded(&s, 0x10_0100, 4),
            BTreeSet::from([0x2100, 0x2101, 0x2102, 0x2103])
        );
        // A store in the middle forgets those bytes only.
        s.overwrite(0x10_0100, 2);
        assert_eq!(loaded(&s, 0x10_0100, 4), BTreeSet::from([0x2102, 0x2103]));
        // A copy onwards (copy_to_user) keeps the source.
        assert!(s.copy_within(0x5_0003, 0x10_0102, 8));
        assert_eq!(loaded(&s, 0x5_0003, 1), BTreeSet::from([0x2102]));
        assert_eq!(loaded(&s, 0x5_000a, 1), BTreeSet::from([0x2109]));
        // Overwriting everything empties the map.
        s.overwrite(0, 0x20_0000);
        assert!(s.is_empty());
        assert!(s.lines.is_empty());
    }

    #[test]
    fn the_bound_refuses_copies() {
        let mut s = Shadows::new(2);
        assert!(s.copy_from_pm(0, 0, 128));
        assert!(!s.copy_from_pm(128, 128, 1));
        // A refused copy still forgets what its destination held.
        assert!(!s.copy_from_pm(0, 4096, 1));
        assert_eq!(loaded(&s, 0, 1), BTreeSet::new());
        assert_eq!(loaded(&s, 1, 1), BTreeSet::from([1]));
        // copy_within past the bound changes nothing.
        assert!(!s.copy_within(1000, 1, 64));
        assert_eq!(loaded(&s, 1, 1), BTreeSet::from([1]));
        // A copy of bytes that hold no copy needs no room.
        assert!(s.copy_within(1000, 5000, 64));
        s.clear();
        assert!(s.is_empty());
    }
}
