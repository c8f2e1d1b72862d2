//! The fuzzer's workload stream: a pure function of `(seed, mode, index)`.
//!
//! Two generators feed it:
//!
//! - **Bounded exhaustive**, as ACE does for CrashMonkey: every sequence of up to K
//!   [`Step`]s, a step being one core op over a small file set (two files, `A` and
//!   `D/B`, in one directory `D`) followed by one persistence point (fsync, fdatasync,
//!   fmetadatasync, msync, fsync of the parent directory, sync, flush + fence). The
//!   steps have a fixed order ([`steps`]), sequences are numbered by length and then in
//!   mixed radix over that order ([`exhaustive_at`]), so an index means the same
//!   sequence in every build, and a campaign can say "all of seq-2 done".
//! - **Seeded random and mutational**, aimed at sync orderings: a fresh
//!   [`crash_models::generate::random_workload`], or a parent (the LSFMM 2016 corpus,
//!   or an earlier random workload of the same stream) with one to three
//!   [`Mutation`]s: a flush, fence, msync or fsync dropped, added, duplicated or moved;
//!   `MAP_SYNC` on or off; another flush instruction; cached or non-temporal stores;
//!   stores that straddle a cache line or are unaligned; another `fallocate` mode;
//!   truncate, rename, link or unlink around mapped files.
//!
//! Every random choice is a ChaCha8 stream seeded from `(seed, index)` (its output is
//! fixed by its specification: the same on every platform), and parents are picked from
//! the stream itself, never from what a run found: a shard's share of the stream is the
//! same workloads as in one unsharded run. Every workload made here passes
//! [`ops::validate`] (the op language's one validation); a mutation that would break
//! it is replaced by the next draw of the same stream.
//!
//! The generators never name a FIFO or open one, which would block the guest agent
//! (PID 1); a store past the end of a file is refused by the agent with `EFAULT`, so
//! a truncate before a store is a failing op, never a dead guest.

use crash_models::generate::{random_workload, GenConfig};
use crash_models::ops::{
    self, Data, FallocateFlag, FenceInsn, FlushInsn, Location, MapKind, MsyncMode, Op, StoreKind,
    SyncFileRangeFlag, Workload,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::fmt;

/// The exhaustive generator's file set: two files, one inside the directory.
pub const FILES: [&str; 2] = ["A", "D/B"];
/// The exhaustive generator's directory.
pub const DIR: &str = "D";
/// The longest sequences the exhaustive generator makes.
pub const MAX_K: u32 = 3;

/// A core op of the exhaustive generator, over [`FILES`] (by index) and [`DIR`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CoreOp {
    /// `open(O_CREAT | O_TRUNC)`: creat(2), which empties an existing file.
    Creat(usize),
    /// A 200-byte `pwrite` at 4000, across a block boundary.
    Write(usize),
    /// `mmap` the first 8 KiB, store 16 bytes at 4090 (across a line and a page).
    MapStore(usize),
    /// `ftruncate` to 1000 bytes.
    Truncate(usize),
    /// `fallocate` of the third 4 KiB block (grows the file).
    Fallocate(usize),
    /// `fallocate` punch-hole (with keep-size) of the first block.
    PunchHole(usize),
    /// `link(FILES[from], FILES[to])`.
    Link(usize, usize),
    /// `rename(FILES[from], FILES[to])`.
    Rename(usize, usize),
    /// `unlink`.
    Unlink(usize),
    /// `mkdir D`.
    Mkdir,
    /// `rmdir D`.
    Rmdir,
}

/// The persistence point after a core op.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Persist {
    /// fsync(2) of the file (for a namespace op: of the inode the op names).
    Fsync,
    /// fdatasync(2) of the file.
    Fdatasync,
    /// The emulated metadata-only sync.
    Fmetadatasync,
    /// msync(2) of the mapping (map-store only).
    Msync,
    /// fsync(2) of the parent directory.
    DirFsync,
    /// sync(2).
    Sync,
    /// clwb of the stored range and sfence (map-store only).
    FlushFence,
}

/// One core op and its persistence point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    /// The op.
    pub op: CoreOp,
    /// The persistence point after it.
    pub persist: Persist,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let file = |i: usize| FILES[i];
        match self.op {
            CoreOp::Creat(a) => write!(f, "creat {}", file(a)),
            CoreOp::Write(a) => write!(f, "write {}", file(a)),
            CoreOp::MapStore(a) => write!(f, "map-store {}", file(a)),
            CoreOp::Truncate(a) => write!(f, "truncate {}", file(a)),
            CoreOp::Fallocate(a) => write!(f, "fallocate {}", file(a)),
            CoreOp::PunchHole(a) => write!(f, "punch-hole {}", file(a)),
            CoreOp::Link(a, b) => write!(f, "link {} {}", file(a), file(b)),
            CoreOp::Rename(a, b) => write!(f, "rename {} {}", file(a), file(b)),
            CoreOp::Unlink(a) => write!(f, "unlink {}", file(a)),
            CoreOp::Mkdir => write!(f, "mkdir {DIR}"),
            CoreOp::Rmdir => write!(f, "rmdir {DIR}"),
        }?;
        let p = match self.persist {
            Persist::Fsync => "fsync",
            Persist::Fdatasync => "fdatasync",
            Persist::Fmetadatasync => "fmetadatasync",
            Persist::Msync => "msync",
            Persist::DirFsync => "dir-fsync",
            Persist::Sync => "sync",
            Persist::FlushFence => "flush+fence",
        };
        write!(f, " ; {p}")
    }
}

