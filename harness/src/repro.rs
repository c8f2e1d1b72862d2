//! Working from saved run bundles ([`crate::bundle`]): `pmcrash check` (the crash
//! points, states and verdicts again from the saved trace, no workload run) and
//! `pmcrash repro` (one crash state, by its finding id, checked again).
//!
//! A bundle is checked with the kernel that traced it: [`check_kernel`] compares the
//! kernel pmcrash provides (Debian's pinned package, or `--kernel`) with the bundle's
//! identity and refuses another, saying how to give the right one.

use crate::bundle::{Bundle, BundleError};
use crate::guest::GuestFactory;
use crate::pipeline::{Pipeline, PipelineError, RunConfig};
use crate::setup::Assets;
use crash_models::trace::Trace;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Why a bundle cannot be checked (exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum ReproError {
    /// The bundle is damaged or unreadable.
    #[error(transparent)]
    Bundle(#[from] BundleError),
    /// The kernel at hand is not the one that traced the bundle (the message says
    /// which it was and how to give it).
    #[error("{0}")]
    Kernel(String),
    /// The saved trace does not decode.
    #[error("{}: {source}", path.display())]
    Trace {
        /// The bundle's trace file.
        path: PathBuf,
        /// Why.
        source: Box<crate::trace::TracingError>,
    },
    /// The check itself failed.
    #[error(transparent)]
    Pipeline(Box<PipelineError>),
    /// The finding's state no longer gives its verdict.
    #[error("{0}")]
    NotReproduced(String),
    /// Local I/O.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
}

/// The bundles named by `paths`: a bundle directory itself, or a directory of bundles
/// (what `run --save DIR` made), in name order. A path that is neither is kept, so
/// opening it says why.
pub fn bundles_in(paths: &[PathBuf]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for p in paths {
        if p.join("manifest.json").is_file() {
            out.push(p.clone());
            continue;
        }
        let mut subs: Vec<PathBuf> = std::fs::read_dir(p)
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|d| d.join("manifest.json").is_file())
            .collect();
        subs.sort();
        if subs.is_empty() {
            out.push(p.clone());
        } else {
            out.extend(subs);
        }
    }
    out
}

/// The run configuration the bundle was made with (every option that decides crash
/// states); `workers` checker guests.
pub fn run_config(b: &Bundle, workers: Option<usize>) -> Result<RunConfig, BundleError> {
    let r = &b.run;
    let file = b.dir.join("run.json");
    let field = |name: &str, message: String| BundleError::Field {
        file: file.clone(),
        field: name.to_owned(),
        message,
    };
    let mut cfg = RunConfig {
        fs: r.fs,
        model: r
            .model
            .parse::<crash_models::model::Model>()
            .map_err(|e| field("model", e.to_string()))?,
        points: r
            .points
            .parse::<crash_models::points::Policy>()
            .map_err(|e| field("points", e.to_string()))?,
        states: r
            .states
            .parse::<crash_models::states::Strategy>()
            .map_err(|e| field("states", e.to_string()))?,
        seed: r.seed,
        max_states: r.max_states,
        max_points: r.max_points,
        crash_at: r.crash_at,
        pm_size: Some(r.pm_size),
        sector_atomic: r.sector_atomic,
        // Per-state verdicts: what `check` compares with the saved run.
        state_verdicts: true,
        ..RunConfig::default()
    };
    if let Some(w) = workers {
        cfg.workers = w.max(1);
    }
    Ok(cfg)
}

/// Refuse a kernel other than the bundle's. `byo`: the kernel came from `--kernel` or
/// `--kernel-tree` (the hint differs).
pub fn check_kernel(b: &Bundle, assets: &Assets, byo: bool) -> Result<(), ReproError> {
    let want = &b.run.kernel;
    let have = crate::bundle::KernelIdentity::of(&assets.kernel, &assets.kernel_release)?;
    if have.image_blake3 == want.image_blake3 {
        return Ok(());
    }
    let hint = if byo {
        "The image given with --kernel is another build: give the bundle's kernel image \
         (and its modules with --modules)."
            .to_owned()
    } else {
        format!(
            "Give that kernel with `--kernel IMAGE --modules DIR` (for Debian's {} package: \
             its vmlinuz and lib/modules/{}), or `--kernel-tree DIR` for a build tree.",
            want.release, want.release
        )
    };
    let short = |h: &str| h.chars().take(16).collect::<String>();
    Err(ReproError::Kernel(format!(
        "{} was traced with kernel {} (image blake3 {}, {} on the machine that made it), \
         but pmcrash here provides {} (image blake3 {}); a trace is only valid for its \
         kernel. {hint}",
        b.dir.display(),
        want.release,
        short(&want.image_blake3),
        want.image_path.display(),
        have.release,
        short(&have.image_blake3)
    )))
}

/// A pipeline set up as the bundle's run was (file system, PM size, deterministic
/// mode for the kernel's symbols, the crash-state options).
pub fn pipeline_for(
    b: &Bundle,
    assets: Assets,
    workers: Option<usize>,
) -> Result<Pipeline, ReproError> {
    pipeline_with(b, assets, run_config(b, workers)?)
}

/// A pipeline on the bundle's guests (file system, PM size, deterministic mode,
/// programs) with the configuration `cfg` (`minimize --ops` changes the bundle's).
pub fn pipeline_with(b: &Bundle, assets: Assets, cfg: RunConfig) -> Result<Pipeline, ReproError> {
    let mut factory = GuestFactory::new(assets, b.run.fs);
    factory.pm_size = b.run.pm_size;
    factory.deterministic_traces = b.run.deterministic;
    let mut p =
        Pipeline::with_factory(factory, cfg).map_err(|e| ReproError::Pipeline(Box::new(e)))?;
    if let Some(programs) = b.programs() {
        p.use_program_bundle(&programs);
    }
    Ok(p)
}

/// A bundle's trace, decoded, and its base image, unpacked (sparse) into a scratch
/// directory that lives as long as this value.
pub struct Unpacked {
    /// The trace.
    pub trace: Trace,
    /// The PM image before the first op.
    pub base_image: PathBuf,
    _dir: tempfile::TempDir,
}

/// Unpack `b`'s trace and base image.
pub fn unpack(b: &Bundle) -> Result<Unpacked, ReproError> {
    let dir =
        crate::scratch::run_dir(crate::scratch::RUN_PREFIX).map_err(|source| ReproError::Io {
            what: "create a scratch directory".into(),
            source,
        })?;
    let trace_path = dir.path().join("trace.pmtrace");
    b.trace_to(&trace_path)?;
    let base_image = dir.path().join("base.img");
    b.base_image_to(&base_image)?;
    let trace = crate::trace::read(&trace_path).map_err(|source| ReproError::Trace {
        path: b.dir.join("trace.pmtrace.zst"),
        source: Box::new(source),
    })?;
    Ok(Unpacked {
        trace,
        base_image,
        _dir: dir,
    })
}

/// Check a bundle from its saved trace: its workload's report.
pub async fn check(
    p: &mut Pipeline,
    b: &Bundle,
    progress: bool,
) -> Result<crate::report::WorkloadReport, ReproError> {
    let u = unpack(b)?;
    p.check_traced(
        &b.run.workload,
        &b.workload,
        &u.trace,
        &u.base_image,
        &b.run.results,
        progress,
    )
    .await
    .map_err(|e| ReproError::Pipeline(Box::new(e)))
}

/// Where two reports of one workload (JSON values of [`crate::report::Report`]) differ
/// in their verdicts: per crash point (by record) the verdict counts and each state's
/// verdict, and the findings' ids. Empty when they agree.
pub fn differences(saved: &Value, now: &Value) -> Vec<String> {
    let points = |r: &Value| -> BTreeMap<u64, (Value, Value)> {
        r["workloads"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|w| w["points"].as_array().into_iter().flatten())
            .filter_map(|p| {
                Some((
                    p["record"].as_u64()?,
                    (p["verdicts"].clone(), p["state_verdicts"].clone()),
                ))
            })
            .collect()
    };
    let ids = |r: &Value| -> BTreeSet<String> {
        r["workloads"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|w| w["findings"].as_array().into_iter().flatten())
            .filter_map(|f| f["id"].as_str().map(str::to_owned))
            .collect()
    };
    let (a, b) = (points(saved), points(now));
    let mut out = Vec::new();
    for (rec, (va, sa)) in &a {
        match b.get(rec) {
            None => out.push(format!("crash point {rec}: in the saved run, not now")),
            Some((vb, _)) if vb != va => {
                out.push(format!("crash point {rec}: verdicts {va} saved, {vb} now"))
            }
            Some((_, sb)) if sb != sa => out.push(format!(
                "crash point {rec}: state verdicts {sa} saved, {sb} now"
            )),
            Some(_) => {}
        }
    }
    for rec in b.keys().filter(|r| !a.contains_key(r)) {
        out.push(format!("crash point {rec}: now, not in the saved run"));
    }
    let (ia, ib) = (ids(saved), ids(now));
    for id in ia.difference(&ib) {
        out.push(format!("finding {id}: in the saved run, not now"));
    }
    for id in ib.difference(&ia) {
        out.push(format!("finding {id}: now, not in the saved run"));
    }
    out
}

/// The saved run's total time in milliseconds, from its report.
pub fn saved_total_ms(saved: &Value) -> Option<u64> {
    saved["workloads"][0]["timings"]["total_ms"].as_u64()
}

/// A bundle directory's size in bytes (its files, not counting holes).
pub fn bundle_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn report(points: Value, ids: &[&str]) -> Value {
        let findings: Vec<Value> = ids.iter().map(|i| json!({ "id": i })).collect();
        json!({ "workloads": [{ "points": points, "findings": findings }] })
    }

    #[test]
    fn differences_name_each_point_and_finding_that_differs() {
        let a = report(
            json!([
                {"record": 5, "verdicts": {"ok": 2}, "state_verdicts": ["ok", "ok"]},
                {"record": 9, "verdicts": {"ok": 1, "data-loss": 1}, "state_verdicts": ["ok", "data-loss"]}
            ]),
            &["f-00000001"],
        );
        assert!(differences(&a, &a).is_empty());
        let b = report(
            json!([
                {"record": 5, "verdicts": {"ok": 2}, "state_verdicts": ["ok", "ok"]},
                {"record": 9, "verdicts": {"ok": 1, "data-loss": 1}, "state_verdicts": ["data-loss", "ok"]},
                {"record": 12, "verdicts": {"ok": 1}, "state_verdicts": ["ok"]}
            ]),
            &["f-00000002"],
        );
        let d = differences(&a, &b);
        assert_eq!(d.len(), 4, "{d:?}");
        assert!(d[0].starts_with("crash point 9: state verdicts"), "{d:?}");
        assert!(d[1].starts_with("crash point 12: now"), "{d:?}");
        assert!(
            d[2].contains("f-00000001") && d[3].contains("f-00000002"),
            "{d:?}"
        );
    }
}
