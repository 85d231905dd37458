//! The tail-sampling parts of the desired objects (`spec.sampling.tail`): the ConfigMap
//! holding the policy file, its volume in the collectors, and the collector's
//! `CLEW_SAMPLING_POLICY`, `CLEW_DECISION_WAIT`, … settings. The policy file is checked here
//! with the collector's own parser (`clew_analysis::sampling`), so a file the collectors would
//! refuse at start-up is reported instead of rolled out.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapVolumeSource, KeyToPath, Volume, VolumeMount,
};

use super::{Component, meta, names};
use crate::crd::{TailSamplingSpec, TraceCollector};

/// Where the collectors mount the policy file's ConfigMap.
pub const SAMPLING_DIR: &str = "/etc/clew/sampling";
/// The policy file's key in the ConfigMap and its name in [`SAMPLING_DIR`].
pub const POLICY_FILE: &str = "policy.yaml";

/// Tail sampling, when set.
fn tail(tc: &TraceCollector) -> Option<&TailSamplingSpec> {
    tc.spec.sampling.tail.as_ref()
}

/// Why `spec.sampling.tail.policies` cannot be used, naming the field and the line (as the
/// collector would refuse it at start-up); `Ok` without tail sampling.
pub fn validate(tc: &TraceCollector) -> Result<(), String> {
    let Some(t) = tail(tc) else {
        return Ok(());
    };
    clew_analysis::sampling::Engine::from_yaml(&t.policies)
        .map(|_| ())
        .map_err(|e| format!("spec.sampling.tail.policies: {e}"))
}

/// The ConfigMap with the policy file, with tail sampling.
pub fn desired_config_map(tc: &TraceCollector) -> Option<ConfigMap> {
    let t = tail(tc)?;
    Some(ConfigMap {
        metadata: meta(tc, names::sampling(tc), Component::Collector),
        data: Some(BTreeMap::from([(
            POLICY_FILE.to_owned(),
            t.policies.clone(),
        )])),
        ..ConfigMap::default()
    })
}

/// The collector's tail-sampling settings for its ConfigMap.
pub fn collector_config(tc: &TraceCollector) -> BTreeMap<String, String> {
    let Some(t) = tail(tc) else {
        return BTreeMap::new();
    };
    let mut data = BTreeMap::from([(
        "CLEW_SAMPLING_POLICY".to_owned(),
        format!("{SAMPLING_DIR}/{POLICY_FILE}"),
    )]);
    let mut opt = |key: &str, value: Option<String>| {
        if let Some(v) = value {
            data.insert(key.to_owned(), v);
        }
    };
    opt("CLEW_DECISION_WAIT", t.decision_wait.clone());
    opt(
        "CLEW_MAX_PENDING_TRACES",
        t.max_pending_traces.map(|n| n.to_string()),
    );
    opt(
        "CLEW_DECISION_CACHE_SIZE",
        t.decision_cache_size.map(|n| n.to_string()),
    );
    data
}

/// The policy file's volume and mount, with tail sampling.
pub fn collector_volumes(tc: &TraceCollector) -> (Vec<Volume>, Vec<VolumeMount>) {
    if tail(tc).is_none() {
        return (Vec::new(), Vec::new());
    }
    let volume = Volume {
        name: "sampling".to_owned(),
        config_map: Some(ConfigMapVolumeSource {
            name: names::sampling(tc),
            items: Some(vec![KeyToPath {
                key: POLICY_FILE.to_owned(),
                path: POLICY_FILE.to_owned(),
                ..KeyToPath::default()
            }]),
            default_mode: Some(0o444),
            optional: Some(false),
            ..ConfigMapVolumeSource::default()
        }),
        ..Volume::default()
    };
    let mount = VolumeMount {
        name: "sampling".to_owned(),
        mount_path: SAMPLING_DIR.to_owned(),
        read_only: Some(true),
        ..VolumeMount::default()
    };
    (vec![volume], vec![mount])
}

/// What the collectors' config hash covers besides their ConfigMap: the policy file, which
/// they read only at start-up (a change rolls them).
pub fn hashed(tc: &TraceCollector) -> Option<&str> {
    tail(tc).map(|t| t.policies.as_str())
}
