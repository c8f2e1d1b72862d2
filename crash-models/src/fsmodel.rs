//! The one model of what ops do to a file system: names, inodes (hard links), sizes,
//! sparse contents with the op that wrote each byte range, xattrs, open descriptors
//! and mappings.
//!
//! Everything that interprets the op language reads this model: the promises
//! ([`crate::promise`]), the oracle's content history ([`crate::history`]), the
//! owners of PM extents, and the differential test against the real kernel
//! ([`FsModel::entries`] and [`compare`]).
//!
//! Rules:
//! * an op whose result is a failure changes nothing (the kernel's errno is data,
//!   not a reason to stop);
//! * a write that returned fewer bytes than asked wrote only that many;
//! * `pwrite` on an `O_APPEND` descriptor appends, as Linux does;
//! * contents are sparse: memory grows with the bytes written and the names made,
//!   never with file sizes (`ftruncate` to 1 TiB costs nothing);
//! * every byte range remembers the op that wrote it, so a promise can say which
//!   bytes it covers and the oracle can tell whose data a block holds.
//!
//! The model starts from an empty file system (the workload's base image holds only
//! `lost+found` on ext4, which [`compare`] ignores). An object the model did not make
//! and cannot see (opened without `create` from the base image) is
//! [`NodeKind::Unknown`]: tracked by name, never promised.

use crate::ops::{FallocateFlag, MapKind, Op, XattrFlag};
use crate::protocol::{self, EntryKind, FsEntry, OpResult, DUMP_BLOCK};
use std::collections::BTreeMap;
use std::ops::Range;

/// Index of an inode in the model (creation order; 0 is the root directory).
pub type InodeId = usize;

/// What an inode is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link and its target.
    Symlink(String),
    /// A named pipe.
    Fifo,
    /// An object from the base image: the model does not know what it holds.
    Unknown,
}

/// A run of bytes written by one op.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// The op that wrote them.
    pub op: usize,
    /// The bytes.
    pub bytes: Vec<u8>,
}

/// A file's contents: non-overlapping written segments by start offset; every byte
/// below `size` that no segment covers reads as zero.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Content {
    /// Size in bytes.
    pub size: u64,
    /// Written segments, by file offset; none reaches past `size`.
    pub segments: BTreeMap<u64, Segment>,
}

impl Content {
    /// Remove `[start, end)` from the segments (the bytes read as zero afterwards).
    fn clear(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        let overlapping: Vec<u64> = self
            .segments
            .range(..end)
            .filter(|(s, seg)| *s + seg.bytes.len() as u64 > start)
            .map(|(s, _)| *s)
            .collect();
        for s in overlapping {
            let seg = self.segments.remove(&s).expect("listed");
            let e = s + seg.bytes.len() as u64;
            if s < start {
                self.segments.insert(
                    s,
                    Segment {
                        op: seg.op,
                        bytes: seg.bytes[..(start - s) as usize].to_vec(),
                    },
                );
            }
            if e > end {
                self.segments.insert(
                    end,
                    Segment {
                        op: seg.op,
                        bytes: seg.bytes[(end - s) as usize..].to_vec(),
                    },
                );
            }
        }
    }

    /// Write `bytes` at `offset` (growing the size).
    fn write(&mut self, op: usize, offset: u64, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let end = offset + bytes.len() as u64;
        self.clear(offset, end);
        self.segments.insert(
            offset,
            Segment {
                op,
                bytes: bytes.to_vec(),
            },
        );
        self.size = self.size.max(end);
    }

    /// Set the size: cut what lies beyond, or extend with zeros.
    fn set_size(&mut self, size: u64) {
        self.clear(size, u64::MAX);
        self.size = size;
    }

    /// Remove `[offset, offset+len)` and shift the rest down (collapse range).
    fn collapse(&mut self, offset: u64, len: u64) {
        self.clear(offset, offset.saturating_add(len));
        let after: Vec<u64> = self.segments.range(offset..).map(|(s, _)| *s).collect();
        for s in after {
            let seg = self.segments.remove(&s).expect("listed");
            self.segments.insert(s - len, seg);
        }
        self.size = self.size.saturating_sub(len);
    }

