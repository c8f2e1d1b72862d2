//! The QEMU side: instrumentation at translation time, callbacks at execution time,
//! and the background writer.
//!
//! Everything mutable lives in one [`Runtime`] behind a mutex (TCG runs single-threaded
//! when the harness passes `-accel tcg,thread=single`, so the lock is uncontended; with
//! MTTCG it still keeps the trace consistent, but the order across vCPUs is then only
//! the order callbacks happened to take the lock).

use crate::reads::{Parts, Place, ReadRecorder};
use crate::x86::{classify, is_string_move, Class, MemOperand, Segment};
use crash_models::coverage::{Blocks, CodeRanges};
use crash_models::protocol::marker;
use crash_models::trace::{
    Encoder, FenceKind, FlushKind, Header, Privilege, Record, FLAG_IDLE_FENCES_ELIDED,
};
use qemu_plugin::install::{Args, Info};
use qemu_plugin::plugin::{HasCallbacks, Register};
use qemu_plugin::PluginId;
use qemu_plugin_sys as sys;
use std::collections::{HashMap, HashSet};
use std::ffi::{c_uint, c_void, CStr};
use std::io::BufWriter;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Mutex, OnceLock};
use std::thread::JoinHandle;

unsafe extern "C" {
    // glib, provided by the QEMU binary the plugin is loaded into.
    fn g_byte_array_new() -> *mut sys::GByteArray;
    fn g_array_free(array: *mut sys::GArray, free_segment: bool) -> *mut u8;
}

/// Records per batch handed to the writer thread.
const BATCH: usize = 4096;
/// Batches in flight before a vCPU waits for the writer (back-pressure, never loss).
const CHANNEL_BATCHES: usize = 256;
/// Where the kernel's direct map starts without KASLR (4-level paging).
const DEFAULT_DIRECT_MAP: u64 = 0xffff_8880_0000_0000;
/// A page-table entry's physical-address bits.
const PTE_ADDR: u64 = 0x000f_ffff_ffff_f000;

/// What the plugin was told on its command line.
#[derive(Debug)]
struct Config {
    pm_base: u64,
    pm_size: u64,
    /// The trace file (trace mode).
    out: String,
    /// The read-set file (read-recording mode, see [`crate::reads`]).
    reads: Option<String>,
    /// Read-recording mode: follow string moves as copies (`copies=blocks|lines`;
    /// `off` by default), charging a loaded copy's whole 4 KiB block or only its lines.
    copies: Copies,
    header: Header,
    direct_map: u64,
    verbose: bool,
    /// Ground-truth snapshots of the PM file (see [`crate::snap`]): (PM backing file,
    /// output file).
    snap: Option<(String, String)>,
    /// Snapshot before every recorded fence and marker from the run-begin marker on.
    snap_fences: bool,
    /// Snapshot right after these records (the end of the callback that pushed
    /// record N - 1), sorted.
    snap_records: Vec<u64>,
    /// Coverage (trace mode, see [`crash_models::coverage`]): the code whose blocks
    /// count, and the file the blocks reached are written to at exit.
    coverage: Option<(CodeRanges, String)>,
    /// Read-recording mode with copies followed: the kernel's write-back copy routine
    /// (`copyback=0xSTART-0xEND`, the pmem driver's `__memcpy_flushcache`), whose
    /// loads and stores pair up as copies ([`crate::reads::ReadRecorder::copy_load`]).
    copyback: Option<(u64, u64)>,
}

/// How copies of PM are followed in read-recording mode (`docs/pruning.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Copies {
    /// Not followed: every PM load is a read, only kernel code is instrumented.
    Off,
    /// Followed; a load of a copy reads its whole 4 KiB block.
    Blocks,
    /// Followed; a load of a copy reads the lines of the bytes it loads.
    Lines,
}

fn parse_u64(key: &str, v: &str) -> Result<u64, String> {
    let v = v.replace('_', "");
    let r = if let Some(h) = v.strip_prefix("0x") {
        u64::from_str_radix(h, 16)
    } else if let Some(p) = v.strip_suffix(['M', 'm']) {
        p.parse::<u64>().map(|x| x << 20)
    } else if let Some(p) = v.strip_suffix(['G', 'g']) {
        p.parse::<u64>().map(|x| x << 30)
    } else {
        v.parse()
    };
    r.map_err(|e| format!("pmcrash-tracer: bad {key}={v}: {e}"))
}

fn parse_args(args: &Args, info: &Info) -> Result<Config, String> {
    let mut pm_base = None;
    let mut pm_size = None;
    let mut out = None;
    let mut kernel = String::from("unknown");
    let mut qemu = format!(
        "plugin-api-{}-{}",
        info.version.mininum, info.version.current
    );
    let mut workload_hash = [0u8; 32];
    let mut direct_map = DEFAULT_DIRECT_MAP;
    let mut verbose = false;
    let mut pm_file = None;
    let mut snap_out = None;
    let mut snap_fences = true;
    let mut snap_records = Vec::new();
    let mut reads = None;
    let mut copies = Copies::Off;
    let mut cov_ranges = None;
    let mut copyback = None;
    let mut cov_out = None;
    for a in &args.raw {
        let (k, v) = a
            .split_once('=')
            .ok_or_else(|| format!("pmcrash-tracer: argument `{a}` is not key=value"))?;
        match k {
            "pm_base" => pm_base = Some(parse_u64(k, v)?),
            "pm_size" => pm_size = Some(parse_u64(k, v)?),
            "out" => out = Some(v.to_string()),
            "reads" => reads = Some(v.to_string()),
            "copies" => {
                copies = match v {
                    "off" => Copies::Off,
                    "blocks" => Copies::Blocks,
                    "lines" => Copies::Lines,
                    _ => {
                        return Err(format!(
                            "pmcrash-tracer: bad copies={v}: expected off, blocks or lines"
                        ))
                    }
                }
            }
            "kernel" => kernel = v.to_string(),
            "qemu" => qemu = v.to_string(),
            "direct_map" => direct_map = parse_u64(k, v)?,
            "verbose" => verbose = matches!(v, "on" | "true" | "yes" | "1"),
            "pm_file" => pm_file = Some(v.to_string()),
            "snap" => snap_out = Some(v.to_string()),
            "cov_ranges" => cov_ranges = Some(v.to_string()),
            "copyback" => {
                let bad = || format!("pmcrash-tracer: bad copyback={v}: expected 0xSTART-0xEND");
                let (a, b) = v.split_once('-').ok_or_else(bad)?;
                let (a, b) = (parse_u64(k, a)?, parse_u64(k, b)?);
                if a >= b {
                    return Err(bad());
                }
                copyback = Some((a, b));
            }
            "cov" => cov_out = Some(v.to_string()),
            "snap_fences" => snap_fences = matches!(v, "on" | "true" | "yes" | "1"),
            // Colon-separated: QEMU splits plugin arguments at commas.
            "snap_records" => {
                for n in v.split(':').filter(|n| !n.is_empty()) {
                    snap_records.push(parse_u64(k, n)?);
                }
            }
            "workload" => {
                if v.len() != 64 {
                    return Err("pmcrash-tracer: workload= wants 64 hex digits".into());
                }
                for (i, b) in workload_hash.iter_mut().enumerate() {
                    *b = u8::from_str_radix(&v[2 * i..2 * i + 2], 16)
                        .map_err(|e| format!("pmcrash-tracer: bad workload hash: {e}"))?;
                }
            }
            _ => return Err(format!("pmcrash-tracer: unknown argument `{k}`")),
        }
    }
    let (Some(pm_base), Some(pm_size)) = (pm_base, pm_size) else {
        return Err("pmcrash-tracer: pm_base= and pm_size= are required".into());
    };
    let out = match (out, &reads) {
        (Some(o), None) => o,
        (None, Some(_)) => String::new(),
        _ => {
            return Err(
                "pmcrash-tracer: give exactly one of out= (a trace) and reads= (read sets)".into(),
            )
        }
    };
    if reads.is_some() && (pm_file.is_some() || snap_out.is_some()) {
        return Err("pmcrash-tracer: snapshots need a trace (out=), not reads=".into());
    }
    let snap = match (pm_file, snap_out) {
        (Some(p), Some(o)) => Some((p, o)),
        (None, None) => None,
        _ => return Err("pmcrash-tracer: snap= and pm_file= go together".into()),
    };
    snap_records.sort_unstable();
    snap_records.dedup();
    let coverage = match (cov_ranges, cov_out) {
        (None, None) => None,
        (Some(_), Some(_)) if reads.is_some() => {
            return Err("pmcrash-tracer: coverage needs a trace (out=), not reads=".into())
        }
        (Some(r), Some(o)) => {
            let bytes = std::fs::read(&r)
                .map_err(|e| format!("pmcrash-tracer: cannot read cov_ranges={r}: {e}"))?;
            let ranges = CodeRanges::decode(&bytes)
                .map_err(|e| format!("pmcrash-tracer: cov_ranges={r}: {e}"))?;
            Some((ranges, o))
        }
        _ => return Err("pmcrash-tracer: cov= and cov_ranges= go together".into()),
    };
    Ok(Config {
        pm_base,
        pm_size,
        out,
        reads,
        copies,
        header: Header {
            pm_base,
            pm_size,
            line_size: 64,
            flags: FLAG_IDLE_FENCES_ELIDED,
            kernel,
            workload_hash,
            qemu_version: qemu,
        },
        direct_map,
        verbose,
        snap,
        snap_fences,
        snap_records,
        coverage,
        copyback,
    })
}

