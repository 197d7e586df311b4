//! husk-agent as the real guest's PID 1: boot it under `husk vm` with the
//! vsock device, reach it through the device's Unix socket with the runtime's
//! agent client (CONNECT handshake + ttrpc), check what it reports against
//! what the guest kernel printed, then run a busybox container from the
//! rootfs carried in the initramfs and check its output and exit code, then
//! a second one whose rootfs is a host directory shared through virtio-fs and
//! mounted by the agent on request. One boot for every assertion: boots are
//! slow on software KVM.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use common::agent::{create_and_start, ctx, read_to_end, remove, spec, wait, RPC_TIMEOUT};
use common::{guest_assets, kvm_or_skip, vm_config, TestVm};
use husk_agent_protocol::agent::{self, health_check_response::ServingStatus};
use husk_runtime::agent::AgentClient;
use husk_runtime::agent_client::{
    connect_agent, connect_vsock, AgentConnectError, AGENT_VSOCK_PORT,
};
use husk_vmm::{FsConfig, VsockSpec};

const GUEST_MEM_MIB: u64 = 256;

/// The agent's VM, stopped when dropped so a failed assertion leaves no
/// guest behind.
struct AgentGuest {
    vm: TestVm,
    dir: PathBuf,
    uds: PathBuf,
    /// Host busybox rootfs shared with the guest as virtio-fs tag `SHARE_TAG`.
    share: PathBuf,
}

impl AgentGuest {
    fn boot(initrd: &Path) -> AgentGuest {
        let dir = std::env::temp_dir().join(format!("husk-agent-real-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let uds = dir.join("vsock.sock");
        let share = dir.join("share");
        let built = Command::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../rootfs/build-busybox-rootfs.sh"
        ))
        .arg(&share)
        .stdout(Stdio::null())
        .status()
        .unwrap();
        assert!(built.success(), "building the shared busybox rootfs failed");
        let mut config = vm_config(GUEST_MEM_MIB, 1, "console=ttyS0 reboot=k panic=-1");
        config.initrd = Some(initrd.to_path_buf());
        config.vsock = Some(VsockSpec {
            cid: 3,
            uds: uds.clone(),
        });
        config.fs = vec![FsConfig::new(SHARE_TAG, &share)];
        AgentGuest {
            vm: TestVm::start(&config),
            dir,
            uds,
            share,
        }
    }
}

