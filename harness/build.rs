//! Builds the guest agent (`pmcrash-agent`) as a static binary and leaves it at
//! `$OUT_DIR/pmcrash-agent`, where `setup::AGENT_ELF` embeds it.
//!
//! The agent is PID 1 in a guest that has no libc, no loader and no shell, so it must be
//! linked statically (`+crt-static`), and the harness must carry it so that `pmcrash setup`
//! needs nothing but the one `pmcrash` binary.
//!
//! A nested `cargo build` runs with its own `--target-dir` under `$OUT_DIR`: the outer
//! build holds the lock on its own target directory, so sharing it would deadlock.
//!
//! `PMCRASH_AGENT_BIN=/path/to/pmcrash-agent` skips the nested build and embeds that file
//! instead (for packagers and for builds without network access to crates).
//!
//! It also builds the tracer plugin (`pmcrash-tracer`, a host cdylib that QEMU loads) into
//! `$OUT_DIR/libpmcrash_tracer.so`, where `trace::TRACER_PLUGIN` points, so the harness
//! finds it without extra steps; `PMCRASH_TRACER_SO=/path/to/libpmcrash_tracer.so` skips
//! that nested build the same way.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const TRIPLE: &str = "x86_64-unknown-linux-gnu";

fn main() {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let workspace = manifest_dir
        .parent()
        .expect("harness/ lives inside the workspace")
        .to_path_buf();
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR"));
    let dest = out_dir.join("pmcrash-agent");

    println!("cargo:rerun-if-env-changed=PMCRASH_AGENT_BIN");
    println!("cargo:rerun-if-changed=build.rs");
    build_tracer(&workspace, &out_dir);
    if let Some(prebuilt) = env::var_os("PMCRASH_AGENT_BIN") {
        let prebuilt = PathBuf::from(prebuilt);
        println!("cargo:rerun-if-changed={}", prebuilt.display());
        check_static(&prebuilt);
        copy(&prebuilt, &dest);
        return;
    }

    let agent_target = out_dir.join("agent-target");
    nested_build(
        &workspace,
        "pmcrash-agent",
        "guest-agent",
        &agent_target,
        Some(TRIPLE),
        // With an explicit --target these flags reach only the agent, not build scripts
        // or proc macros (which cannot be linked statically).
        &[("RUSTFLAGS", "-C target-feature=+crt-static")],
    );
    let built = agent_target
        .join(TRIPLE)
        .join("release")
        .join("pmcrash-agent");
    check_static(&built);
    copy(&built, &dest);
}

/// `cargo build --release -p PACKAGE` in its own target dir, rebuilt when the package
/// (in `dir`), crash-models or the workspace manifests change. Panics with the package
/// named when the build fails: a build script has no other way to fail.
fn nested_build(
    workspace: &Path,
    package: &str,
    dir: &str,
    target_dir: &Path,
    triple: Option<&str>,
    vars: &[(&str, &str)],
) {
    for rel in [
        &format!("{dir}/src"),
        &format!("{dir}/Cargo.toml"),
        "crash-models/src",
        "crash-models/Cargo.toml",
        "Cargo.toml",
        "Cargo.lock",
    ] {
        println!("cargo:rerun-if-changed={}", workspace.join(rel).display());
    }
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.arg("build")
        .arg("--release")
        .args(["-p", package])
        .arg("--target-dir")
        .arg(target_dir)
        .arg("--manifest-path")
        .arg(workspace.join("Cargo.toml"));
    if let Some(t) = triple {
        cmd.args(["--target", t]);
    }
    scrub_env(&mut cmd);
    // Debug info would only make the initramfs and the plugin bigger; symbols stay so
    // panics name functions.
    cmd.env("CARGO_PROFILE_RELEASE_STRIP", "debuginfo");
    cmd.env("CARGO_PROFILE_RELEASE_DEBUG", "false");
    for (k, v) in vars {
        cmd.env(k, v);
    }
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("cannot run cargo to build {package}: {e}"));
    if !status.success() {
        panic!("building {package} failed: {status}");
    }
}

