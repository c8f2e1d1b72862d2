//! Running ops and dumping the file-system state.
//!
//! The op table is validated on the host, but the agent still refuses anything that
//! would make it fault (an unknown handle, a store outside its mapping): PID 1 must
//! not crash, and such a request gets `EINVAL` back.

use crate::sys;
use crash_models::ops::{FallocateFlag, MapKind, MsyncMode, Op, StoreKind};
use crash_models::protocol::{marker, EntryKind, Extent, FsEntry, OpDetail, OpResult};
use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::time::Instant;

const CACHE_LINE: u64 = 64;

/// A live mapping.
struct Mapping {
    addr: *mut u8,
    len: u64,
}

/// The agent's state across `run` requests: descriptors and mappings by name.
pub struct Executor {
    /// The directory paths are relative to (the mount point in the guest).
    root: String,
    fds: BTreeMap<String, OwnedFd>,
    maps: BTreeMap<String, Mapping>,
    /// Emit tracer markers around ops.
    pub markers: bool,
}

impl Executor {
    /// An executor whose op paths are relative to `root`.
    pub fn new(root: &str) -> Executor {
        Executor {
            root: root.to_owned(),
            fds: BTreeMap::new(),
            maps: BTreeMap::new(),
            markers: false,
        }
    }
}

type Outcome = Result<(i64, OpDetail), i32>;

fn errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

fn check(rc: libc::c_long) -> Result<i64, i32> {
    if rc < 0 {
        Err(errno())
    } else {
        Ok(rc)
    }
}

impl Executor {
    /// Close every descriptor and unmap every mapping (before an unmount).
    pub fn forget(&mut self) {
        for (_, m) in std::mem::take(&mut self.maps) {
            // SAFETY: the mapping was created by mmap with this length.
            unsafe { libc::munmap(m.addr as *mut libc::c_void, m.len as usize) };
        }
        self.fds.clear();
    }

    /// Run ops in order, reporting each as it ends.
    pub fn run(&mut self, ops: &[Op], mut report: impl FnMut(OpResult)) {
        if self.markers {
            sys::marker(marker::Kind::RunBegin as u32, ops.len() as u32, 0, 0);
        }
        for (index, op) in ops.iter().enumerate() {
            let (a, b) = self.marker_values(op);
            if self.markers {
                sys::marker(marker::Kind::OpBegin as u32, index as u32, a, b);
            }
            let start = Instant::now();
            let outcome = self.exec(op);
            let micros = start.elapsed().as_micros() as u64;
            if self.markers {
                sys::marker(marker::Kind::OpEnd as u32, index as u32, a, b);
            }
            let (ret, errno, detail) = match outcome {
                Ok((ret, detail)) => (ret, None, detail),
                Err(e) => (-1, Some(e), OpDetail::None),
            };
            report(OpResult {
                index,
                ret,
                errno,
                detail,
                micros,
            });
        }
        if self.markers {
            sys::marker(marker::Kind::RunEnd as u32, ops.len() as u32, 0, 0);
        }
    }

    /// The two marker values: for stores and flushes, the user range they touch.
    fn marker_values(&self, op: &Op) -> (u64, u64) {
        match op {
            Op::Store {
                map, offset, data, ..
            } => self
                .maps
                .get(map)
                .map_or((0, 0), |m| (m.addr as u64 + offset, data.len())),
            Op::Flush {
                map, offset, len, ..
            } => self
                .maps
                .get(map)
                .map_or((0, 0), |m| (m.addr as u64 + offset, *len)),
            _ => (0, 0),
        }
    }

    fn path(&self, p: &str) -> CString {
        CString::new(format!("{}/{p}", self.root)).unwrap_or_default()
    }

    fn fd(&self, name: &str) -> Result<i32, i32> {
        self.fds.get(name).map(|f| f.as_raw_fd()).ok_or(libc::EBADF)
    }

