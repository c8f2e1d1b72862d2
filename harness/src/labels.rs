//! What each dropped line is: the file-system structure a PM line belongs to, read from
//! an image with the file system's own tools (ext4: `dumpe2fs` for the layout,
//! `debugfs` `icheck`/`ncheck`/`stat` for owners and extent maps; XFS: `xfs_db`
//! `blockget`/`blockuse`/`ncheck`/`bmap`), and the folded display of a finding's lines.
//!
//! Which image: the workload's final image (the traced guest's PM file after the last
//! op and the unmount). A crash-point image is the wrong one to ask: at a crash point
//! the metadata that says which file a block belongs to is often only in the journal
//! (ext4 checkpoints it later; `debugfs` and `xfs_db` read the in-place structures),
//! so a data block being written would read as free. After the unmount every
//! structure is in place. Fixed structures (superblocks, descriptors, bitmaps, inode
//! tables, the journal or log) never move, so they are right either way; a block that
//! a later op freed reads as free in the final image, and is labelled so.
//!
//! Cost: per image, at most three short processes for ext4 (`dumpe2fs`, `debugfs`
//! twice) and two `xfs_db` sessions for XFS (plus a sparse copy of the file-system
//! area, since `xfs_db` cannot open a file at an offset), whatever the number of lines:
//! the second session asks about the inodes the first one found. Only the lines of
//! reported findings are labelled.
//!
//! The parsers are pure functions over the tools' text, unit-tested on output captured
//! from real images (`labels/` fixtures).

use crash_models::ops::FsKind;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;
use std::process::Command;

/// What a PM line belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum LineLabel {
    /// Before the file system: the fsdax namespace's own area (its info block).
    Namespace,
    /// A superblock (`which`: `ext4 superblock`, `ext4 backup superblock (group 1)`,
    /// `XFS superblock (AG 0)`).
    Superblock {
        /// Which.
        which: String,
    },
    /// Group descriptors (ext4, with the reserved GDT blocks) or an XFS allocation
    /// group header (`XFS AGF (AG 2)`).
    GroupDescriptor {
        /// Which.
        which: String,
    },
    /// A block or inode bitmap of a group (ext4).
    Bitmap {
        /// `block` or `inode`.
        of: String,
        /// The group.
        group: u64,
    },
    /// An inode in an inode table (ext4) or inode chunk (XFS).
    InodeTable {
        /// The inode number.
        inode: u64,
        /// Its path, when it has one.
        #[serde(skip_serializing_if = "Option::is_none")]
        path: Option<String>,
    },
    /// A directory's block.
    Directory {
        /// The directory's inode.
        inode: u64,
        /// Its path.
        #[serde(skip_serializing_if = "Option::is_none")]
        path: Option<String>,
        /// Byte offset in the directory.
        offset: u64,
    },
    /// A block of the jbd2 journal (ext4) or of the log (XFS).
    Journal {
        /// `jbd2 journal` or `XFS log`.
        log: String,
        /// The block number inside the journal or log (0 is jbd2's journal superblock).
        block: u64,
    },
    /// A regular file's data.
    FileData {
        /// The file's inode.
        inode: u64,
        /// Its path.
        #[serde(skip_serializing_if = "Option::is_none")]
        path: Option<String>,
        /// Byte offset of the line in the file.
        offset: u64,
    },
    /// Other file-system metadata (`extent tree block of /a`, `XFS btbno`).
    Metadata {
        /// What it is, in the tool's words.
        what: String,
        /// The inode it belongs to, if any.
        #[serde(skip_serializing_if = "Option::is_none")]
        inode: Option<u64>,
    },
    /// A block in no file and no structure in the labelled image.
    Free {
        /// The file-system block.
        block: u64,
    },
}

impl LineLabel {
    /// What lines folded under one row share: the structure, without offsets
    /// (consecutive lines of one journal write, one file, one inode fold together).
    pub fn fold_key(&self) -> String {
        match self {
            LineLabel::Namespace => "namespace".into(),
            LineLabel::Superblock { which } => format!("sb {which}"),
            LineLabel::GroupDescriptor { which } => format!("gd {which}"),
            LineLabel::Bitmap { of, group } => format!("bitmap {of} {group}"),
            LineLabel::InodeTable { inode, .. } => format!("inode {inode}"),
            LineLabel::Directory { inode, .. } => format!("dir {inode}"),
            LineLabel::Journal { log, .. } => format!("journal {log}"),
            LineLabel::FileData { inode, .. } => format!("data {inode}"),
            LineLabel::Metadata { what, inode } => format!("meta {what} {inode:?}"),
            LineLabel::Free { .. } => "free".into(),
        }
    }

    /// The words after "and N more lines" for lines folded under this label.
    pub fn fold_phrase(&self) -> String {
        match self {
            LineLabel::Journal { log, .. } if log.contains("jbd2") => {
                "of the same journal write".into()
            }
            LineLabel::Journal { .. } => "of the same log write".into(),
            LineLabel::FileData { path, inode, .. } => match path {
                Some(p) => format!("of {p}'s data"),
                None => format!("of inode {inode}'s data"),
            },
            LineLabel::InodeTable { inode, .. } => format!("of inode {inode}"),
            LineLabel::Directory { .. } => "of the same directory".into(),
            LineLabel::Superblock { which } | LineLabel::GroupDescriptor { which } => {
                format!("of the {which}")
            }
            LineLabel::Bitmap { of, group } => format!("of the {of} bitmap of group {group}"),
            LineLabel::Metadata { what, .. } => format!("of the same {what}"),
            LineLabel::Free { .. } => "of free blocks".into(),
            LineLabel::Namespace => "of the fsdax namespace area".into(),
        }
    }
}

