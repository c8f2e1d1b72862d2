//! A fuzz campaign: its directory, the loop that runs the stream, and `merge`.
//!
//! The directory:
//!
//! | path | holds |
//! | --- | --- |
//! | `campaign.json` | [`State`]: the configuration, the next stream index, every finished workload ([`RunRecord`]) and the findings by signature |
//! | `corpus/NNNNNNNN.toml` | each workload that reached new file-system code or gave a new signature (the corpus `--gen guided` mutates) |
//! | `findings/SIG/` | per signature, saved once: `finding.json` (the first finding in full), `workload.toml`, `bundle/` (the run bundle of [`crate::bundle`]), and `minimal/` (that workload minimised: `workload.toml` and its bundle `workload/`, [`MinimalRecord`]) |
//! | `.work/` | the trace and images of the workload being run (removed after it) |
//!
//! Crash safety: a workload's files (corpus entry, finding directories) are written
//! first, each atomically, then `campaign.json` atomically
//! ([`crate::cache::write_atomic`]). A kill at any moment leaves the state of the last
//! finished workload; `--resume` goes on at the first workload not recorded there, so
//! no recorded workload runs twice and nothing recorded is lost (a workload killed
//! half-way was never recorded and runs again).
//!
//! Coverage ([`crash_models::coverage`]): every trace records the translation blocks
//! of the ext4, jbd2, xfs and DAX code it ran; the campaign keeps their union
//! ([`State::coverage`]) and each run's count of blocks and of new ones.
//!
//! Signatures ([`Signature`]): verdict, file system, the op kind at the crash point
//! (during or after which op), the kernel functions that wrote the dropped lines, and
//! the flush or fence that was missing, numbers masked. Each workload that hits a
//! signature counts once for it.

use super::gen::{self, Candidate, CorpusEntry, GenMode, Origin};
use crate::bundle;
use crate::findings::{mask_numbers, GroupKey};
use crate::guest::GuestFactory;
use crate::interrupt::Interrupt;
use crate::pipeline::{Pipeline, PipelineError, RunConfig};
use crate::report::{Finding, WorkloadReport};
use crash_models::coverage::Blocks;
use crash_models::ops::FsKind;
use crash_models::verdict::Verdict;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The state file's name.
pub const STATE: &str = "campaign.json";
/// The layout version of `campaign.json`.
pub const VERSION: u32 = 1;

/// Why a campaign cannot go on (usage or infrastructure: exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum FuzzError {
    /// Local I/O.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// An atomic write failed.
    #[error(transparent)]
    Write(#[from] crate::cache::FileError),
    /// `campaign.json` does not parse.
    #[error("{}:{line}:{column}: {message}", path.display())]
    BadState {
        /// The file.
        path: PathBuf,
        /// Line.
        line: usize,
        /// Column.
        column: usize,
        /// What serde said.
        message: String,
    },
    /// A new campaign in a directory that has one.
    #[error("{} already holds a campaign: add --resume to go on with it, or choose another --out", dir.display())]
    Exists {
        /// The directory.
        dir: PathBuf,
    },
    /// A corpus entry of the campaign does not parse.
    #[error("{}: {message} (a corpus entry of the campaign; restore it or remove the campaign)", path.display())]
    BadCorpus {
        /// The entry.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// `--resume` where there is no campaign.
    #[error("--resume: {} holds no campaign ({STATE} is missing)", dir.display())]
    NoCampaign {
        /// The directory.
        dir: PathBuf,
    },
    /// The options differ from those the campaign was started (or a merged one was
    /// run) with.
    #[error("{}: {field} is {theirs} there, {ours} here; a campaign goes on (or merges) only with the same options", dir.display())]
    Mismatch {
        /// The campaign.
        dir: PathBuf,
        /// The option.
        field: &'static str,
        /// Its value in the campaign.
        theirs: String,
        /// Its value given now.
        ours: String,
    },
    /// Two campaigns ran the same index to different workloads.
    #[error("stream index {index} is another workload in {} than in {}", a.display(), b.display())]
    Diverged {
        /// The index.
        index: u64,
        /// One campaign.
        a: PathBuf,
        /// The other.
        b: PathBuf,
    },
    /// The pipeline failed.
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    /// A bundle could not be written.
    #[error(transparent)]
    Bundle(#[from] bundle::BundleError),
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> FuzzError {
    let path = path.to_path_buf();
    move |source| FuzzError::Io { what, path, source }
}

/// `--shard I/N`: the stream indices `i` with `i % N == I`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    /// This shard, from 0.
    pub index: u64,
    /// Shards in all.
    pub count: u64,
}

impl Default for Shard {
    fn default() -> Self {
        Shard { index: 0, count: 1 }
    }
}

impl std::str::FromStr for Shard {
    type Err = String;
    fn from_str(s: &str) -> Result<Shard, String> {
        let bad = || format!("`{s}` is not a shard: use I/N with 0 <= I < N (e.g. 0/4)");
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let (index, count) = (
            i.trim().parse::<u64>().map_err(|_| bad())?,
            n.trim().parse::<u64>().map_err(|_| bad())?,
        );
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// What decides a campaign's workloads and their crash states: a resumed or merged
/// campaign must have the same (the shard aside, for merges).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CampaignConfig {
    /// The file system.
    pub fs: FsKind,
    /// The stream's seed.
    pub seed: u64,
    /// The generators.
    pub gen: GenMode,
    /// Crash points (`--points`).
    pub points: String,
    /// Crash states (`--states`, seed filled in).
    pub states: String,
    /// Persistency model.
    pub model: String,
    /// Most states per point.
    pub max_states: usize,
    /// Most points per workload.
    pub max_points: Option<usize>,
    /// `--sector-atomic`.
    pub sector_atomic: Option<u64>,
    /// The share of the stream; `None` for a merged campaign.
    pub shard: Option<Shard>,
}

impl CampaignConfig {
    /// The configuration of a run with these settings.
    pub fn of(run: &RunConfig, seed: u64, gen: GenMode, shard: Shard) -> CampaignConfig {
        CampaignConfig {
            fs: run.fs,
            seed,
            gen,
            points: run.points.to_string(),
            states: run.strategy().to_string(),
            model: run.model.name().to_owned(),
            max_states: run.max_states,
            max_points: run.max_points,
            sector_atomic: run.sector_atomic,
            shard: Some(shard),
        }
    }

    fn check_same(
        &self,
        other: &CampaignConfig,
        dir: &Path,
        shard_too: bool,
    ) -> Result<(), FuzzError> {
        let fields: [(&'static str, String, String); 10] = [
            ("--fs", self.fs.to_string(), other.fs.to_string()),
            ("--seed", self.seed.to_string(), other.seed.to_string()),
            ("--gen", self.gen.to_string(), other.gen.to_string()),
            ("--points", self.points.clone(), other.points.clone()),
            ("--states", self.states.clone(), other.states.clone()),
            ("--model", self.model.clone(), other.model.clone()),
            (
                "--max-states",
                self.max_states.to_string(),
                other.max_states.to_string(),
            ),
            (
                "--max-points",
                format!("{:?}", self.max_points),
                format!("{:?}", other.max_points),
            ),
            (
                "--sector-atomic",
                format!("{:?}", self.sector_atomic),
                format!("{:?}", other.sector_atomic),
            ),
            (
                "--shard",
                if shard_too {
                    format!("{:?}", self.shard)
                } else {
                    String::new()
                },
                if shard_too {
                    format!("{:?}", other.shard)
                } else {
                    String::new()
                },
            ),
        ];
        for (field, theirs, ours) in fields {
            if theirs != ours {
                return Err(FuzzError::Mismatch {
                    dir: dir.to_path_buf(),
                    field,
                    theirs,
                    ours,
                });
            }
        }
        Ok(())
    }
}

/// A finding's signature: what makes two findings the same bug.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Signature {
    /// The verdict.
    pub verdict: String,
    /// The file system.
    pub fs: FsKind,
    /// The op kind at the crash point: `during op # fsync`, `after op # store returned`.
    /// For a `torn-write`, the structures that tore instead (`of the jbd2 journal
    /// superblock`): the kernel's block write tears the same way whatever op is
    /// running, and one signature per op would bury the other findings of a night.
    pub op: String,
    /// The kernel functions that made the dropped lines' last stores (sorted,
    /// `+offset` and module left out), empty for user stores or unknown.
    pub writers: Vec<String>,
    /// The flushes or fences missing for the dropped lines (sorted, numbers masked).
    pub missing: Vec<String>,
}

impl Signature {
    /// The signature of a finding of a workload on `fs`.
    pub fn of(fs: FsKind, f: &Finding) -> Signature {
        let op = if f.verdict == Verdict::TornWrite {
            let mut torn: Vec<String> = f
                .problems
                .iter()
                .filter_map(|p| crate::pipeline::torn_structure(&p.message))
                .map(mask_numbers)
                .collect();
            torn.sort();
            torn.dedup();
            format!("of the {}", torn.join(", the "))
        } else {
            // The findings' own crash site, op index masked: `after op # fsync returned`.
            mask_numbers(&GroupKey::of(f.verdict, &f.point, &[]).site)
        };
        let mut writers: Vec<String> = f
            .dropped_lines
            .iter()
            .filter_map(|d| d.writer.as_deref())
            .map(|w| w.split(['+', ' ']).next().unwrap_or(w).to_owned())
            .collect();
        writers.sort();
        writers.dedup();
        let mut missing: Vec<String> = f
            .dropped_lines
            .iter()
            .map(|d| mask_numbers(&d.missing))
            .collect();
        missing.sort();
        missing.dedup();
        Signature {
            verdict: f.verdict.to_string(),
            fs,
            op,
            writers,
            missing,
        }
    }

    /// A short stable name: 16 hex digits of the blake3 of its JSON.
    pub fn id(&self) -> String {
        let json = serde_json::to_vec(self).expect("a signature serialises");
        blake3::hash(&json).to_hex()[..16].to_owned()
    }
}

impl std::fmt::Display for Signature {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} on {}-DAX {}", self.verdict, self.fs, self.op)?;
        if !self.writers.is_empty() {
            write!(f, ", written by {}", self.writers.join(", "))?;
        }
        if !self.missing.is_empty() {
            write!(f, ", missing: {}", self.missing.join("; "))?;
        }
        Ok(())
    }
}

/// One finished workload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    /// Its stream index.
    pub index: u64,
    /// Where it came from.
    pub origin: Origin,
    /// Its description.
    pub description: String,
    /// blake3 of its ops (hex): the same index must be the same workload everywhere.
    pub hash: String,
    /// Crash points.
    pub crash_points: usize,
    /// Crash states.
    pub states: usize,
    /// Images checked in a guest.
    pub checked_images: usize,
    /// Crash states per verdict.
    pub verdicts: BTreeMap<String, u64>,
    /// The signatures it hit, with their crash states.
    pub signatures: BTreeMap<String, u64>,
    /// Blocks of file-system code its trace ran.
    #[serde(default)]
    pub blocks: u64,
    /// Of those, blocks no earlier workload of the campaign had run (depends on the
    /// order workloads ran in: not compared between campaigns).
    #[serde(default)]
    pub new_blocks: u64,
    /// It was the campaign's first workload to hit one of its signatures (order
    /// dependent, like `new_blocks`).
    #[serde(default)]
    pub first_signature: bool,
    /// Why it could not be checked (its trace was unusable, or a program of it
    /// failed): the harness's problem or the workload's, not a finding. It is saved as
    /// `errors/INDEX.toml` and is not run again on `--resume`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Wall-clock milliseconds (not part of what merges and comparisons look at).
    pub ms: u64,
}

