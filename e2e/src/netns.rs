//! Network faults for the chaos tests, made with the kernel's own tools:
//! a network namespace joined to the host by a veth pair on a link-local
//! /30 (the only addresses it routes are the two ends of that pair), a
//! blackhole that silently drops every packet arriving in the namespace,
//! and a small tmpfs to fill a disk. Each is a guard that removes what it
//! made when dropped, even when the test panics.
//!
//! All of it needs root, `ip` (iproute2) and `iptables`; [`NetNs::create`]
//! says why it cannot run so a test can skip with that reason.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context as _, bail};

/// Runs `program args`, failing with its stderr when it does not succeed.
fn run(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A network namespace with a veth pair to the host, removed on drop.
#[derive(Debug)]
pub struct NetNs {
    /// The namespace's name (`clew-chaos-<pid>-<n>`).
    pub name: String,
    /// The host end's address.
    pub host_addr: Ipv4Addr,
    /// The namespace end's address: where its servers are reached.
    pub addr: Ipv4Addr,
    host_if: String,
    ns_if: String,
}

/// Namespaces made by this process, to name each uniquely.
static NEXT: AtomicU32 = AtomicU32::new(0);

/// Every namespace made here is named `clew-chaos-<pid>-<n>`.
const NS_PREFIX: &str = "clew-chaos-";

/// True while process `pid` exists.
fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Removes the namespaces (with what runs in them and their veth pairs)
/// of test processes that no longer run: a test killed before its guards
/// could clean up.
fn remove_stale() {
    let Ok(list) = run("ip", &["netns", "list"]) else {
        return;
    };
    for line in list.lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        let Some((pid, n)) = name
            .strip_prefix(NS_PREFIX)
            .and_then(|rest| rest.split_once('-'))
            .and_then(|(pid, n)| Some((pid.parse().ok()?, n.parse().ok()?)))
        else {
            continue;
        };
        if !alive(pid) {
            // Dropping it removes it.
            drop(NetNs::named(
                pid,
                n,
                Ipv4Addr::UNSPECIFIED,
                Ipv4Addr::UNSPECIFIED,
            ));
        }
    }
}

impl NetNs {
    /// Makes namespace `clew-chaos-<pid>-<n>` with its loopback up and a
    /// veth pair on a link-local /30 no other interface uses. An error
    /// means this machine cannot run the test (not root, no `ip`, no
    /// `iptables`, no permission); its message says which.
    pub fn create() -> anyhow::Result<NetNs> {
        let uid = run("id", &["-u"])?;
        if uid.trim() != "0" {
            bail!("needs root to make network namespaces (uid {})", uid.trim());
        }
        run("ip", &["-V"]).context("iproute2 (`ip`) is not installed")?;
        run("iptables", &["-V"]).context("`iptables` is not installed")?;
        remove_stale();
        let pid = std::process::id();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let (host_addr, addr) = free_link_local_pair(pid, n)?;
        let ns = NetNs::named(pid, n, host_addr, addr);
        // A leftover of a crashed run with the same name is ours too.
        let _ = run("ip", &["netns", "del", &ns.name]);
        let _ = run("ip", &["link", "del", &ns.host_if]);
        run("ip", &["netns", "add", &ns.name])?;
        ns.wire()
            .with_context(|| format!("setting up namespace {}", ns.name))?;
        Ok(ns)
    }

    /// Namespace `n` of process `pid` and its interfaces' names.
    fn named(pid: u32, n: u32, host_addr: Ipv4Addr, addr: Ipv4Addr) -> NetNs {
        // Interface names hold at most 15 bytes.
        let tag = format!("{}{n}", pid % 1_000_000);
        NetNs {
            name: format!("{NS_PREFIX}{pid}-{n}"),
            host_addr,
            addr,
            host_if: format!("cch{tag}"),
            ns_if: format!("ccn{tag}"),
        }
    }

    fn wire(&self) -> anyhow::Result<()> {
        let (h, n) = (self.host_if.as_str(), self.ns_if.as_str());
        let host_cidr = format!("{}/30", self.host_addr);
        let ns_cidr = format!("{}/30", self.addr);
        run("ip", &["link", "add", h, "type", "veth", "peer", "name", n])?;
        run("ip", &["link", "set", n, "netns", &self.name])?;
        run("ip", &["addr", "add", &host_cidr, "dev", h])?;
        run("ip", &["link", "set", h, "up"])?;
        self.exec("ip", &["addr", "add", &ns_cidr, "dev", n])?;
        self.exec("ip", &["link", "set", n, "up"])?;
        self.exec("ip", &["link", "set", "lo", "up"])?;
        // Proves iptables works in a namespace here before a test relies on it.
        self.exec("iptables", &["-w", "-L", "INPUT", "-n"])?;
        Ok(())
    }

    /// Routes everything the namespace sends through the host (a default
    /// route via the host end, and forwarding turned on in the host), so
    /// servers in two namespaces reach each other. Forwarding stays on
    /// afterwards: other namespaces of parallel tests may rely on it.
    pub fn route_via_host(&self) -> anyhow::Result<()> {
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
            .context("turning on IPv4 forwarding")?;
        let via = self.host_addr.to_string();
        self.exec("ip", &["route", "replace", "default", "via", &via])
            .map(drop)
    }

