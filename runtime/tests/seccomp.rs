//! Per-thread seccomp on real husk processes: every thread of `husk vm`
//! and of a shim serving a sandbox under containerd runs under a filter
//! (`Seccomp: 2` in /proc/<pid>/task/*/status), each VMM thread under a
//! list of its own on top of the runtime's (`Seccomp_filters: 2`); each
//! kind of thread that calls outside its list (HUSK_SECCOMP_PROBE) kills
//! husk by SIGSYS with a line naming the thread, its list and the call,
//! on stderr for `husk vm` and in containerd's log for a shim; and
//! `--seccomp off` leaves every thread unconfined and says so.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use common::containerd::{
    assert_no_host_cgroups, containerd_or_skip, stderr, stdout, Containerd, IMAGE, RUNTIME,
};
use common::{guest_assets, kvm_or_skip};
use husk_vmm::seccomp::probe::PROBE_ENV;

/// One thread of a process, as /proc shows it.
#[derive(Debug)]
struct Thread {
    tid: u32,
    name: String,
    /// 0 none, 1 strict, 2 filter.
    seccomp: Option<u32>,
    /// How many filters it holds (kernels since 5.9 show it).
    filters: Option<u32>,
}

fn threads(pid: u32) -> Vec<Thread> {
    let mut all = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return all;
    };
    for task in tasks.flatten() {
        let Ok(status) = std::fs::read_to_string(task.path().join("status")) else {
            continue;
        };
        let field = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .map(|v| v.trim().to_string())
        };
        all.push(Thread {
            tid: task.file_name().to_string_lossy().parse().unwrap_or(0),
            name: field("Name:").unwrap_or_default(),
            seccomp: field("Seccomp:").and_then(|v| v.parse().ok()),
            filters: field("Seccomp_filters:").and_then(|v| v.parse().ok()),
        });
    }
    all
}

/// A scratch directory with a share for virtio-fs.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("husk-seccomp-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("share")).unwrap();
    dir
}

