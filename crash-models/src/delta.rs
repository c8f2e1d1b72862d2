//! Crash images as deltas over the base image.
//!
//! A [`CrashImage`] is every byte the trace wrote that survives in one crash state:
//! the durable content plus the kept prefixes of in-flight lines, as sorted,
//! coalesced ranges. Bytes the trace never made durable are the base image's, so an
//! image costs memory in proportion to the trace's footprint, not to the device. Two
//! states that leave the same bytes have the same [`ImageId`], so [`ImageSet`] lets
//! the checker recover each distinct image once.
//!
//! The identity is a multiset hash: the lane-wise wrapping sum of the blake3 hashes of
//! every line's (line number, byte mask, bytes). It depends only on the bytes, like a
//! hash of the whole delta, but [`ImageBuilder::id`] computes it from the durable
//! lines' sum and the few lines a state changes, so a crash point's states are told
//! apart without building their images: only new images need [`ImageBuilder::build`].
//! [`CrashImage::switch`] then rewrites only the bytes two images differ in.
//!
//! A [`PointSnapshot`] is a crash point owned: its durable lines (shared, behind an
//! `Arc`, by the points around it while they do not change) and its in-flight lines.
//! An image is a snapshot plus a [`CrashState`]; its bytes are materialised only when
//! it is written into a checker's file, so a run holds a window of points, not every
//! image. [`PointSnapshot::changes`] gives an image's line hashes as changes to the
//! durable ones, which is what read-set pruning ([`crate::prune`]) compares.
//!
//! The only I/O here is writing ranges into a file the caller opened
//! ([`CrashImage::apply`], [`CrashImage::undo`]).

use crate::model::{FxSet, InFlightLine, ModelConfig, Replayer};
use crate::states::{is_lane, lane_key, CrashState};
use crate::trace::{FenceKind, FlushKind, Privilege, Record};
use std::fmt;
use std::fs::File;
use std::os::unix::fs::FileExt;

/// Identity of a crash image (see the module docs).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ImageId(pub [u8; 32]);

impl fmt::Display for ImageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for ImageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ImageId({self})")
    }
}

/// The bytes of one crash state that differ from the base image as written by the
/// trace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrashImage {
    /// (offset, start in `data`, length), sorted by offset, non-adjacent.
    ranges: Vec<(u64, u32, u32)>,
    data: Vec<u8>,
    id: ImageId,
}

impl CrashImage {
    /// The identity.
    pub fn id(&self) -> ImageId {
        self.id
    }

    /// The ranges, sorted by offset and coalesced (no two touch).
    pub fn ranges(&self) -> impl ExactSizeIterator<Item = (u64, &[u8])> + '_ {
        self.ranges
            .iter()
            .map(|&(off, start, len)| (off, &self.data[start as usize..(start + len) as usize]))
    }

    /// Total bytes in the delta.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// True when the image is the base image.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Write the delta into `image` (the base image's bytes).
    ///
    /// # Panics
    /// When a range lies past the end of `image`.
    pub fn apply_to_slice(&self, image: &mut [u8]) {
        for (off, bytes) in self.ranges() {
            image[off as usize..off as usize + bytes.len()].copy_from_slice(bytes);
        }
    }

    /// Restore the delta's ranges of `image` from `base`.
    pub fn undo_slice(&self, image: &mut [u8], base: &[u8]) {
        for (off, bytes) in self.ranges() {
            let r = off as usize..off as usize + bytes.len();
            image[r.clone()].copy_from_slice(&base[r]);
        }
    }

    /// Write the delta into a file holding the base image.
    pub fn apply(&self, file: &File) -> std::io::Result<()> {
        for (off, bytes) in self.ranges() {
            file.write_all_at(bytes, off)?;
        }
        Ok(())
    }

    /// Put the base image's bytes back over the delta's ranges (`base` is the whole
    /// base image, e.g. a read-only mapping of it).
    pub fn undo(&self, file: &File, base: &[u8]) -> std::io::Result<()> {
        for (off, bytes) in self.ranges() {
            let start = off as usize;
            let Some(orig) = base.get(start..start + bytes.len()) else {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!(
                        "delta range at {off}+{} lies past the {}-byte base image",
                        bytes.len(),
                        base.len()
                    ),
                ));
            };
            file.write_all_at(orig, off)?;
        }
        Ok(())
    }
}

