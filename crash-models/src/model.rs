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
//! * `clflush` is durable at the next fence like `clwb`, and more: the SDM orders
//!   `clflush` with all writes, older and younger, and Px86 (Raad et al., POPL 2020)
//!   follows, so after `st x; clflush x; st y` on one vCPU, `y` never persists before
//!   `x`'s line as it was at the `clflush`, fence or not. The replayer keeps each
//!   `clflush` not yet fenced as a [`Barrier`]; at a crash point
//!   [`Replayer::orderings`] turns them into [`Ordering`]s between in-flight lines
//!   ("if line Y keeps more than `from` pieces, line X keeps at least `needs`"), and
//!   [`close`] lowers a state to the largest one below it that obeys them
//!   ([`crate::states::CrashStates::with_orderings`] applies it to every state). A
//!   fence that makes a younger store durable makes the `clflush`ed pieces durable
//!   with it (on another vCPU's fence, too). `clflushopt` and `clwb` are ordered only
//!   with older writes to their own line: no barrier.
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
//! # Non-temporal stores to a cached line: [`Model::X86AdrNt`]
//!
//! What does x86 allow when a non-temporal store hits a line that holds an older,
//! not yet written back, cached store? The sources:
//!
//! * Intel SDM Vol. 2, `MOVNTI` / `MOVNTDQ`: the non-temporal hint is implemented
//!   with the write-combining (WC) protocol; the processor neither writes the data into
//!   the cache hierarchy nor fetches the line; WC is weakly ordered, so a fence is
//!   needed. Vol. 1 §10.4.6.2 ("Caching of Temporal vs. Non-Temporal Data") sends the
//!   reader to the memory-type rules.
//! * Intel 64 and IA-32 Optimization Reference Manual, "Memory Type and Non-temporal
//!   Stores": for a non-temporal store to WB memory whose line *is* cached, "the
//!   instruction will ensure consistency"; the probable implementations are
//!   (a) updating the cached line in place, or (b) evicting the line and writing the
//!   non-temporal data to memory with WC semantics, and they "can be different for
//!   future processors". NT stores are "weakly ordered: no ordering is preserved
//!   between WC stores or between WC stores and other loads or stores".
//! * Px86 (Raad, Wickerson, Neiger, Vafeiadis, POPL 2020) models `clflush`,
//!   `clflushopt`, `clwb` and fences but not non-temporal stores; its extension
//!   (Raad, Maranget, Vafeiadis, "Extending Intel-x86 Consistency and Persistency:
//!   Formalising the Semantics of Intel-x86 Memory Types and Non-Temporal Stores",
//!   POPL 2022, doi:10.1145/3498683) adds them. (Its text was not at hand when this
//!   was written; this summary rests on the Intel manuals.)
//!
//! The conclusion: "ensure consistency" is a coherence promise (a later load sees the
//! NT value; the evicted older data never overwrites it), not a persistence order.
//! Under (b) the eviction's write-back of the older cached data and the WC write of
//! the NT data travel separately to the memory controller, and nothing orders their
//! arrival before a fence: a power failure may find the NT data durable and the older
//! cached store of the same line lost. That is the state the default model's prefix
//! view skips. Two things stay ordered: a *later* cached store to the line re-fetches
//! it with the NT data in it (coherence), so its write-back carries the NT data and
//! everything older; and at the fence both the NT data and the evicted data are
//! durable (the default rule above).
//!
//! `x86-adr-nt` ([`Model::X86AdrNt`], opt-in, weaker than the default) adds exactly
//! those states. Its durable content evolves as under `x86-adr`; at a crash, a line
//! keeps a prefix of its queue *plus the first `j` of its non-temporal pieces*
//! ([`Piece::ahead`]), for any `j`: an NT piece may persist without the older cached
//! pieces of its line, a cached piece still only with everything older. Bounds (what
//! it still does not explore): the line's NT pieces persist in program order among
//! themselves (WC would allow any order within a line, as it does across lines); an
//! unfenced `clflush`'s orderings are checked on the prefix only, and a state they
//! lower loses the lowered line's NT pieces too ([`close`]), so no state has NT pieces
//! of a line the orderings cut.
//! [`crate::states::CrashStates`] enumerates the NT pieces as one more unit per line
//! (a "lane" at the line's offset + 1, see [`crate::states`]), so every strategy and
//! cap applies to them as to lines.
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
    /// `x86-adr`, and a non-temporal store not yet fenced may persist before the
    /// older cached stores to its line (see the module docs): more crash states.
    X86AdrNt,
}