/// Every step, in the fixed order that numbers the exhaustive sequences. Changing it
/// changes what every recorded exhaustive index means (the snapshot test pins it).
pub fn steps() -> Vec<Step> {
    use CoreOp::*;
    use Persist::*;
    let file_persists = [Fsync, Fdatasync, Fmetadatasync, DirFsync, Sync];
    let mut out = Vec::new();
    for f in 0..FILES.len() {
        for op in [
            Creat(f),
            Write(f),
            MapStore(f),
            Truncate(f),
            Fallocate(f),
            PunchHole(f),
        ] {
            for persist in file_persists {
                out.push(Step { op, persist });
            }
            if op == MapStore(f) {
                for persist in [Msync, FlushFence] {
                    out.push(Step { op, persist });
                }
            }
        }
    }
    let other = |f: usize| 1 - f;
    for f in 0..FILES.len() {
        for op in [Link(f, other(f)), Rename(f, other(f)), Unlink(f)] {
            for persist in [Fsync, DirFsync, Sync] {
                out.push(Step { op, persist });
            }
        }
    }
    for persist in [Fsync, DirFsync, Sync] {
        out.push(Step { op: Mkdir, persist });
    }
    for persist in [DirFsync, Sync] {
        out.push(Step { op: Rmdir, persist });
    }
    out
}

/// How many sequences of exactly `k` steps there are.
pub fn exhaustive_count(k: u32) -> u64 {
    (steps().len() as u64).pow(k)
}

/// How many sequences of 1 to `max_k` steps there are: the exhaustive indices.
pub fn exhaustive_total(max_k: u32) -> u64 {
    (1..=max_k).map(exhaustive_count).sum()
}

/// Where an exhaustive index lies: sequence length and index among those of that
/// length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeqPos {
    /// Sequence length.
    pub k: u32,
    /// Index among the sequences of length `k`.
    pub index: u64,
}

/// The sequence at exhaustive index `index` (all of length 1 first, then 2, ...), or
/// `None` past the last of length `max_k`.
pub fn exhaustive_at(index: u64, max_k: u32) -> Option<(SeqPos, Vec<Step>)> {
    let all = steps();
    let n = all.len() as u64;
    let mut rest = index;
    for k in 1..=max_k {
        let count = n.pow(k);
        if rest < count {
            let pos = SeqPos { k, index: rest };
            // Most significant digit first, so sequences sharing a prefix are adjacent.
            let mut digits = Vec::with_capacity(k as usize);
            let mut r = rest;
            for _ in 0..k {
                digits.push(all[(r % n) as usize]);
                r /= n;
            }
            digits.reverse();
            return Some((pos, digits));
        }
        rest -= count;
    }
    None
}

/// The file set every exhaustive sequence starts from: `D`, and `A` and `D/B` with 8
/// KiB each, synced.
fn prologue() -> Vec<Op> {
    let mut ops = vec![Op::Mkdir {
        path: DIR.into(),
        mode: 0o755,
    }];
    for (i, f) in FILES.iter().enumerate() {
        ops.push(open(f, "x", true, false));
        ops.push(Op::Pwrite {
            fd: "x".into(),
            offset: 0,
            data: Data::Seeded {
                seed: 100 + i as u64,
                len: 8192,
            },
            direct: false,
        });
        ops.push(Op::Close { fd: "x".into() });
    }
    ops.push(Op::Sync);
    ops
}

fn open(path: &str, fd: &str, create: bool, truncate: bool) -> Op {
    Op::Open {
        path: path.into(),
        fd: fd.into(),
        create,
        truncate,
        excl: false,
        append: false,
        directory: false,
        mode: 0o644,
    }
}

fn open_dir(path: &str, fd: &str) -> Op {
    Op::Open {
        path: path.into(),
        fd: fd.into(),
        create: false,
        truncate: false,
        excl: false,
        append: false,
        directory: true,
        mode: 0o644,
    }
}

fn parent(path: &str) -> &str {
    path.rsplit_once('/').map_or(".", |(p, _)| p)
}

