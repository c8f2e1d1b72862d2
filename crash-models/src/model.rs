//! x86 persistency models and the trace [`Replayer`].
//!
//! # The rules
//!
//! Every store is split at 8-byte word boundaries into [`Piece`]s: power-fail
//! atomicity on x86 is 8 aligned bytes, so a piece either survives whole or not at all,
//! and an unaligned store that straddles a word can tear. Because a line is a multiple
//! of 8 bytes, a piece also never straddles a cache line.
//!
//! Under [`Model::X86Adr`] (caches are lost at power failure):
//!
//! * Per cache line, the pieces stored since the line was last durable are queued in
//!   program order. At a crash a line holds its durable content plus *some prefix* of
//!   its queue: the cache may write the line back at any time, but a write-back carries
//!   the line as it is then, so a later store to a line never persists without the
//!   earlier ones.
//! * `clwb` and `clflushopt` mark the pieces queued so far in the line as flushed, on
//!   the vCPU that executed them. The next fence (`sfence`, `mfence`, a locked
//!   instruction, a serialising instruction) *on the same vCPU* makes them durable: a
//!   fence only orders its own CPU's flushes.
//! * `clflush` is treated exactly like `clwb`: durable at the next fence. The SDM
//!   orders `clflush` with older writes and other `clflush`es, so its write-back
//!   happens in order and real hardware may make it durable sooner; treating it as
//!   durable only at the next fence can only add crash states, never hide one, so the
//!   model stays sound. The price is that a program relying on `clflush` without a
//!   fence (legal on real hardware) can show losses that hardware would not.
//! * A non-temporal store is in flight until the next fence on its vCPU, then durable.
//!   It is queued in its line like a cached store and acts as a flush of the line up to
//!   and including itself. That keeps two things true: a later cached store to the
//!   same bytes can never persist before it (it is behind it in the queue), and an older
//!   cached store to the same line is written back with it, as a non-temporal store to
//!   a cached line evicts the line on x86. The cost of the prefix view is that the one
//!   state where the non-temporal store landed but an older cached store to the same
//!   line did not is not explored.
//! * Lines are independent between fences: a crash state is any combination of
//!   per-line prefixes.
//!
//! Under [`Model::X86Eadr`] the caches are in the persistence domain: every store is
//! durable at once, in program order. Nothing is ever in flight, so the only crash
//! states are the prefixes of the store order, i.e. the crash points themselves.
//!
//! The [`Replayer`] keeps, per line, the queue of pieces in flight, and the durable
//! content as a sparse map of lines with a per-byte written mask (bytes never stored
//! are the base image's). Memory grows with the trace's footprint, never with the
//! device size.

use crate::trace::{FlushKind, Record};
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};

/// A tiny multiplicative hasher (the rustc "Fx" scheme): the maps here are keyed by
/// line numbers, which need no DoS resistance and are hashed tens of millions of
/// times a second.
#[derive(Default, Clone, Copy)]
pub struct FxHasher(u64);

impl Hasher for FxHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(*b as u64);
        }
    }
    #[inline]
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0xf135_7aea_2e62_a9c5);
    }
    #[inline]
    fn write_u32(&mut self, n: u32) {
        self.write_u64(n as u64)
    }
    #[inline]
    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64)
    }
    #[inline]
    fn finish(&self) -> u64 {
        // The multiply leaves the best-mixed bits at the top; hashbrown picks buckets
        // from the bottom.
        self.0.rotate_left(26)
    }
}

/// A `HashMap` with [`FxHasher`].
pub type FxMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;
/// A `HashSet` with [`FxHasher`].
pub type FxSet<K> = HashSet<K, BuildHasherDefault<FxHasher>>;

/// Which persistency model to replay under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Model {
    /// Caches are volatile: stores are durable only once flushed and fenced (or
    /// non-temporal and fenced).
    #[default]
    X86Adr,
    /// Caches are persistent: every store is durable at once, in program order.
    X86Eadr,
}

impl Model {
    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Model::X86Adr => "x86-adr",
            Model::X86Eadr => "x86-eadr",
        }
    }
}

