//! The client codec of `Replicate`: requests go out as they were encoded
//! (from borrowed spans, see `origin`), answers are decoded by prost.

use clew_proto::v1::ReplicateResponse;
use prost::bytes::{BufMut as _, Bytes};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

/// Sends pre-encoded `ReplicateRequest`s.
#[derive(Debug, Clone, Copy, Default)]
pub struct RawRequestCodec;

impl Codec for RawRequestCodec {
    type Encode = Bytes;
    type Decode = ReplicateResponse;
    type Encoder = RawRequestCodec;
    type Decoder = RawRequestCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawRequestCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawRequestCodec
    }
}

impl Encoder for RawRequestCodec {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Self::Error> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for RawRequestCodec {
    type Item = ReplicateResponse;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Self::Error> {
        use prost::Message as _;
        ReplicateResponse::decode(src)
            .map(Some)
            .map_err(|e| tonic::Status::internal(format!("replication answer: {e}")))
    }
}
