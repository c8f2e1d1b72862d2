//! `pmcrash minimize --ops`: the fewest ops of a bundle's workload that still give a
//! finding with the finding's verdict at an op of the same kind (its name: `fence`,
//! `fsync`, ...). Delta debugging ([`Ddmin`]) over the ops; each candidate is first
//! made valid by [`repair`] (the op language's one validation, [`validate`]: an op
//! whose descriptor or mapping a dropped op made goes too), then traced, crash-checked
//! and judged by a whole run of the pipeline with the bundle's configuration (file
//! system, model, points, states, caps), less `--crash-at`: its record number moves
//! when ops go. There is no randomness: the same bundle gives the same tries.
//!
//! [`OpSearch`] is the search as a pure state machine (tested without a guest);
//! [`minimize_ops`] runs it with real runs, one candidate workload at a time (each run
//! uses every checker guest).

use super::Ddmin;
use crate::bundle::{Bundle, BundleError};
use crate::oracle::Verdict;
use crate::pipeline::{Pipeline, PipelineError, RunConfig};
use crate::report::{Finding, WorkloadReport};
use crate::repro::ReproError;
use crash_models::ops::{validate, Op, Workload};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// `keep` (ascending indices into `ops`) less the ops [`validate`] refuses once the
/// others are gone: the first refused op is dropped, and again, until the rest is
/// valid. Dropping an `open` drops the ops on its descriptor, an `mmap` those on its
/// mapping, and so on. Ops on paths a dropped op made stay: they fail with an errno in
/// the guest, which is a valid workload.
pub fn repair(ops: &[Op], keep: &[usize]) -> Vec<usize> {
    let mut sel = keep.to_vec();
    while !sel.is_empty() {
        let picked: Vec<Op> = sel.iter().map(|&i| ops[i].clone()).collect();
        match validate(&picked) {
            Ok(()) => break,
            Err(e) => {
                sel.remove(e.op_index.min(sel.len() - 1));
            }
        }
    }
    sel
}

/// The op search as a state machine: [`OpSearch::next_try`] gives the next candidate
/// workload to run (ascending indices into the ops, valid), [`OpSearch::answer`] takes
/// whether its run gave the finding. A candidate is not run when it is empty, holds no
/// op of the finding's kind, or was answered before (repairs can make two candidates
/// one). The whole workload is taken to give the finding (the bundle's run did).
#[derive(Debug, Clone)]
pub struct OpSearch {
    ops: Vec<Op>,
    target: Option<String>,
    dd: Ddmin,
    candidates: Vec<Vec<usize>>,
    next: usize,
    asked: Option<Vec<usize>>,
    answers: BTreeMap<Vec<usize>, bool>,
    skipped: usize,
}

impl OpSearch {
    /// Search over `ops`; `target` is the finding's op name (`None` when its crash
    /// point is at no op).
    pub fn new(ops: &[Op], target: Option<&str>) -> OpSearch {
        let dd = Ddmin::new(ops.len());
        OpSearch {
            ops: ops.to_vec(),
            target: target.map(str::to_owned),
            candidates: dd.candidates(),
            dd,
            next: 0,
            asked: None,
            answers: BTreeMap::new(),
            skipped: 0,
        }
    }

    /// The smallest set of ops found so far that gives the finding.
    pub fn current(&self) -> &[usize] {
        self.dd.current()
    }

    /// Candidates run (answered).
    pub fn tries(&self) -> usize {
        self.answers.len()
    }

    /// Candidates not run: empty once repaired, without an op of the finding's kind,
    /// or the same as one answered before.
    pub fn skipped(&self) -> usize {
        self.skipped
    }

    fn settle(&mut self, failed: Option<Vec<usize>>) {
        self.dd.advance_to(failed);
        self.candidates = self.dd.candidates();
        self.next = 0;
    }

    fn usable(&self, c: &[usize]) -> bool {
        !c.is_empty()
            && self
                .target
                .as_deref()
                .is_none_or(|t| c.iter().any(|&i| self.ops[i].name() == t))
    }

