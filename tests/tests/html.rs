//! The HTML report in a real browser: the LSFMM 2016 corpus on ext4-DAX (crash points
//! at op boundaries), its page (`pmcrash::html::render`, what `run --html` writes)
//! loaded in Debian's Chromium, headless, and checked through the DOM: every crash
//! point on the timeline with its worst verdict, the verdict counts of the JSON report,
//! a finding's dropped lines in the panel after a click on its crash point, no console
//! error. The page and a screenshot are kept under the target directory (paths
//! printed), with the time the browser took to render the page.
//!
//! Chromium comes from `pmcrash setup --browser` (which `cargo xtask test` runs); a
//! missing browser fails the test with that command.

use crash_models::ops::FsKind;
use crash_models::points::Policy;
use headless_chrome::protocol::cdp::types::Event;
use headless_chrome::protocol::cdp::Page::CaptureScreenshotFormatOption;
use headless_chrome::{Browser, LaunchOptions, Tab};
use pmcrash::oracle::Verdict;
use pmcrash::pipeline::{builtin_lsfmm2016, Pipeline, RunConfig};
use pmcrash::report::Report;
use pmcrash::setup::host_tools;
use pmcrash_e2e::{factory, rt};
use serde_json::Value;
use std::ffi::OsStr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn corpus_report() -> Report {
    rt().block_on(async {
        let cfg = RunConfig {
            fs: FsKind::Ext4,
            points: Policy::Op,
            workers: 2,
            ..RunConfig::default()
        };
        let mut p = Pipeline::with_factory(factory(FsKind::Ext4), cfg).expect("pipeline");
        let r = p.run(&builtin_lsfmm2016(), false).await;
        p.shutdown().await;
        r.expect("the corpus runs")
    })
}

/// Chromium, headless, with a fresh profile and nothing that talks to the network.
fn browser(profile: &std::path::Path) -> Browser {
    let Some(path) = host_tools::find_browser() else {
        panic!(
            "no headless browser: `chromium` is not installed; run `pmcrash setup --browser` as root \
             (`cargo xtask test` does), or `apt-get install chromium`"
        );
    };
    let args: Vec<&OsStr> = [
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-default-apps",
        "--no-default-browser-check",
        "--hide-scrollbars",
    ]
    .iter()
    .map(OsStr::new)
    .collect();
    let opts = LaunchOptions::default_builder()
        .path(Some(path.clone()))
        .headless(true)
        .sandbox(false)
        .window_size(Some((1400, 1000)))
        .user_data_dir(Some(profile.to_path_buf()))
        .args(args)
        .idle_browser_timeout(Duration::from_secs(600))
        .build()
        .expect("launch options");
    Browser::new(opts).unwrap_or_else(|e| panic!("starting {} failed: {e}", path.display()))
}

fn eval(tab: &Tab, js: &str) -> Value {
    let r = tab
        .evaluate(&format!("JSON.stringify(({js}))"), false)
        .unwrap_or_else(|e| panic!("evaluating {js}: {e}"));
    let s = r
        .value
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| panic!("{js} gave no value"));
    serde_json::from_str(&s).expect("JSON from the page")
}

/// The worst verdict with a state, by the verdict order (worst first).
fn worst(counts: &std::collections::BTreeMap<Verdict, u64>) -> String {
    counts
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(v, _)| *v)
        .min()
        .map_or("none".into(), |v| v.name().to_owned())
}

