//! The PM bytes one recovery read: the key of read-set pruning.
//!
//! A checker guest is a deterministic function of the bytes it reads from PM: two crash
//! images that agree on every byte one check read get the same recovery (the same
//! mount outcome, dump, fsck result and console), so the second needs no guest run. The
//! tracer records the loads of a check (mount with journal or log recovery, dump,
//! unmount; fsck too when it runs in the guest) at line granularity; this type holds them. Line granularity is
//! conservative: images equal on every line read are equal on every byte read.
//!
//! The same file says which PM bytes the check stored ([`Stored`]): an image that
//! takes another's recovery also takes that recovery's stores, so the host can build
//! what the recovery left of it (its own bytes, overwritten where the check stored)
//! and run fsck on that, outside the guest (`docs/pruning.md`).

use std::ops::Range;

/// The first bytes of a read-set file.
pub const MAGIC: &[u8; 4] = b"PMRS";
/// The file format's version.
pub const VERSION: u8 = 2;

/// What the tracer writes at the end of one check (`reads=` mode): which check it was,
/// whether every load could be placed, and the lines read.
///
/// The file format (little-endian): [`MAGIC`], [`VERSION`] (1 byte), the line size (u32),
/// the check id (u64), the count of loads that could not be placed on a PM line (u64,
/// e.g. a load crossing into a page whose physical address is unknown), the number of
/// ranges (u64), then per range two LEB128 numbers: the gap in lines since the end of
/// the previous range (from line 0 for the first) and the range's length in lines;
/// then the stored bytes: a flag byte (1: tracked, 0: not, and nothing follows), the
/// number of lines stored to (u64), and per line the gap in lines since the previous
/// one (LEB128; the first from line 0) and its 64-bit mask of bytes stored (u64).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadSetFile {
    /// The id the agent gave the check (its begin and end markers carry it).
    pub check: u64,
    /// Loads that could not be placed: a read set with any is incomplete and must not
    /// be used to prune.
    pub unresolved: u64,
    /// The lines read.
    pub reads: ReadSet,
    /// The bytes the check stored, when tracked (lines of at most 64 bytes).
    pub stored: Option<Stored>,
}

/// The PM bytes one check stored: per line (of at most 64 bytes), a mask of its bytes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Stored {
    line_size: u32,
    /// (line number, mask of bytes), sorted by line, masks non-zero.
    lines: Vec<(u64, u64)>,
}

impl Stored {
    /// The stored bytes of these (line, mask) pairs, in any order, with repeats (masks
    /// are merged; empty masks are dropped). `line_size` is at most 64.
    pub fn from_masks(line_size: u32, masks: impl IntoIterator<Item = (u64, u64)>) -> Stored {
        let mut v: Vec<(u64, u64)> = masks.into_iter().filter(|m| m.1 != 0).collect();
        v.sort_unstable();
        let mut lines: Vec<(u64, u64)> = Vec::with_capacity(v.len());
        for (l, m) in v {
            match lines.last_mut() {
                Some(last) if last.0 == l => last.1 |= m,
                _ => lines.push((l, m)),
            }
        }
        Stored { line_size, lines }
    }

    /// The stored bytes as sorted, disjoint, non-adjacent byte ranges of the PM file.
    pub fn ranges(&self) -> Vec<Range<u64>> {
        let ls = u64::from(self.line_size);
        let mut out: Vec<Range<u64>> = Vec::new();
        for &(line, mask) in &self.lines {
            let mut m = mask;
            while m != 0 {
                let a = u64::from(m.trailing_zeros());
                let run = u64::from((m >> a).trailing_ones());
                let start = line * ls + a;
                match out.last_mut() {
                    Some(r) if r.end == start => r.end = start + run,
                    _ => out.push(start..start + run),
                }
                m = if a + run >= 64 {
                    0
                } else {
                    m & !(((1u64 << run) - 1) << a)
                };
            }
        }
        out
    }

    /// Bytes stored.
    pub fn bytes(&self) -> u64 {
        self.lines.iter().map(|l| u64::from(l.1.count_ones())).sum()
    }
}

