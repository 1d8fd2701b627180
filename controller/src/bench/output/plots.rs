//! Plots with `plotters`, each as SVG and PNG: packets/s and CPU per packet against the
//! rule count for every path (one chart per frame size and flow count), the latency CDFs,
//! and bars for TCP throughput and new flows per second. Text needs a font: the PNGs use
//! DejaVu Sans (Debian's fonts-dejavu-core), registered from its file at run time.
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::bench::error::{BenchError, Result};
use crate::bench::report::{Report, summary};

/// Where the font is looked for, first found wins.
pub const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
];

const FONT: &str = "sans-serif";
const W: u32 = 900;
const H: u32 = 540;

fn palette(i: usize) -> RGBColor {
    [
        RGBColor(90, 90, 90),
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
    ][i % 6]
}

/// Registers the font once; an error names the package to install.
fn ensure_font() -> Result<()> {
    static DONE: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| {
        let path = FONT_PATHS
            .iter()
            .find(|p| Path::new(p).exists())
            .ok_or_else(|| {
                format!(
                    "no font for plot text (looked for {}): install Debian's fonts-dejavu-core",
                    FONT_PATHS.join(", ")
                )
            })?;
        let bytes = std::fs::read(path).map_err(|e| format!("{path}: {e}"))?;
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font(FONT, FontStyle::Normal, bytes)
            .map_err(|_| format!("{path}: not a usable font"))
    })
    .clone()
    .map_err(|detail| BenchError::Plot {
        file: "(font)".into(),
        detail,
    })
}

type DrawResult = std::result::Result<(), String>;

/// Draws `f` into `<dir>/<name>.svg` and `<dir>/<name>.png`; the files written.
fn both(
    dir: &Path,
    name: &str,
    f: &dyn Fn(&DrawingArea<SVGBackend, Shift>) -> DrawResult,
    g: &dyn Fn(&DrawingArea<BitMapBackend, Shift>) -> DrawResult,
) -> Result<Vec<PathBuf>> {
    let svg = dir.join(format!("{name}.svg"));
    let png = dir.join(format!("{name}.png"));
    let err = |file: &Path, detail: String| BenchError::Plot {
        file: file.display().to_string(),
        detail,
    };
    {
        let root = SVGBackend::new(&svg, (W, H)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&svg, e.to_string()))?;
        f(&root).map_err(|e| err(&svg, e))?;
        root.present().map_err(|e| err(&svg, e.to_string()))?;
    }
    {
        let root = BitMapBackend::new(&png, (W, H)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&png, e.to_string()))?;
        g(&root).map_err(|e| err(&png, e))?;
        root.present().map_err(|e| err(&png, e.to_string()))?;
    }
    Ok(vec![svg, png])
}

/// One line per path: (path, [(x index, median, min, max)]).
type Series = Vec<(String, Vec<(usize, f64, f64, f64)>)>;

