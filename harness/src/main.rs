//! The `pmcrash` command line.
//!
//! Exit codes, decided in [`exit_code`] alone: 0 all ok, 1 findings (for `run
//! --no-check`: an op failed), 2 usage or infrastructure error, 130 interrupted.

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use crash_models::model::Model;
use crash_models::ops::FsKind;
use crash_models::points::Policy;
use crash_models::states::Strategy;
use pmcrash::bundle::Bundle;
use pmcrash::guest::GuestFactory;
use pmcrash::interrupt::Interrupt;
use pmcrash::oracle::Verdict;
use pmcrash::pipeline::{self, Pipeline, RunConfig};
use pmcrash::repro;
use pmcrash::setup::{self, SetupOptions};
use pmcrash::workloads;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "pmcrash",
    version,
    about = "Crash-consistency testing for persistent-memory (DAX) file systems and programs",
    long_about = "pmcrash runs workloads of mmap stores, cache-line flushes, fences and syncs in QEMU guests \
                  whose persistent memory is a file-backed NVDIMM, on ext4-DAX and XFS-DAX.\n\n\
                  Exit codes: 0 all ok, 1 findings, 2 usage or infrastructure error, 130 interrupted \
                  (Ctrl-C; `run` then writes the report of what was checked, marked incomplete)."
)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct Global {
    /// Cache directory for kernels, images and saved VM states [env: PMCRASH_CACHE; default: ~/.cache/pmcrash]
    #[arg(long, global = true)]
    cache: Option<PathBuf>,
    /// Your own kernel image (bzImage or vmlinux) instead of Debian's
    #[arg(long, global = true, requires = "modules")]
    kernel: Option<PathBuf>,
    /// The lib/modules/<release> directory that goes with --kernel
    #[arg(long, global = true, requires = "kernel")]
    modules: Option<PathBuf>,
    /// A kernel build tree: its bzImage (or vmlinux), .config and modules (installed
    /// under DIR/lib/modules by `make modules_install INSTALL_MOD_PATH=DIR`, or the
    /// tree's .ko files)
    #[arg(long, global = true, value_name = "DIR", conflicts_with = "kernel")]
    kernel_tree: Option<PathBuf>,
    /// Never install host packages; print the commands instead
    #[arg(long, global = true)]
    no_install: bool,
    /// Machine-readable JSON on stdout instead of text
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Install host tools, fetch the guest kernel, build the initramfs (idempotent)
    Setup(SetupArgs),
    /// Say what is present, what is missing, and how to fix it
    Doctor,
    /// Trace workloads, recover every crash state with the real kernel, fsck and the
    /// oracle, and print each op's result and the verdicts
    Run(RunArgs),
    /// Run the built-in LSFMM 2016 corpus (corpora/lsfmm2016) on ext4-DAX, print the table
    /// and write the HTML report
    Demo(DemoArgs),
    /// Trace a workload (`pmcrash trace W.toml -o run.pmtrace`), or show a saved trace
    /// (`pmcrash trace show run.pmtrace`)
    Trace(TraceArgs),
    /// Check saved run bundles (`run --save DIR`) again from their traces, with no
    /// workload run: the same crash points, states and verdicts as the run that saved
    /// them (differences are listed and exit 1)
    Check(CheckArgs),
    /// Check one crash state of a bundle again by its finding id and show the
    /// recovery: the verdict, the mount, fsck and console output
    Repro(ReproArgs),
    /// Write one finding's crash image as a disk file (FILE.img raw, or FILE.qcow2
    /// through qemu-img) and print the QEMU command line that boots it
    Export(ExportArgs),
    /// Boot one finding's crash image with an interactive shell on this terminal: the
    /// real kernel recovers it (mount -o dax on /mnt), busybox gives the tools; `exit`
    /// ends the guest (Ctrl-A X quits QEMU)
    Shell(ShellArgs),
    /// Minimise a finding: the fewest of its dropped lines that still give its verdict
    /// (delta debugging; each try is one crash image checked by a guest); with `--ops`,
    /// the fewest ops of its workload that still give a finding of that verdict at an
    /// op of the same kind (each try traces and checks a smaller workload)
    Minimize(MinimizeArgs),
    /// Fuzz sync orderings: run a campaign of generated workloads (exhaustive
    /// sequences, random and mutated ones), findings deduplicated by signature, state
    /// kept in the campaign directory (`--resume`), shards (`--shard I/N`) and `merge`
    Fuzz(FuzzArgs),
}

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
struct FuzzArgs {
    #[command(subcommand)]
    merge: Option<FuzzCmd>,
    /// The campaign directory (made if missing)
    #[arg(long, value_name = "CAMPAIGN")]
    out: Option<PathBuf>,
    /// File system
    #[arg(long, default_value = "ext4")]
    fs: FsKind,
    /// The seed of the workload stream (and of random:N states); printed in the summary
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// How much to run in this session: a number of workloads (of this shard's share)
    /// or a duration (90s, 30m, 8h: no new workload starts after it)
    #[arg(long, default_value = "10")]
    budget: pmcrash::fuzz::campaign::Budget,
    /// Generators: exhaustive[:K] (every sequence of up to K core ops, each with a
    /// persistence point), random (random and mutated workloads), mixed[:K] (both,
    /// alternating), guided[:K] (mixed, mutating the campaign's own corpus: workloads
    /// that ran new file-system code or found a new signature; a shard's corpus is its
    /// own, so guided shards merged are not one guided run)
    #[arg(long, default_value = "mixed:2")]
    gen: pmcrash::fuzz::gen::GenMode,
    /// Run only stream indices i with i % N == I
    #[arg(long, default_value = "0/1", value_name = "I/N")]
    shard: pmcrash::fuzz::campaign::Shard,
    /// Go on with the campaign in --out where it stopped (or start it, when --out
    /// holds none yet: what a restarted shard wants)
    #[arg(long)]
    resume: bool,
    /// Minimise each new signature's first workload (`minimize --ops`, a try counting
    /// only when it gives the same signature) with at most this many runs, into
    /// CAMPAIGN/findings/SIG/minimal/; 0 does not minimise
    #[arg(long, default_value_t = 32, value_name = "N")]
    minimize_tries: usize,
    /// PM size in MiB (default: 64 for ext4, 320 for xfs)
    #[arg(long)]
    pm_size_mib: Option<u64>,
    /// Persistency model: x86-adr, x86-eadr or x86-adr-nt (x86-adr, and an unfenced
    /// non-temporal store may persist before older cached stores to its line)
    #[arg(long, default_value = "x86-adr")]
    model: Model,
    /// Crash points: fence, fence:all, op, store, every:N
    #[arg(long, default_value = "fence")]
    points: Policy,
    /// Crash states per point: none, all, each-line, subsets:K, random:N[:SEED], torn
    #[arg(long, default_value = "each-line")]
    states: Strategy,
    /// Most crash states per crash point
    #[arg(long, default_value_t = 4096)]
    max_states: usize,
    /// Check only the first N crash points of each workload
    #[arg(long)]
    max_points: Option<usize>,
    /// BTT-like sector atomicity of kernel block writes (512 or 4096; see `run --help`)
    #[arg(long, value_name = "BYTES", value_parser = parse_sector)]
    sector_atomic: Option<u64>,
    /// Checker guests in parallel (default: 2, or 1 on a single core)
    #[arg(long)]
    workers: Option<usize>,
}

