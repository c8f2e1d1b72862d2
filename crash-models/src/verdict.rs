//! Verdicts: what a crash state earned, and which verdict a broken promise gives.
//!
//! The oracle (in the harness) decides, per recovered state, which problems it has;
//! this module owns the classes and the one mapping from a broken promise to its
//! class ([`Verdict::of_broken`]), so the mapping is written once and tested without
//! a VM.

use crate::promise::{Class, Promise};
use serde::{Deserialize, Serialize};
use std::fmt;

/// What a crash state earned. Ordered from the worst: a state with several problems
/// gets the first of them as its verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// The mount failed, fsck found problems, or the kernel complained.
    FsCorruption,
    /// The state fails only because a kernel block write to PM is partly persisted
    /// (fsdax gives no sector atomicity; see `docs/torn-writes.md`): the file system
    /// does not tolerate a torn write of one of its blocks.
    TornWrite,
    /// A file shows bytes never written to it.
    StaleData,
    /// A rename was not atomic.
    AtomicityViolation,
    /// A contract promise was broken: a file-system bug.
    DurabilityViolation,
    /// A workload's user checker (`[[checkers]]`) found the program's data
    /// inconsistent: the program's (or the file system's) bug, in the program's words.
    ProgramCheckFailed,
    /// Data protected only by the program's own flushes on a plain shared mapping (or
    /// stores it never flushed before `fmetadatasync`) was lost: the program's bug.
    UnsafeFlushOnly,
    /// Nothing wrong.
    Ok,
}

impl Verdict {
    /// Every verdict, worst first.
    pub const ALL: [Verdict; 8] = [
        Verdict::FsCorruption,
        Verdict::TornWrite,
        Verdict::StaleData,
        Verdict::AtomicityViolation,
        Verdict::DurabilityViolation,
        Verdict::ProgramCheckFailed,
        Verdict::UnsafeFlushOnly,
        Verdict::Ok,
    ];

    /// The name used in reports, workloads' `[expect]` and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Ok => "ok",
            Verdict::FsCorruption => "fs-corruption",
            Verdict::TornWrite => "torn-write",
            Verdict::DurabilityViolation => "durability-violation",
            Verdict::AtomicityViolation => "atomicity-violation",
            Verdict::StaleData => "stale-data",
            Verdict::UnsafeFlushOnly => "unsafe-flush-only",
            Verdict::ProgramCheckFailed => "program-check-failed",
        }
    }

    /// The verdict a broken promise gives: a rename that was not atomic is an
    /// atomicity violation whoever promised it; otherwise the class decides.
    pub fn of_broken(promise: &Promise, class: Class) -> Verdict {
        match (promise, class) {
            (Promise::RenameAtomic { .. }, _) => Verdict::AtomicityViolation,
            (_, Class::UnsafeFlushOnly) => Verdict::UnsafeFlushOnly,
            (_, Class::Contract) => Verdict::DurabilityViolation,
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Verdict {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Verdict::ALL
            .into_iter()
            .find(|v| v.name() == s)
            .ok_or_else(|| {
                format!("unknown verdict `{s}`: expected ok, fs-corruption, torn-write, durability-violation, atomicity-violation, stale-data, program-check-failed or unsafe-flush-only")
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_order_is_worst_first() {
        for v in Verdict::ALL {
            assert_eq!(v.name().parse::<Verdict>().unwrap(), v);
            assert_eq!(
                serde_json::to_value(v).unwrap(),
                serde_json::Value::String(v.name().into())
            );
        }
        assert!("bogus".parse::<Verdict>().is_err());
        let mut sorted = Verdict::ALL;
        sorted.sort();
        assert_eq!(sorted, Verdict::ALL);
    }

    #[test]
    fn broken_promises_map_to_their_class() {
        let rename = Promise::RenameAtomic {
            from: "a".into(),
            to: "b".into(),
        };
        let exists = Promise::Exists { path: "a".into() };
        assert_eq!(
            Verdict::of_broken(&rename, Class::Contract),
            Verdict::AtomicityViolation
        );
        assert_eq!(
            Verdict::of_broken(&exists, Class::Contract),
            Verdict::DurabilityViolation
        );
        assert_eq!(
            Verdict::of_broken(&exists, Class::UnsafeFlushOnly),
            Verdict::UnsafeFlushOnly
        );
    }
}
