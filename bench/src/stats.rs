//! Numbers: latency histograms (HdrHistogram, microseconds), the series of
//! per-round figures every reported value is the median of, and how numbers
//! are written in the report. A leaf: imports nothing of the crate.

use hdrhistogram::Histogram;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A latency histogram in microseconds, 1 µs to 10 minutes, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("static bounds are valid")
}

/// Records `us` (clamped into the histogram's range).
pub fn record(h: &mut Histogram<u64>, us: u64) {
    h.saturating_record(us.max(1));
}

/// The `q` quantile in milliseconds (`NaN` for an empty histogram).
pub fn quantile_ms(h: &Histogram<u64>, q: f64) -> f64 {
    if h.is_empty() {
        f64::NAN
    } else {
        h.value_at_quantile(q) as f64 / 1000.0
    }
}

/// The figures of one metric over the rounds, in round order (a round that
/// measured nothing holds `NaN`, so that two series pair up by index).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Series(pub Vec<f64>);

/// A series as the JSON file holds it: the median and min–max a reader wants,
/// and every round (`null` where a round measured nothing; JSON has no NaN).
#[derive(Serialize, Deserialize)]
struct SeriesJson {
    #[serde(default)]
    median: Option<f64>,
    #[serde(default)]
    min: Option<f64>,
    #[serde(default)]
    max: Option<f64>,
    rounds: Vec<Option<f64>>,
}

fn finite(v: f64) -> Option<f64> {
    v.is_finite().then_some(v)
}

impl Serialize for Series {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        SeriesJson {
            median: finite(self.median()),
            min: finite(self.min()),
            max: finite(self.max()),
            rounds: self.0.iter().map(|&v| finite(v)).collect(),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Series {
    /// Only `rounds` is read: the summary fields are derived from it.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Series, D::Error> {
        let j = SeriesJson::deserialize(d)?;
        Ok(Series(
            j.rounds
                .into_iter()
                .map(|v| v.unwrap_or(f64::NAN))
                .collect(),
        ))
    }
}

impl Series {
    /// Round by round `a / b` (NaN where either is missing): the spread of a
    /// ratio over the rounds, since each round ran every target once.
    pub fn per_round_ratio(a: &Series, b: &Series) -> Series {
        Series(a.0.iter().zip(&b.0).map(|(x, y)| x / y).collect())
    }

    pub fn push(&mut self, v: f64) {
        self.0.push(v);
    }

    fn sorted(&self) -> Vec<f64> {
        let mut v: Vec<f64> = self.0.iter().copied().filter(|x| x.is_finite()).collect();
        v.sort_by(|a, b| a.total_cmp(b));
        v
    }

    pub fn median(&self) -> f64 {
        let v = self.sorted();
        match v.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => v[n / 2],
            n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        }
    }

    pub fn min(&self) -> f64 {
        self.sorted().first().copied().unwrap_or(f64::NAN)
    }

    pub fn max(&self) -> f64 {
        self.sorted().last().copied().unwrap_or(f64::NAN)
    }

    pub fn is_empty(&self) -> bool {
        self.sorted().is_empty()
    }

    /// `median (min–max)` with `fmt` applied to each.
    pub fn show(&self, fmt: impl Fn(f64) -> String) -> String {
        if self.is_empty() {
            return "—".to_owned();
        }
        if self.0.len() == 1 || self.min() == self.max() {
            return fmt(self.median());
        }
        format!(
            "{} ({}–{})",
            fmt(self.median()),
            fmt(self.min()),
            fmt(self.max())
        )
    }
}

/// Quantile of a plain sample set (`q` in 0..=1), nearest rank.
pub fn quantile(samples: &[f64], q: f64) -> f64 {
    let mut v: Vec<f64> = samples.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

/// `12,345` for counts and rates.
pub fn int(v: f64) -> String {
    if !v.is_finite() {
        return "—".to_owned();
    }
    let n = v.round() as i64;
    let s = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

/// Milliseconds with a precision that suits their size.
pub fn ms(v: f64) -> String {
    if !v.is_finite() {
        "—".to_owned()
    } else if v < 1.0 {
        format!("{v:.3}")
    } else if v < 10.0 {
        format!("{v:.2}")
    } else if v < 1000.0 {
        format!("{v:.1}")
    } else {
        int(v)
    }
}

/// A ratio like `1.07×`.
pub fn ratio(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.2}×")
    } else {
        "—".to_owned()
    }
}

/// One decimal.
pub fn one(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.1}")
    } else {
        "—".to_owned()
    }
}

/// Two decimals.
pub fn two(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.2}")
    } else {
        "—".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_round_ratios_pair_rounds_by_index() {
        let a = Series(vec![40.0, 42.0, f64::NAN]);
        let b = Series(vec![48.0, 50.0, 46.0]);
        let r = Series::per_round_ratio(&a, &b);
        assert_eq!(r.0.len(), 3);
        assert!((r.min() - 40.0 / 48.0).abs() < 1e-12);
        assert!((r.max() - 42.0 / 50.0).abs() < 1e-12);
        // A missing round does not count.
        assert!(r.0[2].is_nan());
    }

    #[test]
    fn show_gives_median_and_range() {
        assert_eq!(Series(vec![3.0, 1.0, 2.0]).show(two), "2.00 (1.00–3.00)");
        assert_eq!(Series(vec![2.0]).show(two), "2.00");
        assert_eq!(Series(vec![f64::NAN]).show(two), "—");
    }
}
