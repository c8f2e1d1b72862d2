//! The oracle: the verdicts of one recovered crash state, decided by one pure
//! function, [`judge`].
//!
//! A recovered state is judged on three things (DESIGN.md, "The oracle"):
//!
//! * the recovery itself ([`corruption`]): the mount works, the tree reads, the
//!   unmount works, fsck finds nothing, the kernel prints no oops, warning or
//!   corruption report;
//! * the promises the ops made before the crash point
//!   ([`crash_models::promise::promises`]): a broken promise's verdict is
//!   [`Verdict::of_broken`] (durability, atomicity, or unsafe-flush-only);
//! * stale data ([`crash_models::history::History::stale`]): every byte of a file
//!   the workload made must be zero or a byte some op wrote at that offset of that
//!   file.
//!
//! The checker observes (mounts, dumps, runs fsck, scans the console) and never
//! judges; the pipeline computes the promises per crash point and never interprets
//! ops; this module only compares. It does no I/O, so every verdict class is unit
//! tested without a VM.

use crate::checker::{MountOutcome, Recovery};
use crash_models::history::History;
use crash_models::promise::{BlockSource, Kept, Promise, Promises};
use crash_models::states::CrashState;
use crash_models::torn::BlockWrite;
use serde::Serialize;

pub use crash_models::verdict::Verdict;

/// One thing wrong with a recovered state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// The class.
    pub verdict: Verdict,
    /// What is wrong, in words.
    pub message: String,
    /// The op whose promise was broken (for promise violations).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub promised_by: Option<usize>,
    /// The file the problem is in, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The file offset of the first wrong byte, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file_offset: Option<u64>,
}

/// The verdict of a list of problems: the worst one, or ok.
pub fn verdict_of(problems: &[Problem]) -> Verdict {
    problems
        .iter()
        .map(|p| p.verdict)
        .min()
        .unwrap_or(Verdict::Ok)
}

/// Why a recovery counts as file-system corruption (empty when it does not).
pub fn corruption(rec: &Recovery) -> Vec<String> {
    let mut why = Vec::new();
    match &rec.mount {
        MountOutcome::Mounted { .. } => {}
        MountOutcome::Failed { message } => why.push(format!("mount failed: {message}")),
        MountOutcome::Panicked { during, console } => {
            let line = console
                .lines()
                .find(|l| l.contains("Kernel panic") || l.contains("BUG") || l.contains("Oops"))
                .unwrap_or("");
            why.push(format!("kernel panic during {during}: {}", line.trim()))
        }
        MountOutcome::Hung { during } => why.push(format!("guest hung during {during}")),
    }
    if let Some(e) = &rec.dump_error {
        why.push(format!("reading the tree failed: {e}"));
    }
    if let Some(e) = &rec.unmount_error {
        why.push(format!("unmount failed: {e}"));
    }
    for e in rec.entries.iter().flatten() {
        if let Some(errno) = e.error {
            why.push(format!(
                "{} cannot be read: {}",
                e.path,
                std::io::Error::from_raw_os_error(errno)
            ));
        }
    }
    if let Some(f) = &rec.fsck {
        if f.problems {
            why.push(format!(
                "fsck exit {}: {}",
                f.code.map_or("signal".into(), |c| c.to_string()),
                f.output.lines().take(3).collect::<Vec<_>>().join("; ")
            ));
        }
    }
    for c in &rec.console {
        why.push(format!("kernel: {}", c.line));
    }
    why
}

/// Block bytes for the byte-level checks: the history's versions, then what the
/// checker read from the recovered image.
struct Blocks<'a> {
    history: &'a History,
    rec: &'a Recovery,
}

impl BlockSource for Blocks<'_> {
    fn block(&self, hash: &str) -> Option<&[u8]> {
        self.history
            .block(hash)
            .or_else(|| self.rec.block_bytes.get(hash).map(|b| b.as_slice()))
    }
}

