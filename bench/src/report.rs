//! The results: one row per figure (benchmark | figure | baseline | ratio |
//! target | met?), details per benchmark, the failures, printed as a
//! Markdown table and written as JSON.

use serde_json::{Map, Value, json};

/// One line of the results table.
#[derive(Debug, Clone)]
pub struct Row {
    pub benchmark: String,
    pub figure: String,
    pub baseline: String,
    pub ratio: String,
    pub target: String,
    /// `None` when there is no target to meet.
    pub met: Option<bool>,
}

impl Row {
    /// A row without baseline, ratio or target.
    pub fn info(benchmark: &str, figure: String) -> Self {
        Self {
            benchmark: benchmark.to_owned(),
            figure,
            baseline: "—".into(),
            ratio: "—".into(),
            target: "—".into(),
            met: None,
        }
    }
}

#[derive(Default)]
pub struct Report {
    pub rows: Vec<Row>,
    /// Every measured value, by benchmark.
    pub details: Map<String, Value>,
    /// Benchmarks (or parts) that could not run or failed their checks.
    pub failures: Vec<(String, String)>,
    /// Machine, services and settings.
    pub environment: Value,
}

impl Report {
    pub fn push(&mut self, row: Row) {
        self.rows.push(row);
    }

    pub fn detail(&mut self, benchmark: &str, key: &str, value: Value) {
        let entry = self
            .details
            .entry(benchmark.to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(map) = entry {
            map.insert(key.to_owned(), value);
        }
    }

    pub fn fail(&mut self, benchmark: &str, error: &anyhow::Error) {
        eprintln!("\n!! {benchmark} FAILED: {error:#}\n");
        self.failures
            .push((benchmark.to_owned(), format!("{error:#}")));
    }

    /// The results as a Markdown table (paste-able into BENCHMARKS.md).
    pub fn table(&self) -> String {
        let header = ["benchmark", "figure", "baseline", "ratio", "target", "met?"];
        let cells: Vec<[String; 6]> = self
            .rows
            .iter()
            .map(|r| {
                [
                    r.benchmark.clone(),
                    r.figure.clone(),
                    r.baseline.clone(),
                    r.ratio.clone(),
                    r.target.clone(),
                    match r.met {
                        Some(true) => "yes".into(),
                        Some(false) => "NO".into(),
                        None => "—".into(),
                    },
                ]
            })
            .collect();
        let mut widths = header.map(|h| h.chars().count());
        for row in &cells {
            for (i, cell) in row.iter().enumerate() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
        let line = |cells: &[String]| -> String {
            let padded: Vec<String> = cells
                .iter()
                .enumerate()
                .map(|(i, c)| format!("{c}{}", " ".repeat(widths[i] - c.chars().count())))
                .collect();
            format!("| {} |", padded.join(" | "))
        };
        let mut out = String::new();
        out.push_str(&line(&header.map(str::to_owned)[..]));
        out.push('\n');
        let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
        out.push_str(&format!("|-{}-|", rule.join("-|-")));
        out.push('\n');
        for row in &cells {
            out.push_str(&line(&row[..]));
            out.push('\n');
        }
        out
    }

    pub fn to_json(&self) -> Value {
        let rows: Vec<Value> = self
            .rows
            .iter()
            .map(|r| {
                json!({
                    "benchmark": r.benchmark, "figure": r.figure, "baseline": r.baseline,
                    "ratio": r.ratio, "target": r.target, "met": r.met,
                })
            })
            .collect();
        let failures: Vec<Value> = self
            .failures
            .iter()
            .map(|(b, e)| json!({ "benchmark": b, "error": e }))
            .collect();
        json!({
            "environment": self.environment,
            "rows": rows,
            "details": Value::Object(self.details.clone()),
            "failures": failures,
        })
    }
}

/// `12345.6` → `12,346`.
pub fn thousands(value: f64) -> String {
    let rounded = value.round();
    let negative = rounded < 0.0;
    let digits = format!("{:.0}", rounded.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if negative { format!("-{out}") } else { out }
}

/// A rate per second, e.g. `15,234/s`.
pub fn per_second(value: f64) -> String {
    format!("{}/s", thousands(value))
}

/// `figure / baseline` as `0.63x`, or `—` without a baseline.
pub fn ratio(figure: f64, baseline: f64) -> (String, Option<f64>) {
    if baseline > 0.0 && figure.is_finite() && baseline.is_finite() {
        let r = figure / baseline;
        (format!("{r:.2}x"), Some(r))
    } else {
        ("—".into(), None)
    }
}

/// Microseconds as milliseconds with one decimal.
pub fn millis(us: f64) -> String {
    format!("{:.1} ms", us / 1000.0)
}

/// Seconds with one decimal.
pub fn seconds(secs: f64) -> String {
    format!("{secs:.1} s")
}

/// Nearest-rank percentile of sorted values (`p` in 0..=100).
pub fn percentile<T: Copy>(sorted: &[T], p: f64) -> Option<T> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Mean of values.
pub fn mean(values: &[f64]) -> f64 {
    if values.is_empty() {
        0.0
    } else {
        values.iter().sum::<f64>() / values.len() as f64
    }
}
