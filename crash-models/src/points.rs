//! Crash points: the store boundaries at which pmcrash pulls the plug.
//!
//! [`CrashPoints`] drives a [`Replayer`] over a trace and stops at every point the
//! [`Policy`] picks. It is an [`Iterator`] of [`CrashPoint`]s; between two calls to
//! `next`, [`CrashPoints::replayer`] shows the in-flight state at the point just
//! yielded:
//!
//! ```
//! use crash_models::model::{ModelConfig, Replayer};
//! use crash_models::points::{CrashPoints, PointConfig};
//! let trace: Vec<crash_models::trace::Record> = Vec::new();
//! let mut points = CrashPoints::new(trace.into_iter(), Replayer::new(ModelConfig::default()),
//!     PointConfig::default());
//! while let Some(point) = points.next() {
//!     let _in_flight = points.replayer().in_flight();
//!     let _ = point;
//! }
//! ```

use crate::model::{Model, Replayer};
use crate::trace::{MarkerKind, Record};
use std::fmt;
use std::ops::Range;
use std::str::FromStr;

/// Which store boundaries become crash points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Policy {
    /// Just before a fence (`fence`: only fences that will make something durable;
    /// `fence:all`: every fence). The point sits *before* the fence because that is when
    /// the most lines are in flight: the state right after a fence is the `none` state
    /// of the point before the next fence, so nothing is lost by not stopping there
    /// too. Under `x86-eadr` no fence persists anything, so every fence counts.
    Fence {
        /// Stop at every fence, not only at persisting ones.
        all: bool,
    },
    /// After every op-begin and op-end marker.
    Op,
    /// After every store.
    Store,
    /// After every `n`-th store.
    Every(u64),
    /// After every marker of the given kinds (every marker when empty).
    Marker(Vec<MarkerKind>),
}

impl Default for Policy {
    fn default() -> Self {
        Policy::Fence { all: false }
    }
}

fn marker_name(k: MarkerKind) -> &'static str {
    match k {
        MarkerKind::OpBegin => "op-begin",
        MarkerKind::OpEnd => "op-end",
        MarkerKind::RunBegin => "run-begin",
        MarkerKind::RunEnd => "run-end",
        MarkerKind::Program => "program",
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Policy::Fence { all: false } => f.write_str("fence"),
            Policy::Fence { all: true } => f.write_str("fence:all"),
            Policy::Op => f.write_str("op"),
            Policy::Store => f.write_str("store"),
            Policy::Every(n) => write!(f, "every:{n}"),
            Policy::Marker(kinds) if kinds.is_empty() => f.write_str("marker"),
            Policy::Marker(kinds) => {
                let names: Vec<&str> = kinds.iter().map(|k| marker_name(*k)).collect();
                write!(f, "marker:{}", names.join(","))
            }
        }
    }
}

/// A crash-point policy string that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad crash-point policy `{input}`: {reason}; expected fence, fence:all, op, store, every:N (N >= 1), marker or marker:KIND[,KIND] (op-begin, op-end, run-begin, run-end, program)")]
pub struct PolicyError {
    /// The string given.
    pub input: String,
    /// What was wrong with it.
    pub reason: String,
}

