//! Ground truth: snapshots of the PM backing file taken inside the traced run.
//!
//! Under TCG every guest store to the NVDIMM lands in QEMU's `MAP_SHARED` mapping of
//! the backing file at once, so reading that file from a plugin callback shows exactly
//! what PM holds at that instant with every store persisted. A snapshot is taken where
//! the trace says "after N records": before a fence or marker record is pushed (the
//! instruction has not run yet, every earlier instruction has completed), or at the end
//! of the callback that pushed record N - 1 (so after every record that instruction
//! made: a 16-byte store's two halves are one access). The file's format is
//! `crash_models`-independent and read by `pmcrash::trace::read_snapshots`:
//!
//! ```text
//! "PMSNAP01"
//! per snapshot: applied u64, ranges u32, per range: offset u64, len u32, bytes
//!               (the bytes that changed since the previous snapshot, or since the
//!               file as it was when the plugin started: the base image)
//! "END!" snapshots u64
//! ```
//!
//! The plugin keeps a shadow copy of the data regions (`SEEK_DATA`) and compares the
//! file with it at each snapshot, so a snapshot costs a read of the data regions, not
//! of the whole device, and the file holds only what changed.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

/// The file's magic.
pub const MAGIC: &[u8; 8] = b"PMSNAP01";
/// The trailer's magic.
pub const END: &[u8; 4] = b"END!";
/// Comparison granularity.
const BLOCK: usize = 64;
/// Read chunk.
const CHUNK: usize = 1 << 20;

/// An open snapshot stream.
pub struct Snapshots {
    pm: File,
    size: u64,
    out: BufWriter<File>,
    shadow: Vec<u8>,
    buf: Vec<u8>,
    /// Snapshots written.
    pub taken: u64,
}

/// Data regions of `f` (`SEEK_DATA`/`SEEK_HOLE`), clipped to `size`.
fn data_regions(f: &File, size: u64) -> std::io::Result<Vec<(u64, u64)>> {
    let fd = f.as_raw_fd();
    let mut out = Vec::new();
    let mut pos: i64 = 0;
    while (pos as u64) < size {
        // SAFETY: lseek on our own descriptor.
        let start = unsafe { libc::lseek(fd, pos, libc::SEEK_DATA) };
        if start < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENXIO) {
                break;
            }
            return Err(e);
        }
        // SAFETY: as above.
        let end = unsafe { libc::lseek(fd, start, libc::SEEK_HOLE) };
        if end < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let (s, e) = (start as u64, (end as u64).min(size));
        if s < e {
            out.push((s, e));
        }
        pos = end;
    }
    Ok(out)
}

impl Snapshots {
    /// Start a stream: remember the PM file as it is now (the base image).
    pub fn open(pm_file: &str, out: &str, size: u64) -> std::io::Result<Snapshots> {
        let pm = File::open(pm_file)?;
        let mut w = BufWriter::with_capacity(1 << 20, File::create(out)?);
        w.write_all(MAGIC)?;
        let mut s = Snapshots {
            pm,
            size,
            out: w,
            // Zeroed by calloc: untouched pages cost nothing.
            shadow: vec![0u8; size as usize],
            buf: vec![0u8; CHUNK],
            taken: 0,
        };
        for (a, b) in data_regions(&s.pm, size)? {
            s.pm.read_exact_at(&mut s.shadow[a as usize..b as usize], a)?;
        }
        Ok(s)
    }

    /// Write one snapshot labelled `applied` (records in the trace before it).
    pub fn take(&mut self, applied: u64) -> std::io::Result<()> {
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        for (a, b) in data_regions(&self.pm, self.size)? {
            let mut pos = a;
            while pos < b {
                let n = ((b - pos) as usize).min(CHUNK);
                let buf = &mut self.buf[..n];
                self.pm.read_exact_at(buf, pos)?;
                let shadow = &mut self.shadow[pos as usize..pos as usize + n];
                if buf != shadow {
                    for (i, (x, y)) in buf.chunks(BLOCK).zip(shadow.chunks_mut(BLOCK)).enumerate() {
                        if x != y {
                            y.copy_from_slice(x);
                            let off = pos + (i * BLOCK) as u64;
                            match ranges.last_mut() {
                                Some(r) if r.1 == off => r.1 = off + x.len() as u64,
                                _ => ranges.push((off, off + x.len() as u64)),
                            }
                        }
                    }
                }
                pos += n as u64;
            }
        }
        self.out.write_all(&applied.to_le_bytes())?;
        self.out.write_all(&(ranges.len() as u32).to_le_bytes())?;
        for (a, b) in ranges {
            self.out.write_all(&a.to_le_bytes())?;
            self.out.write_all(&((b - a) as u32).to_le_bytes())?;
            self.out.write_all(&self.shadow[a as usize..b as usize])?;
        }
        self.taken += 1;
        Ok(())
    }

    /// Write the trailer and sync.
    pub fn finish(mut self) -> std::io::Result<()> {
        self.out.write_all(END)?;
        self.out.write_all(&self.taken.to_le_bytes())?;
        let f = self.out.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()
    }
}
