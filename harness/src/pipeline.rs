//! The whole loop: trace a workload, enumerate its crash points, states and images,
//! let the real kernel recover each distinct image, and judge every state.
//!
//! This is also the library API for users' own `cargo test` suites:
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use pmcrash::pipeline::{Pipeline, RunConfig};
//! let assets = pmcrash::setup::ensure(&pmcrash::setup::SetupOptions::default())?;
//! let workloads = pmcrash::workloads::load(&["corpora/lsfmm2016".into()])?;
//! let mut p = Pipeline::new(assets, RunConfig::default())?;
//! let report = p.run(&workloads, false).await?;
//! p.shutdown().await;
//! assert!(!report.failed(), "{}", report.render_text());
//! // report.summary() is stable: snapshot it with insta.
//! # Ok(()) }
//! ```

use crate::checker::{Checker, CheckerError, CheckerOptions, ImageJob, KnownBlocks, Recovery};
use crate::findings::{FindingGroups, GroupKey};
use crate::guest::GuestFactory;
use crate::image::FSDAX_DATA_OFFSET;
use crate::interrupt::Interrupt;
use crate::oracle::{self, Problem, Verdict};
use crate::report::{
    ConfigReport, DroppedLine, ExpectCheck, Finding, OpLine, PointRef, PointReport, PrunedImage,
    Report, Timings, WorkloadReport, WorkloadStats,
};
use crate::schedule::{Fate, PointWork, Scheduler};
use crate::setup::Assets;
use crate::symbols::SymbolTable;
use crate::workloads::Loaded;
use crash_models::delta::PointSnapshot;
use crash_models::history::History;
use crash_models::model::{Model, ModelConfig, Replayer};
use crash_models::ops::{FsKind, Op, Workload};
use crash_models::points::{CrashPoint, CrashPoints, PointConfig, Policy, Reason};
use crash_models::promise;
use crash_models::protocol::OpResult;
use crash_models::states::{CrashState, CrashStates, StateConfig, Strategy};
use crash_models::torn::{self, BlockWrite, Layout};
use crash_models::trace::Trace;
use crash_models::trace::{Privilege, Record};
use indicatif::ProgressBar;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc;

/// Errors that stop a run (infrastructure or usage: exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// Tracing failed.
    #[error("tracing {workload}: {source}")]
    Trace {
        /// The workload.
        workload: String,
        /// What went wrong.
        #[source]
        source: crate::trace::TracingError,
    },
    /// The checker failed.
    #[error("checking {workload}: {source}")]
    Check {
        /// The workload.
        workload: String,
        /// Why.
        source: CheckerError,
    },
    /// The trace is unusable (unresolved flushes, broken markers).
    #[error("the trace of {workload} is unusable: {message}")]
    BadTrace {
        /// The workload.
        workload: String,
        /// Why.
        message: String,
    },
    /// The run was interrupted before any crash state of this workload was checked.
    #[error("interrupted while preparing {workload}")]
    Interrupted {
        /// The workload.
        workload: String,
    },
    /// `--crash-at` names a record that is no crash point of the workload.
    #[error(
        "--crash-at {record} is no crash point of {workload} with these settings (and the \
         trace is exactly reproducible only in deterministic mode); the nearest crash points: \
         {}",
        nearest.join(", ")
    )]
    NoCrashPoint {
        /// The workload.
        workload: String,
        /// The record asked for.
        record: u64,
        /// The nearest crash points, described (`5167 (op 8 fmetadatasync)`).
        nearest: Vec<String>,
    },
    /// The check of a workload could make no progress (a bug in pmcrash: the drive
    /// loop never waits when nothing can wake it).
    #[error("internal error: checking {workload} stalled: {state}; please report it")]
    Stalled {
        /// The workload.
        workload: String,
        /// The scheduler's state.
        state: String,
    },
    /// A bundle could not be written.
    #[error("{0}")]
    Bundle(#[from] crate::bundle::BundleError),
    /// The guest kernel's symbols could not be read.
    #[error("{0}")]
    Symbols(#[from] crate::symbols::SymbolError),
    /// A user program cannot be shipped into the guest, or it failed in the traced run.
    #[error("{workload}: {message}")]
    Program {
        /// The workload.
        workload: String,
        /// What went wrong.
        message: String,
    },
    /// Local I/O.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
}

/// How a run is configured.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// The file system.
    pub fs: FsKind,
    /// The persistency model.
    pub model: Model,
    /// Which store boundaries become crash points.
    pub points: Policy,
    /// Which crash states each point gets.
    pub states: Strategy,
    /// The seed for every random choice (used by `random:N` states without their own
    /// seed).
    pub seed: u64,
    /// Most crash states per point.
    pub max_states: usize,
    /// Most crash points per workload (the first ones), `None` for all.
    pub max_points: Option<usize>,
    /// Only the crash point after this many records (from a finding's reproducer).
    pub crash_at: Option<u64>,
    /// Checker guests in parallel.
    pub workers: usize,
    /// PM size in bytes (default: the file system's default).
    pub pm_size: Option<u64>,
    /// Verdict classes that fail the run.
    pub fail_on: BTreeSet<Verdict>,
    /// Findings listed per workload (the rest are counted).
    pub max_findings: usize,
    /// Keep traces and images here (default: a temporary directory).
    pub out_dir: Option<PathBuf>,
    /// Read-set pruning: an image equal to a checked one on every line that check
    /// read takes its recovery without a guest run (`--no-prune` turns it off).
    pub prune: bool,
    /// Run fsck inside the checker guests, in the recorded check, as pmcrash did
    /// before fsck moved to the host (`--fsck-in-guest`; slower, kept to compare).
    pub fsck_in_guest: bool,
    /// The memory budget of the crash points waiting to be checked, in MiB: over it,
    /// no new point is made until one is judged.
    pub memory_mib: u64,
    /// List every crash state's verdict in the point reports (to compare runs state
    /// by state, e.g. pruned against `--no-prune`).
    pub state_verdicts: bool,
    /// BTT-like sector atomicity of the kernel's block writes to PM: a crash state
    /// keeps or drops each aligned sector of this many bytes (512 or 4096) of such a
    /// write whole (`docs/torn-writes.md`). `None`: fsdax as it is, no atomicity.
    pub sector_atomic: Option<u64>,
    /// Record which blocks of the file-system code each workload's trace executed
    /// ([`WorkloadReport::coverage`]; the fuzzer's feedback).
    pub coverage: bool,
}

impl Default for RunConfig {
    fn default() -> Self {
        RunConfig {
            fs: FsKind::Ext4,
            model: Model::X86Adr,
            points: Policy::default(),
            states: Strategy::EachLine,
            seed: 0,
            max_states: 4096,
            max_points: None,
            crash_at: None,
            workers: CheckerOptions::default().workers.min(2),
            pm_size: None,
            fail_on: Verdict::ALL
                .into_iter()
                .filter(|v| *v != Verdict::Ok)
                .collect(),
            max_findings: 50,
            out_dir: None,
            prune: true,
            fsck_in_guest: false,
            memory_mib: crate::memory::DEFAULT_BUDGET_MIB,
            state_verdicts: false,
            sector_atomic: None,
            coverage: false,
        }
    }
}

impl RunConfig {
    /// The states strategy with the run's seed filled in.
    pub fn strategy(&self) -> Strategy {
        match self.states {
            Strategy::Random { count, seed: 0 } => Strategy::Random {
                count,
                seed: self.seed,
            },
            s => s,
        }
    }

    /// The seed in effect.
    pub fn effective_seed(&self) -> u64 {
        match self.strategy() {
            Strategy::Random { seed, .. } => seed,
            _ => self.seed,
        }
    }
}

/// A line in flight at a crash point, as the findings describe it.
#[derive(Debug, Clone)]
struct LineInfo {
    offset: u64,
    queued: u32,
    last_record: u64,
    first_unflushed_record: Option<u64>,
    user: bool,
}

/// A crash point being checked (see [`crate::schedule`]).
type PointData = PointWork<LineInfo>;

/// A run: one file system, one configuration, any number of workloads, with the
/// checker guests kept between workloads.
pub struct Pipeline {
    factory: GuestFactory,
    cfg: RunConfig,
    checker: Option<Checker>,
    tmp: tempfile::TempDir,
    interrupt: Interrupt,
    /// The last workload's check was cut short by the interrupt.
    cut_short: bool,
    /// The guest kernel's code symbols, read once.
    symbols: Option<Arc<SymbolTable>>,
    /// The user checkers the current checker guests run.
    user_checkers: Vec<crash_models::ops::UserChecker>,
    /// A saved program bundle to give the guests instead of building one from the
    /// host paths (a run bundle's, for `pmcrash check`).
    programs_from: Option<PathBuf>,
    /// Save a bundle of every workload here, one sub-directory each (`run --save`).
    save_dir: Option<PathBuf>,
    /// Check only the crash point of the state with this finding id (`repro`).
    only_finding: Option<String>,
    /// That state, judged again, after the check.
    repro: Option<ReproState>,
}

/// One crash state checked again by its finding id (`pmcrash repro`): its verdict and
/// everything the recovery showed.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReproState {
    /// The finding id.
    pub id: String,
    /// Where it crashed.
    pub point: PointRef,
    /// The state's verdict.
    pub verdict: Verdict,
    /// What is wrong.
    pub problems: Vec<Problem>,
    /// The lines it dropped (wholly or partly).
    pub dropped_lines: Vec<DroppedLine>,
    /// What the kernel's recovery left: mount, fsck and console output.
    pub recovery: crate::checker::Recovery,
}

