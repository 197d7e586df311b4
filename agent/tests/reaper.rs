//! The process-wide reaper with real children: exit codes, signals, and
//! orphans re-parented to this process (a child subreaper when not PID 1).

use std::os::fd::AsRawFd;

use husk_agent::reaper::{ExitStatus, Reaper};
use nix::unistd::{fork, ForkResult};

/// Forks a child that runs `body` and exits with what it returns.
fn child(body: impl FnOnce() -> i32) -> i32 {
    // SAFETY: the child only runs `body` (no locks, no allocation) and _exits.
    match unsafe { fork() }.expect("fork") {
        ForkResult::Child => {
            let code = body();
            // SAFETY: leaving the forked child immediately.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => child.as_raw(),
    }
}

#[test]
fn exit_codes_and_signals_are_reported_like_runc() {
    let reaper = Reaper::start();
    let exits = child(|| 7);
    reaper.note_spawned();
    assert_eq!(reaper.wait(exits), ExitStatus::Exited(7));
    assert_eq!(ExitStatus::Exited(7).code(), 7);

    let sleeps = child(|| {
        // SAFETY: pause just blocks until a signal arrives.
        unsafe { libc::pause() };
        0
    });
    reaper.note_spawned();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(sleeps),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let status = reaper.wait(sleeps);
    assert_eq!(status, ExitStatus::Signaled(libc::SIGKILL));
    assert_eq!(status.code(), 137);
    assert!(
        std::sync::Arc::ptr_eq(&reaper, &Reaper::start()),
        "one reaper per process"
    );
}

#[test]
fn orphans_come_to_the_reaper() {
    let reaper = Reaper::start();
    let (read_end, write_end) = nix::unistd::pipe().unwrap();
    // The middle process forks a grandchild, reports its pid and exits; the
    // grandchild is re-parented to us (the subreaper) and exits with 5.
    let middle = child(|| {
        // SAFETY: as in `child`.
        match unsafe { fork() } {
            Ok(ForkResult::Child) => 5,
            Ok(ForkResult::Parent { child }) => {
                let pid = child.as_raw().to_le_bytes();
                // SAFETY: writing 4 bytes from a live buffer.
                unsafe { libc::write(write_end.as_raw_fd(), pid.as_ptr().cast(), 4) };
                0
            }
            Err(_) => 1,
        }
    });
    reaper.note_spawned();
    drop(write_end);
    let mut buf = [0u8; 4];
    nix::unistd::read(&read_end, &mut buf).expect("grandchild pid");
    let grandchild = i32::from_le_bytes(buf);
    assert_eq!(reaper.wait(middle), ExitStatus::Exited(0));
    assert_eq!(reaper.wait(grandchild), ExitStatus::Exited(5));
}

/// Many processes waited for at once, by a thread each, exiting in the
/// reverse order of their waits: every waiter gets its own child's status
/// (each pid wakes only its own waiters).
#[test]
fn concurrent_waiters_each_get_their_own_status() {
    let reaper = Reaper::start();
    let gates: Vec<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> =
        (0..32).map(|_| nix::unistd::pipe().unwrap()).collect();
    let pids: Vec<i32> = gates
        .iter()
        .enumerate()
        .map(|(i, (read, _))| {
            let fd = read.as_raw_fd();
            child(move || {
                let mut byte = [0u8];
                // SAFETY: reads one byte into a local buffer.
                unsafe { libc::read(fd, byte.as_mut_ptr().cast(), 1) };
                10 + i as i32
            })
        })
        .collect();
    reaper.note_spawned();
    let waiters: Vec<_> = pids
        .iter()
        .map(|&pid| {
            let reaper = std::sync::Arc::clone(&reaper);
            std::thread::spawn(move || reaper.wait(pid))
        })
        .collect();
    for (_, write) in gates.iter().rev() {
        nix::unistd::write(write, b"x").unwrap();
    }
    for (i, waiter) in waiters.into_iter().enumerate() {
        assert_eq!(waiter.join().unwrap(), ExitStatus::Exited(10 + i as i32));
    }
}