impl fmt::Display for Model {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Model {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "x86-adr" | "adr" => Ok(Model::X86Adr),
            "x86-eadr" | "eadr" => Ok(Model::X86Eadr),
            other => Err(format!(
                "unknown persistency model `{other}`: expected x86-adr or x86-eadr"
            )),
        }
    }
}

/// The default cache-line size in bytes.
pub const DEFAULT_LINE_SIZE: u32 = 64;
/// Power-fail atomicity in bytes: the granularity of [`Piece`]s.
pub const ATOMIC_BYTES: u64 = 8;

/// A persistency model and its cache-line size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ModelConfig {
    /// The model.
    pub model: Model,
    /// Cache-line size in bytes: a power of two from 8 to 4096.
    pub line_size: u32,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            model: Model::X86Adr,
            line_size: DEFAULT_LINE_SIZE,
        }
    }
}

impl ModelConfig {
    /// A checked configuration.
    pub fn new(model: Model, line_size: u32) -> Result<Self, String> {
        if !line_size.is_power_of_two() || !(8..=4096).contains(&line_size) {
            return Err(format!(
                "cache-line size {line_size} is not a power of two from 8 to 4096"
            ));
        }
        Ok(ModelConfig { model, line_size })
    }

    /// log2 of the line size.
    pub fn line_shift(&self) -> u32 {
        self.line_size.trailing_zeros()
    }
}

/// A part of a store that lies within one aligned 8-byte word: the unit of
/// power-fail atomicity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub struct Piece {
    /// Offset in the PM device.
    pub offset: u64,
    /// The bytes, little-endian in the low `size` bytes.
    pub value: u64,
    /// 1 to 8 bytes.
    pub size: u8,
    /// Index of the store record it came from.
    pub record: u64,
}

impl Piece {
    /// The stored bytes.
    #[inline]
    pub fn bytes(&self) -> [u8; 8] {
        self.value.to_le_bytes()
    }
}

/// Split a store into pieces at 8-byte word boundaries, calling `f` for each.
#[inline]
pub fn split_store(offset: u64, size: u8, value: u64, record: u64, mut f: impl FnMut(Piece)) {
    let size = size.clamp(1, 8) as u64;
    let word_end = (offset | (ATOMIC_BYTES - 1)) + 1;
    let first = size.min(word_end - offset);
    let mask = |n: u64| {
        if n >= 8 {
            u64::MAX
        } else {
            (1u64 << (8 * n)) - 1
        }
    };
    f(Piece {
        offset,
        value: value & mask(first),
        size: first as u8,
        record,
    });
    if first < size {
        let rest = size - first;
        f(Piece {
            offset: word_end,
            value: (value >> (8 * first)) & mask(rest),
            size: rest as u8,
            record,
        });
    }
}

/// The durable content: a sparse map from line number to the line's bytes and a
/// per-byte mask of the bytes the trace has made durable.
#[derive(Debug, Clone)]
pub struct Durable {
    line_size: usize,
    mask_words: usize,
    slots: FxMap<u64, u32>,
    bytes: Vec<u8>,
    masks: Vec<u64>,
}

impl Durable {
    fn new(line_size: u32) -> Self {
        Durable {
            line_size: line_size as usize,
            mask_words: (line_size as usize).div_ceil(64),
            slots: FxMap::default(),
            bytes: Vec::new(),
            masks: Vec::new(),
        }
    }

    #[inline]
    fn slot(&mut self, line: u64) -> usize {
        let next = self.slots.len() as u32;
        let s = *self.slots.entry(line).or_insert(next) as usize;
        if s == next as usize {
            self.bytes.resize(self.bytes.len() + self.line_size, 0);
            self.masks.resize(self.masks.len() + self.mask_words, 0);
        }
        s
    }

    #[inline]
    fn write_piece(&mut self, shift: u32, p: &Piece) {
        let line = p.offset >> shift;
        let s = self.slot(line);
        let off = (p.offset & (self.line_size as u64 - 1)) as usize;
        let n = p.size as usize;
        let base = s * self.line_size + off;
        self.bytes[base..base + n].copy_from_slice(&p.bytes()[..n]);
        let mw = s * self.mask_words + off / 64;
        // A piece lies within one 8-byte word, so within one 64-bit mask word.
        self.masks[mw] |= ((1u64 << n) - 1) << (off % 64);
    }

