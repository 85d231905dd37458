//! OTLP/HTTP `POST /v1/traces` bodies, shared by the collector and the
//! sidecar: the two encodings (binary protobuf and OTLP/JSON), decoding a
//! request, and answering with a response or a `google.rpc.Status` error in
//! the request's encoding, as the OTLP specification requires.

use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message as _;

/// `Content-Type` of binary protobuf bodies.
pub const CONTENT_TYPE_PROTOBUF: &str = "application/x-protobuf";

/// `Content-Type` of OTLP/JSON bodies.
pub const CONTENT_TYPE_JSON: &str = "application/json";

/// The encoding of an OTLP/HTTP body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// Binary protobuf (`application/x-protobuf`).
    Protobuf,
    /// OTLP/JSON (`application/json`).
    Json,
}

/// `google.rpc.Status`, the body OTLP/HTTP requires on 4xx/5xx.
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
}

impl Encoding {
    /// The encoding named by a `Content-Type` value: parameters
    /// (`; charset=utf-8`) and letter case are ignored, and
    /// `application/protobuf` is an alias of `application/x-protobuf`.
    /// `None` for any other media type.
    pub fn from_content_type(content_type: &str) -> Option<Self> {
        let essence = media_type(content_type);
        if essence.eq_ignore_ascii_case(CONTENT_TYPE_PROTOBUF)
            || essence.eq_ignore_ascii_case("application/protobuf")
        {
            Some(Encoding::Protobuf)
        } else if essence.eq_ignore_ascii_case(CONTENT_TYPE_JSON) {
            Some(Encoding::Json)
        } else {
            None
        }
    }

    /// The encoding of a request, from its `Content-Type` header.
    pub fn from_headers(headers: &HeaderMap) -> Option<Self> {
        Self::from_content_type(content_type(headers))
    }

    /// The `Content-Type` to answer with.
    pub fn content_type(self) -> &'static str {
        match self {
            Encoding::Protobuf => CONTENT_TYPE_PROTOBUF,
            Encoding::Json => CONTENT_TYPE_JSON,
        }
    }

    /// Decodes a request body. The error says what is wrong in words safe to
    /// send back (no internals).
    pub fn decode_request(self, body: &[u8]) -> Result<ExportTraceServiceRequest, String> {
        match self {
            Encoding::Protobuf => {
                ExportTraceServiceRequest::decode(body).map_err(|_| "invalid protobuf".to_string())
            }
            Encoding::Json => serde_json::from_slice(body)
                .map_err(|e| format!("invalid JSON at line {} column {}", e.line(), e.column())),
        }
    }

    /// Encodes an export response.
    pub fn encode_response(self, resp: &ExportTraceServiceResponse) -> Vec<u8> {
        match self {
            // Written by hand: the crate's serde writes `"partialSuccess":null`
            // when absent and `rejectedSpans` (an int64) as a JSON number, where
            // OTLP/JSON leaves absent fields out and writes int64 as a string.
            Encoding::Json => match &resp.partial_success {
                None => b"{}".to_vec(),
                Some(ps) => serde_json::json!({
                    "partialSuccess": {
                        "rejectedSpans": ps.rejected_spans.to_string(),
                        "errorMessage": ps.error_message,
                    }
                })
                .to_string()
                .into_bytes(),
            },
            Encoding::Protobuf => resp.encode_to_vec(),
        }
    }

    /// A 200 answer carrying `resp`.
    pub fn ok(self, resp: &ExportTraceServiceResponse) -> Response {
        (
            [(header::CONTENT_TYPE, self.content_type())],
            self.encode_response(resp),
        )
            .into_response()
    }

    /// An error answer: `status` with a `google.rpc.Status` body (`grpc_code`,
    /// `message`), and `Retry-After` in whole seconds (at least 1) when given.
    pub fn error(
        self,
        status: StatusCode,
        grpc_code: i32,
        message: &str,
        retry_after: Option<Duration>,
    ) -> Response {
        let body = match self {
            Encoding::Json => serde_json::json!({ "code": grpc_code, "message": message })
                .to_string()
                .into_bytes(),
            Encoding::Protobuf => RpcStatus {
                code: grpc_code,
                message: message.to_string(),
            }
            .encode_to_vec(),
        };
        let mut resp =
            (status, [(header::CONTENT_TYPE, self.content_type())], body).into_response();
        if let Some(after) = retry_after
            && let Ok(v) = HeaderValue::from_str(&after.as_secs().max(1).to_string())
        {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        resp
    }
}

/// The `Content-Type` header's value ("" when absent or not text).
pub fn content_type(headers: &HeaderMap) -> &str {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// The media type of a `Content-Type` value, without parameters.
pub fn media_type(content_type: &str) -> &str {
    content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim_matches([' ', '\t'])
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt as _;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTracePartialSuccess;

    #[test]
    fn content_types() {
        for (ct, want) in [
            ("application/x-protobuf", Some(Encoding::Protobuf)),
            (
                "Application/Protobuf; charset=utf-8",
                Some(Encoding::Protobuf),
            ),
            (" application/json ;charset=utf-8", Some(Encoding::Json)),
            ("text/plain", None),
            ("", None),
            ("application/jsonx", None),
        ] {
            assert_eq!(Encoding::from_content_type(ct), want, "{ct:?}");
        }
    }

    #[test]
    fn bad_bodies_are_described_without_internals() {
        assert_eq!(
            Encoding::Protobuf
                .decode_request(&[0xff, 0xff, 0xff])
                .unwrap_err(),
            "invalid protobuf"
        );
        assert_eq!(
            Encoding::Json
                .decode_request(b"{\n  \"resourceSpans\": [")
                .unwrap_err(),
            "invalid JSON at line 2 column 20"
        );
        let ok = Encoding::Json
            .decode_request(br#"{"resourceSpans":[]}"#)
            .unwrap();
        assert!(ok.resource_spans.is_empty());
    }

    #[test]
    fn json_responses_follow_otlp_json() {
        let none = ExportTraceServiceResponse::default();
        assert_eq!(Encoding::Json.encode_response(&none), b"{}");
        let some = ExportTraceServiceResponse {
            partial_success: Some(ExportTracePartialSuccess {
                rejected_spans: 3,
                error_message: "bad ids".into(),
            }),
        };
        let v: serde_json::Value =
            serde_json::from_slice(&Encoding::Json.encode_response(&some)).unwrap();
        assert_eq!(v["partialSuccess"]["rejectedSpans"], "3");
        assert_eq!(v["partialSuccess"]["errorMessage"], "bad ids");
        assert_eq!(
            ExportTraceServiceResponse::decode(&Encoding::Protobuf.encode_response(&some)[..])
                .unwrap(),
            some
        );
    }

    #[tokio::test]
    async fn errors_carry_an_rpc_status_and_retry_after() {
        let r = Encoding::Protobuf.error(
            StatusCode::TOO_MANY_REQUESTS,
            8,
            "busy",
            Some(Duration::from_millis(200)),
        );
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()[header::RETRY_AFTER], "1");
        assert_eq!(r.headers()[header::CONTENT_TYPE], CONTENT_TYPE_PROTOBUF);
        let body = r.into_body().collect().await.unwrap().to_bytes();
        let st = RpcStatus::decode(body).unwrap();
        assert_eq!((st.code, st.message.as_str()), (8, "busy"));

        let r = Encoding::Json.error(StatusCode::BAD_REQUEST, 3, "no", None);
        assert!(r.headers().get(header::RETRY_AFTER).is_none());
        let body = r.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v, serde_json::json!({"code": 3, "message": "no"}));
    }
}
