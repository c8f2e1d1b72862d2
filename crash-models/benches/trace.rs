//! Trace codec throughput: decoding must keep up with ≥ 20 M records/s so that reading
//! a trace is never the slow part of a run.

use crash_models::trace::{
    decode, decode_iter, encode, FenceKind, FlushKind, Header, Privilege, Record, RECORD_BYTES,
};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn sample(n: usize) -> Vec<Record> {
    // A mix shaped like a real trace: mostly stores, some flushes and fences.
    (0..n as u64)
        .map(|i| match i % 16 {
            0..=11 => Record::Store {
                offset: (i * 8) % (64 << 20),
                size: 8,
                value: i.wrapping_mul(0x9e37_79b9_7f4a_7c15),
                non_temporal: i % 3 == 0,
                privilege: Privilege::Kernel,
                vcpu: 0,
                pc: 0xffff_ffff_8100_0000 + i,
            },
            12..=14 => Record::Flush {
                offset: i * 64 % (64 << 20),
                flush: FlushKind::Clwb,
                privilege: Privilege::User,
                vcpu: 0,
                pc: 0x40_0000 + i,
            },
            _ => Record::Fence {
                fence: FenceKind::Sfence,
                privilege: Privilege::User,
                vcpu: 0,
                pc: 0x40_0000 + i,
            },
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let n = 1_000_000;
    let recs = sample(n);
    let header = Header {
        pm_base: 0x1_0000_0000,
        pm_size: 64 << 20,
        line_size: 64,
        flags: 0,
        kernel: "bench".into(),
        workload_hash: [0; 32],
        qemu_version: "10.0.2".into(),
    };
    let bytes = encode(&header, &recs, 0);
    eprintln!(
        "trace of {n} records: {} bytes, {:.2} bytes/record (record {RECORD_BYTES} B + chunk and header overhead)",
        bytes.len(),
        bytes.len() as f64 / n as f64
    );
    let mut g = c.benchmark_group("trace");
    g.throughput(Throughput::Elements(n as u64));
    g.sample_size(20);
    g.bench_function("decode", |b| {
        b.iter(|| decode(&bytes).unwrap().records.len())
    });
    // The streaming decoder, consumed without collecting (as the persistency model
    // can): same checks, no output Vec.
    g.bench_function("decode_iter", |b| {
        b.iter(|| {
            decode_iter(&bytes)
                .unwrap()
                .map(|r| match r.unwrap() {
                    Record::Store { .. } => 1u64,
                    _ => 0,
                })
                .sum::<u64>()
        })
    });
    g.bench_function("encode", |b| b.iter(|| encode(&header, &recs, 0).len()));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
