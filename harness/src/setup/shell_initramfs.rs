//! The debug initramfs of `pmcrash shell` (and of the command line `pmcrash export`
//! prints): a file system's initramfs ([`super::initramfs`]) with the agent's `/init`
//! replaced by a shell script, and Debian's `busybox-static` as `/bin/busybox`. The
//! script loads the same modules in the same order, mounts `/dev/pmem0` with DAX on
//! `/mnt` (the real kernel's recovery of a crash image) and hands the console to a
//! shell; leaving the shell powers the guest off.
//!
//! The package is downloaded into the cache's `debs/` like `e2fsck-static` (never
//! installed on the host); the archive is cached under `initramfs/` by the names of
//! what it is made of, so it is built once per file-system initramfs and busybox.

use super::fsck_tools::unpacked_deb;
use super::{Assets, FsKind, SetupError, Ui};
use std::io::{Cursor, Read};
use std::path::{Path, PathBuf};

/// The Debian package with the static busybox.
pub const BUSYBOX_PACKAGE: &str = "busybox-static";
/// Where the busybox binary is, in the package and in the archive.
pub const BUSYBOX: &str = "bin/busybox";
/// The mount point of the recovered file system in the shell guest.
pub const MOUNT_POINT: &str = "/mnt";
/// The line the script prints once the shell starts (the test waits for it).
pub const READY: &str = "pmcrash shell: ready";
/// Bumped when the archive's layout changes (the cache name holds it, and the script).
const VERSION: u32 = 1;

const S_IFREG: u32 = 0o100000;

