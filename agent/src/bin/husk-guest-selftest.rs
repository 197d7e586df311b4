//! Guest self-test, run as /init (PID 1) in a husk guest.
//!
//! Proves that guest user space works: console writes, fork/wait, exec,
//! pipes, a Unix socket pair, a vsock socket(2) call, the clock. Each step
//! prints `selftest: <step> ok` (or `FAILED`), then `HUSK-SELFTEST-PASS` or
//! `HUSK-SELFTEST-FAIL`, and the VM is powered off with reboot(2).
//!
//! Other modes, chosen by the first argument (for /init: words after `--` on
//! the kernel command line): `bench` prints timings of getpid and fork+wait,
//! so the same binary measures the guest and the host; `idle` prints
//! `HUSK-IDLE` and sleeps; `exit` exits with status 3; `run PROG ARGS...`
//! runs a program and prints `HUSK-RUN-EXIT <status>`; `fs [TAG READ WRITE]`
//! reports the root filesystem (mounts, DAX) and, given a virtio-fs TAG,
//! reads and writes files on it (see `fs_check`); `vsock HOST_PORT
//! LISTEN_PORT` echoes a guest- and a host-initiated vsock connection
//! (`vsock.rs`).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Instant;

#[path = "husk-guest-selftest/fpu.rs"]
mod fpu;
#[path = "husk-guest-selftest/vsock.rs"]
mod vsock;

const MODES: &[&str] = &[
    "exec-child",
    "exit",
    "idle",
    "run",
    "bench",
    "vsock",
    "fs",
    "fpu-leak",
];

/// One self-test step: Ok, or what went wrong.
type Step = fn() -> Result<(), String>;

fn main() {
    // As /init, the kernel may put unknown bare command-line words before the
    // words after `--`; the mode is the first known word.
    let args: Vec<String> = std::env::args().skip(1).collect();
    let at = args
        .iter()
        .position(|a| MODES.contains(&a.as_str()))
        .unwrap_or(args.len());
    let args = &args[at..];
    match args.first().map(String::as_str) {
        Some("exec-child") => std::process::exit(42),
        // As /init: an init that exits, so the guest kernel panics.
        Some("exit") => std::process::exit(3),
        Some("idle") => idle(),
        Some("run") => run_program(&args[1..]),
        Some("vsock") => vsock::echo_both_ways(&args[1..]),
        Some("fs") => fs_check(&args[1..]),
        Some("fpu-leak") => {
            if std::process::id() == 1 {
                mount_basics();
            }
            fpu::fpu_leak()
        }
        Some("bench") => {
            bench();
            end_vm();
            return;
        }
        _ => {}
    }
    println!("selftest: started as pid {}", std::process::id());
    if std::process::id() == 1 {
        mount_basics();
    }
    let steps: &[(&str, Step)] = &[
        ("fork-wait", fork_wait),
        ("exec", exec),
        ("pipe", pipe),
        ("unix-socket", unix_socket),
        ("vsock-socket", vsock_socket),
        ("clock", clock),
        ("signal", signal),
    ];
    let mut failed = 0;
    for (name, step) in steps {
        match step() {
            Ok(()) => println!("selftest: {name} ok"),
            Err(e) => {
                failed += 1;
                println!("selftest: {name} FAILED: {e}");
            }
        }
    }
    // The kernel passes unknown `key=value` command-line words to init's environment.
    if std::env::var_os("husk_selftest_bench").is_some() {
        bench();
    }
    println!(
        "{}",
        if failed == 0 {
            "HUSK-SELFTEST-PASS"
        } else {
            "HUSK-SELFTEST-FAIL"
        }
    );
    end_vm();
}

/// As init, mounts what programs expect to find: /proc, /sys, /dev.
fn mount_basics() {
    for (source, target, fstype) in [
        ("proc", "/proc", "proc"),
        ("sysfs", "/sys", "sysfs"),
        ("devtmpfs", "/dev", "devtmpfs"),
    ] {
        let (s, t, f) = (cstr(source), cstr(target), cstr(fstype));
        // SAFETY: mount(2) with valid NUL-terminated strings and no data.
        if unsafe { libc::mount(s.as_ptr(), t.as_ptr(), f.as_ptr(), 0, std::ptr::null()) } != 0 {
            let e = std::io::Error::last_os_error();
            // The kernel mounts devtmpfs itself over a disk root (DEVTMPFS_MOUNT).
            if e.raw_os_error() != Some(libc::EBUSY) {
                println!("selftest: mount {target}: {e}");
            }
        }
    }
}

