//! Metrics and the density bench on real pods (husk processes started by
//! `husk run -d`, guests restored from the cached template):
//!
//! - `husk metrics` on a running sandbox returns text the strict
//!   Prometheus parser accepts, with every family the endpoint promises,
//!   and the counters move while the guest works;
//! - `husk bench density` with 3 pods, one of which the test kills with
//!   SIGKILL mid-run: the bench reports that pod's failure, measures the
//!   others, writes its table, CSV and PNG, and leaves no husk process,
//!   socket, mount, cgroup or directory of the run behind.

mod common;

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::containerd::husk_config;
use common::{guest_assets, kvm_or_skip};
use husk_runtime::metrics::{parse, Exposition};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Upper bound for a pod to start on a loaded software-KVM host (not a
/// timing assertion: a hang ends the test instead of the suite).
const START_BOUND: Duration = Duration::from_secs(900);

fn root_and_kvm_or_skip(test: &str) -> bool {
    if !kvm_or_skip(test) {
        return false;
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIP {test}: needs root (a sandbox mounts its container's root)");
        return false;
    }
    true
}

fn husk() -> Command {
    Command::new(env!("CARGO_BIN_EXE_husk"))
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(false)
}

/// A `husk run -d` pod of the test; killed and cleaned if the test fails.
struct DetachedPod {
    pid: u32,
    state: PathBuf,
    id: String,
}

impl DetachedPod {
    fn output(&self) -> String {
        std::fs::read_to_string(self.state.join(format!("{}.output.log", self.id)))
            .unwrap_or_default()
    }

    /// `husk metrics --sandbox ID`, parsed; None until it answers.
    fn metrics(&self) -> Option<Exposition> {
        let out = husk()
            .args(["metrics", "--sandbox", &self.id, "--state-dir"])
            .arg(&self.state)
            .output()
            .unwrap();
        if !out.status.success() {
            return None;
        }
        let text = String::from_utf8(out.stdout).expect("UTF-8 metrics");
        Some(parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}")))
    }

    /// Polls the metrics until `done` holds (or the pod dies: a panic).
    fn wait_until(&self, what: &str, done: impl Fn(&Exposition) -> bool) -> Exposition {
        let started = Instant::now();
        loop {
            assert!(alive(self.pid), "the pod died: {}", self.output());
            if let Some(e) = self.metrics() {
                if done(&e) {
                    return e;
                }
            }
            assert!(
                started.elapsed() < START_BOUND,
                "{what}: not within {START_BOUND:?}: {}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

impl Drop for DetachedPod {
    fn drop(&mut self) {
        if alive(self.pid) {
            let _ = kill(Pid::from_raw(self.pid as i32), Signal::SIGKILL);
            while alive(self.pid) {
                std::thread::sleep(Duration::from_millis(50));
            }
            let dir = husk_runtime::sandbox::SandboxDir::new(&self.state, &self.id);
            let _ = dir.remove();
        }
    }
}

const WORKER: &str = "trap 'exit 0' TERM; while :; do echo tick; date >> /tmp/ticks; sleep 1; done";

/// Every family the endpoint promises, in a scrape of a running pod.
const FAMILIES: &[&str] = &[
    "husk_sandbox_start_phase_seconds",
    "husk_sandbox_phase_monotonic_seconds",
    "husk_agent_rpc_duration_seconds",
    "husk_agent_rpcs_total",
    "husk_vcpu_exits_total",
    "husk_vsock_packets_total",
    "husk_vsock_bytes_total",
    "husk_vsock_connections_opened_total",
    "husk_vsock_connections_closed_total",
    "husk_virtiofs_requests_total",
    "husk_virtiofs_errors_total",
    "husk_virtiofs_bytes_total",
    "husk_net_packets_total",
    "husk_net_bytes_total",
    "husk_guest_memory_bytes",
    "husk_process_rss_bytes",
    "husk_process_pss_bytes",
    "husk_process_threads",
];

#[test]
fn husk_metrics_of_a_running_sandbox_parse_and_move_with_the_guest() {
    let test = "husk_metrics_of_a_running_sandbox_parse_and_move_with_the_guest";
    if !root_and_kvm_or_skip(test) {
        return;
    }
    let base = PathBuf::from(format!("/tmp/husk-metrics-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base).unwrap();
    let bundle = base.join("bundle");
    common::busybox_bundle(&bundle, &["sh", "-c", WORKER]);
    let state = base.join("state");
    let config = base.join("husk.toml");
    std::fs::write(&config, husk_config(&state)).unwrap();
    let out = husk()
        .args(["run", "-d", "--id", "m1", "--config"])
        .arg(&config)
        .arg("--bundle")
        .arg(&bundle)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pid: u32 = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("husk run -d prints the pod's pid");
    let pod = DetachedPod {
        pid,
        state: state.clone(),
        id: "m1".into(),
    };

    let phase =
        |e: &Exposition, p: &str| e.value("husk_sandbox_start_phase_seconds", &[("phase", p)]);
    let a = pod.wait_until("the container runs", |e| {
        phase(e, "container_running").is_some()
    });
    for f in FAMILIES {
        assert!(a.family(f).is_some(), "no {f} in the scrape");
    }
    let order = [
        "boot_start",
        "vm_entry",
        "agent_ready",
        "sandbox_ready",
        "container_running",
    ];
    let times: Vec<f64> = order
        .iter()
        .map(|p| phase(&a, p).unwrap_or_else(|| panic!("no phase {p}")))
        .collect();
    assert!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "phases in order: {times:?}"
    );
    assert_eq!(
        a.value("husk_guest_memory_bytes", &[]),
        Some(256.0 * 1024.0 * 1024.0)
    );
    let pss = |e: &Exposition, part| {
        e.value("husk_process_pss_bytes", &[("part", part)])
            .unwrap()
    };
    assert!(pss(&a, "total") > pss(&a, "guest") && pss(&a, "guest") > 0.0);
    assert!(a.value("husk_process_threads", &[]).unwrap() >= 3.0);
    assert_eq!(
        a.value(
            "husk_agent_rpcs_total",
            &[("method", "create_container"), ("result", "ok")]
        ),
        Some(1.0)
    );
    let rtt_count = a
        .value("husk_agent_rpc_duration_seconds_count", &[])
        .unwrap();
    assert!(
        rtt_count >= 3.0,
        "Restored, CreateSandbox, CreateContainer, StartContainer: {rtt_count}"
    );
    assert!(a.value("husk_vsock_connections_opened_total", &[]).unwrap() >= 1.0);

    // The container appends to a file on its root (virtio-fs) and prints
    // (the agent's stdout stream, over vsock) every second.
    let fs_ops = |e: &Exposition| e.sum("husk_virtiofs_requests_total");
    let fs_bytes = |e: &Exposition| e.sum("husk_virtiofs_bytes_total");
    let exits = |e: &Exposition| e.sum("husk_vcpu_exits_total");
    let vsock = |e: &Exposition| e.sum("husk_vsock_bytes_total");
    let b = pod.wait_until("the counters move", |b| {
        fs_ops(b) > fs_ops(&a) && vsock(b) > vsock(&a)
    });
    assert!(fs_bytes(&b) > fs_bytes(&a));
    assert!(exits(&b) > exits(&a));
    assert!(b.sum("husk_vsock_packets_total") > a.sum("husk_vsock_packets_total"));

    // SIGTERM reaches the container, whose trap ends it; the sandbox goes.
    // Only once the trap is set: the shell is its PID namespace's init,
    // which drops a SIGTERM it has no handler for (the counters above can
    // move before the shell runs, from the agent's own traffic). Its first
    // tick, on the bundle's rootfs, comes after the trap.
    let ticks = bundle.join("rootfs/tmp/ticks");
    let started = Instant::now();
    while !ticks.exists() {
        assert!(started.elapsed() < START_BOUND, "no {}", ticks.display());
        std::thread::sleep(Duration::from_millis(200));
    }
    kill(Pid::from_raw(pid as i32), Signal::SIGTERM).unwrap();
    let started = Instant::now();
    while alive(pid) {
        assert!(started.elapsed() < START_BOUND, "the pod did not stop");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(pod.metrics().is_none(), "the endpoint is gone with the pod");
    let dir = state.join("sandboxes/m1");
    assert!(!dir.exists(), "{} left behind", dir.display());
    drop(pod);
    std::fs::remove_dir_all(&base).unwrap();
}

/// The pid serving a sandbox's metrics socket (its husk process).
fn server_pid(socket: &Path) -> Option<u32> {
    let conn = UnixStream::connect(socket).ok()?;
    let cred =
        nix::sys::socket::getsockopt(&conn, nix::sys::socket::sockopt::PeerCredentials).ok()?;
    u32::try_from(cred.pid()).ok()
}

/// Processes whose command line names a pod id starting with `prefix`.
fn processes_of(prefix: &str) -> Vec<String> {
    let id = format!(" {prefix}-");
    husk_runtime::procfs::live_processes()
        .into_iter()
        .map(|p| (p.pid, format!(" {}", p.args.join(" "))))
        .filter(|(_, text)| text.contains(&id))
        .map(|(pid, text)| format!("{pid}:{text}"))
        .collect()
}

#[test]
fn density_bench_reports_a_killed_pod_and_leaves_nothing_behind() {
    let test = "density_bench_reports_a_killed_pod_and_leaves_nothing_behind";
    if !root_and_kvm_or_skip(test) {
        return;
    }
    let base = PathBuf::from(format!("/tmp/husk-density-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base).unwrap();
    let config = base.join("husk.toml");
    std::fs::write(&config, husk_config(&base.join("unused-state"))).unwrap();
    let out_dir = base.join("out");
    let work = PathBuf::from(format!("/tmp/hdt-{}", std::process::id()));
    let mut bench = husk()
        .args(["bench", "density", "--count", "3", "--concurrency", "2"])
        .args(["--settle-secs", "1", "--idle-secs", "2", "--config"])
        .arg(&config)
        .arg("--out")
        .arg(&out_dir)
        .arg("--work-dir")
        .arg(&work)
        .arg("--pause")
        .arg(&guest_assets().pause)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let prefix = format!("hd{}", bench.id());
    let victim = format!("{prefix}-1");

    // Kill the second pod's husk process (SIGKILL: no cleanup of its own)
    // as soon as it serves its metrics, whatever phase it is in.
    let socket = work
        .join("state/sandboxes")
        .join(&victim)
        .join("metrics.sock");
    let started = Instant::now();
    let killed = loop {
        if let Some(pid) = server_pid(&socket) {
            kill(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
            break pid;
        }
        assert!(
            bench.try_wait().unwrap().is_none(),
            "the bench ended before pod {victim} served its metrics"
        );
        assert!(
            started.elapsed() < START_BOUND,
            "pod {victim} never served its metrics"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let output = bench.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let context = format!("stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        !output.status.success(),
        "a pod failed: the bench says so: {context}"
    );

    // The report: the table, the failure with its cause, the others measured.
    for needle in [
        "p50",
        "p99",
        "PSS, all (MiB)",
        "husk's own",
        "to container running",
        "/dev/kvm:",
        "guest kernel",
        "3 started, 2 measured running, 1 failed",
        &format!("{victim} (pid {killed}): its husk process {killed} was killed by SIGKILL"),
        "left behind after the teardown:\n    nothing",
    ] {
        assert!(
            stdout.contains(needle),
            "no {needle:?} in the report: {context}"
        );
    }
    let csv = std::fs::read_to_string(out_dir.join("density.csv")).unwrap();
    let rows: Vec<Vec<&str>> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').collect())
        .collect();
    assert_eq!(rows.len(), 3, "{csv}");
    let header: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    for (i, row) in rows.iter().enumerate() {
        let status = row[col("status")];
        if i == 1 {
            assert_eq!(status, "failed", "{csv}");
            continue;
        }
        assert_eq!(status, "ok", "{csv}");
        let pss: u64 = row[col("pss_kib")].parse().unwrap();
        let guest: u64 = row[col("pss_guest_ram_kib")].parse().unwrap();
        let own: u64 = row[col("pss_husk_kib")].parse().unwrap();
        assert!(
            pss > 0 && guest > 0 && own > 0 && guest + own <= pss,
            "{csv}"
        );
        let running: f64 = row[col("container_running_s")].parse().unwrap();
        let entry: f64 = row[col("vm_entry_s")].parse().unwrap();
        assert!(running >= entry, "{csv}");
    }
    let png = std::fs::read(out_dir.join("density.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    assert!(std::fs::read_to_string(out_dir.join("report.txt"))
        .unwrap()
        .contains(&victim));

    // Nothing of the run is left, checked here as well as by the bench.
    assert_eq!(processes_of(&prefix), Vec::<String>::new(), "{context}");
    assert!(!work.exists(), "{} left behind: {context}", work.display());
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&work.display().to_string()),
        "mounts left under {}",
        work.display()
    );
    let cgroups = Command::new("find")
        .args(["/sys/fs/cgroup", "-maxdepth", "4", "-type", "d", "-name"])
        .arg(format!("{prefix}-*"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&cgroups.stdout), "", "cgroups left");
    std::fs::remove_dir_all(&base).unwrap();
}
