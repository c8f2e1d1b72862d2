//! The op language: what a workload asks the guest to do.
//!
//! A workload is a TOML file with a list of `[[ops]]` tables, each naming its op with
//! `op = "..."`. File descriptors and mappings are named by the workload (`fd = "a"`,
//! `map = "m"`), so a workload reads like a program and the agent keeps the table of
//! real descriptors and addresses.
//!
//! ```toml
//! description = "store through a MAP_SYNC mapping"
//!
//! [[ops]]
//! op = "open"
//! path = "a.dat"
//! fd = "a"
//! create = true
//!
//! [[ops]]
//! op = "ftruncate"
//! fd = "a"
//! len = 4096
//!
//! [[ops]]
//! op = "mmap"
//! fd = "a"
//! map = "m"
//! len = 4096
//! kind = "sync"
//!
//! [[ops]]
//! op = "store"
//! map = "m"
//! offset = 0
//! data = "hello"
//! ```
//!
//! Parsing is two passes: serde (shape, names and types of fields) and [`validate`]
//! (handles used before they exist, stores outside their mapping, sizes the hardware
//! cannot store in one go). Both report `file:line:col`, the field and what was
//! expected, through [`WorkloadError`].

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// Largest single `store` op in bytes: one cache line, the most one op should model.
pub const MAX_STORE_BYTES: u64 = 64;
/// Largest payload of any op (write, pwrite), so a message to the agent stays bounded.
pub const MAX_DATA_BYTES: u64 = 1 << 20;

/// The file systems pmcrash runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FsKind {
    /// ext4 with `-o dax`.
    Ext4,
    /// XFS with `-o dax` (reflink off: reflink and DAX do not mix).
    Xfs,
}

impl FsKind {
    /// Every supported file system, in a stable order.
    pub const ALL: [FsKind; 2] = [FsKind::Ext4, FsKind::Xfs];

    /// The name used on the command line, in mount(2) and in reports.
    pub fn name(self) -> &'static str {
        match self {
            FsKind::Ext4 => "ext4",
            FsKind::Xfs => "xfs",
        }
    }
}

impl fmt::Display for FsKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for FsKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "ext4" => Ok(FsKind::Ext4),
            "xfs" => Ok(FsKind::Xfs),
            other => Err(format!(
                "unknown file system `{other}`: expected ext4 or xfs"
            )),
        }
    }
}

/// The bytes an op writes or stores.
///
/// In TOML: a string (`data = "hello"`, its UTF-8 bytes), or a table:
/// `{ hex = "deadbeef" }`, `{ fill = 171, len = 4096 }`, or
/// `{ seed = 7, len = 4096 }` (pseudo-random bytes, distinct per seed, which makes
/// stale data from another file easy to recognise).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Data {
    /// The UTF-8 bytes of the string.
    Text(String),
    /// Bytes given in hex.
    Hex {
        /// Hex digits, two per byte; spaces and underscores are ignored.
        hex: String,
    },
    /// `len` copies of one byte.
    Fill {
        /// The byte.
        fill: u8,
        /// How many.
        len: u64,
    },
    /// `len` pseudo-random bytes from `seed` (splitmix64, so every build agrees).
    Seeded {
        /// The seed.
        seed: u64,
        /// How many.
        len: u64,
    },
}

impl Data {
    /// The number of bytes, without materialising them.
    pub fn len(&self) -> u64 {
        match self {
            Data::Text(s) => s.len() as u64,
            Data::Hex { hex } => (hex.chars().filter(|c| c.is_ascii_hexdigit()).count() / 2) as u64,
            Data::Fill { len, .. } | Data::Seeded { len, .. } => *len,
        }
    }

    /// True when there are no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes. Hex must have been checked by [`validate`] (odd or bad digits
    /// are skipped here rather than panicking).
    pub fn bytes(&self) -> Vec<u8> {
        match self {
            Data::Text(s) => s.as_bytes().to_vec(),
            Data::Hex { hex } => {
                let digits: Vec<u8> = hex
                    .chars()
                    .filter_map(|c| c.to_digit(16))
                    .map(|d| d as u8)
                    .collect();
                digits.chunks_exact(2).map(|p| (p[0] << 4) | p[1]).collect()
            }
            Data::Fill { fill, len } => vec![*fill; *len as usize],
            Data::Seeded { seed, len } => seeded_bytes(*seed, *len as usize),
        }
    }
}

/// splitmix64 bytes: deterministic, dependency-free, good enough to tell files apart.
pub fn seeded_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        out.extend_from_slice(&z.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// How a mapping is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MapKind {
    /// `MAP_SHARED`: flushes make stores durable only by accident of the hardware;
    /// the file system promises nothing until msync/fsync.
    #[default]
    Shared,
    /// `MAP_SHARED_VALIDATE | MAP_SYNC`: a write fault syncs the metadata it dirties,
    /// so store + flush + fence is durable by contract.
    Sync,
}

/// How a store reaches memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StoreKind {
    /// Ordinary stores through the cache.
    #[default]
    Cached,
    /// Non-temporal stores (`movnti`), which bypass the cache and are durable at the
    /// next fence. Offset and length must be multiples of 4.
    NonTemporal,
}

/// A cache-line flush instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FlushInsn {
    /// Write back, keep the line; weakly ordered.
    #[default]
    Clwb,
    /// Write back and invalidate; weakly ordered.
    Clflushopt,
    /// Write back and invalidate; ordered with stores and other clflushes.
    Clflush,
}

/// A fence instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FenceInsn {
    /// Orders stores and flushes.
    #[default]
    Sfence,
    /// Orders everything.
    Mfence,
}

/// msync(2) flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MsyncMode {
    /// `MS_SYNC`: returns when the range is durable.
    #[default]
    Sync,
    /// `MS_ASYNC`: schedules write-back; promises nothing on Linux.
    Async,
}

/// fallocate(2) mode flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FallocateFlag {
    /// `FALLOC_FL_KEEP_SIZE`.
    KeepSize,
    /// `FALLOC_FL_PUNCH_HOLE` (needs keep-size).
    PunchHole,
    /// `FALLOC_FL_ZERO_RANGE`.
    ZeroRange,
    /// `FALLOC_FL_COLLAPSE_RANGE`.
    CollapseRange,
    /// `FALLOC_FL_INSERT_RANGE`.
    InsertRange,
    /// `FALLOC_FL_UNSHARE_RANGE`.
    UnshareRange,
}

impl FallocateFlag {
    /// The Linux flag bit.
    pub fn bits(self) -> i32 {
        match self {
            FallocateFlag::KeepSize => 0x01,
            FallocateFlag::PunchHole => 0x02,
            FallocateFlag::CollapseRange => 0x08,
            FallocateFlag::ZeroRange => 0x10,
            FallocateFlag::InsertRange => 0x20,
            FallocateFlag::UnshareRange => 0x40,
        }
    }
}

