//! The trace: what the tracer saw, in execution order.
//!
//! This module defines the in-memory [`Record`] every other part of pmcrash consumes.
//! The on-disk format (versioned header, fixed-size little-endian records in
//! checksummed chunks, footer with counts) is encoded and decoded here too, so the host
//! reads traces without QEMU.

use serde::{Deserialize, Serialize};

/// Who executed an instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Privilege {
    /// Ring 0: the kernel (file-system code, the pmem driver).
    Kernel,
    /// Ring 3: the agent's own stores and flushes.
    User,
}

/// The flush instructions, as the trace records them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FlushKind {
    /// `clwb`.
    Clwb,
    /// `clflushopt`.
    Clflushopt,
    /// `clflush` (ordered with stores and other clflushes).
    Clflush,
}

/// What made an ordering point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FenceKind {
    /// `sfence`.
    Sfence,
    /// `mfence`.
    Mfence,
    /// A `lock`-prefixed read-modify-write or `xchg` with memory.
    Locked,
    /// A serialising instruction (`cpuid`, `wbinvd`, `iret`, a write to a control
    /// register, ...).
    Serializing,
}

/// Agent markers (see [`crate::protocol::marker`]).
pub use crate::protocol::marker::Kind as MarkerKind;

/// One event of a trace.
///
/// Offsets are byte offsets within the PM device (= offsets in its backing file),
/// not guest-physical addresses; the header carries the base to convert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Record {
    /// A store of 1 to 8 bytes (wider stores are split into 8-byte records).
    Store {
        /// Offset in the PM device.
        offset: u64,
        /// Bytes stored: 1, 2, 4 or 8 (or any 1..=8 for split unaligned tails).
        size: u8,
        /// The stored value, little-endian in the low `size` bytes.
        value: u64,
        /// A non-temporal store (movnti, movntdq, ...).
        non_temporal: bool,
        /// Kernel or user.
        privilege: Privilege,
        /// vCPU index.
        vcpu: u16,
        /// Guest program counter.
        pc: u64,
    },
    /// A cache-line flush that hit PM.
    Flush {
        /// Offset in the PM device of the flushed address (any byte of the line).
        offset: u64,
        /// Which instruction.
        flush: FlushKind,
        /// Kernel or user.
        privilege: Privilege,
        /// vCPU index.
        vcpu: u16,
        /// Guest program counter.
        pc: u64,
    },
    /// An ordering point.
    Fence {
        /// What kind.
        fence: FenceKind,
        /// Kernel or user.
        privilege: Privilege,
        /// vCPU index.
        vcpu: u16,
        /// Guest program counter.
        pc: u64,
    },
    /// A marker from the agent.
    Marker {
        /// What it marks.
        marker: MarkerKind,
        /// The op index (or the op count for `RunBegin`).
        op: u32,
        /// First op-specific value (`rsi`).
        a: u64,
        /// Second op-specific value (`rdi`).
        b: u64,
        /// vCPU index.
        vcpu: u16,
    },
}

// ---------------------------------------------------------------------------------
// The on-disk format.
//
// ```text
// header   "PMCTRACE" u32 version u32 header_len
//          u64 pm_base u64 pm_size u32 line_size u32 flags [u8;32] workload_hash
//          u16 len + kernel identity (UTF-8), u16 len + QEMU version (UTF-8)
//          u32 crc32 of everything above
// chunk*   "CHNK" u32 record_count u32 crc32(records) u32 0, then record_count
//          records of RECORD_BYTES each
// footer   "FOOT" u32 0, then u64 records stores flushes fences markers
//          unresolved_flushes elided_fences chunks, u32 crc32 of the footer so far,
//          "PMCTEND\0"
// ```
//
// Everything is little-endian. Records are fixed-size so a reader can seek by index and
// decode without branching on lengths; chunks carry their own checksum so a corrupt
// byte is reported where it is, not thousands of records later.
// ---------------------------------------------------------------------------------

use std::fmt;
use std::io::{Read, Write};

/// First bytes of every trace file.
pub const MAGIC: [u8; 8] = *b"PMCTRACE";
/// Last bytes of a finished trace file.
pub const END_MAGIC: [u8; 8] = *b"PMCTEND\0";
/// The format version this code writes and reads. Bump on any layout change.
pub const FORMAT_VERSION: u32 = 1;
/// Bytes per encoded record.
pub const RECORD_BYTES: usize = 32;
/// Records per chunk the [`Encoder`] writes (readers accept any count up to
/// [`MAX_CHUNK_RECORDS`]).
pub const CHUNK_RECORDS: usize = 4096;
/// Largest chunk a reader accepts, so a corrupt count cannot make it allocate without
/// bound.
pub const MAX_CHUNK_RECORDS: usize = 1 << 20;
const CHUNK_TAG: [u8; 4] = *b"CHNK";
const FOOTER_TAG: [u8; 4] = *b"FOOT";
const CHUNK_HEADER_BYTES: usize = 16;
const FOOTER_BYTES: usize = 8 + 8 * 8 + 4 + 8;
const MAX_STRING: usize = 4096;

/// [`Header::flags`] bit: the tracer left out locked and serialising instructions that
/// could not change any persistency state (no PM store or flush on any vCPU since the
/// previous recorded fence, and none on the fencing vCPU since its own previous one).
/// `sfence` and `mfence` are always recorded.
pub const FLAG_IDLE_FENCES_ELIDED: u32 = 1;

/// What a trace is a trace of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// Guest-physical address of the first byte of the PM device.
    pub pm_base: u64,
    /// Size of the PM device in bytes.
    pub pm_size: u64,
    /// Cache-line size flushes work on.
    pub line_size: u32,
    /// `FLAG_*` bits.
    pub flags: u32,
    /// The guest kernel's identity (e.g. `uname -r` or the package version).
    pub kernel: String,
    /// blake3 of the workload that ran.
    pub workload_hash: [u8; 32],
    /// The QEMU version that ran the guest.
    pub qemu_version: String,
}

/// Counts written after the last chunk; the reader checks them against what it saw.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Footer {
    /// All records.
    pub records: u64,
    /// [`Record::Store`] records.
    pub stores: u64,
    /// [`Record::Flush`] records.
    pub flushes: u64,
    /// [`Record::Fence`] records.
    pub fences: u64,
    /// [`Record::Marker`] records.
    pub markers: u64,
    /// Flushes whose address the tracer could not translate to a physical one. They
    /// have no record (there is no offset to give); a trace with any is incomplete.
    pub unresolved_flushes: u64,
    /// Fences left out under [`FLAG_IDLE_FENCES_ELIDED`].
    pub elided_fences: u64,
    /// Chunks.
    pub chunks: u64,
}

