#!/usr/bin/env bash
# `make run`: set up a fresh machine (packages, the guest kernel and images,
# husk itself), then run a busybox container in a husk VM with `husk run`,
# printing from inside the container. Exit status: the container's.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
say() { echo "make run: $*" >&2; }
say "installing host packages"
"$root/ci/setup.sh"
say "building the guest kernel and images (cached after the first run)"
eval "$("$root/ci/guest-assets.sh")"
export HUSK_KERNEL HUSK_AGENT_IMAGE HUSK_AGENT_INITRD
say "building husk"
cargo build --release -p husk-runtime --manifest-path "$root/Cargo.toml"
work=$(mktemp -d /tmp/husk-demo.XXXXXX)
trap 'rm -rf --one-file-system "$work"' EXIT
"$root/ci/husk-config.sh" "$work/state" >"$work/config.toml"
"$root/rootfs/busybox-bundle.sh" "$work/bundle" sh -c \
  'echo "hello from a busybox container in a husk VM"; echo "guest kernel: $(uname -r), hostname: $(hostname)"; echo "init: $(cat /proc/1/cmdline | tr "\0" " ")"' >/dev/null
say "running the container (the VM's first boot takes about a minute on software KVM)"
"$root/target/release/husk" run --config "$work/config.toml" --bundle "$work/bundle" --id husk-demo
