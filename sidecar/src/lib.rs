//! clew's sidecar agent.
//!
//! It takes spans on localhost (OTLP/gRPC and clew native gRPC on one port,
//! OTLP/HTTP on another), routes them by trace ID over the collector
//! endpoints with rendezvous hashing, and forwards them through a circuit
//! breaker per endpoint. Each endpoint has a disk log: with disk durability
//! (the default) a request is answered once its spans, written to it, are
//! acknowledged by a collector or fsynced,
//! with memory durability spans wait in a memory buffer that spills to the
//! log when a collector is unreachable or memory is full. The log is
//! replayed on recovery and after a restart. See [`pipeline`] for the
//! design.

pub mod client;
pub mod metrics;
pub mod pipeline;
pub mod receiver;
pub mod routing;
pub mod server;

pub use pipeline::{Durability, Pipeline, PipelineConfig};
pub use server::{Config, run};
