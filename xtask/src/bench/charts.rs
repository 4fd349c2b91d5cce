//! SVG charts of the per-call figures, drawn by the benchmark itself
//! (plotters' SVG backend; no external tools, no fonts: the viewer
//! renders the text).
//!
//! - `bench-percall-vs-rules.svg`: ns per call (median) against the rule
//!   count of the generated policies, one panel per call and route, with
//!   the no-sandbox and trivial-program lines of the same run.
//! - `bench-ratios.svg`: each configuration's median against no sandbox,
//!   side by side, per call and route.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use plotters::{
    coord::Shift,
    prelude::{
        ChartBuilder, Circle, DashedLineSeries, DrawingArea, IntoDrawingArea as _, IntoLogRange as _, LineSeries,
        PathElement, Rectangle, SVGBackend, SeriesLabelPosition, ShapeStyle, Text, BLACK, WHITE,
    },
    style::{Color as _, IntoFont as _, RGBColor, TextStyle},
};

use super::{
    percall::{Kind, Percall, Route, Samples},
    policies::size_label,
};

/// The calls the charts show: the three whose cost an allowed workload
/// pays (the denied ones are far cheaper and would squash the scale).
const CALLS: [(&str, &str); 3] =
    [("tcp_cycle", "TCP connect+accept+close"), ("refused", "connect to a closed port"), ("udp_sendto", "UDP sendto")];

/// A colour-blind-safe palette (Okabe and Ito).
const PALETTE: [RGBColor; 8] = [
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(230, 159, 0),
    RGBColor(86, 180, 233),
    RGBColor(120, 120, 120),
    RGBColor(240, 228, 66),
];

/// File names, in the order [`write`] returns them.
pub(super) const FILES: [&str; 2] = ["bench-percall-vs-rules.svg", "bench-ratios.svg"];

/// Draws both charts into `dir`; returns the files written.
pub(super) fn write(pc: &Percall, sizes: &[usize], dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let files: Vec<PathBuf> = FILES.iter().map(|f| dir.join(f)).collect();
    percall_vs_rules(pc, sizes, &files[0]).with_context(|| format!("drawing {}", files[0].display()))?;
    ratios(pc, &files[1]).with_context(|| format!("drawing {}", files[1].display()))?;
    Ok(files)
}

fn font(size: u32) -> TextStyle<'static> {
    ("sans-serif", size).into_font().color(&BLACK)
}

/// Median ns per call of `cfg` for `op` on one route.
fn median(s: &Samples, cfg: &str, op: &str) -> Option<f64> {
    s.stat(cfg, op).map(|st| st.median).filter(|m| m.is_finite())
}

/// `[lo, hi]` widened by a margin, never empty.
fn padded(values: &[f64], margin: f64) -> (f64, f64) {
    let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if !lo.is_finite() || !hi.is_finite() {
        return (0.0, 1.0);
    }
    let span = (hi - lo).max(hi.abs() * 0.02).max(1e-9);
    (lo - span * margin, hi + span * margin)
}

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;