/// The ops of one step; `n` (the step's position) seeds its bytes, so each step
/// writes recognisable data. Every descriptor and mapping is closed at the end, so
/// steps compose in any order.
fn expand(step: Step, n: usize, ops: &mut Vec<Op>) {
    let fd = || "x".to_owned();
    let persist_dir = |dir: &str, ops: &mut Vec<Op>| {
        ops.push(open_dir(dir, "p"));
        ops.push(Op::Fsync { fd: "p".into() });
        ops.push(Op::Close { fd: "p".into() });
    };
    let seed = 1000 + n as u64;
    match step.op {
        CoreOp::Creat(a)
        | CoreOp::Write(a)
        | CoreOp::MapStore(a)
        | CoreOp::Truncate(a)
        | CoreOp::Fallocate(a)
        | CoreOp::PunchHole(a) => {
            let path = FILES[a];
            let create = matches!(
                step.op,
                CoreOp::Creat(_) | CoreOp::Write(_) | CoreOp::MapStore(_)
            );
            ops.push(open(path, "x", create, matches!(step.op, CoreOp::Creat(_))));
            match step.op {
                CoreOp::Write(_) => ops.push(Op::Pwrite {
                    fd: fd(),
                    offset: 4000,
                    data: Data::Seeded { seed, len: 200 },
                    direct: false,
                }),
                CoreOp::MapStore(_) => {
                    ops.push(Op::Mmap {
                        fd: fd(),
                        map: "m".into(),
                        offset: 0,
                        len: 8192,
                        kind: MapKind::Shared,
                    });
                    ops.push(Op::Store {
                        map: "m".into(),
                        offset: 4090,
                        data: Data::Seeded { seed, len: 16 },
                        kind: StoreKind::Cached,
                    });
                }
                CoreOp::Truncate(_) => ops.push(Op::Ftruncate {
                    fd: fd(),
                    len: 1000,
                }),
                CoreOp::Fallocate(_) => ops.push(Op::Fallocate {
                    fd: fd(),
                    offset: 8192,
                    len: 4096,
                    mode: vec![],
                }),
                CoreOp::PunchHole(_) => ops.push(Op::Fallocate {
                    fd: fd(),
                    offset: 0,
                    len: 4096,
                    mode: vec![FallocateFlag::KeepSize, FallocateFlag::PunchHole],
                }),
                _ => {}
            }
            match step.persist {
                Persist::Fsync => ops.push(Op::Fsync { fd: fd() }),
                Persist::Fdatasync => ops.push(Op::Fdatasync { fd: fd() }),
                Persist::Fmetadatasync => ops.push(Op::Fmetadatasync { fd: fd() }),
                Persist::Msync => ops.push(Op::Msync {
                    map: "m".into(),
                    offset: 0,
                    len: None,
                    mode: MsyncMode::Sync,
                }),
                Persist::FlushFence => {
                    ops.push(Op::Flush {
                        map: "m".into(),
                        offset: 4090,
                        len: 16,
                        insn: FlushInsn::Clwb,
                    });
                    ops.push(Op::Fence {
                        insn: FenceInsn::Sfence,
                    });
                }
                Persist::DirFsync => persist_dir(parent(path), ops),
                Persist::Sync => ops.push(Op::Sync),
            }
            if matches!(step.op, CoreOp::MapStore(_)) {
                ops.push(Op::Munmap { map: "m".into() });
            }
            ops.push(Op::Close { fd: fd() });
        }
        CoreOp::Link(a, _) | CoreOp::Rename(a, _) | CoreOp::Unlink(a) => {
            let from = FILES[a];
            // The inode the op names, held open for its fsync.
            let hold = step.persist == Persist::Fsync;
            if hold {
                ops.push(open(from, "x", false, false));
            }
            let to = FILES[b_or(step.op, a)];
            match step.op {
                CoreOp::Link(..) => ops.push(Op::Link {
                    from: from.into(),
                    to: to.into(),
                }),
                CoreOp::Rename(..) => ops.push(Op::Rename {
                    from: from.into(),
                    to: to.into(),
                }),
                _ => ops.push(Op::Unlink { path: from.into() }),
            }
            match step.persist {
                Persist::Fsync => {
                    ops.push(Op::Fsync { fd: fd() });
                    ops.push(Op::Close { fd: fd() });
                }
                Persist::Sync => ops.push(Op::Sync),
                // The directory the new name is in (for unlink: the old name's).
                _ => persist_dir(parent(to), ops),
            }
        }
        CoreOp::Mkdir | CoreOp::Rmdir => {
            if step.op == CoreOp::Mkdir {
                ops.push(Op::Mkdir {
                    path: DIR.into(),
                    mode: 0o755,
                });
            } else {
                ops.push(Op::Rmdir { path: DIR.into() });
            }
            match step.persist {
                Persist::Fsync => persist_dir(DIR, ops),
                Persist::Sync => ops.push(Op::Sync),
                _ => persist_dir(".", ops),
            }
        }
    }
}

/// The second file a namespace op names (unlink names only one).
fn b_or(op: CoreOp, a: usize) -> usize {
    match op {
        CoreOp::Link(_, b) | CoreOp::Rename(_, b) => b,
        _ => a,
    }
}

/// The workload of an exhaustive sequence: the prologue, then each step.
pub fn exhaustive_workload(pos: SeqPos, seq: &[Step]) -> Workload {
    let mut ops = prologue();
    for (n, s) in seq.iter().enumerate() {
        expand(*s, n, &mut ops);
    }
    let names: Vec<String> = seq.iter().map(|s| s.to_string()).collect();
    workload(
        format!(
            "exhaustive seq-{} #{}: {}",
            pos.k,
            pos.index,
            names.join(" | ")
        ),
        ops,
    )
}

fn workload(description: String, ops: Vec<Op>) -> Workload {
    let n = ops.len();
    Workload {
        description,
        fs: Vec::new(),
        ops,
        op_locations: vec![Location { line: 0, col: 0 }; n],
        expect: None,
        checkers: Vec::new(),
        crash_from_op: None,
    }
}

// ---- mutations ----

/// A mutation aimed at sync orderings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mutation {
    /// Remove a flush, fence, msync, fsync, fdatasync, fmetadatasync or sync.
    DropSync,
    /// Insert a flush, fence, msync, fsync/fdatasync or sync where it is valid.
    AddSync,
    /// Repeat a sync op right after itself.
    DuplicateSync,
    /// Move a sync op elsewhere.
    MoveSync,
    /// Turn `MAP_SYNC` on or off for a mapping.
    ToggleMapSync,
    /// Another flush instruction (clwb, clflushopt, clflush).
    FlushInsn,
    /// Cached stores become non-temporal, or back.
    StoreKind,
    /// A store moved to straddle a cache line, or to an odd offset.
    Straddle,
    /// Another `fallocate` mode.
    FallocateMode,
    /// A truncate, rename, link or unlink inserted after a mapping is made.
    NamespaceAroundMap,
}

