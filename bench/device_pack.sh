#!/usr/bin/env bash
# Packs the release bench and exporter, with the shared libraries they need
# beyond glibc, into one folder that runs on a bare machine (the 16-core
# device of some sessions), plus a run.sh that passes its arguments to the
# bench. Usage: bench/device_pack.sh [folder, default .devrun]
#   then, on the device: .devrun/run.sh --threads 1,2,4,8,16 --reps 5 > $OUT/bench.md
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-.devrun}
cmake --preset release >/dev/null
cmake --build --preset release --target shmetrics-bench shmetrics-exporter >/dev/null
rm -rf "$out"
mkdir -p "$out/lib"
for bin in build/release/bench/shmetrics-bench build/release/exporter/shmetrics-exporter; do
  strip -o "$out/$(basename "$bin")" "$bin"
  # glibc's own libraries stay: they must match the device's loader.
  ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// {print $3}' |
    grep -Ev '/(libc|libm|libpthread|libdl|librt|libresolv|ld-linux[^/]*)\.so' |
    while read -r lib; do cp -L "$lib" "$out/lib/"; done
done
cat > "$out/run.sh" <<'RUN'
#!/usr/bin/env bash
# Runs the packed bench: its arguments go to shmetrics-bench.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
nproc >&2
grep -m1 'model name' /proc/cpuinfo >&2 || true
LD_LIBRARY_PATH="$here/lib" exec "$here/shmetrics-bench" --exporter "$here/shmetrics-exporter --scan-wait-ms 0" "$@"
RUN
chmod +x "$out/run.sh"
du -sh "$out"