fn percall_vs_rules(pc: &Percall, sizes: &[usize], file: &Path) -> Result<()> {
    let routes: Vec<(Route, &Samples)> = pc.routes.iter().map(|(r, s)| (*r, s)).collect();
    let cols = routes.len().max(1);
    // One column is drawn wider, so the title still fits.
    let (w, h) = (u32::try_from((560 * cols).max(760)).unwrap_or(1120), 1020);
    let root = SVGBackend::new(file, (w, h)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled("ns per call (median) against the number of rules in the policy", font(20))?;
    let panels = root.split_evenly((CALLS.len(), cols));
    for (row, (op, label)) in CALLS.iter().enumerate() {
        for (col, (route, s)) in routes.iter().enumerate() {
            panel_vs_rules(&panels[row * cols + col], s, sizes, op, &format!("{label}, {}", route.label()))?;
        }
    }
    root.present()?;
    Ok(())
}

/// One panel: the generated policies' medians against their rule count,
/// and the horizontal lines of the configurations without rules.
fn panel_vs_rules(area: &Area<'_>, s: &Samples, sizes: &[usize], op: &str, caption: &str) -> Result<()> {
    #[expect(clippy::cast_precision_loss, reason = "rule counts are far below 2^52")]
    let points: Vec<(f64, f64)> =
        sizes.iter().filter_map(|&n| Some((n as f64, median(s, &format!("sbx-{}", size_label(n)), op)?))).collect();
    let lines: Vec<(&str, &str, f64)> = [("none", "no sandbox"), ("floor", "trivial return-1 programs")]
        .into_iter()
        .filter_map(|(cfg, label)| Some((cfg, label, median(s, cfg, op)?)))
        .collect();
    let mut values: Vec<f64> = points.iter().map(|p| p.1).collect();
    values.extend(lines.iter().map(|l| l.2));
    let (lo, hi) = padded(&values, 0.15);
    let x_lo = points.first().map_or(10.0, |p| p.0 / 2.0);
    let x_hi = points.last().map_or(1e6, |p| p.0 * 2.0);
    let mut chart = ChartBuilder::on(area)
        .caption(caption, font(15))
        .margin(12)
        .x_label_area_size(38)
        .y_label_area_size(62)
        .build_cartesian_2d((x_lo..x_hi).log_scale(), lo..hi)?;
    chart
        .configure_mesh()
        .x_desc("rules in the policy (log scale)")
        .y_desc("ns per call")
        .label_style(font(11))
        .axis_desc_style(font(12))
        .x_label_formatter(&|v| {
            #[expect(
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                reason = "axis labels of positive counts"
            )]
            let n = v.round() as usize;
            size_label(n)
        })
        .y_label_formatter(&|v| format!("{v:.0}"))
        .draw()?;
    let colour = PALETTE[0];
    chart
        .draw_series(LineSeries::new(points.iter().copied(), colour.stroke_width(2)))?
        .label("sbx, generated rules")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], colour.stroke_width(2)));
    chart.draw_series(points.iter().map(|&p| Circle::new(p, 3, colour.filled())))?;
    for (i, (_, label, y)) in lines.iter().enumerate() {
        let c = [BLACK, PALETTE[1]][i % 2];
        let style: ShapeStyle = c.stroke_width(1);
        chart
            .draw_series(DashedLineSeries::new([(x_lo, *y), (x_hi, *y)], 6, 4, style))?
            .label(*label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], style));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .label_font(font(11))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .draw()?;
    Ok(())
}

/// The configurations in the ratio chart, in bar order.
fn ratio_configs(pc: &Percall) -> Vec<(String, String)> {
    pc.configs.iter().filter(|c| !matches!(c.kind, Kind::None)).map(|c| (c.name.clone(), c.label.clone())).collect()
}