impl fmt::Display for LineLabel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = |p: &Option<String>, inode: u64| match p {
            Some(p) => format!("{p} (inode {inode})"),
            None => format!("inode {inode}"),
        };
        match self {
            LineLabel::Namespace => write!(f, "fsdax namespace area (before the file system)"),
            LineLabel::Superblock { which } | LineLabel::GroupDescriptor { which } => {
                write!(f, "{which}")
            }
            LineLabel::Bitmap { of, group } => write!(f, "{of} bitmap of group {group}"),
            LineLabel::InodeTable { inode, path: p } => {
                write!(f, "inode table: {}", path(p, *inode))
            }
            LineLabel::Directory {
                inode,
                path: p,
                offset,
            } => write!(
                f,
                "directory block of {} at offset {offset}",
                path(p, *inode)
            ),
            LineLabel::Journal { log, block } if log.contains("jbd2") && *block == 0 => {
                write!(f, "{log} superblock (journal block 0)")
            }
            LineLabel::Journal { log, block } => write!(f, "{log} block {block}"),
            LineLabel::FileData {
                inode,
                path: p,
                offset,
            } => write!(f, "file data: {} offset {offset}", path(p, *inode)),
            LineLabel::Metadata { what, inode } => match inode {
                Some(i) => write!(f, "{what} of inode {i}"),
                None => write!(f, "{what}"),
            },
            LineLabel::Free { block } => {
                write!(f, "free block {block} (in no file at the end of the run)")
            }
        }
    }
}

