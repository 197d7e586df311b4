//! The DAX window: shared memory registers, FUSE SETUPMAPPING and
//! REMOVEMAPPING mapping host file pages into the reserved window, and
//! every guest-named range checked against the window.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use vm_memory::GuestAddress;

use super::*;
use crate::fs::{DAX_ALIGNMENT, DAX_SHM_ID};
use crate::virtio::{ShmRegion, VirtioDevice};

const WINDOW: u64 = 4 * DAX_ALIGNMENT;
const MIB2: u64 = DAX_ALIGNMENT;

fn dax_harness() -> (FsHarness, ShmRegion) {
    let h = FsHarness::with_config(|c| c.dax_window = Some(WINDOW));
    let regions = h.dev.lock().unwrap().shm_regions();
    assert_eq!(regions.len(), 1);
    (h, regions[0])
}

/// A 2 MiB + 100 byte file with a pattern, opened; returns (node, fh, data).
fn pattern_file(h: &mut FsHarness, n: &str) -> (u64, u64, Vec<u8>) {
    let data: Vec<u8> = (0..MIB2 as usize + 100).map(|i| (i % 251) as u8).collect();
    fs::write(h.host(n), &data).unwrap();
    let node = h.lookup(ROOT, n).unwrap().nodeid;
    let fh = h.open(node, libc::O_RDWR).unwrap();
    (node, fh, data)
}

fn setupmapping(
    h: &mut FsHarness,
    node: u64,
    fh: u64,
    moffset: u64,
    len: u64,
    flags: SetupmappingFlags,
) -> i32 {
    let args = SetupmappingIn {
        fh,
        foffset: 0,
        len,
        flags: flags.bits(),
        moffset,
    };
    h.status(Opcode::SetupMapping, node, &[args.as_slice()])
}

fn removemapping(h: &mut FsHarness, ranges: &[(u64, u64)]) -> i32 {
    let mut args = RemovemappingIn {
        count: ranges.len() as u32,
    }
    .as_slice()
    .to_vec();
    for &(moffset, len) in ranges {
        args.extend(RemovemappingOne { moffset, len }.as_slice());
    }
    h.status(Opcode::RemoveMapping, ROOT, &[&args])
}

/// The pathname /proc/self/maps shows for the mapping holding `addr`.
fn backing_of(addr: u64) -> String {
    let maps = fs::read_to_string("/proc/self/maps").unwrap();
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let range = fields.next().unwrap();
        let (start, end) = range.split_once('-').unwrap();
        let start = u64::from_str_radix(start, 16).unwrap();
        let end = u64::from_str_radix(end, 16).unwrap();
        if (start..end).contains(&addr) {
            return fields.nth(4).unwrap_or("").to_string();
        }
    }
    panic!("{addr:#x} is not mapped at all");
}

#[test]
fn the_window_is_a_shared_memory_region_the_transport_reports() {
    let (mut h, region) = dax_harness();
    assert_eq!((region.id, region.len), (DAX_SHM_ID, WINDOW));
    assert_ne!(region.host_addr, 0);
    assert_eq!(backing_of(region.host_addr), "", "an anonymous reservation");
    h.dev
        .lock()
        .unwrap()
        .set_shm_base(DAX_SHM_ID, GuestAddress(0x1_0000_0000));
    h.drv.write_reg(0x0ac, 0);
    let len = u64::from(h.drv.read_reg(0x0b0)) | u64::from(h.drv.read_reg(0x0b4)) << 32;
    let base = u64::from(h.drv.read_reg(0x0b8)) | u64::from(h.drv.read_reg(0x0bc)) << 32;
    assert_eq!((len, base), (WINDOW, 0x1_0000_0000));
    // No window, no region.
    let plain = FsHarness::new();
    assert!(plain.dev.lock().unwrap().shm_regions().is_empty());
}

#[test]
fn setupmapping_maps_file_pages_into_the_window_and_removemapping_unmaps_them() {
    let (mut h, region) = dax_harness();
    let (node, fh, data) = pattern_file(&mut h, "big");
    let flags = SetupmappingFlags::READ | SetupmappingFlags::WRITE;
    assert_eq!(setupmapping(&mut h, node, fh, MIB2, MIB2, flags), 0);
    let at = region.host_addr + MIB2;
    assert!(backing_of(at).ends_with("/share/big"), "{}", backing_of(at));
    // SAFETY: SETUPMAPPING just mapped [at, at + 2 MiB) readable and
    // writable, backed by the file; nothing else uses the window.
    let window = unsafe { std::slice::from_raw_parts_mut(at as *mut u8, MIB2 as usize) };
    assert_eq!(window, &data[..MIB2 as usize]);
    // Guest stores through the window reach the host file.
    window[..5].copy_from_slice(b"DAX!!");
    assert_eq!(&fs::read(h.host("big")).unwrap()[..5], b"DAX!!");
    assert_eq!(removemapping(&mut h, &[(MIB2, MIB2)]), 0);
    assert_eq!(backing_of(at), "", "back to the anonymous reservation");
    assert_eq!(h.release(node, fh), 0);
}

