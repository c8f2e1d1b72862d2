//! Findings grouped: one per (verdict, crash site, cause).
//!
//! A workload with a torn superblock at one op fails in dozens of crash states with the
//! same problem; listing each buries everything else. [`FindingGroups::add`] takes
//! every failing state and files it under its [`GroupKey`]: the first state of a group
//! becomes the group's [`Finding`], shown in full; later ones only count (states,
//! crash points, the last record). The pipeline's `judge()` calls it once per failing
//! state, in any order.

use crate::oracle::{Problem, Verdict};
use crate::report::{Finding, PointRef};
use std::collections::{HashMap, HashSet};

/// What findings are grouped by.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupKey {
    /// The state's verdict.
    pub verdict: Verdict,
    /// The crash site: during which op, or right after which op returned.
    pub site: String,
    /// The cause: the problems' classes and messages with every number masked
    /// (offsets, records, byte values differ between states of one cause).
    pub cause: String,
}

impl GroupKey {
    /// The key of a failing state at `point` with these problems.
    pub fn of(verdict: Verdict, point: &PointRef, problems: &[Problem]) -> GroupKey {
        let name = point.op_name.as_deref().unwrap_or("?");
        let site = match point.op {
            Some(op) if op + 1 == point.ops_completed => format!("after op {op} {name} returned"),
            Some(op) => format!("during op {op} {name}"),
            None => "outside any op".to_owned(),
        };
        let site = match &point.after_marker {
            Some(m) => format!("{site}, after {m}"),
            None => site,
        };
        let mut causes: Vec<String> = problems
            .iter()
            .map(|p| format!("{}: {}", p.verdict, mask_numbers(&p.message)))
            .collect();
        causes.sort();
        causes.dedup();
        GroupKey {
            verdict,
            site,
            cause: causes.join("; "),
        }
    }
}

/// `text` with every run of digits (and hexadecimal `0x...` numbers) replaced by `#`.
pub fn mask_numbers(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    let mut prev_alnum = false;
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() && !prev_alnum {
            if c == '0' && chars.peek() == Some(&'x') {
                chars.next();
                while chars.peek().is_some_and(|d| d.is_ascii_hexdigit()) {
                    chars.next();
                }
            }
            while chars.peek().is_some_and(|d| d.is_ascii_digit()) {
                chars.next();
            }
            out.push('#');
            prev_alnum = false;
            continue;
        }
        prev_alnum = c.is_ascii_alphanumeric() || c == '_';
        out.push(c);
    }
    out
}

/// A crash state's stable id (`f-3a9c2e1b`), derived from its content alone: the crash
/// point's record and how many queued stores each in-flight line keeps (`lines`:
/// `(PM offset of the line, stores kept)`, in the point's line order). The same trace
/// gives the same ids on every run and machine, so `pmcrash repro BUNDLE ID` finds the
/// state again; a finding carries the id of its group's first state.
pub fn finding_id(record: u64, lines: impl IntoIterator<Item = (u64, u32)>) -> String {
    let mut h = blake3::Hasher::new();
    h.update(b"pmcrash-finding-v1");
    h.update(&record.to_le_bytes());
    for (offset, kept) in lines {
        h.update(&offset.to_le_bytes());
        h.update(&kept.to_le_bytes());
    }
    format!("f-{}", &h.finalize().to_hex()[..8])
}

/// The groups of one workload's failing states.
#[derive(Debug, Clone, Default)]
pub struct FindingGroups {
    max: usize,
    listed: Vec<Finding>,
    index: HashMap<GroupKey, usize>,
    points: Vec<HashSet<u64>>,
    omitted: HashSet<GroupKey>,
}

impl FindingGroups {
    /// Groups of which the first `max` (in the order they are first seen) are listed;
    /// the rest are counted.
    pub fn new(max: usize) -> FindingGroups {
        FindingGroups {
            max,
            ..FindingGroups::default()
        }
    }

    /// File one failing state: `key` from [`GroupKey::of`], `point` where it crashed,
    /// `make` builds its full finding and is called only for a group's first state.
    pub fn add(&mut self, key: GroupKey, point: &PointRef, make: impl FnOnce() -> Finding) {
        if let Some(&i) = self.index.get(&key) {
            let f = &mut self.listed[i];
            f.states += 1;
            if self.points[i].insert(point.record) {
                f.crash_points += 1;
            }
            f.last_record = f.last_record.max(point.record);
            f.first_record = f.first_record.min(point.record);
            return;
        }
        if self.listed.len() >= self.max {
            self.omitted.insert(key);
            return;
        }
        let mut f = make();
        f.states = 1;
        f.crash_points = 1;
        f.first_record = point.record;
        f.last_record = point.record;
        self.index.insert(key, self.listed.len());
        self.points.push(HashSet::from([point.record]));
        self.listed.push(f);
    }

