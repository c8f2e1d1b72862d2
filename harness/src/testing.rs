//! Crash-consistency checks as `#[test]`s: the small API for a kernel developer's (or
//! a PM programmer's) own `cargo test` suite, on top of [`Pipeline`].
//!
//! A [`Check`] is one or more workloads (a workload file, TOML text, or ops written in
//! Rust) on one file system and one kernel; [`Check::run`] provisions what is missing
//! (as `pmcrash setup` does, without installing host packages), checks the kernel's
//! configuration before any boot, traces every workload in a real guest, lets the real
//! kernel recover every distinct crash image and returns the [`Report`]. The report's
//! [`assert_no_findings`](Report::assert_no_findings) and
//! [`assert_only`](Report::assert_only) fail the test with the findings in words, and
//! [`Report::summary`] is stable enough for an `insta` snapshot (no timings, paths,
//! record numbers or counts that depend on kernel timing).
//!
//! ```no_run
//! use pmcrash::testing::{Check, FsKind, Policy};
//!
//! #[test]
//! fn append_then_fsync_on_ext4() {
//!     let report = Check::workload_file("workloads/append-fsync.toml")
//!         .unwrap()
//!         .fs(FsKind::Ext4)
//!         .points(Policy::Op)
//!         .run()
//!         .unwrap();
//!     report.assert_no_findings();
//!     insta::assert_json_snapshot!(report.summary());
//! }
//! ```
//!
//! The kernel is Debian's packaged 6.12 unless [`Check::kernel`] says otherwise, or the
//! environment variable [`KERNEL_TREE_ENV`] (`PMCRASH_KERNEL_TREE`) names a kernel build
//! tree: then its `bzImage` (or `vmlinux`), `.config` and modules are used
//! ([`SetupOptions::with_kernel_tree`]).

use crate::pipeline::{Pipeline, PipelineError, RunConfig};
use crate::report::Report;
use crate::setup::{SetupError, SetupOptions};
use crate::workloads::{LoadError, Loaded};
use crash_models::ops::{Location, Workload};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

pub use crash_models::model::Model;
pub use crash_models::ops::{FsKind, Op};
pub use crash_models::points::Policy;
pub use crash_models::states::Strategy;
pub use crash_models::verdict::Verdict;

/// The environment variable naming a kernel build tree to test instead of Debian's
/// kernel: `PMCRASH_KERNEL_TREE=~/src/linux cargo test`.
pub const KERNEL_TREE_ENV: &str = "PMCRASH_KERNEL_TREE";

/// Which kernel the guests run.
///
/// ```
/// use pmcrash::testing::Kernel;
/// let k = Kernel::Tree("/src/linux".into());
/// assert_ne!(k, Kernel::Debian);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kernel {
    /// Debian's `linux-image-6.12.*-amd64-unsigned`, downloaded into the cache.
    Debian,
    /// An image (bzImage, or an ELF vmlinux with the PVH note) and its
    /// `lib/modules/<release>` directory (`None`: everything built in).
    Image {
        /// The image.
        image: PathBuf,
        /// Its modules.
        modules: Option<PathBuf>,
    },
    /// A kernel build tree (see [`SetupOptions::with_kernel_tree`]).
    Tree(PathBuf),
}

impl Kernel {
    /// [`Kernel::Tree`] of `$PMCRASH_KERNEL_TREE` when it is set and not empty, else
    /// [`Kernel::Debian`].
    ///
    /// ```
    /// let k = pmcrash::testing::Kernel::from_env();
    /// if std::env::var_os("PMCRASH_KERNEL_TREE").is_none() {
    ///     assert_eq!(k, pmcrash::testing::Kernel::Debian);
    /// }
    /// ```
    pub fn from_env() -> Kernel {
        match std::env::var_os(KERNEL_TREE_ENV).filter(|v| !v.is_empty()) {
            Some(dir) => Kernel::Tree(dir.into()),
            None => Kernel::Debian,
        }
    }

