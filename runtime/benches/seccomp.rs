//! What seccomp costs the devices: the vsock and virtio-fs devices driven
//! through their harnesses (real device, real event loop, host sockets and
//! files; a scripted guest in mock memory) on a thread confined as husk's
//! device thread is (the runtime's filter, which it inherits, then the
//! devices' own), against the same work on an unconfined thread, in the
//! same run. Runs alternate off/on so drift hits both; the
//! figure is the median of each, and their ratio. Two bare system calls
//! show where a small operation's extra time comes from: seccomp's cost on
//! every call the kernel's action cache allows without running a filter
//! (getpid), and on a call whose arguments both filters check (ioctl).
//!
//! Run: `cargo bench -p husk-runtime --bench seccomp`. The filters are
//! built and installed as husk does it (`ThreadFilter::compile`, `install`), after
//! the harness is set up, so only the timed work runs confined: the
//! device's own calls and the scripted guest's (which stay within the
//! list: reads and writes on the host socket, epoll).

use std::time::{Duration, Instant};

use husk_devices::fs::harness::FsHarness;
use husk_devices::vsock::harness::GuestStream;
use husk_runtime::seccomp::runtime_allowlist;
use husk_vmm::seccomp::{ThreadFilter, ThreadKind, VmFilters};

const ROUNDS: usize = 5;
const VSOCK_BYTES: usize = 32 << 20;
const FS_FILE_BYTES: usize = 16 << 20;
const FS_CHUNK: usize = 128 << 10;
const GETATTRS: usize = 20_000;
const CALLS: u32 = 200_000;

/// Builds the work's state on a fresh thread, confines the thread (when a
/// filter is given), then times the work there.
fn on_thread<S>(
    filters: Option<&[ThreadFilter]>,
    build: impl FnOnce() -> S + Send,
    time: impl FnOnce(S) -> Duration + Send,
) -> Duration {
    std::thread::scope(|s| {
        s.spawn(|| {
            let state = build();
            for f in filters.unwrap_or_default() {
                f.install().expect("installing a seccomp filter");
            }
            time(state)
        })
        .join()
        .expect("the bench thread")
    })
}

/// An fs harness with a file of FS_FILE_BYTES: its node and an open handle.
fn fs_with_file() -> (FsHarness, u64, u64) {
    let mut h = FsHarness::new();
    std::fs::write(h.host("big"), vec![0x7e; FS_FILE_BYTES]).unwrap();
    let node = h.lookup(1, "big").expect("lookup").nodeid;
    let fh = h.open(node, libc::O_RDWR).expect("open");
    (h, node, fh)
}

fn fs_read((mut h, node, fh): (FsHarness, u64, u64)) -> Duration {
    let start = Instant::now();
    for off in (0..FS_FILE_BYTES).step_by(FS_CHUNK) {
        let data = h.read(node, fh, off as u64, FS_CHUNK as u32).expect("read");
        assert_eq!(data.len(), FS_CHUNK);
    }
    start.elapsed()
}

fn fs_write((mut h, node, fh): (FsHarness, u64, u64)) -> Duration {
    let chunk = vec![0x11; FS_CHUNK];
    let start = Instant::now();
    for off in (0..FS_FILE_BYTES).step_by(FS_CHUNK) {
        let n = h.write(node, fh, off as u64, &chunk).expect("write");
        assert_eq!(n as usize, FS_CHUNK);
    }
    start.elapsed()
}

fn fs_getattr((mut h, node, _): (FsHarness, u64, u64)) -> Duration {
    let start = Instant::now();
    for _ in 0..GETATTRS {
        h.getattr(node).expect("getattr");
    }
    start.elapsed() / GETATTRS as u32
}

/// The mean time of one `call` (a system call returning -1 on failure).
fn per_call(mut call: impl FnMut() -> i64) -> Duration {
    let start = Instant::now();
    for _ in 0..CALLS {
        assert!(call() >= 0, "{}", std::io::Error::last_os_error());
    }
    start.elapsed() / CALLS
}

/// getpid: allowed whatever its arguments, so the kernel's seccomp action
/// cache answers without running the filters; what remains is seccomp's
/// fixed cost on every system call.
fn getpid_call(_: ()) -> Duration {
    // SAFETY: getpid takes no arguments and cannot fail.
    per_call(|| unsafe { libc::syscall(libc::SYS_getpid) })
}

