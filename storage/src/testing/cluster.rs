//! A real Redis Cluster on loopback: `masters` masters with one replica
//! each, `redis-server --cluster-enabled yes` processes joined by
//! `redis-cli --cluster create … --cluster-replicas 1`, with AOF on.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const REDIS_CLI: &str = "/usr/bin/redis-cli";

/// One node of a [`RedisCluster`].
#[derive(Debug)]
pub struct ClusterNode {
    child: Option<Child>,
    /// Its port on 127.0.0.1.
    pub port: u16,
}

/// A running Redis Cluster, its processes killed on drop.
#[derive(Debug)]
pub struct RedisCluster {
    /// Every node, masters first as created (roles change on failover).
    pub nodes: Vec<ClusterNode>,
    dir: tempfile::TempDir,
    tls: Option<ClusterTls>,
}

/// TLS and an ACL user for every node: clients, the cluster bus and
/// replication all over TLS (`--port 0`), the default user off.
#[derive(Debug, Clone)]
pub struct ClusterTls {
    /// PEM server certificate (for 127.0.0.1), its key and the CA.
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
    pub ca: std::path::PathBuf,
    /// The ACL user and password clients (and replicas) log in with.
    pub user: (String, String),
}

impl ClusterTls {
    fn server_args(&self) -> Vec<String> {
        let path = |p: &std::path::Path| p.display().to_string();
        let (user, pass) = &self.user;
        vec![
            "--tls-cert-file".into(),
            path(&self.cert),
            "--tls-key-file".into(),
            path(&self.key),
            "--tls-ca-cert-file".into(),
            path(&self.ca),
            "--tls-cluster".into(),
            "yes".into(),
            "--tls-replication".into(),
            "yes".into(),
            "--tls-auth-clients".into(),
            "no".into(),
            // An ACL rule's words are separate arguments.
            "--user".into(),
            user.clone(),
            "on".into(),
            format!(">{pass}"),
            "~*".into(),
            "&*".into(),
            "+@all".into(),
            "--user".into(),
            "default".into(),
            "off".into(),
            "--masteruser".into(),
            user.clone(),
            "--masterauth".into(),
            pass.clone(),
        ]
    }

    fn cli_args(&self) -> Vec<String> {
        vec![
            "--tls".into(),
            "--cacert".into(),
            self.ca.display().to_string(),
            "--user".into(),
            self.user.0.clone(),
            "--pass".into(),
            self.user.1.clone(),
            "--no-auth-warning".into(),
        ]
    }
}

/// A free port whose cluster bus port (`port + 10000`) is free too: below
/// the ephemeral range, so the bus port exists.
fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = 20_000 + (std::process::id() % 2_000) as u16 * 10;
    for _ in 0..10_000 {
        let port = base + NEXT.fetch_add(1, Ordering::Relaxed) % 20_000;
        let free = |p: u16| TcpListener::bind(("127.0.0.1", p)).is_ok();
        if free(port) && free(port + 10_000) {
            return port;
        }
    }
    panic!("no free port pair for a cluster node")
}

fn spawn_node(dir: &std::path::Path, port: u16, tls: Option<&ClusterTls>) -> Child {
    let node_dir = dir.join(port.to_string());
    std::fs::create_dir_all(&node_dir).unwrap();
    let listen: Vec<String> = match tls {
        None => vec!["--port".into(), port.to_string()],
        Some(tls) => {
            let mut a = vec![
                "--port".into(),
                "0".into(),
                "--tls-port".into(),
                port.to_string(),
            ];
            a.extend(tls.server_args());
            a
        }
    };
    Command::new(super::REDIS_SERVER)
        .args(&listen)
        .args(["--bind", "127.0.0.1"])
        .args([
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
        ])
        .args(["--cluster-node-timeout", "2000"])
        .args(["--dir", node_dir.to_str().unwrap()])
        .args([
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
        ])
        .args(["--protected-mode", "no", "--repl-diskless-sync-delay", "0"])
        .args(["--logfile", node_dir.join("redis.log").to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {} (apt-get install redis-server): {e}",
                super::REDIS_SERVER
            )
        })
}