impl Mutation {
    /// Every mutation, in a fixed order (draws index into it).
    pub const ALL: [Mutation; 10] = [
        Mutation::DropSync,
        Mutation::AddSync,
        Mutation::DuplicateSync,
        Mutation::MoveSync,
        Mutation::ToggleMapSync,
        Mutation::FlushInsn,
        Mutation::StoreKind,
        Mutation::Straddle,
        Mutation::FallocateMode,
        Mutation::NamespaceAroundMap,
    ];
}

fn is_sync(op: &Op) -> bool {
    matches!(
        op,
        Op::Flush { .. }
            | Op::Fence { .. }
            | Op::Msync { .. }
            | Op::Fsync { .. }
            | Op::Fdatasync { .. }
            | Op::Fmetadatasync { .. }
            | Op::SyncFileRange { .. }
            | Op::Sync
            | Op::Syncfs { .. }
    )
}

/// The descriptors and mappings open just before op `at` (names, a descriptor's
/// path, a mapping's length). Only names: what the kernel made of them is the
/// kernel's answer.
struct Live {
    fds: Vec<(String, String, bool)>,
    maps: Vec<(String, u64)>,
}

fn live_before(ops: &[Op], at: usize) -> Live {
    let mut l = Live {
        fds: vec![],
        maps: vec![],
    };
    for op in &ops[..at] {
        match op {
            Op::Open {
                fd,
                path,
                directory,
                ..
            } => l.fds.push((fd.clone(), path.clone(), *directory)),
            Op::Close { fd } => l.fds.retain(|(f, _, _)| f != fd),
            Op::Mmap { map, len, .. } => l.maps.push((map.clone(), *len)),
            Op::Munmap { map } => l.maps.retain(|(m, _)| m != map),
            _ => {}
        }
    }
    l
}

/// Regular-file paths the workload opens: what namespace ops may name. Never the
/// FIFO (`p0`) or the symlink (`s0`) of the random generator.
fn file_paths(ops: &[Op]) -> Vec<String> {
    let mut v: Vec<String> = ops
        .iter()
        .filter_map(|op| match op {
            Op::Open {
                path,
                directory: false,
                ..
            } if path != "p0" && path != "s0" => Some(path.clone()),
            _ => None,
        })
        .collect();
    v.sort();
    v.dedup();
    v
}

fn pick<T: Clone>(rng: &mut ChaCha8Rng, v: &[T]) -> Option<T> {
    (!v.is_empty()).then(|| v[rng.gen_range(0..v.len())].clone())
}

/// A sync op valid before `at`, or `None` when nothing fits but a fence or sync.
fn draw_sync(rng: &mut ChaCha8Rng, ops: &[Op], at: usize) -> Op {
    let live = live_before(ops, at);
    let files: Vec<String> = live
        .fds
        .iter()
        .filter(|(_, _, dir)| !dir)
        .map(|(f, _, _)| f.clone())
        .collect();
    match rng.gen_range(0..8) {
        0 if !live.maps.is_empty() => {
            let (map, len) = pick(rng, &live.maps).expect("non-empty");
            let offset = rng.gen_range(0..len.min(8192)) & !63;
            Op::Flush {
                map,
                offset,
                len: 64.min(len - offset).max(1),
                insn: pick(
                    rng,
                    &[FlushInsn::Clwb, FlushInsn::Clflushopt, FlushInsn::Clflush],
                )
                .expect("non-empty"),
            }
        }
        1 if !live.maps.is_empty() => Op::Msync {
            map: pick(rng, &live.maps).expect("non-empty").0,
            offset: 0,
            len: None,
            mode: MsyncMode::Sync,
        },
        2 if !files.is_empty() => Op::Fsync {
            fd: pick(rng, &files).expect("non-empty"),
        },
        3 if !files.is_empty() => Op::Fdatasync {
            fd: pick(rng, &files).expect("non-empty"),
        },
        4 => Op::Sync,
        5 if !files.is_empty() => Op::SyncFileRange {
            fd: pick(rng, &files).expect("non-empty"),
            offset: 0,
            len: 0,
            flags: SyncFileRangeFlag::all(),
        },
        6 if !files.is_empty() => Op::Syncfs {
            fd: pick(rng, &files).expect("non-empty"),
        },
        _ => Op::Fence {
            insn: if rng.gen_bool(0.8) {
                FenceInsn::Sfence
            } else {
                FenceInsn::Mfence
            },
        },
    }
}

