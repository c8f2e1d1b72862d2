//! Promises: what the ops that completed before a crash point guarantee about every
//! crash state there. The table, row by row, with the reason for each, is
//! `docs/promises.md`; every row has an insta snapshot in `tests/rules.rs`.
//!
//! | op (on success) | promise once it returns |
//! | --- | --- |
//! | `fsync(f)`, f a file | f's size, data (written bytes and the zeros of its holes) and xattrs; a name the workload created for f |
//! | `fdatasync(f)`, f a file | f's size and data (the metadata needed to read it back) |
//! | `fsync(d)`, `fdatasync(d)`, d a directory | every name made, renamed, linked or removed directly in d: it exists, or it does not |
//! | `msync(MS_SYNC)` | the data in the range |
//! | store + flush + fence, `MAP_SYNC` | the stored bytes ([`Class::Contract`]) |
//! | store + flush + fence, plain shared | the stored bytes, only as [`Class::UnsafeFlushOnly`]: nothing by contract |
//! | `fmetadatasync(f)` | f's size and a created name; the bytes the program flushed itself (contract); every byte it stored and did not flush and fence, as [`Class::UnsafeFlushOnly`] (the program believes it durable: its loss is the program's bug) |
//! | `rename(a, b)` | atomic in every crash state, even while in progress; durable once the directory is fsynced |
//! | `sync`, `syncfs` | everything before it: names, absences, sizes, data, symlinks, xattrs |
//! | `sync_file_range`, `msync(MS_ASYNC)`, the rest | nothing |
//!
//! A promise is about the state when it was made. A later op (completed, or the op in
//! progress, which may be half done) that changes the same bytes, the same size, the
//! same xattr or the same name makes the crash state legitimately show either version,
//! so such a promise is withdrawn rather than checked: the oracle never reports a loss
//! the ops did not promise.
//!
//! Everything here reads the one model of what ops do, [`crate::fsmodel::FsModel`]:
//! this module adds only what persistence adds (which stores are flushed and fenced).

use crate::fsmodel::{self, Change, FsModel, InodeId, NodeKind};
use crate::model::FxSet;
use crate::ops::{MapKind, MsyncMode, Op, StoreKind};
use crate::protocol::{EntryKind, Extent, FsEntry, OpResult, DUMP_BLOCK};
use crate::trace::{MarkerKind, Privilege, Record};
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;

/// A fact about the recovered file system.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Promise {
    /// `path` exists.
    Exists {
        /// The path.
        path: String,
    },
    /// `path` does not exist.
    Absent {
        /// The path.
        path: String,
    },
    /// The file at `path` is `size` bytes long (when it exists; its name is promised
    /// separately).
    FileSize {
        /// The path.
        path: String,
        /// Expected size.
        size: u64,
    },
    /// The file at `path` holds `bytes` at `offset` (when it exists).
    FileData {
        /// The path.
        path: String,
        /// File offset.
        offset: u64,
        /// The bytes expected there.
        bytes: Vec<u8>,
    },
    /// The file at `path` reads as zeros in `[start, end)` (when it exists): a hole,
    /// a punched or zeroed range, or an extension by truncate.
    FileZeros {
        /// The path.
        path: String,
        /// First byte.
        start: u64,
        /// One past the last byte.
        end: u64,
    },
    /// The symlink at `path` points to `target` (when it exists).
    Symlink {
        /// The path.
        path: String,
        /// Expected target.
        target: String,
    },
    /// The object at `path` has the xattr `name` with `value` (hex), or not at all
    /// when `value` is `None` (when the object exists).
    Xattr {
        /// The path.
        path: String,
        /// The attribute.
        name: String,
        /// Its value in hex, or `None` for "absent".
        value: Option<String>,
    },
    /// `rename(from, to)` is atomic: `from` and `to` never both name the renamed
    /// object, and it is never lost from both.
    RenameAtomic {
        /// Old path.
        from: String,
        /// New path.
        to: String,
    },
}

impl Promise {
    /// The path the promise is about (the new name for a rename).
    pub fn path(&self) -> &str {
        match self {
            Promise::Exists { path }
            | Promise::Absent { path }
            | Promise::FileSize { path, .. }
            | Promise::FileData { path, .. }
            | Promise::FileZeros { path, .. }
            | Promise::Symlink { path, .. }
            | Promise::Xattr { path, .. } => path,
            Promise::RenameAtomic { to, .. } => to,
        }
    }
}

/// Whether a promise is a contract or only what the hardware happens to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Class {
    /// The file system promises it: a loss is a file-system bug.
    Contract,
    /// Only the program's belief backs it (flushes on a plain shared mapping, or
    /// stores it never flushed before `fmetadatasync`): a loss is the program's bug
    /// (the `MAP_PMEM_AWARE` hazard), reported apart.
    UnsafeFlushOnly,
}

/// A promise with where it came from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Promised {
    /// Index of the op that made it.
    pub op: usize,
    /// That op's name (`"fsync"`, `"fence"`, ...).
    pub source: &'static str,
    /// Contract or flush-only.
    pub class: Class,
    /// The fact.
    pub promise: Promise,
}

/// Whether a dumped state keeps one promise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kept {
    /// The state keeps the promise.
    Yes,
    /// The state breaks it; the text says how.
    No(String),
    /// The dump alone cannot tell (data in a partial block: the oracle reads the
    /// bytes), or the promise does not apply (its file is absent and its name was
    /// not promised).
    Unknown,
}

/// The bytes of dumped blocks that the dump's hashes alone do not give: known from
/// the workload's history or read from the recovered image by the checker.
pub trait BlockSource {
    /// The bytes of the block with this blake3 hex, if known.
    fn block(&self, hash: &str) -> Option<&[u8]>;
}

/// No block bytes at all: promises are judged on hashes only.
pub struct NoBlocks;

impl BlockSource for NoBlocks {
    fn block(&self, _: &str) -> Option<&[u8]> {
        None
    }
}

