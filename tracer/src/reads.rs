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
//!
//! Copies are followed ([`ReadRecorder::move_to_ram`] and the `ram_*` calls): a string
//! move from PM into RAM is not a read; the RAM bytes remember the PM bytes they copy
//! ([`crate::shadow`]), and the PM block ([`COPY_BLOCK`]) counts as read when a later
//! load (kernel or user) reads the copy, or when a string move carries the copy into PM. The glue
//! decides what a move is; `docs/pruning.md` argues why this keeps the read set
//! deciding the check.
//!
//! Copies written back ([`ReadRecorder::copy_load`], [`ReadRecorder::copy_store`]): the
//! pmem driver's write-back routine moves a copy through registers into PM; a byte
//! put back on the very PM byte it was copied from is neither read nor stored by the
//! check (`docs/pruning.md`, *Copies written back*).

use crate::shadow::Shadows;
use crash_models::model::FxMap;
use crash_models::readset::{ReadSet, ReadSetFile, Stored};

/// At most this many shadow runs (each up to 64 bytes of RAM) per check: 4 Mi runs
/// cover 256 MiB of copies in well under 100 MiB of plugin memory. Past it, a copy is
/// charged as a read at once.
pub const SHADOW_LIMIT: usize = 1 << 22;

/// A load of a copy reads the whole PM block (this many bytes, aligned) it was copied
/// from, not only the loaded bytes' lines. The pmem driver copies whole 4 KiB blocks,
/// and which bytes of a block a check loads can vary from run to run of the same
/// image (XFS: the lines of a btree block looked at differed in one check of twenty,
/// `tests/tests/check_determinism.rs`); charging blocks makes the read set as robust
/// to that as it was when every copied block was read (`docs/pruning.md`).
pub const COPY_BLOCK: u64 = 4096;

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
    written: FxMap<u64, u64>,
    /// A store of the open check could not be placed whole: `written` may miss PM
    /// bytes, so the check's file says its stores are not known.
    stores_lost: bool,
    /// The open check's id.
    open: Option<u64>,
    unresolved: u64,
    /// RAM bytes that hold copies of PM bytes, made by the open check.
    shadows: Shadows,
    /// Lines put in the set since the last [`ReadRecorder::take_new`], when kept.
    new_lines: Option<Vec<u64>>,
    /// A load of a copy reads this many bytes (aligned) of PM around each byte it
    /// loads: [`COPY_BLOCK`], or a line ([`ReadRecorder::charge_lines`]).
    grain: u64,
    /// Loads of the kernel's write-back copy routine waiting for the store that
    /// writes their value ([`ReadRecorder::copy_load`]), oldest first.
    copy_loads: std::collections::VecDeque<CopyLoad>,
}

/// A load of the write-back copy routine: `size` bytes at `parts`, `value`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CopyLoad {
    parts: Parts,
    size: u64,
    value: (u64, u64),
}

impl ReadRecorder {
    /// A recorder for a PM range of `pm_size` bytes in lines of `line_size` bytes (a
    /// power of two).
    pub fn new(pm_size: u64, line_size: u32) -> ReadRecorder {
        ReadRecorder::with_shadow_limit(pm_size, line_size, SHADOW_LIMIT)
    }

    /// [`ReadRecorder::new`] with room for `limit` shadow runs ([`SHADOW_LIMIT`] by
    /// default).
    pub fn with_shadow_limit(pm_size: u64, line_size: u32, limit: usize) -> ReadRecorder {
        let line_shift = line_size.max(1).trailing_zeros();
        let lines = pm_size.div_ceil(1 << line_shift);
        ReadRecorder {
            line_shift,
            pm_size,
            bits: vec![0; lines.div_ceil(64) as usize],
            touched: Vec::new(),
            written: FxMap::default(),
            stores_lost: false,
            open: None,
            unresolved: 0,
            shadows: Shadows::new(limit),
            new_lines: None,
            grain: COPY_BLOCK,
            copy_loads: std::collections::VecDeque::new(),
        }
    }

    /// A load of a copy reads only the lines of the bytes it loads, not their whole
    /// [`COPY_BLOCK`] (the plugin's `copies=lines`): more pruning, and sound only if
    /// which bytes of a copied block a check loads is itself a function of the image
    /// (`docs/pruning.md`, *Why whole blocks*).
    pub fn charge_lines(&mut self) {
        self.grain = 1 << self.line_shift;
    }

