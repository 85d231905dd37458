//! The operator's error type.

/// Everything that can go wrong in the operator library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The object has no namespace (TraceCollectors are namespaced).
    #[error("{0} has no namespace")]
    MissingNamespace(String),
    /// Creating a certificate failed.
    #[error("certificate: {0}")]
    Cert(#[from] rcgen::Error),
    /// A Secret with certificates (the webhook's, the operator's CA, a pipeline's) is unusable.
    #[error("TLS secret {0}: {1}")]
    BadSecret(String, String),
    /// JSON (de)serialization failed.
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// YAML serialization failed.
    #[error("YAML: {0}")]
    Yaml(String),
    /// The spec cannot be rolled out (the message names the field); nothing was applied.
    #[error("invalid spec: {0}")]
    InvalidSpec(String),
}

impl Error {
    /// A bounded label for the error metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Kube(kube::Error::Api(s)) if s.code == 409 => "conflict",
            Self::Kube(kube::Error::Api(_)) => "api",
            Self::Kube(_) => "client",
            Self::MissingNamespace(_) | Self::InvalidSpec(_) => "invalid",
            Self::Cert(_) | Self::BadSecret(..) => "cert",
            Self::Json(_) | Self::Yaml(_) => "serialization",
        }
    }

    /// The reason of the `Degraded` condition and of the Event a failed reconcile reports.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::InvalidSpec(_) => "InvalidSpec",
            _ => "ReconcileFailed",
        }
    }
}

/// `Result` with the operator's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
