#!/usr/bin/env bash
# The whole test suite: host packages, guest assets (kernel build is cached),
# then every test of the workspace, including the real-guest tests on /dev/kvm.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/ci/setup.sh"
eval "$("$root/ci/guest-assets.sh")"
export HUSK_KERNEL HUSK_INITRD HUSK_BUSYBOX_INITRD HUSK_PMEM_IMAGE HUSK_AGENT_INITRD HUSK_AGENT_IMAGE HUSK_BUSYBOX_OCI HUSK_PAUSE_OCI HUSK_PAUSE
cd "$root"
cargo build --release --workspace
# Benches that need the device harness: compiled so they cannot rot.
cargo bench --no-run -p husk-devices --features test-harness
cargo test --release --workspace -- --test-threads=2
