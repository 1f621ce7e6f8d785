//! The article's time chart, drawn from a real run: one row per client, a
//! diamond when it arrived, a thin black line while it waited for its `*`,
//! and a coloured bar while the server was serving it.
//!
//! Drawn with plotters' SVG backend. The x axis is seconds since the run
//! started, mapped linearly, so a bar's ends sit at the connection's
//! [`admitted`](super::Connection::admitted) and
//! [`done`](super::Connection::done) times in the report's JSON.

use std::io;
use std::ops::Range;
use std::path::Path;

use plotters::coord::Shift;
use plotters::coord::ranged1d::{KeyPointHint, NoDefaultFormatting, Ranged, ValueFormatter};
use plotters::prelude::*;

use super::report::Report;

/// Fill of the diamonds that mark arrivals.
pub const ARRIVAL_COLOR: RGBColor = RGBColor(0x44, 0x44, 0x44);
/// Fill of the bars of clients that were served and got the right reply.
pub const SERVED_COLOR: RGBColor = RGBColor(0x2E, 0x86, 0xC1);
/// Fill of the bars of clients that failed.
pub const FAILED_COLOR: RGBColor = RGBColor(0xD6, 0x27, 0x28);

/// Height of a bar, as a share of its row.
const BAR_HEIGHT: f64 = 0.6;
/// Half the diagonal of an arrival diamond, in pixels.
const DIAMOND: i32 = 7;
const WIDTH: u32 = 900;
/// Height of the strip under the chart that holds the legend.
const LEGEND_PX: u32 = 36;
/// The line of a client waiting for its `*`.
const WAIT_STYLE: RGBColor = BLACK;

/// Draws the chart of `report` as an SVG document.
pub fn render(report: &Report) -> io::Result<String> {
    let mut svg = String::new();
    let rows = report.connections.len();
    // Rows get thinner as they get many, so the picture stays on a screen.
    let row_px = if rows <= 12 {
        48
    } else {
        24.max(600 / rows as u32)
    };
    let height = 170 + LEGEND_PX + row_px * rows.max(1) as u32;
    draw(report, SVGBackend::with_string(&mut svg, (WIDTH, height)))
        .map_err(|e| io::Error::other(format!("cannot draw the chart: {e}")))?;
    Ok(svg)
}

/// Writes [`render`]'s SVG to `path`.
pub fn write(report: &Report, path: &Path) -> io::Result<()> {
    std::fs::write(path, render(report)?)
}

/// The chart's title: the server, how many clients, how long it took.
pub fn title(report: &Report) -> String {
    let n = report.connections.len();
    format!(
        "{}: {n} client{}, {:.2} s",
        report.server,
        if n == 1 { "" } else { "s" },
        report.elapsed
    )
}

type DrawResult = Result<(), Box<dyn std::error::Error>>;

fn draw(report: &Report, backend: SVGBackend<'_>) -> DrawResult {
    let root = backend.into_drawing_area();
    root.fill(&WHITE)?;
    let (_, height) = root.dim_in_pixel();
    // The legend gets a strip of its own under the axis: inside the plot
    // it would hide some client's bar, whatever corner it took.
    let (plot, legend) = root.split_vertically(height - LEGEND_PX);

    let conns = &report.connections;
    let names: Vec<String> = conns.iter().map(|c| c.name.clone()).collect();
    let end = conns
        .iter()
        .map(|c| c.done)
        .fold(report.elapsed, f64::max)
        .max(0.1);
    let label_width = names.iter().map(|n| n.len() as u32).max().unwrap_or(4) * 9 + 20;

    let mut chart = ChartBuilder::on(&plot)
        .caption(title(report), ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(label_width)
        .build_cartesian_2d(0.0..end * 1.04, Rows { names })?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(conns.len().max(1))
        .max_light_lines(1)
        .x_desc("seconds since the clients started")
        .x_label_formatter(&seconds_label)
        .light_line_style(RGBColor(0xF2, 0xF2, 0xF2))
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 15))
        .draw()?;

    let row = |i: usize| i as f64;
    let half = BAR_HEIGHT / 2.0;
    chart.draw_series(conns.iter().enumerate().map(|(i, c)| {
        let until = c.admitted.unwrap_or(c.done);
        PathElement::new(
            vec![(c.arrival, row(i)), (until, row(i))],
            WAIT_STYLE.stroke_width(2),
        )
    }))?;
    chart.draw_series(conns.iter().enumerate().filter_map(|(i, c)| {
        let from = c.admitted?;
        let color = if c.ok() { SERVED_COLOR } else { FAILED_COLOR };
        Some(Rectangle::new(
            [(from, row(i) - half), (c.done, row(i) + half)],
            color.filled(),
        ))
    }))?;
    chart.draw_series(
        conns
            .iter()
            .enumerate()
            .map(|(i, c)| EmptyElement::at((c.arrival, row(i))) + diamond()),
    )?;

    draw_legend(&legend, conns.iter().any(|c| !c.ok()))?;
    root.present()?;
    Ok(())
}

