//! `pmcrash shell` and `pmcrash minimize` on a real bundle, with real guests.
//!
//! The shell test types into the shell as a person would (stdin and stdout piped)
//! and checks that the recovered file is there; QEMU must be gone afterwards. A guard
//! kills pmcrash (and with it QEMU) if the guest never answers, and fails saying so:
//! it is a hang detector, not a time limit on the test.

use serde_json::Value;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Long enough for a cold TCG boot on a loaded 2-core machine many times over.
const HANG_GUARD: Duration = Duration::from_secs(600);

fn pmcrash() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pmcrash"))
}

fn corpus(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../corpora/lsfmm2016")
        .join(name)
}

fn json(out: &std::process::Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// `run --save` of one LSFMM workload on ext4; (the run's report, the bundle).
fn saved_run(dir: &Path, workload: &str, extra: &[&str]) -> (Value, PathBuf) {
    let save = dir.join("bundles");
    let out = pmcrash()
        .args(["run", "--json", "--fs", "ext4", "--save"])
        .arg(&save)
        .args(extra)
        .arg(corpus(workload))
        .output()
        .unwrap();
    assert!(matches!(out.status.code(), Some(0 | 1)), "{out:?}");
    let bundle = save.join(workload.trim_end_matches(".toml"));
    assert!(
        bundle.join("manifest.json").is_file(),
        "no bundle in {save:?}"
    );
    (json(&out), bundle)
}

fn finding<'a>(report: &'a Value, verdict: &str) -> &'a Value {
    report["workloads"][0]["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["verdict"] == verdict)
        .unwrap_or_else(|| panic!("no {verdict} finding in {report}"))
}

/// Processes whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut out = vec![];
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(c) = std::fs::read(e.path().join("cmdline")) {
            let c = String::from_utf8_lossy(&c).replace('\0', " ");
            if c.contains(needle) && c.contains("qemu") {
                out.push(format!("{}: {c}", e.file_name().to_string_lossy()));
            }
        }
    }
    out
}

#[test]
fn shell_and_the_exported_command_line_list_the_recovered_file() {
    let dir = tempfile::tempdir().unwrap();
    let (saved, bundle) = saved_run(
        dir.path(),
        "01-shared-flush-no-fsync.toml",
        &["--points", "op"],
    );
    let id = finding(&saved, "unsafe-flush-only")["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let image = dir.path().join("shell.img");
    let mut cmd = pmcrash();
    cmd.arg("shell")
        .arg(&bundle)
        .arg(&id)
        .arg("--keep-image")
        .arg(&image);
    let console = type_into_shell(cmd);
    assert!(image.is_file(), "--keep-image left no image");
    let left = processes_mentioning(&image.display().to_string());
    assert!(left.is_empty(), "QEMU left behind: {left:?}");
    drop(console);

    // The command line `export` prints boots the same shell.
    let exported = dir.path().join("crash.img");
    let out = pmcrash()
        .args(["export", "--json"])
        .arg(&bundle)
        .arg(&id)
        .arg("-o")
        .arg(&exported)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let qemu = json(&out)["qemu"].as_str().unwrap().to_owned();
    assert!(qemu.contains("shell-"), "not the shell initramfs: {qemu}");
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(format!("exec {qemu}"));
    type_into_shell(cmd);
    let left = processes_mentioning(&exported.display().to_string());
    assert!(left.is_empty(), "QEMU left behind: {left:?}");
}

/// Start `cmd` (a shell guest on stdin/stdout), wait for the shell, type a few
/// commands and `poweroff -f`, and check that the recovered file is listed; the
/// console. Fails (after killing `cmd`) if the guest never finishes.
fn type_into_shell(mut cmd: Command) -> String {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let t0 = Instant::now();

    // The guard: kill `cmd` (a QEMU started by pmcrash dies with it:
    // PR_SET_PDEATHSIG) if the guest hangs.
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let fired = Arc::new(Mutex::new(false));
    let guard = {
        let fired = fired.clone();
        std::thread::spawn(move || {
            if stop_rx.recv_timeout(HANG_GUARD).is_err() {
                *fired.lock().unwrap() = true;
                let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            }
        })
    };

    // The console, collected; `ready` fires when the shell is up.
    let console = Arc::new(Mutex::new(String::new()));
    let (ready_tx, ready_rx) = mpsc::channel::<Duration>();
    let mut stdout = child.stdout.take().unwrap();
    let reader = {
        let console = console.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            let mut sent = false;
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let mut c = console.lock().unwrap();
                c.push_str(&String::from_utf8_lossy(&buf[..n]));
                if !sent && c.contains("pmcrash shell: ready") {
                    sent = true;
                    let _ = ready_tx.send(t0.elapsed());
                }
            }
        })
    };
    let mut stderr = child.stderr.take().unwrap();
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });

    let boot = ready_rx.recv();
    if let Ok(boot) = boot {
        eprintln!("shell ready after {:.1} s", boot.as_secs_f64());
        let mut stdin = child.stdin.take().unwrap();
        stdin
            .write_all(b"ls -l /mnt; wc -c < /mnt/pm.dat; echo DONE-$((6*7)); poweroff -f\n")
            .unwrap();
        stdin.flush().unwrap();
    }
    let status = child.wait().unwrap();
    let _ = stop_tx.send(());
    guard.join().unwrap();
    reader.join().unwrap();
    let err = err_reader.join().unwrap();
    let console = console.lock().unwrap().clone();
    assert!(
        !*fired.lock().unwrap(),
        "the shell guest did not finish within {HANG_GUARD:?} (killed); console:\n{console}\nstderr:\n{err}"
    );
    assert!(
        boot.is_ok(),
        "the shell never came up; console:\n{console}\nstderr:\n{err}"
    );
    eprintln!("whole session {:.1} s", t0.elapsed().as_secs_f64());
    assert!(
        status.success(),
        "{status}; console:\n{console}\nstderr:\n{err}"
    );
    assert!(
        console.contains("pmcrash shell: mounted"),
        "the file system did not mount:\n{console}"
    );
    // The typed command ran (the echo of the line shows `$((6*7))`, not 42).
    assert!(console.contains("DONE-42"), "{console}");
    assert!(
        console.contains("pm.dat"),
        "the recovered file is not listed:\n{console}"
    );
    assert!(
        console.lines().any(|l| l.trim() == "4096"),
        "pm.dat is not 4096 bytes:\n{console}"
    );
    console
}