#[derive(Args)]
struct ExportArgs {
    /// The bundle directory
    bundle: PathBuf,
    /// The finding id (`f-3a9c2e1b`), as printed with each finding
    id: String,
    /// The image to write: FILE.img (raw) or FILE.qcow2 (compressed)
    #[arg(short = 'o', long)]
    output: PathBuf,
}

#[derive(Args)]
struct ShellArgs {
    /// The bundle directory
    bundle: PathBuf,
    /// The finding id (`f-3a9c2e1b`), as printed with each finding
    id: String,
    /// Keep the crash image the guest booted (raw) in this file; it holds what the
    /// shell session changed (default: a scratch file, removed afterwards)
    #[arg(long, value_name = "FILE")]
    keep_image: Option<PathBuf>,
}

#[derive(Args)]
struct MinimizeArgs {
    /// The bundle directory
    bundle: PathBuf,
    /// The finding id (`f-3a9c2e1b`), as printed with each finding
    id: String,
    /// Checker guests in parallel (default: 2, or 1 on a single core)
    #[arg(long)]
    workers: Option<usize>,
    /// Minimise the workload's ops instead: delta debugging over the ops, each
    /// candidate made valid (an op on a dropped op's descriptor or mapping goes too),
    /// traced and checked with the bundle's file system, model, points, states and
    /// caps (not its --crash-at), and kept when it gives a finding with the same
    /// verdict at an op of the same kind. No randomness: the same bundle, the same tries
    #[arg(long)]
    ops: bool,
    /// With --ops: write the minimal workload as DIR/workload.toml and its run bundle
    /// as DIR/workload (`pmcrash minimize DIR/workload ID` then minimises its lines)
    #[arg(long, value_name = "DIR", requires = "ops")]
    out: Option<PathBuf>,
}

#[derive(Args)]
struct CheckArgs {
    /// Bundle directories, or directories of bundles (what `run --save DIR` wrote)
    #[arg(required = true)]
    bundles: Vec<PathBuf>,
    /// Checker guests in parallel (default: 2, or 1 on a single core)
    #[arg(long)]
    workers: Option<usize>,
}

#[derive(Args)]
struct ReproArgs {
    /// The bundle directory
    bundle: PathBuf,
    /// The finding id (`f-3a9c2e1b`), as printed with each finding
    id: String,
    /// Checker guests in parallel (default: 2, or 1 on a single core)
    #[arg(long)]
    workers: Option<usize>,
}

#[derive(Subcommand)]
enum FuzzCmd {
    /// Merge campaigns (shards of one stream) into one: runs, findings and corpora,
    /// deduplicated
    Merge {
        /// The campaign directories
        #[arg(required = true)]
        campaigns: Vec<PathBuf>,
        /// The merged campaign's directory (must hold no campaign yet)
        #[arg(short = 'o', long)]
        output: PathBuf,
    },
}

#[derive(Args)]
struct SetupArgs {
    /// Also install the headless browser (Debian's chromium) that the HTML report's
    /// tests drive; runs do not need it
    #[arg(long)]
    browser: bool,
}

#[derive(Args)]
struct DemoArgs {
    /// Where to write the HTML report [default: pmcrash-demo-report.html in the
    /// temporary directory]
    #[arg(long, value_name = "FILE")]
    html: Option<PathBuf>,
}

#[derive(Args)]
struct RunArgs {
    /// Workload files (.toml) or directories of them
    #[arg(required = true)]
    workloads: Vec<PathBuf>,
    /// File system
    #[arg(long, default_value = "ext4")]
    fs: FsKind,
    /// PM size in MiB (default: 64 for ext4, 320 for xfs)
    #[arg(long)]
    pm_size_mib: Option<u64>,
    /// vCPUs
    #[arg(long, default_value_t = 1)]
    smp: u32,
    /// Keep the PM images in this directory (default: a temporary directory)
    #[arg(long)]
    out: Option<PathBuf>,
    /// Persistency model: x86-adr (caches lost at a crash), x86-eadr (caches persist)
    /// or x86-adr-nt (x86-adr, and an unfenced non-temporal store may persist before
    /// older cached stores to its line: more states)
    #[arg(long, default_value = "x86-adr")]
    model: Model,
    /// Crash points: fence, fence:all, op, store, every:N
    #[arg(long, default_value = "fence")]
    points: Policy,
    /// Crash states per point: none, all, each-line, subsets:K, random:N[:SEED], torn
    #[arg(long, default_value = "each-line")]
    states: Strategy,
    /// Seed for every random choice (random:N states); printed in the report
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Most crash states per crash point
    #[arg(long, default_value_t = 4096)]
    max_states: usize,
    /// Check only the first N crash points of each workload
    #[arg(long)]
    max_points: Option<usize>,
    /// Check only the crash point after this many trace records (from a finding's
    /// `reproduce` line)
    #[arg(long)]
    crash_at: Option<u64>,
    /// Checker guests in parallel (default: 2, or 1 on a single core)
    #[arg(long)]
    workers: Option<usize>,
    /// Also write a JUnit XML report here
    #[arg(long, value_name = "FILE")]
    junit: Option<PathBuf>,
    /// Also write the HTML report here: one self-contained page with each workload's
    /// timeline of ops, crash points and findings
    #[arg(long, value_name = "FILE")]
    html: Option<PathBuf>,
    /// Verdict classes that make the exit code 1 (comma-separated; default: every
    /// class but ok). A class a workload's [expect] table lists does not fail it.
    #[arg(long, value_delimiter = ',', value_name = "CLASSES")]
    fail_on: Vec<Verdict>,
    /// Only run the ops and print their results (no tracing, no crash states)
    #[arg(long)]
    no_check: bool,
    /// Trace in a plain TCG guest instead of a deterministic one (-icount, whole run
    /// scripted): faster to start the first time, but kernel events then follow host
    /// timing, so crash points (and --crash-at) differ between runs
    #[arg(long)]
    no_deterministic: bool,
    /// Check every distinct crash image in a guest: no read-set pruning (by default an
    /// image equal to a checked one on every PM line that check read takes its
    /// recovery)
    #[arg(long)]
    no_prune: bool,
    /// Run fsck inside the checker guests, where its reads join each check's read set,
    /// instead of natively on the host (slower: the layout before fsck moved out, kept
    /// to compare)
    #[arg(long)]
    fsck_in_guest: bool,
    /// Memory budget, in MiB, of the crash points waiting to be checked (images are
    /// made lazily and streamed to the checkers; over the budget, enumeration waits)
    #[arg(long, default_value_t = pmcrash::memory::DEFAULT_BUDGET_MIB, value_parser = clap::value_parser!(u64).range(1..))]
    memory_mib: u64,
    /// Model BTT-like sector atomicity of the kernel's block writes to PM: each crash
    /// state keeps or drops every aligned sector of this many bytes (512 or 4096) of
    /// such a write whole (default: none, as fsdax is; see docs/torn-writes.md)
    #[arg(long, value_name = "BYTES", value_parser = parse_sector)]
    sector_atomic: Option<u64>,
    /// Save a run bundle per workload under DIR (DIR/<workload name>): the workload,
    /// trace, base image, configuration, kernel identity and report, for `pmcrash
    /// check` and `pmcrash repro` without running it again
    #[arg(long, value_name = "DIR")]
    save: Option<PathBuf>,
}