/// Why a read-set file could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadSetError {
    /// The file does not start with [`MAGIC`] and [`VERSION`].
    #[error("not a pmcrash read-set file of version {VERSION} (bad magic or version)")]
    BadMagic,
    /// The file ends inside a field.
    #[error("read-set file truncated at byte {0}")]
    Truncated(usize),
    /// The line size is not a power of two of at least 1.
    #[error("read-set line size {0} is not a power of two")]
    BadLineSize(u32),
    /// A range is empty, touches the previous one, or ends past 2^64 bytes.
    #[error("read-set range {index} is empty, adjacent to the previous one or out of bounds")]
    BadRange {
        /// The range's index.
        index: u64,
    },
    /// A stored line repeats the previous one, ends past 2^64 bytes, or has an empty
    /// mask or one wider than the line.
    #[error("stored line {index} of the read-set file repeats the previous one, is out of bounds or has a bad mask")]
    BadStored {
        /// The entry's index.
        index: u64,
    },
    /// The stored-bytes flag is neither 0 nor 1 (or 1 with lines over 64 bytes).
    #[error("bad stored-bytes flag {0} in the read-set file")]
    BadStoredFlag(u8),
    /// A LEB128 number is longer than 64 bits or not in its shortest form.
    #[error("malformed LEB128 number at byte {0} of the read-set file")]
    BadNumber(usize),
    /// Bytes follow the last range.
    #[error("{0} bytes after the last read-set range")]
    Trailing(usize),
}

impl ReadSetFile {
    /// The file's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let r = &self.reads;
        let mut out = Vec::with_capacity(29 + 4 * r.ranges.len());
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.extend_from_slice(&r.line_size.to_le_bytes());
        out.extend_from_slice(&self.check.to_le_bytes());
        out.extend_from_slice(&self.unresolved.to_le_bytes());
        out.extend_from_slice(&(r.ranges.len() as u64).to_le_bytes());
        let ls = u64::from(r.line_size.max(1));
        let mut prev = 0u64;
        for range in &r.ranges {
            let (start, end) = (range.start / ls, range.end.div_ceil(ls));
            leb128(&mut out, start - prev);
            leb128(&mut out, end - start);
            prev = end;
        }
        match &self.stored {
            None => out.push(0),
            Some(st) => {
                out.push(1);
                out.extend_from_slice(&(st.lines.len() as u64).to_le_bytes());
                let mut prev = 0u64;
                for &(line, mask) in &st.lines {
                    leb128(&mut out, line - prev);
                    out.extend_from_slice(&mask.to_le_bytes());
                    prev = line;
                }
            }
        }
        out
    }

    /// Decode a file; every malformed input is an error, never a panic.
    pub fn decode(bytes: &[u8]) -> Result<ReadSetFile, ReadSetError> {
        let mut at = 0usize;
        let mut take = |n: usize| -> Result<&[u8], ReadSetError> {
            let s = bytes
                .get(at..at + n)
                .ok_or(ReadSetError::Truncated(bytes.len()))?;
            at += n;
            Ok(s)
        };
        if take(4)? != MAGIC || take(1)? != [VERSION] {
            return Err(ReadSetError::BadMagic);
        }
        let u32_le = |s: &[u8]| u32::from_le_bytes(s.try_into().expect("4 bytes"));
        let u64_le = |s: &[u8]| u64::from_le_bytes(s.try_into().expect("8 bytes"));
        let line_size = u32_le(take(4)?);
        if !line_size.is_power_of_two() {
            return Err(ReadSetError::BadLineSize(line_size));
        }
        let check = u64_le(take(8)?);
        let unresolved = u64_le(take(8)?);
        let count = u64_le(take(8)?);
        let ls = u64::from(line_size);
        let mut ranges = Vec::new();
        let mut prev = 0u64;
        for index in 0..count {
            let bad = ReadSetError::BadRange { index };
            let gap = read_leb128(bytes, &mut at)?;
            let len = read_leb128(bytes, &mut at)?;
            if len == 0 || (index > 0 && gap == 0) {
                return Err(bad);
            }
            let start = prev.checked_add(gap).ok_or(bad.clone())?;
            let end = start.checked_add(len).ok_or(bad.clone())?;
            let (bs, be) = (
                start.checked_mul(ls).ok_or(bad.clone())?,
                end.checked_mul(ls).ok_or(bad)?,
            );
            ranges.push(bs..be);
            prev = end;
        }
        let flag = *bytes.get(at).ok_or(ReadSetError::Truncated(bytes.len()))?;
        at += 1;
        let stored = match flag {
            0 => None,
            1 if line_size <= 64 => {
                let n = u64_le(
                    bytes
                        .get(at..at + 8)
                        .ok_or(ReadSetError::Truncated(bytes.len()))?,
                );
                at += 8;
                let mut lines = Vec::new();
                let mut prev = 0u64;
                for index in 0..n {
                    let bad = ReadSetError::BadStored { index };
                    let gap = read_leb128(bytes, &mut at)?;
                    if index > 0 && gap == 0 {
                        return Err(bad);
                    }
                    let line = prev.checked_add(gap).ok_or(bad.clone())?;
                    line.checked_add(1)
                        .and_then(|e| e.checked_mul(ls))
                        .ok_or(bad.clone())?;
                    let mask = u64_le(
                        bytes
                            .get(at..at + 8)
                            .ok_or(ReadSetError::Truncated(bytes.len()))?,
                    );
                    at += 8;
                    let valid = if line_size >= 64 {
                        u64::MAX
                    } else {
                        (1u64 << line_size) - 1
                    };
                    if mask == 0 || mask & !valid != 0 {
                        return Err(bad);
                    }
                    lines.push((line, mask));
                    prev = line;
                }
                Some(Stored { line_size, lines })
            }
            _ => return Err(ReadSetError::BadStoredFlag(flag)),
        };
        if at != bytes.len() {
            return Err(ReadSetError::Trailing(bytes.len() - at));
        }
        Ok(ReadSetFile {
            check,
            unresolved,
            reads: ReadSet { line_size, ranges },
            stored,
        })
    }
}