/// Write `new` at `off` where it differs from `old` (what the file holds there): one
/// write from the first to the last differing byte.
fn write_diff(file: &File, off: u64, new: &[u8], old: &[u8]) -> std::io::Result<u64> {
    let Some(first) = new.iter().zip(old).position(|(a, b)| a != b) else {
        return Ok(0);
    };
    let last = new.len()
        - new
            .iter()
            .rev()
            .zip(old.iter().rev())
            .position(|(a, b)| a != b)
            .unwrap_or(0);
    file.write_all_at(&new[first..last], off + first as u64)?;
    Ok((last - first) as u64)
}

/// For `[start, end)`, call `f(a, b, Some(bytes))` for each part covered by `ranges`
/// and `f(a, b, None)` for each gap.
fn walk(
    ranges: &CrashImage,
    start: u64,
    end: u64,
    mut f: impl FnMut(u64, u64, Option<&[u8]>) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let mut i = ranges.ranges.partition_point(|r| r.0 + r.2 as u64 <= start);
    let mut pos = start;
    while pos < end {
        match ranges.ranges.get(i) {
            Some(&(off, data, len)) if off < end => {
                let r_end = off + len as u64;
                if off > pos {
                    f(pos, off, None)?;
                    pos = off;
                }
                let e = r_end.min(end);
                let d = &ranges.data[data as usize..(data + len) as usize];
                f(pos, e, Some(&d[(pos - off) as usize..(e - off) as usize]))?;
                pos = e;
                i += 1;
            }
            _ => {
                f(pos, end, None)?;
                pos = end;
            }
        }
    }
    Ok(())
}

impl CrashImage {
    /// The image that raw `writes` (PM file offsets, bytes) leave once all of them
    /// are durable: for images made by hand (corrupt-on-purpose tests, replaying a
    /// saved finding). The writes go through the model as kernel stores split at
    /// 8-byte words, every line they touch (of `cfg.line_size`) is flushed, then fenced.
    pub fn from_writes(writes: &[(u64, Vec<u8>)], cfg: ModelConfig) -> CrashImage {
        let line = u64::from(cfg.line_size);
        let mut r = Replayer::new(cfg);
        let mut lines = std::collections::BTreeSet::new();
        for (off, bytes) in writes {
            let mut k = 0usize;
            while k < bytes.len() {
                let at = off + k as u64;
                // A store must lie in one 8-byte word for the model.
                let n = ((8 - at % 8) as usize).min(bytes.len() - k);
                let mut v = [0u8; 8];
                v[..n].copy_from_slice(&bytes[k..k + n]);
                r.apply(&Record::Store {
                    offset: at,
                    size: n as u8,
                    value: u64::from_le_bytes(v),
                    non_temporal: false,
                    privilege: Privilege::Kernel,
                    vcpu: 0,
                    pc: 0,
                });
                lines.insert(at / line);
                k += n;
            }
        }
        for l in lines {
            r.apply(&Record::Flush {
                offset: l * line,
                flush: FlushKind::Clwb,
                privilege: Privilege::Kernel,
                vcpu: 0,
                pc: 0,
            });
        }
        r.apply(&Record::Fence {
            fence: FenceKind::Sfence,
            privilege: Privilege::Kernel,
            vcpu: 0,
            pc: 0,
        });
        ImageBuilder::new(&r).build(&CrashState::default())
    }
}

impl CrashImage {
    /// Turn a file holding image `prev` into one holding `self`, writing only the
    /// bytes the two differ in (`base` is the whole base image). Returns the bytes
    /// written. States of one crash point share their durable part, so moving
    /// between them costs a few lines, not the whole delta.
    pub fn switch(&self, prev: &CrashImage, file: &File, base: &[u8]) -> std::io::Result<u64> {
        let base_at = |a: u64, b: u64| {
            base.get(a as usize..b as usize).ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!(
                        "delta range {a}..{b} lies past the {}-byte base image",
                        base.len()
                    ),
                )
            })
        };
        let mut written = 0;
        // Bytes of `prev` that `self` does not cover go back to the base.
        for (off, bytes) in prev.ranges() {
            walk(self, off, off + bytes.len() as u64, |a, b, covered| {
                if covered.is_none() {
                    let old = &bytes[(a - off) as usize..(b - off) as usize];
                    written += write_diff(file, a, base_at(a, b)?, old)?;
                }
                Ok(())
            })?;
        }
        // Bytes of `self`, over what the file holds: `prev`'s bytes or the base.
        for (off, bytes) in self.ranges() {
            walk(prev, off, off + bytes.len() as u64, |a, b, old| {
                let new = &bytes[(a - off) as usize..(b - off) as usize];
                let old = match old {
                    Some(o) => o,
                    None => base_at(a, b)?,
                };
                written += write_diff(file, a, new, old)?;
                Ok(())
            })?;
        }
        Ok(written)
    }
}