impl RunRecord {
    /// The record of `cand`, run in `took`, before its results: nothing checked, no
    /// blocks, no signature, no error.
    fn of(cand: &Candidate, took: Duration) -> RunRecord {
        RunRecord {
            index: cand.index,
            origin: cand.origin.clone(),
            description: cand.workload.description.clone(),
            hash: blake3::Hash::from(cand.workload.hash())
                .to_hex()
                .to_string(),
            crash_points: 0,
            states: 0,
            checked_images: 0,
            verdicts: BTreeMap::new(),
            signatures: BTreeMap::new(),
            blocks: 0,
            new_blocks: 0,
            first_signature: false,
            error: None,
            ms: took.as_millis() as u64,
        }
    }
}

/// A signature's entry in the campaign.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SignatureEntry {
    /// The signature.
    pub signature: Signature,
    /// Workloads that hit it.
    pub workloads: u64,
    /// Crash states, over those workloads.
    pub states: u64,
    /// The first (lowest) stream index that hit it: whose workload and bundle are saved.
    pub first_index: u64,
    /// That workload's description.
    pub first_workload: String,
    /// One problem of the first finding, for the summary.
    pub example: String,
    /// Its `reproduce` line.
    pub reproduce: String,
    /// Its first workload minimised (`findings/SIG/minimal/`), once that is done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minimal: Option<MinimalRecord>,
}

/// What minimising a signature's first workload gave: `pmcrash minimize --ops` run on
/// its saved bundle, a try counting only when it gives a finding of the same signature.
/// `findings/SIG/minimal/` holds the workload (`workload.toml`) and its bundle
/// (`workload/`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MinimalRecord {
    /// Ops of the first workload.
    pub ops_before: usize,
    /// Ops of the minimal workload.
    pub ops_after: usize,
    /// Which ops of the first workload it keeps.
    pub kept: Vec<usize>,
    /// Candidate workloads run.
    pub tries: usize,
    /// No single op less gives the signature (false: stopped at `--minimize-tries`).
    pub complete: bool,
    /// The saved minimal workload's run gave the signature again.
    pub confirmed: bool,
    /// Why it could not be minimised (the first workload stays the example).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Wall-clock milliseconds (not compared between campaigns).
    pub ms: u64,
}

/// `campaign.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// The layout version.
    pub version: u32,
    /// What decides the workloads and states.
    pub config: CampaignConfig,
    /// The next stream index this campaign runs.
    pub next: u64,
    /// The stream has ended (exhaustive only).
    pub exhausted: bool,
    /// Every finished workload, by stream index.
    pub runs: Vec<RunRecord>,
    /// The signatures seen, by id.
    pub findings: BTreeMap<String, SignatureEntry>,
    /// The blocks of file-system code the campaign's workloads ran, together.
    #[serde(default)]
    pub coverage: Blocks,
    /// The campaigns a merged one came from.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub merged_from: Vec<PathBuf>,
}

