#!/usr/bin/env bash
# Builds the guest image for virtio-pmem: an uncompressed erofs filesystem,
# padded to a multiple of 2 MiB, that the guest mounts as its root with DAX.
#
#   build-pmem-image.sh OUT INIT [SRC:DEST ...]
#
# INIT becomes /sbin/init (the kernel's default init); each SRC:DEST copies a
# host file to DEST in the image (parent folders are created). /dev, /proc,
# /sys, /tmp, /run and /mnt exist as mount points; /dev/console and /dev/null
# exist for the moment before devtmpfs is mounted. See rootfs/README.md for
# why erofs, why uncompressed and why no inline data.
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: $0 OUT INIT [SRC:DEST ...]" >&2; exit 2; }
out=$1 init=$2
shift 2
command -v mkfs.erofs >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq erofs-utils; } >&2
[ -f "$init" ] || { echo "build-pmem-image: init $init does not exist" >&2; exit 1; }

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage"/{dev,proc,sys,tmp,run,mnt,bin,sbin}
chmod 1777 "$stage/tmp"
install -m 0755 "$init" "$stage/sbin/init"
for pair in "$@"; do
  src=${pair%%:*} dest=${pair#*:}
  [ -e "$src" ] || { echo "build-pmem-image: $src does not exist" >&2; exit 1; }
  mkdir -p "$stage/$(dirname "$dest")"
  cp -a "$src" "$stage/$dest"
done
mknod -m 600 "$stage/dev/console" c 5 1
mknod -m 666 "$stage/dev/null" c 1 3
# DAX maps only uncompressed, block-aligned file data: no compression (-z),
# no tail packing (noinline_data), 4 KiB blocks (the default on x86_64).
# -T0 and --all-root make the image reproducible.
mkfs.erofs --quiet -Enoinline_data -T0 --all-root "$out.tmp" "$stage" >&2
# virtio-pmem regions are a whole number of 2 MiB (Linux ZONE_DEVICE subsections).
truncate -s %2M "$out.tmp"
mv "$out.tmp" "$out"
echo "$out"
