//! `--cold-url`: a local directory (`file:///var/lib/clew/cold`, a PVC) or
//! an S3 bucket with an optional prefix (`s3://bucket/prefix`) on AWS or
//! any S3-compatible server (`--cold-s3-endpoint`).
//!
//! S3 requests go through hyper with rustls (ring) — the TLS stack the rest
//! of clew uses — trusting the system's CA certificates or `--cold-s3-ca`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt as _;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector as HyperConnector;
use hyper_util::rt::TokioExecutor;
use object_store::aws::AmazonS3Builder;
use object_store::client::{
    ClientOptions, HttpClient, HttpConnector, HttpError, HttpErrorKind, HttpRequest,
    HttpRequestBody, HttpResponse, HttpResponseBody, HttpService,
};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStore, RetryConfig};

use crate::ColdError;

/// Where the cold tier lives and how to reach it.
#[derive(Debug, Clone, Default)]
pub struct ColdTarget {
    /// `file:///absolute/dir` or `s3://bucket[/prefix]`.
    pub url: String,
    /// S3 endpoint of an S3-compatible server (`http://minio:9000`);
    /// unset: AWS.
    pub endpoint: Option<String>,
    /// S3 region (default `us-east-1`, or `AWS_REGION`).
    pub region: Option<String>,
    /// Access key id (else `AWS_ACCESS_KEY_ID` or the credentials file).
    pub access_key_id: Option<String>,
    /// Secret access key (else `AWS_SECRET_ACCESS_KEY` or the file).
    pub secret_access_key: Option<String>,
    /// A file of `AWS_ACCESS_KEY_ID=…` and `AWS_SECRET_ACCESS_KEY=…` lines
    /// (a mounted Secret), read at start.
    pub credentials_file: Option<PathBuf>,
    /// PEM CA certificates the endpoint's certificate chains to.
    pub ca: Option<PathBuf>,
    /// Longest wait for an answer to one S3 request.
    pub timeout: Duration,
}

/// Opens the object store and the prefix blocks go under.
pub fn open(target: &ColdTarget) -> Result<(Arc<dyn ObjectStore>, Path), ColdError> {
    let bad = |why: &str| ColdError::Config(format!("--cold-url {:?}: {why}", target.url));
    if let Some(dir) = target.url.strip_prefix("file://") {
        if !dir.starts_with('/') {
            return Err(bad("a file:// URL needs an absolute path (file:///dir)"));
        }
        std::fs::create_dir_all(dir)
            .map_err(|e| ColdError::Config(format!("--cold-url: cannot create {dir}: {e}")))?;
        let fs = LocalFileSystem::new_with_prefix(dir)?.with_automatic_cleanup(true);
        return Ok((Arc::new(fs), Path::default()));
    }
    let Some(rest) = target.url.strip_prefix("s3://") else {
        return Err(bad("must start with file:// or s3://"));
    };
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(bad("names no bucket"));
    }
    let prefix = Path::parse(prefix.trim_matches('/'))
        .map_err(|_| bad("the prefix is not a valid object path"))?;
    Ok((Arc::new(s3(target, bucket)?), prefix))
}

fn s3(target: &ColdTarget, bucket: &str) -> Result<object_store::aws::AmazonS3, ColdError> {
    let mut b = AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        .with_http_connector(Connector {
            ca: target.ca.clone(),
            timeout: target.timeout,
        })
        .with_retry(RetryConfig {
            max_retries: 3,
            retry_timeout: target.timeout.saturating_mul(2),
            ..RetryConfig::default()
        });
    if let Some(region) = &target.region {
        b = b.with_region(region);
    }
    if let Some(endpoint) = &target.endpoint {
        b = b
            .with_endpoint(endpoint)
            .with_allow_http(endpoint.starts_with("http://"))
            .with_virtual_hosted_style_request(false);
    }
    if let Some(path) = &target.credentials_file {
        let (id, secret) = read_credentials(path)?;
        b = b.with_access_key_id(id).with_secret_access_key(secret);
    }
    if let Some(id) = &target.access_key_id {
        b = b.with_access_key_id(id);
    }
    if let Some(secret) = &target.secret_access_key {
        b = b.with_secret_access_key(secret);
    }
    Ok(b.build()?)
}

