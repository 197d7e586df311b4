//! The template directory: what a snapshot is on disk.
//!
//! ```text
//! template.json  the header: format and husk versions, the kernel and
//!                guest image it booted (path, size, sha256), memory size
//!                and RAM ranges, vCPU count, the host CPUID digest, the
//!                command line, the devices (net cards: MAC and MTU), and
//!                the digests of the two files below
//! state.json     vCPU and VM state (KVM's structs as bytes), the virtio
//!                transports and their queues, device state (vsock: the
//!                guest's quiet connections; net: MAC and MTU), the serial
//!                console
//! memory.bin     guest RAM (sparse; see `memory`)
//! ```
//!
//! A template is only restored where it was made for: anything in the
//! header that does not match (format or husk version, memory, vCPUs, the
//! host's CPUID, the kernel or image the caller names) is refused with an
//! error naming it, and a state file whose digest differs is corrupted.

use std::path::{Path, PathBuf};

use husk_devices::legacy::SerialSnapshot;
use husk_devices::net::MacAddr;
use husk_devices::virtio::TransportSnapshot;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::kvm_state::{VcpuState, VmState};

/// Bumped whenever anything below changes shape.
pub const FORMAT_VERSION: u32 = 3;
pub const HUSK_VERSION: &str = env!("CARGO_PKG_VERSION");

pub const HEADER_FILE: &str = "template.json";
pub const STATE_FILE: &str = "state.json";
pub const MEMORY_FILE: &str = "memory.bin";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileIdentity {
    pub path: PathBuf,
    pub size: u64,
    pub sha256: String,
}

