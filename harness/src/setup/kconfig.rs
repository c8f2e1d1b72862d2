//! The guest kernel's configuration, checked before any boot.
//!
//! A kernel built without what the guest needs does not fail cleanly: without
//! `CONFIG_FS_DAX` the mount refuses `-o dax`, without the serial console the harness
//! waits for a guest that prints nothing, without `CONFIG_BLK_DEV_PMEM` the agent waits
//! for a `/dev/pmem0` that never comes. So [`ensure`](super::ensure) and `pmcrash
//! doctor` read the kernel's `.config` (a build tree's, or the `config-<release>` a
//! packaged kernel ships beside its image) and name every option that is missing or
//! wrong, with the value it needs ([`check`]).
//!
//! The list ([`requirements`]) is what the platform uses: `-M pc,nvdimm=on` (an ACPI
//! NFIT, so no `CONFIG_X86_PMEM_LEGACY`), two 8250 serial ports (the console on ttyS0,
//! the agent's channel on ttyS1), an uncompressed newc initramfs whose `/init` is the
//! static ELF agent, `proc`/`sysfs`/`devtmpfs`, `/proc/sys/vm/drop_caches`, the
//! namespace's conversion to fsdax through sysfs, and `-o dax` mounts. QEMU runs with
//! `-nodefaults -nic none`: no virtio device and nothing read from fw_cfg by the guest
//! kernel, so neither is required.
//!
//! ```
//! use pmcrash::setup::kconfig::{check, KernelConfig};
//! let cfg = KernelConfig::parse("CONFIG_FS_DAX=y\n# CONFIG_BLK_DEV_PMEM is not set\n");
//! let unmet = check(&cfg, pmcrash::setup::kconfig::Boot::BZIMAGE_WITH_MODULES);
//! assert!(unmet.iter().any(|u| u.option == "CONFIG_BLK_DEV_PMEM" && u.have.is_none()));
//! assert!(!unmet.iter().any(|u| u.option == "CONFIG_FS_DAX"));
//! ```

use super::SetupError;
use crash_models::ops::FsKind;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// A parsed kernel `.config`: option name to value (`y`, `m`, a number, a quoted
/// string). Options that are `# ... is not set` or absent have no value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelConfig {
    values: BTreeMap<String, String>,
}

impl KernelConfig {
    /// Parses the text of a `.config`.
    ///
    /// ```
    /// let c = pmcrash::setup::kconfig::KernelConfig::parse("CONFIG_EXT4_FS=m\n");
    /// assert_eq!(c.get("CONFIG_EXT4_FS"), Some("m"));
    /// assert_eq!(c.get("CONFIG_XFS_FS"), None);
    /// ```
    pub fn parse(text: &str) -> KernelConfig {
        let values = text
            .lines()
            .map(str::trim)
            .filter(|l| l.starts_with("CONFIG_"))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .filter(|(_, v)| v != "n")
            .collect();
        KernelConfig { values }
    }

    /// Reads and parses a `.config` file.
    ///
    /// ```no_run
    /// let c = pmcrash::setup::kconfig::KernelConfig::read("linux/.config".as_ref())?;
    /// # Ok::<(), pmcrash::setup::SetupError>(())
    /// ```
    pub fn read(path: &Path) -> Result<KernelConfig, SetupError> {
        let text = std::fs::read_to_string(path).map_err(|e| SetupError::io(path, e))?;
        Ok(KernelConfig::parse(&text))
    }

    /// The value of an option (`CONFIG_` included), `None` when it is not set.
    ///
    /// ```
    /// let c = pmcrash::setup::kconfig::KernelConfig::parse("CONFIG_HZ=250\n");
    /// assert_eq!(c.get("CONFIG_HZ"), Some("250"));
    /// ```
    pub fn get(&self, option: &str) -> Option<&str> {
        self.values.get(option).map(String::as_str)
    }
}

/// The value an option needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// `=y`: built in (a bool, or something used before any module can load).
    Builtin,
    /// `=y` or `=m`.
    Enabled,
    /// A number at least this large.
    AtLeast(u64),
}

impl fmt::Display for Need {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Need::Builtin => write!(f, "=y"),
            Need::Enabled => write!(f, "=y or =m"),
            Need::AtLeast(n) => write!(f, ">= {n}"),
        }
    }
}

/// One option the guest needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Requirement {
    /// The option, `CONFIG_` included.
    pub option: &'static str,
    /// The value it needs.
    pub need: Need,
    /// What uses it.
    pub why: &'static str,
    /// Only a guest of this file system needs it (`None`: every guest).
    pub fs: Option<FsKind>,
}

