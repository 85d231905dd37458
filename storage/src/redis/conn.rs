//! The connection: one server through a `ConnectionManager`, or a Redis
//! Cluster through the `redis` crate's cluster client (topology refresh,
//! `MOVED`/`ASK` and `TRYAGAIN` handled, reconnects with backoff), behind
//! one type; and the shard count a deployment agrees on.

use ::redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use ::redis::cluster::ClusterClientBuilder;
use ::redis::cluster_async::ClusterConnection;
use ::redis::{Client, Cmd, IntoConnectionInfo as _, Pipeline, RedisFuture, Value};

use super::keys::Keys;
use super::{BACKEND, RedisConfig, Result, StorageError, unavailable};

/// A connection to one server or to a cluster; cheap to clone.
#[derive(Clone)]
pub(super) enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

fn bad(detail: String) -> StorageError {
    StorageError::unavailable(BACKEND, detail)
}

/// The seed URLs of `cfg.url`: one, or with a cluster a comma-separated list.
pub(super) fn seeds(cfg: &RedisConfig) -> Vec<&str> {
    cfg.url
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .collect()
}

/// The CA and client certificate of `cfg.tls`, read from their files.
fn certificates(cfg: &RedisConfig) -> Result<Option<::redis::TlsCertificates>> {
    let Some(tls) = &cfg.tls else {
        return Ok(None);
    };
    if seeds(cfg).iter().any(|u| !u.starts_with("rediss://")) {
        return Err(bad(
            "a CA or client certificate for Redis needs a rediss:// URL".into(),
        ));
    }
    let read =
        |p: &std::path::Path| std::fs::read(p).map_err(|e| bad(format!("{}: {e}", p.display())));
    let client_tls = match &tls.client {
        Some((cert, key)) => Some(::redis::ClientTlsConfig {
            client_cert: read(cert)?,
            client_key: read(key)?,
        }),
        None => None,
    };
    let root_cert = tls.ca.as_deref().map(read).transpose()?;
    Ok(Some(::redis::TlsCertificates {
        client_tls,
        root_cert,
    }))
}

/// Connects to the server or cluster of `cfg`.
pub(super) async fn connect(cfg: &RedisConfig) -> Result<Conn> {
    if cfg.cluster {
        return connect_cluster(cfg).await.map(Conn::Cluster);
    }
    if seeds(cfg).len() > 1 {
        return Err(bad(
            "several Redis URLs need --redis-cluster (a Redis Cluster's seed nodes)".into(),
        ));
    }
    let manager_cfg = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(cfg.connect_timeout))
        .set_response_timeout(Some(cfg.response_timeout))
        .set_number_of_retries(cfg.retries as usize)
        .set_min_delay(cfg.retry_backoff)
        .set_max_delay(cfg.retry_backoff * 16);
    let conn = ConnectionManager::new_with_config(client(cfg)?, manager_cfg)
        .await
        .map_err(unavailable)?;
    Ok(Conn::Single(conn))
}

/// The client of one server: its URL, the ACL credentials, TLS.
fn client(cfg: &RedisConfig) -> Result<Client> {
    let mut info = cfg
        .url
        .as_str()
        .into_connection_info()
        .map_err(|e| bad(format!("redis URL: {e}")))?;
    let mut settings = info.redis_settings().clone();
    if let Some(user) = &cfg.username {
        settings = settings.set_username(user);
    }
    if let Some(password) = &cfg.password {
        settings = settings.set_password(password);
    }
    info = info.set_redis_settings(settings);
    match certificates(cfg)? {
        None => Client::open(info).map_err(unavailable),
        Some(certs) => {
            Client::build_with_tls(info, certs).map_err(|e| bad(format!("redis TLS: {e}")))
        }
    }
}

/// Connects to a Redis Cluster through its seed nodes.
async fn connect_cluster(cfg: &RedisConfig) -> Result<ClusterConnection> {
    if cfg.key_prefix.contains(['{', '}']) {
        return Err(bad(format!(
            "redis key prefix {:?}: with a Redis Cluster it may not contain '{{' or '}}' (clew chooses the hash tags)",
            cfg.key_prefix
        )));
    }
    let backoff = u64::try_from(cfg.retry_backoff.as_millis()).unwrap_or(u64::MAX);
    let mut builder = ClusterClientBuilder::new(seeds(cfg))
        .connection_timeout(cfg.connect_timeout)
        .response_timeout(cfg.response_timeout)
        .retries(cfg.retries.max(1) * 8)
        .min_retry_wait(backoff.max(1))
        .max_retry_wait(backoff.max(1) * 32);
    if let Some(user) = &cfg.username {
        builder = builder.username(user);
    }
    if let Some(password) = &cfg.password {
        builder = builder.password(password);
    }
    if let Some(certs) = certificates(cfg)? {
        builder = builder.certs(certs);
    }
    let client = builder
        .build()
        .map_err(|e| bad(format!("redis cluster seeds: {e}")))?;
    client.get_async_connection().await.map_err(unavailable)
}

/// The shard count of the deployment under `prefix`: the one recorded in
/// its `layout` key, which the first collector writes (with `wanted`).
/// Every collector then uses the same shards, whatever its own setting.
pub(super) async fn agree_shards(conn: &Conn, prefix: &str, wanted: usize) -> Result<usize> {
    let key = Keys::new(prefix, Some(1)).layout();
    let mut c = conn.clone();
    let record = format!("shards={wanted}");
    let _: Option<String> = ::redis::cmd("SET")
        .arg(&key)
        .arg(&record)
        .arg("NX")
        .query_async(&mut c)
        .await
        .map_err(unavailable)?;
    let stored: String = ::redis::cmd("GET")
        .arg(&key)
        .query_async(&mut c)
        .await
        .map_err(unavailable)?;
    let shards = stored
        .strip_prefix("shards=")
        .and_then(|n| n.parse::<usize>().ok())
        .filter(|n| (1..=4096).contains(n))
        .ok_or_else(|| {
            bad(format!(
                "redis layout record {stored:?} is not shards=<1..4096>"
            ))
        })?;
    if shards != wanted {
        tracing::warn!(
            shards,
            wanted,
            "this deployment's Redis keys were laid out in {shards} shards: using that, not --redis-shards"
        );
    }
    Ok(shards)
}