    /// The setup options that select this kernel.
    ///
    /// ```
    /// use pmcrash::testing::Kernel;
    /// let o = Kernel::Debian.setup_options().unwrap();
    /// assert!(o.kernel.is_none());
    /// ```
    pub fn setup_options(&self) -> Result<SetupOptions, SetupError> {
        let base = SetupOptions::default();
        match self {
            Kernel::Debian => Ok(base),
            Kernel::Image { image, modules } => Ok(SetupOptions {
                kernel: Some(image.clone()),
                modules: modules.clone(),
                ..base
            }),
            Kernel::Tree(dir) => base.with_kernel_tree(dir),
        }
    }
}

/// Why a check could not run (never a finding: findings are in the [`Report`]).
#[derive(Debug, thiserror::Error)]
pub enum TestError {
    /// Provisioning failed, or the kernel lacks what the guest needs (each message
    /// says what to do next).
    #[error("{0}\n(`cargo run -p pmcrash -- doctor` shows what is present and what is missing)")]
    Setup(#[from] SetupError),
    /// A workload file could not be read or is invalid (`file:line:col: field: ...`).
    #[error(transparent)]
    Load(#[from] LoadError),
    /// Ops written in Rust are invalid.
    #[error("{name}: ops[{index}].{field}: {message}; fix the op")]
    Ops {
        /// The workload's name.
        name: String,
        /// The op at fault.
        index: usize,
        /// Its field.
        field: String,
        /// What was wrong.
        message: String,
    },
    /// Tracing or checking failed (QEMU, the guest, local I/O).
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    /// No async runtime could be made.
    #[error("cannot start the tokio runtime: {0}")]
    Runtime(std::io::Error),
    /// The check has no workload.
    #[error(
        "the check has no workload: start from Check::workload_file, Check::toml or Check::ops"
    )]
    Empty,
}

/// A crash-consistency check: workloads, a file system, a kernel, crash points,
/// states and a persistency model.
#[derive(Debug, Clone)]
pub struct Check {
    workloads: Vec<Loaded>,
    cfg: RunConfig,
    kernel: Kernel,
}

impl Check {
    fn of(workloads: Vec<Loaded>) -> Check {
        Check {
            workloads,
            cfg: RunConfig::default(),
            kernel: Kernel::from_env(),
        }
    }

    /// A check of a workload file, or of every `*.toml` in a directory. Names in the
    /// report are the paths relative to the current directory (the package's root
    /// under `cargo test`), so summaries do not depend on where the checkout is.
    ///
    /// ```no_run
    /// let check = pmcrash::testing::Check::workload_file("workloads/append-fsync.toml")?;
    /// # Ok::<(), pmcrash::testing::TestError>(())
    /// ```
    pub fn workload_file(path: impl AsRef<Path>) -> Result<Check, TestError> {
        let mut loaded = crate::workloads::load(&[path.as_ref().to_path_buf()])?;
        let cwd = std::env::current_dir().ok();
        for l in &mut loaded {
            let p = Path::new(&l.name);
            let rel = cwd
                .as_deref()
                .and_then(|c| p.strip_prefix(c).ok())
                .unwrap_or(p);
            l.name = rel.display().to_string();
        }
        Ok(Check::of(loaded))
    }

    /// A check of a workload written as TOML text (the workload file format).
    ///
    /// ```
    /// let check = pmcrash::testing::Check::toml("sync", "[[ops]]\nop = \"sync\"\n")?;
    /// # Ok::<(), pmcrash::testing::TestError>(())
    /// ```
    pub fn toml(name: &str, src: &str) -> Result<Check, TestError> {
        let workload = Workload::parse(src, name).map_err(LoadError::from)?;
        Ok(Check::of(vec![Loaded {
            name: name.to_owned(),
            workload,
        }]))
    }

