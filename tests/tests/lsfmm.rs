//! The LSFMM 2016 corpus end to end on ext4-DAX and XFS-DAX: every workload's
//! `[expect]` table holds, the stable summary matches its snapshot, the JSON report
//! validates against `docs/report-schema.json`, and the JUnit report is well-formed.

use crash_models::ops::FsKind;
use crash_models::points::Policy;
use pmcrash::oracle::Verdict;
use pmcrash::pipeline::{builtin_lsfmm2016, Pipeline, RunConfig};
use pmcrash::report::Report;
use pmcrash_e2e::{factory, rt};
use serde_json::Value;
use std::collections::BTreeSet;

/// Crash points at op boundaries with every single-line state: the questions the
/// corpus asks are about what an op guarantees once it returns, and it keeps the
/// suite's VM time to seconds per workload.
fn run(fs: FsKind) -> Report {
    let rt = rt();
    rt.block_on(async {
        let cfg = RunConfig {
            fs,
            points: Policy::Op,
            workers: 2,
            ..RunConfig::default()
        };
        let mut p = Pipeline::with_factory(factory(fs), cfg).expect("pipeline");
        let r = p.run(&builtin_lsfmm2016(), false).await;
        p.shutdown().await;
        r.expect("the corpus runs")
    })
}

fn check(fs: FsKind) {
    let report = run(fs);
    assert_eq!(report.workloads.len(), 7);
    for w in &report.workloads {
        let e = w
            .expect
            .as_ref()
            .expect("every corpus workload states its expectations");
        assert!(
            e.met,
            "{fs}: {}: {}\n{}",
            w.name,
            e.unmet.join("; "),
            report.render_text()
        );
        assert!(w.ops.iter().all(|o| o.ok), "{fs}: {}: an op failed", w.name);
        assert_eq!(w.stats.guest_restarts, 0, "{fs}: {}", w.name);
    }
    let by = |stem: &str| {
        report
            .workloads
            .iter()
            .find(|w| w.name.contains(stem))
            .unwrap()
    };
    // The hazard: flushed data lost because the allocation was never synced, with
    // the file's bytes read back as zeros.
    let hazard = by("01-shared");
    let f = hazard
        .findings
        .iter()
        .find(|f| f.verdict == Verdict::UnsafeFlushOnly)
        .expect("the flush-only loss is reported");
    assert!(
        f.problems
            .iter()
            .any(|p| p.path.as_deref() == Some("pm.dat")),
        "{:?}",
        f.problems
    );
    assert!(f.reproduce.contains("--crash-at"), "{}", f.reproduce);
    // msync writes back the whole page, clwb the one line.
    let costs = &by("04-msync").ops;
    assert_eq!(costs[5].op, "msync");
    assert_eq!(
        costs[5].cost.kernel_lines_flushed + costs[5].cost.redundant_flushes,
        64
    );
    assert_eq!(costs[7].op, "flush");
    assert_eq!(costs[7].cost.user_lines_flushed, 1);
    // fmetadatasync finds the unflushed line; fdatasync masks it.
    assert!(by("06-fmetadatasync")
        .findings
        .iter()
        .any(|f| f.point.ops_completed > 8));
    assert!(!by("07-fdatasync")
        .findings
        .iter()
        .any(|f| f.point.ops_completed > 8));
    assert!(!report.failed(), "every finding is expected");

    insta::assert_json_snapshot!(format!("lsfmm2016-{fs}"), report.summary());

    let json = serde_json::to_value(&report).unwrap();
    let schema: Value =
        serde_json::from_str(include_str!("../../docs/report-schema.json")).unwrap();
    let errors = validate(&schema, &schema, &json, "$");
    assert!(
        errors.is_empty(),
        "{fs}: the report breaks its schema: {errors:#?}"
    );
    // The validator itself must reject a report that breaks the schema.
    let mut broken = json.clone();
    broken["workloads"][0]["verdicts"]["not-a-verdict"] = 1.into();
    broken["totals"]["states"] = "many".into();
    assert_eq!(validate(&schema, &schema, &broken, "$").len(), 2);

    let fail_on: BTreeSet<Verdict> = report.fail_on.iter().copied().collect();
    let xml = report.render_junit(&fail_on);
    let doc = roxmltree::Document::parse(&xml).expect("JUnit output is well-formed XML");
    let root = doc.root_element();
    assert_eq!(root.tag_name().name(), "testsuites");
    let cases: Vec<_> = root
        .descendants()
        .filter(|n| n.has_tag_name("testcase"))
        .collect();
    assert_eq!(cases.len(), 7);
    assert!(cases
        .iter()
        .all(|c| c.attribute("name").is_some() && c.attribute("classname").is_some()));
    // Everything was expected, so nothing fails; with no expectations honoured, the
    // flush-only losses must show up as failures.
    assert_eq!(root.attribute("failures"), Some("0"));
    let mut strict = report.clone();
    for w in &mut strict.workloads {
        w.expect = None;
    }
    let xml = strict.render_junit(&fail_on);
    let doc = roxmltree::Document::parse(&xml).expect("well-formed XML with failures");
    let failures = doc
        .descendants()
        .filter(|n| n.has_tag_name("failure"))
        .count();
    assert!(failures >= 4, "{xml}");
}

