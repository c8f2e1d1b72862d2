//! The pure core of pmcrash.
//!
//! `crash-models` is sans-I/O: it takes bytes and returns values. It owns the op
//! language ([`ops`]), the harness/agent protocol ([`protocol`]), and (in later
//! modules) the trace format, the persistency models, crash-point and crash-state
//! enumeration and image deltas. The guest agent and the harness both depend on it,
//! so every type that crosses the VM boundary is defined once, here.
#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod coverage;
pub mod delta;
pub mod fsmodel;
pub mod generate;
pub mod history;
pub mod model;
pub mod ops;
pub mod points;
pub mod programs;
pub mod promise;
pub mod protocol;
pub mod prune;
pub mod readset;
pub mod states;
pub mod torn;
pub mod trace;
pub mod verdict;
