//! The aggregator: counts, buckets, the overflow series, escaping.

use clew_proto::v1::{Span, Status, status};

use super::*;

fn span(service: &str, name: &str, kind: i32, code: status::Code, ms: f64) -> Span {
    let start = 1_000_000_000u64;
    Span {
        service: service.into(),
        name: name.into(),
        kind,
        start_time_unix_nano: start,
        end_time_unix_nano: start + (ms * 1e6) as u64,
        status: Some(Status {
            code: code as i32,
            message: String::new(),
        }),
        ..Default::default()
    }
}

fn render(m: &SpanMetrics) -> String {
    let mut out = String::new();
    m.render_into(&mut out);
    out
}

/// The sample lines of `text` whose name and labels start with `prefix`.
fn value(text: &str, series: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
        .to_owned()
}

const SERVER: i32 = 2;
const CLIENT: i32 = 3;

#[test]
fn nothing_is_rendered_before_the_first_span() {
    assert_eq!(render(&SpanMetrics::new(10)), "");
}

#[test]
fn calls_and_buckets_per_series() {
    let m = SpanMetrics::new(0);
    m.record(&[
        span("api", "GET /", SERVER, status::Code::Unset, 1.0),
        span("api", "GET /", SERVER, status::Code::Unset, 2.0),
        span("api", "GET /", SERVER, status::Code::Unset, 45.0),
        span("api", "GET /", SERVER, status::Code::Error, 20_000.0),
        span("api", "db", CLIENT, status::Code::Ok, 3.0),
    ]);
    let t = render(&m);
    let ok = r#"service_name="api",span_name="GET /",span_kind="SPAN_KIND_SERVER",status_code="STATUS_CODE_UNSET""#;
    assert_eq!(value(&t, &format!("{CALLS}{{{ok}}}")), "3");
    // 1 and 2 ms are <= 2 (le is inclusive), 45 ms <= 50.
    let bucket = |le: &str| value(&t, &format!("{DURATION}_bucket{{{ok},le=\"{le}\"}}"));
    assert_eq!(bucket("2"), "2");
    assert_eq!(bucket("4"), "2");
    assert_eq!(bucket("10"), "2");
    assert_eq!(bucket("50"), "3");
    assert_eq!(bucket("15000"), "3");
    assert_eq!(bucket("+Inf"), "3");
    assert_eq!(value(&t, &format!("{DURATION}_sum{{{ok}}}")), "48");
    assert_eq!(value(&t, &format!("{DURATION}_count{{{ok}}}")), "3");
    let err = ok.replace("STATUS_CODE_UNSET", "STATUS_CODE_ERROR");
    assert_eq!(value(&t, &format!("{CALLS}{{{err}}}")), "1");
    // 20 s is above every bound: only +Inf has it.
    let b = |le: &str| value(&t, &format!("{DURATION}_bucket{{{err},le=\"{le}\"}}"));
    assert_eq!(b("15000"), "0");
    assert_eq!(b("+Inf"), "1");
    let db = r#"service_name="api",span_name="db",span_kind="SPAN_KIND_CLIENT",status_code="STATUS_CODE_OK""#;
    assert_eq!(value(&t, &format!("{CALLS}{{{db}}}")), "1");
    assert_eq!(m.series(), 3);
    // Every bound once per series, plus +Inf, _sum and _count.
    let lines = t.lines().filter(|l| l.starts_with(DURATION)).count();
    assert_eq!(lines, 3 * (BUCKETS_MS.len() + 3));
    assert!(t.contains(&format!("# TYPE {CALLS} counter\n")));
    assert!(t.contains(&format!("# TYPE {DURATION} histogram\n")));
}

#[test]
fn an_end_before_the_start_counts_as_zero_and_unknown_kinds_as_unspecified() {
    let m = SpanMetrics::new(0);
    let mut s = span("a", "b", 42, status::Code::Unset, 0.0);
    s.end_time_unix_nano = s.start_time_unix_nano - 5;
    s.status = None;
    m.record(&[s]);
    let t = render(&m);
    let l = r#"service_name="a",span_name="b",span_kind="SPAN_KIND_UNSPECIFIED",status_code="STATUS_CODE_UNSET""#;
    assert_eq!(
        value(&t, &format!("{DURATION}_bucket{{{l},le=\"2\"}}")),
        "1"
    );
    assert_eq!(value(&t, &format!("{DURATION}_sum{{{l}}}")), "0");
}

