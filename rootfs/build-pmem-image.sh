#!/usr/bin/env bash
# Builds the guest image for virtio-pmem: an uncompressed erofs filesystem,
# padded to a multiple of 2 MiB, that the guest mounts as its root with DAX.
#
#   build-pmem-image.sh OUT INIT [SRC:DEST ...]
#
# INIT becomes /sbin/init (the kernel's default init); each SRC:DEST copies a
# host file to DEST in the image (see stage.sh). See rootfs/README.md for why
# erofs, why uncompressed and why no inline data.
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: $0 OUT INIT [SRC:DEST ...]" >&2; exit 2; }
out=$1 init=$2
shift 2
command -v mkfs.erofs >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq erofs-utils; } >&2
. "$(dirname "$0")/stage.sh"

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
stage_tree "$stage" "$init" sbin/init "$@"
# DAX maps only uncompressed, block-aligned file data: no compression (-z),
# no tail packing (noinline_data), 4 KiB blocks (the default on x86_64).
# --all-root: the guest sees root-owned files; -T0: no build-time timestamps.
mkfs.erofs --quiet -Enoinline_data -T0 --all-root "$out.tmp" "$stage" >&2
# virtio-pmem regions are a whole number of 2 MiB (Linux ZONE_DEVICE subsections).
truncate -s %2M "$out.tmp"
mv "$out.tmp" "$out"
echo "$out"