struct Emitter {
    ranges: Vec<(u64, u32, u32)>,
    data: Vec<u8>,
}

impl Emitter {
    #[inline]
    fn push(&mut self, off: u64, bytes: &[u8]) {
        if let Some(last) = self.ranges.last_mut() {
            if last.0 + last.2 as u64 == off {
                last.2 += bytes.len() as u32;
                self.data.extend_from_slice(bytes);
                return;
            }
        }
        self.ranges
            .push((off, self.data.len() as u32, bytes.len() as u32));
        self.data.extend_from_slice(bytes);
    }

    fn emit_line(&mut self, line_offset: u64, bytes: &[u8], mask: &[u64]) {
        for (w, &m) in mask.iter().enumerate() {
            let mut m = m;
            let base = w * 64;
            while m != 0 {
                let start = m.trailing_zeros() as usize;
                let run = (m >> start).trailing_ones() as usize;
                let s = base + start;
                self.push(line_offset + s as u64, &bytes[s..s + run]);
                if start + run >= 64 {
                    break;
                }
                m &= !(((1u64 << run) - 1) << start);
            }
        }
    }

    fn finish(self, id: ImageId) -> CrashImage {
        CrashImage {
            ranges: self.ranges,
            data: self.data,
            id,
        }
    }
}

/// A line hash: blake3 of (line number, byte mask, masked bytes), as four words
/// (summed lane-wise into an [`ImageId`] or a pruning signature).
pub type LineHash = [u64; 4];

/// The hash of line `line` holding `bytes` where `mask` is set (the base image's
/// bytes elsewhere): the unit [`ImageId`]s and pruning signatures are sums of.
pub fn hash_line(line: u64, bytes: &[u8], mask: &[u64]) -> LineHash {
    let mut h = blake3::Hasher::new();
    h.update(&line.to_le_bytes());
    let mut masked = [0u8; 64];
    for (w, m) in mask.iter().enumerate() {
        h.update(&m.to_le_bytes());
        let chunk = &bytes[w * 64..((w + 1) * 64).min(bytes.len())];
        for (i, b) in chunk.iter().enumerate() {
            masked[i] = if m >> i & 1 == 1 { *b } else { 0 };
        }
        h.update(&masked[..chunk.len()]);
    }
    let out = h.finalize();
    let b = out.as_bytes();
    std::array::from_fn(|i| u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().expect("8 bytes")))
}

/// `a += b`, lane-wise wrapping.
pub fn add(a: &mut LineHash, b: &LineHash) {
    for i in 0..4 {
        a[i] = a[i].wrapping_add(b[i]);
    }
}

/// `a -= b`, lane-wise wrapping.
pub fn sub(a: &mut LineHash, b: &LineHash) {
    for i in 0..4 {
        a[i] = a[i].wrapping_sub(b[i]);
    }
}

/// The durable content at a crash point, owned: the lines holding durable bytes with
/// their masks and hashes, and prefix sums of the hashes so the sum over any range
/// of lines costs two binary searches. Crash points with the same durable content
/// share one (behind an `Arc`).
#[derive(Debug)]
pub struct DurableSnapshot {
    version: u64,
    line_size: usize,
    mask_words: usize,
    /// Sorted line numbers.
    lines: Vec<u64>,
    bytes: Vec<u8>,
    masks: Vec<u64>,
    hashes: Vec<LineHash>,
    /// `prefix[i]` is the sum of `hashes[..i]`.
    prefix: Vec<LineHash>,
}

