//! The agent's contact with the kernel: mounts, modules, the serial channel, the fsdax
//! conversion, and the few instructions (flushes, fences, non-temporal stores, the
//! marker `cpuid`) that must be emitted exactly as the workload says.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::time::Duration;

fn cstr(s: &str) -> CString {
    CString::new(s).expect("no NUL in paths")
}

fn errno_msg(what: &str) -> String {
    format!("{what}: {}", std::io::Error::last_os_error())
}

/// Mount /proc, /sys and /dev; errors are logged, not fatal (a missing /sys only
/// breaks the fsdax conversion, which reports its own error).
pub fn mount_pseudo_filesystems() {
    for (src, target, fstype) in [
        ("proc", "/proc", "proc"),
        ("sysfs", "/sys", "sysfs"),
        ("devtmpfs", "/dev", "devtmpfs"),
        ("tmpfs", "/tmp", "tmpfs"),
    ] {
        let _ = std::fs::create_dir_all(target);
        let (s, t, f) = (cstr(src), cstr(target), cstr(fstype));
        // SAFETY: valid NUL-terminated strings, null data.
        let rc = unsafe { libc::mount(s.as_ptr(), t.as_ptr(), f.as_ptr(), 0, std::ptr::null()) };
        if rc != 0 {
            log(&errno_msg(&format!("pmcrash-agent: mount {target}")));
        }
    }
    let _ = std::fs::create_dir_all(crate::MOUNT_POINT);
}

/// Write a line to the kernel log (and so to the console the harness records).
pub fn log(msg: &str) {
    if let Ok(mut f) = OpenOptions::new().write(true).open("/dev/kmsg") {
        let _ = writeln!(f, "{msg}");
    }
}

/// Load every module named in the load-order file, in order. Returns the names
/// loaded (or already present).
pub fn load_modules(order_file: &str) -> Vec<String> {
    let Ok(order) = std::fs::read_to_string(order_file) else {
        log("pmcrash-agent: no module load order; assuming a kernel with everything built in");
        return Vec::new();
    };
    let mut loaded = Vec::new();
    for name in order.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let path = format!("/modules/{name}");
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) => {
                log(&format!("pmcrash-agent: open {path}: {e}"));
                continue;
            }
        };
        let params = cstr("");
        // SAFETY: a valid fd and an empty parameter string.
        let rc =
            unsafe { libc::syscall(libc::SYS_finit_module, file.as_raw_fd(), params.as_ptr(), 0) };
        let err = std::io::Error::last_os_error();
        if rc == 0 || err.raw_os_error() == Some(libc::EEXIST) {
            loaded.push(name.trim_end_matches(".ko").to_owned());
        } else {
            log(&format!("pmcrash-agent: finit_module {name}: {err}"));
        }
    }
    loaded
}

/// Open the agent's serial port in raw mode: no echo, no line editing, no CR/LF
/// translation, so JSON passes through unchanged.
pub fn open_channel(path: &str) -> std::io::Result<File> {
    let file = OpenOptions::new().read(true).write(true).open(path)?;
    let mut t = rustix::termios::tcgetattr(&file)?;
    t.make_raw();
    rustix::termios::tcsetattr(&file, rustix::termios::OptionalActions::Now, &t)?;
    Ok(file)
}

/// `uname -r`.
pub fn kernel_release() -> String {
    let u = rustix::system::uname();
    u.release().to_string_lossy().into_owned()
}

/// Milliseconds since the kernel started.
pub fn boot_millis() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
    t.tv_sec as u64 * 1000 + t.tv_nsec as u64 / 1_000_000
}

fn write_sysfs(path: &str, value: &str) -> Result<(), String> {
    std::fs::write(path, value).map_err(|e| format!("write {value:?} to {path}: {e}"))
}

