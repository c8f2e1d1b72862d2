//! PM images: the NVDIMM backing files guests run on.
//!
//! A label-less QEMU NVDIMM comes up in raw mode, which has no DAX. The fsdax
//! conversion (done once per kernel and size, in a guest: see
//! [`crate::guest::GuestFactory::template`]) writes an `NVDIMM_PFN_INFO` block at 4 KiB and
//! moves the usable device to [`FSDAX_DATA_OFFSET`]. Every run image is a sparse copy
//! of that template with a file system made on the host at that offset.

use crash_models::ops::FsKind;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where the block device starts in the backing file after the fsdax conversion.
pub const FSDAX_DATA_OFFSET: u64 = 2 << 20;
/// Where the kernel writes the pfn info block.
pub const PFN_INFO_OFFSET: u64 = 4096;
/// The info block's signature.
pub const PFN_SIGNATURE: &[u8; 16] = b"NVDIMM_PFN_INFO\0";
/// Default PM size for ext4 runs: small is fast to make, copy and check.
pub const DEFAULT_EXT4_PM_SIZE: u64 = 64 << 20;
/// Default PM size for XFS runs (mkfs.xfs refuses file systems under 300 MiB).
pub const DEFAULT_XFS_PM_SIZE: u64 = 320 << 20;
/// Smallest XFS file system mkfs.xfs accepts.
pub const MIN_XFS_FS_SIZE: u64 = 300 << 20;

/// Fixed identities so that two images of the same spec are byte-identical and
/// traces of the same workload can be compared exactly.
const EXT4_UUID: &str = "0badc0de-7e57-4a11-9000-0000000000e4";
const EXT4_HASH_SEED: &str = "0badc0de-7e57-4a11-9000-00000000ba5e";
const XFS_UUID: &str = "0badc0de-7e57-4a11-9000-00000000cf5f";
/// mkfs timestamps (e2fsprogs honours this variable).
const FAKE_TIME: &str = "1700000000";

/// Errors making images.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// Local I/O.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A tool failed.
    #[error("{tool} failed ({status}): {stderr}\n(is it installed? run `pmcrash doctor`)")]
    Tool {
        /// The command.
        tool: String,
        /// Its exit status.
        status: String,
        /// What it printed.
        stderr: String,
    },
    /// A size that cannot work.
    #[error("PM size {size} bytes does not fit {fs}: {why}")]
    Size {
        /// The size asked for.
        size: u64,
        /// The file system.
        fs: FsKind,
        /// Why not.
        why: String,
    },
    /// The template does not hold a pfn info block.
    #[error("{0} is not an fsdax template (no NVDIMM_PFN_INFO at 4 KiB); delete it and run again")]
    NotATemplate(PathBuf),
}

