//! What the agent tells the host about the guest it runs in (GetGuestDetails):
//! kernel release, memory size and the agent's own version, so the runtime
//! can check it booted what it meant to and log mismatches early.

use std::path::Path;

/// A snapshot of the guest's identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestDetails {
    pub kernel_release: String,
    pub memory_total_bytes: u64,
    pub agent_version: &'static str,
}

/// Why the details could not be read.
#[derive(Debug, thiserror::Error)]
pub enum GuestDetailsError {
    #[error("uname: {0}")]
    Uname(nix::Error),
    #[error("reading {path}: {source}")]
    Read {
        path: &'static str,
        source: std::io::Error,
    },
    #[error("{path} has no parsable MemTotal line")]
    NoMemTotal { path: &'static str },
}

const MEMINFO: &str = "/proc/meminfo";

/// Reads uname(2) and /proc/meminfo.
pub fn read() -> Result<GuestDetails, GuestDetailsError> {
    let uts = nix::sys::utsname::uname().map_err(GuestDetailsError::Uname)?;
    let meminfo =
        std::fs::read_to_string(Path::new(MEMINFO)).map_err(|source| GuestDetailsError::Read {
            path: MEMINFO,
            source,
        })?;
    let memory_total_bytes =
        mem_total_bytes(&meminfo).ok_or(GuestDetailsError::NoMemTotal { path: MEMINFO })?;
    Ok(GuestDetails {
        kernel_release: uts.release().to_string_lossy().into_owned(),
        memory_total_bytes,
        agent_version: env!("CARGO_PKG_VERSION"),
    })
}

/// The `MemTotal:   123456 kB` line of /proc/meminfo, in bytes.
fn mem_total_bytes(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let mut words = line["MemTotal:".len()..].split_whitespace();
    let kib: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") => kib.checked_mul(1024),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_total_is_read_in_bytes() {
        let text = "MemTotal:        2035692 kB\nMemFree:          123 kB\n";
        assert_eq!(mem_total_bytes(text), Some(2_035_692 * 1024));
    }

    #[test]
    fn a_malformed_mem_total_is_none() {
        assert_eq!(mem_total_bytes("MemFree: 1 kB\n"), None);
        assert_eq!(mem_total_bytes("MemTotal: lots kB\n"), None);
        assert_eq!(mem_total_bytes("MemTotal: 12\n"), None);
        assert_eq!(mem_total_bytes("MemTotal: 99999999999999999999 kB\n"), None);
    }

    #[test]
    fn this_machine_has_details() {
        let d = read().unwrap();
        assert!(!d.kernel_release.is_empty());
        assert!(d.memory_total_bytes > 0);
        assert_eq!(d.agent_version, env!("CARGO_PKG_VERSION"));
    }
}