impl FromStr for Policy {
    type Err = PolicyError;
    fn from_str(s: &str) -> Result<Self, PolicyError> {
        let err = |reason: &str| PolicyError {
            input: s.to_owned(),
            reason: reason.to_owned(),
        };
        let (name, arg) = match s.split_once(':') {
            Some((n, a)) => (n, Some(a)),
            None => (s, None),
        };
        match (name, arg) {
            ("fence", None) => Ok(Policy::Fence { all: false }),
            ("fence", Some("all")) => Ok(Policy::Fence { all: true }),
            ("op", None) => Ok(Policy::Op),
            ("store", None) => Ok(Policy::Store),
            ("every", Some(n)) => match n.parse::<u64>() {
                Ok(n) if n >= 1 => Ok(Policy::Every(n)),
                _ => Err(err(&format!("`{n}` is not a store count of at least 1"))),
            },
            ("every", None) => Err(err("every needs a store count, as in every:100")),
            ("marker", None) => Ok(Policy::Marker(Vec::new())),
            ("marker", Some(kinds)) => kinds
                .split(',')
                .map(|k| match k.trim() {
                    "op-begin" => Ok(MarkerKind::OpBegin),
                    "op-end" => Ok(MarkerKind::OpEnd),
                    "run-begin" => Ok(MarkerKind::RunBegin),
                    "run-end" => Ok(MarkerKind::RunEnd),
                    "program" => Ok(MarkerKind::Program),
                    other => Err(err(&format!("unknown marker kind `{other}`"))),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Policy::Marker),
            (_, Some(_)) if ["fence", "op", "store"].contains(&name) => {
                Err(err(&format!("`{name}` takes no argument here")))
            }
            _ => Err(err(&format!("unknown policy `{name}`"))),
        }
    }
}

/// How crash points are chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PointConfig {
    /// Which boundaries.
    pub policy: Policy,
    /// Only points whose op (see [`CrashPoint::op`]) lies in this range of op indices.
    pub ops: Option<Range<u32>>,
    /// Also stop after the last record (the state if power fails once the trace is
    /// over), unless that point was already yielded.
    pub end_of_trace: bool,
}

impl Default for PointConfig {
    fn default() -> Self {
        PointConfig {
            policy: Policy::default(),
            ops: None,
            end_of_trace: true,
        }
    }
}

/// Why a crash point was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    /// Just before a fence (the next record).
    BeforeFence,
    /// After a store.
    Store,
    /// After a marker.
    Marker(MarkerKind),
    /// After the last record.
    EndOfTrace,
}

/// A crash point: power fails right after record `applied - 1` (before record
/// `applied`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub struct CrashPoint {
    /// Records applied before the crash. The crash happens after record
    /// `applied - 1`.
    pub applied: u64,
    /// The op whose begin marker was seen and whose end marker was not.
    pub op_in_progress: Option<u32>,
    /// Ops whose end marker was seen.
    pub ops_completed: u32,
    /// Stores applied before the crash.
    pub stores: u64,
    /// Why this point was chosen.
    pub reason: Reason,
}

impl CrashPoint {
    /// Index of the last record applied before the crash, if any.
    pub fn record(&self) -> Option<u64> {
        self.applied.checked_sub(1)
    }

    /// The op the point belongs to: the op in progress, or else the op that ended last.
    pub fn op(&self) -> Option<u32> {
        self.op_in_progress.or(self.ops_completed.checked_sub(1))
    }
}

/// Tracks the op in progress from markers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpTracker {
    /// The op whose begin marker was seen and whose end marker was not.
    pub in_progress: Option<u32>,
    /// End markers seen.
    pub completed: u32,
}

impl OpTracker {
    /// Account for one record.
    #[inline]
    pub fn observe(&mut self, rec: &Record) {
        if let Record::Marker { marker, op, .. } = *rec {
            match marker {
                MarkerKind::OpBegin => self.in_progress = Some(op),
                MarkerKind::OpEnd => {
                    self.in_progress = None;
                    self.completed += 1;
                }
                MarkerKind::RunBegin | MarkerKind::RunEnd | MarkerKind::Program => {}
            }
        }
    }
}

/// The crash points of a trace, with the replayer positioned at each.
#[derive(Debug)]
pub struct CrashPoints<I> {
    records: I,
    replayer: Replayer,
    cfg: PointConfig,
    tracker: OpTracker,
    stores: u64,
    held: Option<Record>,
    last_yield: Option<u64>,
    done: bool,
}

impl<I: Iterator<Item = Record>> CrashPoints<I> {
    /// Crash points of `records`, replayed by `replayer` (usually fresh).
    pub fn new(records: I, replayer: Replayer, cfg: PointConfig) -> Self {
        CrashPoints {
            records,
            replayer,
            cfg,
            tracker: OpTracker::default(),
            stores: 0,
            held: None,
            last_yield: None,
            done: false,
        }
    }

