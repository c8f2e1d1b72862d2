//! `pmcrash doctor`: what is present, what is missing, and the command that fixes each.
//! Read-only: it runs probes (QEMU's `--version`, module resolution) but writes nothing.

use super::host_tools::{self, QemuStatus};
use super::kernel::{pin_path, DebMeta, KernelPin, KernelSource};
use super::*;
use std::fmt;

/// The state of one requirement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProbeStatus {
    /// Present and usable.
    Present,
    /// Missing or unusable: `pmcrash` will not run (or `setup` must run first).
    Missing,
    /// For information only; never makes the report fail.
    Info,
}

/// One requirement and its state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Probe {
    /// What is probed, e.g. `qemu`, `initramfs (ext4)`.
    pub name: String,
    /// Its state.
    pub status: ProbeStatus,
    /// What was found (a version, a path, a module order) or what is wrong.
    pub detail: String,
    /// The command that fixes it, when it is missing.
    pub fix: Option<String>,
}

/// The doctor's findings. `Display` is for people; `Serialize` for `--json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DoctorReport {
    /// True when nothing is missing.
    pub ok: bool,
    /// The cache directory examined.
    pub cache_dir: PathBuf,
    /// Each requirement, in a fixed order.
    pub probes: Vec<Probe>,
}

impl DoctorReport {
    /// True when nothing is missing (the same as the `ok` field).
    pub fn ok(&self) -> bool {
        self.ok
    }
}

impl fmt::Display for DoctorReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let width = self.probes.iter().map(|c| c.name.len()).max().unwrap_or(0);
        for c in &self.probes {
            let mark = match c.status {
                ProbeStatus::Present => "ok  ",
                ProbeStatus::Missing => "MISS",
                ProbeStatus::Info => "info",
            };
            writeln!(f, "[{mark}] {:width$}  {}", c.name, c.detail)?;
            if let Some(fix) = &c.fix {
                for line in fix.lines() {
                    writeln!(f, "       {:width$}  fix: {}", "", line.trim())?;
                }
            }
        }
        writeln!(f, "cache: {}", self.cache_dir.display())?;
        if self.ok {
            write!(f, "everything pmcrash needs is present")
        } else {
            write!(
                f,
                "something is missing: run the fix commands above, or `pmcrash setup` as root"
            )
        }
    }
}

fn probe(
    name: impl Into<String>,
    status: ProbeStatus,
    detail: impl Into<String>,
    fix: Option<String>,
) -> Probe {
    Probe {
        name: name.into(),
        status,
        detail: detail.into(),
        fix,
    }
}

/// The kernel the options select, found without downloading or building anything.
fn find_kernel(opts: &SetupOptions, probes: &mut Vec<Probe>) -> Option<KernelSource> {
    let setup = Some("pmcrash setup".to_string());
    if let Some(image) = &opts.kernel {
        let (image, modules) = (image.clone(), opts.modules.clone());
        let stamp = FileStamp::of(&image);
        let Some(stamp) = stamp else {
            probes.push(probe(
                "kernel",
                ProbeStatus::Missing,
                format!("{} not found", image.display()),
                None,
            ));
            return None;
        };
        let canon = std::fs::canonicalize(&image).unwrap_or(image.clone());
        let key_text = format!("{}:{}:{}", canon.display(), stamp.size, stamp.mtime_ns);
        let key = blake3::hash(key_text.as_bytes()).to_hex().to_string();
        probes.push(probe(
            "kernel",
            ProbeStatus::Present,
            format!("{} (your own)", image.display()),
            None,
        ));
        let record = read_json::<KernelRecord>(
            &opts
                .cache_dir
                .join("byo")
                .join(&key[..16])
                .join("kernel.json"),
        )
        .filter(|r| r.image.is_file());
        let Some(mut record) = record else {
            probes.push(probe(
                "kernel image",
                ProbeStatus::Missing,
                "not prepared yet",
                setup,
            ));
            return None;
        };
        let modules = modules.map(|m| std::fs::canonicalize(&m).unwrap_or(m));
        if let Some(hint) = modules
            .as_ref()
            .filter(|m| m.parent().and_then(|p| p.file_name()) == Some("modules".as_ref()))
            .and_then(|m| m.file_name())
            .and_then(|n| n.to_str())
        {
            record.release = hint.to_string();
        }
        record.modules_dir = modules.clone();
        let descriptor = format!(
            "byo:{key_text}:{}",
            modules
                .as_ref()
                .map(|m| m.display().to_string())
                .unwrap_or_default()
        );
        return Some(KernelSource {
            record,
            descriptor,
            inputs: Vec::new(),
        });
    }

    let pin = read_json::<KernelPin>(&pin_path(&opts.cache_dir));
    let deb = pin
        .as_ref()
        .and_then(|p| p.deb.clone())
        .filter(|d| crate::cache::debs_dir(&opts.cache_dir).join(d).is_file());
    let Some(deb_name) = deb else {
        let detail = match &pin {
            Some(p) => format!("{} pinned but not downloaded", p.package),
            None => "no linux-image-6.12.*-amd64-unsigned downloaded yet".to_string(),
        };
        probes.push(probe("kernel package", ProbeStatus::Missing, detail, setup));
        return None;
    };
    probes.push(probe(
        "kernel package",
        ProbeStatus::Present,
        deb_name.clone(),
        None,
    ));
    let deb = crate::cache::debs_dir(&opts.cache_dir).join(&deb_name);
    let stamp = FileStamp::of(&deb)?;
    let hash = match read_json::<DebMeta>(&PathBuf::from(format!("{}.json", deb.display()))) {
        Some(m) if m.stamp == stamp => m.blake3,
        _ => {
            let mut h = blake3::Hasher::new();
            h.update_reader(std::fs::File::open(&deb).ok()?).ok()?;
            h.finalize().to_hex().to_string()
        }
    };
    let record = read_json::<KernelRecord>(
        &opts
            .cache_dir
            .join("kernels")
            .join(&hash[..16])
            .join("kernel.json"),
    )
    .filter(|r| r.image.is_file());
    let Some(record) = record else {
        probes.push(probe(
            "kernel image",
            ProbeStatus::Missing,
            "package not unpacked yet",
            setup,
        ));
        return None;
    };
    let descriptor = format!("debian:{deb_name}:{hash}");
    Some(KernelSource {
        record,
        descriptor,
        inputs: Vec::new(),
    })
}

