//! Drawing with plotters: PNG or SVG by the output's extension, with DejaVu Sans embedded so
//! that no system font is needed. Each figure is data in, pixels out; nothing here reads
//! results.

use std::path::Path as FsPath;

use plotters::coord::Shift;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use plotters::style::colors::colormaps::ViridisRGB;

/// The font every figure uses, registered once under the family name `sans-serif`.
static FONT: &[u8] = include_bytes!("../../../assets/DejaVuSans.ttf");
const FAMILY: &str = "sans-serif";

fn register_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // The font is ours, compiled in: it parses.
        let _ = plotters::style::register_font(FAMILY, FontStyle::Normal, FONT);
    });
}

/// One point of a band: the min, mean and max over seeds at `x`.
pub struct Band {
    pub x: f64,
    pub min: f64,
    pub mean: f64,
    pub max: f64,
}

/// One curve with its band.
pub struct Curve {
    pub label: String,
    /// Curves of one group share a colour.
    pub group: String,
    pub dashed: bool,
    pub points: Vec<Band>,
}

/// Curves against α, with vertical marks and an optional horizontal reference.
pub struct LineFigure {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub curves: Vec<Curve>,
    pub reference: Option<(String, f64)>,
    pub marks: Vec<f64>,
}

/// One run's path: (step, α, β).
pub struct Path {
    pub points: Vec<(f64, f64, f64)>,
}

/// β against α, coloured by training step.
pub struct Trajectory {
    pub title: String,
    pub max_step: f64,
    pub paths: Vec<Path>,
}

/// One heatmap cell.
pub struct Cell {
    pub x: usize,
    pub y: usize,
    pub value: f64,
    pub runs: usize,
}

/// A metric over two grid axes.
pub struct Heatmap {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub xs: Vec<String>,
    pub ys: Vec<String>,
    pub cells: Vec<Cell>,
}

/// A metric on a regular (x, y) grid, with marked points and an optional path over it.
pub struct Surface {
    pub title: String,
    pub metric: String,
    /// (x, y, value) per grid point.
    pub cells: Vec<(f64, f64, f64)>,
    /// A path drawn over the map (the trajectory on the PCA plane).
    pub path: Vec<(f64, f64)>,
    /// Labelled points (θ_c at the origin, θ_i on the init plane).
    pub marks: Vec<(String, (f64, f64))>,
}

/// Any figure.
pub enum Figure {
    Line(LineFigure),
    Trajectory(Trajectory),
    Heatmap(Heatmap),
    Surface(Surface),
}

type Drawn<DB> = Result<(), DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;

type Chart<'a, DB> = ChartContext<'a, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// The frame every figure shares: its title, margins and axis areas.
fn chart<'a, DB: DrawingBackend>(
    root: &'a DrawingArea<DB, Shift>,
    title: &str,
    y_label_area: u32,
    x: std::ops::Range<f64>,
    y: std::ops::Range<f64>,
) -> Result<Chart<'a, DB>, DrawingAreaErrorKind<DB::ErrorType>> {
    ChartBuilder::on(root)
        .caption(title, (FAMILY, 22))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(y_label_area)
        .build_cartesian_2d(x, y)
}

/// The legend of the labelled series, at `position`.
fn legend<'a, DB: DrawingBackend + 'a>(
    chart: &mut Chart<'a, DB>,
    position: SeriesLabelPosition,
) -> Drawn<DB> {
    chart
        .configure_series_labels()
        .label_font((FAMILY, 15))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .position(position)
        .draw()
}

/// Text of `size` in `ink`, centred on its anchor.
fn centered(size: u32, ink: RGBColor) -> TextStyle<'static> {
    use plotters::style::text_anchor::{HPos, Pos, VPos};
    (FAMILY, size)
        .into_font()
        .color(&ink)
        .pos(Pos::new(HPos::Center, VPos::Center))
}

