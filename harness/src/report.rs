//! Reports: the value a run produces, and its renderings (terminal table, JSON with a
//! documented schema in `docs/report-schema.json`, JUnit XML).
//!
//! [`Report::summary`] is the stable part (no timings, no paths, no kernel build
//! strings, everything sorted): what users' own `cargo test` suites snapshot.

use crate::oracle::{Problem, Verdict};
use crash_models::ops::FsKind;
use crash_models::promise::OpCost;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

/// Version of the JSON report's shape; bumped on any incompatible change.
pub const REPORT_SCHEMA_VERSION: u32 = 2;

/// How a run was configured.
#[derive(Debug, Clone, Serialize)]
pub struct ConfigReport {
    /// The file system.
    pub fs: FsKind,
    /// The persistency model (`x86-adr`, `x86-eadr`, `x86-adr-nt`).
    pub model: String,
    /// The crash-point policy.
    pub points: String,
    /// The crash-state strategy.
    pub states: String,
    /// The seed every random choice used.
    pub seed: u64,
    /// The guest kernel release.
    pub kernel: String,
    /// Checker guests in parallel.
    pub workers: usize,
    /// `--sector-atomic`: BTT-like atomicity of the kernel's block writes, in bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sector_atomic: Option<u64>,
}

/// One op and what it cost.
#[derive(Debug, Clone, Serialize)]
pub struct OpLine {
    /// Index in the workload.
    pub index: usize,
    /// The op's name.
    pub op: String,
    /// It succeeded in the traced run.
    pub ok: bool,
    /// Its return value (-1 on error).
    pub ret: i64,
    /// errno when it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errno: Option<i32>,
    /// Flushes and fences it caused.
    pub cost: OpCost,
}

/// One crash point's tally.
#[derive(Debug, Clone, Serialize)]
pub struct PointReport {
    /// Records applied before the crash (the crash is after record `record - 1`).
    pub record: u64,
    /// Ops that had returned.
    pub ops_completed: u32,
    /// The op it belongs to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub op: Option<u32>,
    /// That op's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub op_name: Option<String>,
    /// Why the point was chosen.
    pub reason: String,
    /// Lines in flight.
    pub in_flight_lines: usize,
    /// Crash states.
    pub states: usize,
    /// Distinct images among them.
    pub distinct_images: usize,
    /// Of those, the images a checker guest recovered.
    pub checked_images: usize,
    /// Of those, the images that took the recovery of an image they equal on every
    /// line its check read (read-set pruning), without a guest run.
    pub pruned_images: usize,
    /// Each pruned image and the checked image it was found equal to.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub equal_to: Vec<PrunedImage>,
    /// Crash states per verdict.
    pub verdicts: BTreeMap<Verdict, u64>,
    /// Every crash state's verdict, in state order (only when the run asked for
    /// them: `RunConfig::state_verdicts`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub state_verdicts: Vec<Verdict>,
}

/// A crash image that took another's recovery (read-set pruning). Images are numbered
/// per workload in the order they were first made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PrunedImage {
    /// The pruned image.
    pub image: usize,
    /// The checked image it equals on every line that image's check read.
    pub equal_to: usize,
    /// The crash point (record) the checked image was first made at.
    pub equal_to_point: u64,
}

/// A line lost in a crash state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DroppedLine {
    /// Offset of the line in the PM file.
    pub pm_offset: u64,
    /// What the line belongs to, where the extent map tells (`file a.dat offset 0`),
    /// or what wrote it.
    pub owner: String,
    /// Pieces (8-byte stores) queued on the line, and how many the state kept.
    pub queued: u32,
    /// How many the state kept.
    pub kept: u32,
    /// The flush or fence that was missing.
    pub missing: String,
    /// The kernel function that made the line's last store (`function+offset
    /// [module]`), when the store was the kernel's and its symbols are known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub writer: Option<String>,
    /// The file-system structure the line belongs to, read from the workload's final
    /// image with the file system's tools ([`crate::labels`]); set on the lines of
    /// reported findings only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<crate::labels::LineLabel>,
}

impl DroppedLine {
    /// What the line is, for people: its [`DroppedLine::label`] when labelled, else its
    /// owner.
    pub fn what(&self) -> String {
        self.label
            .as_ref()
            .map_or_else(|| self.owner.clone(), |l| l.to_string())
    }
}

