//! The oracle: verdicts for one recovered crash state.
//!
//! A recovered state is judged on three things (DESIGN.md, "The oracle"):
//!
//! * the recovery itself ([`crate::check::Recovery::corruption`]): the mount works,
//!   fsck finds nothing, the kernel prints no oops, warning or corruption report;
//! * the promises the ops made before the crash point
//!   ([`crash_models::promise::promises`]): a broken contract is a durability or
//!   atomicity violation, a broken flush-only expectation is `unsafe-flush-only`;
//! * stale data: every byte of a file the workload made must be zero or a byte some
//!   op wrote at that offset of that file (any version: a crash may leave any mix of
//!   old and new lines). The dump carries one blake3 per 4 KiB block; a block whose
//!   hash is a version the workload produced is fine at once, and the bytes of any
//!   other block are fetched from the recovered image by the checker and judged byte
//!   by byte. A byte that is neither zero nor ever written there is stale: data from
//!   another file or from a freed block.

use crate::check::{KnownBlocks, Recovery};
use crash_models::ops::{FallocateFlag, Op};
use crash_models::promise::{self, Check, Class, Promise, BLOCK_SIZE};
use crash_models::protocol::{EntryKind, FsEntry, OpResult};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::Arc;

/// What a crash state earned. Ordered from the worst: a state with several problems
/// gets the first of them as its verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// The mount failed, fsck found problems, or the kernel complained.
    FsCorruption,
    /// A file shows bytes never written to it.
    StaleData,
    /// A rename was not atomic.
    AtomicityViolation,
    /// A contract promise was broken: a file-system bug.
    DurabilityViolation,
    /// Data protected only by flushes on a plain shared mapping was lost: the
    /// program's bug.
    UnsafeFlushOnly,
    /// Nothing wrong.
    Ok,
}

impl Verdict {
    /// Every verdict, worst first.
    pub const ALL: [Verdict; 6] = [
        Verdict::FsCorruption,
        Verdict::StaleData,
        Verdict::AtomicityViolation,
        Verdict::DurabilityViolation,
        Verdict::UnsafeFlushOnly,
        Verdict::Ok,
    ];

    /// The name used in reports and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Ok => "ok",
            Verdict::FsCorruption => "fs-corruption",
            Verdict::DurabilityViolation => "durability-violation",
            Verdict::AtomicityViolation => "atomicity-violation",
            Verdict::StaleData => "stale-data",
            Verdict::UnsafeFlushOnly => "unsafe-flush-only",
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Verdict {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Verdict::ALL
            .into_iter()
            .find(|v| v.name() == s)
            .ok_or_else(|| {
                format!("unknown verdict `{s}`: expected ok, fs-corruption, durability-violation, atomicity-violation, stale-data or unsafe-flush-only")
            })
    }
}

/// One thing wrong with a recovered state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// The class.
    pub verdict: Verdict,
    /// What is wrong, in words.
    pub message: String,
    /// The op whose promise was broken (for promise violations).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub promised_by: Option<usize>,
    /// The file the problem is in, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The file offset of the first wrong byte, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file_offset: Option<u64>,
}

/// The verdict of a list of problems: the worst one, or ok.
pub fn verdict_of(problems: &[Problem]) -> Verdict {
    problems
        .iter()
        .map(|p| p.verdict)
        .min()
        .unwrap_or(Verdict::Ok)
}

/// Every content each file of the workload ever had, op by op: what stale-data
/// checks and byte-level promise checks compare against.
#[derive(Debug, Clone, Default)]
pub struct History {
    /// Per inode (in creation order): its distinct contents, or `None` when the
    /// content is not modelled (a file from the base image, collapse/insert range).
    inodes: Vec<Option<Vec<Arc<Vec<u8>>>>>,
    /// Per path: the inodes that ever had that name.
    names: BTreeMap<String, BTreeSet<usize>>,
    /// Block bytes by hash, for every block of every version (also zero-padded to a
    /// full block) and zero blocks of every length that can occur.
    blocks: HashMap<String, Arc<Vec<u8>>>,
}

