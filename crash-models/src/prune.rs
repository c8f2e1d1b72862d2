//! Read-set pruning: crash images sorted into classes of equal recovery.
//!
//! A checker guest is a deterministic function of the PM bytes it reads
//! ([`crate::readset`]). So once an image A has been checked and its check read the
//! lines `R`, any image B that holds the same bytes as A on every line of `R` gets
//! A's recovery without a guest run. A [`ClassTable`] keeps, per checked image, its
//! read set and a *signature*: the lane-wise wrapping sum of the hashes of the lines
//! of `R` the image holds written bytes on ([`crate::delta::hash_line`]: line number,
//! byte mask, bytes; lines the trace never wrote hold the base image's bytes in every
//! image, so they need no hash). B matches A when B's signature over `R` equals A's.
//!
//! Equal signatures mean equal bytes on `R` (up to a collision of 256-bit sums of
//! blake3 hashes). The converse fails only when a written byte equals the base's:
//! such an image is checked rather than pruned, which costs time, never soundness.
//!
//! Classes with the same read set share one hash map, so finding a match costs one
//! signature per distinct read set; a signature over a crash point's image is the
//! point's durable sum over `R` (prefix sums: two binary searches a range, see
//! [`crate::delta::DurableSnapshot::sum_in`]) plus the few lines the crash state
//! changes ([`StateLines`]).

use crate::delta::{add, DurableSnapshot, LineHash};
use crate::readset::ReadSet;
use std::collections::HashMap;
use std::ops::Range;

/// An image as pruning sees it: the sum of the hashes of the lines it holds written
/// bytes on, over a range of line numbers. Lines it has no hash for hold the base
/// image's bytes.
pub trait ImageLines {
    /// The sum of the hashes of the image's written lines numbered in `lines`.
    fn sum_in(&self, lines: Range<u64>) -> LineHash;
}

/// An image as a sorted list of (line number, hash): the simple form (tests, images
/// made by hand).
#[derive(Debug, Clone, Copy)]
pub struct Listed<'a>(pub &'a [(u64, LineHash)]);

impl ImageLines for Listed<'_> {
    fn sum_in(&self, lines: Range<u64>) -> LineHash {
        sum_listed(self.0, lines)
    }
}

fn sum_listed(list: &[(u64, LineHash)], lines: Range<u64>) -> LineHash {
    let a = list.partition_point(|e| e.0 < lines.start);
    let mut s = [0u64; 4];
    for (l, h) in &list[a..] {
        if *l >= lines.end {
            break;
        }
        add(&mut s, h);
    }
    s
}

/// A crash state's image at a crash point: the point's durable lines with the
/// state's changes ([`crate::delta::PointSnapshot::changes`]) on top.
#[derive(Debug, Clone, Copy)]
pub struct StateLines<'a> {
    /// The point's durable content.
    pub durable: &'a DurableSnapshot,
    /// (line, image hash minus durable hash), sorted by line.
    pub changes: &'a [(u64, LineHash)],
}

impl ImageLines for StateLines<'_> {
    fn sum_in(&self, lines: Range<u64>) -> LineHash {
        let mut s = self.durable.sum_in(lines.clone());
        add(&mut s, &sum_listed(self.changes, lines));
        s
    }
}

/// Classes sharing one read set.
#[derive(Debug, Clone)]
struct Group<C> {
    /// The read set as ranges of line numbers (of the table's line size).
    lines: Vec<Range<u64>>,
    /// Signature to class.
    classes: HashMap<LineHash, C>,
}

/// Checked images (classes, each named by a `C` the caller picks) with their read
/// sets; finds the class an image belongs to (see the module docs).
#[derive(Debug, Clone)]
pub struct ClassTable<C> {
    line_size: u64,
    groups: Vec<Group<C>>,
    by_lines: HashMap<Vec<Range<u64>>, usize>,
    classes: usize,
}

