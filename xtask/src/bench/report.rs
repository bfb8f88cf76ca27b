//! Results: medians and spreads of the runs, the table, the JSON report and the SVG chart.

use super::*;

pub(crate) struct Row {
    pub(crate) backing: Backing,
    pub(crate) workload: usize,
    pub(crate) client: Client,
    pub(crate) rtgt: Vec<Result<Sample, String>>,
    pub(crate) tgtd: Vec<Result<Sample, String>>,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct Summary {
    pub(crate) iops: Option<f64>,
    pub(crate) mb_s: Option<f64>,
    pub(crate) p50_us: Option<f64>,
    pub(crate) p99_us: Option<f64>,
    pub(crate) cpu_us: Option<f64>,
    /// The client's share of one CPU (libiscsi-load).
    pub(crate) client_cpu: Option<f64>,
    /// (max - min) / median of the IOPS of the runs.
    pub(crate) spread: Option<f64>,
    pub(crate) failed: usize,
}

pub(crate) fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 })
}

pub(crate) fn summarize(samples: &[Result<Sample, String>]) -> Summary {
    let ok: Vec<&Sample> = samples.iter().filter_map(|s| s.as_ref().ok()).collect();
    let iops: Vec<f64> = ok.iter().map(|s| s.iops).collect();
    let m = median(iops.clone());
    let spread = match (m, iops.iter().copied().reduce(f64::max), iops.iter().copied().reduce(f64::min)) {
        (Some(m), Some(max), Some(min)) if m > 0.0 => Some((max - min) / m),
        _ => None,
    };
    Summary {
        iops: m,
        mb_s: median(ok.iter().map(|s| s.mb_s).collect()),
        p50_us: median(ok.iter().filter_map(|s| s.p50_us).collect()),
        p99_us: median(ok.iter().filter_map(|s| s.p99_us).collect()),
        cpu_us: median(ok.iter().filter_map(|s| s.cpu_us).collect()),
        client_cpu: median(ok.iter().filter_map(|s| s.client_cpu).collect()),
        spread,
        failed: samples.len() - ok.len(),
    }
}

impl Row {
    pub(crate) fn ratio(&self) -> Option<f64> {
        let (r, t) = (summarize(&self.rtgt).iops?, summarize(&self.tgtd).iops?);
        (t > 0.0).then(|| r / t)
    }
    pub(crate) fn label(&self) -> String {
        format!("{} · {} · {}", WORKLOADS[self.workload].name, self.client.name(), self.backing.name())
    }
}

pub(crate) fn opt(v: Option<f64>, decimals: usize) -> String {
    v.map(|x| format!("{x:.decimals$}")).unwrap_or_else(|| "-".into())
}

/// The client's CPU share under each target ("100% / 83%"), where the client reports it.
fn client_cpu(rtgt: &Summary, tgtd: &Summary) -> String {
    let percent = |s: &Summary| s.client_cpu.map(|c| format!("{:.0}%", 100.0 * c)).unwrap_or_else(|| "-".into());
    match (rtgt.client_cpu, tgtd.client_cpu) {
        (None, None) => "-".into(),
        _ => format!("{} / {}", percent(rtgt), percent(tgtd)),
    }
}

pub(crate) fn table(rows: &[Row]) -> String {
    let mut t = String::from(
        "| workload | client | backing | rtgt IOPS | rtgt MB/s | rtgt p50 µs | rtgt p99 µs | rtgt CPU µs/cmd | tgtd IOPS | tgtd MB/s | tgtd p50 µs | tgtd p99 µs | tgtd CPU µs/cmd | client CPU rtgt / tgtd | rtgt/tgtd | spread |\n\
         |---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for row in rows {
        let (r, g) = (summarize(&row.rtgt), summarize(&row.tgtd));
        let failed = |s: &Summary| if s.failed > 0 { format!(" ({} failed)", s.failed) } else { String::new() };
        let spread = match (r.spread, g.spread) {
            (Some(a), Some(b)) => format!("{:.0}%", 100.0 * a.max(b)),
            _ => "-".into(),
        };
        let _ = writeln!(
            t,
            "| {} | {} | {} | {}{} | {} | {} | {} | {} | {}{} | {} | {} | {} | {} | {} | {} | {} |",
            WORKLOADS[row.workload].name,
            row.client.name(),
            row.backing.name(),
            opt(r.iops, 0),
            failed(&r),
            opt(r.mb_s, 1),
            opt(r.p50_us, 0),
            opt(r.p99_us, 0),
            opt(r.cpu_us, 1),
            opt(g.iops, 0),
            failed(&g),
            opt(g.mb_s, 1),
            opt(g.p50_us, 0),
            opt(g.p99_us, 0),
            opt(g.cpu_us, 1),
            client_cpu(&r, &g),
            row.ratio().map(|x| format!("{x:.2}x")).unwrap_or_else(|| "-".into()),
            spread,
        );
    }
    t
}

/// A number as the report gives it: rounded to 3 decimals; none (or not finite) is null.
pub(crate) fn json_num(v: Option<f64>) -> serde_json::Value {
    match v {
        Some(x) if x.is_finite() => serde_json::json!((x * 1000.0).round() / 1000.0),
        _ => serde_json::Value::Null,
    }
}

