//! The `clew-operator` process: configuration, the ops server, the webhook server (on every
//! replica) and, on the replica holding the leader Lease, the controller and the certificate
//! manager.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use clew_runtime::net::ConnLimits;
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::Client;
use kube::api::Api;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder};
use prometheus::IntGauge;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use crate::certs::{self, CertConfig};
use crate::controller::{self, Context};
use crate::crd::TraceCollector;
use crate::desired::{Defaults, FIELD_MANAGER};
use crate::metrics::Metrics;
use crate::tls;
use crate::webhook::{self, SidecarTls, WebhookState};

/// When to inject native sidecars.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum NativeSidecars {
    /// Native on Kubernetes 1.29 and later, detected from the API server's version.
    Auto,
    /// Always native (init container with `restartPolicy: Always`).
    Always,
    /// Always a regular container.
    Never,
}

clew_runtime::conn_limit_flags!(
    /// Connection limits of the operator's webhook listener.
    pub struct ConnFlags,
    env = "CLEW_OPERATOR_"
);

/// Configuration of `clew-operator` (flags or environment).
#[derive(Clone, Debug, clap::Parser)]
#[command(
    name = "clew-operator",
    version,
    about = "clew's Kubernetes operator and sidecar-injection webhook"
)]
pub struct Config {
    /// Namespace the operator runs in (its Lease, webhook Service and TLS Secret live there).
    #[arg(long, env = "CLEW_OPERATOR_NAMESPACE", default_value = "clew-system")]
    pub namespace: String,
    /// This replica's identity for leader election and Events (the pod name).
    #[arg(long, env = "CLEW_OPERATOR_POD_NAME")]
    pub pod_name: Option<String>,
    /// Image of the collectors, visualizer and sidecars when a TraceCollector does not name one.
    #[arg(long, env = "CLEW_OPERATOR_IMAGE", default_value = concat!("ghcr.io/clew-dev/clew:", env!("CARGO_PKG_VERSION")))]
    pub image: String,
    /// HTTPS address of the admission webhook.
    #[arg(
        long,
        env = "CLEW_OPERATOR_WEBHOOK_ADDR",
        default_value = "0.0.0.0:8443"
    )]
    pub webhook_addr: SocketAddr,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, env = "CLEW_OPERATOR_OPS_ADDR", default_value = "0.0.0.0:9464")]
    pub ops_addr: SocketAddr,
    /// Name of the webhook Service (the certificate is issued for it).
    #[arg(
        long,
        env = "CLEW_OPERATOR_WEBHOOK_SERVICE",
        default_value = "clew-operator-webhook"
    )]
    pub webhook_service: String,
    /// Secret holding the webhook CA and serving certificate.
    #[arg(
        long,
        env = "CLEW_OPERATOR_WEBHOOK_SECRET",
        default_value = "clew-operator-webhook-tls"
    )]
    pub webhook_secret: String,
    /// MutatingWebhookConfiguration whose caBundle the operator keeps current.
    #[arg(
        long,
        env = "CLEW_OPERATOR_WEBHOOK_CONFIGURATION",
        default_value = "clew-operator"
    )]
    pub webhook_configuration: String,
    /// Create and rotate the webhook certificate (false when cert-manager does it).
    #[arg(long, env = "CLEW_OPERATOR_MANAGE_WEBHOOK_CERTS", default_value_t = true, action = clap::ArgAction::Set)]
    pub manage_webhook_certs: bool,
    /// Lifetime of a generated webhook certificate.
    #[arg(long, env = "CLEW_OPERATOR_CERT_VALIDITY", default_value = "365d", value_parser = humantime::parse_duration)]
    pub cert_validity: Duration,
    /// Rotate the certificate when less than this remains.
    #[arg(long, env = "CLEW_OPERATOR_CERT_RENEW_BEFORE", default_value = "30d", value_parser = humantime::parse_duration)]
    pub cert_renew_before: Duration,
    /// Name of the coordination.k8s.io Lease used for leader election.
    #[arg(long, env = "CLEW_OPERATOR_LEASE", default_value = "clew-operator")]
    pub lease: String,
    /// Lease duration in seconds; a new leader takes over at most this long after the old one died.
    #[arg(long, env = "CLEW_OPERATOR_LEASE_SECONDS", default_value_t = 15)]
    pub lease_seconds: u64,
    /// Native sidecars: auto (by server version), always or never.
    #[arg(
        long,
        env = "CLEW_OPERATOR_NATIVE_SIDECARS",
        value_enum,
        default_value = "auto"
    )]
    pub native_sidecars: NativeSidecars,
    /// Connection limits of the webhook listener.
    #[command(flatten)]
    pub conn: ConnFlags,
    /// Most connections of the ops listener, apart from the webhook's.
    #[arg(long, env = "CLEW_OPERATOR_OPS_MAX_CONNECTIONS", default_value_t = 64)]
    pub ops_max_connections: usize,
}

