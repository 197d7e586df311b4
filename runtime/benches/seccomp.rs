//! What seccomp costs the devices: the vsock and virtio-fs devices driven
//! through their harnesses (real device, real event loop, host sockets and
//! files; a scripted guest in mock memory), confined as husk's device
//! thread is (the runtime's filter, which it inherits, then the devices'
//! own), against the same work unconfined, in the same run. Runs alternate
//! off/on so drift hits both; the figure is the median of each, and their
//! ratio.
//!
//! Two shapes. On one thread: the device's loop runs inline, stepped by the
//! scripted guest, so the confined thread makes the device's calls and the
//! guest's and host side's too (the queue kick, the extra epoll that finds
//! the loop idle, the host socket's reads and writes). As in a VM: the
//! device's loop runs on a thread of its own, blocking in epoll as husk's
//! device thread does, and only that thread is confined; the guest (KVM's
//! part in a VM, where a kick and an interrupt are eventfds the kernel
//! signals) and the host side run unconfined on the bench's thread and poll
//! the rings and the socket. Two bare system calls show where a small
//! operation's extra time comes from: seccomp's cost on every call the
//! kernel's action cache allows without running a filter (getpid), and on a
//! call whose arguments both filters check (ioctl).
//!
//! Run: `cargo bench -p husk-runtime --bench seccomp`. The filters are
//! built and installed as husk does it (`ThreadFilter::compile`, `install`),
//! after the harness is set up, so only the timed work runs confined.

use std::time::{Duration, Instant};

use husk_devices::fs::harness::FsHarness;
use husk_devices::vsock::harness::GuestStream;
use husk_runtime::seccomp::runtime_allowlist;
use husk_vmm::seccomp::{ThreadFilter, ThreadKind, VmFilters};

// Each run takes 0.1-0.5 s here: shorter ones (a few ms) left spreads of
// 20-70 % between runs of the same side.
const ROUNDS: usize = 11;
const VSOCK_BYTES: usize = 256 << 20;
const FS_FILE_BYTES: usize = 16 << 20;
/// Times the fs READ and WRITE figures go over the file in a run.
const FS_PASSES: usize = 16;
/// Bytes the fs READ and WRITE figures move in a run.
const FS_RUN_BYTES: usize = FS_FILE_BYTES * FS_PASSES;
const FS_CHUNK: usize = 128 << 10;
const GETATTRS: usize = 100_000;
const ROUND_TRIPS: usize = 10_000;
const CALLS: u32 = 2_000_000;

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

/// Where the device's event loop runs while the work is timed.
#[derive(Clone, Copy)]
enum Shape {
    OneThread,
    AsInVm,
}

