//! Watching containers' memory cgroups for OOM kills.
//!
//! One thread per container blocks on the kernel's notification: on v1 an
//! eventfd registered through cgroup.event_control for memory.oom_control, on
//! v2 inotify on memory.events (whose oom_kill counter is compared). Both
//! also fire when the cgroup is removed; then the files are gone and the
//! thread ends. Events queue up for `ContainerManager::next_oom_event`.

use std::collections::VecDeque;
use std::fs::{self, File};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};

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
        let inotify = Inotify::init(InitFlags::IN_CLOEXEC)
            .map_err(|e| io_error("inotify".into())(e.into()))?;
        let file = dir.join("memory.events");
        inotify
            .add_watch(&file, AddWatchFlags::IN_MODIFY)
            .map_err(|e| io_error(format!("watching {}", file.display()))(e.into()))?;
        spawn_thread(&name, move || watch_v2(&events, &id, &file, inotify))
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

fn watch_v2(events: &OomEvents, id: &str, file: &Path, inotify: Inotify) {
    let mut seen = 0;
    loop {
        let Ok(text) = fs::read_to_string(file) else {
            return;
        };
        let kills = keyed_value(&text, "oom_kill").unwrap_or(0);
        if kills > seen {
            seen = kills;
            events.push(id);
        }
        if inotify.read_events().is_err() {
            return;
        }
    }
}