fn first_difference(path: &str, start: u64, got: &[u8], want: Option<&[u8]>) -> Option<String> {
    let i = match want {
        Some(w) => got.iter().zip(w).position(|(a, b)| a != b)?,
        None => got.iter().position(|b| *b != 0)?,
    };
    let end = start + got.len() as u64;
    Some(match want {
        Some(_) if got.iter().all(|b| *b == 0) => format!(
            "{path}: bytes {start}..{end} are zeros, not the promised data (first difference at {})",
            start + i as u64
        ),
        Some(_) => format!(
            "{path}: bytes {start}..{end} differ from the promised data (first difference at {})",
            start + i as u64
        ),
        None => format!(
            "{path}: bytes {start}..{end} were promised to read as zeros, byte {} is {:#04x}",
            start + i as u64,
            got[i]
        ),
    })
}

impl Promise {
    /// Check the promise against a dump ([`crate::protocol::AgentMsg::State`]
    /// entries, any order), reading block bytes from `blocks` where the hashes alone
    /// cannot tell.
    pub fn check(&self, entries: &[FsEntry], blocks: &dyn BlockSource) -> Kept {
        let find = |p: &str| entries.iter().find(|e| e.path == p);
        match self {
            Promise::Exists { path } => match find(path) {
                Some(_) => Kept::Yes,
                None => Kept::No(format!("{path} is missing")),
            },
            Promise::Absent { path } => match find(path) {
                None => Kept::Yes,
                Some(_) => Kept::No(format!("{path} still exists")),
            },
            Promise::FileSize { path, size } => match find(path) {
                None => Kept::Unknown,
                Some(e) if e.kind != EntryKind::File => {
                    Kept::No(format!("{path} is a {:?}, not a file", e.kind))
                }
                Some(e) if e.size == *size => Kept::Yes,
                Some(e) => Kept::No(format!("{path} is {} bytes, not {size}", e.size)),
            },
            Promise::Symlink { path, target } => match find(path) {
                None => Kept::Unknown,
                Some(e) if e.target.as_deref() == Some(target) => Kept::Yes,
                Some(e) => Kept::No(format!("{path} points to {:?}, not {target:?}", e.target)),
            },
            Promise::Xattr { path, name, value } => match find(path) {
                None => Kept::Unknown,
                Some(e) => match (e.xattrs.get(name), value) {
                    (a, b) if a == b.as_ref() => Kept::Yes,
                    (None, Some(_)) => Kept::No(format!("{path}: xattr {name} is missing")),
                    (Some(_), None) => Kept::No(format!("{path}: xattr {name} is still there")),
                    _ => Kept::No(format!(
                        "{path}: xattr {name} has another value than promised"
                    )),
                },
            },
            Promise::FileData {
                path,
                offset,
                bytes,
            } => {
                let Some(e) = find(path).filter(|e| e.kind == EntryKind::File) else {
                    return Kept::Unknown;
                };
                let end = offset + bytes.len() as u64;
                if e.size < end {
                    return Kept::No(format!(
                        "{path} is {} bytes: promised data up to {end} is cut off",
                        e.size
                    ));
                }
                check_range(e, *offset, end, Some(bytes), blocks)
            }
            Promise::FileZeros { path, start, end } => {
                let Some(e) = find(path).filter(|e| e.kind == EntryKind::File) else {
                    return Kept::Unknown;
                };
                check_range(e, *start, (*end).min(e.size), None, blocks)
            }
            Promise::RenameAtomic { from, to } => match (find(from), find(to)) {
                (Some(a), Some(b)) if a.ino == b.ino && a.kind != EntryKind::Dir => {
                    Kept::No(format!("{from} and {to} both name inode {}", a.ino))
                }
                _ => Kept::Unknown,
            },
        }
    }
}

/// Check `[start, end)` of a dumped file against `want` (or zeros): whole blocks by
/// hash, partial blocks by their bytes when `blocks` has them.
fn check_range(
    e: &FsEntry,
    start: u64,
    end: u64,
    want: Option<&[u8]>,
    blocks: &dyn BlockSource,
) -> Kept {
    if start >= end {
        return Kept::Yes;
    }
    let path = &e.path;
    let slice = |s: u64, t: u64| want.map(|w| &w[(s - start) as usize..(t - start) as usize]);
    let mut unknown = false;
    // Only the blocks the dump lists, or the blocks the promise has bytes for, can
    // differ: a huge promised hole costs what the dump lists in it.
    let listed: BTreeSet<u64> = e
        .blocks
        .range(start / DUMP_BLOCK..end.div_ceil(DUMP_BLOCK))
        .map(|(b, _)| *b)
        .collect();
    let wanted: Box<dyn Iterator<Item = u64>> = match want {
        Some(_) => Box::new(start / DUMP_BLOCK..end.div_ceil(DUMP_BLOCK)),
        None => Box::new(listed.iter().copied()),
    };
    for b in wanted {
        let bs = b * DUMP_BLOCK;
        let be = (bs + DUMP_BLOCK).min(e.size);
        let s = start.max(bs);
        let t = end.min(be);
        if s >= t {
            continue;
        }
        let whole = s == bs && t == be;
        let w = slice(s, t);
        match (e.blocks.get(&b), whole) {
            (None, _) => {
                // Zeros in the file.
                if let Some(why) = first_difference(path, s, &vec![0; (t - s) as usize], w) {
                    return Kept::No(why);
                }
            }
            (Some(h), true) => {
                let want_hash = match w {
                    Some(w) if w.iter().any(|x| *x != 0) => blake3::hash(w).to_hex().to_string(),
                    // An all-zero block would not be listed.
                    _ => String::new(),
                };
                if *h != want_hash {
                    let got = blocks.block(h).map(|g| g.to_vec());
                    return Kept::No(match got {
                        Some(g) => first_difference(path, s, &g, w).unwrap_or_else(|| {
                            format!("{path}: block {b} differs from what was promised")
                        }),
                        None => format!(
                            "{path}: block {b} (bytes {bs}..{be}) differs from what was promised"
                        ),
                    });
                }
            }
            (Some(h), false) => match blocks.block(h) {
                Some(g) if g.len() as u64 >= t - bs => {
                    let got = &g[(s - bs) as usize..(t - bs) as usize];
                    if let Some(why) = first_difference(path, s, got, w) {
                        return Kept::No(why);
                    }
                }
                _ => unknown = true,
            },
        }
    }
    if unknown {
        Kept::Unknown
    } else {
        Kept::Yes
    }
}

