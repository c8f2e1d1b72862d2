//! One QEMU guest: start (cold or by restoring a saved state), talk to its agent,
//! save its state, end it.
//!
//! Every QEMU is started with `PR_SET_PDEATHSIG = SIGKILL` and registered in a
//! process-wide table, so it ends with the harness whatever way the harness ends
//! (Ctrl-C, a panic, `kill -9`), and a [`Vm`] kills its QEMU when dropped. Every wait
//! has a timeout; a guest that panics (`panic=-1 -no-reboot` makes QEMU exit) or hangs
//! becomes a [`VmError`] carrying the console's last lines.

use crash_models::protocol::{self, AgentMsg, HostMsg, MAX_LINE_BYTES};
use qapi::qmp;
use std::collections::BTreeSet;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;

/// Guest-physical address where QEMU puts the first NVDIMM with `-m 512M`.
pub const PM_GUEST_PHYS_BASE: u64 = 0x1_0000_0000;
/// Guest RAM.
pub const GUEST_RAM_MIB: u64 = 512;

/// A TCG plugin to load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginSpec {
    /// The plugin's shared object.
    pub path: PathBuf,
    /// `key=value` arguments.
    pub args: Vec<(String, String)>,
}

/// What to boot.
#[derive(Debug, Clone)]
pub struct VmSpec {
    /// `qemu-system-x86_64`.
    pub qemu: PathBuf,
    /// Kernel image for `-kernel`.
    pub kernel: PathBuf,
    /// Initramfs for `-initrd`.
    pub initramfs: PathBuf,
    /// The NVDIMM's backing file.
    pub pm_image: PathBuf,
    /// Its size (the file must be exactly this long).
    pub pm_size: u64,
    /// vCPUs. More than one runs TCG single-threaded so a trace is one total order.
    pub smp: u32,
    /// A TCG plugin (the tracer).
    pub plugin: Option<PluginSpec>,
    /// Extra kernel command-line words.
    pub extra_cmdline: Vec<String>,
    /// Reproducible execution: `-icount` (virtual time counts instructions, idle time
    /// jumps to the next timer), a seeded guest RNG and a virtual-time RTC, with the
    /// agent told so on the kernel command line. A saved state fits only a QEMU of the
    /// same mode.
    pub deterministic: bool,
    /// Requests the agent runs by itself after a restore, with no host input (read
    /// from `fw_cfg`; see [`Vm::request`]). Needs `deterministic`.
    pub script: Vec<HostMsg>,
    /// Users' programs for `exec` ops and checkers: a `crash_models::programs` bundle
    /// the guest reads from `fw_cfg` on first use.
    pub programs: Option<PathBuf>,
}

/// `-icount` for [`VmSpec::deterministic`]: one instruction is one nanosecond of
/// virtual time (a fixed shift: `auto` adapts to host speed, which is not
/// reproducible), and an idle guest does not wait for the host's clock.
pub const ICOUNT: &str = "shift=0,sleep=off";

/// The kernel command-line word that tells the agent it runs deterministically (it
/// then waits for a script instead of blocking on the serial port).
pub const DETERMINISTIC_CMDLINE: &str = "pmcrash.det=1";

/// The `fw_cfg` file holding a [`VmSpec::script`], one request per line.
pub const SCRIPT_FW_CFG: &str = "opt/pmcrash/script";

/// How to start.
#[derive(Debug, Clone)]
pub enum Start {
    /// Boot the kernel.
    Cold,
    /// Restore a state saved by [`Vm::save_state`] with the same spec shape.
    Restore(PathBuf),
}

/// How long to wait for things. Generous by default: TCG on a loaded 2-core machine
/// is slow, and a timeout is only there to turn a hang into an error.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// Cold boot to agent ready.
    pub boot: Duration,
    /// Restore to agent answering.
    pub restore: Duration,
    /// One request (a whole `run` counts as one).
    pub request: Duration,
    /// Saving the VM state.
    pub save: Duration,
    /// Power-off to QEMU exit.
    pub shutdown: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            boot: Duration::from_secs(180),
            restore: Duration::from_secs(60),
            request: Duration::from_secs(300),
            save: Duration::from_secs(120),
            shutdown: Duration::from_secs(30),
        }
    }
}

