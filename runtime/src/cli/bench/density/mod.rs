//! `husk bench density`: how many idle pods this host holds and what each
//! one costs, with real pods.
//!
//! Each pod is a full husk pod, as production runs it: its own husk
//! process (started by `husk run -d`, or by containerd's `ctr run -d`)
//! holding the VMM, the devices and the sandbox, with an idle container
//! (husk-pause) running in its guest. The run:
//!
//! 1. prepares its work directory and the pods' config (`setup`), makes
//!    the template first when pods start from one (so no pod pays for it),
//!    and takes the host's MemAvailable as the baseline;
//! 2. starts N pods, C at a time, each watched through its own metrics
//!    endpoint until its container runs (`pod`), with a progress bar;
//! 3. measures every running pod and the host (`measure`);
//! 4. stops every pod it started, on success, failure or Ctrl-C alike
//!    (`pod::Fleet::teardown`, `signals`), and looks for anything left
//!    (`leftovers`);
//! 5. reports: a table on stdout and in `report.txt`, `density.csv` with
//!    one row per pod, and `density.png` (`report`, `plot`), naming the
//!    machine, its kernels and its kind of KVM (`host`).
//!
//! It exits non-zero when a pod failed or something was left behind, with
//! the report written all the same.

mod host;
mod launch;
mod leftovers;
mod measure;
mod plot;
mod pod;
mod report;
mod setup;
mod signals;
mod stats;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use husk_runtime::config::HuskConfig;
use husk_runtime::procfs;
use husk_runtime::size::parse_mem_size;
use indicatif::{ProgressBar, ProgressStyle};