impl State {
    /// A new campaign.
    pub fn new(config: CampaignConfig) -> State {
        let next = config.shard.unwrap_or_default().index;
        State {
            version: VERSION,
            config,
            next,
            exhausted: false,
            runs: Vec::new(),
            findings: BTreeMap::new(),
            coverage: Blocks::default(),
            merged_from: Vec::new(),
        }
    }

    /// Read `DIR/campaign.json`.
    pub fn load(dir: &Path) -> Result<State, FuzzError> {
        let path = dir.join(STATE);
        if !path.exists() {
            return Err(FuzzError::NoCampaign {
                dir: dir.to_path_buf(),
            });
        }
        let text = std::fs::read_to_string(&path).map_err(io("read", &path))?;
        serde_json::from_str(&text).map_err(|e| FuzzError::BadState {
            path,
            line: e.line(),
            column: e.column(),
            message: e.to_string(),
        })
    }

    /// Write `DIR/campaign.json` atomically.
    pub fn save(&self, dir: &Path) -> Result<(), FuzzError> {
        let json = serde_json::to_vec_pretty(self).expect("the state serialises");
        crate::cache::write_atomic(&dir.join(STATE), &json)?;
        Ok(())
    }

    /// Record a finished workload; returns the ids of the signatures it is the first
    /// to hit.
    pub fn record(&mut self, rec: RunRecord, findings: &[(Signature, &Finding)]) -> Vec<String> {
        let mut new = Vec::new();
        for (sig, f) in findings {
            let id = sig.id();
            match self.findings.get_mut(&id) {
                Some(_) => {}
                None => {
                    new.push(id.clone());
                    self.findings.insert(
                        id.clone(),
                        SignatureEntry {
                            signature: sig.clone(),
                            workloads: 0,
                            states: 0,
                            first_index: rec.index,
                            first_workload: rec.description.clone(),
                            example: f
                                .problems
                                .first()
                                .map(|p| p.message.clone())
                                .unwrap_or_default(),
                            reproduce: f.reproduce.clone(),
                            minimal: None,
                        },
                    );
                }
            }
        }
        for (id, states) in &rec.signatures {
            if let Some(e) = self.findings.get_mut(id) {
                e.workloads += 1;
                e.states += states;
            }
        }
        self.runs.push(rec);
        new.dedup();
        new
    }

    /// The state without wall-clock times, guest check counts and provenance: what two
    /// campaigns that ran the same workloads share (for comparisons).
    pub fn canonical(&self) -> State {
        let mut s = self.clone();
        for r in &mut s.runs {
            // Which images pruning leaves to a guest depends on the order recoveries
            // come back from the checkers: a cost, not a result.
            r.ms = 0;
            r.checked_images = 0;
            r.new_blocks = 0;
            r.first_signature = false;
        }
        s.runs.sort_by_key(|r| r.index);
        for e in s.findings.values_mut() {
            if let Some(m) = &mut e.minimal {
                m.ms = 0;
            }
        }
        s.config.shard = None;
        s.merged_from.clear();
        s.next = 0;
        s.exhausted = false;
        s
    }
}

/// How much a session runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Budget {
    /// This many workloads (of this shard's share).
    Workloads(u64),
    /// Start no new workload after this long.
    Time(Duration),
}

impl std::str::FromStr for Budget {
    type Err = String;
    fn from_str(s: &str) -> Result<Budget, String> {
        let bad = || {
            format!(
                "`{s}` is not a budget: a number of workloads (10) or a duration (90s, 30m, 8h)"
            )
        };
        if let Ok(n) = s.parse::<u64>() {
            return Ok(Budget::Workloads(n));
        }
        let (num, unit) = s.split_at(s.len().saturating_sub(1));
        let n: u64 = num.parse().map_err(|_| bad())?;
        let secs = match unit {
            "s" => n,
            "m" => n * 60,
            "h" => n * 3600,
            _ => return Err(bad()),
        };
        Ok(Budget::Time(Duration::from_secs(secs)))
    }
}

/// What one `pmcrash fuzz` session did, and the campaign so far.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// The campaign directory.
    pub campaign: PathBuf,
    /// Its configuration.
    pub config: CampaignConfig,
    /// Workloads run in this session.
    pub session_workloads: u64,
    /// Seconds this session ran.
    pub session_secs: f64,
    /// Of those, seconds spent minimising new signatures' workloads.
    pub minimise_secs: f64,
    /// Workloads in the campaign.
    pub workloads: u64,
    /// The next stream index.
    pub next: u64,
    /// The stream has ended.
    pub exhausted: bool,
    /// Crash states checked, over the campaign.
    pub states: u64,
    /// Images checked in a guest, over the campaign.
    pub checked_images: u64,
    /// Exhaustive sequences done per length, and how many there are.
    pub exhaustive: Vec<ExhaustiveProgress>,
    /// Signatures, by id.
    pub findings: BTreeMap<String, SignatureEntry>,
    /// Signatures first seen in this session.
    pub new_signatures: Vec<String>,
    /// Corpus entries (workloads that reached new code or gave a new signature).
    pub corpus: usize,
    /// Kernel coverage: translation blocks of file-system code run, over the campaign.
    pub coverage_blocks: u64,
    /// How coverage grew: the blocks after the first 1, 10, 100, 1,000, ... workloads
    /// (in the order they ran; empty for a merged campaign, whose shards ran side by
    /// side).
    pub coverage_after: Vec<CoverageAfter>,
    /// Workloads that could not be checked (by stream index, with why), over the
    /// campaign; each is saved as `errors/INDEX.toml`.
    pub failed: Vec<FailedWorkload>,
    /// Of those, how many this session ran.
    pub session_failed: u64,
    /// The session was interrupted (Ctrl-C).
    pub interrupted: bool,
}

/// The campaign's coverage after its first `workloads` workloads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CoverageAfter {
    /// Workloads run.
    pub workloads: u64,
    /// Blocks of file-system code they ran together.
    pub blocks: u64,
}

/// Coverage after 1, 10, 100, ... runs of `runs` (in the order they ran: each one's
/// `new_blocks` counts what it added).
fn coverage_growth(runs: &[RunRecord]) -> Vec<CoverageAfter> {
    let mut out = Vec::new();
    let (mut blocks, mut next) = (0u64, 1u64);
    for (i, r) in runs.iter().enumerate() {
        blocks += r.new_blocks;
        if i as u64 + 1 == next {
            out.push(CoverageAfter {
                workloads: next,
                blocks,
            });
            next *= 10;
        }
    }
    out
}

/// A workload the campaign could not check (a [`RunRecord`] with an `error`).
#[derive(Debug, Clone, Serialize)]
pub struct FailedWorkload {
    /// Its stream index.
    pub index: u64,
    /// Why.
    pub error: String,
}

/// How far the exhaustive generator got for one sequence length.
#[derive(Debug, Clone, Serialize)]
pub struct ExhaustiveProgress {
    /// Sequence length.
    pub k: u32,
    /// Sequences of that length finished (in this campaign's share).
    pub done: u64,
    /// Sequences of that length in this campaign's share.
    pub total: u64,
}

