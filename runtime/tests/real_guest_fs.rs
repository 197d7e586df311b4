//! A real guest booted from the erofs image on virtio-pmem, with DAX, and a
//! host directory shared over virtio-fs.
//!
//! One boot: the guest's root is /dev/pmem0 mapped read-only into guest
//! memory, and the self-test's `fs` mode reports, from inside the guest, the
//! root mount from /proc/mounts, whether /sbin/init is a DAX file and what a
//! write to the root gets, and whether a raw write to /dev/pmem0 sticks. It then mounts the virtio-fs share with DAX
//! (its window is device memory above RAM, like the pmem image), writes a
//! file the host reads afterwards, and checksums a 16 MiB host file, which
//! the host checksums too and which the guest must see as a DAX file. The
//! host checks the image file is unchanged.

mod common;

use std::time::Instant;

use common::{guest_assets, kvm_or_skip, vm_config, TestVm};
use husk_vmm::{FsConfig, PmemSpec};

/// EROFS: what a write to a read-only filesystem gets.
const EROFS_ERRNO: &str = "30";
const TAG: &str = "hostshare";
const BIG_FILE: &str = "big.bin";
const BIG_LEN: usize = 16 << 20;
const GUEST_FILE: &str = "from-guest.txt";

/// FNV-1a 64, as the guest self-test computes it.
fn fnv1a64(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn marker_lines<'a>(console: &'a str, marker: &str) -> Vec<&'a str> {
    console
        .lines()
        .filter_map(|l| l.trim_end_matches('\r').strip_prefix(marker))
        .map(str::trim)
        .collect()
}

#[test]
fn guest_boots_from_dax_pmem_and_uses_a_virtio_fs_share() {
    if !kvm_or_skip("guest_boots_from_dax_pmem_and_uses_a_virtio_fs_share") {
        return;
    }
    let assets = guest_assets();
    let before = std::fs::read(&assets.pmem_image).unwrap();
    let dir = std::env::temp_dir().join(format!("husk-fs-real-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let share = dir.join("share");
    std::fs::create_dir_all(&share).unwrap();
    let big: Vec<u8> = (0..BIG_LEN as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect();
    std::fs::write(share.join(BIG_FILE), &big).unwrap();
    let started = Instant::now();
    let mut config = vm_config(
        256,
        1,
        &format!("console=ttyS0 reboot=k panic=-1 -- fs {TAG} {BIG_FILE} {GUEST_FILE} dax=always"),
    );
    let mut fs = FsConfig::new(TAG, &share);
    fs.dax_window = Some(64 << 20);
    config.fs = vec![fs];
    config.pmem = vec![PmemSpec {
        path: assets.pmem_image.clone(),
        read_only: true,
    }];
    let run = TestVm::start(&config).finish();
    let text = run.console.clone();
    eprintln!("guest ran for {:?}", started.elapsed());
    run.assert_powered_off();
    assert!(text.contains("HUSK-FS-DONE"), "{text}");

    let mounts = marker_lines(&text, "HUSK-MOUNT ");
    let root = mounts
        .iter()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.len() >= 4 && f[1] == "/")
        .unwrap_or_else(|| panic!("no root in /proc/mounts:\n{text}"));
    assert_eq!(root[2], "erofs", "root filesystem: {root:?}");
    let options: Vec<&str> = root[3].split(',').collect();
    assert!(options.contains(&"ro"), "root options: {options:?}");
    assert!(options.contains(&"dax=always"), "root options: {options:?}");
    assert_eq!(
        marker_lines(&text, "HUSK-FS-DAX /sbin/init"),
        ["1"],
        "/sbin/init is not a DAX file:\n{text}"
    );
    assert_eq!(marker_lines(&text, "HUSK-FS-ROOT-WRITE"), [EROFS_ERRNO]);
    // Even the guest's root, writing the device itself, cannot change the shared image.
    assert_eq!(marker_lines(&text, "HUSK-FS-PMEM-WRITE"), ["dropped"]);
    assert!(marker_lines(&text, "HUSK-FS-FAILED").is_empty(), "{text}");

    assert!(
        mounts
            .iter()
            .any(|l| l.starts_with(&format!("{TAG} /mnt virtiofs ")) && l.contains("dax=always")),
        "no virtio-fs mount: {mounts:?}"
    );
    assert_eq!(marker_lines(&text, "HUSK-FS-WROTE"), [GUEST_FILE]);
    assert_eq!(
        std::fs::read_to_string(share.join(GUEST_FILE)).unwrap(),
        format!("written by the guest into {TAG}\n")
    );
    assert_eq!(
        marker_lines(&text, "HUSK-FS-READ"),
        [format!("{BIG_LEN} {:016x}", fnv1a64(&big))],
        "the guest read other bytes than the host wrote"
    );
    assert_eq!(
        marker_lines(&text, &format!("HUSK-FS-DAX /mnt/{BIG_FILE}")),
        ["1"],
        "the share's file is not mapped through the DAX window:\n{text}"
    );

    let after = std::fs::read(&assets.pmem_image).unwrap();
    assert!(before == after, "the read-only image changed");
    std::fs::remove_dir_all(dir).unwrap();
}
