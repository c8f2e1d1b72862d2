//! fsck inside the guest: `e2fsck -fn` or `xfs_repair -n` on the unmounted PM device,
//! so what fsck reads is part of the check the tracer records (see `docs/pruning.md`).
//!
//! The agent is PID 1 and there is no shell: the checker is spawned directly, its
//! output goes to a file on the tmpfs (no pipe that a chatty checker could fill), it
//! is reaped here, and killed at the timeout.

use crash_models::ops::FsKind;
use crash_models::protocol::AgentMsg;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Where `pmcrash setup` puts the checkers in the initramfs.
pub const E2FSCK: &str = "/sbin/e2fsck";
/// See [`E2FSCK`].
pub const XFS_REPAIR: &str = "/usr/sbin/xfs_repair";
/// Output kept, from the end.
const MAX_OUTPUT: usize = 64 << 10;
/// Where the output is collected.
const OUTPUT: &str = "/tmp/fsck.out";

/// The program and arguments that check `dev` read-only.
pub fn command(fs: FsKind, dev: &str) -> (&'static str, Vec<String>) {
    match fs {
        FsKind::Ext4 => (E2FSCK, vec!["-f".into(), "-n".into(), dev.into()]),
        FsKind::Xfs => (XFS_REPAIR, vec!["-n".into(), dev.into()]),
    }
}

/// Run the checker of `fs` on `dev` and report what it said.
pub fn run(fs: FsKind, dev: &str, timeout: Duration) -> AgentMsg {
    let (prog, args) = command(fs, dev);
    let command = std::iter::once(prog.to_owned())
        .chain(args.iter().cloned())
        .collect::<Vec<_>>()
        .join(" ");
    let fail = |what: &str, e: std::io::Error| AgentMsg::Error {
        message: format!(
            "fsck: {what}: {e} (is the initramfs from an older `pmcrash setup`? run it again)"
        ),
    };
    let out = match std::fs::File::create(OUTPUT) {
        Ok(f) => f,
        Err(e) => return fail(&format!("create {OUTPUT}"), e),
    };
    let err = match out.try_clone() {
        Ok(f) => f,
        Err(e) => return fail("dup the output file", e),
    };
    let mut child = match Command::new(prog)
        .args(&args)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        // No configuration file: the same behaviour on every machine.
        .env("E2FSCK_CONFIG", "/dev/null")
        .env("TZ", "UTC")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => return fail(&format!("spawn {prog}"), e),
    };
    let until = Instant::now() + timeout;
    let mut timed_out = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) if Instant::now() >= until => {
                timed_out = true;
                let _ = child.kill();
                break child.wait().ok();
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(1)),
            Err(e) => return fail(&format!("wait for {prog}"), e),
        }
    };
    let bytes = std::fs::read(OUTPUT).unwrap_or_default();
    let _ = std::fs::remove_file(OUTPUT);
    let tail = &bytes[bytes.len().saturating_sub(MAX_OUTPUT)..];
    AgentMsg::Fsck {
        command,
        code: status.and_then(|s| s.code()),
        timed_out,
        output: String::from_utf8_lossy(tail).into_owned(),
    }
}
