//! Collector-to-collector replication: an accepted span is acknowledged
//! only once it is durable on more than one collector, so losing a
//! collector with its disk loses nothing acknowledged.
//!
//! # Placement
//!
//! The collector set ([`Members`]: `--peers`, or the addresses of
//! `--peer-dns`) is ranked for each trace by the rendezvous hash sidecars
//! route with ([`clew_model::placement`]): the first member is the trace's
//! owner, the next `R - 1` keep its copies. A collector that accepts spans
//! (its own traces, or another's sent straight to it) is their **origin**:
//! it writes them to its WAL and sends them to the first `R - 1` members
//! of their ranking other than itself that answer ([`Replicator`]).
//!
//! # Write path
//!
//! The WAL append and the copies run at once; the client is answered once
//! the WAL has the batch and every trace in it has
//! `--replication-min-copies - 1` copies acknowledged by peers (each on
//! the peer's disk, in a [`ReplicaStore`] log with group commit). A batch
//! that cannot get them is refused with UNAVAILABLE / 503 and sent again by
//! its client. A peer that fails a call is passed over (its traces' copies
//! go to the next members of their ranking) until a heartbeat reaches it
//! again.
//!
//! # Truncation
//!
//! Every batch has a number, increasing within an incarnation of the
//! origin's WAL. Each second the origin tells every peer (a heartbeat, and
//! on every request) the number below which all its batches are stored;
//! the peers release those copies, and their logs delete whole segments.
//!
//! # Takeover
//!
//! A replica hands an origin's unreleased copies to its own ingest (so they
//! get their copies again, and are stored by it) when the origin leaves the
//! set, is not heard from for `--replication-takeover-after`, or shows up
//! with a new incarnation (its disk was lost). Storage keeps each span once
//! by span id, so a batch stored by both is in query results once.

mod codec;
pub mod members;
mod metrics;
mod origin;
pub mod replica;
mod service;

#[cfg(test)]
mod tests;

use std::time::Duration;

use tokio::sync::{mpsc, watch};

pub use members::{Copies, Members};
pub use metrics::ReplicationMetrics;
pub use origin::{CopiesMissing, Outgoing, ReplicationConfig, Replicator};
pub use replica::{Copy, ReplicaStore, Takeover};
pub use service::ReplicationService;

use crate::ingest::Ingest;

/// Stores each log taken over through `ingest` (retrying until it takes
/// every batch), then deletes it. Runs until `stop` or until the sender
/// side is gone.
pub async fn run_takeovers(
    mut jobs: mpsc::UnboundedReceiver<Takeover>,
    ingest: Ingest,
    metrics: std::sync::Arc<ReplicationMetrics>,
    stop: watch::Receiver<bool>,
) {
    loop {
        let mut stopping = stop.clone();
        let job = tokio::select! {
            job = jobs.recv() => job,
            _ = stopping.wait_for(|s| *s) => return,
        };
        let Some(job) = job else { return };
        if !take_over(job, &ingest, &metrics, stop.clone()).await {
            return;
        }
    }
}

/// One takeover; `false` when stopped before it finished (the log stays
/// on disk and is taken over again after a restart).
async fn take_over(
    job: Takeover,
    ingest: &Ingest,
    metrics: &ReplicationMetrics,
    mut stop: watch::Receiver<bool>,
) -> bool {
    let records = match job.records().await {
        Ok(records) => records,
        Err(e) => {
            tracing::error!(origin = %job.origin, error = %e, "reading a replica log to take it over failed; it stays on disk");
            return true;
        }
    };
    let mut spans_total = 0u64;
    for record in records {
        let spans = record.batch.spans;
        let n = spans.len() as u64;
        let mut backoff = Duration::from_millis(100);
        loop {
            match ingest.accept(spans.clone()).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(origin = %job.origin, error = %e, "taking over a batch failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stop.wait_for(|s| *s) => return false,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        spans_total += n;
        metrics.takeover_spans.inc_by(n);
    }
    tracing::info!(origin = %job.origin, reason = job.reason, spans = spans_total, "took over an origin's unreleased batches");
    let origin = job.origin.clone();
    if let Err(e) = job.finish().await {
        tracing::warn!(origin = %origin, error = %e, "deleting a replica log taken over");
    }
    true
}
