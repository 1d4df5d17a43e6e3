#!/usr/bin/env bash
# The consumer test: tests/consumer is configured and built against shmetrics
# (a) installed into a temporary prefix, with find_package(shmetrics CONFIG)
# (b) as add_subdirectory of the source tree, with prometheus-cpp, yaml-cpp, OpenSSL,
#     doctest, CLI11 and ZLIB hidden from find_package
# (c) through pkg-config, against the same temporary prefix;
# each program writes consumer_jobs_total 42, and `shmetrics dump` must show it.
#
# usage: run.sh SOURCE_DIR BUILD_DIR SHMETRICS_CLI CXX_COMPILER
set -euo pipefail
source_dir=$1 build_dir=$2 cli=$3 cxx=$4
tmp=$(mktemp -d "${TMPDIR:-/tmp}/shmetrics-consumer.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
expected='consumer_jobs_total{service="consumer"} 42'

check() {  # check NAME BINARY
  local segments=$tmp/segments-$1
  mkdir -p "$segments"
  "$2" "$segments"
  local dump
  dump=$("$cli" dump --dir "$segments")
  if ! grep -qxF "$expected" <<<"$dump"; then
    echo "consumer ($1): '$expected' not in shmetrics dump:" >&2
    echo "$dump" >&2
    exit 1
  fi
  echo "consumer ($1): ok"
}

configure_and_build() {  # NAME extra cmake args...
  local name=$1
  shift
  cmake -S "$source_dir/tests/consumer" -B "$tmp/build-$name" "${generator[@]}" \
    -DCMAKE_CXX_COMPILER="$cxx" -DCMAKE_BUILD_TYPE=Release "$@" >"$tmp/configure-$name.log" 2>&1 ||
    { cat "$tmp/configure-$name.log" >&2; exit 1; }
  cmake --build "$tmp/build-$name" >"$tmp/build-$name.log" 2>&1 ||
    { cat "$tmp/build-$name.log" >&2; exit 1; }
}

# (a) the installed tree (the "dev" component: libraries, headers, package files)
cmake --install "$build_dir" --prefix "$tmp/prefix" --component dev >/dev/null
test -f "$tmp/prefix/include/shmetrics/writer.h"
configure_and_build package -DSHMETRICS_CONSUMER_MODE=package -DCMAKE_PREFIX_PATH="$tmp/prefix"
check package "$tmp/build-package/consumer"

# (b) add_subdirectory: only the libraries are built; the exporter's, the
# tests' and the bench's dependencies must not be looked for.
configure_and_build subdirectory -DSHMETRICS_CONSUMER_MODE=subdirectory -DSHMETRICS_SOURCE_DIR="$source_dir" \
  -DCMAKE_DISABLE_FIND_PACKAGE_prometheus-cpp=ON -DCMAKE_DISABLE_FIND_PACKAGE_yaml-cpp=ON -DCMAKE_DISABLE_FIND_PACKAGE_OpenSSL=ON \
  -DCMAKE_DISABLE_FIND_PACKAGE_doctest=ON -DCMAKE_DISABLE_FIND_PACKAGE_CLI11=ON \
  -DCMAKE_DISABLE_FIND_PACKAGE_ZLIB=ON -DCMAKE_DISABLE_FIND_PACKAGE_benchmark=ON
for part in exporter cli examples bench tests; do
  if [ -e "$tmp/build-subdirectory/shmetrics/$part" ]; then
    echo "consumer (subdirectory): shmetrics' $part/ is part of the build" >&2
    exit 1
  fi
done
check subdirectory "$tmp/build-subdirectory/consumer"

# (c) pkg-config, against the installed tree
PKG_CONFIG_PATH="$tmp/prefix/lib/pkgconfig:$(find "$tmp/prefix" -type d -name pkgconfig | tr '\n' ':')" \
  configure_and_build pkgconfig -DSHMETRICS_CONSUMER_MODE=pkgconfig
check pkgconfig "$tmp/build-pkgconfig/consumer"

# (c') the README's own two pkg-config lines, as a user pastes them
(
  export PKG_CONFIG_PATH="$tmp/prefix/lib/pkgconfig"
  cd "$source_dir"
  "$cxx" -O2 tests/consumer/main.cc $(pkg-config --cflags --libs shmetrics) -o "$tmp/readme-pkgconfig" \
    >"$tmp/readme-pkgconfig.log" 2>&1
) || { echo "consumer: the README's pkg-config lines failed:" >&2; cat "$tmp/readme-pkgconfig.log" >&2; exit 1; }
check readme-pkgconfig "$tmp/readme-pkgconfig"
echo "consumer: all three ways ok"
