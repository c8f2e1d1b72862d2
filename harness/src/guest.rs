//! Guests made to order: the fsdax template, the saved VM state every later guest is
//! restored from, and run images.
//!
//! The first guest of a (kernel, initramfs, file system, PM size, vCPUs) boots cold
//! (seconds under TCG), answers `ready`, and has its state saved with
//! `x-ignore-shared`, which leaves the NVDIMM out of the snapshot. Every later guest
//! restores that state with a fresh PM image in place (a fraction of a second). The
//! agent drops the kernel's caches of `/dev/pmem0` before mounting, so the restored
//! kernel sees the new image, not the one it booted with.

use crate::image::{self, ImageError};
use crate::setup::Assets;
use crate::vm::{PluginSpec, Start, Timeouts, Vm, VmError, VmSpec};
use crash_models::ops::FsKind;
use crash_models::protocol::{AgentMsg, HostMsg};
use std::fs::File;
use std::path::{Path, PathBuf};

/// Errors getting a guest.
#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    /// The VM failed.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// An image could not be made.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// Local I/O in the cache.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A background task (making an image) panicked or was cancelled.
    #[error("a guest task ended abnormally: {0}")]
    Task(#[source] tokio::task::JoinError),
    /// The guest booted but something it reported is wrong.
    #[error("{0}")]
    Guest(String),
}

impl From<crate::cache::FileError> for GuestError {
    fn from(e: crate::cache::FileError) -> GuestError {
        GuestError::Io {
            what: e.what,
            path: e.path,
            source: e.source,
        }
    }
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> GuestError {
    let path = path.to_path_buf();
    move |source| GuestError::Io { what, path, source }
}

/// Where the agent mounts the file system under test (`guest-agent`'s `MOUNT_POINT`):
/// programs run there.
pub const GUEST_MOUNT_POINT: &str = "/mnt";

/// Makes guests of one shape.
#[derive(Debug, Clone)]
pub struct GuestFactory {
    /// Kernel, initramfs, QEMU.
    pub assets: Assets,
    /// The file system the guests mount.
    pub fs: FsKind,
    /// PM size in bytes.
    pub pm_size: u64,
    /// vCPUs.
    pub smp: u32,
    /// Waits.
    pub timeouts: Timeouts,
    /// Trace in a deterministic guest (`-icount`, restored from a saved state made in
    /// the same mode, the whole run scripted so no host input reaches it): the same
    /// workload gives the same trace, record for record. Other guests (checkers,
    /// `run --no-check`) are not affected.
    pub deterministic_traces: bool,
    /// The bundle of users' programs every guest gets (`programs`), when the
    /// workload runs any.
    pub programs: Option<PathBuf>,
}

impl GuestFactory {
    /// A factory with the default PM size for `fs` and one vCPU.
    pub fn new(assets: Assets, fs: FsKind) -> GuestFactory {
        GuestFactory {
            assets,
            fs,
            pm_size: image::default_pm_size(fs),
            smp: 1,
            timeouts: Timeouts::default(),
            deterministic_traces: true,
            programs: None,
        }
    }

    fn initramfs(&self) -> Result<&Path, GuestError> {
        self.assets
            .initramfs
            .get(&self.fs)
            .map(PathBuf::as_path)
            .ok_or_else(|| {
                GuestError::Guest(format!("no initramfs for {}: run `pmcrash setup`", self.fs))
            })
    }

    /// The VM spec for a PM image.
    pub fn spec(&self, pm_image: &Path, plugin: Option<PluginSpec>) -> Result<VmSpec, GuestError> {
        self.spec_in(pm_image, plugin, false)
    }

    fn spec_in(
        &self,
        pm_image: &Path,
        plugin: Option<PluginSpec>,
        deterministic: bool,
    ) -> Result<VmSpec, GuestError> {
        Ok(VmSpec {
            qemu: self.assets.qemu.clone(),
            kernel: self.assets.kernel.clone(),
            initramfs: self.initramfs()?.to_path_buf(),
            pm_image: pm_image.to_path_buf(),
            pm_size: self.pm_size,
            smp: self.smp,
            plugin,
            extra_cmdline: vec![],
            deterministic,
            script: vec![],
            programs: self.programs.clone(),
        })
    }

    fn dir(&self, which: fn(&Path) -> PathBuf) -> Result<PathBuf, GuestError> {
        let d = which(&self.assets.cache_dir);
        crate::vm::private_dir(&d).map_err(io("create", &d))?;
        Ok(d)
    }

    /// The fsdax template for this kernel and PM size, made on first use by booting a
    /// guest on a blank NVDIMM and converting its namespace.
    pub async fn template(&self) -> Result<PathBuf, GuestError> {
        image::check_pm_size(self.fs, self.pm_size)?;
        let dir = self.dir(crate::cache::templates_dir)?;
        let path = dir.join(format!(
            "fsdax-{}-{}M.img",
            self.assets.kernel_release,
            self.pm_size >> 20
        ));
        if image::is_fsdax(&path) {
            return Ok(path);
        }
        let _lock = crate::cache::Lock::take(&path.with_extension("lock"))?;
        if image::is_fsdax(&path) {
            return Ok(path);
        }
        let tmp = path.with_extension("tmp");
        image::blank(&tmp, self.pm_size)?;
        let spec = self.spec(&tmp, None)?;
        let mut vm = Vm::start(&spec, Start::Cold, &self.timeouts).await?;
        vm.request(&HostMsg::ConvertFsdax, self.timeouts.request)
            .await?;
        vm.shutdown(self.timeouts.shutdown).await?;
        if !image::is_fsdax(&tmp) {
            return Err(GuestError::Guest(format!(
                "the fsdax conversion left no pfn info block in {}",
                tmp.display()
            )));
        }
        crate::cache::publish(&tmp, &path)?;
        Ok(path)
    }

