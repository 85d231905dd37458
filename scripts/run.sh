#!/usr/bin/env bash
# The main job: clew's local all-in-one. Builds the release binaries, then
# runs clew-local: the collector (embedded storage) with its query API, the
# visualizer (when built), demo services A -> B -> C exporting to the
# collector, and a traffic generator. Prints the URLs; Ctrl-C stops
# everything. Data stays in ./clew-data, so a second start finds it.
# Flags go to clew-local (see --help), e.g. --port-offset 1000 --rps 20.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/clew-target}"
pkgs=(-p clew-collector -p clew-services -p clew-e2e)
if [ -d visualizer ]; then pkgs+=(-p clew-visualizer); fi
echo "building release binaries (first build takes a few minutes)…" >&2
cargo build --release --quiet --bins "${pkgs[@]}"
exec "$CARGO_TARGET_DIR/release/clew-local" "$@"