impl Summary {
    fn of(
        dir: &Path,
        s: &State,
        session: u64,
        (secs, minimise_secs): (f64, f64),
        new: Vec<String>,
        interrupted: bool,
    ) -> Summary {
        let max_k = s.config.gen.max_k();
        let shard = s.config.shard.unwrap_or_default();
        let exhaustive = (1..=max_k)
            .map(|k| {
                let done = s
                    .runs
                    .iter()
                    .filter(|r| matches!(r.origin, Origin::Exhaustive { pos } if pos.k == k))
                    .count() as u64;
                // This share's count: every stream index that maps to a sequence of
                // length k, taken by this shard.
                let first = gen::exhaustive_total(k - 1);
                let count = gen::exhaustive_count(k);
                let (lo, hi, step) = if s.config.gen.interleaved() {
                    (2 * first, 2 * (first + count), 2)
                } else {
                    (first, first + count, 1)
                };
                let total = if s.config.shard.is_none() {
                    count
                } else {
                    (lo..hi)
                        .step_by(step)
                        .filter(|i| i % shard.count == shard.index)
                        .count() as u64
                };
                ExhaustiveProgress { k, done, total }
            })
            .collect();
        Summary {
            campaign: dir.to_path_buf(),
            config: s.config.clone(),
            session_workloads: session,
            session_secs: secs,
            minimise_secs,
            workloads: s.runs.len() as u64,
            next: s.next,
            exhausted: s.exhausted,
            states: s.runs.iter().map(|r| r.states as u64).sum(),
            checked_images: s.runs.iter().map(|r| r.checked_images as u64).sum(),
            exhaustive,
            findings: s.findings.clone(),
            new_signatures: new,
            corpus: s.runs.iter().filter(|r| joins_corpus(r)).count(),
            coverage_blocks: s.coverage.len() as u64,
            coverage_after: if s.merged_from.is_empty() {
                coverage_growth(&s.runs)
            } else {
                Vec::new()
            },
            failed: s
                .runs
                .iter()
                .filter_map(|r| {
                    Some(FailedWorkload {
                        index: r.index,
                        error: r.error.clone()?,
                    })
                })
                .collect(),
            session_failed: 0,
            interrupted,
        }
    }

    fn with_session_failures(mut self, n: u64) -> Summary {
        self.session_failed = n;
        self
    }

    /// The text summary.
    pub fn render_text(&self) -> String {
        use std::fmt::Write;
        let c = &self.config;
        let mut o = String::new();
        let shard = c
            .shard
            .map_or_else(|| "merged".to_owned(), |s| format!("shard {s}"));
        let _ = writeln!(
            o,
            "fuzz campaign {}: {}-DAX, seed {}, generator {}, points {}, states {}, {shard}",
            self.campaign.display(),
            c.fs,
            c.seed,
            c.gen,
            c.points,
            c.states
        );
        let _ =
            writeln!(
            o,
            "workloads: {} this session ({:.0} s{}{}), {} in the campaign, next stream index {}{}",
            self.session_workloads,
            self.session_secs,
            if self.minimise_secs > 0.0 {
                format!(", {:.0} s of it minimising", self.minimise_secs)
            } else {
                String::new()
            },
            if self.session_workloads > 0 {
                format!(
                    ", {:.0} workloads/hour",
                    self.session_workloads as f64 * 3600.0
                        / (self.session_secs - self.minimise_secs).max(1e-3)
                )
            } else {
                String::new()
            },
            self.workloads,
            self.next,
            if self.exhausted { " (stream ended)" } else { "" }
        );
        for e in &self.exhaustive {
            let _ = writeln!(
                o,
                "exhaustive seq-{}: {}/{} done{}",
                e.k,
                e.done,
                e.total,
                if e.done == e.total { " (all)" } else { "" }
            );
        }
        let _ = writeln!(
            o,
            "crash states: {}, images checked: {}, coverage: {} blocks of file-system code, corpus: {} workloads",
            self.states, self.checked_images, self.coverage_blocks, self.corpus
        );
        if self.coverage_after.len() > 1 {
            let growth: Vec<String> = self
                .coverage_after
                .iter()
                .map(|c| format!("{} after {}", c.blocks, c.workloads))
                .collect();
            let _ = writeln!(o, "coverage grew: {} workloads", growth.join(", "));
        }
        let _ = writeln!(
            o,
            "signatures: {} ({} new this session)",
            self.findings.len(),
            self.new_signatures.len()
        );
        for (id, e) in &self.findings {
            let _ = writeln!(
                o,
                "  [{id}] {}\n      {} workloads, {} states; first #{}: {}\n      e.g. {}\n      saved in findings/{id}/",
                e.signature, e.workloads, e.states, e.first_index, e.first_workload, e.example
            );
            match &e.minimal {
                Some(MinimalRecord {
                    error: Some(err), ..
                }) => {
                    let _ = writeln!(o, "      not minimised: {err}");
                }
                Some(m) => {
                    let _ = writeln!(
                        o,
                        "      minimised: {} -> {} ops in {} runs{}{}: findings/{id}/minimal/workload.toml",
                        m.ops_before,
                        m.ops_after,
                        m.tries,
                        if m.complete { "" } else { " (stopped at the bound)" },
                        if m.confirmed { "" } else { " (its saved run did not give it again)" }
                    );
                }
                None => {}
            }
        }
        if !self.failed.is_empty() {
            let _ = writeln!(
                o,
                "could not check {} workloads ({} this session): a problem of the harness or of the workload, not a finding; each is saved in errors/",
                self.failed.len(),
                self.session_failed
            );
            const SHOWN: usize = 10;
            for f in self.failed.iter().take(SHOWN) {
                let _ = writeln!(o, "  #{}: {}", f.index, f.error);
            }
            if self.failed.len() > SHOWN {
                let _ = writeln!(o, "  and {} more", self.failed.len() - SHOWN);
            }
        }
        if self.interrupted {
            let _ = writeln!(o, "interrupted: resume with the same command and --resume");
        }
        o
    }
}

/// What a session is asked to do besides the campaign's configuration.
#[derive(Debug, Clone)]
pub struct FuzzOptions {
    /// How much to run.
    pub budget: Budget,
    /// Go on with the campaign in the directory (start it when there is none).
    pub resume: bool,
    /// Show a progress bar.
    pub progress: bool,
    /// Minimise each new signature's first workload with at most this many runs (0:
    /// do not minimise).
    pub minimize_tries: usize,
}