/// sync_file_range(2) flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SyncFileRangeFlag {
    /// `SYNC_FILE_RANGE_WAIT_BEFORE`.
    WaitBefore,
    /// `SYNC_FILE_RANGE_WRITE`.
    Write,
    /// `SYNC_FILE_RANGE_WAIT_AFTER`.
    WaitAfter,
}

impl SyncFileRangeFlag {
    /// The Linux flag bit.
    pub fn bits(self) -> u32 {
        match self {
            SyncFileRangeFlag::WaitBefore => 1,
            SyncFileRangeFlag::Write => 2,
            SyncFileRangeFlag::WaitAfter => 4,
        }
    }

    /// All three flags: write back and wait.
    pub fn all() -> Vec<SyncFileRangeFlag> {
        vec![
            SyncFileRangeFlag::WaitBefore,
            SyncFileRangeFlag::Write,
            SyncFileRangeFlag::WaitAfter,
        ]
    }
}

/// setxattr(2) flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum XattrFlag {
    /// Create or replace.
    #[default]
    Any,
    /// `XATTR_CREATE`: fail with EEXIST if it exists.
    Create,
    /// `XATTR_REPLACE`: fail with ENODATA if it does not.
    Replace,
}

impl XattrFlag {
    /// The Linux flag value.
    pub fn bits(self) -> i32 {
        match self {
            XattrFlag::Any => 0,
            XattrFlag::Create => 1,
            XattrFlag::Replace => 2,
        }
    }
}

/// Largest xattr value (`XATTR_SIZE_MAX`).
pub const MAX_XATTR_BYTES: u64 = 65536;

fn default_mode() -> u32 {
    0o644
}
fn default_dir_mode() -> u32 {
    0o755
}
fn default_one() -> u64 {
    1
}

/// One operation of a workload. Paths are relative to the mounted file system.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Op {
    /// open(2), naming the descriptor `fd`.
    Open {
        /// Path of the file.
        path: String,
        /// Name the workload gives the descriptor.
        fd: String,
        /// `O_CREAT`.
        #[serde(default)]
        create: bool,
        /// `O_TRUNC`.
        #[serde(default)]
        truncate: bool,
        /// `O_EXCL`.
        #[serde(default)]
        excl: bool,
        /// `O_APPEND`.
        #[serde(default)]
        append: bool,
        /// `O_RDONLY | O_DIRECTORY`: a descriptor of a directory (`path = "."` is the
        /// file system's root), for `fsync`/`fdatasync` of the directory. Excludes
        /// `create`, `truncate`, `excl` and `append`.
        #[serde(default)]
        directory: bool,
        /// Permission bits for a created file.
        #[serde(default = "default_mode")]
        mode: u32,
    },
    /// close(2).
    Close {
        /// The descriptor.
        fd: String,
    },
    /// write(2) at the file position.
    Write {
        /// The descriptor.
        fd: String,
        /// The bytes.
        data: Data,
        /// Write with `O_DIRECT` set on the descriptor for this call.
        #[serde(default)]
        direct: bool,
    },
    /// pwrite(2).
    Pwrite {
        /// The descriptor.
        fd: String,
        /// File offset.
        offset: u64,
        /// The bytes.
        data: Data,
        /// Write with `O_DIRECT` set on the descriptor for this call.
        #[serde(default)]
        direct: bool,
    },
    /// pread(2); the result carries the bytes' blake3.
    Read {
        /// The descriptor.
        fd: String,
        /// File offset.
        offset: u64,
        /// How many bytes.
        len: u64,
    },
    /// ftruncate(2).
    Ftruncate {
        /// The descriptor.
        fd: String,
        /// New size.
        len: u64,
    },
    /// truncate(2) by path.
    Truncate {
        /// The path.
        path: String,
        /// New size.
        len: u64,
    },
    /// fallocate(2).
    Fallocate {
        /// The descriptor.
        fd: String,
        /// Start.
        offset: u64,
        /// Length.
        len: u64,
        /// Mode flags; none means plain allocation.
        #[serde(default)]
        mode: Vec<FallocateFlag>,
    },
    /// mmap(2) of `len` bytes at file `offset`, naming the mapping `map`.
    Mmap {
        /// The descriptor.
        fd: String,
        /// Name the workload gives the mapping.
        map: String,
        /// File offset (a multiple of 4096).
        #[serde(default)]
        offset: u64,
        /// Length.
        len: u64,
        /// Plain shared or MAP_SYNC.
        #[serde(default)]
        kind: MapKind,
    },
    /// munmap(2).
    Munmap {
        /// The mapping.
        map: String,
    },
    /// CPU stores of `data` at `offset` in a mapping (1 to 64 bytes).
    Store {
        /// The mapping.
        map: String,
        /// Offset in the mapping.
        offset: u64,
        /// The bytes.
        data: Data,
        /// Cached or non-temporal.
        #[serde(default)]
        kind: StoreKind,
    },
    /// Flush every cache line that `[offset, offset+len)` of a mapping touches.
    Flush {
        /// The mapping.
        map: String,
        /// Offset in the mapping.
        offset: u64,
        /// Length of the range.
        #[serde(default = "default_one")]
        len: u64,
        /// Which instruction.
        #[serde(default)]
        insn: FlushInsn,
    },
    /// A fence instruction.
    Fence {
        /// Which instruction.
        #[serde(default)]
        insn: FenceInsn,
    },
    /// msync(2) of a range of a mapping (the whole mapping by default).
    Msync {
        /// The mapping.
        map: String,
        /// Offset in the mapping (rounded down to a page by the agent).
        #[serde(default)]
        offset: u64,
        /// Length; the rest of the mapping when absent.
        #[serde(default)]
        len: Option<u64>,
        /// `MS_SYNC` or `MS_ASYNC`.
        #[serde(default)]
        mode: MsyncMode,
    },
    /// fsync(2).
    Fsync {
        /// The descriptor.
        fd: String,
    },
    /// fdatasync(2).
    Fdatasync {
        /// The descriptor.
        fd: String,
    },
    /// The emulated metadata-only sync of LSFMM 2016: the guest calls fdatasync and
    /// reports the file's extents, and the model ignores the kernel's flushes of the
    /// file's own data lines during the call.
    Fmetadatasync {
        /// The descriptor.
        fd: String,
    },
    /// sync_file_range(2). Writes back data only: no metadata, so it promises
    /// nothing by contract (see `docs/promises.md`).
    SyncFileRange {
        /// The descriptor.
        fd: String,
        /// Start.
        #[serde(default)]
        offset: u64,
        /// Length; 0 means to the end of the file.
        #[serde(default)]
        len: u64,
        /// Flags; all three when absent.
        #[serde(default = "SyncFileRangeFlag::all")]
        flags: Vec<SyncFileRangeFlag>,
    },
    /// sync(2).
    Sync,
    /// syncfs(2) on the file system of `fd`.
    Syncfs {
        /// The descriptor.
        fd: String,
    },
    /// rename(2).
    Rename {
        /// Old path.
        from: String,
        /// New path.
        to: String,
    },
    /// link(2).
    Link {
        /// Existing path.
        from: String,
        /// New name.
        to: String,
    },
    /// unlink(2).
    Unlink {
        /// The path.
        path: String,
    },
    /// mkdir(2).
    Mkdir {
        /// The path.
        path: String,
        /// Permission bits.
        #[serde(default = "default_dir_mode")]
        mode: u32,
    },
    /// rmdir(2).
    Rmdir {
        /// The path.
        path: String,
    },
    /// symlink(2): a link at `path` pointing to `target`.
    Symlink {
        /// What the link points to (any string).
        target: String,
        /// Where the link is made.
        path: String,
    },
    /// mknod(2) of a FIFO.
    Mkfifo {
        /// The path.
        path: String,
        /// Permission bits.
        #[serde(default = "default_mode")]
        mode: u32,
    },
    /// setxattr(2) of a `user.*` attribute.
    Setxattr {
        /// The path.
        path: String,
        /// The attribute's name (`user.` and at least one more byte).
        name: String,
        /// The value.
        value: Data,
        /// `XATTR_CREATE` / `XATTR_REPLACE`, or neither.
        #[serde(default)]
        flag: XattrFlag,
    },
    /// removexattr(2).
    Removexattr {
        /// The path.
        path: String,
        /// The attribute's name.
        name: String,
    },
    /// Run a user program in the guest with the mount point as its working directory
    /// (`docs/programs.md`). The harness ships the binary, and for a dynamic one its
    /// loader and `DT_NEEDED` closure, into the guest; its stores, flushes and fences
    /// are traced like the agent's. The model does not know what it does to the file
    /// system: it makes no promises, and the files it makes are not judged for stale
    /// data (a user checker judges them).
    Exec {
        /// The program on the host: an absolute path, or relative to the directory
        /// pmcrash runs in.
        program: String,
        /// Its arguments (after `argv[0]`).
        #[serde(default)]
        args: Vec<String>,
        /// Its whole environment.
        #[serde(default)]
        env: BTreeMap<String, String>,
        /// Guest milliseconds before it is killed (the op then fails with `ETIMEDOUT`).
        #[serde(default = "default_exec_timeout_ms")]
        timeout_ms: u64,
        /// Names of the program's own markers (`pmcrash-marker`), so crash points
        /// and findings say `after tx_commit #3` instead of a number.
        #[serde(default)]
        markers: Vec<String>,
    },
}

