#!/usr/bin/env bash
# The cost of TLS on ingest: spans per collector CPU-second over TLS against
# plain text, in interleaved rounds of one run. One collector (memory
# storage, WAL fsync on), clew-loadgen over 8 connections in requests of 512
# spans; the TLS rounds use a fresh ECDSA P-256 CA and server certificate
# (openssl) and TLS 1.3. Figures: docs/PERFORMANCE.md.
#
#   scripts/bench-tls.sh [rounds] [spans] [loadgen args...]
#
# Build first: cargo build --release -p clew-collector --bins
# Env: CLEW_BENCH_BIN (dir of the binaries; default $CARGO_TARGET_DIR/release
# or target/release).
set -euo pipefail

rounds=${1:-3}
spans=${2:-600000}
shift $(($# < 2 ? $# : 2))

bin=${CLEW_BENCH_BIN:-${CARGO_TARGET_DIR:-target}/release}
dir=$(mktemp -d /var/tmp/clew-bench-tls.XXXXXX)
source "$(dirname "$0")/bench-lib.sh"

# A CA and a certificate for localhost / 127.0.0.1 it signed.
ec=(-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes)
openssl req -x509 "${ec[@]}" -keyout "$dir/ca.key" -out "$dir/ca.pem" -days 2 \
  -subj /CN=clew-bench-ca 2>/dev/null
openssl req "${ec[@]}" -keyout "$dir/srv.key" -out "$dir/srv.csr" -subj /CN=localhost 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' >"$dir/san.ext"
openssl x509 -req -in "$dir/srv.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" -CAcreateserial \
  -out "$dir/srv.pem" -days 2 -extfile "$dir/san.ext" 2>/dev/null

round() {
  local mode=$1 grpc ops pid
  shift
  grpc=$(pick_port)
  ops=$(pick_port)
  local tls=() client=()
  if [ "$mode" = tls ]; then
    tls=(--tls-cert "$dir/srv.pem" --tls-key "$dir/srv.key")
    client=(--tls-ca "$dir/ca.pem" --tls-server-name localhost)
  fi
  rm -rf "$dir/data"
  "$bin/clew-collector" --storage memory --data-dir "$dir/data" --idle-window 1s \
    --memory-max-traces 1000000 --memory-max-bytes 8589934592 \
    --grpc-addr "127.0.0.1:$grpc" --http-addr "127.0.0.1:$(pick_port)" \
    --query-addr "127.0.0.1:$(pick_port)" --ops-addr "127.0.0.1:$ops" \
    "${tls[@]}" >"$dir/collector.log" 2>&1 &
  pid=$!
  pids+=("$pid")
  for _ in $(seq 100); do curl -sf "127.0.0.1:$ops/readyz" >/dev/null && break; sleep 0.1; done
  echo "== $mode"
  "$bin/clew-loadgen" --target "127.0.0.1:$grpc" --spans "$spans" --collector-pid "$pid" \
    "${client[@]}" "$@"
  kill "$pid" && wait "$pid" 2>/dev/null || true
  pids=()
}

for i in $(seq "$rounds"); do
  echo "### round $i"
  round plain "$@"
  round tls "$@"
done
