//! File-system checkers: `e2fsck -fn` and `xfs_repair -n`, after the guest's own
//! recovery (mount + unmount), so the journal or log is already replayed (`xfs_repair
//! -n` refuses a dirty log).
//!
//! [`fsck`] runs them on the host, natively, on the scratch file the recovery left (or,
//! for an image that takes another's recovery, on its own bytes with that check's
//! stores written over them; `docs/pruning.md`): ext4 is read in place through
//! `?offset=` (which e2fsprogs 1.47 cannot use to replay a journal); XFS has no offset
//! syntax, so its device area is copied (sparsely) into a temporary file. With
//! `--fsck-in-guest` they run in the checker guest, on the unmounted `/dev/pmem0`,
//! inside the check the tracer records, so what fsck reads is in the read set
//! ([`from_guest`] turns the agent's answer into an [`FsckOutcome`]).

use crate::image::{ImageError, FSDAX_DATA_OFFSET};
use crash_models::ops::FsKind;
use serde::Serialize;
use std::collections::HashMap;
use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// What fsck said.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FsckOutcome {
    /// The command that ran.
    pub command: String,
    /// Its exit code (`None` when killed by a signal).
    pub code: Option<i32>,
    /// True when the checker found problems in the file system.
    pub problems: bool,
    /// The interesting part of its output (problem lines, trimmed).
    pub output: String,
}

