//! Users' programs for the guest: each `exec` op's binary and each user checker, with
//! the dynamic loader and `DT_NEEDED` closure of the dynamic ones (`elf`), packed as
//! one `crash_models::programs::Bundle` that every guest of the workload gets through
//! `fw_cfg` (`vm::VmSpec::programs`; why `fw_cfg`: `crash_models::programs`).
//!
//! Bundles are content-addressed in the cache (`programs/<blake3>.bundle`), so the
//! same programs make the same file and a guest restored later reads the same bytes.

use crash_models::ops::Op;
use crash_models::programs::{Bundle, BundleFile, GUEST_BIN_DIR};
use std::path::{Path, PathBuf};

/// A program that cannot be shipped into the guest.
#[derive(Debug, thiserror::Error)]
pub enum ProgramError {
    /// The program is not a file on the host.
    #[error("program `{program}`: {reason}")]
    Missing {
        /// As the workload names it.
        program: String,
        /// Why.
        reason: String,
    },
    /// It, or a library it needs, cannot be read or found.
    #[error("program `{program}`: {source} (the guest gets the host's own libraries: install what the program needs on the host)")]
    Elf {
        /// As the workload names it.
        program: String,
        /// What is wrong.
        #[source]
        source: crate::elf::ElfError,
    },
    /// The bundle could not be written.
    #[error(transparent)]
    File(#[from] crate::cache::FileError),
}

/// The programs a workload runs (`exec` ops, then user checkers), each once.
pub fn programs_of(workload: &crash_models::ops::Workload) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let execs = workload.ops.iter().filter_map(|op| match op {
        Op::Exec { program, .. } => Some(program),
        _ => None,
    });
    for program in execs.chain(workload.checkers.iter().map(|c| &c.program)) {
        if !out.contains(program) {
            out.push(program.clone());
        }
    }
    out
}

/// The bundle of `programs` (as workloads name them: host paths, relative ones to the
/// current directory).
pub fn bundle(programs: &[String]) -> Result<Bundle, ProgramError> {
    let mut b = Bundle::default();
    for (i, program) in programs.iter().enumerate() {
        let host = PathBuf::from(program);
        if !host.is_file() {
            return Err(ProgramError::Missing {
                program: program.clone(),
                reason: format!(
                    "no such file (looked for {})",
                    std::path::absolute(&host).unwrap_or(host.clone()).display()
                ),
            });
        }
        let closure =
            crate::elf::needed_closure(&host, crate::elf::LIBRARY_DIRS).map_err(|source| {
                ProgramError::Elf {
                    program: program.clone(),
                    source,
                }
            })?;
        for (j, (guest, from)) in closure.into_iter().enumerate() {
            let path = if j == 0 {
                let name = host
                    .file_name()
                    .map_or("program".into(), |n| n.to_string_lossy());
                format!("{GUEST_BIN_DIR}/{i}/{name}")
            } else {
                format!("/{guest}")
            };
            if j == 0 {
                b.programs.insert(program.clone(), path.clone());
            }
            if b.files.iter().any(|f| f.path == path) {
                continue;
            }
            let data = std::fs::read(&from).map_err(|source| ProgramError::Elf {
                program: program.clone(),
                source: crate::elf::ElfError::Io {
                    path: from.clone(),
                    source,
                },
            })?;
            b.files.push(BundleFile {
                path,
                mode: 0o755,
                data,
            });
        }
    }
    Ok(b)
}

/// Write the bundle of `programs` into the cache; `None` when there are none.
pub fn write_bundle(cache: &Path, programs: &[String]) -> Result<Option<PathBuf>, ProgramError> {
    if programs.is_empty() {
        return Ok(None);
    }
    let bytes = bundle(programs)?.encode();
    let hash = blake3::hash(&bytes).to_hex();
    let path = cache.join("programs").join(format!("{hash}.bundle"));
    if !path.is_file() {
        crate::cache::write_atomic(&path, &bytes)?;
    }
    Ok(Some(path))
}

