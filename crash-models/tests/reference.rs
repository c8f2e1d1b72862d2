//! The replayer, the state enumerator and the image builder against a brute-force
//! reference model written for clarity, not speed.
//!
//! The reference recomputes everything from the whole trace prefix at each crash
//! point: which pieces some flush-and-fence (or non-temporal store and fence) forced
//! to be durable, and hence, per line, the range of prefix lengths a crash may leave.
//! Its reachable images are the product of those ranges, less the states a
//! `clflush` forbids: after `st x; clflush x; st y` on one vCPU, `y` is never kept
//! without what the `clflush` wrote back of `x`'s line.
//!
//! Under `x86-adr-nt` a line may also keep the first `j` of its in-flight
//! non-temporal pieces on top of its prefix, for any `j` (an NT store may persist
//! before the older cached stores of its line; `crash_models::model`'s docs).

use crash_models::delta::ImageBuilder;
use crash_models::model::{Model, ModelConfig, Replayer};
use crash_models::states::{CrashState, CrashStates, StateConfig, Strategy as S};
use crash_models::trace::{FenceKind, FlushKind, Privilege, Record};
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};

type Image = BTreeMap<u64, u8>;

/// One 8-byte-word part of a store, with the bytes it writes.
#[derive(Debug, Clone)]
struct RefPiece {
    record: usize,
    vcpu: u16,
    line: u64,
    bytes: Vec<(u64, u8)>,
    /// From a non-temporal store.
    nt: bool,
}

struct Reference {
    /// Per line (sorted): its pieces in program order and the least prefix a crash
    /// must keep.
    lines: BTreeMap<u64, (Vec<RefPiece>, usize)>,
    /// Per `clflush` not fenced on its vCPU: (its line, how many of the line's pieces
    /// are older, and per other line, the index of its first piece that is younger and
    /// of the same vCPU).
    orders: Vec<(u64, usize, BTreeMap<u64, usize>)>,
    /// `x86-adr-nt`: in-flight NT pieces may persist ahead of their line's prefix.
    nt_ahead: bool,
}

/// Per line: its prefix length, and how many of its in-flight NT pieces persist
/// besides (always 0 unless `x86-adr-nt`).
type Choice = BTreeMap<u64, (usize, usize)>;

fn pieces_of(
    record: usize,
    vcpu: u16,
    offset: u64,
    size: u8,
    value: u64,
    line_size: u64,
    nt: bool,
) -> Vec<RefPiece> {
    let mut by_word: BTreeMap<u64, Vec<(u64, u8)>> = BTreeMap::new();
    for b in 0..size as u64 {
        let addr = offset + b;
        by_word
            .entry(addr / 8)
            .or_default()
            .push((addr, (value >> (8 * b)) as u8));
    }
    by_word
        .into_values()
        .map(|bytes| RefPiece {
            record,
            vcpu,
            line: bytes[0].0 / line_size,
            bytes,
            nt,
        })
        .collect()
}

