//! TLS and mTLS with rustls (ring), configured the same way in every
//! binary, with certificates re-read when their files change.
//!
//! - [`ServerTls`]: a server's certificate and key, and with a client CA,
//!   client certificates required and verified (mTLS). [`ServerTls::reload`]
//!   (run every `--tls-reload-interval` by [`ServerTls::spawn_reloader`])
//!   re-reads the files and, when they changed, builds a new configuration:
//!   new handshakes get it, established connections keep theirs. A failed
//!   re-read keeps the last good configuration and logs why.
//! - [`ClientTls`]: a CA to verify servers with, an optional client
//!   certificate and key, an optional server-name override; reloaded the
//!   same way, each new connection using the current files.
//! - [`TlsIncoming`] turns a [`TrackedListener`](crate::net::TrackedListener)
//!   into a stream of TLS connections, handshaking concurrently (each
//!   bounded by the listener's header-read timeout); a failed handshake is
//!   logged with the peer and never reaches the server.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

mod connector;
mod incoming;
#[cfg(feature = "testing")]
pub mod testing;

pub use connector::{TlsConnection, TlsConnector};
pub use incoming::{ServerTlsStream, TlsIncoming};

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file holds no usable PEM item of the kind wanted.
    #[error("{path}: {what}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// rustls refused the combination (a key that does not match its
    /// certificate, for instance).
    #[error("{0}")]
    Rustls(String),
}

/// The lowest TLS version accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum TlsVersion {
    /// TLS 1.2 and 1.3.
    #[default]
    #[value(name = "1.2")]
    V1_2,
    /// TLS 1.3 only.
    #[value(name = "1.3")]
    V1_3,
}

impl TlsVersion {
    fn versions(self) -> &'static [&'static rustls::SupportedProtocolVersion] {
        static BOTH: &[&rustls::SupportedProtocolVersion] =
            &[&rustls::version::TLS13, &rustls::version::TLS12];
        static ONLY13: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];
        match self {
            TlsVersion::V1_2 => BOTH,
            TlsVersion::V1_3 => ONLY13,
        }
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

fn certs(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Pem {
            path: path.to_owned(),
            what: format!("not PEM certificates: {e}"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: path.to_owned(),
            what: "no certificate in the file".into(),
        });
    }
    Ok(certs)
}

fn key(path: &Path, pem: &[u8]) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| TlsError::Pem {
        path: path.to_owned(),
        what: format!("no private key: {e}"),
    })
}

fn roots(path: &Path, pem: &[u8]) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    for cert in certs(path, pem)? {
        store.add(cert).map_err(|e| TlsError::Pem {
            path: path.to_owned(),
            what: format!("not a usable CA certificate: {e}"),
        })?;
    }
    Ok(store)
}

/// The files of a configuration and their contents as last read.
#[derive(Debug)]
struct Files {
    paths: Vec<PathBuf>,
    contents: Vec<Vec<u8>>,
}

impl Files {
    fn read(paths: Vec<PathBuf>) -> Result<Files, TlsError> {
        let contents = paths.iter().map(|p| read(p)).collect::<Result<_, _>>()?;
        Ok(Files { paths, contents })
    }

    fn get(&self, path: &Path) -> &[u8] {
        self.paths
            .iter()
            .position(|p| p == path)
            .map_or(&[][..], |i| &self.contents[i])
    }
}

/// A server's TLS files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTlsFiles {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// PEM CA certificates: with it, clients must present a certificate
    /// it issued (mTLS).
    pub client_ca: Option<PathBuf>,
    /// The lowest TLS version accepted.
    pub min_version: TlsVersion,
}

/// A server's TLS configuration, re-read when its files change.
#[derive(Debug, Clone)]
pub struct ServerTls {
    inner: Arc<Reloading<ServerTlsFiles>>,
}

impl ServerTls {
    /// Reads `files` and builds the configuration; `alpn` are the
    /// protocols offered (`h2` for gRPC; `h2`, `http/1.1` for HTTP).
    pub fn load(files: ServerTlsFiles, alpn: &[&[u8]]) -> Result<ServerTls, TlsError> {
        Reloading::load(files, alpn).map(|r| ServerTls { inner: Arc::new(r) })
    }

    /// The configuration for a new handshake.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.inner.config()
    }

    /// Re-reads the files; when they changed, builds and installs a new
    /// configuration. `Ok(true)`: a new one is in force.
    pub fn reload(&self) -> Result<bool, TlsError> {
        self.inner.reload()
    }

    /// Calls [`reload`](Self::reload) every `every`, logging what happens.
    pub fn spawn_reloader(
        &self,
        every: Duration,
        what: &'static str,
    ) -> tokio::task::JoinHandle<()> {
        let tls = self.clone();
        spawn_reloader(every, what, move || tls.reload())
    }
}