/// `--sector-atomic`: 512 or 4096.
fn parse_sector(s: &str) -> Result<u64, String> {
    match s {
        "512" => Ok(512),
        "4096" => Ok(4096),
        _ => Err(format!("`{s}` is not a sector size: use 512 or 4096")),
    }
}

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
struct TraceArgs {
    #[command(subcommand)]
    show: Option<TraceCmd>,
    /// The workload to trace
    workload: Option<PathBuf>,
    /// File system
    #[arg(long, default_value = "ext4")]
    fs: FsKind,
    /// Where to write the trace; the base and final PM images go beside it
    /// (`NAME.base.img`, `NAME.final.img`)
    #[arg(short = 'o', long, default_value = "run.pmtrace")]
    output: PathBuf,
    /// PM size in MiB (default: 64 for ext4, 320 for xfs)
    #[arg(long)]
    pm_size_mib: Option<u64>,
    /// vCPUs (more than one runs TCG single-threaded: one total order)
    #[arg(long, default_value_t = 1)]
    smp: u32,
    /// Trace in a plain TCG guest instead of a deterministic one (see `run --help`)
    #[arg(long)]
    no_deterministic: bool,
    /// Also snapshot the PM file before every fence and marker of the run, into
    /// NAME.snapshots: the ground truth `trace image --ground-truth` reads
    #[arg(long)]
    snapshots: bool,
    /// Also snapshot the PM file right after these records (comma-separated; at the
    /// end of the instruction that made record N - 1), into NAME.snapshots
    #[arg(long, value_delimiter = ',', value_name = "N")]
    snapshot_at: Vec<u64>,
    /// Also record which translation blocks of the file-system code (the ext4, jbd2
    /// and xfs modules, DAX functions) the run executed, the fuzzer's coverage: prints
    /// the count per module and, with --json, the functions reached
    #[arg(long)]
    coverage: bool,
}

#[derive(Subcommand)]
enum TraceCmd {
    /// Summarise a trace file: records per op, stores, flushes and fences, user vs kernel
    Show {
        /// The .pmtrace file
        trace: PathBuf,
        /// Also name the kernel function behind each traced PC (stores, flushes and
        /// fences per function; the guest kernel's symbols, read once per saved VM
        /// state). Give the trace's --fs (and --pm-size-mib, --smp) when not the
        /// defaults
        #[arg(long)]
        symbols: bool,
        /// File system the trace was made on (for --symbols)
        #[arg(long, default_value = "ext4")]
        fs: FsKind,
        /// PM size in MiB the trace was made with (for --symbols)
        #[arg(long)]
        pm_size_mib: Option<u64>,
        /// vCPUs the trace was made with (for --symbols)
        #[arg(long, default_value_t = 1)]
        smp: u32,
        /// The trace was made with --no-deterministic (for --symbols)
        #[arg(long)]
        no_deterministic: bool,
    },
    /// Write the PM image after N records with every store persisted: as pmcrash builds
    /// it from the trace, or (--ground-truth) as the traced guest really had it
    Image {
        /// The .pmtrace file (NAME.base.img, NAME.snapshots are read beside it)
        trace: PathBuf,
        /// Records applied (a crash point's record)
        #[arg(long)]
        at: u64,
        /// The image to write
        #[arg(short = 'o', long)]
        output: PathBuf,
        /// The traced guest's PM file from NAME.snapshots (`trace --snapshots`, or
        /// PMCRASH_SNAPSHOTS=1) instead of the image built from the trace
        #[arg(long)]
        ground_truth: bool,
    },
}

fn setup_options(g: &Global) -> anyhow::Result<SetupOptions> {
    let opts = SetupOptions {
        cache_dir: g
            .cache
            .clone()
            .unwrap_or_else(SetupOptions::default_cache_dir),
        kernel: g.kernel.clone(),
        modules: g.modules.clone(),
        install: !g.no_install,
        progress: !g.json,
    };
    Ok(match &g.kernel_tree {
        Some(dir) => opts.with_kernel_tree(dir)?,
        None => opts,
    })
}

/// How a command ended.
enum Outcome {
    /// Everything ok: exit 0.
    Clean,
    /// Findings (or, for `run --no-check`, failed ops): exit 1.
    Findings,
    /// A usage or infrastructure problem that has been printed already: exit 2.
    Reported,
    /// A usage or infrastructure error, printed by [`exit_code`]: exit 2.
    Failed(anyhow::Error),
    /// Ctrl-C: exit 130 (after the partial report, for `run`).
    Interrupted,
}

