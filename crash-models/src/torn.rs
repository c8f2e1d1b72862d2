//! Kernel block writes to PM, torn ones, and the structures they belong to.
//!
//! Under fsdax the pmem block driver writes a bio by copying each segment into PM
//! with `memcpy_flushcache` (non-temporal stores; durable only at the next fence), and
//! nothing makes a sector of it atomic: a crash can persist any subset of its lines
//! (the kernel's `Documentation/driver-api/nvdimm/btt.rst`; only BTT, which disables
//! DAX, gives sector atomicity). A [`BlockWrite`] is one such copy as the trace shows
//! it: the in-flight stores made by the copy routine, contiguous in PM and in program
//! order. The harness decides which program counters belong to the copy routine (by
//! kernel symbol); this module only groups, tests and names. Rule and reasoning:
//! `docs/torn-writes.md`.

use crate::model::InFlightLine;
use crate::states::CrashState;
use crate::trace::{Privilege, Record};
use std::ops::Range;

/// One kernel block write still in flight at a crash point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockWrite {
    /// The PM bytes it covers (offsets in the PM file).
    pub range: Range<u64>,
    /// Its first and last store records.
    pub records: Range<u64>,
    /// Every piece it queued: (line offset, index in that line's queue).
    pub pieces: Vec<(u64, u32)>,
}

impl BlockWrite {
    /// The lines it touches, sorted, each once.
    pub fn lines(&self) -> Vec<u64> {
        let mut l: Vec<u64> = self.pieces.iter().map(|p| p.0).collect();
        l.sort_unstable();
        l.dedup();
        l
    }

    /// Pieces of it a state keeps.
    pub fn kept_by(&self, state: &CrashState) -> usize {
        self.pieces
            .iter()
            .filter(|(line, idx)| *idx < state.kept_of(*line))
            .count()
    }

    /// True when `state` keeps part of it, not all and not nothing.
    pub fn torn_by(&self, state: &CrashState) -> bool {
        let kept = self.kept_by(state);
        kept > 0 && kept < self.pieces.len()
    }
}

/// The kernel block writes among a crash point's in-flight lines: the pieces whose
/// store record is a kernel store with a program counter `is_copy` accepts, in record
/// order, split into runs wherever the next piece is not on the same vCPU or does not
/// start where the previous one ended.
pub fn block_writes(
    in_flight: &[InFlightLine<'_>],
    records: &[Record],
    is_copy: impl Fn(u64) -> bool,
) -> Vec<BlockWrite> {
    // (record, offset, end, vcpu, line, index in line)
    let mut pieces: Vec<(u64, u64, u64, u16, u64, u32)> = Vec::new();
    for l in in_flight {
        for (i, p) in l.stores.iter().enumerate() {
            if let Some(Record::Store {
                privilege: Privilege::Kernel,
                pc,
                vcpu,
                ..
            }) = records.get(p.record as usize)
            {
                if is_copy(*pc) {
                    pieces.push((
                        p.record,
                        p.offset,
                        p.offset + u64::from(p.size),
                        *vcpu,
                        l.line_offset,
                        i as u32,
                    ));
                }
            }
        }
    }
    pieces.sort_unstable();
    let mut out: Vec<BlockWrite> = Vec::new();
    let mut last: Option<(u64, u16)> = None;
    for (record, offset, end, vcpu, line, idx) in pieces {
        match (out.last_mut(), last) {
            (Some(w), Some((prev_end, prev_vcpu))) if prev_end == offset && prev_vcpu == vcpu => {
                w.range.end = end;
                w.records.end = record + 1;
                w.pieces.push((line, idx));
            }
            _ => out.push(BlockWrite {
                range: offset..end,
                records: record..record + 1,
                pieces: vec![(line, idx)],
            }),
        }
        last = Some((end, vcpu));
    }
    out
}

/// The lines of `writes` grouped by the aligned `sector` (a power of two, at least a
/// line) they lie in: under BTT-like sector atomicity a state keeps each group whole
/// or drops it whole.
pub fn sector_groups(writes: &[BlockWrite], sector: u64) -> Vec<Vec<u64>> {
    let mut by_sector: std::collections::BTreeMap<u64, Vec<u64>> = Default::default();
    for w in writes {
        for line in w.lines() {
            by_sector.entry(line / sector).or_default().push(line);
        }
    }
    by_sector
        .into_values()
        .map(|mut v| {
            v.sort_unstable();
            v.dedup();
            v
        })
        .collect()
}

/// Decides which failing states of one crash point fail only because they tear a
/// kernel block write (`docs/torn-writes.md`): a state whose problems are all of
/// classes that no state of the same point without a torn block write shows, when at
/// least one such untorn state exists.
///
/// `states` are (tears some block write, the problem classes of the state), one per
/// state of the point; the answer says, per state, whether it is a torn-write state.
pub fn torn_only<C: PartialEq>(states: &[(bool, Vec<C>)]) -> Vec<bool> {
    let untorn: Vec<&Vec<C>> = states
        .iter()
        .filter(|(torn, _)| !torn)
        .map(|(_, c)| c)
        .collect();
    if untorn.is_empty() {
        return vec![false; states.len()];
    }
    states
        .iter()
        .map(|(torn, classes)| {
            *torn
                && !classes.is_empty()
                && classes
                    .iter()
                    .all(|c| untorn.iter().all(|u| !u.contains(c)))
        })
        .collect()
}

/// Named regions of a file system's on-PM layout, read from its superblock, for
/// saying which structure a torn write belongs to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Layout {
    /// (PM byte range, name), sorted by start.
    regions: Vec<(Range<u64>, String)>,
}

