//! The kernel's text symbols for the harness (`HostMsg::Kallsyms`).
//!
//! About 5 MB of text: over the agent's serial port that takes a minute under TCG, so
//! the lines are written to the start of the PM block device instead (the guest runs
//! on a scratch image the host then reads) and only their length is answered.

use std::io::Write;

/// Writes `/proc/kallsyms` lines of code symbols (types `t`, `T`, `w`, `W`, without
/// the `__pfx_` padding aliases) to the start of `dev` and returns how many bytes.
/// Addresses are shown to root only with `kptr_restrict` below 2: it is set to 0 first.
pub fn write_kallsyms(dev: &str) -> Result<u64, String> {
    let _ = std::fs::write("/proc/sys/kernel/kptr_restrict", "0");
    let all = std::fs::read_to_string("/proc/kallsyms")
        .map_err(|e| format!("read /proc/kallsyms: {e}"))?;
    let mut out = String::with_capacity(all.len() / 2);
    for line in all.lines() {
        let mut f = line.split_whitespace();
        let (Some(addr), Some(kind), Some(name)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        if !matches!(kind, "t" | "T" | "w" | "W")
            || name.starts_with("__pfx_")
            || addr.bytes().all(|b| b == b'0')
        {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .open(dev)
        .map_err(|e| format!("open {dev}: {e}"))?;
    file.write_all(out.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| format!("write the symbols to {dev}: {e}"))?;
    Ok(out.len() as u64)
}
