//! Starting and stopping a pod the way production does, one husk process
//! per pod.
//!
//! `--via husk`: `husk run -d` on the pod's bundle, the standalone
//! launcher a person uses; it forks the pod's husk process and exits, and
//! the bench (a child subreaper) adopts that process, so it can wait for it
//! and tell how it ended. Stopping sends SIGTERM, which `husk run` passes
//! to the container (husk-pause exits on it); the sandbox then goes down
//! the normal way (container removed, VM stopped, directory removed). A
//! pod that will not stop gets SIGINT twice (`husk run` stops the sandbox)
//! and at last SIGKILL, after which the bench removes what it left.
//!
//! `--via containerd`: `ctr run -d --runtime io.containerd.husk.v2`, as a
//! user would, with `--runtime-config-path` naming the bench's config (so
//! the shim uses the bench's sizes and state directory); the pod's husk
//! process is the shim, found through its metrics socket's peer. Stopping
//! is `ctr task delete -f` and `ctr container rm`; containerd and the
//! shim do the rest, and the bench checks that they did.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use husk_runtime::sandbox::host::release_recorded;
use husk_vmm::metrics::monotonic_ns;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use super::pod::Pod;
use super::setup::Bench;

/// How long a pod may take to stop after being asked nicely.
const STOP_GRACE: Duration = Duration::from_secs(120);
/// How long ctr may take for one command.
const CTR_TIMEOUT_SECS: u64 = 180;

pub enum Launcher {
    Husk { exe: PathBuf },
    Containerd { address: PathBuf, image: String },
}

impl Launcher {
    pub fn name(&self) -> &'static str {
        match self {
            Launcher::Husk { .. } => "husk run -d",
            Launcher::Containerd { .. } => "ctr run -d (containerd)",
        }
    }

    /// Starts `pod`; its clock (`t0_ns`) starts just before the spawn.
    pub fn start(&self, bench: &Bench, pod: &mut Pod) -> Result<(), String> {
        match self {
            Launcher::Husk { exe } => start_husk(exe, bench, pod),
            Launcher::Containerd { address, image } => {
                let mut cmd = ctr(address);
                cmd.args(["run", "-d", "--runtime", "io.containerd.husk.v2"])
                    .arg("--runtime-config-path")
                    .arg(&bench.config_path)
                    .args([image, &pod.id])
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .process_group(0);
                pod.t0_ns = monotonic_ns();
                let child = cmd.spawn().map_err(|e| format!("running ctr: {e}"))?;
                pod.ctr = Some(child);
                Ok(())
            }
        }
    }

    /// Why the pod is no longer starting or running, if it is not.
    pub fn ended(&self, bench: &Bench, pod: &mut Pod) -> Option<String> {
        if let Some(why) = &pod.ended {
            return Some(why.clone());
        }
        let why = match self {
            Launcher::Husk { .. } => husk_ended(bench, pod),
            Launcher::Containerd { .. } => ctr_failed(pod).or_else(|| pid_gone(pod)),
        };
        pod.ended.clone_from(&why);
        why
    }

    /// Stops the pod and removes what it left; Ok says how it went when
    /// that was not the normal way, Err when something could not be cleaned.
    pub fn stop(&self, bench: &Bench, pod: &mut Pod) -> Result<Option<String>, String> {
        let note = match self {
            Launcher::Husk { .. } => stop_husk(bench, pod),
            Launcher::Containerd { address, .. } => stop_ctr(address, pod),
        };
        let join = |a: Option<String>, b: String| match a {
            Some(a) => format!("{a}; {b}"),
            None => b,
        };
        match clean_sandbox_dir(bench, &pod.id) {
            Ok(None) => Ok(note),
            Ok(Some(removed)) => Ok(Some(join(note, removed))),
            Err(e) => Err(join(note, e)),
        }
    }
}

fn ctr(address: &std::path::Path) -> Command {
    let mut cmd = Command::new("timeout");
    cmd.args([
        "-k",
        "10",
        &CTR_TIMEOUT_SECS.to_string(),
        "ctr",
        "--address",
    ])
    .arg(address);
    cmd
}

