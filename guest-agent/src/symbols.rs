//! The kernel's text symbols for the harness (`HostMsg::Kallsyms`).

/// Most bytes of symbol lines per message (well under the protocol's line limit).
const PART_BYTES: usize = 1 << 20;

/// `/proc/kallsyms` lines of code symbols (types `t`, `T`, `w`, `W`), in parts of at
/// most [`PART_BYTES`]. Addresses are shown to root only with `kptr_restrict` below 2:
/// it is set to 0 first.
pub fn kallsyms_parts() -> Result<Vec<String>, String> {
    let _ = std::fs::write("/proc/sys/kernel/kptr_restrict", "0");
    let all = std::fs::read_to_string("/proc/kallsyms")
        .map_err(|e| format!("read /proc/kallsyms: {e}"))?;
    let mut parts = vec![String::new()];
    for line in all.lines() {
        let mut f = line.split_whitespace();
        let (Some(addr), Some(kind)) = (f.next(), f.next()) else {
            continue;
        };
        if !matches!(kind, "t" | "T" | "w" | "W") || addr.bytes().all(|b| b == b'0') {
            continue;
        }
        let part = parts.last_mut().expect("never empty");
        if part.len() + line.len() + 1 > PART_BYTES {
            parts.push(String::new());
        }
        let part = parts.last_mut().expect("never empty");
        part.push_str(line);
        part.push('\n');
    }
    Ok(parts)
}
