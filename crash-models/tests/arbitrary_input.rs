//! The decoders of outside input survive arbitrary input: an error, never a panic or an
//! abort. Each property runs 10,000 cases: random bytes, random mutations of valid
//! inputs (byte flips, insertions, deletions, truncations, splices), and for the
//! workload parser random TOML-ish text built from the op language's own words.
//!
//! Covered: `Workload::parse` (with `[expect]`), the trace decoder (`trace::decode`,
//! `trace::decode_iter`, the streaming `trace::Decoder`), and the agent protocol
//! decoder (`protocol::decode` of `HostMsg` and `AgentMsg`).

use crash_models::ops::Workload;
use crash_models::protocol::{self, AgentMsg, HostMsg};
use crash_models::trace::{
    self, FenceKind, FlushKind, Header, MarkerKind, Privilege, Record, RECORD_BYTES,
};
use proptest::prelude::*;

const CASES: u32 = 10_000;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: CASES,
        // Shrinking a failure is welcome; failures are what we look for.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// One edit of a byte string.
#[derive(Debug, Clone)]
enum Edit {
    Flip(usize, u8),
    Set(usize, u8),
    Insert(usize, Vec<u8>),
    Delete(usize, usize),
    Truncate(usize),
    Duplicate(usize, usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), 1u8..=255).prop_map(|(i, b)| Edit::Flip(i, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Edit::Set(i, b)),
        (any::<usize>(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(i, v)| Edit::Insert(i, v)),
        (any::<usize>(), 1usize..64).prop_map(|(i, n)| Edit::Delete(i, n)),
        any::<usize>().prop_map(Edit::Truncate),
        (any::<usize>(), 1usize..128).prop_map(|(i, n)| Edit::Duplicate(i, n)),
    ]
}

fn mutate(mut v: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for e in edits {
        let len = v.len().max(1);
        match e {
            Edit::Flip(i, b) => {
                if !v.is_empty() {
                    v[i % len] ^= b;
                }
            }
            Edit::Set(i, b) => {
                if !v.is_empty() {
                    v[i % len] = *b;
                }
            }
            Edit::Insert(i, bytes) => {
                let at = i % (v.len() + 1);
                v.splice(at..at, bytes.iter().copied());
            }
            Edit::Delete(i, n) => {
                if !v.is_empty() {
                    let at = i % v.len();
                    let end = (at + n).min(v.len());
                    v.drain(at..end);
                }
            }
            Edit::Truncate(i) => v.truncate(i % (v.len() + 1)),
            Edit::Duplicate(i, n) => {
                if !v.is_empty() {
                    let at = i % v.len();
                    let end = (at + n).min(v.len());
                    let piece = v[at..end].to_vec();
                    v.splice(end..end, piece);
                }
            }
        }
    }
    v
}

// ---------------------------------------------------------------------------------
// Workloads

/// Valid workloads to mutate: every corpus file this crate's tests can see, and a few
/// written here that use `[expect]` tables.
fn workload_seeds() -> Vec<String> {
    let mut out = vec![
        "description = \"x\"\n[[ops]]\nop = \"open\"\npath = \"a\"\nfd = \"a\"\ncreate = true\n[[ops]]\nop = \"pwrite\"\nfd = \"a\"\noffset = 0\ndata = { fill = 1, len = 4096 }\n[[ops]]\nop = \"fsync\"\nfd = \"a\"\n[expect]\nverdicts = [\"ok\"]\nok_after_op = 2\n[expect.xfs]\nverdicts = [\"ok\", \"durability-violation\"]\n".to_owned(),
        "[[ops]]\nop = \"open\"\npath = \"f\"\nfd = \"f\"\ncreate = true\n[[ops]]\nop = \"ftruncate\"\nfd = \"f\"\nlen = 8192\n[[ops]]\nop = \"mmap\"\nfd = \"f\"\nmap = \"m\"\nlen = 8192\nkind = \"sync\"\n[[ops]]\nop = \"store\"\nmap = \"m\"\noffset = 64\ndata = { seed = 3, len = 64 }\nkind = \"non-temporal\"\n[[ops]]\nop = \"flush\"\nmap = \"m\"\noffset = 0\nlen = 256\n[[ops]]\nop = \"fence\"\n[[ops]]\nop = \"msync\"\nmap = \"m\"\noffset = 0\nlen = 4096\n".to_owned(),
    ];
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../corpora");
    let mut dirs = vec![std::path::PathBuf::from(root)];
    while let Some(d) = dirs.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "toml") {
                if let Ok(s) = std::fs::read_to_string(&p) {
                    out.push(s);
                }
            }
        }
    }
    out
}