/// One finding's crash state, and what judging a variant of it needs
/// ([`Pipeline::finding_state`]): `pmcrash minimize` keeps some of its dropped lines
/// and persists the others.
pub struct FindingState {
    /// Where it crashed.
    pub point: PointRef,
    /// The crash point's snapshot, which builds any state of the point.
    pub snap: Arc<PointSnapshot>,
    /// The finding's state.
    pub state: CrashState,
    /// Every line in flight at the point: (PM offset, stores queued).
    pub lines: Vec<(u64, u32)>,
    /// Every line the state drops (wholly or partly), described, in PM order.
    pub dropped: Vec<DroppedLine>,
    /// What the ops had promised at the point.
    pub promised: promise::Promises,
    /// Every byte each file ever had (for stale data).
    pub history: History,
}

impl FindingState {
    /// The verdict and problems of a recovery of a state of this point, as a run
    /// judges it (less the torn-write reclassification, which needs every state of
    /// the point).
    pub fn judge(&self, rec: &Recovery) -> (Verdict, Vec<Problem>) {
        let problems = oracle::judge(&self.promised, &self.history, rec);
        (oracle::verdict_of(&problems), problems)
    }

    /// The state that drops only the lines in `keep_dropped` (PM offsets of lines the
    /// finding's state drops), as that state does; every other line persists whole.
    pub fn variant(&self, keep_dropped: &BTreeSet<u64>) -> CrashState {
        let mut kept: Vec<(u64, u32)> = self
            .lines
            .iter()
            .map(|&(off, queued)| {
                let k = if keep_dropped.contains(&off) {
                    self.state.kept_of(off)
                } else {
                    queued
                };
                (off, k)
            })
            .filter(|&(_, k)| k > 0)
            .collect();
        kept.sort_unstable();
        CrashState { kept }
    }
}

impl Pipeline {
    /// A pipeline on the provisioned assets.
    pub fn new(assets: Assets, cfg: RunConfig) -> Result<Pipeline, PipelineError> {
        let mut factory = GuestFactory::new(assets, cfg.fs);
        if let Some(s) = cfg.pm_size {
            factory.pm_size = s;
        }
        Self::with_factory(factory, cfg)
    }

    /// A pipeline with a factory set up by the caller (own kernel, sizes, timeouts).
    pub fn with_factory(factory: GuestFactory, cfg: RunConfig) -> Result<Pipeline, PipelineError> {
        let tmp = crate::scratch::run_dir(crate::scratch::RUN_PREFIX).map_err(|source| {
            PipelineError::Io {
                what: "create a run directory".into(),
                source,
            }
        })?;
        Ok(Pipeline {
            factory,
            cfg,
            checker: None,
            tmp,
            interrupt: Interrupt::new(),
            cut_short: false,
            symbols: None,
            user_checkers: Vec::new(),
            programs_from: None,
            save_dir: None,
            only_finding: None,
            repro: None,
        })
    }

    /// Stop at this request (Ctrl-C): the crash images being recovered are finished, no
    /// new work starts, and [`Pipeline::run`] returns the report of what was checked,
    /// marked incomplete. Arms the request (see [`Interrupt::arm`]).
    pub fn set_interrupt(&mut self, interrupt: Interrupt) {
        interrupt.arm();
        if let Some(c) = &mut self.checker {
            c.set_interrupt(interrupt.clone());
        }
        self.interrupt = interrupt;
    }

    /// Save a bundle of every workload run from now on under `dir`, in a
    /// sub-directory named after the workload file ([`crate::bundle`]).
    pub fn save_bundles(&mut self, dir: &Path) {
        self.save_dir = Some(dir.to_path_buf());
    }

    /// Check only the crash point holding the state with finding id `id` (every state
    /// of that point, so the judgement is the same as in a full run), and keep that
    /// state's judgement for [`Pipeline::take_repro`].
    pub fn only_finding(&mut self, id: &str) {
        self.only_finding = Some(id.to_owned());
    }

    /// The state [`Pipeline::only_finding`] asked for, judged, once a check found it.
    pub fn take_repro(&mut self) -> Option<ReproState> {
        self.repro.take()
    }

    /// The configuration.
    pub fn config(&self) -> &RunConfig {
        &self.cfg
    }

    fn out_dir(&self) -> PathBuf {
        self.cfg
            .out_dir
            .clone()
            .unwrap_or_else(|| self.tmp.path().to_path_buf())
    }

    /// The report's configuration block.
    pub fn config_report(&self) -> ConfigReport {
        ConfigReport {
            fs: self.cfg.fs,
            model: self.cfg.model.name().to_owned(),
            points: self.cfg.points.to_string(),
            states: self.cfg.strategy().to_string(),
            seed: self.cfg.effective_seed(),
            kernel: self.factory.assets.kernel_release.clone(),
            workers: self.cfg.workers,
            sector_atomic: self.cfg.sector_atomic,
        }
    }

