//! A VM started from a template: guest RAM mapped privately from its memory
//! file, the same devices in the same places with fresh host backends (the
//! caller's vsock socket, virtio-fs share and pmem image), and every vCPU,
//! the interrupt controllers, the PIT, kvmclock, the transports and the
//! serial console put back as the snapshot left them.
//!
//! Everything that must match is checked before anything runs, each with
//! an error naming what differs. The vsock device then parks the guest's
//! connections the snapshot saved, for host clients to take over, or, when
//! it saved none, tells the guest its old connections are gone (transport
//! reset). Net devices keep the template's MAC and MTU (the guest read
//! them once, at probe) and get the caller's taps, or none.

use std::path::Path;
use std::sync::Mutex;

use vm_memory::GuestAddress;

use super::parts::Machine;
use super::{Vm, VmConfig, VmError};
use crate::snapshot::format::{NetLayout, Template, TemplateHeader};
use crate::snapshot::memory;

fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub(super) fn restore(config: &VmConfig, dir: &Path) -> Result<Vm, VmError> {
    let mut phases = Phases::start();
    let template = Template::open(dir)?;
    check_config(&template, config)?;
    let config = &with_template_macs(config, &template.header.devices.net);
    phases.mark("open and check");
    let h = &template.header;
    memory::verify(&template.memory_path(), h.mem_bytes, h.memory_checksum)
        .map_err(crate::snapshot::TemplateError::from)?;
    phases.mark("verify memory");
    let ranges: Vec<(GuestAddress, u64)> = h
        .ram_ranges
        .iter()
        .map(|&(a, l)| (GuestAddress(a), l))
        .collect();
    if ranges != crate::memory::ram_ranges(h.mem_bytes) {
        return Err(VmError::Restore(format!(
            "the template's RAM ranges {:?} are not a guest of {} bytes",
            h.ram_ranges, h.mem_bytes
        )));
    }
    let mem = memory::map_private(&template.memory_path(), &ranges)
        .map_err(crate::snapshot::TemplateError::from)?;
    let mut machine = Machine::new(config, mem, &h.cmdline)?;
    phases.mark("VM, memory and devices");
    template.require(
        "host CPUID",
        &h.host_cpuid_sha256,
        &machine.cpuid_digest(h.vcpus),
    )?;
    check_devices(&machine, h)?;
    let state = &template.state;
    let wired = machine.wire(config, Some(&state.serial))?;
    let mut vcpus = Vec::with_capacity(state.vcpus.len());
    for (id, saved) in state.vcpus.iter().enumerate() {
        let id = id as u8;
        let vcpu = machine.vcpu(&wired, config, id)?;
        saved
            .restore(&vcpu.fd, &machine.cpuid(id, h.vcpus))
            .map_err(|e| VmError::Restore(format!("vCPU {id}: {e}")))?;
        vcpus.push(vcpu);
    }
    state
        .vm
        .restore(&machine.fd)
        .map_err(|e| VmError::Restore(e.to_string()))?;
    phases.mark("vCPU and VM state");
    let transports = machine.devices.transports();
    if transports.len() != state.transports.len() {
        return Err(VmError::Restore(format!(
            "the template has {} virtio devices, this VM {}",
            state.transports.len(),
            transports.len()
        )));
    }
    for (i, (t, s)) in transports.iter().zip(&state.transports).enumerate() {
        lock(t)
            .restore(s)
            .map_err(|e| VmError::Restore(format!("virtio device {i}: {e}")))?;
    }
    phases.mark("devices' state");
    tracing::info!(template = %dir.display(), phases = %phases, "VM restored from a template");
    machine.into_vm(wired, vcpus, template.header.clone())
}

