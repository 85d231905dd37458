#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The managed Redis Cluster's own commands, run as real processes: the Redis container's
//! command and arguments exactly as `desired_redis` writes them (the kubelet's part done by
//! hand: `$(POD_NAME)` expanded, the volumes' paths mapped to directories), six of them, each
//! on a loopback address of its own as each pod has an IP of its own; then the bootstrap Job's
//! script as `desired_bootstrap_job` writes it, given the nodes' addresses.
//!
//! Only name resolution is stood in for: the pods' DNS names resolve through a `getent` first
//! on the nodes' `PATH` that reads a hosts file the test writes (and asks the system's
//! `getent` for anything else). Needs `redis-server` and `redis-cli` (apt-get install
//! redis-server, as scripts/test.sh does), `sh` and `awk`.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use clew_operator::crd::{TraceCollector, TraceCollectorSpec};
use clew_operator::desired::{self, redis_cluster};
use clew_operator::{certs, tls};
use k8s_openapi::api::core::v1::Container;
use serde_json::json;

const REDIS_CLI: &str = "/usr/bin/redis-cli";
const PASSWORD: &str = "0123456789abcdef0123456789abcdef";

fn cluster_tc(with_tls: bool) -> TraceCollector {
    let spec: TraceCollectorSpec = serde_json::from_value(json!({
        "storage": {"redis": {"managed": {"cluster": {"shards": 3}}}},
        "tls": {"enabled": with_tls},
    }))
    .unwrap();
    let mut tc = TraceCollector::new("main", spec);
    tc.metadata.namespace = Some("shop".into());
    tc
}

/// One Redis pod: its loopback address, its port and its volume.
struct Node {
    ordinal: usize,
    ip: String,
    port: u16,
    child: Option<Child>,
}

/// Six pods of a managed cluster and what they share: the volumes' directories, the hosts file
/// the fake `getent` reads and, with TLS, the certificate and ACL file.
struct Pods {
    tc: TraceCollector,
    dir: PathBuf,
    nodes: Vec<Node>,
    with_tls: bool,
}

/// A port free on `ip` whose cluster bus port (`port + 10000`) is free too.
fn free_port(ip: &str, from: u16) -> u16 {
    (from..from + 5_000)
        .find(|&p| {
            TcpListener::bind((ip, p)).is_ok() && TcpListener::bind((ip, p + 10_000)).is_ok()
        })
        .unwrap_or_else(|| panic!("no free port pair on {ip}"))
}