impl FileIdentity {
    pub fn of(path: &Path) -> Result<Self, TemplateError> {
        let bytes = std::fs::read(path).map_err(|source| TemplateError::Io {
            what: "reading",
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Self {
            path: path.to_path_buf(),
            size: bytes.len() as u64,
            sha256: sha256_hex(&bytes),
        })
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Which devices the template's VM had, in the order they were added.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceLayout {
    pub vsock_cid: Option<u64>,
    pub fs_tags: Vec<String>,
    /// Each pmem image's identity and guest-physical base.
    pub pmem: Vec<(FileIdentity, u64)>,
    /// Each net device as its guest knows it (taps are the clone's own).
    /// Defaults to none so an older header still parses far enough to be
    /// refused for its format version.
    #[serde(default)]
    pub net: Vec<NetLayout>,
}

/// A net device of a template: what its guest read from config space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetLayout {
    pub mac: MacAddr,
    pub mtu: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateHeader {
    pub format_version: u32,
    pub husk_version: String,
    pub kernel: FileIdentity,
    pub initrd: Option<FileIdentity>,
    pub mem_bytes: u64,
    pub ram_ranges: Vec<(u64, u64)>,
    pub vcpus: u8,
    pub host_cpuid_sha256: String,
    pub cmdline: String,
    pub devices: DeviceLayout,
    pub state_sha256: String,
    pub memory_checksum: u32,
    pub created_unix_secs: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmSnapshot {
    pub vcpus: Vec<VcpuState>,
    pub vm: VmState,
    pub transports: Vec<TransportSnapshot>,
    pub serial: SerialSnapshot,
}

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error(
        "{dir} is not a husk template (no {HEADER_FILE}); make one with `husk template create`"
    )]
    NotATemplate { dir: PathBuf },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a valid template file: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("the template {dir} was made with {what} {template}, this is {here}: make a new one")]
    Version {
        dir: PathBuf,
        what: &'static str,
        template: String,
        here: String,
    },
    #[error("the template {dir} does not match: its {what} is {template}, asked for {asked}")]
    Mismatch {
        dir: PathBuf,
        what: &'static str,
        template: String,
        asked: String,
    },
    #[error("the template's {STATE_FILE} in {dir} is corrupted (its digest is not the header's)")]
    StateCorrupt { dir: PathBuf },
    #[error(transparent)]
    Memory(#[from] super::memory::MemoryFileError),
}

/// An opened template: header and state read and checked for integrity.
pub struct Template {
    pub dir: PathBuf,
    pub header: TemplateHeader,
    pub state: VmSnapshot,
}

fn parse<T: for<'de> Deserialize<'de>>(path: &Path, bytes: &[u8]) -> Result<T, TemplateError> {
    serde_json::from_slice(bytes).map_err(|e| TemplateError::Parse {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

fn read(path: &Path) -> Result<Vec<u8>, TemplateError> {
    std::fs::read(path).map_err(|source| TemplateError::Io {
        what: "reading",
        path: path.to_path_buf(),
        source,
    })
}

impl Template {
    pub fn open(dir: &Path) -> Result<Self, TemplateError> {
        let header_path = dir.join(HEADER_FILE);
        if !header_path.is_file() {
            return Err(TemplateError::NotATemplate { dir: dir.into() });
        }
        let header: TemplateHeader = parse(&header_path, &read(&header_path)?)?;
        let version = |what, template: String, here: String| TemplateError::Version {
            dir: dir.into(),
            what,
            template,
            here,
        };
        if header.format_version != FORMAT_VERSION {
            let (t, h) = (
                header.format_version.to_string(),
                FORMAT_VERSION.to_string(),
            );
            return Err(version("format version", t, h));
        }
        if header.husk_version != HUSK_VERSION {
            let t = header.husk_version.clone();
            return Err(version("husk", t, HUSK_VERSION.into()));
        }
        let state_path = dir.join(STATE_FILE);
        let state_bytes = read(&state_path)?;
        if sha256_hex(&state_bytes) != header.state_sha256 {
            return Err(TemplateError::StateCorrupt { dir: dir.into() });
        }
        let state: VmSnapshot = parse(&state_path, &state_bytes)?;
        if state.vcpus.len() != header.vcpus as usize {
            return Err(TemplateError::StateCorrupt { dir: dir.into() });
        }
        Ok(Self {
            dir: dir.into(),
            header,
            state,
        })
    }

    pub fn memory_path(&self) -> PathBuf {
        self.dir.join(MEMORY_FILE)
    }

    /// Refuses the template unless `what` is the same here.
    pub fn require(
        &self,
        what: &'static str,
        template: &str,
        asked: &str,
    ) -> Result<(), TemplateError> {
        if template == asked {
            return Ok(());
        }
        Err(TemplateError::Mismatch {
            dir: self.dir.clone(),
            what,
            template: template.into(),
            asked: asked.into(),
        })
    }

    /// A file the caller names must be the one the template was made with
    /// (by content; the path may differ).
    pub fn require_file(
        &self,
        what: &'static str,
        made_with: &FileIdentity,
        given: &Path,
    ) -> Result<(), TemplateError> {
        let given = FileIdentity::of(given)?;
        if given.sha256 == made_with.sha256 {
            return Ok(());
        }
        // The header's digest is whatever the file says: it may be short or
        // not ASCII, so it is shortened only where that is possible.
        let short = |d: &str| d.get(..12).unwrap_or(d).to_string();
        let show = |f: &FileIdentity| format!("{} (sha256 {})", f.path.display(), short(&f.sha256));
        Err(TemplateError::Mismatch {
            dir: self.dir.clone(),
            what,
            template: show(made_with),
            asked: show(&given),
        })
    }
}

/// Writes the state and then the header (last: a directory without a
/// header is not a template, so a half-written one is never used).
pub fn write(
    dir: &Path,
    mut header: TemplateHeader,
    state: &VmSnapshot,
) -> Result<(), TemplateError> {
    let io = |what, path: PathBuf| move |source| TemplateError::Io { what, path, source };
    let state_path = dir.join(STATE_FILE);
    let state_bytes = serde_json::to_vec(state).map_err(|e| TemplateError::Parse {
        path: state_path.clone(),
        message: e.to_string(),
    })?;
    header.state_sha256 = sha256_hex(&state_bytes);
    std::fs::write(&state_path, &state_bytes).map_err(io("writing", state_path.clone()))?;
    let header_path = dir.join(HEADER_FILE);
    let tmp = dir.join(format!("{HEADER_FILE}.tmp"));
    let text = serde_json::to_vec_pretty(&header).map_err(|e| TemplateError::Parse {
        path: header_path.clone(),
        message: e.to_string(),
    })?;
    std::fs::write(&tmp, text).map_err(io("writing", tmp.clone()))?;
    std::fs::rename(&tmp, &header_path).map_err(io("renaming", header_path))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A template whose header names a kernel with digest `sha256`.
    fn template(dir: &Path, sha256: &str) -> Template {
        let kernel = serde_json::json!({"path": "/vmlinux", "size": 8, "sha256": sha256});
        let header = serde_json::json!({
            "format_version": FORMAT_VERSION, "husk_version": HUSK_VERSION,
            "kernel": kernel, "initrd": null, "mem_bytes": 256u64 << 20,
            "ram_ranges": [[0, 256u64 << 20]], "vcpus": 1, "host_cpuid_sha256": "",
            "cmdline": "", "state_sha256": "", "memory_checksum": 0, "created_unix_secs": 0,
            "devices": {"vsock_cid": null, "fs_tags": [], "pmem": []},
        });
        let state = serde_json::json!({
            "vcpus": [], "transports": [],
            "vm": {"pic_master": [], "pic_slave": [], "ioapic": [], "pit": [], "clock": []},
            "serial": {
                "baud_divisor_low": 0, "baud_divisor_high": 0, "interrupt_enable": 0,
                "interrupt_identification": 0, "line_control": 0, "line_status": 0,
                "modem_control": 0, "modem_status": 0, "scratch": 0, "in_buffer": [],
            },
        });
        Template {
            dir: dir.into(),
            header: serde_json::from_value(header).unwrap(),
            state: serde_json::from_value(state).unwrap(),
        }
    }

    // Found by the snapshot_header fuzz target: a header digest shorter than
    // 12 bytes (or cut inside a character) panicked while the mismatch
    // error was formatted, instead of refusing the template.
    #[test]
    fn a_mismatched_file_with_a_short_or_odd_digest_is_refused() {
        let dir = std::env::temp_dir().join(format!("husk-format-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let given = dir.join("vmlinux");
        std::fs::write(&given, b"a kernel").unwrap();
        for digest in ["", "abc", "01234567890\u{e9}f"] {
            let t = template(&dir, digest);
            let err = t.require_file("kernel", &t.header.kernel, &given);
            assert!(
                matches!(err, Err(TemplateError::Mismatch { .. })),
                "{digest:?}"
            );
        }
        let ok = template(&dir, &sha256_hex(b"a kernel"));
        ok.require_file("kernel", &ok.header.kernel, &given)
            .unwrap();
        std::fs::remove_dir_all(dir).unwrap();
    }
}