impl Reference {
    /// The state space after the first `upto` records.
    fn at(trace: &[Record], upto: usize, cfg: ModelConfig) -> Reference {
        let ls = cfg.line_size as u64;
        let trace = &trace[..upto];
        let mut pieces = Vec::new();
        // (record, line, vcpu, covers its own record: a non-temporal store)
        let mut flushes: Vec<(usize, u64, u16, bool)> = Vec::new();
        for (i, r) in trace.iter().enumerate() {
            match *r {
                Record::Store {
                    offset,
                    size,
                    value,
                    non_temporal,
                    vcpu,
                    ..
                } => {
                    let ps = pieces_of(i, vcpu, offset, size, value, ls, non_temporal);
                    if non_temporal {
                        for p in &ps {
                            flushes.push((i, p.line, vcpu, true));
                        }
                    }
                    pieces.extend(ps);
                }
                Record::Flush { offset, vcpu, .. } => flushes.push((i, offset / ls, vcpu, false)),
                _ => {}
            }
        }
        let fenced = |after: usize, vcpu: u16| {
            trace[after + 1..]
                .iter()
                .any(|r| matches!(r, Record::Fence { vcpu: v, .. } if *v == vcpu))
        };
        let mut lines: BTreeMap<u64, (Vec<RefPiece>, usize)> = BTreeMap::new();
        for p in pieces {
            let must = cfg.model == Model::X86Eadr
                || flushes.iter().any(|&(f, line, vcpu, inclusive)| {
                    line == p.line
                        && (p.record < f || (inclusive && p.record == f))
                        && fenced(f, vcpu)
                });
            let e = lines.entry(p.line).or_default();
            e.0.push(p);
            if must {
                e.1 = e.0.len();
            }
        }
        // clflushes not fenced on their vCPU (under eADR everything is durable).
        let clflushes: Vec<(usize, u64, u16)> = trace
            .iter()
            .enumerate()
            .filter_map(|(i, r)| match *r {
                Record::Flush {
                    offset,
                    flush: FlushKind::Clflush,
                    vcpu,
                    ..
                } if cfg.model != Model::X86Eadr && !fenced(i, vcpu) => {
                    Some((i, offset / ls, vcpu))
                }
                _ => None,
            })
            .collect();
        // A durable piece younger than a clflush of its vCPU makes what the clflush
        // wrote back durable, until nothing changes.
        loop {
            let mut changed = false;
            for &(f, x, v) in &clflushes {
                let forced = lines
                    .iter()
                    .any(|(_, (ps, must))| ps[..*must].iter().any(|p| p.record > f && p.vcpu == v));
                if let (true, Some((ps, must))) = (forced, lines.get_mut(&x)) {
                    let older = ps.iter().filter(|p| p.record < f).count();
                    if older > *must {
                        *must = older;
                        changed = true;
                    }
                }
            }
            if !changed {
                break;
            }
        }
        let orders = clflushes
            .iter()
            .filter_map(|&(f, x, v)| {
                let (ps, _) = lines.get(&x)?;
                let older = ps.iter().filter(|p| p.record < f).count();
                let younger = lines
                    .iter()
                    .filter(|(l, _)| **l != x)
                    .filter_map(|(l, (ps, _))| {
                        let i = ps.iter().position(|p| p.record > f && p.vcpu == v)?;
                        Some((*l, i))
                    })
                    .collect();
                Some((x, older, younger))
            })
            .collect();
        Reference {
            lines,
            orders,
            nt_ahead: cfg.model == Model::X86AdrNt,
        }
    }

    /// In-flight NT pieces of a line (that may persist ahead under `x86-adr-nt`).
    fn nt_in_flight(&self, line: u64) -> usize {
        let (ps, must) = &self.lines[&line];
        ps[*must..].iter().filter(|p| p.nt).count()
    }

    /// Every choice: prefixes within their ranges, and each line's count of NT
    /// pieces kept besides the prefix.
    fn each_full_choice(&self, f: &mut dyn FnMut(&Choice)) {
        let lines: Vec<u64> = self.lines.keys().copied().collect();
        self.each_choice(&mut |prefix| {
            let ranges: Vec<usize> = lines
                .iter()
                .map(|l| {
                    if self.nt_ahead {
                        self.nt_in_flight(*l)
                    } else {
                        0
                    }
                })
                .collect();
            let mut js = vec![0usize; lines.len()];
            loop {
                let c: Choice = lines
                    .iter()
                    .zip(&js)
                    .map(|(l, j)| (*l, (prefix[l], *j)))
                    .collect();
                f(&c);
                // Next combination of lane counts (odometer).
                let mut i = 0;
                while i < js.len() && js[i] == ranges[i] {
                    js[i] = 0;
                    i += 1;
                }
                if i == js.len() {
                    break;
                }
                js[i] += 1;
            }
        });
    }

