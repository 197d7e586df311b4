//! The pods of one run: started C at a time, watched until their
//! container runs, and stopped again whatever happened.
//!
//! A pod's start figures come from its own husk process: the metrics
//! endpoint serves each start phase's CLOCK_MONOTONIC time, which the
//! bench puts on its clock (the spawn of `husk run -d` or `ctr run -d` is
//! time zero). The endpoint is polled every 250 ms until the container
//! runs, the pod's process ends, the timeout passes, or the bench is
//! interrupted; each way of failing is kept as the pod's failure. Every
//! pod that was spawned is in the fleet, and `teardown` (or, should the
//! bench unwind, `Drop`) stops each one; a last sweep removes any sandbox
//! directory the fleet does not know (a pod lost to a panic).

use std::process::Child;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use husk_runtime::metrics::{parse, scrape_from, Exposition, Phase};
use husk_runtime::procfs::{self, MemSplit};
use indicatif::ProgressBar;

use super::launch::Launcher;
use super::setup::Bench;
use super::signals::Interrupted;

/// How often a starting pod's metrics are read.
const POLL: Duration = Duration::from_millis(250);

/// Seconds from the pod's spawn to each start phase.
#[derive(Debug, Default, Clone, Copy)]
pub struct Starts {
    pub vm_entry: Option<f64>,
    pub agent_ready: Option<f64>,
    pub running: Option<f64>,
}

/// What one idle pod cost, measured with all pods running.
#[derive(Debug, Clone, Copy)]
pub struct Figures {
    pub memory: MemSplit,
    pub threads: u64,
    /// CPU of its husk process over the idle window, % of one core.
    pub idle_cpu_percent: f64,
}

pub struct Pod {
    pub index: usize,
    pub id: String,
    /// CLOCK_MONOTONIC (ns) just before the pod was spawned.
    pub t0_ns: u64,
    /// The pod's husk process.
    pub pid: Option<u32>,
    /// `ctr run -d`, while it runs (`--via containerd`).
    pub ctr: Option<Child>,
    /// Why the pod's process is gone, once the launcher saw it go.
    pub ended: Option<String>,
    pub starts: Starts,
    /// The first thing that went wrong with this pod.
    pub failure: Option<String>,
    /// It was the k-th pod to run (1-based), when MemAvailable was this.
    pub running_order: Option<usize>,
    pub mem_available_at_running_kib: Option<u64>,
    pub figures: Option<Figures>,
    /// How the teardown went, when not the normal way.
    pub stop_note: Option<String>,
}

impl Pod {
    pub fn new(index: usize, id: String) -> Self {
        Self {
            index,
            id,
            t0_ns: 0,
            pid: None,
            ctr: None,
            ended: None,
            starts: Starts::default(),
            failure: None,
            running_order: None,
            mem_available_at_running_kib: None,
            figures: None,
            stop_note: None,
        }
    }

    pub fn is_running(&self) -> bool {
        self.failure.is_none() && self.starts.running.is_some()
    }

    pub fn fail(&mut self, why: impl Into<String>) {
        if self.failure.is_none() {
            self.failure = Some(why.into());
        }
        self.figures = None;
    }

    /// Takes the phases the pod's metrics show.
    fn read_phases(&mut self, e: &Exposition) {
        let at = |p: Phase| {
            e.value(
                "husk_sandbox_phase_monotonic_seconds",
                &[("phase", p.name())],
            )
            .map(|secs| (secs - self.t0_ns as f64 / 1e9).max(0.0))
        };
        self.starts = Starts {
            vm_entry: at(Phase::VmEntry),
            agent_ready: at(Phase::AgentReady),
            running: at(Phase::ContainerRunning),
        };
    }
}

/// What starting the fleet needs to know.
pub struct StartPlan<'a> {
    pub count: usize,
    pub concurrency: usize,
    pub timeout: Duration,
    pub max_failures: usize,
    pub interrupted: &'a Interrupted,
    pub progress: &'a ProgressBar,
}