/// The promises in force at a crash point.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Promises {
    /// Every promise, in the order the ops made them.
    pub items: Vec<Promised>,
}

impl Promises {
    /// The contract promises.
    pub fn contract(&self) -> impl Iterator<Item = &Promised> {
        self.items.iter().filter(|p| p.class == Class::Contract)
    }

    /// The flush-only expectations (reported apart).
    pub fn flush_only(&self) -> impl Iterator<Item = &Promised> {
        self.items
            .iter()
            .filter(|p| p.class == Class::UnsafeFlushOnly)
    }
}

/// What a promise depends on, to withdraw it when a later op changes that.
#[derive(Debug, Clone)]
enum Dep {
    Data(InodeId, Range<u64>),
    Size(InodeId),
    Name(String),
    Xattr(InodeId, String),
}

fn touches(change: &Change, dep: &Dep) -> bool {
    let related = |a: &str, b: &str| fsmodel::is_under(a, b) || fsmodel::is_under(b, a);
    match (change, dep) {
        (Change::Data(i, r), Dep::Data(j, s)) => i == j && r.start < s.end && s.start < r.end,
        (Change::Size(i), Dep::Size(j)) => i == j,
        (Change::Name(a), Dep::Name(b)) => related(a, b),
        (Change::Xattr(i, a), Dep::Xattr(j, b)) => i == j && a == b,
        _ => false,
    }
}

/// Line granularity of user flushes in the simulation (matches the ops' `flush`).
const FLUSH_LINE: u64 = 64;

/// A store through a mapping that is not yet flushed and fenced.
#[derive(Debug, Clone)]
struct PendingStore {
    map: String,
    ino: InodeId,
    /// Offset in the file.
    offset: u64,
    bytes: Vec<u8>,
    /// Line-sized chunks of the mapping still to flush, as mapping offsets / 64.
    unflushed: Vec<u64>,
    kind: MapKind,
}

/// The promise-making replay: the file-system model plus what persistence adds.
#[derive(Debug, Default)]
struct Sim {
    fs: FsModel,
    /// Names removed (and not made again), for directory syncs and `sync`.
    removed: BTreeSet<String>,
    /// xattr names removed per inode (and not set again).
    removed_xattrs: BTreeMap<InodeId, BTreeSet<String>>,
    pending: Vec<PendingStore>,
    /// Stores the program flushed and fenced itself: (op, ino, offset, bytes).
    program_flushed: Vec<(usize, InodeId, u64, Vec<u8>)>,
    out: Vec<(Promised, Vec<Dep>)>,
    changes: Vec<(usize, Change)>,
}

impl Sim {
    fn promise(&mut self, op: usize, class: Class, promise: Promise, deps: Vec<Dep>) {
        let source = "";
        self.out.push((
            Promised {
                op,
                source,
                class,
                promise,
            },
            deps,
        ));
    }

    fn path(&self, ino: InodeId) -> Option<String> {
        self.fs.path_of(ino).map(str::to_owned)
    }

    /// Size, data and holes of a file: `[start, end)` of it (the whole file for
    /// `0..u64::MAX`).
    fn file_range(&mut self, op: usize, ino: InodeId, start: u64, end: u64, class: Class) {
        let Some(path) = self.path(ino) else { return };
        let Some(c) = self.fs.file(ino) else { return };
        let end = end.min(c.size);
        let name = Dep::Name(path.clone());
        let mut items: Vec<(Promise, Range<u64>)> = Vec::new();
        let mut at = start;
        for (s, bytes) in c.written(start, end) {
            let e = s + bytes.len() as u64;
            let (from, to) = (s.max(start), e.min(end));
            if from > at {
                items.push((
                    Promise::FileZeros {
                        path: path.clone(),
                        start: at,
                        end: from,
                    },
                    at..from,
                ));
            }
            items.push((
                Promise::FileData {
                    path: path.clone(),
                    offset: from,
                    bytes: bytes[(from - s) as usize..(to - s) as usize].to_vec(),
                },
                from..to,
            ));
            at = to;
        }
        if end > at {
            items.push((
                Promise::FileZeros {
                    path: path.clone(),
                    start: at,
                    end,
                },
                at..end,
            ));
        }
        for (p, r) in items {
            self.promise(
                op,
                class,
                p,
                vec![Dep::Data(ino, r), Dep::Size(ino), name.clone()],
            );
        }
    }

    fn size(&mut self, op: usize, ino: InodeId) {
        let Some(path) = self.path(ino) else { return };
        let Some(size) = self.fs.file(ino).map(|c| c.size) else {
            return;
        };
        self.promise(
            op,
            Class::Contract,
            Promise::FileSize {
                path: path.clone(),
                size,
            },
            vec![Dep::Size(ino), Dep::Name(path)],
        );
    }

    fn xattrs(&mut self, op: usize, ino: InodeId) {
        let Some(path) = self.path(ino) else { return };
        let set: Vec<(String, Option<String>)> = self.fs.inodes[ino]
            .xattrs
            .iter()
            .map(|(k, v)| (k.clone(), Some(fsmodel::hex(v))))
            .chain(
                self.removed_xattrs
                    .get(&ino)
                    .into_iter()
                    .flatten()
                    .map(|k| (k.clone(), None)),
            )
            .collect();
        for (name, value) in set {
            self.promise(
                op,
                Class::Contract,
                Promise::Xattr {
                    path: path.clone(),
                    name: name.clone(),
                    value,
                },
                vec![Dep::Xattr(ino, name), Dep::Name(path.clone())],
            );
        }
    }

    /// The name a file was created with, while it still has it: Linux file systems
    /// make it durable with the file's fsync (the commit that makes the inode durable
    /// holds its directory entry). Links and renames made later are the directory's
    /// to sync.
    fn name_of_created(&mut self, op: usize, ino: InodeId) {
        let Some(path) = self.fs.inodes[ino].created_as.clone() else {
            return;
        };
        if self.fs.names.get(&path) == Some(&ino) {
            self.promise(
                op,
                Class::Contract,
                Promise::Exists { path: path.clone() },
                vec![Dep::Name(path)],
            );
        }
    }