/// The crash point a finding was made at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PointRef {
    /// Records applied before the crash.
    pub record: u64,
    /// The op in progress or the last op completed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub op: Option<u32>,
    /// Its name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub op_name: Option<String>,
    /// Ops completed.
    pub ops_completed: u32,
    /// Stores applied.
    pub stores: u64,
    /// The last marker of the op's own program before the point (`tx_commit #3`),
    /// when the op is an `exec` whose program marks its operations.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after_marker: Option<String>,
}

/// A group of crash states that are not ok in the same way: one per (verdict, crash
/// site, cause) (see [`crate::findings`]), the first state shown in full.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    /// The stable id of the group's first state ([`crate::findings::finding_id`]):
    /// `pmcrash repro BUNDLE ID` checks that state again.
    pub id: String,
    /// The state's verdict (its worst problem).
    pub verdict: Verdict,
    /// Where.
    pub point: PointRef,
    /// What is wrong.
    pub problems: Vec<Problem>,
    /// Lines the state dropped (wholly or partly).
    pub dropped_lines: Vec<DroppedLine>,
    /// Lines the state kept whole.
    pub kept_lines: usize,
    /// Crash states in the group.
    pub states: u64,
    /// Crash points they are at.
    pub crash_points: u64,
    /// The group's first crash point (records applied).
    pub first_record: u64,
    /// Its last crash point.
    pub last_record: u64,
    /// The command that reproduces it.
    pub reproduce: String,
}

/// What the workload file expected, and whether it came true.
#[derive(Debug, Clone, Serialize)]
pub struct ExpectCheck {
    /// The verdict classes expected over all crash states.
    pub expected: Vec<Verdict>,
    /// The classes seen.
    pub seen: Vec<Verdict>,
    /// `ok_after_op = N`: every state at a crash point after op N returned must be ok.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ok_after_op: Option<usize>,
    /// `lost_after_op = N`: some state at a crash point after op N returned must not
    /// be ok (the loss the workload demonstrates is found).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lost_after_op: Option<usize>,
    /// What did not come true (empty when met).
    pub unmet: Vec<String>,
    /// Everything expected came true.
    pub met: bool,
}

/// Counts for a workload.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WorkloadStats {
    /// Trace records.
    pub records: u64,
    /// Crash points.
    pub crash_points: usize,
    /// Crash states.
    pub states: usize,
    /// Distinct crash images (each recovered once).
    pub distinct_images: usize,
    /// Distinct recovered states (by dump).
    pub recovered_states: usize,
    /// Crash points whose state enumeration hit a cap.
    pub capped_points: usize,
    /// Checker guest restarts.
    pub guest_restarts: u32,
    /// Distinct images a checker guest recovered.
    pub checked_images: usize,
    /// Distinct images that took an equal image's recovery (read-set pruning).
    pub pruned_images: usize,
    /// Distinct read sets among the checked images kept for pruning.
    pub prune_read_sets: usize,
    /// Checked images whose check recorded no read set: forecast to be equal to no
    /// other image on what it would read (`crash_models::prune::Forecast`).
    pub unrecorded_checks: usize,
    /// Distinct images whose fsck outcome was an equal image's: equal on every byte
    /// that image's fsck read (ext4, with pruning on).
    pub fsck_reused: u64,
    /// Peak resident memory of the harness (VmHWM) when the workload was done, in
    /// bytes (the process's peak so far: it includes earlier workloads).
    pub peak_rss_bytes: u64,
}

/// Wall-clock time per stage, in milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Timings {
    /// Getting the checker guests ready.
    pub guest_ready_ms: u64,
    /// Tracing (image, traced guest, ops, reading the trace).
    pub trace_ms: u64,
    /// Enumerating crash points, states and images.
    pub enumerate_ms: u64,
    /// Recovering every distinct image.
    pub check_ms: u64,
    /// Judging.
    pub oracle_ms: u64,
    /// Everything.
    pub total_ms: u64,
    /// Images a checker guest recovered, per second of checking.
    pub images_per_sec: f64,
    /// Labelling the findings' dropped lines with the file system's tools, after the
    /// check (not part of `total_ms`).
    pub label_ms: u64,
}

