//! Crash images as deltas over the base image.
//!
//! A [`CrashImage`] is every byte the trace wrote that survives in one crash state:
//! the durable content plus the kept prefixes of in-flight lines, as sorted,
//! coalesced ranges. Bytes the trace never made durable are the base image's, so an
//! image costs memory in proportion to the trace's footprint, not to the device. Two
//! states that leave the same bytes have the same [`ImageId`] (blake3 of the ranges),
//! so [`ImageSet`] lets the checker recover each distinct image once.
//!
//! The only I/O here is writing ranges into a file the caller opened
//! ([`CrashImage::apply`], [`CrashImage::undo`]).

use crate::model::{FxSet, InFlightLine, Replayer};
use crate::states::CrashState;
use std::fmt;
use std::fs::File;
use std::os::unix::fs::FileExt;

/// Identity of a crash image: blake3 over its ranges (offset, length, bytes).
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

    fn finish(self) -> CrashImage {
        let mut h = blake3::Hasher::new();
        for &(off, start, len) in &self.ranges {
            h.update(&off.to_le_bytes());
            h.update(&len.to_le_bytes());
            h.update(&self.data[start as usize..(start + len) as usize]);
        }
        CrashImage {
            ranges: self.ranges,
            data: self.data,
            id: ImageId(*h.finalize().as_bytes()),
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
}

impl<'r> ImageBuilder<'r> {
    /// Capture the crash point the replayer is at.
    pub fn new(replayer: &'r Replayer) -> Self {
        let cfg = replayer.config();
        ImageBuilder {
            replayer,
            line_size: cfg.line_size as usize,
            shift: cfg.line_shift(),
            durable_lines: replayer.durable().sorted_lines(),
            in_flight: replayer.in_flight(),
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
            .filter_map(|&(off, k)| {
                let i = self
                    .in_flight
                    .binary_search_by_key(&off, |l| l.line_offset)
                    .ok()?;
                Some((
                    off >> self.shift,
                    &self.in_flight[i].stores[..(k as usize).min(self.in_flight[i].stores.len())],
                ))
            })
            .peekable();
        let mut dl = self.durable_lines.iter().copied().peekable();
        loop {
            let line = match (dl.peek(), kept.peek()) {
                (None, None) => break,
                (Some(&d), None) => d,
                (None, Some(&(k, _))) => k,
                (Some(&d), Some(&(k, _))) => d.min(k),
            };
            let has_durable = dl.peek() == Some(&line);
            if has_durable {
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
            match durable.line(line) {
                Some((b, m)) => {
                    buf.copy_from_slice(b);
                    mask.copy_from_slice(m);
                }
                None => {
                    mask.fill(0);
                }
            }
            for p in pieces {
                let off = (p.offset - line_offset) as usize;
                let n = p.size as usize;
                buf[off..off + n].copy_from_slice(&p.bytes()[..n]);
                mask[off / 64] |= ((1u64 << n) - 1) << (off % 64);
            }
            out.emit_line(line_offset, &buf, &mask);
        }
        out.finish()
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
