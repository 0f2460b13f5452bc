//! `--plot FILE.png`: throughput and p99 per second, one line per target.
//!
//! Text is drawn with an embedded DejaVu Sans (plotters' `ab_glyph` renderer), so the
//! plot needs no system fonts or fontconfig.

use std::path::Path;
use std::sync::Once;

use anyhow::{Result, anyhow};
use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::runner::TargetReport;

const FONT: &str = "sans-serif";

/// Distinct, print-friendly line colours (the Tableau 10 palette); then plotters' palette.
const COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(23, 190, 207),
    RGBColor(127, 127, 127),
];

fn color(i: usize) -> RGBAColor {
    COLORS
        .get(i)
        .map_or_else(|| Palette99::pick(i).to_rgba(), |c| c.to_rgba())
}

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The embedded font is a valid TTF; if it were not, text would be missing, not wrong.
        let _ = plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular());
    });
}

/// The seconds worth plotting: whole seconds only (the last, partial second of a run
/// would show as a false drop in throughput), unless the run was shorter than a second.
fn full_seconds(r: &TargetReport) -> Vec<&crate::stats::Point> {
    let whole = r.summary.seconds.floor() as u64;
    let full: Vec<_> = r.series.iter().filter(|p| p.second < whole).collect();
    if full.is_empty() {
        r.series.iter().collect()
    } else {
        full
    }
}

/// Draws the per-second throughput (top) and p99 (bottom) of every report into a PNG.
pub fn draw(path: &Path, reports: &[TargetReport]) -> Result<()> {
    register_font();
    let err = |e: &dyn std::fmt::Display| anyhow!("drawing {}: {e}", path.display());
    let root = BitMapBackend::new(path, (1000, 760)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let (top, bottom) = root.split_vertically(380);

    let series: Vec<(&str, Vec<&crate::stats::Point>)> = reports
        .iter()
        .map(|r| (r.name.as_str(), full_seconds(r)))
        .collect();
    let max_x = series
        .iter()
        .flat_map(|(_, s)| s.iter().map(|p| p.second + 1))
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let max_tput = series
        .iter()
        .flat_map(|(_, s)| s.iter().map(|p| p.responses as f64))
        .fold(1.0, f64::max);
    let max_p99 = series
        .iter()
        .flat_map(|(_, s)| s.iter().filter_map(|p| p.p99_ms))
        .fold(0.1, f64::max);

    let panels = [
        (
            &top,
            "Throughput per second",
            "responses / s",
            max_tput * 1.1,
        ),
        (&bottom, "p99 latency per second", "p99 ms", max_p99 * 1.1),
    ];
    for (panel, (area, title, y_desc, y_max)) in panels.into_iter().enumerate() {
        let mut chart = ChartBuilder::on(area)
            .caption(title, (FONT, 20))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(70)
            .build_cartesian_2d(0f64..max_x, 0f64..y_max)
            .map_err(|e| err(&e))?;
        chart
            .configure_mesh()
            .x_desc("seconds into the measured run")
            .y_desc(y_desc)
            .y_label_formatter(&|v| {
                if panel == 0 {
                    format!("{v:.0}")
                } else {
                    format!("{v:.1}")
                }
            })
            .label_style((FONT, 13))
            // No minor grid: it adds little and triples the PNG's size.
            .light_line_style(WHITE)
            .draw()
            .map_err(|e| err(&e))?;
        for (i, (name, points)) in series.iter().enumerate() {
            let color = color(i);
            let line: Vec<(f64, f64)> = points
                .iter()
                .filter_map(|p| {
                    let y = if panel == 0 {
                        Some(p.responses as f64)
                    } else {
                        p.p99_ms
                    };
                    y.map(|y| (p.second as f64 + 0.5, y))
                })
                .collect();
            chart
                .draw_series(LineSeries::new(line, color.stroke_width(2)))
                .map_err(|e| err(&e))?
                .label(*name)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .label_font((FONT, 13))
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(|e| err(&e))?;
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}
