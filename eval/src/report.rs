//! The intent report: `report.json`, `report.md`, `confusion.svg`, `confidence.svg`, and the
//! terminal summary.

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use crate::metrics::{LabelScore, OosScores};

#[derive(Debug, Clone, Serialize)]
pub struct ConfusedPair {
    pub gold: String,
    pub predicted: String,
    pub count: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct ThresholdRow {
    pub threshold: f32,
    pub in_scope_accuracy: f64,
    pub oos_recall: f64,
    pub oos_precision: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct MultiIntentScores {
    pub messages: usize,
    pub exact_set_accuracy: f64,
    pub per_intent_recall: Vec<(String, f64, usize)>,
    /// A few messages whose set was wrong: (text, expected, got).
    pub errors: Vec<(String, Vec<String>, Vec<String>)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub mode: String,
    pub train: String,
    pub test: String,
    pub seed: u64,
    pub train_rows: usize,
    pub test_rows: usize,
    pub labels: Vec<String>,
    pub accuracy: f64,
    pub macro_f1: f64,
    pub weighted_f1: f64,
    pub per_intent: Vec<LabelScore>,
    pub confusion: Vec<Vec<usize>>,
    pub most_confused: Vec<ConfusedPair>,
    pub oos: Option<OosScores>,
    /// Groups of out-of-scope test rows (`--test-oos`): name, rows, recall of the served decision.
    pub oos_groups: Vec<(String, usize, f64)>,
    /// The out-of-scope threshold used for the figures above.
    pub threshold: Option<f32>,
    /// The distance gate's cut used for them (−1: no gate; see `closer_models::intent::nearest`).
    #[serde(default)]
    pub nearest_threshold: Option<f32>,
    pub threshold_sweep: Vec<ThresholdRow>,
    pub expected_calibration_error: f64,
    /// (bin lower edge, correct, wrong), 10 bins of the served confidence.
    pub confidence_histogram: Vec<(f32, usize, usize)>,
    pub fold_accuracies: Vec<f64>,
    pub training_seconds: f64,
    pub latency_ms_p50: f64,
    pub latency_ms_p99: f64,
    pub multi_intent: Option<MultiIntentScores>,
    pub settings: serde_json::Value,
}

fn pct(x: f64) -> String {
    format!("{:.2} %", x * 100.0)
}

impl Report {
    /// The figures that matter, as a Markdown table (also printed on the terminal).
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "| figure | value |\n|---|---|");
        let _ = writeln!(s, "| mode | {} |", self.mode);
        let _ = writeln!(
            s,
            "| train / test rows | {} / {} |",
            self.train_rows, self.test_rows
        );
        let _ = writeln!(s, "| intents | {} |", self.labels.len());
        let _ = writeln!(s, "| accuracy | {} |", pct(self.accuracy));
        let _ = writeln!(
            s,
            "| macro F1 / weighted F1 | {} / {} |",
            pct(self.macro_f1),
            pct(self.weighted_f1)
        );
        if let (Some(o), Some(t)) = (&self.oos, self.threshold) {
            let _ = writeln!(s, "| OOS threshold | {t:.2} |");
            if let Some(n) = self.nearest_threshold {
                let _ = writeln!(s, "| nearest-example cut (distance gate) | {n:.3} |");
            }
            let _ = writeln!(s, "| in-scope accuracy | {} |", pct(o.in_scope_accuracy));
            let _ = writeln!(
                s,
                "| OOS precision / recall / F1 | {} / {} / {} |",
                pct(o.oos_precision),
                pct(o.oos_recall),
                pct(o.oos_f1)
            );
        }
        for (name, n, recall) in &self.oos_groups {
            let _ = writeln!(s, "| OOS recall, {name} ({n} rows) | {} |", pct(*recall));
        }
        let _ = writeln!(
            s,
            "| expected calibration error (served decision and confidence) | {:.4} |",
            self.expected_calibration_error
        );
        if !self.fold_accuracies.is_empty() {
            let folds: Vec<String> = self
                .fold_accuracies
                .iter()
                .map(|a| format!("{:.2}", a * 100.0))
                .collect();
            let _ = writeln!(s, "| fold accuracies | {} |", folds.join(", "));
        }
        if self.training_seconds > 0.0 {
            let _ = writeln!(
                s,
                "| training time (embedding + head) | {:.1} s |",
                self.training_seconds
            );
        }
        let _ = writeln!(
            s,
            "| latency p50 / p99 (one message) | {:.1} / {:.1} ms |",
            self.latency_ms_p50, self.latency_ms_p99
        );
        if let Some(m) = &self.multi_intent {
            let _ = writeln!(
                s,
                "| multi-intent exact-set accuracy | {} ({} messages) |",
                pct(m.exact_set_accuracy),
                m.messages
            );
        }
        s
    }

