//! `pmcrash trace`: reading, summarising and replaying tracer output.
//!
//! The tracer plugin ([`TRACER_PLUGIN`]) writes the trace; these functions read it
//! back. [`show`] groups the records by the agent's op markers; [`replay_onto`] applies
//! every store to a base image, which must reproduce the final image byte for byte
//! (the tracer's acceptance test); [`marker_problems`] checks the marker discipline.

use crate::cache::FileError;
use crate::guest::GuestError;
use crate::image::ImageError;
use crash_models::trace::{
    decode, Footer, Header, MarkerKind, Privilege, Record, Trace, TraceError,
};
use serde::Serialize;
use std::fmt;
use std::path::{Path, PathBuf};

/// The tracer plugin, built by `harness/build.rs` next to the guest agent.
pub const TRACER_PLUGIN: &str = concat!(env!("OUT_DIR"), "/libpmcrash_tracer.so");

/// Why reading or making a trace failed.
#[derive(Debug, thiserror::Error)]
pub enum TracingError {
    /// The trace file could not be read.
    #[error("reading {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The trace file is corrupt or truncated; the source names the byte offset.
    #[error("reading trace {}: {source}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong, and where.
        #[source]
        source: TraceError,
    },
    /// The traced guest failed.
    #[error(transparent)]
    Guest(#[from] GuestError),
    /// The run image could not be made or copied.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// A file could not be written or published.
    #[error(transparent)]
    File(#[from] FileError),
    /// The tracer's coverage file is unusable.
    #[error("coverage {}: {message}", path.display())]
    Coverage {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The tracer's snapshot stream is unusable.
    #[error("snapshots {}: {message}", path.display())]
    Snapshots {
        /// The file.
        path: PathBuf,
        /// What is wrong, and where.
        message: String,
    },
    /// No ground-truth snapshot was taken at the record asked for.
    #[error(
        "no snapshot after {applied} records (snapshots are taken before every fence and \
         marker of the run); the nearest: {}",
        nearest.join(", ")
    )]
    NoSnapshot {
        /// The record asked for.
        applied: u64,
        /// The nearest snapshots' records.
        nearest: Vec<String>,
    },
}

impl TracingError {
    /// True when the trace itself is corrupt or truncated.
    pub fn is_corrupt(&self) -> bool {
        matches!(self, TracingError::Corrupt { .. })
    }
}

/// Read and fully check a trace file. A corrupt or truncated file is
/// [`TracingError::Corrupt`], naming the byte offset.
pub fn read(path: &Path) -> Result<Trace, TracingError> {
    let bytes = std::fs::read(path).map_err(|source| TracingError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    decode(&bytes).map_err(|source| TracingError::Corrupt {
        path: path.to_path_buf(),
        source,
    })
}

/// Counts for one op (or for everything outside any op).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct OpCounts {
    /// The op index from the markers; `None` for records outside every op.
    pub op: Option<u32>,
    /// The two marker values (for store and flush ops: user address and length).
    pub a: u64,
    /// See `a`.
    pub b: u64,
    /// Stores by user space.
    pub user_stores: u64,
    /// Stores by the kernel.
    pub kernel_stores: u64,
    /// Non-temporal stores (either privilege).
    pub nt_stores: u64,
    /// Bytes stored.
    pub store_bytes: u64,
    /// Flushes by user space.
    pub user_flushes: u64,
    /// Flushes by the kernel.
    pub kernel_flushes: u64,
    /// Fences (either privilege).
    pub fences: u64,
}

impl OpCounts {
    fn add(&mut self, r: &Record) {
        match *r {
            Record::Store {
                size,
                non_temporal,
                privilege,
                ..
            } => {
                match privilege {
                    Privilege::User => self.user_stores += 1,
                    Privilege::Kernel => self.kernel_stores += 1,
                }
                self.nt_stores += non_temporal as u64;
                self.store_bytes += size as u64;
            }
            Record::Flush { privilege, .. } => match privilege {
                Privilege::User => self.user_flushes += 1,
                Privilege::Kernel => self.kernel_flushes += 1,
            },
            Record::Fence { .. } => self.fences += 1,
            Record::Marker { .. } => {}
        }
    }
}