/// `husk vm` booting the test kernel with a vsock and a virtio-fs device
/// (so there is a device thread), its console in `dir`.
fn husk_vm(dir: &Path, extra: &[&str]) -> Command {
    let a = guest_assets();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_husk"));
    cmd.arg("vm")
        .arg("--kernel")
        .arg(&a.kernel)
        .arg("--initrd")
        .arg(&a.initrd)
        .arg("--vsock")
        .arg(format!("cid=3,uds={}", dir.join("v.sock").display()))
        .arg("--fs")
        .arg(format!("share={}", dir.join("share").display()))
        .arg("--console")
        .arg(dir.join("console.log"))
        .arg("--report-timing")
        .args(extra)
        .env_remove(PROBE_ENV)
        .env("HUSK_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

/// The child's stderr, line by line, as it comes.
fn stderr_lines(child: &mut Child) -> Receiver<String> {
    let (tx, rx) = channel();
    let err = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// Waits for a line containing `what`; returns every line seen so far.
fn wait_for_line(lines: &Receiver<String>, what: &str, timeout: Duration) -> Vec<String> {
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match lines.recv_timeout(left) {
            Ok(line) => {
                let found = line.contains(what);
                seen.push(line);
                if found {
                    return seen;
                }
            }
            Err(_) => break,
        }
    }
    panic!(
        "no line with {what:?} within {timeout:?}:\n{}",
        seen.join("\n")
    );
}

/// The threads of `pid` once `ready` says they are all set up (the VMM's
/// threads install their lists as they start), or as they are at `timeout`.
fn settled_threads(pid: u32, ready: impl Fn(&[Thread]) -> bool, timeout: Duration) -> Vec<Thread> {
    let deadline = Instant::now() + timeout;
    loop {
        let now = threads(pid);
        if ready(&now) || Instant::now() > deadline {
            return now;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

const VMM_THREADS: [&str; 3] = ["husk-vcpu0", "husk-devices", "husk-vmm"];

fn vmm_threads_confined(threads: &[Thread]) -> bool {
    VMM_THREADS.iter().all(|name| {
        threads
            .iter()
            .any(|t| t.name == *name && t.seccomp == Some(2))
    })
}

/// Every thread of `pid` has a filter; the VMM's threads hold their own
/// list on top of the runtime's; the main thread (the runtime's first)
/// holds the runtime's alone.
fn assert_confined(pid: u32, threads: &[Thread]) {
    let table = format!("{threads:#?}");
    assert!(vmm_threads_confined(threads), "{table}");
    assert!(threads.iter().any(|t| t.tid == pid), "{table}");
    for t in threads {
        assert_eq!(
            t.seccomp,
            Some(2),
            "thread {} is not confined: {table}",
            t.name
        );
        let want = if VMM_THREADS.contains(&t.name.as_str()) {
            2
        } else if t.tid == pid {
            1
        } else {
            continue;
        };
        if let Some(filters) = t.filters {
            assert_eq!(filters, want, "thread {}: {table}", t.name);
        }
    }
}

#[test]
fn every_thread_of_husk_vm_runs_under_its_list() {
    if !kvm_or_skip("every_thread_of_husk_vm_runs_under_its_list") {
        return;
    }
    let dir = scratch("vm");
    let mut child = husk_vm(&dir, &[]).spawn().unwrap();
    let lines = stderr_lines(&mut child);
    wait_for_line(&lines, "first_guest_entry", Duration::from_secs(120));
    let pid = child.id();
    let now = settled_threads(pid, vmm_threads_confined, Duration::from_secs(20));
    let _ = child.kill();
    let _ = child.wait();
    assert_confined(pid, &now);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn each_thread_kind_breaking_its_list_kills_husk_with_a_line_naming_the_call() {
    if !kvm_or_skip("each_thread_kind_breaking_its_list_kills_husk_with_a_line_naming_the_call") {
        return;
    }
    let dir = scratch("probe");
    // (HUSK_SECCOMP_PROBE, thread, list, the call its probe makes)
    let kinds = [
        ("runtime", "husk", "runtime", "execve (system call 59)"),
        ("vmm", "husk-vmm", "vmm", "socket (system call 41)"),
        (
            "devices",
            "husk-devices",
            "devices",
            "mount (system call 165)",
        ),
        ("vcpu", "husk-vcpu0", "vcpu", "openat (system call 257)"),
    ];
    for (probe, thread, list, call) in kinds {
        let _ = std::fs::remove_file(dir.join("v.sock"));
        let mut child = husk_vm(&dir, &[]).env(PROBE_ENV, probe).spawn().unwrap();
        let lines = stderr_lines(&mut child);
        let want = format!(
            "husk: seccomp: thread {thread} ({list} allowlist) called {call}, which its \
             allowlist does not allow; killing the process"
        );
        let seen = wait_for_line(&lines, "husk: seccomp:", Duration::from_secs(120));
        let status = child.wait().unwrap();
        let text = seen.join("\n");
        assert!(text.contains(&want), "{probe}: want {want:?} in:\n{text}");
        assert_eq!(
            status.signal(),
            Some(libc::SIGSYS),
            "{probe}: husk dies by SIGSYS ({status:?}):\n{text}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn seccomp_off_leaves_every_thread_unconfined_and_says_so() {
    if !kvm_or_skip("seccomp_off_leaves_every_thread_unconfined_and_says_so") {
        return;
    }
    let dir = scratch("off");
    // The probe needs a filter to break: with seccomp off it does nothing.
    let mut child = husk_vm(&dir, &["--seccomp", "off"])
        .env(PROBE_ENV, "vcpu")
        .spawn()
        .unwrap();
    let lines = stderr_lines(&mut child);
    let seen = wait_for_line(&lines, "first_guest_entry", Duration::from_secs(120));
    let named = |t: &[Thread]| VMM_THREADS.iter().all(|n| t.iter().any(|t| t.name == *n));
    let now = settled_threads(child.id(), named, Duration::from_secs(20));
    let alive = child.try_wait().unwrap().is_none();
    let _ = child.kill();
    let _ = child.wait();
    let text = seen.join("\n");
    assert!(
        text.contains("seccomp is off (--seccomp)"),
        "the warning line:\n{text}"
    );
    assert!(alive, "husk still runs");
    assert!(named(&now), "{now:#?}");
    for t in &now {
        assert_eq!(t.seccomp, Some(0), "{now:#?}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `ctr ARGS` (as &str), asserting success; returns stdout.
fn ctr_ok(c: &Containerd, args: &[&str]) -> String {
    let out = c.ctr(args);
    assert!(out.status.success(), "ctr {args:?}: {}", stderr(&out));
    stdout(&out)
}

fn wait_until_clean(c: &Containerd) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !c.leftovers().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(c.leftovers(), Vec::<String>::new(), "nothing left behind");
}

#[test]
fn every_thread_of_a_shim_serving_a_sandbox_runs_confined() {
    if !containerd_or_skip("every_thread_of_a_shim_serving_a_sandbox_runs_confined") {
        return;
    }
    let c = Containerd::start("seccomp");
    let run = [
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        IMAGE,
        "sc1",
        "sh",
        "-c",
        "sleep 100000",
    ];
    ctr_ok(&c, &run);
    c.wait_task_status("sc1", "RUNNING", Duration::from_secs(600));
    // An exec with its own stdio threads, the files it writes served by
    // the device thread.
    let exec = [
        "task",
        "exec",
        "--exec-id",
        "e1",
        "sc1",
        "sh",
        "-c",
        "echo confined > /tmp/f && cat /tmp/f",
    ];
    assert_eq!(ctr_ok(&c, &exec).trim(), "confined");
    let pids = c.shim_pids();
    assert_eq!(pids.len(), 1, "one husk process: {pids:?}");
    let now = settled_threads(pids[0], vmm_threads_confined, Duration::from_secs(20));
    assert_confined(pids[0], &now);
    assert!(now.iter().any(|t| t.name == "husk-oom"), "{now:#?}");

    ctr_ok(&c, &["task", "kill", "-s", "SIGKILL", "sc1"]);
    c.wait_task_status("sc1", "STOPPED", Duration::from_secs(120));
    ctr_ok(&c, &["task", "rm", "sc1"]);
    ctr_ok(&c, &["container", "rm", "sc1"]);
    wait_until_clean(&c);
}

#[test]
fn a_shims_vcpu_breaking_its_list_is_reported_in_containerds_log() {
    if !containerd_or_skip("a_shims_vcpu_breaking_its_list_is_reported_in_containerds_log") {
        return;
    }
    let c = Containerd::start_with_env("seccomp-probe", &[(PROBE_ENV, "vcpu")]);
    let args = c.run_args(&[], "sc2", &["true"]);
    let out = c.ctr(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        !out.status.success(),
        "the sandbox's husk died: {}",
        stdout(&out)
    );
    let log = std::fs::read_to_string(c.dir.join("containerd.log")).unwrap();
    let want = "husk: seccomp: thread husk-vcpu0 (vcpu allowlist) called openat (system call \
                257), which its allowlist does not allow; killing the process";
    assert!(log.contains(want), "{want:?} in containerd.log:\n{log}");
    let _ = c.ctr(&["task", "rm", "-f", "sc2"]);
    let _ = c.ctr(&["container", "rm", "sc2"]);
    wait_until_clean(&c);
    assert_no_host_cgroups(&["sc2"]);
}
