//! Faults from every side, under a real containerd: the guest dying in the
//! middle of an exec (its kernel panics), the vsock socket removed on the
//! host, containerd restarted while a pod runs, husk's state directory
//! full, and a pod under many execs at once and in a row.
//!
//! The agent is the guest's PID 1: the kernel panics when it dies ("attempted
//! to kill init"), and on a fatal error it powers the guest off itself. The
//! host sees both as the VM ending, which the panic test drives (the
//! console line that names the reason is unit-tested in sandbox/ended.rs).

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::containerd::{
    assert_no_host_cgroups, containerd_or_skip, stderr, stdout, Containerd, IMAGE, RUNTIME,
};

/// Bounds of the load check. This machine's guest kernel is emulated
/// (software KVM): an exec costs about 2 s of guest time, so the defaults fit
/// the test budget and HUSK_LOAD_CONCURRENT / HUSK_LOAD_SEQUENTIAL scale
/// them up (100 and 1000 are the figures: about 45 minutes here).
const CONCURRENT_EXECS: usize = 4;
const SEQUENTIAL_EXECS: usize = 6;
/// Growth allowed over the load: descriptors of the husk process (none may
/// stay per exec) and its resident memory (allocator caches, not per exec).
const FD_SLACK: usize = 4;
/// Threads of the husk process (none may stay per exec: a copier left
/// blocked on a FIFO was 13-16 KiB of RSS each).
const THREAD_SLACK: usize = 4;
const RSS_SLACK_KIB: u64 = 8 * 1024;

fn join(sandbox: &str) -> [String; 4] {
    [
        "--annotation".into(),
        "io.kubernetes.cri.container-type=container".into(),
        "--annotation".into(),
        format!("io.kubernetes.cri.sandbox-id={sandbox}"),
    ]
}

/// `ctr run --rm` (attached) of `args` in container `id`, as a child whose
/// exit status is the container's.
fn run_attached(c: &Containerd, extra: &[String], id: &str, args: &[&str]) -> Child {
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let argv = c.run_args(&extra, id, args);
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    c.lasting_ctr_cmd(&argv)
        .stdin(Stdio::null())
        .spawn()
        .unwrap()
}

fn exit_code(child: &mut Child) -> Option<i32> {
    child.wait().unwrap().code()
}

fn sandbox_dir(c: &Containerd, id: &str) -> PathBuf {
    c.state_dir.join("sandboxes").join(id)
}

/// Waits until husk left nothing behind; `own_mount` is one the test made.
fn wait_clean(c: &Containerd, own_mount: Option<&Path>, timeout: Duration) {
    let own = own_mount.map(|m| format!("mount {}", m.display()));
    let left = || -> Vec<String> {
        let mut l = c.leftovers();
        l.retain(|x| Some(x) != own.as_ref());
        l
    };
    let deadline = Instant::now() + timeout;
    while !left().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(left(), Vec::<String>::new(), "nothing left behind");
}

/// A privileged pod with a second container and a running exec; the vsock
/// socket is removed (the pod keeps working: the runtime's connection to
/// the agent is made once, at boot); then an exec crashes the guest kernel.
/// Every task must end with 255, the shim's log must say the kernel
/// panicked, and nothing may be left once containerd deletes them.
#[test]
fn a_guest_kernel_panic_ends_every_task_with_the_reason() {
    if !containerd_or_skip("a_guest_kernel_panic_ends_every_task_with_the_reason") {
        return;
    }
    let c = Containerd::start("panic");
    let privileged = ["--privileged".to_string()];
    let mut pod = run_attached(&c, &privileged, "gp", &["sleep", "100000"]);
    c.wait_task_status("gp", "RUNNING", Duration::from_secs(600));

    let dir = sandbox_dir(&c, "gp");
    let removed = remove_vsock_sockets(&dir);
    assert!(
        removed >= 1,
        "the sandbox had a vsock socket in {}",
        dir.display()
    );
    let out = c.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "e1",
        "gp",
        "sh",
        "-c",
        "echo still; exit 3",
    ]);
    assert_eq!(stdout(&out).trim(), "still", "{}", stderr(&out));
    assert_eq!(
        out.status.code(),
        Some(3),
        "an exec's status without the socket"
    );

    let mut joined = run_attached(&c, &join("gp"), "gj", &["sleep", "100000"]);
    c.wait_task_status("gj", "RUNNING", Duration::from_secs(300));
    // Its output reaches ctr only once the shim has the exec started (the
    // guest's ps shows it earlier, while the agent still works on the
    // ExecProcess reply: a crash then fails the start instead).
    let mut sleeper = c
        .ctr_cmd(&[
            "task",
            "exec",
            "--exec-id",
            "e2",
            "gp",
            "sh",
            "-c",
            "echo started; exec sleep 100000",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_line(&mut sleeper, "started", Duration::from_secs(300));

    let crash = c.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "boom",
        "gp",
        "sh",
        "-c",
        "echo c > /proc/sysrq-trigger",
    ]);
    assert_eq!(
        crash.status.code(),
        Some(255),
        "the crashing exec: {}",
        stderr(&crash)
    );
    assert_eq!(exit_code(&mut sleeper), Some(255), "the running exec");
    assert_eq!(
        exit_code(&mut joined),
        Some(255),
        "the pod's second container"
    );
    assert_eq!(exit_code(&mut pod), Some(255), "the pod's own container");

    let log = std::fs::read_to_string(c.dir.join("containerd.log")).unwrap();
    let reason = "the guest kernel panicked: sysrq triggered crash";
    assert!(
        log.contains(reason),
        "containerd's log has no line naming the panic ({reason})"
    );
    // Both `ctr run --rm` deleted their containers; the last took the sandbox.
    wait_clean(&c, None, Duration::from_secs(60));
    assert_no_host_cgroups(&["gp", "gj"]);
}