impl<C> ClassTable<C> {
    /// An empty table for images of `line_size`-byte lines (the model's, which
    /// [`ImageLines`] numbers lines in).
    pub fn new(line_size: u32) -> ClassTable<C> {
        ClassTable {
            line_size: u64::from(line_size.max(1)),
            groups: Vec::new(),
            by_lines: HashMap::new(),
            classes: 0,
        }
    }

    /// Add the class of a checked image whose check read `reads`. Returns false (and
    /// keeps the class already there) when an equal class is known: two images
    /// checked at once can be equal on what both read.
    pub fn insert(&mut self, reads: &ReadSet, image: &impl ImageLines, class: C) -> bool {
        let lines = lines_of(reads, self.line_size);
        let sig = signature(image, &lines);
        let g = match self.by_lines.get(&lines) {
            Some(&g) => g,
            None => {
                self.groups.push(Group {
                    lines: lines.clone(),
                    classes: HashMap::new(),
                });
                self.by_lines.insert(lines, self.groups.len() - 1);
                self.groups.len() - 1
            }
        };
        let classes = &mut self.groups[g].classes;
        if classes.contains_key(&sig) {
            return false;
        }
        classes.insert(sig, class);
        self.classes += 1;
        true
    }

    /// A class whose checked image holds the same bytes as `image` on every line its
    /// check read, if any (the first such, in the order read sets were first seen).
    pub fn find(&self, image: &impl ImageLines) -> Option<&C> {
        self.groups
            .iter()
            .find_map(|g| g.classes.get(&signature(image, &g.lines)))
    }

    /// Classes held.
    pub fn len(&self) -> usize {
        self.classes
    }

    /// True when no class is held.
    pub fn is_empty(&self) -> bool {
        self.classes == 0
    }

    /// Distinct read sets among the classes.
    pub fn read_sets(&self) -> usize {
        self.groups.len()
    }
}

/// The lines of `line_size` bytes that a read set touches, as sorted, coalesced
/// ranges of line numbers (a read set of smaller lines is widened: comparing more
/// bytes is always sound).
fn lines_of(reads: &ReadSet, line_size: u64) -> Vec<Range<u64>> {
    let mut out: Vec<Range<u64>> = Vec::new();
    for r in reads.ranges() {
        let (a, b) = (r.start / line_size, r.end.div_ceil(line_size));
        match out.last_mut() {
            Some(last) if last.end >= a => last.end = last.end.max(b),
            _ => out.push(a..b),
        }
    }
    out
}

/// A guess, made before images are checked, at which of them one check's read set
/// would prune: the images are counted by their signature over the lines an earlier
/// check read (a crash point's first check, whose read set its siblings' checks
/// mostly repeat: the same recovery runs on nearly the same bytes).
///
/// An image that no other waiting image matches on those lines is forecast to be a
/// class of one: recording its check's reads (which doubles what a check costs) would
/// likely prune nothing. Typical are the torn states of a checksummed block: the
/// checksum reads every line, so each state that drops one line differs from all the
/// others on what is read.
///
/// Only a guess, and only ever used to decide whether a check records its reads:
/// a wrong forecast costs a check or some recording, never a recovery's soundness
/// (an unrecorded check is no class; pruning still needs a recorded, equal read set).
#[derive(Debug, Clone)]
pub struct Forecast {
    lines: Vec<Range<u64>>,
    waiting: HashMap<LineHash, u32>,
}

impl Forecast {
    /// A forecast by the lines of `line_size` bytes that `reads` touches, with no
    /// image counted yet.
    pub fn new(reads: &ReadSet, line_size: u32) -> Forecast {
        Forecast {
            lines: lines_of(reads, u64::from(line_size.max(1))),
            waiting: HashMap::new(),
        }
    }

    /// Count an image that waits to be checked or pruned.
    pub fn add(&mut self, image: &impl ImageLines) {
        *self
            .waiting
            .entry(signature(image, &self.lines))
            .or_default() += 1;
    }

