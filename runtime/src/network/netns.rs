//! Running work inside the pod's network namespace.
//!
//! `setns(CLONE_NEWNET)` changes the namespace of the calling thread only,
//! and everything that thread opens afterwards (netlink sockets, the tap's
//! `/dev/net/tun` fd, UDP sockets in tests) belongs to that namespace for
//! good. So the work runs on a short-lived thread of its own that enters the
//! namespace first and ends with the job: the caller's thread never changes
//! namespace, and nothing else in the process can run on a thread left in a
//! pod's namespace by mistake. Fds opened there stay valid (and stay in that
//! namespace) after the thread is gone.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use nix::sched::CloneFlags;

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("opening network namespace {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("entering network namespace {path} (is it a network namespace?): {source}")]
    Enter { path: PathBuf, source: nix::Error },
    #[error("starting a thread for network namespace {path}: {source}")]
    Thread { path: PathBuf, source: io::Error },
    #[error("the work in network namespace {path} panicked")]
    Panicked { path: PathBuf },
}

impl NetnsError {
    /// The namespace does not exist (any more): its bind mount is gone.
    pub fn is_gone(&self) -> bool {
        matches!(self, NetnsError::Open { source, .. } if source.kind() == io::ErrorKind::NotFound)
    }
}

/// Runs `work` on a new thread inside the network namespace at `netns` (a
/// bind mount such as `/var/run/netns/cni-...`, or `/proc/PID/ns/net`) and
/// returns what it returned. The calling thread stays where it is.
pub fn in_netns<T, F>(netns: &Path, work: F) -> Result<T, NetnsError>
where
    F: FnOnce() -> T + Send,
    T: Send,
{
    let ns = File::open(netns).map_err(|source| NetnsError::Open {
        path: netns.to_path_buf(),
        source,
    })?;
    std::thread::scope(|scope| {
        let worker = std::thread::Builder::new()
            .name("husk-netns".into())
            .spawn_scoped(scope, move || {
                nix::sched::setns(&ns, CloneFlags::CLONE_NEWNET)?;
                drop(ns);
                Ok(work())
            })
            .map_err(|source| NetnsError::Thread {
                path: netns.to_path_buf(),
                source,
            })?;
        match worker.join() {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(source)) => Err(NetnsError::Enter {
                path: netns.to_path_buf(),
                source,
            }),
            Err(_) => Err(NetnsError::Panicked {
                path: netns.to_path_buf(),
            }),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_namespace_is_reported_as_gone() {
        let err = in_netns(Path::new("/var/run/netns/husk-no-such-ns"), || ()).unwrap_err();
        assert!(err.is_gone(), "{err}");
        assert!(err.to_string().contains("husk-no-such-ns"), "{err}");
    }

    #[test]
    fn a_file_that_is_not_a_namespace_is_refused() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let err = in_netns(file.path(), || ()).unwrap_err();
        assert!(matches!(err, NetnsError::Enter { .. }), "{err}");
        assert!(!err.is_gone());
    }
}