/// Why lines could not be labelled.
#[derive(Debug, thiserror::Error)]
pub enum LabelError {
    /// A tool is missing or failed.
    #[error("{tool}: {message} (the labels need e2fsprogs and xfsprogs: `pmcrash setup`)")]
    Tool {
        /// The tool.
        tool: &'static str,
        /// What went wrong.
        message: String,
    },
    /// Its output was not what the parser knows.
    #[error("{tool} output: {message}")]
    Parse {
        /// The tool.
        tool: &'static str,
        /// What was unexpected.
        message: String,
    },
    /// Reading or copying the image.
    #[error("{what}: {source}")]
    Io {
        /// What was done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
}

fn run(tool: &'static str, args: &[&str]) -> Result<String, LabelError> {
    let out = Command::new(tool)
        .args(args)
        .output()
        .map_err(|e| LabelError::Tool {
            tool,
            message: format!("cannot run it: {e}"),
        })?;
    if !out.status.success() {
        return Err(LabelError::Tool {
            tool,
            message: format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Label the lines at PM offsets `offsets` of `image` (a PM file whose file system
/// starts `data_offset` bytes in), in order.
pub fn label_lines(
    fs: FsKind,
    image: &Path,
    data_offset: u64,
    offsets: &[u64],
) -> Result<Vec<LineLabel>, LabelError> {
    match fs {
        FsKind::Ext4 => label_ext4(image, data_offset, offsets),
        FsKind::Xfs => label_xfs(image, data_offset, offsets),
    }
}

/// Label the dropped lines of every finding of `report` from `image` (the workload's
/// final PM image), one batch of tool runs for all of them, and note the time in
/// `report.timings.label_ms`. Lines already labelled are asked again (cheap).
pub fn label_report(
    fs: FsKind,
    image: &Path,
    report: &mut crate::report::WorkloadReport,
) -> Result<(), LabelError> {
    let t = std::time::Instant::now();
    let offsets: Vec<u64> = report
        .findings
        .iter()
        .flat_map(|f| f.dropped_lines.iter().map(|l| l.pm_offset))
        .collect::<BTreeSet<u64>>()
        .into_iter()
        .collect();
    if offsets.is_empty() {
        return Ok(());
    }
    let labels = label_lines(fs, image, crate::image::FSDAX_DATA_OFFSET, &offsets)?;
    let by: BTreeMap<u64, LineLabel> = offsets.into_iter().zip(labels).collect();
    for f in &mut report.findings {
        for l in &mut f.dropped_lines {
            l.label = by.get(&l.pm_offset).cloned();
        }
    }
    report.timings.label_ms = t.elapsed().as_millis() as u64;
    Ok(())
}

/// The workload's final image made from a trace (every store applied to the base
/// image), in a temporary file, for callers that have no traced final image (a
/// bundle keeps only the base image and the trace).
pub fn final_image_from_trace(
    trace: &crash_models::trace::Trace,
    base_image: &Path,
) -> Result<tempfile::NamedTempFile, LabelError> {
    let io = |what: &str| {
        let what = what.to_owned();
        move |source| LabelError::Io { what, source }
    };
    // The base file copied (sparse where the file system allows) and the trace's delta
    // written over it: an XFS image is hundreds of MiB, never held in memory.
    let f = tempfile::NamedTempFile::new().map_err(io("make a temporary file"))?;
    std::fs::copy(base_image, f.path()).map_err(io(&format!("copy {}", base_image.display())))?;
    crate::trace::all_persisted_delta(
        &trace.records,
        trace.header.line_size,
        trace.records.len() as u64,
    )
    .apply(f.as_file())
    .map_err(io("write the final image"))?;
    Ok(f)
}

/// Label `lines` (e.g. `pmcrash minimize`'s minimal lines) from `image`, in place.
pub fn label_dropped(
    fs: FsKind,
    image: &Path,
    lines: &mut [crate::report::DroppedLine],
) -> Result<(), LabelError> {
    let offsets: Vec<u64> = lines.iter().map(|l| l.pm_offset).collect();
    let labels = label_lines(fs, image, crate::image::FSDAX_DATA_OFFSET, &offsets)?;
    for (l, x) in lines.iter_mut().zip(labels) {
        l.label = Some(x);
    }
    Ok(())
}

// ---------------------------------------------------------------- ext4

/// An ext4 file system's fixed structures, from `dumpe2fs`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ext4Layout {
    /// Block size.
    pub block_size: u64,
    /// Inode size.
    pub inode_size: u64,
    /// Inodes per group.
    pub inodes_per_group: u64,
    /// The journal's inode.
    pub journal_inode: Option<u64>,
    /// (first block, last block, label) of each fixed structure.
    pub regions: Vec<(u64, u64, LineLabel)>,
    /// (group, first block of its inode table, last block).
    pub inode_tables: Vec<(u64, u64, u64)>,
}

fn range_of(s: &str) -> Option<(u64, u64)> {
    let s = s.trim();
    let s = s.split_whitespace().next()?;
    match s.split_once('-') {
        Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
        None => {
            let a = s.parse().ok()?;
            Some((a, a))
        }
    }
}

/// Parse `dumpe2fs` output (header and groups).
pub fn parse_dumpe2fs(text: &str) -> Result<Ext4Layout, LabelError> {
    let err = |m: String| LabelError::Parse {
        tool: "dumpe2fs",
        message: m,
    };
    let mut l = Ext4Layout::default();
    let mut group = 0u64;
    for line in text.lines() {
        let t = line.trim();
        let field = |name: &str| {
            t.strip_prefix(name)
                .and_then(|r| r.trim().trim_start_matches(':').trim().parse::<u64>().ok())
        };
        if let Some(v) = field("Block size:") {
            l.block_size = v;
        } else if let Some(v) = field("Inode size:") {
            l.inode_size = v;
        } else if let Some(v) = field("Inodes per group:") {
            l.inodes_per_group = v;
        } else if let Some(v) = field("Journal inode:") {
            l.journal_inode = Some(v);
        } else if let Some(rest) = t.strip_prefix("Group ") {
            if let Some(n) = rest.split(':').next().and_then(|n| n.trim().parse().ok()) {
                group = n;
            }
        }
        for part in t.split(", ") {
            let part = part.trim();
            let mut add = |prefix: &str, label: LineLabel| {
                if let Some(r) = part.strip_prefix(prefix).and_then(range_of) {
                    l.regions.push((r.0, r.1, label));
                }
            };
            add(
                "Primary superblock at ",
                LineLabel::Superblock {
                    which: "ext4 superblock".into(),
                },
            );
            add(
                "Backup superblock at ",
                LineLabel::Superblock {
                    which: format!("ext4 backup superblock (group {group})"),
                },
            );
            add(
                "Group descriptors at ",
                LineLabel::GroupDescriptor {
                    which: format!("ext4 group descriptors (copy in group {group})"),
                },
            );
            add(
                "Reserved GDT blocks at ",
                LineLabel::GroupDescriptor {
                    which: format!("ext4 reserved GDT blocks (group {group})"),
                },
            );
            add(
                "Block bitmap at ",
                LineLabel::Bitmap {
                    of: "block".into(),
                    group,
                },
            );
            add(
                "Inode bitmap at ",
                LineLabel::Bitmap {
                    of: "inode".into(),
                    group,
                },
            );
            if let Some(r) = part.strip_prefix("Inode table at ").and_then(range_of) {
                l.inode_tables.push((group, r.0, r.1));
            }
        }
    }
    if l.block_size == 0 || l.inode_size == 0 || l.inodes_per_group == 0 {
        return Err(err("no block size, inode size or inodes per group".into()));
    }
    Ok(l)
}

/// Parse `debugfs` output of a `-f` command file into (command, output) pairs: each
/// command is echoed as `debugfs: COMMAND`.
pub fn split_debugfs(text: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        if let Some(cmd) = line.strip_prefix("debugfs: ") {
            out.push((cmd.to_owned(), String::new()));
        } else if let Some((_, body)) = out.last_mut() {
            body.push_str(line);
            body.push('\n');
        }
    }
    out
}

/// `icheck` output: block → inode (None: `<block not found>`).
pub fn parse_icheck(body: &str) -> BTreeMap<u64, Option<u64>> {
    body.lines()
        .filter_map(|l| {
            let mut it = l.split('\t');
            let b = it.next()?.trim().parse().ok()?;
            let i = it.next()?.trim();
            Some((b, i.parse().ok()))
        })
        .collect()
}

/// `ncheck` output (debugfs: `INODE\tPATH`; xfs_db: `  INODE PATH`): inode → path,
/// with one leading `/` (debugfs prints `//a`).
pub fn parse_ncheck(body: &str) -> BTreeMap<u64, String> {
    let mut m = BTreeMap::new();
    for l in body.lines() {
        let t = l.trim_start();
        let Some((n, p)) = t.split_once(['\t', ' ']) else {
            continue;
        };
        let Ok(n) = n.parse::<u64>() else { continue };
        let p = p.trim();
        m.entry(n)
            .or_insert_with(|| format!("/{}", p.trim_start_matches('/')));
    }
    m
}

/// An ext4 inode from `stat`: its type and its block map.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ext4Inode {
    /// `regular`, `directory`, `symlink`, ...
    pub kind: String,
    /// (first logical block, first physical block, blocks) of each data run.
    pub runs: Vec<(u64, u64, u64)>,
    /// Physical blocks of the block map itself (extent tree or indirect blocks), with
    /// what they are.
    pub map_blocks: Vec<(u64, String)>,
}

/// Parse one `stat <N>` body.
pub fn parse_stat(body: &str) -> Ext4Inode {
    let mut ino = Ext4Inode::default();
    if let Some(t) = body
        .lines()
        .find_map(|l| l.split("Type: ").nth(1))
        .and_then(|r| r.split_whitespace().next())
    {
        ino.kind = t.to_owned();
    }
    let map = body
        .split_once("EXTENTS:")
        .or_else(|| body.split_once("BLOCKS:"))
        .map(|(_, m)| m)
        .unwrap_or("");
    for item in map.split([',', '\n']) {
        let item = item.trim();
        let Some((l, p)) = item.strip_prefix('(').and_then(|r| r.split_once("):")) else {
            continue;
        };
        let Some((p0, p1)) = range_of(p) else {
            continue;
        };
        match range_of(l) {
            Some((l0, _)) => ino.runs.push((l0, p0, p1 - p0 + 1)),
            None => {
                let what = if l.starts_with("ETB") {
                    "extent tree block".to_owned()
                } else {
                    format!("{l} indirect block")
                };
                for b in p0..=p1 {
                    ino.map_blocks.push((b, what.clone()));
                }
            }
        }
    }
    ino
}

fn label_ext4(
    image: &Path,
    data_offset: u64,
    offsets: &[u64],
) -> Result<Vec<LineLabel>, LabelError> {
    let dev = format!("{}?offset={data_offset}", image.display());
    let layout = parse_dumpe2fs(&run("dumpe2fs", &[&dev])?)?;
    let bs = layout.block_size;
    let blocks: BTreeSet<u64> = offsets
        .iter()
        .filter(|&&o| o >= data_offset)
        .map(|&o| (o - data_offset) / bs)
        .collect();
    let dir = tempfile::tempdir().map_err(|e| LabelError::Io {
        what: "make a temporary directory".into(),
        source: e,
    })?;
    let debugfs = |cmds: &str| -> Result<Vec<(String, String)>, LabelError> {
        let f = dir.path().join("cmds");
        std::fs::write(&f, cmds).map_err(|e| LabelError::Io {
            what: format!("write {}", f.display()),
            source: e,
        })?;
        Ok(split_debugfs(&run(
            "debugfs",
            &["-f", &f.to_string_lossy(), &dev],
        )?))
    };
    let mut owners = BTreeMap::new();
    if !blocks.is_empty() {
        // debugfs reads its command file a line of at most a few KiB at a time.
        let list: Vec<String> = blocks.iter().map(u64::to_string).collect();
        let cmds: String = list
            .chunks(200)
            .map(|c| format!("icheck {}\n", c.join(" ")))
            .collect();
        for (cmd, body) in debugfs(&cmds)? {
            if cmd.starts_with("icheck") {
                owners.extend(parse_icheck(&body));
            }
        }
    }
    // Inodes of the lines in inode tables, and of the blocks icheck found.
    let table_inode = |b: u64, within: u64| {
        layout
            .inode_tables
            .iter()
            .find(|(_, s, e)| (*s..=*e).contains(&b))
            .map(|(g, s, _)| {
                g * layout.inodes_per_group + ((b - s) * bs + within) / layout.inode_size + 1
            })
    };
    let mut inodes: BTreeSet<u64> = owners.values().flatten().copied().collect();
    for &o in offsets.iter().filter(|&&o| o >= data_offset) {
        let rel = o - data_offset;
        if let Some(i) = table_inode(rel / bs, rel % bs) {
            inodes.insert(i);
        }
    }
    let mut paths = BTreeMap::new();
    let mut stats = BTreeMap::new();
    if !inodes.is_empty() {
        let list: Vec<String> = inodes.iter().map(u64::to_string).collect();
        let mut cmds: String = list
            .chunks(200)
            .map(|c| format!("ncheck {}\n", c.join(" ")))
            .collect();
        for i in owners.values().flatten().collect::<BTreeSet<_>>() {
            cmds.push_str(&format!("stat <{i}>\n"));
        }
        for (cmd, body) in debugfs(&cmds)? {
            if cmd.starts_with("ncheck") {
                paths.extend(parse_ncheck(&body));
            } else if let Some(i) = cmd
                .strip_prefix("stat <")
                .and_then(|r| r.strip_suffix('>'))
                .and_then(|i| i.parse::<u64>().ok())
            {
                stats.insert(i, parse_stat(&body));
            }
        }
    }
    paths.entry(2).or_insert_with(|| "/".to_owned());
    Ok(offsets
        .iter()
        .map(|&o| classify_ext4(o, data_offset, &layout, &owners, &paths, &stats))
        .collect())
}

/// The label of the line at PM offset `pm` from what the tools said.
pub fn classify_ext4(
    pm: u64,
    data_offset: u64,
    layout: &Ext4Layout,
    owners: &BTreeMap<u64, Option<u64>>,
    paths: &BTreeMap<u64, String>,
    stats: &BTreeMap<u64, Ext4Inode>,
) -> LineLabel {
    if pm < data_offset {
        return LineLabel::Namespace;
    }
    let bs = layout.block_size;
    let rel = pm - data_offset;
    let (b, within) = (rel / bs, rel % bs);
    if let Some((_, _, l)) = layout
        .regions
        .iter()
        .find(|(s, e, _)| (*s..=*e).contains(&b))
    {
        return l.clone();
    }
    if let Some((g, s, _)) = layout
        .inode_tables
        .iter()
        .find(|(_, s, e)| (*s..=*e).contains(&b))
    {
        let inode = g * layout.inodes_per_group + ((b - s) * bs + within) / layout.inode_size + 1;
        return LineLabel::InodeTable {
            inode,
            path: paths.get(&inode).cloned(),
        };
    }
    let Some(Some(inode)) = owners.get(&b).copied() else {
        return LineLabel::Free { block: b };
    };
    let st = stats.get(&inode).cloned().unwrap_or_default();
    if let Some((_, what)) = st.map_blocks.iter().find(|(p, _)| *p == b) {
        return LineLabel::Metadata {
            what: what.clone(),
            inode: Some(inode),
        };
    }
    let logical = st
        .runs
        .iter()
        .find(|(_, p, n)| (*p..p + n).contains(&b))
        .map(|(l, p, _)| l + (b - p));
    if layout.journal_inode == Some(inode) {
        return LineLabel::Journal {
            log: "jbd2 journal".into(),
            block: logical.unwrap_or(0),
        };
    }
    let path = paths.get(&inode).cloned();
    let offset = logical.map_or(0, |l| l * bs + within);
    match st.kind.as_str() {
        "directory" => LineLabel::Directory {
            inode,
            path,
            offset,
        },
        "regular" if logical.is_some() => LineLabel::FileData {
            inode,
            path,
            offset,
        },
        k => LineLabel::Metadata {
            what: if k.is_empty() {
                "block".into()
            } else {
                format!("{k} block")
            },
            inode: Some(inode),
        },
    }
}

// ---------------------------------------------------------------- XFS

/// An XFS file system's geometry, from `xfs_db`'s `sb 0` fields.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct XfsGeometry {
    /// Block size.
    pub blocksize: u64,
    /// Blocks per allocation group.
    pub agblocks: u64,
    /// log2 of the AG block number's field (rounded up).
    pub agblklog: u64,
    /// The log's first block (AG-encoded).
    pub logstart: u64,
    /// The log's blocks.
    pub logblocks: u64,
    /// Inode size.
    pub inodesize: u64,
    /// Inodes per block.
    pub inopblock: u64,
    /// Sector size.
    pub sectsize: u64,
    /// The root directory's inode.
    pub rootino: u64,
}

impl XfsGeometry {
    fn linear(&self, agno: u64, agbno: u64) -> u64 {
        agno * self.agblocks + agbno
    }
}

/// One `blockuse -n` line: `block F (A/B) type T [inode I [PATH]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XfsUse {
    /// AG number.
    pub agno: u64,
    /// Block in the AG.
    pub agbno: u64,
    /// The type (`sb`, `data`, `dir`, `inode`, `log`, `free2`, `btbno`, ...).
    pub kind: String,
    /// The owning inode.
    pub inode: Option<u64>,
}

/// Parse `xfs_db` phase-one output: `name = value` fields and `blockuse` lines (in
/// order).
pub fn parse_xfs_db(text: &str) -> Result<(XfsGeometry, Vec<XfsUse>), LabelError> {
    let mut g = XfsGeometry::default();
    let mut uses = Vec::new();
    for line in text.lines() {
        let t = line.trim();
        if let Some((k, v)) = t.split_once(" = ") {
            let Ok(v) = v.trim().parse::<u64>() else {
                continue;
            };
            match k {
                "blocksize" => g.blocksize = v,
                "agblocks" => g.agblocks = v,
                "agblklog" => g.agblklog = v,
                "logstart" => g.logstart = v,
                "logblocks" => g.logblocks = v,
                "inodesize" => g.inodesize = v,
                "inopblock" => g.inopblock = v,
                "sectsize" => g.sectsize = v,
                "rootino" => g.rootino = v,
                _ => {}
            }
        } else if let Some(rest) = t.strip_prefix("block ") {
            let w: Vec<&str> = rest.split_whitespace().collect();
            let Some((a, b)) = w
                .get(1)
                .and_then(|s| s.strip_prefix('(')?.strip_suffix(')')?.split_once('/'))
            else {
                continue;
            };
            let (Ok(agno), Ok(agbno)) = (a.parse(), b.parse()) else {
                continue;
            };
            let kind = match w.iter().position(|x| *x == "type") {
                Some(i) => w.get(i + 1).copied().unwrap_or("?").to_owned(),
                None => "?".into(),
            };
            let inode = w
                .iter()
                .position(|x| *x == "inode")
                .and_then(|i| w.get(i + 1)?.parse().ok());
            uses.push(XfsUse {
                agno,
                agbno,
                kind,
                inode,
            });
        }
    }
    if g.blocksize == 0 || g.agblocks == 0 || g.inodesize == 0 {
        return Err(LabelError::Parse {
            tool: "xfs_db",
            message: "no blocksize, agblocks or inodesize in `sb 0`".into(),
        });
    }
    Ok((g, uses))
}

/// Parse `xfs_db` `bmap` output after `p v3.inumber`: inode → (file block, first
/// AG-encoded... linear block, blocks) runs.
pub fn parse_xfs_bmaps(text: &str, g: &XfsGeometry) -> BTreeMap<u64, Vec<(u64, u64, u64)>> {
    let mut m: BTreeMap<u64, Vec<(u64, u64, u64)>> = BTreeMap::new();
    let mut cur = None;
    for line in text.lines() {
        let t = line.trim();
        if let Some(v) = t
            .strip_prefix("v3.inumber = ")
            .or(t.strip_prefix("inumber = "))
        {
            cur = v.trim().parse().ok();
            continue;
        }
        // data offset 0 startblock 9 (0/9) count 1 flag 0
        let w: Vec<&str> = t.split_whitespace().collect();
        let (Some(ino), Some(&"offset")) = (cur, w.get(1)) else {
            continue;
        };
        let num = |k: &str| {
            w.iter()
                .position(|x| *x == k)
                .and_then(|i| w.get(i + 1)?.parse::<u64>().ok())
        };
        let ag = w
            .iter()
            .find_map(|x| x.strip_prefix('(')?.strip_suffix(')')?.split_once('/'));
        if let (Some(off), Some(count), Some((a, b))) = (num("offset"), num("count"), ag) {
            if let (Ok(a), Ok(b)) = (a.parse(), b.parse()) {
                m.entry(ino).or_default().push((off, g.linear(a, b), count));
            }
        }
    }
    m
}

/// The label of the line at PM offset `pm`, whose block's `blockuse` line is `u`.
pub fn classify_xfs(
    pm: u64,
    data_offset: u64,
    g: &XfsGeometry,
    u: &XfsUse,
    paths: &BTreeMap<u64, String>,
    bmaps: &BTreeMap<u64, Vec<(u64, u64, u64)>>,
) -> LineLabel {
    if pm < data_offset {
        return LineLabel::Namespace;
    }
    let within = (pm - data_offset) % g.blocksize;
    let lin = g.linear(u.agno, u.agbno);
    let path = |i: u64| {
        if i == g.rootino {
            Some("/".to_owned())
        } else {
            paths.get(&i).cloned()
        }
    };
    let offset_in = |i: u64| {
        bmaps.get(&i).and_then(|runs| {
            runs.iter()
                .find(|(_, s, n)| (*s..s + n).contains(&lin))
                .map(|(o, s, _)| (o + lin - s) * g.blocksize + within)
        })
    };
    match (u.kind.as_str(), u.inode) {
        ("sb", _) if g.sectsize > 0 => {
            let which = ["superblock", "AGF", "AGI", "AGFL"]
                .get((within / g.sectsize) as usize)
                .copied();
            match which {
                Some("superblock") | None => LineLabel::Superblock {
                    which: format!("XFS superblock (AG {})", u.agno),
                },
                Some(w) => LineLabel::GroupDescriptor {
                    which: format!("XFS {w} (AG {})", u.agno),
                },
            }
        }
        ("log", _) => {
            let (la, lb) = (
                g.logstart >> g.agblklog,
                g.logstart & ((1 << g.agblklog) - 1),
            );
            LineLabel::Journal {
                log: "XFS log".into(),
                block: lin.saturating_sub(g.linear(la, lb)),
            }
        }
        ("inode", _) => {
            let inopblog = g.inopblock.max(1).trailing_zeros() as u64;
            let inode = (u.agno << (g.agblklog + inopblog))
                | (u.agbno << inopblog)
                | (within / g.inodesize);
            LineLabel::InodeTable {
                inode,
                path: path(inode),
            }
        }
        ("data", Some(i)) => match offset_in(i) {
            Some(offset) => LineLabel::FileData {
                inode: i,
                path: path(i),
                offset,
            },
            None => LineLabel::Metadata {
                what: "XFS data block".into(),
                inode: Some(i),
            },
        },
        (k, Some(i)) if k.starts_with("dir") => LineLabel::Directory {
            inode: i,
            path: path(i),
            offset: offset_in(i).unwrap_or(0),
        },
        (k, _) if k.starts_with("free") => LineLabel::Free { block: lin },
        (k, inode) => LineLabel::Metadata {
            what: format!("XFS {k}"),
            inode,
        },
    }
}

fn label_xfs(
    image: &Path,
    data_offset: u64,
    offsets: &[u64],
) -> Result<Vec<LineLabel>, LabelError> {
    // xfs_db cannot open a file at an offset: copy the file-system area (sparse).
    let dir = tempfile::tempdir().map_err(|e| LabelError::Io {
        what: "make a temporary directory".into(),
        source: e,
    })?;
    let dev = dir.path().join("fs.img");
    {
        let io = |what: String| move |source| LabelError::Io { what, source };
        let f = std::fs::File::create(&dev).map_err(io(format!("create {}", dev.display())))?;
        let len = std::fs::metadata(image)
            .map_err(io(format!("stat {}", image.display())))?
            .len();
        f.set_len(len.saturating_sub(data_offset))
            .map_err(io(format!("size {}", dev.display())))?;
        crate::image::copy_sparse(image, data_offset, &f, 0).map_err(|e| LabelError::Io {
            what: format!("copy {} to {}", image.display(), dev.display()),
            source: std::io::Error::other(e.to_string()),
        })?;
    }
    let dev_s = dev.to_string_lossy().into_owned();
    let inside: Vec<u64> = offsets
        .iter()
        .filter(|&&o| o >= data_offset)
        .map(|&o| o - data_offset)
        .collect();
    let mut args: Vec<String> = vec![
        "-r".into(),
        "-c".into(),
        "sb 0".into(),
        "-c".into(),
        "p blocksize agblocks agblklog logstart logblocks inodesize inopblock sectsize rootino"
            .into(),
        "-c".into(),
        "blockget -n".into(),
    ];
    for o in &inside {
        args.extend([
            "-c".into(),
            format!("daddr {}", o / 512),
            "-c".into(),
            "blockuse -n".into(),
        ]);
    }
    args.extend(["-c".into(), "ncheck".into(), dev_s.clone()]);
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let text = run("xfs_db", &argv)?;
    let (g, uses) = parse_xfs_db(&text)?;
    if uses.len() != inside.len() {
        return Err(LabelError::Parse {
            tool: "xfs_db",
            message: format!(
                "{} blockuse lines for {} blocks asked",
                uses.len(),
                inside.len()
            ),
        });
    }
    let paths = parse_ncheck(
        &text
            .lines()
            .filter(|l| !l.trim_start().starts_with("block ") && !l.contains(" = "))
            .collect::<Vec<_>>()
            .join("\n"),
    );
    let want: BTreeSet<u64> = uses
        .iter()
        .filter(|u| u.kind == "data" || u.kind.starts_with("dir"))
        .filter_map(|u| u.inode)
        .collect();
    let mut bmaps = BTreeMap::new();
    if !want.is_empty() {
        let mut args: Vec<String> = vec!["-r".into()];
        for i in &want {
            args.extend([
                "-c".into(),
                format!("inode {i}"),
                "-c".into(),
                "p v3.inumber".into(),
                "-c".into(),
                "bmap".into(),
            ]);
        }
        args.push(dev_s);
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        bmaps = parse_xfs_bmaps(&run("xfs_db", &argv)?, &g);
    }
    let mut uses = uses.into_iter();
    Ok(offsets
        .iter()
        .map(|&o| {
            if o < data_offset {
                return LineLabel::Namespace;
            }
            let u = uses.next().expect("one use per line inside");
            classify_xfs(o, data_offset, &g, &u, &paths, &bmaps)
        })
        .collect())
}

// ---------------------------------------------------------------- display

/// One row of a folded list of lines: a line shown in full and how many lines after
/// it share its label (`and 117 more lines of the same journal write`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoldedRow {
    /// Index of the line shown.
    pub line: usize,
    /// It is one of the minimal lines (`pmcrash minimize`).
    pub minimal: bool,
    /// Lines folded under it.
    pub more: usize,
    /// The words after "and N more lines".
    pub phrase: String,
}

