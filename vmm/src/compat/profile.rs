//! Host compatibility profiles.
//!
//! Some hosts expose /dev/kvm without hardware virtualization: the `kvm_pvm`
//! module runs guest user code natively but guest kernel code through KVM's
//! instruction emulator, which cannot emulate every instruction a stock kernel
//! uses (cmpxchg16b, xsave/xrstor, clac/stac, SSE4+/AVX, popcnt, ...). On such
//! a host husk hides those features from the guest and adds kernel command-line
//! flags so the guest never executes them. On hardware KVM nothing changes.

use std::fmt;
use std::path::Path;

/// What kind of /dev/kvm this host has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostKvm {
    Hardware,
    /// KVM backed by the `kvm_pvm` software module.
    SoftwarePvm,
}

impl HostKvm {
    /// Detects the host by the loaded KVM modules.
    pub fn detect() -> Self {
        Self::detect_in(Path::new("/sys/module"))
    }

    fn detect_in(sys_module: &Path) -> Self {
        if sys_module.join("kvm_pvm").exists() {
            HostKvm::SoftwarePvm
        } else {
            HostKvm::Hardware
        }
    }
}

/// The user's choice for the compatibility profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CompatMode {
    /// Apply the profile when the host needs it.
    #[default]
    Auto,
    On,
    Off,
}

impl std::str::FromStr for CompatMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "on" => Ok(Self::On),
            "off" => Ok(Self::Off),
            other => Err(format!(
                "unknown compat mode {other:?}: expected auto, on or off"
            )),
        }
    }
}

/// A CPUID feature bit to hide: (leaf, subleaf, register, bit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuidBit {
    pub leaf: u32,
    pub subleaf: u32,
    pub reg: CpuidReg,
    pub bit: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuidReg {
    Eax,
    Ebx,
    Ecx,
    Edx,
}

const fn bits(
    leaf: u32,
    subleaf: u32,
    reg: CpuidReg,
    list: &'static [u8],
) -> (u32, u32, CpuidReg, &'static [u8]) {
    (leaf, subleaf, reg, list)
}

/// Features the software-KVM emulator cannot run at CPL0 (or that make the
/// kernel pick code paths it cannot run).
const SOFTWARE_KVM_HIDDEN: &[(u32, u32, CpuidReg, &[u8])] = &[
    // pclmulqdq ssse3 fma cx16 sse4.1 sse4.2 movbe popcnt aes avx f16c rdrand
    // (xsave stays: the VMM completes xsave/xrstor, see `insn_fallback`)
    bits(
        1,
        0,
        CpuidReg::Ecx,
        &[1, 9, 12, 13, 19, 20, 22, 23, 25, 28, 29, 30],
    ),
    // fsgsbase bmi1 avx2 smep bmi2 avx512f/dq rdseed adx smap avx512ifma/pf/er/cd sha avx512bw/vl
    bits(
        7,
        0,
        CpuidReg::Ebx,
        &[
            0, 3, 5, 7, 8, 16, 17, 18, 19, 20, 21, 26, 27, 28, 29, 30, 31,
        ],
    ),
    // avx512vbmi umip pku ospke avx512vbmi2 gfni vaes vpclmulqdq avx512vnni/bitalg/vpopcntdq
    bits(7, 0, CpuidReg::Ecx, &[1, 2, 3, 4, 6, 8, 9, 10, 11, 12, 14]),
    // avx512 4vnniw/4fmaps/vp2intersect, amx-bf16, avx512fp16, amx-tile/int8
    bits(7, 0, CpuidReg::Edx, &[2, 3, 8, 22, 23, 24, 25]),
    // avx-vnni avx512bf16
    bits(7, 1, CpuidReg::Eax, &[4, 5]),
    // xsaveopt xsavec xgetbv1 xsaves: only plain xsave/xrstor are completed
    bits(0xd, 1, CpuidReg::Eax, &[0, 1, 2, 3]),
    // abm(lzcnt) sse4a xop fma4 tbm
    bits(0x8000_0001, 0, CpuidReg::Ecx, &[5, 6, 11, 16, 21]),
    // KVM PV features that make hypercalls: pv_unhalt (kick), pv_send_ipi,
    // pv_sched_yield. Guest kernel code is emulated here, and KVM's
    // emulator "fixes" a hypercall instruction by rewriting it in guest
    // memory; once the kernel has write-protected its text, that write
    // faults (seen: an oops at a `vmcall` in the NMI-IPI path of a loaded
    // 2-vCPU guest). Without them the guest uses plain APIC writes and halts.
    bits(0x4000_0001, 0, CpuidReg::Eax, &[7, 11, 13]),
];

