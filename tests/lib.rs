//! Shared helpers for the end-to-end suites in `tests/tests/`.
//!
//! Every suite here boots real guests with the real kernel and file systems. When the
//! machine lacks something, [`assets`] fails the test with what to install; nothing is
//! skipped.

use crash_models::ops::{FsKind, Op};
use crash_models::protocol::{FsEntry, HostMsg, OpResult};
use pmcrash::guest::GuestFactory;
use pmcrash::image;
use pmcrash::setup::{self, Assets, SetupOptions};
use pmcrash::vm::Vm;
use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::PathBuf;

/// A multi-threaded tokio runtime for one test.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().expect("tokio runtime")
}

/// Provision (idempotently) and return the guest assets, or fail with what to do.
pub fn assets() -> Assets {
    let opts = SetupOptions {
        progress: false,
        ..SetupOptions::default()
    };
    match setup::ensure(&opts) {
        Ok(a) => a,
        Err(e) => {
            panic!("the guest platform is not provisioned: {e}\n(run `cargo run -- setup` as root)")
        }
    }
}

/// A guest factory for `fs` with default sizes.
pub fn factory(fs: crash_models::ops::FsKind) -> GuestFactory {
    GuestFactory::new(assets(), fs)
}

/// What each file should contain after the data ops of `ops` (open, write, pwrite,
/// ftruncate, mmap, store), by path: a deliberately naive reference written for
/// clarity, used to check what the guest left in the PM image.
pub fn expected_contents(ops: &[Op]) -> BTreeMap<String, Vec<u8>> {
    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut fds: BTreeMap<String, (String, u64)> = BTreeMap::new();
    let mut maps: BTreeMap<String, (String, u64)> = BTreeMap::new();
    let put = |f: &mut Vec<u8>, at: u64, bytes: &[u8]| {
        let end = at as usize + bytes.len();
        if f.len() < end {
            f.resize(end, 0);
        }
        f[at as usize..end].copy_from_slice(bytes);
    };
    for op in ops {
        match op {
            Op::Open {
                path, fd, truncate, ..
            } => {
                let f = files.entry(path.clone()).or_default();
                if *truncate {
                    f.clear();
                }
                fds.insert(fd.clone(), (path.clone(), 0));
            }
            Op::Write { fd, data, .. } => {
                let (path, pos) = fds.get_mut(fd).expect("fd");
                let bytes = data.bytes();
                put(files.get_mut(path.as_str()).expect("file"), *pos, &bytes);
                *pos += bytes.len() as u64;
            }
            Op::Pwrite {
                fd, offset, data, ..
            } => {
                let (path, _) = &fds[fd];
                put(
                    files.get_mut(path.as_str()).expect("file"),
                    *offset,
                    &data.bytes(),
                );
            }
            Op::Ftruncate { fd, len } => {
                let (path, _) = &fds[fd];
                files
                    .get_mut(path.as_str())
                    .expect("file")
                    .resize(*len as usize, 0);
            }
            Op::Mmap {
                fd, map, offset, ..
            } => {
                let (path, _) = &fds[fd];
                maps.insert(map.clone(), (path.clone(), *offset));
            }
            Op::Store {
                map, offset, data, ..
            } => {
                let (path, base) = &maps[map];
                let f = files.get_mut(path.as_str()).expect("file");
                let at = base + offset;
                // Stores never extend a file: the mapping is inside its size.
                assert!(
                    at as usize + data.bytes().len() <= f.len(),
                    "store past EOF in the test workload"
                );
                put(f, at, &data.bytes());
            }
            Op::Close { fd } => {
                fds.remove(fd);
            }
            _ => {}
        }
    }
    files
}

/// One guest on one file system, reused across workloads: between two workloads, with
/// the file system unmounted, the host puts the PM image back to the freshly made one
/// and the agent drops its caches (as the checker does between crash images), so every
/// workload starts on an empty file system.
pub struct ReusedGuest {
    factory: GuestFactory,
    vm: Option<Vm>,
    _dir: tempfile::TempDir,
    pristine: PathBuf,
    work: File,
    used: bool,
}

impl ReusedGuest {
    /// Make a fresh image and restore a guest on it.
    pub async fn start(fs: FsKind) -> ReusedGuest {
        let factory = factory(fs);
        let dir = tempfile::tempdir().expect("temp dir");
        let pristine = dir.path().join("pristine.img");
        factory
            .make_image(&pristine)
            .await
            .expect("make a fresh image");
        let work_path = dir.path().join("work.img");
        image::blank(&work_path, factory.pm_size).expect("blank work image");
        let work = File::options()
            .read(true)
            .write(true)
            .open(&work_path)
            .expect("open work image");
        image::copy_sparse(&pristine, 0, &work, 0).expect("copy the fresh image");
        let vm = factory
            .start(&work_path, None)
            .await
            .expect("restore a guest");
        ReusedGuest {
            factory,
            vm: Some(vm),
            _dir: dir,
            pristine,
            work,
            used: false,
        }
    }

    /// Put the work image back to the fresh file system (the guest has it unmounted).
    fn reset(&mut self) {
        let len = self.factory.pm_size as i64;
        // SAFETY: plain fallocate on a descriptor we own; punching a hole keeps the
        // size, so QEMU's mapping of the file stays valid and reads zeros there.
        let rc = unsafe {
            libc::fallocate(
                self.work.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                0,
                len,
            )
        };
        assert_eq!(
            rc,
            0,
            "punch the work image: {}",
            std::io::Error::last_os_error()
        );
        image::copy_sparse(&self.pristine, 0, &self.work, 0).expect("copy the fresh image");
    }

    /// Mount, run `ops`, dump, unmount: each op's result and the state after them.
    pub async fn run(&mut self, ops: &[Op]) -> (Vec<OpResult>, Vec<FsEntry>) {
        if self.used {
            self.reset();
        }
        self.used = true;
        let t = self.factory.timeouts.request;
        let vm = self.vm.as_mut().expect("a live guest");
        vm.request(&HostMsg::Refresh, t).await.expect("refresh");
        self.factory.mount(vm).await.expect("mount -o dax");
        let results = pmcrash::run::run_mounted(vm, ops, false, t)
            .await
            .expect("run the ops");
        let entries = pmcrash::run::dump(vm, t).await.expect("dump");
        vm.request(&HostMsg::Unmount, t).await.expect("unmount");
        (results, entries)
    }

    /// Power the guest off.
    pub async fn end(mut self) {
        if let Some(vm) = self.vm.take() {
            vm.shutdown(self.factory.timeouts.shutdown)
                .await
                .expect("power off");
        }
    }
}

/// True when a process with this PID exists.
pub fn process_alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks for existence.
    unsafe { libc::kill(pid as i32, 0) == 0 }
}