fn cstr(s: &str) -> std::ffi::CString {
    std::ffi::CString::new(s).expect("literal without NUL")
}

/// Runs a program as a guest process, reports its exit status, ends the VM.
fn run_program(argv: &[String]) -> ! {
    if std::process::id() == 1 {
        mount_basics();
    }
    let status = match argv.split_first() {
        Some((prog, rest)) => match std::process::Command::new(prog).args(rest).status() {
            Ok(s) => format!("{:?}", s.code()),
            Err(e) => format!("spawn failed: {e}"),
        },
        None => "no program given".into(),
    };
    println!("HUSK-RUN-EXIT {status}");
    end_vm();
    std::process::exit(0)
}

/// PID 1 ends the VM by powering it off.
pub(crate) fn end_vm() {
    let _ = std::io::stdout().flush();
    if std::process::id() == 1 {
        // SAFETY: sync and reboot(2) with a valid command.
        unsafe {
            libc::sync();
            libc::reboot(libc::RB_POWER_OFF);
        }
    }
}

/// `fs [TAG READ WRITE [OPTIONS]]`: prints every /proc/mounts line as
/// `HUSK-MOUNT <line>`, whether /sbin/init is a DAX file (`HUSK-FS-DAX
/// /sbin/init 1|0`) and whether the root refuses writes (`HUSK-FS-ROOT-WRITE
/// <errno or ok>`). With a virtio-fs TAG: mounts it at /mnt (with mount
/// OPTIONS such as `dax=always`), writes WRITE there (`HUSK-FS-WROTE <name>`),
/// reads READ (`HUSK-FS-READ <bytes> <fnv1a64>`) and says whether READ is a
/// DAX file. Ends with `HUSK-FS-DONE` and powers off.
fn fs_check(args: &[String]) -> ! {
    if std::process::id() == 1 {
        mount_basics();
    }
    // Mount the share first, so /proc/mounts shows it too.
    let share = match args {
        [tag, read, write, rest @ ..] => {
            let options = rest.first().map_or("", String::as_str);
            Some(mount_virtiofs(tag, options).map(|()| (tag, read, write)))
        }
        _ => None,
    };
    match std::fs::read_to_string("/proc/mounts") {
        Ok(mounts) => mounts.lines().for_each(|l| println!("HUSK-MOUNT {l}")),
        Err(e) => println!("HUSK-FS-FAILED read /proc/mounts: {e}"),
    }
    report_dax("/sbin/init");
    let root_write = match std::fs::write("/husk-write-test", b"x") {
        Ok(()) => "ok".to_string(),
        Err(e) => e.raw_os_error().map_or(e.to_string(), |n| n.to_string()),
    };
    println!("HUSK-FS-ROOT-WRITE {root_write}");
    println!("HUSK-FS-PMEM-WRITE {}", pmem_write_probe());
    if let Some(Err(e)) =
        share.map(|s| s.and_then(|(tag, read, write)| virtiofs_io(tag, read, write)))
    {
        println!("HUSK-FS-FAILED {e}");
    }
    println!("HUSK-FS-DONE");
    end_vm();
    std::process::exit(0)
}