/// Errors running fsck (the tool itself failing, not the file system).
#[derive(Debug, thiserror::Error)]
pub enum FsckError {
    /// The tool could not run.
    #[error("cannot run {tool}: {source} (run `pmcrash doctor`)")]
    Spawn {
        /// The tool.
        tool: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// The guest could not run fsck (e.g. an initramfs from before fsck moved into the
    /// guest).
    #[error("fsck in the checker guest: {0}")]
    Guest(String),
    /// Copying the device area failed.
    #[error("extracting the XFS device area for xfs_repair: {0}")]
    Extract(#[source] ImageError),
}

/// The last `n` lines of fsck's output that say something: not blank, and not
/// `xfs_repair`'s per-AG progress (`- agno = 3`), whose order follows its threads.
fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.trim().starts_with("- agno = "))
        .collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// `e2fsck`'s options: check even a clean file system, change nothing.
const E2FSCK_ARGS: [&str; 2] = ["-f", "-n"];

/// `xfs_repair`'s options: change nothing, the device is a file; `-P` (no prefetch)
/// and a small buffer cache (`-o bhash=256`: 2,048 buffers) only change how it reads,
/// and on these small file systems halve its time (22 ms to 11 ms a run, mostly its
/// threads' start-up).
const XFS_REPAIR_ARGS: [&str; 5] = ["-n", "-f", "-P", "-o", "bhash=256"];

/// Check the file system in the PM image at `image` (a whole NVDIMM backing file) on
/// the host. `scratch_dir` holds temporary copies.
pub fn fsck(fs: FsKind, image: &Path, scratch_dir: &Path) -> Result<FsckOutcome, FsckError> {
    fsck_logging(fs, image, scratch_dir, None)
}

/// [`fsck`], with e2fsck's reads logged to `reads_log` (see [`FsckMemo`]).
fn fsck_logging(
    fs: FsKind,
    image: &Path,
    scratch_dir: &Path,
    reads_log: Option<&Path>,
) -> Result<FsckOutcome, FsckError> {
    match fs {
        FsKind::Ext4 => {
            let target = format!("{}?offset={FSDAX_DATA_OFFSET}", image.display());
            let mut cmd = Command::new("e2fsck");
            cmd.args(E2FSCK_ARGS)
                .arg(&target)
                .env("E2FSCK_CONFIG", "/dev/null");
            if let Some(log) = reads_log {
                // e2fsprogs' test I/O manager, between e2fsck and the file: it logs
                // every read (0x1), write (0x2), block-size change (0x4) and option
                // (0x20: the offset).
                cmd.env("TEST_IO_FLAGS", "0x27").env("TEST_IO_LOGFILE", log);
            }
            // 0: clean. 1/2: errors corrected (cannot happen with -n, but would mean
            // the file system needed fixing). 4: errors left. 8 and up: e2fsck could not
            // check at all, which on an image the kernel just mounted means an unreadable
            // superblock or group descriptors: corruption too.
            run(
                "e2fsck",
                &mut cmd,
                format!(
                    "e2fsck {} '{IMAGE_NAME}?offset={FSDAX_DATA_OFFSET}'",
                    E2FSCK_ARGS.join(" ")
                ),
                image,
            )
        }
        FsKind::Xfs => {
            let dev = tempfile::Builder::new()
                .prefix("xfs-dev-")
                .tempfile_in(scratch_dir)
                .map_err(|source| {
                    FsckError::Extract(ImageError::Io {
                        what: "create a device copy in",
                        path: scratch_dir.to_path_buf(),
                        source,
                    })
                })?;
            extract_device(image, dev.as_file()).map_err(FsckError::Extract)?;
            run(
                "xfs_repair",
                Command::new("xfs_repair")
                    .args(XFS_REPAIR_ARGS)
                    .arg(dev.path()),
                format!(
                    "dd if={IMAGE_NAME} bs=2M skip=1 of=dev.img && xfs_repair {} dev.img",
                    XFS_REPAIR_ARGS.join(" ")
                ),
                dev.path(),
            )
        }
    }
}

/// The outcome of fsck run by the guest agent (`HostMsg::Fsck`): the same meaning as
/// on the host, any exit code but 0 (or none: killed) is problems.
pub fn from_guest(
    command: String,
    code: Option<i32>,
    timed_out: bool,
    output: &str,
) -> FsckOutcome {
    let mut output = tail(output, 12);
    if timed_out {
        output.push_str("\n(killed at the timeout)");
    }
    FsckOutcome {
        command: format!("{command} (in the checker guest)"),
        code,
        problems: code != Some(0),
        output,
    }
}

/// What fsck's output calls the image it checked, in place of its scratch path (which
/// differs between workers and runs, so outcomes would too).
pub const IMAGE_NAME: &str = "<image>";

/// Run a checker on `path`; any exit code but 0 means problems.
fn run(
    tool: &'static str,
    cmd: &mut Command,
    command: String,
    path: &Path,
) -> Result<FsckOutcome, FsckError> {
    let out = cmd
        .output()
        .map_err(|source| FsckError::Spawn { tool, source })?;
    let code = out.status.code();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
    .replace(&*path.to_string_lossy(), IMAGE_NAME);
    Ok(FsckOutcome {
        command,
        code,
        problems: code != Some(0),
        output: tail(&text, 12),
    })
}

/// fsck outcomes kept by what fsck read, so that an image equal to a checked one on
/// those bytes takes its outcome without running fsck (ext4 only).
///
/// e2fsck reads the device only through its I/O channel, and e2fsprogs' `test_io`
/// manager, put between the two by `TEST_IO_FLAGS`, logs every read with its block and
/// length. What `e2fsck -fn` prints and exits with is a function of those bytes (and
/// of the device's size, the same for every image of a run, and the clock, as for the
/// check itself: `docs/pruning.md`). So, by the argument that makes a check's read set
/// decide its outcome, an image equal to an earlier one on every byte that earlier
/// e2fsck read gets the same outcome: the same reads, in the same order, returning the
/// same bytes. Only clean runs are kept, and a log that cannot be read whole (a line
/// not understood, a write, no block size or offset yet) keeps nothing. `xfs_repair`
/// has no such log, so on XFS every image gets its own run.
///
/// Used only with pruning on (`--no-prune` runs fsck on every image, which is what
/// `tests/tests/prune_soundness.rs` compares against).
#[derive(Debug, Default)]
pub struct FsckMemo {
    /// Each distinct set of byte ranges (of the PM image) that some e2fsck read, with
    /// the outcomes seen, by the blake3 of the image's bytes there. Newest last.
    sets: Mutex<Vec<ReadRanges>>,
    /// Outcomes taken from the memo instead of a run.
    hits: AtomicU64,
}

#[derive(Debug)]
struct ReadRanges {
    ranges: Arc<[Range<u64>]>,
    outcomes: HashMap<blake3::Hash, FsckOutcome>,
}

/// Distinct read sets looked through per image: a bound on the memo's cost; a miss
/// only runs fsck.
const MEMO_SETS: usize = 16;

impl FsckMemo {
    /// fsck of the PM image at `image` (open as `file`): an earlier outcome when this
    /// image equals that run's image on every byte it read, else a run of fsck (whose
    /// reads, on ext4, join the memo).
    pub fn fsck(
        &self,
        fs: FsKind,
        image: &Path,
        file: &File,
        scratch_dir: &Path,
    ) -> Result<FsckOutcome, FsckError> {
        if fs != FsKind::Ext4 {
            return fsck(fs, image, scratch_dir);
        }
        let candidates: Vec<Arc<[Range<u64>]>> = {
            let sets = self.sets.lock().unwrap_or_else(|p| p.into_inner());
            sets.iter()
                .rev()
                .take(MEMO_SETS)
                .map(|s| s.ranges.clone())
                .collect()
        };
        for ranges in candidates {
            let Ok(key) = hash_ranges(file, &ranges) else {
                continue;
            };
            let sets = self.sets.lock().unwrap_or_else(|p| p.into_inner());
            let hit = sets
                .iter()
                .find(|s| Arc::ptr_eq(&s.ranges, &ranges))
                .and_then(|s| s.outcomes.get(&key));
            if let Some(o) = hit {
                self.hits.fetch_add(1, Ordering::Relaxed);
                return Ok(o.clone());
            }
        }
        let log = scratch_dir.join("e2fsck-reads.log");
        let _ = std::fs::remove_file(&log);
        let outcome = fsck_logging(fs, image, scratch_dir, Some(&log))?;
        // Only a clean run is kept: one that found problems may have opened the device
        // again (backup superblocks, without the offset), and the log does not say
        // which channel read what.
        let ranges = std::fs::read_to_string(&log)
            .ok()
            .filter(|_| outcome.code == Some(0))
            .and_then(|text| e2fsck_reads(&text));
        if let Some(ranges) = ranges {
            if let Ok(key) = hash_ranges(file, &ranges) {
                let mut sets = self.sets.lock().unwrap_or_else(|p| p.into_inner());
                let at = match sets.iter().position(|s| *s.ranges == *ranges) {
                    Some(i) => i,
                    None => {
                        sets.push(ReadRanges {
                            ranges: ranges.into(),
                            outcomes: HashMap::new(),
                        });
                        sets.len() - 1
                    }
                };
                sets[at].outcomes.insert(key, outcome.clone());
                // The set just used goes last, where lookups start.
                let s = sets.remove(at);
                sets.push(s);
            }
        }
        Ok(outcome)
    }