    /// The next candidate to run, or `None` when [`OpSearch::current`] is 1-minimal
    /// (no single op less, repaired, gives the finding). Until it is answered, the same
    /// candidate is given again.
    pub fn next_try(&mut self) -> Option<Vec<usize>> {
        if let Some(a) = &self.asked {
            return Some(a.clone());
        }
        loop {
            if self.dd.is_done() {
                return None;
            }
            let Some(c) = self.candidates.get(self.next) else {
                self.settle(None);
                continue;
            };
            let c = repair(&self.ops, c);
            if !self.usable(&c) {
                self.skipped += 1;
                self.next += 1;
                continue;
            }
            match self.answers.get(&c) {
                Some(true) => {
                    self.skipped += 1;
                    self.settle(Some(c));
                }
                Some(false) => {
                    self.skipped += 1;
                    self.next += 1;
                }
                None => {
                    self.asked = Some(c.clone());
                    return Some(c);
                }
            }
        }
    }

    /// Whether the candidate [`OpSearch::next_try`] gave last gave the finding.
    pub fn answer(&mut self, gave_finding: bool) {
        let Some(c) = self.asked.take() else {
            return;
        };
        self.answers.insert(c.clone(), gave_finding);
        if gave_finding {
            self.settle(Some(c));
        } else {
            self.next += 1;
        }
    }
}

/// The workload of `w`'s ops `keep` (ascending indices), with its file systems and
/// checkers, and no `[expect]` (its op numbers and verdicts were about all the ops).
pub fn candidate(w: &Workload, keep: &[usize], origin: &str) -> Workload {
    Workload {
        description: format!(
            "{} [minimised by `pmcrash minimize --ops` from {origin}: its ops {keep:?} of {}]",
            w.description,
            w.ops.len()
        ),
        fs: w.fs.clone(),
        ops: keep.iter().map(|&i| w.ops[i].clone()).collect(),
        op_locations: keep
            .iter()
            .filter_map(|&i| w.op_locations.get(i).copied())
            .collect(),
        expect: None,
        checkers: w.checkers.clone(),
        // The same first op to crash in, renumbered; none when it and every later op
        // were dropped.
        crash_from_op: w.crash_from_op.and_then(|from| {
            let before = keep.iter().filter(|&&i| (i as u32) < from).count();
            (before < keep.len()).then_some(before as u32)
        }),
    }
}

/// The ids of the findings of `report` with `verdict` at an op named `op_name` that
/// also pass `same`, when given.
pub fn matching(
    report: &WorkloadReport,
    verdict: Verdict,
    op_name: Option<&str>,
    same: Option<&(dyn Fn(&Finding) -> bool + Sync)>,
) -> Vec<String> {
    report
        .findings
        .iter()
        .filter(|f| {
            f.verdict == verdict
                && f.point.op_name.as_deref() == op_name
                && same.is_none_or(|same| same(f))
        })
        .map(|f| f.id.clone())
        .collect()
}

/// The bundle's configuration for the runs of the search: every option that decides
/// crash states, but not `--crash-at` (a record number of the whole workload), and
/// every finding listed (the search looks for one among them).
pub fn search_config(b: &Bundle, workers: Option<usize>) -> Result<RunConfig, BundleError> {
    let mut cfg = crate::repro::run_config(b, workers)?;
    cfg.crash_at = None;
    cfg.state_verdicts = false;
    cfg.max_findings = usize::MAX;
    Ok(cfg)
}

/// Where [`minimize_ops`] wrote the minimal workload.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SavedMinimal {
    /// The minimal workload's TOML (`DIR/workload.toml`).
    pub workload: PathBuf,
    /// Its run bundle (`DIR/workload`), as `run --save` writes it.
    pub bundle: PathBuf,
    /// The ids of that run's findings with the verdict at the op kind (empty if the
    /// run that saved it did not give the finding again).
    pub findings: Vec<String>,
}