    /// The listed findings (first seen first) and the number of groups left out.
    pub fn finish(self) -> (Vec<Finding>, u64) {
        (self.listed, self.omitted.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finding_ids_depend_on_the_point_and_every_kept_count() {
        let a = finding_id(100, [(0x1000, 2), (0x2000, 0)]);
        assert!(a.starts_with("f-") && a.len() == 10, "{a}");
        assert_eq!(a, finding_id(100, [(0x1000, 2), (0x2000, 0)]));
        assert_ne!(a, finding_id(101, [(0x1000, 2), (0x2000, 0)]));
        assert_ne!(a, finding_id(100, [(0x1000, 1), (0x2000, 0)]));
        assert_ne!(a, finding_id(100, [(0x1000, 2), (0x2040, 0)]));
        assert_ne!(a, finding_id(100, [(0x1000, 2)]));
    }

    fn point(record: u64, op: u32) -> PointRef {
        PointRef {
            record,
            op: Some(op),
            op_name: Some("fsync".into()),
            ops_completed: op,
            stores: record,
            after_marker: None,
        }
    }

    fn problem(v: Verdict, m: &str) -> Problem {
        Problem {
            verdict: v,
            message: m.into(),
            promised_by: None,
            path: None,
            file_offset: None,
        }
    }

    fn finding(p: &PointRef, problems: Vec<Problem>) -> Finding {
        Finding {
            id: finding_id(p.record, []),
            verdict: problems[0].verdict,
            point: p.clone(),
            problems,
            dropped_lines: vec![],
            kept_lines: 0,
            states: 0,
            crash_points: 0,
            first_record: 0,
            last_record: 0,
            reproduce: format!("pmcrash run w.toml --crash-at {}", p.record),
        }
    }

    /// A torn journal superblock in 40 states at 3 crash points of one fsync, and a
    /// durability violation at the same op: two findings, counted, the first state of
    /// each in full.
    #[test]
    fn grouped_findings_snapshot() {
        use crate::report::{ConfigReport, DroppedLine, Report, WorkloadReport};
        let mut g = FindingGroups::new(50);
        let torn = |kept: u64| {
            vec![
                problem(
                    Verdict::TornWrite,
                    &format!("torn kernel block write to the jbd2 journal superblock: {kept} of the 4096 bytes at PM 0x2a00000 (records 9120..9632) persisted; fsdax gives no sector atomicity"),
                ),
                problem(Verdict::TornWrite, "mount failed: EINVAL"),
                problem(Verdict::TornWrite, "kernel: JBD2: Unknown checksum type"),
            ]
        };
        for (record, states) in [(9700u64, 20u64), (9800, 12), (9900, 8)] {
            for i in 0..states {
                let p = point(record, 1);
                let problems = torn(64 * (i + 1));
                let key = GroupKey::of(Verdict::TornWrite, &p, &problems);
                g.add(key, &p, || Finding {
                    id: finding_id(record, [(0x2a00040, 0)]),
                    dropped_lines: vec![DroppedLine {
                        pm_offset: 0x2a00040,
                        owner: "kernel store (metadata, journal or file data)".into(),
                        queued: 8,
                        kept: 0,
                        missing: "flushed, but no fence after the flush before the crash".into(),
                        writer: Some("__memcpy_flushcache+0x5a".into()),
                        label: None,
                    }],
                    kept_lines: 1,
                    ..finding(&p, problems.clone())
                });
            }
        }
        let p = point(9900, 1);
        let lost = vec![problem(
            Verdict::DurabilityViolation,
            "a.dat: byte 0 is 0x00, expected 0x41 (promised by op 1, fsync)",
        )];
        g.add(
            GroupKey::of(Verdict::DurabilityViolation, &p, &lost),
            &p,
            || finding(&p, lost.clone()),
        );
        let (findings, omitted) = g.finish();
        let w = WorkloadReport {
            name: "w.toml".into(),
            description: "create, fsync".into(),
            fs: crash_models::ops::FsKind::Ext4,
            ops: vec![],
            points: vec![],
            verdicts: [(Verdict::TornWrite, 40), (Verdict::DurabilityViolation, 1)].into(),
            findings,
            findings_omitted: omitted,
            stats: Default::default(),
            expect: None,
            timings: Default::default(),
            coverage: None,
        };
        let json = serde_json::to_value(&w.findings).unwrap();
        let r = Report::new(
            ConfigReport {
                fs: crash_models::ops::FsKind::Ext4,
                model: "x86-adr".into(),
                points: "fence".into(),
                states: "each-line".into(),
                seed: 0,
                kernel: "k".into(),
                workers: 2,
                sector_atomic: None,
            },
            &Default::default(),
            vec![w],
        );
        let rendered = r.render_text();
        let text = rendered
            .lines()
            .filter(|l| l.starts_with("  finding") || l.starts_with("    "))
            .collect::<Vec<_>>()
            .join("\n");
        insta::assert_snapshot!("grouped_findings_text", text);
        insta::assert_json_snapshot!("grouped_findings_json", json);
    }

    #[test]
    fn numbers_are_masked() {
        assert_eq!(
            mask_numbers("a.dat: byte 4096 is 0x00 (PM offset 0x2ff000), ext4_x2 ok"),
            "a.dat: byte # is # (PM offset #), ext4_x2 ok"
        );
    }

    #[test]
    fn states_group_by_verdict_site_and_cause() {
        let mut g = FindingGroups::new(2);
        let torn = |n: u64| problem(Verdict::TornWrite, &format!("mount failed at {n}"));
        for (record, op, n) in [(10, 3, 1), (10, 3, 2), (12, 3, 3), (20, 4, 1)] {
            let p = point(record, op);
            let problems = vec![torn(n)];
            let key = GroupKey::of(Verdict::TornWrite, &p, &problems);
            g.add(key, &p, || finding(&p, problems.clone()));
        }
        // A third group is counted, not listed.
        let p = point(30, 5);
        let problems = vec![problem(Verdict::FsCorruption, "fsck")];
        g.add(
            GroupKey::of(Verdict::FsCorruption, &p, &problems),
            &p,
            || unreachable!("past the cap"),
        );
        let (listed, omitted) = g.finish();
        assert_eq!(omitted, 1);
        assert_eq!(listed.len(), 2);
        let f = &listed[0];
        assert_eq!(
            (f.states, f.crash_points, f.first_record, f.last_record),
            (3, 2, 10, 12)
        );
        assert_eq!(f.problems[0].message, "mount failed at 1");
        assert_eq!((listed[1].states, listed[1].crash_points), (1, 1));
    }
}
