//! The open-file limit: the agent's own, and the one container processes
//! start from.
//!
//! The kernel starts init with 1024 (soft) and 4096 (hard) descriptors. The
//! agent holds several for every exec in flight (stdio pipes, vsock streams,
//! namespace and cgroup files): 100 concurrent execs into one pod ran out
//! at 1024. So the agent raises its own limit; container processes get the
//! limit it started with back (unless their spec sets RLIMIT_NOFILE), so a
//! container sees what it would have seen without the raise, as runc's
//! children see its caller's limit.

use std::sync::OnceLock;

use nix::sys::resource::{getrlimit, setrlimit, Resource};

/// The (soft, hard) limit the agent started with, recorded by the first
/// `raise`.
static STARTED_WITH: OnceLock<(u64, u64)> = OnceLock::new();

/// The kernel's ceiling for any process's open-file limit.
const NR_OPEN: &str = "/proc/sys/fs/nr_open";

/// Records the agent's limit, then raises it: to fs.nr_open when the agent
/// may raise its hard limit (PID 1, root), else the soft limit to the hard
/// one. Returns the (soft, hard) limit now in force.
pub fn raise() -> nix::Result<(u64, u64)> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    let _ = STARTED_WITH.set((soft, hard));
    let ceiling = std::fs::read_to_string(NR_OPEN)
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(hard)
        .max(hard);
    if setrlimit(Resource::RLIMIT_NOFILE, ceiling, ceiling).is_ok() {
        return Ok((ceiling, ceiling));
    }
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    Ok((hard, hard))
}

/// The (soft, hard) limit the agent started with, once `raise` ran.
/// An atomic load: safe in a CLONE_VM child (no allocation, no lock).
pub fn started_with() -> Option<(u64, u64)> {
    STARTED_WITH.get().copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raise_lifts_the_soft_limit_and_remembers_the_old_one() {
        let before = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        let now = raise().unwrap();
        assert_eq!(getrlimit(Resource::RLIMIT_NOFILE).unwrap(), now);
        assert!(
            now.0 >= before.1,
            "soft {} below the old hard {}",
            now.0,
            before.1
        );
        assert_eq!(started_with(), Some(before));
        setrlimit(Resource::RLIMIT_NOFILE, before.0, before.1).unwrap();
    }
}
