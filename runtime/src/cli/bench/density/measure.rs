//! Measuring the running pods, all from the kernel's accounting.
//!
//! Once every pod runs (and the guests had a few seconds to settle), each
//! pod's husk process is read from /proc: its memory split by mapping
//! (PSS: a page shared by N processes counts 1/N in each, so the guest
//! image and a template's memory are not counted N times), its threads,
//! and its CPU time over an idle window of `--idle-secs` (10 s by
//! default). The host's MemAvailable after, against the baseline taken in
//! the same run before the first pod, gives the drop the pods caused,
//! page cache and kernel memory (page tables, KVM) included. Host-wide
//! CPU over the same window shows what else ran (this host is shared).

use std::time::{Duration, Instant};

use husk_runtime::procfs;

use super::pod::{Figures, Fleet};
use super::signals::Interrupted;

/// The fleet-wide figures.
#[derive(Debug, Clone, Default)]
pub struct Totals {
    pub baseline_kib: u64,
    /// None when the bench stopped (a failure, Ctrl-C) before measuring.
    pub measured: Option<Measured>,
    pub load_before: String,
    pub load_after: String,
}

/// What the measurement of the running fleet found host-wide.
#[derive(Debug, Clone, Copy)]
pub struct Measured {
    pub after_kib: u64,
    pub idle_window_secs: f64,
    /// Busy share of all CPUs over the window (every process on the host).
    pub host_busy_percent: f64,
}

impl Totals {
    /// MemAvailable's drop from the baseline; negative when other
    /// processes freed more than the pods took.
    pub fn drop_kib(&self, m: &Measured) -> i64 {
        self.baseline_kib as i64 - m.after_kib as i64
    }
}

pub struct MeasurePlan<'a> {
    pub guest_ram_kib: u64,
    pub guest_image: Option<std::path::PathBuf>,
    pub settle: Duration,
    pub idle_window: Duration,
    pub interrupted: &'a Interrupted,
}

/// Measures every running pod; pods found dead are marked failed.
pub fn measure(fleet: &mut Fleet, plan: &MeasurePlan, totals: &mut Totals) {
    sleep(plan.settle, plan.interrupted);
    fleet.check_alive("before the measurement");
    let mut memory = Vec::new();
    for pod in fleet.pods().iter_mut().filter(|p| p.is_running()) {
        let Some(pid) = pod.pid else {
            pod.fail("its husk process was never identified");
            continue;
        };
        let split = procfs::memory_split(pid, plan.guest_ram_kib, plan.guest_image.as_deref());
        match (split, procfs::thread_count(pid)) {
            (Ok(split), Ok(threads)) => memory.push((pod.index, split, threads)),
            (Err(e), _) | (_, Err(e)) => pod.fail(format!("reading its memory: {e}")),
        }
    }
    let after_kib = procfs::mem_available_kib().unwrap_or(0);
    let cpu = idle_cpu(fleet, plan);
    totals.measured = Some(Measured {
        after_kib,
        idle_window_secs: cpu.window.as_secs_f64(),
        host_busy_percent: cpu.host_busy_percent,
    });
    for pod in fleet.pods().iter_mut() {
        let mem = memory.iter().find(|(i, ..)| *i == pod.index);
        let ticks = cpu.per_pod.iter().find(|(i, _)| *i == pod.index);
        if let (Some(&(_, split, threads)), Some(&(_, percent)), true) =
            (mem, ticks, pod.is_running())
        {
            pod.figures = Some(Figures {
                memory: split,
                threads,
                idle_cpu_percent: percent,
            });
        }
    }
    fleet.check_alive("during the measurement");
}

struct IdleCpu {
    window: Duration,
    host_busy_percent: f64,
    /// (pod index, % of one core).
    per_pod: Vec<(usize, f64)>,
}

/// Each running pod's CPU time over the idle window, and the host's.
fn idle_cpu(fleet: &mut Fleet, plan: &MeasurePlan) -> IdleCpu {
    let pids: Vec<(usize, u32)> = fleet
        .pods()
        .iter()
        .filter(|p| p.is_running())
        .filter_map(|p| Some((p.index, p.pid?)))
        .collect();
    let before: Vec<Option<u64>> = pids
        .iter()
        .map(|&(_, pid)| procfs::cpu_ticks(pid).ok())
        .collect();
    let host_before = procfs::host_cpu_jiffies().ok();
    let t = Instant::now();
    sleep(plan.idle_window, plan.interrupted);
    let after: Vec<Option<u64>> = pids
        .iter()
        .map(|&(_, pid)| procfs::cpu_ticks(pid).ok())
        .collect();
    let host_after = procfs::host_cpu_jiffies().ok();
    let window = t.elapsed();
    let hz = procfs::ticks_per_second() as f64;
    let per_pod = pids
        .iter()
        .zip(before.iter().zip(&after))
        .filter_map(|(&(index, _), (b, a))| {
            let used = a.as_ref()?.saturating_sub(*b.as_ref()?) as f64 / hz;
            Some((index, 100.0 * used / window.as_secs_f64()))
        })
        .collect();
    let host_busy_percent = match (host_before, host_after) {
        (Some((b0, t0)), Some((b1, t1))) if t1 > t0 => 100.0 * (b1 - b0) as f64 / (t1 - t0) as f64,
        _ => 0.0,
    };
    IdleCpu {
        window,
        host_busy_percent,
        per_pod,
    }
}

/// Sleeps `d`, cut short by an interruption.
pub fn sleep(d: Duration, interrupted: &Interrupted) {
    let end = Instant::now() + d;
    while Instant::now() < end && !interrupted.is_set() {
        std::thread::sleep(
            Duration::from_millis(100).min(end.saturating_duration_since(Instant::now())),
        );
    }
}