    fn map_range(&self, name: &str, offset: u64, len: u64) -> Result<*mut u8, i32> {
        let m = self.maps.get(name).ok_or(libc::EINVAL)?;
        if offset.checked_add(len).is_none_or(|end| end > m.len) {
            return Err(libc::EINVAL);
        }
        // SAFETY: in bounds of the mapping.
        Ok(unsafe { m.addr.add(offset as usize) })
    }

    fn exec(&mut self, op: &Op) -> Outcome {
        let none = |r: i64| Ok((r, OpDetail::None));
        match op {
            Op::Open {
                path,
                fd,
                create,
                truncate,
                excl,
                append,
                mode,
                ..
            } => {
                if self.fds.contains_key(fd) {
                    return Err(libc::EINVAL);
                }
                let mut flags = libc::O_RDWR | libc::O_CLOEXEC;
                if *create {
                    flags |= libc::O_CREAT;
                }
                if *truncate {
                    flags |= libc::O_TRUNC;
                }
                if *excl {
                    flags |= libc::O_EXCL;
                }
                if *append {
                    flags |= libc::O_APPEND;
                }
                let p = self.path(path);
                // SAFETY: valid path.
                let raw = unsafe { libc::open(p.as_ptr(), flags, *mode as libc::c_uint) };
                if raw < 0 {
                    return Err(errno());
                }
                // SAFETY: a fresh descriptor we own.
                let owned = unsafe { OwnedFd::from_raw_fd(raw) };
                let dax = is_dax(&owned);
                self.fds.insert(fd.clone(), owned);
                Ok((raw as i64, OpDetail::Opened { fd: raw, dax }))
            }
            Op::Close { fd } => {
                self.fd(fd)?;
                self.fds.remove(fd);
                none(0)
            }
            Op::Write { fd, data, .. } => {
                let fd = self.fd(fd)?;
                let bytes = data.bytes();
                // SAFETY: valid buffer.
                let rc = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
                none(check(rc as libc::c_long)?)
            }
            Op::Pwrite {
                fd, offset, data, ..
            } => {
                let fd = self.fd(fd)?;
                let bytes = data.bytes();
                // SAFETY: valid buffer.
                let rc =
                    unsafe { libc::pwrite(fd, bytes.as_ptr().cast(), bytes.len(), *offset as i64) };
                none(check(rc as libc::c_long)?)
            }
            Op::Read { fd, offset, len } => {
                let fd = self.fd(fd)?;
                let mut buf = vec![0u8; *len as usize];
                // SAFETY: valid buffer.
                let rc =
                    unsafe { libc::pread(fd, buf.as_mut_ptr().cast(), buf.len(), *offset as i64) };
                let n = check(rc as libc::c_long)?;
                buf.truncate(n as usize);
                Ok((
                    n,
                    OpDetail::Read {
                        len: n as u64,
                        blake3: blake3::hash(&buf).to_hex().to_string(),
                    },
                ))
            }
            Op::Ftruncate { fd, len } => {
                let fd = self.fd(fd)?;
                // SAFETY: plain syscall.
                none(check(
                    unsafe { libc::ftruncate(fd, *len as i64) } as libc::c_long
                )?)
            }
            Op::Fallocate {
                fd,
                offset,
                len,
                mode,
            } => {
                let fd = self.fd(fd)?;
                let bits = mode.iter().fold(0, |acc, f: &FallocateFlag| acc | f.bits());
                // SAFETY: plain syscall.
                none(check(
                    unsafe { libc::fallocate(fd, bits, *offset as i64, *len as i64) }
                        as libc::c_long,
                )?)
            }
            Op::Mmap {
                fd,
                map,
                offset,
                len,
                kind,
            } => {
                let fd = self.fd(fd)?;
                if self.maps.contains_key(map) {
                    return Err(libc::EINVAL);
                }
                let flags = match kind {
                    MapKind::Shared => libc::MAP_SHARED,
                    MapKind::Sync => libc::MAP_SHARED_VALIDATE | libc::MAP_SYNC,
                };
                // SAFETY: a fresh mapping; the kernel picks the address.
                let addr = unsafe {
                    libc::mmap(
                        std::ptr::null_mut(),
                        *len as usize,
                        libc::PROT_READ | libc::PROT_WRITE,
                        flags,
                        fd,
                        *offset as i64,
                    )
                };
                if addr == libc::MAP_FAILED {
                    return Err(errno());
                }
                self.maps.insert(
                    map.clone(),
                    Mapping {
                        addr: addr.cast(),
                        len: *len,
                    },
                );
                Ok((
                    0,
                    OpDetail::Mapped {
                        addr: addr as u64,
                        len: *len,
                    },
                ))
            }
            Op::Munmap { map } => {
                let m = self.maps.remove(map).ok_or(libc::EINVAL)?;
                // SAFETY: the mapping was created with this length.
                none(check(
                    unsafe { libc::munmap(m.addr.cast(), m.len as usize) } as libc::c_long,
                )?)
            }
            Op::Store {
                map,
                offset,
                data,
                kind,
            } => {
                let bytes = data.bytes();
                let dst = self.map_range(map, *offset, bytes.len() as u64)?;
                if *kind == StoreKind::NonTemporal
                    && (dst as usize % 4 != 0 || bytes.len() % 4 != 0)
                {
                    return Err(libc::EINVAL);
                }
                // SAFETY: the range lies inside a live writable mapping (checked above).
                unsafe {
                    match kind {
                        StoreKind::Cached => sys::store_cached(dst, &bytes),
                        StoreKind::NonTemporal => sys::store_nt(dst, &bytes),
                    }
                }
                Ok((
                    bytes.len() as i64,
                    OpDetail::Addresses {
                        addr: dst as u64,
                        len: bytes.len() as u64,
                    },
                ))
            }
            Op::Flush {
                map,
                offset,
                len,
                insn,
            } => {
                let start = self.map_range(map, *offset, *len)? as u64;
                let end = start + len;
                let mut line = start & !(CACHE_LINE - 1);
                while line < end {
                    // SAFETY: every line flushed overlaps the checked range, which is
                    // mapped; mappings are page-aligned so whole lines are mapped.
                    unsafe { sys::flush_line(*insn, line as *const u8) };
                    line += CACHE_LINE;
                }
                Ok((
                    0,
                    OpDetail::Addresses {
                        addr: start,
                        len: *len,
                    },
                ))
            }
            Op::Fence { insn } => {
                sys::fence(*insn);
                none(0)
            }
            Op::Msync {
                map,
                offset,
                len,
                mode,
            } => {
                let m = self.maps.get(map).ok_or(libc::EINVAL)?;
                let len = len.unwrap_or(m.len.saturating_sub(*offset));
                self.map_range(map, *offset, len)?;
                let page_off = offset & !4095;
                let flags = match mode {
                    MsyncMode::Sync => libc::MS_SYNC,
                    MsyncMode::Async => libc::MS_ASYNC,
                };
                // SAFETY: the range lies inside the mapping.
                let rc = unsafe {
                    libc::msync(
                        m.addr.add(page_off as usize).cast(),
                        (len + offset - page_off) as usize,
                        flags,
                    )
                };
                none(check(rc as libc::c_long)?)
            }
            Op::Fsync { fd } => {
                let fd = self.fd(fd)?;
                // SAFETY: plain syscall.
                none(check(unsafe { libc::fsync(fd) } as libc::c_long)?)
            }
            Op::Fdatasync { fd } => {
                let fd = self.fd(fd)?;
                // SAFETY: plain syscall.
                none(check(unsafe { libc::fdatasync(fd) } as libc::c_long)?)
            }
            Op::Fmetadatasync { fd } => {
                let fd = self.fd(fd)?;
                // SAFETY: plain syscall.
                check(unsafe { libc::fdatasync(fd) } as libc::c_long)?;
                let extents = fiemap(fd)?;
                Ok((0, OpDetail::Extents { extents }))
            }
            Op::Sync => {
                // SAFETY: plain syscall.
                unsafe { libc::sync() };
                none(0)
            }
            Op::Syncfs { fd } => {
                let fd = self.fd(fd)?;
                // SAFETY: plain syscall.
                none(check(unsafe { libc::syncfs(fd) } as libc::c_long)?)
            }
            Op::Rename { from, to } => {
                let (a, b) = (self.path(from), self.path(to));
                // SAFETY: valid paths.
                none(check(
                    unsafe { libc::rename(a.as_ptr(), b.as_ptr()) } as libc::c_long
                )?)
            }
            Op::Link { from, to } => {
                let (a, b) = (self.path(from), self.path(to));
                // SAFETY: valid paths.
                none(check(
                    unsafe { libc::link(a.as_ptr(), b.as_ptr()) } as libc::c_long
                )?)
            }
            Op::Unlink { path } => {
                let p = self.path(path);
                // SAFETY: valid path.
                none(check(unsafe { libc::unlink(p.as_ptr()) } as libc::c_long)?)
            }
            Op::Mkdir { path, mode } => {
                let p = self.path(path);
                // SAFETY: valid path.
                none(check(
                    unsafe { libc::mkdir(p.as_ptr(), *mode as libc::mode_t) } as libc::c_long,
                )?)
            }
            Op::Rmdir { path } => {
                let p = self.path(path);
                // SAFETY: valid path.
                none(check(unsafe { libc::rmdir(p.as_ptr()) } as libc::c_long)?)
            }
            Op::Symlink { target, path } => {
                let t = CString::new(target.as_str()).map_err(|_| libc::EINVAL)?;
                let p = self.path(path);
                // SAFETY: valid strings.
                none(check(
                    unsafe { libc::symlink(t.as_ptr(), p.as_ptr()) } as libc::c_long
                )?)
            }
            // Not yet executed by the agent.
            Op::Truncate { .. }
            | Op::SyncFileRange { .. }
            | Op::Mkfifo { .. }
            | Op::Setxattr { .. }
            | Op::Removexattr { .. } => Err(libc::ENOSYS),
        }
    }
}