    /// Write pieces that all lie in `line`, looking the line up once.
    #[inline]
    fn write_pieces(&mut self, line: u64, pieces: &[Piece]) {
        let s = self.slot(line);
        let ls = self.line_size as u64;
        for p in pieces {
            let off = (p.offset & (ls - 1)) as usize;
            let n = p.size as usize;
            let base = s * self.line_size + off;
            self.bytes[base..base + n].copy_from_slice(&p.bytes()[..n]);
            self.masks[s * self.mask_words + off / 64] |= ((1u64 << n) - 1) << (off % 64);
        }
    }

    /// Number of lines holding durable bytes.
    pub fn lines(&self) -> usize {
        self.slots.len()
    }

    /// The line's bytes and per-byte mask (bit `i` of word `i / 64` set = byte `i` was
    /// made durable by the trace; other bytes are the base image's).
    pub fn line(&self, line: u64) -> Option<(&[u8], &[u64])> {
        let s = *self.slots.get(&line)? as usize;
        Some((
            &self.bytes[s * self.line_size..(s + 1) * self.line_size],
            &self.masks[s * self.mask_words..(s + 1) * self.mask_words],
        ))
    }

    /// Every line number holding durable bytes, sorted.
    pub fn sorted_lines(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self.slots.keys().copied().collect();
        v.sort_unstable();
        v
    }
}

#[derive(Debug, Clone, Default)]
struct LineQueue {
    pieces: Vec<Piece>,
    /// Pieces from records before this index are flushed (durable at the issuing
    /// vCPU's next fence).
    flushed_before: u64,
    /// (vCPU, its fence epoch, index in its pending list) of this line's pending
    /// entry, so repeated flushes and NT stores between two fences update one entry
    /// instead of queueing one each.
    pend: Option<(u16, u64, u32)>,
}

/// A line with stores that are not yet durable, as seen at a crash point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InFlightLine<'a> {
    /// Offset of the line's first byte in the PM device.
    pub line_offset: u64,
    /// The queued pieces, oldest first. A crash keeps some prefix of them.
    pub stores: &'a [Piece],
    /// How many of `stores` a flush (or a non-temporal store) has covered; they become
    /// durable at the flushing vCPU's next fence, but a crash before it may still drop
    /// them.
    pub flushed_prefix_len: usize,
}

/// Counters of what a replay has seen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ReplayStats {
    /// Records applied.
    pub records: u64,
    /// Store records.
    pub stores: u64,
    /// Of which non-temporal.
    pub nt_stores: u64,
    /// Flush records.
    pub flushes: u64,
    /// Flushes of a line with nothing new to write back.
    pub redundant_flushes: u64,
    /// Flushes skipped because the caller asked to ignore them.
    pub ignored_flushes: u64,
    /// Fence records.
    pub fences: u64,
    /// Fences that made at least one line durable.
    pub persisting_fences: u64,
    /// Marker records.
    pub markers: u64,
}

/// What applying one record did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Applied {
    /// Lines that became (more) durable because of this record.
    pub persisted_lines: u32,
}

