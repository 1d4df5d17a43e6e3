#!/usr/bin/env bash
# Installs the Debian packages shmetrics needs, when any is missing.
# As root it runs apt-get; otherwise it prints the apt-get line and fails.
set -euo pipefail
packages=(
  g++ cmake ninja-build pkg-config
  libboost-dev libabsl-dev libcli11-dev prometheus-cpp-dev
  doctest-dev libbenchmark-dev zlib1g-dev clang-14 libfuzzer-14-dev
  python3 python3-prometheus-client python3-yaml python3-protobuf protobuf-compiler prometheus curl bsdutils
  dpkg-dev file systemd libyaml-cpp-dev libssl-dev libcrypt-dev openssl
)
missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
[ ${#missing[@]} -eq 0 ] && exit 0
line="apt-get update && apt-get install -y --no-install-recommends ${missing[*]}"
if [ "$(id -u)" -ne 0 ]; then
  echo "shmetrics needs these Debian packages; as root, run:" >&2
  echo "  $line" >&2
  exit 1
fi
echo "installing: ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# policy-rc.d keeps the prometheus package from starting a server of its own.
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT
fi
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