impl Layout {
    /// The regions known, sorted by start.
    pub fn regions(&self) -> &[(Range<u64>, String)] {
        &self.regions
    }

    /// The name of the structure at PM offset `at`, if known.
    pub fn name_of(&self, at: u64) -> Option<&str> {
        self.regions
            .iter()
            .find(|(r, _)| r.contains(&at))
            .map(|(_, n)| n.as_str())
    }

    /// The names of the structures a PM range overlaps, in order, each once
    /// (`ext4 primary superblock and ext4 group descriptors`), if any is known.
    pub fn names_in(&self, range: &Range<u64>) -> Option<String> {
        let mut names: Vec<&str> = Vec::new();
        for (r, n) in &self.regions {
            if r.start < range.end && range.start < r.end && !names.contains(&n.as_str()) {
                names.push(n);
            }
        }
        (!names.is_empty()).then(|| names.join(" and "))
    }

    /// The layout of an ext4 file system that starts `base` bytes into the PM file;
    /// `read(offset, len)` reads the PM file (short or empty where it cannot). Knows
    /// the primary superblock, the group descriptors and the journal (its superblock
    /// and the rest of the log) when the journal is inode 8 with an extent tree of
    /// depth 0.
    pub fn ext4(base: u64, read: impl Fn(u64, usize) -> Vec<u8>) -> Layout {
        let sb = read(base + 1024, 1024);
        let le16 = |b: &[u8], o: usize| b.get(o..o + 2).map(|x| u16::from_le_bytes([x[0], x[1]]));
        let le32 = |b: &[u8], o: usize| {
            b.get(o..o + 4)
                .map(|x| u32::from_le_bytes([x[0], x[1], x[2], x[3]]))
        };
        let mut regions = Vec::new();
        if le16(&sb, 0x38) != Some(0xEF53) {
            return Layout::default();
        }
        let bs = 1024u64 << le32(&sb, 0x18).unwrap_or(2).min(6);
        // The superblock is bytes 1024..2048; with blocks over 1 KiB it shares block 0,
        // which the kernel writes whole.
        let sb_end = if bs == 1024 { 2048 } else { bs };
        regions.push((base..base + sb_end, "ext4 primary superblock".to_owned()));
        let gdt = if bs == 1024 { 2 * bs } else { bs };
        regions.push((
            base + gdt..base + gdt + bs,
            "ext4 group descriptors".to_owned(),
        ));
        let journal = (|| {
            let inum = le32(&sb, 0xE0)?;
            let inode_size = u64::from(le16(&sb, 0x58)?);
            let per_group = u64::from(le32(&sb, 0x28)?);
            if inum == 0 || per_group == 0 {
                return None;
            }
            let group = u64::from(inum - 1) / per_group;
            let idx = u64::from(inum - 1) % per_group;
            let desc_size = match le16(&sb, 0xFE) {
                Some(d) if d >= 32 => u64::from(d),
                _ => 32,
            };
            let gd = read(base + gdt + group * desc_size, 12);
            let table = u64::from(le32(&gd, 8)?);
            let inode = read(base + table * bs + idx * inode_size, 160);
            // i_block: an extent header, then (depth 0) the extents.
            let blk = inode.get(0x28..0x28 + 60)?;
            if le16(blk, 0)? != 0xF30A || le16(blk, 6)? != 0 {
                return None;
            }
            let entries = le16(blk, 2)?;
            let mut out = Vec::new();
            for e in 0..entries.min(4) as usize {
                let x = 12 + 12 * e;
                let logical = u64::from(le32(blk, x)?);
                let len = u64::from(le16(blk, x + 4)? & 0x7fff);
                let start = (u64::from(le16(blk, x + 6)?) << 32) | u64::from(le32(blk, x + 8)?);
                out.push((logical, start, len));
            }
            Some(out)
        })();
        for (logical, start, len) in journal.unwrap_or_default() {
            let at = base + start * bs;
            if logical == 0 {
                regions.push((at..at + bs, "jbd2 journal superblock".to_owned()));
                regions.push((
                    at + bs..at + len * bs,
                    "jbd2 journal (log blocks)".to_owned(),
                ));
            } else {
                regions.push((at..at + len * bs, "jbd2 journal (log blocks)".to_owned()));
            }
        }
        regions.sort_by_key(|r| r.0.start);
        Layout { regions }
    }

