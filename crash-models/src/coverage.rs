//! Kernel code coverage: which translation blocks of the file-system code a traced run
//! executed, the fuzzer's feedback.
//!
//! The harness chooses the code ([`CodeRanges`]: the functions of the ext4, jbd2 and
//! xfs modules and of the DAX core, from the guest's kallsyms) and hands it to the
//! tracer as a ranges file; the tracer records the start address of every translation
//! block it executes inside those ranges, from the run-begin marker to the guest's
//! end, and writes the set ([`Blocks`]) when QEMU exits. A workload whose set holds a
//! block no earlier workload of the campaign reached joins the campaign's corpus.
//!
//! A translation block is QEMU's unit of translated code: it starts at a branch target
//! (or after a page boundary or a block that was full) and runs straight to its end,
//! so its start address stands for a basic block of the kernel (a coarser one when QEMU
//! joins blocks across an unconditional jump). Traces are deterministic by default
//! (`-icount`, a scripted run), so the same workload reaches the same blocks.
//!
//! Both files are small binary formats with a magic and version, decoded without
//! panicking on any input (`tests` below).

use crate::readset::{leb128, read_leb128};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::ops::Range;

/// The first bytes of a ranges file.
pub const RANGES_MAGIC: &[u8; 4] = b"PMCR";
/// The first bytes of a blocks file.
pub const BLOCKS_MAGIC: &[u8; 4] = b"PMCB";
/// The version of both formats.
pub const VERSION: u8 = 1;

/// Why a coverage file could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CoverageError {
    /// The file does not start with the expected magic and [`VERSION`].
    #[error("not a pmcrash coverage file of version {VERSION} (bad magic or version)")]
    BadMagic,
    /// The file ends inside a field.
    #[error("coverage file truncated at byte {0}")]
    Truncated(usize),
    /// A LEB128 number is malformed.
    #[error("malformed number at byte {0} of the coverage file")]
    BadNumber(usize),
    /// An entry is out of order, empty or past 2^64.
    #[error("coverage entry {0} is out of order, empty or out of bounds")]
    BadEntry(u64),
    /// Bytes follow the last entry.
    #[error("{0} bytes after the last coverage entry")]
    Trailing(usize),
    /// A hexadecimal form (the campaign state's) is malformed.
    #[error("coverage in hexadecimal: {0}")]
    BadHex(String),
}

fn number(bytes: &[u8], at: &mut usize) -> Result<u64, CoverageError> {
    read_leb128(bytes, at).map_err(|e| match e {
        crate::readset::ReadSetError::Truncated(n) => CoverageError::Truncated(n),
        _ => CoverageError::BadNumber(*at),
    })
}

fn header(bytes: &[u8], magic: &[u8; 4]) -> Result<(u64, usize), CoverageError> {
    if bytes.len() < 5 || &bytes[..4] != magic || bytes[4] != VERSION {
        return Err(CoverageError::BadMagic);
    }
    let mut at = 5;
    let count = number(bytes, &mut at)?;
    Ok((count, at))
}

/// The code whose blocks count: sorted, disjoint, non-adjacent address ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CodeRanges {
    ranges: Vec<Range<u64>>,
}

impl CodeRanges {
    /// The union of `ranges` (empty ones are left out).
    pub fn new(ranges: impl IntoIterator<Item = Range<u64>>) -> CodeRanges {
        let mut v: Vec<Range<u64>> = ranges.into_iter().filter(|r| r.start < r.end).collect();
        v.sort_by_key(|r| r.start);
        let mut out: Vec<Range<u64>> = Vec::with_capacity(v.len());
        for r in v {
            match out.last_mut() {
                Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
                _ => out.push(r),
            }
        }
        CodeRanges { ranges: out }
    }

    /// The ranges.
    pub fn ranges(&self) -> &[Range<u64>] {
        &self.ranges
    }

    /// True when no code is covered.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Whether `addr` lies in a range (a binary search: the tracer asks this for every
    /// translation block it translates).
    pub fn contains(&self, addr: u64) -> bool {
        let i = self.ranges.partition_point(|r| r.end <= addr);
        self.ranges.get(i).is_some_and(|r| r.start <= addr)
    }