/// The `/init` script of the shell initramfs of `fs`.
pub fn init_script(fs: FsKind) -> String {
    format!(
        r#"#!/bin/busybox sh
/bin/busybox mkdir -p /bin /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
export PATH=/sbin:/usr/sbin:/bin:/usr/bin HOME=/ PS1='pmcrash# '
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
while read m; do
  insmod /modules/$m || echo "pmcrash shell: insmod $m failed"
done < /{order}
i=0
while [ ! -b /dev/pmem0 ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
echo "pmcrash shell: mounting /dev/pmem0 ({fs}, -o dax) on {mnt}: the kernel recovers the crash image"
if mount -t {fs} -o dax /dev/pmem0 {mnt}; then
  echo "pmcrash shell: mounted (\`dmesg\` shows the kernel's recovery)"
else
  echo "pmcrash shell: the mount FAILED; the kernel said:"
  dmesg | tail -n 20
fi
echo "pmcrash shell: the recovered file system is on {mnt}; the checker is {fsck}"
echo "pmcrash shell: \`exit\` or \`poweroff -f\` ends the guest"
echo "{ready}"
setsid cttyhack sh
umount {mnt} 2>/dev/null
poweroff -f
"#,
        order = super::initramfs::LOAD_ORDER,
        fs = fs.name(),
        mnt = MOUNT_POINT,
        fsck = match fs {
            FsKind::Ext4 => "/sbin/e2fsck",
            FsKind::Xfs => "/usr/sbin/xfs_repair",
        },
        ready = READY,
    )
}

/// The shell initramfs: every entry of `base` but its `/init`, then busybox and the
/// script as `/init`. Deterministic like `base`.
pub fn build(base: &[u8], busybox: &[u8], fs: FsKind) -> std::io::Result<Vec<u8>> {
    let script = init_script(fs);
    let mut entries: Vec<(cpio::NewcBuilder, Cursor<Vec<u8>>)> = Vec::new();
    let mut data = base;
    let mut has_bin = false;
    loop {
        let mut r = cpio::NewcReader::new(data)?;
        if r.entry().is_trailer() {
            break;
        }
        let e = r.entry();
        let (name, mode, nlink) = (e.name().to_owned(), e.mode(), e.nlink());
        let (major, minor) = (e.rdev_major(), e.rdev_minor());
        let mut buf = Vec::new();
        r.read_to_end(&mut buf)?;
        data = r.finish()?;
        if name == "init" {
            continue;
        }
        has_bin |= name == "bin";
        entries.push((
            cpio::NewcBuilder::new(&name)
                .mode(mode)
                .nlink(nlink)
                .rdev_major(major)
                .rdev_minor(minor),
            Cursor::new(buf),
        ));
    }
    if !has_bin {
        entries.push((
            cpio::NewcBuilder::new("bin").mode(0o040755).nlink(2),
            Cursor::new(Vec::new()),
        ));
    }
    entries.push((
        cpio::NewcBuilder::new(BUSYBOX).mode(S_IFREG | 0o755),
        Cursor::new(busybox.to_vec()),
    ));
    entries.push((
        cpio::NewcBuilder::new("init").mode(S_IFREG | 0o755),
        Cursor::new(script.into_bytes()),
    ));
    cpio::write_cpio(entries.into_iter(), Vec::new())
}

/// The shell initramfs of `fs` for these assets, built (and busybox downloaded) if
/// the cache has none yet. `progress` shows the steps on stderr.
pub fn ensure(assets: &Assets, fs: FsKind, progress: bool) -> Result<PathBuf, SetupError> {
    let cache = &assets.cache_dir;
    let base_path = assets
        .initramfs
        .get(&fs)
        .ok_or_else(|| SetupError::InvalidOptions(format!("no {fs} initramfs was built")))?;
    let _lock = super::CacheLock::take(cache)?;
    let ui = Ui::new(progress);
    ui.step(format!(
        "collecting {BUSYBOX_PACKAGE} for the {fs} shell initramfs"
    ));
    let (deb, tmp) = unpacked_deb(cache, BUSYBOX_PACKAGE, &ui)?;
    let name = format!(
        "shell-{}.cpio",
        &blake3::hash(
            format!(
                "{VERSION}\0{}\0{}\0{}",
                init_script(fs),
                file_name(base_path),
                file_name(&deb)
            )
            .as_bytes()
        )
        .to_hex()[..32]
    );
    let path = crate::cache::initramfs_dir(cache).join(name);
    if path.is_file() {
        return Ok(path);
    }
    let bin = tmp.path().join(BUSYBOX);
    let busybox = super::fsck_tools::read_static(&bin, &deb)?;
    let base = std::fs::read(base_path).map_err(|e| SetupError::io(base_path, e))?;
    ui.step(format!("building the {fs} shell initramfs"));
    let archive = build(&base, &busybox, fs).map_err(|e| SetupError::io(base_path, e))?;
    crate::cache::write_atomic(&path, &archive)?;
    ui.done(format!("{fs} shell initramfs: {}", path.display()));
    Ok(path)
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(mut data: &[u8]) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        loop {
            let mut r = cpio::NewcReader::new(data).unwrap();
            if r.entry().is_trailer() {
                return out;
            }
            let n = r.entry().name().to_owned();
            let mut buf = Vec::new();
            r.read_to_end(&mut buf).unwrap();
            out.push((n, buf));
            data = r.finish().unwrap();
        }
    }

    #[test]
    fn the_agent_is_replaced_by_the_script_and_everything_else_is_kept() {
        let m = vec![super::super::modules::ResolvedModule {
            name: "nd_pmem".into(),
            data: b"ko".to_vec(),
        }];
        let base = super::super::initramfs::build(b"AGENT", &m, &[]).unwrap();
        let a = build(&base, b"BUSYBOX", FsKind::Xfs).unwrap();
        assert_eq!(a, build(&base, b"BUSYBOX", FsKind::Xfs).unwrap());
        let e = names(&a);
        let get = |n: &str| e.iter().find(|x| x.0 == n).map(|x| x.1.clone());
        assert_eq!(get("modules/nd_pmem.ko").unwrap(), b"ko");
        assert_eq!(get(BUSYBOX).unwrap(), b"BUSYBOX");
        let init = String::from_utf8(get("init").unwrap()).unwrap();
        assert!(init.starts_with("#!/bin/busybox sh"), "{init}");
        assert!(
            init.contains("mount -t xfs -o dax /dev/pmem0 /mnt"),
            "{init}"
        );
        assert!(!e.iter().any(|x| x.1 == b"AGENT"), "the agent is gone");
        assert_eq!(e.iter().filter(|x| x.0 == "init").count(), 1);
        assert!(e.iter().any(|x| x.0 == "dev/console"));
    }
}
