//! The guest platform end to end: real QEMU, the Debian kernel, ext4-DAX and XFS-DAX.

use crash_models::ops::{FsKind, Workload};
use crash_models::protocol::{AgentMsg, EntryKind, FsEntry, HostMsg};
use pmcrash::guest::GuestError;
use pmcrash::vm::VmError;
use pmcrash_e2e::{expected_contents, factory, process_alive, rt};
use std::path::Path;
use std::time::Duration;

const BASIC: &str = include_str!("../../corpora/smoke/basic.toml");

fn dump(rt: &tokio::runtime::Runtime, fs: FsKind, image: &Path) -> Vec<FsEntry> {
    let f = factory(fs);
    rt.block_on(async {
        let mut vm = f.start(image, None).await.expect("restore a guest");
        f.mount(&mut vm).await.expect("mount -o dax");
        let (_, state) = vm
            .request(&HostMsg::Dump, Duration::from_secs(120))
            .await
            .expect("dump");
        vm.request(&HostMsg::Unmount, Duration::from_secs(60))
            .await
            .expect("unmount");
        vm.shutdown(Duration::from_secs(30))
            .await
            .expect("power off");
        match state {
            AgentMsg::State { entries } => entries,
            other => panic!("expected a state, got {other:?}"),
        }
    })
}

/// Run the smoke workload, then check every file's bytes in the PM image with a second
/// guest (and, on ext4, with debugfs on the host as an independent reader).
fn data_reaches_pm(fs: FsKind) {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let workload = Workload::parse(BASIC, "basic.toml").unwrap();
    let f = factory(fs);
    let image = dir.path().join("run.img");
    let report = rt
        .block_on(pmcrash::run::run_ops(&f, &workload, "basic.toml", &image))
        .expect("run the smoke workload");
    for op in &report.ops {
        assert!(
            op.result.ok(),
            "{fs}: op {} ({}) failed: {:?}",
            op.result.index,
            op.op.name(),
            op.result
        );
        if let crash_models::protocol::OpDetail::Opened { dax, .. } = op.result.detail {
            assert!(dax, "{fs}: the file is not served by DAX");
        }
    }
    let expected = expected_contents(&workload.ops);
    let want = &expected["data.bin"];
    assert_eq!(want.len(), 16384);
    let entries = dump(&rt, fs, &image);
    let file = entries
        .iter()
        .find(|e| e.path == "data.bin")
        .unwrap_or_else(|| panic!("{fs}: data.bin missing from {entries:?}"));
    assert_eq!(file.kind, EntryKind::File);
    assert_eq!(file.size, want.len() as u64, "{fs}: size");
    for (i, chunk) in want.chunks(4096).enumerate() {
        assert_eq!(
            file.block(i as u64).as_deref(),
            Some(blake3::hash(chunk).to_hex().as_str()),
            "{fs}: block {i} of data.bin differs"
        );
    }
    assert_eq!(
        file.blake3,
        FsEntry::file("data.bin", want).blake3,
        "{fs}: data.bin differs"
    );
    if fs == FsKind::Ext4 {
        let out = std::process::Command::new("debugfs")
            .args(["-R", "cat /data.bin"])
            .arg(format!("{}?offset=2097152", image.display()))
            .output()
            .expect("debugfs (e2fsprogs) must be installed");
        assert_eq!(
            &out.stdout, want,
            "debugfs reads different bytes from the image"
        );
    }
}

#[test]
fn ext4_dax_data_reaches_pm() {
    data_reaches_pm(FsKind::Ext4);
}

#[test]
fn xfs_dax_data_reaches_pm() {
    data_reaches_pm(FsKind::Xfs);
}

