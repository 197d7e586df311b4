//! husk's configuration: /etc/husk/config.toml.
//!
//! Found at `--config`, then `$HUSK_CONFIG`, then containerd's runtime option
//! `ConfigPath`, then the default path; a missing default file means the
//! built-in defaults (which point at what `husk install` puts in place).
//! Unknown keys are errors, so a typo never silently means "default". Every
//! error names the file, the key and what to do.

use std::path::{Path, PathBuf};

use husk_vmm::CompatMode;
use serde::Deserialize;

use crate::size::parse_mem_size;

pub const DEFAULT_CONFIG_PATH: &str = "/etc/husk/config.toml";
/// Where `husk install` puts the kernel and images by default.
pub const DEFAULT_SHARE_DIR: &str = "/usr/local/share/husk";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the husk config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the husk config {path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{key} = {value:?} in {origin}: {problem}")]
    Value {
        key: &'static str,
        value: String,
        origin: String,
        problem: String,
    },
    #[error(
        "the guest {what} {path} (guest.{key} in {origin}) does not exist; build it with \
         `make run` in husk's source tree (ci/guest-assets.sh) and put it in place with \
         `husk install`, or point guest.{key} at it"
    )]
    MissingFile {
        what: &'static str,
        key: &'static str,
        path: PathBuf,
        origin: String,
    },
}

/// How the guest gets its root filesystem and the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GuestBoot {
    /// The erofs image on virtio-pmem with DAX: nothing to unpack, shared
    /// by every pod through the host page cache.
    Image,
    /// An initramfs the guest kernel unpacks into RAM.
    Initrd,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GuestConfig {
    pub kernel: PathBuf,
    pub image: PathBuf,
    pub initrd: PathBuf,
    pub boot: GuestBoot,
    pub vcpus: u8,
    #[serde(deserialize_with = "mem_size")]
    pub memory: u64,
    pub max_vcpus: u8,
    #[serde(deserialize_with = "mem_size")]
    pub max_memory: u64,
    #[serde(deserialize_with = "compat_mode")]
    pub compat: CompatMode,
    /// Bytes a sandbox's guest may add to its shared directory through
    /// virtio-fs; None: no limit beyond the host filesystem's.
    #[serde(deserialize_with = "opt_mem_size")]
    pub shared_fs_size_limit: Option<u64>,
}

impl Default for GuestConfig {
    fn default() -> Self {
        let share = Path::new(DEFAULT_SHARE_DIR);
        Self {
            kernel: share.join("vmlinux"),
            image: share.join("agent.erofs"),
            initrd: share.join("agent.cpio"),
            boot: GuestBoot::Image,
            vcpus: 1,
            memory: 256 << 20,
            max_vcpus: 4,
            max_memory: 4 << 30,
            compat: CompatMode::Auto,
            shared_fs_size_limit: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// tracing filter for husk's own logs (HUSK_LOG overrides it).
    pub log_level: String,
    /// Per-sandbox state: shared directories, consoles, state files.
    pub state_dir: PathBuf,
    /// How long a sandbox's agent may take to be ready after its VM starts.
    pub boot_timeout_secs: u64,
    /// Start VMs from a snapshot of a booted agent VM: `auto` (made on
    /// first use, under `template_dir`), `off`, or a template's path.
    pub template: TemplateMode,
    pub template_dir: PathBuf,
    /// Per-thread seccomp allowlists (`crate::seccomp`): true ("on") or
    /// false ("off"). HUSK_CONFIG or the default file decides for the
    /// shim's own threads, which are confined before any request.
    #[serde(deserialize_with = "switch")]
    pub seccomp: bool,
}

/// `runtime.template`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplateMode {
    Auto,
    Off,
    Path(PathBuf),
}

impl<'de> Deserialize<'de> for TemplateMode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Ok(match text.as_str() {
            "auto" => TemplateMode::Auto,
            "off" => TemplateMode::Off,
            "" => {
                return Err(serde::de::Error::custom(
                    "expected \"auto\", \"off\" or a template's path",
                ))
            }
            path => TemplateMode::Path(PathBuf::from(path)),
        })
    }
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            log_level: "info".into(),
            state_dir: PathBuf::from("/run/husk"),
            // A cold boot takes about a minute on software-KVM hosts.
            boot_timeout_secs: 600,
            template: TemplateMode::Auto,
            template_dir: PathBuf::from("/var/lib/husk/templates"),
            seccomp: true,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HuskConfig {
    pub guest: GuestConfig,
    pub runtime: RuntimeConfig,
    /// Where this configuration came from, for error messages.
    #[serde(skip)]
    pub origin: String,
}

