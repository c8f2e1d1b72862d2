//! Host tools: finding QEMU and the file-system utilities, and deciding which apt commands
//! would install what is missing.

use super::SetupError;
use serde::Serialize;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The oldest QEMU whose plugin API gives the tracer store values
/// (`qemu_plugin_mem_get_value`, API v4 = QEMU 10.0).
pub const MIN_QEMU: (u32, u32) = (10, 0);

/// Where Debian 12 gets a new enough QEMU.
pub const BACKPORTS_LIST: &str = "/etc/apt/sources.list.d/pmcrash-backports.list";
/// The line written to [`BACKPORTS_LIST`].
pub const BACKPORTS_LINE: &str = "deb http://deb.debian.org/debian bookworm-backports main";

/// A file-system or packaging tool the harness runs, and the Debian package that has it
/// (an absolute path names a file that must exist, e.g. a library's header).
pub const TOOLS: [(&str, &str); 12] = [
    ("mkfs.ext4", "e2fsprogs"),
    ("debugfs", "e2fsprogs"),
    ("e2fsck", "e2fsprogs"),
    ("mkfs.xfs", "xfsprogs"),
    ("xfs_db", "xfsprogs"),
    ("xfs_repair", "xfsprogs"),
    ("dpkg-deb", "dpkg"),
    ("apt-get", "apt"),
    // The tracer's acceptance test compares images with an independent tool.
    ("qemu-img", "qemu-utils"),
    // PM programs (issue 12): `pmempool check` is a stock user checker, and
    // examples/pm-programs links libpmemobj; the guest gets both from the host
    // (`elf::needed_closure`).
    ("pmempool", "pmdk-tools"),
    ("/usr/include/libpmemobj.h", "libpmemobj-dev"),
    ("/usr/include/libpmem.h", "libpmem-dev"),
];

/// The tool, or the file, of a [`TOOLS`] entry is there.
pub fn present(tool: &str) -> bool {
    if tool.starts_with('/') {
        Path::new(tool).is_file()
    } else {
        which(tool).is_some()
    }
}

/// Looks `name` up in `$PATH`, then in the sbin directories that a non-root `$PATH` often
/// lacks (mkfs.ext4 and friends live in /usr/sbin).
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// What we know about the QEMU on this host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum QemuStatus {
    /// No `qemu-system-x86_64` found.
    Missing,
    /// Found but older than [`MIN_QEMU`].
    TooOld {
        /// Its path.
        path: PathBuf,
        /// Its version.
        version: String,
    },
    /// Found, new enough, but built without TCG plugin support.
    NoPlugins {
        /// Its path.
        path: PathBuf,
        /// Its version.
        version: String,
    },
    /// Usable.
    Ok {
        /// Its path.
        path: PathBuf,
        /// Its version, e.g. `10.0.2`.
        version: String,
    },
}

impl QemuStatus {
    /// True when this QEMU can run pmcrash.
    pub fn is_ok(&self) -> bool {
        matches!(self, QemuStatus::Ok { .. })
    }
}

/// Parses `qemu-system-x86_64 --version` output: `QEMU emulator version 10.0.2 (Debian ...)`.
pub fn parse_qemu_version(out: &str) -> Option<(String, (u32, u32))> {
    let line = out.lines().find(|l| l.contains("version"))?;
    let v = line.split("version").nth(1)?.split_whitespace().next()?;
    let mut parts = v.split('.').map(|p| p.parse::<u32>().ok());
    let major = parts.next()??;
    let minor = parts.next().flatten().unwrap_or(0);
    Some((v.to_string(), (major, minor)))
}

/// Probes a QEMU binary: its version, and whether it accepts `-plugin`.
///
/// A QEMU built without `--enable-plugins` rejects `-plugin` as an invalid option, while one
/// with plugins prints the plugin option help and exits 0: that is cheaper (~30 ms) and more
/// reliable than looking for `qemu_plugin_*` symbols, which a stripped binary may hide.
pub fn probe_qemu(path: &Path) -> QemuStatus {
    let Ok(out) = Command::new(path)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
    else {
        return QemuStatus::Missing;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let Some((version, mm)) = parse_qemu_version(&text) else {
        return QemuStatus::Missing;
    };
    let path = path.to_path_buf();
    if mm < MIN_QEMU {
        return QemuStatus::TooOld { path, version };
    }
    let plugins = Command::new(&path)
        .args(["-plugin", "help"])
        .stdin(Stdio::null())
        .output()
        .map(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains("file="))
        .unwrap_or(false);
    if plugins {
        QemuStatus::Ok { path, version }
    } else {
        QemuStatus::NoPlugins { path, version }
    }
}

/// The facts about the host that decide what to install.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostFacts {
    /// QEMU's state.
    pub qemu: QemuStatus,
    /// Tools from [`TOOLS`] that were not found (by tool name).
    pub missing_tools: Vec<String>,
    /// `ID` from /etc/os-release (`debian`).
    pub os_id: Option<String>,
    /// `VERSION_CODENAME` from /etc/os-release (`bookworm`).
    pub codename: Option<String>,
    /// Whether some apt source already names bookworm-backports.
    pub backports_configured: bool,
    /// Whether we run as root (apt-get install needs it).
    pub root: bool,
}

