#!/usr/bin/env bash
# Builds an OCI bundle for `husk run` (or runc): a busybox root filesystem
# (build-busybox-rootfs.sh) and a config.json running ARGS in it.
#
#   busybox-bundle.sh OUT_DIR [ARGS...]     (default ARGS: sh)
#
# The spec is the usual runtime default: pid, ipc, uts, mount and network
# namespaces (husk refuses the host's network: a sandbox's network is its
# VM's), /proc, /dev, /dev/pts, /dev/shm, /sys, runc's default
# capabilities, root as uid 0. OUT_DIR must not exist yet. Prints OUT_DIR.
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: $0 OUT_DIR [ARGS...]" >&2; exit 2; }
out=$1
shift
[ $# -gt 0 ] || set -- sh
[ ! -e "$out" ] || { echo "busybox-bundle: $out already exists" >&2; exit 1; }
mkdir -p "$out"
"$(dirname "$0")/build-busybox-rootfs.sh" "$out/rootfs" >/dev/null
python3 - "$out/config.json" "$@" <<'PY'
import json, sys
path, args = sys.argv[1], sys.argv[2:]
caps = ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD",
        "CAP_NET_RAW", "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP",
        "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE"]
spec = {
    "ociVersion": "1.0.2",
    "process": {
        "terminal": False,
        "user": {"uid": 0, "gid": 0},
        "args": args,
        "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=xterm"],
        "cwd": "/",
        "capabilities": {k: caps for k in ("bounding", "effective", "permitted")},
        "noNewPrivileges": True,
    },
    "root": {"path": "rootfs", "readonly": False},
    "hostname": "husk",
    "mounts": [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
    ],
    "linux": {
        "namespaces": [{"type": t} for t in ("pid", "ipc", "uts", "mount", "network")],
        "maskedPaths": ["/proc/kcore", "/proc/keys", "/proc/timer_list"],
        "readonlyPaths": ["/proc/sys", "/proc/sysrq-trigger"],
    },
}
with open(path, "w") as f:
    json.dump(spec, f, indent=2)
PY
echo "$out"