static CONFIG: OnceLock<Config> = OnceLock::new();
static RUNTIME: OnceLock<Mutex<Runtime>> = OnceLock::new();
/// Read-recording mode: a check is open (checked before anything else on every load).
static RECORDING: AtomicBool = AtomicBool::new(false);
/// Trace mode: the run-begin marker has passed (coverage counts from there).
static IN_RUN: AtomicBool = AtomicBool::new(false);
/// Coverage: the start addresses of the covered blocks executed in the run.
static COVERED: OnceLock<Mutex<HashSet<u64>>> = OnceLock::new();

/// Messages to the writer thread.
enum Msg {
    Records(Vec<Record>),
    Finish { unresolved: u64, elided: u64 },
}

/// Register handles of one vCPU, by x86 register number (rax = 0 ... r15 = 15).
#[derive(Default, Clone)]
struct Regs {
    gpr: [usize; 16],
    fs_base: usize,
    gs_base: usize,
    cr3: usize,
    cr4: usize,
}

#[derive(Default)]
struct Vcpu {
    regs: Option<Regs>,
    /// A PM store or flush since this vCPU's last recorded fence.
    dirty: bool,
}

/// What translation decided about one instruction that has an execution callback.
#[derive(Clone, Copy)]
struct InsnDesc {
    pc: u64,
    class: Class,
}

/// A glib byte array owned by the plugin (only touched under the runtime lock).
struct GBuf(*mut sys::GByteArray);
// SAFETY: the array is only used while holding the runtime mutex.
unsafe impl Send for GBuf {}

struct Runtime {
    buf: Vec<Record>,
    tx: Option<SyncSender<Msg>>,
    writer: Option<JoinHandle<std::io::Result<()>>>,
    vcpus: Vec<Vcpu>,
    insns: Vec<InsnDesc>,
    insn_ids: HashMap<(u64, Vec<u8>), u32>,
    gbuf: GBuf,
    /// Any PM store or flush since the last recorded fence (on any vCPU).
    dirty: bool,
    unresolved: u64,
    elided: u64,
    split_lost: u64,
    direct_map: u64,
    direct_map_learned: bool,
    /// vpage -> ppage learned from PM stores: a fallback when a page walk cannot read
    /// the page tables.
    learned: HashMap<u64, u64>,
    warned: u32,
    /// Records pushed so far (the index of the next record).
    pushed: u64,
    /// After the run-begin marker.
    in_run: bool,
    snap: Option<crate::snap::Snapshots>,
    snap_fences: bool,
    /// Explicit snapshot records still to come, in reverse order (next one last).
    snap_records: Vec<u64>,
    /// A wanted record was pushed: snapshot at the end of this callback.
    snap_due: bool,
    /// Read-recording mode: the lines of the open check.
    reads: Option<ReadRecorder>,
    /// Read-recording mode: a string move's load waiting for its store.
    pending: Option<PendingMove>,
    /// Read-recording mode with `PMCRASH_READS_LOG=PATH` in QEMU's environment: one
    /// line per line read, `check line pc how` (a debugging aid for docs/pruning.md).
    reads_log: Option<BufWriter<std::fs::File>>,
    /// The open check's id, for the log.
    check_id: u64,
}

fn privilege(pc: u64) -> Privilege {
    // Kernel code runs in the upper canonical half and user code in the lower (SMEP
    // and the address-space split make the instruction's own address a reliable CPL
    // test without reading CS on every store).
    if pc >> 63 == 1 {
        Privilege::Kernel
    } else {
        Privilege::User
    }
}

impl Runtime {
    fn vcpu(&mut self, v: u32) -> &mut Vcpu {
        let v = v as usize;
        if self.vcpus.len() <= v {
            self.vcpus.resize_with(v + 1, Vcpu::default);
        }
        &mut self.vcpus[v]
    }

    fn push(&mut self, r: Record) {
        self.buf.push(r);
        self.pushed += 1;
        while self.snap_records.last().is_some_and(|&n| n <= self.pushed) {
            self.snap_records.pop();
            self.snap_due = true;
        }
        if self.buf.len() >= BATCH {
            self.send();
        }
    }

    fn send(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let batch = std::mem::replace(&mut self.buf, Vec::with_capacity(BATCH));
        if let Some(tx) = &self.tx {
            if tx.send(Msg::Records(batch)).is_err() {
                eprintln!("pmcrash-tracer: the trace writer died; the trace is incomplete");
                self.tx = None;
            }
        }
    }

    /// Snapshot the PM file now, labelled with the records pushed so far.
    fn snapshot(&mut self) {
        let applied = self.pushed;
        let Some(s) = self.snap.as_mut() else { return };
        if let Err(e) = s.take(applied) {
            // No trailer will be written: readers see the stream as incomplete.
            self.snap = None;
            self.warn(|| format!("snapshot at record {applied} failed: {e}; no more snapshots"));
        }
    }

