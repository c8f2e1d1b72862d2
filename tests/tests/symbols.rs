//! Kernel symbols on a real trace: the guest kernel's `/proc/kallsyms` (Debian's
//! `System.map` is a placeholder) names the functions behind the traced stores,
//! flushes and fences, modules included.

use crash_models::ops::{FsKind, Workload};
use pmcrash::symbols::{kernel_symbols, BLOCK_COPY_SYMBOL};
use pmcrash::trace::{by_function, render_functions, trace_workload};
use pmcrash_e2e::{factory, rt};

/// A create, write and fsync on ext4: jbd2 commits the transaction, ext4 writes its
/// metadata, the pmem driver copies the journal blocks.
#[test]
fn trace_show_symbols_names_ext4_and_jbd2_functions() {
    let w = Workload::parse(
        r#"
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
"#,
        "symbols.toml",
    )
    .expect("workload");
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
    let stores_in = |suffix: &str| {
        funcs
            .iter()
            .filter(|c| c.function.ends_with(suffix) && c.stores > 0)
            .count()
    };
    assert!(stores_in("[ext4]") > 0, "no ext4 function stores:\n{text}");
    assert!(stores_in("[jbd2]") > 0, "no jbd2 function stores:\n{text}");
    let copy = funcs
        .iter()
        .find(|c| c.function == BLOCK_COPY_SYMBOL)
        .unwrap_or_else(|| panic!("no block copy in the trace:\n{text}"));
    assert!(copy.nt_stores > 0, "{copy:?}");
    // No kernel PC is left without a name.
    assert!(
        funcs.iter().all(|c| !c.function.starts_with("0x")),
        "unnamed PCs:\n{text}"
    );
}
