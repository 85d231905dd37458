//! Reading traces back through the collector's Jaeger-compatible API.

use std::collections::BTreeMap;

use anyhow::Context as _;

use crate::http::HttpClient;

/// One span, as the checks need it.
#[derive(Debug, Clone, PartialEq)]
pub struct SpanView {
    /// Hex span id.
    pub span_id: String,
    /// Hex parent span id (`CHILD_OF` reference), if any.
    pub parent: Option<String>,
    /// Service name of the span's process.
    pub service: String,
    /// Operation name.
    pub operation: String,
    /// Vector clock at start (`node=counter,...`).
    pub clock_start: Option<String>,
    /// Vector clock at end.
    pub clock_end: Option<String>,
}

/// Fetches trace `id` from the query API at `base` (`http://host:port`);
/// `None` when it is not stored (404).
pub async fn trace(
    http: &HttpClient,
    base: &str,
    id: &str,
) -> anyhow::Result<Option<Vec<SpanView>>> {
    let a = http.get(&format!("{base}/api/traces/{id}")).await?;
    if a.status == 404 {
        return Ok(None);
    }
    anyhow::ensure!(a.status == 200, "GET trace {id}: {} {}", a.status, a.body);
    let v = a.json()?;
    let t = v["data"]
        .get(0)
        .with_context(|| format!("no data in {}", a.body))?;
    let processes = &t["processes"];
    let mut out = Vec::new();
    for s in t["spans"].as_array().context("spans")? {
        let tag = |k: &str| {
            s["tags"].as_array().and_then(|tags| {
                tags.iter()
                    .find(|x| x["key"] == k)
                    .and_then(|x| x["value"].as_str())
                    .map(str::to_string)
            })
        };
        let parent = s["references"].as_array().and_then(|r| {
            r.iter()
                .find(|x| x["refType"] == "CHILD_OF")
                .and_then(|x| x["spanID"].as_str())
                .map(str::to_string)
        });
        let pid = s["processID"].as_str().unwrap_or_default();
        out.push(SpanView {
            span_id: s["spanID"].as_str().unwrap_or_default().to_string(),
            parent,
            service: processes[pid]["serviceName"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            operation: s["operationName"].as_str().unwrap_or_default().to_string(),
            clock_start: tag("clew.clock.start"),
            clock_end: tag("clew.clock.end"),
        });
    }
    Ok(Some(out))
}

/// A parsed vector clock.
pub fn parse_clock(s: &str) -> BTreeMap<String, u64> {
    s.split(',')
        .filter_map(|e| {
            let (k, v) = e.split_once('=')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

/// `a ≤ b` entry by entry (a happened before or equals b).
pub fn clock_le(a: &BTreeMap<String, u64>, b: &BTreeMap<String, u64>) -> bool {
    a.iter().all(|(k, v)| b.get(k).is_some_and(|w| v <= w))
}

/// Checks a trace's structure: one root, every parent present, span ids
/// unique, and vector clocks causally ordered along every parent → child
/// edge (child starts after its parent starts and ends before it ends;
/// strictly across services). Returns a description of the first problem.
pub fn check_causal(spans: &[SpanView]) -> Result<(), String> {
    let mut ids = std::collections::HashSet::new();
    for s in spans {
        if !ids.insert(s.span_id.as_str()) {
            return Err(format!("span {} stored twice", s.span_id));
        }
    }
    let roots = spans.iter().filter(|s| s.parent.is_none()).count();
    if roots != 1 {
        return Err(format!("{roots} root spans"));
    }
    for c in spans {
        let Some(pid) = &c.parent else { continue };
        let p = spans
            .iter()
            .find(|s| &s.span_id == pid)
            .ok_or_else(|| format!("parent {pid} of {} missing", c.operation))?;
        let clocks = (
            p.clock_start.as_deref().map(parse_clock),
            c.clock_start.as_deref().map(parse_clock),
            c.clock_end.as_deref().map(parse_clock),
            p.clock_end.as_deref().map(parse_clock),
        );
        let (Some(ps), Some(cs), Some(ce), Some(pe)) = clocks else {
            return Err(format!("{} or its parent has no vector clock", c.operation));
        };
        if !clock_le(&ps, &cs) {
            return Err(format!(
                "{} starts before its parent {}",
                c.operation, p.operation
            ));
        }
        if !clock_le(&ce, &pe) {
            return Err(format!(
                "{} ends after its parent {}",
                c.operation, p.operation
            ));
        }
        if c.service != p.service && (ps == cs || ce == pe) {
            return Err(format!(
                "{} → {} crosses services without a clock tick",
                p.service, c.service
            ));
        }
    }
    Ok(())
}

/// Polls until trace `id` has `want` spans (or `timeout` passes, returning
/// what was last seen, `None` if nothing).
pub async fn wait_for_spans(
    http: &HttpClient,
    base: &str,
    id: &str,
    want: usize,
    timeout: std::time::Duration,
) -> Option<Vec<SpanView>> {
    let deadline = std::time::Instant::now() + timeout;
    let mut last = None;
    loop {
        if let Ok(Some(s)) = trace(http, base, id).await {
            let done = s.len() >= want;
            last = Some(s);
            if done {
                return last;
            }
        }
        if std::time::Instant::now() >= deadline {
            return last;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// How the stored spans of a set of traces compare with what was expected.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    /// Spans expected.
    pub expected: u64,
    /// Expected spans found (each counted once).
    pub stored: u64,
    /// Expected spans not found.
    pub missing: u64,
    /// Extra copies of a span id within its trace.
    pub duplicates: u64,
    /// Spans found that were not expected.
    pub unexpected: u64,
    /// Traces the query API could not be asked about (errors, not 404s).
    pub errors: u64,
}

/// Reads each of `traces` (hex trace id, its hex span ids) from the query
/// API at `base`, `workers` at a time, and counts what is missing or
/// stored more than once.
pub async fn tally(
    http: &HttpClient,
    base: &str,
    traces: Vec<(String, Vec<String>)>,
    workers: usize,
) -> Tally {
    let traces = std::sync::Arc::new(traces);
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..workers.max(1) {
        let (http, base, traces, next) =
            (http.clone(), base.to_string(), traces.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut t = Tally::default();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some((id, want)) = traces.get(i) else {
                    return t;
                };
                t.expected += want.len() as u64;
                let found = match trace(&http, &base, id).await {
                    Ok(found) => found.unwrap_or_default(),
                    Err(_) => {
                        t.errors += 1;
                        t.missing += want.len() as u64;
                        continue;
                    }
                };
                let mut seen: BTreeMap<&str, u64> = BTreeMap::new();
                for s in &found {
                    *seen.entry(s.span_id.as_str()).or_default() += 1;
                }
                for w in want {
                    match seen.remove(w.as_str()) {
                        Some(n) => {
                            t.stored += 1;
                            t.duplicates += n - 1;
                        }
                        None => t.missing += 1,
                    }
                }
                t.unexpected += seen.values().sum::<u64>();
            }
        }));
    }
    let mut all = Tally::default();
    for task in tasks {
        if let Ok(t) = task.await {
            all.expected += t.expected;
            all.stored += t.stored;
            all.missing += t.missing;
            all.duplicates += t.duplicates;
            all.unexpected += t.unexpected;
            all.errors += t.errors;
        }
    }
    all
}

/// The value of metric `name` (summed over its label sets) in the
/// Prometheus text at `{ops}/metrics`; `None` when it cannot be read.
pub async fn metric(http: &HttpClient, ops: &str, name: &str) -> Option<f64> {
    let a = http.get(&format!("{ops}/metrics")).await.ok()?;
    if a.status != 200 {
        return None;
    }
    let mut found = None;
    for line in a.body.lines() {
        let series = line.split([' ', '{']).next().unwrap_or_default();
        if series == name
            && let Some(v) = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok())
        {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}
