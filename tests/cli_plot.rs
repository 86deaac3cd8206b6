//! `linesweep plot` on a real sweep run by `linesweep run`: valid PNG and SVG files of the
//! requested size that are not blank, a line figure whose curve passes through the recorded
//! α = 0 and α = 1 losses (read back from the SVG's path data), and clear errors for what
//! cannot be drawn.

mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use common::*;

/// A tiny 8-shard sweep (optimizer × lr × 2 seeds), run once for every test in this file.
fn sweep() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let spec = tiny_grid_spec(dir.path(), "plots", "");
        let o = linesweep(
            &["run", spec.to_str().unwrap(), "--workers", "2"],
            dir.path(),
            Duration::from_secs(300),
        );
        assert!(o.status.success(), "{}", text(&o.stderr));
        dir
    })
    .path()
}

fn plot(args: &[&str], out: &Path) -> std::process::Output {
    let mut all = vec!["plot"];
    all.extend(args);
    all.extend(["--out", out.to_str().unwrap()]);
    linesweep(&all, sweep(), Duration::from_secs(120))
}

fn out(name: &str) -> PathBuf {
    sweep().join(name)
}

#[test]
fn every_kind_is_a_png_or_svg_of_the_requested_size_and_not_blank() {
    for kind in ["line", "trajectory", "heatmap", "starts"] {
        let png = out(&format!("{kind}.png"));
        let o = plot(&[kind, "--width", "640", "--height", "400"], &png);
        assert!(o.status.success(), "{kind}: {}", text(&o.stderr));
        let (w, h, colours) = png_stats(&png);
        assert_eq!((w, h), (640, 400), "{kind}");
        assert!(colours > 40, "{kind}: only {colours} colours: blank?");
        let svg = out(&format!("{kind}.svg"));
        let o = plot(&[kind, "--width", "640", "--height", "400"], &svg);
        assert!(o.status.success(), "{kind}: {}", text(&o.stderr));
        let text = std::fs::read_to_string(&svg).unwrap();
        assert!(
            text.contains(r#"width="640" height="400""#),
            "{kind}: {}",
            &text[..200]
        );
        assert!(
            text.matches("<polyline").count() + text.matches("<rect").count() > 10,
            "{kind}"
        );
        assert!(text.contains("plots:"), "{kind}: the title names the sweep");
    }
    // The heatmap prints its cells' values and run counts.
    let heat = std::fs::read_to_string(out("heatmap.svg")).unwrap();
    assert_eq!(heat.matches("2 runs").count(), 4, "4 cells of 2 seeds each");
}

/// `(pixel, value)` of the numeric tick labels with `anchor` in an SVG.
fn ticks(svg: &str, anchor: &str) -> Vec<(f64, f64)> {
    let mut out = Vec::new();
    for part in svg.split("<text ").skip(1) {
        let (attrs, rest) = part.split_once('>').unwrap();
        let label = rest.split("</text>").next().unwrap().trim();
        if !attrs.contains(&format!("text-anchor=\"{anchor}\"")) || attrs.contains("rotate") {
            continue;
        }
        let attr = |name: &str| -> f64 {
            let v = format!(" {attrs}");
            let v = v.split(&format!(" {name}=\"")).nth(1).unwrap();
            v.split('"').next().unwrap().parse().unwrap()
        };
        if let Ok(value) = label.parse::<f64>() {
            out.push((
                if anchor == "end" {
                    attr("y")
                } else {
                    attr("x")
                },
                value,
            ));
        }
    }
    out
}

/// The value → pixel map through two ticks.
fn mapping(t: &[(f64, f64)]) -> impl Fn(f64) -> f64 + use<> {
    assert!(t.len() >= 2, "{t:?}");
    let (a, b) = (t[0], t[t.len() - 1]);
    let scale = (b.0 - a.0) / (b.1 - a.1);
    move |v| a.0 + (v - a.1) * scale
}

/// The mean loss at α of the train lines from `init`, by DuckDB.
fn recorded(alpha: f64) -> f64 {
    let sql = format!(
        "select avg(loss) from read_parquet('{}/linesweep-results/results/interpolation/sweep=plots/*.parquet') \
         where split = 'train' and start = 'init' and abs(alpha - {alpha}) < 1e-9",
        sweep().display()
    );
    duckdb_value(&sql).parse().unwrap()
}

#[test]
fn the_line_passes_through_the_recorded_losses_at_alpha_0_and_1() {
    let svg = out("endpoints.svg");
    // One group: the curve is the mean over all eight runs.
    let o = plot(&["line", "--by", ""], &svg);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let svg = std::fs::read_to_string(&svg).unwrap();
    let (x_of, y_of) = (
        mapping(&ticks(&svg, "middle")),
        mapping(&ticks(&svg, "end")),
    );
    // The train mean is the one solid 2-px polyline with a vertex per α.
    let curves: Vec<Vec<(f64, f64)>> = svg
        .split("<polyline ")
        .skip(1)
        .filter(|p| p.contains("stroke-width=\"2\""))
        .map(|p| {
            let pts = p
                .split("points=\"")
                .nth(1)
                .unwrap()
                .split('"')
                .next()
                .unwrap();
            pts.split_whitespace()
                .map(|xy| {
                    let (x, y) = xy.split_once(',').unwrap();
                    (x.parse().unwrap(), y.parse().unwrap())
                })
                .collect()
        })
        .filter(|v: &Vec<(f64, f64)>| v.len() >= 20)
        .collect();
    assert_eq!(curves.len(), 1, "one solid train curve");
    for alpha in [0.0, 1.0] {
        let (x, y) = (x_of(alpha), y_of(recorded(alpha)));
        assert!(
            curves[0]
                .iter()
                .any(|(px, py)| (px - x).abs() <= 1.5 && (py - y).abs() <= 1.5),
            "no vertex near ({x:.1}, {y:.1}) for α = {alpha}: {:?}",
            curves[0]
        );
    }
}

#[test]
fn what_cannot_be_drawn_is_a_clear_error() {
    let err = |args: &[&str], out: &Path| {
        let o = plot(args, out);
        assert!(!o.status.success(), "{args:?} succeeded");
        text(&o.stderr)
    };
    let png = out("bad.png");
    assert!(err(&["plane"], &png).contains("no plane data"));
    assert!(err(&["line", "--metric", "speed"], &png).contains("`loss` or `accuracy`"));
    assert!(err(&["heatmap", "--x", "colour"], &png).contains("not a config column"));
    assert!(err(&["line", "--bn-mode", "nonsense"], &png).contains("--bn-mode nonsense"));
    assert!(err(&["line"], &out("bad.jpg")).contains(".png or .svg"));
    let empty = tempfile::tempdir().unwrap();
    let e = err(&["line", "--results", empty.path().to_str().unwrap()], &png);
    assert!(e.contains("no committed shard of any sweep"), "{e}");
    let e = err(&["line", "--sweep", "other"], &png);
    assert!(e.contains("sweep other has no committed shard"), "{e}");
}

/// A shard with two planes, measured by `exec`, drawn as a colour map (the pca one with the
/// trajectory over it), and the errors for what it did not measure.
#[test]
fn a_plane_is_a_colour_map_with_the_trajectory_on_the_pca_plane() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("plane.toml"),
        r#"
[model]
hidden = [32]
[data]
max_train_examples = 1000
[train]
epochs = 1
[snapshot]
every = 2
[eval]
max_examples = 200
[eval.plane]
kinds = ["init", "pca"]
points = 7
"#,
    )
    .unwrap();
    let o = linesweep(
        &["exec", "--config", "plane.toml", "--out", "out"],
        dir.path(),
        Duration::from_secs(300),
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let plot = |args: &[&str]| {
        let mut all = vec!["plot", "plane", "--results", "out"];
        all.extend(args);
        linesweep(&all, dir.path(), Duration::from_secs(120))
    };
    let o = plot(&["--out", "init.png", "--width", "500", "--height", "400"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let (w, h, colours) = png_stats(&dir.path().join("init.png"));
    assert_eq!((w, h), (500, 400));
    assert!(colours > 40, "only {colours} colours");
    let o = plot(&[
        "--plane", "pca", "--metric", "accuracy", "--split", "test", "--out", "pca.svg",
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let svg = std::fs::read_to_string(dir.path().join("pca.svg")).unwrap();
    assert!(svg.contains("accuracy on the pca plane") && svg.contains("(test)"));
    assert!(svg.contains("trajectory") && svg.contains("θ_c"));
    assert!(
        svg.matches("<rect").count() >= 49,
        "one cell per grid point"
    );
    let o = plot(&["--plane", "random", "--out", "r.png"]);
    assert!(!o.status.success());
    assert!(
        text(&o.stderr).contains("measured init, pca"),
        "{}",
        text(&o.stderr)
    );
    let o = plot(&["--split", "valid", "--out", "r.png"]);
    assert!(
        text(&o.stderr).contains("--split valid"),
        "{}",
        text(&o.stderr)
    );
}
