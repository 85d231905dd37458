//! The cold-tier parts of the desired objects (`spec.storage.cold`): the collector's
//! `CLEW_COLD_*` configuration, the S3 access key from its Secret, the CA and block volumes,
//! and the PersistentVolumeClaim of a filesystem tier. The collector's flags are documented in
//! `collector/src/cold.rs`, the block format in `docs/COLD-FORMAT.md`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    EnvVar, EnvVarSource, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PersistentVolumeClaimVolumeSource, SecretKeySelector, Volume, VolumeMount,
    VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use super::{Component, meta, names, tls};
use crate::crd::{ColdFilesystem, ColdS3, ColdSpec, TraceCollector};

/// Where the collectors mount a filesystem tier's claim. Beside the data directory
/// (`/var/lib/clew`), not inside it: the WAL's volume and the shared blocks stay apart.
pub const COLD_DIR: &str = "/var/lib/clew-cold";
/// Where the collectors find the CA of a private S3 endpoint.
pub const COLD_CA_DIR: &str = "/etc/clew/cold-ca";
/// The file name of that CA in [`COLD_CA_DIR`].
const COLD_CA_FILE: &str = "ca.crt";

/// The cold tier, when set.
fn cold(tc: &TraceCollector) -> Option<&ColdSpec> {
    tc.spec.storage.cold.as_ref()
}

/// `CLEW_COLD_URL`: `file:///var/lib/clew-cold` or `s3://bucket[/prefix]`.
pub fn cold_url(c: &ColdSpec) -> String {
    match &c.s3 {
        Some(s3) => s3_url(s3),
        None => format!("file://{COLD_DIR}"),
    }
}

fn s3_url(s3: &ColdS3) -> String {
    match s3.prefix.as_deref().map(|p| p.trim_matches('/')) {
        Some(p) if !p.is_empty() => format!("s3://{}/{p}", s3.bucket),
        _ => format!("s3://{}", s3.bucket),
    }
}

/// The collector's cold-tier settings for its ConfigMap: nothing secret (the access key is
/// in [`collector_env`]), so a change rolls the collectors through the config hash.
pub fn collector_config(tc: &TraceCollector) -> BTreeMap<String, String> {
    let Some(c) = cold(tc) else {
        return BTreeMap::new();
    };
    let mut data = BTreeMap::from([
        ("CLEW_COLD_URL".to_owned(), cold_url(c)),
        ("CLEW_HOT_RETENTION".to_owned(), c.hot_retention.clone()),
        ("CLEW_HOT_MAX_BYTES".to_owned(), c.hot_max_bytes.to_string()),
        ("CLEW_COLD_RETENTION".to_owned(), c.retention.clone()),
    ]);
    let mut opt = |key: &str, value: Option<String>| {
        if let Some(v) = value {
            data.insert(key.to_owned(), v);
        }
    };
    opt(
        "CLEW_COLD_BLOCK_TRACES",
        c.block_traces.map(|n| n.to_string()),
    );
    opt("CLEW_COLD_INTERVAL", c.interval.clone());
    opt(
        "CLEW_COLD_COMPACT_BELOW_BYTES",
        c.compact_below_bytes.map(|n| n.to_string()),
    );
    if let Some(s3) = &c.s3 {
        opt("CLEW_COLD_S3_ENDPOINT", s3.endpoint.clone());
        opt("CLEW_COLD_S3_REGION", s3.region.clone());
        opt("CLEW_COLD_S3_TIMEOUT", s3.timeout.clone());
        opt(
            "CLEW_COLD_S3_CA",
            s3.ca_secret
                .as_ref()
                .map(|_| format!("{COLD_CA_DIR}/{COLD_CA_FILE}")),
        );
    }
    data
}

/// The S3 access key, from its Secret into the variables the S3 client reads
/// (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`): the values stay in the Secret. A Secret
/// mounted as files has one file per key, not the `KEY=value` lines of
/// `--cold-s3-credentials-file`, so references are what fits a plain Secret.
pub fn collector_env(tc: &TraceCollector) -> Vec<EnvVar> {
    let Some(creds) = cold(tc)
        .and_then(|c| c.s3.as_ref())
        .and_then(|s3| s3.credentials_secret.as_ref())
    else {
        return Vec::new();
    };
    let from_secret = |name: &str, key: &str| EnvVar {
        name: name.to_owned(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: creds.name.clone(),
                key: key.to_owned(),
                optional: Some(false),
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    };
    vec![
        from_secret("AWS_ACCESS_KEY_ID", &creds.access_key_id_key),
        from_secret("AWS_SECRET_ACCESS_KEY", &creds.secret_access_key_key),
    ]
}

/// The collectors' cold-tier volumes and mounts: the blocks' claim, writable, at
/// [`COLD_DIR`]; a private S3 endpoint's CA, read-only, at [`COLD_CA_DIR`].
pub fn collector_volumes(tc: &TraceCollector) -> (Vec<Volume>, Vec<VolumeMount>) {
    let (mut vols, mut mounts) = (Vec::new(), Vec::new());
    let Some(c) = cold(tc) else {
        return (vols, mounts);
    };
    if let Some(fs) = &c.filesystem {
        vols.push(Volume {
            name: "cold".to_owned(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: claim_name(tc, fs),
                read_only: Some(false),
            }),
            ..Volume::default()
        });
        mounts.push(VolumeMount {
            name: "cold".to_owned(),
            mount_path: COLD_DIR.to_owned(),
            ..VolumeMount::default()
        });
    }
    if let Some(ca) = c.s3.as_ref().and_then(|s3| s3.ca_secret.as_ref()) {
        let items = [(ca.key.as_str(), COLD_CA_FILE)];
        vols.push(tls::secret_volume("cold-ca", &ca.name, &items, 0o440));
        mounts.push(tls::mount("cold-ca", COLD_CA_DIR));
    }
    (vols, mounts)
}

/// The claim the collectors mount: `existingClaim`, or the one the operator creates.
fn claim_name(tc: &TraceCollector, fs: &ColdFilesystem) -> String {
    fs.existing_claim.clone().unwrap_or_else(|| names::cold(tc))
}

/// Whether the collectors' cold volume can be attached on one node only (an operator-created
/// `ReadWriteOnce` claim): a rolling update's extra pod could then wait forever for it.
pub fn single_node_volume(tc: &TraceCollector) -> bool {
    cold(tc)
        .and_then(|c| c.filesystem.as_ref())
        .is_some_and(|fs| !fs.shared())
}

/// The PersistentVolumeClaim of a filesystem tier, unless `existingClaim` names yours. Owned
/// by the TraceCollector, so deleted with it; kept when the cold tier is turned off (the
/// blocks are data, and turning it back on finds them again).
pub fn desired_claim(tc: &TraceCollector) -> Option<PersistentVolumeClaim> {
    let fs = cold(tc)?.filesystem.as_ref()?;
    if fs.existing_claim.is_some() {
        return None;
    }
    Some(PersistentVolumeClaim {
        metadata: meta(tc, names::cold(tc), Component::Collector),
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(
                fs.access_modes
                    .iter()
                    .map(|m| m.as_str().to_owned())
                    .collect(),
            ),
            storage_class_name: fs.storage_class_name.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_owned(),
                    Quantity(fs.size.clone()),
                )])),
                ..VolumeResourceRequirements::default()
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        ..PersistentVolumeClaim::default()
    })
}
