//! pmcrash-agent: PID 1 of every pmcrash guest.
//!
//! It mounts the pseudo file systems, loads the modules listed in
//! `/modules/load-order`, waits for `/dev/pmem0`, and then serves the harness over the
//! second serial port (`/dev/ttyS1`) with the line-delimited JSON protocol of
//! `crash_models::protocol`. It never exits: PID 1 exiting panics the kernel, so every
//! failure becomes an `error` message instead and the harness decides.
//!
//! There is no shell and no libc beyond the statically linked one: everything the
//! guest does is in this binary, so a trace contains only the workload and the kernel.

mod exec;
mod fsck;
mod program;
mod symbols;
mod sys;

use crash_models::protocol::{self, AgentMsg, HostMsg, MAX_LINE_BYTES, PROTOCOL_VERSION};
use std::io::{Read, Write};
use std::time::{Duration, Instant};

/// Where the file system under test is mounted.
pub const MOUNT_POINT: &str = "/mnt";
/// The PM block device.
pub const PMEM_DEV: &str = "/dev/pmem0";
/// The kernel command-line word of deterministic guests (`pmcrash::vm`).
const DETERMINISTIC_CMDLINE: &str = "pmcrash.det=1";
/// The fw_cfg file holding a deterministic guest's script (`pmcrash::vm`).
const SCRIPT_FW_CFG: &str = "opt/pmcrash/script";

