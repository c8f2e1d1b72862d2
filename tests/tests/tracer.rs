//! The tracer end to end: a real guest under the plugin, and the trace checked against
//! what really reached the PM image.

use crash_models::ops::{FsKind, Workload};
use crash_models::protocol::{AgentMsg, HostMsg, OpDetail, OpResult};
use crash_models::trace::{FenceKind, MarkerKind, Privilege, Record, Trace};
use pmcrash::trace::{first_difference, marker_problems, replay_onto, TRACER_PLUGIN};
use pmcrash::vm::{PluginSpec, PM_GUEST_PHYS_BASE};
use pmcrash_e2e::{factory, rt};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

/// Every kind of PM traffic the tracer must see: write(), cached and non-temporal
/// mmap stores, all three flushes, both fences, msync, fsync, fdatasync.
const WORKLOAD: &str = r#"
[[ops]]
op = "open"
path = "f"
fd = "a"
create = true
[[ops]]
op = "write"
fd = "a"
data = { fill = 65, len = 12288 }
[[ops]]
op = "fsync"
fd = "a"
[[ops]]
op = "mmap"
fd = "a"
map = "m"
len = 12288
[[ops]]
op = "store"
map = "m"
offset = 100
data = "hello persistent world"
[[ops]]
op = "flush"
map = "m"
offset = 100
len = 22
insn = "clwb"
[[ops]]
op = "fence"
[[ops]]
op = "store"
map = "m"
offset = 4200
data = { fill = 66, len = 64 }
kind = "non-temporal"
[[ops]]
op = "fence"
insn = "mfence"
[[ops]]
op = "store"
map = "m"
offset = 8000
data = "abcdefgh-ijklmnop-qrstuvwxyz"
[[ops]]
op = "flush"
map = "m"
offset = 8000
len = 28
insn = "clflushopt"
[[ops]]
op = "store"
map = "m"
offset = 5000
data = "x"
[[ops]]
op = "flush"
map = "m"
offset = 5000
insn = "clflush"
[[ops]]
op = "fence"
[[ops]]
op = "msync"
map = "m"
[[ops]]
op = "pwrite"
fd = "a"
offset = 20000
data = "tail"
[[ops]]
op = "fdatasync"
fd = "a"
[[ops]]
op = "close"
fd = "a"
"#;

struct Traced {
    base: Vec<u8>,
    after: Vec<u8>,
    trace: Trace,
    results: Vec<OpResult>,
}

fn traced_run(fs: FsKind, smp: u32, src: &str) -> Traced {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let workload = Workload::parse(src, "tracer.toml").unwrap();
    let mut f = factory(fs);
    f.smp = smp;
    let image = dir.path().join("run.img");
    let trace_path = dir.path().join("run.pmt");
    let results = rt.block_on(async {
        f.make_image(&image).await.expect("make a PM image");
        let base = std::fs::read(&image).unwrap();
        let plugin = PluginSpec {
            path: TRACER_PLUGIN.into(),
            args: vec![
                ("pm_base".into(), format!("{PM_GUEST_PHYS_BASE:#x}")),
                ("pm_size".into(), f.pm_size.to_string()),
                ("out".into(), trace_path.display().to_string()),
            ],
        };
        let mut vm = f
            .start(&image, Some(plugin))
            .await
            .expect("start a traced guest");
        f.mount(&mut vm).await.expect("mount -o dax");
        let (done, _) = vm
            .request(
                &HostMsg::Run {
                    ops: workload.ops.clone(),
                    markers: true,
                },
                Duration::from_secs(600),
            )
            .await
            .expect("run the workload");
        vm.request(&HostMsg::Unmount, Duration::from_secs(120))
            .await
            .expect("unmount");
        vm.shutdown(Duration::from_secs(60))
            .await
            .expect("power off");
        (base, done)
    });
    let (base, done) = results;
    let results: Vec<OpResult> = done
        .into_iter()
        .filter_map(|m| match m {
            AgentMsg::OpDone(r) => Some(r),
            _ => None,
        })
        .collect();
    for r in &results {
        assert!(r.ok(), "{fs}: op {} failed: {r:?}", r.index);
    }
    let after = std::fs::read(&image).unwrap();
    let trace = pmcrash::trace::read(&trace_path).expect("the trace decodes");
    Traced {
        base,
        after,
        trace,
        results,
    }
}

/// The records between op `i`'s begin and end markers.
fn op_records(t: &Trace, i: u32) -> &[Record] {
    let pos = |kind| {
        t.records
            .iter()
            .position(
                |r| matches!(*r, Record::Marker { marker, op, .. } if marker == kind && op == i),
            )
            .unwrap_or_else(|| panic!("no {kind:?} marker for op {i}"))
    };
    let (b, e) = (pos(MarkerKind::OpBegin), pos(MarkerKind::OpEnd));
    assert!(b < e, "op {i} ends before it begins");
    &t.records[b + 1..e]
}

