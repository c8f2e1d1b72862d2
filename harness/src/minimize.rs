//! `pmcrash minimize`: the smallest set of a finding's dropped lines that still gives
//! its verdict, by delta debugging (Zeller and Hildebrandt's ddmin) over the lines the
//! finding's crash state drops. A try keeps the chosen lines dropped as the finding's
//! state drops them and persists every other in-flight line whole; its image is
//! recovered by a checker guest and judged against the crash point's promises, like
//! any state of a run. The result is 1-minimal: dropping any one line fewer loses the
//! verdict.
//!
//! [`Ddmin`] is the pure search (unit- and property-tested); [`minimize_lines`] runs
//! it with real checks, a batch of tries at a time (one per checker guest).
//! [`ops`] is the other minimisation (`minimize --ops`): the fewest ops of the workload
//! that still give a finding of the same verdict at the same kind of op.

use crate::bundle::Bundle;
use crate::oracle::{Problem, Verdict};
use crate::pipeline::{FindingState, Pipeline, PipelineError};
use crate::report::{DroppedLine, PointRef};
use crate::repro::{unpack, ReproError};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

pub mod ops;

/// Delta debugging over `n` items (indices), as a state machine: [`Ddmin::candidates`]
/// gives the subsets to try now, in order, and [`Ddmin::advance`] takes the first of
/// them that still fails (reproduces), if any. Tries are not remembered: the caller
/// asks about each candidate once.
#[derive(Debug, Clone)]
pub struct Ddmin {
    current: Vec<usize>,
    granularity: usize,
    /// Trying the complements of the chunks (after no chunk alone failed).
    complements: bool,
    done: bool,
}

impl Ddmin {
    /// Start from every one of `n` items (which must fail: the caller checks that).
    pub fn new(n: usize) -> Ddmin {
        Ddmin {
            current: (0..n).collect(),
            granularity: 2,
            complements: false,
            done: n <= 1,
        }
    }

    /// The smallest failing set found so far.
    pub fn current(&self) -> &[usize] {
        &self.current
    }

    /// No smaller failing set can be found: [`Ddmin::current`] is 1-minimal.
    pub fn is_done(&self) -> bool {
        self.done
    }

    fn chunks(&self) -> Vec<Vec<usize>> {
        let n = self.granularity.min(self.current.len()).max(1);
        let len = self.current.len();
        (0..n)
            .map(|i| self.current[i * len / n..(i + 1) * len / n].to_vec())
            .collect()
    }

    /// The subsets to try now, in order (empty when done).
    pub fn candidates(&self) -> Vec<Vec<usize>> {
        if self.done {
            return vec![];
        }
        let chunks = self.chunks();
        if !self.complements {
            return chunks;
        }
        (0..chunks.len())
            .map(|skip| {
                chunks
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| *i != skip)
                    .flat_map(|(_, c)| c.iter().copied())
                    .collect()
            })
            .collect()
    }

    /// Take the answer to [`Ddmin::candidates`]: the index of the first candidate
    /// that failed, or `None`.
    pub fn advance(&mut self, failed: Option<usize>) {
        let failed = failed.map(|i| self.candidates().swap_remove(i));
        self.advance_to(failed);
    }

    /// Like [`Ddmin::advance`], but the set that failed is given: a non-empty subset
    /// of one of [`Ddmin::candidates`] (the op search tries a candidate less the ops
    /// that would be invalid without the ones it drops).
    pub fn advance_to(&mut self, failed: Option<Vec<usize>>) {
        if self.done {
            return;
        }
        let n = self.granularity.min(self.current.len());
        match failed {
            Some(c) => {
                self.granularity = if self.complements { (n - 1).max(2) } else { 2 };
                self.current = c;
                self.complements = false;
            }
            // With two chunks a complement is the other chunk: already tried.
            None if !self.complements && n > 2 => self.complements = true,
            None if n < self.current.len() => {
                self.granularity = (2 * n).min(self.current.len());
                self.complements = false;
            }
            None => self.done = true,
        }
        if self.current.len() <= 1 {
            self.done = true;
        }
    }
}

