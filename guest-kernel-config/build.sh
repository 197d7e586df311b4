#!/usr/bin/env bash
# Builds husk's guest kernel (uncompressed vmlinux with a PVH entry note) from
# Debian's linux-source package, pinned below, with husk.config applied on top of
# tinyconfig and the patches in patches/ applied in order.
#
# The result is cached outside the repo, keyed by a hash of the source version,
# this script, the fragment and the patches:  $HUSK_CACHE/kernel/<key>/vmlinux
# (HUSK_CACHE defaults to ~/.cache/husk). The path is printed on stdout as the
# last line; everything else goes to stderr.
set -euo pipefail

KERNEL_PKG=linux-source-6.12
KERNEL_PKG_VERSION=6.12.117-1~deb12u1
BUILD_DEPS=(build-essential bc bison flex libelf-dev xz-utils cpio)

here=$(cd "$(dirname "$0")" && pwd)
cache=${HUSK_CACHE:-$HOME/.cache/husk}
log() { echo "guest-kernel: $*" >&2; }

need_pkgs=()
dpkg-query -W -f='${Version}' "$KERNEL_PKG" 2>/dev/null | grep -qxF "$KERNEL_PKG_VERSION" \
  || need_pkgs+=("$KERNEL_PKG=$KERNEL_PKG_VERSION")
for p in "${BUILD_DEPS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || need_pkgs+=("$p")
done
if ((${#need_pkgs[@]})); then
  log "installing ${need_pkgs[*]}"
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}" >&2
fi

key=$( { echo "$KERNEL_PKG=$KERNEL_PKG_VERSION"; cat "$here/build.sh" "$here/husk.config";
         for p in "$here"/patches/*.patch; do if [ -e "$p" ]; then basename "$p"; cat "$p"; fi; done; } \
       | sha256sum | cut -c1-16)
out="$cache/kernel/$key"
if [ -f "$out/vmlinux" ]; then
  log "cached: $out/vmlinux"
  echo "$out/vmlinux"
  exit 0
fi

mkdir -p "$cache/kernel"
exec 9>"$cache/kernel/.lock"
flock 9
if [ -f "$out/vmlinux" ]; then echo "$out/vmlinux"; exit 0; fi

work="$cache/kernel/build-$key"
rm -rf "$cache"/kernel/build-*
trap 'rm -rf "$work"' EXIT
mkdir -p "$work"
tarball=$(ls /usr/src/"$KERNEL_PKG".tar.* | head -n1)
log "unpacking $tarball"
tar -C "$work" -xf "$tarball"
src="$work/$KERNEL_PKG"
for p in "$here"/patches/*.patch; do
  [ -e "$p" ] || continue
  log "applying $(basename "$p")"
  patch -d "$src" -p1 --quiet <"$p"
done

make -C "$src" -s ARCH=x86_64 tinyconfig >&2
"$src/scripts/kconfig/merge_config.sh" -m -O "$src" "$src/.config" "$here/husk.config" >/dev/null
make -C "$src" -s ARCH=x86_64 olddefconfig >&2

# Every symbol the fragment asks for must have stuck; name those that did not.
missing=()
while IFS= read -r line; do
  if [[ $line =~ ^(CONFIG_[A-Za-z0-9_]+)=(.*)$ ]]; then
    sym=${BASH_REMATCH[1]} want="${BASH_REMATCH[1]}=${BASH_REMATCH[2]}"
  elif [[ $line =~ ^#\ (CONFIG_[A-Za-z0-9_]+)\ is\ not\ set$ ]]; then
    sym=${BASH_REMATCH[1]} want=$line
  else
    continue
  fi
  # A symbol that is off may also be absent when its menu is off.
  if [[ $want == "# "* ]] && ! grep -qE "^(# )?$sym[= ]" "$src/.config"; then continue; fi
  grep -qxF "$want" "$src/.config" || missing+=("$want (got: $(grep -E "^(# )?$sym[= ]" "$src/.config" || echo unset))")
done <"$here/husk.config"
if ((${#missing[@]})); then
  log "these symbols did not stick after olddefconfig:"
  printf '  %s\n' "${missing[@]}" >&2
  exit 1
fi

jobs=$(nproc)
log "building vmlinux with $jobs jobs (progress: compiled objects)"
n=0
make -C "$src" ARCH=x86_64 -j"$jobs" vmlinux 2>&1 | while IFS= read -r line; do
  case $line in
    *" CC "*|*" AS "*|*" LD "*|*" AR "*) n=$((n + 1)); ((n % 50 == 0)) && log "$n objects built, last: ${line##* }";;
    *error*|*Error*) echo "$line" >&2;;
  esac
done
[ "${PIPESTATUS[0]}" -eq 0 ] || { log "kernel build failed"; exit 1; }

mkdir -p "$out"
cp "$src/vmlinux" "$out/vmlinux.tmp"
cp "$src/.config" "$out/config"
mv "$out/vmlinux.tmp" "$out/vmlinux"
rm -rf "$work"
log "built $out/vmlinux"
echo "$out/vmlinux"