/// The result for one workload.
#[derive(Debug, Clone, Serialize)]
pub struct WorkloadReport {
    /// The workload's name (its path).
    pub name: String,
    /// Its description.
    pub description: String,
    /// The file system.
    pub fs: FsKind,
    /// Every op.
    pub ops: Vec<OpLine>,
    /// Every crash point.
    pub points: Vec<PointReport>,
    /// Crash states per verdict.
    pub verdicts: BTreeMap<Verdict, u64>,
    /// The not-ok states, one finding per (verdict, crash site, cause).
    pub findings: Vec<Finding>,
    /// Finding groups left out of `findings` to keep the report readable.
    pub findings_omitted: u64,
    /// Counts.
    pub stats: WorkloadStats,
    /// The workload's own `[expect]`, checked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expect: Option<ExpectCheck>,
    /// Timings.
    pub timings: Timings,
    /// The blocks of file-system code the trace executed, when
    /// [`crate::pipeline::RunConfig::coverage`] asked (the fuzzer's; not in the JSON).
    #[serde(skip)]
    pub coverage: Option<crash_models::coverage::Blocks>,
}

impl WorkloadReport {
    /// The verdict classes seen, sorted.
    pub fn seen(&self) -> Vec<Verdict> {
        self.verdicts
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(v, _)| *v)
            .collect()
    }

    /// True when a class in `fail_on` was seen and the workload did not expect it, or
    /// an expectation was not met.
    pub fn fails(&self, fail_on: &BTreeSet<Verdict>) -> bool {
        if self.expect.as_ref().is_some_and(|e| !e.met) {
            return true;
        }
        let expected: BTreeSet<Verdict> = self
            .expect
            .as_ref()
            .map(|e| e.expected.iter().copied().collect())
            .unwrap_or_default();
        self.seen()
            .iter()
            .any(|v| fail_on.contains(v) && !expected.contains(v))
    }
}

/// Totals over workloads.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Totals {
    /// Workloads.
    pub workloads: usize,
    /// Crash points.
    pub crash_points: usize,
    /// Crash states.
    pub states: usize,
    /// Distinct images.
    pub distinct_images: usize,
    /// Distinct images a checker guest recovered.
    pub checked_images: usize,
    /// Distinct images that took an equal image's recovery (read-set pruning).
    pub pruned_images: usize,
    /// Peak resident memory of the harness (VmHWM) over the run, in bytes.
    pub peak_rss_bytes: u64,
    /// Crash states per verdict.
    pub verdicts: BTreeMap<Verdict, u64>,
    /// Workloads that fail (see [`WorkloadReport::fails`]).
    pub failing_workloads: usize,
}

/// The report of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// [`REPORT_SCHEMA_VERSION`].
    pub schema_version: u32,
    /// pmcrash's version.
    pub pmcrash_version: String,
    /// The configuration.
    pub config: ConfigReport,
    /// Verdict classes that fail the run.
    pub fail_on: Vec<Verdict>,
    /// Per workload.
    pub workloads: Vec<WorkloadReport>,
    /// Totals.
    pub totals: Totals,
    /// The run was interrupted (Ctrl-C): the report holds the workloads finished and,
    /// of the one interrupted, the crash points whose states were all checked; later
    /// workloads are missing.
    pub incomplete: bool,
}

impl Report {
    /// Assemble a report and its totals.
    pub fn new(
        config: ConfigReport,
        fail_on: &BTreeSet<Verdict>,
        workloads: Vec<WorkloadReport>,
    ) -> Report {
        let mut totals = Totals {
            workloads: workloads.len(),
            ..Totals::default()
        };
        for w in &workloads {
            totals.crash_points += w.stats.crash_points;
            totals.states += w.stats.states;
            totals.distinct_images += w.stats.distinct_images;
            totals.checked_images += w.stats.checked_images;
            totals.pruned_images += w.stats.pruned_images;
            totals.peak_rss_bytes = totals.peak_rss_bytes.max(w.stats.peak_rss_bytes);
            for (v, n) in &w.verdicts {
                *totals.verdicts.entry(*v).or_default() += n;
            }
            totals.failing_workloads += w.fails(fail_on) as usize;
        }
        Report {
            schema_version: REPORT_SCHEMA_VERSION,
            pmcrash_version: env!("CARGO_PKG_VERSION").to_owned(),
            config,
            fail_on: fail_on.iter().copied().collect(),
            workloads,
            totals,
            incomplete: false,
        }
    }

    /// The line that says a report is incomplete, `None` for a complete one.
    pub fn incomplete_line(&self) -> Option<String> {
        self.incomplete.then(|| {
            format!(
                "INCOMPLETE: interrupted; these verdicts cover only the {} crash state(s) of {} workload(s) checked before the interrupt",
                self.totals.states, self.totals.workloads
            )
        })
    }