    /// Run every workload and assemble the report. `progress` shows bars on stderr.
    /// After an interrupt the report holds the workloads finished and the crash states
    /// of the interrupted one checked so far, and says it is incomplete.
    pub async fn run(
        &mut self,
        workloads: &[Loaded],
        progress: bool,
    ) -> Result<Report, PipelineError> {
        let mut reports = Vec::new();
        let mut incomplete = false;
        for l in workloads {
            if self.interrupt.is_requested() {
                incomplete = true;
                break;
            }
            match self.run_workload(&l.name, &l.workload, progress).await {
                Ok(r) => reports.push(r),
                Err(PipelineError::Interrupted { .. }) => {
                    incomplete = true;
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        // A request that came after the last state was checked cut nothing.
        incomplete |= self.cut_short;
        self.cut_short = false;
        let mut report = Report::new(self.config_report(), &self.cfg.fail_on, reports);
        report.incomplete = incomplete;
        Ok(report)
    }

    /// Give the guests this saved program bundle (a run bundle's `programs.bundle`)
    /// instead of collecting the workload's programs from the host again.
    pub fn use_program_bundle(&mut self, path: &Path) {
        self.programs_from = Some(path.to_path_buf());
    }

    /// Ship the workload's programs to every guest it starts: a checker whose guests
    /// carry other programs is replaced (they are given at start, through `fw_cfg`).
    async fn use_programs(&mut self, name: &str, workload: &Workload) -> Result<(), PipelineError> {
        let bundle = match &self.programs_from {
            Some(saved) => Some(saved.clone()),
            None => {
                let programs = crate::programs::programs_of(workload);
                crate::programs::write_bundle(&self.factory.assets.cache_dir, &programs).map_err(
                    |e| PipelineError::Program {
                        workload: name.into(),
                        message: e.to_string(),
                    },
                )?
            }
        };
        if bundle != self.factory.programs || workload.checkers != self.user_checkers {
            self.factory.programs = bundle;
            self.user_checkers = workload.checkers.clone();
            if let Some(c) = self.checker.take() {
                c.shutdown().await;
                let _ = std::fs::remove_file(self.tmp.path().join("warm.img"));
            }
        }
        Ok(())
    }

    /// Trace, enumerate, check and judge one workload.
    pub async fn run_workload(
        &mut self,
        name: &str,
        workload: &Workload,
        progress: bool,
    ) -> Result<WorkloadReport, PipelineError> {
        let t0 = Instant::now();
        let mut timings = Timings::default();
        let out = self.out_dir();
        std::fs::create_dir_all(&out).map_err(|source| PipelineError::Io {
            what: format!("create {}", out.display()),
            source,
        })?;
        let stem: String = std::path::Path::new(name)
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "workload".into())
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let bar = crate::progress::bar(1, progress, name);
        self.use_programs(name, workload).await?;

        // Trace, and meanwhile get the checker guests ready on a fresh image (the
        // same bytes as the base: images are made deterministically).
        bar.set_message("tracing (and starting checker guests)");
        self.prepare(name, &bar).await?;
        let interrupted = || PipelineError::Interrupted {
            workload: name.into(),
        };
        let warm_image = self.tmp.path().join("warm.img");
        let need_warm = !warm_image.exists();
        let factory = self.factory.clone();
        let trace_opts = crate::trace::TraceOptions {
            coverage: self.cfg.coverage.then(|| {
                self.symbols
                    .as_ref()
                    .map(|s| s.fs_code_ranges())
                    .unwrap_or_default()
            }),
            ..Default::default()
        };
        let checker = self.checker.as_mut().expect("checker");
        let trace_fut = async {
            let t = Instant::now();
            let r = crate::trace::trace_workload_with(&factory, workload, &out, &stem, &trace_opts)
                .await;
            (r, t.elapsed())
        };
        let warm_fut = async {
            let t = Instant::now();
            if need_warm {
                factory
                    .make_image(&warm_image)
                    .await
                    .map_err(CheckerError::Guest)?;
                checker.warm_up(&warm_image).await?;
            }
            Ok::<_, CheckerError>(t.elapsed())
        };
        // An interrupt drops both: their guests are killed on drop.
        let ((traced, trace_time), warm) = tokio::select! {
            both = async { tokio::join!(trace_fut, warm_fut) } => both,
            () = self.interrupt.requested() => return Err(interrupted()),
        };
        let traced = traced.map_err(|source| PipelineError::Trace {
            workload: name.into(),
            source,
        })?;
        timings.guest_ready_ms = warm
            .map_err(|source| PipelineError::Check {
                workload: name.into(),
                source,
            })?
            .as_millis() as u64;
        timings.trace_ms = trace_time.as_millis() as u64;
        let trace = &traced.decoded;
        check_usable(name, trace)?;
        let results = traced.results.clone();
        let failed = crate::programs::failures(&workload.ops, &results);
        if !failed.is_empty() {
            return Err(PipelineError::Program {
                workload: name.into(),
                message: failed.join("\n"),
            });
        }
        let report = self
            .check_decoded(
                name,
                workload,
                trace,
                &traced.base_image,
                &results,
                timings,
                t0,
                &bar,
            )
            .await?;
        let mut report = report;
        report.coverage = traced.coverage.clone();
        label_findings(self.cfg.fs, &traced.final_image, &mut report);
        if let Some(dir) = &self.save_dir {
            self.save_bundle(&dir.join(&stem), name, workload, &traced, &report)?;
        }
        // Traces and images are large; keep them only when asked to.
        if self.cfg.out_dir.is_none() {
            for p in [&traced.trace, &traced.base_image, &traced.final_image] {
                let _ = std::fs::remove_file(p);
            }
        }
        Ok(report)
    }

    /// The check half of [`Pipeline::run_workload`]: enumerate the crash points and
    /// states of a decoded trace, check their images (deltas over `base_image`) with
    /// the warmed-up checker guests, and judge them against the traced `results`.
    #[allow(clippy::too_many_arguments)]
    async fn check_decoded(
        &mut self,
        name: &str,
        workload: &Workload,
        trace: &Trace,
        base_image: &Path,
        results: &[OpResult],
        mut timings: Timings,
        t0: Instant,
        bar: &ProgressBar,
    ) -> Result<WorkloadReport, PipelineError> {
        let results = results.to_vec();

        // Enumerate lazily, check as images are made, judge each point once all its
        // images are recovered.
        let t = Instant::now();
        bar.set_message("checking crash images");
        bar.set_length(0);
        let history = History::new(&workload.ops, Some(&results));
        let known = KnownBlocks {
            hashes: history.known_hashes(),
        };
        let symbols = self.symbols.clone().unwrap_or_default();
        let mut producer = Producer::new(
            &self.cfg,
            workload,
            &results,
            &trace.records,
            trace.header.line_size,
            &symbols,
        );
        producer.only = self.only_finding.clone();
        let mut sched: Scheduler<LineInfo> =
            Scheduler::new(self.cfg.prune, self.cfg.memory_mib.saturating_mul(1 << 20));
        let layout = fs_layout(self.cfg.fs, base_image);
        let mut judge = Judge::new(
            &self.cfg,
            name,
            workload,
            &results,
            &history,
            &trace.records,
            &symbols,
            &layout,
        );
        judge.want = self.only_finding.as_deref();
        let (job_tx, job_rx) = mpsc::channel(1);
        let (done_tx, mut done_rx) = mpsc::unbounded_channel();
        let mut checker = self.checker.take().expect("checker");
        let interrupt = self.interrupt.clone();
        let mut stream = RunStream {
            producer: &mut producer,
            judge: &mut judge,
            bar,
            enumerate: std::time::Duration::ZERO,
            judging: std::time::Duration::ZERO,
        };
        let (checked, driven) = tokio::join!(
            checker.recover_stream(base_image, known, job_rx, done_tx),
            drive(&mut sched, &mut stream, job_tx, &mut done_rx, &interrupt)
        );
        let (enumerate, judging) = (stream.enumerate, stream.judging);
        let fsck_reused = checker.fsck_reused();
        self.checker = Some(checker);
        checked.map_err(|source| PipelineError::Check {
            workload: name.into(),
            source,
        })?;
        let stopped = driven.map_err(|state| PipelineError::Stalled {
            workload: name.into(),
            state,
        })?;
        if let (Some(record), 0) = (self.cfg.crash_at, producer.made) {
            return Err(PipelineError::NoCrashPoint {
                workload: name.into(),
                record,
                nearest: nearest_points(workload, &producer.passed, record),
            });
        }
        self.cut_short |= stopped;
        let stage = t.elapsed();
        timings.enumerate_ms = enumerate.as_millis() as u64;
        timings.oracle_ms = judging.as_millis() as u64;
        timings.check_ms = stage.saturating_sub(enumerate + judging).as_millis() as u64;
        timings.images_per_sec = if timings.check_ms > 0 {
            sched.checked as f64 * 1000.0 / timings.check_ms as f64
        } else {
            0.0
        };
        self.repro = judge.found.take();
        let mut report = judge.finish();
        report.stats.records = trace.records.len() as u64;
        report.stats.checked_images = sched.checked;
        report.stats.pruned_images = sched.pruned;
        report.stats.prune_read_sets = sched.read_sets();
        report.stats.unrecorded_checks = sched.unrecorded;
        report.stats.fsck_reused = fsck_reused;
        report.stats.peak_rss_bytes = crate::memory::peak_rss_bytes();
        timings.total_ms = t0.elapsed().as_millis() as u64;
        report.timings = timings;
        let costs = promise::op_costs(&trace.records, trace.header.line_size);
        for o in &mut report.ops {
            o.cost = costs.per_op.get(o.index).copied().unwrap_or_default();
        }
        bar.finish_and_clear();
        Ok(report)
    }

    /// Write the bundle of a traced and checked workload ([`crate::bundle`]).
    fn save_bundle(
        &self,
        dir: &Path,
        name: &str,
        workload: &Workload,
        traced: &crate::trace::TracedRun,
        report: &WorkloadReport,
    ) -> Result<(), PipelineError> {
        use crate::bundle::{BundleParts, KernelIdentity, RunInfo};
        let assets = &self.factory.assets;
        let run = RunInfo {
            workload: name.to_owned(),
            fs: self.cfg.fs,
            model: self.cfg.model.name().to_owned(),
            points: self.cfg.points.to_string(),
            states: self.cfg.strategy().to_string(),
            seed: self.cfg.effective_seed(),
            max_states: self.cfg.max_states,
            max_points: self.cfg.max_points,
            crash_at: self.cfg.crash_at,
            sector_atomic: self.cfg.sector_atomic,
            pm_size: self.factory.pm_size,
            deterministic: traced.deterministic,
            kernel: KernelIdentity::of(&assets.kernel, &assets.kernel_release)?,
            results: traced.results.clone(),
        };
        let full = Report::new(
            self.config_report(),
            &self.cfg.fail_on,
            vec![report.clone()],
        );
        let value = serde_json::to_value(&full).map_err(|e| PipelineError::Io {
            what: "serialise the report".into(),
            source: e.into(),
        })?;
        let source = std::fs::read_to_string(name).ok();
        crate::bundle::save(
            dir,
            &BundleParts {
                run: &run,
                workload,
                source: source.as_deref(),
                trace: &traced.trace,
                base_image: &traced.base_image,
                report: &value,
                programs: self.factory.programs.as_deref(),
            },
        )?;
        Ok(())
    }

    /// Make the checker (once), the saved VM state and the kernel's symbols.
    async fn prepare(&mut self, name: &str, bar: &ProgressBar) -> Result<(), PipelineError> {
        if self.checker.is_none() {
            let opts = CheckerOptions {
                workers: self.cfg.workers.max(1),
                // Read sets are only for pruning; they hold the kernel's loads only,
                // so a user checker's own reads of the pool would escape them.
                record_reads: self.cfg.prune && self.user_checkers.is_empty(),
                user_checkers: self.user_checkers.clone(),
                fsck_in_guest: self.cfg.fsck_in_guest,
                ..CheckerOptions::default()
            };
            let mut checker = Checker::new(self.factory.clone(), opts).map_err(|source| {
                PipelineError::Check {
                    workload: name.into(),
                    source,
                }
            })?;
            checker.set_interrupt(self.interrupt.clone());
            self.checker = Some(checker);
        }
        let interrupted = || PipelineError::Interrupted {
            workload: name.into(),
        };
        // Make the saved VM state (and the fsdax template) first, alone: the tracer and
        // every checker guest restore it, and they must not all wait on its cache lock
        // at once (the lock is a blocking flock).
        tokio::select! {
            made = self.factory.saved_state() => made.map_err(|e| PipelineError::Check {
                workload: name.into(),
                source: CheckerError::Guest(e),
            })?,
            () = self.interrupt.requested() => return Err(interrupted()),
        };
        if self.symbols.is_none() {
            bar.set_message("reading the guest kernel's symbols");
            let table = tokio::select! {
                t = crate::symbols::kernel_symbols(&self.factory) => t?,
                () = self.interrupt.requested() => return Err(interrupted()),
            };
            self.symbols = Some(Arc::new(table));
        }
        if let (Some(c), Some(t)) = (self.checker.as_mut(), self.symbols.as_ref()) {
            c.set_copy_routine(t.copy_routine());
        }
        Ok(())
    }

    /// Check a workload from a saved trace, with no workload run: the same crash
    /// points, states and verdicts as the run that traced it (`pmcrash check`).
    /// `base_image` is the PM image before the first op, `results` the traced ops'
    /// results.
    pub async fn check_traced(
        &mut self,
        name: &str,
        workload: &Workload,
        trace: &Trace,
        base_image: &Path,
        results: &[OpResult],
        progress: bool,
    ) -> Result<WorkloadReport, PipelineError> {
        let t0 = Instant::now();
        let mut timings = Timings::default();
        let bar = crate::progress::bar(1, progress, name);
        check_usable(name, trace)?;
        self.use_programs(name, workload).await?;
        bar.set_message("starting checker guests");
        self.prepare(name, &bar).await?;
        let t = Instant::now();
        let checker = self.checker.as_mut().expect("checker");
        tokio::select! {
            r = checker.warm_up(base_image) => r.map_err(|source| PipelineError::Check {
                workload: name.into(),
                source,
            })?,
            () = self.interrupt.requested() => return Err(PipelineError::Interrupted {
                workload: name.into(),
            }),
        }
        timings.guest_ready_ms = t.elapsed().as_millis() as u64;
        let mut report = self
            .check_decoded(
                name, workload, trace, base_image, results, timings, t0, &bar,
            )
            .await?;
        if report.findings.iter().any(|f| !f.dropped_lines.is_empty()) {
            // The bundle keeps no final image: the trace's every store on the base is it.
            match crate::labels::final_image_from_trace(trace, base_image) {
                Ok(f) => label_findings(self.cfg.fs, f.path(), &mut report),
                Err(e) => eprintln!("pmcrash: dropped lines not labelled: final image: {e}"),
            }
        }
        Ok(report)
    }

    /// Write the crash image of the state with finding id `id` to `out`: the base
    /// image with that state's delta, as the checker got it (`pmcrash export`). Returns
    /// the crash point's record, or `None` when no state of the trace has that id.
    #[allow(clippy::too_many_arguments)]
    pub async fn write_crash_image(
        &mut self,
        name: &str,
        workload: &Workload,
        trace: &Trace,
        base_image: &Path,
        results: &[OpResult],
        id: &str,
        out: &Path,
    ) -> Result<Option<u64>, PipelineError> {
        let Some(f) = self
            .finding_state(name, workload, trace, base_image, results, id)
            .await?
        else {
            return Ok(None);
        };
        let (record, st, snap) = (f.point.record, f.state, f.snap);
        let io = |what: &str| {
            let what = format!("{what} {}", out.display());
            move |source| PipelineError::Io { what, source }
        };
        let file = std::fs::File::create(out).map_err(io("create"))?;
        crate::image::copy_sparse(base_image, 0, &file, 0).map_err(|e| PipelineError::Io {
            what: format!("copy {} to {}", base_image.display(), out.display()),
            source: std::io::Error::other(e.to_string()),
        })?;
        let len = std::fs::metadata(base_image)
            .map_err(io("stat the base image for"))?
            .len();
        file.set_len(len).map_err(io("size"))?;
        snap.build(&st)
            .apply(&file)
            .map_err(io("write the crash state into"))?;
        file.sync_all().map_err(io("fsync"))?;
        Ok(Some(record))
    }

    /// The QEMU command line that boots `pm_image` with this run's kernel, initramfs
    /// and NVDIMM shape ([`crate::vm::interactive_command`]).
    pub fn boot_command(&self, pm_image: &Path) -> Result<String, PipelineError> {
        Ok(crate::vm::interactive_command(&self.boot_spec(pm_image)?))
    }

    /// The state with finding id `id` and what judging a variant of it needs (`pmcrash
    /// export`, `shell`, `minimize`), or `None` when no state of the trace has that id.
    pub async fn finding_state(
        &mut self,
        name: &str,
        workload: &Workload,
        trace: &Trace,
        base_image: &Path,
        results: &[OpResult],
        id: &str,
    ) -> Result<Option<FindingState>, PipelineError> {
        check_usable(name, trace)?;
        // The kernel's symbols decide the block writes (`--sector-atomic` groups).
        let bar = crate::progress::bar(1, false, name);
        self.prepare(name, &bar).await?;
        let symbols = self.symbols.clone().unwrap_or_default();
        let mut producer = Producer::new(
            &self.cfg,
            workload,
            results,
            &trace.records,
            trace.header.line_size,
            &symbols,
        );
        producer.only = Some(id.to_owned());
        let Some(made) = producer.next_point() else {
            return Ok(None);
        };
        let record = made.point.applied;
        let Some(st) = made
            .states
            .iter()
            .find(|st| state_id(record, &made.lines, st) == id)
        else {
            return Ok(None);
        };
        let p = &made.point;
        let owners = promise::extent_owners(&workload.ops, results, FSDAX_DATA_OFFSET);
        let layout = fs_layout(self.cfg.fs, base_image);
        Ok(Some(FindingState {
            point: point_ref(p, workload, &trace.records),
            snap: made.snap.clone(),
            state: st.clone(),
            lines: made.lines.iter().map(|l| (l.offset, l.queued)).collect(),
            dropped: dropped_lines(&made.lines, st, &owners, &trace.records, &symbols, &layout)
                .collect(),
            promised: promise::promises(
                &workload.ops,
                Some(results),
                p.ops_completed as usize,
                p.op_in_progress.map(|o| o as usize),
            ),
            history: History::new(&workload.ops, Some(results)),
        }))
    }

    /// Recover `images` (crash images over `base_image`) with the checker guests, in
    /// order; each recovery is the one a run's check would get.
    pub async fn recover_images(
        &mut self,
        name: &str,
        base_image: &Path,
        history: &History,
        images: Vec<Arc<crash_models::delta::CrashImage>>,
    ) -> Result<Vec<Recovery>, PipelineError> {
        let bar = crate::progress::bar(1, false, name);
        self.prepare(name, &bar).await?;
        let checker = self.checker.as_mut().expect("checker");
        let err = |source| PipelineError::Check {
            workload: name.into(),
            source,
        };
        let known = KnownBlocks {
            hashes: history.known_hashes(),
        };
        let got = checker
            .recover_all(base_image, images, known, None)
            .await
            .map_err(err)?;
        if got.interrupted {
            return Err(PipelineError::Interrupted {
                workload: name.into(),
            });
        }
        Ok(got.recoveries)
    }

    /// The guest that boots `pm_image` with this run's kernel, initramfs and NVDIMM
    /// shape (`pmcrash shell` swaps the initramfs).
    pub fn boot_spec(&self, pm_image: &Path) -> Result<crate::vm::VmSpec, PipelineError> {
        self.factory
            .spec(pm_image, None)
            .map_err(|e| PipelineError::Check {
                workload: pm_image.display().to_string(),
                source: CheckerError::Guest(e),
            })
    }
}

/// A trace the pipeline can enumerate: every flush resolved, markers well formed.
fn check_usable(name: &str, trace: &Trace) -> Result<(), PipelineError> {
    if trace.footer.unresolved_flushes > 0 {
        return Err(PipelineError::BadTrace {
            workload: name.into(),
            message: format!(
                "{} flushes could not be translated",
                trace.footer.unresolved_flushes
            ),
        });
    }
    let problems = crate::trace::marker_problems(&trace.records);
    if !problems.is_empty() {
        return Err(PipelineError::BadTrace {
            workload: name.into(),
            message: problems.join("; "),
        });
    }
    Ok(())
}

/// What the drive loop does next (see [`drive`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Make the next crash point.
    Make,
    /// Wait for a recovery or an interrupt, and for a free worker when `hand_out`.
    Wait {
        /// An image waits to be handed out.
        hand_out: bool,
    },
    /// Every point is judged (or the run was stopped and nothing is out).
    Finish,
    /// Points wait, none can be made, nothing waits to be handed out and nothing is
    /// out: nothing could ever wake the loop. A bug; reported, never waited on.
    Stalled,
}

/// The drive loop's next step, given the scheduler's state after judging every point
/// that could be judged. The loop only ever waits when something can wake it: an
/// image to hand out (a worker will be free) or one being checked (its recovery will
/// come). A point is made whenever the window has room, in particular right after
/// judging emptied it: the scheduler admits a point whenever none waits, so over the
/// budget work waits, and never for nothing.
fn step(
    stopped: bool,
    producer_done: bool,
    wants_point: bool,
    has_work: bool,
    in_flight: usize,
    points_waiting: bool,
) -> Step {
    if !stopped && !producer_done && wants_point {
        Step::Make
    } else if !stopped && has_work {
        Step::Wait { hand_out: true }
    } else if in_flight > 0 {
        Step::Wait { hand_out: false }
    } else if stopped || (producer_done && !points_waiting) {
        Step::Finish
    } else {
        Step::Stalled
    }
}

/// What the drive loop makes and judges points with.
trait PointStream<L> {
    /// Add the next crash point to `sched`; false when no point is left.
    fn make(&mut self, sched: &mut Scheduler<L>) -> bool;
    /// Judge a point whose images all have a recovery.
    fn judge(&mut self, point: PointWork<L>, sched: &Scheduler<L>);
}

/// The pipeline's points: the [`Producer`]'s, judged by the [`Judge`], timed.
struct RunStream<'p, 'a> {
    producer: &'p mut Producer<'a>,
    judge: &'p mut Judge<'a>,
    bar: &'p indicatif::ProgressBar,
    enumerate: std::time::Duration,
    judging: std::time::Duration,
}

impl PointStream<LineInfo> for RunStream<'_, '_> {
    fn make(&mut self, sched: &mut Scheduler<LineInfo>) -> bool {
        let t = Instant::now();
        let made = self.producer.next_point();
        let more = made.is_some();
        if let Some(p) = made {
            self.judge
                .block_writes
                .insert(p.point.applied, p.block_writes);
            sched.add_point(p.point, p.lines, p.snap, p.states, p.capped);
        }
        self.enumerate += t.elapsed();
        self.bar.set_length(sched.images() as u64);
        more
    }

