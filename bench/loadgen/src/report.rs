//! Latency histograms and the two outputs of a run: a human summary and one JSON line.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{json, Map, Value};

/// Latencies in microseconds, 1 µs to 10 min, 3 significant figures.
pub struct Latency(Histogram<u64>);

impl Default for Latency {
    fn default() -> Self {
        Self(Histogram::new_with_bounds(1, 600_000_000, 3).expect("these bounds are valid"))
    }
}

impl Latency {
    pub fn record(&mut self, elapsed: Duration) {
        let micros = (elapsed.as_micros() as u64).clamp(1, 600_000_000);
        self.0.saturating_record(micros);
    }

    pub fn merge(&mut self, other: &Latency) {
        // Same bounds on both sides, so adding can't fail.
        let _ = self.0.add(&other.0);
    }

    pub fn count(&self) -> u64 {
        self.0.len()
    }

    /// The latency at `quantile` (0.5, 0.99, …) in milliseconds; 0 when nothing was recorded.
    pub fn ms(&self, quantile: f64) -> f64 {
        if self.0.is_empty() {
            return 0.0;
        }
        round(self.0.value_at_quantile(quantile) as f64 / 1000.0)
    }

    /// `{"p50","p90","p99","max","count"}` in milliseconds.
    pub fn json(&self) -> Value {
        json!({
            "p50_ms": self.ms(0.50),
            "p90_ms": self.ms(0.90),
            "p99_ms": self.ms(0.99),
            "max_ms": if self.0.is_empty() { 0.0 } else { round(self.0.max() as f64 / 1000.0) },
            "count": self.count(),
        })
    }

    pub fn human(&self) -> String {
        format!(
            "p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  max {:.2} ms  (n={})",
            self.ms(0.50),
            self.ms(0.90),
            self.ms(0.99),
            if self.0.is_empty() { 0.0 } else { self.0.max() as f64 / 1000.0 },
            self.count()
        )
    }
}

pub fn round(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// What a scenario found: lines for people, fields for machines.
pub struct Report {
    scenario: &'static str,
    lines: Vec<String>,
    fields: Map<String, Value>,
}

impl Report {
    pub fn new(scenario: &'static str) -> Self {
        Self { scenario, lines: Vec::new(), fields: Map::new() }
    }

    pub fn line(&mut self, line: impl Into<String>) -> &mut Self {
        self.lines.push(line.into());
        self
    }

    pub fn field(&mut self, key: &str, value: impl Into<Value>) -> &mut Self {
        self.fields.insert(key.to_owned(), value.into());
        self
    }

    /// The machine's load average (see [`load_average`]) `before` the measurement and now,
    /// as a line and as the fields `load_before` and `load_after`.
    pub fn machine_load(&mut self, before: Option<f64>) -> &mut Self {
        let after = load_average();
        let shown = |load: Option<f64>| load.map_or("?".into(), |l| l.to_string());
        self.line(format!(
            "machine load (1 min) {} before the measurement, {} after",
            shown(before),
            shown(after)
        ))
        .field("load_before", before)
        .field("load_after", after)
    }

    pub fn print(&self) {
        println!("== loadgen {}", self.scenario);
        for line in &self.lines {
            println!("  {line}");
        }
        let mut fields = self.fields.clone();
        fields.insert("scenario".into(), self.scenario.into());
        println!("{}", Value::Object(fields));
    }
}

/// Resident set size of a process in KiB, from /proc/<pid>/status.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

/// User plus system CPU seconds of process `pid` so far, from /proc/<pid>/stat.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start at field 3, the state;
    // utime and stime are fields 14 and 15.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / clock_ticks() as f64)
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 on Linux when it can't be asked).
fn clock_ticks() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|text| text.trim().parse().ok())
        .filter(|ticks| *ticks > 0)
        .unwrap_or(100)
}

/// The machine's load average over the last minute, from /proc/loadavg: how busy the shared
/// machine was around a measurement.
pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg").ok()?.split_whitespace().next()?.parse().ok()
}