const fn req(option: &'static str, need: Need, why: &'static str) -> Requirement {
    Requirement {
        option,
        need,
        why,
        fs: None,
    }
}

/// Everything a guest needs of its kernel; `CONFIG_PVH` only when the image handed to
/// QEMU is an ELF `vmlinux` (a bzImage boots without it, more slowly).
///
/// ```
/// let all = pmcrash::setup::kconfig::requirements(true);
/// assert!(all.iter().any(|r| r.option == "CONFIG_PVH"));
/// assert!(!pmcrash::setup::kconfig::requirements(false).iter().any(|r| r.option == "CONFIG_PVH"));
/// ```
pub fn requirements(vmlinux: bool) -> Vec<Requirement> {
    use Need::*;
    let mut v = vec![
        req(
            "CONFIG_64BIT",
            Builtin,
            "the guest agent is an x86-64 binary",
        ),
        req(
            "CONFIG_BLK_DEV_INITRD",
            Builtin,
            "the agent and the modules come in an initramfs",
        ),
        req("CONFIG_BINFMT_ELF", Builtin, "/init is the ELF guest agent"),
        req(
            "CONFIG_DEVTMPFS",
            Builtin,
            "the agent mounts devtmpfs for /dev/pmem0 and /dev/ttyS1",
        ),
        req(
            "CONFIG_PROC_SYSCTL",
            Builtin,
            "the agent writes /proc/sys/vm/drop_caches before every mount",
        ),
        req(
            "CONFIG_SYSFS",
            Builtin,
            "the fsdax conversion goes through sysfs",
        ),
        req(
            "CONFIG_PRINTK",
            Builtin,
            "the checker reads oopses and warnings on the console",
        ),
        req(
            "CONFIG_TTY",
            Builtin,
            "the console and the agent's channel are serial ports",
        ),
        req(
            "CONFIG_SERIAL_8250",
            Builtin,
            "the console (ttyS0) and the agent's channel (ttyS1) are 8250 UARTs",
        ),
        req(
            "CONFIG_SERIAL_8250_CONSOLE",
            Builtin,
            "console=ttyS0: without it the boot is silent",
        ),
        req(
            "CONFIG_SERIAL_8250_RUNTIME_UARTS",
            AtLeast(2),
            "the agent talks on the second serial port (ttyS1)",
        ),
        req(
            "CONFIG_ACPI",
            Builtin,
            "QEMU describes the NVDIMM in an ACPI NFIT",
        ),
        req(
            "CONFIG_ACPI_NFIT",
            Enabled,
            "finds the NVDIMM (module nfit)",
        ),
        req(
            "CONFIG_LIBNVDIMM",
            Enabled,
            "the NVDIMM subsystem (module libnvdimm)",
        ),
        req(
            "CONFIG_BLK_DEV_PMEM",
            Enabled,
            "/dev/pmem0 (module nd_pmem)",
        ),
        req(
            "CONFIG_BTT",
            Builtin,
            "the harness loads nd_btt with nd_pmem",
        ),
        req(
            "CONFIG_NVDIMM_PFN",
            Builtin,
            "the namespace is converted to fsdax (pfn device) for DAX",
        ),
        req(
            "CONFIG_ZONE_DEVICE",
            Builtin,
            "struct pages for the fsdax namespace",
        ),
        req("CONFIG_DAX", Builtin, "DAX core"),
        req("CONFIG_FS_DAX", Builtin, "mount -o dax"),
        Requirement {
            fs: Some(FsKind::Ext4),
            ..req("CONFIG_EXT4_FS", Enabled, "ext4-DAX guests (module ext4)")
        },
        Requirement {
            fs: Some(FsKind::Xfs),
            ..req("CONFIG_XFS_FS", Enabled, "XFS-DAX guests (module xfs)")
        },
        req(
            "CONFIG_CRYPTO_CRC32C",
            Enabled,
            "ext4 and XFS metadata checksums (module crc32c_generic)",
        ),
    ];
    if vmlinux {
        v.push(req(
            "CONFIG_PVH",
            Builtin,
            "QEMU boots an ELF vmlinux through its PVH entry (or pass the bzImage)",
        ));
    }
    v
}

/// An option that is missing or has the wrong value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unmet {
    /// The option, `CONFIG_` included.
    pub option: String,
    /// Its value, `None` when it is not set.
    pub have: Option<String>,
    /// The value it needs.
    pub need: Need,
    /// What uses it.
    pub why: String,
}

