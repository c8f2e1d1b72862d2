//! ELF files the guest needs from the host: a dynamic executable's loader and its
//! `DT_NEEDED` closure, read with the `object` crate. Used for the XFS initramfs's
//! `xfs_repair` (`setup::fsck_tools`) and for users' programs (`programs`).

use object::read::elf::{Dyn, ElfFile64, FileHeader, ProgramHeader};
use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};

/// Directories searched for a `DT_NEEDED` library without a `RUNPATH`: Debian's
/// multiarch directories first, as its loader does.
pub const LIBRARY_DIRS: &[&str] = &[
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib64",
    "/usr/lib64",
    "/lib",
    "/usr/lib",
];

/// An ELF file that cannot be read, or whose needs cannot be met.
#[derive(Debug, thiserror::Error)]
pub enum ElfError {
    /// A file could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Not a 64-bit ELF file, or a library it needs is nowhere to be found.
    #[error("{}: {reason}", path.display())]
    Bad {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// What an ELF file asks of the dynamic loader.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ElfDeps {
    /// `PT_INTERP`: the loader's path (`None` for a static executable or a library).
    pub interp: Option<String>,
    /// `DT_NEEDED` names, in order.
    pub needed: Vec<String>,
    /// `DT_RUNPATH` and `DT_RPATH` directories.
    pub runpath: Vec<String>,
}

/// Reads [`ElfDeps`] from a 64-bit ELF file's bytes.
pub fn elf_deps(data: &[u8]) -> Result<ElfDeps, String> {
    let elf = ElfFile64::<object::Endianness>::parse(data).map_err(|e| e.to_string())?;
    let e = elf.endian();
    let mut out = ElfDeps::default();
    for ph in elf.elf_program_headers() {
        if let Some(i) = ph.interpreter(e, data).map_err(|e| e.to_string())? {
            out.interp = Some(String::from_utf8_lossy(i).into_owned());
        }
    }
    let sections = elf
        .elf_header()
        .sections(e, data)
        .map_err(|e| e.to_string())?;
    if let Some((dyns, link)) = sections.dynamic(e, data).map_err(|e| e.to_string())? {
        let strings = sections.strings(e, data, link).map_err(|e| e.to_string())?;
        for d in dyns {
            let tag = d.tag32(e);
            let name = || {
                d.string(e, strings)
                    .map(|s| String::from_utf8_lossy(s).into_owned())
                    .map_err(|e| e.to_string())
            };
            match tag {
                Some(object::elf::DT_NEEDED) => out.needed.push(name()?),
                Some(object::elf::DT_RUNPATH | object::elf::DT_RPATH) => {
                    out.runpath.extend(name()?.split(':').map(str::to_owned))
                }
                _ => {}
            }
        }
    }
    Ok(out)
}

/// The files `bin` needs to run: itself, its loader and the `DT_NEEDED` closure, as
/// (path inside the guest, the host file to read), the binary first. Each library is
/// found in the object's `RUNPATH`, then in `dirs`; `$ORIGIN` is not supported.
pub fn needed_closure(bin: &Path, dirs: &[&str]) -> Result<Vec<(String, PathBuf)>, ElfError> {
    let bad = |path: &Path, reason: String| ElfError::Bad {
        path: path.to_path_buf(),
        reason,
    };
    let mut out: BTreeMap<String, PathBuf> = BTreeMap::new();
    let mut order = vec![];
    let mut queue = VecDeque::from([(guest_path(bin), bin.to_path_buf())]);
    while let Some((guest, host)) = queue.pop_front() {
        if out.contains_key(&guest) {
            continue;
        }
        let data = std::fs::read(&host).map_err(|source| ElfError::Io {
            path: host.clone(),
            source,
        })?;
        let deps = elf_deps(&data).map_err(|r| bad(&host, r))?;
        out.insert(guest.clone(), host.clone());
        order.push(guest);
        if let Some(i) = deps.interp {
            queue.push_back((guest_path(Path::new(&i)), PathBuf::from(&i)));
        }
        for lib in &deps.needed {
            let found = deps
                .runpath
                .iter()
                .map(String::as_str)
                .chain(dirs.iter().copied())
                .map(|d| Path::new(d).join(lib))
                .find(|p| p.is_file())
                .ok_or_else(|| {
                    bad(
                        &host,
                        format!("needs {lib}, found in none of {}", dirs.join(", ")),
                    )
                })?;
            queue.push_back((guest_path(&found), found));
        }
    }
    Ok(order
        .into_iter()
        .map(|g| {
            let h = out[&g].clone();
            (g, h)
        })
        .collect())
}

/// A host path as a path in the guest's root, without the leading `/`.
pub fn guest_path(p: &Path) -> String {
    p.to_string_lossy().trim_start_matches('/').to_owned()
}
