//! clew's collector: ingest (OTLP and native), a write-ahead log, trace
//! assembly, storage backends (Redis, embedded, memory), retention, analysis
//! and the query API.
//!
//! Built so far: the storage layer ([`storage`]).

pub mod storage;
