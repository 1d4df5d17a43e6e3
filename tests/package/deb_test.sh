#!/usr/bin/env bash
# The .deb test: cpack -G DEB in the release build directory makes
# shmetrics and libshmetrics-dev; their control fields and file lists are
# checked, the shmetrics package is extracted with dpkg -x into a temporary
# root and its exporter and CLI answer --version; libshmetrics-dev's
# shmetrics.pc resolves from the extracted tree; systemd-analyze verify
# accepts the unit (skipped, with a message, when systemd-analyze is absent).
#
# usage: deb_test.sh BUILD_DIR VERSION
set -euo pipefail
build_dir=$1 version=$2
tmp=$(mktemp -d "${TMPDIR:-/tmp}/shmetrics-deb.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
fail() { echo "deb test: $*" >&2; exit 1; }

(cd "$build_dir" && cpack -G DEB -B "$tmp/out" >"$tmp/cpack.log" 2>&1) || { cat "$tmp/cpack.log" >&2; fail "cpack failed"; }
runtime=$(ls "$tmp"/out/shmetrics_"$version"-*.deb 2>/dev/null | head -1)
dev=$(ls "$tmp"/out/libshmetrics-dev_"$version"-*.deb 2>/dev/null | head -1)
[ -f "$runtime" ] || { ls -l "$tmp/out" >&2; fail "no shmetrics_${version}-*.deb"; }
[ -f "$dev" ] || { ls -l "$tmp/out" >&2; fail "no libshmetrics-dev_${version}-*.deb"; }

field() { dpkg-deb --field "$1" "$2"; }
[ "$(field "$runtime" Package)" = shmetrics ] || fail "runtime package name"
[ "$(field "$dev" Package)" = libshmetrics-dev ] || fail "dev package name"
[ "$(field "$runtime" Version)" = "$version-1" ] || fail "runtime version: $(field "$runtime" Version)"
depends=$(field "$runtime" Depends)
for dependency in libc6 libstdc++6 libssl3 libyaml-cpp0.7 libcrypt1 zlib1g adduser; do
  grep -q "\b$dependency\b" <<<"$depends" || fail "shmetrics Depends lacks $dependency: $depends"
done
grep -q 'libabsl-dev' <<<"$(field "$dev" Depends)" || fail "libshmetrics-dev Depends lacks libabsl-dev"
info=$(dpkg-deb --info "$runtime")
grep -q 'postinst' <<<"$info" || fail "no postinst in shmetrics"
grep -q 'conffiles' <<<"$info" || fail "no conffiles in shmetrics"
[ "$(dpkg-deb --ctrl-tarfile "$runtime" | tar -xO ./conffiles)" = /etc/default/shmetrics-exporter ] || fail "conffiles"

contents() { dpkg-deb --contents "$1" | awk '{print $NF}'; }
contents "$runtime" >"$tmp/runtime.list"
contents "$dev" >"$tmp/dev.list"
for path in ./usr/bin/shmetrics-exporter ./usr/bin/shmetrics ./usr/lib/systemd/system/shmetrics-exporter.service \
            ./usr/lib/tmpfiles.d/shmetrics.conf ./etc/default/shmetrics-exporter; do
  grep -qxF "$path" "$tmp/runtime.list" || fail "shmetrics lacks $path"
done
for pattern in '^\./usr/include/shmetrics/writer\.h$' '^\./usr/include/shmetrics/hot_path\.h$' \
               '^\./usr/include/shmetrics/shm/layout\.h$' '^\./usr/include/shmetrics/reader\.h$' \
               '^\./usr/lib/.*libshmetrics_writer\.a$' '^\./usr/lib/.*libshmetrics_reader\.a$' \
               '^\./usr/lib/.*libshmetrics_shm\.a$' '^\./usr/lib/(.*/)?cmake/shmetrics/shmetricsConfig\.cmake$' \
               '^\./usr/lib/(.*/)?cmake/shmetrics/shmetricsConfigVersion\.cmake$' '^\./usr/lib/.*pkgconfig/shmetrics\.pc$'; do
  grep -qE "$pattern" "$tmp/dev.list" || fail "libshmetrics-dev lacks $pattern"
done
if grep -q 'bin/' "$tmp/dev.list" || grep -q 'include/' "$tmp/runtime.list"; then fail "files in the wrong package"; fi

dpkg -x "$runtime" "$tmp/root"
dpkg -x "$dev" "$tmp/root"
out=$("$tmp/root/usr/bin/shmetrics-exporter" --version)
grep -q "^shmetrics-exporter $version " <<<"$out" || fail "exporter --version: $out"
out=$("$tmp/root/usr/bin/shmetrics" --version)
grep -q "^shmetrics $version " <<<"$out" || fail "shmetrics --version: $out"
echo "deb test: $out"
pc=$(find "$tmp/root" -name shmetrics.pc)
[ "$(PKG_CONFIG_PATH=$(dirname "$pc") pkg-config --modversion shmetrics)" = "$version" ] || fail "pkg-config --modversion"
include_dir=$(PKG_CONFIG_PATH=$(dirname "$pc") pkg-config --variable=includedir shmetrics)
[ "$(realpath "$include_dir")" = "$(realpath "$tmp/root/usr/include")" ] || fail "shmetrics.pc includedir: $include_dir"
[ -f "$include_dir/shmetrics/writer.h" ] || fail "shmetrics.pc includedir has no shmetrics/writer.h"
# Stripped for the package, the static libraries still have their symbols.
symbols=$(nm -C "$(find "$tmp/root" -name libshmetrics_writer.a)" 2>/dev/null)
grep -q 'shmetrics::Writer::Create' <<<"$symbols" ||
  fail "libshmetrics_writer.a has no shmetrics::Writer::Create"

if command -v systemd-analyze >/dev/null; then
  # The unit as installed, with ExecStart pointing into the extracted tree
  # (verify checks that the program exists).
  mkdir -p "$tmp/unit"
  sed "s|/usr/bin/shmetrics-exporter|$tmp/root/usr/bin/shmetrics-exporter|" \
    "$tmp/root/usr/lib/systemd/system/shmetrics-exporter.service" >"$tmp/unit/shmetrics-exporter.service"
  if ! SYSTEMD_LOG_LEVEL=warning systemd-analyze verify "$tmp/unit/shmetrics-exporter.service" >"$tmp/verify.log" 2>&1; then
    cat "$tmp/verify.log" >&2
    fail "systemd-analyze verify rejected the unit"
  fi
  if grep -i 'shmetrics-exporter.service' "$tmp/verify.log"; then fail "systemd-analyze verify warns about the unit"; fi
  echo "deb test: systemd-analyze verify accepts the unit"
else
  echo "deb test: systemd-analyze not available (Debian's systemd package): unit not verified"
fi
echo "deb test: ok ($(basename "$runtime"), $(basename "$dev"))"
