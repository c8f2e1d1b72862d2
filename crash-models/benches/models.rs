//! Throughput of the persistency model: records replayed, crash states enumerated and
//! crash images materialised per second.

use crash_models::delta::ImageBuilder;
use crash_models::model::{ModelConfig, Replayer};
use crash_models::states::{CrashStates, StateConfig, Strategy};
use crash_models::trace::{FenceKind, FlushKind, MarkerKind, Privilege, Record};
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use std::os::unix::fs::FileExt;

/// A trace shaped like a DAX file system under a small workload: journal-like
/// runs of 8-byte stores over a few lines each flushed with clwb and fenced, data
/// copies with non-temporal stores fenced per 4 KiB, and op markers.
pub fn synthetic(records: usize, seed: u64, footprint: u64) -> Vec<Record> {
    let mut out = Vec::with_capacity(records + 16);
    let mut x = seed | 1;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let st = |offset, value, nt, privilege| Record::Store {
        offset,
        size: 8,
        value,
        non_temporal: nt,
        privilege,
        vcpu: 0,
        pc: 0,
    };
    let mut op = 0;
    while out.len() < records {
        out.push(Record::Marker {
            marker: MarkerKind::OpBegin,
            op,
            a: 0,
            b: 0,
            vcpu: 0,
        });
        match rnd() % 3 {
            0 | 1 => {
                // Metadata update: 4 lines, 1-8 stores each, clwb each, sfence.
                for _ in 0..4 {
                    let line = (rnd() % (footprint / 64)) * 64;
                    for w in 0..(1 + rnd() % 8) {
                        out.push(st(line + w * 8, rnd(), false, Privilege::Kernel));
                    }
                    out.push(Record::Flush {
                        offset: line,
                        flush: FlushKind::Clwb,
                        privilege: Privilege::Kernel,
                        vcpu: 0,
                        pc: 0,
                    });
                }
                out.push(Record::Fence {
                    fence: FenceKind::Sfence,
                    privilege: Privilege::Kernel,
                    vcpu: 0,
                    pc: 0,
                });
            }
            _ => {
                // Data copy: one 4 KiB block of non-temporal stores, then a fence.
                let block = (rnd() % (footprint / 4096)) * 4096;
                for w in 0..512 {
                    out.push(st(block + w * 8, rnd(), true, Privilege::Kernel));
                }
                out.push(Record::Fence {
                    fence: FenceKind::Sfence,
                    privilege: Privilege::Kernel,
                    vcpu: 0,
                    pc: 0,
                });
            }
        }
        out.push(Record::Marker {
            marker: MarkerKind::OpEnd,
            op,
            a: 0,
            b: 0,
            vcpu: 0,
        });
        op += 1;
    }
    out.truncate(records);
    out
}

/// A 10k-store trace whose last 64 lines are stored but not yet fenced: the crash
/// point at its end has at least 64 in-flight lines.
fn ten_k_stores() -> Vec<Record> {
    let mut t: Vec<Record> = synthetic(12_000, 7, 1 << 20)
        .into_iter()
        .filter(|r| !matches!(r, Record::Marker { .. }))
        .collect();
    let stores = t
        .iter()
        .filter(|r| matches!(r, Record::Store { .. }))
        .count();
    t.truncate(t.len() - stores.saturating_sub(10_000 - 64 * 4).min(t.len()));
    for l in 0..64u64 {
        for w in 0..4 {
            t.push(Record::Store {
                offset: (1 << 20) + l * 4096 + w * 8,
                size: 8,
                value: l,
                non_temporal: false,
                privilege: Privilege::User,
                vcpu: 0,
                pc: 0,
            });
        }
    }
    t
}

fn bench(c: &mut Criterion) {
    let trace = synthetic(1_000_000, 1, 64 << 20);
    let mut g = c.benchmark_group("replay");
    g.throughput(Throughput::Elements(trace.len() as u64));
    g.bench_function("records", |b| {
        b.iter(|| {
            let mut r = Replayer::new(ModelConfig::default());
            for rec in &trace {
                r.apply(rec);
            }
            black_box(r.stats())
        })
    });
    g.finish();

    let t = ten_k_stores();
    let mut r = Replayer::new(ModelConfig::default());
    for rec in &t {
        r.apply(rec);
    }
    let cfg = StateConfig {
        strategies: vec![Strategy::EachLine],
        ..StateConfig::default()
    };
    let builder = ImageBuilder::new(&r);
    let n_states = CrashStates::new(builder.in_flight(), &cfg).count() as u64;
    assert!(n_states >= 2 + 2 * 64, "{n_states} states");

    let mut g = c.benchmark_group("states");
    g.throughput(Throughput::Elements(n_states));
    g.bench_function("each-line-64-lines", |b| {
        b.iter(|| {
            let lines = r.in_flight();
            black_box(
                CrashStates::new(&lines, &cfg)
                    .map(|s| s.kept.len())
                    .sum::<usize>(),
            )
        })
    });
    g.finish();

    let base = vec![0u8; 64 << 20];
    let file = tempfile::tempfile().expect("temp file");
    file.write_all_at(&base, 0).expect("write base");
    let states: Vec<_> = CrashStates::new(builder.in_flight(), &cfg).collect();
    let sizes: Vec<usize> = states.iter().map(|s| builder.build(s).len()).collect();
    eprintln!(
        "10k-store trace: {} durable lines, {} in-flight lines, {} states, image delta {}..{} bytes in {} ranges",
        r.durable().lines(),
        r.in_flight_count(),
        states.len(),
        sizes.iter().min().unwrap(),
        sizes.iter().max().unwrap(),
        builder.build(&states[0]).ranges().len()
    );
    let mut g = c.benchmark_group("images");
    g.throughput(Throughput::Elements(n_states));
    g.bench_function("build-hash", |b| {
        b.iter(|| {
            for s in &states {
                black_box(builder.build(s).id());
            }
        })
    });
    g.bench_function("id-only", |b| {
        b.iter(|| {
            for s in &states {
                black_box(builder.id(s));
            }
        })
    });
    let images: Vec<_> = states.iter().map(|s| builder.build(s)).collect();
    images[0].apply(&file).unwrap();
    g.bench_function("switch-64MiB-file", |b| {
        b.iter(|| {
            for w in images.windows(2) {
                w[1].switch(&w[0], &file, &base).unwrap();
            }
            images[0]
                .switch(images.last().unwrap(), &file, &base)
                .unwrap();
        })
    });
    images[0].undo(&file, &base).unwrap();
    g.bench_function("build-hash-apply-undo-64MiB-file", |b| {
        b.iter(|| {
            for s in &states {
                let img = builder.build(s);
                img.apply(&file).unwrap();
                img.undo(&file, &base).unwrap();
            }
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10).measurement_time(std::time::Duration::from_secs(3)).warm_up_time(std::time::Duration::from_secs(1));
    targets = bench
}
criterion_main!(benches);
