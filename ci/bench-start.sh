#!/usr/bin/env bash
# `husk bench start` against a private containerd: sets everything up (as
# `make run` does), starts containerd with husk's shim on its PATH and a
# husk config for the built assets (templates on, cached with the other
# assets), imports the busybox image, runs the bench (arguments are passed
# on, e.g. --runs 10 --vms 10) and stops containerd.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/ci/setup.sh"
eval "$("$root/ci/guest-assets.sh")"
export HUSK_KERNEL HUSK_AGENT_IMAGE HUSK_AGENT_INITRD
cargo build --release -p husk-runtime --manifest-path "$root/Cargo.toml" >&2
work=$(mktemp -d /tmp/husk-bench.XXXXXX)
mkdir -p "$work/bin"
ln -s "$root/target/release/husk" "$work/bin/containerd-shim-husk-v2"
"$root/ci/husk-config.sh" "$work/state" >"$work/husk.toml"
cleanup() { "$root/ci/containerd-env.sh" stop "$work/containerd" >&2 || true; rm -rf --one-file-system "$work"; }
trap cleanup EXIT
eval "$(HUSK_SHIM_DIR=$work/bin HUSK_CONFIG=$work/husk.toml "$root/ci/containerd-env.sh" start "$work/containerd")"
ctr --address "$CONTAINERD_ADDRESS" images import "$HUSK_BUSYBOX_OCI" >&2
"$root/target/release/husk" bench start --address "$CONTAINERD_ADDRESS" --config "$work/husk.toml" "$@"