    /// Names (and absences) directly in `dir` become durable.
    fn dir_durable(&mut self, op: usize, dir: &str) {
        let in_dir = |p: &str| fsmodel::parent(p) == dir;
        let present: Vec<String> = self
            .fs
            .names
            .keys()
            .filter(|p| in_dir(p))
            .cloned()
            .collect();
        let absent: Vec<String> = self.removed.iter().filter(|p| in_dir(p)).cloned().collect();
        for path in present {
            self.promise(
                op,
                Class::Contract,
                Promise::Exists { path: path.clone() },
                vec![Dep::Name(path)],
            );
        }
        for path in absent {
            self.promise(
                op,
                Class::Contract,
                Promise::Absent { path: path.clone() },
                vec![Dep::Name(path)],
            );
        }
    }

    fn everything_durable(&mut self, op: usize) {
        let names: Vec<(String, InodeId)> =
            self.fs.names.iter().map(|(p, i)| (p.clone(), *i)).collect();
        let mut files = BTreeSet::new();
        for (path, ino) in names {
            self.promise(
                op,
                Class::Contract,
                Promise::Exists { path: path.clone() },
                vec![Dep::Name(path.clone())],
            );
            match self.fs.inodes[ino].kind.clone() {
                NodeKind::File if files.insert(ino) => {
                    self.size(op, ino);
                    self.file_range(op, ino, 0, u64::MAX, Class::Contract);
                }
                NodeKind::Symlink(target) => self.promise(
                    op,
                    Class::Contract,
                    Promise::Symlink {
                        path: path.clone(),
                        target,
                    },
                    vec![Dep::Name(path)],
                ),
                _ => {}
            }
            if self.fs.inodes[ino].kind != NodeKind::Unknown {
                self.xattrs(op, ino);
            }
        }
        for path in self.removed.clone() {
            self.promise(
                op,
                Class::Contract,
                Promise::Absent { path: path.clone() },
                vec![Dep::Name(path)],
            );
        }
    }

    /// Apply one op; promises are made only when `promising` (a completed op).
    fn apply(&mut self, i: usize, op: &Op, result: Option<&OpResult>, promising: bool) {
        if result.is_some_and(|r| !r.ok()) {
            // A failed op changed nothing and promises nothing.
            return;
        }
        let first = self.out.len();
        // rename(2) of two names of one inode does nothing: no atomicity to check.
        let rename_noop = match op {
            Op::Rename { from, to } => {
                self.fs.lookup(from).is_none() || self.fs.lookup(from) == self.fs.lookup(to)
            }
            _ => false,
        };
        // What the op is about, looked up before it changes the model.
        let store_map = match op {
            Op::Store { map, .. } => self.fs.maps.get(map).cloned(),
            _ => None,
        };
        let changes = self.fs.apply(i, op, result);
        for c in &changes {
            match c {
                Change::Name(p) => {
                    if self.fs.names.contains_key(p) {
                        self.removed.remove(p);
                    } else {
                        self.removed.insert(p.clone());
                    }
                }
                Change::Xattr(ino, name) => {
                    let set = self.removed_xattrs.entry(*ino).or_default();
                    if self.fs.inodes[*ino].xattrs.contains_key(name) {
                        set.remove(name);
                    } else {
                        set.insert(name.clone());
                    }
                }
                _ => {}
            }
        }
        self.changes.extend(changes.into_iter().map(|c| (i, c)));
        match op {
            Op::Store {
                map,
                offset,
                data,
                kind,
            } => {
                let Some(m) = store_map else { return };
                let size = self.fs.file(m.ino).map_or(0, |c| c.size);
                let file_off = m.offset + offset;
                let end = (file_off + data.len()).min(size);
                if end <= file_off {
                    return;
                }
                let bytes = data.bytes()[..(end - file_off) as usize].to_vec();
                let unflushed = if *kind == StoreKind::NonTemporal {
                    Vec::new()
                } else {
                    (offset / FLUSH_LINE..=(offset + bytes.len() as u64 - 1) / FLUSH_LINE).collect()
                };
                self.pending.push(PendingStore {
                    map: map.clone(),
                    ino: m.ino,
                    offset: file_off,
                    bytes,
                    unflushed,
                    kind: m.kind,
                });
            }
            Op::Flush {
                map, offset, len, ..
            } => {
                let lines = offset / FLUSH_LINE..=(offset + len.max(&1) - 1) / FLUSH_LINE;
                for p in self.pending.iter_mut().filter(|p| p.map == *map) {
                    p.unflushed.retain(|l| !lines.contains(l));
                }
            }
            Op::Fence { .. } => {
                let (done, rest): (Vec<PendingStore>, Vec<PendingStore>) =
                    std::mem::take(&mut self.pending)
                        .into_iter()
                        .partition(|p| p.unflushed.is_empty());
                self.pending = rest;
                if !promising {
                    return;
                }
                for p in done {
                    let class = match p.kind {
                        MapKind::Sync => Class::Contract,
                        MapKind::Shared => Class::UnsafeFlushOnly,
                    };
                    self.program_flushed
                        .push((i, p.ino, p.offset, p.bytes.clone()));
                    self.store_promise(i, class, &p);
                }
            }
            Op::Msync {
                map,
                offset,
                len,
                mode,
            } => {
                let Some(m) = self.fs.maps.get(map).cloned() else {
                    return;
                };
                if !promising || *mode == MsyncMode::Async {
                    return;
                }
                let start = m.offset + offset;
                let end = match len {
                    Some(l) => start + l,
                    None => m.offset + m.len,
                };
                // The synced range is durable, so pending stores in it need no flush.
                self.pending.retain(|p| {
                    !(p.ino == m.ino && p.offset >= start && p.offset + p.bytes.len() as u64 <= end)
                });
                self.file_range(i, m.ino, start, end, Class::Contract);
            }
            Op::Fsync { fd } | Op::Fdatasync { fd } | Op::Fmetadatasync { fd } => {
                let Some(ino) = self.fs.fd_inode(fd) else {
                    return;
                };
                if !promising {
                    return;
                }
                match self.fs.inodes[ino].kind {
                    NodeKind::Dir => {
                        let dir = self.fs.path_of(ino).unwrap_or("").to_owned();
                        self.dir_durable(i, &dir);
                    }
                    NodeKind::File => match op {
                        Op::Fsync { .. } => {
                            self.size(i, ino);
                            self.file_range(i, ino, 0, u64::MAX, Class::Contract);
                            self.xattrs(i, ino);
                            self.name_of_created(i, ino);
                        }
                        Op::Fdatasync { .. } => {
                            self.size(i, ino);
                            self.file_range(i, ino, 0, u64::MAX, Class::Contract);
                        }
                        _ => self.fmetadatasync(i, ino),
                    },
                    _ => {}
                }
            }
            Op::Sync | Op::Syncfs { .. } if promising => {
                self.pending.clear();
                self.everything_durable(i);
            }
            Op::Rename { from, to } if !rename_noop => {
                // Atomic from the moment the call starts (made even while in
                // progress, and never withdrawn by its own changes).
                let atomic = (
                    Promised {
                        op: i,
                        source: op.name(),
                        class: Class::Contract,
                        promise: Promise::RenameAtomic {
                            from: from.clone(),
                            to: to.clone(),
                        },
                    },
                    Vec::new(),
                );
                self.out.push(atomic);
            }
            _ => {}
        }
        for p in &mut self.out[first..] {
            p.0.source = op.name();
        }
    }