#[test]
fn past_the_limit_new_series_fold_into_one_overflow_series() {
    // 3 places: two series and the overflow series.
    let m = SpanMetrics::new(3);
    let s = |name: &str, ms: f64| span("svc", name, SERVER, status::Code::Unset, ms);
    m.record(&[
        s("a", 1.0),
        s("b", 1.0),
        s("c", 3.0),
        s("d", 60.0),
        s("a", 1.0),
    ]);
    let t = render(&m);
    let series = |name: &str| {
        format!(
            r#"service_name="svc",span_name="{name}",span_kind="SPAN_KIND_SERVER",status_code="STATUS_CODE_UNSET""#
        )
    };
    // A series present before the limit keeps counting.
    assert_eq!(value(&t, &format!("{CALLS}{{{}}}", series("a"))), "2");
    assert_eq!(value(&t, &format!("{CALLS}{{{}}}", series("b"))), "1");
    assert!(!t.contains("span_name=\"c\""), "{t}");
    assert!(!t.contains("span_name=\"d\""), "{t}");
    assert_eq!(
        value(&t, &format!("{CALLS}{{{OVERFLOW_LABEL}=\"true\"}}")),
        "2"
    );
    let o = format!("{DURATION}_bucket{{{OVERFLOW_LABEL}=\"true\",le=");
    assert_eq!(value(&t, &format!("{o}\"4\"}}")), "1");
    assert_eq!(value(&t, &format!("{o}\"100\"}}")), "2");
    assert_eq!(
        value(&t, &format!("{DURATION}_sum{{{OVERFLOW_LABEL}=\"true\"}}")),
        "63"
    );
    assert_eq!(m.series(), 3);
    // The overflow series renders last.
    let last_calls = t.lines().rfind(|l| l.starts_with(CALLS)).unwrap();
    assert!(last_calls.contains(OVERFLOW_LABEL), "{last_calls}");
}

#[test]
fn a_limit_of_zero_is_no_limit() {
    let m = SpanMetrics::new(0);
    let spans: Vec<Span> = (0..100)
        .map(|i| span("s", &format!("op{i}"), SERVER, status::Code::Unset, 1.0))
        .collect();
    m.record(&spans);
    assert_eq!(m.series(), 100);
    assert!(!render(&m).contains(OVERFLOW_LABEL));
}

#[test]
fn label_values_are_escaped() {
    let m = SpanMetrics::new(0);
    m.record(&[span(
        "we\\ird",
        "say \"hi\"\nthen",
        SERVER,
        status::Code::Unset,
        1.0,
    )]);
    let t = render(&m);
    assert!(
        t.contains(r#"service_name="we\\ird",span_name="say \"hi\"\nthen","#),
        "{t}"
    );
    // Each sample stays on one line.
    assert!(
        t.lines()
            .all(|l| l.starts_with('#') || l.starts_with("traces_")),
        "{t}"
    );
}

/// Spans added to the assembler are counted once; replayed records are
/// not (the run that accepted them counted them).
#[tokio::test]
async fn added_records_count_and_replayed_ones_do_not() {
    use std::sync::Arc;

    use crate::assembly::{Assembler, AssemblerConfig};
    use crate::sink::StorageSink;
    use crate::storage::memory::MemoryStorage;
    use clew_proto::v1::ExportRequest;

    use crate::wal::{Wal, tests};

    let config = || AssemblerConfig {
        idle_window: std::time::Duration::from_secs(3600),
        ..AssemblerConfig::default()
    };
    let sink = || Arc::new(StorageSink::new(Arc::new(MemoryStorage::new(1_000))));
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), tests::fast_config()).unwrap();
    let asm = Assembler::new(config(), sink(), wal).unwrap();
    let counted = Arc::new(SpanMetrics::new(0));
    asm.set_span_metrics(Arc::clone(&counted));
    for b in 0..2 {
        let spans = (0..3).map(|i| tests::span(b, b * 10 + i)).collect();
        asm.ingest(ExportRequest { spans }).await.unwrap();
    }
    let calls = |m: &SpanMetrics| -> u64 {
        render(m)
            .lines()
            .filter(|l| l.starts_with(CALLS))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
            .sum()
    };
    assert_eq!(calls(&counted), 6);

    // kill -9, then a new process replays both records.
    let crashed = tempfile::tempdir().unwrap();
    tests::snapshot(dir.path(), crashed.path());
    drop(asm);
    let (wal, replay) = Wal::open(crashed.path(), tests::fast_config()).unwrap();
    assert_eq!(replay.len(), 2);
    let asm = Assembler::new(config(), sink(), wal).unwrap();
    let fresh = Arc::new(SpanMetrics::new(0));
    asm.set_span_metrics(Arc::clone(&fresh));
    asm.replay(replay);
    assert_eq!(fresh.series(), 0);
    assert_eq!(render(&fresh), "");
    // What this process accepts counts.
    let spans = vec![tests::span(9, 90)];
    asm.ingest(ExportRequest { spans }).await.unwrap();
    assert_eq!(calls(&fresh), 1);
}

/// `docs/METRICS.md` lists both families with the labels they render.
#[test]
fn the_catalogue_lists_the_families_with_their_labels() {
    let m = SpanMetrics::new(0);
    m.record(&[span("s", "n", SERVER, status::Code::Ok, 1.0)]);
    let t = render(&m);
    let line = t.lines().find(|l| l.starts_with(CALLS)).unwrap();
    let inside = &line[line.find('{').unwrap() + 1..line.rfind('}').unwrap()];
    let names: Vec<&str> = inside
        .split(',')
        .map(|kv| kv.split('=').next().unwrap())
        .collect();
    let r = clew_runtime::metrics::Registry::new();
    r.counter_vec(CALLS, "calls", &names);
    r.histogram_vec(DURATION, "duration", &BUCKETS_MS, &names);
    clew_runtime::metrics::catalogue_check("collector span metrics", &r);
}