impl Footer {
    /// Count one record.
    pub fn count(&mut self, r: &Record) {
        self.records += 1;
        match r {
            Record::Store { .. } => self.stores += 1,
            Record::Flush { .. } => self.flushes += 1,
            Record::Fence { .. } => self.fences += 1,
            Record::Marker { .. } => self.markers += 1,
        }
    }
}

/// A whole decoded trace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trace {
    /// The header.
    pub header: Header,
    /// Every record, in execution order.
    pub records: Vec<Record>,
    /// The footer (already checked against `records`).
    pub footer: Footer,
}

/// Why a trace could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// The bytes are not a valid trace; `offset` is where the problem was found.
    #[error("corrupt trace at byte {offset}: {what}")]
    Corrupt {
        /// Byte offset in the file.
        offset: u64,
        /// What is wrong.
        what: String,
    },
    /// The file ends early (a tracer that was killed, or a truncated copy).
    #[error("truncated trace: ends at byte {offset} inside the {what}")]
    Truncated {
        /// Where the data ends.
        offset: u64,
        /// What was being read.
        what: &'static str,
    },
    /// Reading or writing failed.
    #[error("trace I/O error at byte {offset}: {source}")]
    Io {
        /// Where.
        offset: u64,
        /// The I/O error.
        source: std::io::Error,
    },
}

impl TraceError {
    /// The byte offset the error names.
    pub fn offset(&self) -> u64 {
        match self {
            TraceError::Corrupt { offset, .. }
            | TraceError::Truncated { offset, .. }
            | TraceError::Io { offset, .. } => *offset,
        }
    }
}

fn corrupt(offset: u64, what: impl Into<String>) -> TraceError {
    TraceError::Corrupt {
        offset,
        what: what.into(),
    }
}

impl fmt::Display for Header {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "PM {:#x}+{:#x}, line {} B, kernel {}, QEMU {}",
            self.pm_base, self.pm_size, self.line_size, self.kernel, self.qemu_version
        )
    }
}

/// Encode the header.
pub fn encode_header(h: &Header) -> Vec<u8> {
    let mut v = Vec::with_capacity(96 + h.kernel.len() + h.qemu_version.len());
    v.extend_from_slice(&MAGIC);
    v.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    v.extend_from_slice(&0u32.to_le_bytes()); // header_len, patched below
    v.extend_from_slice(&h.pm_base.to_le_bytes());
    v.extend_from_slice(&h.pm_size.to_le_bytes());
    v.extend_from_slice(&h.line_size.to_le_bytes());
    v.extend_from_slice(&h.flags.to_le_bytes());
    v.extend_from_slice(&h.workload_hash);
    for s in [&h.kernel, &h.qemu_version] {
        // Over-long identity strings are cut (on a char boundary) rather than refused:
        // they are labels, and the reader caps them too.
        let mut n = s.len().min(MAX_STRING);
        while !s.is_char_boundary(n) {
            n -= 1;
        }
        v.extend_from_slice(&(n as u16).to_le_bytes());
        v.extend_from_slice(&s.as_bytes()[..n]);
    }
    let len = (v.len() + 4) as u32;
    v[12..16].copy_from_slice(&len.to_le_bytes());
    let crc = crc32fast::hash(&v);
    v.extend_from_slice(&crc.to_le_bytes());
    v
}

const TAG_STORE: u8 = 1;
const TAG_FLUSH: u8 = 2;
const TAG_FENCE: u8 = 3;
const TAG_MARKER: u8 = 4;
const F_KERNEL: u8 = 1;
const F_NT: u8 = 2;

fn priv_bit(p: Privilege) -> u8 {
    match p {
        Privilege::Kernel => F_KERNEL,
        Privilege::User => 0,
    }
}

/// Encode one record into its fixed 32 bytes.
///
/// Layout: `[0]` tag, `[1]` flags (bit 0 kernel, bit 1 non-temporal), `[2]` size or
/// kind, `[3]` 0, `[4..6]` vCPU, `[6..8]` 0, `[8..16]` offset (marker: `a`),
/// `[16..24]` value (marker: `b`; flush, fence: 0), `[24..32]` pc (marker: op index in
/// `[24..28]`).
#[inline]
pub fn encode_record(r: &Record) -> [u8; RECORD_BYTES] {
    let mut b = [0u8; RECORD_BYTES];
    let (tag, flags, aux, vcpu, w1, w2, w3) = match *r {
        Record::Store {
            offset,
            size,
            value,
            non_temporal,
            privilege,
            vcpu,
            pc,
        } => (
            TAG_STORE,
            priv_bit(privilege) | if non_temporal { F_NT } else { 0 },
            size,
            vcpu,
            offset,
            value,
            pc,
        ),
        Record::Flush {
            offset,
            flush,
            privilege,
            vcpu,
            pc,
        } => (
            TAG_FLUSH,
            priv_bit(privilege),
            flush as u8,
            vcpu,
            offset,
            0,
            pc,
        ),
        Record::Fence {
            fence,
            privilege,
            vcpu,
            pc,
        } => (TAG_FENCE, priv_bit(privilege), fence as u8, vcpu, 0, 0, pc),
        Record::Marker {
            marker,
            op,
            a,
            b: bb,
            vcpu,
        } => (TAG_MARKER, 0, marker as u32 as u8, vcpu, a, bb, op as u64),
    };
    b[0] = tag;
    b[1] = flags;
    b[2] = aux;
    b[4..6].copy_from_slice(&vcpu.to_le_bytes());
    b[8..16].copy_from_slice(&w1.to_le_bytes());
    b[16..24].copy_from_slice(&w2.to_le_bytes());
    b[24..32].copy_from_slice(&w3.to_le_bytes());
    b
}

/// Decode one record; `offset` is only used for the error.
#[inline]
pub fn decode_record(b: &[u8; RECORD_BYTES], offset: u64) -> Result<Record, TraceError> {
    match decode_record_fast(b) {
        Some(r) => Ok(r),
        None => decode_record_slow(b, offset),
    }
}