impl DurableSnapshot {
    fn new(replayer: &Replayer) -> DurableSnapshot {
        let d = replayer.durable();
        let line_size = replayer.config().line_size as usize;
        let mask_words = line_size.div_ceil(64);
        let lines = d.sorted_lines();
        let mut bytes = Vec::with_capacity(lines.len() * line_size);
        let mut masks = Vec::with_capacity(lines.len() * mask_words);
        let mut hashes = Vec::with_capacity(lines.len());
        let mut prefix = Vec::with_capacity(lines.len() + 1);
        let mut sum = [0u64; 4];
        prefix.push(sum);
        for &l in &lines {
            let (b, m) = d.line(l).expect("listed line");
            bytes.extend_from_slice(b);
            masks.extend_from_slice(m);
            let h = hash_line(l, b, m);
            add(&mut sum, &h);
            hashes.push(h);
            prefix.push(sum);
        }
        DurableSnapshot {
            version: d.version(),
            line_size,
            mask_words,
            lines,
            bytes,
            masks,
            hashes,
            prefix,
        }
    }

    fn index(&self, line: u64) -> Option<usize> {
        self.lines.binary_search(&line).ok()
    }

    fn line(&self, i: usize) -> (&[u8], &[u64]) {
        (
            &self.bytes[i * self.line_size..(i + 1) * self.line_size],
            &self.masks[i * self.mask_words..(i + 1) * self.mask_words],
        )
    }

    /// The sum of the hashes of the durable lines numbered in `lines`.
    pub fn sum_in(&self, lines: std::ops::Range<u64>) -> LineHash {
        let a = self.lines.partition_point(|&l| l < lines.start);
        let b = self.lines.partition_point(|&l| l < lines.end).max(a);
        let mut s = self.prefix[b];
        sub(&mut s, &self.prefix[a]);
        s
    }

    /// Lines holding durable bytes.
    pub fn len(&self) -> usize {
        self.lines.len()
    }

    /// True when nothing is durable.
    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    /// Bytes of memory it holds (roughly).
    pub fn memory(&self) -> usize {
        self.lines.len() * (8 + self.line_size + self.mask_words * 8 + 64)
    }
}

/// An in-flight line, owned (see [`InFlightLine`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedLine {
    /// Offset of the line's first byte in the PM device.
    pub line_offset: u64,
    /// The queued pieces, oldest first.
    pub stores: Vec<crate::model::Piece>,
    /// How many of `stores` a flush has covered.
    pub flushed_prefix_len: usize,
}

/// One crash point, owned: its durable content (shared with the points around it
/// while it does not change) and its in-flight lines. A crash image is the snapshot
/// plus a [`CrashState`] (a choice of per-line prefixes): [`PointSnapshot::id`] tells
/// images apart without building them, [`PointSnapshot::build`] materialises one,
/// and the snapshot can outlive the replayer's advance (images are checked later,
/// by other tasks).
#[derive(Debug, Clone)]
pub struct PointSnapshot {
    shift: u32,
    line_size: usize,
    durable: std::sync::Arc<DurableSnapshot>,
    in_flight: Vec<OwnedLine>,
}

impl PointSnapshot {
    /// Capture the crash point the replayer is at. `prev` (the snapshot of an earlier
    /// point of the same replay) lends its durable content when it has not changed.
    pub fn new(replayer: &Replayer, prev: Option<&PointSnapshot>) -> PointSnapshot {
        let cfg = replayer.config();
        let durable = match prev {
            Some(p)
                if p.durable.version == replayer.durable().version()
                    && p.line_size == cfg.line_size as usize =>
            {
                p.durable.clone()
            }
            _ => std::sync::Arc::new(DurableSnapshot::new(replayer)),
        };
        PointSnapshot {
            shift: cfg.line_shift(),
            line_size: cfg.line_size as usize,
            durable,
            in_flight: replayer
                .in_flight()
                .iter()
                .map(|l| OwnedLine {
                    line_offset: l.line_offset,
                    stores: l.stores.to_vec(),
                    flushed_prefix_len: l.flushed_prefix_len,
                })
                .collect(),
        }
    }

