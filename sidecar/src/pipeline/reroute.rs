//! The re-router: drains the `_unrouted` log and the logs of endpoints that
//! left the set through [`Pipeline::route`], committing each batch of
//! records only once the endpoints that took them hold them durably.

use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use parking_lot::Mutex;
use prost::Message as _;

use super::Pipeline;
use crate::client::unframe;
use clew_reliability::SpillLog;

/// Runs until the pipeline shuts down.
pub(super) async fn reroute_loop(p: Pipeline) {
    let sh = p.0.clone();
    let mut shutdown = sh.shutdown.subscribe();
    loop {
        if *shutdown.borrow() {
            return;
        }
        let mut progress = false;
        if !sh.table.read().endpoints.is_empty() {
            progress |= drain_one(&p, &sh.unrouted).await;
            let orphans: Vec<SpillLog> = std::mem::take(&mut *sh.orphans.lock());
            for log in orphans {
                let log = Mutex::new(log);
                progress |= drain_one(&p, &log).await;
                let log = log.into_inner();
                if log.is_empty() {
                    let dir = log.dir().to_path_buf();
                    drop(log);
                    if let Err(e) = std::fs::remove_dir_all(&dir) {
                        tracing::warn!(dir = %dir.display(), error = %e, "cannot remove drained spill log");
                    }
                } else {
                    sh.orphans.lock().push(log);
                }
            }
        }
        if progress {
            p.update_gauges();
            continue;
        }
        tokio::select! {
            _ = sh.reroute.notified() => {}
            _ = shutdown.changed() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// Routes one batch of records from `log`. Returns whether any moved.
async fn drain_one(p: &Pipeline, log: &Mutex<SpillLog>) -> bool {
    let read = log.lock().read_batch(1024, 4 << 20);
    let records = match read {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "reading a spill log for re-routing failed");
            return false;
        }
    };
    let mut committed = None;
    let mut tickets = Vec::new();
    for (seq, payload) in &records {
        let req = unframe(payload).and_then(|(_, b)| ExportTraceServiceRequest::decode(b).ok());
        match req {
            None => p.0.metrics.spill_corrupt.inc(),
            Some(req) => {
                // A part routed before a failure goes again with the whole
                // record next time; collectors keep one copy of each span.
                if p.route(req, &mut 0, &mut tickets).is_err() {
                    break;
                }
            }
        }
        committed = Some(*seq);
    }
    let Some(seq) = committed else {
        return false;
    };
    // The records leave this log only once their new logs hold them.
    if p.wait_durable(&tickets).await.is_err() {
        return false;
    }
    if let Err(e) = log.lock().commit(seq) {
        tracing::warn!(error = %e, "writing the cursor of a re-routed spill log failed");
    }
    true
}
