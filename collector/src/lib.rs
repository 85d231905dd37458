//! clew's collector: ingest (OTLP and native), a write-ahead log, trace
//! assembly, storage backends (Redis, embedded, memory), retention, analysis
//! and the query API.
//!
//! Built so far: ingest ([`ingest`]: OTLP/gRPC, native gRPC, OTLP/HTTP, with
//! [`otlp`] conversion), the write-ahead log with group commit ([`wal`]),
//! trace assembly ([`assembly`]) and the storage layer ([`storage`]). The
//! query API, metrics endpoint, configuration and the binary are next.

pub mod analysis;
pub mod assembly;
pub mod ingest;
pub mod metrics;
pub mod otlp;
pub mod query;
pub mod server;
pub mod sink;
pub mod storage;
#[cfg(any(test, feature = "testing"))]
#[doc(hidden)]
pub mod testing;
pub mod wal;