    /// The in-flight lines, sorted by offset (feed them to
    /// [`crate::states::CrashStates::new`]).
    pub fn in_flight(&self) -> Vec<InFlightLine<'_>> {
        self.in_flight
            .iter()
            .map(|l| InFlightLine {
                line_offset: l.line_offset,
                stores: &l.stores,
                flushed_prefix_len: l.flushed_prefix_len,
            })
            .collect()
    }

    /// The durable content.
    pub fn durable(&self) -> &std::sync::Arc<DurableSnapshot> {
        &self.durable
    }

    /// The line size in bytes.
    pub fn line_size(&self) -> u32 {
        self.line_size as u32
    }

    /// Bytes of memory the in-flight lines hold (the durable part is
    /// [`DurableSnapshot::memory`], possibly shared).
    pub fn in_flight_memory(&self) -> usize {
        self.in_flight
            .iter()
            .map(|l| 48 + l.stores.len() * std::mem::size_of::<crate::model::Piece>())
            .sum()
    }

    /// What a state changes against the durable content, line by line: (line
    /// number, its hash in the image minus its durable hash), sorted by line. The
    /// image's hash sum over any set of lines is the durable sum there plus these.
    pub fn changes(&self, state: &CrashState) -> Vec<(u64, LineHash)> {
        let mut out = Vec::with_capacity(state.kept.len());
        let mut buf = vec![0u8; self.line_size];
        let mut mask = vec![0u64; self.line_size.div_ceil(64)];
        for (line, pieces) in self.kept_lines(state) {
            if pieces.is_empty() {
                continue;
            }
            let durable = self.durable.index(line);
            self.overlay(durable, line, &pieces, &mut buf, &mut mask);
            let mut d = hash_line(line, &buf, &mask);
            if let Some(i) = durable {
                sub(&mut d, &self.durable.hashes[i]);
            }
            out.push((line, d));
        }
        out
    }

    /// The identity of a state's image, without building it: cost in proportion to
    /// the lines the state keeps.
    pub fn id(&self, state: &CrashState) -> ImageId {
        let mut sum = self.durable.prefix[self.durable.lines.len()];
        for (_, d) in self.changes(state) {
            add(&mut sum, &d);
        }
        let mut id = [0u8; 32];
        for (i, v) in sum.iter().enumerate() {
            id[i * 8..i * 8 + 8].copy_from_slice(&v.to_le_bytes());
        }
        ImageId(id)
    }

    /// The pieces a state keeps, per in-flight line (sorted by line number): a prefix
    /// of the line's queue (the entry at its offset), plus the first `j` of its
    /// `ahead` pieces (the lane entry at its offset + 1, `x86-adr-nt`), in queue order.
    fn kept_lines<'s>(
        &'s self,
        state: &CrashState,
    ) -> Vec<(u64, std::borrow::Cow<'s, [crate::model::Piece]>)> {
        let mut out: Vec<(u64, std::borrow::Cow<'s, [crate::model::Piece]>)> =
            Vec::with_capacity(state.kept.len());
        let mut kept = state.kept.iter().peekable();
        while let Some(&(off, k)) = kept.next() {
            let line = off >> self.shift;
            let line_offset = line << self.shift;
            let (prefix, lane) = if !is_lane(off) {
                match kept.peek() {
                    Some(&&(lane_off, j)) if lane_off == lane_key(line_offset) => {
                        kept.next();
                        (k, j)
                    }
                    _ => (k, 0),
                }
            } else {
                (0, k)
            };
            let Ok(i) = self
                .in_flight
                .binary_search_by_key(&line_offset, |l| l.line_offset)
            else {
                continue;
            };
            let stores = &self.in_flight[i].stores;
            let prefix = (prefix as usize).min(stores.len());
            if lane == 0 {
                out.push((line, std::borrow::Cow::Borrowed(&stores[..prefix])));
                continue;
            }
            let mut ahead = 0;
            let pieces = stores
                .iter()
                .enumerate()
                .filter(|(i, p)| {
                    let take = *i < prefix || (p.ahead && ahead < lane);
                    ahead += p.ahead as u32;
                    take
                })
                .map(|(_, p)| *p)
                .collect();
            out.push((line, std::borrow::Cow::Owned(pieces)));
        }
        out
    }

    /// The line's durable content (slot `durable`) with `pieces` written over it.
    fn overlay(
        &self,
        durable: Option<usize>,
        line: u64,
        pieces: &[crate::model::Piece],
        buf: &mut [u8],
        mask: &mut [u64],
    ) {
        match durable {
            Some(i) => {
                let (b, m) = self.durable.line(i);
                buf.copy_from_slice(b);
                mask.copy_from_slice(m);
            }
            None => {
                buf.fill(0);
                mask.fill(0);
            }
        }
        let line_offset = line << self.shift;
        for p in pieces {
            let off = (p.offset - line_offset) as usize;
            let n = p.size as usize;
            buf[off..off + n].copy_from_slice(&p.bytes()[..n]);
            mask[off / 64] |= ((1u64 << n) - 1) << (off % 64);
        }
    }

    /// The image of one state. Lines of the state that are not in flight are ignored.
    pub fn build(&self, state: &CrashState) -> CrashImage {
        let mut out = Emitter {
            ranges: Vec::new(),
            data: Vec::new(),
        };
        let mut buf = vec![0u8; self.line_size];
        let mut mask = vec![0u64; self.line_size.div_ceil(64)];
        let d = &self.durable;
        // Merge the sorted durable lines with the sorted kept lines.
        let kept_lines = self.kept_lines(state);
        let mut kept = kept_lines.iter().map(|(l, p)| (*l, &p[..])).peekable();
        let mut dl = d.lines.iter().copied().enumerate().peekable();
        loop {
            let line = match (dl.peek(), kept.peek()) {
                (None, None) => break,
                (Some(&(_, l)), None) => l,
                (None, Some(&(k, _))) => k,
                (Some(&(_, l)), Some(&(k, _))) => l.min(k),
            };
            let slot = match dl.peek() {
                Some(&(i, l)) if l == line => {
                    dl.next();
                    Some(i)
                }
                _ => None,
            };
            let pieces = match kept.peek() {
                Some(&(k, p)) if k == line => {
                    kept.next();
                    p
                }
                _ => &[][..],
            };
            let line_offset = line << self.shift;
            if pieces.is_empty() {
                if let Some(i) = slot {
                    let (b, m) = d.line(i);
                    out.emit_line(line_offset, b, m);
                }
                continue;
            }
            self.overlay(slot, line, pieces, &mut buf, &mut mask);
            out.emit_line(line_offset, &buf, &mask);
        }
        out.finish(self.id(state))
    }
}