    /// True when some workload fails: exit code 1.
    pub fn failed(&self) -> bool {
        self.totals.failing_workloads > 0
    }

    /// The stable summary: verdict classes, expectations, and what each user-space
    /// durability op wrote back. No timings, paths or counts that depend on kernel
    /// timing.
    pub fn summary(&self) -> serde_json::Value {
        let workloads: Vec<serde_json::Value> = self
            .workloads
            .iter()
            .map(|w| {
                let written_back: BTreeMap<String, serde_json::Value> = w
                    .ops
                    .iter()
                    .filter(|o| matches!(o.op.as_str(), "flush" | "msync"))
                    .map(|o| {
                        (
                            format!("{:02} {}", o.index, o.op),
                            serde_json::json!({
                                "user_lines": o.cost.user_lines_flushed,
                                "kernel_lines": o.cost.kernel_lines_flushed,
                            }),
                        )
                    })
                    .collect();
                serde_json::json!({
                    "workload": w.name,
                    "fs": w.fs,
                    "ops": w.ops.iter().map(|o| format!("{}{}", o.op, if o.ok { "" } else { " (failed)" })).collect::<Vec<_>>(),
                    "verdicts": w.seen(),
                    "expect_met": w.expect.as_ref().map(|e| e.met),
                    "written_back": written_back,
                })
            })
            .collect();
        serde_json::json!({
            "config": {
                "fs": self.config.fs,
                "model": self.config.model,
                "points": self.config.points,
                "states": self.config.states,
                "seed": self.config.seed,
            },
            "workloads": workloads,
        })
    }

