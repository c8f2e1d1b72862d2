//! The kernel's configuration is checked before any boot: Debian's kernel passes, and
//! a copy of it with `CONFIG_FS_DAX` and `CONFIG_BLK_DEV_PMEM` turned off makes `setup`,
//! `doctor` and `run` exit 2 naming both options, with the value each needs.

use pmcrash::setup::kconfig::{self, KernelConfig};
use pmcrash::setup::{self, SetupOptions};
use std::path::{Path, PathBuf};
use std::process::Command;

fn pmcrash() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pmcrash"))
}

/// The unpacked Debian kernel package (provisioned on demand): `(boot, modules)`.
fn debian_kernel() -> (PathBuf, PathBuf) {
    let opts = SetupOptions::default();
    let assets = setup::ensure(&opts).unwrap_or_else(|e| {
        panic!("the guest platform is not provisioned: {e}\n(run `cargo run -- setup` as root)")
    });
    let tree = assets.kernel.parent().unwrap().join("tree");
    (
        tree.join("boot"),
        tree.join("lib/modules").join(&assets.kernel_release),
    )
}

fn file_starting(dir: &Path, prefix: &str) -> PathBuf {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with(prefix))
        .unwrap_or_else(|| panic!("no {prefix}* in {}", dir.display()))
}

#[test]
fn debian_kernel_config_passes() {
    let (boot_dir, _) = debian_kernel();
    let config = file_starting(&boot_dir, "config-");
    let cfg = KernelConfig::read(&config).unwrap();
    // As a bzImage and as the PVH vmlinux extracted from it.
    for vmlinux in [false, true] {
        let boot = kconfig::Boot {
            vmlinux,
            modules: true,
        };
        assert_eq!(kconfig::check(&cfg, boot), vec![]);
    }
    // Without its modules, Debian's kernel lacks what it builds as modules.
    let boot = kconfig::Boot {
        vmlinux: false,
        modules: false,
    };
    let unmet: Vec<String> = kconfig::check(&cfg, boot)
        .iter()
        .map(|u| u.option.clone())
        .collect();
    assert!(
        unmet.contains(&"CONFIG_BLK_DEV_PMEM".to_owned()),
        "{unmet:?}"
    );
    assert_eq!(
        kconfig::find_config(&file_starting(&boot_dir, "vmlinuz-")),
        Some(config)
    );
}

#[test]
fn missing_fs_dax_and_pmem_exit_2_naming_both() {
    let (boot, modules) = debian_kernel();
    let dir = tempfile::tempdir().unwrap();
    let vmlinuz = file_starting(&boot, "vmlinuz-");
    let image = dir.path().join(vmlinuz.file_name().unwrap());
    std::fs::copy(&vmlinuz, &image).unwrap();
    let config = file_starting(&boot, "config-");
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.contains("\nCONFIG_FS_DAX=y\n") && text.contains("\nCONFIG_BLK_DEV_PMEM=m\n"));
    let broken = text
        .replace("\nCONFIG_FS_DAX=y\n", "\n# CONFIG_FS_DAX is not set\n")
        .replace(
            "\nCONFIG_BLK_DEV_PMEM=m\n",
            "\n# CONFIG_BLK_DEV_PMEM is not set\n",
        );
    std::fs::write(dir.path().join(config.file_name().unwrap()), broken).unwrap();
    let cache = dir.path().join("cache");
    for cmd in [vec!["setup"], vec!["doctor"], vec!["run", "--points", "op"]] {
        let mut c = pmcrash();
        c.args(&cmd);
        if cmd[0] == "run" {
            c.arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../corpora/smoke/basic.toml"
            ));
        }
        let out = c
            .arg("--no-install")
            .arg("--cache")
            .arg(&cache)
            .arg("--kernel")
            .arg(&image)
            .arg("--modules")
            .arg(&modules)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.status.code(), Some(2), "{cmd:?}: {text}");
        assert!(
            text.contains("CONFIG_FS_DAX is not set, needs =y"),
            "{cmd:?}: {text}"
        );
        assert!(
            text.contains("CONFIG_BLK_DEV_PMEM is not set, needs =y or =m"),
            "{cmd:?}: {text}"
        );
    }
    // Nothing was booted: no saved VM state or template was made.
    assert!(!cache.join("states").exists() && !cache.join("templates").exists());
}

