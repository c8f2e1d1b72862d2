//! `pmcrash fuzz`: campaigns of generated workloads aimed at sync orderings, with
//! findings deduplicated by signature, state that survives kill -9, and shards.
//!
//! - [`gen`]: the workload stream, a pure function of `(seed, generator, index)`;
//! - [`campaign`]: the campaign directory (state, corpus, findings by signature), the
//!   loop that runs the stream through a [`crate::pipeline::Pipeline`], and `merge`.

pub mod campaign;
pub mod gen;
