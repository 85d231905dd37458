//! Test support (feature `testing`): floods of idle connections, a
//! slowloris client, a keep-alive HTTP/1.1 client and a prober that checks
//! a server keeps answering — all blocking, over real sockets.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{self, BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Makes room for `want` open files in this process (and the children it
/// spawns after): sets soft and hard limits to `want` if allowed (root),
/// else raises the soft limit to the hard one. Returns the soft limit.
pub fn fd_budget(want: u64) -> u64 {
    let now = super::raise_nofile_limit().map(|l| l.soft).unwrap_or(1024);
    if now >= want || super::set_nofile_limit(want).is_ok() {
        return now.max(want);
    }
    now
}

/// Opens up to `n` connections to `addr` that never send anything (made
/// non-blocking for [`still_open`]), from 8 threads so that one connect
/// waiting on a SYN retransmit does not stall the rest. Stops early when
/// connecting keeps failing (e.g. out of descriptors), returning what it
/// has and the last error.
pub fn open_idle(addr: SocketAddr, n: usize) -> (Vec<TcpStream>, Option<io::Error>) {
    const THREADS: usize = 8;
    let parts: Vec<(Vec<TcpStream>, Option<io::Error>)> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..THREADS)
            .map(|i| {
                let share = n / THREADS + usize::from(i < n % THREADS);
                s.spawn(move || open_some(addr, share))
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    let mut out = Vec::with_capacity(n);
    let mut err = None;
    for (conns, e) in parts {
        out.extend(conns);
        err = err.or(e);
    }
    (out, err)
}

fn open_some(addr: SocketAddr, n: usize) -> (Vec<TcpStream>, Option<io::Error>) {
    let mut out = Vec::with_capacity(n);
    let mut failures = 0;
    while out.len() < n {
        // A dropped SYN is retransmitted only after a second: on a loaded
        // machine that stalled floods, so a slow attempt is retried anew.
        match TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            Ok(s) => {
                s.set_nonblocking(true).unwrap();
                out.push(s);
                failures = 0;
            }
            Err(e) => {
                failures += 1;
                if failures >= 25 {
                    return (out, Some(e));
                }
            }
        }
    }
    (out, None)
}

/// Drops the connections the server has closed (EOF or reset); returns
/// how many are still open.
pub fn still_open(conns: &mut Vec<TcpStream>) -> usize {
    let mut buf = [0u8; 512];
    conns.retain_mut(|s| match s.read(&mut buf) {
        Ok(0) => false,
        Ok(_) => true,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => true,
        Err(_) => false,
    });
    conns.len()
}

/// Waits (bounded by `deadline`) until the server has closed every
/// connection; returns how many are still open at the end.
pub fn wait_all_closed(conns: &mut Vec<TcpStream>, deadline: Duration) -> usize {
    let end = Instant::now() + deadline;
    while still_open(conns) > 0 && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(100));
    }
    conns.len()
}

/// A slowloris client: starts a request, then sends one more header line
/// every `every`, at most `max_lines`. Returns how long the server let it
/// go on before closing it, or `None` if it never did.
pub fn slowloris(addr: SocketAddr, every: Duration, max_lines: usize) -> Option<Duration> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    let start = Instant::now();
    s.write_all(b"POST /v1/traces HTTP/1.1\r\nHost: x\r\n")
        .ok()?;
    s.set_read_timeout(Some(every)).ok()?;
    let mut buf = [0u8; 512];
    for i in 0..max_lines {
        if s.write_all(format!("X-Slow-{i}: y\r\n").as_bytes())
            .is_err()
        {
            return Some(start.elapsed());
        }
        // Wait `every` for the server to close (it may answer 408 first).
        let until = Instant::now() + every;
        while Instant::now() < until {
            match s.read(&mut buf) {
                Ok(0) => return Some(start.elapsed()),
                Ok(_) => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    break;
                }
                Err(_) => return Some(start.elapsed()),
            }
        }
    }
    None
}

/// A keep-alive HTTP/1.1 client that reconnects when its connection
/// fails.
#[derive(Debug)]
pub struct HttpClient {
    addr: SocketAddr,
    timeout: Duration,
    conn: Option<BufReader<TcpStream>>,
}

impl HttpClient {
    /// A client of `addr` whose every step times out after `timeout`.
    pub fn new(addr: SocketAddr, timeout: Duration) -> Self {
        Self {
            addr,
            timeout,
            conn: None,
        }
    }