/// Judge one recovered state against the promises in force at its crash point
/// (`promised`, from [`crash_models::promise::promises`]) and the workload's
/// content history. Problems come sorted worst first, without duplicates.
pub fn judge(promised: &Promises, history: &History, rec: &Recovery) -> Vec<Problem> {
    let mut out: Vec<Problem> = corruption(rec)
        .into_iter()
        .map(|message| Problem {
            verdict: Verdict::FsCorruption,
            message,
            promised_by: None,
            path: None,
            file_offset: None,
        })
        .collect();
    for c in rec.program_checks.iter().filter(|c| !c.passed()) {
        let how = match (c.code, c.timed_out) {
            (_, true) => "timed out".to_owned(),
            (Some(code), false) => format!("exited with {code}"),
            (None, false) => "was killed or could not start".to_owned(),
        };
        out.push(Problem {
            verdict: Verdict::ProgramCheckFailed,
            message: format!("user checker `{}` {how}: {}", c.program, c.output.trim()),
            promised_by: None,
            path: None,
            file_offset: None,
        });
    }
    let Some(entries) = &rec.entries else {
        out.sort_by(|a, b| a.verdict.cmp(&b.verdict).then(a.message.cmp(&b.message)));
        return out;
    };
    let blocks = Blocks { history, rec };
    for s in history.stale(entries, &blocks) {
        out.push(Problem {
            verdict: Verdict::StaleData,
            message: format!(
                "{}: block {} holds bytes never written there (byte {} is {:#04x}){}{}",
                s.path,
                s.block,
                s.file_offset,
                s.byte,
                s.owner
                    .map(|w| format!("; they are {w}"))
                    .unwrap_or_default(),
                rec.block_offsets
                    .get(&s.hash)
                    .map(|o| format!(" (PM offset {o:#x})"))
                    .unwrap_or_default()
            ),
            promised_by: None,
            path: Some(s.path),
            file_offset: Some(s.file_offset),
        });
    }
    for p in &promised.items {
        let Kept::No(why) = p.promise.check(entries, &blocks) else {
            continue;
        };
        let file_offset = match &p.promise {
            Promise::FileData { offset, .. } => Some(*offset),
            Promise::FileZeros { start, .. } => Some(*start),
            _ => None,
        };
        out.push(Problem {
            verdict: Verdict::of_broken(&p.promise, p.class),
            message: format!("{why} (promised by op {}, {})", p.op, p.source),
            promised_by: Some(p.op),
            path: Some(p.promise.path().to_owned()),
            file_offset,
        });
    }
    out.sort_by(|a, b| a.verdict.cmp(&b.verdict).then(a.message.cmp(&b.message)));
    out.dedup();
    out
}