/// What [`minimize_ops`] found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MinimizedOps {
    /// The finding id.
    pub id: String,
    /// Its verdict, which every accepted try gave.
    pub verdict: Verdict,
    /// The name of the op it crashed in (or after), which every accepted try's finding
    /// had.
    pub op_name: Option<String>,
    /// Ops of the bundle's workload.
    pub ops_before: usize,
    /// Ops of the minimal workload.
    pub ops_after: usize,
    /// Which ops it keeps (indices into the bundle's workload).
    pub kept: Vec<usize>,
    /// The minimal workload as TOML.
    pub workload_toml: String,
    /// Candidate workloads run (traced, checked and judged).
    pub tries: usize,
    /// The search ran to its end: no single op less gives the finding (1-minimal).
    /// False when it stopped at its bound of runs.
    pub complete: bool,
    /// Candidates not run (no op of the kind, empty, or the same as an earlier one).
    pub skipped: usize,
    /// Tries whose run failed (a program failed, or the trace was unusable: a flush
    /// of a page no op touched cannot be translated), taken as not giving the finding.
    pub failed_runs: usize,
    /// Why they failed: each one's ops (indices) and error.
    pub failures: Vec<String>,
    /// Wall time, guests' start and the saving run included, in milliseconds.
    pub elapsed_ms: u64,
    /// Where it was written (`--out`).
    pub saved: Option<SavedMinimal>,
}

/// The verdict and op name of finding `id` in the bundle's report, or `None` when the
/// report lists no finding with that id.
fn target(b: &Bundle, id: &str) -> Result<Option<(Verdict, Option<String>)>, ReproError> {
    let report = b.report()?;
    let Some(f) = report["workloads"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|w| w["findings"].as_array().into_iter().flatten())
        .find(|f| f["id"] == id)
    else {
        return Ok(None);
    };
    let verdict = serde_json::from_value(f["verdict"].clone()).map_err(|e| BundleError::Field {
        file: b.dir.join("report.json"),
        field: format!("findings[id = {id}].verdict"),
        message: e.to_string(),
    })?;
    Ok(Some((
        verdict,
        f["point"]["op_name"].as_str().map(str::to_owned),
    )))
}

/// How [`minimize_ops_with`] searches, besides the bundle's configuration.
#[derive(Default, Clone, Copy)]
pub struct OpsSearch<'a> {
    /// Write the minimal workload here as `workload.toml`, and its run bundle as
    /// `workload/`.
    pub out: Option<&'a Path>,
    /// Show a progress bar.
    pub progress: bool,
    /// Run at most this many candidates, then keep the fewest ops found so far (which
    /// give the finding, but may not be 1-minimal: [`MinimizedOps::complete`]).
    pub max_tries: Option<usize>,
    /// A finding of a try counts only if it also passes this test (a fuzz campaign's
    /// signature: the same writer and missing flush or fence, not only the verdict at
    /// the op kind).
    pub same: Option<&'a (dyn Fn(&Finding) -> bool + Sync)>,
}

/// Minimise the ops of finding `id` of bundle `b` with pipeline `p` (made with
/// [`search_config`]); with `out`, write the minimal workload there as `workload.toml`
/// and its run bundle as `workload/`. `Ok(None)` when the bundle's report lists no
/// finding with that id.
pub async fn minimize_ops(
    p: &mut Pipeline,
    b: &Bundle,
    id: &str,
    out: Option<&Path>,
    progress: bool,
) -> Result<Option<MinimizedOps>, ReproError> {
    let opts = OpsSearch {
        out,
        progress,
        ..OpsSearch::default()
    };
    minimize_ops_with(p, b, id, opts).await
}