/// The kernel configuration probe: the options the guest needs that are missing.
fn config_probe(config: Option<PathBuf>, boot: kconfig::Boot) -> Probe {
    let Some(c) = config.filter(|c| c.is_file()) else {
        return probe(
            "kernel config",
            ProbeStatus::Info,
            "no .config or config-<release> beside the image: not checked here (setup also reads a CONFIG_IKCONFIG configuration inside a vmlinux)",
            None,
        );
    };
    match kconfig::KernelConfig::read(&c) {
        Err(e) => probe("kernel config", ProbeStatus::Missing, e.to_string(), None),
        Ok(cfg) => {
            let unmet = kconfig::check(&cfg, boot);
            if unmet.is_empty() {
                probe(
                    "kernel config",
                    ProbeStatus::Present,
                    format!("every option the guest needs is set ({})", c.display()),
                    None,
                )
            } else {
                probe(
                    "kernel config",
                    ProbeStatus::Missing,
                    format!(
                        "{}: {} option(s) missing or wrong",
                        c.display(),
                        unmet.len()
                    ),
                    Some(
                        unmet
                            .iter()
                            .map(|u| u.to_string())
                            .collect::<Vec<_>>()
                            .join("\n"),
                    ),
                )
            }
        }
    }
}

/// The headless browser the HTML report's tests drive: informational, since runs do
/// not need it; its fix is `pmcrash setup --browser`.
fn browser_probe() -> Probe {
    match host_tools::find_browser() {
        Some(p) => probe(
            "chromium",
            ProbeStatus::Present,
            format!(
                "{} (the HTML report's tests drive it headless)",
                p.display()
            ),
            None,
        ),
        None => probe(
            "chromium",
            ProbeStatus::Info,
            "not installed: only the HTML report's tests need it (`cargo xtask test` installs it)",
            Some("pmcrash setup --browser".to_string()),
        ),
    }
}