impl Model {
    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Model::X86Adr => "x86-adr",
            Model::X86Eadr => "x86-eadr",
            Model::X86AdrNt => "x86-adr-nt",
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
            "x86-adr-nt" | "adr-nt" => Ok(Model::X86AdrNt),
            other => Err(format!(
                "unknown persistency model `{other}`: expected x86-adr, x86-eadr or x86-adr-nt"
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
    /// The vCPU that stored it (a `clflush` orders only its own vCPU's younger stores).
    pub vcpu: u16,
    /// It may persist before the older pieces of its line: a non-temporal store under
    /// [`Model::X86AdrNt`] (a crash keeps a prefix of the line's queue plus some of
    /// these, in order).
    pub ahead: bool,
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
pub fn split_store(
    offset: u64,
    size: u8,
    value: u64,
    record: u64,
    vcpu: u16,
    mut f: impl FnMut(Piece),
) {
    let size = size.clamp(1, 8) as u64;
    let in_word = offset & (ATOMIC_BYTES - 1);
    if in_word + size <= ATOMIC_BYTES {
        // Within one word: the common case (aligned 8-byte stores) takes no mask.
        let value = if size == 8 {
            value
        } else {
            value & ((1u64 << (8 * size)) - 1)
        };
        f(Piece {
            offset,
            value,
            size: size as u8,
            record,
            vcpu,
            ahead: false,
        });
        return;
    }
    // Straddles a word boundary: both parts are 1 to 7 bytes.
    let first = ATOMIC_BYTES - in_word;
    let rest = size - first;
    f(Piece {
        offset,
        value: value & ((1u64 << (8 * first)) - 1),
        size: first as u8,
        record,
        vcpu,
        ahead: false,
    });
    f(Piece {
        offset: offset + first,
        value: (value >> (8 * first)) & ((1u64 << (8 * rest)) - 1),
        size: rest as u8,
        record,
        vcpu,
        ahead: false,
    });
}

/// No line: line numbers are offsets shifted right by at least 3, so never this.
const NO_LINE: u64 = u64::MAX;

/// No slot (a free entry of a [`LineIndex`]).
const NO_SLOT: u32 = u32::MAX;

/// A flat open-addressing hash index (linear probing, Fibonacci hashing) of the
/// slots of a [`Durable`]: each entry is a slot number, its key the slot's line
/// number in `line_of`. Slots are never removed. Keeping only 4 bytes an entry keeps
/// the index small, and the memory a replay touches with it.
#[derive(Debug, Clone)]
struct LineIndex {
    /// Slot numbers, [`NO_SLOT`] for a free entry. The length is a power of two.
    entries: Vec<u32>,
    /// 64 - log2(entries.len()).
    hash_shift: u32,
}

impl LineIndex {
    const MIN_BITS: u32 = 4;

    fn new() -> Self {
        LineIndex {
            entries: vec![NO_SLOT; 1 << Self::MIN_BITS],
            hash_shift: 64 - Self::MIN_BITS,
        }
    }

    /// The entry a line's probe starts at. Aligned groups of 4 lines hash together
    /// (Fibonacci hashing of the group number picks 4 adjacent entries, the line's
    /// place in the group one of them), so a run of stores over consecutive lines
    /// touches a quarter as many cache lines of the index, and slots made in a row
    /// sit together in `line_of` too.
    #[inline]
    fn home(&self, line: u64) -> usize {
        let h = (line >> 2).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> self.hash_shift;
        ((h & !3) | (line & 3)) as usize & (self.entries.len() - 1)
    }

    /// The slot of `line`, or the free entry where it would go.
    #[inline]
    fn probe(&self, line: u64, line_of: &[u64]) -> Result<u32, usize> {
        let mask = self.entries.len() - 1;
        let mut i = self.home(line);
        loop {
            let s = self.entries[i];
            if s == NO_SLOT {
                return Err(i);
            }
            if line_of[s as usize] == line {
                return Ok(s);
            }
            i = (i + 1) & mask;
        }
    }

    /// Room for `n` slots at a load of at most 3/4; true if the index grew (and
    /// entries moved).
    #[inline]
    fn reserve(&mut self, n: usize, line_of: &[u64]) -> bool {
        if n * 4 > self.entries.len() * 3 {
            self.grow(line_of);
            return true;
        }
        false
    }

    #[cold]
    fn grow(&mut self, line_of: &[u64]) {
        let bits = 64 - self.hash_shift + 1;
        self.entries = vec![NO_SLOT; 1 << bits];
        self.hash_shift = 64 - bits;
        // Re-insert in slot order: reads `line_of` once, in order.
        for (s, &line) in line_of.iter().enumerate() {
            if let Err(i) = self.probe(line, line_of) {
                self.entries[i] = s as u32;
            }
        }
    }
}

/// No queue (in `Replayer::queue_of`).
const NO_QUEUE: u32 = u32::MAX;

/// The durable content: a sparse map from line number to the line's bytes and a
/// per-byte mask of the bytes the trace has made durable.
///
/// Every line the trace has stored to gets a slot here when first stored to, durable
/// bytes or not (a slot with an all-zero mask holds none and is not listed): the
/// replayer keeps a line's in-flight queue by slot too, so a store, a flush and a
/// fence each find a line with at most one lookup.
#[derive(Debug, Clone)]
pub struct Durable {
    line_size: usize,
    mask_words: usize,
    /// Line number to slot.
    index: LineIndex,
    /// Per slot, its line number.
    line_of: Vec<u64>,
    bytes: Vec<u8>,
    masks: Vec<u64>,
    /// Slots with a mask that is not all zero.
    durable_lines: usize,
    /// The last line looked up and its slot (slots are never removed).
    last: (u64, u32),
    /// Bumped at every write of durable bytes (see [`Durable::version`]).
    version: u64,
}

impl Durable {
    fn new(line_size: u32) -> Self {
        Durable {
            line_size: line_size as usize,
            mask_words: (line_size as usize).div_ceil(64),
            index: LineIndex::new(),
            line_of: Vec::new(),
            bytes: Vec::new(),
            masks: Vec::new(),
            durable_lines: 0,
            last: (NO_LINE, 0),
            version: 0,
        }
    }

    /// The slot of `line`, made (holding nothing durable) if the line has none. The
    /// bool is true when it was made.
    #[inline]
    fn slot(&mut self, line: u64) -> (u32, bool) {
        if self.last.0 == line {
            return (self.last.1, false);
        }
        let (s, new) = match self.index.probe(line, &self.line_of) {
            Ok(s) => (s, false),
            Err(at) => (self.make_slot(line, at), true),
        };
        self.last = (line, s);
        (s, new)
    }

    /// Make a slot for `line`, which has none; `at` is the free index entry its
    /// probe ended at.
    #[inline(never)]
    fn make_slot(&mut self, line: u64, mut at: usize) -> u32 {
        let s = self.line_of.len() as u32;
        assert!(s != NO_SLOT, "more than 2^32 - 1 lines");
        if self.index.reserve(self.line_of.len() + 1, &self.line_of) {
            at = self.index.probe(line, &self.line_of).expect_err("new line");
        }
        self.index.entries[at] = s;
        self.line_of.push(line);
        self.bytes.resize(self.bytes.len() + self.line_size, 0);
        self.masks.resize(self.masks.len() + self.mask_words, 0);
        s
    }

    /// The slot of `line` if it has one.
    #[inline]
    fn find(&self, line: u64) -> Option<u32> {
        if self.last.0 == line {
            return Some(self.last.1);
        }
        self.index.probe(line, &self.line_of).ok()
    }

    /// Write pieces that all lie in the line of slot `s`.
    #[inline]
    fn write_pieces(&mut self, s: u32, pieces: &[Piece]) {
        let s = s as usize;
        let ls = self.line_size;
        let mw = self.mask_words;
        let bytes = &mut self.bytes[s * ls..(s + 1) * ls];
        let masks = &mut self.masks[s * mw..(s + 1) * mw];
        if masks.iter().all(|&m| m == 0) {
            self.durable_lines += 1;
        }
        self.version += 1;
        for p in pieces {
            let off = (p.offset as usize) & (ls - 1);
            // A piece lies within one 8-byte word, so within the line and within one
            // 64-bit mask word.
            if p.size == 8 {
                bytes[off..off + 8].copy_from_slice(&p.value.to_le_bytes());
                masks[off / 64] |= 0xff << (off % 64);
            } else {
                let n = p.size as usize;
                bytes[off..off + n].copy_from_slice(&p.bytes()[..n]);
                masks[off / 64] |= ((1u64 << n) - 1) << (off % 64);
            }
        }
    }

    fn has_durable(&self, s: usize) -> bool {
        self.masks[s * self.mask_words..(s + 1) * self.mask_words]
            .iter()
            .any(|&m| m != 0)
    }

    /// A counter that changes whenever durable bytes are written: two crash points
    /// of one replay with the same version have the same durable content (owned
    /// snapshots of it are shared between them, see `delta::PointSnapshot`).
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Number of lines holding durable bytes.
    pub fn lines(&self) -> usize {
        self.durable_lines
    }

    /// The line's bytes and per-byte mask (bit `i` of word `i / 64` set = byte `i` was
    /// made durable by the trace; other bytes are the base image's).
    pub fn line(&self, line: u64) -> Option<(&[u8], &[u64])> {
        let s = self.find(line)? as usize;
        if !self.has_durable(s) {
            return None;
        }
        Some((
            &self.bytes[s * self.line_size..(s + 1) * self.line_size],
            &self.masks[s * self.mask_words..(s + 1) * self.mask_words],
        ))
    }

    /// Every line number holding durable bytes, sorted.
    pub fn sorted_lines(&self) -> Vec<u64> {
        let mut v: Vec<u64> = if self.durable_lines == self.line_of.len() {
            self.line_of.clone()
        } else {
            (0..self.line_of.len())
                .filter(|&s| self.has_durable(s))
                .map(|s| self.line_of[s])
                .collect()
        };
        v.sort_unstable();
        v
    }
}

#[derive(Debug, Clone, Default)]
struct LineQueue {
    /// The line's slot in [`Durable`]; meaningful only while `pieces` is not empty
    /// (the queue is live).
    slot: u32,
    pieces: Vec<Piece>,
    /// Pieces from records before this index are flushed (durable at the issuing
    /// vCPU's next fence).
    flushed_before: u64,
    /// (vCPU, its fence epoch, index in its pending list) of this line's pending
    /// entry, so repeated flushes and NT stores between two fences update one entry
    /// instead of queueing one each.
    pend: Option<(u16, u64, u32)>,
}

/// A line waiting for a vCPU's next fence.
#[derive(Debug, Clone, Copy)]
struct Pending {
    /// The line's slot in [`Durable`].
    slot: u32,
    /// Pieces from records before this index become durable at the fence.
    before: u64,
}

/// A `clflush` not yet made durable by a fence on its vCPU: that vCPU's younger stores
/// persist only after the line's pieces older than the `clflush` (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Barrier {
    /// The flushed line's slot in [`Durable`].
    slot: u32,
    /// The `clflush`'s record: the line's pieces before it are ordered first.
    before: u64,
    /// The vCPU that executed it.
    vcpu: u16,
}

/// An ordering between two in-flight lines at a crash point, from a `clflush`: a state
/// that keeps more than `from` pieces of the line at `line` keeps at least `needs`
/// pieces of the line at `needs_line`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct Ordering {
    /// Offset of the constrained line.
    pub line: u64,
    /// Its pieces from this index on are younger than the `clflush`.
    pub from: u32,
    /// Offset of the `clflush`ed line.
    pub needs_line: u64,
    /// How many of its queued pieces are older than the `clflush`.
    pub needs: u32,
}

/// Lower a crash state (sorted `(line offset, pieces kept)`, counts at least 1, as in
/// [`crate::states::CrashState::kept`]) to the largest state below it that obeys
/// `orderings`: a line that keeps a piece younger than a `clflush` whose line did not
/// keep what the `clflush` wrote back loses the younger pieces, until nothing changes.
/// States that obey the orderings are closed under pointwise minimum, so that largest
/// state is unique, and a state that obeys them is left as it is.
pub fn close(kept: &mut Vec<(u64, u32)>, orderings: &[Ordering]) {
    fn kept_of(kept: &[(u64, u32)], line: u64) -> u32 {
        kept.binary_search_by_key(&line, |k| k.0)
            .map_or(0, |i| kept[i].1)
    }
    loop {
        let mut changed = false;
        for o in orderings {
            if kept_of(kept, o.line) > o.from && kept_of(kept, o.needs_line) < o.needs {
                let i = kept
                    .binary_search_by_key(&o.line, |k| k.0)
                    .expect("kept above");
                if o.from == 0 {
                    kept.remove(i);
                } else {
                    kept[i].1 = o.from;
                }
                // The line's lane of NT pieces (`x86-adr-nt`) goes with it: the lowered
                // state is then the prefix state the orderings allow.
                if let Ok(j) = kept.binary_search_by_key(&crate::states::lane_key(o.line), |k| k.0)
                {
                    kept.remove(j);
                }
                changed = true;
            }
        }
        if !changed {
            return;
        }
    }
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
    /// Per slot of `durable`: the index in `queues` of the line's queue, or
    /// [`NO_QUEUE`] if the line has nothing in flight.
    queue_of: Vec<u32>,
    /// The queues: live ones have pieces; empty ones are in `free` and keep their
    /// allocation for the next line.
    queues: Vec<LineQueue>,
    free: Vec<u32>,
    /// The line last stored to and its queue ([`NO_LINE`] if none): consecutive
    /// stores mostly hit the same line. Reset when a fence empties a queue.
    cur: (u64, u32),
    /// Per vCPU: lines waiting for that vCPU's next fence.
    pending: Vec<Vec<Pending>>,
    /// Per vCPU: fences seen (tells a line's `pend` entry is stale).
    epochs: Vec<u64>,
    durable: Durable,
    /// `clflush`es not yet fenced on their vCPU.
    barriers: Vec<Barrier>,
    ignored: FxSet<u64>,
    /// Counters, except `records`, which is `index`.
    stats: ReplayStats,
}

impl Replayer {
    /// A replayer with nothing durable and nothing in flight (the base image).
    pub fn new(cfg: ModelConfig) -> Self {
        Replayer {
            cfg,
            shift: cfg.line_shift(),
            index: 0,
            queue_of: Vec::new(),
            queues: Vec::new(),
            free: Vec::new(),
            cur: (NO_LINE, 0),
            pending: Vec::new(),
            epochs: Vec::new(),
            durable: Durable::new(cfg.line_size),
            barriers: Vec::new(),
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
        ReplayStats {
            records: self.index,
            ..self.stats
        }
    }

    /// The durable content.
    pub fn durable(&self) -> &Durable {
        &self.durable
    }

    /// Number of lines in flight.
    pub fn in_flight_count(&self) -> usize {
        self.queues.len() - self.free.len()
    }

    fn view<'a>(&self, q: &'a LineQueue) -> InFlightLine<'a> {
        InFlightLine {
            line_offset: self.durable.line_of[q.slot as usize] << self.shift,
            stores: &q.pieces,
            flushed_prefix_len: q.pieces.partition_point(|p| p.record < q.flushed_before),
        }
    }