    fn store_promise(&mut self, op: usize, class: Class, p: &PendingStore) {
        let Some(path) = self.path(p.ino) else { return };
        let end = p.offset + p.bytes.len() as u64;
        self.promise(
            op,
            class,
            Promise::FileData {
                path: path.clone(),
                offset: p.offset,
                bytes: p.bytes.clone(),
            },
            vec![Dep::Data(p.ino, p.offset..end), Dep::Name(path)],
        );
    }

    fn fmetadatasync(&mut self, i: usize, ino: InodeId) {
        self.size(i, ino);
        self.name_of_created(i, ino);
        // With the metadata durable, what the program flushed itself is now promised
        // by contract.
        let flushed: Vec<_> = self
            .program_flushed
            .iter()
            .filter(|p| p.1 == ino)
            .cloned()
            .collect();
        for (_, ino, offset, bytes) in flushed {
            let p = PendingStore {
                map: String::new(),
                ino,
                offset,
                bytes,
                unflushed: Vec::new(),
                kind: MapKind::Sync,
            };
            self.store_promise(i, Class::Contract, &p);
        }
        // What it stored and did not flush and fence, it believes durable too: only
        // the program's belief backs that (a later store to the same bytes withdraws
        // it like any promise).
        let believed: Vec<PendingStore> = self
            .pending
            .iter()
            .filter(|p| p.ino == ino)
            .cloned()
            .collect();
        for p in believed {
            self.store_promise(i, Class::UnsafeFlushOnly, &p);
        }
    }
}

/// The promises in force at a crash point where the first `ops_completed` ops have
/// returned and op `in_progress` (if any) may be half done.
///
/// `results`, when given, are the agent's [`OpResult`]s: an op that failed promises
/// nothing and changes nothing.
pub fn promises(
    ops: &[Op],
    results: Option<&[OpResult]>,
    ops_completed: usize,
    in_progress: Option<usize>,
) -> Promises {
    let result = |i: usize| fsmodel::result_of(results, i);
    let mut sim = Sim::default();
    for (i, op) in ops.iter().enumerate().take(ops_completed) {
        sim.apply(i, op, result(i), true);
    }
    if let Some(p) = in_progress.filter(|&p| p < ops.len()) {
        // Its changes withdraw promises; of its own promises only rename's atomicity
        // holds while it runs. A failed op changed nothing, even half way.
        sim.apply(p, &ops[p], result(p), false);
    }
    let changes = sim.changes;
    let items = sim
        .out
        .into_iter()
        .filter(|(p, deps)| {
            !changes
                .iter()
                .any(|(op, c)| *op > p.op && deps.iter().any(|d| touches(c, d)))
        })
        .map(|(p, _)| p)
        .collect();
    Promises { items }
}

/// The PM ranges of files, from the extents `fmetadatasync` reported: (range in the
/// PM device file, path, file offset of the range's start). `data_offset` converts
/// a physical offset on `/dev/pmem0` to one in the PM file (2 MiB for fsdax).
pub fn extent_owners(
    ops: &[Op],
    results: &[OpResult],
    data_offset: u64,
) -> Vec<(Range<u64>, String, u64)> {
    let mut fs = FsModel::new();
    let mut out = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        let r = fsmodel::result_of(Some(results), i);
        if let (Op::Fmetadatasync { fd }, Some(r)) = (op, r) {
            if let crate::protocol::OpDetail::Extents { extents } = &r.detail {
                let path = fs
                    .fd_inode(fd)
                    .and_then(|ino| fs.path_of(ino))
                    .unwrap_or("?")
                    .to_owned();
                for e in extents {
                    let s = e.physical + data_offset;
                    out.push((s..s + e.len, path.clone(), e.logical));
                }
            }
        }
        fs.apply(i, op, r);
    }
    out
}

/// The kernel's flushes of a file's data lines during an `fmetadatasync` call, to be
/// ignored by the model ([`crate::model::Replayer::ignore_flushes`]) so that only the
/// program's own flushes make the file's data durable.
///
/// `records[call]` are the call's records (between its op markers); `extents` are
/// the file's extents as FIEMAP reported them; `data_offset` converts their physical
/// offsets (on `/dev/pmem0`) to offsets in the PM device file (2 MiB for fsdax).
pub fn kernel_flushes_to_ignore(
    records: &[Record],
    call: Range<usize>,
    extents: &[Extent],
    data_offset: u64,
) -> Vec<u64> {
    let ranges: Vec<Range<u64>> = extents
        .iter()
        .map(|e| e.physical + data_offset..e.physical + data_offset + e.len)
        .collect();
    let end = call.end.min(records.len());
    (call.start.min(end)..end)
        .filter(|&i| match records[i] {
            Record::Flush {
                offset,
                privilege: Privilege::Kernel,
                ..
            } => ranges.iter().any(|r| r.contains(&offset)),
            _ => false,
        })
        .map(|i| i as u64)
        .collect()
}

