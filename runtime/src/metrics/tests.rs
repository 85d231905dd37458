use super::{Described, Kind, Registry, check_catalogue};

fn described(name: &str, kind: Kind, labels: &[&str]) -> Described {
    Described {
        name: name.to_string(),
        kind,
        labels: labels.iter().map(|l| l.to_string()).collect(),
    }
}

fn small_registry() -> Registry {
    let r = Registry::new();
    r.counter("t_requests_total", "Requests.").inc();
    r.counter_vec("t_errors_total", "Errors.", &["reason"]);
    r.gauge("t_open", "Open.").set(3);
    r.histogram("t_seconds", "Latency.", &[0.1, 1.0])
        .observe(0.5);
    r
}

const CATALOGUE: &str = "\
# Metrics

## small (the test's)

| metric | type | labels | meaning |
|---|---|---|---|
| `t_requests_total` | counter | — | Requests served. |
| `t_errors_total` | counter | `reason` | Errors, by reason. |
| `t_open` | gauge | — | Open things. |
| `t_seconds` | histogram | — | Latency. |

## other

| metric | type | labels | meaning |
|---|---|---|---|
| `t_other_total` | counter | — | Not this registry's. |
";

#[test]
fn the_registry_registers_renders_and_remembers_every_kind() {
    let r = small_registry();
    r.float_counter("t_busy_seconds_total", "Busy.")
        .inc_by(0.25);
    r.gauge_vec("t_up", "Up.", &["peer"])
        .with_label_values(&["a"])
        .set(1);
    r.histogram_vec("t_wait_seconds", "Wait.", &[1.0], &["code"]);
    let text = r.render();
    for line in [
        "# TYPE t_requests_total counter",
        "t_requests_total 1",
        "t_open 3",
        "t_busy_seconds_total 0.25",
        "t_up{peer=\"a\"} 1",
        "t_seconds_bucket{le=\"1\"} 1",
    ] {
        assert!(text.contains(line), "{line:?} missing from\n{text}");
    }
    assert_eq!(
        r.described(),
        vec![
            described("t_busy_seconds_total", Kind::Counter, &[]),
            described("t_errors_total", Kind::Counter, &["reason"]),
            described("t_open", Kind::Gauge, &[]),
            described("t_requests_total", Kind::Counter, &[]),
            described("t_seconds", Kind::Histogram, &[]),
            described("t_up", Kind::Gauge, &["peer"]),
            described("t_wait_seconds", Kind::Histogram, &["code"]),
        ]
    );
}

#[test]
fn a_const_label_is_on_every_metric_and_not_in_the_catalogue() {
    let r = Registry::with_const_label("service", "a");
    r.counter_vec("t_errors_total", "Errors.", &["reason"])
        .with_label_values(&["x"])
        .inc();
    assert!(
        r.render()
            .contains("t_errors_total{reason=\"x\",service=\"a\"} 1")
    );
    let doc = "## c\n\n| metric | type | labels | meaning |\n|---|---|---|---|\n\
               | `t_errors_total` | counter | `reason` | Errors. |\n";
    assert_eq!(check_catalogue(doc, "c", &r), Ok(()));
}

#[test]
#[should_panic(expected = "invalid metric definition")]
fn registering_a_name_twice_is_a_bug() {
    let r = Registry::new();
    r.counter("t_total", "Once.");
    r.counter("t_total", "Twice.");
}

#[test]
fn a_catalogue_that_matches_passes() {
    assert_eq!(
        check_catalogue(CATALOGUE, "small", &small_registry()),
        Ok(())
    );
}

#[test]
fn the_catalogue_check_names_each_disagreement() {
    let check = |doc: &str| check_catalogue(doc, "small", &small_registry()).unwrap_err();
    let renamed = CATALOGUE.replace("`t_open`", "`t_opened`");
    assert_eq!(
        check(&renamed),
        [
            "`t_open` is registered but has no row",
            "row `t_opened` is not registered"
        ]
    );
    let dropped = CATALOGUE.replace("| `t_seconds` | histogram | — | Latency. |\n", "");
    assert_eq!(
        check(&dropped),
        ["`t_seconds` is registered but has no row"]
    );
    let retyped = CATALOGUE.replace("| `t_open` | gauge", "| `t_open` | counter");
    assert_eq!(
        check(&retyped),
        ["`t_open` is a gauge, its row says counter"]
    );
    let relabelled = CATALOGUE.replace("`reason`", "`kind`");
    assert_eq!(
        check(&relabelled),
        ["`t_errors_total` has labels [\"reason\"], its row says [\"kind\"]"]
    );
    assert_eq!(
        check(CATALOGUE.replace("## small", "## big").as_str()),
        ["no `## small` heading"]
    );
}

#[test]
fn connection_metrics_match_the_catalogue() {
    let conns = crate::net::ConnMetrics::new();
    super::catalogue_check("connections", &conns.registry);
}