/// The devices landed as the template's did: pmem images at the same bases,
/// net cards showing the same MACs and MTUs.
fn check_devices(machine: &Machine, h: &TemplateHeader) -> Result<(), VmError> {
    let bases: Vec<u64> = h.devices.pmem.iter().map(|(_, b)| *b).collect();
    if bases != machine.devices.pmem_bases {
        return Err(VmError::Restore(format!(
            "pmem images land at {:x?} here, the template had them at {bases:x?}",
            machine.devices.pmem_bases
        )));
    }
    let nets: Vec<NetLayout> = machine
        .devices
        .nets
        .iter()
        .map(|n| NetLayout {
            mac: n.mac,
            mtu: n.mtu,
        })
        .collect();
    if nets != h.devices.net {
        return Err(VmError::Restore(format!(
            "net devices are {nets:?} here, the template had {:?}",
            h.devices.net
        )));
    }
    Ok(())
}

/// How long each step of a restore took, for the log (and for deciding
/// whether a pool of pre-made VMs would pay).
struct Phases {
    last: std::time::Instant,
    done: Vec<(&'static str, f64)>,
}

impl Phases {
    fn start() -> Self {
        Self {
            last: std::time::Instant::now(),
            done: Vec::new(),
        }
    }

    fn mark(&mut self, what: &'static str) {
        let now = std::time::Instant::now();
        self.done
            .push((what, now.duration_since(self.last).as_secs_f64() * 1e3));
        self.last = now;
    }
}

impl std::fmt::Display for Phases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self
            .done
            .iter()
            .map(|(w, ms)| format!("{w} {ms:.1} ms"))
            .collect();
        f.write_str(&parts.join(", "))
    }
}

/// The caller's VM must be the template's: memory, vCPUs, the same
/// devices, the same pmem images and (when named) the same kernel.
fn check_config(t: &Template, config: &VmConfig) -> Result<(), VmError> {
    let h = &t.header;
    let mib = |b: u64| format!("{} MiB", b >> 20);
    t.require("memory size", &mib(h.mem_bytes), &mib(config.mem_bytes))?;
    t.require("vCPU count", &h.vcpus.to_string(), &config.cpus.to_string())?;
    let cid = |c: Option<u64>| c.map_or("none".to_string(), |c| format!("CID {c}"));
    t.require(
        "vsock device",
        &cid(h.devices.vsock_cid),
        &cid(config.vsock.as_ref().map(|v| v.cid)),
    )?;
    let tags: Vec<&str> = config.fs.iter().map(|f| f.tag.as_str()).collect();
    t.require(
        "virtio-fs tags",
        &h.devices.fs_tags.join(","),
        &tags.join(","),
    )?;
    if config.fs.iter().any(|f| f.dax_window.is_some()) {
        return Err(VmError::Restore(
            "templates do not carry virtio-fs DAX windows".into(),
        ));
    }
    t.require(
        "pmem image count",
        &h.devices.pmem.len().to_string(),
        &config.pmem.len().to_string(),
    )?;
    for (spec, (made_with, _)) in config.pmem.iter().zip(&h.devices.pmem) {
        t.require_file("pmem image", made_with, &spec.path)?;
    }
    if !config.kernel.as_os_str().is_empty() {
        t.require_file("kernel", &h.kernel, &config.kernel)?;
    }
    check_net(t, config)
}

/// The same net devices, each with the template's MTU and, when the caller
/// names one, the template's MAC: the guest keeps what it read at probe.
fn check_net(t: &Template, config: &VmConfig) -> Result<(), VmError> {
    let made_with = &t.header.devices.net;
    t.require(
        "net device count",
        &made_with.len().to_string(),
        &config.net.len().to_string(),
    )?;
    for (spec, saved) in config.net.iter().zip(made_with) {
        if let Some(mac) = spec.mac {
            t.require("net device MAC", &saved.mac.to_string(), &mac.to_string())?;
        }
        t.require(
            "net device MTU",
            &saved.mtu.to_string(),
            &spec.mtu.to_string(),
        )?;
    }
    Ok(())
}

/// `config` with every net device's MAC set to the template's.
fn with_template_macs(config: &VmConfig, made_with: &[NetLayout]) -> VmConfig {
    let mut config = config.clone();
    for (spec, saved) in config.net.iter_mut().zip(made_with) {
        spec.mac = Some(saved.mac);
    }
    config
}
