#!/usr/bin/env bash
# Runs every test of clew: formatting, clippy, unit/property/integration tests
# and doc tests. Installs what the tests need when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/clew-target}"
export CARGO_TERM_COLOR=never

need_apt=()
# Later suites (collector, e2e, UI) need these; installing once is cheap.
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "test.sh: installing ${need_apt[*]}"
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== benches compile"
cargo bench --workspace --no-run --locked >/dev/null 2>&1 || cargo bench --workspace --no-run --locked

echo "== tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo test --workspace --doc --locked
  cargo nextest run --workspace --locked --no-fail-fast
else
  cargo test --workspace --locked --no-fail-fast
fi
