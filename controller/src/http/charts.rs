//! Inline SVG charts drawn on the server: a time series per GPU (mean line over a min–max
//! band), its limits as dashed lines, and events (XID, ECC, GPU lost) as marks on the time
//! axis. Colours come from the stylesheet's classes, so dark and light schemes both apply and
//! a chart is never told apart by colour alone (limits are dashed and labelled, events carry
//! their names).

use maud::{Markup, html};

/// One bucket of a series: seconds since the Unix epoch, and the bucket's statistics.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Point {
    /// Time, seconds since the epoch.
    pub at: f64,
    /// Mean.
    pub mean: f64,
    /// Smallest sample.
    pub min: f64,
    /// Largest sample.
    pub max: f64,
}

/// A limit drawn across a chart.
#[derive(Clone, Debug, PartialEq)]
pub struct Limit {
    /// The value.
    pub value: f64,
    /// What sets it (`gate rule temp: < 88`).
    pub label: String,
}

/// An event on the time axis.
#[derive(Clone, Debug, PartialEq)]
pub struct Mark {
    /// Time, seconds since the epoch.
    pub at: f64,
    /// What happened (`XID 79`).
    pub label: String,
}

/// One small chart.
#[derive(Clone, Debug, Default)]
pub struct Chart {
    /// Its title (`GPU 3`).
    pub title: String,
    /// The unit of the values (`°C`).
    pub unit: String,
    /// The series, in time order.
    pub points: Vec<Point>,
    /// Limits.
    pub limits: Vec<Limit>,
    /// Events.
    pub marks: Vec<Mark>,
}

/// The most points a chart draws: neighbours merge beyond it (a pixel or so each).
pub const MAX_POINTS: usize = 240;

/// At most `max` points: consecutive ones merged in equal groups, keeping the group's
/// smallest and largest sample and the mean of its means.
pub fn downsample(points: &[Point], max: usize) -> Vec<Point> {
    if points.len() <= max || max == 0 {
        return points.to_vec();
    }
    let group = points.len().div_ceil(max);
    points
        .chunks(group)
        .map(|chunk| Point {
            at: chunk[0].at,
            mean: chunk.iter().map(|p| p.mean).sum::<f64>() / chunk.len() as f64,
            min: chunk.iter().map(|p| p.min).fold(f64::INFINITY, f64::min),
            max: chunk
                .iter()
                .map(|p| p.max)
                .fold(f64::NEG_INFINITY, f64::max),
        })
        .collect()
}

const WIDTH: f64 = 260.0;
const HEIGHT: f64 = 120.0;
const LEFT: f64 = 36.0;
const RIGHT: f64 = 6.0;
const TOP: f64 = 16.0;
const BOTTOM: f64 = 18.0;

fn nice(value: f64) -> String {
    if value.abs() >= 100.0 || value.fract() == 0.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.1}")
    }
}

fn clock(at: f64) -> String {
    chrono::DateTime::from_timestamp(at as i64, 0)
        .map_or_else(String::new, |at| at.format("%H:%M:%S").to_string())
}

