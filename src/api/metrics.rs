//! The Prometheus text exposition of `/metrics`: per-LUN SCSI counters and latency histograms,
//! in-flight commands, sessions, and every numeric backend statistic (S3 requests, bytes,
//! errors, dirty cache bytes, ...).

use std::fmt::Write;

use serde_json::Value;

use crate::scsi::metrics::{ClassSnapshot, LATENCY_BUCKETS_US};
use crate::server::Registry;

/// Renders every metric of the registry's targets.
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    let sessions = registry.sessions();
    header(&mut out, "rtgt_sessions", "gauge", "Sessions logged in.");
    let _ = writeln!(out, "rtgt_sessions {}", sessions.len());

    let luns: Vec<_> = registry
        .targets()
        .into_iter()
        .flat_map(|t| t.scsi.luns().into_iter().map(move |(n, lu)| (t.name.clone(), n, lu)))
        .collect();
    header(&mut out, "rtgt_lun_commands_total", "counter", "SCSI commands completed, by class.");
    header(
        &mut out,
        "rtgt_lun_command_errors_total",
        "counter",
        "SCSI commands that ended with a status other than GOOD.",
    );
    header(&mut out, "rtgt_lun_bytes_read_total", "counter", "Bytes returned by read commands.");
    header(&mut out, "rtgt_lun_bytes_written_total", "counter", "Bytes accepted by write commands.");
    header(&mut out, "rtgt_lun_queue_depth", "gauge", "Commands in flight on the LUN.");
    header(&mut out, "rtgt_lun_command_latency_seconds", "histogram", "Command latency, by class.");
    header(
        &mut out,
        "rtgt_backend",
        "gauge",
        "Numeric statistics of the backing store (S3 requests, bytes, errors, cache).",
    );
    for (target, lun, lu) in &luns {
        let labels = format!("target=\"{}\",lun=\"{lun}\"", escape(target));
        let m = lu.metrics.snapshot();
        for (class, c) in [("read", &m.read), ("write", &m.write), ("other", &m.other)] {
            let l = format!("{labels},class=\"{class}\"");
            let _ = writeln!(out, "rtgt_lun_commands_total{{{l}}} {}", c.ops);
            let _ = writeln!(out, "rtgt_lun_command_errors_total{{{l}}} {}", c.errors);
            histogram(&mut out, &l, c);
        }
        let _ = writeln!(out, "rtgt_lun_bytes_read_total{{{labels}}} {}", m.bytes_read);
        let _ = writeln!(out, "rtgt_lun_bytes_written_total{{{labels}}} {}", m.bytes_written);
        let _ = writeln!(out, "rtgt_lun_queue_depth{{{labels}}} {}", m.in_flight);
        let mut stats = Vec::new();
        flatten("", &serde_json::to_value(lu.store().stats()).unwrap_or_default(), &mut stats);
        for (name, v) in stats {
            let _ = writeln!(out, "rtgt_backend{{{labels},stat=\"{}\"}} {v}", escape(&name));
        }
    }
    out
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn histogram(out: &mut String, labels: &str, c: &ClassSnapshot) {
    for (i, count) in c.buckets.iter().enumerate() {
        let le = LATENCY_BUCKETS_US.get(i).map_or("+Inf".to_string(), |us| format!("{}", *us as f64 / 1e6));
        let _ = writeln!(out, "rtgt_lun_command_latency_seconds_bucket{{{labels},le=\"{le}\"}} {count}");
    }
    let _ = writeln!(out, "rtgt_lun_command_latency_seconds_sum{{{labels}}} {}", c.latency_sum_seconds);
    let _ = writeln!(out, "rtgt_lun_command_latency_seconds_count{{{labels}}} {}", c.ops);
}

/// Numeric leaves of a JSON value, named by their dotted path.
fn flatten(prefix: &str, v: &Value, out: &mut Vec<(String, f64)>) {
    match v {
        Value::Number(n) => {
            if let Some(f) = n.as_f64() {
                out.push((prefix.to_string(), f));
            }
        }
        Value::Bool(b) => out.push((prefix.to_string(), if *b { 1.0 } else { 0.0 })),
        Value::Object(m) => {
            for (k, v) in m {
                let name = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                flatten(&name, v, out);
            }
        }
        _ => {}
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_statistics_flatten_to_dotted_names() {
        let v = serde_json::json!({"dirty_bytes": 5, "s3": {"get": 2, "errors": {"put": 1}}, "volume": "s3://b/p"});
        let mut out = Vec::new();
        flatten("", &v, &mut out);
        out.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(out, vec![("dirty_bytes".into(), 5.0), ("s3.errors.put".into(), 1.0), ("s3.get".into(), 2.0)]);
    }
}