    /// Outcomes taken from the memo so far.
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }
}

/// The blake3 of `file`'s bytes in `ranges` (past its end: nothing).
fn hash_ranges(file: &File, ranges: &[Range<u64>]) -> std::io::Result<blake3::Hash> {
    let len = file.metadata()?.len();
    let mut h = blake3::Hasher::new();
    h.update(&len.to_le_bytes());
    let mut buf = Vec::new();
    for r in ranges {
        let end = r.end.min(len);
        if r.start >= end {
            continue;
        }
        buf.resize((end - r.start) as usize, 0);
        file.read_exact_at(&mut buf, r.start)?;
        h.update(&r.start.to_le_bytes());
        h.update(&buf);
    }
    Ok(h.finalize())
}

/// The PM byte ranges e2fsck read, from `test_io`'s log (`TEST_IO_FLAGS=0x27`), sorted
/// and merged; `None` when any line is not understood, e2fsck wrote, a read came before
/// the block size and the device's offset were set, or the offset was set other than
/// once, to [`FSDAX_DATA_OFFSET`].
fn e2fsck_reads(log: &str) -> Option<Vec<Range<u64>>> {
    let mut block_size: Option<u64> = None;
    let mut offset: Option<u64> = None;
    let mut ranges = Vec::new();
    for line in log.lines() {
        let rest = line.strip_prefix("Test_io: ")?;
        let (call, args) = rest.split_once('(')?;
        let (args, _) = args.split_once(')')?;
        if call == "set_option" {
            let (name, value) = args.split_once(',')?;
            match (name.trim(), value.trim().parse::<u64>().ok()) {
                ("offset", Some(FSDAX_DATA_OFFSET)) if offset.is_none() => {
                    offset = Some(FSDAX_DATA_OFFSET)
                }
                _ => return None,
            }
            continue;
        }
        let nums: Vec<i64> = args
            .split(',')
            .map(|a| a.trim().parse::<i64>().ok())
            .collect::<Option<_>>()?;
        match (call, nums.as_slice()) {
            ("set_blksize", &[n]) if n > 0 => block_size = Some(n as u64),
            ("read_blk" | "read_blk64", &[block, count]) if block >= 0 => {
                let (bs, offset) = (block_size?, offset?);
                // A negative count is a length in bytes (e2fsprogs' convention).
                let len = if count < 0 {
                    count.unsigned_abs()
                } else {
                    count as u64 * bs
                };
                let start = (block as u64).checked_mul(bs)?.checked_add(offset)?;
                ranges.push(start..start.checked_add(len)?);
            }
            _ => return None,
        }
    }
    ranges.sort_by_key(|r| r.start);
    let mut merged: Vec<Range<u64>> = Vec::new();
    for r in ranges {
        match merged.last_mut() {
            Some(m) if r.start <= m.end => m.end = m.end.max(r.end),
            _ => merged.push(r),
        }
    }
    (!merged.is_empty()).then_some(merged)
}