/// Run a campaign session in `dir`. The pipeline's run configuration is `run`, with
/// its `out_dir` set to the campaign's `.work/`.
pub async fn run_campaign(
    dir: &Path,
    config: CampaignConfig,
    mut run: RunConfig,
    factory: GuestFactory,
    opts: FuzzOptions,
    interrupt: Interrupt,
) -> Result<Summary, FuzzError> {
    std::fs::create_dir_all(dir).map_err(io("create", dir))?;
    // `--resume` where nothing was recorded yet (a pod restarted before its first
    // save) starts the campaign.
    let mut state = if opts.resume && dir.join(STATE).exists() {
        let s = State::load(dir)?;
        s.config.check_same(&config, dir, true)?;
        s
    } else {
        if dir.join(STATE).exists() {
            return Err(FuzzError::Exists {
                dir: dir.to_path_buf(),
            });
        }
        let s = State::new(config.clone());
        s.save(dir)?;
        s
    };
    let work = dir.join(".work");
    // What a killed session left half-made.
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(io("create", &work))?;
    run.out_dir = Some(work.clone());
    run.coverage = true;
    let mut corpus = load_corpus(dir, &state)?;
    let campaign_pipeline = || -> Result<Pipeline, FuzzError> {
        let mut p = Pipeline::with_factory(factory.clone(), run.clone())?;
        p.set_interrupt(interrupt.clone());
        // Every workload's bundle (with the traced results the oracle judged by); a new
        // signature's is kept, the others are removed with the workload's trace.
        p.save_bundles(&work.join("bundles"));
        Ok(p)
    };
    let mut pipeline = campaign_pipeline()?;
    let shard = state.config.shard.unwrap_or_default();
    let (len, unit) = match opts.budget {
        Budget::Workloads(n) => (n, "workloads"),
        Budget::Time(d) => (d.as_secs(), "seconds"),
    };
    let bar = crate::progress::bar(len, opts.progress, unit);
    let t0 = Instant::now();
    let mut session = 0u64;
    let mut new_sigs = Vec::new();
    let mut minimising = Duration::ZERO;
    let mut failed_this_session = 0u64;
    let stats = |s: &State| {
        format!(
            "{} workloads, {} states, {} images checked, {} findings, coverage {} blocks",
            s.runs.len(),
            s.runs.iter().map(|r| r.states).sum::<usize>(),
            s.runs.iter().map(|r| r.checked_images).sum::<usize>(),
            s.findings.len(),
            s.coverage.len()
        )
    };
    bar.set_message(stats(&state));
    let result: Result<(), FuzzError> = async {
        loop {
            let more = match opts.budget {
                Budget::Workloads(n) => session < n,
                Budget::Time(d) => t0.elapsed() < d,
            };
            if interrupt.is_requested() {
                return Ok(());
            }
            // A new signature's workload is minimised before the next workload runs,
            // and what a killed session left unminimised is on `--resume`.
            if opts.minimize_tries > 0 {
                if let Some(id) = unminimised(&state) {
                    // One set of guests at a time: the campaign's stop while the
                    // minimisation's run.
                    std::mem::replace(&mut pipeline, campaign_pipeline()?)
                        .shutdown()
                        .await;
                    bar.set_message(format!(
                        "minimising the workload of signature {id} (at most {} runs)",
                        opts.minimize_tries
                    ));
                    let t = Instant::now();
                    minimise_signature(
                        dir,
                        &mut state,
                        &id,
                        &factory,
                        opts.minimize_tries,
                        &interrupt,
                    )
                    .await?;
                    minimising += t.elapsed();
                    bar.set_message(stats(&state));
                    continue;
                }
            }
            if !more || state.exhausted {
                return Ok(());
            }
            let index = state.next;
            let Some(cand) = gen::candidate(state.config.seed, state.config.gen, index, &corpus)
            else {
                state.exhausted = true;
                state.save(dir)?;
                return Ok(());
            };
            let name = format!("w{index:08}");
            let t = Instant::now();
            let report = match pipeline.run_workload(&name, &cand.workload, false).await {
                Ok(r) => Some(r),
                Err(PipelineError::Interrupted { .. }) => return Ok(()),
                // What the workload itself decides (the same trace every time): one
                // such workload must not end a night's campaign.
                Err(e @ (PipelineError::BadTrace { .. } | PipelineError::Program { .. })) => {
                    finish_failed(dir, &mut state, &cand, &e.to_string(), t.elapsed())?;
                    None
                }
                Err(e) => return Err(e.into()),
            };
            // A workload cut short by Ctrl-C is not recorded: it runs again on resume.
            if interrupt.is_requested() && report.is_some() {
                return Ok(());
            }
            let new = match &report {
                Some(report) => finish(dir, &mut state, &cand, report, t.elapsed(), &work)?,
                None => {
                    failed_this_session += 1;
                    Vec::new()
                }
            };
            if state.runs.last().is_some_and(joins_corpus) {
                corpus.push((cand.index, cand.workload.clone()));
            }
            state.next = index + shard.count;
            state.save(dir)?;
            clean(&work, &name);
            new_sigs.extend(new);
            session += 1;
            match opts.budget {
                Budget::Workloads(_) => bar.inc(1),
                Budget::Time(_) => bar.set_position(t0.elapsed().as_secs().min(len)),
            }
            bar.set_message(stats(&state));
        }
    }
    .await;
    bar.finish_and_clear();
    pipeline.shutdown().await;
    result?;
    Ok(Summary::of(
        dir,
        &state,
        session,
        (t0.elapsed().as_secs_f64(), minimising.as_secs_f64()),
        new_sigs,
        interrupt.is_requested(),
    )
    .with_session_failures(failed_this_session))
}

/// The first signature (by id) whose workload is not minimised yet.
fn unminimised(state: &State) -> Option<String> {
    state
        .findings
        .iter()
        .find(|(_, e)| e.minimal.is_none())
        .map(|(id, _)| id.clone())
}

/// Minimise the first workload of signature `id` into `findings/ID/minimal/` and
/// record it in the state (saved). Cut short by the interrupt, nothing is recorded
/// and a resumed session does it again; any other failure is recorded as the
/// signature's `minimal.error` (the campaign goes on: its first workload stays the
/// example).
async fn minimise_signature(
    dir: &Path,
    state: &mut State,
    id: &str,
    factory: &GuestFactory,
    max_tries: usize,
    interrupt: &Interrupt,
) -> Result<(), FuzzError> {
    use crate::minimize::ops;
    let t0 = Instant::now();
    let fdir = dir.join("findings").join(id);
    let out = fdir.join("minimal");
    // What a killed session left half-written: the state is the record.
    let _ = std::fs::remove_dir_all(&out);
    let fs = state.config.fs;
    let same = |f: &Finding| Signature::of(fs, f).id() == id;
    let result: Result<ops::MinimizedOps, String> = async {
        let path = fdir.join("finding.json");
        let finding =
            std::fs::read_to_string(&path).map_err(|e| format!("read {}: {e}", path.display()))?;
        let finding: serde_json::Value =
            serde_json::from_str(&finding).map_err(|e| format!("{}: {e}", path.display()))?;
        let fid = finding["finding"]["id"]
            .as_str()
            .ok_or_else(|| format!("{}: no finding.id", path.display()))?
            .to_owned();
        let b = bundle::Bundle::open(&fdir.join("bundle")).map_err(|e| e.to_string())?;
        let cfg = ops::search_config(&b, None).map_err(|e| e.to_string())?;
        let mut p = Pipeline::with_factory(factory.clone(), cfg).map_err(|e| e.to_string())?;
        p.set_interrupt(interrupt.clone());
        if let Some(programs) = b.programs() {
            p.use_program_bundle(&programs);
        }
        let search = ops::OpsSearch {
            out: Some(&out),
            progress: false,
            max_tries: Some(max_tries),
            same: Some(&same),
        };
        let res = ops::minimize_ops_with(&mut p, &b, &fid, search).await;
        p.shutdown().await;
        res.map_err(|e| e.to_string())?
            .ok_or_else(|| format!("the bundle's report has no finding {fid}"))
    }
    .await;
    if interrupt.is_requested() {
        return Ok(());
    }
    let ms = t0.elapsed().as_millis() as u64;
    let record = match result {
        Ok(m) => MinimalRecord {
            ops_before: m.ops_before,
            ops_after: m.ops_after,
            kept: m.kept,
            tries: m.tries,
            complete: m.complete,
            confirmed: m.saved.is_some_and(|s| !s.findings.is_empty()),
            error: None,
            ms,
        },
        Err(error) => MinimalRecord {
            ops_before: 0,
            ops_after: 0,
            kept: Vec::new(),
            tries: 0,
            complete: false,
            confirmed: false,
            error: Some(error),
            ms,
        },
    };
    if let Some(e) = state.findings.get_mut(id) {
        e.minimal = Some(record);
    }
    state.save(dir)
}