    /// The image of a full choice: per line, its prefix and then the first `j` of its
    /// in-flight NT pieces, applied in program order.
    fn image_full(&self, choice: &Choice) -> Image {
        let mut img = Image::new();
        for (line, (ps, must)) in &self.lines {
            let (k, j) = choice[line];
            let mut ahead = 0;
            for (i, p) in ps.iter().enumerate() {
                let lane = i >= *must && p.nt && {
                    ahead += 1;
                    ahead <= j
                };
                if i < k || lane {
                    img.extend(p.bytes.iter().copied());
                }
            }
        }
        img
    }

    /// True when a choice of prefixes obeys every clflush.
    fn obeys(&self, prefix: &BTreeMap<u64, usize>) -> bool {
        self.orders.iter().all(|(x, older, younger)| {
            prefix[x] >= *older || younger.iter().all(|(l, first)| prefix[l] <= *first)
        })
    }

    /// The largest choice below `prefix` that obeys every clflush: the pointwise
    /// maximum of all such choices (they are closed under maximum), by brute force.
    fn largest_below(&self, prefix: &BTreeMap<u64, usize>) -> BTreeMap<u64, usize> {
        let mut best = self.mins();
        self.each_choice(&mut |c| {
            if c.iter().all(|(l, k)| *k <= prefix[l]) && self.obeys(c) {
                for (l, k) in c {
                    let b = best.get_mut(l).expect("same lines");
                    *b = (*b).max(*k);
                }
            }
        });
        best
    }

    fn each_choice(&self, f: &mut dyn FnMut(&BTreeMap<u64, usize>)) {
        let lines: Vec<(u64, usize, usize)> = self
            .lines
            .iter()
            .map(|(l, (p, m))| (*l, *m, p.len()))
            .collect();
        fn rec(
            lines: &[(u64, usize, usize)],
            i: usize,
            choice: &mut BTreeMap<u64, usize>,
            f: &mut dyn FnMut(&BTreeMap<u64, usize>),
        ) {
            if i == lines.len() {
                f(choice);
                return;
            }
            let (l, lo, hi) = lines[i];
            for k in lo..=hi {
                choice.insert(l, k);
                rec(lines, i + 1, choice, f);
            }
        }
        rec(&lines, 0, &mut self.mins(), f);
    }

    fn image(&self, prefix: &BTreeMap<u64, usize>) -> Image {
        let mut img = Image::new();
        for (line, (ps, _)) in &self.lines {
            for p in &ps[..prefix[line]] {
                img.extend(p.bytes.iter().copied());
            }
        }
        img
    }

    fn mins(&self) -> BTreeMap<u64, usize> {
        self.lines.iter().map(|(l, (_, m))| (*l, *m)).collect()
    }

    fn maxs(&self) -> BTreeMap<u64, usize> {
        self.lines.iter().map(|(l, (p, _))| (*l, p.len())).collect()
    }

    fn reachable(&self) -> BTreeSet<Image> {
        let mut out = BTreeSet::new();
        self.each_full_choice(&mut |c| {
            let prefix: BTreeMap<u64, usize> = c.iter().map(|(l, (k, _))| (*l, *k)).collect();
            if self.obeys(&prefix) {
                out.insert(self.image_full(c));
            }
        });
        out
    }
}

fn image_of(img: &crash_models::delta::CrashImage) -> Image {
    let mut out = Image::new();
    for (off, bytes) in img.ranges() {
        for (i, b) in bytes.iter().enumerate() {
            out.insert(off + i as u64, *b);
        }
    }
    out
}

fn record() -> impl Strategy<Value = Record> {
    // Offsets in 0..160: a few 32- or 64-byte lines, stores that straddle words and
    // lines.
    prop_oneof![
        5 => (0u64..160, 1u8..=8, any::<u64>(), prop::bool::weighted(0.2), 0u16..2).prop_map(
            |(offset, size, value, non_temporal, vcpu)| Record::Store {
                offset, size, value, non_temporal, privilege: Privilege::User, vcpu, pc: 0
            }
        ),
        2 => (0u64..160, 0u8..3, 0u16..2).prop_map(|(offset, k, vcpu)| Record::Flush {
            offset,
            flush: [FlushKind::Clwb, FlushKind::Clflushopt, FlushKind::Clflush][k as usize],
            privilege: Privilege::User, vcpu, pc: 0
        }),
        1 => (0u8..4, 0u16..2).prop_map(|(k, vcpu)| Record::Fence {
            fence: [FenceKind::Sfence, FenceKind::Mfence, FenceKind::Locked, FenceKind::Serializing][k as usize],
            privilege: Privilege::Kernel, vcpu, pc: 0
        }),
    ]
}

