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
use std::path::Path;
use std::process::Command;

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

/// Check the file system in the PM image at `image` (a whole NVDIMM backing file) on
/// the host. `scratch_dir` holds temporary copies.
pub fn fsck(fs: FsKind, image: &Path, scratch_dir: &Path) -> Result<FsckOutcome, FsckError> {
    match fs {
        FsKind::Ext4 => {
            let target = format!("{}?offset={FSDAX_DATA_OFFSET}", image.display());
            // 0: clean. 1/2: errors corrected (cannot happen with -n, but would mean
            // the file system needed fixing). 4: errors left. 8 and up: e2fsck could not
            // check at all, which on an image the kernel just mounted means an unreadable
            // superblock or group descriptors: corruption too.
            run(
                "e2fsck",
                Command::new("e2fsck")
                    .args(["-f", "-n"])
                    .arg(&target)
                    .env("E2FSCK_CONFIG", "/dev/null"),
                format!("e2fsck -fn '{target}'"),
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
                    .args(["-n", "-f"])
                    .arg(dev.path()),
                format!(
                    "dd if={} bs=2M skip=1 of=dev.img && xfs_repair -n -f dev.img",
                    image.display()
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