/// The files of a TLS configuration and how to build it from them.
trait TlsFiles {
    /// The rustls configuration built.
    type Config;
    /// The files read (and compared on reload).
    fn paths(&self) -> Vec<PathBuf>;
    /// The configuration from the files' contents.
    fn build(&self, read: &Files, alpn: &[Vec<u8>]) -> Result<Arc<Self::Config>, TlsError>;
}

/// A configuration and the files it was built from, rebuilt when their
/// contents change.
#[derive(Debug)]
struct Reloading<F: TlsFiles> {
    files: F,
    alpn: Vec<Vec<u8>>,
    current: RwLock<(Arc<F::Config>, Files)>,
}

impl<F: TlsFiles> Reloading<F> {
    fn load(files: F, alpn: &[&[u8]]) -> Result<Self, TlsError> {
        let alpn: Vec<Vec<u8>> = alpn.iter().map(|p| p.to_vec()).collect();
        let read = Files::read(files.paths())?;
        let config = files.build(&read, &alpn)?;
        Ok(Reloading {
            files,
            alpn,
            current: RwLock::new((config, read)),
        })
    }

    fn config(&self) -> Arc<F::Config> {
        Arc::clone(&self.current.read().0)
    }

    /// Re-reads the files; when their contents differ from the current
    /// ones, builds a configuration from them and installs it.
    fn reload(&self) -> Result<bool, TlsError> {
        let read = Files::read(self.files.paths())?;
        if read.contents == self.current.read().1.contents {
            return Ok(false);
        }
        let config = self.files.build(&read, &self.alpn)?;
        *self.current.write() = (config, read);
        Ok(true)
    }
}

impl TlsFiles for ServerTlsFiles {
    type Config = ServerConfig;
    fn paths(&self) -> Vec<PathBuf> {
        server_paths(self)
    }
    fn build(&self, read: &Files, alpn: &[Vec<u8>]) -> Result<Arc<ServerConfig>, TlsError> {
        server_config(self, read, alpn)
    }
}

impl TlsFiles for ClientTlsFiles {
    type Config = ClientConfig;
    fn paths(&self) -> Vec<PathBuf> {
        client_paths(self)
    }
    fn build(&self, read: &Files, alpn: &[Vec<u8>]) -> Result<Arc<ClientConfig>, TlsError> {
        client_config(self, alpn, read)
    }
}

fn server_paths(files: &ServerTlsFiles) -> Vec<PathBuf> {
    let mut paths = vec![files.cert.clone(), files.key.clone()];
    paths.extend(files.client_ca.clone());
    paths
}

fn server_config(
    files: &ServerTlsFiles,
    read: &Files,
    alpn: &[Vec<u8>],
) -> Result<Arc<ServerConfig>, TlsError> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(files.min_version.versions())
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    let builder = match &files.client_ca {
        Some(ca) => {
            let roots = roots(ca, read.get(ca))?;
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider(),
            )
            .build()
            .map_err(|e| TlsError::Rustls(format!("client CA {}: {e}", ca.display())))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let chain = certs(&files.cert, read.get(&files.cert))?;
    let key = key(&files.key, read.get(&files.key))?;
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Rustls(format!("{}: {e}", files.cert.display())))?;
    config.alpn_protocols = alpn.to_vec();
    Ok(Arc::new(config))
}

/// A client's TLS files.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClientTlsFiles {
    /// PEM CA certificates the server's certificate must chain to.
    pub ca: PathBuf,
    /// PEM client certificate chain and key, for servers that require one.
    pub identity: Option<(PathBuf, PathBuf)>,
    /// The name the server's certificate must carry, instead of the host
    /// dialled.
    pub server_name: Option<String>,
}

/// A client's TLS configuration, re-read when its files change.
#[derive(Debug, Clone)]
pub struct ClientTls {
    inner: Arc<Reloading<ClientTlsFiles>>,
}

impl ClientTls {
    /// Reads `files` and builds the configuration (ALPN `h2`: gRPC).
    pub fn load(files: ClientTlsFiles) -> Result<ClientTls, TlsError> {
        Self::load_with_alpn(files, &[b"h2"])
    }

    /// Reads `files` and builds the configuration offering the protocols
    /// `alpn` (e.g. `http/1.1` for an HTTP/1 client).
    pub fn load_with_alpn(files: ClientTlsFiles, alpn: &[&[u8]]) -> Result<ClientTls, TlsError> {
        Reloading::load(files, alpn).map(|r| ClientTls { inner: Arc::new(r) })
    }

    /// The configuration for a new connection.
    pub fn config(&self) -> Arc<ClientConfig> {
        self.inner.config()
    }