fn mem_size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let text = String::deserialize(d)?;
    parse_mem_size(&text).map_err(serde::de::Error::custom)
}

fn opt_mem_size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    mem_size(d).map(Some)
}

/// A boolean, or "on"/"off".
fn switch<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Switch {
        Bool(bool),
        Text(String),
    }
    match Switch::deserialize(d)? {
        Switch::Bool(b) => Ok(b),
        Switch::Text(t) => crate::seccomp::parse_switch(&t).map_err(serde::de::Error::custom),
    }
}

fn compat_mode<'de, D: serde::Deserializer<'de>>(d: D) -> Result<CompatMode, D::Error> {
    let text = String::deserialize(d)?;
    text.parse().map_err(serde::de::Error::custom)
}

impl HuskConfig {
    /// Finds and loads the configuration: `explicit`, else `$HUSK_CONFIG`,
    /// else `option_path` (containerd's ConfigPath), else the default path.
    pub fn load(explicit: Option<&Path>, option_path: Option<&Path>) -> Result<Self, ConfigError> {
        let env = std::env::var_os("HUSK_CONFIG").map(PathBuf::from);
        match explicit
            .map(Path::to_path_buf)
            .or(env)
            .or(option_path.map(Path::to_path_buf))
        {
            Some(path) => Self::from_file(&path),
            None => {
                let default = Path::new(DEFAULT_CONFIG_PATH);
                if default.exists() {
                    Self::from_file(default)
                } else {
                    Ok(Self {
                        origin: format!(
                            "the built-in defaults ({DEFAULT_CONFIG_PATH} does not exist)"
                        ),
                        ..Self::default()
                    })
                }
            }
        }
    }

    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        let mut config = Self::from_toml(&text, path)?;
        config.origin = path.display().to_string();
        config.validate()?;
        Ok(config)
    }

    fn from_toml(text: &str, path: &Path) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.into(),
            message: e.to_string().trim_end().replace('\n', " "),
        })
    }

    /// Checks the values that do not depend on the host's files.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let g = &self.guest;
        let bad = |key, value: String, problem: String| ConfigError::Value {
            key,
            value,
            origin: self.origin.clone(),
            problem,
        };
        if g.vcpus == 0 || g.vcpus > g.max_vcpus {
            return Err(bad(
                "guest.vcpus",
                g.vcpus.to_string(),
                format!("must be 1 to guest.max_vcpus ({})", g.max_vcpus),
            ));
        }
        if g.memory > g.max_memory {
            return Err(bad(
                "guest.memory",
                format!("{}M", g.memory >> 20),
                format!("is more than guest.max_memory ({}M)", g.max_memory >> 20),
            ));
        }
        if g.shared_fs_size_limit == Some(0) {
            return Err(bad(
                "guest.shared_fs_size_limit",
                "0".into(),
                "must be more than 0; leave the key out for no limit".into(),
            ));
        }
        let state_dir = &self.runtime.state_dir;
        let max = crate::sandbox::dir::MAX_STATE_DIR_LEN;
        if state_dir.as_os_str().len() > max {
            return Err(bad(
                "runtime.state_dir",
                state_dir.display().to_string(),
                format!("is longer than {max} bytes: the sandboxes' vsock sockets below it would not fit in a Unix socket path"),
            ));
        }
        if g.memory < husk_vmm::layout::MIN_MEM_BYTES {
            return Err(bad(
                "guest.memory",
                format!("{}M", g.memory >> 20),
                format!(
                    "must be at least {}M",
                    husk_vmm::layout::MIN_MEM_BYTES >> 20
                ),
            ));
        }
        Ok(())
    }

    /// Checks the kernel and the chosen guest image exist (before a boot).
    pub fn check_guest_files(&self) -> Result<(), ConfigError> {
        let g = &self.guest;
        let (what, key, path) = match g.boot {
            GuestBoot::Image => ("image", "image", &g.image),
            GuestBoot::Initrd => ("initramfs", "initrd", &g.initrd),
        };
        for (what, key, path) in [("kernel", "kernel", &g.kernel), (what, key, path)] {
            if !path.is_file() {
                return Err(ConfigError::MissingFile {
                    what,
                    key,
                    path: path.clone(),
                    origin: self.origin.clone(),
                });
            }
        }
        Ok(())
    }
}

