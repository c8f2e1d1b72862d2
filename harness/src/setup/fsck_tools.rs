//! The file-system checkers that run inside checker guests, so that what fsck reads is
//! part of the check the tracer records (`docs/pruning.md`).
//!
//! - ext4: Debian's `e2fsck-static` package (a statically linked `e2fsck`), downloaded
//!   into the cache like the kernel package and never installed on the host; it becomes
//!   `/sbin/e2fsck` in the ext4 initramfs.
//! - XFS: the host's own `xfs_repair` (from `xfsprogs`, which setup installs), with
//!   every shared library it needs (the `DT_NEEDED` closure, read with the `object`
//!   crate) and its dynamic loader, each under its host path in the XFS initramfs.

use super::host_tools;
use super::kernel::{self, dpkg_version_cmp};
use super::{FileStamp, SetupError, Ui};
pub use crate::elf::{elf_deps, ElfDeps, LIBRARY_DIRS};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The Debian package with the static `e2fsck`.
pub const E2FSCK_PACKAGE: &str = "e2fsck-static";
/// Where the guest agent runs `e2fsck` (`guest-agent/src/fsck.rs`).
pub const GUEST_E2FSCK: &str = "sbin/e2fsck";
/// Where the guest agent runs `xfs_repair` (`guest-agent/src/fsck.rs`).
pub const GUEST_XFS_REPAIR: &str = "usr/sbin/xfs_repair";
/// One file for the initramfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestFile {
    /// Path inside the archive, without the leading `/`.
    pub path: String,
    /// Contents.
    pub data: Vec<u8>,
    /// Permission bits.
    pub mode: u32,
}

/// The checker files of one file system, and the host files they came from (a change
/// to any of them rebuilds the initramfs).
#[derive(Debug, Clone, Default)]
pub struct FsckFiles {
    /// Files to put into the initramfs.
    pub files: Vec<GuestFile>,
    /// Their sources.
    pub inputs: Vec<FileStamp>,
}

/// Every shared library of the host's `xfs_repair`, as (path inside the guest, host
/// file), the binary first.
pub fn needed_closure(bin: &Path, dirs: &[&str]) -> Result<Vec<(String, PathBuf)>, SetupError> {
    crate::elf::needed_closure(bin, dirs).map_err(|e| match e {
        crate::elf::ElfError::Io { path, source } => SetupError::io(&path, source),
        crate::elf::ElfError::Bad { path, reason } => SetupError::FsckTool {
            path,
            reason: format!("{reason} (a guest fsck tool; reinstall xfsprogs)"),
        },
    })
}

/// The XFS checker: the host's `xfs_repair` and its closure.
pub fn xfs_repair() -> Result<FsckFiles, SetupError> {
    let bin = host_tools::which("xfs_repair").ok_or_else(|| SetupError::StillMissing {
        problems: "xfs_repair is not installed (apt-get install xfsprogs)".into(),
    })?;
    let mut files = FsckFiles::default();
    for (i, (guest, host)) in needed_closure(&bin, LIBRARY_DIRS)?.into_iter().enumerate() {
        let data = std::fs::read(&host).map_err(|e| SetupError::io(&host, e))?;
        files.inputs.extend(FileStamp::of(&host));
        files.files.push(GuestFile {
            path: if i == 0 {
                GUEST_XFS_REPAIR.into()
            } else {
                guest
            },
            data,
            mode: 0o755,
        });
    }
    Ok(files)
}

