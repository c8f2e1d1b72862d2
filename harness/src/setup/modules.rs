//! Kernel modules: finding them in a `lib/modules/<release>` tree, reading their
//! `.modinfo`, and ordering them so that every module loads after what it needs.
//!
//! Debian's kernel package ships no `modules.dep` (depmod runs at install time, and we never
//! install the package), so dependencies come from each module's own `.modinfo` ELF section:
//! `depends=` (hard dependencies, by module name) and `softdep=pre: ...` (modules or aliases
//! that modprobe loads first, e.g. ext4's `crypto-crc32c`).

use super::SetupError;
use crate::setup::FsKind;
use object::{Object, ObjectSection};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};

/// The modules a guest running `fs` needs, as roots of the dependency walk.
///
/// `crc32c_generic` is listed explicitly: ext4, jbd2 and libcrc32c only name the alias
/// `crypto-crc32c`/`crc32c` as a soft dependency, and without a provider their checksums
/// fail at mount time.
pub fn roots(fs: FsKind) -> &'static [&'static str] {
    match fs {
        FsKind::Ext4 => &["crc32c_generic", "ext4", "nd_pmem", "nd_btt", "nfit"],
        FsKind::Xfs => &["crc32c_generic", "xfs", "nd_pmem", "nd_btt", "nfit"],
    }
}

/// Module names use `-` and `_` interchangeably (the kernel treats them alike).
pub fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

/// What a module's `.modinfo` says about its place in a load order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModInfo {
    /// `name=`, normalised.
    pub name: String,
    /// `depends=`: modules that must be loaded first.
    pub depends: Vec<String>,
    /// `softdep=pre:` entries: module names or aliases to load first if available.
    pub softdep_pre: Vec<String>,
    /// `alias=` entries, used to resolve other modules' soft dependencies.
    pub aliases: Vec<String>,
}

impl ModInfo {
    /// Parses the raw contents of a `.modinfo` section (NUL-separated `key=value` strings).
    pub fn parse(section: &[u8]) -> ModInfo {
        let mut info = ModInfo::default();
        for entry in section.split(|&b| b == 0) {
            let Ok(entry) = std::str::from_utf8(entry) else {
                continue;
            };
            let Some((key, value)) = entry.split_once('=') else {
                continue;
            };
            match key {
                "name" => info.name = normalize(value.trim()),
                "depends" => info.depends.extend(
                    value
                        .split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(normalize),
                ),
                "softdep" => {
                    // "pre: a b post: c" — only `pre:` constrains the order.
                    let mut in_pre = false;
                    for tok in value.split_whitespace() {
                        match tok {
                            "pre:" => in_pre = true,
                            "post:" => in_pre = false,
                            t if in_pre => info.softdep_pre.push(normalize(t)),
                            _ => {}
                        }
                    }
                }
                "alias" => info.aliases.push(normalize(value.trim())),
                _ => {}
            }
        }
        info
    }

    /// Reads the `.modinfo` section of an (uncompressed) module ELF file.
    pub fn from_elf(data: &[u8]) -> Result<ModInfo, String> {
        let file = object::File::parse(data).map_err(|e| format!("not an ELF module: {e}"))?;
        let section = file
            .section_by_name(".modinfo")
            .ok_or_else(|| "no .modinfo section".to_string())?;
        let bytes = section.data().map_err(|e| format!(".modinfo: {e}"))?;
        Ok(ModInfo::parse(bytes))
    }
}

/// Where each module of a `lib/modules/<release>` tree lives, and which are built in.
#[derive(Debug, Default)]
pub struct ModuleTree {
    /// The tree's root (`.../lib/modules/<release>`).
    pub dir: PathBuf,
    /// Normalised module name -> file (`.ko`, `.ko.xz`, `.ko.zst` or `.ko.gz`).
    pub files: BTreeMap<String, PathBuf>,
    /// Normalised names from `modules.builtin`.
    pub builtin: BTreeSet<String>,
}

/// The module name of a file name, if it is a module (`ext4.ko.xz` -> `ext4`).
fn module_name(file_name: &str) -> Option<String> {
    for ext in [".ko", ".ko.xz", ".ko.zst", ".ko.gz"] {
        if let Some(stem) = file_name.strip_suffix(ext) {
            return Some(normalize(stem));
        }
    }
    None
}

