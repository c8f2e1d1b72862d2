//! fsck inside the guest: `e2fsck -fn` or `xfs_repair -n` on the unmounted PM device,
//! so what fsck reads is part of the check the tracer records (see `docs/pruning.md`).
//!
//! The agent is PID 1 and there is no shell: the checker is spawned directly, its
//! output goes to a file on the tmpfs (no pipe that a chatty checker could fill), it
//! is reaped here, and killed at the timeout.

use crash_models::ops::FsKind;
use crash_models::protocol::AgentMsg;
use std::process::Command;
use std::time::Duration;

/// Where `pmcrash setup` puts the checkers in the initramfs.
pub const E2FSCK: &str = "/sbin/e2fsck";
/// See [`E2FSCK`].
pub const XFS_REPAIR: &str = "/usr/sbin/xfs_repair";
/// Output kept, from the end.
const MAX_OUTPUT: usize = 64 << 10;

/// The program and arguments that check `dev` read-only.
pub fn command(fs: FsKind, dev: &str) -> (&'static str, Vec<String>) {
    match fs {
        FsKind::Ext4 => (E2FSCK, vec!["-f".into(), "-n".into(), dev.into()]),
        // `-P`: no prefetch threads. Which blocks xfs_repair looks at must not depend on
        // how its threads interleave: read-set pruning takes a check to be a function of
        // the bytes it loads (docs/pruning.md, "Copies are moves").
        FsKind::Xfs => (XFS_REPAIR, vec!["-n".into(), "-P".into(), dev.into()]),
    }
}

/// Run the checker of `fs` on `dev` and report what it said.
pub fn run(fs: FsKind, dev: &str, timeout: Duration) -> AgentMsg {
    let (prog, args) = command(fs, dev);
    let command = std::iter::once(prog.to_owned())
        .chain(args.iter().cloned())
        .collect::<Vec<_>>()
        .join(" ");
    let mut cmd = Command::new(prog);
    cmd.args(&args)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        // No configuration file: the same behaviour on every machine.
        .env("E2FSCK_CONFIG", "/dev/null")
        .env("TZ", "UTC");
    let ended = match crate::program::run_bounded(&mut cmd, "fsck", false, timeout, MAX_OUTPUT) {
        Ok(e) => e,
        Err(e) => {
            return AgentMsg::Error {
                message: format!(
                    "fsck: {e} (is the initramfs from an older `pmcrash setup`? run it again)"
                ),
            }
        }
    };
    AgentMsg::Fsck {
        command,
        code: ended.status.and_then(|s| s.code()),
        timed_out: ended.timed_out,
        output: ended.stdout,
    }
}
