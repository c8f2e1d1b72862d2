//! Replays a synthetic 10 M-record trace and prints the peak resident memory
//! (VmHWM), to check that the replayer's memory grows with the trace's footprint.
//!
//! `cargo run --release -p crash-models --example peak_mem [RECORDS]`

use crash_models::model::{ModelConfig, Replayer};
use crash_models::trace::{FenceKind, FlushKind, Privilege, Record};

fn vm(key: &str) -> String {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(key))
        .map(|l| l.trim().to_owned())
        .unwrap_or_else(|| format!("{key} unavailable"))
}

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(10_000_000);
    let before = vm("VmHWM");
    // Records are generated on the fly, as a streaming trace reader would hand them
    // over, so the peak is the replayer's own.
    let mut r = Replayer::new(ModelConfig::default());
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let footprint: u64 = 64 << 20;
    let mut i = 0;
    let start = std::time::Instant::now();
    while i < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let line = (x % (footprint / 64)) * 64;
        for w in 0..6 {
            r.apply(&Record::Store {
                offset: line + w * 8,
                size: 8,
                value: x,
                non_temporal: false,
                privilege: Privilege::Kernel,
                vcpu: 0,
                pc: 0,
            });
        }
        r.apply(&Record::Flush {
            offset: line,
            flush: FlushKind::Clwb,
            privilege: Privilege::Kernel,
            vcpu: 0,
            pc: 0,
        });
        r.apply(&Record::Fence {
            fence: FenceKind::Sfence,
            privilege: Privilege::Kernel,
            vcpu: 0,
            pc: 0,
        });
        i += 8;
    }
    let secs = start.elapsed().as_secs_f64();
    println!("records: {}", r.stats().records);
    println!(
        "durable lines: {} ({} KiB of line data)",
        r.durable().lines(),
        r.durable().lines() * 64 / 1024
    );
    println!(
        "replay: {:.1} M records/s",
        r.stats().records as f64 / secs / 1e6
    );
    println!("before: {before}");
    println!("after:  {}", vm("VmHWM"));
}