/// Parses /etc/os-release text into (ID, VERSION_CODENAME).
pub fn parse_os_release(text: &str) -> (Option<String>, Option<String>) {
    let get = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .map(|v| v.trim().trim_matches('"').to_string())
            .filter(|v| !v.is_empty())
    };
    (get("ID"), get("VERSION_CODENAME"))
}

/// True if any apt source (one-line or deb822 format) already mentions bookworm-backports.
pub fn backports_configured() -> bool {
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(rd) = std::fs::read_dir("/etc/apt/sources.list.d") {
        files.extend(
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "list" || e == "sources")),
        );
    }
    files.iter().any(|f| {
        std::fs::read_to_string(f).is_ok_and(|t| {
            t.lines()
                .any(|l| !l.trim_start().starts_with('#') && l.contains("bookworm-backports"))
        })
    })
}

/// Gathers [`HostFacts`] (runs QEMU twice, ~80 ms).
pub fn host_facts() -> HostFacts {
    let qemu = which("qemu-system-x86_64")
        .map(|p| probe_qemu(&p))
        .unwrap_or(QemuStatus::Missing);
    let missing_tools = TOOLS
        .iter()
        .filter(|(t, _)| !present(t))
        .map(|(t, _)| t.to_string())
        .collect();
    let (os_id, codename) =
        parse_os_release(&std::fs::read_to_string("/etc/os-release").unwrap_or_default());
    HostFacts {
        qemu,
        missing_tools,
        os_id,
        codename,
        backports_configured: backports_configured(),
        root: crate::sys::is_root(),
    }
}

/// One provisioning step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Step {
    /// Create a file with this content (an apt source).
    WriteFile {
        /// The file.
        path: PathBuf,
        /// Its content.
        content: String,
    },
    /// Run a command (argv).
    Run {
        /// The command and its arguments.
        argv: Vec<String>,
    },
}

impl fmt::Display for Step {
    /// The step as a shell command a person can paste.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::WriteFile { path, content } => {
                write!(f, "echo '{}' > {}", content.trim_end(), path.display())
            }
            Step::Run { argv } => {
                if argv.first().is_some_and(|a| a == "apt-get") {
                    f.write_str("DEBIAN_FRONTEND=noninteractive ")?;
                }
                f.write_str(&argv.join(" "))
            }
        }
    }
}

fn run_step(argv: &[&str]) -> Step {
    Step::Run {
        argv: argv.iter().map(|s| s.to_string()).collect(),
    }
}

/// Decides the steps that install what `facts` says is missing; empty when nothing is.
///
/// QEMU: on Debian 12 the stock 7.2 is too old, so it comes from bookworm-backports (the
/// source is added if no apt source names it yet); elsewhere the stock `qemu-system-x86` is
/// tried (new enough on Debian 13). The file-system tools always come from the stock suite.
pub fn install_plan(facts: &HostFacts) -> Vec<Step> {
    let mut pkgs: Vec<&str> = Vec::new();
    for (tool, pkg) in TOOLS {
        if facts.missing_tools.iter().any(|t| t == tool) && !pkgs.contains(&pkg) {
            pkgs.push(pkg);
        }
    }
    let need_qemu = !facts.qemu.is_ok();
    if !need_qemu && pkgs.is_empty() {
        return Vec::new();
    }
    let bookworm = facts.codename.as_deref() == Some("bookworm");
    // On bookworm every QEMU package comes from backports, so versions match.
    let mut qemu_pkgs: Vec<&str> = Vec::new();
    if need_qemu {
        qemu_pkgs.push("qemu-system-x86");
    }
    if bookworm {
        if let Some(i) = pkgs.iter().position(|p| *p == "qemu-utils") {
            qemu_pkgs.push(pkgs.remove(i));
        }
    }
    let mut steps = Vec::new();
    if !qemu_pkgs.is_empty() && bookworm && !facts.backports_configured {
        steps.push(Step::WriteFile {
            path: BACKPORTS_LIST.into(),
            content: format!("{BACKPORTS_LINE}\n"),
        });
    }
    steps.push(run_step(&["apt-get", "update"]));
    if !qemu_pkgs.is_empty() {
        let mut argv = vec!["apt-get", "install", "-y"];
        if bookworm {
            argv.extend(["-t", "bookworm-backports"]);
        }
        argv.extend(qemu_pkgs);
        steps.push(run_step(&argv));
    }
    if !pkgs.is_empty() {
        let mut argv = vec!["apt-get", "install", "-y"];
        argv.extend(pkgs);
        steps.push(run_step(&argv));
    }
    steps
}

