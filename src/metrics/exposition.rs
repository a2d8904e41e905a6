//! The two text formats a Prometheus scraper reads: OpenMetrics 1.0
//! (`application/openmetrics-text`) and the Prometheus text format 0.0.4
//! (`text/plain; version=0.0.4`), written from one description of the
//! families, and the `Accept` negotiation between them.
//!
//! Where the formats differ: an OpenMetrics counter family is named without
//! `_total` (its samples carry it), an `info` family exists, and the text ends
//! with `# EOF`; the 0.0.4 format names the counter family with `_total`, has
//! no `info` type (a gauge of 1 instead) and no end marker. Histogram buckets
//! are cumulative and end in `le="+Inf"`, equal to `_count`, in both.
//!
//! Imports nothing of the crate: the metrics module says what to write.

use std::fmt::Write;

/// An exposition format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    OpenMetrics,
    /// The Prometheus text format 0.0.4.
    Text,
}

impl Format {
    /// The `Content-Type` of a scrape in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::Text => "text/plain; version=0.0.4; charset=utf-8",
        }
    }

    /// The format a scraper's `Accept` header asks for: OpenMetrics when it
    /// ranks `application/openmetrics-text` above `text/plain` (Prometheus 2 and
    /// 3 do), else the 0.0.4 text format, which is also the answer to no
    /// `Accept`, `*/*` or anything unreadable (as Prometheus's Go client does).
    pub fn negotiate(accept: Option<&[u8]>) -> Format {
        let Some(accept) = accept.and_then(|a| std::str::from_utf8(a).ok()) else {
            return Format::Text;
        };
        let (mut om, mut text) = (0.0_f32, 0.0_f32);
        // Bounded work: a hostile header gets at most 32 media ranges read.
        for range in accept.split(',').take(32) {
            let mut params = range.split(';');
            let media = params.next().unwrap_or("").trim();
            let mut q = 1.0_f32;
            for p in params {
                if let Some(v) = p.trim().strip_prefix("q=") {
                    q = v.trim().parse().unwrap_or(0.0);
                }
            }
            if media.eq_ignore_ascii_case("application/openmetrics-text") {
                om = om.max(q);
            } else if media.eq_ignore_ascii_case("text/plain") {
                text = text.max(q);
            }
        }
        if om > 0.0 && om >= text {
            Format::OpenMetrics
        } else {
            Format::Text
        }
    }
}

/// The type of a metric family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
    /// Constant labels about the process (OpenMetrics `info`; a gauge of 1 in 0.0.4).
    Info,
}

/// A histogram sample set: cumulative `(upper bound, count)` pairs ending in
/// `f64::INFINITY`, the count (equal to the last bucket) and the sum.
#[derive(Debug, Clone, Copy)]
pub struct Histogram<'a> {
    pub buckets: &'a [(f64, u64)],
    pub count: u64,
    pub sum: f64,
}

/// Writes one scrape.
#[derive(Debug)]
pub struct Writer {
    format: Format,
    out: String,
}

impl Writer {
    pub fn new(format: Format) -> Self {
        Writer {
            format,
            out: String::with_capacity(16 * 1024),
        }
    }

    /// Starts the family `name` (without `_total` for a counter, without
    /// `_info` for an info). Every family is written once, its samples together.
    pub fn family<'w>(&'w mut self, name: &'w str, kind: Kind, help: &str) -> Family<'w> {
        let (shown, ty) = match (self.format, kind) {
            (Format::OpenMetrics, Kind::Counter) => (Name(name, ""), "counter"),
            (Format::Text, Kind::Counter) => (Name(name, "_total"), "counter"),
            (_, Kind::Gauge) => (Name(name, ""), "gauge"),
            (_, Kind::Histogram) => (Name(name, ""), "histogram"),
            (Format::OpenMetrics, Kind::Info) => (Name(name, ""), "info"),
            (Format::Text, Kind::Info) => (Name(name, "_info"), "gauge"),
        };
        let _ = write!(self.out, "# HELP {shown} ");
        escape_help(&mut self.out, help);
        let _ = write!(self.out, "\n# TYPE {shown} {ty}\n");
        Family {
            w: self,
            name,
            kind,
        }
    }

    /// The finished scrape.
    pub fn finish(mut self) -> String {
        if self.format == Format::OpenMetrics {
            self.out.push_str("# EOF\n");
        }
        self.out
    }
}

/// A family's name and the suffix its samples carry.
struct Name<'a>(&'a str, &'static str);

impl std::fmt::Display for Name<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}{}", self.0, self.1)
    }
}

/// One family being written.
#[derive(Debug)]
pub struct Family<'w> {
    w: &'w mut Writer,
    name: &'w str,
    kind: Kind,
}

