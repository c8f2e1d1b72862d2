//! Provisioning (`pmcrash setup`) and diagnosis (`pmcrash doctor`).
//!
//! [`ensure`] makes sure everything a run needs is on this machine and returns where it is
//! ([`Assets`]): a QEMU new enough for the tracer plugin, the file-system tools, a guest
//! kernel (Debian's `linux-image-6.12.*-amd64-unsigned`, downloaded but never installed on
//! the host, or the user's own), and one initramfs per file system holding the guest agent
//! and exactly the modules that file system needs (an ext4 run must not pay 2.5 s of TCG
//! time loading xfs).
//!
//! # The cache
//!
//! Everything lives under [`SetupOptions::cache_dir`], content-addressed, written
//! atomically and guarded by an advisory lock so concurrent `ensure` calls do not
//! duplicate work; the layout is in [`crate::cache`].
//!
//! A warm `ensure` reads `state.json`, stats the recorded inputs and outputs, hashes the
//! embedded agent (a few MB) and returns: no process is run, no module decompressed.
//!
//! # Pinning
//!
//! The Debian kernel package is resolved once (apt-cache takes ~1.5 s, and needs fresh apt
//! lists) and then pinned in `kernel-pin.json`: later runs use the same kernel until
//! [`refresh_kernel`] drops the pin. A kernel that changes by itself would silently
//! invalidate saved VM states and make results incomparable between runs, and offline
//! operation on a warm cache must work; both argue against a time-to-live.

mod doctor;
pub mod fsck_tools;
pub mod host_tools;
pub mod initramfs;
pub mod kconfig;
pub mod kernel;
pub mod modules;
pub mod shell_initramfs;

pub use crash_models::ops::FsKind;
pub use doctor::{DoctorReport, Probe, ProbeStatus};
pub use kernel::refresh_kernel;
use kernel::{byo_kernel, debian_kernel, KernelRecord};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The guest agent, a static x86-64 ELF built by `harness/build.rs`; it becomes `/init`.
pub const AGENT_ELF: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/pmcrash-agent"));

/// What [`ensure`] and [`doctor`] work with.
#[derive(Debug, Clone)]
pub struct SetupOptions {
    /// Where downloads and built assets live: `$PMCRASH_CACHE` or `~/.cache/pmcrash`
    /// ([`SetupOptions::default_cache_dir`]).
    pub cache_dir: PathBuf,
    /// A bring-your-own kernel image (bzImage or an ELF vmlinux with a PVH note) instead of
    /// Debian's package.
    pub kernel: Option<PathBuf>,
    /// With `kernel`: that build's `lib/modules/<release>` directory. Without it the kernel
    /// must have NVDIMM, DAX and the file systems built in.
    pub modules: Option<PathBuf>,
    /// Allowed to `apt-get install` missing host tools (when root and apt exists).
    pub install: bool,
    /// Show progress spinners on stderr.
    pub progress: bool,
}

impl SetupOptions {
    /// Use a kernel build tree: its `arch/x86/boot/bzImage` (or, without one, its
    /// `vmlinux`), its `.config` (checked before any boot), and its modules: those
    /// `make modules_install INSTALL_MOD_PATH=DIR` put in `DIR/lib/modules/<release>`,
    /// else the tree's own `.ko` files (with its `modules.builtin`).
    ///
    /// ```no_run
    /// use pmcrash::setup::SetupOptions;
    /// let opts = SetupOptions::default().with_kernel_tree("/src/linux".as_ref())?;
    /// assert!(opts.kernel.is_some());
    /// # Ok::<(), pmcrash::setup::SetupError>(())
    /// ```
    pub fn with_kernel_tree(mut self, dir: &Path) -> Result<SetupOptions, SetupError> {
        let (kernel, modules) = kernel_tree_files(dir)?;
        self.kernel = Some(kernel);
        self.modules = modules;
        Ok(self)
    }

    /// `$PMCRASH_CACHE`, else `$XDG_CACHE_HOME/pmcrash`, else `~/.cache/pmcrash`.
    pub fn default_cache_dir() -> PathBuf {
        if let Some(d) = std::env::var_os("PMCRASH_CACHE").filter(|d| !d.is_empty()) {
            return PathBuf::from(d);
        }
        if let Some(d) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
            return PathBuf::from(d).join("pmcrash");
        }
        let home = std::env::var_os("HOME")
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "/root".into());
        PathBuf::from(home).join(".cache").join("pmcrash")
    }
}

