//! Test support (feature `testing`): a real `redis-server` child process.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const REDIS_SERVER: &str = "/usr/bin/redis-server";

/// A redis-server child process, killed on drop.
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    /// The port it listens on.
    pub port: u16,
    aof: bool,
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts a server on a free loopback port (AOF with `appendfsync
    /// always` when `aof`).
    pub async fn start(aof: bool) -> Self {
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
        let child = Command::new(REDIS_SERVER)
            .args(["--port", &self.port.to_string()])
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
        let client = ::redis::Client::open(self.url()).unwrap();
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

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
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
        ::redis::Client::open(self.url())
            .unwrap()
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