const FLUSH_CLWB: u8 = FlushKind::Clwb as u8;
const FLUSH_CLFLUSHOPT: u8 = FlushKind::Clflushopt as u8;
const FLUSH_CLFLUSH: u8 = FlushKind::Clflush as u8;
const FENCE_SFENCE: u8 = FenceKind::Sfence as u8;
const FENCE_MFENCE: u8 = FenceKind::Mfence as u8;
const FENCE_LOCKED: u8 = FenceKind::Locked as u8;
const FENCE_SERIALIZING: u8 = FenceKind::Serializing as u8;
/// Bytes 3, 6 and 7 of a record's first word (reserved, must be zero).
const RESERVED_HEAD_MASK: u64 = 0xffff_0000_ff00_0000;

/// The hot path of [`decode_record`]: the same checks, without building an error.
///
/// `None` means the record is invalid in some way; [`decode_record_slow`] then says
/// how. The two accept exactly the same records (a test checks they agree).
#[inline(always)]
fn decode_record_fast(b: &[u8; RECORD_BYTES]) -> Option<Record> {
    // Constant-offset fixed-size reads: no bounds checks survive.
    let head = u64::from_le_bytes(*array_ref::<0>(b));
    let w1 = u64::from_le_bytes(*array_ref::<8>(b));
    let w2 = u64::from_le_bytes(*array_ref::<16>(b));
    let w3 = u64::from_le_bytes(*array_ref::<24>(b));
    if head & RESERVED_HEAD_MASK != 0 {
        return None;
    }
    let tag = head as u8;
    let flags = (head >> 8) as u8;
    let aux = (head >> 16) as u8;
    let vcpu = (head >> 32) as u16;
    let privilege = if flags & F_KERNEL != 0 {
        Privilege::Kernel
    } else {
        Privilege::User
    };
    match tag {
        TAG_STORE => {
            // size 1..=8, and no value bits above it (a shift by 64 means none).
            let wide = w2.checked_shr(u32::from(aux) * 8).unwrap_or(0);
            if flags & !(F_KERNEL | F_NT) != 0 || aux.wrapping_sub(1) > 7 || wide != 0 {
                return None;
            }
            Some(Record::Store {
                offset: w1,
                size: aux,
                value: w2,
                non_temporal: flags & F_NT != 0,
                privilege,
                vcpu,
                pc: w3,
            })
        }
        TAG_FLUSH => {
            if flags & !F_KERNEL != 0 || w2 != 0 {
                return None;
            }
            let flush = match aux {
                FLUSH_CLWB => FlushKind::Clwb,
                FLUSH_CLFLUSHOPT => FlushKind::Clflushopt,
                FLUSH_CLFLUSH => FlushKind::Clflush,
                _ => return None,
            };
            Some(Record::Flush {
                offset: w1,
                flush,
                privilege,
                vcpu,
                pc: w3,
            })
        }
        TAG_FENCE => {
            if flags & !F_KERNEL != 0 || w1 | w2 != 0 {
                return None;
            }
            let fence = match aux {
                FENCE_SFENCE => FenceKind::Sfence,
                FENCE_MFENCE => FenceKind::Mfence,
                FENCE_LOCKED => FenceKind::Locked,
                FENCE_SERIALIZING => FenceKind::Serializing,
                _ => return None,
            };
            Some(Record::Fence {
                fence,
                privilege,
                vcpu,
                pc: w3,
            })
        }
        TAG_MARKER => {
            if flags != 0 || w3 >> 32 != 0 {
                return None;
            }
            Some(Record::Marker {
                marker: MarkerKind::from_u32(u32::from(aux))?,
                op: w3 as u32,
                a: w1,
                b: w2,
                vcpu,
            })
        }
        _ => None,
    }
}

/// `b[N..N + 8]` as an array, checked at compile time.
#[inline(always)]
fn array_ref<const N: usize>(b: &[u8; RECORD_BYTES]) -> &[u8; 8] {
    const { assert!(N + 8 <= RECORD_BYTES) };
    // The slice has length 8 by construction, so this never fails (and the check
    // folds away).
    b[N..N + 8].try_into().unwrap()
}

/// The reference decoder: every check in order, with a message for the first that
/// fails. Only reached for records the fast path rejects.
#[cold]
#[inline(never)]
fn decode_record_slow(b: &[u8; RECORD_BYTES], offset: u64) -> Result<Record, TraceError> {
    let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap());
    let tag = b[0];
    let flags = b[1];
    let aux = b[2];
    let vcpu = u16::from_le_bytes([b[4], b[5]]);
    if b[3] != 0 || b[6] != 0 || b[7] != 0 {
        return Err(corrupt(offset, "reserved record bytes are not zero"));
    }
    let privilege = if flags & F_KERNEL != 0 {
        Privilege::Kernel
    } else {
        Privilege::User
    };
    let (w1, w2, w3) = (u64_at(8), u64_at(16), u64_at(24));
    let bad_flags = |allowed: u8| flags & !allowed != 0;
    Ok(match tag {
        TAG_STORE => {
            if bad_flags(F_KERNEL | F_NT) {
                return Err(corrupt(offset, format!("bad store flags {flags:#x}")));
            }
            if !(1..=8).contains(&aux) {
                return Err(corrupt(offset, format!("store size {aux} not in 1..=8")));
            }
            if aux < 8 && w2 >> (aux as u32 * 8) != 0 {
                return Err(corrupt(offset, "store value wider than its size"));
            }
            Record::Store {
                offset: w1,
                size: aux,
                value: w2,
                non_temporal: flags & F_NT != 0,
                privilege,
                vcpu,
                pc: w3,
            }
        }
        TAG_FLUSH => {
            if bad_flags(F_KERNEL) || w2 != 0 {
                return Err(corrupt(offset, "bad flush record"));
            }
            let flush = match aux {
                x if x == FlushKind::Clwb as u8 => FlushKind::Clwb,
                x if x == FlushKind::Clflushopt as u8 => FlushKind::Clflushopt,
                x if x == FlushKind::Clflush as u8 => FlushKind::Clflush,
                _ => return Err(corrupt(offset, format!("unknown flush kind {aux}"))),
            };
            Record::Flush {
                offset: w1,
                flush,
                privilege,
                vcpu,
                pc: w3,
            }
        }
        TAG_FENCE => {
            if bad_flags(F_KERNEL) || w1 != 0 || w2 != 0 {
                return Err(corrupt(offset, "bad fence record"));
            }
            let fence = match aux {
                x if x == FenceKind::Sfence as u8 => FenceKind::Sfence,
                x if x == FenceKind::Mfence as u8 => FenceKind::Mfence,
                x if x == FenceKind::Locked as u8 => FenceKind::Locked,
                x if x == FenceKind::Serializing as u8 => FenceKind::Serializing,
                _ => return Err(corrupt(offset, format!("unknown fence kind {aux}"))),
            };
            Record::Fence {
                fence,
                privilege,
                vcpu,
                pc: w3,
            }
        }
        TAG_MARKER => {
            if flags != 0 || w3 >> 32 != 0 {
                return Err(corrupt(offset, "bad marker record"));
            }
            let Some(marker) = MarkerKind::from_u32(aux as u32) else {
                return Err(corrupt(offset, format!("unknown marker kind {aux}")));
            };
            Record::Marker {
                marker,
                op: w3 as u32,
                a: w1,
                b: w2,
                vcpu,
            }
        }
        _ => return Err(corrupt(offset, format!("unknown record tag {tag}"))),
    })
}