impl Default for SetupOptions {
    fn default() -> Self {
        SetupOptions {
            cache_dir: SetupOptions::default_cache_dir(),
            kernel: None,
            modules: None,
            install: false,
            progress: false,
        }
    }
}

/// Everything a run needs, on this machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assets {
    /// `qemu-system-x86_64` (>= 10.0, with TCG plugin support).
    pub qemu: PathBuf,
    /// Its version, e.g. `10.0.2`.
    pub qemu_version: String,
    /// The image to pass to `-kernel`: the uncompressed vmlinux (ELF with the PVH note)
    /// when it could be extracted, else the bzImage.
    pub kernel: PathBuf,
    /// The kernel release, e.g. `6.12.117+deb12-amd64`.
    pub kernel_release: String,
    /// One initramfs per file system, each loading only the modules that one needs.
    pub initramfs: BTreeMap<FsKind, PathBuf>,
    /// A short content hash of (QEMU version, kernel, initramfs set): a key for saved VM
    /// states, which are valid only for exactly these.
    pub id: String,
    /// The cache directory these live in.
    pub cache_dir: PathBuf,
}

/// Why provisioning failed; each message says what to do next.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// Host tools are missing or too old and this process may not or cannot install them.
    #[error(
        "{problems}\nto fix, run as root:\n{commands}\nthen run `pmcrash setup` again (as root it installs these itself unless told not to)"
    )]
    HostTools {
        /// What is wrong, one line per problem.
        problems: String,
        /// The shell commands that fix it.
        commands: String,
    },
    /// Installing worked but the tools are still not usable (e.g. not a Debian system).
    #[error("{problems}\nafter installing, this is still wrong; install QEMU >= 10.0 with plugin support and the e2fsprogs/xfsprogs tools by hand")]
    StillMissing {
        /// What is still wrong.
        problems: String,
    },
    /// A command failed.
    #[error("`{command}` failed ({status}){}", if output.is_empty() { String::new() } else { format!(":\n{output}") })]
    CommandFailed {
        /// The command line.
        command: String,
        /// Its exit status or spawn error.
        status: String,
        /// The last lines it printed.
        output: String,
    },
    /// apt knows no suitable kernel package.
    #[error("apt knows no package matching {pattern}; run `apt-get update` as root, check that a Debian 12+ main suite is in the apt sources, or pass your own kernel with --kernel", pattern = kernel::PACKAGE_PATTERN)]
    NoKernelPackage,
    /// A needed module is neither a file nor built in.
    #[error("kernel module `{name}` is neither a module file under {} nor listed as built in (modules.builtin); build it (=m or =y) or point --modules at the right lib/modules/<release> directory", dir.display())]
    ModuleNotFound {
        /// The module.
        name: String,
        /// The module tree searched.
        dir: PathBuf,
    },
    /// The module dependencies form a cycle.
    #[error("kernel modules depend on each other in a cycle: {cycle}")]
    ModuleCycle {
        /// The cycle, `a -> b -> a`.
        cycle: String,
    },
    /// A module file could not be read or parsed.
    #[error("kernel module {}: {reason}", path.display())]
    BadModule {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A kernel image is unusable.
    #[error("kernel image {}: {reason}", path.display())]
    BadKernel {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A file-system checker for the guests is unusable.
    #[error("{}: {reason}", path.display())]
    FsckTool {
        /// The file.
        path: PathBuf,
        /// What is wrong with it, and what to do.
        reason: String,
    },
    /// A cache file could not be written, renamed or locked.
    #[error(transparent)]
    File(#[from] crate::cache::FileError),
    /// A file-system error.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The options contradict each other.
    #[error("invalid setup options: {0}")]
    InvalidOptions(String),
    /// The kernel's configuration lacks what the guest needs (found before any boot).
    #[error("the kernel's configuration ({}) lacks what the pmcrash guest needs:\n{}\nset these (e.g. `scripts/config --enable FS_DAX` in the tree, then `make olddefconfig`), rebuild the kernel and its modules, and run again", config.display(), kconfig::render(unmet))]
    KernelConfig {
        /// The `.config` read.
        config: PathBuf,
        /// Every option missing or wrong, with the value it needs.
        unmet: Vec<kconfig::Unmet>,
    },
    /// A kernel build tree lacks a file pmcrash needs.
    #[error("kernel tree {}: {reason}", dir.display())]
    KernelTree {
        /// The tree.
        dir: PathBuf,
        /// What is missing, and what to do.
        reason: String,
    },
}

impl SetupError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> SetupError {
        SetupError::Io {
            path: path.into(),
            source,
        }
    }

    /// The process exit code the CLI should use: 2 when the user must act first (install
    /// tools, fix options), 1 for other failures.
    pub fn exit_code(&self) -> i32 {
        match self {
            SetupError::HostTools { .. }
            | SetupError::StillMissing { .. }
            | SetupError::InvalidOptions(_)
            | SetupError::KernelConfig { .. }
            | SetupError::KernelTree { .. } => 2,
            _ => 1,
        }
    }
}

pub(crate) use crate::cache::{read_json, FileStamp};

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), SetupError> {
    Ok(crate::cache::write_json(path, value)?)
}