    /// Runs `program args` inside the namespace.
    pub fn exec(&self, program: &str, args: &[&str]) -> anyhow::Result<String> {
        let mut all = vec!["netns", "exec", &self.name, program];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// The argument list that runs `program` inside the namespace with
    /// `ip` (which execs it, so the process id is the program's own).
    pub fn command(&self, program: &Path) -> Vec<String> {
        vec![
            "netns".into(),
            "exec".into(),
            self.name.clone(),
            program.display().to_string(),
        ]
    }

    /// Drops every packet arriving in the namespace over the veth — no
    /// reset, no ICMP: the host's connections just go silent — until the
    /// returned guard is healed or dropped.
    pub fn blackhole(&self) -> anyhow::Result<Blackhole> {
        let hole = Blackhole {
            ns: self.name.clone(),
            iface: self.ns_if.clone(),
            active: true,
        };
        hole.iptables("-I")?;
        Ok(hole)
    }
}

impl Drop for NetNs {
    /// Kills what still runs in the namespace (only this test started
    /// processes there), then removes the veth pair and the namespace.
    fn drop(&mut self) {
        if let Ok(pids) = run("ip", &["netns", "pids", &self.name]) {
            for pid in pids.split_whitespace() {
                let _ = run("kill", &["-9", pid]);
            }
        }
        let _ = run("ip", &["link", "del", &self.host_if]);
        let _ = run("ip", &["netns", "del", &self.name]);
    }
}

/// A /30 in 169.254.0.0/16 no interface or route on the host mentions,
/// searched from a start that differs per process so parallel tests do not
/// race for the same one. Skips 169.254.169.0/24 (cloud metadata) and the
/// first and last /24, which RFC 3927 reserves.
fn free_link_local_pair(pid: u32, n: u32) -> anyhow::Result<(Ipv4Addr, Ipv4Addr)> {
    let used = run("ip", &["-4", "-o", "addr", "show"])? + &run("ip", &["-4", "route", "show"])?;
    const SLOTS: u32 = 253 * 64;
    let start = pid.wrapping_mul(97).wrapping_add(n.wrapping_mul(7919)) % SLOTS;
    for i in 0..SLOTS {
        let slot = (start + i) % SLOTS;
        let third = 1 + slot / 64;
        let base = (slot % 64) * 4;
        if third == 169 {
            continue;
        }
        let taken = (base..base + 4).any(|last| {
            let a = format!("169.254.{third}.{last}");
            used.contains(&format!("{a}/")) || used.contains(&format!("{a} "))
        });
        if !taken {
            let octets = |last: u32| Ipv4Addr::new(169, 254, third as u8, last as u8);
            return Ok((octets(base + 1), octets(base + 2)));
        }
    }
    bail!("no free link-local /30")
}

/// An active blackhole (see [`NetNs::blackhole`]).
#[derive(Debug)]
pub struct Blackhole {
    ns: String,
    iface: String,
    active: bool,
}

impl Blackhole {
    /// Removes the rule: packets flow again.
    pub fn heal(mut self) -> anyhow::Result<()> {
        self.active = false;
        self.iptables("-D")
    }

    /// Inserts (`-I`) or deletes (`-D`) the DROP rule.
    fn iptables(&self, op: &str) -> anyhow::Result<()> {
        let args = ["netns", "exec", &self.ns, "iptables", "-w", op, "INPUT"];
        run(
            "ip",
            &[&args[..], &["-i", &self.iface, "-j", "DROP"]].concat(),
        )
        .map(drop)
    }
}

impl Drop for Blackhole {
    fn drop(&mut self) {
        if self.active {
            let _ = self.iptables("-D");
        }
    }
}

/// A tmpfs of a fixed size mounted on a directory, unmounted on drop.
#[derive(Debug)]
pub struct Tmpfs {
    /// The mount point.
    pub dir: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `bytes` on `dir` (created if missing).
    pub fn mount(dir: &Path, bytes: u64) -> anyhow::Result<Tmpfs> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let size = format!("size={bytes}");
        run(
            "mount",
            &[
                "-t",
                "tmpfs",
                "-o",
                &size,
                "tmpfs",
                &dir.display().to_string(),
            ],
        )?;
        Ok(Tmpfs {
            dir: dir.to_path_buf(),
        })
    }

    /// Unmounts the tmpfs mounts whose path holds `<marker><pid>-` for a
    /// process that no longer runs: left by a test killed before its
    /// guards could clean up.
    pub fn remove_stale(marker: &str) {
        let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
        for line in mounts.lines() {
            let mut fields = line.split_whitespace();
            let (Some("tmpfs"), Some(point)) = (fields.next(), fields.next()) else {
                continue;
            };
            let Some(pid) = point
                .split_once(marker)
                .and_then(|(_, rest)| rest.split_once('-'))
                .and_then(|(pid, _)| pid.parse::<u32>().ok())
            else {
                continue;
            };
            if !alive(pid) {
                drop(Tmpfs {
                    dir: PathBuf::from(point),
                });
            }
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let d = self.dir.display().to_string();
        if run("umount", &[&d]).is_err() {
            // Still busy (a process not yet reaped): detach it now.
            let _ = run("umount", &["-l", &d]);
        }
    }
}