/// Replays a trace under a persistency model, one record at a time.
///
/// ```
/// use crash_models::model::{ModelConfig, Replayer};
/// use crash_models::trace::{Record, Privilege, FlushKind, FenceKind};
/// let mut r = Replayer::new(ModelConfig::default());
/// r.apply(&Record::Store { offset: 8, size: 8, value: 1, non_temporal: false,
///     privilege: Privilege::User, vcpu: 0, pc: 0 });
/// assert_eq!(r.in_flight().len(), 1);
/// r.apply(&Record::Flush { offset: 8, flush: FlushKind::Clwb,
///     privilege: Privilege::User, vcpu: 0, pc: 0 });
/// r.apply(&Record::Fence { fence: FenceKind::Sfence, privilege: Privilege::User,
///     vcpu: 0, pc: 0 });
/// assert!(r.in_flight().is_empty());
/// ```
#[derive(Debug, Clone)]
pub struct Replayer {
    cfg: ModelConfig,
    shift: u32,
    index: u64,
    inflight: FxMap<u64, LineQueue>,
    /// Per vCPU: (line, flushed_before) waiting for that vCPU's next fence.
    pending: Vec<Vec<(u64, u64)>>,
    /// Per vCPU: fences seen (tells a line's `pend` entry is stale).
    epochs: Vec<u64>,
    durable: Durable,
    spare: Vec<Vec<Piece>>,
    ignored: FxSet<u64>,
    stats: ReplayStats,
}

impl Replayer {
    /// A replayer with nothing durable and nothing in flight (the base image).
    pub fn new(cfg: ModelConfig) -> Self {
        Replayer {
            cfg,
            shift: cfg.line_shift(),
            index: 0,
            inflight: FxMap::default(),
            pending: Vec::new(),
            epochs: Vec::new(),
            durable: Durable::new(cfg.line_size),
            spare: Vec::new(),
            ignored: FxSet::default(),
            stats: ReplayStats::default(),
        }
    }

    /// Treat the flush records at these indices as if they were not in the trace
    /// (used for `fmetadatasync`, see [`crate::promise::kernel_flushes_to_ignore`]).
    pub fn ignore_flushes(&mut self, indices: impl IntoIterator<Item = u64>) {
        self.ignored.extend(indices);
    }

    /// The configuration.
    pub fn config(&self) -> ModelConfig {
        self.cfg
    }

    /// Number of records applied so far: the next record's index.
    pub fn position(&self) -> u64 {
        self.index
    }

    /// Counters.
    pub fn stats(&self) -> ReplayStats {
        self.stats
    }

    /// The durable content.
    pub fn durable(&self) -> &Durable {
        &self.durable
    }

    /// Number of lines in flight.
    pub fn in_flight_count(&self) -> usize {
        self.inflight.len()
    }

