#!/usr/bin/env python3
"""Where a running guest's kernel spends its time, on software KVM.

On kvm_pvm every guest kernel instruction is emulated by the host, and the
host's `kvm:kvm_emulate_insn` tracepoint names each one (its guest RIP).
This records that tracepoint on one vCPU thread for a few seconds, maps the
RIPs to the guest kernel's symbols (`nm` of its vmlinux) and prints:
- the instructions per kind of entry: each system call, the timer tick,
  other interrupts, page faults and the scheduler, with calls and
  instructions per call;
- the functions with the most instructions;
- the timer callbacks, hrtimer callbacks and work items that ran, with
  how often: on an idle guest, that is what wakes it.
Guest user code runs natively and is not seen; gaps between emulated
instructions are reported as the time the vCPU spent outside the kernel.

Usage: ci/guest-kernel-profile.py VCPU_TID VMLINUX [SECONDS]
(VCPU_TID: `ps -eLo tid,comm | grep husk-vcpu`; VMLINUX: $HUSK_KERNEL).
Needs root and perf; the trace is large (about 100 MB per second).
"""

import bisect
import collections
import os
import subprocess
import sys
import tempfile


def symbols(vmlinux):
    out = subprocess.run(["nm", "-n", vmlinux], capture_output=True, text=True, check=True)
    table = []
    for line in out.stdout.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1] in "tTwW":
            table.append((int(parts[0], 16), parts[2]))
    table.sort()
    return [a for a, _ in table], [n for _, n in table]


def trace(tid, seconds, data):
    subprocess.run(
        ["perf", "record", "-q", "-e", "kvm:kvm_emulate_insn", "-t", str(tid), "-o", data,
         "--", "sleep", str(seconds)],
        check=True, stdout=subprocess.DEVNULL)
    script = subprocess.Popen(["perf", "script", "-i", data, "-F", "time,trace"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    for line in script.stdout:
        parts = line.split()
        if len(parts) >= 2:
            # "<time>: 0:<rip>:<bytes> (prot64)"
            fields = parts[1].split(":")
            if len(fields) >= 2:
                yield float(parts[0].rstrip(":")), int(fields[1], 16)


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    tid, vmlinux = int(sys.argv[1]), sys.argv[2]
    seconds = float(sys.argv[3]) if len(sys.argv) > 3 else 5
    addrs, names = symbols(vmlinux)
    cache = {}

    def look(rip):
        if rip not in cache:
            i = bisect.bisect_right(addrs, rip) - 1
            cache[rip] = (names[i], addrs[i] == rip) if i >= 0 else ("?", False)
        return cache[rip]

    kinds = collections.Counter()
    calls = collections.Counter()
    funcs = collections.Counter()
    wakers = collections.Counter()
    # After the kernel enters one of these, the next function entered that
    # is not the runner's own machinery (locks, retpoline thunks, timer and
    # workqueue internals) is the callback it runs.
    runners = {"call_timer_fn": "timer", "__hrtimer_run_queues": "hrtimer",
               "worker_thread": "work"}
    helper = ("_raw_", "do_raw_", "__raw_", "__x86_", "preempt_", "lock_", "__pfx_",
              "rcu_read", "__rcu_read", "local_", "sched_clock", "ktime_get", "__remove_hrtimer",
              "__hrtimer", "hrtimer_", "enqueue_hrtimer", "timerqueue_", "worker_", "process_",
              "set_worker", "pwq_", "kick_", "wq_", "assign_work", "move_linked",
              "need_more", "__queue", "raw_spin", "debug_", "__lock", "__next_base",
              "_find_next_bit", "idle_cpu", "__mod_timer", "__rcu_")
    waiting = None
    stack = ["?"]
    first_t = last_t = None
    outside = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for t, rip in trace(tid, seconds, os.path.join(tmp, "perf.data")):
            name, entry = look(rip)
            if last_t is not None and t - last_t > 1e-4:
                outside += t - last_t
            first_t = t if first_t is None else first_t
            last_t = t
            if entry:
                runner = next((k for k in runners if name.startswith(k)), None)
                if runner:
                    waiting = runners[runner]
                elif waiting and not name.startswith(helper):
                    wakers[f"{waiting}: {name}"] += 1
                    waiting = None
                # Nesting is approximate: an interrupt or the scheduler is
                # counted apart from the call it interrupted.
                if name.startswith("asm_sysvec") or name == "asm_common_interrupt":
                    kind = "tick" if "timer" in name else "irq:" + name[11:]
                    stack.append(kind)
                    calls[kind] += 1
                elif name.startswith("__x64_sys_"):
                    stack = ["sys:" + name[10:]]
                    calls[stack[0]] += 1
                elif name == "asm_exc_page_fault":
                    stack = ["page fault / syscall entry"]
                    calls[stack[0]] += 1
                elif name == "__schedule":
                    stack.append("schedule")
                    calls["schedule"] += 1
            if name in ("native_irq_return_iret", "swapgs_restore_regs_and_return_to_usermode",
                        "finish_task_switch.isra.0") and len(stack) > 1:
                stack.pop()
            kinds[stack[-1]] += 1
            funcs[name] += 1
    total = sum(kinds.values())
    if not total:
        sys.exit("no guest kernel instruction was emulated (idle guest, or not software KVM?)")
    span = last_t - first_t
    print(f"{total} emulated instructions in {span:.2f} s ({total / span:.0f}/s); "
          f"outside the kernel (user code or halted): {outside:.2f} s")
    print(f"{'entry':36s} {'share':>6s} {'calls':>6s} {'insns/call':>10s}")
    for kind, n in kinds.most_common(20):
        print(f"{kind:36s} {100 * n / total:5.1f}% {calls[kind]:6d} {n // max(1, calls[kind]):10d}")
    print(f"\n{'function':36s} {'share':>6s}")
    for name, n in funcs.most_common(25):
        print(f"{name:36s} {100 * n / total:5.1f}%")
    print(f"\n{'callback':48s} {'times':>6s} {'per s':>6s}")
    for name, n in wakers.most_common(25):
        print(f"{name:48s} {n:6d} {n / span:6.2f}")


if __name__ == "__main__":
    main()
