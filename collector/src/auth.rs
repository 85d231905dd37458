//! Who may read and, optionally, who may send: the authenticators of the
//! query API (HTTP and gRPC `Query`) and of ingest (OTLP gRPC and HTTP,
//! native gRPC), from [`AuthFlags`](crate::server::AuthFlags).

use clew_runtime::auth::{AuthConfig, AuthMetrics, Authenticator};

use crate::server::{AuthFlags, ServerError};

/// The collector's authenticators; `None` leaves a surface open.
#[derive(Debug, Clone)]
pub(crate) struct Guards {
    /// The query API's.
    pub(crate) query: Option<Authenticator>,
    /// Ingest's (static tokens only).
    pub(crate) ingest: Option<Authenticator>,
    /// Refusals, appended to `/metrics`.
    pub(crate) metrics: AuthMetrics,
}

impl Guards {
    /// Reads the token files and the JWKS; a file that cannot be read
    /// stops start-up naming it.
    pub(crate) async fn open(flags: &AuthFlags) -> Result<Self, ServerError> {
        let metrics = AuthMetrics::new();
        let bad = |flag: &str, e: clew_runtime::auth::AuthError| {
            ServerError::Config(format!("{flag}: {e}"))
        };
        let query = Authenticator::start("query", &flags.query.auth_config(), &metrics)
            .await
            .map_err(|e| bad("--query-token-file / --query-jwks", e))?;
        if query.is_none() {
            tracing::warn!(
                "the query API is unauthenticated: anyone who reaches it reads every trace (set --query-token-file or --query-jwks)"
            );
        }
        let ingest_config = AuthConfig {
            token_file: flags.ingest_token_file.clone(),
            ..AuthConfig::default()
        };
        let ingest = Authenticator::start("ingest", &ingest_config, &metrics)
            .await
            .map_err(|e| bad("--ingest-token-file", e))?;
        Ok(Guards {
            query,
            ingest,
            metrics,
        })
    }
}
