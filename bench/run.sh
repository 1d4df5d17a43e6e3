#!/usr/bin/env bash
# Runs the whole benchmark suite and writes docs/benchmarks-<label>.md, the
# CSV and an SVG plot beside it. Usage: bench/run.sh [label] [extra bench flags]
# The 16-core figures were made with: bench/run.sh xeon16 --threads 1,2,4,8,16 --processes 1,2,4,8 \
#   --series 1000,10000,100000,1000000
set -euo pipefail
cd "$(dirname "$0")/.."
label=${1:-$(hostname)}
shift || true
cmake --preset release >/dev/null
cmake --build --preset release --target shmetrics-bench shmetrics-exporter >/dev/null
out=docs/benchmarks-$label
# --scan-wait-ms 0: scrapes render the last view (the bench's exporter
# rescans at most once a second), so the scrape rows measure rendering.
build/release/bench/shmetrics-bench --exporter "build/release/exporter/shmetrics-exporter --scan-wait-ms 0" --csv "$out.csv" "$@" |
  tee "$out.md"
/usr/bin/python3 bench/plot.py "$out.csv" "$out.svg" "shmetrics-bench on $label: per-thread ns/op"
echo "wrote $out.md, $out.csv, $out.svg"