/// [`minimize_ops`] with a bound on the runs and a finer test of what counts as the
/// finding again.
pub async fn minimize_ops_with(
    p: &mut Pipeline,
    b: &Bundle,
    id: &str,
    opts: OpsSearch<'_>,
) -> Result<Option<MinimizedOps>, ReproError> {
    let OpsSearch {
        out,
        progress,
        max_tries,
        same,
    } = opts;
    let t0 = Instant::now();
    let io = |what: String| move |source: std::io::Error| ReproError::Io { what, source };
    let Some((verdict, op_name)) = target(b, id)? else {
        return Ok(None);
    };
    let paths = out.map(|d| (d.join("workload.toml"), d.join("workload")));
    if let Some((toml, bundle)) = &paths {
        for path in [toml, bundle] {
            if path.exists() {
                return Err(io(format!(
                    "write the minimal workload: {} already exists (pick a new --out directory)",
                    path.display()
                ))(std::io::ErrorKind::AlreadyExists.into()));
            }
        }
    }
    let name = b.run.workload.as_str();
    let ops = &b.workload.ops;
    let gives = |r: &WorkloadReport| matching(r, verdict, op_name.as_deref(), same);
    let mut search = OpSearch::new(ops, op_name.as_deref());
    let mut complete = true;
    let bar = crate::progress::bar(0, progress, "minimize --ops");
    let mut failed_runs = 0;
    let mut failures: Vec<String> = Vec::new();
    while let Some(c) = search.next_try() {
        if max_tries.is_some_and(|m| search.tries() >= m) {
            complete = false;
            break;
        }
        bar.set_message(format!(
            "try {}: {} of {} ops (fewest so far {})",
            search.tries() + 1,
            c.len(),
            ops.len(),
            search.current().len()
        ));
        let w = candidate(&b.workload, &c, name);
        let gave = match p.run_workload(name, &w, false).await {
            Ok(r) => !gives(&r).is_empty(),
            Err(e @ (PipelineError::Program { .. } | PipelineError::BadTrace { .. })) => {
                failed_runs += 1;
                failures.push(format!("ops {c:?}: {e}"));
                false
            }
            Err(e) => return Err(ReproError::Pipeline(Box::new(e))),
        };
        search.answer(gave);
        bar.set_position(search.tries() as u64);
    }
    let kept = search.current().to_vec();
    let made = candidate(&b.workload, &kept, name);
    let workload_toml = crate::fuzz::gen::to_toml(&made);
    let mut saved = None;
    if let Some((toml_path, bundle)) = paths {
        bar.set_message("saving the minimal workload and its bundle");
        let file = toml_path.display().to_string();
        // Run what is written, exactly: the file read back.
        let w = Workload::parse(&workload_toml, &file)
            .map_err(|e| io("read back the minimal workload".into())(std::io::Error::other(e)))?;
        let dir = toml_path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(io(format!("create {}", dir.display())))?;
        crate::cache::write_atomic(&toml_path, workload_toml.as_bytes())
            .map_err(|e| io(format!("write {file}"))(std::io::Error::other(e)))?;
        p.save_bundles(dir);
        let r = p
            .run_workload(&file, &w, false)
            .await
            .map_err(|e| ReproError::Pipeline(Box::new(e)))?;
        saved = Some(SavedMinimal {
            workload: toml_path,
            bundle,
            findings: gives(&r),
        });
    }
    bar.finish_and_clear();
    Ok(Some(MinimizedOps {
        id: id.to_owned(),
        verdict,
        op_name,
        ops_before: ops.len(),
        ops_after: kept.len(),
        kept,
        workload_toml,
        tries: search.tries(),
        complete,
        skipped: search.skipped(),
        failed_runs,
        failures,
        elapsed_ms: t0.elapsed().as_millis() as u64,
        saved,
    }))
}

