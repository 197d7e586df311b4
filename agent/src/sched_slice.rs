//! A longer scheduler time slice for the agent and everything it starts,
//! when the host asks for one (husk's software-KVM profile does).
//!
//! On software KVM the guest kernel is emulated, and a timer tick that
//! switches tasks (with the load tracking of each cgroup level) costs
//! about 8,500 emulated instructions: some 14 ms, more than the tick period
//! (10 ms at HZ=100). With EEVDF's default slice (0.7 ms) a tick preempts
//! the running task whenever another one is runnable, so two or more
//! runnable tasks left the guest doing nothing but ticks: under 100
//! concurrent execs 95 % of its kernel instructions were in the tick path
//! and user code got no time at all. A 100 ms slice lets a task run ten
//! ticks before it is preempted.
//!
//! The slice is a per-task custom slice (sched_setattr's `sched_runtime`
//! for SCHED_OTHER, Linux 6.12+), which threads and children inherit: so
//! it is set on the main thread before any other thread exists, and the
//! container processes get it too.

use std::time::Duration;

/// The kernel command-line word that asks for it, e.g. `husk.sched_slice_ms=100`.
/// A dotted word is not passed to init, hence /proc/cmdline.
const CMDLINE_KEY: &str = "husk.sched_slice_ms=";

/// The slice the kernel command line asks for, if any; an unparsable
/// value is an error naming it.
pub fn requested(cmdline: &str) -> Result<Option<Duration>, String> {
    let Some(value) = cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix(CMDLINE_KEY))
    else {
        return Ok(None);
    };
    match value.parse::<u64>() {
        Ok(ms) if ms > 0 => Ok(Some(Duration::from_millis(ms))),
        _ => Err(format!("{CMDLINE_KEY}{value}: not a positive number of ms")),
    }
}

/// `struct sched_attr` as of SCHED_ATTR_SIZE_VER0 (48 bytes).
#[repr(C)]
struct SchedAttr {
    size: u32,
    policy: u32,
    flags: u64,
    nice: i32,
    priority: u32,
    runtime: u64,
    deadline: u64,
    period: u64,
}

/// Gives the calling thread (and so the threads and processes it creates
/// from now on) a custom SCHED_OTHER slice at nice 0. The kernel clamps it
/// to 0.1-100 ms.
pub fn set(slice: Duration) -> std::io::Result<()> {
    let attr = SchedAttr {
        size: std::mem::size_of::<SchedAttr>() as u32,
        policy: libc::SCHED_OTHER as u32,
        flags: 0,
        nice: 0,
        priority: 0,
        runtime: u64::try_from(slice.as_nanos()).unwrap_or(u64::MAX),
        deadline: 0,
        period: 0,
    };
    // SAFETY: sched_setattr reads `size` bytes of a live, initialised
    // sched_attr; pid 0 is the calling thread.
    let rc = unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &attr as *const SchedAttr, 0u32) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_slice_comes_from_the_command_line() {
        let line = "console=ttyS0 husk.syscall_fault=1 husk.sched_slice_ms=100 quiet";
        assert_eq!(requested(line), Ok(Some(Duration::from_millis(100))));
        assert_eq!(requested("console=ttyS0 quiet"), Ok(None));
        let bad = requested("husk.sched_slice_ms=fast").unwrap_err();
        assert!(bad.contains("husk.sched_slice_ms=fast"), "{bad}");
        assert!(requested("husk.sched_slice_ms=0").is_err());
    }

    #[test]
    fn a_thread_takes_a_custom_slice_and_its_children_inherit_it() {
        std::thread::spawn(|| {
            // Kernels before 6.12 accept the call and ignore the slice.
            set(Duration::from_millis(30)).expect("sched_setattr");
            let own = runtime_of(0);
            if own == 0 {
                eprintln!("SKIP: this kernel has no custom slices (Linux 6.12+)");
                return;
            }
            assert_eq!(own, 30_000_000);
            let inherited = std::thread::spawn(|| runtime_of(0)).join().unwrap();
            assert_eq!(inherited, own, "a new thread's slice");
        })
        .join()
        .unwrap();
    }

    /// sched_getattr's `sched_runtime` for a thread (0: the caller).
    fn runtime_of(tid: i32) -> u64 {
        let mut attr = std::mem::MaybeUninit::<SchedAttr>::zeroed();
        // SAFETY: the kernel writes at most `size` bytes into `attr`.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_sched_getattr,
                tid,
                attr.as_mut_ptr(),
                std::mem::size_of::<SchedAttr>() as u32,
                0u32,
            )
        };
        assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
        // SAFETY: sched_getattr filled it.
        unsafe { attr.assume_init() }.runtime
    }
}
