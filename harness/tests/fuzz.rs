//! `pmcrash fuzz` with real guests: the same seed gives the same campaign, shards of
//! the shipped CI workflow and Kubernetes Job merged equal one unsharded run, and a
//! campaign killed with SIGKILL and resumed loses nothing and runs nothing twice.
//!
//! A workload that is the first to hit several signatures saves each once, with its
//! workload minimised, and a campaign killed while minimising finishes on `--resume`.
//!
//! Kept short for 2 cores: crash points at op boundaries, at most 2 per workload, 4
//! workloads a campaign. The guest runs are serialised (one campaign at a time).

use pmcrash::fuzz::campaign::State;
use serde_yaml::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};

const SEED: &str = "5";
const BUDGET: u64 = 4;
/// Options that keep each workload to seconds; none of them is in the manifests.
const SMALL: [&str; 4] = ["--points", "op", "--max-points", "2"];

fn pmcrash() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pmcrash"))
}

/// One guest campaign at a time.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn run(args: &[String]) -> std::process::Output {
    let out = pmcrash()
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("pmcrash runs");
    let code = out.status.code();
    assert!(
        matches!(code, Some(0) | Some(1)),
        "pmcrash {args:?} exited {code:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// An unsharded ext4 campaign of `BUDGET` workloads into `out`.
fn campaign_args(out: &Path, extra: &[&str]) -> Vec<String> {
    let mut args = strings(&["fuzz", "--fs", "ext4", "--seed", SEED, "--budget"]);
    args.push(BUDGET.to_string());
    args.extend(strings(&["--out", out.to_str().unwrap()]));
    args.extend(strings(&SMALL));
    args.extend(strings(extra));
    args
}

/// The unsharded reference campaign (made once per test binary).
fn reference() -> &'static (tempfile::TempDir, State) {
    static REF: OnceLock<(tempfile::TempDir, State)> = OnceLock::new();
    REF.get_or_init(|| {
        let _g = serial();
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("one");
        run(&campaign_args(&out, &[]));
        let s = State::load(&out).unwrap();
        (dir, s)
    })
}

fn assert_same(a: &State, b: &State, what: &str) {
    let (a, b) = (a.canonical(), b.canonical());
    let idx = |s: &State| s.runs.iter().map(|r| r.index).collect::<Vec<_>>();
    assert_eq!(idx(&a), idx(&b), "{what}: stream indices");
    for (x, y) in a.runs.iter().zip(&b.runs) {
        assert_eq!(x, y, "{what}: workload #{}", x.index);
    }
    assert_eq!(a.findings, b.findings, "{what}: findings");
    assert_eq!(a, b, "{what}");
}

#[test]
fn same_seed_and_budget_give_the_same_campaign() {
    let (_d, one) = reference();
    let idx: Vec<u64> = one.runs.iter().map(|r| r.index).collect();
    assert_eq!(idx, (0..BUDGET).collect::<Vec<_>>());
    assert!(one.runs.iter().all(|r| r.states > 0), "{:?}", one.runs);
    // Each signature's count is the number of workloads that hit it, its workload and
    // finding saved once.
    for (id, e) in &one.findings {
        let hits = one
            .runs
            .iter()
            .filter(|r| r.signatures.contains_key(id))
            .count();
        assert_eq!(e.workloads as usize, hits, "{id}");
        assert!(_d
            .path()
            .join("one/findings")
            .join(id)
            .join("workload.toml")
            .is_file());
        assert!(_d
            .path()
            .join("one/findings")
            .join(id)
            .join("bundle/manifest.json")
            .is_file());
    }
    // Coverage: every trace ran file-system code; the campaign's union is made of
    // each workload's new blocks, and a workload that added some joined the corpus.
    assert!(one.runs.iter().all(|r| r.blocks > 0), "{:?}", one.runs);
    assert_eq!(
        one.runs.iter().map(|r| r.new_blocks).sum::<u64>(),
        one.coverage.len() as u64
    );
    assert!(one.runs[0].new_blocks == one.runs[0].blocks && one.runs[0].blocks > 0);
    for r in &one.runs {
        let entry = _d.path().join(format!("one/corpus/{:08}.toml", r.index));
        assert_eq!(
            entry.is_file(),
            r.new_blocks > 0 || r.first_signature,
            "#{}",
            r.index
        );
    }
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("again");
    let o = run(&campaign_args(&out, &["--json"]));
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).expect("--json");
    assert_eq!(summary["workloads"], BUDGET);
    assert_eq!(summary["coverage_blocks"], one.coverage.len() as u64);
    assert_same(one, &State::load(&out).unwrap(), "a second run");
}