/// Words of the op language, so random text reaches the parser's deeper checks.
const WORDS: &[&str] = &[
    "[[ops]]",
    "[expect]",
    "[expect.ext4]",
    "[expect.xfs]",
    "op",
    "=",
    "\"open\"",
    "\"close\"",
    "\"pwrite\"",
    "\"write\"",
    "\"fsync\"",
    "\"fdatasync\"",
    "\"fmetadatasync\"",
    "\"mmap\"",
    "\"munmap\"",
    "\"store\"",
    "\"flush\"",
    "\"fence\"",
    "\"msync\"",
    "\"ftruncate\"",
    "\"fallocate\"",
    "\"rename\"",
    "\"unlink\"",
    "\"mkdir\"",
    "\"link\"",
    "\"sync\"",
    "\"truncate\"",
    "\"setxattr\"",
    "\"removexattr\"",
    "\"mkfifo\"",
    "\"sync_file_range\"",
    "path",
    "fd",
    "map",
    "offset",
    "len",
    "data",
    "create",
    "sync",
    "directory",
    "direct",
    "kind",
    "\"non-temporal\"",
    "\"cached\"",
    "\"sync\"",
    "fill",
    "seed",
    "text",
    "verdicts",
    "ok_after_op",
    "lost_after_op",
    "\"ok\"",
    "\"stale-data\"",
    "\"nope\"",
    "description",
    "\"f\"",
    "\"m\"",
    "\"a/b\"",
    "\"\"",
    "0",
    "1",
    "-1",
    "4096",
    "18446744073709551615",
    "9223372036854775807",
    "-9223372036854775808",
    "1e308",
    "nan",
    "inf",
    "true",
    "false",
    "{",
    "}",
    "[",
    "]",
    ",",
    "\n",
    "\n",
    "\n",
    " ",
    "#",
    "'''",
    "\"\"\"",
    "\\u0000",
    ".",
    "name",
    "value",
    "mode",
    "from",
    "to",
    "flags",
    "range",
];

fn toml_ish() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(WORDS), 0..80).prop_map(|w| w.join(" "))
}

fn parse_workload(src: &str) {
    // Ok or Err: both fine. A panic fails the property.
    let _ = Workload::parse(src, "fuzz.toml");
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn workload_parser_survives_random_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        parse_workload(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn workload_parser_survives_toml_ish_text(src in toml_ish()) {
        parse_workload(&src);
    }

    #[test]
    fn workload_parser_survives_mutated_workloads(
        pick in any::<prop::sample::Index>(),
        edits in prop::collection::vec(edit(), 1..6),
    ) {
        let seeds = workload_seeds();
        let seed = pick.get(&seeds).clone().into_bytes();
        parse_workload(&String::from_utf8_lossy(&mutate(seed, &edits)));
    }
}

// ---------------------------------------------------------------------------------
// Traces

fn header() -> Header {
    Header {
        pm_base: 0x1_0000_0000,
        pm_size: 64 << 20,
        line_size: 64,
        flags: 0,
        kernel: "6.12.0-fuzz".into(),
        workload_hash: [7; 32],
        qemu_version: "10.0.2".into(),
    }
}

fn record() -> impl Strategy<Value = Record> {
    prop_oneof![
        (
            0u64..(64 << 20),
            1u8..=8,
            any::<u64>(),
            any::<bool>(),
            any::<bool>()
        )
            .prop_map(|(offset, size, value, nt, user)| Record::Store {
                offset,
                size,
                value,
                non_temporal: nt,
                privilege: if user {
                    Privilege::User
                } else {
                    Privilege::Kernel
                },
                vcpu: 0,
                pc: 0x1000,
            }),
        (0u64..(64 << 20)).prop_map(|offset| Record::Flush {
            offset: offset & !63,
            flush: FlushKind::Clwb,
            privilege: Privilege::User,
            vcpu: 0,
            pc: 0,
        }),
        Just(Record::Fence {
            fence: FenceKind::Sfence,
            privilege: Privilege::Kernel,
            vcpu: 0,
            pc: 0,
        }),
        (0u32..4).prop_map(|op| Record::Marker {
            marker: MarkerKind::OpBegin,
            op,
            a: 0,
            b: 0,
            vcpu: 0,
        }),
    ]
}

fn decode_every_way(bytes: &[u8]) {
    let whole = trace::decode(bytes);
    if let Ok(mut it) = trace::decode_iter(bytes) {
        let mut n = 0usize;
        for r in it.by_ref() {
            if r.is_err() {
                break;
            }
            n += 1;
        }
        if let Ok(t) = &whole {
            assert_eq!(n, t.records.len(), "decode_iter and decode disagree");
        }
    }
    let streamed = trace::Decoder::new(bytes).and_then(|d| d.read_all());
    assert_eq!(
        streamed.is_ok(),
        whole.is_ok(),
        "the streaming decoder and decode disagree"
    );
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn trace_decoder_survives_random_bytes(bytes in prop::collection::vec(any::<u8>(), 0..1024)) {
        decode_every_way(&bytes);
    }

    #[test]
    fn trace_decoder_survives_random_bytes_after_a_valid_header(
        tail in prop::collection::vec(any::<u8>(), 0..(4 * RECORD_BYTES + 64)),
    ) {
        let mut bytes = trace::encode_header(&header());
        bytes.extend_from_slice(&tail);
        decode_every_way(&bytes);
    }

    #[test]
    fn trace_decoder_survives_mutated_traces(
        records in prop::collection::vec(record(), 0..40),
        edits in prop::collection::vec(edit(), 1..4),
    ) {
        let valid = trace::encode(&header(), &records, 0);
        decode_every_way(&mutate(valid, &edits));
    }
}

// ---------------------------------------------------------------------------------
// The agent protocol

fn protocol_seeds() -> Vec<Vec<u8>> {
    let w = Workload::parse(&workload_seeds()[1], "seed.toml").expect("seed workload parses");
    let mut lines = vec![
        protocol::encode(&HostMsg::Run {
            ops: w.ops.clone(),
            markers: true,
        }),
        protocol::encode(&HostMsg::Mount {
            fs: crash_models::ops::FsKind::Xfs,
            options: vec!["dax".into()],
        }),
        protocol::encode(&HostMsg::Dump),
        protocol::encode(&AgentMsg::RunDone),
        br#"{"type":"op-done","index":3,"ret":-1,"errno":28,"detail":{"kind":"extents","extents":[{"logical":0,"physical":4096,"len":4096}]},"micros":5}"#.to_vec(),
        br#"{"type":"state","entries":[{"path":"a","kind":"file","size":4096,"mode":420,"nlink":1,"ino":12,"blocks":{"0":"ab"},"xattrs":{"user.a":"b"}}]}"#.to_vec(),
        br#"{"type":"mounted","dax":true,"millis":12}"#.to_vec(),
        br#"{"type":"error","message":"mount: EINVAL","errno":22}"#.to_vec(),
    ];
    for l in &mut lines {
        if l.last() == Some(&b'\n') {
            l.pop();
        }
    }
    lines
}

fn decode_both(line: &[u8]) {
    let _ = protocol::decode::<HostMsg>(line);
    let _ = protocol::decode::<AgentMsg>(line);
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn protocol_decoder_survives_random_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        decode_both(&bytes);
    }

    #[test]
    fn protocol_decoder_survives_mutated_messages(
        pick in any::<prop::sample::Index>(),
        edits in prop::collection::vec(edit(), 1..6),
    ) {
        let seeds = protocol_seeds();
        decode_both(&mutate(pick.get(&seeds).clone(), &edits));
    }

    #[test]
    fn protocol_decoder_survives_json_ish_text(
        parts in prop::collection::vec(prop::sample::select(&[
            "{", "}", "[", "]", ":", ",", "\"type\"", "\"run\"", "\"mount\"", "\"op-done\"",
            "\"state\"", "\"ops\"", "\"op\"", "\"store\"", "\"data\"", "\"len\"", "\"index\"",
            "\"ret\"", "\"errno\"", "\"detail\"", "\"entries\"", "0", "-1", "1e400",
            "18446744073709551616", "null", "true", "\"\\ud800\"", "\"x\"",
        ][..]), 0..60),
    ) {
        decode_both(parts.concat().as_bytes());
    }
}

