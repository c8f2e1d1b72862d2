//! The checker: let the real kernel recover crash images, one long-lived guest per
//! worker, never a boot per image.
//!
//! A worker owns a guest restored by [`GuestFactory::start`] on its own scratch copy of
//! the base image. For each crash image, with the file system unmounted in the guest,
//! the host puts the scratch file back to the base image (every page the previous
//! image or its recovery changed: journal replay writes to PM too, so the whole data
//! part of the file is compared, not just the last delta) and writes the image's delta;
//! the guest forgets its caches (`refresh`), mounts (the kernel's own journal or log
//! recovery), dumps the tree with per-block hashes and unmounts; the host reads what the
//! kernel printed meanwhile, and runs fsck (`e2fsck -fn`, `xfs_repair -n`) natively on
//! what the recovery left in the scratch file. The check runs between the agent's check
//! markers, and the tracer plugin, loaded in read-recording mode, writes the PM lines
//! the check loaded and the bytes it stored ([`Recovery::read_set`],
//! [`Recovery::stores`]; why that decides the recovery: `docs/pruning.md`). An image
//! equal to a checked one on that read set ([`ImageJob::Equal`]) takes its recovery
//! without a guest run; only fsck runs again, on the image with the check's stores
//! written over it, which is what that recovery would have left of it. A guest that panics or hangs is
//! replaced and the image keeps the verdict it earned; a guest that dies for other
//! reasons (killed from outside) is replaced and the image is checked again.

mod base;
pub mod console;
pub mod fsck;

use crate::guest::{GuestError, GuestFactory};
use crate::image::{data_regions, FSDAX_DATA_OFFSET};
use crate::interrupt::Interrupt;
use crate::vm::PluginSpec;
use crate::vm::{Vm, VmError};
use base::Base;
use console::{ConsoleCursor, ConsoleIssue};
use crash_models::delta::{CrashImage, PointSnapshot};
use crash_models::ops::FsKind;
use crash_models::protocol::{AgentMsg, FsEntry, HostMsg};
use crash_models::readset::ReadSetFile;
use crash_models::states::CrashState;
use fsck::FsckOutcome;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Page size the restore step compares and rewrites in.
const PAGE: usize = 4096;

