//! Where a harness's device event loop runs. Tests step it: each guest
//! action runs the loop until nothing is ready, so every effect is visible
//! when the action returns. Benches that weigh the device thread's own
//! system calls move it to a thread of its own, as husk runs it: there the
//! scripted guest (KVM's part in a VM) never enters the device's code and
//! learns what the device did only from the used rings, as a guest does.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use event_manager::{EventManager, MutEventSubscriber};

use super::test_utils::{GuestDriver, Used};

/// How long a threaded device may take to return one chain.
const CHAIN_DEADLINE: Duration = Duration::from_secs(10);
/// How long the device thread blocks before it checks whether to stop.
const STOP_CHECK_MS: i32 = 20;

pub struct DeviceLoop<S: MutEventSubscriber + Send + 'static> {
    inline: Option<EventManager<S>>,
    thread: Option<DeviceThread>,
}

impl<S: MutEventSubscriber + Send + 'static> DeviceLoop<S> {
    pub fn new(em: EventManager<S>) -> Self {
        Self {
            inline: Some(em),
            thread: None,
        }
    }

    /// Inline, runs the loop until nothing is ready; on a thread, nothing
    /// (the device runs on its own).
    pub fn pump(&mut self) {
        if let Some(em) = &mut self.inline {
            while em.run_with_timeout(0).expect("the device's event loop") > 0 {}
        }
    }

    /// Moves the loop to a thread of its own, which runs `confine` (such as
    /// installing seccomp filters) before it serves any event. A second
    /// call does nothing.
    pub fn move_to_thread(&mut self, confine: impl FnOnce() + Send + 'static) {
        if let Some(em) = self.inline.take() {
            self.thread = Some(DeviceThread::spawn(em, confine));
        }
    }

    /// The used entries of queue `q` once the device has returned chain
    /// `head` (with any others it returned first). Inline, one pass of the
    /// loop decides; on a thread, the guest watches the used ring for up to
    /// 10 s, then gives up with what it has (the caller reports the loss).
    pub fn take_used_until(&mut self, drv: &mut GuestDriver, q: usize, head: u16) -> Vec<Used> {
        self.pump();
        let mut used = drv.take_used(q);
        let deadline = Instant::now() + CHAIN_DEADLINE;
        while self.thread.is_some() && !used.iter().any(|u| u.0 == head) {
            if Instant::now() > deadline {
                break;
            }
            std::hint::spin_loop();
            used.extend(drv.take_used(q));
        }
        used
    }
}

/// A device event loop on its own thread, stopped and joined on drop.
struct DeviceThread {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl DeviceThread {
    fn spawn<S: MutEventSubscriber + Send + 'static>(
        mut em: EventManager<S>,
        confine: impl FnOnce() + Send + 'static,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let handle = std::thread::Builder::new()
            .name("harness-device".into())
            .spawn(move || {
                confine();
                while !stopping.load(Ordering::Relaxed) {
                    em.run_with_timeout(STOP_CHECK_MS)
                        .expect("the device's event loop");
                }
            })
            .expect("spawning the harness's device thread");
        Self {
            stop,
            handle: Some(handle),
        }
    }
}

impl Drop for DeviceThread {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let joined = self.handle.take().map(JoinHandle::join);
        if matches!(joined, Some(Err(_))) && !std::thread::panicking() {
            panic!("the harness's device thread panicked");
        }
    }
}