/// Runs every probe.
pub(super) fn run(opts: &SetupOptions) -> DoctorReport {
    let mut probes = Vec::new();
    let facts = host_tools::host_facts();
    let qemu_fix = {
        let mut qemu_only = facts.clone();
        qemu_only.missing_tools.clear();
        let p = host_tools::install_plan(&qemu_only);
        (!p.is_empty()).then(|| {
            p.iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        })
    };
    match &facts.qemu {
        QemuStatus::Ok { path, version } => probes.push(probe(
            "qemu",
            ProbeStatus::Present,
            format!("{version} with TCG plugin support ({})", path.display()),
            None,
        )),
        QemuStatus::Missing => probes.push(probe(
            "qemu",
            ProbeStatus::Missing,
            "qemu-system-x86_64 not found",
            qemu_fix,
        )),
        QemuStatus::TooOld { version, .. } => probes.push(probe(
            "qemu",
            ProbeStatus::Missing,
            format!("{version} is too old (need >= 10.0)"),
            qemu_fix,
        )),
        QemuStatus::NoPlugins { version, .. } => probes.push(probe(
            "qemu",
            ProbeStatus::Missing,
            format!("{version} lacks TCG plugin support (-plugin)"),
            qemu_fix,
        )),
    }
    for pkg in [
        "e2fsprogs",
        "xfsprogs",
        "dpkg",
        "apt",
        "pmdk-tools",
        "libpmemobj-dev",
        "libpmem-dev",
    ] {
        let tools: Vec<&str> = host_tools::TOOLS
            .iter()
            .filter(|(_, p)| *p == pkg)
            .map(|(t, _)| *t)
            .collect();
        let missing: Vec<&str> = tools
            .iter()
            .copied()
            .filter(|t| facts.missing_tools.iter().any(|m| m == t))
            .collect();
        if missing.is_empty() {
            probes.push(probe(pkg, ProbeStatus::Present, tools.join(", "), None));
        } else {
            let fix = if pkg == "apt" {
                "not a Debian-like system: install the tools by hand, and pass --kernel".to_string()
            } else {
                format!("DEBIAN_FRONTEND=noninteractive apt-get install -y {pkg}")
            };
            probes.push(probe(
                pkg,
                ProbeStatus::Missing,
                format!("missing: {}", missing.join(", ")),
                Some(fix),
            ));
        }
    }
    probes.push(probe(
        "kvm",
        ProbeStatus::Info,
        if host_tools::kvm_available() {
            "/dev/kvm creates VMs (not verified to run one; pmcrash traces under TCG regardless)"
        } else {
            "/dev/kvm not usable; fine: pmcrash runs guests under TCG"
        },
        None,
    ));
    probes.push(browser_probe());

    let setup = Some("pmcrash setup".to_string());
    let source = find_kernel(opts, &mut probes);
    let config = match (&opts.kernel, &source) {
        (Some(k), _) => kconfig::find_config(k),
        (None, Some(s)) => config_of(opts, &s.record),
        (None, None) => None,
    };
    if opts.kernel.is_some() || source.is_some() {
        let boot = kconfig::Boot {
            vmlinux: opts.kernel.as_deref().is_some_and(kconfig::is_elf),
            modules: opts.modules.is_some() || (opts.kernel.is_none() && source.is_some()),
        };
        probes.push(config_probe(config, boot));
    }
    if let Some(source) = source {
        let r = &source.record;
        probes.push(probe(
            "kernel image",
            ProbeStatus::Present,
            format!(
                "{} {} ({})",
                r.release,
                if r.pvh {
                    "vmlinux, PVH entry"
                } else {
                    "bzImage (no PVH vmlinux could be extracted)"
                },
                r.image.display()
            ),
            None,
        ));
        let tree = r.modules_dir.as_ref().map(|d| modules::ModuleTree::scan(d));
        for fs in FsKind::ALL {
            let name = format!("modules ({fs})");
            match &tree {
                None => probes.push(probe(
                    name,
                    ProbeStatus::Info,
                    "no module tree: all must be built in",
                    None,
                )),
                Some(Err(e)) => probes.push(probe(name, ProbeStatus::Missing, e.to_string(), None)),
                Some(Ok(t)) => match modules::resolve_tree(t, modules::roots(fs)) {
                    Ok(res) => {
                        let mut detail = res
                            .order
                            .iter()
                            .map(|m| m.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ");
                        if !res.builtin.is_empty() {
                            detail.push_str(&format!("; built in: {}", res.builtin.join(", ")));
                        }
                        probes.push(probe(name, ProbeStatus::Present, detail, None));
                    }
                    Err(e) => probes.push(probe(name, ProbeStatus::Missing, e.to_string(), None)),
                },
            }
        }
        let state: State =
            read_json(&crate::cache::setup_state_path(&opts.cache_dir)).unwrap_or_default();
        let entry = state.entries.get(&state_key(&source.descriptor));
        for fs in FsKind::ALL {
            let path = entry
                .and_then(|e| e.initramfs.get(&fs))
                .filter(|p| p.is_file());
            match path {
                Some(p) => probes.push(probe(
                    format!("initramfs ({fs})"),
                    ProbeStatus::Present,
                    p.display().to_string(),
                    None,
                )),
                None => probes.push(probe(
                    format!("initramfs ({fs})"),
                    ProbeStatus::Missing,
                    "not built for this agent and kernel",
                    setup.clone(),
                )),
            }
        }
    } else {
        for fs in FsKind::ALL {
            probes.push(probe(
                format!("initramfs ({fs})"),
                ProbeStatus::Missing,
                "needs the kernel first",
                setup.clone(),
            ));
        }
    }
    DoctorReport {
        ok: probes.iter().all(|c| c.status != ProbeStatus::Missing),
        cache_dir: opts.cache_dir.clone(),
        probes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_renders_and_serializes() {
        let r = DoctorReport {
            ok: false,
            cache_dir: "/c".into(),
            probes: vec![
                probe("qemu", ProbeStatus::Present, "10.0.2", None),
                probe(
                    "xfsprogs",
                    ProbeStatus::Missing,
                    "missing: mkfs.xfs",
                    Some("apt-get install -y xfsprogs".into()),
                ),
            ],
        };
        let text = r.to_string();
        assert!(text.contains("[MISS] xfsprogs"), "{text}");
        assert!(text.contains("fix: apt-get install -y xfsprogs"), "{text}");
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["probes"][1]["status"], "missing");
        assert_eq!(json["ok"], false);
    }

    #[test]
    fn empty_cache_reports_missing_kernel() {
        let dir = tempfile::tempdir().unwrap();
        let r = run(&SetupOptions {
            cache_dir: dir.path().into(),
            ..SetupOptions::default()
        });
        assert!(!r.ok);
        let k = r
            .probes
            .iter()
            .find(|c| c.name == "kernel package")
            .unwrap();
        assert_eq!(k.status, ProbeStatus::Missing);
        assert_eq!(k.fix.as_deref(), Some("pmcrash setup"));
    }
}