impl Config {
    fn cert_config(&self) -> CertConfig {
        CertConfig {
            namespace: self.namespace.clone(),
            service: self.webhook_service.clone(),
            secret: self.webhook_secret.clone(),
            webhook_configuration: self.webhook_configuration.clone(),
            validity: self.cert_validity,
            renew_before: self.cert_renew_before,
        }
    }

    /// The operator's CA (in the webhook Secret) and what it issues to pipelines: certificates
    /// as long-lived as the webhook's, renewed as early.
    fn pki(&self) -> tls::Pki {
        tls::Pki {
            namespace: self.namespace.clone(),
            secret: self.webhook_secret.clone(),
            policy: tls::Policy {
                validity: self.cert_validity,
                renew_before: self.cert_renew_before,
            },
        }
    }
}

/// The ops routes: `/metrics`, `/healthz`, `/readyz` (ready once the webhook serves).
pub fn ops_app(metrics: Metrics, ready: watch::Receiver<bool>) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(move || {
                let m = metrics.clone();
                async move { m.render() }
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let ready = *ready.borrow();
                async move {
                    if ready {
                        (axum::http::StatusCode::OK, "ready")
                    } else {
                        (
                            axum::http::StatusCode::SERVICE_UNAVAILABLE,
                            "webhook not serving yet",
                        )
                    }
                }
            }),
        )
}

/// Keeps a reflector cache of every object of a kind; returns the store.
fn cache<K>(api: Api<K>) -> reflector::Store<K>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = reflector(
        writer,
        watcher(api, watcher::Config::default().any_semantic()),
    )
    .default_backoff()
    .touched_objects();
    tokio::spawn(async move {
        futures_util::pin_mut!(stream);
        while let Some(ev) = stream.next().await {
            if let Err(e) = ev {
                warn!(error = %e, kind = %K::kind(&()), "watch error");
            }
        }
    });
    reader
}

/// The leader's work: the controller, the watch for pods that missed their sidecar
/// ([`crate::audit`]) and (when enabled) the certificate manager.
fn lead(
    cfg: &Config,
    ctx: Arc<Context>,
    namespaces: reflector::Store<Namespace>,
) -> Vec<JoinHandle<()>> {
    let mut tasks = vec![tokio::spawn(crate::audit::run(
        ctx.client.clone(),
        ctx.recorder.clone(),
        namespaces,
    ))];
    let c = ctx.clone();
    tasks.push(tokio::spawn(async move {
        // A controller that cannot start (the CRD not installed yet, say)
        // is started again, so the leader never stays idle.
        let mut delay = Duration::from_secs(5);
        loop {
            match controller::run(c.clone(), std::future::pending()).await {
                Ok(()) => return,
                Err(e) => {
                    error!(error = %e, retry_in = ?delay, "controller stopped; is the TraceCollector CRD installed?");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(60));
                }
            }
        }
    }));
    if cfg.manage_webhook_certs {
        let cert_cfg = cfg.cert_config();
        let pki = cfg.pki();
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(600));
            loop {
                tick.tick().await;
                if let Err(e) = certs::ensure(&ctx.client, &cert_cfg, &ctx.metrics).await {
                    warn!(error = %e, "webhook certificate");
                    continue;
                }
                // After the CA: a rotated CA re-issues every pipeline certificate at once.
                match tls::rotate_all(&ctx.client, &pki, &ctx.metrics).await {
                    Ok(0) => {}
                    Ok(n) => info!(reissued = n, "pipeline certificates re-issued"),
                    Err(e) => warn!(error = %e, "pipeline certificates"),
                }
            }
        }));
    }
    tasks
}

/// Runs `start` whenever this replica becomes the leader and aborts the tasks it returned when
/// it stops being one; returns when the lease manager goes away.
pub async fn follow_leadership(
    mut leader: watch::Receiver<bool>,
    gauge: IntGauge,
    mut start: impl FnMut() -> Vec<JoinHandle<()>>,
) {
    let mut tasks: Vec<JoinHandle<()>> = Vec::new();
    loop {
        let leading = *leader.borrow_and_update();
        gauge.set(i64::from(leading));
        if leading && tasks.is_empty() {
            tasks = start();
        } else if !leading && !tasks.is_empty() {
            info!("lost leadership; stopping the controller");
            for t in tasks.drain(..) {
                t.abort();
            }
        }
        if leader.changed().await.is_err() {
            break;
        }
    }
    gauge.set(0);
    for t in tasks {
        t.abort();
    }
}

