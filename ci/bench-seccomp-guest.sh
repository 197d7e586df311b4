#!/usr/bin/env bash
# What seccomp costs a real guest's device work: `husk run` of a busybox
# container that creates files, looks up missing ones and writes a file on
# its rootfs (virtio-fs), then writes to its stdout (carried by the agent
# over vsock), timed inside the guest, with runtime.seccomp off and on,
# alternating, and the medians and their ratio (on / off).
#
#   ci/bench-seccomp-guest.sh [RUNS] [FILES] [MIB]     (default 3 200 4)
#
# Sets everything up as `make run` does. A run takes about 2 minutes here with
# the defaults: each guest round trip is mostly emulated guest kernel work.
set -euo pipefail
runs=${1:-3} files=${2:-200} mib=${3:-4}
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/ci/setup.sh" >&2
eval "$("$root/ci/guest-assets.sh")"
export HUSK_KERNEL HUSK_AGENT_IMAGE HUSK_AGENT_INITRD
cargo build --release -p husk-runtime --manifest-path "$root/Cargo.toml" >&2
work=$(mktemp -d /tmp/husk-bench-seccomp.XXXXXX)
trap 'rm -rf --one-file-system "$work"' EXIT
"$root/ci/husk-config.sh" "$work/state" >"$work/on.toml"
sed 's/^\[runtime\]$/[runtime]\nseccomp = false/' "$work/on.toml" >"$work/off.toml"
grep -q '^seccomp = false' "$work/off.toml" || { echo "no [runtime] table to turn seccomp off in" >&2; exit 1; }
"$root/rootfs/busybox-bundle.sh" "$work/bundle" sh /bench.sh >/dev/null
# Milliseconds from /proc/uptime (busybox's date has no %N).
cat >"$work/bundle/rootfs/bench.sh" <<EOF
ms() { read up _ < /proc/uptime; echo \$(( \${up%.*} * 1000 + 1\${up#*.}0 - 1000 )); }
rm -rf /w; mkdir /w
t0=\$(ms)
i=0; while [ \$i -lt $files ]; do : > /w/f\$i; i=\$((i+1)); done
t1=\$(ms)
i=0; while [ \$i -lt $files ]; do [ -e /w/missing\$i ]; i=\$((i+1)); done
t2=\$(ms)
dd if=/dev/zero of=/w/big bs=1M count=$mib 2>/dev/null
t3=\$(ms)
dd if=/dev/zero bs=1M count=$mib 2>/dev/null | tr '\\0' x
t4=\$(ms)
rm -rf /w
echo
echo "RESULT \$((t1-t0)) \$((t2-t1)) \$((t3-t2)) \$((t4-t3))"
EOF
echo "bench seccomp-guest: $runs runs each, $files files, $mib MiB; host: $(nproc) CPUs, $(uname -r)" >&2
for r in $(seq "$runs"); do
  for mode in off on; do
    line=$("$root/target/release/husk" run --config "$work/$mode.toml" --bundle "$work/bundle" \
      --id "seccomp-$mode-$r" 2>/dev/null | grep '^RESULT') || { echo "run $r ($mode) failed" >&2; exit 1; }
    echo "$mode ${line#RESULT }" | tee -a "$work/results" >&2
  done
done
awk -v files="$files" -v mib="$mib" '
  # A line: mode, then one figure per measure; v[mode, measure, run].
  { n[$1]++; for (f = 2; f <= NF; f++) v[$1, f - 1, n[$1]] = $f }
  function median(mode, f,   k, i, j, t, a) {
    k = n[mode]
    for (i = 1; i <= k; i++) a[i] = v[mode, f, i]
    for (i = 1; i <= k; i++) for (j = i + 1; j <= k; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
    return k % 2 ? a[(k + 1) / 2] : (a[k / 2] + a[k / 2 + 1]) / 2
  }
  END {
    printf "%-22s %10s %10s %8s\n", "median (ms)", "off", "on", "on/off"
    m = split("create " files " files|look up " files " missing|write " mib " MiB|stdout " mib " MiB", name, "|")
    for (f = 1; f <= m; f++) {
      off = median("off", f); on = median("on", f)
      printf "%-22s %10d %10d %8.3f\n", name[f], off, on, on / off
    }
  }' "$work/results"