/// Apply `m` to `ops` in place; false when the workload has nothing it applies to.
fn mutate(rng: &mut ChaCha8Rng, ops: &mut Vec<Op>, m: Mutation) -> bool {
    let where_ = |ops: &[Op], f: &dyn Fn(&Op) -> bool| -> Vec<usize> {
        ops.iter()
            .enumerate()
            .filter(|(_, o)| f(o))
            .map(|(i, _)| i)
            .collect()
    };
    match m {
        Mutation::DropSync | Mutation::DuplicateSync | Mutation::MoveSync => {
            let Some(i) = pick(rng, &where_(ops, &is_sync)) else {
                return false;
            };
            match m {
                Mutation::DropSync => {
                    ops.remove(i);
                }
                Mutation::DuplicateSync => {
                    let op = ops[i].clone();
                    ops.insert(i + 1, op);
                }
                _ => {
                    let op = ops.remove(i);
                    let j = rng.gen_range(0..=ops.len());
                    ops.insert(j, op);
                }
            }
            true
        }
        Mutation::AddSync => {
            let at = rng.gen_range(0..=ops.len());
            let op = draw_sync(rng, ops, at);
            ops.insert(at, op);
            true
        }
        Mutation::ToggleMapSync => {
            let Some(i) = pick(rng, &where_(ops, &|o| matches!(o, Op::Mmap { .. }))) else {
                return false;
            };
            if let Op::Mmap { kind, .. } = &mut ops[i] {
                *kind = match kind {
                    MapKind::Shared => MapKind::Sync,
                    MapKind::Sync => MapKind::Shared,
                };
            }
            true
        }
        Mutation::FlushInsn => {
            let Some(i) = pick(rng, &where_(ops, &|o| matches!(o, Op::Flush { .. }))) else {
                return false;
            };
            if let Op::Flush { insn, .. } = &mut ops[i] {
                let others: Vec<FlushInsn> =
                    [FlushInsn::Clwb, FlushInsn::Clflushopt, FlushInsn::Clflush]
                        .into_iter()
                        .filter(|x| x != insn)
                        .collect();
                *insn = pick(rng, &others).expect("two others");
            }
            true
        }
        Mutation::StoreKind | Mutation::Straddle => {
            let Some(i) = pick(rng, &where_(ops, &|o| matches!(o, Op::Store { .. }))) else {
                return false;
            };
            let seed = rng.gen_range(1..1_000_000);
            let straddle = m == Mutation::Straddle;
            let Op::Store {
                offset, data, kind, ..
            } = &mut ops[i]
            else {
                return false;
            };
            let len = data.len().max(1);
            if straddle {
                // Across a line boundary near the old offset, or one byte off it.
                let line = (*offset / 64 + 1) * 64;
                *offset = if rng.gen_bool(0.5) {
                    line.saturating_sub(len / 2 + 1)
                } else {
                    *offset | 1
                };
                *kind = StoreKind::Cached;
            } else if *kind == StoreKind::Cached {
                *kind = StoreKind::NonTemporal;
                *offset &= !3;
                *data = Data::Seeded {
                    seed,
                    len: (len & !3).max(4),
                };
            } else {
                *kind = StoreKind::Cached;
            }
            true
        }
        Mutation::FallocateMode => {
            let Some(i) = pick(rng, &where_(ops, &|o| matches!(o, Op::Fallocate { .. }))) else {
                return false;
            };
            use FallocateFlag::*;
            let modes = [
                vec![],
                vec![KeepSize],
                vec![KeepSize, PunchHole],
                vec![ZeroRange],
                vec![ZeroRange, KeepSize],
                vec![CollapseRange],
                vec![InsertRange],
            ];
            if let Op::Fallocate {
                mode, offset, len, ..
            } = &mut ops[i]
            {
                *mode = pick(rng, &modes).expect("non-empty");
                if mode.contains(&CollapseRange) || mode.contains(&InsertRange) {
                    // Block-aligned, or the kernel refuses with EINVAL at once.
                    *offset &= !4095;
                    *len = (*len & !4095).max(4096);
                }
            }
            true
        }
        Mutation::NamespaceAroundMap => {
            let maps = where_(ops, &|o| matches!(o, Op::Mmap { .. }));
            let Some(i) = pick(rng, &maps) else {
                return false;
            };
            let paths = file_paths(ops);
            let Some(path) = pick(rng, &paths) else {
                return false;
            };
            let at = rng.gen_range(i + 1..=ops.len());
            let other = pick(rng, &paths).expect("non-empty");
            let op = match rng.gen_range(0..5) {
                0 => {
                    let live = live_before(ops, at);
                    let files: Vec<String> = live
                        .fds
                        .iter()
                        .filter(|(_, _, d)| !d)
                        .map(|(f, _, _)| f.clone())
                        .collect();
                    match pick(rng, &files) {
                        Some(fd) => Op::Ftruncate {
                            fd,
                            len: pick(rng, &[0, 100, 4096, 8192]).expect("non-empty"),
                        },
                        None => return false,
                    }
                }
                1 => Op::Truncate {
                    path,
                    len: pick(rng, &[0, 100, 4096, 8192]).expect("non-empty"),
                },
                2 => Op::Rename {
                    from: path,
                    to: other,
                },
                3 => Op::Link {
                    from: path,
                    to: format!("{other}.ln"),
                },
                _ => Op::Unlink { path },
            };
            ops.insert(at, op);
            true
        }
    }
}

// ---- the stream ----

/// Which generators feed a campaign.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum GenMode {
    /// Only the exhaustive sequences of up to `max_k` steps (the stream ends there).
    Exhaustive {
        /// Longest sequences.
        max_k: u32,
    },
    /// Only random and mutated workloads.
    Random,
    /// Even indices exhaustive (random once those run out), odd ones random or
    /// mutated.
    Mixed {
        /// Longest exhaustive sequences.
        max_k: u32,
    },
    /// [`GenMode::Mixed`] with coverage feedback: a mutation's parent is often a
    /// workload of the campaign's own corpus (one that reached new file-system code or
    /// gave a new signature), so the stream depends on what the campaign found: the
    /// same seed gives the same workloads only with the same results, and a shard's
    /// corpus is its own.
    Guided {
        /// Longest exhaustive sequences.
        max_k: u32,
    },
}

