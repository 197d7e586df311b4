//! Reading the Prometheus text exposition format (version 0.0.4), strictly.
//!
//! `husk bench density` reads each pod's start phases from its metrics
//! endpoint with this, and the tests check husk's own output against it,
//! so it enforces the format's rules rather than guessing: valid metric
//! and label names, quoted and escaped label values, numeric values (with
//! `+Inf`, `-Inf`, `NaN`) and an optional integer timestamp; at most one
//! HELP and one TYPE per family, TYPE before the family's first sample;
//! every family's lines in one group; no series twice; a histogram's
//! buckets carry `le`, are cumulative in ascending `le`, end in `+Inf`
//! and agree with `_count`.

use std::collections::{BTreeMap, HashSet};

use super::text::{valid_label_name, valid_metric_name};

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("metrics text, line {line}: {message}")]
pub struct ParseError {
    pub line: usize,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FamilyKind {
    Counter,
    Gauge,
    Histogram,
    Summary,
    Untyped,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Family {
    pub name: String,
    pub kind: FamilyKind,
    pub help: Option<String>,
    pub samples: Vec<Sample>,
}

/// A parsed exposition.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Exposition {
    pub families: Vec<Family>,
}

impl Exposition {
    pub fn family(&self, name: &str) -> Option<&Family> {
        self.families.iter().find(|f| f.name == name)
    }

    /// The value of the series `sample` whose labels include `labels`
    /// (the first such series).
    pub fn value(&self, sample: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples(sample)
            .find(|s| {
                labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(v))
            })
            .map(|s| s.value)
    }

    /// The sum over every series named `sample`.
    pub fn sum(&self, sample: &str) -> f64 {
        self.samples(sample).map(|s| s.value).sum()
    }

    pub fn samples<'a>(&'a self, sample: &'a str) -> impl Iterator<Item = &'a Sample> + 'a {
        self.families
            .iter()
            .flat_map(|f| f.samples.iter())
            .filter(move |s| s.name == sample)
    }
}

pub fn parse(text: &str) -> Result<Exposition, ParseError> {
    let mut p = Parser::default();
    for (i, line) in text.lines().enumerate() {
        p.line = i + 1;
        p.line(line)?;
    }
    p.finish()
}

#[derive(Default)]
struct Parser {
    line: usize,
    families: Vec<Family>,
    /// Families whose group has ended.
    closed: HashSet<String>,
    series: HashSet<(String, Vec<(String, String)>)>,
}

impl Parser {
    fn err<T>(&self, message: impl Into<String>) -> Result<T, ParseError> {
        Err(ParseError {
            line: self.line,
            message: message.into(),
        })
    }

    fn line(&mut self, line: &str) -> Result<(), ParseError> {
        let trimmed = line.trim_start_matches([' ', '\t']);
        if trimmed.is_empty() {
            return Ok(());
        }
        match trimmed.strip_prefix('#') {
            Some(comment) => self.comment(comment),
            None => self.sample(trimmed),
        }
    }

    fn comment(&mut self, comment: &str) -> Result<(), ParseError> {
        let mut tokens = comment
            .trim_start_matches([' ', '\t'])
            .splitn(2, [' ', '\t']);
        let keyword = tokens.next().unwrap_or("");
        if keyword != "HELP" && keyword != "TYPE" {
            return Ok(());
        }
        let rest = tokens.next().unwrap_or("").trim_start_matches([' ', '\t']);
        let (name, arg) = rest.split_once([' ', '\t']).unwrap_or((rest, ""));
        if !valid_metric_name(name) {
            return self.err(format!("{keyword} for an invalid metric name {name:?}"));
        }
        let family = self.open_family(name)?;
        if keyword == "HELP" {
            if family.help.is_some() {
                return self.err(format!("a second HELP for {name}"));
            }
            family.help = Some(unescape_help(arg));
            return Ok(());
        }
        let kind = match arg.trim_matches([' ', '\t']) {
            "counter" => FamilyKind::Counter,
            "gauge" => FamilyKind::Gauge,
            "histogram" => FamilyKind::Histogram,
            "summary" => FamilyKind::Summary,
            "untyped" => FamilyKind::Untyped,
            other => return self.err(format!("unknown TYPE {other:?} for {name}")),
        };
        let typed_already = family.kind != FamilyKind::Untyped;
        let has_samples = !family.samples.is_empty();
        if typed_already {
            return self.err(format!("a second TYPE for {name}"));
        }
        if has_samples {
            return self.err(format!("the TYPE of {name} comes after its samples"));
        }
        family.kind = kind;
        Ok(())
    }