    /// Shift everything from `offset` up by `len`, leaving a hole (insert range).
    fn insert(&mut self, offset: u64, len: u64) {
        // Split a segment that straddles `offset`.
        if let Some((&s, seg)) = self.segments.range(..offset).next_back() {
            let e = s + seg.bytes.len() as u64;
            if e > offset {
                let seg = self.segments.remove(&s).expect("listed");
                let cut = (offset - s) as usize;
                self.segments.insert(
                    s,
                    Segment {
                        op: seg.op,
                        bytes: seg.bytes[..cut].to_vec(),
                    },
                );
                self.segments.insert(
                    offset,
                    Segment {
                        op: seg.op,
                        bytes: seg.bytes[cut..].to_vec(),
                    },
                );
            }
        }
        let after: Vec<u64> = self
            .segments
            .range(offset..)
            .map(|(s, _)| *s)
            .rev()
            .collect();
        for s in after {
            let seg = self.segments.remove(&s).expect("listed");
            self.segments.insert(s + len, seg);
        }
        self.size += len;
    }

    /// The bytes in `[start, end)` (zeros where nothing was written). The caller
    /// bounds the range: this allocates `end - start` bytes.
    pub fn read(&self, start: u64, end: u64) -> Vec<u8> {
        let end = end.min(self.size);
        if start >= end {
            return Vec::new();
        }
        let mut out = vec![0u8; (end - start) as usize];
        for (s, seg) in self.written(start, end) {
            let e = s + seg.len() as u64;
            let from = s.max(start);
            let to = e.min(end);
            out[(from - start) as usize..(to - start) as usize]
                .copy_from_slice(&seg[(from - s) as usize..(to - s) as usize]);
        }
        out
    }

    /// The written segments overlapping `[start, end)`: (start, bytes).
    pub fn written(&self, start: u64, end: u64) -> impl Iterator<Item = (u64, &[u8])> {
        // The segment that starts before `start` may reach into the range.
        let first = self
            .segments
            .range(..start)
            .next_back()
            .filter(|(s, seg)| *s + seg.bytes.len() as u64 > start)
            .map(|(s, _)| *s)
            .unwrap_or(start);
        self.segments
            .range(first..end.max(first))
            .map(|(s, seg)| (*s, seg.bytes.as_slice()))
    }

    /// The 4 KiB block indexes that hold written bytes (the rest read as zeros).
    pub fn written_blocks(&self) -> Vec<u64> {
        let mut out: Vec<u64> = Vec::new();
        for (s, seg) in &self.segments {
            let first = s / DUMP_BLOCK;
            let last = (s + seg.bytes.len() as u64 - 1) / DUMP_BLOCK;
            for b in first..=last {
                if out.last() != Some(&b) {
                    out.push(b);
                }
            }
        }
        out
    }

    /// The bytes of one dump block (the last block only up to the size).
    pub fn block(&self, index: u64) -> Vec<u8> {
        let start = index * DUMP_BLOCK;
        self.read(start, (start + DUMP_BLOCK).min(self.size))
    }

    /// Sparse block hashes, as [`FsEntry::blocks`] holds them.
    pub fn block_hashes(&self) -> BTreeMap<u64, String> {
        self.written_blocks()
            .into_iter()
            .filter_map(|b| {
                let bytes = self.block(b);
                bytes
                    .iter()
                    .any(|x| *x != 0)
                    .then(|| (b, blake3::hash(&bytes).to_hex().to_string()))
            })
            .collect()
    }
}

/// One inode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inode {
    /// What it is.
    pub kind: NodeKind,
    /// Contents (files only; empty otherwise).
    pub content: Content,
    /// `user.*` xattrs.
    pub xattrs: BTreeMap<String, Vec<u8>>,
    /// The op that created it; `None` for the root and base-image objects.
    pub created_by: Option<usize>,
    /// The name it was created with (`None` for the root and base-image objects).
    pub created_as: Option<String>,
}

impl Inode {
    fn new(kind: NodeKind, created_by: Option<usize>) -> Inode {
        Inode {
            kind,
            content: Content::default(),
            xattrs: BTreeMap::new(),
            created_by,
            created_as: None,
        }
    }
}

/// An open descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fd {
    /// The inode.
    pub ino: InodeId,
    /// The path it was opened by (a later rename does not change it here; use
    /// [`FsModel::path_of`] for the current name).
    pub opened_as: String,
    /// File position.
    pub pos: u64,
    /// `O_APPEND`.
    pub append: bool,
}

/// A mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    /// The inode mapped.
    pub ino: InodeId,
    /// File offset of the mapping's start.
    pub offset: u64,
    /// Length.
    pub len: u64,
    /// Shared or MAP_SYNC.
    pub kind: MapKind,
}