/// The setup lock of a cache directory, released on drop.
struct CacheLock(#[allow(dead_code)] crate::cache::Lock);

impl CacheLock {
    fn take(cache: &Path) -> Result<CacheLock, SetupError> {
        Ok(CacheLock(crate::cache::Lock::take(
            &crate::cache::setup_lock_path(cache),
        )?))
    }
}

/// Progress display on stderr (hidden unless asked for).
struct Ui(ProgressBar);

impl Ui {
    fn new(show: bool) -> Ui {
        let pb = ProgressBar::new_spinner();
        if show {
            pb.set_draw_target(ProgressDrawTarget::stderr());
            pb.set_style(
                ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
                    .expect("static template is valid"),
            );
            pb.enable_steady_tick(Duration::from_millis(120));
        } else {
            pb.set_draw_target(ProgressDrawTarget::hidden());
        }
        Ui(pb)
    }

    fn step(&self, msg: impl Into<String>) {
        self.0.reset_elapsed();
        self.0.set_message(msg.into());
    }

    fn done(&self, msg: impl Into<String>) {
        self.0.println(format!("  {}", msg.into()));
    }
}

impl Drop for Ui {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}

/// The image and module directory of a kernel build tree (see
/// [`SetupOptions::with_kernel_tree`]).
fn kernel_tree_files(dir: &Path) -> Result<(PathBuf, Option<PathBuf>), SetupError> {
    let bad = |reason: String| SetupError::KernelTree {
        dir: dir.to_path_buf(),
        reason,
    };
    if !dir.is_dir() {
        return Err(bad("not a directory".into()));
    }
    if !dir.join(".config").is_file() {
        return Err(bad(
            "no .config: configure and build the kernel first (`make olddefconfig && make`)".into(),
        ));
    }
    let image = [dir.join("arch/x86/boot/bzImage"), dir.join("vmlinux")]
        .into_iter()
        .find(|p| p.is_file())
        .ok_or_else(|| {
            bad("neither arch/x86/boot/bzImage nor vmlinux: build the kernel first (`make -j$(nproc)`)".into())
        })?;
    let release = std::fs::read_to_string(dir.join("include/config/kernel.release"))
        .ok()
        .map(|r| r.trim().to_owned());
    let installed = release
        .as_ref()
        .map(|r| dir.join("lib/modules").join(r))
        .filter(|p| p.is_dir());
    let modules = match installed {
        Some(m) => Some(m),
        // Straight from the tree: its .ko files and modules.builtin.
        None if dir.join("modules.builtin").is_file() => Some(dir.to_path_buf()),
        None => None,
    };
    Ok((image, modules))
}

/// The `.config` of the kernel `opts` select, if one can be found.
fn config_of(opts: &SetupOptions, record: &KernelRecord) -> Option<PathBuf> {
    match &opts.kernel {
        Some(k) => kconfig::find_config(k),
        // Debian's package: `boot/config-<release>` in the unpacked tree.
        None => record.image.parent().map(|d| {
            d.join("tree/boot")
                .join(format!("config-{}", record.release))
        }),
    }
}

/// How the kernel `opts` select boots: an ELF image given by the user needs PVH; a
/// kernel without a module directory needs everything built in.
fn boot_of(opts: &SetupOptions, record: &KernelRecord) -> kconfig::Boot {
    kconfig::Boot {
        vmlinux: opts.kernel.as_deref().is_some_and(kconfig::is_elf),
        modules: match &opts.kernel {
            Some(_) => opts.modules.is_some(),
            None => record.modules_dir.is_some(),
        },
    }
}

/// Checks the selected kernel's configuration (before any boot). `Ok(None)`: no
/// configuration was found, so nothing could be checked.
fn check_config(opts: &SetupOptions, record: &KernelRecord) -> Result<Option<PathBuf>, SetupError> {
    let Some(config) = config_of(opts, record).filter(|c| c.is_file()) else {
        // A kernel built with CONFIG_IKCONFIG carries its configuration.
        let embedded = kconfig::is_elf(&record.image)
            .then(|| std::fs::read(&record.image).ok())
            .flatten()
            .and_then(|image| kconfig::embedded_config(&image));
        let Some(cfg) = embedded else {
            return Ok(None);
        };
        let unmet = kconfig::check(&cfg, boot_of(opts, record));
        if unmet.is_empty() {
            return Ok(Some(record.image.clone()));
        }
        return Err(SetupError::KernelConfig {
            config: record.image.clone(),
            unmet,
        });
    };
    kconfig::ensure_config(&config, boot_of(opts, record))?;
    Ok(Some(config))
}

fn agent_hash() -> &'static blake3::Hash {
    static H: OnceLock<blake3::Hash> = OnceLock::new();
    H.get_or_init(|| blake3::hash(AGENT_ELF))
}

