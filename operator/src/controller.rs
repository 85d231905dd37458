//! The `TraceCollector` controller: server-side applies the `desired_*` children, writes the
//! status, rolls workloads whose sidecar settings changed, and publishes Events.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, PodTemplateSpec, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::{info, warn};

use crate::crd::TraceCollector;
use crate::desired::{self, CollectorWorkload, Defaults, FIELD_MANAGER};
use crate::inject::{self, INJECT_ANNOTATION, REVISION_ANNOTATION, Selection};
use crate::metrics::Metrics;
use crate::status::{self, READY};
use crate::tls;
use crate::{Error, Result};

/// Requeue interval of a ready TraceCollector (drift is also repaired on watch events).
pub const RESYNC: Duration = Duration::from_secs(300);
/// Requeue interval while a TraceCollector is not ready yet.
pub const PROGRESS_POLL: Duration = Duration::from_secs(10);
const BACKOFF_BASE: Duration = Duration::from_secs(5);
const BACKOFF_MAX: Duration = Duration::from_secs(300);

/// State shared by every reconciliation.
#[derive(Clone)]
pub struct Context {
    /// The API client.
    pub client: Client,
    /// Publishes Kubernetes Events.
    pub recorder: Recorder,
    /// Operator metrics.
    pub metrics: Metrics,
    /// Operator-level defaults (image).
    pub defaults: Defaults,
    /// The CA that issues the certificates of TraceCollectors with `spec.tls`.
    pub pki: Option<tls::Pki>,
    failures: Arc<Mutex<HashMap<String, u32>>>,
}

impl Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("defaults", &self.defaults)
            .finish_non_exhaustive()
    }
}

impl Context {
    /// A context publishing Events as `reporter`.
    pub fn new(
        client: Client,
        metrics: Metrics,
        defaults: Defaults,
        instance: Option<String>,
    ) -> Self {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: FIELD_MANAGER.to_owned(),
                instance,
            },
        );
        Self {
            client,
            recorder,
            metrics,
            defaults,
            pki: None,
            failures: Arc::default(),
        }
    }

    /// The context issuing certificates from `pki`.
    pub fn with_pki(mut self, pki: tls::Pki) -> Self {
        self.pki = Some(pki);
        self
    }

    fn record_failure(&self, key: &str) -> u32 {
        let mut f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let n = f.entry(key.to_owned()).or_insert(0);
        *n += 1;
        *n
    }

    fn clear_failures(&self, key: &str) {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }

    async fn publish(
        &self,
        tc: &TraceCollector,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) {
        let ev = Event {
            type_,
            reason: reason.to_owned(),
            note: Some(note),
            action: action.to_owned(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, &tc.object_ref(&())).await {
            warn!(error = %e, "could not publish event");
        }
    }
}

/// Exponential backoff after `failures` consecutive failures: 5 s, 10 s, 20 s … at most 5 min.
pub fn backoff(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(10);
    (BACKOFF_BASE * 2u32.pow(exp)).min(BACKOFF_MAX)
}

fn key(tc: &TraceCollector) -> String {
    format!("{}/{}", tc.namespace().unwrap_or_default(), tc.name_any())
}

/// Reconciles one TraceCollector.
pub async fn reconcile(tc: Arc<TraceCollector>, ctx: Arc<Context>) -> Result<Action> {
    ctx.metrics.reconciliations.inc();
    let _timer = ctx.metrics.reconcile_duration.start_timer();
    if tc.namespace().is_none() {
        return Err(Error::MissingNamespace(tc.name_any()));
    }
    if tc.meta().deletion_timestamp.is_some() {
        // Owner references hand every child to the garbage collector; nothing to clean up.
        return Ok(Action::await_change());
    }
    match apply_all(&tc, &ctx).await {
        Ok(action) => {
            ctx.clear_failures(&key(&tc));
            Ok(action)
        }
        Err(e) => {
            ctx.publish(
                &tc,
                EventType::Warning,
                e.reason(),
                "Reconcile",
                e.to_string(),
            )
            .await;
            // The status says so too (Degraded), rather than going stale.
            let now = k8s_openapi::jiff::Timestamp::now().to_string();
            let failed = status::failed_status(&tc, e.reason(), e.to_string(), &now);
            if let Err(pe) = patch_status(&ctx.client, &tc, &failed).await {
                warn!(tracecollector = %key(&tc), error = %pe, "could not mark the status Degraded");
            }
            Err(e)
        }
    }
}

