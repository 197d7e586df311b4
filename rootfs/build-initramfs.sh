#!/usr/bin/env bash
# Builds an uncompressed newc initramfs, the fallback to the pmem image (see
# rootfs/README.md). Uncompressed boots faster on software-KVM hosts, where
# the guest kernel's unpacking is emulated.
#
#   build-initramfs.sh OUT INIT [SRC:DEST ...]
#
# INIT becomes /init; each SRC:DEST copies a host file to DEST in the image
# (see stage.sh, which also makes the mount points and /dev/console).
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: $0 OUT INIT [SRC:DEST ...]" >&2; exit 2; }
out=$1 init=$2
shift 2
command -v cpio >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq cpio; } >&2
. "$(dirname "$0")/stage.sh"

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
stage_tree "$stage" "$init" init "$@"
(cd "$stage" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --quiet -R 0:0) >"$out.tmp"
mv "$out.tmp" "$out"
echo "$out"
