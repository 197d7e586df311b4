#!/usr/bin/env bash
# Builds a one-layer OCI image archive of Debian's busybox-static (through
# build-oci-image.sh, which says how the archive is made and named):
#
#   build-busybox-oci.sh OUT.tar [NAME:TAG]     (default docker.io/husk/busybox:latest)
#   ctr images import OUT.tar                    -> image NAME:TAG (normalised)
#
# The root filesystem comes from build-busybox-rootfs.sh (/bin/busybox, a
# /bin/<applet> symlink per applet, /etc/passwd and /etc/group with root),
# plus what runc and a VM runtime mount over or bind into: empty /proc, /sys,
# /dev, /run, /tmp (1777) and empty /etc/hostname, /etc/hosts,
# /etc/resolv.conf. Image config: Cmd ["sh"], Env PATH, WorkingDir /.
set -euo pipefail
if [ $# -lt 1 ] || [ $# -gt 2 ]; then
  echo "usage: $0 OUT.tar [NAME:TAG]" >&2
  exit 2
fi
out=$1
name=${2:-docker.io/husk/busybox:latest}
here=$(cd "$(dirname "$0")" && pwd)

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
echo "build-busybox-oci: building the busybox rootfs" >&2
"$here/build-busybox-rootfs.sh" "$stage/rootfs" >/dev/null
mkdir -p "$stage/rootfs"/{run,tmp,proc,sys,dev}
: >"$stage/rootfs/etc/hostname"
: >"$stage/rootfs/etc/hosts"
: >"$stage/rootfs/etc/resolv.conf"

config='{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"Cmd":["sh"],"WorkingDir":"/"}'
"$here/build-oci-image.sh" "$stage/rootfs" "$out" "$name" "$config" \
  "husk rootfs/build-busybox-oci.sh (Debian busybox-static)"