fn check_run(fs: FsKind, smp: u32) -> Traced {
    let t = traced_run(fs, smp, WORKLOAD);
    let tr = &t.trace;
    assert_eq!(tr.footer.unresolved_flushes, 0, "{fs}: unresolved flushes");
    assert_eq!(
        marker_problems(&tr.records),
        Vec::<String>::new(),
        "{fs}: markers"
    );
    let ops = Workload::parse(WORKLOAD, "w").unwrap().ops;
    let markers = tr
        .records
        .iter()
        .filter(|r| matches!(r, Record::Marker { .. }))
        .count();
    assert_eq!(
        markers,
        2 * ops.len() + 2,
        "{fs}: one begin and end per op, one run"
    );

    // Replay equals reality, byte for byte (and so by hash).
    let replayed = replay_onto(&t.base, &tr.records);
    assert_eq!(
        first_difference(&replayed, &t.after),
        None,
        "{fs}: replaying the trace does not give the final image"
    );
    assert_eq!(blake3::hash(&replayed), blake3::hash(&t.after));
    // And by an independent tool: qemu-img compare of the two raw images.
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (
        dir.path().join("replayed.img"),
        dir.path().join("final.img"),
    );
    std::fs::write(&a, &replayed).unwrap();
    std::fs::write(&b, &t.after).unwrap();
    let out = std::process::Command::new("qemu-img")
        .args(["compare", "-q", "-f", "raw", "-F", "raw"])
        .arg(&a)
        .arg(&b)
        .output()
        .expect("qemu-img (Debian package qemu-utils) must be installed");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{fs}: qemu-img compare finds the replayed and final images different: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Every user store of a store op lies between its markers, covers exactly the
    // bytes the agent reported, and teaches us the op's page mapping.
    let mut page_of: BTreeMap<u64, u64> = BTreeMap::new();
    for r in &t.results {
        let OpDetail::Addresses { addr, len } = r.detail else {
            continue;
        };
        let recs = op_records(tr, r.index as u32);
        let stores: Vec<(u64, u8, bool)> = recs
            .iter()
            .filter_map(|x| match *x {
                Record::Store {
                    offset,
                    size,
                    privilege: Privilege::User,
                    non_temporal,
                    ..
                } => Some((offset, size, non_temporal)),
                _ => None,
            })
            .collect();
        match &ops[r.index] {
            crash_models::ops::Op::Store { kind, .. } => {
                let bytes: u64 = stores.iter().map(|s| s.1 as u64).sum();
                assert_eq!(bytes, len, "{fs}: op {}: user store bytes", r.index);
                let nt = *kind == crash_models::ops::StoreKind::NonTemporal;
                assert!(
                    stores.iter().all(|s| s.2 == nt),
                    "{fs}: op {}: NT flag",
                    r.index
                );
                let lo = stores.iter().map(|s| s.0).min().unwrap();
                page_of.insert(addr >> 12, lo - (addr & 0xfff));
            }
            crash_models::ops::Op::Flush { .. } => {
                let flushed: BTreeSet<u64> = recs
                    .iter()
                    .filter_map(|x| match *x {
                        Record::Flush {
                            offset,
                            privilege: Privilege::User,
                            ..
                        } => Some(offset & !63),
                        _ => None,
                    })
                    .collect();
                let page = page_of
                    .get(&(addr >> 12))
                    .unwrap_or_else(|| panic!("{fs}: op {} flushes a page never stored", r.index));
                let want: BTreeSet<u64> = (addr..addr + len)
                    .map(|a| (page + (a & 0xfff)) & !63)
                    .collect();
                assert_eq!(flushed, want, "{fs}: op {}: flushed lines", r.index);
            }
            _ => {}
        }
    }
    // msync and the syncs make the kernel flush.
    for (i, op) in ops.iter().enumerate() {
        if matches!(op, crash_models::ops::Op::Msync { .. }) {
            let kflushes = op_records(tr, i as u32)
                .iter()
                .filter(|r| {
                    matches!(
                        r,
                        Record::Flush {
                            privilege: Privilege::Kernel,
                            ..
                        }
                    )
                })
                .count();
            assert!(kflushes > 0, "{fs}: msync flushed nothing");
        }
    }
    for r in &tr.records {
        let v = match *r {
            Record::Store { vcpu, .. }
            | Record::Flush { vcpu, .. }
            | Record::Fence { vcpu, .. }
            | Record::Marker { vcpu, .. } => vcpu,
        };
        assert!((v as u32) < smp, "{fs}: vCPU {v} with -smp {smp}");
    }
    t
}

