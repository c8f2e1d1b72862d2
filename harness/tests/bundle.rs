//! Run bundles end to end, with real guests: `run --save` then `check` gives the same
//! verdicts at every crash point and state, on ext4 and XFS; `repro` checks one
//! finding's state again; a truncated or edited bundle is exit 2 naming the file.
//!
//! Kept short for CI: one small workload (LSFMM 2016 no. 1) at op crash points.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn pmcrash() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pmcrash"))
}

fn workload() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../corpora/lsfmm2016/01-shared-flush-no-fsync.toml")
}

fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// (record, verdict counts, each state's verdict) per crash point of a report.
fn verdicts(report: &Value) -> Vec<(u64, Value, Value)> {
    report["workloads"][0]["points"]
        .as_array()
        .expect("points")
        .iter()
        .map(|p| {
            (
                p["record"].as_u64().expect("record"),
                p["verdicts"].clone(),
                p["state_verdicts"].clone(),
            )
        })
        .collect()
}

/// `run --save`, then `check`: the same verdicts; returns the saved run's report and
/// the bundle's directory.
fn round_trip(fs: &str, dir: &Path) -> (Value, PathBuf) {
    let save = dir.join("bundles");
    let run = pmcrash()
        .args(["run", "--json", "--fs", fs, "--points", "op", "--save"])
        .arg(&save)
        .arg(workload())
        .output()
        .unwrap();
    assert!(matches!(run.status.code(), Some(0 | 1)), "{run:?}");
    let saved = json(&run);
    let bundle = save.join("01-shared-flush-no-fsync");
    assert!(
        bundle.join("manifest.json").is_file(),
        "no bundle in {save:?}"
    );
    let bytes: u64 = std::fs::read_dir(&bundle)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    eprintln!("{fs} bundle: {bytes} bytes");

    let check = pmcrash()
        .args(["check", "--json"])
        .arg(&save)
        .output()
        .unwrap();
    assert!(matches!(check.status.code(), Some(0 | 1)), "{check:?}");
    let checked = json(&check);
    let one = &checked[0];
    assert_eq!(one["same_verdicts"], true, "{}", one["differences"]);
    let (a, b) = (verdicts(&saved), verdicts(&one["report"]));
    assert!(!a.is_empty(), "no crash points");
    assert_eq!(
        a, b,
        "per-point verdicts differ between the run and the check"
    );
    assert!(
        a.iter()
            .all(|(_, _, s)| s.as_array().is_some_and(|s| !s.is_empty())),
        "the saved run lacks per-state verdicts"
    );
    let ids = |r: &Value| -> Vec<String> {
        r["workloads"][0]["findings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(ids(&saved), ids(&one["report"]));
    eprintln!(
        "{fs}: run {} ms, check {} ms",
        saved["workloads"][0]["timings"]["total_ms"], one["check_ms"]
    );
    (saved, bundle)
}

#[test]
fn ext4_bundle_round_trip_repro_and_damaged_bundles() {
    let dir = tempfile::tempdir().unwrap();
    let (saved, bundle) = round_trip("ext4", dir.path());

    // The workload's hazard is found, with an id, and `repro` gets its verdict again.
    let finding = saved["workloads"][0]["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["verdict"] == "unsafe-flush-only")
        .expect("an unsafe-flush-only finding")
        .clone();
    let id = finding["id"].as_str().unwrap();
    assert!(id.starts_with("f-") && id.len() == 10, "{id}");
    let repro = pmcrash()
        .args(["repro", "--json"])
        .arg(&bundle)
        .arg(id)
        .output()
        .unwrap();
    assert_eq!(repro.status.code(), Some(1), "{repro:?}");
    let r = json(&repro);
    assert_eq!(r["id"], id);
    assert_eq!(r["verdict"], finding["verdict"]);
    assert_eq!(r["point"]["record"], finding["point"]["record"]);
    assert_eq!(r["recovery"]["mount"]["outcome"], "mounted", "{r}");
    assert!(r["recovery"]["fsck"]["command"].is_string(), "{r}");
    // The text form shows the mount, fsck and console.
    let text = pmcrash()
        .arg("repro")
        .arg(&bundle)
        .arg(id)
        .output()
        .unwrap();
    let t = String::from_utf8_lossy(&text.stdout);
    assert!(
        t.contains(id)
            && t.contains("mount: mounted")
            && t.contains("fsck: `")
            && t.contains("console"),
        "{t}"
    );
    // Export: a raw and a qcow2 image that qemu-img opens, and the command line.
    for (name, format) in [("crash.img", "raw"), ("crash.qcow2", "qcow2")] {
        let img = dir.path().join(name);
        let out = pmcrash()
            .args(["export", "--json"])
            .arg(&bundle)
            .arg(id)
            .arg("-o")
            .arg(&img)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        let e = json(&out);
        assert_eq!(e["record"], finding["point"]["record"], "{e}");
        let qemu = e["qemu"].as_str().unwrap();
        assert!(
            qemu.contains("qemu-system-x86_64")
                && qemu.contains("nvdimm")
                && qemu.contains("-kernel"),
            "{qemu}"
        );
        let info = Command::new("qemu-img")
            .args(["info", "--output=json"])
            .arg(&img)
            .output()
            .expect("qemu-img (run `pmcrash setup`)");
        assert!(info.status.success(), "{info:?}");
        let info = json(&info);
        assert_eq!(info["format"], format, "{info}");
        assert_eq!(info["virtual-size"], 64u64 << 20, "{info}");
    }

    // An id no state has.
    let none = pmcrash()
        .arg("repro")
        .arg(&bundle)
        .arg("f-00000000")
        .output()
        .unwrap();
    assert_eq!(none.status.code(), Some(2), "{none:?}");
    assert!(String::from_utf8_lossy(&none.stderr).contains("no crash state"));

    // Damaged bundles: exit 2 naming the file and what is wrong, before any guest.
    let copy = |name: &str| {
        let to = dir.path().join(name);
        std::fs::create_dir(&to).unwrap();
        for e in std::fs::read_dir(&bundle).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
        to
    };
    let truncated = copy("truncated");
    let t = truncated.join("trace.pmtrace.zst");
    let bytes = std::fs::read(&t).unwrap();
    std::fs::write(&t, &bytes[..bytes.len() / 2]).unwrap();
    let out = pmcrash().arg("check").arg(&truncated).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("trace.pmtrace.zst") && err.contains("truncated"),
        "{err}"
    );

    let edited = copy("edited");
    let r = edited.join("run.json");
    let text = std::fs::read_to_string(&r).unwrap();
    std::fs::write(
        &r,
        text.replacen("\"seed\": ", "\"seed\":  ", 1)
            .replacen("  ", " ", 1),
    )
    .unwrap();
    let out = pmcrash().arg("check").arg(&edited).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("run.json") && err.contains("checksum"),
        "{err}"
    );
}

#[test]
fn xfs_bundle_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    round_trip("xfs", dir.path());
}

