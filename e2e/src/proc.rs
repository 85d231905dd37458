//! Child processes.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tokio::process::{Child, Command};

/// The directory holding clew's binaries: `CLEW_BIN_DIR`, else the
/// directory of the running executable (or its parent, for test binaries
/// in `target/<profile>/deps`).
pub fn bin_dir() -> anyhow::Result<PathBuf> {
    if let Ok(d) = std::env::var("CLEW_BIN_DIR") {
        return Ok(PathBuf::from(d));
    }
    let exe = std::env::current_exe().context("locating the running executable")?;
    let mut dir = exe
        .parent()
        .map(Path::to_path_buf)
        .context("executable has no directory")?;
    if dir.ends_with("deps") {
        dir.pop();
    }
    Ok(dir)
}

/// The path of binary `name`, which must exist.
pub fn bin(name: &str) -> anyhow::Result<PathBuf> {
    let p = bin_dir()?.join(name);
    if !p.is_file() {
        bail!(
            "{} not found; build it first (cargo build --workspace --bins) or set CLEW_BIN_DIR",
            p.display()
        );
    }
    Ok(p)
}

/// A port free right now on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// A running child process, killed when dropped.
#[derive(Debug)]
pub struct Proc {
    /// Short name for logs.
    pub name: String,
    child: Option<Child>,
    program: PathBuf,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    log: Option<PathBuf>,
}

impl Proc {
    /// Starts binary `bin_name` with `args` and `envs`. Output goes to
    /// `log` (appended) or is inherited.
    pub fn spawn(
        name: &str,
        bin_name: &str,
        args: &[String],
        envs: &[(String, String)],
        log: Option<&Path>,
    ) -> anyhow::Result<Proc> {
        Self::spawn_program(name, bin(bin_name)?, args, envs, log)
    }

    /// Like [`Proc::spawn`] for any program (looked up in `PATH` when not
    /// a path), e.g. `redis-server`.
    pub fn spawn_program(
        name: &str,
        program: impl Into<PathBuf>,
        args: &[String],
        envs: &[(String, String)],
        log: Option<&Path>,
    ) -> anyhow::Result<Proc> {
        let mut p = Proc {
            name: name.to_string(),
            child: None,
            program: program.into(),
            args: args.to_vec(),
            envs: envs.to_vec(),
            log: log.map(Path::to_path_buf),
        };
        p.start()?;
        Ok(p)
    }

    fn start(&mut self) -> anyhow::Result<()> {
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            // Its own process group: a terminal's Ctrl-C reaches only the
            // process it was typed at (clew-local), which then stops its
            // children in order — collector last, after the services have
            // flushed their spans to it.
            .process_group(0)
            .kill_on_drop(true);
        if let Some(log) = &self.log {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .with_context(|| format!("opening {}", log.display()))?;
            let f2 = f.try_clone()?;
            cmd.stdout(f).stderr(f2);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", self.program.display()))?;
        self.child = Some(child);
        Ok(())
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// Sends `signal` (e.g. `TERM`, `INT`, `KILL`) with kill(1).
    pub async fn signal(&self, signal: &str) -> anyhow::Result<()> {
        self.kill_with(signal, false).await
    }

    /// Sends `signal` to the process's whole process group, as a terminal's
    /// Ctrl-C does to the foreground group.
    pub async fn signal_group(&self, signal: &str) -> anyhow::Result<()> {
        self.kill_with(signal, true).await
    }

    async fn kill_with(&self, signal: &str, group: bool) -> anyhow::Result<()> {
        let Some(pid) = self.pid() else {
            return Ok(());
        };
        let target = if group {
            format!("-{pid}")
        } else {
            pid.to_string()
        };
        let st = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg("--")
            .arg(&target)
            .status()
            .await?;
        if !st.success() {
            bail!("kill -{signal} -- {target} failed");
        }
        Ok(())
    }

    /// `kill -9` and reap.
    pub async fn kill9(&mut self) -> anyhow::Result<()> {
        if let Some(mut c) = self.child.take() {
            c.kill().await?;
        }
        Ok(())
    }

    /// SIGTERM, then waits up to `timeout` for a clean exit (else kills).
    /// Returns whether the process exited successfully by itself.
    pub async fn stop(&mut self, timeout: Duration) -> anyhow::Result<bool> {
        if self.child.is_none() {
            return Ok(true);
        }
        if let Some(c) = &mut self.child
            && let Some(st) = c.try_wait()?
        {
            // Already gone by itself.
            self.child = None;
            return Ok(st.success() || st.code().is_none());
        }
        if let Err(e) = self.signal("TERM").await
            && self.is_running()
        {
            return Err(e);
        }
        self.wait_exit(timeout).await
    }

    /// Waits up to `timeout` for the process to exit (else kills it).
    pub async fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<bool> {
        let Some(mut c) = self.child.take() else {
            return Ok(true);
        };
        match tokio::time::timeout(timeout, c.wait()).await {
            Ok(st) => {
                let st = st?;
                if !st.success() {
                    tracing::warn!(name = %self.name, status = %st, "exited with failure");
                    eprintln!("{} exited: {st}", self.name);
                }
                Ok(st.success())
            }
            Err(_) => {
                tracing::warn!(name = %self.name, "did not stop in time; killing");
                c.kill().await?;
                Ok(false)
            }
        }
    }

    /// Starts the same command again (after a stop or kill).
    pub fn restart(&mut self) -> anyhow::Result<()> {
        if self.child.is_some() {
            bail!("{} is still running", self.name);
        }
        self.start()
    }

    /// True while the child has not exited.
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }
}

impl Drop for Proc {
    /// A process still running is asked to stop (SIGTERM, so a supervisor
    /// like `clew-local` stops its own children), then killed.
    fn drop(&mut self) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        if let Some(pid) = c.id() {
            let _ = std::process::Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if !matches!(c.try_wait(), Ok(None)) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let _ = c.start_kill();
    }
}

/// Polls `probe` every 50 ms until it returns true or `timeout` passes.
pub async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut probe: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if probe().await {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
