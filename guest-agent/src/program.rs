//! User programs in the guest: the `exec` op and user checkers.
//!
//! The harness ships each workload's programs (and the loaders and libraries of
//! dynamic ones) as one `fw_cfg` file (`crash_models::programs`), read and unpacked
//! into the RAM root on first use. A program runs with the mount point as its working
//! directory, exactly the environment the op gives, no standard input, its output in
//! files on the tmpfs (no pipe a chatty program could fill), killed at its timeout.

use crash_models::programs::{Bundle, FW_CFG_NAME};
use crash_models::protocol::{OpDetail, MAX_PROGRAM_OUTPUT};
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The unpacked bundle: each program's path in the guest, or why there is none.
static PROGRAMS: OnceLock<Result<BTreeMap<String, String>, String>> = OnceLock::new();

fn unpack() -> Result<BTreeMap<String, String>, String> {
    let bytes = crate::sys::fw_cfg_file(FW_CFG_NAME).ok_or_else(|| {
        format!("no `{FW_CFG_NAME}` in fw_cfg: the harness shipped no programs to this guest")
    })?;
    let bundle = Bundle::decode(&bytes).map_err(|e| e.to_string())?;
    for f in &bundle.files {
        let path = std::path::Path::new(&f.path);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
        }
        std::fs::write(path, &f.data).map_err(|e| format!("write {}: {e}", f.path))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(f.mode))
            .map_err(|e| format!("chmod {}: {e}", f.path))?;
    }
    Ok(bundle.programs)
}

/// How a bounded child ended.
pub struct Ended {
    /// Its exit status; `None` when waiting for it failed after the kill.
    pub status: Option<ExitStatus>,
    /// It ran past the timeout and was killed.
    pub timed_out: bool,
    /// Its standard output (the end, at most `max` bytes).
    pub stdout: String,
    /// Its standard error (when kept apart; else empty).
    pub stderr: String,
}

/// Run `cmd` with its output in `/tmp/NAME.out` (and `.err` when `split`, else both
/// in one file), kill it at `timeout`, keep the last `max` bytes of each.
pub fn run_bounded(
    cmd: &mut Command,
    name: &str,
    split: bool,
    timeout: Duration,
    max: usize,
) -> Result<Ended, String> {
    let out_path = format!("/tmp/{name}.out");
    let err_path = format!("/tmp/{name}.err");
    let out = std::fs::File::create(&out_path).map_err(|e| format!("create {out_path}: {e}"))?;
    let err = if split {
        std::fs::File::create(&err_path).map_err(|e| format!("create {err_path}: {e}"))?
    } else {
        out.try_clone()
            .map_err(|e| format!("dup the output file: {e}"))?
    };
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("spawn {:?}: {e}", cmd.get_program()))?;
    let until = Instant::now() + timeout;
    let mut timed_out = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) if Instant::now() >= until => {
                timed_out = true;
                let _ = child.kill();
                break child.wait().ok();
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(1)),
            Err(e) => return Err(format!("wait for {:?}: {e}", cmd.get_program())),
        }
    };
    let tail = |p: &str| {
        let bytes = std::fs::read(p).unwrap_or_default();
        let _ = std::fs::remove_file(p);
        String::from_utf8_lossy(&bytes[bytes.len().saturating_sub(max)..]).into_owned()
    };
    Ok(Ended {
        status,
        timed_out,
        stdout: tail(&out_path),
        stderr: if split {
            tail(&err_path)
        } else {
            String::new()
        },
    })
}

/// Run the shipped program `program` (as the op names it) in `cwd`; the errno of the
/// op (`ETIMEDOUT` at the timeout, `ENOEXEC` when it could not start: the reason is
/// then its standard error) and what it did.
pub fn run(
    program: &str,
    args: &[String],
    env: &BTreeMap<String, String>,
    cwd: &str,
    timeout: Duration,
) -> (Option<i32>, OpDetail) {
    let failed = |why: String| {
        (
            Some(libc::ENOEXEC),
            OpDetail::Exec {
                code: None,
                timed_out: false,
                stdout: String::new(),
                stderr: format!("pmcrash-agent: {why}"),
            },
        )
    };
    let programs = match PROGRAMS.get_or_init(unpack) {
        Ok(p) => p,
        Err(e) => return failed(e.clone()),
    };
    let Some(path) = programs.get(program) else {
        return failed(format!("`{program}` is not in the shipped programs"));
    };
    let mut cmd = Command::new(path);
    cmd.args(args).env_clear().envs(env).current_dir(cwd);
    match run_bounded(&mut cmd, "program", true, timeout, MAX_PROGRAM_OUTPUT) {
        Ok(e) => (
            e.timed_out.then_some(libc::ETIMEDOUT),
            OpDetail::Exec {
                code: e.status.and_then(|s| s.code()),
                timed_out: e.timed_out,
                stdout: e.stdout,
                stderr: e.stderr,
            },
        ),
        Err(e) => failed(e),
    }
}