impl HuskConfig {
    /// This configuration as a config file (every key), e.g. for pods a
    /// bench starts with sizes of its own.
    pub fn to_toml(&self) -> String {
        let g = &self.guest;
        let r = &self.runtime;
        let q = |p: &Path| toml_string(&p.display().to_string());
        let boot = match g.boot {
            GuestBoot::Image => "image",
            GuestBoot::Initrd => "initrd",
        };
        let compat = match g.compat {
            CompatMode::Auto => "auto",
            CompatMode::On => "on",
            CompatMode::Off => "off",
        };
        let template = match &r.template {
            TemplateMode::Auto => toml_string("auto"),
            TemplateMode::Off => toml_string("off"),
            TemplateMode::Path(p) => q(p),
        };
        format!(
            "[guest]\nkernel = {}\nimage = {}\ninitrd = {}\nboot = \"{boot}\"\nvcpus = {}\n\
             memory = \"{}K\"\nmax_vcpus = {}\nmax_memory = \"{}K\"\ncompat = \"{compat}\"\n\n\
             [runtime]\nlog_level = {}\nstate_dir = {}\nboot_timeout_secs = {}\n\
             template = {template}\ntemplate_dir = {}\n",
            q(&g.kernel),
            q(&g.image),
            q(&g.initrd),
            g.vcpus,
            g.memory >> 10,
            g.max_vcpus,
            g.max_memory >> 10,
            toml_string(&r.log_level),
            q(&r.state_dir),
            r.boot_timeout_secs,
            q(&r.template_dir),
        )
    }
}

