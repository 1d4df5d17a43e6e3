#!/usr/bin/env bash
# The test command: installs what is missing, then builds and runs every
# test in three builds: release, ASan + UBSan, and TSan (plus the bench's
# smoke run), then runs each libFuzzer target for a fixed time. Exits
# non-zero on the first failure.
set -euo pipefail
cd "$(dirname "$0")/.."
.ci/deps.sh
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
export TSAN_OPTIONS=${TSAN_OPTIONS:-halt_on_error=1:second_deadlock_stack=1}
passed=0
for preset in ${SHMETRICS_PRESETS:-release asan tsan}; do
  echo "=== $preset: configure and build"
  cmake --preset "$preset" >/dev/null
  cmake --build --preset "$preset"
  echo "=== $preset: tests"
  ctest --preset "$preset"
  passed=$((passed + $(ctest --preset "$preset" -N | sed -n 's/^Total Tests: //p')))
done
# The fuzz targets (clang, ASan + UBSan), each for a fixed time from the
# checked-in seeds; new inputs go to a scratch corpus, never into the tree.
fuzz_seconds=${SHMETRICS_FUZZ_SECONDS:-30}
if [ "$fuzz_seconds" -gt 0 ]; then
  echo "=== fuzz: configure and build"
  cmake --preset fuzz >/dev/null
  cmake --build --preset fuzz
  for target in segment_fuzz archive_fuzz; do
    corpus=fuzz/corpus/${target%_fuzz}
    scratch=$(mktemp -d)
    echo "=== fuzz: $target for ${fuzz_seconds}s"
    status=0
    build/fuzz/fuzz/$target -max_total_time="$fuzz_seconds" -max_len=16384 -print_final_stats=1 \
      "$scratch" "$corpus" 2>"$scratch.log" || status=$?
    grep -E '^(Done|stat::number_of_executed_units)' "$scratch.log" || true
    if [ "$status" -ne 0 ]; then
      tail -n 60 "$scratch.log"
      echo "fuzz: $target failed (exit $status)"
      exit 1
    fi
    rm -rf "$scratch" "$scratch.log"
    passed=$((passed + 1))
  done
fi
echo "all builds: $passed passed, 0 failed"
