#!/usr/bin/env bash
# The sidecar benchmark: clew-sidecar (disk durability, and memory
# durability) beside rotel-agent (PyPI `rotel`: a Rust OTLP agent that keeps
# spans in memory only), each forwarding to the same release collector
# (memory storage), measured with the same load generator in interleaved
# rounds: RSS idle and under load, CPU per span.
#
# Usage: scripts/bench-sidecar.sh [DURATION] [ROUNDS] [RATE...]
#   defaults: 20s, 2 rounds, rates 10000 and 100000 spans/s; CONCURRENCY
#   clients share each rate (default 4: several applications behind one
#   agent; each waits for its answer before its next request).
# ROTEL=path/to/rotel-agent overrides where rotel-agent is found (default:
# the test venv, /var/tmp/clew-venv, where it is installed when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/clew-target}"
DURATION="${1:-20s}"
ROUNDS="${2:-2}"
shift 2 || shift $#
RATES=("$@")
CONCURRENCY="${CONCURRENCY:-4}"
[ ${#RATES[@]} -gt 0 ] || RATES=(10000 100000)

VENV="${CLEW_VENV:-/var/tmp/clew-venv}"
ROTEL="${ROTEL:-}"
if [ -z "$ROTEL" ]; then
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  "$VENV/bin/python" -c "import rotel" 2>/dev/null || "$VENV/bin/pip" install -q rotel
  ROTEL="$("$VENV/bin/python" -c 'import os, rotel; print(os.path.join(os.path.dirname(rotel.__file__), "rotel-agent"))')"
fi
cargo build --release --quiet --locked -p clew-collector -p clew-sidecar --bins
BIN="$CARGO_TARGET_DIR/release"
WORK="$(mktemp -d)"
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$WORK"' EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }

CG=$(port)
"$BIN/clew-collector" --storage memory --data-dir "$WORK/c" --grpc-addr "127.0.0.1:$CG" \
  --http-addr "127.0.0.1:$(port)" --query-addr "127.0.0.1:$(port)" --ops-addr "127.0.0.1:$(port)" \
  --memory-max-traces 20000 >"$WORK/collector.log" 2>&1 &
wait_port "$CG"

# start_agent KIND PORT: starts one agent on PORT, prints its pid.
start_agent() {
  local kind=$1 p=$2 dir="$WORK/$1-$RANDOM"
  case $kind in
    clew-disk|clew-memory)
      "$BIN/clew-sidecar" --collectors "127.0.0.1:$CG" --spill-dir "$dir" --grpc-addr "127.0.0.1:$p" \
        --http-addr "127.0.0.1:$(port)" --ops-addr "127.0.0.1:$(port)" --durability "${kind#clew-}" \
        >"$dir.log" 2>&1 &
      ;;
    rotel)
      "$ROTEL" start --otlp-grpc-endpoint "127.0.0.1:$p" --otlp-http-endpoint "127.0.0.1:$(port)" \
        --otlp-receiver-metrics-disabled --otlp-receiver-logs-disabled \
        --exporter otlp --otlp-exporter-endpoint "http://127.0.0.1:$CG" --otlp-exporter-protocol grpc \
        --pid-file "$dir.pid" >"$dir.log" 2>&1 &
      ;;
  esac
  echo $!
}

printf '%-12s %8s %6s %10s %10s %10s %9s %12s\n' agent rate round idle_MiB mean_MiB peak_MiB cpu_pct cpu_us/span
for rate in "${RATES[@]}"; do
  for round in $(seq 1 "$ROUNDS"); do
    for kind in clew-disk rotel clew-memory; do
      P=$(port)
      PID=$(start_agent "$kind" "$P")
      wait_port "$P"
      sleep 3
      OUT=$("$BIN/clew-sidecar-load" --target "127.0.0.1:$P" --rate "$rate" --duration "$DURATION" --concurrency "$CONCURRENCY" --pid "$PID")
      kill "$PID" 2>/dev/null || true
      wait "$PID" 2>/dev/null || true
      python3 - "$kind" "$rate" "$round" "$OUT" <<'PY'
import re, sys
kind, rate, rnd, out = sys.argv[1:]
sent = re.search(r"\(([\d.]+) spans/s\)", out)
m = re.search(r"idle RSS ([\d.]+) MiB; under load RSS mean ([\d.]+) MiB, peak ([\d.]+) MiB; CPU ([\d.]+)%", out)
if not (sent and m):
    print(f"{kind:12} {rate:>8} {rnd:>6}  no result: {out!r}")
    sys.exit(0)
rate_got = float(sent.group(1))
idle, mean, peak, cpu = map(float, m.groups())
us = cpu / 100 / max(rate_got, 1) * 1e6
print(f"{kind:12} {rate_got:8.0f} {rnd:>6} {idle:10.1f} {mean:10.1f} {peak:10.1f} {cpu:9.2f} {us:12.2f}")
PY
    done
  done
done
