//! A minimal W3C WebDriver client over hyper, enough to drive a real
//! headless Chromium through chromedriver: navigate, find, click, type,
//! run scripts, take screenshots.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::Request;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// chromedriver, killed when dropped.
pub struct Driver {
    child: Child,
    base: String,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn env_path(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| {
        panic!("{var} is not set: run the browser tests through scripts/test.sh, which installs chromium and chromium-driver and sets it")
    })
}

impl Driver {
    /// Starts `$CLEW_CHROMEDRIVER` on a free port and waits until it is ready.
    pub async fn start() -> Driver {
        let exe = env_path("CLEW_CHROMEDRIVER");
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(&exe)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {exe}: {e}"));
        let driver = Driver {
            child,
            base: format!("http://127.0.0.1:{port}"),
            client: Client::builder(TokioExecutor::new()).build(HttpConnector::new()),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(v) = driver.send("GET", "/status", None).await
                && v["value"]["ready"] == true
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver did not become ready"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        driver
    }

    async fn send(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        let req = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(
                body.map(|b| b.to_string()).unwrap_or_default(),
            )))
            .unwrap();
        let resp = self.client.request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        let v: Value = serde_json::from_slice(&bytes)
            .map_err(|e| format!("{e}: {}", String::from_utf8_lossy(&bytes)))?;
        if !status.is_success() {
            return Err(format!("{status}: {}", v["value"]));
        }
        Ok(v)
    }

    /// A new headless Chromium session.
    pub async fn session(&self) -> Session<'_> {
        let chromium = env_path("CLEW_CHROMIUM");
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1440,1000", "--no-first-run", "--disable-extensions"]
            }
        }}});
        let v = self.send("POST", "/session", Some(caps)).await.unwrap();
        let id = v["value"]["sessionId"].as_str().unwrap().to_owned();
        let s = Session { driver: self, id };
        s.cmd(
            "POST",
            "/timeouts",
            json!({"script": 60_000, "pageLoad": 60_000}),
        )
        .await;
        s
    }
}

/// One browser session.
pub struct Session<'a> {
    driver: &'a Driver,
    id: String,
}

/// A found element.
#[derive(Clone, Debug)]
pub struct Element(String);

impl Session<'_> {
    async fn try_cmd(&self, method: &str, path: &str, body: Value) -> Result<Value, String> {
        let body = if method == "GET" || method == "DELETE" {
            None
        } else {
            Some(body)
        };
        self.driver
            .send(method, &format!("/session/{}{path}", self.id), body)
            .await
            .map(|v| v["value"].clone())
    }

    async fn cmd(&self, method: &str, path: &str, body: Value) -> Value {
        self.try_cmd(method, path, body)
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    pub async fn goto(&self, url: &str) {
        self.cmd("POST", "/url", json!({ "url": url })).await;
    }

    pub async fn url(&self) -> String {
        self.cmd("GET", "/url", json!({}))
            .await
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// Runs `script` (a function body; `arguments` are `args`) and returns
    /// its value.
    pub async fn js(&self, script: &str, args: Vec<Value>) -> Value {
        self.cmd(
            "POST",
            "/execute/sync",
            json!({ "script": script, "args": args }),
        )
        .await
    }

    /// Runs an asynchronous script: it calls `arguments[arguments.length - 1]`
    /// with its result.
    pub async fn js_async(&self, script: &str, args: Vec<Value>) -> Value {
        self.cmd(
            "POST",
            "/execute/async",
            json!({ "script": script, "args": args }),
        )
        .await
    }

    /// Polls `script` until it returns something truthy (not null, false,
    /// 0 or ""), then returns that; panics with `what` after `timeout`.
    pub async fn wait_for(&self, what: &str, script: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.js(script, vec![]).await;
            let truthy = !(v.is_null() || v == false || v == 0 || v == "");
            if truthy {
                return v;
            }
            if Instant::now() > deadline {
                let err = self.js("const e = document.getElementById('error'); return e && !e.hidden ? e.textContent : null", vec![]).await;
                panic!("timed out waiting for {what} (page error: {err})");
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub async fn find(&self, css: &str) -> Element {
        let v = self
            .cmd(
                "POST",
                "/element",
                json!({ "using": "css selector", "value": css }),
            )
            .await;
        Element(
            v[ELEMENT]
                .as_str()
                .unwrap_or_else(|| panic!("no element id for {css}: {v}"))
                .to_owned(),
        )
    }

    pub async fn click(&self, el: &Element) {
        self.cmd("POST", &format!("/element/{}/click", el.0), json!({}))
            .await;
    }

    pub async fn send_keys(&self, el: &Element, text: &str) {
        self.cmd(
            "POST",
            &format!("/element/{}/value", el.0),
            json!({ "text": text }),
        )
        .await;
    }

    /// Saves a PNG screenshot of the viewport.
    pub async fn screenshot(&self, path: &Path) {
        let b64 = self.cmd("GET", "/screenshot", json!({})).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().unwrap())
            .unwrap();
        std::fs::write(path, png).unwrap();
    }

    pub async fn close(self) {
        let _ = self.try_cmd("DELETE", "", json!({})).await;
    }
}