fn start_husk(exe: &std::path::Path, bench: &Bench, pod: &mut Pod) -> Result<(), String> {
    let bundle = bench.bundle(&pod.id).map_err(|e| format!("{e:#}"))?;
    let mut cmd = Command::new(exe);
    cmd.args(["run", "-d", "--bundle"])
        .arg(&bundle)
        .args(["--id", &pod.id, "--config"])
        .arg(&bench.config_path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    pod.t0_ns = monotonic_ns();
    let out = cmd
        .output()
        .map_err(|e| format!("running husk run -d: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "husk run -d failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    // `ID PID (output: LOG)`
    let stdout = String::from_utf8_lossy(&out.stdout);
    let pid = stdout
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| format!("husk run -d printed no pid: {stdout:?}"))?;
    pod.pid = Some(pid);
    Ok(())
}

/// The pod's husk process ended (it is the bench's adopted child).
fn husk_ended(bench: &Bench, pod: &Pod) -> Option<String> {
    let pid = pod.pid?;
    let how = match waitpid(Pid::from_raw(pid as i32), Some(WaitPidFlag::WNOHANG)) {
        Ok(WaitStatus::StillAlive) => return None,
        Ok(WaitStatus::Exited(_, code)) => format!("exited with status {code}"),
        Ok(WaitStatus::Signaled(_, sig, _)) => format!("was killed by {sig}"),
        Ok(other) => format!("changed state: {other:?}"),
        // Not our child (adoption failed): ask the kernel whether it lives.
        Err(_) => return pid_gone(pod),
    };
    let log = bench.state_dir().join(format!("{}.output.log", pod.id));
    let last = std::fs::read_to_string(log).ok().and_then(|t| {
        t.lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .map(str::to_string)
    });
    Some(match last {
        Some(line) => format!("its husk process {pid} {how} (last words: {line})"),
        None => format!("its husk process {pid} {how}"),
    })
}

fn pid_gone(pod: &Pod) -> Option<String> {
    let pid = pod.pid?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok();
    let zombie = stat
        .as_deref()
        .and_then(|s| s.rsplit(')').next())
        .is_some_and(|rest| rest.trim_start().starts_with('Z'));
    (stat.is_none() || zombie).then(|| format!("its husk process {pid} is gone"))
}

/// `ctr run -d` failed (it exits once the task runs).
fn ctr_failed(pod: &mut Pod) -> Option<String> {
    let child = pod.ctr.as_mut()?;
    match child.try_wait() {
        Ok(Some(status)) if !status.success() => {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            Some(format!("ctr run failed ({status}): {}", err.trim()))
        }
        _ => None,
    }
}

/// Waits for an adopted child to end, up to `limit`.
fn wait_exit(pid: u32, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        match waitpid(Pid::from_raw(pid as i32), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => {}
            Ok(_) => return true,
            // Not our child: done when the kernel no longer has it.
            Err(_) => {
                if kill(Pid::from_raw(pid as i32), None).is_err() {
                    return true;
                }
            }
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn stop_husk(_bench: &Bench, pod: &mut Pod) -> Option<String> {
    let pid = pod.pid?;
    if let Some(why) = &pod.ended {
        return Some(format!("had ended before the teardown ({why})"));
    }
    let p = Pid::from_raw(pid as i32);
    let _ = kill(p, Signal::SIGTERM);
    if wait_exit(pid, STOP_GRACE) {
        return None;
    }
    // `husk run`: a second SIGINT stops the sandbox.
    let _ = kill(p, Signal::SIGINT);
    std::thread::sleep(Duration::from_millis(200));
    let _ = kill(p, Signal::SIGINT);
    if wait_exit(pid, Duration::from_secs(30)) {
        return Some("did not stop on SIGTERM; stopped by SIGINT".into());
    }
    let _ = kill(p, Signal::SIGKILL);
    wait_exit(pid, Duration::from_secs(10));
    Some("did not stop on SIGTERM or SIGINT; killed".into())
}

fn stop_ctr(address: &std::path::Path, pod: &mut Pod) -> Option<String> {
    if let Some(mut c) = pod.ctr.take() {
        // Normally long finished; a `ctr run` still waiting is cut short.
        if !matches!(c.try_wait(), Ok(Some(_))) {
            let _ = c.kill();
        }
        let _ = c.wait();
    }
    let mut notes = Vec::new();
    let run = |args: &[&str]| {
        ctr(address)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
    };
    match run(&["task", "delete", "-f", &pod.id]) {
        Ok(o) if o.status.success() => {}
        Ok(o) => {
            let err = String::from_utf8_lossy(&o.stderr);
            if !err.contains("not found") {
                notes.push(format!("ctr task delete: {}", err.trim()));
            }
        }
        Err(e) => notes.push(format!("ctr task delete: {e}")),
    }
    match run(&["container", "rm", &pod.id]) {
        Ok(o) if o.status.success() => {}
        Ok(o) => notes.push(format!(
            "ctr container rm: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => notes.push(format!("ctr container rm: {e}")),
    }
    if let Some(pid) = pod.pid {
        if !wait_exit(pid, Duration::from_secs(30)) {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            notes.push(format!("its shim {pid} outlived the delete; killed"));
        }
    }
    (!notes.is_empty()).then(|| notes.join("; "))
}

/// Removes what is left of the pod's sandbox directory (a killed pod's
/// mounts, host resources, sockets): Ok(Some) says what had to go.
fn clean_sandbox_dir(bench: &Bench, id: &str) -> Result<Option<String>, String> {
    let dir = bench.sandbox_dir(id);
    let log = bench.state_dir().join(format!("{id}.output.log"));
    let _ = std::fs::remove_file(log);
    if !dir.path().exists() {
        return Ok(None);
    }
    release_recorded(&dir);
    match dir.remove() {
        Ok(()) => Ok(Some(
            "the bench removed the sandbox directory it left".into(),
        )),
        Err(e) => Err(format!(
            "its sandbox directory {} could not be removed: {e}",
            dir.path().display()
        )),
    }
}