/// The one place exit codes are decided.
fn exit_code(outcome: Outcome) -> ExitCode {
    match outcome {
        Outcome::Clean => ExitCode::SUCCESS,
        Outcome::Findings => ExitCode::from(1),
        Outcome::Reported => ExitCode::from(2),
        Outcome::Failed(e) => {
            eprintln!("error: {}", error_chain(&*e));
            ExitCode::from(2)
        }
        Outcome::Interrupted => ExitCode::from(130),
    }
}

/// An error and its causes, `: `-separated; a cause whose text its parent already
/// shows is not repeated.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = c.source();
    }
    out
}

fn main() -> ExitCode {
    pmcrash::sys::default_sigpipe();
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return exit_code(if e.use_stderr() {
                Outcome::Reported
            } else {
                Outcome::Clean
            });
        }
    };
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => return exit_code(Outcome::Failed(e.into())),
    };
    let interrupt = Interrupt::new();
    let outcome = rt.block_on(async {
        // Ctrl-C: a run that can stop cleanly (it armed `interrupt`) finishes the crash
        // images in progress and writes the report of what was checked; anything else,
        // or a second Ctrl-C, ends every QEMU we started and leaves at once.
        let i = interrupt.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_err() {
                return;
            }
            if i.is_armed() {
                i.request();
                eprintln!(
                    "interrupted: finishing the crash images being checked, then writing the report of what was checked (Ctrl-C again to stop at once)"
                );
                if tokio::signal::ctrl_c().await.is_err() {
                    return;
                }
            }
            pmcrash::vm::kill_all_guests();
            eprintln!("interrupted: every guest has been stopped");
            std::process::exit(130);
        });
        dispatch(cli, interrupt.clone())
            .await
            .unwrap_or_else(Outcome::Failed)
    });
    if interrupt.is_requested() {
        pmcrash::vm::kill_all_guests();
    }
    exit_code(outcome)
}

async fn dispatch(cli: Cli, interrupt: Interrupt) -> anyhow::Result<Outcome> {
    let g = cli.global.clone();
    match cli.command {
        Command::Setup(args) => {
            let opts = setup_options(&g)?;
            let assets = setup::ensure(&opts)?;
            // `pmcrash shell`'s initramfs (Debian's busybox-static) is provided now, so
            // a machine set up once needs no download later.
            for fs in FsKind::ALL {
                setup::shell_initramfs::ensure(&assets, fs, opts.progress)?;
            }
            let browser = if args.browser {
                let show = opts.progress;
                Some(setup::host_tools::ensure_browser(opts.install, |s| {
                    if show {
                        eprintln!("running: {s}");
                    }
                })?)
            } else {
                None
            };
            if g.json {
                println!("{}", serde_json::to_string_pretty(&assets)?);
            } else {
                println!(
                    "ready: QEMU {} with kernel {}",
                    assets.qemu_version, assets.kernel_release
                );
                println!("cache: {}", assets.cache_dir.display());
                if let Some(b) = &browser {
                    println!("browser: {}", b.display());
                }
            }
            Ok(Outcome::Clean)
        }
        Command::Doctor => {
            let report = setup::doctor(&setup_options(&g)?);
            if g.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{report}");
            }
            Ok(if report.ok() {
                Outcome::Clean
            } else {
                Outcome::Reported
            })
        }
        Command::Run(args) => {
            let loaded = workloads::load(&args.workloads)?;
            if args.no_check {
                return run_ops_only(&g, args.fs, args.pm_size_mib, args.smp, args.out, loaded)
                    .await;
            }
            let mut cfg = RunConfig {
                fs: args.fs,
                model: args.model,
                points: args.points.clone(),
                states: args.states,
                seed: args.seed,
                max_states: args.max_states,
                max_points: args.max_points,
                crash_at: args.crash_at,
                pm_size: args.pm_size_mib.map(|m| m << 20),
                out_dir: args.out.clone(),
                prune: !args.no_prune,
                fsck_in_guest: args.fsck_in_guest,
                memory_mib: args.memory_mib,
                sector_atomic: args.sector_atomic,
                // A bundle's report keeps every state's verdict, for `check` to compare.
                state_verdicts: args.save.is_some(),
                ..RunConfig::default()
            };
            if let Some(w) = args.workers {
                cfg.workers = w.max(1);
            }
            if !args.fail_on.is_empty() {
                cfg.fail_on = args.fail_on.iter().copied().collect();
            }
            crash_test(
                &g,
                cfg,
                args.smp,
                !args.no_deterministic,
                loaded,
                Outputs {
                    junit: args.junit.as_deref(),
                    html: args.html.as_deref(),
                    table: false,
                    save: args.save.as_deref(),
                },
                interrupt,
            )
            .await
        }
        Command::Demo(args) => {
            let loaded = pipeline::builtin_lsfmm2016();
            // Crash points at op boundaries: the LSFMM 2016 questions are about what an
            // op has made durable once it returns, and this keeps the demo to seconds.
            let cfg = RunConfig {
                points: Policy::Op,
                ..RunConfig::default()
            };
            let html = args
                .html
                .unwrap_or_else(|| std::env::temp_dir().join("pmcrash-demo-report.html"));
            let out = Outputs {
                junit: None,
                html: Some(&html),
                table: true,
                save: None,
            };
            crash_test(&g, cfg, 1, true, loaded, out, interrupt).await
        }
        Command::Trace(TraceArgs {
            show:
                Some(TraceCmd::Show {
                    trace,
                    symbols,
                    fs,
                    pm_size_mib,
                    smp,
                    no_deterministic,
                }),
            ..
        }) => {
            let summary = pmcrash::trace::show(&trace)?;
            let by_function = if symbols {
                let mut factory = GuestFactory::new(setup::ensure(&setup_options(&g)?)?, fs);
                if let Some(m) = pm_size_mib {
                    factory.pm_size = m << 20;
                }
                factory.smp = smp;
                factory.deterministic_traces = !no_deterministic;
                let table = pmcrash::symbols::kernel_symbols(&factory).await?;
                let t = pmcrash::trace::read(&trace)?;
                Some(pmcrash::trace::by_function(&t.records, &table))
            } else {
                None
            };
            if g.json {
                let v = match &by_function {
                    None => serde_json::to_value(&summary)?,
                    Some(f) => serde_json::json!({ "summary": summary, "functions": f }),
                };
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print!("{summary}");
                if let Some(f) = &by_function {
                    print!("{}", pmcrash::trace::render_functions(f));
                }
            }
            Ok(Outcome::Clean)
        }
        Command::Trace(TraceArgs {
            show:
                Some(TraceCmd::Image {
                    trace,
                    at,
                    output,
                    ground_truth,
                }),
            ..
        }) => {
            trace_image(&trace, at, &output, ground_truth)?;
            Ok(Outcome::Clean)
        }
        Command::Trace(args) => trace(&g, args).await,
        Command::Check(args) => check_bundles(&g, args, interrupt).await,
        Command::Repro(args) => repro(&g, args, interrupt).await,
        Command::Export(args) => export(&g, args).await,
        Command::Shell(args) => shell(&g, args).await,
        Command::Minimize(args) => minimize(&g, args).await,
        Command::Fuzz(args) => fuzz(&g, args, interrupt).await,
    }
}

