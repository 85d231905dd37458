#!/usr/bin/env bash
# clew's end-to-end suite on a kind cluster:
#   build + load the image, helm install the chart, apply a TraceCollector, wait for Ready,
#   deploy the demo services annotated for injection, send counted traffic, assert complete
#   traces through the query API, kill a collector pod during traffic and assert nothing was
#   lost, delete the TraceCollector and assert everything it owned is gone.
#
# Needs docker (with a running engine), kind, kubectl, helm, curl and python3. Without them it
# prints one SKIPPED line and exits 0. Environment:
#   CLEW_E2E_CLUSTER (clew-e2e)  kind cluster to create or reuse
#   CLEW_E2E_KEEP=1              keep the cluster afterwards
#   CLEW_E2E_REQUESTS (50)       requests per traffic batch
#   CLEW_E2E_PATH (/)            path requested on service-a
set -euo pipefail
cd "$(dirname "$0")/../.."

missing=()
for tool in docker kind kubectl helm curl python3; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [ ${#missing[@]} -eq 0 ] && ! docker info >/dev/null 2>&1; then missing+=("a running Docker engine"); fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "kind e2e: SKIPPED (needs ${missing[*]}; see README, section 'Kubernetes')"
  exit 0
fi

CLUSTER="${CLEW_E2E_CLUSTER:-clew-e2e}"
IMAGE="ghcr.io/clew-dev/clew:e2e"
NS=clew-system
APP_NS=demo
N="${CLEW_E2E_REQUESTS:-50}"
PATH_A="${CLEW_E2E_PATH:-/}"
PF_PID=""

log() { echo "[$(date +%H:%M:%S)] $*"; }
cleanup() {
  [ -n "$PF_PID" ] && kill "$PF_PID" 2>/dev/null || true
  if [ "${CLEW_E2E_KEEP:-0}" != 1 ] && [ "${CREATED:-0}" = 1 ]; then kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT
fail() { echo "kind e2e: FAILED: $*" >&2; kubectl get all -A >&2 || true; exit 1; }

# Polls a command until it succeeds or the deadline passes.
wait_for() {
  local what="$1" secs="$2"; shift 2
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -ge $deadline ] && fail "timed out after ${secs}s waiting for $what"
    sleep 2
  done
}

if ! kind get clusters | grep -qx "$CLUSTER"; then
  log "creating kind cluster $CLUSTER"
  kind create cluster --name "$CLUSTER" --wait 120s
  CREATED=1
fi
kubectl config use-context "kind-$CLUSTER" >/dev/null

log "building $IMAGE"
docker build -t "$IMAGE" .
kind load docker-image "$IMAGE" --name "$CLUSTER"

log "installing the chart"
helm upgrade --install clew charts/clew -n "$NS" --create-namespace \
  --set image.tag=e2e --set image.pullPolicy=Never --wait --timeout 5m
helm test clew -n "$NS" --timeout 2m

log "creating a TraceCollector"
kubectl create namespace "$APP_NS" --dry-run=client -o yaml | kubectl apply -f -
kubectl apply -n "$APP_NS" -f - <<YAML
apiVersion: clew.dev/v1alpha1
kind: TraceCollector
metadata:
  name: main
spec:
  replicas: 2
  image: $IMAGE
  imagePullPolicy: Never
  storage:
    redis:
      managed:
        size: 256Mi
YAML
kubectl wait -n "$APP_NS" tracecollector/main --for=condition=Ready --timeout=300s \
  || fail "TraceCollector did not become Ready"

log "invalid specs are refused by the API server with the CRD's messages"
refused() {
  local spec="$1" message="$2" out
  if out=$(printf 'apiVersion: clew.dev/v1alpha1\nkind: TraceCollector\nmetadata: {name: invalid}\nspec: %s\n' "$spec" \
      | kubectl apply --dry-run=server -n "$APP_NS" -f - 2>&1); then
    fail "accepted an invalid spec: $spec"
  fi
  grep -qF "$message" <<<"$out" || fail "no \"$message\" in: $out"
}
refused '{autoscaler: {minReplicas: 5, maxReplicas: 2}}' \
  'spec.autoscaler.maxReplicas must be at least spec.autoscaler.minReplicas'
refused '{sidecar: {bufferBytes: 8388608, spillMaxBytes: 1048576}}' \
  'spec.sidecar.spillMaxBytes must be at least spec.sidecar.bufferBytes'
refused '{storage: {redis: {managed: {size: 1Gi}, external: {secretName: r}}}}' \
  'set only one of spec.storage.redis.managed and spec.storage.redis.external'

log "deploying the demo services (namespace annotated for injection)"
kubectl annotate namespace "$APP_NS" sidecar.clew.dev/inject=true --overwrite
sed "s|IMAGE|$IMAGE|" e2e/kind/manifests.yaml | kubectl apply -n "$APP_NS" -f -
for d in service-a service-b service-c; do
  kubectl rollout status -n "$APP_NS" "deploy/$d" --timeout=180s || fail "$d did not start"
  kubectl get pod -n "$APP_NS" -l "app.kubernetes.io/name=$d" \
    -o jsonpath='{.items[0].metadata.annotations.sidecar\.clew\.dev/status}' | grep -qx injected \
    || fail "$d was not injected"
done

# The port-forward goes to one collector pod; when that pod is the one killed
# below it ends, so every query first makes sure one is running.
port_forward() {
  if [ -n "$PF_PID" ] && kill -0 "$PF_PID" 2>/dev/null; then return; fi
  kubectl port-forward -n "$APP_NS" svc/main-collector 16686:16686 >/dev/null 2>&1 &
  PF_PID=$!
}
port_forward
wait_for "the query API" 60 curl -fsS http://127.0.0.1:16686/api/services

# Sends N requests to service-a from inside the cluster; every one must succeed.
traffic() {
  local name="$1"
  kubectl run "$name" -n "$APP_NS" --image=curlimages/curl:8.10.1 --restart=Never \
    --annotations=sidecar.clew.dev/inject=false --command -- sh -c \
    "ok=0; i=0; while [ \$i -lt $N ]; do i=\$((i+1)); curl -fsS -o /dev/null http://service-a:8000$PATH_A && ok=\$((ok+1)); done; echo ok=\$ok; [ \$ok -eq $N ]"
}
# Complete traces (spans from all three services) seen by the query API.
complete_traces() {
  port_forward
  curl -fsS "http://127.0.0.1:16686/api/traces?service=service-a&limit=100000&lookback=1h" | python3 -c '
import json, sys
data = json.load(sys.stdin)["data"]
def services(t):
    return {t["processes"][s["processID"]]["serviceName"] for s in t["spans"]}
print(sum(1 for t in data if {"service-a", "service-b", "service-c"} <= services(t)))'
}
expect_traces() {
  local want="$1"
  local deadline=$((SECONDS + 120)) got=0
  while [ $SECONDS -lt $deadline ]; do
    got=$(complete_traces || echo 0)
    [ "$got" -ge "$want" ] && break
    sleep 3
  done
  [ "$got" -eq "$want" ] || fail "expected $want complete traces, found $got"
  log "$got complete traces"
}

log "batch 1: $N requests"
traffic batch-1
kubectl wait -n "$APP_NS" pod/batch-1 --for=jsonpath='{.status.phase}'=Succeeded --timeout=300s || fail "batch 1 failed"
expect_traces "$N"

log "batch 2: $N requests while a collector pod is killed"
traffic batch-2
# Requests in flight when the collector goes.
wait_for "batch 2 to start" 120 sh -c "kubectl get pod -n '$APP_NS' batch-2 -o jsonpath='{.status.phase}' | grep -Eq 'Running|Succeeded'"
victim=$(kubectl get pod -n "$APP_NS" -l app.kubernetes.io/instance=main,app.kubernetes.io/component=collector -o jsonpath='{.items[0].metadata.name}')
kubectl delete pod -n "$APP_NS" "$victim" --wait=false
kubectl wait -n "$APP_NS" pod/batch-2 --for=jsonpath='{.status.phase}'=Succeeded --timeout=300s || fail "batch 2 failed"
expect_traces "$((2 * N))"

log "drift repair: a deleted or edited child comes back"
kubectl delete svc -n "$APP_NS" main-collector-headless --wait=true
wait_for "the headless Service to come back" 60 kubectl get svc -n "$APP_NS" main-collector-headless
kubectl scale deploy -n "$APP_NS" main-collector --replicas=5
wait_for "the collector Deployment to be set back to 2 replicas" 60 sh -c \
  "[ \"\$(kubectl get deploy -n '$APP_NS' main-collector -o jsonpath='{.spec.replicas}')\" = 2 ]"

log "deleting the TraceCollector"
kill "$PF_PID" 2>/dev/null || true; PF_PID=""
kubectl delete -n "$APP_NS" tracecollector/main --wait=true
gone() {
  [ -z "$(kubectl get deploy,statefulset,svc,configmap,pdb,hpa,pvc -n "$APP_NS" -l app.kubernetes.io/instance=main -o name)" ]
}
wait_for "the TraceCollector's children to be garbage-collected" 120 gone
log "kind e2e: PASSED"
