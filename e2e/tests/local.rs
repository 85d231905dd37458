#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The local all-in-one (`clew-local`), as a user runs it: start it, make
//! a request to service A, find that request's trace through the query API
//! with spans from all three services, parent links and vector clocks in
//! causal order; stop it with Ctrl-C (SIGINT); start it again and find the
//! earlier trace.

use std::collections::BTreeSet;
use std::time::Duration;

use clew_e2e::http::HttpClient;
use clew_e2e::jaeger::{check_causal, trace, wait_for_spans};
use clew_e2e::proc::{Proc, wait_for};

fn offset() -> u16 {
    // A free block of ports: all of clew-local's ports shifted by the same
    // offset (probed on the busiest one, 16686 + offset).
    for _ in 0..50 {
        let p = clew_e2e::free_port();
        if (20000..45000).contains(&p) {
            return p - 16686;
        }
    }
    panic!("no free port block");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_in_one_serves_the_trace_of_a_request_and_keeps_it_across_restarts() {
    let dir = tempfile_dir();
    let off = offset();
    let args = vec![
        format!("--data-dir={}", dir.display()),
        format!("--port-offset={off}"),
        "--rps=2".to_string(),
    ];
    let log = dir.join("clew-local.out");
    std::fs::create_dir_all(&dir).unwrap();
    let mut local = Proc::spawn("clew-local", "clew-local", &args, &[], Some(&log)).unwrap();
    let http = HttpClient::default();
    let a = format!("http://127.0.0.1:{}", 8000 + off);
    let query = format!("http://127.0.0.1:{}", 16686 + off);
    let search = format!("{a}/api/v1/search?q=example");
    let started = wait_for("clew-local to start", Duration::from_secs(90), || async {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("clew is running")
    })
    .await;
    if let Err(e) = started {
        panic!("{e}\n{}", std::fs::read_to_string(&log).unwrap_or_default());
    }

    // clew-local injects a 1% error rate into service B (so the analysis
    // has errors to find): a request may fail by design, the next succeeds.
    let mut resp = http.get(&search).await.unwrap();
    for _ in 0..10 {
        if resp.status == 200 {
            break;
        }
        assert_eq!(resp.status, 502, "{}", resp.body);
        resp = http.get(&search).await.unwrap();
    }
    assert_eq!(resp.status, 200, "{}", resp.body);
    let body = resp.json().unwrap();
    let id = body["trace_id"].as_str().unwrap().to_string();
    assert_eq!(resp.trace_id.as_deref(), Some(id.as_str()));
    assert!(!body["results"].as_array().unwrap().is_empty());

    // A search: A's server span, its client call to B, B's server span,
    // three shard lookups (client + server + scan each), and the ranking.
    let spans = wait_for_spans(&http, &query, &id, 13, Duration::from_secs(30))
        .await
        .expect("trace stored");
    assert_eq!(spans.len(), 13, "{spans:#?}");
    let services: BTreeSet<&str> = spans.iter().map(|s| s.service.as_str()).collect();
    assert_eq!(
        services,
        BTreeSet::from(["service-a", "service-b", "service-c"])
    );
    check_causal(&spans).unwrap();
    let root = spans.iter().find(|s| s.parent.is_none()).unwrap();
    assert_eq!(
        (root.service.as_str(), root.operation.as_str()),
        ("service-a", "GET /api/v1/search")
    );
    let lookups = spans
        .iter()
        .filter(|s| s.service == "service-c" && s.operation.ends_with("Data/Lookup"))
        .count();
    assert_eq!(lookups, 3, "search fans out to the three shards");

    // The visualizer is up and reads the same data through its proxy.
    let viz = format!("http://127.0.0.1:{}", 8080 + off);
    let page = http.get(&format!("{viz}/")).await.unwrap();
    assert_eq!(page.status, 200);
    assert!(page.body.to_lowercase().contains("<html"), "{}", page.body);
    let services = http.get(&format!("{viz}/api/services")).await.unwrap();
    assert_eq!(services.status, 200, "{}", services.body);
    assert!(services.body.contains("service-a"), "{}", services.body);

    // Ctrl-C, as a terminal sends it (to the whole foreground process
    // group): everything stops cleanly, the collector last.
    local.signal_group("INT").await.unwrap();
    assert!(local.wait_exit(Duration::from_secs(60)).await.unwrap());
    let out = std::fs::read_to_string(&log).unwrap();
    let at = |what: &str| out.find(what).unwrap_or_else(|| panic!("{what}: {out}"));
    for service in ["service-a", "service-b", "service-c"] {
        assert!(
            at(&format!("stopped {service}")) < at("stopped collector"),
            "{out}"
        );
    }

    // A second start finds the earlier data.
    local.restart().unwrap();
    wait_for("the second start", Duration::from_secs(90), || async {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .matches("clew is running")
            .count()
            == 2
    })
    .await
    .unwrap();
    let again = trace(&http, &query, &id)
        .await
        .unwrap()
        .expect("trace kept");
    assert_eq!(again.len(), 13);
    local.signal("INT").await.unwrap();
    assert!(local.wait_exit(Duration::from_secs(60)).await.unwrap());
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempfile_dir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("clew-local-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}
