#![allow(clippy::unwrap_used, clippy::expect_used)]
//! End to end in a real headless Chromium (driven over WebDriver through
//! chromedriver): the visualizer in front of a real collector query API
//! with memory storage holding known traces.
//!
//! Screenshots go to `$CARGO_TARGET_DIR/clew-artifacts/visualizer/` (or
//! `target/clew-artifacts/visualizer/`); the 10,000-span render timings are
//! printed and written to `big-trace-timings.json` there.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::webdriver::{Driver, Session};
use common::{CHECKOUTS, CRITICAL, NOT_CRITICAL, hex, span_id, trace_id};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(20);

fn artifacts() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let dir = target.join("clew-artifacts").join("visualizer");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn shot(s: &Session<'_>, name: &str) {
    s.screenshot(&artifacts().join(format!("{name}.png"))).await;
}

async fn no_page_errors(s: &Session<'_>) {
    let errs = s.js("return window.__clewErrors || []", vec![]).await;
    assert_eq!(errs, json!([]), "JavaScript errors on the page");
}

fn strings(v: &Value) -> Vec<String> {
    let mut out: Vec<String> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap().to_owned())
        .collect();
    out.sort();
    out
}

/// Opens the insights page at `url` and returns the anomalies' texts.
async fn insights(s: &Session<'_>, url: &str) -> Vec<String> {
    s.goto(url).await;
    s.wait_for(
        "bottlenecks",
        "return document.querySelectorAll('#bottlenecks .bottleneck').length",
        WAIT,
    )
    .await;
    let v = s
        .js(
            "return [...document.querySelectorAll('#anomalies .anomaly')].map(a => a.innerText)",
            vec![],
        )
        .await;
    v.as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect()
}

