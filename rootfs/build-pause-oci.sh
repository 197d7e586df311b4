#!/usr/bin/env bash
# Builds the pod sandbox ("pause") image CRI starts first in every pod,
# from husk-pause, a static program that only waits (and reaps):
#
#   build-pause-oci.sh OUT.tar PAUSE_BINARY [NAME:TAG]   (default husk.local/pause:1)
#
# No registry is reachable here, so containerd's CRI plugin is configured
# with this image as its sandbox_image and it is imported into the k8s.io
# namespace. Image: /pause plus the empty directories and files runtimes
# mount over; Entrypoint ["/pause"]. See build-oci-image.sh for the archive.
set -euo pipefail
if [ $# -lt 2 ] || [ $# -gt 3 ]; then
  echo "usage: $0 OUT.tar PAUSE_BINARY [NAME:TAG]" >&2
  exit 2
fi
out=$1 pause=$2
name=${3:-husk.local/pause:1}
here=$(cd "$(dirname "$0")" && pwd)
[ -x "$pause" ] || { echo "build-pause-oci: $pause is not an executable" >&2; exit 1; }

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/rootfs"/{dev,proc,sys,etc,run,tmp}
install -m 0755 "$pause" "$stage/rootfs/pause"
: >"$stage/rootfs/etc/hostname"
: >"$stage/rootfs/etc/hosts"
: >"$stage/rootfs/etc/resolv.conf"

config='{"Entrypoint":["/pause"],"WorkingDir":"/"}'
"$here/build-oci-image.sh" "$stage/rootfs" "$out" "$name" "$config" \
  "husk rootfs/build-pause-oci.sh (husk-pause)"