/// Writes a trace: header first, then records in chunks, then the footer.
///
/// Records are buffered until a chunk is full; [`Encoder::finish`] writes the last
/// chunk and the footer. A trace without its footer is reported as truncated.
pub struct Encoder<W: Write> {
    out: W,
    buf: Vec<u8>,
    pending: usize,
    footer: Footer,
}

impl<W: Write> Encoder<W> {
    /// Start a trace by writing its header.
    pub fn new(mut out: W, header: &Header) -> std::io::Result<Self> {
        out.write_all(&encode_header(header))?;
        Ok(Encoder {
            out,
            buf: Vec::with_capacity(CHUNK_HEADER_BYTES + CHUNK_RECORDS * RECORD_BYTES),
            pending: 0,
            footer: Footer::default(),
        })
    }

    /// Append one record.
    pub fn push(&mut self, r: &Record) -> std::io::Result<()> {
        if self.pending == 0 {
            self.buf.clear();
            self.buf.extend_from_slice(&[0u8; CHUNK_HEADER_BYTES]);
        }
        self.buf.extend_from_slice(&encode_record(r));
        self.footer.count(r);
        self.pending += 1;
        if self.pending == CHUNK_RECORDS {
            self.flush_chunk()?;
        }
        Ok(())
    }

    fn flush_chunk(&mut self) -> std::io::Result<()> {
        if self.pending == 0 {
            return Ok(());
        }
        let crc = crc32fast::hash(&self.buf[CHUNK_HEADER_BYTES..]);
        self.buf[0..4].copy_from_slice(&CHUNK_TAG);
        self.buf[4..8].copy_from_slice(&(self.pending as u32).to_le_bytes());
        self.buf[8..12].copy_from_slice(&crc.to_le_bytes());
        self.buf[12..16].copy_from_slice(&0u32.to_le_bytes());
        self.out.write_all(&self.buf)?;
        self.footer.chunks += 1;
        self.pending = 0;
        Ok(())
    }

    /// The counts so far.
    pub fn counts(&self) -> &Footer {
        &self.footer
    }

    /// Write the last chunk and the footer (with the tracer's own counts of
    /// unresolved flushes and elided fences) and return the writer.
    pub fn finish(mut self, unresolved_flushes: u64, elided_fences: u64) -> std::io::Result<W> {
        self.flush_chunk()?;
        self.footer.unresolved_flushes = unresolved_flushes;
        self.footer.elided_fences = elided_fences;
        self.out.write_all(&encode_footer(&self.footer))?;
        self.out.flush()?;
        Ok(self.out)
    }
}

fn encode_footer(f: &Footer) -> Vec<u8> {
    let mut v = Vec::with_capacity(FOOTER_BYTES);
    v.extend_from_slice(&FOOTER_TAG);
    v.extend_from_slice(&0u32.to_le_bytes());
    for x in [
        f.records,
        f.stores,
        f.flushes,
        f.fences,
        f.markers,
        f.unresolved_flushes,
        f.elided_fences,
        f.chunks,
    ] {
        v.extend_from_slice(&x.to_le_bytes());
    }
    let crc = crc32fast::hash(&v);
    v.extend_from_slice(&crc.to_le_bytes());
    v.extend_from_slice(&END_MAGIC);
    v
}

/// Encode a whole trace into a byte vector.
pub fn encode(header: &Header, records: &[Record], unresolved_flushes: u64) -> Vec<u8> {
    let mut enc = Encoder::new(Vec::new(), header).expect("writing to a Vec cannot fail");
    for r in records {
        enc.push(r).expect("writing to a Vec cannot fail");
    }
    enc.finish(unresolved_flushes, 0)
        .expect("writing to a Vec cannot fail")
}

/// Reads a trace from any [`Read`], chunk by chunk, checking every checksum and
/// finally the footer's counts.
pub struct Decoder<R: Read> {
    input: R,
    offset: u64,
    header: Header,
    seen: Footer,
    footer: Option<Footer>,
    buf: Vec<u8>,
}

