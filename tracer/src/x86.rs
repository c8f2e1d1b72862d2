//! Just enough x86-64 decoding to classify an instruction at translation time.
//!
//! The tracer must know, before an instruction runs, whether it is a cache-line flush
//! (and where its memory operand points: TCG makes no memory access for flushes), a
//! fence, a serialising instruction, a marker candidate (`cpuid`), a non-temporal
//! store, or a locked read-modify-write. Everything else is "may store", handled by
//! the memory callback. This module is pure so it is unit-tested on byte strings.

use crash_models::trace::{FenceKind, FlushKind};

/// A segment override that changes the effective address in 64-bit mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Segment {
    /// No `fs`/`gs` override (the others have base 0 in 64-bit mode).
    None,
    /// `fs:` (user-space TLS).
    Fs,
    /// `gs:` (the kernel's per-CPU area).
    Gs,
}

/// A decoded memory operand: `seg:[base + index*scale + disp]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemOperand {
    /// Base register number (0 = rax, 1 = rcx, ... 15 = r15), if any.
    pub base: Option<u8>,
    /// Index register number, if any.
    pub index: Option<u8>,
    /// 1, 2, 4 or 8.
    pub scale: u8,
    /// Displacement; for a RIP-relative operand the absolute address (the next
    /// instruction's address is known at translation time).
    pub disp: i64,
    /// `67` prefix: the address is truncated to 32 bits.
    pub addr32: bool,
    /// Segment override.
    pub segment: Segment,
}

impl MemOperand {
    /// The effective address, given a register reader (by register number) and the
    /// fs/gs bases.
    pub fn address(&self, reg: impl Fn(u8) -> u64, fs_base: u64, gs_base: u64) -> u64 {
        let mut a = self.disp as u64;
        if let Some(b) = self.base {
            a = a.wrapping_add(reg(b));
        }
        if let Some(i) = self.index {
            a = a.wrapping_add(reg(i).wrapping_mul(self.scale as u64));
        }
        if self.addr32 {
            a &= 0xffff_ffff;
        }
        match self.segment {
            Segment::None => a,
            Segment::Fs => a.wrapping_add(fs_base),
            Segment::Gs => a.wrapping_add(gs_base),
        }
    }
}

/// What the tracer does with an instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// A cache-line flush of the operand's line.
    Flush(FlushKind, MemOperand),
    /// A fence or serialising instruction without a memory operand of interest.
    Fence(FenceKind),
    /// `cpuid`: a marker when `eax` holds the marker leaf, a serialising
    /// instruction otherwise.
    Cpuid,
    /// A non-temporal store.
    NonTemporalStore,
    /// A locked read-modify-write or `xchg` with memory: a fence, and a store.
    Locked,
    /// Anything else (it may still store; the memory callback sees it).
    Other,
}

struct Cursor<'a> {
    b: &'a [u8],
    i: usize,
}

impl Cursor<'_> {
    fn u8(&mut self) -> Option<u8> {
        let v = *self.b.get(self.i)?;
        self.i += 1;
        Some(v)
    }
    fn i8(&mut self) -> Option<i64> {
        self.u8().map(|v| v as i8 as i64)
    }
    fn i32(&mut self) -> Option<i64> {
        let s = self.b.get(self.i..self.i + 4)?;
        self.i += 4;
        Some(i32::from_le_bytes(s.try_into().ok()?) as i64)
    }
}

/// Decode the ModRM memory operand at the cursor (ModRM byte first). `None` for a
/// register operand (`mod == 3`) or truncated bytes. `pc_next` is the address of the
/// next instruction, for RIP-relative operands; it is only right when the operand is
/// the instruction's last part (true for the flushes, which have no immediate).
fn modrm_operand(
    c: &mut Cursor,
    rex: u8,
    addr32: bool,
    segment: Segment,
    pc_next: u64,
) -> Option<(u8, MemOperand)> {
    let modrm = c.u8()?;
    let md = modrm >> 6;
    let reg = (modrm >> 3) & 7;
    let rm = modrm & 7;
    if md == 3 {
        return None;
    }
    let mut op = MemOperand {
        base: None,
        index: None,
        scale: 1,
        disp: 0,
        addr32,
        segment,
    };
    let rex_b = (rex & 1) << 3;
    let rex_x = (rex & 2) << 2;
    let mut rip_relative = false;
    if rm == 4 {
        let sib = c.u8()?;
        let scale = 1u8 << (sib >> 6);
        let index = ((sib >> 3) & 7) | rex_x;
        let base = sib & 7;
        if index != 4 {
            op.index = Some(index);
            op.scale = scale;
        }
        if base == 5 && md == 0 {
            op.disp = c.i32()?;
        } else {
            op.base = Some(base | rex_b);
        }
    } else if rm == 5 && md == 0 {
        rip_relative = true;
        op.disp = c.i32()?;
    } else {
        op.base = Some(rm | rex_b);
    }
    match md {
        1 => op.disp = op.disp.wrapping_add(c.i8()?),
        2 => op.disp = op.disp.wrapping_add(c.i32()?),
        _ => {}
    }
    if rip_relative {
        // The displacement counts from the end of the instruction.
        op.disp = (pc_next as i64).wrapping_add(op.disp);
    }
    Some((reg, op))
}