fn span_hex(ns: &[u16]) -> Vec<String> {
    let mut v: Vec<String> = ns.iter().map(|n| hex(&span_id(*n))).collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ui_in_a_real_browser() {
    let collector = common::collector(common::known_storage().await).await;
    let ui = common::serve(clew_visualizer::app(common::state(collector))).await;
    let base = format!("http://{ui}");
    let driver = Driver::start().await;
    let s = driver.session().await;

    // ---- search: results list and scatter plot
    s.goto(&format!("{base}/search?service=frontend&limit=50"))
        .await;
    let n = s
        .wait_for(
            "search results",
            "return document.querySelectorAll('#result-list .result').length",
            WAIT,
        )
        .await;
    // 20 checkouts and the skewed report trace have frontend spans.
    assert_eq!(n, json!(CHECKOUTS + 1));
    assert_eq!(
        s.js(
            "return document.querySelectorAll('#scatter circle').length",
            vec![]
        )
        .await,
        json!(CHECKOUTS + 1)
    );
    // Checkouts 3, 10 and 17 have a failing INSERT: red dots.
    assert_eq!(
        s.js(
            "return document.querySelectorAll('#scatter circle.error').length",
            vec![]
        )
        .await,
        json!(3)
    );
    // The form reflects the URL.
    assert_eq!(
        s.js("return document.getElementById('f-service').value", vec![])
            .await,
        json!("frontend")
    );
    shot(&s, "01-search").await;

    // A duration filter narrows to the slow checkout.
    s.goto(&format!("{base}/search?service=frontend&minDuration=300ms"))
        .await;
    s.wait_for(
        "one result",
        "return document.querySelectorAll('#result-list .result').length === 1",
        WAIT,
    )
    .await;
    let slow = hex(&trace_id(0xc0, 10));
    assert_eq!(
        s.js(
            "return document.querySelector('#result-list .result').dataset.traceId",
            vec![]
        )
        .await,
        json!(slow)
    );

    // ---- open a trace from the results (a real click)
    let link = s.find("#result-list .result a.title").await;
    s.click(&link).await;
    s.wait_for(
        "critical path",
        "return document.body.dataset.criticalSpans",
        WAIT,
    )
    .await;
    assert!(s.url().await.ends_with(&format!("/trace/{slow}")));
    assert_eq!(
        s.js(
            "return document.querySelectorAll('#wf-scroll .row').length",
            vec![]
        )
        .await,
        json!(8)
    );
    let critical = s.js("return [...document.querySelectorAll('#wf-scroll .row.critical')].map(r => r.dataset.spanId)", vec![]).await;
    assert_eq!(strings(&critical), span_hex(&CRITICAL));
    let plain = s.js("return [...document.querySelectorAll('#wf-scroll .row:not(.critical)')].map(r => r.dataset.spanId)", vec![]).await;
    assert_eq!(strings(&plain), span_hex(&NOT_CRITICAL));
    // Critical sections are drawn in the bars.
    let crit_bars = s
        .js(
            "return document.querySelectorAll('#wf-scroll .row .crit').length",
            vec![],
        )
        .await;
    assert!(crit_bars.as_u64().unwrap() >= 6, "{crit_bars}");
    // Self time, ranked: every span of the trace, each linking to its row.
    let ranked = s
        .js(
            "return [...document.querySelectorAll('#self-time-spans tr a')].map(a => new URL(a.href).searchParams.get('span'))",
            vec![],
        )
        .await;
    assert_eq!(strings(&ranked).len(), 8, "{ranked}");
    let services = s
        .js(
            "return [...document.querySelectorAll('#self-time-services tr td:first-child')].map(td => td.textContent)",
            vec![],
        )
        .await;
    assert!(
        strings(&services).contains(&"payments".to_string()),
        "{services}"
    );
    let first = ranked[0].as_str().unwrap().to_owned();
    s.js("document.getElementById('self-time').open = true", vec![])
        .await;
    let link = s.find("#self-time-spans tr a").await;
    s.click(&link).await;
    s.wait_for(
        "span panel from the self-time table",
        &format!("const p = document.getElementById('span-panel'); return p && !p.hidden && p.dataset.spanId === '{first}'"),
        WAIT,
    )
    .await;
    // The failing INSERT row is marked as an error.
    let err_row = s.js(&format!("return document.querySelector('.row[data-span-id=\"{}\"]').classList.contains('error')", hex(&span_id(6))), vec![]).await;
    assert_eq!(err_row, json!(true));

    // ---- the span panel, by clicking the payments row
    let row = s
        .find(&format!(".row[data-span-id=\"{}\"]", hex(&span_id(5))))
        .await;
    s.click(&row).await;
    s.wait_for(
        "span panel",
        &format!(
            "const p = document.getElementById('span-panel'); return p && !p.hidden && p.dataset.spanId === '{}' && document.getElementById('panel-op')",
            hex(&span_id(5))
        ),
        WAIT,
    )
    .await;
    let panel = s
        .js(
            "return document.getElementById('span-panel').innerText",
            vec![],
        )
        .await;
    let panel = panel.as_str().unwrap();
    assert_eq!(
        s.js(
            "return document.getElementById('panel-op').textContent",
            vec![]
        )
        .await,
        json!("charge")
    );
    for needle in [
        "payments",
        "payment.amount",
        "42.00 EUR",
        "card authorized",
        "payments-7",
        "frontend-1=4,payments-7=1",
        "frontend-1=4,payments-7=2",
        "on the critical path",
        "server",
    ] {
        assert!(
            panel.contains(needle),
            "span panel lacks {needle:?}:\n{panel}"
        );
    }
    // The URL is a deep link to the span.
    assert!(
        s.url()
            .await
            .ends_with(&format!("?span={}", hex(&span_id(5))))
    );
    shot(&s, "02-trace-critical-path-and-span-panel").await;

    // Collapsing the charge hides its two children.
    let toggle = s
        .find(&format!(
            ".row[data-span-id=\"{}\"] .toggle",
            hex(&span_id(5))
        ))
        .await;
    s.click(&toggle).await;
    s.wait_for(
        "collapsed",
        "return document.querySelectorAll('#wf-scroll .row').length === 6",
        WAIT,
    )
    .await;

    // ---- deep link straight to a span
    s.goto(&format!("{base}/trace/{slow}?span={}", hex(&span_id(6))))
        .await;
    s.wait_for("deep-linked span", "const p = document.getElementById('span-panel'); return p && !p.hidden && document.getElementById('panel-op').textContent === 'INSERT payments'", WAIT).await;
    let status = s
        .js(
            "return document.getElementById('panel-status').textContent",
            vec![],
        )
        .await;
    assert_eq!(status, json!("ERROR: deadlock"));
    assert_eq!(
        s.js(&format!("return document.querySelector('.row[data-span-id=\"{}\"]').classList.contains('selected')", hex(&span_id(6))), vec![]).await,
        json!(true)
    );

    // ---- download the trace JSON, then upload it again
    let dl = s.js_async(
        // Catch the Blob and the anchor's click instead of saving a file
        // (the page's CSP would not let a script fetch the blob: URL).
        "const done = arguments[arguments.length - 1];
         const origUrl = URL.createObjectURL;
         let blob = null;
         URL.createObjectURL = (b) => { blob = b; return origUrl(b); };
         const orig = HTMLAnchorElement.prototype.click;
         HTMLAnchorElement.prototype.click = function () {
           if (!this.download) return orig.call(this);
           HTMLAnchorElement.prototype.click = orig;
           URL.createObjectURL = origUrl;
           blob.text().then(t => done({ name: this.download, text: t }), e => done({ error: String(e) }));
         };
         document.getElementById('download').click();",
        vec![],
    ).await;
    assert_eq!(dl["name"], json!(format!("trace-{slow}.json")));
    let bundle: Value = serde_json::from_str(dl["text"].as_str().unwrap()).unwrap();
    assert_eq!(bundle["format"], "clew-trace/v1");
    assert_eq!(bundle["trace"]["spans"].as_array().unwrap().len(), 8);
    assert!(bundle["analysis"]["bottlenecks"]["criticalPath"].is_array());
    let file = artifacts().join(format!("trace-{slow}.json"));
    std::fs::write(&file, dl["text"].as_str().unwrap()).unwrap();
    s.goto(&format!("{base}/dependencies")).await;
    let input = s.find("#upload").await;
    s.send_keys(&input, file.to_str().unwrap()).await;
    s.wait_for(
        "uploaded trace",
        "return location.pathname === '/trace/upload' && document.body.dataset.criticalSpans",
        WAIT,
    )
    .await;
    let critical = s.js("return [...document.querySelectorAll('#wf-scroll .row.critical')].map(r => r.dataset.spanId)", vec![]).await;
    assert_eq!(strings(&critical), span_hex(&CRITICAL));
    assert!(
        s.js(
            "return document.getElementById('trace-view').innerText",
            vec![]
        )
        .await
        .as_str()
        .unwrap()
        .contains("uploaded file")
    );
    // A file that is not a trace is refused with a message.
    let junk = artifacts().join("not-a-trace.json");
    std::fs::write(&junk, r#"{"hello": "world"}"#).unwrap();
    let input = s.find("#upload").await;
    s.send_keys(&input, junk.to_str().unwrap()).await;
    let msg = s
        .wait_for(
            "upload error",
            "const e = document.getElementById('error'); return !e.hidden && e.textContent",
            WAIT,
        )
        .await;
    assert!(
        msg.as_str()
            .unwrap()
            .contains("Cannot open not-a-trace.json: not a trace"),
        "{msg}"
    );

    // ---- clock skew: warning, evidence with raw timestamps, corrected view
    let skewed = hex(&trace_id(0x5e, 1));
    s.goto(&format!("{base}/trace/{skewed}")).await;
    s.wait_for(
        "skew warning",
        "return document.getElementById('skew-warning')",
        WAIT,
    )
    .await;
    let warning = s
        .js(
            "return document.getElementById('skew-warning').innerText",
            vec![],
        )
        .await;
    assert!(
        warning.as_str().unwrap().contains("backend by +15.000 ms"),
        "{warning}"
    );
    let summary = s.find("#skew-evidence summary").await;
    s.click(&summary).await;
    let evidence = s
        .js(
            "return document.getElementById('violations').innerText",
            vec![],
        )
        .await;
    let evidence = evidence.as_str().unwrap();
    assert!(
        evidence.contains("frontend: GET /report (start)")
            && evidence.contains("backend: build report (start)"),
        "{evidence}"
    );
    assert!(evidence.contains("b=1,f=2"), "{evidence}");
    // The backend span's panel shows its evidence with the raw timestamps.
    let row = s
        .find(&format!(".row[data-span-id=\"{}\"]", hex(&span_id(2))))
        .await;
    s.click(&row).await;
    let panel_skew = s
        .wait_for(
            "span skew evidence",
            "const e = document.getElementById('panel-skew'); return e && e.innerText",
            WAIT,
        )
        .await;
    assert!(
        panel_skew.as_str().unwrap().contains("backend start @ "),
        "{panel_skew}"
    );
    let bar_left = "return document.querySelector('.row[data-span-id=\"' + arguments[0] + '\"] .bar').style.left";
    // Recorded: backend starts first (0%), frontend 15 ms of 115 ms later.
    let raw_left = s.js(bar_left, vec![json!(hex(&span_id(1)))]).await;
    assert!(
        raw_left.as_str().unwrap().starts_with("13.04"),
        "{raw_left}"
    );
    let toggle = s.find("#toggle-corrected").await;
    s.click(&toggle).await;
    s.wait_for(
        "corrected banner",
        "return !document.getElementById('corrected-banner').hidden",
        WAIT,
    )
    .await;
    // Corrected (backend +15 ms): both start together.
    let corrected_left = s.js(bar_left, vec![json!(hex(&span_id(1)))]).await;
    assert_eq!(corrected_left, json!("0%"));
    shot(&s, "03-clock-skew-evidence").await;

    // ---- dependency graph with per-edge figures (via the nav link)
    let nav = s.find("#nav-deps").await;
    s.click(&nav).await;
    s.wait_for(
        "dependency graph",
        "return document.querySelectorAll('#depgraph .edge').length",
        WAIT,
    )
    .await;
    let edges = s
        .js(
            "return [...document.querySelectorAll('#depgraph .edge')].map(e => e.dataset.edge)",
            vec![],
        )
        .await;
    assert_eq!(
        strings(&edges),
        vec![
            "frontend>backend",
            "frontend>inventory",
            "frontend>payments",
            "gateway>worker-0",
            "gateway>worker-1",
            "gateway>worker-2",
            "gateway>worker-3",
            "gateway>worker-4",
            "payments>db",
            "worker-0>store",
            "worker-1>store",
            "worker-2>store",
            "worker-3>store",
            "worker-4>store"
        ]
    );
    let row = s
        .js(
            "return document.querySelector('#deps-table tr[data-edge=\"payments>db\"]').innerText",
            vec![],
        )
        .await;
    let row = row.as_str().unwrap();
    // 20 checkouts × 2 db calls; 3 failing INSERTs = 7.5 %
    assert!(row.contains("40") && row.contains("7.5%"), "{row}");
    let label = s.js("return document.querySelector('#depgraph text.edge-label[data-edge=\"payments>db\"]').textContent", vec![]).await;
    assert!(
        label
            .as_str()
            .unwrap()
            .starts_with("40 calls · 7.5% err · p95 "),
        "{label}"
    );
    shot(&s, "04-dependencies").await;

    // ---- service dashboard (click the payments node)
    let node = s.find("#depgraph .node[data-service=\"payments\"]").await;
    s.click(&node).await;
    s.wait_for(
        "RED charts",
        "return document.querySelectorAll('.red-series').length",
        WAIT,
    )
    .await;
    let series = s
        .js(
            "return [...document.querySelectorAll('.red-series')].map(e => e.dataset.operation)",
            vec![],
        )
        .await;
    assert_eq!(series, json!(["", "charge"]));
    assert!(
        s.js(
            "return document.querySelector('.red-series').innerText",
            vec![]
        )
        .await
        .as_str()
        .unwrap()
        .contains(&format!("{CHECKOUTS} requests"))
    );
    assert_eq!(
        s.js(
            "return document.querySelectorAll('.red-series polyline').length",
            vec![]
        )
        .await,
        json!(10)
    );
    shot(&s, "05-service-dashboard").await;

    // ---- anomalies and bottlenecks
    let anomalies = insights(&s, &format!("{base}/insights")).await;
    assert!(
        anomalies
            .iter()
            .any(|a| a
                .contains("db \"INSERT payments\" took 430.00 ms where it usually takes 30.00 ms")),
        "{anomalies:#?}"
    );
    shot(&s, "06-anomalies-and-bottlenecks").await;
    // One service's anomalies only.
    let kinds = insights(&s, &format!("{base}/insights?service=payments")).await;
    assert_eq!(kinds.len(), 1, "{kinds:#?}");
    assert!(
        kinds[0].contains("payments \"charge\" took 450.00 ms"),
        "{kinds:#?}"
    );
    // Each slow trace names where its self time went.
    let tops = s
        .js(
            "return [document.querySelectorAll('#bottlenecks .bottleneck').length, document.querySelectorAll('#bottlenecks .self-time-top').length]",
            vec![],
        )
        .await;
    assert_eq!(tops[0], tops[1], "{tops}");
    // The big trace has no payments span: only checkouts are listed.
    let listed = s.js("return [...document.querySelectorAll('#bottlenecks .bottleneck a')].map(a => a.textContent)", vec![]).await;
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t == "frontend: GET /checkout"),
        "{listed}"
    );

    // Every window choice is a valid query (7d is not a Go duration: the
    // pages send milliseconds).
    for (page, ready) in [
        ("/insights?lookback=7d", "#bottlenecks .bottleneck"),
        ("/dependencies?lookback=7d", "#depgraph .edge"),
        ("/services/payments?lookback=7d", ".red-series"),
    ] {
        s.goto(&format!("{base}{page}")).await;
        s.wait_for(
            page,
            &format!("return document.querySelector('{ready}')"),
            WAIT,
        )
        .await;
        let err = s
            .js("return document.getElementById('error').hidden", vec![])
            .await;
        assert_eq!(err, json!(true), "{page} shows an error");
    }

    // ---- collector errors are a clear message, never a blank page
    s.goto(&format!("{base}/trace/ffffffffffffffffffffffffffffffff"))
        .await;
    let msg = s
        .wait_for(
            "error message",
            "const e = document.getElementById('error'); return !e.hidden && e.textContent",
            WAIT,
        )
        .await;
    assert_eq!(msg, json!("The collector answered 404: trace not found"));
    no_page_errors(&s).await;

    // ---- the 10,000-span trace: time to first render, and staying responsive
    let big = hex(&trace_id(0xb1, 1));
    let started = Instant::now();
    s.goto(&format!("{base}/trace/{big}")).await;
    s.wait_for(
        "big trace rows",
        "return document.body.dataset.traceRenderMs",
        Duration::from_secs(60),
    )
    .await;
    let wall_ms = started.elapsed().as_millis();
    let t = s
        .js(
            "const nav = performance.getEntriesByType('navigation')[0];
         return { render: +document.body.dataset.traceRenderMs, fetch: +document.body.dataset.traceFetchMs,
                  sinceNavigation: performance.now(),
                  domRows: document.querySelectorAll('#wf-scroll .row').length,
                  spans: document.getElementById('trace-spans').textContent,
                  responseEnd: nav ? nav.responseEnd : null,
                  jsonBytes: performance.getEntriesByType('resource')
                    .filter(r => r.name.includes('/api/traces/')).map(r => r.decodedBodySize)[0] };",
            vec![],
        )
        .await;
    assert_eq!(t["spans"], json!("10000 spans"));
    let dom_rows = t["domRows"].as_u64().unwrap();
    assert!(
        dom_rows < 100,
        "rows are virtualized, {dom_rows} in the DOM"
    );
    s.wait_for(
        "big trace analysis",
        "return document.body.dataset.analysisRenderMs",
        Duration::from_secs(60),
    )
    .await;
    let analysis_ms = s
        .js("return +document.body.dataset.analysisRenderMs", vec![])
        .await;
    // Scroll to the middle: rows there render within a couple of frames.
    let scroll = s.js_async(
        "const done = arguments[arguments.length - 1];
         const sc = document.getElementById('wf-scroll');
         const t = performance.now();
         sc.scrollTop = sc.scrollHeight / 2;
         requestAnimationFrame(() => requestAnimationFrame(() => {
           const first = sc.querySelector('.row');
           done({ ms: performance.now() - t, top: first ? parseInt(first.style.top) : -1, scrollTop: sc.scrollTop });
         }));",
        vec![],
    ).await;
    assert!(scroll["top"].as_f64().unwrap() > 100_000.0, "{scroll}");
    // Collapse everything and expand again.
    let toggle = s.js_async(
        "const done = arguments[arguments.length - 1];
         const t = performance.now();
         document.getElementById('collapse-all').click();
         const collapsed = document.getElementById('wf-scroll').firstChild.style.height;
         document.getElementById('expand-all').click();
         requestAnimationFrame(() => done({ ms: performance.now() - t, collapsedHeight: collapsed }));",
        vec![],
    ).await;
    // Root and its 99 children.
    assert_eq!(toggle["collapsedHeight"], json!(format!("{}px", 100 * 24)));
    shot(&s, "07-big-trace").await;
    no_page_errors(&s).await;

    let timings = json!({
        "spans": 10_000,
        "firstRenderMs": t["render"],
        "traceJsonArrivedMs": t["fetch"],
        "traceJsonBytes": t["jsonBytes"],
        "firstRenderSinceNavigationMs": t["sinceNavigation"],
        "testWallClockMs": wall_ms as u64,
        "analysisShownMs": analysis_ms,
        "scrollToMiddleMs": scroll["ms"],
        "collapseExpandAllMs": toggle["ms"],
        "domRows": dom_rows,
    });
    println!("10,000-span trace timings: {timings}");
    std::fs::write(
        artifacts().join("big-trace-timings.json"),
        timings.to_string(),
    )
    .unwrap();
    // Responsive, with room for a debug build on a loaded 2-core machine
    // (measured there: first render 0.6–2.0 s, scroll 18–34 ms, collapse and
    // expand 13–56 ms; release: 0.24–0.41 s first render).
    let ms = |v: &Value| v.as_f64().unwrap_or(f64::INFINITY);
    assert!(
        ms(&t["sinceNavigation"]) < 10_000.0,
        "first render: {timings}"
    );
    assert!(
        ms(&scroll["ms"]) < 1_000.0,
        "scroll to the middle: {timings}"
    );
    assert!(
        ms(&toggle["ms"]) < 2_000.0,
        "collapse and expand all: {timings}"
    );
    s.close().await;
}