/// Fold `labels` (one per line, `None` when unlabelled) for display: the lines whose
/// index is in `minimal` first, each in full; then the rest, runs of consecutive lines
/// with the same [`LineLabel::fold_key`] shown as their first line and a count.
pub fn fold(labels: &[Option<&LineLabel>], minimal: &BTreeSet<usize>) -> Vec<FoldedRow> {
    let mut rows: Vec<FoldedRow> = minimal
        .iter()
        .filter(|&&i| i < labels.len())
        .map(|&i| FoldedRow {
            line: i,
            minimal: true,
            more: 0,
            phrase: String::new(),
        })
        .collect();
    let mut last_key: Option<String> = None;
    for (i, l) in labels.iter().enumerate() {
        if minimal.contains(&i) {
            last_key = None;
            continue;
        }
        let key = l.map(LineLabel::fold_key);
        match (&key, &last_key, rows.last_mut()) {
            (Some(k), Some(lk), Some(r)) if k == lk && !r.minimal => r.more += 1,
            _ => rows.push(FoldedRow {
                line: i,
                minimal: false,
                more: 0,
                phrase: l.map(LineLabel::fold_phrase).unwrap_or_default(),
            }),
        }
        last_key = key;
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    const DUMPE2FS: &str = include_str!("labels/ext4.dumpe2fs.txt");
    const DEBUGFS1: &str = include_str!("labels/ext4.debugfs1.txt");
    const DEBUGFS2: &str = include_str!("labels/ext4.debugfs2.txt");
    const XFS1: &str = include_str!("labels/xfs.db1.txt");
    const XFS2: &str = include_str!("labels/xfs.db2.txt");
    const OFF: u64 = 2 << 20;

    /// What the ext4 tools said about the fixture image.
    type Ext4Answers = (
        Ext4Layout,
        BTreeMap<u64, Option<u64>>,
        BTreeMap<u64, String>,
        BTreeMap<u64, Ext4Inode>,
    );

    fn ext4() -> Ext4Answers {
        let layout = parse_dumpe2fs(DUMPE2FS).unwrap();
        let mut owners = BTreeMap::new();
        for (c, b) in split_debugfs(DEBUGFS1) {
            if c.starts_with("icheck") {
                owners = parse_icheck(&b);
            }
        }
        let mut paths = BTreeMap::new();
        let mut stats = BTreeMap::new();
        for (c, b) in split_debugfs(DEBUGFS2) {
            if c.starts_with("ncheck") {
                paths = parse_ncheck(&b);
            } else if let Some(i) = c.strip_prefix("stat <").and_then(|r| r.strip_suffix('>')) {
                stats.insert(i.parse().unwrap(), parse_stat(&b));
            }
        }
        paths.insert(2, "/".into());
        (layout, owners, paths, stats)
    }

    #[test]
    fn ext4_layout_from_dumpe2fs() {
        let (l, ..) = ext4();
        assert_eq!(
            (l.block_size, l.inode_size, l.inodes_per_group),
            (4096, 256, 15872)
        );
        assert_eq!(l.journal_inode, Some(8));
        assert_eq!(l.inode_tables, vec![(0, 41, 1032)]);
        assert!(l.regions.contains(&(
            9,
            9,
            LineLabel::Bitmap {
                of: "block".into(),
                group: 0
            }
        )));
    }

    #[test]
    fn ext4_lines_get_their_structures() {
        let (l, o, p, s) = ext4();
        let at = |block: u64, within: u64| {
            classify_ext4(OFF + block * 4096 + within, OFF, &l, &o, &p, &s)
        };
        assert_eq!(
            at(0, 1024),
            LineLabel::Superblock {
                which: "ext4 superblock".into()
            }
        );
        assert!(matches!(at(1, 0), LineLabel::GroupDescriptor { .. }));
        assert!(
            matches!(at(3, 0), LineLabel::GroupDescriptor { .. }),
            "reserved GDT"
        );
        assert_eq!(
            at(25, 64),
            LineLabel::Bitmap {
                of: "inode".into(),
                group: 0
            }
        );
        // Inode 12 is the 12th 256-byte inode of the table at block 41.
        assert_eq!(
            at(41, 11 * 256 + 64),
            LineLabel::InodeTable {
                inode: 12,
                path: Some("/pm.dat".into())
            }
        );
        assert_eq!(
            at(15, 64),
            LineLabel::Journal {
                log: "jbd2 journal".into(),
                block: 0
            }
        );
        assert_eq!(
            at(1034, 0),
            LineLabel::Journal {
                log: "jbd2 journal".into(),
                block: 25
            }
        );
        assert_eq!(
            at(15360, 128),
            LineLabel::FileData {
                inode: 12,
                path: Some("/pm.dat".into()),
                offset: 128
            }
        );
        assert_eq!(
            at(10, 0),
            LineLabel::Directory {
                inode: 2,
                path: Some("/".into()),
                offset: 0
            }
        );
        assert_eq!(at(5000, 0), LineLabel::Free { block: 5000 });
        assert_eq!(
            classify_ext4(4096, OFF, &l, &o, &p, &s),
            LineLabel::Namespace
        );
    }

    #[test]
    fn stat_block_maps_parse() {
        let s = parse_stat("Inode: 8   Type: regular    Mode:  0600\nEXTENTS:\n(ETB0):99, (0-9):15-24, (10-24):26-40, (25):1034\n");
        assert_eq!(s.kind, "regular");
        assert_eq!(s.runs, vec![(0, 15, 10), (10, 26, 15), (25, 1034, 1)]);
        assert_eq!(s.map_blocks, vec![(99, "extent tree block".into())]);
    }

    #[test]
    fn xfs_lines_get_their_structures() {
        let (g, uses) = parse_xfs_db(XFS1).unwrap();
        assert_eq!(
            (g.blocksize, g.agblocks, g.agblklog, g.logstart),
            (4096, 20352, 15, 65541)
        );
        let paths = parse_ncheck(
            &XFS1
                .lines()
                .filter(|l| !l.trim_start().starts_with("block ") && !l.contains(" = "))
                .collect::<Vec<_>>()
                .join("\n"),
        );
        assert_eq!(paths.get(&131).map(String::as_str), Some("/pm.dat"));
        let bmaps = parse_xfs_bmaps(XFS2, &g);
        assert_eq!(bmaps.get(&131), Some(&vec![(0, 9, 1)]));
        // The fixture asked about fs bytes 0, 600, 9 * 4096 + 64, 16 * 4096 + 3 * 512,
        // the log's second block, and a free block, in that order.
        let asked = [
            0,
            600,
            9 * 4096 + 64,
            16 * 4096 + 3 * 512,
            (2 * 20352 + 6) * 4096,
            12 * 4096,
        ];
        assert_eq!(uses.len(), asked.len());
        let got: Vec<LineLabel> = asked
            .iter()
            .zip(&uses)
            .map(|(o, u)| classify_xfs(OFF + o, OFF, &g, u, &paths, &bmaps))
            .collect();
        assert_eq!(
            got,
            vec![
                LineLabel::Superblock {
                    which: "XFS superblock (AG 0)".into()
                },
                LineLabel::GroupDescriptor {
                    which: "XFS AGF (AG 0)".into()
                },
                LineLabel::FileData {
                    inode: 131,
                    path: Some("/pm.dat".into()),
                    offset: 64
                },
                LineLabel::InodeTable {
                    inode: 131,
                    path: Some("/pm.dat".into())
                },
                LineLabel::Journal {
                    log: "XFS log".into(),
                    block: 1
                },
                LineLabel::Free { block: 12 },
            ]
        );
    }

    #[test]
    fn fold_puts_minimal_lines_first_and_folds_runs() {
        let j = |b| LineLabel::Journal {
            log: "jbd2 journal".into(),
            block: b,
        };
        let d = |o| LineLabel::FileData {
            inode: 12,
            path: Some("/a".into()),
            offset: o,
        };
        let labels = [j(1), j(1), j(2), d(0), d(64), j(3), j(3)];
        let refs: Vec<Option<&LineLabel>> = labels.iter().map(Some).collect();
        let rows = fold(&refs, &BTreeSet::from([4]));
        let shape: Vec<(usize, bool, usize)> =
            rows.iter().map(|r| (r.line, r.minimal, r.more)).collect();
        assert_eq!(
            shape,
            vec![(4, true, 0), (0, false, 2), (3, false, 0), (5, false, 1)]
        );
        assert_eq!(rows[1].phrase, "of the same journal write");
        // Unlabelled lines never fold.
        let rows = fold(&[None, None], &BTreeSet::new());
        assert_eq!(rows.len(), 2);
    }

    #[test]
    fn labels_read_well() {
        assert_eq!(
            LineLabel::FileData {
                inode: 12,
                path: Some("/pm.dat".into()),
                offset: 4032
            }
            .to_string(),
            "file data: /pm.dat (inode 12) offset 4032"
        );
        assert_eq!(
            LineLabel::Journal {
                log: "jbd2 journal".into(),
                block: 0
            }
            .to_string(),
            "jbd2 journal superblock (journal block 0)"
        );
    }
}