    /// The end of a callback: take the snapshot an explicit record asked for.
    fn end_of_callback(&mut self) {
        if self.snap_due {
            self.snap_due = false;
            self.snapshot();
        }
    }

    /// Before a fence or marker record is pushed.
    fn snapshot_before_event(&mut self) {
        if self.in_run && self.snap_fences {
            self.snapshot();
        }
    }

    fn store(&mut self, vcpu: u32, r: Record) {
        self.vcpu(vcpu).dirty = true;
        self.dirty = true;
        self.push(r);
    }

    fn fence(&mut self, vcpu: u32, fence: FenceKind, pc: u64) {
        let dirty = self.vcpu(vcpu).dirty || self.dirty;
        // A locked or serialising instruction with nothing to order since the last
        // recorded fence is left out (see FLAG_IDLE_FENCES_ELIDED): the kernel's
        // spinlocks would otherwise fill the trace with millions of no-op fences.
        // sfence/mfence are always kept: they are rare, they are what a program writes
        // on purpose, and whether an interrupt's `iret` came first must not decide
        // whether the workload's own fence is in the trace.
        if !dirty && matches!(fence, FenceKind::Locked | FenceKind::Serializing) {
            self.elided += 1;
            return;
        }
        self.vcpu(vcpu).dirty = false;
        self.dirty = false;
        self.snapshot_before_event();
        self.push(Record::Fence {
            fence,
            privilege: privilege(pc),
            vcpu: vcpu as u16,
            pc,
        });
    }

    /// Read a register of the current vCPU (only inside an R_REGS callback).
    fn read_reg(&mut self, handle: usize) -> Option<u64> {
        if handle == 0 {
            return None;
        }
        // SAFETY: gbuf is a live GByteArray; QEMU appends the register's bytes to it,
        // so its length is reset first.
        unsafe {
            (*self.gbuf.0).len = 0;
            let n = sys::qemu_plugin_read_register(
                handle as *mut sys::qemu_plugin_register,
                self.gbuf.0,
            );
            if n <= 0 {
                return None;
            }
            let a = &*self.gbuf.0;
            let bytes = std::slice::from_raw_parts(a.data, (a.len as usize).min(8));
            let mut v = [0u8; 8];
            v[..bytes.len()].copy_from_slice(bytes);
            Some(u64::from_le_bytes(v))
        }
    }

    /// Read 8 bytes of guest-physical memory through the kernel's direct map.
    fn read_phys(&mut self, pa: u64) -> Option<u64> {
        // SAFETY: gbuf is a live GByteArray; QEMU resizes it to the length read.
        unsafe {
            if !sys::qemu_plugin_read_memory_vaddr(self.direct_map.wrapping_add(pa), self.gbuf.0, 8)
            {
                return None;
            }
            let a = &*self.gbuf.0;
            if a.len < 8 {
                return None;
            }
            Some(u64::from_le_bytes(
                std::slice::from_raw_parts(a.data, 8).try_into().ok()?,
            ))
        }
    }

    /// Walk the current page tables. `Err(())` when the tables could not be read,
    /// `Ok(None)` when the address is not mapped.
    fn walk(&mut self, regs: &Regs, va: u64) -> Result<Option<u64>, ()> {
        let cr3 = self.read_reg(regs.cr3).ok_or(())?;
        let cr4 = self.read_reg(regs.cr4).unwrap_or(0);
        let levels = if cr4 & (1 << 12) != 0 { 5 } else { 4 };
        let mut table = cr3 & PTE_ADDR;
        for level in (1..=levels).rev() {
            let shift = 12 + 9 * (level - 1);
            let idx = (va >> shift) & 0x1ff;
            let e = self.read_phys(table + idx * 8).ok_or(())?;
            if e & 1 == 0 {
                return Ok(None);
            }
            // A large page at the PDPT (1 GiB) or PD (2 MiB) level.
            if (level == 3 || level == 2) && e & 0x80 != 0 {
                let mask = (1u64 << shift) - 1;
                return Ok(Some((e & PTE_ADDR & !mask) | (va & mask)));
            }
            table = e & PTE_ADDR;
        }
        Ok(Some(table | (va & 0xfff)))
    }

    /// Virtual to guest-physical for a flush operand.
    fn translate(&mut self, vcpu: u32, va: u64) -> Option<u64> {
        let regs = self.vcpu(vcpu).regs.clone()?;
        if va >> 63 == 1 {
            // The kernel flushes PM through the direct map (dax_direct_access returns
            // __va(phys)); 64 TiB covers the whole 4-level direct-map region.
            let off = va.wrapping_sub(self.direct_map);
            if off < 1 << 46 {
                return Some(off);
            }
        }
        match self.walk(&regs, va) {
            Ok(pa) => pa,
            Err(()) => self
                .learned
                .get(&(va >> 12))
                .map(|pp| (pp << 12) | (va & 0xfff)),
        }
    }

    fn warn(&mut self, msg: impl FnOnce() -> String) {
        if self.warned < 20 {
            self.warned += 1;
            eprintln!("pmcrash-tracer: {}", msg());
        }
    }
}

fn with_rt<T>(f: impl FnOnce(&mut Runtime) -> T) -> Option<T> {
    let rt = RUNTIME.get()?;
    let mut g = rt.lock().unwrap_or_else(|p| p.into_inner());
    Some(f(&mut g))
}

// Store callbacks carry the instruction's facts in the user-data pointer itself, so
// the hot path needs no table look-up: bits 0..48 the pc (sign-extended back),
// bit 48 non-temporal.
const UD_NT: u64 = 1 << 48;

fn pack_store(pc: u64, nt: bool) -> *mut c_void {
    ((pc & ((1 << 48) - 1)) | if nt { UD_NT } else { 0 }) as usize as *mut c_void
}

fn unpack_pc(ud: u64) -> u64 {
    (((ud << 16) as i64) >> 16) as u64
}

/// The value an access loaded or stored, as (low, high) 64-bit halves.
///
/// # Safety
/// Inside a memory callback, with its `info`.
unsafe fn mem_value(info: sys::qemu_plugin_meminfo_t) -> (u64, u64) {
    // SAFETY: per this function's contract.
    let value = unsafe { sys::qemu_plugin_mem_get_value(info) };
    // SAFETY: the union member read is the one `type_` names.
    unsafe {
        use sys::qemu_plugin_mem_value_type::*;
        match value.type_ {
            QEMU_PLUGIN_MEM_VALUE_U8 => (value.data.u8_ as u64, 0),
            QEMU_PLUGIN_MEM_VALUE_U16 => (value.data.u16_ as u64, 0),
            QEMU_PLUGIN_MEM_VALUE_U32 => (value.data.u32_ as u64, 0),
            QEMU_PLUGIN_MEM_VALUE_U64 => (value.data.u64_, 0),
            QEMU_PLUGIN_MEM_VALUE_U128 => (value.data.u128_.low, value.data.u128_.high),
        }
    }
}