#[test]
fn ranges_outside_the_window_are_refused_and_map_nothing() {
    let (mut h, region) = dax_harness();
    let (node, fh, _) = pattern_file(&mut h, "f");
    let read = SetupmappingFlags::READ;
    for (moffset, len) in [
        (WINDOW, MIB2),
        (WINDOW - MIB2, 2 * MIB2),
        (u64::MAX - 4095, MIB2),
        (0, u64::MAX),
        (0, 0),
        (100, MIB2),
    ] {
        assert_eq!(
            setupmapping(&mut h, node, fh, moffset, len, read),
            libc::EINVAL,
            "{moffset:#x}+{len:#x}"
        );
    }
    for off in (0..WINDOW).step_by(MIB2 as usize) {
        assert_eq!(backing_of(region.host_addr + off), "");
    }
    assert_eq!(removemapping(&mut h, &[(WINDOW, MIB2)]), libc::EINVAL);
    assert_eq!(
        removemapping(&mut h, &[(u64::MAX - 4095, 8192)]),
        libc::EINVAL
    );
    // A count that does not match the entries sent.
    let args = RemovemappingIn { count: u32::MAX };
    assert_ne!(h.status(Opcode::RemoveMapping, ROOT, &[args.as_slice()]), 0);
    // A symlink inode is never opened for mapping.
    std::os::unix::fs::symlink("/etc/passwd", h.host("l")).unwrap();
    let link = h.lookup(ROOT, "l").unwrap().nodeid;
    assert_eq!(setupmapping(&mut h, link, 0, 0, MIB2, read), libc::EBADF);
    assert_eq!(backing_of(region.host_addr), "");
}

#[test]
fn a_reset_empties_the_window() {
    let (mut h, region) = dax_harness();
    let (node, fh, _) = pattern_file(&mut h, "f");
    assert_eq!(
        setupmapping(&mut h, node, fh, 0, MIB2, SetupmappingFlags::READ),
        0
    );
    assert!(backing_of(region.host_addr).ends_with("/share/f"));
    h.drv.write_reg(0x70, 0);
    assert_eq!(backing_of(region.host_addr), "");
    // Whole-window removal (offset 0, length ~0) works too.
    h.drv.init();
    h.pump();
    h.init();
    let node = h.lookup(ROOT, "f").unwrap().nodeid;
    let fh = h.open(node, libc::O_RDONLY).unwrap();
    assert_eq!(
        setupmapping(&mut h, node, fh, 3 * MIB2, MIB2, SetupmappingFlags::READ),
        0
    );
    assert_eq!(removemapping(&mut h, &[(0, u64::MAX)]), 0);
    assert_eq!(backing_of(region.host_addr + 3 * MIB2), "");
}

#[test]
fn a_writable_mapping_clears_setuid_and_a_read_only_one_does_not() {
    let (mut h, _) = dax_harness();
    let (node, fh, _) = pattern_file(&mut h, "su");
    let mode = |h: &FsHarness| fs::metadata(h.host("su")).unwrap().permissions().mode() & 0o7777;
    fs::set_permissions(h.host("su"), fs::Permissions::from_mode(0o4755)).unwrap();
    let read = SetupmappingFlags::READ;
    assert_eq!(setupmapping(&mut h, node, fh, 0, MIB2, read), 0);
    assert_eq!(mode(&h), 0o4755);
    let write = SetupmappingFlags::READ | SetupmappingFlags::WRITE;
    assert_eq!(setupmapping(&mut h, node, fh, MIB2, MIB2, write), 0);
    assert_eq!(
        mode(&h),
        0o755,
        "stores through the window cannot leave a setuid file"
    );
    assert_eq!(h.metric(|m| &m.mode_bits_stripped), 1);
    assert_eq!(removemapping(&mut h, &[(0, u64::MAX)]), 0);
    assert_eq!(h.release(node, fh), 0);
}