fn is_dax(fd: &OwnedFd) -> bool {
    rustix::fs::statx(
        fd,
        "",
        rustix::fs::AtFlags::EMPTY_PATH,
        rustix::fs::StatxFlags::BASIC_STATS,
    )
    .map(|s| s.stx_attributes.contains(rustix::fs::StatxAttributes::DAX))
    .unwrap_or(false)
}

const FS_IOC_FIEMAP: libc::c_ulong = 0xC020_660B;
const FIEMAP_EXTENT_LAST: u32 = 0x1;

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct FiemapExtent {
    logical: u64,
    physical: u64,
    length: u64,
    reserved64: [u64; 2],
    flags: u32,
    reserved: [u32; 3],
}

#[repr(C)]
struct Fiemap {
    start: u64,
    length: u64,
    flags: u32,
    mapped_extents: u32,
    extent_count: u32,
    reserved: u32,
    extents: [FiemapExtent; 64],
}

/// The file's extents, as FIEMAP reports them (after a sync, so they are settled).
fn fiemap(fd: i32) -> Result<Vec<Extent>, i32> {
    let mut out = Vec::new();
    let mut start = 0u64;
    loop {
        let mut fm = Fiemap {
            start,
            length: u64::MAX - start,
            flags: 0,
            mapped_extents: 0,
            extent_count: 64,
            reserved: 0,
            extents: [FiemapExtent::default(); 64],
        };
        // SAFETY: the struct is laid out as the kernel's, with room for 64 extents.
        let rc = unsafe { libc::ioctl(fd, FS_IOC_FIEMAP, &mut fm as *mut Fiemap) };
        if rc != 0 {
            return Err(errno());
        }
        let n = fm.mapped_extents as usize;
        let mut last = n == 0;
        for e in &fm.extents[..n] {
            out.push(Extent {
                logical: e.logical,
                physical: e.physical,
                len: e.length,
                flags: e.flags,
            });
            start = e.logical + e.length;
            last |= e.flags & FIEMAP_EXTENT_LAST != 0;
        }
        if last {
            return Ok(out);
        }
    }
}

