//! Promises: what the ops that completed before a crash point guarantee about every
//! crash state there, following DESIGN.md's oracle table.
//!
//! | op | promise |
//! | --- | --- |
//! | `fsync(f)` | f's data and size; a file created by the workload also its name |
//! | `fdatasync(f)` | f's data and size (the metadata needed to read it back) |
//! | `msync(MS_SYNC)` | the data in the range |
//! | store + flush + fence, `MAP_SYNC` | the stored bytes ([`Class::Contract`]) |
//! | store + flush + fence, plain shared | the stored bytes, but only as [`Class::UnsafeFlushOnly`]: nothing by contract, reported apart |
//! | `fmetadatasync(f)` | f's size (and a created f's name); the data only where the program flushed it itself, which is upgraded to a contract |
//! | `rename(a, b)` | atomic in every crash state, even while in progress; durable once the parent directory is fsynced (or after sync) |
//! | `sync`, `syncfs` | every name, size, content and absence before it |
//!
//! A promise is about the state when it was made. A later op (completed, or the op in
//! progress, which may be half done) that changes the same bytes, the same size or
//! the same name makes the crash state legitimately show either version, so such a
//! promise is withdrawn rather than checked: the oracle never reports a loss the ops
//! did not promise.
//!
//! [`kernel_flushes_to_ignore`] finds the kernel's own flushes of a file's data lines
//! during an `fmetadatasync` call, for [`crate::model::Replayer::ignore_flushes`].
//! [`op_costs`] measures what each op cost in flushes.

use crate::model::FxSet;
use crate::ops::{FallocateFlag, MapKind, MsyncMode, Op, StoreKind};
use crate::protocol::{EntryKind, Extent, FsEntry, OpResult};
use crate::trace::{MarkerKind, Privilege, Record};
use std::collections::BTreeMap;
use std::ops::Range;

/// Size of the blocks [`FsEntry::blocks`] hashes.
pub const BLOCK_SIZE: u64 = 4096;

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
    /// The symlink at `path` points to `target` (when it exists).
    Symlink {
        /// The path.
        path: String,
        /// Expected target.
        target: String,
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

/// Whether a promise is a contract or only what the hardware happens to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Class {
    /// The file system promises it: a loss is a file-system bug.
    Contract,
    /// Only flushes on a plain shared mapping back it: a loss is the program's bug
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

/// The outcome of checking one promise against a dumped state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// The state keeps the promise.
    Holds,
    /// The state breaks it; the text says how.
    Violated(String),
    /// The dump cannot tell (e.g. data in a partial block, or a file whose name was not
    /// promised is absent).
    Unchecked,
}