/// What [`minimize_lines`] found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Minimized {
    /// The finding id.
    pub id: String,
    /// Where it crashed.
    pub point: PointRef,
    /// The finding's verdict, which every failing try had.
    pub verdict: Verdict,
    /// Lines the finding's state drops.
    pub dropped_lines: usize,
    /// The lines that matter: dropping only these (as the finding does) still gives the
    /// verdict, and dropping any one fewer does not. Empty when even the state with no
    /// line dropped has the verdict (the finding does not come from lost lines).
    pub lines: Vec<DroppedLine>,
    /// The minimal state's problems.
    pub problems: Vec<Problem>,
    /// Image checks made (the finding's own state and the all-persisted state
    /// included).
    pub tries: usize,
    /// Wall time of the search, guests' start included, in milliseconds.
    pub elapsed_ms: u64,
}

/// Minimise finding `id` of bundle `b` (checked by `p`, made by
/// [`crate::repro::pipeline_for`]): `Ok(None)` when no state has that id. Fails when
/// the finding's own state no longer gives its verdict.
pub async fn minimize_lines(
    p: &mut Pipeline,
    b: &Bundle,
    id: &str,
    workers: usize,
    progress: bool,
) -> Result<Option<Minimized>, ReproError> {
    let t0 = Instant::now();
    let pipe = |e: PipelineError| ReproError::Pipeline(Box::new(e));
    let u = unpack(b)?;
    let name = b.run.workload.as_str();
    let bar = crate::progress::bar(0, progress, "minimize");
    bar.set_message("starting checker guests, finding the state");
    let Some(f) = p
        .finding_state(
            name,
            &b.workload,
            &u.trace,
            &u.base_image,
            &b.run.results,
            id,
        )
        .await
        .map_err(pipe)?
    else {
        return Ok(None);
    };
    let offsets: Vec<u64> = f.dropped.iter().map(|l| l.pm_offset).collect();
    let set = |idx: &[usize]| -> BTreeSet<u64> { idx.iter().map(|&i| offsets[i]).collect() };
    let mut tries = 0usize;
    bar.set_message("the finding's state and the all-persisted one");
    let all: BTreeSet<u64> = offsets.iter().copied().collect();
    let first = check(p, name, &u.base_image, &f, &[all, BTreeSet::new()]).await?;
    tries += 2;
    let verdict = first[0].0;
    if verdict == Verdict::Ok {
        return Err(ReproError::NotReproduced(format!(
            "finding {id}: its own crash state checks ok now, so there is nothing to \
             minimise (`pmcrash repro` shows its recovery)"
        )));
    }
    let mut minimal = first[0].1.clone();
    let mut dd = Ddmin::new(offsets.len());
    if first[1].0 == verdict {
        minimal = first[1].1.clone();
        dd = Ddmin::new(0);
    }
    while !dd.is_done() {
        bar.set_message(format!(
            "{} of {} lines still dropped",
            dd.current().len(),
            offsets.len()
        ));
        let cands = dd.candidates();
        let mut found = None;
        for (k, group) in cands.chunks(workers.max(1)).enumerate() {
            let sets: Vec<BTreeSet<u64>> = group.iter().map(|c| set(c)).collect();
            let got = check(p, name, &u.base_image, &f, &sets).await?;
            tries += sets.len();
            bar.set_position(tries as u64);
            if let Some(i) = got.iter().position(|(v, _)| *v == verdict) {
                found = Some(k * workers.max(1) + i);
                minimal = got[i].1.clone();
                break;
            }
        }
        dd.advance(found);
    }
    bar.finish_and_clear();
    let keep = set(dd.current());
    let lines = f
        .dropped
        .iter()
        .filter(|l| keep.contains(&l.pm_offset))
        .cloned()
        .collect();
    Ok(Some(Minimized {
        id: id.to_owned(),
        point: f.point.clone(),
        verdict,
        dropped_lines: offsets.len(),
        lines,
        problems: minimal,
        tries,
        elapsed_ms: t0.elapsed().as_millis() as u64,
    }))
}

/// One batch of variants of `f` (each keeps the dropped lines in its set) recovered
/// and judged, in order.
async fn check(
    p: &mut Pipeline,
    name: &str,
    base_image: &std::path::Path,
    f: &FindingState,
    sets: &[BTreeSet<u64>],
) -> Result<Vec<(Verdict, Vec<Problem>)>, ReproError> {
    let images = sets
        .iter()
        .map(|s| Arc::new(f.snap.build(&f.variant(s))))
        .collect();
    let recs = p
        .recover_images(name, base_image, &f.history, images)
        .await
        .map_err(|e| ReproError::Pipeline(Box::new(e)))?;
    Ok(recs.iter().map(|r| f.judge(r)).collect())
}

