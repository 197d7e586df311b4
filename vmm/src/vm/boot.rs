//! A VM booting a kernel: fresh guest RAM, the kernel and initrd loaded,
//! boot parameters and tables written, the boot vCPU at the kernel's entry.

use std::time::{SystemTime, UNIX_EPOCH};

use vm_memory::{GuestAddress, GuestMemory, GuestMemoryMmap, GuestMemoryRegion};

use super::parts::Machine;
use super::{Vm, VmConfig, VmError};
use crate::boot::cmdline::{KernelCmdline, DEFAULT_CMDLINE};
use crate::boot::kernel::{self, KernelEntry, LoadedKernel};
use crate::boot::{cpu_state, mptable, params};
use crate::kvm_setup;
use crate::memory;
use crate::snapshot::format::{
    DeviceLayout, FileIdentity, NetLayout, TemplateHeader, FORMAT_VERSION, HUSK_VERSION,
};

pub(super) fn boot(config: &VmConfig) -> Result<Vm, VmError> {
    // Mapping validates the size first, so a bad --mem is reported before KVM is touched.
    let mem = memory::create_guest_memory(config.mem_bytes)?;
    let base = config.cmdline.as_deref().unwrap_or(DEFAULT_CMDLINE);
    let mut machine = Machine::new(config, mem, base)?;
    let loaded = kernel::load_kernel(&machine.mem, &config.kernel)?;
    let boot_info = write_boot_state(config, &machine.mem, &loaded, &machine.cmdline)?;
    let wired = machine.wire(config, None)?;
    let mut vcpus = Vec::with_capacity(config.cpus as usize);
    for id in 0..config.cpus {
        let vcpu = machine.vcpu(&wired, config, id)?;
        let boot = (id == 0).then_some((&loaded.entry, boot_info));
        kvm_setup::configure_vcpu(
            &vcpu.fd,
            id,
            config.cpus,
            &machine.supported_cpuid,
            machine.profile.as_ref(),
            boot,
        )?;
        vcpus.push(vcpu);
    }
    let identity = identity(config, &machine);
    machine.into_vm(wired, vcpus, identity)
}

/// The initrd, the MP table, the boot parameters (PVH start info or zero
/// page, with the final command line) and the boot page tables; returns
/// the boot information's address for the boot vCPU.
fn write_boot_state(
    config: &VmConfig,
    mem: &GuestMemoryMmap,
    loaded: &LoadedKernel,
    cmdline: &KernelCmdline,
) -> Result<GuestAddress, VmError> {
    let initrd = match &config.initrd {
        Some(path) => Some(kernel::load_initrd(
            mem,
            path,
            loaded.end,
            config.mem_bytes,
        )?),
        None => None,
    };
    mptable::setup(mem, config.cpus)?;
    let parsed = cmdline.as_cmdline();
    let boot_info = match &loaded.entry {
        KernelEntry::Pvh(_) => params::write_pvh(mem, config.mem_bytes, parsed, initrd)?,
        KernelEntry::Linux64 { header, .. } => {
            params::write_zero_page(mem, config.mem_bytes, parsed, initrd, *header)?
        }
    };
    cpu_state::write_tables(mem, &loaded.entry).map_err(VmError::BootTables)?;
    Ok(boot_info)
}

/// What a template of this VM will say it is. File digests are taken only
/// when a snapshot is written (`identity` is cheap at boot).
fn identity(config: &VmConfig, machine: &Machine) -> TemplateHeader {
    let unhashed = |p: &std::path::Path| FileIdentity {
        path: p.to_path_buf(),
        size: 0,
        sha256: String::new(),
    };
    let pmem = config
        .pmem
        .iter()
        .zip(&machine.devices.pmem_bases)
        .map(|(spec, &base)| (unhashed(&spec.path), base))
        .collect();
    TemplateHeader {
        format_version: FORMAT_VERSION,
        husk_version: HUSK_VERSION.into(),
        kernel: unhashed(&config.kernel),
        initrd: config.initrd.as_deref().map(unhashed),
        mem_bytes: config.mem_bytes,
        ram_ranges: machine
            .mem
            .iter()
            .map(|r| (r.start_addr().0, r.len()))
            .collect(),
        vcpus: config.cpus,
        host_cpuid_sha256: machine.cpuid_digest(config.cpus),
        cmdline: machine.cmdline.render(),
        devices: DeviceLayout {
            vsock_cid: config.vsock.as_ref().map(|v| v.cid),
            fs_tags: config.fs.iter().map(|f| f.tag.clone()).collect(),
            pmem,
            net: machine
                .devices
                .nets
                .iter()
                .map(|n| NetLayout {
                    mac: n.mac,
                    mtu: n.mtu,
                })
                .collect(),
        },
        state_sha256: String::new(),
        memory_checksum: 0,
        created_unix_secs: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    }
}