/// Substitute `${{ name }}` in a workflow string.
fn gh_subst(s: &str, vars: &[(&str, String)]) -> String {
    let mut s = s.to_owned();
    for (k, v) in vars {
        s = s.replace(&format!("${{{{ {k} }}}}"), v);
    }
    assert!(!s.contains("${{"), "unsubstituted: {s}");
    s
}

/// The fuzz command line of a shell `run:` step: `pmcrash fuzz ...` up to `||`.
fn command_args(line: &str) -> Vec<String> {
    let line = line.split("||").next().unwrap();
    let mut words = line
        .split_whitespace()
        .skip_while(|w| !w.ends_with("pmcrash"));
    assert!(words.next().is_some(), "no pmcrash command in {line}");
    words.map(str::to_owned).collect()
}

/// Replace `--out X` (and `--budget X`) with ours.
fn with_out_and_budget(mut args: Vec<String>, out: &Path, budget: u64) -> Vec<String> {
    for (flag, val) in [
        ("--out", out.display().to_string()),
        ("--budget", budget.to_string()),
    ] {
        let i = args
            .iter()
            .position(|a| a == flag)
            .unwrap_or_else(|| panic!("no {flag} in {args:?}"));
        args[i + 1] = val;
    }
    args.extend(strings(&SMALL));
    args
}

fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(p)
}

fn merge_and_compare(shards: &[PathBuf], root: &Path, what: &str) {
    let merged = root.join(format!("merged-{what}"));
    let mut args = strings(&["fuzz", "merge"]);
    args.extend(shards.iter().map(|p| p.display().to_string()));
    args.extend(strings(&["-o", merged.to_str().unwrap()]));
    run(&args);
    let m = State::load(&merged).unwrap();
    assert_same(&reference().1, &m, what);
    for id in m.findings.keys() {
        assert!(
            merged
                .join("findings")
                .join(id)
                .join("finding.json")
                .is_file(),
            "{what}: {id}"
        );
    }
}