impl<R: Read> Decoder<R> {
    fn read_exact_at(&mut self, n: usize, what: &'static str) -> Result<(), TraceError> {
        self.buf.clear();
        self.buf.resize(n, 0);
        let mut got = 0;
        while got < n {
            match self.input.read(&mut self.buf[got..]) {
                Ok(0) => {
                    return Err(TraceError::Truncated {
                        offset: self.offset + got as u64,
                        what,
                    })
                }
                Ok(k) => got += k,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(TraceError::Io {
                        offset: self.offset + got as u64,
                        source,
                    })
                }
            }
        }
        Ok(())
    }

    /// Read and check the header.
    pub fn new(input: R) -> Result<Self, TraceError> {
        let mut d = Decoder {
            input,
            offset: 0,
            header: Header {
                pm_base: 0,
                pm_size: 0,
                line_size: 0,
                flags: 0,
                kernel: String::new(),
                workload_hash: [0; 32],
                qemu_version: String::new(),
            },
            seen: Footer::default(),
            footer: None,
            buf: Vec::new(),
        };
        d.read_exact_at(16, "header")?;
        if d.buf[0..8] != MAGIC {
            return Err(corrupt(0, "not a pmcrash trace (bad magic)"));
        }
        let version = u32::from_le_bytes(d.buf[8..12].try_into().unwrap());
        if version != FORMAT_VERSION {
            return Err(corrupt(
                8,
                format!("format version {version}, this build reads {FORMAT_VERSION}"),
            ));
        }
        let len = u32::from_le_bytes(d.buf[12..16].try_into().unwrap()) as usize;
        let min = 16 + 8 + 8 + 4 + 4 + 32 + 2 + 2 + 4;
        if len < min || len > min + 2 * MAX_STRING {
            return Err(corrupt(12, format!("header length {len} out of range")));
        }
        let mut head = d.buf.clone();
        d.offset = 16;
        d.read_exact_at(len - 16, "header")?;
        head.extend_from_slice(&d.buf);
        let crc = u32::from_le_bytes(head[len - 4..].try_into().unwrap());
        if crc32fast::hash(&head[..len - 4]) != crc {
            return Err(corrupt(len as u64 - 4, "header checksum mismatch"));
        }
        let u64_at = |i: usize| u64::from_le_bytes(head[i..i + 8].try_into().unwrap());
        let u32_at = |i: usize| u32::from_le_bytes(head[i..i + 4].try_into().unwrap());
        d.header.pm_base = u64_at(16);
        d.header.pm_size = u64_at(24);
        d.header.line_size = u32_at(32);
        d.header.flags = u32_at(36);
        d.header.workload_hash.copy_from_slice(&head[40..72]);
        let mut at = 72;
        let mut strings = Vec::new();
        for _ in 0..2 {
            if at + 2 > len - 4 {
                return Err(corrupt(at as u64, "header string runs past the header"));
            }
            let n = u16::from_le_bytes([head[at], head[at + 1]]) as usize;
            at += 2;
            if at + n > len - 4 {
                return Err(corrupt(at as u64, "header string runs past the header"));
            }
            let s = std::str::from_utf8(&head[at..at + n])
                .map_err(|_| corrupt(at as u64, "header string is not UTF-8"))?;
            strings.push(s.to_string());
            at += n;
        }
        if at != len - 4 {
            return Err(corrupt(at as u64, "header has trailing bytes"));
        }
        d.header.qemu_version = strings.pop().unwrap_or_default();
        d.header.kernel = strings.pop().unwrap_or_default();
        d.offset = len as u64;
        Ok(d)
    }

    /// The header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The footer, once [`Decoder::next_chunk`] has returned `false`.
    pub fn footer(&self) -> Option<&Footer> {
        self.footer.as_ref()
    }

    /// Append the next chunk's records to `out`; `Ok(false)` once the footer has been
    /// read and checked (and nothing follows it).
    pub fn next_chunk(&mut self, out: &mut Vec<Record>) -> Result<bool, TraceError> {
        let Some(chunk) = self.chunk_header()? else {
            return Ok(false);
        };
        self.read_exact_at(chunk.records * RECORD_BYTES, "chunk records")?;
        if crc32fast::hash(&self.buf) != chunk.crc {
            return Err(corrupt(chunk.start, "chunk checksum mismatch"));
        }
        decode_chunk_into(&self.buf, self.offset, out, &mut self.seen)?;
        self.offset += self.buf.len() as u64;
        Ok(true)
    }

    /// Read and check the next chunk's 16-byte header, leaving `offset` at its first
    /// record; `Ok(None)` once the footer has been read and checked instead.
    fn chunk_header(&mut self) -> Result<Option<ChunkHeader>, TraceError> {
        if self.footer.is_some() {
            return Ok(None);
        }
        let start = self.offset;
        self.read_exact_at(8, "chunk header")?;
        let tag: [u8; 4] = self.buf[0..4].try_into().unwrap();
        let n = u32::from_le_bytes(self.buf[4..8].try_into().unwrap());
        if tag == FOOTER_TAG {
            return self.read_footer(start, n).map(|()| None);
        }
        if tag != CHUNK_TAG {
            return Err(corrupt(start, "expected a chunk or the footer"));
        }
        let n = n as usize;
        if n == 0 || n > MAX_CHUNK_RECORDS {
            return Err(corrupt(start + 4, format!("chunk record count {n}")));
        }
        self.offset += 8;
        self.read_exact_at(8, "chunk header")?;
        let crc = u32::from_le_bytes(self.buf[0..4].try_into().unwrap());
        if self.buf[4..8] != [0; 4] {
            return Err(corrupt(start + 12, "reserved chunk bytes are not zero"));
        }
        self.offset += 8;
        self.seen.chunks += 1;
        Ok(Some(ChunkHeader {
            start,
            records: n,
            crc,
        }))
    }

    fn read_footer(&mut self, start: u64, reserved: u32) -> Result<(), TraceError> {
        if reserved != 0 {
            return Err(corrupt(start + 4, "reserved footer bytes are not zero"));
        }
        self.offset += 8;
        self.read_exact_at(FOOTER_BYTES - 8, "footer")?;
        let body = &self.buf;
        let mut whole = Vec::with_capacity(FOOTER_BYTES);
        whole.extend_from_slice(&FOOTER_TAG);
        whole.extend_from_slice(&0u32.to_le_bytes());
        whole.extend_from_slice(&body[..64]);
        let crc = u32::from_le_bytes(body[64..68].try_into().unwrap());
        if crc32fast::hash(&whole) != crc {
            return Err(corrupt(start, "footer checksum mismatch"));
        }
        if body[68..76] != END_MAGIC {
            return Err(corrupt(start + 76, "bad end magic"));
        }
        let c = |i: usize| u64::from_le_bytes(body[i * 8..i * 8 + 8].try_into().unwrap());
        let f = Footer {
            records: c(0),
            stores: c(1),
            flushes: c(2),
            fences: c(3),
            markers: c(4),
            unresolved_flushes: c(5),
            elided_fences: c(6),
            chunks: c(7),
        };
        let mut expect = self.seen;
        expect.unresolved_flushes = f.unresolved_flushes;
        expect.elided_fences = f.elided_fences;
        if f != expect {
            return Err(corrupt(
                start,
                format!("footer counts {f:?} disagree with the records read {expect:?}"),
            ));
        }
        self.offset += (FOOTER_BYTES - 8) as u64;
        let mut extra = [0u8; 1];
        loop {
            match self.input.read(&mut extra) {
                Ok(0) => break,
                Ok(_) => return Err(corrupt(self.offset, "bytes after the footer")),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(TraceError::Io {
                        offset: self.offset,
                        source,
                    })
                }
            }
        }
        self.footer = Some(f);
        Ok(())
    }

    /// Read everything that is left.
    pub fn read_all(mut self) -> Result<Trace, TraceError> {
        let mut records = Vec::new();
        while self.next_chunk(&mut records)? {}
        let footer = self
            .footer
            .expect("next_chunk returned false after the footer");
        Ok(Trace {
            header: self.header,
            records,
            footer,
        })
    }
}

