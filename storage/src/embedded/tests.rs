use super::*;
use crate::conformance::{Fixture, span, trace_id};

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStorage::open(dir.path().join("traces.redb")).unwrap();
    Fixture::with_guard(Arc::new(store), dir)
}

conformance_tests!(fixture);

#[tokio::test]
async fn survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub").join("traces.redb");
    let t = trace_id(1);
    let spans = vec![
        span(t, 1, None, "api", "GET", 0, 10),
        span(t, 2, Some(1), "db", "SELECT", 1, 5),
    ];
    {
        let store = EmbeddedStorage::open(&path).unwrap();
        let out = store
            .store_trace(Trace {
                trace_id: t.0.to_vec(),
                spans: spans.clone(),
            })
            .await
            .unwrap();
        assert_eq!(out.stored, 2);
    }
    let store = EmbeddedStorage::open(&path).unwrap();
    assert_eq!(store.get_trace(t).await.unwrap().unwrap().spans, spans);
    assert_eq!(store.services().await.unwrap(), vec!["api", "db"]);
    assert_eq!(store.dependencies(0, 0).await.unwrap().len(), 1);
    // Still deduplicates against what was stored before the restart.
    let out = store
        .store_trace(Trace {
            trace_id: t.0.to_vec(),
            spans,
        })
        .await
        .unwrap();
    assert_eq!(
        out,
        StoreOutcome {
            stored: 0,
            duplicates: 2
        }
    );
}

#[tokio::test]
async fn a_late_child_finds_its_stored_parent_and_search_sees_every_fragment() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStorage::open(dir.path().join("traces.redb")).unwrap();
    let t = trace_id(1);
    let frag = |spans| Trace {
        trace_id: t.0.to_vec(),
        spans,
    };
    store
        .store_trace(frag(vec![span(t, 1, None, "api", "GET", 0, 10)]))
        .await
        .unwrap();
    // Fragments 2 and 3: a child of the stored root, then its own child.
    store
        .store_trace(frag(vec![span(t, 2, Some(1), "db", "SELECT", 5, 1)]))
        .await
        .unwrap();
    let out = store
        .store_trace(frag(vec![
            span(t, 3, Some(2), "cache", "GET", 6, 1),
            span(t, 2, Some(1), "db", "SELECT", 5, 1),
        ]))
        .await
        .unwrap();
    assert_eq!(
        out,
        StoreOutcome {
            stored: 1,
            duplicates: 1
        }
    );
    let deps = store.dependencies(0, 0).await.unwrap();
    let pairs: Vec<(&str, &str)> = deps
        .iter()
        .map(|d| (d.parent.as_str(), d.child.as_str()))
        .collect();
    assert_eq!(pairs, vec![("api", "db"), ("db", "cache")]);
    assert_eq!(store.get_trace(t).await.unwrap().unwrap().spans.len(), 3);
    // A filter met only by the span of the last fragment.
    let found = store
        .list_traces(&FilterCriteria {
            service: "cache".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].spans.len(), 3);
    // Pruning removes every fragment and index entry.
    let stats = store.prune_traces(u64::MAX).await.unwrap();
    assert_eq!(
        stats,
        PruneStats {
            traces: 1,
            spans: 3
        }
    );
    assert!(store.get_trace(t).await.unwrap().is_none());
    assert!(store.services().await.unwrap().is_empty());
    assert!(store.dependencies(0, 0).await.unwrap().is_empty());
    assert!(
        store
            .list_traces(&FilterCriteria::default())
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn errors_hide_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let err = EmbeddedStorage::open(file.join("traces.redb")).unwrap_err();
    assert_eq!(err.to_string(), "storage unavailable");
    assert!(err.detail().contains("embedded"), "{}", err.detail());
}