    /// The ranges file: [`RANGES_MAGIC`], [`VERSION`], the count (LEB128), then per
    /// range the gap since the previous range's end (from 0) and the length, LEB128.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + 6 * self.ranges.len());
        out.extend_from_slice(RANGES_MAGIC);
        out.push(VERSION);
        leb128(&mut out, self.ranges.len() as u64);
        let mut prev = 0;
        for r in &self.ranges {
            leb128(&mut out, r.start - prev);
            leb128(&mut out, r.end - r.start);
            prev = r.end;
        }
        out
    }

    /// Decode a ranges file; malformed input is an error, never a panic.
    pub fn decode(bytes: &[u8]) -> Result<CodeRanges, CoverageError> {
        let (count, mut at) = header(bytes, RANGES_MAGIC)?;
        let mut ranges = Vec::new();
        let mut prev = 0u64;
        for i in 0..count {
            let gap = number(bytes, &mut at)?;
            let len = number(bytes, &mut at)?;
            if len == 0 || (i > 0 && gap == 0) {
                return Err(CoverageError::BadEntry(i));
            }
            let start = prev.checked_add(gap).ok_or(CoverageError::BadEntry(i))?;
            let end = start.checked_add(len).ok_or(CoverageError::BadEntry(i))?;
            ranges.push(start..end);
            prev = end;
        }
        if at != bytes.len() {
            return Err(CoverageError::Trailing(bytes.len() - at));
        }
        Ok(CodeRanges { ranges })
    }
}

/// The start addresses of the translation blocks a run executed, sorted and distinct.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Blocks {
    addrs: Vec<u64>,
}

impl FromIterator<u64> for Blocks {
    fn from_iter<I: IntoIterator<Item = u64>>(iter: I) -> Blocks {
        let mut addrs: Vec<u64> = iter.into_iter().collect();
        addrs.sort_unstable();
        addrs.dedup();
        Blocks { addrs }
    }
}

impl Blocks {
    /// Blocks in the set.
    pub fn len(&self) -> usize {
        self.addrs.len()
    }

    /// True when no block was reached.
    pub fn is_empty(&self) -> bool {
        self.addrs.is_empty()
    }

    /// The addresses, ascending.
    pub fn addrs(&self) -> &[u64] {
        &self.addrs
    }

    /// Whether `addr` starts a block of the set.
    pub fn contains(&self, addr: u64) -> bool {
        self.addrs.binary_search(&addr).is_ok()
    }

    /// How many of `other`'s blocks are not in `self`.
    pub fn count_new(&self, other: &Blocks) -> usize {
        other.addrs.iter().filter(|a| !self.contains(**a)).count()
    }

    /// Add `other`'s blocks; returns how many were new.
    pub fn merge(&mut self, other: &Blocks) -> usize {
        let before = self.addrs.len();
        let mut out = Vec::with_capacity(before + other.addrs.len());
        let (mut i, mut j) = (0, 0);
        while i < self.addrs.len() || j < other.addrs.len() {
            let (a, b) = (self.addrs.get(i), other.addrs.get(j));
            let next = match (a, b) {
                (Some(&x), Some(&y)) if x == y => {
                    i += 1;
                    j += 1;
                    x
                }
                (Some(&x), Some(&y)) if x < y => {
                    i += 1;
                    x
                }
                (Some(&x), None) => {
                    i += 1;
                    x
                }
                (_, Some(&y)) => {
                    j += 1;
                    y
                }
                (None, None) => unreachable!("the loop condition"),
            };
            out.push(next);
        }
        self.addrs = out;
        self.addrs.len() - before
    }

    /// The blocks file: [`BLOCKS_MAGIC`], [`VERSION`], the count (LEB128), then each
    /// address as the gap since the previous one (from 0), LEB128.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + 3 * self.addrs.len());
        out.extend_from_slice(BLOCKS_MAGIC);
        out.push(VERSION);
        leb128(&mut out, self.addrs.len() as u64);
        let mut prev = 0;
        for &a in &self.addrs {
            leb128(&mut out, a - prev);
            prev = a;
        }
        out
    }

    /// Decode a blocks file; malformed input is an error, never a panic.
    pub fn decode(bytes: &[u8]) -> Result<Blocks, CoverageError> {
        let (count, mut at) = header(bytes, BLOCKS_MAGIC)?;
        let mut addrs = Vec::new();
        let mut prev = 0u64;
        for i in 0..count {
            let gap = number(bytes, &mut at)?;
            if i > 0 && gap == 0 {
                return Err(CoverageError::BadEntry(i));
            }
            prev = prev.checked_add(gap).ok_or(CoverageError::BadEntry(i))?;
            addrs.push(prev);
        }
        if at != bytes.len() {
            return Err(CoverageError::Trailing(bytes.len() - at));
        }
        Ok(Blocks { addrs })
    }
}

