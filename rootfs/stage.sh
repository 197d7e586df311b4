# Sourced by the image builders: fills a staging tree the same way for both.
#
#   stage_tree STAGE INIT INIT_DEST [SRC:DEST ...]
#
# Creates the usual mount points, installs INIT at INIT_DEST, copies each
# SRC:DEST host file to DEST (parent folders created), and creates
# /dev/console and /dev/null for the moment before devtmpfs is mounted.
stage_tree() {
  local stage=$1 init=$2 init_dest=$3 pair src dest
  shift 3
  [ -f "$init" ] || { echo "rootfs: init $init does not exist" >&2; return 1; }
  mkdir -p "$stage"/{dev,proc,sys,tmp,run,mnt,bin,sbin}
  chmod 1777 "$stage/tmp"
  install -m 0755 "$init" "$stage/$init_dest"
  for pair in "$@"; do
    src=${pair%%:*} dest=${pair#*:}
    [ -e "$src" ] || { echo "rootfs: $src does not exist" >&2; return 1; }
    mkdir -p "$stage/$(dirname "$dest")"
    cp -a "$src" "$stage/$dest"
  done
  mknod -m 600 "$stage/dev/console" c 5 1
  mknod -m 666 "$stage/dev/null" c 1 3
}
