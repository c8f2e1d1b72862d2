//! Kernel symbols on a real trace: the guest kernel's `/proc/kallsyms` (Debian's
//! `System.map` is a placeholder) names the functions behind the traced stores,
//! flushes and fences, modules included.

use crash_models::ops::{FsKind, Workload};
use pmcrash::symbols::{kernel_symbols, BLOCK_COPY_SYMBOL};
use pmcrash::trace::{by_function, render_functions, trace_workload};
use pmcrash_e2e::{factory, rt};

/// A create, 4 KiB write and fsync.
const CREATE_WRITE_FSYNC: &str = r#"
[[ops]]
op = "open"
path = "a"
fd = "f"
create = true
[[ops]]
op = "write"
fd = "f"
data = { seed = 1, len = 4096 }
[[ops]]
op = "fsync"
fd = "f"
"#;

/// A create, 4 KiB write and fsync on ext4: the data copy, the journal's block writes
/// and the driver's flush fences, each by its function.
#[test]
fn trace_show_symbols_names_the_kernel_functions_behind_pm_stores() {
    let w = Workload::parse(CREATE_WRITE_FSYNC, "symbols.toml").expect("workload");
    let f = factory(FsKind::Ext4);
    let dir = tempfile::tempdir().expect("tempdir");
    let (traced, table) = rt().block_on(async {
        let traced = trace_workload(&f, &w, dir.path(), "w")
            .await
            .expect("trace");
        let table = kernel_symbols(&f).await.expect("the guest's symbols");
        (traced, table)
    });
    assert!(table.len() > 10_000, "only {} code symbols", table.len());
    assert!(
        table.copy_routine().is_some(),
        "no {BLOCK_COPY_SYMBOL} in the guest's symbols"
    );
    // Read again: from the cache beside the saved state, the same table.
    let again = rt().block_on(kernel_symbols(&f)).expect("cached symbols");
    assert_eq!(again, table);
    let funcs = by_function(&traced.decoded.records, &table);
    let text = render_functions(&funcs);
    eprintln!("{text}");
    // Under fsdax neither ext4 nor jbd2 stores to PM itself: metadata and the journal
    // reach PM as block writes, copied by the pmem driver, and file data written with
    // write() is copied from user memory with the non-temporal user copy. Both are
    // named, and so are module functions (libnvdimm's flush).
    let named = |name: &str| funcs.iter().find(|c| c.function == name);
    let copy =
        named(BLOCK_COPY_SYMBOL).unwrap_or_else(|| panic!("no block copy in the trace:\n{text}"));
    assert!(copy.nt_stores >= 4096 / 8, "{copy:?}");
    let data = named("copy_to_nontemporal")
        .unwrap_or_else(|| panic!("no user-data copy in the trace:\n{text}"));
    assert_eq!(data.nt_stores, 4096 / 8, "the 4 KiB write: {data:?}");
    assert!(
        funcs
            .iter()
            .any(|c| c.function.ends_with(" [libnvdimm]") && c.fences > 0),
        "no module function named:\n{text}"
    );
    // No kernel PC is left without a name.
    assert!(
        funcs.iter().all(|c| !c.function.starts_with("0x")),
        "unnamed PCs:\n{text}"
    );
}

/// Coverage (the fuzzer's feedback): a trace records the blocks of file-system code it
/// ran, and the guest's symbols name them: ext4 and jbd2 for ext4, xfs for XFS, and the
/// DAX core for both.
#[test]
fn coverage_names_the_file_system_code_a_trace_ran() {
    let w = Workload::parse(CREATE_WRITE_FSYNC, "coverage.toml").expect("workload");
    for (fs, modules) in [
        (FsKind::Ext4, &["ext4", "jbd2"][..]),
        (FsKind::Xfs, &["xfs"][..]),
    ] {
        let f = factory(fs);
        let dir = tempfile::tempdir().expect("tempdir");
        let (traced, table) = rt().block_on(async {
            let table = kernel_symbols(&f).await.expect("the guest's symbols");
            let opts = pmcrash::trace::TraceOptions {
                coverage: Some(table.fs_code_ranges()),
                ..Default::default()
            };
            let traced = pmcrash::trace::trace_workload_with(&f, &w, dir.path(), "w", &opts)
                .await
                .expect("trace");
            (traced, table)
        });
        let blocks = traced.coverage.expect("coverage was asked for");
        let summary = pmcrash::symbols::CoverageSummary::of(&blocks, &table);
        eprintln!("{fs}: {summary}");
        for m in modules {
            let (b, n) = summary.modules.get(*m).copied().unwrap_or_default();
            assert!(
                b >= 20 && n >= 5,
                "{fs}: {m}: {b} blocks, {n} functions: {summary}"
            );
        }
        assert!(
            summary.functions.keys().any(|f| f.contains("dax")),
            "{fs}: no DAX function reached: {summary}"
        );
        // Every block lies in the ranges the tracer was given.
        let ranges = table.fs_code_ranges();
        assert!(blocks.addrs().iter().all(|a| ranges.contains(*a)));
    }
}
