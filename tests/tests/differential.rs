//! The file-system model against the real kernel: seeded random workloads
//! (`crash_models::generate`) run in a guest without crash checking, and the state the
//! guest dumps afterwards (names, kinds, sizes, contents, xattrs, symlink targets, link
//! counts) must be the state the model predicts from the same ops and their results.
//! Every mismatch is a model bug or a kernel bug; the failure message names the seed,
//! the ops and the results, and `PMCRASH_DIFF_SEEDS=N` (or `A..B`) reruns just those.
//!
//! One guest per file system serves every workload: between two workloads, with the
//! file system unmounted, the host puts the PM image back to the freshly made one and
//! the agent drops its caches (as the checker does between crash images), so every
//! workload starts on an empty file system. A leftover would show as a mismatch.
//!
//! CI runs 40 workloads per file system; the `#[ignore]`d tests run 300.

use crash_models::generate::{random_workload, GenConfig};
use crash_models::ops::{FsKind, Op};
use crash_models::protocol::OpResult;
use pmcrash_e2e::{rt, ReusedGuest};
use std::ops::Range;

// The model under test. Until `crash_models::fsmodel` lands on main this is a stand-in
// with the same API (see `standin_fsmodel` below); the test itself only calls
// `fsmodel::FsModel::replay`, `entries` and `fsmodel::compare`.
use standin_fsmodel as fsmodel;

/// The seeds to run: `PMCRASH_DIFF_SEEDS` (`N` or `A..B`) or `default`.
fn seeds(default: Range<u64>) -> Range<u64> {
    let Ok(s) = std::env::var("PMCRASH_DIFF_SEEDS") else {
        return default;
    };
    let parse = |x: &str| {
        x.trim()
            .parse::<u64>()
            .expect("PMCRASH_DIFF_SEEDS: N or A..B")
    };
    match s.split_once("..") {
        Some((a, b)) => parse(a)..parse(b),
        None => parse(&s)..parse(&s) + 1,
    }
}

fn describe(seed: u64, ops: &[Op], results: &[OpResult], diff: &[String]) -> String {
    let mut out = format!("seed {seed}:\n");
    for d in diff {
        out += &format!("  - {d}\n");
    }
    for (op, r) in ops.iter().zip(results) {
        let outcome = match r.errno {
            Some(e) => format!("errno {e}"),
            None => format!("ret {}", r.ret),
        };
        out += &format!(
            "    {:>2} {} -> {outcome}\n",
            r.index,
            serde_json::to_string(op).unwrap_or_default()
        );
    }
    out
}