    fn judge(&mut self, point: PointWork<LineInfo>, sched: &Scheduler<LineInfo>) {
        let t = Instant::now();
        self.judge.point(&point, sched);
        self.judging += t.elapsed();
        self.bar.set_position(sched.resolved() as u64);
    }
}

/// Make crash points as the scheduler's window allows, hand their images to the
/// checker workers through `jobs` as workers get free, take the recoveries from
/// `done`, and judge each point (in order) once all its images have one. Returns
/// whether `interrupt` stopped it, or the scheduler's state if it stalled ([`step`]).
/// Dropping `jobs` at the end ends the workers.
async fn drive<L, S: PointStream<L>>(
    sched: &mut Scheduler<L>,
    stream: &mut S,
    jobs: mpsc::Sender<(usize, ImageJob)>,
    done: &mut mpsc::UnboundedReceiver<Recovery>,
    interrupt: &Interrupt,
) -> Result<bool, String> {
    let mut stopped = false;
    let mut producer_done = false;
    loop {
        while let Some(pd) = sched.pop_judgeable() {
            stream.judge(pd, sched);
        }
        let next = step(
            stopped,
            producer_done,
            sched.wants_point(),
            sched.has_work(),
            sched.in_flight(),
            sched.points_waiting() > 0,
        );
        match next {
            Step::Make => {
                producer_done = !stream.make(sched);
                // Enumeration is CPU work: let the workers' tasks run between points.
                tokio::task::yield_now().await;
            }
            Step::Finish => return Ok(stopped),
            Step::Stalled => {
                return Err(format!(
                    "{} crash points waiting ({} bytes), {} images made, {} resolved, none \
                     to hand out and none being checked",
                    sched.points_waiting(),
                    sched.memory(),
                    sched.images(),
                    sched.resolved()
                ))
            }
            Step::Wait { hand_out } => tokio::select! {
                permit = jobs.reserve(), if hand_out => {
                    // The workers are gone (an error, returned by the checker; or they
                    // saw an interrupt before this loop did, and work was left).
                    let Ok(permit) = permit else { return Ok(stopped || interrupt.is_requested()) };
                    if let Some(job) = sched.next_job() {
                        permit.send(job);
                    }
                }
                rec = done.recv() => match rec {
                    Some(r) => sched.done(r),
                    // Every worker ended: an error, returned by the checker; or they
                    // saw an interrupt before this loop did, with work left (had
                    // nothing been left, the step would have been `Finish`).
                    None => return Ok(stopped || interrupt.is_requested()),
                },
                () = interrupt.requested(), if !stopped => {
                    stopped = true;
                    sched.stop();
                }
            },
        }
    }
}

/// A crash point made by the [`Producer`].
struct MadePoint {
    point: CrashPoint,
    lines: Vec<LineInfo>,
    snap: Arc<PointSnapshot>,
    states: Vec<CrashState>,
    capped: bool,
    /// The kernel block writes in flight (`crash_models::torn`).
    block_writes: Vec<BlockWrite>,
}

/// Crash points, their states and snapshots, made one at a time as the trace is
/// replayed; with `crash_at`, also the points passed over (to say which are nearest
/// when none matches).
struct Producer<'a> {
    points: CrashPoints<std::iter::Copied<std::slice::Iter<'a, Record>>>,
    records: &'a [Record],
    state_cfg: StateConfig,
    crash_at: Option<u64>,
    max_points: Option<usize>,
    prev: Option<Arc<PointSnapshot>>,
    /// The PCs of the kernel's copy routine for block writes (`crash_models::torn`).
    copy_routine: Option<Range<u64>>,
    sector_atomic: Option<u64>,
    /// Points made.
    made: usize,
    /// Points passed over (`crash_at`).
    passed: Vec<CrashPoint>,
    /// Make only the point holding the state with this finding id.
    only: Option<String>,
    /// No point is left.
    done: bool,
}

