//! A tiny real-mode guest proves that port and MMIO accesses reach the right
//! bus device with the right offsets, sizes and data, and that the values the
//! devices return reach the guest.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::channel;
use std::sync::{Arc, Mutex};

use husk_devices::bus::{Bus, BusDevice};
use husk_vmm::kvm_setup;
use husk_vmm::metrics::{DeviceMetrics, ExitReason, VmMetrics};
use husk_vmm::vcpu::Vcpu;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Access {
    Read(u64, usize),
    Write(u64, Vec<u8>),
}

/// Records accesses; reads return `reply` bytes.
struct Probe {
    log: Arc<Mutex<Vec<Access>>>,
    reply: Vec<u8>,
    stop_on_write: Option<Arc<AtomicBool>>,
}

impl BusDevice for Probe {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.log
            .lock()
            .unwrap()
            .push(Access::Read(offset, data.len()));
        for (d, r) in data.iter_mut().zip(self.reply.iter().cycle()) {
            *d = *r;
        }
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        self.log
            .lock()
            .unwrap()
            .push(Access::Write(offset, data.to_vec()));
        if let Some(stop) = &self.stop_on_write {
            stop.store(true, Ordering::Release);
        }
    }
}

const GUEST: &str = r#"
.code16
.globl _start
_start:
    mov $0x3f0, %dx
    mov $0x5a, %al
    out %al, %dx            # PIO byte write, offset 0
    mov $0x1234, %ax
    out %ax, %dx            # PIO word write, offset 0
    in %dx, %al             # PIO read: the device answers 0xa5
    mov $0x2000, %bx
    mov %bx, %ds
    mov %al, (0x8000)       # MMIO write of the value read, at 0x28000
    mov (0x8010), %ax       # MMIO word read at 0x28010: the device answers 0xbeef
    mov $0x3f1, %dx
    out %ax, %dx            # PIO word write of what MMIO returned, offset 1
    mov $0xf4, %dx
    out %al, %dx            # done
1:  jmp 1b
"#;

#[test]
fn pio_and_mmio_reach_their_bus_devices() {
    if !common::kvm_or_skip("pio_and_mmio_reach_their_bus_devices") {
        return;
    }
    let dir = common::temp_dir("pio-mmio");
    let code = common::assemble_flat(&dir, GUEST, 0x1000);

    let (_kvm, vm) = kvm_setup::create_vm().unwrap();
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
    kvm_setup::register_memory(&vm, &mem).unwrap();
    mem.write_slice(&code, GuestAddress(0x1000)).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let pio_log = Arc::new(Mutex::new(Vec::new()));
    let mmio_log = Arc::new(Mutex::new(Vec::new()));
    let mut pio = Bus::new();
    let probe = |log: &Arc<Mutex<Vec<Access>>>, reply: &[u8], stop: Option<Arc<AtomicBool>>| {
        Arc::new(Mutex::new(Probe {
            log: log.clone(),
            reply: reply.to_vec(),
            stop_on_write: stop,
        }))
    };
    pio.insert(probe(&pio_log, &[0xa5], None), 0x3f0, 2)
        .unwrap();
    pio.insert(
        probe(&Arc::new(Mutex::new(Vec::new())), &[], Some(stop.clone())),
        0xf4,
        1,
    )
    .unwrap();
    let mut mmio = Bus::new();
    mmio.insert(probe(&mmio_log, &[0xef, 0xbe], None), 0x28000, 0x100)
        .unwrap();

    let fd = vm.create_vcpu(0).unwrap();
    let mut sregs = fd.get_sregs().unwrap();
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    fd.set_sregs(&sregs).unwrap();
    let regs = kvm_bindings::kvm_regs {
        rip: 0x1000,
        rflags: 2,
        ..Default::default()
    };
    fd.set_regs(&regs).unwrap();

    let (tx, rx) = channel();
    let metrics = Arc::new(VmMetrics::new(2, 0, DeviceMetrics::default()));
    let vcpu = Vcpu {
        id: 1, // not the boot vCPU: no first-entry event
        fd,
        pio: Arc::new(pio),
        mmio: Arc::new(mmio),
        mem,
        emulate_missing: false,
        on_first_entry: None,
        stop: stop.clone(),
        pause: Arc::new(std::sync::atomic::AtomicBool::new(false)),
        msr_index: Arc::new(Vec::new()),
        events: tx,
        wake: vmm_sys_util::eventfd::EventFd::new(0).unwrap(),
        metrics: metrics.clone(),
        // It runs on the test's own thread.
        seccomp: None,
    };
    vcpu.run();
    assert!(stop.load(Ordering::Acquire), "guest reached its end marker");
    assert!(
        rx.try_recv().is_err(),
        "no failure event: {:?}",
        rx.try_recv()
    );

    assert_eq!(
        *pio_log.lock().unwrap(),
        vec![
            Access::Write(0, vec![0x5a]),
            Access::Write(0, vec![0x34, 0x12]),
            Access::Read(0, 1),
            Access::Write(1, vec![0xef, 0xbe]),
        ]
    );
    assert_eq!(
        *mmio_log.lock().unwrap(),
        vec![Access::Write(0, vec![0xa5]), Access::Read(0x10, 2)]
    );
    // Every access was one exit, counted by reason on vCPU 1.
    let exits = &metrics.vcpus[1];
    assert_eq!(
        exits.get(ExitReason::IoOut),
        4,
        "3 probe writes and the end marker"
    );
    assert_eq!(exits.get(ExitReason::IoIn), 1);
    assert_eq!(exits.get(ExitReason::MmioWrite), 1);
    assert_eq!(exits.get(ExitReason::MmioRead), 1);
    assert_eq!(metrics.vcpus[0].total(), 0);
    std::fs::remove_dir_all(dir).unwrap();
}