    /// The family `name` as the current group, created if new; a family
    /// whose group already ended cannot come back.
    fn open_family(&mut self, name: &str) -> Result<&mut Family, ParseError> {
        let current = self.families.last().map(|f| f.name.clone());
        if current.as_deref() != Some(name) {
            if self.closed.contains(name) {
                return self.err(format!("{name} appears again after other metrics"));
            }
            if let Some(c) = current {
                self.closed.insert(c);
            }
            self.families.push(Family {
                name: name.to_string(),
                kind: FamilyKind::Untyped,
                help: None,
                samples: Vec::new(),
            });
        }
        Ok(self.families.last_mut().expect("just pushed"))
    }

    fn sample(&mut self, line: &str) -> Result<(), ParseError> {
        let name_end = line.find(['{', ' ', '\t']).unwrap_or(line.len());
        let name = &line[..name_end];
        if !valid_metric_name(name) {
            return self.err(format!("invalid metric name {name:?}"));
        }
        let mut rest = &line[name_end..];
        let mut labels = BTreeMap::new();
        if let Some(after) = rest.strip_prefix('{') {
            rest = match parse_labels(after, &mut labels) {
                Ok(rest) => rest,
                Err(m) => return self.err(m),
            };
        }
        let mut fields = rest.split([' ', '\t']).filter(|f| !f.is_empty());
        let value = match fields.next().map(parse_value) {
            Some(Some(v)) => v,
            Some(None) => return self.err(format!("{name}: the value is not a number")),
            None => return self.err(format!("{name}: no value")),
        };
        if let Some(ts) = fields.next() {
            if ts.parse::<i64>().is_err() {
                return self.err(format!("{name}: the timestamp {ts:?} is not an integer"));
            }
        }
        if fields.next().is_some() {
            return self.err(format!("{name}: text after the value and timestamp"));
        }
        let key = (
            name.to_string(),
            labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        );
        if !self.series.insert(key) {
            return self.err(format!("{name}: the same series twice"));
        }
        let family_name = self.family_of(name);
        let family = self.open_family(&family_name)?;
        family.samples.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
        Ok(())
    }

    /// The family a sample belongs to: a histogram's or summary's own
    /// suffixed series go to the family that is open, else the name.
    fn family_of(&self, sample: &str) -> String {
        if let Some(f) = self.families.last() {
            let suffixes: &[&str] = match f.kind {
                FamilyKind::Histogram => &["_bucket", "_sum", "_count"],
                FamilyKind::Summary => &["_sum", "_count"],
                _ => &[],
            };
            if suffixes
                .iter()
                .any(|s| sample.strip_suffix(s) == Some(f.name.as_str()))
            {
                return f.name.clone();
            }
        }
        sample.to_string()
    }

    fn finish(self) -> Result<Exposition, ParseError> {
        for f in &self.families {
            if f.kind == FamilyKind::Histogram {
                check_histogram(f).map_err(|message| ParseError {
                    line: self.line,
                    message,
                })?;
            }
        }
        Ok(Exposition {
            families: self.families,
        })
    }
}

