//! Watching containers' memory cgroups for OOM kills.
//!
//! One thread per container blocks on the kernel's notification: on v1 an
//! eventfd registered through cgroup.event_control for memory.oom_control, on
//! v2 poll(POLLPRI) on memory.events (whose oom_kill counter is compared):
//! kernfs wakes pollers when the file changes, and unlike inotify this needs
//! no CONFIG_INOTIFY_USER, which husk's guest kernel does not have. The v1
//! eventfd fires when the cgroup is removed; the v2 poll also wakes up every
//! few seconds to notice that. Then the files are gone and the thread ends.
//! Events queue up for `ContainerManager::next_oom_event`.

use std::collections::VecDeque;
use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
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

/// Starts watching `memory_dir` (the container's memory cgroup) for `id`.
pub fn watch(
    events: Arc<OomEvents>,
    id: &str,
    memory_dir: &Path,
    v2: bool,
) -> Result<(), ContainerError> {
    let name = id.to_string();
    let id = id.to_string();
    let dir = memory_dir.to_path_buf();
    if v2 {
        let path = dir.join("memory.events");
        let file = File::open(&path).map_err(io_error(format!("opening {}", path.display())))?;
        spawn_thread(&name, move || watch_v2(&events, &id, file))
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
        })
    }
}

fn spawn_thread(id: &str, body: impl FnOnce() + Send + 'static) -> Result<(), ContainerError> {
    std::thread::Builder::new()
        .name(format!("oom-{}", id.chars().take(10).collect::<String>()))
        .spawn(body)
        .map(|_| ())
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

/// How often the v2 watcher wakes up without an event, to notice a removed
/// cgroup (kernfs does not wake pollers when a file goes away).
const V2_RECHECK_MS: u16 = 5000;

fn watch_v2(events: &OomEvents, id: &str, mut file: File) {
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
        let mut fds = [PollFd::new(file.as_fd(), PollFlags::POLLPRI)];
        match poll(&mut fds, PollTimeout::from(V2_RECHECK_MS)) {
            Ok(_) | Err(nix::Error::EINTR) => {}
            Err(_) => return,
        }
    }
}