use launch::Launcher;
use measure::{MeasurePlan, Totals};
use pod::{Fleet, StartPlan};
use setup::Bench;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Restore each pod's VM from the template (made first if missing).
    Template,
    /// Boot each pod's guest kernel.
    Cold,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ImageKind {
    /// The agent's erofs image on read-only virtio-pmem with DAX.
    Pmem,
    /// The agent's initramfs.
    Initrd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Via {
    /// `husk run -d` on an OCI bundle.
    Husk,
    /// `ctr run -d` through containerd (--address).
    Containerd,
}

#[derive(Args)]
pub struct DensityArgs {
    /// Pods to start.
    #[arg(long)]
    count: usize,
    /// Pods starting at once.
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    #[arg(long, value_enum, default_value = "template")]
    mode: Mode,
    /// Guest image (default: the config's guest.boot).
    #[arg(long, value_enum)]
    image: Option<ImageKind>,
    /// Guest memory per pod (default: the config's guest.memory).
    #[arg(long, value_parser = parse_mem_size)]
    mem: Option<u64>,
    /// vCPUs per pod (default: the config's guest.vcpus).
    #[arg(long)]
    cpus: Option<u8>,
    #[arg(long, value_enum, default_value = "husk")]
    via: Via,
    /// containerd's socket (--via containerd; husk's shim on its PATH).
    #[arg(long)]
    address: Option<PathBuf>,
    /// The image `ctr run` starts (--via containerd; imported beforehand).
    #[arg(long, default_value = "husk.local/pause:1")]
    ctr_image: String,
    /// The idle container's static program (--via husk): husk-pause.
    #[arg(long, env = "HUSK_PAUSE")]
    pause: Option<PathBuf>,
    /// Where the report, CSV and plot go (default: ./husk-density-<time>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// husk's config (default: $HUSK_CONFIG, then /etc/husk/config.toml).
    #[arg(long)]
    config: Option<PathBuf>,
    /// The bench's work directory (default: /run/husk-density-<pid>).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Give up on a pod whose container is not running after this long.
    #[arg(long, default_value_t = 900)]
    start_timeout_secs: u64,
    /// Stop starting pods after this many failures.
    #[arg(long, default_value_t = 3)]
    max_failures: usize,
    /// Seconds the pods settle after the last start, before the measurement.
    #[arg(long, default_value_t = 5)]
    settle_secs: u64,
    /// Length of the idle-CPU window.
    #[arg(long, default_value_t = 10)]
    idle_secs: u64,
}

pub fn run(args: DensityArgs) -> anyhow::Result<ExitCode> {
    let interrupted = signals::watch()?;
    if args.count == 0 || args.concurrency == 0 {
        bail!("--count and --concurrency must be at least 1");
    }
    become_subreaper()?;
    let base = HuskConfig::load(args.config.as_deref(), None)?;
    let out_dir = args.out.clone().unwrap_or_else(default_out);
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let launcher = launcher(&args)?;
    let bench = Bench::prepare(&args, &base)?;
    let result = run_in(&args, &bench, &launcher, &out_dir, &interrupted);
    if let Err(e) = bench.remove() {
        eprintln!("bench density: {e:#}");
    }
    result
}

fn run_in(
    args: &DensityArgs,
    bench: &Bench,
    launcher: &Launcher,
    out_dir: &std::path::Path,
    interrupted: &signals::Interrupted,
) -> anyhow::Result<ExitCode> {
    let host = host::HostInfo::read(&bench.config.guest.kernel);
    let title = title(args, bench, launcher);
    eprintln!("{title}");
    for line in host.describe() {
        eprintln!("  {line}");
    }
    let mut fleet = Fleet::new(bench, launcher, args.concurrency);
    let mut totals = Totals {
        load_before: host::load_average(),
        ..Totals::default()
    };
    let stopped_early = start_and_measure(args, bench, &mut fleet, &mut totals, interrupted)?;
    totals.load_after = host::load_average();
    let progress = bar(fleet.pods().len() as u64, "stopping pods");
    let mut leftovers = fleet.teardown(&progress);
    progress.finish_and_clear();
    let ids: Vec<String> = fleet.pods().iter().map(|p| p.id.clone()).collect();
    leftovers.extend(leftovers::find(
        bench,
        args.address
            .as_deref()
            .filter(|_| args.via == Via::Containerd),
        &ids,
    ));
    let pods = std::mem::take(fleet.pods());
    let csv = out_dir.join("density.csv");
    let png = out_dir.join("density.png");
    let txt = out_dir.join("report.txt");
    report::write_csv(&csv, &pods)?;
    let mut files = vec![csv.display().to_string()];
    let subtitle = host.describe()[..2].join("; ");
    match plot::draw(
        &png,
        &plot_title(args, bench),
        &subtitle,
        &pods,
        totals.baseline_kib,
    ) {
        Ok(()) => files.push(png.display().to_string()),
        Err(e) => files.push(format!("no plot: {e:#}")),
    }
    files.push(txt.display().to_string());
    let info = report::RunInfo {
        title,
        machine: host.describe(),
        stopped_early,
        leftovers: leftovers.clone(),
        files,
    };
    let text = report::table(&info, &pods, &totals);
    print!("{text}");
    std::fs::write(&txt, &text).with_context(|| format!("writing {}", txt.display()))?;
    let clean = pods.iter().all(|p| p.failure.is_none()) && leftovers.is_empty();
    Ok(if clean && !interrupted.is_set() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Template (if any), baseline, starts, measurement; why the starts
/// stopped early, if they did.
fn start_and_measure(
    args: &DensityArgs,
    bench: &Bench,
    fleet: &mut Fleet,
    totals: &mut Totals,
    interrupted: &signals::Interrupted,
) -> anyhow::Result<Option<String>> {
    if args.mode == Mode::Template {
        let spinner = ProgressBar::new_spinner()
            .with_message("the template (made now if missing: one cold boot of the guest)");
        spinner.enable_steady_tick(Duration::from_millis(200));
        let timeout = Duration::from_secs(bench.config.runtime.boot_timeout_secs);
        let made = husk_runtime::template::resolve(&bench.config, bench.size, timeout);
        spinner.finish_and_clear();
        made.context("making the pods' template")?;
    }
    measure::sleep(Duration::from_secs(2), interrupted);
    totals.baseline_kib = procfs::mem_available_kib()?;
    let progress = bar(args.count as u64, "pods running");
    let stopped_early = fleet.start_all(&StartPlan {
        count: args.count,
        concurrency: args.concurrency,
        timeout: Duration::from_secs(args.start_timeout_secs),
        max_failures: args.max_failures,
        interrupted,
        progress: &progress,
    });
    progress.finish_and_clear();
    if !interrupted.is_set() {
        eprintln!(
            "bench density: measuring ({} s to settle, {} s idle window)",
            args.settle_secs, args.idle_secs
        );
        measure::measure(
            fleet,
            &MeasurePlan {
                guest_ram_kib: bench.size.mem_bytes >> 10,
                guest_image: bench.guest_image(),
                settle: Duration::from_secs(args.settle_secs),
                idle_window: Duration::from_secs(args.idle_secs),
                interrupted,
            },
            totals,
        );
    }
    Ok(stopped_early.or_else(|| interrupted.is_set().then(|| "interrupted".into())))
}

fn launcher(args: &DensityArgs) -> anyhow::Result<Launcher> {
    Ok(match args.via {
        Via::Husk => Launcher::Husk {
            exe: std::env::current_exe().context("locating the husk binary")?,
        },
        Via::Containerd => Launcher::Containerd {
            address: args
                .address
                .clone()
                .context("--via containerd needs --address (containerd's socket)")?,
            image: args.ctr_image.clone(),
        },
    })
}

fn title(args: &DensityArgs, bench: &Bench, launcher: &Launcher) -> String {
    let g = &bench.config.guest;
    format!(
        "husk bench density: {} idle pods, {} at a time, via {}; VMs {}, guest {}, {} MiB, {} vCPU",
        args.count,
        args.concurrency,
        launcher.name(),
        match args.mode {
            Mode::Template => "from the template",
            Mode::Cold => "cold-booted",
        },
        match g.boot {
            husk_runtime::config::GuestBoot::Image => "pmem image (DAX)",
            husk_runtime::config::GuestBoot::Initrd => "initramfs",
        },
        g.memory >> 20,
        g.vcpus
    )
}

/// The plot's one-line title.
fn plot_title(args: &DensityArgs, bench: &Bench) -> String {
    let g = &bench.config.guest;
    format!(
        "husk density: {} idle pods ({} at a time, via {}), {}, {}, {} MiB, {} vCPU",
        args.count,
        args.concurrency,
        match args.via {
            Via::Husk => "husk run",
            Via::Containerd => "containerd",
        },
        match args.mode {
            Mode::Template => "template",
            Mode::Cold => "cold boot",
        },
        match g.boot {
            husk_runtime::config::GuestBoot::Image => "pmem image",
            husk_runtime::config::GuestBoot::Initrd => "initramfs",
        },
        g.memory >> 20,
        g.vcpus
    )
}

fn bar(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    let style = ProgressStyle::with_template(&format!(
        "{{elapsed_precise}} [{{bar:30}}] {{pos}}/{{len}} {what}, {{msg}}"
    ))
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    bar.set_style(style);
    bar.set_message("0 failed");
    bar.enable_steady_tick(Duration::from_millis(500));
    bar
}

fn default_out() -> PathBuf {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    PathBuf::from(format!("husk-density-{secs}"))
}

/// The pods' husk processes (forked by `husk run -d`, whose parent exits)
/// become the bench's children, so it can wait for them and learn how
/// they ended.
fn become_subreaper() -> anyhow::Result<()> {
    // SAFETY: PR_SET_CHILD_SUBREAPER takes an integer flag and touches no
    // memory of ours.
    let r = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    if r != 0 {
        bail!(
            "becoming a child subreaper: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}