    pub fn markdown(&self) -> String {
        let mut s = format!(
            "# Intent evaluation\n\nTrain: `{}`  \nTest: `{}`  \nSeed: {}\n\n",
            self.train, self.test, self.seed
        );
        s.push_str(&self.summary());
        if !self.threshold_sweep.is_empty() {
            s.push_str("\n## Out-of-scope threshold sweep\n\nOver the score the threshold is compared with: the head's top probability before temperature scaling (with `--server`, the reported confidence).\n\n| threshold | in-scope accuracy | OOS recall | OOS precision |\n|---|---|---|---|\n");
            for r in &self.threshold_sweep {
                let _ = writeln!(
                    s,
                    "| {:.2} | {} | {} | {} |",
                    r.threshold,
                    pct(r.in_scope_accuracy),
                    pct(r.oos_recall),
                    pct(r.oos_precision)
                );
            }
        }
        s.push_str("\n## Most confused pairs\n\n| gold | predicted | count |\n|---|---|---|\n");
        for p in &self.most_confused {
            let _ = writeln!(s, "| {} | {} | {} |", p.gold, p.predicted, p.count);
        }
        s.push_str("\n## Per intent\n\n| intent | precision | recall | F1 | support |\n|---|---|---|---|---|\n");
        for l in &self.per_intent {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} |",
                l.label,
                pct(l.precision),
                pct(l.recall),
                pct(l.f1),
                l.support
            );
        }
        s.push_str("\n## Confidence (top class)\n\n| bin | correct | wrong |\n|---|---|---|\n");
        for (lo, ok, bad) in &self.confidence_histogram {
            let _ = writeln!(s, "| {:.1}–{:.1} | {ok} | {bad} |", lo, lo + 0.1);
        }
        if let Some(m) = &self.multi_intent {
            s.push_str("\n## Multi-intent\n\n");
            let _ = writeln!(
                s,
                "Exact-set accuracy {} over {} messages.\n",
                pct(m.exact_set_accuracy),
                m.messages
            );
            s.push_str("| intent | recall | occurrences |\n|---|---|---|\n");
            for (l, r, n) in &m.per_intent_recall {
                let _ = writeln!(s, "| {l} | {} | {n} |", pct(*r));
            }
            if !m.errors.is_empty() {
                s.push_str("\nSome misses:\n\n");
                for (t, want, got) in &m.errors {
                    let _ = writeln!(s, "- {t:?}: expected {want:?}, got {got:?}");
                }
            }
        }
        s.push_str("\nPlots: `confusion.svg`, `confidence.svg`.\n");
        s
    }

    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("report.json"), serde_json::to_vec_pretty(self)?)?;
        std::fs::write(dir.join("report.md"), self.markdown())?;
        std::fs::write(
            dir.join("confusion.svg"),
            confusion_svg(&self.labels, &self.confusion),
        )?;
        std::fs::write(
            dir.join("confidence.svg"),
            confidence_svg(&self.confidence_histogram),
        )?;
        Ok(())
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A heat map of row-normalised counts (row = gold, column = predicted).
pub fn confusion_svg(labels: &[String], m: &[Vec<usize>]) -> String {
    let k = labels.len();
    let cell = if k > 60 {
        8
    } else if k > 20 {
        14
    } else {
        28
    };
    let margin = 7 * labels.iter().map(|l| l.len()).max().unwrap_or(4).min(40) + 10;
    let size = margin + cell * k + 10;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{size}\" height=\"{size}\" font-family=\"sans-serif\" font-size=\"{}\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n",
        cell.min(12)
    );
    for (g, row) in m.iter().enumerate() {
        let total: usize = row.iter().sum();
        let y = margin + g * cell;
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>",
            margin - 4,
            y + cell - 1,
            esc(&labels[g])
        );
        for (p, &n) in row.iter().enumerate() {
            if n == 0 {
                continue;
            }
            let f = n as f64 / total.max(1) as f64;
            let (r, gr, b) = if g == p {
                (
                    255.0 * (1.0 - f),
                    120.0 + 100.0 * (1.0 - f),
                    255.0 * (1.0 - f),
                )
            } else {
                (230.0, 255.0 * (1.0 - f), 255.0 * (1.0 - f))
            };
            let _ = writeln!(
                s,
                "<rect x=\"{}\" y=\"{y}\" width=\"{cell}\" height=\"{cell}\" fill=\"rgb({},{},{})\"><title>{} → {}: {n}</title></rect>",
                margin + p * cell,
                r as u8,
                gr as u8,
                b as u8,
                esc(&labels[g]),
                esc(&labels[p])
            );
        }
    }
    for (p, l) in labels.iter().enumerate() {
        let x = margin + p * cell + cell - 2;
        let _ = writeln!(
            s,
            "<text transform=\"translate({x},{}) rotate(-90)\">{}</text>",
            margin - 4,
            esc(l)
        );
    }
    let _ = writeln!(
        s,
        "<rect x=\"{margin}\" y=\"{margin}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"#888\"/>\n</svg>",
        cell * k,
        cell * k
    );
    s
}

/// Bars of correct (green) and wrong (red) predictions per top-class confidence bin.
pub fn confidence_svg(hist: &[(f32, usize, usize)]) -> String {
    let (w, h, left, bottom) = (640usize, 320usize, 50usize, 40usize);
    let max = hist
        .iter()
        .map(|&(_, a, b)| a.max(b))
        .max()
        .unwrap_or(1)
        .max(1);
    let slot = (w - left - 10) / hist.len().max(1);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"11\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"{}\" y=\"14\">top-class confidence: correct (green) vs wrong (red)</text>\n",
        left
    );
    let plot_h = (h - bottom - 24) as f64;
    for (i, &(lo, ok, bad)) in hist.iter().enumerate() {
        let x = left + i * slot;
        for (j, (n, colour)) in [(ok, "#3a3"), (bad, "#c33")].into_iter().enumerate() {
            let bh = plot_h * n as f64 / max as f64;
            let _ = writeln!(
                s,
                "<rect x=\"{}\" y=\"{:.1}\" width=\"{}\" height=\"{bh:.1}\" fill=\"{colour}\"><title>{n}</title></rect>",
                x + 4 + j * (slot / 2 - 4),
                (h - bottom) as f64 - bh,
                slot / 2 - 4
            );
        }
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{}\">{lo:.1}</text>",
            x + 4,
            h - bottom + 14
        );
    }
    let _ = writeln!(
        s,
        "<text x=\"4\" y=\"{}\">{max}</text>\n<text x=\"4\" y=\"{}\">0</text>\n</svg>",
        h - bottom - plot_h as usize,
        h - bottom
    );
    s
}
