//! The programs of a workload as one file the harness hands the guest: each `exec`
//! op's binary (and each user checker), with the dynamic loader and shared libraries
//! of the dynamic ones. The harness encodes it; the guest reads it from `fw_cfg`
//! ([`FW_CFG_NAME`]) and unpacks it into its RAM root file system.
//!
//! Why `fw_cfg`: guests are restored from a VM state saved before any workload was
//! known, so the programs cannot be in the initramfs; the tracing guest takes no host
//! input during its run (its trace must be reproducible), and `fw_cfg` is read by the
//! guest itself, synchronously, as part of its instruction stream. It is already how
//! a scripted guest gets its script.
//!
//! Layout: [`MAGIC`], the header's length (u64 little-endian), the header (JSON:
//! programs and file list), then every file's bytes in list order.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The `fw_cfg` file name.
pub const FW_CFG_NAME: &str = "opt/pmcrash/programs";
/// The first bytes of a bundle.
pub const MAGIC: &[u8; 8] = b"PMCPROG1";
/// Where each program's own binary goes in the guest (`/pmcrash/bin/N/NAME`).
pub const GUEST_BIN_DIR: &str = "/pmcrash/bin";

/// One file to put into the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleFile {
    /// Absolute path in the guest.
    pub path: String,
    /// Permission bits.
    pub mode: u32,
    /// Contents.
    pub data: Vec<u8>,
}

/// The programs of a workload and every file they need.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bundle {
    /// The `program` of an `exec` op (or checker) as written, to its path in the guest.
    pub programs: BTreeMap<String, String>,
    /// The files: binaries, loaders, libraries (at their host paths).
    pub files: Vec<BundleFile>,
}

#[derive(Serialize, Deserialize)]
struct Header {
    programs: BTreeMap<String, String>,
    files: Vec<(String, u32, u64)>,
}

/// A bundle that does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad program bundle: {0}")]
pub struct BundleError(String);

impl Bundle {
    /// The bundle's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let header = Header {
            programs: self.programs.clone(),
            files: self
                .files
                .iter()
                .map(|f| (f.path.clone(), f.mode, f.data.len() as u64))
                .collect(),
        };
        let json = serde_json::to_vec(&header).expect("a header serialises");
        let mut out = Vec::with_capacity(
            16 + json.len() + self.files.iter().map(|f| f.data.len()).sum::<usize>(),
        );
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&(json.len() as u64).to_le_bytes());
        out.extend_from_slice(&json);
        for f in &self.files {
            out.extend_from_slice(&f.data);
        }
        out
    }

    /// Decode [`Bundle::encode`]'s bytes; any other input is an error, never a panic.
    pub fn decode(bytes: &[u8]) -> Result<Bundle, BundleError> {
        let bad = |m: &str| BundleError(m.to_owned());
        let rest = bytes.strip_prefix(MAGIC).ok_or_else(|| bad("no magic"))?;
        let (len, rest) = rest.split_at_checked(8).ok_or_else(|| bad("truncated"))?;
        let len = u64::from_le_bytes(len.try_into().expect("8 bytes"));
        let len = usize::try_from(len).map_err(|_| bad("header too long"))?;
        let (json, mut data) = rest.split_at_checked(len).ok_or_else(|| bad("truncated"))?;
        let header: Header =
            serde_json::from_slice(json).map_err(|e| BundleError(format!("header: {e}")))?;
        let mut files = Vec::with_capacity(header.files.len().min(4096));
        for (path, mode, len) in header.files {
            if !path.starts_with('/') || path.split('/').any(|c| c == "..") {
                return Err(BundleError(format!("`{path}` is not an absolute path")));
            }
            let len = usize::try_from(len).map_err(|_| bad("file too long"))?;
            let (body, tail) = data
                .split_at_checked(len)
                .ok_or_else(|| BundleError(format!("{path} is truncated")))?;
            files.push(BundleFile {
                path,
                mode,
                data: body.to_vec(),
            });
            data = tail;
        }
        if !data.is_empty() {
            return Err(bad("bytes after the last file"));
        }
        Ok(Bundle {
            programs: header.programs,
            files,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_damage() {
        let b = Bundle {
            programs: [("./a".to_owned(), "/pmcrash/bin/0/a".to_owned())].into(),
            files: vec![
                BundleFile {
                    path: "/pmcrash/bin/0/a".into(),
                    mode: 0o755,
                    data: b"\x7fELF...".to_vec(),
                },
                BundleFile {
                    path: "/lib/x86_64-linux-gnu/libc.so.6".into(),
                    mode: 0o644,
                    data: vec![],
                },
            ],
        };
        let bytes = b.encode();
        assert_eq!(Bundle::decode(&bytes).unwrap(), b);
        for cut in 0..bytes.len() {
            assert!(Bundle::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(Bundle::decode(&longer).is_err());
    }
}