/// Deep nesting is the classic way to overflow a recursive decoder's stack.
#[test]
fn protocol_decoder_survives_deep_nesting() {
    for depth in [64usize, 1_000, 100_000] {
        let mut line = "[".repeat(depth);
        line.push_str(&"]".repeat(depth));
        decode_both(line.as_bytes());
        let mut obj = r#"{"type":"run","ops":"#.to_owned();
        obj.push_str(&"[".repeat(depth));
        decode_both(obj.as_bytes());
    }
}

#[test]
fn workload_parser_survives_deep_nesting() {
    for depth in [64usize, 1_000, 100_000] {
        let src = format!("x = {}{}", "[".repeat(depth), "]".repeat(depth));
        parse_workload(&src);
        let src = format!("[[ops]]\nop = \"store\"\ndata = {}", "{ a = ".repeat(depth));
        parse_workload(&src);
    }
}

/// The seeds written here are valid, so their mutations start from deep inside the
/// parser.
#[test]
fn the_hand_written_seeds_are_valid() {
    for s in &workload_seeds()[..2] {
        Workload::parse(s, "seed.toml").unwrap();
    }
    assert!(workload_seeds().len() > 2, "the corpora were not found");
}

/// A dump with file blocks survives the wire: the agent encodes it, the harness
/// decodes it (`FsEntry::blocks` has integer keys inside the internally tagged
/// `AgentMsg`, which once failed with "invalid type: string \"0\", expected u64").
#[test]
fn a_dump_with_file_blocks_round_trips() {
    let line = br#"{"type":"state","entries":[{"path":"a","kind":"file","size":4096,"mode":420,"nlink":1,"ino":12,"blocks":{"0":"ab"}}]}"#;
    let msg: AgentMsg = protocol::decode(line).expect("a dump with blocks decodes");
    let again = protocol::encode(&msg);
    let back: AgentMsg = protocol::decode(&again[..again.len() - 1]).unwrap();
    assert_eq!(back, msg);
}