/// One line of keys, left to right, centred in its strip.
fn draw_legend<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, failures: bool) -> DrawResult
where
    DB::ErrorType: 'static,
{
    let (width, height) = area.dim_in_pixel();
    let y = height as i32 / 2 - 6;
    let font = ("sans-serif", 14).into_font();
    let text = |s: &str| s.len() as i32 * 7;
    let mut keys: Vec<(&str, u8)> = vec![
        ("arrival (connect)", 0),
        ("waiting for its *", 1),
        ("being served", 2),
    ];
    if failures {
        keys.push(("being served, then failed", 3));
    }
    let total: i32 = keys.iter().map(|(label, _)| 30 + text(label) + 30).sum();
    let mut x = (width as i32 - total).max(0) / 2;
    for (label, key) in keys {
        let swatch = (x, y);
        match key {
            0 => area.draw(&(EmptyElement::at((x + 10, y)) + diamond()))?,
            1 => area.draw(&PathElement::new(
                vec![(x, y), (x + 22, y)],
                WAIT_STYLE.stroke_width(2),
            ))?,
            _ => {
                let color = if key == 2 { SERVED_COLOR } else { FAILED_COLOR };
                area.draw(&Rectangle::new(
                    [(swatch.0, y - 5), (x + 22, y + 5)],
                    color.filled(),
                ))?
            }
        }
        area.draw(&Text::new(label.to_string(), (x + 30, y - 7), font.clone()))?;
        x += 30 + text(label) + 30;
    }
    Ok(())
}

/// A tick label: as many decimals as the tick needs (`0.05`, `0.5`, `2`),
/// so that short runs and long runs both get distinct labels. Rounding to
/// microseconds hides the float noise of the tick arithmetic.
fn seconds_label(t: &f64) -> String {
    format!("{}", (t * 1e6).round() / 1e6)
}

fn diamond() -> Polygon<(i32, i32)> {
    let d = DIAMOND;
    Polygon::new(
        vec![(0, -d), (d, 0), (0, d), (-d, 0)],
        ARRIVAL_COLOR.filled(),
    )
}

/// The y axis: one row per connection, the first on top, labelled with
/// the connections' names. Values are row numbers; fractions place bars
/// inside a row.
struct Rows {
    names: Vec<String>,
}

impl Ranged for Rows {
    type FormatOption = NoDefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        let (top, bottom) = (limit.0.min(limit.1), limit.0.max(limit.1));
        let n = self.names.len().max(1) as f64;
        let share = (value + 0.5) / n;
        top + (share * f64::from(bottom - top)).round() as i32
    }

    fn key_points<Hint: KeyPointHint>(&self, _hint: Hint) -> Vec<f64> {
        // Every row is labelled, however many: a chart of a run is read
        // row by row.
        (0..self.names.len()).map(|i| i as f64).collect()
    }

    fn range(&self) -> Range<f64> {
        -0.5..self.names.len() as f64 - 0.5
    }
}

impl ValueFormatter<f64> for Rows {
    fn format_ext(&self, value: &f64) -> String {
        let i = value.round();
        if i >= 0.0 {
            if let Some(name) = self.names.get(i as usize) {
                return name.clone();
            }
        }
        String::new()
    }
}