/// Runs the operator until `shutdown` resolves.
pub async fn run(
    cfg: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let client = Client::try_default().await?;
    let metrics = Metrics::new();
    let identity = cfg
        .pod_name
        .clone()
        .unwrap_or_else(|| format!("clew-operator-{}", std::process::id()));
    let defaults = Defaults {
        image: cfg.image.clone(),
    };

    let (ready_tx, ready_rx) = watch::channel(false);
    let limits = cfg.conn.limits();
    serve_ops(&cfg, &limits, &metrics, ready_rx).await?;
    let state = webhook_state(&cfg, &client, &defaults, &metrics, &identity).await?;
    let election = elect(
        &cfg,
        &client,
        &metrics,
        defaults,
        identity,
        state.namespaces.clone(),
    )
    .await?;

    // Deciding before the caches hold every collector would wrongly skip pods.
    state.collectors.wait_until_ready().await?;
    state.namespaces.wait_until_ready().await?;
    info!("caches of TraceCollectors and namespaces are synced");

    let tls = webhook_tls(&cfg, &client).await?;
    let handle = axum_server::Handle::new();
    let h = handle.clone();
    tokio::spawn(async move {
        shutdown.await;
        h.graceful_shutdown(Some(Duration::from_secs(10)));
    });
    info!(addr = %cfg.webhook_addr, "webhook listening (HTTPS)");
    let _ = ready_tx.send(true);
    crate::listen::webhook_server(cfg.webhook_addr, tls, &limits, &metrics.conns)
        .handle(handle)
        .serve(webhook::app(state).into_make_service())
        .await?;

    election.release().await;
    info!("stopped");
    Ok(())
}

/// Binds the ops listener and serves `/metrics`, `/healthz` and `/readyz` on it.
async fn serve_ops(
    cfg: &Config,
    limits: &ConnLimits,
    metrics: &Metrics,
    ready: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let ops = clew_runtime::net::TrackedListener::new(
        tokio::net::TcpListener::bind(cfg.ops_addr).await?,
        "ops",
        limits.clone().with_max_connections(cfg.ops_max_connections),
        &metrics.conns,
    );
    info!(addr = %cfg.ops_addr, "ops server listening");
    tokio::spawn(clew_runtime::net::serve_http(
        ops,
        ops_app(metrics.clone(), ready),
        std::future::pending(),
    ));
    Ok(())
}

/// The webhook's state: the sidecar mode and caches of TraceCollectors and namespaces.
async fn webhook_state(
    cfg: &Config,
    client: &Client,
    defaults: &Defaults,
    metrics: &Metrics,
    identity: &str,
) -> anyhow::Result<Arc<WebhookState>> {
    let native = match cfg.native_sidecars {
        NativeSidecars::Always => true,
        NativeSidecars::Never => false,
        NativeSidecars::Auto => webhook::detect_native_sidecars(client).await?,
    };
    info!(native_sidecars = native, "sidecar mode");

    Ok(Arc::new(WebhookState {
        collectors: cache(Api::<TraceCollector>::all(client.clone())),
        namespaces: cache(Api::<Namespace>::all(client.clone())),
        defaults: defaults.clone(),
        native_sidecars: native,
        metrics: metrics.clone(),
        recorder: Some(Recorder::new(
            client.clone(),
            Reporter {
                controller: FIELD_MANAGER.to_owned(),
                instance: Some(identity.to_owned()),
            },
        )),
        tls: Some(SidecarTls {
            client: client.clone(),
            pki: cfg.pki(),
        }),
    }))
}

/// The leader election this replica takes part in.
struct Election {
    /// Starts and stops the leader's work as leadership comes and goes.
    follower: JoinHandle<()>,
    /// Renews the Lease; releases it when it ends.
    lease: JoinHandle<kube_lease_manager::Result<LeaseManager>>,
}

impl Election {
    /// Release the Lease so another replica takes over at once.
    async fn release(self) {
        self.follower.abort();
        match self.lease.await {
            Ok(Ok(_)) | Err(_) => {}
            Ok(Err(e)) => warn!(error = %e, "releasing the lease"),
        }
    }
}

