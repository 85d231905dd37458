//! What the chaos and replication suites share: a work directory kept when
//! a test fails, the skip rule for machines that cannot make the faults,
//! waiting for a sidecar to hold nothing, and the exactly-once check.

use std::cell::Cell;
use std::path::PathBuf;
use std::time::Duration;

use crate::http::HttpClient;
use crate::jaeger::{Tally, metric};
use crate::proc::wait_for;

/// A directory for logs and data, removed at the end unless the test
/// failed (then its path is printed).
#[derive(Debug)]
pub struct WorkDir(pub PathBuf);

impl WorkDir {
    /// A fresh `<tmp>/<prefix><pid>-<test>`.
    pub fn new(prefix: &str, test: &str) -> std::io::Result<WorkDir> {
        let dir = std::env::temp_dir().join(format!("{prefix}{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        Ok(WorkDir(dir))
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("logs kept in {}", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Prints why `test` cannot run on this machine and returns `None`, or
/// panics when `CLEW_CHAOS_REQUIRE` is set.
pub fn skip<T>(test: &str, why: &anyhow::Error) -> Option<T> {
    if std::env::var_os("CLEW_CHAOS_REQUIRE").is_some() {
        panic!("{test}: cannot set up the test: {why:#}");
    }
    println!("SKIPPED: {test}: {why:#}");
    None
}

/// Waits up to `timeout` until the sidecar whose ops endpoint is `ops`
/// holds nothing: spill and memory empty on three scrapes in a row. False
/// if it never does.
pub async fn sidecar_drained(http: &HttpClient, ops: &str, timeout: Duration) -> bool {
    let zeros = &Cell::new(0);
    wait_for("the sidecar to drain", timeout, || async move {
        let spill = metric(http, ops, "clew_sidecar_spill_bytes").await;
        let buffer = metric(http, ops, "clew_sidecar_buffer_bytes").await;
        let empty = spill == Some(0.0) && buffer == Some(0.0);
        zeros.set(if empty { zeros.get() + 1 } else { 0 });
        zeros.get() >= 3
    })
    .await
    .is_ok()
}

/// The promise: every acknowledged span read back exactly once, out of at
/// least `min_expected` (less proves nothing).
pub fn assert_exactly_once(test: &str, t: &Tally, min_expected: u64) {
    assert!(
        t.expected >= min_expected,
        "{test}: too little load acknowledged ({} spans) to prove anything",
        t.expected
    );
    assert_eq!(t.errors, 0, "{test}: query API errors");
    assert_eq!(
        (t.missing, t.duplicates),
        (0, 0),
        "{test}: acknowledged spans missing / duplicated"
    );
    assert_eq!(t.stored, t.expected, "{test}");
}