/// Default [`Op::Exec`] timeout: one minute of guest time.
pub const DEFAULT_EXEC_TIMEOUT_MS: u64 = 60_000;
/// Longest [`Op::Exec`] timeout: an hour.
pub const MAX_EXEC_TIMEOUT_MS: u64 = 3_600_000;

fn default_exec_timeout_ms() -> u64 {
    DEFAULT_EXEC_TIMEOUT_MS
}

impl Op {
    /// The op's name as written in a workload (`"store"`, `"fsync"`, ...).
    pub fn name(&self) -> &'static str {
        match self {
            Op::Open { .. } => "open",
            Op::Close { .. } => "close",
            Op::Write { .. } => "write",
            Op::Pwrite { .. } => "pwrite",
            Op::Read { .. } => "read",
            Op::Ftruncate { .. } => "ftruncate",
            Op::Fallocate { .. } => "fallocate",
            Op::Mmap { .. } => "mmap",
            Op::Munmap { .. } => "munmap",
            Op::Store { .. } => "store",
            Op::Flush { .. } => "flush",
            Op::Fence { .. } => "fence",
            Op::Msync { .. } => "msync",
            Op::Fsync { .. } => "fsync",
            Op::Fdatasync { .. } => "fdatasync",
            Op::Fmetadatasync { .. } => "fmetadatasync",
            Op::Sync => "sync",
            Op::Syncfs { .. } => "syncfs",
            Op::Rename { .. } => "rename",
            Op::Link { .. } => "link",
            Op::Unlink { .. } => "unlink",
            Op::Mkdir { .. } => "mkdir",
            Op::Rmdir { .. } => "rmdir",
            Op::Symlink { .. } => "symlink",
            Op::Truncate { .. } => "truncate",
            Op::SyncFileRange { .. } => "sync-file-range",
            Op::Mkfifo { .. } => "mkfifo",
            Op::Setxattr { .. } => "setxattr",
            Op::Removexattr { .. } => "removexattr",
            Op::Exec { .. } => "exec",
        }
    }
}

/// A parsed, validated workload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Workload {
    /// One line saying what the workload exercises.
    pub description: String,
    /// The file systems it is meant for (all when empty).
    pub fs: Vec<FsKind>,
    /// The ops, in order.
    pub ops: Vec<Op>,
    /// Where each op starts in the source, for messages that point back at it.
    pub op_locations: Vec<Location>,
    /// What the workload expects of a run (its `[expect]` table).
    pub expect: Option<Expect>,
    /// Programs that judge each recovered crash state (its `[[checkers]]` tables).
    pub checkers: Vec<UserChecker>,
    /// Crash points only from this op on (`crash_from_op = N`, ops counted from 0):
    /// the ops before it set the stage (a PMDK pool's creation) and are not
    /// crash-tested. `None`: every op.
    #[serde(default)]
    pub crash_from_op: Option<u32>,
}

/// A user checker: a program run in the checker guest after each recovery, with the
/// mount point as its working directory (and in `PMCRASH_MOUNT`). Exit 0 means the
/// program's data is consistent; anything else is a `program-check-failed` finding
/// with its output. The built-in oracle still judges the file system.
///
/// ```toml
/// [[checkers]]
/// program = "target/debug/redo-log"
/// args = ["check", "log.pm"]
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserChecker {
    /// The program on the host (as in [`Op::Exec`]).
    #[serde(default)]
    pub program: String,
    /// Its arguments.
    #[serde(default)]
    pub args: Vec<String>,
    /// Its environment (`PMCRASH_MOUNT` is added).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Guest milliseconds before it is killed (a kill is a failed check).
    #[serde(default = "default_checker_timeout_ms")]
    pub timeout_ms: u64,
    /// Run only when this path (relative to the mount point) exists after recovery;
    /// otherwise the check passes: the program had not made its pool yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub if_exists: Option<String>,
    /// The stock PMDK checker: `pmempool_check = "pool.obj"` stands for
    /// `program = "/usr/bin/pmempool"`, `args = ["check", "pool.obj"]`,
    /// `if_exists = "pool.obj"` (expanded when the workload is parsed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pmempool_check: Option<String>,
}