/// The assets for checking bundles: the kernel pmcrash provides must be each bundle's.
fn bundle_assets(g: &Global, bundles: &[Bundle]) -> anyhow::Result<setup::Assets> {
    let assets = setup::ensure(&setup_options(g)?)?;
    let byo = g.kernel.is_some() || g.kernel_tree.is_some();
    for b in bundles {
        repro::check_kernel(b, &assets, byo)?;
    }
    Ok(assets)
}

/// `pmcrash check`.
async fn check_bundles(
    g: &Global,
    args: CheckArgs,
    interrupt: Interrupt,
) -> anyhow::Result<Outcome> {
    // Every bundle is opened (and its checksums checked) before any guest starts.
    let bundles = repro::bundles_in(&args.bundles)
        .iter()
        .map(|p| Bundle::open(p))
        .collect::<Result<Vec<_>, _>>()?;
    let assets = bundle_assets(g, &bundles)?;
    let mut out = Vec::new();
    let mut bad = false;
    for b in &bundles {
        let t = std::time::Instant::now();
        let mut p = repro::pipeline_for(b, assets.clone(), args.workers)?;
        p.set_interrupt(interrupt.clone());
        let res = repro::check(&mut p, b, !g.json).await;
        let (config, fail_on) = (p.config_report(), p.config().fail_on.clone());
        p.shutdown().await;
        if interrupt.is_requested() {
            return Ok(Outcome::Interrupted);
        }
        let report = pmcrash::report::Report::new(config, &fail_on, vec![res?]);
        let saved = b.report()?;
        let differences = repro::differences(&saved, &serde_json::to_value(&report)?);
        let check_ms = t.elapsed().as_millis() as u64;
        let saved_ms = repro::saved_total_ms(&saved);
        bad |= report.failed() || !differences.is_empty();
        if g.json {
            out.push(serde_json::json!({
                "bundle": b.dir,
                "report": report,
                "same_verdicts": differences.is_empty(),
                "differences": differences,
                "check_ms": check_ms,
                "saved_run_ms": saved_ms,
            }));
            continue;
        }
        println!(
            "{}: {} on {}-DAX, checked from the saved trace in {:.1} s (the saved run took {})",
            b.dir.display(),
            b.run.workload,
            b.run.fs,
            check_ms as f64 / 1000.0,
            saved_ms.map_or("?".into(), |m| format!("{:.1} s", m as f64 / 1000.0))
        );
        print!("{}", report.render_text());
        let w = &report.workloads[0];
        if differences.is_empty() {
            println!(
                "verdicts: the same as the saved run at all {} crash point(s), {} state(s)",
                w.stats.crash_points, w.stats.states
            );
        } else {
            println!("verdicts DIFFER from the saved run:");
            for d in &differences {
                println!("  {d}");
            }
        }
    }
    if g.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    }
    Ok(if bad {
        Outcome::Findings
    } else {
        Outcome::Clean
    })
}

/// `pmcrash repro`.
async fn repro(g: &Global, args: ReproArgs, interrupt: Interrupt) -> anyhow::Result<Outcome> {
    let id = &args.id;
    finding_id_arg(id)?;
    let b = Bundle::open(&args.bundle)?;
    let assets = bundle_assets(g, std::slice::from_ref(&b))?;
    let mut p = repro::pipeline_for(&b, assets, args.workers)?;
    p.only_finding(id);
    p.set_interrupt(interrupt.clone());
    let res = repro::check(&mut p, &b, !g.json).await;
    let found = p.take_repro();
    p.shutdown().await;
    if interrupt.is_requested() {
        return Ok(Outcome::Interrupted);
    }
    res?;
    let Some(r) = found else {
        return Err(no_such_finding(&b, id));
    };
    if g.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print!("{}", render_repro(&b, &r));
    }
    Ok(if r.verdict == Verdict::Ok {
        Outcome::Clean
    } else {
        Outcome::Findings
    })
}

/// `pmcrash fuzz` and `pmcrash fuzz merge`.
async fn fuzz(g: &Global, args: FuzzArgs, interrupt: Interrupt) -> anyhow::Result<Outcome> {
    use pmcrash::fuzz::campaign;
    let print = |s: &campaign::Summary| -> anyhow::Result<()> {
        if g.json {
            println!("{}", serde_json::to_string_pretty(s)?);
        } else {
            print!("{}", s.render_text());
        }
        Ok(())
    };
    if let Some(FuzzCmd::Merge { campaigns, output }) = args.merge {
        let merged = campaign::merge(&campaigns, &output)?;
        let s = campaign::summary(&output, &merged);
        print(&s)?;
        return Ok(if s.findings.is_empty() {
            Outcome::Clean
        } else {
            Outcome::Findings
        });
    }
    let Some(dir) = args.out else {
        anyhow::bail!(
            "name the campaign directory with --out CAMPAIGN (see `pmcrash fuzz --help`)"
        );
    };
    let mut cfg = RunConfig {
        fs: args.fs,
        model: args.model,
        points: args.points,
        states: args.states,
        seed: args.seed,
        max_states: args.max_states,
        max_points: args.max_points,
        pm_size: args.pm_size_mib.map(|m| m << 20),
        sector_atomic: args.sector_atomic,
        ..RunConfig::default()
    };
    if let Some(w) = args.workers {
        cfg.workers = w.max(1);
    }
    let config = campaign::CampaignConfig::of(&cfg, args.seed, args.gen, args.shard);
    let assets = setup::ensure(&setup_options(g)?)?;
    let mut factory = GuestFactory::new(assets, cfg.fs);
    if let Some(s) = cfg.pm_size {
        factory.pm_size = s;
    }
    let opts = campaign::FuzzOptions {
        budget: args.budget,
        resume: args.resume,
        progress: !g.json,
        minimize_tries: args.minimize_tries,
    };
    let s = campaign::run_campaign(&dir, config, cfg, factory, opts, interrupt).await?;
    print(&s)?;
    Ok(if s.interrupted {
        Outcome::Interrupted
    } else if s.session_failed > 0 {
        // Printed in the summary: workloads the harness could not check.
        Outcome::Reported
    } else if s.findings.is_empty() {
        Outcome::Clean
    } else {
        Outcome::Findings
    })
}

