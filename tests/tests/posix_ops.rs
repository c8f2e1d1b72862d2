//! The POSIX corpus (`corpora/posix/`) in real guests: every op does what its workload
//! says on ext4-DAX and XFS-DAX (the errno of each op meant to fail, success for the
//! rest), and the state the agent dumps afterwards holds what the ops left: sparse
//! files of 1 TiB and 4 EiB as one block each, FIFOs, xattrs, renamed and linked names.

use crash_models::ops::{seeded_bytes, FsKind, Workload};
use crash_models::protocol::{EntryKind, FsEntry, OpDetail, OpResult};
use pmcrash_e2e::{rt, ReusedGuest};
use std::collections::BTreeMap;
use std::path::Path;

/// The errno each op is meant to end with, by workload file; ops not listed succeed.
fn intended_errnos(fs: FsKind) -> BTreeMap<&'static str, Vec<(usize, i32)>> {
    let mut m = BTreeMap::from([
        (
            "04-xattrs.toml",
            vec![(4, libc::EEXIST), (7, libc::ENODATA)],
        ),
        ("05-truncate-by-path.toml", vec![(7, libc::ENOENT)]),
        ("11-fifo-symlink-dir-fsync.toml", vec![(2, libc::EEXIST)]),
        (
            "12-failing-ops.toml",
            vec![
                (2, libc::ENOENT),
                (3, libc::ENOTEMPTY),
                (4, libc::EISDIR),
                (5, libc::EEXIST),
                (6, libc::EINVAL),
                (8, libc::EBADF),
                (9, libc::ENODATA),
            ],
        ),
    ]);
    if fs == FsKind::Ext4 {
        // Past ext4's 16 TiB; XFS's maximum is 2^63 - 1.
        m.insert("09-ftruncate-beyond-max.toml", vec![(2, libc::EFBIG)]);
    }
    m
}

fn find<'a>(entries: &'a [FsEntry], path: &str) -> &'a FsEntry {
    entries
        .iter()
        .find(|e| e.path == path)
        .unwrap_or_else(|| panic!("{path} missing from {entries:?}"))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One block of `data` at `at` in an otherwise empty 4 KiB block.
fn lone_block(at: usize, data: &[u8]) -> String {
    let mut b = vec![0u8; 4096];
    b[at..at + data.len()].copy_from_slice(data);
    blake3::hash(&b).to_hex().to_string()
}