    /// The terminal summary.
    pub fn render_text(&self) -> String {
        let mut s = String::new();
        let c = &self.config;
        let _ = writeln!(
            s,
            "pmcrash {}: {}-DAX, kernel {}, model {}, points {}, states {}, seed {}{}",
            self.pmcrash_version,
            c.fs,
            c.kernel,
            c.model,
            c.points,
            c.states,
            c.seed,
            c.sector_atomic
                .map(|s| format!(", {s}-byte sectors atomic"))
                .unwrap_or_default()
        );
        for w in &self.workloads {
            let _ = writeln!(s, "\n{} ({})", w.name, w.description);
            let st = &w.stats;
            let t = &w.timings;
            let _ = writeln!(
                s,
                "  {} records, {} crash points, {} states, {} distinct images, {} recovered states{}",
                st.records,
                st.crash_points,
                st.states,
                st.distinct_images,
                st.recovered_states,
                if st.capped_points > 0 {
                    format!(" ({} points capped)", st.capped_points)
                } else {
                    String::new()
                }
            );
            let _ = writeln!(
                s,
                "  images: {} checked ({} without recording reads), {} pruned (equal on what a check read), {} with an equal image's fsck (equal on what fsck read); peak memory {} MiB",
                st.checked_images,
                st.unrecorded_checks,
                st.pruned_images,
                st.fsck_reused,
                st.peak_rss_bytes >> 20
            );
            let _ = writeln!(
                s,
                "  time: guest ready {} ms, trace {} ms, enumerate {} ms, check {} ms ({:.1} images/s), oracle {} ms, total {} ms, then labels {} ms",
                t.guest_ready_ms, t.trace_ms, t.enumerate_ms, t.check_ms, t.images_per_sec, t.oracle_ms, t.total_ms, t.label_ms
            );
            let _ = writeln!(
                s,
                "  op  name           user-lines kernel-lines redundant fences"
            );
            for o in &w.ops {
                let _ = writeln!(
                    s,
                    "  {:>2}  {:<14} {:>10} {:>12} {:>9} {:>6}{}",
                    o.index,
                    o.op,
                    o.cost.user_lines_flushed,
                    o.cost.kernel_lines_flushed,
                    o.cost.redundant_flushes,
                    o.cost.fences,
                    if o.ok { "" } else { "  FAILED" }
                );
            }
            let _ = writeln!(
                s,
                "  crash point          op              states images  verdicts"
            );
            let shown: Vec<&PointReport> = w
                .points
                .iter()
                .filter(|p| p.verdicts.keys().any(|v| *v != Verdict::Ok))
                .take(20)
                .collect();
            for p in &shown {
                let _ = writeln!(
                    s,
                    "  record {:>10}  {:<15} {:>6} {:>6}  {}",
                    p.record,
                    match (&p.op, &p.op_name) {
                        (Some(i), Some(n)) => format!("{i} {n}"),
                        _ => "-".into(),
                    },
                    p.states,
                    p.distinct_images,
                    counts(&p.verdicts)
                );
            }
            let ok_points = w.points.len()
                - w.points
                    .iter()
                    .filter(|p| p.verdicts.keys().any(|v| *v != Verdict::Ok))
                    .count();
            let _ = writeln!(
                s,
                "  ({ok_points} crash points with every state ok not listed)"
            );
            let _ = writeln!(s, "  verdicts: {}", counts(&w.verdicts));
            if let Some(e) = &w.expect {
                let _ = writeln!(
                    s,
                    "  expected: {} -> {}",
                    names(&e.expected),
                    if e.met {
                        "met".to_owned()
                    } else {
                        format!("NOT MET (saw {})", names(&e.seen))
                    }
                );
            }
            for f in w.findings.iter().take(5) {
                let _ = writeln!(s, "{}", finding_line(f));
                for p in f.problems.iter().take(3) {
                    let _ = writeln!(s, "    {}: {}", p.verdict, p.message);
                }
                let labels: Vec<_> = f.dropped_lines.iter().map(|l| l.label.as_ref()).collect();
                let rows = crate::labels::fold(&labels, &Default::default());
                for r in rows.iter().take(3) {
                    let l = &f.dropped_lines[r.line];
                    let _ = writeln!(
                        s,
                        "    dropped line {:#x} ({}{}): {}",
                        l.pm_offset,
                        l.what(),
                        l.writer
                            .as_deref()
                            .map(|w| format!(", written by {w}"))
                            .unwrap_or_default(),
                        l.missing
                    );
                    if r.more > 0 {
                        let _ = writeln!(s, "      and {} more lines {}", r.more, r.phrase);
                    }
                }
                let shown: usize = rows.iter().take(3).map(|r| 1 + r.more).sum();
                if shown < f.dropped_lines.len() {
                    let _ = writeln!(
                        s,
                        "    ... {} more dropped line(s) in --json",
                        f.dropped_lines.len() - shown
                    );
                }
                let _ = writeln!(s, "    reproduce: {}", f.reproduce);
            }
            let more = w.findings.len().saturating_sub(5) as u64 + w.findings_omitted;
            if more > 0 {
                let _ = writeln!(s, "  ... {more} more finding(s) in --json");
            }
        }
        let tt = &self.totals;
        let _ = writeln!(
            s,
            "\n{} workload(s), {} crash points, {} states, {} distinct images ({} checked, {} pruned): {}; {} workload(s) failing; peak memory {} MiB",
            tt.workloads,
            tt.crash_points,
            tt.states,
            tt.distinct_images,
            tt.checked_images,
            tt.pruned_images,
            counts(&tt.verdicts),
            tt.failing_workloads,
            tt.peak_rss_bytes >> 20
        );
        if let Some(l) = self.incomplete_line() {
            let _ = writeln!(s, "{l}");
        }
        s
    }