/// The chart as inline SVG.
pub fn svg(chart: &Chart) -> Markup {
    let mut chart = chart.clone();
    chart.points.sort_by(|a, b| a.at.total_cmp(&b.at));
    chart.points = downsample(&chart.points, MAX_POINTS);
    let chart = &chart;
    let described = format!(
        "{}: {} points{}{}",
        chart.title,
        chart.points.len(),
        if chart.limits.is_empty() {
            String::new()
        } else {
            format!(
                ", limits {}",
                chart
                    .limits
                    .iter()
                    .map(|limit| nice(limit.value))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        },
        if chart.marks.is_empty() {
            String::new()
        } else {
            format!(
                ", events {}",
                chart
                    .marks
                    .iter()
                    .map(|mark| mark.label.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
    );
    let (mut x0, mut x1) = (f64::INFINITY, f64::NEG_INFINITY);
    let (mut y0, mut y1) = (f64::INFINITY, f64::NEG_INFINITY);
    for point in &chart.points {
        x0 = x0.min(point.at);
        x1 = x1.max(point.at);
        y0 = y0.min(point.min);
        y1 = y1.max(point.max);
    }
    for mark in &chart.marks {
        x0 = x0.min(mark.at);
        x1 = x1.max(mark.at);
    }
    for limit in &chart.limits {
        y0 = y0.min(limit.value);
        y1 = y1.max(limit.value);
    }
    if !(x0.is_finite() && y0.is_finite()) {
        return html! {
            svg.chart viewBox={ "0 0 " (WIDTH) " " (HEIGHT) } role="img" aria-label=(described) {
                title { (described) }
                text x=(LEFT) y=(TOP - 4.0) class="ct" { (chart.title) }
                text x=(LEFT) y=(HEIGHT / 2.0) class="muted" { "no samples" }
            }
        };
    }
    if x1 - x0 < 1.0 {
        x1 = x0 + 1.0;
    }
    let pad = ((y1 - y0) * 0.1).max(1.0);
    y0 = if y0 >= 0.0 {
        (y0 - pad).max(0.0)
    } else {
        y0 - pad
    };
    y1 += pad;
    let x = |at: f64| LEFT + (at - x0) / (x1 - x0) * (WIDTH - LEFT - RIGHT);
    let y = |value: f64| TOP + (y1 - value) / (y1 - y0) * (HEIGHT - TOP - BOTTOM);
    let line: Vec<String> = chart
        .points
        .iter()
        .map(|p| format!("{:.1},{:.1}", x(p.at), y(p.mean)))
        .collect();
    let band: Vec<String> = chart
        .points
        .iter()
        .map(|p| format!("{:.1},{:.1}", x(p.at), y(p.max)))
        .chain(
            chart
                .points
                .iter()
                .rev()
                .map(|p| format!("{:.1},{:.1}", x(p.at), y(p.min))),
        )
        .collect();
    let bottom = HEIGHT - BOTTOM;
    html! {
        svg.chart viewBox={ "0 0 " (WIDTH) " " (HEIGHT) } role="img" aria-label=(described) {
            title { (described) }
            text x=(LEFT) y=(TOP - 4.0) class="ct" { (chart.title) " (" (chart.unit) ")" }
            line.ax x1=(LEFT) y1=(TOP) x2=(LEFT) y2=(bottom) {}
            line.ax x1=(LEFT) y1=(bottom) x2=(WIDTH - RIGHT) y2=(bottom) {}
            text x=(LEFT - 3.0) y=(TOP + 8.0) text-anchor="end" { (nice(y1)) }
            text x=(LEFT - 3.0) y=(bottom) text-anchor="end" { (nice(y0)) }
            text x=(LEFT) y=(HEIGHT - 4.0) { (clock(x0)) }
            text x=(WIDTH - RIGHT) y=(HEIGHT - 4.0) text-anchor="end" { (clock(x1)) }
            @if chart.points.len() > 1 {
                polygon.band points=(band.join(" ")) {}
                polyline.mean points=(line.join(" ")) {}
            } @else {
                @for p in &chart.points { circle.mean cx=(format!("{:.1}", x(p.at))) cy=(format!("{:.1}", y(p.mean))) r="2" {} }
            }
            @for limit in &chart.limits {
                line.lim x1=(LEFT) y1=(format!("{:.1}", y(limit.value))) x2=(WIDTH - RIGHT) y2=(format!("{:.1}", y(limit.value))) {
                    title { (limit.label) }
                }
                text.lt x=(WIDTH - RIGHT) y=(format!("{:.1}", y(limit.value) - 2.0)) text-anchor="end" { "limit " (nice(limit.value)) }
            }
            @for mark in &chart.marks {
                line.ev x1=(format!("{:.1}", x(mark.at))) y1=(TOP) x2=(format!("{:.1}", x(mark.at))) y2=(bottom) {
                    title { (mark.label) " at " (clock(mark.at)) }
                }
                text.et x=(format!("{:.1}", x(mark.at) + 2.0)) y=(TOP + 8.0) { (mark.label) }
            }
        }
    }
}

/// Charts side by side: one per GPU (small multiples).
pub fn multiples(charts: &[Chart]) -> Markup {
    html! { div.multiples { @for chart in charts { figure { (svg(chart)) } } } }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_series_merge_keeping_their_extremes() {
        let points: Vec<Point> = (0..1000)
            .map(|i| Point {
                at: f64::from(i),
                mean: 50.0,
                min: if i == 500 { 1.0 } else { 40.0 },
                max: if i == 777 { 99.0 } else { 60.0 },
            })
            .collect();
        let merged = downsample(&points, MAX_POINTS);
        assert!(merged.len() <= MAX_POINTS, "{}", merged.len());
        assert!(merged.iter().any(|p| p.min == 1.0) && merged.iter().any(|p| p.max == 99.0));
        assert_eq!(downsample(&points[..10], MAX_POINTS).len(), 10);
    }

    #[test]
    fn a_chart_draws_its_series_limit_and_events() {
        let chart = Chart {
            title: "GPU 0".into(),
            unit: "°C".into(),
            points: (0..5)
                .map(|i| Point {
                    at: 1_700_000_000.0 + f64::from(i) * 10.0,
                    mean: 60.0 + f64::from(i),
                    min: 58.0,
                    max: 70.0,
                })
                .collect(),
            limits: vec![Limit {
                value: 88.0,
                label: "gate rule temp".into(),
            }],
            marks: vec![Mark {
                at: 1_700_000_020.0,
                label: "XID 79".into(),
            }],
        };
        let svg = svg(&chart).into_string();
        assert!(svg.contains("<polyline class=\"mean\""), "{svg}");
        assert!(svg.contains("limit 88"), "{svg}");
        assert!(svg.contains("XID 79"), "{svg}");
        assert!(svg.contains("role=\"img\""), "{svg}");
        let empty = super::svg(&Chart::default()).into_string();
        assert!(empty.contains("no samples"), "{empty}");
    }
}