/// What each workload must have left, beyond the ops' results.
fn check_state(fs: FsKind, name: &str, e: &[FsEntry]) {
    match name {
        "02-rename-replace-fsync-dir.toml" => {
            let c = find(e, "config");
            let want = FsEntry::file("config", b"version = 2, and longer than the first\n");
            assert_eq!((c.size, &c.blocks), (want.size, &want.blocks), "{fs}");
            assert!(!e.iter().any(|x| x.path == "config.tmp"), "{fs}");
        }
        "03-link-unlink-fsync-dir.toml" => {
            let b = find(e, "d/b");
            assert_eq!(b.nlink, 1, "{fs}");
            assert_eq!(b.blocks, FsEntry::file("", &seeded_bytes(3, 8192)).blocks);
            assert!(!e.iter().any(|x| x.path == "d/a"), "{fs}");
        }
        "04-xattrs.toml" => {
            let t = find(e, "tagged");
            assert_eq!(
                t.xattrs,
                BTreeMap::from([("user.checksum".to_owned(), hex(b"crc32:2"))]),
                "{fs}"
            );
        }
        "05-truncate-by-path.toml" => {
            let l = find(e, "log");
            let mut want = seeded_bytes(5, 5000);
            want.resize(65536, 0);
            assert_eq!(l.blake3, FsEntry::file("", &want).blake3, "{fs}");
        }
        "06-odirect-writes.toml" => {
            // pwrite leaves the file position at 0: the write lands over it.
            let mut want = seeded_bytes(7, 8192);
            want[100..111].copy_from_slice(b"not aligned");
            want.resize(20000, 0);
            want.extend_from_slice(b"buffered after direct");
            assert_eq!(
                find(e, "direct.dat").blake3,
                FsEntry::file("", &want).blake3,
                "{fs}"
            );
        }
        "07-fallocate-modes.toml" => {
            let mut want = seeded_bytes(8, 16384);
            want[4096..8192].fill(0);
            want[9000..10000].fill(0);
            want[12288..].fill(0);
            want.resize(32768, 0);
            let f = find(e, "sparse.dat");
            assert_eq!(f.size, 32768, "{fs}");
            assert_eq!(f.blocks, FsEntry::file("", &want).blocks, "{fs}");
        }
        "08-ftruncate-1tib.toml" => {
            let h = find(e, "huge");
            assert_eq!(h.size, 1 << 40, "{fs}");
            let at = 549_755_813_888u64;
            assert_eq!(
                h.blocks,
                BTreeMap::from([(at / 4096, lone_block(0, b"in the middle of a tebibyte"))]),
                "{fs}"
            );
        }
        "09-ftruncate-beyond-max.toml" => {
            let t = find(e, "toobig");
            let size = if fs == FsKind::Ext4 { 4096 } else { 1 << 62 };
            assert_eq!(t.size, size, "{fs}");
            assert_eq!(
                t.blocks,
                FsEntry::file("", &seeded_bytes(9, 4096)).blocks,
                "{fs}"
            );
        }
        "11-fifo-symlink-dir-fsync.toml" => {
            let p = find(e, "pipe");
            assert_eq!(
                (p.kind, p.mode, p.size),
                (EntryKind::Fifo, 0o640, 0),
                "{fs}"
            );
            let l = find(e, "to-pipe");
            assert_eq!(
                (l.kind, l.target.as_deref()),
                (EntryKind::Symlink, Some("pipe"))
            );
        }
        "12-failing-ops.toml" => {
            let f = find(e, "d/f");
            assert_eq!(f.blocks, FsEntry::file("", b"still here").blocks, "{fs}");
            assert!(!e.iter().any(|x| x.path.starts_with("d/inner")), "{fs}");
        }
        "13-rename-dir-fdatasync-parent.toml" => {
            assert_eq!(find(e, "new").kind, EntryKind::Dir, "{fs}");
            let d = find(e, "new/data");
            assert_eq!(d.blocks, FsEntry::file("", &seeded_bytes(13, 3000)).blocks);
            assert!(!e.iter().any(|x| x.path.starts_with("old")), "{fs}");
        }
        _ => {}
    }
}

fn corpus() -> Vec<(String, Workload)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../corpora/posix");
    let mut out: Vec<(String, Workload)> = std::fs::read_dir(&dir)
        .expect("corpora/posix")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            let src = std::fs::read_to_string(&p).expect("read workload");
            let w = Workload::parse(&src, &name).unwrap_or_else(|e| panic!("{e}"));
            (name, w)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn posix_corpus(fs: FsKind) {
    let corpus = corpus();
    assert!(corpus.len() >= 10, "{} workloads", corpus.len());
    let intended = intended_errnos(fs);
    let rt = rt();
    let runs: Vec<(String, Vec<OpResult>, Vec<FsEntry>)> = rt.block_on(async {
        let mut g = ReusedGuest::start(fs).await;
        let mut runs = Vec::new();
        for (name, w) in &corpus {
            let (results, entries) = g.run(&w.ops).await;
            runs.push((name.clone(), results, entries));
        }
        g.end().await;
        runs
    });
    for ((name, results, entries), (_, w)) in runs.iter().zip(&corpus) {
        let want = intended.get(name.as_str()).cloned().unwrap_or_default();
        for (r, op) in results.iter().zip(&w.ops) {
            let expected = want.iter().find(|(i, _)| *i == r.index).map(|(_, e)| *e);
            assert_eq!(
                r.errno,
                expected,
                "{fs}: {name}: op {} ({}) ended {r:?}",
                r.index,
                op.name()
            );
            if let OpDetail::Opened { dax, .. } = r.detail {
                let dir = matches!(
                    op,
                    crash_models::ops::Op::Open {
                        directory: true,
                        ..
                    }
                );
                assert_eq!(
                    dax, !dir,
                    "{fs}: {name}: op {}: DAX on a file, not a directory",
                    r.index
                );
            }
        }
        assert!(
            entries.iter().all(|e| e.error.is_none()),
            "{fs}: {name}: the dump could not read everything: {entries:?}"
        );
        check_state(fs, name, entries);
    }
}

#[test]
fn ext4_posix_corpus_does_what_it_says() {
    posix_corpus(FsKind::Ext4);
}

#[test]
fn xfs_posix_corpus_does_what_it_says() {
    posix_corpus(FsKind::Xfs);
}
