//! Finding and reading workload files.

use crash_models::ops::{Workload, WorkloadError};
use std::path::{Path, PathBuf};

/// A workload and where it came from.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The path as given (or `builtin:NAME`).
    pub name: String,
    /// The parsed workload.
    pub workload: Workload,
}

impl Loaded {
    /// The file name without directory and extension, for output file names.
    pub fn stem(&self) -> String {
        Path::new(&self.name)
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "workload".into())
    }
}

/// Why workloads could not be loaded. Displayed as `file:line:col: field: message`.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Not readable.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Not a valid workload.
    #[error(transparent)]
    Invalid(#[from] WorkloadError),
    /// A directory with no workloads.
    #[error("{0}: no .toml workloads in this directory")]
    Empty(PathBuf),
}

/// Load files, and every `*.toml` (sorted) in directories.
pub fn load(paths: &[PathBuf]) -> Result<Vec<Loaded>, LoadError> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(p)
                .map_err(|source| LoadError::Io {
                    path: p.clone(),
                    source,
                })?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| f.extension().is_some_and(|x| x == "toml"))
                .collect();
            files.sort();
            if files.is_empty() {
                return Err(LoadError::Empty(p.clone()));
            }
            for f in files {
                out.push(load_file(&f)?);
            }
        } else {
            out.push(load_file(p)?);
        }
    }
    Ok(out)
}

fn load_file(path: &Path) -> Result<Loaded, LoadError> {
    let src = std::fs::read_to_string(path).map_err(|source| LoadError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let name = path.display().to_string();
    let workload = Workload::parse(&src, &name)?;
    Ok(Loaded { name, workload })
}

/// The smoke corpus, compiled in so `pmcrash demo` works from any directory.
pub fn builtin_smoke() -> Vec<Loaded> {
    [
        (
            "corpora/smoke/basic.toml",
            include_str!("../../corpora/smoke/basic.toml"),
        ),
        (
            "corpora/smoke/namespace.toml",
            include_str!("../../corpora/smoke/namespace.toml"),
        ),
    ]
    .into_iter()
    .map(|(name, src)| Loaded {
        name: name.to_owned(),
        workload: Workload::parse(src, name).expect("the built-in corpus is valid"),
    })
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_corpus_parses() {
        assert_eq!(builtin_smoke().len(), 2);
    }

    #[test]
    fn directory_loading_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            load(&[dir.path().to_path_buf()]),
            Err(LoadError::Empty(_))
        ));
        std::fs::write(dir.path().join("b.toml"), "[[ops]]\nop = \"sync\"\n").unwrap();
        std::fs::write(dir.path().join("a.toml"), "[[ops]]\nop = \"sync\"\n").unwrap();
        let l = load(&[dir.path().to_path_buf()]).unwrap();
        assert!(l[0].name.ends_with("a.toml") && l[1].name.ends_with("b.toml"));
        std::fs::write(
            dir.path().join("c.toml"),
            "[[ops]]\nop = \"sync\"\n\n[[ops]]\nop = \"fsync\"\nfd = 3\n",
        )
        .unwrap();
        let e = load(&[dir.path().to_path_buf()]).unwrap_err().to_string();
        assert!(e.contains("c.toml:6:6: ops[1].fd"), "{e}");
    }
}
