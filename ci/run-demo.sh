#!/usr/bin/env bash
# `make run`: set everything up and boot the demo guest (the self-test as
# /init) with 2 vCPUs and 256 MiB, streaming its console.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/ci/setup.sh"
eval "$("$root/ci/guest-assets.sh")"
cd "$root"
cargo build --release -p husk-runtime
exec target/release/husk vm --kernel "$HUSK_KERNEL" --initrd "$HUSK_INITRD" --mem 256M --cpus 2