#[test]
fn ext4_dax_replay_equals_reality() {
    check_run(FsKind::Ext4, 1);
}

#[test]
fn xfs_dax_replay_equals_reality() {
    check_run(FsKind::Xfs, 1);
}

#[test]
fn smp2_trace_is_well_formed() {
    check_run(FsKind::Ext4, 2);
}

/// The same workload traced twice gives the same events (values aside: the file system
/// writes timestamps). What must match exactly, in order: every user-space store, flush
/// and fence, and the op markers. Kernel events are compared per op (between the same
/// markers) as multisets of stores and flushes: the kernel's own threads (jbd2, the
/// syncing task) interleave by host timing under TCG, so two whole-block metadata writes
/// can swap places, and interrupts put kernel fences at different points.
#[test]
fn traces_are_deterministic() {
    #[derive(Default, Debug, PartialEq)]
    struct Shape {
        user: Vec<String>,
        kernel_per_op: Vec<Vec<String>>,
    }
    let shape = |t: &Trace| -> Shape {
        let mut s = Shape {
            kernel_per_op: vec![Vec::new()],
            ..Shape::default()
        };
        for r in &t.records {
            match *r {
                Record::Marker { marker, op, .. } => {
                    s.user.push(format!("M {marker:?} {op}"));
                    s.kernel_per_op.push(Vec::new());
                }
                Record::Store {
                    offset,
                    size,
                    non_temporal,
                    privilege,
                    ..
                } => {
                    let e = format!("S {offset:#x} {size} {non_temporal}");
                    match privilege {
                        Privilege::User => s.user.push(e),
                        Privilege::Kernel => s.kernel_per_op.last_mut().unwrap().push(e),
                    }
                }
                Record::Flush {
                    offset,
                    flush,
                    privilege,
                    ..
                } => {
                    let e = format!("F {offset:#x} {flush:?}");
                    match privilege {
                        Privilege::User => s.user.push(e),
                        Privilege::Kernel => s.kernel_per_op.last_mut().unwrap().push(e),
                    }
                }
                // The workload's own sfence/mfence. Locked instructions and
                // serialising ones are left out: the tracer elides fences with nothing
                // to order, so whether the agent's next `lock` op or an interrupt's
                // `iret` is the one recorded depends on interrupt timing.
                Record::Fence {
                    fence: fence @ (FenceKind::Sfence | FenceKind::Mfence),
                    privilege: Privilege::User,
                    ..
                } => s.user.push(format!("B {fence:?}")),
                Record::Fence { .. } => {}
            }
        }
        for k in &mut s.kernel_per_op {
            k.sort();
        }
        s
    };
    let a = traced_run(FsKind::Ext4, 1, WORKLOAD);
    let b = traced_run(FsKind::Ext4, 1, WORKLOAD);
    let (sa, sb) = (shape(&a.trace), shape(&b.trace));
    assert!(!sa.user.is_empty() && sa.kernel_per_op.iter().any(|k| !k.is_empty()));
    let first = sa.user.iter().zip(&sb.user).position(|(x, y)| x != y);
    let around = |v: &[String], i: usize| v[i.saturating_sub(3)..(i + 3).min(v.len())].to_vec();
    assert!(
        sa.user.len() == sb.user.len() && first.is_none(),
        "user-space events differ: {} vs {}, first difference at {first:?}: {:?} vs {:?}",
        sa.user.len(),
        sb.user.len(),
        around(&sa.user, first.unwrap_or(sa.user.len().min(sb.user.len()))),
        around(&sb.user, first.unwrap_or(sa.user.len().min(sb.user.len()))),
    );
    assert_eq!(sa.kernel_per_op.len(), sb.kernel_per_op.len());
    for (i, (x, y)) in sa.kernel_per_op.iter().zip(&sb.kernel_per_op).enumerate() {
        assert!(
            x == y,
            "kernel stores and flushes between marker {i} and the next differ: {} vs {} events",
            x.len(),
            y.len()
        );
    }
}

/// A corrupt or truncated trace is a clear error naming a byte offset.
#[test]
fn corrupt_and_truncated_traces_are_errors() {
    let t = traced_run(FsKind::Ext4, 1, "[[ops]]\nop = \"sync\"\n");
    let dir = tempfile::tempdir().unwrap();
    let bytes = crash_models::trace::encode(&t.trace.header, &t.trace.records, 0);
    for (name, data) in [
        ("truncated", bytes[..bytes.len() / 2].to_vec()),
        ("flipped", {
            let mut b = bytes.clone();
            let i = b.len() / 3;
            b[i] ^= 0x10;
            b
        }),
    ] {
        let p = dir.path().join(name);
        std::fs::write(&p, data).unwrap();
        let e = pmcrash::trace::show(Path::new(&p)).unwrap_err();
        assert!(e.is_corrupt(), "{name}: {e:#}");
        assert!(format!("{e:#}").contains("byte"), "{name}: {e:#}");
    }
}

