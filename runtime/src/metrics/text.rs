//! Writing the Prometheus text exposition format (version 0.0.4).
//!
//! The format is small enough to write by hand: per metric family a
//! `# HELP` and a `# TYPE` line, then one line per series, `name{labels}
//! value`; a histogram is its cumulative `_bucket{le=...}` series, `_sum`
//! and `_count`. Label values and help texts are escaped as the format
//! says (backslash, double quote in labels, newline). Names are husk's own
//! constants; a debug build checks they are valid.

use std::fmt::Write;

use super::histogram::HistogramSnapshot;

/// A metric family's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// Builds one exposition: families in the order written.
#[derive(Debug, Default)]
pub struct TextWriter {
    out: String,
}

impl TextWriter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts a family: its HELP and TYPE lines. Its series follow.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) -> &mut Self {
        debug_assert!(valid_metric_name(name), "metric name {name:?}");
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {}", kind.name());
        self
    }

    /// One series of a counter or gauge family.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) -> &mut Self {
        self.out.push_str(name);
        self.labels(labels, None);
        let _ = writeln!(self.out, " {}", format_value(value));
        self
    }

    /// The series of one histogram (`name` is the family's name).
    pub fn histogram(
        &mut self,
        name: &str,
        labels: &[(&str, &str)],
        h: &HistogramSnapshot,
    ) -> &mut Self {
        for (bound, count) in h.buckets() {
            let _ = write!(self.out, "{name}_bucket");
            self.labels(labels, Some(&format_value(bound)));
            let _ = writeln!(self.out, " {count}");
        }
        let _ = write!(self.out, "{name}_sum");
        self.labels(labels, None);
        let _ = writeln!(self.out, " {}", format_value(h.sum));
        let _ = write!(self.out, "{name}_count");
        self.labels(labels, None);
        let _ = writeln!(self.out, " {}", h.count);
        self
    }

    pub fn finish(self) -> String {
        self.out
    }

    fn labels(&mut self, labels: &[(&str, &str)], le: Option<&str>) {
        if labels.is_empty() && le.is_none() {
            return;
        }
        self.out.push('{');
        let all = labels.iter().copied().chain(le.map(|v| ("le", v)));
        for (i, (k, v)) in all.enumerate() {
            debug_assert!(valid_label_name(k), "label name {k:?}");
            if i > 0 {
                self.out.push(',');
            }
            let _ = write!(self.out, "{k}=\"{}\"", escape_label_value(v));
        }
        self.out.push('}');
    }
}

/// A sample value: integers without a fraction, `+Inf`, `-Inf`, `NaN`.
pub fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else if v.fract() == 0.0 && v.abs() < 9.0e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

fn escape_label_value(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// `[a-zA-Z_:][a-zA-Z0-9_:]*`
pub fn valid_metric_name(n: &str) -> bool {
    let mut chars = n.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// `[a-zA-Z_][a-zA-Z0-9_]*`, not starting with the reserved `__`.
pub fn valid_label_name(n: &str) -> bool {
    let mut chars = n.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !n.starts_with("__")
}

#[cfg(test)]
mod tests {
    use super::super::histogram::Histogram;
    use super::*;
    use std::time::Duration;

    #[test]
    fn writes_families_series_and_escapes() {
        let mut w = TextWriter::new();
        w.family("husk_x_total", Kind::Counter, "a \\ help\nline")
            .sample("husk_x_total", &[("a", "q\"uo\\te\nd")], 3.0)
            .sample("husk_x_total", &[], 0.5);
        w.family("husk_g", Kind::Gauge, "g").sample(
            "husk_g",
            &[("k", "v"), ("l", "w")],
            f64::INFINITY,
        );
        assert_eq!(
            w.finish(),
            "# HELP husk_x_total a \\\\ help\\nline\n\
             # TYPE husk_x_total counter\n\
             husk_x_total{a=\"q\\\"uo\\\\te\\nd\"} 3\n\
             husk_x_total 0.5\n\
             # HELP husk_g g\n\
             # TYPE husk_g gauge\n\
             husk_g{k=\"v\",l=\"w\"} +Inf\n"
        );
    }

    #[test]
    fn writes_a_cumulative_histogram() {
        let h = Histogram::new(&[0.1, 1.0]);
        h.observe(Duration::from_millis(50));
        h.observe(Duration::from_millis(500));
        h.observe(Duration::from_secs(3));
        let mut w = TextWriter::new();
        w.family("husk_h_seconds", Kind::Histogram, "h").histogram(
            "husk_h_seconds",
            &[("m", "x")],
            &h.snapshot(),
        );
        assert_eq!(
            w.finish(),
            "# HELP husk_h_seconds h\n\
             # TYPE husk_h_seconds histogram\n\
             husk_h_seconds_bucket{m=\"x\",le=\"0.1\"} 1\n\
             husk_h_seconds_bucket{m=\"x\",le=\"1\"} 2\n\
             husk_h_seconds_bucket{m=\"x\",le=\"+Inf\"} 3\n\
             husk_h_seconds_sum{m=\"x\"} 3.55\n\
             husk_h_seconds_count{m=\"x\"} 3\n"
        );
    }

    #[test]
    fn names_and_values() {
        assert!(valid_metric_name("husk_vcpu_exits_total"));
        assert!(valid_metric_name("a:b"));
        assert!(!valid_metric_name("1abc") && !valid_metric_name("a-b") && !valid_metric_name(""));
        assert!(valid_label_name("le") && !valid_label_name("__x") && !valid_label_name("a:b"));
        assert_eq!(format_value(1e-3), "0.001");
        assert_eq!(format_value(-2.0), "-2");
        assert_eq!(format_value(f64::NAN), "NaN");
        assert_eq!(format_value(f64::NEG_INFINITY), "-Inf");
        assert_eq!(format_value(1.5e16), "15000000000000000");
    }
}