#[test]
fn workflow_shards_merged_equal_one_run() {
    let _ = reference();
    let wf: Value = serde_yaml::from_str(
        &std::fs::read_to_string(repo(".github/workflows/nightly-fuzz.yml")).unwrap(),
    )
    .unwrap();
    let job = &wf["jobs"]["fuzz"];
    let shards: Vec<u64> = job["strategy"]["matrix"]["shard"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert_eq!(
        wf["env"]["SHARDS"].as_str().unwrap(),
        shards.len().to_string()
    );
    assert!(job["strategy"]["matrix"]["fs"].as_sequence().unwrap().len() == 2);
    let step = job["steps"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|s| s["id"].as_str() == Some("fuzz"))
        .expect("a step with id fuzz");
    let line = step["run"].as_str().unwrap();
    // The merge job downloads the shards' artifacts and merges them.
    let merge_run = wf["jobs"]["merge"]["steps"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|s| s["id"].as_str() == Some("merge"))
        .expect("a merge step")["run"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(merge_run.contains("fuzz merge"), "{merge_run}");
    let root = tempfile::tempdir().unwrap();
    let mut dirs = Vec::new();
    // Each shard runs its share of the reference's stream indices.
    let per_shard = BUDGET / shards.len() as u64;
    assert!(per_shard >= 1);
    let _g = serial();
    for i in &shards {
        let vars = [
            ("matrix.fs", "ext4".to_owned()),
            ("matrix.shard", i.to_string()),
            ("env.SEED", SEED.to_owned()),
            ("env.SHARDS", shards.len().to_string()),
            ("env.BUDGET", "1".to_owned()),
        ];
        let out = root.path().join(format!("gh-{i}"));
        let args = with_out_and_budget(command_args(&gh_subst(line, &vars)), &out, per_shard);
        run(&args);
        dirs.push(out);
    }
    merge_and_compare(&dirs, root.path(), "workflow shards");
}

#[test]
fn kubernetes_indexed_job_shards_merged_equal_one_run() {
    let _ = reference();
    let job: Value = serde_yaml::from_str(
        &std::fs::read_to_string(repo("deploy/kubernetes/fuzz-job.yaml")).unwrap(),
    )
    .unwrap();
    assert_eq!(job["spec"]["completionMode"].as_str(), Some("Indexed"));
    let n = job["spec"]["completions"].as_u64().unwrap();
    let c = &job["spec"]["template"]["spec"]["containers"][0];
    let mut env: Vec<(String, String)> = c["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|e| {
            Some((
                e["name"].as_str()?.to_owned(),
                e["value"].as_str()?.to_owned(),
            ))
        })
        .collect();
    let index_from_downward_api = c["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .any(|e| e["name"].as_str() == Some("JOB_COMPLETION_INDEX"));
    assert!(index_from_downward_api, "JOB_COMPLETION_INDEX is declared");
    // Our seed, so the shards are comparable with the reference run.
    env.retain(|(k, _)| k != "SEED");
    env.push(("SEED".into(), SEED.into()));
    let cmd: Vec<String> = c["command"]
        .as_sequence()
        .unwrap()
        .iter()
        .chain(c["args"].as_sequence().unwrap())
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    assert!(cmd[0].ends_with("pmcrash"), "{cmd:?}");
    let root = tempfile::tempdir().unwrap();
    let mut dirs = Vec::new();
    let per_shard = BUDGET / n;
    assert!(per_shard >= 1);
    let _g = serial();
    for i in 0..n {
        let args: Vec<String> = cmd[1..]
            .iter()
            .map(|a| {
                let mut a = a.replace("$(JOB_COMPLETION_INDEX)", &i.to_string());
                for (k, v) in &env {
                    a = a.replace(&format!("$({k})"), v);
                }
                assert!(!a.contains("$("), "unsubstituted: {a}");
                a
            })
            .collect();
        let out = root.path().join(format!("k8s-{i}"));
        run(&with_out_and_budget(args, &out, per_shard));
        dirs.push(out);
    }
    merge_and_compare(&dirs, root.path(), "kubernetes shards");
}

/// Run the campaign of `args` (into `out`), kill it with SIGKILL (no handler runs) as
/// soon as a workload is recorded, and give its state then.
fn kill_once_recorded(args: &[String], out: &Path) -> State {
    let mut child = pmcrash()
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            panic!("the campaign ended before it was killed: {st}");
        }
        if State::load(out).is_ok_and(|s| !s.runs.is_empty()) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    State::load(out).unwrap()
}

#[test]
fn resume_after_kill_9_loses_nothing_and_runs_nothing_twice() {
    let _ = reference();
    let _g = serial();
    let root = tempfile::tempdir().unwrap();
    let out = root.path().join("killed");
    let args = campaign_args(&out, &[]);
    // Killed once the first workload is recorded (the second is then in flight).
    let done = kill_once_recorded(&args, &out).runs.len() as u64;
    assert!(
        (1..BUDGET).contains(&done),
        "{done} recorded before the kill"
    );
    let mut resume = args.clone();
    let b = resume.iter().position(|a| a == "--budget").unwrap();
    resume[b + 1] = (BUDGET - done).to_string();
    resume.push("--resume".into());
    run(&resume);
    assert_same(
        &reference().1,
        &State::load(&out).unwrap(),
        "killed and resumed",
    );
    // A finished campaign asked again without --resume refuses (exit 2).
    let again = pmcrash().args(&args).output().unwrap();
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("--resume"));
}

