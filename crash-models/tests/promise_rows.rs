//! One insta snapshot per row of the promise table (`docs/promises.md`): a small
//! workload whose last op is the row's op, and the promises in force while that op
//! runs and once it has returned. A change to what any op promises shows up here as
//! a snapshot diff, next to the row it changes.

use crash_models::ops::Workload;
use crash_models::promise::{promises, Promise, Promised};
use serde::Serialize;

#[derive(Serialize)]
struct Row {
    /// The promises while the last op is in progress.
    in_progress: Vec<String>,
    /// The promises once it returned.
    returned: Vec<String>,
}

fn show(p: &Promised) -> String {
    let what = match &p.promise {
        Promise::FileData {
            path,
            offset,
            bytes,
        } => format!(
            "file-data {path} @{offset}: {:?}",
            String::from_utf8_lossy(bytes)
        ),
        other => serde_json::to_string(other).expect("serialises"),
    };
    format!("op {} {} {:?}: {what}", p.op, p.source, p.class)
}

fn row(src: &str) -> Row {
    let w = Workload::parse(src, "row.toml").expect("the row's workload parses");
    let n = w.ops.len();
    Row {
        in_progress: promises(&w.ops, None, n - 1, Some(n - 1))
            .items
            .iter()
            .map(show)
            .collect(),
        returned: promises(&w.ops, None, n, None)
            .items
            .iter()
            .map(show)
            .collect(),
    }
}

const FILE: &str = r#"
[[ops]]
op = "mkdir"
path = "d"
[[ops]]
op = "open"
path = "d/f"
fd = "f"
create = true
[[ops]]
op = "pwrite"
fd = "f"
offset = 4096
data = "data"
[[ops]]
op = "setxattr"
path = "d/f"
name = "user.x"
value = "v"
"#;

const MAPPED: &str = r#"
[[ops]]
op = "open"
path = "m"
fd = "f"
create = true
[[ops]]
op = "ftruncate"
fd = "f"
len = 4096
[[ops]]
op = "mmap"
fd = "f"
map = "m"
len = 4096
kind = "KIND"
[[ops]]
op = "store"
map = "m"
offset = 0
data = "flushed"
[[ops]]
op = "store"
map = "m"
offset = 64
data = "unflushed"
[[ops]]
op = "flush"
map = "m"
offset = 0
"#;

#[test]
fn fsync_of_a_file() {
    insta::assert_json_snapshot!(row(&format!("{FILE}[[ops]]\nop=\"fsync\"\nfd=\"f\"\n")));
}

#[test]
fn fdatasync_of_a_file() {
    insta::assert_json_snapshot!(row(&format!("{FILE}[[ops]]\nop=\"fdatasync\"\nfd=\"f\"\n")));
}

#[test]
fn fsync_of_a_directory() {
    insta::assert_json_snapshot!(row(&format!(
        "{FILE}[[ops]]\nop=\"link\"\nfrom=\"d/f\"\nto=\"d/g\"\n[[ops]]\nop=\"mkfifo\"\npath=\"d/p\"\n\
         [[ops]]\nop=\"open\"\npath=\"d\"\nfd=\"d\"\ndirectory=true\n[[ops]]\nop=\"unlink\"\npath=\"d/g\"\n\
         [[ops]]\nop=\"fsync\"\nfd=\"d\"\n"
    )));
}

#[test]
fn fdatasync_of_a_directory() {
    insta::assert_json_snapshot!(row(&format!(
        "{FILE}[[ops]]\nop=\"open\"\npath=\"d\"\nfd=\"d\"\ndirectory=true\n[[ops]]\nop=\"fdatasync\"\nfd=\"d\"\n"
    )));
}

#[test]
fn msync_sync() {
    insta::assert_json_snapshot!(row(&format!(
        "{}[[ops]]\nop=\"msync\"\nmap=\"m\"\n",
        MAPPED.replace("KIND", "shared")
    )));
}

#[test]
fn msync_async() {
    insta::assert_json_snapshot!(row(&format!(
        "{}[[ops]]\nop=\"msync\"\nmap=\"m\"\nmode=\"async\"\n",
        MAPPED.replace("KIND", "shared")
    )));
}

#[test]
fn flush_and_fence_on_map_sync() {
    insta::assert_json_snapshot!(row(&format!(
        "{}[[ops]]\nop=\"fence\"\n",
        MAPPED.replace("KIND", "sync")
    )));
}

#[test]
fn flush_and_fence_on_a_shared_mapping() {
    insta::assert_json_snapshot!(row(&format!(
        "{}[[ops]]\nop=\"fence\"\n",
        MAPPED.replace("KIND", "shared")
    )));
}

#[test]
fn fmetadatasync() {
    insta::assert_json_snapshot!(row(&format!(
        "{}[[ops]]\nop=\"fence\"\n[[ops]]\nop=\"fmetadatasync\"\nfd=\"f\"\n",
        MAPPED.replace("KIND", "shared")
    )));
}

#[test]
fn rename() {
    insta::assert_json_snapshot!(row(&format!(
        "{FILE}[[ops]]\nop=\"fsync\"\nfd=\"f\"\n[[ops]]\nop=\"rename\"\nfrom=\"d/f\"\nto=\"d/g\"\n"
    )));
}

#[test]
fn rename_then_directory_fsync() {
    insta::assert_json_snapshot!(row(&format!(
        "{FILE}[[ops]]\nop=\"rename\"\nfrom=\"d/f\"\nto=\"d/g\"\n\
         [[ops]]\nop=\"open\"\npath=\"d\"\nfd=\"d\"\ndirectory=true\n[[ops]]\nop=\"fsync\"\nfd=\"d\"\n"
    )));
}

#[test]
fn sync() {
    insta::assert_json_snapshot!(row(&format!(
        "{FILE}[[ops]]\nop=\"symlink\"\ntarget=\"d/f\"\npath=\"l\"\n[[ops]]\nop=\"removexattr\"\npath=\"d/f\"\nname=\"user.x\"\n[[ops]]\nop=\"sync\"\n"
    )));
}

#[test]
fn syncfs() {
    insta::assert_json_snapshot!(row(&format!("{FILE}[[ops]]\nop=\"syncfs\"\nfd=\"f\"\n")));
}

#[test]
fn sync_file_range() {
    insta::assert_json_snapshot!(row(&format!(
        "{FILE}[[ops]]\nop=\"sync-file-range\"\nfd=\"f\"\n"
    )));
}

#[test]
fn a_later_write_withdraws_an_earlier_promise() {
    insta::assert_json_snapshot!(row(&format!(
        "{FILE}[[ops]]\nop=\"fsync\"\nfd=\"f\"\n[[ops]]\nop=\"pwrite\"\nfd=\"f\"\noffset=4098\ndata=\"XX\"\n"
    )));
}

#[test]
fn truncate_extends_with_promised_zeros() {
    insta::assert_json_snapshot!(row(&format!(
        "{FILE}[[ops]]\nop=\"truncate\"\npath=\"d/f\"\nlen=1099511627776\n[[ops]]\nop=\"fsync\"\nfd=\"f\"\n"
    )));
}
