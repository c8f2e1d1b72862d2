//! One hand-written trace per persistency rule, with the replayer's view after every
//! record and the distinct crash images at the end, kept as insta snapshots.

use crash_models::delta::ImageBuilder;
use crash_models::model::{Model, ModelConfig, Replayer};
use crash_models::states::{CrashStates, StateConfig, Strategy};
use crash_models::trace::{FenceKind, FlushKind, Privilege, Record};
use serde::Serialize;
use std::collections::BTreeSet;

fn st(offset: u64, size: u8, value: u64) -> Record {
    Record::Store {
        offset,
        size,
        value,
        non_temporal: false,
        privilege: Privilege::User,
        vcpu: 0,
        pc: 0,
    }
}
fn nt(offset: u64, value: u64) -> Record {
    Record::Store {
        offset,
        size: 8,
        value,
        non_temporal: true,
        privilege: Privilege::User,
        vcpu: 0,
        pc: 0,
    }
}
fn flush(offset: u64, flush: FlushKind) -> Record {
    Record::Flush {
        offset,
        flush,
        privilege: Privilege::User,
        vcpu: 0,
        pc: 0,
    }
}
fn fence_on(vcpu: u16) -> Record {
    Record::Fence {
        fence: FenceKind::Sfence,
        privilege: Privilege::User,
        vcpu,
        pc: 0,
    }
}
fn flush_on(offset: u64, vcpu: u16) -> Record {
    Record::Flush {
        offset,
        flush: FlushKind::Clwb,
        privilege: Privilege::Kernel,
        vcpu,
        pc: 0,
    }
}

#[derive(Serialize)]
struct Step {
    record: String,
    /// "line@OFFSET: N queued, M flushed"
    in_flight: Vec<String>,
    /// Durable bytes, as "OFFSET: hex".
    durable: Vec<String>,
}

#[derive(Serialize)]
struct Outcome {
    steps: Vec<Step>,
    /// Distinct images at the end under none/all/each-line/torn.
    final_images: Vec<Vec<String>>,
}

fn show(img: &crash_models::delta::CrashImage) -> Vec<String> {
    img.ranges()
        .map(|(off, b)| {
            let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
            format!("{off}: {hex}")
        })
        .collect()
}

fn describe(trace: &[Record], model: Model) -> Outcome {
    let mut r = Replayer::new(ModelConfig::new(model, 64).unwrap());
    let mut steps = Vec::new();
    for rec in trace {
        r.apply(rec);
        let b = ImageBuilder::new(&r);
        let record = match rec {
            Record::Store {
                offset,
                size,
                value,
                non_temporal,
                vcpu,
                ..
            } => format!(
                "{}store {size}@{offset} = {value:#x} (cpu {vcpu})",
                if *non_temporal { "nt-" } else { "" }
            ),
            Record::Flush {
                offset,
                flush,
                vcpu,
                ..
            } => format!("{flush:?} {offset} (cpu {vcpu})"),
            Record::Fence { fence, vcpu, .. } => format!("{fence:?} (cpu {vcpu})"),
            Record::Marker { marker, op, .. } => format!("{marker:?} {op}"),
        };
        steps.push(Step {
            record,
            in_flight: b
                .in_flight()
                .iter()
                .map(|l| {
                    format!(
                        "line@{}: {} queued, {} flushed",
                        l.line_offset,
                        l.stores.len(),
                        l.flushed_prefix_len
                    )
                })
                .collect(),
            durable: show(&b.build(&Default::default())),
        });
    }
    let b = ImageBuilder::new(&r);
    let cfg = StateConfig {
        strategies: vec![
            Strategy::None,
            Strategy::All,
            Strategy::EachLine,
            Strategy::Torn,
        ],
        ..StateConfig::default()
    };
    let images: BTreeSet<Vec<String>> = CrashStates::new(b.in_flight(), &cfg)
        .with_orderings(r.orderings())
        .map(|s| show(&b.build(&s)))
        .collect();
    Outcome {
        steps,
        final_images: images.into_iter().collect(),
    }
}