impl Promise {
    /// Check the promise against a dump ([`crate::protocol::AgentMsg::State`]
    /// entries, any order).
    pub fn check(&self, entries: &[FsEntry]) -> Check {
        let find = |p: &str| entries.iter().find(|e| e.path == p);
        match self {
            Promise::Exists { path } => match find(path) {
                Some(_) => Check::Holds,
                None => Check::Violated(format!("{path} is missing")),
            },
            Promise::Absent { path } => match find(path) {
                None => Check::Holds,
                Some(_) => Check::Violated(format!("{path} still exists")),
            },
            Promise::FileSize { path, size } => match find(path) {
                None => Check::Unchecked,
                Some(e) if e.size == *size => Check::Holds,
                Some(e) => Check::Violated(format!("{path} is {} bytes, not {size}", e.size)),
            },
            Promise::Symlink { path, target } => match find(path) {
                None => Check::Unchecked,
                Some(e) if e.target.as_deref() == Some(target) => Check::Holds,
                Some(e) => {
                    Check::Violated(format!("{path} points to {:?}, not {target:?}", e.target))
                }
            },
            Promise::FileData {
                path,
                offset,
                bytes,
            } => {
                let Some(e) = find(path) else {
                    return Check::Unchecked;
                };
                let end = offset + bytes.len() as u64;
                if e.size < end {
                    return Check::Violated(format!(
                        "{path} is {} bytes: promised data up to {end} is cut off",
                        e.size
                    ));
                }
                let mut checked = false;
                for b in offset.div_ceil(BLOCK_SIZE)..end.div_ceil(BLOCK_SIZE) {
                    let bs = b * BLOCK_SIZE;
                    let be = (bs + BLOCK_SIZE).min(e.size);
                    if be > end {
                        // The block holds bytes outside the promise.
                        continue;
                    }
                    let Some(got) = e.block(b) else {
                        return Check::Unchecked;
                    };
                    let want = blake3::hash(&bytes[(bs - offset) as usize..(be - offset) as usize]);
                    if got.as_ref() != want.to_hex().as_str() {
                        return Check::Violated(format!(
                            "{path}: block {b} (bytes {bs}..{be}) differs from what was promised"
                        ));
                    }
                    checked = true;
                }
                if checked {
                    Check::Holds
                } else {
                    Check::Unchecked
                }
            }
            Promise::RenameAtomic { from, to } => match (find(from), find(to)) {
                (Some(a), Some(b)) if a.ino == b.ino && a.kind != EntryKind::Dir => {
                    Check::Violated(format!("{from} and {to} both name inode {}", a.ino))
                }
                _ => Check::Unchecked,
            },
        }
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

#[derive(Debug, Clone)]
enum Node {
    File(Vec<u8>),
    Dir,
    /// From the base image, or content the model gave up on: no promises about it.
    Unknown,
    Symlink(String),
}

#[derive(Debug, Clone)]
struct Inode {
    node: Node,
    created: bool,
}

#[derive(Debug, Clone)]
struct Fd {
    ino: usize,
    path: String,
    pos: u64,
    append: bool,
}

#[derive(Debug, Clone)]
struct Map {
    ino: usize,
    path: String,
    offset: u64,
    kind: MapKind,
}

#[derive(Debug, Clone)]
struct PendingStore {
    map: String,
    ino: usize,
    path: String,
    /// Offset in the file.
    offset: u64,
    bytes: Vec<u8>,
    /// Line-sized chunks of the mapping still to flush, as mapping offsets / 64.
    unflushed: Vec<u64>,
    kind: MapKind,
}

/// What a promise depends on, to withdraw it when a later op changes that.
#[derive(Debug, Clone)]
enum Dep {
    Data(usize, Range<u64>),
    Size(usize),
    Name(String),
}

/// A change an op made, for withdrawing earlier promises.
#[derive(Debug, Clone)]
enum Change {
    Data(usize, Range<u64>),
    Size(usize),
    Name(String),
}

fn touches(change: &Change, dep: &Dep) -> bool {
    let under = |a: &str, b: &str| {
        a == b || a.starts_with(&format!("{b}/")) || b.starts_with(&format!("{a}/"))
    };
    match (change, dep) {
        (Change::Data(i, r), Dep::Data(j, s)) => i == j && r.start < s.end && s.start < r.end,
        (Change::Size(i), Dep::Size(j)) => i == j,
        (Change::Name(a), Dep::Name(b)) => under(a, b),
        _ => false,
    }
}

/// Line granularity of user flushes in the simulation (matches the ops' `flush`).
const FLUSH_LINE: u64 = 64;

#[derive(Debug, Default)]
struct Sim {
    inodes: Vec<Inode>,
    names: BTreeMap<String, usize>,
    removed: FxSet<String>,
    fds: BTreeMap<String, Fd>,
    maps: BTreeMap<String, Map>,
    pending: Vec<PendingStore>,
    /// Stores the program flushed and fenced itself: (op, ino, path, offset, bytes).
    program_flushed: Vec<(usize, usize, String, u64, Vec<u8>)>,
    out: Vec<(Promised, Vec<Dep>)>,
    changes: Vec<(usize, Change)>,
}

fn parent(path: &str) -> &str {
    path.rsplit_once('/').map(|(p, _)| p).unwrap_or("")
}

impl Sim {
    fn promise(
        &mut self,
        op: usize,
        source: &'static str,
        class: Class,
        promise: Promise,
        deps: Vec<Dep>,
    ) {
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

    fn change(&mut self, op: usize, c: Change) {
        self.changes.push((op, c));
    }

    fn file_mut(&mut self, ino: usize) -> Option<&mut Vec<u8>> {
        match &mut self.inodes.get_mut(ino)?.node {
            Node::File(d) => Some(d),
            _ => None,
        }
    }

    fn write(&mut self, op: usize, ino: usize, offset: u64, bytes: &[u8]) {
        let Some(d) = self.file_mut(ino) else { return };
        let end = offset as usize + bytes.len();
        let grew = end > d.len();
        if grew {
            d.resize(end, 0);
        }
        d[offset as usize..end].copy_from_slice(bytes);
        self.change(op, Change::Data(ino, offset..end as u64));
        if grew {
            self.change(op, Change::Size(ino));
        }
    }

    fn set_len(&mut self, op: usize, ino: usize, len: u64) {
        let Some(d) = self.file_mut(ino) else { return };
        let old = d.len() as u64;
        d.resize(len as usize, 0);
        if old != len {
            self.change(op, Change::Data(ino, old.min(len)..old.max(len)));
            self.change(op, Change::Size(ino));
        }
    }

    fn whole_file(
        &mut self,
        op: usize,
        source: &'static str,
        ino: usize,
        path: &str,
        class: Class,
    ) {
        let Some(Node::File(d)) = self.inodes.get(ino).map(|i| &i.node) else {
            return;
        };
        let d = d.clone();
        let len = d.len() as u64;
        let name = Dep::Name(path.to_owned());
        self.promise(
            op,
            source,
            class,
            Promise::FileSize {
                path: path.to_owned(),
                size: len,
            },
            vec![Dep::Size(ino), name.clone()],
        );
        if len > 0 {
            self.promise(
                op,
                source,
                class,
                Promise::FileData {
                    path: path.to_owned(),
                    offset: 0,
                    bytes: d,
                },
                vec![Dep::Data(ino, 0..len), Dep::Size(ino), name],
            );
        }
    }

    fn name_of_created(&mut self, op: usize, source: &'static str, ino: usize, path: &str) {
        if self.inodes.get(ino).is_some_and(|i| i.created) {
            self.promise(
                op,
                source,
                Class::Contract,
                Promise::Exists {
                    path: path.to_owned(),
                },
                vec![Dep::Name(path.to_owned())],
            );
        }
    }

    /// Names (and absences) directly in `dir` become durable.
    fn dir_durable(&mut self, op: usize, source: &'static str, dir: &str) {
        let in_dir = |p: &str| parent(p) == dir;
        let present: Vec<String> = self.names.keys().filter(|p| in_dir(p)).cloned().collect();
        let absent: Vec<String> = self.removed.iter().filter(|p| in_dir(p)).cloned().collect();
        for path in present {
            self.promise(
                op,
                source,
                Class::Contract,
                Promise::Exists { path: path.clone() },
                vec![Dep::Name(path)],
            );
        }
        let mut absent = absent;
        absent.sort();
        for path in absent {
            self.promise(
                op,
                source,
                Class::Contract,
                Promise::Absent { path: path.clone() },
                vec![Dep::Name(path)],
            );
        }
    }

    fn everything_durable(&mut self, op: usize, source: &'static str) {
        let names: Vec<(String, usize)> = self.names.iter().map(|(p, i)| (p.clone(), *i)).collect();
        for (path, ino) in names {
            self.promise(
                op,
                source,
                Class::Contract,
                Promise::Exists { path: path.clone() },
                vec![Dep::Name(path.clone())],
            );
            match self.inodes[ino].node.clone() {
                Node::File(_) => self.whole_file(op, source, ino, &path, Class::Contract),
                Node::Symlink(target) => self.promise(
                    op,
                    source,
                    Class::Contract,
                    Promise::Symlink {
                        path: path.clone(),
                        target,
                    },
                    vec![Dep::Name(path)],
                ),
                Node::Dir | Node::Unknown => {}
            }
        }
        let mut absent: Vec<String> = self.removed.iter().cloned().collect();
        absent.sort();
        for path in absent {
            self.promise(
                op,
                source,
                Class::Contract,
                Promise::Absent { path: path.clone() },
                vec![Dep::Name(path)],
            );
        }
    }

    fn add_name(&mut self, op: usize, path: &str, ino: usize) {
        self.names.insert(path.to_owned(), ino);
        self.removed.remove(path);
        self.change(op, Change::Name(path.to_owned()));
    }

    fn remove_name(&mut self, op: usize, path: &str) -> Option<usize> {
        let ino = self.names.remove(path)?;
        self.removed.insert(path.to_owned());
        self.change(op, Change::Name(path.to_owned()));
        Some(ino)
    }

    /// Apply one op; promises are made only when `promising` (a completed op).
    fn apply(&mut self, i: usize, op: &Op, promising: bool) {
        let name = op.name();
        match op {
            Op::Open {
                path,
                fd,
                create,
                truncate,
                append,
                ..
            } => {
                let ino = match self.names.get(path) {
                    Some(&ino) => ino,
                    None if *create => {
                        self.inodes.push(Inode {
                            node: Node::File(Vec::new()),
                            created: true,
                        });
                        let ino = self.inodes.len() - 1;
                        self.add_name(i, path, ino);
                        ino
                    }
                    None => {
                        // A file from the base image: content unknown, so it carries no
                        // data promises, but its name and later writes are tracked.
                        self.inodes.push(Inode {
                            node: Node::Unknown,
                            created: false,
                        });
                        let ino = self.inodes.len() - 1;
                        if path != "." {
                            self.names.insert(path.clone(), ino);
                        }
                        ino
                    }
                };
                if *truncate {
                    self.set_len(i, ino, 0);
                }
                self.fds.insert(
                    fd.clone(),
                    Fd {
                        ino,
                        path: path.clone(),
                        pos: 0,
                        append: *append,
                    },
                );
            }
            Op::Close { fd } => {
                self.fds.remove(fd);
            }
            Op::Write { fd, data, .. } => {
                let Some(f) = self.fds.get(fd).cloned() else {
                    return;
                };
                let bytes = data.bytes();
                let at = if f.append {
                    match &self.inodes[f.ino].node {
                        Node::File(d) => d.len() as u64,
                        _ => f.pos,
                    }
                } else {
                    f.pos
                };
                self.write(i, f.ino, at, &bytes);
                if let Some(f) = self.fds.get_mut(fd) {
                    f.pos = at + bytes.len() as u64;
                }
            }
            Op::Pwrite {
                fd, offset, data, ..
            } => {
                let Some(f) = self.fds.get(fd).cloned() else {
                    return;
                };
                self.write(i, f.ino, *offset, &data.bytes());
            }
            Op::Read { .. } => {}
            Op::Ftruncate { fd, len } => {
                let Some(f) = self.fds.get(fd).cloned() else {
                    return;
                };
                self.set_len(i, f.ino, *len);
            }
            Op::Fallocate {
                fd,
                offset,
                len,
                mode,
            } => {
                let Some(f) = self.fds.get(fd).cloned() else {
                    return;
                };
                let end = offset + len;
                let has = |flag| mode.contains(&flag);
                if has(FallocateFlag::CollapseRange) || has(FallocateFlag::InsertRange) {
                    // Shifts everything after `offset`: no earlier data promise about
                    // this file survives, and the content model gives up on it.
                    self.change(i, Change::Data(f.ino, 0..u64::MAX));
                    self.change(i, Change::Size(f.ino));
                    if let Some(inode) = self.inodes.get_mut(f.ino) {
                        inode.node = Node::Unknown;
                    }
                    return;
                }
                if has(FallocateFlag::PunchHole) || has(FallocateFlag::ZeroRange) {
                    if let Some(d) = self.file_mut(f.ino) {
                        let n = d.len() as u64;
                        let zero_end = if has(FallocateFlag::KeepSize) {
                            end.min(n)
                        } else {
                            end
                        };
                        if zero_end > n {
                            d.resize(zero_end as usize, 0);
                        }
                        for b in &mut d[(*offset).min(zero_end) as usize..zero_end as usize] {
                            *b = 0;
                        }
                        self.change(i, Change::Data(f.ino, *offset..end));
                        if zero_end > n {
                            self.change(i, Change::Size(f.ino));
                        }
                    }
                } else if !has(FallocateFlag::KeepSize) {
                    let n = self.file_mut(f.ino).map(|d| d.len() as u64).unwrap_or(0);
                    if end > n {
                        self.set_len(i, f.ino, end);
                    }
                }
            }
            Op::Mmap {
                fd,
                map,
                offset,
                kind,
                ..
            } => {
                let Some(f) = self.fds.get(fd).cloned() else {
                    return;
                };
                self.maps.insert(
                    map.clone(),
                    Map {
                        ino: f.ino,
                        path: f.path,
                        offset: *offset,
                        kind: *kind,
                    },
                );
            }
            Op::Munmap { map } => {
                self.maps.remove(map);
            }
            Op::Store {
                map,
                offset,
                data,
                kind,
            } => {
                let Some(m) = self.maps.get(map).cloned() else {
                    return;
                };
                let bytes = data.bytes();
                let file_off = m.offset + offset;
                // Stores through a mapping never extend the file.
                let size = self.file_mut(m.ino).map(|d| d.len() as u64).unwrap_or(0);
                let end = (file_off + bytes.len() as u64).min(size);
                if end <= file_off {
                    return;
                }
                let bytes = bytes[..(end - file_off) as usize].to_vec();
                self.write(i, m.ino, file_off, &bytes);
                let unflushed = if *kind == StoreKind::NonTemporal {
                    Vec::new()
                } else {
                    (offset / FLUSH_LINE..=(offset + bytes.len() as u64 - 1) / FLUSH_LINE).collect()
                };
                self.pending.push(PendingStore {
                    map: map.clone(),
                    ino: m.ino,
                    path: m.path,
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
                    let end = p.offset + p.bytes.len() as u64;
                    self.program_flushed.push((
                        i,
                        p.ino,
                        p.path.clone(),
                        p.offset,
                        p.bytes.clone(),
                    ));
                    self.promise(
                        i,
                        name,
                        class,
                        Promise::FileData {
                            path: p.path.clone(),
                            offset: p.offset,
                            bytes: p.bytes,
                        },
                        vec![Dep::Data(p.ino, p.offset..end), Dep::Name(p.path)],
                    );
                }
            }
            Op::Msync {
                map,
                offset,
                len,
                mode,
            } => {
                let Some(m) = self.maps.get(map).cloned() else {
                    return;
                };
                if !promising || *mode == MsyncMode::Async {
                    return;
                }
                let Some(d) = self.file_mut(m.ino).cloned() else {
                    return;
                };
                let start = (m.offset + offset).min(d.len() as u64);
                let end = match len {
                    Some(l) => (m.offset + offset + l).min(d.len() as u64),
                    None => d.len() as u64,
                };
                // The synced range is durable, so pending stores in it need no flush.
                self.pending.retain(|p| {
                    !(p.ino == m.ino && p.offset >= start && p.offset + p.bytes.len() as u64 <= end)
                });
                if end > start {
                    self.promise(
                        i,
                        name,
                        Class::Contract,
                        Promise::FileData {
                            path: m.path.clone(),
                            offset: start,
                            bytes: d[start as usize..end as usize].to_vec(),
                        },
                        vec![Dep::Data(m.ino, start..end), Dep::Name(m.path)],
                    );
                }
            }
            Op::Fsync { fd } | Op::Fdatasync { fd } | Op::Fmetadatasync { fd } => {
                let Some(f) = self.fds.get(fd).cloned() else {
                    return;
                };
                if !promising {
                    return;
                }
                // A directory made by the workload, or an object from the base image
                // (an fsync of it is taken as a directory sync: for a file that
                // lists no names, so it promises nothing wrong).
                let is_dir = matches!(self.inodes[f.ino].node, Node::Dir | Node::Unknown);
                if matches!(op, Op::Fsync { .. }) && (is_dir || f.path == ".") {
                    let dir = if f.path == "." { "" } else { f.path.as_str() };
                    self.dir_durable(i, name, dir);
                    return;
                }
                match op {
                    Op::Fsync { .. } => {
                        self.whole_file(i, name, f.ino, &f.path, Class::Contract);
                        self.name_of_created(i, name, f.ino, &f.path);
                    }
                    Op::Fdatasync { .. } => {
                        self.whole_file(i, name, f.ino, &f.path, Class::Contract)
                    }
                    _ => {
                        let size = self.file_mut(f.ino).map(|d| d.len() as u64);
                        if let Some(size) = size {
                            self.promise(
                                i,
                                name,
                                Class::Contract,
                                Promise::FileSize {
                                    path: f.path.clone(),
                                    size,
                                },
                                vec![Dep::Size(f.ino), Dep::Name(f.path.clone())],
                            );
                        }
                        self.name_of_created(i, name, f.ino, &f.path);
                        // With the metadata durable, what the program flushed itself is
                        // now promised by contract.
                        let flushed: Vec<_> = self
                            .program_flushed
                            .iter()
                            .filter(|p| p.1 == f.ino)
                            .cloned()
                            .collect();
                        for (_, ino, path, offset, bytes) in flushed {
                            let end = offset + bytes.len() as u64;
                            self.promise(
                                i,
                                name,
                                Class::Contract,
                                Promise::FileData {
                                    path: path.clone(),
                                    offset,
                                    bytes,
                                },
                                vec![Dep::Data(ino, offset..end), Dep::Name(path)],
                            );
                        }
                    }
                }
            }
            Op::Sync | Op::Syncfs { .. } => {
                if promising {
                    self.pending.clear();
                    self.everything_durable(i, name);
                }
            }
            Op::Rename { from, to } => {
                // Atomic from the moment the call starts.
                self.promise(
                    i,
                    name,
                    Class::Contract,
                    Promise::RenameAtomic {
                        from: from.clone(),
                        to: to.clone(),
                    },
                    Vec::new(),
                );
                let moved: Vec<(String, usize)> = self
                    .names
                    .iter()
                    .filter(|(p, _)| *p == from || p.starts_with(&format!("{from}/")))
                    .map(|(p, i)| (p.clone(), *i))
                    .collect();
                self.remove_name(i, to);
                for (p, ino) in moved {
                    self.remove_name(i, &p);
                    let new = format!("{to}{}", &p[from.len()..]);
                    self.add_name(i, &new, ino);
                }
            }
            Op::Link { from, to } => {
                if let Some(&ino) = self.names.get(from) {
                    self.add_name(i, to, ino);
                }
            }
            Op::Unlink { path } | Op::Rmdir { path } => {
                self.remove_name(i, path);
            }
            Op::Mkdir { path, .. } => {
                self.inodes.push(Inode {
                    node: Node::Dir,
                    created: true,
                });
                let ino = self.inodes.len() - 1;
                self.add_name(i, path, ino);
            }
            Op::Symlink { target, path } => {
                self.inodes.push(Inode {
                    node: Node::Symlink(target.clone()),
                    created: true,
                });
                let ino = self.inodes.len() - 1;
                self.add_name(i, path, ino);
            }
            Op::Truncate { .. }
            | Op::SyncFileRange { .. }
            | Op::Mkfifo { .. }
            | Op::Setxattr { .. }
            | Op::Removexattr { .. } => {}
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
    let failed = |i: usize| {
        results
            .and_then(|r| r.iter().find(|r| r.index == i))
            .is_some_and(|r| !r.ok())
    };
    let mut sim = Sim::default();
    for (i, op) in ops.iter().enumerate().take(ops_completed) {
        if !failed(i) {
            sim.apply(i, op, true);
        }
    }
    if let Some(p) = in_progress.filter(|&p| p < ops.len()) {
        // Its changes withdraw promises; of its own promises only rename's atomicity
        // holds while it runs.
        sim.apply(p, &ops[p], false);
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
            Record::Store { offset, size, .. } => {
                c.stores += 1;
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
        let mut want = vec![0u8; 4096];
        want[4..7].copy_from_slice(b"xyz");
        assert!(has(&p, Class::Contract, &data("a", 4096, &want)));
        assert_eq!(p.items.len(), 1, "{p:?}");
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
             [[ops]]\nop=\"open\"\npath=\".\"\nfd=\"d\"\n[[ops]]\nop=\"fsync\"\nfd=\"d\"\n"
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
            blocks: content
                .chunks(4096)
                .enumerate()
                .map(|(i, c)| (i as u64, blake3::hash(c).to_hex().to_string()))
                .collect(),
            xattrs: Default::default(),
            target: None,
            error: None,
        };
        let good = entry(5000, &bytes);
        let p = data("a", 0, &bytes);
        assert_eq!(p.check(std::slice::from_ref(&good)), Check::Holds);
        let mut bad = bytes.clone();
        bad[4500] ^= 1;
        assert!(matches!(p.check(&[entry(5000, &bad)]), Check::Violated(_)));
        assert!(matches!(
            p.check(&[entry(100, &bytes[..100])]),
            Check::Violated(_)
        ));
        assert_eq!(p.check(&[]), Check::Unchecked);
        // A promise inside one block cannot be checked against block hashes.
        assert_eq!(
            data("a", 10, b"xy").check(std::slice::from_ref(&good)),
            Check::Unchecked
        );
        assert_eq!(
            Promise::Exists { path: "a".into() }.check(std::slice::from_ref(&good)),
            Check::Holds
        );
        assert!(matches!(
            Promise::Absent { path: "a".into() }.check(std::slice::from_ref(&good)),
            Check::Violated(_)
        ));
        assert!(matches!(
            Promise::FileSize {
                path: "a".into(),
                size: 1
            }
            .check(std::slice::from_ref(&good)),
            Check::Violated(_)
        ));
        let mut b = good.clone();
        b.path = "b".into();
        let atomic = Promise::RenameAtomic {
            from: "a".into(),
            to: "b".into(),
        };
        assert!(matches!(
            atomic.check(&[good.clone(), b]),
            Check::Violated(_)
        ));
        assert_eq!(atomic.check(&[good]), Check::Unchecked);
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
            mark(MarkerKind::OpEnd, 1),
        ];
        let c = op_costs(&records, 64);
        assert_eq!(c.outside.stores, 1);
        assert_eq!(
            c.per_op[0],
            OpCost {
                stores: 1,
                kernel_lines_flushed: 1,
                user_lines_flushed: 1,
                redundant_flushes: 1,
                fences: 0
            }
        );
        assert_eq!(c.per_op[1].redundant_flushes, 1);
    }
}
