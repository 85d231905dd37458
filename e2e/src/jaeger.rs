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
