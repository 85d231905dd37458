# Shared by the benchmark scripts (sourced): loopback ports, and the
# processes started, stopped and the scratch directory removed on exit.
#
#   source "$(dirname "$0")/bench-lib.sh"   # then: pids+=($!); dir=...

pids=()
dir=${dir:-}

# Stops every process in $pids and removes $dir.
bench_cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null && wait "$p" 2>/dev/null || true; done
  pids=()
  [ -n "$dir" ] && rm -rf "$dir"
  return 0
}
trap bench_cleanup EXIT

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# A free loopback port.
pick_port() {
  local p
  while :; do
    p=$((20000 + RANDOM % 20000))
    port_free "$p" && echo "$p" && return
  done
}