pub struct Fleet<'a> {
    bench: &'a Bench,
    launcher: &'a Launcher,
    pods: Mutex<Vec<Pod>>,
    torn_down: bool,
    /// How many pods stop at once (as many as start at once).
    stop_concurrency: usize,
}

impl<'a> Fleet<'a> {
    pub fn new(bench: &'a Bench, launcher: &'a Launcher, concurrency: usize) -> Self {
        Self {
            bench,
            launcher,
            pods: Mutex::new(Vec::new()),
            torn_down: false,
            stop_concurrency: concurrency.max(1),
        }
    }

    pub fn pods(&mut self) -> &mut Vec<Pod> {
        self.pods.get_mut().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts `plan.count` pods, `plan.concurrency` at a time, each until
    /// its container runs or it fails; stops early on interruption or after
    /// `max_failures` failures. Returns why it stopped early, if it did.
    pub fn start_all(&self, plan: &StartPlan) -> Option<String> {
        let next = AtomicUsize::new(0);
        let running = AtomicUsize::new(0);
        let failed = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..plan.concurrency.max(1) {
                s.spawn(|| loop {
                    if plan.interrupted.is_set()
                        || failed.load(Ordering::Acquire) >= plan.max_failures
                    {
                        return;
                    }
                    let i = next.fetch_add(1, Ordering::AcqRel);
                    if i >= plan.count {
                        return;
                    }
                    let pod = self.start_one(i, plan, &running);
                    if pod.failure.is_some() {
                        failed.fetch_add(1, Ordering::AcqRel);
                        say(
                            plan.progress,
                            format!(
                                "pod {} failed: {}",
                                pod.id,
                                pod.failure.as_deref().unwrap_or_default()
                            ),
                        );
                    } else {
                        plan.progress.inc(1);
                        if plan.progress.is_hidden() {
                            // No bar (stderr is not a terminal): a line per pod.
                            eprintln!(
                                "pod {} running ({}/{})",
                                pod.id,
                                plan.progress.position(),
                                plan.count
                            );
                        }
                    }
                    plan.progress
                        .set_message(format!("{} failed", failed.load(Ordering::Acquire)));
                    self.pods
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(pod);
                });
            }
        });
        self.pods
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .sort_by_key(|p| p.index);
        if plan.interrupted.is_set() {
            Some("interrupted".into())
        } else if failed.load(Ordering::Acquire) >= plan.max_failures
            && next.load(Ordering::Acquire) < plan.count
        {
            Some(format!(
                "stopped starting pods after {} failures (--max-failures)",
                plan.max_failures
            ))
        } else {
            None
        }
    }

    fn start_one(&self, index: usize, plan: &StartPlan, running: &AtomicUsize) -> Pod {
        let mut pod = Pod::new(index, self.bench.pod_id(index));
        if let Err(e) = self.launcher.start(self.bench, &mut pod) {
            pod.fail(e);
            return pod;
        }
        match self.wait_running(&mut pod, plan) {
            Ok(()) => {
                pod.running_order = Some(running.fetch_add(1, Ordering::AcqRel) + 1);
                pod.mem_available_at_running_kib = procfs::mem_available_kib().ok();
            }
            Err(e) => pod.fail(e),
        }
        pod
    }

    fn wait_running(&self, pod: &mut Pod, plan: &StartPlan) -> Result<(), String> {
        let socket = self.bench.sandbox_dir(&pod.id).metrics_socket();
        let started = Instant::now();
        loop {
            if plan.interrupted.is_set() {
                return Err("interrupted before its container ran".into());
            }
            if socket.exists() {
                if let Ok(scraped) = scrape_from(&socket) {
                    pod.pid = pod.pid.or(scraped.pid);
                    if let Ok(e) = parse(&scraped.text) {
                        pod.read_phases(&e);
                    }
                }
            }
            if pod.starts.running.is_some() {
                return self.launcher_done(pod);
            }
            if let Some(why) = self.launcher.ended(self.bench, pod) {
                return Err(why);
            }
            if started.elapsed() > plan.timeout {
                return Err(format!(
                    "its container was not running after {} s (--start-timeout-secs)",
                    plan.timeout.as_secs()
                ));
            }
            std::thread::sleep(POLL);
        }
    }

    /// `ctr run -d` returns once the task started: wait for it and take
    /// its verdict.
    fn launcher_done(&self, pod: &mut Pod) -> Result<(), String> {
        let Some(child) = pod.ctr.as_mut() else {
            return Ok(());
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match child.try_wait() {
                Ok(Some(status)) if status.success() => {
                    pod.ctr = None;
                    return Ok(());
                }
                Ok(Some(_)) => {
                    return Err(self
                        .launcher
                        .ended(self.bench, pod)
                        .unwrap_or_else(|| "ctr run failed".into()))
                }
                Ok(None) if Instant::now() < deadline => std::thread::sleep(POLL),
                Ok(None) => return Err("ctr run did not return after the task started".into()),
                Err(e) => return Err(format!("waiting for ctr: {e}")),
            }
        }
    }

    /// Marks pods whose process is gone as failed (`when` says in which
    /// part of the run it was noticed).
    pub fn check_alive(&mut self, when: &str) {
        let (bench, launcher) = (self.bench, self.launcher);
        for pod in self.pods().iter_mut().filter(|p| p.is_running()) {
            if let Some(why) = launcher.ended(bench, pod) {
                pod.fail(format!("{why} ({when})"));
            }
        }
    }

    /// Stops every pod, as many at a time as started at a time (on a
    /// software-KVM host a fleet stopping at once is a fleet of busy guests,
    /// whose emulated kernels starve each other past every grace period),
    /// sweeps what no pod accounts for, and says what it found.
    pub fn teardown(&mut self, progress: &ProgressBar) -> Vec<String> {
        self.torn_down = true;
        let (bench, launcher) = (self.bench, self.launcher);
        let workers = self.stop_concurrency;
        let pods = self.pods.get_mut().unwrap_or_else(|e| e.into_inner());
        let queue = Mutex::new(pods.iter_mut().rev().collect::<Vec<_>>());
        std::thread::scope(|s| {
            for _ in 0..workers {
                s.spawn(|| loop {
                    let Some(pod) = queue.lock().unwrap_or_else(|e| e.into_inner()).pop() else {
                        return;
                    };
                    match launcher.stop(bench, pod) {
                        Ok(note) => pod.stop_note = note,
                        Err(e) => pod.stop_note = Some(format!("NOT CLEAN: {e}")),
                    }
                    progress.inc(1);
                });
            }
        });
        self.sweep()
    }

    /// Sandbox directories in the bench's state dir that belong to no
    /// known pod: removed, and reported.
    fn sweep(&mut self) -> Vec<String> {
        let known: Vec<String> = self.pods().iter().map(|p| p.id.clone()).collect();
        let dir = self.bench.state_dir().join("sandboxes");
        let mut found = Vec::new();
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if known.contains(&name) {
                continue;
            }
            let sandbox = self.bench.sandbox_dir(&name);
            husk_runtime::sandbox::host::release_recorded(&sandbox);
            let result = sandbox.remove();
            found.push(format!(
                "an unknown sandbox directory {}: {}",
                e.path().display(),
                match result {
                    Ok(()) => "removed".to_string(),
                    Err(e) => format!("could not be removed: {e}"),
                }
            ));
        }
        found
    }
}

impl Drop for Fleet<'_> {
    /// A bench that unwinds (an error, a panic) still stops its pods.
    fn drop(&mut self) {
        if !self.torn_down {
            let notes = self.teardown(&ProgressBar::hidden());
            for n in notes {
                eprintln!("bench density: {n}");
            }
        }
    }
}

/// A line above the progress bar, or on its own when the bar is hidden
/// (stderr is not a terminal, e.g. a CI log), where `println` prints nothing.
fn say(progress: &ProgressBar, line: String) {
    if progress.is_hidden() {
        eprintln!("{line}");
    } else {
        progress.println(line);
    }
}
