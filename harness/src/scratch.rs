//! Scratch directories in the system's temporary directory, and cleaning up after runs
//! that could not clean up themselves.
//!
//! A run keeps its traces and images in `pmcrash-run-*` and each checker guest its PM
//! copy in `pmcrash-check-*` (tens of MB each); a saved VM state is booted in the
//! cache's `states/pmcrash-boot-*`. They are removed on drop, but a run
//! killed with `kill -9` (or by the OOM killer) leaves them behind. So each directory
//! holds an [`OWNER_FILE`] naming the process that made it (PID and start time, which
//! tells a live owner from a later process that got the same PID), and making a new one
//! first removes those whose owner is gone. A directory of a live process is never
//! touched, whoever that process is (a test binary using the library counts too).

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};
use tempfile::TempDir;

/// Prefix of a pipeline's run directory.
pub const RUN_PREFIX: &str = "pmcrash-run-";
/// Prefix of a checker worker's scratch directory.
pub const CHECK_PREFIX: &str = "pmcrash-check-";
/// Prefix of the directory a saved VM state is booted in (in the cache's `states/`).
pub const BOOT_PREFIX: &str = "pmcrash-boot-";
/// The prefixes [`sweep`] cleans.
pub const PREFIXES: [&str; 3] = [RUN_PREFIX, CHECK_PREFIX, BOOT_PREFIX];
/// The file in each scratch directory that names its owner: `PID START_TIME\n`.
pub const OWNER_FILE: &str = "owner";
/// A directory without an owner file (made by an older pmcrash, or caught between
/// creation and writing the file) counts as abandoned only when older than this.
pub const UNOWNED_GRACE: Duration = Duration::from_secs(24 * 3600);

/// Make a scratch directory `PREFIX*` in the temporary directory, owned by this
/// process, after removing abandoned ones ([`sweep`], best effort).
pub fn run_dir(prefix: &str) -> io::Result<TempDir> {
    run_dir_in(&std::env::temp_dir(), prefix)
}

/// [`run_dir`] in `parent` instead of the temporary directory.
pub fn run_dir_in(parent: &Path, prefix: &str) -> io::Result<TempDir> {
    let _ = sweep(parent);
    let dir = tempfile::Builder::new().prefix(prefix).tempdir_in(parent)?;
    std::fs::write(dir.path().join(OWNER_FILE), owner_line(std::process::id()))?;
    Ok(dir)
}

/// Remove every [`PREFIXES`] directory in `tmp` whose owner is gone; returns the
/// directories removed.
pub fn sweep(tmp: &Path) -> io::Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    for e in std::fs::read_dir(tmp)?.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if !PREFIXES.iter().any(|p| name.starts_with(p)) {
            continue;
        }
        let path = e.path();
        // Only real directories (not symlinks planted by someone else).
        if !e.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        if abandoned(&path) && std::fs::remove_dir_all(&path).is_ok() {
            removed.push(path);
        }
    }
    Ok(removed)
}

/// True when `dir`'s owner is gone (see the module docs).
pub fn abandoned(dir: &Path) -> bool {
    match std::fs::read_to_string(dir.join(OWNER_FILE)) {
        Ok(text) => {
            let mut it = text.split_whitespace();
            let pid = it.next().and_then(|p| p.parse::<u32>().ok());
            let start = it.next().and_then(|s| s.parse::<u64>().ok());
            match pid {
                // A garbled owner file: treat like a missing one.
                None => older_than(dir, UNOWNED_GRACE),
                Some(pid) => !crate::sys::process_exists(pid) || start != start_time(pid),
            }
        }
        Err(_) => older_than(dir, UNOWNED_GRACE),
    }
}

fn older_than(dir: &Path, age: Duration) -> bool {
    std::fs::metadata(dir)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .is_some_and(|d| d > age)
}

/// The owner line for `pid`.
pub fn owner_line(pid: u32) -> String {
    match start_time(pid) {
        Some(t) => format!("{pid} {t}\n"),
        None => format!("{pid}\n"),
    }
}

/// A process's start time in clock ticks since boot (`/proc/PID/stat` field 22).
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces; fields after it are plain.
    let rest = &stat[stat.rfind(')')? + 2..];
    // `rest` starts at field 3 (state); field 22 is the 20th from there.
    rest.split(' ').nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn abandoned_directories_go_and_live_ones_stay() {
        let tmp = tempfile::tempdir().unwrap();
        let mk = |name: &str, owner: Option<String>| {
            let d = tmp.path().join(name);
            std::fs::create_dir(&d).unwrap();
            std::fs::write(d.join("pm.img"), b"x").unwrap();
            if let Some(o) = owner {
                std::fs::write(d.join(OWNER_FILE), o).unwrap();
            }
            d
        };
        // A child that has exited and been reaped: its PID is free.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let gone = mk("pmcrash-run-gone", Some(format!("{dead} 1\n")));
        let gone_check = mk("pmcrash-check-gone", Some(format!("{dead}\n")));
        let gone_boot = mk("pmcrash-boot-gone", Some(format!("{dead} 7\n")));
        let mine = mk("pmcrash-run-mine", Some(owner_line(std::process::id())));
        // Our PID, but another start time: a process that reused the PID.
        let reused = mk(
            "pmcrash-run-reused",
            Some(format!("{} 1\n", std::process::id())),
        );
        let fresh_unowned = mk("pmcrash-run-unowned", None);
        let other = mk("something-else", Some(format!("{dead} 1\n")));

        let removed = sweep(tmp.path()).unwrap();
        assert!(!gone.exists() && !gone_check.exists() && !gone_boot.exists());
        assert!(!reused.exists());
        assert!(mine.exists(), "a live owner's directory was removed");
        assert!(
            fresh_unowned.exists(),
            "a fresh directory without owner was removed"
        );
        assert!(other.exists(), "a directory of another program was removed");
        assert_eq!(removed.len(), 4, "{removed:?}");
    }

    #[test]
    fn a_new_run_directory_names_this_process() {
        let d = run_dir("pmcrash-run-test-").unwrap();
        let owner = std::fs::read_to_string(d.path().join(OWNER_FILE)).unwrap();
        assert_eq!(owner, owner_line(std::process::id()));
        assert!(owner.trim().split(' ').count() == 2, "{owner}");
        assert!(!abandoned(d.path()));
    }
}
