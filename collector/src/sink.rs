//! Connects trace assembly to a storage backend.

use std::sync::Arc;

use clew_proto::v1::Trace;
use futures_util::future::BoxFuture;

use crate::assembly::{SinkError, TraceSink};
use crate::storage::{Returned, Storage, StorageError};

/// Flushes assembled fragments into a [`Storage`]. A fragment the storage
/// refuses as invalid is rejected (dropped and counted, never retried);
/// every other failure is retried by the assembler until it succeeds.
#[derive(Debug, Clone)]
pub struct StorageSink {
    storage: Arc<dyn Storage>,
    latency: Option<prometheus::Histogram>,
}

impl StorageSink {
    /// A sink writing to `storage`.
    pub fn new(storage: Arc<dyn Storage>) -> Self {
        StorageSink {
            storage,
            latency: None,
        }
    }

    /// Also observes every store call's duration (seconds) in `histogram`.
    pub fn with_latency(mut self, histogram: prometheus::Histogram) -> Self {
        self.latency = Some(histogram);
        self
    }
}

impl TraceSink for StorageSink {
    fn store_trace(&self, trace: Trace) -> BoxFuture<'_, Result<(), SinkError>> {
        Box::pin(async move {
            let _timer = self.latency.as_ref().map(|h| h.start_timer());
            match self.storage.store_trace_returning(trace).await {
                Ok(_) => Ok(()),
                Err(Returned {
                    error: error @ StorageError::InvalidTrace(_),
                    ..
                }) => Err(SinkError::rejected(error)),
                Err(Returned {
                    error,
                    trace: Some(trace),
                }) => {
                    tracing::warn!(error = %error.detail(), "storing a trace failed; will retry");
                    Err(SinkError::new(error, trace))
                }
                Err(Returned { error, trace: None }) => {
                    // Against the trait's contract: nothing left to retry.
                    tracing::error!(error = %error.detail(), "storing a trace failed and the backend kept the fragment; dropping it");
                    Err(SinkError::rejected(error))
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::assembly::{Assembler, AssemblerConfig};
    use crate::storage::memory::MemoryStorage;
    use crate::wal::{Wal, tests::batch, tests::fast_config, tests::snapshot};
    use clew_model::TraceId;

    #[tokio::test]
    async fn ingested_batches_reach_storage_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let storage: Arc<dyn Storage> = Arc::new(MemoryStorage::new(1000));
        let sink = Arc::new(StorageSink::new(Arc::clone(&storage)));
        let (wal, replay) = Wal::open(dir.path(), fast_config()).unwrap();
        assert!(replay.is_empty());
        let asm = Assembler::new(AssemblerConfig::default(), sink.clone(), wal).unwrap();
        let (a, b) = (batch(7, 5), batch(8, 4));
        let id =
            |r: &clew_proto::v1::ExportRequest| TraceId::from_slice(&r.spans[0].trace_id).unwrap();
        asm.ingest(a.clone()).await.unwrap();
        asm.ingest(a.clone()).await.unwrap(); // a client retry: stored once
        asm.flush_all().await;
        assert_eq!(
            storage
                .get_trace(id(&a))
                .await
                .unwrap()
                .unwrap()
                .spans
                .len(),
            5
        );

        // Acknowledged but not yet flushed when the process dies: the
        // directory as kill -9 would leave it.
        asm.ingest(b.clone()).await.unwrap();
        let crashed = tempfile::tempdir().unwrap();
        snapshot(dir.path(), crashed.path());
        drop(asm);
        assert!(storage.get_trace(id(&b)).await.unwrap().is_none());

        let (wal, replay) = Wal::open(crashed.path(), fast_config()).unwrap();
        assert!(!replay.is_empty());
        let asm = Assembler::new(AssemblerConfig::default(), sink, wal).unwrap();
        asm.replay(replay);
        asm.flush_all().await;
        assert_eq!(
            storage
                .get_trace(id(&b))
                .await
                .unwrap()
                .unwrap()
                .spans
                .len(),
            4
        );
        assert_eq!(
            storage
                .get_trace(id(&a))
                .await
                .unwrap()
                .unwrap()
                .spans
                .len(),
            5
        );
    }
}
