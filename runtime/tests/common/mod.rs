#![allow(dead_code)] // each test binary uses part of this
//! Shared helpers for real-guest tests: the guest assets and running `husk vm`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub struct GuestAssets {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub busybox_initrd: PathBuf,
    /// erofs root image for virtio-pmem (the self-test as /sbin/init).
    pub pmem_image: PathBuf,
    /// husk-agent as /init, a busybox rootfs at /containers/busybox/rootfs.
    pub agent_initrd: PathBuf,
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
        }
    })
}

pub use husk_vmm::testing::kvm_or_skip;

pub struct GuestRun {
    pub output: Output,
    pub console: String,
}

impl GuestRun {
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }
}

/// Boots `husk vm` with the given initrd, vCPUs and extra command line; returns
/// its exit status, stderr and the whole console.
pub fn boot(name: &str, initrd: &Path, cpus: u8, init_args: &str) -> GuestRun {
    let assets = guest_assets();
    let console =
        std::env::temp_dir().join(format!("husk-real-{name}-{}.console", std::process::id()));
    let mut cmdline = "console=ttyS0 reboot=k panic=-1".to_string();
    if !init_args.is_empty() {
        cmdline = format!("{cmdline} -- {init_args}");
    }
    let output = Command::new(env!("CARGO_BIN_EXE_husk"))
        .args([
            "vm",
            "--mem",
            "256M",
            "--cpus",
            &cpus.to_string(),
            "--cmdline",
            &cmdline,
        ])
        .arg("--kernel")
        .arg(&assets.kernel)
        .arg("--initrd")
        .arg(initrd)
        .arg("--console")
        .arg(&console)
        .output()
        .expect("running husk vm");
    let text = std::fs::read_to_string(&console).unwrap_or_default();
    let _ = std::fs::remove_file(&console);
    GuestRun {
        output,
        console: text,
    }
}

/// Waits until the console file at `path` shows `marker` and returns the
/// console so far; panics with the console if `child` ends first or nothing
/// comes within 15 minutes (guest boots are slow on software KVM).
pub fn wait_for_console(path: &Path, marker: &str, child: &mut std::process::Child) -> String {
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains(marker) {
            return text;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("husk vm ended ({status}) before {marker:?}:\n{text}");
        }
        assert!(Instant::now() < deadline, "no {marker:?} in time:\n{text}");
        std::thread::sleep(Duration::from_millis(200));
    }
}
