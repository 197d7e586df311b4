//! Applying a spec's `linux.resources` to a container's cgroup.
//!
//! Each OCI field maps to a v1 or a v2 file (with runc's conversions where the
//! units differ). A field this code cannot apply is an error naming it, never
//! skipped: a container that believes it is limited must be. The one
//! exception is device rules on v2, which need an eBPF program: they are
//! reported in the log as not enforced.

use std::fs;

use oci_spec::runtime::{LinuxDeviceCgroup, LinuxResources};

use super::cgroup::{write_file, Cgroup, CgroupVersion};
use super::ContainerError;

/// Device rules appended after the spec's: mknod in general, and the nodes
/// every container gets (null, zero, full, random, urandom, tty, ptmx, pts).
const DEFAULT_ALLOWED_DEVICES: [&str; 10] = [
    "c *:* m",
    "b *:* m",
    "c 1:3 rwm",
    "c 1:5 rwm",
    "c 1:7 rwm",
    "c 1:8 rwm",
    "c 1:9 rwm",
    "c 5:0 rwm",
    "c 5:2 rwm",
    "c 136:* rwm",
];

/// v2 cpu.weight for v1 cpu.shares, as runc and crun convert:
/// [2, 262144] -> [1, 10000].
fn cpu_weight(shares: u64) -> u64 {
    1 + (shares.clamp(2, 262_144) - 2) * 9999 / 262_142
}

/// v2 io.weight for v1 blkio.weight: [10, 1000] -> [1, 10000].
fn io_weight(weight: u16) -> u64 {
    1 + (u64::from(weight).clamp(10, 1000) - 10) * 9999 / 990
}

/// v2 memory.swap.max (swap alone) for OCI's swap (memory + swap).
fn v2_swap_max(swap: i64, limit: Option<i64>) -> i64 {
    swap.saturating_sub(limit.unwrap_or(0)).max(0)
}

impl Cgroup {
    /// Applies the spec's resources. Anything set that cannot be applied here
    /// is an error naming the field.
    pub fn apply(&self, resources: &LinuxResources) -> Result<(), ContainerError> {
        let unsupported =
            |field: &str| Err(ContainerError::Unsupported(format!("resources.{field}")));
        if resources
            .hugepage_limits()
            .as_ref()
            .is_some_and(|v| !v.is_empty())
        {
            return unsupported("hugepageLimits");
        }
        if resources.network().is_some() {
            return unsupported("network");
        }
        if resources.rdma().as_ref().is_some_and(|v| !v.is_empty()) {
            return unsupported("rdma");
        }
        if let Some(memory) = resources.memory() {
            self.apply_memory(memory)?;
        }
        if let Some(cpu) = resources.cpu() {
            self.apply_cpu(cpu)?;
        }
        if let Some(pids) = resources.pids() {
            let dir = self.need("pids", "resources.pids")?;
            let limit = if pids.limit() > 0 {
                pids.limit().to_string()
            } else {
                "max".into()
            };
            write_file(&dir.join("pids.max"), &limit)?;
        }
        if let Some(block_io) = resources.block_io() {
            self.apply_block_io(block_io)?;
        }
        if let Some(devices) = resources.devices() {
            self.apply_devices(devices)?;
        }
        if let Some(unified) = resources.unified() {
            let CgroupVersion::V2(_) = self.version else {
                return unsupported("unified (needs cgroup v2)");
            };
            for (key, value) in unified {
                if key.contains('/') || key.starts_with('.') {
                    return Err(ContainerError::InvalidSpec(format!(
                        "resources.unified key {key:?}"
                    )));
                }
                write_file(&self.dirs[0].1.join(key), value)?;
            }
        }
        Ok(())
    }

    fn apply_memory(&self, memory: &oci_spec::runtime::LinuxMemory) -> Result<(), ContainerError> {
        let dir = self.need("memory", "resources.memory")?;
        if memory.kernel().is_some() || memory.kernel_tcp().is_some() {
            return Err(ContainerError::Unsupported(
                "resources.memory.kernel/kernelTCP".into(),
            ));
        }
        if memory.disable_oom_killer() == Some(true) {
            return Err(ContainerError::Unsupported(
                "resources.memory.disableOOMKiller".into(),
            ));
        }
        let limit = memory.limit().filter(|v| *v > 0);
        let swap = memory.swap().filter(|v| *v > 0);
        if self.is_v2() {
            if let Some(limit) = limit {
                write_file(&dir.join("memory.max"), &limit.to_string())?;
            }
            if let Some(swap) = swap {
                // OCI's swap is memory+swap; v2's swap.max is swap alone.
                write_file(
                    &dir.join("memory.swap.max"),
                    &v2_swap_max(swap, limit).to_string(),
                )?;
            }
            if let Some(low) = memory.reservation().filter(|v| *v > 0) {
                write_file(&dir.join("memory.low"), &low.to_string())?;
            }
            if memory.swappiness().is_some() {
                return Err(ContainerError::Unsupported(
                    "resources.memory.swappiness on cgroup v2".into(),
                ));
            }
            return Ok(());
        }
        let limit_file = dir.join("memory.limit_in_bytes");
        let memsw_file = dir.join("memory.memsw.limit_in_bytes");
        match (limit, swap) {
            (Some(limit), Some(swap)) => {
                // memsw must stay >= the limit at every step, so the order
                // depends on whether the limits grow or shrink.
                if fs::write(&limit_file, limit.to_string()).is_err() {
                    write_file(&memsw_file, &swap.to_string())?;
                    write_file(&limit_file, &limit.to_string())?;
                } else {
                    write_file(&memsw_file, &swap.to_string())?;
                }
            }
            (Some(limit), None) => write_file(&limit_file, &limit.to_string())?,
            (None, Some(swap)) => write_file(&memsw_file, &swap.to_string())?,
            (None, None) => {}
        }
        if let Some(reservation) = memory.reservation().filter(|v| *v > 0) {
            write_file(
                &dir.join("memory.soft_limit_in_bytes"),
                &reservation.to_string(),
            )?;
        }
        if let Some(swappiness) = memory.swappiness() {
            write_file(&dir.join("memory.swappiness"), &swappiness.to_string())?;
        }
        Ok(())
    }