/// Where Debian's `pmdk-tools` puts `pmempool` (`pmcrash setup` installs it).
pub const PMEMPOOL: &str = "/usr/bin/pmempool";

/// Default [`UserChecker`] timeout: ten seconds of guest time.
pub const DEFAULT_CHECKER_TIMEOUT_MS: u64 = 10_000;

fn default_checker_timeout_ms() -> u64 {
    DEFAULT_CHECKER_TIMEOUT_MS
}

impl UserChecker {
    /// `pmempool check POOL` (when `POOL` exists), the stock checker of PMDK pools.
    pub fn pmempool_check(pool: &str) -> UserChecker {
        UserChecker {
            program: PMEMPOOL.into(),
            args: vec!["check".into(), pool.into()],
            env: BTreeMap::new(),
            timeout_ms: DEFAULT_CHECKER_TIMEOUT_MS,
            if_exists: Some(pool.into()),
            pmempool_check: None,
        }
    }

    /// Expand [`UserChecker::pmempool_check`]; `Err` names the field at fault.
    fn expand(mut self) -> Result<UserChecker, (&'static str, String)> {
        if let Some(pool) = self.pmempool_check.take() {
            if !self.program.is_empty() || !self.args.is_empty() {
                return Err((
                    "pmempool_check",
                    "give either pmempool_check or program/args, not both".into(),
                ));
            }
            let env = std::mem::take(&mut self.env);
            let timeout_ms = self.timeout_ms;
            self = UserChecker::pmempool_check(&pool);
            self.env = env;
            self.timeout_ms = timeout_ms;
        }
        if self.program.is_empty() {
            return Err((
                "program",
                "missing: a checker names a program (or pmempool_check = POOL)".into(),
            ));
        }
        Ok(self)
    }

    /// The op that runs it in the guest, where the file system is mounted at `mount`.
    pub fn as_op(&self, mount: &str) -> Op {
        let mut env = self.env.clone();
        env.insert("PMCRASH_MOUNT".into(), mount.into());
        Op::Exec {
            program: self.program.clone(),
            args: self.args.clone(),
            env,
            timeout_ms: self.timeout_ms,
            markers: vec![],
        }
    }
}

/// A workload's `[expect]`: the verdicts a run must see and where losses may
/// appear. Keys in `[expect.ext4]` / `[expect.xfs]` override the same keys for that
/// file system. An unknown key or verdict is a `file:line:col` error.
///
/// ```toml
/// [expect]
/// verdicts = ["ok", "unsafe-flush-only"]
/// lost_after_op = 5
/// [expect.xfs]
/// verdicts = ["ok"]
/// ```
///
/// The common keys repeat [`Expectation`]'s rather than flatten it: serde's `flatten`
/// cannot be combined with `deny_unknown_fields` and loses the error positions.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// Exactly the verdict classes the run sees (any order).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdicts: Option<Vec<crate::verdict::Verdict>>,
    /// Every crash state after this op returned is ok.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ok_after_op: Option<usize>,
    /// Some crash state after this op returned is not ok.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lost_after_op: Option<usize>,
    /// Overrides for ext4.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ext4: Option<Expectation>,
    /// Overrides for XFS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xfs: Option<Expectation>,
}

/// The keys of an `[expect]` table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expectation {
    /// Exactly the verdict classes the run sees (any order).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdicts: Option<Vec<crate::verdict::Verdict>>,
    /// Every crash state after this op returned is ok.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ok_after_op: Option<usize>,
    /// Some crash state after this op returned is not ok.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lost_after_op: Option<usize>,
}

impl Expect {
    /// The expectation for one file system (its overrides over the common keys);
    /// `None` when no verdicts are given for it.
    pub fn for_fs(&self, fs: FsKind) -> Option<Expectation> {
        let over = match fs {
            FsKind::Ext4 => self.ext4.as_ref(),
            FsKind::Xfs => self.xfs.as_ref(),
        };
        let all = Expectation {
            verdicts: self.verdicts.clone(),
            ok_after_op: self.ok_after_op,
            lost_after_op: self.lost_after_op,
        };
        let pick = |f: fn(&Expectation) -> Option<usize>| over.and_then(f).or(f(&all));
        let mut verdicts = over
            .and_then(|o| o.verdicts.clone())
            .or_else(|| all.verdicts.clone())?;
        verdicts.sort();
        verdicts.dedup();
        Some(Expectation {
            verdicts: Some(verdicts),
            ok_after_op: pick(|e| e.ok_after_op),
            lost_after_op: pick(|e| e.lost_after_op),
        })
    }
}

/// A position in a workload file (1-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Location {
    /// Line, from 1.
    pub line: usize,
    /// Column, from 1.
    pub col: usize,
}

/// A workload that could not be read: where, which field, what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}:{col}: {field}: {message}")]
pub struct WorkloadError {
    /// The file name as given by the caller.
    pub file: String,
    /// Line, from 1.
    pub line: usize,
    /// Column, from 1.
    pub col: usize,
    /// The field (`ops[3].len`) or `workload` when no single field is to blame.
    pub field: String,
    /// What was wrong and what was expected.
    pub message: String,
}

type SpannedTable = BTreeMap<toml::Spanned<String>, toml::Spanned<toml::Value>>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWorkload {
    #[serde(default)]
    description: String,
    #[serde(default)]
    fs: Vec<FsKind>,
    ops: Vec<toml::Spanned<SpannedTable>>,
    #[serde(default)]
    expect: Option<Expect>,
    #[serde(default)]
    checkers: Vec<UserChecker>,
    #[serde(default)]
    crash_from_op: Option<toml::Spanned<i64>>,
}

fn line_col(src: &str, byte: usize) -> Location {
    let byte = byte.min(src.len());
    let before = &src[..byte];
    let line = before.matches('\n').count() + 1;
    let col = before.rfind('\n').map_or(byte, |nl| byte - nl - 1) + 1;
    Location { line, col }
}

/// Guess the field a serde message is about (`missing field `fd``).
fn field_from_message(msg: &str) -> Option<String> {
    for key in ["missing field `", "unknown field `", "duplicate field `"] {
        if let Some(rest) = msg.split(key).nth(1) {
            return rest.split('`').next().map(str::to_owned);
        }
    }
    None
}