/// Errors that stop a check (infrastructure, not findings).
#[derive(Debug, thiserror::Error)]
pub enum CheckerError {
    /// A guest could not be started or kept alive.
    #[error("checker guest: {0}")]
    Guest(#[from] GuestError),
    /// Local I/O on the scratch image.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// fsck could not run.
    #[error(transparent)]
    Fsck(#[from] fsck::FsckError),
    /// An image kept killing its guest for reasons other than a panic or a hang.
    #[error("image {index} could not be checked after {attempts} guest restarts: {last}")]
    GaveUp {
        /// The image's index.
        index: usize,
        /// Attempts made.
        attempts: u32,
        /// The last error.
        last: String,
    },
    /// A checker task panicked or was cancelled.
    #[error("a checker task ended abnormally: {0}")]
    Task(#[source] tokio::task::JoinError),
    /// The base image does not fit the guests.
    #[error("base image {path} is {len} bytes, the guests' PM is {pm_size}")]
    BaseSize {
        /// The image.
        path: PathBuf,
        /// Its length.
        len: u64,
        /// The factory's PM size.
        pm_size: u64,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> CheckerError {
    let what = what.into();
    move |source| CheckerError::Io { what, source }
}

/// How the checker runs.
#[derive(Debug, Clone)]
pub struct CheckerOptions {
    /// Guests checking in parallel (one per core is right under TCG).
    pub workers: usize,
    /// Longest a refresh, mount, dump or unmount may take before the guest counts as
    /// hung.
    pub request_timeout: Duration,
    /// Restarts allowed per image when the guest dies for reasons that are not the
    /// image's (e.g. killed from outside).
    pub max_retries: u32,
    /// Run fsck after each recovery: on the host, natively, on what the recovery left
    /// in the scratch file (and for an image that takes another's recovery, on its own
    /// bytes with that check's stores over them), or in the checker guest with
    /// `fsck_in_guest`.
    pub fsck: bool,
    /// Run fsck in the checker guest, inside the recorded check, so that what it reads
    /// is in the read set and an equal image takes its verdict too. Off by default:
    /// `xfs_repair` under TCG costs ~240 ms an image, and every line fsck reads
    /// narrows pruning (`docs/pruning.md`). A guest that died before fsck still gets
    /// the host's.
    pub fsck_in_guest: bool,
    /// Load the tracer in read-recording mode and fill [`Recovery::read_set`] (the key
    /// of pruning; off for `--no-prune`, or to measure its cost).
    pub record_reads: bool,
    /// How read recording follows copies of PM into RAM; `None`: the file system's
    /// default ([`FollowCopies::default_for`]).
    pub copies: Option<FollowCopies>,
    /// The kernel's write-back copy routine (`symbols::SymbolTable::copy_routine`,
    /// the pmem driver's `__memcpy_flushcache`): with copies followed, a copy it
    /// writes back onto the PM bytes it came from is neither a read nor a store of the
    /// check (`docs/pruning.md`, *Copies written back*). `None`: not followed.
    pub copy_routine: Option<std::ops::Range<u64>>,
    /// The workload's user checkers, run after each dump while the file system is
    /// mounted; their programs must be in the factory's bundle (`programs`).
    pub user_checkers: Vec<crash_models::ops::UserChecker>,
}

impl CheckerOptions {
    /// How the checker guests of `fs` record reads, if they do.
    fn reads(&self, fs: FsKind) -> Option<FollowCopies> {
        self.record_reads
            .then(|| self.copies.unwrap_or_else(|| FollowCopies::default_for(fs)))
    }
}

impl Default for CheckerOptions {
    fn default() -> Self {
        CheckerOptions {
            workers: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
                .clamp(1, 8),
            request_timeout: Duration::from_secs(90),
            max_retries: 3,
            fsck: true,
            fsck_in_guest: false,
            record_reads: true,
            copies: None,
            copy_routine: None,
            user_checkers: Vec::new(),
        }
    }
}

/// How read recording treats a string move of PM into RAM (`docs/pruning.md`, *Copies
/// are moves*): as a read of its source (`Off`), or as a copy whose source is read
/// only when the copy is loaded, charging the whole 4 KiB block loaded from (`Blocks`)
/// or only the lines loaded (`Lines`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FollowCopies {
    /// Every PM load is a read; only kernel code is instrumented.
    Off,
    /// A loaded copy reads its whole block.
    Blocks,
    /// A loaded copy reads the lines loaded.
    Lines,
}

impl FollowCopies {
    /// What `fs`'s checks use unless told otherwise: ext4 follows copies by line (its
    /// checks load few of the blocks jbd2's read-ahead copies: 242 checks instead of
    /// 1,433 on the single-op workload, and `check_determinism.rs` passes); XFS does
    /// not (its log recovery checksums every block it copies, so following gains ~3 %
    /// fewer checks for dearer ones). `PMCRASH_FOLLOW_COPIES` (`off`, `blocks`, `lines`)
    /// overrides it, to measure.
    pub fn default_for(fs: FsKind) -> FollowCopies {
        match std::env::var("PMCRASH_FOLLOW_COPIES").as_deref() {
            Ok("off" | "0") => return FollowCopies::Off,
            Ok("blocks" | "1") => return FollowCopies::Blocks,
            Ok("lines") => return FollowCopies::Lines,
            _ => {}
        }
        match fs {
            FsKind::Ext4 => FollowCopies::Lines,
            FsKind::Xfs => FollowCopies::Off,
        }
    }

    /// The tracer plugin's `copies=` argument.
    fn arg(self) -> &'static str {
        match self {
            FollowCopies::Off => "off",
            FollowCopies::Blocks => "blocks",
            FollowCopies::Lines => "lines",
        }
    }
}

/// How the mount went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum MountOutcome {
    /// Mounted (with DAX when `dax`).
    Mounted {
        /// DAX was on.
        dax: bool,
    },
    /// mount(2) failed.
    Failed {
        /// The agent's message.
        message: String,
    },
    /// The kernel panicked during recovery (or during the dump or unmount).
    Panicked {
        /// What the guest was doing.
        during: String,
        /// The console around the panic.
        console: String,
    },
    /// The guest stopped answering.
    Hung {
        /// What the guest was doing.
        during: String,
    },
}

/// What the kernel's recovery of one crash image left.
#[derive(Debug, Clone, Serialize)]
pub struct Recovery {
    /// Index of the image in the list given to [`Checker::recover_all`].
    pub index: usize,
    /// The mount (and whether the guest survived the whole check).
    pub mount: MountOutcome,
    /// The dumped tree, when the mount worked and the dump answered.
    pub entries: Option<Vec<FsEntry>>,
    /// The dump failed (e.g. a directory that cannot be read).
    pub dump_error: Option<String>,
    /// The unmount failed.
    pub unmount_error: Option<String>,
    /// fsck's verdict (`None` when disabled).
    pub fsck: Option<FsckOutcome>,
    /// Suspicious console lines printed during the check.
    pub console: Vec<ConsoleIssue>,
    /// Bytes of file blocks whose hash the caller did not know, by hash, found in the
    /// recovered image (see [`KnownBlocks`]).
    #[serde(skip)]
    pub block_bytes: BTreeMap<String, Vec<u8>>,
    /// Where each of those blocks lies in the PM file.
    pub block_offsets: BTreeMap<String, u64>,
    /// Identity of the recovered state (blake3 of the dump), for deduplication.
    pub state_id: String,
    /// The PM lines the check read (mount, dump, unmount; fsck too when it ran in the
    /// guest), when the guest recorded them: the key of read-set pruning
    /// (`crash_models::readset`). Set only when an image equal on it can take this
    /// recovery: then fsck ran inside the check, or not at all, or `stores` is set.
    #[serde(skip)]
    pub read_set: Option<Arc<crash_models::readset::ReadSet>>,
    /// The bytes the check stored to PM and their values when it ended, when fsck ran
    /// on the host after a recorded check: an image equal on `read_set` is left by the
    /// same recovery as itself with these bytes written over it, and fsck runs on that
    /// ([`ImageJob::Equal`]).
    #[serde(skip)]
    pub stores: Option<Arc<CheckStores>>,
    /// Guest restarts this image cost.
    pub restarts: u32,
    /// Time the check took.
    pub millis: u64,
    /// What each user checker said, in the workload's order.
    pub program_checks: Vec<ProgramCheck>,
}

/// What a user checker said about one recovered state.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ProgramCheck {
    /// The program, as the workload names it.
    pub program: String,
    /// Its exit code (`None`: killed, or it could not start).
    pub code: Option<i32>,
    /// Killed at its timeout.
    pub timed_out: bool,
    /// Its standard output, then its standard error (each bounded).
    pub output: String,
}

impl ProgramCheck {
    /// Exit 0: the program's data is consistent.
    pub fn passed(&self) -> bool {
        self.code == Some(0) && !self.timed_out
    }
}

/// A user checker's result as the agent reported it.
fn program_check(
    c: &crash_models::ops::UserChecker,
    r: &crash_models::protocol::OpResult,
) -> ProgramCheck {
    use crash_models::protocol::OpDetail;
    match &r.detail {
        OpDetail::Exec {
            code,
            timed_out,
            stdout,
            stderr,
        } => ProgramCheck {
            program: c.program.clone(),
            code: *code,
            timed_out: *timed_out,
            output: [stdout.trim_end(), stderr.trim_end()]
                .iter()
                .filter(|s| !s.is_empty())
                .copied()
                .collect::<Vec<_>>()
                .join("\n"),
        },
        other => ProgramCheck {
            program: c.program.clone(),
            code: None,
            timed_out: false,
            output: format!("no program result from the agent: {other:?}"),
        },
    }
}

impl Recovery {
    /// Image `index` mounted with DAX and nothing else known yet: what a check starts
    /// from before its steps fill it in.
    pub fn mounted(index: usize) -> Recovery {
        Recovery {
            index,
            mount: MountOutcome::Mounted { dax: true },
            entries: None,
            dump_error: None,
            unmount_error: None,
            fsck: None,
            console: Vec::new(),
            block_bytes: BTreeMap::new(),
            block_offsets: BTreeMap::new(),
            state_id: String::new(),
            read_set: None,
            stores: None,
            restarts: 0,
            millis: 0,
            program_checks: Vec::new(),
        }
    }
}

/// What a check stored to PM: byte runs of the PM file with the values they held when
/// the check ended, compressed (an XFS check stores about 2 MiB, mostly log blocks,
/// and every checked image that can prune keeps its stores for the rest of the
/// workload).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckStores {
    /// (offset in the PM file, length) of each run, in order.
    runs: Vec<(u64, u64)>,
    /// The runs' bytes one after the other, zstd-compressed.
    packed: Vec<u8>,
    /// Bytes before compression.
    len: usize,
}