/// What `pmcrash trace show` prints.
#[derive(Debug, Clone, Serialize)]
pub struct TraceSummary {
    /// The trace's header.
    pub header: Header,
    /// The footer's counts.
    pub footer: Footer,
    /// Per op, in marker order.
    pub ops: Vec<OpCounts>,
    /// Everything outside the ops (boot, mount, unmount...).
    pub outside: OpCounts,
    /// Marker-discipline problems ([`marker_problems`]); empty for a good trace.
    pub problems: Vec<String>,
    /// [`record_stream_hash`], hex: equal for two runs that recorded the same events.
    pub records_blake3: String,
}

/// blake3 of the record stream (every record's encoding, in order): what two runs of a
/// workload must share to be the same run. The footer's count of elided idle fences is
/// left out: it also counts locked instructions while nothing was in flight, e.g. in
/// the idle loop after the last record.
pub fn record_stream_hash(records: &[Record]) -> blake3::Hash {
    let mut h = blake3::Hasher::new();
    for r in records {
        h.update(&crash_models::trace::encode_record(r));
    }
    h.finalize()
}

/// Summarise a trace file.
pub fn show(path: &Path) -> Result<TraceSummary, TracingError> {
    Ok(summarise(&read(path)?))
}

/// Summarise a decoded trace.
pub fn summarise(t: &Trace) -> TraceSummary {
    let mut ops: Vec<OpCounts> = Vec::new();
    let mut outside = OpCounts::default();
    let mut current: Option<usize> = None;
    for r in &t.records {
        match *r {
            Record::Marker {
                marker: MarkerKind::OpBegin,
                op,
                a,
                b,
                ..
            } => {
                ops.push(OpCounts {
                    op: Some(op),
                    a,
                    b,
                    ..Default::default()
                });
                current = Some(ops.len() - 1);
            }
            Record::Marker {
                marker: MarkerKind::OpEnd,
                ..
            } => current = None,
            _ => match current {
                Some(i) => ops[i].add(r),
                None => outside.add(r),
            },
        }
    }
    TraceSummary {
        header: t.header.clone(),
        footer: t.footer,
        ops,
        outside,
        problems: marker_problems(&t.records),
        records_blake3: record_stream_hash(&t.records).to_hex().to_string(),
    }
}

/// The kernel's stores, flushes and fences of a trace per function
/// (`pmcrash trace show --symbols`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct FunctionCounts {
    /// `function [module]`, or the hexadecimal PC where no symbol is known.
    pub function: String,
    /// PM stores it made.
    pub stores: u64,
    /// Of which non-temporal.
    pub nt_stores: u64,
    /// Flushes of PM lines.
    pub flushes: u64,
    /// Fences (recorded ones).
    pub fences: u64,
    /// The first record it made.
    pub first_record: u64,
}

/// Count the kernel's records per function named by `symbols`, most records first
/// (user-space records are the agent's own and are left out).
pub fn by_function(
    records: &[Record],
    symbols: &crate::symbols::SymbolTable,
) -> Vec<FunctionCounts> {
    let mut by: std::collections::HashMap<String, FunctionCounts> = Default::default();
    for (i, r) in records.iter().enumerate() {
        let (pc, kind) = match *r {
            Record::Store {
                privilege: Privilege::Kernel,
                pc,
                non_temporal,
                ..
            } => (pc, if non_temporal { 1 } else { 0 }),
            Record::Flush {
                privilege: Privilege::Kernel,
                pc,
                ..
            } => (pc, 2),
            Record::Fence {
                privilege: Privilege::Kernel,
                pc,
                ..
            } => (pc, 3),
            _ => continue,
        };
        let function = match symbols.lookup(pc) {
            Some(s) => match s.module {
                Some(m) => format!("{} [{m}]", s.name),
                None => s.name.to_owned(),
            },
            None => format!("{pc:#x}"),
        };
        let c = by
            .entry(function.clone())
            .or_insert_with(|| FunctionCounts {
                function,
                first_record: i as u64,
                ..FunctionCounts::default()
            });
        match kind {
            0 => c.stores += 1,
            1 => {
                c.stores += 1;
                c.nt_stores += 1;
            }
            2 => c.flushes += 1,
            _ => c.fences += 1,
        }
    }
    let mut out: Vec<FunctionCounts> = by.into_values().collect();
    out.sort_by(|a, b| {
        (b.stores + b.flushes + b.fences)
            .cmp(&(a.stores + a.flushes + a.fences))
            .then(a.function.cmp(&b.function))
    });
    out
}