    /// A check of ops written in Rust, validated as a workload file's would be.
    ///
    /// ```
    /// use pmcrash::testing::{Check, Op};
    /// let check = Check::ops("sync twice", vec![Op::Sync, Op::Sync])?;
    /// # Ok::<(), pmcrash::testing::TestError>(())
    /// ```
    pub fn ops(name: &str, ops: Vec<Op>) -> Result<Check, TestError> {
        crash_models::ops::validate(&ops).map_err(|e| TestError::Ops {
            name: name.to_owned(),
            index: e.op_index,
            field: e.field.to_owned(),
            message: e.message,
        })?;
        let op_locations = (0..ops.len())
            .map(|i| Location {
                line: i + 1,
                col: 1,
            })
            .collect();
        Ok(Check::of(vec![Loaded {
            name: name.to_owned(),
            workload: Workload {
                description: name.to_owned(),
                fs: Vec::new(),
                ops,
                op_locations,
                expect: None,
                checkers: Vec::new(),
                crash_from_op: None,
            },
        }]))
    }

    /// Adds the workloads of another check (its settings are ignored).
    ///
    /// ```
    /// use pmcrash::testing::{Check, Op};
    /// let both = Check::ops("a", vec![Op::Sync])?.and(Check::ops("b", vec![Op::Sync])?);
    /// assert_eq!(both.workload_names(), ["a", "b"]);
    /// # Ok::<(), pmcrash::testing::TestError>(())
    /// ```
    pub fn and(mut self, other: Check) -> Check {
        self.workloads.extend(other.workloads);
        self
    }

    /// The workloads' names, in order.
    ///
    /// ```
    /// let c = pmcrash::testing::Check::toml("t", "[[ops]]\nop = \"sync\"\n")?;
    /// assert_eq!(c.workload_names(), ["t"]);
    /// # Ok::<(), pmcrash::testing::TestError>(())
    /// ```
    pub fn workload_names(&self) -> Vec<&str> {
        self.workloads.iter().map(|l| l.name.as_str()).collect()
    }

    /// The file system (default ext4).
    ///
    /// ```
    /// use pmcrash::testing::{Check, FsKind};
    /// let c = Check::toml("t", "[[ops]]\nop = \"sync\"\n")?.fs(FsKind::Xfs);
    /// assert_eq!(c.config().fs, FsKind::Xfs);
    /// # Ok::<(), pmcrash::testing::TestError>(())
    /// ```
    pub fn fs(mut self, fs: FsKind) -> Check {
        self.cfg.fs = fs;
        self
    }

    /// The kernel (default [`Kernel::from_env`]).
    ///
    /// ```
    /// use pmcrash::testing::{Check, Kernel};
    /// let c = Check::toml("t", "[[ops]]\nop = \"sync\"\n")?.kernel(Kernel::Tree("/src/linux".into()));
    /// # Ok::<(), pmcrash::testing::TestError>(())
    /// ```
    pub fn kernel(mut self, kernel: Kernel) -> Check {
        self.kernel = kernel;
        self
    }

    /// Which store boundaries become crash points (default: fences). [`Policy::Op`]
    /// (op boundaries) keeps a suite to seconds per workload.
    ///
    /// ```
    /// use pmcrash::testing::{Check, Policy};
    /// let c = Check::toml("t", "[[ops]]\nop = \"sync\"\n")?.points(Policy::Op);
    /// assert_eq!(c.config().points, Policy::Op);
    /// # Ok::<(), pmcrash::testing::TestError>(())
    /// ```
    pub fn points(mut self, points: Policy) -> Check {
        self.cfg.points = points;
        self
    }

    /// Which crash states each point gets (default: each in-flight line dropped alone).
    ///
    /// ```
    /// use pmcrash::testing::{Check, Strategy};
    /// let c = Check::toml("t", "[[ops]]\nop = \"sync\"\n")?.states(Strategy::All);
    /// # Ok::<(), pmcrash::testing::TestError>(())
    /// ```
    pub fn states(mut self, states: Strategy) -> Check {
        self.cfg.states = states;
        self
    }

