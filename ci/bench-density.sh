#!/usr/bin/env bash
# `husk bench density` with everything set up, as `make run` does: host
# packages, the guest assets, a release build and a husk config for them
# (templates cached with the assets); with `--via containerd`, also a
# private containerd with husk's shim on its PATH and the pause image
# imported. Arguments go to the bench, e.g.
#
#   ci/bench-density.sh --count 20 --concurrency 4 [--mode cold] [--image initrd] [--via containerd]
#
# containerd is started without HUSK_CONFIG in its environment, so each
# shim takes the config the bench names (`ctr run --runtime-config-path`:
# the bench's sizes and state directory).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/ci/setup.sh"
eval "$("$root/ci/guest-assets.sh")"
export HUSK_KERNEL HUSK_AGENT_IMAGE HUSK_AGENT_INITRD
cargo build --release -p husk-runtime --manifest-path "$root/Cargo.toml" >&2
work=$(mktemp -d /tmp/husk-bench-density.XXXXXX)
"$root/ci/husk-config.sh" >"$work/husk.toml"
args=("$@")
via=husk
for ((i = 0; i < ${#args[@]}; i++)); do
  case ${args[i]} in
    --via) via=${args[i + 1]:-husk} ;;
    --via=*) via=${args[i]#--via=} ;;
  esac
done
cleanup() {
  if [ "$via" = containerd ]; then "$root/ci/containerd-env.sh" stop "$work/containerd" >&2 || true; fi
  rm -rf --one-file-system "$work"
}
trap cleanup EXIT
if [ "$via" = containerd ]; then
  mkdir -p "$work/bin"
  ln -s "$root/target/release/husk" "$work/bin/containerd-shim-husk-v2"
  # Its own session: a Ctrl-C at the terminal is the bench's to handle
  # (it stops the pods through containerd), not containerd's.
  eval "$(env -u HUSK_CONFIG HUSK_SHIM_DIR="$work/bin" setsid --wait "$root/ci/containerd-env.sh" start "$work/containerd")"
  ctr --address "$CONTAINERD_ADDRESS" images import "$HUSK_PAUSE_OCI" >&2
  args+=(--address "$CONTAINERD_ADDRESS")
fi
HUSK_PAUSE=$HUSK_PAUSE "$root/target/release/husk" bench density --config "$work/husk.toml" "${args[@]}"