/// clflush orders the vCPU's younger stores after it, fence or not (SDM, Px86): after
/// `st x; clflush x; st y`, no crash keeps `y` without `x`. clwb does not: there `y`
/// may persist alone. A store of another vCPU is not ordered.
#[test]
fn clflush_orders_younger_stores_without_a_fence() {
    let trace = [
        st(0, 8, 0x11),
        flush(0, FlushKind::Clflush),
        st(64, 8, 0x22),
    ];
    let o = describe(&trace, Model::X86Adr);
    let y_alone = vec!["64: 2200000000000000".to_string()];
    assert_eq!(o.final_images.len(), 3, "{:?}", o.final_images);
    assert!(!o.final_images.contains(&y_alone), "{:?}", o.final_images);
    let clwb = [st(0, 8, 0x11), flush(0, FlushKind::Clwb), st(64, 8, 0x22)];
    let o = describe(&clwb, Model::X86Adr);
    assert_eq!(o.final_images.len(), 4, "{:?}", o.final_images);
    assert!(o.final_images.contains(&y_alone), "{:?}", o.final_images);
    let mut other_cpu = trace;
    if let Record::Store { vcpu, .. } = &mut other_cpu[2] {
        *vcpu = 1;
    }
    assert_eq!(describe(&other_cpu, Model::X86Adr).final_images.len(), 4);
}

/// A fence on another vCPU that makes a store younger than a clflush durable makes
/// the clflushed line durable too.
#[test]
fn clflush_is_forced_durable_by_a_younger_store_fenced_elsewhere() {
    let trace = [
        st(0, 8, 0x11),
        flush(0, FlushKind::Clflush),
        st(64, 8, 0x22),
        flush_on(64, 1),
        fence_on(1),
    ];
    let o = describe(&trace, Model::X86Adr);
    assert!(
        o.steps[4].in_flight.is_empty(),
        "{:?}",
        o.steps[4].in_flight
    );
}

/// clflush is durable at the next fence, like clwb: before the fence a crash may
/// still lose it; after it, only the store that came after the clflush is in flight.
#[test]
fn clflush_is_durable_at_the_next_fence() {
    let trace = [
        st(0, 8, 0x11),
        flush(0, FlushKind::Clflush),
        st(8, 8, 0x22),
        fence_on(0),
    ];
    let o = describe(&trace, Model::X86Adr);
    assert_eq!(o.steps[1].in_flight, ["line@0: 1 queued, 1 flushed"]);
    assert_eq!(o.steps[3].in_flight, ["line@0: 1 queued, 0 flushed"]);
    assert_eq!(o.steps[3].durable, ["0: 1100000000000000"]);
    insta::assert_json_snapshot!(o);
}

/// A non-temporal store flushes its line up to itself: at the fence the older cached
/// store and the NT store are durable, and the later cached store to the same bytes
/// stays in flight behind it, so it can never land before it.
#[test]
fn non_temporal_store_is_durable_at_the_fence_and_ordered_in_its_line() {
    let trace = [
        st(0, 8, 0xaa),
        nt(8, 0xbb),
        st(8, 8, 0xcc),
        nt(64, 0xdd),
        fence_on(0),
    ];
    let o = describe(&trace, Model::X86Adr);
    assert_eq!(
        o.steps[3].in_flight,
        [
            "line@0: 3 queued, 2 flushed",
            "line@64: 1 queued, 1 flushed"
        ]
    );
    assert!(o.steps[3].durable.is_empty());
    assert_eq!(o.steps[4].in_flight, ["line@0: 1 queued, 0 flushed"]);
    assert_eq!(
        o.steps[4].durable,
        [
            "0: aa00000000000000bb00000000000000",
            "64: dd00000000000000"
        ]
    );
    // Every crash keeps what the fence made durable; 0xcc may or may not land.
    assert_eq!(o.final_images.len(), 2);
    assert!(o
        .final_images
        .iter()
        .all(|img| img[0].starts_with("0: aa00000000000000") && img[1] == "64: dd00000000000000"));
    insta::assert_json_snapshot!(o);
}

