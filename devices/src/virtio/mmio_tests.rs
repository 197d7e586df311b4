//! Transport tests: register layout and what a misbehaving driver gets.

use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::*;
use crate::virtio::test_utils::{GuestDriver, MEM_SIZE};
use crate::virtio::{status, QueueSnapshot, VirtioInterrupt};

struct Dummy {
    evts: Vec<EventFd>,
    active: bool,
    shm: Option<super::super::ShmRegion>,
    shm_base: Option<GuestAddress>,
}

impl VirtioDevice for Dummy {
    fn device_type(&self) -> u32 {
        42
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[64]
    }
    fn avail_features(&self) -> u64 {
        0
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        data.fill(offset as u8);
    }
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    fn queue_events(&self) -> &[EventFd] {
        &self.evts
    }
    fn activate(&mut self, _ctx: ActivateContext) -> Result<(), crate::virtio::ActivateError> {
        self.active = true;
        Ok(())
    }
    fn reset(&mut self) {
        self.active = false;
    }
    fn active_queue_states(&self) -> Option<Vec<QueueSnapshot>> {
        None
    }
    fn shm_regions(&self) -> Vec<super::super::ShmRegion> {
        self.shm.into_iter().collect()
    }
    fn set_shm_base(&mut self, _id: u8, guest_base: GuestAddress) {
        self.shm_base = Some(guest_base);
    }
    fn shm_base(&self, id: u8) -> Option<GuestAddress> {
        self.shm.filter(|r| r.id == id).and(self.shm_base)
    }
}

fn driver() -> (GuestDriver, Arc<Mutex<Dummy>>) {
    let dev = Arc::new(Mutex::new(Dummy {
        evts: vec![EventFd::new(EFD_NONBLOCK).unwrap()],
        active: false,
        shm: None,
        shm_base: None,
    }));
    (GuestDriver::new(dev.clone(), 64), dev)
}

#[test]
fn identifies_as_a_version_2_virtio_mmio_device() {
    let (mut d, dev) = driver();
    assert_eq!(d.read_reg(0x000), 0x7472_6976);
    assert_eq!(d.read_reg(0x004), 2);
    assert_eq!(d.read_reg(0x008), 42);
    assert_eq!(d.read_reg(0x034), 64);
    d.init();
    assert!(dev.lock().unwrap().active);
    d.kick(0);
    assert_eq!(dev.lock().unwrap().evts[0].read().unwrap(), 1);
    let mut cfg = [0u8; 2];
    d.transport.read(0x104, &mut cfg);
    assert_eq!(cfg, [4, 4]);
    d.write_reg(0x70, 0);
    assert_eq!(d.read_reg(0x70), 0);
    assert!(!dev.lock().unwrap().active);
}

fn to_features_ok(d: &mut GuestDriver) {
    d.write_reg(0x70, status::ACKNOWLEDGE);
    d.write_reg(0x70, status::ACKNOWLEDGE | status::DRIVER);
    d.write_reg(0x24, 1);
    d.write_reg(0x20, 1); // VERSION_1
    d.write_reg(
        0x70,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
    );
}

#[test]
fn bad_queue_size_needs_reset() {
    for size in [3, 128, 0] {
        let (mut d, _) = driver();
        to_features_ok(&mut d);
        d.write_reg(0x38, size);
        assert_ne!(
            d.read_reg(0x70) & status::DEVICE_NEEDS_RESET,
            0,
            "size {size}"
        );
    }
}

#[test]
fn rings_outside_guest_memory_need_reset() {
    let (mut d, dev) = driver();
    to_features_ok(&mut d);
    d.write_reg(0x80, (MEM_SIZE - 16) as u32);
    d.write_reg(0x44, 1);
    assert_eq!(d.read_reg(0x44), 0);
    assert_ne!(d.read_reg(0x70) & status::DEVICE_NEEDS_RESET, 0);
    d.write_reg(0x70, 0x0f);
    assert!(
        !dev.lock().unwrap().active,
        "no activation after NEEDS_RESET"
    );
}