/// Builds the crash images of one crash point (a [`PointSnapshot`] with the
/// in-flight lines borrowed from the replayer, for [`crate::states::CrashStates`]).
#[derive(Debug)]
pub struct ImageBuilder<'r> {
    snap: PointSnapshot,
    in_flight: Vec<InFlightLine<'r>>,
}

impl<'r> ImageBuilder<'r> {
    /// Capture the crash point the replayer is at.
    pub fn new(replayer: &'r Replayer) -> Self {
        ImageBuilder {
            snap: PointSnapshot::new(replayer, None),
            in_flight: replayer.in_flight(),
        }
    }

    /// The identity of a state's image, without building it: cost in proportion to
    /// the lines the state keeps.
    pub fn id(&self, state: &CrashState) -> ImageId {
        self.snap.id(state)
    }

    /// The in-flight lines at this point, sorted by offset (feed them to
    /// [`crate::states::CrashStates::new`]).
    pub fn in_flight(&self) -> &[InFlightLine<'r>] {
        &self.in_flight
    }

    /// The image of one state. Lines of the state that are not in flight are ignored.
    pub fn build(&self, state: &CrashState) -> CrashImage {
        self.snap.build(state)
    }

    /// The owned snapshot behind it.
    pub fn snapshot(&self) -> &PointSnapshot {
        &self.snap
    }
}

/// The set of images already seen, so each distinct image is checked once.
#[derive(Debug, Default, Clone)]
pub struct ImageSet {
    seen: FxSet<ImageId>,
}

impl ImageSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Record an image; true when it had not been seen before.
    pub fn insert(&mut self, image: &CrashImage) -> bool {
        self.seen.insert(image.id)
    }

    /// Distinct images seen.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// True when nothing was inserted.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Model;

    #[test]
    fn hand_made_images_hold_their_writes() {
        for line_size in [64, 128] {
            let cfg = ModelConfig::new(Model::X86Adr, line_size).unwrap();
            let img = CrashImage::from_writes(
                &[
                    (3, vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 10]),
                    (4096, vec![0; 4096]),
                    (8192 + 120, vec![5; 16]),
                ],
                cfg,
            );
            let mut buf = vec![0xffu8; 3 * 4096];
            img.apply_to_slice(&mut buf);
            assert_eq!(
                &buf[..14],
                &[0xff, 0xff, 0xff, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 0xff]
            );
            assert!(buf[4096..8192].iter().all(|b| *b == 0));
            assert_eq!(buf[8192], 0xff);
            // A write across a line boundary is durable on both sides.
            assert!(buf[8192 + 120..8192 + 136].iter().all(|b| *b == 5));
            assert_eq!(buf[8192 + 136], 0xff);
        }
    }
}