fn check_point(trace: &[Record], upto: usize, replayer: &Replayer) -> Result<(), TestCaseError> {
    let cfg = replayer.config();
    let reference = Reference::at(trace, upto, cfg);
    // The in-flight queues are exactly the parts of each line a crash may still drop.
    let in_flight: BTreeMap<u64, usize> = replayer
        .in_flight()
        .iter()
        .map(|l| (l.line_offset / cfg.line_size as u64, l.stores.len()))
        .collect();
    let expected: BTreeMap<u64, usize> = reference
        .lines
        .iter()
        .filter(|(_, (p, m))| p.len() > *m)
        .map(|(l, (p, m))| (*l, p.len() - m))
        .collect();
    prop_assert_eq!(
        &in_flight,
        &expected,
        "in-flight queues after {} records",
        upto
    );

    let reachable = reference.reachable();
    let builder = ImageBuilder::new(replayer);
    let states_cfg = StateConfig {
        strategies: vec![
            S::None,
            S::All,
            S::EachLine,
            S::Subsets(2),
            S::Torn,
            S::Random {
                count: 8,
                seed: upto as u64,
            },
        ],
        max_states: usize::MAX,
        max_lines: usize::MAX,
    };
    let mut states =
        CrashStates::new(builder.in_flight(), &states_cfg).with_orderings(replayer.orderings());
    let mut seen_states = BTreeSet::new();
    let mut images = BTreeSet::new();
    for state in &mut states {
        prop_assert!(
            seen_states.insert(state.clone()),
            "state yielded twice: {:?}",
            state
        );
        let img = image_of(&builder.build(&state));
        prop_assert!(
            reachable.contains(&img),
            "state {:?} gives an unreachable image {:?}",
            state,
            img
        );
        images.insert(img);
    }
    prop_assert!(!states.truncation().truncated());
    // none, all, and each line alone kept / alone dropped.
    let mins = reference.mins();
    let maxs = reference.maxs();
    // (A clflush may forbid one of these: then the largest state below it that it
    // allows.)
    prop_assert!(images.contains(&reference.image(&mins)), "none missing");
    prop_assert!(images.contains(&reference.image(&maxs)), "all missing");
    for line in expected.keys() {
        let mut alone = mins.clone();
        alone.insert(*line, maxs[line]);
        prop_assert!(
            images.contains(&reference.image(&reference.largest_below(&alone))),
            "line {} alone missing",
            line
        );
        let mut dropped = maxs.clone();
        dropped.insert(*line, mins[line]);
        prop_assert!(
            images.contains(&reference.image(&reference.largest_below(&dropped))),
            "line {} dropped missing",
            line
        );
    }
    // x86-adr-nt: each line's NT pieces alone (a lane kept whole, every other unit
    // at its least), when they are not a prefix already: the state the prefix view
    // skips.
    if reference.nt_ahead {
        for (line, (ps, must)) in &reference.lines {
            let n = reference.nt_in_flight(*line);
            let jumps = ps[*must..]
                .iter()
                .position(|p| !p.nt)
                .is_some_and(|c| ps[*must + c..].iter().any(|p| p.nt));
            if !jumps {
                continue;
            }
            let mut c: Choice = mins.iter().map(|(l, k)| (*l, (*k, 0))).collect();
            c.insert(*line, (mins[line], n));
            prop_assert!(
                images.contains(&reference.image_full(&c)),
                "line {}'s NT pieces alone missing",
                line
            );
        }
    }
    // Whatever a fence made durable is in every state: the `none` image holds it.
    let none = image_of(&builder.build(&CrashState::default()));
    prop_assert_eq!(&none, &reference.image(&mins));
    Ok(())
}

