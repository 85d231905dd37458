//! The browser tests' fixture: the collector's query API over the known
//! traces, the visualizer in front of it and a headless Chromium driven
//! through chromedriver, plus the queries the scenarios share.
//!
//! Each scenario is its own `#[tokio::test]` (its own process under
//! nextest); they take turns through a lock file, so one Chromium runs at a
//! time and the render timings are not measured against another browser.

use std::fs::File;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};

use super::webdriver::{Driver, Session};

/// How long a page may take to show what a scenario waits for.
pub const WAIT: Duration = Duration::from_secs(20);

/// Where screenshots and timings go: `$CARGO_TARGET_DIR/clew-artifacts/visualizer/`
/// (or `target/clew-artifacts/visualizer/`).
pub fn artifacts() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let dir = target.join("clew-artifacts").join("visualizer");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A running visualizer and chromedriver; dropping it stops chromedriver
/// and lets the next scenario start.
pub struct Ui {
    /// `http://127.0.0.1:<port>` of the visualizer.
    pub base: String,
    driver: Driver,
    _turn: File,
}

impl Ui {
    /// Waits for its turn, then starts the collector, the visualizer and
    /// chromedriver.
    pub async fn start() -> Ui {
        Self::start_with(&[]).await
    }

    /// [`start`](Self::start) with the visualizer's `flags` (its
    /// authentication: `--query-token-file`, ...).
    pub async fn start_with(flags: &[&str]) -> Ui {
        Self::start_over(super::known_storage().await, flags).await
    }

    /// [`start_with`](Self::start_with) over `storage`.
    pub async fn start_over(
        storage: std::sync::Arc<clew_collector::storage::memory::MemoryStorage>,
        flags: &[&str],
    ) -> Ui {
        let file = File::create(artifacts().join(".browser-tests.lock")).unwrap();
        let turn = tokio::task::spawn_blocking(move || file.lock().map(|()| file))
            .await
            .unwrap()
            .unwrap();
        let collector = super::collector(storage).await;
        let mut args = vec!["clew-visualizer"];
        args.extend_from_slice(flags);
        let config = <clew_visualizer::Config as clap::Parser>::try_parse_from(args).unwrap();
        let state = super::state(collector).with_auth(&config).await.unwrap();
        let ui = super::serve(clew_visualizer::app(state)).await;
        Ui {
            base: format!("http://{ui}"),
            driver: Driver::start().await,
            _turn: turn,
        }
    }

    /// A new browser session on `path` (e.g. `/search`).
    pub async fn open(&self, path: &str) -> Session<'_> {
        let s = self.driver.session().await;
        s.goto(&self.url(path)).await;
        s
    }

    /// The visualizer's URL of `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

/// Asserts the page threw nothing, then closes the session.
pub async fn finish(s: Session<'_>) {
    let errs = s.js("return window.__clewErrors || []", vec![]).await;
    assert_eq!(errs, json!([]), "JavaScript errors on the page");
    s.close().await;
}

/// Saves a screenshot as `<name>.png` in [`artifacts`].
pub async fn shot(s: &Session<'_>, name: &str) {
    s.screenshot(&artifacts().join(format!("{name}.png"))).await;
}

/// How many elements match `css`.
pub async fn count(s: &Session<'_>, css: &str) -> Value {
    s.js(
        "return document.querySelectorAll(arguments[0]).length",
        vec![json!(css)],
    )
    .await
}

/// Waits until `css` matches at least one element.
pub async fn wait_for_css(s: &Session<'_>, what: &str, css: &str) {
    let script = format!("return document.querySelector({})", json!(css));
    s.wait_for(what, &script, WAIT).await;
}

/// The `innerText` of the element with `id`.
pub async fn text_of(s: &Session<'_>, id: &str) -> String {
    let v = s
        .js(
            "return document.getElementById(arguments[0]).innerText",
            vec![json!(id)],
        )
        .await;
    v.as_str().unwrap().to_owned()
}

/// The text of the error banner once it shows.
pub async fn banner(s: &Session<'_>) -> String {
    let v = s
        .wait_for(
            "error message",
            "const e = document.getElementById('error'); return !e.hidden && e.textContent",
            WAIT,
        )
        .await;
    v.as_str().unwrap().to_owned()
}

/// A JSON array of strings, sorted.
pub fn strings(v: &Value) -> Vec<String> {
    let mut out: Vec<String> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap().to_owned())
        .collect();
    out.sort();
    out
}

/// The `data-span-id`s of the waterfall rows matching `rows` (a selector
/// within `#wf-scroll`), sorted.
pub async fn row_ids(s: &Session<'_>, rows: &str) -> Vec<String> {
    let v = s
        .js(
            "return [...document.querySelectorAll('#wf-scroll ' + arguments[0])].map(r => r.dataset.spanId)",
            vec![json!(rows)],
        )
        .await;
    strings(&v)
}

/// Span IDs `ns` in hex, sorted.
pub fn span_hex(ns: &[u16]) -> Vec<String> {
    let mut v: Vec<String> = ns.iter().map(|n| super::hex(&super::span_id(*n))).collect();
    v.sort();
    v
}

/// The CSS selector of span `n`'s waterfall row.
pub fn row_of(n: u16) -> String {
    format!(".row[data-span-id=\"{}\"]", super::hex(&super::span_id(n)))
}

/// Waits until the span panel shows span `n`.
pub async fn wait_for_panel(s: &Session<'_>, n: u16) {
    let id = super::hex(&super::span_id(n));
    let script = format!(
        "const p = document.getElementById('span-panel'); return p && !p.hidden && p.dataset.spanId === '{id}' && document.getElementById('panel-op')"
    );
    s.wait_for("span panel", &script, WAIT).await;
}