/// A restored guest must see the PM image it was given, and the restore must not write
/// the snapshot's PM contents over it (what happens without `x-ignore-shared`).
#[test]
fn restored_guest_mounts_the_new_image() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let f = factory(FsKind::Ext4);
    let used = dir.path().join("used.img");
    let src = "[[ops]]\nop = \"open\"\npath = \"only-in-used\"\nfd = \"a\"\ncreate = true\n\n[[ops]]\nop = \"write\"\nfd = \"a\"\ndata = \"from the first image\"\n\n[[ops]]\nop = \"fsync\"\nfd = \"a\"\n";
    let w = Workload::parse(src, "used.toml").unwrap();
    rt.block_on(pmcrash::run::run_ops(&f, &w, "used.toml", &used))
        .expect("run");
    let fresh = dir.path().join("fresh.img");
    rt.block_on(f.make_image(&fresh)).expect("make image");
    // A sentinel in the unused part of the fsdax header area: a restore that
    // overwrote the NVDIMM would erase it.
    let sentinel = b"pmcrash sentinel: must survive the restore";
    std::os::unix::fs::FileExt::write_all_at(
        &std::fs::OpenOptions::new()
            .write(true)
            .open(&fresh)
            .unwrap(),
        sentinel,
        1 << 20,
    )
    .unwrap();
    let before = std::fs::read(&fresh).unwrap();
    rt.block_on(async {
        let mut vm = f.start(&fresh, None).await.expect("restore");
        let after = std::fs::read(&fresh).unwrap();
        assert!(
            before == after,
            "restoring the guest changed the PM image it was given"
        );
        f.mount(&mut vm).await.expect("mount");
        let (_, state) = vm
            .request(&HostMsg::Dump, Duration::from_secs(60))
            .await
            .unwrap();
        let AgentMsg::State { entries } = state else {
            panic!("no state")
        };
        assert!(
            !entries.iter().any(|e| e.path == "only-in-used"),
            "the guest shows a file from another image: {entries:?}"
        );
        vm.request(&HostMsg::Unmount, Duration::from_secs(60))
            .await
            .unwrap();
        vm.shutdown(Duration::from_secs(30)).await.unwrap();
    });
    let bytes = std::fs::read(&fresh).unwrap();
    assert_eq!(&bytes[1 << 20..(1 << 20) + sentinel.len()], sentinel);
    let entries = dump(&rt, FsKind::Ext4, &used);
    let e = entries
        .iter()
        .find(|e| e.path == "only-in-used")
        .expect("the used image keeps its file");
    assert_eq!(
        e.blake3,
        FsEntry::file("only-in-used", b"from the first image").blake3
    );
}

#[test]
fn guest_panic_is_a_clear_error_and_leaves_no_qemu() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let f = factory(FsKind::Ext4);
    let image = dir.path().join("p.img");
    rt.block_on(async {
        f.make_image(&image).await.unwrap();
        let mut vm = f.start(&image, None).await.unwrap();
        let pid = vm.pid();
        let err = vm
            .request(&HostMsg::TestPanic, Duration::from_secs(120))
            .await
            .expect_err("a panicking guest cannot answer");
        match &err {
            VmError::GuestPanic { console, .. } => {
                assert!(
                    console.contains("Kernel panic"),
                    "console tail lacks the panic: {console}"
                )
            }
            other => panic!("expected a guest panic, got {other}"),
        }
        drop(vm);
        assert!(!process_alive(pid), "QEMU {pid} outlived its guest");
    });
}

#[test]
fn hung_guest_times_out_and_leaves_no_qemu() {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let f = factory(FsKind::Ext4);
    let image = dir.path().join("h.img");
    rt.block_on(async {
        f.make_image(&image).await.unwrap();
        let mut vm = f.start(&image, None).await.unwrap();
        let pid = vm.pid();
        let err = vm
            .request(&HostMsg::TestHang, Duration::from_secs(5))
            .await
            .expect_err("a hung guest cannot answer");
        assert!(
            matches!(err, VmError::Timeout { .. }),
            "expected a timeout, got {err}"
        );
        assert!(err.to_string().contains("did not answer"), "{err}");
        assert!(
            !process_alive(pid),
            "QEMU {pid} still runs after the timeout"
        );
    });
}

/// A guest error inside a factory call surfaces as the same clear error.
#[test]
fn missing_initramfs_is_a_clear_error() {
    let mut f = factory(FsKind::Xfs);
    f.assets.initramfs.clear();
    let err = f.spec(Path::new("/nonexistent"), None).unwrap_err();
    assert!(
        matches!(err, GuestError::Guest(ref m) if m.contains("pmcrash setup")),
        "{err}"
    );
}
