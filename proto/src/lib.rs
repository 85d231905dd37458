//! clew's native protobuf messages and gRPC services (package `clew.v1`).
//!
//! OTLP types are not here: use the `opentelemetry-proto` crate for those.

#![allow(missing_docs, clippy::all, missing_debug_implementations)]

/// Package `clew.v1`.
pub mod v1 {
    tonic::include_proto!("clew.v1");

    /// The encoded file descriptor set, for gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("clew_descriptor");
}
