#!/usr/bin/env python3
"""Runs every test binary of the workspace, two at a time.

Almost all of the suite's time is real guests, and a guest's kernel is
emulated here: one VM keeps one core busy in the host kernel and leaves the
other idle. So the test binaries run in two lanes, each binary with one
test thread, longest first, which keeps both cores busy without running
more guests than there are cores. The few binaries that run several
guests at once run alone first (their tests two at a time). Builds first
(every target, benches included, so they cannot rot), then runs; a
binary's output is printed whole when it ends (and streamed to
target/test-logs/ while it runs); a failure does not stop the others; the
exit status says whether all passed, and which did not.

    ci/test-lanes.py [--lanes N] [--threads T] [CARGO_TEST_ARGS...]

(--lanes 1 --threads 2 is plain `cargo test -- --test-threads=2`, binary
after binary.)
"""

import json
import os
import shutil
import subprocess
import sys
import threading
import time

# Rough seconds each long binary takes on this 2-core machine (release);
# the rest take seconds. Only the order depends on them.
ESTIMATES = {
    "containerd_shim": 650,
    "cri_pods": 550,
    "faults": 420,
    "real_guest_vsock": 262,
    "templates": 258,
    "real_guest_agent": 145,
    "real_guest": 140,
    "seccomp": 120,
    "real_guest_net": 103,
    "density": 100,
    "real_guest_fs": 80,
    "real_guest_fpu": 75,
    "husk_run": 33,
}

# Binaries that run several guests at once (template clones, density
# pods, real_guest's four boots): beside another guest they slow both
# several times over (on this software KVM a guest's emulated kernel gets
# slower with every guest that runs; a 2-vCPU boot stalled in RCU and never
# reached /init), so they run alone, before the lanes start.
EXCLUSIVE = {"templates", "density", "real_guest"}

# What `cargo test` runs of a package by default (benches and examples are
# only built).
RUN_KINDS = {"lib", "bin", "test", "proc-macro"}


def build(cargo_args):
    """Builds every target; returns the test executables to run."""
    cmd = ["cargo", "test", "--release", "--workspace", "--all-targets", "--no-run",
           "--message-format=json-render-diagnostics", *cargo_args]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        sys.exit(f"test-lanes: the build failed ({' '.join(cmd)})")
    runs = []
    for line in proc.stdout.splitlines():
        msg = json.loads(line)
        if msg.get("reason") != "compiler-artifact" or not msg.get("executable"):
            continue
        target = msg["target"]
        if not msg["profile"]["test"] or not RUN_KINDS & set(target["kind"]):
            continue
        runs.append({
            "name": target["name"],
            "exe": msg["executable"],
            "cwd": os.path.dirname(msg["manifest_path"]),
            "label": f"{target['name']} ({'/'.join(target['kind'])}, "
                     f"{os.path.basename(os.path.dirname(msg['manifest_path']))})",
        })
    runs.sort(key=lambda r: -ESTIMATES.get(r["name"], 1))
    return runs


class Lanes:
    def __init__(self, logs):
        self.queue = []
        self.threads = 1
        self.logs = logs
        self.lock = threading.Lock()
        self.failed = []
        self.started = time.monotonic()

    def say(self, text):
        with self.lock:
            print(text, flush=True)

    def next(self):
        with self.lock:
            return self.queue.pop(0) if self.queue else None

    def run(self, runs, lanes, threads):
        """Runs `runs` in `lanes` lanes, each binary with `threads` test threads."""
        self.queue, self.threads = list(runs), threads
        workers = [threading.Thread(target=self.lane, args=(n + 1,)) for n in range(lanes)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()

    def lane(self, n):
        while (run := self.next()) is not None:
            self.run_one(n, run)

    def run_one(self, n, run):
        at = time.monotonic() - self.started
        self.say(f"test-lanes: [lane {n}, {at:.0f} s] start {run['label']}")
        log = os.path.join(self.logs, f"{run['name']}-{os.path.basename(run['exe'])}.log")
        env = dict(os.environ, CARGO_MANIFEST_DIR=run["cwd"])
        begin = time.monotonic()
        with open(log, "w") as out:
            rc = subprocess.run([run["exe"], f"--test-threads={self.threads}"], cwd=run["cwd"], env=env,
                                stdout=out, stderr=subprocess.STDOUT).returncode
        secs = time.monotonic() - begin
        with open(log, errors="replace") as f:
            text = f.read()
        verdict = "ok" if rc == 0 else f"FAILED (exit {rc})"
        with self.lock:
            print(f"---- {run['label']}: {verdict} in {secs:.0f} s ----", flush=True)
            print(text.rstrip(), flush=True)
            print(f"---- end of {run['name']} ----", flush=True)
            if rc != 0:
                self.failed.append(f"{run['label']} (log {log})")


def main():
    args = sys.argv[1:]
    lanes, threads = 2, 1
    while args[:1] in (["--lanes"], ["--threads"]):
        if args[0] == "--lanes":
            lanes = int(args[1])
        else:
            threads = int(args[1])
        args = args[2:]
    runs = build(args)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    logs = os.path.join(root, "target", "test-logs")
    shutil.rmtree(logs, ignore_errors=True)
    os.makedirs(logs)
    alone = [r for r in runs if r["name"] in EXCLUSIVE]
    shared = [r for r in runs if r["name"] not in EXCLUSIVE]
    print(f"test-lanes: {len(runs)} test binaries, {len(alone)} alone, the rest in "
          f"{lanes} lanes, {threads} test thread(s) each", flush=True)
    state = Lanes(logs)
    # Alone, a binary's own tests may share both cores.
    state.run(alone, 1, max(threads, 2))
    state.run(shared, lanes, threads)
    total = time.monotonic() - state.started
    if state.failed:
        print(f"test-lanes: {len(state.failed)} of {len(runs)} binaries failed "
              f"in {total:.0f} s:", flush=True)
        for f in state.failed:
            print(f"  {f}", flush=True)
        sys.exit(1)
    print(f"test-lanes: all {len(runs)} binaries passed in {total:.0f} s", flush=True)


if __name__ == "__main__":
    main()
