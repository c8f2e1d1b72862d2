//! Crash states: which in-flight lines survive a crash, and how much of each.
//!
//! At a crash point every in-flight line holds its durable content plus some prefix of
//! its queued pieces (see [`crate::model`]). A [`CrashState`] picks that prefix length
//! per line; [`CrashStates`] enumerates states under one or more [`Strategy`]s, within
//! caps that are reported, never silently applied.
//!
//! Under `x86-adr-nt` a line whose non-temporal pieces may persist ahead of older
//! cached ones ([`crate::model::Piece::ahead`]) gets a second unit, its *lane*, keyed
//! at the line's offset + 1 (never a line offset: lines are at least 8 bytes): a state
//! entry `(offset + 1, j)` keeps the first `j` of those pieces on top of the line's
//! prefix. Strategies treat a lane like a line (kept whole, dropped, torn, ...); a
//! lane whose line belongs to an atomic group joins the group.

use crate::model::{close, FxSet, InFlightLine, Ordering};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::fmt;
use std::str::FromStr;

/// How to pick crash states at a point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Strategy {
    /// Every in-flight line dropped: only durable content survives.
    None,
    /// Every in-flight line persisted with its whole queue.
    All,
    /// `none`, `all`, and for each line: it alone persisted, and it alone dropped.
    /// The same as `subsets:1`.
    EachLine,
    /// Every set of at most `k` lines persisted (whole), and every set of at most `k`
    /// lines dropped (the others whole).
    Subsets(u32),
    /// `count` distinct random states: each line is kept with probability 1/2, a kept
    /// line holding a random non-empty prefix of its queue. Deterministic for a seed.
    Random {
        /// States wanted.
        count: u32,
        /// ChaCha8 seed.
        seed: u64,
    },
    /// Torn lines at 8-byte granularity: for each line, every strict non-empty prefix
    /// of its queue of pieces, with every other line dropped.
    Torn,
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Strategy::None => f.write_str("none"),
            Strategy::All => f.write_str("all"),
            Strategy::EachLine => f.write_str("each-line"),
            Strategy::Subsets(k) => write!(f, "subsets:{k}"),
            Strategy::Random { count, seed } => write!(f, "random:{count}:{seed}"),
            Strategy::Torn => f.write_str("torn"),
        }
    }
}

/// A crash-state strategy string that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad crash-state strategy `{input}`: {reason}; expected none, all, each-line, subsets:K, random:N[:SEED] or torn")]
pub struct StrategyError {
    /// The string given.
    pub input: String,
    /// What was wrong with it.
    pub reason: String,
}

impl FromStr for Strategy {
    type Err = StrategyError;
    fn from_str(s: &str) -> Result<Self, StrategyError> {
        let err = |reason: String| StrategyError {
            input: s.to_owned(),
            reason,
        };
        let mut parts = s.split(':');
        let name = parts.next().unwrap_or_default();
        let args: Vec<&str> = parts.collect();
        let num = |a: &str| {
            a.parse::<u64>()
                .map_err(|_| err(format!("`{a}` is not a number")))
        };
        match (name, args.as_slice()) {
            ("none", []) => Ok(Strategy::None),
            ("all", []) => Ok(Strategy::All),
            ("each-line", []) => Ok(Strategy::EachLine),
            ("torn", []) => Ok(Strategy::Torn),
            ("subsets", [k]) => Ok(Strategy::Subsets(
                u32::try_from(num(k)?).map_err(|_| err(format!("`{k}` is too large")))?,
            )),
            ("random", [n]) | ("random", [n, _]) => {
                let count =
                    u32::try_from(num(n)?).map_err(|_| err(format!("`{n}` is too large")))?;
                let seed = match args.get(1) {
                    Some(s) => num(s)?,
                    None => 0,
                };
                Ok(Strategy::Random { count, seed })
            }
            ("subsets", _) => Err(err("subsets needs a size, as in subsets:2".into())),
            ("random", _) => Err(err(
                "random needs a count, as in random:100 or random:100:7".into(),
            )),
            _ => Err(err(format!("unknown strategy `{s}`"))),
        }
    }
}