    /// The queue of the line in slot `s`, if it has one.
    #[inline]
    fn queue_at(&self, s: u32) -> Option<&LineQueue> {
        match self.queue_of[s as usize] {
            NO_QUEUE => None,
            qi => Some(&self.queues[qi as usize]),
        }
    }

    /// The lines in flight, sorted by offset.
    pub fn in_flight(&self) -> Vec<InFlightLine<'_>> {
        let mut v: Vec<InFlightLine<'_>> = self
            .queues
            .iter()
            .filter(|q| !q.pieces.is_empty())
            .map(|q| self.view(q))
            .collect();
        v.sort_unstable_by_key(|l| l.line_offset);
        v
    }

    /// The in-flight queue of the line holding `offset`, if any.
    pub fn in_flight_line(&self, offset: u64) -> Option<InFlightLine<'_>> {
        let s = self.durable.find(offset >> self.shift)?;
        self.queue_at(s).map(|q| self.view(q))
    }

    /// True when a fence on `vcpu` now would make something durable.
    pub fn fence_would_persist(&self, vcpu: u16) -> bool {
        self.pending.get(vcpu as usize).is_some_and(|p| {
            p.iter().any(|e| {
                self.queue_at(e.slot)
                    .is_some_and(|q| q.pieces.first().is_some_and(|f| f.record < e.before))
            })
        })
    }

    /// Apply the next record.
    #[inline]
    pub fn apply(&mut self, rec: &Record) -> Applied {
        let index = self.index;
        self.index += 1;
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
                let eadr = self.cfg.model == Model::X86Eadr;
                let size = size.clamp(1, 8);
                if (offset & (ATOMIC_BYTES - 1)) + size as u64 <= ATOMIC_BYTES {
                    // Within one word (the common case): one piece, built in place.
                    let p = Piece {
                        offset,
                        value: if size == 8 {
                            value
                        } else {
                            value & ((1u64 << (8 * size)) - 1)
                        },
                        size,
                        record: index,
                        vcpu,
                        ahead: non_temporal && self.cfg.model == Model::X86AdrNt,
                    };
                    if eadr {
                        self.persist_now(p);
                    } else {
                        self.queue(p, non_temporal, vcpu);
                    }
                } else {
                    self.straddling(offset, size, value, index, non_temporal, vcpu);
                }
                if eadr {
                    return Applied { persisted_lines: 1 };
                }
                Applied::default()
            }
            Record::Flush {
                offset,
                flush,
                vcpu,
                ..
            } => {
                self.flush(offset, flush, vcpu, index);
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

    /// Under eADR: make a piece durable at once.
    #[inline]
    fn persist_now(&mut self, p: Piece) {
        let (s, new) = self.durable.slot(p.offset >> self.shift);
        if new {
            self.queue_of.push(NO_QUEUE);
        }
        self.durable.write_pieces(s, std::slice::from_ref(&p));
    }

    #[inline]
    fn flush(&mut self, offset: u64, flush: FlushKind, vcpu: u16, index: u64) {
        self.stats.flushes += 1;
        if !self.ignored.is_empty() && self.ignored.contains(&index) {
            self.stats.ignored_flushes += 1;
            return;
        }
        // Every flush kind is durable at the next fence on its vCPU; a clflush also
        // orders the vCPU's younger stores after it: see the module docs.
        let qi = match self.durable.find(offset >> self.shift) {
            Some(s) => self.queue_of[s as usize],
            None => NO_QUEUE,
        };
        if qi == NO_QUEUE {
            self.stats.redundant_flushes += 1;
            return;
        }
        let q = &mut self.queues[qi as usize];
        if q.pieces.last().is_some_and(|p| p.record < q.flushed_before) {
            // Written back already, but maybe on another vCPU whose fence has not
            // come: this vCPU's fence must still count.
            self.stats.redundant_flushes += 1;
        }
        q.flushed_before = index;
        let slot = q.slot;
        Self::mark_pending(&mut self.pending, &mut self.epochs, q, index, vcpu);
        if flush == FlushKind::Clflush {
            self.barriers.push(Barrier {
                slot,
                before: index,
                vcpu,
            });
        }
    }

    /// The orderings between in-flight lines that the `clflush`es not yet fenced
    /// impose at this point (see [`close`]); empty unless the trace has such a
    /// `clflush`.
    pub fn orderings(&self) -> Vec<Ordering> {
        let mut out = Vec::new();
        for b in &self.barriers {
            let Some(x) = self.queue_at(b.slot) else {
                continue;
            };
            let needs = x.pieces.partition_point(|p| p.record < b.before);
            if needs == 0 {
                continue;
            }
            let needs_line = self.durable.line_of[b.slot as usize] << self.shift;
            for y in &self.queues {
                if y.pieces.is_empty() || y.slot == b.slot {
                    continue;
                }
                if let Some(from) = y
                    .pieces
                    .iter()
                    .position(|p| p.record > b.before && p.vcpu == b.vcpu)
                {
                    out.push(Ordering {
                        line: self.durable.line_of[y.slot as usize] << self.shift,
                        from: from as u32,
                        needs_line,
                        needs: needs as u32,
                    });
                }
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Make the line's pieces before `before` durable at `vcpu`'s next fence.
    #[inline]
    fn mark_pending(
        pending: &mut Vec<Vec<Pending>>,
        epochs: &mut Vec<u64>,
        q: &mut LineQueue,
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
            Some((pv, pe, idx)) if pv == vcpu && pe == epoch => {
                pending[v][idx as usize].before = before
            }
            _ => {
                q.pend = Some((vcpu, epoch, pending[v].len() as u32));
                pending[v].push(Pending {
                    slot: q.slot,
                    before,
                });
            }
        }
    }

    /// Apply a store that straddles a word: two pieces.
    #[inline(never)]
    fn straddling(
        &mut self,
        offset: u64,
        size: u8,
        value: u64,
        index: u64,
        non_temporal: bool,
        vcpu: u16,
    ) {
        let ahead = non_temporal && self.cfg.model == Model::X86AdrNt;
        split_store(offset, size, value, index, vcpu, |mut p| {
            p.ahead = ahead;
            if self.cfg.model == Model::X86Eadr {
                self.persist_now(p)
            } else {
                self.queue(p, non_temporal, vcpu)
            }
        });
    }

    #[inline]
    fn queue(&mut self, p: Piece, non_temporal: bool, vcpu: u16) {
        let line = p.offset >> self.shift;
        let qi = if self.cur.0 == line {
            self.cur.1
        } else {
            self.find_queue(line)
        };
        let q = &mut self.queues[qi as usize];
        q.pieces.push(p);
        if non_temporal {
            // A non-temporal store is its own flush (see the module docs).
            q.flushed_before = p.record + 1;
            Self::mark_pending(&mut self.pending, &mut self.epochs, q, p.record + 1, vcpu);
        }
    }

    /// The queue of `line`, opened if the line has none; it becomes `cur`.
    #[inline(never)]
    fn find_queue(&mut self, line: u64) -> u32 {
        let (s, new) = self.durable.slot(line);
        if new {
            self.queue_of.push(NO_QUEUE);
        }
        let mut qi = self.queue_of[s as usize];
        if qi == NO_QUEUE {
            qi = self.open(s);
        }
        self.cur = (line, qi);
        qi
    }

    /// Start an (empty) queue for the line in slot `s`, which has none.
    fn open(&mut self, s: u32) -> u32 {
        let qi = match self.free.pop() {
            Some(qi) => {
                let q = &mut self.queues[qi as usize];
                q.slot = s;
                q.flushed_before = 0;
                q.pend = None;
                qi
            }
            None => {
                self.queues.push(LineQueue {
                    slot: s,
                    ..LineQueue::default()
                });
                (self.queues.len() - 1) as u32
            }
        };
        self.queue_of[s as usize] = qi;
        qi
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
        // Per vCPU, the youngest store this fence made durable (only needed while a
        // clflush of another vCPU waits for its fence).
        let mut youngest: Vec<Option<u64>> = Vec::new();
        let track = self.barriers.iter().any(|b| b.vcpu != vcpu);
        for e in &pending {
            let qi = self.queue_of[e.slot as usize];
            if qi == NO_QUEUE {
                continue;
            }
            let q = &mut self.queues[qi as usize];
            let n = match q.pieces.last() {
                Some(l) if l.record < e.before => q.pieces.len(),
                _ => q.pieces.partition_point(|p| p.record < e.before),
            };
            if n == 0 {
                continue;
            }
            persisted += 1;
            if track {
                note_youngest(&mut youngest, &q.pieces[..n]);
            }
            self.persist_prefix(e.slot, qi, n);
        }
        pending.clear();
        // Keep the allocation for the next round of flushes.
        self.pending[vcpu as usize] = pending;
        // This vCPU's clflushes are durable now.
        self.barriers.retain(|b| b.vcpu != vcpu);
        if track {
            persisted += self.enforce_barriers(youngest);
        }
        persisted
    }

    /// A fence made younger stores of another vCPU durable: the lines that vCPU
    /// `clflush`ed before them are durable too (as far as the `clflush`), and so on
    /// for what those pieces order. Returns the lines made durable.
    fn enforce_barriers(&mut self, mut youngest: Vec<Option<u64>>) -> u32 {
        let mut persisted = 0;
        loop {
            let fired = self.barriers.iter().position(|b| {
                youngest
                    .get(b.vcpu as usize)
                    .copied()
                    .flatten()
                    .is_some_and(|r| r > b.before)
            });
            let Some(i) = fired else {
                return persisted;
            };
            let b = self.barriers.swap_remove(i);
            let qi = self.queue_of[b.slot as usize];
            if qi == NO_QUEUE {
                continue;
            }
            let q = &mut self.queues[qi as usize];
            let n = q.pieces.partition_point(|p| p.record < b.before);
            if n == 0 {
                continue;
            }
            persisted += 1;
            note_youngest(&mut youngest, &q.pieces[..n]);
            self.persist_prefix(b.slot, qi, n);
        }
    }

    /// Make the first `n` pieces of queue `qi` (the line in `slot`) durable; an emptied
    /// queue is freed.
    #[inline]
    fn persist_prefix(&mut self, slot: u32, qi: u32, n: usize) {
        let q = &mut self.queues[qi as usize];
        self.durable.write_pieces(slot, &q.pieces[..n]);
        if n == q.pieces.len() {
            q.pieces.clear();
            self.queue_of[slot as usize] = NO_QUEUE;
            self.free.push(qi);
            if self.cur.1 == qi {
                self.cur.0 = NO_LINE;
            }
        } else {
            q.pieces.drain(..n);
        }
    }
}

/// Raise `youngest[vcpu]` to the youngest record among `pieces` of that vCPU.
fn note_youngest(youngest: &mut Vec<Option<u64>>, pieces: &[Piece]) {
    for p in pieces {
        let v = p.vcpu as usize;
        if youngest.len() <= v {
            youngest.resize(v + 1, None);
        }
        youngest[v] = youngest[v].max(Some(p.record));
    }
}

#[cfg(test)]
mod model_name_tests {
    use super::Model;

    #[test]
    fn model_names_round_trip() {
        for m in [Model::X86Adr, Model::X86Eadr, Model::X86AdrNt] {
            assert_eq!(m.name().parse::<Model>(), Ok(m));
        }
        assert_eq!("adr-nt".parse::<Model>(), Ok(Model::X86AdrNt));
        let e = "x86-nt".parse::<Model>().unwrap_err();
        assert!(e.contains("x86-adr-nt"), "{e}");
    }
}