/// The table `trace show --symbols` prints.
pub fn render_functions(f: &[FunctionCounts]) -> String {
    let mut s = String::from(
        "kernel records by function:\n    stores  nt-stores   flushes    fences  first-record  function\n",
    );
    for c in f {
        s.push_str(&format!(
            "{:>10} {:>10} {:>9} {:>9} {:>13}  {}\n",
            c.stores, c.nt_stores, c.flushes, c.fences, c.first_record, c.function
        ));
    }
    s
}

/// Check the marker discipline: one run, each op's begin and end exactly once, in
/// index order, begin before end, nothing nested. Returns the problems found.
pub fn marker_problems(records: &[Record]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut open: Option<u32> = None;
    let mut next = 0u32;
    let mut run: Option<u32> = None;
    for (i, r) in records.iter().enumerate() {
        let Record::Marker { marker, op, .. } = *r else {
            continue;
        };
        match marker {
            MarkerKind::RunBegin => {
                if run.is_some() {
                    problems.push(format!("record {i}: run begins twice"));
                }
                run = Some(op);
                next = 0;
            }
            MarkerKind::OpBegin => {
                if let Some(o) = open {
                    problems.push(format!("record {i}: op {op} begins inside op {o}"));
                }
                if op != next {
                    problems.push(format!("record {i}: op {op} begins, expected op {next}"));
                }
                open = Some(op);
                next = op + 1;
            }
            MarkerKind::OpEnd => {
                if open != Some(op) {
                    problems.push(format!("record {i}: op {op} ends but {open:?} is open"));
                }
                open = None;
            }
            MarkerKind::RunEnd => {
                if let Some(n) = run.take() {
                    if n != next || op != n {
                        problems.push(format!(
                            "record {i}: run of {n} ops ends after {next} (end says {op})"
                        ));
                    }
                } else {
                    problems.push(format!("record {i}: run ends without beginning"));
                }
                if let Some(o) = open {
                    problems.push(format!("record {i}: run ends inside op {o}"));
                }
            }
            // A program's own marker comes from inside its `exec` op.
            MarkerKind::Program => {
                if open.is_none() {
                    problems.push(format!("record {i}: program marker outside any op"));
                }
            }
        }
    }
    if let Some(o) = open {
        problems.push(format!("op {o} never ends"));
    }
    if run.is_some() {
        problems.push("the run never ends".into());
    }
    problems
}

/// Apply every store of `records`, in order, to a copy of `base` (a PM image: offsets
/// are file offsets). Stores past the end of `base` grow the result.
pub fn replay_onto(base: &[u8], records: &[Record]) -> Vec<u8> {
    let mut img = base.to_vec();
    for r in records {
        if let Record::Store {
            offset,
            size,
            value,
            ..
        } = *r
        {
            let (o, n) = (offset as usize, size as usize);
            if img.len() < o + n {
                img.resize(o + n, 0);
            }
            img[o..o + n].copy_from_slice(&value.to_le_bytes()[..n]);
        }
    }
    img
}

/// The first offset where two images differ (`None` when equal).
pub fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .or_else(|| (a.len() != b.len()).then_some(a.len().min(b.len())))
}