/// Turn the label-less raw namespace into fsdax: unbind it from nd_pmem, configure
/// the region's pfn seed to claim it (`mode=ram`, 2 MiB alignment) and bind that.
/// The kernel writes the pfn info block at 4 KiB; the usable device then starts at
/// 2 MiB of the backing file.
pub fn convert_to_fsdax() -> Result<(), String> {
    let ns = "namespace0.0";
    let seed = std::fs::read_to_string("/sys/bus/nd/devices/region0/pfn_seed")
        .map_err(|e| format!("read region0/pfn_seed (is nd_pmem loaded?): {e}"))?;
    let pfn = seed.trim().to_owned();
    let _ = write_sysfs("/sys/bus/nd/drivers/nd_pmem/unbind", ns);
    let base = format!("/sys/bus/nd/devices/{pfn}");
    write_sysfs(&format!("{base}/uuid"), &fresh_uuid())?;
    write_sysfs(&format!("{base}/mode"), "ram")?;
    write_sysfs(&format!("{base}/align"), "2097152")?;
    write_sysfs(&format!("{base}/namespace"), ns)?;
    write_sysfs("/sys/bus/nd/drivers/nd_pmem/bind", &pfn)?;
    for _ in 0..500 {
        if std::path::Path::new(crate::PMEM_DEV).exists() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Err(format!(
        "{} did not come back after binding {pfn}",
        crate::PMEM_DEV
    ))
}

fn fresh_uuid() -> String {
    let mut b = [0u8; 16];
    if let Ok(mut f) = File::open("/dev/urandom") {
        use std::io::Read;
        let _ = f.read_exact(&mut b);
    }
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

const BLKFLSBUF: libc::c_ulong = 0x1261;

/// Forget cached contents of the PM device: the host has rewritten its backing file.
pub fn refresh_block_device(dev: &str) -> Result<(), String> {
    // SAFETY: plain syscall.
    unsafe { libc::sync() };
    write_sysfs("/proc/sys/vm/drop_caches", "3")?;
    let f = File::open(dev).map_err(|e| format!("open {dev}: {e}"))?;
    // SAFETY: BLKFLSBUF takes no argument.
    let rc = unsafe { libc::ioctl(f.as_raw_fd(), BLKFLSBUF, 0) };
    if rc != 0 {
        return Err(errno_msg(&format!("BLKFLSBUF on {dev}")));
    }
    Ok(())
}

/// Mount with `-o dax` and report whether the mount really uses DAX. `noatime` in
/// `extra` is the VFS flag (`MS_NOATIME`), the rest goes to the file system.
pub fn mount_dax(dev: &str, target: &str, fstype: &str, extra: &[String]) -> Result<bool, String> {
    let mut opts = vec!["dax".to_owned()];
    let mut flags: libc::c_ulong = 0;
    for o in extra {
        match o.as_str() {
            "noatime" => flags |= libc::MS_NOATIME,
            _ => opts.push(o.clone()),
        }
    }
    let data = cstr(&opts.join(","));
    let (s, t, f) = (cstr(dev), cstr(target), cstr(fstype));
    // SAFETY: valid strings.
    let rc = unsafe {
        libc::mount(
            s.as_ptr(),
            t.as_ptr(),
            f.as_ptr(),
            flags,
            data.as_ptr() as *const libc::c_void,
        )
    };
    if rc != 0 {
        return Err(errno_msg(&format!(
            "mount -t {fstype} -o {}{} {dev} {target}",
            opts.join(","),
            if flags & libc::MS_NOATIME != 0 {
                ",noatime"
            } else {
                ""
            }
        )));
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let dax = mountinfo
        .lines()
        .filter(|l| l.split(' ').nth(4) == Some(target))
        .any(|l| l.split([' ', ',']).any(|o| o == "dax" || o == "dax=always"));
    Ok(dax)
}

/// umount(2).
pub fn unmount(target: &str) -> Result<(), String> {
    let t = cstr(target);
    // SAFETY: valid string.
    let rc = unsafe { libc::umount2(t.as_ptr(), 0) };
    if rc != 0 {
        return Err(errno_msg(&format!("umount {target}")));
    }
    Ok(())
}

/// Power the machine off without syncing: what is durable is the harness's question.
pub fn power_off() -> ! {
    // SAFETY: reboot(2) as PID 1.
    unsafe { libc::reboot(libc::RB_POWER_OFF) };
    halt_forever()
}

/// Crash the kernel through sysrq (for the harness's own panic tests).
pub fn trigger_panic() {
    let _ = std::fs::write("/proc/sysrq-trigger", "c");
}

/// Never return and never answer: PID 1 must not exit.
pub fn halt_forever() -> ! {
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// The marker `cpuid` the tracer listens for (see `crash_models::protocol::marker`).
#[inline(never)]
pub fn marker(kind: u32, op: u32, a: u64, b: u64) {
    // SAFETY: cpuid has no memory effects; rbx is saved because LLVM reserves it.
    unsafe {
        std::arch::asm!(
            "mov {saved}, rbx",
            "cpuid",
            "mov rbx, {saved}",
            saved = out(reg) _,
            inout("eax") crash_models::protocol::marker::LEAF => _,
            inout("ecx") kind => _,
            inout("edx") op => _,
            in("rsi") a,
            in("rdi") b,
            options(nostack, preserves_flags),
        );
    }
}

/// Flush the cache line holding `addr`.
///
/// The line is read first. On x86 the flush instructions fault like a read (SDM:
/// CLFLUSH "is treated as a load" for permission and page-fault purposes), so a flush
/// of a page the program never touched maps it, as a read would. Under TCG they never
/// fault: the page would stay unmapped, and the tracer, which translates a flush
/// through the guest's page tables, could not tell which PM line it flushed. The read
/// does what the hardware's fault would do and changes nothing else.
///
/// # Safety
/// `addr` must be mapped and readable (every shared file mapping the agent makes is).
pub unsafe fn flush_line(insn: crash_models::ops::FlushInsn, addr: *const u8) {
    use crash_models::ops::FlushInsn;
    // SAFETY: the caller guarantees the address is mapped and readable; flushes do
    // not write.
    unsafe {
        std::ptr::read_volatile(addr);
        match insn {
            FlushInsn::Clwb => {
                std::arch::asm!("clwb [{0}]", in(reg) addr, options(nostack, preserves_flags))
            }
            FlushInsn::Clflushopt => {
                std::arch::asm!("clflushopt [{0}]", in(reg) addr, options(nostack, preserves_flags))
            }
            FlushInsn::Clflush => {
                std::arch::asm!("clflush [{0}]", in(reg) addr, options(nostack, preserves_flags))
            }
        }
    }
}

/// A fence instruction.
pub fn fence(insn: crash_models::ops::FenceInsn) {
    // SAFETY: fences have no operands.
    unsafe {
        match insn {
            crash_models::ops::FenceInsn::Sfence => {
                std::arch::asm!("sfence", options(nostack, preserves_flags))
            }
            crash_models::ops::FenceInsn::Mfence => {
                std::arch::asm!("mfence", options(nostack, preserves_flags))
            }
        }
    }
}

/// Non-temporal stores of `bytes` (length a multiple of 4) at `dst` (4-aligned):
/// `movnti` of 8 bytes where 8-aligned, else of 4.
///
/// # Safety
/// `dst..dst+len` must be mapped writable.
pub unsafe fn store_nt(dst: *mut u8, bytes: &[u8]) {
    let mut i = 0;
    while i < bytes.len() {
        // SAFETY: in bounds by the caller's contract; alignment checked by validation.
        unsafe {
            let p = dst.add(i);
            if (p as usize) % 8 == 0 && bytes.len() - i >= 8 {
                let v = u64::from_le_bytes(bytes[i..i + 8].try_into().expect("8 bytes"));
                std::arch::asm!("movnti [{0}], {1}", in(reg) p, in(reg) v, options(nostack, preserves_flags));
                i += 8;
            } else {
                let v = u32::from_le_bytes(bytes[i..i + 4].try_into().expect("4 bytes"));
                std::arch::asm!("movnti [{0}], {1:e}", in(reg) p, in(reg) v, options(nostack, preserves_flags));
                i += 4;
            }
        }
    }
}

/// Cached stores of `bytes` at `dst`, in the widest naturally aligned pieces, with
/// volatile writes so the compiler emits exactly these stores.
///
/// # Safety
/// `dst..dst+len` must be mapped writable.
pub unsafe fn store_cached(dst: *mut u8, bytes: &[u8]) {
    let mut i = 0;
    while i < bytes.len() {
        let left = bytes.len() - i;
        // SAFETY: in bounds by the caller's contract; each write is aligned.
        unsafe {
            let p = dst.add(i);
            let a = p as usize;
            if a % 8 == 0 && left >= 8 {
                let v = u64::from_le_bytes(bytes[i..i + 8].try_into().expect("8"));
                std::ptr::write_volatile(p as *mut u64, v);
                i += 8;
            } else if a % 4 == 0 && left >= 4 {
                let v = u32::from_le_bytes(bytes[i..i + 4].try_into().expect("4"));
                std::ptr::write_volatile(p as *mut u32, v);
                i += 4;
            } else if a % 2 == 0 && left >= 2 {
                let v = u16::from_le_bytes(bytes[i..i + 2].try_into().expect("2"));
                std::ptr::write_volatile(p as *mut u16, v);
                i += 2;
            } else {
                std::ptr::write_volatile(p, bytes[i]);
                i += 1;
            }
        }
    }
}

/// True when the kernel command line holds `word` (the harness marks deterministic
/// guests this way).
pub fn cmdline_has(word: &str) -> bool {
    std::fs::read_to_string("/proc/cmdline")
        .map(|c| c.split_whitespace().any(|w| w == word))
        .unwrap_or(false)
}

/// Wait until `file` has input or `millis` pass; true when it has input.
pub fn wait_readable(file: &File, millis: i32) -> bool {
    let mut p = libc::pollfd {
        fd: file.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut p, 1, millis) };
    n > 0
}

/// QEMU's fw_cfg I/O ports: selector (16-bit) and data (8-bit).
const FW_CFG_SELECT: u16 = 0x510;
const FW_CFG_DATA: u16 = 0x511;
/// The file directory's selector.
const FW_CFG_FILE_DIR: u16 = 0x19;

fn fw_cfg_select(key: u16) {
    // SAFETY: port I/O on the fw_cfg ports, made accessible by ioperm.
    unsafe {
        std::arch::asm!("out dx, ax", in("dx") FW_CFG_SELECT, in("ax") key, options(nostack, preserves_flags))
    };
}

fn fw_cfg_read(buf: &mut [u8]) {
    for b in buf {
        let v: u8;
        // SAFETY: as above.
        unsafe {
            std::arch::asm!("in al, dx", in("dx") FW_CFG_DATA, out("al") v, options(nostack, preserves_flags))
        };
        *b = v;
    }
}

/// The contents of the fw_cfg file `name` (`-fw_cfg name=...,file=...` on QEMU's
/// command line), read through the legacy I/O ports: synchronous and part of the
/// guest's instruction stream, so reading it is as deterministic as the guest.
pub fn fw_cfg_file(name: &str) -> Option<Vec<u8>> {
    // SAFETY: ioperm as PID 1 (CAP_SYS_RAWIO) for the two fw_cfg ports.
    if unsafe { libc::ioperm(FW_CFG_SELECT as _, 2, 1) } != 0 {
        return None;
    }
    fw_cfg_select(FW_CFG_FILE_DIR);
    let mut n = [0u8; 4];
    fw_cfg_read(&mut n);
    let count = u32::from_be_bytes(n);
    let mut entry = [0u8; 64];
    let mut found = None;
    for _ in 0..count.min(4096) {
        fw_cfg_read(&mut entry);
        let size = u32::from_be_bytes(entry[0..4].try_into().expect("4 bytes"));
        let select = u16::from_be_bytes(entry[4..6].try_into().expect("2 bytes"));
        let raw = &entry[8..64];
        let len = raw.iter().position(|b| *b == 0).unwrap_or(raw.len());
        if &raw[..len] == name.as_bytes() {
            found = Some((select, size));
            break;
        }
    }
    let (select, size) = found?;
    fw_cfg_select(select);
    let mut data = vec![0u8; size as usize];
    fw_cfg_read(&mut data);
    Some(data)
}
