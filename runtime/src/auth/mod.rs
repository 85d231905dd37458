//! Bearer authentication shared by the servers that guard reads (the
//! collector's query API, the visualizer) and, optionally, ingest.
//!
//! A request carries `Authorization: Bearer <token>`; the token is accepted
//! when it is one of the static tokens of a file ([`AuthConfig::token_file`],
//! re-read when it changes) or an OIDC JWT signed by a key of a JWKS
//! ([`AuthConfig::jwks`], a file or an http(s) URL) with a valid `exp` /
//! `nbf` and the configured issuer and audience. A refusal is a 401 (HTTP,
//! [`require_bearer`]) or UNAUTHENTICATED (gRPC, [`RequireBearer`]) with no
//! detail; the reason goes to the log with the peer's address and to
//! `clew_auth_refusals_total{surface,reason}` ([`AuthMetrics`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::http::HeaderValue;

mod http;
mod jwks;
mod metrics;
mod tokens;

#[cfg(feature = "grpc")]
mod grpc;
#[cfg(feature = "testing")]
pub mod testing;
#[cfg(all(test, feature = "testing"))]
mod tests;

#[cfg(feature = "grpc")]
pub use grpc::RequireBearer;
pub use http::{protect, refusal_response, require_bearer};
pub use metrics::AuthMetrics;

/// What a server accepts as a credential.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// Static bearer tokens, one a line.
    pub token_file: Option<PathBuf>,
    /// A JWKS file or `http(s)://` URL whose keys sign accepted JWTs.
    pub jwks: Option<String>,
    /// PEM CA certificates an `https` JWKS URL's certificate must chain
    /// to; `None`: the system's.
    pub jwks_ca: Option<PathBuf>,
    /// The `iss` a JWT must carry.
    pub issuer: Option<String>,
    /// A value the JWT's `aud` must contain.
    pub audience: Option<String>,
    /// How often the token file (and a JWKS file) is read again.
    pub file_poll: Duration,
    /// How often a JWKS URL is fetched again.
    pub jwks_refresh: Duration,
    /// The shortest time between two fetches caused by unknown key ids.
    pub jwks_min_refresh: Duration,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            token_file: None,
            jwks: None,
            jwks_ca: None,
            issuer: None,
            audience: None,
            file_poll: Duration::from_secs(2),
            jwks_refresh: Duration::from_secs(300),
            jwks_min_refresh: Duration::from_secs(10),
        }
    }
}

impl AuthConfig {
    /// Whether any credential is configured (otherwise nothing is checked).
    pub fn is_enabled(&self) -> bool {
        self.token_file.is_some() || self.jwks.is_some()
    }
}

/// Why the authenticator could not start.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// A token or JWKS file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The JWKS URL is not a URL.
    #[error("invalid JWKS URL {0:?}")]
    JwksUrl(String),
    /// The JWKS could not be fetched or parsed.
    #[error("JWKS: {0}")]
    Jwks(String),
    /// `--…-jwt-issuer` or `--…-jwt-audience` without a JWKS.
    #[error("a JWT issuer or audience is set without a JWKS")]
    RulesWithoutJwks,
}

/// Why a request was refused: a small fixed set, the `reason` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// No `Authorization` header.
    Missing,
    /// An `Authorization` header that is not `Bearer <token>`.
    NotBearer,
    /// Not a static token, and not a JWT (or no JWKS is configured).
    UnknownToken,
    /// A JWT that cannot be decoded.
    Malformed,
    /// A JWT signed with an algorithm not accepted (or not its key's).
    BadAlgorithm,
    /// A JWT naming a key the JWKS does not hold.
    UnknownKey,
    /// A JWT whose signature does not verify.
    BadSignature,
    /// A JWT past its `exp`.
    Expired,
    /// A JWT before its `nbf`.
    NotYetValid,
    /// A JWT from another issuer.
    WrongIssuer,
    /// A JWT for another audience.
    WrongAudience,
    /// A JWT without a required claim (`exp`, and `iss`/`aud` when checked).
    MissingClaim,
}

impl Reason {
    /// The metric label and log field.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Missing => "missing",
            Reason::NotBearer => "not_bearer",
            Reason::UnknownToken => "unknown_token",
            Reason::Malformed => "malformed",
            Reason::BadAlgorithm => "bad_algorithm",
            Reason::UnknownKey => "unknown_key",
            Reason::BadSignature => "bad_signature",
            Reason::Expired => "expired",
            Reason::NotYetValid => "not_yet_valid",
            Reason::WrongIssuer => "wrong_issuer",
            Reason::WrongAudience => "wrong_audience",
            Reason::MissingClaim => "missing_claim",
        }
    }

    /// Whether the request carried a credential (the answer then says
    /// `error="invalid_token"`).
    pub fn token_given(self) -> bool {
        self != Reason::Missing
    }
}

/// Checks bearer credentials for one surface (`query`, `ingest`, `ui`).
/// Cheap to clone; the token file and JWKS are watched in the background
/// while a clone lives.
#[derive(Debug, Clone)]
pub struct Authenticator {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    surface: &'static str,
    tokens: Option<Arc<tokens::TokenFile>>,
    jwks: Option<Arc<jwks::Jwks>>,
    metrics: AuthMetrics,
}