/// In JSON (a campaign's state) a set is the hexadecimal of its blocks file: a few
/// bytes per block instead of a 20-digit number.
impl Serialize for Blocks {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let hex: String = self.encode().iter().map(|b| format!("{b:02x}")).collect();
        s.serialize_str(&hex)
    }
}

impl<'de> Deserialize<'de> for Blocks {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Blocks, D::Error> {
        let hex = String::deserialize(d)?;
        let bad = |m: &str| serde::de::Error::custom(CoverageError::BadHex(m.to_owned()));
        if hex.len() % 2 != 0 {
            return Err(bad("an odd number of digits"));
        }
        let bytes = (0..hex.len())
            .step_by(2)
            .map(|i| {
                hex.get(i..i + 2)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
            })
            .collect::<Option<Vec<u8>>>()
            .ok_or_else(|| bad("not hexadecimal digits"))?;
        Blocks::decode(&bytes).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    proptest! {
        #[test]
        fn ranges_contain_what_a_brute_force_union_does(
            rs in proptest::collection::vec((0u64..2000, 0u64..100), 0..20),
            probes in proptest::collection::vec(0u64..2200, 0..50),
        ) {
            let ranges: Vec<Range<u64>> = rs.iter().map(|&(s, l)| s..s + l).collect();
            let c = CodeRanges::new(ranges.clone());
            for p in probes {
                prop_assert_eq!(c.contains(p), ranges.iter().any(|r| r.contains(&p)));
            }
            prop_assert_eq!(CodeRanges::decode(&c.encode()).unwrap(), c);
        }

        #[test]
        fn blocks_merge_is_a_set_union(
            a in proptest::collection::vec(any::<u64>(), 0..50),
            b in proptest::collection::vec(any::<u64>(), 0..50),
        ) {
            let (x, y): (Blocks, Blocks) = (a.iter().copied().collect(), b.iter().copied().collect());
            let want: BTreeSet<u64> = a.iter().chain(&b).copied().collect();
            let new = x.count_new(&y);
            let mut m = x.clone();
            prop_assert_eq!(m.merge(&y), new);
            prop_assert_eq!(m.addrs().to_vec(), want.into_iter().collect::<Vec<_>>());
            prop_assert_eq!(Blocks::decode(&m.encode()).unwrap(), m.clone());
            let json = serde_json::to_string(&m).unwrap();
            prop_assert_eq!(serde_json::from_str::<Blocks>(&json).unwrap(), m);
        }

        #[test]
        fn decoding_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = Blocks::decode(&bytes);
            let _ = CodeRanges::decode(&bytes);
            let mut b = BLOCKS_MAGIC.to_vec();
            b.push(VERSION);
            b.extend_from_slice(&bytes);
            let _ = Blocks::decode(&b);
        }
    }

    #[test]
    fn malformed_files_are_errors() {
        assert_eq!(Blocks::decode(b"PMCB"), Err(CoverageError::BadMagic));
        assert_eq!(
            Blocks::decode(&[b'P', b'M', b'C', b'B', VERSION, 2, 5, 0]),
            Err(CoverageError::BadEntry(1))
        );
        assert!(matches!(
            Blocks::decode(&[b'P', b'M', b'C', b'B', VERSION, 2, 5]),
            Err(CoverageError::Truncated(_))
        ));
        assert_eq!(
            CodeRanges::decode(&[b'P', b'M', b'C', b'R', VERSION, 1, 5, 0]),
            Err(CoverageError::BadEntry(0))
        );
        assert!(serde_json::from_str::<Blocks>("\"zz\"").is_err());
    }
}
