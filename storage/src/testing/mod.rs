//! Test support (feature `testing`): a real `redis-server` child process,
//! and a real Redis Cluster of several ([`cluster`]).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

mod cluster;

pub use cluster::{ClusterNode, ClusterTls, RedisCluster};

const REDIS_SERVER: &str = "/usr/bin/redis-server";

/// A redis-server child process, killed on drop.
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    /// The port it listens on.
    pub port: u16,
    aof: bool,
    dir: tempfile::TempDir,
    tls: Option<TlsServer>,
}

/// A TLS-only server's files and its ACL user.
#[derive(Debug, Clone)]
pub struct TlsServer {
    /// PEM certificate and key of the server.
    pub cert: std::path::PathBuf,
    /// Its key.
    pub key: std::path::PathBuf,
    /// PEM CA that issued it (and, with `client_auth`, the clients').
    pub ca: std::path::PathBuf,
    /// Require client certificates (`tls-auth-clients yes`).
    pub client_auth: bool,
    /// The ACL user every client must authenticate as (the default user is
    /// off), and its password.
    pub user: (String, String),
}

impl RedisServer {
    /// Starts a server on a free loopback port (AOF with `appendfsync
    /// always` when `aof`).
    pub async fn start(aof: bool) -> Self {
        Self::start_with(aof, None).await
    }

    /// A server that speaks only TLS on its port, with an ACL user and the
    /// default user disabled.
    pub async fn start_tls(tls: TlsServer) -> Self {
        Self::start_with(false, Some(tls)).await
    }

    async fn start_with(aof: bool, tls: Option<TlsServer>) -> Self {
        // A port picked free can be taken before redis binds it: try a few.
        for _ in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let mut server = RedisServer {
                child: None,
                port,
                aof,
                dir: tempfile::tempdir().unwrap(),
                tls: tls.clone(),
            };
            let dir = server.dir.path().to_path_buf();
            server.spawn(&dir);
            if server.wait_ready().await {
                return server;
            }
        }
        panic!("redis-server did not start");
    }

    /// Starts the process (again) in `dir`.
    pub fn spawn(&mut self, dir: &Path) {
        let aof = if self.aof { "yes" } else { "no" };
        let mut cmd = Command::new(REDIS_SERVER);
        match &self.tls {
            None => cmd.args(["--port", &self.port.to_string()]),
            Some(t) => {
                let (user, password) = &t.user;
                let auth = if t.client_auth { "yes" } else { "no" };
                cmd.args(["--port", "0", "--tls-port", &self.port.to_string()])
                    .args(["--tls-cert-file", t.cert.to_str().unwrap()])
                    .args(["--tls-key-file", t.key.to_str().unwrap()])
                    .args(["--tls-ca-cert-file", t.ca.to_str().unwrap()])
                    .args(["--tls-auth-clients", auth])
                    .args(["--user", "default", "off"])
                    .args([
                        "--user",
                        user,
                        "on",
                        &format!(">{password}"),
                        "~*",
                        "&*",
                        "+@all",
                    ])
            }
        };
        let child = cmd
            .args(["--bind", "127.0.0.1"])
            .args(["--dir", dir.to_str().unwrap()])
            .args(["--save", ""])
            .args(["--appendonly", aof])
            .args(["--appendfsync", "always"])
            .args(["--protected-mode", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run {REDIS_SERVER} (apt-get install redis-server): {e}")
            });
        self.child = Some(child);
    }

    /// Polls PING until the server answers (bounded), false if it never does.
    pub async fn wait_ready(&mut self) -> bool {
        if self.tls.as_ref().is_some_and(|t| t.client_auth) {
            // Its clients need a certificate: listening is the sign.
            return self.wait_listening().await;
        }
        let client = self.client();
        for _ in 0..250 {
            if let Some(child) = self.child.as_mut()
                && child.try_wait().unwrap().is_some()
            {
                return false; // exited: port taken?
            }
            if let Ok(mut conn) = client.get_multiplexed_async_connection().await
                && ::redis::cmd("PING")
                    .query_async::<String>(&mut conn)
                    .await
                    .is_ok()
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    /// Polls a TCP connection to the port until it is accepted (bounded).
    async fn wait_listening(&mut self) -> bool {
        for _ in 0..250 {
            if let Some(child) = self.child.as_mut()
                && child.try_wait().unwrap().is_some()
            {
                return false;
            }
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `redis://127.0.0.1:<port>`, or `rediss://localhost:<port>` for a
    /// TLS server (its certificate names `localhost`).
    pub fn url(&self) -> String {
        match self.tls {
            None => format!("redis://127.0.0.1:{}", self.port),
            Some(_) => format!("rediss://localhost:{}", self.port),
        }
    }

    /// A client of this server (over TLS with the ACL user for a TLS
    /// server; no client certificate).
    pub fn client(&self) -> ::redis::Client {
        use ::redis::IntoConnectionInfo as _;
        let Some(t) = &self.tls else {
            return ::redis::Client::open(self.url()).unwrap();
        };
        let info = self.url().into_connection_info().unwrap();
        let settings = info
            .redis_settings()
            .clone()
            .set_username(&t.user.0)
            .set_password(&t.user.1);
        ::redis::Client::build_with_tls(
            info.set_redis_settings(settings),
            ::redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(std::fs::read(&t.ca).unwrap()),
            },
        )
        .unwrap()
    }

    /// SIGKILLs the server.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and directory (AOF reloads).
    pub async fn restart(&mut self) {
        self.kill();
        let dir = self.dir.path().to_path_buf();
        self.spawn(&dir);
        assert!(self.wait_ready().await, "redis-server did not restart");
    }

    /// A raw connection.
    pub async fn raw(&self) -> ::redis::aio::MultiplexedConnection {
        self.client()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
