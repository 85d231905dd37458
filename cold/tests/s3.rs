#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The cold tier on a real S3 server (s3s-fs on loopback): blocks written
//! through S3's API are found by trace id and by search, maintained, and
//! a wrong secret is refused; the conformance suite runs on it unchanged.

mod common;

use std::sync::Arc;
use std::time::Duration;

use clew_cold::block::{self, BlockOptions};
use clew_cold::maintain::MaintainOptions;
use clew_cold::read::ColdStore;
use clew_proto::v1::{FilterCriteria, Span};
use common::S3Server;

fn spans(traces: u8) -> Vec<Span> {
    (1..=traces)
        .flat_map(|t| {
            (0..3u8).map(move |n| Span {
                trace_id: vec![t; 16],
                span_id: vec![n + 1; 8],
                parent_span_id: if n == 0 { Vec::new() } else { vec![n; 8] },
                name: format!("op-{n}"),
                service: format!("svc-{n}"),
                start_time_unix_nano: 1_750_000_000_000_000_000
                    + u64::from(t) * 1_000_000
                    + u64::from(n),
                end_time_unix_nano: 1_750_000_000_000_000_000 + u64::from(t) * 1_000_000 + 10,
                ..Span::default()
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocks_on_s3_are_written_found_and_maintained() {
    let s3 = S3Server::start("traces");
    let (store, prefix) = clew_cold::url::open(&s3.target("s3://traces/cold/prod")).unwrap();
    let all = spans(30);
    for chunk in all.chunks(30) {
        block::write(
            &store,
            &prefix,
            chunk.to_vec(),
            vec![],
            &BlockOptions::default(),
        )
        .await
        .unwrap();
    }
    // The objects are where the URL says, in the server's directory.
    let on_disk = walk(&s3.root.path().join("traces/cold/prod/blocks"));
    assert_eq!(
        on_disk.iter().filter(|p| p.ends_with("meta.json")).count(),
        3
    );
    let cold = ColdStore::new(Arc::clone(&store), prefix.clone());
    assert_eq!(cold.refresh().await.unwrap().len(), 3);
    let got = cold.trace_spans(&[7; 16]).await.unwrap();
    assert_eq!(got.len(), 3);
    let found = cold
        .search(&FilterCriteria {
            service: "svc-2".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(found.len(), 30);
    let options = MaintainOptions {
        compact_below_bytes: u64::MAX,
        ..MaintainOptions::default()
    };
    let merged = cold.compact(&options).await.unwrap().unwrap();
    assert_eq!(merged.spans, 90);
    let far = merged.created_unix_nano + 3_600_000_000_000;
    assert_eq!(cold.sweep(far, Duration::from_secs(60)).await.unwrap(), 3);
    assert_eq!(cold.trace_spans(&[7; 16]).await.unwrap().len(), 3);
    assert_eq!(cold.expire(u64::MAX).await.unwrap(), 1);
    assert!(cold.refresh().await.unwrap().is_empty());
}

fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p.to_string_lossy().into_owned());
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_secret_is_refused() {
    let s3 = S3Server::start("traces");
    let mut target = s3.target("s3://traces");
    target.secret_access_key = Some("not-the-secret".into());
    let (store, prefix) = clew_cold::url::open(&target).unwrap();
    let e = block::write(&store, &prefix, spans(1), vec![], &BlockOptions::default())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("403 Forbidden"), "{e}");
    let cold = ColdStore::new(store, prefix);
    assert!(cold.refresh().await.is_err());
}

#[test]
fn bad_urls_name_the_flag() {
    for (url, why) in [
        ("ftp://x", "must start with file:// or s3://"),
        ("file://relative", "absolute path"),
        ("s3:///prefix", "names no bucket"),
    ] {
        let target = clew_cold::url::ColdTarget {
            url: url.into(),
            ..Default::default()
        };
        let e = clew_cold::url::open(&target).unwrap_err().to_string();
        assert!(e.contains("--cold-url") && e.contains(why), "{url}: {e}");
    }
}

mod conformance_on_s3 {
    use super::*;
    use crate::common::moving::moving;
    use clew_storage::conformance::Fixture;
    use clew_storage::memory::MemoryStorage;

    async fn fixture() -> Fixture {
        let s3 = S3Server::start("traces");
        let (store, prefix) = clew_cold::url::open(&s3.target("s3://traces/t")).unwrap();
        let cold = Arc::new(ColdStore::new(store, prefix));
        let hot = Arc::new(MemoryStorage::new(10_000));
        Fixture::with_guard(Arc::new(moving(hot, cold, 1)), s3)
    }

    clew_storage::conformance_tests!(core fixture);
}
