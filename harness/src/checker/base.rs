//! The base image a checker guest's scratch file is put back to before each crash
//! image: held sparsely in memory, restored by rewriting only the pages that differ.

use super::{io_err, CheckerError, PAGE};
use crate::image::data_regions;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// The sparse base image: its non-zero regions (everything else is zero).
#[derive(Debug)]
pub(super) struct Base {
    pub(super) len: u64,
    regions: Vec<(u64, Vec<u8>)>,
}

impl Base {
    pub(super) fn read(path: &Path) -> Result<Base, CheckerError> {
        let f = File::open(path).map_err(io_err(format!("open {}", path.display())))?;
        let len = f
            .metadata()
            .map_err(io_err(format!("stat {}", path.display())))?
            .len();
        let mut regions: Vec<(u64, Vec<u8>)> = Vec::new();
        let mut buf = vec![0u8; 1 << 20];
        for (start, end) in data_regions(&f, 0, len) {
            let mut off = start;
            while off < end {
                let n = ((end - off) as usize).min(buf.len());
                f.read_exact_at(&mut buf[..n], off)
                    .map_err(io_err(format!("read {}", path.display())))?;
                for (i, page) in buf[..n].chunks(PAGE).enumerate() {
                    if page.iter().all(|b| *b == 0) {
                        continue;
                    }
                    let at = off + (i * PAGE) as u64;
                    match regions.last_mut() {
                        Some((o, v)) if *o + v.len() as u64 == at => v.extend_from_slice(page),
                        _ => regions.push((at, page.to_vec())),
                    }
                }
                off += n as u64;
            }
        }
        Ok(Base { len, regions })
    }

    /// The base bytes of `[off, off + out.len())`.
    pub(super) fn fill(&self, off: u64, out: &mut [u8]) {
        out.fill(0);
        let end = off + out.len() as u64;
        let mut i = self
            .regions
            .partition_point(|(o, v)| o + v.len() as u64 <= off);
        while let Some((o, v)) = self.regions.get(i) {
            if *o >= end {
                break;
            }
            let s = off.max(*o);
            let e = end.min(o + v.len() as u64);
            out[(s - off) as usize..(e - off) as usize]
                .copy_from_slice(&v[(s - o) as usize..(e - o) as usize]);
            i += 1;
        }
    }

    /// Make `file` (a former copy of some image) hold the base bytes, rewriting only
    /// the pages that differ. Holes in `file` read as zeros, and the base's non-zero
    /// pages were all written when the scratch copy was made, so only data regions
    /// need comparing. Returns the pages rewritten.
    pub(super) fn restore(&self, file: &File) -> std::io::Result<u64> {
        let mut cur = vec![0u8; 1 << 20];
        let mut want = vec![0u8; 1 << 20];
        let mut pages = 0;
        let mut regions = data_regions(file, 0, self.len);
        // Base pages the scratch file lacks (a fresh file) must be written too.
        for (o, v) in &self.regions {
            regions.push((*o, o + v.len() as u64));
        }
        regions.sort_unstable();
        let mut done_to = 0u64;
        for (start, end) in regions {
            let start = (start.max(done_to) / PAGE as u64) * PAGE as u64;
            let start = start.max(done_to);
            let mut off = start;
            while off < end {
                let n = ((end - off) as usize).min(cur.len());
                file.read_exact_at(&mut cur[..n], off)?;
                self.fill(off, &mut want[..n]);
                for (i, (c, w)) in cur[..n]
                    .chunks(PAGE)
                    .zip(want[..n].chunks(PAGE))
                    .enumerate()
                {
                    if c != w {
                        file.write_all_at(w, off + (i * PAGE) as u64)?;
                        pages += 1;
                    }
                }
                off += n as u64;
            }
            done_to = done_to.max(end);
        }
        Ok(pages)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crash_models::delta::CrashImage;
    use crash_models::model::ModelConfig;

    #[test]
    fn base_restore_rewrites_only_changed_pages() {
        let dir = tempfile::tempdir().unwrap();
        let base_p = dir.path().join("base");
        let f = File::create(&base_p).unwrap();
        f.set_len(1 << 20).unwrap();
        f.write_all_at(&[7u8; 100], 8192).unwrap();
        drop(f);
        let base = Base::read(&base_p).unwrap();
        assert_eq!(base.regions.len(), 1);
        let scratch = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join("s"))
            .unwrap();
        scratch.set_len(1 << 20).unwrap();
        // A fresh scratch file gets the base's page.
        assert_eq!(base.restore(&scratch).unwrap(), 1);
        let img = CrashImage::from_writes(
            &[(8192 + 50, vec![1, 2, 3]), (500_000, vec![9; 16])],
            ModelConfig::default(),
        );
        img.apply(&scratch).unwrap();
        scratch.write_all_at(b"guest", 700_000).unwrap();
        assert_eq!(base.restore(&scratch).unwrap(), 3);
        let mut got = vec![0u8; 1 << 20];
        scratch.read_exact_at(&mut got, 0).unwrap();
        let want = std::fs::read(&base_p).unwrap();
        assert!(got == want, "scratch differs from the base after restore");
        assert_eq!(base.restore(&scratch).unwrap(), 0);
    }
}