/// Whether a finished workload joined the corpus: it ran new file-system code or was
/// the first to hit a signature.
fn joins_corpus(r: &RunRecord) -> bool {
    r.new_blocks > 0 || r.first_signature
}

/// The corpus a resumed campaign had: the entries of its recorded runs, in stream
/// order (a killed session may have left the entry of a workload it never recorded).
fn load_corpus(dir: &Path, state: &State) -> Result<Vec<CorpusEntry>, FuzzError> {
    let mut out = Vec::new();
    for r in state.runs.iter().filter(|r| joins_corpus(r)) {
        let path = dir.join("corpus").join(format!("{:08}.toml", r.index));
        let text = std::fs::read_to_string(&path).map_err(io("read", &path))?;
        let w = crash_models::ops::Workload::parse(&text, &path.display().to_string()).map_err(
            |e| FuzzError::BadCorpus {
                path: path.clone(),
                message: e.to_string(),
            },
        )?;
        out.push((r.index, w));
    }
    Ok(out)
}

fn clean(work: &Path, name: &str) {
    for ext in ["pmtrace", "base.img", "final.img"] {
        let _ = std::fs::remove_file(work.join(format!("{name}.{ext}")));
    }
    let _ = std::fs::remove_dir_all(work.join("bundles").join(name));
}

/// Record a workload that could not be checked: saved as `errors/INDEX.toml` (the
/// error on top, as a comment) first, the state after (by the caller).
fn finish_failed(
    dir: &Path,
    state: &mut State,
    cand: &Candidate,
    error: &str,
    took: Duration,
) -> Result<(), FuzzError> {
    let errors = dir.join("errors");
    std::fs::create_dir_all(&errors).map_err(io("create", &errors))?;
    let path = errors.join(format!("{:08}.toml", cand.index));
    let mut text = String::new();
    for line in error.lines() {
        text.push_str(&format!("# {line}\n"));
    }
    text.push_str(&format!(
        "# run it again: pmcrash run {} --fs {}\n",
        path.display(),
        state.config.fs
    ));
    text.push_str(&gen::to_toml(&cand.workload));
    crate::cache::write_atomic(&path, text.as_bytes())?;
    state.runs.push(RunRecord {
        error: Some(error.to_owned()),
        ..RunRecord::of(cand, took)
    });
    Ok(())
}

/// Record one finished workload: corpus entry and finding directories first, the
/// state after (by the caller).
fn finish(
    dir: &Path,
    state: &mut State,
    cand: &Candidate,
    report: &WorkloadReport,
    took: Duration,
    work: &Path,
) -> Result<Vec<String>, FuzzError> {
    let fs = state.config.fs;
    let sigs: Vec<(Signature, &Finding)> = report
        .findings
        .iter()
        .map(|f| (Signature::of(fs, f), f))
        .collect();
    let mut signatures: BTreeMap<String, u64> = BTreeMap::new();
    for (s, f) in &sigs {
        *signatures.entry(s.id()).or_default() += f.states;
    }
    let rec = RunRecord {
        crash_points: report.stats.crash_points,
        states: report.stats.states,
        checked_images: report.stats.checked_images,
        verdicts: report
            .verdicts
            .iter()
            .map(|(v, n)| (v.to_string(), *n))
            .collect(),
        signatures,
        blocks: report.coverage.as_ref().map_or(0, |b| b.len() as u64),
        ..RunRecord::of(cand, took)
    };
    let mut scratch = state.clone();
    let mut rec = rec;
    if let Some(b) = &report.coverage {
        rec.new_blocks = scratch.coverage.merge(b) as u64;
    }
    let new = scratch.record(rec.clone(), &sigs);
    if let Some(r) = scratch.runs.last_mut() {
        r.first_signature = !new.is_empty();
    }
    if scratch.runs.last().is_some_and(joins_corpus) {
        let toml = gen::to_toml(&cand.workload);
        let corpus = dir.join("corpus");
        std::fs::create_dir_all(&corpus).map_err(io("create", &corpus))?;
        crate::cache::write_atomic(
            &corpus.join(format!("{:08}.toml", cand.index)),
            toml.as_bytes(),
        )?;
        // A workload can be the first to hit several signatures: its bundle moves to
        // the first one's directory and is copied from there to the others'.
        let mut first_bundle: Option<PathBuf> = None;
        for id in &new {
            let fdir = dir.join("findings").join(id);
            std::fs::create_dir_all(&fdir).map_err(io("create", &fdir))?;
            let f = sigs.iter().find(|(s, _)| s.id() == *id).map(|(_, f)| *f);
            let json = serde_json::json!({
                "signature": scratch.findings[id].signature,
                "index": cand.index,
                "origin": cand.origin,
                "finding": f,
            });
            crate::cache::write_atomic(
                &fdir.join("finding.json"),
                &serde_json::to_vec_pretty(&json).expect("serialises"),
            )?;
            crate::cache::write_atomic(&fdir.join("workload.toml"), toml.as_bytes())?;
            let name = format!("w{:08}", cand.index);
            let bdir = fdir.join("bundle");
            // A bundle a killed session made before its state was saved.
            let _ = std::fs::remove_dir_all(&bdir);
            match &first_bundle {
                None => {
                    let saved = work.join("bundles").join(&name);
                    std::fs::rename(&saved, &bdir).map_err(io("move the bundle", &saved))?;
                    first_bundle = Some(bdir);
                }
                Some(first) => copy_tree(first, &bdir)?,
            }
        }
    }
    *state = scratch;
    Ok(new)
}

/// Merge campaigns into `out`: runs by stream index (each once; the same index must be
/// the same workload), signatures counted over the merged runs, corpus and finding
/// directories copied (each signature's from the campaign that hit it first).
pub fn merge(inputs: &[PathBuf], out: &Path) -> Result<State, FuzzError> {
    let mut states = Vec::new();
    for d in inputs {
        states.push((d.clone(), State::load(d)?));
    }
    let Some((_, first)) = states.first().cloned() else {
        return Err(FuzzError::NoCampaign {
            dir: out.to_path_buf(),
        });
    };
    if out.join(STATE).exists() {
        return Err(FuzzError::Exists {
            dir: out.to_path_buf(),
        });
    }
    let mut config = first.config.clone();
    config.shard = None;
    let mut runs: BTreeMap<u64, (PathBuf, RunRecord)> = BTreeMap::new();
    let mut details: BTreeMap<String, (u64, PathBuf, SignatureEntry)> = BTreeMap::new();
    for (dir, s) in &states {
        s.config.check_same(&first.config, dir, false)?;
        for r in &s.runs {
            match runs.get(&r.index) {
                Some((other, prev)) if prev.hash != r.hash => {
                    return Err(FuzzError::Diverged {
                        index: r.index,
                        a: other.clone(),
                        b: dir.clone(),
                    })
                }
                Some(_) => {}
                None => {
                    runs.insert(r.index, (dir.clone(), r.clone()));
                }
            }
        }
        for (id, e) in &s.findings {
            if details.get(id).is_none_or(|(i, _, _)| e.first_index < *i) {
                details.insert(id.clone(), (e.first_index, dir.clone(), e.clone()));
            }
        }
    }
    std::fs::create_dir_all(out).map_err(io("create", out))?;
    let mut merged = State::new(config);
    merged.merged_from = inputs.to_vec();
    for (_, s) in &states {
        merged.coverage.merge(&s.coverage);
    }
    for (dir, r) in runs.values() {
        merged.runs.push(r.clone());
        let corpus = format!("{:08}.toml", r.index);
        let from = dir.join("corpus").join(&corpus);
        if joins_corpus(r) && from.exists() {
            std::fs::create_dir_all(out.join("corpus")).map_err(io("create", out))?;
            let bytes = std::fs::read(&from).map_err(io("read", &from))?;
            crate::cache::write_atomic(&out.join("corpus").join(&corpus), &bytes)?;
        }
    }
    merged.next = runs.keys().next_back().map_or(0, |i| i + 1);
    for (id, (_, dir, e)) in &details {
        let mut e = e.clone();
        e.workloads = 0;
        e.states = 0;
        for r in &merged.runs {
            if let Some(n) = r.signatures.get(id) {
                e.workloads += 1;
                e.states += n;
            }
        }
        merged.findings.insert(id.clone(), e);
        copy_tree(
            &dir.join("findings").join(id),
            &out.join("findings").join(id),
        )?;
    }
    merged.save(out)?;
    Ok(merged)
}