impl ModuleTree {
    /// Indexes a module tree. Symbolic links are not followed: `build` and `source` in a
    /// developer's tree point at whole kernel source trees.
    pub fn scan(dir: &Path) -> Result<ModuleTree, SetupError> {
        let mut tree = ModuleTree {
            dir: dir.to_path_buf(),
            ..Default::default()
        };
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            let entries = std::fs::read_dir(&d).map_err(|e| SetupError::io(&d, e))?;
            let mut entries: Vec<_> = entries
                .collect::<Result<_, _>>()
                .map_err(|e| SetupError::io(&d, e))?;
            // Sorted, so that a name present twice resolves the same way every time.
            entries.sort_by_key(|e| e.file_name());
            for entry in entries {
                let ft = entry
                    .file_type()
                    .map_err(|e| SetupError::io(entry.path(), e))?;
                if ft.is_dir() {
                    stack.push(entry.path());
                } else if ft.is_file() {
                    if let Some(name) = entry.file_name().to_str().and_then(module_name) {
                        tree.files.entry(name).or_insert_with(|| entry.path());
                    }
                }
            }
        }
        match std::fs::read_to_string(dir.join("modules.builtin")) {
            Ok(text) => {
                for line in text.lines() {
                    let base = line.rsplit('/').next().unwrap_or(line);
                    if let Some(name) = module_name(base) {
                        tree.builtin.insert(name);
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(SetupError::io(dir.join("modules.builtin"), e)),
        }
        Ok(tree)
    }
}

/// Reads a module file and decompresses it according to its extension.
pub fn read_module(path: &Path) -> Result<Vec<u8>, SetupError> {
    let raw = std::fs::read(path).map_err(|e| SetupError::io(path, e))?;
    let name = path.to_string_lossy();
    let bad = |e: std::io::Error| SetupError::BadModule {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let mut out = Vec::with_capacity(raw.len() * 4);
    if name.ends_with(".xz") {
        xz2::read::XzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(bad)?;
    } else if name.ends_with(".zst") {
        zstd::stream::read::Decoder::new(&raw[..])
            .map_err(bad)?
            .read_to_end(&mut out)
            .map_err(bad)?;
    } else if name.ends_with(".gz") {
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(bad)?;
    } else {
        out = raw;
    }
    Ok(out)
}

/// One module in a resolved load order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedModule {
    /// Normalised module name; the initramfs holds it as `/modules/<name>.ko`.
    pub name: String,
    /// The decompressed module.
    pub data: Vec<u8>,
}

/// The outcome of resolving a module set.
#[derive(Debug, Clone, Default)]
pub struct Resolution {
    /// Modules to load, dependencies first.
    pub order: Vec<ResolvedModule>,
    /// Modules needed but built into the kernel (nothing to load).
    pub builtin: Vec<String>,
}

/// How a module name resolves in some tree.
pub enum Found {
    /// A loadable module with its decompressed bytes and `.modinfo`.
    Module(Vec<u8>, ModInfo),
    /// Built into the kernel.
    Builtin,
    /// Neither.
    Missing,
}

/// Resolves `roots` and everything they depend on in `tree`, in load order.
///
/// A module not in the tree is built in if `modules.builtin` lists it — or, when the tree has
/// no `modules.builtin` (a bring-your-own build), if it is simply absent: only a missing
/// *root* is an error then, since a dependency named by a module that exists must be
/// somewhere.
pub fn resolve_tree(tree: &ModuleTree, roots: &[&str]) -> Result<Resolution, SetupError> {
    let has_builtin_list = tree.dir.join("modules.builtin").exists();
    resolve(roots, |name, is_root| {
        if let Some(path) = tree.files.get(name) {
            let data = read_module(path)?;
            let info = ModInfo::from_elf(&data).map_err(|reason| SetupError::BadModule {
                path: path.clone(),
                reason,
            })?;
            Ok(Found::Module(data, info))
        } else if tree.builtin.contains(name) || (!is_root && !has_builtin_list) {
            Ok(Found::Builtin)
        } else {
            Ok(Found::Missing)
        }
    })
    .map_err(|e| match e {
        SetupError::ModuleNotFound { name, .. } => SetupError::ModuleNotFound {
            name,
            dir: tree.dir.clone(),
        },
        e => e,
    })
}

/// The dependency walk and topological sort, independent of where modules come from.
///
/// `lookup(name, is_root)` finds one module. Hard dependencies (`depends=`) must resolve
/// (to a file or a built-in); soft pre-dependencies are honoured when they name a module
/// file directly (modprobe would load it) or an alias of a module already in the set
/// (`crypto-crc32c` -> `crc32c_generic`), and ignored otherwise, as modprobe ignores an
/// unresolvable softdep. The order is a depth-first post-order from the roots in the given
/// order, soft dependencies before hard ones, each list in its `.modinfo` order: the same
/// inputs always give the same order.
pub fn resolve(
    roots: &[&str],
    mut lookup: impl FnMut(&str, bool) -> Result<Found, SetupError>,
) -> Result<Resolution, SetupError> {
    let mut mods: HashMap<String, (Vec<u8>, ModInfo)> = HashMap::new();
    let mut builtin: BTreeSet<String> = BTreeSet::new();
    let mut absent_soft: BTreeSet<String> = BTreeSet::new();
    // Work list: (name, is_root, is_soft).
    let mut work: Vec<(String, bool, bool)> = roots
        .iter()
        .rev()
        .map(|r| (normalize(r), true, false))
        .collect();
    while let Some((name, is_root, is_soft)) = work.pop() {
        if mods.contains_key(&name) || builtin.contains(&name) || absent_soft.contains(&name) {
            continue;
        }
        match lookup(&name, is_root)? {
            Found::Module(data, info) => {
                for d in info.depends.iter().rev() {
                    work.push((d.clone(), false, false));
                }
                for s in info.softdep_pre.iter().rev() {
                    work.push((s.clone(), false, true));
                }
                mods.insert(name, (data, info));
            }
            Found::Builtin if !is_soft => {
                builtin.insert(name);
            }
            // A soft dependency that is no module file is probably an alias; resolved below.
            _ if is_soft => {
                absent_soft.insert(name);
            }
            _ => {
                return Err(SetupError::ModuleNotFound {
                    name,
                    dir: PathBuf::new(),
                });
            }
        }
    }

    let mut alias_of: HashMap<&str, &str> = HashMap::new();
    let mut names: Vec<&String> = mods.keys().collect();
    names.sort();
    for name in &names {
        for a in &mods[*name].1.aliases {
            alias_of.entry(a.as_str()).or_insert(name.as_str());
        }
    }
    // Edges: module -> the modules (in the set) it must follow.
    let edges = |name: &str| -> Vec<String> {
        let info = &mods[name].1;
        let soft = info.softdep_pre.iter().filter_map(|s| {
            if mods.contains_key(s) {
                Some(s.clone())
            } else {
                alias_of.get(s.as_str()).map(|m| m.to_string())
            }
        });
        let hard = info
            .depends
            .iter()
            .filter(|d| mods.contains_key(*d))
            .cloned();
        soft.chain(hard).filter(|d| d != name).collect()
    };

    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Visiting,
        Done,
    }
    let mut marks: HashMap<String, Mark> = HashMap::new();
    let mut order: Vec<String> = Vec::new();
    fn visit(
        name: &str,
        edges: &dyn Fn(&str) -> Vec<String>,
        marks: &mut HashMap<String, Mark>,
        order: &mut Vec<String>,
        path: &mut Vec<String>,
    ) -> Result<(), SetupError> {
        match marks.get(name) {
            Some(Mark::Done) => return Ok(()),
            Some(Mark::Visiting) => {
                path.push(name.to_string());
                return Err(SetupError::ModuleCycle {
                    cycle: path.join(" -> "),
                });
            }
            None => {}
        }
        marks.insert(name.to_string(), Mark::Visiting);
        path.push(name.to_string());
        for dep in edges(name) {
            visit(&dep, edges, marks, order, path)?;
        }
        path.pop();
        marks.insert(name.to_string(), Mark::Done);
        order.push(name.to_string());
        Ok(())
    }
    for root in roots {
        let root = normalize(root);
        if mods.contains_key(&root) {
            visit(&root, &edges, &mut marks, &mut order, &mut Vec::new())?;
        }
    }
    // Modules reached only through a soft dependency by exact name are visited above through
    // their dependents; anything left (cannot happen today) is appended in name order.
    for name in names {
        if !marks.contains_key(name.as_str()) {
            visit(name, &edges, &mut marks, &mut order, &mut Vec::new())?;
        }
    }
    let order = order
        .into_iter()
        .map(|name| {
            let (data, _) = mods.remove(&name).expect("visited modules are in the set");
            ResolvedModule { name, data }
        })
        .collect();
    Ok(Resolution {
        order,
        builtin: builtin.into_iter().collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(name: &str, depends: &[&str], soft: &[&str], aliases: &[&str]) -> ModInfo {
        ModInfo {
            name: name.into(),
            depends: depends.iter().map(|s| s.to_string()).collect(),
            softdep_pre: soft.iter().map(|s| s.to_string()).collect(),
            aliases: aliases.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// A synthetic copy of Debian 6.12's relevant `.modinfo` facts.
    fn debian_like() -> HashMap<&'static str, ModInfo> {
        let mut m = HashMap::new();
        m.insert(
            "ext4",
            info(
                "ext4",
                &["jbd2", "crc16", "mbcache"],
                &["crypto_crc32c"],
                &[],
            ),
        );
        m.insert("jbd2", info("jbd2", &[], &["crypto_crc32c"], &[]));
        m.insert("crc16", info("crc16", &[], &[], &[]));
        m.insert("mbcache", info("mbcache", &[], &[], &[]));
        m.insert("xfs", info("xfs", &["libcrc32c"], &[], &[]));
        m.insert("libcrc32c", info("libcrc32c", &[], &["crc32c"], &[]));
        m.insert(
            "crc32c_generic",
            info("crc32c_generic", &[], &[], &["crypto_crc32c", "crc32c"]),
        );
        m.insert("libnvdimm", info("libnvdimm", &[], &[], &[]));
        m.insert("nd_btt", info("nd_btt", &["libnvdimm"], &[], &[]));
        m.insert(
            "nd_pmem",
            info("nd_pmem", &["libnvdimm", "nd_btt"], &[], &[]),
        );
        m.insert("nfit", info("nfit", &["libnvdimm"], &[], &[]));
        m
    }

    fn run(
        roots: &[&str],
        m: &HashMap<&'static str, ModInfo>,
        builtin: &[&str],
    ) -> Result<Resolution, SetupError> {
        resolve(roots, |name, _| {
            Ok(if let Some(i) = m.get(name) {
                Found::Module(name.as_bytes().to_vec(), i.clone())
            } else if builtin.contains(&name) {
                Found::Builtin
            } else {
                Found::Missing
            })
        })
    }

    fn names(r: &Resolution) -> Vec<&str> {
        r.order.iter().map(|m| m.name.as_str()).collect()
    }

    fn assert_deps_first(r: &Resolution, m: &HashMap<&'static str, ModInfo>) {
        let pos: HashMap<&str, usize> = names(r)
            .into_iter()
            .enumerate()
            .map(|(i, n)| (n, i))
            .collect();
        for (name, i) in &pos {
            for d in &m[name].depends {
                assert!(pos[d.as_str()] < *i, "{d} must load before {name}");
            }
        }
    }

    #[test]
    fn ext4_order_puts_dependencies_first() {
        let m = debian_like();
        let r = run(roots(FsKind::Ext4), &m, &[]).unwrap();
        assert_eq!(
            names(&r),
            [
                "crc32c_generic",
                "jbd2",
                "crc16",
                "mbcache",
                "ext4",
                "libnvdimm",
                "nd_btt",
                "nd_pmem",
                "nfit"
            ]
        );
        assert_deps_first(&r, &m);
    }

    #[test]
    fn xfs_order_and_softdep_through_alias() {
        let m = debian_like();
        // Even with crc32c_generic not first among the roots, the alias softdep orders it
        // before libcrc32c.
        let r = run(
            &["xfs", "nd_pmem", "nd_btt", "nfit", "crc32c_generic"],
            &m,
            &[],
        )
        .unwrap();
        let n = names(&r);
        assert_eq!(
            n,
            [
                "crc32c_generic",
                "libcrc32c",
                "xfs",
                "libnvdimm",
                "nd_btt",
                "nd_pmem",
                "nfit"
            ]
        );
        assert_deps_first(&r, &m);
    }

    #[test]
    fn builtins_are_skipped_and_missing_roots_are_errors() {
        let mut m = debian_like();
        m.remove("libnvdimm");
        m.remove("crc16");
        let r = run(roots(FsKind::Ext4), &m, &["libnvdimm", "crc16"]).unwrap();
        assert_eq!(r.builtin, ["crc16", "libnvdimm"]);
        assert!(!names(&r).contains(&"libnvdimm"));

        m.remove("ext4");
        match run(roots(FsKind::Ext4), &m, &[]) {
            Err(SetupError::ModuleNotFound { name, .. }) => assert_eq!(name, "ext4"),
            other => panic!("expected ModuleNotFound, got {other:?}"),
        }
    }

    #[test]
    fn deterministic_and_cycle_detected() {
        let m = debian_like();
        let a = names(&run(roots(FsKind::Xfs), &m, &[]).unwrap()).join(",");
        for _ in 0..10 {
            assert_eq!(
                a,
                names(&run(roots(FsKind::Xfs), &m, &[]).unwrap()).join(",")
            );
        }
        let mut c = HashMap::new();
        c.insert("a", info("a", &["b"], &[], &[]));
        c.insert("b", info("b", &["a"], &[], &[]));
        assert!(matches!(
            run(&["a"], &c, &[]),
            Err(SetupError::ModuleCycle { .. })
        ));
    }

    #[test]
    fn modinfo_parses_depends_softdep_alias() {
        let raw =
            b"license=GPL\0softdep=pre: crypto-crc32c post: foo\0depends=jbd2,crc16,mbcache\0\
                    alias=fs-ext4\0name=ext4\0intree=Y\0";
        let i = ModInfo::parse(raw);
        assert_eq!(
            i,
            info(
                "ext4",
                &["jbd2", "crc16", "mbcache"],
                &["crypto_crc32c"],
                &["fs_ext4"]
            )
        );
        assert_eq!(
            ModInfo::parse(b"depends=\0name=x\0").depends,
            Vec::<String>::new()
        );
    }

    #[test]
    fn modinfo_from_a_real_elf_object() {
        use object::write::{Object as WObject, StandardSection};
        use object::{Architecture, BinaryFormat, Endianness, SectionKind};
        let mut obj = WObject::new(BinaryFormat::Elf, Architecture::X86_64, Endianness::Little);
        let _ = obj.section_id(StandardSection::Text);
        let id = obj.add_section(Vec::new(), b".modinfo".to_vec(), SectionKind::ReadOnlyData);
        obj.append_section_data(id, b"depends=libnvdimm,nd_btt\0name=nd_pmem\0", 1);
        let bytes = obj.write().unwrap();
        let i = ModInfo::from_elf(&bytes).unwrap();
        assert_eq!(i.name, "nd_pmem");
        assert_eq!(i.depends, ["libnvdimm", "nd_btt"]);
        assert!(ModInfo::from_elf(b"not an elf").is_err());
    }

    #[test]
    fn tree_scan_and_decompression() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let k = dir.path().join("kernel/fs");
        std::fs::create_dir_all(&k).unwrap();
        std::fs::write(k.join("plain.ko"), b"plain").unwrap();
        let mut xz = xz2::write::XzEncoder::new(Vec::new(), 1);
        xz.write_all(b"xz-data").unwrap();
        std::fs::write(k.join("nd-pmem.ko.xz"), xz.finish().unwrap()).unwrap();
        std::fs::write(
            k.join("z.ko.zst"),
            zstd::encode_all(&b"zstd-data"[..], 3).unwrap(),
        )
        .unwrap();
        std::fs::write(dir.path().join("modules.builtin"), "kernel/lib/crc16.ko\n").unwrap();
        let t = ModuleTree::scan(dir.path()).unwrap();
        assert_eq!(
            t.files.keys().collect::<Vec<_>>(),
            ["nd_pmem", "plain", "z"]
        );
        assert!(t.builtin.contains("crc16"));
        assert_eq!(read_module(&t.files["nd_pmem"]).unwrap(), b"xz-data");
        assert_eq!(read_module(&t.files["z"]).unwrap(), b"zstd-data");
        assert_eq!(read_module(&t.files["plain"]).unwrap(), b"plain");
    }
}
