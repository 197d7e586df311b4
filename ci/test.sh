#!/usr/bin/env bash
# The whole test suite: host packages, guest assets (kernel build is cached),
# formatting and lints, then every test of the workspace, including the
# real-guest tests on /dev/kvm, and a smoke run of every fuzz target.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/ci/setup.sh"
eval "$("$root/ci/guest-assets.sh")"
export HUSK_KERNEL HUSK_INITRD HUSK_BUSYBOX_INITRD HUSK_PMEM_IMAGE HUSK_AGENT_INITRD HUSK_AGENT_IMAGE HUSK_BUSYBOX_OCI HUSK_PAUSE_OCI HUSK_PAUSE
cd "$root"
# The discipline first: formatting and every lint (clippy's
# undocumented_unsafe_blocks among them), as errors.
cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings
cargo clippy -p husk-devices --all-targets --features test-harness -- -D warnings
# Every target built (benches too, so they cannot rot), then every test
# binary run, two at a time: a real guest keeps one core busy.
/usr/bin/python3 "$root/ci/test-lanes.py"
# Every fuzz target builds and survives a short run.
"$root/ci/fuzz-smoke.sh" 5