/// Parses `name="value",...}` into `labels`; returns what follows `}`.
fn parse_labels<'a>(
    mut s: &'a str,
    labels: &mut BTreeMap<String, String>,
) -> Result<&'a str, String> {
    loop {
        s = s.trim_start_matches([' ', '\t']);
        if let Some(rest) = s.strip_prefix('}') {
            return Ok(rest);
        }
        let eq = s.find('=').ok_or("a label without '='")?;
        let name = s[..eq].trim_matches([' ', '\t']);
        if !valid_label_name(name) {
            return Err(format!("invalid label name {name:?}"));
        }
        s = s[eq + 1..].trim_start_matches([' ', '\t']);
        s = s
            .strip_prefix('"')
            .ok_or(format!("the value of label {name} is not quoted"))?;
        let mut value = String::new();
        let mut chars = s.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err(format!("the value of label {name} is not closed")),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    _ => return Err(format!("a bad escape in the value of label {name}")),
                },
                Some((_, c)) => value.push(c),
            }
        };
        if labels.insert(name.to_string(), value).is_some() {
            return Err(format!("label {name} twice"));
        }
        s = s[end + 1..].trim_start_matches([' ', '\t']);
        if s.is_empty() {
            return Err("the label set is not closed".into());
        }
        if let Some(rest) = s.strip_prefix(',') {
            s = rest;
        } else if !s.starts_with('}') {
            return Err("labels not separated by ','".into());
        }
    }
}

fn parse_value(v: &str) -> Option<f64> {
    match v {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ if v
            .bytes()
            .all(|b| b.is_ascii_digit() || b"+-.eE".contains(&b)) =>
        {
            v.parse().ok()
        }
        _ => None,
    }
}

fn unescape_help(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match (c, c == '\\') {
            (_, true) => match chars.next() {
                Some('n') => out.push('\n'),
                Some('\\') => out.push('\\'),
                Some(other) => {
                    out.push('\\');
                    out.push(other);
                }
                None => out.push('\\'),
            },
            (c, false) => out.push(c),
        }
    }
    out
}

