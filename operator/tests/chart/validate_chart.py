"""Renders and lints charts/clew with the real Helm engine (helm-python-sdk) for several value
sets and validates every rendered manifest against the Kubernetes 1.29-1.33 schemas
(kubernetes-validate, strict: unknown fields fail). TraceCollectors are validated against the
CRD's own schema. Exits non-zero with a message on the first problem.

usage: validate_chart.py CHART_DIR
       validate_chart.py --objects FILE   (a JSON list of objects, e.g. the operator's output)
"""

import json

import copy
import sys

import helm_python as helm
import jsonschema
import kubernetes_validate
import yaml

K8S_VERSIONS = ["1.29.0", "1.30.0", "1.31.0", "1.32.0", "1.33.0"]
# Kinds of optional third-party operators; no upstream schema ships for them.
THIRD_PARTY = {("monitoring.coreos.com/v1", "ServiceMonitor"),
               ("cert-manager.io/v1", "Certificate"),
               ("cert-manager.io/v1", "Issuer")}

VALUE_SETS = {
    "defaults": {},
    "minimal": {"replicaCount": 1, "crds": {"create": False}, "webhook": {"enabled": False},
                "serviceAccount": {"create": False, "name": "existing"},
                "collectorTls": {"secretsClusterWide": False}},
    "everything": {
        "image": {"repository": "registry.local/clew", "tag": "dev", "pullPolicy": "Always"},
        "imagePullSecrets": [{"name": "regcred"}],
        "replicaCount": 3,
        "operator": {"nativeSidecars": "never", "nodeSelector": {"kubernetes.io/os": "linux"},
                     "tolerations": [{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}],
                     "podAnnotations": {"example.com/team": "obs"}},
        "webhook": {"certManager": {"enabled": True}, "excludeNamespaces": ["kube-system", "ci"]},
        "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}},
        "defaultCollector": {"enabled": True, "name": "main", "spec": {
            "replicas": 3,
            "autoscaler": {"minReplicas": 2, "maxReplicas": 8},
            "storage": {"redis": {"external": {"secretName": "redis-url"}, "prefix": "clew:"}},
            "visualizer": {"serviceType": "LoadBalancer"},
            "sidecar": {"bufferBytes": 1048576, "spillMaxBytes": 67108864},
            "sampling": {"ratio": 0.25},
            "replication": {"factor": 3, "minCopies": 2, "takeoverAfter": "1m"},
            "wal": {"persistent": True, "size": "20Gi", "storageClass": "fast"},
        }},
    },
    # The cold tier on a shared volume, and in S3 with a key Secret and a private CA.
    "cold-filesystem": {"defaultCollector": {"enabled": True, "spec": {"storage": {"cold": {
        "filesystem": {"size": "200Gi", "storageClassName": "nfs", "accessModes": ["ReadWriteMany"]},
        "hotRetention": "2h", "retention": "30d"}}}}},
    "cold-s3": {"defaultCollector": {"enabled": True, "spec": {
        "storage": {"redis": {"managed": {"size": "2Gi"}}, "cold": {
            "s3": {"bucket": "traces", "prefix": "clew/prod", "endpoint": "https://minio.storage.svc:9000",
                   "region": "eu-west-1", "credentialsSecret": {"name": "clew-s3"},
                   "caSecret": {"name": "minio-ca"}},
            "hotMaxBytes": 1073741824}}}}},
    # The default TraceCollector exactly as values.yaml describes it.
    "default-collector": {"defaultCollector": {"enabled": True}},
    # spec.tls with certificates from the operator's CA (mTLS).
    "tls": {"defaultCollector": {"enabled": True}, "collectorTls": {"enabled": True}},
    # spec.tls with cert-manager issuing the collectors' certificate from its own CA.
    "tls-cert-manager": {"defaultCollector": {"enabled": True, "spec": {"visualizer": {"enabled": False}}},
                         "collectorTls": {"enabled": True, "certManager": {"enabled": True}}},
    "tls-cert-manager-issuer": {"defaultCollector": {"enabled": True},
                                "collectorTls": {"enabled": True, "certManager": {
                                    "enabled": True, "issuerRef": {"name": "corp-ca", "kind": "ClusterIssuer"}}}},
    # A managed Redis Cluster with TLS from cert-manager (whose certificate must name every pod),
    # and an external Redis Cluster.
    "redis-cluster": {"defaultCollector": {"enabled": True, "spec": {"storage": {"redis": {
        "managed": {"size": "2Gi", "cluster": {"shards": 3}}, "waitReplicas": 1}}}},
        "collectorTls": {"enabled": True, "certManager": {"enabled": True}}},
    "redis-cluster-external": {"defaultCollector": {"enabled": True, "spec": {"storage": {"redis": {
        "external": {"secretName": "redis-seeds", "cluster": True}, "waitReplicas": 2}}}}},
    # Tail sampling with an inline policy file.
    "tail-sampling": {"defaultCollector": {"enabled": True, "spec": {"sampling": {"tail": {
        "policies": "policies:\n  - {name: errors, type: status_code, status_code: {status_codes: [ERROR]}}\n",
        "decisionWait": "2s", "maxPendingTraces": 20000}}}}},
    "cluster-issuer": {"webhook": {"certManager": {"enabled": True,
                                                   "issuerRef": {"name": "ca", "kind": "ClusterIssuer"}}}},
}