    /// A check opens: forget the last one.
    pub fn begin(&mut self, check: u64) {
        for &w in &self.touched {
            self.bits[w] = 0;
        }
        self.touched.clear();
        self.written.clear();
        self.stores_lost = false;
        self.shadows.clear();
        self.copy_loads.clear();
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
            self.mark(line);
        }
    }

    /// Put line `line` in the set.
    fn mark(&mut self, line: u64) {
        let (w, b) = ((line / 64) as usize, line % 64);
        if self.bits[w] == 0 {
            self.touched.push(w);
        }
        if self.bits[w] & (1 << b) == 0 {
            if let Some(n) = &mut self.new_lines {
                n.push(line);
            }
        }
        self.bits[w] |= 1 << b;
    }

    /// Keep the lines each access adds, for [`ReadRecorder::take_new`] (a debugging
    /// aid: which instruction first read each line).
    pub fn keep_new_lines(&mut self) {
        self.new_lines = Some(Vec::new());
    }

    /// The lines added since the last call (empty unless kept).
    pub fn take_new(&mut self) -> Vec<u64> {
        self.new_lines
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// True when the open check stored every byte of PM `offset..offset + size` itself
    /// (and lines are tracked per byte).
    fn all_stored(&self, offset: u64, size: u64) -> bool {
        if self.line_shift > 6 || size == 0 {
            return false;
        }
        let last = offset + size - 1;
        ((offset >> self.line_shift)..=(last >> self.line_shift)).all(|line| {
            let m = self.mask(line, offset, last);
            self.written.get(&line).is_some_and(|&s| s & m == m)
        })
    }

    /// True while some RAM byte holds a copy of PM made by the open check.
    pub fn has_shadows(&self) -> bool {
        !self.shadows.is_empty()
    }

    /// A string move copied PM bytes `offset..offset + size` to RAM `ram..`: not a
    /// read. The RAM bytes remember their source, and a later load of them
    /// ([`ReadRecorder::ram_load`]) reads the source's lines. Bytes all stored by the
    /// check itself copy the check's own values: the RAM bytes then hold no copy, as
    /// after any store. A copy past the bound is charged at once.
    pub fn move_to_ram(&mut self, ram: u64, offset: u64, size: u64) {
        if self.open.is_none() || size == 0 {
            return;
        }
        if offset.saturating_add(size) > self.pm_size {
            // Not all PM: the glue splits accesses at the range's end, so this is a
            // caller's mistake; charging it is always safe.
            self.record(offset, size);
            self.shadows.overwrite(ram, size);
            return;
        }
        if self.all_stored(offset, size) {
            self.shadows.overwrite(ram, size);
            return;
        }
        // A copy of bytes the check stored holds the check's values, not the image's:
        // those RAM bytes hold no copy (so a shadow always means the image's value,
        // which `copy_back` relies on).
        let mut runs = Vec::new();
        if self.any_stored(offset, size) {
            let mut start = 0;
            while start < size {
                let stored = self.all_stored(offset + start, 1);
                let mut end = start + 1;
                while end < size && self.all_stored(offset + end, 1) == stored {
                    end += 1;
                }
                runs.push((start, end - start, stored));
                start = end;
            }
        } else {
            runs.push((0, size, false));
        }
        for (k, n, stored) in runs {
            if stored {
                self.shadows.overwrite(ram + k, n);
            } else if !self.shadows.copy_from_pm(ram + k, offset + k, n) {
                // As if the copy were loaded at once.
                let (first, last) = ((offset + k) / self.grain, (offset + k + n - 1) / self.grain);
                (first..=last).for_each(|b| self.charge_block(b));
            }
        }
    }

    /// True when the open check stored some byte of PM `offset..offset + size`.
    fn any_stored(&self, offset: u64, size: u64) -> bool {
        if self.line_shift > 6 || size == 0 || self.written.is_empty() {
            return false;
        }
        let last = offset + size - 1;
        ((offset >> self.line_shift)..=(last >> self.line_shift)).any(|line| {
            let m = self.mask(line, offset, last);
            self.written.get(&line).is_some_and(|&s| s & m != 0)
        })
    }

    /// A load by the kernel's write-back copy routine (the pmem driver's
    /// `__memcpy_flushcache`: `movq` loads, then `movnti` stores of the same
    /// registers, in order), of `size` bytes at `parts` with `value`: held until the
    /// routine's store of it ([`ReadRecorder::copy_store`]), in order, so that every
    /// store pairs with the load of its register.
    pub fn copy_load(&mut self, parts: &Parts, size: u64, value: (u64, u64)) {
        if self.open.is_none() {
            return;
        }
        if self.copy_loads.len() >= 16 {
            // The routine holds at most four; something else is going on: plain loads.
            self.flush_copy_loads();
        }
        self.copy_loads.push_back(CopyLoad {
            parts: *parts,
            size,
            value,
        });
    }

    /// A store by the write-back copy routine: it writes the value of the oldest held
    /// load ([`ReadRecorder::copy_load`]) when the two have the same size and value.
    /// A byte copied back onto the PM byte its RAM copy came from is neither a read
    /// nor a store of the check: it moves the image's own value back where it was
    /// (`docs/pruning.md`, *Copies written back*). Anything else is a plain load and
    /// store.
    pub fn copy_store(&mut self, parts: &Parts, size: u64, value: (u64, u64)) {
        let load = self.copy_loads.pop_front();
        match (load, *parts) {
            (
                Some(CopyLoad {
                    parts: [(Place::Ram(ram), m), (_, 0)],
                    size: ls,
                    value: lv,
                }),
                [(Place::Pm(pm), n), (_, 0)],
            ) if ls == size && m == size && n == size && size <= 16 && lv == value => {
                self.copy_back(ram, pm, size)
            }
            (l, _) => {
                if let Some(l) = l {
                    self.load_parts(&l.parts);
                }
                self.store_parts(parts);
            }
        }
    }

    /// Held loads of the copy routine that no store took: plain loads.
    pub fn flush_copy_loads(&mut self) {
        while let Some(l) = self.copy_loads.pop_front() {
            self.load_parts(&l.parts);
        }
    }

    /// True while loads of the copy routine wait for their stores.
    pub fn has_copy_loads(&self) -> bool {
        !self.copy_loads.is_empty()
    }

    /// RAM `ram..ram + size` was stored, unchanged, to PM `pm..`.
    fn copy_back(&mut self, ram: u64, pm: u64, size: u64) {
        if self.open.is_none() || pm.saturating_add(size) > self.pm_size {
            self.ram_load(ram, size);
            self.store(pm, size);
            return;
        }
        let mut src = [None; 16];
        self.shadows
            .load_bytes(ram, size, |a, p| src[(a - ram) as usize] = Some(p));
        for (i, s) in src.iter().take(size as usize).enumerate() {
            let at = pm + i as u64;
            if *s == Some(at) {
                self.unstore(at);
            } else {
                if let Some(p) = s {
                    self.charge_block(p / self.grain);
                }
                self.store(at, 1);
            }
        }
    }

    /// PM byte `at` holds the image's value again: no longer stored by the check.
    fn unstore(&mut self, at: u64) {
        if self.line_shift > 6 {
            return;
        }
        let line = at >> self.line_shift;
        if let Some(m) = self.written.get_mut(&line) {
            *m &= !(1u64 << (at - (line << self.line_shift)));
            if *m == 0 {
                self.written.remove(&line);
            }
        }
    }

    /// A load of RAM bytes `ram..ram + size`: the lines of the PM blocks
    /// ([`COPY_BLOCK`]) of the copies it reads enter the set, whatever the check stored
    /// there since (the copy holds the value the line had when it was copied).
    pub fn ram_load(&mut self, ram: u64, size: u64) {
        if self.open.is_none() || self.shadows.is_empty() {
            return;
        }
        let mut blocks = Vec::new();
        self.shadows
            .load(ram, size, |pm| blocks.push(pm / self.grain));
        blocks.dedup();
        blocks.into_iter().for_each(|b| self.charge_block(b));
    }

    /// Every line of PM grain `b` (of [`ReadRecorder::charge_lines`]'s size) is read.
    fn charge_block(&mut self, b: u64) {
        let lines = self.bits.len() as u64 * 64;
        let first = (b * self.grain) >> self.line_shift;
        let last = ((b + 1) * self.grain - 1) >> self.line_shift;
        for line in first..=last.min(lines - 1) {
            self.mark(line);
        }
    }

    /// A store to RAM bytes `ram..ram + size` (anything but a string move): they hold
    /// no copy any more.
    pub fn ram_store(&mut self, ram: u64, size: u64) {
        if self.open.is_some() {
            self.shadows.overwrite(ram, size);
        }
    }

    /// A string move within RAM, `src..src + size` to `dst..`: the copies move along.
    pub fn ram_move(&mut self, dst: u64, src: u64, size: u64) {
        if self.open.is_none() {
            return;
        }
        if !self.shadows.copy_within(dst, src, size) {
            self.ram_load(src, size);
            self.shadows.overwrite(dst, size);
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
        self.flush_copy_loads();
        let mut unresolved = self.unresolved;
        if self.open != Some(check) {
            unresolved += 1;
        }
        self.open = None;
        self.shadows.clear();
        self.touched.sort_unstable();
        let lines = self.touched.iter().flat_map(|&w| {
            let word = self.bits[w];
            (0..64u64)
                .filter(move |b| word & (1 << b) != 0)
                .map(move |b| w as u64 * 64 + b)
        });
        let reads = ReadSet::from_lines(1 << self.line_shift, lines);
        let stored = (self.line_shift <= 6 && !self.stores_lost)
            .then(|| Stored::from_masks(1 << self.line_shift, self.written.drain()));
        ReadSetFile {
            check,
            unresolved,
            reads,
            stored,
        }
    }
}

/// Where one part of a guest access lies, as the glue placed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// At this byte offset of PM.
    Pm(u64),
    /// At this guest-physical address outside PM (RAM).
    Ram(u64),
    /// Somewhere the glue could not find (a page-crossing access whose second page
    /// it could not translate).
    Unknown,
}

