//! The pmem device driven by a scripted guest driver and the real event loop.

use std::fs::File;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use event_manager::{EventManager, SubscriberOps};
use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;

use super::*;
use crate::virtio::test_utils::{GuestDriver, MEM_SIZE};

const START: u64 = 0x1_0000_0000;
const SIZE: u64 = 128 << 20;
const Q: usize = 0;

struct Harness {
    drv: GuestDriver,
    em: EventManager<Arc<Mutex<PmemDevice>>>,
    metrics: Arc<PmemMetrics>,
}

impl Harness {
    fn with_backing(backing: File) -> Self {
        let dev = PmemDevice::new(backing, START, SIZE).unwrap();
        let metrics = dev.metrics();
        let dev = Arc::new(Mutex::new(dev));
        let mut em = EventManager::new().unwrap();
        em.add_subscriber(dev.clone());
        let mut drv = GuestDriver::new(dev, 16);
        drv.init();
        let mut h = Self { drv, em, metrics };
        h.pump();
        h
    }

    fn new() -> Self {
        Self::with_backing(tempfile())
    }

    fn pump(&mut self) {
        while self.em.run_with_timeout(0).unwrap() > 0 {}
    }

    /// Kicks the queue and returns each used chain as (bytes written, ret).
    fn complete(&mut self) -> Vec<(u32, u32)> {
        self.drv.kick(Q);
        self.pump();
        let used = self.drv.take_used(Q);
        used.iter()
            .map(|&(head, len)| {
                let ret = self.drv.read_buf(Q, head + 1, 4);
                (len, u32::from_le_bytes(ret.try_into().unwrap()))
            })
            .collect()
    }

    fn metric(&self, f: impl Fn(&PmemMetrics) -> &std::sync::atomic::AtomicU64) -> u64 {
        f(&self.metrics).load(Ordering::Relaxed)
    }
}

fn tempfile() -> File {
    let dir = vmm_sys_util::tempdir::TempDir::new_with_prefix("/tmp/husk-pmem-").unwrap();
    let path = dir.as_path().join("image");
    std::fs::write(&path, vec![0u8; 4096]).unwrap();
    File::options().read(true).write(true).open(&path).unwrap()
}

fn flush() -> [u8; 4] {
    VIRTIO_PMEM_REQ_TYPE_FLUSH.to_le_bytes()
}

#[test]
fn announces_device_27_and_the_region_in_config_space() {
    let mut h = Harness::new();
    assert_eq!(h.drv.read_reg(0x08), VIRTIO_ID_PMEM);
    let config: Vec<u32> = (0..4).map(|i| h.drv.read_reg(0x100 + 4 * i)).collect();
    assert_eq!(
        config,
        [
            START as u32,
            (START >> 32) as u32,
            SIZE as u32,
            (SIZE >> 32) as u32
        ]
    );
    // Past the 16 config bytes the guest reads zeros.
    assert_eq!(h.drv.read_reg(0x110), 0);
}

#[test]
fn flush_is_answered_ok_after_fsync() {
    let mut h = Harness::new();
    h.drv.add_request(Q, &flush(), 4).unwrap();
    assert_eq!(h.complete(), vec![(4, VIRTIO_PMEM_RESP_OK)]);
    assert_eq!(h.metric(|m| &m.flushes), 1);
    assert_eq!(h.metric(|m| &m.flush_errors), 0);
    assert_eq!(h.drv.interrupt.irqfd().read().unwrap(), 1);
}

#[test]
fn a_failing_fsync_is_reported_to_the_guest() {
    // fsync(2) on a character device without an fsync method fails with EINVAL.
    let mut h = Harness::with_backing(File::open("/dev/null").unwrap());
    h.drv.add_request(Q, &flush(), 4).unwrap();
    assert_eq!(h.complete(), vec![(4, VIRTIO_PMEM_RESP_EIO)]);
    assert_eq!(h.metric(|m| &m.flush_errors), 1);
}

#[test]
fn hostile_requests_get_errors_and_the_device_keeps_serving() {
    let mut h = Harness::new();
    // Unknown type, then a request too short to hold a type.
    h.drv.add_request(Q, &7u32.to_le_bytes(), 4).unwrap();
    h.drv.add_request(Q, &[0u8; 2], 4).unwrap();
    assert_eq!(
        h.complete(),
        vec![(4, VIRTIO_PMEM_RESP_EIO), (4, VIRTIO_PMEM_RESP_EIO)]
    );
    // No room for a response: a readable-only chain, a 2-byte response buffer.
    h.drv.add_readable(Q, &[&flush()]).unwrap();
    h.drv.add_request(Q, &flush(), 2).unwrap();
    let lens: Vec<u32> = h.complete().iter().map(|&(len, _)| len).collect();
    assert_eq!(lens, [0, 0]);
    // Buffers outside guest memory.
    h.drv
        .add_raw(Q, &[(MEM_SIZE + 0x1000, 4, VRING_DESC_F_WRITE as u16, 0)])
        .unwrap();
    h.drv.add_raw(Q, &[(u64::MAX - 1, 4, 0, 0)]).unwrap();
    let lens: Vec<u32> = h.complete().iter().map(|&(len, _)| len).collect();
    assert_eq!(lens, [0, 0]);
    assert_eq!(h.metric(|m| &m.bad_requests), 6);

    h.drv.add_request(Q, &flush(), 4).unwrap();
    assert_eq!(h.complete(), vec![(4, VIRTIO_PMEM_RESP_OK)]);
    // Two of the flushes above had no room for their answer.
    assert_eq!(h.metric(|m| &m.flushes), 3);
}

#[test]
fn serves_again_after_a_driver_reset() {
    let mut h = Harness::new();
    h.drv.write_reg(0x70, 0);
    assert_eq!(h.drv.read_reg(0x70), 0);
    h.drv.init();
    h.pump();
    h.drv.add_request(Q, &flush(), 4).unwrap();
    assert_eq!(h.complete(), vec![(4, VIRTIO_PMEM_RESP_OK)]);
}

#[test]
fn rejects_empty_or_unaligned_regions() {
    assert!(matches!(
        PmemDevice::new(tempfile(), START, 0),
        Err(PmemError::BadSize(0))
    ));
    assert!(matches!(
        PmemDevice::new(tempfile(), START, 4097),
        Err(PmemError::BadSize(4097))
    ));
}