impl Workload {
    /// Parse and validate a workload. `file` names the source in errors.
    pub fn parse(src: &str, file: &str) -> Result<Workload, WorkloadError> {
        let raw: RawWorkload = toml::from_str(src).map_err(|e| {
            let span = e.span().unwrap_or(0..0);
            let loc = line_col(src, span.start);
            let message = e.message().trim().to_owned();
            // Which table the error sits in, so `field` reads `ops[2].fd` or
            // `expect.xfs.verdicts`.
            let before = &src[..span.start.min(src.len())];
            let op_index = before.matches("[[ops]]").count();
            let table = before
                .lines()
                .rev()
                .find_map(|l| {
                    let l = l.trim();
                    (l.starts_with('[') && !l.starts_with("[["))
                        .then(|| l.trim_matches(|c| c == '[' || c == ']').trim().to_owned())
                })
                .filter(|t| t.starts_with("expect"))
                .filter(|_| before.rfind("[expect") > before.rfind("[[ops]]"));
            let field = match (field_from_message(&message), table, op_index) {
                (Some(f), Some(t), _) => format!("{t}.{f}"),
                (None, Some(t), _) => t,
                (Some(f), None, 0) => f,
                (Some(f), None, i) => format!("ops[{}].{f}", i - 1),
                // A top-level value of the wrong type: the key on its line.
                (None, None, 0) => src
                    .lines()
                    .nth(loc.line - 1)
                    .and_then(|l| l.split_once('='))
                    .map(|(k, _)| k.trim())
                    .filter(|k| !k.is_empty() && !k.contains(['[', ' ', '"']))
                    .unwrap_or("workload")
                    .to_owned(),
                (None, None, i) => format!("ops[{}]", i - 1),
            };
            WorkloadError {
                file: file.to_owned(),
                line: loc.line,
                col: loc.col,
                field,
                message: improve_message(&message),
            }
        })?;
        let mut op_locations = Vec::with_capacity(raw.ops.len());
        let mut ops = Vec::with_capacity(raw.ops.len());
        for (i, table) in raw.ops.into_iter().enumerate() {
            let span = table.span();
            op_locations.push(line_col(src, span.start));
            let table = table.into_inner();
            let value = toml::Value::Table(
                table
                    .iter()
                    .map(|(k, v)| (k.get_ref().clone(), v.get_ref().clone()))
                    .collect(),
            );
            let op = Op::deserialize(value).map_err(|e| {
                let message = e.message().trim().to_owned();
                // Serde cannot carry spans through a tagged enum: find the key the
                // message is about, so the position points at the field itself.
                let (field, at) =
                    blame_key(&message, &table).unwrap_or_else(|| ("op".to_owned(), span.start));
                let loc = line_col(src, at);
                WorkloadError {
                    file: file.to_owned(),
                    line: loc.line,
                    col: loc.col,
                    field: format!("ops[{i}].{field}"),
                    message: improve_message(&message),
                }
            })?;
            ops.push(op);
        }
        let expect = raw.expect;
        let crash_from_op = match raw.crash_from_op {
            None => None,
            Some(n) => {
                let v = *n.get_ref();
                if v < 0 || v as usize >= ops.len() {
                    let loc = line_col(src, n.span().start);
                    return Err(WorkloadError {
                        file: file.to_owned(),
                        line: loc.line,
                        col: loc.col,
                        field: "crash_from_op".to_owned(),
                        message: format!(
                            "{v} is not an op of this workload: expected 0 to {} (ops are counted from 0)",
                            ops.len().saturating_sub(1)
                        ),
                    });
                }
                Some(v as u32)
            }
        };
        let workload = Workload {
            description: raw.description,
            fs: raw.fs,
            ops,
            op_locations,
            expect,
            checkers: Vec::new(),
            crash_from_op,
        };
        let mut workload = workload;
        for (i, c) in raw.checkers.into_iter().enumerate() {
            let c = c.expand().map_err(|(field, message)| WorkloadError {
                file: file.to_owned(),
                line: 1,
                col: 1,
                field: format!("checkers[{i}].{field}"),
                message,
            })?;
            workload.checkers.push(c);
        }
        for (i, c) in workload.checkers.iter().enumerate() {
            validate(&[c.as_op("/mnt")]).map_err(|v| WorkloadError {
                file: file.to_owned(),
                line: 1,
                col: 1,
                field: format!("checkers[{i}].{}", v.field),
                message: v.message,
            })?;
        }
        validate(&workload.ops).map_err(|v| {
            let loc = workload
                .op_locations
                .get(v.op_index)
                .copied()
                .unwrap_or(Location { line: 1, col: 1 });
            WorkloadError {
                file: file.to_owned(),
                line: loc.line,
                col: loc.col,
                field: format!("ops[{}].{}", v.op_index, v.field),
                message: v.message,
            }
        })?;
        Ok(workload)
    }

    /// The ops whose crash points are checked (as
    /// [`crate::points::PointConfig::ops`]): from `crash_from_op` to the last.
    pub fn crash_ops(&self) -> std::ops::Range<u32> {
        self.crash_from_op.unwrap_or(0)..self.ops.len() as u32
    }

    /// A stable identity of the op sequence (blake3 of its canonical JSON), recorded in
    /// traces so a trace is never checked against a different workload.
    pub fn hash(&self) -> [u8; 32] {
        let json = serde_json::to_vec(&self.ops).expect("ops serialise");
        *blake3::hash(&json).as_bytes()
    }
}

/// The key of an op table that a serde message is about, and where it starts.
fn blame_key(msg: &str, table: &SpannedTable) -> Option<(String, usize)> {
    if let Some(name) = field_from_message(msg) {
        if msg.starts_with("missing field") {
            let op_key = table.keys().find(|k| k.get_ref() == "op")?;
            return Some((name, op_key.span().start));
        }
        let key = table.keys().find(|k| *k.get_ref() == name)?;
        return Some((name, key.span().start));
    }
    if msg.contains("unknown variant") {
        let key = table.keys().find(|k| k.get_ref() == "op")?;
        let value = &table[key];
        return Some(("op".to_owned(), value.span().start));
    }
    // "invalid type: string \"big\", expected u64": find the key holding that value.
    for (k, v) in table {
        let shown = v.get_ref().to_string();
        if msg.contains(&format!(" {shown},")) || msg.contains(&format!("`{shown}`")) {
            return Some((k.get_ref().clone(), v.span().start));
        }
    }
    None
}

fn improve_message(msg: &str) -> String {
    if msg.contains("did not match any variant of untagged enum Data") {
        return "expected data as a string, { hex = \"..\" }, { fill = BYTE, len = N } or { seed = N, len = N }".to_owned();
    }
    if msg.starts_with("missing field `ops`") {
        return "missing field `ops`: a workload needs at least one [[ops]] table".to_owned();
    }
    msg.to_owned()
}

/// A semantic error in an op sequence, before it is tied to a file position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpError {
    /// Index of the op.
    pub op_index: usize,
    /// The field at fault.
    pub field: &'static str,
    /// What was wrong and what was expected.
    pub message: String,
}

