//! The run's plot (PNG): per-pod memory and start latency against the
//! number of pods running.
//!
//! Top: each pod's PSS (all of it, husk's own, the guest's RAM) at the
//! measurement, placed at the pod's rank in reaching "running", and the
//! host's MemAvailable drop divided by the pods running at the moment each
//! one started: the kernel's whole bill per pod as the count grows. Bottom:
//! each pod's time from its launch command to VM entry, agent ready and
//! container running. Text is drawn with DejaVu Sans read at run time
//! (fonts-dejavu-core), through plotters' pure-Rust ab_glyph renderer.

use std::path::Path;

use anyhow::{anyhow, Context};
use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

use super::pod::Pod;

const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];
const FONT: &str = "sans-serif";

/// A series of (x, y) points with its legend and colour.
struct Series {
    name: &'static str,
    color: RGBColor,
    points: Vec<(f64, f64)>,
    line: bool,
}

/// `title`: what ran; `subtitle`: where (the machine).
pub fn draw(
    path: &Path,
    title: &str,
    subtitle: &str,
    pods: &[Pod],
    baseline_kib: u64,
) -> anyhow::Result<()> {
    load_font()?;
    let mut ranked: Vec<&Pod> = pods.iter().filter(|p| p.running_order.is_some()).collect();
    ranked.sort_by_key(|p| p.running_order);
    let x = |p: &Pod| p.running_order.unwrap_or(0) as f64;
    let measured = |f: fn(&super::pod::Figures) -> u64| -> Vec<(f64, f64)> {
        ranked
            .iter()
            .filter_map(|p| Some((x(p), f(&p.figures?) as f64 / 1024.0)))
            .collect()
    };
    let memory = vec![
        Series {
            name: "host MemAvailable drop / pods running",
            color: RGBColor(200, 30, 30),
            points: ranked
                .iter()
                .filter_map(|p| {
                    let k = x(p);
                    let avail = p.mem_available_at_running_kib?;
                    let drop = baseline_kib as f64 - avail as f64;
                    Some((k, drop / 1024.0 / k))
                })
                .collect(),
            line: true,
        },
        Series {
            name: "PSS of the pod's husk process",
            color: RGBColor(30, 30, 200),
            points: measured(|f| f.memory.total.pss_kib),
            line: false,
        },
        Series {
            name: "  of which guest RAM",
            color: RGBColor(30, 150, 30),
            points: measured(|f| f.memory.guest_ram.pss_kib),
            line: false,
        },
        Series {
            name: "  of which husk's own (shim+VMM+devices)",
            color: RGBColor(230, 140, 0),
            points: measured(|f| f.memory.husk_own().pss_kib),
            line: false,
        },
    ];
    let start = |f: fn(&Pod) -> Option<f64>| -> Vec<(f64, f64)> {
        ranked.iter().filter_map(|p| Some((x(p), f(p)?))).collect()
    };
    let latency = vec![
        Series {
            name: "to VM entry",
            color: RGBColor(30, 150, 30),
            points: start(|p| p.starts.vm_entry),
            line: true,
        },
        Series {
            name: "to agent ready",
            color: RGBColor(230, 140, 0),
            points: start(|p| p.starts.agent_ready),
            line: true,
        },
        Series {
            name: "to container running",
            color: RGBColor(30, 30, 200),
            points: start(|p| p.starts.running),
            line: true,
        },
    ];
    let root = BitMapBackend::new(path, (1400, 1100)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    root.draw(&Text::new(
        title.to_string(),
        (20, 10),
        (FONT, 22).into_font(),
    ))
    .map_err(plot_err)?;
    root.draw(&Text::new(
        subtitle.to_string(),
        (20, 40),
        (FONT, 16).into_font().color(&RGBColor(80, 80, 80)),
    ))
    .map_err(plot_err)?;
    let (_, body) = root.split_vertically(70);
    let (top, bottom) = body.split_vertically(515);
    let n = ranked.len();
    let values = |series: &[Series]| -> Vec<f64> {
        series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.1))
            .collect()
    };
    let mem = values(&memory);
    // Room below zero when other processes freed memory during the run,
    // and headroom above the data for the legend: a share of the whole
    // span, as the legend's height is a share of the chart's.
    let highest = mem.iter().copied().fold(1.0f64, f64::max);
    let y_min = mem.iter().copied().fold(0.0f64, f64::min) * 1.2;
    let y_max = highest + (highest - y_min) * 0.45;
    panel(
        &top,
        "Host memory per idle pod",
        "MiB",
        n,
        &memory,
        y_min..y_max,
    )?;
    // Log scale: VM entry (milliseconds from a template) and container
    // running (tens of seconds here) on one chart.
    let secs = values(&latency);
    let lo = secs
        .iter()
        .copied()
        .filter(|v| *v > 0.0)
        .fold(f64::MAX, f64::min);
    let lo = if lo == f64::MAX { 0.01 } else { lo / 2.0 };
    let hi = secs.iter().copied().fold(lo * 10.0, f64::max) * 8.0;
    panel(
        &bottom,
        "Start latency per pod (from the launch command; log scale)",
        "seconds",
        n,
        &latency,
        (lo..hi).log_scale(),
    )?;
    root.present()
        .with_context(|| format!("writing {}", path.display()))
}

