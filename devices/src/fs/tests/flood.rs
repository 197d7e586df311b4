//! A guest that floods the device with what makes it complain: malformed
//! chains, bad names, unknown nodes, refused requests, writes past the size
//! limit, config-space and register writes. The host's log gets a bounded
//! number of lines (husk's own and fuse-backend-rs's `log` records alike)
//! while the device's counters still count every event.

use std::time::{Duration, Instant};

use super::*;
use crate::fs::FsMetrics;
use crate::log_budget::{self, capture, LINES_PER_WINDOW, WINDOW};

/// Requests of each kind.
const EACH: usize = 10_000;
/// Register and config-space writes of each kind.
const EACH_MMIO: usize = 20_000;

/// Lines containing `needle`.
fn count(log: &str, needle: &str) -> usize {
    log.lines().filter(|l| l.contains(needle)).count()
}

/// The sum of `suppressed=N` over the lines containing `needle`.
fn reported(log: &str, needle: &str) -> usize {
    let held_back = |l: &str| {
        let n = l.split("suppressed=").nth(1)?.split(' ').next()?;
        n.parse::<usize>().ok()
    };
    log.lines()
        .filter(|l| l.contains(needle))
        .filter_map(held_back)
        .sum()
}

/// What one call site may print in `elapsed`: every window that began.
fn site_bound(elapsed: Duration) -> usize {
    let windows = elapsed.as_nanos() / WINDOW.as_nanos() + 1;
    LINES_PER_WINDOW as usize * windows as usize
}

const LIMIT_BYTES: u64 = 4096;

fn flood(h: &mut FsHarness, node: u64, fh: u64) {
    let truncated = request(Opcode::Getattr, ROOT, 1, &[]);
    let cap = [0u8; 20];
    let null_dev = libc::makedev(1, 3) as u32;
    for i in 0..EACH {
        let reply = h.send_on(REQUEST_QUEUE, &[&truncated[..20]], &[4096]);
        assert_eq!(reply.used_len, 0);
        // A name without its NUL: fuse-backend-rs logs an error each time.
        assert_ne!(h.call(Opcode::Lookup, ROOT, &[b"noterm"]).errno(), 0);
        assert_eq!(h.getattr(0xdead_0000 + i as u64).unwrap_err(), libc::EBADF);
        let dev = h.mknod(ROOT, "null", libc::S_IFCHR | 0o666, null_dev);
        assert_eq!(dev.unwrap_err(), libc::EPERM);
        assert_eq!(h.setxattr(node, "security.capability", &cap), libc::EPERM);
        let past = h.write(node, fh, LIMIT_BYTES + i as u64, b"more");
        assert_eq!(past.unwrap_err(), libc::ENOSPC);
    }
    for _ in 0..EACH_MMIO {
        h.drv.write_reg(0x100, 0x0403_0201); // config space
        h.drv.write_reg(0x0c8, 0); // no such register
        h.drv.write_reg(0x050, 99); // no such queue
    }
}

#[test]
fn a_flooding_guest_gets_a_bounded_number_of_log_lines_and_every_event_counted() {
    let mut h = FsHarness::with_config(|c| c.size_limit = Some(LIMIT_BYTES));
    let (entry, fh) = h.create(ROOT, "full", 0o644).unwrap();
    assert_eq!(h.write(entry.nodeid, fh, 0, &[0u8; 4096]).unwrap(), 4096);
    let requests_before = h.metric(|m| &m.requests);
    let suppressed_before = log_budget::suppressed_total();

    let _enforced = log_budget::enforce_on_this_thread();
    let started = Instant::now();
    let log = capture::logged_at(tracing::Level::DEBUG, || flood(&mut h, entry.nodeid, fh));
    let elapsed = started.elapsed();
    let bound = site_bound(elapsed);

    // Each complaint reached the log, cut to its call site's budget.
    for needle in [
        "dropping a chain",
        "bytes to cstr",
        "do_getattr",
        "refusing to create a device node",
        "refusing to set security.capability",
        "size limit is reached",
        "guest wrote read-only config space",
        "unknown or read-only register",
        "QueueNotify for a missing queue",
    ] {
        let n = count(&log, needle);
        assert!(
            (1..=bound).contains(&n),
            "{n} lines of {needle:?} (bound {bound}):\n{log}"
        );
    }
    // Nothing else got through in bulk either: a few dozen call sites at most.
    let events = 6 * EACH + 3 * EACH_MMIO;
    let lines = log.lines().count();
    assert!(
        lines <= 40 * (bound + 1),
        "{lines} lines for {events} events:\n{log}"
    );
    assert!(log_budget::suppressed_total() - suppressed_before >= (events - lines) as u64);

    // The counters saw every event.
    let m = |f: fn(&FsMetrics) -> &std::sync::atomic::AtomicU64| h.metric(f);
    assert_eq!(m(|m| &m.dropped_chains), EACH as u64);
    assert_eq!(m(|m| &m.refused), 2 * EACH as u64);
    assert_eq!(m(|m| &m.over_limit), EACH as u64);
    assert_eq!(m(|m| &m.requests) - requests_before, 5 * EACH as u64);
    // And the device still serves.
    assert_eq!(h.read(entry.nodeid, fh, 0, 4).unwrap(), [0u8; 4]);

    // In the next window, a site's first line says how many it held back.
    std::thread::sleep(WINDOW);
    let truncated = request(Opcode::Getattr, ROOT, 1, &[]);
    let after = capture::logged_at(tracing::Level::DEBUG, || {
        h.send_on(REQUEST_QUEUE, &[&truncated[..20]], &[4096]);
        h.call(Opcode::Lookup, ROOT, &[b"noterm"]);
    });
    // Every line held back is reported by the next one that gets through:
    // printed + reported = events, for husk's sites and bridged ones alike.
    let all = format!("{log}{after}");
    let dropped = count(&all, "dropping a chain") + reported(&all, "dropping a chain");
    assert_eq!(dropped, EACH + 1, "{after}");
    let server = "target=\"fuse_backend_rs::api::server::sync_io\"";
    let printed = count(&all, "bytes to cstr") + count(&all, "reply error header");
    assert_eq!(printed + reported(&all, server), 2 * (EACH + 1), "{after}");
}
