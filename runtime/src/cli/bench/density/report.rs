//! The run's report: the table (p50/p90/p99 and mean per pod, totals,
//! what failed, what was left behind), and the CSV with one row per pod.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;

use super::measure::Totals;
use super::pod::Pod;
use super::stats::Summary;

/// What the report says about the run besides the pods.
pub struct RunInfo {
    /// What was asked: count, mode, image, size, launcher, concurrency.
    pub title: String,
    pub machine: Vec<String>,
    pub stopped_early: Option<String>,
    pub leftovers: Vec<String>,
    pub files: Vec<String>,
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// The report's text.
pub fn table(info: &RunInfo, pods: &[Pod], totals: &Totals) -> String {
    let mut out = String::new();
    let running: Vec<&Pod> = pods.iter().filter(|p| p.figures.is_some()).collect();
    let failed: Vec<&Pod> = pods.iter().filter(|p| p.failure.is_some()).collect();
    let _ = writeln!(out, "{}", info.title);
    for line in &info.machine {
        let _ = writeln!(out, "  {line}");
    }
    let _ = writeln!(
        out,
        "  pods: {} started, {} measured running, {} failed{}",
        pods.len(),
        running.len(),
        failed.len(),
        info.stopped_early
            .as_ref()
            .map(|s| format!(" ({s})"))
            .unwrap_or_default()
    );
    let _ = writeln!(
        out,
        "  load average before {}, after {}",
        totals.load_before, totals.load_after
    );
    let _ = writeln!(
        out,
        "\n  {:<44} {:>9} {:>9} {:>9} {:>9}",
        "per pod", "p50", "p90", "p99", "mean"
    );
    let fig = |f: &dyn Fn(&Pod) -> Option<f64>| -> Vec<f64> {
        running.iter().filter_map(|p| f(p)).collect()
    };
    let mem = |get: fn(&super::pod::Figures) -> u64| -> Vec<f64> {
        fig(&|p: &Pod| p.figures.map(|f| mib(get(&f))))
    };
    let rows: Vec<(&str, Vec<f64>)> = vec![
        ("PSS, all (MiB)", mem(|f| f.memory.total.pss_kib)),
        ("  guest RAM (MiB)", mem(|f| f.memory.guest_ram.pss_kib)),
        (
            "  guest image, shared (MiB)",
            mem(|f| f.memory.guest_image.pss_kib),
        ),
        (
            "  husk's own: shim+VMM+devices (MiB)",
            mem(|f| f.memory.husk_own().pss_kib),
        ),
        ("RSS, all (MiB)", mem(|f| f.memory.total.rss_kib)),
        ("  guest RAM (MiB)", mem(|f| f.memory.guest_ram.rss_kib)),
        ("  husk's own (MiB)", mem(|f| f.memory.husk_own().rss_kib)),
        (
            "threads",
            fig(&|p: &Pod| p.figures.map(|f| f.threads as f64)),
        ),
        (
            "idle CPU (% of one core)",
            fig(&|p: &Pod| p.figures.map(|f| f.idle_cpu_percent)),
        ),
    ];
    for (name, values) in &rows {
        row(&mut out, name, values, 2);
    }
    let _ = writeln!(out, "  {:<44}", "start, seconds from the launch command");
    let starts: Vec<&Pod> = pods.iter().filter(|p| p.starts.running.is_some()).collect();
    let start =
        |f: fn(&Pod) -> Option<f64>| -> Vec<f64> { starts.iter().filter_map(|p| f(p)).collect() };
    row(
        &mut out,
        "  to VM entry (guest's first instruction)",
        &start(|p| p.starts.vm_entry),
        3,
    );
    row(
        &mut out,
        "  to agent ready",
        &start(|p| p.starts.agent_ready),
        3,
    );
    row(
        &mut out,
        "  to container running",
        &start(|p| p.starts.running),
        3,
    );
    totals_lines(&mut out, &running, totals);
    failures(&mut out, pods);
    let _ = writeln!(out, "\n  left behind after the teardown:");
    if info.leftovers.is_empty() {
        let _ = writeln!(
            out,
            "    nothing (no husk process, socket, mount, cgroup or sandbox directory of this run)"
        );
    }
    for l in &info.leftovers {
        let _ = writeln!(out, "    {l}");
    }
    for f in &info.files {
        let _ = writeln!(out, "  wrote {f}");
    }
    out
}

fn row(out: &mut String, name: &str, values: &[f64], decimals: usize) {
    match Summary::of(values) {
        Some(s) => {
            let _ = writeln!(
                out,
                "  {name:<44} {:>9.d$} {:>9.d$} {:>9.d$} {:>9.d$}",
                s.p50,
                s.p90,
                s.p99,
                s.mean,
                d = decimals
            );
        }
        None => {
            let _ = writeln!(out, "  {name:<44} {:>9}", "-");
        }
    }
}

fn totals_lines(out: &mut String, running: &[&Pod], t: &Totals) {
    let n = running.len().max(1) as f64;
    let pss: u64 = running
        .iter()
        .filter_map(|p| p.figures.map(|f| f.memory.total.pss_kib))
        .sum();
    let own: u64 = running
        .iter()
        .filter_map(|p| p.figures.map(|f| f.memory.husk_own().pss_kib))
        .sum();
    let _ = writeln!(out, "\n  in total ({} pods running)", running.len());
    let Some(m) = &t.measured else {
        let _ = writeln!(
            out,
            "    not measured: the bench stopped before the measurement"
        );
        return;
    };
    let _ = writeln!(
        out,
        "    PSS of their husk processes  {:>10.1} MiB ({:.2} MiB per pod; husk's own {:.2} MiB per pod)",
        mib(pss),
        mib(pss) / n,
        mib(own) / n
    );
    let _ = writeln!(
        out,
        "    host MemAvailable            {:>10.1} MiB before the first pod, {:.1} MiB with all running: a drop of {:.1} MiB, {:.2} MiB per pod",
        mib(t.baseline_kib),
        mib(m.after_kib),
        t.drop_kib(m) as f64 / 1024.0,
        t.drop_kib(m) as f64 / 1024.0 / n
    );
    let _ = writeln!(
        out,
        "    host CPU busy over the {:.0} s idle window: {:.1}% of all CPUs (every process on the host, not only the pods)",
        m.idle_window_secs, m.host_busy_percent
    );
}

fn failures(out: &mut String, pods: &[Pod]) {
    let failed: Vec<&Pod> = pods.iter().filter(|p| p.failure.is_some()).collect();
    let noted: Vec<&Pod> = pods.iter().filter(|p| p.stop_note.is_some()).collect();
    if failed.is_empty() && noted.is_empty() {
        let _ = writeln!(out, "\n  failures: none");
        return;
    }
    let _ = writeln!(out, "\n  failures:");
    for p in failed {
        let _ = writeln!(
            out,
            "    {} (pid {}): {}",
            p.id,
            p.pid.map_or("-".into(), |p| p.to_string()),
            p.failure.as_deref().unwrap_or_default()
        );
    }
    for p in noted {
        let _ = writeln!(
            out,
            "    {} at the teardown: {}",
            p.id,
            p.stop_note.as_deref().unwrap_or_default()
        );
    }
}

const CSV_HEADER: &str = "index,id,status,pid,running_order,pss_kib,pss_guest_ram_kib,pss_guest_image_kib,pss_husk_kib,rss_kib,rss_guest_ram_kib,threads,idle_cpu_percent,vm_entry_s,agent_ready_s,container_running_s,mem_available_at_running_kib,error";

/// One row per pod.
pub fn write_csv(path: &Path, pods: &[Pod]) -> anyhow::Result<()> {
    let mut out = String::from(CSV_HEADER);
    out.push('\n');
    let opt = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v:.3}"));
    let num = |v: Option<u64>| v.map_or(String::new(), |v| v.to_string());
    for p in pods {
        let f = p.figures;
        let status = match (&p.failure, f) {
            (Some(_), _) => "failed",
            (None, Some(_)) => "ok",
            (None, None) => "not measured",
        };
        let error = p
            .failure
            .clone()
            .or_else(|| p.stop_note.clone())
            .unwrap_or_default()
            .replace('"', "\"\"");
        let _ = writeln!(
            out,
            "{},{},{status},{},{},{},{},{},{},{},{},{},{},{},{},{},{},\"{error}\"",
            p.index,
            p.id,
            num(p.pid.map(u64::from)),
            num(p.running_order.map(|o| o as u64)),
            num(f.map(|f| f.memory.total.pss_kib)),
            num(f.map(|f| f.memory.guest_ram.pss_kib)),
            num(f.map(|f| f.memory.guest_image.pss_kib)),
            num(f.map(|f| f.memory.husk_own().pss_kib)),
            num(f.map(|f| f.memory.total.rss_kib)),
            num(f.map(|f| f.memory.guest_ram.rss_kib)),
            num(f.map(|f| f.threads)),
            opt(f.map(|f| f.idle_cpu_percent)),
            opt(p.starts.vm_entry),
            opt(p.starts.agent_ready),
            opt(p.starts.running),
            num(p.mem_available_at_running_kib),
        );
    }
    std::fs::write(path, out).with_context(|| format!("writing {}", path.display()))
}