    /// Take a counted image out (it is being checked or pruned now) and return how
    /// many other counted images still wait with its signature: 0 forecasts a class
    /// of one. An image never counted takes nothing out.
    pub fn take(&mut self, image: &impl ImageLines) -> u32 {
        let sig = signature(image, &self.lines);
        match self.waiting.get_mut(&sig) {
            Some(n) if *n > 1 => {
                *n -= 1;
                *n
            }
            Some(_) => {
                self.waiting.remove(&sig);
                0
            }
            None => 0,
        }
    }
}

/// An image's signature over some lines: the sum of its hashes there.
fn signature(image: &impl ImageLines, lines: &[Range<u64>]) -> LineHash {
    let mut s = [0u64; 4];
    for r in lines {
        add(&mut s, &image.sum_in(r.clone()));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delta::hash_line;

    fn listed(lines: &[(u64, [u8; 64], u64)]) -> Vec<(u64, LineHash)> {
        let mut v: Vec<(u64, LineHash)> = lines
            .iter()
            .filter(|l| l.2 != 0)
            .map(|(l, b, m)| (*l, hash_line(*l, b, &[*m])))
            .collect();
        v.sort_by_key(|e| e.0);
        v
    }

    #[test]
    fn equal_on_the_read_lines_is_enough() {
        let a = listed(&[(1, [1; 64], !0), (5, [2; 64], !0)]);
        let b = listed(&[(1, [1; 64], !0), (5, [3; 64], !0)]);
        let c = listed(&[(1, [9; 64], !0), (5, [2; 64], !0)]);
        let mut t = ClassTable::new(64);
        // The check of `a` read line 1 (bytes 64..128) and line 3 (never written).
        assert!(t.insert(&ReadSet::from_lines(64, [1, 3]), &Listed(&a), "a"));
        assert_eq!(t.find(&Listed(&b)), Some(&"a"));
        assert_eq!(t.find(&Listed(&c)), None);
        // An image that wrote line 3 differs from `a` there.
        let d = listed(&[(1, [1; 64], !0), (3, [0; 64], 1)]);
        assert_eq!(t.find(&Listed(&d)), None);
        assert!(!t.insert(&ReadSet::from_lines(64, [1, 3]), &Listed(&b), "b"));
        assert_eq!((t.len(), t.read_sets()), (1, 1));
    }

    #[test]
    fn small_read_lines_widen_to_model_lines() {
        let a = listed(&[(1, [1; 64], !0)]);
        let b = listed(&[(1, [1; 64], 1)]);
        let mut t = ClassTable::new(128);
        // A 64-byte read of bytes 128..192 covers the 128-byte line 1 (lines here are
        // numbered in 128-byte units).
        t.insert(&ReadSet::from_lines(64, [2]), &Listed(&a), 0);
        assert_eq!(t.find(&Listed(&a)), Some(&0));
        assert_eq!(t.find(&Listed(&b)), None);
    }

    #[test]
    fn a_forecast_counts_the_images_equal_on_the_lines_read() {
        // The lead's check read lines 1 and 5. Images dropping line 1 or line 5 are
        // alone; images differing only on line 7 (unread) share one signature.
        let reads = ReadSet::from_lines(64, [1, 5]);
        let drop1 = listed(&[(5, [2; 64], !0), (7, [4; 64], !0)]);
        let drop5 = listed(&[(1, [1; 64], !0), (7, [4; 64], !0)]);
        let drop7 = listed(&[(1, [1; 64], !0), (5, [2; 64], !0)]);
        let keep7 = listed(&[(1, [1; 64], !0), (5, [2; 64], !0), (7, [5; 64], !0)]);
        let mut f = Forecast::new(&reads, 64);
        for i in [&drop1, &drop5, &drop7, &keep7] {
            f.add(&Listed(i));
        }
        assert_eq!(f.take(&Listed(&drop1)), 0, "a class of one");
        assert_eq!(f.take(&Listed(&drop7)), 1, "keep7 shares its class");
        assert_eq!(f.take(&Listed(&keep7)), 0, "the last of its class");
        assert_eq!(f.take(&Listed(&drop5)), 0);
        // Taken out already, or never counted: nothing left to share with.
        assert_eq!(f.take(&Listed(&drop7)), 0);
    }
}
