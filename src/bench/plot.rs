//! The pictures of a `concur bench` run, as SVG (plotters):
//!
//! - [`throughput`]: the headline figure against the connection count, a
//!   line per server (a sweep makes it a curve; one count, a column of
//!   points);
//! - [`latency`]: the latency percentiles (p50 to max) of each server at
//!   one count, on a log scale, since the tail is where models differ.

use std::path::{Path, PathBuf};

use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

use super::report::{Results, Row};
use super::scenario::Scenario;

const WIDTH: u32 = 900;
const HEIGHT: u32 = 540;

type DrawResult = Result<(), Box<dyn std::error::Error>>;

/// The same colour for a server in every picture.
fn color(server: &str) -> RGBColor {
    match server {
        "echo" => RGBColor(0x77, 0x77, 0x77),
        "floor" => RGBColor(0x00, 0x00, 0x00),
        "sequential" => RGBColor(0x8C, 0x56, 0x4B),
        "thread" => RGBColor(0xD6, 0x27, 0x28),
        "pool" => RGBColor(0xFF, 0x7F, 0x0E),
        "event" => RGBColor(0x2C, 0xA0, 0x2C),
        "async" => RGBColor(0x1F, 0x77, 0xB4),
        _ => RGBColor(0x94, 0x67, 0xBD),
    }
}

fn servers(rows: &[Row]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for r in rows {
        if !names.contains(&r.server) {
            names.push(r.server.clone());
        }
    }
    names
}

/// Writes every picture of `results` into `dir`; returns their paths.
pub fn write_all(results: &Results, dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    let name = results.scenario.name();
    let path = dir.join(format!("{name}-throughput.svg"));
    std::fs::write(&path, throughput(results)?)?;
    written.push(path);
    for &count in &results.counts {
        let Some(svg) = latency(results, count)? else {
            continue;
        };
        let path = if results.counts.len() == 1 {
            dir.join(format!("{name}-latency.svg"))
        } else {
            dir.join(format!("{name}-latency-{count}.svg"))
        };
        std::fs::write(&path, svg)?;
        written.push(path);
    }
    Ok(written)
}

fn to_io(e: Box<dyn std::error::Error>) -> std::io::Error {
    std::io::Error::other(format!("cannot draw the plot: {e}"))
}

/// Throughput (the scenario's headline figure) against the count.
pub fn throughput(results: &Results) -> std::io::Result<String> {
    let mut svg = String::new();
    draw_throughput(results, SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT))).map_err(to_io)?;
    Ok(svg)
}

fn draw_throughput(results: &Results, backend: SVGBackend<'_>) -> DrawResult {
    let root = backend.into_drawing_area();
    root.fill(&WHITE)?;
    let scenario = results.scenario;
    // The counts sit evenly spaced, in order, as on a log axis for a
    // sweep of 1, 8, 64, 512; labelled exactly by what was measured.
    let counts = results.counts.clone();
    let slot = |count: usize| counts.iter().position(|&c| c == count).unwrap_or(0) as f64;
    let ymax = results
        .rows
        .iter()
        .map(|r| r.throughput)
        .fold(0.0, f64::max)
        .max(1e-9)
        * 1.15;
    let title = format!(
        "{scenario}: {} by {} ({} cores)",
        scenario.unit(),
        scenario.count_name(),
        results.cores
    );
    let mut chart =
        frame(&root, &title).build_cartesian_2d(-0.5..counts.len() as f64 - 0.5, 0.0..ymax)?;
    chart
        .configure_mesh()
        .x_desc(scenario.count_name())
        .y_desc(scenario.unit())
        .x_labels(counts.len() * 2 + 1)
        .x_label_formatter(&|x| {
            let i = x.round();
            match counts.get(i as usize) {
                Some(c) if (x - i).abs() < 1e-6 && i >= 0.0 => c.to_string(),
                _ => String::new(),
            }
        })
        .y_label_formatter(&|y| {
            if ymax >= 100.0 {
                format!("{y:.0}")
            } else {
                format!("{y:.1}")
            }
        })
        .light_line_style(RGBColor(0xF2, 0xF2, 0xF2))
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 15))
        .draw()?;
    let lines = servers(&results.rows).into_iter().map(|server| {
        let points = results
            .rows
            .iter()
            .filter(|r| r.server == server)
            .map(|r| (slot(r.count), r.throughput))
            .collect();
        (server, points)
    });
    draw_lines(&mut chart, lines, SeriesLabelPosition::UpperRight)?;
    root.present()?;
    Ok(())
}