    /// The name to verify a server `host` by.
    pub fn server_name(&self, host: &str) -> Result<ServerName<'static>, TlsError> {
        let name = self.inner.files.server_name.as_deref().unwrap_or(host);
        let name = name.trim_start_matches('[').trim_end_matches(']');
        ServerName::try_from(name.to_owned())
            .map_err(|e| TlsError::Rustls(format!("server name {name:?}: {e}")))
    }

    /// Re-reads the files; `Ok(true)` when a new configuration is in force.
    pub fn reload(&self) -> Result<bool, TlsError> {
        self.inner.reload()
    }

    /// Calls [`reload`](Self::reload) every `every`, logging what happens.
    pub fn spawn_reloader(
        &self,
        every: Duration,
        what: &'static str,
    ) -> tokio::task::JoinHandle<()> {
        let tls = self.clone();
        spawn_reloader(every, what, move || tls.reload())
    }

    /// A connector for tonic's `Endpoint::connect_with_connector`.
    pub fn connector(&self) -> TlsConnector {
        TlsConnector::new(self.clone())
    }
}

fn client_paths(files: &ClientTlsFiles) -> Vec<PathBuf> {
    let mut paths = vec![files.ca.clone()];
    if let Some((cert, key)) = &files.identity {
        paths.extend([cert.clone(), key.clone()]);
    }
    paths
}

fn client_config(
    files: &ClientTlsFiles,
    alpn: &[Vec<u8>],
    read: &Files,
) -> Result<Arc<ClientConfig>, TlsError> {
    let roots = roots(&files.ca, read.get(&files.ca))?;
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Rustls(e.to_string()))?
        .with_root_certificates(roots);
    let mut config = match &files.identity {
        Some((cert, key_path)) => builder
            .with_client_auth_cert(
                certs(cert, read.get(cert))?,
                key(key_path, read.get(key_path))?,
            )
            .map_err(|e| TlsError::Rustls(format!("{}: {e}", cert.display())))?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.to_vec();
    Ok(Arc::new(config))
}

fn spawn_reloader(
    every: Duration,
    what: &'static str,
    reload: impl Fn() -> Result<bool, TlsError> + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every.max(Duration::from_millis(10)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        let mut failing = false;
        loop {
            tick.tick().await;
            match reload() {
                Ok(true) => {
                    failing = false;
                    tracing::info!(
                        what,
                        "TLS certificate files changed: new handshakes use them"
                    );
                }
                Ok(false) => failing = false,
                Err(e) if !failing => {
                    failing = true;
                    tracing::warn!(what, error = %e, "re-reading the TLS files failed; keeping the last good ones");
                }
                Err(_) => {}
            }
        }
    })
}

/// Server TLS flags: `--tls-cert`, `--tls-key`, `--tls-client-ca`,
/// `--tls-min-version`, `--tls-reload-interval`, with environment
/// variables under `env` (e.g. `CLEW_TLS_CERT`).
///
/// ```ignore
/// clew_runtime::server_tls_flags!(pub struct TlsFlags, env = "CLEW_");
/// ```
#[macro_export]
macro_rules! server_tls_flags {
    ($(#[$meta:meta])* $vis:vis struct $name:ident, env = $env:literal) => {
        $(#[$meta])*
        #[derive(Debug, Clone, clap::Args)]
        $vis struct $name {
            /// PEM certificate chain (leaf first): with `--tls-key`, the
            /// listeners serve TLS. Re-read when it changes.
            #[arg(long, env = concat!($env, "TLS_CERT"), requires = "tls_key")]
            pub tls_cert: Option<std::path::PathBuf>,
            /// PEM private key of `--tls-cert`.
            #[arg(long, env = concat!($env, "TLS_KEY"), requires = "tls_cert")]
            pub tls_key: Option<std::path::PathBuf>,
            /// PEM CA certificates: clients must present a certificate it
            /// issued (mTLS). Needs `--tls-cert`.
            #[arg(long, env = concat!($env, "TLS_CLIENT_CA"), requires = "tls_cert")]
            pub tls_client_ca: Option<std::path::PathBuf>,
            /// The lowest TLS version accepted.
            #[arg(long, env = concat!($env, "TLS_MIN_VERSION"), value_enum, default_value = "1.2")]
            pub tls_min_version: $crate::tls::TlsVersion,
            /// How often the TLS files are checked for changes.
            #[arg(long, env = concat!($env, "TLS_RELOAD_INTERVAL"), default_value = "10s", value_parser = humantime::parse_duration)]
            pub tls_reload_interval: std::time::Duration,
        }

        impl $name {
            /// The files, when TLS is on.
            pub fn files(&self) -> Option<$crate::tls::ServerTlsFiles> {
                Some($crate::tls::ServerTlsFiles {
                    cert: self.tls_cert.clone()?,
                    key: self.tls_key.clone()?,
                    client_ca: self.tls_client_ca.clone(),
                    min_version: self.tls_min_version,
                })
            }
        }
    };
}

#[cfg(all(test, feature = "testing"))]
mod tests;
