#!/usr/bin/env bash
# The demo: builds shmetrics, starts a simulated web back end writing live
# metrics and the exporter serving them on http://127.0.0.1:9464.
# Ctrl-C stops both. Options: DEMO_SECONDS=N to stop by itself, PORT=N.
set -euo pipefail
cd "$(dirname "$0")/.."
.ci/deps.sh
cmake --preset release >/dev/null
cmake --build --preset release --target shmetrics-demo shmetrics-exporter >/dev/null
dir=$(mktemp -d /dev/shm/shmetrics-demo.XXXXXX)
port=${PORT:-9464}
bin=build/release
cleanup() {
  kill "${demo_pid:-}" "${exporter_pid:-}" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT INT TERM
"$bin/examples/shmetrics-demo" --dir "$dir" --workers 2 --threads 4 --duration "${DEMO_SECONDS:-0}" &
demo_pid=$!
"$bin/exporter/shmetrics-exporter" --dir "$dir" --web.listen-address "127.0.0.1:$port" &
exporter_pid=$!
sleep 1
cat <<MSG

  live metrics:      http://127.0.0.1:$port/metrics
  statistics:        http://127.0.0.1:$port/api/stats
  health:            http://127.0.0.1:$port/api/health
  segments:          $dir

  a taste of /api/stats:
MSG
curl -s "http://127.0.0.1:$port/api/stats" | head -c 600; echo; echo
echo "  Ctrl-C stops the demo."
wait "$demo_pid"