unsafe extern "C" fn on_store(
    vcpu: c_uint,
    info: sys::qemu_plugin_meminfo_t,
    vaddr: u64,
    udata: *mut c_void,
) {
    let Some(cfg) = CONFIG.get() else { return };
    // SAFETY: called by QEMU inside a memory callback with a valid meminfo.
    let (pa, shift) = unsafe {
        let hw = sys::qemu_plugin_get_hwaddr(info, vaddr);
        if hw.is_null() {
            return;
        }
        (
            sys::qemu_plugin_hwaddr_phys_addr(hw),
            sys::qemu_plugin_mem_size_shift(info),
        )
    };
    let size = 1u64 << shift;
    let off = pa.wrapping_sub(cfg.pm_base);
    if off >= cfg.pm_size {
        return;
    }
    // SAFETY: as above.
    let (lo, hi) = unsafe { mem_value(info) };
    let ud = udata as usize as u64;
    let pc = unpack_pc(ud);
    let nt = ud & UD_NT != 0;
    with_rt(|rt| {
        let priv_ = privilege(pc);
        // Learn translations for the flush fallback and the kernel's direct map.
        rt.learned.insert(vaddr >> 12, pa >> 12);
        if vaddr >> 63 == 1 && vaddr < 0xffff_ffff_8000_0000 {
            let delta = vaddr.wrapping_sub(pa);
            if delta & ((1 << 30) - 1) == 0 && delta != rt.direct_map {
                let old = rt.direct_map;
                rt.direct_map = delta;
                if rt.direct_map_learned || cfg.verbose {
                    rt.warn(|| format!("direct map base {old:#x} -> {delta:#x}"));
                }
            }
            rt.direct_map_learned = true;
        }
        let page_left = 0x1000 - (pa & 0xfff);
        let emit = |rt: &mut Runtime, off: u64, size: u64, value: u64| {
            rt.store(
                vcpu,
                Record::Store {
                    offset: off,
                    size: size as u8,
                    value,
                    non_temporal: nt,
                    privilege: priv_,
                    vcpu: vcpu as u16,
                    pc,
                },
            );
        };
        // Split into at most 8-byte pieces; a piece that crosses into the next page
        // needs that page's translation.
        let pieces: [(u64, u64, u64); 2] = if size <= 8 {
            [(0, size, lo), (0, 0, 0)]
        } else {
            [(0, 8, lo), (8, 8, hi)]
        };
        for (at, len, val) in pieces {
            if len == 0 {
                continue;
            }
            if at + len <= page_left {
                if off + at + len <= cfg.pm_size {
                    emit(rt, off + at, len, val);
                }
                continue;
            }
            // Byte by byte across the page boundary.
            for i in 0..len {
                let b = (val >> (8 * i)) & 0xff;
                let a = at + i;
                let p = if a < page_left {
                    Some(pa + a)
                } else {
                    let va2 = vaddr + a;
                    rt.learned
                        .get(&(va2 >> 12))
                        .map(|pp| (pp << 12) | (va2 & 0xfff))
                };
                match p {
                    Some(p) if p.wrapping_sub(cfg.pm_base) < cfg.pm_size => {
                        emit(rt, p - cfg.pm_base, 1, b)
                    }
                    Some(_) => {}
                    None => {
                        rt.split_lost += 1;
                        rt.warn(|| format!("store at {vaddr:#x} crosses into an unknown page"));
                    }
                }
            }
        }
        rt.end_of_callback();
    });
}

unsafe extern "C" fn on_exec(vcpu: c_uint, udata: *mut c_void) {
    let id = udata as usize;
    with_rt(|rt| {
        let Some(d) = rt.insns.get(id).copied() else {
            return;
        };
        match d.class {
            Class::Fence(k) => rt.fence(vcpu, k, d.pc),
            Class::Locked => rt.fence(vcpu, FenceKind::Locked, d.pc),
            Class::Cpuid => cpuid(rt, vcpu, d.pc),
            Class::Flush(k, m) => flush(rt, vcpu, d.pc, k, m),
            Class::NonTemporalStore | Class::Other => {}
        }
        rt.end_of_callback();
    });
}

fn cpuid(rt: &mut Runtime, vcpu: u32, pc: u64) {
    let Some(regs) = rt.vcpu(vcpu).regs.clone() else {
        return;
    };
    let eax = rt.read_reg(regs.gpr[0]).unwrap_or(0) as u32;
    if rt.reads.is_some() {
        if eax == marker::LEAF {
            check_marker(rt, &regs);
        }
        return;
    }
    if eax != marker::LEAF {
        rt.fence(vcpu, FenceKind::Serializing, pc);
        return;
    }
    // A marker is instrumentation, not part of the workload: it is deliberately not
    // recorded as a fence, or every op boundary would hide missing fences.
    let ecx = rt.read_reg(regs.gpr[1]).unwrap_or(0) as u32;
    let edx = rt.read_reg(regs.gpr[2]).unwrap_or(0) as u32;
    let rsi = rt.read_reg(regs.gpr[6]).unwrap_or(0);
    let rdi = rt.read_reg(regs.gpr[7]).unwrap_or(0);
    match marker::Kind::from_u32(ecx) {
        Some(kind) => {
            rt.snapshot_before_event();
            rt.push(Record::Marker {
                marker: kind,
                op: edx,
                a: rsi,
                b: rdi,
                vcpu: vcpu as u16,
            });
            // Crash points run from the run's beginning to the end of the trace
            // (the unmount after the last op belongs to it).
            if kind == marker::Kind::RunBegin {
                rt.in_run = true;
                IN_RUN.store(true, Ordering::SeqCst);
            }
        }
        None => rt.warn(|| format!("marker cpuid with unknown kind {ecx} at {pc:#x}")),
    }
}

/// A marker in read-recording mode: a check begins or ends (others are ignored).
fn check_marker(rt: &mut Runtime, regs: &Regs) {
    let ecx = rt.read_reg(regs.gpr[1]).unwrap_or(0) as u32;
    let id = rt.read_reg(regs.gpr[6]).unwrap_or(0);
    let pending = if matches!(ecx, marker::check::BEGIN | marker::check::END) {
        PENDING.store(false, Ordering::Relaxed);
        clear_pages();
        rt.pending.take()
    } else {
        None
    };
    if ecx == marker::check::BEGIN {
        rt.check_id = id;
    }
    if let Some(l) = rt.reads_log.as_mut() {
        use std::io::Write as _;
        let _ = l.flush();
    }
    let Some(r) = rt.reads.as_mut() else { return };
    if let Some(p) = pending {
        // A move whose store never came: its load was a load (harmless at a begin,
        // where the recorder is not open yet).
        r.load_parts(&p.src);
    }
    let file = match ecx {
        marker::check::BEGIN => {
            r.begin(id);
            RECORDING.store(true, Ordering::SeqCst);
            return;
        }
        marker::check::END => {
            RECORDING.store(false, Ordering::SeqCst);
            r.end(id)
        }
        _ => return,
    };
    let Some(path) = CONFIG.get().and_then(|c| c.reads.as_deref()) else {
        return;
    };
    // Whole before the marker instruction completes: the agent answers the host only
    // after it, and the host reads the file then.
    let tmp = format!("{path}.tmp");
    let written = std::fs::write(&tmp, file.encode()).and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        rt.warn(|| format!("cannot write the read set to {path}: {e}"));
    }
}

/// Read-recording mode: user data of a memory callback (bits 0..48: the pc).
const UD_MOVE: u64 = 1 << 49;
/// ... of a user-mode instruction (loads only, unless copies are written back).
const UD_USER: u64 = 1 << 50;
/// ... of the kernel's write-back copy routine (`copyback=`).
const UD_COPYBACK: u64 = 1 << 51;

