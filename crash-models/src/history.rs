//! Every byte each file of a workload ever had: what the stale-data check and the
//! byte-level promise checks compare a recovered state against.
//!
//! A crash may leave any mix of a file's old and new lines, so a recovered block is
//! fine when each of its bytes is zero or a byte some op wrote at that offset of a
//! file that had that name at some time. Anything else is stale: data from another
//! file or from a freed block.
//!
//! Sparse like [`crate::fsmodel`]: memory grows with the bytes written (each byte
//! once, plus one copy of every version of the 4 KiB blocks the ops touched), never
//! with file sizes.

use crate::fsmodel::{Change, FsModel, InodeId, NodeKind};
use crate::ops::Op;
use crate::promise::BlockSource;
use crate::protocol::{EntryKind, FsEntry, OpResult, DUMP_BLOCK};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

/// One piece of a write, clipped to one block: (offset in the block, bytes).
type Piece = (u32, Arc<[u8]>);

/// The history of a workload's files.
#[derive(Debug, Clone, Default)]
pub struct History {
    /// Per (inode, block index): every piece of every write that reached that block.
    pieces: HashMap<(InodeId, u64), Vec<Piece>>,
    /// Per path: every inode that had that name (regular files only).
    names: BTreeMap<String, BTreeSet<InodeId>>,
    /// Inodes whose contents the model does not know (from the base image).
    unknown: BTreeSet<InodeId>,
    /// Bytes of every version of every touched block (full, the partial last block,
    /// and the partial block zero-padded), by blake3 hex.
    blocks: HashMap<String, Arc<Vec<u8>>>,
}

