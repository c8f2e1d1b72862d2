//! The harness/agent protocol: line-delimited JSON over the guest's agent serial port.
//!
//! The harness sends a [`HostMsg`] per line and the agent answers with one or more
//! [`AgentMsg`] lines, the last of which is a terminal one ([`AgentMsg::is_terminal`]).
//! Every line is at most [`MAX_LINE_BYTES`]; a longer line is a protocol error on
//! either side, so a confused peer cannot make the other allocate without bound.
//!
//! The agent also talks to the tracer, not over this channel but through a magic
//! `cpuid` (see [`marker`]), so markers land in the trace in execution order.

use crate::ops::{FsKind, Op};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::BTreeMap;

/// Bumped whenever a message changes shape; the agent reports its version in
/// [`AgentMsg::Ready`] and the harness refuses a mismatch (a stale initramfs).
pub const PROTOCOL_VERSION: u32 = 4;

/// Longest line either side sends or accepts, newline excluded.
pub const MAX_LINE_BYTES: usize = 4 << 20;

/// The line the agent prints on the console when it starts, before the channel is up;
/// boot-time measurements and panic diagnostics key on it.
pub const AGENT_BANNER: &str = "pmcrash-agent: up";

/// A request from the harness.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum HostMsg {
    /// Are you there? Answered with [`AgentMsg::Pong`].
    Ping,
    /// Convert the label-less raw NVDIMM namespace to fsdax (writes the pfn info block
    /// at 4 KiB; the usable device then starts at 2 MiB). Done once per template.
    ConvertFsdax,
    /// Forget everything cached about `/dev/pmem0` (drop caches, `BLKFLSBUF`): the host
    /// has rewritten the backing file underneath.
    Refresh,
    /// Mount `/dev/pmem0` on the work directory with `-o dax` and prove DAX is on.
    Mount {
        /// The file system.
        fs: FsKind,
        /// Extra mount options, comma-joined after `dax`.
        #[serde(default)]
        options: Vec<String>,
    },
    /// Run ops on the mounted file system, reporting each with [`AgentMsg::OpDone`].
    Run {
        /// The ops (already validated by the harness).
        ops: Vec<Op>,
        /// Emit tracer markers around each op.
        #[serde(default)]
        markers: bool,
    },
    /// Walk the mounted file system and report it as [`AgentMsg::State`].
    Dump,
    /// Unmount the work directory.
    Unmount,
    /// Power the guest off (the agent syncs nothing: the harness decides what is
    /// durable).
    Poweroff,
    /// A check of one crash image begins: the agent executes the
    /// [`marker::check::BEGIN`] marker with `id`, and a tracer in read-recording mode
    /// starts recording the PM lines the guest loads. Answered with [`AgentMsg::Done`].
    CheckBegin {
        /// The check's id (echoed in the read-set file).
        id: u64,
    },
    /// The check ends: the agent executes [`marker::check::END`] with `id`; the tracer
    /// writes the check's read set before the marker instruction completes, so the file
    /// is whole when [`AgentMsg::Done`] arrives.
    CheckEnd {
        /// The id given to [`HostMsg::CheckBegin`].
        id: u64,
    },
    /// Check the unmounted `/dev/pmem0` read-only in the guest (`e2fsck -fn`,
    /// `xfs_repair -n`); answered with [`AgentMsg::Fsck`].
    Fsck {
        /// The file system.
        fs: FsKind,
        /// Longest the checker may run before it is killed, in milliseconds.
        timeout_ms: u64,
    },
    /// Write the kernel's text symbols (`/proc/kallsyms` lines, code only, modules
    /// included) to the start of the PM block device, overwriting the (scratch) image,
    /// and answer [`AgentMsg::Kallsyms`]: the harness names the function behind each
    /// traced program counter with them. (Five megabytes take a minute on the serial
    /// port under TCG; the host reads the image in milliseconds.)
    Kallsyms,
    /// For the harness's own tests: make the kernel panic.
    TestPanic,
    /// For the harness's own tests: stop answering, as a hung guest would.
    TestHang,
}

impl HostMsg {
    /// The message's `type` as it appears on the wire (`"run"`, `"mount"`, ...), for
    /// errors that say what the harness was doing.
    pub fn name(&self) -> &'static str {
        match self {
            HostMsg::Ping => "ping",
            HostMsg::ConvertFsdax => "convert-fsdax",
            HostMsg::Refresh => "refresh",
            HostMsg::Mount { .. } => "mount",
            HostMsg::Run { .. } => "run",
            HostMsg::Dump => "dump",
            HostMsg::Unmount => "unmount",
            HostMsg::Poweroff => "poweroff",
            HostMsg::CheckBegin { .. } => "check-begin",
            HostMsg::CheckEnd { .. } => "check-end",
            HostMsg::Fsck { .. } => "fsck",
            HostMsg::Kallsyms => "kallsyms",
            HostMsg::TestPanic => "test-panic",
            HostMsg::TestHang => "test-hang",
        }
    }
}