    /// The lines in flight, sorted by offset.
    pub fn in_flight(&self) -> Vec<InFlightLine<'_>> {
        let mut v: Vec<InFlightLine<'_>> = self
            .inflight
            .iter()
            .map(|(&line, q)| InFlightLine {
                line_offset: line << self.shift,
                stores: &q.pieces,
                flushed_prefix_len: q.pieces.partition_point(|p| p.record < q.flushed_before),
            })
            .collect();
        v.sort_unstable_by_key(|l| l.line_offset);
        v
    }

    /// The in-flight queue of the line holding `offset`, if any.
    pub fn in_flight_line(&self, offset: u64) -> Option<InFlightLine<'_>> {
        let line = offset >> self.shift;
        self.inflight.get(&line).map(|q| InFlightLine {
            line_offset: line << self.shift,
            stores: &q.pieces,
            flushed_prefix_len: q.pieces.partition_point(|p| p.record < q.flushed_before),
        })
    }

    /// True when a fence on `vcpu` now would make something durable.
    pub fn fence_would_persist(&self, vcpu: u16) -> bool {
        self.pending.get(vcpu as usize).is_some_and(|p| {
            p.iter().any(|(line, before)| {
                self.inflight
                    .get(line)
                    .is_some_and(|q| q.pieces.first().is_some_and(|f| f.record < *before))
            })
        })
    }

    /// Apply the next record.
    #[inline]
    pub fn apply(&mut self, rec: &Record) -> Applied {
        let index = self.index;
        self.index += 1;
        self.stats.records += 1;
        match *rec {
            Record::Store {
                offset,
                size,
                value,
                non_temporal,
                vcpu,
                ..
            } => {
                self.stats.stores += 1;
                self.stats.nt_stores += non_temporal as u64;
                if self.cfg.model == Model::X86Eadr {
                    let shift = self.shift;
                    let d = &mut self.durable;
                    split_store(offset, size, value, index, |p| d.write_piece(shift, &p));
                    return Applied { persisted_lines: 1 };
                }
                split_store(offset, size, value, index, |p| {
                    self.queue(p, non_temporal, vcpu)
                });
                Applied::default()
            }
            Record::Flush {
                offset,
                flush,
                vcpu,
                ..
            } => {
                self.stats.flushes += 1;
                if !self.ignored.is_empty() && self.ignored.contains(&index) {
                    self.stats.ignored_flushes += 1;
                    return Applied::default();
                }
                // Every flush kind, clflush included, is durable at the next fence on
                // its vCPU: see the module docs.
                let _: FlushKind = flush;
                let line = offset >> self.shift;
                match self.inflight.get_mut(&line) {
                    Some(q) => {
                        if q.pieces.last().is_some_and(|p| p.record < q.flushed_before) {
                            // Written back already, but maybe on another vCPU whose
                            // fence has not come: this vCPU's fence must still count.
                            self.stats.redundant_flushes += 1;
                        }
                        q.flushed_before = index;
                        Self::mark_pending(
                            &mut self.pending,
                            &mut self.epochs,
                            q,
                            line,
                            index,
                            vcpu,
                        );
                    }
                    None => self.stats.redundant_flushes += 1,
                }
                Applied::default()
            }
            Record::Fence { vcpu, .. } => {
                self.stats.fences += 1;
                let n = self.fence(vcpu);
                if n > 0 {
                    self.stats.persisting_fences += 1;
                }
                Applied { persisted_lines: n }
            }
            Record::Marker { .. } => {
                self.stats.markers += 1;
                Applied::default()
            }
        }
    }

    /// Make the line's pieces before `before` durable at `vcpu`'s next fence.
    #[inline]
    fn mark_pending(
        pending: &mut Vec<Vec<(u64, u64)>>,
        epochs: &mut Vec<u64>,
        q: &mut LineQueue,
        line: u64,
        before: u64,
        vcpu: u16,
    ) {
        let v = vcpu as usize;
        if pending.len() <= v {
            pending.resize_with(v + 1, Vec::new);
            epochs.resize(v + 1, 0);
        }
        let epoch = epochs[v];
        match q.pend {
            Some((pv, pe, idx)) if pv == vcpu && pe == epoch => pending[v][idx as usize].1 = before,
            _ => {
                q.pend = Some((vcpu, epoch, pending[v].len() as u32));
                pending[v].push((line, before));
            }
        }
    }

    #[inline]
    fn queue(&mut self, p: Piece, non_temporal: bool, vcpu: u16) {
        let line = p.offset >> self.shift;
        let spare = &mut self.spare;
        let q = self.inflight.entry(line).or_insert_with(|| LineQueue {
            pieces: spare.pop().unwrap_or_default(),
            flushed_before: 0,
            pend: None,
        });
        q.pieces.push(p);
        if non_temporal {
            // A non-temporal store is its own flush (see the module docs).
            q.flushed_before = p.record + 1;
            Self::mark_pending(
                &mut self.pending,
                &mut self.epochs,
                q,
                line,
                p.record + 1,
                vcpu,
            );
        }
    }

    fn fence(&mut self, vcpu: u16) -> u32 {
        let Some(pending) = self.pending.get_mut(vcpu as usize) else {
            return 0;
        };
        if pending.is_empty() {
            return 0;
        }
        let mut pending = std::mem::take(pending);
        self.epochs[vcpu as usize] += 1;
        let mut persisted = 0;
        for &(line, before) in &pending {
            let Some(q) = self.inflight.get_mut(&line) else {
                continue;
            };
            let n = q.pieces.partition_point(|p| p.record < before);
            if n == 0 {
                continue;
            }
            persisted += 1;
            self.durable.write_pieces(line, &q.pieces[..n]);
            if n == q.pieces.len() {
                let mut q = self.inflight.remove(&line).expect("present");
                q.pieces.clear();
                self.spare.push(q.pieces);
            } else {
                q.pieces.drain(..n);
            }
        }
        pending.clear();
        // Keep the allocation for the next round of flushes.
        self.pending[vcpu as usize] = pending;
        persisted
    }
}