/// Kernel command-line flags that keep a stock kernel off emulator gaps, and
/// turn on husk's guest-kernel fallback for user system calls (see
/// guest-kernel-config/patches/0001-*). They carry most of the load: on
/// kvm_pvm the guest's CPUID leaf 1 does not reflect KVM_SET_CPUID2. XSAVE
/// stays on (guest user code uses the host's AVX/AVX-512 natively, and only
/// XSAVE keeps those registers per task; `noxsave` leaked them between
/// processes), but only plain `xsave`/`xrstor`, which the VMM completes
/// (`xsave_fallback`): `noxsaveopt noxsaves clearcpuid=xsavec,xgetbv1` keep
/// the kernel off the variants. The kernel reads `nopti`, `noxsaveopt` and
/// `noxsaves` straight from the command line and still passes them to /init
/// as arguments. `husk.sched_slice_ms=100` asks the agent for a 100 ms
/// scheduler slice: a tick that switches tasks costs the emulated kernel
/// more than the tick period (see the agent's `sched_slice`).
/// `sysctl.vm.stat_interval=10` folds the per-CPU VM counters every 10 s
/// instead of every second: that fold (vmstat_shepherd) was the most
/// frequent work item waking an idle guest, whose every wakeup costs
/// thousands of emulated instructions.
const SOFTWARE_KVM_CMDLINE: &str =
    "noxsaveopt noxsaves nopti clearcpuid=smap,smep,umip,pku,popcnt,xsavec,xgetbv1 mitigations=off husk.syscall_fault=1 husk.sched_slice_ms=100 sysctl.vm.stat_interval=10";

/// A named set of guest adjustments for one kind of host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompatProfile {
    pub name: &'static str,
    pub hidden_cpuid: Vec<CpuidBit>,
    /// Whole CPUID leaves to report as empty (XSAVE state enumeration).
    pub zeroed_leaves: Vec<u32>,
    pub cmdline: &'static str,
    /// Complete in the VMM the instructions the host's emulator refuses
    /// (`int3`, `fwait`, `xsave`, `xrstor`; see `insn_fallback` and
    /// `xsave_fallback`).
    pub emulate_missing: bool,
}

impl CompatProfile {
    pub fn software_kvm() -> Self {
        let hidden_cpuid = SOFTWARE_KVM_HIDDEN
            .iter()
            .flat_map(|&(leaf, subleaf, reg, list)| {
                list.iter().map(move |&bit| CpuidBit {
                    leaf,
                    subleaf,
                    reg,
                    bit,
                })
            })
            .collect();
        Self {
            name: "software-kvm",
            hidden_cpuid,
            zeroed_leaves: vec![],
            cmdline: SOFTWARE_KVM_CMDLINE,
            emulate_missing: true,
        }
    }

    /// The profile to use for `mode` on `host`, if any.
    pub fn select(mode: CompatMode, host: HostKvm) -> Option<Self> {
        match (mode, host) {
            (CompatMode::On, _) | (CompatMode::Auto, HostKvm::SoftwarePvm) => {
                Some(Self::software_kvm())
            }
            (CompatMode::Off, _) | (CompatMode::Auto, HostKvm::Hardware) => None,
        }
    }
}

impl fmt::Display for CompatProfile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({} CPUID features hidden, cmdline += \"{}\")",
            self.name,
            self.hidden_cpuid.len(),
            self.cmdline
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_the_software_module() {
        let dir = std::env::temp_dir().join(format!("husk-compat-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("kvm")).unwrap();
        assert_eq!(HostKvm::detect_in(&dir), HostKvm::Hardware);
        std::fs::create_dir_all(dir.join("kvm_pvm")).unwrap();
        assert_eq!(HostKvm::detect_in(&dir), HostKvm::SoftwarePvm);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn mode_and_host_select_the_profile() {
        assert!(CompatProfile::select(CompatMode::Auto, HostKvm::Hardware).is_none());
        assert!(CompatProfile::select(CompatMode::Off, HostKvm::SoftwarePvm).is_none());
        let p = CompatProfile::select(CompatMode::Auto, HostKvm::SoftwarePvm).unwrap();
        assert_eq!(p.name, "software-kvm");
        assert!(CompatProfile::select(CompatMode::On, HostKvm::Hardware).is_some());
        // cx16 (leaf 1 ECX bit 13) is hidden; xsave (bit 26) is not, its
        // optimised/compacted/supervisor variants (leaf 0xD.1 EAX) are.
        let hidden = |leaf, subleaf, reg, bit| {
            p.hidden_cpuid.contains(&CpuidBit {
                leaf,
                subleaf,
                reg,
                bit,
            })
        };
        assert!(hidden(1, 0, CpuidReg::Ecx, 13));
        assert!(!hidden(1, 0, CpuidReg::Ecx, 26));
        assert!((0..4).all(|bit| hidden(0xd, 1, CpuidReg::Eax, bit)));
        let words: Vec<&str> = p.cmdline.split(' ').collect();
        assert!(!words.contains(&"noxsave"), "{}", p.cmdline);
        assert!(words.contains(&"noxsaves") && words.contains(&"noxsaveopt"));
        assert_eq!("on".parse::<CompatMode>(), Ok(CompatMode::On));
        assert!("maybe".parse::<CompatMode>().is_err());
    }
}