/// Writes a block at the end of /dev/pmem0, bypassing every cache, and reads
/// it back: `kept` when the write reached the device memory, `dropped` when
/// it did not (a read-only image: KVM turns the stores into exits the VMM
/// ignores).
fn pmem_write_probe() -> String {
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    const BLOCK: usize = 4096;
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT | libc::O_SYNC)
        .open("/dev/pmem0")
    {
        Ok(f) => f,
        Err(e) => return format!("open /dev/pmem0: {e}"),
    };
    // A block device's size is where its end is.
    let size = match std::io::Seek::seek(&mut &file, std::io::SeekFrom::End(0)) {
        Ok(size) => size,
        Err(e) => return format!("size /dev/pmem0: {e}"),
    };
    // O_DIRECT wants block-aligned memory: carve aligned blocks out of a larger buffer.
    let mut raw = vec![0u8; 3 * BLOCK];
    let skip = raw.as_ptr().align_offset(BLOCK);
    let (written, read) = raw[skip..skip + 2 * BLOCK].split_at_mut(BLOCK);
    written.fill(0xa5);
    let at = size.saturating_sub(BLOCK as u64);
    if let Err(e) = file.write_all_at(written, at) {
        return format!("write: {e}");
    }
    if let Err(e) = file.read_exact_at(read, at) {
        return format!("read back: {e}");
    }
    if read == written { "kept" } else { "dropped" }.into()
}

fn report_dax(path: &str) {
    match is_dax(path) {
        Ok(dax) => println!("HUSK-FS-DAX {path} {}", u8::from(dax)),
        Err(e) => println!("HUSK-FS-FAILED {e}"),
    }
}

fn is_dax(path: &str) -> Result<bool, String> {
    let p = cstr(path);
    // SAFETY: statx is plain old data; all-zero is a valid value.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: statx(2) with a valid path and an output buffer of the right type.
    if unsafe {
        libc::statx(
            libc::AT_FDCWD,
            p.as_ptr(),
            0,
            libc::STATX_BASIC_STATS,
            &mut stx,
        )
    } != 0
    {
        return Err(errno(&format!("statx {path}")));
    }
    let dax = libc::STATX_ATTR_DAX as u64;
    Ok(stx.stx_attributes_mask & dax != 0 && stx.stx_attributes & dax != 0)
}

fn mount_virtiofs(tag: &str, options: &str) -> Result<(), String> {
    let (t, m, f) = (cstr(tag), cstr("/mnt"), cstr("virtiofs"));
    let data = std::ffi::CString::new(options).map_err(|_| "NUL in mount options")?;
    // SAFETY: mount(2) with valid NUL-terminated strings; data is a C string.
    if unsafe { libc::mount(t.as_ptr(), m.as_ptr(), f.as_ptr(), 0, data.as_ptr().cast()) } != 0 {
        return Err(errno(&format!(
            "mount -t virtiofs -o {options:?} {tag} /mnt"
        )));
    }
    Ok(())
}

fn virtiofs_io(tag: &str, read: &str, write: &str) -> Result<(), String> {
    let out = format!("/mnt/{write}");
    let text = format!("written by the guest into {tag}\n");
    std::fs::write(&out, text).map_err(|e| format!("write {out}: {e}"))?;
    println!("HUSK-FS-WROTE {write}");
    let path = format!("/mnt/{read}");
    let mut file = std::fs::File::open(&path).map_err(|e| format!("open {path}: {e}"))?;
    let mut buf = vec![0u8; 1 << 20];
    let (mut total, mut hash) = (0u64, FNV_OFFSET);
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| format!("read {path}: {e}"))?;
        if n == 0 {
            break;
        }
        total += n as u64;
        hash = fnv1a64(hash, &buf[..n]);
    }
    println!("HUSK-FS-READ {total} {hash:016x}");
    report_dax(&path);
    Ok(())
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// FNV-1a, 64 bit: a checksum the host test computes the same way.
fn fnv1a64(mut hash: u64, data: &[u8]) -> u64 {
    for &b in data {
        hash = (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// Announces an idle guest (for `husk bench boot`) and sleeps forever.
fn idle() -> ! {
    println!("HUSK-IDLE");
    loop {
        // SAFETY: pause(2) has no preconditions.
        unsafe { libc::pause() };
    }
}

pub(crate) fn errno(what: &str) -> String {
    format!("{what}: {}", std::io::Error::last_os_error())
}

fn fork_wait() -> Result<(), String> {
    // SAFETY: the child only calls async-signal-safe _exit.
    let pid = unsafe { libc::fork() };
    match pid {
        -1 => Err(errno("fork")),
        // SAFETY: in the child, leave at once without running any Rust code.
        0 => unsafe { libc::_exit(7) },
        child => {
            let mut status = 0;
            // SAFETY: waiting for our own child with a valid status pointer.
            if unsafe { libc::waitpid(child, &mut status, 0) } != child {
                return Err(errno("waitpid"));
            }
            match libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status)) {
                Some(7) => Ok(()),
                other => Err(format!("child status {other:?}, raw {status:#x}")),
            }
        }
    }
}

fn exec() -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let status = std::process::Command::new(exe)
        .arg("exec-child")
        .status()
        .map_err(|e| format!("spawn: {e}"))?;
    match status.code() {
        Some(42) => Ok(()),
        other => Err(format!("exec'd child exited with {other:?}")),
    }
}