fn lines<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    y_label: &str,
    x_labels: &[String],
    series: &Series,
) -> DrawResult {
    let y_max = series
        .iter()
        .flat_map(|(_, v)| v.iter().map(|p| p.3))
        .filter(|v| v.is_finite())
        .fold(0.0f64, f64::max)
        .max(1.0)
        * 1.15;
    let n = x_labels.len().max(1);
    let labels = x_labels.to_vec();
    let mut chart = ChartBuilder::on(root)
        .caption(title, (FONT, 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(-0.5f64..(n as f64 - 0.5), 0f64..y_max)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_labels(n)
        .x_label_formatter(&|x| {
            let i = x.round();
            if (x - i).abs() < 0.01 && i >= 0.0 {
                labels.get(i as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .x_desc("user rules in DOCKER-USER")
        .y_desc(y_label)
        .y_label_formatter(&|v| format!("{:.*}", usize::from(y_max < 10.0), v))
        .label_style((FONT, 14))
        .draw()
        .map_err(|e| e.to_string())?;
    for (i, (name, pts)) in series.iter().enumerate() {
        let color = palette(i);
        chart
            .draw_series(LineSeries::new(
                pts.iter().map(|p| (p.0 as f64, p.1)),
                color.stroke_width(2),
            ))
            .map_err(|e| e.to_string())?
            .label(name.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
        chart
            .draw_series(
                pts.iter()
                    .map(|p| Circle::new((p.0 as f64, p.1), 4, color.filled())),
            )
            .map_err(|e| e.to_string())?;
        chart
            .draw_series(pts.iter().map(|p| {
                PathElement::new(
                    vec![(p.0 as f64, p.2), (p.0 as f64, p.3)],
                    color.stroke_width(1),
                )
            }))
            .map_err(|e| e.to_string())?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font((FONT, 14))
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(|e| e.to_string())?;
    Ok(())
}

fn bars<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    y_label: &str,
    bars: &[(String, f64, f64, f64)],
) -> DrawResult {
    let y_max = bars
        .iter()
        .map(|b| b.3)
        .filter(|v| v.is_finite())
        .fold(0.0f64, f64::max)
        .max(1e-9)
        * 1.15;
    let n = bars.len().max(1);
    let names: Vec<String> = bars.iter().map(|b| b.0.clone()).collect();
    let mut chart = ChartBuilder::on(root)
        .caption(title, (FONT, 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(-0.5f64..(n as f64 - 0.5), 0f64..y_max)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n)
        .x_label_formatter(&|x| {
            let i = x.round();
            if (x - i).abs() < 0.01 && i >= 0.0 {
                names.get(i as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_desc(y_label)
        .y_label_formatter(&|v| format!("{:.*}", usize::from(y_max < 10.0), v))
        .label_style((FONT, 14))
        .draw()
        .map_err(|e| e.to_string())?;
    for (i, b) in bars.iter().enumerate() {
        let x = i as f64;
        let c = palette(i);
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [(x - 0.3, 0.0), (x + 0.3, b.1.max(0.0))],
                c.filled(),
            )))
            .map_err(|e| e.to_string())?;
        chart
            .draw_series(std::iter::once(PathElement::new(
                vec![(x, b.2), (x, b.3)],
                BLACK.stroke_width(1),
            )))
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn cdf<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    series: &[(String, Vec<(f64, f64)>)],
) -> DrawResult {
    // Up to the largest p99.9 (a tail beyond it would flatten the body).
    let x_max = series
        .iter()
        .filter_map(|(_, v)| v.iter().find(|p| p.1 >= 0.999).map(|p| p.0))
        .fold(10.0f64, f64::max)
        * 1.1;
    let x_min = series
        .iter()
        .filter_map(|(_, v)| v.first().map(|p| p.0))
        .fold(f64::INFINITY, f64::min)
        .clamp(1.0, x_max / 2.0)
        * 0.8;
    let mut chart = ChartBuilder::on(root)
        .caption("UDP request/response round trip, CDF", (FONT, 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((x_min..x_max).log_scale(), 0f64..1.0f64)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("round trip, µs (log scale)")
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_desc("fraction of requests")
        .label_style((FONT, 14))
        .draw()
        .map_err(|e| e.to_string())?;
    for (i, (name, pts)) in series.iter().enumerate() {
        let color = palette(i);
        chart
            .draw_series(LineSeries::new(
                pts.iter().copied().filter(|p| p.0 <= x_max && p.0 >= x_min),
                color.stroke_width(2),
            ))
            .map_err(|e| e.to_string())?
            .label(name.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font((FONT, 14))
        .position(SeriesLabelPosition::LowerRight)
        .draw()
        .map_err(|e| e.to_string())?;
    Ok(())
}

fn uniq<T: PartialEq + Clone>(it: impl Iterator<Item = T>) -> Vec<T> {
    let mut out: Vec<T> = Vec::new();
    for x in it {
        if !out.contains(&x) {
            out.push(x);
        }
    }
    out
}

/// Draws every plot the report has data for into `dir`; the files written.
pub fn write(r: &Report, dir: &Path) -> Result<Vec<PathBuf>> {
    ensure_font()?;
    let mut files = Vec::new();
    let rules = uniq(r.settings.rules.iter().copied());
    let x_labels: Vec<String> = rules.iter().map(|n| n.to_string()).collect();
    for size in uniq(r.rate.iter().map(|x| x.size)) {
        for flows in uniq(r.rate.iter().map(|x| x.flows)) {
            let mut pps: Series = Vec::new();
            let mut cpu: Series = Vec::new();
            for path in uniq(r.rate.iter().map(|x| x.path.clone())) {
                let (mut p, mut c) = (Vec::new(), Vec::new());
                for (i, n) in rules.iter().enumerate() {
                    // The bridge has no rules: its samples (taken at the first count) are
                    // drawn at every count, as the flat baseline.
                    let v: Vec<_> = r
                        .rate
                        .iter()
                        .filter(|x| {
                            x.path == path
                                && x.size == size
                                && x.flows == flows
                                && (x.rules == *n || path == "bridge")
                        })
                        .collect();
                    if v.is_empty() {
                        continue;
                    }
                    let (m, lo, hi) = summary(&v.iter().map(|x| x.pps / 1e3).collect::<Vec<_>>());
                    p.push((i, m, lo, hi));
                    // This process's CPU (generator + dataplane threads, softirq in their
                    // context): the whole machine's also counts whatever else runs.
                    let (m, lo, hi) =
                        summary(&v.iter().map(|x| x.process_ns_per_pkt).collect::<Vec<_>>());
                    c.push((i, m, lo, hi));
                }
                pps.push((path.clone(), p));
                cpu.push((path, c));
            }
            let t1 = format!("UDP {size} B, {flows} flows: packets/s delivered");
            files.extend(both(
                dir,
                &format!("pps-{size}B-{flows}flows"),
                &|a| lines(a, &t1, "kpps", &x_labels, &pps),
                &|a| lines(a, &t1, "kpps", &x_labels, &pps),
            )?);
            let t2 = format!("UDP {size} B, {flows} flows: CPU per packet (generator + path)");
            files.extend(both(
                dir,
                &format!("cpu-{size}B-{flows}flows"),
                &|a| lines(a, &t2, "ns per packet", &x_labels, &cpu),
                &|a| lines(a, &t2, "ns per packet", &x_labels, &cpu),
            )?);
        }
    }
    if !r.latency.is_empty() {
        let series: Vec<(String, Vec<(f64, f64)>)> = uniq(r.latency.iter().map(|x| x.path.clone()))
            .into_iter()
            .filter_map(|p| {
                // The round with the median p99 stands for the path.
                let mut v: Vec<_> = r.latency.iter().filter(|x| x.path == p).collect();
                v.sort_by(|a, b| a.p99_us.total_cmp(&b.p99_us));
                v.get(v.len() / 2).map(|x| (p.clone(), x.cdf.clone()))
            })
            .collect();
        files.extend(both(dir, "latency-cdf", &|a| cdf(a, &series), &|a| {
            cdf(a, &series)
        })?);
    }
    let bar_of =
        |paths: Vec<String>, f: &dyn Fn(&str) -> Vec<f64>| -> Vec<(String, f64, f64, f64)> {
            paths
                .into_iter()
                .map(|p| {
                    let (m, lo, hi) = summary(&f(&p));
                    (p, m, lo, hi)
                })
                .collect()
        };
    if !r.tcp.is_empty() {
        let b = bar_of(uniq(r.tcp.iter().map(|x| x.path.clone())), &|p| {
            r.tcp
                .iter()
                .filter(|x| x.path == p)
                .map(|x| x.gbps)
                .collect()
        });
        let t = "TCP bulk, client → server (iperf3)";
        files.extend(both(dir, "tcp", &|a| bars(a, t, "Gbit/s", &b), &|a| {
            bars(a, t, "Gbit/s", &b)
        })?);
    }
    if !r.new_flows.is_empty() {
        let paths = uniq(r.new_flows.iter().map(|x| x.path.clone()));
        let tcp = bar_of(paths.clone(), &|p| {
            r.new_flows
                .iter()
                .filter(|x| x.path == p)
                .map(|x| x.tcp_per_s)
                .collect()
        });
        let udp = bar_of(paths, &|p| {
            r.new_flows
                .iter()
                .filter(|x| x.path == p)
                .map(|x| x.udp_per_s)
                .collect()
        });
        let (t1, t2) = (
            "New TCP connections (connect + close)",
            "New UDP flows (first packet answered)",
        );
        files.extend(both(
            dir,
            "newflows-tcp",
            &|a| bars(a, t1, "per second", &tcp),
            &|a| bars(a, t1, "per second", &tcp),
        )?);
        files.extend(both(
            dir,
            "newflows-udp",
            &|a| bars(a, t2, "per second", &udp),
            &|a| bars(a, t2, "per second", &udp),
        )?);
    }
    Ok(files)
}