/// A Debian package's newest .deb in the cache's `debs/` (downloaded with `apt-get
/// download` when there is none, never installed on the host), and its files unpacked
/// into a temporary directory there.
pub(super) fn unpacked_deb(
    cache: &Path,
    package: &str,
    ui: &Ui,
) -> Result<(PathBuf, tempfile::TempDir), SetupError> {
    let debs = crate::cache::debs_dir(cache);
    let prefix = format!("{package}_");
    let newest = std::fs::read_dir(&debs)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with(&prefix) && n.ends_with(".deb"))
        .max_by(|a, b| dpkg_version_cmp(a, b));
    let name = match newest {
        Some(n) => n,
        None => kernel::download(cache, package, ui)?,
    };
    let deb = debs.join(&name);
    let tmp = tempfile::Builder::new()
        .prefix(".unpack-")
        .tempdir_in(&debs)
        .map_err(|e| SetupError::io(&debs, e))?;
    host_tools::run_command(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(tmp.path()))?;
    Ok((deb, tmp))
}

/// The bytes of `bin`, unpacked from `deb`, which must be a statically linked ELF.
pub(super) fn read_static(bin: &Path, deb: &Path) -> Result<Vec<u8>, SetupError> {
    let data = std::fs::read(bin).map_err(|e| SetupError::io(bin, e))?;
    let deps = elf_deps(&data).map_err(|reason| SetupError::FsckTool {
        path: bin.to_path_buf(),
        reason,
    })?;
    if deps.interp.is_some() || !deps.needed.is_empty() {
        return Err(SetupError::FsckTool {
            path: deb.to_path_buf(),
            reason: format!(
                "its {} is not statically linked",
                bin.file_name().unwrap_or_default().to_string_lossy()
            ),
        });
    }
    Ok(data)
}

/// The ext4 checker: the static `e2fsck` from Debian's `e2fsck-static` package,
/// downloaded into the cache's `debs/` once.
pub(super) fn e2fsck(cache: &Path, ui: &Ui) -> Result<FsckFiles, SetupError> {
    let (deb, tmp) = unpacked_deb(cache, E2FSCK_PACKAGE, ui)?;
    let bin = ["sbin/e2fsck.static", "usr/sbin/e2fsck.static"]
        .iter()
        .map(|p| tmp.path().join(p))
        .find(|p| p.is_file())
        .ok_or_else(|| SetupError::FsckTool {
            path: deb.clone(),
            reason:
                "the package holds no sbin/e2fsck.static; delete it and run `pmcrash setup` again"
                    .into(),
        })?;
    let data = read_static(&bin, &deb)?;
    Ok(FsckFiles {
        files: vec![GuestFile {
            path: GUEST_E2FSCK.into(),
            data,
            mode: 0o755,
        }],
        inputs: FileStamp::of(&deb).into_iter().collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hosts_xfs_repair_closure_has_its_loader_and_libc() {
        let bin = host_tools::which("xfs_repair")
            .expect("xfs_repair must be installed (apt-get install xfsprogs)");
        let c = needed_closure(&bin, LIBRARY_DIRS).unwrap();
        assert_eq!(c[0].1, bin);
        let guest: Vec<&str> = c.iter().map(|(g, _)| g.as_str()).collect();
        assert!(guest.contains(&"lib64/ld-linux-x86-64.so.2"), "{guest:?}");
        assert!(guest.iter().any(|g| g.ends_with("/libc.so.6")), "{guest:?}");
        assert!(
            guest.iter().any(|g| g.ends_with("/liburcu.so.8")),
            "{guest:?}"
        );
        // Every library's own needs are in the closure too.
        for (_, h) in &c {
            let d = elf_deps(&std::fs::read(h).unwrap()).unwrap();
            for n in d.needed {
                assert!(guest.iter().any(|g| g.ends_with(&format!("/{n}"))), "{n}");
            }
        }
        let deps = elf_deps(&std::fs::read(&bin).unwrap()).unwrap();
        assert_eq!(deps.interp.as_deref(), Some("/lib64/ld-linux-x86-64.so.2"));
    }

    #[test]
    fn a_static_elf_needs_nothing() {
        let d = elf_deps(super::super::AGENT_ELF).unwrap();
        assert_eq!(d, ElfDeps::default());
        assert!(elf_deps(b"not an elf").is_err());
    }
}