/// Walk the mounted file system (without following links) and describe every object,
/// sorted by path.
pub fn dump(root: &str) -> Result<Vec<FsEntry>, String> {
    let mut entries = Vec::new();
    let mut stack = vec![String::new()];
    while let Some(rel) = stack.pop() {
        let full = if rel.is_empty() {
            root.to_owned()
        } else {
            format!("{root}/{rel}")
        };
        let rd = std::fs::read_dir(&full).map_err(|e| format!("read_dir {full}: {e}"))?;
        for item in rd {
            let item = item.map_err(|e| format!("read_dir {full}: {e}"))?;
            let name = item.file_name().to_string_lossy().into_owned();
            let path = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let abs = format!("{root}/{path}");
            let meta = match std::fs::symlink_metadata(&abs) {
                Ok(m) => m,
                Err(e) => {
                    entries.push(FsEntry {
                        path,
                        kind: EntryKind::Other,
                        size: 0,
                        mode: 0,
                        nlink: 0,
                        ino: 0,
                        blake3: String::new(),
                        blocks: Default::default(),
                        xattrs: Default::default(),
                        target: None,
                        error: Some(e.raw_os_error().unwrap_or(libc::EIO)),
                    });
                    continue;
                }
            };
            let ft = meta.file_type();
            let mut entry = FsEntry {
                path: path.clone(),
                kind: EntryKind::Other,
                size: meta.len(),
                mode: meta.mode() & 0o7777,
                nlink: meta.nlink(),
                ino: meta.ino(),
                blake3: String::new(),
                blocks: Default::default(),
                xattrs: Default::default(),
                target: None,
                error: None,
            };
            if ft.is_dir() {
                entry.kind = EntryKind::Dir;
                entry.size = 0;
                stack.push(path);
            } else if ft.is_symlink() {
                entry.kind = EntryKind::Symlink;
                match std::fs::read_link(&abs) {
                    Ok(t) => {
                        let t = t.to_string_lossy().into_owned();
                        entry.blake3 = blake3::hash(t.as_bytes()).to_hex().to_string();
                        entry.target = Some(t);
                    }
                    Err(e) => entry.error = Some(e.raw_os_error().unwrap_or(libc::EIO)),
                }
            } else if ft.is_file() {
                entry.kind = EntryKind::File;
                if let Err(e) = hash_file(&abs, &mut entry) {
                    entry.error = Some(e);
                }
            }
            entries.push(entry);
        }
    }
    entries.sort();
    Ok(entries)
}