/// What an op returned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpResult {
    /// The op's index in the workload.
    pub index: usize,
    /// The return value (bytes, a descriptor, 0), or -1 on error.
    pub ret: i64,
    /// errno when the call failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errno: Option<i32>,
    /// Op-specific facts the oracle and the tracer checks need.
    #[serde(default, skip_serializing_if = "OpDetail::is_none")]
    pub detail: OpDetail,
    /// Time the op took in the guest, in microseconds (the guest's clock).
    pub micros: u64,
}

impl OpResult {
    /// True when the op succeeded.
    pub fn ok(&self) -> bool {
        self.errno.is_none()
    }
}

/// Op-specific results.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum OpDetail {
    /// Nothing beyond the return value.
    #[default]
    None,
    /// `open`: whether the opened file is served by DAX (`STATX_ATTR_DAX`).
    Opened {
        /// The descriptor number in the guest.
        fd: i32,
        /// `STATX_ATTR_DAX` was set.
        dax: bool,
    },
    /// `mmap`: where the mapping lives in the agent's address space.
    Mapped {
        /// Virtual address of the mapping.
        addr: u64,
        /// Length.
        len: u64,
    },
    /// `store`/`flush`: the user virtual addresses touched, so the trace can be
    /// checked against what the agent really did.
    Addresses {
        /// First byte.
        addr: u64,
        /// Length of the range.
        len: u64,
    },
    /// `read`: what came back.
    Read {
        /// Bytes read.
        len: u64,
        /// blake3 of those bytes, hex.
        blake3: String,
    },
    /// `fmetadatasync` and friends: the file's extents after the call (FIEMAP).
    Extents {
        /// Extents in file order.
        extents: Vec<Extent>,
    },
    /// `exec`: how the program ended and what it printed.
    Exec {
        /// Its exit code; `None` when a signal ended it (or the timeout did).
        code: Option<i32>,
        /// It ran past its timeout and was killed.
        timed_out: bool,
        /// Its standard output (at most [`MAX_PROGRAM_OUTPUT`] bytes, the end kept).
        stdout: String,
        /// Its standard error (bounded the same way).
        stderr: String,
    },
}

/// The most of a program's standard output (and, separately, error) that the agent
/// reports: the end is kept, where the reason for a failure usually is.
pub const MAX_PROGRAM_OUTPUT: usize = 16 << 10;

impl OpDetail {
    /// True for [`OpDetail::None`].
    pub fn is_none(&self) -> bool {
        matches!(self, OpDetail::None)
    }
}

/// One extent of a file, as FIEMAP reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extent {
    /// Offset in the file.
    pub logical: u64,
    /// Offset on the block device (`/dev/pmem0`), i.e. from the start of the fsdax
    /// data area, not of the NVDIMM backing file.
    pub physical: u64,
    /// Length in bytes.
    pub len: u64,
    /// FIEMAP flags (unwritten, ...).
    pub flags: u32,
}

/// What kind of file system object an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EntryKind {
    /// Regular file.
    File,
    /// Directory.
    Dir,
    /// Symbolic link.
    Symlink,
    /// A FIFO (named pipe, `mkfifo`).
    Fifo,
    /// Anything else (device, socket), or an object that could not be examined.
    Other,
}

/// Size of the blocks [`FsEntry::blocks`] hashes.
pub const DUMP_BLOCK: u64 = 4096;

/// The [`FsEntry::blocks`] hash of one block's bytes (the last block of a file only up
/// to the file's size), or `None` when every byte is zero: such a block is not listed.
pub fn block_hash(bytes: &[u8]) -> Option<String> {
    if bytes.iter().all(|b| *b == 0) {
        None
    } else {
        Some(blake3::hash(bytes).to_hex().to_string())
    }
}

/// The [`FsEntry::blake3`] of a regular file, from its size and sparse block hashes:
/// blake3 over the size (8 bytes, little-endian), then for each listed block in index
/// order its index (8 bytes, little-endian) and its hash's hex digits. Equal for two
/// files exactly when their sizes and bytes are equal (up to blake3 collisions),
/// whatever the holes, and computed without reading one.
pub fn content_hash(size: u64, blocks: &BTreeMap<u64, String>) -> String {
    let mut h = blake3::Hasher::new();
    h.update(&size.to_le_bytes());
    for (i, b) in blocks {
        h.update(&i.to_le_bytes());
        h.update(b.as_bytes());
    }
    h.finalize().to_hex().to_string()
}