/// A chunk header that passed its checks.
struct ChunkHeader {
    /// Offset of the chunk's tag.
    start: u64,
    /// Records in the chunk (1..=[`MAX_CHUNK_RECORDS`]).
    records: usize,
    /// crc32 of the records.
    crc: u32,
}

/// Decode the records of one checksummed chunk onto `out`, counting them in `seen`.
/// `base` is the byte offset of the first record (for errors).
fn decode_chunk_into(
    recs: &[u8],
    base: u64,
    out: &mut Vec<Record>,
    seen: &mut Footer,
) -> Result<(), TraceError> {
    let n = recs.len() / RECORD_BYTES;
    out.reserve(n);
    let (mut stores, mut flushes, mut fences, mut markers) = (0u64, 0u64, 0u64, 0u64);
    for (i, b) in recs.chunks_exact(RECORD_BYTES).enumerate() {
        let b: &[u8; RECORD_BYTES] = b.try_into().unwrap();
        let r = match decode_record_fast(b) {
            Some(r) => r,
            None => decode_record_slow(b, base + (i * RECORD_BYTES) as u64)?,
        };
        match r {
            Record::Store { .. } => stores += 1,
            Record::Flush { .. } => flushes += 1,
            Record::Fence { .. } => fences += 1,
            Record::Marker { .. } => markers += 1,
        }
        out.push(r);
    }
    seen.records += n as u64;
    seen.stores += stores;
    seen.flushes += flushes;
    seen.fences += fences;
    seen.markers += markers;
    Ok(())
}

impl<'a> Decoder<&'a [u8]> {
    /// The next chunk's records, checksum verified, borrowed from the input (no copy)
    /// with the byte offset of the first; `Ok(None)` once the footer has been read and
    /// checked. The records themselves are not decoded or counted.
    fn next_chunk_slice(&mut self) -> Result<Option<(&'a [u8], u64)>, TraceError> {
        let Some(chunk) = self.chunk_header()? else {
            return Ok(None);
        };
        let len = chunk.records * RECORD_BYTES;
        let input: &'a [u8] = self.input;
        if input.len() < len {
            return Err(TraceError::Truncated {
                offset: self.offset + input.len() as u64,
                what: "chunk records",
            });
        }
        let (recs, rest) = input.split_at(len);
        self.input = rest;
        if crc32fast::hash(recs) != chunk.crc {
            return Err(corrupt(chunk.start, "chunk checksum mismatch"));
        }
        let base = self.offset;
        self.offset += len as u64;
        Ok(Some((recs, base)))
    }

    /// How many records the footer at the end of the input claims, if there is one
    /// there; capped by what the remaining bytes can hold. Only a capacity hint: the
    /// footer is checked properly when it is reached.
    fn records_hint(&self) -> usize {
        let input = self.input;
        let Some(foot) = input.len().checked_sub(FOOTER_BYTES).map(|i| &input[i..]) else {
            return 0;
        };
        if foot[0..4] != FOOTER_TAG || foot[FOOTER_BYTES - 8..] != END_MAGIC {
            return 0;
        }
        let claimed = u64::from_le_bytes(foot[8..16].try_into().unwrap());
        let room = (input.len() / RECORD_BYTES) as u64;
        claimed.min(room) as usize
    }
}

/// Decode a whole trace held in memory.
///
/// Chunks are checked and decoded in place (no copy of the input); see
/// [`decode_iter`] to walk the records without collecting them.
pub fn decode(bytes: &[u8]) -> Result<Trace, TraceError> {
    let mut d = Decoder::new(bytes)?;
    let mut records = Vec::with_capacity(d.records_hint());
    while let Some((recs, base)) = d.next_chunk_slice()? {
        decode_chunk_into(recs, base, &mut records, &mut d.seen)?;
    }
    let footer = d
        .footer
        .expect("next_chunk_slice returned None after the footer");
    Ok(Trace {
        header: d.header,
        records,
        footer,
    })
}

/// Start walking a trace held in memory record by record, without collecting them.
///
/// The header is read and checked here. Each chunk's checksum is verified before
/// any of its records is yielded, and after the last record the footer is read and
/// its counts checked; a problem anywhere is yielded as an `Err` (naming its byte
/// offset, as [`decode`] would) and ends the iteration. So a consumer that sees
/// `None` without an `Err` has seen exactly the records [`decode`] returns.
pub fn decode_iter(bytes: &[u8]) -> Result<TraceIter<'_>, TraceError> {
    Ok(TraceIter {
        dec: Decoder::new(bytes)?,
        recs: [].chunks_exact(RECORD_BYTES),
        next_offset: 0,
        done: false,
    })
}

/// The records of an in-memory trace, from [`decode_iter`].
pub struct TraceIter<'a> {
    dec: Decoder<&'a [u8]>,
    /// What is left of the current chunk.
    recs: std::slice::ChunksExact<'a, u8>,
    /// Byte offset of the next record in `recs`.
    next_offset: u64,
    /// An error was yielded or the footer was checked.
    done: bool,
}

impl TraceIter<'_> {
    /// The header.
    pub fn header(&self) -> &Header {
        &self.dec.header
    }

    /// The footer, once the iterator has returned `None` (it has been checked against
    /// the records by then).
    pub fn footer(&self) -> Option<&Footer> {
        self.dec.footer.as_ref()
    }

    #[cold]
    fn fail(&mut self, e: TraceError) -> Option<Result<Record, TraceError>> {
        self.done = true;
        self.recs = [].chunks_exact(RECORD_BYTES);
        Some(Err(e))
    }
}

impl Iterator for TraceIter<'_> {
    type Item = Result<Record, TraceError>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(b) = self.recs.next() {
                let b: &[u8; RECORD_BYTES] = b.try_into().unwrap();
                let at = self.next_offset;
                self.next_offset += RECORD_BYTES as u64;
                let r = match decode_record_fast(b) {
                    Some(r) => r,
                    None => match decode_record_slow(b, at) {
                        Ok(r) => r,
                        Err(e) => return self.fail(e),
                    },
                };
                self.dec.seen.count(&r);
                return Some(Ok(r));
            }
            if self.done {
                return None;
            }
            match self.dec.next_chunk_slice() {
                Ok(Some((recs, base))) => {
                    self.recs = recs.chunks_exact(RECORD_BYTES);
                    self.next_offset = base;
                }
                Ok(None) => {
                    self.done = true;
                    return None;
                }
                Err(e) => return self.fail(e),
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let here = self.recs.len();
        if self.done {
            (here, Some(here))
        } else {
            (here, None)
        }
    }
}