impl fmt::Display for OpCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "stores {:>6} user / {:>6} kernel ({:>5} NT, {:>7} B)  flushes {:>5} user / {:>5} kernel  fences {:>5}",
            self.user_stores,
            self.kernel_stores,
            self.nt_stores,
            self.store_bytes,
            self.user_flushes,
            self.kernel_flushes,
            self.fences
        )
    }
}

impl fmt::Display for TraceSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ft = &self.footer;
        writeln!(f, "trace: {}", self.header)?;
        writeln!(
            f,
            "{} records: {} stores, {} flushes, {} fences ({} idle fences elided), {} markers; {} unresolved flushes",
            ft.records, ft.stores, ft.flushes, ft.fences, ft.elided_fences, ft.markers, ft.unresolved_flushes
        )?;
        writeln!(f, "record stream blake3: {}", self.records_blake3)?;
        for o in &self.ops {
            writeln!(f, "op {:>4}: {o}", o.op.unwrap_or(0))?;
        }
        writeln!(f, "outside: {}", self.outside)?;
        for p in &self.problems {
            writeln!(f, "problem: {p}")?;
        }
        if ft.unresolved_flushes > 0 {
            writeln!(
                f,
                "warning: {} flushes could not be translated; the trace is incomplete",
                ft.unresolved_flushes
            )?;
        }
        Ok(())
    }
}

/// One ground-truth snapshot of the PM file, taken by the tracer inside the traced run
/// (`snap=` plugin argument): what PM held, every store persisted, after `applied`
/// records of the trace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Records of the trace before the snapshot.
    pub applied: u64,
    /// The bytes that changed since the previous snapshot (or the base image).
    pub ranges: Vec<(u64, Vec<u8>)>,
}

/// Read a snapshot stream written by the tracer. A stream without its trailer (QEMU
/// killed, a snapshot failed) is an error.
pub fn read_snapshots(path: &Path) -> Result<Vec<Snapshot>, TracingError> {
    let bytes = std::fs::read(path).map_err(|source| TracingError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_snapshots(&bytes).map_err(|message| TracingError::Snapshots {
        path: path.to_path_buf(),
        message,
    })
}

fn parse_snapshots(bytes: &[u8]) -> Result<Vec<Snapshot>, String> {
    const MAGIC: &[u8; 8] = b"PMSNAP01";
    const END: &[u8; 4] = b"END!";
    let mut pos = 0usize;
    let take = |pos: &mut usize, n: usize| -> Result<&[u8], String> {
        let s = bytes
            .get(*pos..pos.saturating_add(n))
            .ok_or_else(|| format!("truncated at byte {}", *pos))?;
        *pos += n;
        Ok(s)
    };
    let u64_at = |s: &[u8]| u64::from_le_bytes(s.try_into().expect("8 bytes"));
    let u32_at = |s: &[u8]| u32::from_le_bytes(s.try_into().expect("4 bytes"));
    if take(&mut pos, 8)? != MAGIC {
        return Err("not a snapshot stream (bad magic)".into());
    }
    let mut out = Vec::new();
    loop {
        if bytes.len() - pos == 12 && &bytes[pos..pos + 4] == END {
            let n = u64_at(&bytes[pos + 4..]);
            if n != out.len() as u64 {
                return Err(format!("trailer says {n} snapshots, found {}", out.len()));
            }
            return Ok(out);
        }
        let applied = u64_at(take(&mut pos, 8)?);
        let n = u32_at(take(&mut pos, 4)?);
        let mut ranges = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let off = u64_at(take(&mut pos, 8)?);
            let len = u32_at(take(&mut pos, 4)?) as usize;
            ranges.push((off, take(&mut pos, len)?.to_vec()));
        }
        out.push(Snapshot { applied, ranges });
    }
}

/// Replays snapshots onto a base image: `image()` is the PM file as the tracer saw it
/// at the last snapshot applied.
pub struct GroundTruth<'a> {
    image: Vec<u8>,
    snaps: &'a [Snapshot],
    next: usize,
}

