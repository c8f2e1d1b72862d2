//! Run bundles: one workload's run, saved so its crash states can be checked again
//! without running it, by someone else, on another machine.
//!
//! A bundle is a directory (`pmcrash run --save DIR` makes one per workload):
//!
//! | file | holds |
//! | --- | --- |
//! | `manifest.json` | format name and version, the pmcrash version, and the size and blake3 of every other file |
//! | `run.json` | what decides the crash states (file system, model, points, states, seed, caps, PM size), the kernel's identity, every op's traced result |
//! | `workload.json` | the workload, exactly (serde of [`Workload`]) |
//! | `workload.toml` | its source text, for people (when it came from a file) |
//! | `trace.pmtrace.zst` | the trace, zstd-compressed |
//! | `base.img.zst` | the PM image before the first op, zstd-compressed (zeros cost nothing) |
//! | `report.json` | the workload's report as the run printed it |
//!
//! A bundle is written into a temporary directory beside its place and renamed into
//! place when complete (every file fsynced, the manifest last), so a bundle that
//! exists is whole. [`Bundle::open`] checks every file against the manifest: a missing,
//! truncated or edited file is a [`BundleError`] that names it.

use crash_models::ops::{FsKind, Workload};
use crash_models::protocol::OpResult;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// The `format` every manifest names.
pub const FORMAT: &str = "pmcrash-bundle";
/// The bundle layout this pmcrash writes and reads.
pub const VERSION: u32 = 1;

const MANIFEST: &str = "manifest.json";
const RUN: &str = "run.json";
const WORKLOAD: &str = "workload.json";
const WORKLOAD_SOURCE: &str = "workload.toml";
const TRACE: &str = "trace.pmtrace.zst";
const BASE: &str = "base.img.zst";
const REPORT: &str = "report.json";
/// The workload's programs (`crash_models::programs::Bundle`), when it runs any.
const PROGRAMS: &str = "programs.bundle";

/// Why a bundle cannot be written or used. Every message names the file.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// The directory has no manifest.
    #[error(
        "{dir} is not a pmcrash bundle (it has no {MANIFEST}); bundles are made by \
         `pmcrash run WORKLOAD --save DIR`"
    )]
    NotABundle {
        /// The directory.
        dir: PathBuf,
    },
    /// A JSON file of the bundle does not parse or lacks a field.
    #[error("{}:{line}:{column}: {message}", file.display())]
    Json {
        /// The file.
        file: PathBuf,
        /// Line (1-based).
        line: usize,
        /// Column (1-based).
        column: usize,
        /// What is wrong (serde names the field).
        message: String,
    },
    /// The manifest is of another format or version.
    #[error(
        "{}: field `{field}` is {found}, this pmcrash reads {FORMAT} version {VERSION}; \
         open the bundle with the pmcrash version that made it",
        file.display()
    )]
    Version {
        /// The manifest.
        file: PathBuf,
        /// `format` or `version`.
        field: &'static str,
        /// What it says.
        found: String,
    },
    /// A file the manifest lists is not there.
    #[error("{} is missing: the bundle is incomplete (copy it whole, or save it again)", file.display())]
    Missing {
        /// The file.
        file: PathBuf,
    },
    /// A file has another size than the manifest says.
    #[error(
        "{} is {actual} bytes, {MANIFEST} says {expected}: the file was truncated or \
         edited (copy the bundle again, or save it again)",
        file.display()
    )]
    Size {
        /// The file.
        file: PathBuf,
        /// From the manifest.
        expected: u64,
        /// On disk.
        actual: u64,
    },
    /// A file's content differs from the manifest's checksum.
    #[error(
        "{} does not match its checksum in {MANIFEST} (blake3 {actual}, expected \
         {expected}): the file was edited or damaged (copy the bundle again, or save it again)",
        file.display()
    )]
    Checksum {
        /// The file.
        file: PathBuf,
        /// From the manifest.
        expected: String,
        /// Of the file.
        actual: String,
    },
    /// A file lists a value that cannot be used.
    #[error("{}: field `{field}`: {message}", file.display())]
    Field {
        /// The file.
        file: PathBuf,
        /// The field.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// The bundle's directory already exists.
    #[error("{} already exists: pick a new directory for the bundle, or remove it", dir.display())]
    Exists {
        /// The directory.
        dir: PathBuf,
    },
    /// Local I/O.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// On which path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> BundleError {
    let path = path.to_path_buf();
    move |source| BundleError::Io { what, path, source }
}