/// Removes `vsock.sock` and every `vsock.sock_<port>` in `dir`; how many.
fn remove_vsock_sockets(dir: &Path) -> usize {
    let mut n = 0;
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if e.file_name().to_string_lossy().starts_with("vsock.sock") {
            std::fs::remove_file(e.path()).unwrap();
            n += 1;
        }
    }
    n
}

/// Waits until `child` prints `line` on its stdout.
fn wait_for_line(child: &mut Child, line: &str, limit: Duration) {
    let out = child.stdout.take().expect("stdout is piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut out = BufReader::new(out);
        let mut first = String::new();
        let _ = out.read_line(&mut first);
        let _ = tx.send(first);
        // The rest goes nowhere, but ctr must not write to a closed pipe.
        let _ = std::io::copy(&mut out, &mut std::io::sink());
    });
    match rx.recv_timeout(limit) {
        Ok(first) => assert_eq!(first.trim(), line, "the exec's first line"),
        Err(_) => panic!("no {line:?} from the exec in {limit:?}"),
    }
}

/// One pod through a containerd restart, a full state directory and a load
/// of execs: the shim is found again through its bundle's address file and
/// keeps serving; a full state directory fails a new sandbox with an error
/// naming it and disturbs neither the running pod nor the cleanup; execs
/// leave no descriptors and bounded memory behind in the husk process.
#[test]
fn a_pod_outlives_a_containerd_restart_a_full_state_dir_and_a_load_of_execs() {
    let name = "a_pod_outlives_a_containerd_restart_a_full_state_dir_and_a_load_of_execs";
    if !containerd_or_skip(name) {
        return;
    }
    let c = Containerd::start("restart");
    let state = SmallTmpfs::mount(&c.state_dir, "64m");
    let out = c.ctr(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        IMAGE,
        "lp",
        "sleep",
        "100000",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let pids = c.shim_pids();
    assert_eq!(pids.len(), 1, "one husk process");

    c.restart();
    c.wait_task_status("lp", "RUNNING", Duration::from_secs(30));
    assert_eq!(c.shim_pids(), pids, "the same husk process serves the pod");
    exec_ok(&c, "after-restart");

    full_state_dir_is_refused_and_harmless(&c, &state);
    load_of_execs_leaves_nothing(&c, pids[0]);

    let kill = c.ctr(&["task", "kill", "-s", "SIGKILL", "lp"]);
    assert!(kill.status.success(), "{}", stderr(&kill));
    c.wait_task_status("lp", "STOPPED", Duration::from_secs(60));
    let del = c.ctr(&["task", "delete", "lp"]);
    assert!(del.status.success(), "{}", stderr(&del));
    let rm = c.ctr(&["containers", "rm", "lp"]);
    assert!(rm.status.success(), "{}", stderr(&rm));
    wait_clean(&c, Some(&c.state_dir), Duration::from_secs(60));
    assert_no_host_cgroups(&["lp", "full"]);
}

/// `ctr task exec` of `true` in the pod, which must succeed.
fn exec_ok(c: &Containerd, exec_id: &str) {
    let out = c.ctr(&["task", "exec", "--exec-id", exec_id, "lp", "true"]);
    assert!(
        out.status.success(),
        "exec {exec_id}: {:?} {}",
        out.status,
        stderr(&out)
    );
}

fn full_state_dir_is_refused_and_harmless(c: &Containerd, state: &SmallTmpfs) {
    let fill = state.fill();
    exec_ok(c, "while-full");
    let out = c.ctr(&["run", "-d", "--runtime", RUNTIME, IMAGE, "full", "true"]);
    let err = stderr(&out);
    eprintln!("new sandbox on a full state dir: {:?} {err}", out.status);
    assert!(
        !out.status.success(),
        "a sandbox started on a full state directory"
    );
    assert!(
        err.contains("No space left on device") && err.contains(&c.state_dir.display().to_string()),
        "the error names the full state directory: {err}"
    );
    let _ = c.ctr(&["task", "delete", "full"]);
    let rm = c.ctr(&["containers", "rm", "full"]);
    assert!(rm.status.success(), "{}", stderr(&rm));
    std::fs::remove_file(&fill).unwrap();
    let left: Vec<String> = c
        .leftovers()
        .into_iter()
        .filter(|l| l.contains("full"))
        .collect();
    assert_eq!(
        left,
        Vec::<String>::new(),
        "the refused sandbox left nothing"
    );
    exec_ok(c, "after-full");
}

fn load_of_execs_leaves_nothing(c: &Containerd, husk: u32) {
    let dir = sandbox_dir(c, "lp");
    let concurrent = env_count("HUSK_LOAD_CONCURRENT", CONCURRENT_EXECS);
    let sequential = env_count("HUSK_LOAD_SEQUENTIAL", SEQUENTIAL_EXECS);
    let (fds0, rss0) = (fd_count(husk), husk_own_rss_kib(&dir));
    let threads0 = thread_count(husk);
    let started = Instant::now();
    let children: Vec<(String, Child)> = (0..concurrent)
        .map(|i| {
            let id = format!("c{i}");
            let child = c
                .ctr_cmd(&[
                    "task",
                    "exec",
                    "--exec-id",
                    &id,
                    "lp",
                    "sh",
                    "-c",
                    "exit $((7 + 0))",
                ])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .spawn()
                .unwrap();
            (id, child)
        })
        .collect();
    for (id, mut child) in children {
        assert_eq!(exit_code(&mut child), Some(7), "concurrent exec {id}");
    }
    let concurrent_took = started.elapsed();
    let started = Instant::now();
    for i in 0..sequential {
        exec_ok(c, &format!("s{i}"));
    }
    let (fds1, rss1) = (fd_count(husk), husk_own_rss_kib(&dir));
    let threads1 = thread_count(husk);
    eprintln!(
        "load: {concurrent} concurrent execs in {concurrent_took:?}, {sequential} sequential in \
         {:?}; husk fds {fds0} -> {fds1}, threads {threads0} -> {threads1}, husk's own RSS \
         {rss0} -> {rss1} KiB",
        started.elapsed()
    );
    assert!(
        threads1 <= threads0 + THREAD_SLACK,
        "threads grew: {threads0} -> {threads1}"
    );
    assert!(
        fds1 <= fds0 + FD_SLACK,
        "descriptors grew: {fds0} -> {fds1}"
    );
    assert!(
        rss1 <= rss0 + RSS_SLACK_KIB,
        "RSS grew by more than {RSS_SLACK_KIB} KiB: {rss0} -> {rss1}"
    );
}

fn env_count(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{var}={v} is not a count"))
        })
        .unwrap_or(default)
}

