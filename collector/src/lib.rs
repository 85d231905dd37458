//! clew's collector: ingest (OTLP and native), a write-ahead log, trace
//! assembly, storage backends (Redis, embedded, memory), retention, analysis
//! and the query API.
//!
//! Built so far: the storage layer ([`storage`]), the write-ahead log with
//! group commit ([`wal`]) and trace assembly ([`assembly`]). Ingest, the
//! query API and the binary are next.

pub mod assembly;
pub mod sink;
pub mod storage;
pub mod wal;
