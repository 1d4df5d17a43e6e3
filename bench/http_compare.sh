#!/usr/bin/env bash
# HTTP scrapes through two exporters in one run: the civetweb exporter of
# commit e798a81 (before issue 13) and this tree's Beast exporter, on the
# same series, by shmetrics-bench's scrape table. Writes
# docs/benchmarks-http-<label>.md.
#
# usage: bench/http_compare.sh [label] [extra shmetrics-bench flags]
# The old exporter needs Debian's libcivetweb-dev (no longer a dependency).
set -euo pipefail
cd "$(dirname "$0")/.."
label=${1:-$(hostname)}
shift || true
old_commit=e798a81
if ! dpkg-query -W -f='${Status}' libcivetweb-dev 2>/dev/null | grep -q "install ok installed"; then
  echo "the old exporter needs civetweb; as root, run: apt-get install -y libcivetweb-dev" >&2
  exit 1
fi
old_src=build/http-compare/src old_build=build/http-compare/build
if [ ! -x "$old_build/exporter/shmetrics-exporter" ]; then
  rm -rf "$old_src" && mkdir -p "$old_src"
  git archive "$old_commit" | tar -x -C "$old_src"
  cmake -S "$old_src" -B "$old_build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSHMETRICS_BUILD_TESTS=OFF \
    -DSHMETRICS_BUILD_BENCH=OFF -DSHMETRICS_INSTALL=OFF >/dev/null
  cmake --build "$old_build" --target shmetrics-exporter >/dev/null
fi
cmake --preset release >/dev/null
cmake --build --preset release --target shmetrics-bench shmetrics-exporter >/dev/null
out=docs/benchmarks-http-$label.md
# The old exporter at its best setting (16 threads), the new one at its default (2).
build/release/bench/shmetrics-bench --tables scrape --series 1000,100000 \
  --exporter "civetweb-e798a81=$old_build/exporter/shmetrics-exporter --threads 16" \
  --exporter "beast=build/release/exporter/shmetrics-exporter --scan-wait-ms 0" "$@" | tee "$out"
echo "wrote $out"
