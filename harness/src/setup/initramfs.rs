//! The initramfs: a newc cpio archive with the agent as `/init`, the modules one file
//! system needs, their load order, and that file system's checker with what it needs to
//! run ([`super::fsck_tools`]). No shell, no busybox: the agent does everything else.
//!
//! The archive is deterministic (inode numbers in order, mtime 0, uid/gid 0), so the same
//! inputs give the same bytes and the same content hash.

use super::fsck_tools::GuestFile;
use super::modules::ResolvedModule;
use std::collections::BTreeSet;
use std::io::Cursor;

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFCHR: u32 = 0o020000;

/// The name of the load-order file inside the archive.
pub const LOAD_ORDER: &str = "modules/load-order";

/// The text of `/modules/load-order`: one module file name per line, in load order.
pub fn load_order_text(modules: &[ResolvedModule]) -> String {
    modules.iter().map(|m| format!("{}.ko\n", m.name)).collect()
}

/// Builds the archive.
///
/// `/dev/console` (char 5:1) is included because the kernel opens it for PID 1's stdin,
/// stdout and stderr *before* running `/init`, when devtmpfs is not mounted yet (the kernel
/// auto-mounts devtmpfs only for a disk root, not for an initramfs): without it the agent
/// would start with no standard streams.
///
/// `extra` files go in under their paths, after a directory entry for each parent the
/// archive does not have yet (the kernel's unpacker makes no missing parents).
pub fn build(
    agent: &[u8],
    modules: &[ResolvedModule],
    extra: &[GuestFile],
) -> std::io::Result<Vec<u8>> {
    let order = load_order_text(modules);
    let mut entries: Vec<(cpio::NewcBuilder, Cursor<&[u8]>)> = Vec::new();
    let dir = |name: &str| {
        (
            cpio::NewcBuilder::new(name).mode(S_IFDIR | 0o755).nlink(2),
            Cursor::new(&[][..]),
        )
    };
    let mut dirs: BTreeSet<String> = BTreeSet::new();
    for d in ["dev", "proc", "sys", "mnt", "tmp", "modules"] {
        dirs.insert(d.into());
        entries.push(dir(d));
    }
    entries.push((
        cpio::NewcBuilder::new("dev/console")
            .mode(S_IFCHR | 0o600)
            .rdev_major(5)
            .rdev_minor(1),
        Cursor::new(&[][..]),
    ));
    entries.push((
        cpio::NewcBuilder::new("init").mode(S_IFREG | 0o755),
        Cursor::new(agent),
    ));
    for m in modules {
        entries.push((
            cpio::NewcBuilder::new(&format!("modules/{}.ko", m.name)).mode(S_IFREG | 0o644),
            Cursor::new(&m.data[..]),
        ));
    }
    entries.push((
        cpio::NewcBuilder::new(LOAD_ORDER).mode(S_IFREG | 0o644),
        Cursor::new(order.as_bytes()),
    ));
    for f in extra {
        let parts: Vec<&str> = f.path.split('/').collect();
        for i in 1..parts.len() {
            let parent = parts[..i].join("/");
            if dirs.insert(parent.clone()) {
                entries.push(dir(&parent));
            }
        }
        entries.push((
            cpio::NewcBuilder::new(&f.path).mode(S_IFREG | (f.mode & 0o7777)),
            Cursor::new(&f.data[..]),
        ));
    }
    // `write_cpio` numbers inodes from 0; the kernel treats inode numbers only as hard-link
    // keys (nlink > 1), so that is fine.
    cpio::write_cpio(entries.into_iter(), Vec::new())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// (name, mode, (rdev major, minor), contents).
    type Entry = (String, u32, (u32, u32), Vec<u8>);

    /// Reads an archive back.
    fn read_back(mut data: &[u8]) -> Vec<Entry> {
        let mut out = Vec::new();
        loop {
            let mut r = cpio::NewcReader::new(data).unwrap();
            if r.entry().is_trailer() {
                break;
            }
            let e = r.entry();
            let (name, mode, rdev) = (
                e.name().to_string(),
                e.mode(),
                (e.rdev_major(), e.rdev_minor()),
            );
            let mut buf = Vec::new();
            r.read_to_end(&mut buf).unwrap();
            out.push((name, mode, rdev, buf));
            data = r.finish().unwrap();
        }
        out
    }

    #[test]
    fn round_trip() {
        let mods = vec![
            ResolvedModule {
                name: "libnvdimm".into(),
                data: vec![1, 2, 3],
            },
            ResolvedModule {
                name: "nd_pmem".into(),
                data: b"odd-size".to_vec(),
            },
        ];
        let agent = b"\x7fELF fake agent";
        let extra = vec![
            GuestFile {
                path: "usr/sbin/xfs_repair".into(),
                data: b"bin".to_vec(),
                mode: 0o755,
            },
            GuestFile {
                path: "usr/lib/x/libz.so".into(),
                data: b"lib".to_vec(),
                mode: 0o644,
            },
        ];
        let a = build(agent, &mods, &extra).unwrap();
        assert_eq!(a, build(agent, &mods, &extra).unwrap(), "deterministic");
        let entries = read_back(&a);
        let find = |n: &str| {
            entries
                .iter()
                .find(|e| e.0 == n)
                .unwrap_or_else(|| panic!("{n} missing"))
        };
        let init = find("init");
        assert_eq!(init.1, S_IFREG | 0o755);
        assert_eq!(init.3, agent);
        assert_eq!(find("modules/nd_pmem.ko").3, b"odd-size");
        assert_eq!(find("modules/libnvdimm.ko").3, [1, 2, 3]);
        assert_eq!(find(LOAD_ORDER).3, b"libnvdimm.ko\nnd_pmem.ko\n");
        for d in ["dev", "proc", "sys", "mnt", "tmp"] {
            assert_eq!(find(d).1 & 0o170000, S_IFDIR);
        }
        assert_eq!(find("usr/sbin/xfs_repair").3, b"bin");
        assert_eq!(find("usr/lib/x/libz.so").1, S_IFREG | 0o644);
        // Every parent comes before its children, once.
        let names: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
        for d in ["usr", "usr/sbin", "usr/lib", "usr/lib/x"] {
            let at = names.iter().position(|n| *n == d).unwrap();
            assert_eq!(names.iter().filter(|n| **n == d).count(), 1);
            assert!(
                at < names
                    .iter()
                    .position(|n| *n == "usr/lib/x/libz.so")
                    .unwrap()
            );
            assert_eq!(find(d).1 & 0o170000, S_IFDIR);
        }
        let console = find("dev/console");
        assert_eq!((console.1 & 0o170000, console.2), (S_IFCHR, (5, 1)));
    }
}
