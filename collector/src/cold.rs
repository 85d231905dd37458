//! The cold tier in the collector (`--cold-url`): hot storage wrapped in
//! [`Tiered`], so the query API reads both tiers, and the mover running
//! beside the servers. The tier itself is `clew-cold`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clew_cold::block::BlockOptions;
use clew_cold::maintain::MaintainOptions;
use clew_cold::metrics::ColdMetrics;
use clew_cold::mover::{Mover, MoverConfig};
use clew_cold::read::ColdStore;
use clew_cold::tiered::Tiered;
use clew_cold::url::ColdTarget;

use crate::server::ServerError;
use crate::storage::Storage;

/// Cold tier flags: with `--cold-url`, traces move from hot storage to
/// Parquet blocks on object storage, and every query reads both.
#[derive(Debug, Clone, clap::Args)]
pub struct ColdFlags {
    /// Where cold blocks go: `file:///absolute/dir` (a volume) or
    /// `s3://bucket[/prefix]`. Unset: no cold tier.
    #[arg(long, env = "CLEW_COLD_URL")]
    pub cold_url: Option<String>,
    /// S3 endpoint of an S3-compatible server (`http://minio:9000`);
    /// unset: AWS.
    #[arg(long, env = "CLEW_COLD_S3_ENDPOINT", requires = "cold_url")]
    pub cold_s3_endpoint: Option<String>,
    /// S3 region (else `AWS_REGION`, else `us-east-1`).
    #[arg(long, env = "CLEW_COLD_S3_REGION", requires = "cold_url")]
    pub cold_s3_region: Option<String>,
    /// S3 access key id (else `AWS_ACCESS_KEY_ID` or the credentials file).
    #[arg(long, env = "CLEW_COLD_S3_ACCESS_KEY_ID", requires = "cold_url")]
    pub cold_s3_access_key_id: Option<String>,
    /// S3 secret access key (else `AWS_SECRET_ACCESS_KEY` or the
    /// credentials file; prefer those to a flag).
    #[arg(
        long,
        env = "CLEW_COLD_S3_SECRET_ACCESS_KEY",
        requires = "cold_url",
        hide_env_values = true
    )]
    pub cold_s3_secret_access_key: Option<String>,
    /// A file of `AWS_ACCESS_KEY_ID=…` and `AWS_SECRET_ACCESS_KEY=…` lines
    /// (a mounted Secret).
    #[arg(long, env = "CLEW_COLD_S3_CREDENTIALS_FILE", requires = "cold_url")]
    pub cold_s3_credentials_file: Option<PathBuf>,
    /// PEM CA certificates the S3 endpoint's certificate chains to (else
    /// the system's).
    #[arg(long, env = "CLEW_COLD_S3_CA", requires = "cold_url")]
    pub cold_s3_ca: Option<PathBuf>,
    /// Longest wait for one S3 request.
    #[arg(long, env = "CLEW_COLD_S3_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub cold_s3_timeout: Duration,
    /// Traces whose newest span ended longer ago than this move cold.
    #[arg(long, env = "CLEW_HOT_RETENTION", default_value = "1h", value_parser = humantime::parse_duration)]
    pub hot_retention: Duration,
    /// While hot storage holds more than this many bytes (Redis: the
    /// server's used_memory; embedded: the file; memory: the spans), its
    /// oldest traces move cold too. 0: no bound.
    #[arg(long, env = "CLEW_HOT_MAX_BYTES", default_value_t = 0)]
    pub hot_max_bytes: u64,
    /// Cold blocks whose every span ended longer ago than this are
    /// deleted. Traces live this long in all (at least `--retention`).
    #[arg(long, env = "CLEW_COLD_RETENTION", default_value = "720h", value_parser = humantime::parse_duration)]
    pub cold_retention: Duration,
    /// Traces per block written by the mover.
    #[arg(long, env = "CLEW_COLD_BLOCK_TRACES", default_value_t = 20_000)]
    pub cold_block_traces: usize,
    /// How often the mover runs (one collector per store at a time: the
    /// holder of the store's lease).
    #[arg(long, env = "CLEW_COLD_INTERVAL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub cold_interval: Duration,
    /// Blocks smaller than this are compacted together.
    #[arg(long, env = "CLEW_COLD_COMPACT_BELOW_BYTES", default_value_t = 64 << 20)]
    pub cold_compact_below_bytes: u64,
}

/// The cold tier's running parts.
pub(crate) struct Cold {
    pub(crate) storage: Arc<dyn Storage>,
    pub(crate) mover: Mover,
    pub(crate) metrics: ColdMetrics,
}

impl ColdFlags {
    /// How long a trace is kept in all: hot storage's `--retention` must
    /// not prune what the cold tier still keeps.
    pub(crate) fn total_retention(&self, retention: Duration) -> Duration {
        if self.cold_url.is_some() {
            retention.max(self.cold_retention)
        } else {
            retention
        }
    }

    fn target(&self, url: &str) -> ColdTarget {
        ColdTarget {
            url: url.to_owned(),
            endpoint: self.cold_s3_endpoint.clone(),
            region: self.cold_s3_region.clone(),
            access_key_id: self.cold_s3_access_key_id.clone(),
            secret_access_key: self.cold_s3_secret_access_key.clone(),
            credentials_file: self.cold_s3_credentials_file.clone(),
            ca: self.cold_s3_ca.clone(),
            timeout: self.cold_s3_timeout,
        }
    }

    /// With `--cold-url`: `hot` behind the tier, and its mover (holding
    /// the lease as `holder`).
    pub(crate) async fn open(
        &self,
        hot: Arc<dyn Storage>,
        holder: String,
    ) -> Result<Option<Cold>, ServerError> {
        let Some(url) = &self.cold_url else {
            return Ok(None);
        };
        let (store, prefix) = clew_cold::url::open(&self.target(url))
            .map_err(|e| ServerError::Config(e.to_string()))?;
        let metrics = ColdMetrics::new();
        let cold = Arc::new(ColdStore::new(store, prefix).with_metrics(metrics.clone()));
        cold.refresh()
            .await
            .map_err(|e| ServerError::Storage(format!("--cold-url {url}: {e}")))?;
        let tiered = Tiered::new(hot, cold, self.hot_retention);
        let mover = Mover::new(tiered.clone(), self.mover_config(holder));
        tracing::info!(url = %url, hot_retention = ?self.hot_retention, "cold tier");
        Ok(Some(Cold {
            storage: Arc::new(tiered),
            mover,
            metrics,
        }))
    }

    fn mover_config(&self, holder: String) -> MoverConfig {
        MoverConfig {
            hot_retention: self.hot_retention,
            hot_max_bytes: (self.hot_max_bytes > 0).then_some(self.hot_max_bytes),
            cold_retention: self.cold_retention,
            block_traces: self.cold_block_traces.max(1),
            interval: self.cold_interval.max(Duration::from_millis(100)),
            holder,
            maintain: MaintainOptions {
                compact_below_bytes: self.cold_compact_below_bytes,
                block: BlockOptions::default(),
                ..MaintainOptions::default()
            },
        }
    }
}