impl<'a> GroundTruth<'a> {
    /// Start from the base image (the PM file when the tracer started).
    pub fn new(base: &[u8], snaps: &'a [Snapshot]) -> Self {
        GroundTruth {
            image: base.to_vec(),
            snaps,
            next: 0,
        }
    }

    /// Apply the next snapshot; returns its `applied`, or `None` at the end.
    pub fn advance(&mut self) -> Option<u64> {
        let s = self.snaps.get(self.next)?;
        self.next += 1;
        for (off, b) in &s.ranges {
            let o = *off as usize;
            if self.image.len() < o + b.len() {
                self.image.resize(o + b.len(), 0);
            }
            self.image[o..o + b.len()].copy_from_slice(b);
        }
        Some(s.applied)
    }

    /// The image at the last snapshot applied.
    pub fn image(&self) -> &[u8] {
        &self.image
    }

    /// The PM file at the first snapshot taken at or after `applied` records (the
    /// snapshots must not have been advanced past it). Returns that snapshot's
    /// `applied`.
    pub fn seek(&mut self, applied: u64) -> Option<u64> {
        loop {
            let a = self.advance()?;
            if a >= applied {
                return Some(a);
            }
        }
    }
}

/// The image pmcrash builds for "every line persisted" after `applied` records: the
/// base image with the durable content and every in-flight line kept whole.
pub fn all_persisted_at(records: &[Record], line_size: u32, base: &[u8], applied: u64) -> Vec<u8> {
    let mut img = base.to_vec();
    all_persisted_delta(records, line_size, applied).apply_to_slice(&mut img);
    img
}

/// [`all_persisted_at`] as a delta over the base image, for callers that write it into
/// a copy of the base file instead of holding the whole image in memory.
pub fn all_persisted_delta(
    records: &[Record],
    line_size: u32,
    applied: u64,
) -> crash_models::delta::CrashImage {
    use crash_models::delta::ImageBuilder;
    use crash_models::model::{ModelConfig, Replayer};
    use crash_models::states::{CrashStates, StateConfig, Strategy};
    let cfg = ModelConfig::new(Default::default(), line_size).unwrap_or_default();
    let mut r = Replayer::new(cfg);
    for rec in &records[..(applied as usize).min(records.len())] {
        r.apply(rec);
    }
    let b = ImageBuilder::new(&r);
    // Every line, however many are in flight (the default caps the lines considered).
    let all = StateConfig {
        strategies: vec![Strategy::All],
        max_states: 1,
        max_lines: usize::MAX,
    };
    match CrashStates::new(b.in_flight(), &all).next() {
        Some(state) => b.build(&state),
        None => b.build(&Default::default()),
    }
}