/// `AWS_ACCESS_KEY_ID=…` and `AWS_SECRET_ACCESS_KEY=…` from a file.
fn read_credentials(path: &std::path::Path) -> Result<(String, String), ColdError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ColdError::Config(format!(
            "--cold-s3-credentials-file {}: {e}",
            path.display()
        ))
    })?;
    let get = |key: &str| {
        text.lines()
            .filter_map(|l| l.trim().split_once('='))
            .find(|(k, _)| k.trim() == key)
            .map(|(_, v)| v.trim().to_owned())
            .ok_or_else(|| {
                ColdError::Config(format!(
                    "--cold-s3-credentials-file {}: no {key}= line",
                    path.display()
                ))
            })
    };
    Ok((get("AWS_ACCESS_KEY_ID")?, get("AWS_SECRET_ACCESS_KEY")?))
}

/// object_store's HTTP client, as hyper with rustls (ring).
#[derive(Debug)]
struct Connector {
    ca: Option<PathBuf>,
    timeout: Duration,
}

impl HttpConnector for Connector {
    fn connect(&self, _options: &ClientOptions) -> object_store::Result<HttpClient> {
        let generic = |e: String| object_store::Error::Generic {
            store: "S3",
            source: e.into(),
        };
        let builder = hyper_rustls::HttpsConnectorBuilder::new();
        let builder = match &self.ca {
            Some(ca) => builder.with_tls_config(tls_config(ca).map_err(generic)?),
            None => builder
                .with_provider_and_native_roots(rustls::crypto::ring::default_provider())
                .map_err(|e| generic(format!("no CA certificates for https: {e}")))?,
        };
        let mut http = HyperConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(self.timeout.min(Duration::from_secs(10))));
        http.set_nodelay(true);
        let https = builder.https_or_http().enable_http1().wrap_connector(http);
        let client = Client::builder(TokioExecutor::new()).build(https);
        Ok(HttpClient::new(Service {
            client,
            timeout: self.timeout,
        }))
    }
}

/// A client configuration trusting the CA certificates of `path`.
fn tls_config(path: &std::path::Path) -> Result<rustls::ClientConfig, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    let bad = |e: &dyn std::fmt::Display| format!("--cold-s3-ca {}: {e}", path.display());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path).map_err(|e| bad(&e))? {
        roots.add(cert.map_err(|e| bad(&e))?).map_err(|e| bad(&e))?;
    }
    if roots.is_empty() {
        return Err(bad(&"no certificate in the file"));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

type HyperClient = Client<hyper_rustls::HttpsConnector<HyperConnector>, HttpRequestBody>;

#[derive(Debug)]
struct Service {
    client: HyperClient,
    timeout: Duration,
}

#[async_trait::async_trait]
impl HttpService for Service {
    async fn call(&self, req: HttpRequest) -> Result<HttpResponse, HttpError> {
        let resp = match tokio::time::timeout(self.timeout, self.client.request(req)).await {
            Err(elapsed) => return Err(HttpError::new(HttpErrorKind::Timeout, elapsed)),
            Ok(Err(e)) => {
                let kind = if e.is_connect() {
                    HttpErrorKind::Connect
                } else {
                    HttpErrorKind::Request
                };
                return Err(HttpError::new(kind, e));
            }
            Ok(Ok(resp)) => resp,
        };
        let (parts, body) = resp.into_parts();
        let body = body.map_err(|e| HttpError::new(HttpErrorKind::Interrupted, e));
        Ok(HttpResponse::from_parts(parts, HttpResponseBody::new(body)))
    }
}
