#!/usr/bin/env bash
# End-to-end collector benchmark: starts clew-collector (and, for redis, a
# throwaway redis-server without persistence) on loopback, drives it with
# clew-loadgen, and prints throughput, CPU per span, storage and query
# latency figures. Figures and the runs behind them: docs/PERFORMANCE.md.
#
#   scripts/bench-collector.sh <memory|embedded|redis|redis-cluster> [spans] [queries] [loadgen args...]
#
# redis-cluster: six redis-server --cluster-enabled processes (three masters
# with a replica each, no persistence) joined by redis-cli --cluster create;
# the collector runs with --redis-cluster; the CPU figure includes every node.
#
# Build first: cargo build --release -p clew-collector --bins
# Env: CLEW_BENCH_BIN (dir of the binaries; default $CARGO_TARGET_DIR/release
# or target/release), CLEW_BENCH_DIR (scratch dir, removed afterwards),
# CLEW_BENCH_MAX_TRACES (memory backend bound, default 300000),
# CLEW_BENCH_MAX_BYTES (memory backend byte bound, default 4 GiB: above the
# figures' runs, so only the trace bound evicts),
# CLEW_BENCH_WAIT=0 (do not wait for storage), CLEW_BENCH_WAIT=metrics (wait
# until /metrics counts every span stored: for a bounded memory store, whose
# sampled traces may be evicted).
set -euo pipefail

backend=${1:?usage: $0 <memory|embedded|redis|redis-cluster> [spans] [queries] [loadgen args...]}
spans=${2:-1000000}
queries=${3:-0}
shift $(($# < 3 ? $# : 3))

bin=${CLEW_BENCH_BIN:-${CARGO_TARGET_DIR:-target}/release}
dir=${CLEW_BENCH_DIR:-$(mktemp -d /var/tmp/clew-bench.XXXXXX)}
mkdir -p "$dir"
source "$(dirname "$0")/bench-lib.sh"

extra=()
also=()
if [ "$backend" = redis ]; then
  rport=$(pick_port)
  redis-server --port "$rport" --save '' --appendonly no --dir "$dir" >"$dir/redis.log" 2>&1 &
  pids+=($!)
  also=(--also-pid "$!")
  for _ in $(seq 50); do redis-cli -p "$rport" ping >/dev/null 2>&1 && break; sleep 0.1; done
  extra=(--redis-url "redis://127.0.0.1:$rport")
fi

if [ "$backend" = redis-cluster ]; then
  nodes=()
  for _ in 1 2 3 4 5 6; do
    # A port whose cluster bus port (+10000) is free too.
    while :; do p=$((20000 + RANDOM % 10000)); port_free "$p" && port_free $((p + 10000)) && break; done
    mkdir -p "$dir/node-$p"
    redis-server --port "$p" --bind 127.0.0.1 --cluster-enabled yes --cluster-config-file nodes.conf \
      --save '' --appendonly no --dir "$dir/node-$p" >"$dir/node-$p/redis.log" 2>&1 &
    pids+=($!)
    also+=(--also-pid "$!")
    nodes+=("$p")
  done
  for p in "${nodes[@]}"; do
    for _ in $(seq 50); do redis-cli -p "$p" ping >/dev/null 2>&1 && break; sleep 0.1; done
  done
  redis-cli --cluster create $(printf '127.0.0.1:%s ' "${nodes[@]}") --cluster-replicas 1 --cluster-yes >"$dir/create.log"
  for p in "${nodes[@]}"; do
    for _ in $(seq 100); do redis-cli -p "$p" cluster info | grep -q cluster_state:ok && break; sleep 0.1; done
  done
  extra=(--redis-cluster --redis-url "$(printf 'redis://127.0.0.1:%s,' "${nodes[@]}" | sed 's/,$//')")
  backend=redis
  cluster=1
fi

grpc=$(pick_port); http=$(pick_port); query=$(pick_port); ops=$(pick_port)
"$bin/clew-collector" --storage "$backend" --data-dir "$dir" --idle-window 1s \
  --memory-max-traces "${CLEW_BENCH_MAX_TRACES:-300000}" \
  --memory-max-bytes "${CLEW_BENCH_MAX_BYTES:-4294967296}" \
  --grpc-addr "127.0.0.1:$grpc" --http-addr "127.0.0.1:$http" \
  --query-addr "127.0.0.1:$query" --ops-addr "127.0.0.1:$ops" \
  "${extra[@]}" >"$dir/collector.log" 2>&1 &
collector=$!
pids=("$collector" "${pids[@]}")
for _ in $(seq 100); do curl -sf "127.0.0.1:$ops/readyz" >/dev/null && break; sleep 0.1; done

wait_flag=(--wait-stored)
[ "${CLEW_BENCH_WAIT:-1}" = 0 ] && wait_flag=()
# CLEW_BENCH_WAIT=metrics: wait until the collector's metrics count every span
# as stored (works with a store at its bound, which evicts sampled traces).
[ "${CLEW_BENCH_WAIT:-1}" = metrics ] && wait_flag=(--wait-stored --metrics-addr "127.0.0.1:$ops")
"$bin/clew-loadgen" --target "127.0.0.1:$grpc" --spans "$spans" --batch 512 --concurrency 8 \
  --collector-pid "$collector" "${also[@]}" --queries "$queries" "${wait_flag[@]}" "$@"
if [ -n "${cluster:-}" ]; then
  for p in "${nodes[@]}"; do
    redis-cli -p "$p" info replication | grep -q role:master &&
      echo "node $p (master): $(redis-cli -p "$p" info memory | grep 'used_memory_human' | tr -d '\r')"
  done
elif [ "$backend" = redis ]; then
  redis-cli -p "$rport" info memory | grep used_memory_human
fi
