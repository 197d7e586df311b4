//! The per-share size limit through real FUSE requests: writes past it are
//! cut short or get ENOSPC and the host files stay within it; truncation,
//! deletion and O_TRUNC give the space back; sparse files and KEEP_SIZE
//! cannot hide data from it; each refusal is followed by a request that works.

use std::fs;

use super::*;

const KIB: u64 = 1024;
const LIMIT: u64 = 64 * KIB;

fn limited() -> FsHarness {
    FsHarness::with_config(|c| c.size_limit = Some(LIMIT))
}

fn used(h: &FsHarness) -> u64 {
    h.dev.lock().unwrap().space_used().unwrap()
}

fn host_len(h: &FsHarness, rel: &str) -> u64 {
    fs::metadata(h.host(rel)).unwrap().len()
}

/// A new file filled with `len` bytes; returns (node, open handle).
fn filled(h: &mut FsHarness, n: &str, len: u64) -> (u64, u64) {
    let (entry, fh) = h.create(ROOT, n, 0o644).unwrap();
    let data = vec![0x5a; len as usize];
    assert_eq!(h.write(entry.nodeid, fh, 0, &data).unwrap() as u64, len);
    (entry.nodeid, fh)
}

fn truncate(h: &mut FsHarness, node: u64, size: u64) -> Result<Attr, i32> {
    let args = SetattrIn {
        valid: SetattrValid::SIZE.bits(),
        size,
        ..Default::default()
    };
    h.setattr(node, args)
}

#[test]
fn writes_past_the_limit_are_cut_short_then_refused_and_the_host_file_stays_bounded() {
    let mut h = limited();
    let (node, fh) = filled(&mut h, "f", 48 * KIB);
    assert_eq!(used(&h), 48 * KIB);
    // 32 KiB more: only the 16 KiB up to the limit are written.
    let more = vec![1u8; 32 * KIB as usize];
    assert_eq!(h.write(node, fh, 48 * KIB, &more).unwrap() as u64, 16 * KIB);
    assert_eq!(h.write(node, fh, LIMIT, b"x").unwrap_err(), libc::ENOSPC);
    // O_APPEND writes at the end whatever the offset says.
    let append = libc::O_RDWR | libc::O_APPEND;
    assert_eq!(
        h.write_with(node, fh, 0, b"x", append).unwrap_err(),
        libc::ENOSPC
    );
    assert_eq!(host_len(&h, "f"), LIMIT);
    assert_eq!(used(&h), LIMIT);
    assert_eq!(h.metric(|m| &m.over_limit), 3);
    // Overwriting inside the file costs nothing and still works.
    assert_eq!(h.write(node, fh, 0, b"still writable").unwrap(), 14);
    assert_eq!(h.read(node, fh, 0, 14).unwrap(), b"still writable");
    // Another file gets nothing either.
    let (other, ofh) = h.create(ROOT, "g", 0o644).unwrap();
    assert_eq!(
        h.write(other.nodeid, ofh, 0, b"y").unwrap_err(),
        libc::ENOSPC
    );
    assert_eq!(host_len(&h, "g"), 0);
}

#[test]
fn a_sparse_write_costs_its_apparent_size() {
    let mut h = limited();
    let (entry, fh) = h.create(ROOT, "sparse", 0o644).unwrap();
    let node = entry.nodeid;
    assert_eq!(h.write(node, fh, 1 << 30, b"x").unwrap_err(), libc::ENOSPC);
    assert_eq!(h.write(node, fh, LIMIT, b"x").unwrap_err(), libc::ENOSPC);
    assert_eq!(host_len(&h, "sparse"), 0);
    // A hole inside the limit is charged as if written.
    assert_eq!(h.write(node, fh, LIMIT - 1, b"x").unwrap(), 1);
    assert_eq!(used(&h), LIMIT);
    // Filling the hole costs nothing more.
    assert_eq!(h.write(node, fh, 0, &[7u8; 4096]).unwrap(), 4096);
    assert_eq!(used(&h), LIMIT);
    // Extending by truncation is charged the same way.
    assert_eq!(truncate(&mut h, node, LIMIT + 1).unwrap_err(), libc::ENOSPC);
    assert_eq!(host_len(&h, "sparse"), LIMIT);
}

#[test]
fn truncating_gives_the_space_back() {
    let mut h = limited();
    let (node, fh) = filled(&mut h, "f", LIMIT);
    assert_eq!(h.write(node, fh, LIMIT, b"x").unwrap_err(), libc::ENOSPC);
    assert_eq!(truncate(&mut h, node, 16 * KIB).unwrap().size, 16 * KIB);
    assert_eq!(used(&h), 16 * KIB);
    let (g, gfh) = filled(&mut h, "g", 48 * KIB);
    assert_eq!(h.write(g, gfh, 48 * KIB, b"x").unwrap_err(), libc::ENOSPC);
    // O_TRUNC on open and on CREATE of an existing file give it back too.
    let again = h.open(g, libc::O_RDWR | libc::O_TRUNC).unwrap();
    assert_eq!((host_len(&h, "g"), used(&h)), (0, 16 * KIB));
    assert_eq!(h.write(g, again, 0, &[1u8; 8192]).unwrap(), 8192);
    let flags = libc::O_RDWR | libc::O_CREAT | libc::O_TRUNC;
    let (entry, ffh) = h.create_with(ROOT, "f", 0o644, flags).unwrap();
    assert_eq!(entry.nodeid, node);
    assert_eq!((host_len(&h, "f"), used(&h)), (0, 8 * KIB));
    assert_eq!(h.write(node, ffh, 0, &[2u8; 56 * 1024]).unwrap(), 56 * 1024);
    assert_eq!(used(&h), LIMIT);
}