/// Size and blake3 of one file of the bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSum {
    /// Bytes.
    pub bytes: u64,
    /// Hex blake3 of the bytes.
    pub blake3: String,
}

/// `manifest.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Always [`FORMAT`].
    pub format: String,
    /// The layout version ([`VERSION`]).
    pub version: u32,
    /// The pmcrash version that wrote it.
    pub pmcrash: String,
    /// The workload's name (its path as given to `run`).
    pub workload: String,
    /// Every other file, by name.
    pub files: BTreeMap<String, FileSum>,
}

/// Which kernel traced the workload: a check needs the same one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelIdentity {
    /// The release (`uname -r`), e.g. `6.12.117+deb12-amd64`.
    pub release: String,
    /// blake3 of the image given to QEMU's `-kernel`.
    pub image_blake3: String,
    /// Where that image was on the machine that made the bundle (a hint only).
    pub image_path: PathBuf,
}

impl KernelIdentity {
    /// The identity of the kernel image at `image` with release `release`.
    pub fn of(image: &Path, release: &str) -> Result<KernelIdentity, BundleError> {
        Ok(KernelIdentity {
            release: release.to_owned(),
            image_blake3: hash_file(image)?.blake3,
            image_path: image.to_path_buf(),
        })
    }
}

/// `run.json`: everything that decides the crash states of the saved run, and what
/// the traced ops returned.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunInfo {
    /// The workload's name (its path as given).
    pub workload: String,
    /// The file system.
    pub fs: FsKind,
    /// The persistency model (`x86-adr`, ...).
    pub model: String,
    /// The crash-point policy (`fence`, `op`, ...).
    pub points: String,
    /// The crash-state strategy, its seed filled in.
    pub states: String,
    /// The run's seed.
    pub seed: u64,
    /// Most crash states per point.
    pub max_states: usize,
    /// Most crash points, when the run was limited.
    pub max_points: Option<usize>,
    /// The only crash point checked (`--crash-at`), when the run was limited to one.
    #[serde(default)]
    pub crash_at: Option<u64>,
    /// BTT-like sector atomicity of kernel block writes (`--sector-atomic`).
    #[serde(default)]
    pub sector_atomic: Option<u64>,
    /// PM size in bytes.
    pub pm_size: u64,
    /// The trace was made in a deterministic guest.
    pub deterministic: bool,
    /// The kernel that traced it.
    pub kernel: KernelIdentity,
    /// Every op's result in the traced run.
    pub results: Vec<OpResult>,
}

/// What [`save`] writes.
#[derive(Debug)]
pub struct BundleParts<'a> {
    /// `run.json`.
    pub run: &'a RunInfo,
    /// The workload.
    pub workload: &'a Workload,
    /// Its source text, when it came from a file.
    pub source: Option<&'a str>,
    /// The trace file the tracer wrote.
    pub trace: &'a Path,
    /// The base image (the PM file before the first op).
    pub base_image: &'a Path,
    /// The workload's report (JSON).
    pub report: &'a serde_json::Value,
    /// The program bundle its guests got (`exec` ops, user checkers), if any: a
    /// check needs the same binaries, not whatever is at their host paths later.
    pub programs: Option<&'a Path>,
}