/// Copy the block device area (from [`FSDAX_DATA_OFFSET`] on) of a PM image into
/// `dst`, keeping holes.
pub fn extract_device(image: &Path, dst: &std::fs::File) -> Result<(), ImageError> {
    let io = |what| {
        let path = image.to_path_buf();
        move |source| ImageError::Io { what, path, source }
    };
    let len = std::fs::metadata(image).map_err(io("stat"))?.len();
    dst.set_len(len.saturating_sub(FSDAX_DATA_OFFSET))
        .map_err(io("size a device copy of"))?;
    crate::image::copy_sparse(image, FSDAX_DATA_OFFSET, dst, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e2fsck_reads_come_from_the_test_io_log() {
        let log = "Test_io: set_option(offset, 2097152) returned OK\n\
                   Test_io: set_blksize(1024) returned OK\n\
                   Test_io: read_blk(1, -1024) returned OK\n\
                   Test_io: set_blksize(4096) returned OK\n\
                   Test_io: read_blk(1, 1) returned OK\n\
                   Test_io: read_blk64(2, 2) returned OK\n\
                   Test_io: read_blk64(10, 1) returned Attempt to read block from filesystem resulted in short read\n";
        let o = FSDAX_DATA_OFFSET;
        assert_eq!(
            e2fsck_reads(log),
            Some(vec![
                o + 1024..o + 2048,
                o + 4096..o + 4 * 4096,
                o + 40960..o + 45056
            ])
        );
        // Nothing kept when the log cannot be read whole, or positions are unsure.
        assert_eq!(e2fsck_reads("Test_io: read_blk(1, 1) returned OK"), None);
        let no_offset =
            "Test_io: set_blksize(4096) returned OK\nTest_io: read_blk(1, 1) returned OK";
        assert_eq!(e2fsck_reads(no_offset), None);
        let twice = format!("Test_io: set_option(offset, 2097152) returned OK\n{log}");
        assert_eq!(e2fsck_reads(&twice), None);
        let other = log.replace("offset, 2097152", "offset, 0");
        assert_eq!(e2fsck_reads(&other), None);
        assert_eq!(
            e2fsck_reads(&format!("{log}Test_io: write_blk(1, 1) returned OK")),
            None
        );
        assert_eq!(e2fsck_reads(&format!("{log}something else")), None);
        assert_eq!(e2fsck_reads(""), None);
    }

    #[test]
    fn output_keeps_what_fsck_said_not_how_its_threads_ran() {
        let a = "Phase 4 - check for duplicate blocks...\n        - agno = 1\n        - agno = 0\n\nPhase 7 - verify link counts...\n";
        let b = a.replace(
            "agno = 1\n        - agno = 0",
            "agno = 0\n        - agno = 1",
        );
        assert_eq!(tail(a, 12), tail(&b, 12));
        assert_eq!(
            tail(a, 12),
            "Phase 4 - check for duplicate blocks...\nPhase 7 - verify link counts..."
        );
        assert_eq!(tail(a, 1), "Phase 7 - verify link counts...");
    }
}
