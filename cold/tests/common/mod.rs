//! A real S3 server on loopback: `s3s-fs` (installed by scripts/test.sh
//! with `cargo install s3s-fs@0.14.1 --locked --features binary`), killed
//! on drop.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, dead_code)]

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clew_cold::url::ColdTarget;

pub mod moving;

pub const ACCESS_KEY: &str = "clew-test-key";
pub const SECRET_KEY: &str = "clew-test-secret-0123456789";

/// An `s3s-fs` process serving a temporary directory, with one bucket.
#[derive(Debug)]
pub struct S3Server {
    child: Child,
    pub port: u16,
    pub root: tempfile::TempDir,
}

fn binary() -> String {
    std::env::var("CLEW_S3S_FS").unwrap_or_else(|_| "s3s-fs".into())
}

impl S3Server {
    /// Starts the server with bucket `bucket` and waits until it accepts
    /// connections.
    pub fn start(bucket: &str) -> S3Server {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join(bucket)).unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(binary())
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(root.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "{} not started ({e}): run scripts/test.sh, which installs s3s-fs",
                    binary()
                )
            });
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "s3s-fs did not listen on {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        S3Server { child, port, root }
    }

    /// Where the tier lives on this server, with the right credentials.
    pub fn target(&self, url: &str) -> ColdTarget {
        ColdTarget {
            url: url.into(),
            endpoint: Some(format!("http://127.0.0.1:{}", self.port)),
            region: Some("us-east-1".into()),
            access_key_id: Some(ACCESS_KEY.into()),
            secret_access_key: Some(SECRET_KEY.into()),
            timeout: Duration::from_secs(10),
            ..ColdTarget::default()
        }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
