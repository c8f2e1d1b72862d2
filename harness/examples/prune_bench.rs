//! Read-set pruning and streaming, measured (`cargo xtask bench` runs it, release):
//!
//! * the single-op workload (create, 4 KiB write, fsync) at defaults on ext4 and XFS,
//!   pruned, `--no-prune` and pruned with `--fsck-in-guest` (the layout before fsck
//!   moved to the host, the baseline of the ratio printed): total time, images checked
//!   vs distinct images, and the same verdict for every crash state;
//! * the 11-op rename workload (`corpora/bench/rename-11.toml`), the same three ways;
//! * the whole LSFMM 2016 corpus at fence points on both file systems, both ways,
//!   compared state by state;
//! * issue 15's workload (write 32 KiB, fallocate, mmap 8 KiB, 128 stores of 64 bytes,
//!   msync) at op points on ext4 and XFS, and a 10,000-store workload at fence points
//!   with the all-persisted state: peak resident memory and time.
//!
//! Each case runs in its own process (`prune_bench case ...`), so its peak resident
//! memory (VmHWM) is its own. `prune_bench` alone runs every case and prints the
//! tables; `prune_bench quick` only the single-op cases; `prune_bench memory` only
//! issue 15's cases, with the 128-store workload also under a 1 MiB budget (one point
//! at a time; the same verdict for every state is checked).

use crash_models::ops::{FsKind, Workload};
use crash_models::points::Policy;
use pmcrash::oracle::Verdict;
use pmcrash::pipeline::{builtin_lsfmm2016, Pipeline, RunConfig};
use pmcrash::workloads::{load, Loaded};
use serde_json::{json, Value};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// 128 stores (issue 15) or 10,000 stores (`stores`) to one mapping.
fn stores_workload(stores: usize) -> Loaded {
    let map_len = (stores * 64).div_ceil(4096) * 4096;
    let mut s = format!(
        "description = \"{stores} stores of 64 bytes to one mapping\"\n\n\
         [[ops]]\nop = \"open\"\npath = \"a.dat\"\nfd = \"f\"\ncreate = true\n\n\
         [[ops]]\nop = \"write\"\nfd = \"f\"\ndata = {{ seed = 15, len = 32768 }}\n\n\
         [[ops]]\nop = \"fallocate\"\nfd = \"f\"\noffset = 0\nlen = {}\n\n\
         [[ops]]\nop = \"mmap\"\nfd = \"f\"\nmap = \"m\"\nlen = {map_len}\n",
        map_len.max(65536)
    );
    for i in 0..stores {
        let _ = write!(
            s,
            "\n[[ops]]\nop = \"store\"\nmap = \"m\"\noffset = {}\ndata = {{ seed = {i}, len = 64 }}\n",
            (i * 64) % map_len
        );
    }
    s.push_str("\n[[ops]]\nop = \"msync\"\nmap = \"m\"\n");
    Loaded {
        name: format!("generated/stores-{stores}.toml"),
        workload: Workload::parse(&s, "stores.toml").expect("the generated workload parses"),
    }
}

fn workloads(name: &str) -> Vec<Loaded> {
    match name {
        "lsfmm2016" => builtin_lsfmm2016(),
        "stores-128" => vec![stores_workload(128)],
        "stores-10000" => vec![stores_workload(10_000)],
        f => load(&[root().join(f)]).expect("bench workload"),
    }
}

/// One case, in this process: a JSON line on stdout.
fn case(args: &[String]) -> Value {
    let [fs, points, states, prune, memory, name] = args else {
        panic!("case FS POINTS STATES PRUNE MEMORY_MIB WORKLOAD");
    };
    let fs: FsKind = fs.parse().expect("fs");
    let cfg = RunConfig {
        fs,
        points: points.parse::<Policy>().expect("points"),
        states: states.parse().expect("states"),
        workers: 2,
        prune: prune != "no-prune",
        fsck_in_guest: prune == "prune-fsck-in-guest",
        memory_mib: memory.parse().expect("memory"),
        state_verdicts: true,
        ..RunConfig::default()
    };
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let report = rt.block_on(async {
        let assets = pmcrash::setup::ensure(&pmcrash::setup::SetupOptions {
            progress: false,
            ..Default::default()
        })
        .expect("pmcrash setup");
        let mut p = Pipeline::new(assets, cfg).expect("pipeline");
        let r = p.run(&workloads(name), false).await;
        p.shutdown().await;
        r.expect("the run")
    });
    let states: Vec<Value> = report
        .workloads
        .iter()
        .map(|w| {
            json!(w
                .points
                .iter()
                .map(|p| json!([p.record, p.state_verdicts]))
                .collect::<Vec<_>>())
        })
        .collect();
    let sum = |f: &dyn Fn(&pmcrash::report::WorkloadReport) -> f64| -> f64 {
        report.workloads.iter().map(f).sum()
    };
    json!({
        "points": report.totals.crash_points,
        "states": report.totals.states,
        "distinct": report.totals.distinct_images,
        "checked": report.totals.checked_images,
        "unrecorded": report.workloads.iter().map(|w| w.stats.unrecorded_checks).sum::<usize>(),
        "pruned": report.totals.pruned_images,
        "not_ok": report.totals.verdicts.iter().filter(|(v, _)| **v != Verdict::Ok).map(|(_, n)| n).sum::<u64>(),
        "total_s": sum(&|w| w.timings.total_ms as f64) / 1000.0,
        "check_s": sum(&|w| w.timings.check_ms as f64) / 1000.0,
        "images_per_sec": sum(&|w| w.stats.checked_images as f64) * 1000.0 / sum(&|w| w.timings.check_ms as f64).max(1.0),
        "peak_mib": pmcrash::memory::peak_rss_bytes() >> 20,
        "state_verdicts": states,
    })
}

