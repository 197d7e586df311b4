#!/usr/bin/env bash
# Builds a minimal container root filesystem from Debian's busybox-static:
# /bin/busybox, a /bin/<applet> symlink for every applet, and the empty
# folders a container runtime mounts over (proc, sys, dev, tmp, etc).
#
#   build-busybox-rootfs.sh OUT_DIR
#
# OUT_DIR must not exist yet. Prints OUT_DIR.
set -euo pipefail
[ $# -eq 1 ] || { echo "usage: $0 OUT_DIR" >&2; exit 2; }
out=$1
[ ! -e "$out" ] || { echo "build-busybox-rootfs: $out already exists" >&2; exit 1; }
if [ ! -x /bin/busybox ]; then
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq busybox-static; } >&2
fi
mkdir -p "$out"/{bin,proc,sys,dev,tmp,etc,root}
install -m 0755 /bin/busybox "$out/bin/busybox"
for applet in $(/bin/busybox --list); do
  [ "$applet" = busybox ] || ln -s busybox "$out/bin/$applet"
done
echo "root:x:0:0:root:/root:/bin/sh" >"$out/etc/passwd"
echo "root:x:0:" >"$out/etc/group"
echo "$out"
