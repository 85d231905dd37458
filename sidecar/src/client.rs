//! The OTLP/gRPC client the sidecar forwards with.
//!
//! Requests are sent pre-encoded: the sidecar encodes each routed part once
//! when it accepts it, keeps those bytes in memory or in the spill log, and
//! sends them as they are. Several queued parts are coalesced by
//! concatenating their bytes, which protobuf defines as merging the
//! messages: `ExportTraceServiceRequest` has one repeated field, so the
//! concatenation is the request with all their `resource_spans`. Replaying
//! the spill log therefore decodes nothing.

use std::time::Duration;

use bytes::{Buf, BufMut, Bytes};
use http::uri::PathAndQuery;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use tonic::Status;
use tonic::codec::{Codec, EncodeBuf, Encoder};
use tonic::transport::{Channel, Endpoint};
use tonic_prost::ProstDecoder;

const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// Sends already-encoded `ExportTraceServiceRequest`s.
#[derive(Debug, Clone, Default)]
struct RawCodec;

#[derive(Debug, Clone, Default)]
struct RawEncoder;

impl Encoder for RawEncoder {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = ExportTraceServiceResponse;
    type Encoder = RawEncoder;
    type Decoder = ProstDecoder<ExportTraceServiceResponse>;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::default()
    }
}

/// What a collector answered.
#[derive(Debug)]
pub enum SendError {
    /// Worth retrying later: the collector is down, overloaded or slow.
    Retryable(Status),
    /// The collector refused the data for good (malformed, unimplemented):
    /// retrying cannot help.
    Permanent(Status),
}

impl SendError {
    fn classify(status: Status) -> Self {
        use tonic::Code::*;
        match status.code() {
            Unavailable | ResourceExhausted | DeadlineExceeded | Aborted | Cancelled | Unknown
            | Internal => SendError::Retryable(status),
            _ => SendError::Permanent(status),
        }
    }
}

/// A lazily connected OTLP/gRPC client for one collector endpoint.
#[derive(Debug, Clone)]
pub struct CollectorClient {
    grpc: tonic::client::Grpc<Channel>,
    timeout: Duration,
}

impl CollectorClient {
    /// A client for `url` (`http://host:port`). Connects on first use and
    /// reconnects after failures.
    /// With `tls`, the connection is TLS (the URL's scheme is ignored).
    pub fn new(
        url: &str,
        timeout: Duration,
        tls: Option<&clew_runtime::tls::ClientTls>,
    ) -> Result<Self, tonic::transport::Error> {
        let endpoint = Endpoint::from_shared(url.to_string())?
            .connect_timeout(timeout)
            .tcp_nodelay(true);
        let channel = match tls {
            Some(tls) => endpoint.connect_with_connector_lazy(tls.connector()),
            None => endpoint.connect_lazy(),
        };
        Ok(CollectorClient {
            grpc: tonic::client::Grpc::new(channel),
            timeout,
        })
    }

    /// Sends one encoded request and returns how many spans the collector
    /// rejected as invalid (OTLP partial success).
    pub async fn export(&mut self, body: Bytes) -> Result<i64, SendError> {
        let fut = async {
            self.grpc
                .ready()
                .await
                .map_err(|e| Status::unavailable(format!("connect: {e}")))?;
            let mut req = tonic::Request::new(body);
            req.set_timeout(self.timeout);
            self.grpc
                .unary(req, PathAndQuery::from_static(EXPORT_PATH), RawCodec)
                .await
        };
        match tokio::time::timeout(self.timeout, fut).await {
            Err(_) => Err(SendError::Retryable(Status::deadline_exceeded(
                "collector did not answer in time",
            ))),
            Ok(Err(status)) => Err(SendError::classify(status)),
            Ok(Ok(resp)) => Ok(resp
                .into_inner()
                .partial_success
                .map(|p| p.rejected_spans)
                .unwrap_or(0)),
        }
    }
}

/// The head of a spill record: the span count (u32 LE); the encoded
/// request follows it.
pub fn frame_head(spans: usize) -> [u8; 4] {
    u32::try_from(spans).unwrap_or(u32::MAX).to_le_bytes()
}

/// Splits a framed payload into (span count, encoded request); `None` when
/// it is too short to hold the header.
pub fn unframe(mut payload: &[u8]) -> Option<(usize, &[u8])> {
    if payload.len() < 4 {
        return None;
    }
    let n = payload.get_u32_le() as usize;
    Some((n, payload))
}