    /// The table `pmcrash demo` prints: one row per workload.
    pub fn render_table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{:<44} {:>6} {:>6} {:>6}  {:<40} expected",
            "workload", "points", "states", "images", "verdicts"
        );
        for w in &self.workloads {
            let _ = writeln!(
                s,
                "{:<44} {:>6} {:>6} {:>6}  {:<40} {}",
                w.name.rsplit('/').next().unwrap_or(&w.name),
                w.stats.crash_points,
                w.stats.states,
                w.stats.distinct_images,
                counts(&w.verdicts),
                w.expect
                    .as_ref()
                    .map_or("-", |e| if e.met { "met" } else { "NOT MET" })
            );
        }
        if let Some(l) = self.incomplete_line() {
            let _ = writeln!(s, "{l}");
        }
        s
    }

    /// JUnit XML: one test suite per file system, one test case per workload; a
    /// workload that fails (see [`WorkloadReport::fails`]) has a `<failure>`.
    pub fn render_junit(&self, fail_on: &BTreeSet<Verdict>) -> String {
        let mut s = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        let failures = self.workloads.iter().filter(|w| w.fails(fail_on)).count();
        let secs = |ms: u64| format!("{:.3}", ms as f64 / 1000.0);
        let total_ms: u64 = self.workloads.iter().map(|w| w.timings.total_ms).sum();
        let _ = writeln!(
            s,
            "<testsuites name=\"pmcrash\" tests=\"{}\" failures=\"{failures}\" errors=\"0\" time=\"{}\">",
            self.workloads.len(),
            secs(total_ms)
        );
        let _ = writeln!(
            s,
            "  <testsuite name=\"pmcrash.{}\" tests=\"{}\" failures=\"{failures}\" errors=\"0\" skipped=\"0\" time=\"{}\">",
            self.config.fs,
            self.workloads.len(),
            secs(total_ms)
        );
        let _ = writeln!(s, "    <properties>");
        for (k, v) in [
            ("model", self.config.model.clone()),
            ("points", self.config.points.clone()),
            ("states", self.config.states.clone()),
            ("seed", self.config.seed.to_string()),
            ("kernel", self.config.kernel.clone()),
            ("incomplete", self.incomplete.to_string()),
        ] {
            let _ = writeln!(s, "      <property name=\"{k}\" value=\"{}\"/>", xml(&v));
        }
        let _ = writeln!(s, "    </properties>");
        for w in &self.workloads {
            let _ = write!(
                s,
                "    <testcase classname=\"pmcrash.{}\" name=\"{}\" time=\"{}\"",
                self.config.fs,
                xml(&w.name),
                secs(w.timings.total_ms)
            );
            if !w.fails(fail_on) {
                let _ = writeln!(s, "/>");
                continue;
            }
            let _ = writeln!(s, ">");
            let mut body = String::new();
            if let Some(e) = w.expect.as_ref().filter(|e| !e.met) {
                let _ = writeln!(
                    body,
                    "expected {} but saw {}",
                    names(&e.expected),
                    names(&e.seen)
                );
            }
            for f in &w.findings {
                let _ = writeln!(body, "{}", finding_line(f).trim_start());
                let _ = writeln!(body, "  reproduce: {}", f.reproduce);
                for p in &f.problems {
                    let _ = writeln!(body, "  {}", p.message);
                }
            }
            let _ = writeln!(
                s,
                "      <failure type=\"pmcrash.verdict\" message=\"{}\">{}</failure>",
                xml(&counts(&w.verdicts)),
                xml(&body)
            );
            let _ = writeln!(s, "    </testcase>");
        }
        let _ = writeln!(s, "  </testsuite>\n</testsuites>");
        s
    }
}

/// A finding's first line: verdict, where, and how many states and points it covers.
fn finding_line(f: &Finding) -> String {
    let span = if f.first_record == f.last_record {
        format!("record {}", f.first_record)
    } else {
        format!("records {}..={}", f.first_record, f.last_record)
    };
    format!(
        "  finding {}: {} at {span} (op {} {}{}): {} state(s) at {} crash point(s); first at record {}, {} line(s) dropped",
        f.id,
        f.verdict,
        f.point.op.map_or("-".into(), |o| o.to_string()),
        f.point.op_name.as_deref().unwrap_or("-"),
        f.point
            .after_marker
            .as_ref()
            .map_or(String::new(), |m| format!(", after {m}")),
        f.states,
        f.crash_points,
        f.point.record,
        f.dropped_lines.len()
    )
}

fn names(v: &[Verdict]) -> String {
    v.iter().map(|v| v.name()).collect::<Vec<_>>().join(", ")
}

/// `ok 12, unsafe-flush-only 3`, worst last so `ok` reads first.
pub fn counts(m: &BTreeMap<Verdict, u64>) -> String {
    let mut parts: Vec<String> = m
        .iter()
        .rev()
        .filter(|(_, n)| **n > 0)
        .map(|(v, n)| format!("{v} {n}"))
        .collect();
    if parts.is_empty() {
        parts.push("none".into());
    }
    parts.join(", ")
}

/// Escape text for XML attributes and content; characters XML 1.0 forbids are
/// replaced. The HTML report escapes with it too.
pub(crate) fn xml(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(ch),
            c if (c as u32) < 0x20 => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xml_escapes_everything_dangerous() {
        assert_eq!(xml("a<b>&\"'\u{1}"), "a&lt;b&gt;&amp;&quot;&apos;\u{fffd}");
    }

    #[test]
    fn counts_read_ok_first() {
        let m = BTreeMap::from([
            (Verdict::Ok, 3),
            (Verdict::UnsafeFlushOnly, 1),
            (Verdict::StaleData, 0),
        ]);
        assert_eq!(counts(&m), "ok 3, unsafe-flush-only 1");
    }
}