impl Authenticator {
    /// Reads the token file and the JWKS and starts watching them; `None`
    /// when `config` configures no credential. Needs a tokio runtime.
    pub async fn start(
        surface: &'static str,
        config: &AuthConfig,
        metrics: &AuthMetrics,
    ) -> Result<Option<Self>, AuthError> {
        if config.jwks.is_none() && (config.issuer.is_some() || config.audience.is_some()) {
            return Err(AuthError::RulesWithoutJwks);
        }
        if !config.is_enabled() {
            return Ok(None);
        }
        let tokens = match &config.token_file {
            Some(path) => {
                let file = tokens::TokenFile::open(path).await?;
                tokens::TokenFile::watch(&file, config.file_poll);
                Some(file)
            }
            None => None,
        };
        let jwks = match &config.jwks {
            Some(s) => Some(open_jwks(s, config).await?),
            None => None,
        };
        tracing::info!(
            surface,
            token_file = ?config.token_file,
            jwks = ?config.jwks,
            issuer = ?config.issuer,
            audience = ?config.audience,
            "bearer authentication required"
        );
        Ok(Some(Authenticator {
            inner: Arc::new(Inner {
                surface,
                tokens,
                jwks,
                metrics: metrics.clone(),
            }),
        }))
    }

    /// Checks an `Authorization` header; on success, who (a JWT's `sub`,
    /// or `None` for a static token).
    pub async fn check(
        &self,
        authorization: Option<&HeaderValue>,
    ) -> Result<Option<String>, Reason> {
        let header = authorization.ok_or(Reason::Missing)?;
        let token = bearer(header).ok_or(Reason::NotBearer)?;
        if let Some(tokens) = &self.inner.tokens
            && tokens.current().contains(token)
        {
            return Ok(None);
        }
        match &self.inner.jwks {
            Some(jwks) if token.split('.').count() == 3 => jwks.verify(token).await,
            _ => Err(Reason::UnknownToken),
        }
    }

    /// [`check`](Self::check), with a refusal logged (reason and peer) and
    /// counted.
    pub async fn admit(
        &self,
        authorization: Option<&HeaderValue>,
        peer: Option<SocketAddr>,
    ) -> Result<(), Reason> {
        match self.check(authorization).await {
            Ok(sub) => {
                tracing::trace!(surface = self.inner.surface, ?peer, ?sub, "authenticated");
                Ok(())
            }
            Err(reason) => {
                let surface = self.inner.surface;
                match reason {
                    Reason::Missing => tracing::debug!(
                        surface,
                        ?peer,
                        reason = reason.as_str(),
                        "request without credentials refused"
                    ),
                    _ => tracing::info!(
                        surface,
                        ?peer,
                        reason = reason.as_str(),
                        "credentials refused"
                    ),
                }
                self.inner.metrics.refused(surface, reason);
                Err(reason)
            }
        }
    }
}

async fn open_jwks(s: &str, config: &AuthConfig) -> Result<Arc<jwks::Jwks>, AuthError> {
    let source = jwks::Source::parse(s)?;
    let every = match source {
        jwks::Source::File(_) => config.file_poll,
        jwks::Source::Url(_) => config.jwks_refresh,
    };
    let rules = jwks::Rules {
        issuer: config.issuer.clone(),
        audience: config.audience.clone(),
    };
    let ca = config.jwks_ca.as_deref();
    let jwks = jwks::Jwks::open(source, rules, config.jwks_min_refresh, ca).await?;
    jwks::Jwks::watch(&jwks, every);
    Ok(jwks)
}

/// The token of `Bearer <token>` (the scheme is case-insensitive).
fn bearer(header: &HeaderValue) -> Option<&str> {
    let value = header.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Defines a clap flag struct with the read-authentication flags
/// (`--query-token-file`, `--query-jwks`, `--query-jwks-ca`, `--query-jwt-issuer`,
/// `--query-jwt-audience`), each binary with its own environment prefix.
#[macro_export]
macro_rules! read_auth_flags {
    ($(#[$meta:meta])* $vis:vis struct $name:ident, env = $prefix:literal) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Default, clap::Args)]
        $vis struct $name {
            /// Bearer tokens accepted on reads, one a line (blank lines and
            /// `#` comments skipped). Re-read when the file changes.
            #[arg(long, env = concat!($prefix, "QUERY_TOKEN_FILE"))]
            pub query_token_file: Option<::std::path::PathBuf>,
            /// OIDC JWTs signed by a key of this JWKS are accepted on reads:
            /// a file, or an http(s) URL (cached; fetched again every 5
            /// minutes and when a token names an unknown key).
            #[arg(long, env = concat!($prefix, "QUERY_JWKS"))]
            pub query_jwks: Option<String>,
            /// PEM CA certificates the `https` JWKS URL's certificate must
            /// chain to (an identity provider with a private CA); unset,
            /// the system's trust store.
            #[arg(long, env = concat!($prefix, "QUERY_JWKS_CA"), requires = "query_jwks")]
            pub query_jwks_ca: Option<::std::path::PathBuf>,
            /// The issuer (`iss`) a JWT must name.
            #[arg(long, env = concat!($prefix, "QUERY_JWT_ISSUER"), requires = "query_jwks")]
            pub query_jwt_issuer: Option<String>,
            /// The audience a JWT's `aud` must contain.
            #[arg(long, env = concat!($prefix, "QUERY_JWT_AUDIENCE"), requires = "query_jwks")]
            pub query_jwt_audience: Option<String>,
        }

        impl $name {
            /// What these flags accept.
            pub fn auth_config(&self) -> $crate::auth::AuthConfig {
                $crate::auth::AuthConfig {
                    token_file: self.query_token_file.clone(),
                    jwks: self.query_jwks.clone(),
                    jwks_ca: self.query_jwks_ca.clone(),
                    issuer: self.query_jwt_issuer.clone(),
                    audience: self.query_jwt_audience.clone(),
                    ..$crate::auth::AuthConfig::default()
                }
            }
        }
    };
}
