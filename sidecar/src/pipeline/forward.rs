//! The forwarder: one task per endpoint sends batches through the
//! endpoint's circuit breaker, releases what the collector acknowledged,
//! keeps what it could not send, and answers a refusal by sending halves.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use clew_reliability::BreakerState;
use rand::SeedableRng as _;
use rand::rngs::SmallRng;
use tokio::sync::watch;

use super::batch::{Batch, limit_in_refusal};
use super::endpoint::{Endpoint, Stop, Work};
use super::{Durability, Pipeline};
use crate::client::{CollectorClient, SendError};

/// What became of a batch that reached the collector.
#[derive(Debug, Default)]
struct Delivered {
    /// Spans the collector rejected as invalid (OTLP partial success).
    rejected: i64,
    /// Single spans the collector refused for good.
    dropped: usize,
}

/// Sends `batch`; a request the collector refuses for good is sent again
/// as two halves, down to single spans, so a request too large for the
/// collector is never dropped. Only a single span refused for good is
/// dropped (counted and logged with the reason). A retryable failure
/// returns at once: the whole batch is sent again later (collectors keep
/// one copy of each span).
async fn deliver(
    ep: &Endpoint,
    client: &mut CollectorClient,
    batch: Batch,
) -> Result<Delivered, tonic::Status> {
    let mut out = Delivered::default();
    let mut todo = vec![batch];
    while let Some(b) = todo.pop() {
        match client.export(b.body.clone()).await {
            Ok(rejected) => out.rejected += rejected,
            Err(SendError::Retryable(status)) => return Err(status),
            Err(SendError::Permanent(status)) => {
                if let Some(limit) = limit_in_refusal(status.message())
                    && ep.max_spans.fetch_min(limit, Ordering::Relaxed) > limit
                {
                    tracing::warn!(endpoint = %ep.url, limit, "collector allows fewer spans per request than configured; sending at most that many");
                }
                match b.halves() {
                    Some((first, second)) => {
                        tracing::debug!(endpoint = %ep.url, spans = b.spans, code = ?status.code(), "collector refused a request; sending it in halves");
                        todo.push(second);
                        todo.push(first);
                    }
                    None => {
                        tracing::error!(endpoint = %ep.url, code = ?status.code(), reason = status.message(), spans = b.spans, "collector refused spans for good; dropping them");
                        out.dropped += b.spans;
                    }
                }
            }
        }
    }
    Ok(out)
}

/// Sends batches until the endpoint is removed or the pipeline shuts down.
pub(super) async fn forward_loop(
    ep: Arc<Endpoint>,
    p: Pipeline,
    mut client: CollectorClient,
    mut stop: watch::Receiver<Stop>,
) {
    let sh = p.0.clone();
    let mut rng = SmallRng::from_os_rng();
    let mut failures: u32 = 0;
    let open_gauge = sh.metrics.breaker_open.with_label_values(&[&ep.url]);
    loop {
        match *stop.borrow() {
            Stop::Run => {}
            Stop::Remove => return,
            Stop::Shutdown => break,
        }
        let Some(work) = ep.next_work(&p, false) else {
            tokio::select! {
                _ = ep.notify.notified() => {}
                _ = stop.changed() => {}
                // A fallback poll: a spill log written by `enqueue` also notifies.
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            continue;
        };
        let permit = match ep.breaker.try_acquire() {
            Ok(permit) => permit,
            Err(open) => {
                open_gauge.set(1);
                ep.park(&p, work);
                ep.spill_queue(&p);
                p.update_gauges();
                let wait = open
                    .retry_after
                    .clamp(Duration::from_millis(20), Duration::from_secs(1));
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.changed() => {}
                }
                continue;
            }
        };
        let started = Instant::now();
        match deliver(&ep, &mut client, work.batch.clone()).await {
            Ok(delivered) => {
                permit.success();
                open_gauge.set(i64::from(ep.breaker.state() != BreakerState::Closed));
                failures = 0;
                sh.metrics
                    .send_seconds
                    .observe(started.elapsed().as_secs_f64());
                ep.done(&p, &work);
                record_delivery(&p, &work, &delivered);
            }
            Err(status) => {
                permit.failure();
                // Open or half-open: either way the endpoint is not trusted.
                open_gauge.set(i64::from(ep.breaker.state() != BreakerState::Closed));
                sh.metrics.send_failures.with_label_values(&[&ep.url]).inc();
                if failures == 0 {
                    tracing::warn!(endpoint = %ep.url, code = ?status.code(), message = status.message(), "sending to collector failed; buffering and retrying");
                }
                ep.park(&p, work);
                if ep.breaker.state() != BreakerState::Closed {
                    // The endpoint is not trusted: what waits in memory goes
                    // to disk now, not after the back-off (which can outlast
                    // the cool-down, so the loop may never see `Open`).
                    ep.spill_queue(&p);
                }
                let delay = sh.cfg.retry.delay(failures, &mut rng);
                failures = failures.saturating_add(1);
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stop.changed() => {}
                }
            }
        }
        p.update_gauges();
    }
    drain_at_shutdown(&ep, &p, &mut client).await;
}

fn record_delivery(p: &Pipeline, work: &Work, d: &Delivered) {
    let m = &p.0.metrics;
    let sent = work.batch.spans - d.dropped;
    m.forwarded.inc_by(sent as u64);
    if work.from_disk {
        m.replayed.inc_by(sent as u64);
    }
    if d.rejected > 0 {
        m.rejected.inc_by(d.rejected as u64);
    }
    if d.dropped > 0 {
        m.dropped
            .with_label_values(&["refused"])
            .inc_by(d.dropped as u64);
    }
}

/// Shutdown: deliver within the deadline; with memory durability spill
/// what is left in memory (disk durability has it in the log already).
async fn drain_at_shutdown(ep: &Endpoint, p: &Pipeline, client: &mut CollectorClient) {
    let sh = &p.0;
    let deadline = tokio::time::Instant::now() + sh.cfg.shutdown_timeout;
    let disk = sh.cfg.durability == Durability::Disk;
    while let Some(work) = ep.next_work(p, !disk) {
        let healthy = ep.breaker.state() != BreakerState::Open;
        let sent = if healthy && tokio::time::Instant::now() < deadline {
            match tokio::time::timeout_at(deadline, deliver(ep, client, work.batch.clone())).await {
                Ok(Ok(d)) => Some(d),
                _ => None,
            }
        } else {
            None
        };
        if let Some(d) = sent {
            ep.done(p, &work);
            record_delivery(p, &work, &d);
            continue;
        }
        if disk {
            break;
        }
        let spans = work.batch.spans;
        let before = ep.state.lock().queue.len();
        ep.park(p, work);
        if ep.state.lock().queue.len() > before {
            tracing::error!(endpoint = %ep.url, spans, "spill log full at shutdown; spans lost");
            sh.metrics
                .dropped
                .with_label_values(&["spill_full_at_shutdown"])
                .inc_by(spans as u64);
            let mut st = ep.state.lock();
            if let Some(q) = st.queue.pop_front() {
                sh.mem_bytes.fetch_sub(q.body.len(), Ordering::Relaxed);
            }
        }
    }
    if let Some(log) = ep.state.lock().spill.as_mut()
        && let Err(e) = log.sync()
    {
        tracing::error!(endpoint = %ep.url, error = %e, "syncing the spill log failed");
    }
}