/// Classify one instruction from its bytes (64-bit mode) and address.
pub fn classify(bytes: &[u8], pc: u64) -> Class {
    classify_inner(bytes, pc).unwrap_or(Class::Other)
}

fn classify_inner(bytes: &[u8], pc: u64) -> Option<Class> {
    let pc_next = pc.wrapping_add(bytes.len() as u64);
    let mut c = Cursor { b: bytes, i: 0 };
    let (mut lock, mut opsize, mut rep, mut addr32) = (false, false, false, false);
    let mut segment = Segment::None;
    let mut op = loop {
        match c.u8()? {
            0xf0 => lock = true,
            0x66 => opsize = true,
            0x67 => addr32 = true,
            0xf2 | 0xf3 => rep = true,
            0x64 => segment = Segment::Fs,
            0x65 => segment = Segment::Gs,
            0x2e | 0x36 | 0x3e | 0x26 => {}
            b => break b,
        }
    };
    let mut rex = 0u8;
    if op & 0xf0 == 0x40 {
        rex = op;
        op = c.u8()?;
    }
    // VEX and EVEX encodings: only the non-temporal stores matter here.
    if op == 0xc5 || op == 0xc4 || op == 0x62 {
        let map = match op {
            0xc5 => {
                c.u8()?;
                1
            }
            0xc4 => {
                let m = c.u8()? & 0x1f;
                c.u8()?;
                m
            }
            _ => {
                let m = c.u8()? & 0x7;
                c.u8()?;
                c.u8()?;
                m
            }
        };
        let opc = c.u8()?;
        let modrm = c.u8()?;
        let mem = modrm >> 6 != 3;
        return Some(match (map, opc) {
            // vmovntps/pd, vmovntdq
            (1, 0x2b) | (1, 0xe7) if mem => Class::NonTemporalStore,
            _ => Class::Other,
        });
    }
    if op == 0x0f {
        let op2 = c.u8()?;
        return Some(match op2 {
            0xae => {
                let save = c.i;
                let modrm = *c.b.get(c.i)?;
                let (md, reg) = (modrm >> 6, (modrm >> 3) & 7);
                if md == 3 {
                    match (reg, opsize || rep) {
                        (7, false) => Class::Fence(FenceKind::Sfence),
                        (6, false) => Class::Fence(FenceKind::Mfence),
                        _ => Class::Other, // lfence orders no stores; the rest are not fences
                    }
                } else if rep {
                    Class::Other
                } else {
                    c.i = save;
                    let (reg, m) = modrm_operand(&mut c, rex, addr32, segment, pc_next)?;
                    match (reg, opsize) {
                        (7, false) => Class::Flush(FlushKind::Clflush, m),
                        (7, true) => Class::Flush(FlushKind::Clflushopt, m),
                        (6, true) => Class::Flush(FlushKind::Clwb, m),
                        _ => Class::Other,
                    }
                }
            }
            0xa2 => Class::Cpuid,
            // wbinvd, wrmsr, mov to a control register
            0x09 | 0x30 | 0x22 => Class::Fence(FenceKind::Serializing),
            // serialize (0f 01 e8)
            0x01 if c.b.get(c.i) == Some(&0xe8) => Class::Fence(FenceKind::Serializing),
            // movnti; movntq/movntdq; movntps/pd (and AMD's movntss/sd)
            0xc3 | 0xe7 | 0x2b if c.b.get(c.i).is_some_and(|m| m >> 6 != 3) => {
                Class::NonTemporalStore
            }
            // maskmovq / maskmovdqu store through rdi, non-temporally
            0xf7 => Class::NonTemporalStore,
            // movdiri (0f 38 f9), movdir64b (66 0f 38 f8): weakly ordered direct stores
            0x38 if matches!(c.b.get(c.i), Some(0xf8) | Some(0xf9)) => Class::NonTemporalStore,
            _ if lock && has_memory_modrm(&c) => Class::Locked,
            _ => Class::Other,
        });
    }
    Some(match op {
        // xchg r/m, r with memory is implicitly locked
        0x86 | 0x87 if has_memory_modrm(&c) => Class::Locked,
        0xcf => Class::Fence(FenceKind::Serializing), // iret / iretq
        _ if lock && has_memory_modrm(&c) => Class::Locked,
        _ => Class::Other,
    })
}