impl Drop for AgentGuest {
    fn drop(&mut self) {
        self.vm.vm.stop();
        if std::thread::panicking() {
            let console = self.vm.console.text();
            let lines: Vec<&str> = console.lines().collect();
            let tail = lines[lines.len().saturating_sub(30)..].join("\n");
            eprintln!("guest console (last lines):\n{tail}");
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// "Linux version 6.12.57+deb13-amd64 (...)" -> "6.12.57+deb13-amd64".
fn kernel_release_from_console(console: &str) -> &str {
    console
        .lines()
        .find_map(|l| l.split("Linux version ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .expect("the console shows the kernel's version line")
}

fn assert_guest_answers(client: &AgentClient, console: &str) {
    let health = client.check(ctx(), &agent::CheckRequest::new()).unwrap();
    assert_eq!(health.status.enum_value(), Ok(ServingStatus::SERVING));

    let details = client
        .get_guest_details(ctx(), &agent::GetGuestDetailsRequest::new())
        .unwrap();
    assert_eq!(details.kernel_release, kernel_release_from_console(console));
    let total = details.memory_total_bytes;
    let mib = 1024 * 1024;
    assert!(
        total > GUEST_MEM_MIB / 2 * mib && total <= GUEST_MEM_MIB * mib,
        "MemTotal {total} bytes is not plausible for a {GUEST_MEM_MIB} MiB guest"
    );
    assert_eq!(details.agent_version, env!("CARGO_PKG_VERSION"));
}

/// The virtio-fs tag of the shared container rootfs, and where the agent mounts it.
const SHARE_TAG: &str = "ctr";
const SHARE_MOUNT: &str = "/run/husk/ctr/rootfs";

/// The busybox rootfs ci/guest-assets.sh puts into the agent's initramfs.
const GUEST_ROOTFS: &str = "/containers/busybox/rootfs";

/// CreateSandbox, then `sh -c 'echo hi; echo err >&2; exit 3'` in a container
/// limited to 64 MiB. (With the guest kernel on FXSAVE only, this busybox
/// segfaulted in glibc's TLS setup every time with a limit: its AVX memcpy,
/// preempted at a page fault the memcg charge made slower, came back with
/// another task's YMM upper halves. See `real_guest_fpu`.)
fn run_echo_container(client: &AgentClient) {
    let sandbox = agent::CreateSandboxRequest {
        sandbox_id: "pod".into(),
        hostname: "husk-pod".into(),
        ..Default::default()
    };
    client.create_sandbox(ctx(), &sandbox).unwrap();
    let echo = spec(
        r#"["sh", "-c", "echo hi; echo err >&2; exit 3"]"#,
        r#"{ "memory": { "limit": 67108864 } }"#,
    );
    let initramfs_rootfs = agent::Rootfs {
        path: GUEST_ROOTFS.into(),
        ..Default::default()
    };
    create_and_start(client, "echo", echo, initramfs_rootfs);

    let (c1, c2) = (client.clone(), client.clone());
    let stdout = std::thread::spawn(move || read_to_end(&c1, "echo", false));
    let stderr = std::thread::spawn(move || read_to_end(&c2, "echo", true));
    assert_eq!(wait(client, "echo"), 3);
    assert_eq!(stdout.join().unwrap(), "hi\n");
    assert_eq!(stderr.join().unwrap(), "err\n");

    // Its cgroup (v2 in the guest) outlives the process until RemoveContainer.
    let stats = agent::StatsContainerRequest {
        container_id: "echo".into(),
        ..Default::default()
    };
    let stats = client.stats_container(ctx(), &stats).unwrap();
    assert_eq!(stats.memory.limit_bytes, 64 << 20, "{stats:?}");
    assert!(stats.cpu.usage_ns > 0, "sh ran in the cgroup: {stats:?}");
    remove(client, "echo");
}

/// A container whose rootfs is the host's shared directory, mounted by the
/// agent from the virtio-fs tag: it reads a file the host wrote there and
/// writes one the host then reads.
fn run_shared_rootfs_container(client: &AgentClient, share: &Path) {
    std::fs::write(share.join("from-host"), "written on the host\n").unwrap();
    let args = r#"["sh", "-c", "cat /from-host; echo written in the guest > /from-guest"]"#;
    let rootfs = agent::Rootfs {
        path: SHARE_MOUNT.into(),
        source: SHARE_TAG.into(),
        fstype: "virtiofs".into(),
        ..Default::default()
    };
    create_and_start(client, "shared", spec(args, "{}"), rootfs);
    let c = client.clone();
    let stdout = std::thread::spawn(move || read_to_end(&c, "shared", false));
    assert_eq!(wait(client, "shared"), 0);
    assert_eq!(stdout.join().unwrap(), "written on the host\n");
    remove(client, "shared");
    assert_eq!(
        std::fs::read_to_string(share.join("from-guest")).unwrap(),
        "written in the guest\n"
    );
}

#[test]
fn agent_as_pid1_answers_over_vsock() {
    if !kvm_or_skip("agent_as_pid1_answers_over_vsock") {
        return;
    }
    let assets = guest_assets();
    let started = Instant::now();
    let guest = AgentGuest::boot(&assets.agent_initrd);
    let console = guest.vm.wait_for("serving ttrpc on vsock://-1:1024");
    let serving = started.elapsed();

    // Nothing listens on the next port: the handshake says so.
    let err = connect_vsock(&guest.uds, AGENT_VSOCK_PORT + 1, RPC_TIMEOUT).unwrap_err();
    assert!(
        matches!(err, AgentConnectError::Closed { .. }),
        "unexpected error: {err}"
    );

    let client = connect_agent(&guest.uds, AGENT_VSOCK_PORT, RPC_TIMEOUT).unwrap();
    assert_guest_answers(&client, &console);
    let answered = started.elapsed();
    run_echo_container(&client);
    run_shared_rootfs_container(&client, &guest.share);
    eprintln!(
        "real guest agent: serving after {:.1} s, Check+GetGuestDetails answered after {:.1} s, \
         echo and shared-rootfs containers created, run, read, waited and removed in {:.1} s",
        serving.as_secs_f64(),
        answered.as_secs_f64(),
        (started.elapsed() - answered).as_secs_f64()
    );

    let console = guest.vm.console.text();
    assert!(
        console.contains("cgroup controllers enabled"),
        "PID-1 setup did not finish:\n{console}"
    );
}
