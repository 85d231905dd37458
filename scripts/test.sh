#!/usr/bin/env bash
# Runs every test of clew: formatting, clippy, unit/property/integration tests,
# doc tests and the web UI's JavaScript unit tests. Installs what the tests
# need when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/clew-target}"
export CARGO_TERM_COLOR=never
# CI builds fresh clones: incremental caches would only fill the disk.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

need_apt=()
# The Redis storage suites start a real redis-server.
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
# The visualizer's end-to-end tests drive a real headless Chromium over WebDriver.
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need_apt+=(chromium-driver)
# The visualizer's JavaScript unit tests run on Node's built-in test runner.
command -v node >/dev/null 2>&1 || need_apt+=(nodejs)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "test.sh: installing ${need_apt[*]}"
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# A real OpenTelemetry SDK (Python) for the OTLP ingest tests.
VENV="${CLEW_VENV:-/var/tmp/clew-venv}"
if ! "$VENV/bin/python" -c "import opentelemetry.exporter.otlp.proto.grpc.trace_exporter, opentelemetry.exporter.otlp.proto.http.trace_exporter" >/dev/null 2>&1; then
  echo "test.sh: creating $VENV with opentelemetry-sdk and the OTLP exporters"
  if ! python3 -m venv "$VENV" >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq python3-venv >/dev/null
    python3 -m venv "$VENV"
  fi
  "$VENV/bin/pip" install -q opentelemetry-sdk opentelemetry-exporter-otlp-proto-grpc opentelemetry-exporter-otlp-proto-http
fi
# The Helm engine (helm-python-sdk bundles it) and the Kubernetes schemas for the chart test.
if ! "$VENV/bin/python" -c "import helm_python, kubernetes_validate" >/dev/null 2>&1; then
  echo "test.sh: installing helm-python-sdk and kubernetes-validate into $VENV"
  "$VENV/bin/pip" install -q helm-python-sdk kubernetes-validate
fi
# Third-party Parquet readers for the cold tier's open-format test.
if ! "$VENV/bin/python" -c "import pyarrow, duckdb" >/dev/null 2>&1; then
  echo "test.sh: installing pyarrow and duckdb into $VENV"
  "$VENV/bin/pip" install -q pyarrow duckdb
fi
# Prometheus' own Python parser of the text format, for the span-metrics test.
if ! "$VENV/bin/python" -c "import prometheus_client" >/dev/null 2>&1; then
  echo "test.sh: installing prometheus-client into $VENV"
  "$VENV/bin/pip" install -q prometheus-client
fi
export CLEW_PYTHON="$VENV/bin/python"
# A real S3 server on loopback for the cold tier (the newest s3s-fs needs a
# newer rustc than this toolchain).
if ! command -v s3s-fs >/dev/null 2>&1; then
  echo "test.sh: installing s3s-fs 0.14.1"
  cargo install s3s-fs@0.14.1 --locked --features binary
fi
export CLEW_CHROMIUM="$(command -v chromium)"
export CLEW_CHROMEDRIVER="$(command -v chromedriver)"

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== benches compile"
cargo bench --workspace --no-run --locked >/dev/null 2>&1 || cargo bench --workspace --no-run --locked

echo "== kind e2e (skips without a cluster)"
bash e2e/kind/run.sh

echo "== binaries (the end-to-end suites run them)"
cargo build --workspace --bins --locked

echo "== tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo test --workspace --doc --locked
  cargo nextest run --workspace --locked --no-fail-fast
else
  cargo test --workspace --locked --no-fail-fast
fi

echo "== UI unit tests (node --test)"
node --test visualizer/assets/tests/