    fn apply_cpu(&self, cpu: &oci_spec::runtime::LinuxCpu) -> Result<(), ContainerError> {
        if cpu.cpus().is_some() || cpu.mems().is_some() {
            return Err(ContainerError::Unsupported(
                "resources.cpu.cpus/mems (cpuset)".into(),
            ));
        }
        if cpu.realtime_runtime().is_some() || cpu.realtime_period().is_some() {
            return Err(ContainerError::Unsupported(
                "resources.cpu.realtime*".into(),
            ));
        }
        if cpu.idle().is_some() || cpu.burst().is_some() {
            return Err(ContainerError::Unsupported(
                "resources.cpu.idle/burst".into(),
            ));
        }
        let dir = self.need("cpu", "resources.cpu")?;
        let quota = cpu.quota();
        let period = cpu.period();
        if self.is_v2() {
            if let Some(shares) = cpu.shares().filter(|s| *s > 0) {
                write_file(&dir.join("cpu.weight"), &cpu_weight(shares).to_string())?;
            }
            if quota.is_some() || period.is_some() {
                let quota = match quota {
                    Some(q) if q > 0 => q.to_string(),
                    _ => "max".to_string(),
                };
                write_file(
                    &dir.join("cpu.max"),
                    &format!("{quota} {}", period.unwrap_or(100_000)),
                )?;
            }
            return Ok(());
        }
        if let Some(shares) = cpu.shares().filter(|s| *s > 0) {
            write_file(&dir.join("cpu.shares"), &shares.to_string())?;
        }
        if let Some(period) = period {
            write_file(&dir.join("cpu.cfs_period_us"), &period.to_string())?;
        }
        if let Some(quota) = quota {
            let quota = if quota > 0 { quota } else { -1 };
            write_file(&dir.join("cpu.cfs_quota_us"), &quota.to_string())?;
        }
        Ok(())
    }

    fn apply_block_io(
        &self,
        block_io: &oci_spec::runtime::LinuxBlockIo,
    ) -> Result<(), ContainerError> {
        let per_device = block_io.weight_device().is_some()
            || block_io.throttle_read_bps_device().is_some()
            || block_io.throttle_write_bps_device().is_some()
            || block_io.throttle_read_iops_device().is_some()
            || block_io.throttle_write_iops_device().is_some()
            || block_io.leaf_weight().is_some();
        if per_device {
            return Err(ContainerError::Unsupported(
                "resources.blockIO per-device limits".into(),
            ));
        }
        if let Some(weight) = block_io.weight() {
            if self.is_v2() {
                let dir = self.need("io", "resources.blockIO.weight")?;
                write_file(
                    &dir.join("io.weight"),
                    &format!("default {}", io_weight(weight)),
                )?;
            } else {
                let dir = self.need("blkio", "resources.blockIO.weight")?;
                write_file(&dir.join("blkio.weight"), &weight.to_string())?;
            }
        }
        Ok(())
    }

    fn apply_devices(&self, rules: &[LinuxDeviceCgroup]) -> Result<(), ContainerError> {
        if self.is_v2() {
            // v2 device control needs an eBPF program; not written yet.
            tracing::warn!(
                rules = rules.len(),
                "device cgroup rules are NOT enforced on cgroup v2 (needs eBPF); the VM is the boundary"
            );
            return Ok(());
        }
        let dir = self.need("devices", "resources.devices")?;
        for rule in rules {
            let kind = rule
                .typ()
                .map(|t| t.as_str().to_string())
                .unwrap_or_else(|| "a".into());
            let number = |n: Option<i64>| {
                n.filter(|n| *n >= 0)
                    .map_or("*".to_string(), |n| n.to_string())
            };
            let access = rule.access().clone().unwrap_or_else(|| "rwm".into());
            if access.chars().any(|c| !"rwm".contains(c)) {
                return Err(ContainerError::InvalidSpec(format!(
                    "device rule access {access:?}"
                )));
            }
            let line = if kind == "a" {
                "a".to_string()
            } else {
                format!(
                    "{kind} {}:{} {access}",
                    number(rule.major()),
                    number(rule.minor())
                )
            };
            let file = if rule.allow() {
                "devices.allow"
            } else {
                "devices.deny"
            };
            write_file(&dir.join(file), &line)?;
        }
        // The nodes the engine itself creates stay usable, as runc does.
        for line in DEFAULT_ALLOWED_DEVICES {
            write_file(&dir.join("devices.allow"), line)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_units_convert_to_v2_like_runc() {
        assert_eq!(cpu_weight(2), 1);
        assert_eq!(cpu_weight(1024), 39);
        assert_eq!(cpu_weight(262_144), 10_000);
        assert_eq!(io_weight(10), 1);
        assert_eq!(io_weight(1000), 10_000);
        assert_eq!(v2_swap_max(64 << 20, Some(32 << 20)), 32 << 20);
        assert_eq!(v2_swap_max(32 << 20, Some(32 << 20)), 0);
    }
}