    /// The persistency model (default `x86-adr`).
    ///
    /// ```
    /// use pmcrash::testing::{Check, Model};
    /// let c = Check::toml("t", "[[ops]]\nop = \"sync\"\n")?.model(Model::X86Eadr);
    /// # Ok::<(), pmcrash::testing::TestError>(())
    /// ```
    pub fn model(mut self, model: Model) -> Check {
        self.cfg.model = model;
        self
    }

    /// Any other setting of the run (workers, seeds, caps, PM size).
    ///
    /// ```
    /// let c = pmcrash::testing::Check::toml("t", "[[ops]]\nop = \"sync\"\n")?
    ///     .configure(|cfg| cfg.workers = 1);
    /// assert_eq!(c.config().workers, 1);
    /// # Ok::<(), pmcrash::testing::TestError>(())
    /// ```
    pub fn configure(mut self, f: impl FnOnce(&mut RunConfig)) -> Check {
        f(&mut self.cfg);
        self
    }

    /// The run's configuration.
    ///
    /// ```
    /// let c = pmcrash::testing::Check::toml("t", "[[ops]]\nop = \"sync\"\n")?;
    /// assert_eq!(c.config().fs, pmcrash::testing::FsKind::Ext4);
    /// # Ok::<(), pmcrash::testing::TestError>(())
    /// ```
    pub fn config(&self) -> &RunConfig {
        &self.cfg
    }

    /// Runs the check and returns its report (blocking: it makes its own tokio runtime;
    /// from async code use [`Check::run_async`]).
    ///
    /// ```no_run
    /// let report = pmcrash::testing::Check::toml("t", "[[ops]]\nop = \"sync\"\n")?.run()?;
    /// report.assert_no_findings();
    /// # Ok::<(), pmcrash::testing::TestError>(())
    /// ```
    pub fn run(self) -> Result<Report, TestError> {
        tokio::runtime::Runtime::new()
            .map_err(TestError::Runtime)?
            .block_on(self.run_async())
    }

    /// Runs the check in the caller's tokio runtime (multi-threaded).
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), pmcrash::testing::TestError> {
    /// let report = pmcrash::testing::Check::toml("t", "[[ops]]\nop = \"sync\"\n")?
    ///     .run_async()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn run_async(self) -> Result<Report, TestError> {
        if self.workloads.is_empty() {
            return Err(TestError::Empty);
        }
        let opts = self.kernel.setup_options()?;
        let assets = crate::setup::ensure(&opts)?;
        let mut p = Pipeline::new(assets, self.cfg)?;
        let r = p.run(&self.workloads, false).await;
        p.shutdown().await;
        Ok(r?)
    }
}