impl std::iter::FusedIterator for TraceIter<'_> {}

#[cfg(test)]
mod codec_tests {
    use super::*;
    use proptest::prelude::*;

    fn header() -> Header {
        Header {
            pm_base: 0x1_0000_0000,
            pm_size: 64 << 20,
            line_size: 64,
            flags: FLAG_IDLE_FENCES_ELIDED,
            kernel: "6.12.117+deb12-amd64".into(),
            workload_hash: [7; 32],
            qemu_version: "10.0.2".into(),
        }
    }

    fn arb_priv() -> impl Strategy<Value = Privilege> {
        prop_oneof![Just(Privilege::Kernel), Just(Privilege::User)]
    }

    fn arb_record() -> impl Strategy<Value = Record> {
        prop_oneof![
            (
                any::<u64>(),
                1u8..=8,
                any::<u64>(),
                any::<bool>(),
                arb_priv(),
                any::<u16>(),
                any::<u64>()
            )
                .prop_map(|(offset, size, v, nt, p, vcpu, pc)| Record::Store {
                    offset,
                    size,
                    value: if size == 8 {
                        v
                    } else {
                        v & ((1u64 << (size * 8)) - 1)
                    },
                    non_temporal: nt,
                    privilege: p,
                    vcpu,
                    pc
                }),
            (any::<u64>(), 0u8..3, arb_priv(), any::<u16>(), any::<u64>()).prop_map(
                |(offset, k, privilege, vcpu, pc)| Record::Flush {
                    offset,
                    flush: [FlushKind::Clwb, FlushKind::Clflushopt, FlushKind::Clflush][k as usize],
                    privilege,
                    vcpu,
                    pc
                }
            ),
            (0u8..4, arb_priv(), any::<u16>(), any::<u64>()).prop_map(
                |(k, privilege, vcpu, pc)| {
                    Record::Fence {
                        fence: [
                            FenceKind::Sfence,
                            FenceKind::Mfence,
                            FenceKind::Locked,
                            FenceKind::Serializing,
                        ][k as usize],
                        privilege,
                        vcpu,
                        pc,
                    }
                }
            ),
            (
                1u32..=4,
                any::<u32>(),
                any::<u64>(),
                any::<u64>(),
                any::<u16>()
            )
                .prop_map(|(k, op, a, b, vcpu)| Record::Marker {
                    marker: MarkerKind::from_u32(k).unwrap(),
                    op,
                    a,
                    b,
                    vcpu
                }),
        ]
    }

    #[test]
    fn record_is_32_bytes_and_roundtrips_every_kind() {
        let r = Record::Store {
            offset: 0x2000,
            size: 4,
            value: 0xdead_beef,
            non_temporal: true,
            privilege: Privilege::Kernel,
            vcpu: 1,
            pc: 0xffff_ffff_8100_0000,
        };
        let b = encode_record(&r);
        assert_eq!(b.len(), 32);
        assert_eq!(decode_record(&b, 0).unwrap(), r);
    }

    #[test]
    fn empty_trace_roundtrips() {
        let bytes = encode(&header(), &[], 3);
        let t = decode(&bytes).unwrap();
        assert_eq!(t.header, header());
        assert!(t.records.is_empty());
        assert_eq!(t.footer.unresolved_flushes, 3);
        assert_eq!(t.footer.chunks, 0);
    }

    #[test]
    fn truncation_names_the_offset() {
        let recs: Vec<Record> = (0..10)
            .map(|i| Record::Fence {
                fence: FenceKind::Sfence,
                privilege: Privilege::User,
                vcpu: 0,
                pc: i,
            })
            .collect();
        let bytes = encode(&header(), &recs, 0);
        let cut = bytes.len() - 10;
        let err = decode(&bytes[..cut]).unwrap_err();
        assert!(matches!(err, TraceError::Truncated { .. }), "{err}");
        assert_eq!(err.offset(), cut as u64);
        assert!(err.to_string().contains(&cut.to_string()), "{err}");
    }

    #[test]
    fn a_flipped_record_bit_is_found_in_its_chunk() {
        let recs = vec![
            Record::Fence {
                fence: FenceKind::Mfence,
                privilege: Privilege::Kernel,
                vcpu: 0,
                pc: 1,
            };
            5000
        ];
        let mut bytes = encode(&header(), &recs, 0);
        let hlen = encode_header(&header()).len();
        let second_chunk = hlen + 16 + CHUNK_RECORDS * 32;
        bytes[second_chunk + 16 + 100] ^= 4;
        let err = decode(&bytes).unwrap_err();
        assert_eq!(err.offset(), second_chunk as u64, "{err}");
        assert!(err.to_string().contains("checksum"), "{err}");
    }

    /// A record's bytes biased towards the edges of validity: each field is either
    /// taken from a valid record or replaced by something near it.
    fn arb_record_bytes() -> impl Strategy<Value = [u8; RECORD_BYTES]> {
        (
            arb_record(),
            proptest::collection::vec((0usize..RECORD_BYTES, any::<u8>()), 0..3),
            prop_oneof![Just(None), (0usize..4, 0u8..8).prop_map(Some)],
        )
            .prop_map(|(r, pokes, small)| {
                let mut b = encode_record(&r);
                for (i, v) in pokes {
                    b[i] = v;
                }
                if let Some((i, v)) = small {
                    b[i] = v; // tag, flags, size/kind, reserved: small values
                }
                b
            })
    }

    /// Every way of decoding a trace held in memory: whole, streamed, and through
    /// [`Read`]; they must agree on the records, the footer and the error.
    fn assert_decoders_agree(bytes: &[u8]) -> Result<(), TestCaseError> {
        let whole = decode(bytes);
        let via_reader = Decoder::new(bytes).and_then(Decoder::read_all);
        let streamed = decode_iter(bytes).and_then(|mut it| {
            let mut records = Vec::new();
            for r in it.by_ref() {
                records.push(r?);
            }
            assert!(it.next().is_none(), "the streaming decoder is fused");
            let footer = *it.footer().expect("the footer after the last record");
            Ok(Trace {
                header: it.header().clone(),
                records,
                footer,
            })
        });
        match (&whole, &via_reader, &streamed) {
            (Ok(w), Ok(r), Ok(s)) => {
                prop_assert_eq!(w, r);
                prop_assert_eq!(w, s);
            }
            (Err(w), Err(r), Err(s)) => {
                prop_assert_eq!(w.to_string(), r.to_string());
                prop_assert_eq!(w.to_string(), s.to_string());
            }
            _ => prop_assert!(
                false,
                "decoders disagree: {:?} / {:?} / {:?}",
                whole.map(|t| t.records.len()),
                via_reader.map(|t| t.records.len()),
                streamed.map(|t| t.records.len())
            ),
        }
        Ok(())
    }