fn ratios(pc: &Percall, file: &Path) -> Result<()> {
    let configs = ratio_configs(pc);
    // One group per (route, call).
    let groups: Vec<(Route, &Samples, &str)> =
        pc.routes.iter().flat_map(|(r, s)| CALLS.iter().map(move |(op, _)| (*r, s, *op))).collect();
    let mut values = vec![1.0];
    for (_, s, op) in &groups {
        for (cfg, _) in &configs {
            if let Some(r) = s.ratio(cfg, "none", op) {
                values.push(r.median);
            }
        }
    }
    let (lo, hi) = padded(&values, 0.08);
    let lo = lo.min(0.98);
    let n_groups = groups.len().max(1);
    let full = SVGBackend::new(file, (u32::try_from(260 * n_groups + 330).unwrap_or(1900), 640)).into_drawing_area();
    full.fill(&WHITE)?;
    let root = full.titled("Per-call cost against no sandbox (ratio of medians, same run)", font(20))?;
    let (plot, legend) = root.split_horizontally(u32::try_from(260 * n_groups).unwrap_or(1560));
    #[expect(clippy::cast_precision_loss, reason = "a handful of groups")]
    let x_hi = n_groups as f64 - 0.5;
    let mut chart = ChartBuilder::on(&plot)
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .build_cartesian_2d(-0.5..x_hi, lo..hi)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .disable_x_axis()
        .y_desc("median ns per call / no sandbox")
        .label_style(font(12))
        .axis_desc_style(font(13))
        .y_label_formatter(&|v| format!("{v:.2}x"))
        .draw()?;
    #[expect(clippy::cast_precision_loss, reason = "a handful of bars")]
    let width = 0.8 / configs.len().max(1) as f64;
    for (k, (cfg, _)) in configs.iter().enumerate() {
        let colour = PALETTE[k % PALETTE.len()];
        for (g, (_, s, op)) in groups.iter().enumerate() {
            let Some(r) = s.ratio(cfg, "none", op).map(|r| r.median).filter(|r| r.is_finite()) else {
                continue;
            };
            #[expect(clippy::cast_precision_loss, reason = "a handful of bars")]
            let x0 = g as f64 - 0.4 + width * k as f64;
            chart.draw_series([Rectangle::new([(x0, 1.0), (x0 + width * 0.9, r)], colour.filled())])?;
            // The figure itself above (or below) the bar.
            let (px, py) = chart.backend_coord(&(x0, r));
            let dy = if r >= 1.0 { -12 } else { 2 };
            full.draw(&Text::new(format!("{r:.2}"), (px, py + dy), font(9)))?;
        }
    }
    chart.draw_series(DashedLineSeries::new([(-0.5, 1.0), (x_hi, 1.0)], 6, 4, BLACK.stroke_width(1)))?;
    // Group names under the plot (the x axis has no numbers to show), in
    // the pixels of the whole image.
    for (g, (route, _, op)) in groups.iter().enumerate() {
        let call = CALLS.iter().find(|(o, _)| o == op).map_or(*op, |(_, l)| *l);
        #[expect(clippy::cast_precision_loss, reason = "a handful of groups")]
        let x = g as f64 - 0.4;
        let (px, py) = chart.backend_coord(&(x, lo));
        full.draw(&Text::new(call.to_owned(), (px, py + 8), font(12)))?;
        full.draw(&Text::new(route.label().to_owned(), (px, py + 24), font(11).color(&PALETTE[6])))?;
    }
    // The legend beside the plot, so it never hides a bar.
    for (k, (_, label)) in configs.iter().enumerate() {
        let y = 60 + 22 * i32::try_from(k).unwrap_or(0);
        legend.draw(&Rectangle::new([(8, y), (22, y + 12)], PALETTE[k % PALETTE.len()].filled()))?;
        legend.draw(&Text::new(label.clone(), (30, y), font(11)))?;
    }
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::bench::percall::Config;

    /// A run with made-up figures: both routes, every kind of
    /// configuration, rule counts 10 to 1,000,000.
    pub(crate) fn synthetic() -> (Percall, Vec<usize>) {
        let sizes = vec![10, 1_000, 100_000, 1_000_000];
        let mut configs = vec![
            ("none", "no sandbox", Kind::None, 1.0),
            ("floor", "trivial connect4/sendmsg4 programs (return 1)", Kind::Floor, 1.02),
            ("sbx-small", "sbx, small policy", Kind::Sbx { flags: vec![], rules: None, audit: false }, 1.05),
        ];
        for (i, &n) in sizes.iter().enumerate() {
            #[expect(clippy::cast_precision_loss, reason = "a few sizes")]
            let r = 1.05 + 0.01 * i as f64;
            let name: &'static str = Box::leak(format!("sbx-{}", size_label(n)).into_boxed_str());
            configs.push((name, "sbx, rules", Kind::Sbx { flags: vec![], rules: Some(n), audit: false }, r));
        }
        configs.push(("landlock", "Landlock TCP connect rules", Kind::Landlock, 1.01));
        let base =
            [("tcp_cycle", 35_000.0), ("refused", 17_000.0), ("udp_sendto", 3_500.0), ("denied_connect", 7_000.0)];
        let routes = [Route::Loopback, Route::Netns]
            .into_iter()
            .map(|route| {
                let slower = if route == Route::Netns { 1.3 } else { 1.0 };
                let mut s = Samples::default();
                for (name, _, _, r) in &configs {
                    let ops: BTreeMap<String, Vec<f64>> = base
                        .iter()
                        .map(|(op, ns)| ((*op).to_owned(), vec![ns * r * slower, ns * r * slower * 1.01]))
                        .collect();
                    s.wall.insert((*name).to_owned(), ops.clone());
                    s.cpu.insert((*name).to_owned(), ops);
                }
                (route, s)
            })
            .collect();
        let configs = configs
            .into_iter()
            .map(|(name, label, kind, _)| Config {
                name: name.to_owned(),
                label: label.to_owned(),
                kind,
                cg: PathBuf::from("/nonexistent"),
            })
            .collect();
        (Percall { configs, routes, audit_events: 0, ports: serde_json::json!({}) }, sizes)
    }

    #[test]
    fn draws_both_charts() {
        let (pc, sizes) = synthetic();
        let dir = std::env::temp_dir().join(format!("sbx-bench-charts-{}", std::process::id()));
        let files = write(&pc, &sizes, &dir).expect("charts drawn");
        assert_eq!(files.len(), FILES.len());
        for f in &files {
            let svg = std::fs::read_to_string(f).expect("an SVG file");
            assert!(svg.starts_with("<svg"), "{}", f.display());
            assert!(svg.contains("TCP connect+accept+close"), "{}", f.display());
            assert!(svg.contains("test host over a veth pair"), "{}", f.display());
        }
        let rules = std::fs::read_to_string(&files[0]).expect("read");
        assert!(rules.contains("no sandbox") && rules.contains("1M"), "legend and the 1,000,000-rule point");
        let ratios = std::fs::read_to_string(&files[1]).expect("read");
        assert!(ratios.contains("Landlock TCP connect rules"), "every configuration in the legend");
        if std::env::var_os("SBX_KEEP_CHARTS").is_none() {
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}
