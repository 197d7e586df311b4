//! The bench's own corner of the host: a work directory holding the pods'
//! husk config, their state directory, and (for `--via husk`) the idle
//! container's root and one OCI bundle per pod.
//!
//! Pods get the husk config a production pod would (kernel, image, sizes,
//! template directory from the user's config) with the bench's overrides
//! (mode, image kind, memory, vCPUs) and a state directory of the bench's
//! own, so everything a pod leaves can be found and removed, and nothing
//! of another husk on the host is touched. The work directory is short
//! (`/run/husk-density-<pid>`): the sandboxes' vsock socket paths must fit.
//! The idle container runs a static pause program (husk-pause: it waits,
//! reaps, and exits on SIGTERM) from a read-only root all pods share.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use husk_runtime::config::{GuestBoot, HuskConfig, TemplateMode};
use husk_runtime::sandbox::size::VmSize;
use husk_runtime::sandbox::SandboxDir;

use super::{DensityArgs, ImageKind, Mode, Via};

pub struct Bench {
    pub work: PathBuf,
    pub config_path: PathBuf,
    /// The pods' config, as they will load it.
    pub config: HuskConfig,
    pub size: VmSize,
    /// Pod ids are `<prefix>-<n>`.
    pub prefix: String,
    rootfs: Option<PathBuf>,
}

impl Bench {
    pub fn prepare(args: &DensityArgs, base: &HuskConfig) -> anyhow::Result<Self> {
        let pid = std::process::id();
        let work = args
            .work_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("/run/husk-density-{pid}")));
        if work.exists() {
            bail!(
                "the work directory {} exists already (another bench, or one that was killed: \
                 check for its pods, then remove it)",
                work.display()
            );
        }
        std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
        let config = pod_config(args, base, &work.join("state"));
        let config_path = work.join("husk.toml");
        std::fs::write(&config_path, config.to_toml())
            .with_context(|| format!("writing {}", config_path.display()))?;
        let config = HuskConfig::load(Some(&config_path), None)
            .context("the pods' config (the user's with the bench's overrides)")?;
        config.check_guest_files()?;
        let rootfs = match args.via {
            Via::Husk => Some(idle_rootfs(&work, args.pause.as_deref())?),
            Via::Containerd => None,
        };
        Ok(Self {
            size: VmSize {
                vcpus: config.guest.vcpus,
                mem_bytes: config.guest.memory,
            },
            work,
            config_path,
            config,
            prefix: format!("hd{pid}"),
            rootfs,
        })
    }

    pub fn pod_id(&self, index: usize) -> String {
        format!("{}-{index}", self.prefix)
    }

    pub fn state_dir(&self) -> &Path {
        &self.config.runtime.state_dir
    }

    pub fn sandbox_dir(&self, id: &str) -> SandboxDir {
        SandboxDir::new(self.state_dir(), id)
    }

    /// The guest image's path as the pods map it, when they boot from one.
    pub fn guest_image(&self) -> Option<PathBuf> {
        let image = &self.config.guest.image;
        (self.config.guest.boot == GuestBoot::Image)
            .then(|| std::fs::canonicalize(image).unwrap_or_else(|_| image.clone()))
    }

    /// Writes pod `id`'s bundle (`--via husk`) and returns its directory.
    pub fn bundle(&self, id: &str) -> anyhow::Result<PathBuf> {
        let rootfs = self
            .rootfs
            .as_ref()
            .context("no idle rootfs (--via husk only)")?;
        let dir = self.work.join("bundles").join(id);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::write(dir.join("config.json"), idle_spec(rootfs).to_string())
            .with_context(|| format!("writing {}/config.json", dir.display()))?;
        Ok(dir)
    }

    /// Removes the work directory; refused while something is mounted in
    /// it (a pod that could not be cleaned), which the report then names.
    pub fn remove(&self) -> anyhow::Result<()> {
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let work = self.work.display().to_string();
        if mounts
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .any(|p| p.starts_with(&work))
        {
            bail!("{work} still has mounts; left in place");
        }
        std::fs::remove_dir_all(&self.work)
            .with_context(|| format!("removing {}", self.work.display()))
    }
}

/// The user's config with the bench's choices.
fn pod_config(args: &DensityArgs, base: &HuskConfig, state_dir: &Path) -> HuskConfig {
    let mut c = base.clone();
    c.runtime.state_dir = state_dir.to_path_buf();
    c.runtime.template = match (args.mode, &base.runtime.template) {
        (Mode::Cold, _) => TemplateMode::Off,
        (Mode::Template, TemplateMode::Path(p)) => TemplateMode::Path(p.clone()),
        (Mode::Template, _) => TemplateMode::Auto,
    };
    if let Some(kind) = args.image {
        c.guest.boot = match kind {
            ImageKind::Pmem => GuestBoot::Image,
            ImageKind::Initrd => GuestBoot::Initrd,
        };
    }
    if let Some(mem) = args.mem {
        c.guest.memory = mem;
        c.guest.max_memory = c.guest.max_memory.max(mem);
    }
    if let Some(cpus) = args.cpus {
        c.guest.vcpus = cpus;
        c.guest.max_vcpus = c.guest.max_vcpus.max(cpus);
    }
    c
}

/// `<work>/rootfs`: the pause program at /pause and the directories the
/// runtime mounts over.
fn idle_rootfs(work: &Path, pause: Option<&Path>) -> anyhow::Result<PathBuf> {
    let pause = pause.context(
        "--via husk needs the idle container's program: --pause PATH or $HUSK_PAUSE \
         (husk-pause, a static binary; ci/guest-assets.sh prints HUSK_PAUSE)",
    )?;
    let root = work.join("rootfs");
    for d in ["dev", "proc", "sys", "etc", "run", "tmp"] {
        std::fs::create_dir_all(root.join(d))
            .with_context(|| format!("creating {}", root.join(d).display()))?;
    }
    std::fs::copy(pause, root.join("pause"))
        .with_context(|| format!("copying {} into the idle rootfs", pause.display()))?;
    Ok(root)
}

/// The idle container: /pause, read-only root, its own namespaces (the
/// network one too: a pod's network is its VM's).
fn idle_spec(rootfs: &Path) -> serde_json::Value {
    serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": { "uid": 0, "gid": 0 },
            "args": ["/pause"],
            "env": ["PATH=/bin"],
            "cwd": "/"
        },
        "root": { "path": rootfs, "readonly": true },
        "hostname": "idle",
        "mounts": [
            { "destination": "/proc", "type": "proc", "source": "proc" },
            { "destination": "/dev", "type": "tmpfs", "source": "tmpfs",
              "options": ["nosuid", "mode=755", "size=64k"] }
        ],
        "linux": {
            "namespaces": [
                { "type": "pid" }, { "type": "ipc" }, { "type": "uts" },
                { "type": "mount" }, { "type": "network" }
            ]
        }
    })
}