fn hex(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

impl History {
    /// Replay the ops (skipping the ones that failed) and remember every version.
    pub fn new(ops: &[Op], results: Option<&[OpResult]>) -> History {
        let failed = |i: usize| {
            results
                .and_then(|r| r.iter().find(|r| r.index == i))
                .is_some_and(|r| !r.ok())
        };
        let mut h = History::default();
        let mut content: Vec<Option<Vec<u8>>> = Vec::new();
        let mut names: BTreeMap<String, usize> = BTreeMap::new();
        let mut fds: BTreeMap<String, (usize, u64, bool)> = BTreeMap::new();
        let mut maps: BTreeMap<String, (usize, u64)> = BTreeMap::new();
        let put = |c: &mut Option<Vec<u8>>, at: u64, bytes: &[u8]| {
            if let Some(d) = c {
                let end = at as usize + bytes.len();
                if d.len() < end {
                    d.resize(end, 0);
                }
                d[at as usize..end].copy_from_slice(bytes);
            }
        };
        for (i, op) in ops.iter().enumerate() {
            if failed(i) {
                continue;
            }
            match op {
                Op::Open {
                    path,
                    fd,
                    create,
                    truncate,
                    append,
                    ..
                } => {
                    let ino = match names.get(path) {
                        Some(&ino) => ino,
                        None => {
                            content.push(if *create { Some(Vec::new()) } else { None });
                            names.insert(path.clone(), content.len() - 1);
                            content.len() - 1
                        }
                    };
                    if *truncate {
                        if let Some(d) = &mut content[ino] {
                            d.clear();
                        }
                    }
                    fds.insert(fd.clone(), (ino, 0, *append));
                }
                Op::Close { fd } => {
                    fds.remove(fd);
                }
                Op::Write { fd, data, .. } => {
                    if let Some((ino, pos, append)) = fds.get(fd).copied() {
                        let bytes = data.bytes();
                        let at = if append {
                            content[ino].as_ref().map_or(pos, |d| d.len() as u64)
                        } else {
                            pos
                        };
                        put(&mut content[ino], at, &bytes);
                        fds.insert(fd.clone(), (ino, at + bytes.len() as u64, append));
                    }
                }
                Op::Pwrite {
                    fd, offset, data, ..
                } => {
                    if let Some(&(ino, _, _)) = fds.get(fd) {
                        put(&mut content[ino], *offset, &data.bytes());
                    }
                }
                Op::Ftruncate { fd, len } => {
                    if let Some(&(ino, _, _)) = fds.get(fd) {
                        if let Some(d) = &mut content[ino] {
                            d.resize(*len as usize, 0);
                        }
                    }
                }
                Op::Fallocate {
                    fd,
                    offset,
                    len,
                    mode,
                } => {
                    if let Some(&(ino, _, _)) = fds.get(fd) {
                        let has = |f| mode.contains(&f);
                        if has(FallocateFlag::CollapseRange) || has(FallocateFlag::InsertRange) {
                            content[ino] = None;
                        } else if let Some(d) = &mut content[ino] {
                            let end = (offset + len) as usize;
                            let keep = has(FallocateFlag::KeepSize);
                            if !keep && d.len() < end {
                                d.resize(end, 0);
                            }
                            if has(FallocateFlag::PunchHole) || has(FallocateFlag::ZeroRange) {
                                let e = end.min(d.len());
                                let s = (*offset as usize).min(e);
                                d[s..e].fill(0);
                            }
                        }
                    }
                }
                Op::Mmap {
                    fd, map, offset, ..
                } => {
                    if let Some(&(ino, _, _)) = fds.get(fd) {
                        maps.insert(map.clone(), (ino, *offset));
                    }
                }
                Op::Munmap { map } => {
                    maps.remove(map);
                }
                Op::Store {
                    map, offset, data, ..
                } => {
                    if let Some(&(ino, base)) = maps.get(map) {
                        if let Some(d) = &mut content[ino] {
                            let at = (base + offset) as usize;
                            let bytes = data.bytes();
                            let end = (at + bytes.len()).min(d.len());
                            if end > at {
                                d[at..end].copy_from_slice(&bytes[..end - at]);
                            }
                        }
                    }
                }
                Op::Rename { from, to } => {
                    let moved: Vec<(String, usize)> = names
                        .iter()
                        .filter(|(p, _)| *p == from || p.starts_with(&format!("{from}/")))
                        .map(|(p, i)| (p.clone(), *i))
                        .collect();
                    names.remove(to);
                    for (p, ino) in moved {
                        names.remove(&p);
                        names.insert(format!("{to}{}", &p[from.len()..]), ino);
                    }
                }
                Op::Link { from, to } => {
                    if let Some(&ino) = names.get(from) {
                        names.insert(to.clone(), ino);
                    }
                }
                Op::Unlink { path } | Op::Rmdir { path } => {
                    names.remove(path);
                }
                Op::Mkdir { path, .. } | Op::Symlink { path, .. } => {
                    // Not a regular file: no content to model.
                    content.push(None);
                    names.insert(path.clone(), content.len() - 1);
                }
                _ => {}
            }
            h.snapshot(&content, &names);
        }
        h.index_blocks();
        h
    }

    fn snapshot(&mut self, content: &[Option<Vec<u8>>], names: &BTreeMap<String, usize>) {
        while self.inodes.len() < content.len() {
            let i = self.inodes.len();
            self.inodes.push(content[i].as_ref().map(|_| Vec::new()));
        }
        for (i, c) in content.iter().enumerate() {
            match (c, &mut self.inodes[i]) {
                (Some(d), Some(versions)) => {
                    if versions.last().is_none_or(|v| **v != *d) {
                        versions.push(Arc::new(d.clone()));
                    }
                }
                (None, slot) => *slot = None,
                (Some(_), None) => {}
            }
        }
        for (p, &ino) in names {
            self.names.entry(p.clone()).or_default().insert(ino);
        }
    }

    fn index_blocks(&mut self) {
        let bs = BLOCK_SIZE as usize;
        let mut lens = BTreeSet::from([bs]);
        let mut blocks = HashMap::new();
        for versions in self.inodes.iter().flatten() {
            for v in versions {
                if v.len() % bs != 0 {
                    lens.insert(v.len() % bs);
                }
                for chunk in v.chunks(bs) {
                    blocks
                        .entry(hex(chunk))
                        .or_insert_with(|| Arc::new(chunk.to_vec()));
                    if chunk.len() < bs {
                        let mut full = chunk.to_vec();
                        full.resize(bs, 0);
                        blocks.entry(hex(&full)).or_insert_with(|| Arc::new(full));
                    }
                }
            }
        }
        for l in lens {
            let z = vec![0u8; l];
            blocks.insert(hex(&z), Arc::new(z));
        }
        self.blocks = blocks;
    }

    /// The block hashes the checker need not fetch bytes for.
    pub fn known_blocks(&self) -> KnownBlocks {
        KnownBlocks {
            hashes: self.blocks.keys().cloned().collect(),
        }
    }

    /// The versions a path may show (`None` when some inode that had the name is not
    /// modelled, or the path is not the workload's).
    fn versions_of(&self, path: &str) -> Option<Vec<Arc<Vec<u8>>>> {
        let inos = self.names.get(path)?;
        let mut out = Vec::new();
        for &i in inos {
            out.extend(self.inodes.get(i)?.as_ref()?.iter().cloned());
        }
        Some(out)
    }

    /// The bytes of a dumped block: known from the history, or fetched by the checker.
    fn block_bytes<'a>(&'a self, hash: &str, rec: &'a Recovery) -> Option<&'a [u8]> {
        self.blocks
            .get(hash)
            .map(|b| b.as_slice())
            .or_else(|| rec.block_bytes.get(hash).map(|b| b.as_slice()))
    }

    /// The file's bytes in `[start, end)` as dumped, when every block is available.
    fn read(&self, e: &FsEntry, start: u64, end: u64, rec: &Recovery) -> Option<Vec<u8>> {
        let mut out = Vec::with_capacity((end - start) as usize);
        let mut b = start / BLOCK_SIZE;
        while b * BLOCK_SIZE < end {
            let bytes = match e.blocks.get(&b) {
                Some(h) => self.block_bytes(h, rec)?,
                // Not listed: the block reads as zeros (a hole or zero data).
                None if b * BLOCK_SIZE < e.size => {
                    &crash_models::protocol::ZEROS
                        [..(e.size - b * BLOCK_SIZE).min(BLOCK_SIZE) as usize]
                }
                None => return None,
            };
            let bs = b * BLOCK_SIZE;
            let s = start.max(bs) - bs;
            let t = (end.min(bs + bytes.len() as u64)).checked_sub(bs)?;
            if s > t {
                return None;
            }
            out.extend_from_slice(&bytes[s as usize..t as usize]);
            b += 1;
        }
        (out.len() as u64 == end - start).then_some(out)
    }

    /// Stale data in the dumped files.
    pub fn stale(&self, entries: &[FsEntry], rec: &Recovery) -> Vec<Problem> {
        let mut out = Vec::new();
        for e in entries.iter().filter(|e| e.kind == EntryKind::File) {
            let Some(versions) = self.versions_of(&e.path) else {
                continue;
            };
            for (&b, h) in &e.blocks {
                let Some(bytes) = self.block_bytes(h, rec) else {
                    // Neither known nor found in the image: cannot judge.
                    continue;
                };
                let base = b * BLOCK_SIZE;
                let bad = bytes.iter().enumerate().find(|(j, &byte)| {
                    let o = (base + *j as u64) as usize;
                    byte != 0 && !versions.iter().any(|v| v.get(o) == Some(&byte))
                });
                if let Some((j, byte)) = bad {
                    let whose = self.owner_of(bytes, &e.path);
                    out.push(Problem {
                        verdict: Verdict::StaleData,
                        message: format!(
                            "{}: block {b} holds bytes never written there (byte {} is {byte:#04x}){}{}",
                            e.path,
                            base + j as u64,
                            whose.map(|w| format!("; they are {w}")).unwrap_or_default(),
                            rec.block_offsets
                                .get(h)
                                .map(|o| format!(" (PM offset {o:#x})"))
                                .unwrap_or_default()
                        ),
                        promised_by: None,
                        path: Some(e.path.clone()),
                        file_offset: Some(base + j as u64),
                    });
                }
            }
        }
        out
    }

    /// Which other file's data a block holds, if any.
    fn owner_of(&self, bytes: &[u8], not: &str) -> Option<String> {
        let bs = BLOCK_SIZE as usize;
        for (path, inos) in &self.names {
            if path == not {
                continue;
            }
            for &i in inos {
                for v in self
                    .inodes
                    .get(i)
                    .and_then(|v| v.as_ref())
                    .into_iter()
                    .flatten()
                {
                    for (k, chunk) in v.chunks(bs).enumerate() {
                        let n = chunk.len().min(bytes.len());
                        if n >= 8 && chunk[..n] == bytes[..n] {
                            return Some(format!("{path}'s data (block {k})"));
                        }
                    }
                }
            }
        }
        None
    }
}

/// Judge one recovered state at a crash point where `ops_completed` ops had returned
/// and `in_progress` was running.
pub fn judge(
    ops: &[Op],
    results: Option<&[OpResult]>,
    ops_completed: usize,
    in_progress: Option<usize>,
    history: &History,
    rec: &Recovery,
) -> Vec<Problem> {
    let mut out: Vec<Problem> = rec
        .corruption()
        .into_iter()
        .map(|message| Problem {
            verdict: Verdict::FsCorruption,
            message,
            promised_by: None,
            path: None,
            file_offset: None,
        })
        .collect();
    let Some(entries) = &rec.entries else {
        return out;
    };
    out.extend(history.stale(entries, rec));
    let promised = promise::promises(ops, results, ops_completed, in_progress);
    for p in &promised.items {
        let check = match &p.promise {
            Promise::FileData {
                path,
                offset,
                bytes,
            } => check_data(history, entries, rec, path, *offset, bytes)
                .unwrap_or_else(|| p.promise.check(entries)),
            other => other.check(entries),
        };
        let Check::Violated(why) = check else {
            continue;
        };
        let verdict = match (&p.promise, p.class) {
            (Promise::RenameAtomic { .. }, _) => Verdict::AtomicityViolation,
            (_, Class::UnsafeFlushOnly) => Verdict::UnsafeFlushOnly,
            (_, Class::Contract) => Verdict::DurabilityViolation,
        };
        let (path, file_offset) = match &p.promise {
            Promise::FileData { path, offset, .. } => (Some(path.clone()), Some(*offset)),
            Promise::Exists { path }
            | Promise::Absent { path }
            | Promise::FileSize { path, .. }
            | Promise::Symlink { path, .. } => (Some(path.clone()), None),
            Promise::RenameAtomic { to, .. } => (Some(to.clone()), None),
        };
        out.push(Problem {
            verdict,
            message: format!("{} (promised by op {}, {})", why, p.op, p.source),
            promised_by: Some(p.op),
            path,
            file_offset,
        });
    }
    for (op, path, offset, bytes) in
        stored_before_fmetadatasync(ops, results, ops_completed, in_progress)
    {
        if let Some(Check::Violated(why)) = check_data(history, entries, rec, &path, offset, &bytes)
        {
            out.push(Problem {
                verdict: Verdict::UnsafeFlushOnly,
                message: format!(
                    "{why} (stored through a mapping before fmetadatasync, op {op}, which makes only the program's own flushes durable)"
                ),
                promised_by: Some(op),
                path: Some(path),
                file_offset: Some(offset),
            });
        }
    }
    out.sort_by(|a, b| a.verdict.cmp(&b.verdict).then(a.message.cmp(&b.message)));
    out.dedup();
    out
}

/// What a program that calls `fmetadatasync(f)` believes: every byte it stored into
/// f's mappings before the call is durable once the call returns. The contract covers
/// only the lines it flushed itself ([`promise::promises`] checks those); a store it
/// never flushed is lost in some crash states, and that loss is the program's bug, so
/// it is reported as `unsafe-flush-only`. Returns (fmetadatasync op, path, file
/// offset, bytes) for stores not overwritten or truncated by a later op.
fn stored_before_fmetadatasync(
    ops: &[Op],
    results: Option<&[OpResult]>,
    ops_completed: usize,
    in_progress: Option<usize>,
) -> Vec<(usize, String, u64, Vec<u8>)> {
    let failed = |i: usize| {
        results
            .and_then(|r| r.iter().find(|r| r.index == i))
            .is_some_and(|r| !r.ok())
    };
    let upto = in_progress.map_or(ops_completed, |p| p + 1).min(ops.len());
    let mut fd_path: BTreeMap<&str, &str> = BTreeMap::new();
    let mut map_of: BTreeMap<&str, (&str, u64)> = BTreeMap::new();
    // (op, path, offset, bytes)
    let mut stores: Vec<(usize, &str, u64, Vec<u8>)> = Vec::new();
    let mut out = Vec::new();
    for (i, op) in ops.iter().enumerate().take(upto) {
        if failed(i) {
            continue;
        }
        match op {
            Op::Open { path, fd, .. } => {
                fd_path.insert(fd, path);
            }
            Op::Mmap {
                fd, map, offset, ..
            } => {
                if let Some(p) = fd_path.get(fd.as_str()) {
                    map_of.insert(map, (p, *offset));
                }
            }
            Op::Store {
                map, offset, data, ..
            } => {
                if let Some(&(p, base)) = map_of.get(map.as_str()) {
                    let at = base + offset;
                    let bytes = data.bytes();
                    let end = at + bytes.len() as u64;
                    // A later store to the same bytes replaces the earlier one.
                    stores.retain(|s| s.1 != p || s.2 + s.3.len() as u64 <= at || end <= s.2);
                    stores.push((i, p, at, bytes));
                }
            }
            Op::Write { fd, .. }
            | Op::Pwrite { fd, .. }
            | Op::Ftruncate { fd, .. }
            | Op::Fallocate { fd, .. } => {
                // The file changed under the stores: withdraw them (never a false
                // report).
                if let Some(p) = fd_path.get(fd.as_str()) {
                    stores.retain(|s| s.1 != *p);
                }
            }
            Op::Rename { .. } | Op::Unlink { .. } => stores.clear(),
            Op::Fmetadatasync { fd } if i < ops_completed => {
                if let Some(p) = fd_path.get(fd.as_str()) {
                    for s in stores.iter().filter(|s| s.1 == *p) {
                        out.push((i, s.1.to_owned(), s.2, s.3.clone()));
                    }
                }
            }
            _ => {}
        }
    }
    // Withdraw what a store after the fmetadatasync changed.
    out.retain(|(op, path, at, bytes)| {
        let end = at + bytes.len() as u64;
        !stores
            .iter()
            .any(|s| s.0 > *op && s.1 == path && s.2 < end && *at < s.2 + s.3.len() as u64)
    });
    out
}

/// A byte-exact check of promised file data (the dump's hashes alone cannot judge
/// ranges smaller than a block). `None` when the bytes are not available.
fn check_data(
    history: &History,
    entries: &[FsEntry],
    rec: &Recovery,
    path: &str,
    offset: u64,
    bytes: &[u8],
) -> Option<Check> {
    let e = entries.iter().find(|e| e.path == path)?;
    let end = offset + bytes.len() as u64;
    if e.size < end {
        return Some(Check::Violated(format!(
            "{path} is {} bytes: promised data up to {end} is cut off",
            e.size
        )));
    }
    let got = history.read(e, offset, end, rec)?;
    match got.iter().zip(bytes).position(|(a, b)| a != b) {
        None => Some(Check::Holds),
        Some(i) => {
            let zeros = got.iter().all(|b| *b == 0);
            Some(Check::Violated(format!(
                "{path}: bytes {}..{end} {} (first difference at {})",
                offset,
                if zeros {
                    "are zeros, not the promised data".to_owned()
                } else {
                    "differ from the promised data".to_owned()
                },
                offset + i as u64
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::MountOutcome;
    use crash_models::ops::Workload;

    fn ops(src: &str) -> Vec<Op> {
        Workload::parse(src, "t.toml").unwrap().ops
    }

    fn rec(entries: Vec<FsEntry>) -> Recovery {
        Recovery {
            index: 0,
            mount: MountOutcome::Mounted { dax: true },
            entries: Some(entries),
            dump_error: None,
            unmount_error: None,
            fsck: None,
            console: vec![],
            block_bytes: BTreeMap::new(),
            block_offsets: BTreeMap::new(),
            state_id: String::new(),
            restarts: 0,
            millis: 0,
        }
    }

    fn file(path: &str, data: &[u8]) -> FsEntry {
        FsEntry {
            path: path.into(),
            kind: EntryKind::File,
            size: data.len() as u64,
            mode: 0o644,
            nlink: 1,
            ino: 12,
            blake3: hex(data),
            blocks: data
                .chunks(4096)
                .enumerate()
                .map(|(i, c)| (i as u64, hex(c)))
                .collect(),
            xattrs: Default::default(),
            target: None,
            error: None,
        }
    }

    const W: &str = "[[ops]]\nop=\"open\"\npath=\"a\"\nfd=\"a\"\ncreate=true\n[[ops]]\nop=\"ftruncate\"\nfd=\"a\"\nlen=4096\n[[ops]]\nop=\"mmap\"\nfd=\"a\"\nmap=\"m\"\nlen=4096\n[[ops]]\nop=\"store\"\nmap=\"m\"\noffset=0\ndata=\"hello\"\n[[ops]]\nop=\"flush\"\nmap=\"m\"\noffset=0\n[[ops]]\nop=\"fence\"\n";

    #[test]
    fn flush_only_loss_is_its_own_class_and_partial_blocks_are_checked() {
        let o = ops(W);
        let h = History::new(&o, None);
        let lost = rec(vec![file("a", &[0; 4096])]);
        let p = judge(&o, None, o.len(), None, &h, &lost);
        assert_eq!(verdict_of(&p), Verdict::UnsafeFlushOnly, "{p:?}");
        let mut good = vec![0u8; 4096];
        good[..5].copy_from_slice(b"hello");
        let kept = rec(vec![file("a", &good)]);
        assert_eq!(
            verdict_of(&judge(&o, None, o.len(), None, &h, &kept)),
            Verdict::Ok
        );
        // Before the fence, nothing was promised.
        assert_eq!(
            verdict_of(&judge(&o, None, 5, None, &h, &lost)),
            Verdict::Ok
        );
    }

    #[test]
    fn foreign_bytes_are_stale_and_a_mix_of_versions_is_not() {
        let src = "[[ops]]\nop=\"open\"\npath=\"a\"\nfd=\"a\"\ncreate=true\n[[ops]]\nop=\"write\"\nfd=\"a\"\ndata={seed=1,len=8192}\n[[ops]]\nop=\"open\"\npath=\"b\"\nfd=\"b\"\ncreate=true\n[[ops]]\nop=\"write\"\nfd=\"b\"\ndata={seed=2,len=4096}\n";
        let o = ops(src);
        let h = History::new(&o, None);
        let a = crash_models::ops::seeded_bytes(1, 8192);
        // b's block holds a's second block: unknown hash, bytes fetched by the checker.
        let foreign = a[4096..].to_vec();
        let mut r = rec(vec![file("a", &a), file("b", &foreign)]);
        // a's block is a known hash: its bytes come from the history, not the image.
        assert!(h.known_blocks().hashes.contains(&hex(&foreign)));
        r.block_bytes.insert(hex(&foreign), foreign.clone());
        let p = h.stale(r.entries.as_ref().unwrap(), &r);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].message.contains("a's data (block 1)"),
            "{}",
            p[0].message
        );
        // Half new, half zero (a torn write): not stale.
        let mut torn = crash_models::ops::seeded_bytes(2, 4096);
        torn[2048..].fill(0);
        let mut r = rec(vec![file("b", &torn)]);
        r.block_bytes.insert(hex(&torn), torn.clone());
        assert!(h.stale(r.entries.as_ref().unwrap(), &r).is_empty());
    }

    #[test]
    fn verdict_names_round_trip() {
        for v in Verdict::ALL {
            assert_eq!(v.name().parse::<Verdict>().unwrap(), v);
        }
        assert!("bogus".parse::<Verdict>().is_err());
    }
}