impl CheckStores {
    /// The bytes of `stored` as `file` (the scratch file the check ran on) holds them.
    fn read(file: &File, stored: &crash_models::readset::Stored) -> std::io::Result<CheckStores> {
        let mut runs = Vec::new();
        let mut bytes = Vec::new();
        for r in stored.ranges() {
            let at = bytes.len();
            bytes.resize(at + (r.end - r.start) as usize, 0);
            file.read_exact_at(&mut bytes[at..], r.start)?;
            runs.push((r.start, r.end - r.start));
        }
        let mut packed = zstd::bulk::compress(&bytes, 1)?;
        // It comes with room for the worst case (the input's size): kept per class,
        // that room would be most of the memory.
        packed.shrink_to_fit();
        Ok(CheckStores {
            runs,
            packed,
            len: bytes.len(),
        })
    }

    /// Write the stored bytes over `file`.
    fn apply(&self, file: &File) -> std::io::Result<()> {
        let bytes = zstd::bulk::decompress(&self.packed, self.len)?;
        let mut at = 0usize;
        for &(off, n) in &self.runs {
            let n = n as usize;
            file.write_all_at(&bytes[at..at + n], off)?;
            at += n;
        }
        Ok(())
    }

    /// The byte ranges of the PM file the check stored to, in order.
    pub fn ranges(&self) -> Vec<std::ops::Range<u64>> {
        self.runs.iter().map(|&(o, n)| o..o + n).collect()
    }

    /// Bytes stored by the check.
    pub fn bytes(&self) -> usize {
        self.len
    }

    /// Bytes held in memory.
    pub fn memory(&self) -> usize {
        self.packed.len() + self.runs.len() * std::mem::size_of::<(u64, u64)>()
    }
}

/// Block hashes the caller can already explain (zeros, data the workload wrote); a
/// dumped block outside this set has its bytes fetched from the recovered image so
/// the oracle can judge it byte by byte.
#[derive(Debug, Clone, Default)]
pub struct KnownBlocks {
    /// Hex blake3 hashes.
    pub hashes: BTreeSet<String>,
}

/// Progress callback: (images done, images total).
pub type Progress = Arc<dyn Fn(usize, usize) + Send + Sync>;

/// What [`Checker::recover_all`] returns.
#[derive(Debug, Clone)]
pub struct Recoveries {
    /// One recovery per image, in the order given; after an interrupt, only the images
    /// recovered before it, still in order ([`Recovery::index`] says which).
    pub recoveries: Vec<Recovery>,
    /// Guest restarts in total.
    pub restarts: u32,
    /// The checker stopped early at an [`Interrupt`] request: some images were not
    /// recovered.
    pub interrupted: bool,
}

/// A worker: its scratch image and the guest checking it, with a second guest
/// parked: one records reads (the tracer's plugin loaded) and one does not, started
/// when first needed; a check runs in the one its job asks for.
struct Worker {
    id: usize,
    pm: PathBuf,
    file: File,
    /// The guest of the current check.
    vm: Option<Vm>,
    cursor: ConsoleCursor,
    /// The guest runs the tracer in read-recording mode.
    recording: bool,
    /// The other guest, idle: both map the same scratch file, one checks at a time,
    /// and a guest's first request of a check is a refresh, so what the other did to
    /// the file in between is read fresh.
    parked: Option<Parked>,
    /// Where the guest's tracer writes each check's read set.
    reads: PathBuf,
    /// Checks begun on this worker (for check ids).
    checks: u64,
    _dir: tempfile::TempDir,
}

/// A worker's idle guest.
struct Parked {
    vm: Vm,
    cursor: ConsoleCursor,
    recording: bool,
}

impl Worker {
    /// The key of the current guest in [`Checker::live_guests`].
    fn live_key(&self) -> usize {
        self.id * 2 + usize::from(self.recording)
    }

    /// Make the current guest one that records reads, or one that does not: the
    /// parked guest if it is that kind, else none (the check starts one); a current
    /// guest of the other kind is parked.
    fn select(&mut self, record: bool) {
        if self.vm.is_some() && self.recording == record {
            return;
        }
        let wanted = self.parked.take_if(|p| p.recording == record);
        if let Some(vm) = self.vm.take() {
            // The parked slot is free here: a parked guest is never of the current
            // guest's kind, so any was of `record`'s and is `wanted` now.
            self.parked = Some(Parked {
                vm,
                cursor: std::mem::take(&mut self.cursor),
                recording: self.recording,
            });
        }
        if let Some(p) = wanted {
            self.vm = Some(p.vm);
            self.cursor = p.cursor;
            self.recording = p.recording;
        }
    }