/// A string move's load from PM (or from RAM holding copies), waiting for the store of
/// the same instruction, which QEMU reports next ([`on_load`]).
#[derive(Debug, Clone, Copy)]
struct PendingMove {
    vcpu: u32,
    udata: u64,
    size: u64,
    src: Parts,
}

/// Follow string moves as copies (`copies=blocks|lines`; the harness chooses per file
/// system, `docs/pruning.md`). Off, only kernel code is instrumented and every PM load
/// is a read.
static FOLLOW_COPIES: AtomicBool = AtomicBool::new(false);

/// A [`PendingMove`] is waiting (checked without the lock).
static PENDING: AtomicBool = AtomicBool::new(false);
/// Some page may hold copies of PM (see [`SHADOW_PAGES`]).
static ANY_SHADOW: AtomicBool = AtomicBool::new(false);
/// One bit per guest-physical page below PM: set when a string move copied PM (or a
/// copy of it) into the page during the open check. Lets loads and stores of other RAM
/// return without the lock. A move into RAM above it charges its source instead.
static SHADOW_PAGES: OnceLock<Vec<AtomicU64>> = OnceLock::new();

fn page_shadowed(pa: u64) -> bool {
    let p = pa >> 12;
    SHADOW_PAGES
        .get()
        .and_then(|v| v.get((p / 64) as usize))
        .is_some_and(|w| w.load(Ordering::Relaxed) & (1 << (p % 64)) != 0)
}

/// Mark the pages of RAM `pa..pa + n` as maybe holding copies; false when they lie
/// past the bitmap.
fn mark_pages(pa: u64, n: u64) -> bool {
    let Some(v) = SHADOW_PAGES.get() else {
        return false;
    };
    let (first, last) = (pa >> 12, (pa + n - 1) >> 12);
    if last / 64 >= v.len() as u64 {
        return false;
    }
    for p in first..=last {
        v[(p / 64) as usize].fetch_or(1 << (p % 64), Ordering::Relaxed);
    }
    ANY_SHADOW.store(true, Ordering::Relaxed);
    true
}

/// A check begins or ends: no page holds a copy.
fn clear_pages() {
    if ANY_SHADOW.swap(false, Ordering::Relaxed) {
        if let Some(v) = SHADOW_PAGES.get() {
            for w in v {
                w.store(0, Ordering::Relaxed);
            }
        }
    }
}

/// Where an access of `size` bytes at `vaddr` (first byte at guest-physical `pa`)
/// lies, in up to two page parts.
///
/// # Safety
/// Inside a memory callback, with its `info`.
unsafe fn place(
    cfg: &Config,
    info: sys::qemu_plugin_meminfo_t,
    vaddr: u64,
    pa: u64,
    size: u64,
) -> Parts {
    let at = |pa: u64| {
        let off = pa.wrapping_sub(cfg.pm_base);
        if off < cfg.pm_size {
            Place::Pm(off)
        } else {
            Place::Ram(pa)
        }
    };
    let page_left = 0x1000 - (pa & 0xfff);
    if size <= page_left {
        return [(at(pa), size), (Place::Unknown, 0)];
    }
    let second = if vaddr.wrapping_sub(pa) == cfg.direct_map {
        // The kernel's direct map is physically contiguous.
        at(pa + page_left)
    } else {
        // The access just went through both pages, so the TLB holds the second.
        // SAFETY: per this function's contract.
        let hw = unsafe { sys::qemu_plugin_get_hwaddr(info, vaddr.wrapping_add(page_left)) };
        if hw.is_null() {
            Place::Unknown
        } else {
            // SAFETY: a non-null hwaddr from QEMU.
            at(unsafe { sys::qemu_plugin_hwaddr_phys_addr(hw) })
        }
    };
    [(at(pa), page_left), (second, size - page_left)]
}

/// Read-recording mode: every load and store of the guest's kernel, every load of user
/// code and every access of a user string move (a memory callback on every
/// instruction, so the first tests must be cheap). PM loads are reads; a string move (`UD_MOVE`) from PM into RAM is followed
/// instead ([`ReadRecorder::move_parts`]); loads of RAM holding such copies are reads
/// of their PM lines; stores mark bytes the check wrote itself or overwrote.
unsafe extern "C" fn on_load(
    vcpu: c_uint,
    info: sys::qemu_plugin_meminfo_t,
    vaddr: u64,
    udata: *mut c_void,
) {
    if !RECORDING.load(Ordering::Relaxed) {
        return;
    }
    let Some(cfg) = CONFIG.get() else { return };
    let ud = udata as u64;
    let pa = match direct_pa(cfg, vaddr) {
        Some(pa) => pa,
        None => {
            // SAFETY: called by QEMU inside a memory callback with a valid meminfo.
            let hw = unsafe { sys::qemu_plugin_get_hwaddr(info, vaddr) };
            if hw.is_null() {
                if PENDING.load(Ordering::Relaxed) {
                    with_rt(|rt| {
                        if let (Some(p), Some(r)) = (rt.pending.take(), rt.reads.as_mut()) {
                            r.load_parts(&p.src);
                        }
                        PENDING.store(false, Ordering::Relaxed);
                    });
                }
                return;
            }
            // SAFETY: a non-null hwaddr from QEMU.
            let pa = unsafe { sys::qemu_plugin_hwaddr_phys_addr(hw) };
            learn_direct_map(cfg, vaddr, pa);
            pa
        }
    };
    let off = pa.wrapping_sub(cfg.pm_base);
    // No access is wider than 64 bytes: one that starts further from its page's end
    // stays in its page, whatever its size (asked only when needed).
    let maybe_crossing = pa & 0xfff > 0x1000 - 64;
    let is_copyback = ud & UD_COPYBACK != 0;
    let slow = off < cfg.pm_size
        || maybe_crossing
        || is_copyback
        || PENDING.load(Ordering::Relaxed)
        || (ANY_SHADOW.load(Ordering::Relaxed) && page_shadowed(pa));
    if !slow {
        return;
    }
    // SAFETY: called by QEMU inside a memory callback with a valid meminfo.
    let (size, is_store) = unsafe {
        (
            1u64 << sys::qemu_plugin_mem_size_shift(info),
            sys::qemu_plugin_mem_is_store(info),
        )
    };
    // SAFETY: inside the memory callback, with its info.
    let parts = unsafe { place(cfg, info, vaddr, pa, size) };
    let is_move = ud & UD_MOVE != 0;
    let value = if is_copyback {
        // SAFETY: inside the memory callback, with its info.
        Some(unsafe { mem_value(info) })
    } else {
        None
    };
    with_rt(|rt| {
        let pending = rt.pending.take();
        PENDING.store(false, Ordering::Relaxed);
        let Some(r) = rt.reads.as_mut() else { return };
        if let Some(value) = value {
            if let Some(p) = pending {
                r.load_parts(&p.src);
            }
            if is_store {
                r.copy_store(&parts, size, value);
            } else {
                r.copy_load(&parts, size, value);
            }
            return;
        }
        if r.has_copy_loads() {
            r.flush_copy_loads();
        }
        if let Some(p) = pending {
            if is_store && p.vcpu == vcpu && p.udata == ud && p.size == size {
                // Copies land only in pages the bitmap covers, or the fast path
                // would miss their loads: elsewhere the move charges its source.
                let mut dst = parts;
                for (place, n) in &mut dst {
                    if let Place::Ram(a) = *place {
                        if *n > 0 && !mark_pages(a, *n) {
                            *place = Place::Unknown;
                        }
                    }
                }
                r.move_parts(&p.src, &dst);
                return;
            }
            // The move's store did not follow (it faulted): its load was a load.
            r.load_parts(&p.src);
        }
        if is_move && !is_store {
            let copies = parts.iter().any(|&(place, n)| {
                n > 0
                    && match place {
                        Place::Pm(_) => true,
                        Place::Ram(a) => r.has_shadows() && page_shadowed(a),
                        Place::Unknown => false,
                    }
            });
            if copies {
                rt.pending = Some(PendingMove {
                    vcpu,
                    udata: ud,
                    size,
                    src: parts,
                });
                PENDING.store(true, Ordering::Relaxed);
                return;
            }
        }
        if is_store {
            r.store_parts(&parts);
        } else {
            r.load_parts(&parts);
        }
    });
    if LOGGING.load(Ordering::Relaxed) {
        with_rt(|rt| log_new(rt, ud, is_store));
    }
}