BAD_VALUES = [
    {"replicaCount": 0},
    {"operator": {"nativeSidecars": "sometimes"}},
    {"unknownKey": 1},
    {"webhook": {"certValidity": "one year"}},
    {"defaultCollector": {"name": "Not_A_Name"}},
    {"defaultCollector": {"spec": {"replication": {"factor": 0}}}},
    {"defaultCollector": {"spec": {"replication": {"factor": 6}}}},
    {"defaultCollector": {"spec": {"replication": {"minCopies": 0}}}},
    {"defaultCollector": {"spec": {"replication": {"takeoverAfter": "soon"}}}},
    {"defaultCollector": {"spec": {"wal": {"size": "ten gigs"}}}},
    {"defaultCollector": {"spec": {"wal": {"persistant": True}}}},
    {"collectorTls": {"enable": True}},
    # The cold tier: one of a volume or a bucket, a bucket without a path, humantime durations.
    {"defaultCollector": {"spec": {"storage": {"cold": {"hotRetention": "1h"}}}}},
    {"defaultCollector": {"spec": {"storage": {"cold": {"filesystem": {}, "s3": {"bucket": "b"}}}}}},
    {"defaultCollector": {"spec": {"storage": {"cold": {"s3": {"bucket": ""}}}}}},
    {"defaultCollector": {"spec": {"storage": {"cold": {"s3": {"bucket": "b/prefix"}}}}}},
    {"defaultCollector": {"spec": {"storage": {"cold": {"s3": {"bucket": "b", "endpoint": "minio:9000"}}}}}},
    {"defaultCollector": {"spec": {"storage": {"cold": {"s3": {"bucket": "b", "secretAccessKey": "x"}}}}}},
    {"defaultCollector": {"spec": {"storage": {"cold": {"filesystem": {}, "retention": "a month"}}}}},
    {"defaultCollector": {"spec": {"storage": {"cold": {"filesystem": {"accessModes": ["ReadOnlyMany"]}}}}}},
    {"collectorTls": {"certManager": {"duration": "90d"}}},
    # Redis Cluster: at least three shards, shards given, a boolean flag, no negative WAIT,
    # and managed or external, not both.
    {"defaultCollector": {"spec": {"storage": {"redis": {"managed": {"cluster": {"shards": 2}}}}}}},
    {"defaultCollector": {"spec": {"storage": {"redis": {"managed": {"cluster": {}}}}}}},
    {"defaultCollector": {"spec": {"storage": {"redis": {"managed": {"cluster": {"shards": 3, "replicas": 2}}}}}}},
    {"defaultCollector": {"spec": {"storage": {"redis": {"external": {"secretName": "r", "cluster": "yes"}}}}}},
    {"defaultCollector": {"spec": {"storage": {"redis": {"waitReplicas": -1}}}}},
    # Tail sampling: a policy file, a duration, at least one pending trace.
    {"defaultCollector": {"spec": {"sampling": {"tail": {"decisionWait": "5s"}}}}},
    {"defaultCollector": {"spec": {"sampling": {"tail": {"policies": "p", "decisionWait": "soon"}}}}},
    {"defaultCollector": {"spec": {"sampling": {"tail": {"policies": "p", "maxPendingTraces": 0}}}}},
    {"defaultCollector": {"spec": {"storage": {"redis": {"managed": {}, "external": {"secretName": "r"}}}}}},
]