impl MinimizedOps {
    /// In words, for the terminal.
    pub fn render_text(&self, b: &Bundle) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let at = self
            .op_name
            .as_deref()
            .map_or("at no op".to_owned(), |o| format!("at a `{o}` op"));
        let _ = writeln!(
            s,
            "finding {}: {} {at} of {} on {}-DAX",
            self.id, self.verdict, b.run.workload, b.run.fs
        );
        let _ = writeln!(
            s,
            "minimised ops: {} -> {}: these ops of the workload still give {} {at} \
             ({} runs, {} candidates not run, {:.1} s)",
            self.ops_before,
            self.ops_after,
            self.verdict,
            self.tries,
            self.skipped,
            self.elapsed_ms as f64 / 1000.0
        );
        if !self.complete {
            let _ = writeln!(
                s,
                "  (stopped at its bound of {} runs: fewer ops may still give it)",
                self.tries
            );
        }
        for &i in &self.kept {
            let _ = writeln!(s, "  op {i}: {}", b.workload.ops[i].name());
        }
        if self.failed_runs > 0 {
            let _ = writeln!(
                s,
                "  ({} runs failed and count as not giving it)",
                self.failed_runs
            );
            for f in &self.failures {
                let _ = writeln!(s, "    {f}");
            }
        }
        match &self.saved {
            Some(saved) => {
                let _ = writeln!(
                    s,
                    "wrote {} and its bundle {}",
                    saved.workload.display(),
                    saved.bundle.display()
                );
                match saved.findings.first() {
                    Some(f) => {
                        let _ = writeln!(
                            s,
                            "its finding {f}: `pmcrash minimize {} {f}` gives the dropped lines that matter",
                            saved.bundle.display()
                        );
                    }
                    None => {
                        let _ = writeln!(
                            s,
                            "warning: the run that saved it did not give the finding again"
                        );
                    }
                }
            }
            None => {
                let _ = writeln!(
                    s,
                    "the minimal workload (`--out DIR` writes it and its bundle):"
                );
                s.push_str(&self.workload_toml);
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    /// LSFMM 01 (7 ops, its finding at the `fence`) with three ops around it that
    /// nothing needs (the guest test in `tests/repro_tools.rs` runs it too).
    const PADDED: &str = include_str!("../../tests/data/padded-01.toml");

    /// The ops of LSFMM 01 in [`PADDED`].
    const NEEDED: [usize; 7] = [1, 2, 3, 5, 6, 7, 8];

    fn padded() -> Workload {
        Workload::parse(PADDED, "padded.toml").unwrap()
    }

    /// Run the search with `gives` as the run; (result, every candidate asked).
    fn search(
        ops: &[Op],
        target: Option<&str>,
        gives: impl Fn(&[usize]) -> bool,
    ) -> (Vec<usize>, Vec<Vec<usize>>) {
        let mut s = OpSearch::new(ops, target);
        let mut asked = vec![];
        while let Some(c) = s.next_try() {
            asked.push(c.clone());
            s.answer(gives(&c));
        }
        assert_eq!(s.tries(), asked.len());
        (s.current().to_vec(), asked)
    }

    fn valid(ops: &[Op], keep: &[usize]) -> bool {
        let picked: Vec<Op> = keep.iter().map(|&i| ops[i].clone()).collect();
        validate(&picked).is_ok()
    }

    #[test]
    fn repair_drops_the_ops_on_a_dropped_descriptor_or_mapping() {
        let w = padded();
        // Without the open of `f`, nothing on `f` or its mapping can run.
        assert_eq!(
            repair(&w.ops, &[0, 2, 3, 4, 5, 6, 7, 8, 9]),
            vec![0, 4, 8, 9]
        );
        // Without the mmap, the store and flush go; the rest stays.
        assert_eq!(repair(&w.ops, &[1, 2, 3, 6, 7, 8]), vec![1, 2, 3, 8]);
        // A valid subset is kept as it is.
        assert_eq!(repair(&w.ops, &NEEDED), NEEDED.to_vec());
        assert_eq!(repair(&w.ops, &[]), Vec::<usize>::new());
        // A close dropped between two opens of one name: the second open goes, and
        // the write goes to the first.
        let src = r#"
[[ops]]
op = "open"
path = "a"
fd = "f"
create = true
[[ops]]
op = "close"
fd = "f"
[[ops]]
op = "open"
path = "b"
fd = "f"
create = true
[[ops]]
op = "write"
fd = "f"
data = "x"
"#;
        let w = Workload::parse(src, "reopen.toml").unwrap();
        assert_eq!(repair(&w.ops, &[0, 2, 3]), vec![0, 3]);
    }

    #[test]
    fn the_search_finds_exactly_the_ops_a_finding_needs() {
        let w = padded();
        let needed: BTreeSet<usize> = NEEDED.into_iter().collect();
        let (got, asked) = search(&w.ops, Some("fence"), |c| {
            needed.iter().all(|i| c.contains(i))
        });
        assert_eq!(got, NEEDED.to_vec());
        let distinct: BTreeSet<&Vec<usize>> = asked.iter().collect();
        assert_eq!(
            distinct.len(),
            asked.len(),
            "a candidate asked twice: {asked:?}"
        );
        for c in &asked {
            assert!(valid(&w.ops, c), "invalid candidate {c:?}");
            assert!(c.iter().any(|&i| w.ops[i].name() == "fence"), "{c:?}");
        }
        // Each run is a traced and checked workload: 15 here, 7 of them the last
        // round's proof that no single op less gives the finding.
        assert!(asked.len() <= 15, "{} runs: {asked:?}", asked.len());
    }

    #[test]
    fn a_finding_no_smaller_workload_gives_keeps_every_op() {
        let w = padded();
        let (got, _) = search(&w.ops, Some("fence"), |c| c.len() == w.ops.len());
        assert_eq!(got, (0..w.ops.len()).collect::<Vec<_>>());
        // One op, nothing to try.
        let (got, asked) = search(&w.ops[8..9], Some("fence"), |_| true);
        assert_eq!((got, asked.len()), (vec![0], 0));
    }

    #[test]
    fn the_minimal_workload_reads_back_as_the_same_ops_and_checkers() {
        let mut w = padded();
        w.checkers
            .push(crash_models::ops::UserChecker::pmempool_check("pool.obj"));
        w.fs = vec![crash_models::ops::FsKind::Ext4];
        let m = candidate(&w, &NEEDED, "padded.toml");
        let text = crate::fuzz::gen::to_toml(&m);
        let back = Workload::parse(&text, "min.toml").unwrap();
        assert_eq!(back.ops, m.ops);
        assert_eq!(back.ops.len(), 7);
        assert_eq!(back.checkers, w.checkers);
        assert_eq!(back.fs, w.fs);
        assert!(back.expect.is_none());
        assert!(
            back.description.contains("[1, 2, 3, 5, 6, 7, 8] of 10"),
            "{text}"
        );
        assert_eq!(m.op_locations.len(), 7);
    }

    proptest! {
        /// Random workloads, a finding that needs a random valid set of their ops: the
        /// search asks only valid candidates with an op of the finding's kind, each
        /// once, and ends with a set that gives the finding, from which no single op
        /// less (repaired) does.
        #[test]
        fn results_give_the_finding_and_are_one_minimal(
            seed in any::<u64>(),
            mask in any::<u64>(),
        ) {
            let w = crash_models::generate::random_workload(
                seed,
                &crash_models::generate::GenConfig::default(),
            );
            let ops = &w.ops;
            let pick: Vec<usize> = (0..ops.len()).filter(|i| (mask >> (i % 64)) & 1 == 1).collect();
            let needed = repair(ops, &pick);
            prop_assume!(!needed.is_empty());
            let kind = ops[*needed.last().unwrap()].name();
            let gives = |c: &[usize]| needed.iter().all(|i| c.contains(i));
            let (got, asked) = search(ops, Some(kind), gives);
            prop_assert!(gives(&got));
            prop_assert!(valid(ops, &got));
            let distinct: BTreeSet<&Vec<usize>> = asked.iter().collect();
            prop_assert_eq!(distinct.len(), asked.len());
            for c in &asked {
                prop_assert!(valid(ops, c));
                prop_assert!(c.iter().any(|&i| ops[i].name() == kind));
            }
            for x in &got {
                let less: Vec<usize> = got.iter().copied().filter(|i| i != x).collect();
                let r = repair(ops, &less);
                let usable = r.iter().any(|&i| ops[i].name() == kind);
                prop_assert!(!(usable && gives(&r)), "{:?} less {} still gives it", got, x);
            }
        }
    }
}