impl Family<'_> {
    /// A counter sample (the family must be a counter).
    pub fn counter(&mut self, labels: &[(&str, &str)], value: u64) {
        debug_assert_eq!(self.kind, Kind::Counter);
        self.sample("_total", labels, None, Value::Int(value));
    }

    /// A counter sample that is not a whole number (CPU seconds).
    pub fn counter_f64(&mut self, labels: &[(&str, &str)], value: f64) {
        debug_assert_eq!(self.kind, Kind::Counter);
        self.sample("_total", labels, None, Value::Float(value));
    }

    /// A gauge sample (the family must be a gauge). Whole values are written
    /// as integers (`2`, not `2.0`), as people read them.
    pub fn gauge(&mut self, labels: &[(&str, &str)], value: f64) {
        debug_assert_eq!(self.kind, Kind::Gauge);
        let v = if value.fract() == 0.0 && (0.0..1e15).contains(&value) {
            Value::Int(value as u64)
        } else {
            Value::Float(value)
        };
        self.sample("", labels, None, v);
    }

    /// The one sample of an info family.
    pub fn info(&mut self, labels: &[(&str, &str)]) {
        debug_assert_eq!(self.kind, Kind::Info);
        self.sample("_info", labels, None, Value::Int(1));
    }

    /// A histogram's samples: buckets, count, sum.
    pub fn histogram(&mut self, labels: &[(&str, &str)], h: Histogram<'_>) {
        debug_assert_eq!(self.kind, Kind::Histogram);
        for (le, n) in h.buckets {
            self.sample("_bucket", labels, Some(*le), Value::Int(*n));
        }
        self.sample("_count", labels, None, Value::Int(h.count));
        self.sample("_sum", labels, None, Value::Float(h.sum));
    }

    fn sample(&mut self, suffix: &str, labels: &[(&str, &str)], le: Option<f64>, v: Value) {
        let out = &mut self.w.out;
        out.push_str(self.name);
        out.push_str(suffix);
        if !labels.is_empty() || le.is_some() {
            out.push('{');
            for (i, (k, val)) in labels.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(k);
                out.push_str("=\"");
                escape_label(out, val);
                out.push('"');
            }
            if let Some(le) = le {
                if !labels.is_empty() {
                    out.push(',');
                }
                out.push_str("le=\"");
                write_float(out, le);
                out.push('"');
            }
            out.push('}');
        }
        out.push(' ');
        match v {
            Value::Int(n) => {
                let _ = write!(out, "{n}");
            }
            Value::Float(f) => write_float(out, f),
        }
        out.push('\n');
    }
}

enum Value {
    Int(u64),
    Float(f64),
}

/// A float as both formats read it: `+Inf`, `-Inf`, `NaN`, else Rust's
/// shortest round-trip form with a `.0` on whole numbers (`1.0`, `0.005`), the
/// canonical form OpenMetrics asks of `le` values.
fn write_float(out: &mut String, f: f64) {
    if f.is_nan() {
        out.push_str("NaN");
    } else if f == f64::INFINITY {
        out.push_str("+Inf");
    } else if f == f64::NEG_INFINITY {
        out.push_str("-Inf");
    } else {
        let _ = write!(out, "{f:?}");
    }
}

/// Label values escape `\`, `"` and newlines.
fn escape_label(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// Help text escapes `\` and newlines (OpenMetrics also `"`, harmless in 0.0.4).
fn escape_help(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(format: Format) -> String {
        let mut w = Writer::new(format);
        w.family("x_requests", Kind::Counter, "Requests")
            .counter(&[("slot", "blue")], 3);
        w.family("x_build", Kind::Info, "Build")
            .info(&[("version", "1")]);
        let buckets = [(0.5, 1), (1.0, 1), (f64::INFINITY, 2)];
        w.family("x_seconds", Kind::Histogram, "Time").histogram(
            &[("slot", "a\"b")],
            Histogram {
                buckets: &buckets,
                count: 2,
                sum: 2.5,
            },
        );
        w.finish()
    }

    #[test]
    fn openmetrics_names_counters_without_total_and_ends_with_eof() {
        let t = sample(Format::OpenMetrics);
        assert!(
            t.contains("# TYPE x_requests counter\nx_requests_total{slot=\"blue\"} 3\n"),
            "{t}"
        );
        assert!(
            t.contains("# TYPE x_build info\nx_build_info{version=\"1\"} 1\n"),
            "{t}"
        );
        assert!(
            t.contains("x_seconds_bucket{slot=\"a\\\"b\",le=\"1.0\"} 1\n"),
            "{t}"
        );
        assert!(
            t.contains("x_seconds_bucket{slot=\"a\\\"b\",le=\"+Inf\"} 2\n"),
            "{t}"
        );
        assert!(t.ends_with("# EOF\n"), "{t}");
    }

    #[test]
    fn text_format_names_counters_with_total_and_has_no_eof() {
        let t = sample(Format::Text);
        assert!(
            t.contains("# TYPE x_requests_total counter\nx_requests_total{slot=\"blue\"} 3\n"),
            "{t}"
        );
        assert!(
            t.contains("# TYPE x_build_info gauge\nx_build_info{version=\"1\"} 1\n"),
            "{t}"
        );
        assert!(!t.contains("# EOF"), "{t}");
    }

    #[test]
    fn accept_negotiation_follows_the_scrapers_preference() {
        let n = |a: &str| Format::negotiate(Some(a.as_bytes()));
        // Prometheus 2.x.
        assert_eq!(
            n("application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"),
            Format::OpenMetrics
        );
        // A scraper that prefers the text format, an old one, curl, none.
        assert_eq!(
            n("text/plain;version=0.0.4;q=1,application/openmetrics-text;q=0.5"),
            Format::Text
        );
        assert_eq!(n("text/plain;version=0.0.4"), Format::Text);
        assert_eq!(n("*/*"), Format::Text);
        assert_eq!(Format::negotiate(None), Format::Text);
        assert_eq!(n("application/openmetrics-text;q=0"), Format::Text);
    }
}
