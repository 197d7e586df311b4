#!/usr/bin/env bash
# Builds (or reuses) everything a real-guest run needs and prints it as
# KEY=VALUE lines on stdout:
#   HUSK_KERNEL   the guest vmlinux (guest-kernel-config/build.sh, cached)
#   HUSK_INITRD   an uncompressed initramfs with the guest self-test as /init
#   HUSK_BUSYBOX_INITRD  the same plus busybox-static at /bin/busybox
#   HUSK_PMEM_IMAGE  an erofs image for virtio-pmem + DAX: the self-test as
#                 /sbin/init, busybox-static at /bin/busybox
#   HUSK_AGENT_INITRD    husk-agent as /init, with a busybox container rootfs
#                        at /containers/busybox/rootfs
#   HUSK_AGENT_IMAGE     the runtime's default guest image: an erofs pmem
#                        image with husk-agent as /sbin/init (nothing else:
#                        containers get their root over virtio-fs)
#   HUSK_BUSYBOX_OCI     a busybox OCI image archive for `ctr images import`
#                        (docker.io/husk/busybox:latest)
#   HUSK_PAUSE_OCI       the pod sandbox image for CRI (husk.local/pause:1),
#                        husk-pause as /pause
#   HUSK_PAUSE           husk-pause itself (static): the idle container of
#                        `husk bench density --via husk`
# Progress goes to stderr.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cache=${HUSK_CACHE:-$HOME/.cache/husk}
mkdir -p "$cache/images"

kernel=$("$root/guest-kernel-config/build.sh" | tail -n1)

echo "guest-assets: building the static guest programs (self-test, husk-agent, husk-pause)" >&2
RUSTFLAGS="-C target-feature=+crt-static" cargo build --quiet --profile guest -p husk-agent \
  --target x86_64-unknown-linux-gnu --target-dir "$root/target/guest" \
  --manifest-path "$root/Cargo.toml" >&2
selftest="$root/target/guest/x86_64-unknown-linux-gnu/guest/husk-guest-selftest"
agent="$root/target/guest/x86_64-unknown-linux-gnu/guest/husk-agent"
pause="$root/target/guest/x86_64-unknown-linux-gnu/guest/husk-pause"

if [ ! -x /bin/busybox ]; then
  echo "guest-assets: installing busybox-static" >&2
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq busybox-static; } >&2
fi

# Images are built once per set of inputs: each lives in a folder named
# by the hash of its builder scripts and input files, and is never
# rewritten, so checkouts and test runs that share the cache cannot
# change an image under a running guest.
# cached NAME BUILDER INIT [SRC:DEST ...]: prints the image's path.
cached() {
  local name=$1 builder=$2 init=$3
  shift 3
  local key dir src
  key=$( {
    sha256sum "$root/rootfs/$builder" "$root/rootfs/stage.sh" "$init"
    for pair in "$@"; do
      src=${pair%%:*}
      if [ -d "$src" ]; then (cd "$src" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum; find . -type l -printf '%p %l\n' | LC_ALL=C sort)
      else sha256sum "$src"; fi
      echo "${pair#*:}"
    done
  } | sha256sum | cut -c1-16)
  dir="$cache/images/$key"
  if [ ! -f "$dir/$name" ]; then
    echo "guest-assets: building $name ($key)" >&2
    mkdir -p "$dir"
    "$root/rootfs/$builder" "$dir/$name.tmp.$$" "$init" "$@" >/dev/null
    mv "$dir/$name.tmp.$$" "$dir/$name"
  fi
  echo "$dir/$name"
}

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
"$root/rootfs/build-busybox-rootfs.sh" "$stage/rootfs" >/dev/null

initrd=$(cached selftest.cpio build-initramfs.sh "$selftest")
bb_initrd=$(cached selftest-busybox.cpio build-initramfs.sh "$selftest" /bin/busybox:/bin/busybox)
pmem_image=$(cached selftest.erofs build-pmem-image.sh "$selftest" /bin/busybox:/bin/busybox)
agent_initrd=$(cached agent-busybox.cpio build-initramfs.sh "$agent" "$stage/rootfs:/containers/busybox/rootfs")
agent_image=$(cached agent.erofs build-pmem-image.sh "$agent")

# oci_image NAME KEY_INPUT... -- BUILD_COMMAND...: an OCI archive cached by
# the hash of its inputs; prints its path.
oci_image() {
  local name=$1 inputs=() key out
  shift
  while [ "$1" != -- ]; do inputs+=("$1"); shift; done
  shift
  key=$(sha256sum "${inputs[@]}" | sha256sum | cut -c1-16)
  out="$cache/images/$key/$name"
  if [ ! -s "$out" ]; then
    echo "guest-assets: building $name ($key)" >&2
    mkdir -p "$(dirname "$out")"
    "$@" "$out.tmp.$$" >/dev/null
    mv "$out.tmp.$$" "$out"
  fi
  echo "$out"
}
busybox_oci=$(oci_image busybox-oci.tar "$root/rootfs/build-busybox-oci.sh" "$root/rootfs/build-oci-image.sh" \
  "$root/rootfs/build-busybox-rootfs.sh" /bin/busybox -- "$root/rootfs/build-busybox-oci.sh")
build_pause() { "$root/rootfs/build-pause-oci.sh" "$1" "$pause"; }
pause_oci=$(oci_image pause-oci.tar "$root/rootfs/build-pause-oci.sh" "$root/rootfs/build-oci-image.sh" "$pause" \
  -- build_pause)

echo "HUSK_KERNEL=$kernel"
echo "HUSK_INITRD=$initrd"
echo "HUSK_BUSYBOX_INITRD=$bb_initrd"
echo "HUSK_PMEM_IMAGE=$pmem_image"
echo "HUSK_AGENT_INITRD=$agent_initrd"
echo "HUSK_AGENT_IMAGE=$agent_image"
echo "HUSK_BUSYBOX_OCI=$busybox_oci"
echo "HUSK_PAUSE_OCI=$pause_oci"
echo "HUSK_PAUSE=$pause"
