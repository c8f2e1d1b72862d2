//! Kernel symbols: the function behind a traced program counter.
//!
//! The trace records the PC of every store, flush and fence. [`SymbolTable`] maps a PC
//! to `function+offset [module]` by a sorted address lookup; it reads the
//! `/proc/kallsyms` / `System.map` text format (`ADDR TYPE NAME [MODULE]`).
//!
//! Where the symbols come from ([`kernel_symbols`]): Debian's kernel package ships a
//! placeholder `System.map` ("The real System.map is in the linux-image-<version>-dbg
//! package", one line) and a stripped image, so the one source that works for Debian's
//! kernel and a user's own alike is the running guest's `/proc/kallsyms`: core kernel
//! and modules (ext4, jbd2, xfs, nd_pmem are modules in Debian's kernel), at the
//! addresses they really have. The guests run with `nokaslr`, and every traced guest
//! is restored from a saved VM state, so the module load addresses are those of that
//! saved state, byte for byte: the symbols are read once, from a guest restored from
//! the same state the tracer restores, and cached beside it (`STATE.kallsyms`).

use crate::guest::{GuestError, GuestFactory};
use crash_models::coverage::CodeRanges;
use crash_models::protocol::{AgentMsg, HostMsg};
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// The function [`SymbolTable::copy_routine`] names: the pmem driver's copy into PM
/// (`pmem_do_write` → `memcpy_flushcache`; see `docs/torn-writes.md`).
pub const BLOCK_COPY_SYMBOL: &str = "__memcpy_flushcache";

/// The modules whose code [`SymbolTable::fs_code_ranges`] covers (modules in Debian's
/// kernel; a kernel with them built in has them in the core, unnamed, and its coverage
/// is then the DAX core's alone).
pub const COVERED_MODULES: [&str; 3] = ["ext4", "jbd2", "xfs"];
/// The longest a function is taken to be (the largest in ext4 and xfs are a few KiB).
pub const MAX_FUNCTION: u64 = 64 << 10;

/// Why symbols could not be had.
#[derive(Debug, thiserror::Error)]
pub enum SymbolError {
    /// A line of a symbol file does not parse.
    #[error("{path}:{line}: {reason}: expected `ADDRESS TYPE NAME [MODULE]` (/proc/kallsyms or System.map)")]
    Parse {
        /// The file (or `kallsyms`).
        path: String,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// The guest could not be asked.
    #[error("reading the guest kernel's symbols: {0}")]
    Guest(#[from] GuestError),
    /// The cache file could not be written.
    #[error(transparent)]
    File(#[from] crate::cache::FileError),
    /// A scratch directory could not be made, or the symbols not read from the image.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// One code symbol.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Symbol {
    /// Its address.
    pub addr: u64,
    /// Its name.
    pub name: String,
    /// The module it is in (`None`: the core kernel).
    pub module: Option<String>,
}

/// A PC, resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resolved<'a> {
    /// The function.
    pub name: &'a str,
    /// Bytes past its start.
    pub offset: u64,
    /// Its module.
    pub module: Option<&'a str>,
}

impl fmt::Display for Resolved<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}+{:#x}", self.name, self.offset)?;
        if let Some(m) = self.module {
            write!(f, " [{m}]")?;
        }
        Ok(())
    }
}

/// Code symbols sorted by address.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SymbolTable {
    syms: Vec<Symbol>,
}