/// The sparse block hashes of `bytes` (a whole file), as [`FsEntry::blocks`] holds
/// them.
pub fn block_hashes(bytes: &[u8]) -> BTreeMap<u64, String> {
    bytes
        .chunks(DUMP_BLOCK as usize)
        .enumerate()
        .filter_map(|(i, c)| Some((i as u64, block_hash(c)?)))
        .collect()
}

/// One object found by [`HostMsg::Dump`].
///
/// A file's contents are sparse: [`FsEntry::blocks`] lists only the 4 KiB blocks that
/// hold a non-zero byte, so a 1 TiB file with one written block dumps as one entry of
/// one block (the agent skips holes with `SEEK_DATA`/`SEEK_HOLE` and reads only data
/// extents).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct FsEntry {
    /// Path relative to the mount point.
    pub path: String,
    /// The object's kind.
    pub kind: EntryKind,
    /// Size in bytes (files and symlinks; 0 for directories and FIFOs).
    pub size: u64,
    /// Permission bits.
    pub mode: u32,
    /// Link count.
    pub nlink: u64,
    /// Inode number (tells hard links apart).
    pub ino: u64,
    /// Files: [`content_hash`] of (`size`, `blocks`), a hash of the whole contents
    /// that never hashes the holes. Symlinks: blake3 of the target's bytes. Hex; empty
    /// for directories, FIFOs and others.
    #[serde(default)]
    pub blake3: String,
    /// Files: block index (in [`DUMP_BLOCK`] blocks from offset 0) to the blake3
    /// (hex) of that block's bytes, the last block only up to `size`
    /// ([`block_hash`]). A block that is not listed reads as all zeros: a hole, or
    /// data that is all zero. Lets the oracle find which block holds foreign bytes
    /// without shipping the data; [`FsEntry::block`] reads it with the zeros filled in.
    ///
    /// On the wire a JSON object whose keys are the indices in decimal.
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        with = "decimal_keys"
    )]
    pub blocks: BTreeMap<u64, String>,
    /// Every `user.*` extended attribute: name to value in hex (lower case).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub xattrs: BTreeMap<String, String>,
    /// Symlink target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// errno when the object could not be read (a finding in itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<i32>,
}

impl FsEntry {
    /// An entry of `kind` at `path` with nothing else known yet (zero size, no
    /// contents, no xattrs), for the agent's walk and for hand-built states.
    pub fn new(path: impl Into<String>, kind: EntryKind) -> FsEntry {
        FsEntry {
            path: path.into(),
            kind,
            size: 0,
            mode: 0,
            nlink: 0,
            ino: 0,
            blake3: String::new(),
            blocks: BTreeMap::new(),
            xattrs: BTreeMap::new(),
            target: None,
            error: None,
        }
    }

    /// A regular file of `data` at `path` (blocks and hash as the agent dumps them):
    /// for tests and models that hold a file's bytes.
    pub fn file(path: impl Into<String>, data: &[u8]) -> FsEntry {
        let mut e = FsEntry::new(path, EntryKind::File);
        e.size = data.len() as u64;
        e.nlink = 1;
        e.mode = 0o644;
        e.blocks = block_hashes(data);
        e.blake3 = content_hash(e.size, &e.blocks);
        e
    }

    /// The hash of block `index` of a file: the listed hash, or the hash of the zeros
    /// it reads as when it is not listed (a hole); `None` past the end of the file.
    pub fn block(&self, index: u64) -> Option<Cow<'_, str>> {
        let start = index.checked_mul(DUMP_BLOCK)?;
        if start >= self.size {
            return None;
        }
        Some(match self.blocks.get(&index) {
            Some(h) => Cow::Borrowed(h.as_str()),
            None => {
                let len = (self.size - start).min(DUMP_BLOCK) as usize;
                Cow::Owned(blake3::hash(&ZEROS[..len]).to_hex().to_string())
            }
        })
    }
}

/// `BTreeMap<u64, String>` as a JSON object with decimal string keys, read back through
/// string keys: serde_json cannot parse integer keys inside an internally tagged enum
/// such as [`AgentMsg`], which buffers the map first.
mod decimal_keys {
    use serde::de::Error;
    use serde::{Deserialize, Deserializer, Serializer};
    use std::collections::BTreeMap;