impl<'a> Producer<'a> {
    fn new(
        cfg: &RunConfig,
        workload: &Workload,
        results: &[OpResult],
        records: &'a [Record],
        line_size: u32,
        symbols: &SymbolTable,
    ) -> Producer<'a> {
        let mcfg = ModelConfig::new(cfg.model, line_size).unwrap_or_default();
        let mut replayer = Replayer::new(mcfg);
        // fmetadatasync: the kernel's own flushes of the file's data lines do not count.
        replayer.ignore_flushes(promise::fmetadatasync_flushes_to_ignore(
            &workload.ops,
            results,
            records,
            FSDAX_DATA_OFFSET,
        ));
        let points = CrashPoints::new(
            records.iter().copied(),
            replayer,
            PointConfig {
                policy: cfg.points.clone(),
                ops: Some(workload.crash_ops()),
                end_of_trace: true,
            },
        );
        Producer {
            points,
            records,
            state_cfg: StateConfig {
                strategies: vec![cfg.strategy()],
                max_states: cfg.max_states,
                ..StateConfig::default()
            },
            crash_at: cfg.crash_at,
            max_points: cfg.max_points,
            prev: None,
            copy_routine: symbols.copy_routine(),
            sector_atomic: cfg.sector_atomic,
            made: 0,
            passed: Vec::new(),
            only: None,
            done: false,
        }
    }

    /// The next crash point (with `only`, the one holding that state), or `None` (and
    /// `done`) when no point is left.
    fn next_point(&mut self) -> Option<MadePoint> {
        loop {
            let made = self.next_any_point()?;
            let Some(want) = &self.only else {
                return Some(made);
            };
            let p = made.point.applied;
            if made
                .states
                .iter()
                .any(|st| state_id(p, &made.lines, st) == *want)
            {
                // Ids are unique to a point: nothing after it is needed.
                self.done = true;
                return Some(made);
            }
        }
    }

    /// The next crash point, or `None` (and `done`) when no point is left.
    fn next_any_point(&mut self) -> Option<MadePoint> {
        if self.max_points.is_some_and(|m| self.made >= m) {
            self.done = true;
            return None;
        }
        let Some(p) = self.points.by_ref().find(|p| {
            let skip = self.crash_at.is_some_and(|c| c != p.applied);
            if skip {
                self.passed.push(*p);
            }
            !skip
        }) else {
            self.done = true;
            return None;
        };
        let snap = PointSnapshot::new(self.points.replayer(), self.prev.as_deref());
        let in_flight = snap.in_flight();
        let records = self.records;
        let lines: Vec<LineInfo> = in_flight
            .iter()
            .map(|l| LineInfo {
                offset: l.line_offset,
                queued: l.stores.len() as u32,
                last_record: l.stores.last().map_or(0, |s| s.record),
                first_unflushed_record: l.stores.get(l.flushed_prefix_len).map(|s| s.record),
                user: l.stores.iter().any(|s| {
                    matches!(
                        records.get(s.record as usize),
                        Some(Record::Store {
                            privilege: Privilege::User,
                            ..
                        })
                    )
                }),
            })
            .collect();
        let block_writes = match &self.copy_routine {
            Some(copy) => torn::block_writes(&in_flight, records, |pc| copy.contains(&pc)),
            None => Vec::new(),
        };
        let groups = match self.sector_atomic {
            Some(sector) => torn::sector_groups(&block_writes, sector),
            None => Vec::new(),
        };
        // A clflush not yet fenced orders its vCPU's younger stores after it.
        let mut states = CrashStates::new_grouped(&in_flight, &groups, &self.state_cfg)
            .with_orderings(self.points.replayer().orderings());
        let list: Vec<CrashState> = states.by_ref().collect();
        let capped = states.truncation().truncated();
        drop(in_flight);
        let snap = Arc::new(snap);
        self.prev = Some(snap.clone());
        self.made += 1;
        Some(MadePoint {
            point: p,
            lines,
            snap,
            states: list,
            capped,
            block_writes,
        })
    }
}

/// The crash points nearest to `record` (up to three on each side), described.
fn nearest_points(workload: &Workload, all: &[CrashPoint], record: u64) -> Vec<String> {
    let at = all.partition_point(|p| p.applied < record);
    let mut out: Vec<String> = all[at.saturating_sub(3)..(at + 3).min(all.len())]
        .iter()
        .map(|p| {
            match p
                .op()
                .and_then(|o| workload.ops.get(o as usize).map(|w| (o, w)))
            {
                Some((o, w)) => format!("{} (op {o} {})", p.applied, w.name()),
                None => p.applied.to_string(),
            }
        })
        .collect();
    if out.is_empty() {
        out.push("none: the workload has no crash point".into());
    }
    out
}

/// Judging, one crash point at a time as the points' images are recovered: each
/// state against its own point's promises.
struct Judge<'a> {
    cfg: &'a RunConfig,
    name: &'a str,
    workload: &'a Workload,
    results: &'a [OpResult],
    history: &'a History,
    records: &'a [Record],
    symbols: &'a SymbolTable,
    layout: &'a Layout,
    owners: Vec<(Range<u64>, String, u64)>,
    verdicts: BTreeMap<Verdict, u64>,
    groups: FindingGroups,
    /// Per crash point (by record), its kernel block writes in flight, until judged.
    block_writes: HashMap<u64, Vec<BlockWrite>>,
    point_reports: Vec<PointReport>,
    recovered: BTreeSet<String>,
    images: BTreeSet<usize>,
    stats: WorkloadStats,
    /// The finding id to keep the judgement of (`repro`).
    want: Option<&'a str>,
    /// That state, once judged.
    found: Option<ReproState>,
}

