//! Every libc call of the harness, each behind a safe function with its `SAFETY`
//! argument. The rest of the crate has no `unsafe` blocks but these and, until it
//! switches to [`kill_process`], [`kill_with_parent`] and [`reap`], the QEMU process
//! handling in `vm.rs`.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// Take an exclusive advisory lock on `f` (`flock(LOCK_EX)`), blocking until the other
/// holder lets go.
pub fn lock_exclusive(f: &File) -> io::Result<()> {
    // SAFETY: flock on a descriptor `f` keeps open for the call; no pointers involved.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Release a lock taken by [`lock_exclusive`] (closing the file releases it too).
pub fn unlock(f: &File) {
    // SAFETY: flock on a descriptor `f` keeps open for the call; no pointers involved.
    unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_UN) };
}

/// `lseek(SEEK_DATA)`: the first data byte at or after `pos`, `None` past the last
/// data.
pub fn seek_data(f: &File, pos: u64) -> io::Result<Option<u64>> {
    let pos = i64::try_from(pos).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: lseek on a descriptor `f` keeps open; it only moves the file offset.
    let r = unsafe { libc::lseek(f.as_raw_fd(), pos, libc::SEEK_DATA) };
    if r < 0 {
        let e = io::Error::last_os_error();
        return if e.raw_os_error() == Some(libc::ENXIO) {
            Ok(None)
        } else {
            Err(e)
        };
    }
    Ok(Some(r as u64))
}

/// `lseek(SEEK_HOLE)`: the first hole at or after `pos` (the end of the file counts as
/// one).
pub fn seek_hole(f: &File, pos: u64) -> io::Result<u64> {
    let pos = i64::try_from(pos).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: lseek on a descriptor `f` keeps open; it only moves the file offset.
    let r = unsafe { libc::lseek(f.as_raw_fd(), pos, libc::SEEK_HOLE) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(r as u64)
}

/// True when this process runs as root (effective uid 0).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Restore the default `SIGPIPE` disposition, so `pmcrash ... | head` ends quietly
/// instead of panicking on a closed pipe. Call before any thread starts.
pub fn default_sigpipe() {
    // SAFETY: installing SIG_DFL runs no handler code; called while single-threaded.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
}

/// True when process `pid` exists (it may be a zombie). A process of another user
/// counts as existing.
pub fn process_exists(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    if pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 sends nothing; kill only checks that the process exists.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Send `SIGKILL` to process `pid` (one this process started). Errors (the process is
/// gone already) are ignored.
pub fn kill_process(pid: u32) {
    let Ok(pid) = i32::try_from(pid) else {
        return;
    };
    if pid > 0 {
        // SAFETY: kill(2) takes no pointers; a positive pid names one process.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

/// Make a command's child get `SIGKILL` when this process dies
/// (`prctl(PR_SET_PDEATHSIG)` between fork and exec), so no QEMU outlives the harness.
pub fn kill_with_parent(cmd: &mut tokio::process::Command) {
    // SAFETY: the closure runs in the forked child before exec and calls only prctl,
    // which is async-signal-safe; it touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

/// Wait for child `pid` to end and reap it (blocking `waitpid`).
pub fn reap(pid: u32) {
    let Ok(pid) = i32::try_from(pid) else {
        return;
    };
    if pid <= 0 {
        return;
    }
    let mut status = 0;
    // SAFETY: waitpid writes only to `status`, a live local; a positive pid names one
    // child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
}

/// Whether `/dev/kvm` (opened read-write as `dev`) answers API version 12 and can
/// create a VM: without nested virtualisation the device exists but `KVM_CREATE_VM`
/// fails.
pub fn kvm_can_create_vm(dev: &File) -> bool {
    const KVM_GET_API_VERSION: libc::c_ulong = 0xAE00;
    const KVM_CREATE_VM: libc::c_ulong = 0xAE01;
    // SAFETY: plain ioctls on a descriptor we own; neither takes a pointer argument.
    let api = unsafe { libc::ioctl(dev.as_raw_fd(), KVM_GET_API_VERSION, 0) };
    if api != 12 {
        return false;
    }
    // SAFETY: as above; the returned descriptor, if any, is closed by OwnedFd.
    let vm = unsafe { libc::ioctl(dev.as_raw_fd(), KVM_CREATE_VM, 0) };
    if vm < 0 {
        return false;
    }
    // SAFETY: `vm` is a fresh descriptor returned by the kernel and owned by nobody else.
    drop(unsafe { OwnedFd::from_raw_fd(vm) });
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_exists_and_pid_0_does_not_count() {
        assert!(process_exists(std::process::id()));
        assert!(!process_exists(0));
        assert!(!process_exists(u32::MAX));
    }

    #[test]
    fn data_and_holes_of_a_sparse_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = File::create(dir.path().join("f")).unwrap();
        f.set_len(1 << 20).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, &[1; 4096], 512 << 10).unwrap();
        // Some file systems report the whole file as data; both answers are valid.
        let d = seek_data(&f, 0).unwrap().unwrap();
        assert!(d <= 512 << 10);
        assert!(seek_hole(&f, d).unwrap() > d);
        assert_eq!(seek_data(&f, 1 << 20).unwrap(), None);
    }

    #[tokio::test]
    async fn a_child_is_killed_and_reaped() {
        let mut cmd = tokio::process::Command::new("sleep");
        cmd.arg("1000");
        kill_with_parent(&mut cmd);
        let child = cmd.spawn().unwrap();
        let pid = child.id().unwrap();
        assert!(process_exists(pid));
        kill_process(pid);
        // Returns once the killed child has ended (a PID may be reused at once after,
        // so its absence is not asserted).
        reap(pid);
        drop(child);
    }

    #[test]
    fn locks_can_be_taken_and_released() {
        let dir = tempfile::tempdir().unwrap();
        let f = File::create(dir.path().join("l")).unwrap();
        lock_exclusive(&f).unwrap();
        unlock(&f);
    }
}
