//! A sandbox's metrics: its start phases, its agent calls, its VM, and
//! what the husk process holding it costs the host.
//!
//! Phases are CLOCK_MONOTONIC timestamps, set once each by whoever reaches
//! them (the boot code, `husk run`, the shim). They are served two ways:
//! as durations since the sandbox's boot began (what an operator reads),
//! and as the raw monotonic times, which another process on the host (the
//! density bench) can put on its own clock. The VM's first instruction
//! comes from the VMM. Host memory is read from this process's smaps at
//! each scrape, split into the guest's RAM and the rest.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use husk_vmm::metrics::monotonic_ns;
use husk_vmm::VmMetrics;

use super::agent::AgentMetrics;
use super::text::{Kind, TextWriter};
use crate::procfs;

/// The steps from a process to a running container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// The husk process started (its `main`).
    ProcessStart,
    /// `Sandbox::boot` began.
    BootStart,
    /// The guest ran its first instruction (booted or restored).
    VmEntry,
    /// The agent is ready (its ready call, or a clone's agent reached).
    AgentReady,
    /// The sandbox exists in the guest (CreateSandbox, network).
    SandboxReady,
    /// The sandbox's first container was created.
    ContainerCreated,
    /// The sandbox's first container was started.
    ContainerRunning,
}

impl Phase {
    pub const ALL: [Phase; 7] = [
        Phase::ProcessStart,
        Phase::BootStart,
        Phase::VmEntry,
        Phase::AgentReady,
        Phase::SandboxReady,
        Phase::ContainerCreated,
        Phase::ContainerRunning,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Phase::ProcessStart => "process_start",
            Phase::BootStart => "boot_start",
            Phase::VmEntry => "vm_entry",
            Phase::AgentReady => "agent_ready",
            Phase::SandboxReady => "sandbox_ready",
            Phase::ContainerCreated => "container_created",
            Phase::ContainerRunning => "container_running",
        }
    }
}

static PROCESS_START_NS: OnceLock<u64> = OnceLock::new();

/// Notes when this process started; the binary's `main` calls it first.
pub fn note_process_start() {
    let _ = PROCESS_START_NS.set(monotonic_ns());
}

#[derive(Debug)]
pub struct SandboxMetrics {
    /// Monotonic ns of each phase (`Phase` order); 0 = not reached.
    phases: [AtomicU64; Phase::ALL.len()],
    vm: OnceLock<Arc<VmMetrics>>,
    pub agent: Arc<AgentMetrics>,
    /// The guest image mapped into the VM, to tell it apart in smaps.
    guest_image: Option<PathBuf>,
}

impl SandboxMetrics {
    /// A sandbox whose boot begins now.
    pub fn new(guest_image: Option<PathBuf>) -> Self {
        let m = Self {
            phases: Default::default(),
            vm: OnceLock::new(),
            agent: Arc::new(AgentMetrics::default()),
            guest_image,
        };
        if let Some(&ns) = PROCESS_START_NS.get() {
            m.phases[0].store(ns, Ordering::Release);
        }
        m.mark(Phase::BootStart);
        m
    }

    /// Notes `phase` now, unless it was reached before.
    pub fn mark(&self, phase: Phase) {
        let i = Phase::ALL.iter().position(|&p| p == phase).expect("in ALL");
        let _ =
            self.phases[i].compare_exchange(0, monotonic_ns(), Ordering::AcqRel, Ordering::Acquire);
    }

    /// The VM's counters, once it exists.
    pub fn set_vm(&self, vm: Arc<VmMetrics>) {
        let _ = self.vm.set(vm);
    }

    /// The VM's counters, once it exists.
    pub fn vm(&self) -> Option<&Arc<VmMetrics>> {
        self.vm.get()
    }

    /// Monotonic ns of `phase`, if reached.
    pub fn phase_ns(&self, phase: Phase) -> Option<u64> {
        if phase == Phase::VmEntry {
            return self.vm.get().and_then(|vm| vm.first_entry_ns());
        }
        let i = Phase::ALL.iter().position(|&p| p == phase)?;
        Some(self.phases[i].load(Ordering::Acquire)).filter(|&ns| ns != 0)
    }

    /// The whole exposition, read now.
    pub fn render(&self) -> String {
        let mut w = TextWriter::new();
        self.write_phases(&mut w);
        self.agent.write(&mut w);
        if let Some(vm) = self.vm.get() {
            super::vm::write(&mut w, vm);
        }
        self.write_process(&mut w);
        w.finish()
    }