// ---------------------------------------------------------------------------------------
// Host tools

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct QemuRecord {
    stamp: FileStamp,
    version: String,
}

/// Makes sure QEMU and the tools are present, installing them if allowed; returns QEMU.
fn ensure_host_tools(opts: &SetupOptions, ui: &Ui) -> Result<(PathBuf, String), SetupError> {
    let record_path = crate::cache::qemu_record_path(&opts.cache_dir);
    let tools_ok = || {
        host_tools::TOOLS
            .iter()
            .all(|(t, _)| host_tools::present(t))
    };
    // Fast path: the same QEMU binary as last time, and every tool still on the PATH.
    if let Some(qemu) = host_tools::which("qemu-system-x86_64") {
        if let Some(rec) = read_json::<QemuRecord>(&record_path) {
            if rec.stamp.path == qemu && rec.stamp.still_valid() && tools_ok() {
                return Ok((qemu, rec.version));
            }
        }
    }
    ui.step("checking host tools");
    let mut facts = host_tools::host_facts();
    let plan = host_tools::install_plan(&facts);
    if !plan.is_empty() {
        let problems = describe_problems(&facts);
        let apt = host_tools::which("apt-get").is_some();
        if !opts.install || !facts.root || !apt {
            return Err(SetupError::HostTools {
                problems,
                commands: host_tools::render_plan(&plan),
            });
        }
        host_tools::apply_plan(&plan, |s| ui.step(format!("running: {s}")))?;
        ui.done("installed missing host tools");
        facts = host_tools::host_facts();
        if !host_tools::install_plan(&facts).is_empty() {
            return Err(SetupError::StillMissing {
                problems: describe_problems(&facts),
            });
        }
    }
    match facts.qemu {
        host_tools::QemuStatus::Ok { path, version } => {
            if let Some(stamp) = FileStamp::of(&path) {
                write_json(
                    &record_path,
                    &QemuRecord {
                        stamp,
                        version: version.clone(),
                    },
                )?;
            }
            Ok((path, version))
        }
        _ => unreachable!("an empty install plan means QEMU is usable"),
    }
}

fn describe_problems(facts: &host_tools::HostFacts) -> String {
    use host_tools::QemuStatus::*;
    let mut lines = Vec::new();
    match &facts.qemu {
        Missing => lines.push("qemu-system-x86_64 is not installed".to_string()),
        TooOld { version, .. } => lines.push(format!(
            "qemu-system-x86_64 is {version}; pmcrash needs >= {}.{} (plugin API with store values)",
            host_tools::MIN_QEMU.0,
            host_tools::MIN_QEMU.1
        )),
        NoPlugins { path, version } => lines.push(format!(
            "{} ({version}) was built without TCG plugin support",
            path.display()
        )),
        Ok { .. } => {}
    }
    for t in &facts.missing_tools {
        lines.push(format!("{t} is not installed"));
    }
    lines.join("\n")
}