#[test]
fn usage_errors_exit_2_with_a_message() {
    for (args, says) in [
        (vec!["fuzz", "--out", "x", "--shard", "4/4"], "4/4"),
        (vec!["fuzz", "--out", "x", "--budget", "2d"], "2d"),
        (vec!["fuzz", "--out", "x", "--gen", "exhaustive:9"], "9"),
        (vec!["fuzz"], "--out"),
        (
            vec!["fuzz", "merge", "/nonexistent-campaign", "-o", "/tmp/m"],
            "no campaign",
        ),
    ] {
        let out = pmcrash().args(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{args:?}: {err}");
    }
}

/// Stream index 10 of seed 5's random stream: LSFMM 05 mutated (a store made to
/// straddle two lines, one flush dropped) gives three `unsafe-flush-only` signatures
/// at `--points op`. (A change to the generator moves it: pick another index whose
/// workload has findings, with `pmcrash fuzz --gen random --budget 20`.)
const MINIMISE: [&str; 13] = [
    "fuzz",
    "--fs",
    "ext4",
    "--seed",
    "5",
    "--gen",
    "random",
    "--shard",
    "10/11",
    "--points",
    "op",
    "--minimize-tries",
    "8",
];

fn minimise_args(out: &Path, budget: u64) -> Vec<String> {
    let mut args = strings(&MINIMISE);
    args.extend(strings(&["--budget", &budget.to_string(), "--out"]));
    args.push(out.display().to_string());
    args
}

#[test]
fn new_signatures_are_saved_once_with_their_workload_minimised_also_after_a_kill() {
    let _g = serial();
    let root = tempfile::tempdir().unwrap();
    let one = root.path().join("one");
    run(&minimise_args(&one, 1));
    let s = State::load(&one).unwrap();
    assert_eq!(s.runs.len(), 1);
    assert!(
        s.findings.len() >= 2,
        "workload #10 should be the first to hit several signatures: {:?}",
        s.findings
    );
    let mut shrank = false;
    for (id, e) in &s.findings {
        let fdir = one.join("findings").join(id);
        assert_eq!((e.first_index, e.workloads), (10, 1), "{id}");
        assert!(fdir.join("bundle/manifest.json").is_file(), "{id}");
        let m = e
            .minimal
            .as_ref()
            .unwrap_or_else(|| panic!("{id} not minimised"));
        assert_eq!(m.error, None, "{id}");
        assert!(
            m.confirmed,
            "{id}: the minimal workload's run did not give it: {m:?}"
        );
        assert!(m.tries >= 1 && m.tries <= 8, "{id}: {m:?}");
        assert!(
            m.ops_after <= m.ops_before && m.ops_after == m.kept.len(),
            "{id}: {m:?}"
        );
        shrank |= m.ops_after < m.ops_before;
        let path = fdir.join("minimal/workload.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let w = crash_models::ops::Workload::parse(&text, &path.display().to_string()).unwrap();
        assert_eq!(w.ops.len(), m.ops_after, "{id}");
        assert!(
            fdir.join("minimal/workload/manifest.json").is_file(),
            "{id}"
        );
    }
    assert!(
        shrank,
        "no signature's workload lost an op: {:?}",
        s.findings
    );

    // Killed once the workload is recorded (its signatures then being minimised), and
    // resumed with nothing left to run but the minimisation: the same campaign.
    let killed = root.path().join("killed");
    let before = kill_once_recorded(&minimise_args(&killed, 1), &killed);
    assert!(
        before.findings.values().any(|e| e.minimal.is_none()),
        "every signature was minimised before the kill"
    );
    let mut resume = minimise_args(&killed, 0);
    resume.push("--resume".into());
    run(&resume);
    assert_same(
        &s,
        &State::load(&killed).unwrap(),
        "killed while minimising",
    );
}