#[test]
fn a_deleted_file_is_charged_until_released_and_forgotten() {
    let mut h = limited();
    let (node, fh) = filled(&mut h, "big", LIMIT);
    assert_eq!(h.unlink(ROOT, "big"), 0);
    // Still open (and known to the guest): its blocks are still on the host.
    let (next, nfh) = h.create(ROOT, "next", 0o644).unwrap();
    assert_eq!(
        h.write(next.nodeid, nfh, 0, b"x").unwrap_err(),
        libc::ENOSPC
    );
    // Writing into the deleted file is still charged.
    assert_eq!(h.write(node, fh, LIMIT, b"x").unwrap_err(), libc::ENOSPC);
    assert_eq!(h.release(node, fh), 0);
    assert_eq!(used(&h), LIMIT, "the guest still holds the node");
    h.forget(node, 1);
    assert_eq!(used(&h), 0);
    assert_eq!(
        h.write(next.nodeid, nfh, 0, &[3u8; LIMIT as usize])
            .unwrap() as u64,
        LIMIT
    );
    // A rename over a file frees it the same way.
    let (tmp, tfh) = h.create(ROOT, "tmp", 0o644).unwrap();
    assert_eq!(h.release(tmp.nodeid, tfh), 0);
    assert_eq!(h.release(next.nodeid, nfh), 0);
    assert_eq!(h.rename(ROOT, "tmp", ROOT, "next"), 0);
    assert_eq!(used(&h), LIMIT, "the guest still holds the old node");
    h.forget(next.nodeid, 1);
    assert_eq!(used(&h), 0);
    // A name removed while another link remains frees nothing.
    let (a, afh) = filled(&mut h, "a", 8 * KIB);
    h.link(a, ROOT, "b").unwrap();
    assert_eq!(h.release(a, afh), 0);
    assert_eq!(h.unlink(ROOT, "a"), 0);
    assert_eq!(used(&h), 8 * KIB);
    assert_eq!(h.unlink(ROOT, "b"), 0);
    h.forget(a, 2);
    assert_eq!(used(&h), 0);
}

#[test]
fn host_files_cost_nothing_and_deleting_them_gives_no_credit() {
    let mut h = limited();
    fs::write(h.host("image"), vec![0u8; 1 << 20]).unwrap();
    let image = h.lookup(ROOT, "image").unwrap().nodeid;
    let (_, fh) = filled(&mut h, "mine", LIMIT);
    assert_eq!(h.unlink(ROOT, "image"), 0);
    h.forget(image, 1);
    let mine = h.lookup(ROOT, "mine").unwrap().nodeid;
    assert_eq!(h.write(mine, fh, LIMIT, b"x").unwrap_err(), libc::ENOSPC);
    assert_eq!(used(&h), LIMIT);
}

#[test]
fn fallocate_is_checked_and_keep_size_refused() {
    let mut h = limited();
    let (entry, fh) = h.create(ROOT, "f", 0o644).unwrap();
    let node = entry.nodeid;
    assert_eq!(h.fallocate(node, fh, 0, 0, LIMIT + 1), libc::ENOSPC);
    let keep = libc::FALLOC_FL_KEEP_SIZE;
    assert_eq!(h.fallocate(node, fh, keep, 0, 4096), libc::EOPNOTSUPP);
    assert_eq!(h.fallocate(node, fh, 0, 0, 32 * KIB), 0);
    assert_eq!((host_len(&h, "f"), used(&h)), (32 * KIB, 32 * KIB));
    // Punching a hole keeps the size, and is allowed.
    let punch = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    assert_eq!(h.fallocate(node, fh, punch, 0, 4096), 0);
    assert_eq!(h.metric(|m| &m.refused), 1);
    assert_eq!(h.metric(|m| &m.over_limit), 1);
    assert_eq!(h.write(node, fh, 32 * KIB, &[1u8; 1024]).unwrap(), 1024);
}

#[test]
fn the_count_survives_a_guest_reset() {
    let mut h = limited();
    let (_, _) = filled(&mut h, "f", LIMIT);
    h.drv.write_reg(0x70, 0);
    h.drv.init();
    h.pump();
    h.init();
    assert_eq!(used(&h), LIMIT);
    let (entry, fh) = h.create(ROOT, "g", 0o644).unwrap();
    assert_eq!(
        h.write(entry.nodeid, fh, 0, b"x").unwrap_err(),
        libc::ENOSPC
    );
    // What the old guest still held open and had deleted is freed with it.
    let node = h.lookup(ROOT, "f").unwrap().nodeid;
    let ffh = h.open(node, libc::O_RDWR).unwrap();
    assert_eq!(h.unlink(ROOT, "f"), 0);
    assert_eq!(used(&h), LIMIT);
    h.drv.write_reg(0x70, 0);
    assert_eq!(used(&h), 0);
    let _ = ffh;
}

#[test]
fn without_a_limit_nothing_is_counted() {
    let mut h = FsHarness::new();
    let (node, fh) = filled(&mut h, "f", 256 * KIB);
    assert_eq!(h.write(node, fh, 1 << 20, b"x").unwrap(), 1);
    assert_eq!(h.dev.lock().unwrap().space_used(), None);
    assert_eq!(h.metric(|m| &m.over_limit), 0);
}