/// `redis-cli -p port <args>` (with the TLS and ACL options of `tls`),
/// its stdout.
fn cli(tls: Option<&ClusterTls>, port: u16, args: &[&str]) -> String {
    let out = Command::new(REDIS_CLI)
        .args(tls.map(ClusterTls::cli_args).unwrap_or_default())
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {REDIS_CLI}: {e}"));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl RedisCluster {
    /// Starts `masters` masters and as many replicas, joins them and waits
    /// until every node sees the cluster whole (`cluster_state:ok`).
    pub async fn start(masters: usize) -> RedisCluster {
        Self::start_with(masters, None).await
    }

    /// [`RedisCluster::start`], over TLS with an ACL user when `tls` is given.
    pub async fn start_with(masters: usize, tls: Option<ClusterTls>) -> RedisCluster {
        let dir = tempfile::tempdir().unwrap();
        let mut nodes = Vec::new();
        for _ in 0..masters * 2 {
            let port = free_port();
            nodes.push(ClusterNode {
                child: Some(spawn_node(dir.path(), port, tls.as_ref())),
                port,
            });
        }
        let cluster = RedisCluster { nodes, dir, tls };
        for n in &cluster.nodes {
            wait(&format!("node {} answering", n.port), || {
                cli(cluster.tls.as_ref(), n.port, &["PING"]).trim() == "PONG"
            })
            .await;
        }
        let addrs: Vec<String> = cluster
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let mut create: Vec<&str> = vec!["--cluster", "create"];
        create.extend(addrs.iter().map(String::as_str));
        create.extend(["--cluster-replicas", "1", "--cluster-yes"]);
        let out = cli(cluster.tls.as_ref(), cluster.nodes[0].port, &create);
        assert!(
            out.contains("[OK] All 16384 slots covered"),
            "redis-cli --cluster create: {out}"
        );
        for n in &cluster.nodes {
            wait(&format!("node {} in a whole cluster", n.port), || {
                cluster.info(n.port).contains("cluster_state:ok")
            })
            .await;
        }
        // Every replica synced with its master: one that has not may not
        // take over when its master dies.
        wait("every replica synced", || {
            cluster.synced_replicas() == masters
        })
        .await;
        // And every master's view of the cluster names its replica (the
        // views spread by gossip).
        wait("every master seeing its replica", || {
            cluster
                .masters()
                .iter()
                .all(|m| cluster.find_replica(*m).is_some())
        })
        .await;
        cluster
    }

    /// Replicas whose link to their master is up.
    fn synced_replicas(&self) -> usize {
        self.nodes
            .iter()
            .filter(|n| {
                let r = cli(self.tls.as_ref(), n.port, &["INFO", "replication"]);
                r.contains("role:slave") && r.contains("master_link_status:up")
            })
            .count()
    }

    /// Whether every master's replicas have acknowledged all its writes
    /// (replication is asynchronous: a write just made may still be on its
    /// way to the replica that takes over when its master dies).
    pub fn replicas_caught_up(&self) -> bool {
        self.nodes.iter().all(|n| {
            let r = cli(self.tls.as_ref(), n.port, &["INFO", "replication"]);
            if !r.contains("role:master") {
                return true;
            }
            let field = |prefix: &str| r.lines().find_map(|l| l.strip_prefix(prefix));
            let Some(offset) = field("master_repl_offset:").map(str::trim) else {
                return false;
            };
            let replicas: Vec<&str> = r.lines().filter(|l| l.starts_with("slave")).collect();
            !replicas.is_empty()
                && replicas
                    .iter()
                    .all(|l| l.split(',').any(|kv| kv == format!("offset={offset}")))
        })
    }

    /// `CLUSTER INFO` of the node on `port`.
    pub fn info(&self, port: u16) -> String {
        cli(self.tls.as_ref(), port, &["CLUSTER", "INFO"])
    }

    /// Seed URLs of every node (`redis://127.0.0.1:<port>`, `rediss://`
    /// over TLS).
    pub fn urls(&self) -> Vec<String> {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        self.nodes
            .iter()
            .map(|n| format!("{scheme}://127.0.0.1:{}", n.port))
            .collect()
    }

    /// The ports of the nodes that serve slots as masters now, as a live
    /// node sees them.
    pub fn masters(&self) -> Vec<u16> {
        let port = self
            .nodes
            .iter()
            .find(|n| n.child.is_some())
            .map_or(0, |n| n.port);
        let mut out: Vec<u16> = cli(self.tls.as_ref(), port, &["CLUSTER", "NODES"])
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                let flags: Vec<&str> = f.get(2)?.split(',').collect();
                let serving = flags.contains(&"master")
                    && !flags.iter().any(|x| x.starts_with("fail"))
                    && f.len() > 8;
                serving.then(|| f[1].split(['@', ':']).nth(1)?.parse().ok())?
            })
            .collect();
        out.sort_unstable();
        out
    }

    /// SIGKILLs the node on `port`.
    pub fn kill(&mut self, port: u16) {
        if let Some(n) = self.nodes.iter_mut().find(|n| n.port == port)
            && let Some(mut child) = n.child.take()
        {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// A cluster of `masters` masters shared by the tests of a process
    /// that run at the same time: started by the first, stopped when the
    /// last lets go (so nothing outlives the test binary). Tests sharing
    /// it must use key prefixes of their own and must not kill its nodes.
    pub async fn shared(masters: usize) -> std::sync::Arc<RedisCluster> {
        use std::sync::{Arc, Weak};
        static SHARED: tokio::sync::Mutex<Option<Weak<RedisCluster>>> =
            tokio::sync::Mutex::const_new(None);
        let mut slot = SHARED.lock().await;
        if let Some(live) = slot.as_ref().and_then(Weak::upgrade)
            && live.masters().len() == masters
        {
            return live;
        }
        let cluster = Arc::new(RedisCluster::start(masters).await);
        *slot = Some(Arc::downgrade(&cluster));
        cluster
    }

    /// The node id of the node on `port`.
    pub fn node_id(&self, port: u16) -> String {
        cli(self.tls.as_ref(), port, &["CLUSTER", "MYID"])
            .trim()
            .to_owned()
    }

    /// `redis-cli --cluster reshard`: moves `slots` slots (with their
    /// keys) from the master on `from` to the master on `to`; its output.
    pub fn reshard(&self, from: u16, to: u16, slots: usize) -> String {
        let (from_id, to_id) = (self.node_id(from), self.node_id(to));
        let at = format!("127.0.0.1:{from}");
        let slots = slots.to_string();
        let out = Command::new(REDIS_CLI)
            .args(
                self.tls
                    .as_ref()
                    .map(ClusterTls::cli_args)
                    .unwrap_or_default(),
            )
            .args(["--cluster", "reshard", &at, "--cluster-from", &from_id])
            .args(["--cluster-to", &to_id, "--cluster-slots", &slots])
            .args(["--cluster-yes", "--cluster-pipeline", "100"])
            .output()
            .unwrap_or_else(|e| panic!("cannot run {REDIS_CLI}: {e}"));
        assert!(
            out.status.success(),
            "redis-cli --cluster reshard: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// How many keys matching `pattern` the node on `port` holds.
    pub fn count_keys(&self, port: u16, pattern: &str) -> usize {
        cli(self.tls.as_ref(), port, &["--scan", "--pattern", pattern])
            .lines()
            .count()
    }

    /// The port of the replica of the master on `port`.
    pub fn replica_of(&self, port: u16) -> u16 {
        self.find_replica(port)
            .unwrap_or_else(|| panic!("master {port} has no replica"))
    }

    /// The replica of the master on `port`, as that master sees it.
    fn find_replica(&self, port: u16) -> Option<u16> {
        let id = self.node_id(port);
        cli(self.tls.as_ref(), port, &["CLUSTER", "NODES"])
            .lines()
            .find_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.get(3) == Some(&id.as_str()))
                    .then(|| f.get(1)?.split(['@', ':']).nth(1)?.parse().ok())?
            })
    }

    /// The port of the master serving `slot`, as the first live node sees it.
    pub fn owner_of(&self, slot: usize) -> u16 {
        let port = self
            .nodes
            .iter()
            .find(|n| n.child.is_some())
            .map_or(0, |n| n.port);
        cli(self.tls.as_ref(), port, &["CLUSTER", "NODES"])
            .lines()
            .find_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                let serves = f.iter().skip(8).any(|r| {
                    let (lo, hi) = r.split_once('-').unwrap_or((r, r));
                    matches!((lo.parse::<usize>(), hi.parse::<usize>()), (Ok(lo), Ok(hi)) if (lo..=hi).contains(&slot))
                });
                serves.then(|| f.get(1)?.split(['@', ':']).nth(1)?.parse().ok())?
            })
            .unwrap_or(0)
    }

    /// `CLUSTER COUNTKEYSINSLOT` on the node on `port`.
    pub fn keys_in_slot(&self, port: u16, slot: usize) -> u64 {
        cli(
            self.tls.as_ref(),
            port,
            &["CLUSTER", "COUNTKEYSINSLOT", &slot.to_string()],
        )
        .trim()
        .parse()
        .unwrap_or(0)
    }

    /// `used_memory` of the node on `port`.
    pub fn used_memory(&self, port: u16) -> u64 {
        cli(self.tls.as_ref(), port, &["INFO", "memory"])
            .lines()
            .find_map(|l| l.strip_prefix("used_memory:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    /// `DBSIZE` of the node on `port`.
    pub fn dbsize(&self, port: u16) -> u64 {
        cli(self.tls.as_ref(), port, &["DBSIZE"])
            .trim()
            .parse()
            .unwrap_or(0)
    }

    /// Starts again the node on `port` (after [`RedisCluster::kill`]), on
    /// its data directory: it rejoins the cluster (as a replica, when its
    /// replica took over).
    pub fn restart(&mut self, port: u16) {
        let dir = self.dir.path().to_path_buf();
        if let Some(n) = self.nodes.iter_mut().find(|n| n.port == port)
            && n.child.is_none()
        {
            n.child = Some(spawn_node(&dir, port, self.tls.as_ref()));
        }
    }

    /// Waits until every master has a replica in sync with it again.
    pub async fn wait_synced(&self) {
        let masters = self.nodes.len() / 2;
        wait("every replica synced", || self.synced_replicas() == masters).await;
    }

    /// Where the nodes keep their data.
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut child) = n.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// Polls `ok` until it holds (at most 30 s).
async fn wait(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn six_processes_form_a_cluster_of_three_masters_with_a_replica_each() {
        let mut cluster = RedisCluster::start(3).await;
        let info = cluster.info(cluster.nodes[0].port);
        assert!(info.contains("cluster_size:3"), "{info}");
        assert!(info.contains("cluster_known_nodes:6"), "{info}");
        assert_eq!(cluster.masters().len(), 3);
        // A key written through one node is read through another
        // (redis-cli -c follows the MOVED redirection).
        let (a, b) = (cluster.nodes[0].port, cluster.nodes[4].port);
        assert_eq!(cli(None, a, &["-c", "SET", "clew:k", "v"]).trim(), "OK");
        assert_eq!(cli(None, b, &["-c", "GET", "clew:k"]).trim(), "v");
        wait("the write on every replica", || {
            cluster.replicas_caught_up()
        })
        .await;
        // kill -9 of a master: its replica takes over.
        let victim = cluster.masters()[0];
        cluster.kill(victim);

        wait("a replica promoted", || {
            let m = cluster.masters();
            m.len() == 3 && !m.contains(&victim)
        })
        .await;
        let alive = cluster
            .nodes
            .iter()
            .find(|n| n.port != victim)
            .unwrap()
            .port;
        wait("the cluster whole again", || {
            cluster.info(alive).contains("cluster_state:ok")
        })
        .await;
        assert_eq!(cli(None, alive, &["-c", "GET", "clew:k"]).trim(), "v");
    }
}
