#!/usr/bin/env bash
# Builds a one-layer OCI image archive from a directory, for containerd
# end-to-end tests that must run without a registry or network:
#
#   build-oci-image.sh ROOTFS OUT.tar NAME:TAG CONFIG_JSON HISTORY
#   ctr images import OUT.tar                    -> image NAME:TAG (normalised)
#
# CONFIG_JSON is the image config's "config" object (Env, Cmd, Entrypoint,
# WorkingDir); HISTORY is the one history entry's created_by text.
#
# The name: ctr 1.6.20 `images import` names an OCI manifest after its
# `io.containerd.image.name` annotation if present, verbatim (ctr does not
# normalise: "husk/busybox:x" stays "husk/busybox:x", and `ctr run` looks
# names up exactly, so the script normalises NAME itself, docker-style:
# husk/busybox -> docker.io/husk/busybox:latest, which is also the form CRI
# looks up). Without it ctr uses `org.opencontainers.image.ref.name`:
# a full reference verbatim, a bare tag such as "latest" prefixed with
# --base-name or else "import-YYYY-MM-DD"; with neither annotation it
# imports nothing, silently. The index descriptor carries both, the way
# `ctr images export` writes them: io.containerd.image.name=NAME and
# org.opencontainers.image.ref.name=TAG. A plain `ctr images import OUT.tar`
# then creates exactly NAME; no --base-name or --index-name is needed (any
# --base-name still imports NAME; --index-name X would add an image X for
# the index itself).
#
# OUT.tar is an OCI image layout (oci-layout, index.json, blobs/sha256/...):
# index -> manifest -> config + one layer; os linux, the host's architecture.
# The layer is an uncompressed tar (application/vnd.oci.image.layer.v1.tar):
# its digest is its diff_id, the archive is reproducible whatever zlib
# version the host has (gzip output is not guaranteed stable across zlib
# versions, which would break caching by input hash), and the images are
# small. containerd unpacks either kind.
#
# Output is deterministic for identical inputs: every entry sorted by name,
# mtime SOURCE_DATE_EPOCH (default 0), uid/gid 0 without user names, modes
# normalised (dirs 0755, /tmp 1777, executables 0755, other files 0644), no
# pax/atime/ctime records, and JSON with sorted keys and no whitespace.
#
# Needs bash, coreutils and python3 (tarfile/hashlib/json); no network.
# Prints OUT.tar on stdout; progress goes to stderr.
set -euo pipefail
if [ $# -ne 5 ]; then
  echo "usage: $0 ROOTFS OUT.tar NAME:TAG CONFIG_JSON HISTORY" >&2
  exit 2
fi
rootfs=$1 out=$2 name=$3 config=$4 history=$5
command -v python3 >/dev/null || { echo "build-oci-image: python3 is required" >&2; exit 1; }
[ -d "$rootfs" ] || { echo "build-oci-image: $rootfs is not a directory" >&2; exit 1; }

case "$(dpkg --print-architecture 2>/dev/null || uname -m)" in
  amd64 | x86_64) arch=amd64 ;;
  arm64 | aarch64) arch=arm64 ;;
  *) echo "build-oci-image: unsupported host architecture $(uname -m)" >&2; exit 1 ;;
esac

echo "build-oci-image: writing $out ($name, $arch)" >&2
mkdir -p "$(dirname "$out")"
python3 - "$rootfs" "$out.tmp" "$name" "$arch" "${SOURCE_DATE_EPOCH:-0}" "$config" "$history" <<'PY'
import datetime, hashlib, io, json, os, re, stat, sys, tarfile

rootfs, out, name, arch, epoch = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
image_config, history = json.loads(sys.argv[6]), sys.argv[7]