impl<'a> Judge<'a> {
    // Borrowed views of the run, one per argument: a struct of them would only rename it.
    #[allow(clippy::too_many_arguments)]
    fn new(
        cfg: &'a RunConfig,
        name: &'a str,
        workload: &'a Workload,
        results: &'a [OpResult],
        history: &'a History,
        records: &'a [Record],
        symbols: &'a SymbolTable,
        layout: &'a Layout,
    ) -> Judge<'a> {
        Judge {
            cfg,
            name,
            workload,
            results,
            history,
            records,
            symbols,
            layout,
            owners: promise::extent_owners(&workload.ops, results, FSDAX_DATA_OFFSET),
            verdicts: BTreeMap::new(),
            groups: FindingGroups::new(cfg.max_findings),
            block_writes: HashMap::new(),
            point_reports: Vec::new(),
            recovered: BTreeSet::new(),
            images: BTreeSet::new(),
            stats: WorkloadStats::default(),
            want: None,
            found: None,
        }
    }

    /// Judge every state of a point whose images all have a recovery.
    fn point(&mut self, pd: &PointData, sched: &Scheduler<LineInfo>) {
        let (name, workload, results, history) =
            (self.name, self.workload, self.results, self.history);
        let owners = &self.owners;
        let block_writes = self
            .block_writes
            .remove(&pd.point.applied)
            .unwrap_or_default();
        {
            let p = &pd.point;
            let mut cache: HashMap<&str, Vec<Problem>> = HashMap::new();
            // The promises depend on the crash point only: made once per point.
            let promised = promise::promises(
                &workload.ops,
                Some(results),
                p.ops_completed as usize,
                p.op_in_progress.map(|o| o as usize),
            );
            let mut pv: BTreeMap<Verdict, u64> = BTreeMap::new();
            let distinct: BTreeSet<usize> = pd.states.iter().map(|s| s.1).collect();
            let mut state_verdicts = Vec::new();
            let mut judged: Vec<Vec<Problem>> = Vec::with_capacity(pd.states.len());
            for (_, img) in &pd.states {
                let rec = sched.recovery(*img);
                if !self.recovered.contains(&rec.state_id) {
                    self.recovered.insert(rec.state_id.clone());
                }
                judged.push(
                    cache
                        .entry(rec.state_id.as_str())
                        .or_insert_with(|| oracle::judge(&promised, history, rec))
                        .clone(),
                );
            }
            let states: Vec<&CrashState> = pd.states.iter().map(|s| &s.0).collect();
            let layout = self.layout;
            oracle::torn_writes(&block_writes, &states, &mut judged, |w, st| {
                torn_line(w, st, layout)
            });
            let point = point_ref(p, workload, self.records);
            for ((st, img), problems) in pd.states.iter().zip(&judged) {
                let v = oracle::verdict_of(problems);
                let id = state_id(p.applied, &pd.lines, st);
                if self.want == Some(id.as_str()) {
                    self.found = Some(ReproState {
                        id: id.clone(),
                        point: point.clone(),
                        verdict: v,
                        problems: problems.clone(),
                        dropped_lines: dropped(
                            &pd.lines,
                            st,
                            owners,
                            self.records,
                            self.symbols,
                            layout,
                        ),
                        recovery: sched.recovery(*img).clone(),
                    });
                }
                *pv.entry(v).or_default() += 1;
                if self.cfg.state_verdicts {
                    state_verdicts.push(v);
                }
                if v == Verdict::Ok {
                    continue;
                }
                let key = GroupKey::of(v, &point, problems);
                let (records, symbols, cfg) = (self.records, self.symbols, self.cfg);
                self.groups.add(key, &point, || Finding {
                    id,
                    verdict: v,
                    point: point.clone(),
                    problems: problems.clone(),
                    dropped_lines: dropped(&pd.lines, st, owners, records, symbols, layout),
                    kept_lines: pd
                        .lines
                        .iter()
                        .filter(|l| st.kept_of(l.offset) >= l.queued)
                        .count(),
                    states: 0,
                    crash_points: 0,
                    first_record: 0,
                    last_record: 0,
                    reproduce: reproduce(cfg, name, p.applied),
                });
            }
            for (v, n) in &pv {
                *self.verdicts.entry(*v).or_default() += n;
            }
            self.stats.states += pd.states.len();
            self.stats.capped_points += pd.capped as usize;
            let mut equal_to = Vec::new();
            for &i in &distinct {
                if let Fate::Pruned(c, at) = sched.fate(i) {
                    equal_to.push(PrunedImage {
                        image: i,
                        equal_to: c,
                        equal_to_point: at,
                    });
                }
            }
            self.images.extend(distinct.iter().copied());
            let op = p.op();
            self.point_reports.push(PointReport {
                record: p.applied,
                ops_completed: p.ops_completed,
                op,
                op_name: op
                    .and_then(|o| workload.ops.get(o as usize))
                    .map(|o| o.name().to_owned()),
                reason: reason_name(p.reason),
                in_flight_lines: pd.lines.len(),
                states: pd.states.len(),
                distinct_images: distinct.len(),
                checked_images: distinct.len() - equal_to.len(),
                pruned_images: equal_to.len(),
                equal_to,
                verdicts: pv,
                state_verdicts,
            });
        }
    }

    /// The workload's report (without timings and trace-wide counts).
    fn finish(self) -> WorkloadReport {
        let Judge {
            cfg,
            name,
            workload,
            results,
            verdicts,
            groups,
            point_reports,
            recovered,
            images,
            mut stats,
            ..
        } = self;
        let (findings, omitted) = groups.finish();
        stats.crash_points = point_reports.len();
        stats.recovered_states = recovered.len();
        stats.distinct_images = images.len();
        let seen: Vec<Verdict> = verdicts
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(v, _)| *v)
            .collect();
        // A workload's [expect] is about all its crash points: a run limited to one
        // (`--crash-at`, a reproducer) or to the first few cannot meet or miss it.
        let partial = cfg.crash_at.is_some() || cfg.max_points.is_some();
        let expect = expected(workload, cfg.fs).filter(|_| !partial).map(
            |(expected, ok_after_op, lost_after_op)| {
                let mut unmet = Vec::new();
                if expected != seen {
                    unmet.push(format!(
                        "verdicts {:?}, expected {:?}",
                        seen.iter().map(|v| v.name()).collect::<Vec<_>>(),
                        expected.iter().map(|v| v.name()).collect::<Vec<_>>()
                    ));
                }
                let bad_after = |n: usize| {
                    point_reports
                        .iter()
                        .filter(|p| p.ops_completed as usize > n)
                        .map(|p| {
                            p.verdicts
                                .iter()
                                .filter(|(v, _)| **v != Verdict::Ok)
                                .map(|(_, c)| c)
                                .sum::<u64>()
                        })
                        .sum::<u64>()
                };
                if let Some(n) = ok_after_op {
                    let bad = bad_after(n);
                    if bad > 0 {
                        unmet.push(format!("{bad} state(s) after op {n} returned are not ok"));
                    }
                }
                if let Some(n) = lost_after_op {
                    if bad_after(n) == 0 {
                        unmet.push(format!("no loss found after op {n} returned"));
                    }
                }
                ExpectCheck {
                    met: unmet.is_empty(),
                    expected,
                    seen: seen.clone(),
                    ok_after_op,
                    lost_after_op,
                    unmet,
                }
            },
        );
        WorkloadReport {
            name: name.to_owned(),
            description: workload.description.clone(),
            fs: cfg.fs,
            ops: workload
                .ops
                .iter()
                .enumerate()
                .map(|(i, op)| {
                    let r = crash_models::fsmodel::result_of(Some(results), i);
                    OpLine {
                        index: i,
                        op: op.name().to_owned(),
                        ok: r.is_some_and(|r| r.ok()),
                        ret: r.map_or(-1, |r| r.ret),
                        errno: r.and_then(|r| r.errno),
                        cost: Default::default(),
                    }
                })
                .collect(),
            points: point_reports,
            verdicts,
            findings,
            findings_omitted: omitted,
            stats,
            expect,
            timings: Timings::default(),
            coverage: None,
        }
    }
}

/// The command line that checks one crash point again.
fn reproduce(cfg: &RunConfig, name: &str, record: u64) -> String {
    format!(
        "pmcrash run {name} --fs {} --model {} --points {} --states {} --seed {}{} --crash-at {record}",
        cfg.fs,
        cfg.model,
        cfg.points,
        cfg.strategy(),
        cfg.effective_seed(),
        cfg.sector_atomic
            .map(|s| format!(" --sector-atomic {s}"))
            .unwrap_or_default()
    )
}

impl Pipeline {
    /// Power off the checker guests.
    pub async fn shutdown(mut self) {
        if let Some(c) = self.checker.take() {
            c.shutdown().await;
        }
    }
}

/// Run workloads in one go: the library entry point.
pub async fn run(
    assets: Assets,
    cfg: RunConfig,
    workloads: &[Loaded],
) -> Result<Report, PipelineError> {
    let mut p = Pipeline::new(assets, cfg)?;
    let r = p.run(workloads, false).await;
    p.shutdown().await;
    r
}

/// The LSFMM 2016 corpus, compiled in so `pmcrash demo` works from any directory.
pub fn builtin_lsfmm2016() -> Vec<Loaded> {
    macro_rules! w {
        ($f:literal) => {
            (
                concat!("corpora/lsfmm2016/", $f),
                include_str!(concat!("../../corpora/lsfmm2016/", $f)),
            )
        };
    }
    [
        w!("01-shared-flush-no-fsync.toml"),
        w!("02-map-sync-flush.toml"),
        w!("03-shared-flush-then-fsync.toml"),
        w!("04-msync-vs-clwb.toml"),
        w!("05-fmetadatasync-all-flushed.toml"),
        w!("06-fmetadatasync-one-unflushed.toml"),
        w!("07-fdatasync-one-unflushed.toml"),
    ]
    .into_iter()
    .map(|(name, src)| Loaded {
        name: name.to_owned(),
        workload: Workload::parse(src, name).expect("the built-in corpus is valid"),
    })
    .collect()
}

/// The finding id of state `st` at the crash point after `record` records.
fn state_id(record: u64, lines: &[LineInfo], st: &CrashState) -> String {
    // Lanes (odd offsets, `x86-adr-nt` only) tell apart states with equal prefixes.
    let lanes = st
        .kept
        .iter()
        .copied()
        .filter(|&(off, _)| crash_models::states::is_lane(off));
    crate::findings::finding_id(
        record,
        lines
            .iter()
            .map(|l| (l.offset, st.kept_of(l.offset)))
            .chain(lanes),
    )
}

fn reason_name(r: Reason) -> String {
    match r {
        Reason::BeforeFence => "before-fence".into(),
        Reason::Store => "store".into(),
        Reason::Marker(m) => format!(
            "marker:{}",
            serde_json::to_value(m)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default()
        ),
        Reason::EndOfTrace => "end-of-trace".into(),
    }
}

fn point_ref(p: &CrashPoint, w: &Workload, records: &[Record]) -> PointRef {
    let op = p.op();
    let markers = match op.and_then(|o| w.ops.get(o as usize)) {
        Some(Op::Exec { markers, .. }) => Some(markers.as_slice()),
        _ => None,
    };
    PointRef {
        after_marker: markers
            .and_then(|m| crash_models::points::program_marker_before(records, p.applied, m)),
        record: p.applied,
        op,
        op_name: op
            .and_then(|o| w.ops.get(o as usize))
            .map(|o| o.name().to_owned()),
        ops_completed: p.ops_completed,
        stores: p.stores,
    }
}