    /// End this worker's current guest, if it has one (the next image starts a new
    /// one).
    async fn kill_guest(&mut self, live: &Mutex<BTreeMap<usize, u32>>) {
        if let Some(mut vm) = self.vm.take() {
            vm.kill().await;
        }
        if let Ok(mut l) = live.lock() {
            l.remove(&self.live_key());
        }
    }

    /// Make the scratch file hold exactly `base` with `image`'s delta.
    fn write_image(&self, base: &Base, image: &CrashImage) -> Result<(), CheckerError> {
        base.restore(&self.file)
            .map_err(io_err(format!("restore {}", self.pm.display())))?;
        image.apply(&self.file).map_err(io_err(format!(
            "write the crash image into {}",
            self.pm.display()
        )))
    }
}

/// A crash image to check: built already, or a crash state of a crash point whose
/// bytes are materialised only when a worker writes them into its scratch file (and
/// dropped once the image is checked).
#[derive(Debug, Clone)]
pub enum ImageJob {
    /// The image's bytes.
    Built(Arc<CrashImage>),
    /// A crash point and one of its states.
    State {
        /// The crash point.
        point: Arc<PointSnapshot>,
        /// The state.
        state: CrashState,
        /// Record the check's read set (when the checker records reads at all):
        /// false when the scheduler forecasts that the image is a class of one
        /// (`crash_models::prune::Forecast`), whose recording would prune nothing.
        record: bool,
    },
    /// An image equal to a checked one on every line its check read, so its recovery
    /// is that check's (`docs/pruning.md`), except fsck, which read other bytes: no
    /// guest runs; the worker writes the image, then `class`'s stores over it (what
    /// the same recovery leaves of it), runs fsck on the host and returns `class`'s
    /// recovery with that fsck result.
    Equal {
        /// The image.
        image: Box<ImageJob>,
        /// The recovery of the checked image it equals, with its stores.
        class: Arc<Recovery>,
    },
}

impl ImageJob {
    /// Whether its check should record a read set.
    fn record(&self) -> bool {
        match self {
            ImageJob::Built(_) => true,
            ImageJob::State { record, .. } => *record,
            ImageJob::Equal { .. } => false,
        }
    }

    /// The image's bytes.
    pub fn materialise(&self) -> Arc<CrashImage> {
        match self {
            ImageJob::Built(i) => i.clone(),
            ImageJob::State { point, state, .. } => Arc::new(point.build(state)),
            ImageJob::Equal { image, .. } => image.materialise(),
        }
    }
}

/// Shared state of one [`Checker::recover_stream`] call.
struct Shared {
    factory: GuestFactory,
    opts: CheckerOptions,
    base: Base,
    known: KnownBlocks,
    /// fsck outcomes by what fsck read, when pruning (`None` with `--no-prune`).
    fsck_memo: Option<Arc<fsck::FsckMemo>>,
    /// The images to check, as the caller makes them; a worker takes the next one
    /// when it is free, so the caller decides late (pruning) and memory stays bounded.
    queue: tokio::sync::Mutex<mpsc::Receiver<(usize, ImageJob)>>,
    /// Where each recovery goes as soon as it is made.
    done: mpsc::UnboundedSender<Recovery>,
    live: Arc<Mutex<BTreeMap<usize, u32>>>,
    interrupt: Option<Interrupt>,
    /// Requested when a worker ends, for whatever reason: the others take no new job.
    /// A worker that failed (or panicked) lost the job it held, whose recovery the
    /// caller waits for; were the others to keep waiting for jobs, the caller would
    /// wait on them and they on it. So all end, and the caller sees `done` close.
    ended: Interrupt,
}

impl Shared {
    /// fsck on the host of what worker `w`'s scratch file holds.
    fn host_fsck(&self, w: &Worker) -> Result<FsckOutcome, CheckerError> {
        let dir = w._dir.path();
        Ok(match &self.fsck_memo {
            Some(m) => m.fsck(self.factory.fs, &w.pm, &w.file, dir)?,
            None => fsck::fsck(self.factory.fs, &w.pm, dir)?,
        })
    }
}

/// Requests [`Shared::ended`] when dropped: when its worker returns or unwinds.
struct EndsOthers<'a>(&'a Interrupt);

impl Drop for EndsOthers<'_> {
    fn drop(&mut self) {
        self.0.request();
    }
}

/// One long-lived checker guest per worker, for one (kernel, file system).
pub struct Checker {
    factory: GuestFactory,
    opts: CheckerOptions,
    workers: Vec<Worker>,
    live: Arc<Mutex<BTreeMap<usize, u32>>>,
    restarts: u32,
    fsck_reused: u64,
    interrupt: Option<Interrupt>,
}

/// Why one attempt at an image ended without a recovery.
enum Attempt {
    Done(Box<Recovery>),
    /// The guest died for reasons that are not the image's: retry on a new guest.
    Retry(String),
}