/// A store after the clwb but before the fence is not covered by that clwb.
#[test]
fn store_between_clwb_and_fence_stays_in_flight() {
    let trace = [
        st(0, 8, 0x01),
        flush(0, FlushKind::Clwb),
        st(0, 8, 0x02),
        fence_on(0),
        flush(0, FlushKind::Clflushopt),
        fence_on(0),
    ];
    let o = describe(&trace, Model::X86Adr);
    assert_eq!(o.steps[3].in_flight, ["line@0: 1 queued, 0 flushed"]);
    assert_eq!(o.steps[3].durable, ["0: 0100000000000000"]);
    assert!(o.steps[5].in_flight.is_empty());
    assert_eq!(o.steps[5].durable, ["0: 0200000000000000"]);
    insta::assert_json_snapshot!(o);
}

/// A fence orders only its own vCPU's flushes.
#[test]
fn fence_on_another_cpu_does_not_persist() {
    let trace = [st(0, 8, 0x5), flush_on(0, 1), fence_on(0), fence_on(1)];
    let o = describe(&trace, Model::X86Adr);
    assert_eq!(o.steps[2].in_flight, ["line@0: 1 queued, 1 flushed"]);
    assert!(o.steps[3].in_flight.is_empty());
    insta::assert_json_snapshot!(o);
}

/// An unaligned store straddling two words can tear at the word boundary.
#[test]
fn unaligned_store_tears_at_8_bytes() {
    let trace = [st(4, 8, 0x0807_0605_0403_0201)];
    let o = describe(&trace, Model::X86Adr);
    assert_eq!(o.steps[0].in_flight, ["line@0: 2 queued, 0 flushed"]);
    assert_eq!(
        o.final_images,
        vec![
            vec![],
            vec!["4: 01020304".to_owned()],
            vec!["4: 0102030405060708".to_owned()],
        ]
    );
    insta::assert_json_snapshot!(o);
}

/// eADR: every store is durable at once; nothing is ever in flight.
#[test]
fn eadr_persists_every_store_at_once() {
    let trace = [st(0, 8, 0x01), st(64, 4, 0x02), nt(128, 0x3), fence_on(0)];
    let o = describe(&trace, Model::X86Eadr);
    assert!(o.steps.iter().all(|s| s.in_flight.is_empty()));
    assert_eq!(o.steps[1].durable, ["0: 0100000000000000", "64: 02000000"]);
    assert_eq!(o.final_images.len(), 1);
    insta::assert_json_snapshot!(o);
}

/// `x86-adr-nt`: before the fence, an NT store may persist without the older cached
/// store of its line (the eviction's write-back and the WC write are unordered); a
/// later cached store to the line still never persists without it. Under `x86-adr`
/// that state does not exist.
#[test]
fn adr_nt_lets_an_nt_store_persist_before_an_older_cached_store() {
    let trace = [st(0, 8, 0xaa), nt(8, 0xbb), st(16, 8, 0xcc), nt(64, 0xdd)];
    let nt_alone = vec!["8: bb00000000000000".to_owned()];
    let adr = describe(&trace, Model::X86Adr);
    assert!(
        !adr.final_images.contains(&nt_alone),
        "{:?}",
        adr.final_images
    );
    let o = describe(&trace, Model::X86AdrNt);
    assert!(o.final_images.contains(&nt_alone), "{:?}", o.final_images);
    // The queues are those of x86-adr: only the crash states differ.
    assert_eq!(
        o.steps.iter().map(|s| &s.in_flight).collect::<Vec<_>>(),
        adr.steps.iter().map(|s| &s.in_flight).collect::<Vec<_>>()
    );
    // 0xcc never lands without 0xbb before it.
    assert!(o
        .final_images
        .iter()
        .all(|img| !img.iter().any(|r| r.contains("cc")) || img[0].contains("bb")));
    assert!(o.final_images.len() > adr.final_images.len());
    insta::assert_json_snapshot!(o);
}