impl From<crate::cache::FileError> for ImageError {
    fn from(e: crate::cache::FileError) -> ImageError {
        ImageError::Io {
            what: e.what,
            path: e.path,
            source: e.source,
        }
    }
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ImageError {
    let path = path.to_path_buf();
    move |source| ImageError::Io { what, path, source }
}

/// The default PM size for a file system.
pub fn default_pm_size(fs: FsKind) -> u64 {
    match fs {
        FsKind::Ext4 => DEFAULT_EXT4_PM_SIZE,
        FsKind::Xfs => DEFAULT_XFS_PM_SIZE,
    }
}

/// Check a PM size for a file system: a multiple of 2 MiB (the fsdax alignment),
/// large enough for the file system.
pub fn check_pm_size(fs: FsKind, size: u64) -> Result<(), ImageError> {
    let err = |why: String| ImageError::Size { size, fs, why };
    if size % (2 << 20) != 0 {
        return Err(err("must be a multiple of 2 MiB".into()));
    }
    if size < 16 << 20 {
        return Err(err("must be at least 16 MiB".into()));
    }
    if fs == FsKind::Xfs && size - FSDAX_DATA_OFFSET < MIN_XFS_FS_SIZE {
        return Err(err(format!(
            "XFS needs at least {} MiB of PM (300 MiB file system + 2 MiB fsdax header)",
            (MIN_XFS_FS_SIZE + FSDAX_DATA_OFFSET) >> 20
        )));
    }
    Ok(())
}

/// True when `path` holds a pfn info block (an fsdax template or an image made from one).
pub fn is_fsdax(path: &Path) -> bool {
    let Ok(f) = File::open(path) else {
        return false;
    };
    let mut sig = [0u8; 16];
    f.read_exact_at(&mut sig, PFN_INFO_OFFSET).is_ok() && &sig == PFN_SIGNATURE
}

/// Make a zero-filled (sparse) file of `size` bytes.
pub fn blank(path: &Path, size: u64) -> Result<(), ImageError> {
    let f = File::create(path).map_err(io("create", path))?;
    f.set_len(size).map_err(io("size", path))?;
    Ok(())
}

/// The data regions of `f` within `[from, to)` (SEEK_DATA / SEEK_HOLE), widened to
/// whole 4 KiB pages. Falls back to the whole range when the file system cannot say.
pub fn data_regions(f: &File, from: u64, to: u64) -> Vec<(u64, u64)> {
    const PAGE: u64 = 4096;
    let mut out = Vec::new();
    let mut pos = from;
    while pos < to {
        let data = match crate::sys::seek_data(f, pos) {
            Ok(Some(d)) => d,
            Ok(None) => break, // no more data
            Err(_) => return vec![(from, to)],
        };
        let end = crate::sys::seek_hole(f, data).unwrap_or(to);
        let s = data / PAGE * PAGE;
        let e = end.div_ceil(PAGE) * PAGE;
        out.push((s.max(from), e.min(to)));
        pos = end;
    }
    out
}

/// Copy `src` from byte `src_from` on into `dst` at `dst_at` (source byte
/// `src_from + k` lands at `dst_at + k`), writing only non-zero data regions, so holes
/// stay holes and 300 MiB XFS images copy in milliseconds. `dst` must already be long
/// enough (or grow with the writes).
pub fn copy_sparse(src: &Path, src_from: u64, dst: &File, dst_at: u64) -> Result<(), ImageError> {
    let s = File::open(src).map_err(io("open", src))?;
    let len = s.metadata().map_err(io("stat", src))?.len();
    let mut buf = vec![0u8; 1 << 20];
    for (start, end) in data_regions(&s, src_from, len) {
        let mut off = start;
        while off < end {
            let n = ((end - off) as usize).min(buf.len());
            s.read_exact_at(&mut buf[..n], off)
                .map_err(io("read", src))?;
            // Skip all-zero chunks: the destination is sparse and zero already.
            if buf[..n].iter().any(|b| *b != 0) {
                dst.write_all_at(&buf[..n], dst_at + (off - src_from))
                    .map_err(|source| ImageError::Io {
                        what: "write",
                        path: PathBuf::from("<image>"),
                        source,
                    })?;
            }
            off += n as u64;
        }
    }
    Ok(())
}

fn run_tool(cmd: &mut Command) -> Result<(), ImageError> {
    let tool = format!("{cmd:?}");
    let out = cmd.output().map_err(|e| ImageError::Tool {
        tool: tool.clone(),
        status: "not started".into(),
        stderr: e.to_string(),
    })?;
    if !out.status.success() {
        return Err(ImageError::Tool {
            tool,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(())
}

/// Make a run image at `out`: a copy of the fsdax `template` with a fresh `fs` on the
/// device area. Written to a temporary name and renamed, so a crash never leaves a
/// half-made image under the final name.
pub fn make_fs_image(template: &Path, fs: FsKind, out: &Path) -> Result<(), ImageError> {
    if !is_fsdax(template) {
        return Err(ImageError::NotATemplate(template.to_path_buf()));
    }
    let size = std::fs::metadata(template)
        .map_err(io("stat", template))?
        .len();
    check_pm_size(fs, size)?;
    let tmp = out.with_extension("tmp");
    let f = File::create(&tmp).map_err(io("create", &tmp))?;
    f.set_len(size).map_err(io("size", &tmp))?;
    copy_sparse(template, 0, &f, 0)?;
    let dev_size = size - FSDAX_DATA_OFFSET;
    match fs {
        FsKind::Ext4 => {
            drop(f);
            run_tool(
                Command::new("mkfs.ext4")
                    .env("E2FSPROGS_FAKE_TIME", FAKE_TIME)
                    .args(["-q", "-F", "-b", "4096", "-U", EXT4_UUID, "-E"])
                    .arg(format!(
                        // No lazy init: the kernel's ext4lazyinit thread would zero inode
                        // tables on a timer, making traces differ from run to run.
                        "offset={FSDAX_DATA_OFFSET},hash_seed={EXT4_HASH_SEED},root_owner=0:0,nodiscard,lazy_itable_init=0,lazy_journal_init=0"
                    ))
                    .arg(&tmp)
                    .arg((dev_size / 4096).to_string()),
            )?;
        }
        FsKind::Xfs => {
            let dir = out.parent().unwrap_or(Path::new("."));
            let part = tempfile::Builder::new()
                .prefix(".xfs-")
                .tempfile_in(dir)
                .map_err(io("create", dir))?;
            part.as_file()
                .set_len(dev_size)
                .map_err(io("size", part.path()))?;
            run_tool(
                Command::new("mkfs.xfs")
                    .args(["-q", "-f", "-K", "-m"])
                    .arg(format!("reflink=0,uuid={XFS_UUID}"))
                    .arg(part.path()),
            )?;
            copy_sparse(part.path(), 0, &f, FSDAX_DATA_OFFSET)?;
            f.sync_all().map_err(io("fsync", &tmp))?;
        }
    }
    crate::cache::publish(&tmp, out)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert!(check_pm_size(FsKind::Ext4, 64 << 20).is_ok());
        assert!(check_pm_size(FsKind::Ext4, (64 << 20) + 4096).is_err());
        assert!(check_pm_size(FsKind::Xfs, 256 << 20).is_err());
        assert!(check_pm_size(FsKind::Xfs, DEFAULT_XFS_PM_SIZE).is_ok());
    }

    #[test]
    fn sparse_copy_keeps_data_and_offsets() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        let f = File::create(&src).unwrap();
        f.set_len(8 << 20).unwrap();
        f.write_all_at(b"head", 0).unwrap();
        f.write_all_at(b"tail", (8 << 20) - 4).unwrap();
        drop(f);
        let dst = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join("dst"))
            .unwrap();
        dst.set_len(10 << 20).unwrap();
        copy_sparse(&src, 0, &dst, 1 << 20).unwrap();
        let mut b = [0u8; 4];
        dst.read_exact_at(&mut b, 1 << 20).unwrap();
        assert_eq!(&b, b"head");
        dst.read_exact_at(&mut b, (9 << 20) - 4).unwrap();
        assert_eq!(&b, b"tail");
        dst.read_exact_at(&mut b, 0).unwrap();
        assert_eq!(b, [0; 4]);
    }

    #[test]
    fn a_blank_file_is_not_a_template() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("blank");
        blank(&p, 4 << 20).unwrap();
        assert!(!is_fsdax(&p));
        let err = make_fs_image(&p, FsKind::Ext4, &dir.path().join("out")).unwrap_err();
        assert!(matches!(err, ImageError::NotATemplate(_)), "{err}");
    }
}