impl Place {
    fn at(self, k: u64) -> Place {
        match self {
            Place::Pm(o) => Place::Pm(o + k),
            Place::Ram(a) => Place::Ram(a + k),
            Place::Unknown => Place::Unknown,
        }
    }
}

/// An access in at most two parts (it may cross one page boundary), each a place and a
/// length; unused parts have length 0.
pub type Parts = [(Place, u64); 2];

/// The pieces where both `src` and `dst` are contiguous, byte for byte.
fn pieces(src: &Parts, dst: &Parts) -> Vec<(Place, Place, u64)> {
    let (mut out, mut i, mut j, mut si, mut dj) = (Vec::new(), 0, 0, 0, 0);
    while i < 2 && j < 2 {
        if src[i].1 == si {
            (i, si) = (i + 1, 0);
            continue;
        }
        if dst[j].1 == dj {
            (j, dj) = (j + 1, 0);
            continue;
        }
        let n = (src[i].1 - si).min(dst[j].1 - dj);
        out.push((src[i].0.at(si), dst[j].0.at(dj), n));
        si += n;
        dj += n;
    }
    out
}

impl ReadRecorder {
    /// A load (kernel or user) of `parts`.
    pub fn load_parts(&mut self, parts: &Parts) {
        for &(place, n) in parts {
            match place {
                _ if n == 0 => {}
                Place::Pm(o) => self.record(o, n),
                Place::Ram(a) => self.ram_load(a, n),
                // A PM page mapped elsewhere, or RAM that may hold copies, and the
                // next page unknown: the set would be incomplete. Else the first page
                // is RAM outside the direct map, where no PM is mapped in a checker
                // guest (docs/pruning.md), and no copy exists to miss.
                Place::Unknown => {
                    if self.has_shadows() || matches!(parts[0].0, Place::Pm(_)) {
                        self.unresolved();
                    }
                }
            }
        }
    }