#[test]
fn minimize_finds_the_one_unflushed_line_among_hundreds_dropped() {
    let dir = tempfile::tempdir().unwrap();
    // LSFMM 06: the second line is never flushed, and fmetadatasync does not write it
    // back. Record 12415 is a fence inside fmetadatasync: its first states drop
    // hundreds of lines, the journal's among them, and only the file's unflushed line
    // matters. Traces are deterministic for the pinned kernel and agent, but any change
    // to the agent's instructions moves kernel timing and so the record numbers: a
    // wrong `--crash-at` lists the nearest crash points, pick a later fmetadatasync one.
    let (saved, bundle) = saved_run(
        dir.path(),
        "06-fmetadatasync-one-unflushed.toml",
        &["--crash-at", "12415", "--max-states", "4"],
    );
    let f = saved["workloads"][0]["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["verdict"] == "unsafe-flush-only")
        .max_by_key(|f| f["dropped_lines"].as_array().map_or(0, Vec::len))
        .expect("an unsafe-flush-only finding");
    let id = f["id"].as_str().unwrap();
    let out = pmcrash()
        .args(["minimize", "--json"])
        .arg(&bundle)
        .arg(id)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let m = json(&out);
    eprintln!(
        "minimize {id}: {} of {} lines, {} tries, {} ms",
        m["lines"].as_array().unwrap().len(),
        m["dropped_lines"],
        m["tries"],
        m["elapsed_ms"]
    );
    assert_eq!(m["verdict"], "unsafe-flush-only", "{m}");
    assert_eq!(m["point"]["record"], f["point"]["record"], "{m}");
    let lines = m["lines"].as_array().unwrap();
    assert!(!lines.is_empty() && lines.len() <= 3, "{m}");
    // The line that matters is the file's never-flushed second line.
    assert!(
        lines.iter().any(|l| l["owner"] == "file pm.dat offset 64"),
        "{m}"
    );
    assert!(m["dropped_lines"].as_u64().unwrap() > 3, "{m}");
    assert!(m["tries"].as_u64().unwrap() >= 3, "{m}");
    // An unknown id is exit 2.
    let none = pmcrash()
        .arg("minimize")
        .arg(&bundle)
        .arg("f-00000000")
        .output()
        .unwrap();
    assert_eq!(none.status.code(), Some(2), "{none:?}");
}

#[test]
fn minimize_ops_keeps_only_ops_the_finding_needs_and_saves_them() {
    let dir = tempfile::tempdir().unwrap();
    let w = dir.path().join("padded.toml");
    std::fs::copy(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/padded-01.toml"),
        &w,
    )
    .unwrap();
    let save = dir.path().join("bundles");
    let out = pmcrash()
        .args(["run", "--json", "--fs", "ext4", "--points", "op", "--save"])
        .arg(&save)
        .arg(&w)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let saved = json(&out);
    let bundle = save.join("padded");
    let f = saved["workloads"][0]["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["verdict"] == "unsafe-flush-only" && f["point"]["op_name"] == "fence")
        .unwrap_or_else(|| panic!("no unsafe-flush-only finding at the fence: {saved}"));
    let id = f["id"].as_str().unwrap();
    let min = dir.path().join("min");
    let minimize = || {
        pmcrash()
            .args(["minimize", "--json", "--ops"])
            .arg(&bundle)
            .arg(id)
            .arg("--out")
            .arg(&min)
            .output()
            .unwrap()
    };
    let out = minimize();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let m = json(&out);
    eprintln!(
        "minimize --ops {id}: {} -> {} ops, {} runs, {} skipped, {} ms",
        m["ops_before"], m["ops_after"], m["tries"], m["skipped"], m["elapsed_ms"]
    );
    assert_eq!(m["ops_before"], 10, "{m}");
    let kept: Vec<u64> = m["kept"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_u64().unwrap())
        .collect();
    // At most LSFMM 01's own ops (1, 2, 3, 5, 6, 7, 8), the store and the fence among
    // them; strictly fewer than the padded workload's.
    assert!(kept.len() < 10, "{m}");
    assert!(
        kept.iter().all(|k| [1, 2, 3, 5, 6, 7, 8].contains(k)),
        "an unrelated op kept: {m}"
    );
    assert!(kept.contains(&6) && kept.contains(&8), "{m}");
    assert_eq!(m["ops_after"], kept.len(), "{m}");
    assert!(m["tries"].as_u64().unwrap() >= 1, "{m}");
    // The minimal workload and its bundle were written, and its run gave the finding.
    let toml = std::fs::read_to_string(min.join("workload.toml")).unwrap();
    assert_eq!(toml.matches("[[ops]]").count(), kept.len(), "{toml}");
    assert!(!toml.contains("junk") && !toml.contains("other"), "{toml}");
    assert!(min.join("workload/manifest.json").is_file());
    let found = m["saved"]["findings"].as_array().unwrap();
    assert!(!found.is_empty(), "{m}");
    // Writing over it is refused before any run (exit 2).
    let again = minimize();
    assert_eq!(again.status.code(), Some(2), "{again:?}");
}
