//! Statistics of the samples and the formatting of figures.

use std::time::Duration;

use serde_json::{json, Value};

#[expect(clippy::cast_precision_loss, reason = "byte counts and durations are far below 2^52")]
pub(super) fn f(x: u64) -> f64 {
    x as f64
}

pub(super) fn min(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::INFINITY, f64::min)
}

pub(super) fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let m = s.len() / 2;
    if s.len() % 2 == 1 {
        s[m]
    } else {
        f64::midpoint(s[m - 1], s[m])
    }
}

/// Minimum and median of samples.
#[derive(Clone, Copy, Debug)]
pub(super) struct Stat {
    pub(super) min: f64,
    pub(super) median: f64,
}

impl Stat {
    pub(super) fn of(v: &[f64]) -> Option<Self> {
        (!v.is_empty()).then(|| Self { min: min(v), median: median(v) })
    }

    pub(super) fn ratio(self, base: Self) -> Self {
        Self { min: self.min / base.min, median: self.median / base.median }
    }

    pub(super) fn json(self) -> Value {
        json!({ "min": self.min, "median": self.median })
    }
}

/// Thousands separators for readability.
pub(super) fn thousands(x: f64) -> String {
    if !x.is_finite() {
        return "n/a".into();
    }
    #[expect(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "display of a positive measurement")]
    let n = x.round().max(0.0) as u64;
    let digits = n.to_string();
    let groups: Vec<&str> =
        digits.as_bytes().rchunks(3).rev().map(|g| std::str::from_utf8(g).expect("ASCII digits")).collect();
    groups.join(",")
}

pub(super) fn mib(bytes: f64) -> String {
    if bytes.abs() >= 1024.0 * 1024.0 {
        format!("{:.1} MiB", bytes / 1024.0 / 1024.0)
    } else {
        format!("{:.1} KiB", bytes / 1024.0)
    }
}

/// Milliseconds, with two decimals below 10 ms (the lifecycle targets are
/// a few ms).
pub(super) fn ms(d: f64) -> String {
    if d.abs() < 10.0 {
        format!("{d:.2} ms")
    } else {
        format!("{d:.1} ms")
    }
}

/// Bytes as KiB, whatever the size (per-sandbox figures compare with a
/// target in KiB).
pub(super) fn kib(bytes: f64) -> String {
    format!("{:.1} KiB", bytes / 1024.0)
}

pub(super) fn dur_ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// A ratio as `1.234x`.
pub(super) fn x(r: f64) -> String {
    if r.is_finite() {
        format!("{r:.3}x")
    } else {
        "n/a".into()
    }
}

/// ns as a whole number, or `n/a`.
pub(super) fn opt_ns(v: Option<f64>) -> String {
    v.map_or("n/a".into(), |v| format!("{v:.0}"))
}