fn hash_file(path: &str, entry: &mut FsEntry) -> Result<(), i32> {
    let f = std::fs::File::open(path).map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))?;
    let mut block = vec![0u8; 4096];
    let mut off = 0u64;
    loop {
        let n = f
            .read_at(&mut block, off)
            .map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))?;
        if n == 0 {
            break;
        }
        if block[..n].iter().any(|b| *b != 0) {
            entry
                .blocks
                .insert(off / 4096, blake3::hash(&block[..n]).to_hex().to_string());
        }
        off += n as u64;
    }
    entry.blake3 = crash_models::protocol::content_hash(entry.size, &entry.blocks);
    Ok(())
}

#[cfg(test)]
mod tests {
    //! The executor on the host, in a temporary directory: no DAX here, so MAP_SYNC
    //! must fail cleanly, and everything else must do what the op says.
    use super::*;
    use crash_models::ops::Workload;

    fn run(dir: &std::path::Path, src: &str) -> Vec<OpResult> {
        let w = Workload::parse(src, "t.toml").unwrap();
        let mut ex = Executor::new(dir.to_str().unwrap());
        let mut out = Vec::new();
        ex.run(&w.ops, |r| out.push(r));
        ex.forget();
        out
    }

    #[test]
    fn data_ops_and_stores_land_in_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let results = run(
            dir.path(),
            r#"
[[ops]]
op = "open"
path = "f"
fd = "f"
create = true
[[ops]]
op = "write"
fd = "f"
data = "abc"
[[ops]]
op = "ftruncate"
fd = "f"
len = 8192
[[ops]]
op = "mmap"
fd = "f"
map = "m"
len = 8192
[[ops]]
op = "store"
map = "m"
offset = 100
data = "cached"
[[ops]]
op = "store"
map = "m"
offset = 200
data = { hex = "0102030405060708090a0b0c" }
kind = "non-temporal"
[[ops]]
op = "flush"
map = "m"
offset = 64
len = 200
insn = "clflushopt"
[[ops]]
op = "fence"
insn = "mfence"
[[ops]]
op = "msync"
map = "m"
[[ops]]
op = "pwrite"
fd = "f"
offset = 4096
data = { fill = 7, len = 10 }
[[ops]]
op = "read"
fd = "f"
offset = 0
len = 3
[[ops]]
op = "fsync"
fd = "f"
"#,
        );
        assert!(results.iter().all(|r| r.ok()), "{results:?}");
        assert_eq!(results.len(), 12);
        let bytes = std::fs::read(dir.path().join("f")).unwrap();
        assert_eq!(bytes.len(), 8192);
        assert_eq!(&bytes[..3], b"abc");
        assert_eq!(&bytes[100..106], b"cached");
        assert_eq!(&bytes[200..212], &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
        assert_eq!(&bytes[4096..4106], &[7; 10]);
        match &results[10].detail {
            OpDetail::Read { len, blake3 } => {
                assert_eq!(*len, 3);
                assert_eq!(blake3, &::blake3::hash(b"abc").to_hex().to_string());
            }
            other => panic!("{other:?}"),
        }
        match &results[4].detail {
            OpDetail::Addresses { len, .. } => assert_eq!(*len, 6),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn map_sync_without_dax_fails_with_an_errno_not_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let results = run(
            dir.path(),
            "[[ops]]\nop=\"open\"\npath=\"f\"\nfd=\"f\"\ncreate=true\n[[ops]]\nop=\"ftruncate\"\nfd=\"f\"\nlen=4096\n[[ops]]\nop=\"mmap\"\nfd=\"f\"\nmap=\"m\"\nlen=4096\nkind=\"sync\"\n",
        );
        assert!(
            results[2].errno.is_some(),
            "MAP_SYNC on a non-DAX file must fail: {:?}",
            results[2]
        );
    }

    #[test]
    fn namespace_ops_and_dump() {
        let dir = tempfile::tempdir().unwrap();
        let results = run(
            dir.path(),
            r#"
[[ops]]
op = "mkdir"
path = "d"
[[ops]]
op = "open"
path = "d/a"
fd = "a"
create = true
[[ops]]
op = "write"
fd = "a"
data = { seed = 9, len = 5000 }
[[ops]]
op = "link"
from = "d/a"
to = "b"
[[ops]]
op = "rename"
from = "b"
to = "c"
[[ops]]
op = "symlink"
target = "d/a"
path = "s"
[[ops]]
op = "fmetadatasync"
fd = "a"
[[ops]]
op = "unlink"
path = "nope"
"#,
        );
        assert!(results[..7].iter().all(|r| r.ok()), "{results:?}");
        assert_eq!(results[7].errno, Some(libc::ENOENT));
        let entries = dump(dir.path().to_str().unwrap()).unwrap();
        let paths: Vec<&str> = entries.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["c", "d", "d/a", "s"]);
        let a = &entries[2];
        assert_eq!((a.kind, a.size, a.nlink), (EntryKind::File, 5000, 2));
        assert_eq!(a.blocks.len(), 2);
        let want = crash_models::ops::seeded_bytes(9, 5000);
        assert_eq!(a.blocks, crash_models::protocol::block_hashes(&want));
        assert_eq!(
            a.blocks[&1],
            ::blake3::hash(&want[4096..]).to_hex().to_string()
        );
        assert_eq!(entries[0].ino, a.ino, "c is a hard link of d/a");
        assert_eq!(entries[3].target.as_deref(), Some("d/a"));
    }
}