impl fmt::Display for Unmet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let have = match &self.have {
            Some(v) => format!("is {v}"),
            None => "is not set".into(),
        };
        write!(
            f,
            "{} {have}, needs {}: {}",
            self.option, self.need, self.why
        )
    }
}

/// How the guest boots the kernel, which changes what its configuration needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Boot {
    /// QEMU gets an ELF vmlinux (then `CONFIG_PVH=y` is needed; a bzImage boots
    /// without it).
    pub vmlinux: bool,
    /// A module directory comes with the kernel (without one, everything the guest
    /// needs must be built in: `=y`).
    pub modules: bool,
}

impl Boot {
    /// A bzImage with its modules: Debian's package, or a tree after `make`.
    ///
    /// ```
    /// let b = pmcrash::setup::kconfig::Boot::BZIMAGE_WITH_MODULES;
    /// assert!(!b.vmlinux && b.modules);
    /// ```
    pub const BZIMAGE_WITH_MODULES: Boot = Boot {
        vmlinux: false,
        modules: true,
    };
}

/// Every requirement `cfg` fails, in [`requirements`]' order.
///
/// ```
/// use pmcrash::setup::kconfig::{check, Boot, KernelConfig};
/// let cfg = KernelConfig::parse("CONFIG_EXT4_FS=m\n");
/// let with = check(&cfg, Boot { vmlinux: false, modules: true });
/// assert!(!with.iter().any(|u| u.option == "CONFIG_EXT4_FS"));
/// // Without a module directory, ext4 must be built in.
/// let without = check(&cfg, Boot { vmlinux: false, modules: false });
/// assert!(without.iter().any(|u| u.option == "CONFIG_EXT4_FS"));
/// ```
pub fn check(cfg: &KernelConfig, boot: Boot) -> Vec<Unmet> {
    requirements(boot.vmlinux)
        .into_iter()
        .filter_map(|r| {
            let need = match r.need {
                Need::Enabled if !boot.modules => Need::Builtin,
                n => n,
            };
            let v = cfg.get(r.option);
            let met = match need {
                Need::Builtin => v == Some("y"),
                Need::Enabled => matches!(v, Some("y" | "m")),
                Need::AtLeast(n) => v
                    .and_then(|v| v.parse::<u64>().ok())
                    .is_some_and(|x| x >= n),
            };
            (!met).then(|| Unmet {
                option: r.option.to_owned(),
                have: v.map(str::to_owned),
                need,
                why: if need == r.need {
                    r.why.to_owned()
                } else {
                    format!("{}; no module directory was given, so built in", r.why)
                },
            })
        })
        .collect()
}

/// Where a kernel image's configuration is: the build tree's `.config` (for
/// `arch/x86/boot/bzImage` or a `vmlinux` at the tree's top), else `config-<release>`
/// or `config` beside the image (a packaged kernel's `/boot`).
///
/// ```no_run
/// let c = pmcrash::setup::kconfig::find_config("linux/arch/x86/boot/bzImage".as_ref());
/// assert_eq!(c.as_deref(), Some(std::path::Path::new("linux/.config")));
/// ```
pub fn find_config(image: &Path) -> Option<PathBuf> {
    let dir = image.parent()?;
    let mut candidates: Vec<PathBuf> = image
        .ancestors()
        .skip(1)
        .take(4)
        .map(|d| d.join(".config"))
        .collect();
    let name = image.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if let Some((_, release)) = name.split_once('-') {
        candidates.push(dir.join(format!("config-{release}")));
    }
    candidates.push(dir.join("config"));
    candidates.into_iter().find(|p| p.is_file())
}

/// The configuration a kernel built with `CONFIG_IKCONFIG` carries inside itself
/// (gzipped between the markers `IKCFG_ST` and `IKCFG_ED`), found in an uncompressed
/// vmlinux: the fallback when no `.config` is beside the image.
///
/// ```
/// use std::io::Write;
/// let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
/// gz.write_all(b"CONFIG_FS_DAX=y\n").unwrap();
/// let mut image = b"\x7fELF...IKCFG_ST".to_vec();
/// image.extend(gz.finish().unwrap());
/// image.extend(b"IKCFG_ED...");
/// let c = pmcrash::setup::kconfig::embedded_config(&image).unwrap();
/// assert_eq!(c.get("CONFIG_FS_DAX"), Some("y"));
/// ```
pub fn embedded_config(image: &[u8]) -> Option<KernelConfig> {
    use std::io::Read;
    let start = image.windows(8).position(|w| w == b"IKCFG_ST")? + 8;
    let mut text = String::new();
    flate2::read::GzDecoder::new(&image[start..])
        .read_to_string(&mut text)
        .ok()?;
    Some(KernelConfig::parse(&text))
}