/// Check an op sequence for everything serde cannot see: handles used before they
/// exist or after they are closed, stores and flushes outside their mapping, sizes the
/// agent cannot perform. The agent runs only validated sequences.
pub fn validate(ops: &[Op]) -> Result<(), OpError> {
    let mut fds: BTreeSet<&str> = BTreeSet::new();
    let mut maps: BTreeMap<&str, u64> = BTreeMap::new();
    let err = |i: usize, field: &'static str, message: String| OpError {
        op_index: i,
        field,
        message,
    };
    for (i, op) in ops.iter().enumerate() {
        let need_fd = |fd: &str, fds: &BTreeSet<&str>| -> Result<(), OpError> {
            if fds.contains(fd) {
                Ok(())
            } else {
                Err(err(
                    i,
                    "fd",
                    format!("no open descriptor named `{fd}`: open it with an earlier `open` op"),
                ))
            }
        };
        let need_map = |map: &str, maps: &BTreeMap<&str, u64>| -> Result<u64, OpError> {
            maps.get(map).copied().ok_or_else(|| {
                err(
                    i,
                    "map",
                    format!("no mapping named `{map}`: create it with an earlier `mmap` op"),
                )
            })
        };
        let check_path = |field: &'static str, p: &str| -> Result<(), OpError> {
            if p.is_empty() || p.starts_with('/') || p.split('/').any(|c| c == ".." || c.is_empty())
            {
                Err(err(
                    i,
                    field,
                    format!("`{p}` is not a relative path inside the file system (no leading /, no .., no empty components)"),
                ))
            } else if p.len() > 255 {
                Err(err(i, field, "path longer than 255 bytes".to_owned()))
            } else {
                Ok(())
            }
        };
        let check_data = |data: &Data, max: u64| -> Result<(), OpError> {
            if let Data::Hex { hex } = data {
                let digits: String = hex.chars().filter(|c| *c != ' ' && *c != '_').collect();
                if let Some(bad) = digits.chars().find(|c| !c.is_ascii_hexdigit()) {
                    return Err(err(i, "data", format!("`{bad}` is not a hex digit")));
                }
                if digits.len() % 2 != 0 {
                    return Err(err(
                        i,
                        "data",
                        "odd number of hex digits: expected two per byte".to_owned(),
                    ));
                }
            }
            if data.len() > max {
                return Err(err(
                    i,
                    "data",
                    format!("{} bytes is more than the {max} this op takes", data.len()),
                ));
            }
            Ok(())
        };
        match op {
            Op::Open {
                path,
                fd,
                directory,
                create,
                truncate,
                excl,
                append,
                ..
            } => {
                if !(*directory && path == ".") {
                    check_path("path", path)?;
                }
                if *directory && (*create || *truncate || *excl || *append) {
                    return Err(err(
                        i,
                        "directory",
                        "a directory is opened read-only: drop create, truncate, excl and append"
                            .to_owned(),
                    ));
                }
                if !*directory && path == "." {
                    return Err(err(
                        i,
                        "path",
                        "`.` is a directory: open it with `directory = true`".to_owned(),
                    ));
                }
                if !fds.insert(fd) {
                    return Err(err(
                        i,
                        "fd",
                        format!("descriptor `{fd}` is already open: close it first or pick another name"),
                    ));
                }
            }
            Op::Close { fd } => {
                need_fd(fd, &fds)?;
                fds.remove(fd.as_str());
            }
            Op::Write { fd, data, .. } | Op::Pwrite { fd, data, .. } => {
                need_fd(fd, &fds)?;
                check_data(data, MAX_DATA_BYTES)?;
            }
            Op::Read { fd, len, .. } => {
                need_fd(fd, &fds)?;
                if *len > MAX_DATA_BYTES {
                    return Err(err(
                        i,
                        "len",
                        format!("at most {MAX_DATA_BYTES} bytes per read"),
                    ));
                }
            }
            Op::Ftruncate { fd, .. }
            | Op::SyncFileRange { fd, .. }
            | Op::Fsync { fd }
            | Op::Fdatasync { fd }
            | Op::Fmetadatasync { fd }
            | Op::Syncfs { fd } => need_fd(fd, &fds)?,
            Op::Fallocate { fd, len, .. } => {
                need_fd(fd, &fds)?;
                if *len == 0 {
                    return Err(err(i, "len", "must be greater than 0".to_owned()));
                }
            }
            Op::Mmap {
                fd,
                map,
                offset,
                len,
                ..
            } => {
                need_fd(fd, &fds)?;
                if offset % 4096 != 0 {
                    return Err(err(i, "offset", "must be a multiple of 4096".to_owned()));
                }
                if *len == 0 || *len > (1 << 30) {
                    return Err(err(i, "len", "expected 1 byte to 1 GiB".to_owned()));
                }
                if maps.insert(map, *len).is_some() {
                    return Err(err(
                        i,
                        "map",
                        format!(
                            "mapping `{map}` already exists: munmap it first or pick another name"
                        ),
                    ));
                }
            }
            Op::Munmap { map } => {
                need_map(map, &maps)?;
                maps.remove(map.as_str());
            }
            Op::Store {
                map,
                offset,
                data,
                kind,
            } => {
                let map_len = need_map(map, &maps)?;
                check_data(data, MAX_STORE_BYTES)?;
                if data.is_empty() {
                    return Err(err(i, "data", "a store needs 1 to 64 bytes".to_owned()));
                }
                if offset + data.len() > map_len {
                    return Err(err(
                        i,
                        "offset",
                        format!(
                            "store of {} bytes at {offset} runs past the end of `{map}` ({map_len} bytes)",
                            data.len()
                        ),
                    ));
                }
                if *kind == StoreKind::NonTemporal && (offset % 4 != 0 || data.len() % 4 != 0) {
                    return Err(err(
                        i,
                        "kind",
                        "non-temporal stores (movnti) need an offset and length that are multiples of 4".to_owned(),
                    ));
                }
            }
            Op::Flush {
                map, offset, len, ..
            } => {
                let map_len = need_map(map, &maps)?;
                if *len == 0 || offset + len > map_len {
                    return Err(err(
                        i,
                        "len",
                        format!("flush range [{offset}, {}) must be non-empty and inside `{map}` ({map_len} bytes)", offset + len),
                    ));
                }
            }
            Op::Msync {
                map, offset, len, ..
            } => {
                let map_len = need_map(map, &maps)?;
                let end = offset + len.unwrap_or(map_len.saturating_sub(*offset));
                if *offset >= map_len || end > map_len {
                    return Err(err(
                        i,
                        "len",
                        format!("msync range must lie inside `{map}` ({map_len} bytes)"),
                    ));
                }
            }
            Op::Fence { .. } | Op::Sync => {}
            Op::Rename { from, to } | Op::Link { from, to } => {
                check_path("from", from)?;
                check_path("to", to)?;
            }
            Op::Unlink { path }
            | Op::Mkdir { path, .. }
            | Op::Rmdir { path }
            | Op::Truncate { path, .. }
            | Op::Mkfifo { path, .. } => check_path("path", path)?,
            Op::Setxattr {
                path, name, value, ..
            } => {
                check_path("path", path)?;
                check_xattr_name(name).map_err(|m| err(i, "name", m))?;
                check_data(value, MAX_XATTR_BYTES)?;
            }
            Op::Removexattr { path, name } => {
                check_path("path", path)?;
                check_xattr_name(name).map_err(|m| err(i, "name", m))?;
            }
            Op::Symlink { target, path } => {
                check_path("path", path)?;
                if target.is_empty() {
                    return Err(err(i, "target", "must not be empty".to_owned()));
                }
            }
            Op::Exec {
                program,
                args,
                env,
                timeout_ms,
                markers,
            } => {
                if program.is_empty() || program.contains('\0') {
                    return Err(err(
                        i,
                        "program",
                        "expected the path of a program on the host".to_owned(),
                    ));
                }
                if *timeout_ms == 0 || *timeout_ms > MAX_EXEC_TIMEOUT_MS {
                    return Err(err(
                        i,
                        "timeout_ms",
                        format!("expected 1 to {MAX_EXEC_TIMEOUT_MS} milliseconds"),
                    ));
                }
                if args.iter().any(|a| a.contains('\0')) {
                    return Err(err(i, "args", "an argument contains NUL".to_owned()));
                }
                if env
                    .iter()
                    .any(|(k, v)| k.is_empty() || k.contains(['=', '\0']) || v.contains('\0'))
                {
                    return Err(err(
                        i,
                        "env",
                        "expected NAME = \"value\" pairs, names without `=` or NUL".to_owned(),
                    ));
                }
                let size: usize = args.iter().map(String::len).sum::<usize>()
                    + env.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
                if size as u64 > MAX_DATA_BYTES {
                    return Err(err(
                        i,
                        "args",
                        format!("arguments and environment exceed {MAX_DATA_BYTES} bytes"),
                    ));
                }
                let mut seen = BTreeSet::new();
                for m in markers {
                    if m.is_empty() || !seen.insert(crate::protocol::marker::name_hash(m)) {
                        return Err(err(
                            i,
                            "markers",
                            format!("`{m}`: marker names must be non-empty and distinct"),
                        ));
                    }
                }
            }
        }
    }
    Ok(())
}