/// A TOML basic string.
fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The default config file `husk install` writes: every key, commented.
pub fn default_config_text(share_dir: &Path) -> String {
    let d = GuestConfig::default();
    format!(
        r#"# husk's configuration (see README.md, "Configuration").

[guest]
# The guest kernel (vmlinux) and the agent's images.
kernel = "{kernel}"
image = "{image}"
initrd = "{initrd}"
# "image": boot from the erofs image on virtio-pmem with DAX (shared by
# every pod, nothing to unpack); "initrd": from the initramfs.
boot = "image"
# Size of each sandbox's VM; a pod may ask for more with the annotations
# io.husk.vcpus and io.husk.memory, up to the maximums. Containers' memory
# limits are added to the VM's memory.
vcpus = {vcpus}
memory = "{memory}M"
max_vcpus = {max_vcpus}
max_memory = "{max_memory}M"
# Software-KVM compatibility profile: "auto", "on" or "off".
compat = "auto"
# How much a sandbox's guest may add to its shared directory (the
# containers' root filesystems and mounts, served by virtio-fs), e.g. "10G";
# writes beyond it get ENOSPC. Without it, the host filesystem's space is
# the limit.
# shared_fs_size_limit = "10G"

[runtime]
log_level = "info"
state_dir = "/run/husk"
# How long a new sandbox's agent may take to be ready.
boot_timeout_secs = 600
# Start sandboxes of the default size from a template (a snapshot of a
# booted agent VM, made on first use): "auto", "off", or a template's path.
template = "auto"
template_dir = "/var/lib/husk/templates"
# Per-thread seccomp allowlists (vCPUs, devices, the VMM, the shim): a
# thread calling outside its list kills husk with a log line naming the
# call. true/"on" (the default) or false/"off".
seccomp = true
"#,
        kernel = share_dir.join("vmlinux").display(),
        image = share_dir.join("agent.erofs").display(),
        initrd = share_dir.join("agent.cpio").display(),
        vcpus = d.vcpus,
        memory = d.memory >> 20,
        max_vcpus = d.max_vcpus,
        max_memory = d.max_memory >> 20,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<HuskConfig, ConfigError> {
        let mut c = HuskConfig::from_toml(text, Path::new("/etc/husk/config.toml"))?;
        c.origin = "/etc/husk/config.toml".into();
        c.validate().map(|()| c)
    }

    #[test]
    fn the_written_default_parses_to_the_defaults() {
        let c = parse(&default_config_text(Path::new(DEFAULT_SHARE_DIR))).unwrap();
        let d = GuestConfig::default();
        assert_eq!(c.guest.kernel, d.kernel);
        assert_eq!(c.guest.memory, 256 << 20);
        assert_eq!(c.guest.boot, GuestBoot::Image);
        assert_eq!(c.guest.compat, CompatMode::Auto);
        assert_eq!(c.runtime.state_dir, PathBuf::from("/run/husk"));
        assert_eq!(c.guest.shared_fs_size_limit, None);
        assert!(c.runtime.seccomp);
    }

    #[test]
    fn the_shared_fs_size_limit_is_a_size_and_not_zero() {
        let c = parse("[guest]\nshared_fs_size_limit = \"10G\"\n").unwrap();
        assert_eq!(c.guest.shared_fs_size_limit, Some(10 << 30));
        let err = parse("[guest]\nshared_fs_size_limit = \"0\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("guest.shared_fs_size_limit"), "{err}");
        let err = parse("[guest]\nshared_fs_size_limit = \"big\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("big"), "{err}");
    }

    #[test]
    fn seccomp_reads_booleans_and_on_off() {
        for (text, want) in [
            ("true", true),
            ("false", false),
            ("\"on\"", true),
            ("\"off\"", false),
        ] {
            let c = parse(&format!("[runtime]\nseccomp = {text}\n")).unwrap();
            assert_eq!(c.runtime.seccomp, want, "{text}");
        }
        assert!(
            parse("[runtime]\n").unwrap().runtime.seccomp,
            "on by default"
        );
        let err = parse("[runtime]\nseccomp = \"maybe\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("seccomp") || err.contains("maybe"), "{err}");
    }

    #[test]
    fn a_typo_or_a_bad_value_names_the_file_and_the_key() {
        let err = parse("[guest]\nkernal = \"/x\"\n").unwrap_err().to_string();
        assert!(
            err.contains("/etc/husk/config.toml") && err.contains("kernal"),
            "{err}"
        );
        let err = parse("[guest]\nmemory = \"lots\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("memory") && err.contains("lots"), "{err}");
        let err = parse("[guest]\ncompat = \"maybe\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("maybe"), "{err}");
        let err = parse("[guest]\nvcpus = 8\nmax_vcpus = 2\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("guest.vcpus") && err.contains("max_vcpus"),
            "{err}"
        );
        let err = parse("[guest\n").unwrap_err().to_string();
        assert!(err.contains("not valid"), "{err}");
        let long = format!("[runtime]\nstate_dir = \"/{}\"\n", "d".repeat(60));
        let err = parse(&long).unwrap_err().to_string();
        assert!(
            err.contains("runtime.state_dir") && err.contains("socket path"),
            "{err}"
        );
    }

    #[test]
    fn to_toml_round_trips() {
        let mut c = HuskConfig::default();
        c.guest.kernel = PathBuf::from("/odd \"dir\"\\/vmlinux");
        c.guest.boot = GuestBoot::Initrd;
        c.guest.memory = 300 << 20;
        c.guest.vcpus = 2;
        c.guest.compat = CompatMode::On;
        c.runtime.template = TemplateMode::Path("/t/x".into());
        c.runtime.boot_timeout_secs = 77;
        let back = parse(&c.to_toml()).unwrap();
        assert_eq!(back.guest.kernel, c.guest.kernel);
        assert_eq!(back.guest.boot, GuestBoot::Initrd);
        assert_eq!(back.guest.memory, 300 << 20);
        assert_eq!(back.guest.vcpus, 2);
        assert_eq!(back.guest.max_memory, c.guest.max_memory);
        assert_eq!(back.guest.compat, CompatMode::On);
        assert_eq!(back.runtime.template, TemplateMode::Path("/t/x".into()));
        assert_eq!(back.runtime.boot_timeout_secs, 77);
        assert_eq!(back.runtime.state_dir, c.runtime.state_dir);
        c.runtime.template = TemplateMode::Off;
        assert_eq!(
            parse(&c.to_toml()).unwrap().runtime.template,
            TemplateMode::Off
        );
    }

    #[test]
    fn a_missing_kernel_says_how_to_get_one() {
        let mut c = parse("[guest]\nkernel = \"/nonexistent/vmlinux\"\n").unwrap();
        c.guest.image = PathBuf::from("/etc/hostname");
        let err = c.check_guest_files().unwrap_err().to_string();
        assert!(err.contains("/nonexistent/vmlinux"), "{err}");
        assert!(err.contains("husk install"), "{err}");
    }
}