/// Caps and strategies for crash-state enumeration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateConfig {
    /// Strategies, applied in order; a state two strategies produce is yielded once.
    pub strategies: Vec<Strategy>,
    /// Most states yielded per crash point.
    pub max_states: usize,
    /// Most in-flight lines considered per crash point; the lines past the cap (the
    /// highest offsets) are dropped in every state.
    pub max_lines: usize,
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            strategies: vec![Strategy::EachLine],
            max_states: 4096,
            max_lines: 1024,
        }
    }
}

/// One crash state: for each line that keeps something, how many of its queued pieces
/// survive. Lines not listed keep none (only their durable content).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default, serde::Serialize)]
pub struct CrashState {
    /// (line offset, pieces kept), sorted by line, every count at least 1.
    pub kept: Vec<(u64, u32)>,
}

impl CrashState {
    /// Pieces kept of the line at `line_offset`.
    pub fn kept_of(&self, line_offset: u64) -> u32 {
        self.kept
            .binary_search_by_key(&line_offset, |k| k.0)
            .map(|i| self.kept[i].1)
            .unwrap_or(0)
    }
}

/// What the caps cut off at one crash point.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Truncation {
    /// More states existed than `max_states`.
    pub states_capped: bool,
    /// In-flight lines not considered because of `max_lines`.
    pub lines_ignored: usize,
    /// Random draws that repeated an earlier state (so fewer than `count` distinct
    /// states may come out when the state space is small).
    pub random_repeats: u32,
}

impl Truncation {
    /// True when a cap cut something off.
    pub fn truncated(&self) -> bool {
        self.states_capped || self.lines_ignored > 0
    }
}

/// Lexicographic k-combinations of 0..n.
#[derive(Debug, Clone)]
struct Combos {
    n: usize,
    idx: Vec<usize>,
    first: bool,
    done: bool,
}

impl Combos {
    fn new(n: usize, k: usize) -> Self {
        Combos {
            n,
            idx: (0..k).collect(),
            first: true,
            done: k > n,
        }
    }

    fn advance(&mut self) -> Option<&[usize]> {
        if self.done {
            return None;
        }
        if self.first {
            self.first = false;
            return Some(&self.idx);
        }
        let k = self.idx.len();
        let mut i = k;
        while i > 0 {
            i -= 1;
            if self.idx[i] < self.n - k + i {
                self.idx[i] += 1;
                for j in i + 1..k {
                    self.idx[j] = self.idx[j - 1] + 1;
                }
                return Some(&self.idx);
            }
        }
        self.done = true;
        None
    }
}

#[derive(Debug, Clone)]
enum Gen {
    /// One state: all lines whole (`true`) or none.
    Once(bool),
    Done,
    Subsets {
        k: usize,
        size: usize,
        dropped: bool,
        combos: Combos,
    },
    Random {
        left: u32,
        attempts: u32,
        rng: Box<ChaCha8Rng>,
        seen: FxSet<Vec<(u64, u32)>>,
    },
    Torn {
        line: usize,
        kept: u32,
    },
}

/// The crash states of one crash point, as an iterator.
///
/// The generators work on *units*: a unit is one line, or a group of lines that a
/// state keeps whole or drops whole together ([`CrashStates::new_grouped`], the
/// sectors of a kernel block write under `--sector-atomic`). Without groups every
/// line is its own unit and the states are exactly those of the plain line model.
#[derive(Debug, Clone)]
pub struct CrashStates {
    /// The lines considered, (line offset, queue length), sorted.
    lines: Vec<(u64, u32)>,
    /// Per unit: its lines; a unit of one line keeps any prefix, a larger one keeps
    /// all its lines whole or none.
    units: Vec<Vec<(u64, u32)>>,
    /// The generators' view: (unit index, queue length), the length 1 for a group.
    virt: Vec<(u64, u32)>,
    strategies: Vec<Strategy>,
    next_strategy: usize,
    gen: Option<Gen>,
    yielded: usize,
    max_states: usize,
    seen: Option<FxSet<Vec<(u64, u32)>>>,
    truncation: Truncation,
    /// The point's `clflush` orderings: every state is closed under them.
    orderings: Vec<Ordering>,
}