pub(crate) fn json_side(samples: &[Result<Sample, String>]) -> serde_json::Value {
    let s = summarize(samples);
    let runs: Vec<serde_json::Value> = samples
        .iter()
        .map(|r| match r {
            Ok(x) => serde_json::json!({
                "iops": json_num(Some(x.iops)),
                "mb_per_s": json_num(Some(x.mb_s)),
                "p50_us": json_num(x.p50_us),
                "p99_us": json_num(x.p99_us),
                "cpu_us_per_command": json_num(x.cpu_us),
                "client_cpu": json_num(x.client_cpu),
            }),
            Err(e) => serde_json::json!({ "error": e }),
        })
        .collect();
    serde_json::json!({
        "iops": json_num(s.iops),
        "mb_per_s": json_num(s.mb_s),
        "p50_us": json_num(s.p50_us),
        "p99_us": json_num(s.p99_us),
        "cpu_us_per_command": json_num(s.cpu_us),
        "client_cpu": json_num(s.client_cpu),
        "spread": json_num(s.spread),
        "runs": runs,
    })
}

pub(crate) struct Report<'a> {
    pub(crate) options: &'a Options,
    pub(crate) rows: &'a [Row],
    pub(crate) loopback: &'a Loopback,
    pub(crate) notes: &'a [String],
}

pub(crate) fn json(r: &Report) -> String {
    let results: Vec<serde_json::Value> = r
        .rows
        .iter()
        .map(|row| {
            let w = &WORKLOADS[row.workload];
            serde_json::json!({
                "workload": w.name,
                "pattern": w.pattern,
                "block_size": w.block_size,
                "queue_depth": w.queue_depth,
                "client": row.client.name(),
                "backing": row.backing.name(),
                "ratio": json_num(row.ratio()),
                "rtgt": json_side(&row.rtgt),
                "tgtd": json_side(&row.tgtd),
            })
        })
        .collect();
    let report = serde_json::json!({
        "seconds_per_run": r.options.seconds,
        "runs": r.options.runs,
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "lun_bytes": LUN_SIZE,
        "loopback": { "method": r.loopback.method, "mb_per_s": json_num(r.loopback.mb_s) },
        "notes": r.notes,
        "results": results,
    });
    serde_json::to_string_pretty(&report).expect("a report serializes") + "\n"
}

pub(crate) fn xml(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// A horizontal bar chart of the rtgt/tgtd IOPS ratios, with the parity line at 1.
pub(crate) fn svg(rows: &[Row], title: &str) -> String {
    let (label_w, bar_w, row_h, top) = (300.0, 560.0, 22.0, 56.0);
    let ratios: Vec<Option<f64>> = rows.iter().map(Row::ratio).collect();
    let max = ratios.iter().flatten().copied().fold(2.0f64, f64::max).ceil();
    let x = |r: f64| label_w + bar_w * r / max;
    let height = top + row_h * rows.len() as f64 + 40.0;
    let width = label_w + bar_w + 80.0;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"10\" y=\"20\" font-size=\"15\" font-weight=\"bold\">rtgt / tgtd, median IOPS ratio (right of the line: rtgt faster)</text>\n\
         <text x=\"10\" y=\"38\" fill=\"#555\">{}</text>\n",
        xml(title)
    );
    // Grid every 0.5.
    let mut g = 0.0;
    while g <= max + 1e-9 {
        let gx = x(g);
        let _ = writeln!(
            s,
            "<line x1=\"{gx:.1}\" y1=\"{:.1}\" x2=\"{gx:.1}\" y2=\"{:.1}\" stroke=\"#ddd\"/><text x=\"{gx:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#555\">{g:.1}</text>",
            top - 8.0,
            top + row_h * rows.len() as f64,
            top + row_h * rows.len() as f64 + 16.0
        );
        g += 0.5;
    }
    for (i, (row, ratio)) in rows.iter().zip(&ratios).enumerate() {
        let y = top + row_h * i as f64;
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            label_w - 8.0,
            y + row_h * 0.65,
            xml(&row.label())
        );
        match ratio {
            Some(r) => {
                let color = if *r >= 1.0 { "#3a8f4b" } else { "#c0504d" };
                let _ = writeln!(
                    s,
                    "<rect x=\"{label_w}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{color}\"/><text x=\"{:.1}\" y=\"{:.1}\">{r:.2}x</text>",
                    y + 3.0,
                    (x(*r) - label_w).max(1.0),
                    row_h - 6.0,
                    x(*r) + 4.0,
                    y + row_h * 0.65
                );
            }
            None => {
                let _ = writeln!(
                    s,
                    "<text x=\"{:.1}\" y=\"{:.1}\" fill=\"#c0504d\">no result</text>",
                    label_w + 4.0,
                    y + row_h * 0.65
                );
            }
        }
    }
    let one = x(1.0);
    let _ = writeln!(
        s,
        "<line x1=\"{one:.1}\" y1=\"{:.1}\" x2=\"{one:.1}\" y2=\"{:.1}\" stroke=\"black\" stroke-width=\"1.5\"/>\n</svg>",
        top - 8.0,
        top + row_h * rows.len() as f64
    );
    s
}