/// The kernel's direct map in read-recording mode: where it starts, once QEMU's own
/// translations confirmed it ([`learn_direct_map`]); 0 while not known, `u64::MAX`
/// once refuted.
///
/// Asking QEMU for the physical address of every kernel access (`get_hwaddr`, a walk
/// of its TLB) was about a quarter of an XFS checker QEMU's time (`perf`). The direct
/// map (slab, page cache, per-CPU data, and PM itself through the pmem driver and
/// DAX) is linear by the kernel's construction (`__va(pa) = PAGE_OFFSET + pa`;
/// `nokaslr` fixes `PAGE_OFFSET` at one of two values), so its accesses need no walk. Every
/// [`DIRECT_CHECK_EVERY`]th of them is still checked against QEMU; a difference
/// turns the fast path off and marks the open check's read set incomplete.
static DIRECT_BASE: AtomicU64 = AtomicU64::new(0);
/// Consistent translations seen before [`DIRECT_BASE`] is trusted.
static DIRECT_SEEN: AtomicU64 = AtomicU64::new(0);
/// Fast translations made (for the sampled checks).
static DIRECT_FAST: AtomicU64 = AtomicU64::new(0);
const DIRECT_CONFIRMATIONS: u64 = 64;
const DIRECT_CHECK_EVERY: u64 = 4096;
/// `PAGE_OFFSET` without KASLR, with 4- and 5-level paging.
const PAGE_OFFSET_L4: u64 = 0xffff_8880_0000_0000;
const PAGE_OFFSET_L5: u64 = 0xff11_0000_0000_0000;

/// The physical address of `vaddr` when it lies in the confirmed direct map, below
/// the end of PM (the highest guest-physical address the check cares about).
#[inline]
fn direct_pa(cfg: &Config, vaddr: u64) -> Option<u64> {
    let base = DIRECT_BASE.load(Ordering::Relaxed);
    if base == 0 || base == u64::MAX {
        return None;
    }
    let pa = vaddr.wrapping_sub(base);
    if pa >= cfg.pm_base + cfg.pm_size {
        return None;
    }
    // Not a read-modify-write: a lost count among vCPUs only moves the sampling.
    let n = DIRECT_FAST.load(Ordering::Relaxed).wrapping_add(1);
    DIRECT_FAST.store(n, Ordering::Relaxed);
    if n % DIRECT_CHECK_EVERY == 0 {
        // Let the slow path ask QEMU and compare (`learn_direct_map`).
        return None;
    }
    Some(pa)
}

/// QEMU translated kernel address `vaddr` to `pa`: confirm the direct map's start, or
/// refute it.
fn learn_direct_map(cfg: &Config, vaddr: u64, pa: u64) {
    let limit = cfg.pm_base + cfg.pm_size;
    let base = DIRECT_BASE.load(Ordering::Relaxed);
    if base == u64::MAX {
        return;
    }
    let in_map = |b: u64| vaddr.wrapping_sub(b) < limit;
    if base != 0 {
        if in_map(base) && vaddr.wrapping_sub(base) != pa {
            DIRECT_BASE.store(u64::MAX, Ordering::Relaxed);
            with_rt(|rt| {
                if let Some(r) = rt.reads.as_mut() {
                    r.doubt();
                }
                rt.warn(|| format!("direct map refuted: {vaddr:#x} is {pa:#x}"));
            });
        }
        return;
    }
    for b in [PAGE_OFFSET_L4, PAGE_OFFSET_L5] {
        if in_map(b) {
            if vaddr.wrapping_sub(b) == pa {
                if DIRECT_SEEN.fetch_add(1, Ordering::Relaxed) + 1 >= DIRECT_CONFIRMATIONS {
                    DIRECT_BASE.store(b, Ordering::Relaxed);
                }
            } else {
                DIRECT_BASE.store(u64::MAX, Ordering::Relaxed);
            }
        }
    }
}

/// `PMCRASH_READS_LOG` is set.
static LOGGING: AtomicBool = AtomicBool::new(false);

/// Log the lines the last access read (`PMCRASH_READS_LOG`).
fn log_new(rt: &mut Runtime, ud: u64, is_store: bool) {
    use std::io::Write as _;
    let Some(r) = rt.reads.as_mut() else { return };
    let lines = r.take_new();
    let (Some(log), false) = (rt.reads_log.as_mut(), lines.is_empty()) else {
        return;
    };
    let pc = unpack_pc(ud);
    let how = match (ud & UD_USER != 0, ud & UD_MOVE != 0, is_store) {
        (false, false, _) => "kernel-load",
        (false, true, false) => "kernel-move-load",
        (false, true, true) => "kernel-move",
        (true, false, _) => "user-load",
        (true, true, false) => "user-move-load",
        (true, true, true) => "user-move",
    };
    for l in lines {
        let _ = writeln!(log, "{} {l} {pc:#x} {how}", rt.check_id);
    }
}

fn flush(rt: &mut Runtime, vcpu: u32, pc: u64, kind: FlushKind, m: MemOperand) {
    let Some(cfg) = CONFIG.get() else { return };
    let Some(regs) = rt.vcpu(vcpu).regs.clone() else {
        rt.unresolved += 1;
        return;
    };
    let mut vals = [0u64; 16];
    for r in m.base.into_iter().chain(m.index) {
        vals[r as usize] = rt.read_reg(regs.gpr[r as usize]).unwrap_or(0);
    }
    let fs = if m.segment == Segment::Fs {
        rt.read_reg(regs.fs_base).unwrap_or(0)
    } else {
        0
    };
    let gs = if m.segment == Segment::Gs {
        rt.read_reg(regs.gs_base).unwrap_or(0)
    } else {
        0
    };
    let va = m.address(|r| vals[r as usize], fs, gs);
    match rt.translate(vcpu, va) {
        Some(pa) => {
            let off = pa.wrapping_sub(cfg.pm_base);
            if off < cfg.pm_size {
                rt.vcpu(vcpu).dirty = true;
                rt.dirty = true;
                rt.push(Record::Flush {
                    offset: off,
                    flush: kind,
                    privilege: privilege(pc),
                    vcpu: vcpu as u16,
                    pc,
                });
            }
        }
        None => {
            rt.unresolved += 1;
            rt.warn(|| format!("unresolved {kind:?} of {va:#x} at pc {pc:#x}"));
        }
    }
}

