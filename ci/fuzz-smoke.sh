#!/usr/bin/env bash
# Builds every cargo-fuzz target in fuzz/ (so none can rot) and runs each
# for a short smoke run from its seed corpus (fuzz/seeds/<target>, when
# there is one) plus whatever fuzz/corpus/<target> holds. Deep runs are by
# hand (fuzz/README.md). Needs Rust nightly (libFuzzer's instrumentation);
# installs cargo-fuzz from crates.io when it is missing. Builds in dev mode:
# cargo fuzz's release mode compiles with one codegen unit, minutes slower,
# and a 5-second smoke run needs no speed (deep runs use release, as the
# README says).
#
#   ci/fuzz-smoke.sh [SECONDS_PER_TARGET]     (default 10)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
secs=${1:-10}
if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  echo "fuzz-smoke: needs the Rust nightly toolchain for cargo fuzz (rustup toolchain install nightly)" >&2
  exit 1
fi
if ! command -v cargo-fuzz >/dev/null; then
  echo "fuzz-smoke: installing cargo-fuzz" >&2
  cargo install --locked cargo-fuzz >&2
fi
cd "$root/fuzz"
echo "fuzz-smoke: building every target" >&2
cargo +nightly fuzz build --dev >&2
for t in $(cargo +nightly fuzz list); do
  corpus=("corpus/$t")
  mkdir -p "corpus/$t"
  [ -d "seeds/$t" ] && corpus+=("seeds/$t")
  echo "fuzz-smoke: $t for ${secs}s" >&2
  cargo +nightly fuzz run --dev "$t" "${corpus[@]}" -- -max_total_time="$secs" -print_final_stats=1 2>&1 |
    grep -E "^(stat::number_of_executed_units|stat::new_units_added|INFO: Done)|ERROR|panicked" >&2 || {
    echo "fuzz-smoke: $t failed (its artifacts are in fuzz/artifacts/$t)" >&2
    exit 1
  }
done
echo "fuzz-smoke: every target built and ran" >&2