/// Debugging aid: `A=x.pmtrace B=y.pmtrace cargo test -- --ignored diff_two_traces`.
#[test]
#[ignore]
fn diff_two_traces() {
    let a = pmcrash::trace::read(Path::new(&std::env::var("A").unwrap())).unwrap();
    let b = pmcrash::trace::read(Path::new(&std::env::var("B").unwrap())).unwrap();
    let first = a.records.iter().zip(&b.records).position(|(x, y)| x != y);
    let Some(i) = first else {
        eprintln!(
            "identical over {} records",
            a.records.len().min(b.records.len())
        );
        return;
    };
    eprintln!("first difference at record {i}");
    for (name, t) in [("A", &a), ("B", &b)] {
        for (j, r) in t.records[i.saturating_sub(12)..(i + 6).min(t.records.len())]
            .iter()
            .enumerate()
        {
            eprintln!("{name} {}: {r:x?}", i.saturating_sub(12) + j);
        }
    }
}

/// Debugging aid: `A=x.pmtrace FROM=n TO=m cargo test -- --ignored dump_records`.
#[test]
#[ignore]
fn dump_records() {
    let a = pmcrash::trace::read(Path::new(&std::env::var("A").unwrap())).unwrap();
    let num = |k: &str| std::env::var(k).unwrap().parse::<usize>().unwrap();
    for i in num("FROM")..num("TO").min(a.records.len()) {
        eprintln!("{i}: {:x?}", a.records[i]);
    }
}

/// Deterministic tracing (the default) of every kind of PM traffic: two runs give the
/// same record stream, kernel events and values included.
#[test]
fn deterministic_traces_of_every_kind_of_traffic_are_identical() {
    let workload = Workload::parse(WORKLOAD, "tracer.toml").unwrap();
    let f = factory(FsKind::Ext4);
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let hashes: Vec<_> = ["a", "b"]
        .iter()
        .map(|stem| {
            let t = rt
                .block_on(pmcrash::trace::trace_workload(
                    &f,
                    &workload,
                    dir.path(),
                    stem,
                ))
                .expect("trace");
            assert!(t.deterministic);
            let trace = pmcrash::trace::read(&t.trace).unwrap();
            (pmcrash::trace::record_stream_hash(&trace.records), t.trace)
        })
        .collect();
    assert!(
        hashes[0].0 == hashes[1].0,
        "two deterministic traces differ (A={} B={} cargo test -- --ignored diff_two_traces)",
        hashes[0].1.display(),
        hashes[1].1.display()
    );
}

/// A flush through a mapping that never touched its page: on x86 the flush faults like
/// a read and so maps the page; under TCG it does not fault at all. The agent reads the
/// line first, so the tracer can translate the flush. Here the store goes through one
/// mapping and its flush through another of the same file (the alias case where the
/// flush matters): the flush must name the stored line.
#[test]
fn a_flush_through_an_untouched_mapping_names_the_stored_line() {
    const ALIAS: &str = r#"
[[ops]]
op = "open"
path = "f"
fd = "a"
create = true
[[ops]]
op = "write"
fd = "a"
data = { fill = 65, len = 8192 }
[[ops]]
op = "fsync"
fd = "a"
[[ops]]
op = "mmap"
fd = "a"
map = "m"
len = 8192
[[ops]]
op = "mmap"
fd = "a"
map = "n"
len = 8192
[[ops]]
op = "store"
map = "m"
offset = 4160
data = "through m"
[[ops]]
op = "flush"
map = "n"
offset = 4160
len = 9
insn = "clwb"
[[ops]]
op = "fence"
"#;
    let t = traced_run(FsKind::Ext4, 1, ALIAS);
    assert_eq!(
        t.trace.footer.unresolved_flushes, 0,
        "the flush through the untouched mapping could not be translated"
    );
    let lines = |op: u32, flush: bool| -> BTreeSet<u64> {
        op_records(&t.trace, op)
            .iter()
            .filter_map(|r| match *r {
                Record::Store {
                    offset,
                    privilege: Privilege::User,
                    ..
                } if !flush => Some(offset & !63),
                Record::Flush {
                    offset,
                    privilege: Privilege::User,
                    ..
                } if flush => Some(offset & !63),
                _ => None,
            })
            .collect()
    };
    let stored = lines(5, false);
    assert_eq!(stored.len(), 1, "one line stored through m: {stored:?}");
    assert_eq!(
        lines(6, true),
        stored,
        "the flush through n names that line"
    );
}
