//! libpmemobj (PMDK) on the DAX file system: a root object of a generation and 32
//! words that must all equal it.
//!
//! - `create`: makes the pool as `pool.tmp` and renames it to `pool.obj` once
//!   `pmemobj_create` returned (a half-made pool is never `pool.obj`).
//! - `run`: three libpmemobj transactions, each setting the generation and all 32
//!   words (correct: expected ok in every crash state).
//! - `run-nodrain`: the same update by hand, the words copied with
//!   `pmemobj_memcpy(.., PMEMOBJ_F_MEM_NONTEMPORAL | PMEMOBJ_F_MEM_NODRAIN)` (libpmem's
//!   `pmem_memcpy_nodrain`) and then the generation persisted as a commit flag, with
//!   no drain before it: the flag can reach PM before the words (expected: a finding,
//!   at the `flag_flushed` marker).
//! - `check`: opens the pool (libpmemobj recovers an interrupted transaction) and
//!   exits 1 when a word differs from the generation.

use std::ffi::{c_char, c_int, c_void, CStr, CString};

const POOL: &str = "pool.obj";
const TMP: &str = "pool.tmp";
const LAYOUT: &str = "pmcrash-pmemobj-tx";
/// `PMEMOBJ_MIN_POOL`.
const POOL_SIZE: usize = 8 << 20;
const WORDS: usize = 32;
const PMEMOBJ_F_MEM_NODRAIN: u32 = 1 << 0;
const PMEMOBJ_F_MEM_NONTEMPORAL: u32 = 1 << 1;

#[repr(C)]
#[derive(Clone, Copy)]
struct PmemOid {
    pool_uuid_lo: u64,
    off: u64,
}

#[repr(C)]
struct Root {
    generation: u64,
    words: [u64; WORDS],
}

type Pop = *mut c_void;

#[link(name = "pmemobj")]
extern "C" {
    fn pmemobj_create(path: *const c_char, layout: *const c_char, size: usize, mode: u32) -> Pop;
    fn pmemobj_open(path: *const c_char, layout: *const c_char) -> Pop;
    fn pmemobj_close(pop: Pop);
    fn pmemobj_root(pop: Pop, size: usize) -> PmemOid;
    fn pmemobj_direct(oid: PmemOid) -> *mut c_void;
    fn pmemobj_ctl_set(pop: Pop, name: *const c_char, arg: *mut c_void) -> c_int;
    fn pmemobj_errormsg() -> *const c_char;
    fn pmemobj_tx_begin(pop: Pop, env: *mut c_void, ...) -> c_int;
    fn pmemobj_tx_add_range_direct(ptr: *const c_void, size: usize) -> c_int;
    fn pmemobj_tx_commit();
    fn pmemobj_tx_end() -> c_int;
    fn pmemobj_memcpy(
        pop: Pop,
        dest: *mut c_void,
        src: *const c_void,
        len: usize,
        flags: u32,
    ) -> *mut c_void;
    fn pmemobj_flush(pop: Pop, addr: *const c_void, len: usize);
    fn pmemobj_drain(pop: Pop);
}

fn fail(what: &str) -> ! {
    // SAFETY: libpmemobj's thread-local message, a C string.
    let msg = unsafe { CStr::from_ptr(pmemobj_errormsg()) };
    eprintln!("{what}: {}", msg.to_string_lossy());
    std::process::exit(2)
}

fn c(s: &str) -> CString {
    CString::new(s).expect("no NUL")
}

fn root(pop: Pop) -> *mut Root {
    // SAFETY: a pool handle from pmemobj_create/open; the root object is zeroed at
    // first allocation and at least `size_of::<Root>()` bytes.
    let r = unsafe { pmemobj_direct(pmemobj_root(pop, std::mem::size_of::<Root>())) };
    if r.is_null() {
        fail("pmemobj_root");
    }
    r.cast()
}

fn fsync_dir() {
    std::fs::File::open(".")
        .and_then(|d| d.sync_all())
        .unwrap_or_else(|e| {
            eprintln!("fsync .: {e}");
            std::process::exit(2)
        });
}