impl CrashStates {
    /// The states of a point whose in-flight lines are `in_flight` (sorted by offset,
    /// as [`crate::model::Replayer::in_flight`] returns them).
    pub fn new(in_flight: &[InFlightLine<'_>], cfg: &StateConfig) -> Self {
        Self::from_lines(units_in_flight(in_flight), cfg)
    }

    /// The same from (line offset, queue length) pairs.
    pub fn from_lines(lines: Vec<(u64, u32)>, cfg: &StateConfig) -> Self {
        Self::from_lines_grouped(lines, &[], cfg)
    }

    /// The states of a point whose lines in each of `groups` (line offsets) persist
    /// whole or not at all, together: a state keeps every line of a group with its
    /// whole queue, or none of them. Lines in no group behave as in
    /// [`CrashStates::new`]; groups that share a line are merged; offsets of lines not
    /// in flight are ignored.
    pub fn new_grouped(
        in_flight: &[InFlightLine<'_>],
        groups: &[Vec<u64>],
        cfg: &StateConfig,
    ) -> Self {
        Self::from_lines_grouped(units_in_flight(in_flight), groups, cfg)
    }

    /// [`CrashStates::new_grouped`] from (line offset, queue length) pairs.
    pub fn from_lines_grouped(
        mut lines: Vec<(u64, u32)>,
        groups: &[Vec<u64>],
        cfg: &StateConfig,
    ) -> Self {
        lines.sort_unstable();
        lines.dedup_by_key(|l| l.0);
        lines.retain(|l| l.1 > 0);
        let lines_ignored = lines.len().saturating_sub(cfg.max_lines);
        lines.truncate(cfg.max_lines);
        let units = units_of(&lines, groups);
        let virt = units
            .iter()
            .enumerate()
            .map(|(i, u)| (i as u64, if u.len() == 1 { u[0].1 } else { 1 }))
            .collect();
        CrashStates {
            lines,
            units,
            virt,
            strategies: cfg.strategies.clone(),
            next_strategy: 0,
            gen: None,
            yielded: 0,
            max_states: cfg.max_states,
            seen: (cfg.strategies.len() > 1).then(FxSet::default),
            truncation: Truncation {
                lines_ignored,
                ..Truncation::default()
            },
            orderings: Vec::new(),
        }
    }

    /// Obey the point's `clflush` orderings ([`crate::model::Replayer::orderings`]):
    /// each generated state is lowered to the largest state below it that obeys them
    /// ([`crate::model::close`]), and a state that two generated ones lower to comes
    /// out once.
    pub fn with_orderings(mut self, orderings: Vec<Ordering>) -> Self {
        if !orderings.is_empty() && self.seen.is_none() {
            self.seen = Some(FxSet::default());
        }
        self.orderings = orderings;
        self
    }

    /// What the caps cut off. `states_capped` is known once the iterator has returned
    /// `None`.
    pub fn truncation(&self) -> Truncation {
        self.truncation
    }

    /// Lines considered (after `max_lines`).
    pub fn lines(&self) -> &[(u64, u32)] {
        &self.lines
    }

    /// The real state of a state over units.
    fn expand(&self, virt: Vec<(u64, u32)>) -> Vec<(u64, u32)> {
        let mut out = Vec::with_capacity(virt.len());
        for (unit, kept) in virt {
            match self.units[unit as usize].as_slice() {
                [(offset, _)] => out.push((*offset, kept)),
                group => out.extend_from_slice(group),
            }
        }
        out.sort_unstable();
        out
    }

    fn start(&self, s: Strategy) -> Gen {
        match s {
            Strategy::None => Gen::Once(false),
            Strategy::All => Gen::Once(true),
            Strategy::EachLine => self.subsets(1),
            Strategy::Subsets(k) => self.subsets(k as usize),
            Strategy::Random { count, seed } => Gen::Random {
                left: count,
                attempts: count.saturating_mul(8).max(16),
                rng: Box::new(ChaCha8Rng::seed_from_u64(seed)),
                seen: FxSet::default(),
            },
            Strategy::Torn => Gen::Torn { line: 0, kept: 0 },
        }
    }

    fn subsets(&self, k: usize) -> Gen {
        Gen::Subsets {
            k,
            size: 0,
            dropped: false,
            combos: Combos::new(self.virt.len(), 0),
        }
    }

    /// The next state of the current generator, without caps or cross-strategy dedup.
    fn raw_next(
        lines: &[(u64, u32)],
        gen: &mut Gen,
        truncation: &mut Truncation,
    ) -> Option<Vec<(u64, u32)>> {
        let n = lines.len();
        match gen {
            Gen::Once(done_all) => {
                let all = *done_all;
                *gen = Gen::Done;
                Some(if all { lines.to_vec() } else { Vec::new() })
            }
            Gen::Subsets {
                k,
                size,
                dropped,
                combos,
            } => loop {
                if let Some(c) = combos.advance() {
                    let state = if *dropped {
                        let mut out = Vec::with_capacity(n - c.len());
                        let mut ci = 0;
                        for (i, l) in lines.iter().enumerate() {
                            if ci < c.len() && c[ci] == i {
                                ci += 1;
                            } else {
                                out.push(*l);
                            }
                        }
                        out
                    } else {
                        c.iter().map(|&i| lines[i]).collect()
                    };
                    return Some(state);
                }
                // Persisted sets of size s, then dropped sets of size s whose
                // complement (size n - s) was not already a persisted set: no
                // state comes out twice.
                *size += 1;
                if !*dropped && (*size > *k || *size > n) {
                    *dropped = true;
                    *size = 0;
                }
                if *dropped {
                    while *size <= (*k).min(n) && n - *size <= *k {
                        *size += 1;
                    }
                    if *size > (*k).min(n) {
                        return None;
                    }
                }
                *combos = Combos::new(n, *size);
            },
            Gen::Random {
                left,
                attempts,
                rng,
                seen,
            } => {
                while *left > 0 && *attempts > 0 {
                    *attempts -= 1;
                    let mut state = Vec::new();
                    for &(line, len) in lines {
                        if rng.gen_bool(0.5) {
                            state.push((line, rng.gen_range(1..=len)));
                        }
                    }
                    if seen.insert(state.clone()) {
                        *left -= 1;
                        return Some(state);
                    }
                    truncation.random_repeats += 1;
                }
                None
            }
            Gen::Done => None,
            Gen::Torn { line, kept } => {
                while *line < n {
                    *kept += 1;
                    if *kept < lines[*line].1 {
                        return Some(vec![(lines[*line].0, *kept)]);
                    }
                    *line += 1;
                    *kept = 0;
                }
                None
            }
        }
    }

    fn next_unbounded(&mut self) -> Option<Vec<(u64, u32)>> {
        loop {
            if self.gen.is_none() {
                let s = *self.strategies.get(self.next_strategy)?;
                self.next_strategy += 1;
                self.gen = Some(self.start(s));
            }
            let gen = self.gen.as_mut().expect("set above");
            match Self::raw_next(&self.virt, gen, &mut self.truncation) {
                Some(state) => {
                    let mut state = self.expand(state);
                    if !self.orderings.is_empty() {
                        close(&mut state, &self.orderings);
                    }
                    if let Some(seen) = &mut self.seen {
                        if !seen.insert(state.clone()) {
                            continue;
                        }
                    }
                    return Some(state);
                }
                None => self.gen = None,
            }
        }
    }
}

/// The state key of the lane of the line at `line_offset` (`x86-adr-nt`, see the
/// module docs): never a line's offset, as lines are at least 8 bytes.
pub fn lane_key(line_offset: u64) -> u64 {
    line_offset + 1
}

/// True when a state key is a lane's ([`lane_key`]), not a line's.
pub fn is_lane(key: u64) -> bool {
    key & 1 == 1
}

/// (offset, queue length) of each in-flight line, and (offset + 1, count) of its lane
/// when one of its `ahead` pieces has an older piece that is not `ahead` (otherwise
/// the lane adds no state the prefixes do not already give).
fn units_in_flight(in_flight: &[InFlightLine<'_>]) -> Vec<(u64, u32)> {
    let mut out = Vec::with_capacity(in_flight.len());
    for l in in_flight.iter().filter(|l| !l.stores.is_empty()) {
        out.push((l.line_offset, l.stores.len() as u32));
        let ahead = l.stores.iter().filter(|p| p.ahead).count() as u32;
        let first_cached = l.stores.iter().position(|p| !p.ahead);
        let jumps = first_cached.is_some_and(|c| l.stores[c..].iter().any(|p| p.ahead));
        if jumps {
            out.push((lane_key(l.line_offset), ahead));
        }
    }
    out
}

/// The units of `lines` (sorted, distinct): the groups (merged where they share a
/// line, restricted to `lines`), then every other line alone; sorted by first line.
fn units_of(lines: &[(u64, u32)], groups: &[Vec<u64>]) -> Vec<Vec<(u64, u32)>> {
    let index = |off: u64| lines.binary_search_by_key(&off, |l| l.0).ok();
    // Union-find over line indices.
    let mut parent: Vec<usize> = (0..lines.len()).collect();
    fn root(parent: &mut [usize], mut i: usize) -> usize {
        while parent[i] != i {
            parent[i] = parent[parent[i]];
            i = parent[i];
        }
        i
    }
    for g in groups {
        // A lane (offset + 1) goes with its line.
        let mut members = g.iter().flat_map(|&o| [o, lane_key(o)]).filter_map(index);
        if let Some(first) = members.next() {
            for m in members {
                let (a, b) = (root(&mut parent, first), root(&mut parent, m));
                parent[a.max(b)] = a.min(b);
            }
        }
    }
    let mut by_root: std::collections::BTreeMap<usize, Vec<(u64, u32)>> = Default::default();
    for (i, l) in lines.iter().enumerate() {
        let r = root(&mut parent, i);
        by_root.entry(r).or_default().push(*l);
    }
    // Roots are each unit's smallest index, so this is sorted by first line.
    by_root.into_values().collect()
}

impl Iterator for CrashStates {
    type Item = CrashState;

    fn next(&mut self) -> Option<CrashState> {
        let state = self.next_unbounded()?;
        if self.yielded >= self.max_states {
            self.truncation.states_capped = true;
            self.strategies.clear();
            self.gen = None;
            return None;
        }
        self.yielded += 1;
        Some(CrashState { kept: state })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(n: u64) -> Vec<(u64, u32)> {
        (0..n).map(|i| (i * 64, 3)).collect()
    }

    fn all_of(lines: Vec<(u64, u32)>, s: Strategy) -> Vec<CrashState> {
        let cfg = StateConfig {
            strategies: vec![s],
            max_states: usize::MAX,
            max_lines: usize::MAX,
        };
        CrashStates::from_lines(lines, &cfg).collect()
    }

    fn distinct(states: &[CrashState]) -> bool {
        let set: std::collections::BTreeSet<_> = states.iter().collect();
        set.len() == states.len()
    }

    #[test]
    fn counts() {
        // each-line: none, all, n alone, n dropped (n >= 3 so nothing coincides).
        for n in 3..7 {
            let s = all_of(lines(n), Strategy::EachLine);
            assert_eq!(s.len() as u64, 2 + 2 * n);
            assert!(distinct(&s));
        }
        // One line: only none and all.
        assert_eq!(all_of(lines(1), Strategy::EachLine).len(), 2);
        // Subsets big enough: every subset exactly once.
        for n in 0..6 {
            let s = all_of(lines(n), Strategy::Subsets(n as u32));
            assert_eq!(s.len(), 1 << n);
            assert!(distinct(&s));
        }
        // subsets:2 of 6: C(6,0..=2) kept + C(6,0..=2) dropped = 2 * 22.
        let s = all_of(lines(6), Strategy::Subsets(2));
        assert_eq!(s.len(), 44);
        assert!(distinct(&s));
        // Torn: every strict non-empty prefix of each line.
        let s = all_of(vec![(0, 3), (64, 1), (128, 2)], Strategy::Torn);
        assert_eq!(
            s.iter().map(|s| s.kept.clone()).collect::<Vec<_>>(),
            vec![vec![(0, 1)], vec![(0, 2)], vec![(128, 1)]]
        );
        assert_eq!(
            all_of(lines(4), Strategy::None),
            vec![CrashState::default()]
        );
        assert_eq!(all_of(lines(2), Strategy::All)[0].kept, lines(2));
    }

    #[test]
    fn random_is_seeded_distinct_and_valid() {
        let a = all_of(lines(8), Strategy::Random { count: 50, seed: 7 });
        let b = all_of(lines(8), Strategy::Random { count: 50, seed: 7 });
        let c = all_of(lines(8), Strategy::Random { count: 50, seed: 8 });
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a.len(), 50);
        assert!(distinct(&a));
        assert!(a
            .iter()
            .flat_map(|s| &s.kept)
            .all(|&(_, k)| (1..=3).contains(&k)));
        assert!(a.iter().flat_map(|s| &s.kept).any(|&(_, k)| k < 3));
        // A space of 2 states cannot give 10: the repeats are reported.
        let cfg = StateConfig {
            strategies: vec![Strategy::Random { count: 10, seed: 1 }],
            ..StateConfig::default()
        };
        let mut it = CrashStates::from_lines(vec![(0, 1)], &cfg);
        assert_eq!(it.by_ref().count(), 2);
        assert!(it.truncation().random_repeats > 0);
    }

    #[test]
    fn caps_are_reported() {
        let cfg = StateConfig {
            strategies: vec![Strategy::EachLine],
            max_states: 5,
            max_lines: 3,
        };
        let mut it = CrashStates::from_lines(lines(10), &cfg);
        let got: Vec<_> = it.by_ref().collect();
        assert_eq!(got.len(), 5);
        let t = it.truncation();
        assert!(t.states_capped && t.truncated());
        assert_eq!(t.lines_ignored, 7);
        assert!(got.iter().flat_map(|s| &s.kept).all(|&(l, _)| l < 3 * 64));
        // Exactly at the cap: nothing cut.
        let cfg = StateConfig {
            strategies: vec![Strategy::EachLine],
            max_states: 8,
            max_lines: 10,
        };
        let mut it = CrashStates::from_lines(lines(3), &cfg);
        assert_eq!(it.by_ref().count(), 8);
        assert!(!it.truncation().truncated());
    }

    #[test]
    fn strategies_combine_without_repeats() {
        let cfg = StateConfig {
            strategies: vec![Strategy::None, Strategy::All, Strategy::EachLine],
            ..StateConfig::default()
        };
        let s: Vec<_> = CrashStates::from_lines(lines(3), &cfg).collect();
        assert_eq!(s.len(), 8);
        assert!(distinct(&s));
    }

    /// `x86-adr-nt`: a line whose NT piece follows an older cached piece gets a lane
    /// at offset + 1; a line of NT pieces only, or of cached pieces only, does not.
    #[test]
    fn lanes_for_nt_pieces_behind_cached_ones() {
        let piece = |offset: u64, ahead: bool| crate::model::Piece {
            offset,
            value: 1,
            size: 8,
            record: offset,
            vcpu: 0,
            ahead,
        };
        let mixed = [
            piece(0, false),
            piece(8, true),
            piece(16, false),
            piece(24, true),
        ];
        let nt_only = [piece(64, true), piece(72, false)];
        let cached = [piece(128, false)];
        let line = |line_offset, stores| InFlightLine {
            line_offset,
            stores,
            flushed_prefix_len: 0,
        };
        let in_flight = [
            line(0, &mixed[..]),
            line(64, &nt_only[..]),
            line(128, &cached[..]),
        ];
        let cfg = StateConfig {
            strategies: vec![Strategy::EachLine],
            ..StateConfig::default()
        };
        let it = CrashStates::new(&in_flight, &cfg);
        assert_eq!(it.lines(), &[(0, 4), (1, 2), (64, 2), (128, 1)]);
        let s: Vec<_> = it.collect();
        // none, all, 4 units alone, 4 units dropped.
        assert_eq!(s.len(), 10);
        assert!(s.iter().any(|s| s.kept == vec![(1, 2)]));
        // In an atomic group the lane goes with its line.
        let g = CrashStates::new_grouped(&in_flight, &[vec![0, 128]], &cfg);
        let s: Vec<_> = g.collect();
        assert!(
            s.iter().all(|s| s.kept_of(1) == 0 || s.kept_of(0) == 4),
            "{s:?}"
        );
    }

    #[test]
    fn strategies_parse() {
        for (s, want) in [
            ("none", Strategy::None),
            ("all", Strategy::All),
            ("each-line", Strategy::EachLine),
            ("subsets:3", Strategy::Subsets(3)),
            ("random:10", Strategy::Random { count: 10, seed: 0 }),
            ("random:10:5", Strategy::Random { count: 10, seed: 5 }),
            ("torn", Strategy::Torn),
        ] {
            assert_eq!(s.parse::<Strategy>().unwrap(), want);
        }
        assert_eq!(
            Strategy::Random { count: 1, seed: 2 }.to_string(),
            "random:1:2"
        );
        for bad in ["subsets", "subsets:x", "random", "each", "torn:1"] {
            assert!(bad.parse::<Strategy>().is_err(), "{bad}");
        }
    }
}
