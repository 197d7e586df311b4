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

use std::sync::atomic::{AtomicU64, Ordering};

use nix::sys::resource::{getrlimit, setrlimit, Resource};

/// The limit the agent started with, recorded by `raise`; `u64::MAX` in
/// both until then (nothing to restore).
static STARTED_WITH: [AtomicU64; 2] = [AtomicU64::new(u64::MAX), AtomicU64::new(u64::MAX)];

/// The kernel's ceiling for any process's open-file limit.
const NR_OPEN: &str = "/proc/sys/fs/nr_open";

/// Records the agent's limit, then raises it: to fs.nr_open when the agent
/// may raise its hard limit (PID 1, root), else the soft limit to the hard
/// one. Returns the (soft, hard) limit now in force.
pub fn raise() -> nix::Result<(u64, u64)> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    STARTED_WITH[0].store(soft, Ordering::Relaxed);
    STARTED_WITH[1].store(hard, Ordering::Relaxed);
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
/// Reads two atomics: safe in a CLONE_VM child (no allocation, no lock).
pub fn started_with() -> Option<(u64, u64)> {
    let soft = STARTED_WITH[0].load(Ordering::Relaxed);
    let hard = STARTED_WITH[1].load(Ordering::Relaxed);
    (soft != u64::MAX || hard != u64::MAX).then_some((soft, hard))
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
