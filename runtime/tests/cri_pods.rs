//! Kubernetes pods through containerd's CRI plugin, as kubelet drives them:
//! Debian's containerd 1.6 with its CRI plugin and Debian's CNI plugins
//! (a bridge with host-local addresses from 198.18.0.0/15), the `husk`
//! runtime handler, and a real CRI client (k8s-cri's gRPC stubs).
//!
//! A pod is one husk process with one VM; the pause container and every
//! app container run in the guest, and the pod's network reaches the guest
//! through the tap husk joins to the CNI's veth. Pods start from the cached
//! template, so one test serves several pods; `pod_serves_...` checks most
//! of a pod's life on one pod.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::containerd::{containerd_or_skip, Containerd, IMAGE};
use common::cri::{container_config, log_file, pod_config, Cri};

const HANDLER: &str = "husk";
/// What container A serves on port 8080 (busybox httpd).
const A_SERVES: &str =
    "echo a-started; mkdir -p /www; echo hello-from-a > /www/index.html; exec httpd -f -p 8080 -h /www";

/// A pod cgroup as kubelet makes one (`/kubepods/.../pod<uid>`), under
/// each v1 hierarchy containerd reads pod stats from; removed on drop.
struct PodCgroup {
    path: String,
    dirs: Vec<PathBuf>,
}

impl PodCgroup {
    fn new(name: &str) -> Self {
        let parent = format!("husk-test-{}", std::process::id());
        let path = format!("/{parent}/pod-{name}");
        let mut dirs = Vec::new();
        for h in ["memory", "cpu", "cpuacct", "pids"] {
            let root = Path::new("/sys/fs/cgroup").join(h);
            if root.join("cgroup.procs").exists() {
                std::fs::create_dir_all(root.join(&path[1..])).unwrap();
                dirs.push(root.join(&path[1..]));
                dirs.push(root.join(&parent));
            }
        }
        Self { path, dirs }
    }
}

impl Drop for PodCgroup {
    fn drop(&mut self) {
        for d in &self.dirs {
            let _ = std::fs::remove_dir(d);
        }
    }
}

