//! Read-set pruning against a brute-force byte comparison: an image the class table
//! prunes holds exactly its class's bytes on every line the class's check read, and
//! an image it does not prune differs (in written lines) from every class there.
//! Also: a crash state's signature from a point snapshot is the one of its built
//! image.

use crash_models::delta::{hash_line, LineHash, PointSnapshot};
use crash_models::model::{Model, ModelConfig, Replayer};
use crash_models::prune::{ClassTable, ImageLines, Listed, StateLines};
use crash_models::readset::ReadSet;
use crash_models::states::{CrashStates, StateConfig, Strategy as States};
use crash_models::trace::{FenceKind, FlushKind, Privilege, Record};
use proptest::prelude::*;
use std::collections::BTreeMap;

const LINES: u64 = 12;
const LS: usize = 64;

/// An image: written lines with (bytes, mask); everything else is the base.
type Img = BTreeMap<u64, ([u8; LS], u64)>;

fn bytes_of(img: &Img, base: &[u8]) -> Vec<u8> {
    let mut out = base.to_vec();
    for (l, (b, m)) in img {
        for i in 0..LS {
            if m >> i & 1 == 1 {
                out[*l as usize * LS + i] = b[i];
            }
        }
    }
    out
}

fn listed(img: &Img) -> Vec<(u64, LineHash)> {
    img.iter()
        .filter(|(_, (_, m))| *m != 0)
        .map(|(l, (b, m))| (*l, hash_line(*l, b, &[*m])))
        .collect()
}

/// Written content of a line, masked (None: not written).
fn written(img: &Img, l: u64) -> Option<(Vec<u8>, u64)> {
    img.get(&l).filter(|(_, m)| *m != 0).map(|(b, m)| {
        let v = (0..LS)
            .map(|i| if m >> i & 1 == 1 { b[i] } else { 0 })
            .collect();
        (v, *m)
    })
}

fn img_strategy() -> impl Strategy<Value = Img> {
    // Few values and masks, so images often agree on lines.
    proptest::collection::btree_map(
        0..LINES,
        (
            0u8..3,
            prop_oneof![Just(!0u64), Just(0xffu64), Just(0u64), any::<u64>()],
        )
            .prop_map(|(v, m)| ([v; LS], m)),
        0..6,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn pruned_images_equal_their_class_on_what_it_read(
        base_seed in 0u8..3,
        images in proptest::collection::vec(
            (img_strategy(), proptest::collection::btree_set(0..LINES, 0..6)),
            1..24,
        ),
    ) {
        let base = vec![base_seed; LINES as usize * LS];
        let mut table: ClassTable<usize> = ClassTable::new(LS as u32);
        let mut classes: Vec<(usize, ReadSet)> = Vec::new();
        for (i, (img, reads)) in images.iter().enumerate() {
            let lines = listed(img);
            match table.find(&Listed(&lines)) {
                Some(&c) => {
                    let (ci, rs) = &classes[c];
                    let (a, b) = (bytes_of(img, &base), bytes_of(&images[*ci].0, &base));
                    for r in rs.ranges() {
                        let r = r.start as usize..r.end as usize;
                        prop_assert_eq!(&a[r.clone()], &b[r], "image {} pruned into class {}", i, c);
                    }
                }
                None => {
                    for (c, (ci, rs)) in classes.iter().enumerate() {
                        let lines_read = rs.ranges().iter().flat_map(|r| r.start / LS as u64..r.end / LS as u64);
                        let same = lines_read.clone().all(|l| written(img, l) == written(&images[*ci].0, l));
                        prop_assert!(!same, "image {} equals class {} on its read lines but was not found", i, c);
                    }
                    let rs = ReadSet::from_lines(LS as u32, reads.iter().copied());
                    prop_assert!(table.insert(&rs, &Listed(&lines), classes.len()));
                    classes.push((i, rs));
                }
            }
        }
        prop_assert_eq!(table.len(), classes.len());
    }

    #[test]
    fn state_signatures_are_those_of_built_images(
        stores in proptest::collection::vec((0u64..16, 0u64..8, any::<u64>(), any::<bool>()), 1..40),
        lo in 0u64..16,
        hi in 0u64..16,
    ) {
        let cfg = ModelConfig::new(Model::X86Adr, 64).unwrap();
        let mut r = Replayer::new(cfg);
        for (i, (line, word, value, flush)) in stores.iter().enumerate() {
            r.apply(&Record::Store {
                offset: line * 64 + word * 8,
                size: 8,
                value: *value,
                non_temporal: false,
                privilege: Privilege::Kernel,
                vcpu: 0,
                pc: 0,
            });
            if *flush {
                r.apply(&Record::Flush { offset: line * 64, flush: FlushKind::Clwb, privilege: Privilege::Kernel, vcpu: 0, pc: 0 });
            }
            if i % 7 == 6 {
                r.apply(&Record::Fence { fence: FenceKind::Sfence, privilege: Privilege::Kernel, vcpu: 0, pc: 0 });
            }
        }
        let snap = PointSnapshot::new(&r, None);
        let lines = lo.min(hi)..lo.max(hi) + 1;
        let in_flight = snap.in_flight();
        let states = CrashStates::new(&in_flight, &StateConfig {
            strategies: vec![States::Subsets(2)],
            ..StateConfig::default()
        });
        for st in states {
            let img = snap.build(&st);
            // The built image's written lines, hashed the way pruning does.
            let mut by_line: BTreeMap<u64, ([u8; LS], u64)> = BTreeMap::new();
            for (off, bytes) in img.ranges() {
                for (k, b) in bytes.iter().enumerate() {
                    let at = off as usize + k;
                    let e = by_line.entry((at / LS) as u64).or_insert(([0; LS], 0));
                    e.0[at % LS] = *b;
                    e.1 |= 1 << (at % LS);
                }
            }
            let want = Listed(&listed(&by_line)).sum_in(lines.clone());
            let changes = snap.changes(&st);
            let got = StateLines { durable: snap.durable(), changes: &changes }.sum_in(lines.clone());
            prop_assert_eq!(got, want);
            prop_assert_eq!(snap.id(&st), img.id());
        }
    }
}