/// Writes `figure` to `out` (`.png` or `.svg`) at `width` × `height` pixels.
pub fn render(figure: &Figure, out: &FsPath, width: u32, height: u32) -> anyhow::Result<()> {
    register_font();
    anyhow::ensure!(
        (200..=8000).contains(&width) && (150..=8000).contains(&height),
        "--width and --height: {width} × {height} pixels is outside 200–8000 × 150–8000"
    );
    let ext = out
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or_default()
        .to_ascii_lowercase();
    let failed = |e: String| anyhow::anyhow!("drawing {}: {e}", out.display());
    match ext.as_str() {
        "png" => {
            let root = BitMapBackend::new(out, (width, height)).into_drawing_area();
            draw(figure, &root).map_err(|e| failed(e.to_string()))?;
            root.present().map_err(|e| failed(e.to_string()))
        }
        "svg" => {
            let root = SVGBackend::new(out, (width, height)).into_drawing_area();
            draw(figure, &root).map_err(|e| failed(e.to_string()))?;
            root.present().map_err(|e| failed(e.to_string()))
        }
        _ => anyhow::bail!(
            "--out {}: the format comes from the extension, .png or .svg",
            out.display()
        ),
    }
}

/// `figure` as PNG bytes (for pages that inline their images).
pub fn png_bytes(figure: &Figure, width: u32, height: u32) -> anyhow::Result<Vec<u8>> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("figure.png");
    render(figure, &path, width, height)?;
    Ok(std::fs::read(&path)?)
}

fn draw<DB: DrawingBackend>(figure: &Figure, root: &DrawingArea<DB, Shift>) -> Drawn<DB> {
    root.fill(&WHITE)?;
    match figure {
        Figure::Line(f) => line(f, root),
        Figure::Trajectory(f) => trajectory(f, root),
        Figure::Heatmap(f) => heatmap(f, root),
        Figure::Surface(f) => surface(f, root),
    }
}

/// `[lo, hi]` with 5 % padding (and some width when the values are all equal).
fn padded(lo: f64, hi: f64) -> (f64, f64) {
    let span = (hi - lo).abs().max(1e-9 * hi.abs().max(1.0));
    (lo - 0.05 * span, hi + 0.05 * span)
}

fn line<DB: DrawingBackend>(f: &LineFigure, root: &DrawingArea<DB, Shift>) -> Drawn<DB> {
    let xs = f.curves.iter().flat_map(|c| c.points.iter().map(|p| p.x));
    let (x0, x1) = (
        xs.clone().fold(f64::INFINITY, f64::min),
        xs.fold(f64::NEG_INFINITY, f64::max),
    );
    let mut lo = f
        .curves
        .iter()
        .flat_map(|c| c.points.iter().map(|p| p.min))
        .fold(f64::INFINITY, f64::min);
    let mut hi = f
        .curves
        .iter()
        .flat_map(|c| c.points.iter().map(|p| p.max))
        .fold(f64::NEG_INFINITY, f64::max);
    if let Some((_, r)) = f.reference {
        (lo, hi) = (lo.min(r), hi.max(r));
    }
    let (y0, y1) = padded(lo, hi);
    let mut chart = chart(root, &f.title, 64, x0..x1, y0..y1)?;
    chart
        .configure_mesh()
        .x_desc(&f.x_label)
        .y_desc(&f.y_label)
        .label_style((FAMILY, 16))
        .axis_desc_style((FAMILY, 18))
        .light_line_style(WHITE.mix(0.0))
        .draw()?;
    let groups: Vec<&str> = {
        let mut g: Vec<&str> = f.curves.iter().map(|c| c.group.as_str()).collect();
        g.dedup();
        g
    };
    for c in &f.curves {
        let color =
            Palette99::pick(groups.iter().position(|g| *g == c.group).unwrap_or(0)).to_rgba();
        let band: Vec<(f64, f64)> = c
            .points
            .iter()
            .map(|p| (p.x, p.max))
            .chain(c.points.iter().rev().map(|p| (p.x, p.min)))
            .collect();
        chart.draw_series(std::iter::once(Polygon::new(
            band,
            color.mix(0.15).filled(),
        )))?;
        let mean: Vec<(f64, f64)> = c.points.iter().map(|p| (p.x, p.mean)).collect();
        let style = color.stroke_width(2);
        let series = if c.dashed {
            chart.draw_series(DashedLineSeries::new(mean, 8, 5, style))?
        } else {
            chart.draw_series(LineSeries::new(mean, style))?
        };
        let dashed = c.dashed;
        series.label(&c.label).legend(move |(x, y)| {
            let end = if dashed { x + 10 } else { x + 22 };
            PathElement::new(vec![(x, y), (end, y)], color.stroke_width(2))
        });
    }
    for m in &f.marks {
        let grey = BLACK.mix(0.35);
        chart.draw_series(DashedLineSeries::new(
            vec![(*m, y0), (*m, y1)],
            4,
            4,
            grey.stroke_width(1),
        ))?;
        chart.draw_series(std::iter::once(Text::new(
            format!("α={m}"),
            (*m, y1),
            (FAMILY, 14).into_font().color(&grey),
        )))?;
    }
    if let Some((label, r)) = &f.reference {
        chart
            .draw_series(DashedLineSeries::new(
                vec![(x0, *r), (x1, *r)],
                2,
                4,
                BLACK.stroke_width(1),
            ))?
            .label(label)
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 22, y)], BLACK));
    }
    // Losses fall and accuracies rise to the right: the middle of the right edge is free.
    legend(&mut chart, SeriesLabelPosition::MiddleRight)
}