#[test]
fn out_of_order_status_and_odd_accesses_need_reset_without_panicking() {
    let (mut d, dev) = driver();
    d.write_reg(0x70, status::DRIVER_OK);
    assert_ne!(d.read_reg(0x70) & status::DEVICE_NEEDS_RESET, 0);
    d.transport.write(0x70, &[1, 2]);
    d.transport.read(0x3, &mut [0u8; 4]);
    d.write_reg(0x50, 7);
    d.write_reg(0x30, 9);
    d.write_reg(0x38, 64);
    assert!(!dev.lock().unwrap().active);
    d.write_reg(0x70, 0);
    d.init();
    assert!(dev.lock().unwrap().active);
}

#[test]
fn activation_without_ready_queues_needs_reset() {
    let (mut d, dev) = driver();
    to_features_ok(&mut d);
    d.write_reg(0x70, 0x0f);
    assert_ne!(d.read_reg(0x70) & status::DEVICE_NEEDS_RESET, 0);
    assert!(!dev.lock().unwrap().active);
    assert_eq!(d.interrupt.status(), 0);
}

fn read_shm(d: &mut GuestDriver, id: u32) -> (u64, u64) {
    d.write_reg(0x0ac, id);
    let wide =
        |d: &mut GuestDriver, lo| u64::from(d.read_reg(lo)) | (u64::from(d.read_reg(lo + 4)) << 32);
    (wide(d, 0x0b0), wide(d, 0x0b8))
}

#[test]
fn shared_memory_registers_report_the_placed_region() {
    let (mut d, dev) = driver();
    assert_eq!(read_shm(&mut d, 0), (u64::MAX, u64::MAX), "no region");
    dev.lock().unwrap().shm = Some(super::super::ShmRegion {
        id: 0,
        host_addr: 0x7f00_0000_0000,
        len: 0x1_2000_0000,
    });
    assert_eq!(
        read_shm(&mut d, 0),
        (u64::MAX, u64::MAX),
        "a region the VMM has not placed is hidden"
    );
    dev.lock()
        .unwrap()
        .set_shm_base(0, GuestAddress(0x2_4000_0000));
    assert_eq!(read_shm(&mut d, 0), (0x1_2000_0000, 0x2_4000_0000));
    assert_eq!(read_shm(&mut d, 1), (u64::MAX, u64::MAX), "other id");
    assert_eq!(read_shm(&mut d, 0x100), (u64::MAX, u64::MAX), "id > u8");
}

#[test]
fn devices_without_shared_memory_keep_the_default_contract() {
    struct NoShm;
    impl VirtioDevice for NoShm {
        fn device_type(&self) -> u32 {
            1
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[]
        }
        fn avail_features(&self) -> u64 {
            0
        }
        fn read_config(&self, _offset: u64, _data: &mut [u8]) {}
        fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
        fn queue_events(&self) -> &[EventFd] {
            &[]
        }
        fn activate(&mut self, _ctx: ActivateContext) -> Result<(), crate::virtio::ActivateError> {
            Ok(())
        }
        fn reset(&mut self) {}
        fn active_queue_states(&self) -> Option<Vec<QueueSnapshot>> {
            None
        }
    }
    let mut dev = NoShm;
    dev.set_shm_base(0, GuestAddress(0x1000));
    assert!(dev.shm_regions().is_empty());
    assert_eq!(dev.shm_base(0), None);
    let mut d = GuestDriver::new(Arc::new(Mutex::new(dev)), 64);
    assert_eq!(read_shm(&mut d, 0), (u64::MAX, u64::MAX));
}

#[test]
fn an_active_transport_snapshots_its_registers() {
    let (mut d, _dev) = driver();
    d.init();
    // Takes the device's lock once: taking it twice in one expression
    // deadlocked here before.
    let s = d.transport.snapshot();
    assert_eq!(s.device_type, 42);
    assert_ne!(s.status & status::DRIVER_OK, 0);
    assert_eq!(s.queues.len(), 1);
    assert!(s.device_state.is_none());
}
