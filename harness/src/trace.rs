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

/// True when `err` comes from a corrupt or truncated trace (the CLI exits 2 for it).
pub fn is_corrupt(err: &TracingError) -> bool {
    err.is_corrupt()
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
    }
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
    fn corrupt_trace_is_recognisable() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.pmt");
        let mut bytes = encode(&header(), &[store(0, 1, 1, Privilege::User)], 0);
        bytes.truncate(bytes.len() - 3);
        std::fs::write(&p, &bytes).unwrap();
        let e = show(&p).unwrap_err();
        assert!(is_corrupt(&e));
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
    let plugin = crate::vm::PluginSpec {
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
    let t = Instant::now();
    let vm = factory.start(&final_image, Some(plugin)).await?;
    timings.guest_ready_ms = t.elapsed().as_millis() as u64;
    let results =
        crate::run::mount_run_teardown(factory, vm, &workload.ops, true, &mut timings).await?;
    let decoded = read(&partial)?;
    crate::cache::publish(&partial, &trace_path)?;
    timings.total_ms = t0.elapsed().as_millis() as u64;
    Ok(TracedRun {
        trace: trace_path,
        decoded,
        base_image,
        final_image,
        results,
        timings,
    })
}