/// Write a bundle at `dir`, which must not exist. It appears whole or not at all.
pub fn save(dir: &Path, parts: &BundleParts<'_>) -> Result<(), BundleError> {
    if dir.exists() {
        return Err(BundleError::Exists {
            dir: dir.to_path_buf(),
        });
    }
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(parent).map_err(io("create", parent))?;
    let tmp = tempfile::Builder::new()
        .prefix(".pmcrash-bundle-")
        .tempdir_in(parent)
        .map_err(io("create a directory in", parent))?;
    let mut files = BTreeMap::new();
    let mut put = |name: &str, bytes: &[u8]| -> Result<(), BundleError> {
        let p = tmp.path().join(name);
        let mut f = File::create(&p).map_err(io("create", &p))?;
        f.write_all(bytes).map_err(io("write", &p))?;
        f.sync_all().map_err(io("fsync", &p))?;
        files.insert(name.to_owned(), hash_bytes(bytes));
        Ok(())
    };
    put(RUN, &pretty(parts.run))?;
    put(WORKLOAD, &pretty(parts.workload))?;
    if let Some(src) = parts.source {
        put(WORKLOAD_SOURCE, src.as_bytes())?;
    }
    put(REPORT, &pretty(parts.report))?;
    if let Some(from) = parts.programs {
        let bytes = std::fs::read(from).map_err(io("read", from))?;
        put(PROGRAMS, &bytes)?;
    }
    for (name, from) in [(TRACE, parts.trace), (BASE, parts.base_image)] {
        let to = tmp.path().join(name);
        compress(from, &to)?;
        files.insert(name.to_owned(), hash_file(&to)?);
    }
    let manifest = Manifest {
        format: FORMAT.to_owned(),
        version: VERSION,
        pmcrash: env!("CARGO_PKG_VERSION").to_owned(),
        workload: parts.run.workload.clone(),
        files,
    };
    let m = tmp.path().join(MANIFEST);
    std::fs::write(&m, pretty(&manifest)).map_err(io("write", &m))?;
    File::open(&m)
        .and_then(|f| f.sync_all())
        .map_err(io("fsync", &m))?;
    File::open(tmp.path())
        .and_then(|f| f.sync_all())
        .map_err(io("fsync", tmp.path()))?;
    let tmp = tmp.keep();
    if let Err(e) = std::fs::rename(&tmp, dir) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(io("rename into place", dir)(e));
    }
    File::open(parent)
        .and_then(|f| f.sync_all())
        .map_err(io("fsync", parent))?;
    Ok(())
}

/// An opened bundle whose every file matched the manifest.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// Its directory.
    pub dir: PathBuf,
    /// The manifest.
    pub manifest: Manifest,
    /// `run.json`.
    pub run: RunInfo,
    /// The workload.
    pub workload: Workload,
}

