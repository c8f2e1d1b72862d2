//! The HTML report: one self-contained file (`pmcrash run --html FILE`, the demo's
//! `report.html`).
//!
//! [`render`] turns a [`Report`] into a page with no network access at all (a
//! Content-Security-Policy forbids it; the style and script are inline, kept in
//! `html/style.css` and `html/report.js`). Everything is rendered here, on the server
//! side: the summary, each workload's timeline of ops with their persistence costs,
//! its crash points coloured by their worst verdict, every finding under its crash
//! point, and the findings grouped by signature. With scripts off the page reads as
//! tables and `<details>`; the script only adds selection: a click on a crash point
//! shows its states, findings, dropped lines and commands in the workload's panel.
//!
//! The page is rendered from the report's serde JSON value ([`render_value`]), not
//! from the struct's fields: a field added to the report later (a stat, a finding's
//! count) is shown by the generic key/value tables without a change here, a verdict
//! added later gets a default colour and its rank from [`Verdict`]'s order, and a
//! saved `--json` report renders the same way.
//!
//! Fuzz campaigns (coverage and findings over time) have no report value yet; when
//! they do, they belong in a `render_campaign` section beside the workloads' (the
//! section with id [`CAMPAIGN_SECTION`] is left empty and hidden for it).

use crate::oracle::Verdict;
// Text and attribute values are escaped as the JUnit report's are (`&<>"'`, and the
// control characters no page should hold).
use crate::report::{xml as esc, Report};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::fmt::Write as _;

const STYLE: &str = include_str!("html/style.css");
const SCRIPT: &str = include_str!("html/report.js");

/// The `id` of the (empty) fuzz-campaign extension point: a campaign's coverage and
/// findings over time will be rendered into the section with this id.
pub const CAMPAIGN_SECTION: &str = "campaign";

/// The report as one self-contained HTML page.
pub fn render(report: &Report) -> String {
    render_value(&serde_json::to_value(report).unwrap_or(Value::Null))
}

/// The HTML page of a report's JSON value (the `--json` output, or
/// `serde_json::to_value(&report)`). Unknown fields are shown generically; missing
/// ones are left out.
pub fn render_value(report: &Value) -> String {
    let mut h = String::with_capacity(64 << 10);
    let title = format!(
        "pmcrash report: {}",
        workload_names(report).unwrap_or_else(|| "no workload".into())
    );
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <link rel=\"icon\" href=\"data:,\"><title>{}</title><style>{STYLE}{}</style></head>\n<body>\n",
        esc(&title),
        verdict_css(report)
    );
    header(&mut h, report);
    summary(&mut h, report);
    let workloads = arr(report.get("workloads"));
    for (i, w) in workloads.iter().enumerate() {
        render_workload(&mut h, i, w);
    }
    campaign(&mut h, report.get("campaign"));
    let _ = write!(h, "<script>{SCRIPT}</script>\n</body></html>\n");
    h
}

/// The extension point for fuzz campaigns (issue 13, item 4): a report with a
/// `campaign` value shows it here. Until `pmcrash fuzz` writes one, its fields are
/// shown as they are; coverage and findings over time (inline SVG) and the findings
/// table with their minimised workloads belong here. Without a campaign the section is
/// empty and hidden: no placeholder data.
fn campaign(h: &mut String, c: Option<&Value>) {
    match c {
        Some(Value::Object(m)) => {
            let _ = write!(
                h,
                "<section id=\"{CAMPAIGN_SECTION}\" class=\"campaign\"><h2>Fuzz campaign</h2>"
            );
            kv_table(h, m, "campaign-fields");
            h.push_str("</section>\n");
        }
        _ => {
            let _ = writeln!(
                h,
                "<section id=\"{CAMPAIGN_SECTION}\" class=\"campaign\" hidden></section>"
            );
        }
    }
}

fn workload_names(report: &Value) -> Option<String> {
    let names: Vec<&str> = arr(report.get("workloads"))
        .iter()
        .filter_map(|w| w.get("name")?.as_str())
        .map(short_name)
        .collect();
    match names.len() {
        0 => None,
        1 => Some(names[0].to_owned()),
        n => Some(format!("{n} workloads")),
    }
}

