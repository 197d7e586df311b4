#!/usr/bin/env bash
# Starts and stops a private containerd (Debian's /usr/bin/containerd, 1.6)
# for end-to-end tests, so tests never touch a system containerd and several
# can run side by side, each in its own directory:
#
#   ci/containerd-env.sh start DIR   -> prints CONTAINERD_ADDRESS=DIR/containerd.sock
#   ci/containerd-env.sh stop DIR    -> stops it, kills its leftover shims,
#                                       unmounts what is left under DIR, removes DIR
#
# Use: eval "$(ci/containerd-env.sh start "$d")"; ctr --address "$CONTAINERD_ADDRESS" ...
# (ctr also reads CONTAINERD_ADDRESS from the environment once exported.)
#
# Layout of DIR: config.toml (generated), containerd.sock (+ .ttrpc),
# containerd.log, containerd.pid, root/ (content, metadata, snapshots),
# state/ (bundles: state/io.containerd.runtime.v2.task/<ns>/<id>), tmp/
# (containerd's temporary mounts during unpack), opt/.
#
# Environment:
#   HUSK_SHIM_DIR        directory put first on containerd's PATH, so that a
#                        containerd-shim-husk-v2 placed there is found for
#                        `--runtime io.containerd.husk.v2`
#   HUSK_CONTAINERD_CRI  1 = also enable the CRI plugin (off by default; see
#                        the CRI section of the generated config)
#   HUSK_CRI_SANDBOX_IMAGE  CRI's pause image (must be imported: no network)
#   HUSK_CNI_SUBNET      the pod network of the CRI instance (default: a /24
#                        of 198.18.0.0/15 picked from DIR's hash); pods get
#                        addresses from it on a bridge named husk<hash of DIR>
#   CONTAINERD_LOG_LEVEL debug|info|warn (default info)
#   CONTAINERD_START_TIMEOUT / CONTAINERD_STOP_TIMEOUT  seconds (30 / 10)
#
# Nothing is shared with another instance except what containerd 1.6 and
# its shims hard-code under /run/containerd, none of which collides:
#   /run/containerd/s/<sha256(address/ns/id)>  shim sockets (the hash includes
#                        this instance's socket path)
#   /run/containerd/fifo/<random>/  ctr's stdio FIFOs (`ctr run --fifo-dir`)
# Two things CAN collide between instances that use the same namespace and
# container id at the same time, so parallel tests should use their own
# namespace (ctr -n NAME) or unique container ids:
#   /run/containerd/runc/<ns>/<id>  runc's state (runc shim default; `ctr run
#                        --runc-root DIR/runc` moves it; the CRI runc runtime
#                        below is configured with Root = DIR/runc)
#   cgroups /<ns>/<id>   ctr's default cgroup path (`ctr run --cgroup`)
# With CRI, pods are networked by Debian's CNI plugins (bridge, host-local,
# loopback from /usr/lib/cni, linked into DIR/cni/bin): one bridge per
# instance in the host's network namespace, named after DIR's hash, with the
# subnet's first address as gateway; no masquerading, no port mappings, so
# pod traffic stays between the host and the pods. `stop` deletes the bridge.
# The debug and metrics listeners are disabled and the stream server (CRI
# only) binds an ephemeral port, so there are no fixed TCP ports either.
#
# Cgroup v1 hybrid without systemd: runc's default cgroupfs driver is used
# (SystemdCgroup = false). oom_score = 0: containerd leaves its own score
# alone (a negative one needs CAP_SYS_RESOURCE, which this host lacks).
set -euo pipefail
usage() { echo "usage: $0 start|stop DIR" >&2; exit 2; }
[ $# -eq 2 ] || usage
cmd=$1
dir=$(realpath -m -- "$2")
# DIR goes verbatim into TOML strings and is matched in command lines.
[[ $dir =~ ^[A-Za-z0-9._/+-]+$ ]] || { echo "containerd-env: DIR must be made of [A-Za-z0-9._/+-]: $dir" >&2; exit 2; }
sock=$dir/containerd.sock
pidfile=$dir/containerd.pid
log=$dir/containerd.log
containerd_bin=/usr/bin/containerd

say() { echo "containerd-env: $*" >&2; }
die() { say "error: $*"; exit 1; }
log_tail() {
  if [ -f "$log" ]; then
    say "last lines of $log:"
    tail -n 30 "$log" >&2
  fi
}

# A process counts as gone once it has exited, even if nobody reaped it yet.
alive() {
  local st
  st=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
  [ -n "$st" ] && [ "$st" != Z ] && [ "$st" != X ]
}

# Polls `alive` for up to $2 seconds; true when the process went away.
wait_gone() {
  local pid=$1 deadline=$((SECONDS + $2))
  while alive "$pid"; do
    ((SECONDS < deadline)) || return 1
    sleep 0.1
  done
}

# The pid in DIR/containerd.pid, if that process is still our containerd
# (checked through its command line, so a recycled pid is never signalled).
our_pid() {
  local pid
  pid=$(cat "$pidfile" 2>/dev/null) || return 1
  [[ $pid =~ ^[0-9]+$ ]] && alive "$pid" || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "--config $dir/config.toml " || return 1
  echo "$pid"
}

ctr_() { ctr --address "$sock" --connect-timeout 2s "$@"; }

write_config() {
  local cri=${HUSK_CONTAINERD_CRI:-0} disabled required
  disabled='"io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"'
  required='"io.containerd.snapshotter.v1.overlayfs"'
  if [ "$cri" = 1 ]; then
    required+=', "io.containerd.grpc.v1.cri"'
  else
    disabled+=', "io.containerd.grpc.v1.cri"'
  fi
  cat >"$dir/config.toml" <<EOF
# Generated by ci/containerd-env.sh; containerd 1.6 reads config version 2.
version = 2
root = "$dir/root"
state = "$dir/state"
temp = "$dir/tmp"
plugin_dir = ""
oom_score = 0
imports = []
# Snapshotters this host cannot use (and that only add noise to the log);
# the CRI plugin too unless HUSK_CONTAINERD_CRI=1.
disabled_plugins = [$disabled]
# Fail at start, with the reason in containerd.log, rather than at first use.
required_plugins = [$required]

[grpc]
  address = "$sock"
  uid = 0
  gid = 0

# Defaults to the grpc address + ".ttrpc"; spelled out so it is visibly in DIR.
[ttrpc]
  address = "$sock.ttrpc"
  uid = 0
  gid = 0

# No debug socket (empty address), no metrics listener (empty address).
[debug]
  address = ""
  level = "${CONTAINERD_LOG_LEVEL:-info}"

[metrics]
  address = ""

[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = "$dir/opt"

  [plugins."io.containerd.snapshotter.v1.overlayfs"]
    root_path = ""

EOF
  # The CRI plugin, written always but only loaded when HUSK_CONTAINERD_CRI=1
  # (otherwise it is in disabled_plugins, and containerd ignores its section).
  cat >>"$dir/config.toml" <<EOF
  [plugins."io.containerd.grpc.v1.cri"]
    # The host lacks CAP_SYS_RESOURCE: never ask for a lower oom_score_adj
    # than containerd's own.
    restrict_oom_score_adj = true
    # Ephemeral port on loopback: instances cannot collide.
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"
    # Network namespaces under DIR/state rather than /var/run/netns.
    netns_mounts_under_state_dir = true
    # No registry here: import this image before creating a sandbox.
    sandbox_image = "${HUSK_CRI_SANDBOX_IMAGE:-registry.k8s.io/pause:3.6}"
    systemd_cgroup = false

    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "$dir/cni/bin"
      conf_dir = "$dir/cni/net.d"

    [plugins."io.containerd.grpc.v1.cri".containerd]
      snapshotter = "overlayfs"
      default_runtime_name = "runc"

      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
          SystemdCgroup = false
          Root = "$dir/runc"

      # containerd-shim-husk-v2, found on PATH (HUSK_SHIM_DIR first).
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.husk]
        runtime_type = "io.containerd.husk.v2"
EOF
}

# The instance's CNI bridge: "husk" + 8 hex digits of DIR's hash (15 max).
cni_bridge() { echo "husk$(printf %s "$dir" | sha256sum | cut -c1-8)"; }

# The instance's pod subnet: HUSK_CNI_SUBNET, or a /24 of 198.18.0.0/15.
cni_subnet() {
  if [ -n "${HUSK_CNI_SUBNET:-}" ]; then echo "$HUSK_CNI_SUBNET"; return; fi
  local h
  h=$((16#$(printf %s "$dir" | sha256sum | cut -c1-4) % 512))
  echo "198.$((18 + h / 256)).$((h % 256)).0/24"
}

write_cni_config() {
  local p
  [ -d /usr/lib/cni ] || die "Debian's CNI plugins are missing (apt-get install containernetworking-plugins)"
  mkdir -p "$dir/cni/bin" "$dir/cni/net.d" "$dir/cni/ipam"
  for p in bridge host-local loopback; do
    [ -x "/usr/lib/cni/$p" ] || die "/usr/lib/cni/$p is missing"
    ln -sf "/usr/lib/cni/$p" "$dir/cni/bin/$p"
  done
  cat >"$dir/cni/net.d/10-husk.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "husk-test",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$(cni_bridge)",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$dir/cni/ipam",
        "ranges": [[{"subnet": "$(cni_subnet)"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "loopback"}
  ]
}
EOF
}

start() {
  local pid path deadline
  if pid=$(our_pid); then
    die "a containerd (pid $pid) is already running for $dir"
  fi
  if [ ! -x "$containerd_bin" ] || ! command -v ctr >/dev/null; then
    say "installing containerd"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq containerd; } >&2
  fi
  # sun_path holds 107 bytes plus NUL; the ttrpc socket is the longest path.
  ((${#sock} + 6 <= 107)) || die "$sock.ttrpc is longer than a unix socket path may be (107 bytes)"
  # containerd's PATH: HUSK_SHIM_DIR, ours, then the standard directories
  # (containerd-shim-runc-v2 is in /usr/bin, runc in /usr/sbin).
  path=$PATH
  for d in /usr/local/sbin /usr/local/bin /usr/sbin /usr/bin /sbin /bin; do
    [[ :$path: == *:$d:* ]] || path+=:$d
  done
  if [ -n "${HUSK_SHIM_DIR:-}" ]; then
    [ -d "$HUSK_SHIM_DIR" ] || die "HUSK_SHIM_DIR=$HUSK_SHIM_DIR is not a directory"
    path=$(realpath -- "$HUSK_SHIM_DIR"):$path
  fi
  mkdir -p "$dir"/{root,state,tmp,opt}
  rm -f "$sock" "$sock.ttrpc" "$pidfile"
  write_config
  if [ "${HUSK_CONTAINERD_CRI:-0}" = 1 ]; then write_cni_config; fi
  say "starting containerd in $dir (log $log)"
  # stdin/stdout/stderr away from the caller, so $(...) and test harnesses
  # that wait for EOF on our output do not wait for containerd.
  PATH=$path "$containerd_bin" --config "$dir/config.toml" </dev/null >>"$log" 2>&1 &
  pid=$!
  echo "$pid" >"$pidfile"
  deadline=$((SECONDS + ${CONTAINERD_START_TIMEOUT:-30}))
  until ctr_ --timeout 2s version >/dev/null 2>&1; do
    if ! alive "$pid"; then
      log_tail
      die "containerd exited during startup (see $log)"
    fi
    if ((SECONDS >= deadline)); then
      log_tail
      kill -KILL "$pid" 2>/dev/null || true
      die "containerd did not answer on $sock within ${CONTAINERD_START_TIMEOUT:-30}s"
    fi
    sleep 0.1
  done
  say "containerd (pid $pid) is ready"
  echo "CONTAINERD_ADDRESS=$sock"
}

# Kills and deletes every task this containerd still has, through containerd,
# so runc removes its state and cgroups; bounded, best effort.
delete_tasks() {
  local ns id
  for ns in $(ctr_ --timeout 5s namespaces ls -q 2>/dev/null); do
    for id in $(ctr_ --timeout 5s -n "$ns" tasks ls -q 2>/dev/null); do
      say "killing leftover task $ns/$id"
      ctr_ --timeout 5s -n "$ns" tasks kill -a -s SIGKILL "$id" >/dev/null 2>&1 || true
      ctr_ --timeout 10s -n "$ns" tasks rm -f "$id" >/dev/null 2>&1 ||
        say "could not delete task $ns/$id (its shim is killed below)"
    done
  done
}

# Kills shims still running for this containerd (any containerd-shim-*
# started with `-address DIR/containerd.sock`) and everything below them,
# removes their sockets in /run/containerd/s, and, for runc shims, runc's
# state of that container; then unmounts everything mounted under DIR.
cleanup_processes_and_mounts() {
  python3 - "$sock" "$dir" <<'PY'
import os, signal, subprocess, sys, time

sock, root = sys.argv[1], sys.argv[2]

def say(msg):
    print(f"containerd-env: {msg}", file=sys.stderr)

def procs():
    out = {}
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open(f"/proc/{p}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")[:-1]
            with open(f"/proc/{p}/stat") as f:
                st = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[int(p)] = ([a.decode(errors="replace") for a in argv], st[0], int(st[1]))
    return out

def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False

def flag(argv, name):
    for i, a in enumerate(argv[:-1]):
        if a in (name, "-" + name):
            return argv[i + 1]
    return None

def unix_sockets(pid):
    """Paths of the unix sockets pid has open under /run/containerd/s."""
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    except OSError:
        return set()
    paths = set()
    with open("/proc/net/unix") as f:
        next(f)
        for line in f:
            parts = line.split()
            if len(parts) >= 8 and parts[6] in inodes and parts[7].startswith("/run/containerd/s/"):
                paths.add(parts[7])
    return paths

table = procs()
shims = {pid: argv for pid, (argv, st, _) in table.items()
         if st not in ("Z", "X") and argv and os.path.basename(argv[0]).startswith("containerd-shim")
         and flag(argv, "-address") == sock}
children = {}
for pid, (_, _, ppid) in table.items():
    children.setdefault(ppid, []).append(pid)

def descendants(pid):
    out, todo = [], list(children.get(pid, []))
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out

sockets = set()
for pid, argv in sorted(shims.items()):
    ns, cid = flag(argv, "-namespace"), flag(argv, "-id")
    say(f"killing leftover shim {pid} ({os.path.basename(argv[0])} {ns}/{cid}) and its processes")
    sockets |= unix_sockets(pid)
    for d in descendants(pid):
        try:
            os.kill(d, signal.SIGKILL)
        except ProcessLookupError:
            pass
    runc_root = f"/run/containerd/runc/{ns}"
    if os.path.basename(argv[0]) == "containerd-shim-runc-v2" and ns and cid and os.path.isdir(f"{runc_root}/{cid}"):
        subprocess.run(["runc", "--root", runc_root, "delete", "--force", cid],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=10, check=False)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
deadline = time.monotonic() + 5
while any(alive(p) for p in shims) and time.monotonic() < deadline:
    time.sleep(0.05)
for p in shims:
    if alive(p):
        say(f"warning: shim {p} is still alive after SIGKILL")
for s in sockets:
    try:
        os.unlink(s)
    except OSError:
        pass

def mounts_under(root):
    res = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mp = line.split()[4]
            mp = mp.encode().decode("unicode_escape").encode("latin-1").decode(errors="replace")
            if mp == root or mp.startswith(root + "/"):
                res.append(mp)
    return res

for attempt in range(5):
    mps = mounts_under(root)
    if not mps:
        break
    for mp in sorted(set(mps), key=lambda m: (-m.count("/"), m)):
        say(f"unmounting {mp}")
        if subprocess.run(["umount", mp], stderr=subprocess.DEVNULL).returncode != 0:
            subprocess.run(["umount", "-l", mp], stderr=subprocess.DEVNULL)
left = mounts_under(root)
if left:
    say("error: still mounted under %s: %s" % (root, " ".join(left)))
    sys.exit(1)
PY
}

# Namespaces this containerd used: from containerd if it answers, and from
# the bundle directories (which outlive a crashed containerd).
namespaces() {
  {
    if our_pid >/dev/null; then ctr_ --timeout 5s namespaces ls -q 2>/dev/null || true; fi
    ls "$dir/state/io.containerd.runtime.v2.task" 2>/dev/null || true
  } | sort -u
}

# runc leaves an empty /run/containerd/runc/<ns> and, per cgroup hierarchy,
# an empty <ns> cgroup (ctr's cgroup path is /<ns>/<id>). rmdir removes them
# only if empty (a cgroup: no tasks, no children), so a namespace still in
# use by another instance keeps them.
remove_empty_ns_dirs() {
  local ns d
  for ns in "$@"; do
    [[ $ns =~ ^[A-Za-z0-9._-]+$ ]] || continue
    for d in "/run/containerd/runc/$ns" /sys/fs/cgroup/*/"$ns"; do
      if [ -d "$d" ]; then rmdir -- "$d" 2>/dev/null || true; fi
    done
  done
}

# The host cgroups (/<ns>/<id>, ctr's default path) of this instance's
# tasks, when a killed shim could not remove them (rmdir: only empty ones).
remove_task_cgroups() {
  local ns b id d
  for ns in "$@"; do
    [[ $ns =~ ^[A-Za-z0-9._-]+$ ]] || continue
    for b in "$dir/state/io.containerd.runtime.v2.task/$ns"/*; do
      id=$(basename -- "$b")
      [[ $id =~ ^[A-Za-z0-9._-]+$ ]] || continue
      for d in /sys/fs/cgroup/*/"$ns/$id"; do
        if [ -d "$d" ] && rmdir -- "$d" 2>/dev/null; then say "removed the leftover cgroup $d"; fi
      done
    done
  done
}

stop() {
  local pid nss
  nss=$(namespaces)
  if pid=$(our_pid); then
    if ctr_ --timeout 2s version >/dev/null 2>&1; then
      delete_tasks
    fi
    say "stopping containerd (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    if ! wait_gone "$pid" "${CONTAINERD_STOP_TIMEOUT:-10}"; then
      say "containerd ignored SIGTERM for ${CONTAINERD_STOP_TIMEOUT:-10}s; sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      wait_gone "$pid" 5 || die "containerd (pid $pid) survived SIGKILL"
    fi
  else
    say "no containerd running for $dir"
  fi
  cleanup_processes_and_mounts || die "could not clean up under $dir"
  # shellcheck disable=SC2086 # namespace names have no blanks
  remove_task_cgroups $nss
  # shellcheck disable=SC2086
  remove_empty_ns_dirs $nss
  if [ -d "$dir/cni" ] && ip link show "$(cni_bridge)" >/dev/null 2>&1; then
    say "deleting the CNI bridge $(cni_bridge)"
    ip link delete "$(cni_bridge)" || say "warning: could not delete $(cni_bridge)"
  fi
  if [ -e "$dir" ]; then
    # --one-file-system: never follow into anything still mounted.
    rm -rf --one-file-system -- "$dir" || die "could not remove $dir"
    say "stopped; $dir removed"
  fi
}

case $cmd in
  start) start ;;
  stop) stop ;;
  *) usage ;;
esac
