//! Shared pieces of the example PM programs (`src/bin/`): a 4 KiB pool file mapped
//! with `MAP_SYNC` on the DAX file system, and its layout.
//!
//! Each program is both the workload (`run`) and its user checker (`check`): pmcrash
//! runs `run` in the traced guest (an `exec` op) and `check` after each recovery
//! (`[[checkers]]`); `check` exits 1 with the inconsistency in words.
//!
//! Layout, in 64-byte lines: line 0 is the header (`magic`, `commit`, `generation`),
//! lines 1-4 the log (32 words), lines 8-11 the home data (32 words).

use std::os::fd::AsRawFd;

/// The pool file, in the working directory (the mount point).
pub const POOL: &str = "pool.pm";
/// Its size.
pub const POOL_SIZE: usize = 4096;
/// Header word 0 once the pool is initialised.
pub const MAGIC: u64 = 0x504d_4352_4153_4831;
/// Words per data area (4 lines).
pub const WORDS: usize = 32;
/// Word index of the log's first word.
pub const LOG: usize = 8;
/// Word index of the home data's first word.
pub const HOME: usize = 64;
/// Header words.
pub const H_MAGIC: usize = 0;
/// See [`H_MAGIC`].
pub const H_COMMIT: usize = 1;
/// See [`H_MAGIC`].
pub const H_GEN: usize = 2;

/// The pool, mapped.
pub struct Pool {
    /// The mapping, as 512 words.
    pub words: *mut u64,
    _file: std::fs::File,
}

fn die(what: &str) -> ! {
    eprintln!("{what}: {}", std::io::Error::last_os_error());
    std::process::exit(2)
}

impl Pool {
    /// Create the pool (made durable: file, size and name) and map it `MAP_SYNC`.
    pub fn create() -> Pool {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(POOL)
            .unwrap_or_else(|_| die("create pool.pm"));
        file.set_len(POOL_SIZE as u64)
            .unwrap_or_else(|_| die("size pool.pm"));
        file.sync_all().unwrap_or_else(|_| die("fsync pool.pm"));
        std::fs::File::open(".")
            .and_then(|d| d.sync_all())
            .unwrap_or_else(|_| die("fsync the directory"));
        Pool::map(file, true)
    }

    /// Open an existing pool for checking; `None` when there is none (nothing was
    /// ever committed: consistent).
    pub fn open() -> Option<Pool> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(POOL)
            .ok()?;
        if file.metadata().ok()?.len() < POOL_SIZE as u64 {
            return None;
        }
        Some(Pool::map(file, false))
    }

    fn map(file: std::fs::File, sync: bool) -> Pool {
        let flags = if sync {
            libc::MAP_SHARED_VALIDATE | libc::MAP_SYNC
        } else {
            libc::MAP_SHARED
        };
        // SAFETY: a fresh shared mapping of the whole file.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                POOL_SIZE,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                file.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            die("mmap pool.pm (MAP_SYNC needs DAX)");
        }
        Pool {
            words: p.cast(),
            _file: file,
        }
    }

    /// Word `i`.
    pub fn get(&self, i: usize) -> u64 {
        assert!(i < POOL_SIZE / 8);
        // SAFETY: in bounds of the mapping.
        unsafe { self.words.add(i).read_volatile() }
    }

    /// Store word `i` (a plain, cached store).
    pub fn set(&self, i: usize, v: u64) {
        assert!(i < POOL_SIZE / 8);
        // SAFETY: in bounds of the mapping.
        unsafe { self.words.add(i).write_volatile(v) }
    }

    /// Store word `i` with a non-temporal store (`movnti`), as `pmem_memcpy_nodrain`
    /// does for large copies.
    pub fn set_nt(&self, i: usize, v: u64) {
        assert!(i < POOL_SIZE / 8);
        // SAFETY: in bounds of the mapping.
        unsafe {
            std::arch::asm!("movnti [{0}], {1}", in(reg) self.words.add(i), in(reg) v,
                options(nostack, preserves_flags))
        }
    }

    /// `clwb` the lines of words `[i, i + n)`, without a fence.
    pub fn flush(&self, i: usize, n: usize) {
        assert!(i + n <= POOL_SIZE / 8);
        // SAFETY: in bounds of the mapping.
        unsafe { pmcrash_marker::flush_range(self.words.add(i).cast(), n * 8) }
    }

    /// [`Pool::flush`] then `sfence`.
    pub fn persist(&self, i: usize, n: usize) {
        self.flush(i, n);
        pmcrash_marker::sfence();
    }
}

/// Fail a check with the reason (exit 1).
pub fn inconsistent(why: String) -> ! {
    println!("inconsistent: {why}");
    std::process::exit(1)
}

/// The pool's file offset of word `i`, for messages naming lines.
pub fn line_of(i: usize) -> String {
    format!(
        "line {} (pool.pm offset {:#x})",
        i * 8 / 64,
        i * 8 / 64 * 64
    )
}

/// `run` or `check`, from the first argument.
pub fn mode() -> String {
    std::env::args().nth(1).unwrap_or_else(|| {
        eprintln!("usage: PROGRAM run|check");
        std::process::exit(2)
    })
}