/// What an op changed, for withdrawing earlier promises about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Bytes of an inode's contents.
    Data(InodeId, Range<u64>),
    /// An inode's size.
    Size(InodeId),
    /// A name (made, removed or moved).
    Name(String),
    /// An xattr of an inode.
    Xattr(InodeId, String),
}

/// The file system as the ops left it.
#[derive(Debug, Clone)]
pub struct FsModel {
    /// Every inode ever made, by id (0: the root).
    pub inodes: Vec<Inode>,
    /// Every name now, by path relative to the root (`""` is not listed).
    pub names: BTreeMap<String, InodeId>,
    /// Open descriptors by the workload's names.
    pub fds: BTreeMap<String, Fd>,
    /// Mappings by the workload's names.
    pub maps: BTreeMap<String, Mapping>,
}

impl Default for FsModel {
    fn default() -> Self {
        FsModel {
            inodes: vec![Inode::new(NodeKind::Dir, None)],
            names: BTreeMap::new(),
            fds: BTreeMap::new(),
            maps: BTreeMap::new(),
        }
    }
}

/// The directory part of a path (`""` for the root).
pub fn parent(path: &str) -> &str {
    path.rsplit_once('/').map(|(p, _)| p).unwrap_or("")
}

/// Whether `path` is `dir` or lies under it.
pub fn is_under(path: &str, dir: &str) -> bool {
    path == dir
        || dir.is_empty()
        || (path.len() > dir.len() && path.starts_with(dir) && path.as_bytes()[dir.len()] == b'/')
}

/// The result of op `index` among the agent's results (`None`: no results, a
/// model-only replay, which takes every op to have succeeded).
pub fn result_of(results: Option<&[OpResult]>, index: usize) -> Option<&OpResult> {
    let r = results?;
    // Results come in op order; fall back to a search if one is missing.
    match r.get(index) {
        Some(x) if x.index == index => Some(x),
        _ => r.iter().find(|x| x.index == index),
    }
}

impl FsModel {
    /// An empty file system.
    pub fn new() -> FsModel {
        FsModel::default()
    }

    /// Replay ops in order, skipping those whose result is a failure.
    pub fn replay(ops: &[Op], results: Option<&[OpResult]>) -> FsModel {
        let mut m = FsModel::new();
        for (i, op) in ops.iter().enumerate() {
            m.apply(i, op, result_of(results, i));
        }
        m
    }

    /// The inode a path names (`""` or `"."`: the root).
    pub fn lookup(&self, path: &str) -> Option<InodeId> {
        if path.is_empty() || path == "." {
            return Some(0);
        }
        self.names.get(path).copied()
    }

    /// The name a path leads to, following symlinks in its directories and, when
    /// `follow_last`, in its last component (as open(2), truncate(2) and setxattr(2)
    /// do; unlink, rename, link, mkdir and the rest do not). A symlink's target is
    /// relative to its directory; an absolute target or a loop leaves the file
    /// system the model knows: `None`.
    pub fn resolve(&self, path: &str, follow_last: bool) -> Option<String> {
        let mut parts: Vec<String> = path.split('/').map(str::to_owned).collect();
        let mut done: Vec<String> = Vec::new();
        let mut hops = 0;
        while !parts.is_empty() {
            let part = parts.remove(0);
            if part.is_empty() || part == "." {
                continue;
            }
            if part == ".." {
                done.pop();
                continue;
            }
            done.push(part);
            let last = parts.is_empty();
            let here = done.join("/");
            let target = match self.names.get(&here).map(|i| &self.inodes[*i].kind) {
                Some(NodeKind::Symlink(t)) if !last || follow_last => t.clone(),
                _ => continue,
            };
            hops += 1;
            if hops > 40 || target.starts_with('/') {
                return None;
            }
            done.pop();
            let mut rest: Vec<String> = target.split('/').map(str::to_owned).collect();
            rest.append(&mut parts);
            parts = rest;
        }
        Some(done.join("/"))
    }

    /// The names an inode has now, sorted.
    pub fn paths_of(&self, ino: InodeId) -> Vec<&str> {
        self.names
            .iter()
            .filter(|(_, i)| **i == ino)
            .map(|(p, _)| p.as_str())
            .collect()
    }

