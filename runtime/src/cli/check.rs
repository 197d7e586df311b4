//! `husk check`: can this host run husk? One line per item, `ok`, `note`
//! or `FAIL`, and a non-zero exit when something blocks.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;
use husk_runtime::config::{GuestBoot, HuskConfig};
use husk_vmm::{CompatMode, CompatProfile, HostKvm};

#[derive(Args)]
pub struct CheckArgs {
    /// husk's config file (default: $HUSK_CONFIG, then /etc/husk/config.toml).
    #[arg(long)]
    config: Option<PathBuf>,
}

#[derive(PartialEq, Eq)]
enum Verdict {
    Ok,
    Note,
    Fail,
}

struct Report {
    failed: bool,
}

impl Report {
    fn line(&mut self, verdict: Verdict, item: &str, detail: impl AsRef<str>) {
        let tag = match verdict {
            Verdict::Ok => "ok  ",
            Verdict::Note => "note",
            Verdict::Fail => {
                self.failed = true;
                "FAIL"
            }
        };
        println!("{tag}  {item:<12} {}", detail.as_ref());
    }
}

pub fn run(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let mut r = Report { failed: false };
    check_kvm(&mut r);
    let config = match HuskConfig::load(args.config.as_deref(), None) {
        Ok(c) => {
            r.line(Verdict::Ok, "config", &c.origin);
            Some(c)
        }
        Err(e) => {
            r.line(Verdict::Fail, "config", e.to_string());
            None
        }
    };
    if let Some(c) = &config {
        check_compat(&mut r, c.guest.compat);
        check_guest_files(&mut r, c);
    }
    check_cgroups(&mut r);
    check_containerd(&mut r);
    Ok(if r.failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn check_kvm(r: &mut Report) {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => {
            let kind = match HostKvm::detect() {
                HostKvm::Hardware => "hardware virtualization",
                HostKvm::SoftwarePvm => {
                    "software KVM (kvm_pvm): guest kernels run emulated, slowly"
                }
            };
            r.line(Verdict::Ok, "/dev/kvm", kind);
        }
        Err(e) => r.line(
            Verdict::Fail,
            "/dev/kvm",
            format!("cannot open it read/write ({e}); load kvm and run as root or in group kvm"),
        ),
    }
}

fn check_compat(r: &mut Report, mode: CompatMode) {
    match CompatProfile::select(mode, HostKvm::detect()) {
        Some(p) => r.line(
            Verdict::Note,
            "compat",
            format!("profile {} on (guest.compat = {mode:?})", p.name),
        ),
        None => r.line(
            Verdict::Ok,
            "compat",
            format!("no profile needed (guest.compat = {mode:?})"),
        ),
    }
}

fn check_guest_files(r: &mut Report, c: &HuskConfig) {
    let file = |r: &mut Report, item: &str, path: &Path, needed: bool| {
        if path.is_file() {
            r.line(Verdict::Ok, item, path.display().to_string());
        } else if needed {
            r.line(
                Verdict::Fail,
                item,
                format!(
                    "{} does not exist (build it with `make run`, install with `husk install`)",
                    path.display()
                ),
            );
        } else {
            r.line(
                Verdict::Note,
                item,
                format!("{} does not exist (not used: guest.boot)", path.display()),
            );
        }
    };
    file(r, "kernel", &c.guest.kernel, true);
    file(r, "image", &c.guest.image, c.guest.boot == GuestBoot::Image);
    file(
        r,
        "initrd",
        &c.guest.initrd,
        c.guest.boot == GuestBoot::Initrd,
    );
}

fn check_cgroups(r: &mut Report) {
    let unified = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    let hybrid = Path::new("/sys/fs/cgroup/unified").exists();
    let what = match (unified, hybrid) {
        (true, _) => "cgroup v2 (unified)",
        (false, true) => "cgroup v1 (hybrid); containers' cgroups live in the guest, on v2",
        (false, false) => "cgroup v1; containers' cgroups live in the guest, on v2",
    };
    r.line(Verdict::Ok, "cgroups", what);
}

fn check_containerd(r: &mut Report) {
    let out = std::process::Command::new("containerd")
        .arg("--version")
        .output();
    match out {
        Ok(o) if o.status.success() => {
            let v = String::from_utf8_lossy(&o.stdout).trim().to_string();
            let shim = which(husk_runtime::shim::SHIM_BINARY);
            r.line(Verdict::Ok, "containerd", v);
            match shim {
                Some(p) => r.line(Verdict::Ok, "shim", p.display().to_string()),
                None => r.line(
                    Verdict::Note,
                    "shim",
                    "containerd-shim-husk-v2 is not on PATH: run `husk install`",
                ),
            }
        }
        _ => r.line(
            Verdict::Note,
            "containerd",
            "not installed (husk run works without it)",
        ),
    }
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}