/// A covered block runs: remember its start (only its first run after the run-begin
/// marker changes anything).
unsafe extern "C" fn on_block(_vcpu: c_uint, udata: *mut c_void) {
    if !IN_RUN.load(Ordering::Relaxed) {
        return;
    }
    if let Some(set) = COVERED.get() {
        if let Ok(mut set) = set.lock() {
            set.insert(udata as u64);
        }
    }
}

unsafe extern "C" fn on_tb_trans(_id: sys::qemu_plugin_id_t, tb: *mut sys::qemu_plugin_tb) {
    if let Some((ranges, _)) = CONFIG.get().and_then(|c| c.coverage.as_ref()) {
        // SAFETY: QEMU hands a valid TB for the duration of this callback.
        let start = unsafe { sys::qemu_plugin_tb_vaddr(tb) };
        if ranges.contains(start) {
            // SAFETY: registering on a valid TB during translation.
            unsafe {
                sys::qemu_plugin_register_vcpu_tb_exec_cb(
                    tb,
                    Some(on_block),
                    sys::qemu_plugin_cb_flags::QEMU_PLUGIN_CB_NO_REGS,
                    start as *mut c_void,
                );
            }
        }
    }
    // SAFETY: QEMU hands a valid TB for the duration of this callback.
    let n = unsafe { sys::qemu_plugin_tb_n_insns(tb) };
    let mut bytes = [0u8; 16];
    for i in 0..n {
        // SAFETY: i < n.
        let insn = unsafe { sys::qemu_plugin_tb_get_insn(tb, i) };
        // SAFETY: insn is valid for this callback; dest has room for 16 bytes.
        let (pc, len) = unsafe {
            (
                sys::qemu_plugin_insn_vaddr(insn),
                sys::qemu_plugin_insn_data(insn, bytes.as_mut_ptr().cast(), bytes.len()),
            )
        };
        let code = &bytes[..len.min(16)];
        let class = classify(code, pc);
        let read_mode = CONFIG.get().is_some_and(|c| c.reads.is_some());
        // Kernel code loads PM through its direct map (the pmem driver, DAX reads);
        // no user process in a checker guest maps a DAX file (docs/pruning.md).
        // User code's loads are instrumented too, for the copies of PM that the kernel
        // moved into user pages (`read(2)` of a DAX file, `O_DIRECT`), and its string
        // moves (glibc's `memcpy` of a block, e2fsck's cache) carry copies along. Its
        // other stores only overwrite copies, and missing that only adds reads.
        let follow = FOLLOW_COPIES.load(Ordering::Relaxed);
        if read_mode && (follow || privilege(pc) == Privilege::Kernel) {
            let pc48 = pc & ((1 << 48) - 1);
            let mv = if follow && is_string_move(code) {
                UD_MOVE
            } else {
                0
            };
            let copyback = CONFIG.get().and_then(|c| c.copyback).filter(|_| follow);
            let (rw, ud) = if privilege(pc) == Privilege::Kernel {
                let cb = match copyback {
                    Some((a, b)) if (a..b).contains(&pc) => UD_COPYBACK,
                    _ => 0,
                };
                (sys::qemu_plugin_mem_rw::QEMU_PLUGIN_MEM_RW, pc48 | mv | cb)
            } else if mv != 0 || copyback.is_some() {
                // Copies written back are taken to hold the image's bytes until a
                // store says otherwise, so user stores must be seen too.
                (
                    sys::qemu_plugin_mem_rw::QEMU_PLUGIN_MEM_RW,
                    pc48 | mv | UD_USER,
                )
            } else {
                (sys::qemu_plugin_mem_rw::QEMU_PLUGIN_MEM_R, pc48 | UD_USER)
            };
            // SAFETY: registering on a valid insn during translation.
            unsafe {
                sys::qemu_plugin_register_vcpu_mem_cb(
                    insn,
                    Some(on_load),
                    sys::qemu_plugin_cb_flags::QEMU_PLUGIN_CB_NO_REGS,
                    rw,
                    ud as usize as *mut c_void,
                );
            }
        }
        if read_mode && class != Class::Cpuid {
            continue;
        }
        let wants_store_cb = !read_mode
            && matches!(
                class,
                Class::Other | Class::NonTemporalStore | Class::Locked
            );
        if wants_store_cb {
            // SAFETY: registering on a valid insn during translation.
            unsafe {
                sys::qemu_plugin_register_vcpu_mem_cb(
                    insn,
                    Some(on_store),
                    sys::qemu_plugin_cb_flags::QEMU_PLUGIN_CB_NO_REGS,
                    sys::qemu_plugin_mem_rw::QEMU_PLUGIN_MEM_W,
                    pack_store(pc, class == Class::NonTemporalStore),
                );
            }
        }
        if matches!(class, Class::Other | Class::NonTemporalStore) {
            continue;
        }
        let Some(id) = with_rt(|rt| {
            let key = (pc, code.to_vec());
            if let Some(&id) = rt.insn_ids.get(&key) {
                return id;
            }
            let id = rt.insns.len() as u32;
            rt.insns.push(InsnDesc { pc, class });
            rt.insn_ids.insert(key, id);
            id
        }) else {
            continue;
        };
        let flags = match class {
            Class::Cpuid | Class::Flush(..) => sys::qemu_plugin_cb_flags::QEMU_PLUGIN_CB_R_REGS,
            _ => sys::qemu_plugin_cb_flags::QEMU_PLUGIN_CB_NO_REGS,
        };
        // SAFETY: as above.
        unsafe {
            sys::qemu_plugin_register_vcpu_insn_exec_cb(
                insn,
                Some(on_exec),
                flags,
                id as usize as *mut c_void,
            );
        }
    }
}

unsafe extern "C" fn on_vcpu_init(_id: sys::qemu_plugin_id_t, vcpu: c_uint) {
    let mut regs = Regs::default();
    let names = [
        "rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12",
        "r13", "r14", "r15",
    ];
    let mut missing = Vec::new();
    // SAFETY: called in vCPU context as the API requires; the array is freed below
    // and the names are QEMU's static strings.
    unsafe {
        let arr = sys::qemu_plugin_get_registers();
        if !arr.is_null() {
            let descs = std::slice::from_raw_parts(
                (*arr).data as *const sys::qemu_plugin_reg_descriptor,
                (*arr).len as usize,
            );
            for d in descs {
                let name = CStr::from_ptr(d.name).to_string_lossy();
                let h = d.handle as usize;
                if let Some(i) = names.iter().position(|n| *n == name) {
                    regs.gpr[i] = h;
                }
                match &*name {
                    "fs_base" => regs.fs_base = h,
                    "gs_base" => regs.gs_base = h,
                    "cr3" => regs.cr3 = h,
                    "cr4" => regs.cr4 = h,
                    _ => {}
                }
            }
            g_array_free(arr, true);
        }
    }
    for (i, n) in names.iter().enumerate() {
        if regs.gpr[i] == 0 {
            missing.push(*n);
        }
    }
    if regs.cr3 == 0 {
        missing.push("cr3");
    }
    with_rt(|rt| {
        if !missing.is_empty() {
            rt.warn(|| format!("vCPU {vcpu}: registers not readable: {missing:?}"));
        }
        rt.vcpu(vcpu).regs = Some(regs);
    });
}