impl Minimized {
    /// In words, for the terminal.
    pub fn render_text(&self, b: &Bundle) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let p = &self.point;
        let _ = writeln!(
            s,
            "finding {}: {} at record {} (op {} {}) of {} on {}-DAX",
            self.id,
            self.verdict,
            p.record,
            p.op.map_or("-".into(), |o| o.to_string()),
            p.op_name.as_deref().unwrap_or("-"),
            b.run.workload,
            b.run.fs
        );
        let _ = writeln!(
            s,
            "minimised: {} of its {} dropped line(s) give the verdict ({} image checks, {:.1} s)",
            self.lines.len(),
            self.dropped_lines,
            self.tries,
            self.elapsed_ms as f64 / 1000.0
        );
        if self.lines.is_empty() {
            let _ = writeln!(
                s,
                "  no line needs to be dropped: the state with every line persisted has the verdict too"
            );
        }
        for l in &self.lines {
            let _ = writeln!(
                s,
                "  line {:#x} ({}): kept {} of {} store(s); {}{}",
                l.pm_offset,
                l.what(),
                l.kept,
                l.queued,
                l.missing,
                l.writer
                    .as_ref()
                    .map_or(String::new(), |w| format!("; written by {w}"))
            );
        }
        for pr in &self.problems {
            let _ = writeln!(s, "  {}: {}", pr.verdict, pr.message);
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Run ddmin with `fails` as the test, one candidate at a time; (result, tries).
    fn run(n: usize, fails: impl Fn(&[usize]) -> bool) -> (Vec<usize>, usize) {
        let mut d = Ddmin::new(n);
        let mut tries = 0;
        while !d.is_done() {
            let c = d.candidates();
            let mut found = None;
            for (i, s) in c.iter().enumerate() {
                tries += 1;
                if fails(s) {
                    found = Some(i);
                    break;
                }
            }
            d.advance(found);
        }
        (d.current().to_vec(), tries)
    }

    #[test]
    fn one_culprit_among_many_is_found_in_logarithmic_tries() {
        let (got, tries) = run(128, |s| s.contains(&77));
        assert_eq!(got, vec![77]);
        assert!(tries <= 2 * 7 + 2, "{tries} tries");
    }

    #[test]
    fn two_culprits_in_different_halves() {
        let (got, _) = run(10, |s| s.contains(&1) && s.contains(&8));
        assert_eq!(got, vec![1, 8]);
    }

    #[test]
    fn trivial_sizes() {
        assert_eq!(run(0, |_| true).0, Vec::<usize>::new());
        assert_eq!(run(1, |_| true).0, vec![0]);
        // Nothing smaller fails: the whole set stays.
        assert_eq!(run(3, |s| s.len() == 3).0, vec![0, 1, 2]);
    }

    proptest! {
        /// A monotone test (fails iff the set holds every culprit): ddmin finds
        /// exactly the culprits.
        #[test]
        fn monotone_tests_give_exactly_the_culprits(
            n in 1usize..40,
            picks in proptest::collection::btree_set(0usize..40, 1..5),
        ) {
            let culprits: Vec<usize> = picks.into_iter().filter(|&c| c < n).collect();
            prop_assume!(!culprits.is_empty());
            let (got, _) = run(n, |s| culprits.iter().all(|c| s.contains(c)));
            prop_assert_eq!(got, culprits);
        }

        /// Any test: the result fails and is 1-minimal (no single removal fails).
        #[test]
        fn results_fail_and_are_one_minimal(n in 1usize..24, seed in any::<u64>()) {
            // A deterministic arbitrary test on sets, true on the full set.
            let fails = |s: &[usize]| {
                s.len() == n
                    || blake3::hash(&[seed.to_le_bytes().to_vec(), s.iter().map(|&i| i as u8).collect()].concat())
                        .as_bytes()[0]
                        < 96
            };
            let (got, _) = run(n, fails);
            prop_assert!(fails(&got));
            for i in 0..got.len() {
                let mut less = got.clone();
                less.remove(i);
                if !less.is_empty() {
                    prop_assert!(!fails(&less), "{:?} minus {} fails", got, got[i]);
                }
            }
        }
    }
}
