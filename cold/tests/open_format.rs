#![allow(clippy::unwrap_used, clippy::expect_used)]
//! A block is plain Parquet: pyarrow and DuckDB (readers this project did
//! not write, from the test venv) read the spans that were moved, the
//! typed attributes through DuckDB's JSON functions, and the version.

use std::sync::Arc;

use clew_cold::block::{self, BlockOptions};
use clew_proto::v1::{AnyValue, KeyValue, Span, any_value};
use object_store::local::LocalFileSystem;
use object_store::path::Path;

fn python() -> std::path::PathBuf {
    let p = std::env::var_os("CLEW_PYTHON")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| "/var/tmp/clew-venv/bin/python".into());
    assert!(
        p.exists(),
        "{} not found: run scripts/test.sh, which creates the venv with pyarrow and duckdb",
        p.display()
    );
    p
}

const READ: &str = r#"
import json, sys
import duckdb, pyarrow.parquet as pq
path = sys.argv[1]
t = pq.read_table(path)
ids = sorted({x.hex() for x in t.column("trace_id").to_pylist()})
svc1 = duckdb.sql(f"SELECT count(*) FROM read_parquet('{path}') WHERE service = 'svc-1'").fetchall()[0][0]
amount = duckdb.sql(
    f"SELECT sum(CAST(json_extract_string(attributes, '$[0].value.intValue') AS BIGINT)) FROM read_parquet('{path}')"
).fetchall()[0][0]
version = pq.ParquetFile(path).metadata.metadata[b"clew.block.version"].decode()
print(json.dumps({"rows": t.num_rows, "traces": ids, "svc1": svc1, "amount": amount, "version": version}))
"#;

fn span(t: u8, n: u8) -> Span {
    Span {
        trace_id: vec![t; 16],
        span_id: vec![n + 1; 8],
        name: "op".into(),
        service: format!("svc-{}", (t + n) % 3),
        start_time_unix_nano: 1_750_000_000_000_000_000 + u64::from(t) * 1000 + u64::from(n),
        end_time_unix_nano: 1_750_000_000_000_000_000 + u64::from(t) * 1000 + u64::from(n) + 10,
        attributes: vec![KeyValue {
            key: "amount".into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::IntValue(
                    i64::from(t) * 100 + i64::from(n),
                )),
            }),
        }],
        ..Span::default()
    }
}

#[tokio::test]
async fn pyarrow_and_duckdb_read_the_moved_spans() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn object_store::ObjectStore> =
        Arc::new(LocalFileSystem::new_with_prefix(dir.path()).unwrap());
    let spans: Vec<Span> = (1..=40u8)
        .flat_map(|t| (0..3).map(move |n| span(t, n)))
        .collect();
    let meta = block::write(
        &store,
        &Path::default(),
        spans.clone(),
        vec![],
        &BlockOptions::default(),
    )
    .await
    .unwrap();
    let path = dir
        .path()
        .join("blocks")
        .join(&meta.id)
        .join("data.parquet");
    let out = std::process::Command::new(python())
        .args(["-c", READ, path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut traces: Vec<String> = (1..=40u8).map(|t| format!("{t:02x}").repeat(16)).collect();
    traces.sort();
    let svc1 = spans.iter().filter(|s| s.service == "svc-1").count();
    let amount: i64 = (1..=40i64)
        .flat_map(|t| (0..3).map(move |n| t * 100 + n))
        .sum();
    assert_eq!(
        got,
        serde_json::json!({"rows": 120, "traces": traces, "svc1": svc1, "amount": amount, "version": "1"})
    );
}
