//! Shared helpers for the end-to-end suites in `tests/tests/`.
//!
//! Every suite here boots real guests with the real kernel and file systems. When the
//! machine lacks something, [`assets`] fails the test with what to install; nothing is
//! skipped.

use crash_models::ops::Op;
use pmcrash::guest::GuestFactory;
use pmcrash::setup::{self, Assets, SetupOptions};
use std::collections::BTreeMap;

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

/// True when a process with this PID exists.
pub fn process_alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks for existence.
    unsafe { libc::kill(pid as i32, 0) == 0 }
}