/// What went wrong with a guest.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// QEMU could not be started.
    #[error("cannot start {qemu}: {source} (run `pmcrash doctor`)")]
    Spawn {
        /// The binary.
        qemu: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The guest kernel panicked.
    #[error("the guest kernel panicked during {during}; console tail:\n{console}")]
    GuestPanic {
        /// What the harness was doing.
        during: String,
        /// The console's last lines.
        console: String,
    },
    /// QEMU exited without a panic being logged.
    #[error("QEMU exited unexpectedly ({status}) during {during}; console tail:\n{console}")]
    Exited {
        /// What the harness was doing.
        during: String,
        /// The exit status.
        status: String,
        /// The console's last lines.
        console: String,
    },
    /// The guest did not answer in time (QEMU has been killed).
    #[error("the guest did not answer within {secs:.0} s during {during} (QEMU killed); console tail:\n{console}")]
    Timeout {
        /// What the harness was doing.
        during: String,
        /// The timeout.
        secs: f64,
        /// The console's last lines.
        console: String,
    },
    /// The agent answered with an error.
    #[error("the guest agent reports an error during {during}: {message}")]
    Agent {
        /// What the harness was doing.
        during: String,
        /// The agent's message.
        message: String,
    },
    /// The agent said something that makes no sense here.
    #[error("protocol error during {during}: {message}")]
    Protocol {
        /// What the harness was doing.
        during: String,
        /// What was wrong.
        message: String,
    },
    /// QMP failed.
    #[error("QMP {command} failed: {message}")]
    Qmp {
        /// The command.
        command: String,
        /// The error.
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

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> VmError {
    let what = what.into();
    move |source| VmError::Io { what, source }
}

/// PIDs of every QEMU this process started and has not reaped.
static LIVE_QEMUS: Mutex<BTreeSet<u32>> = Mutex::new(BTreeSet::new());

/// Kill every QEMU this process started (for the Ctrl-C handler).
pub fn kill_all_guests() {
    let pids = LIVE_QEMUS.lock().map(|s| s.clone()).unwrap_or_default();
    for pid in pids {
        crate::sys::kill_process(pid);
    }
}

/// How many QEMUs this process has running (tests assert none are left behind).
pub fn live_guest_count() -> usize {
    LIVE_QEMUS.lock().map(|s| s.len()).unwrap_or(0)
}

/// The shape of the machine: everything that must be equal between a saved state and
/// the QEMU that restores it.
fn machine_args(spec: &VmSpec) -> Vec<String> {
    // Room for RAM and the NVDIMM, in whole GiB, plus a spare GiB.
    let maxmem_mib = (GUEST_RAM_MIB + spec.pm_size.div_ceil(1 << 20)).div_ceil(1024) * 1024 + 1024;
    let mut accel = "tcg".to_owned();
    if spec.smp > 1 && !spec.deterministic {
        accel.push_str(",thread=single");
    }
    let mut args: Vec<String> = vec![
        "-M".into(),
        "pc,nvdimm=on".into(),
        "-accel".into(),
        accel,
        "-cpu".into(),
        "max".into(),
        "-smp".into(),
        spec.smp.max(1).to_string(),
        "-m".into(),
        format!("{GUEST_RAM_MIB}M,slots=2,maxmem={maxmem_mib}M"),
        "-object".into(),
        format!(
            "memory-backend-file,id=pm,share=on,mem-path={},size={}",
            spec.pm_image.display(),
            spec.pm_size
        ),
        "-device".into(),
        "nvdimm,memdev=pm,id=nv0".into(),
        "-nodefaults".into(),
        "-nographic".into(),
        "-no-reboot".into(),
        "-nic".into(),
        "none".into(),
    ];
    if spec.deterministic {
        // -icount runs the vCPUs round-robin in one thread (no MTTCG), so the order
        // of events depends on instructions executed only.
        args.extend([
            "-icount".into(),
            ICOUNT.into(),
            "-rtc".into(),
            "base=2025-01-01T00:00:00,clock=vm".into(),
            "-seed".into(),
            "1".into(),
        ]);
    }
    args
}

/// The machine, the kernel, the initramfs and the kernel command line of a guest of
/// `spec`.
fn boot_args(spec: &VmSpec) -> Vec<String> {
    let mut args = machine_args(spec);
    args.extend([
        "-kernel".into(),
        spec.kernel.display().to_string(),
        "-initrd".into(),
        spec.initramfs.display().to_string(),
        "-append".into(),
        kernel_cmdline(spec).join(" "),
    ]);
    args
}

/// The kernel command line of a guest of `spec`.
fn kernel_cmdline(spec: &VmSpec) -> Vec<String> {
    let mut cmdline = vec![
        "console=ttyS0".to_owned(),
        "panic=-1".into(),
        "oops=panic".into(),
        "loglevel=5".into(),
        "rdinit=/init".into(),
        // The NVDIMM is the only PM; keep the kernel's hands off the rest.
        "nokaslr".into(),
        "mitigations=off".into(),
    ];
    cmdline.extend(spec.extra_cmdline.iter().cloned());
    if spec.deterministic {
        cmdline.push(DETERMINISTIC_CMDLINE.into());
    }
    cmdline
}

/// The QEMU command line that boots `spec` for a person: the same machine, NVDIMM,
/// kernel, initramfs and kernel command line as pmcrash's guests, the console on the
/// terminal, and no agent channel or QMP socket (`pmcrash export` prints it).
pub fn interactive_command(spec: &VmSpec) -> String {
    let mut args = boot_args(spec);
    args.extend(["-serial".into(), "mon:stdio".into()]);
    shell_words(&spec.qemu, &args).trim_end().to_owned()
}

/// Boot `spec` for a person and wait until QEMU ends: what [`interactive_command`]
/// prints, with this process's standard streams as the guest's console (`pmcrash
/// shell`). QEMU is registered like every guest, so Ctrl-C (when the terminal sends
/// it to the harness rather than to the guest) and the harness's death end it.
pub async fn run_interactive(spec: &VmSpec) -> Result<std::process::ExitStatus, VmError> {
    let mut args = boot_args(spec);
    args.extend(["-serial".into(), "mon:stdio".into()]);
    let mut cmd = tokio::process::Command::new(&spec.qemu);
    cmd.args(&args).kill_on_drop(true);
    crate::sys::kill_with_parent(&mut cmd);
    let mut child = cmd.spawn().map_err(|source| VmError::Spawn {
        qemu: spec.qemu.clone(),
        source,
    })?;
    let pid = child.id().unwrap_or(0);
    if let Ok(mut s) = LIVE_QEMUS.lock() {
        s.insert(pid);
    }
    let status = child.wait().await;
    forget_pid(pid);
    status.map_err(io_err("wait for QEMU"))
}

/// A running guest.
pub struct Vm {
    child: tokio::process::Child,
    pid: u32,
    dir: tempfile::TempDir,
    qmp: Option<QmpConn>,
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    /// What the agent said when it came up (cold boot) or `None` after a restore.
    pub ready: Option<AgentMsg>,
    /// Time from spawn to a guest that answers.
    pub startup: Duration,
    /// What is left of the spec's script: requests the agent runs by itself, so
    /// [`Vm::request`] only reads their answers.
    script: std::collections::VecDeque<HostMsg>,
    /// The guest was started with a script.
    scripted: bool,
}

type QmpConn = qapi::futures::QapiStream<
    qapi::futures::QmpStreamTokio<tokio::io::ReadHalf<UnixStream>>,
    qapi::futures::QmpStreamTokio<tokio::io::WriteHalf<UnixStream>>,
>;

async fn connect_with_retry(path: &Path, until: Instant) -> std::io::Result<UnixStream> {
    loop {
        match UnixStream::connect(path).await {
            Ok(s) => return Ok(s),
            Err(e) if Instant::now() >= until => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
}

impl Vm {
    /// Start a guest and wait until its agent answers.
    pub async fn start(spec: &VmSpec, start: Start, timeouts: &Timeouts) -> Result<Vm, VmError> {
        let t0 = Instant::now();
        let dir = tempfile::Builder::new()
            .prefix("pmcrash-vm-")
            .tempdir()
            .map_err(io_err("create the VM's private directory"))?;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))
            .map_err(io_err("chmod 0700 the VM directory"))?;
        let qmp_sock = dir.path().join("qmp.sock");
        let agent_sock = dir.path().join("agent.sock");
        let console = dir.path().join("console.log");
        let mut args = boot_args(spec);
        args.extend([
            "-chardev".into(),
            format!("file,id=con,path={}", console.display()),
            "-serial".into(),
            "chardev:con".into(),
            "-chardev".into(),
            format!(
                "socket,id=agent,path={},server=on,wait=off",
                agent_sock.display()
            ),
            "-serial".into(),
            "chardev:agent".into(),
            "-qmp".into(),
            format!("unix:{},server=on,wait=off", qmp_sock.display()),
        ]);
        if let Some(p) = &spec.plugin {
            let mut s = p.path.display().to_string();
            for (k, v) in &p.args {
                s.push_str(&format!(",{k}={v}"));
            }
            args.extend(["-plugin".into(), s]);
        }
        if matches!(start, Start::Restore(_)) {
            args.extend(["-incoming".into(), "defer".into()]);
        }
        if !spec.script.is_empty() {
            let path = dir.path().join("script.jsonl");
            let mut text = Vec::new();
            for m in &spec.script {
                text.extend(protocol::encode(m));
            }
            std::fs::write(&path, text).map_err(io_err("write the agent's script"))?;
            args.extend([
                "-fw_cfg".into(),
                format!("name={SCRIPT_FW_CFG},file={}", path.display()),
            ]);
        }
        if let Some(p) = &spec.programs {
            args.extend([
                "-fw_cfg".into(),
                format!(
                    "name={},file={}",
                    crash_models::programs::FW_CFG_NAME,
                    p.display()
                ),
            ]);
        }
        let mut cmd = tokio::process::Command::new(&spec.qemu);
        cmd.args(&args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::from(
                std::fs::File::create(dir.path().join("qemu.stderr"))
                    .map_err(io_err("create qemu.stderr"))?,
            ))
            .kill_on_drop(true);
        crate::sys::kill_with_parent(&mut cmd);
        let child = cmd.spawn().map_err(|source| VmError::Spawn {
            qemu: spec.qemu.clone(),
            source,
        })?;
        let pid = child.id().unwrap_or(0);
        if let Ok(mut s) = LIVE_QEMUS.lock() {
            s.insert(pid);
        }
        std::fs::write(dir.path().join("cmdline"), shell_words(&spec.qemu, &args))
            .map_err(io_err("write the QEMU command line"))?;
        let (wait, during) = match start {
            Start::Cold => (timeouts.boot, "boot"),
            Start::Restore(_) => (timeouts.restore, "restore"),
        };
        let until = Instant::now() + wait;
        let connect = async {
            let q = connect_with_retry(&qmp_sock, until).await?;
            let a = connect_with_retry(&agent_sock, until).await?;
            Ok::<_, std::io::Error>((q, a))
        };
        // Build the VM value early so every error path below kills QEMU on drop.
        let (qs, agent) = match tokio::time::timeout(wait, connect).await {
            Ok(Ok(v)) => v,
            other => {
                let mut child = child;
                let status = child.try_wait().ok().flatten();
                let _ = child.start_kill();
                forget_pid(pid);
                let stderr =
                    std::fs::read_to_string(dir.path().join("qemu.stderr")).unwrap_or_default();
                return Err(VmError::Exited {
                    during: format!("{during}: connecting to QEMU's sockets ({other:?})"),
                    status: status.map_or("still running, killed".into(), |s| s.to_string()),
                    console: stderr,
                });
            }
        };
        let (r, w) = agent.into_split();
        let mut vm = Vm {
            child,
            pid,
            dir,
            qmp: None,
            reader: BufReader::with_capacity(1 << 16, r),
            writer: w,
            ready: None,
            startup: Duration::ZERO,
            script: spec.script.iter().cloned().collect(),
            scripted: !spec.script.is_empty(),
        };
        let qmp = vm
            .guard(during, wait, async {
                let neg = qapi::futures::QmpStreamTokio::open(qs)
                    .await
                    .map_err(|e| qmp_err("greeting", e))?;
                neg.negotiate()
                    .await
                    .map_err(|e| qmp_err("qmp_capabilities", e))
            })
            .await?;
        vm.qmp = Some(qmp);
        match start {
            Start::Cold => {
                let msg = vm.recv_terminal(during, until).await?;
                match &msg {
                    AgentMsg::Ready { version, .. } if *version == protocol::PROTOCOL_VERSION => {}
                    AgentMsg::Ready { version, .. } => {
                        return Err(VmError::Protocol {
                            during: during.into(),
                            message: format!(
                                "agent speaks protocol {version}, harness {}: the initramfs is stale; run `pmcrash setup`",
                                protocol::PROTOCOL_VERSION
                            ),
                        })
                    }
                    other => {
                        return Err(VmError::Protocol {
                            during: during.into(),
                            message: format!("expected ready, got {other:?}"),
                        })
                    }
                }
                vm.ready = Some(msg);
            }
            Start::Restore(state) => {
                vm.qmp_exec(
                    "migrate-set-capabilities",
                    qmp::migrate_set_capabilities {
                        capabilities: vec![ignore_shared()],
                    },
                )
                .await?;
                vm.qmp_exec(
                    "migrate-incoming",
                    qmp::migrate_incoming {
                        uri: Some(format!("file:{}", state.display())),
                        channels: None,
                        exit_on_error: None,
                    },
                )
                .await?;
                vm.wait_migration("restore", until).await?;
                vm.qmp_exec("cont", qmp::cont {}).await?;
                // A scripted guest gets no input at all: its first answer (to the
                // script's first request) proves the channel.
                if !vm.script.is_empty() {
                    vm.startup = t0.elapsed();
                    return Ok(vm);
                }
                // Anything the guest wrote before the snapshot and the host never read
                // is gone with the old socket; a ping proves the channel is live.
                let left = until.saturating_duration_since(Instant::now());
                match vm
                    .request_until(&HostMsg::Ping, "restore", Instant::now() + left)
                    .await?
                {
                    AgentMsg::Pong => {}
                    other => {
                        return Err(VmError::Protocol {
                            during: "restore".into(),
                            message: format!("expected pong, got {other:?}"),
                        })
                    }
                }
            }
        }
        vm.startup = t0.elapsed();
        Ok(vm)
    }

    /// The QEMU process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The private directory holding the sockets, console log and command line.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The last `n` lines of the guest console.
    pub fn console_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(self.dir.path().join("console.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// The whole console log so far.
    pub fn console(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("console.log")).unwrap_or_default()
    }

    async fn qmp_exec<C: qapi::qmp::QmpCommand + 'static>(
        &mut self,
        name: &str,
        cmd: C,
    ) -> Result<C::Ok, VmError> {
        let qmp = self.qmp.as_mut().ok_or_else(|| VmError::Qmp {
            command: name.into(),
            message: "not connected".into(),
        })?;
        qmp.execute(cmd).await.map_err(|e| VmError::Qmp {
            command: name.into(),
            message: e.to_string(),
        })
    }

    async fn wait_migration(&mut self, during: &str, until: Instant) -> Result<(), VmError> {
        loop {
            let info = self
                .qmp_exec("query-migrate", qmp::query_migrate {})
                .await?;
            match info.status {
                Some(qmp::MigrationStatus::completed) => return Ok(()),
                Some(qmp::MigrationStatus::failed) | Some(qmp::MigrationStatus::cancelled) => {
                    return Err(VmError::Qmp {
                        command: "query-migrate".into(),
                        message: format!(
                            "{during} failed: {}",
                            info.error_desc.unwrap_or_else(|| "no reason given".into())
                        ),
                    })
                }
                _ => {}
            }
            if Instant::now() >= until {
                let console = self.console_tail(20);
                self.kill().await;
                return Err(VmError::Timeout {
                    during: during.into(),
                    secs: 0.0,
                    console,
                });
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Run `fut`, turning a timeout or QEMU's exit into a [`VmError`] with the console.
    async fn guard<T>(
        &mut self,
        during: &str,
        wait: Duration,
        fut: impl std::future::Future<Output = Result<T, VmError>>,
    ) -> Result<T, VmError> {
        let res = tokio::select! {
            r = tokio::time::timeout(wait, fut) => r,
            status = self.child.wait() => {
                forget_pid(self.pid);
                let status = status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
                return Err(self.died(during, status));
            }
        };
        match res {
            Ok(r) => r,
            Err(_) => {
                let console = self.console_tail(30);
                self.kill().await;
                Err(VmError::Timeout {
                    during: during.into(),
                    secs: wait.as_secs_f64(),
                    console,
                })
            }
        }
    }

    fn died(&self, during: &str, status: String) -> VmError {
        let console = self.console();
        let tail = self.console_tail(30);
        if let Some(at) = console.find("Kernel panic") {
            // Show the panic line and what led to it, not just the end of the trace.
            let start = console[..at].lines().count().saturating_sub(15);
            let lines: Vec<&str> = console.lines().skip(start).take(80).collect();
            VmError::GuestPanic {
                during: during.into(),
                console: lines.join("\n"),
            }
        } else {
            let stderr =
                std::fs::read_to_string(self.dir.path().join("qemu.stderr")).unwrap_or_default();
            VmError::Exited {
                during: during.into(),
                status,
                console: format!("{tail}\n{stderr}"),
            }
        }
    }

    async fn recv_terminal(&mut self, during: &str, until: Instant) -> Result<AgentMsg, VmError> {
        let mut sink = Vec::new();
        self.recv_collect(during, until, &mut sink).await
    }

    async fn recv_collect(
        &mut self,
        during: &str,
        until: Instant,
        partial: &mut Vec<AgentMsg>,
    ) -> Result<AgentMsg, VmError> {
        let wait = until.saturating_duration_since(Instant::now());
        let during_owned = during.to_owned();
        // A scripted guest runs on to power-off without waiting for the host: its
        // answers may all be in the socket when QEMU has exited, so read until EOF
        // instead of giving up when QEMU ends.
        let watch_exit = !self.scripted;
        let reader = &mut self.reader;
        let read = async {
            loop {
                let line = read_line(reader, &during_owned).await?;
                let msg: AgentMsg = protocol::decode(&line).map_err(|e| VmError::Protocol {
                    during: during_owned.clone(),
                    message: e.to_string(),
                })?;
                if msg.is_terminal() {
                    return Ok(msg);
                }
                partial.push(msg);
            }
        };
        let res = tokio::select! {
            r = tokio::time::timeout(wait, read) => r,
            status = self.child.wait(), if watch_exit => {
                forget_pid(self.pid);
                let status = status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
                return Err(self.died(during, status));
            }
        };
        match res {
            Ok(Ok(msg)) => Ok(msg),
            Ok(Err(e)) => {
                // EOF on the agent socket usually means QEMU is going down: prefer the
                // more useful panic/exit error when it is.
                if let Ok(Ok(Some(status))) = tokio::time::timeout(Duration::from_secs(2), async {
                    self.child.wait().await.map(Some)
                })
                .await
                {
                    forget_pid(self.pid);
                    return Err(self.died(during, status.to_string()));
                }
                Err(e)
            }
            Err(_) => {
                let console = self.console_tail(30);
                self.kill().await;
                Err(VmError::Timeout {
                    during: during.into(),
                    secs: wait.as_secs_f64(),
                    console,
                })
            }
        }
    }

    async fn request_until(
        &mut self,
        msg: &HostMsg,
        during: &str,
        until: Instant,
    ) -> Result<AgentMsg, VmError> {
        let line = protocol::encode(msg);
        self.writer
            .write_all(&line)
            .await
            .map_err(io_err(format!("send {during} to the agent")))?;
        self.recv_terminal(during, until).await
    }

    /// Send one request and return the agent's messages: the progress ones (e.g. one
    /// `op-done` per op) and the terminal one. An `error` answer becomes
    /// [`VmError::Agent`].
    ///
    /// When the guest runs a script ([`VmSpec::script`]) whose next request is `msg`,
    /// nothing is sent: the agent runs it by itself and this only reads the answers.
    /// Any other request while a script runs is an error (host input would make the
    /// run depend on host timing).
    pub async fn request(
        &mut self,
        msg: &HostMsg,
        timeout: Duration,
    ) -> Result<(Vec<AgentMsg>, AgentMsg), VmError> {
        let during = msg.name().to_owned();
        if let Some(next) = self.script.front() {
            if next != msg {
                return Err(VmError::Protocol {
                    during,
                    message: format!(
                        "the guest runs a script whose next request is {}",
                        next.name()
                    ),
                });
            }
            self.script.pop_front();
        } else {
            let line = protocol::encode(msg);
            self.writer
                .write_all(&line)
                .await
                .map_err(io_err(format!("send {during} to the agent")))?;
        }
        let mut partial = Vec::new();
        let last = self
            .recv_collect(&during, Instant::now() + timeout, &mut partial)
            .await?;
        if let AgentMsg::Error { message } = last {
            return Err(VmError::Agent { during, message });
        }
        Ok((partial, last))
    }

    /// Save the running guest's state to `path` (QEMU stays paused; end it afterwards).
    /// Shared memory (the NVDIMM) is not saved: `x-ignore-shared`.
    pub async fn save_state(&mut self, path: &Path, timeout: Duration) -> Result<(), VmError> {
        let until = Instant::now() + timeout;
        self.qmp_exec(
            "migrate-set-capabilities",
            qmp::migrate_set_capabilities {
                capabilities: vec![ignore_shared()],
            },
        )
        .await?;
        self.qmp_exec("stop", qmp::stop {}).await?;
        self.qmp_exec(
            "migrate",
            qmp::migrate {
                uri: Some(format!("file:{}", path.display())),
                channels: None,
                detach: None,
                resume: None,
            },
        )
        .await?;
        self.wait_migration("save", until).await
    }

    /// Power the guest off through the agent and wait for QEMU to exit; kill it if it
    /// does not.
    pub async fn shutdown(mut self, timeout: Duration) -> Result<(), VmError> {
        if self.script.front() == Some(&HostMsg::Poweroff) {
            self.script.pop_front();
        } else {
            let line = protocol::encode(&HostMsg::Poweroff);
            let _ = self.writer.write_all(&line).await;
        }
        let res = tokio::time::timeout(timeout, self.child.wait()).await;
        forget_pid(self.pid);
        match res {
            Ok(Ok(status)) if status.success() => Ok(()),
            Ok(Ok(status)) => Err(self.died("shutdown", status.to_string())),
            Ok(Err(e)) => Err(VmError::Io {
                what: "wait for QEMU".into(),
                source: e,
            }),
            Err(_) => {
                let console = self.console_tail(20);
                self.kill().await;
                Err(VmError::Timeout {
                    during: "shutdown".into(),
                    secs: timeout.as_secs_f64(),
                    console,
                })
            }
        }
    }

    /// End QEMU at once (after a save, or to give up on a guest).
    pub async fn kill(&mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
        forget_pid(self.pid);
    }

    /// Quit QEMU through QMP (after a save) and reap it.
    pub async fn quit(mut self) {
        let _ = self.qmp_exec("quit", qmp::quit {}).await;
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.start_kill();
            let _ = self.child.wait().await;
        }
        forget_pid(self.pid);
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        // Reap synchronously so no zombie or live QEMU outlives the value.
        if let Ok(None) = self.child.try_wait() {
            crate::sys::reap(self.pid);
        }
        forget_pid(self.pid);
    }
}

fn forget_pid(pid: u32) {
    if let Ok(mut s) = LIVE_QEMUS.lock() {
        s.remove(&pid);
    }
}

fn ignore_shared() -> qmp::MigrationCapabilityStatus {
    qmp::MigrationCapabilityStatus {
        capability: qmp::MigrationCapability::x_ignore_shared,
        state: true,
    }
}

fn qmp_err(command: &str, e: impl std::fmt::Display) -> VmError {
    VmError::Qmp {
        command: command.into(),
        message: e.to_string(),
    }
}

async fn read_line(
    reader: &mut BufReader<OwnedReadHalf>,
    during: &str,
) -> Result<Vec<u8>, VmError> {
    let mut line = Vec::new();
    loop {
        let buf = reader
            .fill_buf()
            .await
            .map_err(io_err(format!("read from the agent during {during}")))?;
        if buf.is_empty() {
            return Err(VmError::Protocol {
                during: during.into(),
                message: "the agent channel closed".into(),
            });
        }
        let (take, done) = match buf.iter().position(|b| *b == b'\n') {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        line.extend_from_slice(&buf[..take]);
        reader.consume(take);
        if line.len() > MAX_LINE_BYTES + 1 {
            return Err(VmError::Protocol {
                during: during.into(),
                message: format!("agent line exceeds {MAX_LINE_BYTES} bytes"),
            });
        }
        if done {
            while matches!(line.last(), Some(b'\n' | b'\r')) {
                line.pop();
            }
            // Bytes left in the UART from before a snapshot may precede the JSON.
            if let Some(i) = line.iter().position(|b| *b == b'{') {
                line.drain(..i);
                return Ok(line);
            }
            line.clear();
        }
    }
}

fn shell_words(bin: &Path, args: &[String]) -> String {
    let mut s = bin.display().to_string();
    for a in args {
        s.push(' ');
        if a.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_=,./:+".contains(c))
        {
            s.push_str(a);
        } else {
            s.push('\'');
            s.push_str(&a.replace('\'', "'\\''"));
            s.push('\'');
        }
    }
    s.push('\n');
    s
}

/// Make a directory readable only by us (for caches holding VM states).
pub fn private_dir(path: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
}