    /// The replayer, positioned at the point last yielded.
    pub fn replayer(&self) -> &Replayer {
        &self.replayer
    }

    /// Give the replayer back (at wherever iteration stopped).
    pub fn into_replayer(self) -> Replayer {
        self.replayer
    }

    fn point(&self, reason: Reason) -> CrashPoint {
        CrashPoint {
            applied: self.replayer.position(),
            op_in_progress: self.tracker.in_progress,
            ops_completed: self.tracker.completed,
            stores: self.stores,
            reason,
        }
    }

    fn in_range(&self, p: &CrashPoint) -> bool {
        match &self.cfg.ops {
            None => true,
            Some(r) => p.op().is_some_and(|op| r.contains(&op)),
        }
    }

    fn past_range(&self) -> bool {
        match &self.cfg.ops {
            None => false,
            // Points between ops belong to the op that ended last (see
            // `CrashPoint::op`), so the range is over only once a later op begins.
            Some(r) => match self.tracker.in_progress {
                Some(op) => op >= r.end,
                None => self.tracker.completed > r.end,
            },
        }
    }

    fn step(&mut self, rec: &Record) {
        self.replayer.apply(rec);
        self.tracker.observe(rec);
        if matches!(rec, Record::Store { .. }) {
            self.stores += 1;
        }
    }

    fn take(&mut self, p: CrashPoint) -> Option<CrashPoint> {
        if self.last_yield == Some(p.applied) || !self.in_range(&p) {
            return None;
        }
        self.last_yield = Some(p.applied);
        Some(p)
    }
}

impl<I: Iterator<Item = Record>> Iterator for CrashPoints<I> {
    type Item = CrashPoint;