    /// One current name of an inode (the first in order), `""` for the root.
    pub fn path_of(&self, ino: InodeId) -> Option<&str> {
        if ino == 0 {
            return Some("");
        }
        self.paths_of(ino).into_iter().next()
    }

    /// The inode behind a descriptor.
    pub fn fd_inode(&self, fd: &str) -> Option<InodeId> {
        self.fds.get(fd).map(|f| f.ino)
    }

    /// An inode's contents, when it is a regular file.
    pub fn file(&self, ino: InodeId) -> Option<&Content> {
        let i = self.inodes.get(ino)?;
        (i.kind == NodeKind::File).then_some(&i.content)
    }

    fn file_mut(&mut self, ino: InodeId) -> Option<&mut Content> {
        let i = self.inodes.get_mut(ino)?;
        (i.kind == NodeKind::File).then_some(&mut i.content)
    }

    fn make(&mut self, op: usize, path: &str, kind: NodeKind, out: &mut Vec<Change>) -> InodeId {
        let mut inode = Inode::new(kind, Some(op));
        inode.created_as = Some(path.to_owned());
        self.inodes.push(inode);
        let ino = self.inodes.len() - 1;
        self.names.insert(path.to_owned(), ino);
        out.push(Change::Name(path.to_owned()));
        ino
    }

    fn write(&mut self, op: usize, ino: InodeId, offset: u64, bytes: &[u8], out: &mut Vec<Change>) {
        let Some(c) = self.file_mut(ino) else { return };
        let old = c.size;
        c.write(op, offset, bytes);
        let grew = c.size != old;
        out.push(Change::Data(ino, offset..offset + bytes.len() as u64));
        if grew {
            out.push(Change::Size(ino));
        }
    }

    fn set_size(&mut self, ino: InodeId, size: u64, out: &mut Vec<Change>) {
        let Some(c) = self.file_mut(ino) else { return };
        let old = c.size;
        c.set_size(size);
        if old != size {
            out.push(Change::Data(ino, old.min(size)..old.max(size)));
            out.push(Change::Size(ino));
        }
    }

    /// The bytes a successful write/pwrite wrote: its return value says how many.
    fn written_len(result: Option<&OpResult>, asked: usize) -> usize {
        match result {
            Some(r) if r.ok() && r.ret >= 0 => (r.ret as usize).min(asked),
            _ => asked,
        }
    }