fn trajectory<DB: DrawingBackend>(f: &Trajectory, root: &DrawingArea<DB, Shift>) -> Drawn<DB> {
    let all = || f.paths.iter().flat_map(|p| p.points.iter());
    let (x0, x1) = padded(
        all().map(|p| p.1).fold(f64::INFINITY, f64::min),
        all().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max),
    );
    let (y0, y1) = padded(
        all().map(|p| p.2).fold(f64::INFINITY, f64::min),
        all().map(|p| p.2).fold(f64::NEG_INFINITY, f64::max),
    );
    let mut chart = chart(root, &f.title, 64, x0..x1, y0..y1)?;
    chart
        .configure_mesh()
        .x_desc("α: progress along θ_i → θ_c (fraction)")
        .y_desc("β: distance from the line")
        .label_style((FAMILY, 16))
        .axis_desc_style((FAMILY, 18))
        .draw()?;
    for p in &f.paths {
        for w in p.points.windows(2) {
            let color = ViridisRGB::get_color(w[1].0 / f.max_step);
            chart.draw_series(LineSeries::new(
                vec![(w[0].1, w[0].2), (w[1].1, w[1].2)],
                color.stroke_width(2),
            ))?;
        }
        if let Some(last) = p.points.last() {
            chart.draw_series(std::iter::once(Circle::new(
                (last.1, last.2),
                3,
                BLACK.filled(),
            )))?;
        }
    }
    // The colour key: step 0 to the last step.
    for (i, t) in [0.0, 0.5, 1.0].iter().enumerate() {
        let label = format!("step {:.0}", t * f.max_step);
        chart
            .draw_series(std::iter::once(Circle::new(
                (x0, y0),
                0,
                ViridisRGB::get_color(*t).filled(),
            )))?
            .label(label)
            .legend(move |(x, y)| {
                Rectangle::new(
                    [(x, y - 5), (x + 16, y + 5)],
                    ViridisRGB::get_color([0.0, 0.5, 1.0][i]).filled(),
                )
            });
    }
    legend(&mut chart, SeriesLabelPosition::UpperLeft)
}

fn heatmap<DB: DrawingBackend>(f: &Heatmap, root: &DrawingArea<DB, Shift>) -> Drawn<DB> {
    let (nx, ny) = (f.xs.len(), f.ys.len());
    let (lo, hi) = f
        .cells
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), c| {
            (l.min(c.value), h.max(c.value))
        });
    let mut chart = chart(root, &f.title, 90, 0f64..nx as f64, 0f64..ny as f64)?;
    let (xs, ys) = (f.xs.clone(), f.ys.clone());
    chart
        .configure_mesh()
        .disable_mesh()
        .x_labels(nx * 2 + 1)
        .y_labels(ny * 2 + 1)
        .x_label_formatter(&|v| label_at(&xs, *v))
        .y_label_formatter(&|v| label_at(&ys, *v))
        .x_desc(&f.x_label)
        .y_desc(&f.y_label)
        .label_style((FAMILY, 16))
        .axis_desc_style((FAMILY, 18))
        .draw()?;
    for c in &f.cells {
        let t = if hi > lo {
            (c.value - lo) / (hi - lo)
        } else {
            0.5
        };
        let (x, y) = (c.x as f64, c.y as f64);
        chart.draw_series(std::iter::once(Rectangle::new(
            [(x, y), (x + 1.0, y + 1.0)],
            ViridisRGB::get_color(t).filled(),
        )))?;
        let ink = if t > 0.6 { BLACK } else { WHITE };
        chart.draw_series([
            Text::new(
                format_value(c.value),
                (x + 0.5, y + 0.55),
                centered(18, ink),
            ),
            Text::new(
                format!("{} runs", c.runs),
                (x + 0.5, y + 0.3),
                centered(13, ink),
            ),
        ])?;
    }
    Ok(())
}