/// A kernel build tree as `make` and `make modules_install INSTALL_MOD_PATH=<tree>`
/// leave it, made of Debian's package: `--kernel-tree` finds the bzImage, the
/// `.config` and the modules; a tree without a `.config` is refused before anything.
#[test]
fn kernel_tree_is_found_and_checked() {
    let (boot, modules) = debian_kernel();
    let release = modules.file_name().unwrap().to_owned();
    let tree = tempfile::tempdir().unwrap();
    let t = tree.path();
    std::fs::create_dir_all(t.join("arch/x86/boot")).unwrap();
    std::fs::create_dir_all(t.join("include/config")).unwrap();
    std::fs::create_dir_all(t.join("lib/modules")).unwrap();
    std::fs::copy(
        file_starting(&boot, "vmlinuz-"),
        t.join("arch/x86/boot/bzImage"),
    )
    .unwrap();
    std::os::unix::fs::symlink(&modules, t.join("lib/modules").join(&release)).unwrap();
    std::fs::write(
        t.join("include/config/kernel.release"),
        format!("{}\n", release.to_string_lossy()),
    )
    .unwrap();
    let doctor = |cache: &Path| {
        pmcrash()
            .args(["doctor", "--no-install", "--cache"])
            .arg(cache)
            .arg("--kernel-tree")
            .arg(t)
            .output()
            .unwrap()
    };
    let cache = t.join("cache");
    let out = doctor(&cache);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no .config: configure and build the kernel first"),
        "{err}"
    );

    std::fs::copy(file_starting(&boot, "config-"), t.join(".config")).unwrap();
    let opts = SetupOptions {
        cache_dir: cache.clone(),
        ..SetupOptions::default()
    }
    .with_kernel_tree(t)
    .unwrap();
    assert_eq!(
        opts.kernel.as_deref(),
        Some(&*t.join("arch/x86/boot/bzImage"))
    );
    assert_eq!(
        opts.modules.as_deref(),
        Some(&*t.join("lib/modules").join(&release))
    );
    let assets = setup::ensure(&opts).unwrap();
    assert_eq!(assets.kernel_release, release.to_string_lossy());
    let out = doctor(&cache);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("[ok  ] kernel config"), "{text}");
}

/// A tree without `modules_install`: the modules come straight from the tree's `.ko`
/// files (and its `modules.builtin`). Made of the modules Debian's guests load, the
/// assets are exactly Debian's: the same vmlinux, the same initramfs files.
#[test]
fn kernel_tree_modules_straight_from_the_tree() {
    use pmcrash::setup::modules::{resolve_tree, roots, ModuleTree};
    let (boot, modules) = debian_kernel();
    let debian = setup::ensure(&SetupOptions::default()).unwrap();
    let tree = tempfile::tempdir().unwrap();
    let t = tree.path();
    std::fs::create_dir_all(t.join("arch/x86/boot")).unwrap();
    std::fs::copy(
        file_starting(&boot, "vmlinuz-"),
        t.join("arch/x86/boot/bzImage"),
    )
    .unwrap();
    std::fs::copy(file_starting(&boot, "config-"), t.join(".config")).unwrap();
    std::fs::copy(modules.join("modules.builtin"), t.join("modules.builtin")).unwrap();
    let full = ModuleTree::scan(&modules).unwrap();
    for fs in pmcrash::setup::FsKind::ALL {
        for m in resolve_tree(&full, roots(fs)).unwrap().order {
            let from = &full.files[&m.name];
            let rel = from.strip_prefix(&modules).unwrap();
            std::fs::create_dir_all(t.join(rel).parent().unwrap()).unwrap();
            std::fs::copy(from, t.join(rel)).unwrap();
        }
    }
    let opts = SetupOptions {
        cache_dir: t.join("cache"),
        ..SetupOptions::default()
    }
    .with_kernel_tree(t)
    .unwrap();
    assert_eq!(opts.modules.as_deref(), Some(t));
    let assets = setup::ensure(&opts).unwrap();
    assert_eq!(assets.kernel_release, debian.kernel_release);
    assert_eq!(assets.id, debian.id);
}
