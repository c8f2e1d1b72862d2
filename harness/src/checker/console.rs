//! Scanning the guest console for signs that recovery went wrong.
//!
//! The console only grows, so a [`ConsoleCursor`] remembers how far it has read and
//! each check sees only what the kernel printed during that check.

use serde::Serialize;

/// One suspicious console line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConsoleIssue {
    /// What matched (`oops`, `warning`, `ext4-error`, `xfs-corruption`, ...).
    pub kind: &'static str,
    /// The line, trimmed, without the kernel's `[ seconds.micros]` timestamp: the same
    /// recovery prints the same issue lines whenever it runs.
    pub line: String,
}

/// `line` without a leading printk timestamp (`[   12.345678] `).
pub fn strip_timestamp(line: &str) -> &str {
    let t = line.trim_start();
    if let Some(rest) = t.strip_prefix('[') {
        if let Some(end) = rest.find(']') {
            let stamp = rest[..end].trim();
            if !stamp.is_empty() && stamp.chars().all(|c| c.is_ascii_digit() || c == '.') {
                return rest[end + 1..].trim_start();
            }
        }
    }
    t
}

/// Patterns that mean the kernel saw something wrong, with the kind reported.
///
/// Matching is on substrings of whole lines: kernel messages are stable strings
/// (`printk` formats), and a regex engine would add a dependency for nothing.
const PATTERNS: &[(&str, &str)] = &[
    ("Kernel panic", "panic"),
    ("Oops:", "oops"),
    ("BUG:", "bug"),
    ("kernel BUG at", "bug"),
    ("general protection fault", "oops"),
    ("WARNING:", "warning"),
    ("EXT4-fs error", "ext4-error"),
    ("EXT4-fs (pmem0): error", "ext4-error"),
    ("EXT4-fs (pmem0): corrupt", "ext4-error"),
    ("JBD2: ", "jbd2-error"),
    ("Corruption detected", "xfs-corruption"),
    ("Metadata corruption detected", "xfs-corruption"),
    ("Metadata CRC error", "xfs-corruption"),
    ("Internal error", "xfs-corruption"),
    ("log recovery failed", "xfs-corruption"),
    ("Corruption of in-memory data", "xfs-corruption"),
    ("xfs_do_force_shutdown", "xfs-shutdown"),
    ("Filesystem has been shut down", "xfs-shutdown"),
    ("I/O error", "io-error"),
];

/// Benign lines that contain a pattern above but mean nothing bad.
const BENIGN: &[&str] = &[
    // jbd2 prints informational lines with this prefix on some configurations.
    "JBD2: Ignoring recovery information",
];

/// The issues in `text` (a slice of the console).
pub fn scan(text: &str) -> Vec<ConsoleIssue> {
    let mut out = Vec::new();
    for line in text.lines() {
        if BENIGN.iter().any(|b| line.contains(b)) {
            continue;
        }
        if let Some((_, kind)) = PATTERNS.iter().find(|(p, _)| line.contains(p)) {
            out.push(ConsoleIssue {
                kind,
                line: strip_timestamp(line).trim().chars().take(300).collect(),
            });
        }
    }
    out
}

/// How much of a growing console has been read.
#[derive(Debug, Clone, Copy, Default)]
pub struct ConsoleCursor {
    offset: usize,
}

impl ConsoleCursor {
    /// Everything from `console` not read before, up to its last complete line (a line
    /// still being written is left for next time).
    pub fn take<'a>(&mut self, console: &'a str) -> &'a str {
        if self.offset > console.len() {
            // A new guest (restart): its console starts over.
            self.offset = 0;
        }
        let rest = &console[self.offset..];
        let end = rest.rfind('\n').map_or(0, |i| i + 1);
        self.offset += end;
        &rest[..end]
    }

    /// Skip everything seen so far (after starting a guest: its boot messages are not
    /// the image's).
    pub fn skip_to_end(&mut self, console: &str) {
        self.offset = console.len();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_bad_lines_only() {
        let text = "[    1.0] EXT4-fs (pmem0): mounted filesystem\n\
                    [    1.1] EXT4-fs error (device pmem0): ext4_lookup:1859: inode #2: comm x: deleted inode referenced: 12\n\
                    [    1.2] XFS (pmem0): Metadata corruption detected at xfs_buf_ioend\n\
                    [    1.3] WARNING: CPU: 0 PID: 1 at fs/ext4/inode.c:123\n\
                    [    1.4] JBD2: Ignoring recovery information on journal\n";
        let issues = scan(text);
        let kinds: Vec<&str> = issues.iter().map(|i| i.kind).collect();
        assert_eq!(kinds, ["ext4-error", "xfs-corruption", "warning"]);
        assert!(issues[0]
            .line
            .starts_with("EXT4-fs error (device pmem0): ext4_lookup"));
        assert_eq!(
            issues[2].line,
            "WARNING: CPU: 0 PID: 1 at fs/ext4/inode.c:123"
        );
    }

    #[test]
    fn timestamps_are_stripped_and_nothing_else() {
        assert_eq!(strip_timestamp("[   12.345678] JBD2: x"), "JBD2: x");
        assert_eq!(strip_timestamp("[12.3] a [1.0] b"), "a [1.0] b");
        assert_eq!(strip_timestamp("[pmem0] x"), "[pmem0] x");
        assert_eq!(strip_timestamp("[] x"), "[] x");
        assert_eq!(strip_timestamp("no stamp"), "no stamp");
    }

    #[test]
    fn cursor_reads_each_line_once() {
        let mut c = ConsoleCursor::default();
        assert_eq!(c.take("a\nb"), "a\n");
        assert_eq!(c.take("a\nb\nc\n"), "b\nc\n");
        assert_eq!(c.take("a\nb\nc\n"), "");
        // A restarted guest's console is shorter: start over.
        assert_eq!(c.take("x\n"), "x\n");
    }
}