fn header(h: &mut String, r: &Value) {
    let _ = write!(
        h,
        "<header><h1>pmcrash report</h1><p class=\"version\">pmcrash {} · report schema {}</p>",
        esc(&text(r.get("pmcrash_version"))),
        esc(&text(r.get("schema_version")))
    );
    if r.get("incomplete").and_then(Value::as_bool) == Some(true) {
        h.push_str(
            "<p class=\"incomplete\" id=\"incomplete\">INCOMPLETE: the run was interrupted; \
             these verdicts cover only the crash states checked before the interrupt.</p>",
        );
    }
    if let Some(Value::Object(c)) = r.get("config") {
        h.push_str("<h2>Configuration</h2>");
        kv_table(h, c, "config");
    }
    if let Some(f) = r.get("fail_on") {
        let _ = write!(
            h,
            "<p>Verdicts that fail the run: {}</p>",
            arr(Some(f))
                .iter()
                .map(|v| verdict_tag(&text(Some(v))))
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    h.push_str("</header>\n");
}

fn summary(h: &mut String, r: &Value) {
    h.push_str("<section id=\"summary\"><h2>Summary</h2>");
    if let Some(Value::Object(t)) = r.get("totals") {
        let mut rest = t.clone();
        let verdicts = rest.remove("verdicts");
        kv_table(h, &rest, "totals");
        h.push_str("<h3>Crash states per verdict</h3>");
        verdict_table(h, verdicts.as_ref(), "totals-verdicts");
    }
    h.push_str(
        "<h3>Workloads</h3><table class=\"workloads\" id=\"workload-index\"><thead><tr>\
         <th>workload</th><th>fs</th><th>ops</th><th>crash points</th><th>states</th>\
         <th>verdicts</th><th>expected</th><th>findings</th></tr></thead><tbody>",
    );
    for (i, w) in arr(r.get("workloads")).iter().enumerate() {
        let groups = group_findings(arr(w.get("findings")));
        let _ = write!(
            h,
            "<tr><td><a href=\"#w{i}\">{}</a></td><td>{}</td><td class=\"num\">{}</td>\
             <td class=\"num\">{}</td><td class=\"num\">{}</td><td>{}</td><td>{}</td>\
             <td class=\"num\">{} in {} group(s)</td></tr>",
            esc(short_name(&text(w.get("name")))),
            esc(&text(w.get("fs"))),
            arr(w.get("ops")).len(),
            arr(w.get("points")).len(),
            esc(&text(w.get("stats").and_then(|s| s.get("states")))),
            verdict_counts_inline(w.get("verdicts")),
            expect_inline(w.get("expect")),
            arr(w.get("findings")).len(),
            groups.len()
        );
    }
    h.push_str("</tbody></table></section>\n");
}

/// One workload's section: description, expectation, stats, the timeline with its
/// selection panel, the ops' costs, the crash points (each with its findings) and the
/// findings grouped by signature.
fn render_workload(h: &mut String, i: usize, w: &Value) {
    let name = text(w.get("name"));
    let _ = write!(
        h,
        "<section class=\"workload\" id=\"w{i}\" data-workload=\"{}\"><h2>{}</h2><p class=\"desc\">{}</p>",
        esc(&name),
        esc(&name),
        esc(&text(w.get("description")))
    );
    if let Some(e) = w.get("expect").filter(|e| !e.is_null()) {
        let _ = write!(
            h,
            "<p class=\"expect\">Expected: {}</p>",
            expect_inline(Some(e))
        );
        let unmet = arr(e.get("unmet"));
        if !unmet.is_empty() {
            h.push_str("<ul class=\"unmet\">");
            for u in unmet {
                let _ = write!(h, "<li>{}</li>", esc(&text(Some(u))));
            }
            h.push_str("</ul>");
        }
    }
    h.push_str("<h3>Crash states per verdict</h3>");
    verdict_table(h, w.get("verdicts"), &format!("w{i}-verdicts"));
    let ops = arr(w.get("ops"));
    let points = arr(w.get("points"));
    let findings = arr(w.get("findings"));
    // Findings by crash point (the record), in report order.
    let point_of_record: BTreeMap<u64, usize> = points
        .iter()
        .enumerate()
        .filter_map(|(j, p)| Some((p.get("record")?.as_u64()?, j)))
        .rev()
        .collect();
    let mut at_point: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    let mut unplaced = Vec::new();
    for (k, f) in findings.iter().enumerate() {
        match f
            .get("point")
            .and_then(|p| p.get("record"))
            .and_then(Value::as_u64)
            .and_then(|r| point_of_record.get(&r))
        {
            Some(&j) => at_point.entry(j).or_default().push(k),
            None => unplaced.push(k),
        }
    }
    timeline(h, i, ops, points, &at_point);
    op_costs(h, i, ops);
    crash_points(h, i, points, findings, &at_point);
    if !unplaced.is_empty() {
        let _ = write!(
            h,
            "<h3>Findings at no listed crash point</h3><div class=\"unplaced\" id=\"w{i}-unplaced\">"
        );
        for k in &unplaced {
            finding(h, i, *k, &findings[*k], None);
        }
        h.push_str("</div>");
    }
    finding_groups(h, i, findings, &point_of_record, w.get("findings_omitted"));
    let mut rest = Map::new();
    for key in ["stats", "timings"] {
        if let Some(Value::Object(m)) = w.get(key) {
            let _ = write!(
                h,
                "<h3>{}</h3>",
                if key == "stats" {
                    "Counts"
                } else {
                    "Time (ms)"
                }
            );
            kv_table(h, m, &format!("w{i}-{key}"));
        }
    }
    // Fields this page does not know yet, shown as they are.
    if let Value::Object(m) = w {
        for (k, v) in m {
            if ![
                "name",
                "description",
                "fs",
                "ops",
                "points",
                "verdicts",
                "findings",
                "findings_omitted",
                "stats",
                "expect",
                "timings",
            ]
            .contains(&k.as_str())
            {
                rest.insert(k.clone(), v.clone());
            }
        }
    }
    if !rest.is_empty() {
        h.push_str("<h3>More</h3>");
        kv_table(h, &rest, &format!("w{i}-more"));
    }
    h.push_str("</section>\n");
}

/// The op an entry (a crash point or a finding's point) belongs to, and whether it
/// falls after that op returned (`ops_completed` > op) or during it.
fn op_slot(p: &Value) -> (Option<u64>, bool) {
    let op = p.get("op").and_then(Value::as_u64);
    let done = p.get("ops_completed").and_then(Value::as_u64).unwrap_or(0);
    (op, op.is_some_and(|o| done > o))
}

fn timeline(
    h: &mut String,
    i: usize,
    ops: &[Value],
    points: &[Value],
    at_point: &BTreeMap<usize, Vec<usize>>,
) {
    let _ = write!(
        h,
        "<h3>Timeline</h3><p class=\"hint\">Each column is an op: the lines it wrote back \
         (U user flushes, K kernel write-back, R redundant flushes, F fences), then its crash \
         points, during the op and after it returned, coloured by their worst verdict. \
         Select a crash point to see its states and findings.</p>\
         <div class=\"timeline-wrap\"><div class=\"timeline\" id=\"w{i}-timeline\">"
    );
    let line_max = ops
        .iter()
        .filter_map(|o| o.get("cost"))
        .flat_map(|c| {
            [
                "user_lines_flushed",
                "kernel_lines_flushed",
                "redundant_flushes",
                "fences",
            ]
            .map(|k| num(c.get(k)))
        })
        .fold(1, u64::max);
    let mut by_op: BTreeMap<Option<u64>, (Vec<usize>, Vec<usize>)> = BTreeMap::new();
    for (j, p) in points.iter().enumerate() {
        let (op, after) = op_slot(p);
        let e = by_op.entry(op).or_default();
        if after {
            e.1.push(j);
        } else {
            e.0.push(j);
        }
    }
    // The columns: crash points before any op, every op, then the points of ops the
    // report does not list (should not happen), each in its own column.
    let mut columns: Vec<(Option<&Value>, Option<u64>)> = Vec::new();
    if by_op.contains_key(&None) {
        columns.push((None, None));
    }
    for (n, o) in ops.iter().enumerate() {
        let index = o.get("index").and_then(Value::as_u64).unwrap_or(n as u64);
        columns.push((Some(o), Some(index)));
    }
    for k in by_op.keys() {
        if k.is_some() && !columns.iter().any(|(_, i)| i == k) {
            columns.push((None, *k));
        }
    }
    for (op, index) in columns {
        let (during, after) = by_op.remove(&index).unwrap_or_default();
        let label = match (index, op) {
            (Some(n), Some(o)) => format!("{n} {}", text(o.get("op"))),
            (Some(n), None) => format!("{n}"),
            _ => "start".into(),
        };
        let failed = op.is_some_and(|o| o.get("ok").and_then(Value::as_bool) == Some(false));
        let _ = write!(
            h,
            "<div class=\"col{}\" id=\"w{i}-op{}\"><div class=\"op-name\" title=\"{}\">{}</div>",
            if failed { " failed" } else { "" },
            index.map_or("-start".into(), |n| n.to_string()),
            esc(&label),
            esc(&label)
        );
        if let Some(c) = op.and_then(|o| o.get("cost")) {
            h.push_str("<div class=\"bars\">");
            for (k, tag) in [
                ("user_lines_flushed", "U"),
                ("kernel_lines_flushed", "K"),
                ("redundant_flushes", "R"),
                ("fences", "F"),
            ] {
                let n = num(c.get(k));
                let _ = write!(
                    h,
                    "<span class=\"vbar {tag}\" title=\"{n} {}\"><i style=\"height:{}%\"></i><b>{n}<br>{tag}</b></span>",
                    k.replace('_', " "),
                    if n == 0 { 0 } else { (n * 100 / line_max).max(4) }
                );
            }
            h.push_str("</div>");
        } else {
            h.push_str("<div class=\"bars empty\"></div>");
        }
        for (lane, list) in [("during", &during), ("after", &after)] {
            let _ = write!(
                h,
                "<div class=\"lane {lane}\" title=\"crash points {lane} the op\">"
            );
            for &j in list.iter() {
                let p = &points[j];
                let worst = worst_verdict(p.get("verdicts"));
                let n = at_point.get(&j).map_or(0, Vec::len);
                let _ = write!(
                    h,
                    "<a class=\"pt v-{c}\" href=\"#w{i}-p{j}\" data-point=\"w{i}-p{j}\" data-verdict=\"{w}\" data-findings=\"{n}\" title=\"record {r}: {w}{f}\"></a>",
                    w = esc(&worst),
                    c = css_ident(&worst),
                    r = text(p.get("record")),
                    f = if n > 0 { format!(", {n} finding(s)") } else { String::new() }
                );
            }
            h.push_str("</div>");
        }
        h.push_str("</div>");
    }
    let _ = write!(
        h,
        "</div></div><div class=\"panel\" id=\"w{i}-panel\" aria-live=\"polite\">\
         <p class=\"hint\">No crash point selected: select one on the timeline (with scripts \
         off, every crash point's findings are in the table below).</p></div>"
    );
}

fn op_costs(h: &mut String, i: usize, ops: &[Value]) {
    // Known columns first, then whatever else a cost holds.
    const KNOWN: [(&str, &str); 6] = [
        ("stores", "stores"),
        ("kernel_stores", "of them kernel"),
        ("user_lines_flushed", "lines flushed by user"),
        ("kernel_lines_flushed", "lines written back by kernel"),
        ("redundant_flushes", "redundant flushes"),
        ("fences", "fences"),
    ];
    let mut extra: Vec<String> = Vec::new();
    let mut present: Vec<&str> = Vec::new();
    for o in ops {
        if let Some(Value::Object(c)) = o.get("cost") {
            for k in c.keys() {
                if let Some((known, _)) = KNOWN.iter().find(|(n, _)| n == k) {
                    if !present.contains(known) {
                        present.push(known);
                    }
                } else if !extra.contains(k) {
                    extra.push(k.clone());
                }
            }
        }
    }
    let cols: Vec<(String, String)> = KNOWN
        .iter()
        .filter(|(k, _)| present.contains(k))
        .map(|(k, l)| (k.to_string(), l.to_string()))
        .chain(extra.iter().map(|k| (k.clone(), k.replace('_', " "))))
        .collect();
    let scale = |k: &str| -> u64 {
        let group: &[&str] = match k {
            "user_lines_flushed" | "kernel_lines_flushed" | "redundant_flushes" => &[
                "user_lines_flushed",
                "kernel_lines_flushed",
                "redundant_flushes",
            ],
            "stores" | "kernel_stores" => &["stores", "kernel_stores"],
            _ => &[],
        };
        ops.iter()
            .filter_map(|o| o.get("cost"))
            .flat_map(|c| {
                if group.is_empty() {
                    vec![num(c.get(k))]
                } else {
                    group.iter().map(|g| num(c.get(*g))).collect()
                }
            })
            .fold(1, u64::max)
    };
    let scales: Vec<u64> = cols.iter().map(|(k, _)| scale(k)).collect();
    let _ = write!(
        h,
        "<h3>What each op cost</h3><table class=\"costs\" id=\"w{i}-costs\"><thead><tr>\
         <th>op</th><th>name</th><th>result</th>"
    );
    for (_, label) in &cols {
        let _ = write!(h, "<th>{}</th>", esc(label));
    }
    h.push_str("</tr></thead><tbody>");
    for (n, o) in ops.iter().enumerate() {
        let index = o.get("index").and_then(Value::as_u64).unwrap_or(n as u64);
        let ok = o.get("ok").and_then(Value::as_bool) != Some(false);
        let result = match o.get("errno").and_then(Value::as_i64) {
            Some(e) => format!(
                "FAILED errno {e} ({})",
                std::io::Error::from_raw_os_error(e as i32)
            ),
            None => format!("ret {}", text(o.get("ret"))),
        };
        let _ = write!(
            h,
            "<tr id=\"w{i}-cost{index}\"{}><td class=\"num\"><a href=\"#w{i}-op{index}\">{index}</a></td><td>{}</td><td>{}</td>",
            if ok { "" } else { " class=\"failed\"" },
            esc(&text(o.get("op"))),
            esc(&result)
        );
        let cost = o.get("cost");
        for ((k, _), max) in cols.iter().zip(&scales) {
            let v = cost.and_then(|c| c.get(k.as_str()));
            let n = num(v);
            let _ = write!(
                h,
                "<td class=\"num cost {}\" data-key=\"{}\">{}<span class=\"hbar\" style=\"width:{}px\"></span></td>",
                esc(k),
                esc(k),
                esc(&text(v)),
                if n == 0 { 0 } else { (n * 80 / max).max(2) }
            );
        }
        h.push_str("</tr>");
    }
    h.push_str("</tbody></table>");
}

fn crash_points(
    h: &mut String,
    i: usize,
    points: &[Value],
    findings: &[Value],
    at_point: &BTreeMap<usize, Vec<usize>>,
) {
    let _ = write!(
        h,
        "<h3>Crash points</h3><table class=\"points\" id=\"w{i}-points\"><thead><tr>\
         <th>record</th><th>op</th><th>when</th><th>reason</th><th>lines in flight</th>\
         <th>states</th><th>distinct images</th><th>verdicts</th></tr></thead><tbody>"
    );
    for (j, p) in points.iter().enumerate() {
        let worst = worst_verdict(p.get("verdicts"));
        let (op, after) = op_slot(p);
        let _ = write!(
            h,
            "<tr class=\"point v-{c}\" id=\"w{i}-p{j}\" data-verdict=\"{w}\" data-record=\"{}\">\
             <td class=\"num\"><a href=\"#w{i}-p{j}\">{}</a></td><td>{}</td><td>{}</td><td>{}</td>\
             <td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td>{}</td></tr>",
            esc(&text(p.get("record"))),
            esc(&text(p.get("record"))),
            match op {
                Some(o) => format!("<a href=\"#w{i}-op{o}\">{o} {}</a>", esc(&text(p.get("op_name")))),
                None => "-".into(),
            },
            match (op, after) {
                (None, _) => "before the first op",
                (_, true) => "after it returned",
                _ => "during it",
            },
            esc(&text(p.get("reason"))),
            esc(&text(p.get("in_flight_lines"))),
            esc(&text(p.get("states"))),
            esc(&text(p.get("distinct_images"))),
            verdict_counts_inline(p.get("verdicts")),
            w = esc(&worst),
            c = css_ident(&worst),
        );
        // The point's findings: what the panel shows when it is selected, in a
        // `<details>` so that they read with scripts off. A point without findings has
        // none (its row is all there is to show: the page stays small).
        let list = at_point.get(&j).map(Vec::as_slice).unwrap_or(&[]);
        if list.is_empty() {
            continue;
        }
        let _ = write!(
            h,
            "<tr class=\"detail-row\"><td colspan=\"8\"><details class=\"point-detail\" id=\"w{i}-p{j}-detail\">\
             <summary>record {}: {} state(s), {} distinct image(s), {} finding(s)</summary>\
             <div class=\"detail-body\"><p class=\"where\">Crash after record {} ({}), {} op(s) completed; \
             {} line(s) in flight. Verdicts: {}</p>",
            esc(&text(p.get("record"))),
            esc(&text(p.get("states"))),
            esc(&text(p.get("distinct_images"))),
            list.len(),
            num(p.get("record")).saturating_sub(1),
            esc(&text(p.get("reason"))),
            esc(&text(p.get("ops_completed"))),
            esc(&text(p.get("in_flight_lines"))),
            verdict_counts_inline(p.get("verdicts")),
        );
        for &k in list {
            finding(h, i, k, &findings[k], Some(j));
        }
        h.push_str("</div></details></td></tr>");
    }
    h.push_str("</tbody></table>");
}

/// One finding: problems, dropped lines, and the commands.
fn finding(h: &mut String, i: usize, k: usize, f: &Value, point: Option<usize>) {
    let v = text(f.get("verdict"));
    let _ = write!(
        h,
        "<div class=\"finding v-{c}\" id=\"w{i}-f{k}\" data-verdict=\"{v}\"><h4>{} {}{}</h4>",
        verdict_tag(&v),
        f.get("id")
            .and_then(Value::as_str)
            .map(|id| format!("<code class=\"finding-id\">{}</code> ", esc(id)))
            .unwrap_or_default(),
        esc(&signature(f)),
        v = esc(&v),
        c = css_ident(&v)
    );
    let problems = arr(f.get("problems"));
    if !problems.is_empty() {
        h.push_str("<ul class=\"problems\">");
        for p in problems {
            let _ = write!(
                h,
                "<li>{} {}</li>",
                verdict_tag(&text(p.get("verdict"))),
                esc(&text(p.get("message")))
            );
        }
        h.push_str("</ul>");
    }
    let dropped = arr(f.get("dropped_lines"));
    if dropped.is_empty() {
        h.push_str("<p class=\"dropped none\">No line dropped.</p>");
    } else {
        let _ = write!(
            h,
            "<table class=\"dropped\"><caption>{} line(s) dropped, {} kept whole</caption><thead><tr>\
             <th>PM offset</th><th>structure</th><th>owner</th><th>stores kept / queued</th><th>missing</th></tr></thead><tbody>",
            dropped.len(),
            esc(&text(f.get("kept_lines")))
        );
        for d in dropped {
            let _ = write!(
                h,
                "<tr><td class=\"num\">{}</td><td class=\"label\">{}</td><td class=\"owner\">{}</td><td class=\"num\">{} / {}</td><td class=\"missing\">{}</td></tr>",
                d.get("pm_offset")
                    .and_then(Value::as_u64)
                    .map_or_else(|| text(d.get("pm_offset")), |o| format!("{o:#x}")),
                d.get("label")
                    .and_then(|v| {
                        serde_json::from_value::<crate::labels::LineLabel>(v.clone()).ok()
                    })
                    .map_or_else(|| "-".to_owned(), |l| esc(&l.to_string())),
                esc(&text(d.get("owner"))),
                esc(&text(d.get("kept"))),
                esc(&text(d.get("queued"))),
                esc(&text(d.get("missing")))
            );
        }
        h.push_str("</tbody></table>");
    }
    let states = num(f.get("states"));
    let points = num(f.get("crash_points"));
    if states > 1 || points > 1 {
        let _ = write!(
            h,
            "<p class=\"same\">This finding stands for {states} crash state(s) at {points} crash point(s) with the same verdict, site and cause (records {}..{}).</p>",
            num(f.get("first_record")),
            num(f.get("last_record"))
        );
    }
    if let Some(r) = f.get("reproduce").and_then(Value::as_str) {
        let _ = write!(
            h,
            "<p class=\"cmd\">Reproduce: <code class=\"reproduce\">{}</code></p>",
            esc(r)
        );
    }
    if let Some(e) = f.get("export").and_then(Value::as_str) {
        let _ = write!(
            h,
            "<p class=\"cmd\">Export: <code class=\"export\">{}</code></p>",
            esc(e)
        );
    }
    // Whatever else a finding holds (a count, an example list), shown as it is.
    if let Value::Object(m) = f {
        let rest: Map<String, Value> = m
            .iter()
            .filter(|(k, _)| {
                ![
                    "id",
                    "verdict",
                    "point",
                    "problems",
                    "dropped_lines",
                    "kept_lines",
                    "states",
                    "crash_points",
                    "first_record",
                    "last_record",
                    "reproduce",
                    "export",
                    "signature",
                ]
                .contains(&k.as_str())
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if !rest.is_empty() {
            kv_table(h, &rest, &format!("w{i}-f{k}-more"));
        }
    }
    if point.is_none() {
        if let Some(p) = f.get("point") {
            let _ = write!(h, "<p>At {}</p>", esc(&compact(p)));
        }
    }
    h.push_str("</div>");
}

/// A finding's signature: its own `signature` when the report has one, else verdict,
/// op, and cause (the files its problems name, and whether a flush or a fence was
/// missing for the lines it dropped).
fn signature(f: &Value) -> String {
    if let Some(s) = f.get("signature").and_then(Value::as_str) {
        return s.to_owned();
    }
    let p = f.get("point");
    let op = match (
        p.and_then(|p| p.get("op")).and_then(Value::as_u64),
        p.and_then(|p| p.get("op_name")).and_then(Value::as_str),
    ) {
        (Some(o), Some(n)) => format!("op {o} {n}"),
        (Some(o), None) => format!("op {o}"),
        _ => "before the first op".into(),
    };
    let mut cause: Vec<String> = Vec::new();
    for pr in arr(f.get("problems")) {
        if let Some(path) = pr.get("path").and_then(Value::as_str) {
            let c = format!("in {path}");
            if !cause.contains(&c) {
                cause.push(c);
            }
        }
        if let Some(by) = pr.get("promised_by").and_then(Value::as_u64) {
            let c = format!("promised by op {by}");
            if !cause.contains(&c) {
                cause.push(c);
            }
        }
    }
    let missing: Vec<&str> = arr(f.get("dropped_lines"))
        .iter()
        .filter_map(|d| d.get("missing")?.as_str())
        .collect();
    if missing.iter().any(|m| m.starts_with("no flush")) {
        cause.push("missing flush".into());
    }
    if missing.iter().any(|m| m.contains("no fence")) {
        cause.push("missing fence".into());
    }
    if cause.is_empty() {
        cause.push(if missing.is_empty() {
            "no line dropped".into()
        } else {
            "lines dropped".into()
        });
    }
    format!("{} · {op} · {}", text(f.get("verdict")), cause.join(", "))
}

/// Findings by signature, in order of first appearance: (signature, finding indices).
fn group_findings(findings: &[Value]) -> Vec<(String, Vec<usize>)> {
    let mut groups: Vec<(String, Vec<usize>)> = Vec::new();
    for (k, f) in findings.iter().enumerate() {
        let s = signature(f);
        match groups.iter_mut().find(|(g, _)| *g == s) {
            Some((_, v)) => v.push(k),
            None => groups.push((s, vec![k])),
        }
    }
    groups
}

fn finding_groups(
    h: &mut String,
    i: usize,
    findings: &[Value],
    point_of_record: &BTreeMap<u64, usize>,
    omitted: Option<&Value>,
) {
    let groups = group_findings(findings);
    let _ = write!(
        h,
        "<h3>Findings by signature</h3><table class=\"groups\" id=\"w{i}-groups\"><thead><tr>\
         <th>verdict</th><th>signature</th><th>findings</th><th>crash states</th><th>where</th></tr></thead><tbody>"
    );
    if groups.is_empty() {
        h.push_str("<tr><td colspan=\"5\" class=\"none\">No finding.</td></tr>");
    }
    for (g, (sig, list)) in groups.iter().enumerate() {
        let v = text(findings[list[0]].get("verdict"));
        // A finding is a group: it counts the states it stands for.
        let states: u64 = list
            .iter()
            .map(|&k| {
                findings[k]
                    .get("states")
                    .and_then(Value::as_u64)
                    .unwrap_or(1)
            })
            .sum();
        let _ = write!(
            h,
            "<tr class=\"group v-{c}\" id=\"w{i}-g{g}\" data-verdict=\"{v}\"><td>{}</td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{states}</td><td class=\"links\">",
            verdict_tag(&v),
            esc(sig),
            list.len(),
            v = esc(&v),
            c = css_ident(&v)
        );
        for (n, &k) in list.iter().enumerate() {
            if n == 12 {
                let _ = write!(h, " … {} more", list.len() - n);
                break;
            }
            let record = findings[k]
                .get("point")
                .and_then(|p| p.get("record"))
                .and_then(Value::as_u64);
            match record.and_then(|r| point_of_record.get(&r)) {
                Some(j) => {
                    let _ = write!(
                        h,
                        "<a href=\"#w{i}-p{j}\" data-point=\"w{i}-p{j}\">record {}</a> ",
                        record.unwrap_or(0)
                    );
                }
                None => {
                    let _ = write!(h, "<a href=\"#w{i}-f{k}\">finding {k}</a> ");
                }
            }
        }
        h.push_str("</td></tr>");
    }
    h.push_str("</tbody></table>");
    let omitted = num(omitted);
    if omitted > 0 {
        let _ = write!(
            h,
            "<p class=\"omitted\">{omitted} more finding(s) were left out of the report to keep it readable.</p>"
        );
    }
}

/// The worst verdict with a non-zero count, by [`Verdict`]'s order (worst first); a
/// verdict this build does not know ranks just above `ok`. `none` for no states.
fn worst_verdict(counts: Option<&Value>) -> String {
    let Some(Value::Object(m)) = counts else {
        return "none".into();
    };
    m.iter()
        .filter(|(_, n)| num(Some(n)) > 0)
        .map(|(k, _)| (rank(k), k))
        .min()
        .map_or_else(|| "none".into(), |(_, k)| k.clone())
}

/// A verdict's severity rank: its place in [`Verdict::ALL`] (worst first); an unknown
/// name ranks just before `ok`.
fn rank(name: &str) -> (usize, usize) {
    let ok = Verdict::ALL.len() - 1;
    match name.parse::<Verdict>() {
        Ok(v) => {
            let r = Verdict::ALL.iter().position(|x| *x == v).unwrap_or(ok);
            (r, if r == ok { 1 } else { 0 })
        }
        Err(_) => (ok, 0),
    }
}

/// The colour of a verdict, by name; verdicts this build does not know get a default.
pub fn verdict_colour(name: &str) -> &'static str {
    match name {
        "ok" => "#2e9d57",
        "fs-corruption" => "#b3001b",
        "stale-data" => "#d1495b",
        "atomicity-violation" => "#e07a1f",
        "durability-violation" => "#c9302c",
        "unsafe-flush-only" => "#d4a017",
        "torn-write" => "#8e44ad",
        "program-check-failed" => "#a0522d",
        "none" => "#9aa0a6",
        _ => "#6c5ce7",
    }
}

/// CSS rules colouring every verdict name the report uses.
fn verdict_css(r: &Value) -> String {
    let mut names: Vec<String> = Verdict::ALL.iter().map(|v| v.name().to_owned()).collect();
    names.push("none".into());
    collect_verdict_names(r, &mut names);
    let mut css = String::new();
    for n in &names {
        let _ = write!(css, ".v-{}{{--vc:{}}}", css_ident(n), verdict_colour(n));
    }
    css
}

fn collect_verdict_names(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("verdict", Value::String(s)) => push_unique(out, s),
                    ("verdicts", Value::Object(c)) => c.keys().for_each(|s| push_unique(out, s)),
                    ("expected" | "seen" | "fail_on", Value::Array(a)) => a
                        .iter()
                        .filter_map(Value::as_str)
                        .for_each(|s| push_unique(out, s)),
                    _ => {}
                }
                collect_verdict_names(x, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|x| collect_verdict_names(x, out)),
        _ => {}
    }
}

fn push_unique(out: &mut Vec<String>, s: &str) {
    if !out.iter().any(|o| o == s) {
        out.push(s.to_owned());
    }
}

fn css_ident(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn verdict_tag(name: &str) -> String {
    format!(
        "<span class=\"verdict v-{}\">{}</span>",
        esc(&css_ident(name)),
        esc(name)
    )
}

/// A table of crash states per verdict, worst first; each row carries
/// `data-verdict` and `data-count`.
fn verdict_table(h: &mut String, counts: Option<&Value>, id: &str) {
    let _ = write!(
        h,
        "<table class=\"verdicts\" id=\"{}\"><thead><tr><th>verdict</th><th>crash states</th></tr></thead><tbody>",
        esc(id)
    );
    if let Some(Value::Object(m)) = counts {
        let mut rows: Vec<(&String, u64)> = m.iter().map(|(k, n)| (k, num(Some(n)))).collect();
        rows.sort_by_key(|(k, _)| (rank(k), (*k).clone()));
        for (k, n) in rows {
            let _ = write!(
                h,
                "<tr data-verdict=\"{}\" data-count=\"{n}\"><td>{}</td><td class=\"num\">{n}</td></tr>",
                esc(k),
                verdict_tag(k)
            );
        }
    }
    h.push_str("</tbody></table>");
}

fn verdict_counts_inline(counts: Option<&Value>) -> String {
    let Some(Value::Object(m)) = counts else {
        return "-".into();
    };
    let mut rows: Vec<(&String, u64)> = m
        .iter()
        .map(|(k, n)| (k, num(Some(n))))
        .filter(|(_, n)| *n > 0)
        .collect();
    if rows.is_empty() {
        return "none".into();
    }
    rows.sort_by_key(|(k, _)| (rank(k), (*k).clone()));
    rows.iter()
        .map(|(k, n)| format!("{} {n}", verdict_tag(k)))
        .collect::<Vec<_>>()
        .join(" ")
}

fn expect_inline(e: Option<&Value>) -> String {
    let Some(e) = e.filter(|e| !e.is_null()) else {
        return "-".into();
    };
    let expected = arr(e.get("expected"))
        .iter()
        .map(|v| verdict_tag(&text(Some(v))))
        .collect::<Vec<_>>()
        .join(" ");
    let met = e.get("met").and_then(Value::as_bool);
    format!(
        "{} → {}",
        if expected.is_empty() {
            "-".into()
        } else {
            expected
        },
        match met {
            Some(true) => "<span class=\"met\">met</span>",
            Some(false) => "<span class=\"unmet\">NOT MET</span>",
            None => "?",
        }
    )
}

/// A two-column table of an object's fields; nested values are shown compactly.
fn kv_table(h: &mut String, m: &Map<String, Value>, id: &str) {
    let _ = write!(h, "<table class=\"kv\" id=\"{}\"><tbody>", esc(id));
    for (k, v) in m {
        let _ = write!(
            h,
            "<tr data-key=\"{}\"><th>{}</th><td>{}</td></tr>",
            esc(k),
            esc(&k.replace('_', " ")),
            esc(&compact(v))
        );
    }
    h.push_str("</tbody></table>");
}

/// A value as short text: strings bare, scalars as JSON, objects and arrays as JSON.
fn compact(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn text(v: Option<&Value>) -> String {
    v.map_or_else(|| "-".into(), compact)
}

fn num(v: Option<&Value>) -> u64 {
    v.and_then(Value::as_u64).unwrap_or(0)
}

fn arr(v: Option<&Value>) -> &[Value] {
    v.and_then(Value::as_array).map_or(&[], Vec::as_slice)
}

fn short_name(name: &str) -> &str {
    name.rsplit('/').next().unwrap_or(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oracle::Problem;
    use crate::report::{
        ConfigReport, DroppedLine, Finding, OpLine, PointRef, PointReport, WorkloadReport,
        WorkloadStats,
    };
    use crash_models::ops::FsKind;
    use crash_models::promise::OpCost;
    use std::collections::BTreeSet;

    /// A report of one workload with `ops` ops, `points` crash points spread over them
    /// (every 7th with an unsafe-flush-only state) and a finding, with 16 dropped lines,
    /// at each of the first `findings` such points.
    fn synthetic(name: &str, ops: usize, points: usize, findings: usize) -> Report {
        let config = ConfigReport {
            fs: FsKind::Ext4,
            model: "x86-adr".into(),
            points: "store".into(),
            states: "each-line".into(),
            seed: 0,
            kernel: "6.12.0-test".into(),
            workers: 2,
            sector_atomic: None,
        };
        let op_lines: Vec<OpLine> = (0..ops)
            .map(|i| OpLine {
                index: i,
                op: if i % 3 == 2 { "msync" } else { "store" }.into(),
                ok: true,
                ret: 0,
                errno: None,
                cost: OpCost {
                    stores: 8,
                    kernel_stores: 2,
                    kernel_lines_flushed: if i % 3 == 2 { 64 } else { 0 },
                    user_lines_flushed: 1,
                    redundant_flushes: 0,
                    fences: 1,
                },
            })
            .collect();
        let mut pts = Vec::new();
        let mut fs = Vec::new();
        for j in 0..points {
            let op = (j * ops / points) as u32;
            let bad = j % 7 == 3;
            let mut verdicts = BTreeMap::from([(Verdict::Ok, 5)]);
            if bad {
                verdicts.insert(Verdict::UnsafeFlushOnly, 1);
            }
            let record = 1000 + 10 * j as u64;
            pts.push(PointReport {
                record,
                ops_completed: op + (j % 2) as u32,
                op: Some(op),
                op_name: Some(op_lines[op as usize].op.clone()),
                reason: "store".into(),
                in_flight_lines: 6,
                states: 5 + bad as usize,
                distinct_images: 3,
                checked_images: 3,
                pruned_images: 0,
                equal_to: vec![],
                verdicts,
                state_verdicts: vec![],
            });
            if bad && fs.len() < findings {
                fs.push(Finding {
                    id: format!("f-{record:08x}"),
                    verdict: Verdict::UnsafeFlushOnly,
                    point: PointRef {
                        record,
                        op: Some(op),
                        op_name: Some(op_lines[op as usize].op.clone()),
                        ops_completed: op,
                        stores: 40,
                        after_marker: None,
                    },
                    problems: vec![Problem {
                        verdict: Verdict::UnsafeFlushOnly,
                        message: "pm.dat offset 0: expected 8 bytes 0x2a, found zeros".into(),
                        promised_by: Some(op as usize),
                        path: Some("pm.dat".into()),
                        file_offset: Some(0),
                    }],
                    dropped_lines: (0..16)
                        .map(|l| DroppedLine {
                            pm_offset: 0x20_0000 + 64 * l,
                            owner: format!("file pm.dat offset {}", 64 * l),
                            queued: 8,
                            kept: 0,
                            missing: format!(
                                "no flush of the line after record {record} (its last store is record {record})"
                            ),
                            writer: None,
                            label: None,
                        })
                        .collect(),
                    kept_lines: 2,
                    states: 2,
                    crash_points: 1,
                    first_record: record,
                    last_record: record,
                    reproduce: format!("pmcrash run {name} --crash-at {record}"),
                });
            }
        }
        let mut verdicts = BTreeMap::new();
        for p in &pts {
            for (v, n) in &p.verdicts {
                *verdicts.entry(*v).or_default() += n;
            }
        }
        let w = WorkloadReport {
            name: name.into(),
            description: "synthetic".into(),
            fs: FsKind::Ext4,
            ops: op_lines,
            stats: WorkloadStats {
                crash_points: pts.len(),
                states: pts.iter().map(|p| p.states).sum(),
                ..WorkloadStats::default()
            },
            points: pts,
            verdicts,
            findings: fs,
            findings_omitted: 0,
            expect: None,
            timings: Default::default(),
            coverage: None,
        };
        Report::new(config, &BTreeSet::from([Verdict::UnsafeFlushOnly]), vec![w])
    }

    #[test]
    fn the_page_is_self_contained_and_escapes_what_it_shows() {
        let r = synthetic("corpus/<script>alert(1)</script>.toml", 6, 30, 3);
        let page = render(&r);
        assert!(page.starts_with("<!DOCTYPE html>"));
        assert!(!page.contains("<script>alert(1)"), "names are escaped");
        assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;.toml"));
        // No network: nothing is loaded from anywhere, and the CSP forbids it.
        for bad in ["http://", "https://", " src=", "@import", "url("] {
            assert!(!page.contains(bad), "the page mentions {bad}");
        }
        assert!(page.contains("default-src 'none'"));
        // Exactly one script and one style, both inline.
        assert_eq!(page.matches("<script").count(), 1);
        assert_eq!(page.matches("<style").count(), 1);
        // Every crash point is on the timeline and in the table.
        // Those with a finding (the first three bad ones) have their details.
        for j in 0..30 {
            assert!(page.contains(&format!("href=\"#w0-p{j}\" data-point=\"w0-p{j}\"")));
            assert!(page.contains(&format!("id=\"w0-p{j}\" data-verdict=")));
            assert_eq!(
                page.contains(&format!("id=\"w0-p{j}-detail\"")),
                [3, 10, 17].contains(&j),
                "point {j}"
            );
        }
        // The verdict counts, as data attributes.
        let bad = r.totals.verdicts[&Verdict::UnsafeFlushOnly];
        assert!(page.contains(&format!(
            "<tr data-verdict=\"unsafe-flush-only\" data-count=\"{bad}\">"
        )));
        // Three findings in one group (same verdict and cause) for each op they hit.
        assert!(page.contains("id=\"w0-g0\""));
        assert!(page.contains("file pm.dat offset 960"));
        assert!(page.contains("missing flush"));
    }

    #[test]
    fn fields_and_verdicts_this_build_does_not_know_still_show() {
        let r = synthetic("w.toml", 3, 8, 1);
        let mut v = serde_json::to_value(&r).unwrap();
        let w = &mut v["workloads"][0];
        w["points"][1]["verdicts"]["torn-write"] = 2.into();
        w["points"][2]["verdicts"]["brand-new-verdict"] = 1.into();
        w["stats"]["pruned_states"] = 17.into();
        w["findings"][0]["states"] = 9.into();
        w["findings"][0]["signature"] = "unsafe-flush-only · op 1 store · pm.dat".into();
        w["campaign_seconds"] = 3.into();
        assert!(render_value(&v).contains("<section id=\"campaign\" class=\"campaign\" hidden>"));
        v["campaign"] = serde_json::json!({"execs": 1200});
        let page = render_value(&v);
        assert!(page.contains("<h2>Fuzz campaign</h2>"));
        assert!(page.contains("<tr data-key=\"execs\"><th>execs</th><td>1200</td>"));
        assert!(page.contains("data-point=\"w0-p1\" data-verdict=\"torn-write\""));
        assert!(page.contains(".v-torn-write{--vc:#8e44ad}"));
        // An unknown verdict ranks above ok, and gets the default colour.
        assert!(page.contains("data-point=\"w0-p2\" data-verdict=\"brand-new-verdict\""));
        assert!(page.contains(".v-brand-new-verdict{--vc:#6c5ce7}"));
        assert!(page.contains("<tr data-key=\"pruned_states\"><th>pruned states</th><td>17</td>"));
        assert!(page.contains("<tr data-key=\"campaign_seconds\">"));
        assert!(page.contains("unsafe-flush-only · op 1 store · pm.dat"));
        // The group counts the states its findings stand for.
        assert!(page.contains("<td class=\"num\">1</td><td class=\"num\">9</td>"));
    }

    #[test]
    fn worst_verdict_follows_the_verdict_order() {
        let counts = serde_json::json!({"ok": 3, "unsafe-flush-only": 1, "stale-data": 0});
        assert_eq!(worst_verdict(Some(&counts)), "unsafe-flush-only");
        let counts = serde_json::json!({"ok": 3, "fs-corruption": 1, "unsafe-flush-only": 1});
        assert_eq!(worst_verdict(Some(&counts)), "fs-corruption");
        assert_eq!(worst_verdict(Some(&serde_json::json!({"ok": 2}))), "ok");
        assert_eq!(worst_verdict(Some(&serde_json::json!({}))), "none");
        let counts = serde_json::json!({"ok": 3, "torn-write": 1});
        assert_eq!(worst_verdict(Some(&counts)), "torn-write");
    }

    /// The size figure for a 1,000-point workload with the pipeline's cap of 50
    /// findings, each with the cap of 16 dropped lines (printed; `--nocapture`).
    #[test]
    fn a_thousand_point_workload_stays_small() {
        let r = synthetic("thousand.toml", 40, 1000, 50);
        assert_eq!(r.workloads[0].points.len(), 1000);
        assert_eq!(r.workloads[0].findings.len(), 50);
        let page = render(&r);
        println!(
            "HTML report of a 1000-point workload (50 findings x 16 dropped lines): {} bytes ({:.2} MiB)",
            page.len(),
            page.len() as f64 / (1 << 20) as f64
        );
        assert!(page.len() < 2 << 20, "{} bytes", page.len());
    }
}