fn main() {
    sys::mount_pseudo_filesystems();
    sys::log(protocol::AGENT_BANNER);
    let modules = sys::load_modules("/modules/load-order");
    // Periodic write-back would put timer-driven kernel stores into traces; what is
    // durable is decided by the workload's own syncs.
    let _ = std::fs::write("/proc/sys/vm/dirty_writeback_centisecs", "0");
    // nd_pmem probes asynchronously: give the namespace a moment to appear.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !std::path::Path::new(PMEM_DEV).exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut channel = match sys::open_channel("/dev/ttyS1") {
        Ok(c) => c,
        Err(e) => {
            sys::log(&format!("pmcrash-agent: cannot open /dev/ttyS1: {e}"));
            sys::halt_forever();
        }
    };
    let ready = AgentMsg::Ready {
        version: PROTOCOL_VERSION,
        kernel: sys::kernel_release(),
        modules,
        boot_ms: sys::boot_millis(),
    };
    send(&mut channel, &ready);
    let mut executor = exec::Executor::new(MOUNT_POINT);
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    // A deterministic guest (QEMU with -icount) is restored to run a script the host
    // put in fw_cfg, with no input on the serial port: when its bytes arrived would
    // depend on host timing. The agent looks for the script on a timer (virtual time:
    // reproducible), never blocking on the port for long.
    let deterministic = sys::cmdline_has(DETERMINISTIC_CMDLINE);
    let mut script_done = false;
    loop {
        if deterministic && !script_done {
            if let Some(script) = sys::fw_cfg_file(SCRIPT_FW_CFG) {
                script_done = true;
                // The answers wait in memory until the script is over (or powers off):
                // no serial traffic, so no UART interrupts, inside the traced run.
                let mut answers: Vec<u8> = Vec::new();
                let poweroff = protocol::encode(&HostMsg::Poweroff);
                for line in script.split(|b| *b == b'\n') {
                    if trim_line(line) == poweroff.trim_ascii_end() {
                        let _ = channel.write_all(&std::mem::take(&mut answers));
                        serve_line(&mut channel, &mut executor, line);
                        continue;
                    }
                    serve_line(&mut answers, &mut executor, line);
                }
                let _ = channel.write_all(&answers);
                channel.drain();
                continue;
            }
            if pending.is_empty() && !sys::wait_readable(&channel, 10) {
                continue;
            }
        }
        // Serve every complete line already buffered, then read more.
        while let Some(nl) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=nl).collect();
            serve_line(&mut channel, &mut executor, &line);
        }
        if pending.len() > MAX_LINE_BYTES {
            pending.clear();
            send(
                &mut channel,
                &AgentMsg::Error {
                    message: format!("request line exceeds {MAX_LINE_BYTES} bytes; dropped"),
                },
            );
        }
        match channel.read(&mut buf) {
            Ok(0) => std::thread::sleep(Duration::from_millis(5)),
            Ok(n) => pending.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                sys::log(&format!("pmcrash-agent: channel read failed: {e}"));
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// Where answers go: the serial port, or memory while a script runs.
trait Answers: Write {
    /// Wait until everything written has left the device.
    fn drain(&mut self) {}
}

impl Answers for std::fs::File {
    fn drain(&mut self) {
        let _ = rustix::termios::tcdrain(&*self);
    }
}

impl Answers for Vec<u8> {}

/// Decode one request line and serve it (blank lines are skipped).
fn serve_line(channel: &mut impl Answers, executor: &mut exec::Executor, line: &[u8]) {
    let line = trim_line(line);
    if line.is_empty() {
        return;
    }
    match protocol::decode::<HostMsg>(line) {
        Ok(msg) => serve(channel, executor, msg),
        Err(e) => send(
            channel,
            &AgentMsg::Error {
                message: e.to_string(),
            },
        ),
    }
}

fn trim_line(line: &[u8]) -> &[u8] {
    let mut l = line;
    while let Some((last, rest)) = l.split_last() {
        if *last == b'\n' || *last == b'\r' {
            l = rest;
        } else {
            break;
        }
    }
    // A restored guest may see stray bytes from before the snapshot: start at the
    // first `{`.
    match l.iter().position(|b| *b == b'{') {
        Some(i) => &l[i..],
        None => &[],
    }
}

fn send(channel: &mut impl Answers, msg: &AgentMsg) {
    let bytes = protocol::encode(msg);
    if let Err(e) = channel.write_all(&bytes) {
        sys::log(&format!("pmcrash-agent: channel write failed: {e}"));
    }
}

fn serve(channel: &mut impl Answers, executor: &mut exec::Executor, msg: HostMsg) {
    let reply = match msg {
        HostMsg::Ping => AgentMsg::Pong,
        HostMsg::ConvertFsdax => result(sys::convert_to_fsdax()),
        HostMsg::Refresh => result(sys::refresh_block_device(PMEM_DEV)),
        HostMsg::Mount { fs, options } => {
            let start = Instant::now();
            match sys::mount_dax(PMEM_DEV, MOUNT_POINT, fs.name(), &options) {
                Ok(dax) => AgentMsg::Mounted {
                    dax,
                    millis: start.elapsed().as_millis() as u64,
                },
                Err(e) => AgentMsg::Error { message: e },
            }
        }
        HostMsg::Run { ops, markers } => {
            executor.markers = markers;
            executor.run(&ops, |r| send(channel, &AgentMsg::OpDone(r)));
            AgentMsg::RunDone
        }
        HostMsg::Dump => match exec::dump(MOUNT_POINT) {
            Ok(entries) => AgentMsg::State { entries },
            Err(e) => AgentMsg::Error { message: e },
        },
        HostMsg::Unmount => {
            executor.forget();
            result(sys::unmount(MOUNT_POINT))
        }
        HostMsg::Poweroff => {
            send(channel, &AgentMsg::Done);
            let _ = channel.flush();
            // Every answer must leave the UART before the machine stops: the host
            // side may be slow to read (QEMU then holds the UART back), and a
            // deterministic guest's sleep takes no host time at all.
            channel.drain();
            std::thread::sleep(Duration::from_millis(20));
            sys::power_off();
        }
        HostMsg::CheckBegin { id } => {
            sys::marker(protocol::marker::check::BEGIN, 0, id, 0);
            AgentMsg::Done
        }
        HostMsg::CheckEnd { id } => {
            sys::marker(protocol::marker::check::END, 0, id, 0);
            AgentMsg::Done
        }
        HostMsg::Fsck { fs, timeout_ms } => {
            fsck::run(fs, PMEM_DEV, Duration::from_millis(timeout_ms))
        }
        HostMsg::Kallsyms => match symbols::write_kallsyms(PMEM_DEV) {
            Ok(bytes) => AgentMsg::Kallsyms { bytes },
            Err(message) => AgentMsg::Error { message },
        },
        HostMsg::TestPanic => {
            sys::trigger_panic();
            AgentMsg::Error {
                message: "the kernel did not panic".into(),
            }
        }
        HostMsg::TestHang => sys::halt_forever(),
    };
    send(channel, &reply);
}

fn result(r: Result<(), String>) -> AgentMsg {
    match r {
        Ok(()) => AgentMsg::Done,
        Err(message) => AgentMsg::Error { message },
    }
}
