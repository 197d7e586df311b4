//! `husk install`: the binary, the shim link, the guest kernel and images,
//! and a default config, where containerd and husk look for them; then the
//! containerd config snippet to add.
//!
//! Layout (default prefix /usr/local): `bin/husk`,
//! `bin/containerd-shim-husk-v2 -> husk` (on containerd's PATH, so
//! `--runtime io.containerd.husk.v2` finds it), `share/husk/vmlinux`,
//! `share/husk/agent.erofs`, `share/husk/agent.cpio`, and the config at
//! /etc/husk/config.toml unless one is there already.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Args;
use husk_runtime::config::{default_config_text, DEFAULT_CONFIG_PATH};
use husk_runtime::shim::SHIM_BINARY;

#[derive(Args)]
pub struct InstallArgs {
    #[arg(long, default_value = "/usr/local")]
    prefix: PathBuf,
    /// The guest kernel (default: $HUSK_KERNEL, as ci/guest-assets.sh prints it).
    #[arg(long, env = "HUSK_KERNEL")]
    kernel: Option<PathBuf>,
    /// The agent's erofs image (default: $HUSK_AGENT_IMAGE).
    #[arg(long, env = "HUSK_AGENT_IMAGE")]
    image: Option<PathBuf>,
    /// The agent's initramfs (default: $HUSK_AGENT_INITRD).
    #[arg(long, env = "HUSK_AGENT_INITRD")]
    initrd: Option<PathBuf>,
    /// Where to write the default config (kept if it exists).
    #[arg(long, default_value = DEFAULT_CONFIG_PATH)]
    config: PathBuf,
}

pub fn run(args: InstallArgs) -> anyhow::Result<ExitCode> {
    let bin = args.prefix.join("bin");
    let share = args.prefix.join("share/husk");
    for dir in [&bin, &share] {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let exe = std::env::current_exe().context("locating the husk binary")?;
    let husk = bin.join("husk");
    copy(&exe, &husk, 0o755)?;
    let link = bin.join(SHIM_BINARY);
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink("husk", &link)
        .with_context(|| format!("linking {}", link.display()))?;
    println!(
        "installed {} and {} -> husk",
        husk.display(),
        link.display()
    );
    for (what, src, name, flag) in [
        ("kernel", &args.kernel, "vmlinux", "--kernel"),
        ("image", &args.image, "agent.erofs", "--image"),
        ("initrd", &args.initrd, "agent.cpio", "--initrd"),
    ] {
        let Some(src) = src else {
            bail!(
                "no guest {what} given: pass {flag} FILE, or run `eval \"$(ci/guest-assets.sh)\"` \
                 in husk's source tree first (it builds them and sets HUSK_KERNEL, \
                 HUSK_AGENT_IMAGE, HUSK_AGENT_INITRD)"
            );
        };
        copy(src, &share.join(name), 0o644)?;
        println!(
            "installed the guest {what} as {}",
            share.join(name).display()
        );
    }
    if args.config.exists() {
        println!("kept the existing config {}", args.config.display());
    } else {
        if let Some(dir) = args.config.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        std::fs::write(&args.config, default_config_text(&share))
            .with_context(|| format!("writing {}", args.config.display()))?;
        println!("wrote the default config {}", args.config.display());
    }
    println!("{}", containerd_snippets());
    Ok(ExitCode::SUCCESS)
}

fn copy(src: &Path, dst: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if std::fs::canonicalize(src).ok() == std::fs::canonicalize(dst).ok() {
        return Ok(());
    }
    // Through a temporary name, so a running husk's binary is never rewritten in place.
    let tmp = dst.with_extension("husk-install-tmp");
    std::fs::copy(src, &tmp)
        .with_context(|| format!("copying {} to {}", src.display(), tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
    std::fs::rename(&tmp, dst).with_context(|| format!("moving {} into place", dst.display()))
}

fn containerd_snippets() -> String {
    r#"
Add husk to containerd's config (/etc/containerd/config.toml), then restart containerd.
containerd 1.6 and 1.7 (config version 2):

  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.husk]
    runtime_type = "io.containerd.husk.v2"
    pod_annotations = ["io.husk.*"]

containerd 2.x (config version 3):

  [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.husk]
    runtime_type = "io.containerd.husk.v2"
    pod_annotations = ["io.husk.*"]

Without CRI: ctr run --runtime io.containerd.husk.v2 IMAGE ID CMD..."#
        .to_string()
}
