//! Crash states with atomic line groups (`--sector-atomic`: the sectors of a kernel
//! block write persist whole or not at all) against a brute-force reference: every
//! assignment of whole-or-nothing to each line, filtered to those where every group's
//! lines agree.

use crash_models::states::{CrashState, CrashStates, StateConfig, Strategy as St};
use proptest::prelude::*;
use std::collections::BTreeSet;

fn cfg(s: St) -> StateConfig {
    StateConfig {
        strategies: vec![s],
        max_states: usize::MAX,
        max_lines: usize::MAX,
    }
}

/// Lines 0..n (offset 64 * i, queue length from `lens`) and groups of line indices.
fn setup(lens: &[u32], groups: &[Vec<usize>]) -> (Vec<(u64, u32)>, Vec<Vec<u64>>) {
    let lines: Vec<(u64, u32)> = lens
        .iter()
        .enumerate()
        .map(|(i, &l)| (i as u64 * 64, l))
        .collect();
    let groups = groups
        .iter()
        .map(|g| g.iter().map(|&i| i as u64 * 64).collect())
        .collect();
    (lines, groups)
}

/// The units: each group (merged when they share a line), then the other lines alone.
fn reference_units(n: usize, groups: &[Vec<usize>]) -> Vec<Vec<usize>> {
    let mut unit_of: Vec<usize> = (0..n).collect();
    for g in groups {
        let g: Vec<usize> = g.iter().copied().filter(|&i| i < n).collect();
        if let Some(&first) = g.first() {
            let target = unit_of[first];
            for &m in &g {
                let old = unit_of[m];
                for u in unit_of.iter_mut() {
                    if *u == old {
                        *u = target;
                    }
                }
            }
        }
    }
    let ids: BTreeSet<usize> = unit_of.iter().copied().collect();
    ids.into_iter()
        .map(|id| (0..n).filter(|&i| unit_of[i] == id).collect())
        .collect()
}

/// Every whole-or-nothing state that keeps each unit whole or drops it whole.
fn reference_all(lines: &[(u64, u32)], units: &[Vec<usize>]) -> BTreeSet<CrashState> {
    let mut out = BTreeSet::new();
    for mask in 0u32..(1 << units.len()) {
        let mut kept: Vec<(u64, u32)> = Vec::new();
        for (u, members) in units.iter().enumerate() {
            if mask & (1 << u) != 0 {
                kept.extend(members.iter().map(|&i| lines[i]));
            }
        }
        kept.sort_unstable();
        out.insert(CrashState { kept });
    }
    out
}

fn consistent(state: &CrashState, lines: &[(u64, u32)], units: &[Vec<usize>]) -> bool {
    units.iter().filter(|u| u.len() > 1).all(|u| {
        let whole = u.iter().all(|&i| state.kept_of(lines[i].0) == lines[i].1);
        let none = u.iter().all(|&i| state.kept_of(lines[i].0) == 0);
        whole || none
    })
}

fn arb_case() -> impl Strategy<Value = (Vec<u32>, Vec<Vec<usize>>)> {
    (1usize..7).prop_flat_map(|n| {
        (
            proptest::collection::vec(1u32..4, n),
            proptest::collection::vec(proptest::collection::vec(0..n, 1..4), 0..3),
        )
    })
}

proptest! {
    #[test]
    fn all_subsets_of_units_are_exactly_the_reference((lens, groups) in arb_case()) {
        let (lines, g) = setup(&lens, &groups);
        let units = reference_units(lens.len(), &groups);
        let got: Vec<CrashState> =
            CrashStates::from_lines_grouped(lines.clone(), &g, &cfg(St::Subsets(lens.len() as u32)))
                .collect();
        let set: BTreeSet<CrashState> = got.iter().cloned().collect();
        prop_assert_eq!(set.len(), got.len(), "a state came out twice");
        prop_assert_eq!(set, reference_all(&lines, &units));
    }

    #[test]
    fn each_line_is_none_all_and_each_unit_alone((lens, groups) in arb_case()) {
        let (lines, g) = setup(&lens, &groups);
        let units = reference_units(lens.len(), &groups);
        let got: BTreeSet<CrashState> =
            CrashStates::from_lines_grouped(lines.clone(), &g, &cfg(St::EachLine)).collect();
        let state = |members: &mut dyn Iterator<Item = usize>| {
            let mut kept: Vec<(u64, u32)> = members.map(|i| lines[i]).collect();
            kept.sort_unstable();
            CrashState { kept }
        };
        let mut want = BTreeSet::new();
        want.insert(CrashState::default());
        want.insert(state(&mut (0..lens.len())));
        for u in &units {
            want.insert(state(&mut u.iter().copied()));
            want.insert(state(&mut (0..lens.len()).filter(|i| !u.contains(i))));
        }
        prop_assert_eq!(got, want);
    }

    #[test]
    fn random_and_torn_never_split_a_unit((lens, groups) in arb_case(), seed in any::<u64>()) {
        let (lines, g) = setup(&lens, &groups);
        let units = reference_units(lens.len(), &groups);
        for s in [St::Random { count: 20, seed }, St::Torn] {
            for st in CrashStates::from_lines_grouped(lines.clone(), &g, &cfg(s)) {
                prop_assert!(consistent(&st, &lines, &units), "{s}: {st:?}");
            }
        }
        // Torn tears exactly the lines that are units of their own.
        let torn: BTreeSet<u64> = CrashStates::from_lines_grouped(lines.clone(), &g, &cfg(St::Torn))
            .flat_map(|s| s.kept.into_iter().map(|k| k.0))
            .collect();
        let alone: BTreeSet<u64> = units
            .iter()
            .filter(|u| u.len() == 1 && lines[u[0]].1 > 1)
            .map(|u| lines[u[0]].0)
            .collect();
        prop_assert_eq!(torn, alone);
    }

    #[test]
    fn groups_of_one_line_change_nothing(lens in proptest::collection::vec(1u32..4, 0..7)) {
        let singles: Vec<Vec<usize>> = (0..lens.len()).map(|i| vec![i]).collect();
        let (lines, g) = setup(&lens, &singles);
        for s in [St::EachLine, St::Subsets(2), St::Torn, St::Random { count: 9, seed: 3 }] {
            let plain: Vec<CrashState> = CrashStates::from_lines(lines.clone(), &cfg(s)).collect();
            let grouped: Vec<CrashState> =
                CrashStates::from_lines_grouped(lines.clone(), &g, &cfg(s)).collect();
            prop_assert_eq!(plain, grouped);
        }
    }
}