/// The frame both pictures share: the title, margins and label areas.
fn frame<'a, 'b>(
    root: &'a DrawingArea<SVGBackend<'b>, plotters::coord::Shift>,
    title: &str,
) -> ChartBuilder<'a, 'b, SVGBackend<'b>> {
    let mut builder = ChartBuilder::on(root);
    builder
        .caption(title, ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(80);
    builder
}

/// One line with dots per server, in its colour, and the legend.
fn draw_lines<'a, Y: Ranged<ValueType = f64>>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, Cartesian2d<RangedCoordf64, Y>>,
    lines: impl Iterator<Item = (String, Vec<(f64, f64)>)>,
    legend_at: SeriesLabelPosition,
) -> DrawResult {
    for (server, points) in lines {
        let c = color(&server);
        chart
            .draw_series(LineSeries::new(points.clone(), c.stroke_width(2)))?
            .label(server)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
        chart.draw_series(points.into_iter().map(|p| Circle::new(p, 4, c.filled())))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(legend_at)
        .label_font(("sans-serif", 14))
        .draw()?;
    Ok(())
}

/// The latency percentiles of each server at `count` (for `cpu`, the
/// probe's); `None` when the scenario has none.
pub fn latency(results: &Results, count: usize) -> std::io::Result<Option<String>> {
    let pick = |r: &Row| match results.scenario {
        Scenario::Cpu => r.probe_us,
        Scenario::Idle => r.newcomer_us,
        _ => r.latency_us,
    };
    let rows: Vec<&Row> = results
        .rows
        .iter()
        .filter(|r| r.count == count && pick(r).is_some())
        .collect();
    if rows.is_empty() || results.scenario == Scenario::Stream {
        return Ok(None);
    }
    let series: Vec<(String, [u64; 5])> = rows
        .iter()
        .filter_map(|r| Some((r.server.clone(), pick(r)?.named().map(|(_, v)| v))))
        .collect();
    let mut svg = String::new();
    draw_latency(
        results,
        count,
        &series,
        SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)),
    )
    .map_err(to_io)?;
    Ok(Some(svg))
}

const PERCENTILES: [&str; 5] = ["p50", "p90", "p99", "p99.9", "max"];

fn draw_latency(
    results: &Results,
    count: usize,
    series: &[(String, [u64; 5])],
    backend: SVGBackend<'_>,
) -> DrawResult {
    let root = backend.into_drawing_area();
    root.fill(&WHITE)?;
    let scenario = results.scenario;
    let all = series.iter().flat_map(|(_, v)| v.iter().copied());
    let (lo, hi) = all.fold((u64::MAX, 1), |(lo, hi), v| (lo.min(v.max(1)), hi.max(v)));
    let what = match scenario {
        Scenario::Cpu => "probe latency",
        Scenario::Idle => "newcomer latency",
        Scenario::Rate => "latency from intended send",
        _ => "latency",
    };
    let title = format!(
        "{scenario}: {what}, {count} {} ({} cores)",
        scenario.count_name(),
        results.cores
    );
    let mut chart = frame(&root, &title).build_cartesian_2d(
        -0.5f64..4.5f64,
        (lo as f64 / 1.5..hi as f64 * 1.5).log_scale(),
    )?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("µs (log scale)")
        .x_labels(11)
        .x_label_formatter(&|x| {
            let i = x.round();
            if (x - i).abs() < 1e-6 && (0.0..5.0).contains(&i) {
                PERCENTILES[i as usize].to_string()
            } else {
                String::new()
            }
        })
        .y_label_formatter(&|y| format!("{y:.0}"))
        .light_line_style(RGBColor(0xF2, 0xF2, 0xF2))
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 15))
        .draw()?;
    let lines = series.iter().map(|(server, values)| {
        let points = values
            .iter()
            .enumerate()
            .map(|(i, &v)| (i as f64, v.max(1) as f64))
            .collect();
        (server.clone(), points)
    });
    draw_lines(&mut chart, lines, SeriesLabelPosition::LowerRight)?;
    root.present()?;
    Ok(())
}
