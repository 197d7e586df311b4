//! Watching containers' memory cgroups for OOM kills.
//!
//! One thread per container blocks on the kernel's notification: on v1 an
//! eventfd registered through cgroup.event_control for memory.oom_control, on
//! v2 poll(POLLPRI) on memory.events (whose oom_kill counter is compared):
//! kernfs wakes pollers when the file changes, and unlike inotify this needs
//! no CONFIG_INOTIFY_USER, which husk's guest kernel does not have. The v1
//! eventfd fires when the cgroup is removed. kernfs does not wake v2
//! pollers when the file goes away, so the v2 watcher also polls a pipe
//! whose write end its `OomWatch` holds: the container drops it when it
//! goes. No timeout: on software KVM an idle guest's every wakeup costs
//! thousands of emulated instructions (a 5 s recheck was a fifth of an idle
//! pod's guest kernel time). Events queue up for
//! `ContainerManager::next_oom_event`.

use std::collections::VecDeque;
use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use super::cgroup::keyed_value;
use super::ContainerError;

/// The queue of container ids that saw an OOM kill.
#[derive(Default)]
pub struct OomEvents {
    queue: Mutex<VecDeque<String>>,
    added: Condvar,
}

impl OomEvents {
    fn push(&self, id: &str) {
        tracing::info!(container = id, "OOM kill in container");
        self.queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back(id.to_string());
        self.added.notify_all();
    }

    /// Takes the next event, waiting at most `timeout` (forever if None).
    pub fn next(&self, timeout: Option<Duration>) -> Option<String> {
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(id) = queue.pop_front() {
                return Some(id);
            }
            queue = match timeout {
                None => self.added.wait(queue).unwrap_or_else(|e| e.into_inner()),
                Some(t) => {
                    let (q, result) = self
                        .added
                        .wait_timeout(queue, t)
                        .unwrap_or_else(|e| e.into_inner());
                    if result.timed_out() {
                        let mut q = q;
                        return q.pop_front();
                    }
                    q
                }
            };
        }
    }
}

fn io_error(what: String) -> impl FnOnce(std::io::Error) -> ContainerError {
    move |source| ContainerError::Io { what, source }
}

/// A v2 OOM watcher's stop: dropping it ends the watcher's thread.
pub struct OomWatch {
    /// The write end of the pipe the watcher polls; closing it wakes the
    /// watcher with POLLHUP.
    _stop: OwnedFd,
}

/// Starts watching `memory_dir` (the container's memory cgroup) for `id`;
/// on v2, the watch that stops it (a v1 watcher ends with its cgroup).
pub fn watch(
    events: Arc<OomEvents>,
    id: &str,
    memory_dir: &Path,
    v2: bool,
) -> Result<Option<OomWatch>, ContainerError> {
    let name = id.to_string();
    let id = id.to_string();
    let dir = memory_dir.to_path_buf();
    if v2 {
        let path = dir.join("memory.events");
        let file = File::open(&path).map_err(io_error(format!("opening {}", path.display())))?;
        let (watch, _) = spawn_v2(events, id, file)?;
        Ok(Some(watch))
    } else {
        let eventfd = nix::sys::eventfd::EventFd::from_value_and_flags(
            0,
            nix::sys::eventfd::EfdFlags::EFD_CLOEXEC,
        )
        .map_err(|e| io_error("eventfd".into())(e.into()))?;
        let control = dir.join("memory.oom_control");
        let oom_control =
            File::open(&control).map_err(io_error(format!("opening {}", control.display())))?;
        let registration = format!("{} {}", eventfd.as_raw_fd(), oom_control.as_raw_fd());
        let event_control = dir.join("cgroup.event_control");
        fs::write(&event_control, registration)
            .map_err(io_error(format!("writing {}", event_control.display())))?;
        spawn_thread(&name, move || {
            watch_v1(&events, &id, control, eventfd, oom_control)
        })?;
        Ok(None)
    }
}

/// A v2 watcher of `file` (memory.events) and the watch that stops it.
fn spawn_v2(
    events: Arc<OomEvents>,
    id: String,
    file: File,
) -> Result<(OomWatch, JoinHandle<()>), ContainerError> {
    let (stop_rx, stop_tx) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| io_error("making the OOM watcher's pipe".into())(e.into()))?;
    let name = id.clone();
    let thread = spawn_thread(&name, move || watch_v2(&events, &id, file, stop_rx))?;
    Ok((OomWatch { _stop: stop_tx }, thread))
}

fn spawn_thread(
    id: &str,
    body: impl FnOnce() + Send + 'static,
) -> Result<JoinHandle<()>, ContainerError> {
    std::thread::Builder::new()
        .name(format!("oom-{}", id.chars().take(10).collect::<String>()))
        .spawn(body)
        .map_err(io_error("spawning the OOM watcher".into()))
}

fn watch_v1(
    events: &OomEvents,
    id: &str,
    control: PathBuf,
    eventfd: nix::sys::eventfd::EventFd,
    _keep: File,
) {
    loop {
        if eventfd.read().is_err() {
            return;
        }
        // The eventfd also fires when the cgroup goes away.
        if !control.exists() {
            return;
        }
        events.push(id);
    }
}

fn watch_v2(events: &OomEvents, id: &str, mut file: File, stop: OwnedFd) {
    let mut seen = 0;
    loop {
        // Reading (from the start) also re-arms kernfs's change notification.
        let mut text = String::new();
        if file.seek(SeekFrom::Start(0)).is_err() || file.read_to_string(&mut text).is_err() {
            return;
        }
        let kills = keyed_value(&text, "oom_kill").unwrap_or(0);
        if kills > seen {
            seen = kills;
            events.push(id);
        }
        let mut fds = [
            PollFd::new(file.as_fd(), PollFlags::POLLPRI),
            PollFd::new(stop.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(nix::Error::EINTR) => {}
            Err(_) => return,
        }
        if fds[1].revents().is_some_and(|r| !r.is_empty()) {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// A regular file stands in for a quiet memory.events: poll never
    /// reports POLLPRI on one, so only the stop pipe can end the watcher.
    #[test]
    fn a_v2_watcher_waits_without_waking_and_ends_when_its_watch_goes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("memory.events");
        std::fs::write(&path, "oom 1\noom_kill 1\n").unwrap();
        let events = Arc::new(OomEvents::default());
        let (watch, thread) =
            spawn_v2(Arc::clone(&events), "c1".into(), File::open(&path).unwrap()).unwrap();
        // The kill already counted is reported once, then the watcher waits.
        assert_eq!(
            events.next(Some(Duration::from_secs(10))).as_deref(),
            Some("c1")
        );
        std::thread::sleep(Duration::from_millis(300));
        assert!(!thread.is_finished(), "the watcher ended on its own");
        drop(watch);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !thread.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(thread.is_finished(), "the watcher outlived its watch");
        assert_eq!(events.next(Some(Duration::ZERO)), None);
    }
}