fn differential(fs: FsKind, default_seeds: Range<u64>) {
    let cfg = GenConfig::default();
    let seeds = seeds(default_seeds);
    let rt = rt();
    let (mismatches, ran, failed_ops, files) = rt.block_on(async {
        let mut s = ReusedGuest::start(fs).await;
        let mut mismatches = Vec::new();
        let (mut ran, mut failed_ops, mut files) = (0, 0, 0);
        for seed in seeds.clone() {
            let w = random_workload(seed, &cfg);
            let (results, dumped) = s.run(&w.ops).await;
            let model = std::panic::catch_unwind(|| {
                fsmodel::FsModel::replay(&w.ops, Some(&results)).entries()
            });
            let diff = match model {
                Ok(predicted) => fsmodel::compare(&predicted, &dumped),
                Err(e) => vec![format!(
                    "the model panicked: {}",
                    e.downcast_ref::<String>()
                        .map(String::as_str)
                        .or_else(|| e.downcast_ref::<&str>().copied())
                        .unwrap_or("(no message)")
                )],
            };
            if !diff.is_empty() {
                mismatches.push(describe(seed, &w.ops, &results, &diff));
            }
            ran += 1;
            failed_ops += results.iter().filter(|r| !r.ok()).count();
            files += dumped.iter().filter(|e| !e.blocks.is_empty()).count();
        }
        s.end().await;
        (mismatches, ran, failed_ops, files)
    });
    eprintln!(
        "{fs}: {ran} workloads (seeds {seeds:?}), {} mismatched; {failed_ops} ops failed, {files} files with data",
        mismatches.len()
    );
    assert_eq!(ran as u64, seeds.end - seeds.start);
    // The workloads must exercise something: files with data, and some failing ops.
    if ran >= 20 {
        assert!(
            files >= ran / 4,
            "only {files} files with data in {ran} workloads"
        );
        assert!(failed_ops > 0, "no op failed in {ran} workloads");
    }
    assert!(
        mismatches.is_empty(),
        "{fs}: the model and the kernel disagree on {} of {ran} workloads:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
}

#[test]
fn ext4_model_matches_the_kernel() {
    differential(FsKind::Ext4, 0..40);
}

#[test]
fn xfs_model_matches_the_kernel() {
    differential(FsKind::Xfs, 0..40);
}

#[test]
#[ignore = "300 workloads: minutes under TCG"]
fn ext4_model_matches_the_kernel_300() {
    differential(FsKind::Ext4, 0..300);
}

#[test]
#[ignore = "300 workloads: minutes under TCG"]
fn xfs_model_matches_the_kernel_300() {
    differential(FsKind::Xfs, 0..300);
}

/// A stand-in for `crash_models::fsmodel` with the same API, for developing this test
/// before the real model lands; remove it then.
mod standin_fsmodel {
    use crash_models::ops::{FallocateFlag, Op};
    use crash_models::protocol::{self, EntryKind, FsEntry, OpResult, DUMP_BLOCK};
    use std::collections::BTreeMap;

    const BS: u64 = DUMP_BLOCK;

    #[derive(Debug, Clone, PartialEq)]
    enum Kind {
        File,
        Dir,
        Symlink(String),
        Fifo,
    }

    #[derive(Debug, Clone)]
    struct Inode {
        kind: Kind,
        size: u64,
        blocks: BTreeMap<u64, Vec<u8>>,
        xattrs: BTreeMap<String, Vec<u8>>,
    }

    impl Inode {
        fn new(kind: Kind) -> Inode {
            Inode {
                kind,
                size: 0,
                blocks: BTreeMap::new(),
                xattrs: BTreeMap::new(),
            }
        }

        fn write(&mut self, at: u64, bytes: &[u8]) {
            for (i, b) in bytes.iter().enumerate() {
                let o = at + i as u64;
                let blk = self
                    .blocks
                    .entry(o / BS)
                    .or_insert_with(|| vec![0; BS as usize]);
                blk[(o % BS) as usize] = *b;
            }
            self.size = self.size.max(at + bytes.len() as u64);
        }

        fn zero(&mut self, start: u64, end: u64) {
            if start >= end {
                return;
            }
            let keys: Vec<u64> = self
                .blocks
                .range(start / BS..end.div_ceil(BS))
                .map(|(k, _)| *k)
                .collect();
            for k in keys {
                let blk = self.blocks.get_mut(&k).expect("listed");
                for o in start.max(k * BS)..end.min((k + 1) * BS) {
                    blk[(o - k * BS) as usize] = 0;
                }
            }
        }

        fn truncate(&mut self, len: u64) {
            if len < self.size {
                self.zero(len, self.size);
            }
            self.size = len;
        }
    }

    /// The stand-in model.
    #[derive(Debug, Default)]
    pub struct FsModel {
        names: BTreeMap<String, usize>,
        inodes: Vec<Inode>,
        fds: BTreeMap<String, (usize, u64)>,
        maps: BTreeMap<String, (usize, u64)>,
    }

    fn parent(p: &str) -> &str {
        p.rsplit_once('/').map_or("", |(d, _)| d)
    }

    fn join(dir: &str, rel: &str) -> String {
        if dir.is_empty() {
            rel.to_owned()
        } else {
            format!("{dir}/{rel}")
        }
    }

    impl FsModel {
        /// Replay ops in order, skipping those whose result is a failure.
        pub fn replay(ops: &[Op], results: Option<&[OpResult]>) -> FsModel {
            let mut m = FsModel::default();
            for (i, op) in ops.iter().enumerate() {
                let r = results.and_then(|r| r.get(i));
                if r.is_some_and(|r| !r.ok()) {
                    continue;
                }
                m.apply(op, r.map_or(-1, |r| r.ret));
            }
            m
        }

        /// Follow symlinks in the last component.
        fn follow(&self, path: &str) -> String {
            let mut p = path.to_owned();
            for _ in 0..8 {
                match self.names.get(&p).map(|&i| &self.inodes[i].kind) {
                    Some(Kind::Symlink(t)) => p = join(parent(&p), t),
                    _ => break,
                }
            }
            p
        }

        fn add(&mut self, path: &str, kind: Kind) -> usize {
            self.inodes.push(Inode::new(kind));
            let i = self.inodes.len() - 1;
            self.names.insert(path.to_owned(), i);
            i
        }

        fn apply(&mut self, op: &Op, ret: i64) {
            match op {
                Op::Open {
                    path,
                    fd,
                    truncate,
                    directory,
                    ..
                } => {
                    let p = if path == "." {
                        String::new()
                    } else {
                        self.follow(path)
                    };
                    if *directory {
                        self.fds.insert(fd.clone(), (usize::MAX, 0));
                        return;
                    }
                    let ino = match self.names.get(&p) {
                        Some(&i) => i,
                        None => self.add(&p, Kind::File),
                    };
                    if *truncate {
                        self.inodes[ino].truncate(0);
                    }
                    self.fds.insert(fd.clone(), (ino, 0));
                }
                Op::Close { fd } => {
                    self.fds.remove(fd);
                }
                Op::Write { fd, data, .. } => {
                    let (ino, pos) = self.fds[fd];
                    let bytes = data.bytes();
                    let n = if ret >= 0 { ret as usize } else { bytes.len() };
                    self.inodes[ino].write(pos, &bytes[..n]);
                    self.fds.insert(fd.clone(), (ino, pos + n as u64));
                }
                Op::Pwrite {
                    fd, offset, data, ..
                } => {
                    let ino = self.fds[fd].0;
                    self.inodes[ino].write(*offset, &data.bytes());
                }
                Op::Ftruncate { fd, len } => {
                    let ino = self.fds[fd].0;
                    self.inodes[ino].truncate(*len);
                }
                Op::Truncate { path, len } => {
                    let p = self.follow(path);
                    let ino = self.names[&p];
                    self.inodes[ino].truncate(*len);
                }
                Op::Fallocate {
                    fd,
                    offset,
                    len,
                    mode,
                } => {
                    let f = &mut self.inodes[self.fds[fd].0];
                    let end = offset + len;
                    if mode.contains(&FallocateFlag::PunchHole)
                        || mode.contains(&FallocateFlag::ZeroRange)
                    {
                        f.zero(*offset, end.min(f.size));
                    }
                    if !mode.contains(&FallocateFlag::KeepSize) {
                        f.size = f.size.max(end);
                    }
                }
                Op::Mmap {
                    fd, map, offset, ..
                } => {
                    let ino = self.fds[fd].0;
                    self.maps.insert(map.clone(), (ino, *offset));
                }
                Op::Munmap { map } => {
                    self.maps.remove(map);
                }
                Op::Store {
                    map, offset, data, ..
                } => {
                    let (ino, base) = self.maps[map];
                    let f = &mut self.inodes[ino];
                    let size = f.size;
                    f.write(base + offset, &data.bytes());
                    f.size = size;
                }
                Op::Rename { from, to } => self.rename(from, to),
                Op::Link { from, to } => {
                    let i = self.names[from];
                    self.names.insert(to.clone(), i);
                }
                Op::Unlink { path } | Op::Rmdir { path } => {
                    self.names.remove(path);
                }
                Op::Mkdir { path, .. } => {
                    self.add(path, Kind::Dir);
                }
                Op::Symlink { target, path } => {
                    let i = self.add(path, Kind::Symlink(target.clone()));
                    self.inodes[i].size = target.len() as u64;
                }
                Op::Mkfifo { path, .. } => {
                    self.add(path, Kind::Fifo);
                }
                Op::Setxattr {
                    path, name, value, ..
                } => {
                    let i = self.names[&self.follow(path)];
                    self.inodes[i].xattrs.insert(name.clone(), value.bytes());
                }
                Op::Removexattr { path, name } => {
                    let i = self.names[&self.follow(path)];
                    self.inodes[i].xattrs.remove(name);
                }
                _ => {}
            }
        }

        fn rename(&mut self, from: &str, to: &str) {
            let src = self.names[from];
            if from == to || self.names.get(to) == Some(&src) {
                return;
            }
            let fp = format!("{from}/");
            let moved: Vec<(String, usize)> = self
                .names
                .iter()
                .filter(|(k, _)| k.starts_with(&fp))
                .map(|(k, v)| (format!("{to}/{}", &k[fp.len()..]), *v))
                .collect();
            self.names.retain(|k, _| k != from && !k.starts_with(&fp));
            self.names.insert(to.to_owned(), src);
            self.names.extend(moved);
        }

        /// The state as the agent's dump would show it.
        pub fn entries(&self) -> Vec<FsEntry> {
            let mut out = Vec::new();
            for (path, &i) in &self.names {
                let ino = &self.inodes[i];
                let kind = match ino.kind {
                    Kind::File => EntryKind::File,
                    Kind::Dir => EntryKind::Dir,
                    Kind::Symlink(_) => EntryKind::Symlink,
                    Kind::Fifo => EntryKind::Fifo,
                };
                let mut e = FsEntry::new(path.clone(), kind);
                e.nlink = if kind == EntryKind::Dir {
                    let prefix = format!("{path}/");
                    2 + self
                        .names
                        .iter()
                        .filter(|(k, &v)| {
                            k.starts_with(&prefix)
                                && !k[prefix.len()..].contains('/')
                                && self.inodes[v].kind == Kind::Dir
                        })
                        .count() as u64
                } else {
                    self.names.values().filter(|&&v| v == i).count() as u64
                };
                e.xattrs = ino
                    .xattrs
                    .iter()
                    .map(|(k, v)| (k.clone(), v.iter().map(|b| format!("{b:02x}")).collect()))
                    .collect();
                match &ino.kind {
                    Kind::File => {
                        e.size = ino.size;
                        for (&b, blk) in ino.blocks.range(..ino.size.div_ceil(BS)) {
                            let len = (ino.size - b * BS).min(BS) as usize;
                            if let Some(h) = protocol::block_hash(&blk[..len]) {
                                e.blocks.insert(b, h);
                            }
                        }
                        e.blake3 = protocol::content_hash(e.size, &e.blocks);
                    }
                    Kind::Symlink(t) => {
                        e.size = ino.size;
                        e.blake3 = blake3::hash(t.as_bytes()).to_hex().to_string();
                        e.target = Some(t.clone());
                    }
                    Kind::Dir | Kind::Fifo => {}
                }
                out.push(e);
            }
            out
        }
    }

    /// Differences between a predicted and a dumped state, in words, empty when equal.
    pub fn compare(predicted: &[FsEntry], dumped: &[FsEntry]) -> Vec<String> {
        let keep = |e: &&FsEntry| e.path != "lost+found" && !e.path.starts_with("lost+found/");
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
        let mut out = Vec::new();
        for (p, w) in &want {
            let Some(g) = got.get(p) else {
                out.push(format!("{p}: predicted, missing"));
                continue;
            };
            if (w.kind, w.size, w.nlink) != (g.kind, g.size, g.nlink) {
                out.push(format!(
                    "{p}: {:?} of {} bytes, {} links; predicted {:?} of {} bytes, {} links",
                    g.kind, g.size, g.nlink, w.kind, w.size, w.nlink
                ));
            }
            if w.blocks != g.blocks {
                let differ: Vec<&u64> = w
                    .blocks
                    .keys()
                    .chain(g.blocks.keys())
                    .filter(|b| w.blocks.get(b) != g.blocks.get(b))
                    .collect();
                out.push(format!("{p}: blocks {differ:?} differ"));
            }
            if w.xattrs != g.xattrs {
                out.push(format!(
                    "{p}: xattrs {:?}, predicted {:?}",
                    g.xattrs, w.xattrs
                ));
            }
            if w.target != g.target {
                out.push(format!(
                    "{p}: target {:?}, predicted {:?}",
                    g.target, w.target
                ));
            }
            if let Some(e) = g.error {
                out.push(format!("{p}: the dump could not read it (errno {e})"));
            }
        }
        for p in got.keys().filter(|p| !want.contains_key(*p)) {
            out.push(format!("{p}: present, not predicted"));
        }
        out
    }
}
