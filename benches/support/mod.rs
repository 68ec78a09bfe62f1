//! Benchmark plumbing that knows nothing of overlay's insides: running the real binary,
//! reading its memory from /proc, percentiles, the results table and the SVG chart; and
//! [`relay`], the relay's figures (which do know its routes and hub).

#![allow(dead_code)]

pub mod relay;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One measured figure, its floor, and whether it meets it.
pub struct Figure {
    pub section: &'static str,
    pub name: String,
    pub value: f64,
    pub unit: &'static str,
    /// (comparison, floor): `>=` means higher is better, `<=` lower is better.
    pub floor: Option<(&'static str, f64)>,
    /// What bounds this figure, shown in the README.
    pub note: String,
}

impl Figure {
    pub fn passes(&self) -> Option<bool> {
        self.floor.map(|(cmp, floor)| match cmp {
            ">=" => self.value >= floor,
            _ => self.value <= floor,
        })
    }
    /// value / floor oriented so that > 1 means better than the floor.
    pub fn margin(&self) -> Option<f64> {
        self.floor.map(|(cmp, floor)| match cmp {
            ">=" => self.value / floor,
            _ => floor / self.value.max(1e-9),
        })
    }
}

pub fn fmt_value(v: f64, unit: &str) -> String {
    let n = if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    };
    format!("{n} {unit}")
}

/// The results as a Markdown table.
pub fn markdown_table(figures: &[Figure]) -> String {
    let mut out = String::from("| measure | result | floor | pass |\n|---|---:|---:|:---:|\n");
    for f in figures {
        let floor = f
            .floor
            .map(|(c, v)| format!("{c} {}", fmt_value(v, f.unit)))
            .unwrap_or_else(|| "–".into());
        let pass = match f.passes() {
            Some(true) => "✅",
            Some(false) => "❌",
            None => "",
        };
        out.push_str(&format!(
            "| {}: {} | {} | {} | {} |\n",
            f.section,
            f.name,
            fmt_value(f.value, f.unit),
            floor,
            pass
        ));
    }
    out
}

/// The results as plain text for the terminal.
pub fn text_table(figures: &[Figure]) -> String {
    let w = figures
        .iter()
        .map(|f| f.section.len() + f.name.len() + 2)
        .max()
        .unwrap_or(10);
    let mut out = String::new();
    for f in figures {
        let label = format!("{}: {}", f.section, f.name);
        let floor = f
            .floor
            .map(|(c, v)| format!("floor {c} {}", fmt_value(v, f.unit)))
            .unwrap_or_default();
        let pass = match f.passes() {
            Some(true) => "PASS",
            Some(false) => "FAIL",
            None => "",
        };
        out.push_str(&format!(
            "{label:<w$}  {:>14}  {floor:<22} {pass}\n",
            fmt_value(f.value, f.unit)
        ));
    }
    out
}