    /// The layout of an XFS file system that starts `base` bytes into the PM file:
    /// allocation group 0's superblock, AGF, AGI and AGFL sectors and the internal log.
    pub fn xfs(base: u64, read: impl Fn(u64, usize) -> Vec<u8>) -> Layout {
        let sb = read(base, 256);
        if sb.get(0..4) != Some(b"XFSB") {
            return Layout::default();
        }
        let be16 = |o: usize| sb.get(o..o + 2).map(|x| u16::from_be_bytes([x[0], x[1]]));
        let be32 = |o: usize| {
            sb.get(o..o + 4)
                .map(|x| u32::from_be_bytes([x[0], x[1], x[2], x[3]]))
        };
        let be64 = |o: usize| {
            sb.get(o..o + 8)
                .and_then(|x| x.try_into().ok())
                .map(u64::from_be_bytes)
        };
        let sect = u64::from(be16(102).unwrap_or(512));
        let mut regions = vec![
            (base..base + sect, "XFS primary superblock".to_owned()),
            (base + sect..base + 2 * sect, "XFS AGF (AG 0)".to_owned()),
            (
                base + 2 * sect..base + 3 * sect,
                "XFS AGI (AG 0)".to_owned(),
            ),
            (
                base + 3 * sect..base + 4 * sect,
                "XFS AGFL (AG 0)".to_owned(),
            ),
        ];
        let log = (|| {
            let bs = u64::from(be32(4)?);
            let agblocks = u64::from(be32(84)?);
            let logstart = be64(48)?;
            let logblocks = u64::from(be32(96)?);
            let agblklog = u32::from(*sb.get(124)?);
            if logstart == 0 {
                return None;
            }
            let agno = logstart >> agblklog;
            let agbno = logstart & ((1u64 << agblklog) - 1);
            let at = base + (agno * agblocks + agbno) * bs;
            Some(at..at + logblocks * bs)
        })();
        if let Some(r) = log {
            regions.push((r, "XFS log".to_owned()));
        }
        regions.sort_by_key(|r| r.0.start);
        Layout { regions }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Piece;
    use crate::trace::Privilege;

    fn store(offset: u64, pc: u64, vcpu: u16) -> Record {
        Record::Store {
            offset,
            size: 8,
            value: 1,
            non_temporal: true,
            privilege: Privilege::Kernel,
            vcpu,
            pc,
        }
    }

    #[test]
    fn runs_split_at_gaps_vcpus_and_other_code() {
        // Records 0..16: a 128-byte copy (two lines); 16: another function's store;
        // 17..25: a copy elsewhere.
        let mut records: Vec<Record> = (0..16).map(|i| store(i * 8, 0x100, 0)).collect();
        records.push(store(0x1000, 0x200, 0));
        records.extend((0..8).map(|i| store(0x2000 + i * 8, 0x100, 0)));
        let piece = |r: usize| {
            let Record::Store { offset, .. } = records[r] else {
                unreachable!()
            };
            Piece {
                offset,
                value: 1,
                size: 8,
                record: r as u64,
                vcpu: 0,
                ahead: false,
            }
        };
        let l0: Vec<Piece> = (0..8).map(piece).collect();
        let l1: Vec<Piece> = (8..16).map(piece).collect();
        let l2: Vec<Piece> = vec![piece(16)];
        let l3: Vec<Piece> = (17..25).map(piece).collect();
        let lines = [
            InFlightLine {
                line_offset: 0,
                stores: &l0,
                flushed_prefix_len: 8,
            },
            InFlightLine {
                line_offset: 64,
                stores: &l1,
                flushed_prefix_len: 8,
            },
            InFlightLine {
                line_offset: 0x1000,
                stores: &l2,
                flushed_prefix_len: 0,
            },
            InFlightLine {
                line_offset: 0x2000,
                stores: &l3,
                flushed_prefix_len: 8,
            },
        ];
        let w = block_writes(&lines, &records, |pc| pc == 0x100);
        assert_eq!(w.len(), 2);
        assert_eq!(w[0].range, 0..128);
        assert_eq!(w[0].lines(), vec![0, 64]);
        assert_eq!(w[1].range, 0x2000..0x2040);
        let half = CrashState { kept: vec![(0, 8)] };
        assert!(w[0].torn_by(&half));
        assert!(!w[1].torn_by(&half));
        let part_line = CrashState {
            kept: vec![(0x2000, 3)],
        };
        assert!(w[1].torn_by(&part_line));
        let whole = CrashState {
            kept: vec![(0, 8), (64, 8)],
        };
        assert!(!w[0].torn_by(&whole));
        assert_eq!(sector_groups(&w, 512), vec![vec![0, 64], vec![0x2000]]);
        assert_eq!(sector_groups(&w, 64), vec![vec![0], vec![64], vec![0x2000]]);
    }

    #[test]
    fn torn_only_needs_an_untorn_state_without_the_class() {
        // (torn?, classes): none and all are fine, two torn states fail.
        let s = [
            (false, vec![]),
            (false, vec![]),
            (true, vec!["fs"]),
            (true, vec![]),
        ];
        assert_eq!(torn_only(&s), vec![false, false, true, false]);
        // An untorn state fails the same way: not the tear's fault.
        let s = [(false, vec!["fs"]), (true, vec!["fs"])];
        assert_eq!(torn_only(&s), vec![false, false]);
        // Another class in the torn state that untorn states also show: not only.
        let s = [(false, vec!["dur"]), (true, vec!["fs", "dur"])];
        assert_eq!(torn_only(&s), vec![false, false]);
        // Only torn states: nothing to compare with.
        let s = [(true, vec!["fs"])];
        assert_eq!(torn_only(&s), vec![false]);
    }

    #[test]
    fn layouts_from_superblocks() {
        // ext4: 4 KiB blocks, journal inode 8 in group 0's table at block 5, one
        // extent of 16 blocks at block 100.
        let base = 2u64 << 20;
        let mut img = vec![0u8; 8 << 20];
        let sb = (base + 1024) as usize;
        img[sb + 0x38..sb + 0x3a].copy_from_slice(&0xEF53u16.to_le_bytes());
        img[sb + 0x18..sb + 0x1c].copy_from_slice(&2u32.to_le_bytes());
        img[sb + 0x28..sb + 0x2c].copy_from_slice(&64u32.to_le_bytes());
        img[sb + 0x58..sb + 0x5a].copy_from_slice(&256u16.to_le_bytes());
        img[sb + 0xE0..sb + 0xE4].copy_from_slice(&8u32.to_le_bytes());
        let gd = (base + 4096) as usize;
        img[gd + 8..gd + 12].copy_from_slice(&5u32.to_le_bytes());
        let ino = (base + 5 * 4096 + 7 * 256) as usize + 0x28;
        img[ino..ino + 2].copy_from_slice(&0xF30Au16.to_le_bytes());
        img[ino + 2..ino + 4].copy_from_slice(&1u16.to_le_bytes());
        img[ino + 12 + 4..ino + 12 + 6].copy_from_slice(&16u16.to_le_bytes());
        img[ino + 12 + 8..ino + 12 + 12].copy_from_slice(&100u32.to_le_bytes());
        let read = |o: u64, n: usize| {
            img.get(o as usize..(o as usize + n).min(img.len()))
                .unwrap_or(&[])
                .to_vec()
        };
        let l = Layout::ext4(base, read);
        assert_eq!(l.name_of(base + 1500), Some("ext4 primary superblock"));
        assert_eq!(l.name_of(base + 4096), Some("ext4 group descriptors"));
        assert_eq!(l.name_of(base), Some("ext4 primary superblock"));
        assert_eq!(
            l.names_in(&(base..base + 8192)).as_deref(),
            Some("ext4 primary superblock and ext4 group descriptors")
        );
        assert_eq!(l.names_in(&(base + 200 * 4096..base + 201 * 4096)), None);
        assert_eq!(
            l.name_of(base + 100 * 4096 + 10),
            Some("jbd2 journal superblock")
        );
        assert_eq!(
            l.name_of(base + 101 * 4096),
            Some("jbd2 journal (log blocks)")
        );
        assert_eq!(l.name_of(base + 116 * 4096), None);
        assert_eq!(Layout::xfs(base, read), Layout::default());
        // XFS: 4 KiB blocks, 512-byte sectors, log at fsblock 2 of AG 1 (agblklog 10).
        let mut img = vec![0u8; 1 << 20];
        img[0..4].copy_from_slice(b"XFSB");
        img[4..8].copy_from_slice(&4096u32.to_be_bytes());
        img[48..56].copy_from_slice(&((1u64 << 10) | 2).to_be_bytes());
        img[84..88].copy_from_slice(&1000u32.to_be_bytes());
        img[96..100].copy_from_slice(&3u32.to_be_bytes());
        img[102..104].copy_from_slice(&512u16.to_be_bytes());
        img[124] = 10;
        let l = Layout::xfs(0, |o, n| {
            img.get(o as usize..(o as usize + n).min(img.len()))
                .unwrap_or(&[])
                .to_vec()
        });
        assert_eq!(l.name_of(0), Some("XFS primary superblock"));
        assert_eq!(l.name_of(600), Some("XFS AGF (AG 0)"));
        assert_eq!(l.name_of(1002 * 4096 + 5), Some("XFS log"));
        assert_eq!(l.name_of(1005 * 4096), None);
    }
}
