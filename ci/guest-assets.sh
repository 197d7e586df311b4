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
# Progress goes to stderr.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cache=${HUSK_CACHE:-$HOME/.cache/husk}
mkdir -p "$cache/initrd" "$cache/pmem"

kernel=$("$root/guest-kernel-config/build.sh" | tail -n1)

echo "guest-assets: building the static guest programs (self-test, husk-agent)" >&2
RUSTFLAGS="-C target-feature=+crt-static" cargo build --quiet --profile guest -p husk-agent \
  --target x86_64-unknown-linux-gnu --target-dir "$root/target/guest" \
  --manifest-path "$root/Cargo.toml" >&2
selftest="$root/target/guest/x86_64-unknown-linux-gnu/guest/husk-guest-selftest"
agent="$root/target/guest/x86_64-unknown-linux-gnu/guest/husk-agent"

if [ ! -x /bin/busybox ]; then
  echo "guest-assets: installing busybox-static" >&2
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq busybox-static; } >&2
fi

initrd="$cache/initrd/selftest.cpio"
"$root/rootfs/build-initramfs.sh" "$initrd" "$selftest" >/dev/null
bb_initrd="$cache/initrd/selftest-busybox.cpio"
"$root/rootfs/build-initramfs.sh" "$bb_initrd" "$selftest" /bin/busybox:/bin/busybox >/dev/null
pmem_image="$cache/pmem/selftest.erofs"
"$root/rootfs/build-pmem-image.sh" "$pmem_image" "$selftest" /bin/busybox:/bin/busybox >/dev/null
agent_initrd="$cache/initrd/agent-busybox.cpio"
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
"$root/rootfs/build-busybox-rootfs.sh" "$stage/rootfs" >/dev/null
"$root/rootfs/build-initramfs.sh" "$agent_initrd" "$agent" \
  "$stage/rootfs:/containers/busybox/rootfs" >/dev/null

agent_image="$cache/pmem/agent.erofs"
"$root/rootfs/build-pmem-image.sh" "$agent_image" "$agent" >/dev/null

echo "HUSK_KERNEL=$kernel"
echo "HUSK_INITRD=$initrd"
echo "HUSK_BUSYBOX_INITRD=$bb_initrd"
echo "HUSK_PMEM_IMAGE=$pmem_image"
echo "HUSK_AGENT_INITRD=$agent_initrd"
echo "HUSK_AGENT_IMAGE=$agent_image"