impl GenMode {
    /// The longest exhaustive sequences the stream has (0: none).
    pub fn max_k(self) -> u32 {
        match self {
            GenMode::Exhaustive { max_k }
            | GenMode::Mixed { max_k }
            | GenMode::Guided { max_k } => max_k,
            GenMode::Random => 0,
        }
    }

    /// Whether exhaustive sequences take only the even stream indices.
    pub fn interleaved(self) -> bool {
        matches!(self, GenMode::Mixed { .. } | GenMode::Guided { .. })
    }
}

impl std::str::FromStr for GenMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let k = |v: &str| -> Result<u32, String> {
            match v.parse::<u32>() {
                Ok(k) if (1..=MAX_K).contains(&k) => Ok(k),
                _ => Err(format!("`{v}` is not a sequence length: use 1 to {MAX_K}")),
            }
        };
        match s.split_once(':') {
            None if s == "random" => Ok(GenMode::Random),
            None if s == "mixed" => Ok(GenMode::Mixed { max_k: 2 }),
            None if s == "guided" => Ok(GenMode::Guided { max_k: 2 }),
            None if s == "exhaustive" => Ok(GenMode::Exhaustive { max_k: 2 }),
            Some(("exhaustive", v)) => Ok(GenMode::Exhaustive { max_k: k(v)? }),
            Some(("mixed", v)) => Ok(GenMode::Mixed { max_k: k(v)? }),
            Some(("guided", v)) => Ok(GenMode::Guided { max_k: k(v)? }),
            _ => Err(format!(
                "`{s}` is not a generator: use exhaustive[:K], random, mixed[:K] or guided[:K]"
            )),
        }
    }
}

impl fmt::Display for GenMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GenMode::Exhaustive { max_k } => write!(f, "exhaustive:{max_k}"),
            GenMode::Random => write!(f, "random"),
            GenMode::Mixed { max_k } => write!(f, "mixed:{max_k}"),
            GenMode::Guided { max_k } => write!(f, "guided:{max_k}"),
        }
    }
}

/// Where a stream entry came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Origin {
    /// An exhaustive sequence.
    Exhaustive {
        /// Its length and index among those of that length.
        pos: SeqPos,
    },
    /// A fresh random workload from this generator seed.
    Random {
        /// `crash_models::generate::random_workload`'s seed.
        seed: u64,
    },
    /// A parent with mutations.
    Mutated {
        /// The parent: a corpus file name, or `random:SEED`.
        parent: String,
        /// The mutations applied, in order.
        mutations: Vec<Mutation>,
    },
}

/// One workload of the stream.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    /// Its index in the stream.
    pub index: u64,
    /// Where it came from.
    pub origin: Origin,
    /// The workload (valid by [`ops::validate`]).
    pub workload: Workload,
}