#[test]
fn a_bundle_of_another_kernel_is_refused_with_how_to_give_it() {
    // No guest needed: the kernel check comes before any.
    let dir = tempfile::tempdir().unwrap();
    let b = dir.path().join("b");
    let run = pmcrash::bundle::RunInfo {
        workload: "w.toml".into(),
        fs: crash_models::ops::FsKind::Ext4,
        model: "x86-adr".into(),
        points: "op".into(),
        states: "each-line".into(),
        seed: 0,
        max_states: 4096,
        max_points: None,
        crash_at: None,
        sector_atomic: None,
        pm_size: 64 << 20,
        deterministic: true,
        kernel: pmcrash::bundle::KernelIdentity {
            release: "6.0.0-other".into(),
            image_blake3: "00".repeat(32),
            image_path: "/boot/vmlinuz-6.0.0-other".into(),
        },
        results: vec![],
    };
    let w =
        crash_models::ops::Workload::parse(&std::fs::read_to_string(workload()).unwrap(), "w.toml")
            .unwrap();
    let f = dir.path().join("f");
    std::fs::write(&f, b"x").unwrap();
    pmcrash::bundle::save(
        &b,
        &pmcrash::bundle::BundleParts {
            run: &run,
            workload: &w,
            source: None,
            trace: &f,
            base_image: &f,
            report: &serde_json::json!({}),
            programs: None,
        },
    )
    .unwrap();
    let out = pmcrash().arg("check").arg(&b).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("6.0.0-other") && err.contains("--kernel"),
        "{err}"
    );
}