#[test]
fn lsfmm2016_on_ext4_dax() {
    check(FsKind::Ext4);
}

#[test]
fn lsfmm2016_on_xfs_dax() {
    check(FsKind::Xfs);
}

/// A JSON Schema validator for the keywords `docs/report-schema.json` uses: type,
/// enum, properties, required, additionalProperties, items, propertyNames, minimum,
/// and local `$ref`s. Returns one message per violation.
fn validate(root: &Value, schema: &Value, v: &Value, at: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
        let target = r
            .trim_start_matches("#/")
            .split('/')
            .fold(root, |s, k| &s[k]);
        return validate(root, target, v, at);
    }
    if let Some(t) = schema.get("type").and_then(Value::as_str) {
        let ok = match t {
            "object" => v.is_object(),
            "array" => v.is_array(),
            "string" => v.is_string(),
            "integer" => v.is_i64() || v.is_u64(),
            "number" => v.is_number(),
            "boolean" => v.is_boolean(),
            "null" => v.is_null(),
            _ => false,
        };
        if !ok {
            errs.push(format!("{at}: expected {t}, got {v}"));
            return errs;
        }
    }
    if let Some(e) = schema.get("enum").and_then(Value::as_array) {
        if !e.contains(v) {
            errs.push(format!("{at}: {v} is not one of {e:?}"));
        }
    }
    if let (Some(min), Some(n)) = (schema.get("minimum").and_then(Value::as_f64), v.as_f64()) {
        if n < min {
            errs.push(format!("{at}: {n} < {min}"));
        }
    }
    if let Some(obj) = v.as_object() {
        let props = schema.get("properties").and_then(Value::as_object);
        for r in schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let k = r.as_str().unwrap();
            if !obj.contains_key(k) {
                errs.push(format!("{at}: missing {k}"));
            }
        }
        for (k, val) in obj {
            let here = format!("{at}.{k}");
            if let Some(names) = schema.get("propertyNames") {
                errs.extend(validate(root, names, &Value::String(k.clone()), &here));
            }
            match props.and_then(|p| p.get(k)) {
                Some(s) => errs.extend(validate(root, s, val, &here)),
                None => match schema.get("additionalProperties") {
                    Some(Value::Bool(false)) => errs.push(format!("{here}: not allowed")),
                    Some(s @ Value::Object(_)) => errs.extend(validate(root, s, val, &here)),
                    _ => {}
                },
            }
        }
    }
    if let (Some(items), Some(arr)) = (schema.get("items"), v.as_array()) {
        for (i, x) in arr.iter().enumerate() {
            errs.extend(validate(root, items, x, &format!("{at}[{i}]")));
        }
    }
    errs
}