fn dropped(
    lines: &[LineInfo],
    st: &CrashState,
    owners: &[(Range<u64>, String, u64)],
    records: &[Record],
    symbols: &SymbolTable,
    layout: &Layout,
) -> Vec<DroppedLine> {
    dropped_lines(lines, st, owners, records, symbols, layout)
        .take(MAX_DROPPED_LISTED)
        .collect()
}

/// The most dropped lines a finding lists: enough for a journal commit's lines and the
/// file data behind them (the text report folds runs of lines with one label, see
/// [`crate::labels::fold`]), few enough to keep the JSON small.
pub const MAX_DROPPED_LISTED: usize = 256;

/// Every line `st` drops (wholly or partly), described.
fn dropped_lines<'a>(
    lines: &'a [LineInfo],
    st: &'a CrashState,
    owners: &'a [(Range<u64>, String, u64)],
    records: &'a [Record],
    symbols: &'a SymbolTable,
    layout: &'a Layout,
) -> impl Iterator<Item = DroppedLine> + 'a {
    lines.iter().filter_map(|l| {
        let kept = st.kept_of(l.offset);
        if kept >= l.queued {
            return None;
        }
        let owner = owners
            .iter()
            .find(|(r, _, _)| r.contains(&l.offset))
            .map(|(r, p, logical)| format!("file {p} offset {}", logical + (l.offset - r.start)))
            .unwrap_or_else(|| {
                if l.user {
                    "user-space store (mapped file data)".into()
                } else if let Some(what) = layout.name_of(l.offset) {
                    format!("kernel store: {what}")
                } else {
                    "kernel store (metadata, journal or file data)".into()
                }
            });
        let missing = match l.first_unflushed_record {
            Some(r) => format!(
                "no flush of the line after record {r} (its last store is record {})",
                l.last_record
            ),
            None => "flushed, but no fence after the flush before the crash".into(),
        };
        let writer = match records.get(l.last_record as usize) {
            Some(Record::Store {
                privilege: Privilege::Kernel,
                pc,
                ..
            }) if !symbols.is_empty() => Some(symbols.describe(*pc)),
            _ => None,
        };
        Some(DroppedLine {
            pm_offset: l.offset,
            owner,
            queued: l.queued,
            kept,
            missing,
            writer,
            label: None,
        })
    })
}

/// Label the findings' dropped lines from the workload's final image
/// ([`crate::labels`]); a failure leaves them unlabelled and says why on stderr (the
/// verdicts do not depend on labels).
fn label_findings(fs: FsKind, final_image: &Path, report: &mut WorkloadReport) {
    if let Err(e) = crate::labels::label_report(fs, final_image, report) {
        eprintln!("pmcrash: dropped lines not labelled: {e}");
    }
}

/// The named regions of the file system in a base image (for saying what tore).
fn fs_layout(fs: FsKind, base_image: &std::path::Path) -> Layout {
    use std::os::unix::fs::FileExt;
    let Ok(file) = std::fs::File::open(base_image) else {
        return Layout::default();
    };
    let read = |at: u64, len: usize| {
        let mut buf = vec![0u8; len];
        match file.read_at(&mut buf, at) {
            Ok(n) => {
                buf.truncate(n);
                buf
            }
            Err(_) => Vec::new(),
        }
    };
    match fs {
        FsKind::Ext4 => Layout::ext4(FSDAX_DATA_OFFSET, read),
        FsKind::Xfs => Layout::xfs(FSDAX_DATA_OFFSET, read),
    }
}

/// How a torn block write's problem line starts; [`torn_structure`] reads it back.
const TORN_PREFIX: &str = "torn kernel block write to the ";

/// The structure a torn-write problem line (made by [`torn_line`]) names: `jbd2
/// journal superblock`, `block 17 of the file system`; `None` for any other line.
pub fn torn_structure(message: &str) -> Option<&str> {
    let rest = message.strip_prefix(TORN_PREFIX)?;
    rest.split_once(": ").map(|(what, _)| what)
}

/// The problem line of a torn block write: which structure, how much persisted, why
/// fsdax allows it.
fn torn_line(w: &BlockWrite, st: &CrashState, layout: &Layout) -> String {
    let what = layout.names_in(&w.range).unwrap_or_else(|| {
        format!(
            "block {} of the file system",
            w.range.start.saturating_sub(FSDAX_DATA_OFFSET) / 4096
        )
    });
    format!(
        "{TORN_PREFIX}{what}: {} of the {} bytes at PM {:#x} (records {}..{}) persisted; \
         fsdax gives no sector atomicity (the pmem driver copies a bio with memcpy_flushcache; \
         only BTT, which rules out DAX, makes a sector atomic)",
        w.kept_by(st) * 8,
        w.range.end - w.range.start,
        w.range.start,
        w.records.start,
        w.records.end
    )
}

