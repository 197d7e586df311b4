#!/usr/bin/env bash
# Installs the host packages husk's build and tests need (idempotent).
# (python3 runs ci/test-lanes.py.)
set -euo pipefail
pkgs=(build-essential bc bison flex libelf-dev xz-utils cpio busybox-static erofs-utils containerd
  protobuf-compiler containernetworking-plugins iproute2 fonts-dejavu-core python3)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi
command -v cargo >/dev/null || { echo "setup: cargo is required (Rust stable)" >&2; exit 1; }