fn spawn(fs: &str, points: &str, states: &str, prune: &str, memory: &str, name: &str) -> Value {
    let out = Command::new(std::env::current_exe().expect("own path"))
        .args(["case", fs, points, states, prune, memory, name])
        .output()
        .expect("run a case");
    let text = String::from_utf8_lossy(&out.stdout);
    match serde_json::from_str(text.trim()) {
        Ok(v) if out.status.success() => v,
        _ => {
            json!({"error": format!("{}: {}", out.status, String::from_utf8_lossy(&out.stderr).lines().rev().take(5).collect::<Vec<_>>().join(" | "))})
        }
    }
}

fn row(what: &str, v: &Value) -> String {
    if let Some(e) = v.get("error") {
        return format!("| {what} | failed: {e} |");
    }
    format!(
        "| {what} | {} | {} | {} | {} ({} unrecorded) | {} | {:.1} | {:.1} | {:.1} | {} | {} |",
        v["points"],
        v["states"],
        v["distinct"],
        v["checked"],
        v["unrecorded"],
        v["pruned"],
        v["total_s"].as_f64().unwrap_or(0.0),
        v["check_s"].as_f64().unwrap_or(0.0),
        v["images_per_sec"].as_f64().unwrap_or(0.0),
        v["peak_mib"],
        v["not_ok"]
    )
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("case") {
        println!("{}", case(&args[1..]));
        return;
    }
    let quick = args.first().map(String::as_str) == Some("quick");
    let memory_only = args.first().map(String::as_str) == Some("memory");
    println!("| case | points | states | distinct | checked | pruned | total s | check s | images/s | peak MiB | not-ok states |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    let mut mismatches = 0;
    if memory_only {
        for fs in ["ext4", "xfs"] {
            let a = spawn(fs, "op", "each-line", "prune", "1024", "stores-128");
            let b = spawn(fs, "op", "each-line", "prune", "1", "stores-128");
            let same = a.get("state_verdicts").is_some()
                && a.get("state_verdicts") == b.get("state_verdicts");
            mismatches += usize::from(!same);
            println!("{}", row(&format!("stores-128 {fs} op"), &a));
            println!(
                "{}",
                row(&format!("stores-128 {fs} op, --memory-mib 1"), &b)
            );
            println!("| same verdict for every state: {same} |");
        }
        for fs in ["ext4", "xfs"] {
            let v = spawn(fs, "fence", "all", "prune", "1024", "stores-10000");
            println!(
                "{}",
                row(&format!("stores-10000 {fs} fence, states all"), &v)
            );
        }
        if mismatches > 0 {
            eprintln!("{mismatches} case(s) where a tiny budget changed a verdict");
            std::process::exit(1);
        }
        return;
    }
    // Pruned and `--no-prune`, and with `baseline` also pruned with fsck in the guest.
    let mut compare = |fs: &str, points: &str, name: &str, baseline: bool| {
        let a = spawn(fs, points, "each-line", "prune", "1024", name);
        let b = spawn(fs, points, "each-line", "no-prune", "1024", name);
        let mut same =
            a.get("state_verdicts").is_some() && a.get("state_verdicts") == b.get("state_verdicts");
        println!("{}", row(&format!("{name} {fs} {points} pruned"), &a));
        println!("{}", row(&format!("{name} {fs} {points} --no-prune"), &b));
        if baseline {
            let c = spawn(fs, points, "each-line", "prune-fsck-in-guest", "1024", name);
            same &= a.get("state_verdicts") == c.get("state_verdicts");
            println!(
                "{}",
                row(&format!("{name} {fs} {points} pruned, --fsck-in-guest"), &c)
            );
            let t = |v: &Value| v["total_s"].as_f64().unwrap_or(f64::NAN);
            println!(
                "| pruned vs --fsck-in-guest: {:.1}x faster, {:.1}x vs --no-prune |",
                t(&c) / t(&a),
                t(&b) / t(&a)
            );
        }
        mismatches += usize::from(!same);
        println!("| same verdict for every state: {same} |");
    };
    for fs in ["ext4", "xfs"] {
        compare(fs, "fence", "corpora/bench/single-op.toml", true);
    }
    if !quick {
        for fs in ["ext4", "xfs"] {
            compare(fs, "fence", "corpora/bench/rename-11.toml", true);
            compare(fs, "fence", "lsfmm2016", false);
        }
        for fs in ["ext4", "xfs"] {
            let v = spawn(fs, "op", "each-line", "prune", "1024", "stores-128");
            println!("{}", row(&format!("stores-128 {fs} op"), &v));
        }
        // The stores stay in flight (no flush) until the msync: fence points with the
        // all-persisted state keep the checks few; the trace, the replay and the
        // snapshots of 10,000 in-flight stores are what is measured.
        for fs in ["ext4", "xfs"] {
            let v = spawn(fs, "fence", "all", "prune", "1024", "stores-10000");
            println!(
                "{}",
                row(&format!("stores-10000 {fs} fence, states all"), &v)
            );
        }
    }
    if mismatches > 0 {
        eprintln!("{mismatches} case(s) where pruning changed a verdict");
        std::process::exit(1);
    }
}
