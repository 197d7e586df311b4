//! husk-pause: the process of a Kubernetes pod's sandbox container.
//!
//! CRI starts a sandbox ("pause") container first in every pod; in husk it
//! runs in the guest like any container, so the pod's sandbox task has a
//! real process, pid and exit status. It only waits: SIGINT or SIGTERM end
//! it with status 0, and as the init of a PID namespace it reaps children
//! it inherits. Signals are taken synchronously (blocked, then `sigwait`),
//! so there are no handlers and nothing runs in between. A static binary
//! (`ci/guest-assets.sh`), packaged by `rootfs/build-pause-oci.sh`.

use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

fn main() {
    let mut set = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGCHLD] {
        set.add(s);
    }
    if let Err(e) = nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), None) {
        eprintln!("husk-pause: cannot block signals: {e}");
        std::process::exit(1);
    }
    loop {
        match set.wait() {
            Ok(Signal::SIGINT | Signal::SIGTERM) => std::process::exit(0),
            Ok(Signal::SIGCHLD) => reap(),
            Ok(_) => {}
            Err(e) => {
                eprintln!("husk-pause: sigwait: {e}");
                std::process::exit(1);
            }
        }
    }
}

/// Reaps every child that has exited.
fn reap() {
    while let Ok(status) = waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
        if status == WaitStatus::StillAlive {
            break;
        }
    }
}