/// A finding id as given on the command line: well formed, or a usage error.
fn finding_id_arg(id: &str) -> anyhow::Result<()> {
    let well_formed = id.len() == 10
        && id.starts_with("f-")
        && id[2..]
            .bytes()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase());
    if !well_formed {
        anyhow::bail!(
            "`{id}` is not a finding id: ids look like f-3a9c2e1b (printed with each finding)"
        );
    }
    Ok(())
}

/// `pmcrash export`.
async fn export(g: &Global, args: ExportArgs) -> anyhow::Result<Outcome> {
    let id = &args.id;
    finding_id_arg(id)?;
    let out = &args.output;
    let qcow2 = match out.extension().and_then(|e| e.to_str()) {
        Some("qcow2") => true,
        Some("img" | "raw") => false,
        _ => anyhow::bail!(
            "-o {}: name the image FILE.img (raw) or FILE.qcow2",
            out.display()
        ),
    };
    let b = Bundle::open(&args.bundle)?;
    let assets = bundle_assets(g, std::slice::from_ref(&b))?;
    let assets_shell = assets.clone();
    let mut p = repro::pipeline_for(&b, assets, Some(1))?;
    let u = repro::unpack(&b)?;
    let dir = match out.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    // Written beside the output and renamed into place: an image appears whole.
    let tmp = tempfile::Builder::new()
        .prefix(".pmcrash-export-")
        .tempdir_in(&dir)
        .with_context(|| format!("create a directory in {}", dir.display()))?;
    let raw = tmp.path().join("crash.img");
    let res = p
        .write_crash_image(
            &b.run.workload,
            &b.workload,
            &u.trace,
            &u.base_image,
            &b.run.results,
            id,
            &raw,
        )
        .await;
    let boot_image = if qcow2 {
        out.with_extension("img")
    } else {
        out.clone()
    };
    let spec = p.boot_spec(&boot_image);
    p.shutdown().await;
    // The agent's initramfs waits for a host that is not there: boot the shell's.
    let command = spec.map_err(anyhow::Error::from).and_then(|mut spec| {
        spec.initramfs = setup::shell_initramfs::ensure(&assets_shell, b.run.fs, !g.json)?;
        Ok(pmcrash::vm::interactive_command(&spec))
    });
    let Some(record) = res? else {
        return Err(no_such_finding(&b, id));
    };
    let command = command?;
    let made = if qcow2 {
        let q = tmp.path().join("crash.qcow2");
        let st = std::process::Command::new("qemu-img")
            .args(["convert", "-c", "-f", "raw", "-O", "qcow2"])
            .arg(&raw)
            .arg(&q)
            .status()
            .context("run qemu-img (installed by `pmcrash setup` with QEMU)")?;
        anyhow::ensure!(st.success(), "qemu-img convert to qcow2 failed: {st}");
        q
    } else {
        raw
    };
    std::fs::rename(&made, out).with_context(|| format!("rename into {}", out.display()))?;
    let convert = qcow2.then(|| {
        format!(
            "qemu-img convert -f qcow2 -O raw {} {}",
            out.display(),
            boot_image.display()
        )
    });
    if g.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "image": out,
                "format": if qcow2 { "qcow2" } else { "raw" },
                "id": id,
                "record": record,
                "convert_to_raw": convert,
                "qemu": command,
            }))?
        );
    } else {
        println!(
            "{}: the crash image of finding {id} (crash point after record {record} of {} on {}-DAX, before recovery)",
            out.display(),
            b.run.workload,
            b.run.fs
        );
        if let Some(c) = &convert {
            println!("QEMU's NVDIMM needs a raw file: {c}");
        }
        println!(
            "boot it (pmcrash's guest kernel and its shell initramfs, the file as the NVDIMM; \
             the kernel recovers the file system onto /mnt and a busybox shell starts; the \
             file system starts at PM offset 2 MiB, /dev/pmem0 in the guest; Ctrl-A X quits):"
        );
        println!("{command}");
    }
    Ok(Outcome::Clean)
}

/// The error for a finding id no crash state of `b` has.
fn no_such_finding(b: &Bundle, id: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "no crash state of {} has the id {id} (`pmcrash check {}` lists the findings and their ids)",
        b.dir.display(),
        b.dir.display()
    )
}

/// `pmcrash minimize`.
async fn minimize(g: &Global, args: MinimizeArgs) -> anyhow::Result<Outcome> {
    let id = &args.id;
    finding_id_arg(id)?;
    let b = Bundle::open(&args.bundle)?;
    let assets = bundle_assets(g, std::slice::from_ref(&b))?;
    // (JSON, text) of either minimisation.
    let (json, text) = if args.ops {
        use pmcrash::minimize::ops;
        let cfg = ops::search_config(&b, args.workers)?;
        let mut p = repro::pipeline_with(&b, assets, cfg)?;
        let res = ops::minimize_ops(&mut p, &b, id, args.out.as_deref(), !g.json).await;
        p.shutdown().await;
        let m = res?.ok_or_else(|| no_such_finding(&b, id))?;
        (serde_json::to_string_pretty(&m)?, m.render_text(&b))
    } else {
        let mut p = repro::pipeline_for(&b, assets, args.workers)?;
        let workers = p.config().workers;
        let res = pmcrash::minimize::minimize_lines(&mut p, &b, id, workers, !g.json).await;
        p.shutdown().await;
        let mut m = res?.ok_or_else(|| no_such_finding(&b, id))?;
        // Say what each minimal line is, from the workload's final image (`labels`).
        let u = repro::unpack(&b)?;
        if let Err(e) = pmcrash::labels::final_image_from_trace(&u.trace, &u.base_image)
            .and_then(|f| pmcrash::labels::label_dropped(b.run.fs, f.path(), &mut m.lines))
        {
            eprintln!("pmcrash: the minimal lines are not labelled: {e}");
        }
        (serde_json::to_string_pretty(&m)?, m.render_text(&b))
    };
    if g.json {
        println!("{json}");
    } else {
        print!("{text}");
    }
    Ok(Outcome::Findings)
}