/// Every record of a trace that the model must ignore for `fmetadatasync`: the
/// kernel's flushes of the file's data lines during each such call
/// ([`kernel_flushes_to_ignore`]), found from the extents the agent reported.
pub fn fmetadatasync_flushes_to_ignore(
    ops: &[Op],
    results: &[OpResult],
    records: &[Record],
    data_offset: u64,
) -> Vec<u64> {
    let ranges = op_record_ranges(records);
    let mut out = Vec::new();
    for r in results {
        if let (Some(Op::Fmetadatasync { .. }), crate::protocol::OpDetail::Extents { extents }) =
            (ops.get(r.index), &r.detail)
        {
            if let Some(Some(range)) = ranges.get(r.index) {
                out.extend(kernel_flushes_to_ignore(
                    records,
                    range.clone(),
                    extents,
                    data_offset,
                ));
            }
        }
    }
    out
}

/// Where each op's records lie, from its begin and end markers (`None` for an op
/// without both markers).
pub fn op_record_ranges(records: &[Record]) -> Vec<Option<Range<usize>>> {
    let mut out: Vec<Option<Range<usize>>> = Vec::new();
    let mut open: Option<(u32, usize)> = None;
    for (i, r) in records.iter().enumerate() {
        if let Record::Marker { marker, op, .. } = *r {
            match marker {
                MarkerKind::OpBegin => open = Some((op, i + 1)),
                MarkerKind::OpEnd => {
                    if let Some((o, start)) = open.take().filter(|(o, _)| *o == op) {
                        let o = o as usize;
                        if out.len() <= o {
                            out.resize(o + 1, None);
                        }
                        out[o] = Some(start..i);
                    }
                }
                _ => {}
            }
        }
    }
    out
}

/// What an op cost in flushes and fences.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct OpCost {
    /// Stores.
    pub stores: u64,
    /// Of them, the kernel's (the rest are user space's).
    pub kernel_stores: u64,
    /// Dirty lines the kernel flushed.
    pub kernel_lines_flushed: u64,
    /// Dirty lines user space flushed.
    pub user_lines_flushed: u64,
    /// Flushes of lines with no store since their last flush.
    pub redundant_flushes: u64,
    /// Fences.
    pub fences: u64,
}

/// Per-op costs of a trace.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Costs {
    /// Indexed by op.
    pub per_op: Vec<OpCost>,
    /// Records outside any op (boot, mount, the agent between ops).
    pub outside: OpCost,
}