impl Bundle {
    /// Open the bundle at `dir`, checking every file against the manifest.
    pub fn open(dir: &Path) -> Result<Bundle, BundleError> {
        let mpath = dir.join(MANIFEST);
        if !mpath.is_file() {
            return Err(BundleError::NotABundle {
                dir: dir.to_path_buf(),
            });
        }
        let manifest: Manifest = read_json(&mpath)?;
        if manifest.format != FORMAT {
            return Err(BundleError::Version {
                file: mpath,
                field: "format",
                found: format!("{:?}", manifest.format),
            });
        }
        if manifest.version != VERSION {
            return Err(BundleError::Version {
                file: mpath,
                field: "version",
                found: manifest.version.to_string(),
            });
        }
        for required in [RUN, WORKLOAD, TRACE, BASE, REPORT] {
            if !manifest.files.contains_key(required) {
                return Err(BundleError::Field {
                    file: mpath,
                    field: format!("files.{required}"),
                    message: "missing: every bundle lists it".into(),
                });
            }
        }
        for (name, want) in &manifest.files {
            if name.contains('/') || name.starts_with('.') {
                return Err(BundleError::Field {
                    file: mpath,
                    field: format!("files.{name}"),
                    message: "not a plain file name".into(),
                });
            }
            let p = dir.join(name);
            let meta = match std::fs::metadata(&p) {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(BundleError::Missing { file: p })
                }
                Err(e) => return Err(io("read", &p)(e)),
            };
            if meta.len() != want.bytes {
                return Err(BundleError::Size {
                    file: p,
                    expected: want.bytes,
                    actual: meta.len(),
                });
            }
            let got = hash_file(&p)?;
            if got.blake3 != want.blake3 {
                return Err(BundleError::Checksum {
                    file: p,
                    expected: want.blake3.clone(),
                    actual: got.blake3,
                });
            }
        }
        let run: RunInfo = read_json(&dir.join(RUN))?;
        let workload: Workload = read_json(&dir.join(WORKLOAD))?;
        Ok(Bundle {
            dir: dir.to_path_buf(),
            manifest,
            run,
            workload,
        })
    }

    /// The workload's source text, when the bundle has it.
    pub fn source(&self) -> Option<String> {
        std::fs::read_to_string(self.dir.join(WORKLOAD_SOURCE)).ok()
    }

    /// The saved report.
    pub fn report(&self) -> Result<serde_json::Value, BundleError> {
        read_json(&self.dir.join(REPORT))
    }

    /// The program bundle the workload's guests got, when it runs programs.
    pub fn programs(&self) -> Option<PathBuf> {
        self.manifest
            .files
            .contains_key(PROGRAMS)
            .then(|| self.dir.join(PROGRAMS))
    }

    /// Write the trace, uncompressed, to `to`.
    pub fn trace_to(&self, to: &Path) -> Result<(), BundleError> {
        decompress(&self.dir.join(TRACE), to)
    }

    /// Write the base image, uncompressed and sparse, to `to`.
    pub fn base_image_to(&self, to: &Path) -> Result<(), BundleError> {
        decompress(&self.dir.join(BASE), to)
    }
}

fn pretty<T: Serialize>(v: &T) -> Vec<u8> {
    let mut out = serde_json::to_vec_pretty(v).expect("bundle values serialize");
    out.push(b'\n');
    out
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, BundleError> {
    let text = std::fs::read(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => BundleError::Missing {
            file: path.to_path_buf(),
        },
        _ => io("read", path)(e),
    })?;
    serde_json::from_slice(&text).map_err(|e| BundleError::Json {
        file: path.to_path_buf(),
        line: e.line(),
        column: e.column(),
        message: e.to_string(),
    })
}

fn hash_bytes(bytes: &[u8]) -> FileSum {
    FileSum {
        bytes: bytes.len() as u64,
        blake3: blake3::hash(bytes).to_hex().to_string(),
    }
}

/// Size and blake3 of a file, read in chunks (traces and images can be large).
fn hash_file(path: &Path) -> Result<FileSum, BundleError> {
    let mut f = File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => BundleError::Missing {
            file: path.to_path_buf(),
        },
        _ => io("open", path)(e),
    })?;
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(io("read", path))?;
        if n == 0 {
            break;
        }
        bytes += n as u64;
        h.update(&buf[..n]);
    }
    Ok(FileSum {
        bytes,
        blake3: h.finalize().to_hex().to_string(),
    })
}

fn compress(from: &Path, to: &Path) -> Result<(), BundleError> {
    let mut src = File::open(from).map_err(io("open", from))?;
    let out = File::create(to).map_err(io("create", to))?;
    let mut enc = zstd::Encoder::new(out, 3).map_err(io("compress into", to))?;
    std::io::copy(&mut src, &mut enc).map_err(io("compress", from))?;
    let out = enc.finish().map_err(io("compress into", to))?;
    out.sync_all().map_err(io("fsync", to))?;
    Ok(())
}