/// Per label set (without `le`): buckets ascending and cumulative, a
/// `+Inf` bucket equal to `_count`.
fn check_histogram(f: &Family) -> Result<(), String> {
    /// (le, cumulative count) of each bucket, and `_count`.
    type Series = (Vec<(f64, f64)>, Option<f64>);
    let mut groups: BTreeMap<Vec<(String, String)>, Series> = BTreeMap::new();
    for s in &f.samples {
        let mut key: Vec<(String, String)> = s
            .labels
            .iter()
            .filter(|(k, _)| k.as_str() != "le")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        key.sort();
        let entry = groups.entry(key).or_default();
        if s.name == format!("{}_bucket", f.name) {
            let le = s
                .labels
                .get("le")
                .and_then(|v| parse_value(v))
                .ok_or(format!("{}: a bucket without a numeric le", f.name))?;
            entry.0.push((le, s.value));
        } else if s.name == format!("{}_count", f.name) {
            entry.1 = Some(s.value);
        } else if s.name != format!("{}_sum", f.name) {
            return Err(format!(
                "{}: a stray series {} in a histogram",
                f.name, s.name
            ));
        }
    }
    for (labels, (buckets, count)) in groups {
        let ascending = buckets.windows(2).all(|w| w[0].0 < w[1].0);
        let cumulative = buckets.windows(2).all(|w| w[0].1 <= w[1].1);
        if !ascending || !cumulative {
            return Err(format!(
                "{} {labels:?}: buckets are not ascending and cumulative",
                f.name
            ));
        }
        match (buckets.last(), count) {
            (Some(&(le, n)), Some(c)) if le == f64::INFINITY && n == c => {}
            _ => {
                return Err(format!(
                    "{} {labels:?}: no +Inf bucket equal to _count",
                    f.name
                ))
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the format's documentation (exposition_formats.md),
    /// summaries and timestamps included.
    const SPEC_EXAMPLE: &str = r#"# HELP http_requests_total The total number of HTTP requests.
# TYPE http_requests_total counter
http_requests_total{method="post",code="200"} 1027 1395066363000
http_requests_total{method="post",code="400"}    3 1395066363000

# Escaping in label values:
msdos_file_access_time_seconds{path="C:\\DIR\\FILE.TXT",error="Cannot find file:\n\"FILE.TXT\""} 1.458255915e9

# Minimalistic line:
metric_without_timestamp_and_labels 12.47

# A weird metric from before the epoch:
something_weird{problem="division by zero"} +Inf -3982045

# A histogram, which has a pretty complex representation in the text format:
# HELP http_request_duration_seconds A histogram of the request duration.
# TYPE http_request_duration_seconds histogram
http_request_duration_seconds_bucket{le="0.05"} 24054
http_request_duration_seconds_bucket{le="0.1"} 33444
http_request_duration_seconds_bucket{le="0.2"} 100392
http_request_duration_seconds_bucket{le="0.5"} 129389
http_request_duration_seconds_bucket{le="1"} 133988
http_request_duration_seconds_bucket{le="+Inf"} 144320
http_request_duration_seconds_sum 53423
http_request_duration_seconds_count 144320

# Finally a summary, which has a complex representation, too:
# HELP rpc_duration_seconds A summary of the RPC duration in seconds.
# TYPE rpc_duration_seconds summary
rpc_duration_seconds{quantile="0.01"} 3102
rpc_duration_seconds{quantile="0.05"} 3272
rpc_duration_seconds{quantile="0.5"} 4773
rpc_duration_seconds{quantile="0.9"} 9001
rpc_duration_seconds{quantile="0.99"} 76656
rpc_duration_seconds_sum 1.7560473e+07
rpc_duration_seconds_count 2693
"#;

    #[test]
    fn reads_the_formats_own_example() {
        let e = parse(SPEC_EXAMPLE).unwrap();
        let names: Vec<&str> = e.families.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "http_requests_total",
                "msdos_file_access_time_seconds",
                "metric_without_timestamp_and_labels",
                "something_weird",
                "http_request_duration_seconds",
                "rpc_duration_seconds"
            ]
        );
        assert_eq!(
            e.value("http_requests_total", &[("code", "400")]),
            Some(3.0)
        );
        assert_eq!(e.sum("http_requests_total"), 1030.0);
        let msdos = &e.family("msdos_file_access_time_seconds").unwrap().samples[0];
        assert_eq!(msdos.labels["path"], r"C:\DIR\FILE.TXT");
        assert_eq!(msdos.labels["error"], "Cannot find file:\n\"FILE.TXT\"");
        let h = e.family("http_request_duration_seconds").unwrap();
        assert_eq!(h.kind, FamilyKind::Histogram);
        assert_eq!(h.samples.len(), 8);
        assert_eq!(
            e.value("http_request_duration_seconds_bucket", &[("le", "+Inf")]),
            Some(144320.0)
        );
        assert_eq!(
            e.family("rpc_duration_seconds").unwrap().kind,
            FamilyKind::Summary
        );
        assert_eq!(e.value("something_weird", &[]), Some(f64::INFINITY));
    }

    #[test]
    fn refuses_what_the_format_forbids() {
        let bad = [
            ("1bad 1\n", "invalid metric name"),
            ("a{b=\"c\"\n", "not closed"),
            ("a{b=c} 1\n", "not quoted"),
            ("a{__b=\"c\"} 1\n", "invalid label name"),
            ("a{b=\"c\",b=\"d\"} 1\n", "twice"),
            ("a{b=\"\\x\"} 1\n", "bad escape"),
            ("a one\n", "not a number"),
            ("a\n", "no value"),
            ("a 1 2 3\n", "text after"),
            ("a 1 1.5\n", "timestamp"),
            ("a 1\na 2\n", "same series twice"),
            ("a 1\nb 1\na{x=\"y\"} 1\n", "appears again"),
            ("a 1\n# TYPE a counter\n", "after its samples"),
            ("# TYPE a counter\n# TYPE a gauge\n", "second TYPE"),
            ("# HELP a x\n# HELP a y\n", "second HELP"),
            ("# TYPE a frequency\n", "unknown TYPE"),
            (
                "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_count 1\n",
                "cumulative",
            ),
            (
                "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_count 1\n",
                "+Inf",
            ),
            (
                "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_count 1\n",
                "+Inf",
            ),
            ("# TYPE h histogram\nh_bucket 1\n", "numeric le"),
        ];
        for (text, needle) in bad {
            let err = parse(text).expect_err(text).to_string();
            assert!(err.contains(needle), "{text:?}: {err}");
        }
    }
}
