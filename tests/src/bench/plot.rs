//! The latency curve as a PNG (plotters' bitmap backend): append p50/p99 and acceptance →
//! projected p50/p99 in milliseconds (log scale) against the offered load in events/s. Text is
//! drawn with a font embedded in the binary (`tests/assets/fonts`), so it needs no system fonts.

use std::path::Path;
use std::sync::OnceLock;

use anyhow::{bail, Context};
use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

use super::curve::CurvePoint;
use super::line::round;

/// DejaVu Sans cut down to ASCII (licence: `tests/assets/fonts/LICENSE-DejaVu.txt`).
static FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans-ascii.ttf");
/// The family every text style here names.
const FAMILY: &str = "sans-serif";
/// Image size in pixels.
const SIZE: (u32, u32) = (1100, 620);
/// Width of the legend, right of the chart (so it never hides a point).
const LEGEND_WIDTH: u32 = 260;

/// One line of the chart: its legend, colour, whether it is dashed, and its value.
struct Series {
    label: &'static str,
    color: RGBColor,
    dashed: bool,
    value: fn(&CurvePoint) -> Option<f64>,
}

const APPEND: RGBColor = RGBColor(31, 119, 180);
const PROJECTED: RGBColor = RGBColor(214, 39, 40);

const SERIES: [Series; 4] = [
    Series {
        label: "append p99",
        color: APPEND,
        dashed: false,
        value: |p| p.append_p99_ms,
    },
    Series {
        label: "append p50",
        color: APPEND,
        dashed: true,
        value: |p| p.append_p50_ms,
    },
    Series {
        label: "acceptance → projected p99",
        color: PROJECTED,
        dashed: false,
        value: |p| p.projected_p99_ms,
    },
    Series {
        label: "acceptance → projected p50",
        color: PROJECTED,
        dashed: true,
        value: |p| p.projected_p50_ms,
    },
];

/// Registers the embedded font once.
fn font() -> anyhow::Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| register_font(FAMILY, FontStyle::Normal, FONT).is_ok());
    if !ok {
        bail!("the embedded font is not a font plotters can read");
    }
    Ok(())
}