    pub fn serialize<S: Serializer>(map: &BTreeMap<u64, String>, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(map.iter().map(|(k, v)| (k.to_string(), v)))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<u64, String>, D::Error> {
        BTreeMap::<String, String>::deserialize(d)?
            .into_iter()
            .map(|(k, v)| {
                k.parse::<u64>()
                    .map(|k| (k, v))
                    .map_err(|_| D::Error::custom(format!("block index `{k}` is not a u64")))
            })
            .collect()
    }
}

/// One block of zeros, for the hash of a block that is not listed.
pub static ZEROS: [u8; DUMP_BLOCK as usize] = [0; DUMP_BLOCK as usize];

/// A message from the agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum AgentMsg {
    /// The agent is up and listening (sent once after boot, and again after a restore
    /// when the harness pings).
    Ready {
        /// [`PROTOCOL_VERSION`] the agent was built with.
        version: u32,
        /// `uname -r` of the guest kernel.
        kernel: String,
        /// Modules loaded at boot.
        modules: Vec<String>,
        /// Milliseconds from kernel start to agent ready (guest clock).
        boot_ms: u64,
    },
    /// Answer to [`HostMsg::Ping`].
    Pong,
    /// A request succeeded and has nothing more to say.
    Done,
    /// The file system is mounted.
    Mounted {
        /// `STATX_ATTR_DAX` was seen on a probe file.
        dax: bool,
        /// Milliseconds the mount took.
        millis: u64,
    },
    /// One op of a [`HostMsg::Run`] finished (sent as each op ends).
    OpDone(OpResult),
    /// Every op of a [`HostMsg::Run`] has been reported.
    RunDone,
    /// The result of [`HostMsg::Dump`], sorted by path.
    State {
        /// Every object under the mount point.
        entries: Vec<FsEntry>,
    },
    /// The result of [`HostMsg::Fsck`].
    Fsck {
        /// The command line that ran.
        command: String,
        /// Its exit code; `None` when it was killed (by a signal, or at the timeout).
        code: Option<i32>,
        /// It ran past the timeout and was killed.
        timed_out: bool,
        /// Its standard output and error, interleaved (at most 64 KiB, the end kept).
        output: String,
    },
    /// A request failed; `message` says why and what to do.
    Error {
        /// What went wrong.
        message: String,
    },
    /// [`HostMsg::Kallsyms`] is done: the lines are the first `bytes` bytes of the PM
    /// block device.
    Kallsyms {
        /// Bytes written.
        bytes: u64,
    },
    /// Informational text (shown with `--verbose`).
    Log {
        /// The text.
        message: String,
    },
}

impl AgentMsg {
    /// True when this message ends the answer to a request.
    pub fn is_terminal(&self) -> bool {
        !matches!(self, AgentMsg::OpDone(_) | AgentMsg::Log { .. })
    }
}

/// The magic `cpuid` the agent executes so the tracer can mark op boundaries.
///
/// The agent sets `eax` = [`marker::LEAF`], `ecx` = a [`marker::Kind`] value,
/// `edx` = the op index, `rsi` and `rdi` = two op-specific values (for a store: the
/// user virtual address and length). The tracer reads the registers when the
/// instruction executes; the guest just sees an unknown leaf and zeros.
pub mod marker {
    /// The cpuid leaf reserved for markers (outside Intel's and the hypervisor ranges);
    /// defined with programs' markers in `pmcrash-marker`.
    pub use pmcrash_marker::{name_hash, LEAF};

    /// What a marker says.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
    #[serde(rename_all = "kebab-case")]
    #[repr(u32)]
    pub enum Kind {
        /// An op begins.
        OpBegin = 1,
        /// An op ended.
        OpEnd = 2,
        /// A run of ops begins (`edx` = number of ops).
        RunBegin = 3,
        /// A run of ops ended.
        RunEnd = 4,
        /// A user program's own marker (`pmcrash-marker`): `edx` = [`name_hash`] of
        /// its name, `rsi` = a value of the program's choosing.
        Program = pmcrash_marker::PROGRAM,
    }

    /// Markers of a checker guest, bracketing the check of one crash image (`rsi` = the
    /// check id). They are not [`Kind`]s: traces never hold them; a tracer in
    /// read-recording mode acts on them.
    pub mod check {
        /// The check begins: record PM loads from here.
        pub const BEGIN: u32 = 0x100;
        /// The check ends: write the read set now.
        pub const END: u32 = 0x101;
    }

    impl Kind {
        /// Decode the `ecx` value.
        pub fn from_u32(v: u32) -> Option<Kind> {
            Some(match v {
                1 => Kind::OpBegin,
                2 => Kind::OpEnd,
                3 => Kind::RunBegin,
                4 => Kind::RunEnd,
                5 => Kind::Program,
                _ => return None,
            })
        }
    }
}