pub(crate) fn leb128(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

pub(crate) fn read_leb128(bytes: &[u8], at: &mut usize) -> Result<u64, ReadSetError> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *bytes.get(*at).ok_or(ReadSetError::Truncated(bytes.len()))?;
        *at += 1;
        let bits = u64::from(b & 0x7f);
        // Past 64 bits, or a redundant zero byte: not the one canonical encoding.
        if (shift == 63 && bits > 1) || (shift > 0 && b == 0) {
            return Err(ReadSetError::BadNumber(*at - 1));
        }
        v |= bits << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(ReadSetError::BadNumber(*at))
}

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

    /// Number of lines read.
    pub fn lines(&self) -> u64 {
        self.bytes() / u64::from(self.line_size.max(1))
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
        assert_eq!(r.lines(), 4);
    }

    #[test]
    fn file_layout_is_as_documented() {
        let f = ReadSetFile {
            check: 7,
            unresolved: 0,
            reads: ReadSet::from_lines(64, [2, 3, 200]),
            stored: Some(Stored::from_masks(64, [(5, 0xff), (1, 1)])),
        };
        let b = f.encode();
        assert_eq!(&b[..5], b"PMRS\x02");
        assert_eq!(&b[5..9], &64u32.to_le_bytes());
        assert_eq!(&b[9..17], &7u64.to_le_bytes());
        assert_eq!(&b[25..33], &2u64.to_le_bytes());
        // Gap 2, length 2; gap 200 - 4 = 196 (two LEB128 bytes), length 1.
        assert_eq!(&b[33..38], &[2, 2, 0xc4, 0x01, 1]);
        // Stored: tracked, 2 lines; line 1 (gap 1) mask 1, line 5 (gap 4) mask 0xff.
        assert_eq!(b[38], 1);
        assert_eq!(&b[39..47], &2u64.to_le_bytes());
        assert_eq!(b[47], 1);
        assert_eq!(&b[48..56], &1u64.to_le_bytes());
        assert_eq!(b[56], 4);
        assert_eq!(&b[57..], &0xffu64.to_le_bytes());
        assert_eq!(ReadSetFile::decode(&b), Ok(f));
    }

    #[test]
    fn malformed_files_are_errors() {
        let good = ReadSetFile {
            check: 1,
            unresolved: 3,
            reads: ReadSet::from_lines(64, [0, 5]),
            stored: None,
        }
        .encode();
        assert_eq!(ReadSetFile::decode(b"PMRX"), Err(ReadSetError::BadMagic));
        assert!(matches!(
            ReadSetFile::decode(&good[..good.len() - 1]),
            Err(ReadSetError::Truncated(_))
        ));
        let mut trailing = good.clone();
        trailing.push(0);
        assert_eq!(
            ReadSetFile::decode(&trailing),
            Err(ReadSetError::Trailing(1))
        );
        let mut bad_ls = good.clone();
        bad_ls[5..9].copy_from_slice(&48u32.to_le_bytes());
        assert_eq!(
            ReadSetFile::decode(&bad_ls),
            Err(ReadSetError::BadLineSize(48))
        );
        let mut bad_flag = good.clone();
        *bad_flag.last_mut().unwrap() = 2;
        assert_eq!(
            ReadSetFile::decode(&bad_flag),
            Err(ReadSetError::BadStoredFlag(2))
        );
        // A second range adjacent to the first (gap 0) is not canonical.
        let mut adjacent = good.clone();
        let n = adjacent.len();
        adjacent[n - 3] = 0;
        assert_eq!(
            ReadSetFile::decode(&adjacent),
            Err(ReadSetError::BadRange { index: 1 })
        );
    }

    mod props {
        use super::super::*;
        use proptest::prelude::*;

        /// The reference: a read set is the set of lines, nothing else.
        fn lines_of(r: &ReadSet) -> std::collections::BTreeSet<u64> {
            let ls = u64::from(r.line_size());
            r.ranges()
                .iter()
                .flat_map(|x| (x.start / ls)..(x.end / ls))
                .collect()
        }

        proptest! {
            #[test]
            fn file_round_trip(
                shift in 0u32..13,
                lines in proptest::collection::vec(
                    prop_oneof![0u64..4096, any::<u64>().prop_map(|l| l >> 13)], 0..200),
                check in any::<u64>(),
                unresolved in any::<u64>(),
                stored in proptest::collection::vec((0u64..100_000, any::<u64>()), 0..50),
            ) {
                let f = ReadSetFile {
                    check,
                    unresolved,
                    reads: ReadSet::from_lines(1 << shift, lines.iter().copied()),
                    stored: (shift <= 6).then(|| Stored::from_masks(
                        1 << shift,
                        stored.iter().map(|&(l, m)| (l, m & ((1u128 << (1u32 << shift)) - 1) as u64)),
                    )),
                };
                let back = ReadSetFile::decode(&f.encode()).unwrap();
                prop_assert_eq!(&back, &f);
                let want: std::collections::BTreeSet<u64> = lines.iter().copied().collect();
                prop_assert_eq!(lines_of(&back.reads), want);
            }

            /// The ranges of stored bytes are exactly the bytes of the masks.
            #[test]
            fn stored_ranges_are_the_masks_bytes(
                masks in proptest::collection::vec((0u64..64, any::<u64>()), 0..40),
            ) {
                let st = Stored::from_masks(64, masks.iter().copied());
                let mut want = std::collections::BTreeSet::new();
                for &(l, m) in &masks {
                    for b in 0..64 {
                        if m & (1 << b) != 0 {
                            want.insert(l * 64 + b);
                        }
                    }
                }
                let ranges = st.ranges();
                let got: std::collections::BTreeSet<u64> =
                    ranges.iter().flat_map(|r| r.clone()).collect();
                prop_assert_eq!(&got, &want);
                prop_assert_eq!(st.bytes(), want.len() as u64);
                for w in ranges.windows(2) {
                    prop_assert!(w[0].end < w[1].start);
                }
            }

            #[test]
            fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
                // Past the magic and the current version, so decoding gets to the fields.
                let mut b = MAGIC.to_vec();
                b.push(VERSION);
                b.extend(bytes);
                if let Ok(f) = ReadSetFile::decode(&b) {
                    // Whatever decodes, encodes back to the same bytes (one canonical form).
                    prop_assert_eq!(f.encode(), b);
                }
            }
        }
    }
}