/// The latencies' range on a log scale, with some room above and below (None without any).
fn latency_range(points: &[CurvePoint]) -> Option<(f64, f64)> {
    let values = points
        .iter()
        .flat_map(|p| SERIES.iter().filter_map(|s| (s.value)(p)))
        .filter(|v| v.is_finite() && *v > 0.0);
    let (low, high) = values.fold((f64::INFINITY, 0.0_f64), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    (high > 0.0).then(|| (low / 2.0, high * 2.0))
}

/// Ticks of a log-scale axis from `low` to `high`: 1, 2 and 5 times the powers of ten in
/// between (light lines at the other multiples).
fn log_ticks(low: f64, high: f64) -> (Vec<f64>, Vec<f64>) {
    let (mut bold, mut light) = (Vec::new(), Vec::new());
    if !(low > 0.0 && high > low) {
        return (bold, light);
    }
    let mut decade = 10f64.powi(low.log10().floor() as i32);
    while decade <= high {
        for multiple in 1..10 {
            let tick = decade * f64::from(multiple);
            if (low..=high).contains(&tick) {
                if matches!(multiple, 1 | 2 | 5) {
                    bold.push(tick);
                } else {
                    light.push(tick);
                }
            }
        }
        decade *= 10.0;
    }
    (bold, light)
}

/// Draws the curve of `points` into the PNG at `path` with `caption` above it.
pub(crate) fn render(path: &Path, points: &[CurvePoint], caption: &str) -> anyhow::Result<()> {
    font()?;
    let (low, high) = latency_range(points).context("no latency to plot")?;
    let right = points.iter().map(|p| p.offered).fold(0.0, f64::max) * 1.05;
    if right <= 0.0 {
        bail!("no offered load to plot");
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.margin(12, 0, 0, 0).titled(caption, (FAMILY, 22))?;
    let (plot, legend) = root.split_horizontally(SIZE.0 - LEGEND_WIDTH);
    let mut chart = ChartBuilder::on(&plot)
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..right, {
            let (bold, light) = log_ticks(low, high);
            (low..high)
                .log_scale()
                .with_key_points(bold)
                .with_light_points(light)
        })?;
    chart
        .configure_mesh()
        .x_desc("offered load (events/s)")
        .y_desc("latency (ms, log scale)")
        .label_style((FAMILY, 15))
        .axis_desc_style((FAMILY, 17))
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| {
            if *y >= 1.0 {
                format!("{y:.0}")
            } else {
                format!("{}", round(*y, 3))
            }
        })
        .draw()?;
    for series in &SERIES {
        let data: Vec<(f64, f64)> = points
            .iter()
            .filter_map(|p| Some((p.offered, (series.value)(p)?)))
            .collect();
        let style = series.color.stroke_width(3);
        if series.dashed {
            chart.draw_series(DashedLineSeries::new(data.clone(), 10, 6, style))?;
        } else {
            chart.draw_series(LineSeries::new(data.clone(), style))?;
        }
        chart.draw_series(
            data.iter()
                .map(|&(x, y)| Circle::new((x, y), 4, series.color.filled())),
        )?;
    }
    for (row, series) in (0_i32..).zip(&SERIES) {
        let (x, y) = (10, 40 + 28 * row);
        let style = series.color.stroke_width(3);
        let pieces: &[(i32, i32)] = if series.dashed {
            &[(0, 10), (15, 25), (30, 40)]
        } else {
            &[(0, 40)]
        };
        for &(from, to) in pieces {
            legend.draw(&PathElement::new(vec![(x + from, y), (x + to, y)], style))?;
        }
        legend.draw(&Text::new(series.label, (x + 50, y - 8), (FAMILY, 15)))?;
    }
    root.present()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::curve::Step;
    use super::super::line::Line;
    use super::super::prometheus::Scrape;
    use super::*;

    fn point(fraction: f64, p50: f64, p99: f64, lag: &str) -> anyhow::Result<CurvePoint> {
        let load = Line::parse(&format!(
            r#"{{"events_per_s": 100, "appends_per_s": 20, "p50_ms": {p50}, "p99_ms": {p99}}}"#
        ))?;
        let after = Scrape::parse(lag);
        Ok(CurvePoint::new(
            &Step::new(10_000.0, fraction, 64, 512),
            &load,
            &Scrape::default(),
            &after,
        ))
    }

    #[test]
    fn renders_a_png_with_text_and_lines() -> anyhow::Result<()> {
        let lag = "esk_projector_event_lag_seconds_bucket{le=\"0.01\"} 50\n\
                   esk_projector_event_lag_seconds_bucket{le=\"0.1\"} 99\n\
                   esk_projector_event_lag_seconds_bucket{le=\"+Inf\"} 100\n";
        let points = [
            point(0.1, 2.0, 6.0, lag)?,
            point(0.5, 3.0, 12.0, lag)?,
            point(0.9, 9.0, 80.0, lag)?,
        ];
        assert_eq!(latency_range(&points), Some((1.0, 200.0)));
        let path = std::env::temp_dir().join(format!(
            "esk-bench-curve-{}-{:?}.png",
            std::process::id(),
            std::thread::current().id()
        ));
        render(&path, &points, "test curve")?;
        let bytes = std::fs::read(&path)?;
        let _ = std::fs::remove_file(&path);
        assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"));
        // A white 1000 × 620 canvas compresses to a few hundred bytes; lines and text do not.
        assert!(bytes.len() > 10_000, "only {} bytes", bytes.len());
        Ok(())
    }

    #[test]
    fn log_ticks_are_one_two_five() {
        let (bold, light) = log_ticks(30.0, 1200.0);
        assert_eq!(bold, [50.0, 100.0, 200.0, 500.0, 1000.0]);
        assert_eq!(light.first(), Some(&30.0));
        assert_eq!(light.last(), Some(&900.0));
        assert_eq!(log_ticks(0.0, 10.0), (vec![], vec![]));
    }

    #[test]
    fn nothing_to_plot_is_an_error() -> anyhow::Result<()> {
        let empty = point(0.1, 0.0, 0.0, "")?;
        assert_eq!(latency_range(std::slice::from_ref(&empty)), None);
        let path = std::env::temp_dir().join("esk-bench-curve-never-written.png");
        assert!(render(&path, &[empty], "x").is_err());
        assert!(!path.exists());
        Ok(())
    }
}