#[test]
fn lsfmm2016_report_in_chromium() {
    let t = Instant::now();
    let report = corpus_report();
    let run_s = t.elapsed().as_secs_f64();
    let json = serde_json::to_value(&report).expect("report JSON");
    let page = pmcrash::html::render(&report);

    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("html-report");
    std::fs::create_dir_all(&dir).expect("artefact directory");
    let html_path = dir.join("lsfmm2016-ext4.html");
    pmcrash::cache::write_atomic(&html_path, page.as_bytes()).expect("write the page");
    println!(
        "corpus run: {run_s:.1} s; HTML report: {} ({} bytes, {:.2} MiB)",
        html_path.display(),
        page.len(),
        page.len() as f64 / (1 << 20) as f64
    );
    assert!(page.len() <= 2 << 20, "the report is over 2 MiB");

    let profile = tempfile::tempdir().expect("profile directory");
    let browser = browser(profile.path());
    let tab = browser.new_tab().expect("a tab");
    let errors: Arc<Mutex<Vec<String>>> = Arc::default();
    let sink = errors.clone();
    tab.enable_log().expect("Log domain");
    tab.enable_runtime().expect("Runtime domain");
    tab.add_event_listener(Arc::new(move |ev: &Event| {
        let msg = match ev {
            Event::RuntimeExceptionThrown(e) => Some(format!("exception: {:?}", e.params)),
            Event::RuntimeConsoleAPICalled(e) => {
                let ty = format!("{:?}", e.params.Type);
                (ty == "Error" || ty == "Assert")
                    .then(|| format!("console.{ty}: {:?}", e.params.args))
            }
            Event::LogEntryAdded(e) => {
                let level = format!("{:?}", e.params.entry.level);
                (level == "Error").then(|| format!("log: {}", e.params.entry.text))
            }
            _ => None,
        };
        if let Some(m) = msg {
            sink.lock().unwrap().push(m);
        }
    }))
    .expect("listener");

    let url = format!("file://{}", html_path.display());
    tab.navigate_to(&url)
        .and_then(|t| t.wait_until_navigated())
        .expect("the page loads");
    tab.wait_for_element("html[data-ready='1']")
        .expect("the page's script ran");
    let timing = eval(
        &tab,
        "(() => { const n = performance.getEntriesByType('navigation')[0]; \
         return { dom: n.domContentLoadedEventEnd, load: n.loadEventEnd, interactive: n.domInteractive }; })()",
    );
    println!(
        "browser render: DOM ready {:.1} ms after navigation start (interactive {:.1} ms, load {:.1} ms)",
        timing["dom"].as_f64().unwrap_or(f64::NAN),
        timing["interactive"].as_f64().unwrap_or(f64::NAN),
        timing["load"].as_f64().unwrap_or(f64::NAN)
    );

    // The totals' verdict counts: the table's cells as shown, against the JSON report.
    let counts = |table: &str| {
        eval(
            &tab,
            &format!(
                "Object.fromEntries([...document.querySelectorAll('#{table} tr[data-verdict]')]\
                 .map(r => [r.dataset.verdict, Number(r.cells[1].textContent)]))"
            ),
        )
    };
    assert_eq!(
        counts("totals-verdicts"),
        json["totals"]["verdicts"],
        "the page's verdict totals"
    );
    assert_eq!(report.workloads.len(), 7);
    for (i, w) in report.workloads.iter().enumerate() {
        assert_eq!(
            counts(&format!("w{i}-verdicts")),
            json["workloads"][i]["verdicts"],
            "{}: verdict counts",
            w.name
        );
        // Every crash point is on the timeline, in order, coloured by its worst verdict.
        let shown = eval(
            &tab,
            &format!(
                "[...document.querySelectorAll('#w{i}-timeline a.pt')]\
                 .map(a => [Number(a.dataset.point.split('-p')[1]), a.dataset.verdict, getComputedStyle(a).backgroundColor])"
            ),
        );
        let shown = shown.as_array().expect("markers");
        assert_eq!(shown.len(), w.points.len(), "{}: crash points", w.name);
        assert!(!w.points.is_empty(), "{}: no crash point", w.name);
        let mut seen: Vec<u64> = shown.iter().map(|m| m[0].as_u64().unwrap()).collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..w.points.len() as u64).collect::<Vec<_>>());
        for m in shown {
            let j = m[0].as_u64().unwrap() as usize;
            assert_eq!(
                m[1].as_str(),
                Some(worst(&w.points[j].verdicts).as_str()),
                "{}: point {j}",
                w.name
            );
            assert_ne!(
                m[2].as_str(),
                Some("rgba(0, 0, 0, 0)"),
                "a marker is uncoloured"
            );
        }
        // One row per op in the cost table.
        let rows = eval(
            &tab,
            &format!("document.querySelectorAll('#w{i}-costs tbody tr').length"),
        );
        assert_eq!(rows.as_u64(), Some(w.ops.len() as u64), "{}: ops", w.name);
    }
    let total_markers = eval(&tab, "document.querySelectorAll('a.pt').length");
    assert_eq!(
        total_markers.as_u64(),
        Some(report.totals.crash_points as u64)
    );

    // A finding with dropped lines: its crash point, clicked on the timeline, shows them.
    let (i, f) = report
        .workloads
        .iter()
        .enumerate()
        .find_map(|(i, w)| {
            w.findings
                .iter()
                .find(|f| !f.dropped_lines.is_empty())
                .map(|f| (i, f))
        })
        .expect("the corpus has a finding with dropped lines");
    let w = &report.workloads[i];
    let j = w
        .points
        .iter()
        .position(|p| p.record == f.point.record)
        .expect("the finding's crash point is listed");
    let panel_text = || {
        eval(
            &tab,
            &format!("document.getElementById('w{i}-panel').innerText"),
        )
        .as_str()
        .unwrap()
        .to_owned()
    };
    let owner = &f.dropped_lines[0].owner;
    assert!(
        !panel_text().contains(owner.as_str()),
        "the panel shows the dropped lines before any click"
    );
    // With scripts off they are in a closed <details>: not shown either.
    let visible = eval(
        &tab,
        &format!("document.getElementById('w{i}-p{j}-detail').querySelector('td.owner').checkVisibility()"),
    );
    assert_eq!(
        visible,
        Value::Bool(false),
        "the point's details start closed"
    );
    tab.find_element(&format!("#w{i}-timeline a.pt[data-point='w{i}-p{j}']"))
        .expect("the finding's marker")
        .click()
        .expect("click");
    let text = panel_text();
    for d in &f.dropped_lines {
        assert!(
            text.contains(&d.owner),
            "{}: panel lacks {}:\n{text}",
            w.name,
            d.owner
        );
        assert!(
            text.contains(&d.missing),
            "{}: panel lacks {}",
            w.name,
            d.missing
        );
        assert!(text.contains(&format!("{:#x}", d.pm_offset)));
    }
    assert!(text.contains(&f.reproduce), "the reproducer:\n{text}");
    for p in &f.problems {
        assert!(text.contains(&p.message), "{}", p.message);
    }
    let selected = eval(
        &tab,
        &format!(
            "[location.hash, document.getElementById('w{i}-p{j}').classList.contains('selected')]"
        ),
    );
    assert_eq!(selected, serde_json::json!([format!("#w{i}-p{j}"), true]));

    // The grouped findings link to the timeline: following the group's link selects
    // the crash point too.
    let linked = eval(
        &tab,
        &format!("[...document.querySelectorAll('#w{i}-groups a[data-point]')].map(a => a.dataset.point)"),
    );
    assert!(
        linked
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p.as_str() == Some(&format!("w{i}-p{j}"))),
        "no group links to w{i}-p{j}: {linked}"
    );

    let png = tab
        .capture_screenshot(CaptureScreenshotFormatOption::Png, None, None, true)
        .expect("screenshot");
    let shot = dir.join("lsfmm2016-ext4.png");
    std::fs::write(&shot, &png).expect("write the screenshot");
    println!("screenshot: {}", shot.display());

    let seen = errors.lock().unwrap().clone();
    assert!(seen.is_empty(), "console errors: {seen:#?}");
    // The listener hears console errors: one made on purpose arrives (events come
    // ahead of or soon after the answer to the call that caused them).
    eval(&tab, "console.error('pmcrash-html-probe') === undefined");
    let heard = (0..200).any(|_| {
        let _ = eval(&tab, "1");
        errors
            .lock()
            .unwrap()
            .iter()
            .any(|e| e.contains("pmcrash-html-probe"))
    });
    assert!(heard, "the console listener missed a console.error");
}