/// A workload's `[expect]` for `fs`: the verdict classes (sorted), `ok_after_op` and
/// `lost_after_op` (see [`crash_models::ops::Expect`]).
pub fn expected(w: &Workload, fs: FsKind) -> Option<(Vec<Verdict>, Option<usize>, Option<usize>)> {
    let e = w.expect.as_ref()?.for_fs(fs)?;
    Some((
        e.verdicts.unwrap_or_default(),
        e.ok_after_op,
        e.lost_after_op,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crash_models::trace::{MarkerKind, Privilege};

    #[test]
    fn the_loop_waits_only_when_something_can_wake_it() {
        // (stopped, producer done, wants a point, has work, in flight, points waiting)
        let cases = [
            // Judging just emptied the window: nothing out, nothing to hand out, the
            // producer not done. The loop before this fix waited for a recovery here
            // and stalled (tests/memory.rs); it must make the next point.
            ((false, false, true, false, 0, false), Step::Make),
            ((false, false, true, true, 2, true), Step::Make),
            // A full window (or over the budget): hand out, or wait for recoveries.
            (
                (false, false, false, true, 0, true),
                Step::Wait { hand_out: true },
            ),
            (
                (false, false, false, false, 1, true),
                Step::Wait { hand_out: false },
            ),
            // All points made and judged.
            ((false, true, true, false, 0, false), Step::Finish),
            (
                (false, true, true, false, 1, true),
                Step::Wait { hand_out: false },
            ),
            // Stopped: nothing new made or handed out; the images out are finished.
            (
                (true, false, true, true, 1, true),
                Step::Wait { hand_out: false },
            ),
            ((true, false, true, true, 0, true), Step::Finish),
            // Points wait that nothing will ever resolve: reported, not waited on.
            ((false, false, false, false, 0, true), Step::Stalled),
            ((false, true, true, false, 0, true), Step::Stalled),
        ];
        for ((stopped, done, wants, work, out, waiting), want) in cases {
            assert_eq!(
                step(stopped, done, wants, work, out, waiting),
                want,
                "stopped {stopped}, producer done {done}, wants a point {wants}, has work {work}, in flight {out}, points waiting {waiting}"
            );
        }
    }

    fn marker(marker: MarkerKind, op: u32) -> Record {
        Record::Marker {
            marker,
            op,
            a: 0,
            b: 0,
            vcpu: 0,
        }
    }

    /// `n` ops, each one unflushed user store to its own line: at op points, 2n + 1
    /// crash points whose in-flight lines grow by one per op.
    fn stores(n: u32) -> (Workload, Vec<Record>) {
        let mut toml = String::new();
        let mut records = vec![marker(MarkerKind::RunBegin, n)];
        for i in 0..n {
            toml.push_str("[[ops]]\nop = \"sync\"\n");
            records.push(marker(MarkerKind::OpBegin, i));
            records.push(Record::Store {
                offset: (1 << 21) + 64 * u64::from(i),
                size: 8,
                value: u64::from(i) + 1,
                non_temporal: false,
                privilege: Privilege::User,
                vcpu: 0,
                pc: 0,
            });
            records.push(marker(MarkerKind::OpEnd, i));
        }
        records.push(marker(MarkerKind::RunEnd, n));
        let w = Workload::parse(&toml, "stores.toml").expect("the workload parses");
        (w, records)
    }

    /// The pipeline's producer, and a judge that notes the points in the order judged
    /// and that each of their images has a recovery; and per image judged, what became
    /// of it, whether its recovery is (the same allocation as) its class's, and what
    /// fsck said.
    struct Sim<'a> {
        producer: Producer<'a>,
        judged: Vec<u64>,
        seen: Vec<(usize, Fate, bool, Option<bool>)>,
    }

    impl<'a> Sim<'a> {
        fn new(
            cfg: &'a RunConfig,
            workload: &'a Workload,
            records: &'a [Record],
            symbols: &'a SymbolTable,
        ) -> Sim<'a> {
            Sim {
                producer: Producer::new(cfg, workload, &[], records, 64, symbols),
                judged: Vec::new(),
                seen: Vec::new(),
            }
        }
    }

    impl PointStream<()> for Sim<'_> {
        fn make(&mut self, sched: &mut Scheduler<()>) -> bool {
            let Some(p) = self.producer.next_point() else {
                return false;
            };
            sched.add_point(p.point, Vec::new(), p.snap, p.states, p.capped);
            true
        }

        fn judge(&mut self, point: PointWork<()>, sched: &Scheduler<()>) {
            for (_, i) in &point.states {
                let fate = sched.fate(*i);
                let shared = match fate {
                    Fate::Pruned(c, _) => std::ptr::eq(sched.recovery(*i), sched.recovery(c)),
                    Fate::Checked => {
                        assert_eq!(sched.recovery(*i).index, *i);
                        false
                    }
                };
                let problems = sched.recovery(*i).fsck.as_ref().map(|f| f.problems);
                self.seen.push((*i, fate, shared, problems));
            }
            self.judged.push(point.point.applied);
        }
    }

    fn recovery(index: usize) -> Recovery {
        Recovery {
            state_id: index.to_string(),
            ..Recovery::mounted(index)
        }
    }

    /// Drive `n` store ops at op points with `max_states` states a point under
    /// `budget` bytes, a checker task answering every job: the points judged, in order.
    async fn simulate(n: u32, max_states: usize, budget: u64) -> (Vec<u64>, usize) {
        let (workload, records) = stores(n);
        let cfg = RunConfig {
            points: Policy::Op,
            max_states,
            ..RunConfig::default()
        };
        let symbols = SymbolTable::default();
        let mut sim = Sim::new(&cfg, &workload, &records, &symbols);
        let mut sched = Scheduler::new(false, budget);
        let (jobs, mut job_rx) = mpsc::channel::<(usize, ImageJob)>(1);
        let (done_tx, mut done_rx) = mpsc::unbounded_channel();
        let checker = tokio::spawn(async move {
            let mut checked = 0;
            while let Some((i, job)) = job_rx.recv().await {
                drop(job.materialise());
                checked += 1;
                if done_tx.send(recovery(i)).is_err() {
                    break;
                }
            }
            checked
        });
        let stopped = drive(&mut sched, &mut sim, jobs, &mut done_rx, &Interrupt::new())
            .await
            .expect("the drive loop never stalls");
        assert!(!stopped);
        assert_eq!(sched.points_waiting(), 0);
        let checked = checker.await.expect("the checker task");
        assert_eq!(checked, sched.images(), "every distinct image checked once");
        (sim.judged, checked)
    }

    #[tokio::test]
    async fn every_point_is_judged_in_order_whatever_the_budget() {
        // 100 ops: 201 crash points, more than the 64 a window holds. With two states
        // a point, every point's images are the first point's: once those are
        // recovered the whole window is judged at once, with nothing out and nothing
        // to hand out (where the loop before this fix stalled), and it fills again.
        let default = crate::memory::DEFAULT_BUDGET_MIB << 20;
        let (all, images) = simulate(100, 2, default).await;
        assert_eq!(all.len(), 201, "op points and the end of the trace");
        assert!(all.windows(2).all(|w| w[0] < w[1]), "in point order");
        // A budget no point fits in: one point at a time, the same points and images.
        assert_eq!(simulate(100, 2, 1).await, (all.clone(), images));
        // Distinct images at most points: the same under a tiny budget.
        let many = simulate(70, 16, default).await;
        assert!(many.1 >= 70, "{} images", many.1);
        assert_eq!(simulate(70, 16, 1 << 10).await, many);
    }

    fn fsck_outcome(problems: bool) -> crate::checker::fsck::FsckOutcome {
        crate::checker::fsck::FsckOutcome {
            command: "fsck".into(),
            code: Some(i32::from(problems) * 4),
            problems,
            output: String::new(),
        }
    }

    /// What [`drive_pruned`] saw: the scheduler's counts and the judge's view.
    struct Pruned {
        checked: usize,
        pruned: usize,
        unrecorded: usize,
        images: usize,
        points: usize,
        seen: Vec<(usize, Fate, bool, Option<bool>)>,
    }

    /// Drive `n` store ops at op points (at most `max_states` states a point) with
    /// pruning on and a checker task answering each job with `answer`.
    async fn drive_pruned(
        n: u32,
        max_states: usize,
        mut answer: impl FnMut(usize, ImageJob) -> Recovery + Send + 'static,
    ) -> Pruned {
        let (workload, records) = stores(n);
        let cfg = RunConfig {
            points: Policy::Op,
            max_states,
            ..RunConfig::default()
        };
        let symbols = SymbolTable::default();
        let mut sim = Sim::new(&cfg, &workload, &records, &symbols);
        let mut sched = Scheduler::new(true, 1 << 30);
        let (jobs, mut job_rx) = mpsc::channel::<(usize, ImageJob)>(1);
        let (done_tx, mut done_rx) = mpsc::unbounded_channel();
        let checker = tokio::spawn(async move {
            while let Some((i, job)) = job_rx.recv().await {
                if done_tx.send(answer(i, job)).is_err() {
                    break;
                }
            }
        });
        let stopped = drive(&mut sched, &mut sim, jobs, &mut done_rx, &Interrupt::new())
            .await
            .expect("the drive loop never stalls");
        assert!(!stopped);
        checker.await.expect("the checker task");
        Pruned {
            checked: sched.checked,
            pruned: sched.pruned,
            unrecorded: sched.unrecorded,
            images: sched.images(),
            points: sim.judged.len(),
            seen: sim.seen,
        }
    }

    fn reads(lines: &[u64]) -> Option<Arc<crash_models::readset::ReadSet>> {
        Some(Arc::new(crash_models::readset::ReadSet::from_lines(
            64,
            lines.iter().copied(),
        )))
    }

    #[tokio::test]
    async fn an_image_equal_on_the_read_set_gets_its_own_fsck_and_shares_the_rest() {
        // Every check reads only line 0, which no store writes: every image equals the
        // first one checked there. Its check ran fsck on the host, so the others go out
        // as `Equal` jobs, whose fsck (here: problems for odd images) is theirs.
        let counts = Arc::new(std::sync::Mutex::new((0, 0)));
        let c = counts.clone();
        let run = drive_pruned(6, 16, move |i, job| {
            let mut c = c.lock().unwrap();
            match job {
                ImageJob::Equal { class, .. } => {
                    c.1 += 1;
                    assert!(class.stores.is_some(), "only a class with stores");
                    Recovery {
                        index: i,
                        read_set: None,
                        stores: None,
                        fsck: Some(fsck_outcome(i % 2 == 1)),
                        ..(*class).clone()
                    }
                }
                _ => {
                    c.0 += 1;
                    Recovery {
                        read_set: reads(&[0]),
                        stores: Some(Arc::new(crate::checker::CheckStores::default())),
                        fsck: Some(fsck_outcome(false)),
                        ..recovery(i)
                    }
                }
            }
        })
        .await;
        let (checked, equal) = *counts.lock().unwrap();
        assert_eq!((run.checked, run.pruned), (checked, equal));
        assert!(
            equal > 10 && checked <= 2,
            "{checked} checked, {equal} equal"
        );
        assert_eq!(checked + equal, run.images);
        for (i, fate, shared, problems) in &run.seen {
            match fate {
                Fate::Checked => assert_eq!(*problems, Some(false)),
                Fate::Pruned(..) => {
                    assert_eq!(*problems, Some(i % 2 == 1), "image {i} has its own fsck");
                    // The class's verdict is clean: the same verdict shares its recovery.
                    assert_eq!(*shared, i % 2 == 0, "image {i}");
                }
            }
        }
    }

    /// Drive `n` store ops at op points with a checker whose every recorded check
    /// reads `lines`: what was checked, and the checks recorded.
    async fn forecast(n: u32, lines: Vec<u64>) -> (Pruned, usize) {
        let recorded = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let r = recorded.clone();
        let run = drive_pruned(n, 64, move |i, job| match job {
            ImageJob::Equal { class, .. } => Recovery {
                index: i,
                ..(*class).clone()
            },
            ImageJob::State { record, .. } => {
                r.fetch_add(usize::from(record), std::sync::atomic::Ordering::Relaxed);
                Recovery {
                    read_set: if record { reads(&lines) } else { None },
                    ..recovery(i)
                }
            }
            ImageJob::Built(_) => unreachable!("the pipeline builds no image"),
        })
        .await;
        let recorded = recorded.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(run.checked - run.unrecorded, recorded);
        (run, recorded)
    }

    #[tokio::test]
    async fn a_check_records_reads_only_when_another_image_may_share_its_class() {
        // Every check reads every line a store wrote: all images differ on it, none is
        // pruned, and past each point's lead (whose reads make the forecast) a check
        // records nothing.
        let first = (1u64 << 21) / 64;
        let (run, recorded) = forecast(8, (first..first + 8).collect()).await;
        assert_eq!(run.pruned, 0);
        assert!(
            recorded <= run.points && run.checked > 2 * recorded,
            "{recorded} of {} checks recorded at {} points",
            run.checked,
            run.points
        );
        // Every check reads only line 0, which no store writes: every image equals
        // the first one checked (two may be out before it is back), whose class
        // prunes the rest; nothing is forecast alone, so every check records.
        let (run, recorded) = forecast(8, vec![0]).await;
        assert!(
            run.checked <= 2 && recorded == run.checked,
            "{} {recorded}",
            run.checked
        );
        assert!(run.pruned > 10, "{} pruned", run.pruned);
    }

    #[tokio::test]
    async fn a_checker_that_ends_ends_the_loop() {
        // The checker's workers all ended (an error) with a job out: the loop returns
        // (the checker reports the error) instead of waiting for that recovery.
        let (workload, records) = stores(3);
        let cfg = RunConfig {
            points: Policy::Op,
            ..RunConfig::default()
        };
        let symbols = SymbolTable::default();
        let mut sim = Sim::new(&cfg, &workload, &records, &symbols);
        let mut sched = Scheduler::new(false, 1 << 30);
        let (jobs, mut job_rx) = mpsc::channel::<(usize, ImageJob)>(1);
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Recovery>();
        let checker = tokio::spawn(async move {
            let first = job_rx.recv().await;
            drop(done_tx);
            first.is_some()
        });
        let stopped = drive(&mut sched, &mut sim, jobs, &mut done_rx, &Interrupt::new())
            .await
            .expect("no stall");
        assert!(!stopped);
        assert!(checker.await.unwrap(), "a job was handed out");
        assert!(sim.judged.is_empty());
    }
}