/// Applies `status` as `tc`'s whole status (server-side apply, one field manager).
async fn patch_status(
    client: &Client,
    tc: &TraceCollector,
    status: &crate::crd::TraceCollectorStatus,
) -> Result<()> {
    let api: Api<TraceCollector> =
        Api::namespaced(client.clone(), &tc.namespace().unwrap_or_default());
    let patch = serde_json::json!({
        "apiVersion": TraceCollector::api_version(&()),
        "kind": TraceCollector::kind(&()),
        "status": status,
    });
    api.patch_status(
        &tc.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

/// Counts the failure and requeues with exponential backoff.
pub fn error_policy(tc: Arc<TraceCollector>, err: &Error, ctx: Arc<Context>) -> Action {
    let n = ctx.record_failure(&key(&tc));
    ctx.metrics
        .reconcile_errors
        .with_label_values(&[err.metric_label()])
        .inc();
    let wait = backoff(n);
    warn!(tracecollector = %key(&tc), error = %err, failures = n, retry_in = ?wait, "reconcile failed");
    Action::requeue(wait)
}

async fn apply<K>(client: &Client, ns: &str, obj: &K) -> Result<K>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + Serialize
        + DeserializeOwned
        + Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let params = PatchParams::apply(FIELD_MANAGER).force();
    Ok(api
        .patch(&obj.name_any(), &params, &Patch::Apply(obj))
        .await?)
}

/// Deletes a child that is no longer wanted, if it exists and this TraceCollector owns it.
async fn remove<K>(client: &Client, tc: &TraceCollector, name: &str) -> Result<()>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), &tc.namespace().unwrap_or_default());
    let Some(existing) = api.get_opt(name).await? else {
        return Ok(());
    };
    let ours = existing
        .owner_references()
        .iter()
        .any(|o| Some(&o.uid) == tc.uid().as_ref());
    if ours {
        match api.delete(name, &DeleteParams::background()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.is_not_found() => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

async fn apply_or_remove<K>(
    client: &Client,
    tc: &TraceCollector,
    name: String,
    obj: Option<K>,
) -> Result<Option<K>>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + Serialize
        + DeserializeOwned
        + Debug,
{
    let ns = tc.namespace().unwrap_or_default();
    match obj {
        Some(o) => Ok(Some(apply(client, &ns, &o).await?)),
        None => {
            remove::<K>(client, tc, &name).await?;
            Ok(None)
        }
    }
}

async fn apply_all(tc: &TraceCollector, ctx: &Context) -> Result<Action> {
    // What the collectors would refuse at start-up is not rolled out.
    desired::sampling::validate(tc).map_err(Error::InvalidSpec)?;
    ensure_certificates(tc, ctx).await?;
    let children = apply_children(tc, ctx).await?;
    let revision = inject::sidecar_revision(tc, &ctx.defaults);
    roll_on_new_revision(tc, ctx, &revision).await?;
    let ready = write_status(tc, ctx, &children, &revision).await?;
    publish_progress(tc, ctx, ready).await;
    Ok(Action::requeue(if ready { RESYNC } else { PROGRESS_POLL }))
}

/// With `spec.tls`, the certificates and the Redis password, before the pods that mount them;
/// an Event naming the certificates issued.
async fn ensure_certificates(tc: &TraceCollector, ctx: &Context) -> Result<()> {
    if !tc.spec.tls.enabled {
        return Ok(());
    }
    let pki = ctx.pki.as_ref().ok_or_else(|| {
        Error::BadSecret(
            tc.name_any(),
            "spec.tls: this operator has no CA to issue certificates with".to_owned(),
        )
    })?;
    let issued = tls::ensure_for_collector(&ctx.client, pki, tc, &ctx.metrics).await?;
    if !issued.is_empty() {
        let what: Vec<String> = issued
            .iter()
            .map(|(kind, reason)| format!("{} ({reason})", kind.as_str()))
            .collect();
        ctx.publish(
            tc,
            EventType::Normal,
            "CertificatesIssued",
            "IssueCertificates",
            format!("issued certificates: {}", what.join(", ")),
        )
        .await;
    }
    Ok(())
}

/// The applied workloads whose state the status reports.
struct Applied {
    /// The collectors' Deployment or StatefulSet.
    collectors: CollectorWorkload,
    /// The managed Redis, in managed mode.
    redis: Option<StatefulSet>,
    /// The Job that forms a managed Redis Cluster.
    redis_bootstrap: Option<Job>,
    /// The visualizer Deployment, when enabled.
    visualizer: Option<Deployment>,
}

/// Applies every wanted child and removes the unwanted ones.
async fn apply_children(tc: &TraceCollector, ctx: &Context) -> Result<Applied> {
    let client = &ctx.client;
    let ns = tc.namespace().unwrap_or_default();
    let defaults = &ctx.defaults;
    use desired::names;

    // Children in a fixed order: configuration before the pods that read it.
    apply(client, &ns, &desired::desired_config_map(tc)).await?;
    let sampling = desired::sampling::desired_config_map(tc);
    apply_or_remove(client, tc, names::sampling(tc), sampling).await?;
    apply(client, &ns, &desired::desired_headless_service(tc)).await?;
    apply(client, &ns, &desired::desired_service(tc)).await?;
    apply_or_remove(
        client,
        tc,
        names::redis(tc),
        desired::desired_redis_service(tc),
    )
    .await?;
    let redis = apply_or_remove(client, tc, names::redis(tc), desired::desired_redis(tc)).await?;
    let redis_bootstrap = apply_bootstrap(tc, ctx).await?;
    // The cold tier's volume before the collectors that mount it. Never removed here: the
    // blocks are data; the claim goes with the TraceCollector (its owner).
    if let Some(claim) = desired::cold::desired_claim(tc) {
        apply(client, &ns, &claim).await?;
    }
    let collectors = apply_collectors(tc, ctx).await?;
    apply_or_remove(client, tc, names::collector(tc), desired::desired_pdb(tc)).await?;
    apply_or_remove(client, tc, names::collector(tc), desired::desired_hpa(tc)).await?;
    let visualizer = apply_or_remove(
        client,
        tc,
        names::visualizer(tc),
        desired::desired_visualizer(tc, defaults),
    )
    .await?;
    apply_or_remove(
        client,
        tc,
        names::visualizer(tc),
        desired::desired_visualizer_service(tc),
    )
    .await?;
    Ok(Applied {
        collectors,
        redis,
        redis_bootstrap,
        visualizer,
    })
}

/// Applies the managed Redis Cluster's bootstrap Job, or removes one no longer wanted. A Job's
/// pod template cannot change: when the wanted one differs from the existing Job's (a new Redis
/// image, TLS turned on or off) the old Job is deleted and the new one created, which is safe
/// because the bootstrap creates no cluster where one exists.
async fn apply_bootstrap(tc: &TraceCollector, ctx: &Context) -> Result<Option<Job>> {
    let client = &ctx.client;
    let name = desired::names::redis_bootstrap(tc);
    let Some(job) = desired::redis_cluster::desired_bootstrap_job(tc) else {
        remove::<Job>(client, tc, &name).await?;
        return Ok(None);
    };
    let ns = tc.namespace().unwrap_or_default();
    match apply(client, &ns, &job).await {
        Err(Error::Kube(kube::Error::Api(s))) if s.is_invalid() => {
            info!(tracecollector = %key(tc), job = %name, reason = %s.message, "re-creating the Redis Cluster's bootstrap Job");
            remove::<Job>(client, tc, &name).await?;
            Ok(Some(apply(client, &ns, &job).await?))
        }
        applied => applied.map(Some),
    }
}

/// Applies the collectors' workload, then removes the other kind, left from before
/// `spec.wal.persistent` changed (the new collectors come up before the old ones stop).
async fn apply_collectors(tc: &TraceCollector, ctx: &Context) -> Result<CollectorWorkload> {
    let client = &ctx.client;
    let ns = tc.namespace().unwrap_or_default();
    let name = desired::names::collector(tc);
    Ok(match desired::desired_collectors(tc, &ctx.defaults) {
        CollectorWorkload::Deployment(d) => {
            let applied = apply(client, &ns, &d).await?;
            remove::<StatefulSet>(client, tc, &name).await?;
            CollectorWorkload::Deployment(applied)
        }
        CollectorWorkload::StatefulSet(s) => {
            let applied = apply(client, &ns, &s).await?;
            remove::<Deployment>(client, tc, &name).await?;
            CollectorWorkload::StatefulSet(applied)
        }
    })
}

/// Rolls the workloads using the sidecar when its settings (`revision`) changed.
async fn roll_on_new_revision(tc: &TraceCollector, ctx: &Context, revision: &str) -> Result<()> {
    let previous_revision = tc.status.as_ref().and_then(|s| s.sidecar_revision.clone());
    if previous_revision.as_deref() != Some(revision) {
        let rolled = roll_workloads(&ctx.client, tc, revision).await?;
        ctx.metrics.workload_rollouts.inc_by(rolled);
        if rolled > 0 {
            ctx.publish(
                tc,
                EventType::Normal,
                "WorkloadsRolled",
                "RollWorkloads",
                format!(
                    "sidecar settings changed (revision {revision}); rolled {rolled} workload(s)"
                ),
            )
            .await;
        }
    }
    Ok(())
}

/// Writes the status of the applied children; returns whether it says Ready.
async fn write_status(
    tc: &TraceCollector,
    ctx: &Context,
    children: &Applied,
    revision: &str,
) -> Result<bool> {
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let new_status = status::desired_status(
        tc,
        &children.collectors,
        status::Redis {
            statefulset: children.redis.as_ref(),
            bootstrap: children.redis_bootstrap.as_ref(),
        },
        children.visualizer.as_ref(),
        revision,
        &now,
    );
    let ready = new_status
        .conditions
        .iter()
        .any(|c| c.type_ == READY && c.status == "True");
    patch_status(&ctx.client, tc, &new_status).await?;
    Ok(ready)
}

/// Publishes `Applied` for a new generation and `Ready` when the collectors became ready.
async fn publish_progress(tc: &TraceCollector, ctx: &Context, ready: bool) {
    let observed = tc.status.as_ref().and_then(|s| s.observed_generation);
    if observed != tc.metadata.generation {
        info!(tracecollector = %key(tc), generation = ?tc.metadata.generation, "applied");
        ctx.publish(
            tc,
            EventType::Normal,
            "Applied",
            "Reconcile",
            format!(
                "applied generation {} to the collector {} and its children",
                tc.metadata.generation.unwrap_or_default(),
                desired::collector_kind(tc)
            ),
        )
        .await;
    }
    let was_ready = tc.condition(READY).is_some_and(|c| c.status == "True");
    if ready && !was_ready {
        ctx.publish(
            tc,
            EventType::Normal,
            "Ready",
            "Reconcile",
            "every collector is ready".to_owned(),
        )
        .await;
    }
}

/// Whether a pod template in namespace `ns` asks for this TraceCollector's sidecar, through its
/// own annotation or, lacking one, its namespace's (`namespace_default`).
pub fn template_uses(
    template: &PodTemplateSpec,
    ns: &str,
    namespace_default: Option<&str>,
    tc: &TraceCollector,
) -> bool {
    let Some(value) = template
        .metadata
        .as_ref()
        .and_then(|m| m.annotations.as_ref())
        .and_then(|a| a.get(INJECT_ANNOTATION))
        .map(String::as_str)
        .or(namespace_default)
    else {
        return false;
    };
    let tc_ns = tc.namespace().unwrap_or_default();
    match inject::parse_selection(value, ns) {
        Ok(Selection::OnlyInNamespace) => ns == tc_ns,
        Ok(Selection::Named { namespace, name }) => namespace == tc_ns && name == tc.name_any(),
        _ => false,
    }
}

fn template_revision(template: &PodTemplateSpec) -> Option<&str> {
    template
        .metadata
        .as_ref()?
        .annotations
        .as_ref()?
        .get(REVISION_ANNOTATION)
        .map(String::as_str)
}

async fn roll_kind<K>(
    client: &Client,
    tc: &TraceCollector,
    revision: &str,
    namespace_defaults: &BTreeMap<String, String>,
    template: impl Fn(&K) -> Option<&PodTemplateSpec>,
) -> Result<u64>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Debug,
{
    let mut rolled = 0;
    for w in Api::<K>::all(client.clone())
        .list(&ListParams::default())
        .await?
    {
        let ns = w.namespace().unwrap_or_default();
        let Some(t) = template(&w) else { continue };
        let default = namespace_defaults.get(&ns).map(String::as_str);
        if !template_uses(t, &ns, default, tc) || template_revision(t) == Some(revision) {
            continue;
        }
        let patch = serde_json::json!({
            "spec": {"template": {"metadata": {"annotations": {REVISION_ANNOTATION: revision}}}}
        });
        Api::<K>::namespaced(client.clone(), &ns)
            .patch(
                &w.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await?;
        info!(workload = %w.name_any(), namespace = %ns, kind = %K::kind(&()), revision, "rolled for new sidecar settings");
        rolled += 1;
    }
    Ok(rolled)
}

/// Sets the sidecar revision annotation on every workload template that asks for this
/// TraceCollector, so their pods are re-created (and re-injected) with the new settings.
async fn roll_workloads(client: &Client, tc: &TraceCollector, revision: &str) -> Result<u64> {
    // Namespace-level defaults count too: a workload may inherit the annotation.
    let namespace_defaults: BTreeMap<String, String> = Api::<Namespace>::all(client.clone())
        .list(&ListParams::default())
        .await?
        .into_iter()
        .filter_map(|n| {
            let v = n.annotations().get(INJECT_ANNOTATION)?.clone();
            Some((n.name_any(), v))
        })
        .collect();
    let d = &namespace_defaults;
    let deployments =
        roll_kind::<Deployment>(client, tc, revision, d, |w| Some(&w.spec.template)).await?;
    let statefulsets =
        roll_kind::<StatefulSet>(client, tc, revision, d, |w| Some(&w.spec.template)).await?;
    let daemonsets =
        roll_kind::<DaemonSet>(client, tc, revision, d, |w| Some(&w.spec.template)).await?;
    Ok(deployments + statefulsets + daemonsets)
}

/// Runs the controller until `shutdown` resolves.
pub async fn run(
    ctx: Arc<Context>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) -> Result<()> {
    let client = ctx.client.clone();
    let tcs = Api::<TraceCollector>::all(client.clone());
    // Fail fast with a clear message when the CRD is missing.
    tcs.list(&ListParams::default().limit(1)).await?;
    // Only watch children this operator made.
    let owned = watcher::Config::default().labels("app.kubernetes.io/managed-by=clew-operator");
    Controller::new(tcs, watcher::Config::default().any_semantic())
        .owns(Api::<Deployment>::all(client.clone()), owned.clone())
        .owns(Api::<StatefulSet>::all(client.clone()), owned.clone())
        .owns(Api::<Service>::all(client.clone()), owned.clone())
        .owns(Api::<ConfigMap>::all(client.clone()), owned.clone())
        .owns(
            Api::<PodDisruptionBudget>::all(client.clone()),
            owned.clone(),
        )
        .owns(
            Api::<HorizontalPodAutoscaler>::all(client.clone()),
            owned.clone(),
        )
        .owns(Api::<Job>::all(client.clone()), owned)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            match res {
                Ok((obj, _)) => tracing::debug!(object = %obj.name, "reconciled"),
                Err(e) => tracing::debug!(error = %e, "reconcile error"),
            }
        })
        .await;
    Ok(())
}

#[cfg(test)]
mod tests;
