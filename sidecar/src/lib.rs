//! clew's sidecar agent.
//!
//! It takes spans on localhost (OTLP/gRPC and clew native gRPC on one port,
//! OTLP/HTTP on another), routes them by trace ID over the collector
//! endpoints with rendezvous hashing, and forwards them through a circuit
//! breaker per endpoint. A memory buffer spills to a disk log per endpoint
//! when a collector is unreachable; the log is replayed on recovery and
//! after a restart. See [`pipeline`] for the design.

pub mod client;
pub mod metrics;
pub mod pipeline;
pub mod receiver;
pub mod routing;
pub mod server;

pub use pipeline::{Durability, Pipeline, PipelineConfig};
pub use server::{Config, run};