impl SymbolTable {
    /// Parse `/proc/kallsyms` or `System.map` text: keeps the code symbols (types `t`,
    /// `T`, `w`, `W`) with a non-zero address, without the `__pfx_` aliases of the
    /// padding before each function. `path` names the source in errors.
    pub fn parse(text: &str, path: &str) -> Result<SymbolTable, SymbolError> {
        let mut syms = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let err = |reason: String| SymbolError::Parse {
                path: path.to_owned(),
                line: i + 1,
                reason,
            };
            let mut f = line.split_whitespace();
            let (Some(addr), Some(kind), Some(name)) = (f.next(), f.next(), f.next()) else {
                return Err(err("fewer than three fields".into()));
            };
            let addr = u64::from_str_radix(addr, 16)
                .map_err(|_| err(format!("`{addr}` is not a hexadecimal address")))?;
            if !matches!(kind, "t" | "T" | "w" | "W") || addr == 0 || name.starts_with("__pfx_") {
                continue;
            }
            let module = match f.next() {
                Some(m) => Some(
                    m.strip_prefix('[')
                        .and_then(|m| m.strip_suffix(']'))
                        .ok_or_else(|| err(format!("`{m}` is not a [module]")))?
                        .to_owned(),
                ),
                None => None,
            };
            syms.push(Symbol {
                addr,
                name: name.to_owned(),
                module,
            });
        }
        syms.sort();
        syms.dedup_by_key(|s| s.addr);
        Ok(SymbolTable { syms })
    }

    /// Code symbols known.
    pub fn len(&self) -> usize {
        self.syms.len()
    }

    /// True when no symbol is known (a kernel without `CONFIG_KALLSYMS`).
    pub fn is_empty(&self) -> bool {
        self.syms.is_empty()
    }

    /// The symbol at or before `pc`.
    pub fn lookup(&self, pc: u64) -> Option<Resolved<'_>> {
        let i = self.syms.partition_point(|s| s.addr <= pc).checked_sub(1)?;
        let s = &self.syms[i];
        Some(Resolved {
            name: &s.name,
            offset: pc - s.addr,
            module: s.module.as_deref(),
        })
    }

    /// `function+offset [module]` of `pc`, or its hexadecimal address.
    pub fn describe(&self, pc: u64) -> String {
        self.lookup(pc)
            .map_or_else(|| format!("{pc:#x}"), |r| r.to_string())
    }

    /// The function name at `pc`, if known.
    pub fn function(&self, pc: u64) -> Option<&str> {
        self.lookup(pc).map(|r| r.name)
    }

    /// The addresses of the (first) function called `name`: from its start to the next
    /// symbol's.
    pub fn range_of(&self, name: &str) -> Option<Range<u64>> {
        let i = self.syms.iter().position(|s| s.name == name)?;
        let end = self.syms.get(i + 1).map_or(u64::MAX, |s| s.addr);
        Some(self.syms[i].addr..end)
    }

    /// The file-system code the fuzzer's coverage counts ([`COVERED_MODULES`] and every
    /// function whose name says DAX, the core's `fs/dax.c` and the drivers' DAX
    /// operations): each function from its start to the next symbol, at most
    /// [`MAX_FUNCTION`] bytes (the last function of a module is followed by the next
    /// module's code, or by nothing).
    pub fn fs_code_ranges(&self) -> CodeRanges {
        CodeRanges::new(self.syms.iter().enumerate().filter_map(|(i, s)| {
            let wanted = s
                .module
                .as_deref()
                .is_some_and(|m| COVERED_MODULES.contains(&m))
                || s.name.contains("dax");
            wanted.then(|| {
                let next = self.syms.get(i + 1).map_or(u64::MAX, |n| n.addr);
                s.addr..next.min(s.addr.saturating_add(MAX_FUNCTION))
            })
        }))
    }

    /// The pmem driver's copy routine ([`BLOCK_COPY_SYMBOL`]), whose stores are the
    /// kernel's block writes to PM.
    pub fn copy_routine(&self) -> Option<Range<u64>> {
        self.range_of(BLOCK_COPY_SYMBOL)
    }
}

/// Coverage in the words of the kernel: blocks and functions per module.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CoverageSummary {
    /// Blocks reached.
    pub blocks: u64,
    /// Per module (`kernel` for the core): blocks and functions reached.
    pub modules: std::collections::BTreeMap<String, (u64, u64)>,
    /// The functions reached, with their blocks, by name.
    pub functions: std::collections::BTreeMap<String, u64>,
}

impl CoverageSummary {
    /// Name the blocks' functions.
    pub fn of(blocks: &crash_models::coverage::Blocks, symbols: &SymbolTable) -> CoverageSummary {
        let mut modules = std::collections::BTreeMap::<String, (u64, u64)>::new();
        let mut functions = std::collections::BTreeMap::<String, u64>::new();
        for &a in blocks.addrs() {
            let (name, module) = symbols
                .lookup(a)
                .map_or((format!("{a:#x}"), "?".to_owned()), |r| {
                    (r.name.to_owned(), r.module.unwrap_or("kernel").to_owned())
                });
            let n = functions.entry(name).or_default();
            let m = modules.entry(module).or_default();
            m.0 += 1;
            if *n == 0 {
                m.1 += 1;
            }
            *n += 1;
        }
        CoverageSummary {
            blocks: blocks.len() as u64,
            modules,
            functions,
        }
    }
}

impl fmt::Display for CoverageSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "coverage: {} blocks of file-system code in {} functions",
            self.blocks,
            self.functions.len()
        )?;
        let per: Vec<String> = self
            .modules
            .iter()
            .map(|(m, (b, n))| format!("{m} {b} blocks/{n} functions"))
            .collect();
        if !per.is_empty() {
            write!(f, " ({})", per.join(", "))?;
        }
        Ok(())
    }
}

/// The cache file of the symbols of guests restored from `state`.
pub fn cache_path(state: &Path) -> PathBuf {
    let mut p = state.as_os_str().to_owned();
    p.push(".kallsyms");
    PathBuf::from(p)
}

