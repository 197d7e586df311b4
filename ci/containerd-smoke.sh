#!/usr/bin/env bash
# Smoke test of the containerd test infrastructure with plain runc (no husk
# needed): proves that rootfs/build-busybox-oci.sh makes an image containerd
# imports and runs, and that ci/containerd-env.sh starts a private
# containerd and cleans up after it. Husk's containerd end-to-end tests build
# on the same pieces, with `--runtime io.containerd.husk.v2` instead.
#
#   ci/containerd-smoke.sh
#
# 1. ci/setup.sh (apt packages, containerd and runc among them)
# 2. the busybox OCI image, cached under
#    ${HUSK_CACHE:-$HOME/.cache/husk}/images/<hash of its inputs>/busybox-oci.tar
# 3. a private containerd in a temporary directory, a namespace of our own
# 4. ctr images import; then, with the default runc runtime:
#    - `ctr run --rm IMAGE c1 sh -c 'echo hello; exit 7'` prints hello, exits 7
#    - `echo data | ctr run --rm IMAGE c2 head -n1` prints data (ctr 1.6 run
#      has no -i: stdin is always forwarded unless --null-io or -d)
#    - stdin EOF reaches the container: ctr calls CloseIO when its stdin hits
#      EOF, but only if that happens after the task was created (before,
#      ctr 1.6 has not set up its closer yet and the container's stdin stays
#      open forever), so the feeding side waits until the task runs
# 5. ci/containerd-env.sh stop, then checks that nothing is left mounted
#    under the directory, no shim of it runs, and the directory is gone.
# Ends with "containerd-smoke: N passed, N failed"; progress on stderr.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cache=${HUSK_CACHE:-$HOME/.cache/husk}
image=docker.io/husk/busybox:latest
run_timeout=60
passed=0
t0=${EPOCHREALTIME/./}
elapsed() { local us=$((${EPOCHREALTIME/./} - t0)); printf '%d.%03ds' $((us / 1000000)) $((us / 1000 % 1000)); }

say() { echo "containerd-smoke: $*" >&2; }
summary() { echo "containerd-smoke: $passed passed, $1 failed"; }
fail() {
  say "FAIL: $*"
  summary 1
  exit 1
}
pass() {
  passed=$((passed + 1))
  say "ok: $* ($(elapsed))"
}

say "installing host packages (ci/setup.sh)"
"$root/ci/setup.sh" >&2
for tool in ctr containerd runc; do
  command -v "$tool" >/dev/null || fail "$tool is missing after ci/setup.sh"
done

# The image only changes when one of its inputs does.
key=$(
  {
    sha256sum "$root/rootfs/build-busybox-oci.sh" "$root/rootfs/build-busybox-rootfs.sh" /bin/busybox | cut -d' ' -f1
    echo "$image ${SOURCE_DATE_EPOCH:-0}"
    python3 -c 'import sys; print(sys.version_info[:2])'
  } | sha256sum | cut -c1-16
)
tar=$cache/images/$key/busybox-oci.tar
if [ -s "$tar" ]; then
  say "reusing $tar"
else
  mkdir -p "$(dirname "$tar")"
  "$root/rootfs/build-busybox-oci.sh" "$tar" "$image" >/dev/null || fail "building the image failed"
fi
pass "image $tar"

# A short path: unix socket paths are limited to 107 bytes.
work=$(mktemp -d /tmp/husk-smoke.XXXXXX)
ctrd=$work/containerd
cleanup() {
  if [ -d "$ctrd" ]; then
    "$root/ci/containerd-env.sh" stop "$ctrd" || true
  fi
  rm -rf --one-file-system "$work"
}
trap cleanup EXIT

eval "$("$root/ci/containerd-env.sh" start "$ctrd")"
export CONTAINERD_ADDRESS
# Our own namespace: ctr's default cgroup (/NS/ID) and runc's state
# (/run/containerd/runc/NS/ID) cannot collide with another test's.
export CONTAINERD_NAMESPACE=husk-smoke-$$

ctr images import "$tar" >&2 || fail "ctr images import $tar failed"
ctr images ls -q | grep -qxF "$image" || fail "import did not create $image (have: $(ctr images ls -q | tr '\n' ' '))"
pass "imported $image"

rc=0
out=$(timeout -k 5 "$run_timeout" ctr run --rm "$image" c1 sh -c 'echo hello; exit 7') || rc=$?
[ "$out" = hello ] || fail "c1 printed '$out', expected 'hello'"
[ "$rc" = 7 ] || fail "c1 exited $rc, expected 7 (124/137: timed out)"
pass "c1: printed hello, exit status 7 propagated"

rc=0
out=$(echo data | timeout -k 5 "$run_timeout" ctr run --rm "$image" c2 head -n1) || rc=$?
[ "$rc" = 0 ] || fail "c2 exited $rc (124/137: timed out)"
[ "$out" = data ] || fail "c2 printed '$out', expected 'data'"
pass "c2: stdin forwarded (echo data | head -n1)"

# Keeps ctr's stdin open until task $1 runs (bounded), then closes it.
feed_until_running() {
  local id=$1 deadline=$((SECONDS + 30))
  until ctr tasks ls 2>/dev/null | awk -v id="$id" '$1 == id && $3 == "RUNNING" { found = 1 } END { exit !found }'; do
    ((SECONDS < deadline)) || { say "task $id never became RUNNING"; return 0; }
    sleep 0.05
  done
}
rc=0
out=$({ printf 'line1\nline2\n'; feed_until_running c3; } | timeout -k 5 "$run_timeout" ctr run --rm "$image" c3 cat) || rc=$?
[ "$rc" = 0 ] || fail "c3 exited $rc (124/137: stdin EOF never reached the container)"
[ "$out" = $'line1\nline2' ] || fail "c3 printed '$out', expected line1 and line2"
pass "c3: stdin EOF closed the container's stdin (CloseIO)"

"$root/ci/containerd-env.sh" stop "$ctrd" || fail "ci/containerd-env.sh stop failed"
left=$(awk -v d="$work" '$5 == d || index($5, d "/") == 1 { print $5 }' /proc/self/mountinfo)
[ -z "$left" ] || fail "still mounted after stop: $left"
# Any live process with our socket as an argument (a shim's -address).
shims=
for f in /proc/[0-9]*/cmdline; do
  mapfile -d '' argv <"$f" 2>/dev/null || continue
  for a in "${argv[@]}"; do
    [ "$a" = "$CONTAINERD_ADDRESS" ] && { shims+=" ${f#/proc/}"; break; }
  done
done
[ -z "$shims" ] || fail "processes of this containerd still running after stop: $shims"
[ ! -e "$ctrd" ] || fail "$ctrd still exists after stop"
pass "stopped: nothing mounted, no shim left, directory removed"

say "done in $(elapsed)"
summary 0