/// ioctl(FIONBIO): allowed only for given requests, so both filters run
/// on every call (how KVM_RUN is checked on a vCPU thread).
fn fionbio_call(sock: std::os::unix::net::UnixDatagram) -> Duration {
    use std::os::fd::AsRawFd;
    let mut on: libc::c_int = 1;
    // SAFETY: FIONBIO reads one c_int from the pointer, which lives for
    // the call; the fd is the socket this closure owns.
    per_call(|| i64::from(unsafe { libc::ioctl(sock.as_raw_fd(), libc::FIONBIO, &mut on) }))
}

struct Figure {
    name: &'static str,
    unit: &'static str,
    /// Turns a run's duration into the figure (higher is better when a rate).
    value: fn(Duration) -> f64,
    run: fn(Option<&[ThreadFilter]>) -> Duration,
}

fn mib_per_s(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / d.as_secs_f64()
}

const FIGURES: &[Figure] = &[
    Figure {
        name: "vsock host->guest 64K",
        unit: "MiB/s",
        value: |d| mib_per_s(VSOCK_BYTES, d),
        run: |f| {
            on_thread(
                f,
                || GuestStream::new(1),
                |s| s.time_to_guest(65536, VSOCK_BYTES),
            )
        },
    },
    Figure {
        name: "vsock guest->host 64K",
        unit: "MiB/s",
        value: |d| mib_per_s(VSOCK_BYTES, d),
        run: |f| {
            on_thread(
                f,
                || GuestStream::new(2),
                |s| s.time_to_host(65536, VSOCK_BYTES),
            )
        },
    },
    Figure {
        name: "vsock round trip 4K",
        unit: "us",
        value: |d| d.as_secs_f64() * 1e6,
        run: |f| on_thread(f, || GuestStream::new(1), |s| s.time_round_trip(4096, 2000)),
    },
    Figure {
        name: "fs READ 128K",
        unit: "MiB/s",
        value: |d| mib_per_s(FS_FILE_BYTES, d),
        run: |f| on_thread(f, fs_with_file, fs_read),
    },
    Figure {
        name: "fs WRITE 128K",
        unit: "MiB/s",
        value: |d| mib_per_s(FS_FILE_BYTES, d),
        run: |f| on_thread(f, fs_with_file, fs_write),
    },
    Figure {
        name: "fs GETATTR",
        unit: "us",
        value: |d| d.as_secs_f64() * 1e6,
        run: |f| on_thread(f, fs_with_file, fs_getattr),
    },
    Figure {
        name: "syscall getpid",
        unit: "ns",
        value: |d| d.as_secs_f64() * 1e9,
        run: |f| on_thread(f, || (), getpid_call),
    },
    Figure {
        name: "syscall ioctl FIONBIO",
        unit: "ns",
        value: |d| d.as_secs_f64() * 1e9,
        run: |f| {
            on_thread(
                f,
                || std::os::unix::net::UnixDatagram::unbound().expect("a socket"),
                fionbio_call,
            )
        },
    },
];

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn spread(v: &[f64]) -> f64 {
    let (lo, hi) = v
        .iter()
        .fold((f64::MAX, f64::MIN), |(lo, hi), x| (lo.min(*x), hi.max(*x)));
    (hi - lo) / median(v.to_vec()) * 100.0
}

fn main() {
    let runtime = ThreadFilter::compile(ThreadKind::Runtime, runtime_allowlist())
        .expect("compiling the runtime's filter");
    let devices = VmFilters::compile()
        .expect("compiling the VM's filters")
        .devices;
    let device_thread = [runtime, devices];
    let cpu = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpu
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map_or("unknown CPU", str::trim);
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    println!(
        "devices with and without the device thread's seccomp filters, on {model}, {cpus} CPUs"
    );
    println!("{ROUNDS} alternating runs each; median, and spread (max-min)/median of each side\n");
    println!(
        "{:<24} {:>6} {:>11} {:>7} {:>11} {:>7} {:>9}",
        "figure", "unit", "off", "spread", "on", "spread", "on/off"
    );
    for f in FIGURES {
        let (mut off, mut on) = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            off.push((f.value)((f.run)(None)));
            on.push((f.value)((f.run)(Some(&device_thread))));
        }
        let (so, sn) = (spread(&off), spread(&on));
        let (mo, mn) = (median(off), median(on));
        println!(
            "{:<24} {:>6} {mo:>11.1} {so:>6.1}% {mn:>11.1} {sn:>6.1}% {:>8.3}x",
            f.name,
            f.unit,
            mn / mo
        );
    }
    println!("\non/off: above 1 is faster with seccomp for MiB/s, slower for us and ns");
}