/// Errors reading a protocol line.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// The line is longer than [`MAX_LINE_BYTES`].
    #[error("protocol line of {0} bytes exceeds the {MAX_LINE_BYTES}-byte limit")]
    TooLong(usize),
    /// The line is not a message of the expected type.
    #[error("malformed protocol line ({error}): {line}")]
    Malformed {
        /// The serde error.
        error: String,
        /// The start of the line.
        line: String,
    },
}

/// Encode a message as one line (with the trailing newline).
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    let mut v = serde_json::to_vec(msg).expect("protocol messages serialise");
    v.push(b'\n');
    v
}

/// Decode one line (without its newline).
pub fn decode<'a, T: Deserialize<'a>>(line: &'a [u8]) -> Result<T, ProtocolError> {
    if line.len() > MAX_LINE_BYTES {
        return Err(ProtocolError::TooLong(line.len()));
    }
    serde_json::from_slice(line).map_err(|e| ProtocolError::Malformed {
        error: e.to_string(),
        line: String::from_utf8_lossy(&line[..line.len().min(200)]).into_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::{Data, StoreKind};

    #[test]
    fn roundtrip() {
        let msgs = vec![
            HostMsg::Mount {
                fs: FsKind::Xfs,
                options: vec![],
            },
            HostMsg::Run {
                ops: vec![Op::Store {
                    map: "m".into(),
                    offset: 0,
                    data: Data::Text("x".into()),
                    kind: StoreKind::Cached,
                }],
                markers: true,
            },
        ];
        for m in msgs {
            let line = encode(&m);
            assert_eq!(*line.last().unwrap(), b'\n');
            let back: HostMsg = decode(&line[..line.len() - 1]).unwrap();
            assert_eq!(back, m);
            let wire: serde_json::Value = serde_json::from_slice(&line).unwrap();
            assert_eq!(wire["type"], m.name());
        }
        let r = AgentMsg::OpDone(OpResult {
            index: 2,
            ret: -1,
            errno: Some(28),
            detail: OpDetail::Mapped { addr: 1, len: 2 },
            micros: 5,
        });
        let line = encode(&r);
        let back: AgentMsg = decode(&line[..line.len() - 1]).unwrap();
        assert_eq!(back, r);
        assert!(!back.is_terminal());
    }

    #[test]
    fn rejects_garbage_and_long_lines() {
        assert!(matches!(
            decode::<AgentMsg>(b"{nope"),
            Err(ProtocolError::Malformed { .. })
        ));
        let long = vec![b' '; MAX_LINE_BYTES + 1];
        assert!(matches!(
            decode::<AgentMsg>(&long),
            Err(ProtocolError::TooLong(_))
        ));
    }

    #[test]
    fn sparse_blocks_read_as_zeros_and_hash_the_whole_contents() {
        let mut data = vec![0u8; 3 * 4096 + 100];
        data[4096 + 7] = 1;
        let e = FsEntry::file("f", &data);
        assert_eq!(e.blocks.keys().copied().collect::<Vec<_>>(), [1]);
        let zeros = |n: usize| blake3::hash(&vec![0u8; n]).to_hex().to_string();
        assert_eq!(e.block(0).as_deref(), Some(zeros(4096).as_str()));
        assert_eq!(
            e.block(1).as_deref(),
            Some(blake3::hash(&data[4096..8192]).to_hex().as_str())
        );
        assert_eq!(e.block(3).as_deref(), Some(zeros(100).as_str()));
        assert_eq!(e.block(4), None);
        assert_eq!(e.block(u64::MAX), None);
        // The hash covers the size and every byte, holes included.
        assert_eq!(e.blake3, content_hash(data.len() as u64, &e.blocks));
        let longer = FsEntry::file("f", &[data.as_slice(), &[0]].concat());
        assert_ne!(longer.blake3, e.blake3);
        let mut other = data.clone();
        other[3 * 4096] = 9;
        assert_ne!(FsEntry::file("f", &other).blake3, e.blake3);
        assert!(FsEntry::file("f", &[0; 5]).blocks.is_empty());
        // Round trip on the wire, with xattrs.
        let mut e = e;
        e.xattrs.insert("user.a".into(), "00ff".into());
        let line = encode(&AgentMsg::State {
            entries: vec![e.clone()],
        });
        let back: AgentMsg = decode(&line[..line.len() - 1]).unwrap();
        assert_eq!(back, AgentMsg::State { entries: vec![e] });
    }
}