    fn next(&mut self) -> Option<CrashPoint> {
        if let Some(rec) = self.held.take() {
            self.step(&rec);
        }
        while !self.done {
            if self.past_range() {
                self.done = true;
                return None;
            }
            let Some(rec) = self.records.next() else {
                self.done = true;
                if self.cfg.end_of_trace && self.replayer.position() > 0 {
                    let p = self.point(Reason::EndOfTrace);
                    return self.take(p);
                }
                return None;
            };
            if let (Policy::Fence { all }, Record::Fence { vcpu, .. }) = (&self.cfg.policy, &rec) {
                let every = *all || self.replayer.config().model == Model::X86Eadr;
                if self.replayer.position() > 0
                    && (every || self.replayer.fence_would_persist(*vcpu))
                {
                    let p = self.point(Reason::BeforeFence);
                    if let Some(p) = self.take(p) {
                        self.held = Some(rec);
                        return Some(p);
                    }
                }
            }
            self.step(&rec);
            let reason = match (&self.cfg.policy, &rec) {
                (Policy::Store, Record::Store { .. }) => Some(Reason::Store),
                (Policy::Every(n), Record::Store { .. }) if self.stores % n == 0 => {
                    Some(Reason::Store)
                }
                (Policy::Op, Record::Marker { marker, .. })
                    if matches!(marker, MarkerKind::OpBegin | MarkerKind::OpEnd) =>
                {
                    Some(Reason::Marker(*marker))
                }
                (Policy::Marker(kinds), Record::Marker { marker, .. })
                    if kinds.is_empty() || kinds.contains(marker) =>
                {
                    Some(Reason::Marker(*marker))
                }
                _ => None,
            };
            if let Some(reason) = reason {
                let p = self.point(reason);
                if let Some(p) = self.take(p) {
                    return Some(p);
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ModelConfig;
    use crate::trace::{FenceKind, FlushKind, Privilege};

    fn store(offset: u64) -> Record {
        Record::Store {
            offset,
            size: 8,
            value: offset + 1,
            non_temporal: false,
            privilege: Privilege::User,
            vcpu: 0,
            pc: 0,
        }
    }
    fn clwb(offset: u64) -> Record {
        Record::Flush {
            offset,
            flush: FlushKind::Clwb,
            privilege: Privilege::User,
            vcpu: 0,
            pc: 0,
        }
    }
    fn sfence() -> Record {
        Record::Fence {
            fence: FenceKind::Sfence,
            privilege: Privilege::User,
            vcpu: 0,
            pc: 0,
        }
    }
    fn marker(marker: MarkerKind, op: u32) -> Record {
        Record::Marker {
            marker,
            op,
            a: 0,
            b: 0,
            vcpu: 0,
        }
    }

    /// Two ops: op 0 stores, flushes and fences line 0; op 1 stores line 1, fences
    /// without a flush, then flushes and fences it.
    fn trace() -> Vec<Record> {
        vec![
            marker(MarkerKind::RunBegin, 2),
            marker(MarkerKind::OpBegin, 0), // 1
            store(0),
            clwb(0),
            sfence(), // 4
            marker(MarkerKind::OpEnd, 0),
            marker(MarkerKind::OpBegin, 1), // 6
            store(64),
            sfence(), // 8: persists nothing
            clwb(64),
            sfence(), // 10
            marker(MarkerKind::OpEnd, 1),
            marker(MarkerKind::RunEnd, 0),
        ]
    }

    fn points(cfg: PointConfig) -> Vec<(u64, Option<u32>, u32, usize)> {
        let mut it = CrashPoints::new(
            trace().into_iter(),
            Replayer::new(ModelConfig::default()),
            cfg,
        );
        let mut out = Vec::new();
        while let Some(p) = it.next() {
            out.push((
                p.applied,
                p.op_in_progress,
                p.ops_completed,
                it.replayer().in_flight_count(),
            ));
        }
        out
    }

    fn with(policy: &str) -> PointConfig {
        PointConfig {
            policy: policy.parse().unwrap(),
            ..PointConfig::default()
        }
    }

    #[test]
    fn fence_points_sit_before_persisting_fences() {
        // Before record 4 (line 0 flushed, in flight), before record 10, end.
        assert_eq!(
            points(with("fence")),
            vec![(4, Some(0), 0, 1), (10, Some(1), 1, 1), (13, None, 2, 0)]
        );
        // fence:all also stops before the fence that persists nothing.
        assert_eq!(
            points(with("fence:all"))
                .iter()
                .map(|p| p.0)
                .collect::<Vec<_>>(),
            vec![4, 8, 10, 13]
        );
    }

    #[test]
    fn op_store_every_marker() {
        assert_eq!(
            points(with("op")),
            vec![
                (2, Some(0), 0, 0),
                (6, None, 1, 0),
                (7, Some(1), 1, 0),
                (12, None, 2, 0),
                (13, None, 2, 0)
            ]
        );
        assert_eq!(
            points(with("store")),
            vec![(3, Some(0), 0, 1), (8, Some(1), 1, 1), (13, None, 2, 0)]
        );
        assert_eq!(
            points(with("every:2")),
            vec![(8, Some(1), 1, 1), (13, None, 2, 0)]
        );
        assert_eq!(
            points(with("marker:run-begin,run-end"))
                .iter()
                .map(|p| p.0)
                .collect::<Vec<_>>(),
            vec![1, 13]
        );
        let no_end = PointConfig {
            end_of_trace: false,
            ..with("store")
        };
        assert_eq!(points(no_end).len(), 2);
    }

    #[test]
    fn op_range_limits_points_and_stops_early() {
        let cfg = PointConfig {
            ops: Some(1..2),
            ..with("store")
        };
        assert_eq!(points(cfg), vec![(8, Some(1), 1, 1), (13, None, 2, 0)]);
        let cfg = PointConfig {
            ops: Some(0..1),
            ..with("fence")
        };
        // Stops once op 0 is over: no end-of-trace point.
        assert_eq!(points(cfg), vec![(4, Some(0), 0, 1)]);
    }

    /// `crash_from_op = 1`: the fence points of op 1 only (the PMDK test's pool is
    /// made by op 0 and not crash-tested), and the end of the trace.
    #[test]
    fn a_workloads_crash_from_op_keeps_only_the_later_ops_points() {
        let w = crate::ops::Workload::parse(
            "crash_from_op = 1\n[[ops]]\nop = \"sync\"\n[[ops]]\nop = \"sync\"\n",
            "w.toml",
        )
        .unwrap();
        assert_eq!(w.crash_ops(), 1..2);
        let cfg = PointConfig {
            ops: Some(w.crash_ops()),
            ..with("fence")
        };
        assert_eq!(points(cfg), vec![(10, Some(1), 1, 1), (13, None, 2, 0)]);
        // Without the field, every op's points.
        let all = crate::ops::Workload::parse("[[ops]]\nop = \"sync\"\n", "w.toml").unwrap();
        assert_eq!(all.crash_ops(), 0..1);
    }

    #[test]
    fn policies_parse_and_print() {
        for s in [
            "fence",
            "fence:all",
            "op",
            "store",
            "every:100",
            "marker",
            "marker:op-end",
        ] {
            assert_eq!(s.parse::<Policy>().unwrap().to_string(), s);
        }
        for bad in [
            "every:0",
            "every:x",
            "every",
            "fence:some",
            "nope",
            "marker:op",
        ] {
            let e = bad.parse::<Policy>().unwrap_err();
            assert_eq!(e.input, bad);
            assert!(e.to_string().contains("expected fence"), "{e}");
        }
    }
}

/// The last program marker (`pmcrash-marker`) before a crash point that applied
/// `applied` records, inside the same op, in the program's words: `tx_commit #3` (the
/// third `tx_commit` of that op), with the name from `names` (an `exec` op's
/// `markers`; `marker 0x...` for a hash none of them has).
pub fn program_marker_before(records: &[Record], applied: u64, names: &[String]) -> Option<String> {
    let end = usize::try_from(applied).ok()?.min(records.len());
    let mut found: Option<(usize, u32)> = None;
    let mut begin = 0;
    for (i, r) in records[..end].iter().enumerate().rev() {
        if let Record::Marker { marker, op, .. } = *r {
            match marker {
                MarkerKind::Program if found.is_none() => found = Some((i, op)),
                MarkerKind::Program => {}
                _ => {
                    begin = i;
                    break;
                }
            }
        }
    }
    let (at, hash) = found?;
    let nth = records[begin..=at]
        .iter()
        .filter(
            |r| matches!(r, Record::Marker { marker: MarkerKind::Program, op, .. } if *op == hash),
        )
        .count();
    let name = names
        .iter()
        .find(|n| crate::protocol::marker::name_hash(n) == hash)
        .cloned()
        .unwrap_or_else(|| format!("marker {hash:#010x}"));
    Some(format!("{name} #{nth}"))
}

#[cfg(test)]
mod program_marker_tests {
    use super::*;

    fn marker(marker: MarkerKind, op: u32) -> Record {
        Record::Marker {
            marker,
            op,
            a: 0,
            b: 0,
            vcpu: 0,
        }
    }

    #[test]
    fn names_the_last_program_marker_of_the_op_and_counts_it() {
        let h = crate::protocol::marker::name_hash;
        let names = vec!["tx_commit".to_owned(), "tx_begin".to_owned()];
        let recs = vec![
            marker(MarkerKind::OpBegin, 0),
            marker(MarkerKind::Program, h("tx_commit")),
            marker(MarkerKind::Program, h("tx_begin")),
            marker(MarkerKind::Program, h("tx_commit")),
            marker(MarkerKind::Program, 7),
            marker(MarkerKind::OpEnd, 0),
        ];
        assert_eq!(program_marker_before(&recs, 1, &names), None);
        assert_eq!(
            program_marker_before(&recs, 2, &names).as_deref(),
            Some("tx_commit #1")
        );
        assert_eq!(
            program_marker_before(&recs, 4, &names).as_deref(),
            Some("tx_commit #2")
        );
        assert_eq!(
            program_marker_before(&recs, 5, &names).as_deref(),
            Some("marker 0x00000007 #1")
        );
        // After the op ended the program's markers no longer describe the point.
        assert_eq!(program_marker_before(&recs, 6, &names), None);
        assert_eq!(program_marker_before(&recs, 99, &names), None);
    }
}