/// A 64-bit mix of the campaign seed and an index (splitmix64's finaliser), so
/// neighbouring indices get unrelated streams.
pub fn mix(seed: u64, index: u64) -> u64 {
    let mut z = seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The built-in corpus that mutations start from, besides the stream's own random
/// workloads: LSFMM 2016's sync-ordering questions.
fn seed_corpus() -> Vec<(String, Workload)> {
    crate::pipeline::builtin_lsfmm2016()
        .into_iter()
        .map(|l| (l.name, l.workload))
        .collect()
}

/// A workload of a campaign's own corpus, a parent for [`GenMode::Guided`]: its
/// stream index and ops.
pub type CorpusEntry = (u64, Workload);

/// The stream's entry at `index`, or `None` where an exhaustive-only stream ends.
/// `corpus` is the campaign's corpus so far, in the order it grew; only
/// [`GenMode::Guided`] reads it.
pub fn candidate(
    seed: u64,
    mode: GenMode,
    index: u64,
    corpus: &[CorpusEntry],
) -> Option<Candidate> {
    let exhaustive = |i: u64, max_k: u32| {
        exhaustive_at(i, max_k).map(|(pos, seq)| Candidate {
            index,
            origin: Origin::Exhaustive { pos },
            workload: exhaustive_workload(pos, &seq),
        })
    };
    match mode {
        GenMode::Exhaustive { max_k } => exhaustive(index, max_k),
        GenMode::Random => Some(random_or_mutated(seed, index, &[])),
        GenMode::Mixed { max_k } | GenMode::Guided { max_k } => {
            if index % 2 == 0 {
                if let Some(c) = exhaustive(index / 2, max_k) {
                    return Some(c);
                }
            }
            let corpus = if matches!(mode, GenMode::Guided { .. }) {
                corpus
            } else {
                &[]
            };
            Some(random_or_mutated(seed, index, corpus))
        }
    }
}

fn random_or_mutated(seed: u64, index: u64, feedback: &[CorpusEntry]) -> Candidate {
    let mut rng = ChaCha8Rng::seed_from_u64(mix(seed, index));
    let cfg = GenConfig::default();
    if rng.gen_bool(0.4) {
        let s = mix(seed, index) ^ 0x5EED;
        let mut w = random_workload(s, &cfg);
        w.description = format!("random #{index}: generator seed {s}");
        return Candidate {
            index,
            origin: Origin::Random { seed: s },
            workload: w,
        };
    }
    // A parent from the seed corpus, or an earlier random workload of this stream
    // (regenerated, never read from what a run found, so shards agree).
    let corpus = seed_corpus();
    // Only a non-empty feedback corpus draws here, so the unguided streams are the
    // same as before guidance existed.
    let from_feedback = !feedback.is_empty() && rng.gen_bool(0.6);
    let (parent, parent_ops) = if from_feedback {
        let (i, w) = pick(&mut rng, feedback).expect("not empty");
        (format!("corpus:{i:08}"), w.ops.clone())
    } else if rng.gen_bool(0.5) {
        let (n, w) = pick(&mut rng, &corpus).expect("the seed corpus is not empty");
        (n, w.ops)
    } else {
        let s = mix(seed, rng.gen_range(0..=index)) ^ 0x5EED;
        (format!("random:{s}"), random_workload(s, &cfg).ops)
    };
    for _ in 0..32 {
        let mut ops = parent_ops.clone();
        let mut applied = Vec::new();
        for _ in 0..rng.gen_range(1..=3) {
            let m = pick(&mut rng, &Mutation::ALL).expect("non-empty");
            if mutate(&mut rng, &mut ops, m) {
                applied.push(m);
            }
        }
        if !applied.is_empty() && ops::validate(&ops).is_ok() && ops != parent_ops {
            let names: Vec<String> = applied
                .iter()
                .map(|m| serde_json::to_value(m).map_or_else(|_| "?".into(), |v| v.to_string()))
                .collect();
            return Candidate {
                index,
                workload: workload(
                    format!("mutated #{index}: {parent} with {}", names.join(", ")),
                    ops,
                ),
                origin: Origin::Mutated {
                    parent,
                    mutations: applied,
                },
            };
        }
    }
    // Nothing applied in 32 draws (a parent with no mapping, say): a fresh workload.
    let s = mix(seed, index) ^ 0xF00D;
    let mut w = random_workload(s, &cfg);
    w.description = format!("random #{index}: generator seed {s}");
    Candidate {
        index,
        origin: Origin::Random { seed: s },
        workload: w,
    }
}

/// The workload as a TOML file (description, file systems, first op to crash in, ops
/// and user checkers; not its `[expect]`), which [`Workload::parse`] reads back to the
/// same workload.
pub fn to_toml(w: &Workload) -> String {
    #[derive(Serialize)]
    struct Saved<'a> {
        description: &'a str,
        #[serde(skip_serializing_if = "<[_]>::is_empty")]
        fs: &'a [crash_models::ops::FsKind],
        #[serde(skip_serializing_if = "Option::is_none")]
        crash_from_op: Option<u32>,
        ops: &'a [Op],
        #[serde(skip_serializing_if = "<[_]>::is_empty")]
        checkers: &'a [crash_models::ops::UserChecker],
    }
    toml::to_string(&Saved {
        description: &w.description,
        fs: &w.fs,
        crash_from_op: w.crash_from_op,
        ops: &w.ops,
        checkers: &w.checkers,
    })
    .expect("ops serialise to TOML")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn exhaustive_counts_snapshot() {
        let counts: Vec<(u32, u64)> = (1..=MAX_K).map(|k| (k, exhaustive_count(k))).collect();
        let names: Vec<String> = steps().iter().map(|s| s.to_string()).collect();
        insta::assert_debug_snapshot!((counts, names));
    }

    #[test]
    fn exhaustive_indices_are_stable_and_cover_every_sequence() {
        let n = steps().len() as u64;
        assert_eq!(exhaustive_total(2), n + n * n);
        // Index 0 is the first step alone; index n the first pair; the last index of
        // seq-2 is the last step twice.
        let (p, s) = exhaustive_at(0, 2).unwrap();
        assert_eq!((p.k, p.index, s.len()), (1, 0, 1));
        let (p, s) = exhaustive_at(n, 2).unwrap();
        assert_eq!((p.k, p.index), (2, 0));
        assert_eq!(s, vec![steps()[0], steps()[0]]);
        let (p, s) = exhaustive_at(n + n * n - 1, 2).unwrap();
        assert_eq!((p.k, p.index), (2, n * n - 1));
        assert_eq!(s, vec![*steps().last().unwrap(); 2]);
        assert!(exhaustive_at(n + n * n, 2).is_none());
        // Every pair exactly once.
        let pairs: BTreeSet<String> = (n..n + n * n)
            .map(|i| format!("{:?}", exhaustive_at(i, 2).unwrap().1))
            .collect();
        assert_eq!(pairs.len() as u64, n * n);
    }

    #[test]
    fn every_exhaustive_workload_of_seq_1_and_2_is_valid() {
        for i in 0..exhaustive_total(2) {
            let c = candidate(0, GenMode::Exhaustive { max_k: 2 }, i, &[]).unwrap();
            assert!(ops::validate(&c.workload.ops).is_ok(), "index {i}");
        }
        // And one in 97 of seq-3.
        let start = exhaustive_total(2);
        for i in (start..exhaustive_total(3)).step_by(97) {
            let c = candidate(0, GenMode::Exhaustive { max_k: 3 }, i, &[]).unwrap();
            assert!(ops::validate(&c.workload.ops).is_ok(), "index {i}");
        }
    }

    #[test]
    fn each_step_has_its_persistence_point() {
        for s in steps() {
            let mut ops = Vec::new();
            expand(s, 0, &mut ops);
            let synced = ops.iter().any(|o| match s.persist {
                Persist::Fsync => matches!(o, Op::Fsync { .. }),
                Persist::Fdatasync => matches!(o, Op::Fdatasync { .. }),
                Persist::Fmetadatasync => matches!(o, Op::Fmetadatasync { .. }),
                Persist::Msync => matches!(o, Op::Msync { .. }),
                Persist::DirFsync => matches!(o, Op::Fsync { .. }),
                Persist::Sync => matches!(o, Op::Sync),
                Persist::FlushFence => matches!(o, Op::Fence { .. }),
            });
            assert!(synced, "{s}: {ops:?}");
        }
    }

    #[test]
    fn stream_is_deterministic_valid_and_round_trips() {
        for mode in [GenMode::Random, GenMode::Mixed { max_k: 2 }] {
            for i in 0..300 {
                let a = candidate(7, mode, i, &[]).unwrap();
                assert_eq!(Some(&a), candidate(7, mode, i, &[]).as_ref(), "{mode} #{i}");
                assert!(ops::validate(&a.workload.ops).is_ok(), "{mode} #{i}");
                let back = Workload::parse(&to_toml(&a.workload), "w.toml").unwrap();
                assert_eq!(back.ops, a.workload.ops);
                assert_eq!(back.description, a.workload.description);
            }
        }
        // Another seed, another stream.
        let differ = (0..20)
            .filter(|i| {
                candidate(7, GenMode::Random, *i, &[]) != candidate(8, GenMode::Random, *i, &[])
            })
            .count();
        assert!(differ >= 19);
    }

    #[test]
    fn mutations_all_occur_and_never_name_the_fifo() {
        let mut seen = BTreeSet::new();
        let mut kinds = BTreeSet::new();
        let mut syncs = BTreeSet::new();
        for i in 0..400 {
            let c = candidate(3, GenMode::Random, i, &[]).unwrap();
            kinds.insert(matches!(c.origin, Origin::Mutated { .. }));
            if let Origin::Mutated { mutations, .. } = &c.origin {
                seen.extend(mutations.iter().copied());
                if mutations.contains(&Mutation::AddSync) {
                    syncs.extend(c.workload.ops.iter().filter(|o| is_sync(o)).map(Op::name));
                }
            }
            for op in &c.workload.ops {
                if let Op::Open { path, .. } | Op::Truncate { path, .. } = op {
                    assert_ne!(path, "p0", "#{i}");
                }
                if let Op::Rename { from, to } | Op::Link { from, to } = op {
                    assert!(from != "p0" && to != "p0", "#{i}");
                }
            }
        }
        assert_eq!(kinds.len(), 2, "random and mutated both drawn");
        let missing: Vec<&Mutation> = Mutation::ALL.iter().filter(|m| !seen.contains(m)).collect();
        assert!(missing.is_empty(), "never applied: {missing:?}");
        // Every kind of sync op is drawn (as added syncs, which `is_sync` then moves,
        // duplicates and drops).
        for name in [
            "flush",
            "fence",
            "msync",
            "fsync",
            "fdatasync",
            "sync",
            "sync-file-range",
            "syncfs",
        ] {
            assert!(syncs.contains(name), "{name} never drawn: {syncs:?}");
        }
    }

    #[test]
    fn a_pinned_mutant() {
        let c = (0..50)
            .filter_map(|i| candidate(1, GenMode::Random, i, &[]))
            .find(|c| matches!(c.origin, Origin::Mutated { .. }))
            .unwrap();
        insta::assert_snapshot!(format!("{}\n{}", c.index, to_toml(&c.workload)));
    }

    #[test]
    fn gen_mode_parses() {
        assert_eq!(
            "exhaustive:1".parse::<GenMode>(),
            Ok(GenMode::Exhaustive { max_k: 1 })
        );
        assert_eq!("mixed".parse::<GenMode>(), Ok(GenMode::Mixed { max_k: 2 }));
        assert_eq!(
            "guided:3".parse::<GenMode>(),
            Ok(GenMode::Guided { max_k: 3 })
        );
        assert!("exhaustive:4".parse::<GenMode>().is_err());
        assert!("bogus".parse::<GenMode>().is_err());
        for m in ["random", "mixed:3", "exhaustive:2"] {
            assert_eq!(m.parse::<GenMode>().unwrap().to_string(), m);
        }
    }

    #[test]
    fn guided_draws_parents_from_the_campaign_corpus_and_is_mixed_without_one() {
        let mixed = GenMode::Mixed { max_k: 1 };
        let guided = GenMode::Guided { max_k: 1 };
        for i in 0..40 {
            assert_eq!(
                candidate(5, mixed, i, &[]),
                candidate(5, guided, i, &[]),
                "#{i}"
            );
        }
        let parent = crate::pipeline::builtin_lsfmm2016()[0].workload.clone();
        let corpus = vec![(17u64, parent)];
        let from_corpus = (0..200)
            .filter_map(|i| candidate(5, guided, i, &corpus))
            .filter(|c| {
                matches!(&c.origin, Origin::Mutated { parent, .. } if parent == "corpus:00000017")
            })
            .inspect(|c| assert!(ops::validate(&c.workload.ops).is_ok()))
            .count();
        assert!(from_corpus > 10, "{from_corpus} of 200 from the corpus");
        // Unguided streams ignore a corpus.
        for i in 0..40 {
            assert_eq!(candidate(5, mixed, i, &corpus), candidate(5, mixed, i, &[]));
        }
    }
}
