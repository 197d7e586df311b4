//! The CPUID each vCPU reports: what KVM supports, made per-vCPU and filtered.
//!
//! Starts from KVM_GET_SUPPORTED_CPUID, sets the APIC id and topology leaves
//! for this vCPU, marks the hypervisor bit and applies a compatibility
//! profile's hidden features.

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

use super::profile::{CompatProfile, CpuidReg};

const LEAF_FEATURES: u32 = 1;
const LEAF_EXT_TOPOLOGY: u32 = 0xb;
const LEAF_V2_EXT_TOPOLOGY: u32 = 0x1f;
const LEAF_AMD_SIZE: u32 = 0x8000_0008;
const LEAF_AMD_TOPOLOGY: u32 = 0x8000_001e;
const ECX_HYPERVISOR: u32 = 1 << 31;
const EDX_HTT: u32 = 1 << 28;

fn reg_mut(entry: &mut kvm_cpuid_entry2, reg: CpuidReg) -> &mut u32 {
    match reg {
        CpuidReg::Eax => &mut entry.eax,
        CpuidReg::Ebx => &mut entry.ebx,
        CpuidReg::Ecx => &mut entry.ecx,
        CpuidReg::Edx => &mut entry.edx,
    }
}

/// Adjusts `cpuid` for vCPU `id` of `count`, applying `profile` if given.
pub fn filter(cpuid: &mut CpuId, id: u8, count: u8, profile: Option<&CompatProfile>) {
    // Bits needed to number `count` logical CPUs in an APIC id.
    let shift = (count as u32).next_power_of_two().trailing_zeros();
    for entry in cpuid.as_mut_slice() {
        match entry.function {
            LEAF_FEATURES => {
                entry.ebx =
                    (entry.ebx & 0x0000_ffff) | ((id as u32) << 24) | ((count as u32) << 16);
                entry.ecx |= ECX_HYPERVISOR;
                if count > 1 {
                    entry.edx |= EDX_HTT;
                }
            }
            LEAF_EXT_TOPOLOGY | LEAF_V2_EXT_TOPOLOGY => {
                entry.edx = id as u32;
                // One thread per core; all vCPUs are cores of one package.
                match entry.index {
                    0 => (entry.eax, entry.ebx, entry.ecx) = (0, 1, 0x100),
                    1 => (entry.eax, entry.ebx, entry.ecx) = (shift, count as u32, 0x201),
                    n => (entry.eax, entry.ebx, entry.ecx) = (0, 0, n),
                }
            }
            LEAF_AMD_SIZE => entry.ecx = (entry.ecx & !0xff) | (count as u32 - 1),
            LEAF_AMD_TOPOLOGY => {
                entry.eax = id as u32;
                entry.ebx = (entry.ebx & !0xffff) | id as u32;
            }
            _ => {}
        }
        if let Some(p) = profile {
            if p.zeroed_leaves.contains(&entry.function) {
                (entry.eax, entry.ebx, entry.ecx, entry.edx) = (0, 0, 0, 0);
            }
            let (function, index) = (entry.function, entry.index);
            for hidden in p
                .hidden_cpuid
                .iter()
                .filter(|h| h.leaf == function && h.subleaf == index)
            {
                *reg_mut(entry, hidden.reg) &= !(1u32 << hidden.bit);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32, ecx: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ecx,
            eax: 0xffff_ffff,
            ebx: 0xffff_ffff,
            edx: 0,
            ..Default::default()
        }
    }

    #[test]
    fn sets_apic_id_and_hides_profile_bits() {
        let mut xsave_variants = entry(0xd, 1, 0);
        xsave_variants.eax = 0x1f; // xsaveopt xsavec xgetbv1 xsaves, xfd
        let mut cpuid = CpuId::from_entries(&[
            entry(1, 0, 1 << 13 | 1 << 26 | 1),
            entry(0xd, 0, 7),
            entry(0xb, 1, 0),
            xsave_variants,
        ])
        .unwrap();
        filter(&mut cpuid, 1, 2, Some(&CompatProfile::software_kvm()));
        let e = cpuid.as_slice();
        assert_eq!(e[0].ebx >> 24, 1, "APIC id");
        assert_eq!((e[0].ebx >> 16) & 0xff, 2, "logical count");
        assert_eq!(
            e[0].ecx,
            1 << 26 | 1 | ECX_HYPERVISOR,
            "cx16 hidden, xsave and sse3 kept"
        );
        assert_eq!(e[1].ecx, 7, "xsave leaf kept: the VMM completes xsave");
        assert_eq!(e[3].eax, 0x10, "only plain xsave/xrstor advertised");
        assert_eq!((e[2].ebx, e[2].edx), (2, 1));
    }

    #[test]
    fn without_a_profile_features_stay() {
        let mut cpuid = CpuId::from_entries(&[entry(1, 0, 1 << 13 | 1 << 26)]).unwrap();
        filter(&mut cpuid, 0, 1, None);
        assert_eq!(cpuid.as_slice()[0].ecx, 1 << 13 | 1 << 26 | ECX_HYPERVISOR);
    }
}
