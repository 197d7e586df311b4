#![allow(dead_code)] // each test binary uses part of this
//! Shared helpers for real-guest tests: the guest assets, VMs run by the
//! embedded VMM, and (`containerd`) a private containerd driving husk.

pub mod agent;
pub mod containerd;
pub mod cri;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

pub struct GuestAssets {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub busybox_initrd: PathBuf,
    /// erofs root image for virtio-pmem (the self-test as /sbin/init).
    pub pmem_image: PathBuf,
    /// husk-agent as /init, a busybox rootfs at /containers/busybox/rootfs.
    pub agent_initrd: PathBuf,
    /// The runtime's guest image: erofs with husk-agent as /sbin/init.
    pub agent_image: PathBuf,
    /// A busybox OCI image archive (docker.io/husk/busybox:latest).
    pub busybox_oci: PathBuf,
    /// The pod sandbox image for CRI (husk.local/pause:1).
    pub pause_oci: PathBuf,
    /// husk-pause, the static idle program (the density bench's container).
    pub pause: PathBuf,
}

/// An OCI bundle at `dir` (rootfs/busybox-bundle.sh) whose process is `args`.
pub fn busybox_bundle(dir: &Path, args: &[&str]) {
    let made = Command::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../rootfs/busybox-bundle.sh"
    ))
    .arg(dir)
    .args(args)
    .stdout(std::process::Stdio::null())
    .status()
    .unwrap();
    assert!(made.success(), "building the bundle");
}

/// The kernel, initramfs and pmem images: from the environment (`make test` sets
/// them) or built through ci/guest-assets.sh (cached after the first build).
pub fn guest_assets() -> &'static GuestAssets {
    static ASSETS: OnceLock<GuestAssets> = OnceLock::new();
    ASSETS.get_or_init(|| {
        let from_env = [
            "HUSK_KERNEL",
            "HUSK_INITRD",
            "HUSK_BUSYBOX_INITRD",
            "HUSK_PMEM_IMAGE",
            "HUSK_AGENT_INITRD",
            "HUSK_AGENT_IMAGE",
            "HUSK_BUSYBOX_OCI",
            "HUSK_PAUSE_OCI",
            "HUSK_PAUSE",
        ]
        .iter()
        .map(|k| std::env::var(k).ok().map(|v| (k.to_string(), v)))
        .collect::<Option<HashMap<_, _>>>();
        let vars = from_env.unwrap_or_else(|| {
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../ci/guest-assets.sh");
            let out = Command::new(&script)
                .output()
                .expect("running ci/guest-assets.sh");
            assert!(
                out.status.success(),
                "guest-assets.sh failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter_map(|l| {
                    l.split_once('=')
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                })
                .collect()
        });
        GuestAssets {
            kernel: vars["HUSK_KERNEL"].clone().into(),
            initrd: vars["HUSK_INITRD"].clone().into(),
            busybox_initrd: vars["HUSK_BUSYBOX_INITRD"].clone().into(),
            pmem_image: vars["HUSK_PMEM_IMAGE"].clone().into(),
            agent_initrd: vars["HUSK_AGENT_INITRD"].clone().into(),
            agent_image: vars["HUSK_AGENT_IMAGE"].clone().into(),
            busybox_oci: vars["HUSK_BUSYBOX_OCI"].clone().into(),
            pause_oci: vars["HUSK_PAUSE_OCI"].clone().into(),
            pause: vars["HUSK_PAUSE"].clone().into(),
        }
    })
}

pub use husk_vmm::testing::kvm_or_skip;
use husk_vmm::{
    CompatMode, ConsoleTarget, ConsoleWatch, RunReport, VmConfig, VmError, VmHandle, VmOutcome,
};

/// Longest a real guest may take to reach a console marker (boots are slow
/// on software KVM).
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(900);

/// husk's logs (vsock, VMM) go to the test's captured output, so a failed
/// test shows them.
pub fn init_logs() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_env("HUSK_LOG")
                    .unwrap_or_else(|_| "info,fuse_backend_rs=warn".into()),
            )
            .with_test_writer()
            .try_init();
    });
}

/// A VM config for a real-guest test: the test kernel, `mem_mib` MiB, the
/// console kept in a `ConsoleWatch`, no devices.
pub fn vm_config(mem_mib: u64, cpus: u8, cmdline: &str) -> VmConfig {
    VmConfig {
        kernel: guest_assets().kernel.clone(),
        initrd: None,
        mem_bytes: mem_mib << 20,
        cpus,
        cmdline: Some(cmdline.to_string()),
        console: ConsoleTarget::Watch(ConsoleWatch::new()),
        compat: CompatMode::Auto,
        on_first_entry: None,
        vsock: None,
        pmem: Vec::new(),
        fs: Vec::new(),
        net: Vec::new(),
        template: None,
        seccomp: true,
    }
}

/// A VM of this test process, run by the embedded VMM.
pub struct TestVm {
    pub vm: VmHandle,
    pub console: ConsoleWatch,
}

impl TestVm {
    pub fn start(config: &VmConfig) -> Self {
        init_logs();
        let ConsoleTarget::Watch(console) = &config.console else {
            panic!("a TestVm keeps its console in a ConsoleWatch");
        };
        let console = console.clone();
        let vm = VmHandle::start(config).expect("building the VM");
        Self { vm, console }
    }

    /// Waits for `marker` on the console; panics with the console if the
    /// VM ends first or it does not come in time.
    pub fn wait_for(&self, marker: &str) -> String {
        self.console
            .wait_for(marker, BOOT_TIMEOUT)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Waits for the VM to end; how it ended and its whole console.
    pub fn finish(self) -> GuestRun {
        let result = self.vm.wait();
        GuestRun {
            result,
            console: self.console.text(),
        }
    }
}

pub struct GuestRun {
    pub result: Result<RunReport, VmError>,
    pub console: String,
}

impl GuestRun {
    /// The guest powered itself off; panics with how it ended otherwise.
    pub fn assert_powered_off(&self) {
        match &self.result {
            Ok(r) if r.outcome == VmOutcome::PowerOff => {}
            other => panic!(
                "the guest did not power off: {other:?}
{}",
                self.console
            ),
        }
    }
}

/// Boots the test kernel with the given initrd, vCPUs and /init arguments
/// to its end, in this process.
pub fn boot(initrd: &Path, cpus: u8, init_args: &str) -> GuestRun {
    let mut cmdline = "console=ttyS0 reboot=k panic=-1".to_string();
    if !init_args.is_empty() {
        cmdline = format!("{cmdline} -- {init_args}");
    }
    let mut config = vm_config(256, cpus, &cmdline);
    config.initrd = Some(initrd.to_path_buf());
    TestVm::start(&config).finish()
}
