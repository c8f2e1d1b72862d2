//! The crash states `x86-adr-nt` adds to `x86-adr` on a saved trace: fence points
//! (`fence`), each-line states with the `clflush` orderings, as the pipeline makes
//! them; states and distinct images per model.
//!
//! `cargo run --release -p crash-models --example nt_states -- run.pmtrace [FIRST_OP]`
//! (points only from op FIRST_OP on, as `crash_from_op`).

use crash_models::delta::ImageBuilder;
use crash_models::model::{Model, ModelConfig, Replayer};
use crash_models::points::{CrashPoints, PointConfig, Policy};
use crash_models::states::{CrashStates, StateConfig};
use std::collections::HashSet;

fn main() {
    let mut args = std::env::args().skip(1);
    let path = args.next().expect("usage: nt_states TRACE [FIRST_OP]");
    let first_op: u32 = args.next().map_or(0, |a| a.parse().expect("FIRST_OP"));
    let bytes = std::fs::read(&path).expect("read the trace");
    let trace = crash_models::trace::decode(&bytes).expect("decode the trace");
    for model in [Model::X86Adr, Model::X86AdrNt] {
        let cfg = ModelConfig::new(model, trace.header.line_size).expect("line size");
        let mut points = CrashPoints::new(
            trace.records.iter().copied(),
            Replayer::new(cfg),
            PointConfig {
                policy: Policy::Fence { all: false },
                ops: Some(first_op..u32::MAX),
                end_of_trace: true,
            },
        );
        let (mut n_points, mut n_states, mut lane_points) = (0, 0, 0);
        let mut images = HashSet::new();
        while let Some(p) = points.next() {
            n_points += 1;
            let r = points.replayer();
            let b = ImageBuilder::new(r);
            let states = CrashStates::new(b.in_flight(), &StateConfig::default())
                .with_orderings(r.orderings());
            if states.lines().iter().any(|l| l.0 & 1 == 1) {
                lane_points += 1;
            }
            for s in states {
                n_states += 1;
                images.insert((p.applied, b.id(&s)));
            }
        }
        println!(
            "{model}: {n_points} fence points, {lane_points} with NT lanes, {n_states} states, {} distinct images (per point)",
            images.len()
        );
    }
}