def fail(msg):
    print(f"FAIL: {msg}")
    sys.exit(1)


def crd_schema(docs):
    for d in docs:
        if d.get("kind") == "CustomResourceDefinition":
            return d["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    fail("no CRD rendered with crds.create=true")


def render(chart, values):
    try:
        chart.validate_schema(values)
    except Exception as e:  # noqa: BLE001
        fail(f"values rejected by values.schema.json: {e}")
    manifests = chart.render(values, name="clew", namespace="clew-system", is_install=True)
    docs = []
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            if "kubectl wait" not in text:
                fail("NOTES.txt lost its instructions")
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                docs.append((path, doc))
    return docs


def validate(path, doc, tc_schema):
    key = (doc["apiVersion"], doc["kind"])
    if key in THIRD_PARTY:
        return "third-party"
    if doc["kind"] == "TraceCollector":
        # Install only: a post-upgrade hook is deleted and recreated on every
        # upgrade, and its children (Redis data included) with it.
        hook = doc["metadata"].get("annotations", {}).get("helm.sh/hook")
        if hook != "post-install":
            fail(f"{path}: the default TraceCollector must be a post-install hook only, not {hook!r}")
        try:
            jsonschema.validate(doc, tc_schema)
        except jsonschema.ValidationError as e:
            fail(f"{path}: TraceCollector does not match the CRD: {e.message}")
        return "crd"
    for v in K8S_VERSIONS:
        try:
            kubernetes_validate.validate(doc, v, strict=True)
        except kubernetes_validate.ValidationError as e:
            where = ".".join(str(p) for p in e.path)
            fail(f"{path}: {doc['kind']} {doc['metadata']['name']} invalid for Kubernetes {v}: {where}: {e.message}")
        except kubernetes_validate.SchemaNotFoundError:
            fail(f"{path}: no Kubernetes {v} schema for {key}")
    return "k8s"


def by_kind(docs, kind):
    return [d for _, d in docs if d["kind"] == kind]


def env_of(deploy):
    c = deploy["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value") for e in c["env"]}


def validate_objects(path):
    """Validates every object of a JSON list strictly against Kubernetes 1.29-1.33."""
    with open(path) as f:
        objects = json.load(f)
    if not objects:
        fail(f"{path} holds no objects")
    for i, obj in enumerate(objects):
        if validate(f"{path}[{i}]", obj, None) != "k8s":
            fail(f"{path}[{i}]: {obj.get('kind')} is not a Kubernetes kind")
    kinds = sorted({o["kind"] for o in objects})
    print(f"objects: {len(objects)} ({', '.join(kinds)}) valid for Kubernetes {K8S_VERSIONS[0]}-{K8S_VERSIONS[-1]}")