/// A harness whose device loop can move to a thread of its own.
trait DeviceHarness {
    fn run_device_on_thread(&mut self, confine: impl FnOnce() + Send + 'static);
}

impl DeviceHarness for GuestStream {
    fn run_device_on_thread(&mut self, confine: impl FnOnce() + Send + 'static) {
        GuestStream::run_device_on_thread(self, confine);
    }
}

impl DeviceHarness for (FsHarness, u64, u64) {
    fn run_device_on_thread(&mut self, confine: impl FnOnce() + Send + 'static) {
        self.0.run_device_on_thread(confine);
    }
}

/// Builds a harness and times the work on it in `shape`, the device
/// confined by `filters` when given.
fn shaped<S: DeviceHarness + Send>(
    shape: Shape,
    filters: Option<&[ThreadFilter]>,
    build: impl FnOnce() -> S + Send,
    time: impl FnOnce(S) -> Duration + Send,
) -> Duration {
    match shape {
        Shape::OneThread => on_thread(filters, build, time),
        Shape::AsInVm => {
            let mut state = build();
            let filters = filters.map(<[_]>::to_vec).unwrap_or_default();
            state.run_device_on_thread(move || {
                for f in &filters {
                    f.install().expect("installing a seccomp filter");
                }
            });
            time(state)
        }
    }
}

/// An fs harness with a file of FS_FILE_BYTES: its node and an open handle.
fn fs_with_file() -> (FsHarness, u64, u64) {
    let mut h = FsHarness::new();
    std::fs::write(h.host("big"), vec![0x7e; FS_FILE_BYTES]).unwrap();
    let node = h.lookup(1, "big").expect("lookup").nodeid;
    let fh = h.open(node, libc::O_RDWR).expect("open");
    (h, node, fh)
}

/// The file offsets of a run's FS_CHUNK-sized reads or writes: FS_PASSES
/// times over the file.
fn fs_run_offsets() -> impl Iterator<Item = u64> {
    (0..FS_RUN_BYTES)
        .step_by(FS_CHUNK)
        .map(|off| (off % FS_FILE_BYTES) as u64)
}

fn fs_read((mut h, node, fh): (FsHarness, u64, u64)) -> Duration {
    let start = Instant::now();
    for off in fs_run_offsets() {
        let data = h.read(node, fh, off, FS_CHUNK as u32).expect("read");
        assert_eq!(data.len(), FS_CHUNK);
    }
    start.elapsed()
}

fn fs_write((mut h, node, fh): (FsHarness, u64, u64)) -> Duration {
    let chunk = vec![0x11; FS_CHUNK];
    let start = Instant::now();
    for off in fs_run_offsets() {
        let n = h.write(node, fh, off, &chunk).expect("write");
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
    run: fn(Shape, Option<&[ThreadFilter]>) -> Duration,
}

fn mib_per_s(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / d.as_secs_f64()
}

/// Figures that drive a device, measured in both shapes.
const DEVICE_FIGURES: &[Figure] = &[
    Figure {
        name: "vsock host->guest 64K",
        unit: "MiB/s",
        value: |d| mib_per_s(VSOCK_BYTES, d),
        run: |shape, f| {
            shaped(
                shape,
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
        run: |shape, f| {
            shaped(
                shape,
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
        run: |shape, f| {
            shaped(
                shape,
                f,
                || GuestStream::new(1),
                |s| s.time_round_trip(4096, ROUND_TRIPS),
            )
        },
    },
    Figure {
        name: "fs READ 128K",
        unit: "MiB/s",
        value: |d| mib_per_s(FS_RUN_BYTES, d),
        run: |shape, f| shaped(shape, f, fs_with_file, fs_read),
    },
    Figure {
        name: "fs WRITE 128K",
        unit: "MiB/s",
        value: |d| mib_per_s(FS_RUN_BYTES, d),
        run: |shape, f| shaped(shape, f, fs_with_file, fs_write),
    },
    Figure {
        name: "fs GETATTR",
        unit: "us",
        value: |d| d.as_secs_f64() * 1e6,
        run: |shape, f| shaped(shape, f, fs_with_file, fs_getattr),
    },
];

/// Bare system calls, on one thread only (they have no device to move).
const SYSCALL_FIGURES: &[Figure] = &[
    Figure {
        name: "syscall getpid",
        unit: "ns",
        value: |d| d.as_secs_f64() * 1e9,
        run: |_, f| on_thread(f, || (), getpid_call),
    },
    Figure {
        name: "syscall ioctl FIONBIO",
        unit: "ns",
        value: |d| d.as_secs_f64() * 1e9,
        run: |_, f| {
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

/// The middle half's width (p75 - p25) against the median, in percent:
/// how far apart two runs of the same side typically are.
fn spread(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let at = |q: usize| v[(v.len() - 1) * q / 4];
    (at(3) - at(1)) / at(2) * 100.0
}

/// The CPU model and count the figures come from.
fn host() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpu
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map_or("unknown CPU", str::trim)
        .to_owned();
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    format!("{model}, {cpus} CPUs")
}

/// Runs each figure ROUNDS times off and on, alternating, in `shape`, and
/// prints a row per figure.
fn table<'a>(
    title: &str,
    shape: Shape,
    figures: impl IntoIterator<Item = &'a Figure>,
    filters: &[ThreadFilter],
) {
    println!("\n{title}");
    println!(
        "{:<24} {:>6} {:>11} {:>7} {:>11} {:>7} {:>9}",
        "figure", "unit", "off", "spread", "on", "spread", "on/off"
    );
    for f in figures {
        let (mut off, mut on) = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            off.push((f.value)((f.run)(shape, None)));
            on.push((f.value)((f.run)(shape, Some(filters))));
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
}

fn main() {
    let runtime = ThreadFilter::compile(ThreadKind::Runtime, runtime_allowlist())
        .expect("compiling the runtime's filter");
    let devices = VmFilters::compile()
        .expect("compiling the VM's filters")
        .devices;
    let device_thread = [runtime, devices];
    println!(
        "devices with and without the device thread's seccomp filters, on {}",
        host()
    );
    println!("{ROUNDS} alternating runs each; median, and spread (p75-p25)/median of each side");
    table(
        "on one thread: device, scripted guest and host side, all confined",
        Shape::OneThread,
        DEVICE_FIGURES.iter().chain(SYSCALL_FIGURES),
        &device_thread,
    );
    table(
        "as in a VM: the device thread confined; guest and host side unconfined, polling",
        Shape::AsInVm,
        DEVICE_FIGURES,
        &device_thread,
    );
    println!("\non/off: above 1 is faster with seccomp for MiB/s, slower for us and ns");
}
