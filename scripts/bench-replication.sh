#!/usr/bin/env bash
# The cost of replication: spans per collector CPU-second and acknowledgement
# latency with a replication factor of 2 against 1, in interleaved rounds of
# one run. R=1 is one collector; R=2 is two collectors naming each other in
# --peers, the load sent to the first, so each batch is written to its WAL
# and copied to the second's replica log before it is acknowledged. The CPU
# of both collectors counts. Memory storage, WAL fsync on (the default).
# Figures: docs/PERFORMANCE.md.
#
#   scripts/bench-replication.sh [rounds] [spans] [loadgen args...]
#
# Build first: cargo build --release -p clew-collector --bins
# Env: CLEW_BENCH_BIN (dir of the binaries; default $CARGO_TARGET_DIR/release
# or target/release).
set -euo pipefail

rounds=${1:-3}
spans=${2:-300000}
shift $(($# < 2 ? $# : 2))

bin=${CLEW_BENCH_BIN:-${CARGO_TARGET_DIR:-target}/release}
dir=$(mktemp -d /var/tmp/clew-bench-repl.XXXXXX)
source "$(dirname "$0")/bench-lib.sh"

# start_collector <name> <grpc port> [flags...]: sets $started to its pid.
start_collector() {
  local name=$1 grpc=$2
  shift 2
  local ops
  ops=$(pick_port)
  "$bin/clew-collector" --storage memory --data-dir "$dir/$name" --idle-window 1s \
    --memory-max-traces 1000000 --memory-max-bytes 8589934592 \
    --grpc-addr "127.0.0.1:$grpc" --http-addr "127.0.0.1:$(pick_port)" \
    --query-addr "127.0.0.1:$(pick_port)" --ops-addr "127.0.0.1:$ops" \
    "$@" >"$dir/$name.log" 2>&1 &
  local pid=$!
  pids+=("$pid")
  for _ in $(seq 100); do curl -sf "127.0.0.1:$ops/readyz" >/dev/null && break; sleep 0.1; done
  started=$pid
  started_ops=$ops
}

stop_all() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null && wait "$p" 2>/dev/null || true; done
  pids=()
  rm -rf "${dir:?}"/*
}

round() {
  local r=$1 a b pa pb
  shift
  a=$(pick_port)
  if [ "$r" = 1 ]; then
    start_collector a "$a"
    pa=$started
    echo "== R=1"
    "$bin/clew-loadgen" --target "127.0.0.1:$a" --spans "$spans" --collector-pid "$pa" "$@"
  else
    b=$(pick_port)
    local peers="127.0.0.1:$a,127.0.0.1:$b"
    start_collector a "$a" --peers "$peers" --replication-factor 2
    pa=$started
    local a_ops=$started_ops
    start_collector b "$b" --peers "$peers" --replication-factor 2
    pb=$started
    # Until a heartbeat reaches b, a counts it down (b started after a).
    for _ in $(seq 100); do
      curl -sf "127.0.0.1:$a_ops/metrics" | grep -q '^clew_replication_peer_up{.*} 1' && break
      sleep 0.1
    done
    echo "== R=2"
    "$bin/clew-loadgen" --target "127.0.0.1:$a" --spans "$spans" --collector-pid "$pa" --also-pid "$pb" "$@"
  fi
  stop_all
}

for i in $(seq "$rounds"); do
  echo "### round $i"
  round 1 "$@"
  round 2 "$@"
done
