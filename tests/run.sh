#!/usr/bin/env bash
# The test command: installs what is missing, then builds and runs every
# test in three builds: release, ASan + UBSan, and TSan (plus the bench's
# smoke run). Exits non-zero on the first failure.
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
echo "all builds: $passed passed, 0 failed"
