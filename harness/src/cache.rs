//! The cache directory (`$PMCRASH_CACHE`, default `~/.cache/pmcrash`): its layout, its
//! locks, file stamps, and the harness's one way of writing a file atomically.
//!
//! ```text
//! .lock                           held by `pmcrash setup` (and every `ensure`) while it works
//! kernel-pin.json                 the Debian kernel package in use (see setup's "Pinning")
//! debs/<package file>.deb         apt-get download output, keyed by file name
//! debs/<package file>.deb.json    its size, mtime and blake3 (so it is hashed once)
//! kernels/<deb hash>/tree/        dpkg-deb -x output (boot/, lib/modules/<release>/)
//! kernels/<deb hash>/vmlinux      the uncompressed kernel with its PVH entry note
//! kernels/<deb hash>/kernel.json  release, image to boot, image hash
//! byo/<key>/                      the same for a bring-your-own kernel (key: path, size, mtime)
//! initramfs/<blake3>.cpio         keyed by the hash of the archive (agent + modules + order)
//! qemu.json                       the last QEMU probe, keyed by the binary's path/size/mtime
//! state.json                      finished setup results, keyed by (agent hash, kernel), with
//!                                 the size and mtime of every input file
//! templates/fsdax-<release>-<size>M.img   the fsdax-converted blank NVDIMM (guest.rs)
//! states/<assets id>-<fs>-<size>M-smp<n>.state   saved VM states (guest.rs)
//! templates/*.lock, states/*.lock held while that entry is made
//! states/pmcrash-boot-*/        where a saved state is booted (removed after; see `scratch`)
//! ```
//!
//! Every file is published atomically ([`write_atomic`], [`publish`]): written beside its
//! final name, fsynced, renamed into place, and the directory fsynced, so a crash (or a
//! `kill -9`) leaves the old file or the new one, never a torn one. Reports and traces
//! are written the same way.

use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

/// A file operation that failed, with the file.
#[derive(Debug, thiserror::Error)]
#[error("{what} {}: {source}", path.display())]
pub struct FileError {
    /// What was being done (`write`, `rename`, `lock`...).
    pub what: &'static str,
    /// The file.
    pub path: PathBuf,
    /// The error.
    #[source]
    pub source: io::Error,
}

fn err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> FileError {
    let path = path.to_path_buf();
    move |source| FileError { what, path, source }
}

/// The setup lock of a cache directory.
pub fn setup_lock_path(cache: &Path) -> PathBuf {
    cache.join(".lock")
}
/// The pinned Debian kernel package.
pub fn kernel_pin_path(cache: &Path) -> PathBuf {
    cache.join("kernel-pin.json")
}
/// Downloaded kernel packages.
pub fn debs_dir(cache: &Path) -> PathBuf {
    cache.join("debs")
}
/// Unpacked Debian kernels, by package hash.
pub fn kernels_dir(cache: &Path) -> PathBuf {
    cache.join("kernels")
}
/// Bring-your-own kernels, by path/size/mtime key.
pub fn byo_dir(cache: &Path) -> PathBuf {
    cache.join("byo")
}
/// Initramfs archives, by content hash.
pub fn initramfs_dir(cache: &Path) -> PathBuf {
    cache.join("initramfs")
}
/// The last QEMU probe.
pub fn qemu_record_path(cache: &Path) -> PathBuf {
    cache.join("qemu.json")
}
/// Finished setup results.
pub fn setup_state_path(cache: &Path) -> PathBuf {
    cache.join("state.json")
}
/// fsdax templates.
pub fn templates_dir(cache: &Path) -> PathBuf {
    cache.join("templates")
}
/// Saved VM states.
pub fn vm_states_dir(cache: &Path) -> PathBuf {
    cache.join("states")
}

/// An exclusive advisory lock (`flock`) on a lock file, taken blocking and released on
/// drop. Two processes (or two tests) never make the same cache entry at once.
#[derive(Debug)]
pub struct Lock(File);

impl Lock {
    /// Lock `path` (created when missing, with its directory).
    pub fn take(path: &Path) -> Result<Lock, FileError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(err("create", dir))?;
        }
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(err("create lock", path))?;
        crate::sys::lock_exclusive(&f).map_err(err("lock", path))?;
        Ok(Lock(f))
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        crate::sys::unlock(&self.0);
    }
}