impl Pods {
    /// The pods of `tc`, the i-th on `<subnet>.<i+1>`, not started yet.
    fn new(tc: TraceCollector, subnet: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "clew-redis-cluster-{}-{}",
            std::process::id(),
            subnet.replace('.', "-")
        ));
        let _ = std::fs::remove_dir_all(&dir);
        for sub in ["bin", "tls", "acl"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        let from = 21_000 + (std::process::id() % 1_000) as u16 * 4;
        let nodes = (0..6)
            .map(|ordinal| {
                let ip = format!("{subnet}.{}", ordinal + 1);
                let port = free_port(&ip, from);
                std::fs::create_dir_all(dir.join(format!("data-{ordinal}"))).unwrap();
                Node {
                    ordinal,
                    ip,
                    port,
                    child: None,
                }
            })
            .collect();
        let with_tls = tc.spec.tls.enabled;
        let pods = Pods {
            tc,
            dir,
            nodes,
            with_tls,
        };
        pods.write_fake_getent();
        if with_tls {
            pods.write_certificate_and_acl();
        }
        pods.write_hosts();
        pods
    }

    fn write_fake_getent(&self) {
        let getent = self.dir.join("bin/getent");
        let script = format!(
            "#!/bin/sh\ncase \"$2\" in *[!0-9.]*) ;; *) echo \"$2  $2\"; exit 0 ;; esac\n[ \"$1\" = hosts ] && awk -v n=\"$2\" '$2 == n {{ print $1 \"  \" $2; f = 1 }} END {{ exit !f }}' {} && exit 0\nexec /usr/bin/getent \"$@\"\n",
            self.dir.join("hosts").display()
        );
        std::fs::write(&getent, script).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&getent, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// The Redis certificate as the operator issues it (`wanted_redis`, the kind's usage), and
    /// the ACL file of the auth Secret.
    fn write_certificate_and_acl(&self) {
        let now = time::OffsetDateTime::now_utc();
        let year = Duration::from_secs(365 * 86400);
        let bundle = certs::generate("clew-operator-webhook", "clew-system", now, year).unwrap();
        let cfg = certs::CertConfig {
            namespace: "clew-system".into(),
            service: "clew-operator-webhook".into(),
            secret: "clew-operator-webhook-tls".into(),
            webhook_configuration: "clew-operator".into(),
            validity: year,
            renew_before: year / 12,
        };
        let ca = certs::Authority::from_secret(&certs::secret_for(&cfg, &bundle, None)).unwrap();
        let w = tls::wanted_redis(&self.tc).unwrap();
        let issued = ca
            .issue(&w.common_name, &w.dns_names, w.kind.usage(), now, year)
            .unwrap();
        let tls_dir = self.dir.join("tls");
        std::fs::write(tls_dir.join(certs::CERT_KEY), issued.cert_pem).unwrap();
        std::fs::write(tls_dir.join(certs::KEY_KEY), issued.key_pem).unwrap();
        std::fs::write(tls_dir.join(certs::CA_KEY), &ca.bundle).unwrap();
        let acl = self.dir.join("acl").join(tls::REDIS_ACL_KEY);
        std::fs::write(acl, tls::redis_acl(PASSWORD)).unwrap();
    }

    /// Each pod's DNS name at its node's current address, for the fake `getent`.
    fn write_hosts(&self) {
        let cluster = redis_cluster::managed_cluster(&self.tc).unwrap();
        let hosts = redis_cluster::pod_hosts(&self.tc, cluster);
        let lines: String = self
            .nodes
            .iter()
            .map(|n| format!("{} {}\n", n.ip, hosts[n.ordinal]))
            .collect();
        std::fs::write(self.dir.join("hosts"), lines).unwrap();
    }

    /// A string of a pod spec with the kubelet's and the volumes' parts done for `node`.
    fn localize(&self, s: &str, node: &Node) -> String {
        let data = self.dir.join(format!("data-{}", node.ordinal));
        s.replace("$(POD_NAME)", &format!("main-redis-{}", node.ordinal))
            .replace("/etc/redis/tls", self.dir.join("tls").to_str().unwrap())
            .replace("/etc/redis/acl", self.dir.join("acl").to_str().unwrap())
            .replace("/data", data.to_str().unwrap())
    }

    fn redis_container(&self) -> Container {
        let sts = desired::desired_redis(&self.tc).unwrap();
        sts.spec.template.spec.unwrap().containers[0].clone()
    }

    /// Starts (or restarts) the i-th pod: the container's command and arguments, then the
    /// pod's network identity (its address as the bind and source address, its port).
    fn start(&mut self, i: usize) {
        let c = self.redis_container();
        let node = &self.nodes[i];
        let command: Vec<String> = c
            .command
            .unwrap()
            .iter()
            .map(|s| self.localize(s, node))
            .collect();
        let mut args: Vec<String> = c
            .args
            .unwrap()
            .iter()
            .map(|s| self.localize(s, node))
            .collect();
        let port = node.port.to_string();
        match args.iter().position(|a| a == "--tls-port") {
            Some(at) => args[at + 1] = port,
            None => args.extend(["--port".to_owned(), port]),
        }
        args.extend(["--bind", &node.ip, "--bind-source-addr", &node.ip].map(str::to_owned));
        let log = std::fs::File::create(self.dir.join(format!("redis-{i}.log"))).unwrap();
        let child = self
            .pod_env(Command::new(&command[0]))
            .args(&command[1..])
            .args(&args)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.nodes[i].child = Some(child);
    }

    fn start_all(&mut self) {
        for i in 0..self.nodes.len() {
            self.start(i);
        }
        for i in 0..self.nodes.len() {
            self.wait(&format!("node {i} answering"), |p| {
                p.cli(i, &["PING"]).trim() == "PONG"
            });
        }
    }

    /// Stops every node the way the kubelet stops a pod: SIGTERM, then SIGKILL after the
    /// grace period (Redis refuses a SIGTERM that arrives while it writes its first AOF).
    fn stop_all(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut child) = n.child.take() {
                let _ = Command::new("kill").arg(child.id().to_string()).status();
                let deadline = Instant::now() + Duration::from_secs(30);
                while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(100));
                }
                let _ = child.kill();
                child.wait().unwrap();
            }
        }
    }

    /// `redis-cli` against the i-th node, as the bootstrap Job and the probe connect.
    fn cli(&self, i: usize, args: &[&str]) -> String {
        let n = &self.nodes[i];
        let mut cmd = Command::new(REDIS_CLI);
        cmd.env_remove("REDISCLI_AUTH");
        if self.with_tls {
            cmd.env("REDISCLI_AUTH", PASSWORD);
            let ca = self.dir.join("tls").join(certs::CA_KEY);
            cmd.args([
                "--tls",
                "--cacert",
                ca.to_str().unwrap(),
                "--user",
                tls::REDIS_USER,
            ]);
        }
        let out = cmd
            .args(["-h", &n.ip, "-p", &n.port.to_string()])
            .args(args)
            .output()
            .unwrap_or_else(|e| {
                panic!("cannot run {REDIS_CLI} (apt-get install redis-server): {e}")
            });
        String::from_utf8_lossy(&out.stdout).replace('\r', "")
    }

    fn info(&self, i: usize, field: &str) -> String {
        let info = self.cli(i, &["CLUSTER", "INFO"]);
        let prefix = format!("{field}:");
        info.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_default()
            .to_owned()
    }

    /// Runs the bootstrap Job's container as written, given the nodes' addresses.
    fn bootstrap(&self) -> Output {
        let job = redis_cluster::desired_bootstrap_job(&self.tc).unwrap();
        let c = &job.spec.unwrap().template.spec.unwrap().containers[0];
        let command: Vec<String> = c
            .command
            .clone()
            .unwrap()
            .iter()
            .map(|s| self.localize(s, &self.nodes[0]))
            .collect();
        // The pods' DNS names (the Job's arguments) as the addresses they resolve to here.
        assert_eq!(c.args.as_ref().unwrap().len(), self.nodes.len());
        let addrs: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("{}:{}", n.ip, n.port))
            .collect();
        self.pod_env(Command::new(&command[0]))
            .args(&command[1..])
            .args(addrs)
            .output()
            .unwrap()
    }

    /// A pod's environment here: the fake `getent` first on the `PATH` and, with TLS, the
    /// password as the pod gets it from the auth Secret.
    fn pod_env(&self, mut cmd: Command) -> Command {
        let path = format!(
            "{}:{}",
            self.dir.join("bin").display(),
            std::env::var("PATH").unwrap()
        );
        cmd.env("PATH", path).env_remove("REDISCLI_AUTH");
        if self.with_tls {
            cmd.env("REDISCLI_AUTH", PASSWORD);
        }
        cmd
    }

    /// Polls `ok` for up to 60 s; on time-out, fails with the nodes' logs.
    fn wait(&self, what: &str, ok: impl Fn(&Self) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !ok(self) {
            if Instant::now() > deadline {
                let logs: String = (0..self.nodes.len())
                    .map(|i| {
                        let log = std::fs::read_to_string(self.dir.join(format!("redis-{i}.log")));
                        format!("--- node {i}\n{}\n", log.unwrap_or_default())
                    })
                    .collect();
                panic!("timed out waiting for {what}\n{logs}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `(masters serving slots, replicas)` as node `i` sees them.
    fn roles(&self, i: usize) -> (usize, usize) {
        let nodes = self.cli(i, &["CLUSTER", "NODES"]);
        let flags = |l: &str| l.split_whitespace().nth(2).unwrap_or_default().to_owned();
        let masters = nodes
            .lines()
            .filter(|l| flags(l).contains("master") && l.split_whitespace().count() > 8)
            .count();
        let replicas = nodes.lines().filter(|l| flags(l).contains("slave")).count();
        (masters, replicas)
    }

    /// Node `i` has a live link to every node, none flagged as failing: `cluster_state:ok`
    /// alone holds for a while after a restart even when no peer can be reached.
    fn linked(&self, i: usize) -> bool {
        let nodes = self.cli(i, &["CLUSTER", "NODES"]);
        let lines: Vec<Vec<&str>> = nodes
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        lines.len() == self.nodes.len()
            && lines
                .iter()
                .all(|f| f.len() >= 8 && f[7] == "connected" && !f[2].contains("fail"))
    }

    /// Every replica has synced with its master (with TLS: logged in as the ACL user) and no
    /// node is still rewriting its AOF after the sync.
    fn wait_synced(&self) {
        self.wait("every replica synced with its master", |p| {
            let synced = (0..6)
                .filter(|&i| {
                    let r = p.cli(i, &["INFO", "replication"]);
                    r.contains("role:slave") && r.contains("master_link_status:up")
                })
                .count();
            synced == 3
                && (0..6).all(|i| {
                    let r = p.cli(i, &["INFO", "persistence"]);
                    r.contains("aof_rewrite_in_progress:0") && r.contains("aof_rewrite_scheduled:0")
                })
        });
    }

    fn assert_formed(&self) {
        for i in 0..self.nodes.len() {
            self.wait(&format!("node {i} in the whole cluster"), |p| {
                p.info(i, "cluster_state") == "ok"
                    && p.info(i, "cluster_known_nodes") == "6"
                    && p.linked(i)
            });
            assert_eq!(self.info(i, "cluster_slots_assigned"), "16384");
        }
        // Replicas are told whom to follow last; gossip spreads it.
        self.wait("three masters with a replica each", |p| {
            p.roles(0) == (3, 3)
        });
    }
}

impl Drop for Pods {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut child) = n.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn stdout(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn the_bootstrap_job_forms_the_cluster_once_and_a_second_run_changes_nothing() {
    let mut pods = Pods::new(cluster_tc(false), "127.0.41");
    pods.start_all();
    let first = pods.bootstrap();
    assert!(first.status.success(), "{}", stdout(&first));
    assert!(
        stdout(&first).contains("the Redis Cluster is formed: 6 nodes"),
        "{}",
        stdout(&first)
    );
    pods.assert_formed();
    // Clients are sent to the pods' DNS names, not their IPs (replicas are listed once synced).
    pods.wait("every pod's DNS name in CLUSTER SLOTS", |p| {
        let slots = p.cli(3, &["CLUSTER", "SLOTS"]);
        (0..6).all(|i| slots.contains(&format!("main-redis-{i}.main-redis.shop.svc")))
    });
    let nodes_before = pods.cli(0, &["CLUSTER", "NODES"]);
    let ids = |nodes: &str| {
        let mut ids: Vec<String> = nodes
            .lines()
            .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
            .collect();
        ids.sort();
        ids
    };
    let epoch = pods.info(0, "cluster_current_epoch");

    // The Job run again (a retry, a re-created Job): it finds the cluster and leaves it be.
    let second = pods.bootstrap();
    assert!(second.status.success(), "{}", stdout(&second));
    assert!(
        stdout(&second).contains("the cluster exists already"),
        "{}",
        stdout(&second)
    );
    assert!(
        !stdout(&second).contains("Performing hash slots allocation"),
        "{}",
        stdout(&second)
    );
    assert_eq!(pods.info(0, "cluster_current_epoch"), epoch);
    assert_eq!(ids(&pods.cli(0, &["CLUSTER", "NODES"])), ids(&nodes_before));
    pods.assert_formed();
}

#[test]
fn a_tls_cluster_forms_with_the_operators_certificate_and_its_replicas_log_in() {
    let mut pods = Pods::new(cluster_tc(true), "127.0.42");
    pods.start_all();
    // TLS only: the plain port is closed.
    let plain = Command::new(REDIS_CLI)
        .args([
            "-h",
            &pods.nodes[0].ip,
            "-p",
            &pods.nodes[0].port.to_string(),
            "PING",
        ])
        .output()
        .unwrap();
    assert_ne!(String::from_utf8_lossy(&plain.stdout).trim(), "PONG");
    let out = pods.bootstrap();
    assert!(out.status.success(), "{}", stdout(&out));
    // The cluster bus: each node presents the certificate as a client to its peers.
    pods.assert_formed();
    // Replication over TLS: each replica logged in to its master as the ACL user.
    pods.wait_synced();
    // Nobody gets in without the password.
    let anonymous = pods.cli(0, &["--no-auth-warning", "-a", "wrong", "PING"]);
    assert_ne!(anonymous.trim(), "PONG");
}

#[test]
fn nodes_re_created_on_new_addresses_find_each_other_again() {
    let mut pods = Pods::new(cluster_tc(false), "127.0.43");
    pods.start_all();
    let out = pods.bootstrap();
    assert!(out.status.success(), "{}", stdout(&out));
    pods.assert_formed();
    // A key on whichever master owns its slot.
    let owner = (0..6)
        .find(|&i| pods.cli(i, &["SET", "clew:k", "v"]).trim() == "OK")
        .unwrap();

    pods.wait_synced();
    // Every pod re-created at once, each with a new IP (the hosts file says so, as the
    // headless Service would); the volumes stay.
    pods.stop_all();
    for (i, n) in pods.nodes.iter_mut().enumerate() {
        n.ip = format!("127.0.44.{}", i + 1);
    }
    pods.write_hosts();
    pods.start_all();
    pods.assert_formed();
    pods.wait("the key back on its master", |p| {
        p.cli(owner, &["GET", "clew:k"]).trim() == "v"
    });
    // nodes.conf now lists the peers at their new addresses.
    let conf = std::fs::read_to_string(pods.dir.join("data-0/nodes.conf")).unwrap();
    assert!(!conf.contains("127.0.43."), "{conf}");
    assert_eq!(conf.matches("127.0.44.").count(), 6, "{conf}");
}
