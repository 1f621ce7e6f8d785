//! Latency as `concur bench` keeps it: percentiles for the table, the
//! whole spectrum for `results.json`, HdrHistogram's `.hgrm` text for
//! re-plotting, and the histograms themselves, merged over repeats.

use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latency percentiles, in microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Percentiles {
    /// Requests the figures are over.
    pub count: u64,
    /// The median.
    pub p50: u64,
    /// The 90th percentile.
    pub p90: u64,
    /// The 99th percentile.
    pub p99: u64,
    /// The 99.9th percentile.
    pub p999: u64,
    /// The slowest.
    pub max: u64,
}

impl Percentiles {
    /// Reads the percentiles out of a histogram of microseconds; `None`
    /// when it is empty.
    pub fn of(h: &Histogram<u64>) -> Option<Self> {
        (!h.is_empty()).then(|| Percentiles {
            count: h.len(),
            p50: h.value_at_quantile(0.5),
            p90: h.value_at_quantile(0.9),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        })
    }

    /// The five figures with their names, for tables and plots.
    pub fn named(&self) -> [(&'static str, u64); 5] {
        [
            ("p50", self.p50),
            ("p90", self.p90),
            ("p99", self.p99),
            ("p99.9", self.p999),
            ("max", self.max),
        ]
    }
}

/// A histogram's percentile spectrum: `(percentile, µs)` pairs, the
/// percentile steps halving the distance to 100% five times per halving,
/// as HdrHistogram's percentile distribution (`.hgrm`) lists them; the
/// last pair is the maximum.
pub fn spectrum(h: &Histogram<u64>) -> Vec<(f64, u64)> {
    if h.is_empty() {
        return Vec::new();
    }
    let mut out: Vec<(f64, u64)> = h
        .iter_quantiles(5)
        .map(|v| {
            (
                100.0 * v.quantile_iterated_to(),
                h.highest_equivalent(v.value_iterated_to()),
            )
        })
        .collect();
    out.dedup();
    out
}

/// A histogram of microseconds as HdrHistogram's percentile distribution
/// text (`.hgrm`), values in milliseconds, which HdrHistogram's plotter
/// and wrk2's tooling read.
pub fn hgrm(h: &Histogram<u64>) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    let mut total = 0;
    for v in h.iter_quantiles(5) {
        total += v.count_since_last_iteration();
        let q = v.quantile_iterated_to();
        let inverse = if q < 1.0 {
            format!("{:>14.2}", 1.0 / (1.0 - q))
        } else {
            format!("{:>14}", "inf")
        };
        let _ = writeln!(
            out,
            "{:>12.3} {:>14.12} {:>10} {inverse}",
            h.highest_equivalent(v.value_iterated_to()) as f64 / 1000.0,
            q,
            total
        );
    }
    let _ = writeln!(
        out,
        "#[Mean    = {:>12.3}, StdDeviation   = {:>12.3}]",
        h.mean() / 1000.0,
        h.stdev() / 1000.0
    );
    let _ = writeln!(
        out,
        "#[Max     = {:>12.3}, Total count    = {:>12}]",
        h.max() as f64 / 1000.0,
        h.len()
    );
    let _ = writeln!(
        out,
        "#[Buckets = {:>12}, SubBuckets     = {:>12}]",
        h.buckets(),
        h.distinct_values()
    );
    out
}

/// The latency histograms of a run or a row, kept for merging and for the
/// `.hgrm` files; not in the JSON (the spectra are).
#[derive(Clone, Debug, Default)]
pub struct Histograms {
    /// Request latency (`rate`: from when each was due).
    pub latency: Option<Histogram<u64>>,
    /// `rate`: from when each was really sent.
    pub uncorrected: Option<Histogram<u64>>,
    /// `cpu`: the probe's.
    pub probe: Option<Histogram<u64>>,
}

impl Histograms {
    pub(crate) fn merge(all: &[&Histograms]) -> Histograms {
        let merge = |pick: fn(&Histograms) -> Option<&Histogram<u64>>| {
            let mut some = all.iter().filter_map(|h| pick(h)).peekable();
            some.peek()?;
            let mut total = new_histogram();
            for h in some {
                // Same bounds everywhere (new_histogram), so adding cannot
                // fail.
                let _ = total.add(h);
            }
            Some(total)
        };
        Histograms {
            latency: merge(|h| h.latency.as_ref()),
            uncorrected: merge(|h| h.uncorrected.as_ref()),
            probe: merge(|h| h.probe.as_ref()),
        }
    }
}

/// An empty latency histogram: one microsecond to an hour, three
/// significant digits; an hour is far beyond any timeout, so nothing
/// saturates.
pub(crate) fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}