/// `pmcrash shell`.
async fn shell(g: &Global, args: ShellArgs) -> anyhow::Result<Outcome> {
    let id = &args.id;
    finding_id_arg(id)?;
    let b = Bundle::open(&args.bundle)?;
    let assets = bundle_assets(g, std::slice::from_ref(&b))?;
    let initramfs = setup::shell_initramfs::ensure(&assets, b.run.fs, true)?;
    let mut p = repro::pipeline_for(&b, assets, Some(1))?;
    let u = repro::unpack(&b)?;
    let scratch = pmcrash::scratch::run_dir(pmcrash::scratch::RUN_PREFIX)
        .context("create a scratch directory")?;
    let image = args
        .keep_image
        .clone()
        .unwrap_or_else(|| scratch.path().join("crash.img"));
    eprintln!("building the crash image of {id}");
    let res = p
        .write_crash_image(
            &b.run.workload,
            &b.workload,
            &u.trace,
            &u.base_image,
            &b.run.results,
            id,
            &image,
        )
        .await;
    let spec = p.boot_spec(&image);
    p.shutdown().await;
    let Some(record) = res? else {
        return Err(no_such_finding(&b, id));
    };
    let mut spec = spec?;
    spec.initramfs = initramfs;
    eprintln!(
        "booting finding {id} (crash point after record {record} of {} on {}-DAX) with a \
         shell; the file system is recovered onto {}; `exit` ends the guest, Ctrl-A X quits QEMU",
        b.run.workload,
        b.run.fs,
        setup::shell_initramfs::MOUNT_POINT
    );
    let t = std::time::Instant::now();
    let status = pmcrash::vm::run_interactive(&spec).await?;
    eprintln!(
        "pmcrash shell: the guest ended after {:.1} s ({status}){}",
        t.elapsed().as_secs_f64(),
        args.keep_image
            .as_ref()
            .map_or(String::new(), |k| format!("; the image is {}", k.display()))
    );
    anyhow::ensure!(status.success(), "QEMU ended with {status}");
    Ok(Outcome::Clean)
}

/// A state checked again, in words.
fn render_repro(b: &Bundle, r: &pipeline::ReproState) -> String {
    use pmcrash::checker::MountOutcome;
    use std::fmt::Write;
    let mut s = String::new();
    let p = &r.point;
    let _ = writeln!(
        s,
        "finding {}: {} at record {} (op {} {}, {} op(s) completed) of {} on {}-DAX; {} line(s) dropped",
        r.id,
        r.verdict,
        p.record,
        p.op.map_or("-".into(), |o| o.to_string()),
        p.op_name.as_deref().unwrap_or("-"),
        p.ops_completed,
        b.run.workload,
        b.run.fs,
        r.dropped_lines.len()
    );
    for pr in &r.problems {
        let _ = writeln!(s, "  {}: {}", pr.verdict, pr.message);
    }
    let rec = &r.recovery;
    let _ = match &rec.mount {
        MountOutcome::Mounted { dax } => writeln!(
            s,
            "mount: mounted{}",
            if *dax { " with DAX" } else { " WITHOUT DAX" }
        ),
        MountOutcome::Failed { message } => writeln!(s, "mount: FAILED: {message}"),
        MountOutcome::Panicked { during, console } => {
            writeln!(s, "mount: the kernel PANICKED during {during}:\n{console}")
        }
        MountOutcome::Hung { during } => writeln!(s, "mount: the guest HUNG during {during}"),
    };
    if let Some(e) = &rec.dump_error {
        let _ = writeln!(s, "dump: {e}");
    }
    if let Some(e) = &rec.unmount_error {
        let _ = writeln!(s, "unmount: {e}");
    }
    match &rec.fsck {
        Some(f) => {
            let _ = writeln!(
                s,
                "fsck: `{}` exit {}{}",
                f.command,
                f.code.map_or("(signal)".into(), |c| c.to_string()),
                if f.problems { ": PROBLEMS" } else { ": clean" }
            );
            for l in f.output.lines() {
                let _ = writeln!(s, "  {l}");
            }
        }
        None => {
            let _ = writeln!(s, "fsck: not run");
        }
    }
    if rec.console.is_empty() {
        let _ = writeln!(s, "console: nothing suspicious");
    } else {
        let _ = writeln!(s, "console:");
        for c in &rec.console {
            let _ = writeln!(s, "  [{}] {}", c.kind, c.line);
        }
    }
    for l in r.dropped_lines.iter().take(8) {
        let _ = writeln!(
            s,
            "dropped line {:#x} ({}): kept {} of {} store(s); {}",
            l.pm_offset, l.owner, l.kept, l.queued, l.missing
        );
    }
    s
}

/// `pmcrash trace image`.
fn trace_image(
    trace: &std::path::Path,
    at: u64,
    output: &std::path::Path,
    ground_truth: bool,
) -> anyhow::Result<()> {
    let sibling = |ext: &str| trace.with_extension(ext);
    let t = pmcrash::trace::read(trace)?;
    let base_path = sibling("base.img");
    let base = std::fs::read(&base_path)
        .with_context(|| format!("reading the base image {}", base_path.display()))?;
    let img = if ground_truth {
        let snaps = pmcrash::trace::read_snapshots(&sibling("snapshots"))?;
        pmcrash::trace::ground_truth_at(&base, &snaps, at)?
    } else {
        pmcrash::trace::all_persisted_at(&t.records, t.header.line_size, &base, at)
    };
    pmcrash::cache::write_atomic(output, &img)
        .with_context(|| format!("write {}", output.display()))?;
    Ok(())
}