    fn write_phases(&self, w: &mut TextWriter) {
        let reached: Vec<(Phase, u64)> = Phase::ALL
            .iter()
            .filter_map(|&p| self.phase_ns(p).map(|ns| (p, ns)))
            .collect();
        let boot = self.phase_ns(Phase::BootStart).unwrap_or(0);
        w.family(
            "husk_sandbox_start_phase_seconds",
            Kind::Gauge,
            "Seconds from the start of the sandbox's boot to each start phase it reached.",
        );
        for &(p, ns) in &reached {
            if p != Phase::ProcessStart {
                let secs = ns.saturating_sub(boot) as f64 / 1e9;
                w.sample(
                    "husk_sandbox_start_phase_seconds",
                    &[("phase", p.name())],
                    secs,
                );
            }
        }
        w.family(
            "husk_sandbox_phase_monotonic_seconds",
            Kind::Gauge,
            "CLOCK_MONOTONIC time at which each start phase was reached (comparable across processes on this host).",
        );
        for &(p, ns) in &reached {
            w.sample(
                "husk_sandbox_phase_monotonic_seconds",
                &[("phase", p.name())],
                ns as f64 / 1e9,
            );
        }
    }

    fn write_process(&self, w: &mut TextWriter) {
        let me = std::process::id();
        let ram_kib = self.vm.get().map_or(0, |vm| vm.mem_bytes >> 10);
        let split = procfs::memory_split(me, ram_kib, self.guest_image.as_deref());
        let Ok(split) = split else {
            return;
        };
        let kib = |v: u64| (v << 10) as f64;
        w.family(
            "husk_process_rss_bytes",
            Kind::Gauge,
            "Resident memory of this husk process (shim + VMM + devices + guest): all of it, and its guest RAM mapping.",
        )
        .sample("husk_process_rss_bytes", &[("part", "total")], kib(split.total.rss_kib))
        .sample("husk_process_rss_bytes", &[("part", "guest")], kib(split.guest_ram.rss_kib));
        w.family(
            "husk_process_pss_bytes",
            Kind::Gauge,
            "Proportional set size of this husk process (pages shared with N processes count 1/N): all of it, and its guest RAM mapping.",
        )
        .sample("husk_process_pss_bytes", &[("part", "total")], kib(split.total.pss_kib))
        .sample("husk_process_pss_bytes", &[("part", "guest")], kib(split.guest_ram.pss_kib));
        if let Ok(threads) = procfs::thread_count(me) {
            w.family(
                "husk_process_threads",
                Kind::Gauge,
                "Threads of this husk process.",
            )
            .sample("husk_process_threads", &[], threads as f64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::parse::parse;
    use super::*;
    use husk_vmm::metrics::DeviceMetrics;

    #[test]
    fn phases_and_process_figures_render_and_parse() {
        note_process_start();
        let m = SandboxMetrics::new(None);
        m.mark(Phase::AgentReady);
        let e = parse(&m.render()).unwrap();
        let phase = |p: &str| e.value("husk_sandbox_start_phase_seconds", &[("phase", p)]);
        assert_eq!(phase("boot_start"), Some(0.0));
        assert!(phase("agent_ready").unwrap() >= 0.0);
        assert_eq!(phase("container_running"), None, "not reached");
        assert!(
            e.value(
                "husk_sandbox_phase_monotonic_seconds",
                &[("phase", "process_start")]
            )
            .unwrap()
                <= e.value(
                    "husk_sandbox_phase_monotonic_seconds",
                    &[("phase", "boot_start")]
                )
                .unwrap()
        );
        assert!(
            e.value("husk_process_rss_bytes", &[("part", "total")])
                .unwrap()
                > 0.0
        );
        assert!(e.value("husk_process_threads", &[]).unwrap() >= 1.0);
        assert!(e.family("husk_vcpu_exits_total").is_none(), "no VM yet");

        let vm = Arc::new(VmMetrics::new(2, 64 << 20, DeviceMetrics::default()));
        vm.vcpus[1].count(husk_vmm::ExitReason::MmioWrite);
        m.set_vm(vm.clone());
        let e = parse(&m.render()).unwrap();
        assert_eq!(
            e.value(
                "husk_vcpu_exits_total",
                &[("vcpu", "1"), ("reason", "mmio_write")]
            ),
            Some(1.0)
        );
        assert_eq!(
            e.value("husk_guest_memory_bytes", &[]),
            Some((64 << 20) as f64)
        );
        assert_eq!(phase("vm_entry"), None);
        vm.mark_first_entry();
        let e = parse(&m.render()).unwrap();
        assert!(e
            .value("husk_sandbox_start_phase_seconds", &[("phase", "vm_entry")])
            .is_some());
    }
}