    /// The saved state every guest of this shape is restored from; booted and saved on
    /// first use.
    pub async fn saved_state(&self) -> Result<PathBuf, GuestError> {
        self.saved_state_in(false).await
    }

    /// The saved state of deterministic guests (booted with `-icount`: a state saved
    /// without it does not restore with it, and the agent must know the mode).
    pub async fn saved_state_in(&self, deterministic: bool) -> Result<PathBuf, GuestError> {
        let template = self.template().await?;
        let dir = self.dir(crate::cache::vm_states_dir)?;
        let path = dir.join(format!(
            "{}-{}-{}M-smp{}{}.state",
            self.assets.id,
            self.fs,
            self.pm_size >> 20,
            self.smp,
            if deterministic { "-icount" } else { "" }
        ));
        if path.exists() {
            return Ok(path);
        }
        let _lock = crate::cache::Lock::take(&path.with_extension("lock"))?;
        if path.exists() {
            return Ok(path);
        }
        // Boot on a throwaway copy: the snapshot must not depend on any run image.
        let scratch = crate::scratch::run_dir_in(&dir, crate::scratch::BOOT_PREFIX)
            .map_err(io("create", &dir))?;
        let pm = scratch.path().join("pm.img");
        image::blank(&pm, self.pm_size)?;
        image::copy_sparse(
            &template,
            0,
            &File::options()
                .write(true)
                .open(&pm)
                .map_err(io("open", &pm))?,
            0,
        )?;
        let spec = self.spec_in(&pm, None, deterministic)?;
        let mut vm = Vm::start(&spec, Start::Cold, &self.timeouts).await?;
        let tmp = path.with_extension("tmp");
        vm.save_state(&tmp, self.timeouts.save).await?;
        vm.quit().await;
        crate::cache::publish(&tmp, &path)?;
        Ok(path)
    }

    /// Make a run image at `out` (template + a fresh file system).
    pub async fn make_image(&self, out: &Path) -> Result<(), GuestError> {
        let template = self.template().await?;
        let fs = self.fs;
        let out = out.to_path_buf();
        tokio::task::spawn_blocking(move || image::make_fs_image(&template, fs, &out))
            .await
            .map_err(GuestError::Task)??;
        Ok(())
    }

    /// A guest running on `pm_image`, restored from the saved state, caches dropped,
    /// ready for `mount`.
    pub async fn start(
        &self,
        pm_image: &Path,
        plugin: Option<PluginSpec>,
    ) -> Result<Vm, GuestError> {
        let state = self.saved_state().await?;
        let spec = self.spec(pm_image, plugin)?;
        let mut vm = Vm::start(&spec, Start::Restore(state), &self.timeouts).await?;
        vm.request(&HostMsg::Refresh, self.timeouts.request).await?;
        Ok(vm)
    }

    /// A deterministic guest on `pm_image` that runs `script` by itself from the
    /// instant it is restored, with no host input: the requests made with
    /// [`Vm::request`] must be the script's, in order, and only read the answers. The
    /// script must begin with [`HostMsg::Refresh`] (this sends it).
    pub async fn start_scripted(
        &self,
        pm_image: &Path,
        plugin: Option<PluginSpec>,
        script: Vec<HostMsg>,
    ) -> Result<Vm, GuestError> {
        if script.first() != Some(&HostMsg::Refresh) {
            return Err(GuestError::Guest(
                "a guest script must begin with refresh".into(),
            ));
        }
        let state = self.saved_state_in(true).await?;
        let mut spec = self.spec_in(pm_image, plugin, true)?;
        spec.script = script;
        let mut vm = Vm::start(&spec, Start::Restore(state), &self.timeouts).await?;
        vm.request(&HostMsg::Refresh, self.timeouts.request).await?;
        Ok(vm)
    }

    /// A guest booted cold on `pm_image` (for comparisons and for kernels whose state
    /// cannot be saved).
    pub async fn start_cold(
        &self,
        pm_image: &Path,
        plugin: Option<PluginSpec>,
    ) -> Result<Vm, GuestError> {
        let spec = self.spec(pm_image, plugin)?;
        Ok(Vm::start(&spec, Start::Cold, &self.timeouts).await?)
    }

    /// Mount the file system with `-o dax` and insist that DAX is really on.
    pub async fn mount(&self, vm: &mut Vm) -> Result<u64, GuestError> {
        let (_, reply) = vm
            .request(
                &HostMsg::Mount {
                    fs: self.fs,
                    options: vec![],
                },
                self.timeouts.request,
            )
            .await?;
        match reply {
            AgentMsg::Mounted { dax: true, millis } => Ok(millis),
            AgentMsg::Mounted { dax: false, .. } => Err(GuestError::Guest(format!(
                "{} mounted without DAX; console:\n{}",
                self.fs,
                vm.console_tail(20)
            ))),
            other => Err(GuestError::Guest(format!(
                "expected mounted, got {other:?}"
            ))),
        }
    }
}
