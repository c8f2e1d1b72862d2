//! Stage timings of the guest platform (`cargo xtask bench`): medians of several runs
//! of cold boot to agent-ready, restore to agent-ready, PM image creation, and `setup`
//! on a warm cache, with the restore/cold ratio measured in the same run.
//!
//! Writes a JSON summary to `target/bench/platform.json` (atomically) and prints a
//! table.

use crash_models::ops::FsKind;
use pmcrash::guest::GuestFactory;
use pmcrash::setup::{self, SetupOptions};
use std::time::{Duration, Instant};

const RUNS: usize = 5;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() -> anyhow::Result<()> {
    let opts = SetupOptions {
        progress: false,
        ..SetupOptions::default()
    };
    let assets = setup::ensure(&opts)?;
    let mut setup_warm = Vec::new();
    for _ in 0..RUNS {
        let t = Instant::now();
        setup::ensure(&opts)?;
        setup_warm.push(t.elapsed());
    }
    let rt = tokio::runtime::Runtime::new()?;
    let dir = tempfile::tempdir()?;
    let mut rows = Vec::new();
    for fs in FsKind::ALL {
        let f = GuestFactory::new(assets.clone(), fs);
        rt.block_on(f.saved_state())?;
        let mut image = Vec::new();
        let mut cold = Vec::new();
        let mut restore = Vec::new();
        for i in 0..RUNS {
            let img = dir.path().join(format!("{fs}-{i}.img"));
            let t = Instant::now();
            rt.block_on(f.make_image(&img))?;
            image.push(t.elapsed());
            let t = Instant::now();
            let vm = rt.block_on(f.start_cold(&img, None))?;
            cold.push(t.elapsed());
            rt.block_on(vm.shutdown(Duration::from_secs(30)))?;
            let t = Instant::now();
            let vm = rt.block_on(f.start(&img, None))?;
            restore.push(t.elapsed());
            rt.block_on(vm.shutdown(Duration::from_secs(30)))?;
        }
        rows.push((fs, median(image), median(cold), median(restore)));
    }
    // The tracer's cost: the same workload's op phase in the same restored guest,
    // with and without the plugin, alternating so load changes hit both alike.
    let workload = crash_models::ops::Workload::parse(
        include_str!("../../corpora/smoke/basic.toml"),
        "basic.toml",
    )?;
    let f = GuestFactory::new(assets.clone(), FsKind::Ext4);
    let mut plain = Vec::new();
    let mut traced = Vec::new();
    let mut records = 0u64;
    for i in 0..RUNS {
        let img = dir.path().join(format!("plain-{i}.img"));
        let r = rt.block_on(pmcrash::run::run_ops(&f, &workload, "basic.toml", &img))?;
        plain.push(Duration::from_millis(r.timings.ops_ms));
        let t = rt.block_on(pmcrash::trace::trace_workload(
            &f,
            &workload,
            dir.path(),
            &format!("traced-{i}"),
        ))?;
        traced.push(Duration::from_millis(t.timings.ops_ms));
        records = t.decoded.records.len() as u64;
    }
    let (plain, traced) = (median(plain), median(traced));
    println!(
        "workload phase (smoke/basic.toml, ext4): {:.1} ms plain, {:.1} ms traced: {:.2}x ({records} records)",
        ms(plain),
        ms(traced),
        traced.as_secs_f64() / plain.as_secs_f64().max(1e-9)
    );
    let warm = median(setup_warm);
    println!("platform stage timings, medians of {RUNS} (ms)");
    println!(
        "{:<6} {:>12} {:>14} {:>14} {:>14}",
        "fs", "image", "cold boot", "restore", "cold/restore"
    );
    let mut json = Vec::new();
    for (fs, image, cold, restore) in &rows {
        println!(
            "{:<6} {:>12.1} {:>14.1} {:>14.1} {:>13.1}x",
            fs.name(),
            ms(*image),
            ms(*cold),
            ms(*restore),
            cold.as_secs_f64() / restore.as_secs_f64()
        );
        json.push(serde_json::json!({
            "fs": fs.name(),
            "runs": RUNS,
            "image_ms": ms(*image),
            "cold_boot_to_ready_ms": ms(*cold),
            "restore_to_ready_ms": ms(*restore),
        }));
    }
    println!("setup on a warm cache: {:.1} ms", ms(warm));
    let out = serde_json::json!({
        "platform": json,
        "setup_warm_ms": ms(warm),
        "tracer": { "ops_ms_plain": ms(plain), "ops_ms_traced": ms(traced), "records": records },
    });
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&path)?;
    pmcrash::cache::write_atomic(
        &path.join("platform.json"),
        serde_json::to_string_pretty(&out)?.as_bytes(),
    )?;
    Ok(())
}