/// Publish a finished file `tmp` (in the same directory as `path`) as `path`: fsync it,
/// rename it into place, fsync the directory so the rename survives a crash.
pub fn publish(tmp: &Path, path: &Path) -> Result<(), FileError> {
    File::open(tmp)
        .and_then(|f| f.sync_all())
        .map_err(err("fsync", tmp))?;
    std::fs::rename(tmp, path).map_err(err("rename to", path))?;
    sync_dir_of(path);
    Ok(())
}

/// Write `data` to `path` atomically: a temporary file in the same directory (made
/// when missing), fsync, rename, fsync of the directory. The file is readable by
/// everyone (QEMU may run as another user).
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<(), FileError> {
    use std::os::unix::fs::PermissionsExt;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir).map_err(err("create", dir))?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(err("create a file in", dir))?;
    tmp.write_all(data).map_err(err("write", tmp.path()))?;
    tmp.as_file().sync_all().map_err(err("fsync", tmp.path()))?;
    // NamedTempFile creates 0600.
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o644))
        .map_err(err("chmod", tmp.path()))?;
    tmp.persist(path)
        .map_err(|e| err("rename to", path)(e.error))?;
    sync_dir_of(path);
    Ok(())
}

fn sync_dir_of(path: &Path) {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    // Best effort: some file systems refuse to fsync a directory.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Read a JSON record; `None` when missing or unreadable (a cache miss).
pub fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Option<T> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

/// Write a JSON record atomically.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), FileError> {
    let text = serde_json::to_vec_pretty(value).map_err(|e| FileError {
        what: "serialise",
        path: path.to_path_buf(),
        source: io::Error::other(e),
    })?;
    write_atomic(path, &text)
}

/// A file's identity as far as cache validity goes: path, size, modification time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileStamp {
    /// The file.
    pub path: PathBuf,
    /// Its size.
    pub size: u64,
    /// Its modification time, nanoseconds since the epoch.
    pub mtime_ns: u128,
}

impl FileStamp {
    /// The stamp of `path` now, `None` when it cannot be read.
    pub fn of(path: &Path) -> Option<FileStamp> {
        let md = std::fs::metadata(path).ok()?;
        let mtime_ns = md
            .modified()
            .ok()?
            .duration_since(UNIX_EPOCH)
            .ok()?
            .as_nanos();
        Some(FileStamp {
            path: path.to_path_buf(),
            size: md.len(),
            mtime_ns,
        })
    }

    /// The file is still exactly as stamped.
    pub fn still_valid(&self) -> bool {
        FileStamp::of(&self.path).as_ref() == Some(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_atomic_replaces_and_stamps() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/file");
        write_atomic(&p, b"one").unwrap();
        let s1 = FileStamp::of(&p).unwrap();
        assert!(s1.still_valid());
        write_atomic(&p, b"three").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"three");
        assert!(!s1.still_valid());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&p).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o644);
        // Nothing else is left in the directory.
        assert_eq!(std::fs::read_dir(p.parent().unwrap()).unwrap().count(), 1);
    }

    #[test]
    fn publish_moves_a_finished_file() {
        let dir = tempfile::tempdir().unwrap();
        let tmp = dir.path().join("x.tmp");
        std::fs::write(&tmp, b"done").unwrap();
        let p = dir.path().join("x");
        publish(&tmp, &p).unwrap();
        assert!(!tmp.exists());
        assert_eq!(std::fs::read(&p).unwrap(), b"done");
        let e = publish(&tmp, &p).unwrap_err();
        assert!(e.to_string().contains("x.tmp"), "{e}");
    }

    #[test]
    fn json_records_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.json");
        assert_eq!(read_json::<Vec<u32>>(&p), None);
        write_json(&p, &vec![1u32, 2]).unwrap();
        assert_eq!(read_json::<Vec<u32>>(&p), Some(vec![1, 2]));
    }

    #[test]
    fn a_lock_can_be_taken_again_after_drop() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a/b.lock");
        drop(Lock::take(&p).unwrap());
        let _l = Lock::take(&p).unwrap();
    }
}