/// The guest kernel's code symbols as the factory's traced guests see them (see the
/// module docs): read from the cache beside the saved state the tracer restores, or
/// from a guest restored from that state (once per saved state; the agent writes them to
/// the guest's scratch PM image, which is read here: a few seconds).
pub async fn kernel_symbols(factory: &GuestFactory) -> Result<SymbolTable, SymbolError> {
    let deterministic = factory.deterministic_traces;
    let state = factory.saved_state_in(deterministic).await?;
    let path = cache_path(&state);
    if let Ok(text) = std::fs::read_to_string(&path) {
        return SymbolTable::parse(&text, &path.display().to_string());
    }
    let dir =
        crate::scratch::run_dir(crate::scratch::RUN_PREFIX).map_err(|source| SymbolError::Io {
            what: "create a scratch directory in",
            path: std::env::temp_dir(),
            source,
        })?;
    let img = dir.path().join("pm.img");
    factory.make_image(&img).await?;
    let mut vm = if deterministic {
        factory
            .start_scripted(
                &img,
                None,
                vec![HostMsg::Refresh, HostMsg::Kallsyms, HostMsg::Poweroff],
            )
            .await?
    } else {
        factory.start(&img, None).await?
    };
    let (_, last) = vm
        .request(&HostMsg::Kallsyms, factory.timeouts.request)
        .await
        .map_err(GuestError::from)?;
    vm.shutdown(factory.timeouts.shutdown)
        .await
        .map_err(GuestError::from)?;
    let AgentMsg::Kallsyms { bytes } = last else {
        return Err(SymbolError::Guest(GuestError::Guest(format!(
            "expected the symbols' length, got {last:?}"
        ))));
    };
    let text = read_text(&img, crate::image::FSDAX_DATA_OFFSET, bytes)?;
    let table = SymbolTable::parse(&text, "the guest's /proc/kallsyms")?;
    crate::cache::write_atomic(&path, text.as_bytes())?;
    Ok(table)
}

/// `len` bytes of UTF-8 text at `offset` of the image the agent wrote them to.
fn read_text(img: &Path, offset: u64, len: u64) -> Result<String, SymbolError> {
    use std::os::unix::fs::FileExt;
    let io = |source| SymbolError::Io {
        what: "read the symbols from",
        path: img.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(img).map_err(io)?;
    let mut buf = vec![0u8; usize::try_from(len).unwrap_or(usize::MAX).min(1 << 30)];
    file.read_exact_at(&mut buf, offset).map_err(io)?;
    String::from_utf8(buf).map_err(|e| {
        io(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("not UTF-8 text: {e}"),
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const KALLSYMS: &str = "\
ffffffff81000000 T _text
ffffffff81000000 T startup_64
ffffffff81001000 t secondary_startup_64
ffffffff81a00000 D some_data
ffffffff81b00000 T __memcpy_flushcache
ffffffff81b00200 T __copy_user_nocache
ffffffffc0100000 t ext4_es_insert_extent\t[ext4]
ffffffffc0100400 t ext4_da_write_end\t[ext4]
ffffffffc0200000 T jbd2_journal_commit_transaction\t[jbd2]
0000000000000000 T hidden
";

    #[test]
    fn lookups_name_function_offset_and_module() {
        let t = SymbolTable::parse(KALLSYMS, "test").unwrap();
        // Data and zero addresses are left out; `_text` and `startup_64` coincide.
        assert_eq!(t.len(), 7);
        assert_eq!(t.describe(0xffffffff81000010), "_text+0x10");
        assert_eq!(
            t.describe(0xffffffffc0100404),
            "ext4_da_write_end+0x4 [ext4]"
        );
        assert_eq!(
            t.function(0xffffffffc0200000),
            Some("jbd2_journal_commit_transaction")
        );
        assert_eq!(t.describe(0x1000), "0x1000");
        assert_eq!(
            t.copy_routine(),
            Some(0xffffffff81b00000..0xffffffff81b00200)
        );
        assert_eq!(
            t.range_of("jbd2_journal_commit_transaction"),
            Some(0xffffffffc0200000..u64::MAX)
        );
        assert_eq!(t.range_of("nope"), None);
    }

    #[test]
    fn fs_code_is_the_modules_and_dax_functions() {
        let text =
            format!("{KALLSYMS}ffffffff81c00000 T dax_iomap_rw\nffffffff81c00300 T filemap_read\n");
        let t = SymbolTable::parse(&text, "test").unwrap();
        let r = t.fs_code_ranges();
        assert_eq!(
            r.ranges(),
            [
                0xffffffff81c00000..0xffffffff81c00300,
                // ext4's two functions join; the last is capped (jbd2's code is far),
                // and so is jbd2's, the last symbol.
                0xffffffffc0100000..0xffffffffc0100400 + MAX_FUNCTION,
                0xffffffffc0200000..0xffffffffc0200000 + MAX_FUNCTION,
            ]
        );
        assert!(!r.contains(0xffffffff81c00300));
        assert!(r.contains(0xffffffffc0100404));
    }

    #[test]
    fn debian_placeholder_map_has_no_symbols_and_bad_lines_say_where() {
        let placeholder =
            "ffffffffffffffff B The real System.map is in the linux-image-<version>-dbg package\n";
        assert!(SymbolTable::parse(placeholder, "System.map")
            .unwrap()
            .is_empty());
        let e = SymbolTable::parse("ffffffff81000000 T ok\nzz T bad\n", "map").unwrap_err();
        assert!(e.to_string().starts_with("map:2: `zz`"), "{e}");
        let e = SymbolTable::parse("ffffffff81000000 T\n", "map").unwrap_err();
        assert!(e.to_string().contains("map:1"), "{e}");
        let e = SymbolTable::parse("ffffffff81000000 T f ext4\n", "map").unwrap_err();
        assert!(e.to_string().contains("[module]"), "{e}");
    }
}