/// The traced guest's PM file after exactly `applied` records, from its snapshots; an
/// error names the nearest snapshots when none was taken there.
pub fn ground_truth_at(
    base: &[u8],
    snaps: &[Snapshot],
    applied: u64,
) -> Result<Vec<u8>, TracingError> {
    let mut g = GroundTruth::new(base, snaps);
    match g.seek(applied) {
        Some(a) if a == applied => Ok(g.image().to_vec()),
        _ => {
            let at = snaps.partition_point(|s| s.applied < applied);
            let near: Vec<String> = snaps[at.saturating_sub(2)..(at + 2).min(snaps.len())]
                .iter()
                .map(|s| s.applied.to_string())
                .collect();
            Err(TracingError::NoSnapshot {
                applied,
                nearest: near,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crash_models::trace::{encode, FenceKind};

    fn header() -> Header {
        Header {
            pm_base: 0x1_0000_0000,
            pm_size: 1 << 20,
            line_size: 64,
            flags: 0,
            kernel: "k".into(),
            workload_hash: [0; 32],
            qemu_version: "q".into(),
        }
    }

    fn store(offset: u64, size: u8, value: u64, privilege: Privilege) -> Record {
        Record::Store {
            offset,
            size,
            value,
            non_temporal: false,
            privilege,
            vcpu: 0,
            pc: 0,
        }
    }

    fn marker(marker: MarkerKind, op: u32) -> Record {
        Record::Marker {
            marker,
            op,
            a: 0,
            b: 0,
            vcpu: 0,
        }
    }

    #[test]
    fn replay_applies_stores_in_order() {
        let recs = [
            store(0, 8, 0x0807_0605_0403_0201, Privilege::Kernel),
            store(2, 2, 0xbbaa, Privilege::User),
            store(1, 1, 0xff, Privilege::User),
        ];
        let img = replay_onto(&[0u8; 16], &recs);
        assert_eq!(&img[..9], &[1, 0xff, 0xaa, 0xbb, 5, 6, 7, 8, 0]);
        assert_eq!(first_difference(&img, &[0u8; 16]), Some(0));
        assert_eq!(first_difference(&img, &img), None);
    }

    #[test]
    fn summary_groups_by_op_and_checks_markers() {
        let recs = vec![
            store(0, 8, 1, Privilege::Kernel),
            marker(MarkerKind::RunBegin, 2),
            marker(MarkerKind::OpBegin, 0),
            store(8, 8, 1, Privilege::User),
            Record::Fence {
                fence: FenceKind::Sfence,
                privilege: Privilege::User,
                vcpu: 0,
                pc: 0,
            },
            marker(MarkerKind::OpEnd, 0),
            marker(MarkerKind::OpBegin, 1),
            store(16, 4, 1, Privilege::Kernel),
            marker(MarkerKind::OpEnd, 1),
            marker(MarkerKind::RunEnd, 2),
        ];
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.pmt");
        std::fs::write(&p, encode(&header(), &recs, 0)).unwrap();
        let s = show(&p).unwrap();
        assert!(s.problems.is_empty(), "{:?}", s.problems);
        assert_eq!(s.ops.len(), 2);
        assert_eq!((s.ops[0].user_stores, s.ops[0].fences), (1, 1));
        assert_eq!(s.ops[1].kernel_stores, 1);
        assert_eq!(s.outside.kernel_stores, 1);
        assert!(s.to_string().contains("op    1"));
        serde_json::to_string(&s).unwrap();

        let bad = vec![
            marker(MarkerKind::OpBegin, 1),
            marker(MarkerKind::OpEnd, 0),
            marker(MarkerKind::OpBegin, 1),
        ];
        assert_eq!(
            marker_problems(&bad).len(),
            4,
            "{:?}",
            marker_problems(&bad)
        );
    }

    #[test]
    fn snapshot_streams_parse_and_replay() {
        let mut b = b"PMSNAP01".to_vec();
        for (applied, off, data) in [(5u64, 2u64, &b"ab"[..]), (9, 0, &b"x"[..])] {
            b.extend(applied.to_le_bytes());
            b.extend(1u32.to_le_bytes());
            b.extend(off.to_le_bytes());
            b.extend((data.len() as u32).to_le_bytes());
            b.extend(data);
        }
        assert!(parse_snapshots(&b).is_err(), "no trailer");
        b.extend(b"END!");
        b.extend(2u64.to_le_bytes());
        let snaps = parse_snapshots(&b).unwrap();
        assert_eq!(snaps.len(), 2);
        let mut g = GroundTruth::new(&[0u8; 4], &snaps);
        assert_eq!(g.seek(6), Some(9));
        assert_eq!(g.image(), b"x\0ab");
        assert_eq!(g.advance(), None);
    }

    #[test]
    fn corrupt_trace_is_recognisable() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.pmt");
        let mut bytes = encode(&header(), &[store(0, 1, 1, Privilege::User)], 0);
        bytes.truncate(bytes.len() - 3);
        std::fs::write(&p, &bytes).unwrap();
        let e = show(&p).unwrap_err();
        assert!(e.is_corrupt());
        assert!(format!("{e:#}").contains("byte"), "{e:#}");
    }
}

/// What [`trace_workload`] produced.
#[derive(Debug, Clone, Serialize)]
pub struct TracedRun {
    /// The trace file.
    pub trace: std::path::PathBuf,
    /// The trace, decoded and checked once (callers need not read the file again).
    #[serde(skip)]
    pub decoded: Trace,
    /// The PM image as it was before the first op (a copy).
    pub base_image: std::path::PathBuf,
    /// The PM image after the last op and the unmount.
    pub final_image: std::path::PathBuf,
    /// Every op's result.
    pub results: Vec<crash_models::protocol::OpResult>,
    /// Stage timings.
    pub timings: crate::run::StageTimings,
    /// Ground-truth snapshots of the PM file ([`read_snapshots`]), when asked for.
    pub snapshots: Option<std::path::PathBuf>,
    /// Whether the guest ran deterministically
    /// ([`crate::guest::GuestFactory::deterministic_traces`]).
    pub deterministic: bool,
    /// The covered blocks the run executed, when [`TraceOptions::coverage`] asked.
    #[serde(skip)]
    pub coverage: Option<crash_models::coverage::Blocks>,
}

/// Extras for [`trace_workload_with`].
#[derive(Debug, Clone, Default)]
pub struct TraceOptions {
    /// Snapshot the PM file before every fence and marker of the run (the ground truth
    /// of every fence and op crash point), into `STEM.snapshots`.
    pub snapshot_fences: bool,
    /// Also snapshot right after these records (the end of the instruction that made
    /// record N - 1: the snapshot's `applied` can be larger than N when that
    /// instruction made several records).
    pub snapshot_records: Vec<u64>,
    /// Record which translation blocks in this code the run executed
    /// ([`crash_models::coverage`]), into [`TracedRun::coverage`].
    pub coverage: Option<crash_models::coverage::CodeRanges>,
}

/// Run `workload` in a restored guest under the tracer: makes a fresh image, saves a
/// copy as the base, runs the ops with markers, unmounts, powers off, and checks the
/// trace decodes. Files land in `out_dir` as `STEM.pmtrace`, `STEM.base.img`,
/// `STEM.final.img`; the trace is renamed into place only once it is complete.
pub async fn trace_workload(
    factory: &crate::guest::GuestFactory,
    workload: &crash_models::ops::Workload,
    out_dir: &Path,
    stem: &str,
) -> Result<TracedRun, TracingError> {
    trace_workload_with(factory, workload, out_dir, stem, &TraceOptions::default()).await
}

/// [`trace_workload`] with ground-truth snapshots.
pub async fn trace_workload_with(
    factory: &crate::guest::GuestFactory,
    workload: &crash_models::ops::Workload,
    out_dir: &Path,
    stem: &str,
    opts: &TraceOptions,
) -> Result<TracedRun, TracingError> {
    use crash_models::protocol::HostMsg;
    use std::time::Instant;
    let t0 = Instant::now();
    let mut timings = crate::run::StageTimings::default();
    let final_image = out_dir.join(format!("{stem}.final.img"));
    let base_image = out_dir.join(format!("{stem}.base.img"));
    let trace_path = out_dir.join(format!("{stem}.pmtrace"));
    let partial = out_dir.join(format!(".{stem}.pmtrace.partial"));
    factory.make_image(&final_image).await?;
    {
        let io = |what: &'static str| {
            let path = base_image.clone();
            move |source| FileError { what, path, source }
        };
        let base = std::fs::File::create(&base_image).map_err(io("create"))?;
        base.set_len(factory.pm_size).map_err(io("size"))?;
        crate::image::copy_sparse(&final_image, 0, &base, 0)?;
        base.sync_all().map_err(io("fsync"))?;
    }
    timings.image_ms = t0.elapsed().as_millis() as u64;
    let hash: String = workload.hash().iter().map(|b| format!("{b:02x}")).collect();
    let mut plugin = crate::vm::PluginSpec {
        path: TRACER_PLUGIN.into(),
        args: vec![
            (
                "pm_base".into(),
                format!("{:#x}", crate::vm::PM_GUEST_PHYS_BASE),
            ),
            ("pm_size".into(), factory.pm_size.to_string()),
            ("out".into(), partial.display().to_string()),
            ("kernel".into(), factory.assets.kernel_release.clone()),
            ("qemu".into(), factory.assets.qemu_version.clone()),
            ("workload".into(), hash),
        ],
    };
    // PMCRASH_SNAPSHOTS=1 turns fence snapshots on for every trace (e.g. inside
    // `pmcrash run --out DIR`, to keep the ground truth of each finding).
    let snapshot_fences =
        opts.snapshot_fences || std::env::var_os("PMCRASH_SNAPSHOTS").is_some_and(|v| v == "1");
    let want_snaps = snapshot_fences || !opts.snapshot_records.is_empty();
    let snap_path = out_dir.join(format!("{stem}.snapshots"));
    if want_snaps {
        let records: Vec<String> = opts
            .snapshot_records
            .iter()
            .map(|r| r.to_string())
            .collect();
        plugin.args.extend([
            ("pm_file".into(), final_image.display().to_string()),
            ("snap".into(), snap_path.display().to_string()),
            (
                "snap_fences".into(),
                if snapshot_fences { "on" } else { "off" }.into(),
            ),
        ]);
        if !records.is_empty() {
            plugin.args.push(("snap_records".into(), records.join(":")));
        }
    }
    let cov_path = out_dir.join(format!("{stem}.cov"));
    if let Some(ranges) = &opts.coverage {
        let ranges_path = out_dir.join(format!("{stem}.covranges"));
        crate::cache::write_atomic(&ranges_path, &ranges.encode())?;
        let _ = std::fs::remove_file(&cov_path);
        plugin.args.extend([
            ("cov_ranges".into(), ranges_path.display().to_string()),
            ("cov".into(), cov_path.display().to_string()),
        ]);
    }
    let t = Instant::now();
    let deterministic = factory.deterministic_traces;
    let vm = if deterministic {
        // The whole run, from the restore on, is the agent's own: no host input whose
        // timing could move a kernel event.
        let script = vec![
            HostMsg::Refresh,
            HostMsg::Mount {
                fs: factory.fs,
                options: vec![],
            },
            HostMsg::Run {
                ops: workload.ops.clone(),
                markers: true,
            },
            HostMsg::Unmount,
            HostMsg::Poweroff,
        ];
        factory
            .start_scripted(&final_image, Some(plugin), script)
            .await?
    } else {
        factory.start(&final_image, Some(plugin)).await?
    };
    timings.guest_ready_ms = t.elapsed().as_millis() as u64;
    let results =
        crate::run::mount_run_teardown(factory, vm, &workload.ops, true, &mut timings).await?;
    let decoded = read(&partial)?;
    crate::cache::publish(&partial, &trace_path)?;
    timings.total_ms = t0.elapsed().as_millis() as u64;
    let snapshots = if want_snaps {
        read_snapshots(&snap_path)?;
        Some(snap_path)
    } else {
        None
    };
    let coverage = match &opts.coverage {
        Some(_) => {
            let bytes = std::fs::read(&cov_path).map_err(|source| TracingError::Read {
                path: cov_path.clone(),
                source,
            })?;
            let blocks = crash_models::coverage::Blocks::decode(&bytes).map_err(|e| {
                TracingError::Coverage {
                    path: cov_path.clone(),
                    message: e.to_string(),
                }
            })?;
            let _ = std::fs::remove_file(&cov_path);
            let _ = std::fs::remove_file(out_dir.join(format!("{stem}.covranges")));
            Some(blocks)
        }
        None => None,
    };
    Ok(TracedRun {
        trace: trace_path,
        decoded,
        base_image,
        final_image,
        results,
        timings,
        snapshots,
        deterministic,
        coverage,
    })
}