/// Count, per op, the lines flushed by the kernel and by user space and the redundant
/// flushes (of lines already clean).
pub fn op_costs(records: &[Record], line_size: u32) -> Costs {
    let shift = line_size.max(1).trailing_zeros();
    let mut dirty: FxSet<u64> = FxSet::default();
    let mut costs = Costs::default();
    let mut current: Option<usize> = None;
    for r in records {
        let c = match current {
            Some(op) => {
                if costs.per_op.len() <= op {
                    costs.per_op.resize(op + 1, OpCost::default());
                }
                &mut costs.per_op[op]
            }
            None => &mut costs.outside,
        };
        match *r {
            Record::Store {
                offset,
                size,
                privilege,
                ..
            } => {
                c.stores += 1;
                c.kernel_stores += (privilege == Privilege::Kernel) as u64;
                dirty.insert(offset >> shift);
                dirty.insert((offset + size.max(1) as u64 - 1) >> shift);
            }
            Record::Flush {
                offset, privilege, ..
            } => {
                if dirty.remove(&(offset >> shift)) {
                    match privilege {
                        Privilege::Kernel => c.kernel_lines_flushed += 1,
                        Privilege::User => c.user_lines_flushed += 1,
                    }
                } else {
                    c.redundant_flushes += 1;
                }
            }
            Record::Fence { .. } => c.fences += 1,
            Record::Marker { marker, op, .. } => match marker {
                MarkerKind::OpBegin => {
                    current = Some(op as usize);
                    if costs.per_op.len() <= op as usize {
                        costs.per_op.resize(op as usize + 1, OpCost::default());
                    }
                }
                MarkerKind::OpEnd => current = None,
                _ => {}
            },
        }
    }
    costs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::Workload;

    fn ops(src: &str) -> Vec<Op> {
        Workload::parse(src, "t.toml").expect("workload parses").ops
    }

    fn all(ops: &[Op]) -> Promises {
        promises(ops, None, ops.len(), None)
    }

    fn has(p: &Promises, class: Class, want: &Promise) -> bool {
        p.items
            .iter()
            .any(|x| x.class == class && x.promise == *want)
    }

    const CREATE: &str = "[[ops]]\nop=\"open\"\npath=\"a\"\nfd=\"a\"\ncreate=true\n[[ops]]\nop=\"pwrite\"\nfd=\"a\"\noffset=0\ndata=\"hello\"\n";

    fn data(path: &str, offset: u64, bytes: &[u8]) -> Promise {
        Promise::FileData {
            path: path.into(),
            offset,
            bytes: bytes.to_vec(),
        }
    }

    #[test]
    fn fsync_promises_data_size_and_a_created_name() {
        let o = ops(&format!("{CREATE}[[ops]]\nop=\"fsync\"\nfd=\"a\"\n"));
        let p = all(&o);
        assert!(has(&p, Class::Contract, &data("a", 0, b"hello")));
        assert!(has(
            &p,
            Class::Contract,
            &Promise::FileSize {
                path: "a".into(),
                size: 5
            }
        ));
        assert!(has(
            &p,
            Class::Contract,
            &Promise::Exists { path: "a".into() }
        ));
        assert!(p.items.iter().all(|x| x.op == 2 && x.source == "fsync"));
        // Before the fsync returns, nothing is promised.
        assert!(promises(&o, None, 2, Some(2)).items.is_empty());
    }

    #[test]
    fn fdatasync_promises_data_and_size_not_the_name() {
        let o = ops(&format!("{CREATE}[[ops]]\nop=\"fdatasync\"\nfd=\"a\"\n"));
        let p = all(&o);
        assert!(has(&p, Class::Contract, &data("a", 0, b"hello")));
        assert!(has(
            &p,
            Class::Contract,
            &Promise::FileSize {
                path: "a".into(),
                size: 5
            }
        ));
        assert!(!p
            .items
            .iter()
            .any(|x| matches!(x.promise, Promise::Exists { .. })));
    }

    const MAPPED: &str = "[[ops]]\nop=\"open\"\npath=\"a\"\nfd=\"a\"\ncreate=true\n[[ops]]\nop=\"ftruncate\"\nfd=\"a\"\nlen=8192\n";

    fn mapped(kind: &str, rest: &str) -> Vec<Op> {
        ops(&format!(
            "{MAPPED}[[ops]]\nop=\"mmap\"\nfd=\"a\"\nmap=\"m\"\nlen=8192\nkind=\"{kind}\"\n[[ops]]\nop=\"store\"\nmap=\"m\"\noffset=4100\ndata=\"xyz\"\n{rest}"
        ))
    }

    #[test]
    fn msync_promises_the_range() {
        let o = mapped(
            "shared",
            "[[ops]]\nop=\"msync\"\nmap=\"m\"\noffset=4096\nlen=4096\n",
        );
        let p = all(&o);
        let zeros = |start, end| Promise::FileZeros {
            path: "a".into(),
            start,
            end,
        };
        // Sparse: the stored bytes, and zeros around them.
        assert_eq!(
            p.items
                .iter()
                .map(|x| x.promise.clone())
                .collect::<Vec<_>>(),
            [
                zeros(4096, 4100),
                data("a", 4100, b"xyz"),
                zeros(4103, 8192)
            ]
        );
        assert!(p.items.iter().all(|x| x.class == Class::Contract));
        let o = mapped(
            "shared",
            "[[ops]]\nop=\"msync\"\nmap=\"m\"\nmode=\"async\"\n",
        );
        assert!(all(&o).items.is_empty(), "MS_ASYNC promises nothing");
    }

    #[test]
    fn store_flush_fence_on_map_sync_is_a_contract() {
        let o = mapped(
            "sync",
            "[[ops]]\nop=\"flush\"\nmap=\"m\"\noffset=4100\nlen=3\n[[ops]]\nop=\"fence\"\n",
        );
        let p = all(&o);
        assert!(has(&p, Class::Contract, &data("a", 4100, b"xyz")));
        assert_eq!(p.flush_only().count(), 0);
        // Without the fence: nothing yet.
        assert!(promises(&o, None, o.len() - 1, None).items.is_empty());
        // Without the flush: nothing.
        let o = mapped("sync", "[[ops]]\nop=\"fence\"\n");
        assert!(all(&o).items.is_empty());
    }

    #[test]
    fn store_flush_fence_on_a_shared_mapping_is_flush_only() {
        let o = mapped(
            "shared",
            "[[ops]]\nop=\"flush\"\nmap=\"m\"\noffset=4096\nlen=64\n[[ops]]\nop=\"fence\"\n",
        );
        let p = all(&o);
        assert_eq!(p.contract().count(), 0);
        assert!(has(&p, Class::UnsafeFlushOnly, &data("a", 4100, b"xyz")));
    }

    #[test]
    fn fmetadatasync_promises_metadata_and_only_program_flushed_data() {
        // One store flushed and fenced by the program, one left dirty.
        let o = ops(&format!(
            "{MAPPED}[[ops]]\nop=\"mmap\"\nfd=\"a\"\nmap=\"m\"\nlen=8192\n\
             [[ops]]\nop=\"store\"\nmap=\"m\"\noffset=0\ndata=\"kept\"\n\
             [[ops]]\nop=\"flush\"\nmap=\"m\"\noffset=0\n\
             [[ops]]\nop=\"fence\"\n\
             [[ops]]\nop=\"store\"\nmap=\"m\"\noffset=4096\ndata=\"lost\"\n\
             [[ops]]\nop=\"fmetadatasync\"\nfd=\"a\"\n"
        ));
        let p = all(&o);
        assert!(has(
            &p,
            Class::Contract,
            &Promise::FileSize {
                path: "a".into(),
                size: 8192
            }
        ));
        let contract_data: Vec<_> = p
            .contract()
            .filter(|x| matches!(x.promise, Promise::FileData { .. }))
            .collect();
        assert_eq!(contract_data.len(), 1);
        assert_eq!(contract_data[0].promise, data("a", 0, b"kept"));
        assert_eq!(contract_data[0].source, "fmetadatasync");

        // The kernel's flushes of the file's data lines during the call are ignored;
        // its metadata flushes and user flushes are not.
        let flush = |offset, privilege| Record::Flush {
            offset,
            flush: crate::trace::FlushKind::Clwb,
            privilege,
            vcpu: 0,
            pc: 0,
        };
        let mark = |marker, op| Record::Marker {
            marker,
            op,
            a: 0,
            b: 0,
            vcpu: 0,
        };
        let base = 2 << 20;
        let records = vec![
            flush(base + 4096, Privilege::Kernel), // before the call
            mark(MarkerKind::OpBegin, 7),
            flush(base + 4096, Privilege::Kernel), // 2: data line: ignored
            flush(base + 64, Privilege::Kernel),   // 3: metadata block
            flush(base + 4096 + 64, Privilege::User),
            flush(base + 8191, Privilege::Kernel), // 5: data line: ignored
            mark(MarkerKind::OpEnd, 7),
        ];
        let range = op_record_ranges(&records)[7].clone().unwrap();
        assert_eq!(range, 2..6);
        let extents = [Extent {
            logical: 0,
            physical: 4096,
            len: 4096,
            flags: 0,
        }];
        assert_eq!(
            kernel_flushes_to_ignore(&records, range, &extents, 2 << 20),
            vec![2, 5]
        );
    }

    #[test]
    fn rename_is_atomic_always_and_durable_after_the_directory_fsync() {
        let o = ops(&format!(
            "{CREATE}[[ops]]\nop=\"fsync\"\nfd=\"a\"\n[[ops]]\nop=\"rename\"\nfrom=\"a\"\nto=\"b\"\n\
             [[ops]]\nop=\"open\"\npath=\".\"\nfd=\"d\"\ndirectory=true\n[[ops]]\nop=\"fsync\"\nfd=\"d\"\n"
        ));
        let atomic = Promise::RenameAtomic {
            from: "a".into(),
            to: "b".into(),
        };
        // In progress: atomic, and the fsync's promises about `a` are withdrawn.
        let p = promises(&o, None, 3, Some(3));
        assert!(has(&p, Class::Contract, &atomic));
        assert!(!p
            .items
            .iter()
            .any(|x| x.promise == Promise::Exists { path: "a".into() }));
        // Done but the directory not synced: atomic only.
        let p = promises(&o, None, 4, None);
        assert_eq!(p.items.len(), 1);
        // After the directory fsync: b exists and a is gone.
        let p = all(&o);
        assert!(has(&p, Class::Contract, &atomic));
        assert!(has(
            &p,
            Class::Contract,
            &Promise::Exists { path: "b".into() }
        ));
        assert!(has(
            &p,
            Class::Contract,
            &Promise::Absent { path: "a".into() }
        ));
    }

    #[test]
    fn sync_and_syncfs_promise_everything_before() {
        for sync in [
            "[[ops]]\nop=\"sync\"\n",
            "[[ops]]\nop=\"syncfs\"\nfd=\"a\"\n",
        ] {
            let o = ops(&format!(
                "{CREATE}[[ops]]\nop=\"mkdir\"\npath=\"d\"\n[[ops]]\nop=\"symlink\"\ntarget=\"a\"\npath=\"d/l\"\n{sync}\
                 [[ops]]\nop=\"pwrite\"\nfd=\"a\"\noffset=100\ndata=\"later\"\n"
            ));
            let p = all(&o);
            for path in ["a", "d", "d/l"] {
                assert!(
                    has(&p, Class::Contract, &Promise::Exists { path: path.into() }),
                    "{path}"
                );
            }
            assert!(has(
                &p,
                Class::Contract,
                &Promise::Symlink {
                    path: "d/l".into(),
                    target: "a".into()
                }
            ));
            // The later pwrite extends the file: size and data promises are withdrawn.
            assert!(!p.items.iter().any(|x| matches!(
                x.promise,
                Promise::FileSize { .. } | Promise::FileData { .. }
            )));
            let before = promises(&o, None, o.len() - 1, None);
            assert!(has(&before, Class::Contract, &data("a", 0, b"hello")));
        }
    }

    #[test]
    fn failed_ops_promise_nothing() {
        let o = ops(&format!("{CREATE}[[ops]]\nop=\"fsync\"\nfd=\"a\"\n"));
        let results = vec![OpResult {
            index: 2,
            ret: -1,
            errno: Some(5),
            detail: Default::default(),
            micros: 0,
        }];
        assert!(promises(&o, Some(&results), 3, None).items.is_empty());
    }

    #[test]
    fn check_against_a_dump() {
        let bytes = crate::ops::seeded_bytes(1, 5000);
        let entry = |size: u64, content: &[u8]| FsEntry {
            path: "a".into(),
            kind: EntryKind::File,
            size,
            mode: 0o644,
            nlink: 1,
            ino: 12,
            blake3: String::new(),
            blocks: crate::protocol::block_hashes(content),
            xattrs: Default::default(),
            target: None,
            error: None,
        };
        let good = entry(5000, &bytes);
        let p = data("a", 0, &bytes);
        assert_eq!(p.check(std::slice::from_ref(&good), &NoBlocks), Kept::Yes);
        let mut bad = bytes.clone();
        bad[4500] ^= 1;
        assert!(matches!(
            p.check(&[entry(5000, &bad)], &NoBlocks),
            Kept::No(_)
        ));
        assert!(matches!(
            p.check(&[entry(100, &bytes[..100])], &NoBlocks),
            Kept::No(_)
        ));
        assert_eq!(p.check(&[], &NoBlocks), Kept::Unknown);
        // A promise inside one block cannot be checked against block hashes.
        assert_eq!(
            data("a", 10, b"xy").check(std::slice::from_ref(&good), &NoBlocks),
            Kept::Unknown
        );
        assert_eq!(
            Promise::Exists { path: "a".into() }.check(std::slice::from_ref(&good), &NoBlocks),
            Kept::Yes
        );
        assert!(matches!(
            Promise::Absent { path: "a".into() }.check(std::slice::from_ref(&good), &NoBlocks),
            Kept::No(_)
        ));
        assert!(matches!(
            Promise::FileSize {
                path: "a".into(),
                size: 1
            }
            .check(std::slice::from_ref(&good), &NoBlocks),
            Kept::No(_)
        ));
        let mut b = good.clone();
        b.path = "b".into();
        let atomic = Promise::RenameAtomic {
            from: "a".into(),
            to: "b".into(),
        };
        assert!(matches!(
            atomic.check(&[good.clone(), b], &NoBlocks),
            Kept::No(_)
        ));
        assert_eq!(atomic.check(&[good], &NoBlocks), Kept::Unknown);
    }

    #[test]
    fn op_costs_split_kernel_user_and_redundant() {
        let st = |offset| Record::Store {
            offset,
            size: 8,
            value: 0,
            non_temporal: false,
            privilege: Privilege::User,
            vcpu: 0,
            pc: 0,
        };
        let fl = |offset, privilege| Record::Flush {
            offset,
            flush: crate::trace::FlushKind::Clwb,
            privilege,
            vcpu: 0,
            pc: 0,
        };
        let mark = |marker, op| Record::Marker {
            marker,
            op,
            a: 0,
            b: 0,
            vcpu: 0,
        };
        let records = vec![
            st(0),
            mark(MarkerKind::OpBegin, 0),
            st(64),
            fl(64, Privilege::User),
            fl(64, Privilege::User), // clean again: redundant
            fl(0, Privilege::Kernel),
            mark(MarkerKind::OpEnd, 0),
            mark(MarkerKind::OpBegin, 1),
            fl(128, Privilege::Kernel), // never stored: redundant
            Record::Store {
                offset: 192,
                size: 8,
                value: 0,
                non_temporal: false,
                privilege: Privilege::Kernel,
                vcpu: 0,
                pc: 0,
            },
            mark(MarkerKind::OpEnd, 1),
        ];
        let c = op_costs(&records, 64);
        assert_eq!(c.outside.stores, 1);
        assert_eq!(
            c.per_op[0],
            OpCost {
                stores: 1,
                kernel_stores: 0,
                kernel_lines_flushed: 1,
                user_lines_flushed: 1,
                redundant_flushes: 1,
                fences: 0
            }
        );
        assert_eq!(c.per_op[1].redundant_flushes, 1);
        assert_eq!((c.per_op[1].stores, c.per_op[1].kernel_stores), (1, 1));
    }
}