def normalise(ref):
    """Docker-style reference normalisation, as containerd stores names:
    husk/busybox -> docker.io/husk/busybox:latest, busybox -> docker.io/library/busybox:latest."""
    if not re.fullmatch(r"[a-z0-9][a-z0-9._/:@-]*", ref):
        sys.exit(f"build-oci-image: invalid image name {ref!r}")
    first, _, rest = ref.partition("/")
    if not rest or ("." not in first and ":" not in first and first != "localhost"):
        ref = "docker.io/" + ref
        if "/" not in ref[len("docker.io/"):]:
            ref = "docker.io/library/" + ref[len("docker.io/"):]
    last = ref.rsplit("/", 1)[1]
    if ":" not in last and "@" not in last:
        ref += ":latest"
    return ref

name = normalise(name)
tag = name.rsplit("/", 1)[1].partition(":")[2].partition("@")[0] or "latest"

def info(tname, typ, mode, size=0, linkname=""):
    ti = tarfile.TarInfo(tname)
    ti.type, ti.mode, ti.size, ti.linkname = typ, mode, size, linkname
    ti.mtime, ti.uid, ti.gid, ti.uname, ti.gname = epoch, 0, 0, "", ""
    return ti

def layer_bytes():
    entries = []
    for dirpath, dirnames, filenames in os.walk(rootfs):
        for n in dirnames + filenames:
            full = os.path.join(dirpath, n)
            entries.append(os.path.relpath(full, rootfs))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for rel in sorted(entries):
            full = os.path.join(rootfs, rel)
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                tf.addfile(info(rel, tarfile.SYMTYPE, 0o777, linkname=os.readlink(full)))
            elif stat.S_ISDIR(st.st_mode):
                tf.addfile(info(rel, tarfile.DIRTYPE, 0o1777 if rel == "tmp" else 0o755))
            elif stat.S_ISREG(st.st_mode):
                mode = 0o755 if st.st_mode & 0o100 else 0o644
                with open(full, "rb") as f:
                    tf.addfile(info(rel, tarfile.REGTYPE, mode, st.st_size), f)
            else:
                sys.exit(f"build-oci-image: unexpected file type in rootfs: {rel}")
    return buf.getvalue()

def jbytes(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()

def digest(b):
    return "sha256:" + hashlib.sha256(b).hexdigest()

blobs = {}
def blob(media_type, b):
    d = digest(b)
    blobs[d] = b
    return {"mediaType": media_type, "digest": d, "size": len(b)}

layer = layer_bytes()
created = datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
config = {
    "architecture": arch,
    "os": "linux",
    "created": created,
    "config": image_config,
    "rootfs": {"type": "layers", "diff_ids": [digest(layer)]},
    "history": [{"created": created, "created_by": history}],
}
manifest = {
    "schemaVersion": 2,
    "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": blob("application/vnd.oci.image.config.v1+json", jbytes(config)),
    "layers": [blob("application/vnd.oci.image.layer.v1.tar", layer)],
}
mdesc = blob("application/vnd.oci.image.manifest.v1+json", jbytes(manifest))
mdesc["platform"] = {"architecture": arch, "os": "linux"}
mdesc["annotations"] = {
    "io.containerd.image.name": name,
    "org.opencontainers.image.ref.name": tag,
}
index = {
    "schemaVersion": 2,
    "mediaType": "application/vnd.oci.image.index.v1+json",
    "manifests": [mdesc],
}

files = {
    "oci-layout": jbytes({"imageLayoutVersion": "1.0.0"}),
    "index.json": jbytes(index),
}
for d, b in blobs.items():
    files["blobs/sha256/" + d.split(":", 1)[1]] = b
with tarfile.open(out, mode="w", format=tarfile.PAX_FORMAT) as tf:
    for dname in ("blobs", "blobs/sha256"):
        tf.addfile(info(dname, tarfile.DIRTYPE, 0o755))
    for fname in sorted(files):
        b = files[fname]
        tf.addfile(info(fname, tarfile.REGTYPE, 0o644, len(b)), io.BytesIO(b))
print(f"build-oci-image: {name} manifest {mdesc['digest']} layer {digest(layer)} ({len(layer)} bytes)", file=sys.stderr)
PY
mv -f "$out.tmp" "$out"
echo "$out"