impl Checker {
    /// A checker for `factory`'s kernel and file system. Guests start lazily, on the
    /// first image each worker takes.
    pub fn new(factory: GuestFactory, opts: CheckerOptions) -> Result<Checker, CheckerError> {
        let mut workers = Vec::new();
        for id in 0..opts.workers.max(1) {
            let dir = crate::scratch::run_dir(crate::scratch::CHECK_PREFIX)
                .map_err(io_err("create a checker scratch directory"))?;
            let pm = dir.path().join("pm.img");
            let file = File::options()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&pm)
                .map_err(io_err(format!("create {}", pm.display())))?;
            file.set_len(factory.pm_size)
                .map_err(io_err(format!("size {}", pm.display())))?;
            workers.push(Worker {
                id,
                reads: dir.path().join("reads.pmrs"),
                pm,
                file,
                vm: None,
                cursor: ConsoleCursor::default(),
                recording: false,
                parked: None,
                checks: 0,
                _dir: dir,
            });
        }
        Ok(Checker {
            factory,
            opts,
            workers,
            live: Arc::new(Mutex::new(BTreeMap::new())),
            restarts: 0,
            fsck_reused: 0,
            interrupt: None,
        })
    }

    /// Stop [`Checker::recover_all`] at this request: the images being recovered are
    /// finished, no new one is started, and the recoveries so far are returned.
    pub fn set_interrupt(&mut self, interrupt: Interrupt) {
        self.interrupt = Some(interrupt);
    }

    /// The file system checked.
    pub fn fs(&self) -> FsKind {
        self.factory.fs
    }

    /// QEMU process ids of the running checker guests, by worker and kind (twice the
    /// worker's number, plus one for the guest that records reads; tests kill them to
    /// prove the checker recovers).
    pub fn live_guests(&self) -> Arc<Mutex<BTreeMap<usize, u32>>> {
        self.live.clone()
    }

    /// Follow copies the kernel writes back through this routine (see
    /// [`CheckerOptions::copy_routine`]); guests started from now on.
    pub fn set_copy_routine(&mut self, routine: Option<std::ops::Range<u64>>) {
        self.opts.copy_routine = routine;
    }

    /// Images of the last [`Checker::recover_stream`] whose fsck outcome was taken
    /// from an equal image's run ([`fsck::FsckMemo`]).
    pub fn fsck_reused(&self) -> u64 {
        self.fsck_reused
    }

    /// Guest restarts so far (panics, hangs, deaths).
    pub fn restarts(&self) -> u32 {
        self.restarts
    }

    /// Start every worker's guest now (so the time to get guests ready can be told
    /// apart from checking time). Each guest runs on its scratch copy of `base_image`.
    pub async fn warm_up(&mut self, base_image: &Path) -> Result<(), CheckerError> {
        // The saved state is made once, here, not by every worker at once: its cache
        // lock is a blocking flock that would tie up the runtime's threads.
        self.factory.saved_state().await?;
        let base = Base::read(base_image)?;
        let mut tasks = Vec::new();
        for mut w in std::mem::take(&mut self.workers) {
            let f = self.factory.clone();
            let live = self.live.clone();
            let restore = base.restore(&w.file);
            let opts = self.opts.clone();
            tasks.push(tokio::spawn(async move {
                restore.map_err(io_err("write the base image into the scratch copy"))?;
                if w.vm.is_none() {
                    start_guest(&mut w, &f, &opts, true, &live).await?;
                }
                Ok::<Worker, CheckerError>(w)
            }));
        }
        let mut first_err = None;
        for t in tasks {
            match t.await {
                Ok(Ok(w)) => self.workers.push(w),
                Ok(Err(e)) => first_err = first_err.or(Some(e)),
                Err(e) => first_err = first_err.or(Some(CheckerError::Task(e))),
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Recover every image (deltas over `base_image`) and report what each left.
    pub async fn recover_all(
        &mut self,
        base_image: &Path,
        images: Vec<Arc<CrashImage>>,
        known: KnownBlocks,
        progress: Option<Progress>,
    ) -> Result<Recoveries, CheckerError> {
        let total = images.len();
        let (tx, rx) = mpsc::channel(total.max(1));
        for (i, img) in images.into_iter().enumerate() {
            tx.try_send((i, ImageJob::Built(img)))
                .expect("the channel holds every image");
        }
        drop(tx);
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Recovery>();
        let collect = async {
            let mut out: Vec<Option<Recovery>> = vec![None; total];
            let mut n = 0;
            while let Some(r) = done_rx.recv().await {
                n += 1;
                if let Some(p) = &progress {
                    p(n, total);
                }
                let i = r.index;
                out[i] = Some(r);
            }
            out
        };
        let (res, out) = tokio::join!(self.recover_stream(base_image, known, rx, done_tx), collect);
        res?;
        let recoveries: Vec<Recovery> = out.into_iter().flatten().collect();
        Ok(Recoveries {
            restarts: recoveries.iter().map(|r| r.restarts).sum(),
            interrupted: recoveries.len() < total,
            recoveries,
        })
    }

    /// Recover the images `jobs` yields (indices chosen by the caller, deltas over
    /// `base_image`), as they come, sending each recovery to `done` as soon as it is
    /// made. Returns when `jobs` is closed and empty, at an [`Interrupt`] request
    /// (the images being recovered are finished), or at the first error.
    pub async fn recover_stream(
        &mut self,
        base_image: &Path,
        known: KnownBlocks,
        jobs: mpsc::Receiver<(usize, ImageJob)>,
        done: mpsc::UnboundedSender<Recovery>,
    ) -> Result<(), CheckerError> {
        self.factory.saved_state().await?;
        let base = Base::read(base_image)?;
        if base.len != self.factory.pm_size {
            return Err(CheckerError::BaseSize {
                path: base_image.to_path_buf(),
                len: base.len,
                pm_size: self.factory.pm_size,
            });
        }
        let shared = Arc::new(Shared {
            factory: self.factory.clone(),
            opts: self.opts.clone(),
            base,
            known,
            // Reusing fsck outcomes is pruning too: off with `--no-prune`, whose runs
            // the soundness test compares with.
            fsck_memo: (self.opts.record_reads && !self.opts.fsck_in_guest).then(Arc::default),
            queue: tokio::sync::Mutex::new(jobs),
            done,
            live: self.live.clone(),
            interrupt: self.interrupt.clone(),
            ended: Interrupt::new(),
        });
        let mut tasks = Vec::new();
        for w in std::mem::take(&mut self.workers) {
            let s = shared.clone();
            tasks.push(tokio::spawn(async move { run_worker(w, s).await }));
        }
        let memo = shared.fsck_memo.clone();
        drop(shared);
        let mut first_err = None;
        for t in tasks {
            match t.await {
                Ok((w, res)) => {
                    self.workers.push(w);
                    match res {
                        Ok(restarts) => self.restarts += restarts,
                        Err(e) => first_err = first_err.or(Some(e)),
                    }
                }
                Err(e) => first_err = first_err.or(Some(CheckerError::Task(e))),
            }
        }
        self.workers.sort_by_key(|w| w.id);
        self.fsck_reused = memo.map_or(0, |m| m.hits());
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Power every guest off.
    pub async fn shutdown(mut self) {
        for w in &mut self.workers {
            let parked = w.parked.take().map(|p| p.vm);
            for vm in w.vm.take().into_iter().chain(parked) {
                let _ = vm.shutdown(Duration::from_secs(10)).await;
            }
        }
        if let Ok(mut l) = self.live.lock() {
            l.clear();
        }
    }
}

type WorkerResult = Result<u32, CheckerError>;

async fn run_worker(mut w: Worker, s: Arc<Shared>) -> (Worker, WorkerResult) {
    let _ends_others = EndsOthers(&s.ended);
    let mut restarts = 0;
    loop {
        if s.interrupt.as_ref().is_some_and(Interrupt::is_requested) {
            return (w, Ok(restarts));
        }
        let job = tokio::select! {
            job = async { s.queue.lock().await.recv().await } => job,
            () = s.ended.requested() => None,
        };
        let Some((index, job)) = job else {
            return (w, Ok(restarts));
        };
        if let ImageJob::Equal { image, class } = job {
            match recover_equal(&w, &s, index, &image.materialise(), &class) {
                Ok(r) => {
                    let _ = s.done.send(r);
                    continue;
                }
                Err(e) => return (w, Err(e)),
            }
        }
        // The bytes live only while this image is checked.
        let record = job.record() && s.opts.reads(s.factory.fs).is_some();
        let image = job.materialise();
        drop(job);
        let mut attempts = 0u32;
        let mut image_restarts = 0u32;
        loop {
            match recover_one(&mut w, &s, index, &image, record).await {
                Ok(Attempt::Done(r)) => {
                    let mut r = *r;
                    if w.vm.is_none() {
                        // The image panicked or hung its guest: it is replaced on the
                        // next image.
                        image_restarts += 1;
                    }
                    r.restarts = image_restarts;
                    restarts += image_restarts;
                    // The caller may have stopped listening (an error elsewhere).
                    let _ = s.done.send(r);
                    break;
                }
                Ok(Attempt::Retry(why)) => {
                    attempts += 1;
                    image_restarts += 1;
                    if attempts > s.opts.max_retries {
                        return (
                            w,
                            Err(CheckerError::GaveUp {
                                index,
                                attempts,
                                last: why,
                            }),
                        );
                    }
                }
                Err(e) => return (w, Err(e)),
            }
        }
    }
}

/// Classify a guest error during a step of the check: `Ok(outcome)` when the image
/// earned it (panic, hang), `Err(reason)` when the guest died for another reason.
fn classify(e: &VmError, during: &str) -> Result<MountOutcome, String> {
    match e {
        VmError::GuestPanic { console, .. } => Ok(MountOutcome::Panicked {
            during: during.into(),
            console: console.clone(),
        }),
        VmError::Timeout { .. } => Ok(MountOutcome::Hung {
            during: during.into(),
        }),
        other => Err(other.to_string()),
    }
}

/// The tracer in read-recording mode, writing each check's read set to `reads`.
fn reads_plugin(
    factory: &GuestFactory,
    reads: &Path,
    copies: FollowCopies,
    copy_routine: Option<&std::ops::Range<u64>>,
) -> PluginSpec {
    let mut args = vec![
        (
            "pm_base".into(),
            format!("{:#x}", crate::vm::PM_GUEST_PHYS_BASE),
        ),
        ("pm_size".into(), factory.pm_size.to_string()),
        ("reads".into(), reads.display().to_string()),
        ("copies".into(), copies.arg().into()),
    ];
    if let (Some(r), false) = (copy_routine, copies == FollowCopies::Off) {
        args.push(("copyback".into(), format!("{:#x}-{:#x}", r.start, r.end)));
    }
    PluginSpec {
        path: crate::trace::TRACER_PLUGIN.into(),
        args,
    }
}

/// Start a worker's guest (restored, caches dropped), with the tracer in
/// read-recording mode when `record` and `opts` record reads.
async fn start_guest(
    w: &mut Worker,
    factory: &GuestFactory,
    opts: &CheckerOptions,
    record: bool,
    live: &Mutex<BTreeMap<usize, u32>>,
) -> Result<(), GuestError> {
    let plugin = opts
        .reads(factory.fs)
        .filter(|_| record)
        .map(|copies| reads_plugin(factory, &w.reads, copies, opts.copy_routine.as_ref()));
    w.recording = plugin.is_some();
    let vm = factory.start(&w.pm, plugin).await?;
    if let Ok(mut l) = live.lock() {
        l.insert(w.live_key(), vm.pid());
    }
    w.cursor.skip_to_end(&vm.console());
    w.vm = Some(vm);
    Ok(())
}

/// The file the tracer wrote for check `id`: `None` when it is missing or malformed,
/// belongs to another check, or is incomplete (a load it could not place).
fn read_set_file(path: &Path, id: u64) -> Option<ReadSetFile> {
    let file = ReadSetFile::decode(&std::fs::read(path).ok()?).ok()?;
    (file.check == id && file.unresolved == 0).then_some(file)
}

/// How much longer than fsck's own timeout (enforced by the agent) the host waits for
/// its answer.
const FSCK_GRACE: Duration = Duration::from_secs(30);

/// A guest error during a step of a check: `Ok` when the image earned it (a panic or a
/// hang, now in `rec.mount`), else the retry on a new guest.
fn earned(e: &VmError, during: &str, rec: &mut Recovery) -> Result<(), Attempt> {
    match classify(e, during) {
        Ok(m) => {
            rec.mount = m;
            Ok(())
        }
        Err(why) => Err(Attempt::Retry(format!("{during}: {why}"))),
    }
}

async fn recover_one(
    w: &mut Worker,
    s: &Shared,
    index: usize,
    image: &CrashImage,
    record: bool,
) -> Result<Attempt, CheckerError> {
    let t0 = Instant::now();
    let timeout = s.opts.request_timeout;
    // A check that records reads needs the guest with the plugin; one that does not
    // runs at full speed in a guest without it.
    w.select(record);
    // The scratch file must hold exactly base + delta before the guest looks.
    w.write_image(&s.base, image)?;
    let fresh = w.vm.is_none();
    if fresh {
        // Start includes a refresh of the new image: nothing of it is read yet, so a
        // failure here is the platform's.
        if let Err(e) = start_guest(w, &s.factory, &s.opts, record, &s.live).await {
            return Ok(Attempt::Retry(format!("starting a guest: {e}")));
        }
    }
    w.checks += 1;
    let id = ((w.id as u64) << 48) | w.checks;
    let vm = w.vm.as_mut().expect("guest");
    // The refresh loads nothing of PM (it drops caches): outside the recorded window
    // it costs about 60% of what the plugin's callbacks make of it inside (ext4 12 ms
    // against 17-21 ms, XFS 20 ms against 37 ms).
    if !fresh {
        if let Err(e) = vm.request(&HostMsg::Refresh, timeout).await {
            w.vm = None;
            return Ok(Attempt::Retry(format!("refresh: {e}")));
        }
    }
    if record {
        let _ = std::fs::remove_file(&w.reads);
        if let Err(e) = vm.request(&HostMsg::CheckBegin { id }, timeout).await {
            w.vm = None;
            return Ok(Attempt::Retry(format!("check-begin: {e}")));
        }
    }
    let mut rec = Recovery::mounted(index);
    let mounted = vm
        .request(
            &HostMsg::Mount {
                fs: s.factory.fs,
                // Reading files in the dump must not dirty inodes (atime): nothing a
                // timer could write back mid-check (docs/pruning.md).
                options: vec!["noatime".into()],
            },
            timeout,
        )
        .await;
    let mut dead = false;
    match mounted {
        Ok((_, AgentMsg::Mounted { dax, .. })) => rec.mount = MountOutcome::Mounted { dax },
        Ok((_, other)) => {
            return Err(CheckerError::Guest(GuestError::Guest(format!(
                "expected mounted, got {other:?}"
            ))))
        }
        Err(VmError::Agent { message, .. }) => rec.mount = MountOutcome::Failed { message },
        Err(e) => match earned(&e, "mount", &mut rec) {
            Ok(()) => dead = true,
            Err(retry) => {
                w.vm = None;
                return Ok(retry);
            }
        },
    }
    if matches!(rec.mount, MountOutcome::Mounted { .. }) {
        match vm.request(&HostMsg::Dump, timeout).await {
            Ok((_, AgentMsg::State { entries })) => rec.entries = Some(entries),
            Ok((_, other)) => rec.dump_error = Some(format!("unexpected answer {other:?}")),
            Err(VmError::Agent { message, .. }) => rec.dump_error = Some(message),
            Err(e) => match earned(&e, "dump", &mut rec) {
                Ok(()) => dead = true,
                Err(retry) => {
                    w.vm = None;
                    return Ok(retry);
                }
            },
        }
        for c in &s.opts.user_checkers {
            if dead {
                break;
            }
            if let Some(path) = &c.if_exists {
                let path = path.trim_start_matches("./").trim_end_matches('/');
                let there = rec
                    .entries
                    .as_ref()
                    .is_some_and(|es| es.iter().any(|e| e.path == path));
                if !there {
                    // Nothing made yet is consistent; a pool that is there is checked.
                    rec.program_checks.push(ProgramCheck {
                        program: c.program.clone(),
                        code: Some(0),
                        timed_out: false,
                        output: format!("skipped: {path} does not exist"),
                    });
                    continue;
                }
            }
            let op = c.as_op(crate::guest::GUEST_MOUNT_POINT);
            // The checker's own timeout is in guest time; the host's wait has room.
            let wait = timeout + Duration::from_millis(c.timeout_ms.saturating_mul(4));
            match crate::run::run_mounted(vm, std::slice::from_ref(&op), false, wait).await {
                Ok(results) => rec.program_checks.push(program_check(c, &results[0])),
                Err(GuestError::Vm(e)) => match earned(&e, "user checker", &mut rec) {
                    Ok(()) => dead = true,
                    Err(retry) => {
                        w.vm = None;
                        return Ok(retry);
                    }
                },
                Err(e) => return Err(CheckerError::Guest(e)),
            }
        }
        if !dead {
            match vm.request(&HostMsg::Unmount, timeout).await {
                Ok(_) => {}
                Err(VmError::Agent { message, .. }) => {
                    rec.unmount_error = Some(message);
                    // Still mounted: the next image needs a fresh guest.
                    dead = true;
                }
                Err(e) => match earned(&e, "unmount", &mut rec) {
                    Ok(()) => dead = true,
                    Err(retry) => {
                        w.vm = None;
                        return Ok(retry);
                    }
                },
            }
        }
    }
    // fsck in the guest, on the unmounted device, inside the recorded check: what it
    // reads must be in the read set. With no read set to record, the host's fsck of
    // the same bytes (below) gives the same answer without TCG's cost
    // (docs/pruning.md, "What it costs").
    let fsck_in_check = s.opts.fsck && s.opts.fsck_in_guest && record;
    if fsck_in_check && !dead {
        let req = HostMsg::Fsck {
            fs: s.factory.fs,
            timeout_ms: timeout.as_millis() as u64,
        };
        match vm.request(&req, timeout + FSCK_GRACE).await {
            Ok((
                _,
                AgentMsg::Fsck {
                    command,
                    code,
                    timed_out,
                    output,
                },
            )) => rec.fsck = Some(fsck::from_guest(command, code, timed_out, &output)),
            Ok((_, other)) => {
                return Err(CheckerError::Guest(GuestError::Guest(format!(
                    "expected fsck, got {other:?}"
                ))))
            }
            Err(VmError::Agent { message, .. }) => {
                return Err(CheckerError::Fsck(fsck::FsckError::Guest(message)))
            }
            Err(e) => match earned(&e, "fsck", &mut rec) {
                Ok(()) => dead = true,
                Err(retry) => {
                    w.vm = None;
                    return Ok(retry);
                }
            },
        }
    }
    let mut stored = None;
    if record && !dead {
        match vm.request(&HostMsg::CheckEnd { id }, timeout).await {
            Ok(_) => {
                if let Some(file) = read_set_file(&w.reads, id) {
                    rec.read_set = Some(Arc::new(file.reads));
                    stored = file.stored;
                }
            }
            Err(e) => match earned(&e, "check-end", &mut rec) {
                Ok(()) => dead = true,
                Err(retry) => {
                    w.vm = None;
                    return Ok(retry);
                }
            },
        }
    }
    let text = vm.console();
    rec.console = console::scan(w.cursor.take(&text));
    if dead {
        w.kill_guest(&s.live).await;
    }
    if s.opts.fsck && !fsck_in_check && rec.read_set.is_some() {
        // fsck reads outside the check: an equal image takes this recovery only with
        // fsck run again on what it leaves of that image, which needs these stores.
        match &stored {
            Some(st) => {
                let stores = CheckStores::read(&w.file, st)
                    .map_err(io_err("read what the check stored from the scratch image"))?;
                if std::env::var_os("PMCRASH_PRUNE_DEBUG").is_some() {
                    eprintln!(
                        "prune-debug: check {id} stored {} bytes in {} runs, {} bytes held",
                        stores.bytes(),
                        stores.runs.len(),
                        stores.memory()
                    );
                }
                rec.stores = Some(Arc::new(stores));
            }
            None => rec.read_set = None,
        }
    }
    if s.opts.fsck && rec.fsck.is_none() {
        // fsck on the host, on what the recovery left (also when the guest died before
        // its fsck in the guest).
        rec.fsck = Some(s.host_fsck(w)?);
    }
    if let Some(entries) = &rec.entries {
        // A user checker's answer is part of the state (it may read what the dump
        // does not: a pool's bytes past its file's size are still the dump's, but
        // the answer is what is judged).
        let mut h = blake3::Hasher::new();
        h.update(&serde_json::to_vec(entries).unwrap_or_default());
        if !rec.program_checks.is_empty() {
            h.update(&serde_json::to_vec(&rec.program_checks).unwrap_or_default());
        }
        rec.state_id = h.finalize().to_hex().to_string();
        let wanted = unknown_blocks(entries, &s.known);
        if !wanted.is_empty() {
            find_blocks(&w.file, s.base.len, &wanted, &mut rec)
                .map_err(io_err("scan the recovered image for file blocks"))?;
        }
    } else {
        rec.state_id = format!(
            "unmountable:{}",
            blake3::hash(format!("{:?}", rec.mount).as_bytes()).to_hex()
        );
    }
    rec.millis = t0.elapsed().as_millis() as u64;
    Ok(Attempt::Done(Box::new(rec)))
}

/// An [`ImageJob::Equal`]: `class`'s recovery for image `index`, with fsck run on the
/// host on the image with `class`'s stores written over it. No guest runs.
fn recover_equal(
    w: &Worker,
    s: &Shared,
    index: usize,
    image: &CrashImage,
    class: &Recovery,
) -> Result<Recovery, CheckerError> {
    let t0 = Instant::now();
    let mut rec = class.clone();
    rec.index = index;
    rec.read_set = None;
    rec.stores = None;
    rec.restarts = 0;
    if s.opts.fsck {
        w.write_image(&s.base, image)?;
        if let Some(stores) = &class.stores {
            stores.apply(&w.file).map_err(io_err(format!(
                "write the equal check's stores into {}",
                w.pm.display()
            )))?;
        }
        rec.fsck = Some(s.host_fsck(w)?);
    }
    rec.millis = t0.elapsed().as_millis() as u64;
    Ok(rec)
}

/// (length, hash) of every dumped file block whose hash is not known.
fn unknown_blocks(entries: &[FsEntry], known: &KnownBlocks) -> BTreeMap<usize, BTreeSet<String>> {
    let mut out: BTreeMap<usize, BTreeSet<String>> = BTreeMap::new();
    for e in entries {
        for (&i, h) in &e.blocks {
            if known.hashes.contains(h) {
                continue;
            }
            let len = e.size.saturating_sub(i * PAGE as u64).min(PAGE as u64) as usize;
            out.entry(len).or_default().insert(h.clone());
        }
    }
    out
}

/// Find blocks with the wanted (length, hash) in the device area of the recovered
/// image: file systems here use 4 KiB blocks aligned to the device start, so a file's
/// block is one of them (DAX reads come straight from PM).
fn find_blocks(
    file: &File,
    len: u64,
    wanted: &BTreeMap<usize, BTreeSet<String>>,
    rec: &mut Recovery,
) -> std::io::Result<()> {
    let mut left: usize = wanted.values().map(|s| s.len()).sum();
    let mut buf = vec![0u8; 1 << 20];
    for (start, end) in data_regions(file, FSDAX_DATA_OFFSET, len) {
        let mut off = start;
        while off < end && left > 0 {
            let n = ((end - off) as usize).min(buf.len());
            file.read_exact_at(&mut buf[..n], off)?;
            for (i, block) in buf[..n].chunks(PAGE).enumerate() {
                for (l, set) in wanted {
                    let h = blake3::hash(&block[..(*l).min(block.len())])
                        .to_hex()
                        .to_string();
                    if set.contains(&h) && !rec.block_bytes.contains_key(&h) {
                        rec.block_offsets.insert(h.clone(), off + (i * PAGE) as u64);
                        rec.block_bytes
                            .insert(h, block[..(*l).min(block.len())].to_vec());
                        left -= 1;
                    }
                }
            }
            off += n as u64;
        }
    }
    Ok(())
}