/// Write the covered blocks, atomically: the harness reads the file after QEMU ended,
/// and a missing file means the run's coverage is unknown.
fn write_coverage() {
    let Some((_, out)) = CONFIG.get().and_then(|c| c.coverage.as_ref()) else {
        return;
    };
    let blocks: Blocks = match COVERED.get().map(|s| s.lock()) {
        Some(Ok(set)) => set.iter().copied().collect(),
        _ => Blocks::default(),
    };
    let tmp = format!("{out}.tmp");
    let written = std::fs::write(&tmp, blocks.encode())
        .and_then(|()| std::fs::File::open(&tmp)?.sync_all())
        .and_then(|()| std::fs::rename(&tmp, out));
    if let Err(e) = written {
        eprintln!("pmcrash-tracer: cannot write the coverage to {out}: {e}");
    }
}

unsafe extern "C" fn on_exit(_id: sys::qemu_plugin_id_t, _udata: *mut c_void) {
    write_coverage();
    let Some((writer, stats)) = with_rt(|rt| {
        rt.send();
        if let Some(tx) = rt.tx.take() {
            let _ = tx.send(Msg::Finish {
                unresolved: rt.unresolved,
                elided: rt.elided,
            });
        }
        if let Some(s) = rt.snap.take() {
            let taken = s.taken;
            if let Err(e) = s.finish() {
                eprintln!("pmcrash-tracer: finishing the snapshots failed: {e}");
            } else if CONFIG.get().is_some_and(|c| c.verbose) {
                eprintln!("pmcrash-tracer: {taken} snapshots");
            }
        }
        (
            rt.writer.take(),
            (rt.unresolved, rt.elided, rt.split_lost, rt.direct_map),
        )
    }) else {
        return;
    };
    if let Some(w) = writer {
        match w.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("pmcrash-tracer: writing the trace failed: {e}"),
            Err(_) => eprintln!("pmcrash-tracer: the trace writer panicked"),
        }
    }
    let (unresolved, elided, split_lost, dm) = stats;
    if unresolved > 0 || split_lost > 0 || CONFIG.get().is_some_and(|c| c.verbose) {
        eprintln!(
            "pmcrash-tracer: done: {unresolved} unresolved flushes, {split_lost} store bytes \
             lost across pages, {elided} idle fences elided, direct map {dm:#x}"
        );
    }
}

fn writer(rx: Receiver<Msg>, file: std::fs::File, header: Header) -> std::io::Result<()> {
    let mut enc = Encoder::new(BufWriter::with_capacity(1 << 20, file), &header)?;
    while let Ok(msg) = rx.recv() {
        match msg {
            Msg::Records(batch) => {
                for r in &batch {
                    enc.push(r)?;
                }
            }
            Msg::Finish { unresolved, elided } => {
                let out = enc.finish(unresolved, elided)?;
                out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
                return Ok(());
            }
        }
    }
    // The vCPU side went away without finishing: leave the trace without a footer
    // so readers report it as truncated.
    Ok(())
}

/// The plugin object the `qemu-plugin` crate installs.
pub struct Tracer;

impl HasCallbacks for Tracer {}

impl Register for Tracer {
    fn register_default(
        &mut self,
        id: PluginId,
        args: &Args,
        info: &Info,
    ) -> qemu_plugin::Result<()> {
        // Only the callbacks the tracer needs, registered raw: the crate's default set
        // would add idle/resume/syscall hooks on every vCPU for nothing.
        let cfg = match parse_args(args, info) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("{e}");
                return Err(std::io::Error::other(e).into());
            }
        };
        let (tx, w, reads) = if cfg.reads.is_some() {
            let line = cfg.header.line_size;
            let pages = cfg.pm_base >> 12;
            let _ = SHADOW_PAGES.set((0..pages.div_ceil(64)).map(|_| AtomicU64::new(0)).collect());
            (None, None, Some(ReadRecorder::new(cfg.pm_size, line)))
        } else {
            let file = match std::fs::File::create(&cfg.out) {
                Ok(f) => f,
                Err(e) => {
                    eprintln!("pmcrash-tracer: cannot create {}: {e}", cfg.out);
                    return Err(e.into());
                }
            };
            let (tx, rx) = sync_channel(CHANNEL_BATCHES);
            let header = cfg.header.clone();
            let w = std::thread::Builder::new()
                .name("pmcrash-trace-writer".into())
                .spawn(move || writer(rx, file, header))?;
            (Some(tx), Some(w), None)
        };
        let direct_map = cfg.direct_map;
        let snap = match &cfg.snap {
            Some((pm, out)) => match crate::snap::Snapshots::open(pm, out, cfg.pm_size) {
                Ok(s) => Some(s),
                Err(e) => {
                    eprintln!("pmcrash-tracer: cannot start snapshots of {pm} into {out}: {e}");
                    return Err(e.into());
                }
            },
            None => None,
        };
        let mut reads = reads;
        let reads_log = match (&mut reads, std::env::var_os("PMCRASH_READS_LOG")) {
            (Some(r), Some(path)) => {
                r.keep_new_lines();
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .ok()
                    .map(BufWriter::new)
            }
            _ => None,
        };
        LOGGING.store(reads_log.is_some(), Ordering::Relaxed);
        FOLLOW_COPIES.store(cfg.copies != Copies::Off, Ordering::Relaxed);
        if let (Some(r), Copies::Lines) = (reads.as_mut(), cfg.copies) {
            r.charge_lines();
        }
        let snap_fences = cfg.snap_fences;
        let mut snap_records = cfg.snap_records.clone();
        snap_records.reverse();
        if cfg.coverage.is_some() {
            let _ = COVERED.set(Mutex::new(HashSet::new()));
        }
        let _ = CONFIG.set(cfg);
        let _ = RUNTIME.set(Mutex::new(Runtime {
            buf: Vec::with_capacity(BATCH),
            tx,
            writer: w,
            vcpus: Vec::new(),
            insns: Vec::new(),
            insn_ids: HashMap::new(),
            // SAFETY: plain glib allocation.
            gbuf: GBuf(unsafe { g_byte_array_new() }),
            dirty: false,
            unresolved: 0,
            elided: 0,
            split_lost: 0,
            direct_map,
            direct_map_learned: false,
            learned: HashMap::new(),
            warned: 0,
            pushed: 0,
            in_run: false,
            snap,
            snap_fences,
            snap_records,
            snap_due: false,
            reads,
            pending: None,
            reads_log,
            check_id: 0,
        }));
        // SAFETY: registering callbacks with the id QEMU gave us.
        unsafe {
            sys::qemu_plugin_register_vcpu_init_cb(id, Some(on_vcpu_init));
            sys::qemu_plugin_register_vcpu_tb_trans_cb(id, Some(on_tb_trans));
            sys::qemu_plugin_register_atexit_cb(id, Some(on_exit), std::ptr::null_mut());
        }
        Ok(())
    }
}

qemu_plugin::register!(Tracer);