// ---------------------------------------------------------------------------------------
// State

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct State {
    /// Finished results by key (agent hash + kernel descriptor).
    entries: BTreeMap<String, StateEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StateEntry {
    created_unix: u64,
    /// The files the result was derived from; any change invalidates it.
    inputs: Vec<FileStamp>,
    kernel: KernelRecord,
    initramfs: BTreeMap<FsKind, PathBuf>,
    initramfs_hashes: BTreeMap<FsKind, String>,
}

/// At most this many results are remembered (one per agent build and kernel).
const MAX_STATE_ENTRIES: usize = 16;

fn state_key(kernel_descriptor: &str) -> String {
    let mut h = blake3::Hasher::new();
    // Bumped when what goes into an initramfs besides the agent and modules changes.
    h.update(b"initramfs-with-fsck-1\0");
    h.update(agent_hash().as_bytes());
    h.update(kernel_descriptor.as_bytes());
    h.finalize().to_hex()[..32].to_string()
}

fn assets_id(
    qemu_version: &str,
    kernel_hash: &str,
    initramfs: &BTreeMap<FsKind, String>,
) -> String {
    let mut h = blake3::Hasher::new();
    h.update(qemu_version.as_bytes());
    h.update(b"\0");
    h.update(kernel_hash.as_bytes());
    for (fs, hash) in initramfs {
        h.update(fs.name().as_bytes());
        h.update(hash.as_bytes());
    }
    h.finalize().to_hex()[..16].to_string()
}

impl StateEntry {
    fn valid(&self) -> bool {
        self.inputs.iter().all(FileStamp::still_valid)
            && self.kernel.image.is_file()
            && FsKind::ALL
                .iter()
                .all(|fs| self.initramfs.get(fs).is_some_and(|p| p.is_file()))
    }

    fn assets(&self, qemu: PathBuf, qemu_version: String, cache_dir: &Path) -> Assets {
        Assets {
            id: assets_id(
                &qemu_version,
                &self.kernel.image_hash,
                &self.initramfs_hashes,
            ),
            qemu,
            qemu_version,
            kernel: self.kernel.image.clone(),
            kernel_release: self.kernel.release.clone(),
            initramfs: self.initramfs.clone(),
            cache_dir: cache_dir.to_path_buf(),
        }
    }
}

/// Builds (or finds) one initramfs per file system.
/// The initramfs files of one kernel and agent.
struct BuiltInitramfs {
    paths: BTreeMap<FsKind, PathBuf>,
    hashes: BTreeMap<FsKind, String>,
    /// The module files they were built from.
    inputs: Vec<FileStamp>,
}

fn build_initramfs(
    cache: &Path,
    kernel: &KernelRecord,
    ui: &Ui,
) -> Result<BuiltInitramfs, SetupError> {
    let tree = match &kernel.modules_dir {
        Some(dir) => {
            ui.step(format!("indexing modules in {}", dir.display()));
            Some(modules::ModuleTree::scan(dir)?)
        }
        None => None,
    };
    let mut paths = BTreeMap::new();
    let mut hashes = BTreeMap::new();
    let mut inputs = Vec::new();
    for fs in FsKind::ALL {
        ui.step(format!("collecting the {fs} checker for the guest"));
        let tools = match fs {
            FsKind::Ext4 => fsck_tools::e2fsck(cache, ui)?,
            FsKind::Xfs => fsck_tools::xfs_repair()?,
        };
        inputs.extend(tools.inputs);
        ui.step(format!("building the {fs} initramfs"));
        let resolution = match &tree {
            Some(t) => {
                let r = modules::resolve_tree(t, modules::roots(fs))?;
                for m in &r.order {
                    inputs.extend(t.files.get(&m.name).and_then(|p| FileStamp::of(p)));
                }
                r
            }
            // A kernel without a module tree must have everything built in.
            None => modules::Resolution::default(),
        };
        let archive = initramfs::build(AGENT_ELF, &resolution.order, &tools.files)
            .map_err(|e| SetupError::io(cache, e))?;
        let hash = blake3::hash(&archive).to_hex().to_string();
        let path = crate::cache::initramfs_dir(cache).join(format!("{}.cpio", &hash[..32]));
        if !path.is_file() {
            crate::cache::write_atomic(&path, &archive)?;
        }
        ui.done(format!(
            "{fs} initramfs: {} modules ({})",
            resolution.order.len(),
            resolution
                .order
                .iter()
                .map(|m| m.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
        paths.insert(fs, path);
        hashes.insert(fs, hash);
    }
    Ok(BuiltInitramfs {
        paths,
        hashes,
        inputs,
    })
}

/// Makes sure everything a run needs is present, downloading and building what is not,
/// and returns where it is. Idempotent; on a warm cache it runs no process and decompresses
/// nothing (a few milliseconds).
pub fn ensure(opts: &SetupOptions) -> Result<Assets, SetupError> {
    if opts.modules.is_some() && opts.kernel.is_none() {
        return Err(SetupError::InvalidOptions(
            "--modules needs --kernel (the modules must come from the same build)".into(),
        ));
    }
    let cache = &opts.cache_dir;
    let _lock = CacheLock::take(cache)?;
    let ui = Ui::new(opts.progress);
    let (qemu, qemu_version) = ensure_host_tools(opts, &ui)?;

    let source = match &opts.kernel {
        Some(k) => byo_kernel(cache, k, opts.modules.as_deref(), &ui)?,
        None => debian_kernel(cache, &ui)?,
    };
    // Before any boot: a kernel without what the guest needs fails here, by name.
    if check_config(opts, &source.record)?.is_none() {
        ui.done("no kernel .config found beside the image: its options were not checked");
    }
    let key = state_key(&source.descriptor);
    let state_path = crate::cache::setup_state_path(cache);
    let mut state: State = read_json(&state_path).unwrap_or_default();
    if let Some(entry) = state.entries.get(&key) {
        if entry.valid() {
            return Ok(entry.assets(qemu, qemu_version, cache));
        }
    }

    let BuiltInitramfs {
        paths: initramfs,
        hashes: initramfs_hashes,
        inputs: module_inputs,
    } = build_initramfs(cache, &source.record, &ui)?;
    let mut inputs = source.inputs;
    inputs.extend(module_inputs);
    let entry = StateEntry {
        created_unix: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        inputs,
        kernel: source.record,
        initramfs,
        initramfs_hashes,
    };
    let assets = entry.assets(qemu, qemu_version, cache);
    state.entries.insert(key, entry);
    while state.entries.len() > MAX_STATE_ENTRIES {
        let oldest = state
            .entries
            .iter()
            .min_by_key(|(_, e)| e.created_unix)
            .map(|(k, _)| k.clone())
            .expect("non-empty");
        state.entries.remove(&oldest);
    }
    write_json(&state_path, &state)?;
    Ok(assets)
}

/// Reports what is present and what is missing, with the command that fixes each; changes
/// nothing.
pub fn doctor(opts: &SetupOptions) -> DoctorReport {
    doctor::run(opts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_is_a_static_elf() {
        assert!(
            AGENT_ELF.starts_with(b"\x7fELF"),
            "AGENT_ELF is not an ELF file"
        );
        let elf = object::read::elf::ElfFile64::<object::Endianness>::parse(AGENT_ELF).unwrap();
        use object::read::elf::ProgramHeader;
        let interp = elf
            .elf_program_headers()
            .iter()
            .any(|ph| ph.p_type(elf.endian()) == object::elf::PT_INTERP);
        assert!(!interp, "the agent must be static (no PT_INTERP)");
    }

    #[test]
    fn default_cache_dir_honours_env() {
        // Only inspects the result's shape: the environment is shared by parallel tests.
        let d = SetupOptions::default_cache_dir();
        assert!(d.ends_with("pmcrash") || std::env::var_os("PMCRASH_CACHE").is_some());
    }

    #[test]
    fn host_tools_error_prints_the_commands() {
        let facts = host_tools::HostFacts {
            qemu: host_tools::QemuStatus::TooOld {
                path: "/usr/bin/qemu-system-x86_64".into(),
                version: "7.2.15".into(),
            },
            missing_tools: vec!["mkfs.xfs".into()],
            os_id: Some("debian".into()),
            codename: Some("bookworm".into()),
            backports_configured: false,
            root: false,
        };
        let e = SetupError::HostTools {
            problems: describe_problems(&facts),
            commands: host_tools::render_plan(&host_tools::install_plan(&facts)),
        };
        let text = e.to_string();
        assert!(
            text.contains("qemu-system-x86_64 is 7.2.15; pmcrash needs >= 10.0"),
            "{text}"
        );
        assert!(text.contains("mkfs.xfs is not installed"), "{text}");
        assert!(
            text.contains("apt-get install -y -t bookworm-backports qemu-system-x86"),
            "{text}"
        );
        assert!(text.contains("apt-get install -y xfsprogs"), "{text}");
        assert_eq!(e.exit_code(), 2);
    }

    #[test]
    fn modules_without_kernel_is_invalid() {
        let opts = SetupOptions {
            cache_dir: tempfile::tempdir().unwrap().path().to_path_buf(),
            kernel: None,
            modules: Some("/lib/modules/x".into()),
            install: false,
            progress: false,
        };
        let e = ensure(&opts).unwrap_err();
        assert_eq!(e.exit_code(), 2);
    }

    #[test]
    fn byo_bzimage_without_modules() {
        // A fake bzImage with no extractable vmlinux: ensure falls back to booting it as it
        // is, builds module-less initramfs files, and a second call is served from the state.
        if !host_tools::install_plan(&host_tools::host_facts()).is_empty() {
            eprintln!("skipped: host tools missing (ensure_for_real installs them)");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let mut bz = vec![0u8; 5 * 512];
        bz[0x1f1] = 4;
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        bz[0x20e..0x210].copy_from_slice(&0x100u16.to_le_bytes());
        bz[0x300..0x30c].copy_from_slice(b"6.1.0-fake \0");
        let k = dir.path().join("bzImage");
        std::fs::write(&k, &bz).unwrap();
        let opts = SetupOptions {
            cache_dir: dir.path().join("cache"),
            kernel: Some(k.clone()),
            modules: None,
            install: false,
            progress: false,
        };
        let a = ensure(&opts).unwrap();
        assert_eq!(a.kernel, std::fs::canonicalize(&k).unwrap());
        assert_eq!(a.kernel_release, "6.1.0-fake");
        assert_eq!(a.initramfs.len(), 2);
        let b = ensure(&opts).unwrap();
        assert_eq!(a, b);
    }

    /// Provisions for real with the default cache (downloads ~100 MB on a fresh machine,
    /// installs QEMU and the tools when run as root on Debian).
    #[test]
    fn ensure_for_real() {
        let opts = SetupOptions {
            install: true,
            progress: true,
            ..SetupOptions::default()
        };
        let t = std::time::Instant::now();
        let a = ensure(&opts).unwrap_or_else(|e| panic!("pmcrash setup failed: {e}"));
        eprintln!("first ensure: {:?}", t.elapsed());
        assert!(a.kernel.is_file());
        assert!(
            a.kernel_release.starts_with("6.12."),
            "{}",
            a.kernel_release
        );
        let mut warm: Vec<Duration> = (0..5)
            .map(|_| {
                let t = std::time::Instant::now();
                let b = ensure(&opts).unwrap();
                assert_eq!(a, b);
                t.elapsed()
            })
            .collect();
        warm.sort();
        eprintln!("warm ensure: median {:?} (all {warm:?})", warm[2]);
        assert!(
            warm[2] < Duration::from_secs(1),
            "warm ensure took {:?}",
            warm[2]
        );
        // The PVH vmlinux is extracted from Debian's kernel.
        assert!(kernel::has_pvh_note(&std::fs::read(&a.kernel).unwrap()));
        let report = doctor(&opts);
        eprintln!("{report}");
        assert!(report.ok, "{report}");

        // The same kernel brought as the user's own build gives byte-identical initramfs
        // files (same agent, same modules, same order) and the same extracted vmlinux.
        let tree = a.kernel.parent().unwrap().join("tree");
        let bz = std::fs::read_dir(tree.join("boot"))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| p.to_string_lossy().contains("vmlinuz-"))
            .unwrap();
        let byo_cache = tempfile::tempdir().unwrap();
        let byo = SetupOptions {
            cache_dir: byo_cache.path().to_path_buf(),
            kernel: Some(bz),
            modules: Some(tree.join("lib/modules").join(&a.kernel_release)),
            install: false,
            progress: false,
        };
        let b = ensure(&byo).unwrap();
        assert_eq!(b.kernel_release, a.kernel_release);
        assert_eq!(b.id, a.id);
        for fs in FsKind::ALL {
            assert_eq!(
                std::fs::read(&a.initramfs[&fs]).unwrap(),
                std::fs::read(&b.initramfs[&fs]).unwrap()
            );
        }
        assert!(doctor(&byo).ok);
    }
}