    /// Sends one request; returns the status and body. On any error the
    /// connection is dropped (the next request reconnects).
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        content_type: &str,
        body: &[u8],
    ) -> io::Result<(u16, Vec<u8>)> {
        let r = self.try_request(method, path, content_type, body);
        if r.is_err() {
            self.conn = None;
        }
        r
    }

    fn try_request(
        &mut self,
        method: &str,
        path: &str,
        content_type: &str,
        body: &[u8],
    ) -> io::Result<(u16, Vec<u8>)> {
        if self.conn.is_none() {
            let s = TcpStream::connect_timeout(&self.addr, self.timeout)?;
            s.set_read_timeout(Some(self.timeout))?;
            s.set_write_timeout(Some(self.timeout))?;
            self.conn = Some(BufReader::new(s));
        }
        let conn = self.conn.as_mut().expect("connected above");
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        conn.get_mut().write_all(head.as_bytes())?;
        conn.get_mut().write_all(body)?;
        let bad = |m: &str| io::Error::new(io::ErrorKind::InvalidData, m.to_string());
        let mut line = String::new();
        if conn.read_line(&mut line)? == 0 {
            return Err(bad("closed before the status line"));
        }
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("bad status line"))?;
        let mut len = 0usize;
        loop {
            line.clear();
            if conn.read_line(&mut line)? == 0 {
                return Err(bad("closed in the headers"));
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                len = v.trim().parse().map_err(|_| bad("bad content-length"))?;
            }
        }
        let mut out = vec![0; len];
        conn.read_exact(&mut out)?;
        Ok((status, out))
    }
}

/// What a [`Prober`] saw.
#[derive(Debug, Default)]
pub struct ProbeReport {
    /// Probes that succeeded (possibly after retries).
    pub ok: u64,
    /// The longest a probe took to succeed.
    pub worst: Duration,
    /// Probes that did not succeed within the deadline, with the last error.
    pub failures: Vec<String>,
}

/// Runs a probe every `every` on its own thread until stopped.
#[derive(Debug)]
pub struct Prober {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<ProbeReport>,
}

impl Prober {
    /// Starts calling `probe` every `every`; a probe that fails is retried
    /// (a real client retries) until it has taken `deadline`, then counted
    /// as a failure.
    pub fn start(
        every: Duration,
        deadline: Duration,
        mut probe: impl FnMut() -> Result<(), String> + Send + 'static,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let s = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut report = ProbeReport::default();
            while !s.load(Ordering::Acquire) {
                let start = Instant::now();
                loop {
                    match probe() {
                        Ok(()) => {
                            report.ok += 1;
                            report.worst = report.worst.max(start.elapsed());
                            break;
                        }
                        Err(e) if start.elapsed() >= deadline => {
                            report.failures.push(e);
                            break;
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(20)),
                    }
                }
                std::thread::sleep(every);
            }
            report
        });
        Self { stop, thread }
    }

    /// Stops probing and returns the report.
    pub fn finish(self) -> ProbeReport {
        self.stop.store(true, Ordering::Release);
        self.thread.join().expect("prober thread")
    }
}

/// The value of `name{listener="<listener>"}` in a Prometheus text
/// exposition (0 when absent).
pub fn metric(text: &str, name: &str, listener: &str) -> u64 {
    let prefix = format!("{name}{{listener=\"{listener}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// The status of a GET of `path` on a fresh connection.
pub fn get_status(addr: SocketAddr, path: &str, timeout: Duration) -> Result<u16, String> {
    HttpClient::new(addr, timeout)
        .request("GET", path, "text/plain", b"")
        .map(|(s, _)| s)
        .map_err(|e| e.to_string())
}

/// Polls `ops`'s `/readyz` until it answers 200, for at most 30 s.
pub fn wait_ready(ops: SocketAddr, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while get_status(ops, "/readyz", Duration::from_secs(5)).ok() != Some(200) {
        assert!(Instant::now() < deadline, "{what} never became ready");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// An OTLP/JSON export of one span, numbered `n` (its ids), now.
pub fn otlp_json_span(n: u64, service: &str) -> Vec<u8> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        r#"{{"resourceSpans":[{{"resource":{{"attributes":[{{"key":"service.name","value":{{"stringValue":"{service}"}}}}]}},"scopeSpans":[{{"spans":[{{"traceId":"{:032x}","spanId":"{:016x}","name":"probe","startTimeUnixNano":"{now}","endTimeUnixNano":"{now}"}}]}}]}}]}}"#,
        n + 1,
        n + 1
    )
    .into_bytes()
}