    /// Apply op `index`; returns what it changed (nothing when it failed).
    pub fn apply(&mut self, index: usize, op: &Op, result: Option<&OpResult>) -> Vec<Change> {
        let mut out = Vec::new();
        if result.is_some_and(|r| !r.ok()) {
            return out;
        }
        let i = index;
        match op {
            Op::Open {
                path,
                fd,
                create,
                truncate,
                append,
                directory,
                ..
            } => {
                let Some(path) = self.resolve(path, true) else {
                    return out;
                };
                let path = &path;
                let ino = match self.lookup(path) {
                    Some(ino) => ino,
                    None if *create && !*directory => self.make(i, path, NodeKind::File, &mut out),
                    None => {
                        self.inodes.push(Inode::new(NodeKind::Unknown, None));
                        let ino = self.inodes.len() - 1;
                        self.names.insert(path.clone(), ino);
                        ino
                    }
                };
                if *truncate {
                    self.set_size(ino, 0, &mut out);
                }
                self.fds.insert(
                    fd.clone(),
                    Fd {
                        ino,
                        opened_as: path.clone(),
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
                    return out;
                };
                let mut bytes = data.bytes();
                bytes.truncate(Self::written_len(result, bytes.len()));
                let at = if f.append {
                    self.file(f.ino).map_or(f.pos, |c| c.size)
                } else {
                    f.pos
                };
                self.write(i, f.ino, at, &bytes, &mut out);
                if let Some(f) = self.fds.get_mut(fd) {
                    f.pos = at + bytes.len() as u64;
                }
            }
            Op::Pwrite {
                fd, offset, data, ..
            } => {
                let Some(f) = self.fds.get(fd).cloned() else {
                    return out;
                };
                let mut bytes = data.bytes();
                bytes.truncate(Self::written_len(result, bytes.len()));
                // Linux: pwrite on an O_APPEND descriptor appends, whatever the offset
                // (pwrite(2), BUGS). Found by the differential test.
                let at = if f.append {
                    self.file(f.ino).map_or(*offset, |c| c.size)
                } else {
                    *offset
                };
                self.write(i, f.ino, at, &bytes, &mut out);
            }
            Op::Read { .. } => {}
            Op::Ftruncate { fd, len } => {
                if let Some(ino) = self.fd_inode(fd) {
                    self.set_size(ino, *len, &mut out);
                }
            }
            Op::Truncate { path, len } => {
                if let Some(ino) = self.resolve(path, true).and_then(|p| self.lookup(&p)) {
                    self.set_size(ino, *len, &mut out);
                }
            }
            Op::Fallocate {
                fd,
                offset,
                len,
                mode,
            } => {
                let Some(ino) = self.fd_inode(fd) else {
                    return out;
                };
                let Some(c) = self.file_mut(ino) else {
                    return out;
                };
                let has = |f| mode.contains(&f);
                let end = offset.saturating_add(*len);
                let old = c.size;
                if has(FallocateFlag::CollapseRange) {
                    c.collapse(*offset, *len);
                    out.push(Change::Data(ino, *offset..u64::MAX));
                } else if has(FallocateFlag::InsertRange) {
                    c.insert(*offset, *len);
                    out.push(Change::Data(ino, *offset..u64::MAX));
                } else if has(FallocateFlag::PunchHole) || has(FallocateFlag::ZeroRange) {
                    c.clear(*offset, end);
                    if !has(FallocateFlag::KeepSize) && end > c.size {
                        c.size = end;
                    }
                    out.push(Change::Data(ino, *offset..end));
                } else if !has(FallocateFlag::KeepSize) && end > c.size {
                    // Plain allocation (and unshare) only ever grows the size.
                    c.size = end;
                    out.push(Change::Data(ino, old..end));
                }
                if c.size != old {
                    out.push(Change::Size(ino));
                }
            }
            Op::Mmap {
                fd,
                map,
                offset,
                len,
                kind,
            } => {
                if let Some(ino) = self.fd_inode(fd) {
                    self.maps.insert(
                        map.clone(),
                        Mapping {
                            ino,
                            offset: *offset,
                            len: *len,
                            kind: *kind,
                        },
                    );
                }
            }
            Op::Munmap { map } => {
                self.maps.remove(map);
            }
            Op::Store {
                map, offset, data, ..
            } => {
                let Some(m) = self.maps.get(map).cloned() else {
                    return out;
                };
                let size = self.file(m.ino).map_or(0, |c| c.size);
                let at = m.offset + offset;
                let bytes = data.bytes();
                // Stores through a mapping never extend the file (the agent refuses
                // a store past the end rather than take SIGBUS).
                let end = (at + bytes.len() as u64).min(size);
                if end > at {
                    self.write(i, m.ino, at, &bytes[..(end - at) as usize], &mut out);
                }
            }
            Op::Flush { .. }
            | Op::Fence { .. }
            | Op::Msync { .. }
            | Op::Fsync { .. }
            | Op::Fdatasync { .. }
            | Op::Fmetadatasync { .. }
            | Op::SyncFileRange { .. }
            | Op::Sync
            | Op::Syncfs { .. } => {}
            // What a program does is not modelled (see `Op::Exec`).
            Op::Exec { .. } => {}
            Op::Rename { from, to } => {
                let (Some(from), Some(to)) = (self.resolve(from, false), self.resolve(to, false))
                else {
                    return out;
                };
                let (from, to) = (&from, &to);
                if from == to || self.lookup(from).is_none() {
                    return out;
                }
                let moved: Vec<(String, InodeId)> = self
                    .names
                    .iter()
                    .filter(|(p, _)| is_under(p, from))
                    .map(|(p, i)| (p.clone(), *i))
                    .collect();
                // The target (and, for a directory, its empty contents) goes.
                let replaced: Vec<String> = self
                    .names
                    .keys()
                    .filter(|p| is_under(p, to))
                    .cloned()
                    .collect();
                for p in replaced {
                    self.names.remove(&p);
                    out.push(Change::Name(p));
                }
                for (p, ino) in moved {
                    self.names.remove(&p);
                    out.push(Change::Name(p.clone()));
                    let new = format!("{to}{}", &p[from.len()..]);
                    self.names.insert(new.clone(), ino);
                    out.push(Change::Name(new));
                }
            }
            Op::Link { from, to } => {
                let (Some(from), Some(to)) = (self.resolve(from, false), self.resolve(to, false))
                else {
                    return out;
                };
                let (from, to) = (&from, &to);
                if let Some(ino) = self.lookup(from) {
                    self.names.insert(to.clone(), ino);
                    out.push(Change::Name(to.clone()));
                }
            }
            Op::Unlink { path } | Op::Rmdir { path } => {
                let Some(path) = self.resolve(path, false) else {
                    return out;
                };
                let path = &path;
                if self.names.remove(path).is_some() {
                    out.push(Change::Name(path.clone()));
                }
            }
            Op::Mkdir { path, .. } => {
                if let Some(path) = self.resolve(path, false) {
                    self.make(i, &path, NodeKind::Dir, &mut out);
                }
            }
            Op::Symlink { target, path } => {
                if let Some(path) = self.resolve(path, false) {
                    self.make(i, &path, NodeKind::Symlink(target.clone()), &mut out);
                }
            }
            Op::Mkfifo { path, .. } => {
                if let Some(path) = self.resolve(path, false) {
                    self.make(i, &path, NodeKind::Fifo, &mut out);
                }
            }
            Op::Setxattr {
                path,
                name,
                value,
                flag,
            } => {
                let Some(ino) = self.resolve(path, true).and_then(|p| self.lookup(&p)) else {
                    return out;
                };
                let x = &mut self.inodes[ino].xattrs;
                // A model-only replay (no result) applies the kernel's flag rules.
                let allowed = match flag {
                    XattrFlag::Any => true,
                    XattrFlag::Create => !x.contains_key(name),
                    XattrFlag::Replace => x.contains_key(name),
                };
                if allowed {
                    x.insert(name.clone(), value.bytes());
                    out.push(Change::Xattr(ino, name.clone()));
                }
            }
            Op::Removexattr { path, name } => {
                if let Some(ino) = self.resolve(path, true).and_then(|p| self.lookup(&p)) {
                    if self.inodes[ino].xattrs.remove(name).is_some() {
                        out.push(Change::Xattr(ino, name.clone()));
                    }
                }
            }
        }
        out
    }

    /// The state as the agent's dump would show it, sorted by path. `ino` is the
    /// model's inode id (only equality between entries means anything); `mode` is 0
    /// (not modelled).
    pub fn entries(&self) -> Vec<FsEntry> {
        let nlink = |ino: InodeId| self.names.values().filter(|i| **i == ino).count() as u64;
        let mut out: Vec<FsEntry> = self
            .names
            .iter()
            .map(|(path, &ino)| {
                let node = &self.inodes[ino];
                let mut e = FsEntry {
                    path: path.clone(),
                    kind: EntryKind::Other,
                    size: 0,
                    mode: 0,
                    nlink: nlink(ino),
                    ino: ino as u64,
                    blake3: String::new(),
                    blocks: BTreeMap::new(),
                    xattrs: node
                        .xattrs
                        .iter()
                        .map(|(k, v)| (k.clone(), hex(v)))
                        .collect(),
                    target: None,
                    error: None,
                };
                match &node.kind {
                    NodeKind::File => {
                        e.kind = EntryKind::File;
                        e.size = node.content.size;
                        e.blocks = node.content.block_hashes();
                        e.blake3 = protocol::content_hash(e.size, &e.blocks);
                    }
                    NodeKind::Dir => {
                        e.kind = EntryKind::Dir;
                        // A directory's link count: its name, its `.` and each
                        // subdirectory's `..`.
                        let subdirs = self
                            .names
                            .iter()
                            .filter(|(p, i)| {
                                parent(p) == path && self.inodes[**i].kind == NodeKind::Dir
                            })
                            .count() as u64;
                        e.nlink = 2 + subdirs;
                    }
                    NodeKind::Symlink(t) => {
                        e.kind = EntryKind::Symlink;
                        e.size = t.len() as u64;
                        e.blake3 = blake3::hash(t.as_bytes()).to_hex().to_string();
                        e.target = Some(t.clone());
                    }
                    NodeKind::Fifo => e.kind = EntryKind::Fifo,
                    NodeKind::Unknown => {}
                }
                e
            })
            .collect();
        out.sort();
        out
    }
}

/// Lower-case hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Names [`compare`] ignores: made by mkfs, not by a workload.
pub const IGNORED_NAMES: [&str; 1] = ["lost+found"];

/// Differences between a predicted and a dumped state, in words, empty when equal.
///
/// Compared: the set of names, each entry's kind, size, contents (sparse block
/// hashes), xattrs and symlink target, a file's link count, and which names are hard
/// links of one inode. Not compared: inode numbers themselves, modes, times,
/// directory sizes, and objects the model does not know ([`NodeKind::Unknown`]).
pub fn compare(predicted: &[FsEntry], dumped: &[FsEntry]) -> Vec<String> {
    let mut out = Vec::new();
    let keep = |e: &&FsEntry| !IGNORED_NAMES.iter().any(|n| is_under(&e.path, n));
    let want: BTreeMap<&str, &FsEntry> = predicted
        .iter()
        .filter(keep)
        .map(|e| (e.path.as_str(), e))
        .collect();
    let got: BTreeMap<&str, &FsEntry> = dumped
        .iter()
        .filter(keep)
        .map(|e| (e.path.as_str(), e))
        .collect();
    for (p, w) in &want {
        let Some(g) = got.get(p) else {
            out.push(format!("{p}: predicted, missing from the file system"));
            continue;
        };
        if w.kind == EntryKind::Other {
            continue;
        }
        if let Some(err) = g.error {
            out.push(format!("{p}: could not be read (errno {err})"));
            continue;
        }
        if w.kind != g.kind {
            out.push(format!("{p}: a {:?}, predicted a {:?}", g.kind, w.kind));
            continue;
        }
        if w.kind == EntryKind::File {
            if w.size != g.size {
                out.push(format!("{p}: {} bytes, predicted {}", g.size, w.size));
            }
            if w.blocks != g.blocks {
                let differing: Vec<u64> = w
                    .blocks
                    .keys()
                    .chain(g.blocks.keys())
                    .filter(|b| w.blocks.get(b) != g.blocks.get(b))
                    .copied()
                    .collect::<std::collections::BTreeSet<u64>>()
                    .into_iter()
                    .collect();
                out.push(format!(
                    "{p}: contents differ in 4 KiB block(s) {differing:?}"
                ));
            }
            if w.nlink != g.nlink {
                out.push(format!("{p}: {} links, predicted {}", g.nlink, w.nlink));
            }
        }
        if w.target != g.target {
            out.push(format!(
                "{p}: points to {:?}, predicted {:?}",
                g.target, w.target
            ));
        }
        if w.xattrs != g.xattrs {
            out.push(format!(
                "{p}: xattrs {:?}, predicted {:?}",
                g.xattrs, w.xattrs
            ));
        }
    }
    for p in got.keys() {
        if !want.contains_key(p) {
            out.push(format!("{p}: in the file system, not predicted"));
        }
    }
    // Hard links: names that share an inode in one must share it in the other.
    for (p, w) in &want {
        for (q, v) in &want {
            if p >= q {
                continue;
            }
            let (Some(g), Some(h)) = (got.get(p), got.get(q)) else {
                continue;
            };
            let same_want = w.ino == v.ino;
            let same_got = g.ino == h.ino && g.kind != EntryKind::Dir;
            if same_want != same_got {
                out.push(format!(
                    "{p} and {q}: {} one inode, predicted {}",
                    if same_got { "are" } else { "are not" },
                    if same_want {
                        "the same"
                    } else {
                        "different ones"
                    }
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::Workload;

    fn replay(src: &str) -> FsModel {
        let w = Workload::parse(src, "t.toml").expect("workload parses");
        FsModel::replay(&w.ops, None)
    }

    #[test]
    fn content_is_sparse_and_reads_zeros_in_holes() {
        let mut c = Content::default();
        c.write(0, 10, b"abc");
        c.set_size(1 << 40);
        assert_eq!(c.size, 1 << 40);
        assert_eq!(c.read(8, 14), b"\0\0abc\0");
        assert_eq!(c.segments.len(), 1);
        c.write(1, 11, b"Z");
        assert_eq!(c.read(10, 13), b"aZc");
        assert_eq!(c.segments.len(), 3);
        c.clear(0, 12);
        assert_eq!(c.read(10, 13), b"\0\0c");
        c.set_size(12);
        assert_eq!(c.read(0, 100).len(), 12);
        assert!(c.segments.is_empty());
    }

    #[test]
    fn collapse_and_insert_shift_segments() {
        let mut c = Content::default();
        c.write(0, 0, &[1; 4096]);
        c.write(0, 8192, &[3; 4096]);
        c.collapse(4096, 4096);
        assert_eq!(c.size, 8192);
        assert_eq!(c.read(4096, 4097), [3]);
        c.insert(4096, 4096);
        assert_eq!(c.size, 12288);
        assert_eq!(c.read(4096, 4097), [0]);
        assert_eq!(c.read(8192, 8193), [3]);
    }

    #[test]
    fn a_huge_truncate_costs_nothing() {
        let m = replay(
            "[[ops]]\nop=\"open\"\npath=\"a\"\nfd=\"a\"\ncreate=true\n\
             [[ops]]\nop=\"ftruncate\"\nfd=\"a\"\nlen=1000000000000000000\n",
        );
        let e = m.entries();
        assert_eq!(e[0].size, 1_000_000_000_000_000_000);
        assert!(e[0].blocks.is_empty());
    }

    #[test]
    fn names_links_renames_and_xattrs() {
        let m = replay(
            "[[ops]]\nop=\"mkdir\"\npath=\"d\"\n\
             [[ops]]\nop=\"open\"\npath=\"d/a\"\nfd=\"a\"\ncreate=true\n\
             [[ops]]\nop=\"write\"\nfd=\"a\"\ndata=\"hello\"\n\
             [[ops]]\nop=\"link\"\nfrom=\"d/a\"\nto=\"b\"\n\
             [[ops]]\nop=\"rename\"\nfrom=\"d\"\nto=\"e\"\n\
             [[ops]]\nop=\"setxattr\"\npath=\"b\"\nname=\"user.k\"\nvalue=\"v\"\n\
             [[ops]]\nop=\"mkfifo\"\npath=\"p\"\n",
        );
        let e = m.entries();
        let paths: Vec<&str> = e.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["b", "e", "e/a", "p"]);
        assert_eq!(e[0].ino, e[2].ino);
        assert_eq!(e[0].nlink, 2);
        assert_eq!(e[2].xattrs["user.k"], "76");
        assert_eq!(e[3].kind, EntryKind::Fifo);
        assert_eq!(e[2].blocks, protocol::block_hashes(b"hello"));
        assert!(compare(&e, &e).is_empty());
        let mut other = e.clone();
        other[2].size = 4;
        other.pop();
        let d = compare(&e, &other);
        assert_eq!(d.len(), 2, "{d:?}");
    }

    #[test]
    fn symlinks_are_followed_where_the_kernel_follows_them() {
        // open(O_CREAT) through a dangling symlink creates its target; link(2) does
        // not follow; a symlink to a directory works in the middle of a path.
        let m = replay(
            "[[ops]]\nop=\"symlink\"\ntarget=\"nowhere\"\npath=\"s\"\n\
             [[ops]]\nop=\"open\"\npath=\"s\"\nfd=\"a\"\ncreate=true\n\
             [[ops]]\nop=\"link\"\nfrom=\"s\"\nto=\"t\"\n\
             [[ops]]\nop=\"mkdir\"\npath=\"d\"\n\
             [[ops]]\nop=\"symlink\"\ntarget=\"d\"\npath=\"ld\"\n\
             [[ops]]\nop=\"mkfifo\"\npath=\"ld/p\"\n",
        );
        let entries = m.entries();
        let kinds: Vec<(&str, EntryKind)> =
            entries.iter().map(|e| (e.path.as_str(), e.kind)).collect();
        assert_eq!(
            kinds,
            [
                ("d", EntryKind::Dir),
                ("d/p", EntryKind::Fifo),
                ("ld", EntryKind::Symlink),
                ("nowhere", EntryKind::File),
                ("s", EntryKind::Symlink),
                ("t", EntryKind::Symlink),
            ]
        );
        assert_eq!(m.resolve("ld/../s", true).as_deref(), Some("nowhere"));
    }

    #[test]
    fn failed_ops_change_nothing_and_short_writes_are_short() {
        let w = Workload::parse(
            "[[ops]]\nop=\"open\"\npath=\"a\"\nfd=\"a\"\ncreate=true\n\
             [[ops]]\nop=\"write\"\nfd=\"a\"\ndata=\"hello\"\n\
             [[ops]]\nop=\"unlink\"\npath=\"a\"\n",
            "t.toml",
        )
        .unwrap();
        let r = |index, ret, errno| OpResult {
            index,
            ret,
            errno,
            detail: Default::default(),
            micros: 0,
        };
        let results = [r(0, 3, None), r(1, 2, None), r(2, -1, Some(2))];
        let m = FsModel::replay(&w.ops, Some(&results));
        let e = m.entries();
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].size, 2);
    }
}
