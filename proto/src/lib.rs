//! clew's native protobuf messages and gRPC services (package `clew.v1`).
//!
//! OTLP types are not here: use the `opentelemetry-proto` crate for those.

#![allow(missing_docs, clippy::all, missing_debug_implementations)]

/// Package `clew.v1`.
pub mod v1 {
    tonic::include_proto!("clew.v1");

    /// The encoded file descriptor set, for gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("clew_descriptor");

    impl ExportResponse {
        /// Adds `other` to this answer (one answer for a client-streaming
        /// export): counts add up, the first error message is kept.
        pub fn absorb(&mut self, other: ExportResponse) {
            self.accepted += other.accepted;
            self.rejected += other.rejected;
            if self.error_message.is_empty() {
                self.error_message = other.error_message;
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use super::ExportResponse;

        #[test]
        fn absorb_adds_counts_and_keeps_the_first_error() {
            let mut total = ExportResponse::default();
            for (a, r, e) in [(3, 0, ""), (1, 2, "bad id"), (4, 1, "later")] {
                total.absorb(ExportResponse {
                    accepted: a,
                    rejected: r,
                    error_message: e.into(),
                });
            }
            assert_eq!((total.accepted, total.rejected), (8, 3));
            assert_eq!(total.error_message, "bad id");
        }
    }
}