fn panel<DB, Y>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    caption: &str,
    y_label: &str,
    pods: usize,
    series: &[Series],
    y: Y,
) -> anyhow::Result<()>
where
    DB: DrawingBackend,
    Y: AsRangedCoord<Value = f64>,
    Y::CoordDescType: ValueFormatter<f64>,
{
    let x_max = pods.max(1) as f64 + 0.5;
    let mut chart = ChartBuilder::on(area)
        .caption(caption, (FONT, 22).into_font())
        .margin(15)
        .x_label_area_size(50)
        .y_label_area_size(80)
        .build_cartesian_2d(0.5f64..x_max, y)
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .x_desc("pods running (each pod at its rank in reaching running)")
        .y_desc(y_label)
        .label_style((FONT, 16).into_font())
        .axis_desc_style((FONT, 18).into_font())
        .x_labels(pods.clamp(2, 20))
        .x_label_formatter(&|v| format!("{v:.0}"))
        .draw()
        .map_err(plot_err)?;
    for s in series {
        let color = s.color;
        let drawn = if s.line {
            chart
                .draw_series(LineSeries::new(
                    s.points.iter().copied(),
                    color.stroke_width(2),
                ))
                .map_err(plot_err)?;
            chart
                .draw_series(s.points.iter().map(|&p| Circle::new(p, 3, color.filled())))
                .map_err(plot_err)?
        } else {
            chart
                .draw_series(s.points.iter().map(|&p| Circle::new(p, 5, color.filled())))
                .map_err(plot_err)?
        };
        drawn
            .label(s.name)
            .legend(move |(x, y)| Circle::new((x + 10, y), 5, color.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .label_font((FONT, 16).into_font())
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(plot_err)?;
    Ok(())
}

fn plot_err<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow!("drawing the plot: {e}")
}

/// Registers DejaVu Sans once (plotters keeps a `'static` reference).
fn load_font() -> anyhow::Result<()> {
    static LOADED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    LOADED
        .get_or_init(|| {
            let bytes = FONT_PATHS
                .iter()
                .find_map(|p| std::fs::read(p).ok())
                .ok_or_else(|| {
                    format!(
                        "no DejaVu Sans font at {} (Debian: apt-get install fonts-dejavu-core)",
                        FONT_PATHS.join(" or ")
                    )
                })?;
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            register_font(FONT, FontStyle::Normal, bytes)
                .map_err(|_| "the DejaVu Sans file is not a font".to_string())
        })
        .clone()
        .map_err(|e| anyhow!(e))
}

#[cfg(test)]
mod tests {
    use super::super::pod::{Figures, Pod, Starts};
    use super::*;
    use husk_runtime::procfs::{MemFigures, MemSplit};

    /// A plausible pod `k` of a run, for drawing.
    fn pod(k: usize) -> Pod {
        let mut p = Pod::new(k, format!("p-{k}"));
        p.running_order = Some(k + 1);
        // The first pods "free" memory, as other processes on a real host
        // do: the chart then spans negative values too.
        p.mem_available_at_running_kib = Some(20_100_000 - 30_000 * (k as u64 + 1));
        p.starts = Starts {
            vm_entry: Some(0.1 + k as f64 * 0.01),
            agent_ready: Some(0.2 + k as f64 * 0.01),
            running: Some(20.0 + k as f64),
        };
        let fig = |pss| MemFigures {
            rss_kib: pss * 2,
            pss_kib: pss,
        };
        p.figures = Some(Figures {
            memory: MemSplit {
                total: fig(16_000 + k as u64 * 10),
                guest_ram: fig(7_000),
                guest_image: fig(1_400),
            },
            threads: 11,
            idle_cpu_percent: 1.0,
        });
        p
    }

    #[test]
    fn draws_a_png() {
        let path =
            std::env::temp_dir().join(format!("husk-density-plot-{}.png", std::process::id()));
        let pods: Vec<Pod> = (0..40).map(pod).collect();
        draw(&path, "a title", "a machine", &pods, 20_000_000).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        assert!(bytes.len() > 20_000, "{} bytes", bytes.len());
        if std::env::var_os("HUSK_KEEP_PLOT").is_none() {
            std::fs::remove_file(&path).unwrap();
        }
    }
}