/// Summarise a merged (or any) campaign.
pub fn summary(dir: &Path, s: &State) -> Summary {
    Summary::of(dir, s, 0, (0.0, 0.0), Vec::new(), false)
}

fn copy_tree(from: &Path, to: &Path) -> Result<(), FuzzError> {
    if !from.exists() || to.exists() {
        return Ok(());
    }
    std::fs::create_dir_all(to).map_err(io("create", to))?;
    for e in std::fs::read_dir(from).map_err(io("read", from))? {
        let e = e.map_err(io("read", from))?;
        let (src, dst) = (e.path(), to.join(e.file_name()));
        if src.is_dir() {
            copy_tree(&src, &dst)?;
        } else {
            let bytes = std::fs::read(&src).map_err(io("read", &src))?;
            crate::cache::write_atomic(&dst, &bytes)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{DroppedLine, PointRef};

    fn finding(op: u32, done: u32, writer: &str, offset: u64) -> Finding {
        Finding {
            id: crate::findings::finding_id(100 + offset, [(offset, 0)]),
            verdict: Verdict::DurabilityViolation,
            point: PointRef {
                record: 100 + offset,
                op: Some(op),
                op_name: Some("fsync".into()),
                ops_completed: done,
                stores: 5,
                after_marker: None,
            },
            problems: vec![],
            dropped_lines: vec![DroppedLine {
                pm_offset: offset,
                owner: "file a".into(),
                queued: 1,
                kept: 0,
                missing: format!(
                    "no flush of line {offset} before the fence at record {}",
                    offset + 9
                ),
                writer: Some(format!("{writer}+0x{offset:x} [ext4]")),
                label: None,
            }],
            kept_lines: 0,
            states: 3,
            crash_points: 1,
            first_record: 0,
            last_record: 0,
            reproduce: String::new(),
        }
    }

    fn rec(index: u64, sigs: &[(Signature, &Finding)]) -> RunRecord {
        RunRecord {
            index,
            origin: Origin::Random { seed: index },
            description: format!("w{index}"),
            hash: format!("{index}"),
            crash_points: 1,
            states: 3,
            checked_images: 1,
            verdicts: BTreeMap::new(),
            signatures: sigs.iter().map(|(s, f)| (s.id(), f.states)).collect(),
            blocks: 0,
            new_blocks: 0,
            first_signature: false,
            error: None,
            ms: 1,
        }
    }

    /// Two workloads whose findings differ only in numbers (offsets, records) share a
    /// signature: saved once, counted twice.
    #[test]
    fn same_signature_is_deduplicated_and_counted() {
        let (a, b) = (
            finding(2, 2, "ext4_da_write_end", 64),
            finding(2, 2, "ext4_da_write_end", 4096),
        );
        let (sa, sb) = (
            Signature::of(FsKind::Ext4, &a),
            Signature::of(FsKind::Ext4, &b),
        );
        assert_eq!(sa, sb);
        assert_eq!(sa.writers, vec!["ext4_da_write_end"]);
        assert_eq!(sa.op, "during op # fsync");
        let mut s = State::new(CampaignConfig::of(
            &RunConfig::default(),
            1,
            GenMode::Random,
            Shard::default(),
        ));
        let new = s.record(rec(0, &[(sa.clone(), &a)]), &[(sa.clone(), &a)]);
        assert_eq!(new, vec![sa.id()]);
        let new = s.record(rec(1, &[(sb.clone(), &b)]), &[(sb.clone(), &b)]);
        assert!(new.is_empty());
        let e = &s.findings[&sa.id()];
        assert_eq!((e.workloads, e.states, e.first_index), (2, 6, 0));
        // Another writer, or after the op returned: other signatures.
        let c = finding(2, 3, "ext4_da_write_end", 64);
        assert_ne!(Signature::of(FsKind::Ext4, &c), sa);
        let d = finding(2, 2, "jbd2_journal_commit", 64);
        assert_ne!(Signature::of(FsKind::Ext4, &d), sa);
        assert_ne!(Signature::of(FsKind::Xfs, &a), sa);
    }

    /// Signatures wait for minimisation in id order; its record's time is not part of
    /// what campaigns compare, and a state written before minimisation existed loads.
    #[test]
    fn signatures_are_minimised_in_order_and_times_are_not_compared() {
        let fs = FsKind::Ext4;
        let (a, b) = (
            finding(2, 2, "ext4_da_write_end", 64),
            finding(2, 2, "jbd2_journal_commit", 64),
        );
        let (sa, sb) = (Signature::of(fs, &a), Signature::of(fs, &b));
        let mut s = State::new(CampaignConfig::of(
            &RunConfig::default(),
            1,
            GenMode::Random,
            Shard::default(),
        ));
        let both = [(sa.clone(), &a), (sb.clone(), &b)];
        s.record(rec(0, &both), &both);
        let mut ids = [sa.id(), sb.id()];
        ids.sort();
        assert_eq!(unminimised(&s), Some(ids[0].clone()));
        let record = |ms| MinimalRecord {
            ops_before: 9,
            ops_after: 3,
            kept: vec![1, 4, 8],
            tries: 12,
            complete: true,
            confirmed: true,
            error: None,
            ms,
        };
        s.findings.get_mut(&ids[0]).unwrap().minimal = Some(record(5_000));
        assert_eq!(unminimised(&s), Some(ids[1].clone()));
        s.findings.get_mut(&ids[1]).unwrap().minimal = Some(record(7_000));
        assert_eq!(unminimised(&s), None);
        let mut t = s.clone();
        t.findings.get_mut(&ids[0]).unwrap().minimal = Some(record(1));
        assert_eq!(s.canonical(), t.canonical());
        t.findings
            .get_mut(&ids[0])
            .unwrap()
            .minimal
            .as_mut()
            .unwrap()
            .kept = vec![1, 8];
        assert_ne!(s.canonical(), t.canonical());
        // Without the field (an older campaign.json): to be minimised.
        let mut json = serde_json::to_value(&s).unwrap();
        for e in json["findings"].as_object_mut().unwrap().values_mut() {
            e.as_object_mut().unwrap().remove("minimal");
        }
        let old: State = serde_json::from_value(json).unwrap();
        assert_eq!(unminimised(&old), Some(ids[0].clone()));
    }

    /// A workload whose trace is unusable is saved with its error, recorded (not run
    /// again on resume, no corpus entry), and listed in the summary; the state still
    /// round-trips.
    #[test]
    fn a_workload_that_cannot_be_checked_is_saved_recorded_and_listed() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = State::new(CampaignConfig::of(
            &RunConfig::default(),
            1,
            GenMode::Random,
            Shard::default(),
        ));
        let cand = gen::candidate(1, GenMode::Random, 3, &[]).unwrap();
        let why = "the trace of w00000003 is unusable: 1 flushes could not be translated";
        finish_failed(dir.path(), &mut s, &cand, why, Duration::from_millis(7)).unwrap();
        let text = std::fs::read_to_string(dir.path().join("errors/00000003.toml")).unwrap();
        assert!(text.starts_with(&format!("# {why}\n# run it again: pmcrash run ")));
        let back = crash_models::ops::Workload::parse(&text, "errors/00000003.toml").unwrap();
        assert_eq!(back.hash(), cand.workload.hash());
        let r = s.runs.last().unwrap();
        assert_eq!((r.index, r.error.as_deref()), (3, Some(why)));
        assert!(!joins_corpus(r));
        let summary =
            Summary::of(dir.path(), &s, 1, (1.0, 0.0), Vec::new(), false).with_session_failures(1);
        assert_eq!(summary.failed.len(), 1);
        let text = summary.render_text();
        assert!(
            text.contains("could not check 1 workloads (1 this session)") && text.contains(why),
            "{text}"
        );
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<State>(&json).unwrap(), s);
        // A run that did not fail has no `error` key (older campaign.json files load).
        let mut ok = s.clone();
        ok.runs[0].error = None;
        assert!(!serde_json::to_string(&ok).unwrap().contains("\"error\""));
    }

    #[test]
    fn coverage_growth_is_read_at_powers_of_ten() {
        let runs: Vec<RunRecord> = (0..120u64)
            .map(|i| RunRecord {
                new_blocks: if i == 0 { 1000 } else { i % 3 },
                ..rec(i, &[])
            })
            .collect();
        let at = |n: usize| runs[..n].iter().map(|r| r.new_blocks).sum::<u64>();
        assert_eq!(
            coverage_growth(&runs),
            [1, 10, 100]
                .map(|n| CoverageAfter {
                    workloads: n as u64,
                    blocks: at(n),
                })
                .to_vec()
        );
        assert!(coverage_growth(&[]).is_empty());
    }

    /// A torn kernel block write is one signature per structure, whatever op was
    /// running; other verdicts keep the op.
    #[test]
    fn torn_writes_are_one_signature_per_structure() {
        let torn = |op_name: &str, what: &str| {
            let mut f = finding(2, 2, "__memcpy_flushcache", 64);
            f.verdict = Verdict::TornWrite;
            f.point.op_name = Some(op_name.into());
            f.problems = vec![crate::oracle::Problem {
                verdict: Verdict::TornWrite,
                message: format!(
                    "torn kernel block write to the {what}: 64 of the 4096 bytes at PM 0x20f000 \
                     (records 1..2) persisted; fsdax gives no sector atomicity"
                ),
                promised_by: None,
                path: None,
                file_offset: None,
            }];
            Signature::of(FsKind::Ext4, &f)
        };
        let a = torn("fsync", "jbd2 journal superblock");
        assert_eq!(a.op, "of the jbd2 journal superblock");
        assert_eq!(a, torn("sync", "jbd2 journal superblock"));
        assert_ne!(a, torn("fsync", "ext4 superblock"));
        assert_eq!(
            torn("fsync", "block 17 of the file system"),
            torn("close", "block 902 of the file system")
        );
        let (mut x, mut y) = (
            finding(2, 2, "jbd2_journal_commit", 64),
            finding(2, 2, "jbd2_journal_commit", 64),
        );
        y.point.op_name = Some("sync".into());
        x.verdict = Verdict::DurabilityViolation;
        assert_ne!(
            Signature::of(FsKind::Ext4, &x),
            Signature::of(FsKind::Ext4, &y)
        );
    }

    #[test]
    fn shards_budgets_and_state_round_trip() {
        assert_eq!("1/4".parse::<Shard>(), Ok(Shard { index: 1, count: 4 }));
        for bad in ["4/4", "1", "a/b", "0/0"] {
            assert!(bad.parse::<Shard>().is_err(), "{bad}");
        }
        assert_eq!("3".parse::<Budget>(), Ok(Budget::Workloads(3)));
        assert_eq!(
            "2m".parse::<Budget>(),
            Ok(Budget::Time(Duration::from_secs(120)))
        );
        assert!("2d".parse::<Budget>().is_err());
        let dir = tempfile::tempdir().unwrap();
        let a = finding(2, 2, "f", 64);
        let sa = Signature::of(FsKind::Ext4, &a);
        let mut s = State::new(CampaignConfig::of(
            &RunConfig::default(),
            1,
            GenMode::Random,
            Shard { index: 1, count: 2 },
        ));
        assert_eq!(s.next, 1);
        s.record(rec(1, &[(sa.clone(), &a)]), &[(sa, &a)]);
        s.save(dir.path()).unwrap();
        assert_eq!(State::load(dir.path()).unwrap(), s);
        std::fs::write(dir.path().join(STATE), "{\"version\": 1,\n \"config\": 3}").unwrap();
        let e = State::load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("campaign.json:2:"), "{e}");
    }

    /// Shards merged give the state of one run over the same indices.
    #[test]
    fn merge_of_shards_equals_one_run() {
        let f = |i: u64| finding(2, 2, if i % 2 == 0 { "a" } else { "b" }, i * 64);
        let cfg = |shard| CampaignConfig::of(&RunConfig::default(), 1, GenMode::Random, shard);
        let mut one = State::new(cfg(Shard::default()));
        let mut shards = [
            State::new(cfg("0/2".parse().unwrap())),
            State::new(cfg("1/2".parse().unwrap())),
        ];
        for i in 0..6 {
            let fi = f(i);
            let s = [(Signature::of(FsKind::Ext4, &fi), &fi)];
            one.record(rec(i, &s), &s);
            shards[(i % 2) as usize].record(rec(i, &s), &s);
        }
        let root = tempfile::tempdir().unwrap();
        let dirs: Vec<PathBuf> = (0..2).map(|i| root.path().join(format!("s{i}"))).collect();
        for (d, s) in dirs.iter().zip(&shards) {
            std::fs::create_dir_all(d).unwrap();
            s.save(d).unwrap();
        }
        let merged = merge(&dirs, &root.path().join("m")).unwrap();
        assert_eq!(merged.canonical(), one.canonical());
        // Merging a shard with itself counts nothing twice.
        let again = merge(&[dirs[0].clone(), dirs[0].clone()], &root.path().join("m2")).unwrap();
        assert_eq!(again.canonical(), shards[0].canonical());
        // Another seed does not merge.
        let mut other = State::new(CampaignConfig::of(
            &RunConfig::default(),
            2,
            GenMode::Random,
            Shard::default(),
        ));
        other.next = 0;
        let od = root.path().join("o");
        std::fs::create_dir_all(&od).unwrap();
        other.save(&od).unwrap();
        let e = merge(&[dirs[0].clone(), od], &root.path().join("m3")).unwrap_err();
        assert!(e.to_string().contains("--seed"), "{e}");
    }
}
