//! Taking a snapshot of a running VM into a template directory; the VM
//! ends with it.
//!
//! Every vCPU is paused at the top of its run loop (it saves its own state
//! there and its thread ends), then the device thread stops, so nothing
//! changes guest memory or device state while they are written.

use std::sync::Mutex;
use std::thread::JoinHandle;

use super::{kick_until_gone, Vm, VmError};
use crate::snapshot::format::{self, FileIdentity, VmSnapshot};
use crate::snapshot::kvm_state::{VcpuState, VmState};
use crate::snapshot::memory;
use crate::vcpu::VcpuEvent;

fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub(super) fn take(vm: &mut Vm, mut threads: Vec<JoinHandle<()>>) -> Result<(), VmError> {
    let dir = lock(&vm.snapshot_to)
        .take()
        .ok_or_else(|| VmError::Snapshot("no directory was given".into()))?;
    vm.pause.store(true, std::sync::atomic::Ordering::Release);
    kick_until_gone(&mut threads);
    let vcpus = collect_vcpu_states(vm)?;
    if let Some(devices) = vm.device_thread.take() {
        devices.stop();
    }
    let transports = vm.transports.iter().map(|t| lock(t).snapshot()).collect();
    let serial = lock(&vm.serial).snapshot();
    let state = VmSnapshot {
        vcpus,
        vm: VmState::save(&vm.fd).map_err(|e| VmError::Snapshot(e.to_string()))?,
        transports,
        serial,
    };
    let mut header = vm.identity.clone();
    header.memory_checksum = memory::write(&vm.mem, &dir.join(format::MEMORY_FILE))
        .map_err(|e| VmError::Snapshot(e.to_string()))?;
    header.kernel = FileIdentity::of(&header.kernel.path)?;
    if let Some(initrd) = &header.initrd {
        header.initrd = Some(FileIdentity::of(&initrd.path)?);
    }
    for (image, _) in &mut header.devices.pmem {
        *image = FileIdentity::of(&image.path)?;
    }
    format::write(&dir, header, &state)?;
    tracing::info!(dir = %dir.display(), "snapshot written");
    Ok(())
}

/// Each vCPU's saved state, by id; a vCPU that failed to save is an error.
fn collect_vcpu_states(vm: &Vm) -> Result<Vec<VcpuState>, VmError> {
    let mut states: Vec<Option<VcpuState>> = vec![None; vm.identity.vcpus as usize];
    while let Ok(event) = vm.events.try_recv() {
        match event {
            VcpuEvent::Saved { cpu, state } => {
                if let Some(slot) = states.get_mut(cpu as usize) {
                    *slot = Some(*state);
                }
            }
            VcpuEvent::Failed { cpu, reason } => {
                return Err(VmError::Snapshot(format!("vCPU {cpu}: {reason}")))
            }
            _ => {}
        }
    }
    states
        .into_iter()
        .enumerate()
        .map(|(i, s)| s.ok_or_else(|| VmError::Snapshot(format!("vCPU {i} saved no state"))))
        .collect()
}