def main():
    if sys.argv[1] == "--objects":
        validate_objects(sys.argv[2])
        return
    chart_dir = sys.argv[1]
    counts = {"k8s": 0, "crd": 0, "third-party": 0}
    with helm.Chart.load(chart_dir) as chart:
        defaults = render(chart, {})
        tc_schema = crd_schema([d for _, d in defaults])
        rendered = {}
        for name, values in VALUE_SETS.items():
            lint = helm.lint(chart_dir, copy.deepcopy(values), strict=True, namespace="clew-system",
                             kube_version="v1.30.0")
            problems = [m for m in lint.get("messages") or [] if m.get("severity", 0) >= 2]
            if problems or lint.get("errors"):
                fail(f"helm lint ({name}): {problems or lint['errors']}")
            docs = render(chart, copy.deepcopy(values))
            rendered[name] = docs
            for path, doc in docs:
                counts[validate(path, doc, tc_schema)] += 1
        for bad in BAD_VALUES:
            try:
                chart.validate_schema(bad)
            except Exception:  # noqa: BLE001
                continue
            fail(f"values.schema.json accepted bad values {bad}")

    # What the value sets must change.
    d = rendered["defaults"]
    mwc = by_kind(d, "MutatingWebhookConfiguration")
    if len(mwc) != 1 or mwc[0]["webhooks"][0]["failurePolicy"] != "Ignore":
        fail("the webhook must exist with failurePolicy Ignore")
    if "caBundle" in mwc[0]["webhooks"][0]["clientConfig"]:
        fail("Helm must not own caBundle (the operator writes it)")
    rules = [r for cr in by_kind(d, "ClusterRole") for r in cr["rules"]]
    resources = {res for r in rules for res in r["resources"]}
    for needed in ["tracecollectors", "tracecollectors/status", "tracecollectors/finalizers"]:
        if needed not in resources:
            fail(f"ClusterRole lacks {needed}")
    if any("*" in r["verbs"] or "*" in r["resources"] for r in rules):
        fail("RBAC must not use wildcards")
    secret_rules = [r for r in rules if r["resources"] == ["secrets"]]
    if len(secret_rules) != 1 or sorted(secret_rules[0]["verbs"]) != ["create", "delete", "get", "list", "patch"]:
        fail(f"spec.tls needs get/list/create/patch/delete on secrets cluster-wide, nothing more: {secret_rules}")
    if not by_kind(d, "CustomResourceDefinition"):
        fail("crds.create=true must render the CRD")
    tests = [doc for _, doc in d if doc["metadata"].get("annotations", {}).get("helm.sh/hook") == "test"]
    if not tests:
        fail("no helm test hook")
    if env_of(by_kind(d, "Deployment")[0])["CLEW_OPERATOR_MANAGE_WEBHOOK_CERTS"] != "true":
        fail("self-signed certificates by default")

    m = rendered["minimal"]
    if any(r["resources"] == ["secrets"] for cr in by_kind(m, "ClusterRole") for r in cr["rules"]):
        fail("collectorTls.secretsClusterWide=false must keep secrets in the namespaced Role only")
    if by_kind(m, "CustomResourceDefinition") or by_kind(m, "MutatingWebhookConfiguration"):
        fail("crds.create=false / webhook.enabled=false must drop the CRD and the webhook")
    if by_kind(m, "ServiceAccount") or by_kind(m, "PodDisruptionBudget"):
        fail("minimal values must not create a ServiceAccount or a PDB")

    e = rendered["everything"]
    if env_of(by_kind(e, "Deployment")[0])["CLEW_OPERATOR_MANAGE_WEBHOOK_CERTS"] != "false":
        fail("with cert-manager the operator must not manage certificates")
    ann = by_kind(e, "MutatingWebhookConfiguration")[0]["metadata"]["annotations"]
    if ann.get("cert-manager.io/inject-ca-from") != "clew-system/clew-operator-webhook-tls":
        fail(f"cert-manager CA injection annotation wrong: {ann}")
    if len(by_kind(e, "TraceCollector")) != 1 or len(by_kind(e, "ServiceMonitor")) != 1:
        fail("defaultCollector / serviceMonitor not rendered")
    if by_kind(rendered["cluster-issuer"], "Issuer"):
        fail("an issuerRef must replace the self-signed Issuer")
    tc = by_kind(e, "TraceCollector")[0]["spec"]
    if tc["replication"] != {"factor": 3, "minCopies": 2, "takeoverAfter": "1m"}:
        fail(f"defaultCollector.spec.replication not passed through: {tc['replication']}")
    if tc["wal"] != {"persistent": True, "size": "20Gi", "storageClass": "fast"}:
        fail(f"defaultCollector.spec.wal not passed through: {tc['wal']}")
    if "managed" in tc["storage"]["redis"]:
        fail(f"an external Redis must not get a managed one beside it from the defaults: {tc['storage']}")
    tc = by_kind(rendered["default-collector"], "TraceCollector")[0]["spec"]
    if tc["replication"]["factor"] != 2 or tc["wal"]["persistent"] is not False:
        fail(f"values.yaml's default collector changed: {tc}")
    if "cold" in tc["storage"]:
        fail(f"the cold tier must be off by default: {tc['storage']}")
    cold = by_kind(rendered["cold-filesystem"], "TraceCollector")[0]["spec"]["storage"]["cold"]
    if cold != {"filesystem": {"size": "200Gi", "storageClassName": "nfs", "accessModes": ["ReadWriteMany"]},
                "hotRetention": "2h", "retention": "30d"}:
        fail(f"defaultCollector.spec.storage.cold (filesystem) not passed through: {cold}")
    storage = by_kind(rendered["cold-s3"], "TraceCollector")[0]["spec"]["storage"]
    if storage["cold"]["s3"]["credentialsSecret"] != {"name": "clew-s3"} or "redis" not in storage:
        fail(f"defaultCollector.spec.storage.cold (s3) not passed through beside redis: {storage}")
    job_rules = [r for cr in by_kind(d, "ClusterRole") for r in cr["rules"] if r["resources"] == ["jobs"]]
    if len(job_rules) != 1 or job_rules[0]["apiGroups"] != ["batch"] or \
            sorted(job_rules[0]["verbs"]) != ["create", "delete", "get", "list", "patch", "watch"]:
        fail(f"a managed Redis Cluster's bootstrap Job needs get/list/watch/create/patch/delete on jobs: {job_rules}")
    rc = rendered["redis-cluster"]
    redis = by_kind(rc, "TraceCollector")[0]["spec"]["storage"]["redis"]
    if redis != {"managed": {"size": "2Gi", "cluster": {"shards": 3}}, "waitReplicas": 1}:
        fail(f"defaultCollector.spec.storage.redis (cluster) not passed through: {redis}")
    leaf = [c["spec"] for c in by_kind(rc, "Certificate") if c["spec"].get("dnsNames")][0]
    for i in range(6):
        for name in [f"clew-redis-{i}.clew-redis.clew-system.svc",
                     f"clew-redis-{i}.clew-redis.clew-system.svc.cluster.local"]:
            if name not in leaf["dnsNames"]:
                fail(f"the Redis Cluster's pod {i} is not in the certificate: {leaf['dnsNames']}")
    if any("clew-redis-6." in n for n in leaf["dnsNames"]):
        fail(f"more Redis pods in the certificate than 2 x shards: {leaf['dnsNames']}")
    if any("clew-redis-0." in n for c in by_kind(rendered["tls-cert-manager"], "Certificate")
           for n in c["spec"].get("dnsNames", [])):
        fail("without a managed Redis Cluster no Redis pod names belong in the certificate")
    redis = by_kind(rendered["redis-cluster-external"], "TraceCollector")[0]["spec"]["storage"]["redis"]
    if redis != {"external": {"secretName": "redis-seeds", "cluster": True}, "waitReplicas": 2}:
        fail(f"defaultCollector.spec.storage.redis (external cluster) not passed through: {redis}")
    pvc_rules = [r for cr in by_kind(d, "ClusterRole") for r in cr["rules"]
                 if r["resources"] == ["persistentvolumeclaims"]]
    if len(pvc_rules) != 1 or sorted(pvc_rules[0]["verbs"]) != ["create", "get", "patch"]:
        fail(f"the cold tier's claim needs get/create/patch on persistentvolumeclaims, nothing more: {pvc_rules}")

    tc = by_kind(rendered["tls"], "TraceCollector")[0]["spec"]
    if tc.get("tls") != {"enabled": True, "clientAuth": True}:
        fail(f"collectorTls not set on the default TraceCollector: {tc.get('tls')}")
    if by_kind(rendered["tls"], "Certificate"):
        fail("without certManager the operator issues the collectors' certificate")
    cm = rendered["tls-cert-manager"]
    tc = by_kind(cm, "TraceCollector")[0]["spec"]
    if tc.get("tls") != {"enabled": True, "secretName": "clew-collector-cert-manager"}:
        fail(f"with cert-manager spec.tls must name its Secret (and leave mTLS off): {tc.get('tls')}")
    certs = {c["metadata"]["name"]: c["spec"] for c in by_kind(cm, "Certificate")}
    leaf = certs.get("clew-collector-cert-manager")
    if not leaf or leaf["secretName"] != "clew-collector-cert-manager":
        fail(f"no collector Certificate: {list(certs)}")
    for name in ["clew-collector", "clew-collector.clew-system.svc", "clew-collector-headless.clew-system.svc",
                 "clew-collector-headless.clew-system.svc.cluster.local"]:
        if name not in leaf["dnsNames"]:
            fail(f"collector Certificate lacks {name}: {leaf['dnsNames']}")
    if any("visualizer" in n for n in leaf["dnsNames"]):
        fail("the visualizer is disabled: its names do not belong in the certificate")
    if "clew-redis.clew-system.svc" not in leaf["dnsNames"] or "localhost" not in leaf["dnsNames"]:
        fail(f"the managed Redis serves with the collector certificate: {leaf['dnsNames']}")
    if not {"server auth", "client auth"} <= set(leaf["usages"]):
        fail(f"the collector certificate needs server and client auth: {leaf['usages']}")
    if leaf["issuerRef"] != {"name": "clew-operator-collector-ca", "kind": "Issuer"}:
        fail(f"the collector certificate must come from the chart's CA Issuer: {leaf['issuerRef']}")
    if not certs.get("clew-operator-collector-ca", {}).get("isCA"):
        fail("no CA Certificate for the collector Issuer")
    issuer = rendered["tls-cert-manager-issuer"]
    leaf = {c["metadata"]["name"]: c["spec"] for c in by_kind(issuer, "Certificate")}
    if list(leaf) != ["clew-collector-cert-manager"] or by_kind(issuer, "Issuer"):
        fail("an issuerRef must replace the chart's CA")
    if leaf["clew-collector-cert-manager"]["issuerRef"] != {"name": "corp-ca", "kind": "ClusterIssuer"}:
        fail("collectorTls.certManager.issuerRef not used")
    if not any("clew-visualizer.clew-system.svc" == n for n in leaf["clew-collector-cert-manager"]["dnsNames"]):
        fail("the visualizer serves with the collector certificate: its names belong in it")
    ext = {"defaultCollector": {"enabled": True, "spec": {"storage": {"redis": {"external": {"secretName": "r"}}}}},
           "collectorTls": {"enabled": True, "certManager": {"enabled": True}}}
    with helm.Chart.load(chart_dir) as chart:
        leaf = [c["spec"] for c in by_kind(render(chart, ext), "Certificate") if c["spec"].get("dnsNames")][0]
    if any("redis" in n for n in leaf["dnsNames"]) or "localhost" in leaf["dnsNames"]:
        fail(f"with an external Redis no Redis names belong in the certificate: {leaf['dnsNames']}")

    # The CRD schema itself rejects what users get wrong.
    for bad in [{"replicas": 0}, {"sampling": {"ratio": 2}}, {"imagePullPolicy": "Sometimes"},
                {"retention": "three days"}, {"replication": {"factor": 0}},
                {"replication": {"factor": 6}}, {"replication": {"minCopies": 0}},
                {"replication": {"takeoverAfter": "soon"}}, {"wal": {"size": "ten gigs"}},
                {"wal": {"persistent": "yes"}}, {"storage": {"redis": {"waitReplicas": -1}}},
                {"storage": {"redis": {"external": {"secretName": "r", "cluster": "yes"}}}},
                {"storage": {"redis": {"managed": {"cluster": {"shards": 101}}}}}]:
        doc = {"apiVersion": "clew.dev/v1alpha1", "kind": "TraceCollector",
               "metadata": {"name": "x"}, "spec": bad}
        try:
            jsonschema.validate(doc, tc_schema)
        except jsonschema.ValidationError:
            continue
        fail(f"CRD schema accepted {bad}")

    total = sum(counts.values())
    print(f"chart: {len(VALUE_SETS)} value sets, {total} manifests "
          f"({counts['k8s']} validated strictly against Kubernetes {K8S_VERSIONS[0]}-{K8S_VERSIONS[-1]}, "
          f"{counts['crd']} TraceCollector against the CRD, {counts['third-party']} third-party kinds); "
          f"{len(BAD_VALUES)} bad value sets rejected")


if __name__ == "__main__":
    main()
