#!/usr/bin/env bash
# Builds an uncompressed newc initramfs, the fallback to the pmem image (see
# rootfs/README.md). Uncompressed boots faster on software-KVM hosts, where
# the guest kernel's unpacking is emulated.
#
#   build-initramfs.sh OUT INIT [SRC:DEST ...]
#
# INIT becomes /init; each SRC:DEST copies a host file to DEST in the image
# (parent folders are created). /dev, /proc, /sys, /tmp exist as mount points
# and /dev/console is created so the kernel can open the console for /init.
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: $0 OUT INIT [SRC:DEST ...]" >&2; exit 2; }
out=$1 init=$2
shift 2
command -v cpio >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq cpio; } >&2
[ -f "$init" ] || { echo "build-initramfs: init $init does not exist" >&2; exit 1; }

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage"/{dev,proc,sys,tmp,bin,sbin}
install -m 0755 "$init" "$stage/init"
for pair in "$@"; do
  src=${pair%%:*} dest=${pair#*:}
  [ -e "$src" ] || { echo "build-initramfs: $src does not exist" >&2; exit 1; }
  mkdir -p "$stage/$(dirname "$dest")"
  cp -a "$src" "$stage/$dest"
done
mknod -m 600 "$stage/dev/console" c 5 1
mknod -m 666 "$stage/dev/null" c 1 3
(cd "$stage" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --quiet -R 0:0) >"$out.tmp"
mv "$out.tmp" "$out"
echo "$out"