/// True for a string move (`movs` with any operand size, with or without a `rep`
/// prefix): one instruction that loads `[rsi]` and stores the loaded value to `[rdi]`,
/// with no branch on the value. Read recording treats its load from PM as a move
/// (`crate::reads`, `docs/pruning.md`).
pub fn is_string_move(bytes: &[u8]) -> bool {
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            0x66 | 0x67 | 0xf2 | 0xf3 | 0x64 | 0x65 | 0x2e | 0x36 | 0x3e | 0x26 => i += 1,
            _ => break,
        }
    }
    if bytes.get(i).is_some_and(|b| b & 0xf0 == 0x40) {
        i += 1;
    }
    matches!(bytes.get(i), Some(0xa4 | 0xa5))
}

fn has_memory_modrm(c: &Cursor) -> bool {
    c.b.get(c.i).is_some_and(|m| m >> 6 != 3)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flush(bytes: &[u8]) -> (FlushKind, MemOperand) {
        match classify(bytes, 0x1000) {
            Class::Flush(k, m) => (k, m),
            other => panic!("{bytes:x?} decoded as {other:?}"),
        }
    }

    #[test]
    fn flushes_and_their_operands() {
        // clwb (%rdi)
        let (k, m) = flush(&[0x66, 0x0f, 0xae, 0x37]);
        assert_eq!(k, FlushKind::Clwb);
        assert_eq!((m.base, m.index, m.disp), (Some(7), None, 0));
        // clflushopt 0x40(%rax)
        let (k, m) = flush(&[0x66, 0x0f, 0xae, 0x78, 0x40]);
        assert_eq!(k, FlushKind::Clflushopt);
        assert_eq!((m.base, m.disp), (Some(0), 0x40));
        // clflush (%r8)  (REX.B)
        let (k, m) = flush(&[0x41, 0x0f, 0xae, 0x38]);
        assert_eq!(k, FlushKind::Clflush);
        assert_eq!(m.base, Some(8));
        // clwb -0x80(%rdx,%r9,4)  SIB with REX.X, disp8
        let (_, m) = flush(&[0x66, 0x42, 0x0f, 0xae, 0x74, 0x8a, 0x80]);
        assert_eq!(
            (m.base, m.index, m.scale, m.disp),
            (Some(2), Some(9), 4, -128)
        );
        let regs = |r: u8| match r {
            2 => 0x1000,
            9 => 0x10,
            _ => 0,
        };
        assert_eq!(m.address(regs, 0, 0), 0x1000 + 0x40 - 0x80);
        // clflush 0x10(%rip) at 0x1000, 7 bytes long
        let (_, m) = flush(&[0x0f, 0xae, 0x3d, 0x10, 0, 0, 0]);
        assert_eq!((m.base, m.disp), (None, 0x1000 + 7 + 0x10));
        // clwb 0x12345678 (no base, no index: SIB base=5, mod=0)
        let (_, m) = flush(&[0x66, 0x0f, 0xae, 0x34, 0x25, 0x78, 0x56, 0x34, 0x12]);
        assert_eq!((m.base, m.index, m.disp), (None, None, 0x1234_5678));
        // clflushopt %gs:(%rbx) keeps its segment
        let (_, m) = flush(&[0x65, 0x66, 0x0f, 0xae, 0x3b]);
        assert_eq!(m.segment, Segment::Gs);
        assert_eq!(m.address(|_| 0x10, 0, 0x5000), 0x5010);
        // clwb (%rsp) uses a SIB with index 4 = none
        let (_, m) = flush(&[0x66, 0x0f, 0xae, 0x34, 0x24]);
        assert_eq!((m.base, m.index), (Some(4), None));
        // clwb (%r13) needs mod=1 disp8 0
        let (_, m) = flush(&[0x66, 0x41, 0x0f, 0xae, 0x75, 0x00]);
        assert_eq!((m.base, m.disp), (Some(13), 0));
    }

    #[test]
    fn fences() {
        assert_eq!(
            classify(&[0x0f, 0xae, 0xf8], 0),
            Class::Fence(FenceKind::Sfence)
        );
        assert_eq!(
            classify(&[0x0f, 0xae, 0xf0], 0),
            Class::Fence(FenceKind::Mfence)
        );
        assert_eq!(classify(&[0x0f, 0xae, 0xe8], 0), Class::Other); // lfence
        assert_eq!(classify(&[0x0f, 0xa2], 0), Class::Cpuid);
        assert_eq!(
            classify(&[0x0f, 0x09], 0),
            Class::Fence(FenceKind::Serializing)
        );
        assert_eq!(
            classify(&[0x48, 0xcf], 0),
            Class::Fence(FenceKind::Serializing)
        );
        // lock cmpxchg %ecx,(%rdx); lock incl (%rax); xchg %eax,(%rdi)
        assert_eq!(classify(&[0xf0, 0x0f, 0xb1, 0x0a], 0), Class::Locked);
        assert_eq!(classify(&[0xf0, 0xff, 0x00], 0), Class::Locked);
        assert_eq!(classify(&[0x87, 0x07], 0), Class::Locked);
        // xchg %eax,%ecx is no fence
        assert_eq!(classify(&[0x87, 0xc8], 0), Class::Other);
        // xsaveopt (%rax) (0f ae /6 without 66) is not clwb
        assert_eq!(classify(&[0x0f, 0xae, 0x30], 0), Class::Other);
    }

    #[test]
    fn non_temporal_stores() {
        // movnti %rax,(%rdi)
        assert_eq!(
            classify(&[0x48, 0x0f, 0xc3, 0x07], 0),
            Class::NonTemporalStore
        );
        // movntdq %xmm0,(%rdi)
        assert_eq!(
            classify(&[0x66, 0x0f, 0xe7, 0x07], 0),
            Class::NonTemporalStore
        );
        // movntps %xmm1,(%rax)
        assert_eq!(classify(&[0x0f, 0x2b, 0x08], 0), Class::NonTemporalStore);
        // vmovntdq %ymm0,(%rdi)  (c5 fd e7 07)
        assert_eq!(
            classify(&[0xc5, 0xfd, 0xe7, 0x07], 0),
            Class::NonTemporalStore
        );
        // vmovntdq %zmm0,(%rdi)  (62 f1 7d 48 e7 07)
        assert_eq!(
            classify(&[0x62, 0xf1, 0x7d, 0x48, 0xe7, 0x07], 0),
            Class::NonTemporalStore
        );
        // plain mov %rax,(%rdi)
        assert_eq!(classify(&[0x48, 0x89, 0x07], 0), Class::Other);
    }

    #[test]
    fn string_moves() {
        // movsb; rep movsb; rep movsq; movsw; rep movsl with a segment override
        for m in [
            &[0xa4][..],
            &[0xf3, 0xa4],
            &[0xf3, 0x48, 0xa5],
            &[0x66, 0xa5],
            &[0x65, 0xf3, 0xa5],
        ] {
            assert!(is_string_move(m), "{m:x?}");
        }
        // stosb, cmpsb, lodsq, mov (%rsi),%al, a lone prefix, nothing
        for m in [
            &[0xf3, 0xaa][..],
            &[0xf3, 0xa6],
            &[0x48, 0xad],
            &[0x8a, 0x06],
            &[0xf3],
            &[],
        ] {
            assert!(!is_string_move(m), "{m:x?}");
        }
        // A string move is no flush, fence or non-temporal store.
        assert_eq!(classify(&[0xf3, 0x48, 0xa5], 0), Class::Other);
    }

    #[test]
    fn truncated_bytes_are_other() {
        for bytes in [
            &[][..],
            &[0x66],
            &[0x66, 0x0f],
            &[0x66, 0x0f, 0xae],
            &[0x0f, 0xae, 0x34],
        ] {
            assert_eq!(classify(bytes, 0), Class::Other);
        }
    }
}