fn hex(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

impl History {
    /// Replay the ops (skipping the ones that failed) and remember every version.
    pub fn new(ops: &[Op], results: Option<&[OpResult]>) -> History {
        let mut h = History::default();
        let mut fs = FsModel::new();
        for (i, op) in ops.iter().enumerate() {
            let changes = fs.apply(i, op, crate::fsmodel::result_of(results, i));
            let mut touched: BTreeSet<(InodeId, u64)> = BTreeSet::new();
            for c in &changes {
                match c {
                    Change::Data(ino, range) => {
                        let Some(content) = fs.file(*ino) else {
                            continue;
                        };
                        // The blocks with written bytes in the range, and the two
                        // at its ends (a punch or a cut inside a block changes
                        // it); a block with no written byte is all zeros, which
                        // the dump never lists. Never a loop over a huge range.
                        let end = range.end.min(content.size);
                        for (s, bytes) in content.written(range.start, end) {
                            let (from, to) =
                                (s.max(range.start), (s + bytes.len() as u64).min(end));
                            for b in from / DUMP_BLOCK..to.div_ceil(DUMP_BLOCK) {
                                touched.insert((*ino, b));
                            }
                        }
                        touched.insert((*ino, range.start / DUMP_BLOCK));
                        if end > range.start {
                            touched.insert((*ino, (end - 1) / DUMP_BLOCK));
                        }
                    }
                    Change::Size(ino) => {
                        if let Some(c) = fs.file(*ino) {
                            if c.size > 0 {
                                touched.insert((*ino, (c.size - 1) / DUMP_BLOCK));
                            }
                        }
                    }
                    _ => {}
                }
            }
            // The writes themselves: stores and writes add pieces.
            for c in &changes {
                if let Change::Data(ino, range) = c {
                    let Some(content) = fs.file(*ino) else {
                        continue;
                    };
                    for (s, bytes) in content.written(range.start, range.end.min(content.size)) {
                        h.add_pieces(*ino, s, bytes);
                    }
                }
            }
            for (ino, b) in touched {
                if let Some(c) = fs.file(ino) {
                    if b * DUMP_BLOCK < c.size {
                        h.add_block(&c.block(b));
                    }
                }
            }
            for (p, &ino) in &fs.names {
                match fs.inodes[ino].kind {
                    NodeKind::File => {
                        h.names.entry(p.clone()).or_default().insert(ino);
                    }
                    NodeKind::Unknown => {
                        h.unknown.insert(ino);
                        h.names.entry(p.clone()).or_default().insert(ino);
                    }
                    _ => {}
                }
            }
        }
        h
    }

    fn add_pieces(&mut self, ino: InodeId, start: u64, bytes: &[u8]) {
        let end = start + bytes.len() as u64;
        for b in start / DUMP_BLOCK..end.div_ceil(DUMP_BLOCK) {
            let bs = b * DUMP_BLOCK;
            let s = start.max(bs);
            let e = end.min(bs + DUMP_BLOCK);
            let piece: Arc<[u8]> = bytes[(s - start) as usize..(e - start) as usize].into();
            let list = self.pieces.entry((ino, b)).or_default();
            let off = (s - bs) as u32;
            if !list.iter().any(|(o, p)| *o == off && **p == *piece) {
                list.push((off, piece));
            }
        }
    }

    fn add_block(&mut self, bytes: &[u8]) {
        if bytes.iter().all(|b| *b == 0) {
            return;
        }
        self.blocks
            .entry(hex(bytes))
            .or_insert_with(|| Arc::new(bytes.to_vec()));
        if bytes.len() < DUMP_BLOCK as usize {
            let mut full = bytes.to_vec();
            full.resize(DUMP_BLOCK as usize, 0);
            self.blocks
                .entry(hex(&full))
                .or_insert_with(|| Arc::new(full));
        }
    }

    /// The block hashes whose bytes the history knows: the checker need not fetch
    /// those from the recovered image.
    pub fn known_hashes(&self) -> BTreeSet<String> {
        self.blocks.keys().cloned().collect()
    }

    /// Whether `byte` at file offset `offset` could have been written to a file that
    /// had `path` as its name.
    fn written_there(&self, inos: &BTreeSet<InodeId>, offset: u64, byte: u8) -> bool {
        let b = offset / DUMP_BLOCK;
        let at = (offset % DUMP_BLOCK) as u32;
        inos.iter().any(|ino| {
            self.pieces.get(&(*ino, b)).is_some_and(|list| {
                list.iter().any(|(o, p)| {
                    at >= *o && ((at - o) as usize) < p.len() && p[(at - o) as usize] == byte
                })
            })
        })
    }

    /// Stale bytes in the dumped files: for each file with a block holding a byte
    /// that is neither zero nor ever written there, (path, file offset of the first
    /// such byte, the byte, the block's hash, whose data it is when known). Blocks
    /// whose bytes `blocks` cannot give are not judged.
    pub fn stale(&self, entries: &[FsEntry], blocks: &dyn BlockSource) -> Vec<StaleBlock> {
        let mut out = Vec::new();
        for e in entries.iter().filter(|e| e.kind == EntryKind::File) {
            let Some(inos) = self.names.get(&e.path) else {
                continue;
            };
            if inos.iter().any(|i| self.unknown.contains(i)) {
                continue;
            }
            for (&b, h) in &e.blocks {
                let Some(bytes) = blocks.block(h) else {
                    continue;
                };
                let base = b * DUMP_BLOCK;
                let bad = bytes.iter().enumerate().find(|(j, &byte)| {
                    byte != 0 && !self.written_there(inos, base + *j as u64, byte)
                });
                if let Some((j, &byte)) = bad {
                    out.push(StaleBlock {
                        path: e.path.clone(),
                        block: b,
                        file_offset: base + j as u64,
                        byte,
                        hash: h.clone(),
                        owner: self.owner_of(bytes, &e.path),
                    });
                }
            }
        }
        out
    }

    /// Which other file's data a block holds, if any (at least 8 bytes in common at
    /// the start of one of its blocks). The first match in path and block order, so
    /// the message is the same on every run.
    fn owner_of(&self, bytes: &[u8], not: &str) -> Option<String> {
        let mut pieces: Vec<(&(InodeId, u64), &Vec<Piece>)> = self.pieces.iter().collect();
        pieces.sort_by_key(|(k, _)| **k);
        for (path, inos) in &self.names {
            if path == not {
                continue;
            }
            for ((ino, b), list) in pieces.iter().copied() {
                if !inos.contains(ino) {
                    continue;
                }
                for (o, p) in list {
                    let n = p.len().min(bytes.len().saturating_sub(*o as usize));
                    if *o == 0 && n >= 8 && p[..n] == bytes[..n] {
                        return Some(format!("{path}'s data (block {b})"));
                    }
                }
            }
        }
        None
    }
}

impl BlockSource for History {
    fn block(&self, hash: &str) -> Option<&[u8]> {
        self.blocks.get(hash).map(|b| b.as_slice())
    }
}

/// A block of a recovered file that holds bytes no op wrote there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaleBlock {
    /// The file.
    pub path: String,
    /// The block index.
    pub block: u64,
    /// The first stale byte's file offset.
    pub file_offset: u64,
    /// Its value.
    pub byte: u8,
    /// The block's hash (to find it in the image).
    pub hash: String,
    /// Whose data it is, when known ("b's data (block 1)").
    pub owner: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::{seeded_bytes, Workload};
    use crate::promise::NoBlocks;

    struct Fetched(BTreeMap<String, Vec<u8>>);
    impl BlockSource for Fetched {
        fn block(&self, hash: &str) -> Option<&[u8]> {
            self.0.get(hash).map(|v| v.as_slice())
        }
    }

    fn file(path: &str, data: &[u8]) -> FsEntry {
        FsEntry {
            ino: 12,
            ..FsEntry::file(path, data)
        }
    }

    #[test]
    fn foreign_bytes_are_stale_and_a_mix_of_versions_is_not() {
        let src = "[[ops]]\nop=\"open\"\npath=\"a\"\nfd=\"a\"\ncreate=true\n[[ops]]\nop=\"write\"\nfd=\"a\"\ndata={seed=1,len=8192}\n[[ops]]\nop=\"open\"\npath=\"b\"\nfd=\"b\"\ncreate=true\n[[ops]]\nop=\"write\"\nfd=\"b\"\ndata={seed=2,len=4096}\n";
        let w = Workload::parse(src, "t.toml").unwrap();
        let h = History::new(&w.ops, None);
        let a = seeded_bytes(1, 8192);
        let foreign = a[4096..].to_vec();
        // a's second block is a known version: its bytes come from the history.
        assert!(h.known_hashes().contains(&hex(&foreign)));
        let entries = [file("a", &a), file("b", &foreign)];
        let p = h.stale(&entries, &h);
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].path, "b");
        assert_eq!(p[0].owner.as_deref(), Some("a's data (block 1)"));
        // Half new, half zero (a torn write): not stale.
        let mut torn = seeded_bytes(2, 4096);
        torn[2048..].fill(0);
        let fetched = Fetched(BTreeMap::from([(hex(&torn), torn.clone())]));
        assert!(h.stale(&[file("b", &torn)], &fetched).is_empty());
        // Unknown bytes are not judged.
        assert!(h.stale(&[file("b", &foreign)], &NoBlocks).is_empty());
    }

    #[test]
    fn memory_follows_bytes_written_not_sizes() {
        let src = "[[ops]]\nop=\"open\"\npath=\"a\"\nfd=\"a\"\ncreate=true\n\
                   [[ops]]\nop=\"pwrite\"\nfd=\"a\"\noffset=1099511627776\ndata=\"end\"\n\
                   [[ops]]\nop=\"ftruncate\"\nfd=\"a\"\nlen=1000000000000000\n";
        let w = Workload::parse(src, "t.toml").unwrap();
        let h = History::new(&w.ops, None);
        assert_eq!(h.pieces.len(), 1);
        assert!(h.blocks.len() <= 4, "{}", h.blocks.len());
    }
}