/// Waits until `cond` holds, up to `secs`.
fn wait_until(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// An HTTP GET of `/` at `ip:8080` from the host, as a client off the pod.
fn http_get(ip: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(
        &format!("{ip}:8080").parse().unwrap(),
        Duration::from_secs(10),
    )?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// Kernel objects of the host that a pod's network could leave behind:
/// network namespaces containerd made for pods, and links named like
/// husk's taps in them.
fn netns_files(c: &Containerd) -> Vec<String> {
    let dir = c.dir.join("state/io.containerd.grpc.v1.cri/netns");
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path().display().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// `argv` run in the network namespace at `netns` (a path, as CRI's are).
fn in_netns_cmd(netns: &str, argv: &[&str]) -> std::process::Command {
    let mut cmd = std::process::Command::new("nsenter");
    cmd.arg(format!("--net={netns}")).args(argv);
    cmd
}

/// KVM VMs open in `pid` (its `anon_inode:kvm-vm` file descriptors).
fn vm_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter(|e| {
            std::fs::read_link(e.path())
                .map(|l| l.to_string_lossy() == "anon_inode:kvm-vm")
                .unwrap_or(false)
        })
        .count()
}

#[test]
fn pod_serves_two_containers_on_the_cni_network() {
    if !containerd_or_skip("pod_serves_two_containers_on_the_cni_network") {
        return;
    }
    let c = Containerd::start_cri("cri-pod");
    let cri = Cri::connect(c.cri_socket());
    let cgroup = PodCgroup::new("p1");
    let logs = c.dir.join("pod-logs/p1");
    let mut pc = pod_config("p1", &logs);
    pc.linux.as_mut().unwrap().cgroup_parent = cgroup.path.clone();
    let pod = cri.run_pod(&pc, HANDLER).expect("RunPodSandbox");
    let ip = cri.pod_ip(&pod);

    let a_cfg = container_config("a", IMAGE, &["sh", "-c", A_SERVES]);
    let a = cri.create_container(&pod, &a_cfg, &pc).expect("create a");
    cri.start_container(&a).expect("start a");
    let b_cfg = container_config(
        "b",
        IMAGE,
        &["sh", "-c", "echo b-started >&2; exec sleep 100000"],
    );
    let b = cri.create_container(&pod, &b_cfg, &pc).expect("create b");
    cri.start_container(&b).expect("start b");

    // One husk process holds the pod, with one VM in it.
    let pids = c.shim_pids();
    assert_eq!(pids.len(), 1, "one husk process per pod: {pids:?}");
    assert_eq!(vm_count(pids[0]), 1, "one VM in the pod's husk process");

    // B reaches A on localhost (one network namespace per pod, in the guest).
    wait_until(120, "A's log line", || {
        std::fs::read_to_string(log_file(&logs, "a")).is_ok_and(|l| l.contains("a-started"))
    });
    let r = cri
        .exec_sync(
            &b,
            &["wget", "-q", "-O", "-", "http://127.0.0.1:8080/"],
            120,
        )
        .expect("ExecSync wget");
    assert_eq!((r.exit_code, r.stdout.trim()), (0, "hello-from-a"), "{r:?}");

    // The host reaches A on the pod IP the CNI reported.
    let page = http_get(&ip).unwrap_or_else(|e| panic!("GET http://{ip}:8080/: {e}"));
    assert!(page.contains("hello-from-a"), "{page}");

    // ExecSync returns output and the exit code.
    let r = cri
        .exec_sync(&a, &["sh", "-c", "echo out; echo err >&2; exit 3"], 120)
        .expect("ExecSync");
    assert_eq!(
        (r.stdout.as_str(), r.stderr.as_str(), r.exit_code),
        ("out\n", "err\n", 3)
    );

    // The guest interface has the pod IP, and the pod's DNS config and
    // hostname reached the containers.
    let r = cri
        .exec_sync(
            &b,
            &[
                "sh",
                "-c",
                "ip -o -4 addr show; cat /etc/resolv.conf; hostname",
            ],
            120,
        )
        .expect("ExecSync ip");
    assert!(r.stdout.contains(&format!("inet {ip}/")), "{r:?}");
    assert!(r.stdout.contains("nameserver 198.18.255.53"), "{r:?}");
    assert!(r.stdout.lines().any(|l| l == "p1"), "{r:?}");

    // The CRI log files hold each container's output in CRI's format.
    let a_log = std::fs::read_to_string(log_file(&logs, "a")).unwrap();
    assert!(
        a_log.lines().any(|l| l.ends_with(" stdout F a-started")),
        "{a_log}"
    );
    wait_until(30, "B's log line", || {
        std::fs::read_to_string(log_file(&logs, "b"))
            .is_ok_and(|l| l.contains(" stderr F b-started"))
    });

    // Container stats come from the guest; pod stats from the host cgroup
    // the husk process joined.
    let stats = cri.container_stats(&a).expect("ContainerStats");
    let mem = stats
        .memory
        .and_then(|m| m.working_set_bytes)
        .map_or(0, |v| v.value);
    assert!(mem > 0, "container memory: {stats:?}");
    let pstats = cri.pod_stats(&pod).expect("PodSandboxStats");
    let pmem = pstats
        .linux
        .and_then(|l| l.memory)
        .and_then(|m| m.working_set_bytes)
        .map_or(0, |v| v.value);
    assert!(pmem > 0, "pod memory from the host cgroup");

    cri.stop_pod(&pod).expect("StopPodSandbox");
    cri.remove_pod(&pod).expect("RemovePodSandbox");
    wait_until(60, "the pod's husk process to end", || {
        c.shim_pids().is_empty()
    });
    let left = c.leftovers();
    assert!(left.is_empty(), "left behind: {left:?}");
    assert!(
        netns_files(&c).is_empty(),
        "netns left: {:?}",
        netns_files(&c)
    );
}

#[test]
fn two_pods_reach_each_other_and_bad_network_input_is_refused() {
    if !containerd_or_skip("two_pods_reach_each_other_and_bad_network_input_is_refused") {
        return;
    }
    let c = Containerd::start_cri("cri-pods");
    let cri = Cri::connect(c.cri_socket());
    let mut pods = Vec::new();
    for name in ["p1", "p2"] {
        let logs = c.dir.join("pod-logs").join(name);
        let pc = pod_config(name, &logs);
        let pod = cri.run_pod(&pc, HANDLER).expect("RunPodSandbox");
        let cfg = container_config("web", IMAGE, &["sh", "-c", A_SERVES]);
        let id = cri.create_container(&pod, &cfg, &pc).expect("create");
        cri.start_container(&id).expect("start");
        let ip = cri.pod_ip(&pod);
        pods.push((pod, id, ip));
    }
    assert_ne!(pods[0].2, pods[1].2, "each pod has its own IP");
    assert_eq!(c.shim_pids().len(), 2, "one husk process per pod");
    for (from, to) in [(0, 1), (1, 0)] {
        let url = format!("http://{}:8080/", pods[to].2);
        let r = cri
            .exec_sync(&pods[from].1, &["wget", "-q", "-O", "-", &url], 120)
            .expect("ExecSync wget");
        assert_eq!(
            (r.exit_code, r.stdout.trim()),
            (0, "hello-from-a"),
            "{url}: {r:?}"
        );
    }

    // The CNI's veth removed under a running pod: husk keeps serving it
    // (its network is gone, nothing else) and tears it down cleanly.
    let netns = netns_files(&c);
    let victim = netns
        .iter()
        .find(|n| {
            let out = in_netns_cmd(n, &["ip", "-o", "-4", "addr", "show"])
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).contains(&format!(" {}/", pods[1].2))
        })
        .expect("p2's netns");
    let del = in_netns_cmd(victim, &["ip", "link", "del", "eth0"])
        .status()
        .unwrap();
    assert!(del.success(), "deleting p2's veth");
    let r = cri
        .exec_sync(&pods[1].1, &["echo", "still-here"], 120)
        .expect("ExecSync after veth removal");
    assert_eq!(r.stdout.trim(), "still-here");
    assert_eq!(c.shim_pids().len(), 2, "husk survived the veth removal");

    // A host-network pod: husk cannot give a VM the host's network.
    let logs = c.dir.join("pod-logs/host");
    let mut pc = pod_config("hostnet", &logs);
    let ns = pc
        .linux
        .as_mut()
        .unwrap()
        .security_context
        .as_mut()
        .unwrap();
    ns.namespace_options.as_mut().unwrap().network = k8s_cri::v1::NamespaceMode::Node as i32;
    let err = cri.run_pod(&pc, HANDLER).unwrap_err();
    assert!(err.message().contains("the host's network"), "{err:?}");

    for (pod, _, _) in &pods {
        cri.stop_pod(pod).expect("StopPodSandbox");
        cri.remove_pod(pod).expect("RemovePodSandbox");
    }
    cri.remove_all_pods();
    wait_until(60, "every husk process to end", || c.shim_pids().is_empty());
    let left = c.leftovers();
    assert!(left.is_empty(), "left behind: {left:?}");
    assert!(
        netns_files(&c).is_empty(),
        "netns left: {:?}",
        netns_files(&c)
    );
}
