//! clew's collector: ingest (OTLP and native), a write-ahead log, trace
//! assembly, storage backends (Redis, embedded, memory), retention, analysis
//! and the query API.
//!
//! - [`ingest`]: OTLP/gRPC, native gRPC and OTLP/HTTP, with [`ingest::otlp`]
//!   conversion and backpressure.
//! - [`wal`]: the write-ahead log with group commit; a batch is acknowledged
//!   once it is fsynced.
//! - [`replication`]: copies of each accepted batch on the next collectors
//!   of its traces, replica logs, truncation and takeover.
//! - [`assembly`]: spans grouped by trace and flushed to storage through
//!   [`sink`]; [`rollup`]: every span counted into RED roll-ups first, and
//!   into the [`spanmetrics`] of `/metrics`.
//! - [`storage`]: the `Storage` trait and its backends; [`cold`]: the
//!   cold tier in front of them (`clew-cold`), with its mover.
//! - [`query`]: the Jaeger-compatible HTTP API and the gRPC `Query` service;
//!   [`analysis`]: critical path, causal order, anomalies, dependencies and
//!   RED, served under `/api/clew/`.
//! - [`server`]: wires it all into the `clew-collector` binary (flags and
//!   configuration file, listeners, retention, graceful shutdown), with
//!   [`metrics`] on the ops endpoint.

/// Trace analysis (`clew-analysis`).
pub use clew_analysis as analysis;
pub mod assembly;
mod auth;
pub mod cold;
pub mod ingest;
pub mod metrics;
pub mod query;
pub mod replication;
pub mod rollup;
pub mod sampling;
pub mod server;
pub mod sink;
pub mod spanmetrics;
/// Trace storage (`clew-storage`).
pub use clew_storage as storage;
#[cfg(any(test, feature = "testing"))]
#[doc(hidden)]
pub mod testing;
pub mod wal;