/// Only `user.*` attributes: the others need privileges or mean something to the
/// kernel (security labels, ACLs), which the model does not follow.
fn check_xattr_name(name: &str) -> Result<(), String> {
    if !name.starts_with("user.") || name.len() <= 5 {
        return Err(format!(
            "`{name}` is not a user xattr: expected `user.` followed by a name"
        ));
    }
    if name.len() > 255 || name.contains('\0') {
        return Err("xattr names are at most 255 bytes, without NUL".to_owned());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stock_pmempool_checker_expands_and_conflicts_are_named() {
        let w =
            parse("[[ops]]\nop = \"sync\"\n[[checkers]]\npmempool_check = \"pool.obj\"\n").unwrap();
        assert_eq!(w.checkers, vec![UserChecker::pmempool_check("pool.obj")]);
        assert_eq!(w.checkers[0].program, PMEMPOOL);
        assert_eq!(w.checkers[0].args, ["check", "pool.obj"]);
        assert_eq!(w.checkers[0].if_exists.as_deref(), Some("pool.obj"));
        let e = parse(
            "[[ops]]\nop = \"sync\"\n[[checkers]]\npmempool_check = \"p\"\nprogram = \"/bin/true\"\n",
        )
        .unwrap_err();
        assert_eq!(e.field, "checkers[0].pmempool_check", "{e}");
        let e = parse("[[ops]]\nop = \"sync\"\n[[checkers]]\nargs = [\"x\"]\n").unwrap_err();
        assert_eq!(e.field, "checkers[0].program", "{e}");
    }

    fn parse(src: &str) -> Result<Workload, WorkloadError> {
        Workload::parse(src, "w.toml")
    }

    const GOOD: &str = r#"
description = "all the kinds"

[[ops]]
op = "open"
path = "a"
fd = "a"
create = true

[[ops]]
op = "ftruncate"
fd = "a"
len = 8192

[[ops]]
op = "mmap"
fd = "a"
map = "m"
len = 8192
kind = "sync"

[[ops]]
op = "store"
map = "m"
offset = 64
data = { hex = "deadbeef" }
kind = "non-temporal"

[[ops]]
op = "flush"
map = "m"
offset = 0
len = 128
insn = "clflushopt"

[[ops]]
op = "fence"

[[ops]]
op = "pwrite"
fd = "a"
offset = 0
data = { seed = 3, len = 100 }

[[ops]]
op = "msync"
map = "m"

[[ops]]
op = "sync"
"#;

    #[test]
    fn crash_from_op_is_checked_against_the_ops() {
        let w =
            parse("crash_from_op = 1\n[[ops]]\nop = \"sync\"\n[[ops]]\nop = \"sync\"\n").unwrap();
        assert_eq!(w.crash_from_op, Some(1));
        assert_eq!(w.crash_ops(), 1..2);
        for bad in ["crash_from_op = 2", "crash_from_op = -1"] {
            let e = parse(&format!(
                "{bad}\n[[ops]]\nop = \"sync\"\n[[ops]]\nop = \"sync\"\n"
            ))
            .unwrap_err();
            assert_eq!((e.field.as_str(), e.line), ("crash_from_op", 1), "{e}");
            assert!(e.message.contains("expected 0 to 1"), "{e}");
        }
        let e = parse("crash_from_op = \"x\"\n[[ops]]\nop = \"sync\"\n").unwrap_err();
        assert_eq!(e.field, "crash_from_op", "{e}");
    }

    #[test]
    fn parses_a_full_workload() {
        let w = parse(GOOD).unwrap();
        assert_eq!(w.ops.len(), 9);
        assert_eq!(w.op_locations[0], Location { line: 4, col: 1 });
        assert_eq!(
            w.ops[3],
            Op::Store {
                map: "m".into(),
                offset: 64,
                data: Data::Hex {
                    hex: "deadbeef".into()
                },
                kind: StoreKind::NonTemporal
            }
        );
        assert_eq!(
            w.ops[5],
            Op::Fence {
                insn: FenceInsn::Sfence
            }
        );
        match &w.ops[7] {
            Op::Msync { len, mode, .. } => {
                assert_eq!(*len, None);
                assert_eq!(*mode, MsyncMode::Sync);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn data_forms() {
        assert_eq!(Data::Text("hi".into()).bytes(), b"hi");
        assert_eq!(
            Data::Hex {
                hex: "de ad_BE ef".into()
            }
            .bytes(),
            [0xde, 0xad, 0xbe, 0xef]
        );
        assert_eq!(Data::Fill { fill: 7, len: 3 }.bytes(), [7, 7, 7]);
        let a = Data::Seeded { seed: 1, len: 33 }.bytes();
        assert_eq!(a.len(), 33);
        assert_ne!(a, Data::Seeded { seed: 2, len: 33 }.bytes());
        assert_eq!(a, seeded_bytes(1, 33));
    }

    #[test]
    fn unknown_field_names_line_and_field() {
        let e = parse("[[ops]]\nop = \"fsync\"\nfd = \"a\"\nbogus = 1\n").unwrap_err();
        assert_eq!((e.line, e.col), (4, 1));
        assert_eq!(e.field, "ops[0].bogus");
        assert!(e.message.contains("unknown field"), "{e}");
    }

    #[test]
    fn unknown_op_is_reported() {
        let e = parse("[[ops]]\nop = \"fly\"\n").unwrap_err();
        assert_eq!((e.line, e.col, e.field.as_str()), (2, 6, "ops[0].op"));
        assert!(e.message.contains("unknown variant `fly`"), "{e}");
        assert!(e.message.contains("fsync"), "lists the expected ops: {e}");
    }

    #[test]
    fn missing_field_is_reported() {
        let e = parse("[[ops]]\nop = \"open\"\npath = \"a\"\nfd = \"x\"\n\n[[ops]]\nop = \"write\"\nfd = \"x\"\n").unwrap_err();
        assert_eq!((e.line, e.field.as_str()), (7, "ops[1].data"), "{e}");
        assert!(e.message.contains("missing field"), "{e}");
    }

    #[test]
    fn wrong_type_points_at_the_value() {
        let e = parse("[[ops]]\nop = \"ftruncate\"\nfd = \"a\"\nlen = \"big\"\n").unwrap_err();
        assert_eq!(
            (e.line, e.col, e.field.as_str()),
            (4, 7, "ops[0].len"),
            "{e}"
        );
        assert!(e.message.contains("expected u64"), "{e}");
        assert!(e.to_string().starts_with("w.toml:"), "{e}");
    }

    #[test]
    fn fd_used_before_open() {
        let e = parse("[[ops]]\nop = \"fsync\"\nfd = \"a\"\n").unwrap_err();
        assert_eq!((e.line, e.col), (1, 1));
        assert_eq!(e.field, "ops[0].fd");
        assert!(e.message.contains("no open descriptor named `a`"), "{e}");
    }

    #[test]
    fn store_bounds() {
        let base = "[[ops]]\nop=\"open\"\npath=\"a\"\nfd=\"a\"\ncreate=true\n[[ops]]\nop=\"mmap\"\nfd=\"a\"\nmap=\"m\"\nlen=4096\n";
        let e = parse(&format!(
            "{base}[[ops]]\nop=\"store\"\nmap=\"m\"\noffset=4090\ndata=\"too long\"\n"
        ))
        .unwrap_err();
        assert_eq!(e.line, 11);
        assert_eq!(e.field, "ops[2].offset");
        let e = parse(&format!(
            "{base}[[ops]]\nop=\"store\"\nmap=\"m\"\noffset=0\ndata={{fill=1,len=65}}\n"
        ))
        .unwrap_err();
        assert_eq!(e.field, "ops[2].data");
        let e = parse(&format!("{base}[[ops]]\nop=\"store\"\nmap=\"m\"\noffset=2\ndata={{fill=1,len=8}}\nkind=\"non-temporal\"\n")).unwrap_err();
        assert_eq!(e.field, "ops[2].kind");
        let e = parse(&format!(
            "{base}[[ops]]\nop=\"flush\"\nmap=\"m\"\noffset=4000\nlen=200\n"
        ))
        .unwrap_err();
        assert_eq!(e.field, "ops[2].len");
        parse(&format!(
            "{base}[[ops]]\nop=\"store\"\nmap=\"m\"\noffset=4032\ndata={{fill=1,len=64}}\n"
        ))
        .unwrap();
    }

    #[test]
    fn bad_paths() {
        for p in ["/abs", "../up", "a//b", ""] {
            let e = parse(&format!("[[ops]]\nop=\"mkdir\"\npath=\"{p}\"\n")).unwrap_err();
            assert_eq!(e.field, "ops[0].path", "{p}: {e}");
        }
    }

    #[test]
    fn bad_hex() {
        let e = parse("[[ops]]\nop=\"open\"\npath=\"a\"\nfd=\"a\"\n[[ops]]\nop=\"write\"\nfd=\"a\"\ndata={hex=\"abc\"}\n").unwrap_err();
        assert!(e.message.contains("odd number"), "{e}");
    }

    #[test]
    fn bad_data_shape() {
        let e = parse("[[ops]]\nop=\"open\"\npath=\"a\"\nfd=\"a\"\n[[ops]]\nop=\"write\"\nfd=\"a\"\ndata={len=3}\n").unwrap_err();
        assert!(e.message.contains("expected data as"), "{e}");
    }

    #[test]
    fn expect_is_typed_and_checked() {
        let w = parse("[[ops]]\nop=\"sync\"\n[expect]\nverdicts=[\"ok\",\"stale-data\"]\nok_after_op=0\n[expect.xfs]\nverdicts=[\"ok\"]\n").unwrap();
        let e = w.expect.unwrap();
        use crate::verdict::Verdict;
        assert_eq!(
            e.for_fs(FsKind::Ext4).unwrap().verdicts.unwrap(),
            [Verdict::StaleData, Verdict::Ok]
        );
        let x = e.for_fs(FsKind::Xfs).unwrap();
        assert_eq!(x.verdicts.unwrap(), [Verdict::Ok]);
        assert_eq!(x.ok_after_op, Some(0));
        // A misspelt verdict and an unknown key are errors with a position.
        let e = parse("[[ops]]\nop=\"sync\"\n[expect]\nverdicts=[\"ok\",\"stale\"]\n").unwrap_err();
        assert_eq!(e.line, 4, "{e}");
        assert!(e.field.starts_with("expect"), "{e}");
        assert!(e.message.contains("unknown variant `stale`"), "{e}");
        let e = parse("[[ops]]\nop=\"sync\"\n[expect]\nverdict=[\"ok\"]\n").unwrap_err();
        assert_eq!((e.line, e.field.as_str()), (4, "expect.verdict"), "{e}");
        let e = parse("[[ops]]\nop=\"sync\"\n[expect.xfs]\nok_after=1\n").unwrap_err();
        assert_eq!(
            (e.line, e.field.as_str()),
            (4, "expect.xfs.ok_after"),
            "{e}"
        );
    }

    #[test]
    fn hash_depends_on_ops() {
        let a = parse("[[ops]]\nop=\"sync\"\n").unwrap();
        let b = parse("description=\"x\"\n[[ops]]\nop=\"sync\"\n").unwrap();
        let c = parse("[[ops]]\nop=\"sync\"\n[[ops]]\nop=\"sync\"\n").unwrap();
        assert_eq!(a.hash(), b.hash());
        assert_ne!(a.hash(), c.hash());
    }
}