impl Report {
    /// The findings in words, one block per workload and distinct finding (verdict,
    /// crash point, problems), with how many crash states showed it and the command
    /// that reproduces the first. Only the classes in `only` are listed (all when
    /// `None`). Empty when there is nothing to list.
    ///
    /// ```
    /// # use pmcrash::report::*;
    /// # let cfg = ConfigReport { fs: pmcrash::testing::FsKind::Ext4, model: "x86-adr".into(), points: "op".into(), states: "each-line".into(), seed: 0, kernel: "k".into(), workers: 1, sector_atomic: None };
    /// let report = Report::new(cfg, &Default::default(), vec![]);
    /// assert_eq!(report.findings_text(None), "");
    /// ```
    pub fn findings_text(&self, only: Option<&[Verdict]>) -> String {
        let mut s = String::new();
        for w in &self.workloads {
            // Distinct (verdict, point, problems), in the order first seen.
            let mut groups: Vec<(String, u64, &str)> = Vec::new();
            let mut index: BTreeMap<String, usize> = BTreeMap::new();
            for f in &w.findings {
                if only.is_some_and(|o| !o.contains(&f.verdict)) {
                    continue;
                }
                let name = f.point.op_name.as_deref().unwrap_or("?");
                let when = match f.point.op {
                    Some(op) if op + 1 == f.point.ops_completed => {
                        format!("right after op {op} ({name}) returned")
                    }
                    Some(op) => format!("during op {op} ({name})"),
                    None => "before the first op".to_owned(),
                };
                let mut key = format!("  {} at a crash {when}\n", f.verdict);
                for p in &f.problems {
                    let _ = writeln!(key, "    {}: {}", p.verdict, p.message);
                }
                match index.get(&key) {
                    Some(&i) => groups[i].1 += f.states,
                    None => {
                        index.insert(key.clone(), groups.len());
                        groups.push((key, f.states, &f.reproduce));
                    }
                }
            }
            if groups.is_empty() {
                continue;
            }
            let classes: BTreeMap<Verdict, u64> = w
                .verdicts
                .iter()
                .filter(|(v, n)| {
                    **v != Verdict::Ok && **n > 0 && only.is_none_or(|o| o.contains(v))
                })
                .map(|(v, n)| (*v, *n))
                .collect();
            let _ = writeln!(
                s,
                "{} on {}-DAX: {}",
                w.name,
                w.fs,
                classes
                    .iter()
                    .map(|(v, n)| format!("{v} in {n} crash state(s)"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            for (key, n, reproduce) in groups {
                s.push_str(&key);
                let _ = writeln!(s, "    ({n} crash state(s); reproduce: {reproduce})");
            }
            if w.findings_omitted > 0 {
                let _ = writeln!(
                    s,
                    "  ... and {} more in the JSON report",
                    w.findings_omitted
                );
            }
        }
        s
    }

    /// Panics, with the findings in words, when any crash state of any workload is
    /// not `ok` (whatever the workloads' `[expect]` tables allow), or when the run
    /// was cut short.
    ///
    /// ```
    /// # use pmcrash::report::*;
    /// # let cfg = ConfigReport { fs: pmcrash::testing::FsKind::Ext4, model: "x86-adr".into(), points: "op".into(), states: "each-line".into(), seed: 0, kernel: "k".into(), workers: 1, sector_atomic: None };
    /// let report = Report::new(cfg, &Default::default(), vec![]);
    /// report.assert_no_findings();
    /// ```
    #[track_caller]
    pub fn assert_no_findings(&self) {
        self.assert_only(&[]);
    }

    /// Panics, with the findings in words, when a crash state has a verdict other than
    /// `ok` and those in `allowed` (an `unsafe-flush-only` finding may be what a test
    /// of a program's own flushes expects), or when the run was cut short.
    ///
    /// ```
    /// # use pmcrash::report::*;
    /// use pmcrash::testing::Verdict;
    /// # let cfg = ConfigReport { fs: pmcrash::testing::FsKind::Ext4, model: "x86-adr".into(), points: "op".into(), states: "each-line".into(), seed: 0, kernel: "k".into(), workers: 1, sector_atomic: None };
    /// let report = Report::new(cfg, &Default::default(), vec![]);
    /// report.assert_only(&[Verdict::UnsafeFlushOnly]);
    /// ```
    #[track_caller]
    pub fn assert_only(&self, allowed: &[Verdict]) {
        if let Some(l) = self.incomplete_line() {
            panic!("{l}");
        }
        let unexpected: Vec<Verdict> = Verdict::ALL
            .into_iter()
            .filter(|v| *v != Verdict::Ok && !allowed.contains(v))
            .filter(|v| self.totals.verdicts.get(v).is_some_and(|n| *n > 0))
            .collect();
        if unexpected.is_empty() {
            return;
        }
        let allowed_text = if allowed.is_empty() {
            "none".to_owned()
        } else {
            allowed
                .iter()
                .map(|v| v.name())
                .collect::<Vec<_>>()
                .join(", ")
        };
        panic!(
            "pmcrash found crash states that are not ok (allowed: {allowed_text}):\n{}",
            self.findings_text(Some(&unexpected))
        );
    }
}