/// Clears the outer build's environment from a nested cargo command.
fn scrub_env(cmd: &mut Command) {
    // Cargo hands build scripts many variables describing the *outer* build (its profile,
    // features, target dir, flags, jobserver). Left in place they would leak into the nested
    // build: a CARGO_TARGET_DIR would point it at the locked outer directory, RUSTFLAGS from a
    // coverage or sanitizer build would break the static link, a RUSTC_WRAPPER could
    // serialise on the outer build. Keep only what configures cargo itself (home, network,
    // registries, terminal).
    for (key, _) in env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        let keep = [
            "CARGO_HOME",
            "CARGO_NET_",
            "CARGO_HTTP_",
            "CARGO_REGISTRIES_",
            "CARGO_REGISTRY_",
            "CARGO_TERM_",
        ]
        .iter()
        .any(|p| key.starts_with(p));
        let drop = (key.starts_with("CARGO_") && !keep)
            || matches!(
                key,
                "RUSTFLAGS"
                    | "RUSTDOCFLAGS"
                    | "RUSTC_WRAPPER"
                    | "RUSTC_WORKSPACE_WRAPPER"
                    | "RUSTC_LINKER"
                    | "TARGET"
                    | "HOST"
                    | "OUT_DIR"
                    | "PROFILE"
                    | "OPT_LEVEL"
                    | "DEBUG"
                    | "NUM_JOBS"
                    | "MAKEFLAGS"
                    | "MFLAGS"
            );
        if drop {
            cmd.env_remove(key);
        }
    }
}

/// Builds the tracer plugin for the host into `$OUT_DIR/libpmcrash_tracer.so`.
fn build_tracer(workspace: &Path, out_dir: &Path) {
    let dest = out_dir.join("libpmcrash_tracer.so");
    println!("cargo:rerun-if-env-changed=PMCRASH_TRACER_SO");
    if let Some(prebuilt) = env::var_os("PMCRASH_TRACER_SO") {
        let prebuilt = PathBuf::from(prebuilt);
        println!("cargo:rerun-if-changed={}", prebuilt.display());
        copy(&prebuilt, &dest);
        return;
    }
    // Its own target dir: the agent's is built with +crt-static for another purpose, and
    // sharing would make each build invalidate the other's artefacts. A plugin is
    // dlopen()ed by QEMU: no static CRT.
    let tracer_target = out_dir.join("tracer-target");
    nested_build(
        workspace,
        "pmcrash-tracer",
        "tracer",
        &tracer_target,
        None,
        &[],
    );
    copy(
        &tracer_target.join("release").join("libpmcrash_tracer.so"),
        &dest,
    );
}

fn copy(from: &Path, to: &Path) {
    let tmp = to.with_extension("tmp");
    fs::copy(from, &tmp)
        .unwrap_or_else(|e| panic!("copy {} -> {}: {e}", from.display(), tmp.display()));
    fs::rename(&tmp, to).unwrap_or_else(|e| panic!("rename {}: {e}", to.display()));
}

/// Fails the build when the agent has a program interpreter (PT_INTERP): a dynamically
/// linked PID 1 would die at once in the guest with no loader, and the cause would be
/// invisible (the kernel just panics "No working init found").
fn check_static(path: &Path) {
    let data = fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    assert!(
        data.len() >= 64 && &data[..4] == b"\x7fELF" && data[4] == 2 && data[5] == 1,
        "{} is not a 64-bit little-endian ELF file",
        path.display()
    );
    let u16_at = |o: usize| u16::from_le_bytes([data[o], data[o + 1]]) as usize;
    let u64_at = |o: usize| u64::from_le_bytes(data[o..o + 8].try_into().unwrap()) as usize;
    let phoff = u64_at(0x20);
    let phentsize = u16_at(0x36);
    let phnum = u16_at(0x38);
    for i in 0..phnum {
        let off = phoff + i * phentsize;
        let p_type = u32::from_le_bytes(data[off..off + 4].try_into().unwrap());
        const PT_INTERP: u32 = 3;
        assert!(
            p_type != PT_INTERP,
            "{} is dynamically linked (has PT_INTERP); the guest has no loader: build it with \
             RUSTFLAGS='-C target-feature=+crt-static'",
            path.display()
        );
    }
}