    /// A store (not a string move) to `parts`. A part not placed stays unmarked: fewer
    /// PM bytes count as stored by the check, and RAM keeps copies it may no longer
    /// hold, both of which only add reads; but the check's stores are then not known
    /// (the part may have been PM), and its file says so.
    pub fn store_parts(&mut self, parts: &Parts) {
        for &(place, n) in parts {
            match place {
                Place::Pm(o) => self.store(o, n),
                Place::Ram(a) => self.ram_store(a, n),
                Place::Unknown if n > 0 => self.lost_store(),
                Place::Unknown => {}
            }
        }
    }

    /// Something of the open check may have been placed wrongly (the glue's fast
    /// translation was refuted): its file is marked incomplete, so it is never a class.
    pub fn doubt(&mut self) {
        if self.open.is_some() {
            self.unresolved += 1;
        }
    }

    /// A store of the open check went somewhere unknown.
    fn lost_store(&mut self) {
        if self.open.is_some() {
            self.stores_lost = true;
        }
    }

    /// A string move of `src` to `dst` (the same length). Only PM to RAM and RAM to
    /// RAM are followed; a copy into PM or into an unknown place charges its source,
    /// because the check may load the destination without that load being a read.
    pub fn move_parts(&mut self, src: &Parts, dst: &Parts) {
        for (s, d, n) in pieces(src, dst) {
            match (s, d) {
                (Place::Pm(o), Place::Ram(a)) => self.move_to_ram(a, o, n),
                (Place::Ram(s), Place::Ram(a)) => self.ram_move(a, s, n),
                (Place::Pm(o), _) => self.record(o, n),
                (Place::Ram(s), _) => self.ram_load(s, n),
                (Place::Unknown, _) => self.unresolved(),
            }
            match (s, d) {
                (_, Place::Pm(o)) => self.store(o, n),
                (Place::Unknown, Place::Ram(a)) => self.ram_store(a, n),
                (_, Place::Unknown) => self.lost_store(),
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeSet, HashMap};

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
    fn the_file_says_which_bytes_the_check_stored() {
        let mut r = ReadRecorder::new(1 << 16, 64);
        r.store(0, 64); // outside a check: forgotten
        r.begin(1);
        r.store(64, 64);
        r.store(130, 4);
        r.store(190, 4); // lines 2 and 3
        r.store(1 << 16, 8); // past PM
        let st = r.end(1).stored.expect("stores are tracked");
        assert_eq!(st.ranges(), vec![64..128, 130..134, 190..194]);
        // A store that could not be placed whole: the stores are not known.
        r.begin(2);
        r.store(0, 8);
        r.store_parts(&[(Place::Pm(4092), 4), (Place::Unknown, 4)]);
        assert_eq!(r.end(2).stored, None);
        // The next check starts with nothing stored and nothing lost.
        r.begin(3);
        assert_eq!(r.end(3).stored.map(|s| s.bytes()), Some(0));
        // Lines longer than 64 bytes: stores are not tracked.
        let mut wide = ReadRecorder::new(1 << 16, 128);
        wide.begin(1);
        wide.store(0, 8);
        assert_eq!(wide.end(1).stored, None);
    }

    #[test]
    fn an_end_without_its_begin_is_incomplete() {
        let mut r = ReadRecorder::new(4096, 64);
        assert_eq!(r.end(5).unresolved, 1);
        r.begin(6);
        assert_eq!(r.end(7).unresolved, 1);
    }

    fn lines_of(f: &ReadSetFile) -> BTreeSet<u64> {
        f.reads
            .ranges()
            .iter()
            .flat_map(|x| x.start / 64..x.end / 64)
            .collect()
    }

    #[test]
    fn a_copy_is_read_only_where_its_ram_is_loaded() {
        let mut r = ReadRecorder::new(1 << 20, 64);
        r.begin(1);
        // The pmem driver copies three blocks into RAM pages 0x5000, 0x9000, 0xa000;
        // nothing loads the third.
        r.move_to_ram(0x5000, 0x1000, 4096);
        r.move_to_ram(0x9000, 0x2000, 4096);
        r.move_to_ram(0xa000, 0x3000, 4096);
        assert!(r.has_shadows());
        // The kernel parses 8 bytes of the first block's line 3.
        r.ram_load(0x5000 + 3 * 64 + 8, 8);
        // It overwrites a line of the second block, then loads it: not a read.
        r.ram_store(0x9000, 64);
        r.ram_load(0x9000, 8);
        // copy_to_user of the second block's line 1, then user code loads it.
        r.ram_move(0x40_0000, 0x9000 + 64, 64);
        r.ram_load(0x40_0000 + 60, 4);
        // The check rewrites the first block's line 5 in PM, then loads its copy: the
        // copy holds the image's value, so the line is read.
        r.store(0x1000 + 5 * 64, 64);
        r.ram_load(0x5000 + 5 * 64, 1);
        // A second copy of line 7, loaded: a read.
        r.move_to_ram(0x7000, 0x1000 + 7 * 64, 64);
        r.ram_load(0x7000 + 1, 1);
        let f = r.end(1);
        // Each load of a copy reads the whole 4 KiB block it came from.
        let blocks =
            |bs: &[u64]| -> BTreeSet<u64> { bs.iter().flat_map(|b| b * 64..b * 64 + 64).collect() };
        assert_eq!(lines_of(&f), blocks(&[1, 2]));
        assert!(!r.has_shadows(), "the end of a check forgets its copies");
    }

    #[test]
    fn a_copy_of_bytes_the_check_stored_is_no_copy() {
        let mut r = ReadRecorder::new(1 << 16, 64);
        r.begin(1);
        r.store(0, 64);
        r.move_to_ram(0x8000, 0, 64);
        r.ram_load(0x8000, 64);
        // Partly stored: a copy, and its load reads the line.
        r.store(64, 8);
        r.move_to_ram(0x9000, 64, 16);
        r.ram_load(0x9000 + 15, 1);
        assert_eq!(lines_of(&r.end(1)), (0..64).collect::<BTreeSet<_>>());
    }

    #[test]
    fn a_copy_written_back_where_it_came_from_is_neither_read_nor_stored() {
        let ram = |a, n| [(Place::Ram(a), n), (Place::Unknown, 0)];
        let pm = |o, n| [(Place::Pm(o), n), (Place::Unknown, 0)];
        let mut r = ReadRecorder::new(1 << 16, 64);
        r.charge_lines();
        r.begin(1);
        r.move_to_ram(0x8000, 4096, 4096);
        // The routine's 4x8 loop: four loads, then four stores of the same values.
        for k in 0..4 {
            r.copy_load(&ram(0x8000 + 8 * k, 8), 8, (k, 0));
        }
        for k in 0..4 {
            r.copy_store(&pm(4096 + 8 * k, 8), 8, (k, 0));
        }
        // Written elsewhere (jbd2 replaying a block to its home): a read of the
        // source and a store.
        r.copy_load(&ram(0x8000 + 64, 8), 8, (9, 0));
        r.copy_store(&pm(0, 8), 8, (9, 0));
        // A store of another value than the load's: no copy.
        r.copy_load(&ram(0x8000 + 128, 8), 8, (5, 0));
        r.copy_store(&pm(4096 + 128, 8), 8, (6, 0));
        // A load left waiting at the end: a load.
        r.copy_load(&ram(0x8000 + 192, 8), 8, (7, 0));
        let f = r.end(1);
        assert_eq!(
            lines_of(&f),
            [65, 66, 67].into_iter().collect::<BTreeSet<_>>()
        );
        let stored: Vec<_> = f.stored.expect("stores known").ranges();
        assert_eq!(stored, vec![0..8, 4096 + 128..4096 + 136]);
    }

    #[test]
    fn a_copy_written_back_over_the_checks_own_store_undoes_it() {
        let ram = |a, n| [(Place::Ram(a), n), (Place::Unknown, 0)];
        let pm = |o, n| [(Place::Pm(o), n), (Place::Unknown, 0)];
        let mut r = ReadRecorder::new(1 << 16, 64);
        r.begin(1);
        r.move_to_ram(0x8000, 0, 64);
        r.store(0, 8); // after the copy: the copy still holds the image's bytes
        r.copy_load(&ram(0x8000, 8), 8, (1, 0));
        r.copy_store(&pm(0, 8), 8, (1, 0));
        r.record(0, 8); // the image's bytes again: a read
        let f = r.end(1);
        assert_eq!(lines_of(&f), [0].into_iter().collect::<BTreeSet<_>>());
        assert_eq!(
            f.stored.expect("stores known").ranges(),
            Vec::<std::ops::Range<u64>>::new()
        );
    }

    #[test]
    fn outside_a_check_copies_are_forgotten() {
        let mut r = ReadRecorder::new(1 << 16, 64);
        r.move_to_ram(0x8000, 0, 64);
        r.begin(1);
        r.ram_load(0x8000, 64);
        r.move_to_ram(0x8000, 128, 64);
        let _ = r.end(1);
        r.begin(2);
        r.ram_load(0x8000, 64);
        assert!(lines_of(&r.end(2)).is_empty());
    }

    /// One guest memory event, for the property tests.
    #[derive(Debug, Clone)]
    enum Ev {
        PmLoad(u64, u64),
        PmStore(u64, u64),
        MoveToRam(u64, u64, u64),
        RamLoad(u64, u64),
        RamStore(u64, u64),
        RamMove(u64, u64, u64),
        /// The write-back copy routine loads RAM (first) and stores it to PM (second)
        /// with the same value (or, when false, a different one: no copy).
        CopyBack(u64, u64, u64, bool),
    }

    /// PM of the property tests: four blocks.
    const PM: u64 = 4 * COPY_BLOCK;

    /// PM is 16 KiB and RAM addresses lie in 0..8 KiB, so events collide often.
    fn ev() -> impl proptest::strategy::Strategy<Value = Ev> {
        use proptest::prelude::*;
        let pm = || 0u64..PM;
        let ram = || 0u64..8192;
        let len = || 1u64..80;
        prop_oneof![
            (pm(), len()).prop_map(|(o, n)| Ev::PmLoad(o, n)),
            (pm(), len()).prop_map(|(o, n)| Ev::PmStore(o, n)),
            (ram(), pm(), len()).prop_map(|(r, o, n)| Ev::MoveToRam(r, o, n.min(PM - o))),
            (ram(), len()).prop_map(|(r, n)| Ev::RamLoad(r, n)),
            (ram(), len()).prop_map(|(r, n)| Ev::RamStore(r, n)),
            (ram(), ram(), len()).prop_map(|(d, s, n)| Ev::RamMove(d, s, n)),
            (ram(), pm(), 1u64..=16, any::<bool>()).prop_map(|(r, o, n, same)| Ev::CopyBack(
                r,
                o,
                n.min(PM - o),
                same
            )),
            // Copies written back where they came from, the case that matters.
            (0u64..4096, 1u64..=16, any::<bool>()).prop_map(|(o, n, same)| Ev::CopyBack(
                o + 4096,
                o,
                n,
                same
            )),
        ]
    }

    /// The obvious reference: per RAM byte the PM byte it copies, per PM byte whether
    /// the check stored it, per line whether it was read. Returns the lines read and
    /// the bytes stored.
    fn reference(evs: &[Ev]) -> (BTreeSet<u64>, BTreeSet<u64>) {
        let mut src: HashMap<u64, u64> = HashMap::new();
        let mut stored = std::collections::HashSet::new();
        let mut read = BTreeSet::new();
        for e in evs {
            match *e {
                Ev::PmLoad(o, n) => {
                    let last = (o + n - 1).min(PM - 1);
                    for line in o / 64..=last / 64 {
                        let bytes = o.max(line * 64)..=last.min(line * 64 + 63);
                        if bytes.clone().any(|b| !stored.contains(&b)) {
                            read.insert(line);
                        }
                    }
                }
                Ev::PmStore(o, n) => stored.extend(o..(o + n).min(PM)),
                Ev::MoveToRam(r, o, n) => {
                    // A copy of a byte the check stored holds the check's value.
                    for i in 0..n {
                        if stored.contains(&(o + i)) {
                            src.remove(&(r + i));
                        } else {
                            src.insert(r + i, o + i);
                        }
                    }
                }
                Ev::CopyBack(r, o, n, same) => {
                    for i in 0..n {
                        let s = src.get(&(r + i)).copied();
                        if same && s == Some(o + i) {
                            // The image's own byte, back where it was.
                            stored.remove(&(o + i));
                            continue;
                        }
                        if let Some(p) = s {
                            let block = p / COPY_BLOCK * COPY_BLOCK;
                            read.extend(block / 64..(block + COPY_BLOCK) / 64);
                        }
                        stored.insert(o + i);
                    }
                }
                Ev::RamLoad(r, n) => {
                    for b in r..r + n {
                        if let Some(p) = src.get(&b) {
                            let block = p / COPY_BLOCK * COPY_BLOCK;
                            read.extend(block / 64..(block + COPY_BLOCK) / 64);
                        }
                    }
                }
                Ev::RamStore(r, n) => {
                    for b in r..r + n {
                        src.remove(&b);
                    }
                }
                Ev::RamMove(d, s, n) => {
                    let moved: Vec<_> = (0..n).map(|i| src.get(&(s + i)).copied()).collect();
                    for (i, p) in moved.into_iter().enumerate() {
                        match p {
                            Some(p) => src.insert(d + i as u64, p),
                            None => src.remove(&(d + i as u64)),
                        };
                    }
                }
            }
        }
        (read, stored.into_iter().collect())
    }

    fn run(r: &mut ReadRecorder, evs: &[Ev]) -> (BTreeSet<u64>, BTreeSet<u64>) {
        r.begin(7);
        for e in evs {
            match *e {
                Ev::PmLoad(o, n) => r.record(o, n),
                Ev::PmStore(o, n) => r.store(o, n),
                Ev::MoveToRam(ram, o, n) => r.move_to_ram(ram, o, n),
                Ev::RamLoad(ram, n) => r.ram_load(ram, n),
                Ev::RamStore(ram, n) => r.ram_store(ram, n),
                Ev::RamMove(d, s, n) => r.ram_move(d, s, n),
                Ev::CopyBack(ram, o, n, same) => {
                    r.copy_load(&[(Place::Ram(ram), n), (Place::Unknown, 0)], n, (1, 0));
                    let v = if same { (1, 0) } else { (2, 0) };
                    r.copy_store(&[(Place::Pm(o), n), (Place::Unknown, 0)], n, v);
                }
            }
        }
        let f = r.end(7);
        let stored = f.stored.as_ref().expect("stores are tracked").ranges();
        (lines_of(&f), stored.into_iter().flatten().collect())
    }

    proptest::proptest! {
        #[test]
        /// Lines read and bytes stored.
        fn follows_copies_like_the_reference(
            evs in proptest::collection::vec(ev(), 0..60)
        ) {
            let mut r = ReadRecorder::new(PM, 64);
            proptest::prop_assert_eq!(run(&mut r, &evs), reference(&evs));
        }

        /// With a small bound copies are charged early: never fewer lines read.
        #[test]
        fn the_bound_only_adds_reads(
            evs in proptest::collection::vec(ev(), 0..60),
            limit in 0usize..6,
        ) {
            let mut r = ReadRecorder::with_shadow_limit(PM, 64, limit);
            let (got, _) = run(&mut r, &evs);
            let (want, _) = reference(&evs);
            proptest::prop_assert!(got.is_superset(&want), "{:?} misses {:?}", got, want.difference(&got).collect::<Vec<_>>());
        }
    }

    #[test]
    fn moves_split_at_page_boundaries() {
        let mut r = ReadRecorder::new(1 << 16, 64);
        r.begin(1);
        // An 8-byte move from PM 0x0ffc (crossing into PM page 0x1000) to RAM 0x5ffe
        // (crossing into RAM page 0x9000).
        let src = [(Place::Pm(0x0ffc), 4), (Place::Pm(0x1000), 4)];
        let dst = [(Place::Ram(0x5ffe), 2), (Place::Ram(0x9000), 6)];
        r.move_parts(&src, &dst);
        // Byte 5 of the move: PM 0x1001, now at RAM 0x9003: block 1 is read.
        r.load_parts(&[(Place::Ram(0x9003), 1), (Place::Unknown, 0)]);
        assert_eq!(lines_of(&r.end(1)), (64..128).collect::<BTreeSet<_>>());
        // A move into PM or into an unknown place charges its source.
        r.begin(2);
        r.move_parts(
            &[(Place::Pm(0), 8), (Place::Unknown, 0)],
            &[(Place::Pm(4096), 8), (Place::Unknown, 0)],
        );
        r.move_parts(
            &[(Place::Pm(64), 4), (Place::Pm(128), 4)],
            &[(Place::Ram(0x5ffc), 4), (Place::Unknown, 4)],
        );
        r.load_parts(&[(Place::Pm(4096), 8), (Place::Unknown, 0)]);
        let f = r.end(2);
        assert_eq!(lines_of(&f), BTreeSet::from([0, 2]));
        assert_eq!(f.unresolved, 0);
        // An unknown source makes the set incomplete.
        r.begin(3);
        r.move_parts(
            &[(Place::Ram(0x5ffc), 4), (Place::Unknown, 4)],
            &[(Place::Ram(0x7000), 8), (Place::Unknown, 0)],
        );
        assert_eq!(r.end(3).unresolved, 1);
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