/// Checks the configuration at `config` and fails with every unmet option.
pub fn ensure_config(config: &Path, boot: Boot) -> Result<(), SetupError> {
    let unmet = check(&KernelConfig::read(config)?, boot);
    if unmet.is_empty() {
        Ok(())
    } else {
        Err(SetupError::KernelConfig {
            config: config.to_path_buf(),
            unmet,
        })
    }
}

/// True when the file at `image` is an ELF file (a vmlinux, not a bzImage).
pub fn is_elf(image: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    std::fs::File::open(image)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && &magic == b"\x7fELF"
}

/// The lines of an unmet list, one option a line.
pub fn render(unmet: &[Unmet]) -> String {
    unmet
        .iter()
        .map(|u| format!("  {u}"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    const VMLINUX: Boot = Boot {
        vmlinux: true,
        modules: true,
    };

    fn all_set() -> String {
        let mut s = String::new();
        for r in requirements(true) {
            match r.need {
                Need::AtLeast(n) => s.push_str(&format!("{}={n}\n", r.option)),
                _ => s.push_str(&format!("{}=y\n", r.option)),
            }
        }
        s
    }

    #[test]
    fn complete_config_passes() {
        assert!(check(&KernelConfig::parse(&all_set()), VMLINUX).is_empty());
    }

    #[test]
    fn names_every_unmet_option_with_the_value_it_needs() {
        let text = all_set()
            .replace("CONFIG_FS_DAX=y", "# CONFIG_FS_DAX is not set")
            .replace("CONFIG_BLK_DEV_PMEM=y", "CONFIG_BLK_DEV_PMEM=n")
            .replace("CONFIG_SERIAL_8250=y", "CONFIG_SERIAL_8250=m")
            .replace(
                "CONFIG_SERIAL_8250_RUNTIME_UARTS=2",
                "CONFIG_SERIAL_8250_RUNTIME_UARTS=1",
            )
            .replace("CONFIG_PVH=y\n", "");
        let unmet = check(&KernelConfig::parse(&text), VMLINUX);
        let lines: Vec<String> = unmet.iter().map(|u| u.to_string()).collect();
        assert_eq!(lines.len(), 5, "{lines:#?}");
        assert!(lines
            .iter()
            .any(|l| l.starts_with("CONFIG_FS_DAX is not set, needs =y")));
        assert!(lines
            .iter()
            .any(|l| l.starts_with("CONFIG_BLK_DEV_PMEM is not set, needs =y or =m")));
        assert!(lines
            .iter()
            .any(|l| l.starts_with("CONFIG_SERIAL_8250 is m, needs =y")));
        assert!(lines
            .iter()
            .any(|l| l.starts_with("CONFIG_SERIAL_8250_RUNTIME_UARTS is 1, needs >= 2")));
        assert!(lines.iter().any(|l| l.starts_with("CONFIG_PVH is not set")));
        // A bzImage does not need PVH.
        assert_eq!(
            check(&KernelConfig::parse(&text), Boot::BZIMAGE_WITH_MODULES).len(),
            4
        );
        // Without modules every =m is named too.
        let m = all_set().replace("CONFIG_XFS_FS=y", "CONFIG_XFS_FS=m");
        let unmet = check(
            &KernelConfig::parse(&m),
            Boot {
                vmlinux: true,
                modules: false,
            },
        );
        assert_eq!(unmet.len(), 1);
        assert!(
            unmet[0]
                .to_string()
                .starts_with("CONFIG_XFS_FS is m, needs =y"),
            "{}",
            unmet[0]
        );
    }

    #[test]
    fn finds_the_tree_config_and_the_packaged_one() {
        let d = tempfile::tempdir().unwrap();
        let boot = d.path().join("arch/x86/boot");
        std::fs::create_dir_all(&boot).unwrap();
        std::fs::write(boot.join("bzImage"), b"x").unwrap();
        assert_eq!(find_config(&boot.join("bzImage")), None);
        std::fs::write(d.path().join(".config"), b"").unwrap();
        assert_eq!(
            find_config(&boot.join("bzImage")),
            Some(d.path().join(".config"))
        );
        assert_eq!(
            find_config(&d.path().join("vmlinux")),
            Some(d.path().join(".config"))
        );
        let pkg = tempfile::tempdir().unwrap();
        std::fs::write(pkg.path().join("config-6.12.1-amd64"), b"").unwrap();
        assert_eq!(
            find_config(&pkg.path().join("vmlinuz-6.12.1-amd64")),
            Some(pkg.path().join("config-6.12.1-amd64"))
        );
    }
}
