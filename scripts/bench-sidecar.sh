#!/usr/bin/env bash
# The sidecar benchmark: RSS idle and at a paced load, and CPU at that load.
# Starts a release collector (memory storage) and a release sidecar on free
# ports, lets the sidecar idle, then sends RATE spans/s for DURATION with
# clew-sidecar-load. Usage: scripts/bench-sidecar.sh [RATE] [DURATION]
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/clew-target}"
RATE="${1:-10000}"
DURATION="${2:-30s}"
cargo build --release --quiet -p clew-collector -p clew-sidecar --bins
BIN="$CARGO_TARGET_DIR/release"
WORK="$(mktemp -d)"
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$WORK"' EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
CG=$(port); SG=$(port)
"$BIN/clew-collector" --storage memory --data-dir "$WORK/c" --grpc-addr "127.0.0.1:$CG" \
  --http-addr "127.0.0.1:$(port)" --query-addr "127.0.0.1:$(port)" --ops-addr "127.0.0.1:$(port)" \
  >"$WORK/collector.log" 2>&1 &
"$BIN/clew-sidecar" --collectors "127.0.0.1:$CG" --spill-dir "$WORK/spill" --grpc-addr "127.0.0.1:$SG" \
  --http-addr "127.0.0.1:$(port)" --ops-addr "127.0.0.1:$(port)" >"$WORK/sidecar.log" 2>&1 &
SIDECAR=$!
sleep 5
"$BIN/clew-sidecar-load" --target "127.0.0.1:$SG" --rate "$RATE" --duration "$DURATION" --pid "$SIDECAR"
