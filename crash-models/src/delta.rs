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
//! The only I/O here is writing ranges into a file the caller opened
//! ([`CrashImage::apply`], [`CrashImage::undo`]).

use crate::model::{FxSet, InFlightLine, ModelConfig, Replayer};
use crate::states::CrashState;
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

/// Builds the crash images of one crash point (borrowing the replayer there).
#[derive(Debug)]
pub struct ImageBuilder<'r> {
    replayer: &'r Replayer,
    line_size: usize,
    shift: u32,
    durable_lines: Vec<u64>,
    in_flight: Vec<InFlightLine<'r>>,
    /// Per durable line, its hash (aligned with `durable_lines`).
    durable_hashes: Vec<[u64; 4]>,
    durable_sum: [u64; 4],
}

fn line_hash(line: u64, bytes: &[u8], mask: &[u64]) -> [u64; 4] {
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

fn add(a: &mut [u64; 4], b: &[u64; 4]) {
    for i in 0..4 {
        a[i] = a[i].wrapping_add(b[i]);
    }
}

fn sub(a: &mut [u64; 4], b: &[u64; 4]) {
    for i in 0..4 {
        a[i] = a[i].wrapping_sub(b[i]);
    }
}

impl<'r> ImageBuilder<'r> {
    /// Capture the crash point the replayer is at.
    pub fn new(replayer: &'r Replayer) -> Self {
        let cfg = replayer.config();
        let durable_lines = replayer.durable().sorted_lines();
        let durable_hashes: Vec<[u64; 4]> = durable_lines
            .iter()
            .map(|&l| {
                let (b, m) = replayer.durable().line(l).expect("listed line");
                line_hash(l, b, m)
            })
            .collect();
        let mut durable_sum = [0u64; 4];
        for h in &durable_hashes {
            add(&mut durable_sum, h);
        }
        ImageBuilder {
            replayer,
            line_size: cfg.line_size as usize,
            shift: cfg.line_shift(),
            durable_lines,
            in_flight: replayer.in_flight(),
            durable_hashes,
            durable_sum,
        }
    }

    /// The identity of a state's image, without building it: cost in proportion to
    /// the lines the state keeps.
    pub fn id(&self, state: &CrashState) -> ImageId {
        let mut sum = self.durable_sum;
        let mut buf = vec![0u8; self.line_size];
        let mut mask = vec![0u64; self.line_size.div_ceil(64)];
        for &(off, k) in &state.kept {
            let Some(pieces) = self.kept_pieces(off, k) else {
                continue;
            };
            if pieces.is_empty() {
                continue;
            }
            let line = off >> self.shift;
            if let Ok(i) = self.durable_lines.binary_search(&line) {
                sub(&mut sum, &self.durable_hashes[i]);
            }
            self.overlay(line, pieces, &mut buf, &mut mask);
            add(&mut sum, &line_hash(line, &buf, &mask));
        }
        let mut id = [0u8; 32];
        for (i, v) in sum.iter().enumerate() {
            id[i * 8..i * 8 + 8].copy_from_slice(&v.to_le_bytes());
        }
        ImageId(id)
    }

    fn kept_pieces(&self, line_offset: u64, k: u32) -> Option<&'r [crate::model::Piece]> {
        let i = self
            .in_flight
            .binary_search_by_key(&line_offset, |l| l.line_offset)
            .ok()?;
        let stores = self.in_flight[i].stores;
        Some(&stores[..(k as usize).min(stores.len())])
    }

    /// The line's durable content with `pieces` written over it.
    fn overlay(&self, line: u64, pieces: &[crate::model::Piece], buf: &mut [u8], mask: &mut [u64]) {
        match self.replayer.durable().line(line) {
            Some((b, m)) => {
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

    /// The in-flight lines at this point, sorted by offset (feed them to
    /// [`crate::states::CrashStates::new`]).
    pub fn in_flight(&self) -> &[InFlightLine<'r>] {
        &self.in_flight
    }

    /// The image of one state. Lines of the state that are not in flight are ignored.
    pub fn build(&self, state: &CrashState) -> CrashImage {
        let mut out = Emitter {
            ranges: Vec::new(),
            data: Vec::new(),
        };
        let mask_words = self.line_size.div_ceil(64);
        let mut buf = vec![0u8; self.line_size];
        let mut mask = vec![0u64; mask_words];
        let durable = self.replayer.durable();
        // Merge the sorted durable lines with the sorted kept lines.
        let mut kept = state
            .kept
            .iter()
            .filter_map(|&(off, k)| Some((off >> self.shift, self.kept_pieces(off, k)?)))
            .peekable();
        let mut dl = self.durable_lines.iter().copied().peekable();
        loop {
            let line = match (dl.peek(), kept.peek()) {
                (None, None) => break,
                (Some(&d), None) => d,
                (None, Some(&(k, _))) => k,
                (Some(&d), Some(&(k, _))) => d.min(k),
            };
            if dl.peek() == Some(&line) {
                dl.next();
            }
            let pieces = match kept.peek() {
                Some(&(k, p)) if k == line => {
                    kept.next();
                    p
                }
                _ => &[][..],
            };
            let line_offset = line << self.shift;
            if pieces.is_empty() {
                if let Some((b, m)) = durable.line(line) {
                    out.emit_line(line_offset, b, m);
                }
                continue;
            }
            self.overlay(line, pieces, &mut buf, &mut mask);
            out.emit_line(line_offset, &buf, &mask);
        }
        out.finish(self.id(state))
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