fn run(trace: &[Record], cfg: ModelConfig) -> Result<(), TestCaseError> {
    let mut r = Replayer::new(cfg);
    check_point(trace, 0, &r)?;
    for (i, rec) in trace.iter().enumerate() {
        r.apply(rec);
        check_point(trace, i + 1, &r)?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 160, ..ProptestConfig::default() })]

    #[test]
    fn adr_matches_reference(trace in prop::collection::vec(record(), 0..24), wide in any::<bool>()) {
        let ls = if wide { 64 } else { 32 };
        run(&trace, ModelConfig::new(Model::X86Adr, ls).unwrap())?;
    }

    #[test]
    fn adr_nt_matches_reference(trace in prop::collection::vec(record(), 0..20), wide in any::<bool>()) {
        let ls = if wide { 64 } else { 32 };
        run(&trace, ModelConfig::new(Model::X86AdrNt, ls).unwrap())?;
    }

    #[test]
    fn eadr_matches_reference(trace in prop::collection::vec(record(), 0..16)) {
        run(&trace, ModelConfig::new(Model::X86Eadr, 64).unwrap())?;
    }

    #[test]
    fn images_apply_and_undo(trace in prop::collection::vec(record(), 1..24), base_seed in any::<u64>()) {
        let mut r = Replayer::new(ModelConfig::default());
        for rec in &trace {
            r.apply(rec);
        }
        let base = crash_models::ops::seeded_bytes(base_seed, 256);
        let builder = ImageBuilder::new(&r);
        let states: Vec<CrashState> = CrashStates::new(builder.in_flight(), &StateConfig::default()).collect();
        for s in &states {
            let img = builder.build(s);
            let mut bytes = base.clone();
            img.apply_to_slice(&mut bytes);
            let want = image_of(&img);
            for (i, b) in bytes.iter().enumerate() {
                let expect = want.get(&(i as u64)).copied().unwrap_or(base[i]);
                prop_assert_eq!(*b, expect, "byte {}", i);
            }
            // Ranges are sorted and coalesced.
            let ranges: Vec<(u64, usize)> = img.ranges().map(|(o, b)| (o, b.len())).collect();
            for w in ranges.windows(2) {
                prop_assert!(w[0].0 + (w[0].1 as u64) < w[1].0, "ranges {:?}", ranges);
            }
            img.undo_slice(&mut bytes, &base);
            prop_assert_eq!(&bytes, &base);
        }
        // Identities: the fast one equals the built one, and equal ids <=> equal bytes.
        let images: Vec<_> = states.iter().map(|s| builder.build(s)).collect();
        for (s, img) in states.iter().zip(&images) {
            prop_assert_eq!(builder.id(s), img.id());
        }
        for a in &images {
            for b in &images {
                prop_assert_eq!(a.id() == b.id(), image_of(a) == image_of(b));
            }
        }
        // A file walked through every image by `switch` holds each one exactly.
        use std::os::unix::fs::FileExt;
        let file = tempfile::tempfile().unwrap();
        file.write_all_at(&base, 0).unwrap();
        let mut prev: Option<&crash_models::delta::CrashImage> = None;
        for img in images.iter().chain(images.iter().rev()) {
            match prev {
                None => img.apply(&file).unwrap(),
                Some(p) => {
                    img.switch(p, &file, &base).unwrap();
                }
            }
            let mut want = base.clone();
            img.apply_to_slice(&mut want);
            let mut got = vec![0u8; base.len()];
            file.read_exact_at(&mut got, 0).unwrap();
            prop_assert_eq!(&got, &want);
            prev = Some(img);
        }
        if let Some(p) = prev {
            p.undo(&file, &base).unwrap();
            let mut got = vec![0u8; base.len()];
            file.read_exact_at(&mut got, 0).unwrap();
            prop_assert_eq!(&got, &base);
        }
    }
}
