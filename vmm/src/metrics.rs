//! What a running VM counts, for whoever holds it (the runtime's metrics
//! endpoint, benches, tests).
//!
//! One `VmMetrics` per VM, shared by `Arc`: the vCPU threads bump their
//! exit counters (one array of atomics per vCPU, indexed by `ExitReason`,
//! so counting costs one relaxed add on the exit path and takes no lock),
//! vCPU 0 notes when it first entered the guest, and the virtio devices'
//! own counter blocks are collected here as the device manager adds them.
//! Readers take snapshots with relaxed loads: each counter is exact, the
//! set is not a single instant, which is what a scrape needs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use husk_devices::fs::FsMetrics;
use husk_devices::net::NetMetrics;
use husk_devices::pmem::PmemMetrics;
use husk_devices::vsock::VsockMetrics;

/// Why KVM_RUN returned to the VMM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitReason {
    IoIn,
    IoOut,
    MmioRead,
    MmioWrite,
    Hlt,
    Shutdown,
    SystemEvent,
    /// KVM could not emulate an instruction (completed by the compat
    /// fallbacks on software-KVM hosts, or fatal).
    InternalError,
    FailEntry,
    /// KVM_RUN was interrupted (a kick signal) or asked to retry.
    Interrupted,
    Other,
}

impl ExitReason {
    pub const ALL: [ExitReason; 11] = [
        ExitReason::IoIn,
        ExitReason::IoOut,
        ExitReason::MmioRead,
        ExitReason::MmioWrite,
        ExitReason::Hlt,
        ExitReason::Shutdown,
        ExitReason::SystemEvent,
        ExitReason::InternalError,
        ExitReason::FailEntry,
        ExitReason::Interrupted,
        ExitReason::Other,
    ];

    /// The label value metrics use.
    pub fn name(self) -> &'static str {
        match self {
            ExitReason::IoIn => "io_in",
            ExitReason::IoOut => "io_out",
            ExitReason::MmioRead => "mmio_read",
            ExitReason::MmioWrite => "mmio_write",
            ExitReason::Hlt => "hlt",
            ExitReason::Shutdown => "shutdown",
            ExitReason::SystemEvent => "system_event",
            ExitReason::InternalError => "internal_error",
            ExitReason::FailEntry => "fail_entry",
            ExitReason::Interrupted => "interrupted",
            ExitReason::Other => "other",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// One vCPU's exits, by reason.
#[derive(Debug, Default)]
pub struct VcpuExits {
    counts: [AtomicU64; ExitReason::ALL.len()],
}

impl VcpuExits {
    pub fn count(&self, reason: ExitReason) {
        self.counts[reason.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self, reason: ExitReason) -> u64 {
        self.counts[reason.index()].load(Ordering::Relaxed)
    }

    pub fn total(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }
}

/// The virtio devices' counter blocks, in the order the devices were added.
#[derive(Debug, Default, Clone)]
pub struct DeviceMetrics {
    pub vsock: Option<Arc<VsockMetrics>>,
    /// Each virtio-fs device's tag and counters.
    pub fs: Vec<(String, Arc<FsMetrics>)>,
    pub pmem: Vec<Arc<PmemMetrics>>,
    pub net: Vec<Arc<NetMetrics>>,
}

#[derive(Debug)]
pub struct VmMetrics {
    /// Exits of each vCPU, indexed by vCPU id.
    pub vcpus: Vec<VcpuExits>,
    /// Guest RAM size.
    pub mem_bytes: u64,
    pub devices: DeviceMetrics,
    /// CLOCK_MONOTONIC (ns) of vCPU 0's first KVM_RUN; 0 until then.
    first_entry_ns: AtomicU64,
}

impl VmMetrics {
    pub fn new(vcpus: u8, mem_bytes: u64, devices: DeviceMetrics) -> Self {
        Self {
            vcpus: (0..vcpus).map(|_| VcpuExits::default()).collect(),
            mem_bytes,
            devices,
            first_entry_ns: AtomicU64::new(0),
        }
    }

    /// Notes that vCPU 0 is entering the guest for the first time.
    pub fn mark_first_entry(&self) {
        let _ = self.first_entry_ns.compare_exchange(
            0,
            monotonic_ns(),
            Ordering::AcqRel,
            Ordering::Acquire,
        );
    }

    /// CLOCK_MONOTONIC (ns) of the guest's first instruction, once it ran.
    pub fn first_entry_ns(&self) -> Option<u64> {
        Some(self.first_entry_ns.load(Ordering::Acquire)).filter(|&ns| ns != 0)
    }

    /// Exits of `reason` over every vCPU.
    pub fn exits(&self, reason: ExitReason) -> u64 {
        self.vcpus.iter().map(|v| v.get(reason)).sum()
    }
}

/// CLOCK_MONOTONIC in nanoseconds: comparable between processes on one
/// host, unlike `Instant`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec we own; CLOCK_MONOTONIC
    // always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exits_are_counted_per_vcpu_and_reason() {
        let m = VmMetrics::new(2, 256 << 20, DeviceMetrics::default());
        m.vcpus[0].count(ExitReason::IoOut);
        m.vcpus[0].count(ExitReason::IoOut);
        m.vcpus[1].count(ExitReason::IoOut);
        m.vcpus[1].count(ExitReason::Hlt);
        assert_eq!(m.exits(ExitReason::IoOut), 3);
        assert_eq!(m.vcpus[1].total(), 2);
        assert_eq!(m.exits(ExitReason::MmioRead), 0);
        let names: std::collections::HashSet<_> =
            ExitReason::ALL.iter().map(|r| r.name()).collect();
        assert_eq!(names.len(), ExitReason::ALL.len(), "names are distinct");
        for (i, r) in ExitReason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i, "ALL is in declaration order");
        }
    }

    #[test]
    fn the_first_entry_is_kept() {
        let m = VmMetrics::new(1, 1 << 20, DeviceMetrics::default());
        assert_eq!(m.first_entry_ns(), None);
        m.mark_first_entry();
        let first = m.first_entry_ns().unwrap();
        assert!(first <= monotonic_ns());
        m.mark_first_entry();
        assert_eq!(m.first_entry_ns(), Some(first));
    }
}