fn create() {
    let _ = std::fs::remove_file(TMP);
    // The shutdown-state check needs the NVDIMM's unsafe-shutdown count, which an
    // emulated NVDIMM does not have.
    let mut off: c_int = 0;
    // SAFETY: a valid ctl name and an int argument, as the ctl documents.
    if unsafe {
        pmemobj_ctl_set(
            std::ptr::null_mut(),
            c("sds.at_create").as_ptr(),
            (&mut off as *mut c_int).cast(),
        )
    } != 0
    {
        fail("pmemobj_ctl_set sds.at_create");
    }
    // SAFETY: C strings that outlive the call.
    let pop = unsafe { pmemobj_create(c(TMP).as_ptr(), c(LAYOUT).as_ptr(), POOL_SIZE, 0o666) };
    if pop.is_null() {
        fail("pmemobj_create pool.tmp");
    }
    root(pop);
    // SAFETY: the handle from pmemobj_create, not used afterwards.
    unsafe { pmemobj_close(pop) };
    std::fs::File::open(TMP)
        .and_then(|f| f.sync_all())
        .and_then(|()| std::fs::rename(TMP, POOL))
        .unwrap_or_else(|e| {
            eprintln!("publish {POOL}: {e}");
            std::process::exit(2)
        });
    fsync_dir();
    println!("{POOL} created");
}

fn open() -> Option<Pop> {
    if !std::path::Path::new(POOL).exists() {
        return None;
    }
    // SAFETY: C strings that outlive the call.
    let pop = unsafe { pmemobj_open(c(POOL).as_ptr(), c(LAYOUT).as_ptr()) };
    if pop.is_null() {
        fail("pmemobj_open pool.obj");
    }
    Some(pop)
}

fn run(transactional: bool) {
    let pop = open().unwrap_or_else(|| {
        eprintln!("no {POOL}: run `create` first");
        std::process::exit(2)
    });
    let r = root(pop);
    for g in 1..=3u64 {
        pmcrash_marker::mark!("tx_begin", g);
        if transactional {
            // SAFETY: no jmp_buf (errors are return values), TX_PARAM_NONE (0) ends
            // the parameters; the range is the root object, inside the pool.
            unsafe {
                if pmemobj_tx_begin(pop, std::ptr::null_mut(), 0 as c_int) != 0 {
                    fail("pmemobj_tx_begin");
                }
                if pmemobj_tx_add_range_direct(r.cast(), std::mem::size_of::<Root>()) != 0 {
                    fail("pmemobj_tx_add_range_direct");
                }
                (&raw mut (*r).generation).write_volatile(g);
                for w in 0..WORDS {
                    (&raw mut (*r).words[w]).write_volatile(g);
                }
                pmemobj_tx_commit();
                pmcrash_marker::mark!("tx_commit", g);
                if pmemobj_tx_end() != 0 {
                    fail("pmemobj_tx_end");
                }
            }
        } else {
            let src = [g; WORDS];
            // SAFETY: the root object's fields, inside the pool.
            unsafe {
                pmemobj_memcpy(
                    pop,
                    (&raw mut (*r).words).cast(),
                    src.as_ptr().cast(),
                    std::mem::size_of_val(&src),
                    PMEMOBJ_F_MEM_NONTEMPORAL | PMEMOBJ_F_MEM_NODRAIN,
                );
                // The bug: no pmemobj_drain() here.
                (&raw mut (*r).generation).write_volatile(g);
                pmemobj_flush(pop, (&raw const (*r).generation).cast(), 8);
                // The crash point that matters: the flag's line is on its way, and
                // without a drain before it so are the copies.
                pmcrash_marker::mark!("flag_flushed", g);
                pmemobj_drain(pop);
            }
        }
        pmcrash_marker::mark!("tx_end", g);
    }
    // SAFETY: not used afterwards.
    unsafe { pmemobj_close(pop) };
    println!("3 updates committed");
}

fn check() {
    let Some(pop) = open() else {
        println!("no {POOL}");
        return;
    };
    let r = root(pop);
    // SAFETY: the recovered root object.
    let (g, words) = unsafe { ((*r).generation, (*r).words) };
    if let Some(w) = (0..WORDS).find(|w| words[*w] != g) {
        println!(
            "inconsistent: generation {g} but word {w} holds {} (root object offset {:#x})",
            words[w],
            8 + w * 8
        );
        std::process::exit(1)
    }
    // SAFETY: not used afterwards.
    unsafe { pmemobj_close(pop) };
    println!("generation {g} consistent");
}

fn main() {
    match std::env::args().nth(1).as_deref() {
        Some("create") => create(),
        Some("run") => run(true),
        Some("run-nodrain") => run(false),
        Some("check") => check(),
        other => {
            eprintln!("unknown mode {other:?}: expected create, run, run-nodrain or check");
            std::process::exit(2)
        }
    }
}