/// The plan as lines of shell.
pub fn render_plan(steps: &[Step]) -> String {
    steps
        .iter()
        .map(|s| format!("  {s}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Runs a command to completion, capturing its output; a failure becomes
/// [`SetupError::CommandFailed`] carrying the tail of what it printed.
pub fn run_command(cmd: &mut Command) -> Result<std::process::Output, SetupError> {
    let shown = format!(
        "{} {}",
        cmd.get_program().to_string_lossy(),
        cmd.get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| SetupError::CommandFailed {
            command: shown.clone(),
            status: e.to_string(),
            output: String::new(),
        })?;
    if out.status.success() {
        return Ok(out);
    }
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(20)..].join("\n");
    Err(SetupError::CommandFailed {
        command: shown,
        status: out.status.to_string(),
        output: tail,
    })
}

/// Carries out a plan: apt runs non-interactively.
pub fn apply_plan(steps: &[Step], mut progress: impl FnMut(&str)) -> Result<(), SetupError> {
    for step in steps {
        progress(&step.to_string());
        match step {
            Step::WriteFile { path, content } => {
                crate::cache::write_atomic(path, content.as_bytes())?;
            }
            Step::Run { argv } => {
                let mut cmd = Command::new(&argv[0]);
                cmd.args(&argv[1..])
                    .env("DEBIAN_FRONTEND", "noninteractive");
                run_command(&mut cmd)?;
            }
        }
    }
    Ok(())
}

/// The Debian package of the headless browser the HTML report's tests drive
/// (`pmcrash setup --browser`; runs do not need it).
pub const BROWSER_PACKAGE: &str = "chromium";

/// The browser's command names, in the order they are looked for.
pub const BROWSER_COMMANDS: [&str; 2] = ["chromium", "chromium-browser"];

/// The Chromium on this host: `$PMCRASH_CHROMIUM` when set, else the first of
/// [`BROWSER_COMMANDS`] on the `PATH`.
pub fn find_browser() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("PMCRASH_CHROMIUM") {
        let p = PathBuf::from(p);
        return is_executable(&p).then_some(p);
    }
    BROWSER_COMMANDS.iter().find_map(|c| which(c))
}

/// The steps that install the browser: Debian's `chromium`, without recommends.
pub fn browser_plan() -> Vec<Step> {
    vec![
        run_step(&["apt-get", "update"]),
        run_step(&[
            "apt-get",
            "install",
            "-y",
            "--no-install-recommends",
            BROWSER_PACKAGE,
        ]),
    ]
}

/// Finds the browser, installing it with apt when it is missing and `install` allows
/// (as root); `progress` hears each step. Returns its path.
pub fn ensure_browser(install: bool, progress: impl FnMut(&str)) -> Result<PathBuf, SetupError> {
    if let Some(p) = find_browser() {
        return Ok(p);
    }
    let plan = browser_plan();
    let problems = format!(
        "no headless browser: `{}` is not on the PATH (the HTML report's tests drive it)",
        BROWSER_COMMANDS[0]
    );
    if !install || !crate::sys::is_root() || which("apt-get").is_none() {
        return Err(SetupError::HostTools {
            problems,
            commands: render_plan(&plan),
        });
    }
    apply_plan(&plan, progress)?;
    find_browser().ok_or_else(|| SetupError::HostTools {
        problems: format!("{problems}, even after installing {BROWSER_PACKAGE}"),
        commands: render_plan(&plan),
    })
}

/// Whether KVM works here (informational: tracing needs TCG anyway).
///
/// Opening /dev/kvm is not enough: without nested virtualisation the device exists but
/// creating a VM fails, so this asks for the API version and creates (and drops) a VM.
pub fn kvm_available() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok_and(|dev| crate::sys::kvm_can_create_vm(&dev))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(qemu: QemuStatus, missing: &[&str], codename: &str, backports: bool) -> HostFacts {
        HostFacts {
            qemu,
            missing_tools: missing.iter().map(|s| s.to_string()).collect(),
            os_id: Some("debian".into()),
            codename: Some(codename.into()),
            backports_configured: backports,
            root: true,
        }
    }

    fn ok() -> QemuStatus {
        QemuStatus::Ok {
            path: "/usr/bin/qemu-system-x86_64".into(),
            version: "10.0.2".into(),
        }
    }

    #[test]
    fn qemu_version_parsing() {
        let out = "QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2+deb13u1~bpo12+1)\nCopyright";
        assert_eq!(parse_qemu_version(out), Some(("10.0.2".into(), (10, 0))));
        assert_eq!(
            parse_qemu_version("QEMU emulator version 7.2.15 (Debian)")
                .unwrap()
                .1,
            (7, 2)
        );
        assert!(parse_qemu_version("garbage").is_none());
        assert!((7, 2) < MIN_QEMU && (10, 0) >= MIN_QEMU && (10, 1) > MIN_QEMU);
    }

    #[test]
    fn nothing_to_do_when_all_present() {
        assert!(install_plan(&facts(ok(), &[], "bookworm", false)).is_empty());
    }

    #[test]
    fn fresh_bookworm_gets_backports_then_stock_tools() {
        let f = facts(
            QemuStatus::Missing,
            &["mkfs.xfs", "xfs_db", "xfs_repair", "debugfs"],
            "bookworm",
            false,
        );
        let plan: Vec<String> = install_plan(&f).iter().map(|s| s.to_string()).collect();
        assert_eq!(
            plan,
            [
                format!("echo '{BACKPORTS_LINE}' > {BACKPORTS_LIST}"),
                "DEBIAN_FRONTEND=noninteractive apt-get update".to_string(),
                "DEBIAN_FRONTEND=noninteractive apt-get install -y -t bookworm-backports qemu-system-x86".into(),
                "DEBIAN_FRONTEND=noninteractive apt-get install -y e2fsprogs xfsprogs".into(),
            ]
        );
    }

    #[test]
    fn pmdk_comes_from_the_stock_suite() {
        let f = facts(
            ok(),
            &[
                "pmempool",
                "/usr/include/libpmemobj.h",
                "/usr/include/libpmem.h",
            ],
            "bookworm",
            true,
        );
        let plan: Vec<String> = install_plan(&f).iter().map(|s| s.to_string()).collect();
        assert_eq!(
            plan,
            [
                "DEBIAN_FRONTEND=noninteractive apt-get update".to_string(),
                "DEBIAN_FRONTEND=noninteractive apt-get install -y pmdk-tools libpmemobj-dev libpmem-dev".into(),
            ]
        );
        assert!(present("/bin/sh") && present("sh") && !present("/no/such/header.h"));
    }

    #[test]
    fn qemu_utils_comes_from_backports_with_qemu_on_bookworm() {
        let f = facts(
            QemuStatus::Missing,
            &["qemu-img", "mkfs.xfs"],
            "bookworm",
            false,
        );
        let plan: Vec<String> = install_plan(&f).iter().map(|s| s.to_string()).collect();
        assert_eq!(
            plan,
            [
                format!("echo '{BACKPORTS_LINE}' > {BACKPORTS_LIST}"),
                "DEBIAN_FRONTEND=noninteractive apt-get update".to_string(),
                "DEBIAN_FRONTEND=noninteractive apt-get install -y -t bookworm-backports qemu-system-x86 qemu-utils".into(),
                "DEBIAN_FRONTEND=noninteractive apt-get install -y xfsprogs".into(),
            ]
        );
    }

    #[test]
    fn old_qemu_with_backports_configured_skips_the_source_file() {
        let old = QemuStatus::TooOld {
            path: "/usr/bin/qemu-system-x86_64".into(),
            version: "7.2.15".into(),
        };
        let plan = install_plan(&facts(old, &[], "bookworm", true));
        assert_eq!(plan.len(), 2);
        assert!(matches!(&plan[0], Step::Run { argv } if argv == &["apt-get", "update"]));
    }

    #[test]
    fn trixie_uses_the_stock_qemu() {
        let plan = install_plan(&facts(QemuStatus::Missing, &[], "trixie", false));
        let shown: Vec<String> = plan.iter().map(|s| s.to_string()).collect();
        assert_eq!(
            shown.last().unwrap(),
            "DEBIAN_FRONTEND=noninteractive apt-get install -y qemu-system-x86"
        );
        assert!(!shown.iter().any(|s| s.contains("backports")));
    }

    #[test]
    fn browser_plan_installs_debians_chromium() {
        let shown: Vec<String> = browser_plan().iter().map(|s| s.to_string()).collect();
        assert_eq!(
            shown,
            [
                "DEBIAN_FRONTEND=noninteractive apt-get update",
                "DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium"
            ]
        );
    }

    #[test]
    fn os_release_parsing() {
        let t = "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nVERSION_ID=\"12\"\nVERSION_CODENAME=bookworm\nID=debian\n";
        assert_eq!(
            parse_os_release(t),
            (Some("debian".into()), Some("bookworm".into()))
        );
    }
}