async fn trace(g: &Global, args: TraceArgs) -> anyhow::Result<Outcome> {
    let Some(path) = args.workload else {
        anyhow::bail!("name a workload to trace, or `show TRACE` (see `pmcrash trace --help`)");
    };
    let loaded = workloads::load(std::slice::from_ref(&path))?;
    let assets = setup::ensure(&setup_options(g)?)?;
    let mut factory = GuestFactory::new(assets, args.fs);
    if let Some(m) = args.pm_size_mib {
        factory.pm_size = m << 20;
    }
    factory.smp = args.smp;
    factory.deterministic_traces = !args.no_deterministic;
    let out_dir = match args.output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&out_dir)?;
    let stem = args
        .output
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "run".into());
    let bar = pmcrash::progress::bar(1, !g.json, "trace");
    bar.set_message(format!("{} on {}-DAX", path.display(), args.fs));
    let symbols = if args.coverage {
        bar.set_message("reading the guest kernel's symbols");
        Some(pmcrash::symbols::kernel_symbols(&factory).await?)
    } else {
        None
    };
    bar.set_message(format!("{} on {}-DAX", path.display(), args.fs));
    let opts = pmcrash::trace::TraceOptions {
        snapshot_fences: args.snapshots,
        snapshot_records: args.snapshot_at.clone(),
        coverage: symbols.as_ref().map(|s| s.fs_code_ranges()),
    };
    pmcrash::programs::ship(&mut factory, &loaded[0].workload)?;
    let traced =
        pmcrash::trace::trace_workload_with(&factory, &loaded[0].workload, &out_dir, &stem, &opts)
            .await?;
    bar.finish_and_clear();
    let summary = pmcrash::trace::summarise(&traced.decoded);
    let coverage = match (&traced.coverage, &symbols) {
        (Some(b), Some(t)) => Some(pmcrash::symbols::CoverageSummary::of(b, t)),
        _ => None,
    };
    if g.json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({ "run": traced, "summary": summary, "coverage": coverage })
            )?
        );
    } else {
        print!("{summary}");
        if let Some(c) = &coverage {
            println!("{c}");
        }
        println!("trace: {}", traced.trace.display());
        println!("base image: {}", traced.base_image.display());
        println!("final image: {}", traced.final_image.display());
    }
    Ok(Outcome::Clean)
}

/// What a crash test writes besides its text or JSON on stdout.
struct Outputs<'a> {
    /// The JUnit XML report.
    junit: Option<&'a std::path::Path>,
    /// The HTML report (its path is printed).
    html: Option<&'a std::path::Path>,
    /// The demo's one-row-per-workload table instead of the full text report.
    table: bool,
    /// Save a run bundle per workload here (`run --save`).
    save: Option<&'a std::path::Path>,
}

/// `pmcrash run` with checking, and `pmcrash demo`.
async fn crash_test(
    g: &Global,
    cfg: RunConfig,
    smp: u32,
    deterministic: bool,
    loaded: Vec<workloads::Loaded>,
    out: Outputs<'_>,
    interrupt: Interrupt,
) -> anyhow::Result<Outcome> {
    let Outputs {
        junit,
        html,
        table,
        save,
    } = out;
    let assets = setup::ensure(&setup_options(g)?)?;
    let mut factory = GuestFactory::new(assets, cfg.fs);
    if let Some(s) = cfg.pm_size {
        factory.pm_size = s;
    }
    factory.smp = smp;
    factory.deterministic_traces = deterministic;
    let fail_on = cfg.fail_on.clone();
    let mut p = Pipeline::with_factory(factory, cfg)?;
    if let Some(dir) = save {
        p.save_bundles(dir);
    }
    p.set_interrupt(interrupt);
    let res = p.run(&loaded, !g.json).await;
    p.shutdown().await;
    let report = res?;
    if let Some(path) = junit {
        pmcrash::cache::write_atomic(path, report.render_junit(&fail_on).as_bytes())?;
    }
    if let Some(path) = html {
        pmcrash::cache::write_atomic(path, pmcrash::html::render(&report).as_bytes())
            .with_context(|| format!("writing the HTML report {}", path.display()))?;
    }
    if g.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for w in &report.workloads {
            println!("{} on {}-DAX: {}", w.name, w.fs, w.description);
            for o in &w.ops {
                let outcome = match o.errno {
                    Some(e) => format!(
                        "FAILED errno {e} ({})",
                        std::io::Error::from_raw_os_error(e)
                    ),
                    None => format!("ret {}", o.ret),
                };
                println!("{:>4}  {:<13} {outcome}", o.index, o.op);
            }
        }
        if table {
            print!("{}", report.render_table());
        } else {
            print!("{}", report.render_text());
        }
    }
    if let Some(path) = html {
        // stdout stays pure JSON with --json.
        let line = format!("HTML report: {}", path.display());
        if g.json {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    }
    Ok(if report.incomplete {
        Outcome::Interrupted
    } else if report.failed() {
        Outcome::Findings
    } else {
        Outcome::Clean
    })
}

/// `pmcrash run --no-check`: the ops and their results, no crash states.
async fn run_ops_only(
    g: &Global,
    fs: FsKind,
    pm_size_mib: Option<u64>,
    smp: u32,
    out: Option<PathBuf>,
    loaded: Vec<workloads::Loaded>,
) -> anyhow::Result<Outcome> {
    let assets = setup::ensure(&setup_options(g)?)?;
    let mut factory = GuestFactory::new(assets, fs);
    if let Some(m) = pm_size_mib {
        factory.pm_size = m << 20;
    }
    factory.smp = smp;
    let tmp = pmcrash::scratch::run_dir(pmcrash::scratch::RUN_PREFIX)?;
    let out_dir = out.unwrap_or_else(|| tmp.path().to_path_buf());
    std::fs::create_dir_all(&out_dir).with_context(|| format!("create {}", out_dir.display()))?;
    let bar = pmcrash::progress::bar(loaded.len() as u64, !g.json, "workloads");
    bar.set_message("preparing the guest (the first run boots one and saves its state)");
    factory.saved_state().await?;
    let mut reports = Vec::new();
    let mut failed = 0;
    for l in &loaded {
        bar.set_message(l.name.clone());
        let image = out_dir.join(format!("{}.{}.img", l.stem(), fs));
        pmcrash::programs::ship(&mut factory, &l.workload)?;
        let report = pmcrash::run::run_ops(&factory, &l.workload, &l.name, &image)
            .await
            .with_context(|| format!("running {}", l.name))?;
        failed += report.failed_ops().count();
        if !g.json {
            bar.suspend(|| {
                println!("{} on {}-DAX: {}", report.workload, fs, report.description);
                for op in &report.ops {
                    println!("{}", pmcrash::run::describe(op));
                }
                let t = &report.timings;
                println!(
                    "  image {} ms, guest ready {} ms, mount {} ms, ops {} ms, total {} ms\n",
                    t.image_ms, t.guest_ready_ms, t.mount_ms, t.ops_ms, t.total_ms
                );
            });
        }
        reports.push(report);
        bar.inc(1);
    }
    bar.finish_and_clear();
    if g.json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    } else {
        println!(
            "{} workload(s), {} op(s), {} failed",
            reports.len(),
            reports.iter().map(|r| r.ops.len()).sum::<usize>(),
            failed
        );
    }
    Ok(if failed == 0 {
        Outcome::Clean
    } else {
        Outcome::Findings
    })
}