fn thread_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .count()
}

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// The husk process's resident memory without the guest's RAM (which the
/// guest fills as it pleases), from the sandbox's metrics socket.
fn husk_own_rss_kib(sandbox_dir: &Path) -> u64 {
    use std::io::{Read, Write};
    let mut conn = std::os::unix::net::UnixStream::connect(sandbox_dir.join("metrics.sock"))
        .expect("the sandbox's metrics socket");
    conn.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut text = String::new();
    conn.read_to_string(&mut text).unwrap();
    let sample = |part: &str| -> u64 {
        let name = format!("husk_process_rss_bytes{{part=\"{part}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&name))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no {name} in the metrics:\n{text}")) as u64
    };
    (sample("total") - sample("guest")) / 1024
}

/// A tmpfs of a given size mounted on a directory for the test's life.
struct SmallTmpfs {
    at: PathBuf,
}

impl SmallTmpfs {
    fn mount(at: &Path, size: &str) -> Self {
        std::fs::create_dir_all(at).unwrap();
        nix::mount::mount(
            Some("tmpfs"),
            at,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some(format!("size={size},mode=0700").as_str()),
        )
        .unwrap();
        Self { at: at.into() }
    }

    /// Writes a file until the tmpfs has no space left; returns its path.
    fn fill(&self) -> PathBuf {
        use std::io::Write;
        let path = self.at.join("fill");
        let mut f = std::fs::File::create(&path).unwrap();
        let block = vec![0u8; 1 << 16];
        loop {
            match f.write(&block) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => panic!("filling {}: {e}", path.display()),
            }
        }
        path
    }
}

impl Drop for SmallTmpfs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.at, nix::mount::MntFlags::MNT_DETACH);
    }
}