    #[derive(Debug, Clone)]
    enum Damage {
        None,
        Flip(prop::sample::Index, u8),
        Cut(prop::sample::Index),
        /// Set byte `.1` of record `.0` to `.2`, then fix the chunk's checksum.
        Record(prop::sample::Index, usize, u8),
    }

    #[test]
    fn streaming_decoder_stops_at_a_bad_record() {
        let recs = vec![
            Record::Fence {
                fence: FenceKind::Sfence,
                privilege: Privilege::User,
                vcpu: 0,
                pc: 1,
            };
            10
        ];
        let mut bytes = encode(&header(), &recs, 0);
        let hlen = encode_header(&header()).len();
        let chunk = hlen;
        let rec3 = chunk + 16 + 3 * RECORD_BYTES;
        bytes[rec3 + 3] = 1; // a reserved byte
        let crc = crc32fast::hash(&bytes[chunk + 16..chunk + 16 + 10 * RECORD_BYTES]);
        bytes[chunk + 8..chunk + 12].copy_from_slice(&crc.to_le_bytes());
        let err = decode(&bytes).unwrap_err();
        assert_eq!(err.offset(), rec3 as u64, "{err}");
        assert!(err.to_string().contains("reserved"), "{err}");
        let items: Vec<_> = decode_iter(&bytes).unwrap().collect();
        assert_eq!(items.len(), 4);
        assert!(items[..3].iter().all(Result::is_ok));
        assert_eq!(items[3].as_ref().unwrap_err().to_string(), err.to_string());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn fast_and_reference_record_decoders_agree(b in arb_record_bytes(), at in any::<u32>()) {
            let reference = decode_record_slow(&b, u64::from(at));
            let fast = decode_record_fast(&b);
            match (&reference, fast) {
                (Ok(r), Some(f)) => {
                    prop_assert_eq!(*r, f);
                    prop_assert_eq!(encode_record(r), b);
                }
                (Err(_), None) => {}
                _ => prop_assert!(false, "{:x?}: reference {:?}, fast {:?}", b, reference, fast),
            }
            prop_assert_eq!(
                decode_record(&b, u64::from(at)).map_err(|e| e.to_string()),
                reference.map_err(|e| e.to_string())
            );
        }

        #[test]
        fn streaming_and_whole_file_decoders_agree(
            recs in proptest::collection::vec(arb_record(), 0..6000),
            unres in any::<u64>(),
            damage in prop_oneof![
                Just(Damage::None),
                (any::<prop::sample::Index>(), 0u8..8).prop_map(|(i, bit)| Damage::Flip(i, bit)),
                any::<prop::sample::Index>().prop_map(Damage::Cut),
                (any::<prop::sample::Index>(), 0..RECORD_BYTES, any::<u8>())
                    .prop_map(|(i, at, v)| Damage::Record(i, at, v)),
            ],
        ) {
            let mut bytes = encode(&header(), &recs, unres);
            match damage {
                Damage::None => {}
                Damage::Flip(i, bit) => {
                    let i = i.index(bytes.len());
                    bytes[i] ^= 1 << bit;
                }
                Damage::Cut(i) => bytes.truncate(i.index(bytes.len())),
                Damage::Record(i, at, v) if !recs.is_empty() => {
                    // Change a record and fix its chunk's checksum, so the record
                    // checks (not the crc) have to catch it.
                    let k = i.index(recs.len());
                    let chunk = encode_header(&header()).len()
                        + k / CHUNK_RECORDS * (CHUNK_HEADER_BYTES + CHUNK_RECORDS * RECORD_BYTES);
                    let n = (recs.len() - k / CHUNK_RECORDS * CHUNK_RECORDS).min(CHUNK_RECORDS);
                    let body = chunk + CHUNK_HEADER_BYTES;
                    bytes[body + k % CHUNK_RECORDS * RECORD_BYTES + at] = v;
                    let crc = crc32fast::hash(&bytes[body..body + n * RECORD_BYTES]);
                    bytes[chunk + 8..chunk + 12].copy_from_slice(&crc.to_le_bytes());
                }
                Damage::Record(..) => {}
            }
            assert_decoders_agree(&bytes)?;
            if matches!(damage, Damage::None) {
                let t = decode(&bytes).unwrap();
                prop_assert_eq!(t.records, recs);
            }
        }

        #[test]
        fn roundtrip(recs in proptest::collection::vec(arb_record(), 0..10000), unres in any::<u64>()) {
            let bytes = encode(&header(), &recs, unres);
            let t = decode(&bytes).unwrap();
            prop_assert_eq!(t.records, recs);
            prop_assert_eq!(t.footer.unresolved_flushes, unres);
            let via_reader = Decoder::new(std::io::Cursor::new(&bytes)).unwrap().read_all().unwrap();
            prop_assert_eq!(via_reader.footer, t.footer);
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
            let _ = decode(&bytes);
            let mut with_magic = MAGIC.to_vec();
            with_magic.extend_from_slice(&bytes);
            let _ = decode(&with_magic);
        }

        #[test]
        fn truncations_and_bit_flips_are_errors(
            recs in proptest::collection::vec(arb_record(), 1..300),
            cut in any::<prop::sample::Index>(),
            flip in any::<prop::sample::Index>(),
            bit in 0u8..8,
        ) {
            let bytes = encode(&header(), &recs, 0);
            let at = cut.index(bytes.len());
            let err = decode(&bytes[..at]).unwrap_err();
            prop_assert!(err.offset() <= at as u64, "{} for a cut at {}", err, at);
            let mut flipped = bytes.clone();
            let i = flip.index(bytes.len());
            flipped[i] ^= 1 << bit;
            let err = decode(&flipped).unwrap_err();
            prop_assert!(err.offset() <= bytes.len() as u64);
            let mut longer = bytes.clone();
            longer.push(0);
            prop_assert!(decode(&longer).is_err());
        }
    }
}
