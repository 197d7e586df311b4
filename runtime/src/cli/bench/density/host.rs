//! Which machine a run measured: CPU, memory, host and guest kernels, the
//! kind of /dev/kvm, and how loaded the host was, for the report's head.
//! On a software-KVM host (kvm_pvm) the guest kernel's code is emulated,
//! which dominates start times; the report says so.

use std::path::Path;

use husk_vmm::HostKvm;

pub struct HostInfo {
    pub cpu: String,
    pub cpus: usize,
    pub mem_total_mib: u64,
    pub host_kernel: String,
    pub guest_kernel: String,
    pub kvm: HostKvm,
}

impl HostInfo {
    pub fn read(guest_kernel: &Path) -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split(':').nth(1))
            .map_or_else(|| "unknown CPU".into(), |m| m.trim().to_string());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_total_kib: u64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0);
        let host_kernel = nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_else(|_| "unknown".into());
        Self {
            cpu,
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            mem_total_mib: mem_total_kib >> 10,
            host_kernel,
            guest_kernel: kernel_version(guest_kernel)
                .unwrap_or_else(|| format!("unknown ({})", guest_kernel.display())),
            kvm: HostKvm::detect(),
        }
    }

    /// The report's machine lines.
    pub fn describe(&self) -> Vec<String> {
        let kvm = match self.kvm {
            HostKvm::Hardware => "hardware (VT-x/AMD-V)".to_string(),
            HostKvm::SoftwarePvm => "software (kvm_pvm): guest kernel code is emulated, so start \
                 times here are dominated by the emulated guest kernel and are not comparable \
                 with hardware KVM; memory figures are (the kernel's page accounting is the same)"
                .to_string(),
        };
        vec![
            format!(
                "machine: {}, {} CPUs, {} MiB RAM",
                self.cpu, self.cpus, self.mem_total_mib
            ),
            format!(
                "host kernel {}; guest kernel {}",
                self.host_kernel, self.guest_kernel
            ),
            format!("/dev/kvm: {kvm}"),
        ]
    }
}

/// `Linux version X ...` from the kernel image: the release (X).
fn kernel_version(path: &Path) -> Option<String> {
    let bytes = std::fs::read(path).ok()?;
    let needle = b"Linux version ";
    let at = bytes.windows(needle.len()).position(|w| w == needle)?;
    let rest = &bytes[at + needle.len()..];
    let end = rest
        .iter()
        .position(|&b| b == b' ' || b == 0 || b == b'\n')?;
    Some(String::from_utf8_lossy(&rest[..end]).into_owned())
}

/// The 1, 5 and 15 minute load averages.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_kernel_release_in_an_image() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vmlinux");
        let mut image = vec![0u8; 5000];
        image.extend_from_slice(b"Linux version 6.12.48-husk (root@b) #1 SMP\n\0");
        image.extend_from_slice(&[0u8; 100]);
        std::fs::write(&path, image).unwrap();
        assert_eq!(kernel_version(&path).as_deref(), Some("6.12.48-husk"));
        std::fs::write(&path, b"no version here").unwrap();
        assert_eq!(kernel_version(&path), None);
    }
}