/// Joins the leader election; while leading, runs [`lead`].
async fn elect(
    cfg: &Config,
    client: &Client,
    metrics: &Metrics,
    defaults: Defaults,
    identity: String,
    namespaces: reflector::Store<Namespace>,
) -> anyhow::Result<Election> {
    // Leader election: only one replica reconciles and manages certificates at a time.
    let ctx = Arc::new(
        Context::new(
            client.clone(),
            metrics.clone(),
            defaults,
            Some(identity.clone()),
        )
        .with_pki(cfg.pki()),
    );
    let manager = LeaseManagerBuilder::new(client.clone(), cfg.lease.clone())
        .with_namespace(cfg.namespace.clone())
        .with_identity(identity.clone())
        .with_duration(cfg.lease_seconds)
        .with_grace(cfg.lease_seconds.div_ceil(3).max(1))
        .build()
        .await?;
    let (leader_rx, lease) = manager.watch().await;
    let leader_cfg = cfg.clone();
    let follower = tokio::spawn(follow_leadership(
        leader_rx,
        metrics.leader.clone(),
        move || {
            info!(identity = %identity, "leading: starting the controller");
            lead(&leader_cfg, ctx.clone(), namespaces.clone())
        },
    ));
    Ok(Election { follower, lease })
}

/// The webhook's TLS configuration from its Secret, kept current as the Secret changes.
async fn webhook_tls(
    cfg: &Config,
    client: &Client,
) -> anyhow::Result<axum_server::tls_rustls::RustlsConfig> {
    // Every replica serves the webhook with the certificate in the Secret.
    let (cert, key) = webhook::wait_for_tls(client, &cfg.namespace, &cfg.webhook_secret).await;
    let tls = axum_server::tls_rustls::RustlsConfig::from_pem(
        cert.clone().into_bytes(),
        key.into_bytes(),
    )
    .await?;
    tokio::spawn(webhook::keep_tls_current(
        client.clone(),
        cfg.namespace.clone(),
        cfg.webhook_secret.clone(),
        tls.clone(),
        cert,
        Duration::from_secs(30),
    ));
    Ok(tls)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use http_body_util::BodyExt;
    use tokio::sync::{mpsc, oneshot};
    use tower::ServiceExt;

    #[tokio::test]
    async fn leadership_starts_and_stops_the_leader_tasks() {
        let (tx, rx) = watch::channel(false);
        let gauge = IntGauge::new("g", "g").unwrap();
        let (started_tx, mut started) = mpsc::unbounded_channel();
        let follow = tokio::spawn(follow_leadership(rx, gauge.clone(), move || {
            // Each leader task holds a sender; its receiver errs once the task is aborted.
            let (alive, watch_alive) = oneshot::channel::<()>();
            started_tx.send(watch_alive).unwrap();
            vec![tokio::spawn(async move {
                let _alive = alive;
                std::future::pending::<()>().await;
            })]
        }));
        let deadline = Duration::from_secs(5);
        tx.send(true).unwrap();
        let first = tokio::time::timeout(deadline, started.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(gauge.get(), 1);
        tx.send(false).unwrap();
        // Aborted: the task's sender is dropped.
        assert!(
            tokio::time::timeout(deadline, first)
                .await
                .unwrap()
                .is_err()
        );
        assert_eq!(gauge.get(), 0);
        tx.send(true).unwrap();
        let second = tokio::time::timeout(deadline, started.recv())
            .await
            .unwrap()
            .unwrap();
        drop(tx);
        tokio::time::timeout(deadline, follow)
            .await
            .unwrap()
            .unwrap();
        assert!(
            tokio::time::timeout(deadline, second)
                .await
                .unwrap()
                .is_err()
        );
        assert!(
            started.try_recv().is_err(),
            "started more often than it became leader"
        );
    }

    async fn get(app: Router, path: &str) -> (u16, String) {
        let resp = app
            .oneshot(axum::http::Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn ops_server_reports_readiness_and_metrics() {
        let metrics = Metrics::new();
        metrics.leader.set(1);
        let (ready, rx) = watch::channel(false);
        let app = ops_app(metrics, rx);
        assert_eq!(get(app.clone(), "/readyz").await.0, 503);
        ready.send(true).unwrap();
        assert_eq!(get(app.clone(), "/readyz").await.0, 200);
        assert_eq!(get(app.clone(), "/healthz").await.0, 200);
        let (code, body) = get(app, "/metrics").await;
        assert_eq!(code, 200);
        assert!(body.contains("clew_operator_leader 1"), "{body}");
        assert!(
            body.contains("clew_operator_reconcile_duration_seconds"),
            "{body}"
        );
    }
}