/// The distinct values of a grid axis, sorted.
fn grid_values(v: impl Iterator<Item = f64>) -> Vec<f64> {
    let mut v: Vec<f64> = v.collect();
    v.sort_by(f64::total_cmp);
    v.dedup();
    v
}

/// Each grid point as a rectangle reaching halfway to its neighbours, coloured on a viridis
/// scale, with the scale's ends in the legend.
fn surface<DB: DrawingBackend>(f: &Surface, root: &DrawingArea<DB, Shift>) -> Drawn<DB> {
    let xs = grid_values(f.cells.iter().map(|c| c.0));
    let ys = grid_values(f.cells.iter().map(|c| c.1));
    let half = |v: &[f64], i: usize| -> (f64, f64) {
        let step = |j: usize, k: usize| (v[k] - v[j]).abs() / 2.0;
        let lo = if i > 0 {
            step(i - 1, i)
        } else if v.len() > 1 {
            step(0, 1)
        } else {
            0.5
        };
        let hi = if i + 1 < v.len() { step(i, i + 1) } else { lo };
        (v[i] - lo, v[i] + hi)
    };
    let span = |v: &[f64]| (half(v, 0).0, half(v, v.len() - 1).1);
    let ((x0, x1), (y0, y1)) = (span(&xs), span(&ys));
    let (lo, hi) = f
        .cells
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), c| {
            (l.min(c.2), h.max(c.2))
        });
    let mut chart = chart(root, &f.title, 64, x0..x1, y0..y1)?;
    chart
        .configure_mesh()
        .disable_mesh()
        .x_desc("x (δ)")
        .y_desc("y (η)")
        .label_style((FAMILY, 16))
        .axis_desc_style((FAMILY, 18))
        .draw()?;
    let t = |v: f64| if hi > lo { (v - lo) / (hi - lo) } else { 0.5 };
    for &(x, y, v) in &f.cells {
        let (Some(i), Some(j)) = (
            xs.iter().position(|&a| a == x),
            ys.iter().position(|&b| b == y),
        ) else {
            continue;
        };
        let ((a0, a1), (b0, b1)) = (half(&xs, i), half(&ys, j));
        chart.draw_series(std::iter::once(Rectangle::new(
            [(a0, b0), (a1, b1)],
            ViridisRGB::get_color(t(v)).filled(),
        )))?;
    }
    if f.path.len() > 1 {
        chart
            .draw_series(LineSeries::new(f.path.clone(), RED.stroke_width(2)))?
            .label("trajectory")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], RED.stroke_width(2)));
    }
    for (label, p) in &f.marks {
        let style = TextStyle::from((FAMILY, 18).into_font()).color(&WHITE);
        chart.draw_series(std::iter::once(
            EmptyElement::at(*p)
                + Circle::new((0, 0), 5, WHITE.filled())
                + Circle::new((0, 0), 5, BLACK.stroke_width(1))
                + Text::new(label.clone(), (9, -20), style),
        ))?;
    }
    for (v, name) in [(lo, "lowest"), (hi, "highest")] {
        let color = ViridisRGB::get_color(t(v));
        chart
            .draw_series(std::iter::once(Circle::new((x0, y0), 0, color.filled())))?
            .label(format!("{name} {}: {}", f.metric, format_value(v)))
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 16, y + 5)], color.filled()));
    }
    legend(&mut chart, SeriesLabelPosition::UpperRight)
}

/// The category label at the centre of a cell (`x + 0.5`), empty elsewhere.
fn label_at(labels: &[String], v: f64) -> String {
    let i = v - 0.5;
    if (i - i.round()).abs() < 1e-6 && i >= 0.0 {
        labels.get(i.round() as usize).cloned().unwrap_or_default()
    } else {
        String::new()
    }
}

fn format_value(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}
