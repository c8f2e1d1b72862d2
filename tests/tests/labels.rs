//! Dropped lines labelled with the file system's own tools (`harness/src/labels.rs`),
//! on ext4-DAX and XFS-DAX: LSFMM workload 06 (fmetadatasync with one line left
//! unflushed) at op points gives a finding whose one dropped line is pm.dat's data;
//! `debugfs` / `xfs_db` must name that file and offset exactly as the extent map the
//! guest reported does. On the same final image, the journal (jbd2) or log (XFS) and
//! the superblock, found from the on-disk superblock by `crash_models::torn::Layout`,
//! must get journal/log and superblock labels from the tools.

use crash_models::ops::FsKind;
use crash_models::points::Policy;
use crash_models::torn::Layout;
use pmcrash::image::FSDAX_DATA_OFFSET;
use pmcrash::labels::{label_lines, LineLabel};
use pmcrash::oracle::Verdict;
use pmcrash::pipeline::{builtin_lsfmm2016, Pipeline, RunConfig};
use pmcrash::report::WorkloadReport;
use pmcrash_e2e::{factory, rt};
use std::os::unix::fs::FileExt;
use std::path::Path;

fn run(fs: FsKind, out: &Path) -> WorkloadReport {
    let w: Vec<_> = builtin_lsfmm2016()
        .into_iter()
        .filter(|w| w.name.contains("06-fmetadatasync"))
        .collect();
    assert_eq!(w.len(), 1);
    rt().block_on(async {
        let cfg = RunConfig {
            fs,
            points: Policy::Op,
            workers: 2,
            out_dir: Some(out.to_path_buf()),
            ..RunConfig::default()
        };
        let mut p = Pipeline::with_factory(factory(fs), cfg).expect("pipeline");
        let r = p.run(&w, false).await;
        p.shutdown().await;
        r.expect("the workload runs").workloads.remove(0)
    })
}

fn check(fs: FsKind) {
    let out = tempfile::tempdir().unwrap();
    let w = run(fs, out.path());
    let f = w
        .findings
        .iter()
        .find(|f| f.verdict == Verdict::UnsafeFlushOnly && !f.dropped_lines.is_empty())
        .unwrap_or_else(|| panic!("{fs}: no unsafe-flush-only finding with dropped lines"));
    for l in &f.dropped_lines {
        let label = l
            .label
            .as_ref()
            .unwrap_or_else(|| panic!("{fs}: line {:#x} unlabelled", l.pm_offset));
        // The extent map's owner (`file pm.dat offset 64`) and the tools' label agree.
        let offset: u64 = l
            .owner
            .strip_prefix("file pm.dat offset ")
            .unwrap_or_else(|| panic!("{fs}: owner {}", l.owner))
            .parse()
            .unwrap();
        match label {
            LineLabel::FileData {
                path, offset: o, ..
            } => {
                assert_eq!(path.as_deref(), Some("/pm.dat"), "{fs}");
                assert_eq!(*o, offset, "{fs}");
            }
            other => panic!("{fs}: line {:#x} labelled {other}", l.pm_offset),
        }
    }
    eprintln!(
        "{fs}: labelling took {} ms for {} finding(s)",
        w.timings.label_ms,
        w.findings.len()
    );
    let text = pmcrash::report::Report::new(
        pmcrash::report::ConfigReport {
            fs,
            model: "x86-adr".into(),
            points: "op".into(),
            states: "each-line".into(),
            seed: 0,
            kernel: "k".into(),
            workers: 2,
            sector_atomic: None,
        },
        &Default::default(),
        vec![w],
    )
    .render_text();
    assert!(text.contains("(file data: /pm.dat (inode "), "{text}");

    // The journal or log and the superblock, on the same final image.
    let image = out.path().join("06-fmetadatasync-one-unflushed.final.img");
    let file = std::fs::File::open(&image).expect("the final image is kept");
    let read = |at: u64, len: usize| {
        let mut b = vec![0u8; len];
        let n = file.read_at(&mut b, at).unwrap_or(0);
        b.truncate(n);
        b
    };
    let layout = match fs {
        FsKind::Ext4 => Layout::ext4(FSDAX_DATA_OFFSET, read),
        FsKind::Xfs => Layout::xfs(FSDAX_DATA_OFFSET, read),
    };
    let start_of = |name: &str| {
        layout
            .regions()
            .iter()
            .find(|(_, n)| n.contains(name))
            .map(|(r, _)| r.start)
            .unwrap_or_else(|| panic!("{fs}: no {name} in {:?}", layout.regions()))
    };
    let (journal, sb) = match fs {
        FsKind::Ext4 => (start_of("jbd2 journal superblock"), start_of("superblock")),
        FsKind::Xfs => (start_of("XFS log"), start_of("XFS primary superblock")),
    };
    let labels = label_lines(
        fs,
        &image,
        FSDAX_DATA_OFFSET,
        &[journal + 64, sb + 64, 4096],
    )
    .expect("labels");
    match &labels[0] {
        LineLabel::Journal { log, block: 0 } => {
            assert!(log.contains(if fs == FsKind::Ext4 {
                "jbd2"
            } else {
                "XFS log"
            }))
        }
        other => panic!("{fs}: the journal's first line labelled {other}"),
    }
    assert!(
        matches!(labels[1], LineLabel::Superblock { .. }),
        "{fs}: {}",
        labels[1]
    );
    assert_eq!(labels[2], LineLabel::Namespace);
}

#[test]
fn ext4_dropped_lines_are_labelled() {
    check(FsKind::Ext4);
}

#[test]
fn xfs_dropped_lines_are_labelled() {
    check(FsKind::Xfs);
}