fn pipe() -> Result<(), String> {
    let mut fds = [0; 2];
    // SAFETY: fds has room for the two descriptors pipe(2) writes.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        return Err(errno("pipe"));
    }
    let msg = b"through a pipe";
    // SAFETY: valid fds from pipe(2) and a valid buffer.
    unsafe {
        libc::write(fds[1], msg.as_ptr().cast(), msg.len());
        let mut buf = [0u8; 32];
        let n = libc::read(fds[0], buf.as_mut_ptr().cast(), buf.len());
        libc::close(fds[0]);
        libc::close(fds[1]);
        if n != msg.len() as isize || &buf[..msg.len()] != msg {
            return Err(format!("read {n} bytes back"));
        }
    }
    Ok(())
}

fn unix_socket() -> Result<(), String> {
    let (mut a, mut b) = UnixStream::pair().map_err(|e| format!("socketpair: {e}"))?;
    a.write_all(b"ping").map_err(|e| e.to_string())?;
    let mut buf = [0u8; 4];
    b.read_exact(&mut buf).map_err(|e| e.to_string())?;
    (&buf == b"ping")
        .then_some(())
        .ok_or_else(|| "wrong bytes".to_string())
}

fn vsock_socket() -> Result<(), String> {
    // SAFETY: plain socket(2) call; the fd is closed right away.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM, 0) };
    if fd < 0 {
        return Err(errno("socket(AF_VSOCK)"));
    }
    // SAFETY: fd is ours.
    unsafe { libc::close(fd) };
    Ok(())
}

fn clock() -> Result<(), String> {
    let start = Instant::now();
    let wall = std::time::SystemTime::now();
    // SAFETY: nanosleep with a valid timespec.
    unsafe {
        libc::nanosleep(
            &libc::timespec {
                tv_sec: 0,
                tv_nsec: 10_000_000,
            },
            std::ptr::null_mut(),
        )
    };
    let elapsed = start.elapsed();
    if elapsed.as_millis() < 10 {
        return Err(format!(
            "monotonic clock advanced only {elapsed:?} over a 10 ms sleep"
        ));
    }
    println!(
        "selftest: clock: slept {elapsed:?}, wall clock {:?}",
        wall.duration_since(std::time::UNIX_EPOCH)
    );
    Ok(())
}

static SIGNALLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn signal() -> Result<(), String> {
    extern "C" fn on_usr1(_: libc::c_int) {
        SIGNALLED.store(true, std::sync::atomic::Ordering::SeqCst);
    }
    // SAFETY: installing a handler that only stores to an atomic, then raising it.
    unsafe {
        libc::signal(
            libc::SIGUSR1,
            on_usr1 as extern "C" fn(libc::c_int) as libc::sighandler_t,
        );
        libc::raise(libc::SIGUSR1);
    }
    SIGNALLED
        .load(std::sync::atomic::Ordering::SeqCst)
        .then_some(())
        .ok_or_else(|| "handler did not run".into())
}

fn bench() {
    const GETPIDS: u32 = 10_000;
    const FORKS: u32 = 100;
    let t = Instant::now();
    for _ in 0..GETPIDS {
        // SAFETY: getpid has no preconditions; the raw syscall avoids any libc caching.
        unsafe { libc::syscall(libc::SYS_getpid) };
    }
    let getpid = t.elapsed();
    let t = Instant::now();
    for _ in 0..FORKS {
        let _ = fork_wait();
    }
    let fork = t.elapsed();
    println!(
        "selftest-bench: getpid x{GETPIDS} = {} us, fork+wait x{FORKS} = {} us",
        getpid.as_micros(),
        fork.as_micros()
    );
}