/// Give every guest `factory` starts from now on the programs of `workload` (none when
/// it runs none): `pmcrash trace` and `run --no-check`; the pipeline does its own.
pub fn ship(
    factory: &mut crate::guest::GuestFactory,
    workload: &crash_models::ops::Workload,
) -> Result<(), ProgramError> {
    factory.programs = write_bundle(&factory.assets.cache_dir, &programs_of(workload))?;
    Ok(())
}

/// The `exec` ops of a traced run whose program did not exit with 0, each in words
/// with the end of what it printed: a workload's program that fails (or hangs until
/// its timeout) makes its crash states meaningless, so the run stops with these.
pub fn failures(ops: &[Op], results: &[crash_models::protocol::OpResult]) -> Vec<String> {
    use crash_models::protocol::OpDetail;
    let mut out = Vec::new();
    for r in results {
        let Some(Op::Exec {
            program,
            timeout_ms,
            ..
        }) = ops.get(r.index)
        else {
            continue;
        };
        let OpDetail::Exec {
            code,
            timed_out,
            stdout,
            stderr,
        } = &r.detail
        else {
            out.push(format!(
                "ops[{}] exec `{program}`: no result from the guest",
                r.index
            ));
            continue;
        };
        let what = match (code, timed_out) {
            (_, true) => format!("timed out after {timeout_ms} ms (guest time) and was killed"),
            (Some(0), false) => continue,
            (Some(c), false) => format!("exited with {c}"),
            (None, false) if r.errno == Some(libc::ENOEXEC) => "could not start".to_owned(),
            (None, false) => "was killed by a signal".to_owned(),
        };
        let tail = |s: &str| {
            let s = s.trim_end();
            let cut = s.len().saturating_sub(2000);
            let cut = (cut..=s.len())
                .find(|i| s.is_char_boundary(*i))
                .unwrap_or(s.len());
            s[cut..].to_owned()
        };
        let mut msg = format!("ops[{}] exec `{program}` {what}", r.index);
        if !stdout.trim().is_empty() {
            msg.push_str(&format!("; stdout:\n{}", tail(stdout)));
        }
        if !stderr.trim().is_empty() {
            msg.push_str(&format!("; stderr:\n{}", tail(stderr)));
        }
        out.push(msg);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dynamic_program_brings_its_loader_and_libc() {
        let sh = "/bin/sh".to_owned();
        let b = bundle(std::slice::from_ref(&sh)).unwrap();
        assert_eq!(b.programs[&sh], format!("{GUEST_BIN_DIR}/0/sh"));
        let paths: Vec<&str> = b.files.iter().map(|f| f.path.as_str()).collect();
        assert!(paths.contains(&"/lib64/ld-linux-x86-64.so.2"), "{paths:?}");
        assert!(paths.iter().any(|p| p.ends_with("/libc.so.6")), "{paths:?}");
    }

    #[test]
    fn a_missing_shared_library_is_named() {
        // /bin/true asking for a libc that no host has.
        let mut elf = std::fs::read("/bin/true").unwrap();
        let from = b"libc.so.6\0";
        let at = elf
            .windows(from.len())
            .position(|w| w == from)
            .expect("/bin/true needs libc.so.6");
        elf[at..at + from.len()].copy_from_slice(b"libq.so.6\0");
        let dir = tempfile::tempdir().unwrap();
        let prog = dir.path().join("true");
        std::fs::write(&prog, &elf).unwrap();
        let name = prog.display().to_string();
        let e = bundle(std::slice::from_ref(&name)).unwrap_err().to_string();
        assert!(
            e.contains(&name) && e.contains("needs libq.so.6") && e.contains("install"),
            "{e}"
        );
    }

    #[test]
    fn a_missing_program_is_named() {
        let e = bundle(&["/no/such/prog".to_owned()])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/no/such/prog") && e.contains("no such file"),
            "{e}"
        );
    }
}