/// Reclassify the states of one crash point that fail only because they tear a
/// kernel block write (the rule: [`crash_models::torn::torn_only`],
/// `docs/torn-writes.md`): such a state's problems become `torn-write` ones, after a
/// first line from `describe` naming the torn write. `states[i]` is the state whose
/// problems are `problems[i]`.
pub fn torn_writes(
    writes: &[BlockWrite],
    states: &[&CrashState],
    problems: &mut [Vec<Problem>],
    describe: impl Fn(&BlockWrite, &CrashState) -> String,
) {
    if writes.is_empty() {
        return;
    }
    let tears: Vec<Option<&BlockWrite>> = states
        .iter()
        .map(|st| writes.iter().find(|w| w.torn_by(st)))
        .collect();
    let classes: Vec<(bool, Vec<Verdict>)> = tears
        .iter()
        .zip(problems.iter())
        .map(|(t, p)| (t.is_some(), p.iter().map(|p| p.verdict).collect()))
        .collect();
    for (i, only) in crash_models::torn::torn_only(&classes)
        .into_iter()
        .enumerate()
    {
        let (true, Some(w)) = (only, tears[i]) else {
            continue;
        };
        let mut out = vec![Problem {
            verdict: Verdict::TornWrite,
            message: describe(w, states[i]),
            promised_by: None,
            path: None,
            file_offset: None,
        }];
        out.extend(problems[i].drain(..).map(|p| Problem {
            verdict: Verdict::TornWrite,
            ..p
        }));
        problems[i] = out;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::console::ConsoleIssue;
    use crate::checker::fsck::FsckOutcome;
    use crash_models::ops::{seeded_bytes, Op, Workload};
    use crash_models::promise::promises;
    use crash_models::protocol::{EntryKind, FsEntry};
    use std::collections::BTreeMap;

    #[test]
    fn states_failing_only_by_a_tear_are_torn_writes() {
        use crash_models::torn::BlockWrite;
        let w = BlockWrite {
            range: 0..128,
            records: 5..21,
            pieces: (0..16)
                .map(|i| (if i < 8 { 0 } else { 64 }, i % 8))
                .collect(),
        };
        let none = CrashState::default();
        let all = CrashState {
            kept: vec![(0, 8), (64, 8)],
        };
        let half = CrashState { kept: vec![(0, 8)] };
        let fs = |m: &str| Problem {
            verdict: Verdict::FsCorruption,
            message: m.into(),
            promised_by: None,
            path: None,
            file_offset: None,
        };
        let mut problems = vec![vec![], vec![], vec![fs("mount failed")]];
        torn_writes(
            std::slice::from_ref(&w),
            &[&none, &all, &half],
            &mut problems,
            |w, st| format!("torn {}/{}", w.kept_by(st), w.pieces.len()),
        );
        assert_eq!(verdict_of(&problems[2]), Verdict::TornWrite);
        assert_eq!(problems[2][0].message, "torn 8/16");
        assert_eq!(problems[2][1].message, "mount failed");
        assert!(problems[..2].iter().all(|p| p.is_empty()));
        // The same failure without the tear: not the tear's.
        let mut problems = vec![vec![fs("mount failed")], vec![], vec![fs("mount failed")]];
        torn_writes(
            std::slice::from_ref(&w),
            &[&none, &all, &half],
            &mut problems,
            |_, _| String::new(),
        );
        assert_eq!(verdict_of(&problems[2]), Verdict::FsCorruption);
    }

    fn ops(src: &str) -> Vec<Op> {
        Workload::parse(src, "t.toml").unwrap().ops
    }

    fn rec(entries: Vec<FsEntry>) -> Recovery {
        Recovery {
            index: 0,
            mount: MountOutcome::Mounted { dax: true },
            entries: Some(entries),
            dump_error: None,
            unmount_error: None,
            fsck: None,
            console: vec![],
            block_bytes: BTreeMap::new(),
            block_offsets: BTreeMap::new(),
            state_id: String::new(),
            read_set: None,
            stores: None,
            restarts: 0,
            millis: 0,
            program_checks: vec![],
        }
    }

    #[test]
    fn a_failed_user_check_is_its_own_verdict_with_the_output() {
        use crate::checker::ProgramCheck;
        let mut r = rec(vec![]);
        let check = |code, timed_out| ProgramCheck {
            program: "./redo-log".into(),
            code,
            timed_out,
            output: "commit set but entry 2 is zero".into(),
        };
        r.program_checks = vec![check(Some(0), false)];
        let none = Promises::default();
        let history = History::default();
        assert!(judge(&none, &history, &r).is_empty());
        for (code, timed_out) in [(Some(3), false), (Some(0), true), (None, false)] {
            r.program_checks = vec![check(code, timed_out)];
            let p = judge(&none, &history, &r);
            assert_eq!(verdict_of(&p), Verdict::ProgramCheckFailed, "{p:?}");
            assert!(p[0].message.contains("entry 2 is zero"), "{}", p[0].message);
        }
        // File-system corruption is still worse.
        r.mount = MountOutcome::Failed {
            message: "bad superblock".into(),
        };
        assert_eq!(
            verdict_of(&judge(&none, &history, &r)),
            Verdict::FsCorruption
        );
    }

    fn file(path: &str, data: &[u8]) -> FsEntry {
        FsEntry {
            ino: 12,
            ..FsEntry::file(path, data)
        }
    }

    fn dir(path: &str) -> FsEntry {
        FsEntry {
            kind: EntryKind::Dir,
            ..file(path, b"")
        }
    }

    /// The verdict of `entries` at the point where `done` ops returned (and
    /// `running` is in progress).
    fn verdict(o: &[Op], done: usize, running: Option<usize>, entries: Vec<FsEntry>) -> Verdict {
        let h = History::new(o, None);
        let p = promises(o, None, done, running);
        verdict_of(&judge(&p, &h, &rec(entries)))
    }

    const OPEN_A: &str = "[[ops]]\nop=\"open\"\npath=\"a\"\nfd=\"a\"\ncreate=true\n";
    const MAPPED: &str = "[[ops]]\nop=\"open\"\npath=\"a\"\nfd=\"a\"\ncreate=true\n[[ops]]\nop=\"ftruncate\"\nfd=\"a\"\nlen=4096\n[[ops]]\nop=\"mmap\"\nfd=\"a\"\nmap=\"m\"\nlen=4096\n";

    fn with_hello(page: usize) -> Vec<u8> {
        let mut v = vec![0u8; page];
        v[..5].copy_from_slice(b"hello");
        v
    }

    #[test]
    fn corruption_of_every_kind() {
        let o = ops(OPEN_A);
        let h = History::new(&o, None);
        let p = promises(&o, None, 1, None);
        let mut r = rec(vec![]);
        r.mount = MountOutcome::Failed {
            message: "EUCLEAN".into(),
        };
        r.entries = None;
        let j = judge(&p, &h, &r);
        assert_eq!(verdict_of(&j), Verdict::FsCorruption);
        assert!(j[0].message.contains("mount failed: EUCLEAN"), "{j:?}");
        let mut r = rec(vec![file("a", b"")]);
        r.fsck = Some(FsckOutcome {
            command: "e2fsck -fn".into(),
            code: Some(4),
            problems: true,
            output: "Inode 12 has a bad extent".into(),
        });
        assert_eq!(verdict_of(&judge(&p, &h, &r)), Verdict::FsCorruption);
        let mut r = rec(vec![file("a", b"")]);
        r.console = vec![ConsoleIssue {
            kind: "ext4-error",
            line: "EXT4-fs error (device pmem0)".into(),
        }];
        assert_eq!(verdict_of(&judge(&p, &h, &r)), Verdict::FsCorruption);
        let mut bad = file("a", b"");
        bad.error = Some(5);
        assert_eq!(verdict(&o, 1, None, vec![bad]), Verdict::FsCorruption);
        let mut r = rec(vec![]);
        r.mount = MountOutcome::Hung {
            during: "mount".into(),
        };
        r.entries = None;
        assert_eq!(verdict_of(&judge(&p, &h, &r)), Verdict::FsCorruption);
    }

    #[test]
    fn stale_data_names_whose_data_it_is() {
        let o = ops("[[ops]]\nop=\"open\"\npath=\"a\"\nfd=\"a\"\ncreate=true\n[[ops]]\nop=\"write\"\nfd=\"a\"\ndata={seed=1,len=8192}\n[[ops]]\nop=\"open\"\npath=\"b\"\nfd=\"b\"\ncreate=true\n[[ops]]\nop=\"write\"\nfd=\"b\"\ndata={seed=2,len=4096}\n");
        let a = seeded_bytes(1, 8192);
        let h = History::new(&o, None);
        let p = promises(&o, None, o.len(), None);
        let j = judge(&p, &h, &rec(vec![file("a", &a), file("b", &a[4096..])]));
        assert_eq!(verdict_of(&j), Verdict::StaleData);
        assert!(j[0].message.contains("a's data (block 1)"), "{j:?}");
        // A block fetched from the image (unknown to the history) is judged too.
        let mut junk = vec![0u8; 4096];
        junk[100] = 7;
        let mut r = rec(vec![file("a", &a), file("b", &junk)]);
        r.block_bytes
            .insert(blake3::hash(&junk).to_hex().to_string(), junk.clone());
        let j = judge(&p, &h, &r);
        assert_eq!(verdict_of(&j), Verdict::StaleData);
        assert_eq!(j[0].file_offset, Some(100));
    }

    #[test]
    fn fsync_row_data_size_holes_xattrs_and_created_name() {
        let o = ops(&format!(
            "{OPEN_A}[[ops]]\nop=\"pwrite\"\nfd=\"a\"\noffset=8192\ndata=\"hello\"\n\
             [[ops]]\nop=\"setxattr\"\npath=\"a\"\nname=\"user.k\"\nvalue=\"v\"\n\
             [[ops]]\nop=\"fsync\"\nfd=\"a\"\n"
        ));
        let mut good = vec![0u8; 8197];
        good[8192..].copy_from_slice(b"hello");
        let mut with_x = file("a", &good);
        with_x.xattrs.insert("user.k".into(), "76".into());
        assert_eq!(verdict(&o, 4, None, vec![with_x.clone()]), Verdict::Ok);
        // Before the fsync returned: anything goes.
        assert_eq!(verdict(&o, 3, Some(3), vec![]), Verdict::Ok);
        // The name, the data, the size, a hole and an xattr each lost.
        assert_eq!(verdict(&o, 4, None, vec![]), Verdict::DurabilityViolation);
        let mut lost = good.clone();
        lost[8193] = 0;
        let mut e = file("a", &lost);
        e.xattrs = with_x.xattrs.clone();
        assert_eq!(verdict(&o, 4, None, vec![e]), Verdict::DurabilityViolation);
        let mut e = file("a", &good[..8195]);
        e.xattrs = with_x.xattrs.clone();
        assert_eq!(verdict(&o, 4, None, vec![e]), Verdict::DurabilityViolation);
        let mut e = with_x.clone();
        e.xattrs.clear();
        assert_eq!(verdict(&o, 4, None, vec![e]), Verdict::DurabilityViolation);
        // Old bytes in a promised hole: written once by this workload, so not
        // stale, but the fsync promised zeros there.
        let o2 = ops(&format!(
            "{OPEN_A}[[ops]]\nop=\"pwrite\"\nfd=\"a\"\noffset=0\ndata=\"hello\"\n\
             [[ops]]\nop=\"fallocate\"\nfd=\"a\"\noffset=0\nlen=4096\nmode=[\"punch-hole\",\"keep-size\"]\n\
             [[ops]]\nop=\"fsync\"\nfd=\"a\"\n"
        ));
        assert_eq!(verdict(&o2, 4, None, vec![file("a", &[0; 5])]), Verdict::Ok);
        let h = History::new(&o2, None);
        let p = promises(&o2, None, 4, None);
        let j = judge(&p, &h, &rec(vec![file("a", b"hello")]));
        assert_eq!(verdict_of(&j), Verdict::DurabilityViolation, "{j:?}");
        assert!(j[0].message.contains("read as zeros"), "{j:?}");
    }

    #[test]
    fn fdatasync_row_and_directory_fsync_row() {
        let o = ops("[[ops]]\nop=\"mkdir\"\npath=\"d\"\n\
             [[ops]]\nop=\"open\"\npath=\"d/a\"\nfd=\"a\"\ncreate=true\n\
             [[ops]]\nop=\"write\"\nfd=\"a\"\ndata=\"hello\"\n\
             [[ops]]\nop=\"fdatasync\"\nfd=\"a\"\n\
             [[ops]]\nop=\"link\"\nfrom=\"d/a\"\nto=\"d/b\"\n\
             [[ops]]\nop=\"open\"\npath=\"d\"\nfd=\"d\"\ndirectory=true\n\
             [[ops]]\nop=\"fsync\"\nfd=\"d\"\n");
        // fdatasync: data and size, not the name.
        assert_eq!(verdict(&o, 4, None, vec![dir("d")]), Verdict::Ok);
        assert_eq!(
            verdict(&o, 4, None, vec![dir("d"), file("d/a", b"he")]),
            Verdict::DurabilityViolation
        );
        // The directory's fsync: both names.
        let both = vec![dir("d"), file("d/a", b"hello"), file("d/b", b"hello")];
        assert_eq!(verdict(&o, 7, None, both.clone()), Verdict::Ok);
        assert_eq!(
            verdict(&o, 7, None, both[..2].to_vec()),
            Verdict::DurabilityViolation
        );
        // An unlink made durable by the directory's fsync.
        let o = ops(&format!(
            "{OPEN_A}[[ops]]\nop=\"fsync\"\nfd=\"a\"\n[[ops]]\nop=\"unlink\"\npath=\"a\"\n\
             [[ops]]\nop=\"open\"\npath=\".\"\nfd=\"r\"\ndirectory=true\n[[ops]]\nop=\"fsync\"\nfd=\"r\"\n"
        ));
        assert_eq!(verdict(&o, 5, None, vec![]), Verdict::Ok);
        assert_eq!(
            verdict(&o, 5, None, vec![file("a", b"")]),
            Verdict::DurabilityViolation
        );
    }

    #[test]
    fn rename_row_is_atomic_even_in_progress() {
        let o = ops(&format!(
            "{OPEN_A}[[ops]]\nop=\"fsync\"\nfd=\"a\"\n[[ops]]\nop=\"rename\"\nfrom=\"a\"\nto=\"b\"\n"
        ));
        let mut b = file("b", b"");
        b.ino = 12;
        assert_eq!(
            verdict(&o, 2, Some(2), vec![file("a", b""), b.clone()]),
            Verdict::AtomicityViolation
        );
        assert_eq!(verdict(&o, 2, Some(2), vec![b]), Verdict::Ok);
        assert_eq!(verdict(&o, 2, Some(2), vec![file("a", b"")]), Verdict::Ok);
    }

    #[test]
    fn flush_rows_map_sync_contract_and_shared_flush_only() {
        let tail = "[[ops]]\nop=\"store\"\nmap=\"m\"\noffset=0\ndata=\"hello\"\n[[ops]]\nop=\"flush\"\nmap=\"m\"\noffset=0\n[[ops]]\nop=\"fence\"\n";
        let shared = ops(&format!("{MAPPED}{tail}"));
        let sync = ops(&format!("{MAPPED}{tail}").replace(
            "map=\"m\"\nlen=4096\n",
            "map=\"m\"\nlen=4096\nkind=\"sync\"\n",
        ));
        let lost = vec![file("a", &[0; 4096])];
        let kept = vec![file("a", &with_hello(4096))];
        assert_eq!(
            verdict(&shared, 6, None, lost.clone()),
            Verdict::UnsafeFlushOnly
        );
        assert_eq!(verdict(&shared, 6, None, kept.clone()), Verdict::Ok);
        assert_eq!(verdict(&shared, 5, None, lost.clone()), Verdict::Ok);
        assert_eq!(verdict(&sync, 6, None, lost), Verdict::DurabilityViolation);
        assert_eq!(verdict(&sync, 6, None, kept), Verdict::Ok);
    }

    #[test]
    fn fmetadatasync_row_unflushed_store_is_the_programs_bug() {
        let o = ops(&format!(
            "{MAPPED}[[ops]]\nop=\"store\"\nmap=\"m\"\noffset=0\ndata=\"kept\"\n\
             [[ops]]\nop=\"flush\"\nmap=\"m\"\noffset=0\n[[ops]]\nop=\"fence\"\n\
             [[ops]]\nop=\"store\"\nmap=\"m\"\noffset=64\ndata=\"lost\"\n\
             [[ops]]\nop=\"fmetadatasync\"\nfd=\"a\"\n"
        ));
        let mut all = vec![0u8; 4096];
        all[..4].copy_from_slice(b"kept");
        all[64..68].copy_from_slice(b"lost");
        assert_eq!(verdict(&o, 8, None, vec![file("a", &all)]), Verdict::Ok);
        let mut half = all.clone();
        half[64..68].fill(0);
        assert_eq!(
            verdict(&o, 8, None, vec![file("a", &half)]),
            Verdict::UnsafeFlushOnly
        );
        let mut none = half.clone();
        none[..4].fill(0);
        assert_eq!(
            verdict(&o, 8, None, vec![file("a", &none)]),
            Verdict::DurabilityViolation
        );
    }

    #[test]
    fn msync_and_sync_rows() {
        let o = ops(&format!(
            "{MAPPED}[[ops]]\nop=\"store\"\nmap=\"m\"\noffset=0\ndata=\"hello\"\n[[ops]]\nop=\"msync\"\nmap=\"m\"\n"
        ));
        assert_eq!(
            verdict(&o, 5, None, vec![file("a", &with_hello(4096))]),
            Verdict::Ok
        );
        assert_eq!(
            verdict(&o, 5, None, vec![file("a", &[0; 4096])]),
            Verdict::DurabilityViolation
        );
        let o = ops(&format!(
            "{OPEN_A}[[ops]]\nop=\"symlink\"\ntarget=\"a\"\npath=\"l\"\n[[ops]]\nop=\"sync\"\n"
        ));
        let mut l = file("l", b"");
        l.kind = EntryKind::Symlink;
        l.target = Some("b".into());
        assert_eq!(
            verdict(&o, 3, None, vec![file("a", b""), l.clone()]),
            Verdict::DurabilityViolation
        );
        l.target = Some("a".into());
        assert_eq!(verdict(&o, 3, None, vec![file("a", b""), l]), Verdict::Ok);
    }

    #[test]
    fn failing_ops_and_huge_sizes_are_data() {
        use crash_models::protocol::OpResult;
        let o = ops(&format!(
            "{OPEN_A}[[ops]]\nop=\"ftruncate\"\nfd=\"a\"\nlen=1099511627776\n\
             [[ops]]\nop=\"ftruncate\"\nfd=\"a\"\nlen=4611686018427387904\n[[ops]]\nop=\"fsync\"\nfd=\"a\"\n"
        ));
        let r = |index, errno: Option<i32>| OpResult {
            index,
            ret: if errno.is_some() { -1 } else { 0 },
            errno,
            detail: Default::default(),
            micros: 0,
        };
        let results = [r(0, None), r(1, None), r(2, Some(27)), r(3, None)];
        let h = History::new(&o, Some(&results));
        let p = promises(&o, Some(&results), 4, None);
        let mut e = file("a", b"");
        e.size = 1 << 40;
        assert_eq!(
            verdict_of(&judge(&p, &h, &rec(vec![e.clone()]))),
            Verdict::Ok
        );
        e.size = 1 << 39;
        assert_eq!(
            verdict_of(&judge(&p, &h, &rec(vec![e]))),
            Verdict::DurabilityViolation
        );
    }
}
