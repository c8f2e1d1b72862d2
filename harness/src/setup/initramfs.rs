//! The initramfs: a newc cpio archive with the agent as `/init`, the modules one file
//! system needs, and their load order. No shell, no busybox: the agent does everything.
//!
//! The archive is deterministic (inode numbers in order, mtime 0, uid/gid 0), so the same
//! inputs give the same bytes and the same content hash.

use super::modules::ResolvedModule;
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
pub fn build(agent: &[u8], modules: &[ResolvedModule]) -> std::io::Result<Vec<u8>> {
    let order = load_order_text(modules);
    let mut entries: Vec<(cpio::NewcBuilder, Cursor<&[u8]>)> = Vec::new();
    let dir = |name: &str| {
        (
            cpio::NewcBuilder::new(name).mode(S_IFDIR | 0o755).nlink(2),
            Cursor::new(&[][..]),
        )
    };
    for d in ["dev", "proc", "sys", "mnt", "tmp", "modules"] {
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
        let a = build(agent, &mods).unwrap();
        assert_eq!(a, build(agent, &mods).unwrap(), "deterministic");
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
        let console = find("dev/console");
        assert_eq!((console.1 & 0o170000, console.2), (S_IFCHR, (5, 1)));
    }
}