/// A horizontal bar chart of each floored figure's margin over its floor (1.0 = at the floor).
pub fn svg_chart(figures: &[Figure], title: &str) -> String {
    let rows: Vec<&Figure> = figures.iter().filter(|f| f.floor.is_some()).collect();
    let (left, bar_w, row_h, top) = (480.0, 400.0, 30.0, 56.0);
    let width = left + bar_w + 150.0;
    let height = top + row_h * rows.len() as f64 + 40.0;
    let max = rows
        .iter()
        .filter_map(|f| f.margin())
        .fold(2.0_f64, f64::max)
        .min(50.0);
    // log scale so a 20x margin and a 1.2x margin are both readable
    let scale = |m: f64| (m.max(0.05).ln() - 0.05_f64.ln()) / (max.ln() - 0.05_f64.ln()) * bar_w;
    let mut s = format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="system-ui, sans-serif" font-size="13">
<rect width="100%" height="100%" fill="#ffffff"/>
<text x="16" y="26" font-size="16" font-weight="600">{title}</text>
<text x="16" y="44" fill="#667085">bar = result ÷ floor (log scale); right of the dashed line meets the floor</text>
"##
    );
    let floor_x = left + scale(1.0);
    for (i, f) in rows.iter().enumerate() {
        let y = top + row_h * i as f64;
        let m = f.margin().unwrap_or(0.0);
        let color = if m >= 1.0 { "#1f9d55" } else { "#d64545" };
        s.push_str(&format!(
            r##"<text x="{x}" y="{ty}" text-anchor="end">{label}</text>
<rect x="{left}" y="{ry}" width="{w:.1}" height="18" rx="3" fill="{color}"/>
<text x="{vx:.1}" y="{ty}" fill="#1d2430">{value}  ({m:.1}×)</text>
"##,
            x = left - 10.0,
            ty = y + 14.0,
            label = xml_escape(&format!("{}: {}", f.section, f.name)),
            ry = y + 1.0,
            w = scale(m).max(2.0),
            vx = left + scale(m).max(2.0) + 6.0,
            value = xml_escape(&fmt_value(f.value, f.unit)),
        ));
    }
    s.push_str(&format!(
        r##"<line x1="{floor_x:.1}" x2="{floor_x:.1}" y1="{top}" y2="{y2}" stroke="#1d2430" stroke-dasharray="4 3"/>
</svg>
"##,
        y2 = height - 30.0
    ));
    s
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The p-th percentile (0..=100) of sorted samples.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// Resident and peak resident memory of a process, in MB, from /proc.
pub fn rss_mb(pid: u32) -> Option<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<f64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb / 1024.0)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// The shipped demo config with every listener on a free port.
pub fn port_zero_demo_config(dir: &Path) -> PathBuf {
    let shipped = include_str!("../../config.yaml");
    let mut text = String::new();
    for line in shipped.lines() {
        match line.find("127.0.0.1:") {
            Some(i) => {
                let rest = &line[i + "127.0.0.1:".len()..];
                let digits = rest.chars().take_while(char::is_ascii_digit).count();
                text.push_str(&format!("{}127.0.0.1:0{}\n", &line[..i], &rest[digits..]));
            }
            None => {
                text.push_str(line);
                text.push('\n');
            }
        }
    }
    let path = dir.join("demo.yaml");
    std::fs::write(&path, text).expect("write demo config");
    path
}

/// `overlay up` running as a child process.
pub struct UpProcess {
    pub child: Child,
    /// (label, url) of each server, from the start-up table.
    pub servers: Vec<(String, String)>,
    /// From spawn to every listener answering /healthz.
    pub ready_after: Duration,
}

impl UpProcess {
    /// Starts the real binary on `config` and waits until every listener answers /healthz.
    pub async fn start(config: &Path, data_dir: &Path) -> UpProcess {
        let started = Instant::now();
        let mut child = Command::new(env!("CARGO_BIN_EXE_overlay"))
            .arg("--config")
            .arg(config)
            .arg("--data-dir")
            .arg(data_dir)
            .arg("up")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn overlay up");
        let stdout = child.stdout.take().expect("stdout");
        let mut servers = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let line = line.expect("read stdout");
            if line.starts_with("Press Ctrl-C") {
                break;
            }
            let cols: Vec<&str> = line.split_whitespace().collect();
            if let (Some(label), Some(url)) = (cols.first(), cols.last()) {
                if url.starts_with("http://") {
                    servers.push((label.to_string(), url.to_string()));
                }
            }
        }
        let client = awc::Client::default();
        for (_, url) in &servers {
            loop {
                match client.get(format!("{url}/healthz")).send().await {
                    Ok(r) if r.status().is_success() => break,
                    _ => actix_rt::time::sleep(Duration::from_millis(1)).await,
                }
            }
        }
        UpProcess {
            child,
            servers,
            ready_after: started.elapsed(),
        }
    }

    pub fn url(&self, label: &str) -> String {
        self.servers
            .iter()
            .find(|(l, _)| l == label)
            .map(|(_, u)| u.clone())
            .unwrap_or_else(|| panic!("no server {label}"))
    }

    pub fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}
