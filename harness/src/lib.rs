//! pmcrash, the host side: provisioning, guests, images, runs.
//!
//! See `ARCHITECTURE.md` at the repository root for the map. The pure parts (op
//! language, trace format, persistency models) live in `crash-models`; this crate does
//! the I/O around them.
#![warn(missing_docs)]

pub mod bundle;
pub mod cache;
pub mod checker;
pub mod elf;
pub mod findings;
pub mod fuzz;
pub mod guest;
pub mod html;
pub mod image;
pub mod interrupt;
pub mod labels;
pub mod memory;
pub mod minimize;
pub mod oracle;
pub mod pipeline;
pub mod programs;
pub mod progress;
pub mod report;
pub mod repro;
pub mod run;
mod schedule;
pub mod scratch;
pub mod setup;
pub mod symbols;
pub mod sys;
pub mod testing;
pub mod trace;
pub mod vm;
pub mod workloads;
