//! A small HTTP/1.1 client for probes and the query API.

use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// An HTTP client with a per-request timeout.
#[derive(Debug, Clone)]
pub struct HttpClient {
    inner: Client<HttpConnector, Empty<Bytes>>,
    timeout: Duration,
}

/// A response.
#[derive(Debug, Clone)]
pub struct Answer {
    /// Status code.
    pub status: u16,
    /// `x-trace-id` header, if any.
    pub trace_id: Option<String>,
    /// Body.
    pub body: String,
}

impl Answer {
    /// The body as JSON.
    pub fn json(&self) -> anyhow::Result<serde_json::Value> {
        serde_json::from_str(&self.body).with_context(|| format!("not JSON: {}", self.body))
    }
}

impl Default for HttpClient {
    fn default() -> Self {
        Self::new(Duration::from_secs(10))
    }
}

impl HttpClient {
    /// A client whose requests time out after `timeout`.
    pub fn new(timeout: Duration) -> Self {
        HttpClient {
            inner: Client::builder(TokioExecutor::new()).build_http(),
            timeout,
        }
    }

    /// `GET url`.
    pub async fn get(&self, url: &str) -> anyhow::Result<Answer> {
        let uri: hyper::Uri = url.parse().with_context(|| format!("bad URL {url}"))?;
        let fut = async {
            let resp = self.inner.get(uri).await?;
            let status = resp.status().as_u16();
            let trace_id = resp
                .headers()
                .get("x-trace-id")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let body = resp.into_body().collect().await?.to_bytes();
            anyhow::Ok(Answer {
                status,
                trace_id,
                body: String::from_utf8_lossy(&body).into_owned(),
            })
        };
        tokio::time::timeout(self.timeout, fut)
            .await
            .with_context(|| format!("GET {url} timed out"))?
    }

    /// True when `GET url` answers 200.
    pub async fn ok(&self, url: &str) -> bool {
        matches!(self.get(url).await, Ok(a) if a.status == 200)
    }
}