/// Decompress into `to`, leaving holes where the data is zero (a PM image is mostly
/// zeros; a sparse file costs no disk for them).
fn decompress(from: &Path, to: &Path) -> Result<(), BundleError> {
    let src = File::open(from).map_err(io("open", from))?;
    let mut dec = zstd::Decoder::new(src).map_err(io("decompress", from))?;
    let mut out = File::create(to).map_err(io("create", to))?;
    let mut buf = vec![0u8; 1 << 16];
    let mut len = 0u64;
    loop {
        let mut n = 0;
        while n < buf.len() {
            let k = dec.read(&mut buf[n..]).map_err(|e| BundleError::Field {
                file: from.to_path_buf(),
                field: "(zstd stream)".into(),
                message: format!("cannot be decompressed: {e}"),
            })?;
            if k == 0 {
                break;
            }
            n += k;
        }
        if n == 0 {
            break;
        }
        if buf[..n].iter().all(|b| *b == 0) {
            out.seek(SeekFrom::Current(n as i64))
                .map_err(io("seek in", to))?;
        } else {
            out.write_all(&buf[..n]).map_err(io("write", to))?;
        }
        len += n as u64;
    }
    out.set_len(len).map_err(io("size", to))?;
    out.sync_all().map_err(io("fsync", to))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(dir: &Path) -> (RunInfo, Workload, PathBuf, PathBuf, serde_json::Value) {
        let src = include_str!("../../corpora/lsfmm2016/01-shared-flush-no-fsync.toml");
        let workload = Workload::parse(src, "01.toml").unwrap();
        let trace = dir.join("t.pmtrace");
        std::fs::write(&trace, b"not really a trace, but bytes to carry").unwrap();
        let base = dir.join("base.img");
        let f = File::create(&base).unwrap();
        f.set_len(8 << 20).unwrap();
        use std::os::unix::fs::FileExt;
        f.write_all_at(b"superblock", 4096).unwrap();
        let run = RunInfo {
            workload: "corpora/lsfmm2016/01-shared-flush-no-fsync.toml".into(),
            fs: FsKind::Ext4,
            model: "x86-adr".into(),
            points: "fence".into(),
            states: "each-line".into(),
            seed: 7,
            max_states: 4096,
            max_points: None,
            crash_at: None,
            sector_atomic: None,
            pm_size: 8 << 20,
            deterministic: true,
            kernel: KernelIdentity::of(&trace, "6.12.0-test").unwrap(),
            results: vec![],
        };
        let report = serde_json::json!({"name": "01", "verdicts": {"ok": 3}});
        (run, workload, trace, base, report)
    }

    fn saved() -> (tempfile::TempDir, PathBuf, Workload) {
        let t = tempfile::tempdir().unwrap();
        let (run, workload, trace, base, report) = sample(t.path());
        let dir = t.path().join("out/01");
        save(
            &dir,
            &BundleParts {
                run: &run,
                workload: &workload,
                source: Some("# the source"),
                trace: &trace,
                base_image: &base,
                report: &report,
                programs: None,
            },
        )
        .unwrap();
        (t, dir, workload)
    }

    #[test]
    fn a_saved_bundle_opens_with_the_same_contents() {
        let (t, dir, workload) = saved();
        let b = Bundle::open(&dir).unwrap();
        assert_eq!(b.workload, workload);
        assert_eq!(b.run.seed, 7);
        assert_eq!(b.source().as_deref(), Some("# the source"));
        assert_eq!(b.report().unwrap()["verdicts"]["ok"], 3);
        let img = t.path().join("restored.img");
        b.base_image_to(&img).unwrap();
        assert_eq!(
            std::fs::read(&img).unwrap(),
            std::fs::read(t.path().join("base.img")).unwrap()
        );
        // Sparse: 8 MiB of mostly zeros take a few blocks.
        use std::os::unix::fs::MetadataExt;
        assert!(std::fs::metadata(&img).unwrap().blocks() < 1024);
        let tr = t.path().join("restored.pmtrace");
        b.trace_to(&tr).unwrap();
        assert_eq!(
            std::fs::read(&tr).unwrap(),
            std::fs::read(t.path().join("t.pmtrace")).unwrap()
        );
        // Nothing but the bundle was left beside it.
        let left: Vec<_> = std::fs::read_dir(t.path().join("out")).unwrap().collect();
        assert_eq!(left.len(), 1);
        // A second save to the same place is refused.
        let (run, workload, trace, base, report) = sample(t.path());
        let e = save(
            &dir,
            &BundleParts {
                run: &run,
                workload: &workload,
                source: None,
                trace: &trace,
                base_image: &base,
                report: &report,
                programs: None,
            },
        )
        .unwrap_err();
        assert!(matches!(e, BundleError::Exists { .. }), "{e}");
    }

    #[test]
    fn a_program_bundle_is_carried_and_checked_by_the_manifest() {
        let t = tempfile::tempdir().unwrap();
        let (run, workload, trace, base, report) = sample(t.path());
        let programs = t.path().join("p.bundle");
        std::fs::write(&programs, b"PMCPROG1 the programs").unwrap();
        let dir = t.path().join("with-programs");
        let parts = BundleParts {
            run: &run,
            workload: &workload,
            source: None,
            trace: &trace,
            base_image: &base,
            report: &report,
            programs: Some(&programs),
        };
        save(&dir, &parts).unwrap();
        let b = Bundle::open(&dir).unwrap();
        let saved = b.programs().expect("programs.bundle");
        assert_eq!(std::fs::read(&saved).unwrap(), b"PMCPROG1 the programs");
        assert!(Bundle::open(&saved_dir_without_programs(t.path()))
            .unwrap()
            .programs()
            .is_none());
        std::fs::write(&saved, b"PMCPROG1 other programs").unwrap();
        let e = Bundle::open(&dir).unwrap_err();
        assert!(
            matches!(e, BundleError::Size { .. } | BundleError::Checksum { .. }),
            "{e}"
        );
    }

    fn saved_dir_without_programs(root: &Path) -> PathBuf {
        let (run, workload, trace, base, report) = sample(root);
        let dir = root.join("without-programs");
        save(
            &dir,
            &BundleParts {
                run: &run,
                workload: &workload,
                source: None,
                trace: &trace,
                base_image: &base,
                report: &report,
                programs: None,
            },
        )
        .unwrap();
        dir
    }

    #[test]
    fn truncated_edited_missing_and_foreign_files_are_named() {
        let (_t, dir, _) = saved();
        let base = dir.join(BASE);
        let bytes = std::fs::read(&base).unwrap();
        std::fs::write(&base, &bytes[..bytes.len() - 1]).unwrap();
        let e = Bundle::open(&dir).unwrap_err().to_string();
        assert!(e.contains("base.img.zst") && e.contains("truncated"), "{e}");

        let mut edited = bytes.clone();
        let last = edited.len() - 1;
        edited[last] ^= 1;
        std::fs::write(&base, &edited).unwrap();
        let e = Bundle::open(&dir).unwrap_err().to_string();
        assert!(e.contains("base.img.zst") && e.contains("checksum"), "{e}");

        std::fs::write(&base, &bytes).unwrap();
        std::fs::remove_file(dir.join(REPORT)).unwrap();
        let e = Bundle::open(&dir).unwrap_err().to_string();
        assert!(e.contains("report.json") && e.contains("missing"), "{e}");

        let m = dir.join(MANIFEST);
        let text = std::fs::read_to_string(&m).unwrap();
        std::fs::write(&m, text.replace("\"version\": 1", "\"version\": 9")).unwrap();
        let e = Bundle::open(&dir).unwrap_err().to_string();
        assert!(
            e.contains("manifest.json") && e.contains("`version` is 9"),
            "{e}"
        );

        std::fs::write(&m, text.replace("\"format\"", "\"formt\"")).unwrap();
        let e = Bundle::open(&dir).unwrap_err().to_string();
        assert!(e.contains("manifest.json:2:") && e.contains("formt"), "{e}");

        let e = Bundle::open(dir.parent().unwrap()).unwrap_err().to_string();
        assert!(e.contains("not a pmcrash bundle"), "{e}");
    }
}
