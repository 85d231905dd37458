#!/usr/bin/env bash
# The main job. Today: clew-tracer's demo — two gRPC services on loopback,
# traced end to end, printed as a span tree with vector clocks. The local
# all-in-one (collector, visualizer, demo services A→B→C with traffic)
# replaces this once the collector and sidecar land.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/clew-target}"
exec cargo run --quiet -p clew-tracer --example demo -- "$@"
